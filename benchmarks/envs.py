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

Every section fixes torch to one intra-op thread (restored afterwards): on a shared 2-core
machine a second thread mostly waits for a descheduled partner. Contestants are timed in
interleaved rounds, each round visiting all of them in a fresh random order (fixed-seed) and
running ``--repeats`` steps of each, after ``--warmup`` untimed steps. Reported: the median step
time, the ratio of medians to the baseline, and the paired ratio (the median of per-round
ratios, which cancels slow drift of the machine).

Usage::

    .venv/bin/python benchmarks/envs.py                    # every section (raw: ~15-25 s, 2 cores)
    .venv/bin/python benchmarks/envs.py --section raw      # only the raw training step
    .venv/bin/python benchmarks/envs.py --rounds 1 --repeats 1 --warmup 0   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina import CNNHost, CNNHostConfig

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

DEFAULT_ROUNDS = 20
DEFAULT_REPEATS = 5
DEFAULT_WARMUP = 5


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
    """``config``'s network as plain PyTorch: conv -> BatchNorm -> ReLU -> 2x2 max-pool blocks,
    a global average pool and a linear head, in channels_last."""
    layers: list[nn.Module] = []
    channels, size, k = config.in_channels, config.input_size, config.kernel_size
    for i in range(config.depth):
        out = config.base_channels * 2**i
        layers += [nn.Conv2d(channels, out, k, padding=k // 2, bias=False), nn.BatchNorm2d(out)]
        layers.append(nn.ReLU())
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, config.num_classes)]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def training_step(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], object]:
    """One AdamW training step of ``model`` on the fixed batch ``(x, y)``."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
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
    old = CNNHost(config).to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
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


def raw_section(args: argparse.Namespace) -> None:
    """Print the raw training step's table and the batch-source table."""
    contestants, n_params = raw_contestants()
    print(
        f"\n1. raw training step: CNNHost(base_channels={BASE_CHANNELS}) ({n_params} params), "
        f"batch {BATCH}, input {'x'.join(map(str, INPUT_SHAPE))}, AdamW, 1 thread"
    )
    times = time_interleaved(contestants, args.rounds, args.repeats, args.warmup)
    rows = summarize(contestants, times)
    print(format_rows(rows))
    new = rows[1]
    speedup = 1 / new.paired
    fast_way = statistics.median(n / p for n, p in zip(times[1], times[3], strict=True))
    print(
        f"new layout speed / old layout   {speedup:6.2f}x  paired (target >= {LAYOUT_TARGET}x) "
        f"{_verdict(speedup >= LAYOUT_TARGET)}"
    )
    print(
        f"new layout time / plain network {fast_way:6.2f}x  paired (target <= {FAST_WAY_TARGET}x) "
        f"{_verdict(fast_way <= FAST_WAY_TARGET)}"
    )

    sources, convert_s = source_contestants()
    print(
        f"\n   batch source: {BATCH} random samples of a {SOURCE_SAMPLES}-sample "
        f"{'x'.join(map(str, SOURCE_SHAPE))} dataset"
    )
    rows = summarize(sources, time_interleaved(sources, args.rounds, args.repeats, args.warmup))
    print(format_rows(rows, unit="us", per="batch"))
    print(f"   converting the whole dataset once took {convert_s * 1e3:.1f} ms")


# --------------------------------------------------------------------------------------------
# main

SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {"raw": raw_section}
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
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"interleaved rounds (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"timed steps per contestant per round (default {DEFAULT_REPEATS})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help=f"untimed steps per contestant first (default {DEFAULT_WARMUP})",
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections (all by default) with one torch thread; returns 0."""
    args = parse_args(argv)
    print("esper fast-environments benchmark")
    print(f"  date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"  machine   {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(
        f"  timing    {args.rounds} interleaved rounds x {args.repeats} steps per contestant "
        f"after {args.warmup} warm-up steps; 1 torch thread"
    )
    with one_thread():
        for name in args.section or list(SECTIONS):
            started = time.perf_counter()
            SECTIONS[name](args)
            print(f"({name}: {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
