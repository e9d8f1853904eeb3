"""Fast environments (issue #11): what a host training step costs, section by section.

Sections (``--section NAME``; all of them without it):

* **raw**: the raw training step (zero grads, forward, cross-entropy, backward, AdamW step) of
  one ``CNNHost(CNNHostConfig(in_channels=1, input_size=28, base_channels=8))`` on a batch of
  128 Fashion-MNIST-shaped inputs (1x28x28), in three contestants:

  - *old layout*: the host's 4-D weights converted back to the default NCHW layout and NCHW
    batches (what Esper ran before channels_last), the baseline;
  - *new layout*: the host as built (conv weights in ``torch.channels_last``) fed
    channels_last batches, plus a second copy as an A/A control whose ratio is the noise floor;
  - *plain fast way*: the same network written as a plain ``nn.Sequential`` of ``Conv2d``,
    ``BatchNorm2d``, ``ReLU``, ``MaxPool2d`` and a linear head, in channels_last: the layout's
    physics with nothing of Esper on top.

  Targets: the new layout >= 1.45x the old one's speed, and within 1.10x of the plain network's
  time. A second table times where a channels_last batch comes from, on a CIFAR-shaped
  (3x32x32) dataset: indexing a dataset converted once (what ``esper.data.load_dataset`` does)
  against indexing an NCHW dataset and converting every batch.

* **envs**: host epochs/s (training only: ``train_together``, the epoch loop every path runs)
  on the real Fashion-MNIST, for the ``fashion`` preset's 390-parameter impaired host and for
  ``CNNHost(8)`` (the ``fashion_mnist`` task's host at width 8), at 1, 4, 8 and 16
  environments, each with its own fresh host, data stream and optimizer: *sequential* (one by
  one, chunk 1: today's path, the baseline), *batched* in the chunk ``VectorEnv`` chooses for
  the host (``esper.simic.vector.chunk_size``) and batched in a forced chunk of 4 (so the
  table shows what grouping does even for a host the default trains one by one), plus one
  environment in the *old layout* (NCHW weights, per-tensor AdamW, sequential): the compute
  path before issue #11; and *bfloat16* (``HostTraining.precision``: the training forward
  under a bfloat16 autocast) in the chunk ``VectorEnv`` chooses for it.
  One process, one thread: the rates are per core. Target: 8 batched environments >= 2.9x
  the old layout's single-environment rate (2x the reference's, estimated at 1.42x it).
* **ppo**: PPO env-steps/s of whole rounds (``PPOTrainer.run_round``: rollout + update; a step
  is one environment epoch with its validation and the policy's decision) with the ``fashion``
  preset's host and short episodes (4 epochs x 20 batches, 500 validation samples), at 1, 4 and
  8 environments, built by ``build_trainer``: sequential (its ``VectorEnv`` rewrapped with
  ``chunk=1``), batched (the default chunks) and batched on ``--workers`` Ray actors (default
  2, one torch thread each; Ray started with that many CPUs per such trainer, since actors
  keep their CPUs and the trainers take turns), and *before #11*: the code of the last commit
  before issue #11 (``--before-rev``, default ``4df359f``), exported from git to a temporary
  folder and run in a child process of its own (``before_issue_11.py``) at one thread
  (``--before-threads``): today's path itself, not a reconstruction. Target: 8 environments
  >= 5x today's (the before-#11 contestant's rate; the sequential one's without it).
* **precision**: one environment's training epoch in float32 and under a bfloat16 autocast
  (``HostTraining.precision``), for each task host whose data is installed here: which hosts
  the setting speeds up and which it slows down.
* **device**: the ppo section's workload batched on ``--device`` (default ``cuda``; skipped
  without it) at 8, 32 and 128 environments, float32 and bfloat16, and on ``cuda`` also on
  ``--gpu-workers`` Ray actors sharing the GPU (``esper ppo --workers N --workers-per-gpu N``),
  against the 2-core CPU's recorded best (``CPU_BEST_ENV_STEPS``). Target on a GPU: >= 50x.
* **launches**: one profiled batched PPO round of the ppo section's workload at 4 and 8
  environments, per environment-batch: operations that reach a kernel (counted on the CPU),
  the profiler's aten calls, GPU kernels, time and the GPU's busy share, on the CPU and on
  ``--device`` where CUDA is available, and what each extra environment-batch adds: the work a
  GPU pays per environment (kernel launches).
* **fashion**: whole rounds of the ``fashion`` preset itself (4 environments, 15 epochs x 100
  batches, 2,000 validation samples), the same four contestants, projected to its 40 rounds.
  Target: under 30 minutes.

Every section fixes torch to one intra-op thread (restored afterwards): on a shared 2-core
machine a second thread mostly waits for a descheduled partner. Contestants are timed in
interleaved rounds, each round visiting all of them in a fresh random order (fixed-seed) and
running ``--repeats`` steps of each, after ``--warmup`` untimed steps; every section has its own
defaults (``--help``). Reported: the median step time, the ratio of medians to the baseline,
and the paired ratio (the median of per-round ratios, which cancels slow drift of the machine).

Usage (run times on a shared 2-core machine)::

    .venv/bin/python benchmarks/envs.py                    # every section, ~10 min
    .venv/bin/python benchmarks/envs.py --section raw      # raw training step, ~15-25 s
    .venv/bin/python benchmarks/envs.py --section envs     # host epochs/s, ~3 min
    .venv/bin/python benchmarks/envs.py --section ppo      # PPO env-steps/s, ~2-3 min
    .venv/bin/python benchmarks/envs.py --section fashion  # the fashion preset, ~3-4 min
    .venv/bin/python benchmarks/envs.py --section precision  # float32 vs bfloat16, ~2 min
    .venv/bin/python benchmarks/envs.py --section device     # on a GPU (cuda): PPO env-steps/s
    .venv/bin/python benchmarks/envs.py --section launches   # operations per env-batch, ~1 min
    .venv/bin/python benchmarks/envs.py --quick --rounds 1 --warmup 0 --workers 0  # smoke run
    .venv/bin/python benchmarks/envs.py --section ppo --before-rev none  # without the old code
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import io
import json
import logging
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.adamw import adamw
from torch.utils._python_dispatch import TorchDispatchMode

from esper.data import BatchStream, load_dataset
from esper.kasmina import CNNHost, CNNHostConfig, MorphogeneticModel, SegmentedHost
from esper.kasmina.hosts import use_torch_layers
from esper.leyline.config import HostTraining, Precision, override
from esper.leyline.data import Dataset
from esper.nissa import TelemetryHub
from esper.simic.build import build_trainer
from esper.simic.config import TrainingConfig, load_preset
from esper.simic.env import GrowthEnv
from esper.simic.training import PPOTrainer
from esper.simic.vector import VectorEnv, chunk_size, parse_device
from esper.simic.workers import OBJECT_STORE_BYTES, RayVectorEnv, start_ray
from esper.tamiyo import SignalTracker
from esper.tasks import get_task, resolve_training
from esper.tolaria.engine import Trainer, train_together
from esper.tolaria.episode import Episode
from esper.tolaria.optim import SlotOptimizer

BATCH = 128
INPUT_SHAPE = (1, 28, 28)  # Fashion-MNIST
NUM_CLASSES = 10
BASE_CHANNELS = 8
LR = 3e-3  # the tasks' default AdamW learning rate
SEED = 0

LAYOUT_TARGET = 1.45
"""The new layout's step must be at least 1.45x as fast as the old one's (issue #11; the
reference implementation of this design reaches 1.42x)."""

FAST_WAY_TARGET = 1.10
"""The new layout's step may take at most 1.10x the plain channels_last network's."""

SOURCE_SHAPE = (3, 32, 32)
"""CIFAR-shaped samples for the batch-source table: with one channel, as in Fashion-MNIST, the
NCHW and NHWC layouts are the same memory and there is nothing to convert."""

SOURCE_SAMPLES = 10_000


class Budget(NamedTuple):
    """How long a section times: interleaved rounds, timed steps per contestant per round,
    untimed warm-up steps per contestant first (``--rounds``/``--repeats``/``--warmup``
    override every section's)."""

    rounds: int
    repeats: int
    warmup: int


RAW_BUDGET = Budget(20, 5, 5)


@dataclass(frozen=True)
class Contestant:
    """One timed configuration: a step function and its label."""

    name: str
    step: Callable[[], object]


@dataclass(frozen=True)
class Row:
    """A contestant's timing against the baseline (the first contestant); times in ms."""

    name: str
    median_ms: float
    ratio: float
    paired: float


# --------------------------------------------------------------------------------------------
# timing


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread, restoring the count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_interleaved(
    contestants: Sequence[Contestant], rounds: int, repeats: int, warmup: int
) -> list[list[float]]:
    """Seconds per step of every contestant in every round: ``times[contestant][round]``.

    Each round runs ``repeats`` steps of every contestant, in an order shuffled by a fixed-seed
    generator; the garbage collector is paused while timing.
    """
    for contestant in contestants:
        for _ in range(warmup):
            contestant.step()
    rng = random.Random(SEED)
    times: list[list[float]] = [[] for _ in contestants]
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for i in rng.sample(range(len(contestants)), len(contestants)):
                started = time.perf_counter()
                for _ in range(repeats):
                    contestants[i].step()
                times[i].append((time.perf_counter() - started) / repeats)
    finally:
        gc.enable()
    return times


def summarize(contestants: Sequence[Contestant], times: list[list[float]]) -> list[Row]:
    """Median step times and their ratios to the first contestant (time / baseline time)."""
    base = statistics.median(times[0])
    rows = []
    for contestant, per_round in zip(contestants, times, strict=True):
        paired = statistics.median(t / b for t, b in zip(per_round, times[0], strict=True))
        median = statistics.median(per_round)
        rows.append(Row(contestant.name, median * 1e3, median / base, paired))
    return rows


def format_rows(rows: Sequence[Row], unit: str = "ms", per: str = "step") -> str:
    """The rows as a table; ``speed`` is the baseline's time over the row's, paired (higher:
    faster); ``unit`` is ``ms`` or ``us``, ``per`` what one timed call is."""
    each = f"{unit} per {per}"
    header = f"{'contestant':<34} {each:>12} {'time ratio':>11} {'paired':>8} {'speed':>7}"
    lines = [header, "-" * len(header)]
    scale = 1e3 if unit == "us" else 1.0
    for row in rows:
        lines.append(
            f"{row.name:<34} {row.median_ms * scale:>12.3f} {row.ratio:>10.3f}x "
            f"{row.paired:>7.3f}x {1 / row.paired:>6.2f}x"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# raw section: the training step in the old and new layout and written the fast way


def plain_cnn(config: CNNHostConfig) -> nn.Sequential:
    """``config``'s network as plain PyTorch: conv -> BatchNorm -> 2x2 max-pool -> ReLU blocks
    (pooling first, as ``CNNHost`` does: the same function, a quarter of the ReLU's work), a
    global average pool and a linear head, in channels_last."""
    layers: list[nn.Module] = []
    channels, size, k = config.in_channels, config.input_size, config.kernel_size
    for i in range(config.depth):
        out = config.base_channels * 2**i
        layers += [nn.Conv2d(channels, out, k, padding=k // 2, bias=False), nn.BatchNorm2d(out)]
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        layers.append(nn.ReLU())
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, config.num_classes)]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def before_issue_11_blocks(host: SegmentedHost) -> SegmentedHost:
    """``host`` with every CNN block as it was before issue #11: conv -> BatchNorm -> ReLU ->
    max-pool, computed by torch's own ``Conv2d`` and ``MaxPool2d``. (``CNNHost`` now pools
    first, the same function and gradients bit for bit, runs an impaired host's first block on
    one channel in closed form, and pools without autograd by strided views.) Changes no
    parameter or state-dict key."""
    use_torch_layers(host)
    for segment in cast(Iterable[nn.Sequential], host.segments):
        for i, block in enumerate(cast(Iterable[nn.Sequential], segment)):
            pools = [m for m in block if isinstance(m, nn.MaxPool2d)]
            rest = [m for m in block if not isinstance(m, (nn.MaxPool2d, nn.ReLU))]
            segment[i] = nn.Sequential(*rest, nn.ReLU(), *pools)
    return host


def training_step(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], object]:
    """One AdamW training step of ``model`` on the fixed batch ``(x, y)``."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


def raw_contestants() -> tuple[list[Contestant], int]:
    """The raw step's contestants, baseline (old layout) first, and the host's parameter count.

    Raises:
        RuntimeError: the plain network does not have the host's parameter count (then it is
            not the same network and the comparison is void).
    """
    config = CNNHostConfig(
        in_channels=INPUT_SHAPE[0],
        input_size=INPUT_SHAPE[1],
        num_classes=NUM_CLASSES,
        base_channels=BASE_CHANNELS,
    )
    torch.manual_seed(SEED)
    host = CNNHost(config)
    old = before_issue_11_blocks(CNNHost(config))
    old.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    old.load_state_dict(host.state_dict())
    plain = plain_cnn(config)
    n_params = sum(p.numel() for p in host.parameters())
    if sum(p.numel() for p in plain.parameters()) != n_params:
        raise RuntimeError("the plain network's parameter count differs from the host's")
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(BATCH, *INPUT_SHAPE, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    twin = CNNHost(config)
    twin.load_state_dict(host.state_dict())
    contestants = [
        Contestant("old layout (NCHW), baseline", training_step(old, x, y)),
        Contestant("new layout (channels_last)", training_step(host, x_nhwc, y)),
        Contestant("new layout, A/A control", training_step(twin, x_nhwc, y)),
        Contestant("plain fast way (channels_last)", training_step(plain, x_nhwc, y)),
    ]
    return contestants, n_params


def source_contestants() -> tuple[list[Contestant], float]:
    """Where a channels_last batch of a CIFAR-shaped dataset comes from, baseline first, and
    the seconds the one-off conversion of the whole dataset took."""
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(SOURCE_SAMPLES, *SOURCE_SHAPE, generator=gen)
    started = time.perf_counter()
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    convert_s = time.perf_counter() - started

    def index(data: Tensor, convert: bool) -> Callable[[], object]:
        def batch() -> Tensor:
            xb = data[torch.randint(0, SOURCE_SAMPLES, (BATCH,), generator=gen)]
            return xb.contiguous(memory_format=torch.channels_last) if convert else xb

        return batch

    contestants = [
        Contestant("NCHW dataset, NCHW batch (old)", index(x, convert=False)),
        Contestant("dataset converted once", index(x_nhwc, convert=False)),
        Contestant("NCHW dataset, batch converted", index(x, convert=True)),
    ]
    return contestants, convert_s


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def raw_section(run: Budget, work: Workload) -> None:
    """Print the raw training step's table and the batch-source table."""
    contestants, n_params = raw_contestants()
    print(
        f"\n1. raw training step: CNNHost(base_channels={BASE_CHANNELS}) ({n_params} params), "
        f"batch {BATCH}, input {'x'.join(map(str, INPUT_SHAPE))}, AdamW, 1 thread"
    )
    times = time_interleaved(contestants, *run)
    rows = summarize(contestants, times)
    print(format_rows(rows))
    new = rows[1]
    speedup = 1 / new.paired
    fast_way = statistics.median(n / p for n, p in zip(times[1], times[3], strict=True))
    print(
        f"new layout speed / old layout   {speedup:6.3f}x paired (target >= {LAYOUT_TARGET}x) "
        f"{_verdict(speedup >= LAYOUT_TARGET)}"
    )
    print(
        f"new layout time / plain network {fast_way:6.3f}x paired (target <= {FAST_WAY_TARGET}x) "
        f"{_verdict(fast_way <= FAST_WAY_TARGET)}"
    )

    sources, convert_s = source_contestants()
    print(
        f"\n   batch source: {BATCH} random samples of a {SOURCE_SAMPLES}-sample "
        f"{'x'.join(map(str, SOURCE_SHAPE))} dataset"
    )
    rows = summarize(sources, time_interleaved(sources, *run))
    print(format_rows(rows, unit="us", per="batch"))
    print(f"   converting the whole dataset once took {convert_s * 1e3:.1f} ms")


# --------------------------------------------------------------------------------------------
# envs section: host epochs/s of 1-16 environments, one by one and in grouped chunks


@functools.cache
def fashion_mnist() -> Dataset:
    """The real Fashion-MNIST (installed; never downloaded here), loaded once per process."""
    return load_dataset("fashion_mnist", None, download=False, progress=False)


@dataclass(frozen=True)
class Host:
    """A host the envs section trains: a task's host, at a width.

    Attributes:
        label: how the tables name it.
        task: the ``esper.tasks`` task whose host and training defaults it uses.
        width: the host's ``base_channels`` (None: the task's).
    """

    label: str
    task: str
    width: int | None

    def build(self, data: Dataset) -> SegmentedHost:
        """A fresh host of this kind for ``data`` (on the global torch random state)."""
        return get_task(self.task).build_host(data, self.width)


HOSTS = (
    Host("impaired host", "fashion_mnist_impaired", None),
    Host(f"CNNHost({BASE_CHANNELS})", "fashion_mnist", BASE_CHANNELS),
)
"""The ``fashion`` preset's 390-parameter host and the raw section's 6.3k-parameter one (the
``fashion_mnist`` task's host at width 8)."""


@dataclass(frozen=True)
class Workload:
    """How big the envs, ppo and fashion sections' work is.

    Attributes:
        env_counts: environments per contestant in the envs section.
        epoch_batches: training batches (of the task's 128 samples) per host epoch: short
            epochs, since what an epoch costs per batch does not depend on its length.
        ppo_env_counts: ``n_envs`` of the ppo section's trainers.
        ppo_epochs: host epochs per PPO episode (``epochs - 1`` decisions, env steps).
        val_samples: validation samples per PPO environment step.
        fashion_env: overrides of the ``fashion`` preset's ``env`` group in the fashion
            section (none: the preset as it is).
        workers: Ray actors of the ppo and fashion sections' workers contestants (0: none).
        before_source: the exported ``src`` of the revision whose code the ppo and fashion
            sections' before-#11 contestant runs (None: no such contestant).
        before_threads: that contestant's torch threads (that code's own default was torch's,
            two here; the other contestants run one per process).
        device: the device section's device.
        device_env_counts: ``n_envs`` of the device section's trainers.
        gpu_workers: Ray actors sharing the GPU in the device section's shared contestant
            (``--devices cuda --workers N --workers-per-gpu N``; 0: none).
    """

    env_counts: tuple[int, ...]
    epoch_batches: int
    ppo_env_counts: tuple[int, ...]
    ppo_epochs: int
    val_samples: int
    fashion_env: dict[str, int]
    workers: int = 0
    before_source: Path | None = None
    before_threads: int = 1
    device: str = "cuda"
    device_env_counts: tuple[int, ...] = (8, 32, 128)
    gpu_workers: int = 0


FULL = Workload((1, 4, 8, 16), 20, (1, 4, 8), 4, 500, {})
QUICK = Workload(
    (1, 2),
    2,
    (2,),
    2,
    128,
    {"epochs": 2, "batches_per_epoch": 2, "val_samples": 128},
    device_env_counts=(2,),
)
"""``--quick``: a smoke run in seconds (numbers meaningless)."""

FORCED_CHUNK = 4
"""A grouped chunk size timed for every host, even for one the measured default trains one by
one, so the table shows what grouping does there too."""

ENVS_BUDGET = Budget(3, 1, 1)
"""A round trains one epoch of every environment of every contestant (~70 environment epochs,
about 25-45 s on a shared 2-core machine)."""

TARGET_ENVS = 8

TODAY_TARGET = 2.9
"""Host epochs/s per core with 8 batched environments >= 2.9x today's single-environment rate
(issue #11)."""

REFERENCE_OVER_TODAY = 1.42
"""The reference implementation's host training speed over Esper's before issue #11 (the
issue's figure for the raw step, not re-measured here): the target above is 2x the reference."""


def _silent(_event: object) -> None:
    """Telemetry to nowhere."""


def host_trainers(
    host: Host, data: Dataset, training: HostTraining, n: int, old_layout: bool = False
) -> list[Trainer]:
    """``n`` fresh trainers of ``host``; environment ``i``'s host initialization and batch
    stream are seeded ``SEED + i``, its slots stay dormant, its telemetry goes nowhere.

    Args:
        old_layout: the compute path before issue #11: the hosts' blocks back in the ReLU ->
            pool order and their 4-D weights in NCHW before their optimizers hold any state,
            and a per-tensor (not fused) AdamW step.
    """
    assert training.batch_size is not None
    trainers = []
    for i in range(n):
        torch.manual_seed(SEED + i)
        built = host.build(data)
        if old_layout:
            built = before_issue_11_blocks(built)
            built = built.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        model = MorphogeneticModel(built, list(training.slots))
        stream = BatchStream(data.x_train, data.y_train, training.batch_size, SEED + i)
        trainer = Trainer(model, data, stream, training, _silent)
        if old_layout:
            _before_issue_11(trainer)
        trainers.append(trainer)
    return trainers


class _PerTensorAdamW(SlotOptimizer):
    """The pre-#11 optimizer step: torch's per-tensor AdamW (``torch.optim.AdamW``'s default
    before issue #11 fused it) over the same groups and state. ``step_optimizers`` asks each
    optimizer for the tensors of its fused call; this one steps them itself and asks for none."""

    def fused_inputs(self) -> list[tuple[tuple[Any, ...], tuple[list[Tensor], ...]]]:
        with torch.no_grad():
            for (lr, decay, beta1, beta2, eps), tensors in super().fused_inputs():
                adamw(
                    *tensors[:4], [], tensors[4], foreach=False, fused=False, amsgrad=False,
                    beta1=beta1, beta2=beta2, lr=lr, weight_decay=decay, eps=eps, maximize=False,
                )  # fmt: skip
        return []


def _before_issue_11(trainer: Trainer) -> None:
    """Put ``trainer``'s optimizer on the pre-#11 per-tensor AdamW step (its weights are
    already NCHW; it holds no state yet)."""
    now = trainer.optimizer
    trainer.optimizer = _PerTensorAdamW(now.model, now.host_lr, now.seed_lr, now.weight_decay)


def default_chunk(host: Host, data: Dataset, training: HostTraining) -> int:
    """The chunk size ``VectorEnv`` chooses for ``host`` on a CPU: ``chunk_size``'s answer
    (which reads only an environment's episode) for one episode of the host."""
    assert training.batch_size is not None
    batch = training.batch_size

    def stream(seed: int) -> BatchStream:
        return BatchStream(data.x_train, data.y_train, batch, seed)

    cpu = torch.device("cpu")
    episode = Episode(training, data, host.build, stream, SignalTracker, SEED, cpu, _silent)
    return chunk_size([cast(GrowthEnv, SimpleNamespace(episode=episode))], cpu)


def train_epochs(trainers: Sequence[Trainer], chunk: int) -> Callable[[], object]:
    """One training epoch of every trainer, ``chunk`` of them at a time as one grouped
    computation (``train_together``; a chunk of one is the sequential path, the one
    ``Trainer.train_step`` takes on its own)."""

    def step() -> None:
        for start in range(0, len(trainers), chunk):
            train_together(trainers[start : start + chunk])

    return step


@dataclass(frozen=True)
class EnvsCase:
    """One contestant of the envs section: ``n`` environments trained ``chunk`` at a time, in
    ``precision`` (``HostTraining.precision``)."""

    n: int
    chunk: int
    old_layout: bool = False
    precision: Precision = "float32"

    def label(self, default: int) -> str:
        """How the table names it; the chunk ``VectorEnv`` would choose is marked."""
        if self.old_layout:
            return "old layout (NCHW), sequential"
        name = "sequential (chunk 1)" if self.chunk == 1 else f"batched, chunk {self.chunk}"
        if self.precision != "float32":
            return f"{self.precision}, {name}, default"  # only its default chunk is timed
        return f"{name}, default" if self.chunk == default else name


def _median_spread(ratios: Sequence[float]) -> str:
    return f"{statistics.median(ratios):>6.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def short_epochs(host: Host, work: Workload) -> HostTraining:
    """``host``'s task's training, resolved, with ``work.epoch_batches`` batches per epoch
    and one batch of validation samples (the envs and precision sections time epochs)."""
    return resolve_training(
        HostTraining(host.task, batches_per_epoch=work.epoch_batches, val_samples=BATCH)
    )


def envs_cases(work: Workload, default: int, bf16_chunk: int, today: EnvsCase) -> list[EnvsCase]:
    """``today`` and, for every environment count, the float32 chunks (one by one, the default,
    ``FORCED_CHUNK``) and bfloat16 in its default chunk."""
    cases = [today]
    for n in work.env_counts:
        cases += [EnvsCase(n, c) for c in dict.fromkeys((1, default, FORCED_CHUNK))]
        cases.append(EnvsCase(n, bf16_chunk, precision="bfloat16"))
    return cases


def envs_contestant(
    host: Host, data: Dataset, training: HostTraining, case: EnvsCase, default: int
) -> Contestant:
    """``case``'s fresh trainers of ``host``, one epoch of each per call."""
    trainers = host_trainers(
        host, data, replace(training, precision=case.precision), case.n, case.old_layout
    )
    return Contestant(case.label(default), train_epochs(trainers, case.chunk))


def envs_host(host: Host, data: Dataset, run: Budget, work: Workload) -> None:
    """Time every environment count and chunk size of ``host`` in one interleaved run, with
    today's path (old layout, one environment) as a reference; print the table and targets."""
    training = short_epochs(host, work)
    default, bf16_chunk = (
        default_chunk(host, data, replace(training, precision=p)) for p in ("float32", "bfloat16")
    )
    today = EnvsCase(1, 1, old_layout=True)
    cases = envs_cases(work, default, bf16_chunk, today)
    contestants = [envs_contestant(host, data, training, case, default) for case in cases]
    n_params = sum(p.numel() for p in host.build(data).parameters())
    print(
        f"\n   {host.label}: {n_params} params (task {host.task}), epochs of {work.epoch_batches} "
        f"batches x {training.batch_size}; VectorEnv's default chunk here: {default} "
        f"({bf16_chunk} in bfloat16)"
    )
    times = time_interleaved(contestants, *run)
    by_case = dict(zip(cases, times, strict=True))
    # per-round host epochs/s of each case (one process, one thread: per core)
    rates = {case: [case.n / t for t in per_round] for case, per_round in by_case.items()}
    header = (
        f"{'envs':>4} {'contestant':<38} {'s/round':>8} {'epochs/s':>9} "
        f"{'speed vs sequential':>20} {'vs old layout':>18}"
    )
    print(header)
    print("-" * len(header))
    for case, contestant in zip(cases, contestants, strict=True):
        sequential = rates[EnvsCase(case.n, 1)]
        own = rates[case]
        vs_seq = [r / s for r, s in zip(own, sequential, strict=True)]
        vs_today = [r / t for r, t in zip(own, rates[today], strict=True)]
        print(
            f"{case.n:>4} {contestant.name:<38} {statistics.median(by_case[case]):>8.2f} "
            f"{statistics.median(own):>9.2f} {_median_spread(vs_seq):>20} "
            f"{_median_spread(vs_today):>18}"
        )
    targets = [EnvsCase(TARGET_ENVS, c) for c in dict.fromkeys((default, FORCED_CHUNK))]
    for case in [*targets, EnvsCase(TARGET_ENVS, bf16_chunk, precision="bfloat16")]:
        if case not in rates:
            continue
        speed = statistics.median(r / t for r, t in zip(rates[case], rates[today], strict=True))
        print(
            f"{TARGET_ENVS} envs, {case.label(default)}: {speed:.2f}x today's 1-env rate per "
            f"core (target >= {TODAY_TARGET}x) {_verdict(speed >= TODAY_TARGET)}; "
            f"{speed / REFERENCE_OVER_TODAY:.2f}x the reference's (est. {REFERENCE_OVER_TODAY}x "
            f"today's; target >= {TODAY_TARGET / REFERENCE_OVER_TODAY:.1f}x)"
        )


def envs_section(run: Budget, work: Workload) -> None:
    """Host epochs/s for each host: sequential against grouped chunks, 1-16 environments."""
    rounds, repeats, warmup = run
    print(
        f"\n2. host epochs/s, real Fashion-MNIST, 1 thread in 1 process (so per core); every "
        f"contestant trains its own fresh hosts (dormant slots); {rounds} interleaved rounds x "
        f"{repeats} epoch(s) of every environment after {warmup} warm-up"
    )
    data = fashion_mnist()
    for host in HOSTS:
        envs_host(host, data, run, work)
    print(
        "speed vs sequential: per-round epochs/s over the sequential contestant's with as many "
        "environments\n(median, min-max); vs old layout: over one environment in the old "
        "layout trained sequentially\n(today's path before issue #11)."
    )


# --------------------------------------------------------------------------------------------
# ppo and fashion sections: PPO env-steps/s of whole rounds, sequential vs batched vs workers

PPO_PRESET = "fashion"
"""The preset both sections start from: ``fashion_mnist_impaired``, the real question."""

PPO_BUDGET = Budget(3, 1, 1)
"""A round is one PPO round (``run_round``) of every trainer: 8 environments' 4-epoch episodes
take ~11 s one by one on a shared 2-core machine, all trainers together ~35 s."""

FASHION_BUDGET = Budget(1, 1, 0)
"""A ``fashion`` round takes 1-2 minutes: one round of each trainer, no warm-up."""

PPO_TARGET = 5.0
"""PPO env-steps/s with 8 environments >= 5x today's on a 2-core machine (issue #11)."""

FASHION_ROUNDS = 40
FASHION_TARGET_MIN = 30.0
"""The ``fashion`` preset's 40 rounds in under 30 minutes here (issue #11; about 2 h before)."""

SEQUENTIAL, BATCHED, BEFORE = "sequential", "batched", "before #11"

BEFORE_REV = "4df359f"
"""The last commit before issue #11's work (2026-12-02 08:51 UTC): the code whose PPO speed the
issue calls today's. ``--before-rev`` names another; ``none`` leaves that contestant out."""

DRIVER = Path(__file__).resolve().with_name("before_issue_11.py")
REPO = Path(__file__).resolve().parents[1]

DEFAULT_WORKERS = 2
"""One Ray actor per core of this 2-core machine."""

DEFAULT_GPU_WORKERS = 8
"""Ray actors sharing the GPU in the device section: a GPU machine's cores drive it together
(one actor's environments kept a lent H200 busy 13 % of a round)."""


@dataclass(frozen=True)
class PPOCase:
    """One PPO contestant: ``n_envs`` environments, stepped one by one (``sequential``), in
    ``VectorEnv``'s default grouped chunks (``batched``), or batched on ``workers`` Ray
    actors."""

    n_envs: int
    kind: str
    workers: int | None = None
    device: str = "cpu"
    precision: Precision = "float32"

    @property
    def label(self) -> str:
        """How the tables name it."""
        if self.kind == BEFORE:
            return "before #11 (sequential)"
        if self.kind == SEQUENTIAL:
            return "sequential (chunk 1)"
        if self.device != "cpu" or self.precision != "float32":
            on = f"{self.workers} workers on one {self.device}" if self.workers else self.device
            return f"batched, {on}, {self.precision}"
        return f"batched + {self.workers} workers" if self.workers else "batched"


class CountedRounds:
    """A contestant's step: one ``run_round`` of ``trainer``, whose env-steps it records."""

    def __init__(self, trainer: PPOTrainer) -> None:
        self.trainer = trainer
        self.steps: list[int] = []  # env steps of every call, warm-up included

    def __call__(self) -> None:
        before = self.trainer.learner.env_steps
        self.trainer.run_round()
        self.steps.append(self.trainer.learner.env_steps - before)


class OldRevisionRounds:
    """A contestant's step: one ``run_round`` of the pre-#11 code in its own process
    (``before_issue_11.py`` with ``PYTHONPATH`` on an export of that revision's ``src``) at
    ``threads`` torch threads, which answers with the round's env-steps; the rounds are timed
    here, as every contestant's."""

    def __init__(self, source: Path, n_envs: int, env: dict[str, Any], threads: int) -> None:
        overrides = {"env": env, "ppo": {"n_envs": n_envs}}
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), PPO_PRESET, json.dumps(overrides), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(source)},
            cwd=source,
        )
        self.steps: list[int] = []
        imported = Path(json.loads(self._answer())["esper"]).resolve()
        if not imported.is_relative_to(source.resolve()):
            self.close()
            raise RuntimeError(f"the before-#11 process imported esper from {imported}")

    def _answer(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the before-#11 process ended (exit {self.process.wait()})")
        return line

    def __call__(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        self.steps.append(int(json.loads(self._answer())["steps"]))

    def close(self) -> None:
        """End the process (it stops at the end of its input)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


@contextmanager
def old_source(rev: str | None) -> Iterator[Path | None]:
    """Revision ``rev``'s ``src`` folder exported (``git archive``) to a temporary folder that
    is removed afterwards; None without a revision. Nothing in the repository changes.

    Raises:
        SystemExit: git cannot export ``rev`` (``parse_args`` checked that it is a commit), in
            one line naming it and ``--before-rev none``.
    """
    if rev is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="esper-before-11-") as tmp:
        done = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, "src"],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip().splitlines()
            raise SystemExit(
                f"cannot export revision {rev!r} for the before-#11 contestant "
                f"({reason[-1] if reason else 'git failed'}); pass --before-rev none to leave "
                "it out"
            )
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
            archive.extractall(tmp, filter="data")
        yield Path(tmp) / "src"


def ppo_trainer(case: PPOCase, env: dict[str, Any]) -> PPOTrainer:
    """A trainer of the ``fashion`` preset with ``env`` overrides and ``case``'s environments,
    built by ``build_trainer`` (the run's path), telemetry to no sink. A sequential case
    steps the same environments one by one: ``build_trainer`` takes no chunk size, so its
    ``VectorEnv`` is rewrapped with ``chunk=1`` before the first round. A workers case needs
    Ray running (``start_ray`` joins the session and sets each actor's threads)."""
    runtime: dict[str, Any] = {"devices": [case.device]}
    if case.workers:
        runtime["workers"] = case.workers
        if case.device != "cpu":  # the actors share one GPU
            runtime["workers_per_gpu"] = case.workers
    overrides = {
        "env": {**env, "precision": case.precision},
        "ppo": {"n_envs": case.n_envs},
        "runtime": runtime,
    }
    config: TrainingConfig = override(load_preset(PPO_PRESET), overrides)
    if case.workers:
        config, _ = start_ray(config)  # the benchmark's session: nothing to stop per trainer
    trainer, _ = build_trainer(config, TelemetryHub("", []), fashion_mnist())
    if case.kind == SEQUENTIAL:
        vec = cast(VectorEnv, trainer.vec)
        trainer.vec = VectorEnv(vec.envs, vec.devices, vec.emit, chunk=1)
    return trainer


def _chunk_note(case: PPOCase, counter: CountedRounds | OldRevisionRounds) -> str:
    """The grouped chunk size each environment trains in (per actor with workers)."""
    if case.kind == SEQUENTIAL or not isinstance(counter, CountedRounds):  # or before #11
        return "1"
    trainer = counter.trainer
    if case.workers:
        per_actor = -(-case.n_envs // case.workers)  # the largest actor's share
        return f"<= {per_actor} per actor"
    vec = cast(VectorEnv, trainer.vec)
    envs = cast(list[GrowthEnv], vec.envs)
    return str(min(chunk_size(envs, vec.devices[0]), len(envs)))


@contextmanager
def ray_for(cases: Sequence[PPOCase]) -> Iterator[None]:
    """A local Ray instance for the workers cases (none without them), stopped afterwards.

    Each workers trainer's actors hold one CPU each for their lifetime, so Ray is given
    ``workers`` CPUs per such trainer; the contestants take turns, so only one trainer's
    actors work at any time, on this machine's cores.
    """
    cpus = sum(case.workers or 0 for case in cases)
    if not cpus:
        yield
        return
    import ray  # only a run with a workers contestant imports Ray

    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(
        num_cpus=cpus,
        object_store_memory=OBJECT_STORE_BYTES,
        include_dashboard=False,
        logging_level=logging.ERROR,
    )
    signal.signal(signal.SIGTERM, sigterm)  # ray.init replaces it
    try:
        yield
    finally:
        ray.shutdown()


def _counter(
    case: PPOCase, env: dict[str, Any], source: Path | None, before_threads: int
) -> CountedRounds | OldRevisionRounds:
    if case.kind == BEFORE:
        assert source is not None
        return OldRevisionRounds(source, case.n_envs, env, before_threads)
    return CountedRounds(ppo_trainer(case, env))


def _close(counter: CountedRounds | OldRevisionRounds) -> None:
    if isinstance(counter, OldRevisionRounds):
        counter.close()
    elif isinstance(counter.trainer.vec, RayVectorEnv):
        counter.trainer.vec.close()


def ppo_rounds(
    cases: Sequence[PPOCase],
    env: dict[str, Any],
    run: Budget,
    source: Path | None = None,
    before_threads: int = 1,
) -> dict[PPOCase, tuple[list[float], list[float]]]:
    """Time ``run.rounds`` interleaved PPO rounds of every case; print a table with each
    case's env-steps/s and its paired speed over the sequential case, and over the before-#11
    case (run from ``source`` at ``before_threads``), with as many environments (where there
    is one).

    Returns:
        Each case's seconds per round and env-steps/s per round.
    """
    rounds, repeats, warmup = run
    with ray_for(cases):
        counters: list[CountedRounds | OldRevisionRounds] = []
        try:
            counters += [_counter(case, env, source, before_threads) for case in cases]
            contestants = [Contestant(c.label, f) for c, f in zip(cases, counters, strict=True)]
            times = time_interleaved(contestants, rounds, repeats, warmup)
        finally:
            for counter in counters:
                _close(counter)
    measured: dict[PPOCase, tuple[list[float], list[float]]] = {}
    for case, counter, per_round in zip(cases, counters, times, strict=True):
        timed = counter.steps[warmup:]  # a round's steps vary when a governor ends an episode
        steps = [sum(timed[r * repeats : (r + 1) * repeats]) / repeats for r in range(rounds)]
        measured[case] = (per_round, [s / t for s, t in zip(steps, per_round, strict=True)])
    header = (
        f"{'envs':>4} {'contestant':<23} {'chunk':>16} {'steps/round':>11} {'s/round':>8} "
        f"{'env-steps/s':>11} {'speed vs sequential':>20} {'vs before #11':>20}"
    )
    print(header)
    print("-" * len(header))
    for case, counter in zip(cases, counters, strict=True):
        per_round, rates = measured[case]
        speeds = []
        for kind in (SEQUENTIAL, BEFORE):
            base = measured.get(PPOCase(case.n_envs, kind))
            speeds.append("" if base is None else _median_spread(_ratios(rates, base[1])))
        print(
            f"{case.n_envs:>4} {case.label:<23} {_chunk_note(case, counter):>16} "
            f"{statistics.median(counter.steps[warmup:]):>11} {statistics.median(per_round):>8.2f} "
            f"{statistics.median(rates):>11.2f} {speeds[0]:>20} {speeds[1]:>20}"
        )
    return measured


def _ratios(rates: Sequence[float], base: Sequence[float]) -> list[float]:
    return [r / b for r, b in zip(rates, base, strict=True)]


def _cases(n_envs: int, workers: int, before: bool) -> list[PPOCase]:
    """The pre-#11 code (given ``before``), sequential, batched and (given workers, and enough
    environments) batched on workers."""
    cases = [PPOCase(n_envs, BEFORE)] if before else []
    cases += [PPOCase(n_envs, SEQUENTIAL), PPOCase(n_envs, BATCHED)]
    if workers and n_envs >= workers:
        cases.append(PPOCase(n_envs, BATCHED, workers))
    return cases


def ppo_env(work: Workload) -> dict[str, int]:
    """The ppo and device sections' overrides of the preset's ``env``: short episodes."""
    return {
        "epochs": work.ppo_epochs,
        "batches_per_epoch": work.epoch_batches,
        "val_samples": work.val_samples,
    }


def ppo_section(run: Budget, work: Workload) -> None:
    """PPO env-steps/s per ``n_envs``, sequential vs batched vs workers, in one interleaved run."""
    env = ppo_env(work)
    task = load_preset(PPO_PRESET).env.task
    print(
        f"\n3. PPO env-steps/s: preset {PPO_PRESET!r} ({task}) with episodes of "
        f"{work.ppo_epochs} epochs x {work.epoch_batches} batches, {work.val_samples} "
        f"validation samples;\n   whole rounds (rollout + PPO update); driver 1 thread, each Ray "
        f"worker 1 thread, the before-#11 process {work.before_threads};\n   {run.rounds} "
        f"interleaved rounds x {run.repeats} after {run.warmup} warm-up"
    )
    before = work.before_source is not None
    cases = [case for n in work.ppo_env_counts for case in _cases(n, work.workers, before)]
    measured = ppo_rounds(cases, env, run, work.before_source, work.before_threads)
    # Today's is the code before #11 where it ran; else this sequential path (faster than it).
    kind = BEFORE if before else SEQUENTIAL
    base = measured.get(PPOCase(TARGET_ENVS, kind))
    for case in cases:
        if case.n_envs != TARGET_ENVS or base is None or case.kind in (BEFORE, kind):
            continue
        speed = statistics.median(_ratios(measured[case][1], base[1]))
        print(
            f"{TARGET_ENVS} envs, {case.label} / {kind}: {speed:.2f}x (target >= "
            f"{PPO_TARGET}x today's) {_verdict(speed >= PPO_TARGET)}"
        )


def fashion_section(run: Budget, work: Workload) -> None:
    """Whole rounds of the ``fashion`` preset itself, projected to its 40 rounds."""
    preset = load_preset(PPO_PRESET)
    n_envs = preset.ppo.n_envs
    env = preset.env if not work.fashion_env else override(preset.env, work.fashion_env)
    print(
        f"\n4. the {PPO_PRESET!r} preset: {n_envs} envs x {env.epochs}-epoch episodes of "
        f"{env.batches_per_epoch} batches, {env.val_samples} validation samples ({env.task}); "
        f"\n   {run.rounds} interleaved round(s) per contestant after {run.warmup} warm-up, "
        f"projected to its {FASHION_ROUNDS} rounds; threads as in section 3"
    )
    cases = _cases(n_envs, work.workers, work.before_source is not None)
    measured = ppo_rounds(cases, work.fashion_env, run, work.before_source, work.before_threads)
    # Every episode at full length (a governor may end one early, and the contestants'
    # float32 trajectories part ways): the preset's most steps over each measured rate.
    assert env.epochs is not None
    steps = FASHION_ROUNDS * n_envs * (env.epochs - 1)
    for case, (_, rates) in measured.items():
        minutes = steps / statistics.median(rates) / 60
        print(
            f"{case.label}: {FASHION_ROUNDS} rounds ({steps} env steps) ~ {minutes:.1f} min "
            f"(target < {FASHION_TARGET_MIN:.0f} min) {_verdict(minutes < FASHION_TARGET_MIN)}"
        )


# --------------------------------------------------------------------------------------------
# precision section: one environment's epoch in float32 and in bfloat16, task by task

PRECISION_HOSTS = (
    Host("impaired host", "fashion_mnist_impaired", None),
    Host(f"CNNHost({BASE_CHANNELS})", "fashion_mnist", BASE_CHANNELS),
    Host("CNNHost(16), the task's", "fashion_mnist", None),
    Host("digits host", "digits", None),
    Host("text_lm_impaired host", "text_lm_impaired", None),
    Host("text_lm host", "text_lm", None),
)
"""The hosts whose data is installed here (CIFAR-10 is downloaded on first use; not timed)."""

PRECISION_BUDGET = Budget(5, 1, 1)
"""A round trains one short epoch of each host in both precisions (~10 s)."""


def precision_section(run: Budget, work: Workload) -> None:
    """One environment's training epoch (``train_together`` alone) in float32 and under
    bfloat16 autocast (``HostTraining.precision``), per host, paired round by round."""
    print(
        f"\n5. one environment's training epoch ({work.epoch_batches} batches of the task's "
        f"size), float32 against bfloat16 autocast, each host's own contestants interleaved"
    )
    for host in PRECISION_HOSTS:
        data = load_dataset(get_task(host.task).dataset, None, download=False, progress=False)
        training = short_epochs(host, work)
        contestants = [
            Contestant(
                precision,
                train_epochs(
                    host_trainers(host, data, replace(training, precision=precision), 1), 1
                ),
            )
            for precision in ("float32", "bfloat16")
        ]
        rows = summarize(contestants, time_interleaved(contestants, *run))
        params = sum(p.numel() for p in host.build(data).parameters())
        print(f"\n   {host.label} ({host.task}, {params} params)")
        print(format_rows(rows, per="epoch"))


# --------------------------------------------------------------------------------------------
# device section: PPO env-steps/s on a GPU against this 2-core CPU's recorded best

DEVICE_BUDGET = Budget(3, 1, 1)

CPU_BEST_ENV_STEPS = 17.18
"""PPO env-steps/s of the fastest ppo-section contestant on the 2-core CPU machine these
benchmarks were developed on: 8 environments batched on 2 Ray workers, run R (2026-12-05,
``6bff242``, docs/benchmarks.md; runs Q and O: 17.06, 16.35). A GPU machine cannot time that CPU,
so the device section compares against this recorded figure."""

GPU_TARGET = 50.0
"""On a GPU, PPO env-steps/s >= 50x this 2-core CPU's (issue #11)."""


def device_section(run: Budget, work: Workload) -> None:
    """PPO env-steps/s of the ppo section's workload on ``work.device``, batched (on CUDA each
    device's environments are one grouped chunk), in float32 and bfloat16, at each of
    ``work.device_env_counts`` environments, and (on ``cuda``) in float32 on
    ``work.gpu_workers`` Ray actors sharing the GPU; skipped without the device."""
    if torch.device(work.device).type == "cuda" and not torch.cuda.is_available():
        print(f"\n6. device: skipped, {work.device!r} is not available (--device cpu runs it here)")
        return
    env = ppo_env(work)
    print(
        f"\n6. PPO env-steps/s on {work.device}: the ppo section's workload, batched, float32 "
        f"and bfloat16 (and float32 on {work.gpu_workers} Ray actors sharing it, on cuda), "
        f"against this 2-core CPU's recorded best ({CPU_BEST_ENV_STEPS})"
    )
    cases = [
        PPOCase(n, BATCHED, device=work.device, precision=precision)
        for n in work.device_env_counts
        for precision in ("float32", "bfloat16")
    ]
    if work.gpu_workers and work.device == "cuda":  # actors share a GPU only as "cuda"
        cases += [
            PPOCase(n, BATCHED, work.gpu_workers, work.device)
            for n in work.device_env_counts
            if n >= work.gpu_workers
        ]
    measured = ppo_rounds(cases, env, run)
    for case in cases:
        speed = statistics.median(measured[case][1]) / CPU_BEST_ENV_STEPS
        print(
            f"{case.n_envs} envs, {case.label}: {speed:.1f}x the 2-core CPU's best (target >= "
            f"{GPU_TARGET:.0f}x) {_verdict(speed >= GPU_TARGET)}"
        )


# --------------------------------------------------------------------------------------------
# launches section: what each environment adds to a batched round, in operations and kernels

LAUNCHES_BUDGET = Budget(1, 1, 1)
"""One profiled PPO round per environment count after one warm-up round (a profiled round
records every operation: ~0.5 s of profiler per 100 environment-batches on this CPU)."""

LAUNCH_ENV_COUNTS = (4, 8)
"""Two environment counts: the difference is what 4 more environments cost."""


class RoundProfile(NamedTuple):
    """A batched PPO round's work per environment-batch (one batch of one environment)."""

    env_batches: int
    operations: float  # operations that reach a kernel (``Operations``; NaN on a GPU)
    aten_calls: float  # aten operators the profiler records (views and nested calls included)
    kernels: float  # GPU kernels launched (0 on the CPU)
    seconds: float  # unprofiled wall time per environment-batch
    busy: float  # share of the profiled round the GPU spent running kernels (0 on the CPU)


class Operations(TorchDispatchMode):
    """Counts the operations that reach a kernel, below autograd: views, which launch none, are
    not counted, and a multi-tensor operation (``torch._foreach_*``) counts once, as on CUDA,
    where it launches one kernel per chunk of tensors. The profiler's aten count is no proxy for
    those: on the CPU a multi-tensor operation loops over its tensors, and each iteration is a
    recorded call. Counted on the CPU only: on CUDA the profiler's kernel count is the
    measurement itself."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def round_profile(n_envs: int, device: str, env: dict[str, Any], run: Budget) -> RoundProfile:
    """``run.rounds`` x ``run.repeats`` profiled PPO rounds of ``n_envs`` batched environments on
    ``device`` after ``run.warmup`` rounds, with the unprofiled time of as many rounds."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    counter = CountedRounds(ppo_trainer(PPOCase(n_envs, BATCHED, device=device), env))
    rounds = run.rounds * run.repeats

    def seconds(n: int) -> float:
        """Wall time of ``n`` rounds, the GPU's queue drained."""
        started = time.perf_counter()
        for _ in range(n):
            counter()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    seconds(run.warmup)
    plain = seconds(rounds)
    operations = math.nan
    if not cuda:
        with Operations() as counted:
            seconds(rounds)
        operations = counted.count
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        profiled = seconds(rounds)
    batches = rounds * n_envs * env["epochs"] * env["batches_per_epoch"]  # reset trains one
    averages = prof.key_averages()
    aten = sum(e.count for e in averages if e.key.startswith("aten::"))
    kernels = sum(e.device_type == DeviceType.CUDA for e in prof.events())
    busy = sum(e.self_device_time_total for e in averages) / 1e6 / profiled
    return RoundProfile(
        batches, operations / batches, aten / batches, kernels / batches, plain / batches, busy
    )


def launches_section(run: Budget, work: Workload) -> None:
    """Per environment-batch of a batched PPO round: aten calls, GPU kernels, time and the
    GPU's busy share, at ``LAUNCH_ENV_COUNTS`` environments, on the CPU and on ``--device``
    where it is a CUDA device that is available. What grows with the environments is what a
    GPU, which runs each of these small kernels in microseconds, pays per environment."""
    env = ppo_env(work)
    print(
        f"\n7. launches: batched PPO rounds of the ppo section's workload, per environment-batch "
        f"(episodes of {env['epochs']} epochs x {env['batches_per_epoch']} batches)"
    )
    devices = ["cpu"]
    if torch.device(work.device).type == "cuda" and torch.cuda.is_available():
        devices.append(work.device)
    header = (
        f"{'device':<8} {'envs':>4} {'operations':>10} {'aten calls':>10} {'kernels':>8} "
        f"{'ms':>6} {'GPU busy':>8}"
    )
    print(header)
    print("-" * len(header))
    for device in devices:
        profiles = [round_profile(n, device, env, run) for n in LAUNCH_ENV_COUNTS]
        for n, p in zip(LAUNCH_ENV_COUNTS, profiles, strict=True):
            print(
                f"{device:<8} {n:>4} {p.operations:>10.0f} {p.aten_calls:>10.0f} {p.kernels:>8.0f} "
                f"{1e3 * p.seconds:>6.2f} {100 * p.busy:>7.1f}%"
            )
        (small, a), (_, b) = zip(LAUNCH_ENV_COUNTS, profiles, strict=True)
        added = b.env_batches - a.env_batches
        ops = (b.operations * b.env_batches - a.operations * a.env_batches) / added
        aten = (b.aten_calls * b.env_batches - a.aten_calls * a.env_batches) / added
        print(
            f"{device}: each environment-batch beyond {small} environments adds {ops:.0f} "
            f"operations, {aten:.0f} aten calls"
        )


# --------------------------------------------------------------------------------------------
# main


class Section(NamedTuple):
    """A section: what it runs, and its budget unless the command line sets one."""

    run: Callable[[Budget, Workload], None]
    budget: Budget


SECTIONS = {
    "raw": Section(raw_section, RAW_BUDGET),
    "envs": Section(envs_section, ENVS_BUDGET),
    "ppo": Section(ppo_section, PPO_BUDGET),
    "fashion": Section(fashion_section, FASHION_BUDGET),
    "precision": Section(precision_section, PRECISION_BUDGET),
    "device": Section(device_section, DEVICE_BUDGET),
    "launches": Section(launches_section, LAUNCHES_BUDGET),
}
"""Every section by name, in the order a full run prints them."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--section",
        choices=list(SECTIONS),
        action="append",
        help="run only this section (repeatable; default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny workloads for a smoke run (the numbers mean nothing)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"Ray actors of the workers contestants (default {DEFAULT_WORKERS}; 0: none, Ray "
        "is not imported)",
    )
    parser.add_argument(
        "--gpu-workers",
        type=int,
        default=DEFAULT_GPU_WORKERS,
        help=f"Ray actors sharing the GPU in the device section (default {DEFAULT_GPU_WORKERS}, "
        "at most the CPUs less one; 0: none; needs --device cuda)",
    )
    parser.add_argument(
        "--device",
        default="cuda",
        help="the device section's device (default cuda; the section is skipped without it; "
        "cpu runs its code on this CPU)",
    )
    parser.add_argument(
        "--before-rev",
        default=BEFORE_REV,
        help=f"git revision of the ppo and fashion sections' before-#11 contestant, run from an "
        f"export of its src (default {BEFORE_REV}, the last commit before issue #11; none: "
        "leave it out)",
    )
    parser.add_argument(
        "--before-threads",
        type=int,
        default=1,
        help="torch threads of the before-#11 contestant (default 1, as every other process; 2 "
        "is what that code ran by default here, using both cores as the workers contestant does)",
    )
    defaults = ", ".join(f"{name} {s.budget.rounds}" for name, s in SECTIONS.items())
    parser.add_argument(
        "--rounds", type=int, help=f"interleaved rounds (default per section: {defaults})"
    )
    defaults = ", ".join(f"{name} {s.budget.repeats}" for name, s in SECTIONS.items())
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"timed steps per contestant per round (default per section: {defaults})",
    )
    defaults = ", ".join(f"{name} {s.budget.warmup}" for name, s in SECTIONS.items())
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"untimed steps per contestant first (default per section: {defaults})",
    )
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse out-of-range values through ``parser.error`` (one line, exit 2); ``none`` as
    ``--before-rev`` becomes None."""
    for name in ("rounds", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.workers < 0:
        parser.error("--workers must be at least 0")
    if args.gpu_workers < 0:
        parser.error(f"--gpu-workers must be at least 0, not {args.gpu_workers}")
    if args.before_threads < 1:
        parser.error(f"--before-threads must be at least 1, not {args.before_threads}")
    if args.before_rev == "none" or not {"ppo", "fashion"} & set(args.section or SECTIONS):
        args.before_rev = None  # none, or no section that runs it (a shallow clone may lack it)
    elif not _is_commit(args.before_rev):
        parser.error(
            f"--before-rev {args.before_rev!r} is not a commit of this git checkout; give one "
            f"(default {BEFORE_REV}) or none"
        )
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be at least 0")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: the device section runs on cpu, cuda or cuda:N")
    if device.type == "cuda" and torch.cuda.is_available():  # without CUDA: the section skips
        try:
            parse_device(args.device)
        except ValueError as err:
            parser.error(f"--device: {err}")


def _is_commit(rev: str) -> bool:
    """Whether git resolves ``rev`` to a commit of this repository."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def budget(args: argparse.Namespace, default: Budget) -> Budget:
    """``default`` with what the command line set."""
    return Budget(
        default.rounds if args.rounds is None else args.rounds,
        default.repeats if args.repeats is None else args.repeats,
        default.warmup if args.warmup is None else args.warmup,
    )


def _load_average() -> str:
    """The machine's 1-minute load average (others' work included), as the record quotes it."""
    return f"{os.getloadavg()[0]:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections (all by default) with one torch thread; returns 0."""
    args = parse_args(argv)
    print("esper fast-environments benchmark")
    print(f"  date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"  machine   {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"  load      {_load_average()} (1-minute average) before")
    sections = args.section or list(SECTIONS)
    # Exported once for both sections that run it; None unless one of them runs.
    with old_source(args.before_rev) as source, one_thread():
        work = replace(
            QUICK if args.quick else FULL,
            workers=args.workers,
            before_source=source,
            before_threads=args.before_threads,
            device=args.device,
            gpu_workers=min(args.gpu_workers, max(1, (os.cpu_count() or 1) - 1)),
        )
        for name in sections:
            run = budget(args, SECTIONS[name].budget)
            print(
                f"\n[{name}] {run.rounds} interleaved rounds x {run.repeats} steps per "
                f"contestant after {run.warmup} warm-up steps; 1 torch thread"
            )
            started = time.perf_counter()
            SECTIONS[name].run(run, work)
            print(f"({name}: {time.perf_counter() - started:.1f} s)")
    print(f"  load      {_load_average()} (1-minute average) after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
