"""The live web dashboard: a Starlette app that streams run event logs to a browser page.

Endpoints:

- ``GET /``: the page (``static/index.html``); ``GET /static/...``: its hand-written JavaScript
  and CSS. Nothing is loaded from another host.
- ``GET /api/meta``: the runs directory, the seed stage names (in lifecycle order, from
  Leyline) and their colours (``karn.colours``, as in the report), so the page keeps no list.
- ``GET /api/runs``: the run directories directly inside the runs directory (read again on every
  call, so runs that appear later show up when the page refreshes its picker).
- ``GET /api/runs/{name}/events``: Server-Sent Events. Every record already in the run's
  ``events.jsonl`` is sent, then new lines as they are appended (the log is polled). Each record is
  an ``event: record`` message whose ``id`` is its 1-based position in the log, so a browser that
  reconnects (``Last-Event-ID``) gets only what it missed. A malformed line ends the stream with an
  ``event: stream-error`` message naming the file and line; the server and other streams go on.

Streams end when the client disconnects and when the server shuts down.

The page (``static/dashboard.js``) shows, for the picked run: accuracy and loss curves (validation
solid, training dashed; a PPO run draws one colour per environment against the host epoch counted
across that environment's episodes), a seed timeline per slot coloured by stage, the slots' current
stage, blueprint, α, contribution and Shapley value, the latest PPO update and mean return per
round, and the event count with the last events. Missing values show as "—".
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from esper.karn.colours import STAGE_COLOURS
from esper.leyline.stages import SeedStage
from esper.nissa import json_safe
from esper.nissa.log import EventLogError, EventTail, run_candidates, scan_runs
from esper.nissa.record import EVENTS_FILE

STATIC_DIR = Path(__file__).parent / "static"
"""The page, its script and its stylesheet (shipped as package data)."""

POLL_SECONDS = 0.3
"""How often an open stream checks its event log: a few updates a second reads as live, and a
poll that finds nothing new costs one ``stat``-sized read."""

CHUNK_RECORDS = 500
"""Records sent per write: a long log's backlog goes out in pieces, not as one huge string."""

RECONNECT_MS = 2000
"""How long a browser waits before reconnecting a dropped stream (the SSE ``retry`` field)."""


@dataclass(frozen=True)
class RunEntry:
    """One run in the picker (``GET /api/runs`` sends these as JSON objects).

    Attributes:
        name: the run directory's name.
        mode: ``heuristic``, ``static``, ``eval`` or ``ppo``; None when unreadable.
        task: the task preset; None when unreadable.
        seed: the run seed; None when unreadable.
        status: ``completed``/``interrupted``/… from ``summary.json``, ``unfinished`` (running or
            crashed), or ``unreadable``.
        error: why the directory could not be read (e.g. its first line is still being
            written), else None.
    """

    name: str
    mode: str | None
    task: str | None
    seed: int | None
    status: str
    error: str | None


def list_runs(runs_dir: Path) -> list[RunEntry]:
    """The runs in ``runs_dir`` for the run picker, by name.

    A run directory that cannot be read yet is listed with its error instead of failing the whole
    list (``find_runs`` would raise).
    """
    found, unreadable = scan_runs(runs_dir)
    runs = [RunEntry(r.name, r.mode, r.task, r.seed, r.status, None) for r in found]
    runs += [RunEntry(p.name, None, None, None, "unreadable", why) for p, why in unreadable]
    return sorted(runs, key=lambda entry: entry.name)


def _sse(event: str, data: str, record_id: int | None = None) -> str:
    """One Server-Sent Events message (``data`` is one line of JSON)."""
    head = "" if record_id is None else f"id: {record_id}\n"
    return f"{head}event: {event}\ndata: {data}\n\n"


async def stream_events(
    events_path: Path,
    *,
    skip: int,
    poll_seconds: float,
    stopping: Callable[[], bool],
) -> AsyncIterator[str]:
    """Server-Sent Events for one event log: the records in it, then each line appended later.

    Args:
        events_path: the run's ``events.jsonl``.
        skip: records the client already has (its ``Last-Event-ID``).
        poll_seconds: pause between looks at the log.
        stopping: returns True once the server is shutting down; the stream then ends.

    Yields:
        SSE text: a ``retry`` field, one ``record`` message per record (sent in chunks of up to
        ``CHUNK_RECORDS``), and a final ``stream-error`` message if a malformed line is found.
    """
    tail = EventTail(events_path)
    position = 0
    yield f"retry: {RECONNECT_MS}\n\n"
    while not stopping():
        try:
            records = await run_in_threadpool(tail.poll)
        except EventLogError as err:
            yield _sse("stream-error", json.dumps({"message": str(err)}))
            return
        chunk = []
        for record in records:
            position += 1
            if position > skip:
                data = json.dumps(json_safe(record), allow_nan=False)
                chunk.append(_sse("record", data, position))
            if len(chunk) == CHUNK_RECORDS:
                yield "".join(chunk)
                chunk = []
        if chunk:
            yield "".join(chunk)
        await asyncio.sleep(poll_seconds)


async def _page(request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _no_icon(request: Request) -> Response:
    return Response(status_code=204)  # browsers ask for one; there is none


def create_app(
    runs_dir: Path,
    *,
    poll_seconds: float = POLL_SECONDS,
    stopping: Callable[[], bool] = lambda: False,
) -> Starlette:
    """The dashboard application for the runs in ``runs_dir``.

    Args:
        runs_dir: a directory of run directories (or one run directory).
        poll_seconds: how often open event streams look for new lines.
        stopping: returns True once the server is shutting down, so open streams end and the
            server can stop without waiting for browsers to leave.
    """

    async def meta(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "runs_dir": str(runs_dir),
                "stages": [stage.value for stage in SeedStage],
                "stage_colours": {stage.value: STAGE_COLOURS[stage] for stage in SeedStage},
            }
        )

    async def runs(request: Request) -> JSONResponse:
        listed = await run_in_threadpool(list_runs, runs_dir)
        return JSONResponse({"runs": [asdict(run) for run in listed]})

    async def events(request: Request) -> StreamingResponse:
        name = request.path_params["name"]
        # Only a name the listing produced is served: nothing outside runs_dir can be reached.
        # (``run_candidates`` opens nothing, so one unreadable run does not hide the others.)
        candidates = await run_in_threadpool(run_candidates, runs_dir)
        path = {path.name: path for path in candidates}.get(name)
        if path is None:
            raise HTTPException(404, f"no run named {name!r} in {str(runs_dir)!r}")
        # Untrusted header: a missing or garbled Last-Event-ID means "send everything".
        last_id = request.headers.get("last-event-id", "0")
        skip = int(last_id) if last_id.isdigit() else 0
        body = stream_events(
            path / EVENTS_FILE, skip=skip, poll_seconds=poll_seconds, stopping=stopping
        )
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return Starlette(
        routes=[
            Route("/", _page),
            Route("/favicon.ico", _no_icon),
            Route("/api/meta", meta),
            Route("/api/runs", runs),
            Route("/api/runs/{name}/events", events),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ]
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
    """

    def __init__(self, runs_dir: Path, sock: socket.socket, poll_seconds: float = POLL_SECONDS):
        self.sock = sock
        self.app = create_app(runs_dir, poll_seconds=poll_seconds, stopping=self._stopping)
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
