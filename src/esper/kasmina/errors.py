"""Exceptions Kasmina raises for lifecycle misuse, failed gates and bad checkpoints."""

from __future__ import annotations

from esper.leyline import GateLevel


class LifecycleError(RuntimeError):
    """A lifecycle operation that the slot's current stage does not allow."""


class IllegalTransitionError(LifecycleError):
    """A stage change that is not in the lifecycle table (``VALID_TRANSITIONS``)."""


class GateError(LifecycleError):
    """A gate refused a transition.

    Attributes:
        gate: which gate refused.
        slot: the slot name.
        failures: one line per failed check, naming the check, the value and the threshold.
    """

    def __init__(self, gate: GateLevel, slot: str, failures: list[str]) -> None:
        self.gate = gate
        self.slot = slot
        self.failures = failures
        super().__init__(f"gate {gate.value} refused slot {slot!r}: " + "; ".join(failures))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not match what it claims to hold."""
