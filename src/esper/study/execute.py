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
import math
import os
import sys
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

from esper.leyline.config import (
    HostTraining,
    UserError,
    config_dict,
    error_text,
    override,
)
from esper.leyline.files import (
    atomic_write,
    remove_temporaries,
    try_lock,
)
from esper.leyline.trials import (
    KNOWLEDGE_FILE,
    LOCK_FILE,
    RUN_COLUMN,
    SCORES,
    STUDY_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
    Score,
    TrialRow,
    matched_target,
)
from esper.nissa import record
from esper.nissa.log import counted
from esper.nissa.stopping import Stop
from esper.simic.config import TrainingConfig
from esper.study.checks import DATA_DIR_SETTINGS, changed_settings
from esper.study.growth import GrowthRun
from esper.study.job import Job, check_free, finished_summary, other_run, run_job, summary_row
from esper.study.plan import (
    Trial,
    growth_config,
    plan,
    policy_notes,
    policy_trial,
    trial_mode,
)
from esper.study.run import (
    partial_policy,
    read_policy,
    read_state,
    stop_signals,
)
from esper.study.spec import MATCHED, ArmSpec, Resources, StudySpec, ppo_config
from esper.study.state import StudyState, study_settings


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


Blocked = dict[int, tuple[tuple[Trial, ...], Trial | None]]
"""``StudyDriver.blocked_by``'s answers, by the id of a needs tuple: the tuple itself, kept
alive so that its id is not reused by another (a PPO evaluation's is made afresh per call),
and the first trial in it out of attempts."""


class StudyDriver:
    """Submits a study's trials to Ray as their dependencies finish and collects the results.

    Args:
        spec: the study.
        directory: the study directory.
        say: where progress lines go.
        knowledge: the store the trials use (``spec.store_url``: the study's URL with a
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
                check_free(trial, self.run_directory(trial))
                continue
            self._check_run(trial)  # a run copied or linked in would be resumed or counted
            self._check_settings(trial)
            self._count_if_finished(trial)
        self.notes: list[str] = []  # what the study's reader should know, as notes
        self.policy_rounds = {
            arm.name: self._check_policy_round(arm) for arm in self.spec.arms if arm.policy
        }

    def _count_if_finished(self, trial: Trial) -> bool:
        """Count ``trial`` as finished, with its result, if its run directory holds a finished
        run; whether it does."""
        summary = finished_summary(self.run_directory(trial))
        if summary is None:
            return False
        self._finish(trial)
        row = summary_row(trial, summary, self.spec.score)
        if row is not None:
            self.rows[trial.name] = row
        return True

    def _finished_as_stopped(self, trial: Trial) -> bool:
        """``_count_if_finished`` as the study stops, saying ``done`` for one that finished as
        its cancel came: a run it cannot read counts as not finished (the resume checks it), so
        the results so far are still written."""
        try:
            finished = self._count_if_finished(trial)
        except UserError:
            return False
        if finished:
            self._say_done(trial)
        return finished

    def _say_done(self, trial: Trial) -> None:
        row = self.rows.get(trial.name)
        score = "" if row is None else f": {_score(row, self.spec.score)}"
        self.say(f"done {trial.name}{score}")

    def _check_policy_round(self, arm: ArmSpec) -> int:
        """The round the given policy of ``arm`` is at, which its trials evaluate (each checks
        it before it runs: ``Job.policy_round``); a note (``notes``) when its run stopped before
        its planned rounds (``partial_policy``), and when its finished trials evaluated other
        rounds.

        Raises:
            UserError: its started trials evaluated another round, and it has trials left: its
                run trained on since (``esper ppo --resume``), and the arm would mix two
                policies.
        """
        assert arm.policy is not None
        now = read_policy(Path(arm.policy)).rounds
        partial = partial_policy(Path(arm.policy), now)
        if partial is not None:  # trained on, the study would refuse to go on
            self.notes.append(f"note: arm {arm.name!r}: {partial}; the study evaluates it as is")
        self.notes.extend(policy_notes(self.spec, arm))
        trials = [t for t in self.trials if t.arm == arm.name]
        ran: dict[int, list[str]] = {}
        for trial in (t for t in trials if self._started(t)):
            directory = self.run_directory(trial)
            meta = record.read_meta(directory)
            assert meta is not None  # _check_run read it
            state = read_state(directory, meta.run_id, "cannot read the trial run in")
            evaluated = state.get("policy_round")
            if not isinstance(evaluated, int):
                raise UserError(f"trial run {str(directory)!r}: its checkpoint holds no round")
            ran.setdefault(evaluated, []).append(trial.name)
        if set(ran) <= {now}:
            return now
        rounds = "; ".join(f"round {r}: {', '.join(names)}" for r, names in sorted(ran.items()))
        what = f"arm {arm.name!r}: its trials evaluated {rounds} of the policy {arm.policy!r}"
        if any(t.name not in self.done for t in trials):
            raise UserError(
                f"{what}, which is at round {now} now (its run trained on); the trials left "
                "would evaluate another policy: evaluate it in a study of another out"
            )
        self.notes.append(f"note: {what}, which is at round {now} now")
        return now

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
        held = other_run(meta, mode, partial(record.named, name=trial.name))
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
        one waits on a trial out of attempts (a run would then only report them pending)."""
        seen: Blocked = {}
        return any(self.blocked_by(trial, seen) is None for trial in self.runnable())

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
        rounds = self.policy_rounds.get(arm.name)
        return Job(trial, mode, config_dict(growth), directory, rounds, self.spec.score)

    def matched_width(self, trial: Trial) -> int:
        """The width whose host's parameters are nearest the matched arm's median final
        parameters on the trial's task: computed (and the task's data loaded) once per task,
        since every trial it matches has finished before the first static-matched one runs."""
        from esper.study.checks import load_data
        from esper.study.spec import training
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
        if waiting:  # which code ran which trials: a rerun of a finished study records none
            changed = self.state.ran(sys.argv)
            if changed is not None:
                self.say(
                    f"note: the study's earlier trials ran other code ({changed}); results.md "
                    "names the revisions"
                )
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
                self._say_done(trial)
        except (KeyboardInterrupt, Stop):
            for ref in running:
                ray.cancel(ref)  # a KeyboardInterrupt in the trial: it checkpoints and stops
            # stopped again: no waiting (each trial's last checkpoint stays resumable), but the
            # results so far are written all the same, any further signal dropped meanwhile
            with suppress(KeyboardInterrupt):
                ray.wait(list(running), num_returns=len(running), timeout=60)
            with stop_signals() as held, held(final=True):
                # A trial may finish before its cancel takes, or the signal come as its result
                # is taken in: the results so far count it, as a resume does (they said it was
                # not finished). What is not finished comes from the trials themselves: one the
                # signal caught between ``waiting`` and ``running`` (its job being built) was
                # in neither list, and left out of the count.
                for trial in self.runnable():
                    self._finished_as_stopped(trial)
                self.stopped = self._outcome(self.runnable())
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
        """The finished and failed trials' rows, and ``waiting`` as pending. A growth trial
        that waits for one out of attempts (a policy training, the arm a static-matched one
        matches) is failed too, saying which: it vanished from every view of the results."""
        failed = {t.name: self.state.errors[t.name] for t in self.trials if self.exhausted(t)}
        seen: Blocked = {}
        rows = []
        for trial in self.trials:
            row = self.rows.get(trial.name)
            error = failed.get(trial.name)
            if row is None and error is None and trial.name not in self.done:
                gone = self.blocked_by(trial, seen)
                if gone is not None:
                    why = failed[gone.name].strip().splitlines()[0] if failed[gone.name] else ""
                    error = f"could not start: {gone.name} failed on every attempt ({why})"
            if row is None and trial.kind == "growth" and error is not None:
                row = TrialRow(
                    trial.task, trial.arm, trial.seed, "failed", None, None, None, None,
                    None, None, error,
                )  # fmt: skip
            if row is not None:
                rows.append((trial.name, row))
        return Outcome(rows, failed, [t.name for t in waiting])

    def blocked_by(self, trial: Trial, seen: Blocked) -> Trial | None:
        """A trial ``trial`` waits for that is out of attempts, so that it can never start;
        None. ``seen`` keeps the answers by needs tuple: a group of static-matched trials
        shares one, looked at once (with one failed trial among thousands, checking each
        matched trial's group was quadratic)."""
        needs = self.needs(trial)
        if id(needs) not in seen:
            seen[id(needs)] = needs, next((n for n in needs if self.exhausted(n)), None)
        return seen[id(needs)][1]

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
            tried = counted(self.state.attempts[trial.name], "attempt")
            self.say(f"gave up {trial.name} after {tried}: {error}")

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


def _score(row: TrialRow, kind: Score) -> str:
    """A finished trial's score for its ``done`` line (``81.25% validation accuracy``)."""
    if row.score is None or not math.isfinite(row.score):
        return f"no {SCORES[kind]}"
    return f"{row.score:.2f}% {SCORES[kind]}"
