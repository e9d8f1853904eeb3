"""A PPO training run into its run directory (``esper ppo``, and a study's PPO arm).

A PPO run directory is a run record (``esper.nissa.record``): ``config.json`` (the resolved
``TrainingConfig``, a valid ``--config``), ``meta.json``, ``events.jsonl`` (every environment's
events with ``env``/``episode`` keys, plus PPO updates), ``rounds.csv`` (one ``PPOUpdate`` per
round), ``checkpoints/`` (after every round: everything needed to resume, and the policy
``esper eval --policy RUN`` runs) and, once the run stops, ``summary.json``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from esper.leyline.config import (
    PPO_RESUME_SETTINGS,
    UserError,
    config_dict,
    measured,
    override,
)
from esper.leyline.data import Dataset
from esper.leyline.events import PPORunFinished, PPOUpdate, TelemetryLevel
from esper.nissa import TelemetryHub, record
from esper.seeding import run_seeds, seed_everything
from esper.simic.build import build_trainer, check_resumable, trainer_state
from esper.simic.config import TrainingConfig
from esper.simic.env import EpisodeStartError
from esper.simic.ppo import check_amp
from esper.simic.vector import describe_device_map, parse_device
from esper.simic.workers import RayVectorEnv, WorkerLostError, start_ray
from esper.study.checks import (
    check_fits,
    check_out,
    check_same_config,
    check_sinks,
    load_data,
    set_threads,
    warn_slow_precision,
    warn_whole_splits,
)
from esper.study.run import Recorder
from esper.tasks import without_stray_data_dir
from esper.tolaria.threads import TooFewCores


def checked_data(config: TrainingConfig, out: Path | None, resume: Path | None) -> Dataset:
    """The run's data, once what a PPO run can check before it starts has passed: its
    telemetry sinks, ``--out``, the data itself and the memory its environments need here.

    Raises:
        UserError: naming what failed.
    """
    check_sinks(config.telemetry)
    check_out(out, resume)  # before the data loads: bad input fails at once
    data = load_data(config.env, resume)
    warn_whole_splits(config.env, data)
    on_cpu = tuple(config.runtime.devices) == ("cpu",)
    here = config.runtime.ray_address is None  # a cluster's CPUs are not this one's
    warn_slow_precision(config.env, on_cpu and here)
    if on_cpu:
        check_fits(config.env, data, _envs_here(config))
    return data


class PPORunner:
    """A prepared PPO run: data, environments and trainer, built before any file is written.

    ``data``: what ``checked_data`` returned for this run (the command checks it before Ray
    starts); None: checked and loaded here.
    """

    def __init__(
        self,
        config: TrainingConfig,
        out: Path | None = None,
        resume: Path | None = None,
        data: Dataset | None = None,
    ) -> None:
        self.config = config = replace(config, env=set_threads(config.env, resume))
        self.threads = torch.get_num_threads()
        seed_everything(config.runtime.seed)
        if data is None:
            data = checked_data(config, out, resume)
        self.data = data.receipt()  # what meta.json records (each Ray worker loads the same)
        self.hub = TelemetryHub("", [], TelemetryLevel.parse(config.telemetry.level))
        try:
            self.trainer, self.devices = build_trainer(config, self.hub, data)
        except (ValueError, KeyError) as err:
            raise UserError(str(err)) from err
        self.recorder = Recorder.open(
            "ppo",
            config,
            out,
            resume,
            PPOUpdate,
            self._meta,
            self.hub,
            self._state,
            config.ppo.rounds,
        )
        if self.recorder.checkpoint is not None:
            with self.recorder.releasing():
                self._restore(self.recorder.state())

    def describe(self) -> str:
        """Where the environments run: the device map, or the learner's device and the Ray
        workers."""
        if isinstance(self.trainer.vec, RayVectorEnv):
            return f"learner: {self.devices[0]}\n{self.trainer.vec.describe()}"
        return f"device map:\n{describe_device_map(self.devices)}"

    def _meta(self, run_id: str) -> record.RunMeta:
        seeds = run_seeds(self.config.runtime.seed, self.config.ppo.n_envs)
        return record.run_meta(run_id, "ppo", seeds, self.threads, sys.argv, self.data)

    def _state(self) -> dict[str, Any]:
        return trainer_state(self.trainer)

    def _restore(self, state: dict[str, Any]) -> None:
        where = f"cannot resume {str(self.recorder.directory)!r}"
        try:
            check_resumable(state)
            ran_with = override(TrainingConfig(), state["config"])
            ran = config_dict(replace(ran_with, env=without_stray_data_dir(ran_with.env)))
        except (KeyError, ValueError, TypeError) as err:  # ValueError: formats too
            raise UserError(f"{where}: {err}") from err
        check_same_config(self.recorder.directory, ran, config_dict(self.trainer.config))
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

        def begin() -> None:
            if recorder.checkpoint is not None:
                self._record_resume_flags()
            recorder.start("ppo", config.env, config.runtime.seed, config.telemetry)
            recorder.console("ppo", config.ppo.rounds)

        def step(held: Callable[[], AbstractContextManager[None]]) -> None:
            result = self.trainer.run_round()  # a round cut short by a stop leaves no trace
            with held():
                recorder.commit(self.trainer.round, result.stats, self._state())

        def complete() -> str:
            self._finish("completed", None)
            return "completed"

        # EpisodeStartError: broken settings found only once training started;
        # WorkerLostError: Ray actors kept dying (the run resumes from its last round).
        status, failure = recorder.drive(
            step,
            lambda: self.trainer.round >= config.ppo.rounds,
            self._finish,
            complete,
            (EpisodeStartError, WorkerLostError),
            begin,
        )
        return status, failure or ""

    def _record_resume_flags(self) -> None:
        """On a resume given flags (``PPO_RESUME_SETTINGS``'), once every check passed:
        ``config.json`` says the new plan and cluster, so that a later plain ``--resume`` and
        ``esper runs`` see them (nothing else in the file changes)."""
        data = record.read_config(self.recorder.directory)
        changed = False
        for section, key in PPO_RESUME_SETTINGS:
            value = getattr(getattr(self.config, section), key)
            if data[section].get(key) != value:
                data[section][key], changed = value, True
        if changed:
            record.write_json(self.recorder.directory / record.CONFIG_FILE, data)

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
        returns = [r for r in (measured(r.mean_return) for r in rows) if r is not None]
        ppo = record.PPOSummary(
            rounds_completed=len(rows),
            rounds_planned=self.config.ppo.rounds,
            env_steps=None if final is None else final.env_steps,
            final_mean_return=None if final is None else measured(final.mean_return),
            best_mean_return=max(returns) if returns else None,
            final_mean_accuracy=None if final is None else measured(final.mean_final_accuracy),
        )
        seconds = round(sum(r.seconds_rollout + r.seconds_update for r in rows), 3)
        c = self.config
        run_id = self.recorder.run_id
        return record.RunSummary(
            status, "ppo", c.env.task, c.runtime.seed, run_id, seconds, failure, ppo=ppo
        )


def _envs_here(config: TrainingConfig) -> int:
    """Environments this machine holds: all of them, or on a Ray cluster the largest actor's
    share."""
    workers, n_envs = config.runtime.workers, config.ppo.n_envs
    if workers is None or config.runtime.ray_address is None:
        return n_envs
    return -(-n_envs // workers)


def start_workers(config: TrainingConfig, resume: Path | None, stack: ExitStack) -> TrainingConfig:
    """With ``--workers``: Ray started (or joined) for the run and stopped when ``stack``
    closes; returns ``config`` with the per-worker thread count. Without: ``config``, and Ray
    is not imported (``esper.simic.workers`` imports it only inside its functions). Called
    after ``checked_data``, which checks ``--out``, the data and the memory before Ray starts.

    Raises:
        UserError: the cluster cannot be reached, the workers' threads exceed the cores, or
            another process is running the run to resume.
    """
    if config.runtime.workers is None:
        return config
    try:  # the learner's device is this process's, whatever the cluster has
        check_amp(config.runtime.amp, parse_device(config.runtime.devices[0]))
    except ValueError as err:
        raise UserError(str(err)) from err
    if resume is not None:  # a run another process is running, too (its own lock comes later)
        try:
            fd = record.lock_run(resume)
            if fd is not None:
                os.close(fd)
        except record.RunRecordError as err:
            raise UserError(str(err)) from err
        except OSError as err:
            raise UserError(f"cannot resume {str(resume)!r}: {err.strerror}") from err
    # a resume keeps its workers; another cluster's address is allowed (not a setting checked)
    otherwise = "resume with --ray-address HOST:PORT of a running cluster" if resume else None
    try:
        config, stop = start_ray(config, otherwise)
    except TooFewCores as err:
        raise UserError(err.refusal(resume)) from err
    except ValueError as err:
        raise UserError(str(err)) from err
    stack.callback(stop)
    return config
