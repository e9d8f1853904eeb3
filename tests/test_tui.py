"""The terminal UI: the fold of records into display state, the Textual app driven headless by
its pilot over recorded runs (replayed and followed live), bad input, and ``--tui`` plumbing."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from esper.cli import tui as cli_tui
from esper.cli.config import split_options
from esper.cli.main import main
from esper.karn.tui import HelpScreen, RunApp, env_cells
from esper.karn.tui_state import RunView, log_text, matches
from esper.leyline.events import (
    AnomalyDetected,
    EpisodeFinished,
    EpochCompleted,
    GovernorPanic,
    PPOUpdate,
    RunFinished,
    RunStarted,
    SeedTransition,
)
from esper.leyline.stages import SeedStage
from esper.nissa.log import EventTail, open_run

SIZE = (150, 50)
EPOCH = EpochCompleted.__name__


# --- helpers ---------------------------------------------------------------------------------


def records_of(run: Path) -> list[dict[str, Any]]:
    """The run's records, read with plain json (independently of the code under test)."""
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def last(records: list[dict[str, Any]], event: str, env: int | None = None) -> dict[str, Any]:
    matching = [r for r in records if r["event"] == event and r.get("env") == env]
    assert matching, (event, env)
    return matching[-1]


def make_app(run: Path, poll_seconds: float = 0.05) -> RunApp:
    directory = open_run(run)
    tail = EventTail(directory.events_path)
    return RunApp(directory, tail, tail.poll(), poll_seconds=poll_seconds)


def drive(app: RunApp, script: Callable[[Pilot[None]], Awaitable[None]]) -> None:
    """Run ``app`` headless and let ``script`` drive it."""

    async def go() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await script(pilot)

    asyncio.run(go())


async def until(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the UI"
        await pilot.pause(0.05)


def row(table: DataTable[Any], key: str) -> list[str]:
    return [str(cell) for cell in table.get_row(key)]


def table_rows(table: DataTable[Any]) -> list[list[str]]:
    return [row(table, str(r.key.value)) for r in table.ordered_rows]


def slot_record(slot: str, stage: str, blueprint: str | None, **extra: Any) -> dict[str, Any]:
    values = {"alpha": 0.0, "contribution": None, "shapley": None, "seed_params": 0}
    return {"slot": slot, "stage": stage, "blueprint": blueprint, **values, **extra}


def epoch_record(epoch: int, accuracy: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "t": 1_700_000_000.0 + epoch,
        "run_id": "r",
        **{k: v for k, v in extra.items() if k in ("env", "episode")},
        "event": EPOCH,
        "epoch": epoch,
        "train_loss": 1.0,
        "train_accuracy": 50.0,
        "val_loss": 1.5,
        "val_accuracy": accuracy,
        "param_count": 100 + epoch,
        "slots": extra.get("slots", [slot_record("early", "DORMANT", None)]),
        "seconds": 0.1,
    }


def started(mode: str = "heuristic", resumed: int | None = None) -> dict[str, Any]:
    return {
        "t": 1_700_000_000.0,
        "run_id": "r",
        "event": RunStarted.__name__,
        "mode": mode,
        "task": "synthetic",
        "seed": 0,
        "max_epochs": 5,
        "slots": ["early"],
        "resumed_from_epoch": resumed,
    }


# --- the fold (pure Python) ------------------------------------------------------------------


def test_fold_single_model_run() -> None:
    view = RunView()
    slots = [slot_record("early", "BLENDING", "norm", alpha=0.5, contribution=1.25, shapley=0.5)]
    view.apply(started())
    view.apply(epoch_record(1, 40.0))
    view.apply(epoch_record(2, None, slots=slots))  # accuracy not measured this epoch
    assert not view.finished
    view.apply({"event": RunFinished.__name__, "status": "completed", "epochs": 2})
    env = view.envs[None]
    assert list(view.envs) == [None] and env.epoch == 2 and env.params == 102
    assert env.val_accuracy is None and env_cells(env)[3] == "—"  # missing, never 0
    assert env.history == [(1, 40.0), (2, None)]
    assert env.slots[0].stage == "BLENDING" and env.slots[0].alpha == 0.5
    assert env.slots[0].contribution == 1.25 and env.slots[0].shapley == 0.5
    assert view.finished and view.status == "completed" and view.events == 4


def test_fold_ppo_environments_episodes_and_updates() -> None:
    view = RunView()
    view.apply(started("ppo"))
    for env in (0, 1):
        for epoch in (1, 2):
            view.apply(epoch_record(epoch, 10.0 * epoch + env, env=env, episode=1))
    view.apply({"event": EpisodeFinished.__name__, "env": 0, "episode": 1, "episode_return": 0.5})
    view.apply({"event": GovernorPanic.__name__, "env": 1, "episode": 1, "rule": "spike"})
    view.apply(epoch_record(1, 99.0, env=0, episode=2))  # env 0's next episode starts afresh
    update = {"event": PPOUpdate.__name__, "round": 1, "env_steps": 4, "policy_loss": -0.01}
    view.apply({**update, "entropy": "not a number", "approx_kl": None})
    view.apply({"event": AnomalyDetected.__name__, "round": 1, "kinds": ["entropy_collapse"]})
    assert view.env_keys() == [0, 1]
    assert view.envs[0].episode == 2 and view.envs[0].history == [(1, 99.0)]
    assert view.envs[1].history == [(1, 11.0), (2, 21.0)]
    assert view.ppo.round == 1 and view.ppo.env_steps == 4
    assert view.ppo.stats["policy_loss"] == -0.01
    assert view.ppo.stats["entropy"] is None and view.ppo.stats["approx_kl"] is None
    assert view.ppo.anomalies == 1 and view.ppo.mean_returns == [None]
    assert (view.envs[0].panics, view.envs[1].panics) == (0, 1)


def test_resumed_run_is_live_again_and_redone_epochs_replace_history() -> None:
    view = RunView()
    view.apply(started())
    for epoch in (1, 2, 3):
        view.apply(epoch_record(epoch, float(epoch)))
    view.apply({"event": RunFinished.__name__, "status": "interrupted"})
    assert view.finished
    view.apply(started(resumed=2))
    assert not view.finished
    view.apply(epoch_record(3, 33.0))
    assert view.envs[None].history == [(1, 1.0), (2, 2.0), (3, 33.0)]


def test_a_resumed_ppo_run_keeps_one_return_per_round() -> None:
    view = RunView()
    view.apply(started("ppo"))
    for round_, value in ((1, 0.1), (2, 0.2), (3, 0.3)):  # round 3 logged, not checkpointed
        view.apply({"event": PPOUpdate.__name__, "round": round_, "mean_return": value})
    anomaly = {"event": AnomalyDetected.__name__, "round": 3, "kinds": ["entropy_collapse"]}
    view.apply(anomaly)
    view.apply(started("ppo", resumed=2))
    view.apply({"event": PPOUpdate.__name__, "round": 3, "mean_return": 0.33})
    view.apply(anomaly)  # the rerun round finds the same anomaly
    assert view.ppo.mean_returns == [0.1, 0.2, 0.33]
    assert view.ppo.anomalies == 1


def test_log_lines_and_filter() -> None:
    transition = {
        "t": 1_700_000_000.0,
        "env": 1,
        "episode": 3,
        "event": SeedTransition.__name__,
        "epoch": 4,
        "slot": "mid",
        "blueprint": "norm",
        "from_stage": "TRAINING",
        "to_stage": "BLENDING",
        "reason": "advance (G2)",
    }
    text = log_text(transition)
    assert "env 1 ep 3 SeedTransition" in text and "mid norm: TRAINING → BLENDING" in text
    anomaly = {"event": AnomalyDetected.__name__, "round": 2, "kinds": ["a", "b"], "detail": None}
    assert "AnomalyDetected: round=2 kinds=a,b detail=—" in log_text(anomaly)
    view = RunView()
    line = view.apply(transition)
    assert matches(line, "seedtrans") and matches(line, " BLENDING ")
    assert not matches(line, "PPOUpdate")
    assert log_text({"event": EPOCH}).endswith("val acc — loss —, train acc —, — params")


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
                str(final["param_count"]),
            ]
        ]
        slots = app.query_one("#slots", DataTable)
        assert [r[0] for r in table_rows(slots)] == [s["slot"] for s in final["slots"]]
        for slot in fossilized:
            cells = row(slots, slot["slot"])
            assert cells[1:3] == [SeedStage.FOSSILIZED.value, slot["blueprint"]]
            assert cells[3] == f"{slot['alpha']:.2f}"
        assert app.sub_title == "finished (completed)"
        panel = str(app.run_panel.content)
        assert f"epoch    {final['epoch']} / {final['epoch']}" in panel
        assert not app.query_one("#ppo-box").display  # no PPO panel for a heuristic run
        assert len(app.log_panel.lines) == len(records)
        accuracies = [r["val_accuracy"] for r in records if r["event"] == EPOCH]
        assert list(app.accuracy.data or []) == accuracies

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
                    str(epoch["param_count"]),
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
        assert labels[:-2] == [f.name.replace("_", " ") for f in fields(PPOUpdate)]  # each one
        assert f"{'anomalies':<20}0" in ppo
        assert app.sub_title == "finished (completed)"
        slots = app.query_one("#slots", DataTable)
        for env in (0, 1):  # the slot panel follows the selected environment
            if env == 1:
                await pilot.press("n")
                await pilot.pause()
            stages = [s["stage"] for s in last(records, EPOCH, env)["slots"]]
            assert [r[1] for r in table_rows(slots)] == stages
            assert str(app.slots_title.content) == f"Slots (env {env})"

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


def test_a_partial_last_line_that_stays_is_reported(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "crashed"
    lines = copy_run(recorded_runs["static"], run, 20)
    with (run / "events.jsonl").open("a", encoding="utf-8") as f:
        f.write(lines[20][:30])  # the run died while writing this line
    directory = open_run(run)
    tail = EventTail(directory.events_path)
    app = RunApp(directory, tail, tail.poll(), poll_seconds=0.05, stalled_seconds=0.3)

    async def script(pilot: Pilot[None]) -> None:
        # (Not asserted before: on a loaded machine the 0.3 s may pass while the app starts.)
        await until(pilot, lambda: "last line is incomplete" in app.sub_title)
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(lines[20][30:])  # it was only slow: the line completes
        await until(pilot, lambda: app.sub_title == "following (live)")

    drive(app, script)


def test_malformed_line_while_following_stops_following(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "broken"
    lines = copy_run(recorded_runs["ppo"], run, 10)
    app = make_app(run)

    async def script(pilot: Pilot[None]) -> None:
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write("{not json\n")
        await until(pilot, lambda: app.error is not None)
        assert "events.jsonl:11" in str(app.error) and "malformed" in str(app.error)
        assert app.error_line.has_class("shown") and "stopped following" in app.sub_title
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(lines[10:]))
        await pilot.pause(0.3)
        assert app.is_running and app.view.events == 10  # nothing read after the error

    drive(app, script)


# --- esper tui: bad input --------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(
    recorded_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    lines = copy_run(recorded_runs["heuristic"], broken, 3)
    with (broken / "events.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"event": "NoSuchEvent"}\n' + lines[3])
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "empty": "not an Esper run directory",
        broken: "events.jsonl:4: unknown event 'NoSuchEvent'",
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
        await until(pilot, lambda: None in app.view.envs, timeout=60)  # an epoch is shown
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


def test_tui_child_finishing_first_returns_its_code(
    recorded_runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A child that finishes first: the UI shows it finished; quitting returns its code."""
    out = tmp_path / "run"
    script_path = tmp_path / "child.py"
    script_path.write_text(FAKE_CHILD)
    command = [sys.executable, str(script_path), str(recorded_runs["ppo"]), str(out)]
    monkeypatch.setattr(cli_tui, "child_command", lambda name, options, argv: (command, out))
    monkeypatch.setattr(cli_tui, "_interactive", lambda: True)
    seen: dict[str, Any] = {}

    async def script(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, RunApp)
        await until(pilot, lambda: app.child_code is not None and app.view.finished)
        await pilot.pause(0.2)
        seen["status"] = app.sub_title
        await pilot.press("q")

    monkeypatch.setattr(cli_tui, "_run_app", headless(script))
    assert main(["ppo", "--preset", "tiny", "--tui"]) == 0
    assert seen["status"] == "finished (completed), exit code 0"
    assert capsys.readouterr().out == "fake result line\n"
    assert "[fake] 1/1 progress line" in (out / "console.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "run"]


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
    assert "esper: error: bad thing\n" in err
    assert "the run did not start (exit code 1)" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # the hidden console log is gone


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
    assert "already exists and is not empty" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
