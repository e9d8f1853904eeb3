"""Whether a server's port answers, and whether it speaks HTTP/2: the start-up checks before
handing an address to a client whose own connection attempts retry for minutes (Ray, MLflow);
and a server's URL as messages show it (``hidden_password``)."""

from __future__ import annotations

import re
import socket

MAX_PORT = 65535
"""The largest TCP port."""

_HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9_.\-]{1,254}):(?P<port>[0-9]{1,5})")


_USER_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*")


def hidden_password(url: str) -> str:
    """``url`` for messages and records: a password, in its user part
    (``postgresql://USER:PASSWORD@``) or as a ``password=`` query option (which libpq takes
    too), replaced by ``***``."""
    return _QUERY_PASSWORD.sub(r"\1***", _USER_PASSWORD.sub(r"\1***@", url, count=1))


def is_host_port(value: object) -> bool:
    """Whether ``value`` is ``HOST:PORT`` as a Ray head's address is written (``ray start
    --head`` prints it): an ASCII host name (underscores too, as container names have; a final
    dot allowed) or IPv4 address, of dot-separated labels of 1 to 63 characters (no resolver
    takes longer ones), and a port in 1..65535. IPv6 addresses are not taken."""
    match = _HOST_PORT.fullmatch(value) if isinstance(value, str) else None
    if match is None or not 1 <= int(match["port"]) <= MAX_PORT:
        return False
    return all(1 <= len(label) <= 63 for label in match["host"].removesuffix(".").split("."))


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout`` seconds; else why
    not, in words (``Connection refused``, ``timed out``, a resolver's message …)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__
    return None


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What an HTTP/2 client sends first (RFC 9113 §3.4), followed by a SETTINGS frame."""

_EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type SETTINGS, no flags, stream 0
_FRAME_HEADER = 9
_SETTINGS = 4


def not_http2(host: str, port: int, timeout: float) -> str | None:
    """None when the server at ``host:port`` answers HTTP/2's client preface with a SETTINGS
    frame, as every HTTP/2 server, gRPC's included, must first; else what it did instead, in
    words. A Ray head's GCS is a gRPC server; Ray's client waits minutes on any other."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(HTTP2_PREFACE + _EMPTY_SETTINGS)
            header = b""
            while len(header) < _FRAME_HEADER:
                chunk = sock.recv(_FRAME_HEADER - len(header))
                if not chunk:
                    break
                header += chunk
    except TimeoutError:
        return f"it sent no HTTP/2 reply within {timeout:g} s"
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        header = b""  # it hung up on the preface
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__
    if not header:
        return "it closed the connection without a reply"
    if len(header) < _FRAME_HEADER or header[3] != _SETTINGS:
        shown = header.decode("ascii", "replace").strip()
        return f"it does not speak HTTP/2 (it answered {shown!r})"
    return None
