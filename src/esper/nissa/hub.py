"""The telemetry hub and the JSONL sink."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any, Protocol

from esper.leyline.events import Event, event_record


class Sink(Protocol):
    """Something that receives every event."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: a value that was not finite is written as null (missing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


class JsonlSink:
    """Appends one JSON object per line and flushes it, so a crash loses at most one line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TelemetryHub:
    """Stamps each event with its run and wall-clock time and hands it to every sink.

    Args:
        run_id: identifier written into every record.
        sinks: where records go.
    """

    def __init__(self, run_id: str, sinks: list[Sink]) -> None:
        self.run_id = run_id
        self.sinks = sinks

    def emit(self, event: Event) -> None:
        record = {"t": round(time.time(), 3), "run_id": self.run_id, **event_record(event)}
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
