"""BatchStream order, resumption and RNG isolation; crop/flip augmentation."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor

from esper.data import BatchStream, augment_crop_flip
from esper.data.stream import take_rows
from esper.leyline.data import BatchSource


def labelled(n: int) -> tuple[Tensor, Tensor]:
    """Samples whose label is their index, so batches reveal which samples they hold."""
    return torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)


def take(stream: BatchStream, k: int) -> list[tuple[Tensor, Tensor]]:
    return [stream.next_batch() for _ in range(k)]


def same(a: list[tuple[Tensor, Tensor]], b: list[tuple[Tensor, Tensor]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


# ----------------------------------------------------------------------------- BatchStream


def test_every_sample_once_per_pass_with_a_fresh_order() -> None:
    x, y = labelled(10)
    stream = BatchStream(x, y, batch_size=3, seed=0)
    assert stream.batches_per_pass == 4
    orders = []
    for _ in range(3):
        batches = take(stream, 4)
        assert [len(b) for _, b in batches] == [3, 3, 3, 1]  # final partial batch as is
        order = torch.cat([b for _, b in batches])
        assert sorted(order.tolist()) == list(range(10))
        assert all(torch.equal(bx[:, 0].long(), by) for bx, by in batches)  # x, y stay paired
        orders.append(order.tolist())
    assert orders[0] != orders[1] != orders[2]


def test_stream_is_a_leyline_batch_source() -> None:
    x, y = labelled(10)
    source: BatchSource = BatchStream(x, y, batch_size=4, seed=0)  # checked by mypy
    assert source.batches_per_pass == 3


def test_no_shuffle_is_index_order() -> None:
    x, y = labelled(5)
    stream = BatchStream(x, y, batch_size=2, seed=0, shuffle=False)
    assert [b.tolist() for _, b in take(stream, 4)] == [[0, 1], [2, 3], [4], [0, 1]]


def test_same_seed_same_batches_different_seed_different() -> None:
    x, y = labelled(50)
    a = take(BatchStream(x, y, 8, seed=7), 20)
    assert same(a, take(BatchStream(x, y, 8, seed=7), 20))
    assert not same(a, take(BatchStream(x, y, 8, seed=8), 20))


@pytest.mark.parametrize("augment", [False, True])
def test_state_dict_resumes_with_exactly_the_same_batches(augment: bool) -> None:
    x = torch.randn(23, 2, 6, 6)
    y = torch.arange(23)
    original = BatchStream(x, y, 4, seed=1, augment=augment)
    take(original, 9)  # into the second pass
    state = original.state_dict()
    expected = take(original, 14)

    direct = BatchStream(x, y, 4, seed=99, augment=augment)
    direct.load_state_dict(state)
    assert same(take(direct, 14), expected)

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    reloaded = BatchStream(x, y, 4, seed=123, augment=augment)
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert same(take(reloaded, 14), expected)


def test_fresh_stream_state_round_trips() -> None:
    x, y = labelled(6)
    state = BatchStream(x, y, 4, seed=2).state_dict()
    other = BatchStream(x, y, 4, seed=3)
    other.load_state_dict(state)
    assert same(take(other, 3), take(BatchStream(x, y, 4, seed=2), 3))


def test_state_from_a_different_stream_is_refused() -> None:
    x, y = labelled(6)
    state = BatchStream(x, y, 4, seed=2).state_dict()
    with pytest.raises(ValueError, match="batch_size=4, this stream 3"):
        BatchStream(x, y, 3, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="expected"):
        BatchStream(x, y, 4, seed=2).load_state_dict({**state, "extra": 1})


def test_global_rng_neither_affects_nor_is_consumed_by_the_stream() -> None:
    x = torch.randn(20, 1, 4, 4)
    y = torch.arange(20)
    reference = take(BatchStream(x, y, 6, seed=5, augment=True), 10)
    stream = BatchStream(x, y, 6, seed=5, augment=True)
    got = []
    for i in range(10):
        torch.manual_seed(1000 + i)
        torch.rand(7)
        before = torch.get_rng_state()
        got.append(stream.next_batch())
        assert torch.equal(torch.get_rng_state(), before)
    assert same(got, reference)


def test_stream_rejects_bad_input() -> None:
    x, y = labelled(4)
    with pytest.raises(ValueError, match="4 samples but y has 3"):
        BatchStream(x, y[:3], 2, seed=0)
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, \d+\], got 0"):
        BatchStream(x, y, 0, seed=0)
    with pytest.raises(ValueError, match="augment=True needs images"):
        BatchStream(x, y, 2, seed=0, augment=True)
    # inf gave 0 batches a pass, 2.5 failed slicing, "False" is true (it shuffled, augmented)
    for size in (math.inf, 2.5, True, "8"):
        with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, "):
            BatchStream(x, y, size, seed=0)  # type: ignore[arg-type]
    for flag in ("shuffle", "augment"):
        with pytest.raises(ValueError, match=f"{flag} must be true or false, got 'False'"):
            BatchStream(x, y, 2, seed=0, **{flag: "False"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, "):
        BatchStream(x, y, 2, seed=1.5)  # type: ignore[arg-type]


def test_a_state_no_stream_makes_is_refused() -> None:
    """Zeros for a permutation repeated sample 0 for the rest of the pass; -1 passes ran empty
    batches; a float permutation was truncated."""
    x, y = labelled(50)
    a = BatchStream(x, y, 13, seed=7)
    a.next_batch()
    state = a.state_dict()
    bad_permutations = [
        torch.zeros(50, dtype=torch.int64),
        torch.randperm(50).float() + 0.7,
        torch.arange(1, 51),
    ]
    for permutation in bad_permutations:
        b = BatchStream(x, y, 13, seed=7)
        with pytest.raises(ValueError, match=r"not an int64 permutation of 0\.\.49"):
            b.load_state_dict({**state, "permutation": permutation})
    for key, value in (("passes_started", -1), ("cursor", True)):
        with pytest.raises(ValueError, match=rf"must be ints >= 0, got .*{key}={value}"):
            BatchStream(x, y, 13, seed=7).load_state_dict({**state, key: value})
    with pytest.raises(ValueError, match="the permutation is on meta, not the CPU"):
        moved = {**state, "permutation": state["permutation"].to("meta")}
        BatchStream(x, y, 13, seed=7).load_state_dict(moved)
    b = BatchStream(x, y, 13, seed=7)
    b.load_state_dict(state)
    assert torch.equal(b.next_batch()[1], a.next_batch()[1])


# ----------------------------------------------------------------------------- augmentation


def crops(image: Tensor, padding: int) -> list[Tensor]:
    """Every crop of the zero-padded image back to the original size (the oracle)."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding)
    padded[:, padding : padding + h, padding : padding + w] = image
    return [
        padded[:, dy : dy + h, dx : dx + w]
        for dy in range(2 * padding + 1)
        for dx in range(2 * padding + 1)
    ]


def test_augment_preserves_shape_dtype_and_is_identity_when_disabled() -> None:
    x = torch.randn(5, 3, 7, 9)
    out = augment_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    same_x = augment_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip_prob=0.0)
    assert torch.equal(same_x, x)
    flipped = augment_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip_prob=1.0)
    assert torch.equal(flipped, torch.flip(x, dims=[3]))


def test_each_output_is_a_crop_or_a_flipped_crop() -> None:
    x = torch.randn(32, 3, 6, 6)
    padding = 2
    out = augment_crop_flip(x, torch.Generator().manual_seed(3), padding=padding)
    kinds, offsets = set(), set()
    for b in range(x.shape[0]):
        candidates = crops(x[b], padding)
        plain = [i for i, c in enumerate(candidates) if torch.equal(out[b], c)]
        mirrored = [i for i, c in enumerate(candidates) if torch.equal(out[b], torch.flip(c, [2]))]
        assert len(plain) + len(mirrored) == 1, f"sample {b} matches no single crop"
        kinds.add("plain" if plain else "flipped")
        offsets.update(plain + mirrored)
    assert kinds == {"plain", "flipped"}
    assert len(offsets) > 10  # offsets vary per sample (25 possible)


def test_augment_is_reproducible_from_the_generator() -> None:
    x = torch.randn(8, 1, 5, 5)
    a = augment_crop_flip(x, torch.Generator().manual_seed(4))
    b = augment_crop_flip(x, torch.Generator().manual_seed(4))
    c = augment_crop_flip(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_rejects_bad_arguments() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"expects \(B, C, H, W\) images, got shape \(3, 4, 4\)"):
        augment_crop_flip(torch.zeros(3, 4, 4), g)
    with pytest.raises(ValueError, match=r"padding must be an integer in \[0, \d+\], got -1"):
        augment_crop_flip(torch.zeros(1, 1, 4, 4), g, padding=-1)
    with pytest.raises(ValueError, match=r"flip_prob must be a number in \[0\.0, 1\.0\], got 1\.5"):
        augment_crop_flip(torch.zeros(1, 1, 4, 4), g, flip_prob=1.5)


def _layouts() -> dict[str, Tensor]:
    images = torch.randn(50, 3, 6, 5)
    return {
        "NCHW images": images,
        "channels_last images": images.contiguous(memory_format=torch.channels_last),
        "one-channel channels_last": torch.randn(50, 1, 4, 4).contiguous(
            memory_format=torch.channels_last
        ),
        "token ids": torch.randint(0, 9, (50, 7)),
        "labels": torch.randint(0, 9, (50,)),
        "a view past the start": images[10:],
        "a transposed view": images.transpose(2, 3),  # not dense rows: x[idx]
        "no samples' elements": torch.randn(50, 0),
    }


@pytest.mark.parametrize("case", list(_layouts()))
def test_take_rows_is_advanced_indexing_in_the_same_layout(case: str) -> None:
    x = _layouts()[case]
    idx = torch.tensor([3, 0, 39, 3, 17])  # repeats allowed, any order
    taken, indexed = take_rows(x, idx), x[idx]
    assert taken.shape == indexed.shape and taken.dtype == indexed.dtype
    assert torch.equal(taken, indexed)
    assert taken.stride() == indexed.stride(), (taken.stride(), indexed.stride())
    for other in (
        idx.to(torch.int32),
        torch.tensor(3),
        idx.view(1, -1),
        torch.arange(len(x)) % 3 == 0,
    ):
        assert torch.equal(take_rows(x, other), x[other])  # int32 selects; the rest: x[idx]
    if x.numel():  # (torch checks no bounds on a tensor without elements, nor do we)
        with pytest.raises(IndexError):
            take_rows(x, torch.tensor([len(x)]))
