"""The static run report: ``report.html`` plus a PNG and an SVG per plot, from a run's events.

The HTML is self-contained (the PNGs are embedded as base64 data URIs, the CSS is inline; no
scripts, fonts or external links), so it can be mailed or archived on its own; the PNGs and SVGs
are also written next to it, and each figure links its SVG there. Everything is built in memory
first and then written file by file under temporary names that are renamed into place, so a
failure never leaves a half-written report.

The run is read through the one fold of its events (``esper.nissa.fold.RunState``, via
``report_data.load_run``): stage spans, lifecycle marks and PPO rounds come from there.

Growth runs (heuristic, static, eval) are plotted per epoch: accuracy and loss against the
baseline with the run's seed events (germinate, fossilize, prune) marked on its validation
curve, the run − baseline difference of validation accuracy and loss (a growth baseline), the
seed timeline per slot, parameters and α. PPO runs are plotted per round (mean episode return
and final accuracy, reward components, action counts), and the seed timeline, α and parameters
of the last finished episode of environment 0. A baseline of the other kind (PPO vs growth) is
compared where that is meaningful: the final-metrics table shows both, and its final accuracy
appears as a horizontal line on the accuracy plot. A series with fewer than two points is drawn with
markers, so a one-epoch run shows its point rather than an empty plot.

Plotting uses matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``, so no global
backend or figure state is touched; the same records give byte-identical PNGs and SVGs (no
version or date stamp, SVG element ids from a fixed salt).
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from esper.karn.colours import MARK_STYLES, STAGE_COLOURS
from esper.karn.report_data import (
    RunData,
    alpha_series,
    difference,
    final_accuracy,
    load_run,
)
from esper.leyline import Op, SeedStage, pages
from esper.leyline.config import COMPARED_SETTINGS, setting_text
from esper.leyline.events import EpochCompleted
from esper.leyline.files import atomic_write_all, remove_temporaries
from esper.nissa.fold import MARK_KINDS, Episode, LifecycleMark, RoundState, summary_so_far
from esper.nissa.log import (
    SUMMARY_METRICS,
    SummaryMetric,
    display,
    policy_line,
    with_article,
)
from esper.nissa.record import PPO_MODE, REPORT_FILE, RunRecordError

SVG_SALT = "esper-report"
"""matplotlib's ``svg.hashsalt``: SVG element ids derived from it, not from random UUIDs, so the
same records give the same SVG file."""


@dataclass(frozen=True)
class Plot:
    """One rendered figure.

    Attributes:
        name: the file name without extension (``accuracy`` -> ``accuracy.png``, ``.svg``).
        caption: what the figure shows.
        figure: the matplotlib figure (what the images were rendered from).
        png: the PNG bytes.
        svg: the SVG bytes.
    """

    name: str
    caption: str
    figure: Figure
    png: bytes
    svg: bytes

    @property
    def filename(self) -> str:
        """The PNG's file name."""
        return f"{self.name}.png"

    @property
    def svg_filename(self) -> str:
        """The SVG's file name."""
        return f"{self.name}.svg"


@dataclass(frozen=True)
class Report:
    """A report built in memory: the plots, then the HTML that embeds them."""

    plots: list[Plot]
    html: str
    warnings: list[str]


END_STUB = 0.4
"""Epochs drawn for a slot's last stage when it was entered at the last epoch (a prune's
EMBARGOED, say): a bar of width 0 was invisible, and the timeline seemed to end in the stage
before."""


def _figure(ncols: int = 1, height: float = pages.HEIGHT_IN) -> tuple[Figure, list[Axes]]:
    figure = pages.new_figure(height=height)
    return figure, [figure.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _plot(name: str, caption: str, figure: Figure) -> Plot:
    """Render ``figure`` as PNG and SVG, without a version or date stamp."""
    png, svg = pages.png(figure), io.BytesIO()  # PNG first: the first draw settles the layout
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT}):
        figure.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return Plot(name, caption, figure, png, svg.getvalue())


def _finish(ax: Axes, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    low, high = ax.get_xlim()
    if high - low < 2:  # one or two epochs or rounds: half a step beyond them, no step more
        ax.set_xlim(math.ceil(low) - 0.5, math.floor(high) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs, rounds: whole
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


def _mark_seed_events(ax: Axes, marks: Sequence[LifecycleMark], at: Mapping[int, float]) -> None:
    """Each germinate, fossilize and prune on a curve: at the curve's value ``at[epoch]``, or on
    the bottom edge where the curve has no value there (never at a made-up value)."""
    for kind, mark_style in MARK_STYLES.items():
        marker, colour = mark_style.marker, mark_style.colour
        mine = [m.epoch for m in marks if m.kind == kind]
        if not mine:
            continue
        style: dict[str, Any] = {
            "marker": marker, "s": 60, "color": colour, "edgecolors": "black", "zorder": 3
        }  # fmt: skip
        on = [e for e in mine if e in at and math.isfinite(at[e])]
        off = [e for e in mine if e not in on]
        if on:
            ax.scatter(on, [at[e] for e in on], label=kind, **style)
        if off:
            edge = ax.get_xaxis_transform()  # x in epochs, y in axes fractions
            label = None if on else kind
            ax.scatter(off, [0.0] * len(off), transform=edge, clip_on=False, label=label, **style)


def _values(epochs: Sequence[EpochCompleted], key: str) -> list[float]:
    """One field of every epoch (NaN where it was not finite when logged)."""
    return [float(getattr(e, key)) for e in epochs]


def plot_curves(data: RunData, baseline: RunData | None, metric: str) -> Plot | None:
    """Validation (solid) and training (dashed) ``metric`` per epoch, the baseline beside it,
    and the run's seed events on its validation curve.

    Args:
        metric: ``"accuracy"`` or ``"loss"``.
    """
    if data.episode is None:
        return None
    figure, (ax,) = _figure()
    runs = [(data, "C0")] + ([(baseline, "C1")] if baseline and not baseline.is_ppo else [])
    for run, colour in runs:
        epochs = run.epochs
        x = [e.epoch for e in epochs]
        for split, style, alpha in (("val", "-", None), ("train", "--", 0.6)):
            values = _values(epochs, f"{split}_{metric}")
            label = f"{pages.plot_label(run.run.name)} {split}"
            marker = pages.marker(values)
            ax.plot(x, values, style, color=colour, alpha=alpha, marker=marker, label=label)
    values = _values(data.epochs, f"val_{metric}")
    validation = {e.epoch: v for e, v in zip(data.epochs, values, strict=True)}
    _mark_seed_events(ax, data.episode.marks(), validation)
    caption = f"{metric.capitalize()} per epoch (solid: validation, dashed: training)"
    if baseline is not None and baseline.is_ppo and metric == "accuracy":
        _reference(ax, baseline)
        caption += "; the PPO baseline's final mean accuracy as a horizontal line"
    elif baseline is not None and not baseline.is_ppo:
        caption += f", against the baseline {baseline.run.name}"
    caption += "; the run's seed events on its validation curve"
    _finish(ax, "epoch", f"{metric} (%)" if metric == "accuracy" else metric)
    return _plot(metric, caption + ".", figure)


def _reference(ax: Axes, baseline: RunData) -> None:
    """The baseline's final accuracy as a horizontal line (a baseline of the other kind)."""
    value = final_accuracy(baseline)
    if value is not None:
        label = f"{pages.plot_label(baseline.run.name)} final ({baseline.run.mode})"
        ax.axhline(value, color="C1", linestyle=":", label=label)


def plot_difference(data: RunData, baseline: RunData | None) -> Plot | None:
    """Run − baseline validation accuracy (left) and loss (right) per epoch both reached, with
    a zero line and the run's seed events in those epochs; only against a growth baseline."""
    if baseline is None or baseline.is_ppo or data.episode is None:
        return None
    found = difference(data.epochs, baseline.epochs)
    if not found.epochs:
        return None
    figure, (left, right) = _figure(ncols=2)
    label = f"{pages.plot_label(data.run.name)} − {pages.plot_label(baseline.run.name)}"
    first, last = found.epochs[0], found.epochs[-1]  # a mark beyond them has no difference
    marks = [m for m in data.episode.marks() if first <= m.epoch <= last]
    for ax, values in ((left, found.val_accuracy), (right, found.val_loss)):
        ax.plot(found.epochs, values, "-", color="C0", marker=pages.marker(values), label=label)
        ax.axhline(0.0, color="black", linewidth=0.8)
        _mark_seed_events(ax, marks, dict(zip(found.epochs, values, strict=True)))
    _finish(left, "epoch", "Δ validation accuracy (points)", legend=False)
    _finish(right, "epoch", "Δ validation loss")
    caption = (
        f"Difference from the baseline per epoch: {label} validation accuracy (left; above 0: "
        "the run is ahead) and validation loss (right; below 0: the run is ahead), with the "
        "run's seed events in the epochs both runs reached."
    )
    return _plot("difference", caption, figure)


def plot_timeline(data: RunData, episode: Episode | None, caption: str) -> Plot | None:
    """One row per slot coloured by stage, with germinate/fossilize/prune markers."""
    if episode is None:
        return None
    end = float(episode.epochs[-1].epoch)
    figure, (ax,) = _figure(height=1.2 + 0.5 * len(data.slots))
    rows = {slot: i for i, slot in enumerate(reversed(data.slots))}  # first slot on top
    timeline = episode.timeline(data.slots, end)
    for slot, spans in timeline.items():
        for span in spans:  # a stage entered at the last epoch (only a last span) gets a stub
            bar = [(span.start, span.end - span.start or END_STUB)]
            colour = STAGE_COLOURS[span.stage]
            ax.broken_barh(bar, (rows[slot] - 0.35, 0.7), facecolors=colour, edgecolors="white")
    marks = [m for m in episode.marks() if m.slot in rows]
    handles: list[Any] = [Patch(color=STAGE_COLOURS[s], label=s.value) for s in SeedStage]
    for kind, mark_style in MARK_STYLES.items():
        marker, colour = mark_style.marker, mark_style.colour
        mine = [m for m in marks if m.kind == kind]
        xy = ([m.epoch for m in mine], [rows[m.slot] for m in mine])
        ax.scatter(*xy, marker=marker, s=70, color=colour, edgecolors="black", zorder=3)
        handles.append(Line2D([], [], linestyle="none", marker=marker, color=colour, label=kind))
    for mark in marks:
        if mark.kind == MARK_KINDS[SeedStage.GERMINATED] and mark.blueprint:
            ax.annotate(mark.blueprint, (mark.epoch, rows[mark.slot] + 0.38), fontsize=7)
    ax.set_yticks(list(rows.values()), list(rows))
    ax.set_ylim(-0.6, len(rows) - 0.3)
    stub = any(s.end == s.start for spans in timeline.values() for s in spans)
    ax.set_xlim(0, max(end + (END_STUB if stub else 0.0), 1.0))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # as every epoch axis
    return _plot("timeline", caption, figure)


def plot_alpha(data: RunData, episode: Episode | None, caption: str) -> Plot | None:
    """α per slot per epoch."""
    if episode is None:
        return None
    figure, (ax,) = _figure()
    x = [e.epoch for e in episode.epochs]
    for slot in data.slots:
        values = alpha_series(episode.epochs, slot)
        ax.plot(x, values, marker=pages.marker(values), label=slot)
    ax.set_ylim(-0.05, 1.05)
    _finish(ax, "epoch", "α")
    return _plot("alpha", caption, figure)


def plot_params(
    episode: Episode | None, baseline: RunData | None, caption: str, name: str
) -> Plot | None:
    """Active parameter count per epoch (the baseline's too when it is a growth run)."""
    if episode is None:
        return None
    figure, (ax,) = _figure()
    lines = [(episode.epochs, "-", "C0", pages.plot_label(name))]
    if baseline is not None and not baseline.is_ppo:
        lines.append((baseline.epochs, "--", "C1", pages.plot_label(baseline.run.name)))
    for epochs, style, colour, label in lines:
        x, params = [e.epoch for e in epochs], _values(epochs, "param_count")
        marker = pages.marker(params)
        # epoch k's count over (k - 1, k], as the timeline draws epoch k's stage: a seed
        # decided after epoch 7 trains in epoch 8, and both rise at 7 ("post" drew it at 8)
        ax.step(x, params, style, where="pre", color=colour, marker=marker, label=label)
    _finish(ax, "epoch", "parameters")
    return _plot("params", caption, figure)


def _optional(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def plot_returns(data: RunData, baseline: RunData | None) -> Plot | None:
    """Per round: mean episode return (left) and mean final accuracy (right)."""
    if not data.state.rounds:
        return None
    figure, (left, right) = _figure(ncols=2)
    runs = [(pages.plot_label(data.run.name), data.state.rounds, "C0")]
    if baseline is not None and baseline.is_ppo:
        runs.append((pages.plot_label(baseline.run.name), baseline.state.rounds, "C1"))
    for name, mine, colour in runs:
        x = [r.update.round for r in mine]
        returns = _optional([r.update.mean_return for r in mine])
        accuracies = _optional([r.update.mean_final_accuracy for r in mine])
        left.plot(x, returns, "o-", color=colour, label=name)
        right.plot(x, accuracies, "o-", color=colour, label=name)
    caption = "Per PPO round: mean episode return and mean final validation accuracy"
    if baseline is not None and not baseline.is_ppo:
        _reference(right, baseline)
        caption += "; the growth baseline's final accuracy as a horizontal line"
    _finish(left, "round", "mean episode return", legend=False)
    _finish(right, "round", "mean final accuracy (%)")
    return _plot("returns", caption + ".", figure)


def plot_rewards(rounds: Sequence[RoundState]) -> Plot | None:
    """Each reward component's mean per step, per round."""
    names = list(dict.fromkeys(name for r in rounds for name in r.components))
    if not names:
        return None
    figure, (ax,) = _figure()
    x = [r.update.round for r in rounds]
    for name in names:
        ax.plot(x, [r.components.get(name, math.nan) for r in rounds], "o-", label=name)
    total = _optional([r.mean_reward for r in rounds])
    ax.plot(x, total, "k--", marker="s", label="total")
    ax.axhline(0.0, color="black", linewidth=0.5)
    _finish(ax, "round", "mean reward per step")
    caption = "Reward components and their total: mean per environment step in each PPO round."
    return _plot("rewards", caption, figure)


def plot_actions(rounds: Sequence[RoundState]) -> Plot | None:
    """Actions taken per round by op, stacked."""
    seen = {op for r in rounds for op in r.ops}
    order = [op.value for op in Op] + sorted(seen - {op.value for op in Op})
    ops = [op for op in order if op in seen]
    if not ops:
        return None
    figure, (ax,) = _figure()
    x = [r.update.round for r in rounds]
    bottom = [0] * len(rounds)
    for op in ops:
        counts = [r.ops.get(op, 0) for r in rounds]  # an op not chosen in a round: 0 times
        colour = f"C{order.index(op) % 10}"  # one colour per op, whichever ops occur
        ax.bar(x, counts, bottom=bottom, label=op, color=colour)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_xticks(x)
    _finish(ax, "round", "actions")
    return _plot("actions", "Action distribution: ops chosen per PPO round.", figure)


COOL_DOWN = (SeedStage.EMBARGOED, SeedStage.RESETTING, SeedStage.DORMANT)
"""The stages a pruned seed passes through on its way back to an empty slot."""


def plot_progress(rounds: Sequence[RoundState]) -> Plot | None:
    """How far seeds got: transitions into each lifecycle stage per round."""
    # A pruned seed's cool-down (EMBARGOED, RESETTING, then DORMANT again) follows PRUNED in
    # the same counts: its lines lay on PRUNED's, DORMANT's near-white one unseen.
    order = [stage.value for stage in SeedStage if stage not in COOL_DOWN]
    stages = [s for s in order if any(r.entered.get(s) for r in rounds)]
    if not stages:
        return None
    figure, (ax,) = _figure()
    x = [r.update.round for r in rounds]
    for stage in stages:
        colour = STAGE_COLOURS[SeedStage(stage)]
        ax.plot(x, [r.entered.get(stage, 0) for r in rounds], "o-", label=stage, color=colour)
    _finish(ax, "round", "seeds entering the stage")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # counts
    caption = (
        "How far seeds get: transitions into each lifecycle stage per PPO round, all "
        "environments (a policy whose seeds never reach BLENDING never changes the output); a "
        "pruned seed's cool-down back to DORMANT is not drawn."
    )
    return _plot("progress", caption, figure)


def plot_head_entropy(rounds: Sequence[RoundState]) -> Plot | None:
    """Per-head policy entropy per round, where it was logged (telemetry level debug)."""
    heads = list(dict.fromkeys(h for r in rounds for h in r.head_entropy))
    if not heads:
        return None
    figure, (ax,) = _figure()
    x = [r.update.round for r in rounds]
    for head in heads:
        ax.plot(x, _optional([r.head_entropy.get(head) for r in rounds]), "o-", label=head)
    _finish(ax, "round", "normalized entropy (0 to 1)")
    caption = (
        "Policy entropy per action head and round, over the steps whose op reads the head, "
        "each divided by the log of its allowed choices (1: uniform over them; 0: one choice); "
        "logged at telemetry level debug, and for a few rounds after an anomaly."
    )
    return _plot("head_entropy", caption, figure)


def _plots(data: RunData, baseline: RunData | None) -> list[Plot | None]:
    episode = data.episode
    if not data.is_ppo:
        seeded = None if data.run.mode == "static" else episode  # a static host has no seed:
        return [  # its timeline was all DORMANT, its α three flat lines at 0
            plot_curves(data, baseline, "accuracy"),
            plot_curves(data, baseline, "loss"),
            plot_difference(data, baseline),
            plot_timeline(data, seeded, "Seed timeline per slot, coloured by stage."),
            plot_params(episode, baseline, "Active parameters per epoch.", data.run.name),
            plot_alpha(data, seeded, "Blend weight α per slot per epoch."),
        ]
    number = "; none recorded" if episode is None else f", episode {episode.number}"
    kind = "unfinished" if episode is not None and episode.result is None else "last"
    which = f" ({kind} episode of env 0{number})."
    rounds = data.state.rounds
    return [
        plot_returns(data, baseline),
        plot_rewards(rounds),
        plot_actions(rounds),
        plot_progress(rounds),
        plot_head_entropy(rounds),
        plot_timeline(data, episode, "Seed timeline per slot, coloured by stage" + which),
        plot_params(episode, None, "Active parameters per epoch" + which, data.run.name),
        plot_alpha(data, episode, "Blend weight α per slot per epoch" + which),
    ]


# --- HTML ----------------------------------------------------------------------------------


def metric_rows(runs: Sequence[RunData]) -> list[tuple[str, list[str]]]:
    """The final-metrics table (``SUMMARY_METRICS``): label and one formatted cell per run ("—"
    where missing). Rows are the first run's kind's metrics, then those only the baseline's
    kind has."""
    summaries = [  # an unfinished run's as far as its log goes (it read "—" throughout)
        summary_so_far(run.state) if run.run.summary is None else run.run.summary.to_json()
        for run in runs
    ]

    def of_kind(metric: SummaryMetric, run: RunData) -> bool:
        section = metric.path[0] if len(metric.path) > 1 else None  # None: every run's
        return section in (None, PPO_MODE if run.is_ppo else "growth")

    first = [m for m in SUMMARY_METRICS if of_kind(m, runs[0])]
    others = [m for m in SUMMARY_METRICS if m not in first and any(of_kind(m, r) for r in runs)]
    return [(m.label, [m.text(m.value(s)[1]) for s in summaries]) for m in [*first, *others]]


HEADER_FIELDS: Sequence[tuple[str, Callable[[RunData], str]]] = (
    ("mode", lambda d: d.run.mode),
    ("task", lambda d: d.run.task),
    ("seed", lambda d: str(d.run.seed)),
    ("status", lambda d: d.run.status),
    ("git revision", lambda d: display(d.git_revision)),
)
"""The header table's rows: label and how to read it from a ``RunData``."""

POLICY_FIELD: tuple[str, Callable[[RunData], str]] = (
    "policy",
    lambda d: "—" if d.policy is None else policy_line(d.policy),
)
"""The header's row naming an eval's policy, shown when a run of the page has one."""


def warnings_for(runs: Sequence[RunData]) -> list[str]:
    """One line per thing a reader of the report must know: truncated logs, unfinished runs,
    a baseline that is the run itself, of the other kind, or of another task, planned epochs
    or host-training settings."""
    notes = []
    if len(runs) == 2 and runs[0].run.path.resolve() == runs[1].run.path.resolve():
        notes.append(f"the baseline is {runs[0].run.name} itself: every difference is 0.")
    for data in runs:
        if data.truncated_line is not None:
            notes.append(
                f"{data.run.name}: the event log ends in a partial line (line "
                f"{data.truncated_line}, skipped): the run was cut off while writing it"
                + ("." if data.run.summary is not None else ", or is writing it now.")
            )
        if data.run.summary is None:
            notes.append(
                f"{data.run.name}: no summary.json (still running or crashed): its metrics "
                "and plots are what its event log holds so far (what a run measures only at "
                "its end, such as the test accuracy, reads —)."
            )
        notes += _missing_steps(data)
    if len(runs) == 2:
        notes += _baseline_warnings(*runs)
    return notes


def _missing_steps(data: RunData) -> list[str]:
    """Steps ``summary.json`` counts that the event log lacks: its lines are flushed, not
    synced, so a system crash can lose them (or the log was emptied) while the checkpoints
    and CSV keep them; the plots, drawn from the log, show only the rest (they did without a
    word: a walk-through)."""
    summary = data.run.summary
    if summary is None:
        return []
    if summary.ppo is not None:
        unit, recorded = "round", summary.ppo.rounds_completed
        logged = {r.update.round for r in data.state.rounds}
    elif summary.growth is not None and not _minimal(data):  # a minimal log has no epochs
        unit, recorded = "epoch", summary.growth.epochs_completed
        logged = {e.epoch for e in data.epochs}
    else:
        return []
    missing = [step for step in range(1, recorded + 1) if step not in logged]
    if not missing:
        return []
    return [
        f"{data.run.name}: the event log lacks {len(missing)} of its {recorded} {unit}s "
        f"({_spans(missing)}; lost in a system crash, or removed): the plots lack them; the "
        "table's final numbers are summary.json's."
    ]


def _minimal(data: RunData) -> bool:
    """Whether the run logged at ``--telemetry.level minimal`` (per its ``config.json``)."""
    try:
        telemetry = data.run.config().get("telemetry")
    except RunRecordError:
        return False
    return isinstance(telemetry, dict) and telemetry.get("level") == "minimal"


def _spans(steps: Sequence[int]) -> str:
    """Sorted steps as spans: ``1-34, 40``."""
    spans: list[list[int]] = []
    for step in steps:
        if spans and step == spans[-1][1] + 1:
            spans[-1][1] = step
        else:
            spans.append([step, step])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def _baseline_warnings(run: RunData, baseline: RunData) -> list[str]:
    """A baseline of the other kind (only final accuracies compare), and one of another task
    or, between single-model runs, of other planned epochs or host-training settings."""
    notes = []
    if run.is_ppo != baseline.is_ppo:
        notes.append(
            f"the baseline {baseline.run.name} is {with_article(baseline.run.mode)} run and "
            f"{run.run.name} {with_article(run.run.mode)} run: the plots compare final "
            "accuracy only."
        )
    (task, epochs), (their_task, their_epochs) = _budget(run), _budget(baseline)
    if task != their_task or (None not in (epochs, their_epochs) and epochs != their_epochs):
        notes.append(
            f"{run.run.name} ran {_budget_text(run)} and the baseline {baseline.run.name} ran "
            f"{_budget_text(baseline)}: their accuracies are not like for like."
        )
    if not (run.is_ppo or baseline.is_ppo):  # other epochs hid them (a walk-through)
        notes += _settings_warning(run, baseline)
    return notes


def _settings_warning(run: RunData, baseline: RunData) -> list[str]:
    """The line naming the ``COMPARED_SETTINGS`` in which the two runs differ, if any (none when
    either's configuration cannot be read: the page is drawn from the event logs)."""
    ours, theirs = run.run.host_training(), baseline.run.host_training()  # single-model runs
    if ours is None or theirs is None:
        return []
    names = [  # a setting one of them does not record (an older run's) is not compared
        name for name in COMPARED_SETTINGS
        if name in ours and name in theirs and ours[name] != theirs[name]
    ]  # fmt: skip
    if not names:
        return []

    def shown(training: dict[str, Any]) -> str:
        values = {name: training[name] for name in names}
        return ", ".join(f"{k} {setting_text(k, v)}" for k, v in values.items())

    return [
        f"{run.run.name} trained with {shown(ours)} and the baseline {baseline.run.name} with "
        f"{shown(theirs)}: their accuracies are not like for like."
    ]


def _budget(data: RunData) -> tuple[str, int | None]:
    """A run's task and planned epochs (None: nothing says): a single-model run's from its
    summary, or for an unfinished run from its start; a PPO run's episodes' from its
    configuration (a growth baseline of 20 epochs against episodes of 15 was not warned of)."""
    summary, started = data.run.summary, data.state.started
    epochs: object = None
    if data.is_ppo:
        env = data.run.host_training()
        epochs = None if env is None else env.get("epochs")
    elif summary is not None and summary.growth is not None:
        epochs = summary.growth.epochs_planned
    elif summary is None and started is not None:
        epochs = started.max_epochs
    return data.run.task, epochs if type(epochs) is int else None


def _budget_text(data: RunData) -> str:
    """``_budget`` as a warning names it."""
    task, epochs = _budget(data)
    if epochs is None:
        return task
    return f"{task} {'in episodes of' if data.is_ppo else 'for'} {epochs} epochs"


def render_html(runs: Sequence[RunData], plots: Sequence[Plot], warnings: Sequence[str]) -> str:
    """The self-contained page: header, warnings, final metrics, then every plot embedded."""
    roles = [f"{role}: {d.run.name}" for role, d in zip(("run", "baseline"), runs, strict=False)]
    fields = [*HEADER_FIELDS, *([POLICY_FIELD] if any(d.policy for d in runs) else [])]
    header = [[k, *(get(d) for d in runs)] for k, get in fields]
    metrics = [[label, *cells] for label, cells in metric_rows(runs)]
    body = [
        pages.table("header", ["", *roles], _escaped(header)),
        "<h2>Final metrics</h2>",
        pages.table("metrics", ["metric", *(d.run.name for d in runs)], _escaped(metrics), 1),
        "<h2>Plots</h2>",
    ]
    if not plots:
        body.append(
            "<p>No plots: the log holds no per-epoch or per-round records (at "
            "<code>--telemetry.level minimal</code> a growth run logs its start, end and "
            "governor panics, no epoch; its <code>metrics.csv</code> holds every epoch).</p>"
        )
    for plot in plots:
        svg = plot.svg_filename
        note = f" ({plot.filename}; <a href='{svg}'>{svg}</a>)"
        body.append(pages.figure(plot.filename, plot.png, plot.caption, note))
    return pages.page(f"Esper report: {runs[0].run.name}", body, warnings)


def _escaped(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    return [[html.escape(cell) for cell in row] for row in rows]


def build_report(run: Path, baseline: Path | None = None) -> Report:
    """Read the run (and baseline) and render every plot and the page, writing nothing.

    Raises:
        RunDirectoryError: a path that is not a run directory.
        EventLogError: a malformed event line (other than a partial last line), e.g. one
            naming an unknown seed stage.
        ReportError: records that cannot be drawn (an unknown slot, a malformed meta.json).
    """
    runs = [load_run(run)] + ([] if baseline is None else [load_run(baseline)])
    plots = [p for p in _plots(runs[0], runs[1] if baseline else None) if p is not None]
    warnings = warnings_for(runs)
    return Report(plots, render_html(runs, plots, warnings), warnings)


PLOT_NAMES = (
    "accuracy", "loss", "difference", "timeline", "alpha", "params",
    "returns", "rewards", "actions", "progress", "head_entropy",
)  # fmt: skip
"""Every plot a report can hold (``Plot.name``)."""

PLOT_FILES = frozenset(f"{name}.{ext}" for name in PLOT_NAMES for ext in ("png", "svg"))
"""Every image file a report can hold; one of these left from an earlier report of another kind
is removed, so the directory holds exactly the report's images."""


def write_report(report: Report, out: Path) -> Path:
    """Write the PNGs and SVGs, then ``report.html``, each atomically, none if one of them
    could not be (``leyline.files.atomic_write_all``).

    Returns:
        The path of ``report.html``.

    Raises:
        OSError: ``out`` cannot be created or written.
    """
    files = [(p.filename, p.png) for p in report.plots]
    files += [(p.svg_filename, p.svg) for p in report.plots]
    files.append((REPORT_FILE, report.html.encode("utf-8")))
    earlier = _shown_plots(out / REPORT_FILE)  # only these images are ours to replace
    out.mkdir(parents=True, exist_ok=True)  # if a target is a directory, out existed
    remove_temporaries(out, PLOT_FILES | {REPORT_FILE})  # what a killed report left
    atomic_write_all([(out / name, data) for name, data in files])
    written = {name for name, _ in files}
    for stale in PLOT_FILES - written:
        if Path(stale).with_suffix(".png").name in earlier:
            (out / stale).unlink(missing_ok=True)
    return out / REPORT_FILE


_SHOWN_PLOT = re.compile(rb"<figure id='([a-z_]+\.png)'>")
"""A plot's figure on a report page (``pages.figure``, its anchor the plot's file name)."""


def _shown_plots(page: Path) -> set[str]:
    """The PNG files whose plots an earlier Esper report at ``page`` showed (none for a page
    that is not an Esper run report, or no page: a user's own images beside it stay)."""
    try:
        with page.open("rb") as f:
            head = [f.readline() for _ in range(3)]  # doctype, <html><head>, <title>
            if head[0] != b"<!DOCTYPE html>\n" or not head[2].startswith(b"<title>Esper report: "):
                return set()
            return {m[1].decode() for line in f for m in _SHOWN_PLOT.finditer(line)}
    except OSError:  # none, a directory, unreadable: no earlier report of ours
        return set()
