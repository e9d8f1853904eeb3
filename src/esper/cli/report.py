"""``esper report RUN [--baseline RUN] [--out DIR]``: the static HTML report with PNG plots.

Imported only when the command runs (``VIEW_COMMANDS`` in ``esper.cli.main``), so matplotlib
stays out of every other command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esper.karn.report import build_report, write_report
from esper.karn.report_data import ReportError
from esper.leyline.config import UserError

REPORT_DIR = "report"


def write_run_report(run: Path, baseline: Path | None, out: Path | None = None) -> Path:
    """Build the report of ``run`` and write it to ``out`` (default ``RUN/report``).

    Nothing is written unless every record was read and every plot rendered.

    Returns:
        The path of ``report.html``.

    Raises:
        UserError: records that cannot be drawn, or an output directory that cannot be written.
        RunDirectoryError, EventLogError: not a run; a malformed event line.
    """
    target = out if out is not None else run / REPORT_DIR
    try:
        report = build_report(run, baseline)
    except ReportError as err:
        raise UserError(str(err)) from None
    for warning in report.warnings:
        print(f"esper report: warning: {warning}", file=sys.stderr)
    try:
        return write_report(report, target)
    except OSError as err:
        raise UserError(f"cannot write the report to {str(target)!r}: {err}") from None


def run_report(args: argparse.Namespace) -> int:
    """Handler of ``esper report``: writes the report and prints where it is."""
    path = write_run_report(args.run, args.baseline, args.out)
    print(f"report: {path}")
    return 0
