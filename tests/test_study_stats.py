"""Study statistics against hand-computed oracles: IQM, probability of improvement, bootstrap
coverage, verdicts, and the results files (failed trials listed, never counted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from esper.leyline.trials import MIN_VERDICT_REPS, TrialRow, VerdictRoles
from esper.study.results import (
    UNJUDGED,
    Judging,
    left_out,
    not_counted,
    read_judging,
    rows_digest,
    study_results,
    write_results,
)
from esper.study.spec import read_study
from esper.study.stats import (
    ALL_TASKS,
    MIN_VERDICT_SEEDS,
    ArmSummary,
    Improvement,
    Interval,
    conclusion,
    improvements,
    summarize,
    verdicts,
)

REPS = 50  # enough resamples for the point estimates and degenerate intervals tested here


def _row(
    task: str,
    arm: str,
    seed: int,
    score: float | None,
    status: str = "completed",
    *,
    final_params: int | None = None,
    peak_params: int | None = None,
    flops: float | None = None,
    seconds: float | None = None,
    error: str | None = None,
) -> TrialRow:
    return TrialRow(
        task, arm, seed, status, score, None, final_params, peak_params, flops, seconds, error
    )


def _rows(task: str, arm: str, scores: list[float]) -> list[TrialRow]:
    return [_row(task, arm, seed, score) for seed, score in enumerate(scores)]


def _one(summaries: list[ArmSummary], task: str, arm: str) -> ArmSummary:
    [found] = [s for s in summaries if s.task == task and s.arm == arm]
    return found


# ------------------------------------------------------------------------------ IQM, median, std


def test_iqm_of_eight_scores_is_the_mean_of_the_middle_four() -> None:
    # Sorted: 0 1 | 2 3 6 7 | 8 100 -> (2 + 3 + 6 + 7) / 4 = 4.5; mean 127 / 8 = 15.875.
    scores = [7.0, 1.0, 8.0, 3.0, 100.0, 2.0, 6.0, 0.0]  # accuracies: TrialRow keeps [0, 100]
    s = _one(summarize(_rows("t", "a", scores), reps=REPS), "t", "a")
    assert s.n == 8
    assert s.iqm.point == pytest.approx(4.5)
    assert s.mean.point == pytest.approx(15.875)
    assert s.median == pytest.approx(4.5)  # (3 + 6) / 2
    assert s.std == pytest.approx(float(np.std(scores, ddof=1)))
    assert s.iqm.low <= s.iqm.point <= s.iqm.high


def test_iqm_with_n_not_divisible_by_four_trims_floor_n_over_four() -> None:
    # n = 7: ⌊7/4⌋ = 1 cut from each end: 1 | 2 3 4 5 10 | 100 -> 24 / 5 = 4.8.
    scores = [10.0, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0]
    s = _one(summarize(_rows("t", "a", scores), reps=REPS), "t", "a")
    assert s.iqm.point == pytest.approx(4.8)
    assert s.iqm.point == pytest.approx(scipy.stats.trim_mean(scores, 0.25))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 9, 10, 11])
def test_iqm_matches_scipy_trim_mean(n: int) -> None:
    scores = np.random.default_rng(n).normal(80.0, 5.0, n).tolist()
    s = _one(summarize(_rows("t", "a", scores), reps=REPS), "t", "a")
    assert s.iqm.point == pytest.approx(scipy.stats.trim_mean(scores, 0.25))
    assert s.median == pytest.approx(float(np.median(scores)))
    assert s.std is None if n == 1 else s.std == pytest.approx(float(np.std(scores, ddof=1)))


def test_over_all_tasks_uses_the_common_n_of_lowest_seeds() -> None:
    # Task x has seeds 0-2, task y seeds 0-1: the aggregate takes seeds 0-1 of both.
    rows = [
        *_rows("x", "a", [10.0, 20.0, 90.0]),
        *_rows("y", "a", [50.0, 70.0]),
        _row("x", "b", 0, 1.0, final_params=100, peak_params=300, flops=2e9, seconds=4.0),
        _row("y", "b", 0, 3.0, final_params=200, peak_params=None, flops=None, seconds=6.0),
    ]
    summaries = summarize(rows, reps=REPS)
    a = _one(summaries, ALL_TASKS, "a")
    assert (a.tasks, a.n, a.unused) == (("x", "y"), 2, 1)
    assert a.mean.point == pytest.approx((15.0 + 60.0) / 2)  # the mean of the task means
    assert a.median == pytest.approx(37.5)  # rliable: the median of the task means
    assert a.iqm.point == pytest.approx(scipy.stats.trim_mean([10.0, 20.0, 50.0, 70.0], 0.25))
    assert a.std is None  # pooled over tasks it would mix task difficulty with seed noise
    b = _one(summaries, ALL_TASKS, "b")
    assert (b.final_params, b.peak_params, b.flops, b.seconds) == (150.0, 300.0, 2e9, 5.0)
    assert _one(summaries, "x", "a").n == 3  # per task nothing is left out


# ------------------------------------------------------------------------------ bootstrap


def test_mean_interval_covers_the_true_mean_near_the_nominal_rate() -> None:
    # 200 samples of n = 20 from N(70, 2²), one per task: the 95 % percentile intervals of the
    # mean should cover 70 about 93 % of the time (the percentile bootstrap is a little short
    # at n = 20; measured: 0.92). 100 resamples per interval keep this test near 6 s.
    rng = np.random.default_rng(1)
    rows = [
        _row(f"t{i:03d}", "a", seed, float(rng.normal(70.0, 2.0)))
        for i in range(200)
        for seed in range(20)
    ]
    per_task = [s for s in summarize(rows, reps=100) if s.task != ALL_TASKS]
    coverage = np.mean([s.mean.low <= 70.0 <= s.mean.high for s in per_task])
    assert len(per_task) == 200
    assert 0.88 <= coverage <= 0.99


def test_bootstrap_is_seeded_and_leaves_numpy_global_rng_alone() -> None:
    rows = _rows("t", "a", [1.0, 5.0, 2.0, 8.0, 3.0])
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    first = summarize(rows, reps=REPS, seed=7)
    assert np.random.random() == expected  # the caller's stream continues where it was
    assert summarize(rows, reps=REPS, seed=7) == first
    assert summarize(rows, reps=REPS, seed=8) != first


# ------------------------------------------------------------------------------ improvement


def test_probability_of_improvement_by_hand() -> None:
    rows = [
        # Task p: the arm is clearly better: P = 1 and every resample says so.
        *_rows("p", "arm", [10.0, 11.0, 12.0]),
        *_rows("p", "base", [1.0, 2.0]),
        # Task q: arm 1 2 4 vs base 1 3: of 6 pairs, 2>1, 4>1, 4>3 win and 1=1 ties:
        # (3 + ½) / 6 = 7/12.
        *_rows("q", "arm", [1.0, 2.0, 4.0]),
        *_rows("q", "base", [1.0, 3.0]),
    ]
    found = {(i.task, i.arm): i for i in improvements(rows, ["base"], reps=REPS)}
    assert set(found) == {("p", "arm"), ("q", "arm"), (ALL_TASKS, "arm")}
    assert found["p", "arm"].probability == Interval(1.0, 1.0, 1.0)
    assert found["q", "arm"].probability.point == pytest.approx(7 / 12)
    overall = found[ALL_TASKS, "arm"]
    assert overall.probability.point == pytest.approx((1.0 + 7 / 12) / 2)
    assert (overall.tasks, overall.n_arm, overall.n_baseline) == (("p", "q"), 3, 2)


def test_probability_of_improvement_of_the_same_distribution_is_one_half() -> None:
    # The same scores in another seed order: 3 wins, 3 ties, 3 losses of 9 -> (3 + 1.5) / 9.
    rows = [*_rows("t", "a", [1.0, 2.0, 3.0]), *_rows("t", "b", [2.0, 3.0, 1.0])]
    found = {(i.task, i.arm, i.baseline): i for i in improvements(rows, ["b", "a"], reps=REPS)}
    assert found["t", "a", "b"].probability.point == pytest.approx(0.5)
    assert found["t", "b", "a"].probability.point == pytest.approx(0.5)
    assert found["t", "a", "b"].probability.low < 0.5 < found["t", "a", "b"].probability.high


def test_baselines_without_trials_are_skipped() -> None:
    rows = [*_rows("t", "a", [1.0, 2.0]), _row("t", "b", 0, None, "failed", error="boom")]
    assert improvements(rows, ["b", "missing"], reps=REPS) == []


def _random_scores(rng: np.random.Generator, n: int, k: int, ties: bool) -> np.ndarray:
    if ties:  # a few accuracy levels, so many scores tie
        return rng.integers(70, 75, (n, k)).astype(np.float64)
    return rng.normal(80.0, 3.0, (n, k))


@pytest.mark.parametrize("ties", [False, True])
def test_statistics_equal_rliables_to_the_bit(ties: bool) -> None:
    # The IQM and the probability of improvement run once per resample; Esper computes them
    # itself (rliable's call scipy, whose checks cost minutes per study). Oracle: rliable.
    from rliable import metrics

    from esper.study import stats

    rng = np.random.default_rng(int(ties))
    for _ in range(300):
        n, m, k = (int(v) for v in rng.integers(1, 10, 3))
        x, y = _random_scores(rng, n, k, ties), _random_scores(rng, m, k, ties)
        for a, b in ((x, y), (x, x.copy()), (y, x)):
            assert stats._probability_of_improvement(a, b) == (
                metrics.probability_of_improvement(a, b)
            )
        assert stats._iqm(x) == metrics.aggregate_iqm(x)
        assert stats._iqm_and_mean(x)[1] == metrics.aggregate_mean(x)


def test_performance_profiles_equal_rliables_to_the_bit() -> None:
    from rliable import library

    from esper.study import stats

    rng = np.random.default_rng(5)
    matrices = {
        "a": rng.integers(60, 70, (4, 3)).astype(np.float64),
        "b": rng.normal(65.0, 3.0, (5, 3)),
    }
    taus = np.linspace(55.0, 75.0, 21)
    with stats._seeded(9):
        expected = library.create_performance_profile(matrices, taus, reps=REPS)
    profiles, bands = stats._profiles(matrices, taus, REPS, 9)
    for arm in matrices:
        assert np.array_equal(profiles[arm], expected[0][arm])
        assert np.array_equal(bands[arm], expected[1][arm])
    assert not np.array_equal(bands["a"][0], bands["a"][1])  # a band, not a line


def test_judging_equals_rliables_own_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same study judged with rliable's metric functions in the bootstrap: every point and
    # every interval bound the same to the bit.
    from rliable import metrics

    from esper.study import stats

    rng = np.random.default_rng(3)
    rows = [
        _row(task, arm, seed, float(rng.integers(60, 66)))
        for task in ("t", "u")
        for arm in ("a", "b", "c")
        for seed in range(4 + (arm == "c"))
    ]
    ours = (summarize(rows, reps=REPS), improvements(rows, ["a", "b"], reps=REPS))
    monkeypatch.setattr(
        stats,
        "_iqm_and_mean",
        lambda s: np.array([metrics.aggregate_iqm(s), metrics.aggregate_mean(s)]),
    )
    monkeypatch.setattr(stats, "_probability_of_improvement", metrics.probability_of_improvement)
    assert ours == (summarize(rows, reps=REPS), improvements(rows, ["a", "b"], reps=REPS))
    assert len(ours[1]) == 2 * 2 * 3  # two baselines × two other arms × (two tasks + overall)


# ------------------------------------------------------------------------------ verdicts


def _improvement(
    arm: str, baseline: str, p: tuple[float, float, float], task: str = ALL_TASKS
) -> Improvement:
    return Improvement(task, arm, baseline, ("t",), 5, 5, Interval(*p))


ROLES = VerdictRoles(
    matched=frozenset({("heuristic", "static-matched"), ("random", "static-matched")}),
    learned=frozenset({"ppo", "ppo-shaped"}),
    handwritten=frozenset({"heuristic"}),
)


def test_verdicts_answer_the_two_questions() -> None:
    lines = verdicts(
        [
            _improvement("heuristic", "static-matched", (0.8, 0.6, 0.95)),  # Q1 yes
            _improvement("random", "static-matched", (0.2, 0.05, 0.4)),  # Q1 no
            _improvement("static", "static-matched", (0.1, 0.0, 0.2)),  # not growing
            _improvement("ppo-shaped", "heuristic", (0.55, 0.45, 0.7)),  # Q2 not established
            _improvement("ppo", "heuristic", (0.6, 0.5, 0.7)),  # low = ½ is not above ½
            _improvement("random", "heuristic", (0.9, 0.8, 1.0)),  # not learned
            _improvement("ppo", "static-matched", (0.9, 0.8, 1.0), task="t"),  # one task only
        ],
        ROLES,
        MIN_VERDICT_REPS,
    )
    assert lines == [
        "Q1 does growing beat a static network per parameter? heuristic vs static-matched: "
        "P(improvement) = 0.80 (95 % CI 0.60–0.95) over 1 task(s), n = 5 vs 5 per task: yes",
        "Q1 does growing beat a static network per parameter? random vs static-matched: "
        "P(improvement) = 0.20 (95 % CI 0.05–0.40) over 1 task(s), n = 5 vs 5 per task: no",
        "Q2 can a learned controller grow better than a hand-written one? ppo vs heuristic: "
        "P(improvement) = 0.60 (95 % CI 0.50–0.70) over 1 task(s), n = 5 vs 5 per task: "
        "not established",
        "Q2 can a learned controller grow better than a hand-written one? ppo-shaped vs "
        "heuristic: P(improvement) = 0.55 (95 % CI 0.45–0.70) over 1 task(s), n = 5 vs 5 per "
        "task: not established",
    ]


def test_verdicts_from_trials() -> None:
    rows = [
        *_rows("t", "static-matched", [80.0, 81.0, 82.0, 83.0]),
        *_rows("t", "heuristic", [90.0, 91.0, 92.0, 93.0]),  # beats static-matched in every pair
        *_rows("t", "ppo", [70.0, 71.0, 72.0, 73.0]),  # loses to heuristic in every pair
    ]
    roles = VerdictRoles(
        matched=frozenset({("heuristic", "static-matched"), ("ppo", "static-matched")}),
        learned=frozenset({"ppo"}),
        handwritten=frozenset({"heuristic"}),
    )
    reps = MIN_VERDICT_REPS
    lines = verdicts(improvements(rows, ["static-matched", "heuristic"], reps=reps), roles, reps)
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["yes", "no", "no"]
    assert [line.split("? ")[1].split(":")[0] for line in lines] == [
        "heuristic vs static-matched",
        "ppo vs static-matched",
        "ppo vs heuristic",
    ]


def _false_yes(rng: np.random.Generator, n: int, reps: int, studies: int = 2000) -> float:
    """How often identical arms (normal scores, ``n`` per arm, ``studies`` studies) get a "yes":
    the probability of improvement resampled ``reps`` times as ``improvements`` does (arms
    apart), its 2.5th percentile above ½."""
    x, y = rng.normal(size=(2, studies, n))
    picks = rng.integers(0, n, size=(2, studies, reps, n))
    bx = np.take_along_axis(x[:, None, :], picks[0], axis=2)
    by = np.take_along_axis(y[:, None, :], picks[1], axis=2)
    pairs = bx[..., :, None] - by[..., None, :]
    p = (pairs > 0).mean(axis=(-1, -2)) + 0.5 * (pairs == 0).mean(axis=(-1, -2))
    return float((np.percentile(p, 2.5, axis=1) > 0.5).mean())


def test_too_few_seeds_give_no_verdict() -> None:
    """One seed gave "P(improvement) = 1.00 (95 % CI 1.00–1.00) ... yes" (a walk-through): the
    percentile bootstrap's intervals are too narrow below ``MIN_VERDICT_SEEDS`` scores per arm.
    Oracle for the minimum: identical arms simulated with numpy (normal scores, 2,000 studies
    each, the probability of improvement resampled as ``improvements`` does, arms apart, 500
    times), whose false "yes" rate a 95 % interval should keep near 2.5 %."""
    rng = np.random.default_rng(3)
    assert _false_yes(rng, MIN_VERDICT_SEEDS - 1, 500) > 0.07  # what the minimum keeps out
    assert _false_yes(rng, MIN_VERDICT_SEEDS, 500) < 0.05
    roles = VerdictRoles(matched=frozenset({("grow", "static-matched")}))
    rows = [*_rows("t", "grow", [90.0, 91.0, 92.0]), *_rows("t", "static-matched", [80.0] * 3)]
    [line] = verdicts(improvements(rows, ["static-matched"], reps=REPS), roles, REPS)
    assert line.endswith(
        "(95 % CI 1.00–1.00) over 1 task(s), n = 3 vs 3 per task: too few seeds to tell (n = 3, "
        "a verdict needs 4)"
    )
    assert conclusion(Interval(1.0, 1.0, 1.0), MIN_VERDICT_SEEDS) == "yes"


def test_too_few_resamples_give_no_verdict() -> None:
    """A finished study's reps lowered from 2,000 to 300 turned its line "not established" into
    "no" (an independent check: P = 0.20, the interval's top 0.60 at 2,000 resamples, 0.48 at
    300). Oracle for the minimum: identical arms simulated with numpy (normal scores, 4 seeds,
    2,000 studies, arms resampled apart as ``improvements`` does), whose false "yes" rate a
    95 % interval should keep near 2.5 %: far above it at 10 resamples, near it at the
    minimum."""
    rng = np.random.default_rng(5)
    assert _false_yes(rng, MIN_VERDICT_SEEDS, 10) > 0.08  # what the minimum keeps out
    assert _false_yes(rng, MIN_VERDICT_SEEDS, MIN_VERDICT_REPS) < 0.045
    found = [_improvement("grow", "static-matched", (0.9, 0.8, 1.0))]
    roles = VerdictRoles(matched=frozenset({("grow", "static-matched")}))
    [line] = verdicts(found, roles, MIN_VERDICT_REPS - 1)
    assert line.endswith("n = 5 vs 5 per task: too few resamples to tell (reps = 999, a verdict "
                         "needs 1,000)")  # fmt: skip
    assert verdicts(found, roles, MIN_VERDICT_REPS)[0].endswith(": yes")


def test_each_growing_arm_is_judged_against_the_static_arm_of_its_own_size() -> None:
    """A PPO arm 10x the heuristic's size was judged against the heuristic-sized static arm, and
    the PPO-sized static arm was reported as a growing arm."""
    found = [
        _improvement("heuristic", "static-matched", (0.8, 0.6, 0.95)),
        _improvement("ppo", "static-matched", (1.0, 1.0, 1.0)),  # not its size
        _improvement("ppo", "static-big", (0.7, 0.55, 0.9)),
        _improvement("static-big", "static-matched", (0.8, 0.6, 0.95)),  # never grows
    ]
    roles = VerdictRoles(
        matched=frozenset({("heuristic", "static-matched"), ("ppo", "static-big")})
    )
    lines = [line.split("? ")[1] for line in verdicts(found, roles, MIN_VERDICT_REPS)]
    assert [line.split(":")[0] for line in lines] == [
        "heuristic vs static-matched",
        "ppo vs static-big",
    ]


def test_verdicts_go_by_what_an_arm_runs_not_by_its_name(tmp_path: Path) -> None:
    """Q2 took arms named ppo… as learned and the arm named heuristic as hand-written, and Q1
    judged every growing arm without a matched arm of its own against the arm named
    static-matched (another arm's size): a ppo arm called "learned" got no verdict, a random
    arm called "ppo-random" got one, and a second heuristic arm was judged per parameter
    against the first one's size."""
    arms = [
        ("hand", 'controller = "heuristic"'),
        ("hand-2", 'controller = "heuristic"'),  # no matched arm of its own size
        ("learned", 'controller = "ppo"\ntraining_seeds = [100]'),
        ("ppo-random", 'controller = "random"'),
        ("static-matched", 'controller = "static-matched"\nmatch = "hand"'),
        ("heuristic", 'controller = "static"'),  # a name is only a name
    ]
    body = 'out = "o"\ntasks = ["synthetic"]\n' + "".join(
        f'[[arms]]\nname = "{name}"\n{table}\n' for name, table in arms
    )
    (tmp_path / "s.toml").write_text(body)
    spec, _ = read_study(tmp_path / "s.toml")
    roles = spec.verdict_roles()
    assert roles.baselines == ("hand", "hand-2", "static-matched")
    names = [name for name, _ in arms]
    found = [_improvement(a, b, (0.9, 0.8, 1.0)) for a in names for b in names if a != b]
    lines = [line.split("? ")[1].split(":")[0] for line in verdicts(found, roles, REPS)]
    assert lines == [
        "hand vs static-matched",
        "learned vs hand",
        "learned vs hand-2",
    ]


# ------------------------------------------------------------------------------ rows and files


def test_a_duplicate_completed_trial_or_a_nan_score_fails_loudly() -> None:
    with pytest.raises(ValueError, match="one trial per task, arm and seed"):
        summarize([_row("t", "a", 0, 1.0), _row("t", "a", 0, 2.0)])
    with pytest.raises(ValueError, match="not a number"):
        _row("t", "a", 0, float("nan"))


def test_write_results_writes_four_files_and_lists_failed_trials(tmp_path: Path) -> None:
    rows = [
        *[_row("digits", "static-matched", s, 80.0 + s, final_params=1000) for s in range(3)],
        *[_row("digits", "heuristic", s, 90.0 + s, peak_params=1500) for s in range(3)],
        # A failed trial that recorded a score, and a completed one without: neither counts.
        _row("digits", "heuristic", 3, 0.0, "failed", error="RuntimeError: diverged\nTraceback"),
        _row("digits", "static-matched", 4, None, error=None),
    ]
    out = tmp_path / "study"
    roles = VerdictRoles(matched=frozenset({("heuristic", "static-matched")}))
    results = write_results(out, rows, baselines=["static-matched"], reps=REPS, roles=roles)

    assert sorted(p.name for p in out.iterdir()) == [
        "interval_estimates.png",
        "performance_profile.png",
        "results.json",
        "results.md",
    ]
    judging = read_judging(out)  # how they were computed, to compute them again alike
    assert judging == Judging(
        ("static-matched",), (("heuristic", "static-matched"),), (), (), REPS, 0, 0,
        rows_digest(rows),
    )  # fmt: skip
    assert study_results(rows, judging) == results
    with pytest.raises(ValueError, match="is not an"):
        Judging((), (("heuristic",),), (), (), REPS, 0, 0, "")
    for png in ("interval_estimates.png", "performance_profile.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    heuristic = _one(results.summaries, "digits", "heuristic")
    assert (heuristic.n, heuristic.mean.point) == (3, pytest.approx(91.0))  # 0.0 left out
    assert _one(results.summaries, "digits", "static-matched").n == 3
    assert [(r.arm, r.seed) for r in results.excluded] == [
        ("heuristic", 3),
        ("static-matched", 4),
    ]

    md = (out / "results.md").read_text()
    assert "| digits | heuristic | 3 | 91.00 [" in md
    assert "| digits | static-matched | 3 | 81.00 [" in md
    assert "| 1,000 | — |" in md  # static-matched's final params; peak params not recorded
    assert "| all tasks (1) | heuristic | 3 |" in md
    assert "| digits | heuristic | static-matched | 3 | 3 | 1.00 [1.00, 1.00] |" in md
    assert "- " + results.verdicts[0] in md
    assert results.verdicts[0].endswith(": too few seeds to tell (n = 3, a verdict needs 4)")
    assert "| digits | heuristic | 3 | failed | RuntimeError: diverged |" in md
    assert "| digits | static-matched | 4 | completed | completed without a score |" in md
    assert "50 resamples" in md
    assert not_counted(results) == (
        "2 trial(s) not counted (failed, or finished without a score): digits/heuristic/seed 3 "
        "(RuntimeError: diverged); digits/static-matched/seed 4 (completed without a score)"
    )
    assert not_counted(results, named=1).endswith("; and 1 more (results.md lists them)")


def test_scores_left_out_of_an_aggregate_are_said_in_one_sentence_each() -> None:
    """Only results.md's Method said that an arm over all tasks drops the seeds beyond its
    common n; the report and the dashboard take these sentences too."""
    rows = [
        *_rows("t", "a", [1.0, 2.0, 3.0]),
        *_rows("u", "a", [4.0, 5.0]),
        *_rows("t", "b", [1.0]),
    ]
    found = study_results(rows, UNJUDGED)
    assert left_out(found) == [
        "a: over all tasks uses the 2 lowest seeds of each task (1 finished score(s) left out)."
    ]
    assert not_counted(found) is None


def test_write_results_without_a_counted_trial_still_writes_every_file(tmp_path: Path) -> None:
    rows = [_row("t", "a", 0, None, "failed", error="out of memory")]
    results = write_results(tmp_path, rows, baselines=[], reps=REPS)
    assert results.summaries == [] and results.verdicts == []
    md = (tmp_path / "results.md").read_text()
    assert "| t | a | 0 | failed | out of memory |" in md
    assert "No verdict: the study needs a growing arm" in md
    no_score = "## Scores\n\nNo finished trial with a score.\n"
    assert no_score in md
    # its Method said "Every arm had the same n on each of its tasks": there was none
    assert "No finished trial with a score: nothing to aggregate." in md
    assert "Every arm had the same n" not in md
    assert "\nNo arm and baseline arm with counted trials on a task they share.\n" in md
    assert (tmp_path / "performance_profile.png").read_bytes().startswith(b"\x89PNG")
    assert "Results so far" not in md  # a finished study's results are not marked


def test_results_of_an_interrupted_study_say_they_are_so_far(tmp_path: Path) -> None:
    rows = [_row("digits", "heuristic", s, 90.0 + s) for s in range(3)]
    write_results(tmp_path, rows, baselines=[], reps=REPS, unfinished=7)
    md = (tmp_path / "results.md").read_text()
    assert md.splitlines()[2] == (
        "**Results so far: the study was interrupted with 7 trial(s) not finished.** Running it "
        "again completes them."
    )
    assert "| digits | heuristic | 3 | 91.00 [" in md
    # With a learned arm its policy training counts among the trials (it said so always); and
    # the verdict's arms exist but the ppo one has no counted trial yet (it said "the study
    # needs a heuristic arm and a ppo arm").
    roles = VerdictRoles(learned=frozenset({"ppo"}), handwritten=frozenset({"heuristic"}))
    write_results(tmp_path, rows, baselines=[], reps=REPS, unfinished=7, roles=roles)
    md = (tmp_path / "results.md").read_text()
    assert "trial(s) not finished (policy trainings included).** Running it again" in md
    assert (
        "- No verdict yet: the arms that answer the questions (Q2: ppo vs heuristic) have no "
        "counted trials on a task they share." in md
    )


def test_bootstrap_settings_and_baselines_are_checked() -> None:
    """reps=1 gave an "interval" that missed its own point; seed -1 failed 13 frames deep in
    numpy; the string "base" was read as the arms b, a, s, e: no table at all."""
    rows = _rows("t", "a", [50.0, 52.0, 55.0]) + _rows("t", "base", [49.0, 50.0, 51.0])
    assert improvements(rows, ["base"], reps=REPS)
    for reps in (1, 0, True, 2.5):
        with pytest.raises(ValueError, match=r"reps must be an integer in \[10, 100000\]"):
            summarize(rows, reps=reps)  # type: ignore[arg-type]
    for seed in (-1, 2**33, True):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967295\]"):
            improvements(rows, ["base"], reps=REPS, seed=seed)
    with pytest.raises(ValueError, match="a list of arms, got the string 'base'"):
        improvements(rows, "base", reps=REPS)


def test_matched_host_sizes_read_apart_from_their_thousands() -> None:
    """Two host sizes were written "1,490, 1,510": four numbers to the eye."""
    from esper.study.results import matched_cells
    from esper.study.stats import MatchedSize

    sizes = MatchedSize("t", "static-matched", "heuristic", 1500, (1490, 1510))
    assert matched_cells(sizes)[3:] == ["1,500", "1,490; 1,510"]
    assert matched_cells(MatchedSize("t", "m", "h", None, ()))[3:] == ["—", "—"]


def test_training_flops_are_written_in_one_form() -> None:
    """The format .3g wrote a static arm's 639,959,040 FLOPs as 6.4e+08 beside 3.41e+08 (an
    independent check of a study's results.md)."""
    from esper.study.results import SCORE_COLUMNS, score_cells

    rows = [
        *[_row("t", "static", s, 80.0, flops=639_959_040.0) for s in range(2)],
        *[_row("t", "grow", s, 90.0, flops=341_311_488.0) for s in range(2)],
    ]
    column = SCORE_COLUMNS.index("training FLOPs")
    cells = {s.arm: score_cells(s)[column] for s in summarize(rows, reps=REPS) if s.task == "t"}
    assert cells == {"static": "6.40e+08", "grow": "3.41e+08"}
