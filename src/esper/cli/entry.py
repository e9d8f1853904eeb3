"""The ``esper`` console script: a Ctrl-C while the command's modules load (torch among them,
about a second) ends it as quietly as one arriving later does, instead of with a traceback."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _interrupted_while_loading(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("\nesper: interrupted\n")
    sys.stderr.flush()
    # Mid-import, nothing is written yet; exiting at once leaves no half-imported module to run.
    os._exit(130)


def run() -> None:
    """Load the command, then run it (``esper.cli.main.main``) with Python's own Ctrl-C.

    Once it returned, what it wrote is complete and what is left is the interpreter's exit
    (Ray's and torch's exit handlers): a Ctrl-C, SIGTERM or SIGHUP then is ignored. Repeated
    signals (a scheduler's, a held-down Ctrl-C) printed a traceback from an exit handler after
    the run had said it was interrupted, or killed the process by the signal."""
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    from esper.cli.main import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = main()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)
