"""``HeuristicTamiyo``: the hand-written controller (DESIGN §4).

One action per decision, by the first rule that fires, in this priority order:

1. **PRUNE** a seed that hurts (see ``_prune_reason``; the ``ensemble`` strategy also prunes
   over its budget).
2. **FOSSILIZE** a HOLDING seed that clears gate G5 (see ``fossilize_reason``).
3. **ADVANCE** a seed whose next gate (G1, G2, G3) would pass (see ``advance_reason``).
4. **GERMINATE** once the host has stabilized or plateaued, within cooldown, live-seed and
   horizon limits (the ``replace`` strategy regrows a slot it pruned without waiting).
5. Otherwise **WAIT**.

Within a rule, slots are tried in ``ordered_slots`` order (early before mid before late) and the
first match wins, so a decision never depends on the order of the reports mapping. GERMINATE
picks, among DORMANT slots, one that has never held a seed before one that has, then the first in
``ordered_slots`` order, so a run uses every enabled slot over time. The blueprint comes from
the config's *selector* (``esper.tamiyo.selectors``; by default a rotation with a penalty for
recently pruned ones), offered the blueprints in ``blueprint_preference`` order, narrowed by the
*strategy* (``esper.tamiyo.strategies``; by default, ``spread``, not at all). Every
proposed transition satisfies the *strict* gate thresholds of ``esper.leyline.thresholds`` as far
as the reports show them, so the engine's gates do not refuse it (parameter finiteness, which
G1/G2/G5 also check, is not in the reports; a seed with non-finite weights is the governor's).

The selector learns when a seed ends: at the heuristic's FOSSILIZE or PRUNE decision, and when a
seed is pruned without one (a governor rollback), with the seed's ``outcome_score`` from its
last report (``selectors.seed_reward``: a pruned seed scores 0).

The heuristic remembers, across decisions: which slots have ever held a seed (so germination
spreads over every enabled slot), when it last germinated, the last report stage of each slot,
the selector's state, and what its strategy needs (``replace``: the slots awaiting a different
blueprint; ``specialize``: the last fossilized seed). The last report stages detect prunes it did
not order itself (a governor rollback): a seed that turns PRUNED/EMBARGOED/RESETTING, or
vanishes, without a PRUNE from this controller counts as a prune of its blueprint at the current
step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from esper.kasmina import blueprint_registry
from esper.leyline import (
    ALIVE_STAGES,
    BLENDED_STAGES,
    MIN_LIFECYCLE_EPOCHS,
    RETIRED_STAGES,
    Action,
    Observation,
    Op,
    SeedStage,
    SeedStateReport,
    ordered_slots,
)
from esper.leyline import thresholds as T
from esper.leyline.config import check_int, is_finite_number, quoted, require
from esper.leyline.knowledge import SeedOutcome
from esper.tamiyo import strategies
from esper.tamiyo.selectors import (
    PRUNE_PENALTY_EPOCHS,
    SELECTORS,
    BlueprintSelector,
    make_selector,
    seed_reward,
)
from esper.tamiyo.strategies import STRATEGIES
from esper.tamiyo.tracker import TrackerConfig


@dataclass(frozen=True)
class HeuristicConfig:
    """Rules of the heuristic controller. Defaults suit 15–30 epoch runs with a tiny host.

    Attributes:
        plateau_patience: germinate once validation accuracy has not improved for this many
            steps (when the host has not already stabilized); 3 reacts quickly in short runs.
        germinate_cooldown: steps between two germinations; 3 staggers seeds so each one's probe
            is measured on a host that has absorbed the previous one.
        max_live_seeds: at most this many seeds in GERMINATED/TRAINING/BLENDING/HOLDING at once;
            2 lets several slots be used within a short run without stacking every slot at once.
            With the ``ensemble`` strategy: the budget of settled blended seeds instead.
        prune_contribution: prune a BLENDING/HOLDING seed whose measured contribution (with the
            ``ensemble`` strategy: Shapley value) is below this (accuracy points); -1.0
            tolerates measurement noise but not a real loss.
        max_training_epochs: prune a TRAINING seed whose probe still does not beat
            G2_MIN_PROBE_IMPROVEMENT after this many epochs; twice the G2 minimum.
        max_holding_epochs: prune a HOLDING seed held this long without clearing
            G5_MIN_CONTRIBUTION; 3 gives the held contribution a few measurements to settle.
        prune_penalty_epochs: a blueprint pruned fewer than this many steps ago is skipped by the
            rotation; 10 is about one seed lifetime, so a failed design is not regrown at once.
            The rotation selector's only (a bandit learns a pruned seed's reward 0 instead).
        no_germinate_last_epochs: no germination when fewer steps than this remain in the
            episode; the default is ``MIN_LIFECYCLE_EPOCHS``, below which a seed cannot finish.
        blueprint_preference: the order the selector is offered the blueprints in (the
            rotation's order; a bandit's order for untried arms and ties); offered blueprints
            not named here follow in registry order. It must name at least one blueprint of
            the task's host (``esper heuristic`` refuses a list that orders nothing). Capacity
            first: convolutions and MLPs add new features, while attention (channel gating) and
            norm only rescale the host's own.
        selector: how the blueprint is chosen (``esper.tamiyo.selectors.SELECTORS``):
            ``rotation``, the heuristic's original rule, or a bandit learning from the seeds'
            outcomes (``ucb``, ``thompson``, ``epsilon``).
        strategy: where and what to grow (``esper.tamiyo.strategies.STRATEGIES``): ``spread``,
            the heuristic's original behaviour, or ``replace``, ``diversify``, ``specialize``,
            ``ensemble``.
    """

    plateau_patience: int = 3
    germinate_cooldown: int = 3
    max_live_seeds: int = 2
    prune_contribution: float = -1.0
    max_training_epochs: int = 2 * T.G2_MIN_TRAINING_EPOCHS
    max_holding_epochs: int = 3
    prune_penalty_epochs: int = PRUNE_PENALTY_EPOCHS
    no_germinate_last_epochs: int = MIN_LIFECYCLE_EPOCHS
    blueprint_preference: tuple[str, ...] = (
        "conv_light",
        "depthwise",
        "conv_heavy",
        "bottleneck",
        "mlp",
        "lora",
        "attention",
        "norm",
    )
    selector: str = "rotation"
    strategy: str = "spread"

    def __post_init__(self) -> None:
        at_least = {
            "plateau_patience": 1,
            "germinate_cooldown": 0,
            "max_live_seeds": 1,
            "max_training_epochs": 1,
            "max_holding_epochs": T.G5_MIN_HOLDING_EPOCHS,
            "prune_penalty_epochs": 0,
            "no_germinate_last_epochs": 0,
        }
        for name, low in at_least.items():
            check_int(name, getattr(self, name), low)
        # finite: -inf passed, and config.json (strict JSON) recorded it as null, which no
        # resume or --config could read back
        require(
            is_finite_number(self.prune_contribution)
            and self.prune_contribution < T.G5_MIN_CONTRIBUTION,
            f"prune_contribution must be a finite number below G5_MIN_CONTRIBUTION="
            f"{T.G5_MIN_CONTRIBUTION} (a seed cannot both hurt and earn fossilization), got "
            f"{quoted(self.prune_contribution)}",
        )
        known = blueprint_registry.all_names()
        for name in self.blueprint_preference:
            require(
                name in known,
                f"blueprint_preference: unknown blueprint {name!r}; accepted: {', '.join(known)}",
            )
        preference = self.blueprint_preference
        require(
            len(set(preference)) == len(preference),
            f"blueprint_preference names a blueprint twice: {list(preference)}",
        )
        require(
            self.selector in SELECTORS,
            f"unknown selector {self.selector!r}; accepted: {', '.join(SELECTORS)}",
        )
        require(
            self.strategy in STRATEGIES,
            f"unknown strategy {self.strategy!r}; accepted: {', '.join(STRATEGIES)}",
        )
        require(
            self.selector == "rotation" or self.prune_penalty_epochs == PRUNE_PENALTY_EPOCHS,
            f"prune_penalty_epochs is the rotation selector's; the {self.selector} selector "
            "learns a pruned seed's reward 0 instead",
        )

    @property
    def needs_shapley(self) -> bool:
        """Whether the seed reports must carry Shapley values (``HostTraining.shapley``)."""
        return self.strategy == "ensemble"

    def never_grows(self, epochs: int, settable: bool = True) -> str | None:
        """Why a run of ``epochs`` epochs under these rules can never germinate a seed, or None
        when it can (``settable``: whether its reader can change ``no_germinate_last_epochs``;
        a study's arms cannot, so it is not suggested to them). The first germination waits
        for a plateau of ``plateau_patience`` steps after the first or for a stabilized host (a
        loss window of the tracker's ``stabilization_window`` steps after the first; runs use
        ``TrackerConfig()``), none comes in the last ``no_germinate_last_epochs``, and a run
        decides nothing after its last epoch: a shorter run is a static one."""
        window = TrackerConfig().stabilization_window
        earliest = 1 + min(self.plateau_patience, window)
        closed = max(self.no_germinate_last_epochs, 1)  # no decision after the last epoch
        if epochs - earliest >= closed:
            return None
        return (
            f"a run of {epochs} epoch{'s' * (epochs != 1)} never germinates a seed: the "
            f"heuristic waits {earliest} "
            f"epochs for a plateau or a stabilized host and germinates none in the last "
            f"no_germinate_last_epochs = {self.no_germinate_last_epochs}; give it at least "
            f"{earliest + closed} epochs" + " (or lower no_germinate_last_epochs)" * settable
        )


def _prune_reason(report: SeedStateReport, config: HeuristicConfig) -> str | None:
    """Why this seed should be pruned, or ``None``.

    Unmeasured values never trigger a prune, except for a HOLDING seed that ran out of time
    without a contribution clearing G5 (it could never be fossilized).
    """
    stage, c, epochs = report.stage, report.counterfactual_contribution, report.epochs_in_stage
    blended = stage in BLENDED_STAGES & ALIVE_STAGES  # BLENDING, HOLDING
    ensemble = config.strategy == "ensemble"
    judged, what = (report.shapley_value, "Shapley value") if ensemble else (c, "contribution")
    if blended and judged is not None and judged < config.prune_contribution:
        return f"{what} {judged:.3g} < {config.prune_contribution}"
    training = stage is SeedStage.TRAINING
    if training and report.gradient_healthy is False and epochs >= T.G2_MIN_TRAINING_EPOCHS:
        return f"unhealthy seed gradients after {epochs} training epochs"
    stale = epochs >= config.max_training_epochs
    if training and stale and c is not None and c <= T.G2_MIN_PROBE_IMPROVEMENT:
        return f"probe {c:.3g} not improving after {epochs} training epochs"
    clears_g5 = c is not None and c >= T.G5_MIN_CONTRIBUTION
    if stage is SeedStage.HOLDING and epochs >= config.max_holding_epochs and not clears_g5:
        return f"held {epochs} epochs without clearing G5 (contribution {c})"
    return None


def fossilize_reason(report: SeedStateReport) -> str | None:
    """Why this seed passes G5 now, or ``None``.

    The strict G5 thresholds as far as the report shows them; shared with the baseline
    controllers (``esper.tamiyo.baselines``) so every controller reads the gates one way.
    """
    c = report.counterfactual_contribution
    if (
        report.stage is SeedStage.HOLDING
        and c is not None
        and c >= T.G5_MIN_CONTRIBUTION
        and report.epochs_in_stage >= T.G5_MIN_HOLDING_EPOCHS
        and report.alpha > 0.0
    ):
        return f"contribution {c:.3g} >= {T.G5_MIN_CONTRIBUTION} after holding (G5)"
    return None


def advance_reason(report: SeedStateReport) -> str | None:
    """Why this seed passes its next gate (G1, G2 or G3) now, or ``None``.

    The strict thresholds as far as the report shows them; shared with the baseline
    controllers (``esper.tamiyo.baselines``).
    """
    stage, c, epochs = report.stage, report.counterfactual_contribution, report.epochs_in_stage
    if stage is SeedStage.GERMINATED:
        return "germinated: start training (G1)"
    if (
        stage is SeedStage.TRAINING
        and epochs >= T.G2_MIN_TRAINING_EPOCHS
        and report.gradient_healthy is True
        and c is not None
        and c > T.G2_MIN_PROBE_IMPROVEMENT
    ):
        return f"probe {c:.3g} after {epochs} training epochs: start blending (G2)"
    if (
        stage is SeedStage.BLENDING
        and report.alpha > 0.0
        and abs(report.alpha - report.alpha_target) <= T.ALPHA_EPSILON
        and epochs >= T.G3_MIN_BLENDING_EPOCHS
    ):
        return f"alpha {report.alpha:.3g} at target after {epochs} epochs: hold (G3)"
    return None


class HeuristicTamiyo:
    """The rule-based controller; implements ``Controller``. One instance drives one episode:
    its memory (cooldown, the stages it saw) is of that episode's epochs, so a new episode
    needs a new instance (``priors`` carry what a learning selector learned).

    Args:
        config: the rules' thresholds, selector and strategy.
        seed: seeds the selector's random state (``thompson``, ``epsilon``).
        priors: outcomes of earlier runs on this host for a learning selector (none for
            ``rotation``, which does not learn).
        sizes: each blueprint's parameter count at each slot of this host
            (``strategies.blueprint_sizes``); the ``specialize`` strategy's, and only its.

    Attributes:
        selector: the blueprint selector the config names (``esper.tamiyo.selectors``).

    Raises:
        ValueError: for a bad seed, priors for ``rotation``, or ``sizes`` missing for
            ``specialize`` or given to another strategy.
    """

    def __init__(
        self,
        config: HeuristicConfig = HeuristicConfig(),
        seed: int = 0,
        priors: Sequence[SeedOutcome] = (),
        sizes: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self.config = config
        rotation = {"penalty_epochs": config.prune_penalty_epochs}
        settings = rotation if config.selector == "rotation" else {}
        self.selector: BlueprintSelector = make_selector(config.selector, seed, priors, **settings)
        given = "given" if sizes is not None else "not given"
        require(
            (sizes is not None) == (config.strategy == "specialize"),
            "sizes (strategies.blueprint_sizes) are read by the specialize strategy, which needs "
            f"them; got strategy {config.strategy!r} with sizes {given}",
        )
        self._sizes = {slot: dict(table) for slot, table in (sizes or {}).items()}
        self._used_slots: set[str] = set()
        self._last_germination: int | None = None
        self._seen: dict[str, tuple[SeedStage, str | None]] = {}  # slot -> last (stage, bp)
        self._own_prunes: dict[str, str] = {}  # slot -> blueprint pruned by the last decision
        self._replacements: dict[str, str] = {}  # replace: slot -> blueprint pruned there
        self._fossilized: str | None = None  # specialize: the blueprint fossilized last
        self._last_epoch = -1  # the last decision's epoch (not state: a guard, see decide)
        keys = set(self._own_state()) & set(self.selector.state_dict())
        assert not keys, f"selector state keys {keys} clash with the heuristic's"

    def decide(self, observation: Observation) -> Action:
        """Propose one action (see the module docstring for the rules and their order).

        Raises:
            ValueError: the epoch went back: a second episode given to this instance (it
                read the last episode's germination as a cooldown, and a seed alive at its
                end as pruned).
        """
        now = observation.signals.epoch
        require(
            now >= self._last_epoch,
            f"epoch {now} comes after epoch {self._last_epoch}: a HeuristicTamiyo drives one "
            "episode; build a new one for the next",
        )
        self._last_epoch = now
        reports = [observation.reports[s] for s in ordered_slots(observation.reports)]
        self._observe(reports, now)
        action = self._first_lifecycle_action(reports)
        if action is None:
            action = self._germinate(observation, reports, now)
        self._remember(action, observation, now)
        return action

    def _remember(self, action: Action, observation: Observation, now: int) -> None:
        """Record a germination; teach the selector the outcome of a seed this action ends."""
        if action.op is Op.GERMINATE:
            assert action.slot is not None
            self._used_slots.add(action.slot)
            self._last_germination = now
            self._replacements.pop(action.slot, None)
            self._fossilized = None  # the specialization, if any, is grown
            return
        if action.op not in (Op.PRUNE, Op.FOSSILIZE):
            return
        assert action.slot is not None
        report = observation.reports[action.slot]
        blueprint = report.blueprint
        assert blueprint is not None  # an alive seed always names its blueprint
        stage = SeedStage.PRUNED if action.op is Op.PRUNE else SeedStage.FOSSILIZED
        reward = seed_reward(stage, report.counterfactual_contribution, report.seed_param_count)
        assert reward is not None  # fossilize_reason requires a measured contribution
        self.selector.update(action.slot, blueprint, reward, now)
        if action.op is Op.PRUNE:
            self._own_prunes[action.slot] = blueprint
            if self.config.strategy == "replace":
                self._replacements[action.slot] = blueprint
        elif self.config.strategy == "specialize":
            self._fossilized = blueprint

    def _first_lifecycle_action(self, reports: Sequence[SeedStateReport]) -> Action | None:
        """The highest-priority PRUNE, FOSSILIZE or ADVANCE, first slot first; else ``None``."""
        ensemble = self.config.strategy == "ensemble"
        if ensemble:
            strategies.check_shapley(reports)
        for op, rule in (
            (Op.PRUNE, lambda r: _prune_reason(r, self.config)),
            (Op.FOSSILIZE, fossilize_reason),
            (Op.ADVANCE, advance_reason),
        ):
            for report in reports:
                reason = rule(report)
                if reason is not None:
                    return Action(op, slot=report.slot, reason=reason)
            if op is Op.PRUNE and ensemble:
                over = strategies.over_budget(reports, self.config.max_live_seeds)
                if over is not None:
                    return over
        return None

    def _observe(self, reports: Sequence[SeedStateReport], now: int) -> None:
        """Update slot usage and detect prunes this controller did not order."""
        own, self._own_prunes = self._own_prunes, {}
        for report in reports:
            if report.stage is not SeedStage.DORMANT:
                self._used_slots.add(report.slot)
            ended = self._ended_blueprint(report)
            if ended is not None and own.get(report.slot) != ended:  # e.g. a governor rollback
                reward = seed_reward(SeedStage.PRUNED, None, 0)
                assert reward is not None
                self.selector.update(report.slot, ended, reward, now)
            self._seen[report.slot] = (report.stage, report.blueprint)

    def _ended_blueprint(self, report: SeedStateReport) -> str | None:
        """The blueprint of a seed that was removed since the last observation, if any."""
        previous = self._seen.get(report.slot)
        if report.stage in RETIRED_STAGES:
            if previous in {(stage, report.blueprint) for stage in RETIRED_STAGES}:
                return None  # the same prune, seen again
            return report.blueprint
        if previous is None or previous[0] not in ALIVE_STAGES:
            return None
        if report.stage is SeedStage.DORMANT or report.blueprint != previous[1]:
            return previous[1]  # vanished (e.g. a rollback to before it was grown)
        return None

    def _live_limit(self, reports: Sequence[SeedStateReport]) -> int:
        """Live seeds allowed at once: ``max_live_seeds``; every enabled slot for ``ensemble``."""
        return len(reports) if self.config.strategy == "ensemble" else self.config.max_live_seeds

    def _germinate(
        self, observation: Observation, reports: Sequence[SeedStateReport], now: int
    ) -> Action:
        """GERMINATE when every condition holds, else WAIT saying which one did not."""
        replacement = self._replacement(observation, reports, now)
        if replacement is not None:
            return replacement
        cfg, signals = self.config, observation.signals
        plateaued = signals.plateau_epochs >= cfg.plateau_patience
        if not (signals.host_stabilized or plateaued):
            return Action(Op.WAIT, reason="host still improving")
        if observation.max_epochs - now < cfg.no_germinate_last_epochs:
            return Action(Op.WAIT, reason="too late in the episode for a seed to finish")
        last = self._last_germination
        if last is not None and now - last < cfg.germinate_cooldown:
            return Action(Op.WAIT, reason=f"germination cooldown (last at step {last})")
        live, limit = sum(r.stage in ALIVE_STAGES for r in reports), self._live_limit(reports)
        if live >= limit:
            return Action(Op.WAIT, reason=f"{live} live seeds (max {limit})")
        dormant = [r.slot for r in reports if r.stage is SeedStage.DORMANT]
        if not dormant:
            return Action(Op.WAIT, reason="no dormant slot")
        if not observation.blueprints:
            return Action(Op.WAIT, reason="no blueprint fits this host")
        fresh = [s for s in dormant if s not in self._used_slots]
        slot = (fresh or dormant)[0]
        candidates = self._ordered(observation.blueprints)
        if cfg.strategy == "diversify":
            candidates = strategies.diverse(candidates, reports, slot)
        elif cfg.strategy == "specialize" and self._fossilized is not None:
            sizes = self._sizes.get(slot, {})
            candidates = strategies.specialized(candidates, self._fossilized, sizes)
        blueprint = self.selector.choose(slot, candidates, now)
        why = "host stabilized" if signals.host_stabilized else "host plateaued"
        return Action(Op.GERMINATE, slot=slot, blueprint=blueprint, reason=f"{why}: grow")

    def _replacement(
        self, observation: Observation, reports: Sequence[SeedStateReport], now: int
    ) -> Action | None:
        """``replace``: regrow the first DORMANT slot whose seed this controller pruned, with
        another blueprint, without waiting for a plateau or the cooldown; None when there is
        none, or the horizon or live-seed limit forbids a seed (the usual rules then say so)."""
        if not self._replacements:
            return None
        if observation.max_epochs - now < self.config.no_germinate_last_epochs:
            return None
        if sum(r.stage in ALIVE_STAGES for r in reports) >= self._live_limit(reports):
            return None
        for report in reports:
            pruned = self._replacements.get(report.slot)
            others = [b for b in self._ordered(observation.blueprints) if b != pruned]
            if pruned is None or report.stage is not SeedStage.DORMANT or not others:
                continue
            blueprint = self.selector.choose(report.slot, others, now)
            reason = f"replace the pruned {pruned} at once"
            return Action(Op.GERMINATE, slot=report.slot, blueprint=blueprint, reason=reason)
        return None

    def _ordered(self, blueprints: Sequence[str]) -> list[str]:
        """The offered blueprints in ``blueprint_preference`` order, then the unlisted ones in
        offered (registry) order."""
        preferred = self.config.blueprint_preference
        return sorted(
            blueprints,
            key=lambda b: (
                preferred.index(b) if b in preferred else len(preferred),
                blueprints.index(b),
            ),
        )

    def _own_state(self) -> dict[str, Any]:
        return {
            "used_slots": list(ordered_slots(self._used_slots)),
            "last_germination": self._last_germination,
            "seen": {s: [st.value, bp] for s, (st, bp) in self._seen.items()},
            "own_prunes": dict(self._own_prunes),
            "replacements": dict(sorted(self._replacements.items())),
            "fossilized": self._fossilized,
        }

    def state_dict(self) -> dict[str, Any]:
        """The heuristic's memory as JSON data (the config is not included), with the
        selector's state beside it (so the rotation's ``last_blueprint`` and ``prune_epochs``
        sit where the heuristic always kept them)."""
        return {**self._own_state(), **self.selector.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the memory saved by ``state_dict``.

        Raises:
            ValueError: if keys are missing or unknown, or a stage name is unknown.
        """
        keys = sorted(self.state_dict())
        require(
            sorted(state) == keys, f"HeuristicTamiyo state keys {sorted(state)} do not match {keys}"
        )
        own = self._own_state()
        self.selector.load_state_dict({k: v for k, v in state.items() if k not in own})
        self._used_slots = set(state["used_slots"])
        self._last_germination = state["last_germination"]
        self._seen = {s: (SeedStage(st), bp) for s, (st, bp) in state["seen"].items()}
        self._own_prunes = {str(s): str(b) for s, b in state["own_prunes"].items()}
        self._replacements = {str(s): str(b) for s, b in state["replacements"].items()}
        fossilized = state["fossilized"]
        self._fossilized = None if fossilized is None else str(fossilized)
