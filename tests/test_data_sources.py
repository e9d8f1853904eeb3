"""Where datasets come from: the directory search order and checksummed downloads.

Downloads go to a local HTTP server (127.0.0.1, free port) serving fixture files written here;
the cache is redirected into tmp_path and the Debian path is pointed at an empty folder.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import esper.data.cifar as cifar_module
import esper.data.download as download_module
import esper.data.fashion_mnist as fashion_module
from conftest import unprivileged
from esper.data import (
    ChecksumMismatchError,
    Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    DownloadError,
    download_file,
    load_cifar10,
    load_fashion_mnist,
)
from esper.data.download import ABANDONED_AFTER_S, claimed_temp

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_fashion(root: Path, n_train: int) -> dict[str, str]:
    """Write four tiny IDX files (``n_train`` training images); return their SHA-256 digests."""
    rng = np.random.default_rng(n_train)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 2, dtype=np.uint8),
    )
    root.mkdir(parents=True, exist_ok=True)
    for name, a in zip(FASHION_FILES, arrays, strict=True):
        header = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
        (root / name).write_bytes(gzip.compress(header + a.tobytes(), mtime=0))
    return {name: sha256(root / name) for name in FASHION_FILES}


def training_file_size(ds: Dataset) -> int:
    """Images in the training file that was loaded: training plus held-out validation."""
    return len(ds.x_train) + len(ds.x_val)


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real cache, ESPER_DATA_DIR, Debian path or proxy can leak into these tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ESPER_DATA_DIR", raising=False)
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    # The fixtures hold a few images, not 60,000 or 50,000: hold out one for validation.
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_VAL_SIZE", 1)
    monkeypatch.setattr(cifar_module, "CIFAR10_VAL_SIZE", 1)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Serve ``tmp_path/www`` over HTTP on a free port; yield (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


# ----------------------------------------------------------------------------- downloads


def test_fashion_download_verifies_and_parses(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www, url = server
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_SHA256", write_fashion(www, n_train=6))
    ds = load_fashion_mnist(base_url=url, progress=False)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_val.shape == (1, 1, 28, 28)
    cache = tmp_path / "cache" / "esper" / "fashion-mnist"
    assert all_files(cache) == sorted(FASHION_FILES)
    # readable by all, as a shared data directory needs (they were mkstemp's 0600)
    assert {oct((cache / name).stat().st_mode & 0o777) for name in FASHION_FILES} == {"0o644"}
    for name in FASHION_FILES:
        assert (cache / name).read_bytes() == (www / name).read_bytes()
    # A second load uses the cache, even with the server gone.
    for name in FASHION_FILES:
        (www / name).unlink()
    assert training_file_size(load_fashion_mnist(base_url=url, download=False)) == 6


def test_checksum_mismatch_is_rejected_and_removed(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www, url = server
    digests = write_fashion(www, n_train=3)
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_SHA256", digests)
    corrupt = www / FASHION_FILES[2]
    blob = bytearray(corrupt.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one byte changed
    corrupt.write_bytes(bytes(blob))
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(base_url=url, progress=False)
    assert isinstance(info.value.__cause__, ChecksumMismatchError)
    message = str(info.value)
    assert url + FASHION_FILES[2] in message
    assert digests[FASHION_FILES[2]] in message and sha256(corrupt) in message
    cache = tmp_path / "cache" / "esper" / "fashion-mnist"
    assert FASHION_FILES[2] not in all_files(cache)
    assert not [f for f in all_files(cache) if f.endswith(".part")]
    # The files it finished are kept: the next download fetches only the others.
    kept = all_files(cache)
    assert kept == sorted(FASHION_FILES[:2])
    for name in kept:
        (www / name).unlink()  # would be a 404 if fetched again
    write_fashion(tmp_path / "fixed", n_train=3)
    corrupt.write_bytes((tmp_path / "fixed" / FASHION_FILES[2]).read_bytes())
    assert training_file_size(load_fashion_mnist(base_url=url, progress=False)) == 3


def test_http_404_is_a_clear_error_and_leaves_nothing(
    server: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = server
    dest = tmp_path / "dl" / "missing.bin"
    with pytest.raises(DownloadError, match=r"missing\.bin failed: HTTP 404"):
        download_file(url + "missing.bin", dest, "0" * 64, progress=False)
    assert not (tmp_path / "dl").exists()  # the directory it made for the file is gone too


def test_failed_download_in_a_loader_is_dataset_not_found(
    server: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = server  # serves nothing: every file is a 404
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(base_url=url, progress=False)
    message = str(info.value)
    assert "HTTP 404" in message and str(tmp_path / "cache" / "esper" / "fashion-mnist") in message
    assert "\n" not in message  # one line, for the CLI
    assert isinstance(info.value.__cause__, DownloadError)
    assert not (tmp_path / "cache").exists()  # no empty directories left behind either


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler) as closed:
        port = closed.server_address[1]  # bound then closed: nothing listens there
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}/x failed"):
        download_file(f"http://127.0.0.1:{port}/x", tmp_path / "x", "0" * 64, progress=False)
    assert all_files(tmp_path) == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HELLO THERE\r\n\r\n", "BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "IncompleteRead"),
    ],
    ids=["status-line", "chunk"],
)
def test_a_server_that_breaks_http_is_a_clear_error(tmp_path: Path, reply: bytes, error: str):
    """http.client's own errors (a proxy's garbage, a cut chunked body) were tracebacks."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
    try:
        with pytest.raises(DownloadError, match=f"{re.escape(url)} failed: {error}"):
            download_file(url, tmp_path / "dl" / "x", "0" * 64, progress=False)
    finally:
        thread.join(timeout=10)
        listener.close()
    assert all_files(tmp_path) == []


def test_progress_bar_goes_to_stderr_only_when_asked(
    server: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    www, url = server
    (www / "blob").write_bytes(b"x" * 5000)
    digest = sha256(www / "blob")
    download_file(url + "blob", tmp_path / "quiet", digest, progress=False)
    assert capsys.readouterr().err == ""
    download_file(url + "blob", tmp_path / "loud", digest, progress=True)
    captured = capsys.readouterr()
    assert "loud" in captured.err and captured.out == ""
    assert (tmp_path / "loud").read_bytes() == b"x" * 5000


# ----------------------------------------------------------------------------- search order


def test_search_order_data_dir_then_env_then_system_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each place holds a dataset of a different size, so the size says which one was used.
    write_fashion(tmp_path / "explicit", n_train=3)
    write_fashion(tmp_path / "env" / "fashion-mnist", n_train=4)
    write_fashion(tmp_path / "system", n_train=5)
    write_fashion(tmp_path / "cache" / "esper" / "fashion-mnist", n_train=6)
    monkeypatch.setenv("ESPER_DATA_DIR", str(tmp_path / "env"))

    def used(data_dir: Path | None = None) -> int:
        return training_file_size(load_fashion_mnist(data_dir, download=False))

    assert used(tmp_path / "explicit") == 3
    assert used() == 4
    # The data names the folder it was read from (a run records it in meta.json).
    source = load_fashion_mnist(download=False).source
    assert source == str(tmp_path / "env" / "fashion-mnist")
    monkeypatch.delenv("ESPER_DATA_DIR")
    assert used() == 5
    (tmp_path / "system" / FASHION_FILES[3]).unlink()  # incomplete folders do not count
    assert used() == 6


def test_env_dir_itself_and_data_dir_parent_are_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fashion(tmp_path / "flat", n_train=4)
    monkeypatch.setenv("ESPER_DATA_DIR", str(tmp_path / "flat"))
    assert training_file_size(load_fashion_mnist(download=False)) == 4
    write_fashion(tmp_path / "parent" / "fashion-mnist", n_train=3)
    assert training_file_size(load_fashion_mnist(tmp_path / "parent", download=False)) == 3


def test_nothing_found_lists_every_place_and_the_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "env").mkdir()  # one that does not exist is refused as such (below)
    monkeypatch.setenv("ESPER_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(download=False)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    for place in (
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "env",
        tmp_path / "system",
        tmp_path / "cache" / "esper" / "fashion-mnist",
    ):
        assert str(place) in message
    for fix in (
        "--data-dir",
        "ESPER_DATA_DIR",
        "apt-get install dataset-fashion-mnist",
        "allow the download (--download",  # the flag, not the function's keyword
    ):
        assert fix in message


def test_explicit_data_dir_does_not_fall_back_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fashion(tmp_path / "env" / "fashion-mnist", n_train=4)
    monkeypatch.setenv("ESPER_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "wrong"))) as info:
        load_fashion_mnist(tmp_path / "wrong", download=False)
    assert str(tmp_path / "env") not in str(info.value)


def test_a_data_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    """It was "[Errno 20] Not a directory: 'f/fashion-mnist'" (from the download's mkdir)."""
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(afile, download=True)
    assert str(info.value).startswith(f"fashion-mnist: data_dir {str(afile)!r} is a file; give")
    assert afile.read_text() == "x"


@pytest.mark.parametrize("below", ["", "a/b"])
def test_a_data_dir_that_cannot_be_searched_is_named(tmp_path: Path, below: str) -> None:
    """It was "[Errno 13] Permission denied: 'locked/fashion-mnist/train-images-idx3-ubyte.gz'",
    a path the search made up. Now the directory that refuses is named: the data_dir itself,
    or the one above it (permissions bind in a child process, as an unprivileged user's)."""
    locked = tmp_path / "locked"
    write_fashion(locked, n_train=4)
    data_dir = locked / below if below else locked
    code = (
        "import sys\nfrom esper.data import DatasetNotFoundError, load_fashion_mnist\n"
        "try:\n    load_fashion_mnist(sys.argv[1], download=False)\n"
        "except DatasetNotFoundError as err:\n    print(err)\n"
    )
    locked.chmod(0)
    try:
        done = subprocess.run(
            [*unprivileged(), sys.executable, "-c", code, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout == (
        f"fashion-mnist: cannot look in {str(locked)!r} (Permission denied); give it search "
        "permission, or point --data-dir (data_dir=...) elsewhere\n"
    )


def test_explicit_data_dir_downloads_into_itself(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www, url = server
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_SHA256", write_fashion(www, n_train=3))
    load_fashion_mnist(tmp_path / "mine", base_url=url, progress=False)
    assert all_files(tmp_path / "mine") == sorted(f"fashion-mnist/{f}" for f in FASHION_FILES)
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- CIFAR archive


def cifar_archive(path: Path, extra: tuple[str, bytes] | None = None) -> str:
    """Write a tiny cifar-10-python.tar.gz (2 images per batch); return its SHA-256."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [0, 9]}
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        if extra is not None:
            info = tarfile.TarInfo(extra[0])
            info.size = len(extra[1])
            tar.addfile(info, io.BytesIO(extra[1]))
    return sha256(path)


def test_cifar_download_extracts_and_loads(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www, url = server
    digest = cifar_archive(www / CIFAR_ARCHIVE)
    monkeypatch.setattr(cifar_module, "CIFAR10_SHA256", digest)
    ds = load_cifar10(base_url=url, progress=False)
    assert ds.x_train.shape == (9, 3, 32, 32) and ds.x_val.shape == (1, 3, 32, 32)
    assert ds.y_test.tolist() == [0, 9]
    cache = tmp_path / "cache" / "esper" / "cifar10"
    assert all_files(cache) == sorted(
        f"cifar-10-batches-py/{n}"
        for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    )


@pytest.mark.parametrize("member", ["../escaped", "/abs/escaped"])
def test_cifar_archive_with_unsafe_paths_is_refused(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: str
) -> None:
    www, url = server
    digest = cifar_archive(www / CIFAR_ARCHIVE, extra=(member, b"boom"))
    monkeypatch.setattr(cifar_module, "CIFAR10_SHA256", digest)
    with pytest.raises(DatasetFormatError, match="unsafe member path"):
        load_cifar10(base_url=url, progress=False)
    assert not list(tmp_path.rglob("escaped"))
    assert not (tmp_path / "cache" / "esper" / "cifar10" / "cifar-10-batches-py").exists()


def test_incomplete_cifar_folder_is_never_deleted(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www, url = server
    monkeypatch.setattr(cifar_module, "CIFAR10_SHA256", cifar_archive(www / CIFAR_ARCHIVE))
    partial = tmp_path / "cache" / "esper" / "cifar10" / "cifar-10-batches-py"
    partial.mkdir(parents=True)
    (partial / "data_batch_1").write_bytes(b"user data")
    with pytest.raises(DatasetFormatError, match="exists but lacks"):
        load_cifar10(base_url=url, progress=False)
    assert all_files(partial.parent) == ["cifar-10-batches-py/data_batch_1"]  # untouched


def test_a_temporary_file_removed_before_it_was_locked_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remover that opened a new ``.part`` before its writer locked it takes it for a dead
    writer's and removes it; the writer must not stream into the removed file."""
    made = tempfile.mkstemp
    calls = []

    def raced(**kwargs: Any) -> tuple[int, str]:
        fd, name = made(**kwargs)
        calls.append(name)
        if len(calls) == 1:
            os.unlink(name)  # the remover's work, between mkstemp and the lock
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", raced)
    fd, path = claimed_temp(tmp_path, ".x.", ".part")
    os.close(fd)
    assert len(calls) == 2 and str(path) == calls[1] and path.is_file()
    # a folder is opened by name after it is made: removed in between, it was a crash
    made_dir, folders = tempfile.mkdtemp, []

    def raced_dir(**kwargs: Any) -> str:
        name = made_dir(**kwargs)
        folders.append(name)
        if len(folders) == 1:
            os.rmdir(name)
        return name

    monkeypatch.setattr(tempfile, "mkdtemp", raced_dir)
    fd, path = claimed_temp(tmp_path, ".extract-", directory=True)
    os.close(fd)
    assert len(folders) == 2 and str(path) == folders[1] and path.is_dir()


def test_an_interrupted_cifar_extraction_is_finished_without_downloading_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 while extracting left the verified archive and an ``.extract-*`` folder: the
    next load downloaded the archive again (no server here: it would fail) and kept the folder.
    A live extraction's folder (locked) is left alone."""
    target = tmp_path / "cache" / "esper" / "cifar10"
    target.mkdir(parents=True)
    monkeypatch.setattr(cifar_module, "CIFAR10_SHA256", cifar_archive(target / CIFAR_ARCHIVE))
    (target / ".extract-k1ll3d00" / "cifar-10-batches-py").mkdir(parents=True)
    (target / ".extract-k1ll3d00" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"hal")
    (target / ".extract-w0rk1ng0").mkdir()
    aged(*target.glob(".extract-*"))
    fd = locked(target / ".extract-w0rk1ng0")
    try:
        ds = load_cifar10(base_url="http://127.0.0.1:9/", progress=False)
    finally:
        os.close(fd)
    assert ds.y_test.tolist() == [0, 9]
    assert sorted(p.name for p in target.iterdir()) == [".extract-w0rk1ng0", "cifar-10-batches-py"]


def test_a_cifar_archive_with_another_digest_is_downloaded_over(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www, url = server
    monkeypatch.setattr(cifar_module, "CIFAR10_SHA256", cifar_archive(www / CIFAR_ARCHIVE))
    target = tmp_path / "cache" / "esper" / "cifar10"
    target.mkdir(parents=True)
    (target / CIFAR_ARCHIVE).write_bytes(b"not the archive")
    assert load_cifar10(base_url=url, progress=False).y_test.tolist() == [0, 9]
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]


def test_failed_cifar_download_leaves_no_directories(
    server: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = server  # serves no archive: a 404
    with pytest.raises(DatasetNotFoundError, match="HTTP 404"):
        load_cifar10(base_url=url, progress=False)
    assert not (tmp_path / "cache").exists()  # its cifar10/ and the parents it made are gone


def aged(*paths: Path) -> None:
    """Make ``paths`` look untouched for longer than ``ABANDONED_AFTER_S``."""
    old = time.time() - 2 * ABANDONED_AFTER_S
    for path in paths:
        os.utime(path, (old, old))


def locked(path: Path) -> int:
    """Hold ``path`` locked as a live download does (another open file description, so it
    conflicts with the loader's lock as another process's would); close the result to let go."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_killed_downloads_part_file_is_removed_by_the_next_download(
    server: tuple[Path, str], tmp_path: Path
) -> None:
    """kill -9 mid-download left ``.blob.XXXXXXXX.part`` (up to a whole dataset file) for good;
    the next download of the same file removes it, and leaves alone a live download's part
    (locked), one written lately (a file system whose locks other machines do not see), another
    file's, and anything but a file or folder of the name (a pipe hung the open)."""
    www, url = server
    (www / "blob").write_bytes(b"payload" * 1000)
    folder = tmp_path / "dl"
    folder.mkdir()
    dead = folder / ".blob.k1ll3d00.part"
    live = folder / ".blob.w0rk1ng0.part"
    recent = folder / ".blob.r3c3nt00.part"
    other = folder / ".other.k1ll3d00.part"
    for part in (dead, live, recent, other):
        part.write_bytes(b"half a file")
    pipe = folder / ".blob.p1p30000.part"
    os.mkfifo(pipe)
    aged(dead, live, other, pipe)
    fd = locked(live)
    try:
        download_file(url + "blob", folder / "blob", sha256(www / "blob"), progress=False)
    finally:
        os.close(fd)
    assert all_files(folder) == sorted([live.name, recent.name, other.name, "blob"])
    assert pipe.exists()


def test_a_download_checks_its_digest_and_destination_first(tmp_path: Path) -> None:
    """A digest of "abc" downloaded the whole file before calling it a mismatch; a directory
    as the destination was an IsADirectoryError."""
    for digest in ("abc", "g" * 64, None):
        with pytest.raises(ValueError, match="sha256 must be 64 hexadecimal digits"):
            download_file("http://127.0.0.1:9/x", tmp_path / "x", digest, progress=False)  # type: ignore[arg-type]
    with pytest.raises(DownloadError, match="it is a directory"):
        download_file("http://127.0.0.1:9/x", tmp_path, "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_given_data_dir_holding_part_of_the_dataset_is_not_downloaded_over(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three of the user's files with the fourth missing: a download went to mine/fashion-mnist
    and trained on that, without a word (and took precedence after the file came back)."""
    www, url = server
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_SHA256", write_fashion(www, n_train=3))
    mine = tmp_path / "mine"
    write_fashion(mine, n_train=4)
    (mine / FASHION_FILES[3]).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(mine, base_url=url, progress=False)
    assert str(info.value) == (
        f"fashion-mnist: {str(mine)!r} holds part of the dataset ({', '.join(FASHION_FILES[:3])}) "
        f"but not {FASHION_FILES[3]} as files; complete it (a download does not write over it), "
        "or remove what is there"
    )
    assert all_files(mine) == sorted(FASHION_FILES[:3])
    # A folder in a file's place was listed as held and as missing at once (a walk-through).
    (mine / FASHION_FILES[3]).mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"\(([^,()]+, ){2}[^,()]+\) but not "):
        load_fashion_mnist(mine, base_url=url, progress=False)
    for name in FASHION_FILES[:3]:
        (mine / name).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(mine, base_url=url, progress=False)
    assert f"{str(mine)!r} holds the dataset's names but not {FASHION_FILES[0]}" in str(info.value)


def test_a_given_data_dir_holding_the_dataset_twice_is_refused(tmp_path: Path) -> None:
    """Files in the folder and in its fashion-mnist/ child: the child was taken silently."""
    mine = tmp_path / "mine"
    write_fashion(mine, n_train=4)
    write_fashion(mine / "fashion-mnist", n_train=5)
    with pytest.raises(DatasetNotFoundError, match="holds the dataset twice"):
        load_fashion_mnist(mine, download=False)
    (mine / "fashion-mnist").rename(tmp_path / "away")
    (mine / "fashion-mnist").symlink_to(mine)  # the same folder twice is one dataset
    assert training_file_size(load_fashion_mnist(mine, download=False)) == 4


def test_part_of_the_dataset_beside_a_whole_copy_is_refused(tmp_path: Path) -> None:
    """Three files (one of them other data) in the folder, the whole dataset in its
    fashion-mnist/ child: the child was used without a word (a walk-through)."""
    mine = tmp_path / "mine"
    write_fashion(mine / "fashion-mnist", n_train=4)
    write_fashion(mine, n_train=5)
    (mine / FASHION_FILES[2]).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(mine, download=False)
    assert str(info.value) == (
        f"fashion-mnist: {str(mine)!r} holds part of the dataset "
        f"({', '.join(FASHION_FILES[:2])}, {FASHION_FILES[3]}) but not {FASHION_FILES[2]} as "
        f"files; beside the whole of it in {str(mine / 'fashion-mnist')!r}; remove one, or "
        "point --data-dir (or $ESPER_DATA_DIR) at the one to use"
    )


def test_part_of_cifar_in_its_download_folder_is_the_users(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches in DIR/cifar10 itself, where a download never puts them (it extracts into
    DIR/cifar10/cifar-10-batches-py), were downloaded past without a word (a walk-through)."""
    www, url = server
    monkeypatch.setattr(cifar_module, "CIFAR10_SHA256", cifar_archive(www / CIFAR_ARCHIVE))
    mine = tmp_path / "mine" / "cifar10"
    mine.mkdir(parents=True)
    for i in (1, 2, 3):
        (mine / f"data_batch_{i}").write_bytes(b"the user's")
    with pytest.raises(DatasetNotFoundError, match=r"holds part of the dataset \(data_batch_1, "):
        load_cifar10(mine.parent, base_url=url, progress=False)
    assert all_files(mine) == [f"data_batch_{i}" for i in (1, 2, 3)]  # no download beside
    # the batches gone, DIR/cifar10 is the download's own folder again
    for i in (1, 2, 3):
        (mine / f"data_batch_{i}").unlink()
    assert load_cifar10(mine.parent, base_url=url, progress=False).y_test.tolist() == [0, 9]


@pytest.mark.parametrize("download", [True, False])
def test_the_cifar_archive_in_the_data_folder_is_extracted_not_downloaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download: bool
) -> None:
    """``cifar-10-python.tar.gz`` fetched by hand into --data-dir was passed over for a fresh
    download (a walk-through); the server here answers nothing. Without downloads (the
    offline user who fetched it by hand) it was not looked at: "cifar10 not found"."""
    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setattr(cifar_module, "CIFAR10_SHA256", cifar_archive(mine / CIFAR_ARCHIVE))
    url = "http://127.0.0.1:9/"
    data = load_cifar10(mine, base_url=url, progress=False, download=download)
    assert data.y_test.tolist() == [0, 9] and data.source.endswith("cifar-10-batches-py")
    assert (mine / CIFAR_ARCHIVE).is_file()  # the user's, left where it was
    assert sorted(p.name for p in (mine / "cifar10").iterdir()) == ["cifar-10-batches-py"]


@pytest.mark.parametrize("below", ["", "fashion-mnist"])
def test_uncompressed_idx_files_are_named_not_downloaded_past(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, below: str
) -> None:
    """The four files gunzipped (as mirrors and other libraries' raw/ folders hold them):
    the download went past them into DIR/fashion-mnist (or beside them there: a review) and
    never named them."""
    www, url = server
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_SHA256", write_fashion(www, n_train=3))
    given = tmp_path / "mine"
    mine = given / below
    write_fashion(mine, n_train=4)
    for name in FASHION_FILES:
        (mine / name.removesuffix(".gz")).write_bytes(gzip.decompress((mine / name).read_bytes()))
        (mine / name).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(given, base_url=url, progress=False)
    plain = ", ".join(name.removesuffix(".gz") for name in FASHION_FILES)
    assert str(info.value) == (
        f"fashion-mnist: {str(mine)!r} holds {plain} uncompressed; Esper reads the "
        f"gzip-compressed files ({', '.join(FASHION_FILES)}): compress them with gzip, or "
        "remove them"
    )
    assert all_files(given) == sorted(
        str(Path(below, name.removesuffix(".gz"))) for name in FASHION_FILES
    )


def test_a_connection_failing_mid_body_is_a_download_error() -> None:
    """An ``ssl.SSLError`` reading the body is an OSError of no narrower kind: it was taken for
    the download's folder failing ("could not be written ...: free space there", a review)."""
    import ssl

    class Failing:
        def read(self, size: int) -> bytes:
            raise ssl.SSLEOFError(8, "EOF occurred in violation of protocol")

    with pytest.raises(DownloadError, match="download of https://x/f failed: SSLEOFError"):
        download_module._read(Failing(), "https://x/f")  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["data_dir", "$ESPER_DATA_DIR"])
def test_a_home_of_no_user_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """``~nosuchuser/x``: Path.expanduser's RuntimeError was a traceback (a walk-through)."""
    given = "~esper-no-such-user/x"
    if where == "data_dir":
        call = functools.partial(load_fashion_mnist, given, download=False)
    else:
        monkeypatch.setenv("ESPER_DATA_DIR", given)
        call = functools.partial(load_fashion_mnist, download=False)
    with pytest.raises(DatasetNotFoundError) as info:
        call()
    assert str(info.value) == f"fashion-mnist: {where} {given!r}: no such user's home directory"


def test_a_download_that_cannot_write_its_folder_names_it(
    server: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full or read-only cache: the bare OSError ("[Errno 28] No space left on device",
    no path) was the run's error line, and the demo stopped where README says it falls back."""
    www, url = server
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_SHA256", write_fashion(www, n_train=3))

    def full(stream: Any, out: Any, *args: Any) -> str:
        out.write(b"x")
        raise OSError(28, "No space left on device")  # what a write raises: no file name

    monkeypatch.setattr(download_module, "_stream", full)
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(base_url=url, progress=False)
    cache = tmp_path / "cache" / "esper" / "fashion-mnist"
    assert str(info.value) == (
        f"fashion-mnist not found, and the download could not be written into {str(cache)!r}: "
        "No space left on device; free space there or make it writable, or point --data-dir "
        "(data_dir=...) at a folder that is"
    )
    assert not (tmp_path / "cache").exists()  # the folders it made are gone again


@pytest.mark.parametrize("kind", ["missing", "file", "part"])
def test_an_esper_data_dir_that_cannot_be_used_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A set $ESPER_DATA_DIR that named nothing, a file, or part of the dataset fell through
    to the system's copy without a word, and the run recorded no data_dir."""
    write_fashion(tmp_path / "system", n_train=5)
    env = tmp_path / "env"
    if kind == "file":
        env.write_text("x")
    elif kind == "part":
        write_fashion(env, n_train=4)
        (env / FASHION_FILES[0]).unlink()
    monkeypatch.setenv("ESPER_DATA_DIR", str(env))
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(download=False)
    expected = {
        "missing": f"$ESPER_DATA_DIR {str(env)!r} does not exist; point it at",
        "file": f"$ESPER_DATA_DIR {str(env)!r} is not a directory; point it at",
        "part": f"{str(env)!r} holds part of the dataset",
    }[kind]
    assert expected in str(info.value)


def test_a_resume_refuses_other_images_of_the_same_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another copy of Fashion-MNIST with its pixels changed (same names and sizes) resumed a
    run without a word (a walk-through): only text was checked by its SHA-256. The same images
    compressed otherwise are the same data."""
    from esper.cli.main import main
    from esper.nissa.stopping import Stop
    from esper.tolaria.episode import Episode

    first, other, moved = tmp_path / "first", tmp_path / "other", tmp_path / "moved"
    write_fashion(first, n_train=6)
    write_fashion(other, n_train=6)
    images = gzip.decompress((other / FASHION_FILES[0]).read_bytes())
    (other / FASHION_FILES[0]).write_bytes(gzip.compress(images[:-1] + bytes([~images[-1] & 255])))
    for name in FASHION_FILES:  # the first's data, compressed harder
        data = gzip.decompress((first / name).read_bytes())
        (moved / name).parent.mkdir(exist_ok=True)
        (moved / name).write_bytes(gzip.compress(data, compresslevel=1))
    assert sha256(moved / FASHION_FILES[0]) != sha256(first / FASHION_FILES[0])
    run = tmp_path / "run"
    args = ["static", "--task", "fashion_mnist_impaired", "--batches-per-epoch", "1"]

    def interrupted(*args: object, **kwargs: object) -> None:
        raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(Episode, "step", interrupted)
        assert main([*args, "--data-dir", str(first), "--epochs", "2", "--out", str(run)]) == 130
    meta = json.loads((run / "meta.json").read_text())
    assert re.fullmatch("[0-9a-f]{64}", meta["data"]["sha256"])
    config = json.loads((run / "config.json").read_text())
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for data_dir, code in ((other, 2), (moved, 0)):
        config["training"]["data_dir"] = str(data_dir)
        (run / "config.json").write_text(json.dumps(config))
        capsys.readouterr()
        assert main(["static", "--resume", str(run)]) == code
        if code == 2:
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "is not what it trained on (SHA-256 " in err, err
            assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == {
                **files,
                run / "config.json": (run / "config.json").read_bytes(),
            }
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
