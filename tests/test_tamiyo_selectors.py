"""Blueprint selectors on a simulated bandit with known means, and their state and priors."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from esper.leyline import SeedStage
from esper.leyline.knowledge import HostSignature, SeedOutcome, outcome_score
from esper.tamiyo.selectors import (
    EPSILON,
    OTHER_SLOT_WEIGHT,
    SELECTORS,
    BlueprintSelector,
    RotationSelector,
    ThompsonSelector,
    UCBSelector,
    make_selector,
    seed_reward,
)

# ------------------------------------------------------------------ a simulated bandit

ARMS = ("a0", "a1", "a2", "a3", "a4")
MEANS = (0.2, 0.5, 0.8, 1.1, 1.4)  # rewards of unit scale, as outcome_score's
NOISE = 0.5  # Gaussian reward noise
GAPS = [max(MEANS) - m for m in MEANS]
PULLS = 2000
SEEDS = range(5)


def regret_curve(selector: BlueprintSelector, seed: int, pulls: int = PULLS) -> list[float]:
    """Cumulative pseudo-regret (the sum of the chosen arms' gaps) after each pull."""
    env = random.Random(10_000 + seed)
    total, curve = 0.0, []
    for t in range(pulls):
        arm = ARMS.index(selector.choose("mid", ARMS, t))
        total += GAPS[arm]
        curve.append(total)
        selector.update("mid", ARMS[arm], env.gauss(MEANS[arm], NOISE), t)
    return curve


@pytest.fixture(scope="module")
def curves() -> dict[str, list[list[float]]]:
    return {name: [regret_curve(make_selector(name, s), s) for s in SEEDS] for name in SELECTORS}


def _halves(curves: list[list[float]]) -> tuple[float, float]:
    """Regret summed over the seeds in the first and in the second half of the pulls."""
    half = PULLS // 2
    first = sum(c[half - 1] for c in curves)
    return first, sum(c[-1] for c in curves) - first


@pytest.mark.parametrize("name", ["ucb", "thompson"])
def test_learning_selectors_have_sublinear_regret_below_the_rotations(
    name: str, curves: dict[str, list[list[float]]]
) -> None:
    first, second = _halves(curves[name])
    # Logarithmic regret would give ln(2)/ln(1000) = 0.1; linear regret gives 1. Measured:
    # 0.2-0.3 (ucb), 0.15-0.22 (thompson) over eight sets of five seeds.
    assert second / first < 0.4, (first, second)
    for learner, rotation in zip(curves[name], curves["rotation"], strict=True):
        assert learner[-1] < 0.2 * rotation[-1], (learner[-1], rotation[-1])


def test_rotation_regret_is_linear(curves: dict[str, list[list[float]]]) -> None:
    first, second = _halves(curves["rotation"])
    assert second == pytest.approx(first, rel=0.05)


def test_epsilon_greedy_regret_grows_at_epsilon_times_the_mean_gap(
    curves: dict[str, list[list[float]]],
) -> None:
    # Once greedy settles on the best arm, a step costs a gap only when it explores (prob.
    # epsilon), uniformly over all arms: expected slope epsilon * mean(gaps) = 0.06.
    expected = EPSILON * sum(GAPS) / len(GAPS)
    _, second = _halves(curves["epsilon"])
    slope = second / (len(SEEDS) * PULLS // 2)
    # Per step the regret has variance ~ epsilon * mean(gap^2) - slope^2 = 0.05, so the slope
    # over 5 x 1000 steps has a standard deviation of 5 % of 0.06; 20 % is four of them.
    assert slope == pytest.approx(expected, rel=0.2)
    first, _ = _halves(curves["epsilon"])
    assert second > 0.4 * first  # no sublinear flattening: exploration never stops


# ------------------------------------------------------------------ determinism and state


@pytest.mark.parametrize("name", SELECTORS)
def test_same_seed_same_choices(name: str) -> None:
    assert regret_curve(make_selector(name, 3), 0, 300) == regret_curve(
        make_selector(name, 3), 0, 300
    )


@pytest.mark.parametrize("name", ["thompson", "epsilon"])
def test_other_seed_other_choices_and_global_random_state_untouched(name: str) -> None:
    random.seed(123)
    before = random.getstate()
    assert regret_curve(make_selector(name, 3), 0, 300) != regret_curve(
        make_selector(name, 4), 0, 300
    )
    assert random.getstate() == before


def _continue(selector: BlueprintSelector, pulls: range) -> list[str]:
    env = random.Random(pulls.start)
    chosen = []
    for t in pulls:
        blueprint = selector.choose("mid", ARMS, t)
        chosen.append(blueprint)
        selector.update("mid", blueprint, env.gauss(MEANS[ARMS.index(blueprint)], NOISE), t)
    return chosen


@pytest.mark.parametrize("name", SELECTORS)
def test_state_round_trip_continues_identically(name: str) -> None:
    original = make_selector(name, 5)
    _continue(original, range(0, 150))
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    resumed = make_selector(name, 99)  # the seed comes back with the state
    resumed.load_state_dict(state)
    assert _continue(resumed, range(150, 300)) == _continue(original, range(150, 300))
    assert resumed.state_dict() == original.state_dict()


_SAVE = """
import json, random, sys
from esper.tamiyo.selectors import make_selector
selector = make_selector(sys.argv[1], 7)
env = random.Random(0)
for t in range(100):
    b = selector.choose("mid", ["a0", "a1", "a2"], t)
    selector.update("mid", b, env.gauss({"a0": 0.2, "a1": 0.5, "a2": 0.8}[b], 0.5), t)
json.dump(selector.state_dict(), open(sys.argv[2], "w"))
"""

_LOAD = """
import json, sys
from esper.tamiyo.selectors import make_selector
selector = make_selector(sys.argv[1], 0)
selector.load_state_dict(json.load(open(sys.argv[2])))
print(json.dumps([selector.choose("mid", ["a0", "a1", "a2"], 100 + t) for t in range(20)]))
"""


def test_statistics_persist_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "thompson.json"
    for code in (_SAVE, _LOAD):
        done = subprocess.run(
            [sys.executable, "-c", code, "thompson", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    here = make_selector("thompson", 7)
    env = random.Random(0)
    means = {"a0": 0.2, "a1": 0.5, "a2": 0.8}
    for t in range(100):
        b = here.choose("mid", ["a0", "a1", "a2"], t)
        here.update("mid", b, env.gauss(means[b], 0.5), t)
    assert json.loads(path.read_text()) == json.loads(json.dumps(here.state_dict()))
    expected = [here.choose("mid", ["a0", "a1", "a2"], 100 + t) for t in range(20)]
    assert json.loads(done.stdout) == expected


@pytest.mark.parametrize("name", SELECTORS)
def test_load_rejects_foreign_state(name: str) -> None:
    selector = make_selector(name, 0)
    with pytest.raises(ValueError, match="state keys"):
        selector.load_state_dict({})
    other = "ucb" if name == "rotation" else "rotation"
    with pytest.raises(ValueError, match=r"state keys|cannot be loaded"):
        selector.load_state_dict(make_selector(other, 0).state_dict())
    foreign = {**selector.state_dict(), "selector": "other"}
    with pytest.raises(ValueError, match="cannot be loaded"):
        selector.load_state_dict(foreign)


@pytest.mark.parametrize("name", ["ucb", "thompson", "epsilon"])
@pytest.mark.parametrize("pair", [[math.nan, 1.0], [-2.0, 1.0], [1.0, math.inf], ["1", 0.0]])
def test_load_refuses_statistics_no_outcome_could_make(name: str, pair: list[Any]) -> None:
    """A negative count made Thompson's precision negative (a complex sample); NaN poisoned
    every choice."""
    selector = make_selector(name, 0)
    selector.update("early", "norm", 0.5, 3)
    state = selector.state_dict()
    bad = {**state, "outcomes": {"early": {"norm": pair}}}
    with pytest.raises(ValueError, match=r"finite numbers with count >= 0"):
        selector.load_state_dict(bad)
    assert selector.state_dict() == state


def test_rotation_refuses_a_prune_epoch_that_is_not_a_step() -> None:
    selector = make_selector("rotation", 0)
    before = selector.state_dict()
    for epoch in (2.7, -1, "3"):
        bad = {**before, "last_blueprint": "conv_heavy", "prune_epochs": {"norm": epoch}}
        with pytest.raises(ValueError, match=r"a prune's epoch must be an integer in \[0, "):
            selector.load_state_dict(bad)
        assert selector.state_dict() == before  # a refused load changes nothing


def test_thompson_state_does_not_load_into_epsilon() -> None:
    with pytest.raises(ValueError, match="'thompson' selector state cannot be loaded"):
        make_selector("epsilon", 0).load_state_dict(make_selector("thompson", 0).state_dict())


# ------------------------------------------------------------------ construction


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("rotation", {"penalty_epochs": 3}),
        ("ucb", {"c": 0.25}),
        ("thompson", {"prior_mean": 0.1, "prior_sd": 2.0, "noise_sd": 0.3}),
        ("epsilon", {"epsilon": 0.05}),
    ],
)
def test_each_setting_reaches_the_selector_and_no_other_is_accepted(
    name: str, settings: dict[str, float]
) -> None:
    """Every constant a selector's constructor takes can be set by name, reaches the selector,
    and is the whole list the error names."""
    selector = make_selector(name, 3, **settings)
    assert {k: getattr(selector, k) for k in settings} == settings
    with pytest.raises(
        ValueError, match=rf"setting\(s\) \['nope'\]; accepted: {', '.join(settings)}$"
    ):
        make_selector(name, 3, nope=1)


def test_unknown_names_and_settings_fail_loudly() -> None:
    with pytest.raises(ValueError, match="unknown selector 'greedy'; accepted: rotation, ucb"):
        make_selector("greedy", 0)
    with pytest.raises(ValueError, match=r"unknown ucb selector setting\(s\) \['epsilon'\]"):
        make_selector("ucb", 0, epsilon=0.2)
    with pytest.raises(ValueError, match="epsilon must be a number in"):
        make_selector("epsilon", 0, epsilon=1.5)
    with pytest.raises(ValueError, match="seed must be an integer"):
        make_selector("thompson", -1)
    with pytest.raises(ValueError, match="does not learn; priors need one of ucb, thompson, ep"):
        make_selector("rotation", 0, [_outcome("a0", "FOSSILIZED", 1.0)])
    with pytest.raises(ValueError, match="non-empty list without repeats"):
        make_selector("ucb", 0).choose("mid", ["a0", "a0"], 0)
    for name in SELECTORS:  # a string's letters were offered: "conv_light" chose "c"
        with pytest.raises(ValueError, match="a list of names, got the string 'conv_light'"):
            make_selector(name, 0).choose("mid", "conv_light", 0)
    for reward in (math.nan, True):  # a bool was read as a reward of 1
        for name in SELECTORS:
            with pytest.raises(ValueError, match="a reward must be a finite number"):
                make_selector(name, 0).update("mid", "a0", reward, 0)


def test_settings_change_behaviour() -> None:
    def late(selector: BlueprintSelector) -> Counter[str]:
        return Counter(_continue(selector, range(400))[200:])

    # epsilon = 0 and c = 0 are greedy on the means once every arm is tried; epsilon = 1 and a
    # large c keep exploring every arm.
    assert len(late(make_selector("epsilon", 1, epsilon=0.0))) == 1
    assert len(late(make_selector("epsilon", 1, epsilon=1.0))) == len(ARMS)
    assert len(late(make_selector("ucb", 0, c=0.0))) == 1
    assert len(late(make_selector("ucb", 0, c=100.0))) == len(ARMS)
    narrow = ThompsonSelector(0, prior_mean=5.0, prior_sd=0.01)
    assert narrow.posterior("mid", "a0") == pytest.approx((5.0, 0.01))
    assert _continue(RotationSelector(penalty_epochs=0), range(6)) == [*ARMS, "a0"]


# ------------------------------------------------------------------ rewards and priors

HOST = HostSignature("synthetic", "cnn", 8, 1000)


def _outcome(
    blueprint: str, stage: str, contribution: float | None, slot: str = "mid", params: int = 1000
) -> SeedOutcome:
    return SeedOutcome("run", HOST, slot, blueprint, stage, contribution, params, None, 3, 10)


def test_seed_reward_is_the_outcome_score() -> None:
    assert seed_reward(SeedStage.FOSSILIZED, 0.5, 250) == pytest.approx(2.0)
    assert seed_reward(SeedStage.PRUNED, 3.0, 250) == 0.0
    assert seed_reward(SeedStage.HOLDING, 3.0, 250) is None
    outcome = _outcome("a0", "FOSSILIZED", 0.5, params=250)
    assert seed_reward(SeedStage.FOSSILIZED, 0.5, 250) == outcome_score(outcome)


def test_priors_count_fully_in_their_slot_and_at_the_stated_weight_elsewhere() -> None:
    priors = [
        _outcome("a1", "FOSSILIZED", 2.0, slot="early"),  # score 2.0
        _outcome("a1", "PRUNED", None, slot="mid"),  # score 0.0
        _outcome("a1", "TRAINING", 1.0, slot="mid"),  # undecided: skipped
    ]
    ucb = UCBSelector(priors)
    assert ucb.stats("early", "a1") == pytest.approx((1 + OTHER_SLOT_WEIGHT, 2.0))
    assert ucb.stats("mid", "a1") == pytest.approx((1 + OTHER_SLOT_WEIGHT, OTHER_SLOT_WEIGHT * 2))
    assert ucb.stats("late", "a1") == pytest.approx((2 * OTHER_SLOT_WEIGHT, 1.0))
    assert ucb.stats("late", "a0") == (0.0, 0.0)
    # Known from other slots only, a1 is not untried in "late": the untried a0 goes first.
    assert ucb.choose("late", ["a1", "a0"], 0) == "a0"
    # The run's own outcomes pool the same way.
    ucb.update("late", "a0", 1.0, 0)
    assert ucb.stats("mid", "a0") == pytest.approx((OTHER_SLOT_WEIGHT, OTHER_SLOT_WEIGHT))


def _prior_table(best: str) -> list[SeedOutcome]:
    """Five earlier outcomes per arm: the ``best`` arm fossilized with score 2, the others
    pruned (score 0)."""
    return [
        _outcome(arm, "FOSSILIZED", 2.0) if arm == best else _outcome(arm, "PRUNED", None)
        for arm in ARMS
        for _ in range(5)
    ]


@pytest.mark.parametrize("name", ["ucb", "thompson", "epsilon"])
def test_priors_shift_the_first_choices_to_the_prior_best_arm(name: str) -> None:
    priors = _prior_table("a3")

    def first_choices(with_priors: bool) -> Counter[str]:
        return Counter(
            make_selector(name, s, priors if with_priors else ()).choose("mid", ARMS, 0)
            for s in range(100)
        )

    informed, naive = first_choices(True), first_choices(False)
    # ucb: a3 has the best mean and all arms the same count: 100. thompson: a3's posterior
    # N(11/6, 0.41^2) against N(1/6, 0.41^2), about 99. epsilon: greedy 90 + exploring 2.
    assert informed["a3"] >= 80, informed
    # Without priors ucb and epsilon start with the first untried arm, thompson uniformly.
    assert naive["a3"] <= 40, naive


@pytest.mark.parametrize("name", ["ucb", "thompson", "epsilon"])
def test_priors_of_blueprints_not_offered_change_nothing(name: str) -> None:
    priors = [_outcome("zz", "FOSSILIZED", 9.0, slot=slot) for slot in ("early", "mid")]
    informed, naive = make_selector(name, 4, priors), make_selector(name, 4)
    assert _continue(informed, range(50)) == _continue(naive, range(50))


def test_ucb_with_priors_exploits_them_first() -> None:
    ucb = make_selector("ucb", 0, _prior_table("a2"))
    assert ucb.choose("mid", ARMS, 0) == "a2"


def test_rotation_skips_recently_pruned_blueprints() -> None:
    rotation = make_selector("rotation", 0)
    assert rotation.choose("mid", ARMS, 0) == "a0"
    rotation.update("mid", "a1", 0.0, now=1)  # pruned at step 1
    rotation.update("mid", "a2", 3.0, now=1)  # fossilized: no penalty
    assert rotation.choose("late", ARMS, 5) == "a2"
    assert rotation.choose("late", ("a1", "a2"), 10) == "a2"  # 10 - 1 < 10: a1 skipped
    assert rotation.choose("late", ("a1", "a2"), 11) == "a1"  # 11 - 1 >= 10
    state: dict[str, Any] = rotation.state_dict()
    assert state == {"selector": "rotation", "last_blueprint": "a1", "prune_epochs": {"a1": 1}}
