"""The baseline arms: RandomController against the masks and a chi-square oracle,
PeriodicController on scripted observations, on a real model with strict gates, and in an
episode of the synthetic task."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest
import torch

from conftest import (
    CNN_BLUEPRINTS,
    SLOTS,
    apply_action,
    cnn_host,
    fabricated_step,
    observation,
)
from conftest import seed_report as rep
from esper.data import load_dataset
from esper.kasmina import MorphogeneticModel
from esper.leyline import (
    OP_STAGES,
    Action,
    Observation,
    Op,
    SeedStage,
    SeedStateReport,
    Topology,
)
from esper.leyline import thresholds as T
from esper.leyline.config import HostTraining
from esper.leyline.events import ActionTaken
from esper.simic.env import task_episode
from esper.tamiyo import (
    ALPHA_TARGETS,
    RELEVANT_HEADS,
    TEMPOS,
    ActionSpace,
    Controller,
    PeriodicConfig,
    PeriodicController,
    RandomController,
    SignalTracker,
)
from esper.tasks import resolve_training

SPACE = ActionSpace(Topology.CNN)
OPS = tuple(Op)

# ------------------------------------------------------------------ chi-square oracle


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for X ~ chi-square(dof), from the closed forms Q(x; 1) = erfc(√(x/2)),
    Q(x; 2) = e^(−x/2) and the recurrence Q(x; k+2) = Q(x; k) + (x/2)^(k/2) e^(−x/2) / Γ(k/2+1)
    (Abramowitz & Stegun 26.4.4-26.4.5)."""
    q = math.erfc(math.sqrt(x / 2)) if dof % 2 else math.exp(-x / 2)
    for k in range(2 - dof % 2, dof, 2):
        q += math.exp((k / 2) * math.log(x / 2) - x / 2 - math.lgamma(k / 2 + 1))
    return q


def chi2_critical(dof: int, p: float) -> float:
    """The x with P(X > x) = p, by bisection (the survival function decreases in x)."""
    low, high = 0.0, 1000.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if chi2_sf(mid, dof) > p else (low, mid)
    return (low + high) / 2


Cell = TypeVar("Cell")

FALSE_ALARM = 1e-3
"""Significance of the uniformity tests: the seeds are fixed, so this is the chance that a
correct controller would have failed for an unlucky seed, not a flake rate."""


def assert_uniform(counts: Counter[Cell], cells: Sequence[Cell]) -> None:
    """Pearson's chi-square test of ``counts`` against uniform over ``cells``."""
    assert set(counts) <= set(cells), f"outside the allowed cells: {set(counts) - set(cells)}"
    n = sum(counts.values())
    expected = n / len(cells)
    assert expected >= 5, "too few draws for the chi-square approximation"
    statistic = sum((counts[c] - expected) ** 2 / expected for c in cells)
    bound = chi2_critical(len(cells) - 1, FALSE_ALARM)
    assert statistic < bound, f"chi2 {statistic:.2f} >= {bound:.2f} for {dict(counts)}"


@pytest.mark.parametrize(
    ("dof", "p", "table"),
    [(1, 0.05, 3.841), (2, 0.05, 5.991), (4, 1e-3, 18.467), (5, 1e-3, 20.515), (15, 1e-3, 37.697)],
)
def test_chi2_oracle_matches_the_printed_table(dof: int, p: float, table: float) -> None:
    assert chi2_critical(dof, p) == pytest.approx(table, abs=1e-3)


# ------------------------------------------------------------------ RandomController


def random_observations(n: int, seed: int) -> list[Observation]:
    """Arbitrary observations: random enabled slots, stages and offered blueprints."""
    rng = random.Random(seed)
    out = []
    for epoch in range(1, n + 1):
        enabled = [s for s in SLOTS if rng.random() < 0.8]
        reports = [rep(s, rng.choice(list(SeedStage))) for s in enabled]
        offered = tuple(b for b in CNN_BLUEPRINTS if rng.random() < 0.6)
        out.append(observation(reports, enabled=enabled, blueprints=offered, epoch=epoch))
    return out


def test_both_baselines_implement_the_protocol() -> None:
    assert isinstance(RandomController(Topology.CNN, seed=0), Controller)
    assert isinstance(PeriodicController(), Controller)


def test_random_never_proposes_a_masked_action() -> None:
    controller = RandomController(Topology.CNN, seed=0)
    seen = set()
    for o in random_observations(600, seed=1):
        action = controller.decide(o)
        seen.add(action.op)
        assert action.reason == "random"
        if action.op is Op.WAIT:
            continue
        # Written from the lifecycle table, not from the mask code.
        assert action.slot is not None and action.slot in o.reports, "only enabled slots"
        assert o.reports[action.slot].stage in OP_STAGES[action.op]
        if action.op is Op.GERMINATE:
            assert action.blueprint in o.blueprints
        if action.op is Op.SET_ALPHA_TARGET:
            assert action.tempo in TEMPOS and action.alpha_target in ALPHA_TARGETS
        # And against the masks the policy acts under.
        op, slot, blueprint, _, _ = SPACE.encode(action)
        masks = SPACE.masks(o)
        assert masks.op[op] and masks.slot[op, slot]
        assert "blueprint" not in RELEVANT_HEADS[action.op] or masks.blueprint[blueprint]
    assert seen == set(Op), "every op is drawn somewhere"


def test_random_ops_are_uniform_over_the_valid_ones() -> None:
    # early DORMANT, mid TRAINING, late HOLDING: every op is valid.
    o = observation([rep("mid", SeedStage.TRAINING), rep("late", SeedStage.HOLDING)])
    controller = RandomController(Topology.CNN, seed=3)
    assert_uniform(Counter(controller.decide(o).op for _ in range(3000)), list(Op))
    # Only mid is occupied (BLENDING): GERMINATE (early, late), ADVANCE, SET_ALPHA_TARGET,
    # PRUNE and WAIT are valid; FOSSILIZE is not.
    o = observation([rep("mid", SeedStage.BLENDING)])
    valid = [op for op in Op if op is not Op.FOSSILIZE]
    assert_uniform(Counter(controller.decide(o).op for _ in range(2500)), valid)


def test_random_heads_are_uniform_given_the_op() -> None:
    offered = ("norm", "depthwise", "conv_heavy")
    o = observation([rep("mid", SeedStage.TRAINING)], blueprints=offered)
    controller = RandomController(Topology.CNN, seed=4)
    actions = [controller.decide(o) for _ in range(4000)]
    germinations = Counter((a.slot, a.blueprint) for a in actions if a.op is Op.GERMINATE)
    assert_uniform(germinations, [(s, b) for s in ("early", "late") for b in offered])
    ramps = Counter((a.tempo, a.alpha_target) for a in actions if a.op is Op.SET_ALPHA_TARGET)
    assert_uniform(ramps, [(t, x) for t in TEMPOS for x in ALPHA_TARGETS])
    assert {a.slot for a in actions if a.op in (Op.ADVANCE, Op.PRUNE)} == {"mid"}


def _decisions(controller: Controller, observations: Sequence[Observation]) -> list[Action]:
    return [controller.decide(o) for o in observations]


def test_random_same_seed_same_sequence_other_seed_other_sequence() -> None:
    observations = random_observations(200, seed=5)
    first = _decisions(RandomController(Topology.CNN, seed=11), observations)
    assert _decisions(RandomController(Topology.CNN, seed=11), observations) == first
    assert _decisions(RandomController(Topology.CNN, seed=12), observations) != first


def test_random_state_dict_round_trip_continues_the_identical_sequence() -> None:
    observations = random_observations(200, seed=6)
    original = RandomController(Topology.CNN, seed=21)
    _decisions(original, observations[:100])
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    resumed = RandomController(Topology.CNN, seed=99)  # the state, not the seed, decides
    resumed.load_state_dict(state)
    rest = observations[100:]
    expected = _decisions(original, rest)
    assert _decisions(resumed, rest) == expected
    assert _decisions(RandomController(Topology.CNN, seed=21), rest) != expected, "needs state"


def test_random_leaves_the_global_random_states_alone() -> None:
    python, torch_state = random.getstate(), torch.get_rng_state()
    _decisions(RandomController(Topology.CNN, seed=0), random_observations(50, seed=7))
    assert random.getstate() == python
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_random_rejects_bad_seeds_and_foreign_state() -> None:
    with pytest.raises(ValueError, match="seed"):
        RandomController(Topology.CNN, seed=-1)
    controller = RandomController(Topology.CNN, seed=0)
    with pytest.raises(ValueError, match="state keys"):
        controller.load_state_dict({"last_slot": None, "germinations": 0})
    with pytest.raises(ValueError):
        controller.load_state_dict({"rng": [3, [1, 2, 3], None]})


# ------------------------------------------------------------------ PeriodicController


def periodic(period: int = 3) -> PeriodicController:
    return PeriodicController(PeriodicConfig(period=period))


def test_germinates_exactly_every_period_in_slot_and_blueprint_rotation() -> None:
    controller = periodic(3)
    # Every slot is DORMANT each time (say the seeds were pruned and reset).
    actions = {e: controller.decide(observation(epoch=e)) for e in range(1, 23)}
    grown = {e: (a.slot, a.blueprint) for e, a in actions.items() if a.op is Op.GERMINATE}
    b = CNN_BLUEPRINTS
    assert grown == {
        3: ("early", b[0]),
        6: ("mid", b[1]),
        9: ("late", b[2]),
        12: ("early", b[3]),
        15: ("mid", b[4]),
        18: ("late", b[5]),
        21: ("early", b[0]),  # both rotations wrap around
    }
    assert {a.op for e, a in actions.items() if e not in grown} == {Op.WAIT}
    assert actions[4].reason == "next germination at epoch 6"


def test_rotation_skips_occupied_slots_and_a_skipped_germination_is_not_postponed() -> None:
    controller = periodic(2)
    assert controller.decide(observation(epoch=2)).slot == "early"
    busy_mid = [rep("early", SeedStage.FOSSILIZED), rep("mid", SeedStage.TRAINING)]
    assert controller.decide(observation(busy_mid, epoch=4)).slot == "late"
    # Every slot occupied at epoch 6: no germination, and none at 7 to make up for it.
    full = [rep(s, SeedStage.FOSSILIZED) for s in SLOTS]
    waited = controller.decide(observation(full, epoch=6))
    assert waited.op is Op.WAIT  # the reason says so: "next germination at epoch 8" alone did not
    assert waited.reason == (
        "epoch 6's germination skipped (no slot is DORMANT); next germination at epoch 8"
    )
    assert controller.decide(observation(epoch=7)).op is Op.WAIT
    action = controller.decide(observation(busy_mid, epoch=8))  # after late comes early...
    assert (action.slot, action.blueprint) == ("late", CNN_BLUEPRINTS[2])  # ...occupied: late
    waited = controller.decide(observation(epoch=10, blueprints=()))
    assert waited.op is Op.WAIT and "(no blueprint fits the host)" in waited.reason
    # nothing is decided after the last epoch: a 12-epoch run's last decision (after epoch 11)
    # named a germination "at epoch 12" that never comes
    assert controller.decide(observation(epoch=11, max_epochs=12)).reason == (
        "no germination left in the episode"
    )


def test_periodic_names_only_enabled_slots() -> None:
    controller = periodic(1)
    slots = [
        controller.decide(observation(enabled=("mid", "late"), epoch=e)).slot for e in (1, 2, 3)
    ]
    assert slots == ["mid", "late", "mid"]


G2 = T.G2_MIN_TRAINING_EPOCHS
G3 = T.G3_MIN_BLENDING_EPOCHS
G5 = T.G5_MIN_HOLDING_EPOCHS
EPS = T.ALPHA_EPSILON


def training(
    epochs: int, contribution: float | None, healthy: bool | None = True
) -> SeedStateReport:
    return rep("mid", SeedStage.TRAINING, epochs=epochs, contribution=contribution, healthy=healthy)


def holding(epochs: int, contribution: float | None, slot: str = "mid") -> SeedStateReport:
    return rep(slot, SeedStage.HOLDING, alpha=1.0, epochs=epochs, contribution=contribution)


@pytest.mark.parametrize(
    ("report", "op"),
    [
        (rep("mid", SeedStage.GERMINATED), Op.ADVANCE),  # G1 is structural
        (training(G2, 0.01), Op.ADVANCE),
        (training(G2 - 1, 0.01), Op.WAIT),
        (training(G2, T.G2_MIN_PROBE_IMPROVEMENT), Op.WAIT),
        (training(G2, 0.01, healthy=None), Op.WAIT),
        (training(G2, 0.01, healthy=False), Op.WAIT),  # only the G5 decision prunes
        (training(G2, None), Op.WAIT),
        (rep("mid", SeedStage.BLENDING, alpha=1.0, epochs=G3), Op.ADVANCE),
        (rep("mid", SeedStage.BLENDING, alpha=0.5, alpha_target=0.5, epochs=G3), Op.ADVANCE),
        (rep("mid", SeedStage.BLENDING, alpha=1 - 2 * EPS, epochs=G3), Op.WAIT),
        (rep("mid", SeedStage.BLENDING, alpha=1.0, epochs=G3 - 1), Op.WAIT),
        (holding(G5 - 1, 5.0), Op.WAIT),  # G5 cannot be judged yet: no verdict either way
        (holding(G5 - 1, -5.0), Op.WAIT),
        (holding(G5, T.G5_MIN_CONTRIBUTION), Op.FOSSILIZE),
        (holding(G5, T.G5_MIN_CONTRIBUTION - 0.001), Op.PRUNE),
        (holding(G5, None), Op.PRUNE),  # never measured never clears G5
        (rep("mid", SeedStage.HOLDING, alpha=0.0, epochs=G5, contribution=1.0), Op.PRUNE),
        (rep("mid", SeedStage.FOSSILIZED, alpha=1.0, epochs=9, contribution=-9.0), Op.WAIT),
        (rep("mid", SeedStage.EMBARGOED), Op.WAIT),
    ],
)
def test_lifecycle_decisions_at_the_gate_thresholds(report: SeedStateReport, op: Op) -> None:
    occupied = [rep(s, SeedStage.FOSSILIZED) for s in ("early", "late")]
    for epoch in (4, 5, 6):  # 6 is on the schedule, but no slot is DORMANT
        action = periodic(3).decide(observation([*occupied, report], epoch=epoch))
        assert action.op is op
        assert action.slot == (None if op is Op.WAIT else "mid")
        assert action.reason


def test_germination_wins_on_a_scheduled_epoch_and_the_advance_follows() -> None:
    controller = periodic(3)
    ready = [rep("mid", SeedStage.GERMINATED), holding(G5, 1.0, slot="late")]
    first, second = (controller.decide(observation(ready, epoch=e)) for e in (6, 7))
    assert (first.op, first.slot) == (Op.GERMINATE, "early")
    assert (second.op, second.slot) == (Op.ADVANCE, "mid"), "first slot first"


def lifecycle_observations(n: int, seed: int) -> list[Observation]:
    """Arbitrary (not lifecycle-consistent) observations that exercise every periodic rule."""
    rng = random.Random(seed)
    out = []
    for epoch in range(1, n + 1):
        reports = []
        for s in SLOTS:
            stage = rng.choice([SeedStage.DORMANT, *SeedStage])  # DORMANT twice as often
            reports.append(
                rep(
                    s,
                    stage,
                    alpha=1.0 if stage is SeedStage.HOLDING else rng.choice([0.0, 1.0]),
                    epochs=rng.randrange(5),
                    contribution=rng.choice([None, 0.0, 0.05, 1.0]),
                    healthy=rng.choice([None, True]),
                )
            )
        out.append(observation(reports, epoch=epoch))
    return out


def test_periodic_state_dict_round_trip_continues_identically() -> None:
    observations = lifecycle_observations(120, seed=8)
    original = periodic(2)
    _decisions(original, observations[:30])
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    resumed = periodic(2)
    resumed.load_state_dict(state)
    rest = observations[30:]
    expected = _decisions(original, rest)
    assert {a.op for a in expected} == {Op.WAIT, Op.GERMINATE, Op.ADVANCE, Op.FOSSILIZE, Op.PRUNE}
    assert _decisions(resumed, rest) == expected
    assert _decisions(periodic(2), rest) != expected, "a controller without its memory differs"


def test_periodic_rejects_bad_config_and_foreign_state() -> None:
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="period"):
            PeriodicConfig(period=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="state keys"):
        periodic().load_state_dict({"rng": []})
    with pytest.raises(ValueError, match="germinations"):
        periodic().load_state_dict({"last_slot": "mid", "germinations": -1})


# ------------------------------------------------------------------ a real model, strict gates

WEAK = "norm"
"""The blueprint whose fabricated contribution passes G2 (> 0) but not G5, so it is pruned."""


def _contribution(blueprint: str) -> float:
    return T.G5_MIN_CONTRIBUTION / 2 if blueprint == WEAK else 1.0


def _run(
    controller: Controller, epochs: int, contribution: Callable[[str], float]
) -> tuple[list[Observation], list[Action]]:
    """Tolaria's order each step: measure (fabricated), end the epoch, decide, apply."""
    model = MorphogeneticModel(cnn_host(), list(SLOTS))
    tracker, observations, actions = SignalTracker(), [], []
    for _ in range(epochs):
        observations.append(fabricated_step(model, tracker, contribution, CNN_BLUEPRINTS, epochs))
        actions.append(controller.decide(observations[-1]))
        apply_action(model, actions[-1])
    return observations, actions


def test_periodic_grows_through_strict_gates_fossilizing_the_good_and_pruning_the_weak() -> None:
    period, epochs = 3, 45
    observations, actions = _run(periodic(period), epochs, _contribution)
    germinated = [
        (o.signals.epoch, a.slot, a.blueprint)
        for o, a in zip(observations, actions, strict=True)
        if a.op is Op.GERMINATE
    ]
    scheduled = [  # the epochs of the schedule at which some slot was DORMANT
        o.signals.epoch
        for o in observations
        if o.signals.epoch % period == 0
        and any(r.stage is SeedStage.DORMANT for r in o.reports.values())
    ]
    assert [e for e, _, _ in germinated] == scheduled
    assert len(scheduled) < epochs // period, "some scheduled germinations found no slot"
    assert [s for _, s, _ in germinated[:3]] == ["early", "mid", "late"]
    assert [b for _, _, b in germinated] == [
        CNN_BLUEPRINTS[i % len(CNN_BLUEPRINTS)] for i in range(len(germinated))
    ]
    ended = {a.op for a in actions} & {Op.FOSSILIZE, Op.PRUNE}
    assert ended == {Op.FOSSILIZE, Op.PRUNE}
    # Which seed ended how: replay the slot contents from the actions.
    holder: dict[str, str] = {}
    for a in actions:
        if a.op is Op.GERMINATE:
            assert a.slot is not None and a.blueprint is not None
            holder[a.slot] = a.blueprint
        elif a.op in (Op.FOSSILIZE, Op.PRUNE):
            assert a.slot is not None
            assert (holder[a.slot] == WEAK) is (a.op is Op.PRUNE), a


# ------------------------------------------------------------------ a synthetic-task episode


def test_periodic_grows_the_model_in_a_synthetic_episode() -> None:
    training = resolve_training(
        HostTraining("synthetic", epochs=8, batches_per_epoch=2, val_samples=64)
    )
    events: list[object] = []
    episode = task_episode(
        training, load_dataset("synthetic"), 0, torch.device("cpu"), events.append
    )
    controller = periodic(2)
    episode.reset()
    host_params = episode.model.active_param_count()
    while not episode.done:
        episode.step(controller.decide(episode.observation))
    taken = [e for e in events if isinstance(e, ActionTaken)]
    grown = [(e.epoch, e.slot) for e in taken if e.op == Op.GERMINATE.value and e.accepted]
    assert grown == [(2, "early"), (4, "mid"), (6, "late")]
    assert all(e.accepted for e in taken), [e.error for e in taken if not e.accepted]
    assert episode.model.active_param_count() > host_params
