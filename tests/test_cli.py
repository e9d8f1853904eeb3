"""The ``esper`` command: smoke runs, run-directory receipts, bad input, Ctrl-C and resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper.cli.main import main
from esper.leyline.events import EVENT_TYPES

ESPER = [sys.executable, "-m", "esper.cli.main"]


def _run(args: list[str], capsys=None) -> int:
    code = main(args)
    return code


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_help_lists_commands_and_tasks(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("heuristic", "static", "demo", "fashion_mnist_impaired", "synthetic"):
        assert word in out


def test_heuristic_run_directory(tmp_path) -> None:
    run = tmp_path / "run"
    assert _run(["heuristic", "--task", "synthetic", "--epochs", "3", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "synthetic" and config["epochs"] == 3 and config["mode"] == "heuristic"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seeds"]["run"] == 0
    assert meta["versions"]["torch"] and meta["versions"]["python"]
    assert "git_revision" in meta  # a revision string, or null outside a git checkout
    events = _events(run)
    assert all(e["event"] in EVENT_TYPES for e in events)
    assert events[0]["event"] == "RunStarted" and events[-1]["event"] == "RunFinished"
    assert [e["epoch"] for e in events if e["event"] == "EpochCompleted"] == [1, 2, 3]
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert summary["final"]["val_accuracy"] == pytest.approx(float(rows[-1]["val_accuracy"]))
    assert (run / "checkpoints" / "model.pt").is_file() and (
        run / "checkpoints" / "state.pt"
    ).is_file()


def test_static_run_never_grows(tmp_path) -> None:
    run = tmp_path / "static"
    assert _run(["static", "--task", "synthetic", "--epochs", "8", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seeds"] == [] and summary["param_count"] == summary["host_param_count"]
    assert not any(e["event"] == "SeedTransition" for e in _events(run))


def test_heuristic_grows_in_more_than_one_slot(tmp_path) -> None:
    run = tmp_path / "grow"
    # Long enough for several lifecycles: the heuristic stops germinating 10 epochs before the
    # end, so that every seed it grows can finish.
    slots = ["--slots", "early", "mid", "late"]
    code = _run(["heuristic", "--task", "synthetic", "--epochs", "40", *slots, "--out", str(run)])
    assert code == 0
    germinated = {
        e["slot"]
        for e in _events(run)
        if e["event"] == "SeedTransition" and e["to_stage"] == "GERMINATED"
    }
    assert len(germinated) >= 2, germinated


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["heuristic", "--task", "mnist"], "invalid choice: 'mnist'"),
        (
            ["heuristic", "--task", "synthetic", "--epochs", "0"],
            "expected a positive integer, got 0",
        ),
        (
            ["heuristic", "--task", "synthetic", "--lr", "-1"],
            "expected a finite positive number, got -1.0",
        ),
        (
            ["heuristic", "--task", "synthetic", "--slots", "middle"],
            "unknown slot name 'middle'; accepted",
        ),
        (["heuristic"], "heuristic needs --task"),
        (["heuristic", "--task", "synthetic", "--slots", "mid_2"], "unknown or no slots ['mid_2']"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    try:
        code = main([*args, "--out", str(out)])
    except SystemExit as exit_:  # argparse reports its own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not out.exists(), "bad input must leave nothing behind"


def test_missing_dataset_is_reported(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ESPER_DATA_DIR", raising=False)
    out = tmp_path / "run"
    code = main(["static", "--task", "cifar10", "--no-download", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cifar" in err.lower() and "Traceback" not in err
    assert not out.exists()


def test_existing_run_directory_is_not_overwritten(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    assert main(["static", "--task", "synthetic", "--out", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "precious.txt").read_text() == "keep me"


def test_unreadable_checkpoint_on_resume(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert _run(["static", "--task", "synthetic", "--epochs", "2", "--out", str(run)]) == 0
    (run / "summary.json").unlink()  # as if the run had crashed
    (run / "checkpoints" / "model.pt").write_bytes(b"garbage")
    assert main(["static", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "not a readable Esper model file" in err
    assert main(["static", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not an Esper run directory" in capsys.readouterr().err


def _completed_epochs(log: Path) -> list[int]:
    """Epochs logged so far; only whole lines count (the run may be mid-write)."""
    if not log.exists():
        return []
    lines = log.read_text().split("\n")[:-1]  # the text after the last newline may be partial
    return [e["epoch"] for e in map(json.loads, lines) if e["event"] == "EpochCompleted"]


def _wait_for_epoch(run: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "run ended before it could be interrupted"
        if max(_completed_epochs(run / "events.jsonl"), default=0) >= epoch:
            return
        time.sleep(0.05)
    raise AssertionError("run did not reach the epoch in time")


def test_ctrl_c_then_resume_matches_uninterrupted_run(tmp_path) -> None:
    # 40 epochs: seeds germinate, blend and get pruned or fossilized; interrupt mid-growth.
    args = ["heuristic", "--task", "synthetic", "--epochs", "40", "--seed", "5"]
    straight = tmp_path / "straight"
    assert _run([*args, "--out", str(straight)]) == 0

    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*ESPER, *args, "--out", str(interrupted)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_epoch(interrupted, 15, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] < 40
    rows = list(csv.DictReader((interrupted / "metrics.csv").open()))
    assert (
        int(rows[-1]["epoch"]) == summary["epochs_completed"]
    )  # the record matches the checkpoint

    assert _run(["heuristic", "--resume", str(interrupted)]) == 0
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((interrupted / "summary.json").read_text())
    assert b["status"] == a["status"] != "interrupted"
    for key in ("final", "best_val_accuracy", "param_count", "fossilized", "pruned", "seeds"):
        assert a[key] == b[key], key
    with (straight / "metrics.csv").open() as f1, (interrupted / "metrics.csv").open() as f2:
        assert list(csv.DictReader(f1)) == list(csv.DictReader(f2))
    starts = [e for e in _events(interrupted) if e["event"] == "RunStarted"]
    assert starts[0]["resumed_from_epoch"] is None and starts[1]["resumed_from_epoch"] >= 15
    grown = [e for e in _events(straight) if e["event"] == "SeedTransition"]
    assert grown, "the resumed stretch must cover live seeds to test anything"


def test_demo_falls_back_to_digits_and_prints_a_table(tmp_path, capsys, monkeypatch) -> None:
    import esper.cli.demo as demo
    from esper.data import DatasetNotFoundError

    def unavailable(name, *args, **kwargs):
        raise DatasetNotFoundError(f"{name}: looked in /nowhere")

    monkeypatch.setattr(demo, "load_dataset", unavailable)
    assert main(["demo", "--epochs", "2", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "Fashion-MNIST is not available" in captured.err and "digits" in captured.err
    table = captured.out
    assert "run" in table and "final acc" in table and "params" in table
    assert "static" in table and "heuristic" in table
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert len(runs) == 2 and all("digits" in r for r in runs)
    for run in tmp_path.iterdir():
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_full_demo_finishes(tmp_path, capsys) -> None:
    """The real demo (Fashion-MNIST when present) within its 10-minute budget on 2 cores."""
    started = time.monotonic()
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert time.monotonic() - started < 600
    assert "heuristic" in capsys.readouterr().out


def test_resuming_a_completed_run_is_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert _run(["static", "--task", "synthetic", "--epochs", "2", "--out", str(run)]) == 0
    before = (run / "summary.json").read_text()
    assert main(["static", "--resume", str(run)]) == 2
    assert "already completed; nothing to resume" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == before


def test_out_pointing_at_a_file(tmp_path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["static", "--task", "synthetic", "--out", str(afile)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert afile.read_text() == "x"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"task": "nope"}, "unknown task 'nope'"),
        ({"epochs": -3}, "epochs must be an integer >= 1, got -3"),
        ({"epochs": "40"}, "epochs must be an integer >= 1, got '40'"),
        ({"lr": 0}, "lr must be a finite positive number"),
        ({"extra": 1}, "fields ['extra'] differ"),
    ],
)
def test_edited_run_config_is_reported(tmp_path, capsys, edit, message: str) -> None:
    run = tmp_path / "run"
    assert _run(["static", "--task", "synthetic", "--epochs", "1", "--out", str(run)]) == 0
    (run / "summary.json").unlink()
    config = json.loads((run / "config.json").read_text())
    config.update(edit)
    (run / "config.json").write_text(json.dumps(config))
    assert main(["static", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_trainer_state(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert _run(["static", "--task", "synthetic", "--epochs", "1", "--out", str(run)]) == 0
    (run / "summary.json").unlink()
    (run / "checkpoints" / "state.pt").write_bytes(b"\x80\x04garbage")
    assert main(["static", "--resume", str(run)]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_resume_refuses_run_flags(tmp_path, capsys) -> None:
    assert main(["heuristic", "--resume", str(tmp_path), "--seed", "7", "--slots", "late"]) == 2
    assert "drop --seed, --slots" in capsys.readouterr().err


def test_ctrl_c_in_the_first_epoch_can_be_resumed(tmp_path, monkeypatch) -> None:
    import esper.cli.session as session

    run = tmp_path / "run"
    original = session.Run.step

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(session.Run, "step", interrupted)
    assert main(["static", "--task", "synthetic", "--epochs", "2", "--out", str(run)]) == 130
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 0
    assert summary["final"] is None and summary["best_val_accuracy"] is None
    monkeypatch.setattr(session.Run, "step", original)
    assert main(["static", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 2


def test_json_files_never_hold_nan(tmp_path) -> None:
    from esper.cli.session import _write_json

    path = tmp_path / "x.json"
    _write_json(path, {"a": float("nan"), "b": [1.0, float("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None]}
