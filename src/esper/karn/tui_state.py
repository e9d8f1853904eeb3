"""What the terminal UI shows of a run's folded state, as text: pure Python, no Textual.

The UI keeps one ``esper.nissa.fold.RunState`` (DESIGN §6: the one fold every view shares, which
also handles resumes), fed with the typed events ``esper.nissa.log.EventTail.events`` reads. This
module turns that state into the words on screen: the environment table's cells, the run summary,
the PPO statistics, the series the sparklines draw, and one event-log line per ``Logged`` event
with the log filter. ``esper.karn.tui`` only lays them out. A value that was not measured (None
or NaN) shows as "—", never as 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from esper.leyline.events import (
    ActionTaken,
    EpisodeFinished,
    EpochCompleted,
    Event,
    PPORunFinished,
    PPOUpdate,
    RewardComputed,
    RunFinished,
    RunStarted,
    SeedTransition,
)
from esper.nissa.fold import RECENT_EVENTS, EnvState, Episode, RunState, episode_less
from esper.nissa.log import Logged, counted, display, percent

LOG_LINES = RECENT_EVENTS
"""Event-log lines kept (``RunState.recent``, the log panel)."""

ENV_HEADINGS: tuple[tuple[str, str], ...] = (
    ("env", "env"),  # "—" for a single-model run's only environment
    ("episode", "episode"),
    ("epoch", "epoch"),
    ("val_accuracy", "val acc"),
    ("val_loss", "val loss"),
    ("params", "params"),
)
"""Environment table: column key and heading, in ``env_cells`` order."""

PPO_FIELDS = tuple(f.name for f in fields(PPOUpdate))
"""The ``PPOUpdate`` fields the PPO panel shows, in declaration order: every one."""

PPO_LABEL_WIDTH = max(len(name) for name in PPO_FIELDS) + 1
"""PPO panel: the label column's width (the longest field name, "mean_final_accuracy", + 1)."""


def env_cells(env: EnvState) -> tuple[str, ...]:
    """One environment's row: its current episode and latest epoch, in ``ENV_HEADINGS`` order."""
    episode, latest = env.episode, env.latest
    return (
        display(env.env),
        display(None if episode is None else episode.number),
        display(None if latest is None else latest.epoch),
        percent(None if latest is None else latest.val_accuracy),
        display(None if latest is None else latest.val_loss, ".4f"),
        display(None if latest is None else latest.param_count, ",d"),
    )


def accuracies(episode: Episode | None) -> list[float]:
    """The measured validation accuracies of ``episode``'s epochs, in epoch order."""
    if episode is None:
        return []
    return [e.val_accuracy for e in episode.epochs if e.val_accuracy == e.val_accuracy]


def mean_returns(state: RunState) -> list[float]:
    """The measured mean return of each PPO round so far (the run as finally run)."""
    values = [r.update.mean_return for r in state.rounds]
    return [v for v in values if v is not None and v == v]


FULL_COUNT = 10**12
"""Counts below this show in full in the PPO panel; larger ones (a damaged log's 400-digit
round) to four significant digits, as measures."""


def ppo_rows(state: RunState) -> list[tuple[str, str]]:
    """The PPO panel: the anomaly counts, then every field of the latest round's ``PPOUpdate``."""
    update = state.rounds[-1].update if state.rounds else None
    rows = [
        ("anomalies", str(len(state.anomalies))),
        ("ratio explosions", str(len(state.explosions))),
    ]
    for name in PPO_FIELDS:
        value = None if update is None else getattr(update, name)
        if isinstance(value, bool):
            shown = "yes" if value else "no"
        elif name == "mean_final_accuracy":  # a percentage, as every other view writes it
            shown = percent(value)
        else:  # counts in full (round 12345 read 1.234e+04) up to a width the panel holds,
            whole = isinstance(value, int) and abs(value) < FULL_COUNT  # else 4 digits
            shown = display(value, "d" if whole else ".4g")
        rows.append((name.replace("_", " "), shown))
    return rows


def ppo_text(state: RunState) -> str:
    """``ppo_rows`` as aligned lines: label, then value."""
    return "\n".join(f"{label:<{PPO_LABEL_WIDTH}}{value}" for label, value in ppo_rows(state))


def summary_lines(state: RunState, status: str) -> list[str]:
    """The run in two lines: what it is and its state (``status``), then how far it got."""
    started = state.started
    what = "—" if started is None else f"{started.mode} {started.task}, seed {started.seed}"
    if state.attempts > 1:
        what += f", {state.attempts} attempts (resumed)"
    panics = sum(env.panics for env in state.envs.values())
    if state.is_ppo:
        update = state.rounds[-1].update if state.rounds else None
        progress = [
            f"round {display(None if update is None else update.round)}",
            f"env steps {display(None if update is None else update.env_steps)}",
            f"envs {len(state.envs)}",
        ]
    else:
        latest = state.env(None).latest if None in state.envs else None
        total = None if started is None else started.max_epochs
        ended = episode_less(state)  # no epoch logged: as far as its end record says
        epoch = ended.epochs if ended is not None else None if latest is None else latest.epoch
        progress = [f"epoch {display(epoch)} / {display(total)}"]
    progress += [f"events {state.events}", f"panics {panics}"]
    finish = state.finish
    if isinstance(finish, RunFinished):
        progress.append(
            f"{_model(finish.status)} {percent(finish.final_val_accuracy)} "
            f"(best epoch {percent(finish.best_val_accuracy)})"
        )
        progress.append(f"seeds {finish.fossilized} fossilized, {finish.pruned} pruned")
    elif isinstance(finish, PPORunFinished):
        progress.append(
            f"final mean return {display(finish.final_mean_return, '.3f')}, "
            f"mean acc {percent(finish.final_mean_accuracy)}"
        )
    return [f"{what} — {status}", " · ".join(progress)]


# --- the event log ---------------------------------------------------------------------------


def matches(line: str, query: str) -> bool:
    """Whether ``line`` passes the log filter: a case-insensitive substring of it."""
    return query.strip().lower() in line.lower()


def _value(value: Any) -> str:
    """A field value of any shape, compactly (for events without a dedicated line)."""
    if isinstance(value, float):
        return display(value, ".4g")
    if value is None:
        return "—"
    if isinstance(value, tuple):
        if not value:
            return "none"
        if all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return ",".join(f"{_value(k)}:{_value(v)}" for k, v in value)
        return ",".join(_value(v) for v in value)
    return str(value)


def _generic(event: Event) -> str:
    return " ".join(f"{f.name}={_value(getattr(event, f.name))}" for f in fields(event))


def _epoch_line(e: EpochCompleted) -> str:
    return (
        f"epoch {e.epoch}: val acc {percent(e.val_accuracy)} loss {display(e.val_loss, '.4f')}, "
        f"train acc {percent(e.train_accuracy)}, {e.param_count:,} params"
    )


def _transition_line(e: SeedTransition) -> str:
    return (
        f"epoch {e.epoch}: {e.slot} {display(e.blueprint)}: {e.from_stage} → {e.to_stage} "
        f"({e.reason})"
    )


def _action_line(e: ActionTaken) -> str:
    given = (("slot", e.slot), ("blueprint", e.blueprint), ("tempo", e.tempo))
    details = [f"{key} {value}" for key, value in given if value is not None]
    if e.alpha_target is not None:
        details.append(f"alpha_target {_value(e.alpha_target)}")
    verdict = "accepted" if e.accepted else f"rejected: {display(e.error)}"
    return (
        f"epoch {e.epoch}: {e.op}{' ' + ', '.join(details) if details else ''} — {verdict} "
        f"({e.reason})"
    )


def _reward_line(e: RewardComputed) -> str:
    parts = [f"{name} {display(value, '.3f')}" for name, value in e.components]
    return f"epoch {e.epoch}: total {display(e.total, '.3f')}" + (
        f" ({', '.join(parts)})" if parts else ""
    )


def _episode_line(e: EpisodeFinished) -> str:
    return (
        f"episode {e.episode}: {e.length} steps, return {display(e.episode_return, '.3f')}, "
        f"final acc {percent(e.final_val_accuracy)}{', terminated' if e.terminated else ''}"
    )


def _update_line(e: PPOUpdate) -> str:
    return (
        f"round {e.round}: policy loss {display(e.policy_loss, '.4g')}, "
        f"value loss {display(e.value_loss, '.4g')}, entropy {display(e.entropy, '.4g')}, "
        f"kl {display(e.approx_kl, '.4g')}, clip {display(e.clip_fraction, '.4g')}, "
        f"EV {display(e.explained_variance, '.4g')}, "
        f"mean return {display(e.mean_return, '.4g')}"
    )


def _started_line(e: RunStarted) -> str:
    resumed = e.resumed_from_epoch
    return (
        f"{e.mode} {e.task} seed {e.seed}, {e.max_epochs} epochs, slots {_value(e.slots)}"
        f"{'' if resumed is None else f', resumed from {resumed}'}"
    )


def _model(status: str) -> str:
    """What the summary's model is: the final one of a run that ended, the last checkpointed
    one of a run stopped (Ctrl-C, SIGTERM) or failed, which may go on (``--resume``)."""
    return "final model" if status in ("completed", "terminated") else "model so far"


def _finished_line(e: RunFinished) -> str:
    return (
        f"{e.status}: {e.epochs} epochs, {_model(e.status)} acc {percent(e.final_val_accuracy)} "
        f"(best epoch {percent(e.best_val_accuracy)}), {e.param_count:,} params, "
        f"{e.fossilized} fossilized, {e.pruned} pruned"
    )


def _ppo_finished_line(e: PPORunFinished) -> str:
    return (
        f"{e.status}: {counted(e.rounds, 'round')}, final mean return "
        f"{display(e.final_mean_return, '.3f')}, "
        f"final mean acc {percent(e.final_mean_accuracy)}"
    )


_LINES: dict[type[Any], Callable[[Any], str]] = {
    RunStarted: _started_line,
    EpochCompleted: _epoch_line,
    SeedTransition: _transition_line,
    ActionTaken: _action_line,
    RewardComputed: _reward_line,
    EpisodeFinished: _episode_line,
    PPOUpdate: _update_line,
    RunFinished: _finished_line,
    PPORunFinished: _ppo_finished_line,
}
"""Events with a dedicated line, by type; every other event lists its fields as ``key=value``."""


def log_text(item: Logged) -> str:
    """One event as a log line: local time, environment and episode (PPO), event, details."""
    where = "" if item.env is None else f" env {item.env}"
    if item.env is not None and item.episode is not None:
        where += f" ep {item.episode}"
    describe = _LINES.get(type(item.event), _generic)
    return f"{_clock(item.t)}{where} {item.name}: {describe(item.event)}"


def _clock(stamp: float) -> str:
    """A unix time as local "HH:MM:SS"; "--:--:--" for one that is no time (NaN, out of range:
    a log is untrusted input)."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(stamp))
    except (ValueError, OverflowError, OSError):
        return "--:--:--"
