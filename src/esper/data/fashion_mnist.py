"""Fashion-MNIST: the IDX file parser and the loader.

Format (Xiao, Rasul & Vollgraf 2017, same layout as LeCun's MNIST): each file is gzip-compressed
IDX. The header is a 4-byte big-endian magic ``0x00 0x00 <type> <ndim>`` followed by ``ndim``
big-endian uint32 dimension sizes, then the row-major payload. Images are type 0x08 (uint8) with
3 dimensions (magic 2051), labels uint8 with 1 dimension (magic 2049).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from esper.data.dataset import Dataset, DatasetFormatError, standardized_splits
from esper.data.download import download_file
from esper.data.locate import DatasetFiles, find_dataset_dir
from esper.leyline.files import open_regular

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Debian's `dataset-fashion-mnist` installs the four files here. Module-level so tests can
# point it elsewhere.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

# SHA-256 of the files as published by Zalando Research at FASHION_MNIST_URL. Only downloads are
# checked against these. Debian's package ships the same IDX content re-compressed (different
# .gz bytes), so local directories are validated by parsing, not by digest.
FASHION_MNIST_SHA256: dict[str, str] = {
    TRAIN_IMAGES: "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
    TRAIN_LABELS: "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
    TEST_IMAGES: "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    TEST_LABELS: "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}

IDX_UBYTE = 0x08
IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dimension
NUM_CLASSES = 10
IMAGE_SIZE = 28

FASHION_MNIST_VAL_SIZE = 10_000
"""Training images held out for validation: as many as the official test set, leaving 50,000 to
train on. Module-level so tests with tiny fixture files can lower it."""
FASHION_MNIST_SPLIT_SEED = 0
"""Seed of the fixed permutation that picks the held-out images; changing it changes every run."""


def read_idx(path: str | Path, magic: int | None = None) -> Tensor:
    """Parse one gzip-compressed IDX file holding unsigned bytes.

    Args:
        path: The ``.gz`` IDX file.
        magic: The exact magic number expected (e.g. ``IDX_IMAGES_MAGIC``), which fixes the
            rank; ``None`` accepts any rank.

    Returns:
        A uint8 tensor with the shape given in the header.

    Raises:
        DatasetFormatError: The file is not gzip, the magic is wrong, the data type is not
            unsigned byte (the only type the Fashion-MNIST files use), or the payload size does
            not match the header (truncated file or trailing bytes).
        OSError: it cannot be opened, or is not a regular file (``RefusedFileError``: a pipe
            was read from forever).
    """
    path = Path(path)
    try:
        with open_regular(path) as file, gzip.open(file, "rb") as f:  # a pipe would block
            shape, payload = _read_idx_parts(path, f, magic)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"{path}: not a valid gzip file ({exc})") from exc
    # bytearray: torch.frombuffer needs a writable buffer to avoid a warning.
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    return data.reshape(shape)


_READ_BYTES = 1 << 20
"""How much of an IDX payload is read at once (``_read_idx_parts``)."""


def _read_idx_parts(
    path: Path, f: gzip.GzipFile, magic: int | None
) -> tuple[tuple[int, ...], bytes]:
    """The header's shape and the payload, read as far as the header says and one byte more
    (a file that inflates to gigabytes is refused without holding them)."""
    raw = f.read(4)
    if len(raw) < 4:
        raise DatasetFormatError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zero0, zero1, dtype, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise DatasetFormatError(
            f"{path}: bad IDX magic 0x{raw[:4].hex()}; must start with two zero bytes"
        )
    if dtype != IDX_UBYTE:
        raise DatasetFormatError(
            f"{path}: IDX data type 0x{dtype:02x} not supported; accepted: 0x08 (unsigned byte)"
        )
    if magic is not None and int.from_bytes(raw[:4], "big") != magic:
        raise DatasetFormatError(
            f"{path}: IDX magic {int.from_bytes(raw[:4], 'big')} (0x{raw[:4].hex()}), "
            f"expected {magic} (0x{magic:08x})"
        )
    if ndim == 0:
        raise DatasetFormatError(f"{path}: IDX header declares 0 dimensions")
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DatasetFormatError(
            f"{path}: truncated IDX header ({4 + len(dims)} of {4 + 4 * ndim} bytes)"
        )
    shape = struct.unpack(f">{ndim}I", dims)
    if 0 in shape:
        raise DatasetFormatError(f"{path}: IDX header shape {shape} holds nothing; need sizes >= 1")
    expected = math.prod(shape)
    chunks, size = [], 0  # read by pieces: a header may claim more than there is, or fits
    while size <= expected and (chunk := f.read(min(_READ_BYTES, expected + 1 - size))):
        chunks.append(chunk)
        size += len(chunk)
    payload = b"".join(chunks)
    if len(payload) != expected:
        more = " or more" if len(payload) > expected else ""
        raise DatasetFormatError(
            f"{path}: IDX payload has {len(payload)}{more} bytes but the header shape {shape} "
            f"needs {expected} (truncated or corrupt file)"
        )
    return shape, payload


def _load_split(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels"
        )
    if tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetFormatError(
            f"{images_path}: images are {tuple(images.shape[1:])}, expected (28, 28)"
        )
    if labels.numel() and int(labels.max()) >= NUM_CLASSES:
        raise DatasetFormatError(
            f"{labels_path}: label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}"
        )
    return images, labels.long()


def load_fashion_mnist(
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    base_url: str = FASHION_MNIST_URL,
    progress: bool = True,
) -> Dataset:
    """Load Fashion-MNIST: train and validation from the 60k training images, test the 10k.

    Validation is ``FASHION_MNIST_VAL_SIZE`` training images picked by a fixed permutation seeded
    with ``FASHION_MNIST_SPLIT_SEED``; training is the other 50,000; test is the official test
    set. Images are scaled to [0, 1] and normalized with the mean and standard deviation of the
    training split alone. See ``find_dataset_dir`` for where the files are looked for.

    Args:
        data_dir: Directory holding the four ``.gz`` files (or a parent holding
            ``fashion-mnist/``); ``None`` to search ``$ESPER_DATA_DIR``, the Debian path and
            the cache.
        download: Download the files (checksummed) when no local copy is found. A download
            that fails keeps the files it finished (each checksummed; every file is written
            atomically), and the next one fetches only the others.
        base_url: URL prefix the four file names are appended to for the download.
        progress: Show a download progress bar on stderr.

    Returns:
        A ``Dataset`` with ``x`` float32 ``(N, 1, 28, 28)`` and ``y`` int64 ``(N,)``.

    Raises:
        DatasetNotFoundError: No local copy, and the download was not allowed or failed (the
            ``DownloadError``/``ChecksumMismatchError`` is then the ``__cause__``).
        DatasetFormatError: A file is malformed, or the training file has too few images to
            hold out ``FASHION_MNIST_VAL_SIZE`` and keep some for training.
    """
    files = DatasetFiles(
        name="fashion-mnist",
        required=(TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS),
        system_dir=FASHION_MNIST_SYSTEM_DIR,
        install_hint="install the Debian package (apt-get install dataset-fashion-mnist)",
    )

    def fetch(target: Path) -> None:
        prefix = base_url if base_url.endswith("/") else base_url + "/"
        for name in files.required:
            if not (target / name).is_file():
                download_file(prefix + name, target / name, FASHION_MNIST_SHA256[name], progress)

    root = find_dataset_dir(files, data_dir, fetch=fetch if download else None)
    return replace(_read(root), source=str(root.absolute()))


def _read(root: Path) -> Dataset:
    """The splits from the four files in ``root``, scaled and normalized (see the loader)."""
    x_all_u8, y_all = _load_split(root / TRAIN_IMAGES, root / TRAIN_LABELS)
    x_test_u8, y_test = _load_split(root / TEST_IMAGES, root / TEST_LABELS)
    return standardized_splits(
        "fashion_mnist",
        (x_all_u8.unsqueeze(1), y_all),  # (N, 1, 28, 28)
        (x_test_u8.unsqueeze(1), y_test),
        (FASHION_MNIST_VAL_SIZE, FASHION_MNIST_SPLIT_SEED),
        str(root / TRAIN_IMAGES),
        NUM_CLASSES,
        per_channel=False,
    )
