"""Typed telemetry events. The class name is the event name in every log line.

Every event is a frozen dataclass; ``event_record`` turns one into the JSON-ready dict written to
``events.jsonl`` (enums as their values, missing values as null — never 0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class RunStarted:
    """A run began (or resumed)."""

    run_id: str
    mode: str  # "heuristic" | "static" | ...
    task: str
    seed: int
    max_epochs: int
    slots: tuple[str, ...]
    resumed_from_epoch: int | None


@dataclass(frozen=True)
class SlotSnapshot:
    """One slot's state at the end of an epoch (a flattened ``SeedStateReport``)."""

    slot: str
    stage: str
    blueprint: str | None
    alpha: float
    contribution: float | None
    seed_params: int


@dataclass(frozen=True)
class EpochCompleted:
    """One step (host epoch + validation) finished."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    param_count: int
    slots: tuple[SlotSnapshot, ...]
    seconds: float


@dataclass(frozen=True)
class SeedTransition:
    """A seed changed stage."""

    epoch: int
    slot: str
    blueprint: str | None
    from_stage: str
    to_stage: str
    reason: str


@dataclass(frozen=True)
class ActionTaken:
    """The controller's decision and whether the model accepted it."""

    epoch: int
    op: str
    slot: str | None
    blueprint: str | None
    tempo: int | None
    alpha_target: float | None
    reason: str
    accepted: bool
    error: str | None


@dataclass(frozen=True)
class GovernorPanic:
    """The governor found the run unhealthy and rolled back."""

    epoch: int
    rule: str  # "non_finite" | "collapse" | "spike"
    detail: str
    loss: float | None
    restored_epoch: int | None
    pruned_slots: tuple[str, ...]


@dataclass(frozen=True)
class RunFinished:
    """A run ended; ``status`` is "completed" or "interrupted"."""

    status: str
    epochs: int
    final_val_accuracy: float | None
    best_val_accuracy: float | None
    param_count: int
    fossilized: int
    pruned: int
    seconds: float


Event = RunStarted | EpochCompleted | SeedTransition | ActionTaken | GovernorPanic | RunFinished
"""Every event type a run emits."""

EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (RunStarted, EpochCompleted, SeedTransition, ActionTaken, GovernorPanic, RunFinished)
}
"""Event classes by name, the single declaration sinks and views import."""


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def event_record(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict with its name under ``"event"``."""
    record: dict[str, Any] = {"event": type(event).__name__}
    record.update(_jsonable(event))
    return record
