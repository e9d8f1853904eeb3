"""Finding the runs a directory stands for, without opening them: a run directory itself, the
runs inside a folder of runs, a study's trials; a damaged run (one that lost a file every run
has) and one that cannot be read are named, so that no view passes over them in silence. The
views (``esper runs``, the dashboard, the query views) list runs through this module and open
each with ``esper.nissa.log.open_run``.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Callable
from pathlib import Path

from esper.leyline.files import file_mode
from esper.leyline.trials import TRIALS_DIR
from esper.nissa.log import (
    EVENTS_FILE,
    RunDirectory,
    RunDirectoryError,
    open_run,
    shown_name,
)
from esper.nissa.record import (
    STAGING_PREFIX,
    RunRecordError,
    is_study,
    read_meta,
    run_problem,
)


def run_candidates(directory: Path) -> list[Path]:
    """``directory`` itself when it holds an event log, else its children that are run
    directories (``record.is_run_directory``), damaged ones (``is_damaged_run``) or cannot be
    read, by name — without opening them (no staging folder: ``STAGING_PREFIX``); without
    such children, ``directory`` itself when it is a damaged run. A study directory
    (``esper study``) stands for its trials' runs.

    Raises:
        RunDirectoryError: ``directory`` (or a study's trials folder) cannot be read.
    """
    within = directory  # the folder listed: a study's trials folder stands for the study
    try:
        log = file_mode(directory / EVENTS_FILE)
        if log is not None and stat.S_ISREG(log):
            return [directory]
        if is_study(directory):
            within = directory / TRIALS_DIR
            trials = file_mode(within)
            if trials is None or not stat.S_ISDIR(trials):
                return []
        children = sorted(within.iterdir())
        found = [c for c in children if not c.name.startswith(STAGING_PREFIX) and _may_be_run(c)]
        if not found and within is directory and is_damaged_run(directory):
            return [directory]  # named itself, it says what it lacks (open_run)
    except PermissionError as err:  # no read or search permission
        raise RunDirectoryError(f"{str(within)!r} cannot be read ({err.strerror})") from None
    return found


def studies_within(directory: Path) -> list[Path]:
    """The study directories directly inside ``directory``, by name, when it is neither a run
    nor a study (each of those stands for itself); a run directory holding a stray
    ``study.json`` is a run. A child that cannot be looked into is none: ``run_candidates``
    lists it as a run that cannot be read, which says why.

    Raises:
        PermissionError: ``directory`` cannot be looked into.
    """
    try:
        if file_mode(directory / EVENTS_FILE) is not None or is_study(directory):
            return []
        children = sorted(directory.iterdir())
    except (NotADirectoryError, FileNotFoundError):
        return []
    return [child for child in children if is_readable_study(child) and not _has_log(child)]


def folders_of_runs(directory: Path) -> list[tuple[Path, int]]:
    """The folders directly inside ``directory`` that are neither runs nor studies but hold
    runs (``esper demo --out runs/demo`` makes one), with how many: a listing of
    ``directory`` passes over them, and says where they are. Folders that cannot be read are
    none (a listing names those already)."""
    try:
        if _has_log(directory) or is_study(directory):
            return []
        children = sorted(directory.iterdir())
    except OSError:
        return []
    found = []
    for child in children:
        if child.name.startswith(STAGING_PREFIX):
            continue
        try:
            if not child.is_dir() or _may_be_run(child) or is_study(child):
                continue
            runs = run_candidates(child)
        except (OSError, RunDirectoryError):
            continue
        if runs and runs != [child]:
            found.append((child, len(runs)))
    return found


def _has_log(path: Path) -> bool:
    mode = file_mode(path / EVENTS_FILE)
    return mode is not None and stat.S_ISREG(mode)


def is_readable_study(path: Path) -> bool:
    """Whether ``path`` is a study (``is_study``) that can be looked into."""
    try:
        return is_study(path)
    except PermissionError:
        return False


def named_runs(
    directory: Path, keep: Callable[[Path], bool] | None = None
) -> dict[str, tuple[Path, str | None]]:
    """Every run ``directory`` stands for, by the name the views show it under, with the name of
    the study it is a trial of (or None). Nothing is opened.

    The runs of ``run_candidates`` under their directory's name (``shown_name``), then the
    trials of each study inside ``directory`` (``studies_within``; those ``keep`` keeps) as
    ``study/trial``; a study whose trials folder cannot be read is one entry, ``study/trials``,
    which says why when opened. So ``runs/`` after ``esper study`` lists the study's trials in
    ``esper runs`` as on the dashboard.

    Raises:
        RunDirectoryError: ``directory`` (or a study's trials folder, when ``directory`` is that
            study) cannot be read.
    """
    candidates = run_candidates(directory)  # first: it says so when directory cannot be read
    own = shown_name(directory) if is_study(directory) else None
    found = {shown_name(path): (path, own) for path in candidates}
    for study in studies_within(directory):
        if keep is not None and not keep(study):
            continue
        name = shown_name(study)
        try:
            found |= {f"{name}/{shown_name(p)}": (p, name) for p in run_candidates(study)}
        except RunDirectoryError:  # its trials cannot be read: one entry says so
            found[f"{name}/{TRIALS_DIR}"] = (study / TRIALS_DIR, name)
    return found


def _each_once(
    directory: Path, found: dict[str, tuple[Path, str | None]]
) -> dict[str, tuple[Path, str | None]]:
    """``found`` (``named_runs(directory)``) with a run reached under two names (a symbolic
    link beside its directory, ``runs/latest -> runs/x``, or to a study, ``runs/s -> runs/st``)
    once, under the name that follows no link where one does (else the first): two rows of
    one run read as two runs, and count twice in a query. (The dashboard keeps both names: a
    bookmarked ``runs/latest`` follows the link.)"""
    base = directory.resolve()
    chosen: dict[Path, str] = {}  # a run's resolved path -> the name it keeps
    own: dict[str, bool] = {}  # name -> whether it follows no link below ``directory``
    for name, (path, _) in found.items():
        try:
            target = path.resolve()
        except (OSError, RuntimeError):  # a loop of links: opening it says so
            target = path
        own[name] = path.is_relative_to(directory) and target == base / path.relative_to(directory)
        kept = chosen.setdefault(target, name)
        if not own[kept] and own[name]:
            chosen[target] = name
    names = set(chosen.values())
    return {name: entry for name, entry in found.items() if name in names}


def _may_be_run(path: Path) -> bool:
    """A run directory, a damaged one (``is_damaged_run``) or a directory that cannot be read
    (``open_run`` then says why)."""
    problem, unreadable = run_problem(path)
    return problem is None or unreadable or is_damaged_run(path)


def is_damaged_run(path: Path) -> bool:
    """Whether ``path`` is an Esper run directory that lost a file of ``RUN_FILES``: it holds
    what only a run writes, an event log or a ``meta.json`` that reads as a run's (passing over
    it in silence lost the run from every listing and query). Not a directory holding a
    ``config.json`` alone (many tools write one)."""
    mode = file_mode(path)
    if mode is None or not stat.S_ISDIR(mode):
        return False
    if file_mode(path / EVENTS_FILE) is not None:
        return True
    try:
        return read_meta(path) is not None
    except RunRecordError:
        return False


def check_runs_dir(directory: Path) -> None:
    """That ``directory`` is a directory, for the commands that list the runs in it.

    Raises:
        RunDirectoryError: it does not exist, is not a directory, or cannot be looked at.
    """
    try:
        mode = file_mode(directory)
        if mode is not None and stat.S_ISDIR(mode):
            return
        what = "does not exist" if mode is None else "is not a directory"
    except PermissionError as err:  # no search permission on a directory above it
        what = f"cannot be read ({err.strerror})"
    raise RunDirectoryError(f"runs directory {str(directory)!r} {what}")


def scan_runs(directory: Path) -> tuple[list[RunDirectory], list[tuple[str, str]]]:
    """The runs in ``directory`` under their names (``named_runs``; a run a link names too,
    once: ``_each_once``), and the names of those
    that could not be read — e.g. a run whose first line is still being written — with the
    reason.

    Raises:
        RunDirectoryError: ``directory`` does not exist, is not a directory or cannot be read.
    """
    check_runs_dir(directory)
    runs, unreadable = [], []
    for name, (path, _) in _each_once(directory, named_runs(directory)).items():
        try:
            runs.append(dataclasses.replace(open_run(path), name=name))
        except RunDirectoryError as err:
            unreadable.append((name, str(err)))
    return runs, unreadable


def find_runs(directory: Path) -> list[RunDirectory]:
    """Every run in ``directory`` (see ``scan_runs``); any unreadable one is an error.

    Raises:
        RunDirectoryError: ``directory`` is missing or not a directory, or holds a run that
            cannot be read.
    """
    runs, unreadable = scan_runs(directory)
    if unreadable and not runs and len(unreadable) == 1:  # no other run to name
        raise RunDirectoryError(unreadable[0][1])
    if unreadable:
        why = unreadable[0][1]
        raise RunDirectoryError(
            f"{why}; it is in {str(directory)!r}: name the other runs to leave it out"
        )
    return runs
