"""Telemetry and run-store costs: sinks per epoch and per event, DuckDB store load, tail polls.

Measures, in one run:

1. **epoch time per sink setup**: a heuristic-controlled ``synthetic`` run
   (Tolaria's ``Episode`` with a ``HeuristicTamiyo``, what ``esper heuristic`` steps) whose hub
   writes to (a) no sinks, (b) the JSONL event log, (c) JSONL + console progress lines (to
   ``os.devnull``), (d) JSONL + console + TensorBoard, plus (a') a second no-sink run as an A/A
   control whose ratio is the run's noise floor. One run per setup, all built from the same
   configuration and stepped epoch by epoch in a fresh random order per round; each run keeps
   its own global RNG state between its steps, so every setup trains exactly the same model
   and takes the same decisions (checked: the validation accuracies must agree). Ratios are
   against (a): total time of the timed epochs, and the median of per-epoch ratios (paired).
2. **emit cost per event**: the records of a recorded heuristic run's and a recorded PPO run's
   ``events.jsonl`` replayed through the hub's per-event work (stamp ``t`` and ``run_id``, add
   the context, hand the record to every sink; ``event_record``, the dataclass-to-dict step every
   setup pays alike, is not included) for each sink setup, in µs per event (wall and process
   CPU time; TensorBoard writes on a background thread, which only CPU time shows). Each timing
   includes the sinks' ``close`` (TensorBoard's final flush) but not their construction.
3. **run store**: ``RunStore(collect_runs([dir]), warn)`` load time over 1, 4 and 16 copies of
   each recorded run, against the baseline of only parsing the same logs with ``read_events``
   (ratio = store load / plain parse), events/s, and the time of two typical queries.
4. **tail following**: ``EventTail.events()`` when nothing changed, after one appended line, and
   per line after a batch of appended lines.

Torch runs one intra-op thread unless ``--threads`` says otherwise: the models are tiny and, on
a 2-core machine shared with other work, a second thread only spins waiting for its partner.

Without ``--heuristic-run``/``--ppo-run`` the benchmark first records the two runs itself
(``esper heuristic --task synthetic --epochs 40`` and ``esper ppo --preset tiny --ppo.rounds 2``,
like the tests' ``recorded_runs`` fixture).

Usage::

    .venv/bin/python benchmarks/telemetry.py            # ~1-1.5 minutes on 2 cores
    .venv/bin/python benchmarks/telemetry.py --quick    # smoke run (numbers meaningless)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from esper.cli.main import main as esper_main
from esper.data import load_dataset
from esper.leyline.config import HostTraining
from esper.leyline.data import Dataset
from esper.nissa import JsonlSink, Sink, TelemetryHub
from esper.nissa.console import ConsoleSink
from esper.nissa.log import EventTail, display, read_events
from esper.nissa.sinks import TensorBoardSink
from esper.nissa.views import RunStore, collect_runs
from esper.seeding import seed_everything
from esper.simic.env import task_episode
from esper.tamiyo import HeuristicTamiyo
from esper.tasks import get_task, resolve_training
from esper.tolaria.episode import Episode

TASK = "synthetic"
RECORDED_EPOCHS = 40  # like the tests' recorded heuristic run
RECORDED_ROUNDS = 2  # like the tests' recorded PPO run
CONTEXT_KEYS = ("t", "run_id", "env", "episode")  # what the hub adds in front of an event
QUERIES = (
    "SELECT run, max(val_accuracy) FROM epochs GROUP BY run",
    "SELECT run, slot, stage, count(*) FROM slots GROUP BY run, slot, stage",
)
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Workload:
    """How big each part of the benchmark is.

    Attributes:
        trials: independent repetitions of part 1 (fresh runs each).
        epochs: epochs of each run in part 1 (the first is a warm-up, not timed).
        batches_per_epoch: training batches per epoch in part 1 (None: the task's full pass).
        emit_events: at least this many events per emit timing (the log is replayed whole).
        copies: copies of each recorded run in the run-store part.
        tail_polls: polls per tail timing.
        tail_batch: lines appended before one poll in the batched tail timing.
        repeats: timed repeats of parts 2-4 (medians are reported).
    """

    trials: int
    epochs: int
    batches_per_epoch: int | None
    emit_events: int
    copies: tuple[int, ...]
    tail_polls: int
    tail_batch: int
    repeats: int


FULL = Workload(5, RECORDED_EPOCHS, None, 5000, (1, 4, 16), 2000, 100, 7)
QUICK = Workload(1, 2, 2, 50, (1, 2), 20, 10, 1)


# --------------------------------------------------------------------------------------------
# sink setups


SETUP_NAMES = ("no sinks", "no sinks (A/A)", "JSONL", "JSONL+console", "JSONL+console+TB")
"""Part 1's setups; the first is the baseline, the second its A/A control."""


def make_sinks(name: str, directory: Path, console: TextIO, total: int) -> list[Sink]:
    """The sinks of setup ``name``, writing under ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    sinks: list[Sink] = []
    if name.startswith("JSONL"):
        sinks.append(JsonlSink(directory / "events.jsonl"))
    if "console" in name:
        sinks.append(ConsoleSink(console, "bench", total, bar=False))
    if "TB" in name:
        sinks.append(TensorBoardSink(directory / "tensorboard"))
    return sinks


# --------------------------------------------------------------------------------------------
# 1. epoch time per sink setup


@dataclass
class Arm:
    """One setup's run in part 1: its episode, controller and hub, its RNG state between
    steps, what it measured."""

    name: str
    episode: Episode
    controller: HeuristicTamiyo
    hub: TelemetryHub
    rng: torch.Tensor
    seconds: list[float] = field(default_factory=list)
    accuracies: list[float | None] = field(default_factory=list)


def run_config(work: Workload) -> HostTraining:
    """The heuristic ``synthetic`` host training of part 1 (the task's defaults otherwise)."""
    batches = work.batches_per_epoch or get_task(TASK).batches_per_epoch
    training = HostTraining(TASK, epochs=work.epochs, batches_per_epoch=batches)
    return resolve_training(training)


def _step(arm: Arm) -> float | None:
    """One epoch of ``esper heuristic``: the first, or after the controller's decision."""
    if arm.episode.epoch == 0:
        arm.episode.reset()
    else:
        arm.episode.step(arm.controller.decide(arm.episode.observation))
    return arm.episode.last.val_accuracy


def epoch_overhead(
    work: Workload, root: Path, console: TextIO, trial: int
) -> tuple[list[Arm], int]:
    """One trial: one run per setup, stepped epoch by epoch in a random order per round.

    Returns:
        The arms (setup order) and the number of events the JSONL setup wrote.
    """
    training = run_config(work)
    data: Dataset = load_dataset(get_task(TASK).dataset, None, download=False)
    arms: list[Arm] = []
    for name in SETUP_NAMES:
        seed_everything(0)  # every arm starts from the same global RNG state
        sinks = make_sinks(name, root / f"trial{trial}-arm{len(arms)}", console, work.epochs)
        hub = TelemetryHub("bench", sinks)
        episode = task_episode(training, data, 0, torch.device("cpu"), hub.emit)
        arms.append(Arm(name, episode, HeuristicTamiyo(), hub, torch.get_rng_state()))
    order = random.Random(trial)
    for _ in range(work.epochs):
        for arm in order.sample(arms, len(arms)):
            torch.set_rng_state(arm.rng)
            started = time.perf_counter()
            accuracy = _step(arm)
            arm.seconds.append(time.perf_counter() - started)
            arm.rng = torch.get_rng_state()
            arm.accuracies.append(accuracy)
    for arm in arms:
        arm.hub.close()
    jsonl = root / f"trial{trial}-arm{SETUP_NAMES.index('JSONL')}" / "events.jsonl"
    return arms, len(read_events(jsonl).records)


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else None
    return f"{statistics.mean(values):.3f}x ± {display(std, '.3f')}"


def report_epochs(work: Workload, trials: list[list[Arm]], events: int) -> float:
    """Print part 1's table; return the baseline's median epoch seconds (over every trial)."""
    timed = slice(1, None)  # the first epoch of each run is a warm-up (first-call allocations)
    same = all(arm.accuracies == arms[0].accuracies for arms in trials for arm in arms)
    print(
        f"\n1. epoch time per sink setup: heuristic {TASK}, {work.trials} trials of "
        f"{len(SETUP_NAMES)} runs x {work.epochs} epochs ({work.epochs - 1} timed), interleaved"
    )
    header = (
        f"{'setup':<18} {'median ms':>9} {'ratio (mean ± std)':>18} {'paired (mean ± std)':>19}"
    )
    print(header)
    print("-" * len(header))
    for i, name in enumerate(SETUP_NAMES):
        seconds = [s for arms in trials for s in arms[i].seconds[timed]]
        ratios, paired = [], []
        for arms in trials:
            mine, base = arms[i].seconds[timed], arms[0].seconds[timed]
            ratios.append(sum(mine) / sum(base))
            paired.append(statistics.median(a / b for a, b in zip(mine, base, strict=True)))
        print(
            f"{name:<18} {1e3 * statistics.median(seconds):>9.1f} {_mean_std(ratios):>18} "
            f"{_mean_std(paired):>19}"
        )
    print(
        "ratio: total time of a trial's timed epochs / its no-sink run's; paired: median of"
        "\nper-epoch ratios; mean ± std over trials (std needs two or more)."
        f"\n{events / work.epochs:.2f} events per epoch; identical trajectories across setups: "
        f"{'yes' if same else 'NO (ratios compare different work)'}"
    )
    return statistics.median(s for arms in trials for s in arms[0].seconds[timed])


# --------------------------------------------------------------------------------------------
# 2. emit cost per event


Replay = list[tuple[dict[str, Any], dict[str, Any]]]


def load_replay(events_path: Path) -> Replay:
    """(context, event fields) of every record of a recorded log, as the hub would build them."""
    replay = []
    for record in (item.record() for item in read_events(events_path).records):
        context: dict[str, Any] = {k: record[k] for k in ("env", "episode") if k in record}
        fields = {k: v for k, v in record.items() if k not in CONTEXT_KEYS}
        replay.append((context, fields))
    return replay


def replay_once(sinks: list[Sink], replay: Replay, passes: int) -> None:
    """``TelemetryHub.emit``'s per-event work after ``event_record``, for every record."""
    for _ in range(passes):
        for context, fields in replay:
            record = {"t": round(time.time(), 3), "run_id": "bench", **context}
            record.update(fields)
            for sink in sinks:
                sink.write(record)
    for sink in sinks:
        sink.close()


@dataclass(frozen=True)
class Cost:
    """µs per event of one log and setup over the repeats: median wall (range), median CPU."""

    wall: float
    low: float
    high: float
    cpu: float


def emit_costs(
    work: Workload, logs: dict[str, Path], root: Path, console: TextIO
) -> dict[str, dict[str, Cost]]:
    """µs/event per log and setup, setups interleaved in a random order per repeat."""
    setups = [name for name in SETUP_NAMES if name != "no sinks (A/A)"]
    results: dict[str, dict[str, Cost]] = {}
    order = random.Random(1)
    for log, path in logs.items():
        replay = load_replay(path)
        passes = max(1, -(-work.emit_events // len(replay)))
        n = passes * len(replay)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in setups}
        for repeat in range(work.repeats + 1):  # repeat 0 is a warm-up
            for name in order.sample(setups, len(setups)):
                sinks = make_sinks(name, root / f"{log}-{repeat}-{name}", console, n)
                wall, cpu = time.perf_counter(), time.process_time()
                replay_once(sinks, replay, passes)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if repeat:
                    samples[name].append((1e6 * wall / n, 1e6 * cpu / n))
        results[log] = {
            name: Cost(
                statistics.median(w for w, _ in s),
                min(w for w, _ in s),
                max(w for w, _ in s),
                statistics.median(c for _, c in s),
            )
            for name, s in samples.items()
        }
        print(f"   ({log}: {len(replay)} events replayed {passes}x = {n} per timing)")
    return results


def report_emit(costs: dict[str, dict[str, Cost]], events_per_epoch: float, epoch_s: float) -> None:
    """Print part 2's table, with each setup's predicted share of a heuristic epoch."""
    header = (
        f"{'setup':<18} {'log':<9} {'wall us/ev (range)':>20} {'CPU us/ev':>9} "
        f"{'sinks us/ev':>11} {'share of epoch':>14}"
    )
    print(header)
    print("-" * len(header))
    for log, by_setup in costs.items():
        base = by_setup["no sinks"].wall
        for name, cost in by_setup.items():
            share = (cost.wall - base) * 1e-6 * events_per_epoch / epoch_s
            share_text = f"{share:.3%}" if log == "heuristic" else "—"
            wall = f"{cost.wall:.1f} ({cost.low:.1f}-{cost.high:.1f})"
            print(
                f"{name:<18} {log:<9} {wall:>20} {cost.cpu:>9.1f} {cost.wall - base:>11.1f} "
                f"{share_text:>14}"
            )
    print(
        "sinks: wall minus the no-sink replay (the hub's own record building); share of epoch:"
        "\nsinks us/event x events per epoch / the no-sink median epoch of part 1."
    )


# --------------------------------------------------------------------------------------------
# 3. run store


def copy_runs(logs: dict[str, Path], copies: int, directory: Path) -> None:
    """``copies`` copies of each recorded run directory (checkpoints and TensorBoard left out)."""
    skip = shutil.ignore_patterns("checkpoints", "tensorboard")
    for log, run in logs.items():
        for i in range(copies):
            shutil.copytree(run.parent, directory / f"{log}{i:03d}", ignore=skip)


def run_store(work: Workload, logs: dict[str, Path], root: Path) -> None:
    """Store load vs plain parsing, and query times, per number of copies."""
    warnings: list[str] = []
    print(
        f"\n3. run store: {'/'.join(map(str, work.copies))} copies of each recorded run, "
        f"median of {work.repeats}"
    )
    header = (
        f"{'runs':>4} {'events':>7} {'collect ms':>10} {'parse ms':>8} {'store ms':>8} "
        f"{'ratio':>7} {'store ev/s':>10} {'query1 ms':>9} {'query2 ms':>9}"
    )
    print(header)
    print("-" * len(header))
    first = True
    marginal: list[tuple[int, float, float]] = []  # (events, parse s, store s) per set
    for copies in work.copies:
        directory = root / f"store{copies}"
        copy_runs(logs, copies, directory)
        runs = collect_runs([directory])
        events = sum(len(read_events(r.events_path).records) for r in runs)
        if first:  # imports duckdb, first-call work; not timed
            RunStore(runs, warnings.append).close()
            first = False
        collect, parse, load, ratios = [], [], [], []
        for _ in range(work.repeats):
            started = time.perf_counter()
            collect_runs([directory])
            collect.append(time.perf_counter() - started)
            started = time.perf_counter()
            for r in runs:
                read_events(r.events_path)
            parse.append(time.perf_counter() - started)
            started = time.perf_counter()
            store = RunStore(runs, warnings.append)
            load.append(time.perf_counter() - started)
            store.close()
            ratios.append(load[-1] / parse[-1])
        marginal.append((events, statistics.median(parse), statistics.median(load)))
        store = RunStore(runs, warnings.append)
        query_ms = []
        for sql in QUERIES:
            list(store.query(sql).rows)  # warm-up
            times = []
            for _ in range(max(work.repeats, 5)):
                started = time.perf_counter()
                rows = list(store.query(sql).rows)
                times.append(time.perf_counter() - started)
            assert rows, f"{sql} returned no rows"
            query_ms.append(1e3 * statistics.median(times))
        store.close()
        print(
            f"{len(runs):>4} {events:>7} {1e3 * statistics.median(collect):>10.1f} "
            f"{1e3 * statistics.median(parse):>8.1f} {1e3 * statistics.median(load):>8.1f} "
            f"{statistics.median(ratios):>6.1f}x {events / statistics.median(load):>10.0f} "
            f"{query_ms[0]:>9.2f} {query_ms[1]:>9.2f}"
        )
    assert not warnings, warnings
    print(
        "collect: collect_runs (opens each run); parse: read_events of every log; store:"
        "\nRunStore(runs) load; ratio: median of per-repeat store / parse."
    )
    for i, sql in enumerate(QUERIES, 1):
        print(f"query{i}: {sql}")
    (n0, parse0, load0), (n1, parse1, load1) = marginal[0], marginal[-1]
    print(
        f"per extra event ({n0} -> {n1} events): parse {1e6 * (parse1 - parse0) / (n1 - n0):.1f} "
        f"us, store {1e6 * (load1 - load0) / (n1 - n0):.1f} us"
    )


# --------------------------------------------------------------------------------------------
# 4. tail following


def tail_costs(work: Workload, source: Path, root: Path) -> None:
    """``EventTail.events`` when idle, after one appended line, and per line of a batch."""
    lines = source.read_bytes().splitlines(keepends=True)
    path = root / "tail.jsonl"
    idle, one, batch = [], [], []
    cursor = 0

    def next_line() -> bytes:
        nonlocal cursor
        line = lines[cursor % len(lines)]
        cursor += 1
        return line

    for _ in range(work.repeats):
        path.write_bytes(b"".join(lines))
        tail = EventTail(path)
        assert len(tail.events()) == len(lines)
        started = time.perf_counter()
        for _ in range(work.tail_polls):
            tail.events()
        idle.append((time.perf_counter() - started) / work.tail_polls)
        with path.open("ab") as f:
            seconds = 0.0
            for _ in range(work.tail_polls):
                f.write(next_line())
                f.flush()
                started = time.perf_counter()
                got = tail.events()
                seconds += time.perf_counter() - started
                assert len(got) == 1
            one.append(seconds / work.tail_polls)
            for _ in range(work.tail_batch):
                f.write(next_line())
            f.flush()
            started = time.perf_counter()
            got = tail.events()
            batch.append((time.perf_counter() - started) / work.tail_batch)
            assert len(got) == work.tail_batch
    mean_bytes = sum(map(len, lines)) / len(lines)
    print(
        f"\n4. tail following: lines of the recorded heuristic log in order "
        f"({mean_bytes:.0f} bytes on average), median of {work.repeats}"
    )
    print(f"poll, nothing new              {1e6 * statistics.median(idle):8.1f} us/poll")
    print(f"poll after one appended line   {1e6 * statistics.median(one):8.1f} us/poll")
    print(
        f"poll after {work.tail_batch:>3} appended lines  "
        f"{1e6 * statistics.median(batch):8.1f} us/line"
    )


# --------------------------------------------------------------------------------------------
# main


def record_runs(root: Path, quick: bool) -> tuple[Path, Path]:
    """Record a heuristic and a PPO run with the ``esper`` command (output swallowed)."""
    heuristic, ppo = root / "heuristic", root / "ppo"
    epochs, rounds = (4, 1) if quick else (RECORDED_EPOCHS, RECORDED_ROUNDS)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for argv in (
            ["heuristic", "--task", TASK, "--epochs", str(epochs), "--out", str(heuristic)],
            ["ppo", "--preset", "tiny", "--ppo.rounds", str(rounds), "--out", str(ppo)],
        ):
            if esper_main(argv) != 0:
                raise RuntimeError(f"esper {' '.join(argv)} failed")
    return heuristic, ppo


def _revision() -> str:
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "—"
    return found.stdout.strip()


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Esper telemetry and run-store costs.")
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers meaningless)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1; 0 keeps torch's default, one per core)",
    )
    parser.add_argument("--heuristic-run", type=Path, help="a recorded heuristic run directory")
    parser.add_argument("--ppo-run", type=Path, help="a recorded PPO run directory")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be at least 0")
    if (args.heuristic_run is None) != (args.ppo_run is None):
        parser.error("give both --heuristic-run and --ppo-run, or neither")
    for option, run in (("--heuristic-run", args.heuristic_run), ("--ppo-run", args.ppo_run)):
        if run is not None and not (run / "events.jsonl").is_file():
            parser.error(f"{option} {str(run)!r}: no events.jsonl there (not a run directory)")
    work = QUICK if args.quick else FULL
    default_threads = torch.get_num_threads()
    threads = args.threads or default_threads
    torch.set_num_threads(threads)
    started = time.perf_counter()
    print("esper telemetry benchmark")
    print(f"  date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"  revision  {_revision()}")
    print(
        f"  machine   {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    print(f"  threads   {torch.get_num_threads()} (torch default here: {default_threads})")
    print(f"  load      {_load()} (1/5/15-minute load average at start)")
    if args.quick:
        print("  --quick: smoke run only; too little work for the figures to mean anything")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="esper-bench-") as tmp,
            open(os.devnull, "w") as console,
        ):
            root = Path(tmp)
            if args.heuristic_run is None:
                heuristic, ppo = record_runs(root / "recorded", args.quick)
                torch.set_num_threads(threads)  # the esper commands set their own
            else:
                heuristic, ppo = args.heuristic_run, args.ppo_run
            logs = {"heuristic": heuristic / "events.jsonl", "ppo": ppo / "events.jsonl"}
            trials = [
                epoch_overhead(work, root / "epochs", console, trial)
                for trial in range(work.trials)
            ]
            events = trials[0][1]
            epoch_s = report_epochs(work, [arms for arms, _ in trials], events)
            print(f"\n2. emit cost per event: recorded logs replayed, median of {work.repeats}")
            costs = emit_costs(work, logs, root / "emit", console)
            report_emit(costs, events / work.epochs, epoch_s)
            run_store(work, logs, root / "store")
            tail_costs(work, logs["heuristic"], root)
    finally:
        torch.set_num_threads(default_threads)
    print(f"\n  load      {_load()} (at the end)")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
