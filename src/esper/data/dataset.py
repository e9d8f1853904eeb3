"""The dataset container the loaders return, and the errors every loader raises.

``Dataset`` is a Leyline contract (``esper.leyline.data``) so the engine can consume datasets
without importing this package; it is re-exported here for the loaders and their callers.
"""

from __future__ import annotations

from esper.leyline.data import Dataset

__all__ = [
    "ChecksumMismatchError",
    "Dataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DownloadError",
]


class DatasetNotFoundError(FileNotFoundError):
    """No directory or file holds the dataset, and it could not (or may not) be downloaded."""


class DatasetFormatError(ValueError):
    """A dataset file exists but its contents are not in the expected format."""


class DownloadError(RuntimeError):
    """A download failed; nothing was left behind at the destination."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file's SHA-256 differs from the expected one; the file was deleted."""
