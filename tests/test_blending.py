"""α schedules and blend identities."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import cnn_host, grow, host_input, transformer_host
from esper.kasmina import MorphogeneticModel, blueprint_registry
from esper.kasmina.blending import AlphaSchedule, curve_value
from esper.leyline import AlphaCurve, GateMode, SeedStage, Topology

ALL_BLUEPRINTS = [(Topology.CNN, name) for name in blueprint_registry.names(Topology.CNN)] + [
    (Topology.TRANSFORMER, name) for name in blueprint_registry.names(Topology.TRANSFORMER)
]


@pytest.mark.parametrize(
    ("topology", "blueprint"), ALL_BLUEPRINTS, ids=lambda v: getattr(v, "value", v)
)
@pytest.mark.parametrize("blend_mode", ["add", "gated"])
def test_alpha_zero_is_exact_identity(topology: Topology, blueprint: str, blend_mode: str) -> None:
    host = cnn_host() if topology is Topology.CNN else transformer_host()
    model = MorphogeneticModel(host, ["early", "mid", "late"])
    # HOLDING at α=0.6 with a perturbed (non-zero) seed: the seed really changes the stream...
    grow(model, "mid", blueprint, SeedStage.HOLDING, blend_mode=blend_mode, alpha=0.6)
    slot = model.slot("mid")
    h = torch.randn(4, *slot.spec.shape)
    assert not torch.equal(slot(h), h)
    # ...yet α = 0, as a float or per sample, returns the stream bit for bit.
    assert torch.equal(slot(h, 0.0), h)
    assert torch.equal(slot(h, torch.zeros(4)), h)
    mixed = slot(h, torch.tensor([0.0, 0.6, 0.0, 0.6]))
    assert torch.equal(mixed[0], h[0]) and torch.equal(mixed[2], h[2])
    assert not torch.equal(mixed[1], h[1])


@pytest.mark.parametrize(
    ("topology", "blueprint"), ALL_BLUEPRINTS, ids=lambda v: getattr(v, "value", v)
)
def test_fresh_seed_changes_nothing(topology: Topology, blueprint: str) -> None:
    """Zero-initialized outputs: a just-germinated seed blended at α = 1 is still the identity."""
    host = cnn_host() if topology is Topology.CNN else transformer_host()
    model = MorphogeneticModel(host, ["mid"])
    grow(model, "mid", blueprint, SeedStage.HOLDING, alpha=1.0, perturb=False)
    slot = model.slot("mid")
    h = torch.randn(3, *slot.spec.shape)
    assert torch.equal(slot(h), h)


@pytest.mark.parametrize("curve", list(AlphaCurve), ids=lambda c: c.value)
@pytest.mark.parametrize("tempo", [1, 3, 7])
@pytest.mark.parametrize(("start", "target"), [(0.0, 1.0), (0.0, 0.3), (0.8, 0.2)])
def test_schedule_hits_target_on_last_tick(
    curve: AlphaCurve, tempo: int, start: float, target: float
) -> None:
    schedule = AlphaSchedule(start, target, tempo, curve)
    values = [schedule.value()] + [schedule.step() for _ in range(tempo)]
    assert values[0] == start
    assert values[-1] == target  # exactly, not approximately
    assert schedule.done
    diffs = [b - a for a, b in itertools.pairwise(values)]
    assert all(d * (target - start) >= 0 for d in diffs), "ramp must be monotone"
    assert schedule.step() == target  # stays put afterwards


def test_curve_shapes() -> None:
    for curve in AlphaCurve:
        assert curve_value(curve, 0.0) == pytest.approx(0.0, abs=1e-12)
        assert curve_value(curve, 1.0) == pytest.approx(1.0, abs=1e-12)
        assert curve_value(curve, 0.5) == pytest.approx(0.5, abs=1e-12)  # all three are symmetric
    assert curve_value(AlphaCurve.LINEAR, 0.25) == 0.25
    assert curve_value(AlphaCurve.COSINE, 0.25) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    # Sigmoid is slow at the ends and steep in the middle.
    assert curve_value(AlphaCurve.SIGMOID, 0.1) < curve_value(AlphaCurve.COSINE, 0.1) < 0.1


def test_blending_follows_requested_schedule() -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"], gate_mode="permissive")
    model.germinate("early", "norm")
    model.advance("early")
    model.set_alpha_target("early", 0.8, tempo=4, curve="cosine")
    model.advance("early")
    seen = [model.reports()["early"].alpha]
    for _ in range(5):
        model.step_epoch()
        seen.append(model.reports()["early"].alpha)
    expected = [0.8 * curve_value(AlphaCurve.COSINE, min(t, 4) / 4) for t in range(6)]
    assert seen[:4] == pytest.approx(expected[:4], abs=1e-12)
    assert seen[4] == seen[5] == 0.8
    assert model.reports()["early"].alpha_target == 0.8


def test_retargeting_during_blending_starts_from_current_alpha() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"], gate_mode="permissive")
    grow(model, "mid", "norm", SeedStage.BLENDING, alpha=0.5)  # α = 0.5 heading to 1.0
    model.set_alpha_target("mid", 0.1, tempo=2)
    model.step_epoch()
    assert model.reports()["mid"].alpha == pytest.approx(0.3)
    model.step_epoch()
    assert model.reports()["mid"].alpha == 0.1


def test_numpy_scalars_are_numbers() -> None:
    """They were refused with messages blaming the range: "must be in (0, 1], got
    np.float32(0.5)"."""
    np = pytest.importorskip("numpy")
    model = MorphogeneticModel(cnn_host(), ["mid"])
    model.germinate("mid", "norm")
    model.set_alpha_target("mid", np.float32(0.5), tempo=np.int64(3))
    plan = model.slot("mid").plan
    assert plan is not None and (plan.target, plan.tempo) == (0.5, 3)
    assert type(plan.target) is float and type(plan.tempo) is int  # JSON-ready for the manifest


def test_a_schedule_replanned_to_the_current_alpha_passes_g3_as_the_heuristic_says() -> None:
    """Re-planned to the α a seed already had, the flat schedule's epochs left kept G3 shut
    ("alpha 1 has not reached its target 1.0") while the heuristic proposed to hold."""
    from esper.tamiyo.heuristic import advance_reason

    model = MorphogeneticModel(cnn_host(), ["mid"], gate_mode="permissive")
    grow(model, "mid", "norm", SeedStage.BLENDING, alpha=0.5)  # α = 0.5 heading to 1.0
    model.step_epoch()
    model.step_epoch()
    model.set_alpha_target("mid", 1.0, tempo=2)
    model.gate_mode = GateMode.STRICT
    report = model.reports()["mid"]
    assert report.alpha == 1.0 and "hold (G3)" in (advance_reason(report) or "")
    model.advance("mid")
    assert model.slot("mid").stage is SeedStage.HOLDING


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 0.0}, r"alpha target must be a number in \(0, 1\], got 0.0"),
        ({"target": 1.5}, r"alpha target must be a number in \(0, 1\], got 1.5"),
        ({"target": 0.5, "tempo": 0}, "tempo must be a positive number of epochs, got 0"),
        ({"target": True}, r"alpha target must be a number in \(0, 1\], got True"),  # was 1.0
        ({"target": 0.5, "tempo": True}, "tempo must be a positive number of epochs, got True"),
        (
            {"target": 0.5, "curve": "cubic"},
            r"unknown AlphaCurve 'cubic'; accepted: \['linear', 'cosine', 'sigmoid'\]",
        ),
    ],
)
def test_set_alpha_target_rejects_bad_values(kwargs, message: str) -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"])
    model.germinate("mid", "norm")
    with pytest.raises(ValueError, match=message):
        model.set_alpha_target("mid", **kwargs)


def test_gated_blend_scales_alpha_per_sample() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"])
    grow(model, "mid", "conv_light", SeedStage.HOLDING, blend_mode="gated", alpha=0.5)
    slot = model.slot("mid")
    h = torch.randn(6, *slot.spec.shape)
    with torch.no_grad():
        gate = slot.gate(h)  # (B, 1, 1, 1), perturbed so it varies per sample
        expected = h + 0.5 * gate * slot.seed(h)
    assert gate.shape == (6, 1, 1, 1) and gate.std() > 0
    torch.testing.assert_close(slot(h), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blueprint", blueprint_registry.names(Topology.TRANSFORMER))
@pytest.mark.parametrize("blend_mode", ["add", "gated"])
def test_transformer_seeds_are_causal(blueprint: str, blend_mode: str) -> None:
    """Changing a later token never changes earlier positions' outputs, seeds and gates included."""
    model = MorphogeneticModel(transformer_host(), ["early", "mid", "late"]).eval()
    for name in model.order:
        grow(model, name, blueprint, SeedStage.FOSSILIZED, blend_mode=blend_mode, alpha=1.0)
    x = host_input(model.host, batch=2)
    x2 = x.clone()
    x2[:, 5] = (x2[:, 5] + 1) % 17
    with torch.no_grad():
        a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])
