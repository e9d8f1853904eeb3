"""Character-level text, scikit-learn digits, the synthetic task and ``load_dataset``."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from esper.data import (
    DATASET_NAMES,
    Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    load_dataset,
    load_digits,
    load_text,
    make_synthetic,
)

# ----------------------------------------------------------------------------- text


def test_text_vocab_windows_and_shift_by_one(tmp_path: Path) -> None:
    text = "the cat sat on the mat; a bat ate a rat. ok!\nends."  # 50 characters
    assert len(text) == 50
    path = tmp_path / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    ds = load_text(path, block_size=3)
    assert ds.source == str(path) and ds.receipt()["samples"] == {"train": 10, "val": 1, "test": 1}
    assert ds.receipt()["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()

    vocab = sorted(set(text))
    assert ds.vocab == tuple(vocab) and ds.num_classes == len(vocab)
    ids = [vocab.index(ch) for ch in text]
    # 80% of 50 = 40 training characters -> 10 windows of 4; characters 40..44 are validation
    # and 45..49 test -> 1 window each.
    train_windows = [ids[i : i + 4] for i in range(0, 40, 4)]
    val_windows = [ids[40:44]]
    test_windows = [ids[45:49]]
    assert ds.x_train.tolist() == [w[:3] for w in train_windows]
    assert ds.y_train.tolist() == [w[1:] for w in train_windows]
    assert ds.x_val.tolist() == [w[:3] for w in val_windows]
    assert ds.y_val.tolist() == [w[1:] for w in val_windows]
    assert ds.x_test.tolist() == [w[:3] for w in test_windows]
    assert ds.y_test.tolist() == [w[1:] for w in test_windows]
    assert ds.input_shape == (3,) and ds.x_train.dtype == torch.int64
    assert "".join(ds.vocab[i] for i in ds.x_train[0].tolist()) == "the"


def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path: Path) -> None:
    """Editors on Windows start UTF-8 files with U+FEFF; it became a token of its own."""
    text = "αβγ δ€😀 " * 10
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    one, other = load_text(plain, block_size=4), load_text(marked, block_size=4)
    assert one.vocab == other.vocab and torch.equal(one.x_train, other.x_train)


def test_text_handles_multibyte_characters(tmp_path: Path) -> None:
    text = "αβγ δ€😀 " * 10
    path = tmp_path / "u.txt"
    path.write_text(text, encoding="utf-8")
    ds = load_text(path, block_size=4)
    assert ds.vocab is not None and set(ds.vocab) == set(text)
    decoded = "".join(ds.vocab[i] for i in ds.x_train[0].tolist())
    assert decoded == text[:4]


def test_text_length_boundary_names_the_characters_needed(tmp_path: Path) -> None:
    block = 5
    path = tmp_path / "t.txt"
    # 56 = 10 * 5 + 6: training ends at 44 and validation at 50, so validation and test get 6
    # characters each, exactly one window of block + 1.
    path.write_text("ab" * 28, encoding="utf-8")
    ds = load_text(path, block)
    assert ds.x_val.shape == (1, block) and ds.x_test.shape == (1, block)
    assert ds.x_train.shape == (7, block)  # 44 // 6
    path.write_text("ab" * 27 + "a", encoding="utf-8")  # 55: validation is 44..48, one short
    with pytest.raises(DatasetFormatError, match=r"has 55 characters.*at least 56"):
        load_text(path, block)


def test_text_rejects_non_utf8_with_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"hello w\xf6rld " * 20)
    with pytest.raises(DatasetFormatError) as info:
        load_text(path, block_size=4)
    message = str(info.value)
    assert str(path) in message and "byte offset 7" in message and "0xf6" in message
    path.write_bytes(b"\xef\xbb\xbfhello w\xf6rld")  # offsets count the byte-order mark too
    with pytest.raises(DatasetFormatError, match="invalid byte 0xf6 at byte offset 10 "):
        load_text(path, block_size=4)


def test_text_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"nope\.txt does not exist; pass the path"):
        load_text(tmp_path / "nope.txt", block_size=8)
    # a directory was said not to exist "(or is not a file)" (a walk-through)
    with pytest.raises(DatasetNotFoundError, match=r" is a directory, not a file; pass the path"):
        load_text(tmp_path, block_size=8)
    with pytest.raises(ValueError, match=r"block_size must be an integer in \[1, \d+\], got 0"):
        load_text(None, block_size=0)


def test_pydoc_fallback_is_real_text() -> None:
    from pydoc_data.topics import topics

    ds = load_text(None, block_size=32)
    assert ds.name == "text:pydoc_data"
    assert ds.x_train.shape[0] > 1000 and ds.x_val.shape[0] > 100
    assert ds.vocab is not None
    first = "".join(ds.vocab[i] for i in ds.x_train[0].tolist())
    assert first == topics[sorted(topics)[0]][:32]
    assert torch.equal(ds.x_train[:, 1:], ds.y_train[:, :-1])  # y is x shifted by one
    via_registry = load_dataset("text", block_size=32)
    assert torch.equal(via_registry.x_val, ds.x_val)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_split_and_determinism() -> None:
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn not installed")
    raw = datasets.load_digits()
    ds = load_digits()
    assert ds.x_train.shape == (1079, 1, 8, 8) and ds.x_val.shape == (359, 1, 8, 8)
    assert ds.x_test.shape == (359, 1, 8, 8)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == len(raw.target)  # a partition
    every_label = torch.cat([ds.y_train, ds.y_val, ds.y_test]).bincount().tolist()
    assert every_label == torch.as_tensor(raw.target).bincount().tolist()
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std().item() - 1) < 1e-5
    again = load_digits()
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_val, again.y_val)
    # Undo the normalization without knowing its constants: pixels are ink levels 0..16 mapped
    # affinely, so (x - min) / (smallest gap between values) must give those integers back, and
    # the (image, label) pairs of train + val + test must be exactly sklearn's.
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test]).flatten(1).double()
    levels = torch.unique(x)
    step = (levels[1:] - levels[:-1]).min()
    ink = (x - levels[0]) / step
    assert torch.allclose(ink, ink.round(), atol=1e-3) and int(ink.max().round()) == 16
    ours = sorted(
        (tuple(row), label)
        for row, label in zip(
            ink.round().long().tolist(),
            torch.cat([ds.y_train, ds.y_val, ds.y_test]).tolist(),
            strict=True,
        )
    )
    theirs = sorted(
        (tuple(int(v) for v in row), int(label))
        for row, label in zip(raw.data, raw.target, strict=True)
    )
    assert ours == theirs


def test_digits_without_sklearn_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ModuleNotFoundError, match="pip install scikit-learn"):
        load_digits()


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    before = torch.get_rng_state()
    a, b, c = make_synthetic(seed=3), make_synthetic(seed=3), make_synthetic(seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.shape == (512, 3, 8, 8) and a.x_val.shape == (256, 3, 8, 8)
    assert sorted(set(a.y_train.tolist())) == [0, 1, 2, 3]


def test_synthetic_task_is_learnable_by_a_linear_model() -> None:
    ds = make_synthetic(seed=0)
    x = torch.cat([ds.x_train.flatten(1), torch.ones(512, 1)], dim=1)  # (N, D + 1) with bias
    onehot = F.one_hot(ds.y_train, ds.num_classes).float()
    w = torch.zeros(x.shape[1], ds.num_classes)
    for _ in range(100):  # full-batch gradient descent on softmax cross-entropy
        w -= 0.5 * x.T @ (torch.softmax(x @ w, dim=1) - onehot) / x.shape[0]
    x_val = torch.cat([ds.x_val.flatten(1), torch.ones(256, 1)], dim=1)
    accuracy = ((x_val @ w).argmax(1) == ds.y_val).float().mean().item()
    assert accuracy > 0.5  # chance is 0.25; labels from a random teacher would stay near it


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"num_classes must be an integer in \[2, \d+\], got 1"):
        make_synthetic(num_classes=1)
    with pytest.raises(ValueError, match=r"n_train must be an integer in \[1, \d+\], got 0"):
        make_synthetic(n_train=0)
    # each failed deep in torch (TypeError from randint or randn) or was taken as 1
    for given in ({"n_train": 2.5}, {"n_val": True}, {"seed": 1.5}):
        with pytest.raises(ValueError, match=r"must be an integer in \["):
            make_synthetic(**given)  # type: ignore[arg-type]
    for shape in ((3, 2.5, 8), (3, True, 8), 5, ()):
        with pytest.raises(ValueError, match=r"input_shape=.* must be a non-empty tuple"):
            make_synthetic(input_shape=shape)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"block_size must be an integer in \[1, \d+\], got 2.5"):
        load_text(None, block_size=2.5)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- registry


def test_load_dataset_names_and_errors() -> None:
    assert set(DATASET_NAMES) == {"fashion_mnist", "cifar10", "digits", "text", "synthetic"}
    assert isinstance(load_dataset("synthetic"), Dataset)
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*fashion_mnist.*synthetic"):
        load_dataset("mnist")
    for name in ("synthetic", "digits"):  # it was ignored with a log line
        with pytest.raises(ValueError, match=rf"data_dir '/some/dir': dataset '{name}' reads no"):
            load_dataset(name, "/some/dir")
    with pytest.raises(ValueError, match="unknown dataset 'bogus'"):  # said: "reads no files"
        load_dataset("bogus", "/some/dir")
    with pytest.raises(ValueError, match="download must be true or false, got 'no'"):
        load_dataset("synthetic", download="no")  # type: ignore[arg-type]


def test_dataset_rejects_inconsistent_tensors() -> None:
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    labels = torch.tensor([0, 5, -1, 1])  # -1 (or -100) skipped by cross-entropy, 5 past 2
    with pytest.raises(ValueError, match=r"y_train holds labels from -1 to 5, need \[0, 2\)"):
        Dataset("d", x, labels, x, y, x, y, num_classes=2, input_shape=(2,))
    with pytest.raises(ValueError, match=r"num_classes=2\.5, need an int >= 2"):
        Dataset("d", x, y, x, y, x, y, num_classes=2.5, input_shape=(2,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"augment needs images \(C, H, W\)"):
        Dataset("d", x, y, x, y, x, y, num_classes=2, input_shape=(2,), augment=True)
    with pytest.raises(ValueError, match=r"per-sample shape \(2,\), expected input_shape \(3,\)"):
        Dataset("d", x, y, x, y, x, y, num_classes=2, input_shape=(3,))
    with pytest.raises(ValueError, match="4 samples and y_val has 3"):
        Dataset("d", x, y, x, y[:3], x, y, num_classes=2, input_shape=(2,))
    with pytest.raises(ValueError, match="need int64"):
        Dataset("d", x, y.float(), x, y, x, y, num_classes=2, input_shape=(2,))
