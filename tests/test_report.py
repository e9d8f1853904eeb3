"""``esper report`` and the report Karn writes: self-contained HTML, PNGs, tables, bad input."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex

from conftest import growth_summary, ppo_summary, write_run
from esper.cli.main import EXIT_BAD_INPUT, main
from esper.karn.colours import MARK_STYLES, STAGE_COLOURS
from esper.karn.report import PLOT_FILES, Plot, Report, build_report, plot_progress
from esper.karn.report_data import RunData, load_run
from esper.leyline import SeedStage
from esper.leyline.events import (
    ActionTaken,
    EpisodeFinished,
    EpochCompleted,
    PPOUpdate,
    RewardComputed,
    RunStarted,
    SeedTransition,
    SlotSnapshot,
    event_record,
)
from esper.leyline.files import try_lock
from esper.leyline.trials import LOCK_FILE
from esper.nissa.fold import LifecycleMark, StageSpan
from esper.nissa.record import (
    FinalMetrics,
    GrowthSummary,
    PPOSummary,
    read_meta,
    read_summary,
    write_summary,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DASH = "—"
GROWTH_PLOTS = {"accuracy.png", "loss.png", "timeline.png", "params.png", "alpha.png"}
COMPARED_PLOTS = GROWTH_PLOTS | {"difference.png"}  # against a growth baseline
PPO_PLOTS = {
    "returns.png", "rewards.png", "actions.png", "progress.png", "timeline.png", "params.png",
    "alpha.png",
}  # fmt: skip


def _growth(run: Path) -> GrowthSummary:
    summary = read_summary(run)
    assert summary is not None and summary.growth is not None
    return summary.growth


def _ppo(run: Path) -> PPOSummary:
    summary = read_summary(run)
    assert summary is not None and summary.ppo is not None
    return summary.ppo


class _Tables(HTMLParser):
    """Every ``<table class=...>`` of a page as rows of cell texts, by class."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: list[list[str]] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.current = self.tables.setdefault(str(dict(attrs)["class"]), [])
        elif tag == "tr" and self.current is not None:
            self.current.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.current is not None:
            self.current[-1].append("".join(self.cell))
            self.cell = None
        elif tag == "table":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _tables(page: str) -> dict[str, dict[str, list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return {name: {row[0]: row[1:] for row in rows} for name, rows in parser.tables.items()}


def _report(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["report", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _embedded(page: str) -> dict[str, bytes]:
    found = re.findall(
        r"<figure id='([\w.-]+)'><img [^>]*src='data:image/png;base64,([^']+)'", page
    )
    return {name: base64.b64decode(data) for name, data in found}


def _svg(png: str) -> str:
    return png.removesuffix(".png") + ".svg"


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "report"))
    return copy


def _write_run(path: Path, records: list[dict]) -> Path:
    """A minimal run directory holding exactly ``records``."""
    path.mkdir()
    (path / "config.json").write_text("{}")
    lines = [json.dumps({"t": 0.0, "run_id": path.name, **r}) for r in records]
    (path / "events.jsonl").write_text("\n".join(lines) + "\n")
    return path


def _started(mode: str = "heuristic", resumed: int | None = None) -> dict:
    return {
        "event": RunStarted.__name__,
        "mode": mode,
        "task": "synthetic",
        "seed": 0,
        "max_epochs": 3,
        "slots": ["early", "mid", "late"],
        "resumed_from_epoch": resumed,
    }


def _transition(epoch: int, slot: str, before: str, after: str, blueprint: str = "norm") -> dict:
    return {
        "event": SeedTransition.__name__,
        "epoch": epoch,
        "slot": slot,
        "blueprint": blueprint,
        "from_stage": before,
        "to_stage": after,
        "reason": "test",
    }


@pytest.fixture(scope="module")
def growth_report(
    recorded_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The heuristic run's report against the static run: (output directory, page)."""
    out = tmp_path_factory.mktemp("report") / "out"
    args = [str(recorded_runs["heuristic"]), "--baseline", str(recorded_runs["static"])]
    assert main(["report", *args, "--out", str(out)]) == 0
    return out, (out / "report.html").read_text(encoding="utf-8")


def test_html_is_self_contained_and_embeds_every_png(growth_report: tuple[Path, str]) -> None:
    out, page = growth_report
    for forbidden in ("http://", "https://", 'src="//', "src='//", "<script", "<link", "url("):
        assert forbidden not in page
    embedded = _embedded(page)
    assert set(embedded) == COMPARED_PLOTS
    assert {p.name for p in out.glob("*.png")} == COMPARED_PLOTS
    assert not list(out.glob(".*"))  # no temporary file left behind
    for name, data in embedded.items():
        assert (out / name).read_bytes() == data
        width, height = _png_size(data)
        assert width == 960 and height == (270 if name == "timeline.png" else 384)


def test_final_metrics_table_shows_both_summaries(
    growth_report: tuple[Path, str], recorded_runs: dict[str, Path]
) -> None:
    _, page = growth_report
    tables = _tables(page)
    metrics, header = tables["metrics"], tables["header"]
    summaries = [_growth(recorded_runs[m]) for m in ("heuristic", "static")]
    finals = [s.final for s in summaries if s.final is not None]
    assert metrics["metric"] == [recorded_runs["heuristic"].name, recorded_runs["static"].name]
    assert metrics["last epoch val acc"] == [f"{f.val_accuracy:.2f}%" for f in finals]
    tests = [s.test for s in summaries if s.test is not None]  # what a study ranks runs by
    assert len(tests) == 2 and metrics["test acc"] == [f"{t.final_accuracy:.2f}%" for t in tests]
    assert metrics["test acc, best val epoch"] == [f"{t.best_accuracy:.2f}%" for t in tests]
    assert metrics["best epoch val acc"] == [f"{s.best_val_accuracy:.2f}%" for s in summaries]
    assert metrics["last epoch val loss"] == [f"{f.val_loss:.4f}" for f in finals]
    assert metrics["params"] == [f"{s.param_count:,d}" for s in summaries]
    assert metrics["peak params"] == [f"{s.peak_param_count:,d}" for s in summaries]
    assert metrics["fossilized"] == [str(s.fossilized) for s in summaries]
    assert metrics["pruned"] == [str(s.pruned) for s in summaries]
    assert (
        summaries[0].fossilized > 0 and summaries[1].param_count < summaries[0].param_count
    )  # the recorded runs really differ, so a swapped column would be caught
    assert header["mode"] == ["heuristic", "static"]
    assert header["status"] == ["completed", "completed"]
    meta = read_meta(recorded_runs["heuristic"])
    assert meta is not None and header["git revision"][0] == (meta.git_revision or DASH)
    assert "policy" not in header  # no eval on the page


def test_missing_values_render_as_a_dash(
    recorded_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(recorded_runs["heuristic"], tmp_path)
    summary = read_summary(run)
    assert summary is not None and summary.growth is not None and summary.growth.final
    final = replace(summary.growth.final, val_loss=None)  # not finite: not measured
    growth = replace(summary.growth, best_val_accuracy=None, final=final)
    write_summary(run, replace(summary, growth=growth))
    (run / "meta.json").unlink()
    assert _report([str(run)], capsys)[0] == 0
    tables = _tables((run / "report" / "report.html").read_text(encoding="utf-8"))
    assert tables["metrics"]["best epoch val acc"] == [DASH]
    assert tables["metrics"]["last epoch val loss"] == [DASH]
    assert tables["metrics"]["pruned"] == [str(growth.pruned)]
    assert tables["header"]["git revision"] == [DASH]


def test_an_unfinished_run_reports_its_metrics_so_far(
    recorded_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its metrics read "—" throughout beside plots of its logged epochs (a walk-through):
    they are what the log holds, and what is measured only at the end stays "—"."""
    run = _copy(recorded_runs["heuristic"], tmp_path)
    (run / "summary.json").unlink()
    code, _, err = _report([str(run)], capsys)
    assert code == 0 and "no summary.json (still running or crashed): its metrics and plots " in err
    tables = _tables((run / "report" / "report.html").read_text(encoding="utf-8"))
    assert tables["header"]["status"] == ["unfinished"]
    lines = (run / "events.jsonl").read_text().splitlines()
    epochs = [r for r in map(json.loads, lines) if r["event"] == "EpochCompleted"]
    metrics = tables["metrics"]
    assert metrics["epochs"] == [str(epochs[-1]["epoch"])]
    assert metrics["last epoch val acc"] == [f"{epochs[-1]['val_accuracy']:.2f}%"]
    assert metrics["params"] == [f"{epochs[-1]['param_count']:,}"]
    for end in ("test acc", "final model val acc", "training FLOPs", "training time (s)"):
        assert metrics[end] == [DASH], end


def _epoch(n: int, accuracy: float = 50.0, *slots: SlotSnapshot) -> dict:
    """A complete ``EpochCompleted`` record (with ``slots``' snapshots)."""
    return event_record(EpochCompleted(n, 1.0, 60.0, 1.0, accuracy, 1000, slots, 0.1))


def test_timeline_and_marks_from_hand_written_transitions(tmp_path: Path) -> None:
    records = [
        _started(),
        _transition(3, "early", "DORMANT", "GERMINATED", "conv_light"),
        _epoch(4),  # not a transition
        _transition(4, "early", "GERMINATED", "TRAINING", "conv_light"),
        _transition(7, "early", "TRAINING", "PRUNED", "conv_light"),
        _transition(8, "early", "PRUNED", "EMBARGOED", "conv_light"),
        _transition(10, "late", "DORMANT", "GERMINATED", "norm"),
        _transition(10, "late", "GERMINATED", "PRUNED", "norm"),  # same epoch: no span
        _transition(5, "elsewhere", "DORMANT", "GERMINATED"),  # a slot not reported
        _epoch(12),
    ]
    data = load_run(_write_run(tmp_path / "hand", records))
    assert data.episode is not None and data.slots == ("early", "mid", "late")
    s = SeedStage
    assert data.episode.timeline(data.slots) == {  # the last span ends at the last epoch
        "early": [
            StageSpan(s.DORMANT, 0, 3, None),
            StageSpan(s.GERMINATED, 3, 4, "conv_light"),
            StageSpan(s.TRAINING, 4, 7, "conv_light"),
            StageSpan(s.PRUNED, 7, 8, "conv_light"),
            StageSpan(s.EMBARGOED, 8, 12, "conv_light"),
        ],
        "mid": [StageSpan(s.DORMANT, 0, 12, None)],
        "late": [StageSpan(s.DORMANT, 0, 10, None), StageSpan(s.PRUNED, 10, 12, "norm")],
    }
    assert data.episode.marks() == [
        LifecycleMark(3, "early", "germinate", "conv_light"),
        LifecycleMark(7, "early", "prune", "conv_light"),
        LifecycleMark(10, "late", "germinate", "norm"),
        LifecycleMark(10, "late", "prune", "norm"),
        LifecycleMark(5, "elsewhere", "germinate", "norm"),
    ]
    report = build_report(data.run.path)
    timeline = next(p for p in report.plots if p.name == "timeline")
    drawn = _marks_drawn(timeline.figure.axes[0])  # rows count up from the last slot
    assert drawn == {("germinate", 3, 2), ("prune", 7, 2), ("germinate", 10, 0), ("prune", 10, 0)}


def test_the_parameter_steps_line_up_with_the_timeline(tmp_path: Path) -> None:
    """Epoch k is drawn over (k - 1, k] on the timeline (a seed germinated after epoch 2 starts
    there); the parameter count was drawn over [k, k + 1), its rise an epoch later."""
    grown = {**_epoch(3), "param_count": 1500}
    records = [_started(), _epoch(1), _epoch(2), _transition(2, "early", "DORMANT", "TRAINING")]
    report = build_report(_write_run(tmp_path / "grown", [*records, grown]))
    (line,) = _plot(report, "params").figure.axes[0].lines
    assert line.get_drawstyle() == "steps-pre"  # each value held back to the epoch before
    (ax,) = _plot(report, "timeline").figure.axes
    assert any(bar.get_paths()[0].vertices[:, 0].min() == 2.0 for bar in ax.collections[:4])


def test_a_stage_entered_at_the_last_epoch_is_drawn(tmp_path: Path) -> None:
    """A slot pruned at epoch 11 and EMBARGOED at 12, the last: its final span (12, 12) was a
    bar of width 0, and the timeline seemed to end PRUNED."""
    records = [_started(), _transition(3, "early", "DORMANT", "GERMINATED", "conv_light")]
    records += [_transition(11, "early", "GERMINATED", "PRUNED", "conv_light")]
    records += [_epoch(12), _transition(12, "early", "PRUNED", "EMBARGOED", "conv_light")]
    report = build_report(_write_run(tmp_path / "end", records))
    (ax,) = next(p for p in report.plots if p.name == "timeline").figure.axes
    bars = []  # (colour, x, width) of the first slot's bars (its row is 2, from the bottom)
    for collection in ax.collections:
        colours = collection.get_facecolor()
        for i, path in enumerate(collection.get_paths()):
            box = path.get_extents()
            if not isinstance(collection, PathCollection) and box.y0 == pytest.approx(2 - 0.35):
                bars.append((to_hex(colours[i % len(colours)]), box.x0, box.width))
    last = max(bars, key=lambda bar: bar[1])
    assert last[0] == to_hex(STAGE_COLOURS[SeedStage.EMBARGOED]) and last[1] == 12
    assert last[2] > 0 and ax.get_xlim()[1] > 12


def _marks_drawn(ax: Axes) -> set[tuple[str, float, float]]:
    """Every lifecycle marker on ``ax`` as (kind, x, y), the kind told by its colour."""
    kinds = {style.colour: kind for kind, style in MARK_STYLES.items()}
    found = set()
    for collection in ax.collections:
        colours = collection.get_facecolor()
        kind = kinds.get(to_hex(colours[0])) if len(colours) else None
        if kind is not None and isinstance(collection, PathCollection):
            found |= {(kind, x, y) for x, y in collection.get_offsets().tolist()}
    return found


def test_timeline_of_a_recorded_run_covers_every_epoch(recorded_runs: dict[str, Path]) -> None:
    data = load_run(recorded_runs["heuristic"])
    assert data.episode is not None and data.episode.epochs[-1].epoch == 40
    spans = data.episode.timeline(data.slots)
    assert set(STAGE_COLOURS) == set(SeedStage)  # every stage the timeline may draw
    assert list(spans) == ["early", "mid", "late"]
    for mine in spans.values():
        assert mine[0].start == 0 and mine[-1].end == 40
        assert all(a.end == b.start for a, b in pairwise(mine))
    fossilized = [m for m in data.episode.marks() if m.kind == "fossilize"]
    assert len(fossilized) == _growth(data.run.path).fossilized
    assert fossilized  # the recorded run grows a permanent seed: its slot ends FOSSILIZED
    for mark in fossilized:
        assert [i.stage for i in spans[mark.slot]][-1] is SeedStage.FOSSILIZED


def test_a_resumed_run_keeps_each_epoch_once(tmp_path: Path) -> None:
    epoch = _epoch

    records = [_started(), epoch(1, 10.0), epoch(2, 20.0), epoch(3, 99.0)]
    records += [_started(resumed=2), epoch(3, 30.0)]  # epoch 3 was run again after Ctrl-C
    data = load_run(_write_run(tmp_path / "resumed", records))
    assert [(e.epoch, e.val_accuracy) for e in data.epochs] == [(1, 10.0), (2, 20.0), (3, 30.0)]
    accuracy = next(p for p in build_report(data.run.path).plots if p.name == "accuracy")
    validation = accuracy.figure.axes[0].lines[0]
    assert validation.get_xydata().tolist() == [[1, 10.0], [2, 20.0], [3, 30.0]]


@pytest.fixture(scope="module")
def ppo_report(
    recorded_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The PPO run's report against the heuristic run (a baseline of the other kind)."""
    out = tmp_path_factory.mktemp("ppo-report") / "out"
    args = [str(recorded_runs["ppo"]), "--baseline", str(recorded_runs["heuristic"])]
    assert main(["report", *args, "--out", str(out)]) == 0
    return out, (out / "report.html").read_text(encoding="utf-8")


def test_ppo_report_has_reward_and_action_plots(ppo_report: tuple[Path, str]) -> None:
    out, page = ppo_report
    embedded = _embedded(page)
    assert set(embedded) == PPO_PLOTS
    for name in PPO_PLOTS:
        assert _png_size((out / name).read_bytes())[0] == 960
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert any("Reward components" in c for c in captions)
    assert any("Action distribution" in c for c in captions)
    assert sum("last episode of env 0, episode 2" in c for c in captions) == 3


def test_the_head_entropy_plot_says_its_entropy_is_normalized(
    recorded_runs: dict[str, Path],
) -> None:
    """Its axis said "nats"; a head's entropy is divided by the log of its allowed choices."""
    from esper.karn.report import plot_head_entropy
    from esper.nissa.fold import fold
    from esper.nissa.log import read_events

    records = read_events(recorded_runs["ppo"] / "events.jsonl").records
    state = fold(records, recent=0)
    assert plot_head_entropy(state.rounds) is None  # logged at debug only
    first = state.rounds[0]
    first.head_entropy["op"] = 0.25
    plot = plot_head_entropy(state.rounds)
    assert plot is not None
    assert plot.figure.axes[0].get_ylabel() == "normalized entropy (0 to 1)"
    assert "divided by the log of its allowed choices" in plot.caption


def test_a_stopped_ppo_runs_plots_draw_its_last_finished_episode(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    """A PPO run stopped in round 3 drew env 0's unfinished third episode (2 of its 6 epochs)
    as "last episode of env 0, episode 3", beside tables of 2 rounds. Its last finished one
    (episode 2, with an EpisodeFinished) is drawn."""
    run = _copy(recorded_runs["ppo"], tmp_path)
    lines = (run / "events.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    last = [r for r in records if r["event"] == EpochCompleted.__name__ and r["env"] == 0][-1]
    started = [json.dumps({**last, "episode": 3, "epoch": n}) for n in (1, 2)]
    (run / "events.jsonl").write_text("\n".join([*lines, *started]) + "\n")
    drawn = load_run(run)
    assert drawn.episode is not None and drawn.episode.number == 2
    ended = [r for r in records if r["event"] == EpisodeFinished.__name__ and r["env"] == 0]
    assert ended[-1]["episode"] == 2
    epochs = [r for r in records if r["event"] == last["event"] and r["env"] == 0]
    assert [e.epoch for e in drawn.epochs] == [r["epoch"] for r in epochs if r["episode"] == 2]
    captions = [p.caption for p in build_report(run).plots]
    assert sum("last episode of env 0, episode 2" in c for c in captions) == 3


def test_ppo_round_statistics_match_the_log_and_summary(recorded_runs: dict[str, Path]) -> None:
    run = recorded_runs["ppo"]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    summary = _ppo(run)
    rounds = load_run(run).state.rounds
    assert (
        [r.update.round for r in rounds]
        == [1, 2]
        == [e["round"] for e in events if e["event"] == PPOUpdate.__name__]
    )
    updates = [i for i, e in enumerate(events) if e["event"] == PPOUpdate.__name__]
    first_update = updates[0]
    rewards = [e for e in events[:first_update] if e["event"] == RewardComputed.__name__]
    for name in ("pbrs", "rent"):
        values = [v for e in rewards for n, v in e["components"] if n == name]
        assert rounds[0].components[name] == pytest.approx(sum(values) / len(values))
    assert rounds[0].mean_reward == pytest.approx(sum(e["total"] for e in rewards) / len(rewards))
    actions = [e["op"] for e in events if e["event"] == ActionTaken.__name__]
    assert sum(sum(r.ops.values()) for r in rounds) == len(actions)
    assert sum(r.ops.get("WAIT", 0) for r in rounds) == actions.count("WAIT")
    # How far seeds got: transitions into each stage, per round, from the log itself.
    start = 0
    for folded, end in zip(rounds, updates, strict=True):
        entered = Counter(
            e["to_stage"] for e in events[start:end] if e["event"] == SeedTransition.__name__
        )
        assert folded.entered == dict(entered)
        start = end
    plot = plot_progress(rounds)
    assert plot is not None
    lines = {line.get_label(): list(line.get_ydata()) for line in plot.figure.axes[0].lines}
    for stage in lines:
        assert lines[stage] == [r.entered.get(stage, 0) for r in rounds]
    # a pruned seed's cool-down lay on PRUNED's line (DORMANT's near-white): not drawn
    cool_down = {"EMBARGOED", "RESETTING", "DORMANT"}
    assert set(lines) == {stage for r in rounds for stage in r.entered} - cool_down
    assert "PRUNED" in lines and any(r.entered.get("EMBARGOED") for r in rounds)
    assert rounds[-1].update.mean_final_accuracy == pytest.approx(summary.final_mean_accuracy)
    assert rounds[-1].update.mean_return == pytest.approx(summary.final_mean_return, abs=1e-3)
    finished = [e for e in events[:first_update] if e["event"] == EpisodeFinished.__name__]
    assert len(finished) == 2  # both environments' first episodes belong to round 1
    returns = [e["episode_return"] for e in finished]
    assert rounds[0].update.mean_return == pytest.approx(sum(returns) / 2)  # the same mean
    accuracies = [e["final_val_accuracy"] for e in finished]
    assert rounds[0].update.mean_final_accuracy == pytest.approx(sum(accuracies) / 2)


def test_baseline_of_the_other_kind_is_compared_where_comparable(
    ppo_report: tuple[Path, str], recorded_runs: dict[str, Path]
) -> None:
    _, page = ppo_report
    metrics = _tables(page)["metrics"]
    ppo, growth = _ppo(recorded_runs["ppo"]), _growth(recorded_runs["heuristic"])
    assert growth.final is not None
    assert metrics["final mean acc"] == [f"{ppo.final_mean_accuracy:.2f}%", DASH]
    assert metrics["last epoch val acc"] == [DASH, f"{growth.final.val_accuracy:.2f}%"]
    seconds = [read_summary(recorded_runs[m]) for m in ("ppo", "heuristic")]
    assert metrics["training time (s)"] == [f"{s.wall_seconds:.1f}" for s in seconds if s]
    assert "is a heuristic run" in page and "final accuracy as a horizontal line" in page


def test_growth_run_with_a_ppo_baseline(
    recorded_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(recorded_runs["static"]), "--baseline", str(recorded_runs["ppo"])]
    code, out, err = _report([*args, "--out", str(tmp_path / "r")], capsys)
    assert code == 0 and out.strip() == f"report: {tmp_path / 'r' / 'report.html'}"
    assert "is a ppo run" in err
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "PPO baseline&#x27;s final mean accuracy" in page
    # no difference against a PPO run; a static host has no seed to draw a timeline or α of
    assert set(_embedded(page)) == GROWTH_PLOTS - {"timeline.png", "alpha.png"}


@pytest.fixture(scope="module")
def compared(recorded_runs: dict[str, Path]) -> Report:
    """The heuristic run's report against the static run, built in memory."""
    return build_report(recorded_runs["heuristic"], recorded_runs["static"])


def _plot(report: Report, name: str) -> Plot:
    return next(p for p in report.plots if p.name == name)


def test_report_is_deterministic(compared: Report, recorded_runs: dict[str, Path]) -> None:
    second = build_report(recorded_runs["heuristic"], recorded_runs["static"])
    assert compared.html == second.html
    assert [p.png for p in compared.plots] == [p.png for p in second.plots]
    assert [p.svg for p in compared.plots] == [p.svg for p in second.plots]


def test_every_plot_has_a_valid_svg_beside_its_png_linked_from_the_page(
    growth_report: tuple[Path, str], compared: Report
) -> None:
    out, page = growth_report
    assert {p.name for p in out.glob("*.svg")} == {_svg(name) for name in COMPARED_PLOTS}
    for plot in compared.plots:
        svg = (out / plot.svg_filename).read_bytes()
        assert svg == plot.svg  # the CLI's files are what the builder rendered
        root = ElementTree.fromstring(svg)  # well-formed XML
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert f"<a href='{plot.svg_filename}'>" in page
        assert b"Matplotlib v" not in svg and b"<dc:date>" not in svg  # no version, no date


def _raw_epochs(run: Path) -> dict[int, dict]:
    lines = (run / "events.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["epoch"]: r for r in records if r["event"] == EpochCompleted.__name__}


def test_difference_panel_plots_run_minus_baseline_per_epoch(
    compared: Report, recorded_runs: dict[str, Path]
) -> None:
    run, base = _raw_epochs(recorded_runs["heuristic"]), _raw_epochs(recorded_runs["static"])
    assert run.keys() == base.keys() == set(range(1, 41))
    accuracy_ax, loss_ax = _plot(compared, "difference").figure.axes
    for ax, key in ((accuracy_ax, "val_accuracy"), (loss_ax, "val_loss")):
        label = f"{recorded_runs['heuristic'].name} − {recorded_runs['static'].name}"
        (line,) = [line for line in ax.lines if line.get_label() == label]
        assert line.get_xdata().tolist() == sorted(run)
        expected = [run[e][key] - base[e][key] for e in sorted(run)]
        assert line.get_ydata().tolist() == pytest.approx(expected, abs=1e-12)
        zero = [line for line in ax.lines if line.get_label().startswith("_")]
        assert [list(z.get_ydata()) for z in zero] == [[0.0, 0.0]]  # the zero line
    differences = [run[e]["val_accuracy"] - base[e]["val_accuracy"] for e in run]
    assert min(differences) < 0 < max(differences)  # the recorded runs cross: a real check


def test_seed_events_are_marked_on_the_curves_at_their_epochs(
    compared: Report, recorded_runs: dict[str, Path]
) -> None:
    run = recorded_runs["heuristic"]
    epochs = _raw_epochs(run)
    records = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    kinds = {"GERMINATED": "germinate", "FOSSILIZED": "fossilize", "PRUNED": "prune"}
    entered = [
        (kinds[r["to_stage"]], r["epoch"])
        for r in records
        if r["event"] == SeedTransition.__name__ and r["to_stage"] in kinds
    ]
    assert {kind for kind, _ in entered} == set(kinds.values())
    for name, key in (("accuracy", "val_accuracy"), ("loss", "val_loss")):
        ax = _plot(compared, name).figure.axes[0]
        assert _marks_drawn(ax) == {(k, e, epochs[e][key]) for k, e in entered}
        assert set(ax.get_legend_handles_labels()[1]) >= set(kinds.values())  # in the legend


def test_a_one_epoch_run_draws_visible_points(tmp_path: Path) -> None:
    snapshot = SlotSnapshot("mid", "TRAINING", "norm", 0.0, None, None, 10)
    records = [
        _started(),
        _transition(1, "mid", "DORMANT", "GERMINATED"),
        _epoch(1, 42.0, snapshot),
    ]
    report = build_report(_write_run(tmp_path / "short", records))
    assert {p.name for p in report.plots} == {n.removesuffix(".png") for n in GROWTH_PLOTS}
    for name in ("accuracy", "loss", "params", "alpha"):
        ax = _plot(report, name).figure.axes[0]
        drawn = [line for line in ax.lines if np.isfinite(line.get_ydata()).any()]
        assert drawn and all(line.get_marker() not in ("None", "", None) for line in drawn)
    assert _marks_drawn(_plot(report, "accuracy").figure.axes[0]) == {("germinate", 1, 42.0)}


def test_the_difference_marks_only_seed_events_in_the_epochs_both_runs_reached(
    tmp_path: Path,
) -> None:
    """A fossilization after the baseline's last epoch was drawn past the panel's edge (into
    the loss panel and off the figure): a mark is drawn only where there is a difference."""
    records = [_started(), _transition(1, "mid", "DORMANT", "GERMINATED")]
    records += [_epoch(n, 40.0 + n) for n in range(1, 6)]
    records.insert(5, _transition(4, "mid", "HOLDING", "FOSSILIZED"))  # after epoch 4
    run = _write_run(tmp_path / "run", records)
    baseline = _write_run(tmp_path / "base", [_started(), *(_epoch(n, 40.0) for n in (1, 2, 3))])
    accuracy_ax, loss_ax = _plot(build_report(run, baseline), "difference").figure.axes
    assert _marks_drawn(accuracy_ax) == {("germinate", 1, 1.0)}
    assert _marks_drawn(loss_ax) == {("germinate", 1, 0.0)}
    long_baseline = _write_run(tmp_path / "long", [_started(), *(_epoch(n) for n in range(1, 6))])
    accuracy_ax, _ = _plot(build_report(run, long_baseline), "difference").figure.axes
    assert _marks_drawn(accuracy_ax) == {("germinate", 1, -9.0), ("fossilize", 4, -6.0)}


@pytest.mark.parametrize(("mode", "step_event"), [("heuristic", '"EpochCompleted"'),
                                                  ("ppo", '"PPOUpdate"')])  # fmt: skip
def test_steps_the_event_log_lost_are_named(
    recorded_runs: dict[str, Path], tmp_path: Path, mode: str, step_event: str
) -> None:
    """A system crash can lose the log's unsynced lines while the checkpoints, CSV and summary
    keep them: the plots showed the epochs (rounds) that were left as if they were the run, and
    only ``--resume`` said so (a walk-through)."""
    from esper.karn.report import warnings_for

    run = _copy(recorded_runs[mode], tmp_path)
    assert not [w for w in warnings_for([load_run(run)]) if "lacks" in w]  # intact
    summary = read_summary(run)
    assert summary is not None
    planned = summary.growth.epochs_completed if summary.growth else summary.ppo.rounds_completed
    lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
    steps = [i for i, line in enumerate(lines) if f'"event": {step_event}' in line]
    (run / "events.jsonl").write_text("".join(lines[: steps[len(steps) // 2]]))  # a half lost
    data = load_run(run)
    logged = [e.epoch for e in data.epochs] if summary.growth else [
        r.update.round for r in data.state.rounds
    ]  # fmt: skip
    lost = [n for n in range(1, planned + 1) if n not in logged]
    unit = "epoch" if summary.growth else "round"
    spans = f"{lost[0]}-{lost[-1]}" if len(lost) > 1 else str(lost[0])
    assert lost == list(range(lost[0], planned + 1))  # the log's tail is what is lost
    assert [w for w in warnings_for([data]) if "lacks" in w] == [
        f"{run.name}: the event log lacks {len(lost)} of its {planned} {unit}s ({spans}; lost "
        "in a system crash, or removed): the plots lack them; the table's final numbers are "
        "summary.json's."
    ]
    if summary.growth:  # --telemetry.level minimal logs no epochs: nothing was lost
        config = json.loads((run / "config.json").read_text())
        config["telemetry"]["level"] = "minimal"
        (run / "config.json").write_text(json.dumps(config))
        assert not [w for w in warnings_for([load_run(run)]) if "lacks" in w]


def test_a_baseline_of_the_other_kind_is_named_with_its_article(tmp_path: Path) -> None:
    from esper.karn.report import warnings_for

    ppo = load_run(_write_run(tmp_path / "p", [_started("ppo")]))
    evaluated = load_run(_write_run(tmp_path / "e", [_started("eval"), _epoch(1)]))

    def baseline_lines(runs: list[RunData]) -> list[str]:
        return [line for line in warnings_for(runs) if "summary.json" not in line]

    first = "the baseline p is a ppo run and e an eval run"
    assert [line[:45] for line in baseline_lines([evaluated, ppo])] == [first]
    assert [line[:45] for line in baseline_lines([ppo, evaluated])] == [
        "the baseline e is an eval run and p a ppo run"
    ]
    # Their final accuracies are compared, so another task is named too (it was not: the
    # kinds' line stood alone; a review).
    started = {**_started("eval"), "task": "digits"}
    other = load_run(_write_run(tmp_path / "d", [started, _epoch(1)]))
    assert baseline_lines([other, ppo])[1:] == [
        "d ran digits for 3 epochs and the baseline p ran synthetic: their accuracies are not "
        "like for like."
    ]
    assert baseline_lines([ppo, other])[1:] == [
        "p ran synthetic and the baseline d ran digits for 3 epochs: their accuracies are not "
        "like for like."
    ]
    # The same task in episodes of other lengths: the growth run's final accuracy drawn against
    # episodes of 15 epochs went unremarked (a walk-through)
    (tmp_path / "p" / "config.json").write_text(json.dumps({"env": {"epochs": 15}}))
    ppo = load_run(tmp_path / "p")
    assert baseline_lines([ppo, evaluated])[1:] == [
        "p ran synthetic in episodes of 15 epochs and the baseline e ran synthetic for 3 epochs: "
        "their accuracies are not like for like."
    ]
    (tmp_path / "p" / "config.json").write_text(json.dumps({"env": {"epochs": 3}}))
    assert baseline_lines([load_run(tmp_path / "p"), evaluated])[1:] == []  # like for like
    (tmp_path / "p" / "config.json").write_text("{}")
    ppo = load_run(tmp_path / "p")
    other_ppo = load_run(_write_run(tmp_path / "q", [{**_started("ppo"), "task": "digits"}]))
    assert baseline_lines([ppo, other_ppo]) == [
        "p ran synthetic and the baseline q ran digits: their accuracies are not like for like."
    ]


def test_a_baseline_trained_with_other_settings_is_named(tmp_path: Path) -> None:
    """An eval keeps its policy's tiny preset (4 batches per epoch, 256 validation samples):
    against a static run of the task's own settings, its lower accuracy read as the policy's
    doing, without a word. Threads and the data's folder do not change what is measured."""
    from esper.karn.report import warnings_for

    def run(name: str, mode: str, epochs: int = 3, **training: object) -> RunData:
        path = _write_run(tmp_path / name, [{**_started(mode), "max_epochs": epochs}, _epoch(1)])
        given = {
            "batch_size": 64,
            "batches_per_epoch": None,
            "val_samples": None,
            "lr": 0.003,
            "weight_decay": 0.0,
            "width": None,
            "precision": "float32",
            "threads": 1,
        }
        (path / "config.json").write_text(json.dumps({"training": {**given, **training}}))
        return load_run(path)

    def lines(runs: list[RunData]) -> list[str]:
        return [line for line in warnings_for(runs) if "summary.json" not in line]

    evaluated = run("e", "eval", batches_per_epoch=4, val_samples=256)
    static = run("s", "static", threads=2, data_dir="/elsewhere")
    assert lines([evaluated, static]) == [
        "e trained with batches_per_epoch 4, val_samples 256 and the baseline s with "
        "batches_per_epoch all, val_samples all: their accuracies are not like for like."
    ]
    assert lines([run("w", "heuristic", lr=0.01, precision="bfloat16"), static]) == [
        "w trained with lr 0.01, precision bfloat16 and the baseline s with lr 0.003, precision "
        "float32: their accuracies are not like for like."
    ]
    assert lines([run("h", "heuristic"), static]) == []
    # other epochs too: the settings went unnamed behind the epochs' line (a walk-through)
    assert lines([run("x", "heuristic", epochs=9, lr=10.0), static]) == [
        "x ran synthetic for 9 epochs and the baseline s ran synthetic for 3 epochs: their "
        "accuracies are not like for like.",
        "x trained with lr 10.0 and the baseline s with lr 0.003: their accuracies are not like "
        "for like.",
    ]
    # a host widened to the grown one's size is the baseline "per parameter" asks for
    assert lines([run("h2", "heuristic"), run("m", "static", width=8)]) == []
    run("o", "static")  # a run that did not record a setting: not compared
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    del config["training"]["precision"]
    (tmp_path / "o" / "config.json").write_text(json.dumps(config))
    assert lines([run("p", "heuristic", precision="bfloat16"), load_run(tmp_path / "o")]) == []
    (tmp_path / "s" / "config.json").write_text("{}")  # unreadable settings: no guess
    assert lines([evaluated, load_run(tmp_path / "s")]) == []


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_short_runs_axis_spans_its_epochs_and_no_more(tmp_path: Path, epochs: int) -> None:
    """Two epochs (or rounds) were drawn on an axis running to a third that does not exist."""
    run = _write_run(tmp_path / "r", [_started(), *(_epoch(n) for n in range(1, epochs + 1))])
    ax = _plot(build_report(run), "accuracy").figure.axes[0]
    assert ax.get_xlim() == (0.5, epochs + 0.5)
    assert [t for t in ax.get_xticks() if 0.5 <= t <= epochs + 0.5] == list(range(1, epochs + 1))


def test_epochs_rounds_and_counts_are_ticked_in_whole_numbers(
    compared: Report, recorded_runs: dict[str, Path]
) -> None:
    """The timeline read 0.0, 2.5, 5.0 … and the PPO progress plot's seed counts 0.5, 2.5 (a
    walk-through), beside whole epochs on every other plot."""
    timeline = _plot(compared, "timeline").figure.axes[0]
    progress = _plot(build_report(recorded_runs["ppo"]), "progress").figure.axes[0]
    for ticks in (timeline.get_xticks(), progress.get_xticks(), progress.get_yticks()):
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def _assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esper: error: ") and message in lines[0]
    assert "Traceback" not in err


def test_missing_or_non_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = _report([str(tmp_path / "nope"), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "does not exist")
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "notes.txt").write_text("hello")
    code, _, err = _report([str(tmp_path / "notarun")], capsys)
    _assert_one_line_error(code, err, "not an Esper run directory")
    assert not out.exists() and not (tmp_path / "notarun" / "report").exists()


def test_a_report_file_that_is_a_directory_is_one_line_and_writes_nothing(
    recorded_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by an adversarial sweep: the images were written, then the page failed."""
    out = tmp_path / "out"
    (out / "report.html").mkdir(parents=True)
    code, _, err = _report([str(recorded_runs["heuristic"]), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "report.html': it is a directory, not a file")
    assert [p.name for p in out.iterdir()] == ["report.html"]


def test_bad_baseline_writes_nothing(
    recorded_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = [str(recorded_runs["heuristic"]), "--baseline", str(tmp_path / "nope")]
    code, _, err = _report([*args, "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "does not exist")
    assert not out.exists()


def test_malformed_middle_line(
    recorded_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(recorded_runs["heuristic"], tmp_path)
    lines = (run / "events.jsonl").read_text().splitlines()
    lines[4] = '{"t": 1.0, "event": "EpochCompleted", "epoch": '
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = _report([str(run)], capsys)
    _assert_one_line_error(code, err, "events.jsonl:5: malformed event line")
    assert not (run / "report").exists()


def test_unknown_stage_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [
        _started(),
        _epoch(1),
        _transition(1, "mid", "DORMANT", "SPROUTING"),
    ]
    run = _write_run(tmp_path / "odd", records)
    code, _, err = _report([str(run)], capsys)
    _assert_one_line_error(code, err, "unknown seed stage 'SPROUTING'")
    assert not (run / "report").exists()


def test_an_unknown_slot_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path / "odd", [{**_started(), "slots": ["early", "middle"]}, _epoch(1)])
    code, _, err = _report([str(run)], capsys)
    _assert_one_line_error(code, err, "unknown slot name 'middle'")
    assert "events.jsonl" in err and not (run / "report").exists()


def test_a_log_without_epochs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path / "minimal", [_started()])  # --telemetry minimal, or a fast crash
    code, _, err = _report([str(run)], capsys)
    assert code == 0 and "no summary.json" in err
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "No plots" in page and "at <code>--telemetry.level minimal</code>" in page
    assert not _embedded(page)
    assert not list((run / "report").glob("*.png")) and not list((run / "report").glob("*.svg"))


def test_out_is_a_file(
    recorded_runs: dict[str, Path],
    tiny_study: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It ended "[Errno 17] File exists: 'afile'", after the report was built and its
    warnings printed (adversarial sweep, review): a run's or a study's report alike."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for reported in (recorded_runs["static"], tiny_study):
        for out, what in (("afile", "not a directory"), ("dangling", "a symbolic link that")):
            code, _, err = _report([str(reported), "--out", str(tmp_path / out)], capsys)
            message = f"cannot write the report to {str(tmp_path / out)!r}: it is {what}"
            _assert_one_line_error(code, err, message)
    assert afile.read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_a_run_given_as_its_own_baseline_is_said_to_be(recorded_runs: dict[str, Path]) -> None:
    from esper.karn.report import warnings_for

    run = load_run(recorded_runs["static"])
    itself = f"the baseline is {run.run.name} itself: every difference is 0."
    assert warnings_for([run, run]) == [itself]
    assert warnings_for([run]) == []


def test_truncated_last_line_still_reports_with_a_warning(
    recorded_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(recorded_runs["heuristic"], tmp_path)
    complete = len((run / "events.jsonl").read_text().splitlines())
    with (run / "events.jsonl").open("a") as log:
        log.write('{"t": 1.0, "run_id": "x", "event": "EpochComp')
    code, out, err = _report([str(run)], capsys)
    assert code == 0 and "report.html" in out
    assert f"line {complete + 1}, skipped" in err
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert f"partial line (line {complete + 1}, skipped)" in page
    assert set(_embedded(page)) == GROWTH_PLOTS
    assert "cut off while writing it." in err
    (run / "summary.json").unlink()  # running (or crashed): its writer may be mid-line now
    code, out, err = _report([str(run)], capsys)
    assert code == 0 and "cut off while writing it, or is writing it now." in err
    # its metrics as far as the log goes (they read "—" throughout; a walk-through)
    epochs = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()[:-1]]
    epochs = [r for r in epochs if r["event"] == "EpochCompleted"]
    metrics = _tables((run / "report" / "report.html").read_text(encoding="utf-8"))["metrics"]
    assert metrics["epochs"] == [str(epochs[-1]["epoch"])]
    assert metrics["best epoch val acc"] == [f"{max(r['val_accuracy'] for r in epochs):.2f}%"]
    assert metrics["last epoch val loss"] == [f"{epochs[-1]['val_loss']:.4f}"]
    assert metrics["test acc"] == ["—"]  # read when the run ends: not yet


def test_help_does_not_import_matplotlib() -> None:
    code = (
        "import sys\n"
        "from esper.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED' if 'matplotlib' in sys.modules else 'CLEAN')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().endswith("CLEAN")


def test_demo_links_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import esper.cli.demo as demo

    monkeypatch.setattr(demo, "_pick_task", lambda data_dir: "synthetic")  # seconds, not minutes
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("report: ") and last.endswith("report.html")
    report = Path(last.removeprefix("report: "))
    heuristic = next(tmp_path.glob("demo-*-heuristic"))
    static = next(tmp_path.glob("demo-*-static"))
    assert report == heuristic / "report" / "report.html" and report.is_file()
    header = _tables(report.read_text(encoding="utf-8"))["header"]
    assert header[""] == [f"run: {heuristic.name}", f"baseline: {static.name}"]


def test_a_report_sweeps_up_what_a_killed_report_left(
    tmp_path: Path, recorded_runs: dict[str, Path], tiny_study: Path, capsys
) -> None:
    """esper report killed while writing left hidden ``.NAME.tmp-*`` files that nothing
    removed. The next report removes those of its own files, and only those."""
    out, study = tmp_path / "report", tmp_path / "study"
    out.mkdir()
    shutil.copytree(tiny_study, study)
    for name in (".loss.png.tmp-a1", ".report.html.tmp-b2", ".notes.txt.tmp-c3"):
        (out / name).write_text("half")
    (study / ".report.html.tmp-d4").write_text("half")
    (study / ".results.md.tmp-e5").write_text("half")  # the driver's: its next run sweeps it
    assert _report([str(recorded_runs["heuristic"]), "--out", str(out)], capsys)[0] == 0
    assert _report([str(study), "--reps", "10"], capsys)[0] == 0
    assert sorted(p.name for p in out.glob(".*")) == [".notes.txt.tmp-c3"]
    assert sorted(p.name for p in study.glob(".*")) == [".results.md.tmp-e5"]


def test_a_report_replaces_an_earlier_one_of_another_kind(
    tmp_path: Path, recorded_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    for run in ("ppo", "heuristic"):
        code, _, _ = _report([str(recorded_runs[run]), "--out", str(out)], capsys)
        assert code == 0
        images = {p.name for p in out.glob("*.png")} | {p.name for p in out.glob("*.svg")}
        assert images <= PLOT_FILES  # the list knows every plot
    assert {p.name for p in out.glob("*.png")} == GROWTH_PLOTS
    assert {p.name for p in out.glob("*.svg")} == {_svg(name) for name in GROWTH_PLOTS}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "rewards.png").write_text("a user's file, not a report's")
    code, _, _ = _report([str(recorded_runs["heuristic"]), "--out", str(mine)], capsys)
    assert code == 0 and (mine / "rewards.png").read_text() == "a user's file, not a report's"
    # Beside a page of their own, a user's images that share a plot's name stay too (any
    # report.html was taken as ours, and its neighbours' names as our images).
    site = tmp_path / "site"
    site.mkdir()
    (site / "report.html").write_text("<!DOCTYPE html>\n<p>my page</p>\n")
    for name in ("progress.png", "returns.svg"):
        (site / name).write_text("mine")
    code, _, _ = _report([str(recorded_runs["heuristic"]), "--out", str(site)], capsys)
    assert code == 0 and (site / "progress.png").read_text() == "mine"
    assert (site / "returns.svg").read_text() == "mine"
    # An earlier report's own images it no longer draws go, but not one it never showed.
    code, _, _ = _report([str(recorded_runs["ppo"]), "--out", str(out)], capsys)
    (out / "difference.png").write_text("mine")  # a name the ppo report does not show
    code, _, _ = _report([str(recorded_runs["heuristic"]), "--out", str(out)], capsys)
    assert code == 0 and (out / "difference.png").read_text() == "mine"
    assert not (out / "returns.png").exists() and not (out / "returns.svg").exists()


def test_final_metrics_read_the_record_summary(tmp_path: Path) -> None:
    from esper.karn.report import metric_rows
    from esper.karn.report_data import final_accuracy

    growth = load_run(write_run(tmp_path / "grow", growth_summary("grow")))
    ppo = load_run(write_run(tmp_path / "learn", ppo_summary("learn")))
    rows = dict(metric_rows([growth, ppo]))
    assert rows["best epoch val acc"] == ["77.50%", DASH]
    assert rows["last epoch val acc"] == [DASH, DASH]  # NaN was written as null
    assert rows["last epoch train acc"] == ["81.00%", DASH]
    assert rows["host params"] == ["1,000", DASH]
    assert rows["final mean return"] == [DASH, "1.250"]
    assert rows["env steps"] == [DASH, "640"]
    labels = list(rows)  # the growth run's metrics first, then those only the PPO run has
    assert labels.index("epochs") < labels.index("final mean acc") < labels.index("env steps")
    assert rows["training time (s)"] == ["12.5", "3.0"]
    assert final_accuracy(growth) is None and final_accuracy(ppo) is None
    # the final model's, as every other view calls final: the last epoch's was drawn (30.92%
    # against the 31.20% the CLI, TUI and table said; a walk-through)
    summary = growth_summary("done")
    assert summary.growth is not None
    finished = replace(
        summary.growth, final=FinalMetrics(0.5, 81.0, 0.7, 30.92), final_model_val_accuracy=31.2
    )
    done = load_run(write_run(tmp_path / "done", replace(summary, growth=finished)))
    assert final_accuracy(done) == 31.2
    meta = read_meta(growth.run.path)
    assert meta is not None and growth.git_revision == meta.git_revision


def test_a_malformed_meta_file_stops_the_report_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path / "grow", growth_summary("grow"))
    (run / "meta.json").write_text('{"run_id": 1}')
    code, _, err = _report([str(run)], capsys)
    _assert_one_line_error(code, err, "meta.json' is not an Esper run meta file: missing")
    assert not (run / "report").exists()


# --- the page format both reports share (esper.leyline.pages) ------------------------------------


def test_page_escapes_text_embeds_the_png_and_right_aligns_number_cells() -> None:
    from esper.leyline import pages

    png = PNG_SIGNATURE + b"not really an image"
    body = [
        pages.table("t", ["a<b", "x", "y"], [["r&1", "left", "right"]], numbers_from=2),
        pages.figure("fig<1>", png, "caption <b>", note=" (<a href='f.svg'>f.svg</a>)"),
    ]
    page = pages.page("run <x>", body, warnings=["cut <off>"])

    assert "<title>run &lt;x&gt;</title>" in page and "<h1>run &lt;x&gt;</h1>" in page
    assert "<p class='warning'>Warning: cut &lt;off&gt;</p>" in page
    assert "<th>a&lt;b</th>" in page
    # row cells are HTML the caller escaped or built; from index 2 on they are numbers
    assert "<tr><th>r&1</th><td>left</td><td class='num'>right</td></tr>" in page
    assert pages.table("t", ["a", "b"], [["r", "1"]]).count("class='num'") == 0
    data = re.search(r"src='data:image/png;base64,([^']*)'", page)
    assert data is not None and base64.b64decode(data.group(1)) == png
    assert "<figure id='fig&lt;1&gt;'><img alt='caption &lt;b&gt;'" in page
    assert "<figcaption>caption &lt;b&gt; (<a href='f.svg'>f.svg</a>)</figcaption>" in page
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>\n")


def test_a_text_table_shows_the_same_cells_in_markdown_and_html() -> None:
    """results.md, a study's report and the dashboard lay a study's tables out from one
    TextTable; its markdown and its HTML read back to the cells it was given."""
    from esper.leyline.pages import TextTable

    rows = (("a|b", "x\ny", "1,500"), ("<c>", "z", "2.00 [1.00, 3.00]"))
    table = TextTable("t", "Title", "What <it> shows.", ("k", "v", "n"), rows, 2, "None.")
    lines = table.markdown()
    assert lines[:4] == ["## Title", "", "What <it> shows.", ""] and lines[-1] == ""
    assert lines[5] == "|---|---|--:|"  # the numbers from column 2 on, aligned right
    cells = [re.split(r" (?<!\\)\| ", line[2:-2]) for line in lines[6:-1]]
    assert [[c.replace("\\|", "|") for c in row] for row in cells] == [
        ["a|b", "x y", "1,500"],  # one line per row: a newline in a cell is a space
        ["<c>", "z", "2.00 [1.00, 3.00]"],
    ]
    page = "".join(table.html())
    assert page.startswith("<h2>Title</h2><p>What &lt;it&gt; shows.</p>")
    assert _table_rows(page, "t") == [["k", "v", "n"], *map(list, rows)]
    assert page.count("class='num'") == 2

    empty = TextTable("t", "Title", "", ("k", "v"), (), 1, "None.")
    assert empty.markdown() == ["## Title", "", "None.", ""]
    assert empty.html() == ["<h2>Title</h2>", "<p>None.</p>"]
    unshown = TextTable("t", "Title", "Sentence.", ("k", "v"), (), 1, "")
    assert not unshown.shown and unshown.markdown() == [] and unshown.html() == []


# --- study reports -----------------------------------------------------------------------------

TINY_STUDY = """out = "out"
tasks = ["synthetic"]
seeds = 2
reps = 100
[budget]
epochs = 3
batches_per_epoch = 2
val_samples = 64
[[arms]]
name = "static"
controller = "static"
width = 8
[[arms]]
name = "grow"
controller = "periodic"
period = 1
"""


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real study directory, made in seconds without Ray: 2 arms (static at width 8, periodic
    at the task's width 4) × 2 seeds
    of 3 synthetic epochs, each trial run in this process by the study's own planning, job and
    trial runner, and ``trials.csv``/``study.json`` written by the study driver."""
    from esper.study.execute import Outcome, StudyDriver
    from esper.study.job import run_job
    from esper.study.results import write_results
    from esper.study.spec import read_study

    root = tmp_path_factory.mktemp("study")
    (root / "study.toml").write_text(TINY_STUDY)
    spec, directory = read_study(root / "study.toml")
    directory.mkdir()
    driver = StudyDriver(spec, directory, lambda line: None)
    rows = []
    for trial in driver.trials:
        row = run_job(driver.job(trial))
        assert row is not None
        rows.append((trial.name, row))
    driver.write_trials(Outcome(rows, {}, []))
    driver.state.save(directory)
    scores = [row for _, row in rows]
    roles = spec.verdict_roles()
    write_results(directory, scores, spec.baseline_arms(), spec.reps, 0, 0, roles, spec.score)
    return directory


def _table_rows(page: str, name: str) -> list[list[str]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables[name]


def test_study_report_shows_each_arm_with_its_curve_band_and_trials(
    tiny_study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from esper.study.report import build_study_report

    trials = sorted((tiny_study / "trials").iterdir())
    assert [t.name for t in trials] == [
        f"synthetic.{arm}.seed{s}" for arm in ("grow", "static") for s in (0, 1)
    ]
    assert _report([str(trials[0])], capsys)[0] == 0  # one trial has its own run report
    report = build_study_report(tiny_study, reps=100)
    results = _table_rows(report.html, "results")
    assert results[0][:3] == ["task", "arm", "n"]
    by_arm = {(row[0], row[1]): row for row in results[1:]}
    assert set(by_arm) == {
        (t, a) for t in ("synthetic", "all tasks (1)") for a in ("grow", "static")
    }
    assert all(row[2] == "2" for row in by_arm.values())  # n: both seeds of each arm
    scores = [float(r["score"]) for r in _csv(tiny_study) if r["arm"] == "static"]
    iqm = sum(scores) / 2  # with n = 2 the IQM is the mean
    assert by_arm["synthetic", "static"][3].startswith(f"{iqm:.2f} [")
    # Each arm's curve: the median over its trials' validation accuracy per epoch, with a band.
    figure = next(p for p in report.plots if p.name == "curves-synthetic").figure
    assert figure is not None
    (ax,) = figure.axes
    for arm in ("grow", "static"):
        runs = [_raw_epochs(t) for t in trials if f".{arm}." in t.name]
        assert all(sorted(run) == [1, 2, 3] for run in runs)
        median = [float(np.median([run[e]["val_accuracy"] for run in runs])) for e in (1, 2, 3)]
        (line,) = [line for line in ax.lines if line.get_label() == f"{arm} (median of 2)"]
        assert line.get_xdata().tolist() == [1, 2, 3]
        assert line.get_ydata().tolist() == pytest.approx(median)
        low = [min(run[e]["val_accuracy"] for run in runs) for e in (1, 2, 3)]
        curve = next(c for c in report.curves if c.arm == arm)
        assert all(lo <= b <= m for lo, b, m in zip(low, curve.low, median, strict=True))
    assert len(ax.collections) == 2  # one band per arm
    grow, static = sorted(report.curves, key=lambda c: c.arm)
    assert grow.median != static.median  # the arms differ, so swapped curves would be caught
    assert {"interval_estimates", "performance_profile", "curves-synthetic"} == {
        p.name for p in report.plots
    }
    # Every trial is linked to its run directory, the one with a run report to that too.
    for trial in trials:
        assert f"<a href='trials/{trial.name}'>{trial.name}</a>" in report.html
    assert report.html.count(">report</a>") == 1
    assert f"<a href='trials/{trials[0].name}/report/report.html'>" in report.html
    # The command writes it into the study directory, atomically, and says where.
    before = set(tiny_study.iterdir())
    code, out, err = _report([str(tiny_study), "--reps", "100"], capsys)
    assert code == 0 and out.strip() == f"report: {tiny_study / 'report.html'}" and not err
    page = (tiny_study / "report.html").read_text(encoding="utf-8")
    assert set(_embedded(page)) == {p.name for p in report.plots}
    assert set(tiny_study.iterdir()) - before <= {tiny_study / "report.html"}  # no .png, .tmp


def test_a_study_report_shows_results_md_numbers_and_verdicts(
    tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report recomputed the scores at 2000 resamples whatever the study's ``reps``, and
    had no probabilities of improvement or verdicts, nor said an interrupted study's results
    were results so far. Now it shows results.md's numbers (from results.json), names another
    ``--reps``, and warns where results.json is missing or damaged."""
    from esper.leyline.trials import read_trials
    from esper.study.report import build_study_report
    from esper.study.results import UNJUDGED, judging_of

    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    markdown = (study / "results.md").read_text()

    def md_rows(title: str) -> list[list[str]]:
        section = markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        table = [line for line in section.splitlines() if line.startswith("| ")]
        return [[c.strip() for c in line.strip("|").split(" | ")] for line in table]

    report = build_study_report(study)
    assert _table_rows(report.html, "results") == md_rows("Scores")  # reps 100, as results.md
    improvements = md_rows("Probability of improvement")
    assert len(improvements) == 5  # header; each arm over the other, per task and over all
    assert _table_rows(report.html, "improvements") == improvements
    assert "<h2>Verdicts</h2>" in report.html and "No verdict: the study needs" in report.html
    assert "(100 resamples, seed 0; as in <code>results.md</code>)" in report.html
    assert not report.warnings and "Results so far" not in report.html
    # An interrupted study's results so far, reported with other resamples.
    judging = json.loads((study / "results.json").read_text())
    (study / "results.json").write_text(json.dumps({**judging, "unfinished": 3}))
    other = build_study_report(study, reps=20)
    assert "(20 resamples, seed 0; <code>results.md</code> uses 100)" in other.html
    so_far = "Results so far: the study was interrupted with 3 trial(s) not finished"
    assert so_far in other.html
    fd = try_lock(study / LOCK_FILE)  # running again: what the banner says then
    assert fd is not None
    try:
        running = build_study_report(study, reps=20).html
    finally:
        os.close(fd)
    assert "Results so far: the study is running again." in running and so_far not in running
    # trials.csv written again, but not the results (a study killed between the two): the
    # page is of trials.csv, says results.md is not, and claims no "so far" (a review).
    header, *lines = (study / "trials.csv").read_text().splitlines()
    (study / "trials.csv").write_text("\n".join([header, *lines[:3]]) + "\n")
    report = build_study_report(study)
    (warning,) = report.warnings
    assert warning.startswith("results.md and results.json are of other trials than trials.csv")
    assert (
        "Results so far" not in report.html and "as in <code>results.md</code>" not in report.html
    )
    assert "(100 resamples, seed 0)" in report.html  # the study's bootstrap still
    assert len(_table_rows(report.html, "improvements")) == 5  # its baselines still
    (study / "trials.csv").write_text("\n".join([header, *lines]) + "\n")
    # Results an older Esper wrote, or a damaged results.json: the scores, and a warning.
    rows = [t.row for t in read_trials(study)]
    (study / "results.json").write_text("{}")
    judged, damaged, same = judging_of(study, rows)
    assert (judged, same) == (UNJUDGED, False) and "there is none" not in str(damaged)
    (study / "results.json").unlink()
    report = build_study_report(study)
    (warning,) = report.warnings
    assert warning.startswith("no probabilities of improvement or verdicts: they need ")
    assert "there is none" in warning and warning.replace("there is none", "") != damaged
    assert "<h2>Verdicts</h2>" not in report.html and "2000 resamples" in report.html
    assert _table_rows(report.html, "results")[0] == md_rows("Scores")[0]


def test_a_study_report_shows_the_matched_sizes_of_results_md(tmp_path: Path) -> None:
    """results.md's "Matched sizes" (each static-matched arm's host against the median final
    parameters of the arm it matches) was missing from the report page (a walk-through)."""
    from esper.leyline.trials import TrialRow, VerdictRoles
    from esper.study.results import findings_tables, write_results

    def row(arm: str, seed: int, params: int) -> TrialRow:
        return TrialRow("digits", arm, seed, "completed", 50.0 + seed, None, params, params,
                        1e6, 1.0, None)  # fmt: skip

    rows = [row("heuristic", s, p) for s, p in enumerate((1200, 1500, 1800))]
    rows += [row("static-matched", s, 1490) for s in range(3)]
    roles = VerdictRoles(matched=frozenset({("heuristic", "static-matched")}))
    results = write_results(tmp_path, rows, ["static-matched"], reps=20, roles=roles)
    markdown = (tmp_path / "results.md").read_text().split("## Matched sizes\n", 1)[1]
    table = [line for line in markdown.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    expected = [[c.strip() for c in line.strip("|").split(" | ")] for line in table]
    del expected[1]  # the alignment row
    assert expected[1] == ["digits", "static-matched", "heuristic", "1,500", "1,490"]
    matched = next(t for t in findings_tables(results) if t.kind == "matched")
    assert _table_rows("".join(matched.html()), "matched") == expected


def test_a_study_report_says_which_scores_an_aggregate_leaves_out(
    tiny_study: Path, tmp_path: Path
) -> None:
    """Only results.md's Method said that an arm over all tasks uses its common n (the lowest
    seeds) and leaves the other scores out; the report's scores now say so too."""
    from esper.study.report import build_study_report

    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    header, *lines = (study / "trials.csv").read_text().splitlines()
    task = lines[0].split(",")[0]
    # a second task: both seeds of static, one of grow (grow's common n is then 1)
    other = [line.replace(task, "other", 1) for line in lines if ",grow,1," not in line]
    (study / "trials.csv").write_text("\n".join([header, *lines, *other]) + "\n")
    report = build_study_report(study, reps=20)
    assert (
        "<p>grow: over all tasks uses the 1 lowest seeds of each task (1 finished score(s) "
        "left out).</p>" in report.html
    )
    assert "static: over all tasks" not in report.html


def test_a_study_whose_study_json_is_damaged_is_still_reported_with_unnamed_scores(
    tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """study.json says what the scores are (test or validation accuracy); a damaged one
    refused the report that trials.csv alone made before. The report stands, calls them
    scores and says why; the trials view's scored_by is null."""
    from esper.study.report import build_study_report

    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    assert _query_one(capsys, "SELECT DISTINCT scored_by FROM trials", study) == "test"
    (study / "study.json").write_text("garbage{")
    report = build_study_report(study, reps=100)
    assert report.warnings[0].startswith("test or validation accuracy? ")
    assert "is not an Esper study state file (" in report.warnings[0]
    assert _table_rows(report.html, "trials")[0][5] == "score (%)"
    assert "Scores are test or validation accuracy (%): the study.json that says" in report.html
    assert _query_one(capsys, "SELECT DISTINCT scored_by FROM trials", study) is None


def _query_one(capsys: pytest.CaptureFixture[str], sql: str, study: Path) -> object:
    """The one value ``sql`` answers over ``study`` (the json format: one object per line)."""
    capsys.readouterr()
    assert main(["runs", "query", sql, "--runs", str(study), "--format", "json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    (value,) = json.loads(line).values()
    return value


def test_a_damaged_trials_csv_fails_only_the_queries_that_read_the_trials_view(
    tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One malformed trials.csv failed every `runs query` over its folder, a count of epochs
    too (a walk-through); now only a query naming the trials view reads it."""
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(tiny_study, runs / "good")
    shutil.copytree(tiny_study, runs / "bad")
    (runs / "bad" / "trials.csv").write_text("")
    epochs = _query_one(capsys, "SELECT count(*) AS n FROM epochs", runs)
    assert epochs == 2 * _query_one(capsys, "SELECT count(*) AS n FROM epochs", runs / "good")
    assert _query_one(capsys, "SELECT count(*) AS n FROM runs", runs) == 8  # 4 trials each
    for sql in ("SELECT count(*) FROM trials", 'SELECT count(*) FROM "Trials"'):
        assert main(["runs", "query", sql, "--runs", str(runs)]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert "trials.csv: empty, not a trials table" in err and len(err.splitlines()) == 1


def test_a_curve_says_from_which_epoch_fewer_trials_are_in_its_median() -> None:
    """A trial a governor ended at epoch 2 left the later median to the survivors, under a
    legend that said "median of 3"."""
    from esper.study.report import arm_curves

    runs = [{1: 10.0, 2: 20.0, 3: 30.0}, {1: 12.0, 2: 22.0, 3: 40.0}, {1: 5.0, 2: 6.0}]
    both = [{1: 10.0, 2: 20.0}, {1: 12.0, 2: 22.0}]
    short, full = arm_curves({("t", "grow"): runs, ("t", "static"): both})
    assert short.n == [3, 3, 2] and short.median == [10.0, 20.0, 35.0]
    assert short.label == "grow (median of 3; from epoch 3 of fewer, down to 2)"
    assert full.label == "static (median of 2)"


def _csv(study: Path) -> list[dict[str, str]]:
    import csv

    with (study / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_study_without_a_finished_trial_is_one_line(
    tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text((tiny_study / "study.json").read_text())
    code, _, err = _report([str(study)], capsys)
    _assert_one_line_error(code, err, "has no trials.csv yet")
    lines = (tiny_study / "trials.csv").read_text().splitlines()
    failed = lines[1].split(",")
    failed[3:11] = ["failed", "", "", "", "", "", "", "boom"]  # status .. error
    (study / "trials.csv").write_text(lines[0] + "\n" + ",".join(failed) + "\n")
    code, _, err = _report([str(study)], capsys)
    _assert_one_line_error(code, err, "none of its 1 trial(s) finished with a score")
    (study / "trials.csv").write_text(lines[0] + "\n" + lines[1].replace(",0,", ",zero,", 1))
    code, _, err = _report([str(study)], capsys)
    _assert_one_line_error(code, err, "trials.csv:2: seed is 'zero', not int")
    long_seed = lines[1].replace(",0,", "," + "9" * 5000 + ",", 1)  # cut in the message
    (study / "trials.csv").write_text(lines[0] + "\n" + long_seed)
    code, _, err = _report([str(study)], capsys)
    _assert_one_line_error(code, err, "seed is '999999999999999999999999999999999999999... (5000")
    assert len(err) < 300
    (study / "trials.csv").write_bytes(lines[0].encode() + b"\n\xff\xfe\n")
    code, _, err = _report([str(study)], capsys)
    _assert_one_line_error(code, err, "trials.csv: not a trials table (not UTF-8 text)")
    (study / "trials.csv").write_bytes(b"")  # said "not a trials table (header None)"
    code, _, err = _report([str(study)], capsys)
    _assert_one_line_error(code, err, "trials.csv: empty, not a trials table (its header is")
    code, _, err = _report([str(tiny_study), "--baseline", str(tiny_study)], capsys)
    _assert_one_line_error(code, err, "--baseline compares two runs")
    run = next((tiny_study / "trials").iterdir())
    code, _, err = _report([str(run), "--reps", "10", "--out", str(tmp_path / "r")], capsys)
    _assert_one_line_error(code, err, "--reps sets a study report's bootstrap")
    # neither a run nor a study (the trials' folder) was told it was a run (a walk-through)
    code, _, err = _report([str(tiny_study / "trials"), "--reps", "10"], capsys)
    _assert_one_line_error(code, err, "is not an Esper run directory (no config.json")
    assert not (study / "report.html").exists()


def _bad_row(cells: list[str], case: str) -> str:
    """A copy of a ``trials.csv`` row made bad as ``case`` says."""
    cells = list(cells)
    if case == "short":
        return ",".join(cells[:3])
    if case == "extra":
        return ",".join([*cells, "extra"])
    column = {"seed": 2, "score": 4, "final_params": 6}[case.split("=")[0]]
    cells[column] = case.split("=")[1]
    return ",".join(cells)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("short", "trials.csv:2: not 12 cells, as the header"),
        ("extra", "trials.csv:2: not 12 cells, as the header"),
        ("seed=" + "1" * 30, "seed must be an integer in [0, 9223372036854775807]"),
        ("score=-50", "score must be a number in [0.0, 100.0]"),
        ("final_params=" + "9" * 100, "final_params must be an integer in [0, 92233720368547758"),
    ],
)
def test_a_malformed_trials_row_is_one_line_for_the_report_and_the_trials_view(
    tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    """The study report and ``esper runs query``'s ``trials`` view read ``trials.csv`` through
    one reader: a row with too few or too many cells, or a number its column cannot hold, is
    one line naming file:line for both (the view raised a TypeError, KeyError or DuckDB cast
    error before)."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text((tiny_study / "study.json").read_text())
    header, first, *_ = (tiny_study / "trials.csv").read_text().splitlines()
    (study / "trials.csv").write_text(f"{header}\n{_bad_row(first.split(','), case)}\n")
    run = first.split(",")[-1]
    shutil.copytree(tiny_study / "trials" / run, study / "trials" / run)
    before = sorted(study.rglob("*"))
    code, _, err = _report([str(study)], capsys)
    _assert_one_line_error(code, err, message)
    code = main(["runs", "query", "SELECT * FROM trials", "--runs", str(study)])
    _assert_one_line_error(code, capsys.readouterr().err, message)
    assert sorted(study.rglob("*")) == before


def test_a_trial_without_epochs_is_left_out_of_the_curves_with_a_warning(
    tiny_study: Path, tmp_path: Path
) -> None:
    from esper.study.report import build_study_report

    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    log = study / "trials" / "synthetic.grow.seed0" / "events.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("".join(f"{x}\n" for x in lines if '"EpochCompleted"' not in x))  # minimal
    report = build_study_report(study, reps=20)
    assert report.warnings == [
        "1 trial(s) left out of the curves, their logs have no epochs (telemetry level minimal: "
        "a study run before growth trials logged them), e.g. synthetic.grow.seed0"
    ]
    assert {c.arm: c.trials for c in report.curves} == {"grow": 1, "static": 2}
    assert "Warning: 1 trial(s) left out" in report.html


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_out_inside_another_run_or_study_is_refused(
    tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """--out into another run or study wrote images there and replaced its report.html."""
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    first, second = sorted((study / "trials").iterdir())[:2]
    (tmp_path / "link").symlink_to(first / "checkpoints")
    (tmp_path / "other").symlink_to(second / "checkpoints")
    before = _files(study)
    cases = [
        ([str(first), "--out", str(second)], f"is the run directory {str(second)!r}"),
        ([str(first), "--out", str(second / "report")], "lies inside the run directory"),
        ([str(first), "--out", str(tiny_study)], f"is the study directory {str(tiny_study)!r}"),
        ([str(study), "--out", str(first)], f"is the run directory {str(first)!r}"),
        ([str(tiny_study), "--out", str(study / "x")], "lies inside the study directory"),
        # found by an adversarial sweep: the resume then refused the checkpoint's extra files
        ([str(first), "--out", str(first / "checkpoints" / "x")], "is in the run's checkpoints"),
        ([str(first), "--out", str(first / "checkpoints")], "is in the run's checkpoints"),
        ([str(first), "--out", str(tmp_path / "link" / "x")], "is in the run's checkpoints"),
        # the same sweep: through a link, into another run's checkpoints (it was written)
        ([str(first), "--out", str(tmp_path / "other")], "lies inside the run directory"),
        ([str(first), "--out", str(tmp_path / "other" / "x")], "lies inside the run directory"),
        # a second sweep: a link loop was a RuntimeError from Path.resolve, exit 1
        ([str(tmp_path / "loop")], f"{str(tmp_path / 'loop')!r}: its symbolic links loop"),
        ([str(first), "--out", str(tmp_path / "loop")], f"--out {str(tmp_path / 'loop')!r}: its"),
        ([str(first), "--out", str(tmp_path / "loop" / "x")], "its symbolic links loop"),
        ([str(study), "--out", str(tmp_path / "loop"), "--reps", "10"], "links loop"),
    ]
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for args, message in cases:
        code, _, err = _report(args, capsys)
        _assert_one_line_error(code, err, message)
    assert _files(study) == before
    # What is reported on may hold its report: a trial's own report/, the study itself.
    assert _report([str(first)], capsys)[0] == 0 and (first / "report" / "report.html").is_file()
    assert _report([str(study), "--reps", "10"], capsys)[0] == 0
    assert (study / "report.html").is_file()
    # A relative --out leaving the study is outside it (".." was not collapsed before).
    monkeypatch.chdir(study)
    assert _report([str(first), "--out", "../elsewhere"], capsys)[0] == 0
    assert (tmp_path / "elsewhere" / "report.html").is_file()


def test_names_matplotlib_would_read_as_mathematics_or_hide_are_drawn_as_written(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    """A run named run_$1_$2 (Esper accepts it) failed its report with a mathtext traceback;
    a baseline named _ctrl had no legend entry (matplotlib hides labels starting with _)."""
    run, baseline = tmp_path / "run_$1_$2", tmp_path / "_ctrl"
    shutil.copytree(recorded_runs["heuristic"], run)
    shutil.copytree(recorded_runs["static"], baseline)
    report = build_report(run, baseline)
    accuracy = next(p for p in report.plots if p.name == "accuracy")
    legend = accuracy.figure.axes[0].get_legend()
    shown = [t.get_text() for t in legend.get_texts()]
    assert "run_\\$1_\\$2 val" in shown and "\u200b_ctrl val" in shown, shown


def test_names_esper_did_not_give_are_shown(
    tiny_study: Path,
    recorded_runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Directories copied under a name that is no UTF-8 were a matplotlib TypeError (run) or a
    UnicodeEncodeError (study); a run given as ``.`` was titled "Esper report: " (no name)."""
    run = tmp_path / os.fsdecode(b"run\xff")
    shutil.copytree(recorded_runs["heuristic"], run)
    code, _, err = _report([str(run), "--baseline", str(run), "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert "<title>Esper report: run\\xff</title>" in (tmp_path / "a" / "report.html").read_text()
    study = tmp_path / os.fsdecode(b"study\xff")
    shutil.copytree(tiny_study, study)
    code, _, err = _report([str(study), "--reps", "10", "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    page = (tmp_path / "s" / "report.html").read_text()
    assert "<title>Esper study report: study\\xff</title>" in page
    assert "href='../study%FF/trials/" in page  # the link leads to the directory as named
    monkeypatch.chdir(recorded_runs["static"])
    code, _, err = _report([".", "--out", str(tmp_path / "dot")], capsys)
    assert code == 0, err
    name = recorded_runs["static"].name
    assert f"<title>Esper report: {name}</title>" in (tmp_path / "dot" / "report.html").read_text()


def test_a_baseline_of_another_task_or_budget_is_named_in_a_warning(tmp_path: Path) -> None:
    """A 5-epoch eval on one task against a 20-epoch run on another was compared without a
    word (a workflow check); runs of one task and budget get no such line."""
    from dataclasses import replace

    from esper.karn.report import warnings_for

    base = growth_summary("a")
    assert base.growth is not None
    longer = replace(base, run_id="b", growth=replace(base.growth, epochs_planned=20))
    other = replace(base, run_id="c", task="digits_impaired")
    runs = {
        name: load_run(write_run(tmp_path / name, summary))
        for name, summary in (
            ("a", base),
            ("b", longer),
            ("c", other),
            ("d", replace(base, run_id="d")),
        )
    }

    def budget_lines(pair: list[RunData]) -> list[str]:  # these summaries come without epochs
        return [w for w in warnings_for(pair) if "the event log lacks" not in w]

    [line] = budget_lines([runs["a"], runs["b"]])
    assert line == (
        "a ran synthetic for 5 epochs and the baseline b ran synthetic for 20 epochs: their "
        "accuracies are not like for like."
    )
    [line] = budget_lines([runs["c"], runs["a"]])
    assert line.startswith("c ran digits_impaired for 5 epochs and the baseline a ran synthetic")
    assert not [w for w in warnings_for([runs["a"], runs["d"]]) if "like for like" in w]
    # A run without a summary (crashed, or still running) is read from its start: it was
    # only said to have no summary (adversarial sweep).
    started = {**_started(), "task": "digits_impaired"}  # planned 3 epochs
    unfinished = load_run(_write_run(tmp_path / "u", [started, _epoch(1)]))
    assert warnings_for([unfinished, runs["a"]])[-1] == (
        "u ran digits_impaired for 3 epochs and the baseline a ran synthetic for 5 epochs: their "
        "accuracies are not like for like."
    )
