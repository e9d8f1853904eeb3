"""``esper dashboard [RUNS_DIR]``: serve the live web dashboard (Karn) on this machine."""

from __future__ import annotations

import argparse
import contextlib
import errno
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from esper.karn.studies import StudyFindings, StudyRow
from esper.leyline.config import UserError
from esper.leyline.trials import TRIALS_FILE, read_trials, study_running
from esper.nissa.log import counted
from esper.nissa.record import RUNS_DIR

if TYPE_CHECKING:
    from esper.study.stats import ArmSummary


def _listen_error(host: str, port: int, err: OSError) -> UserError:
    """One line for a socket that could not be opened, naming the bad value."""
    reason = err.strerror or str(err)
    if err.errno == errno.EADDRINUSE:
        return UserError(
            f"port {port} on {host} is already in use ({reason}); "
            "stop the other server or pick another port with --port"
        )
    if err.errno == errno.EACCES:
        return UserError(f"not allowed to listen on port {port} ({reason}); pick one with --port")
    return UserError(f"cannot listen on {host}:{port}: {reason} (check --host and --port)")


LEFT_OUT = ("median", "std", "peak params", "training FLOPs")
"""The columns of ``results.md``'s scores table (``SCORE_COLUMNS``) the study page leaves out:
it shows task, arm, n, IQM and mean with their intervals, final params and seconds."""


def study_table(study: Path) -> StudyFindings:
    """A study as the dashboard's study page shows it: ``esper.study.results.study_results``
    over the trials in its ``trials.csv``, judged as its ``results.json`` says (the numbers
    ``results.md`` and ``esper report STUDY`` show; ``results.UNJUDGED``'s bootstrap and no
    verdicts without one).

    Karn may not import ``esper.study`` (DESIGN §1), so the CLI hands it this function.

    Raises:
        ValueError: no readable ``trials.csv`` (``TrialsFileError``), or two counted trials
            with one task, arm and seed.
    """
    from esper.study.results import (  # rliable
        findings_tables,
        judging_of,
        left_out,
        not_counted,
        so_far,
        study_results,
    )

    trials = read_trials(study)
    rows = [trial.row for trial in trials]
    judging, problem, _ = judging_of(study, rows)
    try:
        results = study_results(rows, judging)
    except ValueError as err:  # two counted trials of one task, arm and seed (as the report)
        raise ValueError(f"{study / TRIALS_FILE}: {err}") from None
    runs: dict[tuple[str, str], list[str]] = {}
    for trial in trials:
        if trial.row.counts:
            runs.setdefault((trial.row.task, trial.row.arm), []).append(trial.run)
    table = tuple(_study_row(s, runs) for s in results.summaries)
    running = study_running(study)
    notes = [" ".join(so_far(judging, running))] if judging.unfinished else []
    notes += [] if problem is None else [problem]
    notes += [*left_out(results), *filter(None, [not_counted(results)])]
    if not judging.trials:  # results.md's judging is not known: no verdicts to show
        return StudyFindings(table, notes=tuple(notes))
    return StudyFindings(
        table,
        tables=findings_tables(results),
        verdicts=tuple(results.verdicts or [results.no_verdict]),
        notes=tuple(notes),
    )


def _study_row(s: ArmSummary, runs: dict[tuple[str, str], list[str]]) -> StudyRow:
    """One row of the arms × tasks table, with the run directories of the trials that entered
    it (none for a row over all tasks, whose trials the per-task rows link)."""
    from esper.study.results import SCORE_COLUMNS, score_cells
    from esper.study.stats import ALL_TASKS

    return StudyRow(
        task=s.task,
        arm=s.arm,
        n=s.n,
        iqm=s.iqm.point,
        iqm_low=s.iqm.low,
        iqm_high=s.iqm.high,
        mean=s.mean.point,
        mean_low=s.mean.low,
        mean_high=s.mean.high,
        final_params=s.final_params,
        seconds=s.seconds,
        runs=() if s.task == ALL_TASKS else tuple(runs[s.task, s.arm]),
        cells=tuple(
            cell
            for column, cell in zip(SCORE_COLUMNS, score_cells(s), strict=True)
            if column not in LEFT_OUT
        ),
    )


def run_dashboard(args: argparse.Namespace) -> int:
    """Serve the runs in ``args.runs_dir`` until Ctrl-C.

    Returns:
        0 after a clean stop (Ctrl-C included).

    Raises:
        RunDirectoryError: RUNS_DIR is missing, not a directory, or cannot be read.
        UserError: the port cannot be opened.
    """
    from esper.karn.dashboard import DashboardServer, list_runs, open_listener, studies

    runs_dir: Path = args.runs_dir
    # Before the first run of a fresh checkout, where runs go by default is made, as a run
    # would make it, once the port is open; one given elsewhere is refused when missing (a
    # typo serves nothing).
    make = runs_dir == RUNS_DIR and not runs_dir.exists() and not runs_dir.is_symlink()
    count = 0 if make else len(list_runs(runs_dir))  # one that cannot be read fails at once
    try:
        sock = open_listener(args.host, args.port)
    except OSError as err:
        raise _listen_error(args.host, args.port, err) from None
    if make:
        try:
            runs_dir.mkdir()
        except OSError as err:
            sock.close()
            raise UserError(f"cannot make the runs directory {str(runs_dir)!r}: {err}") from err
        print(f"esper dashboard: made {runs_dir}/, where runs go by default", file=sys.stderr)
    server = DashboardServer(runs_dir, sock, study_table=study_table)
    found = len(studies(runs_dir))
    in_studies = f", {counted(found, 'study', 'studies')}" if found else ""
    print(
        f"esper dashboard: {server.url} ({counted(count, 'run')}{in_studies} in "
        f"{runs_dir}; new ones appear as they start). Ctrl-C stops.",
        flush=True,
    )
    # uvicorn re-raises Ctrl-C once it has shut down cleanly: a normal way to stop.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0
