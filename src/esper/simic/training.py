"""PPO training of the Tamiyo policy: collect a round in lockstep, then learn from it.

A **round** is one episode in every environment. ``PPOTrainer.run_round``:

1. resets every environment and the policy's LSTM state (episodes never share hidden state);
2. steps all environments together: encode each observation, normalize it with the running
   statistics *frozen for the round*, act for all environments in one batched call (action,
   log-prob and value from one sampling call), step the environments, record rewards (with
   ``ppo.reward_scaling``, divided by the discounted return's standard deviation so far, also
   frozen for the round);
3. at a truncation, bootstraps from V(final observation) with the LSTM state before any reset;
   a termination (governor panic) bootstraps nothing, and that environment sits out the round;
4. updates the observation normalizer once with the round's raw observations (and the return
   statistics with its discounted returns);
5. runs the PPO update and the anomaly detector, and emits the round's telemetry: its
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

from esper.leyline import Action, Observation
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
from esper.simic.anomaly import ESCALATION_ROUNDS, Anomaly, detect_anomalies
from esper.simic.config import TrainingConfig
from esper.simic.ppo import PPOLearner, RatioExplosionDiagnostic, UpdateResult
from esper.simic.protocol import EnvStep, EnvVector
from esper.simic.rollout import RolloutBatch, RolloutBuffer
from esper.tamiyo.actions import HEADS, ActionMasks, ActionSpace
from esper.tamiyo.features import encode_observation, observation_size
from esper.tamiyo.normalizer import RunningMeanStd
from esper.tamiyo.policy import ActStep, PolicyConfig, PolicyNetwork

RETURN_VAR_EPSILON = 1e-8
"""Added to the return variance before its square root: rewards that never vary divide by ~1e-4
at worst, and only after a round has been seen (before it the scale is 1)."""

POLICY_SEED_OFFSET = 7919
"""The policy's sampling and shuffling generators use ``seed + offset`` so they never share a
stream with environment 0 (which uses ``seed``)."""

Emit = Callable[[Event, dict[str, Any]], None]
"""Where telemetry goes: an event and its context (``{"env": i, "episode": k}`` or empty)."""

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


class _RoundTally:
    """Per environment over one round: returns (in reward units), the discounted return so far
    at every step (for reward scaling), episode lengths, and whether the episode terminated."""

    def __init__(self, n: int, gamma: float, scale: float) -> None:
        self.gamma, self.scale = gamma, scale
        self.returns = [0.0] * n
        self.running = [0.0] * n
        self.discounted: list[float] = []
        self.lengths = [0] * n
        self.terminated = [False] * n

    def record(
        self, results: Sequence[EnvStep | None], observations: list[Observation]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Take one step's results (None: the environment had already ended), put each new
        observation into ``observations``; the scaled rewards, and which episodes ended and
        which of those terminated."""
        n = len(results)
        rewards = torch.zeros(n)
        ended = torch.zeros(n, dtype=torch.bool)
        terminated = torch.zeros(n, dtype=torch.bool)
        for i, result in enumerate(results):
            if result is None:
                continue
            observations[i] = result.observation
            rewards[i] = result.reward / self.scale
            self.returns[i] += result.reward
            self.running[i] = self.gamma * self.running[i] + result.reward
            self.discounted.append(self.running[i])
            self.lengths[i] += 1
            ended[i], terminated[i] = result.done, result.terminated
            self.terminated[i] = self.terminated[i] or result.terminated
        return rewards, ended, terminated


class PPOTrainer:
    """Trains a policy on a set of environments with PPO.

    Args:
        vec: the environments, stepped together (``VectorEnv``, or Ray workers); the policy
            lives on ``device``.
        device: where the policy acts and learns.
        config: the training configuration (its ``env`` group is the environments' business).
        emit: where PPO updates, episode ends, decisions and anomalies go.
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
        policy_seed = config.runtime.seed + POLICY_SEED_OFFSET
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(policy_seed)
            self.network = PolicyNetwork(
                size,
                self.space.head_sizes,
                PolicyConfig(config.policy.hidden, config.policy.lstm_hidden),
            ).to(self.device)
        self.normalizer = RunningMeanStd(size)
        # Discounted returns seen so far (``ppo.reward_scaling``): rewards are divided by their
        # standard deviation, frozen within a round like the observation statistics.
        self.return_stats = RunningMeanStd(1) if config.ppo.reward_scaling else None
        self.generator = torch.Generator(device=self.device).manual_seed(policy_seed)
        shuffle = torch.Generator().manual_seed(policy_seed + 1)
        self.learner = PPOLearner(self.network, config.ppo, config.runtime.amp, shuffle)
        self.round = 0
        self.max_steps = vec.max_steps

    def train(self, after_round: Callable[[RoundResult], None]) -> None:
        """Run rounds until ``ppo.rounds`` are done, calling ``after_round`` after each."""
        while self.round < self.config.ppo.rounds:
            after_round(self.run_round())

    # ------------------------------------------------------------------------------ acting

    def _encode(self, observations: Sequence[Any]) -> torch.Tensor:
        return torch.stack([encode_observation(o, self.telemetry) for o in observations])

    def run_round(self) -> RoundResult:
        """Collect one episode per environment, update the normalizer once, run PPO."""
        self.round += 1
        self._telemetry_level(self.round <= self.escalated_until)
        started = time.perf_counter()
        n, net, space = len(self.vec), self.network, self.space
        observations = self.vec.reset()
        raw = self._encode(observations)  # (N, D)
        state = net.initial_state(n, self.device)
        buffer = RolloutBuffer(n, self.config.ppo.gamma, self.config.ppo.gae_lambda)
        buffer.start(state)
        alive = torch.ones(n, dtype=torch.bool)
        episode_start = torch.ones(n, dtype=torch.bool)
        tally = _RoundTally(n, self.config.ppo.gamma, self._reward_scale())
        seen: list[torch.Tensor] = []
        for _ in range(self.max_steps):
            if not alive.any():
                break
            env_masks = [space.masks(o) for o in observations]
            masks = ActionMasks.stack(env_masks).to(self.device)
            obs = self.normalizer.normalize(raw).to(self.device)  # statistics frozen this round
            seen.append(raw[alive])
            with torch.no_grad():
                step = net.act(obs, masks, state, generator=self.generator)
            buffer.add(obs, masks, step.actions, step.log_prob, step.value, episode_start, alive)
            chosen = step.actions.cpu().tolist()
            self._emit_decisions(env_masks, observations, chosen, step, alive)
            actions: list[Action | None] = [
                space.decode(chosen[i]) if alive[i] else None for i in range(n)
            ]
            rewards, ended, terminated = tally.record(self.vec.step(actions), observations)
            raw = self._encode(observations)
            bootstrap = self._bootstrap(raw, step.state, ended & ~terminated)
            buffer.record_outcome(rewards, ended, terminated, bootstrap.cpu())
            alive &= ~ended
            state = step.state
            episode_start = torch.zeros(n, dtype=torch.bool)
        if alive.any():
            raise RuntimeError(f"environments {alive.nonzero().flatten().tolist()} did not end")
        batch = buffer.build()
        self.normalizer.update(torch.cat(seen))  # once per rollout batch, never per pass
        if self.return_stats is not None and tally.discounted:
            self.return_stats.update(torch.tensor(tally.discounted, dtype=torch.float64)[:, None])
        rollout_seconds = time.perf_counter() - started
        return self._learn(batch, tally.returns, tally.lengths, tally.terminated, rollout_seconds)

    def _reward_scale(self) -> float:
        """What this round's rewards are divided by: 1 without reward scaling (or before the
        first round's returns are known), else the discounted return's standard deviation."""
        if self.return_stats is None or self.return_stats.update_count == 0:
            return 1.0
        return math.sqrt(float(self.return_stats.var[0]) + RETURN_VAR_EPSILON)

    def _learn(
        self,
        batch: RolloutBatch,
        returns: list[float],
        lengths: list[int],
        terminated: list[bool],
        rollout_seconds: float,
    ) -> RoundResult:
        """Run PPO on the round, check it for anomalies and emit the round's telemetry."""
        started = time.perf_counter()
        # The round is assembled on the CPU; the update runs on the policy's device.
        learned = self.learner.update(batch if self.device.type == "cpu" else batch.to(self.device))
        update_seconds = time.perf_counter() - started
        infos = self.vec.episode_infos()
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
                length=lengths[i],
                episode_return=returns[i],
                terminated=terminated[i],
                final_val_accuracy=info.final_val_accuracy,
                param_count=info.param_count,
                host_param_count=info.host_param_count,
            )
            self.emit(episode, {"env": i})
        self._emit_update(outcome, learned)
        return outcome

    def _bootstrap(
        self, raw: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], which: torch.Tensor
    ) -> torch.Tensor:
        """V(final observation) for truncated episodes, with the state before any reset."""
        values = torch.zeros(len(which))
        if which.any():
            idx = which.nonzero().flatten()
            obs = self.normalizer.normalize(raw[idx]).to(self.device).unsqueeze(1)  # (b, 1, D)
            sub = (state[0][:, idx.to(self.device)], state[1][:, idx.to(self.device)])
            start = torch.zeros(len(idx), 1, dtype=torch.bool, device=self.device)
            with torch.no_grad():
                out = self.network(obs, sub, start)
            values[idx] = out.value[:, 0].float().cpu()
        return values

    # ------------------------------------------------------------------------------ telemetry

    def _emit_decisions(
        self,
        masks: list[ActionMasks],
        observations: list[Observation],
        chosen: list[list[int]],
        step: ActStep,
        alive: torch.Tensor,
    ) -> None:
        """One ``PolicyDecision`` per live environment (skipped below NORMAL telemetry)."""
        if self.level.value < PolicyDecision.level.value:
            return  # building the event costs more than the decision; nothing would be written
        log_probs, values = step.log_prob.cpu().tolist(), step.value.cpu().tolist()
        for i in range(len(self.vec)):
            if alive[i]:
                epoch = observations[i].signals.epoch
                event = self.space.decision(masks[i], chosen[i], epoch, log_probs[i], values[i])
                self.emit(event, {"env": i, "episode": self.round})  # a round = one episode

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
            "generator": self.generator.get_state(),
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
        self.generator.set_state(state["generator"])
        self.vec.load_state_dicts(state["envs"])
        self.escalated_until = int(state["escalated_until"])
