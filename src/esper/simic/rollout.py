"""The rollout buffer and generalized advantage estimation (Schulman et al. 2016, GAE).

One round collects up to ``T`` steps from each of ``N`` environments in lockstep: one episode
per environment. An environment whose episode ended early (termination) sits out the rest of
the round; its remaining steps are padding (``valid`` False) that no loss sees. The buffer
records, per step, whether an episode started there (the policy's LSTM state was reset before
acting), whether it ended there and how:

* **truncation** (the episode reached its length): the return is bootstrapped from V(s_{t+1}),
  the value of the final observation computed with the LSTM state *before* the reset;
* **termination** (a governor panic): nothing comes after, the bootstrap is 0.

All tensors are (N, T, …): environment first, time second, so one environment's sequence can
be replayed through the LSTM during the update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

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
    of the final observation at a truncation, the next observation's value at the end of the
    buffer. The recursion stops at every episode end; only termination drops the bootstrap.

    Args:
        rewards: (N, T) rewards.
        values: (N, T) V(s_t) computed when acting.
        next_values: (N, T) V'_t as above (ignored where ``terminated``).
        episode_end: (N, T) bool, an episode ended after step t (either way).
        terminated: (N, T) bool, it ended by termination.
        gamma: discount.
        lam: GAE λ.

    Returns:
        ``(advantages, returns)``, each (N, T); returns = advantages + values.
    """
    not_term = (~terminated).to(rewards.dtype)
    not_end = (~episode_end).to(rewards.dtype)
    deltas = rewards + gamma * not_term * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = deltas[:, t] + gamma * lam * not_end[:, t] * running
        advantages[:, t] = running
    return advantages, advantages + values


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


class RolloutBuffer:
    """Collects one round step by step (lockstep over environments), then builds the batch.

    Args:
        n_envs: environments.
        gamma: discount for GAE.
        lam: GAE λ.
    """

    def __init__(self, n_envs: int, gamma: float, lam: float) -> None:
        self.n_envs, self.gamma, self.lam = n_envs, gamma, lam
        self._steps: list[dict[str, Tensor]] = []
        self._masks: list[ActionMasks] = []
        self._state: tuple[Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return len(self._steps)

    def start(self, state: tuple[Tensor, Tensor]) -> None:
        """Begin a round from the LSTM state the policy holds now."""
        self._steps, self._masks = [], []
        self._state = (state[0].detach().cpu().clone(), state[1].detach().cpu().clone())

    def add(
        self,
        obs: Tensor,
        masks: ActionMasks,
        actions: Tensor,
        log_prob: Tensor,
        values: Tensor,
        episode_start: Tensor,
        valid: Tensor,
    ) -> None:
        """Record what the policy saw and did at one lockstep step (each (N, …)).

        Rows where ``valid`` is False are padding for environments whose episode is over.
        """
        cpu = torch.device("cpu")  # the round is assembled on the CPU, moved once for the update
        self._masks.append(masks.to(cpu))
        self._steps.append(
            {
                "obs": obs.detach().cpu(),
                "actions": actions.detach().cpu(),
                "log_prob": log_prob.detach().float().cpu(),
                "values": values.detach().float().cpu(),
                "episode_start": episode_start.cpu().clone(),
                "valid": valid.cpu().clone(),
            }
        )

    def record_outcome(
        self, rewards: Tensor, episode_end: Tensor, terminated: Tensor, bootstrap: Tensor
    ) -> None:
        """Record the outcome of the last added step (each (N,)).

        ``bootstrap`` holds, for an episode truncated at this step, V of its final observation
        computed with the LSTM state *before* the reset (anything elsewhere). Inside an episode
        the next state's value is the one the policy computes when it next acts, so the buffer
        takes it from there. Padding rows are stored as terminated episode ends with zero
        reward, so GAE gives them nothing.
        """
        step = self._steps[-1]
        pad = ~step["valid"]
        step["rewards"] = torch.where(pad, 0.0, rewards.detach())
        step["episode_end"] = episode_end | pad
        step["terminated"] = terminated | pad
        step["bootstrap"] = torch.where(pad, 0.0, bootstrap.detach())
        step["values"] = torch.where(pad, 0.0, step["values"])

    def build(self) -> RolloutBatch:
        """Stack the round into (N, T, …) tensors and compute advantages and returns."""
        if not self._steps or self._state is None:
            raise RuntimeError("the rollout buffer is empty; call start() and add() first")
        stacked = {k: torch.stack([s[k] for s in self._steps], dim=1) for k in self._steps[0]}
        ended = stacked["episode_end"]
        if not bool(ended[:, -1].all()):
            raise RuntimeError("every episode must end within its round (one episode per round)")
        following = torch.cat(  # V(s_{t+1}) as computed when acting at t+1
            [stacked["values"][:, 1:], torch.zeros_like(stacked["values"][:, :1])], dim=1
        )
        stacked["next_values"] = torch.where(ended, stacked.pop("bootstrap"), following)
        # each step's masks are (N, …): stacked (T, N, …), then (N, T, …)
        masks = ActionMasks.stack(self._masks).map(lambda t: t.transpose(0, 1))
        advantages, returns = compute_gae(
            stacked["rewards"],
            stacked["values"],
            stacked["next_values"],
            stacked["episode_end"],
            stacked["terminated"],
            self.gamma,
            self.lam,
        )
        return RolloutBatch(
            **stacked, masks=masks, state=self._state, advantages=advantages, returns=returns
        )
