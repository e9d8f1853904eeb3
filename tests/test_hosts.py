"""Hosts: segmented forward equals the plain forward, shapes, and construction errors."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import cnn_host, expected_output, grow, host_input, transformer_host
from esper.kasmina import CNNHost, MorphogeneticModel, SegmentedHost, TransformerHost
from esper.leyline import BLENDED_STAGES, SeedStage, Topology

HOSTS = {
    "cnn_3pt": lambda: cnn_host(),
    "cnn_deep_3pt": lambda: cnn_host(depth=6, input_size=16),
    "cnn_4pt": lambda: cnn_host(depth=4, n_points=4, input_size=16),
    "cnn_impaired": lambda: cnn_host(base_channels=2, kernel_size=1),
    "tf_3pt": lambda: transformer_host(),
    "tf_deep_3pt": lambda: transformer_host(n_layer=6),
    "tf_2pt": lambda: transformer_host(n_layer=4, n_points=2),
}


def _segmented(host: SegmentedHost, x: torch.Tensor) -> torch.Tensor:
    names = [spec.slot for spec in host.injection_points]
    h, prev = x, None
    for name in names:
        h = host.forward_to_segment(name, h, from_point=prev)
        prev = name
    return host.forward_from_segment(names[-1], h)


@pytest.mark.parametrize("make", HOSTS.values(), ids=HOSTS.keys())
def test_host_segments_equal_plain_forward(make) -> None:
    host = make().eval()
    x = host_input(host)
    torch.testing.assert_close(_segmented(host, x), host(x), rtol=0, atol=0)


@pytest.mark.parametrize("make", HOSTS.values(), ids=HOSTS.keys())
def test_injection_shapes_match_stream(make) -> None:
    host = make().eval()
    x = host_input(host, batch=2)
    h, prev = x, None
    for spec in host.injection_points:
        h = host.forward_to_segment(spec.slot, h, from_point=prev)
        expected = spec.shape if spec.topology is Topology.CNN else (x.shape[1], spec.channels)
        assert tuple(h.shape[1:]) == expected
        prev = spec.slot


def test_slot_names_follow_point_count() -> None:
    assert [s.slot for s in cnn_host().injection_points] == ["early", "mid", "late"]
    deep = cnn_host(depth=4, n_points=4, input_size=16)
    assert [s.slot for s in deep.injection_points] == ["early", "mid_1", "mid_2", "late"]
    assert [s.slot for s in transformer_host(n_layer=4, n_points=2).injection_points] == [
        "early",
        "late",
    ]


def test_reference_cnn_host_size() -> None:
    # The benchmark host of the issue: 8 base channels, CIFAR-shaped input, ~6.4k parameters.
    host = CNNHost(base_channels=8, input_size=32)
    assert sum(p.numel() for p in host.parameters()) == 6418


SEEDED_STAGES = [s for s in SeedStage if s is not SeedStage.DORMANT]


def _check_segment_consistency(
    host: SegmentedHost, blueprint: str, stage: SeedStage, blend_mode: str
) -> None:
    """The model's forward equals the stage-semantics oracle with a seed of ``stage`` in the
    last slot and fossilized/blending seeds in the slots before it."""
    names = [s.slot for s in host.injection_points]
    model = MorphogeneticModel(host, names)
    grow(model, names[-1], blueprint, stage, blend_mode=blend_mode)
    grow(model, names[0], blueprint, SeedStage.FOSSILIZED, blend_mode=blend_mode)
    if len(names) > 2:
        grow(model, names[1], blueprint, SeedStage.BLENDING, blend_mode=blend_mode)
    assert model.reports()[names[-1]].stage is stage
    x = host_input(host)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected_output(model, x), rtol=1e-5, atol=1e-6)
        if stage not in BLENDED_STAGES:
            # With only this seed, the segmented model is the plain host forward, bit for bit.
            alone = MorphogeneticModel(copy.deepcopy(host), names)
            grow(alone, names[-1], blueprint, stage, blend_mode=blend_mode)
            alone.eval()
            assert torch.equal(alone(x), alone.host(x))


@pytest.mark.parametrize("blend_mode", ["add", "gated"])
@pytest.mark.parametrize("stage", SEEDED_STAGES, ids=lambda s: s.value)
def test_cnn_segment_consistency(stage: SeedStage, blend_mode: str) -> None:
    _check_segment_consistency(HOSTS["cnn_3pt"](), "conv_light", stage, blend_mode)


@pytest.mark.parametrize("blend_mode", ["add", "gated"])
@pytest.mark.parametrize("stage", SEEDED_STAGES, ids=lambda s: s.value)
def test_transformer_segment_consistency(stage: SeedStage, blend_mode: str) -> None:
    _check_segment_consistency(HOSTS["tf_3pt"](), "mlp", stage, blend_mode)


@pytest.mark.parametrize("stage", SEEDED_STAGES, ids=lambda s: s.value)
@pytest.mark.parametrize(
    ("make", "blueprint"),
    [(HOSTS["cnn_4pt"], "bottleneck"), (HOSTS["tf_2pt"], "attention")],
    ids=["cnn_4pt", "tf_2pt"],
)
def test_segment_consistency_other_point_counts(make, blueprint: str, stage: SeedStage) -> None:
    _check_segment_consistency(make(), blueprint, stage, "add")


def test_dormant_model_is_the_host() -> None:
    host = cnn_host().eval()
    model = MorphogeneticModel(host, ["late", "early", "mid"]).eval()
    x = host_input(host)
    assert torch.equal(model(x), host(x))
    assert model.order == ("early", "mid", "late")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, r"n_embd \(30\) must be divisible by n_head \(4\)"),
        ({"n_layer": 4, "n_points": 3}, r"n_layer \(4\) must be a multiple of n_points \(3\)"),
        ({"n_head": 0}, "n_head must be a positive integer"),
        ({"dropout": 1.5}, "dropout must be in"),
    ],
)
def test_transformer_validates_construction(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TransformerHost(vocab_size=10, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 4, "n_points": 3}, r"depth \(4\) must be a multiple of n_points \(3\)"),
        ({"kernel_size": 2}, "kernel_size must be odd"),
        ({"base_channels": -1}, "base_channels must be a positive integer"),
    ],
)
def test_cnn_validates_construction(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CNNHost(**kwargs)


def test_transformer_rejects_long_sequences() -> None:
    host = transformer_host()
    with pytest.raises(ValueError, match="exceeds block_size 8"):
        host(torch.zeros(1, 9, dtype=torch.long))


def test_unknown_slots_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown or no slots \['middle'\]; this host has"):
        MorphogeneticModel(cnn_host(), ["early", "middle"])
    model = MorphogeneticModel(cnn_host(), ["early"])
    with pytest.raises(ValueError, match=r"unknown slot 'late'; enabled slots: \['early'\]"):
        model.germinate("late", "norm")


def test_transformer_tied_head() -> None:
    host = transformer_host()
    assert host.lm_head.weight is host.tok_emb.weight
