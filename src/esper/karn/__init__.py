"""Karn: the operator's views of runs.

Karn owns the live terminal UI (Textual), the live web dashboard (a Starlette app served on
localhost: the server folds each run and sends snapshots, its JavaScript in ``static/`` only
draws them with the vendored uPlot) and the static run report (``report.html`` with PNG and SVG
plots). All three show Nissa's one fold of a run's events (``esper.nissa.fold.RunState``); Karn
imports only Leyline and Nissa (a study's statistics reach the dashboard from the CLI).
"""
