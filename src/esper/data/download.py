"""Checksummed, atomic downloads with the standard library's urllib."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import http.client
import logging
import os
import shutil
import stat
import string
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from esper.data.dataset import ChecksumMismatchError, DownloadError, DownloadPlaceError
from esper.leyline.files import FILE_MODE, nearest_existing, not_a_folder

logger = logging.getLogger(__name__)

# Seconds to wait for the server to answer or send the next chunk before giving up.
DOWNLOAD_TIMEOUT_S = 60.0
# Read size for streaming to disk: large enough to be fast, small enough for a smooth bar.
CHUNK_BYTES = 1 << 20


@contextmanager
def created_directory(directory: Path) -> Iterator[None]:
    """Create ``directory`` and its missing parents for the block; if the block fails, remove
    those it created that are still empty, so a failed download leaves no trace."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]  # deepest first
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file (or a broken link) in the way
        found = nearest_existing(directory)
        raise DownloadPlaceError(
            f"cannot download into {str(directory)!r}: {str(found)!r} is "
            f"{not_a_folder(found)}, not a folder"
        ) from None
    try:
        yield
    except BaseException:
        for made in missing:
            try:
                made.rmdir()
            except OSError:  # no longer empty (or gone): leave it and everything above it
                break
        raise


ABANDONED_AFTER_S = 600.0
"""A leftover untouched this long, and locked by no process, is a killed writer's. The age guards
file systems whose locks other machines do not see (NFS with local locks): a live download
writes its file every read, an extraction its folder every member."""


def claimed_temp(
    folder: Path, prefix: str, suffix: str = "", *, directory: bool = False
) -> tuple[int, Path]:
    """Make a temporary file (or, with ``directory``, folder) in ``folder`` named ``prefix``,
    random letters, ``suffix``, and lock it for this process (``flock``): a descriptor on it
    whose closing releases the lock, and its path. The kernel drops the lock when the process
    dies, kill -9 included, so ``remove_abandoned`` can tell a dead writer's leftovers from a
    live writer's work. Where the file system refuses the lock (NFSv4 locks only files open
    for writing) it goes on without one: ``remove_abandoned`` then leaves it alone."""
    while True:
        if directory:
            name = tempfile.mkdtemp(dir=folder, prefix=prefix, suffix=suffix)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:  # taken for a dead writer's and removed: make another
                continue
        else:
            fd, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
        try:  # blocks only while a remover that opened it first holds it, and removes it
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no such locks here
            return fd, Path(name)
        if os.fstat(fd).st_nlink > 0:
            return fd, Path(name)
        os.close(fd)  # taken for a dead writer's and removed before this lock: make another


def remove_abandoned(folder: Path, prefix: str, suffix: str = "") -> None:
    """Remove what ``claimed_temp`` made in ``folder`` with ``prefix`` and ``suffix``, no
    process holds locked any more and nothing touched for ``ABANDONED_AFTER_S``: a download or
    extraction killed before it could clean up. Anything else of the name (a link, a pipe, what
    cannot be opened or locked here) is left alone."""
    for path in folder.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        try:
            info = os.lstat(path)
        except OSError:  # gone meanwhile
            continue
        recent = time.time() - info.st_mtime < ABANDONED_AFTER_S
        if recent or not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer's (BlockingIOError), or no such locks here
            os.close(fd)
            continue
        try:
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            logger.info("removed %s, left by a download that was killed", path)
        finally:
            os.close(fd)


def download_file(url: str, dest: Path, sha256: str, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, verify its SHA-256, and move it into place atomically.

    The bytes are streamed to a temporary file next to ``dest`` (same filesystem, so the final
    ``os.replace`` is atomic) while the digest is computed. Whatever goes wrong, the temporary
    file is removed, so ``dest`` either holds the complete verified file or does not exist.

    Args:
        url: Where to fetch the file from (any scheme urllib understands).
        dest: Final path of the file; its parent directories are created (and removed again
            if the download fails).
        sha256: Expected lowercase hex SHA-256 digest of the file.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        ``dest``.

    Raises:
        ValueError: ``sha256`` is not 64 hexadecimal digits (before anything is downloaded).
        ChecksumMismatchError: The downloaded bytes have a different digest.
        DownloadError: The server could not be reached, answered with an error, or the
            connection broke off; or ``dest`` is a directory.
    """
    if not (isinstance(sha256, str) and len(sha256) == 64 and set(sha256) <= set(string.hexdigits)):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r:.80}")
    dest = Path(dest)
    if dest.is_dir():
        raise DownloadPlaceError(f"cannot download {url} to {str(dest)!r}: it is a directory")
    with created_directory(dest.parent):
        remove_abandoned(dest.parent, f".{dest.name}.", ".part")
        fd, tmp = claimed_temp(dest.parent, f".{dest.name}.", ".part")
        try:
            with os.fdopen(os.dup(fd), "wb") as out:  # ``fd`` keeps the lock till the end
                actual = _stream(url, out, dest.name, progress)
                os.fchmod(out.fileno(), FILE_MODE)  # mkstemp's 0600 kept others from reading it
            if actual != sha256.lower():
                raise ChecksumMismatchError(
                    f"checksum mismatch for {url}: expected SHA-256 {sha256.lower()}, got "
                    f"{actual}; the file was deleted (corrupt download or a changed upstream file)"
                )
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
    logger.info("downloaded %s to %s (sha256 ok)", url, dest)
    return dest


def _read(response: http.client.HTTPResponse, url: str) -> bytes:
    """The next chunk of ``response``'s body. A connection failing meanwhile (reset, timed out,
    a TLS error, a cut chunk) is a ``DownloadError``: an ``ssl.SSLError`` is an ``OSError``
    of no narrower kind, and was taken for the download's folder failing."""
    try:
        return response.read(CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {url} failed: {exc!r}") from exc


def _stream(url: str, out: BinaryIO, label: str, progress: bool) -> str:
    """Copy the response body of ``url`` into the binary file ``out``; return its SHA-256."""
    # tqdm ships no type information; it is imported here because only downloads need it.
    from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

    digest = hashlib.sha256()
    received = 0  # counted here: a disabled tqdm bar does not count
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                file=sys.stderr,
                disable=not progress,
            ) as bar:
                while chunk := _read(response, url):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise DownloadError(
                    f"download of {url} ended early: got {received} of {total} bytes"
                )
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(
            f"download of {url} failed: {exc.reason} (check the network or the URL)"
        ) from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        # HTTPException: a server or proxy that breaks HTTP (a bad status line, a cut chunk)
        raise DownloadError(f"download of {url} failed: {exc!r}") from exc
    return digest.hexdigest()
