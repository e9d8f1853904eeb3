"""Engine overhead: full heuristic steps against raw training, plus command start-up times.

Measures, in one run on the same model and data:

* raw: training samples/s of a bare loop (forward, cross-entropy, backward, AdamW step) on the
  same grown model (two conv_light seeds, TRAINING and BLENDING) and data;
* full step: training samples/s of ``Trainer.train_step`` + a heuristic decision + ``apply`` +
  telemetry to a JSONL file — train, validation with counterfactual measurement, decision and
  logging — interleaved round by round with the raw passes. The decision is logged but not
  carried out, so both sides keep training the same two seeds;
* ``esper --help`` wall time (target < 1 s);
* launch to first training batch of ``esper heuristic`` (target < 3 s): the wall time from
  process start to the start of its first epoch's training, read from the log as the first
  ``EpochCompleted`` event's time less its ``seconds`` (the epoch's own training and
  validation): start-up, data loading, and building the host and its optimizer (the first
  optimizer imports ``torch._dynamo``), which all come after the ``RunStarted`` event.

The throughput rounds run with ``--threads`` torch threads (default 1); the two commands set
their own by Esper's thread policy (one).

Usage::

    .venv/bin/python benchmarks/engine.py            # ~1-2 minutes on 2 cores
    .venv/bin/python benchmarks/engine.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from esper.data import BatchStream, make_synthetic
from esper.kasmina import CNNHost, CNNHostConfig, MorphogeneticModel
from esper.leyline import Action, Observation, Op
from esper.leyline.config import HostTraining
from esper.nissa import JsonlSink, TelemetryHub
from esper.tamiyo import HeuristicTamiyo, SignalTracker
from esper.tasks import TASKS
from esper.tolaria import Trainer

BATCH = 128
SHAPE = (3, 32, 32)  # CIFAR-shaped, like the reference figure
CLASSES = 10
FULL_STEP_TARGET = 0.85
HELP_TARGET_S = 1.0
LAUNCH_TARGET_S = 3.0


def _model(seed: int) -> MorphogeneticModel:
    """The benchmarked model: a conv_light seed TRAINING in early and one BLENDING in late, so
    the counterfactual pass has three configurations. Raw and full steps use the same one."""
    torch.manual_seed(seed)
    host = CNNHost(CNNHostConfig(input_size=SHAPE[1], num_classes=CLASSES, base_channels=8))
    model = MorphogeneticModel(host, ["early", "mid", "late"], gate_mode="permissive")
    for slot in ("early", "late"):
        model.germinate(slot, "conv_light")
        model.advance(slot)
    model.set_alpha_target("late", 1.0, tempo=20)
    model.advance("late")
    model.step_epoch()  # α = 0.05: the late seed is really blended
    return model


def throughput(n_train: int, n_val: int, rounds: int, log: Path) -> tuple[float, float, float]:
    """Raw training passes and full heuristic steps, interleaved round by round.

    Each round times one raw pass (forward, cross-entropy, backward, AdamW step over
    ``n_train`` samples of the same grown model) and one full step (``Trainer.train_step`` +
    tracker + heuristic decision + ``apply`` + JSONL telemetry over the same number of training
    samples). Interleaving cancels slow drift of the machine.

    Returns:
        Median raw samples/s, median full-step samples/s, and the median per-round ratio.
    """
    data = make_synthetic(n_train=n_train, n_val=n_val, input_shape=SHAPE, num_classes=CLASSES)
    raw_model = _model(0)
    # fused, like the trainer's optimizer (``SlotOptimizer``): the same AdamW on both sides
    raw_opt = torch.optim.AdamW(raw_model.parameters(), lr=3e-3, fused=True)
    raw_stream = BatchStream(data.x_train, data.y_train, BATCH, seed=0)

    def raw_pass() -> None:
        for _ in range(raw_stream.batches_per_pass):
            x, y = raw_stream.next_batch()
            raw_opt.zero_grad(set_to_none=True)
            F.cross_entropy(raw_model(x), y).backward()
            raw_opt.step()

    model = _model(0)
    hub = TelemetryHub("bench", [JsonlSink(log)])
    stream = BatchStream(data.x_train, data.y_train, BATCH, seed=0)
    config = HostTraining(
        "synthetic", epochs=model.epoch + rounds + 1, batch_size=BATCH, lr=3e-3, seed_lr=3e-3
    )
    trainer = Trainer(model, data, stream, config, hub.emit)
    tracker, controller = SignalTracker(), HeuristicTamiyo()

    def full_step() -> None:
        result = trainer.train_step()
        signals = tracker.update(
            train_loss=result.train_loss,
            train_accuracy=result.train_accuracy,
            val_loss=result.val_loss,
            val_accuracy=result.val_accuracy,
            reports=model.reports(),
        )
        obs = Observation(signals, model.reports(), ("conv_light",), trainer.max_epochs)
        decision = controller.decide(obs)
        # The decision is made and logged but not carried out: pruning or growing would change
        # the work per sample and the comparison with the raw side would stop being like for like.
        trainer.apply(Action(Op.WAIT, reason=f"benchmark: decided {decision.op.value}"))

    raw_pass()  # warm-up (first-call allocations), not timed
    full_step()
    raw_times, full_times = [], []
    for _ in range(rounds):
        for fn, times in ((raw_pass, raw_times), (full_step, full_times)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    hub.close()
    paired = statistics.median(r / f for r, f in zip(raw_times, full_times, strict=True))
    return n_train / statistics.median(raw_times), n_train / statistics.median(full_times), paired


def _run(command: Sequence[str]) -> None:
    """Run ``command``, its output captured; a failure ends the benchmark with its last line."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        raise SystemExit(f"{' '.join(command[2:])} failed (exit {done.returncode}): {lines[-1]}")


def _median_wall(command: Sequence[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        _run(command)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def launch_to_first_batch(task: str, repeats: int) -> float:
    """Process start to the start of the run's first epoch (its first batch): the first
    ``EpochCompleted`` event's wall time less the epoch's own seconds."""
    esper = [sys.executable, "-m", "esper.cli.main"]
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            started = time.time()
            _run([*esper, "heuristic", "--task", task, "--epochs", "1", "--out", str(out)])
            records = map(json.loads, (out / "events.jsonl").read_text().splitlines())
            first = next(r for r in records if r["event"] == "EpochCompleted")
            times.append(first["t"] - first["seconds"] - started)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Esper engine overhead and start-up times.")
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers meaningless)")
    parser.add_argument("--launch-task", default="fashion_mnist_impaired", help="task to launch")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the throughput rounds (1)"
    )
    args = parser.parse_args(argv)
    if args.launch_task not in TASKS:
        parser.error(
            f"--launch-task {args.launch_task!r} is not a task; choose from {', '.join(TASKS)}"
        )
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    n_train, n_val, rounds, repeats = (512, 128, 1, 1) if args.quick else (8192, 1024, 10, 5)

    print("esper engine benchmark")
    print(f"  date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"  machine   {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"  threads   {args.threads} torch thread(s) in the throughput rounds")
    print(f"  workload  CNNHost(base_channels=8) + 2 conv_light seeds, batch {BATCH}, input")
    print(f"            {SHAPE}, {n_train} train samples per step, {n_val} validation samples,")
    print(f"            {rounds} interleaved rounds of one raw pass and one full step")
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # restored: a caller's process keeps its own
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw, full, paired = throughput(n_train, n_val, rounds, Path(tmp) / "events.jsonl")
    finally:
        torch.set_num_threads(before)
    verdict = "ok" if paired >= FULL_STEP_TARGET else "MISS"
    print(f"\nraw training            {raw:10.0f} samples/s (median)")
    print(f"full heuristic step     {full:10.0f} samples/s (median)")
    print(
        f"full step / raw         {paired:10.3f}x   paired median (target >= {FULL_STEP_TARGET}x) "
        f"{verdict}"
    )
    help_s = _median_wall([sys.executable, "-m", "esper.cli.main", "--help"], repeats)
    print(
        f"esper --help            {help_s:10.3f} s         (target < {HELP_TARGET_S} s) "
        f"{'ok' if help_s < HELP_TARGET_S else 'MISS'}"
    )
    launch = launch_to_first_batch(args.launch_task, repeats)
    print(
        f"launch to first batch   {launch:10.3f} s         (target < {LAUNCH_TARGET_S} s, "
        f"task {args.launch_task}) {'ok' if launch < LAUNCH_TARGET_S else 'MISS'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
