"""Load any dataset by name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from esper.data.cifar import load_cifar10
from esper.data.dataset import Dataset
from esper.data.fashion_mnist import load_fashion_mnist
from esper.data.small import load_digits, make_synthetic
from esper.data.text import load_text

DATASET_NAMES = ("fashion_mnist", "cifar10", "digits", "text", "synthetic")

FILE_DATASETS = ("fashion_mnist", "cifar10", "text")
"""The datasets read from files, the only ones a ``data_dir`` means anything to."""

DOWNLOADED_DATASETS = ("fashion_mnist", "cifar10")
"""The datasets downloaded when missing, the only ones ``download`` means anything to."""


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
            ``synthetic`` read no files and refuse one.
        block_size: Context length for ``text``; ignored by the image datasets.
        download: Allow checksummed downloads (``fashion_mnist``, ``cifar10``).
        progress: Show download progress bars on stderr.

    Returns:
        The loaded ``Dataset``; image inputs in ``torch.channels_last`` (``images_channels_last``).

    Raises:
        ValueError: Unknown ``name``, a ``data_dir`` for a dataset that reads no files, or a
            ``download`` that is not a bool.
        DatasetNotFoundError: The files are not found and could not be downloaded.
    """
    if name not in DATASET_NAMES:  # before the data_dir check, which assumed a known name
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASET_NAMES)}")
    if not isinstance(download, bool):  # "no" is true
        raise ValueError(f"download must be true or false, got {download!r}")
    check_data_dir(name, data_dir)
    if name == "fashion_mnist":
        data = load_fashion_mnist(data_dir, download=download, progress=progress)
    elif name == "cifar10":
        data = load_cifar10(data_dir, download=download, progress=progress)
    elif name == "text":
        data = load_text(data_dir, block_size)
    else:
        data = load_digits() if name == "digits" else make_synthetic()
    return images_channels_last(data)


def images_channels_last(data: Dataset) -> Dataset:
    """``data`` with its 4-D image inputs in ``torch.channels_last``; other data unchanged.

    CNN hosts and seeds hold their conv weights in that layout (``esper.kasmina.CNNHost``), and
    convolutions on this CPU run ~1.5x faster on NHWC batches. Converting once here (0.5-2 s for
    CIFAR-10's 50,000 images) serves every batch: indexing (``BatchStream``) and slicing (the
    validation and test batches) keep the layout, where a per-batch conversion would cost
    0.3-1.2 ms per CIFAR batch of 128 on every step (``benchmarks/envs.py --section raw``). The
    values are unchanged.
    """
    if data.x_train.dim() != 4:
        return data  # token ids (N, T): no channels
    return replace(
        data,
        x_train=data.x_train.contiguous(memory_format=torch.channels_last),
        x_val=data.x_val.contiguous(memory_format=torch.channels_last),
        x_test=data.x_test.contiguous(memory_format=torch.channels_last),
    )


def check_data_dir(name: str, data_dir: str | Path | None) -> None:
    """A ``data_dir`` is only given for a dataset read from files (``FILE_DATASETS``): one
    that would be ignored is a mistake to name, not a setting.

    Raises:
        ValueError: naming the dataset and the ones a data_dir is for.
    """
    if data_dir is not None and name not in FILE_DATASETS:
        raise ValueError(
            f"data_dir {str(data_dir)!r}: dataset {name!r} reads no files; a data_dir is "
            f"for {', '.join(FILE_DATASETS)}"
        )
