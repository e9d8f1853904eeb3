"""``esper runs``: list, show, compare and query recorded runs.

Reads run directories through ``esper.nissa.log`` and answers SQL through the DuckDB views of
``esper.nissa.views``. A value that was not recorded prints as "—".
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper.leyline.config import COMPARED_SETTINGS, UserError, setting_text
from esper.leyline.files import expanded, shell_path
from esper.nissa.discovery import folders_of_runs, scan_runs
from esper.nissa.fold import RunState, fold, summary_so_far
from esper.nissa.log import (
    SUMMARY_METRICS,
    RunDirectory,
    counted,
    display,
    open_run,
    percent,
    policy_line,
    read_events,
    shown_path,
)
from esper.nissa.record import (
    CONFIG_FILE,
    EVENTS_FILE,
    RunRecordError,
    read_meta,
    samples_text,
    strict_json,
)

if TYPE_CHECKING:
    from esper.nissa.views import QueryResult


TABLE_ROWS = 1_000
"""Rows the table format shows at most; the rest are counted (a table of millions of rows is
read by no one, and aligning it held every row's text: 0.9 GB for 2M rows)."""


def path_arg(text: str) -> Path:
    """An argparse type for every path argument: not empty, which ``Path`` reads as "here"
    (``esper report RUN --out ""`` wrote the report into the working directory), ``~``
    expanded (``--out=~/r``, which no shell expands, made a directory named ``~``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    try:
        return expanded(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _progress(run: RunDirectory) -> tuple[Any, Any, Any, Any, Any]:
    """(steps done, planned, val accuracy, params, mean return) from the run's summary, or for
    an unfinished run from its last logged step (None: not recorded)."""
    s = run.summary
    if s is not None and s.ppo is not None:
        p = s.ppo
        accuracy, mean_return = p.final_mean_accuracy, p.final_mean_return
        return p.rounds_completed, p.rounds_planned, accuracy, None, mean_return
    if s is not None and s.growth is not None:
        g = s.growth
        return g.epochs_completed, g.epochs_planned, g.final_val_accuracy, g.param_count, None
    state = _folded(run)
    if state.is_ppo:
        planned = _planned(run, "ppo", "rounds")
        if not state.rounds:
            return None, planned, None, None, None
        update = state.rounds[-1].update
        return update.round, planned, update.mean_final_accuracy, None, update.mean_return
    planned = _planned(run, "training", "epochs")
    last = state.episode().latest
    if last is None:
        return None, planned, None, None, None
    return last.epoch, planned, last.val_accuracy, last.param_count, None


def _folded(run: RunDirectory) -> RunState:
    """An unfinished run's log folded, with a warning when its last line is cut (a crash).

    Raises:
        EventLogError: a complete line is malformed.
        OSError: the log cannot be read.
    """
    log = read_events(run.events_path)
    if log.truncated_line is not None:
        print(
            f"warning: {run.name}: {EVENTS_FILE} line {log.truncated_line} is truncated "
            "(the run crashed while writing it)",
            file=sys.stderr,
        )
    return fold(log.records, recent=0)


def _planned(run: RunDirectory, section: str, key: str) -> int:
    """An unfinished run's planned epochs or rounds, from its ``config.json``.

    Raises:
        ValueError: naming the file and the setting that is not a whole number (a section that
            was no table was a TypeError traceback).
    """
    table = run.config().get(section)
    value = table.get(key) if isinstance(table, dict) else None
    if type(value) is not int:
        raise ValueError(f"{run.path / CONFIG_FILE}: {section}.{key} is not a whole number")
    return value


def _list(directory: Path) -> int:
    found, unreadable = scan_runs(directory)
    broken = [f"{name}: not readable: {why}" for name, why in unreadable]
    rows = []
    for run in found:
        try:
            done, planned, accuracy, params, mean_return = _progress(run)
        except (ValueError, KeyError, OSError) as err:  # EventLogError is a ValueError
            broken.append(f"{run.name}: not readable: {err}")
            continue
        steps = f"{display(done)}/{display(planned)}"
        cells = [
            run.status,
            steps,
            percent(accuracy),
            display(params, ",d"),
            display(mean_return, ".3f"),
        ]
        rows.append([run.name, run.mode, run.task, str(run.seed), *cells])
    folders = [
        f"{shell_path(folder)} is no run but holds {counted(n, 'run')}: esper runs list "
        f"{shell_path(folder)}"
        for folder, n in folders_of_runs(directory)
    ]
    if not rows and not broken:
        print(f"no runs in {directory}")
    else:
        header = ["run", "mode", "task", "seed", "status", "epochs|rounds", "val acc", "params"]
        print(format_table([*header, "return"], rows))
    for line in [*broken, *folders]:
        print(line, file=sys.stderr)
    return 0


def _compare(paths: list[Path]) -> int:
    runs = [open_run(path) for path in paths]
    names = [run.name for run in runs]
    if len(set(names)) < len(names):  # runs of one name in two places: told apart by path
        names = [shown_path(path) for path in paths]
    header = ["", *names]
    rows = [
        ["mode", *[run.mode for run in runs]],
        ["task", *[run.task for run in runs]],
        ["seed", *[str(run.seed) for run in runs]],
        ["status", *[run.status for run in runs]],
    ]
    rows += _setting_rows(runs)
    summaries = [
        _summary_so_far(run) if run.summary is None else run.summary.to_json() for run in runs
    ]
    for metric in SUMMARY_METRICS:  # a metric no run has is left out
        found = [metric.value(summary) for summary in summaries]
        if any(has for has, _ in found):
            rows.append([metric.label, *(metric.text(value) for _, value in found)])
    print(format_table(header, rows))
    return 0


def _summary_so_far(run: RunDirectory) -> dict[str, Any]:
    """What ``summary.json`` would hold of an unfinished run's progress (``summary_so_far`` of
    its log), for ``runs compare``.

    Raises:
        UserError: its log cannot be read.
    """
    try:
        return summary_so_far(_folded(run))
    except (ValueError, OSError) as err:  # as runs list says it (EventLogError: a ValueError)
        raise UserError(f"{run.name}: not readable: {err}") from err


GROWTH_SETTINGS = ("seed_lr", "slots", "auto_advance", "shapley", "threads")
"""The host-training settings beyond ``COMPARED_SETTINGS`` that change what a run does (where
it grows, how its seeds train and advance, its float results): ``runs compare`` names them
where runs differ, as what a comparison may be about."""


def _setting_rows(runs: list[RunDirectory]) -> list[list[str]]:
    """A row per host-training setting (the epochs, ``COMPARED_SETTINGS``, ``GROWTH_SETTINGS``)
    the runs do not share (their accuracies then do not compare like for like: validation on
    64 samples against all of them); a run whose configuration does not record it shows "—".
    Not the width: its default is the task's (recorded as null), and the params rows show each
    host's size; nor where the data was read from."""
    trainings = [run.host_training() for run in runs]
    rows = []
    for name in ("epochs", *COMPARED_SETTINGS, *GROWTH_SETTINGS):
        cells = [
            "—" if t is None or name not in t else setting_text(name, t[name]) for t in trainings
        ]
        if len({cell for cell in cells if cell != "—"}) > 1:
            rows.append([f"setting {name}", *cells])  # as config.json names it
    return rows


def _data_line(data: dict[str, Any]) -> str:
    """A run's data receipt (``meta.json``'s ``data``) for people: "digits from scikit-learn
    1.9.1 (load_digits): 1,079 train / 359 val / 359 test"; as JSON when it is not one."""
    splits = samples_text(data.get("samples"))
    if splits is None or "dataset" not in data or "source" not in data:
        return json.dumps(data, sort_keys=True)
    return f"{data['dataset']} from {data['source'] or 'an unsaid source'}: {splits}"


def _priors_line(priors: dict[str, Any]) -> str:
    """A bandit selector's priors (``meta.json``'s ``priors``) for people: "60 seed outcomes
    (60 decided) from STORE, SHA-256 0123456789ab..."; as JSON when it is not one."""
    try:
        outcomes, digest, store = int(priors["outcomes"]), str(priors["sha256"]), priors["store"]
        scored = priors.get("scored")  # (receipts before it was recorded have none)
        decided = "" if scored is None else f" ({int(scored):,} decided)"
    except (KeyError, TypeError, ValueError):
        return json.dumps(priors, sort_keys=True)
    return f"{counted(outcomes, 'seed outcome')}{decided} from {store}, SHA-256 {digest[:12]}..."


def _show(path: Path) -> int:
    run = open_run(path)
    log = read_events(run.events_path)
    meta = read_meta(run.path)
    print(f"run       {run.name}  ({shown_path(run.path)})")
    print(f"mode      {run.mode}   task {run.task}   seed {run.seed}   status {run.status}")
    if meta is not None:
        print(f"git       {display(meta.git_revision)}   started {meta.started}")
    if meta is not None and meta.data is not None:
        print(f"data      {_data_line(meta.data)}")
    if meta is not None and meta.policy is not None:
        print(f"policy    {policy_line(meta.policy)}")
    if meta is not None and meta.priors is not None:
        print(f"priors    {_priors_line(meta.priors)}")
    for resume in () if meta is None else meta.resumes:
        step, revision = resume.get("step"), display(resume.get("git_revision"))
        print(f"resumed   after step {step}   git {revision}   started {resume.get('started')}")
    print(f"config    {json.dumps(run.config(), sort_keys=True)}")
    if run.summary is not None:
        print(f"summary   {json.dumps(run.summary.to_json(), sort_keys=True)}")
    state = fold(log.records, recent=0)
    again = ""
    if meta is not None and meta.resumes:  # the views (esper runs query) count a step once
        again = " (as logged: a resume logs again what ran after its checkpoint)"
    print(f"events    {state.events} in {EVENTS_FILE}{again}")
    for name, count in sorted(state.counts.items()):
        print(f"  {name:<18}{count}")
    if log.truncated_line is not None:
        print(
            f"warning: {EVENTS_FILE} line {log.truncated_line} is truncated (the run crashed "
            "while writing it); it was skipped",
            file=sys.stderr,
        )
    return 0


def _query(sql: str, paths: list[Path], fmt: str) -> int:
    from esper.nissa.views import QueryError, RunStore, collect_runs, studies_of

    try:  # the runs first: a path that cannot be read fails there, naming it
        runs = collect_runs(paths)
        # The trials view is read only for a query that names it: a damaged trials.csv failed
        # every query over its folder, those of the runs' own views too (a walk-through).
        studies = studies_of(paths) if re.search(r"\btrials\b", sql, re.IGNORECASE) else []
        store = RunStore(runs, lambda m: print(f"warning: {m}", file=sys.stderr), studies)
    except QueryError as err:
        raise UserError(f"query failed: {err}") from None
    try:
        result = store.query(sql)
        _print_result(result, fmt)  # rows are fetched as they are written: the store stays open
    except QueryError as err:
        raise UserError(f"query failed: {err}") from err
    finally:
        store.close()
    return 0


def _print_result(result: QueryResult, fmt: str) -> None:
    """Write ``result`` to stdout as ``fmt`` (csv, json: a row per line as it comes; table: the
    first ``TABLE_ROWS`` rows in aligned columns, and how many there are).

    Raises:
        QueryError: DuckDB failed on a later row (what was written before it stays written).
    """
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(["" if v is None else v for v in row] for row in result.rows)
    elif fmt == "json":
        repeated = sorted({c for c in result.columns if result.columns.count(c) > 1})
        if repeated:  # a JSON object keeps one value per name: the others would be lost
            raise UserError(
                f"--format json needs distinct column names; {repeated} repeat (rename them "
                "with AS)"
            )
        for row in result.rows:
            values = [  # a JSON column's text is nested as what it holds, not as a string
                _nested(v) if typed and isinstance(v, str) else v
                for v, typed in zip(row, result.json or [False] * len(row), strict=True)
            ]
            data = strict_json(dict(zip(result.columns, values, strict=True)))  # NaN, inf: null
            print(json.dumps(data, default=_json_value, allow_nan=False))
    elif result.columns:
        cells = [[display(v) for v in row] for row in islice(result.rows, TABLE_ROWS)]
        print(format_table(result.columns, cells))
        total = len(cells) + sum(1 for _ in result.rows)  # the rest, counted as they come
        shown = f", the first {len(cells):,} shown; --format csv writes them all" * (
            total > len(cells)
        )
        print(f"({counted(total, 'row')}{shown})")


def _json_value(value: Any) -> Any:
    """What JSON writes for a value it has no type for, wherever it sits (in a list or a struct
    too): a DECIMAL (DuckDB's type of ``0.1 + 0.2`` and of ``x::DECIMAL(6,2)``) as a number, an
    integer when it has no decimal places (``DECIMAL(18, 0)``), else the nearest float; any
    other (a date, a UUID) as its text."""
    if isinstance(value, Decimal) and value.is_finite():
        return int(value) if int(value.as_tuple().exponent) >= 0 else float(value)
    return str(value)


def _nested(text: str) -> Any:
    """A JSON column's value as what it holds; its text where Python cannot parse what DuckDB
    took (numbers of thousands of digits, nesting thousands deep)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def run_runs(args: argparse.Namespace) -> int:
    """``esper runs list|show|compare|query``."""
    try:
        if args.runs_command == "list":
            return _list(args.dir)
        if args.runs_command == "show":
            return _show(args.run)
        if args.runs_command == "compare":
            return _compare(args.runs)
    except RunRecordError as err:  # e.g. a malformed meta.json or config.json: one line
        raise UserError(str(err)) from None
    return _query(args.sql, args.runs, args.format)
