"""DuckDB over event logs: the documented views of ``esper runs query``.

Every view has the columns ``run`` (the run directory's name), ``mode``, ``env`` and ``episode``
(null outside PPO runs) and ``t`` (unix seconds), then its own. Event views take their columns
from the event dataclasses in ``esper.leyline.events`` — declared once, so a new field is a new
column — with nested values (tuples of snapshots, pairs) as DuckDB ``JSON``:

* ``runs``: one row per run: run, mode, task, seed, status, path.
* ``events``: every event: run, mode, env, episode, t, event, record (the whole line as JSON).
* ``epochs``: ``EpochCompleted`` (epoch, train/val loss and accuracy, param_count, seconds).
* ``slots``: one row per slot per ``EpochCompleted``: epoch, slot, stage, blueprint, alpha,
  contribution, shapley, seed_params.
* ``lifecycle``: ``SeedTransition`` (epoch, slot, blueprint, from_stage, to_stage, reason).
* ``actions``: ``ActionTaken`` (epoch, op, slot, blueprint, tempo, alpha_target, reason,
  accepted, error).
* ``decisions``: ``PolicyDecision`` (epoch, chosen, valid_ops, valid_slots, valid_blueprints,
  log_prob, value).
* ``panics``: ``GovernorPanic``. ``episodes``: ``EpisodeFinished``.
* ``ppo_updates``: ``PPOUpdate`` (round, env_steps, losses, entropy, approx_kl, …).
* ``anomalies``: ``AnomalyDetected``.
* ``rewards``: ``RewardComputed`` (epoch, total, components as JSON).
* ``reward_components``: one row per component per step: epoch, component, value.
* ``trials``: one row per finished or failed trial of the studies named (``esper study``'s
  ``trials.csv``): study (its directory), scored_by (``test`` or ``validation``: what its
  ``score`` and ``best_score`` are, from ``study.json``; null when that cannot be read), the
  ``TrialRow`` fields, run. A study directory given
  to ``--runs`` also loads its trials' runs into the other views.

Missing values are SQL NULL. After a resume, what the interrupted attempt logged beyond its last
checkpoint is left out (the fold's ``lines``, ``esper.nissa.fold``): the views show the run as it
finally happened, while ``events`` keeps every line. DuckDB is imported only when a store is
opened.
"""

from __future__ import annotations

import json
import os
import tempfile
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper.leyline.config import optional_type
from esper.leyline.events import (
    ActionTaken,
    AnomalyDetected,
    EpisodeFinished,
    EpochCompleted,
    GovernorPanic,
    PolicyDecision,
    PPOUpdate,
    RewardComputed,
    SeedTransition,
    SlotSnapshot,
)
from esper.leyline.files import disk_full, is_disk_full
from esper.leyline.trials import (
    RUN_COLUMN,
    TRIALS_DIR,
    TRIALS_FILE,
    TrialRow,
    TrialsFileError,
    read_trials,
)
from esper.nissa.discovery import find_runs, is_readable_study, studies_within
from esper.nissa.fold import RunState
from esper.nissa.log import (
    Logged,
    RunDirectory,
    RunDirectoryError,
    open_run,
    read_events,
    shown_path,
)
from esper.nissa.record import known_study_score

if TYPE_CHECKING:
    import duckdb

EVENT_VIEWS: dict[str, type[Any]] = {
    "epochs": EpochCompleted,
    "lifecycle": SeedTransition,
    "actions": ActionTaken,
    "decisions": PolicyDecision,
    "panics": GovernorPanic,
    "episodes": EpisodeFinished,
    "ppo_updates": PPOUpdate,
    "anomalies": AnomalyDetected,
    "rewards": RewardComputed,
}
"""Views with one row per event of a type, named after what they hold."""

VIEW_NAMES: tuple[str, ...] = (
    "runs",
    "events",
    *EVENT_VIEWS,
    "slots",
    "reward_components",
    "trials",
)
"""Every view ``esper runs query`` offers."""

_CONTEXT = (("run", "VARCHAR"), ("mode", "VARCHAR"), ("env", "INTEGER"), ("episode", "INTEGER"))
_SCALARS = {int: "BIGINT", float: "DOUBLE", str: "VARCHAR", bool: "BOOLEAN"}


def _columns(cls: type[Any], lead: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    hints = typing.get_type_hints(cls)
    context = {name for name, _ in _CONTEXT}  # EpisodeFinished.episode is the context's
    # Scalars (optional or not) map to their SQL type, anything else is JSON.
    own = [
        (f.name, _SCALARS.get(optional_type(hints[f.name])[0], "JSON"))
        for f in fields(cls)
        if f.name not in context
    ]
    return [*_CONTEXT, ("t", "DOUBLE"), *lead, *own]


VIEW_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "runs": [
        ("run", "VARCHAR"),
        ("mode", "VARCHAR"),
        ("task", "VARCHAR"),
        ("seed", "BIGINT"),
        ("status", "VARCHAR"),
        ("path", "VARCHAR"),
    ],
    "events": [*_CONTEXT, ("t", "DOUBLE"), ("event", "VARCHAR"), ("record", "JSON")],
    **{name: _columns(cls) for name, cls in EVENT_VIEWS.items()},
    "slots": _columns(SlotSnapshot, lead=(("epoch", "BIGINT"),)),
    "reward_components": [
        *_CONTEXT,
        ("t", "DOUBLE"),
        ("epoch", "BIGINT"),
        ("component", "VARCHAR"),
        ("value", "DOUBLE"),
    ],
    "trials": [
        ("study", "VARCHAR"),
        ("scored_by", "VARCHAR"),
        *[(n, t) for n, t in _columns(TrialRow) if (n, t) not in (*_CONTEXT, ("t", "DOUBLE"))],
        ("run", "VARCHAR"),
    ],
}
"""Column names and DuckDB types of every view."""


class QueryError(ValueError):
    """DuckDB rejected a query (the message is DuckDB's, on one line)."""


FETCH_ROWS = 10_000
"""Rows a query's answer is fetched in at a time (``QueryResult.rows``): a huge answer is
written out as it comes rather than held whole (2M rows as Python tuples took 0.7 GB)."""


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows of a query; ``json``: which columns are of DuckDB's ``JSON`` type
    (their values are JSON text).

    ``rows`` are fetched as they are read, ``FETCH_ROWS`` at a time, so the store must stay open
    until they have been; reading them raises ``QueryError`` where DuckDB fails on a later row
    (a cast of a value that does not fit, say)."""

    columns: list[str]
    rows: Iterator[tuple[Any, ...]]
    json: tuple[bool, ...] = ()


def _rows(run: str, mode: str, log: list[Logged]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(view, row)`` for every row a run's log gives (the runs view excluded): ``events`` from
    every line, the other views from the run as it finally happened (the fold's ``lines``)."""
    by_event = {cls.__name__: name for name, cls in EVENT_VIEWS.items()}
    kept = RunState(recent=0, keep_lines=True).apply_all(log).lines or []
    final = {n for n, _ in kept}
    for n, item in enumerate(log, start=1):
        record = item.record()
        context = {"run": run, "mode": mode, "env": item.env, "episode": record.get("episode")}
        context["t"] = item.t
        yield "events", {**context, "event": item.name, "record": record}
        if n not in final:
            continue
        view = by_event.get(item.name)
        if view is not None:
            yield view, {**context, **{k: record[k] for k, _ in VIEW_COLUMNS[view][5:]}}
        if isinstance(item.event, EpochCompleted):
            for slot in record["slots"]:
                yield "slots", {**context, "epoch": item.event.epoch, **slot}
        elif isinstance(item.event, RewardComputed):
            for component, value in record["components"]:
                row = {"epoch": item.event.epoch, "component": component, "value": value}
                yield "reward_components", {**context, **row}


def collect_runs(paths: list[Path]) -> list[RunDirectory]:
    """The runs named by ``paths``: run directories, directories holding runs, or study
    directories (their trials' runs).

    Raises:
        RunDirectoryError: for a path that is none of these (or holds no run at all).
    """
    runs: dict[Path, RunDirectory] = {}
    for path in paths:
        found = find_runs(path) if path.is_dir() else [open_run(path)]
        if not found:
            raise RunDirectoryError(f"{str(path)!r} holds no Esper runs")
        runs.update((run.path.resolve(), run) for run in found)
    return list(runs.values())


def studies_of(paths: list[Path]) -> list[Path]:
    """The studies whose ``trials.csv`` fills the ``trials`` view for the runs of ``paths``: a
    study given, the study of a trials folder given, and the studies inside a directory of runs
    (``studies_within``), each once."""
    found: dict[Path, Path] = {}
    for path in paths:
        parent = path.parent if path.name == TRIALS_DIR else None
        if is_readable_study(path):
            found.setdefault(path.resolve(), path)
        elif parent is not None and is_readable_study(parent):
            found.setdefault(parent.resolve(), parent)
        else:
            found |= {s.resolve(): s for s in studies_within(path) if s.resolve() not in found}
    return list(found.values())


def _trials(study: Path) -> Iterator[dict[str, Any]]:
    """The rows of a study's ``trials.csv`` as the ``trials`` view's columns (``read_trials``,
    whose checks keep every number within its column's type).

    Raises:
        RunDirectoryError: the file is unreadable or malformed (one line, naming file:line).
    """
    if not (study / TRIALS_FILE).exists():
        return  # a study whose first invocation has not finished yet
    try:
        trials = read_trials(study)
    except TrialsFileError as err:
        raise RunDirectoryError(str(err)) from None
    scored_by, _ = known_study_score(study)  # None: study.json cannot be read; rows stand
    place = shown_path(Path(os.path.abspath(study)))
    for trial in trials:
        # the study's absolute path: one name however --runs spells it ("." or "s/../s")
        row = {"study": place, "scored_by": scored_by, **asdict(trial.row)}
        yield {**row, RUN_COLUMN: trial.run}


_INTEGER_BOUNDS = {"INTEGER": 2**31, "BIGINT": 2**63}
"""Each integer column type's bound: a value ``v`` fits when ``-bound <= v < bound`` (a DOUBLE
column takes integers below 2**1023, which ``float`` holds)."""


def _fitted(view: str, row: dict[str, Any], where: Path) -> dict[str, Any]:
    """``row`` with every value its column's type holds (an integer in a DOUBLE column as a
    float), so DuckDB's load cannot fail on an event log's numbers.

    Raises:
        RunDirectoryError: an integer beyond its column's type, naming the log, view and value.
    """
    for name, kind in VIEW_COLUMNS[view]:
        value = row.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        bound = _INTEGER_BOUNDS.get(kind, 2**1023 if kind == "DOUBLE" else None)
        if bound is not None and not -bound <= value < bound:
            raise RunDirectoryError(
                f"{where}: {name} {value} (the {view} view) does not fit its column's type ({kind})"
            )
        if kind == "DOUBLE":
            row[name] = float(value)
    return row


class RunStore:
    """An in-memory DuckDB database with the views of ``VIEW_NAMES`` over some runs.

    Args:
        runs: the runs to load.
        warn: called with a message for each run whose event log ends in a truncated line.
        studies: study directories whose ``trials.csv`` fills the ``trials`` view.

    Raises:
        EventLogError: a malformed line inside an event log.
    """

    def __init__(
        self,
        runs: list[RunDirectory],
        warn: Callable[[str], None],
        studies: Sequence[Path] = (),
    ) -> None:
        import duckdb

        self.runs = runs
        self.studies = list(studies)
        names = [run.name for run in runs]
        # The run column is the directory's name, or its path where two runs share a name.
        self.labels = {
            run.path: run.name if names.count(run.name) == 1 else shown_path(run.path)
            for run in runs
        }
        no_extensions: dict[str, str | bool | int | float | list[str]] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            # No spilling to disk: DuckDB's default is ./.tmp in the working directory, which a
            # big sort or join filled (and a kill left); past memory a query fails in one line.
            "temp_directory": "",
        }
        self.connection: duckdb.DuckDBPyConnection = duckdb.connect(
            ":memory:", config=no_extensions
        )
        try:
            self._fill(warn)
            # Queries read the views and nothing else: no file written, attached or read (COPY
            # TO, ATTACH, INSTALL, read_csv), and no query can switch that back on.
            self.connection.execute("SET enable_external_access = false")
            self.connection.execute("SET lock_configuration = true")
        except BaseException:
            self.connection.close()
            raise

    def _fill(self, warn: Callable[[str], None]) -> None:
        with tempfile.TemporaryDirectory(prefix="esper-views-") as tmp:
            # ensure_ascii=False with errors="replace": a lone surrogate (a logged string
            # holding bytes that are no UTF-8) is written as "?", where its \\u escape would be
            # JSON that DuckDB refuses to read. Paths and labels are shown_path's already.
            files = {
                name: (Path(tmp) / f"{name}.jsonl").open("w", encoding="utf-8", errors="replace")
                for name in VIEW_NAMES
            }
            try:
                for run in self.runs:
                    log = read_events(run.events_path)
                    if log.truncated_line is not None:
                        warn(
                            f"{run.events_path}: line {log.truncated_line} is truncated "
                            "(the run crashed while writing it); it was skipped"
                        )
                    row: dict[str, Any] = {"run": self.labels[run.path], "mode": run.mode}
                    row |= {"task": run.task, "seed": run.seed, "status": run.status}
                    files["runs"].write(_line({**row, "path": shown_path(run.path)}))
                    for view, row in _rows(self.labels[run.path], run.mode, log.records):
                        files[view].write(_line(_fitted(view, row, run.events_path)))
                # A trial's run as the other views name it, however its study's path is spelt.
                resolved = {path.resolve(): label for path, label in self.labels.items()}
                for study in self.studies:
                    for row in _trials(study):
                        run = (study / TRIALS_DIR / row[RUN_COLUMN]).resolve()
                        row[RUN_COLUMN] = resolved.get(run, row[RUN_COLUMN])
                        files["trials"].write(_line(row))
                for f in files.values():
                    f.flush()
            except OSError as err:  # the temporary files' disk: the error names no file
                raise disk_full(err, Path(tmp)) if is_disk_full(err) else err from None
            finally:
                for f in files.values():
                    f.close()
            for name in VIEW_NAMES:
                self._load(name, Path(tmp) / f"{name}.jsonl")

    def _load(self, name: str, path: Path) -> None:
        """Raises QueryError: DuckDB refused the rows (one line)."""
        import duckdb

        try:
            self._insert(name, path)
        except duckdb.Error as err:
            raise QueryError(f"cannot load the {name} view: {_first_line(err)}") from None

    def _insert(self, name: str, path: Path) -> None:
        columns = VIEW_COLUMNS[name]
        spec = ", ".join(f"'{c}': '{t}'" for c, t in columns)
        names = ", ".join(f'"{c}"' for c, _ in columns)
        definition = ", ".join(f'"{c}" {t}' for c, t in columns)
        self.connection.execute(f"CREATE TABLE {name} ({definition})")
        if path.stat().st_size:
            self.connection.execute(
                f"INSERT INTO {name} SELECT {names} FROM read_json(?, "
                f"format = 'newline_delimited', columns = {{{spec}}})",
                [str(path)],
            )

    def query(self, sql: str) -> QueryResult:
        """Run ``sql``; every view is a table name.

        Raises:
            QueryError: DuckDB's message when it rejects the query.
        """
        import duckdb

        try:
            sql.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are no UTF-8, kept as surrogates by Python
            raise QueryError(f"the SQL is not UTF-8 text: {sql!r}") from None
        try:
            statements = len(self.connection.extract_statements(sql))
            if statements > 1:  # DuckDB would run them all and answer with the last alone
                raise QueryError(f"one SQL statement at a time, got {statements} in {sql!r}")
            cursor = self.connection.execute(sql)
            if cursor is None:  # DuckDB's answer to a text without a statement
                raise QueryError(f"no SQL statement in {sql!r}; e.g. SELECT * FROM runs")
            described = cursor.description or []
        except duckdb.Error as err:
            raise QueryError(_first_line(err)) from None
        columns = [d[0] for d in described]
        json_typed = tuple(str(d[1]) == "JSON" for d in described)
        return QueryResult(columns, _fetched(cursor) if columns else iter(()), json_typed)

    def close(self) -> None:
        self.connection.close()


def _fetched(cursor: Any) -> Iterator[tuple[Any, ...]]:
    """A cursor's rows, ``FETCH_ROWS`` at a time.

    Raises:
        QueryError: DuckDB failed while producing them (one line).
    """
    import duckdb

    while True:
        try:
            rows = cursor.fetchmany(FETCH_ROWS)
        except duckdb.Error as err:
            raise QueryError(_first_line(err)) from None
        if not rows:
            return
        yield from rows


def _line(row: dict[str, Any]) -> str:
    """One JSON line of a view's file (see ``RunStore._fill`` for the encoding)."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def _first_line(err: Exception) -> str:
    """DuckDB's message, first line (the others point into the SQL)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)
