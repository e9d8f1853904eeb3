"""Train / validation / test: every dataset has three disjoint, fixed splits, normalized with
statistics of the training split alone, and ``evaluate`` scores a model on any of them.

Oracles are independent of the loaders: raw samples are re-read from the files with gzip, pickle
and numpy (or taken from sklearn and the text itself); a normalized split is mapped back to its
raw integer pixels by undoing the affine map without knowing its constants (the smallest value
is raw 0, the largest raw 255); split membership is compared by row hashes; expected losses are
computed by hand with ``math.log``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from esper.data import (
    Dataset,
    DatasetFormatError,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_text,
    make_synthetic,
)
from esper.tolaria import evaluate
from esper.tolaria.engine import EVAL_BATCH
from esper.tolaria.episode import dataset_on

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
IDX_IMAGES_HEADER = 16  # magic + 3 dimension sizes, 4 bytes each
IDX_LABELS_HEADER = 8  # magic + 1 dimension size


def row_hashes(rows: np.ndarray) -> list[str]:
    """SHA-1 of each sample's raw bytes: equal samples, equal hashes."""
    return [hashlib.sha1(r.tobytes()).hexdigest() for r in rows.reshape(len(rows), -1)]


def raw_pixels(splits: Sequence[Tensor], channel_dim: bool) -> list[np.ndarray]:
    """Undo ``(p / 255 - mean) / std`` without its constants: the smallest value over all splits
    is raw 0, the largest raw 255 (per channel when ``channel_dim``). Returns uint8 arrays."""
    dims = (0, 2, 3) if channel_dim else tuple(range(splits[0].dim()))
    lo = torch.stack([x.amin(dim=dims, keepdim=True) for x in splits]).amin(0)
    hi = torch.stack([x.amax(dim=dims, keepdim=True) for x in splits]).amax(0)
    out = []
    for x in splits:
        scaled = (x - lo) * (255.0 / (hi - lo))  # float32: off by ~1e-5 at most from integers
        rounded = scaled.round()
        assert float((scaled - rounded).abs().max()) <= 1e-3  # an affine map of integers
        out.append(rounded.to(torch.uint8).numpy())
    return out


def assert_partition(train: list[str], val: list[str], test: list[str]) -> None:
    assert not set(train) & set(val)
    assert not set(train) & set(test)
    assert not set(val) & set(test)


def _standardized_values(raw: np.ndarray, channels: int) -> np.ndarray:
    """``(v / 255 - m) / s`` for each raw value v, per channel: m and s (ddof=1) of ``raw``,
    taken exactly in float64 from its histogram. Shape ``(channels, 256)``."""
    values = np.arange(256, dtype=np.float64) / 255.0
    rows = []
    for c in range(channels):
        part = raw[:, c] if channels > 1 else raw
        counts = np.bincount(part.ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        std = math.sqrt((counts * (values - mean) ** 2).sum() / (n - 1))
        rows.append((values - mean) / std)
    return np.stack(rows)


def _largest_error(x: Tensor, raw: np.ndarray, table: np.ndarray) -> float:
    """Largest ``|x - table[raw]|``, channel by channel (a table of each raw value's image)."""
    x_np, expected = x.numpy(), table.astype(np.float32)
    if len(table) == 1:
        return float(np.abs(x_np - expected[0][raw]).max())
    return max(float(np.abs(x_np[:, c] - row[raw[:, c]]).max()) for c, row in enumerate(expected))


def assert_normalized_from_train(
    ds: Dataset, raw: Sequence[np.ndarray], channel_dim: bool, atol: float
) -> None:
    """Every split equals ``(raw / 255 - m) / s`` with m, s of the training split alone (ddof=1,
    per channel when ``channel_dim``); the statistics of the whole official training set (train
    and validation together, as before the split) would not pass."""
    channels = raw[0].shape[1] if channel_dim else 1
    table = _standardized_values(raw[0], channels)
    for x, r in zip((ds.x_train, ds.x_val, ds.x_test), raw, strict=True):
        assert _largest_error(x, r, table) <= atol
    wrong = _standardized_values(np.concatenate(raw[:2]), channels)
    assert _largest_error(ds.x_val, raw[1], wrong) > 10 * atol  # the check can tell them apart


def assert_same_splits(a: Dataset, b: Dataset) -> None:
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


# ----------------------------------------------------------------------------- Fashion-MNIST


def read_fashion_files() -> dict[str, np.ndarray]:
    """The four files, parsed with gzip + numpy (headers skipped, not checked: oracle only)."""
    out = {}
    for key, name in FASHION_FILES.items():
        header = IDX_IMAGES_HEADER if key.endswith("_x") else IDX_LABELS_HEADER
        with gzip.open(FASHION_DIR / name) as f:
            data = np.frombuffer(f.read(), np.uint8, offset=header)
        out[key] = data.reshape(-1, 28, 28) if key.endswith("_x") else data
    return out


@pytest.mark.skipif(
    not all((FASHION_DIR / f).is_file() for f in FASHION_FILES.values()),
    reason="real Fashion-MNIST not installed at /usr/share/datasets/fashion-mnist "
    "(apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_holds_out_validation_from_the_training_images() -> None:
    files = read_fashion_files()
    ds = load_fashion_mnist(FASHION_DIR, download=False)
    assert ds.x_train.shape == (50_000, 1, 28, 28)
    assert ds.x_val.shape == (10_000, 1, 28, 28) and ds.x_test.shape == (10_000, 1, 28, 28)

    raw = raw_pixels([ds.x_train, ds.x_val, ds.x_test], channel_dim=False)
    train, val, test = (row_hashes(r) for r in raw)
    assert_partition(train, val, test)
    # val ∪ train is the official training file, each image with its own label; test is the
    # official test file in its order.
    label_of = dict(zip(row_hashes(files["train_x"]), files["train_y"].tolist(), strict=True))
    assert sorted(train + val) == sorted(label_of)
    assert [label_of[h] for h in train] == ds.y_train.tolist()
    assert [label_of[h] for h in val] == ds.y_val.tolist()
    assert np.array_equal(raw[2][:, 0], files["test_x"])
    assert ds.y_test.tolist() == files["test_y"].tolist()
    assert_normalized_from_train(ds, raw, channel_dim=False, atol=1e-5)

    assert_same_splits(ds, load_fashion_mnist(FASHION_DIR, download=False))


# ----------------------------------------------------------------------------- CIFAR-10

CIFAR_PER_BATCH = 1_002
"""Five batches of 1,002 hold 5,010 images: the real 5,000 held out leave 10 to train on, few
enough that their statistics differ clearly from those of all 5,010."""


def write_cifar_dir(root: Path, per_batch: int, n_test: int) -> dict[str, np.ndarray]:
    """Five data batches and a test batch in the official pickle layout; return what was written
    as ``(N, 3, 32, 32)`` uint8 images (rows are the R, G and B planes) and labels."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    images, labels = [], []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        target = rng.integers(0, 10, n).tolist()
        with (root / name).open("wb") as f:
            pickle.dump({b"data": data, b"labels": target}, f, protocol=2)
        images.append(data.reshape(n, 3, 32, 32))
        labels.append(np.array(target))
    return {
        "train_x": np.concatenate(images[:5]),
        "train_y": np.concatenate(labels[:5]),
        "test_x": images[5],
        "test_y": labels[5],
    }


def test_cifar10_holds_out_5000_training_images_for_validation(tmp_path: Path) -> None:
    written = write_cifar_dir(tmp_path / "cifar", CIFAR_PER_BATCH, n_test=40)
    ds = load_cifar10(tmp_path / "cifar", download=False)
    assert ds.x_train.shape == (5 * CIFAR_PER_BATCH - 5_000, 3, 32, 32)
    assert ds.x_val.shape == (5_000, 3, 32, 32) and ds.x_test.shape == (40, 3, 32, 32)

    raw = raw_pixels([ds.x_train, ds.x_val, ds.x_test], channel_dim=True)
    train, val, test = (row_hashes(r) for r in raw)
    assert_partition(train, val, test)
    label_of = dict(zip(row_hashes(written["train_x"]), written["train_y"].tolist(), strict=True))
    assert sorted(train + val) == sorted(label_of)
    assert [label_of[h] for h in train] == ds.y_train.tolist()
    assert [label_of[h] for h in val] == ds.y_val.tolist()
    assert np.array_equal(raw[2], written["test_x"])
    assert ds.y_test.tolist() == written["test_y"].tolist()
    assert_normalized_from_train(ds, raw, channel_dim=True, atol=1e-5)

    assert_same_splits(ds, load_cifar10(tmp_path / "cifar", download=False))


def test_cifar10_with_too_few_training_images_fails_loudly(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path / "cifar", per_batch=1_000, n_test=2)  # exactly 5,000: none left
    with pytest.raises(DatasetFormatError, match="5000 training samples, need more than 5000"):
        load_cifar10(tmp_path / "cifar", download=False)


# ----------------------------------------------------------------------------- digits


def test_digits_split_60_20_20_disjoint_and_normalized_from_train() -> None:
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn not installed")
    bunch = datasets.load_digits()
    ds = load_digits()
    # 1797 // 5 = 359 each for validation and test; the rest trains.
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (1079, 359, 359)

    # Ink levels 0..16 map affinely: the smallest value is 0 ink, the largest 16.
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test]).double()
    ink = (x - x.min()) / (x.max() - x.min()) * 16.0
    assert torch.allclose(ink, ink.round(), atol=1e-3)
    ink_splits = torch.split(ink.round().to(torch.uint8), [1079, 359, 359])
    train, val, test = (row_hashes(s.numpy()) for s in ink_splits)
    assert_partition(train, val, test)
    label_of = dict(
        zip(row_hashes(bunch.data.astype(np.uint8)), bunch.target.tolist(), strict=True)
    )
    assert sorted(train + val + test) == sorted(label_of)
    for hashes, y in ((train, ds.y_train), (val, ds.y_val), (test, ds.y_test)):
        assert [label_of[h] for h in hashes] == y.tolist()

    pixels = [s.double().numpy() / 16.0 for s in ink_splits]  # [0, 1], as the loader scales
    mean, std = pixels[0].mean(), pixels[0].std(ddof=1)
    for got, p in zip((ds.x_train, ds.x_val, ds.x_test), pixels, strict=True):
        np.testing.assert_allclose(got.numpy(), (p - mean) / std, atol=1e-5)
    assert_same_splits(ds, load_digits())


# ----------------------------------------------------------------------------- text


def test_text_is_cut_contiguously_80_10_10() -> None:
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))  # the bundled fallback text
    block = 32
    ds = load_text(None, block)
    assert ds.vocab is not None
    n = len(text)
    starts = (0, n * 8 // 10, n * 9 // 10)
    ends = (*starts[1:], n)
    for (x, y), start, end in zip(
        ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)),
        starts,
        ends,
        strict=True,
    ):
        assert len(x) == (end - start) // (block + 1)  # every whole window of this part
        # Each window is block + 1 characters of the part; windows follow each other.
        windows = torch.cat([x, y[:, -1:]], dim=1)
        decoded = "".join(ds.vocab[i] for i in windows.flatten().tolist())
        assert decoded == text[start : start + len(x) * (block + 1)]
    assert_same_splits(ds, load_text(None, block))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_test_split_comes_from_the_same_task() -> None:
    ds = make_synthetic(seed=0)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (512, 256, 256)
    train, val, test = (row_hashes(x.numpy()) for x in (ds.x_train, ds.x_val, ds.x_test))
    assert_partition(train, val, test)
    assert_same_splits(ds, make_synthetic(seed=0))
    small = make_synthetic(seed=0, n_test=7)
    assert len(small.x_test) == 7
    assert torch.equal(small.x_train, ds.x_train) and torch.equal(small.x_val, ds.x_val)
    with pytest.raises(ValueError, match=r"n_test must be an integer in \[1, \d+\], got 0"):
        make_synthetic(n_test=0)

    # A linear model fitted on train scores well above chance (25%) on test: same templates.
    x = torch.cat([ds.x_train.flatten(1), torch.ones(512, 1)], dim=1)  # (N, D + 1) with bias
    onehot = torch.nn.functional.one_hot(ds.y_train, ds.num_classes).float()
    w = torch.zeros(x.shape[1], ds.num_classes)
    for _ in range(100):  # full-batch gradient descent on softmax cross-entropy
        w -= 0.5 * x.T @ (torch.softmax(x @ w, dim=1) - onehot) / x.shape[0]
    x_test = torch.cat([ds.x_test.flatten(1), torch.ones(256, 1)], dim=1)
    assert ((x_test @ w).argmax(1) == ds.y_test).float().mean().item() > 0.5


# ----------------------------------------------------------------------------- plumbing


def test_dataset_checks_the_test_split() -> None:
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="x_test has 4 samples and y_test has 3"):
        Dataset("d", x, y, x, y, x, y[:3], num_classes=2, input_shape=(2,))
    with pytest.raises(ValueError, match=r"x_test has per-sample shape \(3,\)"):
        Dataset("d", x, y, x, y, torch.zeros(4, 3), y, num_classes=2, input_shape=(2,))
    with pytest.raises(ValueError, match=r"y_test dtype torch\.float32"):
        Dataset("d", x, y, x, y, x, y.float(), num_classes=2, input_shape=(2,))


def test_channels_last_and_device_moves_include_the_test_split() -> None:
    data = load_dataset("synthetic")
    assert data.x_test.is_contiguous(memory_format=torch.channels_last)
    assert not data.x_test.is_contiguous()
    assert torch.equal(data.x_test, make_synthetic().x_test)  # the values are unchanged
    moved = dataset_on(data, torch.device("meta"))
    assert moved.x_test.device.type == "meta" and moved.y_test.device.type == "meta"


# ----------------------------------------------------------------------------- evaluate


class _NoGradLinear(nn.Linear):
    """A linear layer that checks it is called in eval mode with gradients off."""

    def forward(self, x: Tensor) -> Tensor:
        assert not self.training and not torch.is_grad_enabled()
        return super().forward(x)


def test_evaluate_by_hand_on_three_samples() -> None:
    model = _NoGradLinear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))  # logits (a, b, 0)
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
    y = torch.tensor([0, 2, 1])
    # Logits (2, 0, 0), target 0: right.  (0, 1, 0), target 2: wrong.  (1, 2, 0), target 1: right.
    losses = [
        -math.log(math.exp(2) / (math.exp(2) + 2)),
        -math.log(1 / (2 + math.e)),
        -math.log(math.exp(2) / (math.e + math.exp(2) + 1)),
    ]
    loss, accuracy = evaluate(model, x, y)
    assert loss == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert accuracy == pytest.approx(200.0 / 3)
    assert not model.training and model.weight.grad is None

    # Past one EVAL_BATCH the batches must still cover every sample exactly once.
    reps = 2 * EVAL_BATCH // 3 + 1
    loss_big, accuracy_big = evaluate(model, x.repeat(reps, 1), y.repeat(reps))
    assert loss_big == pytest.approx(sum(losses) / 3, rel=1e-5)
    assert accuracy_big == pytest.approx(200.0 / 3)


class _TokenTable(nn.Module):
    """Next-token logits from a lookup table: ``(B, T) -> (B, T, V)``."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, x: Tensor) -> Tensor:
        return self.table[x]


def test_evaluate_counts_every_token_of_a_sequence() -> None:
    model = _TokenTable(torch.tensor([[0.0, 1.0], [3.0, 0.0]]))  # token 0 -> (0, 1), 1 -> (3, 0)
    x = torch.tensor([[0, 1], [1, 1]])
    y = torch.tensor([[1, 0], [1, 0]])
    # Tokens 0, 1, 1, 1 give logits (0, 1), (3, 0), (3, 0), (3, 0) for targets 1, 0, 1, 0:
    # argmax 1, 0, 0, 0, so 3 of 4 right.
    right_01 = -math.log(math.e / (1 + math.e))  # logits (0, 1), target 1
    right_30 = -math.log(math.exp(3) / (math.exp(3) + 1))  # logits (3, 0), target 0
    wrong_30 = -math.log(1 / (math.exp(3) + 1))  # logits (3, 0), target 1
    loss, accuracy = evaluate(model, x, y)
    assert loss == pytest.approx((right_01 + 2 * right_30 + wrong_30) / 4, rel=1e-6)
    assert accuracy == pytest.approx(75.0)


def test_evaluate_rejects_mismatched_or_empty_inputs() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="x has 3, y 2"):
        evaluate(model, torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="x has 0, y 0"):
        evaluate(model, torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))


def test_fashion_oracle_reads_the_files_the_loader_requires() -> None:
    # Guards the skip condition above against a typo in a file name: the names are the four
    # the loader itself requires.
    import esper.data.fashion_mnist as fashion

    assert set(FASHION_FILES.values()) == {
        fashion.TRAIN_IMAGES,
        fashion.TRAIN_LABELS,
        fashion.TEST_IMAGES,
        fashion.TEST_LABELS,
    }


def test_a_constant_channel_is_centred_not_divided_by_zero() -> None:
    """A channel with one value over the training split gave NaN (and ±inf on the test split);
    ``hold_out`` with -3 swapped the two sizes."""
    from esper.data.dataset import hold_out, standardized_splits

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8, generator=generator)
    x[:, 2] = 128
    x_test = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=generator)
    labels = torch.zeros(20, dtype=torch.int64), torch.zeros(5, dtype=torch.int64)
    data = standardized_splits("c", (x, labels[0]), (x_test, labels[1]), (5, 0), "s", 10, True)
    for split in (data.x_train, data.x_val, data.x_test):
        assert bool(split.isfinite().all())
    assert bool((data.x_train[:, 2] == 0).all())  # centred, scale 1
    assert data.x_train[:, 0].std().item() == pytest.approx(1.0, rel=1e-5)  # others as before
    # One channel of 1,000 28x28 images: float32's std of the constant is a few ulp, not 0
    # (it scaled the training images to ~1 and the test split to 8e6).
    grey = torch.full((1000, 1, 28, 28), 128, dtype=torch.uint8)
    test = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=generator)
    y = torch.zeros(1000, dtype=torch.int64)
    for per_channel in (True, False):
        data = standardized_splits("g", (grey, y), (test, y[:5]), (100, 0), "s", 10, per_channel)
        assert bool((data.x_train == 0).all())
        assert data.x_test.abs().max().item() <= 1.0  # |v - 128| / 255
    for n_val in (-3, 0, True, 2.5):
        with pytest.raises(ValueError, match=r"n_val must be an integer in \[1, "):
            hold_out(10, n_val, 0, "s")  # type: ignore[arg-type]
