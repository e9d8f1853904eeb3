"""CIFAR-10 (Krizhevsky 2009) from the standard python-pickle batch directory.

``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5`` (training) and
``test_batch``; each is a pickled dict with ``b"data"``, a uint8 array ``(10000, 3072)`` whose
rows are the red, green and blue 32x32 planes in turn, and ``b"labels"``, a list of ints 0..9.

Pickle can run arbitrary code, and this format leaves no choice, so two guards apply: a file is
only opened after checking it lies inside the resolved dataset directory, and the unpickler only
resolves the handful of numpy names an array needs, refusing every other global.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import math
import os
import pickle
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import Tensor

from esper.data.dataset import Dataset, DatasetFormatError, standardized_splits
from esper.data.download import (
    claimed_temp,
    created_directory,
    download_file,
    remove_abandoned,
)
from esper.data.locate import DatasetFiles, find_dataset_dir

logger = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
# SHA-256 of the official archive (its MD5 is c58f30108f718f92721af3b95e74349a).
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
CIFAR10_VAL_SIZE = 5_000
"""Training images held out for validation (a tenth of the 50,000), leaving 45,000 to train on.
Module-level so tests with tiny fixture batches can lower it."""
CIFAR10_SPLIT_SEED = 0
"""Seed of the fixed permutation that picks the held-out images; changing it changes every run."""
_FILES = DatasetFiles(
    name="cifar10",
    required=(*TRAIN_BATCHES, TEST_BATCH),
    subdirs=("", BATCH_DIR),
    download_dir=BATCH_DIR,  # the archive's folder, extracted into cifar10/
)

# The only globals a pickled numpy uint8 array (and a py3-pickled bytes key) needs. numpy 2
# renamed numpy.core to numpy._core; the official files use the old name.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        # pickle protocol 5 (a batch re-saved with pickle.HIGHEST_PROTOCOL): the array's bytes
        # read back with numpy.frombuffer, which runs nothing
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)

_UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    LookupError,
    SystemError,
    OverflowError,
)
"""What unpickling a damaged or crafted batch raises: the unpickler's own errors (a missing memo
entry is a KeyError), and those of the allowed globals given bad arguments (``_codecs.encode``
with an unknown codec: LookupError; a ``numpy.dtype`` built from a bad state: SystemError)."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DatasetFormatError(
                f"CIFAR batch refers to {module}.{name}, which a CIFAR batch never needs; "
                "refusing to unpickle it (corrupt or malicious file)"
            )
        if module.startswith(("numpy.core.", "numpy._core.")):
            # numpy 2 renamed numpy.core to numpy._core; import whichever this numpy has.
            core = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
            module = f"{core}.{module.split('.', 2)[2]}"
        return super().find_class(module, name)


def _read_batch(root: Path, name: str) -> tuple[Tensor, Tensor]:
    """Unpickle and validate one batch file; return uint8 ``(n, 3, 32, 32)`` and int64 ``(n,)``."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise DatasetFormatError(
            f"{root / name} is not a regular file inside the dataset directory {root}; "
            "refusing to unpickle it"
        )
    try:
        import numpy as np
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the CIFAR-10 batch files hold numpy arrays; install numpy (pip install numpy)"
        ) from exc
    with path.open("rb") as f:
        try:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
        except (*_UNPICKLING_ERRORS, MemoryError) as exc:
            raise DatasetFormatError(f"{path}: not a readable CIFAR pickle ({exc!r})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetFormatError(
            f"{path}: expected a dict with keys b'data' and b'labels', found {found}"
        )
    data, labels = batch[b"data"], batch[b"labels"]
    pixels = math.prod(IMAGE_SHAPE)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetFormatError(f"{path}: b'data' must be a 2-D uint8 array")
    if data.shape[1] != pixels:
        raise DatasetFormatError(
            f"{path}: b'data' rows have {data.shape[1]} values, expected {pixels} (3x32x32)"
        )
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):  # not bool
        raise DatasetFormatError(f"{path}: b'labels' must be a list of ints")
    if len(labels) != data.shape[0]:
        raise DatasetFormatError(f"{path}: {data.shape[0]} images but {len(labels)} labels")
    if labels and not all(0 <= v < NUM_CLASSES for v in labels):
        raise DatasetFormatError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}")
    images = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, *IMAGE_SHAPE)
    return images, torch.tensor(labels, dtype=torch.int64)


def _extract_archive(archive: Path, target: Path) -> None:
    """Extract the CIFAR tarball into ``target`` safely and atomically.

    Members with absolute paths or ``..`` components are rejected before anything is written,
    and tarfile's ``data`` filter additionally refuses links out of the tree and special files.
    The archive is unpacked into a temporary folder and the batch directory renamed into place.
    """
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            parts = PurePosixPath(m.name).parts
            if m.name.startswith(("/", "\\")) or ".." in parts:
                raise DatasetFormatError(
                    f"{archive}: unsafe member path {m.name!r} (absolute or with '..'); "
                    "refusing to extract"
                )
        remove_abandoned(target, ".extract-")  # an extraction killed before it cleaned up
        fd, tmp = claimed_temp(target, ".extract-", directory=True)
        try:
            tar.extractall(tmp, members=members, filter="data")
            extracted = tmp / BATCH_DIR
            if not extracted.is_dir():
                raise DatasetFormatError(f"{archive}: no {BATCH_DIR}/ folder inside")
            extracted.rename(target / BATCH_DIR)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(fd)


def _holds_archive(path: Path) -> bool:
    """Whether ``path`` is the official archive (its SHA-256 checked)."""
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() == CIFAR10_SHA256


def _check_no_partial_copy(target: Path) -> None:
    """Found incomplete by the search: never delete what may be the user's files.

    Raises:
        DatasetFormatError: ``target`` holds a batch directory that lacks files.
    """
    if (target / BATCH_DIR).exists():
        raise DatasetFormatError(
            f"{target / BATCH_DIR} exists but lacks some of {', '.join(_FILES.required)}; "
            "complete it, or delete it to download a fresh copy"
        )


def _unpack_by_hand(target: Path) -> bool:
    """Extract the official archive in ``target``'s parent (the data folder: a copy fetched by
    hand, which a run without downloads must take too) into ``target``, and leave it there;
    False where there is none."""
    beside = target.parent / CIFAR10_ARCHIVE
    if not _holds_archive(beside):
        return False
    _check_no_partial_copy(target)
    logger.info("extracting %s into %s", beside, target)
    with created_directory(target):
        _extract_archive(beside, target)
    return True


def _download(target: Path, *, base_url: str, progress: bool) -> None:
    """Download the checksummed archive into ``target`` and extract its batch directory."""
    prefix = base_url if base_url.endswith("/") else base_url + "/"
    _check_no_partial_copy(target)
    archive = target / CIFAR10_ARCHIVE
    if _holds_archive(archive):  # an extraction that failed or was killed: not downloaded again
        logger.info("extracting %s, downloaded before", archive)
    else:
        with created_directory(target):  # removed again if nothing could be fetched
            download_file(prefix + CIFAR10_ARCHIVE, archive, CIFAR10_SHA256, progress)
    _extract_archive(archive, target)
    archive.unlink()


def load_cifar10(
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    base_url: str = CIFAR10_URL,
    progress: bool = True,
) -> Dataset:
    """Load CIFAR-10: train and validation from the five data batches (50k), test = test batch.

    Validation is ``CIFAR10_VAL_SIZE`` training images picked by a fixed permutation seeded with
    ``CIFAR10_SPLIT_SEED``; training is the other 45,000; test is the official test batch.
    Images are scaled to [0, 1] and normalized per channel with the mean and standard deviation
    of the training split alone. ``augment`` is set: training batches should get random crops
    and flips.

    Args:
        data_dir: Directory holding the batch files, a ``cifar-10-batches-py/`` folder, or
            ``cifar10/`` containing either; ``None`` to search ``$ESPER_DATA_DIR`` and the cache.
        download: Download and extract the official archive (checksummed) when needed.
        base_url: URL prefix ``cifar-10-python.tar.gz`` is appended to.
        progress: Show a download progress bar on stderr.

    Returns:
        A ``Dataset`` with ``x`` float32 ``(N, 3, 32, 32)`` and ``y`` int64 ``(N,)``.

    Raises:
        DatasetNotFoundError: No local copy, and the download was not allowed or failed (the
            ``DownloadError``/``ChecksumMismatchError`` is then the ``__cause__``).
        DatasetFormatError: A batch file or the archive is malformed, or the data batches hold
            too few images to hold out ``CIFAR10_VAL_SIZE`` and keep some for training.
    """
    fetch = functools.partial(_download, base_url=base_url, progress=progress)
    root = find_dataset_dir(
        _FILES, data_dir, fetch=fetch if download else None, unpack=_unpack_by_hand
    )
    train = [_read_batch(root, name) for name in TRAIN_BATCHES]
    x_test_u8, y_test = _read_batch(root, TEST_BATCH)
    x_all_u8 = torch.cat([x for x, _ in train])  # (50000, 3, 32, 32)
    y_all = torch.cat([y for _, y in train])
    data = standardized_splits(
        "cifar10",
        (x_all_u8, y_all),
        (x_test_u8, y_test),
        (CIFAR10_VAL_SIZE, CIFAR10_SPLIT_SEED),
        f"{root}/data_batch_*",
        NUM_CLASSES,
        per_channel=True,
        augment=True,
    )
    return replace(data, source=str(root.absolute()))
