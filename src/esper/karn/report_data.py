"""What a run's records say, for the run report: the pure part, without any plotting.

``load_run`` reads a run directory once (resumed segments replayed once); the functions below
derive what the report draws: each slot's stage intervals and lifecycle marks, an environment's
last episode (PPO), and per-round PPO statistics. Records are untrusted JSON: a field that is
absent, null or NaN is treated as missing, never as 0 (``tui_state.number``, as in the TUI).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.karn.tui_state import as_number, number
from esper.leyline import SeedStage, ordered_slots
from esper.leyline.events import (
    ActionTaken,
    EpochCompleted,
    PPOUpdate,
    RewardComputed,
    RunStarted,
    SeedTransition,
)
from esper.nissa.log import RunDirectory, drop_replaced, open_run, read_events
from esper.nissa.record import PPO_MODE, RunRecordError, read_meta

MARK_KINDS: Mapping[SeedStage, str] = {
    SeedStage.GERMINATED: "germinate",
    SeedStage.FOSSILIZED: "fossilize",
    SeedStage.PRUNED: "prune",
}
"""Lifecycle events marked on the timeline, by the stage a transition enters."""


class ReportError(ValueError):
    """Records that cannot be reported (the message is one line naming the problem)."""


@dataclass(frozen=True)
class RunData:
    """One run as the report reads it.

    Attributes:
        run: the run directory.
        git_revision: from ``meta.json``, None when it was not recorded.
        records: the events in order; epochs (rounds) replayed after a resume appear once.
        slots: the run's slots in execution order.
        truncated_line: a partial last line that was skipped (a crashed run), else None.
    """

    run: RunDirectory
    git_revision: str | None
    records: list[dict[str, Any]]
    slots: tuple[str, ...]
    truncated_line: int | None

    @property
    def is_ppo(self) -> bool:
        return self.run.mode == PPO_MODE


@dataclass(frozen=True)
class StageInterval:
    """A slot held ``stage`` from ``start`` to ``end`` (epochs; a transition decided at the end
    of epoch e takes effect from e)."""

    stage: SeedStage
    start: float
    end: float
    blueprint: str | None


@dataclass(frozen=True)
class LifecycleMark:
    """A germinate, fossilize or prune transition: ``kind`` is its ``MARK_KINDS`` label."""

    epoch: int
    slot: str
    kind: str
    blueprint: str | None


@dataclass(frozen=True)
class RoundSummary:
    """One PPO round: its ``PPOUpdate`` and means over the steps recorded before it.

    Attributes:
        round: the update's round number.
        mean_return: the update's mean episode return (None: not recorded).
        mean_accuracy: the update's mean final validation accuracy, in percent.
        mean_reward: mean total reward per step.
        components: reward component -> mean per step.
        ops: op -> number of actions taken.
    """

    round: int
    mean_return: float | None
    mean_accuracy: float | None
    mean_reward: float | None
    components: dict[str, float]
    ops: dict[str, int]


def load_run(path: Path) -> RunData:
    """Read a run directory for the report.

    Raises:
        RunDirectoryError: not a run directory.
        EventLogError: a malformed event line other than a partial last one.
        ReportError: the log names an unknown slot, or ``meta.json`` is malformed.
    """
    run = open_run(path)
    log = read_events(run.events_path)
    names: list[str] = []
    for record in (item.record() for item in log.records):  # TODO(fold): typed events
        if record["event"] == RunStarted.__name__:
            names += [str(item) for item in record.get("slots") or []]
        elif record["event"] == EpochCompleted.__name__:
            snapshots = record.get("slots") or []
            names += [str(item.get("slot")) for item in snapshots if isinstance(item, dict)]
    try:
        slots = ordered_slots(dict.fromkeys(names))
    except ValueError as err:
        raise ReportError(f"{run.events_path}: {err}") from None
    records = [item.record() for item in drop_replaced(log.records, run.mode == PPO_MODE)]
    try:
        meta = read_meta(path)  # None: no meta.json
    except RunRecordError as err:
        raise ReportError(str(err)) from None
    revision = None if meta is None else meta.git_revision
    return RunData(run, revision, records, slots, log.truncated_line)


def _stage(name: Any, where: str) -> SeedStage:
    try:
        return SeedStage(name)
    except ValueError:
        accepted = ", ".join(s.value for s in SeedStage)
        raise ReportError(f"{where}: unknown seed stage {name!r}; known: {accepted}") from None


def stage_intervals(
    records: Sequence[Mapping[str, Any]], slots: Sequence[str], end_epoch: float
) -> dict[str, list[StageInterval]]:
    """Each slot's stages over time, from its ``SeedTransition`` records (others are ignored).

    A slot starts in the ``from_stage`` of its first transition (DORMANT without one) at epoch
    0; each transition at epoch e ends the current interval at e and starts the next. Intervals
    of zero length (two transitions in one epoch) are left out.

    Args:
        records: event records in log order.
        slots: the slots to report, in display order.
        end_epoch: where the last interval of every slot ends (the last recorded epoch).

    Raises:
        ReportError: a transition names an unknown stage.
    """
    current: dict[str, tuple[SeedStage, float, str | None] | None] = dict.fromkeys(slots)
    intervals: dict[str, list[StageInterval]] = {slot: [] for slot in slots}
    for record in records:
        if record["event"] != SeedTransition.__name__ or record.get("slot") not in intervals:
            continue
        slot, epoch = str(record["slot"]), number(record, "epoch") or 0.0
        blueprint, where = record.get("blueprint"), f"SeedTransition of {slot} at epoch {epoch:g}"
        state = current[slot]
        if state is None:  # the slot's stage before its first transition
            first = _stage(record.get("from_stage"), where)
            state = (first, 0.0, None if first is SeedStage.DORMANT else blueprint)
        stage, start, held = state
        if epoch > start:
            intervals[slot].append(StageInterval(stage, start, epoch, held))
        entered = _stage(record.get("to_stage"), where)
        current[slot] = (entered, epoch, None if entered is SeedStage.DORMANT else blueprint)
    for slot in slots:
        stage, start, held = current[slot] or (SeedStage.DORMANT, 0.0, None)
        if max(end_epoch, start) > start:
            intervals[slot].append(StageInterval(stage, start, max(end_epoch, start), held))
    return intervals


def lifecycle_marks(records: Sequence[Mapping[str, Any]]) -> list[LifecycleMark]:
    """Germinate, fossilize and prune transitions (by the stage entered), in log order."""
    marks = []
    for record in records:
        if record["event"] != SeedTransition.__name__:
            continue
        entered = _stage(record.get("to_stage"), SeedTransition.__name__)
        if entered in MARK_KINDS:
            epoch = int(number(record, "epoch") or 0)
            blueprint = record.get("blueprint")
            marks.append(
                LifecycleMark(epoch, str(record.get("slot")), MARK_KINDS[entered], blueprint)
            )
    return marks


def last_episode(records: Sequence[Mapping[str, Any]], env: int = 0) -> list[Mapping[str, Any]]:
    """The records of environment ``env``'s last episode that has epochs (a PPO run)."""
    mine = [r for r in records if r.get("env") == env and r.get("episode") is not None]
    episodes = [r["episode"] for r in mine if r["event"] == EpochCompleted.__name__]
    if not episodes:
        return []
    return [r for r in mine if r["episode"] == episodes[-1]]


def round_summaries(records: Sequence[Mapping[str, Any]]) -> list[RoundSummary]:
    """Per-round statistics of a PPO run: records belong to the first ``PPOUpdate`` after them;
    those after the last update (a round that never finished) are left out."""
    rounds: list[RoundSummary] = []
    bucket: list[Mapping[str, Any]] = []
    for record in records:
        if record["event"] != PPOUpdate.__name__:
            bucket.append(record)
            continue
        rewards = [step for step in bucket if step["event"] == RewardComputed.__name__]
        components: dict[str, list[float]] = {}
        for pair in (pair for step in rewards for pair in step.get("components") or []):
            value = as_number(pair[1]) if isinstance(pair, list) and len(pair) == 2 else None
            if value is not None:
                components.setdefault(str(pair[0]), []).append(value)
        found = (number(step, "total") for step in rewards)
        totals = [total for total in found if total is not None and math.isfinite(total)]
        ops = Counter(str(r.get("op")) for r in bucket if r["event"] == ActionTaken.__name__)
        rounds.append(
            RoundSummary(
                int(number(record, "round") or len(rounds) + 1),
                number(record, "mean_return"),
                number(record, "mean_final_accuracy"),
                sum(totals) / len(totals) if totals else None,
                {name: sum(v) / len(v) for name, v in components.items()},
                dict(ops),
            )
        )
        bucket = []
    return rounds


def epoch_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ``EpochCompleted`` records, in order."""
    return [r for r in records if r["event"] == EpochCompleted.__name__]


def series(epochs: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """One field per epoch; missing values are NaN (a gap in the line, never 0)."""
    return [math.nan if (v := number(r, key)) is None else v for r in epochs]


def alpha_series(epochs: Sequence[Mapping[str, Any]], slot: str) -> list[float]:
    """``slot``'s α per epoch (NaN where the snapshot lacks it)."""
    values = []
    for record in epochs:
        snapshots = record.get("slots") or []
        found = [s for s in snapshots if isinstance(s, dict) and s.get("slot") == slot]
        alpha = number(found[0], "alpha") if found else None
        values.append(math.nan if alpha is None else alpha)
    return values


def final_accuracy(data: RunData) -> float | None:
    """The run's final accuracy in percent: a growth run's last validation accuracy, a PPO
    run's final mean accuracy over environments (from ``summary.json``)."""
    summary = data.run.summary
    if data.is_ppo:
        return None if summary is None or summary.ppo is None else summary.ppo.final_mean_accuracy
    if summary is not None and summary.growth is not None and summary.growth.final is not None:
        return summary.growth.final.val_accuracy
    epochs = epoch_records(data.records)
    return number(epochs[-1], "val_accuracy") if epochs else None
