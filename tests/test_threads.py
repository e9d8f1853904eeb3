"""The thread policy: one torch thread per environment worker by default, ``--threads``
overrides, never more threads than usable cores; runs record the count."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from esper.cli.main import main
from esper.leyline.config import HostTraining, UserError
from esper.study.checks import set_threads
from esper.tolaria import threads as policy
from esper.tolaria.threads import threads_per_worker, usable_cores


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Start with torch's thread count at 2 (not the policy's 1) and restore it afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_default_is_one_thread_per_worker() -> None:
    assert threads_per_worker(None, workers=1, cores=2) == 1
    assert threads_per_worker(None, workers=2, cores=2) == 1
    assert threads_per_worker(None, workers=16, cores=64) == 1


def test_requested_threads_override_the_default() -> None:
    assert threads_per_worker(2, workers=1, cores=2) == 2
    assert threads_per_worker(2, workers=2, cores=4) == 2
    assert threads_per_worker(1, workers=2, cores=2) == 1


@pytest.mark.parametrize(
    ("requested", "workers", "cores", "message"),
    [
        (
            2,
            2,
            2,
            "--threads 2 with --workers 2 needs 4 cores; this process may use 2: use --threads 1 "
            "or fewer workers",
        ),
        (4, 1, 2, "--threads 4 needs 4 cores; this process may use 2: use --threads 2"),
        (
            3,
            2,
            5,
            "--threads 3 with --workers 2 needs 6 cores; this process may use 5: use --threads 2 "
            "or fewer workers",
        ),
        (
            None,
            3,
            2,
            "--workers 3 needs 3 cores at one thread each; this process may use 2: use --workers 2 "
            "or fewer",
        ),
    ],
)
def test_oversubscription_is_one_clear_line(
    requested: int | None, workers: int, cores: int, message: str
) -> None:
    with pytest.raises(ValueError) as err:
        threads_per_worker(requested, workers, cores)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("requested", "workers", "cores", "name"),
    [(0, 1, 2, "threads"), (1, 0, 2, "workers"), (1, True, 2, "workers"), (1, 1, 0, "cores")],
)
def test_arguments_must_be_positive_integers(
    requested: int, workers: int, cores: int, name: str
) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be a positive integer, got "):
        threads_per_worker(requested, workers, cores)


def test_cores_are_this_process_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(policy.os, "sched_getaffinity", lambda pid: {0})
    assert usable_cores() == 1
    with pytest.raises(ValueError, match=r"^--threads 2 needs 2 cores; this process may use 1"):
        threads_per_worker(2, workers=1)


def test_set_threads_applies_the_policy(restore_threads: None) -> None:
    training = set_threads(HostTraining("synthetic"))
    assert training.threads == 1 == torch.get_num_threads()
    assert set_threads(HostTraining("synthetic", threads=1)).threads == 1


def test_set_threads_refuses_more_threads_than_cores(
    restore_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy, "usable_cores", lambda: 2)
    with pytest.raises(UserError, match=r"^--threads 3 needs 3 cores; this process may use 2"):
        set_threads(HostTraining("synthetic", threads=3))
    assert torch.get_num_threads() == 2  # nothing was set


def _recorded_threads(run: Path) -> tuple[int, int]:
    config = json.loads((run / "config.json").read_text())
    meta = json.loads((run / "meta.json").read_text())
    return config["training"]["threads"], meta["threads"]


def test_a_run_without_threads_records_one(tmp_path: Path, restore_threads: None) -> None:
    run = tmp_path / "run"
    assert main(["static", "--task", "synthetic", "--epochs", "1", "--out", str(run)]) == 0
    assert _recorded_threads(run) == (1, 1)
    assert torch.get_num_threads() == 1


@pytest.mark.skipif(usable_cores() < 2, reason="needs 2 usable cores")
def test_threads_flag_is_recorded(tmp_path: Path, restore_threads: None) -> None:
    run = tmp_path / "run"
    args = ["static", "--task", "synthetic", "--epochs", "1", "--threads", "2", "--out", str(run)]
    assert main(args) == 0
    assert _recorded_threads(run) == (2, 2)


def test_the_error_names_whose_cores_it_counted() -> None:
    with pytest.raises(ValueError, match=r"^--threads 2 with --workers 2 needs 4 cores; the Ray "):
        threads_per_worker(2, 2, 3, "the Ray cluster has")
