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

What the server defends against (it serves run data, and the absolute runs path, to any page that
can reach it):

- **DNS rebinding.** A request is answered only when its ``Host`` header is the listening address
  (``accepted_hosts``: ``127.0.0.1:P`` or ``localhost:P`` on IPv4 loopback, ``[::1]:P`` or
  ``localhost:P`` on IPv6 loopback, exactly the bound ``host:port`` otherwise) and its ``Origin``
  header, when sent, is ``http://`` and one of those; anything else gets a 403 (``HostCheck``).
- **Links out of the runs directory.** A run directory, or one of its record files, whose path with
  every link resolved is outside the resolved runs directory is listed as unreadable (naming the
  link, never what it points to) and not streamed (404); the stream checks again at every read
  (``confine``). Nothing outside the runs directory is opened, so no error can quote it.
- **Garbled headers.** ``Last-Event-ID`` is up to 18 ASCII digits or the request gets a 400.
- **Huge logs.** A stream reads its log ``READ_BYTES`` of whole lines at a time (``BoundedTail``),
  so following a log of any size holds about 5 MB per client.

The page (``static/dashboard.js``) shows, for the picked run: accuracy and loss curves (validation
solid, training dashed; a PPO run draws one colour per environment against the host epoch counted
across that environment's episodes), a seed timeline per slot coloured by stage, the slots' current
stage, blueprint, α, contribution and Shapley value, the latest PPO update and mean return per
round, and the event count with the last events. Missing values show as "—".
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
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
from starlette.types import ASGIApp, Receive, Scope, Send

from esper.karn.colours import STAGE_COLOURS
from esper.leyline.stages import SeedStage
from esper.nissa import json_safe
from esper.nissa.log import (
    EventLogError,
    RunDirectoryError,
    open_run,
    parse_record,
    run_candidates,
)
from esper.nissa.record import CONFIG_FILE, EVENTS_FILE, META_FILE, SUMMARY_FILE

STATIC_DIR = Path(__file__).parent / "static"
"""The page, its script and its stylesheet (shipped as package data)."""

POLL_SECONDS = 0.3
"""How often an open stream checks its event log: a few updates a second reads as live, and a
poll that finds nothing new costs one ``stat``-sized read."""

CHUNK_RECORDS = 500
"""Records sent per write: a long log's backlog goes out in pieces, not as one huge string."""

RECONNECT_MS = 2000
"""How long a browser waits before reconnecting a dropped stream (the SSE ``retry`` field)."""

READ_BYTES = 256 << 10
"""Whole lines a stream reads from its log at a time (256 KiB, some hundreds of events). Parsed
and sent, they hold about 5 MB, which is what one client costs however long the log is
(``test_a_huge_log_is_streamed_in_bounded_memory``); 1 MiB reads held about 12 MB."""

MAX_LINE_BYTES = 4 << 20
"""A longer line ends the stream with an error: events are a few hundred bytes to a few
kilobytes, so such a line is not an event, and reading on would hold all of it."""

LAST_EVENT_ID_DIGITS = 18
"""The longest ``Last-Event-ID`` taken: any record count fits in 18 digits (and in a 64-bit int)."""

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
"""Host names that reach a server listening on all interfaces from this machine."""

RECORD_FILES = (CONFIG_FILE, META_FILE, EVENTS_FILE, SUMMARY_FILE)
"""The files of a run directory the dashboard reads (through ``open_run`` or a stream), which
must therefore resolve inside the runs directory."""


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


def confine(path: Path, root: Path) -> Path | None:
    """``path`` with every link resolved, or None when that is not ``root`` (resolved) or below it.

    A link loop counts as outside: it leads nowhere that can be read.
    """
    try:
        resolved = path.resolve()
        return resolved if resolved.is_relative_to(root.resolve()) else None
    except (OSError, RuntimeError):  # RuntimeError: a link loop (Python 3.11)
        return None


def outside_part(run: Path, root: Path) -> str | None:
    """The name of the part of run directory ``run`` that links outside ``root`` (the directory
    itself or one of ``RECORD_FILES``), or None when every part the dashboard reads is inside."""
    for path in (run, *(run / name for name in RECORD_FILES)):
        if confine(path, root) is None:
            return path.name
    return None


def list_runs(runs_dir: Path) -> list[RunEntry]:
    """The runs in ``runs_dir`` for the run picker, by name.

    A run directory that cannot be read yet is listed with its error instead of failing the whole
    list (``find_runs`` would raise). One that links outside ``runs_dir`` is listed as unreadable
    without being opened, so no error quotes a file from elsewhere.

    Raises:
        RunDirectoryError: ``runs_dir`` does not exist or is not a directory.
    """
    if not runs_dir.is_dir():
        what = "does not exist" if not runs_dir.exists() else "is not a directory"
        raise RunDirectoryError(f"runs directory {str(runs_dir)!r} {what}")
    return [_entry(path, runs_dir) for path in run_candidates(runs_dir)]


def _entry(path: Path, runs_dir: Path) -> RunEntry:
    """The picker's entry for one candidate run directory (see ``list_runs``)."""
    outside = outside_part(path, runs_dir)
    if outside is not None:
        why = f"{str(path)!r}: {outside} links outside the runs directory, so it is not read"
        return RunEntry(path.name, None, None, None, "unreadable", why)
    try:
        run = open_run(path)
    except RunDirectoryError as err:
        return RunEntry(path.name, None, None, None, "unreadable", str(err))
    return RunEntry(run.name, run.mode, run.task, run.seed, run.status, None)


def parse_last_event_id(value: str | None) -> int:
    """The records a reconnecting browser already has, from its ``Last-Event-ID`` header.

    Args:
        value: the header as Starlette decodes it (latin-1, so any bytes arrive), None if absent.

    Returns:
        0 without the header, else its number.

    Raises:
        ValueError: the header is not 1 to ``LAST_EVENT_ID_DIGITS`` ASCII digits (``str.isdigit``
            alone would pass "²", which ``int`` refuses).
    """
    if value is None:
        return 0
    if value.isascii() and value.isdigit() and len(value) <= LAST_EVENT_ID_DIGITS:
        return int(value)
    raise ValueError(
        f"Last-Event-ID must be a record number (1 to {LAST_EVENT_ID_DIGITS} ASCII digits)"
    )


class BoundedTail:
    """Follows a growing event log in bounded reads, opening it only inside ``root``.

    As ``esper.nissa.log.EventTail``: a line counts once its newline is written, blank lines are
    skipped, the records before a malformed line are returned and every later poll raises, and a
    log that shrank is an error. Unlike it, a poll reads at most ``read_bytes`` of whole lines
    (``caught_up`` says whether it reached the end), and every poll resolves the log's links and
    refuses a path outside ``root``.

    Args:
        path: the ``events.jsonl`` file.
        root: the runs directory it must stay in.
        read_bytes: whole lines read per poll (at least one line, however long).
    """

    def __init__(self, path: Path, root: Path, read_bytes: int = READ_BYTES) -> None:
        self.path = path
        self.root = root
        self.read_bytes = read_bytes
        self.offset = 0  # bytes consumed: the end of the last complete line read
        self.lines = 0  # complete lines consumed
        self.caught_up = False  # whether the last poll read up to the end of the file
        self.error: EventLogError | None = None  # a malformed line, raised from then on

    def poll(self) -> list[dict[str, Any]]:
        """Records from the next ``read_bytes`` of complete lines.

        Raises:
            EventLogError: a complete line is malformed (after the records before it have been
                returned), the file shrank or cannot be read, a line is longer than
                ``MAX_LINE_BYTES``, or the path now links outside ``root``.
        """
        if self.error is not None:
            raise self.error
        records = []
        for raw in self._read_lines():
            self.lines += 1
            self.offset += len(raw)
            text = raw.decode("utf-8", errors="replace")
            if not text.strip():
                continue
            try:
                records.append(parse_record(text.removesuffix("\n"), f"{self.path}:{self.lines}"))
            except EventLogError as err:
                self.error = err
                if not records:
                    raise
                break
        return records

    def _read_lines(self) -> list[bytes]:
        """The complete lines after ``offset``, newline included, up to about ``read_bytes``."""
        resolved = confine(self.path, self.root)
        if resolved is None:
            raise EventLogError(f"{self.path} links outside the runs directory, so it is not read")
        try:
            # O_NOFOLLOW: a link put in place since ``confine`` looked is refused, not followed.
            fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            self.caught_up = True  # not written yet (a run still starting)
            return []
        except OSError as err:
            raise EventLogError(f"{self.path}: cannot read ({err.strerror})") from None
        with open(fd, "rb") as f:
            size = os.fstat(fd).st_size
            if size < self.offset:
                raise EventLogError(
                    f"{self.path}: the event log shrank from {self.offset} to {size} bytes "
                    "(it was rewritten)"
                )
            f.seek(self.offset)
            lines: list[bytes] = []
            taken = 0
            self.caught_up = False
            while taken < self.read_bytes:
                raw = f.readline(MAX_LINE_BYTES + 1)
                if not raw.endswith(b"\n"):  # the end of the file, or a line being written
                    if len(raw) > MAX_LINE_BYTES:
                        line = self.lines + len(lines) + 1
                        raise EventLogError(
                            f"{self.path}:{line}: a line longer than {MAX_LINE_BYTES} bytes "
                            "is not an event"
                        )
                    self.caught_up = True
                    break
                lines.append(raw)
                taken += len(raw)
        return lines


def _record_json(record: dict[str, Any]) -> str:
    """A record as strict JSON (the browser's ``JSON.parse`` has no NaN): the hub writes
    non-finite floats as null, so only a hand-edited line needs ``json_safe``'s copy, which
    would otherwise take most of a long backlog's time."""
    try:
        return json.dumps(record, allow_nan=False)
    except ValueError:  # NaN or ±Infinity in the line
        return json.dumps(json_safe(record), allow_nan=False)


def _sse(event: str, data: str, record_id: int | None = None) -> str:
    """One Server-Sent Events message (``data`` is one line of JSON)."""
    head = "" if record_id is None else f"id: {record_id}\n"
    return f"{head}event: {event}\ndata: {data}\n\n"


async def stream_events(
    events_path: Path,
    *,
    root: Path,
    skip: int,
    poll_seconds: float,
    stopping: Callable[[], bool],
) -> AsyncIterator[str]:
    """Server-Sent Events for one event log: the records in it, then each line appended later.

    Args:
        events_path: the run's ``events.jsonl``.
        root: the runs directory, which the log must not link out of.
        skip: records the client already has (its ``Last-Event-ID``).
        poll_seconds: pause between looks at the log once everything in it has been sent.
        stopping: returns True once the server is shutting down; the stream then ends.

    Yields:
        SSE text: a ``retry`` field, one ``record`` message per record (sent in chunks of up to
        ``CHUNK_RECORDS``; a long backlog is read ``READ_BYTES`` at a time, without pausing),
        and a final ``stream-error`` message if a malformed line is found.
    """
    tail = BoundedTail(events_path, root, READ_BYTES)
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
                chunk.append(_sse("record", _record_json(record), position))
            if len(chunk) == CHUNK_RECORDS:
                yield "".join(chunk)
                chunk = []
        if chunk:
            yield "".join(chunk)
        if tail.caught_up:
            await asyncio.sleep(poll_seconds)


def accepted_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` header values that address a server listening on ``(host, port)``.

    The bound address itself (an IPv6 one in brackets); for a loopback address also
    ``localhost``; for an all-interfaces address (0.0.0.0, ::) also the loopback names, which
    reach it from this machine. Each with ``:port``, and also without it on port 80 (browsers
    leave the default port out). Any other name, even one that resolves to this machine, is
    refused: a page whose host name resolves here is what a DNS rebinding attack looks like.

    Args:
        host: the listening socket's numeric address (``sock.getsockname()[0]``).
        port: its port.
    """
    address = ipaddress.ip_address(host)
    names = {f"[{address}]" if address.version == 6 else str(address)}
    if address.is_loopback:
        names.add("localhost")
    if address.is_unspecified:
        names.update(LOOPBACK_NAMES)
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts |= names
    return frozenset(hosts)


class HostCheck:
    """ASGI middleware refusing requests not addressed to this server (DNS rebinding).

    A request is passed on only when it carries exactly one ``Host`` header, that header is one
    of ``hosts`` (case-insensitive), and any ``Origin`` header is ``http://`` and one of them.
    Others get a 403 with a one-line plain-text body; header bytes are compared as latin-1, so
    any byte is refused, never an error.

    Args:
        app: the application to protect.
        hosts: the accepted ``Host`` values (``accepted_hosts``).
    """

    def __init__(self, app: ASGIApp, hosts: Collection[str]) -> None:
        self.app = app
        self.hosts = frozenset(host.lower() for host in hosts)
        self.origins = frozenset(f"http://{host}" for host in self.hosts)
        names = " or ".join(sorted(self.hosts))
        self.refusal = f"refused: this dashboard answers only requests addressed to {names}\n"

    def allows(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether raw ASGI headers (lower-case names) address this server."""
        hosts, origins = [], []
        for name, value in headers:
            if name == b"host":
                hosts.append(value.decode("latin-1").lower())
            elif name == b"origin":
                origins.append(value.decode("latin-1").lower())
        return (
            len(hosts) == 1
            and hosts[0] in self.hosts
            and len(origins) <= 1
            and all(origin in self.origins for origin in origins)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or self.allows(scope["headers"]):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await PlainTextResponse(self.refusal, status_code=403)(scope, receive, send)
        else:  # a WebSocket (the dashboard serves none): close it before accepting
            await send({"type": "websocket.close", "code": 1008})


async def _page(request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _no_icon(request: Request) -> Response:
    return Response(status_code=204)  # browsers ask for one; there is none


def create_app(
    runs_dir: Path,
    *,
    hosts: Collection[str],
    poll_seconds: float = POLL_SECONDS,
    stopping: Callable[[], bool] = lambda: False,
) -> Starlette:
    """The dashboard application for the runs in ``runs_dir``.

    Args:
        runs_dir: a directory of run directories (or one run directory).
        hosts: the ``Host`` header values it answers (``accepted_hosts`` of the listening
            address); requests addressed otherwise get a 403 (``HostCheck``).
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
        try:
            skip = parse_last_event_id(request.headers.get("last-event-id"))
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        # Only a name the listing produced is served, and only if it does not link out of
        # runs_dir. (``run_candidates`` opens nothing, so one unreadable run hides no other.)
        candidates = await run_in_threadpool(run_candidates, runs_dir)
        path = {path.name: path for path in candidates}.get(name)
        if path is None or await run_in_threadpool(outside_part, path, runs_dir) is not None:
            raise HTTPException(404, f"no run named {name!r} in {str(runs_dir)!r}")
        body = stream_events(
            path / EVENTS_FILE,
            root=runs_dir,
            skip=skip,
            poll_seconds=poll_seconds,
            stopping=stopping,
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
    """

    def __init__(self, runs_dir: Path, sock: socket.socket, poll_seconds: float = POLL_SECONDS):
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.app = create_app(
            runs_dir,
            hosts=accepted_hosts(host, port),
            poll_seconds=poll_seconds,
            stopping=self._stopping,
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
