"""Study: runs and studies — the one place a controller is run on a task into a run directory.

A *run* (``esper.study.growth`` for one episode under a static, heuristic, random, periodic or
PPO-policy controller; ``esper.study.ppo`` for PPO training) validates everything
(``esper.study.checks``), builds its episode, and records every step through
``esper.study.run.Recorder`` into a crash-safe run directory. A *study* is tasks × arms × seeds
of such runs executed as Ray tasks, with rliable statistics over their results and a report of
them (``esper.study.report``; DESIGN §9). The ``esper`` command (``esper.cli``) only parses
flags and prints; everything a run does lives here. May import every subsystem but Karn and the
CLI.
"""
