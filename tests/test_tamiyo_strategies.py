"""The heuristic's blueprint selectors and orchestration strategies: each strategy's
distinctive decisions on hand-made observations, and a short synthetic episode per strategy."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import torch

from conftest import CNN_BLUEPRINTS, cnn_host, observation
from conftest import seed_report as rep
from esper.data import load_dataset
from esper.kasmina import blueprint_registry
from esper.leyline import Action, Observation, Op, SeedStage, SeedStateReport, Topology
from esper.leyline.config import HostTraining
from esper.leyline.events import ActionTaken
from esper.leyline.knowledge import HostSignature, SeedOutcome
from esper.simic.env import task_episode
from esper.tamiyo import HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.selectors import OTHER_SLOT_WEIGHT, SELECTORS, UCBSelector
from esper.tamiyo.strategies import (
    FAMILIES,
    STRATEGIES,
    blueprint_sizes,
    diverse,
    family,
    specialized,
)
from esper.tasks import resolve_training

SIZES = blueprint_sizes(cnn_host().injection_points)  # base width 4: early 4, mid 8, late 16


def ready(
    *reports: SeedStateReport, epoch: int = 5, stabilized: bool = True, max_epochs: int = 40
) -> Observation:
    """An observation of a CNN host offering every CNN blueprint; DORMANT where not given."""
    return observation(
        reports,
        epoch=epoch,
        host_stabilized=stabilized,
        plateau_epochs=0,
        max_epochs=max_epochs,
    )


def heuristic(
    strategy: str = "spread", selector: str = "rotation", **config: int
) -> HeuristicTamiyo:
    sizes = SIZES if strategy == "specialize" else None
    return HeuristicTamiyo(
        HeuristicConfig(strategy=strategy, selector=selector, **config),  # type: ignore[arg-type]
        sizes=sizes,
    )


def grown(actions: Sequence[Action]) -> list[tuple[str | None, str | None]]:
    return [(a.slot, a.blueprint) for a in actions if a.op is Op.GERMINATE]


def training(slot: str, blueprint: str, **kwargs: float) -> SeedStateReport:
    return rep(slot, SeedStage.TRAINING, blueprint, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ configuration


def test_defaults_are_the_original_heuristic() -> None:
    config = HeuristicConfig()
    assert (config.selector, config.strategy) == ("rotation", "spread")
    assert not config.needs_shapley
    assert HeuristicConfig(strategy="ensemble").needs_shapley
    state = HeuristicTamiyo().state_dict()
    assert {"last_blueprint", "prune_epochs", "selector"} <= set(state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selector": "greedy"}, "unknown selector 'greedy'; accepted: rotation, ucb"),
        ({"strategy": "grow"}, "unknown strategy 'grow'; accepted: spread, replace"),
        ({"selector": "ucb", "prune_penalty_epochs": 3}, "prune_penalty_epochs is the rotation"),
    ],
)
def test_config_rejects_unknown_names_and_lying_knobs(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        HeuristicConfig(**kwargs)  # type: ignore[arg-type]


def test_sizes_are_required_by_specialize_and_refused_elsewhere() -> None:
    with pytest.raises(ValueError, match="specialize strategy"):
        HeuristicTamiyo(HeuristicConfig(strategy="specialize"))
    with pytest.raises(ValueError, match="specialize strategy"):
        HeuristicTamiyo(HeuristicConfig(), sizes=SIZES)
    with pytest.raises(ValueError, match="rotation selector does not learn"):
        HeuristicTamiyo(HeuristicConfig(), priors=[_prior("depthwise", 1.0)])


# ------------------------------------------------------------------ the selector in the heuristic

HOST = HostSignature("synthetic", "cnn", 4, 1000)


def _prior(blueprint: str, contribution: float | None, slot: str = "early") -> SeedOutcome:
    stage = "PRUNED" if contribution is None else "FOSSILIZED"
    return SeedOutcome("old", HOST, slot, blueprint, stage, contribution, 500, None, 3, 10)


def test_the_selector_learns_each_seed_outcome_when_it_ends() -> None:
    tamiyo = heuristic(selector="ucb")
    ucb = tamiyo.selector
    assert isinstance(ucb, UCBSelector)
    held = rep(
        "early",
        SeedStage.HOLDING,
        "depthwise",
        alpha=1.0,
        epochs=1,
        contribution=0.5,
        seed_params=250,
    )
    assert tamiyo.decide(ready(held, epoch=9)).op is Op.FOSSILIZE
    assert ucb.stats("early", "depthwise") == pytest.approx((1.0, 0.5 * 1000 / 250))
    fossil = rep("early", SeedStage.FOSSILIZED, "depthwise", alpha=1.0)
    stalled = training("mid", "norm", epochs=6, healthy=True, contribution=0.0)
    assert tamiyo.decide(ready(fossil, stalled, epoch=10)).op is Op.PRUNE
    assert ucb.stats("mid", "norm") == (1.0, 0.0)
    # Seen again as EMBARGOED: the same prune, not a second outcome.
    tamiyo.decide(ready(fossil, rep("mid", SeedStage.EMBARGOED, "norm"), epoch=11))
    assert ucb.stats("mid", "norm") == (1.0, 0.0)
    # A prune the heuristic did not order (a rollback) is an outcome too.
    tamiyo.decide(ready(fossil, training("late", "attention", epochs=1), epoch=12))
    tamiyo.decide(ready(fossil, rep("late", SeedStage.PRUNED, "attention"), epoch=13))
    assert ucb.stats("late", "attention") == (1.0, 0.0)
    assert ucb.stats("early", "depthwise") == pytest.approx((1.0, 2.0))  # kept, not pruned
    assert ucb.stats("early", "attention") == (OTHER_SLOT_WEIGHT, 0.0)


def test_priors_steer_the_first_blueprint() -> None:
    priors = [_prior(b, 2.0 if b == "bottleneck" else None) for b in CNN_BLUEPRINTS]
    rotation = heuristic().decide(ready())
    assert rotation.blueprint == "conv_light"  # first in blueprint_preference
    for selector in ("ucb", "epsilon", "thompson"):
        tamiyo = HeuristicTamiyo(HeuristicConfig(selector=selector), seed=2, priors=priors)
        assert tamiyo.decide(ready()).blueprint == "bottleneck", selector


def _germinations(tamiyo: HeuristicTamiyo, n: int) -> list[str | None]:
    """Blueprints grown on ``n`` observations with every slot DORMANT (no cooldown)."""
    return [tamiyo.decide(ready(epoch=5 + e)).blueprint for e in range(n)]


def test_a_random_selector_is_seeded() -> None:
    def run(seed: int) -> list[str | None]:
        config = HeuristicConfig(selector="thompson", germinate_cooldown=0)
        return _germinations(HeuristicTamiyo(config, seed=seed), 12)

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("selector", SELECTORS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_state_round_trip_continues_identically(selector: str, strategy: str) -> None:
    config = HeuristicConfig(selector=selector, strategy=strategy, germinate_cooldown=0)
    sizes = SIZES if strategy == "specialize" else None
    sequence = _lifecycle_observations()
    original = HeuristicTamiyo(config, seed=3, sizes=sizes)
    for o in sequence[:6]:
        original.decide(o)
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    resumed = HeuristicTamiyo(config, seed=99, sizes=sizes)
    resumed.load_state_dict(state)
    rest = sequence[6:]
    assert [resumed.decide(o) for o in rest] == [original.decide(o) for o in rest]
    assert resumed.state_dict() == original.state_dict()


def _lifecycle_observations() -> list[Observation]:
    """Prunes, a fossilization and free slots: every strategy's memory gets used."""
    stalled = training("early", "conv_light", epochs=6, healthy=True, contribution=0.0, shapley=0.0)
    held = rep(
        "mid", SeedStage.HOLDING, "depthwise", alpha=1.0, epochs=1, contribution=0.5, shapley=0.5
    )
    fossil = rep("mid", SeedStage.FOSSILIZED, "depthwise", alpha=1.0)
    return [
        ready(epoch=5),
        ready(stalled, epoch=6),
        ready(rep("early", SeedStage.EMBARGOED, "conv_light"), epoch=7),
        ready(held, epoch=8),
        ready(fossil, epoch=9),
        ready(fossil, epoch=10),
        ready(fossil, epoch=11),
        ready(fossil, epoch=12),
        ready(fossil, rep("late", SeedStage.PRUNED, "norm"), epoch=13),
        ready(fossil, epoch=14),
    ]


# ------------------------------------------------------------------ replace


def test_replace_regrows_the_pruned_slot_at_once_with_another_blueprint() -> None:
    stalled = training("early", "conv_light", epochs=6, healthy=True, contribution=0.0)
    embargoed = rep("early", SeedStage.EMBARGOED, "conv_light")
    improving = {"stabilized": False}  # no plateau: the usual rules wait
    steps = [
        ready(epoch=5),
        ready(stalled, epoch=10),
        ready(embargoed, epoch=11, **improving),
        ready(epoch=17, **improving),  # early DORMANT again after the embargo
        ready(training("early", "depthwise"), epoch=20),
    ]
    spread, replace = heuristic(), heuristic("replace")
    by_spread = [spread.decide(o) for o in steps]
    by_replace = [replace.decide(o) for o in steps]
    assert [a.op for a in by_spread] == [Op.GERMINATE, Op.PRUNE, Op.WAIT, Op.WAIT, Op.GERMINATE]
    assert [a.op for a in by_replace] == [
        Op.GERMINATE,
        Op.PRUNE,
        Op.WAIT,
        Op.GERMINATE,
        Op.GERMINATE,
    ]
    assert by_replace[3].slot == "early" and by_replace[3].blueprint != "conv_light"
    assert "replace" in by_replace[3].reason
    assert (by_spread[4].slot, by_replace[4].slot) == ("mid", "mid")
    # Given a stabilized host, spread grows a slot that never held a seed; replace the pruned one.
    spread, replace = heuristic(), heuristic("replace")
    for tamiyo in (spread, replace):
        for o in steps[:3]:
            tamiyo.decide(o)
    assert spread.decide(ready(epoch=17)).slot == "mid"
    assert replace.decide(ready(epoch=17)).slot == "early"


def test_replace_grows_a_different_blueprint_even_when_the_selector_prefers_the_pruned_one() -> (
    None
):
    priors = [_prior(b, 5.0 if b == "conv_light" else None) for b in CNN_BLUEPRINTS]
    tamiyo = HeuristicTamiyo(HeuristicConfig(selector="ucb", strategy="replace"), priors=priors)
    assert tamiyo.decide(ready(epoch=5)).blueprint == "conv_light"
    stalled = training("early", "conv_light", epochs=6, healthy=True, contribution=0.0)
    assert tamiyo.decide(ready(stalled, epoch=10)).op is Op.PRUNE
    again = tamiyo.decide(ready(epoch=16, stabilized=False))
    assert (again.op, again.slot) == (Op.GERMINATE, "early")
    assert again.blueprint != "conv_light"


def test_replace_respects_the_horizon_and_the_live_seed_limit() -> None:
    def pruned_at_5() -> HeuristicTamiyo:
        tamiyo = heuristic("replace")
        probe = training("early", "conv_light", epochs=6, healthy=True, contribution=0.0)
        assert tamiyo.decide(ready(probe)).op is Op.PRUNE
        return tamiyo

    control = pruned_at_5().decide(ready(epoch=6, stabilized=False))
    assert control.op is Op.GERMINATE  # replaced at once, host still improving or not
    tamiyo = pruned_at_5()
    both = (training("mid", "norm"), training("late", "norm"))
    full = tamiyo.decide(ready(*both, epoch=6, stabilized=False))
    assert full.op is Op.WAIT
    late = tamiyo.decide(ready(epoch=38, stabilized=False, max_epochs=40))
    assert late.op is Op.WAIT


# ------------------------------------------------------------------ diversify


def test_diversify_grows_other_families_where_spread_rotates_through_convolutions() -> None:
    def sequence(strategy: str) -> list[tuple[str | None, str | None]]:
        tamiyo = heuristic(strategy, max_live_seeds=3, germinate_cooldown=0)
        first = tamiyo.decide(ready(epoch=5))
        second = tamiyo.decide(ready(training("early", str(first.blueprint)), epoch=6))
        third = tamiyo.decide(
            ready(
                training("early", str(first.blueprint)),
                training("mid", str(second.blueprint)),
                epoch=7,
            )
        )
        return grown([first, second, third])

    assert sequence("spread") == [
        ("early", "conv_light"),
        ("mid", "depthwise"),
        ("late", "conv_heavy"),
    ]
    assert sequence("diversify") == [
        ("early", "conv_light"),
        ("mid", "attention"),
        ("late", "norm"),
    ]


def test_diverse_keeps_the_least_present_families() -> None:
    cnn = list(CNN_BLUEPRINTS)
    others = [
        rep("early", SeedStage.FOSSILIZED, "conv_heavy"),
        rep("mid", SeedStage.TRAINING, "bottleneck"),
        rep("late", SeedStage.EMBARGOED, "norm"),  # retired: not present
    ]
    assert diverse(cnn, others, "late") == ["norm", "attention"]
    assert diverse(cnn, others, "mid") == ["norm", "attention"]  # the slot itself not counted
    everyone = [
        rep("early", SeedStage.FOSSILIZED, "conv_heavy"),
        rep("mid", SeedStage.HOLDING, "norm"),
        rep("late", SeedStage.TRAINING, "attention"),
    ]
    assert diverse(cnn, everyone, "spare") == cnn  # every family once: all tie
    transformer = list(blueprint_registry.names(Topology.TRANSFORMER))
    assert diverse(transformer, [rep("early", SeedStage.TRAINING, "mlp")], "mid") == [
        "norm",
        "attention",
    ]  # lora is in mlp's family


def test_every_registered_blueprint_has_a_family() -> None:
    for topology in Topology:
        for name in blueprint_registry.names(topology):
            assert family(name) == FAMILIES[name]
    with pytest.raises(ValueError, match="'zz' has no family"):
        family("zz")


# ------------------------------------------------------------------ specialize


def test_blueprint_sizes_match_the_parameter_formulas() -> None:
    for slot, c in (("early", 4), ("mid", 8), ("late", 16)):  # CNN widths double per stage
        sizes = SIZES[slot]
        assert sizes["norm"] == 2 * c  # GroupNorm affine
        assert sizes["conv_light"] == 9 * c * c + 2 * c  # 3x3 conv, no bias + norm
        assert sizes["conv_heavy"] == 2 * 9 * c * c + 2 * c + c  # two 3x3 convs + norm + bias
        assert sizes["depthwise"] == 9 * c + 2 * c + c * c + c  # dw 3x3 + norm + 1x1 with bias


def test_blueprint_sizes_refuses_two_points_of_one_slot() -> None:
    """The last one's sizes were kept."""
    points = cnn_host().injection_points
    with pytest.raises(ValueError, match=r"distinct slots; repeated: \['mid'\]"):
        blueprint_sizes([points[1], points[1]])


def test_specialize_grows_a_larger_member_of_the_fossilized_family() -> None:
    held = rep("early", SeedStage.HOLDING, "conv_light", alpha=1.0, epochs=1, contribution=0.5)
    fossil = rep("early", SeedStage.FOSSILIZED, "conv_light", alpha=1.0)

    def sequence(strategy: str) -> list[Action]:
        tamiyo = heuristic(strategy, germinate_cooldown=0)
        steps = [ready(epoch=5), ready(held, epoch=9), ready(fossil, epoch=10)]
        actions = [tamiyo.decide(o) for o in steps]
        live = training("mid", str(actions[-1].blueprint))
        return [*actions, tamiyo.decide(ready(fossil, live, epoch=11))]

    spread, special = sequence("spread"), sequence("specialize")
    assert [a.op for a in special] == [Op.GERMINATE, Op.FOSSILIZE, Op.GERMINATE, Op.GERMINATE]
    assert grown(spread) == [("early", "conv_light"), ("mid", "depthwise"), ("late", "conv_heavy")]
    # conv_heavy is the one convolution larger than conv_light at mid (1176 > 592 parameters);
    # after it the rotation resumes.
    assert grown(special) == [
        ("early", "conv_light"),
        ("mid", "conv_heavy"),
        ("late", "bottleneck"),
    ]


def test_specialized_candidates_by_size_at_the_target_slot() -> None:
    sizes = {"depthwise": 60, "bottleneck": 25, "conv_light": 150, "conv_heavy": 300, "norm": 8}
    offered = ["conv_light", "depthwise", "conv_heavy", "bottleneck", "norm"]
    assert specialized(offered, "bottleneck", sizes) == ["conv_light", "depthwise", "conv_heavy"]
    assert specialized(offered, "depthwise", sizes) == ["conv_light", "conv_heavy"]
    # The largest, or a family of one: the same family again.
    assert specialized(offered, "conv_heavy", sizes) == offered[:4]
    assert specialized(offered, "norm", sizes) == ["norm"]
    assert specialized(["norm"], "conv_light", sizes) == ["norm"]  # family not offered
    with pytest.raises(ValueError, match=r"no parameter count for \['conv_heavy'\]"):
        specialized(offered, "conv_light", {"conv_light": 1, "depthwise": 1, "bottleneck": 1})


# ------------------------------------------------------------------ ensemble


def blended(
    slot: str, shapley: float | None, *, contribution: float = 0.5, alpha: float = 1.0
) -> SeedStateReport:
    """A held seed (α at its target) that neither clears G5 yet nor is due a prune."""
    stage = SeedStage.HOLDING if alpha == 1.0 else SeedStage.BLENDING
    return rep(slot, stage, "norm", alpha=alpha, contribution=contribution, shapley=shapley)


def test_ensemble_grows_a_seed_in_every_slot() -> None:
    two = [training("early", "norm"), training("mid", "norm")]
    assert heuristic().decide(ready(*two)).reason == "2 live seeds (max 2)"
    third = heuristic("ensemble").decide(ready(*two))
    assert (third.op, third.slot) == (Op.GERMINATE, "late")


def test_ensemble_prunes_the_lowest_shapley_value_over_its_budget() -> None:
    three = [blended("early", 0.5), blended("mid", 0.2), blended("late", 0.8)]
    assert heuristic().decide(ready(*three)).op is Op.WAIT
    action = heuristic("ensemble").decide(ready(*three))
    assert (action.op, action.slot) == (Op.PRUNE, "mid")
    assert "lowest Shapley value 0.2" in action.reason
    # Within the budget, or with one seed still ramping α up: nothing to prune.
    assert heuristic("ensemble", max_live_seeds=3).decide(ready(*three)).op is Op.WAIT
    ramping = [*three[:2], blended("late", 0.8, alpha=0.3)]
    assert heuristic("ensemble").decide(ready(*ramping)).op is not Op.PRUNE


def test_ensemble_judges_blended_seeds_by_shapley_value_not_contribution() -> None:
    redundant = blended("mid", 0.3, contribution=-1.5)  # leave-one-out misses a shared benefit
    harmful = blended("mid", -1.5, contribution=0.5)
    assert heuristic().decide(ready(redundant)).op is Op.PRUNE
    assert heuristic("ensemble").decide(ready(redundant)).op is not Op.PRUNE
    assert heuristic().decide(ready(harmful)).op is not Op.PRUNE
    action = heuristic("ensemble").decide(ready(harmful))
    assert (action.op, action.reason) == (Op.PRUNE, "Shapley value -1.5 < -1.0")


def test_ensemble_fails_loudly_without_shapley_values() -> None:
    with pytest.raises(ValueError, match=r"needs Shapley values .* none for \['mid'\]"):
        heuristic("ensemble").decide(ready(blended("early", 0.1), blended("mid", None)))


# ------------------------------------------------------------------ synthetic episodes

EPISODE_SELECTOR = {  # each selector in at least one episode
    "spread": "ucb",
    "replace": "epsilon",
    "diversify": "thompson",
    "specialize": "rotation",
    "ensemble": "thompson",
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_synthetic_episode_runs_with_every_strategy(strategy: str) -> None:
    # A quick heuristic: germinate one step after a plateau, until the last step.
    config = HeuristicConfig(
        selector=EPISODE_SELECTOR[strategy],
        strategy=strategy,
        plateau_patience=1,
        germinate_cooldown=1,
        no_germinate_last_epochs=0,
    )
    # The ensemble needs blended seeds to compare: enough training for a seed to pass G2
    # (with 8 batches whether one does turned on float rounding; 16 blend one by epoch 12).
    batches = 16 if strategy == "ensemble" else 2
    training = resolve_training(
        HostTraining(
            "synthetic",
            epochs=20,
            batches_per_epoch=batches,
            val_samples=256,
            shapley=config.needs_shapley,
        )
    )
    events: list[object] = []
    episode = task_episode(
        training, load_dataset("synthetic"), 0, torch.device("cpu"), events.append
    )
    episode.reset()
    sizes = (
        blueprint_sizes(episode.model.host.injection_points) if strategy == "specialize" else None
    )
    controller = HeuristicTamiyo(config, seed=1, sizes=sizes)
    shapley_seen = False
    while not episode.done:
        reports = episode.observation.reports.values()
        shapley_seen |= any(r.shapley_value is not None for r in reports)
        episode.step(controller.decide(episode.observation))
    taken = [e for e in events if isinstance(e, ActionTaken)]
    assert all(e.accepted for e in taken), [e.error for e in taken if not e.accepted]
    assert sum(e.op == Op.GERMINATE.value for e in taken) >= 2
    assert shapley_seen is (strategy == "ensemble")
    json.dumps(controller.state_dict(), allow_nan=False)
