"""A run directory through a run's life: growth runs (``esper.study.growth``) and PPO runs.

Both kinds share one life cycle (``Recorder``): everything is validated and built before the
directory is touched; a new run writes ``config.json`` (a valid ``--config``), ``meta.json``
(git revision, versions, seeds, threads, command line) and a first checkpoint; every step (an
epoch, or a PPO round) appends its CSV row and commits a checkpoint as a whole; the run ends
with ``summary.json``. Ctrl-C, SIGTERM and SIGHUP stop at the next safe point with the last step
checkpointed, an ``interrupted`` summary and the resume command printed. ``--resume`` checks the
directory against its own configuration before continuing from its checkpoint. The run
directory's files are written only through ``esper.nissa.record``.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import signal
import socket
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from esper.leyline.config import (
    HostTraining,
    TelemetrySettings,
    UserError,
    config_dict,
    first_line,
)
from esper.leyline.events import Event, RunStarted
from esper.leyline.files import (
    DiskFullError,
    WriteError,
    atomic_write,
    fsync_directory,
    shell_path,
)
from esper.leyline.loading import TORCH_LOAD_ERRORS, load_untrusted
from esper.nissa import JsonlSink, Sink, TelemetryHub, checkpoints, record
from esper.nissa.console import ConsoleSink, detach_from_hung_up_terminal
from esper.nissa.csvlog import CsvLog
from esper.nissa.log import EventLogError, counted, read_events
from esper.nissa.record import RunMeta
from esper.nissa.sinks import TensorBoardSink
from esper.nissa.stopping import Stop, stopping_signals
from esper.nissa.tracking import MLflowSink, TrackingError
from esper.study.checks import (
    check_new_run_directory,
    default_out,
)

logger = logging.getLogger(__name__)

Meta = Callable[[str], RunMeta]
"""Makes a new run's ``meta.json`` receipt from its run id."""

EXIT_FAILED = 1
"""Training started but could not go on (e.g. a governor panic on an episode's first epoch)."""


# ------------------------------------------------------------------------------ signals


@contextmanager
def stop_signals() -> Iterator[Callable[..., AbstractContextManager[None]]]:
    """SIGINT, SIGTERM and SIGHUP raise ``Stop`` at once, except inside the ``held()`` block
    they yield, where they are held until it ends (a checkpoint and its CSV row are never
    half-written, and a run's completion is not cut short), and after a first ``Stop``: the
    process is stopping, and a burst of signals (Ctrl-C pressed twice, SIGTERM from two nested
    ``timeout`` commands) cut its interrupted summary short, leaving none."""
    state = {"holding": 0, "pending": False, "stopping": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            detach_from_hung_up_terminal()
        if state["holding"] or state["stopping"]:
            state["pending"] = True
        else:
            state["stopping"] = True
            raise Stop

    @contextmanager
    def held(final: bool | Callable[[], bool] = False) -> Iterator[None]:
        """``final``: the block completes the run (or, a callable, says so once the block has
        run), so a signal held in it is dropped (the process is ending anyway, with the run
        complete) instead of stopping it afterwards."""
        state["holding"] += 1
        try:
            yield
        finally:
            state["holding"] -= 1
        if state["pending"] and not state["holding"]:
            state["pending"] = False
            if not (final() if callable(final) else final):
                state["stopping"] = True  # as the handler's own Stop: later signals wait
                raise Stop

    signals = (signal.SIGINT, *stopping_signals())
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield held
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------ building


# ------------------------------------------------------------------------------ recorder


def _abandoned(staging: Path) -> bool:
    """Whether ``staging`` was made on this host by a process that is gone."""
    pid, _, rest = staging.name.removeprefix(record.STAGING_PREFIX).partition("@")
    host = rest.partition("@")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's start on a shared file system, or not ours
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def _staging(out: Path) -> Path:
    """Where ``out`` is assembled; abandoned stagings beside it (killed starts) go first."""
    parent = out.absolute().parent
    for stale in parent.glob(f"{record.STAGING_PREFIX}*"):
        if _abandoned(stale):
            shutil.rmtree(stale, ignore_errors=True)
    maker = f"{os.getpid()}@{socket.gethostname()}"
    staging = parent / f"{record.STAGING_PREFIX}{maker}@{out.name[:80]}"
    staging.mkdir(parents=True)
    return staging


def _check_writable(run: Path, paths: Sequence[Path]) -> None:
    """Refuse a resume that could not write its next checkpoint, rows or events: checked
    before anything is written (a read-only file system refuses even root).

    Raises:
        UserError: naming the first path that cannot be written.
    """
    for path in paths:
        if path.exists() and not os.access(path, os.W_OK):
            raise UserError(
                f"cannot resume {str(run)!r}: {str(path)!r} is not writable (a read-only file "
                "system, or no permission); make it writable or copy the run elsewhere"
            )


@dataclass
class Recorder:
    """One run directory through a run's life: create or resume, steps, summary.

    Attributes:
        directory: the run directory.
        run_id: the run's id (recorded in ``meta.json`` and every checkpoint).
        csv: the run's per-step CSV log (an epoch, or a PPO round, per row).
        rows: the rows recorded so far (those the last checkpoint covers).
        hub: the run's telemetry hub.
        checkpoint: on resume, the checkpoint to continue from.
        step: the step of the last committed checkpoint.
    """

    directory: Path
    run_id: str
    csv: CsvLog[Any]
    rows: list[Any]
    hub: TelemetryHub
    checkpoint: checkpoints.Checkpoint | None
    step: int = 0
    _lock: weakref.finalize[[int], Recorder] | None = field(default=None, repr=False)

    def _hold(self, fd: int | None) -> Recorder:
        """Keep the run's lock (``record.lock_run``'s ``fd``; None: the file system has none)
        until ``release``, or until this recorder is gone."""
        if fd is not None:
            self._lock = weakref.finalize(self, os.close, fd)
        return self

    def release(self) -> None:
        """Unlock the run: this process is done with it."""
        if self._lock is not None:
            self._lock()

    @contextmanager
    def releasing(self) -> Iterator[None]:
        """Unlock the run if the block fails: for what runs between ``open`` and ``drive``
        (which unlocks on every way out), so that a failed attempt leaves the run to the next
        in this process too (a lock conflicts with another open file, not only another
        process), whether or not the recorder is still referenced."""
        try:
            yield
        except BaseException:
            self.release()
            raise

    @classmethod
    def open(
        cls,
        mode: str,
        config: Any,
        out: Path | None,
        resume: Path | None,
        row_type: type,
        meta: Meta,
        hub: TelemetryHub,
        first_state: Callable[[], dict[str, Any]],
        planned: int | None = None,
    ) -> Recorder:
        """Create a new run directory with its step-0 checkpoint (``first_state()``), or check
        and reopen the one ``--resume`` names. Signals wait until the directory is complete.

        ``planned``: on a PPO resume, the rounds this attempt runs to (``--ppo.rounds`` may
        raise the recorded plan): a completed run whose checkpoint is below it trains on.
        Without it (growth runs) a completed run is refused.

        Raises:
            UserError: the directory cannot be created, is not empty, lies inside another run,
                or (resume) is completed or has an inconsistent record.
        """
        if resume is not None:
            try:
                return cls._reopen(mode, resume, row_type, hub, planned)
            except (record.RunRecordError, WriteError) as err:
                raise UserError(str(err)) from err
            except OSError as err:  # e.g. a read-only directory
                raise UserError(f"cannot resume {str(resume)!r}: {err}") from err
        if out is not None:
            check_new_run_directory(out)  # before the first state is built
        files = _state_files(first_state())
        task = config.env.task if mode == "ppo" else config.training.task
        for _ in range(_NAME_TRIES):  # another run may take a default name between
            named = out or default_out(task, mode)  # its choice and the rename into place
            check_new_run_directory(named)
            run_id = record.new_run_id(named)
            if _created(named, mode, meta, row_type, files, config_dict(config), run_id, out):
                break
        else:
            raise UserError(f"cannot create run directory {str(named)!r}: other runs took it")
        out = named
        csv: CsvLog[Any] = CsvLog(out / record.CSV_FILES[mode], row_type)
        try:  # a --resume of it started the moment it appeared runs it, and this one stops
            fd = record.lock_run(out)
        except record.RunRecordError as err:
            raise UserError(str(err)) from err
        except OSError as err:
            raise UserError(f"cannot lock the new run {str(out)!r}: {err.strerror}") from err
        return cls(out, run_id, csv, [], hub, None)._hold(fd)

    @classmethod
    def _reopen(
        cls, mode: str, directory: Path, row_type: type, hub: TelemetryHub, planned: int | None
    ) -> Recorder:
        """The run in ``directory``, locked for this process before anything in it is read."""
        problem = record.not_a_run(directory)
        if problem is not None:
            raise UserError(problem)
        fd = record.lock_run(directory)
        try:
            return cls._reopen_locked(mode, directory, row_type, hub, planned)._hold(fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    @classmethod
    def _reopen_locked(
        cls, mode: str, directory: Path, row_type: type, hub: TelemetryHub, planned: int | None
    ) -> Recorder:
        status = record.run_status(directory)
        completed = status == "completed"
        if completed and planned is None:
            raise UserError(f"run {str(directory)!r} already completed; nothing to resume")
        if status == "terminated":  # resumed, it appended another start and end every time
            raise UserError(
                f"run {str(directory)!r} already finished: the governor terminated it (a "
                "training panic; it ends on the restored, healthy model); nothing to resume"
            )
        meta = record.read_meta(directory)
        if meta is None:
            raise UserError(f"{str(directory)!r} is not an Esper run directory (no meta.json)")
        checkpoint = checkpoints.load_checkpoint(directory, meta.run_id)
        if completed and planned is not None and checkpoint.step >= planned:
            raise UserError(
                f"run {str(directory)!r} already completed round {checkpoint.step}; nothing to "
                f"resume (--ppo.rounds above {checkpoint.step} trains it on)"
            )
        events = directory / record.EVENTS_FILE
        if events.exists():  # a crash cuts only its last line; a bad line before it is damage
            try:
                logged = read_events(events).records
            except EventLogError as err:
                raise UserError(f"cannot resume {str(directory)!r}: {err}") from None
            if checkpoint.step > 0 and not logged:  # lines are flushed, not fsynced
                logger.warning(
                    "%s is empty though the checkpoint is at step %d (lost in a system crash, "
                    "or emptied): the run continues, and its views lack steps 1 to %d",
                    events,
                    checkpoint.step,
                    checkpoint.step,
                )
        _check_writable(directory, [directory, directory / record.CHECKPOINTS_DIR, events])
        csv: CsvLog[Any] = CsvLog(directory / record.CSV_FILES[mode], row_type)
        rows = csv.read(checkpoint.step)  # nothing is written until ``start``: checks come first
        return cls(directory, meta.run_id, csv, rows, hub, checkpoint, checkpoint.step)

    def _record_resume(self, step: int) -> None:
        """Append this resume to ``meta.json`` (``RunMeta.resumes``), warning when it runs
        other code or packages than the run last did: its steps after ``step`` then do."""
        meta = record.read_meta(self.directory)
        assert meta is not None  # ``reopen`` read it
        resume = record.resume_record(step, sys.argv)
        change = record.code_change(meta, resume)
        if change is not None:
            logger.warning(
                "%s: this resume runs other code than the run did (%s): its steps after %d "
                "run on it (meta.json records each resume)",
                self.directory,
                change,
                step,
            )
        resumed = replace(meta, resumes=(*meta.resumes, resume))
        record.write_json(self.directory / record.META_FILE, resumed.to_json())

    def start(
        self, mode: str, training: HostTraining, seed: int, telemetry: TelemetrySettings
    ) -> None:
        """Attach the sinks and announce the run (``RunStarted``).

        Raises:
            UserError: the MLflow tracking store refused or did not answer.
        """
        self.hub.run_id = self.run_id
        sinks = self._sinks(mode, telemetry)  # first: one that fails leaves the run as it was
        if self.checkpoint is not None:  # a resume, every check passed: the run is live again
            checkpoints.clean_stale(self.directory)  # after the load: a bad LATEST deletes nothing
            self.csv.rewrite(self.rows)  # drop the rows of steps after the checkpoint
            (self.directory / record.SUMMARY_FILE).unlink(missing_ok=True)
        log = JsonlSink(self.directory / record.EVENTS_FILE)
        if log.cut:
            logger.warning(
                "%s ended in a partial line (the run crashed while writing it); cut %d bytes "
                "before continuing",
                log.path,
                len(log.cut),
            )
        self.hub.sinks.extend([*sinks, log])
        resumed = None if self.checkpoint is None else self.checkpoint.step
        if resumed is not None:  # every sink is up: this resume runs
            self._record_resume(resumed)
        self.hub.emit(
            RunStarted(
                self.run_id,
                mode,
                training.task,
                seed,
                training.episode_length(),
                training.slots,
                resumed,
            )
        )

    def _sinks(self, mode: str, telemetry: TelemetrySettings) -> list[Sink]:
        """The MLflow and TensorBoard sinks asked for (a resume's summary was deleted before
        they were made, so one that failed left an interrupted run "unfinished").

        Raises:
            UserError: the MLflow store refused or did not answer, or TensorBoard's folder
                cannot be written (an MLflow run already opened is ended as interrupted).
        """
        sinks: list[Sink] = []
        where = shell_path(self.directory)
        tensorboard = self.directory / "tensorboard"
        try:
            if telemetry.mlflow is not None:
                sinks.append(MLflowSink(telemetry.mlflow, self.directory, mode))
            if telemetry.tensorboard:
                config = record.read_config(self.directory)
                sinks.append(TensorBoardSink(tensorboard, config))
        except TrackingError as err:
            raise UserError(f"{err}; continue the run with --resume {where}") from err
        except OSError as err:  # a file in its place, a folder it may not write in
            for sink in sinks:
                if isinstance(sink, MLflowSink):
                    sink.abandon()
            raise UserError(
                f"cannot write TensorBoard's events into {str(tensorboard)!r} "
                f"({err.strerror or err}); continue the run with --resume {where}"
            ) from err
        return sinks

    def console(self, label: str, total: int) -> None:
        """Show progress on the console (every step, whatever the telemetry level)."""
        done = self.step
        sink = ConsoleSink(sys.stderr, label, total, done, bar=sys.stderr.isatty())
        self.hub.unfiltered.append(sink)

    def commit(self, step: int, row: Any, state: dict[str, Any]) -> None:
        """Record one step: its CSV row, then its checkpoint (committed as a whole, with the
        torch thread count it ran with).

        Raises:
            DiskFullError: out of space; the previous checkpoint is intact.
        """
        files = _state_files(state)
        if row is not None:
            self.csv.append(row)
        try:
            checkpoints.commit_checkpoint(self.directory, step, files, self.run_id)
        except BaseException:
            if row is not None:  # the CSV describes checkpointed steps only
                self.csv.rewrite(self.rows)
            raise
        if row is not None:
            self.rows.append(row)
        self.step = step

    def state(self) -> dict[str, Any]:
        """The state dict of the last committed checkpoint (see ``read_state``).

        Raises:
            UserError: it ran with another torch thread count than this process has (the
                count changes results), or see ``read_state``.
        """
        state = read_state(self.directory, self.run_id)
        threads = torch.get_num_threads()
        if not isinstance(state.get("threads"), int):  # written by every checkpoint
            raise UserError(
                f"cannot resume {str(self.directory)!r}: state.pt records no torch thread count "
                "(not a checkpoint Esper wrote)"
            )
        if state["threads"] != threads:
            raise UserError(
                f"cannot resume {str(self.directory)!r}: it ran with "
                f"{counted(state['threads'], 'torch thread')}, this process has {threads}; "
                "the count changes results"
            )
        return state

    def check_step(self, reached: int, planned: int, unit: str) -> None:
        """A restored state must be at the checkpoint's step, within the run's plan.

        Raises:
            UserError: naming the step the state holds, the manifest's and the plan.
        """
        step = self.step
        if reached == step and reached > planned:
            flag = f"; --ppo.rounds takes {reached} or more" if unit == "round" else ""
            raise UserError(
                f"cannot resume {str(self.directory)!r}: it has done {reached} {unit}s, more "
                f"than the {planned} planned{flag}"
            )
        if reached != step:
            raise UserError(
                f"cannot resume {str(self.directory)!r}: its checkpoint holds {unit} {reached} "
                f"(manifest: {step}) of {planned}"
            )

    def drive(
        self,
        step: Callable[[Callable[[], AbstractContextManager[None]]], None],
        done: Callable[[], bool],
        finish: Callable[[str, str | None], None],
        complete: Callable[[], str],
        failures: tuple[type[Exception], ...] = (),
        begin: Callable[[], None] | None = None,
    ) -> tuple[str, str | None]:
        """``begin()``, call ``step(held)`` until ``done()``, then ``complete()`` the run (its
        final files and summary; returns the status); return the status and failure message.
        Every command's start (``begin``: ``start`` the recorder; a signal there left no
        summary, though the console said "interrupted"), steps and completion run here, under
        ``stop_signals``: a signal during the completion waits for it and is then dropped,
        since the run is done; so are signals while an interrupted or failed run's summary is
        written.

        ``failures``: errors that end the run as ``failed`` (recorded, not raised).

        Raises:
            Stop: Ctrl-C or SIGTERM, after ``finish("interrupted", None)``.
            UserError: out of disk space, after ``finish("interrupted", None)``; the last
                checkpoint is intact.
        """
        with stop_signals() as held:
            try:
                if begin is not None:
                    begin()
                while not done():
                    # A signal held while the last step was committed is one after the last
                    # step, as in the completion: dropped (it made a finished run "interrupted")
                    step(lambda: held(final=done))
                with held(final=True):
                    return complete(), None
            except KeyboardInterrupt as err:  # a Stop, or Ray's own for a signal inside ray.wait
                with held(final=True):  # the summary is written whatever signals follow
                    finish("interrupted", None)
                if isinstance(err, Stop):
                    raise
                raise Stop from err
            except failures as err:
                with held(final=True):
                    finish("failed", str(err))
                return "failed", str(err)
            except DiskFullError as err:
                with held(final=True):
                    finish("interrupted", None)
                hint = "the last checkpoint is intact: resume when there is room"
                raise UserError(f"{err}; {hint}") from err
            except BaseException:
                self.hub.close()  # an unexpected failure: keep what was logged, release files
                self.release()
                raise

    def finish(self, summary: record.RunSummary, finished: Event) -> None:
        """Write ``summary.json`` and close the telemetry (after the summary: a tracker uploads
        it)."""
        self.hub.emit(finished)
        try:
            record.write_summary(self.directory, summary)
        finally:
            self.hub.close()
            self.release()


@dataclass(frozen=True)
class Policy:
    """A PPO run's policy as read once (``read_policy``): an eval runs, checks and records
    this one read, never a later round its run trained on to meanwhile.

    Attributes:
        path: the PPO run's directory.
        meta: its ``meta.json`` (its id, its environments' seeds).
        state: the state in its last checkpoint (``policy_rounds`` says its round).
    """

    path: Path
    meta: RunMeta
    state: dict[str, Any]

    @property
    def rounds(self) -> int:
        """The PPO rounds it finished (``read_policy`` refused a state without the count)."""
        rounds = policy_rounds(self.state)
        assert rounds is not None
        return rounds


def read_policy(run_dir: Path) -> Policy:
    """A PPO run's policy: its last checkpoint's state (for ``esper eval --policy``).

    Raises:
        UserError: ``run_dir`` is not a PPO run directory, its checkpoint is damaged, or it has
            finished no round (its policy is the untrained initialization).
    """
    meta = None
    try:
        meta = record.read_meta(run_dir) if record.is_run_directory(run_dir) else None
    except record.RunRecordError as err:
        raise UserError(str(err)) from err
    if meta is None and not os.path.lexists(run_dir):
        raise UserError(f"policy {str(run_dir)!r} does not exist (a PPO run directory)")
    if meta is None or meta.mode != "ppo":
        raise UserError(f"policy {str(run_dir)!r} is not an Esper PPO run directory")
    state = read_state(run_dir, meta.run_id, "cannot read the policy in")
    rounds = policy_rounds(state)
    if rounds is None or rounds < 0:
        raise UserError(
            f"policy {str(run_dir)!r}: its checkpoint gives no count of finished PPO rounds "
            "(a whole number in its trainer state); damaged, or not written by esper ppo"
        )
    if rounds == 0:
        raise UserError(
            f"policy {str(run_dir)!r} has finished no PPO round (it was stopped in its first): "
            f"its policy is untrained; train it with: esper ppo --resume {shell_path(run_dir)}"
        )
    return Policy(run_dir, meta, state)


def policy_rounds(state: dict[str, Any]) -> int | None:
    """The PPO rounds a policy's state (``Policy.state``) finished; None when it does not say."""
    trainer = state.get("trainer")
    rounds = trainer.get("round") if isinstance(trainer, dict) else None
    return rounds if type(rounds) is int else None  # not a bool


def partial_policy(policy: Path, rounds: int | None) -> str | None:
    """What an evaluation of the policy in ``policy``, at ``rounds`` (``policy_rounds``), should
    know when its run stopped before its planned rounds (None: it finished them).

    Raises:
        UserError: the run's ``config.json`` cannot be read.
    """
    try:
        planned = record.read_config(policy).get("ppo", {}).get("rounds")
    except record.RunRecordError as err:
        raise UserError(f"policy {str(policy)!r}: {err}") from err
    if not (isinstance(planned, int) and rounds is not None and rounds < planned):
        return None
    return (
        f"the policy finished {rounds} of its run's {planned} PPO rounds (stopped early, or "
        "still training)"
    )


def _state_files(state: dict[str, Any]) -> dict[str, bytes]:
    """A checkpoint's files: the state with the torch thread count it ran with."""
    buffer = io.BytesIO()
    torch.save({**state, "threads": torch.get_num_threads()}, buffer)
    return {"state.pt": buffer.getvalue()}


_NAME_TRIES = 10
"""Default names tried for a new run whose name another run took meanwhile."""


def _created(
    out: Path,
    mode: str,
    meta: Meta,
    row_type: type,
    files: dict[str, bytes],
    config: Any,
    run_id: str,
    given: Path | None,
) -> bool:
    """Create the run directory ``out`` (``_create``) with signals held; False when ``out``,
    a default name (``given`` None), was taken by another run in the meantime.

    Raises:
        Stop: a signal came while it was made (it is there, at step 0: how to continue).
        UserError: it cannot be created (the name was given, or the failure is another).
    """
    try:
        with stop_signals() as held, held():
            _create(out, mode, config, meta(run_id), row_type, files)
    except Stop:  # held until the directory was complete: it is there, at step 0
        raise Stop(f"continue with: esper {mode} --resume {shell_path(out)}") from None
    except (record.RunRecordError, WriteError) as err:
        raise UserError(str(err)) from err
    except OSError as err:  # e.g. a name too long for the file system, no permission
        if given is None and err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise UserError(f"cannot create run directory {str(out)!r}: {err.strerror}") from err
    return True


def _create(
    out: Path, mode: str, config: Any, meta: RunMeta, row_type: type, files: dict[str, bytes]
) -> None:
    """Assemble a new run directory (config, meta, an empty event log, the CSV header and the
    step-0 checkpoint) beside ``out``, then rename it into place whole."""
    staging = _staging(out)
    try:
        record.write_json(staging / record.CONFIG_FILE, config)
        atomic_write(staging / record.EVENTS_FILE, "")
        record.write_json(staging / record.META_FILE, meta.to_json())
        CsvLog(staging / record.CSV_FILES[mode], row_type).rewrite([])
        checkpoints.commit_checkpoint(staging, 0, files, meta.run_id)  # a kill in step 1 resumes
        parent = out.absolute().parent
        fsync_directory(parent)  # fails before the rename where it would after (no read
        # permission): the run was made, yet reported as not
        os.rename(staging, out)  # replaces an empty directory the user made
        fsync_directory(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_state(directory: Path, run_id: str, purpose: str = "cannot resume") -> dict[str, Any]:
    """The state dict in a run's last committed checkpoint, every byte verified.

    Args:
        purpose: how an error message begins (``cannot resume``; a policy's reader says what
            it wanted the state for).

    Raises:
        UserError: no checkpoint, a corrupt or foreign one, or one that is not a state dict.
    """
    where = f"{purpose} {str(directory)!r}"
    try:
        checkpoint = checkpoints.load_checkpoint(directory, run_id)
        state = load_untrusted(checkpoint.files["state.pt"])
    except record.RunRecordError as err:
        raise UserError(f"{where}: {err}") from err
    except TORCH_LOAD_ERRORS as err:  # an empty file's EOFError has no message
        raise UserError(f"{where}: state.pt: {first_line(err)}") from err
    if not isinstance(state, dict):
        raise UserError(f"{where}: state.pt is not a state")
    return state
