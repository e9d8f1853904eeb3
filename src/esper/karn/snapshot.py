"""What the dashboard's page draws: a folded run (``esper.nissa.fold.RunState``) as plain JSON.

The server folds a run's events and sends ``snapshot(state)``; the page's JavaScript only draws
it — every number, label and series below is decided here, once. Series are column arrays (one
list per field, as chart libraries take them); a value that was not measured is ``null``, never 0.

Layout::

    run       name, mode, task, seed, status (``unfinished`` while the latest attempt has no
              end record: running, or crashed, as ``esper runs list`` says), attempts,
              max_epochs (episode length)
    header    [{label, value}]: the run-level numbers, labelled, formatted for people
    slots     slot names in execution order
    envs      [{env, panics, slots_now, results, episodes}] — one per environment (a
              single-model run has one, env null); ``episodes`` are the ones the fold keeps in
              detail, each {episode, epochs (columns), timeline, marks}; ``results`` is every
              finished episode {episode, episode_return, final_val_accuracy} (PPO)
    rounds    columns per PPO round: round, mean_return, mean_final_accuracy, mean_reward,
              entropy, approx_kl, clip_fraction, explained_variance, policy_loss, value_loss,
              ops and entered (dicts per round)
    events    {count, counts, recent: [{n, t, env, episode, event, text}]}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from esper.leyline.config import measured
from esper.leyline.events import EpochCompleted, RunFinished, event_record
from esper.nissa.fold import EnvState, Episode, RunState, episode_less
from esper.nissa.log import Logged, display, percent
from esper.nissa.record import UNFINISHED

RECENT_SHOWN = 15
"""Events listed on the page (the newest first)."""

EPOCH_FIELDS = ("train_accuracy", "val_accuracy", "train_loss", "val_loss", "param_count")
"""Per-epoch columns of an episode's series (besides its x, ``epoch``)."""

ROUND_FIELDS = (
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "policy_loss",
    "value_loss",
)
"""``PPOUpdate`` statistics sent per round (besides return and accuracy)."""

_ENVELOPE = frozenset({"event", "t", "run_id", "env", "episode", "slots", "components"})


def _columns(epochs: Sequence[EpochCompleted]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {"epoch": [e.epoch for e in epochs]}
    for name in EPOCH_FIELDS:
        columns[name] = [measured(getattr(e, name)) for e in epochs]
    return columns


def _episode(episode: Episode, slots: Sequence[str]) -> dict[str, Any]:
    return {
        "episode": episode.number,
        "epochs": _columns(episode.epochs),
        "timeline": {
            slot: [
                {"stage": s.stage.value, "start": s.start, "end": s.end, "blueprint": s.blueprint}
                for s in spans
            ]
            for slot, spans in episode.timeline(slots).items()
        },
        "marks": [
            {"epoch": m.epoch, "slot": m.slot, "kind": m.kind, "blueprint": m.blueprint}
            for m in episode.marks()
        ],
    }


def describe(item: Logged) -> str:
    """An event in one line: its fields as ``key=value`` (nested ones left out)."""
    parts = []
    for key, value in event_record(item.event).items():
        if key in _ENVELOPE or isinstance(value, list | dict):
            continue
        if isinstance(value, float):
            value = display(measured(value), ".4g")
        parts.append(f"{key}={display(value)}")
    return " ".join(parts)


def _header(state: RunState) -> list[dict[str, str]]:
    rows: list[tuple[str, str]] = []
    started = state.started
    if state.is_ppo:
        last = state.rounds[-1].update if state.rounds else None
        envs = len([k for k in state.envs if k is not None])
        where = "" if last is None else f" (round {last.round})"
        rows += [
            ("rounds", display(None if last is None else last.round, ",d")),
            ("environments", display(envs or None)),
            ("env steps", display(None if last is None else last.env_steps, ",d")),
            (f"mean return{where}", display(None if last is None else last.mean_return, ".3f")),
            (
                f"mean final val accuracy over environments{where}",
                percent(None if last is None else measured(last.mean_final_accuracy)),
            ),
            ("anomalies", f"{len(state.anomalies):,}"),
            ("ratio explosions", f"{len(state.explosions):,}"),
        ]
    elif (finish := episode_less(state)) is not None:
        rows += _finish_rows(state, finish)
    else:
        episode = state.episode()
        latest = episode.latest
        planned = None if started is None else started.max_epochs
        where = "" if latest is None else f" (epoch {latest.epoch})"
        loss = None if latest is None else measured(latest.val_loss)
        rows += [
            ("epoch", f"{display(None if latest is None else latest.epoch)} / {display(planned)}"),
            (
                f"val accuracy{where}",
                percent(None if latest is None else measured(latest.val_accuracy)),
            ),
            (
                f"val loss{where}",
                display(loss, ".4f"),
            ),
            ("best val accuracy", percent(episode.best_val_accuracy())),
            ("parameters", display(None if latest is None else latest.param_count, ",d")),
            ("governor panics", f"{sum(env.panics for env in state.envs.values()):,}"),
        ]
    rows.append(("events", f"{state.events:,}"))
    return [{"label": label, "value": value} for label, value in rows]


def _finish_rows(state: RunState, finish: RunFinished) -> list[tuple[str, str]]:
    """A finished growth run's header rows from its end record alone (``episode_less``)."""
    planned = None if state.started is None else state.started.max_epochs
    return [
        ("epoch", f"{finish.epochs} / {display(planned)}"),
        ("final model val accuracy", percent(finish.final_val_accuracy)),
        ("best val accuracy", percent(finish.best_val_accuracy)),
        ("parameters", display(finish.param_count, ",d")),
        ("governor panics", f"{sum(env.panics for env in state.envs.values()):,}"),
    ]


def snapshot(
    state: RunState,
    name: str,
    recent: int = RECENT_SHOWN,
    text: Callable[[Logged], str] = describe,
) -> dict[str, Any]:
    """The page's data for the run ``name`` folded into ``state`` (see the module docstring).

    Args:
        state: the folded run.
        name: the run directory's name.
        recent: how many of the latest events to list.
        text: an event's one-line description.

    Raises:
        ValueError: the log names a slot that does not exist.
    """
    started = state.started
    slots = state.slots()
    return {
        "run": {
            "name": name,
            "mode": state.mode,
            "task": None if started is None else started.task,
            "seed": None if started is None else started.seed,
            "status": state.status or (UNFINISHED if started is not None else None),
            "attempts": state.attempts,
            "max_epochs": None if started is None else started.max_epochs,
        },
        "header": _header(state),
        "slots": list(slots),
        "envs": [_env(key, state.envs[key], slots) for key in state.env_keys()],
        "rounds": {
            "round": [r.update.round for r in state.rounds],
            "mean_return": [measured(r.update.mean_return) for r in state.rounds],
            "mean_final_accuracy": [measured(r.update.mean_final_accuracy) for r in state.rounds],
            "mean_reward": [measured(r.mean_reward) for r in state.rounds],
            **{f: [measured(getattr(r.update, f)) for r in state.rounds] for f in ROUND_FIELDS},
            "ops": [r.ops for r in state.rounds],
            "entered": [r.entered for r in state.rounds],
        },
        "events": _events(state, recent, text),
    }


def _env(key: int | None, env: EnvState, slots: Sequence[str]) -> dict[str, Any]:
    """One environment's part of the snapshot: its seeds now, results and episodes."""
    now = env.latest.slots if env.latest is not None else ()
    return {
        "env": key,
        "panics": env.panics,
        "slots_now": [
            {k: measured(v) if isinstance(v, float) else v for k, v in vars(s).items()} for s in now
        ],
        "results": [
            {
                "episode": r.episode,
                "episode_return": measured(r.episode_return),
                "final_val_accuracy": measured(r.final_val_accuracy),
            }
            for r in env.results
        ],
        "episodes": [_episode(e, slots) for e in env.episodes],
    }


def _events(state: RunState, recent: int, text: Callable[[Logged], str]) -> dict[str, Any]:
    """The event counts and the latest ``recent`` events, numbered from the log's start."""
    first = state.events - len(state.recent) + 1
    listed = list(state.recent)[-recent:] if recent else []
    offset = first + len(state.recent) - len(listed)
    return {
        "count": state.events,
        "counts": dict(state.counts),
        "recent": [
            {
                "n": offset + i,
                "t": item.t,
                "env": item.env,
                "episode": item.episode,
                "event": item.name,
                "text": text(item),
            }
            for i, item in enumerate(listed)
        ],
    }
