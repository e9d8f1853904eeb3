"""Console progress: labelled epoch and round lines, progress within an epoch (engine and sink),
and progress events that never reach the event log."""

from __future__ import annotations

import io
import itertools
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import KeptRecords
from esper.cli.main import main
from esper.data import BatchStream, make_synthetic
from esper.kasmina import CNNHost, CNNHostConfig, MorphogeneticModel
from esper.leyline.config import HostTraining
from esper.leyline.events import (
    BatchProgress,
    EpisodeFinished,
    EpochCompleted,
    PPOUpdate,
    RunStarted,
    SlotSnapshot,
    TelemetryLevel,
    event_record,
)
from esper.nissa import TelemetryHub, console
from esper.nissa.console import ConsoleSink
from esper.tolaria import Trainer, engine
from esper.tolaria.engine import train_together


def _record(event: Any, **context: Any) -> dict[str, Any]:
    return {"t": 0.0, "run_id": "r", **context, **event_record(event)}


def _epoch(epoch: int, accuracy: float = 61.2, loss: float = 1.04123) -> EpochCompleted:
    slots = (
        SlotSnapshot("r0c0", "DORMANT", None, 0.0, None, None, 0),
        SlotSnapshot("r1c1", "BLENDING", "conv_light", 0.5, 1.25, None, 40),
        SlotSnapshot("r2c0", "FOSSILIZED", "attention", 1.0, None, None, 120),
    )
    return EpochCompleted(epoch, 0.9, 60.0, loss, accuracy, 590, slots, 0.1)


def _progress(epoch: int, batches: int, seconds: float, loss: float | None = 0.53) -> BatchProgress:
    return BatchProgress(epoch, batches, 100, loss, seconds)


# ------------------------------------------------------------------- epoch and round lines


def test_epoch_line_labels_every_number_and_names_stages_in_full() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream, "demo", total=2)
    sink.write(_record(_epoch(1)))
    sink.write(_record(_epoch(2, accuracy=math.nan, loss=math.nan)))
    sink.write(_record(_epoch(3), env=0, episode=1))  # PPO epochs are per env: not a run step
    assert stream.getvalue().splitlines() == [
        "[demo] epoch 1/2  val acc 61.20%  val loss 1.0412  params 590  "
        "seeds r1c1:conv_light BLENDING, r2c0:attention FOSSILIZED",
        "[demo] epoch 2/2  val acc —  val loss —  params 590  "
        "seeds r1c1:conv_light BLENDING, r2c0:attention FOSSILIZED",
    ]


def test_epoch_line_without_seeds_shows_a_dash() -> None:
    stream = io.StringIO()
    empty = EpochCompleted(1, 0.9, 60.0, 1.0, 50.0, 6418, (), 0.1)
    ConsoleSink(stream, "demo", total=1).write(_record(empty))
    assert (  # params as runs list, compare, the report and the demo's table write them
        stream.getvalue()
        == "[demo] epoch 1/1  val acc 50.00%  val loss 1.0000  params 6,418  seeds —\n"
    )


def _update(
    round_: int, entropy: float | None = 1.2345, accuracy: float | None = None, kl: float = 0.01234
) -> PPOUpdate:
    return PPOUpdate(
        round=round_, env_steps=8 * round_, passes=4, early_stopped=False, skipped_steps=0,
        overflow_steps=0, policy_loss=0.1, value_loss=0.2, entropy=entropy, approx_kl=kl,
        clip_fraction=0.1, ratio_max=1.2, ratio_min=0.8, explained_variance=0.5, value_std=1.0,
        return_std=1.0, grad_norm=0.5, entropy_coef=0.01, mean_return=0.4123,
        mean_final_accuracy=accuracy, seconds_rollout=3.21, seconds_update=0.414,
    )  # fmt: skip


def _episode_end(accuracy: float | None) -> EpisodeFinished:
    return EpisodeFinished(1, 5, 0.4, False, accuracy, 590, 500)


def test_round_line_labels_every_number_and_shows_the_rounds_own_accuracy() -> None:
    """The line shows the update's mean final accuracy (the learner's, over the round's
    trajectories); the sink averaged the EpisodeFinished events it had seen instead, a second
    definition of the same figure."""
    stream = io.StringIO()
    sink = ConsoleSink(stream, "ppo", total=3)
    for accuracy in (10.0, 20.0):  # not the round's figure: the sink no longer listens
        sink.write(_record(_episode_end(accuracy), env=0, episode=1))
    sink.write(_record(_update(1, accuracy=61.25)))
    sink.write(_record(_update(2, entropy=None)))  # no episode ended: the accuracy is missing
    sink.write(_record(_update(3, kl=1.234e-6)))  # read "kl 0.0000" (the default learner's)
    assert stream.getvalue().splitlines() == [
        "[ppo] round 1/3  mean return 0.412  final acc 61.25%  entropy 1.234  kl 0.0123  "
        "rollout 3.2 s  update 0.41 s",
        "[ppo] round 2/3  mean return 0.412  final acc —  entropy —  kl 0.0123  "
        "rollout 3.2 s  update 0.41 s",
        "[ppo] round 3/3  mean return 0.412  final acc —  entropy 1.234  kl 1.23e-06  "
        "rollout 3.2 s  update 0.41 s",
    ]


# ------------------------------------------------------------------- progress in the sink


def _epoch_of_progress(epoch: int, seconds: float, step: float = 0.5) -> list[dict[str, Any]]:
    """Progress records every ``step`` seconds of an epoch that trains ``seconds``."""
    count = int(seconds / step)
    return [_record(_progress(epoch, k, k * step)) for k in range(1, count + 1)]


def test_a_slow_epoch_shows_progress_lines_a_fast_one_does_not() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream, "demo", total=3)
    for record in _epoch_of_progress(1, 4.5):  # faster than PROGRESS_AFTER_S
        sink.write(record)
    sink.write(_record(_epoch(1)))
    for record in _epoch_of_progress(2, 30.0):
        sink.write(record)
    sink.write(_record(_epoch(2)))
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[demo] epoch 1/3  val acc")  # the fast epoch: one line
    # The slow one: from PROGRESS_AFTER_S, then at most every PROGRESS_LINE_EVERY_S.
    assert lines[1:4] == [
        "[demo] epoch 2/3  batch 10/100  train loss 0.5300  5 s",
        "[demo] epoch 2/3  batch 30/100  train loss 0.5300  15 s",
        "[demo] epoch 2/3  batch 50/100  train loss 0.5300  25 s",
    ]
    assert lines[4].startswith("[demo] epoch 2/3  val acc") and len(lines) == 5


def test_progress_lines_restart_with_each_epoch_and_show_a_missing_loss_as_a_dash() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream, "demo", total=3)
    sink.write(_record(_progress(1, 50, 6.0)))
    sink.write(_record(_progress(2, 50, 6.0, loss=None)))  # a new epoch: not throttled by epoch 1
    assert stream.getvalue().splitlines() == [
        "[demo] epoch 1/3  batch 50/100  train loss 0.5300  6 s",
        "[demo] epoch 2/3  batch 50/100  train loss —  6 s",
    ]


def test_the_bar_shows_every_progress_event_of_the_epoch() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream, "demo", total=3, bar=True)
    sink.write(_record(_epoch(1)))
    sink.write(_record(_progress(2, 40, 0.5)))  # shown at once: the bar has no threshold
    assert "epoch 2  batch 40/100  train loss 0.5300  0 s" in stream.getvalue()
    sink.write(_record(_epoch(2)))
    sink.close()
    assert "val acc 61.20%" in stream.getvalue().rsplit("\r", 1)[-1]  # the epoch replaced it


# ------------------------------------------------------------------- progress from the engine


def _trainer(progress: Callable[[BatchProgress], None] | None, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    data = make_synthetic(n_train=640, n_val=64, seed=seed)  # 20 batches of 32
    host = CNNHost(CNNHostConfig(num_classes=data.num_classes, base_channels=4, input_size=8))
    model = MorphogeneticModel(host, ["mid"])
    stream = BatchStream(data.x_train, data.y_train, 32, seed)
    config = HostTraining("synthetic", epochs=3, batch_size=32, lr=3e-3, seed_lr=3e-3)
    return Trainer(model, data, stream, config, lambda event: None, progress=progress)


class _FakeClock:
    """Wall time that moves ``tick`` seconds each time it is read."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_engine_reports_batches_in_order_at_a_bounded_rate() -> None:
    reports: list[BatchProgress] = []
    trainer = _trainer(reports.append)
    clock = _FakeClock(0.2)  # each read 0.2 s after the last: one read per batch
    trainer.train_step(train_together([trainer], clock=clock)[0])
    batches = [r.batches for r in reports]
    assert batches == [3, 6, 9, 12, 15, 18]  # every third 0.2 s batch crosses 0.5 s
    assert all(r.total_batches == 20 and r.epoch == 1 for r in reports)
    gaps = [b.seconds - a.seconds for a, b in itertools.pairwise(reports)]
    assert all(gap >= engine.PROGRESS_EVERY_S for gap in gaps)
    assert all(r.train_loss is not None and math.isfinite(r.train_loss) for r in reports)
    train_together([trainer], clock=_FakeClock(0.2))
    assert reports[-1].epoch == 2 and len(reports) == 12  # the epoch in training is numbered


def test_a_fast_epoch_reports_nothing_and_reporting_changes_no_result() -> None:
    reports: list[BatchProgress] = []
    quiet = train_together([_trainer(reports.append)], clock=_FakeClock(0.001))
    assert reports == []
    silent = train_together([_trainer(None)], clock=_FakeClock(1.0))
    loud = train_together([_trainer(reports.append)], clock=_FakeClock(1.0))
    assert len(reports) == 20
    assert quiet[0].loss == silent[0].loss == loud[0].loss


def test_trainers_trained_together_report_only_their_own_progress() -> None:
    reports: list[BatchProgress] = []
    together = train_together(
        [_trainer(reports.append, seed=0), _trainer(None, seed=1)], clock=_FakeClock(1.0)
    )
    assert [r.batches for r in reports] == list(range(1, 21))
    alone = train_together([_trainer(None, seed=0)])
    assert together[0].loss == pytest.approx(alone[0].loss, rel=1e-5)


# ------------------------------------------------------------------- the hub and the log


def test_progress_goes_only_to_the_sinks_that_watch_it_at_every_level() -> None:
    log, watcher = KeptRecords(), KeptRecords(frozenset({BatchProgress.__name__}))
    hub = TelemetryHub("r", [log], TelemetryLevel.DEBUG, unfiltered=[watcher])
    hub.progress(_progress(1, 10, 1.0))
    hub.emit(RunStarted("r", "heuristic", "synthetic", 0, 3, ("mid",), None))
    assert [r["event"] for r in log.records] == ["RunStarted"]
    assert [r["event"] for r in watcher.records] == ["BatchProgress"]
    assert watcher.records[0]["batches"] == 10 and watcher.records[0]["run_id"] == "r"


@pytest.mark.parametrize("level", ["normal", "debug"])
def test_a_real_run_shows_progress_but_never_logs_it(
    level: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)  # report after every batch
    monkeypatch.setattr(console, "PROGRESS_AFTER_S", 0.0)  # and print every report
    monkeypatch.setattr(console, "PROGRESS_LINE_EVERY_S", 0.0)
    run = tmp_path / "run"
    args = ["static", "--task", "synthetic", "--epochs", "2", "--batches-per-epoch", "3"]
    args += ["--val-samples", "64", "--telemetry.level", level, "--out", str(run)]
    assert main(args) == 0
    lines = capsys.readouterr().err.splitlines()
    shown = [line.split("  train loss")[0] for line in lines if "  batch " in line]
    assert shown == [
        f"[synthetic static] epoch {epoch}/2  batch {batch}/3"
        for epoch in (1, 2)
        for batch in (1, 2, 3)
    ]
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert "EpochCompleted" in events and "BatchProgress" not in events


# ------------------------------------------------------------------- a terminal that hangs up

_HANG_UP = """
import os, sys
from esper.cli.main import main
from esper.nissa.console import detach_from_hung_up_terminal

master, terminal = os.openpty()
os.dup2(terminal, 1)
os.dup2(terminal, 2)
assert not detach_from_hung_up_terminal()  # a terminal still there stays
os.close(master)  # the hang-up: every later write to the terminal fails with EIO
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as done:  # where the code is kept: stdout is gone
    done.write(str(code))
"""


def test_output_to_a_terminal_that_hung_up_ends_the_command_quietly(
    recorded_runs: dict[str, Path], tmp_path: Path
) -> None:
    """A command still printing after its SSH session ended (a run's resume hint, when its
    SIGHUP came first; here a listing) failed with EIO: a traceback to nowhere and exit 1 (or
    120 at exit). Its output now goes to /dev/null and it ends as interrupted (130)."""
    done = tmp_path / "code"
    command = [str(done), "runs", "list", str(recorded_runs["static"].parent)]
    run = subprocess.run(
        [sys.executable, "-c", _HANG_UP, *command], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and run.stdout == run.stderr == "", run.stderr
    assert done.read_text() == "130"
    assert not console.detach_from_hung_up_terminal()  # pytest's own pipes and files stay
