"""``esper study FILE``: run a study's trials on Ray and write its results (``esper.study``).

``--dry-run`` lists the trials, what is already done, and the estimated cost (timing a few
epochs of each task's static host here, on a CPU), and starts no trial. Running the same
command again resumes: finished trials are skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from esper.cli.main import EXIT_INTERRUPTED
from esper.leyline.config import UserError, first_line
from esper.leyline.files import (
    DANGLING_LINK,
    file_mode,
    is_dangling,
    nearest_existing,
    not_regular,
    shell_path,
)
from esper.leyline.net import MAX_PORT, is_host_port, refuse_password
from esper.leyline.trials import (
    LOCK_FILE,
    RESULTS_FILE,
    RESULTS_FILES,
    SCORES,
    STUDY_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
)
from esper.nissa import record
from esper.nissa.checkpoints import latest_step
from esper.nissa.log import counted
from esper.study.checks import check_fits, load_data, warn_slow_precision
from esper.study.execute import (
    Blocked,
    Outcome,
    StudyDriver,
    connect_ray,
    study_lock,
    trial_slots,
)
from esper.study.plan import Trial, never_growing, trial_mode
from esper.study.results import (
    Judging,
    StudyResults,
    import_libraries,
    read_judging,
    write_results,
)
from esper.study.run import stop_signals
from esper.study.spec import MATCHED, StudySpec, ppo_config, read_study, store_url, training
from esper.tolaria.threads import usable_cores

if TYPE_CHECKING:
    from esper.leyline.config import HostTraining
    from esper.leyline.data import Dataset
    from esper.tolaria.episode import Episode


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load(path: Path) -> tuple[StudySpec, Path]:
    """The study file, checked.

    Raises:
        UserError: one line naming the bad key or value.
    """
    if path.is_dir():  # a study's directory: its file is what esper study reads
        what = "a study's directory" if record.is_study(path) else "a directory"
        raise UserError(
            f"study file {str(path)!r} is {what}; give the study's TOML file (e.g. "
            "studies/impaired.toml), whose out names that directory"
        )
    if not path.is_file():
        raise UserError(f"study file {str(path)!r} does not exist or is not a file")
    if path.name == STUDY_FILE:  # its directory would look like a study directory
        raise UserError(
            f"study file {str(path)!r}: {STUDY_FILE} is the name of the state file a study "
            "keeps in its directory; give the study file another name (e.g. study.toml)"
        )
    try:
        spec, directory = read_study(path)
        if spec.knowledge is not None and not record.is_study(directory):  # a new study:
            # study.json and every trial's config.json would keep it (an existing study's
            # are kept already, and it goes on as begun)
            refuse_password("knowledge", spec.knowledge, "give it in PGPASSWORD or ~/.pgpass")
    except ValueError as err:
        raise UserError(f"study file {str(path)!r}: {err}") from err
    return spec, directory


def run_study(args: argparse.Namespace) -> int:
    """``esper study FILE [--address HOST:PORT] [--dry-run]``."""
    address = check_address(args.address)
    spec, directory = load(args.file)
    if address is None:  # a local instance has this machine's cores and memory: a trial must fit
        check_local_cores(spec)
        check_widths(spec, args.file)
        _warn_slow_precision(spec)  # once here: the trials' own warnings stay in Ray's logs
    knowledge = store_url(spec, args.file)
    driver = StudyDriver(spec, directory, _say, knowledge)
    check_writable(directory)  # first: the study's own store is named inside it
    check_knowledge(spec, knowledge or driver.own_store)
    lines = [*never_growing(spec), *driver.notes]
    notes = [f"esper study: {line}" for line in lines]  # said after the checks
    if args.dry_run:
        dry_run(driver)
        for note in notes:
            _say(note)
        return 0
    runs = driver.will_run()  # else the results are written again, without Ray
    stop = _join_ray(args.address, directory) if runs else lambda: None
    capacity = None
    try:
        if address is None and runs:  # a local instance has what it has; a cluster may grow
            capacity = trial_slots(spec.resources)  # or one line: a trial would never fit
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot make the study directory {str(directory)!r}: {err}") from err
        done = len(driver.done)
        scored = f"scored by {SCORES[spec.score]}"
        _say(f"esper study: {_trials(driver.trials)}, {done} already done, {scored} -> {directory}")
        for note in notes:
            _say(note)
        if runs:
            import_libraries()  # before any trial: what a Ctrl-C there would leave half-imported
        outcome = driver.run(capacity)
    except KeyboardInterrupt as signalled:  # a Stop, or Ctrl-C before the driver's handling
        _interrupted(driver, directory, args.file, address, signalled)
        return EXIT_INTERRUPTED
    finally:
        # A signal that cut Ray's shutdown short left its processes running, and printed a
        # second "interrupted" after a stop: one that comes during it is dropped (after a
        # completed study, the results are written next; a signal then stops that).
        with stop_signals() as held, held(final=True):
            stop()
    results = _write_results(spec, directory, outcome, revisions=driver.state.revisions())
    for line in results.verdicts:
        print(line)
    print(f"results: {directory / RESULTS_FILE}")
    if outcome.failed or outcome.pending:
        _say(
            f"{len(outcome.failed)} trial(s) failed on every attempt, {len(outcome.pending)} "
            "could not start (what they wait for failed); raise retries in the study file and "
            "run the same command again to try them again"
        )
        return 1
    return 0


def _join_ray(address: str | None, directory: Path) -> Callable[[], None]:
    """``connect_ray``, once no other driver runs the study (it started a local Ray, 10 s or
    more, before being refused); an unreachable cluster fails before anything is made."""
    if directory.is_dir():
        with study_lock(directory):
            pass
    try:
        return connect_ray(address)
    except ValueError as err:
        raise UserError(str(err)) from err


def _interrupted(
    driver: StudyDriver, directory: Path, file: Path, address: str | None, stop: KeyboardInterrupt
) -> None:
    """After Ctrl-C or SIGTERM (``stop``): the results so far, and how to continue."""
    again = "" if address is None else f" --address {address}"
    if driver.stopped is not None:  # the results so far, marked as such
        waiting = len(driver.stopped.pending)
        try:  # the bootstrap takes a while: a second Ctrl-C skips it (files are atomic)
            revisions = driver.state.revisions()
            _write_results(driver.spec, directory, driver.stopped, waiting, revisions)
            _say(f"results so far ({waiting} trials not finished): {directory / RESULTS_FILE}")
        except (KeyboardInterrupt, ImportError) as err:
            if not _interrupting(err, stop):  # an ImportError of its own
                raise
            _say("stopped again: results so far not written (trials.csv lists the finished)")
        except Exception as err:  # the first signal left a module half-imported (scipy's)
            _say(
                f"results so far not written ({type(err).__name__}: {first_line(err)}); "
                "running the study again writes them"
            )
    _say(f"\ninterrupted: continue with: esper study {shell_path(file)}{again}")


def _interrupting(err: BaseException, first: KeyboardInterrupt) -> bool:
    """Whether ``err`` is a Ctrl-C after the ``first`` one, or what it became: landing in the
    import of a compiled module (scipy's, which the statistics import when first used) it
    surfaces as an ``ImportError`` ("initialization failed"), which was a traceback and exit 1.
    The chain ends at ``first``, every error's context here."""
    seen: BaseException | None = err
    while seen is not None and seen is not first:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_address(address: str | None) -> str | None:
    """``address`` (``--address``), if it is HOST:PORT.

    Raises:
        UserError: naming it and the form accepted.
    """
    if address is not None and not is_host_port(address):
        raise UserError(
            f"--address must be HOST:PORT of a Ray head (port 1..{MAX_PORT}), got {address!r}"
        )
    return address


def check_local_cores(spec: StudySpec) -> None:
    """One trial fits the cores and GPUs of this machine, which a local Ray instance gets: the
    dry run passed (planning "1 trial(s) at once"), the real run refused after Ray's start-up.

    Raises:
        UserError: naming ``resources.cpus`` or ``resources.gpus`` and what this machine has.
    """
    import torch  # loaded with the study code already

    for name, asked, have, what in (
        ("cpus", spec.resources.cpus, usable_cores(), "usable core(s)"),
        ("gpus", spec.resources.gpus, torch.cuda.device_count(), "CUDA GPU(s)"),
    ):
        if asked > have:
            raise UserError(
                f"resources.{name} = {asked:g}, but this machine has {have} {what}: one trial "
                f"would wait forever; ask for at most {have} (or join a cluster with --address)"
            )


def check_widths(spec: StudySpec, path: Path) -> None:
    """Each task's data can be read here, and each growth arm's host of a width the study file
    gives fits this machine's memory (``check_fits``), for a local Ray (a cluster's nodes may
    have other data and more memory): the dry run built a host of ``width = 4096`` (1.5
    billion parameters) to time it, and the real run failed every attempt after Ray started;
    data that could not be found failed every attempt too. (A static-matched width comes from
    results, a policy's environments are checked where they run.)

    Raises:
        UserError: naming the task and why its data cannot be read, or the arm, the task and
            the widest host that fits.
    """
    for task in spec.tasks:
        try:
            data = load_data(training(spec, task))
        except UserError as err:
            raise UserError(f"study file {str(path)!r}: task {task}: {err}") from None
        for arm in spec.arms:
            host = training(spec, task, arm.width if arm.controller == "static" else None)
            if arm.controller in (MATCHED, "ppo") or host.width is None:
                continue
            try:
                check_fits(host, data, setting="width =")
            except UserError as err:
                where = f"study file {str(path)!r}: arm {arm.name!r} on {task}"
                raise UserError(f"{where}: {err}") from None


def check_knowledge(spec: StudySpec, url: str) -> None:
    """The knowledge store a study names opens, when an arm grows: a trial that cannot use it
    only warns, in a Ray worker's log, and a bandit arm then runs without the outcomes it was
    to learn from. A store that does not exist yet is fine (the first trial creates it).
    ``url``: the study's store as the trials use it (``store_url``, else the study's own,
    ``StudyDriver.own_store``).

    Raises:
        UserError: the store's one-line error (not a database, unreachable, foreign, newer).
    """
    if all(a.controller in ("static", MATCHED) for a in spec.arms):
        return
    from esper.nissa.knowledge import KnowledgeStore, KnowledgeStoreError

    try:
        KnowledgeStore.check(url)  # changes nothing: a dry run makes nothing
    except KnowledgeStoreError as err:
        raise UserError(str(err)) from None


def check_writable(directory: Path) -> None:
    """The study directory can be made (or, if it exists, written in, ``trials/`` too): else
    a dry run would pass, and the real run would start Ray before failing (every attempt of
    every trial left, for a ``trials/`` that refuses new run directories).

    Raises:
        UserError: naming the directory that refuses, and why.
    """
    # The nearest path that is there, a link included: a dangling link above the directory
    # passed, and the real run failed after Ray's start-up ("File exists").
    place = nearest_existing(directory)
    if is_dangling(place):
        what = "it" if place == directory else repr(str(place))
        raise UserError(
            f"cannot make the study directory {str(directory)!r}: {what} is {DANGLING_LINK}"
        )
    made = "write in" if place == directory else "make"
    _check_access(place, f"cannot {made} the study directory {str(directory)!r}")
    if place == directory:
        _check_study_files(directory)
        if (directory / TRIALS_DIR).is_dir():
            _check_access(directory / TRIALS_DIR, "cannot make the trials' run directories")


def _check_access(place: Path, refusal: str) -> None:
    """``place`` can be written and searched.

    Raises:
        UserError: ``refusal``, then why not.
    """
    if os.access(place, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return
    try:
        read_only = os.statvfs(place).f_flag & os.ST_RDONLY
    except OSError:
        read_only = False
    why = "is on a read-only file system" if read_only else "is not writable (write and search)"
    raise UserError(f"{refusal}: {str(place)!r} {why}")


def _check_study_files(directory: Path) -> None:
    """The files an existing study directory's run writes are files, or not there yet: else
    the dry run passed, and the real run trained every trial left before it failed on its
    results (a traceback for the lock file). (``trials/`` is checked with the study file.)

    Raises:
        UserError: naming the file and what it is.
    """
    for name in (STUDY_FILE, TRIALS_FILE, *RESULTS_FILES, LOCK_FILE):
        path = directory / name
        try:
            mode = file_mode(path)
        except PermissionError as err:
            raise UserError(f"cannot look at {str(path)!r} ({err.strerror})") from None
        if mode is None and os.path.islink(path):  # file_mode followed it into nothing
            raise UserError(f"{str(path)!r} is {DANGLING_LINK}")
        if mode is not None and not stat.S_ISREG(mode):
            raise UserError(
                f"the study writes {str(path)!r}, and it is {not_regular(mode)}, not a file; "
                "move it away"
            )


def _write_results(
    spec: StudySpec,
    directory: Path,
    outcome: Outcome,
    unfinished: int = 0,
    revisions: str | None = None,
) -> StudyResults:
    """``results.md`` and its plots for ``outcome``'s trials, judged as ``spec`` says; a word
    when they change under a ``report.html`` that ``esper report`` wrote of the earlier ones
    (a resume left it saying "results so far"). ``revisions``: the code the trials ran
    (``StudyState.revisions``)."""
    rows = [row for _, row in outcome.rows]
    roles = spec.verdict_roles()
    before = _judging(directory)
    results = write_results(
        directory, rows, spec.baseline_arms(), spec.reps, 0, unfinished, roles, spec.score,
        revisions,
    )  # fmt: skip
    if (directory / record.REPORT_FILE).is_file() and _judging(directory) != before:
        _say(
            f"{directory / record.REPORT_FILE} shows the results before these: `esper report "
            f"{shell_path(directory)}` writes it again"
        )
    return results


def _judging(directory: Path) -> Judging | None:
    """The study's ``results.json``, None where there is none or it cannot be read."""
    try:
        return read_judging(directory)
    except record.RunRecordError:
        return None


def dry_run(driver: StudyDriver) -> None:
    """Print the trials, their state, and the estimated cost of what is left: host epochs,
    FLOPs, and (for CPU trials) the wall time from each task's static host timed here now."""
    spec = driver.spec
    left = driver.runnable()
    # trials whose run another process holds (a live study's, a resume's): probed once each
    running = {t.name for t in left if record.run_is_held(driver.run_directory(t))}
    print(f"{'trial':48} {'mode':9} state")  # the run's: a matched arm's trials are static
    seen: Blocked = {}
    for trial in driver.trials:
        state = _state(driver, trial, trial.name in running, seen)
        print(f"{trial.name:48} {trial_mode(spec, trial):9} {state}")
    cpu = spec.resources.gpus == 0
    per_epoch = _static_epoch(spec, sorted({t.task for t in left}), timed=cpu)
    epochs = {t.name: _host_epochs(driver, t) for t in left}
    flops = sum(epochs[t.name] * per_epoch[_host(spec, t)].flops for t in left)
    failed = sum(1 for t in driver.trials if driver.exhausted(t))
    gave_up = f" ({failed} failed with no attempt left: raise retries to run them)" * bool(failed)
    live = f" ({len(running)} running now: another process runs them)" * bool(running)
    print(
        f"\n{_trials(driver.trials)}, {len(left)} to run{live}{gave_up}: {sum(epochs.values())} "
        f"host epochs, at least {flops / 1e12:.3g} TFLOP of training (each arm's static host; "
        f"growth adds more); each trial asks Ray for {spec.resources.cpus:g} CPU and "
        f"{spec.resources.gpus:g} GPU; scored by {SCORES[spec.score]}"
    )
    if not left:
        return
    if not cpu:
        print("wall time: not estimated for trials on GPUs (this command times CPU epochs)")
        return
    seconds = {
        t.name: epochs[t.name] * _epoch_seconds(spec, t, per_epoch[_host(spec, t)]) for t in left
    }
    cores = usable_cores()
    slots = max(1, min(int(cores // spec.resources.cpus), cores // spec.resources.threads))
    wall = max(sum(seconds.values()) / slots, _longest_chain(driver, seconds))
    ppo = any(t.kind == "policy" for t in left)  # environments, trained in groups
    timed = ", ".join(
        f"{task} {_timing(e, ppo)}" for (task, w), e in per_epoch.items() if w is None
    )
    per = "trial (per environment of a PPO training)" if ppo else "trial"
    print(
        f"wall time: about {_duration(wall)} or more on this machine's {cores} core(s) ({slots} "
        f"trial(s) at once; one static-host epoch per {per}, timed here now: {timed}); "
        "growing seeds, evaluation and policy updates add to it, other work on the machine too, "
        "and Ray's start and each trial's own (seconds each: most of a small study's time)"
    )


def _trials(trials: Sequence[Trial]) -> str:
    """How many trials, with the PPO trainings among them named (results.md counts the arms'
    trials only)."""
    policies = sum(t.kind == "policy" for t in trials)
    trainings = f" ({counted(policies, 'PPO policy training')} among them)"
    return counted(len(trials), "trial") + trainings * bool(policies)


def _timed(
    epoch: _Epoch, first: Episode, timing: HostTraining, data: Dataset, scale: float
) -> _Epoch:
    """``epoch`` with its seconds measured: ``first``'s after a warm-up epoch, alone and, for a
    host a CPU trains in groups, ``cpu_chunk`` episodes together; times ``scale``."""
    import torch

    from esper.simic.env import task_episode
    from esper.simic.vector import cpu_chunk
    from esper.tolaria.episode import reset_together

    def seconds(episodes: list[Episode], chunk: int) -> float:
        start = time.perf_counter()
        reset_together(episodes, chunk)
        return (time.perf_counter() - start) / len(episodes)

    chunk = cpu_chunk(first)
    cpu = torch.device("cpu")
    episodes = [first] + [task_episode(timing, data, i, cpu, _quiet) for i in range(1, chunk)]
    seconds(episodes[:1], 1)  # warm-up
    alone = seconds(episodes[:1], 1) * scale
    grouped = seconds(episodes[:chunk], chunk) * scale if chunk > 1 else alone
    return epoch._replace(seconds=alone, grouped=grouped, chunk=chunk)


def _widths(
    spec: StudySpec, task: str, host: _Epoch, timing: HostTraining, data: Dataset, batches: int
) -> dict[tuple[str, int | None], _Epoch]:
    """``_static_epoch``'s entries of the static arms' own widths on ``task``, from the task
    host's ``host``: the FLOPs of their own host, its seconds scaled by the FLOPs at most."""
    import torch

    from esper.simic.env import task_episode
    from esper.tolaria.flops import step_flops

    widths = {a.width for a in spec.arms if a.controller == "static" and a.width is not None}
    n = timing.batch_size
    assert n is not None
    result: dict[tuple[str, int | None], _Epoch] = {}
    for width in sorted(widths):
        own = task_episode(replace(timing, width=width), data, 0, torch.device("cpu"), _quiet)
        flops = float(step_flops(own.initial_model, data.x_train[:n], data.y_train[:n])) * batches
        ratio = min(1.0, flops / host.flops) if host.flops else 1.0
        result[task, width] = host._replace(
            flops=flops, seconds=host.seconds * ratio, grouped=host.grouped * ratio
        )
    return result


def _quiet(event: object) -> None:
    """An episode's telemetry, unheard (the dry run only times and counts)."""


def _timing(epoch: _Epoch, ppo: bool) -> str:
    """A timed epoch for people; with ``ppo`` (a PPO training's environments train in groups)
    its grouped time too."""
    grouped = f" ({epoch.grouped:.3g} s in groups of {epoch.chunk})" * (ppo and epoch.chunk > 1)
    return f"{epoch.seconds:.3g} s{grouped}"


def _epoch_seconds(spec: StudySpec, trial: Trial, epoch: _Epoch) -> float:
    """Seconds of one of ``trial``'s host epochs: a policy training's environments train in
    grouped chunks (``esper.simic.vector.cpu_chunk``) when it has enough of them."""
    if trial.kind == "policy" and epoch.chunk > 1:
        config = ppo_config(spec, spec.arm(trial.arm), trial.task, trial.seed)
        if config.ppo.n_envs >= epoch.chunk:
            return epoch.grouped
    return epoch.seconds


def _longest_chain(driver: StudyDriver, seconds: dict[str, float]) -> float:
    """Seconds of the longest run of trials that must follow one another (a policy training,
    then its evaluations, then what waits for those), however many run at once."""
    ends: dict[str, float] = {}
    starts: dict[int, tuple[tuple[Trial, ...], float]] = {}  # id -> (needs, kept alive; start)

    def end(trial: Trial) -> float:
        if trial.name not in ends:
            needs = driver.needs(trial)  # one tuple for all trials matching an arm on a task
            if id(needs) not in starts:
                starts[id(needs)] = needs, max(map(end, needs), default=0.0)
            ends[trial.name] = starts[id(needs)][1] + seconds.get(trial.name, 0.0)
        return ends[trial.name]

    return max((end(t) for t in driver.trials), default=0.0)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _state(driver: StudyDriver, trial: Trial, running: bool, seen: Blocked) -> str:
    if trial.name in driver.done:
        row = driver.rows.get(trial.name)  # read when the driver found the trial finished
        return "done" if row is None or row.score is None else f"done: {row.score:.2f}%"
    attempts = driver.state.attempts.get(trial.name, 0)
    if driver.exhausted(trial):
        tried = counted(attempts, "time")
        return f"failed {tried}: {driver.state.errors.get(trial.name, '')}"
    gone = driver.blocked_by(trial, seen)
    if gone is not None:
        return f"cannot start: {gone.name} failed on every attempt"
    needs = driver.pending(trial)
    if needs:
        first = next(iter(needs))
        return f"waits for {first}" + (f" and {len(needs) - 1} more" if len(needs) > 1 else "")
    attempt = "" if attempts == 0 else f" (attempt {attempts + 1})"
    done = _steps_done(driver, trial)
    unit = "epoch" if trial.kind == "growth" else "round"
    if running:  # a live study's trial, or a resume
        return f"running now: {unit} {done} of {_steps(driver.spec, trial)} checkpointed"
    if done:
        return f"to resume after {unit} {done} of {_steps(driver.spec, trial)}{attempt}"
    return f"to run{attempt}"


def _warn_slow_precision(spec: StudySpec) -> None:
    """``warn_slow_precision`` for a study whose trials train in bfloat16 on this CPU."""
    if spec.resources.gpus:
        return
    slow = [training(spec, task) for task in spec.tasks]
    slow = [budget for budget in slow if budget.precision == "bfloat16"]
    if slow:
        warn_slow_precision(slow[0], True)


def _steps(spec: StudySpec, trial: Trial) -> int:
    """A trial's planned steps: its episode's epochs, or its PPO training's rounds."""
    if trial.kind == "growth":
        return training(spec, trial.task).episode_length()
    return ppo_config(spec, spec.arm(trial.arm), trial.task, trial.seed).ppo.rounds


def _steps_done(driver: StudyDriver, trial: Trial) -> int:
    """The steps (epochs, PPO rounds) an unfinished trial's run has checkpointed, which its
    next attempt resumes after; 0 for one not started."""
    return latest_step(driver.run_directory(trial)) or 0


def _host_epochs(driver: StudyDriver, trial: Trial) -> int:
    """Host epochs a trial has left to train: what its episode or its PPO run's rounds ×
    environments × episode epochs has not checkpointed yet."""
    left = max(0, _steps(driver.spec, trial) - _steps_done(driver, trial))
    if trial.kind == "growth":
        return left
    config = ppo_config(driver.spec, driver.spec.arm(trial.arm), trial.task, trial.seed)
    return left * config.ppo.n_envs * config.env.episode_length()


class _Epoch(NamedTuple):
    flops: float
    seconds: float  # one episode's epoch
    grouped: float  # per episode, of ``chunk`` episodes trained as one grouped computation
    chunk: int


MAX_TIMED_BATCHES = 100
"""The dry run times an epoch of at most this many batches (and that share of its validation)
and scales it to the budget's (``batches_per_epoch = 10000000`` made the dry run take hours)."""


def _host(spec: StudySpec, trial: Trial) -> tuple[str, int | None]:
    """Which host ``trial`` trains, as ``_static_epoch`` keys it: its task, and the width of a
    static arm that gives one (None: the task's host)."""
    arm = spec.arm(trial.arm)
    return trial.task, arm.width if arm.controller == "static" else None


def _static_epoch(
    spec: StudySpec, tasks: Sequence[str], timed: bool
) -> dict[tuple[str, int | None], _Epoch]:
    """Training FLOPs of one epoch of each task's static host at the study's budget and, if
    ``timed``, its measured seconds at the trials' threads (validation included): a fresh
    episode's first epoch, after one has warmed up; alone and, for hosts a CPU trains in
    groups, ``cpu_chunk`` episodes together. Keyed by task and width (``_host``): a static
    arm's own width gets its own FLOPs, and the task host's seconds scaled by the FLOPs at
    most (a smaller host is no faster than its FLOPs say: the bound stays a lower one)."""
    import torch

    from esper.simic.env import task_episode
    from esper.tolaria.flops import step_flops

    result: dict[tuple[str, int | None], _Epoch] = {}
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    try:
        for task in tasks:
            host_training = training(spec, task)
            data = load_data(host_training)
            n = host_training.batch_size
            assert n is not None and host_training.threads is not None
            batches = host_training.batches_per_epoch or math.ceil(len(data.x_train) / n)
            # A long epoch is timed in part, with its validation cut in the same proportion,
            # and scaled back: both parts take time in proportion to their samples.
            timed_batches = min(batches, MAX_TIMED_BATCHES)
            scale = batches / timed_batches
            val = min(host_training.val_samples or len(data.x_val), len(data.x_val))
            timing = replace(
                host_training,
                batches_per_epoch=timed_batches,
                val_samples=max(1, round(val / scale)),
            )
            first = task_episode(timing, data, 0, cpu, _quiet)  # the task's host
            step = step_flops(first.initial_model, data.x_train[:n], data.y_train[:n])
            flops = float(step) * batches
            epoch = _Epoch(flops, math.nan, math.nan, 1)
            if timed:
                part = f"{timed_batches} of {batches}" if scale > 1 else f"{batches}"
                scaled = ", scaled" * (scale > 1)
                # a wide host's epochs take a while: say what is running (stderr, as progress)
                _say(f"timing epochs of {task}'s static host ({part} batches each{scaled}) ...")
                # at most this machine's cores: more threads than cores only thrash the timing
                torch.set_num_threads(min(host_training.threads, os.cpu_count() or 1))
                epoch = _timed(epoch, first, timing, data, scale)
            result[task, None] = epoch
            result |= _widths(spec, task, epoch, timing, data, batches)
    finally:
        torch.set_num_threads(threads)
    return result
