"""PPO training of the Tamiyo policy: collect a round in lockstep, then learn from it.

A **round** is one episode in every environment. ``PPOTrainer.run_round``:

1. hands the environments the round's policy (``acting.RoundPolicy``: the network and the
   observation statistics *frozen for the round*); they run their episodes where they are (in
   this process, or one call per Ray actor) with a fresh LSTM state each, the policy acting for
   each environment before every step;
2. assembles the trajectories into the round's rollout batch (``rollout_batch``; with
   ``ppo.reward_scaling`` rewards are divided by the discounted return's standard deviation
   so far, also frozen for the round): a truncation
   bootstraps from V(final observation) with the LSTM state before any reset (unless
   ``ppo.horizon`` is ``termination``: the length ends the episode); a termination
   (governor panic) bootstraps nothing, and that environment sits out the rest of the round;
3. updates the observation normalizer once with the round's raw observations (and the return
   statistics with its discounted returns);
4. runs the PPO update and the anomaly detector, and emits the round's telemetry: its
   ``PPOUpdate`` is also the round's row of ``rounds.csv``.

Telemetry goes through an ``emit`` callable, as in Tolaria. The trainer owns the telemetry
level: the configured one, raised to DEBUG for ``ESCALATION_ROUNDS`` rounds after an anomaly,
handed to the sinks' filter through ``set_level``.

Everything a resumed run needs (policy, optimizer, grad scaler, normalizer, every random state,
counters) is in ``state_dict``; a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from esper.leyline.events import (
    AnomalyDetected,
    EpisodeFinished,
    Event,
    PolicyDecision,
    PPOHeadStats,
    PPOUpdate,
    RatioExplosion,
    TelemetryLevel,
)
from esper.seeding import policy_seed, shuffle_seed
from esper.simic.acting import RoundPolicy, Trajectory
from esper.simic.anomaly import ESCALATION_ROUNDS, Anomaly, detect_anomalies
from esper.simic.config import TrainingConfig
from esper.simic.ppo import PPOLearner, RatioExplosionDiagnostic, UpdateResult
from esper.simic.protocol import Emit, EnvVector
from esper.simic.rollout import RolloutBatch, rollout_batch
from esper.tamiyo.actions import HEADS, ActionSpace
from esper.tamiyo.features import observation_size
from esper.tamiyo.normalizer import RunningMeanStd
from esper.tamiyo.policy import PolicyConfig, PolicyNetwork

RETURN_VAR_EPSILON = 1e-8
"""Added to the return variance before its square root: rewards that never vary divide by ~1e-4
at worst, and only after a round has been seen (before it the scale is 1)."""


SetLevel = Callable[[TelemetryLevel], None]
"""Sets the telemetry level in force (what the sinks behind ``Emit`` write)."""


class Telemetry(Protocol):
    """What a PPO run needs of its telemetry (``nissa.TelemetryHub`` is one)."""

    def emit(self, event: Event, context: dict[str, Any] | None = None) -> None:
        """Write ``event`` with ``context`` if the level in force includes it."""

    def set_level(self, level: TelemetryLevel) -> None:
        """Set the level in force."""


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class RoundResult:
    """What one round produced: its statistics (as logged and recorded), each environment's
    episode return, the ratio-explosion diagnostic and the anomaly, if any."""

    stats: PPOUpdate
    episode_returns: tuple[float, ...]
    diagnostic: RatioExplosionDiagnostic | None
    anomaly: Anomaly | None


def step_order(
    trajectories: Sequence[Trajectory], gamma: float
) -> tuple[torch.Tensor, list[float]]:
    """Every raw observation acted on (for the normalizer) and the discounted return so far
    after every step (for reward scaling), step by step across the environments."""
    raw: list[torch.Tensor] = []
    discounted: list[float] = []
    running = [0.0] * len(trajectories)
    for k in range(max(len(t) for t in trajectories)):
        for i, t in enumerate(trajectories):
            if k < len(t):
                raw.append(t.raw[k])
                running[i] = gamma * running[i] + float(t.rewards[k])
                discounted.append(running[i])
    return torch.stack(raw), discounted


class PPOTrainer:
    """Trains a policy on a set of environments with PPO.

    Args:
        vec: the environments, each round run by ``vec.collect`` (``VectorEnv``, or Ray
            workers).
        device: where the policy learns, and acts when the environments run in this process
            (Ray actors act with their own copy).
        config: the training configuration (its ``env`` group is the environments' business).
        emit: where PPO updates, episode ends, ratio explosions, anomalies and per-head
            statistics go (the policy's decisions go out where it acts, through the
            environments' emit).
        set_level: told the telemetry level at the start of every round and on an anomaly
            (``config.telemetry.level``, DEBUG while an escalation lasts).
    """

    def __init__(
        self,
        vec: EnvVector,
        device: torch.device,
        config: TrainingConfig,
        emit: Emit,
        set_level: SetLevel,
    ) -> None:
        self.config, self.emit, self._set_level = config, emit, set_level
        self.base_level = TelemetryLevel.parse(config.telemetry.level)
        self.level = self.base_level  # the level in force
        self.escalated_until = 0  # the last round logged at DEBUG after an anomaly
        self.vec = vec
        self.device = device
        self.topology = vec.topology
        self.space = ActionSpace(self.topology, config.env.auto_advance)
        self.telemetry = config.policy.slot_telemetry
        size = observation_size(self.telemetry)
        seed = config.runtime.seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(policy_seed(seed))
            self.network = PolicyNetwork(
                size,
                self.space.head_sizes,
                PolicyConfig(config.policy.hidden, config.policy.lstm_hidden),
            ).to(self.device)
        self.normalizer = RunningMeanStd(size)
        # Discounted returns seen so far (``ppo.reward_scaling``): rewards are divided by their
        # standard deviation, frozen within a round like the observation statistics.
        self.return_stats = RunningMeanStd(1) if config.ppo.reward_scaling else None
        self.policy_seed = policy_seed(seed)  # each round's acting generators derive from it
        shuffle = torch.Generator().manual_seed(shuffle_seed(seed))
        self.learner = PPOLearner(self.network, config.ppo, config.runtime.amp, shuffle)
        self.round = 0

    def train(self, after_round: Callable[[RoundResult], None]) -> None:
        """Run rounds until ``ppo.rounds`` are done, calling ``after_round`` after each."""
        while self.round < self.config.ppo.rounds:
            after_round(self.run_round())

    # ------------------------------------------------------------------------------ acting

    def run_round(self) -> RoundResult:
        """Collect one episode per environment, update the normalizer once, run PPO."""
        self.round += 1
        self._telemetry_level(self.round <= self.escalated_until)
        started = time.perf_counter()
        scale = self._reward_scale()
        policy = RoundPolicy(
            round=self.round,
            seed=self.policy_seed,
            network=self.network,
            normalizer=self.normalizer,  # frozen for the round
            space=self.space,
            slot_telemetry=self.telemetry,
            decisions=self.level.value >= PolicyDecision.level.value,
        )
        trajectories = self.vec.collect(policy)
        config = self.config.ppo
        state = self.network.initial_state(len(trajectories), torch.device("cpu"))
        batch = rollout_batch(
            trajectories, state, config.gamma, config.gae_lambda, scale, config.truncation
        )
        seen, discounted = step_order(trajectories, config.gamma)
        self.normalizer.update(seen)  # once per rollout batch, never per pass
        if self.return_stats is not None and discounted:
            self.return_stats.update(torch.tensor(discounted, dtype=torch.float64)[:, None])
        rollout_seconds = time.perf_counter() - started
        return self._learn(batch, trajectories, rollout_seconds)

    def _reward_scale(self) -> float:
        """What this round's rewards are divided by: 1 without reward scaling (or before the
        first round's returns are known), else the discounted return's standard deviation."""
        if self.return_stats is None or self.return_stats.update_count == 0:
            return 1.0
        return math.sqrt(float(self.return_stats.var[0]) + RETURN_VAR_EPSILON)

    def _learn(
        self, batch: RolloutBatch, trajectories: Sequence[Trajectory], rollout_seconds: float
    ) -> RoundResult:
        """Run PPO on the round, check it for anomalies and emit the round's telemetry."""
        returns = [sum(t.rewards.tolist()) for t in trajectories]  # in step order
        started = time.perf_counter()
        # The round is assembled on the CPU; the update runs on the policy's device.
        learned = self.learner.update(batch if self.device.type == "cpu" else batch.to(self.device))
        update_seconds = time.perf_counter() - started
        infos = [t.info for t in trajectories]
        accuracies = [i.final_val_accuracy for i in infos if i.final_val_accuracy is not None]
        stats = PPOUpdate(
            **asdict(learned.stats),
            round=self.round,
            env_steps=self.learner.env_steps,
            mean_return=_mean(returns),
            mean_final_accuracy=_mean(accuracies),
            seconds_rollout=rollout_seconds,
            seconds_update=update_seconds,
        )
        anomaly = detect_anomalies(stats, self.config.ppo.ratio_explosion)
        outcome = RoundResult(stats, tuple(returns), learned.diagnostic, anomaly)
        for i, info in enumerate(infos):
            episode = EpisodeFinished(
                episode=self.round,
                length=len(trajectories[i]),
                episode_return=returns[i],
                terminated=trajectories[i].terminated,
                final_val_accuracy=info.final_val_accuracy,
                param_count=info.param_count,
                host_param_count=info.host_param_count,
            )
            self.emit(episode, {"env": i})
        self._emit_update(outcome, learned)
        return outcome

    # ------------------------------------------------------------------------------ telemetry

    def _telemetry_level(self, debug: bool) -> None:
        """The configured level, or DEBUG (never below the configured one)."""
        wanted = TelemetryLevel.DEBUG if debug else self.base_level
        self.level = max(wanted, self.base_level, key=lambda level: level.value)
        self._set_level(self.level)

    def _emit_update(self, result: RoundResult, learned: UpdateResult) -> None:
        """The round's ``PPOUpdate``, its diagnostic and anomaly, then per-head statistics
        (DEBUG: written only while an anomaly's escalation lasts, this round included)."""
        stats, emit = result.stats, self.emit
        emit(stats, {})
        if result.diagnostic is not None:
            d = result.diagnostic
            explosion = RatioExplosion(
                round=stats.round,
                threshold=d.threshold,
                heads=d.heads,
                steps=d.steps,
                step_indices=d.step_indices,
                ratio_max=d.ratio_max,
                ratio_mean=d.ratio_mean,
            )
            emit(explosion, {})
        if result.anomaly is not None:
            self.escalated_until = self.round + ESCALATION_ROUNDS
            self._telemetry_level(debug=True)
            anomaly = AnomalyDetected(
                round=stats.round,
                kinds=result.anomaly.kinds,
                detail=result.anomaly.detail,
                escalated_to=self.level.name.lower(),
                rounds=ESCALATION_ROUNDS,
            )
            emit(anomaly, {})
        for h in HEADS:
            head = PPOHeadStats(
                round=stats.round,
                head=h,
                entropy=learned.head_entropy[h],
                ratio_max=learned.head_ratio_max[h],
                relevant_fraction=learned.head_relevance[h],
            )
            emit(head, {})

    # ------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """Policy, optimizer, scaler, normalizer, random states, counters, environments."""
        return {
            "round": self.round,
            "policy": self.network.state_dict(),
            "learner": self.learner.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "return_stats": None if self.return_stats is None else self.return_stats.state_dict(),
            "envs": self.vec.state_dicts(),
            "escalated_until": self.escalated_until,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict`` output."""
        self.round = int(state["round"])
        self.network.load_state_dict(state["policy"])
        self.learner.load_state_dict(state["learner"])
        self.normalizer.load_state_dict(state["normalizer"])
        if self.return_stats is not None:
            self.return_stats.load_state_dict(state["return_stats"])
        self.vec.load_state_dicts(state["envs"])
        self.escalated_until = int(state["escalated_until"])
