"""A study's statistics: rliable interval estimates over its trials.

A study is tasks × arms × seeds (DESIGN §9); each trial ends as one ``TrialRow``. Only finished
trials (completed, or ended by the governor) with a score count; every other trial is listed in
``results.md`` with its error. The statistics follow Agarwal et al., "Deep Reinforcement Learning
at the Edge of the Statistical Precipice" (NeurIPS 2021), through their library rliable:

- ``summarize``: per task × arm the interquartile mean (IQM) and the mean with 95 % stratified
  bootstrap confidence intervals, the median, the sample standard deviation and n, plus the mean
  final and peak parameters, training FLOPs and training time; and per arm the same over all tasks.
- ``improvements``: the probability of improvement P(X > Y) + ½ P(X = Y) of every arm over every
  baseline arm, per task and over all tasks, with its 95 % interval.
- ``verdicts``: the two questions Esper asks, answered from those probabilities.
- ``score_profiles``: each arm's performance profile (score distribution) with its band.

``esper.study.results`` writes them as ``results.md`` and its plots, and shows them on pages.

Choices rliable leaves open, made here once:

- **Seeding.** rliable's bootstraps draw their indices from numpy's *global* RNG
  (``np.random.choice`` in ``StratifiedBootstrap.update_indices``; the ``random_state`` argument
  never reaches those draws, and arch deprecates it). Every interval is therefore computed with
  the global RNG seeded with ``seed``, and the caller's RNG state is restored afterwards
  (``_seeded``). An interval thus depends only on its own scores, ``reps`` and ``seed``, never on
  which other arms or tasks are in the study. A lock keeps two threads of this module apart; a
  thread elsewhere drawing from ``np.random`` during a bootstrap would disturb it.
- **IQM** is ``rliable.metrics.aggregate_iqm``: scipy's 25 % trimmed mean, which cuts ⌊n/4⌋
  scores from each end (n = 8: the mean of the middle 4; n = 7: of the middle 5). It, the
  probability of improvement and the performance profile's score distribution are computed
  here (``_iqm``, ``_probability_of_improvement``, ``_score_distribution``) to the same bits
  as rliable's functions, without their per-call cost on every resample (scipy's checks, a
  ``np.vectorize``): 13× faster in ``benchmarks/stats.py``.
- **Over all tasks** rliable wants a runs × tasks matrix, so every task must give the same number
  of runs. With unequal n an arm's aggregate uses the common n: the n lowest seeds of each task,
  where n is the smallest count among its tasks (``ArmSummary.unused`` counts the scores left
  out; ``results.md`` says so). Scores are raw accuracy in percent (test accuracy, or validation
  accuracy in a ``score = "validation"`` study: ``SCORES``), not normalised per task.
  A probability of improvement over all tasks uses the tasks both arms have, each arm at its
  common n on those tasks, so it need not equal the mean of the per-task probabilities.
- **Intervals** are percentile intervals (rliable's default) of the stratified bootstrap: runs
  are resampled with replacement within each task; the two arms of a probability of improvement
  are resampled independently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from esper.leyline.config import MAX_SEED, check_int
from esper.leyline.trials import (
    DEFAULT_REPS,
    MIN_VERDICT_REPS,
    REPS_RANGE,
    TrialRow,
    VerdictRoles,
    matched_target,
)

# rliable (with arch, scipy, pandas and seaborn behind it, ~2 s) is imported where it is used:
# a study's --dry-run or bad input, and the dashboard's lists of studies, never need it.


ALL_TASKS = "all tasks"
"""The ``task`` of a summary or improvement taken over all tasks."""

CONFIDENCE = 0.95
"""Coverage of every interval (DESIGN §9: 95 % stratified bootstrap intervals)."""


Q_GROWTH = "does growing beat a static network per parameter?"
Q_LEARNED = "can a learned controller grow better than a hand-written one?"


PROFILE_POINTS = 101
"""Thresholds τ of the performance profile: a smooth curve from the lowest score to the highest."""


Scores = npt.NDArray[np.float64]
"""A runs × tasks matrix of scores (accuracies), ``(N, K)``, as rliable takes it."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % confidence interval ``[low, high]``."""

    point: float
    low: float
    high: float


@dataclass(frozen=True)
class ArmSummary:
    """One arm's scores on one task, or over all tasks (``task == ALL_TASKS``).

    Attributes:
        task: The task, or ``ALL_TASKS``.
        arm: The arm.
        tasks: The tasks the statistics are taken over (one, or all the arm has scores on).
        n: Scores per task that entered the statistics (over all tasks: the common n).
        unused: Completed scores left out to reach the common n (0 for a single task).
        iqm: Interquartile mean with its interval.
        mean: Mean (over all tasks: the mean of the task means) with its interval.
        median: Median (over all tasks: rliable's median of the task means).
        std: Sample standard deviation; ``None`` for n = 1, and over several tasks, where it
            would mix task difficulty with seed noise.
        final_params: Mean final parameters of the trials used; ``None`` if none recorded it.
        peak_params: Mean peak parameters, likewise.
        flops: Mean training FLOPs, likewise.
        seconds: Mean training time, likewise.
    """

    task: str
    arm: str
    tasks: tuple[str, ...]
    n: int
    unused: int
    iqm: Interval
    mean: Interval
    median: float
    std: float | None
    final_params: float | None
    peak_params: float | None
    flops: float | None
    seconds: float | None


@dataclass(frozen=True)
class Improvement:
    """The probability that ``arm`` scores above ``baseline``: P(X > Y) + ½ P(X = Y).

    Attributes:
        task: The task, or ``ALL_TASKS`` (the per-task probabilities averaged over ``tasks``,
            each arm at its common n on them: its ``n_arm`` lowest seeds of every task).
        arm: The arm X.
        baseline: The baseline arm Y.
        tasks: The tasks compared (those both arms have scores on).
        n_arm: Runs per task of the arm that entered.
        n_baseline: Runs per task of the baseline that entered.
        probability: The probability with its interval.
    """

    task: str
    arm: str
    baseline: str
    tasks: tuple[str, ...]
    n_arm: int
    n_baseline: int
    probability: Interval


@dataclass(frozen=True)
class MatchedSize:
    """How a static-matched arm was sized on one task.

    Attributes:
        task: the task.
        arm: the static-matched arm.
        matches: the arm whose size it matches.
        target: that arm's median final parameters there (``matched_target``; None: none
            finished).
        params: the static-matched trials' parameter counts (one host width: one count).
    """

    task: str
    arm: str
    matches: str
    target: int | None
    params: tuple[int, ...]


def matched_sizes(rows: Sequence[TrialRow], roles: VerdictRoles) -> list[MatchedSize]:
    """Each static-matched arm's size on each task it has trials on, beside its target."""
    sizes = []
    for grown, arm in sorted(roles.matched, key=lambda pair: pair[1]):
        for task in sorted({r.task for r in rows if r.arm == arm}):
            counts = {r.final_params for r in rows if (r.task, r.arm) == (task, arm)}
            params = tuple(sorted(c for c in counts if c is not None))
            sizes.append(MatchedSize(task, arm, grown, matched_target(rows, task, grown), params))
    return sizes


# ------------------------------------------------------------------------------ bootstrap

_GLOBAL_RNG = threading.Lock()


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for rliable's draws, and give the caller its state back after."""
    with _GLOBAL_RNG:
        saved = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(saved)


def _estimate(
    scores: Scores | list[Scores],
    func: Callable[..., object],
    reps: int,
    seed: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Point estimates ``(M,)`` and their intervals ``(2, M)`` of ``func`` from rliable.

    ``scores`` is one runs × tasks matrix, or a list of them that are resampled independently
    (for a function of two arms).
    """
    from rliable import library

    with _seeded(seed):
        points, intervals = library.get_interval_estimates(
            {"scores": scores},
            func,
            reps=reps,
            confidence_interval_size=CONFIDENCE,
        )
    point = np.atleast_1d(np.asarray(points["scores"], dtype=np.float64))
    return point, np.asarray(intervals["scores"], dtype=np.float64).reshape(2, -1)


# The two statistics below run once per bootstrap resample (2,000 per interval by default).
# rliable's own functions call scipy, whose per-call checks made a 5-task, 5-arm study's
# judging take minutes. These compute the same numbers bit for bit (the tests compare them
# with rliable's on random scores with ties) by the same float operations in the same order.


def _iqm(scores: Scores) -> float:
    """``rliable.metrics.aggregate_iqm``: scipy's ``trim_mean(scores, 0.25, axis=None)``, the
    mean of the flattened scores left after cutting ⌊n/4⌋ from each end."""
    flat = scores.ravel()
    cut = flat.size // 4
    kept = np.partition(flat, (cut, flat.size - cut - 1))[cut : flat.size - cut]
    return float(np.mean(kept))


def _iqm_and_mean(scores: Scores) -> npt.NDArray[np.float64]:
    return np.array([_iqm(scores), np.mean(np.mean(scores, axis=0))])


def _probability_of_improvement(x: Scores, y: Scores) -> float:
    """``rliable.metrics.probability_of_improvement``: per task, the Mann–Whitney U of ``x``
    over ``y`` divided by n·m, i.e. the share of (x, y) pairs where x wins, ties counting half;
    then the mean over tasks.

    Summed over the pairs, sign(x − y) is wins − losses, so U = wins + ½ ties is
    (that sum + n·m) / 2; every term is a small integer, exact in float64, and dividing 2U by
    2nm rounds as U / nm does.
    """
    pairs = x.shape[0] * y.shape[0]
    signs = np.sign(x[:, None, :] - y[None, :, :]).reshape(pairs, -1).sum(axis=0)
    return float(np.mean((signs + pairs) / (2 * pairs)))


# ------------------------------------------------------------------------------ grouping

Cells = dict[tuple[str, str], list[TrialRow]]
"""Counted trials by (task, arm), each list sorted by seed."""


def _cells(rows: Sequence[TrialRow]) -> Cells:
    cells: Cells = {}
    for row in rows:
        if row.counts:
            cells.setdefault((row.task, row.arm), []).append(row)
    for (task, arm), trials in cells.items():
        trials.sort(key=lambda row: row.seed)
        seeds = [row.seed for row in trials]
        if len(set(seeds)) != len(seeds):
            raise ValueError(
                f"{task}/{arm}: more than one finished trial for one seed (seeds {seeds}); "
                "a study has one trial per task, arm and seed"
            )
    return cells


def _tasks(cells: Cells, arm: str) -> set[str]:
    return {task for task, cell_arm in cells if cell_arm == arm}


def _matrix(cells: Cells, arm: str, tasks: Sequence[str]) -> tuple[Scores, list[TrialRow]]:
    """The ``(n, K)`` runs × tasks matrix of ``arm`` on ``tasks`` (the n lowest seeds of each)
    and the trials in it."""
    n = min(len(cells[task, arm]) for task in tasks)
    used = [cells[task, arm][:n] for task in tasks]
    matrix = np.array([[row.score for row in column] for column in used], dtype=np.float64).T
    return matrix, [row for column in used for row in column]


def _mean(values: Sequence[float | int | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


# ------------------------------------------------------------------------------ statistics


def _summary(
    cells: Cells, task: str, arm: str, tasks: Sequence[str], reps: int, seed: int
) -> ArmSummary:
    from rliable import metrics

    matrix, used = _matrix(cells, arm, tasks)
    point, bounds = _estimate(matrix, _iqm_and_mean, reps, seed)
    n_runs, n_tasks = matrix.shape
    if n_tasks == 1:
        median = float(np.median(matrix))
        std = float(np.std(matrix, ddof=1)) if n_runs > 1 else None
    else:
        median = float(metrics.aggregate_median(matrix))
        std = None
    return ArmSummary(
        task=task,
        arm=arm,
        tasks=tuple(tasks),
        n=n_runs,
        unused=sum(len(cells[t, arm]) for t in tasks) - matrix.size,
        iqm=Interval(float(point[0]), float(bounds[0, 0]), float(bounds[1, 0])),
        mean=Interval(float(point[1]), float(bounds[0, 1]), float(bounds[1, 1])),
        median=median,
        std=std,
        final_params=_mean([row.final_params for row in used]),
        peak_params=_mean([row.peak_params for row in used]),
        flops=_mean([row.flops for row in used]),
        seconds=_mean([row.seconds for row in used]),
    )


def check_bootstrap(reps: int, seed: int) -> None:
    """``reps`` in ``REPS_RANGE`` (1 gave an "interval" without its own point) and ``seed`` one
    numpy's legacy generator takes (others failed 13 frames deep)."""
    check_int("reps", reps, *REPS_RANGE)
    check_int("seed", seed, 0, MAX_SEED)


def summarize(
    rows: Sequence[TrialRow], reps: int = DEFAULT_REPS, seed: int = 0
) -> list[ArmSummary]:
    """Per task × arm, then per arm over all tasks: IQM and mean with 95 % intervals and more.

    Args:
        rows: The study's trials; only finished trials (completed or terminated) with a score count.
        reps: Bootstrap resamples per interval.
        seed: Seed of every bootstrap (see the module docstring).

    Returns:
        One summary per task and arm (sorted), then one per arm over all its tasks
        (``task == ALL_TASKS``; with a single task it repeats that task's row).

    Raises:
        ValueError: two finished trials share a task, arm and seed, or ``reps`` or ``seed``
            is out of range (see ``check_bootstrap``).
    """
    check_bootstrap(reps, seed)
    cells = _cells(rows)
    per_task = [_summary(cells, task, arm, [task], reps, seed) for task, arm in sorted(cells)]
    arms = sorted({arm for _, arm in cells})
    by_cell = {(x.task, x.arm): x for x in per_task}
    overall = [
        _overall(cells, by_cell, arm, sorted(_tasks(cells, arm)), reps, seed) for arm in arms
    ]
    return per_task + overall


def _overall(
    cells: Cells,
    by_cell: dict[tuple[str, str], ArmSummary],
    arm: str,
    tasks: list[str],
    reps: int,
    seed: int,
) -> ArmSummary:
    """An arm over all its tasks; over one task, that task's summary (the same bootstrap)."""
    if len(tasks) == 1:
        return replace(by_cell[(tasks[0], arm)], task=ALL_TASKS)
    return _summary(cells, ALL_TASKS, arm, tasks, reps, seed)


def _improvement(
    cells: Cells, task: str, arm: str, baseline: str, tasks: Sequence[str], reps: int, seed: int
) -> Improvement:
    x, _ = _matrix(cells, arm, tasks)
    y, _ = _matrix(cells, baseline, tasks)
    point, bounds = _estimate([x, y], _probability_of_improvement, reps, seed)
    return Improvement(
        task=task,
        arm=arm,
        baseline=baseline,
        tasks=tuple(tasks),
        n_arm=x.shape[0],
        n_baseline=y.shape[0],
        probability=Interval(float(point[0]), float(bounds[0, 0]), float(bounds[1, 0])),
    )


def improvements(
    rows: Sequence[TrialRow], baselines: Sequence[str], reps: int = DEFAULT_REPS, seed: int = 0
) -> list[Improvement]:
    """The probability of improvement of every arm over every baseline arm in the study.

    Args:
        rows: The study's trials; only finished trials (completed or terminated) with a score count.
        baselines: Baseline arms; those without a counted trial are skipped.
        reps: Bootstrap resamples per interval.
        seed: Seed of every bootstrap.

    Returns:
        Per baseline (in the given order) and arm (sorted): one improvement per task both have,
        then one over all those tasks (``task == ALL_TASKS``).

    Raises:
        ValueError: ``baselines`` is a string (its letters were taken for arms: no table at
            all), or see ``summarize``.
    """
    if isinstance(baselines, str):
        raise ValueError(f"baselines must be a list of arms, got the string {baselines!r}")
    check_bootstrap(reps, seed)
    cells = _cells(rows)
    arms = sorted({arm for _, arm in cells})
    found: list[Improvement] = []
    for baseline in dict.fromkeys(baselines):  # in order, each once
        if baseline not in arms:
            continue
        for arm in arms:
            shared = sorted(_tasks(cells, arm) & _tasks(cells, baseline))
            if arm == baseline or not shared:
                continue
            each = [_improvement(cells, t, arm, baseline, [t], reps, seed) for t in shared]
            # Over one task the aggregate is that task's (same scores, same seeded bootstrap).
            overall = (
                replace(each[0], task=ALL_TASKS)
                if len(shared) == 1
                else _improvement(cells, ALL_TASKS, arm, baseline, shared, reps, seed)
            )
            found += [*each, overall]
    return found


MIN_VERDICT_SEEDS = 4
"""The fewest scores per arm and task a verdict is drawn from. Below it the percentile
bootstrap's intervals are too narrow: simulated identical arms (normal scores, 1,000 resamples)
came out "yes" in 46 %, 17 % and 10 % of studies at 1, 2 and 3 seeds, 2–5 % at 4 to 10
(2.5 % is what a 95 % interval promises)."""


def conclusion(probability: Interval, n: int = MIN_VERDICT_SEEDS, reps: int = DEFAULT_REPS) -> str:
    """``yes`` if the interval lies above ½, ``no`` if below, else ``not established``; with
    fewer than ``MIN_VERDICT_SEEDS`` scores per arm and task (``n``, the smaller arm's), or an
    interval from fewer than ``MIN_VERDICT_REPS`` resamples (``reps``), none."""
    if n < MIN_VERDICT_SEEDS:
        return f"too few seeds to tell (n = {n}, a verdict needs {MIN_VERDICT_SEEDS})"
    if reps < MIN_VERDICT_REPS:
        return f"too few resamples to tell (reps = {reps:,}, a verdict needs {MIN_VERDICT_REPS:,})"
    if probability.low > 0.5:
        return "yes"
    if probability.high < 0.5:
        return "no"
    return "not established"


def _verdict(question: str, found: Improvement, reps: int) -> str:
    p = found.probability
    return (
        f"{question} {found.arm} vs {found.baseline}: "
        f"P(improvement) = {p.point:.2f} (95 % CI {p.low:.2f}–{p.high:.2f}) over "
        f"{len(found.tasks)} task(s), n = {found.n_arm} vs {found.n_baseline} per task: "
        f"{conclusion(p, min(found.n_arm, found.n_baseline), reps)}"
    )


def verdicts(found: Sequence[Improvement], roles: VerdictRoles, reps: int) -> list[str]:
    """One line per comparison that answers one of Esper's two questions, over all tasks.

    Q1 (``Q_GROWTH``) compares every growing arm with the static-matched arm of its own size
    (``roles.matched``); Q2 (``Q_LEARNED``) every learned arm with every hand-written one. A
    line appears only when ``found`` holds that comparison over all tasks; ``reps`` is the
    resamples its intervals were drawn from (``conclusion``).
    """
    overall = sorted((i for i in found if i.task == ALL_TASKS), key=lambda i: (i.arm, i.baseline))
    growth = [
        _verdict(f"Q1 {Q_GROWTH}", i, reps) for i in overall if (i.arm, i.baseline) in roles.matched
    ]
    learned = [
        _verdict(f"Q2 {Q_LEARNED}", i, reps)
        for i in overall
        if i.arm in roles.learned and i.baseline in roles.handwritten
    ]
    return growth + learned


# ------------------------------------------------------------------------------ profiles


def _score_distribution(scores: Scores, taus: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """rliable's score distribution (its default profile function): per τ, the fraction of
    ``scores`` above τ: the same count divided by the same size, without rliable's
    ``np.vectorize`` over the τs (11 s of a 5-task, 5-arm study's report at 2,000
    resamples)."""
    return np.count_nonzero(scores.ravel() > taus[:, None], axis=1) / scores.size


@dataclass(frozen=True)
class Profiles:
    """The arms' score distributions (rliable's performance profiles) over all their tasks.

    Attributes:
        taus: the thresholds τ (``PROFILE_POINTS`` from the lowest score to the highest).
        profiles: per arm (sorted), the fraction of its runs above each τ.
        bands: per arm, the 95 % bootstrap band ``(2, len(taus))`` of its profile.
    """

    taus: npt.NDArray[np.float64]
    profiles: dict[str, npt.NDArray[np.float64]]
    bands: dict[str, npt.NDArray[np.float64]]


def score_profiles(rows: Sequence[TrialRow], reps: int, seed: int) -> Profiles | None:
    """Each arm's score distribution over all its tasks (its common n of lowest seeds) with
    its band; None when no trial counts."""
    cells = _cells(rows)
    arms = sorted({arm for _, arm in cells})
    if not arms:
        return None
    matrices = {arm: _matrix(cells, arm, sorted(_tasks(cells, arm)))[0] for arm in arms}
    every = np.concatenate([m.ravel() for m in matrices.values()])
    taus = np.linspace(every.min(), every.max(), PROFILE_POINTS)
    return Profiles(taus, *_profiles(matrices, taus, reps, seed))


def _profiles(
    matrices: dict[str, Scores], taus: npt.NDArray[np.float64], reps: int, seed: int
) -> tuple[dict[str, npt.NDArray[np.float64]], dict[str, npt.NDArray[np.float64]]]:
    """Each arm's score distribution at ``taus`` and its 95 % bootstrap band."""
    from rliable import library

    with _seeded(seed):
        return library.create_performance_profile(
            matrices, taus, custom_profile_func=_score_distribution, reps=reps
        )
