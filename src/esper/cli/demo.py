"""``esper demo``: the project's main job on the embedded default.

Trains the impaired Fashion-MNIST host twice from the same seed — once static, once grown by the
heuristic controller — prints a side-by-side table, and writes the heuristic run's report with
the static run as its baseline (``<heuristic run>/report/report.html``). If Fashion-MNIST cannot
be found (and not downloaded), it says so and runs on scikit-learn's digits instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from esper.cli.main import EXIT_INTERRUPTED, UserError
from esper.cli.runs import format_table
from esper.cli.session import Interrupted, RunConfig, execute
from esper.data import DatasetFormatError, DatasetNotFoundError, load_dataset
from esper.nissa.log import percent
from esper.tasks import get_task

PRIMARY, FALLBACK = "fashion_mnist_impaired", "digits"


def _pick_task(data_dir: Path | None) -> str:
    try:
        load_dataset(
            get_task(PRIMARY).dataset, data_dir, download=True, progress=sys.stderr.isatty()
        )
    except DatasetFormatError as err:  # present but damaged: say so, do not quietly switch
        raise UserError(f"Fashion-MNIST is damaged: {str(err).splitlines()[0]}") from err
    except DatasetNotFoundError as err:
        print(
            f"esper demo: Fashion-MNIST is not available ({str(err).splitlines()[0]}); "
            f"running the demo on the {FALLBACK} task instead.",
            file=sys.stderr,
        )
        return FALLBACK
    return PRIMARY


def _row(name: str, summary: dict[str, Any]) -> list[str]:
    final = summary["final"]
    return [
        name,
        percent(None if final is None else final["val_accuracy"]),
        percent(summary["best_val_accuracy"]),
        str(summary["param_count"]),
        str(summary["fossilized"]),
        str(summary["pruned"]),
        f"{summary['wall_seconds']:.0f} s",
    ]


TABLE_HEADER = ["run", "final acc", "best acc", "params", "fossilized", "pruned", "train time"]


def run_demo(args: argparse.Namespace) -> int:
    """Static vs heuristic growth, side by side."""
    task = _pick_task(args.data_dir)
    spec = get_task(task)
    parent = args.out if args.out is not None else Path("runs")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    directories = {}
    for mode in ("static", "heuristic"):
        config = RunConfig(
            mode=mode,
            task=task,
            seed=args.seed,
            epochs=spec.epochs if args.epochs is None else args.epochs,
            batch_size=spec.batch_size,
            batches_per_epoch=spec.batches_per_epoch,
            val_samples=spec.val_samples,
            lr=spec.lr,
            seed_lr=spec.lr,
            slots=("early", "mid", "late"),
            data_dir=None if args.data_dir is None else str(args.data_dir),
            download=True,
        )
        out = parent / f"demo-{stamp}-{task}-{mode}"
        try:
            directories[mode] = execute(config, out, None, label=f"{mode:>9}")
        except Interrupted as stop:
            print(f"\ninterrupted; partial run in {stop.directory}", file=sys.stderr)
            return EXIT_INTERRUPTED
    summaries = {
        m: json.loads((d / "summary.json").read_text(encoding="utf-8"))
        for m, d in directories.items()
    }
    print(f"\nesper demo — {task}: {spec.description}; seed {args.seed}\n")
    print(format_table(TABLE_HEADER, [_row(m, s) for m, s in summaries.items()]))
    print()
    for mode, directory in directories.items():
        print(f"{mode:>9} run: {directory}")
    from esper.cli.report import write_run_report  # matplotlib is loaded only now

    report = write_run_report(directories["heuristic"], directories["static"])
    print(f"\nreport: {report}")
    return 0
