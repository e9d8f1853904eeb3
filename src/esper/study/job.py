"""One trial run in one process (a Ray worker's, or the driver's outside Ray): the job that
crosses to the worker, and a finished trial's result row, read from its run directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from esper.leyline.config import HostTraining, UserError, override
from esper.leyline.files import DANGLING_LINK, is_dangling
from esper.leyline.trials import FINISHED, Score, TrialRow
from esper.nissa import record
from esper.nissa.log import open_run
from esper.simic.config import TrainingConfig
from esper.study.growth import GrowthRun, GrowthRunner
from esper.study.plan import Trial
from esper.study.ppo import PPORunner
from esper.study.run import Policy, read_policy


@dataclass(frozen=True)
class Job:
    """What a Ray worker needs to run one trial (plain data: it crosses process boundaries).

    Attributes:
        trial: the trial.
        mode: the run command's mode (static, heuristic, eval, random, periodic or ppo).
        config: the run's configuration as ``config.json`` holds it.
        directory: the trial's run directory.
        policy_round: for an arm given a policy, the round of it the study evaluates
            (``StudyDriver.policy_rounds``).
        score: what the study scores the trial by (``SCORES``).
    """

    trial: Trial
    mode: str
    config: dict[str, Any]
    directory: str
    policy_round: int | None = None
    score: Score = "test"


def run_job(job: Job) -> TrialRow | None:
    """Run (or resume) one trial in this process; its result row (None for a policy run).

    In a Ray worker it trains on the GPU Ray assigned it, if any.

    Raises:
        RuntimeError: the run failed (a PPO run's recorded failure), with its message.
        UserError: its settings or directory are unusable.
    """
    directory = Path(job.directory)
    resume = directory if record.is_run_directory(directory) else None
    finished = finished_summary(directory)
    if finished is not None:
        # Finished before its result reached the driver (a Ray retry, a killed driver).
        return None if job.mode == "ppo" else summary_row(job.trial, finished, job.score)
    policy = None if job.policy_round is None else _policy_at_round(job)
    if resume is None:
        check_free(job.trial, directory)
    out = None if resume is not None else directory
    device = trial_device()
    if job.mode == "ppo":
        config = override(TrainingConfig(), job.config)
        if device.type == "cuda":
            config = override(config, {"runtime": {"devices": [str(device)]}})
        runner = PPORunner(config, out, resume)
        try:
            status, failure = runner.run()
        finally:
            runner.close()
        if status == "failed":
            raise RuntimeError(failure)
        return None
    growth = override(GrowthRun(HostTraining("")), job.config)
    GrowthRunner(job.mode, growth, out, resume, device, policy).run()
    return trial_row(job.trial, directory, job.score)


def _policy_at_round(job: Job) -> Policy:
    """The given policy, read once: still at the round the study evaluates.

    Raises:
        UserError: its run trained on while the study ran (the arm would mix two policies).
    """
    policy = job.config["policy"]
    read = read_policy(Path(policy))
    if read.rounds != job.policy_round:
        raise UserError(
            f"trial {job.trial.name}: its policy {policy!r} is at round {read.rounds}, but the "
            f"study evaluates round {job.policy_round} (the policy run trained on while the "
            "study ran, and the arm would mix two policies); evaluate it in a study of another "
            "out"
        )
    return read


def check_free(trial: Trial, directory: Path) -> None:
    """Nothing but an empty directory is where ``trial``'s new run goes.

    Raises:
        UserError: naming what is there (a run command's advice, --out or --resume, is no
            use to a study).
    """
    if not os.path.lexists(directory):
        return
    try:
        if is_dangling(directory):
            what = f"is {DANGLING_LINK}"
        elif os.path.islink(directory):  # a run is made by renaming onto its place
            what = "is a symbolic link, where the trial's run directory is to be made"
        elif directory.is_dir() and not any(directory.iterdir()):
            return
        else:
            what = f"holds no run ({record.not_a_run(directory)})"
    except OSError as err:
        what = f"cannot be read ({err.strerror})"
    raise UserError(
        f"trial {trial.name}: {str(directory)!r} {what}; move it out of the study directory "
        "and run the study again"
    )


def trial_device() -> torch.device:
    """Where this trial trains: the GPU Ray assigned the task (a whole one or a fraction;
    Ray sets ``CUDA_VISIBLE_DEVICES`` to it, so it is ``cuda:0``), else the CPU (also outside
    Ray)."""
    import ray

    gpu = ray.is_initialized() and bool(ray.get_gpu_ids())
    return torch.device("cuda", 0) if gpu else torch.device("cpu")


def finished_summary(directory: Path) -> record.RunSummary | None:
    """The summary of the run in ``directory`` if it has finished; None when there is no run
    there or it has not finished.

    Raises:
        UserError: its ``summary.json`` is malformed, or is another run's (copied in: its
            figures would be taken for the trial's).
    """
    if not record.is_run_directory(directory):
        return None
    try:
        summary = record.read_summary(directory)
        if summary is None or summary.status not in FINISHED:
            return None
        if (directory / record.EVENTS_FILE).stat().st_size:
            open_run(directory)  # checks the summary against the run's own first event
        else:  # lines are flushed, not fsynced: a system crash can empty a finished run's log
            _check_summary_of(directory, summary)
    except record.RunRecordError as err:  # RunDirectoryError included
        raise UserError(f"trial run {str(directory)!r}: {err}") from None
    except OSError as err:
        raise UserError(f"trial run {str(directory)!r}: {err.strerror}") from None
    return summary


def _check_summary_of(directory: Path, summary: record.RunSummary) -> None:
    """``summary`` is of the run ``meta.json`` names (for a run whose log is empty).

    Raises:
        RunRecordError: it is another run's, or ``meta.json`` is malformed or missing.
    """
    held = other_run(record.read_meta(directory), summary.mode, summary.run_id.__eq__)
    if held is not None:
        raise record.RunRecordError(
            f"its summary.json is of the {summary.mode} run {summary.run_id!r}, its directory "
            f"holds {held}"
        )


def other_run(meta: record.RunMeta | None, mode: str, ours: Callable[[str], bool]) -> str | None:
    """What a directory of ``meta.json`` ``meta`` holds, when that is not a ``mode`` run whose
    id is ``ours`` (``no meta.json``, ``the static run 'x'``); None when it is."""
    if meta is not None and meta.mode == mode and ours(meta.run_id):
        return None
    return "no meta.json" if meta is None else f"the {meta.mode} run {meta.run_id!r}"


def trial_row(trial: Trial, directory: Path, score: Score = "test") -> TrialRow | None:
    """The result of a finished growth trial, from its ``summary.json``; None if unfinished.

    Raises:
        UserError: see ``finished_summary``.
    """
    summary = finished_summary(directory)
    return None if summary is None else summary_row(trial, summary, score)


def summary_row(trial: Trial, summary: record.RunSummary, score: Score = "test") -> TrialRow | None:
    """The result of a growth trial from its finished run's summary (None for a PPO run's),
    scored by ``score`` (``TrialRow.score``)."""
    if summary.growth is None:
        return None
    g = summary.growth
    error = None
    if score == "validation":
        final, best = g.final_model_val_accuracy, g.best_val_accuracy
        if final is None and summary.status in FINISHED:
            # a summary from before it was measured, or a model whose accuracy is not finite
            error = "its summary records no validation accuracy of the final model"
    else:
        final = None if g.test is None else g.test.final_accuracy
        best = None if g.test is None else g.test.best_accuracy
    return TrialRow(
        task=trial.task,
        arm=trial.arm,
        seed=trial.seed,
        status=summary.status,
        score=final,
        best_score=best,
        final_params=g.param_count,
        peak_params=g.peak_param_count,
        flops=g.train_flops,
        seconds=summary.wall_seconds,
        error=error,
    )
