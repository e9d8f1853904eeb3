"""The ``esper`` command: growth runs, PPO training, studies, the views (runs, report, TUI,
dashboard, knowledge) and the demo (imports every subsystem).

``esper.cli.entry`` is the console script; ``esper.cli.main`` parses the command line and
imports each command's own modules when it runs (the shared ones, torch among them, load first:
about a second).
"""
