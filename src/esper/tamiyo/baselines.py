"""Baseline controllers: what a learned controller has to beat besides the heuristic.

``RandomController`` draws among the valid masked actions of the factored action space
(``esper.tamiyo.actions``), the op uniformly and then each head the op reads uniformly: the
floor of "any decision at all". ``PeriodicController`` grows on a fixed schedule, every
``period`` epochs, into the slots in rotation and with the blueprints in rotation, and keeps a
seed only if it clears gate G5. Growing at a fixed interval is the usual schedule in the
network-growing literature (e.g. GradMax, Evci et al. 2022) and a strong one, so it is the
baseline a learned *when* must beat.

Both implement ``Controller`` and keep their whole memory (the random state, the rotations) in
``state_dict``, so a resumed run makes the same decisions as an uninterrupted one. Neither reads
the global random state.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from esper.leyline import (
    Action,
    Observation,
    Op,
    SeedStage,
    SeedStateReport,
    Topology,
    ordered_slots,
)
from esper.leyline import thresholds as T
from esper.leyline.config import MAX_SEED, check_int, require
from esper.tamiyo.actions import HEADS, RELEVANT_HEADS, ActionSpace
from esper.tamiyo.heuristic import advance_reason, fossilize_reason


def _valid(mask: Sequence[bool]) -> list[int]:
    """Indices of the allowed choices of one head's mask."""
    return [i for i, ok in enumerate(mask) if ok]


class RandomController:
    """Uniform random choices among the valid masked actions; implements ``Controller``.

    One decision draws, from the masks of ``ActionSpace(topology).masks(observation)``:

    1. the op uniformly among the valid ops (WAIT is always valid), then
    2. independently, each head the op reads (``RELEVANT_HEADS[op]``) uniformly among that
       head's valid choices: the slot among the slots valid for that op, the blueprint among
       the offered ones, the tempo among ``TEMPOS``, the α target among ``ALPHA_TARGETS``.

    So P(op) = 1 / #valid ops, and P(action) = P(op) · Π 1 / #valid choices of each head the op
    reads; this is *not* uniform over the joint set of valid actions (an op with many slot and
    blueprint combinations is not favoured). Heads the op does not read draw nothing. The masks
    rule out only what the lifecycle forbids, so a gate may still refuse a chosen ADVANCE or
    FOSSILIZE; the engine records that as a refused no-op, which is part of this baseline.

    Args:
        topology: the host kind (fixes the blueprint head); the run's ``episode.topology``.
            Enabled slots need not be given: only they have reports, and the masks allow only
            slots with a report.
        seed: seeds this controller's own ``random.Random`` (never the global random state).
        auto_advance: the run advances seeds itself (``HostTraining.auto_advance``), so ADVANCE
            is masked out and never drawn.

    Raises:
        ValueError: for a seed outside ``[0, MAX_SEED]``.
    """

    def __init__(self, topology: Topology, seed: int, auto_advance: bool = False) -> None:
        check_int("seed", seed, 0, MAX_SEED)
        self.space = ActionSpace(topology, auto_advance)
        self._rng = random.Random(seed)

    def decide(self, observation: Observation) -> Action:
        """Draw one action as the class docstring defines it."""
        masks = self.space.masks(observation)
        op_index = self._rng.choice(_valid(masks.op.tolist()))
        op = self.space.ops[op_index]
        choices = {
            "slot": masks.slot[op_index].tolist(),
            "blueprint": masks.blueprint.tolist(),
            "tempo": masks.tempo.tolist(),
            "alpha_target": masks.alpha_target.tolist(),
        }
        indices = [op_index]
        for head in HEADS[1:]:  # in HEADS order, so the draws follow a fixed order too
            relevant = head in RELEVANT_HEADS[op]
            indices.append(self._rng.choice(_valid(choices[head])) if relevant else 0)
        return self.space.decode(indices, reason="random")

    def state_dict(self) -> dict[str, Any]:
        """The random state as JSON data: ``{"rng": [version, internal state, gauss_next]}``."""
        version, internal, gauss_next = self._rng.getstate()
        return {"rng": [version, list(internal), gauss_next]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the random state saved by ``state_dict``.

        Raises:
            ValueError: for missing or unknown keys, or a random state that is not one.
        """
        keys = sorted(self.state_dict())
        require(
            sorted(state) == keys,
            f"RandomController state keys {sorted(state)} do not match {keys}",
        )
        version, internal, gauss_next = state["rng"]
        try:
            self._rng.setstate((version, tuple(internal), gauss_next))
        except TypeError as err:  # setstate reports a malformed tuple as a TypeError
            raise ValueError(f"RandomController: not a random state: {err}") from err


@dataclass(frozen=True)
class PeriodicConfig:
    """The periodic controller's schedule.

    Attributes:
        period: germinate at epochs ``period``, ``2·period``, … (epochs completed, as the
            observation counts them); 3 gives a 30-epoch run up to nine seeds (after epochs 3,
            6, …, 27: nothing is decided after the last), several per slot.
    """

    period: int = 3

    def __post_init__(self) -> None:
        check_int("period", self.period, 1)

    def never_grows(self, epochs: int) -> str | None:
        """Why a run of ``epochs`` epochs on this schedule never germinates a seed (its first
        germination would come after its last decision, made after epoch ``epochs - 1``), or
        None when it does."""
        if self.period < epochs:
            return None
        return (
            f"a run of {epochs} epochs never germinates a seed: the first comes after epoch "
            f"period = {self.period}, and nothing is decided after the last epoch; give it at "
            f"least {self.period + 1} epochs (or a shorter period)"
        )


class PeriodicController:
    """Grow on a fixed schedule, advance through the gates, keep what clears G5; implements
    ``Controller``.

    One action per decision, by the first rule that fires:

    1. **GERMINATE** at every epoch that is a multiple of ``config.period``, into the next
       DORMANT enabled slot of the slot rotation (``ordered_slots`` order, starting after the
       slot of the previous germination and wrapping around), with the next blueprint of the
       blueprint rotation (the observation's blueprints, which are the topology's in registry
       order; the k-th germination grows blueprint k mod n). With no DORMANT slot (or no
       blueprint offered) that germination is skipped, not postponed: the schedule stays fixed.
    2. Otherwise, for the first slot in ``ordered_slots`` order with a seed to act on:
       a HOLDING seed held ``G5_MIN_HOLDING_EPOCHS`` (so that G5 can be judged) gets
       **FOSSILIZE** when G5 passes and **PRUNE** when it does not; any other seed gets
       **ADVANCE** when its next gate (G1, G2, G3) would pass. The gate checks are the
       heuristic's (``advance_reason``, ``fossilize_reason``), i.e. the strict thresholds of
       ``esper.leyline.thresholds`` as far as the reports show them.
    3. Otherwise **WAIT**.

    Germination wins on a scheduled epoch, so an ADVANCE or a G5 decision due then waits one
    epoch (its gate still passes then; a held seed keeps being measured). The schedule ignores
    the horizon: a seed germinated too late to finish stays GERMINATED or TRAINING, where its
    output is the host's. Nothing but the G5 decision prunes, so a seed whose G2 never passes
    stays in TRAINING (again without changing the output) and occupies its slot.

    Args:
        config: the schedule.
    """

    def __init__(self, config: PeriodicConfig = PeriodicConfig()) -> None:
        self.config = config
        self._last_slot: str | None = None  # slot of the latest germination
        self._germinations = 0  # germinations proposed so far (the blueprint rotation)

    def decide(self, observation: Observation) -> Action:
        """Propose one action (see the class docstring for the rules and their order)."""
        now, period = observation.signals.epoch, self.config.period
        reports = [observation.reports[s] for s in ordered_slots(observation.reports)]
        skipped = now % period == 0
        if skipped:
            action = self._germinate(observation, reports)
            if action is not None:
                return action
        for report in reports:
            action = _lifecycle_action(report)
            if action is not None:
                return action
        return Action(Op.WAIT, reason=self._waiting(observation, skipped))

    def _waiting(self, observation: Observation, skipped: bool) -> str:
        """Why it waits: the next germination (one the episode decides before its end), and
        this epoch's that was skipped (no DORMANT slot, or no blueprint offered)."""
        now, period = observation.signals.epoch, self.config.period
        then = (now // period + 1) * period
        # nothing is decided after the last epoch: "next at epoch 14" of a 14-epoch run was none
        if then < observation.max_epochs:
            later = f"next germination at epoch {then}"
        else:
            later = "no germination left in the episode"
        if not skipped:
            return later
        why = "no slot is DORMANT" if observation.blueprints else "no blueprint fits the host"
        return f"epoch {now}'s germination skipped ({why}); {later}"

    def _germinate(
        self, observation: Observation, reports: Sequence[SeedStateReport]
    ) -> Action | None:
        """The scheduled GERMINATE, or ``None`` when no slot is DORMANT or nothing is offered."""
        slots = [r.slot for r in reports]
        dormant = {r.slot for r in reports if r.stage is SeedStage.DORMANT}
        if not dormant or not observation.blueprints:
            return None
        start = slots.index(self._last_slot) + 1 if self._last_slot in slots else 0
        slot = next(s for s in [*slots[start:], *slots[:start]] if s in dormant)
        blueprints = observation.blueprints
        blueprint = blueprints[self._germinations % len(blueprints)]
        self._last_slot = slot
        self._germinations += 1
        reason = f"epoch {observation.signals.epoch} is a multiple of {self.config.period}: grow"
        return Action(Op.GERMINATE, slot=slot, blueprint=blueprint, reason=reason)

    def state_dict(self) -> dict[str, Any]:
        """The rotations as JSON data (the config is not included)."""
        return {"last_slot": self._last_slot, "germinations": self._germinations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the rotations saved by ``state_dict``.

        Raises:
            ValueError: for missing or unknown keys or values of the wrong type.
        """
        keys = sorted(self.state_dict())
        require(
            sorted(state) == keys,
            f"PeriodicController state keys {sorted(state)} do not match {keys}",
        )
        last_slot, germinations = state["last_slot"], state["germinations"]
        require(
            last_slot is None or isinstance(last_slot, str),
            f"PeriodicController last_slot must be a slot name or null, got {last_slot!r}",
        )
        check_int("germinations", germinations, 0)
        self._last_slot, self._germinations = last_slot, germinations


def _lifecycle_action(report: SeedStateReport) -> Action | None:
    """FOSSILIZE or PRUNE a HOLDING seed once G5 can be judged, ADVANCE a seed whose next gate
    passes; else ``None``."""
    if report.stage is SeedStage.HOLDING:
        if report.epochs_in_stage < T.G5_MIN_HOLDING_EPOCHS:
            return None  # its contribution is not yet measured at the held α
        reason = fossilize_reason(report)
        if reason is not None:
            return Action(Op.FOSSILIZE, slot=report.slot, reason=reason)
        c = report.counterfactual_contribution
        why = f"held {report.epochs_in_stage} epochs without clearing G5 (contribution {c})"
        return Action(Op.PRUNE, slot=report.slot, reason=why)
    reason = advance_reason(report)
    return None if reason is None else Action(Op.ADVANCE, slot=report.slot, reason=reason)
