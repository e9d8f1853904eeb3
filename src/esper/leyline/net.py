"""Whether a server's port answers, and whether it speaks HTTP/2 or HTTP: the start-up checks before
handing an address to a client whose own connection attempts retry for minutes (Ray, MLflow);
and a server's URL as messages show it (``hidden_password``)."""

from __future__ import annotations

import re
import socket
import ssl

MAX_PORT = 65535
"""The largest TCP port."""

_HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9_.\-]{1,254}):(?P<port>[0-9]{1,5})")


_USER_PASSWORD = re.compile(r"(://[^/@:]*:)[^@]*@")  # as SQLAlchemy reads it: up to the "@"
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*")


def hidden_password(url: str) -> str:
    """``url`` for messages and records: a password, in its user part or as a ``password=``
    query option (which libpq takes too), replaced by ``***``. An ``http(s)://`` URL's user
    part is read as HTTP clients read it (it ends where the host does, at the first "/"); any
    other URL's as SQLAlchemy reads it (a user name may hold an "@", a password a "/")."""
    shown = _QUERY_PASSWORD.sub(r"\1***", url)
    http = _http_user_part(shown)
    if http is not None:
        start, end = http
        user, colon, secret = shown[start:end].partition(":")
        return shown[:start] + user + colon + "***" + shown[end:] if secret else shown
    shown = _USER_PASSWORD.sub(r"\1***@", shown, count=1)
    password = _sqlalchemy_password(url)
    if password and f":{password}@" in shown:  # a user name with an "@" (alice@srv:pw@host)
        shown = shown.replace(f":{password}@", ":***@", 1)
    return shown


def _http_user_part(url: str) -> tuple[int, int] | None:
    """Where an ``http(s)://`` URL's user part lies (up to its last "@" before the host part
    ends at "/", "?" or "#"), as HTTP clients read it; (start, start) where it has none; None
    for a URL of any other scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    start = len(scheme) + len(sep)
    host_part = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return start, start + max(host_part.rfind("@"), 0)


def _sqlalchemy_password(url: str) -> str | None:
    """The password SQLAlchemy reads in ``url``'s user part; None where it reads none, or
    cannot read the URL."""
    from sqlalchemy.engine import make_url  # the knowledge store's and MLflow's dependency
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return None
    return None if password is None else str(password)


def _user_part_password(url: str) -> bool:
    """Whether ``url``'s user part holds a password that is not empty, read as
    ``hidden_password`` reads it."""
    http = _http_user_part(url)
    if http is not None:
        return bool(url[http[0] : http[1]].partition(":")[2])
    if _sqlalchemy_password(url):
        return True
    user = _USER_PASSWORD.search(url)
    return user is not None and user.end() - user.end(1) > 1  # more than the "@"


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password that is not empty, where ``hidden_password`` hides
    one: in its user part or as a ``password=`` option."""
    if _user_part_password(url):
        return True
    return any(m.end() > m.end(1) for m in _QUERY_PASSWORD.finditer(url))


def refuse_password(name: str, url: str, elsewhere: str) -> None:
    """Refuse a URL whose password a run would keep in its files (``config.json``, what it
    logs and prints): ``elsewhere`` says where the password goes instead.

    Raises:
        ValueError: naming ``name`` and the URL, its password hidden.
    """
    if has_password(url):
        raise ValueError(
            f"{name} {hidden_password(url)!r} carries a password, which the run would save in "
            f"its config.json and print; {elsewhere}"
        )


def is_host_port(value: object) -> bool:
    """Whether ``value`` is ``HOST:PORT`` as a Ray head's address is written (``ray start
    --head`` prints it): an ASCII host name (underscores too, as container names have; a final
    dot allowed) or IPv4 address, of dot-separated labels of 1 to 63 characters (no resolver
    takes longer ones), and a port in 1..65535. IPv6 addresses are not taken."""
    match = _HOST_PORT.fullmatch(value) if isinstance(value, str) else None
    if match is None or not 1 <= int(match["port"]) <= MAX_PORT:
        return False
    return all(1 <= len(label) <= 63 for label in match["host"].removesuffix(".").split("."))


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout`` seconds; else why
    not, in words (``Connection refused``, ``timed out``, a resolver's message …)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return _reason(err)
    return None


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What an HTTP/2 client sends first (RFC 9113 §3.4), followed by a SETTINGS frame."""

_EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type SETTINGS, no flags, stream 0
_FRAME_HEADER = 9
_SETTINGS = 4


def _reply(host: str, port: int, timeout: float, request: bytes, size: int, tls: bool) -> bytes:
    """The first ``size`` bytes the server at ``host:port`` sends back for ``request`` (fewer
    when it hangs up first; none when it hangs up on the request). With ``tls`` the connection
    is TLS, its certificate not checked: only whether the server answers is asked.

    Raises:
        TimeoutError: no connection, or not ``size`` bytes, within ``timeout`` seconds each.
        OSError: the connection failed (refused, unresolvable host, a TLS handshake error).
    """
    reply = b""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with context.wrap_socket(raw, server_hostname=host) if tls else raw as sock:
            try:
                sock.sendall(request)
                while len(reply) < size and (chunk := sock.recv(size - len(reply))):
                    reply += chunk
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                pass  # it hung up on the request: what came before is its reply
    return reply


def not_http2(host: str, port: int, timeout: float) -> str | None:
    """None when the server at ``host:port`` answers HTTP/2's client preface with a SETTINGS
    frame, as every HTTP/2 server, gRPC's included, must first; else what it did instead, in
    words. A Ray head's GCS is a gRPC server; Ray's client waits minutes on any other."""
    try:
        request = HTTP2_PREFACE + _EMPTY_SETTINGS
        header = _reply(host, port, timeout, request, _FRAME_HEADER, tls=False)
    except TimeoutError:
        return f"it sent no HTTP/2 reply within {timeout:g} s"
    except OSError as err:
        return _reason(err)
    if not header:
        return "it closed the connection without a reply"
    if len(header) < _FRAME_HEADER or header[3] != _SETTINGS:
        shown = header.decode("ascii", "replace").strip()
        return f"it does not speak HTTP/2 (it answered {shown!r})"
    return None


_STATUS_LINE = b"HTTP/1."


def not_http(host: str, port: int, timeout: float, tls: bool) -> str | None:
    """None when the web server at ``host:port`` (``https`` with ``tls``) answers a request
    for ``/health`` with an HTTP status line, whatever the status, or (``tls``) ends the TLS
    handshake with an error (a server that requires a client certificate); else what it did
    instead, in words. A port that accepts connections but never answers (a stopped server)
    held MLflow's client for two minutes a request."""
    request = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    try:
        status = _reply(host, port, timeout, request, len(_STATUS_LINE), tls)
    except TimeoutError:
        return f"it accepts connections but sent no answer within {timeout:g} s"
    except ssl.SSLError as err:
        if err.reason == "WRONG_VERSION_NUMBER":  # a plain server's answer to TLS's hello
            return "it does not speak TLS (an http:// server?)"
        # It speaks TLS but wants what only the client has (a certificate, as MLflow's
        # MLFLOW_TRACKING_CLIENT_CERT_PATH names): the client's own to find out.
        return None
    except OSError as err:
        return _reason(err)
    if not status:
        return "it closed the connection without a reply"
    if status != _STATUS_LINE:
        shown = status.decode("ascii", "replace").strip()
        return f"it does not speak HTTP (it answered {shown!r}…)"
    return None
