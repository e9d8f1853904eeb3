"""The dataset container the loaders return, the errors every loader raises, and the seeded
hold-out split the image loaders carve their validation set with.

``Dataset`` is a Leyline contract (``esper.leyline.data``) so the engine can consume datasets
without importing this package; it is re-exported here for the loaders and their callers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper.leyline.data import Dataset

__all__ = [
    "ChecksumMismatchError",
    "Dataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DownloadError",
    "hold_out",
]


class DatasetNotFoundError(FileNotFoundError):
    """No directory or file holds the dataset, and it could not (or may not) be downloaded."""


class DatasetFormatError(ValueError):
    """A dataset file exists but its contents are not in the expected format."""


class DownloadError(RuntimeError):
    """A download failed; nothing was left behind at the destination."""


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
    """
    if n <= n_val:
        raise DatasetFormatError(
            f"{source}: {n} training samples, need more than {n_val} to hold out {n_val} for "
            "validation and train on the rest"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]
