"""Quality gates G0, G1, G2, G3 and G5 (DESIGN §2 has no G4).

Each gate is a list of checks. A *structural* check guards something that must hold in any mode
(shapes, finiteness); a *threshold* check compares a measurement with a named constant from
``esper.leyline.thresholds``. PERMISSIVE mode runs only the structural checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from esper.kasmina.errors import GateError
from esper.leyline import GateLevel, GateMode
from esper.leyline import thresholds as T

if TYPE_CHECKING:
    from esper.kasmina.slot import SeedSlot


@dataclass(frozen=True)
class Check:
    """One gate check: ``None`` from ``run`` means it passed, a string says why it failed."""

    name: str
    structural: bool
    run: Callable[[SeedSlot], str | None]


def _stayed(verb: str, constant: str, need: int) -> Callable[[SeedSlot], str | None]:
    """A check that the seed spent at least ``need`` epochs (``constant``) in its stage."""

    def check(slot: SeedSlot) -> str | None:
        if slot.epochs_in_stage < need:
            return f"{verb} {slot.epochs_in_stage} epochs < {constant}={need}"
        return None

    return check


_trained_long_enough = _stayed("trained", "G2_MIN_TRAINING_EPOCHS", T.G2_MIN_TRAINING_EPOCHS)
_blended_long_enough = _stayed("blended", "G3_MIN_BLENDING_EPOCHS", T.G3_MIN_BLENDING_EPOCHS)
_held_long_enough = _stayed("held", "G5_MIN_HOLDING_EPOCHS", T.G5_MIN_HOLDING_EPOCHS)


def _params_finite(slot: SeedSlot) -> str | None:
    for name, p in slot.named_parameters():
        if not torch.isfinite(p).all():
            return f"parameter {name} has non-finite values"
    return None


def _gradients_healthy(slot: SeedSlot) -> str | None:
    if slot.gradient_ratio is None:
        return "seed_gradient_norm_ratio not measured (call record_gradient_stats after backward)"
    if not slot.gradient_healthy:
        return (
            f"seed_gradient_norm_ratio={slot.gradient_ratio:.3g} outside "
            f"[{T.GRADIENT_RATIO_HEALTHY_MIN}, {T.GRADIENT_RATIO_HEALTHY_MAX}]"
        )
    return None


def _probe_improves(slot: SeedSlot) -> str | None:
    if slot.contribution is None:
        return "probe contribution not measured (call measure_contributions)"
    if not (math.isfinite(slot.contribution) and slot.contribution > T.G2_MIN_PROBE_IMPROVEMENT):
        need = T.G2_MIN_PROBE_IMPROVEMENT
        return f"probe contribution {slot.contribution:.4g} <= G2_MIN_PROBE_IMPROVEMENT={need}"
    return None


def _alpha_positive(slot: SeedSlot) -> str | None:
    return None if slot.alpha > 0.0 else "alpha is 0: nothing is blended in yet (step an epoch)"


def _alpha_at_target(slot: SeedSlot) -> str | None:
    # α itself, not the schedule's clock: a schedule re-planned to the α a seed already has is
    # flat, and its epochs left change nothing (the heuristic, reading α from the report, agrees).
    schedule = slot.schedule
    if schedule is None or abs(slot.alpha - schedule.target) > T.ALPHA_EPSILON:
        target = None if schedule is None else schedule.target
        return f"alpha {slot.alpha:.4g} has not reached its target {target}"
    return None


def _contribution_clears(slot: SeedSlot) -> str | None:
    if slot.contribution is None:
        return "counterfactual contribution not measured in HOLDING (call measure_contributions)"
    if not (math.isfinite(slot.contribution) and slot.contribution >= T.G5_MIN_CONTRIBUTION):
        return f"contribution {slot.contribution:.4g} < G5_MIN_CONTRIBUTION={T.G5_MIN_CONTRIBUTION}"
    return None


GATES: dict[GateLevel, tuple[Check, ...]] = {
    # G0 runs at germination time inside SeedSlot.germinate (shape and zero-output probes).
    GateLevel.G0: (),
    GateLevel.G1: (Check("params_finite", True, _params_finite),),
    GateLevel.G2: (
        Check("params_finite", True, _params_finite),
        Check("trained_long_enough", False, _trained_long_enough),
        Check("gradients_healthy", False, _gradients_healthy),
        Check("probe_improves", False, _probe_improves),
    ),
    GateLevel.G3: (
        Check("alpha_positive", True, _alpha_positive),
        Check("alpha_at_target", False, _alpha_at_target),
        Check("blended_long_enough", False, _blended_long_enough),
    ),
    GateLevel.G5: (
        Check("params_finite", True, _params_finite),
        Check("alpha_positive", True, _alpha_positive),
        Check("held_long_enough", False, _held_long_enough),
        Check("contribution_clears", False, _contribution_clears),
    ),
}


def enforce(gate: GateLevel, slot: SeedSlot, mode: GateMode) -> None:
    """Run ``gate``'s checks for ``mode`` on ``slot``.

    Raises:
        GateError: listing every failed check.
    """
    failures = []
    for check in GATES[gate]:
        if mode is GateMode.PERMISSIVE and not check.structural:
            continue
        reason = check.run(slot)
        if reason is not None:
            failures.append(f"{check.name}: {reason}")
    if failures:
        raise GateError(gate, slot.name, failures)
