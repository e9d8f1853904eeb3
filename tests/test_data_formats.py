"""File-format parsers against fixtures written here from known arrays: IDX and CIFAR pickles.

The fixtures are built with ``struct``/``gzip``/``pickle``/numpy straight from the published
format descriptions, independently of the loader code; expected values are computed with numpy.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import esper.data.cifar as cifar_module
import esper.data.fashion_mnist as fashion_module
from esper.data import (
    DatasetFormatError,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    read_idx,
)

FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def write_fashion_dir(
    root: Path, n_train: int, n_test: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four Fashion-MNIST files with random content; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, key in zip(FASHION_FILES, ("train_x", "train_y", "test_x", "test_y"), strict=True):
        write_gz(root / name, idx_bytes(arrays[key]))
    return arrays


def source_rows(
    splits: list[torch.Tensor], written: np.ndarray, axes: tuple[int, ...]
) -> list[list[int]]:
    """For each normalized split, the index in ``written`` (uint8 ``(N, ...)``) of each sample.

    The loaders map pixels ``p`` to ``(p / 255 - mean) / std``; undoing that without knowing the
    constants (the smallest value over all splits is 0, the largest 255, per channel over
    ``axes``) gives the raw bytes, which identify the written sample.
    """
    x = torch.cat(splits).double()
    lo, hi = x.amin(dim=axes, keepdim=True), x.amax(dim=axes, keepdim=True)
    raw = ((x - lo) / (hi - lo) * 255.0).round().to(torch.uint8).numpy()
    index = {row.tobytes(): i for i, row in enumerate(written)}
    found = [index[row.tobytes()] for row in raw]
    ends = np.cumsum([len(split) for split in splits]).tolist()
    return [found[end - len(split) : end] for split, end in zip(splits, ends, strict=True)]


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 1, 3, 2)])
def test_read_idx_recovers_the_written_array(tmp_path: Path, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    got = read_idx(write_gz(tmp_path / "a.gz", idx_bytes(array)))
    assert got.dtype == torch.uint8
    assert np.array_equal(got.numpy(), array)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"\x00\x00", "magic"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4, "data type 0x0d"),
        (b"\x00\x00\x08\x02" + struct.pack(">I", 3), "truncated IDX header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x01\x02", "needs 5"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x01\x02", "needs 1"),
        (b"\x00\x00", "too short"),
        # torch.frombuffer's "both buffer length (0) and count (-1) must not be 0", no file named
        (b"\x00\x00\x08\x01" + struct.pack(">I", 0), r"shape \(0,\) holds nothing"),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 0, 28), r"shape \(5, 0, 28\) holds"),
        # a header claiming 2**96 bytes: OverflowError from read(), a traceback
        (b"\x00\x00\x08\x03" + struct.pack(">3I", *[2**32 - 1] * 3) + b"\x01", "needs 7922"),
    ],
    ids=[
        "bad-magic",
        "wrong-type",
        "short-header",
        "truncated",
        "trailing",
        "tiny",
        "empty",
        "empty-row",
        "huge",
    ],
)
def test_read_idx_rejects_malformed_payloads(tmp_path: Path, payload: bytes, message: str) -> None:
    path = write_gz(tmp_path / "bad.gz", payload)
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_a_file_inflating_far_past_its_header_is_refused_without_reading_it_all(
    tmp_path: Path,
) -> None:
    """The whole file was inflated before the header was read: 8.7 MB of gzip that inflates to
    2 GB took 4.2 GB to refuse. Now it reads what the header declares and one byte more."""
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 4))
        for _ in range(64):
            f.write(bytes(1 << 20))  # 64 MiB of zeros after a 4-byte payload
    claims = tmp_path / "claims.gz"  # a header claiming 600,000 images over 100 bytes
    claims.write_bytes(gzip.compress(idx_bytes(np.zeros((600_000, 28, 28), np.uint8))[:116]))
    tracemalloc.start()
    try:
        with pytest.raises(DatasetFormatError, match=r"has 5 or more bytes .* needs 4"):
            read_idx(path)
        with pytest.raises(DatasetFormatError, match=r"has 100 bytes .* needs 470400000"):
            read_idx(claims)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"refusing them held {peak / 2**20:.1f} MiB"


def test_read_idx_refuses_a_pipe_instead_of_waiting_on_it(tmp_path: Path) -> None:
    pipe = tmp_path / "labels.gz"
    os.mkfifo(pipe)
    with pytest.raises(OSError, match="not a regular file"):
        read_idx(pipe)


def test_read_idx_rejects_broken_gzip(tmp_path: Path) -> None:
    whole = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetFormatError, match="gzip"):
        read_idx(cut)
    plain = tmp_path / "plain.gz"
    plain.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))  # not compressed at all
    with pytest.raises(DatasetFormatError, match="gzip"):
        read_idx(plain)


def test_read_idx_checks_the_full_magic(tmp_path: Path) -> None:
    labels = write_gz(tmp_path / "l.gz", idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(DatasetFormatError, match="expected 2051"):
        read_idx(labels, 2051)


def test_fashion_loader_normalizes_with_training_statistics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_VAL_SIZE", 4)  # 4 of the 12 for val
    arrays = write_fashion_dir(tmp_path / "fm", n_train=12, n_test=5)
    ds = load_fashion_mnist(tmp_path / "fm", download=False)
    assert ds.x_train.shape == (8, 1, 28, 28) and ds.x_val.shape == (4, 1, 28, 28)
    assert ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    train_rows, val_rows = source_rows([ds.x_train, ds.x_val], arrays["train_x"], (0, 1, 2, 3))
    assert sorted(train_rows + val_rows) == list(range(12))  # the training file, split
    train = arrays["train_x"][train_rows].astype(np.float64) / 255.0
    mean, std = train.mean(), train.std(ddof=1)  # the training split's statistics only
    expect_val = (arrays["train_x"][val_rows].astype(np.float64) / 255.0 - mean) / std
    expect_test = (arrays["test_x"].astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), (train - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.x_val[:, 0].numpy(), expect_val, atol=1e-5)
    np.testing.assert_allclose(ds.x_test[:, 0].numpy(), expect_test, atol=1e-5)
    assert ds.y_train.tolist() == arrays["train_y"][train_rows].tolist()
    assert ds.y_val.tolist() == arrays["train_y"][val_rows].tolist()
    assert ds.y_test.tolist() == arrays["test_y"].tolist()
    assert (ds.num_classes, ds.input_shape, ds.augment) == (10, (1, 28, 28), False)


def test_fashion_loader_rejects_inconsistent_files(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path, n_train=4, n_test=2)
    write_gz(tmp_path / FASHION_FILES[1], idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DatasetFormatError, match=r"4 images but .* 3 labels"):
        load_fashion_mnist(tmp_path, download=False)
    write_gz(tmp_path / FASHION_FILES[1], idx_bytes(np.full(4, 10, dtype=np.uint8)))
    with pytest.raises(DatasetFormatError, match="label 10 out of range"):
        load_fashion_mnist(tmp_path, download=False)
    # Labels where images should be: right type, wrong rank, caught by the magic number.
    write_gz(tmp_path / FASHION_FILES[0], idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(DatasetFormatError, match="expected 2051"):
        load_fashion_mnist(tmp_path, download=False)


@pytest.mark.skipif(
    not all((FASHION_DEBIAN_DIR / f).is_file() for f in FASHION_FILES),
    reason="real Fashion-MNIST not installed at /usr/share/datasets/fashion-mnist "
    "(apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_debian_package() -> None:
    ds = load_fashion_mnist(FASHION_DEBIAN_DIR, download=False)
    assert ds.x_train.shape == (50000, 1, 28, 28) and ds.x_val.shape == (10000, 1, 28, 28)
    assert ds.x_test.shape == (10000, 1, 28, 28)
    assert sorted(set(ds.y_train.tolist())) == list(range(10))
    assert sorted(set(ds.y_val.tolist())) == list(range(10))
    # The published class balance: 6,000 per class in the training file, 1,000 in the test file.
    assert torch.bincount(torch.cat([ds.y_train, ds.y_val])).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert abs(ds.x_train.mean().item()) < 1e-4
    assert abs(ds.x_train.std().item() - 1.0) < 1e-4
    # val and test use the training split's statistics: close to 0, not exact.
    assert abs(ds.x_val.mean().item()) < 0.05 and abs(ds.x_test.mean().item()) < 0.05


# ----------------------------------------------------------------------------- CIFAR-10


def write_cifar_dir(root: Path, per_batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny CIFAR-10 python batch directory with the real key layout."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written: dict[str, np.ndarray] = {}
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(per_batch)],
        }
        with (root / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = data
        written[name + ":labels"] = np.array(labels)
    return written


def test_cifar_parser_values_labels_and_channel_normalization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cifar_module, "CIFAR10_VAL_SIZE", 5)  # 5 of the 15 for validation
    written = write_cifar_dir(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path, download=False)  # finds the batch subfolder
    rows = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major 32x32.
    images = np.stack([rows[:, c * 1024 : (c + 1) * 1024] for c in range(3)], axis=1)
    images = images.reshape(15, 3, 32, 32)
    train_rows, val_rows = source_rows([ds.x_train, ds.x_val], images, (0, 2, 3))
    assert sorted(train_rows + val_rows) == list(range(15))  # the five batches, split
    train = images[train_rows].astype(np.float64) / 255.0
    mean = train.mean(axis=(0, 2, 3), keepdims=True)  # the training split's statistics only
    std = train.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    val = images[val_rows].astype(np.float64) / 255.0
    test = written["test_batch"].reshape(3, 3, 32, 32).astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.x_train.numpy(), (train - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.x_val.numpy(), (val - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.numpy(), (test - mean) / std, atol=1e-5)
    labels = np.concatenate([written[f"data_batch_{i}:labels"] for i in range(1, 6)])
    assert ds.y_train.tolist() == labels[train_rows].tolist()
    assert ds.y_val.tolist() == labels[val_rows].tolist()
    assert ds.y_test.tolist() == written["test_batch:labels"].tolist()
    assert (ds.input_shape, ds.num_classes, ds.augment) == ((3, 32, 32), 10, True)


def _dump(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"labels": [1]}, "b'data' and b'labels'"),
        ([1, 2, 3], "expected a dict"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]}, "uint8"),
        ({b"data": np.zeros((1, 100), np.uint8), b"labels": [1]}, "expected 3072"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "2 images but 1 labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "0..9"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [True]}, "list of ints"),
    ],
    ids=["no-data", "not-dict", "dtype", "row-length", "count", "label-range", "bool-label"],
)
def test_cifar_parser_rejects_malformed_batches(
    tmp_path: Path, batch: object, message: str
) -> None:
    write_cifar_dir(tmp_path)
    _dump(tmp_path / "data_batch_3", batch)
    with pytest.raises(DatasetFormatError, match=message):
        load_cifar10(tmp_path, download=False)


def test_cifar_parser_refuses_code_in_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.mkdir, (str(tmp_path / "pwned"),))

    write_cifar_dir(tmp_path)
    _dump(tmp_path / "test_batch", {b"data": Evil(), b"labels": []})
    with pytest.raises(DatasetFormatError, match="refusing to unpickle"):
        load_cifar10(tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


def test_a_batch_saved_with_pickle_protocol_5_reads_as_the_same_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numpy writes protocol-5 arrays through numpy._core.numeric._frombuffer, which the
    unpickler refused as a "corrupt or malicious file"."""
    monkeypatch.setattr(cifar_module, "CIFAR10_VAL_SIZE", 5)
    arrays = write_cifar_dir(tmp_path)
    before = load_cifar10(tmp_path, download=False)
    for name in ("data_batch_2", "test_batch"):
        with (tmp_path / name).open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=5))
    after = load_cifar10(tmp_path, download=False)
    assert arrays and torch.equal(before.x_train, after.x_train)
    assert torch.equal(before.x_test, after.x_test) and torch.equal(before.y_val, after.y_val)


def test_a_pickle_whose_allowed_calls_fail_is_a_format_error(tmp_path: Path) -> None:
    """``_codecs.encode`` (allowed: numpy's arrays use it) asked for a codec that does not exist
    raised LookupError, a traceback."""
    write_cifar_dir(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"c_codecs\nencode\n(Vabc\nVno-such-codec\ntR.")
    with pytest.raises(DatasetFormatError, match=r"not a readable CIFAR pickle.*LookupError"):
        load_cifar10(tmp_path, download=False)


def test_cifar_parser_refuses_files_outside_the_dataset_dir(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path / "elsewhere")
    root = tmp_path / "cifar"
    write_cifar_dir(root)
    (root / "data_batch_2").unlink()
    (root / "data_batch_2").symlink_to(tmp_path / "elsewhere" / "data_batch_2")
    with pytest.raises(DatasetFormatError, match="not a regular file inside"):
        load_cifar10(root, download=False)


def test_cifar_parser_rejects_truncated_pickle(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path)
    whole = (tmp_path / "data_batch_1").read_bytes()
    (tmp_path / "data_batch_1").write_bytes(whole[:100])
    with pytest.raises(DatasetFormatError, match="not a readable CIFAR pickle"):
        load_cifar10(tmp_path, download=False)
