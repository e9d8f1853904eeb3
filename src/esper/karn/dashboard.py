"""The live web dashboard: a Starlette app that folds run event logs and sends the folded runs to a
browser page that only draws them (DESIGN §6).

Endpoints:

- ``GET /``: the page (``static/index.html``); ``GET /static/...``: its hand-written JavaScript
  and CSS and the vendored uPlot (``static/vendor/uplot``). Nothing is loaded from another host.
- ``GET /api/meta``: the runs directory, the seed stage names (in lifecycle order, from
  Leyline), their colours and the lifecycle marks' colours and shapes (``karn.colours``, as in
  the report), so the page keeps no list.
- ``GET /api/runs``: the runs (``run_paths``: the run directories directly inside the runs
  directory, and the trials of the studies in it, named ``study/trial``) with their status and
  the time their log last changed, and ``newest``: the run whose log changed last, which the page
  opens when no run is named in its address. Read again on every call, so runs that appear later
  show up when the page refreshes its picker.
- ``GET /api/runs/{name}/events``: Server-Sent Events, one ``event: snapshot`` message per change
  of the folded run: the log is read in bounded pieces, decoded (``esper.nissa.log.Logged``),
  folded (``esper.nissa.fold.RunState``, which also handles resumes) and sent as
  ``esper.karn.snapshot.snapshot`` — at most every ``SNAPSHOT_SECONDS``. A message's ``id`` is
  the number of events folded into it, so a browser that reconnects (``Last-Event-ID``) gets the
  current snapshot unless it already has it. A malformed line ends the stream, after a snapshot
  of the events before it, with an ``event: stream-error`` message naming the file and line; the
  server and other streams go on.
- ``GET /api/runs/{name}/snapshot``: the same snapshot once, as JSON (overlays of other runs).
- ``GET /api/studies``: the studies in the runs directory (the runs directory itself when it is
  one); ``GET /api/studies/{name}``: a study's ``karn.studies.StudyFindings`` (computed by the
  function ``esper dashboard`` passes in): its arms × tasks with links to its trials, the
  matched sizes, probabilities of improvement and verdicts of its ``results.md``, and notes;
  and per task and arm the band of its trials' validation accuracy (median and interquartile
  range per epoch).

Streams end when the client disconnects and when the server shuts down. What the server defends
against — foreign ``Host``/``Origin`` headers, links out of the runs directory, garbled
``Last-Event-ID`` headers, huge logs — is ``esper.karn.guard``'s to say.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from esper.karn.colours import MARK_STYLES, STAGE_COLOURS
from esper.karn.guard import (
    READ_BYTES,
    HostCheck,
    accepted_hosts,
    confine,
    confined_opener,
    outside_part,
    parse_last_event_id,
)
from esper.karn.snapshot import RECENT_SHOWN, snapshot
from esper.karn.studies import StudyFindings
from esper.leyline.files import file_mode
from esper.leyline.stages import SeedStage
from esper.leyline.trials import (
    JUDGING_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
    Score,
    score_label,
    study_running,
)
from esper.nissa.bands import band, fewer_note, validation_curve
from esper.nissa.discovery import check_runs_dir, named_runs, studies_within
from esper.nissa.fold import RunState, fold_to_end
from esper.nissa.log import (
    EventLogError,
    EventLogGone,
    EventTail,
    RunDirectoryError,
    open_run,
    shown_name,
    shown_path,
)
from esper.nissa.record import (
    CONFIG_FILE,
    EVENTS_FILE,
    SUMMARY_FILE,
    is_study,
    known_study_score,
    strict_json,
)

STATIC_DIR = Path(__file__).parent / "static"
"""The page, its script and its stylesheet (shipped as package data)."""

POLL_SECONDS = 0.3
"""How often an open stream checks its event log: a few looks a second reads as live, and a look
that finds nothing new costs one ``stat``-sized read."""

SNAPSHOT_SECONDS = 0.5
"""Least time between two snapshots of one stream: twice a second reads as live, while a run
logging hundreds of events a second costs one snapshot per half second, not one per event."""

RECONNECT_MS = 2000
"""How long a browser waits before reconnecting a dropped stream (the SSE ``retry`` field)."""

FOLDS_KEPT = 32
"""Runs kept folded for one-shot snapshots and study bands (``Folds``): an overlay or a study's
trials are then read again only from where they were left. Each holds its bounded fold."""

StudyTable = Callable[[Path], StudyFindings]
"""Computes what a study directory's page shows (``esper dashboard`` passes ``esper.study``'s)."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class RunEntry:
    """One run in the picker (``GET /api/runs`` sends these as JSON objects).

    Attributes:
        name: the run's name in the dashboard: its directory's name, ``study/trial`` for a trial
            of a study inside the runs directory.
        mode: ``heuristic``, ``static``, ``eval`` or ``ppo``; None when unreadable.
        task: the task preset; None when unreadable.
        seed: the run seed; None when unreadable.
        status: ``completed``/``interrupted``/… from ``summary.json``, ``unfinished`` (running or
            crashed), or ``unreadable``.
        error: why the directory could not be read (e.g. its first line is still being
            written), else None.
        study: the study the run is a trial of, else None.
        modified: when its event log last changed (unix seconds); None when unreadable.
    """

    name: str
    mode: str | None
    task: str | None
    seed: int | None
    status: str
    error: str | None
    study: str | None
    modified: float | None


def studies(runs_dir: Path) -> dict[str, Path]:
    """The studies the dashboard shows, by name: ``runs_dir`` itself when it is a study, else the
    study directories directly inside it that it serves (``_serves_study``)."""
    if is_study(runs_dir):
        return {shown_name(runs_dir): runs_dir}
    return {shown_name(s): s for s in studies_within(runs_dir) if _serves_study(s, runs_dir)}


def _serves_study(study: Path, runs_dir: Path) -> bool:
    """Whether the study's path and trials folder, links resolved, stay inside ``runs_dir``
    (looked at only for studies: resolving every run's links took 0.5 s for 2,000 runs)."""
    return all(confine(path, runs_dir) is not None for path in (study, study / TRIALS_DIR))


def run_paths(runs_dir: Path) -> dict[str, tuple[Path, str | None]]:
    """Every run the dashboard serves, by name, with the study it is a trial of (or None):
    ``named_runs``, with the trials of the studies it serves. Only a name listed here is ever
    served (``named_runs`` opens nothing, so one unreadable run hides no other)."""
    return named_runs(runs_dir, lambda study: _serves_study(study, runs_dir))


def _served_runs(runs_dir: Path) -> dict[str, tuple[Path, str | None]]:
    """``run_paths`` of a runs directory that is checked first (``check_runs_dir``)."""
    check_runs_dir(runs_dir)
    return run_paths(runs_dir)


FileKey = tuple[int, int, int, int]
"""A file as ``os.stat`` sees it: inode, size, modification and change time (ns). Equal keys:
the file is as it was when read (the caches below reuse what they read from it)."""

Signature = tuple[FileKey | None, ...]
"""A run's record files' ``FileKey``, each of ``OPENED_FILES`` (None: missing)."""


def file_key(path: Path) -> FileKey:
    """``path``'s ``FileKey`` (links followed).

    Raises:
        OSError: it cannot be looked at (missing, no permission).
    """
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


OPENED_FILES = (CONFIG_FILE, EVENTS_FILE, SUMMARY_FILE)
"""The files ``open_run`` reads or checks for a run's picker entry."""


def list_runs(
    runs_dir: Path, opened: dict[Path, tuple[Signature, RunEntry]] | None = None
) -> list[RunEntry]:
    """The runs in ``runs_dir`` for the run picker (see ``run_paths``).

    A run directory that cannot be read yet is listed with its error instead of failing the whole
    list (``find_runs`` would raise). One that links outside ``runs_dir`` is listed as unreadable
    without being opened, so no error quotes a file from elsewhere.

    Args:
        opened: the entries of an earlier listing by run directory, each reused while its
            record files are unchanged (``Signature``), then replaced by this listing's: a
            refresh opens only the runs that changed (opening 2,000 took 1 s every 5 s).

    Raises:
        RunDirectoryError: ``runs_dir`` does not exist, is not a directory or cannot be read.
    """
    check_runs_dir(runs_dir)
    earlier = dict(opened or {})
    entries, now = [], {}
    for name, (path, study) in run_paths(runs_dir).items():
        entry, signature = _entry(name, path, study, runs_dir, earlier.get(path))
        entries.append(entry)
        if signature is not None:
            now[path] = (signature, entry)
    if opened is not None:
        opened.clear()
        opened.update(now)
    return entries


def _signature(run: Path) -> Signature | None:
    """``run``'s ``Signature``, None when a file cannot be looked at (no permission)."""
    parts: list[FileKey | None] = []
    for name in OPENED_FILES:
        try:
            parts.append(file_key(run / name))
        except FileNotFoundError:
            parts.append(None)
        except OSError:
            return None
    return tuple(parts)


def _entry(
    name: str,
    path: Path,
    study: str | None,
    runs_dir: Path,
    earlier: tuple[Signature, RunEntry] | None,
) -> tuple[RunEntry, Signature | None]:
    """The picker's entry for one candidate run directory (see ``list_runs``), and the
    signature it was read at (None: not to be reused)."""
    outside = outside_part(path, runs_dir)
    if outside is not None:
        why = f"{str(path)!r}: {outside} links outside the runs directory, so it is not read"
        return RunEntry(name, None, None, None, "unreadable", why, study, None), None
    signature = _signature(path)
    if signature is not None and earlier is not None and earlier[0] == signature:
        return replace(earlier[1], name=name, study=study), signature
    try:
        run = open_run(path)
        modified = run.events_path.stat().st_mtime
    except (RunDirectoryError, OSError) as err:  # OSError: the run was removed meanwhile
        return RunEntry(name, None, None, None, "unreadable", str(err), study, None), signature
    entry = RunEntry(name, run.mode, run.task, run.seed, run.status, None, study, modified)
    return entry, signature


def newest(entries: list[RunEntry]) -> str | None:
    """The readable run whose log changed last (the page opens it), None without one."""
    readable = [entry for entry in entries if entry.modified is not None]
    return max(readable, key=lambda entry: entry.modified or 0.0).name if readable else None


def _fold_more(tail: EventTail, state: RunState, read_bytes: int = READ_BYTES) -> None:
    """Fold the events of the tail's next bounded read into ``state``."""
    state.apply_all(tail.events(read_bytes))


def _sse(event: str, data: str, event_id: int | None = None) -> str:
    """One Server-Sent Events message (``data`` is one line of JSON)."""
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}event: {event}\ndata: {data}\n\n"


def _snapshot_json(state: RunState, name: str) -> str:
    """The snapshot as strict JSON (the browser's ``JSON.parse`` has no NaN)."""
    return json.dumps(snapshot(state, name), allow_nan=False, separators=(",", ":"))


async def stream_snapshots(
    events_path: Path,
    name: str,
    *,
    root: Path,
    skip: int,
    poll_seconds: float,
    stopping: Callable[[], bool],
    interval: float = SNAPSHOT_SECONDS,
    read_bytes: int = READ_BYTES,
) -> AsyncIterator[str]:
    """Server-Sent Events for one run: its folded state whenever it changed.

    Args:
        events_path: the run's ``events.jsonl``.
        name: the run's name in the dashboard.
        root: the runs directory, which the log must not link out of.
        skip: the events the client's snapshot already holds (its ``Last-Event-ID``): that
            snapshot is not sent again.
        poll_seconds: pause between looks at the log once all of it has been folded.
        stopping: returns True once the server is shutting down; the stream then ends.
        interval: least time between two snapshots.
        read_bytes: whole lines read from the log at a time.

    Yields:
        SSE text: a ``retry`` field, then ``snapshot`` messages (``id``: events folded). A long
        backlog is folded ``READ_BYTES`` at a time, with a snapshot each ``interval`` while it
        lasts. A malformed line (or a log naming an unknown slot) ends the stream with a
        ``stream-error`` message, after a snapshot of what came before it.
    """
    tail = EventTail(events_path, confined_opener(root))
    state = RunState(recent=RECENT_SHOWN)
    sent: int | None = skip or None  # the events in the client's snapshot (None: it has none)
    last = -float("inf")
    yield f"retry: {RECONNECT_MS}\n\n"
    while not stopping():
        failure, gone = None, False
        try:
            await run_in_threadpool(_fold_more, tail, state, read_bytes)
        except EventLogError as err:
            failure, gone = str(err), isinstance(err, EventLogGone)
        ahead = tail.caught_up or failure is not None or state.events > (sent or 0)
        due = failure is not None or time.monotonic() - last >= interval
        if state.events != sent and ahead and due:
            try:
                text = await run_in_threadpool(_snapshot_json, state, name)
            except ValueError as err:  # a slot that does not exist
                failure = str(err)
            else:
                yield _sse("snapshot", text, state.events)
                sent, last = state.events, time.monotonic()
        if failure is not None:
            yield _sse("stream-error", json.dumps({"message": failure, "gone": gone}))
            return
        if tail.caught_up:
            await asyncio.sleep(poll_seconds)


@dataclass
class _Followed:
    tail: EventTail
    state: RunState
    lock: threading.Lock


class Folds:
    """Runs folded so far, each read on from where it was left when it is asked for again.

    One-shot snapshots (an overlay refreshed every few seconds) and study bands (every trial of a
    study) fold a log once and then only what was appended. The ``kept`` runs used last are kept;
    a log that turns out malformed or rewritten is forgotten, so it is read anew next time.

    Args:
        root: the runs directory the logs must stay in.
        kept: how many runs to keep folded.
    """

    def __init__(self, root: Path, kept: int = FOLDS_KEPT) -> None:
        self.root = root
        self.kept = kept
        self._runs: OrderedDict[Path, _Followed] = OrderedDict()
        self._lock = threading.Lock()

    def use(self, events_path: Path, view: Callable[[RunState], _T]) -> _T:
        """``view`` of the run's state, folded up to the end of its log (call from a thread).

        Raises:
            EventLogError: the log is malformed, rewritten or links out of the runs directory.
            ValueError: ``view`` raised it (e.g. a slot that does not exist).
        """
        try:
            return self._use(events_path, view)
        except EventLogGone:  # rewritten or replaced: the log there now is read from its start
            if file_mode(events_path) is None:  # (removed: nothing to read)
                raise
            return self._use(events_path, view)

    def _use(self, events_path: Path, view: Callable[[RunState], _T]) -> _T:
        """``use``, once: a log that fails is forgotten (a trial's folder made again answered
        422 once before its new log was read)."""
        with self._lock:
            followed = self._runs.pop(events_path, None)
            if followed is None:
                tail = EventTail(events_path, confined_opener(self.root))
                followed = _Followed(tail, RunState(recent=RECENT_SHOWN), threading.Lock())
            self._runs[events_path] = followed
            while len(self._runs) > self.kept:
                self._runs.popitem(last=False)
        with followed.lock:
            try:  # a malformed log raises every time, not only after its good part
                fold_to_end(followed.state, followed.tail, READ_BYTES)
            except EventLogError:
                with self._lock:
                    if self._runs.get(events_path) is followed:
                        del self._runs[events_path]
                raise
            return view(followed.state)


class _Tables:
    """Each study's findings, computed again only when its ``trials.csv`` or ``results.json``
    (how its results were computed) changed, or it started or stopped running (its notes
    say which: ``study_running``)."""

    def __init__(self, compute: StudyTable) -> None:
        self.compute = compute
        self._found: dict[Path, tuple[tuple[object, ...], StudyFindings]] = {}
        self._lock = threading.Lock()

    def findings(self, study: Path) -> StudyFindings | None:
        """The study's findings; None before its first invocation has ended (no
        ``trials.csv``: one running writes it when it ends)."""
        try:
            trials = file_key(study / TRIALS_FILE)
        except FileNotFoundError:
            return None
        try:
            judging: FileKey | None = file_key(study / JUDGING_FILE)
        except FileNotFoundError:
            judging = None
        # both files are replaced whole: a new inode, whatever the times
        key = (trials, judging, study_running(study))
        with self._lock:
            cached = self._found.get(study)
            if cached is None or cached[0] != key:
                cached = (key, self.compute(study))
                self._found[study] = cached
            return cached[1]


Curve = dict[int, float | None]
"""A run's validation accuracy by epoch (``validation_curve``)."""


class Curves:
    """Trials' validation curves (``validation_curve``), folded again only when a trial's log
    changed (its ``FileKey``): a finished study's bands read no log on a
    refresh, however many trials it has (``Folds`` keeps ``FOLDS_KEPT`` runs, and the logs of a
    study of more trials were all read whole every time).

    Args:
        folds: where a changed log is folded on from where it was left.
    """

    def __init__(self, folds: Folds) -> None:
        self.folds = folds
        self._known: dict[Path, dict[Path, tuple[FileKey, Curve]]] = {}
        self._lock = threading.Lock()

    def of(self, study: Path, runs: list[Path]) -> dict[Path, Curve]:
        """The curves of those of ``runs`` (a study's trials) that can be read, by run (call
        from a thread); the study's cache then holds these runs alone."""
        with self._lock:
            before = self._known.get(study, {})
        known: dict[Path, tuple[FileKey, Curve]] = {}
        for run in runs:
            try:
                signature = file_key(run / EVENTS_FILE)
            except OSError:  # removed, or not there yet: no curve, as an unreadable log
                continue
            cached = before.get(run)
            if cached is not None and cached[0] == signature:
                known[run] = cached
                continue
            try:
                known[run] = (signature, self.folds.use(run / EVENTS_FILE, validation_curve))
            except EventLogError:
                continue  # an unreadable trial has no curve; its run page says why
        with self._lock:
            self._known[study] = known
        return {run: curve for run, (_, curve) in known.items()}


def _study_data(
    name: str,
    study: Path,
    table: tuple[Score | None, StudyFindings],
    runs_dir: Path,
    curves: Curves,
) -> dict[str, Any]:
    """``GET /api/studies/{name}``'s body: what the study scores by (``score_label``), the rows
    with the dashboard names of their trials, the band of each row's trials (those served:
    inside the runs directory, readable), and the rest of its ``StudyFindings``."""
    score, findings = table
    rows = findings.rows
    served = run_paths(runs_dir)
    prefix = "" if study == runs_dir else f"{name}/"
    names = [[f"{prefix}{run}" for run in row.runs if f"{prefix}{run}" in served] for row in rows]
    paths = [[served[n][0] for n in row] for row in names]
    inside = [p for row in paths for p in row if outside_part(p, runs_dir) is None]
    read = curves.of(study, inside)
    shown, bands = [], []
    for row, row_names, row_paths in zip(rows, names, paths, strict=True):
        shown.append({**asdict(row), "runs": row_names})
        drawn = [read[p] for p in row_paths if p in read]
        if drawn:
            found, trials = band(drawn), len(drawn)
            label = f"{row.arm} median of {trials}{fewer_note(found.epoch, found.n, trials)}"
            drawn_band = {"trials": trials, "label": label, **asdict(found)}
            bands.append({"task": row.task, "arm": row.arm, **drawn_band})
    return {
        "name": name,
        "score": score_label(score),
        "rows": shown,
        "bands": bands,
        "tables": [asdict(table) for table in findings.tables],
        "verdicts": list(findings.verdicts),
        "notes": list(findings.notes),
        "error": None,
    }


_NO_FINDINGS: dict[str, list[Any]] = {
    "rows": [],
    "bands": [],
    "tables": [],
    "verdicts": [],
    "notes": [],
}
"""A study body's findings where there are none (not yet, or an error)."""


async def _page(request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _no_icon(request: Request) -> Response:
    return Response(status_code=204)  # browsers ask for one; there is none


class _Api:
    """The dashboard's request handlers over one runs directory (``create_app`` routes them)."""

    def __init__(
        self,
        runs_dir: Path,
        poll_seconds: float,
        snapshot_seconds: float,
        stopping: Callable[[], bool],
        study_table: StudyTable | None,
    ) -> None:
        self.runs_dir = runs_dir
        self.poll_seconds = poll_seconds
        self.snapshot_seconds = snapshot_seconds
        self.stopping = stopping
        self.folds = Folds(runs_dir)
        self.curves = Curves(self.folds)
        self.opened: dict[Path, tuple[Signature, RunEntry]] = {}  # see ``list_runs``
        self.tables = None if study_table is None else _Tables(study_table)

    async def meta(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "runs_dir": shown_path(self.runs_dir),
                "stages": [stage.value for stage in SeedStage],
                "stage_colours": {stage.value: STAGE_COLOURS[stage] for stage in SeedStage},
                "mark_colours": {kind: s.colour for kind, s in MARK_STYLES.items()},
                "mark_shapes": {kind: s.shape for kind, s in MARK_STYLES.items()},
            }
        )

    async def runs(self, request: Request) -> JSONResponse:
        listed = await self._in_runs_dir(lambda runs_dir: list_runs(runs_dir, self.opened))
        return JSONResponse({"runs": [asdict(run) for run in listed], "newest": newest(listed)})

    async def _in_runs_dir(self, read: Callable[[Path], _T]) -> _T:
        """``read(runs_dir)`` in a worker thread.

        Raises:
            HTTPException: 503 with one line when the runs directory is gone or cannot be read
                (moved, removed or locked while the server runs: it was a 500 and a traceback).
        """
        try:
            return await run_in_threadpool(read, self.runs_dir)
        except RunDirectoryError as err:
            raise HTTPException(503, str(err)) from None
        except OSError as err:  # it went between the check and the listing
            where = str(self.runs_dir)
            why = f"runs directory {where!r} cannot be read ({err.strerror})"
            raise HTTPException(503, why) from None

    async def _locate(self, name: str) -> Path:
        """The directory of the run ``name`` (a 404 unless listed and inside ``runs_dir``; a
        503 when the runs directory cannot be read)."""
        served = await self._in_runs_dir(_served_runs)
        path = served[name][0] if name in served else None
        if path is None or await run_in_threadpool(outside_part, path, self.runs_dir) is not None:
            raise HTTPException(404, f"no run named {_shown(name)} in {str(self.runs_dir)!r}")
        return path

    async def events(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            skip = parse_last_event_id(request.headers.get("last-event-id"))
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        path = await self._locate(name)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # the headers alone: a stream's body would never end
            return Response(media_type="text/event-stream", headers=headers)
        body = stream_snapshots(
            path / EVENTS_FILE,
            name,
            root=self.runs_dir,
            skip=skip,
            poll_seconds=self.poll_seconds,
            stopping=self.stopping,
            interval=self.snapshot_seconds,
        )
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)

    async def run_snapshot(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = await self._locate(name)
        try:
            data = await run_in_threadpool(
                self.folds.use, path / EVENTS_FILE, lambda state: snapshot(state, name)
            )
        except ValueError as err:  # a malformed log, or a slot that does not exist
            return PlainTextResponse(f"{err}\n", status_code=422)
        return JSONResponse(data, headers={"Cache-Control": "no-cache"})

    async def _studies(self) -> dict[str, Path]:
        return {} if self.tables is None else await self._in_runs_dir(studies)

    async def study_list(self, request: Request) -> JSONResponse:
        return JSONResponse({"studies": sorted(await self._studies())})

    async def study(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        found = await self._studies()
        if self.tables is None or name not in found:
            raise HTTPException(404, f"no study named {_shown(name)} in {str(self.runs_dir)!r}")
        outside = await run_in_threadpool(_links_outside, found[name], self.runs_dir)
        if outside is not None:
            why = f"{outside} links outside the runs directory, so it is not read"
            return JSONResponse({"name": name, **_NO_FINDINGS, "error": why})
        try:
            findings = await run_in_threadpool(self.tables.findings, found[name])
        except ValueError as err:  # an unreadable trials.csv, two trials for one seed, ...
            return JSONResponse({"name": name, **_NO_FINDINGS, "error": str(err)})
        score, unscored = await run_in_threadpool(known_study_score, found[name])
        if findings is None:  # running (or stopped) before its first end: not an error to alarm
            pending: dict[str, Any] = {**_NO_FINDINGS, "error": None, "pending": True}
            return JSONResponse({"name": name, "score": score_label(score), **pending})
        if unscored is not None:  # the report's warning, first among the page's notes
            findings = replace(findings, notes=(unscored, *findings.notes))
        data = await run_in_threadpool(
            _study_data, name, found[name], (score, findings), self.runs_dir, self.curves
        )  # a mean that overflowed, a band of unmeasured epochs: null, as JSON has no inf or NaN
        return JSONResponse(strict_json(data), headers={"Cache-Control": "no-cache"})


def _links_outside(study: Path, runs_dir: Path) -> str | None:
    """The study file the page reads (``trials.csv``, and ``results.json`` where there is one)
    that links outside ``runs_dir``, or None."""
    for name in (TRIALS_FILE, JUDGING_FILE):
        path = study / name
        if (name == TRIALS_FILE or os.path.lexists(path)) and confine(path, runs_dir) is None:
            return name
    return None


class _RunName(PathConvertor):
    """A run's name in a URL path: any characters, a line break too (Starlette's ``path``
    convertor stops at one, so a run named so was listed but never served)."""

    regex = "[\\s\\S]*"


register_url_convertor("esper_run", _RunName())


def _shown(name: str) -> str:
    """A requested name in a 404, cut short: the body need not echo a 20 KB URL."""
    return repr(name) if len(name) <= 100 else repr(name[:100]) + "..."


def create_app(
    runs_dir: Path,
    *,
    hosts: Collection[str],
    poll_seconds: float = POLL_SECONDS,
    snapshot_seconds: float = SNAPSHOT_SECONDS,
    stopping: Callable[[], bool] = lambda: False,
    study_table: StudyTable | None = None,
) -> Starlette:
    """The dashboard application for the runs in ``runs_dir``.

    Args:
        runs_dir: a directory of run directories and studies (or one run directory, or one
            study).
        hosts: the ``Host`` header values it answers (``accepted_hosts`` of the listening
            address); requests addressed otherwise get a 403 (``HostCheck``).
        poll_seconds: how often open event streams look for new lines.
        snapshot_seconds: least time between two snapshots of one stream.
        stopping: returns True once the server is shutting down, so open streams end and the
            server can stop without waiting for browsers to leave.
        study_table: computes a study's ``StudyFindings``; without it no study is listed.
    """
    api = _Api(runs_dir, poll_seconds, snapshot_seconds, stopping, study_table)
    return Starlette(
        routes=[
            Route("/", _page),
            Route("/favicon.ico", _no_icon),
            Route("/api/meta", api.meta),
            Route("/api/runs", api.runs),
            Route("/api/runs/{name:esper_run}/events", api.events),
            Route("/api/runs/{name:esper_run}/snapshot", api.run_snapshot),
            Route("/api/studies", api.study_list),
            Route("/api/studies/{name}", api.study),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(HostCheck, hosts=hosts)],
    )


def open_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``(host, port)``; port 0 picks a free port.

    Binding here, before the server starts, turns a port in use into an ``OSError`` the caller can
    report in one line (uvicorn would log it and exit), and leaves no window in which another
    program could take the port.

    Raises:
        OSError: the address cannot be resolved, or the port is in use or not allowed.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a port left in TIME_WAIT by a previous run may be reused at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


class DashboardServer:
    """The dashboard app served by uvicorn on an already-listening socket.

    Args:
        runs_dir: the runs to show.
        sock: from ``open_listener``; the server owns it from now on.
        poll_seconds: how often open event streams look for new lines.
        snapshot_seconds: least time between two snapshots of one stream.
        study_table: computes a study's ``StudyFindings`` (``create_app``).
    """

    def __init__(
        self,
        runs_dir: Path,
        sock: socket.socket,
        poll_seconds: float = POLL_SECONDS,
        snapshot_seconds: float = SNAPSHOT_SECONDS,
        study_table: StudyTable | None = None,
    ) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.app = create_app(
            runs_dir,
            hosts=accepted_hosts(host, port),
            poll_seconds=poll_seconds,
            snapshot_seconds=snapshot_seconds,
            stopping=self._stopping,
            study_table=study_table,
        )
        config = uvicorn.Config(
            self.app, log_level="warning", http="h11", ws="none", lifespan="off"
        )
        self.server = uvicorn.Server(config)

    def _stopping(self) -> bool:
        return self.server.should_exit

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self.sock.getsockname()[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    @property
    def started(self) -> bool:
        """True once the server accepts requests."""
        return self.server.started

    def run(self) -> None:
        """Serve until ``stop`` is called or the process gets SIGINT/SIGTERM (main thread only).

        After a signal, uvicorn re-raises it once it has shut down, so Ctrl-C ends in
        ``KeyboardInterrupt`` for the caller to treat as a clean stop.
        """
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self) -> None:
        """Ask the server to shut down (safe from another thread); open streams end too."""
        self.server.should_exit = True

    @contextmanager
    def in_background(self, timeout: float = 10.0) -> Iterator[str]:
        """Serve from a background thread for the duration of a ``with`` block.

        Yields:
            The page's address, once the server accepts requests.

        Raises:
            RuntimeError: the server did not start within ``timeout`` seconds.
        """
        thread = threading.Thread(target=self.run, name="esper-dashboard", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        try:
            while not self.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the dashboard server did not start within {timeout} s")
                time.sleep(0.01)
            yield self.url
        finally:
            self.stop()
            thread.join(timeout)
