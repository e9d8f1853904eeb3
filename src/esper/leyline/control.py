"""What a controller sees and what it may do: signals, observations and actions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from esper.leyline.config import check_finite, check_int
from esper.leyline.contracts import SeedStateReport
from esper.leyline.stages import SeedStage


class Op(Enum):
    """The controller's operations (DESIGN §4); the first head of the action space."""

    WAIT = "WAIT"
    GERMINATE = "GERMINATE"
    ADVANCE = "ADVANCE"
    SET_ALPHA_TARGET = "SET_ALPHA_TARGET"
    PRUNE = "PRUNE"
    FOSSILIZE = "FOSSILIZE"


OP_ARGUMENTS: Mapping[Op, tuple[str, ...]] = MappingProxyType(
    {
        Op.WAIT: (),
        Op.GERMINATE: ("slot", "blueprint"),
        Op.ADVANCE: ("slot",),
        Op.SET_ALPHA_TARGET: ("slot", "alpha_target", "tempo"),
        Op.PRUNE: ("slot",),
        Op.FOSSILIZE: ("slot",),
    }
)
"""The ``Action`` fields each op needs; every other argument field must be ``None``."""


@dataclass(frozen=True)
class Action:
    """One controller decision.

    Attributes:
        op: the operation.
        slot: target slot (every op but WAIT).
        blueprint: blueprint to germinate (GERMINATE only).
        tempo: α ramp length in epochs (SET_ALPHA_TARGET only).
        alpha_target: α to ramp to (SET_ALPHA_TARGET only).
        reason: a short human-readable why, for telemetry.
    """

    op: Op
    slot: str | None = None
    blueprint: str | None = None
    tempo: int | None = None
    alpha_target: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        """The arguments the op needs, of the types the event log can hold: a tempo of 2.0 or
        numpy's int64 was logged as a line the log's reader refuses (and numpy's after the
        model had changed), a reason of None likewise."""
        op: object = self.op  # typed Op; a caller's "germinate" was a KeyError below
        if not isinstance(op, Op):
            accepted = ", ".join(f"Op.{each.name}" for each in Op)
            raise ValueError(f"op must be one of {accepted}, got {op!r}")
        needed = OP_ARGUMENTS[self.op]
        for name in ("slot", "blueprint", "tempo", "alpha_target"):
            present = getattr(self, name) is not None
            if present != (name in needed):
                want = "needs" if name in needed else "takes no"
                raise ValueError(f"{self.op.value} {want} {name} (got {getattr(self, name)!r})")
        for name in ("slot", "blueprint", "reason"):
            value = getattr(self, name)
            if (value is not None or name == "reason") and not isinstance(value, str):
                raise ValueError(f"Action.{name} must be a str, got {value!r}")
        if self.tempo is not None:
            check_int("Action.tempo", self.tempo, 0)
        if self.alpha_target is not None:  # its range is Kasmina's to refuse (and record)
            check_finite("Action.alpha_target", self.alpha_target)


@dataclass(frozen=True)
class SlotSignals:
    """What the tracker remembers about one enabled slot.

    Attributes:
        slot: slot name.
        stage: the slot's stage this step.
        contribution: the latest measured counterfactual contribution (None if not measured).
        contribution_delta: change since the previous measurement in the same stage (None when
            there is none: a new stage restarts the series, since a TRAINING probe and a blended
            contribution measure different things).
        contribution_history: this stage's measurements, oldest first (at most the tracker's
            ``history`` length).
    """

    slot: str
    stage: SeedStage
    contribution: float | None
    contribution_delta: float | None
    contribution_history: tuple[float, ...]


@dataclass(frozen=True)
class TrainingSignals:
    """Per-step training signals from ``SignalTracker`` (DESIGN §4).

    Attributes:
        epoch: steps completed so far (1 after the first).
        train_loss: mean training loss of the step.
        train_accuracy: training accuracy of the step, percent.
        val_loss: validation loss.
        val_accuracy: validation accuracy, percent.
        loss_delta: ``val_loss`` minus the previous step's (None on the first step).
        accuracy_delta: ``val_accuracy`` minus the previous step's (None on the first step).
        best_val_accuracy: best validation accuracy so far.
        plateau_epochs: consecutive steps without a new best beyond the plateau tolerance.
        host_stabilized: latched once the host's improvement has slowed (never unlatches).
        loss_history: the last few validation losses, oldest first.
        accuracy_history: the last few validation accuracies, oldest first.
        slots: signals of every enabled slot, in ``ordered_slots`` order.
        best_slot: the slot with the highest measured contribution; ties go to the earliest
            slot in ``ordered_slots`` order (None when nothing was measured).
        worst_slot: the slot with the lowest measured contribution, same tie-break.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    loss_delta: float | None
    accuracy_delta: float | None
    best_val_accuracy: float
    plateau_epochs: int
    host_stabilized: bool
    loss_history: tuple[float, ...]
    accuracy_history: tuple[float, ...]
    slots: tuple[SlotSignals, ...]
    best_slot: str | None
    worst_slot: str | None


@dataclass(frozen=True)
class Observation:
    """Everything a controller gets for one decision.

    Attributes:
        signals: training signals of the step just finished.
        reports: seed reports of every enabled slot, in ``ordered_slots`` order.
        blueprints: blueprints that fit this host, in registry (action-space) order.
        max_epochs: episode length, for controllers that plan against the horizon.
    """

    signals: TrainingSignals
    reports: Mapping[str, SeedStateReport]
    blueprints: tuple[str, ...]
    max_epochs: int
