"""``esper demo``: the project's main job on the embedded default.

Trains the impaired Fashion-MNIST host twice from the same seed — once static, once grown by the
heuristic controller — prints a side-by-side table, and writes the heuristic run's report with
the static run as its baseline (``<heuristic run>/report/report.html``). If Fashion-MNIST cannot
be found (and not downloaded), it says so and runs on scikit-learn's digits instead, unless it
was asked for in a place (``--data-dir``, ``$ESPER_DATA_DIR``): then it stops with the reason.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from esper.cli.config import absolute_data_dir, interrupted_hint
from esper.cli.main import EXIT_INTERRUPTED
from esper.cli.runs import format_table
from esper.data import DatasetFormatError, DatasetNotFoundError, load_dataset
from esper.data.locate import DATA_DIR_ENV
from esper.leyline.config import HostTraining, UserError, first_line
from esper.nissa import record
from esper.nissa.log import SUMMARY_METRICS
from esper.nissa.stopping import Stop
from esper.study.checks import check_outside_studies
from esper.study.growth import GrowthRun, GrowthRunner
from esper.tasks import get_task

PRIMARY, FALLBACK = "fashion_mnist_impaired", "digits_impaired"


def _pick_task(data_dir: Path | None) -> str:
    try:
        load_dataset(
            get_task(PRIMARY).dataset, data_dir, download=True, progress=sys.stderr.isatty()
        )
    except DatasetFormatError as err:  # present but damaged: say so, do not quietly switch
        raise UserError(f"Fashion-MNIST is damaged: {first_line(err)}") from err
    except DatasetNotFoundError as err:
        if data_dir is not None:  # asked for there: a fallback would hide the mistake
            raise UserError(f"--data-dir {str(data_dir)!r}: {first_line(err)}") from err
        if os.environ.get(DATA_DIR_ENV):  # so was this (the error names it)
            raise UserError(first_line(err)) from err
        print(
            f"esper demo: Fashion-MNIST is not available ({first_line(err)}); "
            f"running the demo on the {FALLBACK} task instead.",
            file=sys.stderr,
        )
        return FALLBACK
    except OSError as err:  # e.g. unreadable (as load_data has it), not missing
        raise UserError(f"Fashion-MNIST: {first_line(err)}") from err
    return PRIMARY


DEMO_METRICS = tuple(
    next(m for m in SUMMARY_METRICS if m.label == label)
    for label in ("final model val acc", "best epoch val acc", "test acc", "params", "fossilized",
                  "pruned", "training time (s)")
)  # fmt: skip
"""The demo table's columns after the run's name."""

TABLE_HEADER = ["run", *(m.label for m in DEMO_METRICS)]


def _row(name: str, summary: record.RunSummary) -> list[str]:
    data = summary.to_json()
    return [name, *(m.text(m.value(data)[1]) for m in DEMO_METRICS)]


def run_demo(args: argparse.Namespace) -> int:
    """Static vs heuristic growth, side by side."""
    given = None if args.data_dir is None else str(args.data_dir)
    data_dir = absolute_data_dir(HostTraining(PRIMARY, data_dir=given)).data_dir  # ~ checked
    task = _pick_task(None if data_dir is None else Path(data_dir))
    spec = get_task(task)  # its description heads the table
    parent = args.out if args.out is not None else record.RUNS_DIR
    modes = ("static", "heuristic")  # side by side: a study's directory holds its trials alone
    stamp = record.free_stamp(lambda s: [parent / f"demo-{s}-{task}-{m}" for m in modes])
    directories = {}
    training = HostTraining(task, epochs=args.epochs, data_dir=data_dir)
    summaries = {}
    check_outside_studies(parent / f"demo-{stamp}-{task}-{modes[0]}")
    for mode in modes:
        out = parent / f"demo-{stamp}-{task}-{mode}"
        runner = GrowthRunner(mode, GrowthRun(training, seed=args.seed), out)
        never = runner.never_grows()
        if never is not None:  # --epochs too few: the heuristic run is a static one
            print(f"esper demo: note: {never}", file=sys.stderr)
        try:
            runner.run(label=f"{mode:>9}")
        except (Stop, KeyboardInterrupt):  # a KeyboardInterrupt: a signal before its loop
            interrupted_hint(mode, out, f"epoch {runner.epoch}")
            print(  # the resume finishes that run alone, and a demo again starts both anew
                "esper demo: the side-by-side table and report need the whole demo: run "
                "esper demo again for them (it starts both runs anew)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        directories[mode] = out
        summary = record.read_summary(out)
        assert summary is not None  # the run finished: it wrote its summary
        summaries[mode] = summary
    print(f"\nesper demo — {task}: {spec.description}; seed {args.seed}\n")
    print(format_table(TABLE_HEADER, [_row(m, s) for m, s in summaries.items()]))
    print()
    for mode, directory in directories.items():
        print(f"{mode:>9} run: {directory}")
    from esper.cli.report import write_run_report  # matplotlib is loaded only now

    report = write_run_report(directories["heuristic"], directories["static"])
    print(f"\nreport: {report}")
    return 0
