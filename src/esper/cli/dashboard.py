"""``esper dashboard [RUNS_DIR]``: serve the live web dashboard (Karn) on this machine."""

from __future__ import annotations

import argparse
import contextlib
import errno
from pathlib import Path

from esper.leyline.config import UserError


def _listen_error(host: str, port: int, err: OSError) -> UserError:
    """One line for a socket that could not be opened, naming the bad value."""
    reason = err.strerror or str(err)
    if err.errno == errno.EADDRINUSE:
        return UserError(
            f"port {port} on {host} is already in use ({reason}); "
            "stop the other server or pick another port with --port"
        )
    if err.errno == errno.EACCES:
        return UserError(f"not allowed to listen on port {port} ({reason}); pick one with --port")
    return UserError(f"cannot listen on {host}:{port}: {reason} (check --host and --port)")


def run_dashboard(args: argparse.Namespace) -> int:
    """Serve the runs in ``args.runs_dir`` until Ctrl-C.

    Returns:
        0 after a clean stop (Ctrl-C included).

    Raises:
        UserError: RUNS_DIR is missing or not a directory, or the port cannot be opened.
    """
    from esper.karn.dashboard import DashboardServer, list_runs, open_listener

    runs_dir: Path = args.runs_dir
    if not runs_dir.is_dir():
        what = "does not exist" if not runs_dir.exists() else "is not a directory"
        raise UserError(f"runs directory {str(runs_dir)!r} {what}")
    try:
        sock = open_listener(args.host, args.port)
    except OSError as err:
        raise _listen_error(args.host, args.port, err) from None
    server = DashboardServer(runs_dir, sock)
    count = len(list_runs(runs_dir))
    print(
        f"esper dashboard: {server.url} ({count} run{'s' * (count != 1)} in {runs_dir}; "
        "new ones appear as they start). Ctrl-C stops.",
        flush=True,
    )
    # uvicorn re-raises Ctrl-C once it has shut down cleanly: a normal way to stop.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0
