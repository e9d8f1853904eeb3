"""A run's CSV logs (``metrics.csv``, ``rounds.csv``; ``esper.nissa.record.CSV_FILES``): one
dataclass row per step, appended and fsynced one by one, read back typed (``read_rows``), and
cut back to a checkpoint's step on resume (``CsvLog``)."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from esper.leyline.config import error_text, optional_type
from esper.leyline.files import atomic_write, disk_full, is_disk_full
from esper.nissa.record import RunRecordError, read_bytes

logger = logging.getLogger(__name__)


_R = TypeVar("_R")


def _columns(row_type: type[Any]) -> tuple[tuple[str, Any, bool], ...]:
    """(name, scalar type, optional) per field; the first must be the integer step."""
    hints = typing.get_type_hints(row_type)
    out = []
    for f in fields(row_type):
        kind, optional = optional_type(hints[f.name])
        if kind not in (bool, int, float, str):
            raise TypeError(
                f"{row_type.__name__}.{f.name}: a CSV column is bool, int, float or str"
            )
        out.append((f.name, kind, optional))
    if not out or out[0][1] is not int or out[0][2]:
        raise TypeError(f"{row_type.__name__}: the first field must be the integer step")
    return tuple(out)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # exact round trip; nan/inf stay what they were
    return str(value)


def _parse_cell(text: str, kind: Any, optional: bool) -> Any:
    if text == "":
        if optional or kind is str:
            return None if optional else ""
        raise ValueError("is empty")
    if kind is bool:
        if text not in ("True", "False"):
            raise ValueError("is not True or False")
        return text == "True"
    if kind is int:
        if not re.fullmatch(r"-?\d+", text):
            raise ValueError("is not an integer")
        try:
            return int(text)
        except ValueError as err:  # over 4,300 digits
            raise ValueError(f"is {error_text(err)}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("is not a number") from None
    return text


def _csv_text(path: Path, cut: bool = False) -> str:
    """The text of a CSV log, checked to be UTF-8, to hold a header and to end in a newline
    (``cut``: a last line without one is dropped, if the header is whole)."""
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise RunRecordError(f"{path}: not UTF-8 text") from None
    if not text:
        raise RunRecordError(f"{path}:1: empty file (no header)")
    if not text.endswith("\n"):
        if cut and "\n" in text:
            return text[: text.rindex("\n") + 1]
        line = text.count("\n") + 1
        raise RunRecordError(f"{path}:{line}: truncated last line (no newline)")
    return text


def read_rows(path: Path, row_type: type[_R], last: int | None = None) -> list[_R]:
    """The rows of a CSV log, strictly: header, column count, numbers, increasing steps.

    Args:
        path: the CSV file.
        row_type: the row dataclass; its first field is the step (epoch, round).
        last: keep rows up to this step, which must be the last kept row's step (or 0 with no
            rows): the checkpoint a resume continues from. None: every row.

    Raises:
        RunRecordError: naming ``file:line`` for an empty or truncated file (a partial last
            row is dropped when ``last`` is given), a wrong header,
            a value that is not a number, or steps that are not 1, 2, 3, ... in order (a row
            missing or repeated); naming the file when the rows do not reach step ``last``.
    """
    columns = _columns(row_type)
    names = [c[0] for c in columns]
    step = names[0]
    # A resume drops a partial last row: a short write (a full disk) of the step after the
    # checkpoint, whose row is rewritten; the rows must still reach ``last`` (checked below).
    reader = csv.reader(io.StringIO(_csv_text(path, cut=last is not None), newline=""))
    try:
        header = next(reader)
    except csv.Error as err:
        raise RunRecordError(f"{path}:1: {err}") from None
    if header != names:
        raise RunRecordError(f"{path}:1: columns {header} are not {names}")
    rows: list[_R] = []
    try:
        for raw in reader:
            where = f"{path}:{reader.line_num}"
            if len(raw) != len(columns):
                raise RunRecordError(f"{where}: {len(raw)} values, expected {len(columns)}")
            values = {}
            for cell, (name, kind, optional) in zip(raw, columns, strict=True):
                try:
                    values[name] = _parse_cell(cell, kind, optional)
                except ValueError as err:
                    raise RunRecordError(f"{where}: {name} {cell[:30]!r} {err}") from None
            if values[step] != len(rows) + 1:  # one row per step, none missing or repeated
                raise RunRecordError(
                    f"{where}: {step} {values[step]} where {step} {len(rows) + 1} belongs"
                )
            rows.append(row_type(**values))
    except csv.Error as err:
        raise RunRecordError(f"{path}:{reader.line_num}: {err}") from None
    if last is None:
        return rows
    kept = [r for r in rows if getattr(r, step) <= last]
    reached = getattr(kept[-1], step) if kept else 0
    if reached != last:
        raise RunRecordError(
            f"{path}: the rows end at {step} {reached}, the checkpoint is at {last}"
        )
    return kept


class CsvLog(Generic[_R]):
    """A CSV log whose columns are the fields of the dataclass ``row_type``.

    Start a new log with ``rewrite([])`` (the header); ``append`` one row per step; a resume
    reads the rows up to its checkpoint (``read(step)``) and, once it starts, ``rewrite``s the
    log with them, dropping the rows of steps after the checkpoint.

    Args:
        path: the CSV file.
        row_type: the row dataclass (fields of int, float, str or ``X | None``; the first is
            the integer step).
    """

    def __init__(self, path: Path, row_type: type[_R]) -> None:
        self.path = path
        self.row_type = row_type
        self.columns = tuple(c[0] for c in _columns(row_type))

    def _line(self, values: Sequence[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([_cell(v) for v in values])
        return buffer.getvalue()

    def _values(self, row: _R) -> list[Any]:
        if type(row) is not self.row_type:
            raise TypeError(f"{self.path}: a row must be a {self.row_type.__name__}, got {row!r}")
        return [getattr(row, name) for name in self.columns]

    def rewrite(self, rows: Sequence[_R]) -> None:
        """Replace the file with the header and ``rows``, atomically.

        Raises:
            DiskFullError: the disk is full (the file keeps its old content).
        """
        lines = [self._line(self.columns), *(self._line(self._values(r)) for r in rows)]
        atomic_write(self.path, "".join(lines))

    def append(self, row: _R) -> None:
        """Append one row in a single write and fsync it.

        Raises:
            DiskFullError: the disk is full.
        """
        data = self._line(self._values(row)).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {str(self.path)!r}")
            os.fsync(fd)
        except OSError as err:
            raise disk_full(err, self.path) if is_disk_full(err) else err from None
        finally:
            os.close(fd)

    def read(self, last: int | None = None) -> list[_R]:
        """The rows (see ``read_rows``)."""
        return read_rows(self.path, self.row_type, last)
