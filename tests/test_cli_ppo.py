"""``esper ppo`` and ``esper eval`` end to end on the tiny preset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from esper.cli.main import main
from esper.cli.ppo import ROUND_FIELDS
from esper.simic.config import load_preset
from esper.simic.training import PPOTrainer

TIMING = {"seconds_rollout", "seconds_update"}


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _rows(run: Path) -> list[dict]:
    with (run / "rounds.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _policy(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "ppo.pt", weights_only=True)
    return state["trainer"]["policy"]


def test_tiny_preset_run_directory(tmp_path, capsys) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "device map:\ncpu: envs 0, 1" in err
    assert json.loads((run / "config.json").read_text()) == load_preset("tiny").resolved().to_dict()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seeds"]["environments"] == [0, 1] and "git_revision" in meta
    assert len(_rows(run)) == 2
    events = _events(run)
    names = {e["event"] for e in events}
    assert {
        "RunStarted",
        "PPOUpdate",
        "EpisodeFinished",
        "RewardComputed",
        "PPORunFinished",
    } <= names
    assert {e["env"] for e in events if e["event"] == "EpochCompleted"} == {0, 1}
    rewards = [e for e in events if e["event"] == "RewardComputed"]
    assert all(set(dict(e["components"])) for e in rewards)  # every component named
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2


def test_eval_runs_a_saved_policy_like_heuristic(tmp_path, capsys) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--rounds", "1", "--out", str(run)]) == 0
    out = tmp_path / "eval"
    args = ["eval", "--policy", str(run), "--task", "synthetic", "--epochs", "3"]
    assert main([*args, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "checkpoints",
        "config.json",
        "events.jsonl",
        "meta.json",
        "metrics.csv",
        "summary.json",
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "eval" and summary["epochs_completed"] == 3
    actions = [e for e in _events(out) if e["event"] == "ActionTaken"]
    assert len(actions) == 3 and all(a["reason"] == "policy" for a in actions)
    assert "eval synthetic (completed)" in capsys.readouterr().out


def test_interrupted_ppo_resumes_exactly(tmp_path, monkeypatch) -> None:
    straight = tmp_path / "straight"
    assert main(["ppo", "--preset", "tiny", "--rounds", "3", "--out", str(straight)]) == 0

    run_round = PPOTrainer.run_round
    calls = {"n": 0}

    def interrupted_on_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return run_round(self)

    monkeypatch.setattr(PPOTrainer, "run_round", interrupted_on_third)
    resumed = tmp_path / "resumed"
    assert main(["ppo", "--preset", "tiny", "--rounds", "3", "--out", str(resumed)]) == 130
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == 2
    monkeypatch.setattr(PPOTrainer, "run_round", run_round)
    assert main(["ppo", "--resume", str(resumed)]) == 0

    assert _rows(resumed) == _rows(straight)
    a, b = _policy(straight), _policy(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((resumed / "rounds.csv").open()))
    summary = json.loads((resumed / "summary.json").read_text())
    both_attempts = sum(float(r["seconds_rollout"]) + float(r["seconds_update"]) for r in rows)
    assert summary["seconds"] == pytest.approx(both_attempts, abs=2e-3)
    assert main(["ppo", "--resume", str(resumed)]) == 2  # completed: nothing to resume


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config-json", "{path}"], "unknown key(s) ['ppo_epochs']"),
        (["--devices", "cuda:7"], "unknown or unavailable device 'cuda:7'; available: cpu"),
        (["--envs", "1", "--episode-length", "1"], "env.episode_length must be an integer >= 2"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ppo_epochs": 3}))
    out = tmp_path / "run"
    argv = ["ppo", "--preset", "tiny", "--out", str(out)]
    assert main(argv + [a.replace("{path}", str(bad)) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_resume_errors(tmp_path, capsys) -> None:
    assert main(["ppo", "--resume", str(tmp_path)]) == 2
    assert "is not an Esper PPO run directory" in capsys.readouterr().err
    assert main(["ppo", "--resume", str(tmp_path), "--envs", "3"]) == 2
    assert "drop --envs" in capsys.readouterr().err
    assert main(["ppo", "--resume", str(tmp_path), "--preset", "tiny"]) == 2
    assert "drop --preset" in capsys.readouterr().err
    assert main(["eval", "--task", "synthetic"]) == 2
    assert "eval needs --policy" in capsys.readouterr().err


def test_a_damaged_rounds_csv_is_refused_before_training(tmp_path, capsys) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--rounds", "2", "--out", str(run)]) == 0
    (run / "summary.json").unlink()
    lines = (run / "rounds.csv").read_text().splitlines()
    cells = lines[1].split(",")
    cells[ROUND_FIELDS.index("seconds_rollout")] = ""
    (run / "rounds.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    events = (run / "events.jsonl").read_text()
    capsys.readouterr()
    assert main(["ppo", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "rounds.csv: line 2 has no seconds_rollout" in err and "Traceback" not in err
    assert (run / "events.jsonl").read_text() == events  # nothing was started


def test_garbage_checkpoints_are_one_line_errors(tmp_path, capsys) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--rounds", "1", "--out", str(run)]) == 0
    summary = run / "summary.json"
    summary.write_text(summary.read_text().replace('"completed"', '"interrupted"'))
    (run / "checkpoints" / "ppo.pt").write_bytes(b"not a checkpoint at all")
    capsys.readouterr()
    assert main(["ppo", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is not a readable Esper PPO checkpoint" in err and "Traceback" not in err
    args = ["eval", "--task", "synthetic", "--out", str(tmp_path / "e")]
    assert main([*args, "--policy", str(run / "rounds.csv")]) == 2
    assert "is not a readable Esper PPO checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
