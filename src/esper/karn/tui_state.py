"""The terminal UI's display state: event records folded into what the screen shows.

Pure Python (no Textual), so the fold is tested on its own and the UI only renders it. Records
come from ``esper.nissa.log`` (``EventTail.poll`` or ``read_events``): one dict per event-log
line. Their fields are read defensively — a field that is missing or of the wrong type shows as
"—" — because a log is untrusted input and a viewer must not crash on it.

Environments: heuristic, static and eval runs have one, keyed ``None`` (their records carry no
``env``); PPO runs key each environment by its ``env`` index. The accuracy history kept per
environment is the validation accuracy per epoch of its current episode (a PPO environment's
history restarts with each episode; a resumed run drops the epochs it redoes).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from esper.leyline.events import (
    ActionTaken,
    AnomalyDetected,
    EpisodeFinished,
    EpochCompleted,
    GovernorPanic,
    PPORunFinished,
    PPOUpdate,
    RatioExplosion,
    RewardComputed,
    RunFinished,
    RunStarted,
    SeedTransition,
)
from esper.nissa.log import PPO_MODE, display, percent

LOG_LINES = 5000
"""Event-log lines kept for the log panel: enough to scroll back through a few PPO rounds while
keeping a replay of a long run's log (hundreds of thousands of events) cheap to filter."""

_ENVELOPE = ("t", "run_id", "event", "env", "episode")
"""Keys every record carries besides its event's fields."""

PPO_FIELDS = tuple(f.name for f in fields(PPOUpdate) if f.name not in ("round", "env_steps"))
"""The ``PPOUpdate`` statistics the PPO panel shows: every field but the round's position."""


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a number (not a bool, not NaN), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value == value else None  # NaN is missing
    return None


def number(record: Mapping[str, Any], key: str) -> float | None:
    """``record[key]`` when it is a number, else None (missing, null or malformed)."""
    return as_number(record.get(key))


def integer(record: dict[str, Any], key: str) -> int | None:
    """``record[key]`` when it is an integer (not a bool), else None."""
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def text(record: dict[str, Any], key: str) -> str | None:
    """``record[key]`` when it is a string, else None."""
    value = record.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class SlotRow:
    """One slot as the last ``EpochCompleted`` of an environment reported it."""

    slot: str
    stage: str | None
    blueprint: str | None
    alpha: float | None
    contribution: float | None
    shapley: float | None
    seed_params: int | None


@dataclass
class EnvView:
    """One environment's latest numbers.

    Attributes:
        env: the environment index (None for a single-model run).
        episode: the episode of its latest record (None outside PPO).
        epoch: the latest completed epoch.
        val_accuracy: validation accuracy (percent) of that epoch.
        val_loss: validation loss of that epoch.
        params: active parameter count after that epoch.
        slots: the slots of that epoch, in the order the run reports them.
        history: ``(epoch, val_accuracy)`` of the current episode, oldest first.
        panics: governor panics seen.
    """

    env: int | None
    episode: int | None = None
    epoch: int | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    params: int | None = None
    slots: tuple[SlotRow, ...] = ()
    history: list[tuple[int, float | None]] = field(default_factory=list)
    panics: int = 0


@dataclass
class PPOView:
    """The latest PPO update and the run's anomaly counts.

    Attributes:
        round: the round of the latest ``PPOUpdate``.
        env_steps: environment steps so far.
        stats: the latest update's statistics (``PPO_FIELDS``; None when not measured).
        mean_returns: the mean return of every round so far.
        anomaly_rounds: the round of every ``AnomalyDetected`` event.
        explosion_rounds: the round of every ``RatioExplosion`` event.
    """

    round: int | None = None
    env_steps: int | None = None
    stats: dict[str, float | bool | None] = field(default_factory=lambda: dict.fromkeys(PPO_FIELDS))
    mean_returns: list[float | None] = field(default_factory=list)
    anomaly_rounds: list[int | None] = field(default_factory=list)
    explosion_rounds: list[int | None] = field(default_factory=list)

    @property
    def anomalies(self) -> int:
        """``AnomalyDetected`` events of the run as it finally happened."""
        return len(self.anomaly_rounds)

    @property
    def ratio_explosions(self) -> int:
        """``RatioExplosion`` events of the run as it finally happened."""
        return len(self.explosion_rounds)

    def rewind(self, saved: int) -> None:
        """Forget the rounds after ``saved``: a resume runs them again."""
        del self.mean_returns[saved:]
        for rounds in (self.anomaly_rounds, self.explosion_rounds):
            rounds[:] = [r for r in rounds if r is None or r <= saved]


@dataclass(frozen=True)
class LogLine:
    """One event as a line of the log panel; ``text`` includes the event name."""

    event: str
    text: str


class RunView:
    """Everything the terminal UI shows about one run, updated one record at a time.

    Args:
        log_lines: how many event-log lines to keep (the oldest are dropped).
    """

    def __init__(self, log_lines: int = LOG_LINES) -> None:
        self.run_id: str | None = None
        self.mode: str | None = None
        self.task: str | None = None
        self.max_epochs: int | None = None
        self.status: str | None = None  # the end status once the run (this attempt) stopped
        self.finish: dict[str, Any] | None = None  # the RunFinished / PPORunFinished record
        self.envs: dict[int | None, EnvView] = {}
        self.ppo = PPOView()
        self.log: deque[LogLine] = deque(maxlen=log_lines)
        self.events = 0

    @property
    def finished(self) -> bool:
        """Whether the run's latest attempt has ended (a resume starts a new attempt)."""
        return self.status is not None

    @property
    def is_ppo(self) -> bool:
        """Whether this is a PPO training run (several environments, PPO updates)."""
        return self.mode == PPO_MODE

    def env_keys(self) -> list[int | None]:
        """The environments seen so far, in order (None, a single-model run's, first)."""
        return sorted(self.envs, key=lambda key: -1 if key is None else key)

    def env(self, key: int | None) -> EnvView:
        """The view of environment ``key``, created on first use."""
        if key not in self.envs:
            self.envs[key] = EnvView(key)
        return self.envs[key]

    def apply(self, record: dict[str, Any]) -> LogLine:
        """Fold one record into the view and return its log line (also kept in ``log``)."""
        self.events += 1
        event = str(record.get("event"))
        env_key = integer(record, "env")
        if event == RunStarted.__name__:
            self._started(record)
        elif event in (RunFinished.__name__, PPORunFinished.__name__):
            self.status = text(record, "status") or "unknown"
            self.finish = record
        elif event == EpochCompleted.__name__:
            self._epoch(self.env(env_key), record)
        elif event == EpisodeFinished.__name__:
            self.env(env_key).episode = integer(record, "episode")
        elif event == GovernorPanic.__name__:
            self.env(env_key).panics += 1
        elif event == PPOUpdate.__name__:
            self.ppo.round = integer(record, "round")
            self.ppo.env_steps = integer(record, "env_steps")
            self.ppo.stats = {  # a statistic is a number or a bool (e.g. early stopped)
                key: v if isinstance(v := record.get(key), bool) else as_number(v)
                for key in PPO_FIELDS
            }
            self.ppo.mean_returns.append(number(record, "mean_return"))
        elif event == AnomalyDetected.__name__:
            self.ppo.anomaly_rounds.append(integer(record, "round"))
        elif event == RatioExplosion.__name__:
            self.ppo.explosion_rounds.append(integer(record, "round"))
        line = LogLine(event, log_text(record))
        self.log.append(line)
        return line

    def _started(self, record: dict[str, Any]) -> None:
        self.run_id = text(record, "run_id")
        self.mode = text(record, "mode")
        self.task = text(record, "task")
        self.max_epochs = integer(record, "max_epochs")
        self.status, self.finish = None, None  # a resumed run is live again
        saved = integer(record, "resumed_from_epoch")  # PPO runs: the last checkpointed round
        if saved is not None and self.is_ppo:
            self.ppo.rewind(saved)  # rounds after it are run again

    def _epoch(self, view: EnvView, record: dict[str, Any]) -> None:
        epoch = integer(record, "epoch")
        episode = integer(record, "episode")
        if episode != view.episode:
            view.history.clear()  # a new episode starts its history afresh
        view.episode = episode
        view.epoch = epoch
        view.val_accuracy = number(record, "val_accuracy")
        view.val_loss = number(record, "val_loss")
        view.params = integer(record, "param_count")
        slots = record.get("slots")
        view.slots = tuple(
            _slot_row(s) for s in (slots if isinstance(slots, list) else []) if isinstance(s, dict)
        )
        if epoch is not None:
            while view.history and view.history[-1][0] >= epoch:
                view.history.pop()  # epochs redone after a resume (or a rollback) replace theirs
            view.history.append((epoch, view.val_accuracy))


def _slot_row(data: dict[str, Any]) -> SlotRow:
    return SlotRow(
        slot=text(data, "slot") or "?",
        stage=text(data, "stage"),
        blueprint=text(data, "blueprint"),
        alpha=number(data, "alpha"),
        contribution=number(data, "contribution"),
        shapley=number(data, "shapley"),
        seed_params=integer(data, "seed_params"),
    )


def matches(line: LogLine, query: str) -> bool:
    """Whether ``line`` passes the log filter: a case-insensitive substring of its text."""
    return query.strip().lower() in line.text.lower()


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return display(value, spec)


def _value(value: Any) -> str:
    """A field value of any shape, compactly (for events without a dedicated line)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "—"
    if isinstance(value, list):
        if all(isinstance(v, list) and len(v) == 2 for v in value):
            return ",".join(f"{_value(k)}:{_value(v)}" for k, v in value)
        return ",".join(_value(v) for v in value) or "[]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))[:60]
    return str(value)


def _generic(record: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in record.items() if k not in _ENVELOPE)


def _epoch_line(r: dict[str, Any]) -> str:
    return (
        f"epoch {display(integer(r, 'epoch'))}: val acc {percent(number(r, 'val_accuracy'))} "
        f"loss {_fmt(number(r, 'val_loss'), '.4f')}, "
        f"train acc {percent(number(r, 'train_accuracy'))}, "
        f"{display(integer(r, 'param_count'))} params"
    )


def _transition_line(r: dict[str, Any]) -> str:
    return (
        f"epoch {display(integer(r, 'epoch'))}: {display(text(r, 'slot'))} "
        f"{display(text(r, 'blueprint'))}: {display(text(r, 'from_stage'))} → "
        f"{display(text(r, 'to_stage'))} ({display(text(r, 'reason'))})"
    )


def _action_line(r: dict[str, Any]) -> str:
    details = [
        f"{key} {_value(r.get(key))}"
        for key in ("slot", "blueprint", "tempo", "alpha_target")
        if r.get(key) is not None
    ]
    error = text(r, "error")
    verdict = "accepted" if r.get("accepted") is True else f"rejected: {display(error)}"
    return (
        f"epoch {display(integer(r, 'epoch'))}: {display(text(r, 'op'))}"
        f"{' ' + ', '.join(details) if details else ''} — {verdict} "
        f"({display(text(r, 'reason'))})"
    )


def _reward_line(r: dict[str, Any]) -> str:
    components = r.get("components")
    parts = [
        f"{c[0]} {_fmt(as_number(c[1]), '.3f')}"
        for c in (components if isinstance(components, list) else [])
        if isinstance(c, list) and len(c) == 2
    ]
    return (
        f"epoch {display(integer(r, 'epoch'))}: total {_fmt(number(r, 'total'), '.3f')}"
        f"{' (' + ', '.join(parts) + ')' if parts else ''}"
    )


def _episode_line(r: dict[str, Any]) -> str:
    return (
        f"episode {display(integer(r, 'episode'))}: {display(integer(r, 'length'))} steps, "
        f"return {_fmt(number(r, 'episode_return'), '.3f')}, "
        f"final acc {percent(number(r, 'final_val_accuracy'))}"
        f"{', terminated' if r.get('terminated') is True else ''}"
    )


def _update_line(r: dict[str, Any]) -> str:
    return (
        f"round {display(integer(r, 'round'))}: policy loss {_fmt(number(r, 'policy_loss'))}, "
        f"value loss {_fmt(number(r, 'value_loss'))}, entropy {_fmt(number(r, 'entropy'))}, "
        f"kl {_fmt(number(r, 'approx_kl'))}, clip {_fmt(number(r, 'clip_fraction'))}, "
        f"EV {_fmt(number(r, 'explained_variance'))}, "
        f"mean return {_fmt(number(r, 'mean_return'))}"
    )


def _started_line(r: dict[str, Any]) -> str:
    slots = r.get("slots")
    resumed = integer(r, "resumed_from_epoch")
    return (
        f"{display(text(r, 'mode'))} {display(text(r, 'task'))} seed {display(integer(r, 'seed'))}"
        f", {display(integer(r, 'max_epochs'))} epochs, slots {_value(slots)}"
        f"{'' if resumed is None else f', resumed from {resumed}'}"
    )


def _finished_line(r: dict[str, Any]) -> str:
    if r.get("event") == PPORunFinished.__name__:
        return (
            f"{display(text(r, 'status'))}: {display(integer(r, 'rounds'))} rounds, "
            f"final mean return {_fmt(number(r, 'final_mean_return'), '.3f')}, "
            f"final mean acc {percent(number(r, 'final_mean_accuracy'))}"
        )
    return (
        f"{display(text(r, 'status'))}: {display(integer(r, 'epochs'))} epochs, "
        f"final acc {percent(number(r, 'final_val_accuracy'))} "
        f"(best {percent(number(r, 'best_val_accuracy'))}), "
        f"{display(integer(r, 'param_count'))} params, "
        f"{display(integer(r, 'fossilized'))} fossilized, {display(integer(r, 'pruned'))} pruned"
    )


_LINES = {
    RunStarted.__name__: _started_line,
    EpochCompleted.__name__: _epoch_line,
    SeedTransition.__name__: _transition_line,
    ActionTaken.__name__: _action_line,
    RewardComputed.__name__: _reward_line,
    EpisodeFinished.__name__: _episode_line,
    PPOUpdate.__name__: _update_line,
    RunFinished.__name__: _finished_line,
    PPORunFinished.__name__: _finished_line,
}
"""Events with a dedicated line; every other event lists its fields as ``key=value``."""


def log_text(record: dict[str, Any]) -> str:
    """One record as a log line: local time, environment and episode (PPO), event, details."""
    stamp = number(record, "t")
    clock = "--:--:--" if stamp is None else time.strftime("%H:%M:%S", time.localtime(stamp))
    env, episode = integer(record, "env"), integer(record, "episode")
    where = "" if env is None else f" env {env}"
    if episode is not None and "env" in record:
        where += f" ep {episode}"
    event = str(record.get("event"))
    describe = _LINES.get(event, _generic)
    return f"{clock}{where} {event}: {describe(record)}"
