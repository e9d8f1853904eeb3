"""What the dashboard server defends against: it serves run data, and the absolute runs path, to
any page that can reach it.

- **DNS rebinding.** A request is answered only when its ``Host`` header is the listening address
  (``accepted_hosts``: ``127.0.0.1:P`` or ``localhost:P`` on IPv4 loopback, ``[::1]:P`` or
  ``localhost:P`` on IPv6 loopback, exactly the bound ``host:port`` otherwise) and its ``Origin``
  header, when sent, is ``http://`` and one of those; anything else gets a 403 (``HostCheck``).
- **Links out of the runs directory.** A run directory, or one of its record files, whose path with
  every link resolved is outside the resolved runs directory is listed as unreadable (naming the
  link, never what it points to) and not served (404); a log being followed is checked again at
  every read, and opened with ``O_NOFOLLOW`` (``confine``, ``outside_part``, ``BoundedTail``).
  Nothing outside the runs directory is opened, so no error can quote it.
- **Garbled headers.** ``Last-Event-ID`` is up to 18 ASCII digits or the request gets a 400
  (``parse_last_event_id``).
- **Huge logs.** A log is read ``READ_BYTES`` of whole lines at a time (``BoundedTail``) and
  folded as it is read, so following a log of any size holds its fold, not its lines.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection, Iterable
from pathlib import Path

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from esper.nissa.log import EventLogError, Logged, read_line
from esper.nissa.record import CONFIG_FILE, EVENTS_FILE, META_FILE, SUMMARY_FILE

READ_BYTES = 256 << 10
"""Whole lines read from a log at a time (256 KiB, some hundreds of events): decoded, they hold a
few MB until they are folded (``test_a_huge_log_is_streamed_in_bounded_memory``)."""

MAX_LINE_BYTES = 4 << 20
"""A longer line is an error: events are a few hundred bytes to a few kilobytes, so such a line is
not an event, and reading on would hold all of it."""

LAST_EVENT_ID_DIGITS = 18
"""The longest ``Last-Event-ID`` taken: any event count fits in 18 digits (and in a 64-bit int)."""

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
"""Host names that reach a server listening on all interfaces from this machine."""

RECORD_FILES = (CONFIG_FILE, META_FILE, EVENTS_FILE, SUMMARY_FILE)
"""The files of a run directory the dashboard reads (through ``open_run`` or a tail), which must
therefore resolve inside the runs directory."""


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


def parse_last_event_id(value: str | None) -> int:
    """The events a reconnecting browser's snapshot already holds, from its ``Last-Event-ID``.

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
        f"Last-Event-ID must be an event count (1 to {LAST_EVENT_ID_DIGITS} ASCII digits)"
    )


class BoundedTail:
    """Follows a growing event log in bounded reads, opening it only inside ``root``.

    As ``esper.nissa.log.EventTail``: a line counts once its newline is written, blank lines are
    skipped, lines are decoded to ``Logged`` events, the events before a malformed line are
    returned and every later poll raises, and a log that shrank is an error. Unlike it, every poll
    resolves the log's links and refuses a path outside ``root``, opens the file without following
    a link, and refuses a line longer than ``MAX_LINE_BYTES``.

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

    def poll(self) -> list[Logged]:
        """Events from the next ``read_bytes`` of complete lines.

        Raises:
            EventLogError: a complete line is malformed (after the events before it have been
                returned), the file shrank or cannot be read, a line is longer than
                ``MAX_LINE_BYTES``, or the path now links outside ``root``.
        """
        if self.error is not None:
            raise self.error
        events = []
        for raw in self._read_lines():
            self.lines += 1
            self.offset += len(raw)
            text = raw.decode("utf-8", errors="replace")
            if not text.strip():
                continue
            try:
                events.append(read_line(text.removesuffix("\n"), f"{self.path}:{self.lines}"))
            except EventLogError as err:
                self.error = err
                if not events:
                    raise
                break
        return events

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
