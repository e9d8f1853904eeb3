"""What a run's events say, for the run report: the pure part, without any plotting.

``load_run`` reads a run directory once and folds its events with the one fold every view uses
(``esper.nissa.fold.RunState``: epochs replayed after a resume appear once, stage spans and
lifecycle marks come from there). The functions below only pick what the report draws from that
state: a growth run's epochs, a PPO run's last episode of environment 0, per-epoch series and the
run − baseline differences. A value that was not measured is NaN (a gap in a line), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.leyline.events import EpochCompleted
from esper.nissa.fold import Episode, RunState
from esper.nissa.log import RunDirectory, open_run, read_events
from esper.nissa.record import RunRecordError, read_meta

REPORTED_ENV = 0
"""The PPO environment whose last episode the report draws (every environment runs the same
policy; one episode stands for them)."""


class ReportError(ValueError):
    """Records that cannot be reported (the message is one line naming the problem)."""


@dataclass(frozen=True)
class RunData:
    """One run as the report reads it.

    Attributes:
        run: the run directory.
        git_revision: from ``meta.json``, None when it was not recorded.
        policy: an eval's policy, from ``meta.json`` (``RunMeta.policy``); None for another
            run, or an eval recorded before meta.json named it.
        state: the run's events folded once (``RunState``).
        slots: the run's slots in execution order.
        truncated_line: a partial last line that was skipped (a crashed run), else None.
    """

    run: RunDirectory
    git_revision: str | None
    policy: dict[str, Any] | None
    state: RunState
    slots: tuple[str, ...]
    truncated_line: int | None

    @property
    def is_ppo(self) -> bool:
        return self.state.is_ppo

    @property
    def episode(self) -> Episode | None:
        """The episode the per-epoch plots draw: a growth run's whole run, a PPO run's last
        finished episode of ``REPORTED_ENV`` (one stopped or still running is drawn only before
        any finished: the page would show a part of an episode as if it were one), or its last
        episode with epochs; None when no epoch was recorded."""
        env = self.state.envs.get(REPORTED_ENV if self.is_ppo else None)
        episodes = [] if env is None else [e for e in env.episodes if e.epochs]
        finished = [e for e in episodes if e.result is not None]
        return (finished or episodes)[-1] if episodes else None

    @property
    def epochs(self) -> list[EpochCompleted]:
        """The drawn episode's epochs, in order (empty when none was recorded)."""
        return [] if self.episode is None else self.episode.epochs


def load_run(path: Path) -> RunData:
    """Read and fold a run directory for the report.

    Raises:
        RunDirectoryError: not a run directory.
        EventLogError: a malformed event line other than a partial last one (an unknown seed
            stage included).
        ReportError: the log names an unknown slot, or ``meta.json`` is malformed.
    """
    run = open_run(path)
    log = read_events(run.events_path)
    state = RunState().apply_all(log.records)
    try:
        slots = state.slots()
    except ValueError as err:
        raise ReportError(f"{run.events_path}: {err}") from None
    try:
        meta = read_meta(path)  # None: no meta.json
    except RunRecordError as err:
        raise ReportError(str(err)) from None
    revision, policy = (None, None) if meta is None else (meta.git_revision, meta.policy)
    return RunData(run, revision, policy, state, slots, log.truncated_line)


def alpha_series(epochs: Sequence[EpochCompleted], slot: str) -> list[float]:
    """``slot``'s α per epoch (NaN where the epoch has no snapshot of it)."""
    values = []
    for epoch in epochs:
        found = [s.alpha for s in epoch.slots if s.slot == slot]
        values.append(found[0] if found else math.nan)
    return values


@dataclass(frozen=True)
class Difference:
    """Run − baseline per epoch both recorded.

    Attributes:
        epochs: the epochs both runs completed, in order.
        val_accuracy: run − baseline validation accuracy (points; NaN where either is missing).
        val_loss: run − baseline validation loss.
    """

    epochs: list[int]
    val_accuracy: list[float]
    val_loss: list[float]


def difference(run: Sequence[EpochCompleted], baseline: Sequence[EpochCompleted]) -> Difference:
    """The run's validation metrics minus the baseline's, epoch by epoch (matched by epoch
    number; an epoch only one of them reached is left out)."""
    theirs = {e.epoch: e for e in baseline}
    pairs = [(e, theirs[e.epoch]) for e in run if e.epoch in theirs]
    return Difference(
        [mine.epoch for mine, _ in pairs],
        [mine.val_accuracy - base.val_accuracy for mine, base in pairs],
        [mine.val_loss - base.val_loss for mine, base in pairs],
    )


def final_accuracy(data: RunData) -> float | None:
    """The run's final accuracy in percent: a growth run's final model's validation accuracy
    (the one every other view calls final; else its last epoch's), a PPO run's final mean
    accuracy over environments (from ``summary.json``)."""
    summary = data.run.summary
    if data.is_ppo:
        return None if summary is None or summary.ppo is None else summary.ppo.final_mean_accuracy
    growth = None if summary is None else summary.growth
    if growth is not None and growth.final_model_val_accuracy is not None:
        return growth.final_model_val_accuracy
    if growth is not None and growth.final is not None:
        return growth.final.val_accuracy
    epochs = data.epochs
    last = epochs[-1].val_accuracy if epochs else math.nan
    return None if math.isnan(last) else last
