"""PPO training of the Tamiyo policy: collect a round in lockstep, then learn from it.

A **round** is one episode in every environment. ``PPOTrainer.run_round``:

1. resets every environment and the policy's LSTM state (episodes never share hidden state);
2. steps all environments together: encode each observation, normalize it with the running
   statistics *frozen for the round*, act for all environments in one batched call (action,
   log-prob and value from one sampling call), step the environments, record rewards;
3. at a truncation, bootstraps from V(final observation) with the LSTM state before any reset;
   a termination (governor panic) bootstraps nothing, and that environment sits out the round;
4. updates the observation normalizer once with the round's raw observations;
5. runs the PPO update, the anomaly detector, and emits the round's telemetry.

Everything a resumed run needs (policy, optimizer, grad scaler, normalizer, every random state,
counters) is in ``state_dict``; a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from esper.leyline import Action, Observation
from esper.leyline.events import (
    AnomalyDetected,
    EpisodeFinished,
    PolicyDecision,
    PPOHeadStats,
    PPOUpdate,
    RatioExplosion,
    TelemetryLevel,
)
from esper.nissa import TelemetryHub
from esper.simic.anomaly import ESCALATION_ROUNDS, Anomaly, detect_anomalies
from esper.simic.config import TrainingConfig
from esper.simic.ppo import PPOLearner, UpdateStats
from esper.simic.protocol import Env
from esper.simic.rollout import RolloutBatch, RolloutBuffer
from esper.simic.vector import VectorEnv
from esper.tamiyo.actions import HEADS, ActionMasks, ActionSpace
from esper.tamiyo.features import encode_observation, observation_size
from esper.tamiyo.normalizer import RunningMeanStd
from esper.tamiyo.policy import ActStep, PolicyConfig, PolicyNetwork

POLICY_SEED_OFFSET = 7919
"""The policy's sampling and shuffling generators use ``seed + offset`` so they never share a
stream with environment 0 (which uses ``seed``)."""


@dataclass(frozen=True)
class RoundResult:
    """What one round produced."""

    round: int
    env_steps: int
    episode_returns: tuple[float, ...]
    stats: UpdateStats
    anomaly: Anomaly | None
    seconds_rollout: float
    seconds_update: float


class PPOTrainer:
    """Trains a policy on a set of environments with PPO.

    Args:
        envs: the environments (all with the same topology and ``max_steps``).
        devices: each environment's device; the policy lives on the first one.
        config: the training configuration (its ``env`` group is the environments' business).
        hub: telemetry (PPO updates, episode ends, anomalies; escalated on anomalies).
    """

    def __init__(
        self,
        envs: Sequence[Env],
        devices: Sequence[torch.device],
        config: TrainingConfig,
        hub: TelemetryHub,
    ) -> None:
        topologies = {env.topology for env in envs}
        if len(topologies) != 1:
            raise ValueError(f"environments must share one topology, got {topologies}")
        self.config, self.hub = config, hub
        self.vec = VectorEnv(envs, devices)
        self.device = devices[0]
        self.topology = envs[0].topology
        self.space = ActionSpace(self.topology)
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
        self.generator = torch.Generator(device=self.device).manual_seed(policy_seed)
        shuffle = torch.Generator().manual_seed(policy_seed + 1)
        self.learner = PPOLearner(self.network, config.ppo, config.runtime.amp, shuffle)
        self.round = 0
        self.max_steps = max(env.max_steps for env in envs)

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
        self.hub.tick()
        started = time.perf_counter()
        n, net, space = len(self.vec), self.network, self.space
        observations = self.vec.reset()
        raw = self._encode(observations)  # (N, D)
        state = net.initial_state(n, self.device)
        buffer = RolloutBuffer(n, self.config.ppo.gamma, self.config.ppo.gae_lambda)
        buffer.start(state)
        alive = torch.ones(n, dtype=torch.bool)
        episode_start = torch.ones(n, dtype=torch.bool)
        returns = [0.0] * n
        lengths = [0] * n
        terminated_env = [False] * n
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
            results = self.vec.step(actions)
            rewards = torch.zeros(n)
            ended = torch.zeros(n, dtype=torch.bool)
            terminated = torch.zeros(n, dtype=torch.bool)
            for i, result in enumerate(results):
                if result is None:
                    continue
                observations[i] = result.observation
                rewards[i] = result.reward
                returns[i] += result.reward
                lengths[i] += 1
                ended[i], terminated[i] = result.done, result.terminated
                terminated_env[i] = terminated_env[i] or result.terminated
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
        rollout_seconds = time.perf_counter() - started

        started = time.perf_counter()
        stats = self.learner.update(self._to_device(batch))
        update_seconds = time.perf_counter() - started
        anomaly = detect_anomalies(stats, self.config.ppo.ratio_explosion)
        round_result = RoundResult(
            self.round,
            self.learner.env_steps,
            tuple(returns),
            stats,
            anomaly,
            rollout_seconds,
            update_seconds,
        )
        self._emit_round(round_result, lengths, terminated_env)
        return round_result

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

    def _to_device(self, batch: RolloutBatch) -> RolloutBatch:
        """The round (assembled on the CPU) on the policy's device."""
        if self.device.type == "cpu":
            return batch
        moved: dict[str, Any] = {}
        for f in fields(batch):
            value = getattr(batch, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(self.device)
        moved["masks"] = batch.masks.to(self.device)
        moved["state"] = (batch.state[0].to(self.device), batch.state[1].to(self.device))
        return replace(batch, **moved)

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
        if self.hub.level.value < PolicyDecision.level.value:
            return  # building the event costs more than the decision; nothing would be written
        log_probs, values = step.log_prob.cpu().tolist(), step.value.cpu().tolist()
        for i in range(len(self.vec)):
            if alive[i]:
                epoch = observations[i].signals.epoch
                event = self.space.decision(masks[i], chosen[i], epoch, log_probs[i], values[i])
                self.hub.emit(event, {"env": i, "episode": self.round})  # a round = one episode

    def _emit_round(self, result: RoundResult, lengths: list[int], terminated: list[bool]) -> None:
        stats, hub = result.stats, self.hub
        for i, env in enumerate(self.vec.envs):
            info = env.episode_info()
            hub.emit(
                EpisodeFinished(
                    result.round,
                    lengths[i],
                    result.episode_returns[i],
                    terminated[i],
                    info.final_val_accuracy,
                    info.param_count,
                    info.host_param_count,
                ),
                {"env": i},
            )
        finished = result.episode_returns
        hub.emit(
            PPOUpdate(
                result.round,
                result.env_steps,
                stats.passes,
                stats.early_stopped,
                stats.skipped_steps,
                stats.overflow_steps,
                stats.policy_loss,
                stats.value_loss,
                stats.entropy,
                stats.approx_kl,
                stats.clip_fraction,
                stats.ratio_max,
                stats.explained_variance,
                stats.grad_norm,
                stats.entropy_coef,
                sum(finished) / len(finished) if finished else None,
                result.seconds_rollout,
                result.seconds_update,
            )
        )
        if stats.diagnostic is not None:
            d = stats.diagnostic
            hub.emit(
                RatioExplosion(
                    result.round,
                    d.threshold,
                    d.heads,
                    d.steps,
                    d.step_indices,
                    d.ratio_max,
                    d.ratio_mean,
                )
            )
        if result.anomaly is not None:
            hub.escalate(TelemetryLevel.DEBUG, ESCALATION_ROUNDS + 1)  # + this round
            hub.emit(
                AnomalyDetected(
                    result.round,
                    result.anomaly.kinds,
                    result.anomaly.detail,
                    hub.level.name.lower(),
                    ESCALATION_ROUNDS,
                )
            )
        for h in HEADS:
            hub.emit(
                PPOHeadStats(
                    result.round,
                    h,
                    stats.head_entropy[h],
                    stats.head_ratio_max[h],
                    stats.head_relevance[h],
                )
            )

    # ------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """Policy, optimizer, scaler, normalizer, random states, counters, environments."""
        return {
            "round": self.round,
            "policy": self.network.state_dict(),
            "learner": self.learner.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "generator": self.generator.get_state(),
            "envs": [env.state_dict() for env in self.vec.envs],
            "telemetry": self.hub.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict`` output."""
        self.round = int(state["round"])
        self.network.load_state_dict(state["policy"])
        self.learner.load_state_dict(state["learner"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.generator.set_state(state["generator"])
        if len(state["envs"]) != len(self.vec.envs):
            raise ValueError(
                f"checkpoint has {len(state['envs'])} environments, this run {len(self.vec.envs)}"
            )
        for env, env_state in zip(self.vec.envs, state["envs"], strict=True):
            env.load_state_dict(env_state)
        self.hub.load_state_dict(state["telemetry"])
