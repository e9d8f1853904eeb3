"""Blueprint selectors: which blueprint the heuristic grows next (DESIGN §11).

Choosing a blueprint is a multi-armed bandit. An *arm* is a ``(slot, blueprint)`` pair: the
same blueprint may help early in the network and not late. Pulling an arm is growing a seed;
its reward arrives when the seed's life ends, as ``esper.leyline.knowledge.outcome_score``: a
fossilized seed's counterfactual contribution per thousand of its parameters, 0 for a pruned
seed (``seed_reward`` computes it from a seed's last report).

Selectors (``SELECTORS``; ``make_selector`` builds one by name):

- ``rotation``: no learning. The offered blueprints in turn, skipping one that was pruned
  recently (the heuristic's original rule, unchanged).
- ``ucb``: UCB1 (Auer, Cesa-Bianchi & Fischer 2002, "Finite-time analysis of the multiarmed
  bandit problem"): untried arms first in the offered order, then the arm maximizing
  ``mean + c * sqrt(2 ln N / n)``.
- ``thompson``: Gaussian Thompson sampling (Agrawal & Goyal 2013, "Further optimal regret
  bounds for Thompson sampling"): a Normal prior on each arm's mean reward, updated with
  Normal rewards of known noise (Normal-Normal conjugacy); each choice samples every arm's
  posterior and takes the largest sample.
- ``epsilon``: epsilon-greedy (Sutton & Barto 2018, §2.2): with probability ``epsilon`` a
  uniformly random offered blueprint, otherwise untried arms first, then the best mean.

**Pooling across slots.** An outcome counts fully for its own arm and with weight
``OTHER_SLOT_WEIGHT`` for the same blueprint in every other slot: whether a blueprint helps
depends on the slot (its width, the features it sees) but mostly on the blueprint and the
host, and a run grows only a handful of seeds, so an arm learning from its own slot alone
would rarely be tried more than once. Counts are therefore weighted counts (``n`` and ``N``
above may be fractional), and an arm with outcomes only in other slots is not untried.

**Priors** are ``SeedOutcome``s of earlier runs on the same host (the knowledge store chooses
them): each one whose ``outcome_score`` is known is added to its arm exactly like an outcome of
this run (an undecided one, None, is skipped). Blueprints a run does not offer are never chosen,
so their priors do nothing. ``rotation`` does not learn and refuses priors.

Every selector with randomness owns a seeded ``random.Random`` (never the global state) whose
state is part of ``state_dict``, so a resumed run continues the identical sequence, and the
statistics carry over to another process as JSON.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from esper.leyline import SeedStage
from esper.leyline.config import MAX_INT64, check_finite, check_float, check_int, is_number, require
from esper.leyline.knowledge import SeedOutcome, outcome_score, stage_score

OTHER_SLOT_WEIGHT = 0.5
"""An outcome's weight in the same blueprint's arms of other slots: half an observation, a
judgement between "slots are independent" (0) and "slots are the same" (1)."""

PRUNE_PENALTY_EPOCHS = 10
"""``rotation``: steps a pruned blueprint is skipped; about one seed lifetime, so a failed design
is not regrown at once."""

UCB_C = 1.0
"""``ucb``: exploration weight; 1 is UCB1 for rewards of unit scale, which ``outcome_score``'s
per-thousand-parameters scale is designed to give."""

PRIOR_MEAN = 1.0
"""``thompson``: an untried arm's believed mean reward; a typical fossilized seed's score on
``outcome_score``'s scale (a pruned seed scores 0)."""

PRIOR_SD = 1.0
"""``thompson``: how unsure that belief is: as unsure as one outcome (``NOISE_SD``)."""

NOISE_SD = 1.0
"""``thompson``: assumed standard deviation of one outcome around its arm's mean; scores are of
unit scale and a pruned seed's 0 sits about one unit below a fossilized one's."""

EPSILON = 0.1
"""``epsilon``: exploration probability; the textbook value (Sutton & Barto 2018, §2.3)."""


def seed_reward(stage: SeedStage, contribution: float | None, seed_params: int) -> float | None:
    """``outcome_score`` of a seed of the running episode, from its last report.

    Args:
        stage: ``FOSSILIZED`` or ``PRUNED`` (any other stage is undecided: None).
        contribution: its last measured counterfactual contribution (accuracy points).
        seed_params: its parameters.
    """
    return stage_score(stage.value, contribution, seed_params)


@runtime_checkable
class BlueprintSelector(Protocol):
    """Chooses blueprints and learns from the seeds' outcomes."""

    name: str

    def choose(self, slot: str, offered: Sequence[str], now: int) -> str:
        """The blueprint to grow in ``slot`` at step ``now``, one of ``offered`` (whose order
        is the deterministic order: rotation order, untried order, ties)."""
        ...

    def update(self, slot: str, blueprint: str, reward: float, now: int) -> None:
        """Learn that the seed of ``blueprint`` in ``slot`` ended at step ``now`` with
        ``reward`` (``seed_reward``)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything learned, and the random state, as JSON data."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output."""
        ...


def _check_offered(offered: Sequence[str]) -> None:
    require(
        not isinstance(offered, str),  # its letters were offered: "conv_light" chose "c"
        f"offered blueprints must be a list of names, got the string {offered!r}",
    )
    require(
        len(offered) > 0 and len(set(offered)) == len(offered),
        f"offered blueprints must be a non-empty list without repeats, got {list(offered)}",
    )


def _check_keys(selector: str, state: dict[str, Any], expected: dict[str, Any]) -> None:
    require(
        sorted(state) == sorted(expected),
        f"{selector} selector state keys {sorted(state)} do not match {sorted(expected)}",
    )
    require(
        state["selector"] == selector,
        f"a {state['selector']!r} selector state cannot be loaded into a {selector!r} selector",
    )


class RotationSelector:
    """The offered blueprints in turn, skipping recently pruned ones; learns nothing else.

    The rotation runs through ``offered`` in the given order and starts after the last
    blueprint it chose (at the first one when there is none, or when it is not offered; the
    slot does not matter). A blueprint whose seed ended with no reward (a prune: 0) fewer than
    ``penalty_epochs`` steps ago is skipped; if every offered blueprint is penalized, the one
    pruned longest ago is chosen (the earliest in rotation order on a tie).

    Args:
        penalty_epochs: steps a pruned blueprint is skipped.
    """

    name = "rotation"

    def __init__(self, penalty_epochs: int = PRUNE_PENALTY_EPOCHS) -> None:
        check_int("penalty_epochs", penalty_epochs, 0)
        self.penalty_epochs = penalty_epochs
        self._last: str | None = None
        self._prune_epochs: dict[str, int] = {}  # blueprint -> step of its latest prune

    def choose(self, slot: str, offered: Sequence[str], now: int) -> str:
        """The next offered blueprint in rotation that is not penalized."""
        _check_offered(offered)
        start = offered.index(self._last) + 1 if self._last in offered else 0
        rotation = [*offered[start:], *offered[:start]]
        fresh = [
            b
            for b in rotation
            if b not in self._prune_epochs or now - self._prune_epochs[b] >= self.penalty_epochs
        ]
        self._last = fresh[0] if fresh else min(rotation, key=lambda b: self._prune_epochs[b])
        return self._last

    def update(self, slot: str, blueprint: str, reward: float, now: int) -> None:
        """A seed that ended without reward (a prune) starts its blueprint's penalty."""
        check_finite("a reward", reward)
        if reward <= 0.0:
            self._prune_epochs[blueprint] = now

    def state_dict(self) -> dict[str, Any]:
        """The last blueprint chosen and the steps of the latest prunes."""
        return {
            "selector": self.name,
            "last_blueprint": self._last,
            "prune_epochs": dict(sorted(self._prune_epochs.items())),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output.

        Raises:
            ValueError: for keys or a selector name that do not match, or a prune's epoch that
                is not an integer >= 0.
        """
        _check_keys(self.name, state, self.state_dict())
        for epoch in state["prune_epochs"].values():
            check_int("a prune's epoch", epoch, 0, MAX_INT64)
        last = state["last_blueprint"]
        self._last = None if last is None else str(last)
        self._prune_epochs = dict(state["prune_epochs"])


class _Bandit:
    """Outcome statistics per arm, pooled across slots (see the module docstring)."""

    name = ""

    def __init__(self, priors: Sequence[SeedOutcome]) -> None:
        # slot -> blueprint -> [count, total reward]; priors and this run's outcomes alike.
        self._outcomes: dict[str, dict[str, list[float]]] = {}
        for prior in priors:
            require(isinstance(prior, SeedOutcome), f"priors must be SeedOutcomes, got {prior!r}")
            score = outcome_score(prior)
            if score is not None:
                self._add(prior.slot, prior.blueprint, score)

    def _add(self, slot: str, blueprint: str, reward: float) -> None:
        count_total = self._outcomes.setdefault(slot, {}).setdefault(blueprint, [0.0, 0.0])
        count_total[0] += 1.0
        count_total[1] += reward

    def update(self, slot: str, blueprint: str, reward: float, now: int) -> None:
        """Add ``reward`` to the arm's statistics."""
        check_finite("a reward", reward)
        self._add(slot, blueprint, float(reward))

    def stats(self, slot: str, blueprint: str) -> tuple[float, float]:
        """The arm's weighted outcome count and weighted reward total."""
        n = total = 0.0
        for other in sorted(self._outcomes):  # a fixed summation order, whatever was seen first
            if blueprint in self._outcomes[other]:
                weight = 1.0 if other == slot else OTHER_SLOT_WEIGHT
                count, reward = self._outcomes[other][blueprint]
                n, total = n + weight * count, total + weight * reward
        return n, total

    def _state(self) -> dict[str, Any]:
        outcomes = {
            slot: {b: list(ct) for b, ct in sorted(table.items())}
            for slot, table in sorted(self._outcomes.items())
        }
        return {"selector": self.name, "outcomes": outcomes}

    def _load(self, state: dict[str, Any]) -> None:
        outcomes: dict[str, dict[str, list[float]]] = {}
        for slot, table in state["outcomes"].items():
            for blueprint, pair in table.items():
                ok = isinstance(pair, list) and len(pair) == 2
                ok = ok and all(is_number(v) and math.isfinite(v) for v in pair)
                ok = ok and pair[0] >= 0  # a negative count made Thompson's precision < 0
                require(
                    ok,
                    "outcome statistics must be [count, total], finite numbers with count >= 0, "
                    f"got {pair!r:.60}",
                )
                outcomes.setdefault(str(slot), {})[str(blueprint)] = [float(v) for v in pair]
        self._outcomes = outcomes


class _RandomBandit(_Bandit):
    """A bandit with its own seeded random state."""

    def __init__(self, seed: int, priors: Sequence[SeedOutcome]) -> None:
        super().__init__(priors)
        check_int("seed", seed, 0, MAX_INT64)
        self._rng = random.Random(seed)

    def state_dict(self) -> dict[str, Any]:
        """Outcome statistics and the random state."""
        version, internal, gauss_next = self._rng.getstate()
        return {**self._state(), "rng": [version, list(internal), gauss_next]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output.

        Raises:
            ValueError: for keys, a selector name or a random state that do not match.
        """
        _check_keys(self.name, state, self.state_dict())
        rng = state["rng"]
        require(isinstance(rng, list) and len(rng) == 3, f"bad random state {rng!r:.40}")
        self._load(state)
        self._rng.setstate((int(rng[0]), tuple(int(v) for v in rng[1]), rng[2]))


class UCBSelector(_Bandit):
    """UCB1: untried arms first (in the offered order), then the largest upper confidence bound
    ``mean + c * sqrt(2 ln N / n)``, where ``n`` is the arm's (weighted) outcome count and
    ``N`` the sum of the offered arms' counts; ties go to the earlier offered blueprint.

    Args:
        priors: outcomes of earlier runs.
        c: exploration weight.
    """

    name = "ucb"

    def __init__(self, priors: Sequence[SeedOutcome] = (), c: float = UCB_C) -> None:
        super().__init__(priors)
        check_float("c", c, 0.0, 1e6)
        self.c = c

    def choose(self, slot: str, offered: Sequence[str], now: int) -> str:
        """The first untried arm, else the largest upper confidence bound."""
        _check_offered(offered)
        stats = [self.stats(slot, b) for b in offered]
        for blueprint, (n, _) in zip(offered, stats, strict=True):
            if n == 0.0:
                return blueprint
        # Pooled weights can make N < 1 (one offered arm known from other slots only).
        log_n = math.log(max(sum(n for n, _ in stats), 1.0))
        bounds = [total / n + self.c * math.sqrt(2.0 * log_n / n) for n, total in stats]
        return offered[bounds.index(max(bounds))]

    def state_dict(self) -> dict[str, Any]:
        """Outcome statistics (UCB1 draws no random numbers)."""
        return self._state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output.

        Raises:
            ValueError: for keys or a selector name that do not match.
        """
        _check_keys(self.name, state, self.state_dict())
        self._load(state)


class ThompsonSelector(_RandomBandit):
    """Gaussian Thompson sampling with a Normal prior and Normal rewards of known noise.

    An arm with weighted outcome count ``n`` and reward total ``S`` has the posterior
    ``N(m, 1/p)`` with precision ``p = 1/prior_sd**2 + n/noise_sd**2`` and mean
    ``m = (prior_mean/prior_sd**2 + S/noise_sd**2) / p``. Each choice draws one sample per
    offered arm, in the offered order, and takes the largest.

    Args:
        seed: seeds the selector's own random state.
        priors: outcomes of earlier runs.
        prior_mean: an untried arm's believed mean reward.
        prior_sd: the belief's standard deviation.
        noise_sd: an outcome's standard deviation around its arm's mean.
    """

    name = "thompson"

    def __init__(
        self,
        seed: int,
        priors: Sequence[SeedOutcome] = (),
        prior_mean: float = PRIOR_MEAN,
        prior_sd: float = PRIOR_SD,
        noise_sd: float = NOISE_SD,
    ) -> None:
        super().__init__(seed, priors)
        check_float("prior_mean", prior_mean, -1e6, 1e6)
        check_float("prior_sd", prior_sd, 0.0, 1e6, strict_low=True)
        check_float("noise_sd", noise_sd, 0.0, 1e6, strict_low=True)
        self.prior_mean, self.prior_sd, self.noise_sd = prior_mean, prior_sd, noise_sd

    def posterior(self, slot: str, blueprint: str) -> tuple[float, float]:
        """The arm's posterior mean and standard deviation."""
        n, total = self.stats(slot, blueprint)
        prior_precision, noise_precision = self.prior_sd**-2, self.noise_sd**-2
        precision = prior_precision + n * noise_precision
        mean = (self.prior_mean * prior_precision + total * noise_precision) / precision
        return mean, precision**-0.5

    def choose(self, slot: str, offered: Sequence[str], now: int) -> str:
        """The arm with the largest posterior sample."""
        _check_offered(offered)
        samples = [self._rng.gauss(*self.posterior(slot, b)) for b in offered]
        return offered[samples.index(max(samples))]


class EpsilonGreedySelector(_RandomBandit):
    """Epsilon-greedy: with probability ``epsilon`` a uniformly random offered blueprint;
    otherwise the first untried arm (in the offered order), else the best mean reward (ties to
    the earlier offered blueprint).

    Args:
        seed: seeds the selector's own random state.
        priors: outcomes of earlier runs.
        epsilon: exploration probability.
    """

    name = "epsilon"

    def __init__(
        self, seed: int, priors: Sequence[SeedOutcome] = (), epsilon: float = EPSILON
    ) -> None:
        super().__init__(seed, priors)
        check_float("epsilon", epsilon, 0.0, 1.0)
        self.epsilon = epsilon

    def choose(self, slot: str, offered: Sequence[str], now: int) -> str:
        """Explore with probability ``epsilon``, else exploit."""
        _check_offered(offered)
        if self._rng.random() < self.epsilon:
            return offered[self._rng.randrange(len(offered))]
        stats = [self.stats(slot, b) for b in offered]
        for blueprint, (n, _) in zip(offered, stats, strict=True):
            if n == 0.0:
                return blueprint
        means = [total / n for n, total in stats]
        return offered[means.index(max(means))]


_CLASSES: dict[str, type[BlueprintSelector]] = {
    "rotation": RotationSelector,
    "ucb": UCBSelector,
    "thompson": ThompsonSelector,
    "epsilon": EpsilonGreedySelector,
}
SELECTORS = tuple(_CLASSES)


def _settings(selector: type[BlueprintSelector]) -> tuple[str, ...]:
    """A selector's constants: its constructor's parameters but ``seed`` and ``priors``."""
    return tuple(p for p in inspect.signature(selector).parameters if p not in ("seed", "priors"))


def make_selector(
    name: str, seed: int, priors: Sequence[SeedOutcome] = (), **settings: Any
) -> BlueprintSelector:
    """The selector called ``name``.

    Args:
        name: one of ``SELECTORS``.
        seed: seeds its random state (``thompson``, ``epsilon``; the others draw none).
        priors: outcomes of earlier runs on this host (not for ``rotation``).
        **settings: the selector's constants: ``penalty_epochs`` (rotation), ``c`` (ucb),
            ``prior_mean``, ``prior_sd``, ``noise_sd`` (thompson), ``epsilon`` (epsilon).

    Raises:
        ValueError: for an unknown name or setting, priors for ``rotation``, or bad values.
    """
    require(name in SELECTORS, f"unknown selector {name!r}; accepted: {', '.join(SELECTORS)}")
    check_int("seed", seed, 0, MAX_INT64)
    selector = _CLASSES[name]
    unknown = sorted(set(settings) - set(_settings(selector)))
    accepted = ", ".join(_settings(selector))
    require(not unknown, f"unknown {name} selector setting(s) {unknown}; accepted: {accepted}")
    takes = inspect.signature(selector).parameters
    learners = [n for n, c in _CLASSES.items() if "priors" in inspect.signature(c).parameters]
    require(
        "priors" in takes or not priors,
        f"the {name} selector does not learn; priors need one of {', '.join(learners)}",
    )
    given = {"seed": seed, "priors": priors}
    return selector(**{k: v for k, v in given.items() if k in takes}, **settings)
