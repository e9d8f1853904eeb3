"""Running a study: every trial as a Ray task, resumable, failures isolated (DESIGN §9).

The driver (``run_study``) plans the trials, skips those whose run directory is finished, and
submits the rest to Ray with the study's per-trial resources, as their dependencies allow: a ppo
arm's growth trials wait for the policy runs they evaluate, a static-matched arm's for every
trial of the arm it matches. Each trial writes an ordinary run directory under ``trials/``; a
task that Ray retries after a lost worker or node, or a trial re-run by the next invocation,
resumes from that directory's last checkpoint. A failing trial never stops the others: it is
tried again up to ``retries`` times (attempts — runs that ended, in success or failure — are
counted in ``study.json`` across invocations), then listed with its one-line error. Ctrl-C or
SIGTERM cancels the running trials (each checkpoints and stops; a cancelled or never-started
trial uses no attempt) and leaves the study resumable by running the same command again.

One driver at a time: ``run`` holds an exclusive lock on the study directory (``LOCK_FILE``;
the kernel drops it when the driver dies, even by kill -9), so a second invocation of the same
study is refused instead of running the same trials into the same run directories.

The study directory must be on a file system every node of the cluster sees.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from esper.leyline.config import (
    HostTraining,
    UserError,
    check_int,
    config_dict,
    error_text,
    override,
)
from esper.leyline.files import (
    DANGLING_LINK,
    atomic_write,
    is_dangling,
    remove_temporaries,
    try_lock,
)
from esper.leyline.trials import (
    FINISHED,
    KNOWLEDGE_FILE,
    LOCK_FILE,
    RUN_COLUMN,
    STUDY_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
    TrialRow,
    matched_target,
)
from esper.nissa import record
from esper.nissa.log import open_run
from esper.simic.config import TrainingConfig
from esper.study.growth import GrowthRun, GrowthRunner
from esper.study.plan import (
    MATCHED,
    Resources,
    StudySpec,
    Trial,
    growth_config,
    plan,
    policy_trial,
    ppo_config,
    trial_mode,
    with_defaults,
)
from esper.study.ppo import PPORunner
from esper.study.run import DATA_DIR_SETTINGS, Stop, changed_settings, config_changes


@dataclass(frozen=True)
class Job:
    """What a Ray worker needs to run one trial (plain data: it crosses process boundaries).

    Attributes:
        trial: the trial.
        mode: the run command's mode (static, heuristic, eval, random, periodic or ppo).
        config: the run's configuration as ``config.json`` holds it.
        directory: the trial's run directory.
    """

    trial: Trial
    mode: str
    config: dict[str, Any]
    directory: str


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
        return None if job.mode == "ppo" else summary_row(job.trial, finished)
    if resume is None:
        _check_free(job.trial, directory)
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
    GrowthRunner(job.mode, growth, out, resume, device).run()
    return trial_row(job.trial, directory)


def _check_free(trial: Trial, directory: Path) -> None:
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
    held = _other_run(record.read_meta(directory), summary.mode, summary.run_id.__eq__)
    if held is not None:
        raise record.RunRecordError(
            f"its summary.json is of the {summary.mode} run {summary.run_id!r}, its directory "
            f"holds {held}"
        )


def _other_run(meta: record.RunMeta | None, mode: str, ours: Callable[[str], bool]) -> str | None:
    """What a directory of ``meta.json`` ``meta`` holds, when that is not a ``mode`` run whose
    id is ``ours`` (``no meta.json``, ``the static run 'x'``); None when it is."""
    if meta is not None and meta.mode == mode and ours(meta.run_id):
        return None
    return "no meta.json" if meta is None else f"the {meta.mode} run {meta.run_id!r}"


def trial_row(trial: Trial, directory: Path) -> TrialRow | None:
    """The result of a finished growth trial, from its ``summary.json``; None if unfinished.

    Raises:
        UserError: see ``finished_summary``.
    """
    summary = finished_summary(directory)
    return None if summary is None else summary_row(trial, summary)


def summary_row(trial: Trial, summary: record.RunSummary) -> TrialRow | None:
    """The result of a growth trial from its finished run's summary (None for a PPO run's)."""
    if summary.growth is None:
        return None
    g = summary.growth
    test = g.test
    return TrialRow(
        task=trial.task,
        arm=trial.arm,
        seed=trial.seed,
        status=summary.status,
        score=None if test is None else test.final_accuracy,
        best_score=None if test is None else test.best_accuracy,
        final_params=g.param_count,
        peak_params=g.peak_param_count,
        flops=g.train_flops,
        seconds=summary.wall_seconds,
        error=None,
    )


@dataclass
class StudyState:
    """``study.json``: the settings the study started with, attempts and errors per trial."""

    settings: dict[str, Any]
    attempts: dict[str, int]
    errors: dict[str, str]

    def __post_init__(self) -> None:
        for name, count in self.attempts.items():
            check_int(f"attempts of {name!r}", count, 0)

    @classmethod
    def load(cls, directory: Path, settings: dict[str, Any]) -> StudyState:
        """The study's state, or a fresh one; a directory of another study is refused.

        Raises:
            UserError: ``study.json`` is unreadable, or holds different settings.
        """
        path = directory / STUDY_FILE
        if not path.exists():
            return cls(settings, {}, {})
        try:
            state = record.read_record(path, cls, "an Esper study state file")
        except record.RunRecordError as err:  # unreadable, not JSON, or not this dataclass
            raise UserError(str(err)) from None
        assert state is not None  # the file exists
        # A setting added to StudySpec since the directory was made is saved as its default.
        saved = _without_data_dirs(_policies_by_id(with_defaults(StudySpec, state.settings)))
        changed = _study_changes(saved, settings)
        if changed:
            raise UserError(
                f"{str(directory)!r} holds a study run with other settings (study -> file: "
                f"{'; '.join(changed)}); use another out, or restore the study file"
            )
        return replace(state, settings=settings)  # saved again as this Esper writes them

    def save(self, directory: Path) -> None:
        """Write ``study.json`` atomically."""
        atomic_write(directory / STUDY_FILE, json.dumps(asdict(self), indent=1))


def _study_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``config_changes`` of a study's saved settings and ``now``'s, setting by setting, with
    the arms compared by name: a trial is found by its arm's name, so the arms' order in the
    study file only orders the results, and an arm added or removed is named as such."""
    old_arms, new_arms = _arms_by_name(saved.get("arms")), _arms_by_name(now.get("arms"))
    if old_arms is None or new_arms is None:  # a damaged saved list: compared as it is
        return [c for k in now for c in config_changes(saved.get(k), now[k], k)]
    changed = [c for k in now if k != "arms" for c in config_changes(saved.get(k), now[k], k)]
    for name in sorted(old_arms.keys() | new_arms.keys()):
        if name not in old_arms or name not in new_arms:
            changed.append(f"arms.{name}: {'added' if name in new_arms else 'removed'}")
        else:
            changed.extend(config_changes(old_arms[name], new_arms[name], f"arms.{name}"))
    return changed


def _arms_by_name(arms: Any) -> dict[str, Any] | None:
    """Saved or current arms as a table by name, or None when they are not arm tables with
    distinct names."""
    if not isinstance(arms, list) or not all(
        isinstance(arm, dict) and isinstance(arm.get("name"), str) for arm in arms
    ):
        return None
    by_name = {arm["name"]: {k: v for k, v in arm.items() if k != "name"} for arm in arms}
    return by_name if len(by_name) == len(arms) else None


def _policies_by_id(settings: dict[str, Any]) -> dict[str, Any]:
    """Saved settings with an arm's policy as its run's id, as ``study_settings`` has it: a
    study saved before policies were compared so kept the policy's absolute path, and resumed
    it would be refused as another study."""
    arms = []
    for arm in settings.get("arms") or []:
        policy = arm.get("policy") if isinstance(arm, dict) else None
        if isinstance(policy, str) and os.path.isabs(policy):
            try:
                meta = record.read_meta(Path(policy))
            except record.RunRecordError:
                meta = None  # compared as it is: refused, naming the path
            if meta is not None:
                arm = {**arm, "policy": meta.run_id}
        arms.append(arm)
    return {**settings, "arms": arms} if "arms" in settings else settings


def _without_data_dirs(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings without the budgets' ``data_dir``: like ``out``, it only finds files (a study
    moved with its data, or one saved before ``read_study`` made the path absolute, is the same
    study); each trial's run records the path it read."""

    def without(budget: Any) -> Any:
        return (
            {k: v for k, v in budget.items() if k != "data_dir"}
            if isinstance(budget, dict)
            else budget
        )

    tasks = settings.get("task_budgets")
    if isinstance(tasks, dict):
        settings = {**settings, "task_budgets": {k: without(v) for k, v in tasks.items()}}
    return {**settings, "budget": without(settings["budget"])} if "budget" in settings else settings


def study_settings(spec: StudySpec) -> dict[str, Any]:
    """What must not change between invocations of one study: everything but ``retries``,
    ``reps`` and ``baselines``, which change only how failures are retried and results computed,
    and ``out`` and the budgets' ``data_dir``, which only find files (a moved study, or ``out``
    written another way, is the same study). The resources set a trial's threads and device,
    which a resume must keep. An arm's given policy is its run's id (``meta.json``), not its
    path: a study moved with its policy carries on, and another run put at the policy's path
    is another policy."""
    data = config_dict(spec)
    for arm, table in zip(spec.arms, data["arms"], strict=True):
        meta = None if arm.policy is None else record.read_meta(Path(arm.policy))
        if meta is not None:  # read_study read it (a policy without one was refused)
            table["policy"] = meta.run_id
    kept = {k: v for k, v in data.items() if k not in ("out", "retries", "reps", "baselines")}
    return _without_data_dirs(kept)


@dataclass(frozen=True)
class Outcome:
    """What a study invocation ended with.

    Attributes:
        rows: (trial name, result) of every finished growth trial and every failed one.
        failed: trial name → one-line error, for trials out of attempts (policy runs too).
        pending: trials not run because what they wait for failed (of an interrupted run:
            every trial not finished).
    """

    rows: list[tuple[str, TrialRow]]
    failed: dict[str, str]
    pending: list[str]


DERIVED_SETTINGS = ("policy:", "knowledge:", "telemetry", "runtime.devices", *DATA_DIR_SETTINGS)
"""Settings of a trial's ``config.json`` that the study does not set alone, left out when a
finished trial is checked: the paths of the policy it evaluates, of the study's knowledge
store and of the data (a moved study holds other paths), where telemetry went (it changes
nothing the run computed) and the device Ray gave a policy training (``run_job``)."""

EVAL_DERIVED = ("training.slots:", "training.auto_advance:")
"""Settings an evaluating trial takes from its policy's run (that run is checked itself)."""


class StudyDriver:
    """Submits a study's trials to Ray as their dependencies finish and collects the results.

    Args:
        spec: the study.
        directory: the study directory.
        say: where progress lines go.
        knowledge: the store the trials use (``plan.store_url``: the study's URL with a
            relative SQLite path resolved); None: ``spec.knowledge`` as written.
    """

    def __init__(
        self,
        spec: StudySpec,
        directory: Path,
        say: Callable[[str], None],
        knowledge: str | None = None,
    ) -> None:
        self.spec, self.directory, self.say = spec, directory, say
        self.knowledge = knowledge or spec.knowledge
        self.trials = plan(spec)
        groups: dict[tuple[str, str], list[Trial]] = {}  # (task, arm) -> its trials
        for trial in self.trials:
            groups.setdefault((trial.task, trial.arm), []).append(trial)
        self._groups = {key: tuple(group) for key, group in groups.items()}
        self.stopped: Outcome | None = None  # what an interrupted run had finished
        self._scan()

    def _scan(self) -> None:
        """Read ``study.json`` and find the finished trials."""
        self.state = StudyState.load(self.directory, study_settings(self.spec))
        self.rows: dict[str, TrialRow] = {}
        self.widths: dict[tuple[str, str], int] = {}  # (task, matched arm) -> matched width
        self.done: set[str] = set()
        self._unfinished = {  # (task, arm) -> its unfinished trials' names, in plan order
            key: dict.fromkeys(t.name for t in group) for key, group in self._groups.items()
        }
        for trial in self.trials:
            if not self._started(trial):
                # what no attempt could use (a run missing config.json, a file): refused now,
                # not after Ray started and every attempt failed
                _check_free(trial, self.run_directory(trial))
                continue
            self._check_run(trial)  # a run copied or linked in would be resumed or counted
            self._check_settings(trial)
            summary = finished_summary(self.run_directory(trial))
            if summary is not None:
                self._finish(trial)
                row = summary_row(trial, summary)
                if row is not None:
                    self.rows[trial.name] = row

    @property
    def own_store(self) -> str:
        """The URL of the study's own knowledge store, ``KNOWLEDGE_FILE`` in its directory."""
        from esper.nissa.knowledge import sqlite_url  # SQLAlchemy: loaded once a trial is sent

        return sqlite_url(self.directory.resolve() / KNOWLEDGE_FILE)

    def run_directory(self, trial: Trial) -> Path:
        """Where ``trial`` writes its run."""
        return self.directory / TRIALS_DIR / trial.name

    def _started(self, trial: Trial) -> bool:
        """Whether the trial's run directory is there (finished or not).

        Raises:
            UserError: its directory (or ``trials/``) cannot be read: taken for missing, the
                trial was run again, failed on every attempt and was reported as failed.
        """
        problem, unreadable = record.run_problem(self.run_directory(trial))
        if unreadable:
            raise UserError(f"trial {trial.name}: {problem}; give it read permission again")
        return problem is None

    def _check_run(self, trial: Trial) -> None:
        """The run in the trial's directory is the trial's own (its ``meta.json`` names the
        trial and its mode): another arm's run, or any run, copied or linked in was counted as
        the trial's when the settings the check compares happened to agree.

        Raises:
            UserError: naming the directory and the run it holds.
        """
        directory = self.run_directory(trial)
        try:
            meta = record.read_meta(directory)
        except record.RunRecordError as err:
            raise UserError(f"trial run {str(directory)!r}: {err}") from None
        mode = trial_mode(self.spec, trial)
        held = _other_run(meta, mode, partial(record.named, name=trial.name))
        if held is not None:
            raise UserError(
                f"{str(directory)!r} holds {held}, not trial {trial.name}'s {mode} run: a run "
                "copied or linked in; move it out of the study directory"
            )

    def _check_settings(self, trial: Trial) -> None:
        """A trial's run (finished or not) holds the configuration the study gives the trial
        now, but for ``DERIVED_SETTINGS``: runs copied in from a study of other settings, or
        left after ``study.json`` was removed, counted as done (or were resumed as they were).

        Raises:
            UserError: naming the run and its first differences.
        """
        directory = self.run_directory(trial)
        arm = self.spec.arm(trial.arm)
        try:
            saved = record.read_config(directory)
            if trial.kind == "policy":
                ran = config_dict(override(TrainingConfig(), saved))
                expected = config_dict(ppo_config(self.spec, arm, trial.task, trial.seed))
            else:
                ran = config_dict(override(GrowthRun(HostTraining("")), saved))
                # A static-matched width comes from other trials' results: the run's own.
                width = ran["training"]["width"] if arm.controller == MATCHED else None
                expected = config_dict(growth_config(self.spec, trial, width)[1])
        except (record.RunRecordError, ValueError, TypeError, KeyError) as err:
            raise UserError(f"trial run {str(directory)!r}: {error_text(err)}") from None
        derived = DERIVED_SETTINGS + (EVAL_DERIVED if arm.controller == "ppo" else ())
        changed = changed_settings(ran, expected, derived)
        if changed:
            raise UserError(
                f"{str(directory)!r} is a run of other settings than the study gives "
                f"trial {trial.name} (run -> study: {'; '.join(changed[:3])}): another study "
                "file, or an Esper of other defaults, made it; move it out of the study "
                "directory, or restore those settings"
            )

    def runnable(self) -> list[Trial]:
        """The trials a run would start or wait for: unfinished, with an attempt left."""
        return [t for t in self.trials if t.name not in self.done and not self.exhausted(t)]

    def will_run(self) -> bool:
        """Some runnable trial can start, now or once what it waits for finishes: not every
        one waits on a trial out of attempts (a run would then only report them pending).
        A group of static-matched trials shares one ``needs`` tuple, looked at once: with one
        failed trial among thousands, checking each matched trial's group was quadratic."""
        blocked: dict[int, bool] = {}  # id of a needs tuple -> it holds a trial out of attempts
        for trial in self.runnable():
            needs = self.needs(trial)
            if id(needs) not in blocked:
                blocked[id(needs)] = any(self.exhausted(need) for need in needs)
            if not blocked[id(needs)]:
                return True
        return False

    def exhausted(self, trial: Trial) -> bool:
        """The trial is unfinished and its last attempt failed, with no attempt left (a
        finished trial, or one whose run directory was removed after it finished, is not)."""
        failed = trial.name not in self.done and trial.name in self.state.errors
        return failed and self.state.attempts.get(trial.name, 0) > self.spec.retries

    def ready(self, trial: Trial) -> bool:
        """Everything ``trial`` waits for has finished."""
        return not self.pending(trial)

    def needs(self, trial: Trial) -> tuple[Trial, ...]:
        """The trials whose results ``trial`` is built from (every static-matched trial of a
        task gets the same tuple: callers may reuse what they computed from it)."""
        arm = self.spec.arm(trial.arm)
        if trial.kind == "growth" and arm.trains_policy:
            return (policy_trial(self.spec, trial),)
        if arm.controller == MATCHED:
            assert arm.match is not None
            return self._groups[(trial.task, arm.match)]
        return ()

    def pending(self, trial: Trial) -> Collection[str]:
        """The names of the unfinished trials of ``needs(trial)``, in plan order: kept per
        (task, arm), so a study of thousands of static-matched trials is not quadratic. For a
        static-matched trial it is a live view, which a finishing trial changes: do not hold
        it across ``_finish``."""
        arm = self.spec.arm(trial.arm)
        if arm.controller == MATCHED:
            assert arm.match is not None
            return self._unfinished[(trial.task, arm.match)].keys()
        return [t.name for t in self.needs(trial) if t.name not in self.done]

    def _finish(self, trial: Trial) -> None:
        self.done.add(trial.name)
        self._unfinished[(trial.task, trial.arm)].pop(trial.name, None)

    def job(self, trial: Trial) -> Job:
        """The trial's job: its mode and configuration, derived now that its needs are met."""
        arm = self.spec.arm(trial.arm)
        directory = str(self.run_directory(trial))
        if trial.kind == "policy":
            config = ppo_config(self.spec, arm, trial.task, trial.seed)
            return Job(trial, "ppo", config_dict(config), directory)
        width, policy = None, None
        if arm.controller == MATCHED:
            width = self.matched_width(trial)
        elif arm.trains_policy:
            policy = self.run_directory(policy_trial(self.spec, trial))
        elif arm.policy is not None:
            policy = Path(arm.policy)
        knowledge = self.knowledge or self.own_store
        mode, growth = growth_config(self.spec, trial, width, policy, knowledge)
        return Job(trial, mode, config_dict(growth), directory)

    def matched_width(self, trial: Trial) -> int:
        """The width whose host's parameters are nearest the matched arm's median final
        parameters on the trial's task: computed (and the task's data loaded) once per task,
        since every trial it matches has finished before the first static-matched one runs."""
        from esper.study.plan import training
        from esper.study.run import load_data
        from esper.tasks import matched_width

        arm = self.spec.arm(trial.arm)
        assert arm.match is not None
        key = (trial.task, arm.match)
        if key in self.widths:
            return self.widths[key]
        target = matched_target(self.rows.values(), trial.task, arm.match)
        assert target is not None  # the trial waited for the arm it matches
        data = load_data(training(self.spec, trial.task))
        self.widths[key] = matched_width(trial.task, data, target)
        return self.widths[key]

    def run(self, capacity: int | None = None) -> Outcome:
        """Run every unfinished trial on the Ray session this process joined
        (``connect_ray``); return the outcome and write ``trials.csv``.

        Args:
            capacity: trials that fit the session at once (``trial_slots``), for a session no
                autoscaler can grow. The driver then keeps that many submitted and chooses the
                next itself, growth trials before policy trainings, so a trial that becomes
                ready late (a static-matched arm, a policy's evaluations) does not queue behind
                hours of PPO training. None: every ready trial is submitted at once (a cluster
                may add nodes for them).

        Raises:
            Stop: Ctrl-C or SIGTERM, after cancelling the running trials.
            UserError: another driver is running this study.
        """
        import ray

        with study_lock(self.directory):
            # what a driver killed mid-write left; only a lock holder writes these two
            remove_temporaries(self.directory, [STUDY_FILE, TRIALS_FILE])
            self._scan()  # what the driver that held the lock before finished
            return self._loop(ray, capacity)

    def _loop(self, ray: Any, capacity: int | None) -> Outcome:
        resources = self.spec.resources
        remote = ray.remote(run_job).options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=3
        )
        running: dict[Any, Trial] = {}
        waiting = self.runnable()
        self.state.save(self.directory)  # the settings are pinned before any trial starts
        try:
            while True:
                self._submit(remote, running, waiting, capacity)
                if not running:
                    break
                finished, _ = ray.wait(list(running), num_returns=1)
                trial = running.pop(finished[0])
                try:
                    row = ray.get(finished[0])
                except ray.exceptions.RayError as err:
                    self._failed(trial, _one_line(err), waiting)
                    continue
                self._attempted(trial)
                self._finish(trial)
                self.state.errors.pop(trial.name, None)
                self.state.save(self.directory)
                if row is not None:
                    self.rows[trial.name] = row
                self.say(f"done {trial.name}" + ("" if row is None else f": {_score(row)}"))
        except (KeyboardInterrupt, Stop):
            for ref in running:
                ray.cancel(ref)  # a KeyboardInterrupt in the trial: it checkpoints and stops
            ray.wait(list(running), num_returns=len(running), timeout=60)
            self.stopped = self._outcome([*waiting, *running.values()])
            self.write_trials(self.stopped)  # the results so far; a resume completes them
            raise Stop from None
        outcome = self._outcome(waiting)
        self.write_trials(outcome)
        return outcome

    def _submit(
        self, remote: Any, running: dict[Any, Trial], waiting: list[Trial], capacity: int | None
    ) -> None:
        """Submit ready trials while there is room (``run``'s ``capacity``). A trial whose job
        cannot be built is a failed attempt, and what is ready is looked at again: with one
        slot, such a failure ended the study with ready trials never submitted."""
        while True:
            ready = sorted((t for t in waiting if self.ready(t)), key=_trains)
            room = len(ready) if capacity is None else capacity - len(running)
            if not ready or room <= 0:
                return
            for trial in ready[:room]:
                waiting.remove(trial)
                try:
                    running[remote.remote(self.job(trial))] = trial
                except (UserError, ValueError) as err:  # e.g. a policy that vanished
                    self._failed(trial, str(err), waiting)

    def _outcome(self, waiting: list[Trial]) -> Outcome:
        """The finished and failed trials' rows, and ``waiting`` as pending."""
        failed = {t.name: self.state.errors[t.name] for t in self.trials if self.exhausted(t)}
        rows = []
        for trial in self.trials:
            row = self.rows.get(trial.name)
            if row is None and trial.kind == "growth" and trial.name in failed:
                row = TrialRow(
                    trial.task, trial.arm, trial.seed, "failed", None, None, None, None,
                    None, None, failed[trial.name],
                )  # fmt: skip
            if row is not None:
                rows.append((trial.name, row))
        return Outcome(rows, failed, [t.name for t in waiting])

    def _attempted(self, trial: Trial) -> None:
        """Count an attempt of ``trial`` that ended (counted only then: a trial cancelled by
        Ctrl-C, or queued when the driver was killed, keeps its attempts)."""
        self.state.attempts[trial.name] = self.state.attempts.get(trial.name, 0) + 1

    def _failed(self, trial: Trial, error: str, waiting: list[Trial]) -> None:
        """Record a failed attempt; try again while attempts remain."""
        self._attempted(trial)
        self.state.errors[trial.name] = error
        self.state.save(self.directory)
        if not self.exhausted(trial):
            waiting.append(trial)
            self.say(f"failed {trial.name} (attempt {self.state.attempts[trial.name]}): {error}")
        else:
            self.say(f"gave up {trial.name}: {error}")

    def write_trials(self, outcome: Outcome) -> None:
        """``trials.csv``: a row per finished growth trial and per failed one."""
        buffer = io.StringIO()
        names = [f.name for f in fields(TrialRow)] + [RUN_COLUMN]
        writer = csv.DictWriter(buffer, names, lineterminator="\n")
        writer.writeheader()
        for name, row in outcome.rows:
            writer.writerow({**asdict(row), RUN_COLUMN: name})
        atomic_write(self.directory / TRIALS_FILE, buffer.getvalue())


@contextmanager
def study_lock(directory: Path) -> Iterator[None]:
    """Hold the study directory's lock while the block runs.

    Raises:
        UserError: another process holds it (an ``esper study`` of this directory running).
    """
    path = directory / LOCK_FILE
    fd = try_lock(path)
    if fd is None:
        raise UserError(
            f"another esper study is running the study in {str(directory)!r} (it holds "
            f"{str(path)!r}); wait for it to end, or stop it and run this command again"
        )
    try:
        yield
    finally:
        os.close(fd)  # closing drops the lock


def connect_ray(address: str | None) -> Callable[[], None]:
    """Join the Ray cluster at ``address``, or start a local instance using every usable core;
    returns how to stop (or leave) it. The trials' own console output stays in Ray's worker
    logs: the driver says one line per trial (hundreds of trials would flood it otherwise).

    Raises:
        ValueError: one line: nothing answers at ``address``, or Ray cannot join it.
    """
    import ray

    from esper.simic.workers import init_ray, join_ray
    from esper.tolaria.threads import usable_cores

    if address is None and not ray.is_initialized():
        init_ray(num_cpus=usable_cores(), log_to_driver=False)
        return ray.shutdown
    return join_ray(address, "--address", log_to_driver=False)


def _trains(trial: Trial) -> bool:
    return trial.kind == "policy"


def trial_slots(resources: Resources) -> int:
    """How many trials of ``resources`` the Ray session this process runs fits at once (call it
    where no autoscaler can add nodes).

    Raises:
        UserError: one trial does not fit (it would wait forever), naming the setting, its value
            and what Ray has.
    """
    import ray

    have: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    slots = []
    for name, key, asked in (("cpus", "CPU", resources.cpus), ("gpus", "GPU", resources.gpus)):
        total = float(have.get(key, 0.0))  # Ray leaves out a resource it has none of
        if asked > total:
            raise UserError(
                f"resources.{name} = {asked:g}, but Ray has {total:g} {key}s here: one trial "
                f"would wait forever; ask for at most {total:g}"
            )
        if asked:
            slots.append(max(1, int(total // asked)))
    return min(slots)


def _one_line(err: BaseException) -> str:
    """A Ray task's failure as one line: the trial's own error, not Ray's traceback."""
    import ray

    inner = err.cause if isinstance(err, ray.exceptions.RayTaskError) else err
    text = str(inner).strip().splitlines()
    message = text[0] if text else type(inner).__name__
    if type(inner).__name__ not in ("UserError", "RuntimeError"):
        message = f"{type(inner).__name__}: {message}"
    return message


def _score(row: TrialRow) -> str:
    score = row.score
    return "no test score" if score is None or not math.isfinite(score) else f"{score:.2f}%"
