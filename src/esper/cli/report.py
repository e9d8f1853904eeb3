"""``esper report PATH [--baseline RUN] [--out DIR]``: the static HTML report of a run (with PNG
and SVG plots, ``esper.karn.report``) or of a study (``esper.study.report``).

A path holding ``study.json`` is a study directory: its report (results table, interval plot,
performance profile, per-arm curves, links to every trial) goes to ``STUDY/report.html``. Any
other path is a run directory: its report goes to ``RUN/report/``. Imported only when the command
runs (``VIEW_COMMANDS`` in ``esper.cli.main``), so matplotlib stays out of every other command.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from esper.karn.report import build_report, write_report
from esper.karn.report_data import ReportError
from esper.leyline.config import UserError
from esper.leyline.files import DANGLING_LINK, is_dangling
from esper.nissa.record import CHECKPOINTS_DIR, REPORT_DIR, is_run_directory, is_study


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"esper report: warning: {warning}", file=sys.stderr)


def _refuse_foreign(target: Path, own: Path) -> None:
    """``target`` is not, and does not lie inside, a run or study directory other than ``own``
    (the run or study reported on): a report's images and ``report.html`` would replace
    theirs. Nor may it lie in the run's own checkpoints, whose manifests list their files, nor
    be a file or a link that leads nowhere (checked before the report is built).

    Raises:
        UserError: naming ``--out`` and the directory in its way.
    """
    _refuse_loop(own, repr(str(own)))
    _refuse_loop(target, f"--out {str(target)!r}")
    if os.path.lexists(target) and not os.path.isdir(target):
        what = DANGLING_LINK if is_dangling(target) else "not a directory"
        raise UserError(f"cannot write the report to {str(target)!r}: it is {what}")
    mine, full = _real(own), Path(os.path.abspath(target))  # abspath: ".." collapsed
    resolved = _real(full)  # links followed: where the files would land
    if is_run_directory(mine) and mine / CHECKPOINTS_DIR in (resolved, *resolved.parents):
        raise UserError(
            f"--out {str(target)!r} is in the run's checkpoints, which a resume verifies file "
            "by file; choose a directory outside them"
        )
    for path in dict.fromkeys((full, resolved)):  # as given, and where its links lead
        _refuse_in_chain(path, target, mine)


def _refuse_in_chain(full: Path, target: Path, mine: Path) -> None:
    """``_refuse_foreign`` along one path: ``full`` and its parents, up to ``mine``."""
    for place in (full, *full.parents):
        if _real(place) == mine:
            return  # inside what is reported on: its own report/ or the study itself
        study = is_study(place)
        if study or is_run_directory(place):
            where = "is" if place == full else "lies inside"
            kind = "study" if study else "run"
            raise UserError(
                f"--out {str(target)!r} {where} the {kind} directory {str(place)!r}, which is "
                "not the one reported on; choose a directory outside other runs and studies"
            )


def _refuse_loop(path: Path, shown: str) -> None:
    """Raises UserError (naming ``shown``) where following ``path``'s links never ends."""
    try:
        os.path.realpath(path, strict=True)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{shown}: its symbolic links loop") from None


def _real(path: Path) -> Path:
    """``path`` with its links followed as far as they lead (``Path.resolve`` raises
    RuntimeError at a link loop, which ``_refuse_loop`` has named by then)."""
    return Path(os.path.realpath(path))


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
    _refuse_foreign(target, run)
    try:
        report = build_report(run, baseline)
    except ReportError as err:
        raise UserError(str(err)) from None
    _warn(report.warnings)
    try:
        return write_report(report, target)
    except OSError as err:
        raise UserError(f"cannot write the report to {str(target)!r}: {err}") from None


def write_study_report(study: Path, out: Path | None = None, reps: int | None = None) -> Path:
    """Build the report of the study in ``study`` and write ``report.html`` to ``out`` (default:
    the study directory) with ``reps`` bootstrap resamples per interval (default: those of the
    study's ``results.md``). Nothing is written unless the whole page was built.

    Returns:
        The path of ``report.html``.

    Raises:
        UserError: a study without a finished trial, a malformed ``trials.csv``, or an output
            directory that cannot be written.
    """
    from esper.study.report import (  # rliable and the study code: loaded for studies only
        StudyReportError,
        build_study_report,
    )
    from esper.study.report import write_study_report as write

    target = out if out is not None else study
    _refuse_foreign(target, study)
    try:
        report = build_study_report(study, target, reps)
    except StudyReportError as err:
        raise UserError(str(err)) from None
    _warn(report.warnings)
    try:
        return write(report, target)
    except OSError as err:
        raise UserError(f"cannot write the report to {str(target)!r}: {err}") from None


def run_report(args: argparse.Namespace) -> int:
    """Handler of ``esper report``: writes the run's or study's report and prints where it is."""
    if is_study(args.run):
        if args.baseline is not None:
            raise UserError(
                f"--baseline compares two runs; {str(args.run)!r} is a study directory, whose "
                "report compares its arms"
            )
        path = write_study_report(args.run, args.out, args.reps)
    else:
        if args.reps is not None and is_run_directory(args.run):  # else: not a run, said next
            raise UserError("--reps sets a study report's bootstrap; a run report has none")
        path = write_run_report(args.run, args.baseline, args.out)
    print(f"report: {path}")
    return 0
