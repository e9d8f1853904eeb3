"""What the dashboard's study page shows: a study's arms × tasks table, what its ``results.md``
adds, and each arm's band.

A study (DESIGN §9) is tasks × arms × seeds, each trial an ordinary run directory. The table's
statistics (rliable's IQM and mean with 95 % intervals), the matched sizes, probabilities of
improvement and verdicts belong to ``esper.study``, which Karn may not import, so whoever starts
the dashboard (``esper dashboard``) passes a function that computes ``StudyFindings`` and Karn
only serves them. The bands are Karn's: per task and arm, the validation
accuracy of the arm's trials at every epoch as its median and interquartile range
(``esper.nissa.bands.band``, shared with ``esper report STUDY``).
"""

from __future__ import annotations

from dataclasses import dataclass

from esper.leyline.pages import TextTable


@dataclass(frozen=True)
class StudyRow:
    """One arm on one task (or over all tasks) as the study page lists it.

    Attributes:
        task: the task, or ``all tasks``.
        arm: the arm.
        n: scores per task that entered the statistics.
        iqm, iqm_low, iqm_high: interquartile mean of the study's score (test accuracy, or
            validation accuracy: ``SCORES``; %) and its 95 % interval.
        mean, mean_low, mean_high: the mean score (%) and its 95 % interval.
        final_params: mean final parameters; None when no trial recorded them.
        seconds: mean training time per trial (``RunSummary.wall_seconds``); None when no
            trial recorded it.
        runs: the trials' run directory names (under the study's ``trials/``) that entered.
        cells: the row as the page shows it: task (``all tasks (k)`` over k tasks), arm, n, IQM
            and mean with their intervals, final params and seconds, written as ``results.md``
            writes them (its rounding, its thousands separators).
    """

    task: str
    arm: str
    n: int
    iqm: float
    iqm_low: float
    iqm_high: float
    mean: float
    mean_low: float
    mean_high: float
    final_params: float | None
    seconds: float | None
    runs: tuple[str, ...]
    cells: tuple[str, ...]


@dataclass(frozen=True)
class StudyFindings:
    """A study as its page shows it.

    Attributes:
        rows: the arms × tasks table.
        tables: what ``results.md`` adds where its judging is known (``results.json``): the
            matched sizes and the probabilities of improvement, with the same numbers.
        verdicts: ``results.md``'s verdicts (none where its judging is not known).
        notes: what to read first: that these are results so far, why ``results.md``'s
            numbers cannot be shown, which scores an aggregate leaves out, which trials do
            not count.
    """

    rows: tuple[StudyRow, ...]
    tables: tuple[TextTable, ...] = ()
    verdicts: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
