"""Reading run directories and their event logs: the one reader every view builds on.

A run directory (laid out by ``esper.nissa.record``) holds ``config.json``, ``meta.json`` and
``events.jsonl``; its first event is ``RunStarted``, and ``summary.json`` appears once the run
stops (read through ``record.read_summary``: one schema for every mode). ``events.jsonl`` is
append-only, one JSON object per line, flushed per line: a crash can leave at most a partial last
line, which readers skip and report. Any other line that is not a known event is an error naming
the file and line.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

from esper.leyline.config import json_reason, quoted
from esper.leyline.events import EVENT_TYPES, Event, RunStarted, event_record
from esper.leyline.files import open_regular
from esper.leyline.stages import SeedStage

# Layout names the record defines, also imported from here by the views (explicit re-exports).
from esper.nissa.record import EVENTS_FILE as EVENTS_FILE
from esper.nissa.record import PPO_MODE as PPO_MODE
from esper.nissa.record import (
    SUMMARY_FILE,
    UNFINISHED,
    RunRecordError,
    RunSummary,
    not_a_run,
    read_config,
    read_summary,
    strict_json,
)

_FIELDS = {name: frozenset(f.name for f in fields(cls)) for name, cls in EVENT_TYPES.items()}
"""Every field each event's line must have (its dataclass fields)."""


class EventLogError(ValueError):
    """An event log line that is complete but not a known event (the message names file:line)."""


class EventLogGone(EventLogError):
    """The log followed was removed, rewritten shorter or replaced by another file: a log
    that appears there now is another one, to be read from its start."""


class RunDirectoryError(RunRecordError):
    """A path that does not exist, is not an Esper run directory, or holds a malformed record."""


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (an unmeasured value is null)")


def parse_record(text: str, where: str) -> dict[str, Any]:
    """One event-log line as a record.

    Args:
        text: the line, without its newline.
        where: ``"path:line"`` for the error message.

    Raises:
        EventLogError: the line is not a JSON object naming a known event.
    """
    try:  # the writer turns NaN and infinities into null; a reader takes no other
        record = json.loads(text, parse_constant=_not_a_number)
    except (ValueError, RecursionError) as err:
        raise EventLogError(
            f"{where}: malformed event line ({json_reason(err)}): {text[:80]!r}"
        ) from None
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


_STAGE_FIELDS = frozenset({"stage", "from_stage", "to_stage"})
"""Fields that name a seed stage: decoded only when they are one (``SeedStage`` values)."""

_Convert = Callable[[Any, str], Any]


def _converter(hint: Any) -> _Convert:
    """A function checking one JSON value against a field's type hint and returning it as the
    dataclass holds it (lists as tuples, objects as nested dataclasses); it raises
    ``EventLogError`` naming the field for a value of another type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in args if a is not type(None)]
        convert = _converter(inner)
        return lambda value, where: None if value is None else convert(value, where)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _converter(args[0])
            return lambda value, where: tuple(
                item(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where))
            )
        items = [_converter(a) for a in args]

        def pair(value: Any, where: str) -> tuple[Any, ...]:
            found = _list(value, where)
            if len(found) != len(items):
                raise EventLogError(f"{where} has {len(found)} items, not {len(items)}")
            pairs = enumerate(zip(items, found, strict=True))
            return tuple(c(v, f"{where}[{i}]") for i, (c, v) in pairs)

        return pair
    if dataclasses.is_dataclass(hint):
        return _dataclass_converter(hint)
    if hint is float:
        return _float
    if hint in (int, str, bool):
        return lambda value, where: _scalar(value, hint, where)
    raise TypeError(f"event field type {hint!r} has no decoder")  # a new Leyline field type


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise EventLogError(f"{where} is {_show(value)}, not a list")
    return value


def _show(value: Any) -> str:
    return quoted(value, as_json=not isinstance(value, str))


def _float(value: Any, where: str) -> float:
    if value is None:
        return math.nan  # the writer turns a non-finite float into null (``strict_json``)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise EventLogError(f"{where} is {_show(value)}, beyond a float's range") from None
    raise EventLogError(f"{where} is {_show(value)}, not a number")


def _time(value: Any, where: str) -> float:
    """The envelope's ``t``: a number always (the writer takes it from the clock)."""
    t = _float(value, where)
    if not math.isfinite(t):
        raise EventLogError(f"{where} is {_show(value)}, not a time")
    return t


def _scalar(value: Any, kind: type[Any], where: str) -> Any:
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise EventLogError(f"{where} is {_show(value)}, not {kind.__name__}")


def _dataclass_converter(cls: Any) -> _Convert:
    hints = typing.get_type_hints(cls)
    converters = {f.name: _converter(hints[f.name]) for f in fields(cls)}
    stages = frozenset(s.value for s in SeedStage)

    def build(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise EventLogError(f"{where} is {_show(value)}, not an object")
        missing = converters.keys() - value.keys()
        if missing:
            raise EventLogError(f"{where} lacks {', '.join(sorted(missing))}")
        kwargs = {}
        for name, convert in converters.items():
            kwargs[name] = convert(value[name], f"{where}.{name}")
            if name in _STAGE_FIELDS and kwargs[name] not in stages:
                raise EventLogError(
                    f"{where}.{name}: unknown seed stage {value[name]!r}; "
                    f"known: {', '.join(s.value for s in SeedStage)}"
                )
        return cls(**kwargs)

    return build


_DECODERS = {name: _dataclass_converter(cls) for name, cls in EVENT_TYPES.items()}
_OPTIONAL_INT = _converter(int | None)


@dataclass(frozen=True)
class Logged:
    """One event-log line turned back into its Leyline event, with the hub's envelope.

    Attributes:
        event: the event dataclass.
        t: when it was emitted (unix seconds).
        run_id: the run that emitted it.
        env: the environment (PPO runs), else None.
        episode: the episode the record belongs to (PPO runs' context), else None.
    """

    event: Event
    t: float
    run_id: str
    env: int | None = None
    episode: int | None = None

    @property
    def name(self) -> str:
        """The event's name (its class name)."""
        return type(self.event).__name__

    def record(self) -> dict[str, Any]:
        """The line as the hub wrote it (a JSON-ready dict; non-finite floats as None)."""
        head: dict[str, Any] = {"t": self.t, "run_id": self.run_id}
        if self.env is not None:
            head["env"] = self.env
        if self.episode is not None and not hasattr(self.event, "episode"):
            head["episode"] = self.episode
        body = event_record(self.event)
        return dict(strict_json({**head, **body}))


def decode(record: dict[str, Any], where: str) -> Logged:
    """A parsed record (``parse_record``) as its Leyline event and envelope.

    Raises:
        EventLogError: a field (or the envelope's ``t``, ``run_id``, ``env``, ``episode``) has
            the wrong type, or a stage field names no seed stage; the message names it.
    """
    name = record["event"]
    event = _DECODERS[name](record, f"{where}: {name}")
    episode = record.get("episode")  # EpisodeFinished's own field doubles as its context
    return Logged(
        event,
        _time(record.get("t"), f"{where}: t"),
        _scalar(record.get("run_id"), str, f"{where}: run_id"),
        _OPTIONAL_INT(record.get("env"), f"{where}: env"),
        _OPTIONAL_INT(episode, f"{where}: episode"),
    )


def read_line(text: str, where: str) -> Logged:
    """One event-log line (without its newline) as a ``Logged`` event.

    Raises:
        EventLogError: the line is not a well-formed known event.
    """
    return decode(parse_record(text, where), where)


MAX_LINE_BYTES = 4 << 20
"""A longer line is an error when a log is followed in bounded reads: events are a few hundred
bytes to a few kilobytes, so such a line is not an event, and reading on would hold all of it."""

OpenLog = Callable[[Path], BinaryIO]
"""Opens an event log for reading (binary); ``FileNotFoundError`` means not written yet."""


def _open_log(path: Path) -> BinaryIO:
    return open_regular(path)  # a pipe or device is refused, not read forever


class EventTail:
    """Follows a growing event log: each ``events`` call returns the events completed since the
    last.

    A line is returned only once its newline has been written, so a line being written is never
    half-read; each call reads again from the end of the last complete line, so a partial line
    that a resumed run cut off (``JsonlSink``) and wrote over is read as what replaced it. The
    file may not exist yet (a run that is still starting): ``events`` returns nothing.

    Args:
        path: the ``events.jsonl`` file.
        open_log: how to open it (the dashboard's opener refuses a log that links outside its
            runs directory); by default an ordinary open.
    """

    def __init__(self, path: Path, open_log: OpenLog = _open_log) -> None:
        self.path = path
        self.open_log = open_log
        self.offset = 0  # bytes consumed, up to the end of the last complete line
        self.lines = 0  # complete lines consumed
        self.partial = b""  # bytes after the last newline (a line still being written), as read
        self.error: EventLogError | None = None  # a malformed line, raised from then on
        self.caught_up = False  # whether the last call read to the end of the file
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file read from

    def events(self, max_bytes: int | None = None) -> list[Logged]:
        """Events completed since the last call.

        Args:
            max_bytes: read about this many bytes of whole lines at most (at least one line, up
                to ``MAX_LINE_BYTES``), so following a huge log holds a bounded part of it; None
                reads to the end. Call again until ``caught_up`` to read on.

        The events before a malformed or too long line are returned first; the calls after
        that raise.

        Raises:
            EventLogError: a complete line is malformed, the file shrank (it was rewritten),
                was replaced by another file or removed after it was read from, or cannot be
                read, or a line is longer than ``MAX_LINE_BYTES`` (bounded reads).
        """
        if self.error is not None:
            raise self.error
        try:
            with self.open_log(self.path) as f:
                st = os.fstat(f.fileno())
                self._check_same_file((st.st_dev, st.st_ino))
                size = st.st_size
                if size < self.offset:  # below complete lines: not a partial line cut off
                    raise EventLogGone(
                        f"{self.path}: the event log shrank from {self.offset} to {size} bytes "
                        "(it was rewritten)"
                    )
                f.seek(self.offset)
                data, self.caught_up = self._take(f, max_bytes)
        except FileNotFoundError:
            if self.offset or self.partial:  # read before: the run was removed or moved
                self.error = EventLogGone(f"{self.path}: the event log was removed")
                raise self.error from None
            self.caught_up = True
            return []
        except OSError as err:
            raise EventLogError(f"{self.path}: cannot read ({err.strerror})") from None
        *complete, self.partial = data.split(b"\n")
        found = []
        for raw in complete:
            self.lines += 1
            self.offset += len(raw) + 1
            text = raw.decode("utf-8", errors="replace")
            if not text.strip():
                continue
            try:
                found.append(read_line(text, f"{self.path}:{self.lines}"))
            except EventLogError as err:
                self.error, self.partial = err, b""
                if not found:
                    raise
                break
        return found

    def _check_same_file(self, identity: tuple[int, int]) -> None:
        """Raises EventLogGone: the log is another file than the one read from before (moved
        over it; a copy written into the same file is caught only when it is shorter): its
        bytes from the old offset on would be taken for new lines."""
        if self.identity is None:
            self.identity = identity
        elif identity != self.identity:
            self.error = EventLogGone(
                f"{self.path}: the event log was replaced by another file (moved over it); it "
                "is not followed further"
            )
            raise self.error

    def _take(self, f: BinaryIO, max_bytes: int | None) -> tuple[bytes, bool]:
        """The bytes to read from ``f``'s position, and whether they reach the end of the file."""
        if max_bytes is None:
            return f.read(), True
        taken: list[bytes] = []
        size = 0
        while size < max_bytes:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                if taken:  # the lines before it first: the next read starts at it, and fails
                    return b"".join(taken), False
                raise EventLogError(
                    f"{self.path}:{self.lines + len(taken) + 1}: a line longer than "
                    f"{MAX_LINE_BYTES} bytes is not an event"
                )
            taken.append(raw)
            size += len(raw)
            if not raw.endswith(b"\n"):  # the end of the file, or a line being written
                return b"".join(taken), True
        return b"".join(taken), False


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
    records: list[Logged]
    truncated_line: int | None


def read_events(path: Path) -> EventLog:
    """Read a finished (or crashed) event log.

    A last line without its newline is kept if it parses (a writer stopped just before the
    newline) and reported as truncated otherwise.

    Raises:
        FileNotFoundError: no such file.
        EventLogError: a malformed line other than the last.
    """
    if not path.exists():
        raise FileNotFoundError(f"no event log at {str(path)!r}")
    tail = EventTail(path)
    records = tail.events()
    if tail.error is not None:
        raise tail.error
    truncated = None
    if tail.partial.strip():
        text = tail.partial.decode("utf-8", errors="replace")
        try:
            records.append(read_line(text, f"{path}:{tail.lines + 1}"))
        except EventLogError:
            truncated = tail.lines + 1
    return EventLog(path, records, truncated)


@dataclass(frozen=True)
class RunDirectory:
    """A run directory, identified by its first event.

    Attributes:
        path: the directory.
        name: its directory's name, as ``shown_name`` shows it; ``study/trial`` for the trial
            of a study inside the directory ``discovery.scan_runs`` lists
            (``discovery.named_runs``).
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

    def host_training(self) -> dict[str, Any] | None:
        """The host training ``config.json`` holds (a PPO run's environments'), or None where
        it cannot be read (the views then compare nothing of it)."""
        try:
            section = self.config().get("env" if self.mode == PPO_MODE else "training")
        except RunRecordError:
            return None
        return section if isinstance(section, dict) else None


def open_run(path: Path) -> RunDirectory:
    """The run in ``path``.

    Raises:
        RunDirectoryError: ``path`` does not exist, or is not a run directory (no config.json,
            no event log, or a log that does not start with a well-formed ``RunStarted``), or
            cannot be read, or its ``summary.json`` is malformed.
    """
    problem = not_a_run(path)
    if problem is not None:
        raise RunDirectoryError(problem)
    try:
        with open_regular(path / EVENTS_FILE) as f:
            raw = f.readline(MAX_LINE_BYTES + 1)  # a log that is one huge line is not read whole
    except OSError as err:
        raise RunDirectoryError(
            f"{str(path)!r}: cannot read its event log ({err.strerror})"
        ) from None
    if not raw.strip():
        raise RunDirectoryError(
            f"{str(path)!r}: its event log is empty (a run still starting, or one that failed "
            "before its first event)"
        )
    where = f"{path / EVENTS_FILE}:1"
    try:
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):  # as ``EventTail`` reads
            raise EventLogError(
                f"{where}: a line longer than {MAX_LINE_BYTES} bytes is not an event"
            )
        first = read_line(raw.decode("utf-8", errors="replace").rstrip("\n"), where)
    except EventLogError as err:
        raise RunDirectoryError(f"{str(path)!r} is not a readable run: {err}") from None
    if not isinstance(first.event, RunStarted):
        raise RunDirectoryError(
            f"{str(path)!r}: the event log starts with {first.name}, not RunStarted"
        )
    try:
        summary = read_summary(path)
    except RunRecordError as err:
        raise RunDirectoryError(str(err)) from None
    started = first.event
    if summary is not None:
        _check_own_summary(path / SUMMARY_FILE, summary, started)
    return RunDirectory(path, shown_name(path), started.mode, started.task, started.seed, summary)


def _check_own_summary(path: Path, summary: RunSummary, started: RunStarted) -> None:
    """The summary at ``path`` is of the run whose log starts with ``started``: copied in from
    elsewhere (another run, or the run of the same name in another study), its figures would
    be shown as this run's.

    Raises:
        RunDirectoryError: naming what differs.
    """
    if (summary.run_id, summary.mode) != (started.run_id, started.mode):
        raise RunDirectoryError(
            f"{str(path)!r} is the summary of another run ({summary.mode} run "
            f"{summary.run_id!r}; the event log is of the {started.mode} run {started.run_id!r})"
        )
    ran = {"task": started.task, "seed": started.seed}
    says = {"task": summary.task, "seed": summary.seed}
    if summary.growth is not None:  # a growth run's length is fixed (a PPO resume may add rounds)
        ran["epochs"], says["epochs"] = started.max_epochs, summary.growth.epochs_planned
    differ = [f"{k} {says[k]!r} (the log: {ran[k]!r})" for k in ran if ran[k] != says[k]]
    if differ:
        raise RunDirectoryError(
            f"{str(path)!r} is the summary of another run of the name {summary.run_id!r}: "
            f"{', '.join(differ)}"
        )


def shown_name(path: Path) -> str:
    """``path``'s own name as text that tables, pages and plots can show: the last part of its
    absolute path (so ``.`` is named), bytes that are no UTF-8 as ``\\xff`` (a directory that
    Esper did not name; matplotlib and HTML cannot take the surrogates Python keeps them as,
    and two such names stay apart)."""
    return shown_path(Path(Path(os.path.abspath(path)).name or str(path)))  # "/" has no name


def shown_path(path: Path) -> str:
    """``path`` as text, bytes that are no UTF-8 as ``\\xff`` (see ``shown_name``), characters
    that do not print (an escape sequence, a newline) as ``\\x1b``, ``\\n``, ``\\u200b``, and a
    backslash doubled, so that two paths never show alike (a byte 0xff and the four characters
    ``\\xff`` showed as one name, and the runs views pooled the two runs into one), and a name
    neither drives the terminal nor breaks a table's line."""
    text = os.fsencode(path).replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def display(value: Any, spec: str = "") -> str:
    """A value for people: a missing one (None, NaN) shows as "—", never as 0."""
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    try:
        return format(value, spec)
    except OverflowError:  # an integer of hundreds of digits in a float format
        return format(decimal.Decimal(value), spec)


def policy_line(policy: dict[str, Any]) -> str:
    """An eval's policy (``meta.json``'s ``policy``) for people: "PATH (run ID, trained on TASK,
    after PPO round N of M)", without what an older ``meta.json`` does not say; as JSON when it
    is not one."""
    try:
        task, planned = policy.get("task"), policy.get("rounds_planned")
        on = "" if task is None else f", trained on {task}"
        of = "" if planned is None else f" of {int(planned)}"
        after = f"after PPO round {int(policy['round'])}{of}"
        return f"{policy['path']} (run {policy['run_id']}{on}, {after})"
    except (KeyError, TypeError, ValueError, AttributeError):
        return json.dumps(policy, sort_keys=True)


def counted(n: int, noun: str, plural: str = "") -> str:
    """A count with its noun for people: "1 round", "1,200 rounds", "2 studies" (given the
    irregular ``plural``)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def with_article(noun: str) -> str:
    """The noun with its article for people: "a ppo", "an eval"."""
    return f"{'an' if noun[:1] in ('a', 'e', 'i', 'o', 'u') else 'a'} {noun}"


def percent(value: float | None) -> str:
    """An accuracy in percent for people: "12.34%", or "—" when missing (None, NaN)."""
    text = display(value, ".2f")
    return text if text == "—" else text + "%"


@dataclass(frozen=True)
class SummaryMetric:
    """One final metric of a run's ``summary.json`` as every view shows it (``runs compare``,
    the run report, the demo's table).

    Attributes:
        label: its name in a table.
        path: where it is in ``RunSummary.to_json()``: ``("growth", "test", "final_accuracy")``.
        spec: its format: ``"%"`` for an accuracy in percent (``percent``), else a format spec
            (a count written as ``3.0`` takes ``d`` too).
    """

    label: str
    path: tuple[str, ...]
    spec: str

    def value(self, summary: Any) -> tuple[bool, Any]:
        """(whether ``summary``'s JSON object has this metric's place, its value there)."""
        for key in self.path:
            if not isinstance(summary, dict) or key not in summary:
                return False, None
            summary = summary[key]
        return True, summary

    def text(self, value: Any) -> str:
        """``value`` formatted: "—" when missing, the raw text when not a number."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return display(value) if value is None else str(value)
        if self.spec == "%":
            return percent(value)
        spec = self.spec
        if spec.endswith("d") and isinstance(value, float):  # a count written as 3.0
            spec = spec[:-1] + ".0f"
        return display(value, spec)


SUMMARY_METRICS = tuple(
    SummaryMetric(label, tuple(path.split(".")), spec)
    for label, path, spec in (
        ("test acc", "growth.test.final_accuracy", "%"),  # a study's score (score = "test")
        ("test acc, best val epoch", "growth.test.best_accuracy", "%"),
        ("final model val acc", "growth.final_model_val_accuracy", "%"),  # score = "validation"
        ("last epoch val acc", "growth.final.val_accuracy", "%"),
        ("best epoch val acc", "growth.best_val_accuracy", "%"),
        ("last epoch val loss", "growth.final.val_loss", ".4f"),
        ("last epoch train acc", "growth.final.train_accuracy", "%"),
        ("last epoch train loss", "growth.final.train_loss", ".4f"),
        ("params", "growth.param_count", ",d"),
        ("peak params", "growth.peak_param_count", ",d"),
        ("host params", "growth.host_param_count", ",d"),
        ("training FLOPs", "growth.train_flops", ".3g"),
        ("fossilized", "growth.fossilized", "d"),
        ("pruned", "growth.pruned", "d"),
        ("epochs", "growth.epochs_completed", "d"),
        ("final mean acc", "ppo.final_mean_accuracy", "%"),
        ("final mean return", "ppo.final_mean_return", ".3f"),
        ("best mean return", "ppo.best_mean_return", ".3f"),
        ("rounds", "ppo.rounds_completed", "d"),
        ("env steps", "ppo.env_steps", ",d"),
        ("training time (s)", "wall_seconds", ".1f"),
    )
)
"""Every final metric the views show, in their order (a growth run's, then a PPO run's)."""
