"""Typed telemetry events. The class name is the event name in every log line.

Every event is a frozen dataclass; ``event_record`` turns one into the JSON-ready dict written to
``events.jsonl`` (enums as their values, missing values as null — never 0). Progress events
(``Progress``, e.g. batches trained so far) are dataclasses too but are never logged.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar


class TelemetryLevel(Enum):
    """How much a run logs. Each event type declares the lowest level at which it is written."""

    MINIMAL = 0  # run start/end, episode summaries, PPO updates, panics and anomalies
    NORMAL = 1  # + every epoch, transition, action and reward
    DEBUG = 2  # + per-head PPO statistics

    @classmethod
    def parse(cls, name: str) -> TelemetryLevel:
        """The level called ``name`` (case-insensitive).

        Raises:
            ValueError: naming the bad value and the accepted ones.
        """
        for level in cls:
            if isinstance(name, str) and level.name == name.upper():
                return level
        accepted = ", ".join(level.name.lower() for level in cls)
        raise ValueError(f"unknown telemetry level {name!r}; accepted: {accepted}")


@dataclass(frozen=True)
class RunStarted:
    """A run began (or resumed)."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.MINIMAL

    run_id: str
    mode: str  # "heuristic" | "static" | ...
    task: str
    seed: int
    max_epochs: int
    slots: tuple[str, ...]
    resumed_from_epoch: int | None


@dataclass(frozen=True)
class SlotSnapshot:
    """One slot's state at the end of an epoch (a flattened ``SeedStateReport``): after the
    epoch's own clock (a blending seed's α step; PRUNED → EMBARGOED → RESETTING → DORMANT) and
    before the controller decides, so the stage and α the next epoch trains with unless the
    controller changes them. The epoch's accuracies and ``contribution`` were measured before
    that clock: with the α of the epoch before (a seed's first BLENDING epoch shows α of one
    blend step and a contribution measured at α = 0)."""

    slot: str
    stage: str
    blueprint: str | None
    alpha: float
    contribution: float | None  # counterfactual contribution, accuracy points
    shapley: float | None  # exact Shapley value among blended seeds (when measured)
    seed_params: int


@dataclass(frozen=True)
class EpochCompleted:
    """One step (host epoch + validation) finished."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.NORMAL

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
    """A seed changed stage after ``epoch``: a controller's move (germinate, advance, prune,
    fossilize; a gate's auto-advance) was decided after that epoch and first shows in the next
    epoch's ``SlotSnapshot`` (the console's line of epoch ``epoch + 1``); a change of the
    epoch's own clock (an embargo, its end, a reset) already shows in that epoch's."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.NORMAL

    epoch: int
    slot: str
    blueprint: str | None
    from_stage: str
    to_stage: str
    reason: str


@dataclass(frozen=True)
class ActionTaken:
    """The controller's decision and whether the model accepted it."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.NORMAL

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
class PolicyDecision:
    """What a learned policy chose and what it could have chosen (PPO training).

    Emitted before the matching ``ActionTaken``; the valid options are the action masks of
    DESIGN §4 in words.
    """

    level: ClassVar[TelemetryLevel] = TelemetryLevel.NORMAL

    epoch: int
    chosen: tuple[tuple[str, str], ...]  # (head, option) for each head the chosen op reads
    valid_ops: tuple[str, ...]
    valid_slots: tuple[str, ...]  # slots valid for the chosen op (none for WAIT)
    valid_blueprints: tuple[str, ...]
    log_prob: float  # joint log-probability of the relevant heads
    value: float  # the critic's V(s)


@dataclass(frozen=True)
class GovernorPanic:
    """The governor found the run unhealthy and rolled back."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.MINIMAL

    epoch: int
    rule: str  # "non_finite" | "collapse" | "spike"
    detail: str
    loss: float | None
    restored_epoch: int | None
    pruned_slots: tuple[str, ...]


@dataclass(frozen=True)
class RunFinished:
    """A run ended; ``status`` is one of ``nissa.record.STATUSES`` (completed, interrupted,
    terminated by the governor, failed). ``final_val_accuracy``: the final model's validation
    accuracy, measured when the episode ended (the last epoch's for an interrupted run:
    ``GrowthSummary.final_val_accuracy``)."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.MINIMAL

    status: str
    epochs: int
    final_val_accuracy: float | None
    best_val_accuracy: float | None
    param_count: int
    fossilized: int
    pruned: int
    seconds: float


@dataclass(frozen=True)
class RewardComputed:
    """The reward of one environment step, every component by name: ``epoch`` is the epoch
    whose outcome it scores, the one after the action (``ActionTaken``) decided at
    ``epoch - 1``."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.NORMAL

    epoch: int
    total: float
    components: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class EpisodeFinished:
    """An environment's episode ended (PPO training)."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.MINIMAL

    episode: int
    length: int
    episode_return: float
    terminated: bool
    final_val_accuracy: float | None
    param_count: int | None
    host_param_count: int | None


@dataclass(frozen=True, kw_only=True)
class PPOStats:
    """What one PPO update measured (DESIGN §5): losses, entropy and gradient norm are means
    over the minibatches that stepped, ``approx_kl`` (Schulman's k3 estimate of KL(acting ||
    updated)) and ``clip_fraction`` (the share of steps whose ratio left the clip range) are of
    the updated policy over the round's steps; ``None`` means not measured (e.g. every
    optimizer step was skipped)."""

    passes: int  # passes over the batch that reached an optimizer step (the target KL allowed)
    early_stopped: bool  # the target KL stopped the passes
    skipped_steps: int  # optimizer steps refused by the finiteness gate
    overflow_steps: int  # AMP grad-scaler overflow skips (normal while the scale calibrates)
    policy_loss: float | None
    value_loss: float | None
    # per step, the sum over the heads that step's op reads of each head's entropy divided by
    # the log of its allowed choices (each in [0, 1]): about 1-3 while exploring, 0 decided
    entropy: float | None
    approx_kl: float | None
    clip_fraction: float | None
    ratio_max: float | None
    ratio_min: float | None
    explained_variance: float | None
    value_std: float | None  # spread of V(s) over the real steps
    return_std: float | None  # spread of the returns it was fitted to
    grad_norm: float | None  # before clipping
    entropy_coef: float


@dataclass(frozen=True, kw_only=True)
class _Round:
    round: int
    env_steps: int  # environment steps so far, all environments


@dataclass(frozen=True, kw_only=True)
class PPOUpdate(PPOStats, _Round):
    """One round: its update's ``PPOStats`` and the round's outcome. Its fields, in order, are
    the columns of a PPO run's ``rounds.csv``."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.MINIMAL

    mean_return: float | None  # mean return of the episodes that ended this round
    mean_final_accuracy: float | None  # their mean final validation accuracy (percent)
    seconds_rollout: float
    seconds_update: float


@dataclass(frozen=True)
class PPOHeadStats:
    """Per-head statistics of one update (debug detail)."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.DEBUG

    round: int
    head: str
    entropy: float | None
    ratio_max: float | None
    relevant_fraction: float


@dataclass(frozen=True)
class RatioExplosion:
    """The PPO ratio exceeded its threshold: which heads, how many steps, ratio statistics."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.MINIMAL

    round: int
    threshold: float
    heads: tuple[str, ...]
    steps: int
    step_indices: tuple[tuple[int, int], ...]  # (env, step in the round)
    ratio_max: float
    ratio_mean: float


@dataclass(frozen=True)
class AnomalyDetected:
    """The anomaly detector fired; telemetry is escalated to DEBUG for ``rounds`` rounds."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.MINIMAL

    round: int
    kinds: tuple[str, ...]
    detail: str
    escalated_to: str
    rounds: int


@dataclass(frozen=True)
class PPORunFinished:
    """A PPO training run ended; ``status`` is "completed", "interrupted" or "failed"."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.MINIMAL

    status: str
    rounds: int
    env_steps: int | None
    final_mean_return: float | None
    best_mean_return: float | None
    final_mean_accuracy: float | None
    seconds: float


Event = (
    RunStarted
    | EpochCompleted
    | SeedTransition
    | ActionTaken
    | PolicyDecision
    | GovernorPanic
    | RunFinished
    | RewardComputed
    | EpisodeFinished
    | PPOUpdate
    | PPOHeadStats
    | RatioExplosion
    | AnomalyDetected
    | PPORunFinished
)
"""Every event type a run emits."""

EVENT_TYPES: dict[str, type[Any]] = {cls.__name__: cls for cls in typing.get_args(Event)}
"""Event classes by name, the single declaration sinks and views import."""


@dataclass(frozen=True)
class BatchProgress:
    """How far the host epoch in training has got (single-model runs: console progress).

    A progress event, not a logged one: see ``Progress``.
    """

    epoch: int  # the epoch being trained (1 = the first)
    batches: int  # batches trained so far in this epoch
    total_batches: int  # batches in the epoch
    train_loss: float | None  # mean training loss so far (None after a non-finite batch)
    seconds: float  # since the epoch's training began


Progress = BatchProgress
"""Progress events: how far the work in hand has got. Nothing can be learnt from them once it is
done, so they are never written to a log at any telemetry level (they are not in ``Event`` and
readers never see them); the hub hands them only to the sinks that watch them (the console)."""


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def event_record(event: Event | Progress) -> dict[str, Any]:
    """The event as a JSON-ready dict with its name under ``"event"``."""
    record: dict[str, Any] = {"event": type(event).__name__}
    record.update(_jsonable(event))
    return record
