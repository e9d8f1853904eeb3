"""How a command stops: Ctrl-C, SIGTERM and SIGHUP all raise ``Stop``.

Light (no torch) so that every command, the view commands too, takes SIGTERM as Ctrl-C: its
``finally`` blocks run (a query's temporary copy of the logs is removed; it was left behind,
up to gigabytes, by ``timeout`` or a scheduler's SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from esper.nissa.console import detach_from_hung_up_terminal


class Stop(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP asked the run to stop (a ``KeyboardInterrupt``, so that one
    arriving before the run loop ends the command as Ctrl-C does)."""


def stopping_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM (what schedulers and Ray send) and SIGHUP (the terminal closed), unless the
    process started with SIGHUP ignored: ``nohup`` asks for the run to outlive its terminal."""
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return (signal.SIGTERM,)
    return (signal.SIGTERM, signal.SIGHUP)


def interrupt_on_termination() -> None:
    """From now on SIGTERM and SIGHUP stop the process as Ctrl-C does (see
    ``stopping_signals``). Python runs handlers in the main thread only, and sets them only
    there: called in another (a program that runs ``main`` in a thread of its own), it does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            detach_from_hung_up_terminal()  # the resume hint and summary must not fail on it
        raise Stop

    for signum in stopping_signals():
        signal.signal(signum, handler)
