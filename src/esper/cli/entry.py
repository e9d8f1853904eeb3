"""The ``esper`` console script: a Ctrl-C while the command's modules load (torch among them,
about a second) ends it as quietly as one arriving later does, instead of with a traceback."""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

EXIT_GRACE_SECONDS = 2.0
"""How long after the command returned a signal is taken for one of a burst and ignored."""


def _interrupted_while_loading(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("\nesper: interrupted\n")
    sys.stderr.flush()
    # Mid-import, nothing is written yet; exiting at once leaves no half-imported module to run.
    os._exit(130)


def run() -> None:
    """Load the command, then run it (``esper.cli.main.main``) with Python's own Ctrl-C.

    Once it returned, what it wrote is complete and what is left is the interpreter's exit
    (Ray's and torch's exit handlers): a Ctrl-C, SIGTERM or SIGHUP then is ignored for
    ``EXIT_GRACE_SECONDS``, after which one ends the process at once with the command's status
    (an exit handler that hangs). Repeated signals (a scheduler's, a held-down Ctrl-C) printed
    a traceback from an exit handler after the run had said it was interrupted, or killed the
    process by the signal."""
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    from esper.cli.main import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = main()
    returned = time.monotonic()

    def exiting(signum: int, frame: FrameType | None) -> None:
        if time.monotonic() - returned > EXIT_GRACE_SECONDS:
            os._exit(code)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            signal.signal(signum, exiting)
    sys.exit(code)
