"""The round's rollout batch and generalized advantage estimation (Schulman et al. 2016, GAE).

One round collects up to ``T`` steps from each of ``N`` environments in lockstep: one episode
per environment (``esper.simic.acting.Trajectory``). An environment whose episode ended early
(termination) sits out the rest of the round; its remaining steps are padding (``valid``
False) that no loss sees. The batch records, per step, whether an episode started there (the
policy's LSTM state was reset before acting), whether it ended there and how:

* **truncation** (the episode reached its length): the return is bootstrapped from V(s_{t+1}),
  the value of the final observation computed with the LSTM state *before* the reset (with
  ``ppo.horizon`` ``termination``, the length ends the episode: no bootstrap);
* **termination** (a governor panic): nothing comes after, the bootstrap is 0.

All tensors are (N, T, …): environment first, time second, so one environment's sequence can
be replayed through the LSTM during the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from esper.leyline.config import check_float, require
from esper.simic.acting import Trajectory
from esper.tamiyo.actions import ActionMasks


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    episode_end: Tensor,
    terminated: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Advantages and returns by GAE(γ, λ).

    δ_t = r_t + γ·(1 − term_t)·V'_t − V_t and A_t = δ_t + γλ·(1 − end_t)·A_{t+1}, where V'_t is
    the value of the state after step t (``next_values``): V_{t+1} inside an episode, the value
    of the final observation at a truncation (a round's last step always ends an episode, or
    pads one that ended). The recursion stops at every episode end; only termination drops the
    bootstrap.

    Args:
        rewards: (N, T) rewards.
        values: (N, T) V(s_t) computed when acting.
        next_values: (N, T) V'_t as above (ignored where ``terminated``).
        episode_end: (N, T) bool, an episode ended after step t (either way).
        terminated: (N, T) bool, it ended by termination.
        gamma: discount.
        lam: GAE λ.

    Returns:
        ``(advantages, returns)``, each (N, T) in the inputs' dtype; returns = advantages +
        values.

    Raises:
        ValueError: the tensors are not all (N, T) (rewards and values of one floating dtype,
            the flags bool), or γ or λ is not a number in [0, 1].
    """
    named = {"rewards": rewards, "values": values, "next_values": next_values}
    _check_gae_inputs(named, {"episode_end": episode_end, "terminated": terminated}, gamma, lam)
    not_term = (~terminated).to(rewards.dtype)
    not_end = (~episode_end).to(rewards.dtype)
    deltas = rewards + gamma * not_term * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = deltas[:, t] + gamma * lam * not_end[:, t] * running
        advantages[:, t] = running
    return advantages, advantages + values


def _check_gae_inputs(
    named: dict[str, Tensor], flags: dict[str, Tensor], gamma: float, lam: float
) -> None:
    """``compute_gae``'s inputs (its float tensors ``named``, rewards first, and its bool
    ``flags``) are what it computes with: integer rewards made whole-number advantages, 0/1
    integer flags were inverted bitwise (``~1`` is -2), and a ``(N,)`` bootstrap broadcast
    along time."""
    check_float("gamma", gamma, 0.0, 1.0)
    check_float("lam", lam, 0.0, 1.0)
    rewards = named["rewards"]
    shape = tuple(rewards.shape)
    require(len(shape) == 2, f"rewards must be (N, T), got shape {shape}")
    for name, tensor in {**named, **flags}.items():
        require(
            tuple(tensor.shape) == shape,
            f"{name} must have the rewards' shape {shape}, got {tuple(tensor.shape)}",
        )
    for name, tensor in named.items():
        require(
            tensor.dtype == rewards.dtype and tensor.is_floating_point(),
            f"{name} must be floating point and of one dtype with the others, got "
            + ", ".join(f"{n} {t.dtype}" for n, t in named.items()),
        )
    for name, tensor in flags.items():
        require(tensor.dtype is torch.bool, f"{name} must be a bool tensor, got {tensor.dtype}")


def _round_length(trajectories: Sequence[Trajectory], scale: float) -> int:
    """The round's steps (its longest trajectory's), once there is at least one trajectory and
    the reward scale is finite and positive (0 made every reward infinite, a negative one
    flipped their sign); else a ValueError."""
    require(len(trajectories) > 0, "rollout_batch needs at least one trajectory")
    check_float("scale", scale, 0.0, math.inf, strict_low=True)
    return max(len(t) for t in trajectories)


@dataclass(frozen=True)
class RolloutBatch:
    """One round's experience, ready for the PPO update (all (N, T, …)).

    Attributes:
        obs: the normalized observations the policy acted on (exactly those).
        masks: the action masks it acted under.
        actions: chosen indices per head (N, T, 5).
        log_prob: log π(a|s) at acting time (causal sum over relevant heads).
        values: V(s) at acting time.
        rewards: rewards.
        episode_start: the LSTM state was reset before this step.
        episode_end: an episode ended after this step.
        terminated: it ended by termination.
        next_values: bootstrap values V'_t (see ``compute_gae``).
        valid: real steps (False: padding after an episode ended early).
        state: the LSTM state (h, c), each (1, N, H), at the start of the round.
        advantages: GAE advantages.
        returns: value targets.
    """

    obs: Tensor
    masks: ActionMasks
    actions: Tensor
    log_prob: Tensor
    values: Tensor
    rewards: Tensor
    episode_start: Tensor
    episode_end: Tensor
    terminated: Tensor
    next_values: Tensor
    valid: Tensor
    state: tuple[Tensor, Tensor]
    advantages: Tensor
    returns: Tensor

    @property
    def n_envs(self) -> int:
        return int(self.obs.shape[0])

    def _apply(self, fn: Callable[[Tensor], Tensor], state: tuple[Tensor, Tensor]) -> RolloutBatch:
        """``fn`` applied to every tensor and mask; ``state`` replaces the LSTM state."""
        names = [f.name for f in fields(self) if f.name not in ("masks", "state")]
        tensors = {name: fn(getattr(self, name)) for name in names}
        return RolloutBatch(**tensors, masks=self.masks.map(fn), state=state)

    def select(self, envs: Tensor) -> RolloutBatch:
        """The sub-batch of environments ``envs`` (whole sequences, for recurrent minibatches)."""
        h, c = self.state
        return self._apply(lambda t: t[envs], (h[:, envs], c[:, envs]))

    def to(self, device: torch.device) -> RolloutBatch:
        """The batch on ``device``."""
        h, c = self.state
        return self._apply(lambda t: t.to(device), (h.to(device), c.to(device)))


def rollout_batch(
    trajectories: Sequence[Trajectory],
    state: tuple[Tensor, Tensor],
    gamma: float,
    lam: float,
    scale: float,
    truncation: bool = True,
) -> RolloutBatch:
    """The round's batch from one trajectory per environment, with advantages and returns.

    Padding rows repeat an environment's last step as terminated ends of zero reward and value.
    The next value is the one the policy computed when it next acted; at an episode's length
    the trajectory's bootstrap, or 0 if not ``truncation`` (``ppo.horizon`` ``termination``).

    Args:
        trajectories: each environment's episode, in environment order.
        state: the LSTM state (h, c) every episode started from, each (1, N, H).
        gamma, lam: GAE's discount and λ.
        scale: what this round's rewards are divided by (``ppo.reward_scaling``; else 1).

    Raises:
        ValueError: see ``_round_length`` and ``compute_gae``.
    """
    steps = _round_length(trajectories, scale)

    def padded(x: Tensor) -> Tensor:  # (len, …) -> (T, …), the last step repeated
        return torch.cat([x, x[-1:].expand(steps - len(x), *x.shape[1:])])

    def stacked(name: str) -> Tensor:
        return torch.stack([padded(getattr(t, name)) for t in trajectories])

    lengths, time = torch.tensor([len(t) for t in trajectories])[:, None], torch.arange(steps)[None]
    valid, last = time < lengths, time == lengths - 1
    ended_terminated = torch.tensor([t.terminated or not truncation for t in trajectories])[:, None]
    rewards = torch.where(valid, stacked("rewards") / scale, 0.0).float()
    values = torch.where(valid, stacked("values"), 0.0)
    bootstrap = torch.tensor([t.bootstrap if truncation else 0.0 for t in trajectories])[:, None]
    episode_end = last | ~valid
    following = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    next_values = torch.where(episode_end, torch.where(last, bootstrap, 0.0), following)
    terminated = (last & ended_terminated) | ~valid
    advantages, returns = compute_gae(
        rewards, values, next_values, episode_end, terminated, gamma, lam
    )
    return RolloutBatch(
        obs=stacked("obs"),
        masks=ActionMasks.stack([t.masks.map(padded) for t in trajectories]),
        actions=stacked("actions"),
        log_prob=stacked("log_prob"),
        values=values,
        rewards=rewards,
        episode_start=time.expand(len(trajectories), steps) == 0,
        episode_end=episode_end,
        terminated=terminated,
        next_values=next_values,
        valid=valid,
        state=state,
        advantages=advantages,
        returns=returns,
    )
