"""The terminal UI: the text it shows of the one fold (``RunState``), the Textual app driven
headless by its pilot over recorded runs (replayed and followed live, resumed, at 100×30, 80×24
and 160×50), bad input, and ``--tui`` plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import DataTable, Input, Static
from textual.widgets.data_table import RowKey

from esper.cli import tui as cli_tui
from esper.cli.config import split_options
from esper.cli.main import main
from esper.karn import tui as karn_tui
from esper.karn.tui import SLOT_COLUMNS, HelpScreen, RunApp, catch_up
from esper.karn.tui_state import (
    accuracies,
    env_cells,
    log_text,
    matches,
    mean_returns,
    ppo_rows,
    summary_lines,
)
from esper.leyline.events import (
    AnomalyDetected,
    EpisodeFinished,
    EpochCompleted,
    Event,
    GovernorPanic,
    PPOUpdate,
    RunFinished,
    RunStarted,
    SeedTransition,
    SlotSnapshot,
)
from esper.leyline.stages import SeedStage
from esper.nissa.fold import RunState
from esper.nissa.log import EventTail, Logged, open_run, read_events

SIZE = (150, 50)
EPOCH = EpochCompleted.__name__
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
NAN = math.nan


# --- helpers ---------------------------------------------------------------------------------


def records_of(run: Path) -> list[dict[str, Any]]:
    """The run's records, read with plain json (independently of the code under test)."""
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def last(records: list[dict[str, Any]], event: str, env: int | None = None) -> dict[str, Any]:
    matching = [r for r in records if r["event"] == event and r.get("env") == env]
    assert matching, (event, env)
    return matching[-1]


def make_app(run: Path, poll_seconds: float = 0.05, **kwargs: Any) -> RunApp:
    directory = open_run(run)
    tail = EventTail(directory.events_path)
    return RunApp(directory, tail, catch_up(tail), poll_seconds=poll_seconds, **kwargs)


def drive(
    app: RunApp,
    script: Callable[[Pilot[None]], Awaitable[None]],
    size: tuple[int, int] = SIZE,
) -> None:
    """Run ``app`` headless at ``size`` and let ``script`` drive it."""

    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await script(pilot)

    asyncio.run(go())


async def until(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the UI"
        await pilot.pause(0.05)


def row(table: DataTable[Any], key: str | RowKey) -> list[str]:
    return [str(cell) for cell in table.get_row(key)]


def table_rows(table: DataTable[Any]) -> list[list[str]]:
    return [row(table, r.key) for r in table.ordered_rows]  # slot rows have no key of their own


def logged(event: Event, env: int | None = None, episode: int | None = None) -> Logged:
    return Logged(event, 1_700_000_000.0, "r", env, episode)


def snapshot(slot: str, stage: SeedStage, blueprint: str | None, **extra: Any) -> SlotSnapshot:
    values: dict[str, Any] = {"alpha": 0.0, "contribution": None, "shapley": None}
    return SlotSnapshot(slot, stage.value, blueprint, **{**values, **extra}, seed_params=0)


def epoch(number: int, accuracy: float, *slots: SlotSnapshot) -> EpochCompleted:
    dormant = (snapshot("early", SeedStage.DORMANT, None),)
    return EpochCompleted(number, 1.0, 50.0, 1.5, accuracy, 100 + number, slots or dormant, 0.1)


def started(mode: str = "heuristic", resumed: int | None = None) -> Logged:
    return logged(RunStarted("r", mode, "synthetic", 0, 5, ("early",), resumed))


def update(round_: int, mean_return: float | None, **stats: Any) -> Logged:
    values: dict[str, Any] = {f.name: None for f in fields(PPOUpdate)}
    values.update(round=round_, env_steps=4 * round_, passes=1, early_stopped=False)
    values.update(skipped_steps=0, overflow_steps=0, entropy_coef=0.01)
    values.update(seconds_rollout=1.0, seconds_update=0.5, mean_return=mean_return, **stats)
    return logged(PPOUpdate(**values))


def anomaly(round_: int) -> Logged:
    return logged(AnomalyDetected(round_, ("entropy_collapse",), "low", "DEBUG", 2))


def finished(status: str) -> Logged:
    return logged(RunFinished(status, 2, 40.0, 41.0, 102, 1, 0, 3.0))


# --- what the UI shows of the fold (pure Python) ---------------------------------------------


def test_a_single_model_run_shows_its_latest_epoch() -> None:
    state = RunState()
    blending = snapshot("early", SeedStage.BLENDING, "norm", alpha=0.5, contribution=1.25)
    state.apply_all([started(), logged(epoch(1, 40.0)), logged(epoch(2, NAN, blending))])
    env = state.env(None)
    assert state.env_keys() == [None] and env.latest is not None
    assert env_cells(env) == ("—", "—", "2", "—", "1.5000", "102")  # not measured: "—", never 0
    assert accuracies(env.episode) == [40.0]
    assert env.latest.slots == (blending,)
    assert summary_lines(state, "following (live)") == [
        "heuristic synthetic, seed 0 — following (live)",
        "epoch 2 / 5 · events 3 · panics 0",
    ]
    state.apply(finished("completed"))
    assert state.status == "completed"
    assert summary_lines(state, "done")[1].endswith(
        "final model 40.00% (best epoch 41.00%) · seeds 1 fossilized, 0 pruned"
    )
    stopped = RunState()  # Ctrl-C: its last checkpoint's model, which a resume trains on
    stopped.apply_all([started(), logged(epoch(1, 40.0)), finished("interrupted")])
    assert "· model so far 40.00% (best epoch 41.00%) ·" in summary_lines(stopped, "done")[1]
    # --telemetry.level minimal logs no epoch: a completed run read "epoch — / 5"
    ended = RunState().apply_all([started(), finished("completed")])
    assert summary_lines(ended, "done")[1].startswith("epoch 2 / 5 · events 2 · panics 0 ·")


def test_ppo_environments_episodes_and_updates() -> None:
    state = RunState()
    state.apply(started("ppo"))
    for env in (0, 1):
        for number in (1, 2):
            state.apply(logged(epoch(number, 10.0 * number + env), env, 1))
    state.apply(logged(EpisodeFinished(1, 2, 0.5, False, 20.0, 102, 100), 0, 1))
    state.apply(logged(GovernorPanic(2, "spike", "loss spike", 9.0, 1, ()), 1, 1))
    state.apply(logged(epoch(1, 99.0), 0, 2))  # env 0's next episode starts afresh
    state.apply(update(1, None, policy_loss=-0.01, entropy=NAN))
    state.apply(anomaly(1))
    assert state.env_keys() == [0, 1]
    assert env_cells(state.env(0))[:3] == ("0", "2", "1")
    assert accuracies(state.env(0).episode) == [99.0]
    assert accuracies(state.env(1).episode) == [11.0, 21.0]
    rows = dict(ppo_rows(state))
    assert rows["round"] == "1" and rows["env steps"] == "4" and rows["policy loss"] == "-0.01"
    assert rows["entropy"] == "—" and rows["approx kl"] == "—"  # not measured
    assert rows["early stopped"] == "no" and rows["anomalies"] == "1"
    assert mean_returns(state) == []  # a round whose mean return is missing draws no point
    assert (state.env(0).panics, state.env(1).panics) == (0, 1)
    assert summary_lines(state, "x")[1] == "round 1 · env steps 4 · envs 2 · events 10 · panics 1"
    state.apply(update(12345, 1.0, policy_loss=-0.0123456))  # counts were 1.234e+04
    rows = dict(ppo_rows(state))
    assert rows["round"] == "12345" and rows["env steps"] == "49380"  # a huge one: 4 digits
    assert rows["policy loss"] == "-0.01235"
    assert rows["mean final accuracy"] == "—"
    state.apply(update(12346, 1.0, mean_final_accuracy=39.654))
    assert dict(ppo_rows(state))["mean final accuracy"] == "39.65%"  # it had no "%"


def test_a_resumed_run_is_live_again_and_redone_epochs_replace_history() -> None:
    state = RunState()
    state.apply_all([started(), *(logged(epoch(n, float(n))) for n in (1, 2, 3))])
    state.apply(finished("interrupted"))
    assert state.status == "interrupted"
    state.apply_all([started(resumed=2), logged(epoch(3, 33.0))])
    assert state.status is None
    assert accuracies(state.episode()) == [1.0, 2.0, 33.0]
    assert "2 attempts (resumed)" in summary_lines(state, "following (live)")[0]


def test_a_resumed_ppo_run_keeps_one_return_per_round() -> None:
    state = RunState()
    state.apply(started("ppo"))
    for round_, value in ((1, 0.1), (2, 0.2), (3, 0.3)):  # round 3 logged, not checkpointed
        state.apply(update(round_, value))
    state.apply(anomaly(3))
    state.apply(started("ppo", resumed=2))
    state.apply_all([update(3, 0.33), anomaly(3)])  # the rerun round finds the same anomaly
    assert mean_returns(state) == [0.1, 0.2, 0.33]
    assert dict(ppo_rows(state))["anomalies"] == "1"


def test_log_lines_and_filter(recorded_runs: dict[str, Path]) -> None:
    move = SeedTransition(4, "mid", "norm", "TRAINING", "BLENDING", "advance (G2)")
    text = log_text(logged(move, env=1, episode=3))
    assert "env 1 ep 3 SeedTransition" in text and "mid norm: TRAINING → BLENDING" in text
    assert "AnomalyDetected: round=2 kinds=entropy_collapse detail=low" in log_text(anomaly(2))
    assert log_text(logged(epoch(3, NAN))).endswith(
        "epoch 3: val acc — loss 1.5000, train acc 50.00%, 103 params"
    )
    panic = GovernorPanic(2, "spike", "loss spike", NAN, None, ())
    assert log_text(logged(panic)).endswith("loss=— restored_epoch=— pruned_slots=none")
    assert log_text(Logged(move, NAN, "r")).startswith("--:--:-- SeedTransition")  # no time
    assert matches(text, "seedtrans") and matches(text, " BLENDING ")
    assert not matches(text, "PPOUpdate")
    for run in recorded_runs.values():  # every recorded event has a line naming it
        for item in read_events(run / "events.jsonl").records:
            assert f" {item.name}: " in log_text(item)


# --- the app over recorded runs (replay) -----------------------------------------------------


def test_heuristic_replay_table_slots_and_status(recorded_runs: dict[str, Path]) -> None:
    run = recorded_runs["heuristic"]
    records = records_of(run)
    final = last(records, EPOCH)
    fossilized = [s for s in final["slots"] if s["stage"] == SeedStage.FOSSILIZED.value]
    assert fossilized, "the recorded heuristic run fossilizes a seed"
    app = make_app(run)

    async def script(pilot: Pilot[None]) -> None:
        envs = app.query_one("#envs", DataTable)
        assert table_rows(envs) == [
            [
                "—",
                "—",
                str(final["epoch"]),
                f"{final['val_accuracy']:.2f}%",
                f"{final['val_loss']:.4f}",
                f"{final['param_count']:,}",
            ]
        ]
        slots = app.query_one("#slots", DataTable)
        shown = {cells[0]: cells for cells in table_rows(slots)}
        assert list(shown) == [s["slot"] for s in final["slots"]]
        for slot in fossilized:
            cells = shown[slot["slot"]]
            assert cells[1:3] == [SeedStage.FOSSILIZED.value, slot["blueprint"]]
            assert cells[3] == f"{slot['alpha']:.2f}"
        assert app.sub_title == "finished (completed)"
        panel = str(app.run_panel.content)
        assert f"epoch {final['epoch']} / {final['epoch']} · events {len(records)}" in panel
        assert not app.query_one("#right").display  # no PPO panel for a heuristic run
        assert len(app.log_panel.lines) == len(records)
        accuracies = [r["val_accuracy"] for r in records if r["event"] == EPOCH]
        assert list(app.accuracy.data or []) == accuracies

    drive(app, script)


def test_replay_of_a_terminated_run_leaves_its_panicked_epoch_out_of_the_best(
    spiked_run: Path,
) -> None:
    """The accuracy plot's title said "best 99.00%", the panicked epoch's (the model the
    governor discarded); the run's summary leaves that epoch out. The plot keeps every epoch."""
    records = records_of(spiked_run)
    accuracies = [r["val_accuracy"] for r in records if r["event"] == EPOCH]
    assert accuracies[-1] == 99.0
    app = make_app(spiked_run)

    async def script(pilot: Pilot[None]) -> None:
        assert list(app.accuracy.data or []) == accuracies
        title = str(app.accuracy_title.content)
        assert f"last 99.00%, best {max(accuracies[:-1]):.2f}%, 7 epochs" in title, title

    drive(app, script)


def test_ppo_replay_environments_and_update_stats(recorded_runs: dict[str, Path]) -> None:
    run = recorded_runs["ppo"]
    records = records_of(run)
    update = last(records, PPOUpdate.__name__)
    app = make_app(run)

    async def script(pilot: Pilot[None]) -> None:
        envs = app.query_one("#envs", DataTable)
        expected = []
        for env in (0, 1):
            epoch = last(records, EPOCH, env)
            expected.append(
                [
                    str(env),
                    str(epoch["episode"]),
                    str(epoch["epoch"]),
                    f"{epoch['val_accuracy']:.2f}%",
                    f"{epoch['val_loss']:.4f}",
                    f"{epoch['param_count']:,}",
                ]
            )
        assert table_rows(envs) == expected
        ppo = str(app.ppo_panel.content)
        assert f"{'round':<20}{update['round']}" in ppo
        for key, label in (("entropy", "entropy"), ("approx_kl", "approx kl")):
            assert f"{label:<20}{update[key]:.4g}" in ppo
        assert f"{'mean return':<20}{update['mean_return']:.4g}" in ppo
        assert f"{'early stopped':<20}{'yes' if update['early_stopped'] else 'no'}" in ppo
        labels = [line[:20].rstrip() for line in ppo.splitlines()]
        assert labels[:2] == ["anomalies", "ratio explosions"]
        assert labels[2:] == [f.name.replace("_", " ") for f in fields(PPOUpdate)]  # each one
        assert f"{'anomalies':<20}0" in ppo
        returns = [r["mean_return"] for r in records if r["event"] == PPOUpdate.__name__]
        assert list(app.returns.data or []) == returns
        assert app.sub_title == "finished (completed)"
        slots = app.query_one("#slots", DataTable)
        for env in (0, 1):  # the slot panel follows the selected environment
            if env == 1:
                await pilot.press("n")
                await pilot.pause()
            stages = [s["stage"] for s in last(records, EPOCH, env)["slots"]]
            assert [r[1] for r in table_rows(slots)] == stages
            assert str(app.slots_title.content) == f"Slots (env {env})"
            epochs = [r for r in records if r["event"] == EPOCH and r["env"] == env]
            current = [r["val_accuracy"] for r in epochs if r["episode"] == epochs[-1]["episode"]]
            assert list(app.accuracy.data or []) == current  # this episode's accuracies

    drive(app, script)


def test_event_log_filter_narrows_lines_and_help_opens(recorded_runs: dict[str, Path]) -> None:
    run = recorded_runs["heuristic"]
    records = records_of(run)
    transitions = sum(r["event"] == SeedTransition.__name__ for r in records)
    app = make_app(run)

    async def script(pilot: Pilot[None]) -> None:
        await pilot.press("slash", *"transit")  # case-insensitive: matches SeedTransition
        await until(pilot, lambda: len(app.log_panel.lines) == transitions)
        assert all(SeedTransition.__name__ in line for line in app.log_panel.lines)
        await pilot.press("q")  # typed into the filter, not quitting
        await pilot.pause()
        assert app.query_one("#filter", Input).value == "transitq"
        assert len(app.log_panel.lines) == 0 and app.is_running
        await pilot.press("escape")  # clears the filter
        await until(pilot, lambda: len(app.log_panel.lines) == len(records))
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "filter the event log" in str(app.screen.query_one("#help", Static).content)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)

    drive(app, script)


# --- the layout at 100×30, 80×24 and 160×50 --------------------------------------------------


def scrolls(widget: Widget) -> bool:
    """Whether ``widget`` or a container around it scrolls vertically (shows a scrollbar)."""
    node: Any = widget
    while isinstance(node, Widget):
        if node.allow_vertical_scroll:
            return True
        node = node.parent
    return False


def layout_problems(app: RunApp) -> list[str]:
    """What is cut on screen: a widget reaching past the screen or its container (vertically
    only where nothing scrolls to it), or a table whose columns are wider than the table."""
    screen = app.screen
    problems = []
    for widget in screen.walk_children():
        region = widget.region
        if not widget.display or region.area == 0:
            continue  # hidden (the PPO column of a growth run, the error line without error)
        parent = widget.parent
        box = parent.content_region if isinstance(parent, Widget) else screen.region
        if not (box.x <= region.x and region.right <= box.right <= screen.region.right):
            problems.append(f"{widget} is cut horizontally: {region} in {box}")
        if not scrolls(parent) and not (box.y <= region.y and region.bottom <= box.bottom):
            problems.append(f"{widget} is cut vertically: {region} in {box}")
    for table in app.query(DataTable):
        if table.virtual_size.width > table.scrollable_content_region.width:
            problems.append(f"#{table.id} columns need {table.virtual_size.width} columns")
    return problems


def save_screenshot(app: RunApp, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = Path(app.save_screenshot(f"{name}.svg", str(ARTIFACTS)))
    assert path.read_text(encoding="utf-8").startswith("<svg")
    return path


@pytest.mark.parametrize("mode", ["ppo", "heuristic"])
def test_every_panel_is_readable_at_100_by_30(recorded_runs: dict[str, Path], mode: str) -> None:
    app = make_app(recorded_runs[mode])

    async def script(pilot: Pilot[None]) -> None:
        assert layout_problems(app) == []
        slots = app.query_one("#slots", DataTable)
        headings = [str(column.label) for column in slots.columns.values()]
        assert headings == [heading for _, heading, _ in SLOT_COLUMNS]  # all labelled, all shown
        right = slots.scrollable_content_region.right
        assert sum(c.get_render_width(slots) for c in slots.columns.values()) <= right
        stages = {s.value for s in SeedStage}
        assert all(r[1] in stages for r in table_rows(slots))  # full stage names
        for panel in ("#left", "#envs", "#slots"):  # nothing to scroll to
            assert not app.query_one(panel).allow_vertical_scroll, panel
        assert app.log_panel.scrollable_content_region.height >= 5  # the event log is visible
        if mode == "ppo":  # the PPO statistics scroll in their column; the rest stays
            assert app.query_one("#right").allow_vertical_scroll
        save_screenshot(app, f"tui-{mode}-100x30")

    drive(app, script, size=(100, 30))


def test_a_small_terminal_scrolls_and_a_large_one_shows_more(
    recorded_runs: dict[str, Path],
) -> None:
    seen: dict[tuple[int, int], int] = {}
    for size in ((80, 24), (100, 30), (160, 50)):
        app = make_app(recorded_runs["ppo"])

        async def script(
            pilot: Pilot[None], app: RunApp = app, size: tuple[int, int] = size
        ) -> None:
            assert len(table_rows(app.query_one("#envs", DataTable))) == 2
            seen[size] = app.log_panel.scrollable_content_region.height
            if size == (160, 50):
                assert layout_problems(app) == []
                assert not app.query_one("#right").allow_vertical_scroll  # every PPO statistic
                assert app.accuracy.region.height > 2  # the sparkline takes the free rows
                save_screenshot(app, "tui-ppo-160x50")
            await pilot.press("n", "slash", "x")  # still usable when small

        drive(app, script, size=size)
    assert seen[(80, 24)] >= 2 and seen[(160, 50)] > seen[(100, 30)]


# --- following a live run --------------------------------------------------------------------


def copy_run(source: Path, target: Path, lines: int) -> list[str]:
    """``target`` with ``source``'s files and the first ``lines`` event lines; all lines."""
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    text = (source / "events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (target / "events.jsonl").write_text("".join(text[:lines]), encoding="utf-8")
    return text


def test_follows_a_live_run_and_waits_for_complete_lines(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "live"
    lines = copy_run(recorded_runs["heuristic"], run, 41)
    half = [json.loads(line) for line in lines[:41]]
    complete = [json.loads(line) for line in lines[:-1]]
    app = make_app(run)

    def epoch_cell() -> str:
        return row(app.query_one("#envs", DataTable), "run")[2]

    async def script(pilot: Pilot[None]) -> None:
        assert epoch_cell() == str(last(half, EPOCH)["epoch"])
        assert app.sub_title == "following (live)"
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(lines[41:-1]))  # the rest, but for the last line ...
            f.write(lines[-1][:25])  # ... of which only a part is written yet
        await until(pilot, lambda: epoch_cell() == str(last(complete, EPOCH)["epoch"]))
        await pilot.pause(0.2)
        assert len(app.log_panel.lines) == len(complete)  # the partial line is not shown
        assert app.sub_title == "following (live)"
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(lines[-1][25:])
        await until(pilot, lambda: app.sub_title == "finished (completed)")
        assert app.log_panel.lines[-1].split(" ", 1)[1].startswith(RunFinished.__name__)

    drive(app, script)


def test_the_event_log_keeps_to_its_newest_line_until_scrolled_back(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    """At 80×20 the log panel shrank as the tables above it filled in and stopped following
    (Textual's Log follows only from the end it is at): it showed RunStarted for good. A reader
    who scrolls back keeps their place, and follows again from the end."""
    run = tmp_path / "live"
    lines = copy_run(recorded_runs["heuristic"], run, 1)
    app = make_app(run)
    log = app.log_panel

    def append(upto: int) -> None:
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(lines[len(log.lines) : upto]))

    async def script(pilot: Pilot[None]) -> None:
        for upto in (4, 12, 30):  # the tables fill in: the log gets shorter
            append(upto)
            await until(pilot, lambda upto=upto: len(log.lines) == upto)
            await pilot.pause(0.1)
            assert log.max_scroll_y > 0 and log.is_vertical_scroll_end, (upto, log.scroll_y)
        log.scroll_home(animate=False)  # the reader scrolls back
        await pilot.pause(0.1)
        append(40)
        await until(pilot, lambda: len(log.lines) == 40)
        await pilot.pause(0.1)
        assert log.scroll_y == 0
        log.scroll_end(animate=False)  # and returns to the end
        await pilot.pause(0.1)
        append(len(lines))
        await until(pilot, lambda: len(log.lines) == len(lines))
        await pilot.pause(0.1)
        assert log.is_vertical_scroll_end

    drive(app, script, size=(80, 20))


def test_a_quiet_run_no_process_holds_is_not_called_live(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    """``esper tui`` of a killed run (no end record) said "following (live)" for good. Once the
    log is quiet, the UI looks whether a process holds the run's lock (as a running run does);
    the lock taken again (a resume) is live again."""
    from esper.leyline.files import try_lock

    run = tmp_path / "killed"
    lines = copy_run(recorded_runs["heuristic"], run, 30)
    app = make_app(run, quiet_seconds=0.2)

    async def script(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: app.sub_title.startswith("following — quiet"))
        assert app.sub_title == "following — quiet, and no process holds the run (killed?)"
        held = try_lock(run, directory=True)  # what a resume's lock_run takes
        assert held is not None
        try:
            await until(pilot, lambda: app.sub_title == "following (live)")
            with (run / "events.jsonl").open("a", encoding="utf-8") as f:
                f.write("".join(lines[30:]))
            await until(pilot, lambda: app.sub_title == "finished (completed)")
        finally:
            os.close(held)

    drive(app, script)


def test_a_long_log_is_read_in_pieces(
    recorded_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading ``READ_BYTES`` at a time, the app folds the same events as one read would."""
    run = tmp_path / "long"
    lines = copy_run(recorded_runs["ppo"], run, 1)
    monkeypatch.setattr("esper.karn.tui.READ_BYTES", 256)
    app = make_app(run)

    async def script(pilot: Pilot[None]) -> None:
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(lines[1:]))
        await until(pilot, lambda: app.state.events == len(lines))
        assert app.sub_title == "finished (completed)"
        assert len(app.log_panel.lines) == len(lines)

    drive(app, script)


def test_a_resume_while_following_replaces_the_redone_epochs(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "resumed"
    raw = records_of(recorded_runs["static"])
    epochs = [r for r in raw if r["event"] == EPOCH]
    stopped = {**raw[-1], "status": "interrupted", "epochs": 3}  # stopped after 5, saved at 3
    copy_run(recorded_runs["static"], run, 0)
    first = [raw[0], *epochs[:5], stopped]
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first))
    again = [{**e, "val_accuracy": 1.0 + e["epoch"]} for e in epochs[3:6]]  # epochs 4–6 rerun
    app = make_app(run)

    async def script(pilot: Pilot[None]) -> None:
        assert app.sub_title == "finished (interrupted)"
        # the run ended at its checkpoint: the two epochs after it were not kept
        assert list(app.accuracy.data or []) == [e["val_accuracy"] for e in epochs[:3]]
        resumed = {**raw[0], "resumed_from_epoch": 3}
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in [resumed, *again]))
        await until(pilot, lambda: app.state.events == len(first) + 4)
        assert app.sub_title == "following (live)"  # live again
        expected = [e["val_accuracy"] for e in epochs[:3]] + [1.0 + e["epoch"] for e in epochs[3:6]]
        assert list(app.accuracy.data or []) == expected
        assert row(app.query_one("#envs", DataTable), "run")[2] == str(epochs[5]["epoch"])
        assert "2 attempts (resumed)" in str(app.run_panel.content)

    drive(app, script)


def test_a_partial_last_line_that_stays_is_reported(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "crashed"
    lines = copy_run(recorded_runs["static"], run, 20)
    with (run / "events.jsonl").open("a", encoding="utf-8") as f:
        f.write(lines[20][:30])  # the run died while writing this line
    app = make_app(run, stalled_seconds=0.3)

    async def script(pilot: Pilot[None]) -> None:
        # (Not asserted before: on a loaded machine the 0.3 s may pass while the app starts.)
        await until(pilot, lambda: "last line is incomplete" in app.sub_title)
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(lines[20][30:])  # it was only slow: the line completes
        await until(pilot, lambda: app.sub_title == "following (live)")

    drive(app, script)


def test_a_finished_run_whose_last_line_is_cut_is_finished(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    """Its summary.json says it ended; the TUI said "following — the last line is incomplete"
    for ever (a walk-through; ``esper report`` said it was finished)."""
    run = tmp_path / "cut"
    lines = copy_run(recorded_runs["static"], run, 0)
    (run / "events.jsonl").write_text("".join(lines[:-1]) + lines[-1][:30], encoding="utf-8")
    shutil.copy(recorded_runs["static"] / "summary.json", run / "summary.json")
    app = make_app(run, stalled_seconds=0.3)

    async def script(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: app.sub_title != "following (live)")
        assert app.sub_title == "finished (completed; the log's last line is cut off)"

    drive(app, script)


@pytest.mark.parametrize("typed", [False, True])
def test_a_malformed_line_while_following_stops_following(
    recorded_runs: dict[str, Path], tmp_path: Path, typed: bool
) -> None:
    run = tmp_path / "broken"
    lines = copy_run(recorded_runs["ppo"], run, 10)
    if typed:  # well-formed JSON, but a field that is not of the event's type
        epoch = next(json.loads(line) for line in lines if json.loads(line)["event"] == EPOCH)
        bad = json.dumps({**epoch, "val_accuracy": "high"}) + "\n"
        message = "EpochCompleted.val_accuracy is 'high', not a number"
    else:
        bad, message = "{not json\n", "malformed"
    app = make_app(run)

    async def script(pilot: Pilot[None]) -> None:
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(lines[10] + bad)
        await until(pilot, lambda: app.error is not None)
        assert "events.jsonl:12" in str(app.error) and message in str(app.error)
        assert app.error_line.has_class("shown") and "stopped following" in app.sub_title
        assert app.state.events == 11  # the line before the bad one is folded
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(lines[12:]))
        await pilot.pause(0.3)
        assert app.is_running and app.state.events == 11  # nothing read after the error

    drive(app, script)


# --- esper tui: bad input --------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(
    recorded_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    lines = copy_run(recorded_runs["heuristic"], broken, 3)
    with (broken / "events.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"event": "NoSuchEvent"}\n' + lines[3])
    mistyped = tmp_path / "mistyped"
    copy_run(recorded_runs["heuristic"], mistyped, 0)
    epoch = next(json.loads(line) for line in lines if json.loads(line)["event"] == EPOCH)
    (mistyped / "events.jsonl").write_text(lines[0] + json.dumps({**epoch, "epoch": "2"}) + "\n")
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "empty": "not an Esper run directory",
        broken: "events.jsonl:4: unknown event 'NoSuchEvent'",
        mistyped: "events.jsonl:2: EpochCompleted.epoch is '2', not int",
    }
    for path, message in cases.items():
        assert main(["tui", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("esper: error: ") and message in err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_no_terminal_is_a_clear_error(
    recorded_runs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli_tui, "_interactive", lambda: False)  # e.g. output piped to a file
    assert main(["tui", str(recorded_runs["static"])]) == 2
    assert "needs an interactive terminal" in capsys.readouterr().err


# --- --tui: the child process ----------------------------------------------------------------


def test_child_command_drops_tui_and_names_the_directory(tmp_path: Path) -> None:
    cases = [
        (["heuristic", "--task", "synthetic", "--tui", "--epochs", "3"], None),
        (["static", "--tui", "--task", "synthetic", "--out", str(tmp_path / "o")], tmp_path / "o"),
        (["ppo", "--preset", "tiny", "--tui"], None),
        (["heuristic", "--resume", str(tmp_path / "r"), "--tui"], tmp_path / "r"),
    ]
    for argv, directory in cases:
        options, rest = split_options(argv[1:])
        command, where = cli_tui.child_command(argv[0], options, rest)
        assert command[:4] == [sys.executable, "-m", "esper", argv[0]]
        assert "--tui" not in command
        child, child_rest = split_options(command[4:])
        assert child_rest == rest and child.resume == options.resume  # nothing else changed
        assert not child.tui and child.config == options.config
        if directory is not None:
            assert where == directory and command.count("--out") == argv.count("--out")
        else:  # the command's own default, passed explicitly
            assert child.out == where and where.parent == Path("runs")
            assert where.name.startswith(f"synthetic-{argv[0]}-")


def headless(script: Callable[[Pilot[None]], Awaitable[None]]) -> Callable[[RunApp], None]:
    def run_app(app: RunApp) -> None:
        app.run(headless=True, size=SIZE, auto_pilot=script)

    return run_app


def test_tui_child_is_interrupted_on_quit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real child (default run directory): quitting the UI sends it SIGINT; it checkpoints."""
    monkeypatch.chdir(tmp_path)
    seen: dict[str, Any] = {}

    async def script(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, RunApp)
        await until(pilot, lambda: None in app.state.envs, timeout=60)  # an epoch is shown
        seen["status"] = app.sub_title
        await pilot.press("q")

    monkeypatch.setattr(cli_tui, "_interactive", lambda: True)
    monkeypatch.setattr(cli_tui, "_run_app", headless(script))
    argv = ["heuristic", "--task", "synthetic", "--epochs", "500", "--tui"]
    argv += ["--batches-per-epoch", "1", "--val-samples", "32"]
    assert main(argv) == 130
    assert seen["status"] == "following (live)"
    [run] = (tmp_path / "runs").iterdir()
    assert run.name.startswith("synthetic-heuristic-")
    out, err = capsys.readouterr()
    assert f"continue with: esper heuristic --resume {Path('runs') / run.name}" in out
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    console = (run / "console.log").read_text()
    assert re.search(r"interrupted: epoch \d+ checkpointed", console)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run.name]  # no hidden log left
    assert f"console output: {Path('runs') / run.name / 'console.log'}" in err


FAKE_CHILD = """
import shutil, sys, time
from pathlib import Path
source, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir()
shutil.copy(source / "config.json", out / "config.json")
print("[fake] 1/1 progress line", file=sys.stderr)
with (out / "events.jsonl").open("w") as f:
    for line in (source / "events.jsonl").read_text().splitlines(keepends=True):
        f.write(line)
        f.flush()
        time.sleep(0.002)
shutil.copy(source / "summary.json", out / "summary.json")
print("fake result line")
"""


def _fake_child(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str = ""
) -> Path:
    """``--tui`` runs ``FAKE_CHILD`` (replaying ``source``'s run into ``tmp_path/run``, then
    the code ``then``) in a terminal it takes for interactive; the run directory."""
    out = tmp_path / "run"
    script_path = tmp_path / "child.py"
    script_path.write_text(FAKE_CHILD + then)
    command = [sys.executable, str(script_path), str(source), str(out)]
    monkeypatch.setattr(cli_tui, "child_command", lambda name, options, argv: (command, out))
    monkeypatch.setattr(cli_tui, "_interactive", lambda: True)
    return out


def test_tui_child_finishing_first_returns_its_code(
    recorded_runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A child that finishes first: the UI shows it finished; quitting returns its code."""
    out = _fake_child(recorded_runs["ppo"], tmp_path, monkeypatch)
    seen: dict[str, Any] = {}

    async def script(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, RunApp)
        await until(pilot, lambda: app.child_code is not None and app.state.status is not None)
        await pilot.pause(0.2)
        seen["status"] = app.sub_title
        await pilot.press("q")

    monkeypatch.setattr(cli_tui, "_run_app", headless(script))
    assert main(["ppo", "--preset", "tiny", "--tui"]) == 0
    assert seen["status"] == "finished (completed), exit code 0"
    assert capsys.readouterr().out == "fake result line\n"
    assert "[fake] 1/1 progress line" in (out / "console.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "run"]


def test_quitting_as_a_finished_child_exits_waits_for_it(
    recorded_runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Quitting while a finished run's process was still exiting (torch's shutdown takes 2 s)
    sent it SIGINT: "stopping the run: waiting for its checkpoint ...", and exit 254 (the
    signal's -2, as Python's handler was gone). The finished child is waited for; a child
    killed by a signal gives 128 + N."""
    # The child exits 0.6 s after the quit (it stayed 1.5 s from its end, which a loaded
    # machine could spend before the UI saw the run finish: no wait to tell).
    quit_pressed = tmp_path / "quit"
    exiting = (
        "import os, signal\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\n"
        f"for _ in range(6000):\n    if os.path.exists({str(quit_pressed)!r}): break\n"
        "    time.sleep(0.01)\ntime.sleep(0.6)\n"
    )
    _fake_child(recorded_runs["ppo"], tmp_path, monkeypatch, exiting)

    async def script(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, RunApp)
        await until(pilot, lambda: app.state.status is not None)
        assert app.child_code is None  # still exiting
        quit_pressed.touch()
        await pilot.press("q")

    monkeypatch.setattr(cli_tui, "_run_app", headless(script))
    monkeypatch.setattr(cli_tui, "EXIT_NOTICE_SECONDS", 0.2)  # a long wait says what it waits for
    assert main(["ppo", "--preset", "tiny", "--tui"]) == 0
    err = capsys.readouterr().err
    assert "the run has finished; waiting for its process to exit" in err
    assert "stopping the run" not in err
    # A child a signal killed: the code a shell gives (it was -9, and exit 247).
    suicide = [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"]
    killed = cli_tui.ChildRun.start(suicide, tmp_path / "killed")
    killed.process.wait()
    assert killed.stop() == 128 + signal.SIGKILL
    killed.discard_log()


def test_the_closing_lines_follow_the_last_progress_line() -> None:
    """A run stopped before its first epoch printed its configuration's last lines as closing
    lines: ``[telemetry]`` counted as a progress line."""
    config = "esper static: effective configuration\n[training]\ntask = 'x'\n[telemetry]\n"
    output = f"{config}tensorboard = false\n\ninterrupted: epoch 0 checkpointed\nresume: x\n"
    assert cli_tui.final_lines(output) == ["interrupted: epoch 0 checkpointed", "resume: x"]
    progress = "[synthetic static] epoch 2/5  val acc 50.00%\n"
    assert cli_tui.final_lines(f"{config}{progress}static (completed)\n") == ["static (completed)"]


def test_tui_child_failing_before_its_run_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-c", "import sys; sys.exit('esper: error: bad thing')"]
    monkeypatch.setattr(cli_tui, "child_command", lambda name, options, argv: (command, out))
    monkeypatch.setattr(cli_tui, "_interactive", lambda: True)
    monkeypatch.setattr(cli_tui, "_run_app", lambda app: pytest.fail("the UI must not start"))
    assert main(["heuristic", "--task", "synthetic", "--tui"]) == 1
    err = capsys.readouterr().err
    assert err.endswith("\nesper: error: bad thing\n")  # said once, not followed by ours
    assert "did not start" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # the hidden console log is gone
    command[-1] = "import sys; sys.exit(3)"  # a child that dies without a word
    assert main(["heuristic", "--task", "synthetic", "--tui"]) == 3
    err = capsys.readouterr().err
    assert err.endswith("\nesper: error: the run did not start (exit code 3)\n")


def test_tui_resume_of_a_run_whose_log_is_a_pipe_is_one_line(tmp_path, monkeypatch, capsys):
    """The child refused the run at once, but the watcher blocked opening the pipe to see
    whether the child had written its first event, forever."""
    run = tmp_path / "run"
    tiny = ["--epochs", "2", "--batches-per-epoch", "2", "--val-samples", "32"]
    assert main(["heuristic", "--task", "synthetic", *tiny, "--out", str(run)]) == 0
    (run / "summary.json").unlink()
    (run / "events.jsonl").unlink()
    os.mkfifo(run / "events.jsonl")
    capsys.readouterr()
    monkeypatch.setattr(cli_tui, "_interactive", lambda: True)
    monkeypatch.setattr(cli_tui, "_run_app", lambda app: pytest.fail("the UI must not start"))

    def hung(signum, frame):
        raise KeyboardInterrupt("still waiting after 60 s")  # not an OSError: nothing eats it

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        assert main(["heuristic", "--resume", str(run), "--tui"]) == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "events.jsonl" in errors[0], errors


def test_tui_child_with_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("not a run")  # an existing, non-empty --out
    monkeypatch.setattr(cli_tui, "_interactive", lambda: True)
    monkeypatch.setattr(cli_tui, "_run_app", lambda app: pytest.fail("the UI must not start"))
    args = ["heuristic", "--task", "synthetic", "--epochs", "2", "--out", str(out), "--tui"]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "already exists and is not empty" in errors[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


# --- what a sweep crashed the UI with --------------------------------------------------------


def test_moving_in_an_empty_environment_table_does_nothing(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    """Before the first epoch the table has no row: p, up and page-down highlighted "row -1"
    with no key, the UI crashed, and under --tui that interrupted the run."""
    copy_run(recorded_runs["heuristic"], tmp_path / "run", 1)  # RunStarted only
    app = make_app(tmp_path / "run")

    async def script(pilot: Pilot[None]) -> None:
        for key in ("p", "up", "pagedown", "n", "down", "home", "end", "enter"):
            await pilot.press(key)
        await pilot.pause()
        assert app.return_code is None and app.selected is None  # still up, nothing chosen

    drive(app, script)  # run_test re-raises what the app raised


def test_odd_slot_names_repeated_slots_and_extreme_numbers_are_drawn(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    """A slot named like Rich markup, a slot listed twice, accuracies whose range overflows
    a float and an infinite one (JSON's 1e400) each crashed the UI as it drew them."""
    lines = copy_run(recorded_runs["heuristic"], tmp_path / "run", 0)
    records = [json.loads(line) for line in lines]
    epoch = last(records, EPOCH)
    slot = {**epoch["slots"][0], "slot": "[/]", "blueprint": "[/bold]x[link="}
    infinite = json.dumps({**epoch, "epoch": epoch["epoch"] + 1}).replace(
        f'"val_accuracy": {epoch["val_accuracy"]}', '"val_accuracy": 1e400'
    )
    odd = [
        {**epoch, "epoch": epoch["epoch"] + 2, "val_accuracy": -1.7e308},
        {**epoch, "epoch": epoch["epoch"] + 3, "val_accuracy": 1.7e308, "slots": [slot, slot]},
    ]
    text = "".join(lines) + infinite + "\n" + "".join(json.dumps(r) + "\n" for r in odd)
    (tmp_path / "run" / "events.jsonl").write_text(text, encoding="utf-8")
    app = make_app(tmp_path / "run")
    shown: dict[str, Any] = {}

    async def script(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: app.state.events == len(records) + 3)
        app.selected = None
        app._refresh_selected()
        await pilot.pause()
        shown["accuracy"] = list(app.accuracy.data or [])
        shown["slots"] = table_rows(app.slots_table)
        await pilot.press("q")

    drive(app, script)
    assert shown["accuracy"] and all(map(math.isfinite, shown["accuracy"]))
    assert [cells[:3] for cells in shown["slots"]] == [["[/]", slot["stage"], "[/bold]x[link="]] * 2


def test_drawable_keeps_the_shape_of_what_a_sparkline_can_draw() -> None:
    from esper.karn.tui import drawable

    assert drawable([1.0, NAN, 3.0, math.inf, -math.inf]) == [1.0, 3.0]
    assert drawable([1.7e308, -1.7e308, 0.0]) == [0.85e308, -0.85e308, 0.0]
    assert drawable([]) == []


def test_a_ppo_round_number_no_float_holds_is_shown(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    """``display(int, ".4g")`` converts to float: a 400-digit round crashed the PPO panel."""
    from esper.nissa.log import display

    assert display(int("9" * 400), ".4g") == "1.000e+400"  # rounded, as a float would be
    assert display(-int("12345" + "0" * 300), ".4g") == "-1.234e+304"
    assert display(10**400, ".2f") == "1" + "0" * 400 + ".00"  # the format is kept
    lines = copy_run(recorded_runs["ppo"], tmp_path / "run", 0)
    update = last([json.loads(line) for line in lines], PPOUpdate.__name__)
    big = json.dumps(update).replace(f'"round": {update["round"]}', '"round": ' + "9" * 400)
    (tmp_path / "run" / "events.jsonl").write_text("".join(lines) + big + "\n", encoding="utf-8")
    app = make_app(tmp_path / "run")

    async def script(pilot: Pilot[None]) -> None:
        await pilot.pause()
        assert "1.000e+400" in str(app.ppo_panel.content)
        await pilot.press("q")

    drive(app, script)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_quit_the_ui_and_give_back_the_handlers(
    recorded_runs: dict[str, Path], signum: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed by SIGTERM or SIGHUP, the UI left the terminal in its screen, and a --tui run
    went on orphaned; now they quit it as q does. SIGHUP first sends what would be written to
    a terminal that hung up to /dev/null (the --tui parent's closing lines failed with EIO)."""
    app = make_app(recorded_runs["static"])
    detached: list[bool] = []
    monkeypatch.setattr(karn_tui, "detach_from_hung_up_terminal", lambda: detached.append(True))

    def before(signum: int, frame: object) -> None:
        raise AssertionError("the UI's handler should have taken the signal")

    previous = signal.signal(signum, before)
    try:

        async def script(pilot: Pilot[None]) -> None:
            os.kill(os.getpid(), signum)
            await until(pilot, lambda: app.return_code is not None)

        drive(app, script)
        assert app.return_code == 0
        assert signal.getsignal(signum) is before  # given back once the UI ended
        assert detached == ([True] if signum == signal.SIGHUP else [])
    finally:
        signal.signal(signum, previous)


def test_esper_tui_exits_1_when_the_ui_fails(
    recorded_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UI that failed (Textual prints its traceback) ended ``esper tui`` with exit 0."""

    def broken(self: RunApp) -> None:
        raise RuntimeError("a panel that cannot be drawn")

    monkeypatch.setattr(RunApp, "_refresh", broken)
    monkeypatch.setattr(cli_tui, "_interactive", lambda: True)
    monkeypatch.setattr(cli_tui, "_run_app", lambda app: app.run(headless=True, size=SIZE))
    assert main(["tui", str(recorded_runs["static"])]) == 1


def test_ctrl_c_quits_the_ui(recorded_runs: dict[str, Path]) -> None:
    """Textual only showed "press ctrl+q to quit" on Ctrl-C; the UI quits, as with q."""
    app = make_app(recorded_runs["static"])

    async def script(pilot: Pilot[None]) -> None:
        await pilot.press("ctrl+c")
        await until(pilot, lambda: app.return_code is not None)

    drive(app, script)
    assert app.return_code == 0


def test_stopping_the_child_signals_it_first_when_the_terminal_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a hangup, writing to the terminal fails (EIO): stop() printed its "stopping" line
    before it signalled the child, so the child was never stopped."""
    import errno

    command = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    child = cli_tui.ChildRun.start(command, tmp_path / "run")
    deadline = time.monotonic() + 30
    while "up" not in child.output():  # the child has reached its sleep
        assert time.monotonic() < deadline and child.process.poll() is None
        time.sleep(0.05)

    class HungUp:
        def write(self, text: str) -> int:
            raise OSError(errno.EIO, "Input/output error")

        def flush(self) -> None:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sys, "stderr", HungUp())
    started = time.monotonic()
    assert child.stop() == 128 + signal.SIGINT  # ended by the signal, not by the 60 s sleep
    assert time.monotonic() - started < 10


def test_a_tui_child_refusing_its_input_leaves_no_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console log's new parent directories were left behind, empty, when the child
    refused its input (without --tui nothing is made)."""
    monkeypatch.setattr(cli_tui, "_interactive", lambda: True)
    monkeypatch.setattr(cli_tui, "_run_app", lambda app: pytest.fail("the UI must not start"))
    out = tmp_path / "new" / "a" / "b" / "run"
    assert main(["heuristic", "--tui", "--task", "bogus", "--out", str(out)]) == 2
    assert "bogus" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited and not yet reaped, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_the_child_stops_when_the_ui_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed UI left its child training on, orphaned, its console output in the hidden
    log: the child now gets SIGINT when the UI's process dies (and checkpoints)."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from esper.cli.tui import ChildRun\n"
        "command = [sys.executable, '-c', 'import time; time.sleep(120)']\n"
        "child = ChildRun.start(command, Path(sys.argv[1]))\n"
        "print(child.process.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    ui = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    assert ui.stdout is not None
    child = int(ui.stdout.readline())
    try:
        assert _alive(child)
        ui.kill()
        ui.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its UI"
    finally:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
