"""``python -m esper``: the ``esper`` command (how ``--tui`` starts its child run)."""

from esper.cli.entry import run

if __name__ == "__main__":
    run()
