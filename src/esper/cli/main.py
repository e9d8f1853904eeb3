"""Argument parsing and dispatch for the ``esper`` command."""

from __future__ import annotations

import argparse
import errno
import importlib
import io
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import esper
from esper.cli.entry import loading
from esper.cli.knowledge import add_knowledge_parser
from esper.cli.runs import TABLE_ROWS, path_arg
from esper.leyline.config import MAX_COUNT, MAX_SEED, PPO_RESUME_SETTINGS, UserError, quoted
from esper.leyline.files import WriteError, is_disk_full
from esper.leyline.net import MAX_PORT
from esper.leyline.trials import DEFAULT_REPS, MIN_VERDICT_REPS, REPS_RANGE
from esper.nissa.log import EventLogError
from esper.nissa.record import RUNS_DIR, RunRecordError
from esper.nissa.views import VIEW_NAMES
from esper.tasks import TASKS

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

PPO_ON_RESUME = tuple(
    f"--{key.replace('_', '-')}" if section == "runtime" else f"--{section}.{key}"
    for section, key in PPO_RESUME_SETTINGS
)  # the runtime section's flags go without its prefix (``TrainingConfig.runtime``)
"""The flags ``esper ppo --resume RUN`` takes (``PPO_RESUME_SETTINGS``)."""

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a command whose reader closed the pipe."""

PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS})
"""Errors of a path, not of Esper, shown as one line naming it: a name the file system cannot
hold (given anywhere: a run, ``--out``, a study file; it fails at the first stat, before anything
is written), and a file or directory without the permission asked, or on a read-only file
system (a run stopped by one resumes once the permission is back)."""

PRINTING_COMMANDS = frozenset({"runs", "knowledge"})
"""Commands whose product is what they print: a write that found no room and names no file
is their output's."""

N = TypeVar("N", int, float)

VIEW_COMMANDS = {
    "runs": ("esper.cli.runs", "run_runs"),
    "report": ("esper.cli.report", "run_report"),
    "tui": ("esper.cli.tui", "run_tui"),
    "dashboard": ("esper.cli.dashboard", "run_dashboard"),
    "study": ("esper.cli.study", "run_study"),
    "knowledge": ("esper.cli.knowledge", "run_knowledge"),
}
"""Commands that look at recorded runs: handler module and function, imported on use."""

OWN_LOOPS = frozenset({"tui", "dashboard"})
"""View commands whose event loop (Textual's, the HTTP server's) keeps the signals' defaults."""

RUN_COMMANDS = {
    "heuristic": "grow a network with the heuristic controller",
    "static": "train the same host without growth (the control)",
    "eval": "grow a network with a PPO-trained policy (same outputs as heuristic)",
    "random": "grow a network by random valid actions (a baseline arm)",
    "periodic": "germinate every --periodic.period epochs, fossilize the seeds that pass G5 and "
    "prune those that fail it (a baseline)",
    "ppo": "train a growth policy with PPO (Simic)",
}
"""Commands that train and write a run directory; each parses its own flags."""


def _number(cast: Callable[[str], N], what: str, ok: Callable[[N], bool]) -> Callable[[str], N]:
    """An argparse type: ``cast`` the text and require ``ok``, else say what was expected."""

    def parse(text: str) -> N:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {quoted(text)}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {quoted(value)}")
        return value

    return parse


_epochs = _number(int, f"an integer in [1, {MAX_COUNT}]", lambda v: 1 <= v <= MAX_COUNT)
_seed = _number(int, f"an integer in [0, {MAX_SEED}]", lambda v: 0 <= v <= MAX_SEED)
_reps = _number(
    int, "an integer in [{}, {}]".format(*REPS_RANGE), lambda v: REPS_RANGE[0] <= v <= REPS_RANGE[1]
)


_port = _number(int, f"a TCP port in 1..{MAX_PORT}", lambda v: 1 <= v <= MAX_PORT)


def _add_query_parser(verbs: Any) -> None:
    """``esper runs query``."""
    query = verbs.add_parser(
        "query",
        help="SQL (DuckDB) over event logs; views: " + ", ".join(VIEW_NAMES),
        usage="esper runs query SQL [--runs PATH [PATH ...]] [--format {table,csv,json}]",
        missing="a --runs before it takes every word after it: give the SQL first, or end the "
        "paths with --",
    )
    query.add_argument("sql", help='e.g. "SELECT run, max(val_accuracy) FROM epochs GROUP BY run"')
    query.add_argument(
        "--runs",
        nargs="+",
        type=path_arg,
        default=[RUNS_DIR],
        metavar="PATH",
        help="run directories, or directories of runs (default: runs/)",
    )
    query.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help=f"output format (table: at most the first {TABLE_ROWS} rows, and the count; csv "
        "and json: every row)",
    )


def _add_view_parsers(sub: Any) -> None:
    """``esper runs``, ``report``, ``tui`` and ``dashboard``: looking at runs (Nissa, Karn)."""
    runs = sub.add_parser("runs", help="list, show, compare and query recorded runs")
    verbs = runs.add_subparsers(dest="runs_command", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="one line per run in DIR")
    listing.add_argument("dir", nargs="?", type=path_arg, default=RUNS_DIR, help="default: runs/")
    show = verbs.add_parser("show", help="a run's configuration, summary and event counts")
    show.add_argument("run", type=path_arg, help="run directory")
    compare = verbs.add_parser("compare", help="final metrics of several runs side by side")
    compare.add_argument("runs", nargs="+", type=path_arg, metavar="RUN", help="run directories")
    _add_query_parser(verbs)
    report = sub.add_parser(
        "report", help="write report.html with plots for a run, or for a study and its arms"
    )
    report.add_argument(
        "run", type=path_arg, metavar="PATH", help="run directory, or study directory (study.json)"
    )
    report.add_argument("--baseline", type=path_arg, metavar="RUN", help="run to compare against")
    report.add_argument(
        "--out",
        type=path_arg,
        help="output directory (default: RUN/report, or the study directory)",
    )
    report.add_argument(
        "--reps",
        type=_reps,
        help="study reports: bootstrap resamples per interval (default: the study's, as in its "
        f"results.md; {DEFAULT_REPS} for results an older Esper wrote; fewer: sooner, and below "
        f"{MIN_VERDICT_REPS:,} no verdict)",
    )
    tui = sub.add_parser("tui", help="terminal UI: follow a live run or replay a finished one")
    tui.add_argument("run", type=path_arg, help="run directory")
    dashboard = sub.add_parser("dashboard", help="live web dashboard of the runs in RUNS_DIR")
    dashboard.add_argument(
        "runs_dir", nargs="?", type=path_arg, default=RUNS_DIR, help="default: runs/"
    )
    dashboard.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine)"
    )


ROOT_PROG = "esper"
"""The top-level parser's name; every other ``_Parser`` is a subcommand's."""


_MANY = (
    argparse._AppendAction,
    argparse._AppendConstAction,
    argparse._CountAction,
    argparse._HelpAction,
    argparse._VersionAction,
)
"""The argparse actions an option may repeat for (the others keep its last value)."""
_ARGUMENT = re.compile(r"^argument ([^:\s]+): ")
_INVALID_CHOICE = re.compile(r"invalid choice: ('.*'|\".*\") \(choose from (.*)\)$")


def one_of(accepted: str, value: str) -> str:
    """A refused choice as every flag error reads it, from the choices as argparse and tyro
    list them (``'csv', 'json'``): "expected one of csv, json, got 'xml'"."""
    words = ", ".join(word.strip().strip("'") for word in accepted.split(","))
    return f"expected one of {words}, got {value}"


class _Parser(argparse.ArgumentParser):
    """argparse in Esper's error style: a bad argument is one line and exit 2, without the usage
    block (``--help`` shows it); its subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, missing: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.missing = missing  # said when a required argument is missing

    def error(self, message: str) -> NoReturn:
        """One line as the run commands' flag errors read: "--format: expected one of csv,
        json, got 'xml'" for argparse's "argument --format: invalid choice: 'xml' (choose
        from 'csv', 'json')"."""
        missing = f"; {self.missing}" * (bool(self.missing) and "are required" in message)
        message = _ARGUMENT.sub(r"\1: ", message, count=1)
        choice = _INVALID_CHOICE.search(message)
        if choice is not None:
            value, accepted = choice.groups()
            message = f"{message[: choice.start()]}{one_of(accepted, value)}"
        raise UserError(f"{message}{missing} (see {self.prog} --help)")

    def parse_known_args(  # type: ignore[override]  # typeshed: overloads
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """A subcommand's parser refuses what it does not know itself, naming its own help
        (argparse left it to ``esper``'s, which said "see esper --help"), and an option of its
        own given twice (argparse kept the last: ``esper demo --seed 1 --seed 2`` ran seed 2,
        ``runs query --runs a --runs b`` read b alone)."""
        self._refuse_repeats(list(sys.argv[1:] if args is None else args))
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self.prog != ROOT_PROG:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def _refuse_repeats(self, args: list[str]) -> None:
        """An option of this parser that keeps one value, given more than once (as ``--x``
        and ``--no-x`` too), is refused, as the run commands' flags are."""
        for action in self._actions:
            if not action.option_strings or isinstance(action, _MANY):
                continue
            given = [a for a in args if a.partition("=")[0] in action.option_strings]
            if len(given) > 1:
                names = list(dict.fromkeys(a.partition("=")[0] for a in given))
                if len(names) == 1:
                    self.error(f"{names[0]} is given {len(given)} times; give it once")
                self.error(f"{' and '.join(names)} are both given; give one")

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        """The help, its write failures raised (argparse drops them: ``--help > /dev/full``
        exited 0 with nothing written)."""
        (file or sys.stdout).write(self.format_help())


def build_parser() -> argparse.ArgumentParser:
    """The parser of the view commands and ``demo``; the run commands parse their own flags
    (generated from their config dataclasses) and are listed here for ``esper --help``."""
    parser = _Parser(
        prog=ROOT_PROG,
        description="Esper: grow neural networks while they train; compare with static ones.",
        epilog="tasks: "
        + "; ".join(f"{t.name} ({t.description})" for t in TASKS.values())
        + ". Each run command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"esper {esper.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, help_text in RUN_COMMANDS.items():
        sub.add_parser(command, help=help_text, add_help=False)
    _add_view_parsers(sub)
    add_knowledge_parser(sub)
    study = sub.add_parser(
        "study", help="run a study (tasks x arms x seeds) on Ray; run again to resume"
    )
    study.add_argument("file", type=path_arg, help="the study's TOML file")
    study.add_argument(
        "--address", metavar="HOST:PORT", help="an existing Ray cluster (default: local Ray)"
    )
    study.add_argument(
        "--dry-run",
        action="store_true",
        help="list the trials and their cost (a few static-host epochs per task timed here, on a "
        "CPU); start no trial",
    )
    demo = sub.add_parser(
        "demo", help="static vs heuristic growth on fashion_mnist_impaired, side by side"
    )
    demo.add_argument("--epochs", type=_epochs, help="epochs per run (default: the task's)")
    demo.add_argument("--seed", type=_seed, default=0, help="run seed (default 0)")
    demo.add_argument(
        "--out", type=path_arg, help="parent directory of the two runs (default: runs/)"
    )
    demo.add_argument("--data-dir", type=path_arg, help="where Fashion-MNIST lives")
    return parser


def run_command(command: str, argv: list[str]) -> int:
    """``esper <run command> ARGS``: split off the command's own options, then run (in a child
    process watched by the terminal UI with ``--tui``)."""
    with loading():  # torch
        from esper.cli.config import split_options
        from esper.nissa.stopping import interrupt_on_termination

    interrupt_on_termination()
    options, rest = split_options(argv, PPO_ON_RESUME if command == "ppo" else ())
    if options.tui:
        from esper.cli.tui import run_with_tui

        return run_with_tui(command, options, rest)
    if command == "ppo":
        from esper.cli.ppo import run_ppo

        return run_ppo(rest, options)
    from esper.cli.growth import run_growth

    return run_growth(command, rest, options)


MAX_ERROR_LINE = 1000
"""The longest error line printed; a longer one is cut in the middle."""

_LONG_WORD = re.compile(r"\S{300,}")
"""A word of an error line that is cut: longer than any path a user would type."""


def one_line(message: str) -> str:
    """``message`` as the one line an error gets: a library's message that runs over several
    lines (torch's state-dict mismatches, which name the tensors on the lines after the first)
    has them joined with "; ", so no detail is lost. A word of ``_LONG_WORD``'s length is cut,
    and a line over ``MAX_ERROR_LINE`` characters keeps its start and its end."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = "; ".join(lines) if len(lines) > 1 else message
    # a value of thousands of characters (a pasted file as --task, a 5,000-character name);
    # the line's end is where the accepted values are named
    text = _LONG_WORD.sub(lambda m: f"{m[0][:100]}... ({len(m[0])} characters)", text)
    if len(text) <= MAX_ERROR_LINE:
        return text
    head, tail = MAX_ERROR_LINE * 3 // 5, MAX_ERROR_LINE // 3
    return f"{text[:head]} ... ({len(text) - head - tail} characters cut) ... {text[-tail:]}"


class _StderrWarnings(logging.Handler):
    """Shows the library's log records (``esper.*`` loggers; STYLE: library code does not
    print) on the stderr of the moment as ``warning: message``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _show_library_warnings() -> None:
    """Attach ``_StderrWarnings`` to the ``esper`` logger once per process."""
    logger = logging.getLogger("esper")
    if not any(isinstance(h, _StderrWarnings) for h in logger.handlers):
        logger.addHandler(_StderrWarnings(logging.WARNING))


def _terminal_hung_up() -> bool:
    """Whether stdout or stderr was a terminal that hung up (now pointed at ``/dev/null``)."""
    from esper.nissa.console import detach_from_hung_up_terminal

    return detach_from_hung_up_terminal()


def _command(args_list: list[str]) -> int:
    """Run the command ``args_list`` names; its exit status."""
    if args_list and args_list[0] in RUN_COMMANDS:
        return run_command(args_list[0], args_list[1:])
    args = build_parser().parse_args(args_list)
    if args.command in VIEW_COMMANDS:
        module, function = VIEW_COMMANDS[args.command]
        with loading():
            imported = importlib.import_module(module)
            from esper.nissa.stopping import interrupt_on_termination
        if args.command not in OWN_LOOPS:
            interrupt_on_termination()  # a query's log copy is removed, a study's trials cancelled
        handler: Callable[[argparse.Namespace], int] = getattr(imported, function)
        return handler(args)
    with loading():
        from esper.cli.demo import run_demo
        from esper.nissa.stopping import interrupt_on_termination

    interrupt_on_termination()  # SIGTERM, SIGHUP: as Ctrl-C, from the data search on
    return run_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``esper`` console script."""
    if sys.stdout is None:  # started with its stdout closed: what it prints goes nowhere
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (tyro reads .isatty)
    elif isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        # PYTHONIOENCODING=ascii: a table's "—" or a run named "é" was a UnicodeEncodeError
        # traceback; written escaped instead, as Python writes stderr
        sys.stdout.reconfigure(errors="backslashreplace")
    _show_library_warnings()
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            status = _command(args_list)
        except SystemExit:  # --help's (argparse's): its text is flushed, and a failure told, here
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # the output's last lines: a failure to write them is told here
        return status
    except (UserError, RunRecordError, EventLogError, WriteError) as err:
        print(f"esper: error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:  # a signal during start-up or loading (a Stop names the
        # run directory it had just made, with how to continue it; else nothing was written)
        print(f"\nesper: interrupted{f'; {err}' if str(err) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `esper ... --help | head`: the reader left; nothing to report
        # Point stdout at /dev/null so the interpreter's final flush cannot fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:
        if err.errno == errno.EIO and _terminal_hung_up():  # the SSH session ended: a run
            return EXIT_INTERRUPTED  # was stopped by its SIGHUP; nobody is there to tell
        printing = bool(args_list) and args_list[0] in PRINTING_COMMANDS
        printing = printing or bool({"-h", "--help"} & set(args_list))  # its text is the output
        no_room = is_disk_full(err) or err.errno == errno.EFBIG  # EFBIG: at its size limit
        if printing and no_room and not err.filename:
            # the output (`esper knowledge export > /dev/full` was a traceback, exit 1): what
            # these commands write to no named file (their own files name themselves)
            print(f"esper: error: cannot write the output: {err.strerror}", file=sys.stderr)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit
            return EXIT_BAD_INPUT
        if err.errno not in PATH_ERRNOS:
            raise
        named = f"{err.strerror}: {err.filename!r}" if err.filename else str(err.strerror)
        print(f"esper: error: {one_line(named)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
