"""Lifecycle: legal and illegal transitions, gates in both modes, prune -> embargo -> reset."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from conftest import cnn_host, grow, observation
from esper.kasmina import GateError, LifecycleError, MorphogeneticModel, blueprint_registry
from esper.kasmina.blueprints import Blueprint
from esper.leyline import OP_STAGES, GateLevel, Op, SeedStage, Topology
from esper.leyline import thresholds as T
from esper.tamiyo import ActionSpace

# The lifecycle table of DESIGN §2, written out per operation (independent of VALID_TRANSITIONS).
LEGAL_FROM = {
    "germinate": {SeedStage.DORMANT},
    "advance": {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING},
    "fossilize": {SeedStage.HOLDING},
    "prune": {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING},
}
RESULT = {
    ("germinate", SeedStage.DORMANT): SeedStage.GERMINATED,
    ("advance", SeedStage.GERMINATED): SeedStage.TRAINING,
    ("advance", SeedStage.TRAINING): SeedStage.BLENDING,
    ("advance", SeedStage.BLENDING): SeedStage.HOLDING,
    ("fossilize", SeedStage.HOLDING): SeedStage.FOSSILIZED,
}


def _model_in(stage: SeedStage) -> MorphogeneticModel:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"], gate_mode="permissive")
    if stage is not SeedStage.DORMANT:
        grow(model, "mid", "norm", stage)
    return model


def _apply(model: MorphogeneticModel, op: str) -> None:
    if op == "germinate":
        model.germinate("mid", "norm")
    else:
        getattr(model, op)("mid")


@pytest.mark.parametrize("op", list(LEGAL_FROM))
@pytest.mark.parametrize("stage", list(SeedStage), ids=lambda s: s.value)
def test_every_operation_in_every_stage(op: str, stage: SeedStage) -> None:
    model = _model_in(stage)
    if stage in LEGAL_FROM[op]:
        _apply(model, op)
        expected = RESULT.get((op, stage), SeedStage.PRUNED)
        assert model.reports()["mid"].stage is expected
    else:
        with pytest.raises(LifecycleError, match="'mid'"):
            _apply(model, op)
        assert model.reports()["mid"].stage is stage, "a refused operation must change nothing"


def test_prune_embargo_reset_cycle() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"], gate_mode="permissive", embargo_epochs=2)
    grow(model, "mid", "conv_light", SeedStage.BLENDING)
    model.prune("mid", reason="hurts")
    seen = [model.reports()["mid"].stage]
    for _ in range(4):
        model.step_epoch()
        seen.append(model.reports()["mid"].stage)
    assert seen == [
        SeedStage.PRUNED,
        SeedStage.EMBARGOED,
        SeedStage.EMBARGOED,
        SeedStage.RESETTING,
        SeedStage.DORMANT,
    ]
    report = model.reports()["mid"]
    assert report.blueprint is None and report.seed_param_count == 0
    assert model.slot("mid").seed is None
    model.germinate("mid", "depthwise")  # the slot is usable again
    transitions = [(t.from_stage, t.to_stage) for t in model.drain_transitions()]
    assert (SeedStage.BLENDING, SeedStage.PRUNED) in transitions
    assert transitions[-1] == (SeedStage.DORMANT, SeedStage.GERMINATED)
    assert model.drain_transitions() == []


def test_embargo_length_follows_setting() -> None:
    for embargo in (1, 5):
        model = MorphogeneticModel(cnn_host(), ["mid"], embargo_epochs=embargo)
        model.germinate("mid", "norm")
        model.prune("mid")
        epochs = 0
        while model.reports()["mid"].stage is not SeedStage.DORMANT:
            model.step_epoch()
            epochs += 1
        assert epochs == embargo + 2  # PRUNED -> EMBARGOED, `embargo` epochs, RESETTING -> DORMANT


def test_pruned_seed_leaves_the_forward_pass() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"]).eval()
    grow(model, "mid", "conv_light", SeedStage.HOLDING, alpha=1.0)
    x = torch.randn(2, 3, 8, 8)
    assert not torch.equal(model(x), model.host(x))
    model.prune("mid")
    assert torch.equal(model(x), model.host(x))


def test_fossilized_is_terminal() -> None:
    model = _model_in(SeedStage.FOSSILIZED)
    for _ in range(10):
        model.step_epoch()
    assert model.reports()["mid"].stage is SeedStage.FOSSILIZED
    with pytest.raises(LifecycleError, match=r"allows \['none \(terminal\)'\]"):
        model.prune("mid")


# ------------------------------------------------------------------------------------- gates


def _strict(stage: SeedStage) -> MorphogeneticModel:
    model = _model_in(stage)
    model.gate_mode = model.gate_mode.STRICT
    return model


def test_g2_strict_blocks_fresh_seed_and_permissive_passes() -> None:
    model = _strict(SeedStage.TRAINING)
    with pytest.raises(GateError) as info:
        model.advance("mid")
    assert info.value.gate is GateLevel.G2
    names = [f.split(":")[0] for f in info.value.failures]
    assert names == ["trained_long_enough", "gradients_healthy", "probe_improves"]
    assert "G2_MIN_TRAINING_EPOCHS=3" in str(info.value)
    model.gate_mode = model.gate_mode.PERMISSIVE
    assert model.advance("mid") is SeedStage.BLENDING


def _measured(
    model: MorphogeneticModel, epochs: int, ratio: float | None, contribution: float | None
) -> None:
    slot = model.slot("mid")
    slot.epochs_in_stage = epochs
    slot.gradient_ratio = ratio
    slot.contribution = contribution


@pytest.mark.parametrize(
    ("epochs", "ratio", "contribution", "failing"),
    [
        (T.G2_MIN_TRAINING_EPOCHS, 1.0, 0.5, None),
        (T.G2_MIN_TRAINING_EPOCHS - 1, 1.0, 0.5, "trained_long_enough"),
        (T.G2_MIN_TRAINING_EPOCHS, T.GRADIENT_RATIO_HEALTHY_MIN / 2, 0.5, "gradients_healthy"),
        (T.G2_MIN_TRAINING_EPOCHS, T.GRADIENT_RATIO_HEALTHY_MAX * 2, 0.5, "gradients_healthy"),
        (T.G2_MIN_TRAINING_EPOCHS, float("nan"), 0.5, "gradients_healthy"),
        (T.G2_MIN_TRAINING_EPOCHS, 1.0, T.G2_MIN_PROBE_IMPROVEMENT, "probe_improves"),
        (T.G2_MIN_TRAINING_EPOCHS, 1.0, None, "probe_improves"),
        (T.G2_MIN_TRAINING_EPOCHS, 1.0, float("nan"), "probe_improves"),
    ],
)
def test_g2_thresholds(
    epochs: int, ratio: float | None, contribution: float | None, failing: str | None
) -> None:
    model = _strict(SeedStage.TRAINING)
    _measured(model, epochs, ratio, contribution)
    if failing is None:
        assert model.advance("mid") is SeedStage.BLENDING
    else:
        with pytest.raises(GateError, match=failing) as info:
            model.advance("mid")
        assert len(info.value.failures) == 1


def test_g3_waits_for_alpha_and_time() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"], gate_mode="permissive")
    model.germinate("mid", "norm")
    model.advance("mid")
    model.set_alpha_target("mid", 1.0, tempo=4)
    model.advance("mid")
    # α is still 0: the structural check refuses in both modes.
    with pytest.raises(GateError, match="alpha_positive"):
        model.advance("mid")
    model.step_epoch()  # α = 0.25
    model.gate_mode = model.gate_mode.STRICT
    with pytest.raises(GateError) as info:
        model.advance("mid")
    assert [f.split(":")[0] for f in info.value.failures] == [
        "alpha_at_target",
        "blended_long_enough",
    ]
    for _ in range(3):
        model.step_epoch()
    assert (
        model.advance("mid") is SeedStage.HOLDING
    )  # α = 1 after 4 epochs >= G3_MIN_BLENDING_EPOCHS
    assert model.reports()["mid"].alpha == 1.0


def test_g3_permissive_holds_mid_ramp() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"], gate_mode="permissive")
    grow(model, "mid", "norm", SeedStage.BLENDING, alpha=0.25)
    assert model.advance("mid") is SeedStage.HOLDING
    model.step_epoch()
    assert model.reports()["mid"].alpha == 0.25  # held where it was


@pytest.mark.parametrize(
    ("epochs", "contribution", "failing"),
    [
        (T.G5_MIN_HOLDING_EPOCHS, T.G5_MIN_CONTRIBUTION, None),
        (T.G5_MIN_HOLDING_EPOCHS, T.G5_MIN_CONTRIBUTION - 0.01, "contribution_clears"),
        (T.G5_MIN_HOLDING_EPOCHS, None, "contribution_clears"),
        (T.G5_MIN_HOLDING_EPOCHS, float("nan"), "contribution_clears"),
        (0, 5.0, "held_long_enough"),
    ],
)
def test_g5_thresholds(epochs: int, contribution: float | None, failing: str | None) -> None:
    model = _strict(SeedStage.HOLDING)
    _measured(model, epochs, None, contribution)
    if failing is None:
        model.fossilize("mid")
        assert model.reports()["mid"].stage is SeedStage.FOSSILIZED
    else:
        with pytest.raises(GateError, match=failing):
            model.fossilize("mid")
        model.gate_mode = model.gate_mode.PERMISSIVE
        model.fossilize("mid")  # permissive passes the same seed


def test_g1_and_g5_refuse_non_finite_seed_in_any_mode() -> None:
    for stage, op in [(SeedStage.GERMINATED, "advance"), (SeedStage.HOLDING, "fossilize")]:
        model = _model_in(stage)
        with torch.no_grad():
            model.seed_parameters("mid")[0].fill_(float("nan"))
        with pytest.raises(GateError, match="params_finite"):
            getattr(model, op)("mid")


def test_g0_rejects_unknown_and_foreign_blueprints() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"])
    with pytest.raises(
        GateError, match=r"unknown blueprint 'lora' for a cnn host; accepted: \['norm'"
    ):
        model.germinate("mid", "lora")
    assert model.reports()["mid"].stage is SeedStage.DORMANT
    with pytest.raises(ValueError, match=r"unknown BlendMode 'mul'; accepted: \['add', 'gated'\]"):
        model.germinate("mid", "norm", blend_mode="mul")


def test_g0_rejects_seed_that_changes_output(monkeypatch) -> None:
    def not_zero(spec):
        return torch.nn.Conv2d(spec.channels, spec.channels, 1)  # random init: delta != 0

    def wrong_shape(spec):
        return torch.nn.Conv2d(spec.channels, spec.channels + 1, 1)

    table = blueprint_registry._by_topology[Topology.CNN]
    monkeypatch.setitem(table, "loud", Blueprint("loud", Topology.CNN, "test", not_zero))
    monkeypatch.setitem(table, "wide", Blueprint("wide", Topology.CNN, "test", wrong_shape))
    model = MorphogeneticModel(cnn_host(), ["mid"])
    with pytest.raises(GateError, match="zero_output"):
        model.germinate("mid", "loud")
    with pytest.raises(GateError, match="output_shape"):
        model.germinate("mid", "wide")
    assert model.reports()["mid"].stage is SeedStage.DORMANT
    assert model.slot("mid").seed is None


def test_g0_rejects_norm_on_single_value_map() -> None:
    # One channel on a 1x1 map leaves nothing to normalize over.
    host = cnn_host(base_channels=1, depth=1, n_points=1, input_size=2)
    model = MorphogeneticModel(host, ["late"])
    with pytest.raises(GateError, match="too few values for a normalization layer"):
        model.germinate("late", "norm")


def test_advance_from_holding_points_to_fossilize() -> None:
    model = _model_in(SeedStage.HOLDING)
    with pytest.raises(LifecycleError, match="use fossilize or prune"):
        model.advance("mid")


def test_set_alpha_target_outside_plannable_stages() -> None:
    model = _model_in(SeedStage.HOLDING)
    with pytest.raises(LifecycleError, match="set_alpha_target is allowed in"):
        model.set_alpha_target("mid", 0.5)


def test_gate_mode_validated() -> None:
    with pytest.raises(
        ValueError, match=r"unknown GateMode 'lenient'; accepted: \['strict', 'permissive'\]"
    ):
        MorphogeneticModel(cnn_host(), ["mid"], gate_mode="lenient")


def test_pruned_seed_is_freed_at_once() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"], gate_mode="permissive")
    grow(model, "mid", "conv_heavy", SeedStage.HOLDING)
    model.prune("mid")
    model.step_epoch()
    report = model.reports()["mid"]
    assert report.stage is SeedStage.EMBARGOED
    assert report.blueprint == "conv_heavy"  # what was pruned stays visible
    assert report.seed_param_count == 0 and model.seed_parameters("mid") == []
    assert report.alpha == 0.0 and report.alpha_target == 0.0


def test_transitions_drain_in_order_of_occurrence() -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid"], gate_mode="permissive")
    model.germinate("mid", "norm")
    model.germinate("early", "norm")
    model.advance("mid")
    got = [(t.slot, t.to_stage) for t in model.drain_transitions()]
    assert got == [
        ("mid", SeedStage.GERMINATED),
        ("early", SeedStage.GERMINATED),
        ("mid", SeedStage.TRAINING),
    ]


def test_germination_probe_leaves_global_rng_alone() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    model.germinate("mid", "norm")  # norm has no random init; only the G0 probe could draw
    assert torch.equal(torch.get_rng_state(), before)


def test_isolation_switch_is_fixed_at_construction() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"])
    with pytest.raises(AttributeError):
        model.isolate_blending = False


# ------------------------------------------------------------------ masks agree with Kasmina

_APPLY = {
    Op.GERMINATE: lambda m: m.germinate("mid", "norm"),
    Op.ADVANCE: lambda m: m.advance("mid"),
    Op.SET_ALPHA_TARGET: lambda m: m.set_alpha_target("mid", 0.5),
    Op.PRUNE: lambda m: m.prune("mid"),
    Op.FOSSILIZE: lambda m: m.fossilize("mid"),
}


@pytest.mark.parametrize("op", list(_APPLY), ids=lambda op: op.value)
@pytest.mark.parametrize("stage", list(SeedStage), ids=lambda s: s.value)
def test_masks_and_slot_state_machine_agree(op: Op, stage: SeedStage) -> None:
    """Tamiyo's mask allows ``op`` on a slot iff Kasmina accepts it there (permissive gates)."""
    model = _model_in(stage)
    space = ActionSpace(Topology.CNN)
    masks = space.masks(observation(model.reports()))
    allowed = bool(masks.slot[space.ops.index(op), space.slots.index("mid")])
    try:
        _APPLY[op](model)
        accepted = True
    except LifecycleError:
        accepted = False
    assert allowed == accepted == (stage in OP_STAGES[op])


def test_the_readmes_kasmina_example_runs_as_it_says(tmp_path, monkeypatch):
    """README's "Using Kasmina" block, statement by statement (it once built ``CNNHost`` with a
    keyword it does not take): every line runs, except that the seed, never trained, is refused
    at G2 with the failed checks named, as the lifecycle table says."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Using Kasmina\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # it saves grown.pt in the working directory
    torch.manual_seed(0)
    scope: dict[str, object] = {"x_val": torch.randn(16, 3, 32, 32), "y_val": torch.arange(16) % 10}
    refused = []
    for statement in ast.parse(block).body:
        code = compile(ast.Module([statement], []), "README.md", "exec")
        try:
            exec(code, scope)
        except GateError as error:
            refused.append((ast.unparse(statement), str(error)))
    assert len(refused) == 1, refused
    source, message = refused[0]
    assert source == "model.advance('mid')" and "G2" in message and "trained" in message
    model = scope["model"]
    assert (tmp_path / "grown.pt").is_file()
    assert list(model.reports()) == ["early", "mid", "late"]  # type: ignore[attr-defined]
    assert model.reports()["mid"].stage == SeedStage.TRAINING  # type: ignore[attr-defined]
