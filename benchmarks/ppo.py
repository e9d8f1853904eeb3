"""PPO trainer cost: environment-step throughput, the policy's share of a run, a wide update.

Measures ``esper.simic``'s ``PPOTrainer`` on the ``synthetic`` task, every trainer built from the
``tiny`` preset with a few overrides, in one run:

* **scaling**: environment steps per second of whole rounds (``run_round``: rollout, PPO update,
  telemetry) for ``n_envs`` = 1, 2, 4 and 8, as a ratio to ``n_envs`` = 1. The trainers are
  interleaved round by round so that slow drift of the machine hits all of them alike. The
  environments run in one process (their hosts grouped when small enough, ``VectorEnv``) and
  the policy acts for each environment alone, so on a CPU the expected scaling is about flat:
  this measures per-round overheads, not parallel environments;
* **share**: the time of policy inference (``network.act``; the truncation bootstrap's one
  forward pass per episode is not counted) plus the PPO update (``PPOUpdate.seconds_update``)
  over the whole round (rollout + update), target <= 10%. The rest of the rollout (host
  training in the environments, their resets, observation encoding and masks) is host/env
  time. The share depends on how much host training one step does, so it is reported for the
  tiny preset's host budget (4 batches per epoch) and for a more realistic one (50 batches
  per epoch);
* **wide update**: PPO update seconds per round with a 512-wide observation MLP and LSTM,
  ``n_envs`` = 4, 12-epoch episodes and the default 4 update passes, next to the 32-wide tiny
  policy on rollouts of the same shape in the same run. Issue #4 quotes the reference
  implementation at about 1.7-2.3 s per round on this machine (its figure, not re-measured).

Every trainer runs one untimed warm-up round (first-call allocations) before timing. Torch runs
one intra-op thread unless ``--threads`` says otherwise: the work is many small operations, and
on a 2-core machine shared with other work a second thread makes each of them wait for a
descheduled partner (with one other busy process, a tiny one-environment round took 0.08-0.16 s
with one thread and 4-10 s with two).

Usage::

    .venv/bin/python benchmarks/ppo.py            # ~1 minute on 2 cores
    .venv/bin/python benchmarks/ppo.py --quick    # smoke run (numbers meaningless)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from esper.leyline.config import override
from esper.nissa import TelemetryHub
from esper.simic.build import build_trainer
from esper.simic.config import TrainingConfig, load_preset
from esper.simic.training import PPOTrainer, RoundResult
from esper.study.checks import load_data

PRESET = "tiny"
TASK = "synthetic"
SHARE_TARGET = 0.10  # policy inference + PPO update at most 10% of a run's time
TINY_BATCHES = 4  # the tiny preset's host batches per epoch
REALISTIC_BATCHES = 50  # a host epoch closer to a real task's (the fashion preset trains 100)
WIDE = 512  # the wide policy's MLP and LSTM width
DEFAULT_PPO_EPOCHS = 4  # PPOSettings' default update passes (the tiny preset uses 2)
REFERENCE_UPDATE_S = (1.7, 2.3)  # issue #4: the reference implementation, seconds per update


@dataclass(frozen=True)
class Workload:
    """How big each part of the benchmark is.

    Attributes:
        env_counts: ``n_envs`` of the scaling part, baseline (1) first.
        episode_length: host epochs per episode in the scaling and share parts.
        rounds: timed rounds per trainer (after one warm-up round).
        share_budgets: host batches per epoch of the share part.
        share_envs: ``n_envs`` of the share part.
        wide_envs: ``n_envs`` of the wide-update part.
        wide_episode_length: episode length of the wide-update part.
        wide_ppo_epochs: update passes of the wide-update part.
    """

    env_counts: tuple[int, ...]
    episode_length: int
    rounds: int
    share_budgets: tuple[int, ...]
    share_envs: int
    wide_envs: int
    wide_episode_length: int
    wide_ppo_epochs: int


FULL = Workload(
    (1, 2, 4, 8), 5, 10, (TINY_BATCHES, REALISTIC_BATCHES), 2, 4, 12, DEFAULT_PPO_EPOCHS
)
QUICK = Workload((1, 2), 3, 1, (2, 4), 1, 2, 3, 1)


def make_trainer(overrides: dict[str, Any]) -> PPOTrainer:
    """A trainer from the tiny preset with ``overrides`` (a ``leyline.config.override`` tree)."""
    base = load_preset(PRESET)
    config: TrainingConfig = override(
        base, {**overrides, "env": {"task": TASK, **overrides["env"]}}
    )
    config = config.resolved()
    trainer, _ = build_trainer(config, TelemetryHub("bench", []), load_data(config.env))
    return trainer


class InferenceTimer:
    """Accumulates the seconds a trainer spends in rollout forward passes of its policy.

    Wraps ``trainer.network.act`` (one action per environment and step) on the instance; the
    bootstrap value of a truncated episode (one forward pass per episode) is not counted, and
    the update's forward passes are part of ``PPOUpdate.seconds_update``.
    """

    def __init__(self, trainer: PPOTrainer) -> None:
        self.seconds = 0.0
        trainer.network.act = self._timed(trainer.network.act)  # type: ignore[method-assign]

    def _timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


@dataclass(frozen=True)
class Timed:
    """One timed round of one trainer."""

    steps: int  # environment steps this round, all environments
    wall: float  # seconds of the whole ``run_round`` call
    result: RoundResult


def timed_round(trainer: PPOTrainer) -> Timed:
    """Run one round and time it; the step count is the difference of the cumulative count."""
    before = trainer.learner.env_steps
    started = time.perf_counter()
    result = trainer.run_round()
    wall = time.perf_counter() - started
    return Timed(result.stats.env_steps - before, wall, result)


def interleaved(trainers: Sequence[PPOTrainer], rounds: int) -> list[list[Timed]]:
    """One warm-up round per trainer, then ``rounds`` rounds visiting every trainer in turn.

    Returns:
        ``timed[trainer][round]``.
    """
    for trainer in trainers:
        trainer.run_round()
    timed: list[list[Timed]] = [[] for _ in trainers]
    for _ in range(rounds):
        for trainer, bucket in zip(trainers, timed, strict=True):
            bucket.append(timed_round(trainer))
    return timed


# --------------------------------------------------------------------------------------------
# the three parts


def scaling(work: Workload) -> None:
    """Environment steps/s of whole rounds per ``n_envs``, as ratios to the first (n_envs=1)."""
    trainers = [
        make_trainer({"env": {"epochs": work.episode_length}, "ppo": {"n_envs": n}})
        for n in work.env_counts
    ]
    timed = interleaved(trainers, work.rounds)
    base = timed[0]
    base_rate = sum(t.steps for t in base) / sum(t.wall for t in base)
    print(
        f"\n1. scaling: {TASK}, episode_length {work.episode_length}, host "
        f"{TINY_BATCHES} batches/epoch, {work.rounds} interleaved rounds after 1 warm-up"
    )
    header = (
        f"{'n_envs':>6} {'steps/round':>11} {'s/round':>8} {'env-steps/s':>11} "
        f"{'ratio':>7} {'paired':>7} {'update':>7}"
    )
    print(header)
    print("-" * len(header))
    for n, rounds in zip(work.env_counts, timed, strict=True):
        rate = sum(t.steps for t in rounds) / sum(t.wall for t in rounds)
        paired = statistics.median(
            (t.steps / t.wall) / (b.steps / b.wall) for t, b in zip(rounds, base, strict=True)
        )
        update = sum(t.result.stats.seconds_update for t in rounds) / sum(t.wall for t in rounds)
        print(
            f"{n:>6} {rounds[0].steps:>11} {statistics.median(t.wall for t in rounds):>8.2f} "
            f"{rate:>11.2f} {rate / base_rate:>6.2f}x {paired:>6.2f}x {update:>6.1%}"
        )
    print(
        "ratio: total steps / total seconds against n_envs=1; paired: median of per-round ratios;"
        "\nupdate: PPO update share of the wall time. Environments step sequentially on a CPU,"
        "\nso about 1.0x is the expected scaling."
    )


def share(work: Workload) -> None:
    """(inference + update) / (rollout + update) for each host budget, against the target."""
    print(
        f"\n2. policy share: {TASK}, n_envs {work.share_envs}, episode_length "
        f"{work.episode_length}, tiny policy, {work.rounds} rounds after 1 warm-up"
    )
    header = (
        f"{'host batches/epoch':>18} {'host/env s':>10} {'infer s':>8} {'update s':>8} "
        f"{'share':>7}  target <= {SHARE_TARGET:.0%}"
    )
    print(header)
    print("-" * len(header))
    trainers, timers = [], []
    for batches in work.share_budgets:
        env = {"epochs": work.episode_length, "batches_per_epoch": batches}
        trainer = make_trainer({"env": env, "ppo": {"n_envs": work.share_envs}})
        trainer.run_round()  # warm-up before the timers are installed
        trainers.append(trainer)
        timers.append(InferenceTimer(trainer))
    timed: list[list[Timed]] = [[] for _ in trainers]
    for _ in range(work.rounds):
        for trainer, bucket in zip(trainers, timed, strict=True):
            bucket.append(timed_round(trainer))
    for batches, timer, rounds in zip(work.share_budgets, timers, timed, strict=True):
        rollout = sum(t.result.stats.seconds_rollout for t in rounds)
        update = sum(t.result.stats.seconds_update for t in rounds)
        host = rollout - timer.seconds
        fraction = (timer.seconds + update) / (rollout + update)
        verdict = "ok" if fraction <= SHARE_TARGET else "MISS"
        print(
            f"{batches:>18} {host:>10.2f} {timer.seconds:>8.3f} {update:>8.3f} "
            f"{fraction:>6.1%}  {verdict}"
        )
    print(
        "host/env: rollout minus inference (host training, resets, encoding, masks); seconds"
        "\nsummed over the timed rounds; share = (inference + update) / (rollout + update)."
    )


def wide_update(work: Workload) -> None:
    """PPO update seconds per round of the 512-wide policy next to the tiny 32-wide one."""
    env = {"epochs": work.wide_episode_length}
    ppo = {"n_envs": work.wide_envs, "ppo_epochs": work.wide_ppo_epochs}
    tiny = make_trainer({"env": env, "ppo": ppo})
    wide = make_trainer({"env": env, "ppo": ppo, "policy": {"hidden": WIDE, "lstm_hidden": WIDE}})
    timed = interleaved([tiny, wide], work.rounds)
    print(
        f"\n3. PPO update per round: n_envs {work.wide_envs}, episode_length "
        f"{work.wide_episode_length}, up to {work.wide_ppo_epochs} passes (target KL may stop "
        f"early), {work.rounds} interleaved rounds after 1 warm-up"
    )
    header = f"{'policy':<22} {'update s':>9} {'min-max s':>12} {'passes':>7} {'s/pass':>7}"
    print(header)
    print("-" * len(header))
    medians = []
    names = (
        f"tiny ({tiny.config.policy.hidden}/{tiny.config.policy.lstm_hidden})",
        f"wide ({WIDE}/{WIDE})",
    )
    for name, rounds in zip(names, timed, strict=True):
        seconds = [t.result.stats.seconds_update for t in rounds]
        passes = [t.result.stats.passes for t in rounds]
        median = statistics.median(seconds)
        medians.append(median)
        spread = f"{min(seconds):.3f}-{max(seconds):.3f}"
        per_pass = sum(seconds) / sum(passes)
        print(
            f"{name:<22} {median:>9.3f} {spread:>12} {statistics.mean(passes):>7.1f} "
            f"{per_pass:>7.3f}"
        )
    low, high = REFERENCE_UPDATE_S
    print(
        f"wide / tiny: {medians[1] / medians[0]:.2f}x (medians). Issue #4 quotes the reference "
        f"implementation at\n~{low}-{high} s per update round on this machine (its figure, not "
        f"re-measured): wide here {medians[1]:.3f} s."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Esper PPO trainer benchmark.")
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers meaningless)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1; 0 keeps torch's default, one per core)",
    )
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be at least 0")
    work = QUICK if args.quick else FULL
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)

    print("esper PPO benchmark")
    print(f"  date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"  machine   {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    print(f"  threads   {torch.get_num_threads()} (torch default here: {default_threads})")
    print(f"  workload  preset {PRESET!r} on task {TASK!r}, CPU, telemetry to no sink")
    if args.quick:
        print("  --quick: smoke run only; too little work for the figures to mean anything")
    started = time.perf_counter()
    try:
        scaling(work)
        share(work)
        wide_update(work)
    finally:
        torch.set_num_threads(default_threads)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
