"""``esper tui RUN`` and ``--tui`` on the training commands: the terminal UI (Karn).

``esper tui RUN`` validates the run directory and folds its whole event log before the UI
starts, so a bad directory or a malformed line (bad JSON, an unknown event, a field of the wrong
type) is a one-line error (exit 2), then follows the log until the user quits.

``esper heuristic|static|eval|ppo ... --tui`` starts the same command without ``--tui`` as a
child process (``python -m esper.cli.main``), with an explicit ``--out`` when neither ``--out``
nor ``--resume`` names the run directory, so this process knows where to look. The child's
console output goes to ``console.log`` in the run directory: first to a hidden file beside it
(a new run directory must be empty when the child creates it), moved in once the run started
(or appended to a resumed run's ``console.log`` when the child stops). Once the child's first
event is written the UI follows the run. Quitting the UI while the child trains sends it SIGINT
— the same as Ctrl-C: it checkpoints and exits — and the command returns the child's exit code,
after echoing the child's last lines (its result, or the hint to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from esper.karn.tui import RunApp, catch_up
from esper.leyline.config import UserError
from esper.leyline.files import RefusedFileError, open_regular
from esper.nissa.log import EVENTS_FILE, EventTail, RunDirectory, open_run

if TYPE_CHECKING:
    from esper.cli.config import RunOptions  # loads the run code (torch): for --tui only

CONSOLE_LOG = "console.log"
"""The child's stdout and stderr, in its run directory."""

START_POLL_SECONDS = 0.1
"""How often to look for the child's first event while it starts."""

EXIT_NOTICE_SECONDS = 3.0
"""How long a finished run's process may take to exit before the wait says so (torch's shutdown
takes about 2 s)."""

STOP_SECONDS = 300.0
"""How long an interrupted child may take to checkpoint and exit before it is killed (a PPO
round in progress is abandoned at once, so this is only reached by a hung child)."""

FINAL_LINES = 3
"""How many of the child's last lines to echo when it stops (its result or resume hint)."""


def run_tui(args: argparse.Namespace) -> int:
    """``esper tui RUN``: follow (or replay) a run in the terminal UI.

    Raises:
        RunDirectoryError: ``RUN`` is missing or not a run directory.
        EventLogError: a line of its event log is malformed.
        UserError: no interactive terminal to draw on.
    """
    run = open_run(args.run)
    tail = EventTail(run.events_path)
    state = catch_up(tail)  # a malformed line fails here, before the UI
    _require_terminal()
    app = RunApp(run, tail, state)
    _run_app(app)
    return 1 if app.return_code else 0  # 1: the UI failed (Textual printed why)


def _interactive() -> bool:
    """Whether the UI has a terminal: Textual reads keys from stdin and draws on stderr."""
    return os.isatty(0) and os.isatty(2)


def _require_terminal() -> None:
    if not _interactive():
        raise UserError("the terminal UI needs an interactive terminal (stdin and stderr)")


def _run_app(app: RunApp) -> None:
    """Run the UI until the user quits (the tests replace this with a headless pilot)."""
    app.run()


def default_directory(command: str, argv: list[str], options: RunOptions) -> Path:
    """Where the command would put its run without ``--out`` (``runs/<task>-<mode>-<time>``).

    Parses the configuration the way the command does, so bad input fails here with the
    command's own message.

    Raises:
        UserError: the configuration is invalid (e.g. no ``--task``).
    """
    from esper.study.checks import default_out

    if command == "ppo":
        from esper.cli import ppo

        return default_out(ppo.parse(argv, options).env.task, "ppo")
    from esper.cli import growth

    return default_out(growth.parse(command, argv, options).training.task, command)


def child_command(command: str, options: RunOptions, argv: list[str]) -> tuple[list[str], Path]:
    """The child's command line (``command``, ``argv``, then ``options`` without ``--tui``) and
    the run directory it writes."""
    rest = [command, *argv]
    rest += [] if options.config is None else ["--config", str(options.config)]
    if options.resume is not None:
        directory: Path = options.resume
        rest += ["--resume", str(directory)]
    else:
        directory = options.out or default_directory(command, argv, options)
        rest += ["--out", str(directory)]
    # ``-m esper``, not ``-m esper.cli.main``: the latter would load main.py a second time as
    # ``__main__``, and its ``except UserError`` would not catch the UserError the run raises.
    return [sys.executable, "-m", "esper", *rest], directory


PR_SET_PDEATHSIG = 1
"""Linux's ``prctl`` option: the signal a process gets when its parent dies."""


def _child_setup(parent: int) -> Callable[[], None]:
    """What the child does before it runs the command (``preexec_fn``): a shell may start
    background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored, so SIGINT
    is reset (the child must get its KeyboardInterrupt: a checkpoint); and on Linux, the child
    is sent SIGINT if this process dies (a SIGKILLed UI left it training on, unwatched, its
    console output in the hidden log). libc is loaded here, before the fork."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if prctl is not None:  # (sent when the thread that forked ends: ChildRun.start runs
            prctl(PR_SET_PDEATHSIG, signal.SIGINT)  # on the main thread, which ends last)
            if os.getppid() != parent:  # it died before the call: nothing will send it
                os.kill(os.getpid(), signal.SIGINT)

    return setup


@dataclass
class ChildRun:
    """A training command running as a child process, and where its console output goes.

    Attributes:
        process: the child.
        directory: its run directory.
        log_path: where its console output is being written now.
        log: the open console log (the child writes to it through its own descriptors).
        events_size: the size of ``events.jsonl`` before the child started (a resumed run's
            log already has lines; its new ones come after).
        made: the directories made to hold the console log, deepest first.
    """

    process: subprocess.Popen[bytes]
    directory: Path
    log_path: Path
    log: IO[bytes]
    events_size: int
    made: list[Path]

    @classmethod
    def start(cls, command: list[str], directory: Path) -> ChildRun:
        """Start ``command``, which writes (or resumes) the run in ``directory``.

        Raises:
            UserError: the console log cannot be created.
        """
        events = directory / EVENTS_FILE
        events_size = events.stat().st_size if events.is_file() else 0
        log_path = directory.parent / f".{directory.name}.{CONSOLE_LOG}"
        try:
            made = [p for p in (directory.parent, *directory.parent.parents) if not p.exists()]
            directory.parent.mkdir(parents=True, exist_ok=True)
            log = log_path.open("wb")
        except OSError as err:
            raise UserError(f"cannot write the console log of {str(directory)!r}: {err}") from err
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},  # console lines in written order
                process_group=0,  # the terminal's Ctrl-C reaches this process, which forwards it
                preexec_fn=_child_setup(os.getpid()),
            )
        except OSError as err:
            log.close()
            log_path.unlink()
            raise UserError(f"cannot start {command[0]!r}: {err}") from err
        return cls(process, directory, log_path, log, events_size, made)

    @property
    def final_log(self) -> Path:
        """Where the console log ends up: ``console.log`` in the run directory."""
        return self.directory / CONSOLE_LOG

    def started(self) -> bool:
        """Whether the child has written its first event (a complete line) to the run."""
        try:
            with open_regular(self.directory / EVENTS_FILE) as f:  # a pipe would block
                f.seek(self.events_size)
                return b"\n" in f.read()
        except (FileNotFoundError, NotADirectoryError, RefusedFileError):
            return False  # not yet, or never: the child refuses such a run and exits

    def wait_for_run(self) -> RunDirectory | None:
        """Block until the run has its first event; None when the child exited before.

        Raises:
            RunDirectoryError: the directory the child writes is not a readable run.
        """
        while not self.started():
            if self.process.poll() is not None and not self.started():
                return None
            time.sleep(START_POLL_SECONDS)
        self._adopt_log()
        return open_run(self.directory)

    def _adopt_log(self) -> None:
        """Move the console log into the started run's directory (the child keeps writing to
        the same file); a resumed run's existing log is appended to when the child stops."""
        if self.log_path == self.final_log or self.final_log.exists():
            return
        try:
            os.replace(self.log_path, self.final_log)
        except OSError:
            return  # e.g. the run directory is a mount point: appended when the child stops
        self.log_path = self.final_log

    def stop(self, finished: bool = False) -> int:
        """Interrupt the child if it still runs (SIGINT, as Ctrl-C), wait, and return its code
        (128 + N for a child killed by signal N, as a shell gives it).

        Args:
            finished: the run's log holds its end record: the child is only exiting (torch's
                shutdown takes seconds), so it is waited for; a SIGINT then killed it (exit 254)
                after saying it was stopping the completed run.
        """
        if finished:
            with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
                try:
                    self.process.wait(timeout=EXIT_NOTICE_SECONDS)
                except subprocess.TimeoutExpired:
                    _say("the run has finished; waiting for its process to exit ...")
                    self.process.wait(timeout=STOP_SECONDS)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # first: after a hangup, printing fails
            _say("stopping the run: waiting for its checkpoint ...")
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                _say(f"the run did not stop in {STOP_SECONDS:.0f} s; killed it")
            except KeyboardInterrupt:  # a second Ctrl-C: the user will not wait
                self.process.kill()
                _say("killed the run")
            self.process.wait()
        self.log.close()
        code = self.process.returncode
        return 128 - code if code < 0 else code

    def output(self) -> str:
        """Everything the child has written to its console."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def keep_log(self) -> None:
        """After the child stopped: make sure its console output is in the run directory."""
        if self.log_path != self.final_log:
            with self.log_path.open("rb") as src, self.final_log.open("ab") as dst:
                shutil.copyfileobj(src, dst)
            self.log_path.unlink()
            self.log_path = self.final_log

    def discard_log(self) -> None:
        """After a child that never started its run: remove the hidden console log and the
        directories made for it (bad input left ``--out``'s new parents behind, empty)."""
        if self.log_path != self.final_log:
            self.log_path.unlink(missing_ok=True)
        for directory in self.made:  # deepest first; one the child filled stays
            with contextlib.suppress(OSError):
                directory.rmdir()


def _say(line: str) -> None:
    """A progress line on stderr, if the terminal is still there (SIGHUP: it is gone)."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr)


_CONFIG_LINE = re.compile(r"\[[\w.]+\]|[\w.]+ = .*|# [\w.]+: .*")
"""A line of the effective configuration a run prints first (``config_text``'s TOML)."""


def final_lines(output: str) -> list[str]:
    """The child's closing lines: its last ``FINAL_LINES`` after its last progress line
    (``[label] ...``) and after its effective configuration (a run stopped before its first
    epoch echoed the configuration's last lines)."""
    lines = [line for line in output.splitlines() if line.strip()]
    start = 0
    for i, line in enumerate(lines):
        if line.endswith(": effective configuration"):
            start = i + 1
            while start < len(lines) and _CONFIG_LINE.fullmatch(lines[start]):
                start += 1
        elif line.startswith("[") and "] " in line:
            start = i + 1
    return lines[start:][-FINAL_LINES:]


def run_with_tui(command: str, options: RunOptions, argv: list[str]) -> int:
    """``esper heuristic|static|eval|ppo ... --tui``: train in a child process, watch it here.

    Args:
        command: the run command.
        options: its own options (``--out``, ``--resume``, ``--config``).
        argv: its other arguments.

    Returns:
        The child's exit code (130 when quitting the UI interrupted it).

    Raises:
        UserError: no interactive terminal, or a configuration error found before starting.
    """
    _require_terminal()
    child_argv, directory = child_command(command, options, argv)
    child = ChildRun.start(child_argv, directory)
    print(f"starting the run in {directory}; the UI opens at its first event", file=sys.stderr)
    app = None
    try:
        run = child.wait_for_run()
        if run is not None:
            tail = EventTail(run.events_path)
            app = RunApp(run, tail, catch_up(tail), exit_code=child.process.poll)
            _run_app(app)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the UI took the terminal: stop the child as quitting the UI does
    finally:
        # also when the UI (or this process) failed: no orphaned run
        code = child.stop(finished=app is not None and app.state.status is not None)
    if not child.started():
        output = child.output()
        print(output, end="", file=sys.stderr)
        child.discard_log()
        if "esper: error: " not in output:  # else the child's own line says why, once
            print(f"esper: error: the run did not start (exit code {code})", file=sys.stderr)
        return code or 1
    child.keep_log()
    for line in final_lines(child.output()):
        print(line)
    print(f"console output: {child.log_path}", file=sys.stderr)
    return code
