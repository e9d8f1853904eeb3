"""The benchmarks keep running: a one-round smoke run of each (timings are not asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import overhead


def test_overhead_benchmark_smoke(tmp_path, capsys) -> None:
    out = tmp_path / "overhead.json"
    args = ["--rounds", "1", "--repeats", "1", "--warmup", "0", "--json", str(out)]
    assert overhead.main(args) == 0
    result = json.loads(out.read_text())
    names = [row["name"] for row in result["tables"][0]["rows"]]
    assert names[0] == "bare host" and len(names) == 9
    assert result["workload"]["host_params"] == 6418
    assert "threads = 1" in capsys.readouterr().out


def test_engine_benchmark_smoke(capsys) -> None:
    import engine

    assert engine.main(["--quick", "--launch-task", "synthetic"]) == 0
    out = capsys.readouterr().out
    for line in ("raw training", "full heuristic step", "esper --help", "launch to first batch"):
        assert line in out


def test_ppo_benchmark_smoke(capsys) -> None:
    import torch

    import ppo

    threads = torch.get_num_threads()
    assert ppo.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for line in ("1. scaling", "2. policy share", "3. PPO update per round", "wide (512/512)"):
        assert line in out
    assert torch.get_num_threads() == threads
