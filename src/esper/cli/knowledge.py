"""``esper knowledge``: show, export, import and reset the knowledge store (DESIGN §11).

The store is ``esper.nissa.knowledge``; it is imported on use, because SQLAlchemy takes about a
third of a second to import and ``esper --help`` builds this parser. Every failure (a bad URL,
an unusable store, a run without outcomes, ``reset`` without ``--yes``) is one line and exit
code 2, through ``UserError``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from statistics import fmean
from typing import Any

from esper.cli.runs import format_table, path_arg
from esper.leyline.config import UserError, decode
from esper.leyline.files import shell_path
from esper.leyline.knowledge import PER_PARAMETERS, SeedOutcome, outcome_score
from esper.leyline.trials import TRIALS_DIR
from esper.nissa.discovery import is_readable_study
from esper.nissa.log import display
from esper.nissa.record import OUTCOMES_FILE, read_json

URL_HELP = (
    "the store: a SQLAlchemy URL, sqlite:///PATH or postgresql://USER@HOST/DB (default: "
    "$ESPER_KNOWLEDGE, else knowledge.sqlite in $XDG_CACHE_HOME/esper or ~/.cache/esper)"
)


def add_knowledge_parser(sub: Any) -> None:
    """Add ``esper knowledge show|export|import|reset`` to the ``esper`` subparsers ``sub``."""
    knowledge = sub.add_parser(
        "knowledge", help="the knowledge store: seed outcomes across runs (show, export, ...)"
    )
    verbs = knowledge.add_subparsers(dest="knowledge_command", required=True, metavar="VERB")
    show = verbs.add_parser(
        "show", help="seeds and mean score per task, host (topology, width), blueprint and stage"
    )
    export = verbs.add_parser("export", help="every seed outcome, to stdout")
    export.add_argument(
        "--format", choices=("csv", "json"), default="csv", help="output format (default csv)"
    )
    importing = verbs.add_parser(
        "import",
        help="record finished runs' outcomes.json, or outcomes files (export --format json's too)",
    )
    importing.add_argument(
        "runs", nargs="+", type=path_arg, metavar="RUN", help="run directories or outcomes files"
    )
    reset = verbs.add_parser("reset", help="delete every seed outcome (needs --yes)")
    reset.add_argument("--yes", action="store_true", help="confirm the deletion")
    for verb in (show, export, importing, reset):
        verb.add_argument("--knowledge", metavar="URL", help=URL_HELP)


def run_knowledge(args: argparse.Namespace) -> int:
    """``esper knowledge show|export|import|reset``.

    Raises:
        UserError: a bad URL, an unusable store, a run without a readable ``outcomes.json``,
            or ``reset`` without ``--yes``; nothing is written in any of these cases.
    """
    from esper.nissa.knowledge import (
        KnowledgeStore,
        KnowledgeStoreError,
        KnowledgeStoreMissing,
        KnowledgeURLError,
        default_url,
        parse_url,
        shown_store,
        url_origin,
    )

    try:
        url = default_url() if args.knowledge is None else args.knowledge
        shown = shown_store(parse_url(url))
        if args.knowledge_command == "reset" and not args.yes:
            raise UserError(
                f"knowledge reset deletes every seed outcome in {shown}; add --yes to confirm"
            )
        runs = list(dict.fromkeys(args.runs)) if args.knowledge_command == "import" else []
        imported = _one_per_seed(runs)  # all read before any write
        if args.knowledge_command == "import" and not imported:  # nothing made, nothing changed
            print(_nothing_imported(len(runs), shown))
            return 0
        try:
            store = KnowledgeStore.open(url, create=args.knowledge_command == "import")
        except KnowledgeStoreMissing:
            if args.knowledge_command == "reset":
                raise
            # Nothing recorded there yet: shown as empty, and nothing (file, directory, table)
            # is created.
            if args.knowledge_command == "show":
                print(_show([], shown))
            else:
                _export([], args.format)
            return 0
        with store:
            if args.knowledge_command == "show":
                print(_show(store.outcomes(), store.url))
            elif args.knowledge_command == "export":
                _export(store.outcomes(), args.format)
            elif args.knowledge_command == "import":
                added = store.record(imported, refuse_differing=True)
                print(
                    f"imported {added} seed outcome(s) from {len({o.run_id for o in imported})} "
                    f"run(s) into {store.url}"
                    f" ({len(imported) - added} already there)"
                )
            else:
                print(f"deleted {store.reset()} seed outcome(s) from {store.url}")
    except (KnowledgeURLError, KnowledgeStoreError) as err:
        raise UserError(f"{err}{url_origin(args.knowledge)}") from None
    return 0


def _nothing_imported(given: int, shown: str) -> str:
    """What an import of ``given`` runs or files that hold no seed outcome says."""
    what = "the run or file given holds" if given == 1 else "the runs or files given hold"
    return (
        f"nothing imported: {what} no seed outcome (a run records one per seed it germinated); "
        f"{shown} unchanged"
    )


def _one_per_seed(runs: list[Path]) -> list[SeedOutcome]:
    """The outcomes of ``runs`` (``read_run_outcomes``), a seed given twice (two copies of a
    run) once.

    Raises:
        UserError: as ``read_run_outcomes``, or two of ``runs`` hold different outcomes of
            one seed (``SEED_KEY``: an edited copy).
    """
    from esper.nissa.knowledge import SEED_KEY, differences, seed_name

    found: dict[tuple[Any, ...], tuple[SeedOutcome, Path]] = {}
    for run in runs:
        for outcome in read_run_outcomes(run):
            key = tuple(getattr(outcome, k) for k in SEED_KEY)
            first, where = found.setdefault(key, (outcome, run))
            differ = differences(outcome, first, str(where))
            if differ:
                raise UserError(
                    f"{str(run)!r} and {str(where)!r} hold different outcomes of "
                    f"{seed_name(outcome)}: {differ}; import one of them (nothing imported)"
                )
    return [outcome for outcome, _ in found.values()]


def read_run_outcomes(run: Path) -> tuple[SeedOutcome, ...]:
    """A run directory's seed outcomes (its ``outcomes.json``), or those of such a file given
    itself (a run's, or what ``esper knowledge export --format json`` wrote).

    Raises:
        UserError: no such file, one that is not a list of outcomes, or an outcome no run
            writes (an unknown task, blueprint or slot name, an empty or unprintable run id,
            a seed without parameters).
    """
    if not os.path.lexists(run):
        raise UserError(
            f"{str(run)!r} does not exist (a run directory or an outcomes file); nothing imported"
        )
    path = run if run.is_file() else run / OUTCOMES_FILE
    if not path.is_file():
        study = (  # its runs are its trials' (a walk-through gave the study and was stuck)
            f"; a study's runs are in its {TRIALS_DIR} folder: {shell_path(run / TRIALS_DIR)}/*"
            if is_readable_study(run)
            else ""
        )
        raise UserError(
            f"{run} has no {OUTCOMES_FILE} (not a growth run directory, or a run that did not "
            f"finish) and is no outcomes file; nothing imported{study}"
        )
    try:
        # any size (an export of many runs); also: not UTF-8, nested too deep
        data = read_json(path, "a list of seed outcomes", limit=None)
        outcomes: tuple[SeedOutcome, ...] = decode(tuple[SeedOutcome, ...], data, path.name)
    except ValueError as err:  # RunRecordError is one
        raise UserError(f"{path}: {err}; nothing imported{_csv_hint(path)}") from None
    for outcome in outcomes:
        problem = _unwritable(outcome)
        if problem is not None:
            raise UserError(f"{path}: {problem}; nothing imported")
    return outcomes


def _csv_hint(path: Path) -> str:
    """What to do instead when ``path`` is ``esper knowledge export``'s CSV (its default)."""
    from esper.nissa.knowledge import OUTCOME_COLUMNS

    head = ",".join(OUTCOME_COLUMNS).encode()
    try:
        with path.open("rb") as f:
            csv_export = f.read(len(head)) == head
    except OSError:
        return ""
    return " (a CSV export: import one written with export --format json)" if csv_export else ""


def _unwritable(outcome: SeedOutcome) -> str | None:
    """What in ``outcome`` no Esper run writes (a hand-edited or foreign file), else None.
    Checked on import only: a store's rows and a run's own outcomes are not refused."""
    from esper.kasmina import blueprint_registry  # torch: only for an import
    from esper.leyline import Topology, ordered_slots
    from esper.tasks import TASKS

    if not (outcome.run_id and outcome.run_id.isprintable()):
        return f"run_id must be a non-empty printable name, got {outcome.run_id!r}"
    if outcome.host.task not in TASKS:
        return f"unknown task {outcome.host.task!r}; known: {sorted(TASKS)}"
    topology = Topology(outcome.host.topology)
    kind = TASKS[outcome.host.task].host_kind
    if kind is not topology:
        return f"task {outcome.host.task!r} has a {kind.value} host, not {topology.value}"
    names = blueprint_registry.names(topology)
    if outcome.blueprint not in names:
        host = f"a {topology.value} host"
        return f"unknown blueprint {outcome.blueprint!r} for {host}; known: {list(names)}"
    try:
        ordered_slots((outcome.slot,))
    except ValueError as err:
        return str(err)
    return None


def _show(outcomes: list[SeedOutcome], url: str) -> str:
    """Seeds per host (task, topology, width: what a bandit selector learns from, together) ×
    blueprint × stage with their mean ``outcome_score`` ("—" when none of them is scored: seeds
    still alive at their run's end)."""
    if not outcomes:
        return f"{url}: no seed outcomes"
    groups: defaultdict[tuple[str, str, int, str, str], list[SeedOutcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.host.task, o.host.topology, o.host.width, o.blueprint, o.stage].append(o)
    rows = []
    for (task, topology, width, blueprint, stage), group in sorted(groups.items()):
        scores = [s for s in map(outcome_score, group) if s is not None]
        mean = display(fmean(scores) if scores else None, ".3f")
        rows.append([task, topology, str(width), blueprint, stage, str(len(group)), mean])
    runs = len({o.run_id for o in outcomes})
    header = f"{url}: {len(outcomes)} seed outcome(s) from {runs} run(s)"
    columns = ["task", "topology", "width", "blueprint", "stage", "seeds", "mean score"]
    return f"{header}\n{format_table(columns, rows)}\n{SCORE_NOTE}"


SCORE_NOTE = (
    f"score: a fossilized seed's contribution (accuracy points) per {PER_PARAMETERS:,} of its "
    "parameters, 0 for a pruned seed, — for one still alive when its run ended (the reward "
    "the bandit selectors learn from, each from its own host's: task, topology and width)"
)


def _export(outcomes: list[SeedOutcome], form: str) -> None:
    """Every outcome to stdout: JSON as a run's ``outcomes.json``, or CSV with the store's
    flat columns (a missing value is an empty cell)."""
    from esper.nissa.knowledge import OUTCOME_COLUMNS, flatten

    if form == "json":
        print(json.dumps([asdict(o) for o in outcomes], indent=1))
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(OUTCOME_COLUMNS)
    for o in outcomes:
        writer.writerow(["" if v is None else v for v in flatten(o).values()])
