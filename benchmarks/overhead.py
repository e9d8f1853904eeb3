"""Training-step overhead of seed slots and seeds over the bare CNN host.

Times one training step (zero grads, forward, cross-entropy, backward) of a small CNN classifier
(``CNNHost(base_channels=8)``, batch 128, 3x32x32 inputs) in several configurations and prints each
as a ratio to the bare host measured in the same run:

* the bare host (the baseline), and a second copy of it as an A/A control whose ratio shows the
  noise floor of the run (it should read 1.00x; how far it strays is how far to trust the rest);
* ``MorphogeneticModel`` with three dormant slots;
* one ``norm`` seed in slot ``mid`` in TRAINING, BLENDING (α = 0.5) and FOSSILIZED (α = 1);
* three ``conv_light`` seeds, one per slot, all in TRAINING, all in BLENDING, all in FOSSILIZED.

Every configuration starts from the same host weights and sees the same batch. Machines are
noisy, so each configuration is warmed up first and the timed iterations are interleaved:
every round visits all configurations (in a fresh random order, so no configuration always
follows the same neighbour) and runs ``--repeats`` iterations of each. The table reports the
median time per iteration, the ratio of medians to the bare host, and a paired ratio (median over
rounds of the per-round ratio), which cancels slow drift. Verdicts use the ratio of medians.

The table runs twice: with ``torch.set_num_threads(1)`` and with the default thread count.

Usage::

    .venv/bin/python benchmarks/overhead.py                 # full run, ~1-3 minutes on 2 cores
    .venv/bin/python benchmarks/overhead.py --quick         # smoke run, a few seconds
    .venv/bin/python benchmarks/overhead.py --json out.json # also write the results as JSON
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina import CNNHost, CNNHostConfig, MorphogeneticModel
from esper.leyline import SeedStage
from esper.leyline.files import nearest_existing

BATCH = 128
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
BASE_CHANNELS = 8
SLOTS = ("early", "mid", "late")
SEED = 0

DORMANT_TARGET = 1.03
"""Three dormant slots may cost at most 3% over the bare host."""

NORM_TARGET = 1.15
"""One ``norm`` seed may cost at most 15%, in any stage."""

CONV_LIGHT_TARGET = 1.6
"""Three ``conv_light`` seeds may cost at most 60%."""

BLEND_TEMPO = 2
"""α ramps 0 -> 1 over two epochs, so one ``step_epoch`` leaves BLENDING at α = 0.5."""

DEFAULT_REPEATS = 5
DEFAULT_ROUNDS = 30
DEFAULT_WARMUP = 10
QUICK_REPEATS = 2
QUICK_ROUNDS = 2
QUICK_WARMUP = 2


@dataclass(frozen=True)
class Config:
    """One benchmarked configuration.

    Attributes:
        name: label in the table.
        target: the largest acceptable ratio to the bare host, or ``None`` for the baseline and
            the A/A control.
        build: makes the model to time from a (private) copy of the shared host.
    """

    name: str
    target: float | None
    build: Callable[[CNNHost], nn.Module]


@dataclass
class Row:
    """Results for one configuration at one thread count (times in milliseconds)."""

    name: str
    target: float | None
    median_ms: float
    p25_ms: float
    p75_ms: float
    samples: int
    ratio: float
    paired_ratio: float
    passed: bool | None
    verdict: str


# --------------------------------------------------------------------------------------------
# configurations


def _grown(host: CNNHost, seeds: dict[str, str], stage: SeedStage) -> MorphogeneticModel:
    """A model over ``host`` with ``seeds`` (slot -> blueprint) all brought to ``stage``.

    Uses permissive gates: germinate -> TRAINING -> BLENDING (one epoch, α = 0.5) -> α = 1 ->
    HOLDING -> FOSSILIZED, stopping at ``stage``.

    Args:
        host: the host to wrap (used as is: pass a copy).
        seeds: blueprint per slot.
        stage: TRAINING, BLENDING or FOSSILIZED.

    Raises:
        ValueError: for any other stage.
    """
    if stage not in (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.FOSSILIZED):
        raise ValueError(f"cannot benchmark stage {stage.value}")
    model = MorphogeneticModel(host, slots=list(SLOTS), gate_mode="permissive")
    for slot, blueprint in seeds.items():
        model.germinate(slot, blueprint)
        model.set_alpha_target(slot, 1.0, tempo=BLEND_TEMPO)
        model.advance(slot)  # -> TRAINING
    if stage is not SeedStage.TRAINING:
        for slot in seeds:
            model.advance(slot)  # -> BLENDING at α = 0
        model.step_epoch()  # α = 0.5
    if stage is SeedStage.FOSSILIZED:
        while any(model.slot(s).alpha < 1.0 for s in seeds):
            model.step_epoch()
        for slot in seeds:
            model.advance(slot)  # -> HOLDING
            model.fossilize(slot)
    for slot in seeds:
        got = model.slot(slot).stage
        if got is not stage:
            raise RuntimeError(f"slot {slot!r} reached {got.value}, expected {stage.value}")
    return model


def _seeded(seeds: dict[str, str], stage: SeedStage) -> Callable[[CNNHost], nn.Module]:
    def build(host: CNNHost) -> nn.Module:
        return _grown(host, seeds, stage)

    return build


def configurations() -> list[Config]:
    """The benchmarked configurations, baseline first."""
    stages = (
        (SeedStage.TRAINING, "TRAINING"),
        (SeedStage.BLENDING, "BLENDING a=0.5"),
        (SeedStage.FOSSILIZED, "FOSSILIZED a=1"),
    )
    all_light = dict.fromkeys(SLOTS, "conv_light")
    configs = [
        Config("bare host", None, lambda host: host),
        Config("bare host (A/A control)", None, lambda host: host),
        Config(
            "3 dormant slots",
            DORMANT_TARGET,
            lambda host: MorphogeneticModel(host, slots=list(SLOTS), gate_mode="permissive"),
        ),
    ]
    configs += [
        Config(f"norm@mid {label}", NORM_TARGET, _seeded({"mid": "norm"}, stage))
        for stage, label in stages
    ]
    configs += [
        Config(f"3x conv_light {label}", CONV_LIGHT_TARGET, _seeded(all_light, stage))
        for stage, label in stages
    ]
    return configs


# --------------------------------------------------------------------------------------------
# timing


def train_step(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """The timed unit: zero grads (set to None), forward, cross-entropy, backward."""
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()


def time_interleaved(
    models: Sequence[nn.Module], x: Tensor, y: Tensor, *, warmup: int, rounds: int, repeats: int
) -> list[list[list[float]]]:
    """Time ``train_step`` for every model, interleaved in rounds.

    Each round visits every model once, in an order shuffled by a fixed-seed generator, and runs
    ``repeats`` timed iterations of it. The garbage collector is paused while timing.

    Args:
        models: the models, all in train mode.
        x: input batch.
        y: class targets.
        warmup: untimed iterations per model before the first round.
        rounds: number of rounds.
        repeats: timed iterations per model per round.

    Returns:
        ``times[model][round]``: the seconds of each iteration.
    """
    for model in models:
        for _ in range(warmup):
            train_step(model, x, y)
    n = len(models)
    rng = random.Random(SEED)
    times: list[list[list[float]]] = [[[] for _ in range(rounds)] for _ in range(n)]
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for i in rng.sample(range(n), n):
                model, bucket = models[i], times[i][r]
                for _ in range(repeats):
                    start = time.perf_counter()
                    train_step(model, x, y)
                    bucket.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return times


def _quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` with linear interpolation (any non-empty length)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _verdict(index: int, target: float | None, ratio: float) -> str:
    if target is None:
        return "baseline" if index == 0 else "control"
    return "ok" if ratio <= target else "MISS"


def summarize(configs: Sequence[Config], times: list[list[list[float]]]) -> list[Row]:
    """Medians, quartiles and ratios to the first configuration (the bare host).

    Args:
        configs: the configurations, baseline first.
        times: ``time_interleaved`` output in the same order.
    """
    base_all = [t for rnd in times[0] for t in rnd]
    base_median = statistics.median(base_all)
    base_rounds = [statistics.median(rnd) for rnd in times[0]]
    rows = []
    for index, (config, per_round) in enumerate(zip(configs, times, strict=True)):
        flat = [t for rnd in per_round for t in rnd]
        median = statistics.median(flat)
        ratio = median / base_median
        paired = statistics.median(
            statistics.median(rnd) / base for rnd, base in zip(per_round, base_rounds, strict=True)
        )
        rows.append(
            Row(
                name=config.name,
                target=config.target,
                median_ms=median * 1e3,
                p25_ms=_quantile(flat, 0.25) * 1e3,
                p75_ms=_quantile(flat, 0.75) * 1e3,
                samples=len(flat),
                ratio=ratio,
                paired_ratio=paired,
                passed=None if config.target is None else ratio <= config.target,
                verdict=_verdict(index, config.target, ratio),
            )
        )
    return rows


def run_table(
    configs: Sequence[Config], host: CNNHost, x: Tensor, y: Tensor, args: argparse.Namespace
) -> list[Row]:
    """Build fresh models from copies of ``host`` and time them at the current thread count."""
    models = [config.build(copy.deepcopy(host)).train() for config in configs]
    times = time_interleaved(
        models, x, y, warmup=args.warmup, rounds=args.rounds, repeats=args.repeats
    )
    return summarize(configs, times)


# --------------------------------------------------------------------------------------------
# output


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, Python and torch versions, and the date."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": None if affinity is None else len(affinity),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "default_threads": torch.get_num_threads(),
    }


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a plain-text table."""
    header = (
        f"{'configuration':<28} {'median ms':>10} {'p25-p75 ms':>15} "
        f"{'ratio':>7} {'paired':>7} {'target':>8}  verdict"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        target = "-" if row.target is None else f"<={row.target:.2f}x"
        spread = f"{row.p25_ms:.2f}-{row.p75_ms:.2f}"
        lines.append(
            f"{row.name:<28} {row.median_ms:>10.2f} {spread:>15} "
            f"{row.ratio:>6.3f}x {row.paired_ratio:>6.3f}x {target:>8}  {row.verdict}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` overrides repeats, rounds and warmup."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"timed iterations per configuration per round (default {DEFAULT_REPEATS})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"interleaved rounds over all configurations (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help=f"untimed iterations per configuration before timing (default {DEFAULT_WARMUP})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_ROUNDS} rounds x {QUICK_REPEATS} repeats, {QUICK_WARMUP} warm-up",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.rounds, args.warmup = QUICK_REPEATS, QUICK_ROUNDS, QUICK_WARMUP
    for name in ("repeats", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.json is not None and not _can_write(args.json):
        # checked before the minutes of timing it would otherwise throw away
        parser.error(f"--json {str(args.json)!r}: cannot write a file there")
    return args


def _can_write(path: Path) -> bool:
    """Whether ``path`` can be written as a file, its missing folders made."""
    nearest = nearest_existing(path)  # a link to nothing stands in the way
    wanted = nearest.is_file() if nearest == path else nearest.is_dir()
    return wanted and os.access(nearest, os.W_OK)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both tables, print them, optionally write JSON; returns 0 (misses are reported)."""
    args = parse_args(argv)
    machine = machine_info()
    default_threads = int(machine["default_threads"])
    print("esper overhead benchmark: training step (zero_grad, forward, CE loss, backward)")
    for key, value in machine.items():
        print(f"  {key:<16} {value}")
    print(
        f"  {'workload':<16} CNNHost(base_channels={BASE_CHANNELS}), batch {BATCH}, "
        f"input {'x'.join(map(str, INPUT_SHAPE))}, train mode"
    )
    print(
        f"  {'timing':<16} warmup {args.warmup}, {args.rounds} rounds x {args.repeats} repeats "
        f"per configuration, interleaved; median per iteration"
    )

    torch.manual_seed(SEED)
    config = CNNHostConfig(
        input_size=INPUT_SHAPE[1], num_classes=NUM_CLASSES, base_channels=BASE_CHANNELS
    )
    host = CNNHost(config)
    x = torch.randn(BATCH, *INPUT_SHAPE)
    y = torch.randint(0, NUM_CLASSES, (BATCH,))
    n_params = sum(p.numel() for p in host.parameters())
    print(f"  {'host params':<16} {n_params}")
    if args.quick:
        print("  --quick: smoke run only; too few samples for the ratios to mean anything")
    configs = configurations()

    tables: list[dict[str, Any]] = []
    settings = [(1, "torch.set_num_threads(1)"), (default_threads, "default thread count")]
    for threads, label in settings:
        torch.set_num_threads(threads)
        print(f"\nthreads = {torch.get_num_threads()} ({label})")
        started = time.perf_counter()
        rows = run_table(configs, host, x, y, args)
        print(format_table(rows))
        print(f"({time.perf_counter() - started:.1f} s)")
        tables.append({"threads": threads, "label": label, "rows": [asdict(r) for r in rows]})
    torch.set_num_threads(default_threads)

    misses = [
        f"{row['name']} @ {table['threads']} thread(s): {row['ratio']:.3f}x > {row['target']}x"
        for table in tables
        for row in table["rows"]
        if row["passed"] is False
    ]
    print("\nmisses (ratio of medians over target):" + ("" if misses else " none"))
    for miss in misses:
        print(f"  {miss}")

    if args.json is not None:
        result = {
            "machine": machine,
            "workload": {
                "host": f"CNNHost(base_channels={BASE_CHANNELS})",
                "host_params": n_params,
                "batch": BATCH,
                "input_shape": list(INPUT_SHAPE),
            },
            "settings": {"warmup": args.warmup, "rounds": args.rounds, "repeats": args.repeats},
            "tables": tables,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
