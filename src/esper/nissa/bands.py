"""Curves across runs: a run's validation accuracy per epoch and the band of several runs.

Both views of a study read these — the dashboard's study page (Karn) and ``esper report STUDY``
(``esper.study.report``) — so the statistics are defined once, here, below both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from esper.leyline.config import is_plain_number, measured
from esper.nissa.fold import RunState


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


def fewer_note(epochs: Sequence[int], n: Sequence[int], trials: int) -> str:
    """What a band's legend adds when fewer than its ``trials`` runs are in some epoch's median
    (a governor ended some, or they diverged): "; from epoch E of fewer, down to M", from the
    first such epoch and the fewest there are; "" when every epoch holds them all. The median is
    then the survivors', which a reader would otherwise take for all of them."""
    short = [count for count in n if count < trials]
    if not short:
        return ""
    first = next(epoch for epoch, count in zip(epochs, n, strict=True) if count < trials)
    return f"; from epoch {first} of fewer, down to {min(short)}"


def quantile(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile of ``values`` by linear interpolation between order statistics
    (Hyndman & Fan type 7, numpy's default): position ``(n - 1) p`` in the sorted values.

    Raises:
        ValueError: ``values`` is empty or holds NaN (``sorted`` leaves NaN where it finds it,
            so the answer depended on the order), or ``p`` is not a number in [0, 1].
    """
    if not values:
        raise ValueError("the quantile of no values")
    ok = is_plain_number(p) and 0 <= p <= 1
    if not ok:
        raise ValueError(f"a quantile's p must be a number in [0, 1], got {p!r}")
    if any(math.isnan(v) for v in values):
        raise ValueError("the quantile of values holding NaN (leave them out)")
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


def validation_curve(state: RunState) -> dict[int, float | None]:
    """A single-model run's validation accuracy by epoch (None: not finite)."""
    return {e.epoch: measured(e.val_accuracy) for e in state.episode().epochs}
