"""The ``esper`` command: growth runs, PPO training, studies, the views (runs, report, TUI,
dashboard, knowledge) and the demo (imports every subsystem).

``esper.cli.main`` parses arguments without importing torch, so ``esper --help`` is instant;
commands import what they need when they run.
"""
