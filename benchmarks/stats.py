"""A study's judging: Esper's IQM, probability of improvement and score distribution against
rliable's own.

Every interval of a study's ``results.md`` is a stratified bootstrap; the statistic runs once
per resample (2,000 by default). rliable's ``aggregate_iqm`` and ``probability_of_improvement``
call scipy, whose per-call checks dominated, and its score distribution runs ``np.vectorize``
over the profile's τs; ``esper.study.stats`` computes the same numbers itself. This judges one
synthetic study (``--tasks`` × ``--arms`` × ``--seeds`` scores, two baseline arms) as
``results.md`` and the study report do: ``summarize``, ``improvements`` and the performance
profile plot, both ways, in interleaved rounds alternating which goes first; it checks that
both give the same results to the bit (the plot's PNG byte for byte), and prints each round's
times and the paired ratio rliable / Esper.

The work is numpy on small arrays, in this process only (no torch, no threads of ours).

Usage::

    .venv/bin/python benchmarks/stats.py              # ~3 minutes on 2 cores
    .venv/bin/python benchmarks/stats.py --reps 2000 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from rliable import library, metrics

from esper.leyline.trials import TrialRow
from esper.study import results, stats

Judged = tuple[list[stats.ArmSummary], list[stats.Improvement], bytes]


def _rows(tasks: int, arms: int, seeds: int) -> list[TrialRow]:
    rng = np.random.default_rng(0)
    return [
        TrialRow(
            f"task{t}",
            f"arm{a}",
            s,
            "completed",
            float(rng.normal(80 + a, 3)),
            None,
            1000,
            1000,
            1e9,
            10.0,
            None,
        )
        for t in range(tasks)
        for a in range(arms)
        for s in range(seeds)
    ]


def _rliable_iqm_and_mean(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores)])


def _judge(rows: list[TrialRow], reps: int, with_rliable: bool) -> tuple[float, Judged]:
    """Judge ``rows``; with ``with_rliable`` the bootstrap calls rliable's metric functions."""
    ours = (stats._iqm_and_mean, stats._probability_of_improvement, stats._score_distribution)
    if with_rliable:
        stats._iqm_and_mean = _rliable_iqm_and_mean
        stats._probability_of_improvement = metrics.probability_of_improvement
        stats._score_distribution = library.score_distributions
    try:
        start = time.perf_counter()
        judged = (
            stats.summarize(rows, reps),
            stats.improvements(rows, ["arm0", "arm1"], reps),
            results.profile_plot(rows, reps),
        )
        return time.perf_counter() - start, judged
    finally:
        stats._iqm_and_mean, stats._probability_of_improvement, stats._score_distribution = ours


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--arms", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=500, help="bootstrap resamples (500)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for name in ("tasks", "arms", "seeds", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        stats.check_bootstrap(args.reps, 0)
    except ValueError as err:
        parser.error(f"--reps: {err}")
    rows = _rows(args.tasks, args.arms, args.seeds)
    print(
        f"study: {args.tasks} tasks × {args.arms} arms × {args.seeds} seeds, "
        f"2 baselines, {args.reps} resamples, {args.rounds} rounds"
    )
    results.import_libraries()
    ratios = []
    for round_ in range(args.rounds):
        order: list[bool] = [True, False] if round_ % 2 == 0 else [False, True]
        times: dict[bool, float] = {}
        judged: dict[bool, Judged] = {}
        for with_rliable in order:
            times[with_rliable], judged[with_rliable] = _judge(rows, args.reps, with_rliable)
        if judged[True] != judged[False]:
            raise SystemExit("the two judgings differ: Esper's statistics are not rliable's")
        ratios.append(times[True] / times[False])
        print(
            f"round {round_}: rliable {times[True]:.2f} s, Esper {times[False]:.2f} s, "
            f"ratio {ratios[-1]:.2f}× (same results)"
        )
    print(
        f"median ratio rliable / Esper: {statistics.median(ratios):.2f}× "
        f"(range {min(ratios):.2f}–{max(ratios):.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
