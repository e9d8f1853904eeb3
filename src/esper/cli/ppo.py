"""``esper ppo``: train a growth policy with PPO; ``--resume`` continues one exactly.

A PPO run directory is a run record (``esper.nissa.record``): ``config.json`` (the resolved
``TrainingConfig``, a valid ``--config``), ``meta.json``, ``events.jsonl`` (every environment's
events with ``env``/``episode`` keys, plus PPO updates), ``rounds.csv`` (one ``PPOUpdate`` per
round), ``checkpoints/`` (after every round: everything needed to resume, and the policy
``esper eval --policy RUN`` runs) and, once the run stops, ``summary.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from esper.cli.config import RunOptions, layered, parse_flags
from esper.cli.main import EXIT_INTERRUPTED, RUN_COMMANDS, UserError
from esper.cli.run import (
    EXIT_FAILED,
    Recorder,
    Stop,
    announce,
    check_out,
    check_recorded_mode,
    check_sinks,
    interrupted_hint,
    load_data,
    set_threads,
)
from esper.leyline.config import override
from esper.leyline.events import PPORunFinished, PPOUpdate, TelemetryLevel
from esper.nissa import TelemetryHub, record
from esper.nissa.log import display, percent
from esper.seeding import seed_everything
from esper.simic.build import build_trainer, trainer_state
from esper.simic.config import PRESETS, TrainingConfig, load_preset
from esper.simic.env import EpisodeStartError
from esper.simic.training import POLICY_SEED_OFFSET
from esper.simic.vector import describe_device_map
from esper.simic.workers import RayVectorEnv, WorkerLostError, start_ray


def _preset(argv: list[str]) -> tuple[str, list[str]]:
    """``--preset NAME`` taken out of ``argv`` (default ``default``)."""
    for i, item in enumerate(argv):
        flag, eq, value = item.partition("=")
        if flag == "--preset":
            name = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            rest = argv[:i] + argv[i + (1 if eq else 2) :]
            if not name or name.startswith("--"):
                raise UserError(f"--preset needs a name; known presets: {', '.join(PRESETS)}")
            if name not in PRESETS:
                raise UserError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
            return name, rest
    return "default", argv


def parse(argv: list[str], options: RunOptions) -> TrainingConfig:
    """Defaults ← ``--preset`` ← ``--config`` ← flags, resolved; or the recorded config.

    Raises:
        UserError: for an unknown preset, a bad file, flag or value.
    """
    try:
        if options.resume is not None:
            check_recorded_mode(options.resume, "ppo")
            data = record.read_config(options.resume)
            config: TrainingConfig = override(TrainingConfig(), data)
            return config.resolved()
        name, argv = _preset(argv)
        base = layered(load_preset(name), options)
        description = f"{RUN_COMMANDS['ppo']}; --preset NAME first: {', '.join(PRESETS)}"
        return parse_flags(TrainingConfig, argv, "esper ppo", description, base).resolved()
    except (record.RunRecordError, ValueError) as err:
        raise UserError(str(err)) from err


class PPORunner:
    """A prepared PPO run: data, environments and trainer, built before any file is written."""

    def __init__(self, config: TrainingConfig, options: RunOptions) -> None:
        self.config = config = replace(config, env=set_threads(config.env))
        self.threads = torch.get_num_threads()
        seed_everything(config.runtime.seed)
        check_sinks(config.telemetry.tensorboard)
        check_out(options)  # before the data loads: bad input fails at once
        data = load_data(config.env)
        self.hub = TelemetryHub("", [], TelemetryLevel.parse(config.telemetry.level))
        try:
            self.trainer, devices = build_trainer(config, self.hub, data)
        except (ValueError, KeyError) as err:
            raise UserError(str(err)) from err
        print(f"device map:\n{describe_device_map(devices)}", file=sys.stderr)
        if isinstance(self.trainer.vec, RayVectorEnv):
            print(self.trainer.vec.describe(), file=sys.stderr)
        self.recorder = Recorder.open(
            "ppo", config, options, PPOUpdate, self._meta, self.hub, self._state
        )
        if self.recorder.checkpoint is not None:
            self._restore(self.recorder.state())

    def _meta(self, run_id: str) -> record.RunMeta:
        seed = self.config.runtime.seed
        seeds = {
            "run": seed,
            "environments": [seed + i for i in range(self.config.ppo.n_envs)],
            "policy": seed + POLICY_SEED_OFFSET,
        }
        return record.run_meta(run_id, "ppo", seeds, self.threads, sys.argv)

    def _state(self) -> dict[str, Any]:
        return trainer_state(self.trainer)

    def _restore(self, state: dict[str, Any]) -> None:
        where = f"cannot resume {str(self.recorder.directory)!r}"
        try:
            self.trainer.load_state_dict(state["trainer"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise UserError(f"{where}: {err}") from err
        self.recorder.check_step(self.trainer.round, self.config.ppo.rounds, "round")

    def run(self) -> tuple[str, str]:
        """Train the remaining rounds, committing each; return (status, failure message).

        Raises:
            Stop: Ctrl-C or SIGTERM (summarised as interrupted first; a round in progress is
                abandoned: the last completed round is the checkpoint).
        """
        config, recorder = self.config, self.recorder
        recorder.start("ppo", config.env, config.runtime.seed, config.telemetry.tensorboard)
        recorder.console("ppo", config.ppo.rounds)

        def step(held: Callable[[], AbstractContextManager[None]]) -> None:
            result = self.trainer.run_round()  # a round cut short by a stop leaves no trace
            with held():
                recorder.commit(self.trainer.round, result.stats, self._state())

        # EpisodeStartError: broken settings found only once training started;
        # WorkerLostError: Ray actors kept dying (the run resumes from its last round).
        status, failure = recorder.drive(
            step,
            lambda: self.trainer.round >= config.ppo.rounds,
            self._finish,
            (EpisodeStartError, WorkerLostError),
        )
        if status == "failed":
            return status, failure or ""
        self._finish("completed", None)
        return "completed", ""

    def close(self) -> None:
        """Stop the environments' Ray actors, if any (Ray itself is ``start_workers``')."""
        if isinstance(self.trainer.vec, RayVectorEnv):
            self.trainer.vec.close()

    def _finish(self, status: str, failure: str | None) -> None:
        summary = self.summary(status, failure)
        ppo = summary.ppo
        assert ppo is not None
        rounds = len(self.recorder.rows)
        finished = PPORunFinished(
            status,
            rounds,
            ppo.env_steps,
            ppo.final_mean_return,
            ppo.best_mean_return,
            ppo.final_mean_accuracy,
            summary.wall_seconds,
        )
        self.recorder.finish(summary, finished)

    def summary(self, status: str, failure: str | None) -> record.RunSummary:
        """The summary from the recorded (checkpointed) rounds, whatever the attempts.

        ``wall_seconds`` sums those rounds' rollout and update time, so a resumed run counts
        every attempt's rounds once.
        """
        rows: list[PPOUpdate] = self.recorder.rows
        final = rows[-1] if rows else None
        returns = [r.mean_return for r in rows if r.mean_return is not None]
        ppo = record.PPOSummary(
            rounds_completed=len(rows),
            rounds_planned=self.config.ppo.rounds,
            env_steps=None if final is None else final.env_steps,
            final_mean_return=None if final is None else final.mean_return,
            best_mean_return=max(returns) if returns else None,
            final_mean_accuracy=None if final is None else final.mean_final_accuracy,
        )
        seconds = round(sum(r.seconds_rollout + r.seconds_update for r in rows), 3)
        c = self.config
        run_id = self.recorder.run_id
        return record.RunSummary(
            status, "ppo", c.env.task, c.runtime.seed, run_id, seconds, failure, ppo=ppo
        )


def start_workers(config: TrainingConfig, options: RunOptions, stack: ExitStack) -> TrainingConfig:
    """With ``--workers``: Ray started (or joined) for the run and stopped when ``stack``
    closes; returns ``config`` with the per-worker thread count. Without: ``config``, and Ray
    is not imported (``esper.simic.workers`` imports it only inside its functions).

    Raises:
        UserError: the cluster cannot be reached, or the workers' threads exceed the cores.
    """
    if config.runtime.workers is None:
        return config
    check_out(options)  # a bad --out fails before Ray starts
    try:
        config, stop = start_ray(config)
    except ValueError as err:
        raise UserError(str(err)) from err
    stack.callback(stop)
    return config


def run_ppo(argv: list[str], options: RunOptions) -> int:
    """``esper ppo``."""
    with ExitStack() as stack:  # Ray, if started, stops on every way out
        config = start_workers(parse(argv, options), options, stack)
        runner = PPORunner(config, options)
        stack.callback(runner.close)
        announce("ppo", runner.config, options.resume)  # resolved and checked
        directory = runner.recorder.directory
        try:
            status, failure = runner.run()
        except Stop:
            interrupted_hint("ppo", directory, f"round {len(runner.recorder.rows)}")
            return EXIT_INTERRUPTED
        if status == "failed":
            print(f"esper: error: {failure} (run recorded in {directory})", file=sys.stderr)
            return EXIT_FAILED
        return _farewell(runner, directory)


def _farewell(runner: PPORunner, directory: Path) -> int:
    summary = runner.summary("completed", None)
    ppo = summary.ppo
    assert ppo is not None
    print(
        f"ppo {summary.task}: {ppo.rounds_completed} rounds, mean return "
        f"{display(ppo.final_mean_return, '.3f')}, final accuracy "
        f"{percent(ppo.final_mean_accuracy)} -> {directory}\n"
        f"run the policy with: esper eval --policy {directory}"
    )
    return 0
