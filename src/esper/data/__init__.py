"""Data: real datasets loaded into memory and the batch streams that feed training.

This package owns finding, downloading (checksummed, atomic) and parsing the datasets —
Fashion-MNIST (IDX files), CIFAR-10 (python-pickle batches), scikit-learn's digits,
character-level text (any UTF-8 file, Python's bundled ``pydoc_data`` text as the fallback) and
an explicit synthetic task for tests and benchmarks — into one frozen ``Dataset`` container, plus
the seeded, resumable ``BatchStream`` and the crop/flip augmentation. ``load_dataset`` hands
image inputs over in ``torch.channels_last``, the layout CNN hosts train in.
It never substitutes random data for a dataset that fails to load; it raises saying where it
looked and what to do. It imports only the standard library, torch and Leyline (whose
``esper.leyline.data.Dataset`` it fills and re-exports); it needs nothing from Kasmina. numpy,
scikit-learn and tqdm are imported only by the loaders that need them.
"""

from esper.data.augment import augment_crop_flip
from esper.data.cifar import load_cifar10
from esper.data.dataset import (
    ChecksumMismatchError,
    Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    DownloadError,
)
from esper.data.download import download_file
from esper.data.fashion_mnist import load_fashion_mnist, read_idx
from esper.data.registry import DATASET_NAMES, images_channels_last, load_dataset
from esper.data.small import load_digits, make_synthetic
from esper.data.stream import BatchStream
from esper.data.text import load_text

__all__ = [
    "DATASET_NAMES",
    "BatchStream",
    "ChecksumMismatchError",
    "Dataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DownloadError",
    "augment_crop_flip",
    "download_file",
    "images_channels_last",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_text",
    "make_synthetic",
    "read_idx",
]
