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
    """Load the command, then run it (``esper.cli.main.main``) with Python's own Ctrl-C."""
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    from esper.cli.main import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
