"""A study's results: ``results.md``, its two plots and ``results.json``, and the cells and
notes every page shows them with.

``esper study`` writes the four files (``RESULTS_FILES``) together, atomically, when an
invocation ends (``write_results``); ``results.json`` (``Judging``) says how ``results.md``
was computed, so that the study report (``esper.study.report``) and the dashboard's study page
(``esper.cli.dashboard.study_table``) compute the same numbers (``study_results``) and say
when they cannot (``judging_of``). The statistics themselves are ``esper.study.stats``'.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from esper.leyline import pages
from esper.leyline.config import check_int, require
from esper.leyline.files import atomic_write_all, remove_temporaries
from esper.leyline.pages import TextTable
from esper.leyline.trials import (
    DEFAULT_REPS,
    FINISHED,
    INTERVALS_FILE,
    JUDGING_FILE,
    PROFILE_FILE,
    RESULTS_FILE,
    RESULTS_FILES,
    TRIALS_FILE,
    Score,
    TrialRow,
    VerdictRoles,
    score_label,
)
from esper.nissa import record
from esper.nissa.log import counted, display
from esper.study.stats import (
    ALL_TASKS,
    CONFIDENCE,
    ArmSummary,
    Improvement,
    Interval,
    MatchedSize,
    check_bootstrap,
    improvements,
    matched_sizes,
    score_profiles,
    summarize,
    verdicts,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# rliable (with arch, scipy, pandas and seaborn behind it, ~2 s) and matplotlib (~0.7 s) are
# imported where they are used (or, by a study about to run trials, ``import_libraries``): a
# study's --dry-run or bad input, and the dashboard's lists of studies, never need them.


def import_libraries() -> None:
    """Import rliable and matplotlib now, before a study's trials start: a Ctrl-C landing in
    their import as the results so far are written left scipy half-imported (an
    ``AttributeError`` from rliable, and no results), and so did one landing in a trial's data
    loading (scikit-learn imports scipy) in the driver."""
    import matplotlib.backends.backend_agg
    import matplotlib.figure  # noqa: F401
    from rliable import library, metrics, plot_utils  # noqa: F401


_CI = f"{round(CONFIDENCE * 100)} % CI"


SCORE_COLUMNS = (
    "task",
    "arm",
    "n",
    f"IQM [{_CI}]",
    f"mean [{_CI}]",
    "median",
    "std",
    "final params",
    "peak params",
    "training FLOPs",
    "seconds",
)
"""The scores table's columns (``score_cells``), in ``results.md`` and a study's report."""


IMPROVEMENT_COLUMNS = ("task", "arm", "baseline", "n arm", "n baseline", f"P(improvement) [{_CI}]")
"""The probability-of-improvement table's columns (``improvement_cells``), in ``results.md``
and a study's report."""


IMPROVEMENT_SENTENCE = (
    "P(arm > baseline) + ½ P(arm = baseline) for a run of each drawn at random, per task; over "
    "all tasks, averaged over the tasks both arms have, each arm at its common n on those tasks "
    "(its lowest seeds), so it can differ from the mean of the rows."
)
"""What the probability-of-improvement table holds."""


MATCHED_COLUMNS = ("task", "arm", "matches", "median final params of that arm", "host params")
"""The matched-sizes table's columns (``matched_cells``), in ``results.md`` and a study's
report."""


MATCHED_SENTENCE = (
    "A static-matched arm's host is the width whose parameter count is nearest the median final "
    "parameters of the arm it matches (the widths step: the nearest can be far)."
)


FIGURE_WIDTH_IN = 8.0
"""``results.md``'s figures: 800 px wide, readable in a browser or a markdown viewer."""


# ----------------------------------------------------- results and their judging


@dataclass(frozen=True)
class StudyResults:
    """Everything ``results.md`` shows, as ``write_results`` computed it (``no_verdict``: what
    its verdicts say when there is none)."""

    summaries: list[ArmSummary]
    improvements: list[Improvement]
    verdicts: list[str]
    excluded: list[TrialRow]
    matched: list[MatchedSize]
    no_verdict: str


@dataclass(frozen=True)
class Judging:
    """How a study's results were computed (``results.json``, written with ``results.md``):
    what its report needs to show the same numbers and verdicts, and that they are results so
    far.

    Attributes:
        baselines: the study's ``baselines`` (the verdicts' own are added: ``roles``).
        matched, learned, handwritten: the study's ``VerdictRoles``.
        reps, seed: the bootstrap's resamples per interval and seed.
        unfinished: the study's trials not finished when it was written (0: none).
        trials: the SHA-256 of the trials it judged (``rows_digest``): a ``trials.csv``
            written after it (a study stopped between the two) holds others.

    Raises:
        ValueError: a matched pair that is not two arms, or a count out of range.
    """

    baselines: tuple[str, ...]
    matched: tuple[tuple[str, str], ...]
    learned: tuple[str, ...]
    handwritten: tuple[str, ...]
    reps: int
    seed: int
    unfinished: int
    trials: str

    def __post_init__(self) -> None:
        for pair in self.matched:
            require(len(pair) == 2, f"matched {list(pair)} is not an (arm, matched arm) pair")
        check_bootstrap(self.reps, self.seed)
        check_int("unfinished", self.unfinished, 0)

    @property
    def roles(self) -> VerdictRoles:
        return VerdictRoles(frozenset(self.matched), frozenset(self.learned),
                            frozenset(self.handwritten))  # fmt: skip


def rows_digest(rows: Sequence[TrialRow]) -> str:
    """The SHA-256 of ``rows`` in order (``Judging.trials``), equal for the rows ``trials.csv``
    reads back."""
    text = json.dumps([asdict(row) for row in rows], sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_judging(directory: Path) -> Judging | None:
    """The ``results.json`` in ``directory`` (None: there is none, as in a study whose results
    an Esper before it wrote, or one stopped before it wrote its results).

    Raises:
        RunRecordError: it cannot be read, or is not a ``Judging``.
    """
    return record.read_record(directory / JUDGING_FILE, Judging, "an Esper study's judging")


def judging_of(directory: Path, rows: Sequence[TrialRow]) -> tuple[Judging, str | None, bool]:
    """How the study's ``results.md`` was computed (its ``results.json``), for a page that shows
    the same numbers of ``rows`` (its ``trials.csv``): the judging, a warning where the page
    cannot show the same, and whether ``results.md`` judged these very trials.

    Without a readable ``results.json``: ``UNJUDGED`` (no verdicts). One that judged other
    trials (a study stopped between writing ``trials.csv`` and its results): its settings, but
    not its count of trials not finished, which was another invocation's."""
    try:
        judging = read_judging(directory)
        why = "there is none (results an older Esper wrote, or a study stopped before them)"
    except record.RunRecordError as err:
        judging, why = None, str(err)
    if judging is None:
        missing = (
            f"no probabilities of improvement or verdicts: they need {JUDGING_FILE}, and "
            f"{why}; `esper study` on the study file writes it (running only what is not "
            "finished)"
        )
        return UNJUDGED, missing, False
    if judging.trials != rows_digest(rows):
        stale = (
            f"{RESULTS_FILE} and {JUDGING_FILE} are of other trials than {TRIALS_FILE} holds "
            "(a study stopped between writing them, or trials.csv edited since): this page is "
            "of trials.csv; `esper "
            "study` on the study file writes them again"
        )
        return replace(judging, unfinished=0), stale, False
    return judging, None, True


def so_far(judging: Judging, running: bool = False) -> tuple[str, str]:
    """The banner over the results of a study whose last invocation stopped with trials not
    finished, in two parts: what to stress, the rest (policy trainings count among the trials
    where the study has learned arms). ``running``: the study runs again now
    (``study_running``), and its results are written again when it ends."""
    policies = " (policy trainings included)" if judging.learned else ""
    left = f"{judging.unfinished} trial(s) not finished{policies}"
    if running:
        return (
            "Results so far: the study is running again.",
            f"These are of its last invocation, which stopped with {left}; they are written "
            "again when this one ends.",
        )
    return (
        f"Results so far: the study was interrupted with {left}.",
        "Running it again completes them.",
    )


def no_verdict(roles: VerdictRoles) -> str:
    """What the verdicts say when none can be given: what the study lacks, or, where it has the
    arms, that they have no counted trials on a task they share yet."""
    pairs = [f"Q1: {grown} vs {matched}" for grown, matched in sorted(roles.matched)]
    pairs += [f"Q2: {a} vs {b}" for a in sorted(roles.learned) for b in sorted(roles.handwritten)]
    if not pairs:
        return (
            "No verdict: the study needs a growing arm and a static-matched arm matching it "
            "(Q1), or a heuristic arm and a ppo arm (Q2), with counted trials."
        )
    return (
        f"No verdict yet: the arms that answer the questions ({'; '.join(pairs)}) have no "
        "counted trials on a task they share."
    )


NO_COMPARISON = "No arm and baseline arm with counted trials on a task they share."
"""What the probability-of-improvement table says when it has no row."""


NO_SCORE = "No finished trial with a score."
"""What the scores table says when it has no row."""


UNJUDGED = Judging((), (), (), (), DEFAULT_REPS, 0, 0, "")
"""The judging of a study without a readable ``results.json``: no baselines or verdict roles,
the default bootstrap."""


# ----------------------------------------------------------- cells and sentences


def _interval(value: Interval) -> str:
    return f"{value.point:.2f} [{value.low:.2f}, {value.high:.2f}]"


def score_cells(s: ArmSummary) -> list[str]:
    """One row of the scores table (``SCORE_COLUMNS``) as text; a missing value is "—", not 0
    (STYLE 12)."""
    return [
        _task_label(s.task, s.tasks),
        s.arm,
        str(s.n),
        _interval(s.iqm),
        _interval(s.mean),
        f"{s.median:.2f}",
        display(s.std, ".2f"),
        display(s.final_params, ",.0f"),
        display(s.peak_params, ",.0f"),
        display(s.flops, ".2e"),  # one form: ".3g" gave 6.4e+08 beside 3.41e+08
        display(s.seconds, ".1f"),
    ]


def improvement_cells(i: Improvement) -> list[str]:
    """One row of the probability-of-improvement table (``IMPROVEMENT_COLUMNS``) as text."""
    label = _task_label(i.task, i.tasks)
    return [label, i.arm, i.baseline, str(i.n_arm), str(i.n_baseline), _interval(i.probability)]


def _task_label(task: str, tasks: Sequence[str]) -> str:
    return f"{ALL_TASKS} ({len(tasks)})" if task == ALL_TASKS else task


def _why_excluded(row: TrialRow) -> str:
    if row.error:
        return row.error.strip().splitlines()[0]
    return f"{row.status} without a score" if row.status in FINISHED else "no error recorded"


def score_sentence(score: Score | None) -> str:
    """What a study's scores are, as its ``results.md`` and report say (None: its
    ``study.json``, which says, cannot be read)."""
    if score is None:
        return (
            "Scores are test or validation accuracy (%): the study.json that says cannot be read."
        )
    if score == "validation":
        return (
            'Scores are validation accuracy (%) of the final model (score = "validation"), '
            "to choose by: every trial's test accuracy is still in its summary, but a choice "
            "made on it would leak the test split into the results that report the choice."
        )
    return "Scores are test accuracy (%) of the final model."


# -------------------------------------------------------------------- results.md


def _markdown(
    results: StudyResults,
    rows: Sequence[TrialRow],
    judging: Judging,
    score: Score = "test",
    revisions: str | None = None,
) -> str:
    scored = [row for row in rows if row.counts]
    stressed, rest = so_far(judging)
    banner = f"**{stressed}** {rest}"
    tables = (scores_table(results), *findings_tables(results))
    lines = [
        "# Study results",
        "",
        *([banner, ""] if judging.unfinished else []),
        f"{counted(len(rows), 'trial')}: {len(scored)} finished with a score (completed, or "
        "ended by "
        "the governor: an outcome of its arm), "
        f"{len(results.excluded)} excluded (listed below). {score_sentence(score)}",
        "",
        *(line for table in tables for line in table.markdown()),
        "## Verdicts",
        "",
        *(f"- {verdict}" for verdict in results.verdicts or [results.no_verdict]),
        "",
        *_excluded(results).markdown(),
        "## How the numbers were computed",
        "",
        *_method(results, judging.reps, judging.seed),
        "",
        *([f"Esper's git revision: {revisions} (study.json records each invocation's).", ""]
          if revisions else []),
    ]  # fmt: skip
    return "\n".join(lines)


def scores_table(results: StudyResults) -> TextTable:
    """The scores, one row per arm and task (and over all tasks)."""
    rows = tuple(tuple(score_cells(s)) for s in results.summaries)
    return TextTable("results", "Scores", "", SCORE_COLUMNS, rows, 2, NO_SCORE)


def findings_tables(results: StudyResults) -> tuple[TextTable, ...]:
    """What the judging adds to the scores: the matched sizes (where the study has a
    static-matched arm) and the probabilities of improvement."""
    matched = tuple(tuple(matched_cells(m)) for m in results.matched)
    improvements = tuple(tuple(improvement_cells(i)) for i in results.improvements)
    tables = (
        TextTable("matched", "Matched sizes", MATCHED_SENTENCE, MATCHED_COLUMNS, matched, 3, ""),
        TextTable(
            "improvements",
            "Probability of improvement",
            IMPROVEMENT_SENTENCE,
            IMPROVEMENT_COLUMNS,
            improvements,
            3,
            NO_COMPARISON,
        ),
    )
    return tuple(table for table in tables if table.shown)


def matched_cells(m: MatchedSize) -> list[str]:
    """One row of the matched-sizes table (``MATCHED_COLUMNS``) as text: several host sizes
    apart by "; " (", " would read as thousands: "1,490, 1,510")."""
    target = "—" if m.target is None else f"{m.target:,}"
    return [m.task, m.arm, m.matches, target, "; ".join(f"{p:,}" for p in m.params) or "—"]


def _excluded(results: StudyResults) -> TextTable:
    rows = tuple((r.task, r.arm, str(r.seed), r.status, _why_excluded(r)) for r in results.excluded)
    columns = ("task", "arm", "seed", "status", "error")
    return TextTable("excluded", "Excluded trials", "", columns, rows, len(columns), "None.")


def left_out(results: StudyResults) -> list[str]:
    """Each arm whose scores over all tasks leave finished scores out (an aggregate takes the
    same n on every task: its common n, the lowest seeds), in a sentence."""
    return [
        f"{s.arm}: over all tasks uses the {s.n} lowest seeds of each task "
        f"({s.unused} finished score(s) left out)."
        for s in results.summaries
        if s.unused
    ]


def not_counted(results: StudyResults, named: int = 3) -> str | None:
    """The trials that do not count (failed, or finished without a score) in a sentence that
    names the first ``named`` and why; None when every trial counts."""
    if not results.excluded:
        return None
    shown = [f"{r.task}/{r.arm}/seed {r.seed} ({_why_excluded(r)})" for r in results.excluded]
    more = len(shown) - named
    return (
        f"{len(shown)} trial(s) not counted (failed, or finished without a score): "
        + "; ".join(shown[:named])
        + (f"; and {more} more (results.md lists them)" if more > 0 else "")
    )


def _all_used(results: StudyResults) -> str:
    """That no aggregate left a finished score out (``left_out`` has no line)."""
    if not results.summaries:
        return "No finished trial with a score: nothing to aggregate."
    return "Every arm had the same n on each of its tasks: no score left out."


def _method(results: StudyResults, reps: int, seed: int) -> list[str]:
    shortened = [f"- {line}" for line in left_out(results)]
    return [
        "Intervals are 95 % percentile intervals of rliable's stratified bootstrap "
        f"(`rliable.library.get_interval_estimates`, {reps} resamples, numpy's global RNG "
        f"seeded with {seed} for each interval and restored after): runs are resampled with "
        "replacement within each task; the two arms of a probability of improvement are "
        "resampled independently. IQM is the 25 % trimmed mean (⌊n/4⌋ scores cut from each "
        "end); median and std are of the runs on one task; over all tasks the mean and median "
        "are of the task means and the IQM pools all runs × tasks of raw accuracy, without "
        "normalising tasks (an arm on a single task repeats that task's row). Parameters, "
        "FLOPs and seconds are means over the trials used (a ppo arm's are its evaluation "
        "runs', its policy training not counted); "
        "final and peak parameters count the host and every seed in the forward pass, a seed "
        "still TRAINING (which leaves the output unchanged) included. "
        "An aggregate needs the same n on every task, so an arm with unequal n per task uses "
        "its common n (the lowest seeds).",
        "",
        *(shortened or [_all_used(results)]),
    ]


# ------------------------------------------------------------------------- plots


def _figure(height: float) -> Figure:
    return pages.new_figure(FIGURE_WIDTH_IN, height)


def _empty(figure: Figure) -> bytes:
    figure.text(0.5, 0.5, "no finished trial with a score", ha="center", va="center")
    return pages.png(figure)


def _colours(arms: Sequence[str]) -> dict[str, str]:
    return {arm: f"C{i % 10}" for i, arm in enumerate(arms)}  # matplotlib's default cycle


def interval_plot(overall: Sequence[ArmSummary], score: Score | None = "test") -> bytes:
    """``interval_estimates.png``: IQM and mean over all tasks per arm (``overall``: the
    ``ALL_TASKS`` summaries), a bar for the interval, a tick at the estimate (the layout of
    ``rliable.plot_utils.plot_interval_estimates``, drawn without pyplot)."""
    figure = _figure(1.2 + 0.4 * len(overall))
    if not overall:
        return _empty(figure)
    colours = _colours([s.arm for s in overall])
    axes = figure.subplots(1, 2, sharey=True)
    for ax, name in zip(axes, ("IQM", "mean"), strict=True):
        for row, s in enumerate(overall):
            value = s.iqm if name == "IQM" else s.mean
            width = value.high - value.low
            ax.barh(row, width, left=value.low, height=0.6, color=colours[s.arm], alpha=0.75)
            ax.vlines(value.point, row - 0.3, row + 0.3, color="k", alpha=0.6)
        ax.set_title(f"{name} over all tasks, 95 % CI")
        ax.set_xlabel(f"{score_label(score)} (%)")
        ax.grid(True, axis="x", alpha=0.25)
    axes[0].set_yticks(range(len(overall)), [s.arm for s in overall])
    axes[0].invert_yaxis()  # the first arm on top, as in the table
    return pages.png(figure)


def profile_plot(
    rows: Sequence[TrialRow],
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    score: Score | None = "test",
) -> bytes:
    """``performance_profile.png``: score distributions (rliable's performance profiles), the
    fraction of an arm's runs, over all its tasks, whose accuracy is above τ, with 95 %
    bootstrap bands (``stats.score_profiles``)."""
    from rliable import plot_utils

    found = score_profiles(rows, reps, seed)
    figure = _figure(4.5)
    if found is None:
        return _empty(figure)
    labels = {arm: pages.plot_label(arm) for arm in found.profiles}  # "_x" had no legend entry
    plot_utils.plot_performance_profiles(
        {labels[arm]: profile for arm, profile in found.profiles.items()},
        found.taus,
        performance_profile_cis={labels[arm]: band for arm, band in found.bands.items()},
        ax=figure.add_subplot(),
        colors={labels[arm]: colour for arm, colour in _colours(list(labels)).items()},
        xlabel=f"{score_label(score)} τ (%)",
        ylabel="fraction of runs above τ",
        labelsize="medium",
        ticklabelsize="medium",
        legend=True,
        legendsize="small",
    )
    return pages.png(figure)


# ----------------------------------------------------------------------- writing


def write_results(
    directory: Path,
    rows: Sequence[TrialRow],
    baselines: Sequence[str],
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    unfinished: int = 0,
    roles: VerdictRoles | None = None,
    score: Score = "test",
    revisions: str | None = None,
) -> StudyResults:
    """Write ``results.md``, ``interval_estimates.png`` and ``performance_profile.png``.

    Everything is computed first; each file is then replaced atomically, and all three are
    always rewritten (a study without a counted trial gets placeholder plots, not stale ones).

    Args:
        directory: Where the files go (created if missing).
        rows: The study's trials.
        baselines: Baseline arms for the probability of improvement; the verdicts' own
            (``roles.baselines``) are added so that the verdicts can be given.
        reps: Bootstrap resamples per interval.
        seed: Seed of every bootstrap.
        unfinished: trials of the study not finished yet (an interrupted study's results so
            far say so at the top).
        roles: which arms answer which question (``verdicts``); None: no verdicts.
        score: what the rows' scores are (``SCORES``), as the text and plots name them.
        revisions: the git revisions the study's trials ran at (``StudyState.revisions``),
            as ``results.md`` names them; None: not recorded.

    Returns:
        What ``results.md`` shows.
    """
    roles = VerdictRoles() if roles is None else roles
    judging = Judging(
        tuple(baselines), tuple(sorted(roles.matched)), tuple(sorted(roles.learned)),
        tuple(sorted(roles.handwritten)), reps, seed, unfinished, rows_digest(rows),
    )  # fmt: skip
    results = study_results(rows, judging)
    intervals = interval_plot([s for s in results.summaries if s.task == ALL_TASKS], score)
    profile = profile_plot(rows, reps, seed, score)
    text = _markdown(results, rows, judging, score, revisions)
    directory.mkdir(parents=True, exist_ok=True)
    # what a writer killed before left (hidden .NAME.tmp-* files)
    remove_temporaries(directory, list(RESULTS_FILES))
    contents: dict[str, bytes | str] = {
        RESULTS_FILE: text,
        INTERVALS_FILE: intervals,
        PROFILE_FILE: profile,
        JUDGING_FILE: json.dumps(asdict(judging)) + "\n",
    }
    atomic_write_all([(directory / name, contents[name]) for name in RESULTS_FILES])
    return results


def study_results(rows: Sequence[TrialRow], judging: Judging) -> StudyResults:
    """What ``results.md`` shows of ``rows``, judged as ``judging`` says (``write_results``;
    the study report computes the same from ``results.json``)."""
    reps, seed, roles = judging.reps, judging.seed, judging.roles
    found = improvements(rows, [*judging.baselines, *roles.baselines], reps, seed)
    return StudyResults(
        summaries=summarize(rows, reps, seed),
        improvements=found,
        verdicts=verdicts(found, roles, reps),
        excluded=sorted(
            (row for row in rows if not row.counts), key=lambda r: (r.task, r.arm, r.seed)
        ),
        matched=matched_sizes(rows, roles),
        no_verdict=no_verdict(roles),
    )
