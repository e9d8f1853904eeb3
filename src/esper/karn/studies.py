"""What the dashboard's study page shows: a study's arms × tasks table and each arm's band.

A study (DESIGN §9) is tasks × arms × seeds, each trial an ordinary run directory. The table's
statistics (rliable's IQM and mean with 95 % intervals) belong to ``esper.study``, which Karn may
not import, so whoever starts the dashboard (``esper dashboard``) passes a function that computes
``StudyRow``s and Karn only serves them. The bands are Karn's: per task and arm, the validation
accuracy of the arm's trials at every epoch as its median and interquartile range (``band``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StudyRow:
    """One arm on one task (or over all tasks) as the study page lists it.

    Attributes:
        task: the task, or ``all tasks``.
        arm: the arm.
        n: scores per task that entered the statistics.
        iqm, iqm_low, iqm_high: interquartile mean of the test accuracy (%) and its 95 % interval.
        mean, mean_low, mean_high: mean test accuracy (%) and its 95 % interval.
        final_params: mean final parameters; None when no trial recorded them.
        seconds: mean wall time per trial; None when no trial recorded it.
        runs: the trials' run directory names (under the study's ``trials/``) that entered.
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


@dataclass(frozen=True)
class Band:
    """Per epoch, the median and quartiles of several runs' values (None where no run has one).

    Attributes:
        epoch: the epochs any run has, ascending.
        median, q1, q3: the statistics at each epoch.
        n: how many runs had a value at each epoch.
    """

    epoch: list[int]
    median: list[float | None]
    q1: list[float | None]
    q3: list[float | None]
    n: list[int]


def quantile(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile of ``values`` by linear interpolation between order statistics
    (Hyndman & Fan type 7, numpy's default): position ``(n - 1) p`` in the sorted values.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("the quantile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * p
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def band(curves: Sequence[Mapping[int, float | None]]) -> Band:
    """The median and interquartile range of ``curves`` (epoch -> value, one per run) at every
    epoch; missing and non-finite values are left out, never counted as 0."""
    epochs = sorted({epoch for curve in curves for epoch in curve})
    found = Band(epochs, [], [], [], [])
    for epoch in epochs:
        values = [
            value
            for curve in curves
            if epoch in curve and (value := curve[epoch]) is not None and math.isfinite(value)
        ]
        found.n.append(len(values))
        for stats, p in ((found.q1, 0.25), (found.median, 0.5), (found.q3, 0.75)):
            stats.append(quantile(values, p) if values else None)
    return found
