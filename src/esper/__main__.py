"""``python -m esper``: the ``esper`` command (how ``--tui`` starts its child run)."""

import sys

from esper.cli.main import main

sys.exit(main())
