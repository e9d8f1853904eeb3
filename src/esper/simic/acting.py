"""Acting for one round, where the environments are: one episode each, one trajectory each.

The learner hands ``collect`` a ``RoundPolicy``: the policy network with the observation
statistics frozen for the round. In-process it gets the trainer's own objects;
with Ray workers (``esper.simic.workers``) each actor receives one pickled copy per round and
runs its chunk of environments without calling back. The environments step in lockstep (their
hosts train grouped, ``VectorEnv.step``), the policy acts for each before every step, and each
environment's ``Trajectory`` (what it saw, chose and was paid, as tensors) goes back to the
learner, which assembles the round's rollout batch (``PPOTrainer``).

An environment's actions do not depend on where it ran. The policy acts for each environment
alone, a batch of one (a batched matrix product rounds differently with the batch size, so
acting for a chunk at once would tie an environment's log-probabilities to its neighbours), and
samples from a generator of its own, seeded by the policy seed, the round and the environment's
index (``esper.seeding.acting_seed``). A dead actor's environments therefore re-run their
episodes identically from their start, and a run on workers whose hosts are grouped as the
in-process run groups them equals it bit for bit.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from esper.leyline import Action, Observation
from esper.seeding import acting_seed
from esper.simic.protocol import Emit, EpisodeInfo
from esper.tamiyo.actions import ActionMasks, ActionSpace
from esper.tamiyo.features import encode_observation
from esper.tamiyo.normalizer import RunningMeanStd
from esper.tamiyo.policy import LSTMState, PolicyNetwork

if TYPE_CHECKING:
    from esper.simic.vector import VectorEnv


@dataclass(frozen=True)
class RoundPolicy:
    """What acting for one round needs; nothing in it changes during the round.

    Attributes:
        round: the round (1-based); also each decision's ``episode`` in telemetry.
        seed: the policy seed (``esper.seeding.policy_seed``), root of the acting
            generators.
        network: the policy; it acts on its parameters' device.
        normalizer: the observation statistics, frozen for the round.
        space: the action space (masks, decoding, decision events).
        slot_telemetry: whether observations carry per-slot telemetry (``policy.slot_telemetry``).
        decisions: emit a ``PolicyDecision`` per step (the telemetry level includes them).
    """

    round: int
    seed: int
    network: PolicyNetwork
    normalizer: RunningMeanStd
    space: ActionSpace
    slot_telemetry: bool
    decisions: bool

    @property
    def device(self) -> torch.device:
        """Where the policy acts: its parameters' device."""
        return self.network.value_head.weight.device

    def generator(self, env: int) -> torch.Generator:
        """Environment ``env``'s sampling generator for this round, on the policy's device."""
        seed = acting_seed(self.seed, self.round, env)
        return torch.Generator(device=self.device).manual_seed(seed)


@dataclass(frozen=True)
class Trajectory:
    """One environment's episode in a round, on the CPU (``T`` steps).

    Attributes:
        raw: ``(T, D)`` encoded observations the policy acted on, before normalization.
        obs: ``(T, D)`` the same, normalized (what the policy saw).
        masks: the action masks, batched to ``(T, …)``.
        actions: ``(T, 5)`` chosen indices per head.
        log_prob: ``(T,)`` log π(a|s) at acting time.
        values: ``(T,)`` V(s) at acting time.
        rewards: ``(T,)`` float64 rewards as the environment paid them (unscaled).
        terminated: the episode ended by termination (a governor panic), not truncation.
        bootstrap: V(final observation) with the LSTM state before any reset when truncated;
            0 when terminated.
        info: how the episode ended.
    """

    raw: Tensor
    obs: Tensor
    masks: ActionMasks
    actions: Tensor
    log_prob: Tensor
    values: Tensor
    rewards: Tensor
    terminated: bool
    bootstrap: float
    info: EpisodeInfo

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def to_device(obs: Tensor, masks: ActionMasks, device: torch.device) -> tuple[Tensor, ActionMasks]:
    """``obs`` and ``masks`` on ``device`` in one copy (``pack_inputs``), which on a GPU leaves
    from pinned memory without making the host wait (six blocking copies did, every step)."""
    if device.type == "cpu":
        return obs, masks
    flat = pack_inputs(obs, masks)
    if device.type == "cuda":
        flat = flat.pin_memory()
    return unpack_inputs(flat.to(device, non_blocking=True), obs, masks)


def pack_inputs(obs: Tensor, masks: ActionMasks) -> Tensor:
    """``obs`` and every mask flattened into one tensor of ``obs``'s dtype (exact for masks)."""
    parts = [obs, *(getattr(masks, f.name) for f in fields(masks))]
    return torch.cat([part.reshape(-1).to(obs.dtype) for part in parts])


def unpack_inputs(flat: Tensor, obs: Tensor, masks: ActionMasks) -> tuple[Tensor, ActionMasks]:
    """``pack_inputs`` undone, on ``flat``'s device (``obs`` and ``masks`` give the shapes)."""
    names = [f.name for f in fields(masks)]
    shapes = [obs.shape, *(getattr(masks, name).shape for name in names)]
    pieces = torch.split(flat, [shape.numel() for shape in shapes])
    obs_on, *masks_on = (piece.view(shape) for piece, shape in zip(pieces, shapes, strict=True))
    return obs_on, ActionMasks(**{name: m != 0 for name, m in zip(names, masks_on, strict=True)})


class _Episode:
    """One environment's side of the lockstep loop: its LSTM state, generator and record."""

    def __init__(self, policy: RoundPolicy, index: int, observation: Observation) -> None:
        self.policy, self.index, self.observation = policy, index, observation
        self.device = policy.device
        self.state: LSTMState = policy.network.initial_state(1, self.device)
        self.generator = policy.generator(index)
        self.steps: list[tuple[Tensor, Tensor, ActionMasks, Tensor, Tensor, Tensor]] = []
        self.rewards: list[float] = []
        self.terminated, self.bootstrap, self.alive = False, 0.0, True

    def _normalized(self, raw: Tensor) -> Tensor:
        """``(1, D)``, normalized with the round's statistics, on the CPU."""
        return self.policy.normalizer.normalize(raw[None])

    def act(self, emit: Emit) -> Action:
        """Choose this step's action for the current observation (and emit the decision)."""
        policy = self.policy
        raw = encode_observation(self.observation, policy.slot_telemetry)
        obs = self._normalized(raw)
        mask = policy.space.masks(self.observation)
        with torch.no_grad():
            step = policy.network.act(
                *to_device(obs, ActionMasks.stack([mask]), self.device),
                self.state,
                generator=self.generator,
            )
        self.state = step.state
        # one copy to the CPU (one synchronisation on a GPU): the actions are small integers,
        # exact in float64 as the float32 log-probability and value are
        parts = (step.actions[0], step.log_prob[:1], step.value[:1])
        out = torch.cat([part.double() for part in parts]).cpu()
        chosen, log_prob, value = out[:-2].long(), out[-2].float(), out[-1].float()
        self.steps.append((raw, obs[0], mask, chosen, log_prob, value))
        indices = chosen.tolist()
        if policy.decisions:
            epoch = self.observation.signals.epoch
            event = policy.space.decision(mask, indices, epoch, float(log_prob), float(value))
            emit(event, {"env": self.index, "episode": policy.round})
        return policy.space.decode(indices)

    def record(self, observation: Observation, reward: float, terminated: bool, done: bool) -> None:
        """The step's outcome; at a truncation, V(final observation) for the bootstrap."""
        self.observation = observation
        self.rewards.append(reward)
        if not done:
            return
        self.alive, self.terminated = False, terminated
        if not terminated:
            raw = encode_observation(observation, self.policy.slot_telemetry)
            start = torch.zeros(1, 1, dtype=torch.bool, device=self.device)
            obs = self._normalized(raw).unsqueeze(1).to(self.device)
            with torch.no_grad():
                out = self.policy.network(obs, self.state, start)
            self.bootstrap = float(out.value[0, 0])

    def trajectory(self, info: EpisodeInfo) -> Trajectory:
        raw, obs, masks, actions, log_prob, values = zip(*self.steps, strict=True)
        return Trajectory(
            raw=torch.stack(raw),
            obs=torch.stack(obs),
            masks=ActionMasks.stack(masks),
            actions=torch.stack(actions),
            log_prob=torch.stack(log_prob),
            values=torch.stack(values),
            rewards=torch.tensor(self.rewards, dtype=torch.float64),
            terminated=self.terminated,
            bootstrap=self.bootstrap,
            info=info,
        )


def lockstep(
    vec: VectorEnv, policy: RoundPolicy, emit: Emit
) -> Generator[None, None, list[Trajectory]]:
    """Run one episode in every environment of ``vec``, the policy acting for each; a
    generator that pauses after the reset and after every lockstep step (a Ray actor streams
    the telemetry emitted so far at each pause) and returns the trajectories.

    Args:
        vec: the environments (``vec.indices``: their indices in the run).
        policy: the round's policy.
        emit: where decisions go (the environments emit their own telemetry).

    Returns:
        One trajectory per environment, in ``vec``'s order.

    Raises:
        RuntimeError: an environment's episode did not end within ``vec.max_steps`` steps.
    """
    first = vec.reset()
    episodes = [_Episode(policy, i, o) for i, o in zip(vec.indices, first, strict=True)]
    yield
    for _ in range(vec.max_steps):
        if not any(e.alive for e in episodes):
            break
        actions: Sequence[Action | None] = [e.act(emit) if e.alive else None for e in episodes]
        for episode, result in zip(episodes, vec.step(actions), strict=True):
            if result is not None:
                episode.record(result.observation, result.reward, result.terminated, result.done)
        yield
    late = [e.index for e in episodes if e.alive]
    if late:
        raise RuntimeError(f"environments {late} did not end")
    infos = vec.episode_infos()
    return [e.trajectory(info) for e, info in zip(episodes, infos, strict=True)]


def collect(vec: VectorEnv, policy: RoundPolicy, emit: Emit) -> list[Trajectory]:
    """``lockstep`` run to its end: one trajectory per environment of ``vec``."""
    steps = lockstep(vec, policy, emit)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            trajectories: list[Trajectory] = done.value
            return trajectories
