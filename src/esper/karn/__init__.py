"""Karn: the operator's views of runs.

Karn owns the live terminal UI (Textual), the live web dashboard (a Starlette app served on
localhost, with its hand-written JavaScript and CSS in ``static/``) and the static run report
(``report.html`` with PNG plots). It reads what Nissa records — run directories and their event
logs — and imports only Leyline and Nissa.
"""
