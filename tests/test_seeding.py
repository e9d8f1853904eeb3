"""The seeds ``meta.json`` records are the ones the run used: the data order's seed each
episode's ``BatchStream`` was given, against the recorded seeds and the derivation written out
here (episode ``k`` of environment ``s``: ``(s · 1000003 + k) mod 2**63``, its low 32 bits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import esper.simic.env as simic_env
from esper.cli.main import main
from esper.data.stream import BatchStream

TINY = ["--batches-per-epoch", "2", "--val-samples", "128"]


@pytest.fixture
def stream_seeds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The seed of every ``BatchStream`` an episode makes, in order."""
    seeds: list[int] = []

    class Recorded(BatchStream):
        def __init__(self, x, y, batch_size, seed, **kwargs):  # type: ignore[no-untyped-def]
            seeds.append(seed)
            super().__init__(x, y, batch_size, seed, **kwargs)

    monkeypatch.setattr(simic_env, "BatchStream", Recorded)
    return seeds


def _seeds(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())["seeds"]


def test_a_growth_runs_recorded_seeds_are_its_episodes(tmp_path, stream_seeds) -> None:
    """meta.json said ``data_order: 4`` for ``--seed 4``; the data order's seed was 4000013."""
    run = tmp_path / "run"
    assert main(["heuristic", "--task", "synthetic", "--epochs", "2", *TINY, "--seed", "4",
                 "--out", str(run)]) == 0  # fmt: skip
    episode = 4 * 1_000_003 + 1
    low = episode % 2**32
    assert _seeds(run) == {"run": 4, "episode": episode, "data_order": low}  # rotation: no draws
    assert stream_seeds == [episode % 2**32]
    drawn = tmp_path / "random"  # a controller that draws records its seed too
    assert main(["random", "--task", "synthetic", "--epochs", "2", *TINY, "--seed", "4",
                 "--out", str(drawn)]) == 0  # fmt: skip
    assert _seeds(drawn) == {"run": 4, "episode": episode, "data_order": low, "controller": 4}


def test_a_ppo_runs_recorded_seeds_derive_its_episodes(tmp_path, stream_seeds) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "2", "--seed", "5",
                 "--out", str(run)]) == 0  # fmt: skip
    seeds = _seeds(run)
    assert seeds["run"] == 5 and seeds["environments"] == [5, 6]
    assert (seeds["policy"], seeds["shuffle"]) == (5 + 7919, 5 + 7920)
    rounds = [(e * 1_000_003 + k) % 2**32 for k in (1, 2) for e in seeds["environments"]]
    assert sorted(stream_seeds) == sorted(rounds)
