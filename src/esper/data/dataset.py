"""The dataset container the loaders return, the errors every loader raises, and the seeded
hold-out split the image loaders carve their validation set with.

``Dataset`` is a Leyline contract (``esper.leyline.data``) so the engine can consume datasets
without importing this package; it is re-exported here for the loaders and their callers.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from torch import Tensor

from esper.leyline.config import MAX_SEED, check_int
from esper.leyline.data import Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "ChecksumMismatchError",
    "Dataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DownloadError",
    "DownloadPlaceError",
    "hold_out",
]


class DatasetNotFoundError(FileNotFoundError):
    """No directory or file holds the dataset, and it could not (or may not) be downloaded."""


class DatasetFormatError(ValueError):
    """A dataset file exists but its contents are not in the expected format."""


class DownloadError(RuntimeError):
    """A download failed; nothing was left behind at the destination."""


class DownloadPlaceError(DownloadError):
    """A download's place is taken on this machine (a file where its folder goes, a folder
    where its file goes): no retry of the transfer helps."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file's SHA-256 differs from the expected one; the file was deleted."""


def hold_out(n: int, n_val: int, seed: int, source: str) -> tuple[Tensor, Tensor]:
    """Pick ``n_val`` of ``n`` samples for validation by a fixed, seeded permutation.

    The permutation comes from its own ``torch.Generator`` (the global RNG is never touched), so
    equal ``(n, n_val, seed)`` always give the same split.

    Args:
        n: Samples in the official training set.
        n_val: How many of them to hold out for validation.
        seed: Seed of the permutation.
        source: Where the samples come from, for the error message.

    Returns:
        ``(train_idx, val_idx)``: int64 indices ``(n - n_val,)`` and ``(n_val,)``, disjoint and
        together covering ``0..n-1``.

    Raises:
        DatasetFormatError: ``n <= n_val``, which would leave nothing to train on.
        ValueError: ``n_val`` or ``seed`` is not an integer >= 1 (>= 0 for the seed); -3 swapped
            the two sizes.
    """
    check_int("n_val", n_val, 1)
    check_int("seed", seed, 0, MAX_SEED)
    if n <= n_val:
        raise DatasetFormatError(
            f"{source}: {n} training samples, need more than {n_val} to hold out {n_val} for "
            "validation and train on the rest"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def _statistics(train_u8: Tensor, x_train: Tensor, per_channel: bool) -> tuple[Tensor, Tensor]:
    """The training split's mean and standard deviation (``(1, C, 1, 1)`` per channel, else
    scalars), from its images in [0, 1] and as uint8. A channel constant over the split is
    only centred, on its exact value: its float std (0, or a few ulp of rounding) divided by
    zero or blew the test split up."""
    if per_channel:
        mean = x_train.mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
        std = x_train.std(dim=(0, 2, 3), keepdim=True)
    else:
        mean, std = x_train.mean(), x_train.std()
    dims = (0, 2, 3) if per_channel else (0, 1, 2, 3)
    low, high = train_u8.amin(dim=dims, keepdim=True), train_u8.amax(dim=dims, keepdim=True)
    constant = (low == high).reshape(mean.shape)
    mean = torch.where(constant, low.float().div_(255.0).reshape(mean.shape), mean)
    return mean, torch.where(constant, torch.ones_like(std), std)


def standardized_splits(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    validation: tuple[int, int],
    source: str,
    num_classes: int,
    per_channel: bool,
    augment: bool = False,
) -> Dataset:
    """Training, validation and test splits of uint8 images ``(N, C, H, W)``: the validation
    images held out of the official training set (``hold_out``), everything scaled to [0, 1]
    and standardized by the training split's mean and standard deviation (per channel, or
    over all values).

    Args:
        name: the dataset's name.
        train: the official training images and labels.
        test: the test images and labels.
        validation: ``(images held out, seed of the split)``.
        source: where the training images came from (for messages and the log).
        num_classes: label classes.
        per_channel: standardize each channel by its own statistics (a channel constant
            over the training split is only centred).
        augment: whether training batches are augmented (``Dataset.augment``).

    Raises:
        DatasetFormatError: too few training images to hold out the validation split.
    """
    (x_all_u8, y_all), (x_test_u8, y_test) = train, test
    train_idx, val_idx = hold_out(x_all_u8.shape[0], *validation, source)
    # Split while still uint8 (a quarter of the memory), then scale to [0, 1].
    train_u8 = x_all_u8[train_idx]
    x_train = train_u8.float().div_(255.0)
    x_val = x_all_u8[val_idx].float().div_(255.0)
    x_test = x_test_u8.float().div_(255.0)
    mean, std = _statistics(train_u8, x_train, per_channel)
    logger.info(
        "%s from %s: training mean %s std %s",
        name,
        source,
        [round(m, 4) for m in mean.flatten().tolist()],
        [round(s, 4) for s in std.flatten().tolist()],
    )
    return Dataset(
        name=name,
        x_train=x_train.sub_(mean).div_(std),
        y_train=y_all[train_idx],
        x_val=x_val.sub_(mean).div_(std),
        y_val=y_all[val_idx],
        x_test=x_test.sub_(mean).div_(std),
        y_test=y_test,
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
        augment=augment,
        sha256=samples_sha256(x_all_u8, y_all, x_test_u8, y_test),
    )


def samples_sha256(*tensors: Tensor) -> str:
    """The SHA-256 of ``tensors``' shapes, dtypes and bytes, in order: what an image loader
    read, whatever the files held it (another copy of the same images, compressed otherwise,
    has the same digest; a copy with any pixel changed has another). A resume compares it
    with the run's (``meta.json``'s ``data``), which saw the data's name and sizes alone."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())
        array = tensor.contiguous().numpy()  # little-endian bytes: a resume on another machine
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).data)
    return digest.hexdigest()
