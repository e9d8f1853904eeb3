"""The one durable, atomic file write every Esper writer uses, and the one guarded read.

A file is written to a hidden temporary name in its own directory (``.NAME.tmp-XXXX``),
flushed and fsynced, made world-readable, renamed over the target (``os.replace`` is atomic on
POSIX) and the directory is fsynced so the rename itself survives a power loss. A reader
therefore sees the old content or the new, never a mixture; a crash leaves at most a hidden
temporary file, which ``esper.nissa.checkpoints.clean_stale`` removes on the next start.

Out of disk space (``ENOSPC``, or ``EDQUOT`` for a full quota) is its own error,
``DiskFullError``; a target that is a directory is refused before anything is written. Both
are ``WriteError``s with a one-line message naming the file, so the command line can say so
instead of printing a traceback.

Every file Esper reads from a run directory (and a model checkpoint) is opened through
``open_regular`` (or read whole through ``read_regular``): only a regular file is read. A named
pipe would block the reader forever, a device such as ``/dev/zero`` would never end, so each
is a ``RefusedFileError`` (an ``OSError`` whose ``strerror`` says what the path is), raised
without blocking; ``read_regular`` also refuses a file larger than its caller's limit. (A
``--config`` file may be a pipe: ``--config <(...)`` hands one over.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644
"""Run files are meant to be read by others (``mkstemp`` creates 0600)."""

TEMP_MARKER = ".tmp-"
"""Every temporary file is named ``.NAME.tmp-XXXX``: hidden, and recognisably stale."""

_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(OSError):
    """A file that cannot be written, with a one-line message naming it."""


class DiskFullError(WriteError):
    """The disk (or quota) is full; the message names the file that did not fit."""


class RefusedFileError(OSError):
    """A path Esper does not read: not a regular file, or larger than its kind of file can be.
    ``strerror`` says which, for a message such as ``cannot read 'PATH': {strerror}``."""


_NOT_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` that is not a regular file is: "a named pipe", …"""
    return next((name for test, name in _NOT_FILES if test(mode)), "not a plain file")


def open_regular(path: str | os.PathLike[str], follow: bool = True) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file (links followed, unless not
    ``follow``). The check is made on the opened file, which is opened without blocking.

    Raises:
        RefusedFileError: ``path`` is a directory, pipe, device or socket.
        OSError: it cannot be opened (missing, no permission, a link when not ``follow``).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
            raise RefusedFileError(
                code, f"it is {not_regular(mode)}, not a regular file", str(path)
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (``open_regular``), at most ``limit`` of them.

    Raises:
        RefusedFileError: not a regular file, or larger than ``limit`` bytes.
        OSError: it cannot be read.
    """
    with open_regular(path) as f:
        if limit is None:
            return f.read()
        size = os.fstat(f.fileno()).st_size
        # A buffer of the file's size, not the limit's (64 MiB for a JSON record, per read);
        # a file that grew since the fstat is read on, up to the limit.
        data = f.read(min(size, limit) + 1)
        if size < len(data) <= limit:
            data += f.read(limit + 1 - len(data))
    if len(data) > limit:
        raise RefusedFileError(
            errno.EFBIG, f"it is larger than the {limit:,} bytes such a file can be", str(path)
        )
    return data


def is_disk_full(err: OSError) -> bool:
    """Whether ``err`` says the disk or the user's quota is full."""
    return err.errno in _FULL


def disk_full(err: OSError, path: str | os.PathLike[str]) -> DiskFullError:
    """The one-line ``DiskFullError`` for ``err`` (which must be a full-disk error) at ``path``."""
    full = DiskFullError(f"out of disk space writing {str(path)!r}")
    full.errno = err.errno  # one line for people (no "[Errno 28]"), the code for programs
    return full


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` (files created, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def write_new_file(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Create ``path`` (it must not exist), write ``data`` and fsync it (not its directory).

    For files inside a directory that is itself made visible atomically later (a checkpoint
    directory renamed into place); a partial file is removed.

    Raises:
        FileExistsError: ``path`` exists.
        DiskFullError: the disk is full.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as err:
        raise disk_full(err, path) if is_disk_full(err) else err from None
    try:
        _write_fd(fd, raw)
    except BaseException as err:
        os.close(fd)
        os.unlink(path)
        if isinstance(err, OSError) and is_disk_full(err):
            raise disk_full(err, path) from None
        raise
    os.close(fd)


DANGLING_LINK = "a symbolic link that leads nowhere (or in a loop)"
"""What a path is that ``is_dangling``: said in one line when such a path is to be used."""


def is_utf8_path(path: Path) -> bool:
    """``path``, made absolute, is UTF-8 text: no bytes that are no UTF-8 (Python keeps those
    as surrogates, which run views, reports and URLs cannot carry)."""
    try:
        str(path.absolute()).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shell_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a shell command's argument, for the commands Esper prints to run next:
    quoted where the shell would split or expand it (``runs/a b``), and a relative path that
    starts with ``-`` as ``./-x`` (it read as a flag)."""
    text = os.fspath(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def expanded(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` and ``~user`` expanded.

    Raises:
        ValueError: ``~user`` names no user.
    """
    try:
        return Path(path).expanduser()
    except RuntimeError:  # Path.expanduser of ~nosuchuser
        raise ValueError(f"{os.fspath(path)!r}: no such user's home directory") from None


def absolute_path(path: str, base: Path | None = None) -> str:
    """``path`` with ``~`` expanded (``expanded``), made absolute against ``base`` (default:
    the working directory); links and ``..`` stay as given (the system resolves them, not the
    text).

    Raises:
        ValueError: ``~user`` names no user.
    """
    given = expanded(path)
    return str(given if given.is_absolute() else (base or Path()).absolute() / given)


def is_dangling(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a symbolic link whose target does not exist (or is a loop)."""
    return os.path.islink(path) and not os.path.exists(path)


def nearest_existing(path: Path) -> Path:
    """``path``, or the deepest of its ancestors that is there (a link to nothing counts):
    where making ``path`` would start, or what stands in its way."""
    return next(p for p in (path, *path.absolute().parents) if os.path.lexists(p))


def not_a_folder(place: Path) -> str:
    """What ``place``, there but no folder, is for a message: a link to nothing, or a file."""
    return "a link to nothing" if is_dangling(place) else "a file"


def file_mode(path: Path) -> int | None:
    """``path``'s ``st_mode`` (links followed), None where nothing is there.

    Raises:
        PermissionError: it cannot be looked at (a directory above it without search
            permission). ``Path.exists`` and ``is_file`` raise it on Python 3.11 only; later
            ones answer False, which took an unreadable run for a missing one.
    """
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None  # a link loop leads to no file
        raise


def remove_temporaries(directory: Path, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporary files (``.NAME.tmp-*``) that writers killed mid-write left in
    ``directory``: of every NAME, or only of ``names`` (a writer sweeping up after itself
    before writing them again). A missing directory has none. Call it only where no other
    writer of those files can be running. Returns the paths removed."""
    try:
        entries = sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    prefixes = None if names is None else tuple(f".{name}{TEMP_MARKER}" for name in names)
    removed = [
        p
        for p in entries
        if p.name.startswith(".") and TEMP_MARKER in p.name and not p.is_dir()
        if prefixes is None or p.name.startswith(prefixes)
    ]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        fsync_directory(directory)
    return removed


def _refuse_directory(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():  # os.replace would fail after the write
        refused = WriteError(f"cannot write {str(target)!r}: it is a directory, not a file")
        refused.errno = errno.EISDIR  # one line for people, the code for programs
        raise refused


def atomic_write_all(files: Sequence[tuple[Path, bytes | str]]) -> None:
    """``atomic_write`` each ``(path, data)`` in order, after checking that none of the paths is
    a directory: a set of files that belong together (a report's page and images) is not left
    half-replaced by a target that could never be written.

    Raises:
        WriteError: a path is a directory (nothing written), or the disk is full.
    """
    for path, _ in files:
        _refuse_directory(path)
    for path, data in files:
        atomic_write(path, data)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically and durably (text is written as UTF-8).

    Raises:
        DiskFullError: the disk is full; the temporary file is removed and ``path`` keeps its
            old content.
        WriteError: ``path`` is a directory (left as it is).
        OSError: any other failure, with the same guarantees.
    """
    target = Path(path)
    _refuse_directory(target)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARKER}", dir=target.parent)
    except OSError as err:  # a full disk can refuse even the empty file (no free inode)
        raise disk_full(err, target) if is_disk_full(err) else err from None
    try:
        try:
            _write_fd(fd, raw)
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and is_disk_full(err):
            raise disk_full(err, target) from None
        raise
    fsync_directory(target.parent)


def try_lock(path: Path, directory: bool = False) -> int | None:
    """An exclusive lock on ``path`` for this process: the descriptor whose closing releases
    it, or None while another holder has it. The kernel drops a lock when its holder exits,
    kill -9 included. ``path`` is a file, made empty if missing, or with ``directory`` the
    directory itself (nothing is written in it).

    Raises:
        OSError: ``path`` cannot be opened.
    """
    if directory:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_held(path: Path, directory: bool = False) -> bool | None:
    """Whether another process holds ``try_lock``'s lock on ``path``, probed with a shared lock
    taken and dropped at once: seen across PID namespaces (containers), and from another
    machine where the file system shares locks. False where ``path`` does not exist (nothing
    is made); None where it cannot be told: it cannot be opened, or its file system cannot
    lock it."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # drops the probe's lock
    return False
