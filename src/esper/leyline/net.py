"""Whether a server's port answers: the start-up check before handing an address to a client
whose own connection attempts retry for minutes (Ray, MLflow)."""

from __future__ import annotations

import socket


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout`` seconds; else why
    not, in words (``Connection refused``, ``timed out``, a resolver's message …)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__
    return None
