"""The study report: ``report.html`` in a study directory (``esper report STUDY``).

One page over a study's finished trials (``trials.csv``, written by ``esper.study.execute``):

- the results table: per task × arm (then per arm over all tasks) n, IQM and mean with 95 %
  stratified bootstrap intervals, median, std, parameters, training FLOPs and training time,
  the probabilities of improvement and the verdicts: the numbers ``results.md`` shows
  (``results.study_results``, judged as its ``results.json`` says), marked as results so far
  when the study has trials not finished;
- rliable's interval estimates and performance profile (``results.interval_plot``,
  ``results.profile_plot``);
- per task, each arm's validation accuracy per epoch over its trials: the median line with an
  interquartile band, one colour per arm (the colours of the two plots above). Every trial's run
  directory is read once and folded with the one fold of a run's events
  (``esper.nissa.fold.RunState``: a resumed trial counts each epoch once);
- every trial with its status, score and error, linked to its run directory and, where
  ``esper report`` wrote one, its run report.

Only trials that count (completed or terminated, with a score: ``TrialRow.counts``) enter the
statistics and curves. The images are embedded in the page (base64 PNG, inline CSS, no scripts);
the page is built in memory and written atomically (``leyline.files.atomic_write``), so a failure
never leaves half a report. The links are relative, so the study directory can be moved whole.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from esper.leyline import pages
from esper.leyline.files import atomic_write, remove_temporaries
from esper.leyline.trials import (
    TRIALS_DIR,
    TRIALS_FILE,
    Score,
    TrialRow,
    TrialRun,
    TrialsFileError,
    read_trials,
    score_label,
    study_running,
)
from esper.nissa import record
from esper.nissa.bands import band, fewer_note, validation_curve
from esper.nissa.fold import RunState
from esper.nissa.log import (
    EventLogError,
    RunDirectoryError,
    counted,
    display,
    open_run,
    read_events,
    shown_name,
)
from esper.nissa.record import REPORT_FILE, RUN_REPORT
from esper.study import stats
from esper.study.results import (
    Judging,
    StudyResults,
    findings_tables,
    interval_plot,
    judging_of,
    left_out,
    profile_plot,
    score_sentence,
    scores_table,
    so_far,
    study_results,
)


class StudyReportError(ValueError):
    """A study that cannot be reported (the message is one line naming the problem)."""


@dataclass(frozen=True)
class ArmCurve:
    """One arm's validation accuracy per epoch over its trials on one task.

    Attributes:
        task: the task.
        arm: the arm.
        trials: how many trials' runs the curve is drawn from.
        epochs: every epoch any of them completed, in order.
        median: the median over the trials with a finite value at that epoch (NaN: none).
        low: the first quartile there.
        high: the third quartile.
        n: how many trials had a finite value at each epoch (fewer than ``trials`` where some
            stopped early, a governor ending them, or diverged).
    """

    task: str
    arm: str
    trials: int
    epochs: list[int]
    median: list[float]
    low: list[float]
    high: list[float]
    n: list[int]

    @property
    def label(self) -> str:
        """The legend's words: the arm, its trials, and from which epoch fewer of them are in
        the median (``fewer_note``)."""
        fewer = fewer_note(self.epochs, self.n, self.trials)
        return f"{pages.plot_label(self.arm)} (median of {self.trials}{fewer})"


def validation_accuracy(run: Path) -> dict[int, float | None]:
    """A run's validation accuracy by epoch, as its one fold holds it (None: not finite).

    Raises:
        RunDirectoryError, EventLogError: not a readable run.
    """
    log = read_events(open_run(run).events_path)
    return validation_curve(RunState().apply_all(log.records))


def arm_curves(runs: dict[tuple[str, str], list[dict[int, float | None]]]) -> list[ArmCurve]:
    """The median and interquartile band per epoch of each (task, arm)'s runs
    (``esper.nissa.bands.band``, as the dashboard's study page draws them); NaN where no run
    has a finite value (a gap in the curve, never a made-up value)."""
    curves = []
    for (task, arm), mine in sorted(runs.items()):
        found = band(mine)
        median, low, high = ([math.nan if v is None else v for v in vs] for vs in
                             (found.median, found.q1, found.q3))  # fmt: skip
        curves.append(ArmCurve(task, arm, len(mine), found.epoch, median, low, high, found.n))
    return curves


@dataclass(frozen=True)
class StudyPlot:
    """One figure of the page: an ``id`` for its ``<figure>``, its caption and PNG bytes."""

    name: str
    caption: str
    png: bytes
    figure: Figure | None = None  # the curves' figure (the rliable plots come as bytes)


@dataclass(frozen=True)
class StudyReport:
    """A study report built in memory: its plots, the page that embeds them, and warnings."""

    plots: list[StudyPlot]
    html: str
    warnings: list[str]
    curves: list[ArmCurve]


def plot_task(task: str, curves: Sequence[ArmCurve], colours: dict[str, str]) -> StudyPlot:
    """Each arm's median validation accuracy per epoch on ``task`` with its band."""
    figure = pages.new_figure()
    ax = figure.add_subplot()
    for curve in curves:
        colour = colours[curve.arm]
        marker = pages.marker(curve.median)
        ax.plot(curve.epochs, curve.median, color=colour, marker=marker, label=curve.label)
        ax.fill_between(curve.epochs, curve.low, curve.high, color=colour, alpha=0.2, linewidth=0)
    ax.set_title(task)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    caption = (
        f"{task}: validation accuracy per epoch, each arm's median over its trials with the "
        "band between their first and third quartiles; where some trials stopped early (a "
        "governor ended them), the legend says from which epoch fewer are in the median."
    )
    return StudyPlot(f"curves-{task}", caption, pages.png(figure), figure)


def build_study_report(
    directory: Path, out: Path | None = None, reps: int | None = None
) -> StudyReport:
    """Read a study directory and render its report in memory, writing nothing.

    Args:
        directory: the study directory (``study.json``, ``trials.csv``, ``results.json``,
            ``trials/``).
        out: where the page will be written (default ``directory``): links are relative to it.
        reps: bootstrap resamples per interval (default: ``results.md``'s, from
            ``results.json``; ``DEFAULT_REPS`` without one).

    Raises:
        StudyReportError: no ``trials.csv``, a malformed one, or no trial that counts.
    """
    out = directory if out is None else out
    try:
        trials = read_trials(directory)
    except TrialsFileError as err:
        raise StudyReportError(str(err)) from None
    scored = [t for t in trials if t.row.counts]
    if not scored:
        raise StudyReportError(
            f"{str(directory)!r}: none of its {len(trials)} trial(s) finished with a score "
            f"({TRIALS_FILE}); nothing to report"
        )
    score, why = record.known_study_score(directory)
    rows = [t.row for t in trials]
    judging, problem, same = judging_of(directory, rows)
    given = judging if reps is None else replace(judging, reps=reps)
    stats.check_bootstrap(given.reps, given.seed)  # not the trials file's fault, unlike below
    try:
        results = study_results(rows, given)
    except ValueError as err:  # two finished trials of one task, arm and seed
        raise StudyReportError(f"{directory / TRIALS_FILE}: {err}") from None
    overall = [s for s in results.summaries if s.task == stats.ALL_TASKS]
    plots = _rliable_plots(overall, rows, given, score)
    runs, warnings = _validation_curves(directory, scored)
    warnings = ([] if why is None else [why]) + warnings
    warnings = ([] if problem is None else [problem]) + warnings
    curves = arm_curves(runs)
    arms = sorted({s.arm for s in overall})
    colours = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}  # as stats colours its plots
    for task in sorted({c.task for c in curves}):
        plots.append(plot_task(task, [c for c in curves if c.task == task], colours))
    judged = (given, judging.reps if same else None)
    page = _render(directory, out, trials, results, plots, warnings, judged, score)
    return StudyReport(plots, page, warnings, curves)


def _rliable_plots(
    overall: Sequence[stats.ArmSummary],
    rows: Sequence[TrialRow],
    judging: Judging,
    score: Score | None,
) -> list[StudyPlot]:
    """rliable's interval estimates and performance profiles of the study's arms."""
    label = score_label(score)
    return [
        StudyPlot(
            "interval_estimates",
            f"IQM and mean {label} over all tasks per arm, with 95 % bootstrap intervals.",
            interval_plot(overall, score),
        ),
        StudyPlot(
            "performance_profile",
            "Performance profiles: the fraction of each arm's runs (over all its tasks) with "
            f"{label} above τ, with 95 % bootstrap bands.",
            profile_plot(rows, judging.reps, judging.seed, score),
        ),
    ]


def _validation_curves(
    directory: Path, scored: Sequence[TrialRun]
) -> tuple[dict[tuple[str, str], list[dict[int, float | None]]], list[str]]:
    """Each counted trial's validation accuracy per epoch, by (task, arm); and a warning for
    each trial left out (an unreadable log) and one for those whose logs have no epochs."""
    runs: dict[tuple[str, str], list[dict[int, float | None]]] = {}
    warnings, without_epochs = [], []
    for trial in scored:
        try:
            curve = validation_accuracy(directory / TRIALS_DIR / trial.run)
        except (RunDirectoryError, EventLogError) as err:
            warnings.append(f"{trial.run}: left out of the curves: {err}")
            continue
        if not curve:
            without_epochs.append(trial.run)
            continue
        runs.setdefault((trial.row.task, trial.row.arm), []).append(curve)
    if without_epochs:
        warnings.append(
            f"{len(without_epochs)} trial(s) left out of the curves, their logs have no epochs "
            f"(telemetry level minimal: a study run before growth trials logged them), e.g. "
            f"{without_epochs[0]}"
        )
    return runs, warnings


def write_study_report(report: StudyReport, out: Path) -> Path:
    """Write ``report.html`` into ``out`` atomically; returns its path.

    Raises:
        OSError: ``out`` cannot be created or written.
    """
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out, [REPORT_FILE])  # what a killed report left
    atomic_write(out / REPORT_FILE, report.html.encode("utf-8"))
    return out / REPORT_FILE


# --- HTML ----------------------------------------------------------------------------------


def _link(target: Path, out: Path, text: str) -> str:
    href = quote(os.fsencode(Path(os.path.relpath(target, out)).as_posix()))  # bytes: as named
    return f"<a href='{html.escape(href)}'>{html.escape(text)}</a>"


def _trials_table(
    directory: Path, out: Path, trials: Sequence[TrialRun], score: Score | None
) -> str:
    head = ["run", "task", "arm", "seed", "status", f"{score_label(score)} (%)", "report", "error"]
    rows = []
    for trial in sorted(trials, key=lambda t: (t.row.task, t.row.arm, t.row.seed)):
        run = directory / TRIALS_DIR / trial.run
        report = run / RUN_REPORT
        row = trial.row
        cells = [
            _link(run, out, trial.run) if run.is_dir() else html.escape(trial.run),
            html.escape(row.task),
            html.escape(row.arm),
            str(row.seed),
            html.escape(row.status),
            display(row.score, ".2f"),
            _link(report, out, "report") if report.is_file() else display(None),
            html.escape(display(row.error)),
        ]
        rows.append(cells)
    return pages.table("trials", head, rows)


def _findings(results: StudyResults) -> list[str]:
    """The matched sizes, the probabilities of improvement and the verdicts, as
    ``results.md`` has them."""
    verdicts = results.verdicts or [results.no_verdict]
    items = "".join(f"<li>{html.escape(v)}</li>" for v in verdicts)
    tables = [line for table in findings_tables(results) for line in table.html()]
    return [*tables, "<h2>Verdicts</h2>", f"<ul>{items}</ul>"]


def _bootstrap(judging: Judging, studys_reps: int | None) -> str:
    """How the intervals were computed, and whether ``results.md``'s are the same (None: it
    judged other trials, or cannot be told)."""
    if studys_reps is None:
        same = ""
    elif studys_reps == judging.reps:
        same = "; as in <code>results.md</code>"
    else:
        same = f"; <code>results.md</code> uses {studys_reps}"
    return (
        f"Intervals are 95 % stratified bootstrap intervals ({judging.reps} resamples, seed "
        f"{judging.seed}{same})."
    )


def _render(
    directory: Path,
    out: Path,
    trials: Sequence[TrialRun],
    results: StudyResults,
    plots: Sequence[StudyPlot],
    warnings: Sequence[str],
    judged: tuple[Judging, int | None],
    score: Score | None,
) -> str:
    scored = sum(t.row.counts for t in trials)
    judging, studys_reps = judged
    stressed, rest = so_far(judging, study_running(directory))
    banner = f"<p><strong>{html.escape(stressed)}</strong> {html.escape(rest)}</p>"
    body = [
        *([banner] if judging.unfinished else []),
        f"<p>{counted(len(trials), 'trial')}: {scored} finished with a score (they enter the "
        f"statistics and curves), {len(trials) - scored} not. {html.escape(score_sentence(score))} "
        f"{_bootstrap(judging, studys_reps)}</p>",
        *scores_table(results).html(),
        *(f"<p>{html.escape(line)}</p>" for line in left_out(results)),
        *(_findings(results) if judging.trials else []),
        "<h2>Plots</h2>",
        *(pages.figure(plot.name, plot.png, plot.caption) for plot in plots),
        "<h2>Trials</h2>",
        _trials_table(directory, out, trials, score),
    ]
    return pages.page(f"Esper study report: {shown_name(directory.resolve())}", body, warnings)
