"""What the dashboard server defends against: it serves run data, and the absolute runs path, to
any page that can reach it.

- **DNS rebinding.** A request is answered only when its ``Host`` header is the listening address
  (``accepted_hosts``: ``127.0.0.1:P`` or ``localhost:P`` on IPv4 loopback, ``[::1]:P`` or
  ``localhost:P`` on IPv6 loopback, exactly the bound ``host:port`` otherwise) and its ``Origin``
  header, when sent, is ``http://`` and one of those; anything else gets a 403 (``HostCheck``).
- **Links out of the runs directory.** A run directory, or one of its record files, whose path with
  every link resolved is outside the resolved runs directory is listed as unreadable (naming the
  link, never what it points to) and not served (404); a log being followed is checked again at
  every read, and opened with ``O_NOFOLLOW`` (``confine``, ``outside_part``, ``confined_opener``).
  Nothing outside the runs directory is opened, so no error can quote it.
- **Garbled headers.** ``Last-Event-ID`` is up to 18 ASCII digits or the request gets a 400
  (``parse_last_event_id``).
- **Huge logs.** A log is read ``READ_BYTES`` of whole lines at a time (``EventTail.events``) and
  folded as it is read, so following a log of any size holds its fold, not its lines.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import BinaryIO

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from esper.leyline.files import open_regular
from esper.nissa.log import EventLogError, OpenLog
from esper.nissa.record import CONFIG_FILE, EVENTS_FILE, META_FILE, SUMMARY_FILE

READ_BYTES = 256 << 10
"""Whole lines read from a log at a time (256 KiB, some hundreds of events): decoded, they hold a
few MB until they are folded (``test_a_huge_log_is_streamed_in_bounded_memory``)."""

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
    itself or one of ``RECORD_FILES``), or None when every part the dashboard reads is inside.

    A file that is no link lies where its directory does, so only links are resolved (listing
    thousands of runs resolved five paths each, every component of them, twice: 1.4 s of a 2 s
    listing of 2,000 runs).
    """
    if confine(run, root) is None:
        return run.name
    for name in RECORD_FILES:
        try:
            if not stat.S_ISLNK(os.lstat(run / name).st_mode):
                continue
        except FileNotFoundError:  # resolves to where it would be: inside, as the directory
            continue
        except OSError:  # cannot be looked at: ask the slow way
            pass
        if confine(run / name, root) is None:
            return name
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


def confined_opener(root: Path) -> OpenLog:
    """An ``EventTail`` opener that reads a log only inside ``root``: every open resolves the
    log's links and refuses a path outside ``root`` (an ``EventLogError`` that names the link,
    never its target), then opens it with ``O_NOFOLLOW``, so a link put in place since the check
    is refused, not followed."""

    def open_log(path: Path) -> BinaryIO:
        resolved = confine(path, root)
        if resolved is None:
            raise EventLogError(f"{path} links outside the runs directory, so it is not read")
        return open_regular(resolved, follow=False)  # a pipe would hold the server's thread

    return open_log


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
