"""The telemetry hub and the JSONL sink."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any, Protocol

from esper.leyline.events import Event, Progress, TelemetryLevel, event_record
from esper.leyline.files import disk_full, is_disk_full
from esper.nissa.record import strict_json


class Sink(Protocol):
    """Something that receives every event."""

    def write(self, record: dict[str, Any]) -> None:
        """Take one record (``event_record`` output plus ``t``, ``run_id`` and context)."""

    def close(self) -> None:
        """Release what the sink holds (files, writers, progress bars)."""


class JsonlSink:
    """Appends one JSON object per line and flushes it, so a crash loses at most one line.

    A log that ends in a partial line (a run that died while writing it) has that line cut
    before anything is appended — else the next record would be glued onto it. ``cut`` holds
    the bytes removed (empty when the log ended cleanly).
    """

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        self.path = path
        self.cut = _cut_partial_line(path)
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and flush it.

        Raises:
            DiskFullError: the disk is full (naming the log; the bare error named no file).
        """
        try:
            self._file.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
            self._file.flush()
        except OSError as err:
            raise disk_full(err, self.path) if is_disk_full(err) else err from None

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class WatchingSink(Sink, Protocol):
    """A sink that gets the events it names whatever the telemetry level, and the progress
    events it names (console progress)."""

    events: frozenset[str]


def _cut_partial_line(path: Path) -> bytes:
    """Truncate ``path`` after its last newline; return what was removed (reads only the tail)."""
    if not path.is_file():
        return b""
    with path.open("r+b") as f:
        keep, end = 0, f.seek(0, 2)
        pos = end
        while pos > 0:  # look back block by block for the last newline
            start = max(0, pos - _BLOCK)
            f.seek(start)
            found = f.read(pos - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            pos = start
        if keep == end:  # empty, or ends in a newline
            return b""
        f.seek(keep)
        cut = f.read()
        f.truncate(keep)
    return cut


_BLOCK = 1 << 16
"""Bytes read at a time when looking back for a log's last newline."""


def _check_context(context: dict[str, Any]) -> None:
    """``context`` names only ``env`` and ``episode``, each an integer (see ``emit``)."""
    for key, value in context.items():
        if key not in ("env", "episode"):
            raise ValueError(f"context key {key!r} is not one of env, episode")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"context {key} must be an integer, got {value!r}")


class TelemetryHub:
    """Stamps each event with its run and wall-clock time and hands it to every sink.

    An event is written when its type's ``level`` is at or below the hub's ``level``, which a
    PPO trainer raises for a few rounds after an anomaly (``set_level``). Progress events
    (``progress``) are never written to ``sinks``, at any level: they go only to the
    ``unfiltered`` sinks that name them.

    Args:
        run_id: identifier written into every record.
        sinks: where records go.
        level: the telemetry level.
        unfiltered: sinks that get the events they name whatever the level — console
            progress, which must not go quiet because the log was asked to be minimal.
    """

    def __init__(
        self,
        run_id: str,
        sinks: list[Sink],
        level: TelemetryLevel = TelemetryLevel.NORMAL,
        unfiltered: list[WatchingSink] | None = None,
    ) -> None:
        given: object = level  # typed; "debug" failed at the first emit
        if not isinstance(given, TelemetryLevel):
            names = ", ".join(f"TelemetryLevel.{each.name}" for each in TelemetryLevel)
            raise ValueError(f"level must be one of {names}, got {given!r}")
        self.run_id = run_id
        self.sinks = sinks
        self.unfiltered = unfiltered or []
        self.level = level

    def set_level(self, level: TelemetryLevel) -> None:
        """Write the events of ``level`` and below from now on."""
        self.level = level

    def emit(self, event: Event, context: dict[str, Any] | None = None) -> None:
        """Write ``event`` if the current level includes it.

        Args:
            event: the event.
            context: the record's ``env`` and ``episode`` (integers), e.g.
                ``{"env": 2, "episode": 7}``.

        Raises:
            ValueError: another key (``t`` or ``run_id`` replaced the envelope's, and the log's
                reader refused the line, and every view of the run with it) or a value that
                is not an integer.
        """
        if context:
            _check_context(context)
        sinks: list[Sink] = self.sinks if event.level.value <= self.level.value else []
        self._write(event, sinks, context)

    def progress(self, event: Progress) -> None:
        """Hand ``event`` to the ``unfiltered`` sinks that name it; it is never logged."""
        self._write(event, [], None)

    def _write(
        self, event: Event | Progress, sinks: list[Sink], context: dict[str, Any] | None
    ) -> None:
        """Write ``event`` to ``sinks`` and to the unfiltered sinks that name it."""
        name = type(event).__name__
        sinks = sinks + [s for s in self.unfiltered if name in s.events]
        if not sinks:
            return
        record = {"t": round(time.time(), 3), "run_id": self.run_id, **(context or {})}
        record.update(event_record(event))
        for sink in sinks:
            sink.write(record)

    def close(self) -> None:
        """Close every sink."""
        for sink in [*self.sinks, *self.unfiltered]:
            sink.close()
