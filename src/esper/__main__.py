"""``python -m esper``: the ``esper`` command (how ``--tui`` starts its child run)."""

import sys

from esper.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
