"""The observation schema and the action space: layout, missing values, masks, encode/decode."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from conftest import CNN_BLUEPRINTS, SLOTS, observation, seed_report
from esper.leyline import (
    OP_ARGUMENTS,
    Action,
    Op,
    SeedStage,
    SlotSignals,
    Topology,
)
from esper.tamiyo import (
    ALPHA_TARGETS,
    BASE_FEATURES,
    FEATURE_SLOTS,
    HEADS,
    RELEVANT_HEADS,
    SLOT_FEATURES,
    TEMPOS,
    ActionMasks,
    ActionSpace,
    encode_observation,
    feature_index,
    feature_names,
    observation_size,
)


def value(x: torch.Tensor, name: str, telemetry: bool = True) -> float:
    return float(x[feature_index(name, telemetry)])


# ------------------------------------------------------------------------------ layout


def test_sizes_and_names() -> None:
    assert (len(BASE_FEATURES), len(SLOT_FEATURES), FEATURE_SLOTS) == (50, 10, SLOTS)
    assert (observation_size(True), observation_size(False)) == (80, 50)
    for telemetry, size in ((True, 80), (False, 50)):
        names = feature_names(telemetry)
        assert len(names) == size == len(set(names)), "every feature name is unique"
        assert [feature_index(n, telemetry) for n in names] == list(range(size))
        x = encode_observation(observation(), telemetry)
        assert x.shape == (size,) and x.dtype == torch.float32
    # The telemetry blocks follow the base in early, mid, late order.
    assert feature_names(True)[50:60] == tuple(f"early.{n}" for n in SLOT_FEATURES)
    assert feature_names(True)[70:] == tuple(f"late.{n}" for n in SLOT_FEATURES)
    assert feature_names(True)[:50] == feature_names(False) == BASE_FEATURES


def test_feature_index_errors_name_the_accepted() -> None:
    with pytest.raises(KeyError, match="accepted"):
        feature_index("no_such_feature")
    with pytest.raises(KeyError, match="telemetry=False"):
        feature_index("mid.contribution", telemetry=False)


def test_telemetry_must_be_a_bool() -> None:
    """``"no"`` is true: the encoding had the 80 features of telemetry on."""
    assert encode_observation(observation([]), False).shape == (observation_size(False),)
    for telemetry in ("no", 0, None):
        with pytest.raises(ValueError, match="telemetry must be true or false"):
            encode_observation(observation([]), telemetry)  # type: ignore[arg-type]


def test_values_land_where_the_names_say() -> None:
    mid = seed_report(
        "mid",
        SeedStage.BLENDING,
        alpha=0.3,
        contribution=2.0,
        shapley=-1.0,
        ratio=10.0,
        healthy=True,
        epochs=4,
        seed_params=50,
    )
    signals = (SlotSignals("mid", SeedStage.BLENDING, 2.0, 0.5, (1.5, 2.0)),)
    x = encode_observation(observation([mid], epoch=6, slots=signals), telemetry=True)
    expected = {
        "epoch_fraction": 6 / 30,
        "val_loss": 1.0,
        "val_accuracy": 0.60,
        "train_accuracy": 0.65,
        "loss_delta": -0.1,
        "loss_delta_present": 1.0,
        "accuracy_delta": 0.01,
        "best_val_accuracy": 0.60,
        "plateau_epochs": 0.2,
        "host_stabilized": 1.0,
        "metrics_finite": 1.0,
        "val_loss_lag1": 1.1,
        "val_loss_lag2": 1.2,
        "val_loss_lag3": 0.0,
        "val_accuracy_lag1": 0.55,
        "history_lags": 0.5,  # 2 of 4 earlier steps
        "mid.enabled": 1.0,
        "mid.stage_blending": 1.0,
        "mid.stage_dormant": 0.0,
        "mid.alpha": 0.3,
        "early.stage_dormant": 1.0,
        "mid.contribution": 0.2,
        "mid.contribution_present": 1.0,
        "mid.contribution_delta": 0.05,
        "mid.contribution_delta_present": 1.0,
        "mid.shapley": -0.1,
        "mid.shapley_present": 1.0,
        "mid.log_gradient_ratio": 1 / 3,  # log10(10) over the healthy band's edge log10(1e3)
        "mid.gradient_health": 1.0,
        "mid.param_ratio": 0.05,
        "mid.epochs_in_stage": 0.4,
    }
    got = {name: value(x, name) for name in expected}
    assert got == pytest.approx(expected, abs=1e-6)


def test_every_stage_sets_exactly_one_group() -> None:
    groups = [n for n in BASE_FEATURES if n.startswith("late.stage_")]
    for stage in SeedStage:
        x = encode_observation(observation([seed_report("late", stage)]), telemetry=False)
        assert sum(value(x, g, False) for g in groups) == 1.0, stage


def test_slot_blocks_follow_slot_order_not_dict_order() -> None:
    reports = [
        seed_report("early", SeedStage.TRAINING, contribution=1.0, epochs=1),
        seed_report("mid", SeedStage.HOLDING, alpha=0.5, contribution=2.0, epochs=2),
        seed_report("late", SeedStage.BLENDING, alpha=0.25, contribution=3.0, epochs=3),
    ]
    forward = encode_observation(observation({r.slot: r for r in reports}), telemetry=True)
    backward = encode_observation(
        observation({r.slot: r for r in reversed(reports)}), telemetry=True
    )
    assert torch.equal(forward, backward)
    for i, slot in enumerate(SLOTS, start=1):
        assert value(forward, f"{slot}.contribution") == pytest.approx(i / 10)
        assert value(forward, f"{slot}.epochs_in_stage") == pytest.approx(i / 10)
    assert value(forward, "late.alpha") == 0.25 and value(forward, "late.stage_blending") == 1.0


def test_disabled_slot_is_a_zero_block() -> None:
    early = seed_report(
        "early", SeedStage.TRAINING, contribution=1.0, ratio=1.0, healthy=True, epochs=3
    )
    x = encode_observation(observation([early], enabled=("early", "late")), telemetry=True)
    names = feature_names(True)
    mid = [i for i, n in enumerate(names) if n.startswith("mid.")]
    assert len(mid) == 9 + 10
    assert torch.equal(x[mid], torch.zeros(len(mid)))
    assert (value(x, "mid.enabled"), value(x, "early.enabled"), value(x, "late.enabled")) == (
        0.0,
        1.0,
        1.0,
    )


def test_missing_values_are_zero_with_presence_zero() -> None:
    x = encode_observation(
        observation(
            loss_delta=None, accuracy_delta=None, loss_history=(1.0,), accuracy_history=(60.0,)
        ),
        telemetry=True,
    )
    assert torch.isfinite(x).all()
    for name in ("loss_delta", "loss_delta_present", "accuracy_delta", "accuracy_delta_present"):
        assert value(x, name) == 0.0, name
    assert value(x, "history_lags") == 0.0 and value(x, "val_loss_lag1") == 0.0
    for slot in SLOTS:  # DORMANT slots: nothing measured
        for name in SLOT_FEATURES:
            assert value(x, f"{slot}.{name}") == 0.0, (slot, name)
    # Measured as 0 is different from missing: the value is 0 but the flag says present.
    measured = encode_observation(
        observation([seed_report("mid", SeedStage.HOLDING, contribution=0.0)]), True
    )
    assert value(measured, "mid.contribution") == 0.0
    assert value(measured, "mid.contribution_present") == 1.0


def test_gradient_ratio_encoding() -> None:
    cases = [
        (None, None, 0.0, 0.0),  # not measured
        (1.0, True, 0.0, 1.0),
        (1e-6, False, -2.0, -1.0),  # log10 = -6: at the clip
        (math.inf, False, 2.0, -1.0),
        (0.0, False, -2.0, -1.0),
        (math.nan, False, 0.0, -1.0),
    ]
    for ratio, healthy, log, health in cases:
        report = seed_report("early", SeedStage.TRAINING, ratio=ratio, healthy=healthy)
        x = encode_observation(observation([report]), telemetry=True)
        got = (value(x, "early.log_gradient_ratio"), value(x, "early.gradient_health"))
        assert got == pytest.approx((log, health)), ratio


def test_non_finite_metrics_give_a_finite_vector() -> None:
    broken = observation(
        [
            seed_report(
                "early", SeedStage.BLENDING, alpha=0.5, contribution=math.nan, shapley=math.inf
            )
        ],
        val_loss=math.nan,
        val_accuracy=math.inf,
        loss_delta=None,
        accuracy_delta=None,
        best_val_accuracy=math.nan,
        loss_history=(1.2, math.inf, 1.0, math.nan),
        accuracy_history=(50.0, 55.0, 60.0, math.inf),
    )
    x = encode_observation(broken, telemetry=True)
    assert torch.isfinite(x).all()
    assert value(x, "metrics_finite") == 0.0
    assert (value(x, "val_loss"), value(x, "val_accuracy"), value(x, "best_val_accuracy")) == (
        0.0,
        0.0,
        0.0,
    )
    # Lag 1 is finite; lag 2 holds an Inf loss, so the window stops after one lag.
    assert value(x, "val_loss_lag1") == pytest.approx(1.0)
    assert value(x, "history_lags") == 0.25 and value(x, "val_loss_lag3") == 0.0
    assert value(x, "early.contribution_present") == 0.0
    assert value(x, "early.shapley_present") == 0.0
    assert value(encode_observation(observation(), True), "metrics_finite") == 1.0


def test_huge_values_are_clamped() -> None:
    x = encode_observation(observation(val_loss=1e30, loss_history=(1e30, 1e30)), telemetry=False)
    assert torch.isfinite(x).all() and x.abs().max() == 100.0


def test_unknown_slot_and_misfiled_reports_raise() -> None:
    with pytest.raises(ValueError, match="mid_1"):
        encode_observation(observation({"mid_1": seed_report("mid_1")}), telemetry=False)
    with pytest.raises(ValueError, match="filed under 'early'"):
        encode_observation(observation({"early": seed_report("late")}), telemetry=False)


# ------------------------------------------------------------------------------ action space

# Written from the lifecycle rules (DESIGN §2), not from the mask code.
VALID_OPS = {
    SeedStage.DORMANT: {Op.GERMINATE},
    SeedStage.GERMINATED: {Op.ADVANCE, Op.SET_ALPHA_TARGET, Op.PRUNE},
    SeedStage.TRAINING: {Op.ADVANCE, Op.SET_ALPHA_TARGET, Op.PRUNE},
    SeedStage.BLENDING: {Op.ADVANCE, Op.SET_ALPHA_TARGET, Op.PRUNE},
    SeedStage.HOLDING: {Op.PRUNE, Op.FOSSILIZE},
    SeedStage.FOSSILIZED: set(),
    SeedStage.PRUNED: set(),
    SeedStage.EMBARGOED: set(),
    SeedStage.RESETTING: set(),
}
SPACE = ActionSpace(Topology.CNN)
OPS = tuple(Op)


def test_head_sizes_and_relevance() -> None:
    assert SPACE.head_sizes == {"op": 6, "slot": 3, "blueprint": 6, "tempo": 4, "alpha_target": 4}
    assert list(SPACE.head_sizes) == list(HEADS)
    assert ActionSpace(Topology.TRANSFORMER).head_sizes["blueprint"] == 4
    assert SPACE.blueprints == CNN_BLUEPRINTS and SPACE.slots == SLOTS
    assert (SPACE.tempos, SPACE.alpha_targets) == (TEMPOS, ALPHA_TARGETS)
    for op in Op:
        assert RELEVANT_HEADS[op] == ("op", *OP_ARGUMENTS[op])
    rel = SPACE.relevance(torch.arange(len(OPS)))
    assert rel.shape == (6, 5) and rel.dtype == torch.bool
    assert rel[OPS.index(Op.WAIT)].tolist() == [True, False, False, False, False]
    assert rel[OPS.index(Op.GERMINATE)].tolist() == [True, True, True, False, False]
    assert rel[OPS.index(Op.SET_ALPHA_TARGET)].tolist() == [True, True, False, True, True]
    assert rel[OPS.index(Op.FOSSILIZE)].tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("stage", list(SeedStage))
def test_masks_follow_the_lifecycle(stage: SeedStage) -> None:
    masks = SPACE.masks(observation([seed_report("mid", stage)], enabled=("mid",)))
    for k, op in enumerate(OPS):
        assert masks.slot[k].tolist() == [False, op in VALID_OPS[stage], False], op
        assert bool(masks.op[k]) == (op is Op.WAIT or op in VALID_OPS[stage]), op


def test_germinate_forbidden_for_occupied_slots() -> None:
    masks = SPACE.masks(
        observation(
            [seed_report("early", SeedStage.TRAINING), seed_report("late", SeedStage.HOLDING)]
        )
    )
    assert masks.slot[OPS.index(Op.GERMINATE)].tolist() == [False, True, False]
    assert masks.slot[OPS.index(Op.FOSSILIZE)].tolist() == [False, False, True]
    full = SPACE.masks(observation([seed_report(s, SeedStage.FOSSILIZED) for s in SLOTS]))
    assert full.op.tolist() == [op is Op.WAIT for op in OPS], "only WAIT is left"
    assert not full.slot.any()


def test_random_masks_invariants() -> None:
    rng = random.Random(0)
    for _ in range(200):
        enabled = [s for s in SLOTS if rng.random() < 0.7]
        stages = {s: rng.choice(list(SeedStage)) for s in enabled}
        offered = tuple(b for b in CNN_BLUEPRINTS if rng.random() < 0.5)
        m = SPACE.masks(
            observation(
                [seed_report(s, st) for s, st in stages.items()],
                enabled=enabled,
                blueprints=offered,
            )
        )
        assert m.op[OPS.index(Op.WAIT)] and not m.slot[OPS.index(Op.WAIT)].any()
        for k, op in enumerate(OPS):
            if op is not Op.WAIT:
                assert bool(m.op[k]) == bool(m.slot[k].any()), "op valid iff some slot is"
            for j, slot in enumerate(SLOTS):
                if slot not in stages:
                    assert not m.slot[k, j], "a disabled slot is never valid"
                elif op is Op.GERMINATE:
                    valid = stages[slot] is SeedStage.DORMANT and bool(offered)
                    assert bool(m.slot[k, j]) == valid
                else:
                    assert bool(m.slot[k, j]) == (op in VALID_OPS[stages[slot]])
        assert m.blueprint.tolist() == [b in offered for b in CNN_BLUEPRINTS]
        assert m.tempo.all() and m.alpha_target.all()


def test_no_blueprints_offered_forbids_germinate() -> None:
    m = SPACE.masks(observation(blueprints=()))
    assert not m.op[OPS.index(Op.GERMINATE)] and not m.slot.any()
    with pytest.raises(ValueError, match="lora"):
        SPACE.masks(observation(blueprints=("lora",)))  # a transformer blueprint on a CNN host


def test_masks_stack_and_validate() -> None:
    one = SPACE.masks(observation())
    two = ActionMasks.stack([one, one])
    assert two.op.shape == (2, 6) and two.slot.shape == (2, 6, 3)
    assert ActionMasks.stack([two, two, two]).blueprint.shape == (3, 2, 6)
    assert two.to("cpu").tempo.shape == (2, 4)
    with pytest.raises(ValueError, match="bool"):
        ActionMasks(one.op.float(), one.slot, one.blueprint, one.tempo, one.alpha_target)
    with pytest.raises(ValueError, match="batch shape"):
        ActionMasks(two.op, one.slot, two.blueprint, two.tempo, two.alpha_target)
    with pytest.raises(ValueError, match="empty"):
        ActionMasks.stack([])


def test_decode_encode_round_trip_for_every_op() -> None:
    sizes = SPACE.head_sizes
    checked = 0
    for k, op in enumerate(OPS):
        relevant = RELEVANT_HEADS[op]
        ranges = [range(sizes[h]) if h in relevant and h != "op" else [0] for h in HEADS[1:]]
        for rest in itertools.product(*ranges):
            indices = (k, *rest)
            action = SPACE.decode(indices)
            assert action.op is op and action.reason == "policy"
            assert SPACE.encode(action) == indices
            checked += 1
        # Irrelevant heads are ignored by decode.
        noisy = [k] + [sizes[h] - 1 for h in HEADS[1:]]
        assert SPACE.encode(SPACE.decode(noisy)) == tuple(
            i if h in relevant else 0 for h, i in zip(HEADS, noisy, strict=True)
        )
    assert checked == 1 + 3 * 6 + 3 + 3 * 4 * 4 + 3 + 3
    germ = SPACE.decode((OPS.index(Op.GERMINATE), 2, 3, 1, 1), reason="r")
    assert germ == Action(Op.GERMINATE, slot="late", blueprint=CNN_BLUEPRINTS[3], reason="r")
    alpha = SPACE.decode((OPS.index(Op.SET_ALPHA_TARGET), 1, 5, 2, 0))
    assert (alpha.slot, alpha.tempo, alpha.alpha_target, alpha.blueprint) == ("mid", 5, 0.25, None)


def test_encode_decode_errors() -> None:
    with pytest.raises(ValueError, match="accepted"):
        SPACE.encode(Action(Op.ADVANCE, slot="mid_2"))
    with pytest.raises(ValueError, match="lora"):
        SPACE.encode(Action(Op.GERMINATE, slot="mid", blueprint="lora"))
    with pytest.raises(ValueError, match=r"0\.6"):
        SPACE.encode(Action(Op.SET_ALPHA_TARGET, slot="mid", tempo=3, alpha_target=0.6))
    with pytest.raises(ValueError, match="out of range"):
        SPACE.decode((0, 3, 0, 0, 0))
    with pytest.raises(ValueError, match="expected 5"):
        SPACE.decode((0, 0))
    with pytest.raises(ValueError, match=r"slot index must be an integer, got 1\.9"):
        SPACE.decode((1, 1.9, 0, 0, 0))  # read as slot 1
