"""Load any dataset by name."""

from __future__ import annotations

import logging
from pathlib import Path

from esper.data.cifar import load_cifar10
from esper.data.dataset import Dataset
from esper.data.fashion_mnist import load_fashion_mnist
from esper.data.small import load_digits, make_synthetic
from esper.data.text import load_text

logger = logging.getLogger(__name__)

DATASET_NAMES = ("fashion_mnist", "cifar10", "digits", "text", "synthetic")


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    block_size: int = 64,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: One of ``DATASET_NAMES``: ``fashion_mnist``, ``cifar10``, ``digits``, ``text``,
            ``synthetic``.
        data_dir: For ``fashion_mnist`` and ``cifar10`` the directory holding the files; for
            ``text`` the text file (``None``: Python's bundled pydoc text). ``digits`` and
            ``synthetic`` need no files; a ``data_dir`` given for them is ignored with a
            warning.
        block_size: Context length for ``text``; ignored by the image datasets.
        download: Allow checksummed downloads (``fashion_mnist``, ``cifar10``).
        progress: Show download progress bars on stderr.

    Returns:
        The loaded ``Dataset``.

    Raises:
        ValueError: Unknown ``name``.
        DatasetNotFoundError: The files are not found and could not be downloaded.
    """
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir, download=download, progress=progress)
    if name == "cifar10":
        return load_cifar10(data_dir, download=download, progress=progress)
    if name == "text":
        return load_text(data_dir, block_size)
    if name in ("digits", "synthetic"):
        if data_dir is not None:
            # Not an error: a CLI may pass one --data-dir to every task (e.g. a demo falling
            # back from Fashion-MNIST to digits); say so instead of ignoring it silently.
            logger.warning("dataset %r needs no files; ignoring data_dir=%s", name, data_dir)
        return load_digits() if name == "digits" else make_synthetic()
    raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASET_NAMES)}")
