"""Datasets that need no files: scikit-learn's bundled digits and the explicit synthetic task."""

from __future__ import annotations

import torch
from torch import Tensor

from esper.data.dataset import Dataset
from esper.leyline.config import MAX_SEED, check_int

# Seed of the fixed permutation that splits digits 60/20/20; changing it changes every digits run.
DIGITS_SPLIT_SEED = 0
# One in five samples goes to validation and one in five to test (the usual 60/20/20 split).
DIGITS_HELD_OUT_DENOMINATOR = 5
# Digits pixels are integer ink counts in 0..16 (sklearn docs: "8x8 image of integer pixels in
# the range 0..16"), so dividing by 16 maps them onto [0, 1].
DIGITS_MAX_PIXEL = 16.0


def load_digits() -> Dataset:
    """Load scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Pixels are scaled to [0, 1] and normalized with the mean and standard deviation of the
    training split alone. The split is a fixed permutation (seeded with ``DIGITS_SPLIT_SEED``):
    its first fifth (359 images) is validation, the next fifth (359) test, the rest (1079)
    training.

    Returns:
        A ``Dataset`` with ``x`` float32 ``(N, 1, 8, 8)`` and ``y`` int64 ``(N,)``.

    Raises:
        ModuleNotFoundError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import (  # type: ignore[import-untyped, unused-ignore]
            load_digits as sklearn_load_digits,
        )
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the 'digits' dataset comes bundled with scikit-learn, which is not installed; "
            "install it with `pip install scikit-learn`"
        ) from exc
    from sklearn import __version__ as sklearn_version

    bunch = sklearn_load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / DIGITS_MAX_PIXEL
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    perm = torch.randperm(x.shape[0], generator=generator)
    n_held = x.shape[0] // DIGITS_HELD_OUT_DENOMINATOR  # samples each in val and in test
    val_idx, test_idx, train_idx = perm[:n_held], perm[n_held : 2 * n_held], perm[2 * n_held :]
    x_train = x[train_idx]
    mean, std = x_train.mean(), x_train.std()
    return Dataset(
        source=f"scikit-learn {sklearn_version} (load_digits)",
        name="digits",
        x_train=(x_train - mean) / std,
        y_train=y[train_idx],
        x_val=(x[val_idx] - mean) / std,
        y_val=y[val_idx],
        x_test=(x[test_idx] - mean) / std,
        y_test=y[test_idx],
        num_classes=10,
        input_shape=(1, 8, 8),
    )


SYNTHETIC_SIGNAL = 0.3
"""Template scale against unit noise: small hosts learn it to well above chance, not to 100%."""


def _checked_shape(shape: object) -> tuple[int, ...]:
    """``shape`` as a tuple of sizes >= 1 (2.5 and True failed deep in torch's ``randn``)."""
    sizes = tuple(shape) if isinstance(shape, tuple | list) else ()
    if not sizes or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in sizes):
        raise ValueError(f"input_shape={shape!r} must be a non-empty tuple of sizes >= 1")
    return sizes


def make_synthetic(
    n_train: int = 512,
    n_val: int = 256,
    n_test: int = 256,
    input_shape: tuple[int, ...] = (3, 8, 8),
    num_classes: int = 4,
    seed: int = 0,
) -> Dataset:
    """Make a learnable synthetic classification task for tests and benchmarks.

    Each class has a fixed random template; a sample is its class template scaled by
    ``SYNTHETIC_SIGNAL`` plus standard-normal noise. Linear models and CNNs (which pool over
    positions) can both learn it, and the noise keeps it from being trivial.
    Everything is drawn from one ``torch.Generator`` seeded with ``seed``; the global RNG is
    never touched. The test samples are drawn last, so ``n_test`` leaves the training and
    validation samples unchanged.

    Args:
        n_train: Number of training samples.
        n_val: Number of validation samples.
        n_test: Number of test samples.
        input_shape: Per-sample shape, e.g. ``(3, 8, 8)``.
        num_classes: Number of classes (at least 2).
        seed: Seed of the generator; equal seeds give equal datasets.

    Returns:
        A ``Dataset`` with ``x`` float32 ``(N, *input_shape)`` and ``y`` int64 ``(N,)``.

    Raises:
        ValueError: A size that is not an integer >= 1 (True and 2.5 are not), ``num_classes``
            < 2, or a seed outside [0, 2**32).
    """
    for name, count in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        check_int(name, count)
    check_int("num_classes", num_classes, 2)
    check_int("seed", seed, 0, MAX_SEED)
    input_shape = _checked_shape(input_shape)
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, *input_shape, generator=generator)  # (K, *shape)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=generator)
        noise = torch.randn(n, *input_shape, generator=generator)
        return SYNTHETIC_SIGNAL * templates[y] + noise, y  # (n, *shape), (n,)

    x, y = draw(n_train + n_val)
    x_test, y_test = draw(n_test)
    return Dataset(
        source=f"generated (make_synthetic, seed {seed})",
        name="synthetic",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_val=x[n_train:],
        y_val=y[n_train:],
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        input_shape=tuple(input_shape),
    )
