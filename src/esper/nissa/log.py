"""Reading run directories and their event logs: the one reader every view builds on.

A run directory (laid out by ``esper.nissa.record``) holds ``config.json``, ``meta.json`` and
``events.jsonl``; its first event is ``RunStarted``, and ``summary.json`` appears once the run
stops (read through ``record.read_summary``: one schema for every mode). ``events.jsonl`` is
append-only, one JSON object per line, flushed per line: a crash can leave at most a partial last
line, which readers skip and report. Any other line that is not a known event is an error naming
the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from esper.leyline.events import EVENT_TYPES, RunStarted
from esper.leyline.trials import STUDY_FILE, TRIALS_DIR

# Layout names the record defines, also imported from here by the views (explicit re-exports).
from esper.nissa.record import EVENTS_FILE as EVENTS_FILE
from esper.nissa.record import PPO_MODE as PPO_MODE
from esper.nissa.record import (
    RUN_FILES,
    UNFINISHED,
    RunRecordError,
    RunSummary,
    is_run_directory,
    read_config,
    read_summary,
)

_FIELDS = {name: frozenset(f.name for f in fields(cls)) for name, cls in EVENT_TYPES.items()}
"""Every field each event's line must have (its dataclass fields)."""


class EventLogError(ValueError):
    """An event log line that is complete but not a known event (the message names file:line)."""


class RunDirectoryError(RunRecordError):
    """A path that does not exist, is not an Esper run directory, or holds a malformed record."""


def parse_record(text: str, where: str) -> dict[str, Any]:
    """One event-log line as a record.

    Args:
        text: the line, without its newline.
        where: ``"path:line"`` for the error message.

    Raises:
        EventLogError: the line is not a JSON object naming a known event.
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise EventLogError(f"{where}: malformed event line ({err.msg}): {text[:80]!r}") from None
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        raise EventLogError(
            f"{where}: not an event record (a JSON object with 'event'): {text[:80]!r}"
        )
    if record["event"] not in EVENT_TYPES:
        known = ", ".join(sorted(EVENT_TYPES))
        raise EventLogError(f"{where}: unknown event {record['event']!r}; known: {known}")
    missing = _FIELDS[record["event"]] - record.keys()
    if missing:
        raise EventLogError(f"{where}: {record['event']} lacks {', '.join(sorted(missing))}")
    return record


class EventTail:
    """Follows a growing event log: each ``poll`` returns the records completed since the last.

    A line is returned only once its newline has been written, so a line being written is never
    half-read. The file may not exist yet (a run that is still starting): ``poll`` returns nothing.

    Args:
        path: the ``events.jsonl`` file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes consumed, up to the end of the last complete line
        self.lines = 0  # complete lines consumed
        self.partial = b""  # bytes after the last newline (a line still being written)
        self.error: EventLogError | None = None  # a malformed line, raised from then on

    def poll(self) -> list[dict[str, Any]]:
        """Records completed since the last call.

        The records before a malformed line are returned first; that poll and every later one
        then raise.

        Raises:
            EventLogError: a complete line is malformed, or the file shrank (it was rewritten).
        """
        if self.error is not None:
            raise self.error
        try:
            with self.path.open("rb") as f:
                f.seek(0, 2)
                size = f.tell()
                if size < self.offset + len(self.partial):
                    raise EventLogError(
                        f"{self.path}: the event log shrank from "
                        f"{self.offset + len(self.partial)} to {size} bytes (it was rewritten)"
                    )
                f.seek(self.offset + len(self.partial))
                data = self.partial + f.read()
        except FileNotFoundError:
            return []
        *complete, self.partial = data.split(b"\n")
        records = []
        for raw in complete:
            self.lines += 1
            self.offset += len(raw) + 1
            text = raw.decode("utf-8", errors="replace")
            if not text.strip():
                continue
            try:
                records.append(parse_record(text, f"{self.path}:{self.lines}"))
            except EventLogError as err:
                self.error, self.partial = err, b""
                if not records:
                    raise
                break
        return records


def drop_replaced(records: list[dict[str, Any]], ppo: bool) -> list[dict[str, Any]]:
    """The records of a run as it finally happened.

    A resumed ``RunStarted`` names the last checkpointed epoch (for PPO runs, round); what the
    interrupted attempt logged after that point was run again, so it is dropped. Records not
    tied to an epoch (PPO: an episode or round) are kept, e.g. the ``RunFinished`` that says the
    attempt was interrupted.

    Args:
        records: a run's records in log order.
        ppo: whether the run is a PPO run (records carry ``episode``/``round``, not one epoch line).
    """
    kept: list[dict[str, Any]] = []
    for record in records:
        if record["event"] == RunStarted.__name__ and record["resumed_from_epoch"] is not None:
            saved = record["resumed_from_epoch"]
            kept = [r for r in kept if not _after(r, saved, ppo)]
        kept.append(record)
    return kept


def _after(record: dict[str, Any], saved: int, ppo: bool) -> bool:
    """Whether ``record`` belongs to an epoch (PPO: episode or round) after ``saved``."""
    keys = ("episode", "round") if ppo else ("epoch",)
    step = next((record[k] for k in keys if k in record), None)
    return isinstance(step, int) and step > saved


@dataclass(frozen=True)
class EventLog:
    """A whole event log as read once.

    Attributes:
        path: the file.
        records: every complete event, in order.
        truncated_line: the 1-based number of a partial last line that was skipped (a crashed
            run), else None.
    """

    path: Path
    records: list[dict[str, Any]]
    truncated_line: int | None


def read_events(path: Path) -> EventLog:
    """Read a finished (or crashed) event log.

    A last line without its newline is kept if it parses (a writer stopped just before the
    newline) and reported as truncated otherwise.

    Raises:
        FileNotFoundError: no such file.
        EventLogError: a malformed line other than the last.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no event log at {str(path)!r}")
    tail = EventTail(path)
    records = tail.poll()
    if tail.error is not None:
        raise tail.error
    truncated = None
    if tail.partial.strip():
        text = tail.partial.decode("utf-8", errors="replace")
        try:
            records.append(parse_record(text, f"{path}:{tail.lines + 1}"))
        except EventLogError:
            truncated = tail.lines + 1
    return EventLog(path, records, truncated)


@dataclass(frozen=True)
class RunDirectory:
    """A run directory, identified by its first event.

    Attributes:
        path: the directory.
        name: its name (the run id written into every event).
        mode: ``heuristic``, ``static``, ``eval`` or ``ppo``.
        task: the task preset.
        seed: the run seed.
        summary: ``summary.json`` once the run has stopped, else None (running or crashed).
    """

    path: Path
    name: str
    mode: str
    task: str
    seed: int
    summary: RunSummary | None

    @property
    def events_path(self) -> Path:
        """The run's ``events.jsonl``."""
        return self.path / EVENTS_FILE

    @property
    def status(self) -> str:
        """The recorded status, or ``"unfinished"`` (still running, or crashed) without one."""
        return UNFINISHED if self.summary is None else self.summary.status

    def config(self) -> dict[str, Any]:
        """The resolved configuration (``config.json``).

        Raises:
            RunRecordError: the file is missing or not a JSON object.
        """
        return read_config(self.path)


def open_run(path: Path) -> RunDirectory:
    """The run in ``path``.

    Raises:
        RunDirectoryError: ``path`` does not exist, or is not a run directory (no config.json,
            no event log, or a log that does not start with ``RunStarted``), or its
            ``summary.json`` is malformed.
    """
    if not path.exists():
        raise RunDirectoryError(f"run directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise RunDirectoryError(f"{str(path)!r} is a file, not a run directory")
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise RunDirectoryError(
            f"{str(path)!r} is not an Esper run directory (no {' or '.join(missing)})"
        )
    with (path / EVENTS_FILE).open("rb") as f:
        first = f.readline().decode("utf-8", errors="replace")
    if not first.strip():
        raise RunDirectoryError(
            f"{str(path)!r}: its event log is empty (a run still starting, or one that failed "
            "before its first event)"
        )
    try:
        record = parse_record(first.rstrip("\n"), f"{path / EVENTS_FILE}:1")
    except EventLogError as err:
        raise RunDirectoryError(f"{str(path)!r} is not a readable run: {err}") from None
    if record["event"] != RunStarted.__name__:
        raise RunDirectoryError(
            f"{str(path)!r}: the event log starts with {record['event']}, not RunStarted"
        )
    try:
        summary = read_summary(path)
    except RunRecordError as err:
        raise RunDirectoryError(str(err)) from None
    return RunDirectory(
        path, path.name, str(record["mode"]), str(record["task"]), int(record["seed"]), summary
    )


def run_candidates(directory: Path) -> list[Path]:
    """``directory`` itself when it holds an event log, else its children that are run
    directories (``record.is_run_directory``), by name — without opening them. A study
    directory (``esper study``) stands for its trials' runs."""
    if (directory / EVENTS_FILE).is_file():
        return [directory]
    if (directory / STUDY_FILE).is_file():
        directory = directory / TRIALS_DIR
        if not directory.is_dir():
            return []
    return [child for child in sorted(directory.iterdir()) if is_run_directory(child)]


def scan_runs(directory: Path) -> tuple[list[RunDirectory], list[tuple[Path, str]]]:
    """The runs in ``directory`` (see ``run_candidates``), and the candidates that could not be
    read — e.g. a run whose first line is still being written — with the reason.

    Raises:
        RunDirectoryError: ``directory`` does not exist or is not a directory.
    """
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise RunDirectoryError(f"runs directory {str(directory)!r} {what}")
    runs, unreadable = [], []
    for path in run_candidates(directory):
        try:
            runs.append(open_run(path))
        except RunDirectoryError as err:
            unreadable.append((path, str(err)))
    return runs, unreadable


def find_runs(directory: Path) -> list[RunDirectory]:
    """Every run in ``directory`` (see ``scan_runs``); any unreadable one is an error.

    Raises:
        RunDirectoryError: ``directory`` is missing or not a directory, or holds a run that
            cannot be read.
    """
    runs, unreadable = scan_runs(directory)
    if unreadable:
        raise RunDirectoryError(unreadable[0][1])
    return runs


def display(value: Any, spec: str = "") -> str:
    """A value for people: a missing one (None, NaN) shows as "—", never as 0."""
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return format(value, spec)


def percent(value: float | None) -> str:
    """An accuracy in percent for people: "12.34%", or "—" when missing (None, NaN)."""
    text = display(value, ".2f")
    return text if text == "—" else text + "%"
