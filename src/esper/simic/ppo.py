"""The PPO update (Schulman et al. 2017, clipped surrogate) for the recurrent factored policy.

One call of ``PPOLearner.update`` reads one round's ``RolloutBatch`` top to bottom:

1. normalize advantages over the real (non-padding) steps (``normalize_advantages``);
2. for ``ppo_epochs`` passes, split the environments into ``minibatches`` groups (sequences stay
   whole so the LSTM replays them from the round's initial state, resetting at episode starts);
3. per minibatch: re-evaluate log-probs, per-head entropies and values; clipped policy loss,
   value loss and an entropy bonus in which only the heads relevant to the chosen op take part
   (causal masking: the policy network already zeroes irrelevant heads);
4. a finiteness gate on the loss and on the gradient norm *before* clipping and stepping: a
   non-finite update is skipped and counted, never applied;
5. stop the passes early, before stepping, once the approximate KL of a minibatch exceeds
   ``target_kl``.

The ratio of every step is watched: when its maximum exceeds ``ratio_explosion`` the update
returns a ``RatioExplosionDiagnostic`` naming the heads whose own ratio exploded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from esper.leyline.config import require
from esper.leyline.events import PPOStats
from esper.simic.config import PPOSettings
from esper.simic.rollout import RolloutBatch
from esper.tamiyo.actions import HEADS
from esper.tamiyo.policy import Evaluation, PolicyNetwork
from esper.tolaria.governor import copied_state

ADVANTAGE_EPS = 1e-8
"""Keeps advantage normalization finite when every advantage in a batch is equal."""


@dataclass(frozen=True)
class RatioExplosionDiagnostic:
    """The PPO ratio π_new/π_old exceeded its threshold during an update.

    Attributes:
        threshold: the configured ``ratio_explosion``.
        heads: heads whose own ratio exceeded the threshold at some step (relevant heads only);
            empty when only the joint ratio did.
        steps: how many (env, step) evaluations exceeded the threshold, over all passes.
        step_indices: which steps: ``(env, t)`` pairs of the rollout, sorted, each once.
        ratio_max: the largest joint ratio seen.
        ratio_mean: mean joint ratio over the exploded steps.
        ratio_min: the smallest joint ratio seen in the update.
    """

    threshold: float
    heads: tuple[str, ...]
    steps: int
    step_indices: tuple[tuple[int, int], ...]
    ratio_max: float
    ratio_mean: float
    ratio_min: float


@dataclass(frozen=True)
class UpdateResult:
    """What one update did: its ``PPOStats`` (logged in ``PPOUpdate``) and the debug detail.

    ``head_entropy`` and ``head_ratio_max`` are per head; ``head_relevance`` is the fraction of
    real steps on which a head counted; ``diagnostic`` is set when the ratio exploded.
    """

    stats: PPOStats
    head_entropy: dict[str, float | None]
    head_ratio_max: dict[str, float | None]
    head_relevance: dict[str, float]
    diagnostic: RatioExplosionDiagnostic | None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def explained_variance(prediction: Tensor, target: Tensor) -> float | None:
    """1 − Var(target − prediction)/Var(target); None when the target does not vary."""
    var = target.var(unbiased=False)
    if var.item() == 0.0:
        return None
    return float(1.0 - (target - prediction).var(unbiased=False) / var)


class _RatioWatch:
    """Ratio statistics of one update, per step and per head, for diagnostics and telemetry."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.ratio_max: list[float] = []
        self.ratio_min: list[float] = []
        self.head_entropy: dict[str, list[float]] = {h: [] for h in HEADS}
        self.head_ratio_max: dict[str, float | None] = dict.fromkeys(HEADS)
        self._heads: set[str] = set()
        self._over: list[Tensor] = []
        self._steps: set[tuple[int, int]] = set()

    def observe(
        self, ev: Evaluation, old_log_prob: Tensor, old_heads: Tensor, valid: Tensor, envs: Tensor
    ) -> None:
        """Record one minibatch: joint ratios on real steps, and each head's own ratio and
        entropy on the steps where it counted. ``envs`` maps minibatch rows to rollout envs."""
        full = (ev.log_prob.float() - old_log_prob).exp()  # (B, T)
        ratio = full[valid]
        if ratio.numel():
            self.ratio_max.append(ratio.max().item())
            self.ratio_min.append(ratio.min().item())
            over = ratio[ratio > self.threshold]
            if over.numel():
                self._over.append(over)
                where = ((full > self.threshold) & valid).nonzero().tolist()
                self._steps.update((int(envs[b]), t) for b, t in where)
        heads = (ev.head_log_prob.float() - old_heads).exp()  # (B, T, 5)
        for i, h in enumerate(HEADS):
            rel = ev.relevance[..., i] & valid
            if not rel.any():
                continue
            self.head_entropy[h].append(ev.entropy[..., i][rel].float().mean().item())
            top = heads[..., i][rel].max().item()
            current = self.head_ratio_max[h]
            self.head_ratio_max[h] = top if current is None else max(current, top)
            if top > self.threshold:
                self._heads.add(h)

    def diagnostic(self) -> RatioExplosionDiagnostic | None:
        """The diagnostic when some joint ratio exceeded the threshold, else None."""
        if not self._over:
            return None
        over = torch.cat(self._over)
        return RatioExplosionDiagnostic(
            self.threshold,
            tuple(h for h in HEADS if h in self._heads),
            int(over.numel()),
            tuple(sorted(self._steps)),
            max(self.ratio_max),
            over.mean().item(),
            min(self.ratio_min),
        )


def _approx_kl(ratio: Tensor, logratio: Tensor) -> float:
    """Schulman's k3 estimate of KL(acting || current) over the steps of ``logratio``
    (``ratio`` its exp): the mean of (r - 1) - log r, never negative."""
    return ((ratio - 1) - logratio).mean().item()


def _normalized_advantages(adv: Tensor, valid: Tensor) -> Tensor:
    """Advantages scaled to mean 0, std 1 over the real steps; padding steps are 0."""
    real = adv[valid]
    return torch.where(valid, (adv - real.mean()) / (real.std(unbiased=False) + ADVANTAGE_EPS), 0)


class _Loss(NamedTuple):
    """One minibatch's loss, its parts, and its KL from the acting policy (the target-KL
    check's)."""

    loss: Tensor
    policy_loss: Tensor
    value_loss: Tensor
    entropy: Tensor
    approx_kl: float
    ev: Evaluation


@dataclass
class _Tally:
    """What the passes of one update measured; ``PPOLearner._result`` folds it into stats."""

    watch: _RatioWatch
    logs: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("policy", "value", "entropy", "grad")}
    )
    passes: int = 0
    skipped: int = 0
    early_stopped: bool = False
    moved: tuple[float | None, float | None] = (None, None)  # ``PPOLearner._moved``


def check_amp(amp: bool, device: torch.device) -> None:
    """Mixed precision (``--amp``) needs the policy on a CUDA device.

    Raises:
        ValueError: naming the device it would be on.
    """
    if amp and device.type != "cuda":
        raise ValueError(f"--amp needs the policy on a CUDA device, not {device}")


class PPOLearner:
    """Owns the policy's optimizer, grad scaler and the environment-step counter.

    Args:
        network: the policy network (updated in place).
        settings: PPO settings.
        amp: mixed-precision updates with a grad scaler; needs the network on CUDA.
        generator: the generator that shuffles minibatches.

    Raises:
        ValueError: ``amp`` with a network that is not on a CUDA device.
    """

    def __init__(
        self, network: PolicyNetwork, settings: PPOSettings, amp: bool, generator: torch.Generator
    ) -> None:
        check_amp(amp, next(network.parameters()).device)
        self.network, self.settings, self.amp = network, settings, amp
        self.optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr, eps=1e-5)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.generator = generator
        self.env_steps = 0  # environment steps seen so far (all envs), for entropy annealing
        self._overflows = 0  # grad-scaler overflow skips in the current update

    def entropy_coef(self) -> float:
        """The entropy weight now: linear in environment steps from start to final value."""
        s = self.settings
        if s.entropy_anneal_steps == 0:
            return s.entropy_coef_final
        frac = min(1.0, self.env_steps / s.entropy_anneal_steps)
        return s.entropy_coef + frac * (s.entropy_coef_final - s.entropy_coef)

    def update(self, batch: RolloutBatch) -> UpdateResult:
        """Run the PPO passes on one round's batch (see the module docstring).

        Raises:
            ValueError: the batch has fewer environments than ``minibatches`` (an empty
                minibatch's NaN loss was counted as a non-finite step).
        """
        s, net = self.settings, self.network
        require(
            batch.n_envs >= s.minibatches,
            f"a batch of {batch.n_envs} environments cannot be split into "
            f"ppo.minibatches = {s.minibatches}",
        )
        self.env_steps += int(batch.valid.sum())
        entropy_coef = self.entropy_coef()
        adv = batch.advantages
        if s.normalize_advantages:
            adv = _normalized_advantages(adv, batch.valid)

        # Per-head log-probs under the policy that acted (its parameters have not changed since
        # the rollout), to say which heads a ratio explosion came from.
        with torch.no_grad():
            before = net.evaluate(
                batch.obs, batch.masks, batch.actions, batch.state, batch.episode_start
            )

        tally = _Tally(_RatioWatch(s.ratio_explosion))
        self._overflows = 0
        for _ in range(s.ppo_epochs):
            order = torch.randperm(batch.n_envs, generator=self.generator).to(adv.device)
            for i, envs in enumerate(order.tensor_split(s.minibatches)):  # exactly that many
                mb = batch.select(envs)
                m = self._minibatch_loss(mb, adv[envs], entropy_coef)
                with torch.no_grad():
                    tally.watch.observe(
                        m.ev, mb.log_prob, before.head_log_prob[envs], mb.valid, envs
                    )
                if m.approx_kl > s.target_kl:  # the policy moved far enough: take no more steps
                    tally.early_stopped = True
                    break
                tally.passes += i == 0  # a pass counts once it reaches a step (the KL allowed)
                grad_norm = self._step(m.loss)
                if grad_norm is None:
                    tally.skipped += 1
                else:
                    tally.logs["grad"].append(grad_norm)
                    tally.logs["policy"].append(m.policy_loss.item())
                    tally.logs["value"].append(m.value_loss.item())
                    tally.logs["entropy"].append(m.entropy.item())
            if tally.early_stopped:
                break
        tally.moved = self._moved(batch)
        return self._result(batch, before, tally, entropy_coef)

    def _moved(self, batch: RolloutBatch) -> tuple[float | None, float | None]:
        """How far the update moved the policy from the one that acted, over the round's real
        steps: Schulman's k3 estimate of KL(acting || updated), and the share of steps whose
        ratio left [1 - clip, 1 + clip]. The minibatches' own measurements, taken before each
        step from the first (always 0) on, understated it 2-4x (an audit)."""
        with torch.no_grad(), torch.autocast("cuda", enabled=self.amp):
            ev = self.network.evaluate(
                batch.obs, batch.masks, batch.actions, batch.state, batch.episode_start
            )
        logratio = (ev.log_prob.float() - batch.log_prob)[batch.valid]
        if not logratio.numel():
            return None, None
        ratio = logratio.exp()
        kl = _approx_kl(ratio, logratio)
        return kl, ((ratio - 1).abs() > self.settings.clip_ratio).float().mean().item()

    def _minibatch_loss(self, mb: RolloutBatch, adv: Tensor, entropy_coef: float) -> _Loss:
        """Clipped surrogate + value loss − entropy bonus of one minibatch, over real steps."""
        s = self.settings
        with torch.autocast("cuda", enabled=self.amp):
            ev = self.network.evaluate(mb.obs, mb.masks, mb.actions, mb.state, mb.episode_start)
        logratio = (ev.log_prob.float() - mb.log_prob)[mb.valid]
        ratio = logratio.exp()
        a = adv[mb.valid]
        surrogate = torch.min(ratio * a, ratio.clamp(1 - s.clip_ratio, 1 + s.clip_ratio) * a)
        policy_loss = -surrogate.mean()
        value_loss = 0.5 * (ev.value.float() - mb.returns)[mb.valid].pow(2).mean()
        entropy = ev.entropy.float().sum(-1)[mb.valid].mean()  # irrelevant heads are 0
        loss = policy_loss + s.value_coef * value_loss - entropy_coef * entropy
        with torch.no_grad():
            approx_kl = _approx_kl(ratio, logratio)
        return _Loss(loss, policy_loss, value_loss, entropy, approx_kl, ev)

    def _result(
        self, batch: RolloutBatch, before: Evaluation, tally: _Tally, entropy_coef: float
    ) -> UpdateResult:
        """Fold the passes' tally and the batch's values and returns into the update's result."""
        valid, watch, logs = batch.valid, tally.watch, tally.logs
        values, returns = batch.values[valid], batch.returns[valid]
        n_valid = values.numel()
        relevance = before.relevance[valid].float().mean(0) if n_valid else None
        stats = PPOStats(
            passes=tally.passes,
            early_stopped=tally.early_stopped,
            skipped_steps=tally.skipped - self._overflows,
            overflow_steps=self._overflows,
            policy_loss=_mean(logs["policy"]),
            value_loss=_mean(logs["value"]),
            entropy=_mean(logs["entropy"]),
            approx_kl=tally.moved[0],
            clip_fraction=tally.moved[1],
            ratio_max=max(watch.ratio_max) if watch.ratio_max else None,
            ratio_min=min(watch.ratio_min) if watch.ratio_min else None,
            explained_variance=explained_variance(values, returns),
            value_std=float(values.std(unbiased=False)) if n_valid else None,
            return_std=float(returns.std(unbiased=False)) if n_valid else None,
            grad_norm=_mean(logs["grad"]),
            entropy_coef=entropy_coef,
        )
        return UpdateResult(
            stats,
            head_entropy={h: _mean(v) for h, v in watch.head_entropy.items()},
            head_ratio_max=watch.head_ratio_max,
            head_relevance={
                h: (0.0 if relevance is None else float(relevance[i])) for i, h in enumerate(HEADS)
            },
            diagnostic=watch.diagnostic(),
        )

    def _step(self, loss: Tensor) -> float | None:
        """Backward, finiteness gate, clip, step. Returns the pre-clip norm, None if skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return None
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.network.parameters() if p.grad is not None]
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if not math.isfinite(norm.item()):
            self.optimizer.zero_grad(set_to_none=True)
            if self.amp:  # a finite loss with overflowing fp16 gradients: the scaler's business
                self._overflows += 1
                self.scaler.update()  # lower the scale, as GradScaler.step would have
            return None
        torch.nn.utils.clip_grads_with_norm_(params, self.settings.max_grad_norm, norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return norm.item()

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scaler, shuffling generator and step counter."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "env_steps": self.env_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output (a copy: torch's optimizer would otherwise share the
        given moment tensors with the learner they came from)."""
        self.optimizer.load_state_dict(copied_state(state["optimizer"]))
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.env_steps = int(state["env_steps"])
