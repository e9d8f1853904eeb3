"""The run commands' command lines: flags generated from the config dataclasses (tyro).

``esper static|heuristic|eval`` configure a ``GrowthRun``, ``esper ppo`` a ``TrainingConfig``.
Every field is a flag whose ``--help`` shows its docstring and default. Layers, each overriding
the one before: the defaults (for ``eval``: the environment settings of the policy's PPO run;
for ``ppo``: ``--preset``), ``--config FILE`` (TOML or JSON; unknown keys fail), then the flags.
``--out``, ``--resume``, ``--tui`` and ``--config`` belong to the command, not the run, and are
read before the rest. A bad value is one line naming it and what is accepted, exit 2.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import itertools
import re
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import tyro

from esper.cli.main import RUN_COMMANDS, one_of
from esper.leyline.config import (
    MLFLOW_PASSWORD,
    HostTraining,
    TelemetrySettings,
    UserError,
    config_text,
    error_text,
    override,
    quoted,
    read_config_file,
)
from esper.leyline.files import absolute_path, expanded, shell_path
from esper.leyline.net import refuse_password
from esper.study.checks import check_outside_studies
from esper.study.growth import GrowthRun, check_mode

C = TypeVar("C")


@dataclass(frozen=True)
class RunOptions:
    """What a run command takes besides its configuration (``OPTIONS_HELP`` says what each
    does; ``--help`` shows it)."""

    out: Path | None = None
    resume: Path | None = None
    config: Path | None = None
    tui: bool = False


_OPTION_FLAGS = ("--out", "--resume", "--config", "--tui", "--no-tui")

OPTIONS_HELP = """command options (read first; not part of the saved configuration):
  --out DIR       run directory (default: runs/<task>-<mode>-<time>)
  --resume DIR    continue the interrupted run in DIR as it was configured (no setting
                  but esper ppo's --ppo.rounds N, which also trains a completed run on, and
                  --ray-address HOST:PORT, another cluster for its workers; --tui is fine)
  --config FILE   settings from a TOML (.toml) or JSON file, keys as in config.json; unknown
                  keys fail; the flags below override it
  --tui           watch the run in the terminal UI"""


def split_options(argv: list[str], on_resume: tuple[str, ...] = ()) -> tuple[RunOptions, list[str]]:
    """Take the command's own flags (``RunOptions``) out of ``argv``; the rest is the config.

    ``on_resume``: the configuration flags ``--resume`` takes (``esper ppo``'s
    ``PPO_ON_RESUME``); any other is refused.

    Raises:
        UserError: a flag without its value, or ``--resume`` with other configuration flags.
    """
    refuse_repeats(argv, _OPTION_FLAGS)
    values: dict[str, Any] = {}
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        flag, eq, value = item.partition("=")
        if flag not in _OPTION_FLAGS:
            rest.append(item)
        elif flag in ("--tui", "--no-tui"):
            if eq:  # "--tui=no" turned the TUI on
                raise UserError(f"{flag} takes no value, got {item!r}; use --tui or --no-tui")
            values["tui"] = flag == "--tui"
        else:
            if not eq:
                value = next(items, "")
            if not value or value.startswith("--"):
                raise UserError(f"{flag} needs a path")
            try:  # "--out=~/x" (the shell expands only a word that begins with ~) made ./~/x
                values[flag[2:]] = expanded(value)
            except ValueError as err:
                raise UserError(f"{flag} {err}") from None
    options = RunOptions(**values)
    if options.out is not None:
        check_outside_studies(options.out)
    if options.resume is not None:
        taken = {i + 1 for i, a in enumerate(rest) if a in on_resume}  # "--ppo.rounds -5"
        given = [
            a.partition("=")[0] for i, a in enumerate(rest) if a.startswith("-") and i not in taken
        ]
        given += [  # a word no flag takes ("--resume RUN garbage" resumed without a word)
            a
            for i, a in enumerate(rest)
            if not a.startswith("-") and i not in taken and (i == 0 or rest[i - 1][:1] != "-")
        ]
        given = [flag for flag in given if flag not in on_resume]
        given += ["--out"] * (options.out is not None) + ["--config"] * (options.config is not None)
        if given:
            but = f" (it takes {', '.join(on_resume)} only)" if on_resume else ""
            raise UserError(f"--resume continues a run as configured{but}; drop {', '.join(given)}")
    return options, rest


def refuse_repeats(argv: list[str], flags: tuple[str, ...]) -> None:
    """Refuse any of ``flags`` (those read before the flags are parsed) given twice: which one
    counts would be the reader's accident (``--policy A --policy B`` ran A).

    Raises:
        UserError: naming the first repeated flag.
    """
    seen = [flag for flag, _, _ in (item.partition("=") for item in argv) if flag in flags]
    repeated = [flag for flag in seen if seen.count(flag) > 1]
    if repeated:
        raise UserError(f"{repeated[0]} is given {seen.count(repeated[0])} times; give it once")


def _refuse_repeated_flags(argv: list[str]) -> None:
    """Refuse a flag given twice, spelt with ``-`` or ``_``, or as ``--x`` and ``--no-x``:
    tyro would take the last silently (``--epochs 1 --epochs 2`` ran 2 epochs).

    Raises:
        UserError: naming the flag, or the two spellings that contradict each other.
    """
    spelt: dict[str, list[str]] = {}
    for item in argv:
        given = item.partition("=")[0]
        if not given.startswith("--") or given == "--":
            continue
        head, dot, last = given[2:].replace("_", "-").rpartition(".")
        spelt.setdefault(f"{head}{dot}{last.removeprefix('no-')}", []).append(given)
    repeated = next((g for g in spelt.values() if len(g) > 1), None)
    if repeated is None:
        return
    if len(set(repeated)) == 1:
        raise UserError(f"{repeated[0]} is given {len(repeated)} times; give it once")
    raise UserError(f"{' and '.join(dict.fromkeys(repeated))} are both given; give one")


def layered(base: C, options: RunOptions) -> C:
    """``base`` with ``--config FILE`` applied.

    Raises:
        UserError: for an unreadable file, an unknown key or a bad value.
    """
    if options.config is None:
        return base
    data = config_file(options.config)
    try:
        result: C = override(base, data)
    except ValueError as err:
        raise UserError(f"--config {str(options.config)!r}: {err}") from err
    return result


def config_file(path: Path) -> dict[str, Any]:
    """The settings of ``--config FILE`` (``read_config_file``).

    Raises:
        UserError: the file cannot be read or holds no table (its message names it, once).
    """
    try:
        return read_config_file(path)
    except ValueError as err:
        raise UserError(str(err)) from err


_BOX = re.compile(r"[│╭╮╰╯─]+")
_ASCII_RULE = re.compile(r"-{3,}")
"""A rule between the report's paragraphs where stderr cannot encode box drawing (ASCII)."""


def _refusal(stop: SystemExit) -> BaseException | None:
    """The ``ValueError`` (or ``TypeError``) a flag's parsing or a dataclass's check raised
    behind tyro's exit, if any: tyro exits while handling it, so it is in the context chain."""
    seen = stop.__context__
    while seen is not None and not isinstance(seen, ValueError | TypeError):
        seen = seen.__context__
    return seen


_CHOICE = re.compile(r"invalid choice ('.*') for argument '(\S+)'\. Expected one of \((.*)\)")
_SIMILAR = re.compile(r"Arguments similar to \S+:|Perhaps you meant:")
_CONVERSION = re.compile(
    r"(?:invalid literal for (int)\(\) with base 10|could not convert string to (float)): (.*)"
)
"""Python's refusal to read a flag's value as a number: the flag's type and the value."""
"""The heading of a block of flags tyro found close to an unknown one."""


def _paragraph(lines: list[str], start: int) -> list[str]:
    """``lines[start]`` and the lines after it up to the next empty one (a rule of the box)."""
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def _unknown_flags(
    lines: list[str], argv: Sequence[str], switches: Callable[[], frozenset[str]]
) -> str | None:
    """tyro's report of unrecognized arguments as one line naming the unknown flags and the
    flags it found close to them; None for another report. tyro lists a flag's value as
    another option ("Unrecognized options: --workers, 2") and wraps the list at 80 columns,
    breaking long words: the list is read with its line breaks removed, split at its commas,
    and only ``--`` words are flags (a value may be ``-0.5``)."""
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("Unrecognized options:")), None
    )
    if start is None:
        return None
    paragraph = _paragraph(lines, start)
    if paragraph[0] == "Unrecognized options:":  # beside a missing option: one per line
        items = [item for line in paragraph[1:] for item in line.split()]
    else:  # a wrapped list, split at its commas
        items = "".join("".join(paragraph).removeprefix("Unrecognized options:").split()).split(",")
    listed = ",".join(items)
    flags = [word for word in items if word.startswith("--")]
    if not flags:  # a value after a switch, which takes none: "--shapley yes"
        # The flag at the value's last place (``--amp=2``) or before it: it took no value,
        # so it is a switch (a flag that takes one, or a list, would have taken it).
        switch = _given_to(argv, listed, switches)
        if switch.startswith("--") and "=" not in switch:
            head, dot, name = switch[2:].rpartition(".")
            on = f"--{head}{dot}{name.removeprefix('no-')}"
            off = f"--{head}{dot}no-{name.removeprefix('no-')}"
            return f"{switch} takes no value, got {quoted(listed)} (a switch: {on} or {off})"
        flags = [listed]
    similar: list[str] = []
    for i, line in enumerate(lines):
        if _SIMILAR.fullmatch(line):
            names = [n.split()[0] for n in _paragraph(lines, i + 1) if n.startswith("--")]
            similar.extend(n for n in names[:3] if n not in similar)
    missing = _missing_flags(lines)
    similar += [m for m in missing if any(difflib.get_close_matches(f, [m]) for f in flags)]
    plural = "s" if len(flags) > 1 else ""
    hint = f" (similar: {', '.join(similar)})" if similar else ""
    needs = f"; {', '.join(missing)} is required" if missing else ""
    return f"unknown flag{plural} {', '.join(flags)}{hint}{needs}; --help lists every flag"


def _missing(lines: list[str]) -> list[str]:
    """The paragraph of tyro's report under ``Missing from …:``: each missing flag's ``--flag
    TYPE`` line and its description ([] when none is missing)."""
    start = next((i for i, line in enumerate(lines) if line.startswith("Missing from")), None)
    return [] if start is None else _paragraph(lines, start + 1)


def _missing_flags(lines: list[str]) -> list[str]:
    """The required flags tyro's report says are missing (``_missing``'s ``--flag`` lines)."""
    return [line.split()[0] for line in _missing(lines) if line.startswith("--")]


def _given_to(argv: Sequence[str], value: str, switches: Callable[[], frozenset[str]]) -> str:
    """The flag the unrecognized ``value`` in ``argv`` was given to, as ``--flag=value`` or as
    the argument before it: of several, the last that is a switch (``switches()``: a flag that
    takes a value took it), else the last ("" if none)."""
    given = []
    for before, arg in itertools.pairwise(["", *argv]):
        name, eq, text = arg.partition("=")
        if eq and text == value and name.startswith("--"):
            given.append(name)
        elif arg == value and "=" not in before:
            given.append(before)
    if len(given) > 1:
        known = switches()
        return next((flag for flag in reversed(given) if flag in known), given[-1])
    return given[-1] if given else ""


def _switches(cls: type, prog: str, default: Any) -> frozenset[str]:
    """The switches of ``cls``'s flags (both forms: ``--shapley``, ``--no-shapley``), read from
    its ``--help`` (for an error message only: it takes about 0.1 s)."""
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), contextlib.suppress(SystemExit):
        tyro.cli(cls, args=["--help"], prog=prog, default=default)
    pairs = re.findall(r"(--[\w.-]+), (--[\w.-]+)", _BOX.sub(" ", shown.getvalue()))
    return frozenset(flag for pair in pairs for flag in pair)


def _one_line(
    report: str,
    refusal: BaseException | None = None,
    argv: Sequence[str] = (),
    switches: Callable[[], frozenset[str]] = frozenset,
) -> str:
    """tyro's boxed error report as one line: its title and first paragraph.

    The box wraps at 80 columns and breaks a longer word where the line ends, so a value
    shown in the report can come back with spaces in it; given the ``refusal`` behind the
    report, its message is taken whole instead."""
    lines = [_BOX.sub(" ", line).strip() for line in report.splitlines()]
    if not _BOX.search(report):  # drawn in ASCII: its rules are lines of dashes
        lines = ["" if _ASCII_RULE.fullmatch(line) else line for line in lines]
    kept: list[str] = []
    for line in lines:
        if not line and len(kept) > 1:  # the title, then the first paragraph
            break
        if line.startswith("For full helptext"):
            break
        if line:
            kept.append(line)
    unknown = _unknown_flags(lines, argv, switches)
    if unknown is not None:
        return unknown
    missing = _missing_flags(lines)
    if missing:  # "Missing from esper static: --task STR task preset ... (required)"
        described = [line for line in _missing(lines) if not line.startswith("--")]
        about = " ".join(line for line in described if line != "(required)")
        verb = "is" if len(missing) == 1 else "are"
        return f"{', '.join(missing)} {verb} required" + (f": {about}" if about else "")
    text = " ".join(kept[1:] if len(kept) > 1 else kept)
    text = re.sub(r"\s+", " ", text)
    choice = _CHOICE.search(text)
    if choice:  # tyro's "invalid choice 'x' for argument '--f'. Expected one of ('a', 'b')."
        value, flag, accepted = choice.groups()
        given = _value_of(flag, argv)  # whole: the box breaks a long value where it wraps
        return f"{flag}: {one_of(accepted, value if given is None else quoted(given))}"
    parsing = re.match(r"Error parsing (\S+): ", text)
    number = None if refusal is None else _CONVERSION.fullmatch(str(refusal))
    if parsing and number is not None:  # "invalid literal for int() with base 10: 'abc'"
        kind = "INT" if number.group(1) else "FLOAT"
        return f"{parsing.group(1)}: expected {kind}, got {number.group(3)}"
    if parsing and refusal is not None:
        text = f"{parsing.group(0)}{error_text(refusal)}"
    found = re.search(
        r"Error parsing (\S+): no type matching (\S+) could be instantiated from \[(.*?)\]", text
    )
    if found:
        flag, accepted, value = found.groups()
        return f"{flag}: expected {_metavar_words(accepted)}, got {value}"
    if parsing:  # "training: lr must be ...", as a --config file's refusal reads
        where, said = parsing.group(1), text[parsing.end() :]
        # a section, unless the command's own class (not for the user) or the message names it
        named = where[:1].isupper() or said.startswith((f"{where}.", f"{where}:"))
        text = ("" if named else f"{where}: ") + said
    return text or "bad command line"


def _value_of(flag: str, argv: Sequence[str]) -> str | None:
    """The value ``argv`` gives ``flag`` (``--flag VALUE`` or ``--flag=VALUE``; "" for a last
    ``--flag`` without one); None where ``flag`` is not given."""
    for i, item in enumerate(argv):
        name, eq, value = item.partition("=")
        if name == flag:
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return None


def _metavar_words(metavar: str) -> str:
    """tyro's metavar in words: ``{None}|INT`` is "INT or None", ``{a,b}`` "one of a, b"."""
    words = []
    for part in metavar.split("|"):
        choices = part[1:-1].split(",") if part.startswith("{") and part.endswith("}") else []
        if choices and len(choices) > 1:
            words.append(f"one of {', '.join(choices)}")
        else:
            words.append(choices[0] if choices else part)
    return " or ".join(sorted(words, key=lambda word: word == "None"))  # None last


def parse_flags(
    cls: type[C],
    argv: list[str],
    prog: str,
    description: str,
    default: C | None,
    more_options: str = "",
) -> C:
    """``cls`` from the flags in ``argv`` over ``default`` (required fields when None).

    ``--help`` prints ``description``, the command options (and ``more_options``' lines, the
    command's own) and every flag, and exits 0; a bad flag or value raises one line.

    Raises:
        UserError: for an unknown flag, a value of the wrong type, or one the dataclass refuses.
    """
    _refuse_repeated_flags(argv)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(
                cls,
                args=argv,
                prog=prog,
                description=f"{description}\n\n{OPTIONS_HELP}"
                + f"\n{more_options}" * bool(more_options),
                default=tyro.MISSING_NONPROP if default is None else default,
            )
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        given = tyro.MISSING_NONPROP if default is None else default
        switches = functools.partial(_switches, cls, prog, given)
        report = _one_line(captured.getvalue(), _refusal(stop), argv, switches)
        raise UserError(report) from None  # the command was just typed: not named again
    except ValueError as err:  # a dataclass's own check (__post_init__)
        raise UserError(str(err)) from None


EVAL_HELP = (
    ". Needs --policy RUN. Unless given, the training options (task, epochs, budget, learning "
    "rates, slots, width, threads, ...) are the policy's PPO run's, not the defaults shown, "
    "and --seed is the first seed the policy did not train on."
)
"""Added to ``esper eval --help``: the defaults the flags show are the other run commands'."""


def growth_config(
    mode: str,
    argv: list[str],
    options: RunOptions,
    eval_base: HostTraining | None,
    eval_seed: int = 0,
) -> GrowthRun:
    """The ``GrowthRun`` of ``esper static|heuristic|eval``: defaults, ``--config``, flags.

    Args:
        mode: the command.
        argv: its arguments without the ``RunOptions`` flags.
        options: the command's options (``--config``).
        eval_base: for eval, the policy's PPO environment settings (the defaults).
        eval_seed: for eval, the default seed: the first its policy did not train on.

    Raises:
        UserError: for a bad file, flag or value, or a setting the mode does not take.
    """
    default: GrowthRun | None = None
    if mode == "eval" and eval_base is None:  # --help without --policy: the task is the policy's
        eval_base = HostTraining("")
    if eval_base is not None and options.config is not None:  # the file's lr over the
        # policy's: its seeds' lr follows it, as under --lr (they kept the policy's)
        training = config_file(options.config).get("training")
        named = frozenset(training) if isinstance(training, dict) else frozenset()
        eval_base = seed_lr_following(eval_base, named)
    if eval_base is not None or options.config is not None:
        default = layered(GrowthRun(eval_base or HostTraining(""), seed=eval_seed), options)
        training = seed_lr_following(default.training, named_fields(argv))
        default = replace(default, training=training)
    described = RUN_COMMANDS[mode] + (EVAL_HELP if mode == "eval" else "")
    config = parse_flags(GrowthRun, argv, f"esper {mode}", described, default)
    if not config.training.task:
        taken = "; without --task, an eval runs its policy's" if mode == "eval" else ""
        raise UserError(
            f"esper {mode} needs a task: --task NAME (or training.task in --config{taken})"
        )
    check_mode(mode, config, named_fields(argv))
    refuse_passwords(config.telemetry, config.knowledge)
    return config


KNOWLEDGE_PASSWORD = (
    "set the URL in $ESPER_KNOWLEDGE instead (kept out of the run's files), or the password "
    "in PGPASSWORD or ~/.pgpass"
)
"""Where a knowledge store URL's password goes instead of a run's ``knowledge``."""


def refuse_passwords(telemetry: TelemetrySettings, knowledge: str | None = None) -> None:
    """A new run's URLs carry no password (``refuse_password``): it would be kept in
    ``config.json``, printed, and logged to MLflow and TensorBoard. (A resumed run's were
    saved already: it goes on as configured.)

    Raises:
        UserError: naming the setting, the URL with its password hidden, and where it goes.
    """
    try:
        if telemetry.mlflow is not None:
            refuse_password("telemetry: mlflow", telemetry.mlflow, MLFLOW_PASSWORD)
        if knowledge is not None:
            refuse_password("knowledge", knowledge, KNOWLEDGE_PASSWORD)
    except ValueError as err:
        raise UserError(str(err)) from None


def seed_lr_following(training: HostTraining, named: frozenset[str]) -> HostTraining:
    """``training`` of a defaults layer (a ``--config`` file, an eval's policy's run) whose
    seed_lr followed its lr (resolved, they are equal): unset again when the flags give lr but
    not seed_lr, so that it follows the new lr (``seed_lr``: "None: lr"). A run's config.json
    with ``--lr`` kept the old lr for its seeds, and a static run's was refused ("drop
    seed_lr")."""
    if "lr" in named and "seed_lr" not in named and training.seed_lr == training.lr:
        return replace(training, seed_lr=None)
    return training


def absolute_data_dir(training: HostTraining) -> HostTraining:
    """A new run's ``data_dir`` made absolute with ``~`` expanded (``absolute_path``) for its
    ``config.json``: a resume may start in another directory, where the relative path named
    other files of the same shape, which trained on without a word.

    Raises:
        UserError: ``~user`` names no user.
    """
    if training.data_dir is None:
        return training
    try:
        return replace(training, data_dir=absolute_path(training.data_dir))
    except ValueError as err:
        raise UserError(f"--data-dir {err}") from None


def named_fields(argv: list[str]) -> frozenset[str]:
    """The fields whose flags ``argv`` gives, as dotted field names: ``--plateau-patience=3`` and
    ``--plateau_patience 3`` name ``plateau_patience``, ``--no-shapley`` names ``shapley`` (and
    ``no_shapley``), ``--periodic.period`` names ``periodic.period``."""
    names = {item.partition("=")[0][2:].replace("-", "_") for item in argv if item.startswith("--")}
    return frozenset(names | {name[3:] for name in names if name.startswith("no_")})


def policy_arg(argv: list[str], options: RunOptions) -> Path | None:
    """The policy an eval runs: ``--policy`` in ``argv``, else ``policy`` in ``--config``, read
    before parsing (its PPO run's settings are eval's defaults).

    Raises:
        UserError: ``--policy`` without a value, or an unreadable ``--config``.
    """
    refuse_repeats(argv, ("--policy",))
    value = _value_of("--policy", argv)
    if value is not None:
        if not value or value.startswith("--"):
            raise UserError("--policy needs a PPO run directory")
        return Path(value)
    if options.config is not None:
        table = config_file(options.config)
        if table.keys() - {f.name for f in fields(GrowthRun)}:
            # Keys of another command's (esper ppo's policy is a table): named, as layered()
            # names them, before this file's policy is taken for a run directory.
            layered(GrowthRun(HostTraining("")), options)
        policy = table.get("policy")
        if policy is not None and not (isinstance(policy, str) and policy):
            raise UserError(
                f"--config {str(options.config)!r}: policy must be a PPO run directory (a "
                f"string), got {policy!r}"
            )
        return None if policy is None else Path(policy)
    return None


def announce(mode: str, config: Any, resumed: Path | None, unread: Collection[str] = ()) -> None:
    """Print the effective configuration as readable lines, but the top-level settings
    ``unread`` by the run."""
    head = f"esper {mode}" + (f" (resuming {resumed})" if resumed is not None else "")
    print(f"{head}: effective configuration\n{config_text(config, unread)}", file=sys.stderr)


def interrupted_hint(mode: str, directory: Path, what: str) -> None:
    """Tell the user how to continue an interrupted run."""
    print(
        f"\ninterrupted: {what} checkpointed; continue with: esper {mode} --resume "
        f"{shell_path(directory)}",
        file=sys.stderr,
    )
