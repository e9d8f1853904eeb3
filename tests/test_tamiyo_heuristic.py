"""HeuristicTamiyo and StaticController on hand-made observations."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence

import pytest

from conftest import observation
from conftest import seed_report as rep
from esper.leyline import Action, Observation, Op, SeedStage, SeedStateReport
from esper.leyline import thresholds as T
from esper.tamiyo import (
    Controller,
    HeuristicConfig,
    HeuristicTamiyo,
    SignalTracker,
    StaticController,
)

SLOTS = ("early", "mid", "late")
BLUEPRINTS = ("norm", "attention", "depthwise")
# Most tests exercise the rotation itself, so they rotate in the offered (registry) order.
OFFERED_ORDER = HeuristicConfig(blueprint_preference=())


def obs(
    *reports: SeedStateReport,
    stabilized: bool = False,
    plateau: int = 0,
    slots: Sequence[str] = SLOTS,
    blueprints: tuple[str, ...] = BLUEPRINTS,
    **kwargs: int,
) -> Observation:
    """An observation: the given reports, DORMANT for every other slot in ``slots``."""
    return observation(
        reports,
        enabled=slots,
        blueprints=blueprints,
        host_stabilized=stabilized,
        plateau_epochs=plateau,
        **kwargs,
    )


def ready(
    *reports: SeedStateReport,
    epoch: int = 5,
    max_epochs: int = 30,
    slots: Sequence[str] = SLOTS,
    blueprints: tuple[str, ...] = BLUEPRINTS,
) -> Observation:
    """An observation of a stabilized host (germination allowed as far as signals go)."""
    return obs(
        *reports,
        epoch=epoch,
        stabilized=True,
        max_epochs=max_epochs,
        slots=slots,
        blueprints=blueprints,
    )


def training(
    slot: str, *, epochs: int = 0, healthy: bool | None = None, contribution: float | None = None
) -> SeedStateReport:
    return rep(slot, SeedStage.TRAINING, epochs=epochs, healthy=healthy, contribution=contribution)


def test_both_controllers_implement_the_protocol() -> None:
    assert isinstance(HeuristicTamiyo(OFFERED_ORDER), Controller)
    assert isinstance(StaticController(), Controller)


def test_static_controller_always_waits() -> None:
    static = StaticController()
    for o in (ready(), obs(rep("mid", SeedStage.GERMINATED)), obs(epoch=1, plateau=9)):
        assert static.decide(o) == Action(Op.WAIT, reason="static")
    assert static.state_dict() == {}
    static.load_state_dict({})
    with pytest.raises(ValueError, match="no state"):
        static.load_state_dict({"used_slots": []})


def test_waits_until_the_host_stabilizes_or_plateaus() -> None:
    assert HeuristicTamiyo(OFFERED_ORDER).decide(obs(plateau=2)).op is Op.WAIT
    assert HeuristicTamiyo(OFFERED_ORDER).decide(obs(plateau=3)).op is Op.GERMINATE
    assert HeuristicTamiyo(OFFERED_ORDER).decide(obs(stabilized=True)).op is Op.GERMINATE
    patient = HeuristicTamiyo(HeuristicConfig(blueprint_preference=(), plateau_patience=5))
    assert patient.decide(obs(plateau=4)).op is Op.WAIT


def test_first_germination_uses_first_slot_and_first_blueprint() -> None:
    action = HeuristicTamiyo(OFFERED_ORDER).decide(ready())
    assert (action.op, action.slot, action.blueprint) == (Op.GERMINATE, "early", "norm")
    assert action.reason


def test_prefers_slots_that_never_held_a_seed() -> None:
    tamiyo = HeuristicTamiyo(HeuristicConfig(blueprint_preference=(), germinate_cooldown=0))
    chosen = [tamiyo.decide(ready(epoch=e)).slot for e in range(5, 9)]
    # Every slot is DORMANT again each time (say the seeds were pruned and reset).
    assert chosen == ["early", "mid", "late", "early"]
    fresh = HeuristicTamiyo(OFFERED_ORDER)
    fossil = rep("early", SeedStage.FOSSILIZED, alpha=1.0)
    assert fresh.decide(ready(fossil)).slot == "mid"


def test_respects_max_live_seeds() -> None:
    two_live = [training("early"), rep("mid", SeedStage.HOLDING, alpha=1.0, contribution=0.0)]
    assert HeuristicTamiyo(OFFERED_ORDER).decide(ready(*two_live)).op is Op.WAIT
    roomy = HeuristicTamiyo(HeuristicConfig(blueprint_preference=(), max_live_seeds=3))
    assert roomy.decide(ready(*two_live)).slot == "late"
    fossils = [rep(s, SeedStage.FOSSILIZED, alpha=1.0) for s in ("early", "mid")]
    assert HeuristicTamiyo(OFFERED_ORDER).decide(ready(*fossils)).slot == "late"  # not live


def test_respects_the_germination_cooldown() -> None:
    tamiyo = HeuristicTamiyo(OFFERED_ORDER)
    assert tamiyo.decide(ready(epoch=5)).slot == "early"
    growing = [training("early")]
    ops = [tamiyo.decide(ready(*growing, epoch=e)).op for e in (6, 7, 8)]
    assert ops == [Op.WAIT, Op.WAIT, Op.GERMINATE]
    eager = HeuristicTamiyo(HeuristicConfig(blueprint_preference=(), germinate_cooldown=1))
    eager.decide(ready(epoch=5))
    assert eager.decide(ready(*growing, epoch=6)).op is Op.GERMINATE


def test_a_second_episode_needs_a_new_heuristic() -> None:
    """Given a second episode, the heuristic read the first one's germination as a cooldown
    (it waited at epoch 5) and a seed alive at the first one's end as pruned."""
    tamiyo = HeuristicTamiyo(OFFERED_ORDER)
    assert tamiyo.decide(ready(epoch=5)).op is Op.GERMINATE
    tamiyo.decide(ready(training("early"), epoch=6))
    tamiyo.decide(ready(training("early"), epoch=6))  # the same epoch again is not a new episode
    with pytest.raises(ValueError, match=r"epoch 5 comes after epoch 6: .* build a new one"):
        tamiyo.decide(ready(epoch=5))
    assert HeuristicTamiyo(OFFERED_ORDER).decide(ready(epoch=5)).op is Op.GERMINATE


def test_blueprints_rotate_in_order() -> None:
    tamiyo = HeuristicTamiyo(HeuristicConfig(blueprint_preference=(), germinate_cooldown=0))
    grown = [tamiyo.decide(ready(epoch=e)).blueprint for e in range(5, 9)]
    assert grown == ["norm", "attention", "depthwise", "norm"]


def _pruned_attention_then_grown_norm() -> HeuristicTamiyo:
    """Prunes an ``attention`` seed itself at step 10, then grows ``norm`` at step 11."""
    tamiyo = HeuristicTamiyo(HeuristicConfig(blueprint_preference=(), germinate_cooldown=0))
    bad = rep("mid", SeedStage.BLENDING, "attention", alpha=0.4, epochs=2, contribution=-3.0)
    assert tamiyo.decide(ready(bad, epoch=10)).op is Op.PRUNE
    embargoed = rep("mid", SeedStage.EMBARGOED, "attention")
    assert tamiyo.decide(ready(embargoed, epoch=11)).blueprint == "norm"
    return tamiyo


@pytest.mark.parametrize(("epoch", "expected"), [(12, "depthwise"), (19, "depthwise")])
def test_recently_pruned_blueprint_is_skipped(epoch: int, expected: str) -> None:
    tamiyo = _pruned_attention_then_grown_norm()
    assert tamiyo.decide(ready(epoch=epoch)).blueprint == expected


def test_pruned_blueprint_returns_after_the_penalty_window() -> None:
    tamiyo = _pruned_attention_then_grown_norm()
    assert tamiyo.decide(ready(epoch=20)).blueprint == "attention"  # 20 - 10 >= 10
    short = HeuristicTamiyo(
        HeuristicConfig(blueprint_preference=(), germinate_cooldown=0, prune_penalty_epochs=2)
    )
    short.load_state_dict(_pruned_attention_then_grown_norm().state_dict())
    assert short.decide(ready(epoch=12)).blueprint == "attention"


@pytest.mark.parametrize(
    "after",
    [
        rep("mid", SeedStage.EMBARGOED, "attention"),  # pruned by someone else (a rollback)
        rep("mid", SeedStage.PRUNED, "attention"),
        rep("mid"),  # vanished: rolled back to before it was grown
    ],
    ids=["embargoed", "pruned", "vanished"],
)
def test_prunes_it_did_not_order_count_too(after: SeedStateReport) -> None:
    tamiyo = HeuristicTamiyo(HeuristicConfig(blueprint_preference=(), germinate_cooldown=0))
    alive = rep("mid", SeedStage.TRAINING, "attention", epochs=1)
    assert tamiyo.decide(obs(alive, epoch=8)).op is Op.WAIT
    assert tamiyo.decide(obs(after, epoch=9)).op is Op.WAIT
    tamiyo.load_state_dict({**tamiyo.state_dict(), "last_blueprint": "norm"})
    assert tamiyo.decide(ready(epoch=10)).blueprint == "depthwise"


def test_an_embargo_seen_again_is_not_a_new_prune() -> None:
    tamiyo = HeuristicTamiyo(
        HeuristicConfig(blueprint_preference=(), germinate_cooldown=0, prune_penalty_epochs=3)
    )
    tamiyo.decide(obs(rep("mid", SeedStage.EMBARGOED, "attention"), epoch=2))
    for e in (3, 4, 5):
        tamiyo.decide(obs(rep("mid", SeedStage.EMBARGOED, "attention"), epoch=e))
    tamiyo.load_state_dict({**tamiyo.state_dict(), "last_blueprint": "norm"})
    assert tamiyo.decide(ready(epoch=5)).blueprint == "attention"  # penalized at 2 only


def test_when_all_blueprints_are_penalized_the_oldest_prune_is_chosen() -> None:
    tamiyo = HeuristicTamiyo(OFFERED_ORDER)
    two = ("norm", "attention")
    tamiyo.decide(obs(rep("early", SeedStage.EMBARGOED, "attention"), epoch=3, blueprints=two))
    tamiyo.decide(obs(rep("mid", SeedStage.EMBARGOED, "norm"), epoch=4, blueprints=two))
    action = tamiyo.decide(ready(epoch=5, blueprints=two))
    assert (action.slot, action.blueprint) == ("late", "attention")


def test_priority_prune_then_fossilize_then_advance_then_germinate() -> None:
    fossilizable = rep("early", SeedStage.HOLDING, alpha=1.0, epochs=1, contribution=0.5)
    advanceable = rep("mid", SeedStage.BLENDING, alpha=1.0, epochs=3, contribution=0.5)
    hurting = rep("late", SeedStage.BLENDING, alpha=0.5, epochs=1, contribution=-5.0)
    steps = [
        ([fossilizable, advanceable, hurting], (Op.PRUNE, "late")),
        ([fossilizable, advanceable], (Op.FOSSILIZE, "early")),
        ([advanceable], (Op.ADVANCE, "mid")),
        ([], (Op.GERMINATE, "early")),
    ]
    for reports, expected in steps:
        action = HeuristicTamiyo(OFFERED_ORDER).decide(ready(*reports, max_epochs=100))
        assert (action.op, action.slot) == expected
        assert action.reason


G2 = T.G2_MIN_TRAINING_EPOCHS
G3 = T.G3_MIN_BLENDING_EPOCHS
EPS = T.ALPHA_EPSILON


@pytest.mark.parametrize(
    ("report", "op"),
    [
        (rep("mid", SeedStage.GERMINATED), Op.ADVANCE),
        (training("mid", epochs=G2, healthy=True, contribution=0.01), Op.ADVANCE),
        (training("mid", epochs=G2 - 1, healthy=True, contribution=0.01), Op.WAIT),
        (
            training("mid", epochs=G2, healthy=True, contribution=T.G2_MIN_PROBE_IMPROVEMENT),
            Op.WAIT,
        ),
        (training("mid", epochs=G2, healthy=None, contribution=0.01), Op.WAIT),
        (training("mid", epochs=G2, healthy=True, contribution=None), Op.WAIT),
        (rep("mid", SeedStage.BLENDING, alpha=0.5, alpha_target=0.5, epochs=G3), Op.ADVANCE),
        (rep("mid", SeedStage.BLENDING, alpha=1 - EPS / 2, epochs=G3), Op.ADVANCE),
        (rep("mid", SeedStage.BLENDING, alpha=1 - 2 * EPS, epochs=G3), Op.WAIT),
        (rep("mid", SeedStage.BLENDING, alpha=1.0, epochs=G3 - 1), Op.WAIT),
        (rep("mid", SeedStage.HOLDING, alpha=1.0, epochs=1, contribution=0.1), Op.FOSSILIZE),
        (rep("mid", SeedStage.HOLDING, alpha=1.0, epochs=1, contribution=0.099), Op.WAIT),
        (rep("mid", SeedStage.HOLDING, alpha=1.0, epochs=0, contribution=5.0), Op.WAIT),
    ],
)
def test_gate_conditions_at_their_thresholds(report: SeedStateReport, op: Op) -> None:
    action = HeuristicTamiyo(OFFERED_ORDER).decide(obs(report))
    assert action.op is op
    if op is not Op.WAIT:
        assert action.slot == "mid"


@pytest.mark.parametrize(
    ("report", "prune"),
    [
        (rep("mid", SeedStage.BLENDING, alpha=0.2, epochs=1, contribution=-1.01), True),
        (rep("mid", SeedStage.BLENDING, alpha=0.2, epochs=1, contribution=-1.0), False),
        (rep("mid", SeedStage.HOLDING, alpha=1.0, epochs=0, contribution=-1.5), True),
        (training("mid", epochs=6, healthy=True, contribution=0.0), True),
        (training("mid", epochs=5, healthy=True, contribution=0.0), False),
        (training("mid", epochs=9, healthy=True, contribution=None), False),  # missing != 0
        (training("mid", epochs=G2, healthy=False, contribution=1.0), True),
        (training("mid", epochs=G2 - 1, healthy=False, contribution=1.0), False),
        (rep("mid", SeedStage.HOLDING, alpha=1.0, epochs=3, contribution=0.05), True),
        (rep("mid", SeedStage.HOLDING, alpha=1.0, epochs=3, contribution=None), True),
        (rep("mid", SeedStage.HOLDING, alpha=1.0, epochs=2, contribution=0.05), False),
    ],
)
def test_prune_rules_at_their_thresholds(report: SeedStateReport, prune: bool) -> None:
    assert (HeuristicTamiyo(OFFERED_ORDER).decide(obs(report)).op is Op.PRUNE) is prune


def test_never_germinates_in_the_last_epochs() -> None:
    assert HeuristicTamiyo(OFFERED_ORDER).decide(ready(epoch=20, max_epochs=30)).op is Op.GERMINATE
    late = HeuristicTamiyo(OFFERED_ORDER).decide(ready(epoch=21, max_epochs=30))
    assert late.op is Op.WAIT and "late" in late.reason
    bold = HeuristicTamiyo(HeuristicConfig(blueprint_preference=(), no_germinate_last_epochs=2))
    assert bold.decide(ready(epoch=28, max_epochs=30)).op is Op.GERMINATE


def _reversed(o: Observation) -> Observation:
    table: Mapping[str, SeedStateReport] = dict(reversed(list(o.reports.items())))
    return Observation(o.signals, table, o.blueprints, o.max_epochs)


@pytest.mark.parametrize(
    ("reports", "slot"),
    [
        ([rep("mid", SeedStage.GERMINATED), rep("late", SeedStage.GERMINATED)], "mid"),
        ([rep("early", SeedStage.FOSSILIZED, alpha=1.0), rep("late", SeedStage.EMBARGOED)], "mid"),
        ([], "early"),
    ],
)
def test_decision_ignores_report_insertion_order(reports: list[SeedStateReport], slot: str) -> None:
    o = ready(*reports, slots=("late", "mid", "early"))
    assert HeuristicTamiyo(OFFERED_ORDER).decide(_reversed(o)) == HeuristicTamiyo(
        OFFERED_ORDER
    ).decide(o)
    assert HeuristicTamiyo(OFFERED_ORDER).decide(o).slot == slot


def test_only_enabled_slots_are_named() -> None:
    tamiyo = HeuristicTamiyo(
        HeuristicConfig(blueprint_preference=(), germinate_cooldown=0, max_live_seeds=9)
    )
    enabled = ("mid", "late")
    for epoch in range(5, 10):
        action = tamiyo.decide(ready(epoch=epoch, slots=enabled))
        assert action.slot in enabled


def _random_observations(n: int, seed: int) -> list[Observation]:
    """Arbitrary (not lifecycle-consistent) observations that exercise every rule."""
    rng = random.Random(seed)
    stages = list(SeedStage)
    out = []
    for epoch in range(1, n + 1):
        reports = []
        for slot in SLOTS:
            stage = rng.choice(stages)
            blueprint = None if stage is SeedStage.DORMANT else rng.choice(BLUEPRINTS)
            contribution = rng.choice([None, -2.0, 0.0, 0.5])
            alpha = rng.choice([0.0, 0.5, 1.0])
            healthy = rng.choice([None, True, False])
            epochs = rng.randrange(8)
            reports.append(
                rep(
                    slot,
                    stage,
                    blueprint,
                    alpha=alpha,
                    epochs=epochs,
                    contribution=contribution,
                    healthy=healthy,
                )
            )
        if rng.random() < 0.6:
            reports = [rep(slot) for slot in SLOTS if rng.random() < 0.7]
        stabilized = rng.random() < 0.5
        out.append(obs(*reports, epoch=epoch, stabilized=stabilized, max_epochs=n + 12))
    return out


def test_state_dict_round_trip_mid_sequence_gives_identical_decisions() -> None:
    observations = _random_observations(60, seed=0)
    config = HeuristicConfig(blueprint_preference=(), germinate_cooldown=2, prune_penalty_epochs=4)
    original = HeuristicTamiyo(config)
    before = [original.decide(o) for o in observations[:30]]
    assert {a.op for a in before} >= {Op.GERMINATE, Op.PRUNE, Op.ADVANCE}
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    resumed = HeuristicTamiyo(config)
    resumed.load_state_dict(state)
    rest = observations[30:]
    assert [resumed.decide(o) for o in rest] == [original.decide(o) for o in rest]
    assert resumed.state_dict() == original.state_dict()


def test_load_rejects_foreign_state() -> None:
    with pytest.raises(ValueError, match="state keys"):
        HeuristicTamiyo(OFFERED_ORDER).load_state_dict({})


@pytest.mark.parametrize(
    "bad",
    [
        {"max_live_seeds": 0},
        {"plateau_patience": 0},
        {"max_holding_epochs": T.G5_MIN_HOLDING_EPOCHS - 1},
        {"prune_contribution": T.G5_MIN_CONTRIBUTION},
        # -inf passed, and config.json recorded it as null: unresumable (a walk-through)
        {"prune_contribution": -math.inf},
        {"prune_contribution": math.nan},
        {"prune_contribution": "-1"},
        {"germinate_cooldown": 1.5},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        HeuristicConfig(blueprint_preference=(), **bad)  # type: ignore[arg-type]


def test_default_preference_grows_capacity_first() -> None:
    offered = ("norm", "attention", "depthwise", "conv_light", "conv_heavy", "bottleneck")
    tamiyo = HeuristicTamiyo(HeuristicConfig(germinate_cooldown=0))
    first = tamiyo.decide(ready(epoch=5, blueprints=offered))
    assert first.blueprint == "conv_light"
    second = tamiyo.decide(
        ready(rep("early", SeedStage.TRAINING, "conv_light"), epoch=6, blueprints=offered)
    )
    assert second.blueprint == "depthwise"


def test_custom_preference_and_unlisted_blueprints() -> None:
    config = HeuristicConfig(germinate_cooldown=0, blueprint_preference=("depthwise",))
    tamiyo = HeuristicTamiyo(config)
    assert tamiyo.decide(ready(epoch=5)).blueprint == "depthwise"  # listed first
    nxt = tamiyo.decide(ready(rep("early", SeedStage.TRAINING, "depthwise"), epoch=6))
    assert nxt.blueprint == "norm"  # then the unlisted ones in offered order


@pytest.mark.parametrize(
    ("preference", "message"),
    [
        (("conv_light", "bogus"), "unknown blueprint 'bogus'; accepted: attention, bottleneck"),
        (("conv_light", "norm", "conv_light"), "names a blueprint twice"),
    ],
)
def test_blueprint_preference_names_known_blueprints_once(
    preference: tuple[str, ...], message: str
) -> None:
    """A bad name was saved in config.json and ignored (a knob that did nothing)."""
    with pytest.raises(ValueError, match=message):
        HeuristicConfig(blueprint_preference=preference)
    assert HeuristicConfig(blueprint_preference=()).blueprint_preference == ()  # registry order


def _first_germination(config: HeuristicConfig, epochs: int, losses: Sequence[float]) -> int | None:
    """The step of the first GERMINATE when a real ``SignalTracker`` feeds the heuristic an
    episode of ``epochs`` steps at constant accuracy and the given validation losses (the
    last repeated): the quickest plateau and, with flat losses, the quickest stabilization.
    As in a run, the heuristic decides after every epoch but the last."""
    tracker, heuristic = SignalTracker(), HeuristicTamiyo(config)
    for step in range(epochs - 1):
        reports = {s: rep(s) for s in SLOTS}
        loss = losses[min(step, len(losses) - 1)]
        signals = tracker.update(
            train_loss=loss, train_accuracy=50.0, val_loss=loss, val_accuracy=50.0,
            reports=reports,
        )  # fmt: skip
        action = heuristic.decide(Observation(signals, reports, BLUEPRINTS, epochs))
        if action.op is Op.GERMINATE:
            return signals.epoch
    return None


@pytest.mark.parametrize(
    "config",
    [
        HeuristicConfig(),
        HeuristicConfig(plateau_patience=1),
        HeuristicConfig(plateau_patience=6, no_germinate_last_epochs=4),
        HeuristicConfig(no_germinate_last_epochs=0),
    ],
)
def test_never_grows_says_so_exactly_when_the_rules_never_germinate(
    config: HeuristicConfig,
) -> None:
    """Oracle: the rules themselves, driven by the real tracker on the episodes that reach a
    plateau (constant accuracy, falling loss) or a stabilized host (flat loss) soonest. An
    8-epoch study arm's heuristic never grew, and nothing said so (a workflow check)."""
    for epochs in range(1, 25):
        soonest = [
            _first_germination(config, epochs, losses)
            for losses in ([1.0], [2.0 - 0.1 * k for k in range(30)])
        ]
        grows = any(step is not None for step in soonest)
        assert (config.never_grows(epochs) is None) == grows, (epochs, soonest)
    note = HeuristicConfig().never_grows(8)
    assert note is not None and note.startswith("a run of 8 epochs never germinates a seed")
    assert note.endswith("give it at least 14 epochs (or lower no_germinate_last_epochs)")
    assert HeuristicConfig().never_grows(8, settable=False) == note.removesuffix(
        " (or lower no_germinate_last_epochs)"
    )
