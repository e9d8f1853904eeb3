"""``HeuristicTamiyo``: the hand-written controller (DESIGN §4).

One action per decision, by the first rule that fires, in this priority order:

1. **PRUNE** a seed that hurts (see ``_prune_reason``).
2. **FOSSILIZE** a HOLDING seed that clears gate G5 (see ``fossilize_reason``).
3. **ADVANCE** a seed whose next gate (G1, G2, G3) would pass (see ``advance_reason``).
4. **GERMINATE** once the host has stabilized or plateaued, within cooldown, live-seed and
   horizon limits.
5. Otherwise **WAIT**.

Within a rule, slots are tried in ``ordered_slots`` order (early before mid before late) and the
first match wins, so a decision never depends on the order of the reports mapping. GERMINATE
picks, among DORMANT slots, one that has never held a seed before one that has, then the first in
``ordered_slots`` order, so a run uses every enabled slot over time; the blueprint comes from a
rotation with a penalty for recently pruned ones (``HeuristicTamiyo._choose_blueprint``). Every
proposed transition satisfies the *strict* gate thresholds of ``esper.leyline.thresholds`` as far
as the reports show them, so the engine's gates do not refuse it (parameter finiteness, which
G1/G2/G5 also check, is not in the reports; a seed with non-finite weights is the governor's).

The heuristic remembers, across decisions: which slots have ever held a seed (so germination
spreads over every enabled slot), when it last germinated, the last blueprint it grew (for the
rotation), when each blueprint was last pruned (for the penalty), and the last report stage of
each slot. That last memory detects prunes it did not order itself (a governor rollback): a seed
that turns PRUNED/EMBARGOED/RESETTING, or vanishes, without a PRUNE from this controller counts
as a prune of its blueprint at the current step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
from esper.leyline.config import check_int, require


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
        prune_contribution: prune a BLENDING/HOLDING seed whose measured contribution is below
            this (accuracy points); -1.0 tolerates measurement noise but not a real loss.
        max_training_epochs: prune a TRAINING seed whose probe still does not beat
            G2_MIN_PROBE_IMPROVEMENT after this many epochs; twice the G2 minimum.
        max_holding_epochs: prune a HOLDING seed held this long without clearing
            G5_MIN_CONTRIBUTION; 3 gives the held contribution a few measurements to settle.
        prune_penalty_epochs: a blueprint pruned fewer than this many steps ago is skipped by the
            rotation; 10 is about one seed lifetime, so a failed design is not regrown at once.
        no_germinate_last_epochs: no germination when fewer steps than this remain in the
            episode; the default is ``MIN_LIFECYCLE_EPOCHS``, below which a seed cannot finish.
        blueprint_preference: the rotation's order; offered blueprints not named here follow in
            registry order. Capacity first: convolutions and MLPs add new features, while
            attention (channel gating) and norm only rescale the host's own.
    """

    plateau_patience: int = 3
    germinate_cooldown: int = 3
    max_live_seeds: int = 2
    prune_contribution: float = -1.0
    max_training_epochs: int = 2 * T.G2_MIN_TRAINING_EPOCHS
    max_holding_epochs: int = 3
    prune_penalty_epochs: int = 10
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
        require(
            self.prune_contribution < T.G5_MIN_CONTRIBUTION,
            f"prune_contribution must be below G5_MIN_CONTRIBUTION={T.G5_MIN_CONTRIBUTION} "
            f"(a seed cannot both hurt and earn fossilization), got {self.prune_contribution}",
        )


def _prune_reason(report: SeedStateReport, config: HeuristicConfig) -> str | None:
    """Why this seed should be pruned, or ``None``.

    Unmeasured values never trigger a prune, except for a HOLDING seed that ran out of time
    without a contribution clearing G5 (it could never be fossilized).
    """
    stage, c, epochs = report.stage, report.counterfactual_contribution, report.epochs_in_stage
    blended = stage in BLENDED_STAGES & ALIVE_STAGES  # BLENDING, HOLDING
    if blended and c is not None and c < config.prune_contribution:
        return f"contribution {c:.3g} < {config.prune_contribution}"
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
    """The rule-based controller; implements ``Controller``.

    Args:
        config: the rules' thresholds.
    """

    def __init__(self, config: HeuristicConfig = HeuristicConfig()) -> None:
        self.config = config
        self._used_slots: set[str] = set()
        self._last_germination: int | None = None
        self._last_blueprint: str | None = None
        self._prune_epochs: dict[str, int] = {}  # blueprint -> step of its latest prune
        self._seen: dict[str, tuple[SeedStage, str | None]] = {}  # slot -> last (stage, bp)
        self._own_prunes: dict[str, str] = {}  # slot -> blueprint pruned by the last decision

    def decide(self, observation: Observation) -> Action:
        """Propose one action (see the module docstring for the rules and their order)."""
        now = observation.signals.epoch
        reports = [observation.reports[s] for s in ordered_slots(observation.reports)]
        self._observe(reports, now)
        action = self._first_lifecycle_action(reports)
        if action is None:
            action = self._germinate(observation, reports, now)
        if action.op is Op.GERMINATE:
            assert action.slot is not None and action.blueprint is not None
            self._used_slots.add(action.slot)
            self._last_germination = now
            self._last_blueprint = action.blueprint
        elif action.op is Op.PRUNE:
            assert action.slot is not None
            blueprint = observation.reports[action.slot].blueprint
            assert blueprint is not None  # an alive seed always names its blueprint
            self._prune_epochs[blueprint] = now
            self._own_prunes[action.slot] = blueprint
        return action

    def _first_lifecycle_action(self, reports: Sequence[SeedStateReport]) -> Action | None:
        """The highest-priority PRUNE, FOSSILIZE or ADVANCE, first slot first; else ``None``."""
        for op, rule in (
            (Op.PRUNE, lambda r: _prune_reason(r, self.config)),
            (Op.FOSSILIZE, fossilize_reason),
            (Op.ADVANCE, advance_reason),
        ):
            for report in reports:
                reason = rule(report)
                if reason is not None:
                    return Action(op, slot=report.slot, reason=reason)
        return None

    def _observe(self, reports: Sequence[SeedStateReport], now: int) -> None:
        """Update slot usage and detect prunes this controller did not order."""
        own, self._own_prunes = self._own_prunes, {}
        for report in reports:
            if report.stage is not SeedStage.DORMANT:
                self._used_slots.add(report.slot)
            ended = self._ended_blueprint(report)
            if ended is not None and own.get(report.slot) != ended:
                self._prune_epochs[ended] = now  # e.g. a governor rollback pruned it
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

    def _germinate(
        self, observation: Observation, reports: Sequence[SeedStateReport], now: int
    ) -> Action:
        """GERMINATE when every condition holds, else WAIT saying which one did not."""
        cfg, signals = self.config, observation.signals
        plateaued = signals.plateau_epochs >= cfg.plateau_patience
        if not (signals.host_stabilized or plateaued):
            return Action(Op.WAIT, reason="host still improving")
        if observation.max_epochs - now < cfg.no_germinate_last_epochs:
            return Action(Op.WAIT, reason="too late in the episode for a seed to finish")
        last = self._last_germination
        if last is not None and now - last < cfg.germinate_cooldown:
            return Action(Op.WAIT, reason=f"germination cooldown (last at step {last})")
        live = sum(r.stage in ALIVE_STAGES for r in reports)
        if live >= cfg.max_live_seeds:
            return Action(Op.WAIT, reason=f"{live} live seeds (max {cfg.max_live_seeds})")
        dormant = [r.slot for r in reports if r.stage is SeedStage.DORMANT]
        if not dormant:
            return Action(Op.WAIT, reason="no dormant slot")
        if not observation.blueprints:
            return Action(Op.WAIT, reason="no blueprint fits this host")
        fresh = [s for s in dormant if s not in self._used_slots]
        slot = (fresh or dormant)[0]
        blueprint = self._choose_blueprint(observation.blueprints, now)
        why = "host stabilized" if signals.host_stabilized else "host plateaued"
        return Action(Op.GERMINATE, slot=slot, blueprint=blueprint, reason=f"{why}: grow")

    def _choose_blueprint(self, blueprints: Sequence[str], now: int) -> str:
        """Next blueprint in rotation after the last one grown, skipping penalized ones.

        The rotation runs through the offered blueprints in ``blueprint_preference`` order and
        starts after the last germinated blueprint (at the first one when there is none, or when
        it is not offered). A blueprint pruned fewer than ``prune_penalty_epochs``
        steps ago is skipped; if every blueprint is penalized, the one pruned longest ago is
        chosen (the earliest in rotation order on a tie).
        """
        preferred = self.config.blueprint_preference
        ordered = sorted(
            blueprints,
            key=lambda b: (
                preferred.index(b) if b in preferred else len(preferred),
                blueprints.index(b),
            ),
        )
        last = self._last_blueprint
        start = ordered.index(last) + 1 if last in ordered else 0
        rotation = [*ordered[start:], *ordered[:start]]
        penalty = self.config.prune_penalty_epochs
        for blueprint in rotation:
            pruned = self._prune_epochs.get(blueprint)
            if pruned is None or now - pruned >= penalty:
                return blueprint
        return min(rotation, key=lambda b: self._prune_epochs[b])

    def state_dict(self) -> dict[str, Any]:
        """The heuristic's memory as JSON data (the config is not included)."""
        return {
            "used_slots": list(ordered_slots(self._used_slots)),
            "last_germination": self._last_germination,
            "last_blueprint": self._last_blueprint,
            "prune_epochs": dict(sorted(self._prune_epochs.items())),
            "seen": {s: [st.value, bp] for s, (st, bp) in self._seen.items()},
            "own_prunes": dict(self._own_prunes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the memory saved by ``state_dict``.

        Raises:
            ValueError: if keys are missing or unknown, or a stage name is unknown.
        """
        keys = sorted(self.state_dict())
        require(
            sorted(state) == keys, f"HeuristicTamiyo state keys {sorted(state)} do not match {keys}"
        )
        self._used_slots = set(state["used_slots"])
        self._last_germination = state["last_germination"]
        self._last_blueprint = state["last_blueprint"]
        self._prune_epochs = {str(b): int(e) for b, e in state["prune_epochs"].items()}
        self._seen = {s: (SeedStage(st), bp) for s, (st, bp) in state["seen"].items()}
        self._own_prunes = {str(s): str(b) for s, b in state["own_prunes"].items()}
