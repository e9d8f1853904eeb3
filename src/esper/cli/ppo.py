"""``esper ppo``: train a growth policy with PPO; ``--resume`` continues one exactly.

A PPO run directory holds ``config.json`` (the resolved ``TrainingConfig``), ``meta.json``
(git revision, versions, seeds, command line), ``events.jsonl`` (every environment's events with
``env``/``episode`` keys, plus PPO updates), ``rounds.csv`` (one row per round),
``checkpoints/ppo.pt`` (everything needed to resume, and the policy ``esper eval`` runs) and,
once the run stops, ``summary.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from esper.cli.main import EXIT_INTERRUPTED, UserError
from esper.cli.session import (
    _git_revision,
    _interrupts_deferred,
    _recorded_status,
    _versions,
    _write_atomic,
    _write_json,
    default_out,
    new_run_directory,
    require_sinks,
    run_sinks,
)
from esper.data import DatasetNotFoundError
from esper.leyline.events import PPORunFinished, RunStarted, TelemetryLevel
from esper.nissa import TelemetryHub
from esper.nissa.log import display, percent
from esper.nissa.sinks import ConsoleSink
from esper.seeding import seed_everything
from esper.simic.build import (
    build_trainer,
    load_task_data,
    read_checkpoint,
    save_checkpoint,
)
from esper.simic.config import TrainingConfig, load_config_json, load_preset
from esper.simic.env import EpisodeStartError
from esper.simic.training import POLICY_SEED_OFFSET, PPOTrainer, RoundResult
from esper.simic.vector import describe_device_map

EXIT_FAILED = 1
"""Training started but could not go on (e.g. a governor panic on an episode's first epoch)."""

ROUND_FIELDS = (
    "round",
    "env_steps",
    "mean_return",
    "mean_final_accuracy",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "passes",
    "seconds_rollout",
    "seconds_update",
)

_FLAG_FIELDS = {  # command-line flag dest → (group, field)
    "task": ("env", "task"),
    "episode_length": ("env", "episode_length"),
    "data_dir": ("env", "data_dir"),
    "envs": ("ppo", "n_envs"),
    "rounds": ("ppo", "rounds"),
    "reward_family": ("reward", "family"),
    "reward_mode": ("reward", "mode"),
    "seed": ("runtime", "seed"),
    "devices": ("runtime", "devices"),
    "telemetry": ("runtime", "telemetry"),
}
"""Every ``esper ppo`` flag that sets a config field, and the field it sets."""


def resolve_config(args: argparse.Namespace) -> TrainingConfig:
    """Defaults ← ``--preset`` ← ``--config-json`` ← flags, then the task's derived defaults.

    Raises:
        UserError: for an unknown preset, a bad JSON file or a bad value.
    """
    try:
        config = load_preset(args.preset or "default")
        if args.config_json is not None:
            config = load_config_json(args.config_json, config)
        overrides: dict[str, dict[str, Any]] = {}
        for dest, (group, name) in _FLAG_FIELDS.items():
            value = vars(args)[dest]
            if value is not None:
                value = str(value) if isinstance(value, Path) else value
                overrides.setdefault(group, {})[name] = list(value) if dest == "devices" else value
        if args.no_download:
            overrides.setdefault("env", {})["download"] = False
        if args.amp:
            overrides.setdefault("runtime", {})["amp"] = True
        if args.tensorboard:
            overrides.setdefault("runtime", {})["tensorboard"] = True
        return TrainingConfig.from_dict(overrides, config).resolved()
    except ValueError as err:
        raise UserError(str(err)) from err


def _meta(config: TrainingConfig, run_id: str) -> dict[str, Any]:
    seed = config.runtime.seed
    return {
        "run_id": run_id,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": sys.argv,
        "git_revision": _git_revision(),
        "versions": _versions(),
        "seeds": {
            "run": seed,
            "environments": [seed + i for i in range(config.ppo.n_envs)],
            "policy": seed + POLICY_SEED_OFFSET,
        },
    }


def _row(result: RoundResult, accuracies: list[float | None]) -> dict[str, Any]:
    s = result.stats
    finite = [a for a in accuracies if a is not None]
    returns = result.episode_returns
    return {
        "round": result.round,
        "env_steps": result.env_steps,
        "mean_return": sum(returns) / len(returns),
        "mean_final_accuracy": sum(finite) / len(finite) if finite else None,
        "policy_loss": s.policy_loss,
        "value_loss": s.value_loss,
        "entropy": s.entropy,
        "approx_kl": s.approx_kl,
        "clip_fraction": s.clip_fraction,
        "explained_variance": s.explained_variance,
        "passes": s.passes,
        "seconds_rollout": round(result.seconds_rollout, 3),
        "seconds_update": round(result.seconds_update, 3),
    }


_COUNTS = ("round", "env_steps", "passes")
_ALWAYS = (*_COUNTS, "mean_return", "seconds_rollout", "seconds_update")
"""Columns every recorded round has (the others are null when not measured)."""


def _read_rows(path: Path, last_round: int) -> list[dict[str, Any]]:
    """The rows of ``rounds.csv`` up to ``last_round``, as numbers (None where empty).

    Raises:
        ValueError: other columns than ``ROUND_FIELDS``, or a value that is not a number.
    """
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != list(ROUND_FIELDS):
            raise ValueError(f"columns {reader.fieldnames} are not {list(ROUND_FIELDS)}")
        rows: list[dict[str, Any]] = []
        for line, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {
                k: int(v) if k in _COUNTS else _number(v) for k, v in raw.items()
            }
            missing = [k for k in _ALWAYS if row[k] is None]
            if missing:
                raise ValueError(f"line {line} has no {', '.join(missing)}")
            rows.append(row)
    return [r for r in rows if int(r["round"]) <= last_round]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROUND_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, buffer.getvalue())


def _load_resume(directory: Path) -> tuple[TrainingConfig, dict[str, Any]]:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"{str(directory)!r} is not an Esper PPO run directory (no config.json)")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
        config = TrainingConfig.from_dict(data).resolved()
        state = read_checkpoint(directory / "checkpoints" / "ppo.pt")
    except (OSError, ValueError) as err:  # PolicyCheckpointError is a ValueError
        raise UserError(f"cannot resume from {str(directory)!r}: {err}") from err
    return config, state


def _build(config: TrainingConfig, hub: TelemetryHub) -> tuple[PPOTrainer, str]:
    seed_everything(config.runtime.seed)
    try:
        data = load_task_data(config, progress=sys.stderr.isatty())
        trainer, devices = build_trainer(config, hub, data)
    except DatasetNotFoundError as err:
        raise UserError(str(err).splitlines()[0]) from err
    except (ValueError, KeyError) as err:
        raise UserError(str(err)) from err
    return trainer, describe_device_map(devices)


def _resumed(args: argparse.Namespace) -> tuple[TrainingConfig, dict[str, Any]]:
    """The configuration and checkpoint ``--resume`` continues.

    Raises:
        UserError: a flag that would change the recorded configuration, a completed run, or an
            unreadable run directory.
    """
    given = [f"--{d.replace('_', '-')}" for d in _FLAG_FIELDS if vars(args)[d] is not None]
    switches = [("--no-download", args.no_download), ("--amp", args.amp)]
    switches += [("--tensorboard", args.tensorboard)]
    given += [f for f, on in switches if on]
    given += [f for f, v in (("--out", args.out), ("--config-json", args.config_json)) if v]
    given += ["--preset"] if args.preset is not None else []
    if given:
        raise UserError(f"--resume continues a run as configured; drop {', '.join(given)}")
    if _recorded_status(args.resume / "summary.json") == "completed":
        raise UserError(f"run {str(args.resume)!r} already completed; nothing to resume")
    return _load_resume(args.resume)


def run_ppo(args: argparse.Namespace) -> int:
    """``esper ppo``."""
    if args.resume is not None:
        config, state = _resumed(args)
    else:
        config, state = resolve_config(args), None
    print(f"esper ppo: {json.dumps(config.to_dict())}", file=sys.stderr)
    hub = TelemetryHub("", [], TelemetryLevel.parse(config.runtime.telemetry))
    trainer, device_map = _build(config, hub)  # every input error surfaces before any write
    require_sinks(config.runtime.tensorboard)
    print(f"device map:\n{device_map}", file=sys.stderr)
    if state is not None:
        try:
            trainer.load_state_dict(state["trainer"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise UserError(f"cannot resume from {str(args.resume)!r}: {err}") from err
        directory = args.resume
        try:
            rows = _read_rows(directory / "rounds.csv", trainer.round)
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"cannot resume from {str(directory)!r}: rounds.csv: {err}") from err
        _write_rows(directory / "rounds.csv", rows)
        (directory / "summary.json").unlink(missing_ok=True)
    else:
        directory = new_run_directory(args.out or default_out(config.env.task, "ppo"))
        _write_json(directory / "config.json", config.to_dict())
        _write_json(directory / "meta.json", _meta(config, directory.name))
        _write_rows(directory / "rounds.csv", [])
        save_checkpoint(directory / "checkpoints" / "ppo.pt", trainer)
        rows = []
    hub.run_id = directory.name
    console = ConsoleSink(
        sys.stderr, "ppo", config.ppo.rounds, trainer.round, bar=sys.stderr.isatty()
    )
    hub.sinks.extend(run_sinks(directory, config.runtime.tensorboard))
    hub.unfiltered.append(console)
    hub.emit(
        RunStarted(
            directory.name,
            "ppo",
            config.env.task,
            config.runtime.seed,
            config.env.episode_length,
            config.env.slots,
            None if state is None else trainer.round,
        )
    )
    status, failure = "completed", ""
    saved = [trainer.round]  # the round the checkpoint (and rounds.csv) describes

    def record(result: RoundResult) -> None:
        accuracies = [env.episode_info().final_val_accuracy for env in trainer.vec.envs]
        row = _row(result, accuracies)
        with _interrupts_deferred():  # the round's row and checkpoint land together
            rows.append(row)
            _write_rows(directory / "rounds.csv", rows)
            save_checkpoint(directory / "checkpoints" / "ppo.pt", trainer)
            saved[0] = trainer.round

    try:
        trainer.train(record)
    except KeyboardInterrupt:
        status = "interrupted"
    except EpisodeStartError as err:  # broken settings found only once training started
        status, failure = "failed", str(err)
    except BaseException:
        hub.close()  # an unexpected failure: keep what was logged, release the files
        raise
    checkpoint_round = saved[0]  # a round cut short by Ctrl-C left no row and no checkpoint
    summary = _summary(config, status, rows)
    hub.emit(
        PPORunFinished(
            status,
            checkpoint_round,
            summary["env_steps"],
            summary["final_mean_return"],
            summary["best_mean_return"],
            summary["final_mean_accuracy"],
            summary["seconds"],
        )
    )
    hub.close()
    _write_json(directory / "summary.json", summary)
    return _farewell(status, failure, summary, directory, checkpoint_round)


def _farewell(
    status: str, failure: str, summary: dict[str, Any], directory: Path, checkpoint_round: int
) -> int:
    """Say how the run ended and return the command's exit code."""
    if status == "failed":
        print(f"esper: error: {failure} (run recorded in {directory})", file=sys.stderr)
        return EXIT_FAILED
    if status == "interrupted":
        print(
            f"\ninterrupted: round {checkpoint_round} checkpointed; continue with: "
            f"esper ppo --resume {directory}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    task = summary["task"]
    print(
        f"ppo {task}: {checkpoint_round} rounds, mean return "
        f"{display(summary['final_mean_return'], '.3f')}, final accuracy "
        f"{percent(summary['final_mean_accuracy'])} -> {directory}\n"
        f"run the policy with: esper eval --policy {directory} --task {task}"
    )
    return 0


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _summary(config: TrainingConfig, status: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's summary from its recorded (checkpointed) rounds, whatever the attempts.

    ``seconds`` is the rollout and update time summed over those rounds, as a heuristic run's
    ``wall_seconds`` sums its epochs, so a resumed run counts every attempt's rounds once.
    """
    seconds = sum(row["seconds_rollout"] + row["seconds_update"] for row in rows)
    returns = [r for r in (_number(row["mean_return"]) for row in rows) if r is not None]
    final = rows[-1] if rows else None
    return {
        "status": status,
        "mode": "ppo",
        "task": config.env.task,
        "seed": config.runtime.seed,
        "rounds_completed": len(rows),
        "rounds_planned": config.ppo.rounds,
        "env_steps": None if final is None else int(final["env_steps"]),
        "final_mean_return": None if final is None else _number(final["mean_return"]),
        "best_mean_return": max(returns) if returns else None,
        "final_mean_accuracy": None if final is None else _number(final["mean_final_accuracy"]),
        "seconds": round(seconds, 3),
        "config": asdict(config),
    }
