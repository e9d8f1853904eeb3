"""Argument parsing and dispatch for the ``esper`` command."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from esper.nissa.log import EventLogError, RunDirectoryError
from esper.nissa.views import VIEW_NAMES
from esper.tasks import TASKS

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


N = TypeVar("N", int, float)

VIEW_COMMANDS = {
    "runs": ("esper.cli.runs", "run_runs"),
    "report": ("esper.cli.report", "run_report"),
    "tui": ("esper.cli.tui", "run_tui"),
    "dashboard": ("esper.cli.dashboard", "run_dashboard"),
}
"""Commands that look at recorded runs: handler module and function, imported on use."""

RUN_COMMANDS = ("heuristic", "static", "eval", "ppo")
"""Commands that train and write a run directory (they take --telemetry, --tensorboard, --tui)."""


class UserError(Exception):
    """An expected failure caused by input: reported as one line, exit code 2, no traceback."""


def _number(cast: Callable[[str], N], what: str, ok: Callable[[N], bool]) -> Callable[[str], N]:
    """An argparse type: ``cast`` the text and require ``ok``, else say what was expected."""

    def parse(text: str) -> N:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _number(int, "a positive integer", lambda v: v >= 1)
_non_negative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
_positive_float = _number(float, "a finite positive number", lambda v: 0 < v < math.inf)
_port = _number(int, "a TCP port in 1..65535", lambda v: 1 <= v <= 65535)


def _add_run_arguments(p: argparse.ArgumentParser, growth: bool) -> None:
    p.add_argument("--task", choices=sorted(TASKS), help="task preset (host + data + defaults)")
    p.add_argument("--epochs", type=_positive_int, help="episode length (default: the task's)")
    p.add_argument("--seed", type=_non_negative_int, help="run seed (default 0)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<task>-<mode>-<time>)")
    p.add_argument("--data-dir", type=Path, help="where the dataset (or text file) lives")
    p.add_argument("--batch-size", type=_positive_int, help="training batch size")
    p.add_argument(
        "--batches-per-epoch",
        type=_positive_int,
        help="training batches per step (default: full pass)",
    )
    p.add_argument(
        "--val-samples", type=_positive_int, help="validate on this many samples (default: all)"
    )
    p.add_argument("--lr", type=_positive_float, help="host learning rate (AdamW)")
    p.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    if growth:
        p.add_argument(
            "--slots",
            nargs="+",
            metavar="SLOT",
            help="slots the controller may grow in (default: early mid late)",
        )
        p.add_argument("--seed-lr", type=_positive_float, help="seed learning rate (default: --lr)")
        p.add_argument(
            "--shapley",
            action="store_true",
            help="also measure exact Shapley values of blended seeds every epoch (2^n forwards)",
        )
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run in DIR")
    _add_telemetry_arguments(p, with_level=True)


def _add_telemetry_arguments(p: argparse.ArgumentParser, with_level: bool) -> None:
    if with_level:
        p.add_argument(
            "--telemetry", choices=("minimal", "normal", "debug"), help="telemetry level"
        )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log to TensorBoard (needs the esper[tensorboard] extra)",
    )
    p.add_argument("--tui", action="store_true", help="watch the run in the terminal UI")


def _add_ppo_parser(sub: Any) -> None:
    """The ``esper ppo`` subcommand's arguments."""
    from esper.simic.config import PRESETS
    from esper.simic.rewards import CONTRIBUTION_MODES, REWARD_FAMILIES

    p = sub.add_parser("ppo", help="train a growth policy with PPO (Simic)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="config preset (default: default)")
    p.add_argument("--config-json", type=Path, help="strict JSON overrides (unknown keys fail)")
    p.add_argument("--task", choices=sorted(TASKS), help="task preset of every environment")
    p.add_argument("--envs", type=_positive_int, help="environments stepped in lockstep")
    p.add_argument("--episode-length", type=_positive_int, help="host epochs per episode")
    p.add_argument("--rounds", type=_positive_int, help="rounds (one episode per env each)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<task>-ppo-<time>)")
    p.add_argument("--seed", type=_non_negative_int, help="run seed (env i uses seed + i)")
    p.add_argument(
        "--devices", nargs="+", metavar="DEV", help="cpu | cuda:0 cuda:1 … (round-robin)"
    )
    p.add_argument("--amp", action="store_true", help="mixed-precision PPO updates (CUDA)")
    p.add_argument("--reward-family", choices=REWARD_FAMILIES, help="reward family")
    p.add_argument("--reward-mode", choices=CONTRIBUTION_MODES, help="contribution reward mode")
    p.add_argument("--telemetry", choices=("minimal", "normal", "debug"), help="telemetry level")
    p.add_argument("--data-dir", type=Path, help="where the dataset lives")
    p.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run")
    _add_telemetry_arguments(p, with_level=False)


def _add_view_parsers(sub: Any) -> None:
    """``esper runs``, ``report``, ``tui`` and ``dashboard``: looking at runs (Nissa, Karn)."""
    runs = sub.add_parser("runs", help="list, show, compare and query recorded runs")
    verbs = runs.add_subparsers(dest="runs_command", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="one line per run in DIR")
    listing.add_argument("dir", nargs="?", type=Path, default=Path("runs"), help="default: runs/")
    show = verbs.add_parser("show", help="a run's configuration, summary and event counts")
    show.add_argument("run", type=Path, help="run directory")
    compare = verbs.add_parser("compare", help="final metrics of several runs side by side")
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    query = verbs.add_parser(
        "query", help="SQL (DuckDB) over event logs; views: " + ", ".join(VIEW_NAMES)
    )
    query.add_argument("sql", help='e.g. "SELECT run, max(val_accuracy) FROM epochs GROUP BY run"')
    query.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        default=[Path("runs")],
        metavar="PATH",
        help="run directories, or directories of runs (default: runs/)",
    )
    query.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="output format"
    )
    report = sub.add_parser("report", help="write report.html and PNG plots for a run")
    report.add_argument("run", type=Path, help="run directory")
    report.add_argument("--baseline", type=Path, metavar="RUN", help="run to compare against")
    report.add_argument("--out", type=Path, help="output directory (default: RUN/report)")
    tui = sub.add_parser("tui", help="terminal UI: follow a live run or replay a finished one")
    tui.add_argument("run", type=Path, help="run directory")
    dashboard = sub.add_parser("dashboard", help="live web dashboard of the runs in RUNS_DIR")
    dashboard.add_argument(
        "runs_dir", nargs="?", type=Path, default=Path("runs"), help="default: runs/"
    )
    dashboard.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esper",
        description="Esper: grow neural networks while they train; compare with static ones.",
        epilog="tasks: " + "; ".join(f"{t.name} ({t.description})" for t in TASKS.values()),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    growth = sub.add_parser("heuristic", help="grow a network with the heuristic controller")
    _add_run_arguments(growth, growth=True)
    static = sub.add_parser("static", help="train the same host without growth (the control)")
    _add_run_arguments(static, growth=False)
    evaluate = sub.add_parser(
        "eval", help="grow a network with a PPO-trained policy (same outputs as heuristic)"
    )
    evaluate.add_argument(
        "--policy", type=Path, help="PPO checkpoint (checkpoints/ppo.pt) or PPO run directory"
    )
    _add_run_arguments(evaluate, growth=True)
    _add_ppo_parser(sub)
    _add_view_parsers(sub)
    demo = sub.add_parser(
        "demo", help="static vs heuristic growth on fashion_mnist_impaired, side by side"
    )
    demo.add_argument("--epochs", type=_positive_int, help="epochs per run (default: the task's)")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="run seed (default 0)")
    demo.add_argument("--out", type=Path, help="parent directory of the two runs (default: runs/)")
    demo.add_argument("--data-dir", type=Path, help="where Fashion-MNIST lives")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``esper`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in VIEW_COMMANDS:
            module, function = VIEW_COMMANDS[args.command]
            handler: Callable[[argparse.Namespace], int] = getattr(
                importlib.import_module(module), function
            )
            return handler(args)
        if args.command == "eval" and args.policy is None and args.resume is None:
            raise UserError("eval needs --policy CHECKPOINT (or --resume DIR)")
        if args.command in RUN_COMMANDS and args.tui:
            from esper.cli.tui import run_with_tui

            return run_with_tui(args, list(sys.argv[1:] if argv is None else argv))
        if args.command == "demo":
            from esper.cli.demo import run_demo

            return run_demo(args)
        if args.command == "ppo":
            from esper.cli.ppo import run_ppo

            return run_ppo(args)
        from esper.cli.session import run_command

        return run_command(args)
    except (UserError, RunDirectoryError, EventLogError) as err:
        print(f"esper: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
