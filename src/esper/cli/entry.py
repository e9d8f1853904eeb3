"""The ``esper`` console script: a Ctrl-C, SIGTERM or SIGHUP while the command's modules load
(torch among them, about two seconds) ends it as quietly as one arriving later does, instead of
with a traceback (Ctrl-C) or killed by the signal with no word (SIGTERM, SIGHUP)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_GRACE_SECONDS = 2.0
"""How long after the command returned a signal is taken for one of a burst and ignored."""


def _interrupted_while_loading(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("\nesper: interrupted\n")
    sys.stderr.flush()
    # Mid-import, nothing is written yet; exiting at once leaves no half-imported module to run.
    os._exit(130)


@contextmanager
def loading() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the process at once with "esper: interrupted" (status
    130) while the block imports modules, and have their earlier handlers back after it. An
    ignored SIGTERM or SIGHUP (``nohup``'s) stays ignored; Ctrl-C is taken even where ignored
    (a background job's), as the command takes it once loaded. Outside the main thread (a
    program running ``main`` in a thread of its own), where handlers cannot be set, it does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = (signal.SIGTERM, signal.SIGHUP)
    signals = [signal.SIGINT, *(s for s in stopping if signal.getsignal(s) is not signal.SIG_IGN)]
    previous = {signum: signal.signal(signum, _interrupted_while_loading) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run() -> None:
    """Load the command, then run it (``esper.cli.main.main``) with Python's own Ctrl-C.

    Once it returned, what it wrote is complete and what is left is the interpreter's exit
    (Ray's and torch's exit handlers): a Ctrl-C, SIGTERM or SIGHUP then is ignored for
    ``EXIT_GRACE_SECONDS``, after which one ends the process at once with the command's status
    (an exit handler that hangs). Repeated signals (a scheduler's, a held-down Ctrl-C) printed
    a traceback from an exit handler after the run had said it was interrupted, or killed the
    process by the signal."""
    with loading():
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
