"""The PPO policy: observation -> MLP -> LSTM -> per-head logits and V(s) (DESIGN §4).

``PolicyNetwork`` scores the factored action space of ``esper.tamiyo.actions``. One ``act`` call
samples an action and returns its log-probability and the state value together, so a rollout
never samples twice; ``evaluate`` recomputes the same quantities over whole sequences for the
PPO update. Both use causal masking: a head the chosen op does not read adds nothing to the
log-probability (so it gets no gradient) and no entropy. The value head reads the LSTM output
only, never the action, so V(s) is a proper baseline.

The LSTM state is zeroed before every step that starts an episode (``episode_start``); a sequence
is run in segments between such steps, so ``evaluate`` reproduces exactly the states ``act`` saw
step by step. ``PolicyController`` wraps the network as a ``Controller`` for the engine.

Layer initialization follows CleanRL's ``ppo_atari_lstm.py``: orthogonal weights with gain √2 in
the encoder, 1 in the LSTM, 0.01 for the action heads (near-uniform first policy) and 1 for the
value head; zero biases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn

from esper.leyline import Action, Observation
from esper.leyline.config import MAX_INT64, check_bool, check_int, require
from esper.leyline.events import PolicyDecision
from esper.tamiyo.actions import HEADS, ActionMasks, ActionSpace, head_relevance
from esper.tamiyo.distributions import MaskedCategorical
from esper.tamiyo.features import encode_observation, observation_size
from esper.tamiyo.normalizer import RunningMeanStd

LSTMState = tuple[Tensor, Tensor]
"""``(h, c)``, each ``(1, B, lstm_hidden)``."""

ENCODER_GAIN = math.sqrt(2.0)
"""Orthogonal gain for the tanh encoder layers (CleanRL)."""

ACTION_HEAD_GAIN = 0.01
"""Small action-head weights make the first policy nearly uniform over valid choices."""

VALUE_HEAD_GAIN = 1.0
"""Unit gain keeps early value estimates on the scale of normalized returns."""


MAX_POLICY_WIDTH = 4096
"""Widest policy layer accepted: an LSTM this wide over an encoder this wide has 134 M weights
(0.5 GB, about 2 GB with AdamW's state); 65,536 was accepted and then asked for 17 GB at once."""


@dataclass(frozen=True)
class PolicyConfig:
    """The policy network and its input.

    Attributes:
        hidden: width of the two-layer MLP encoder; 128 is ample for an 80-feature input.
        lstm_hidden: LSTM state size; 128 remembers an episode's few dozen decisions.
        slot_telemetry: include the per-slot telemetry blocks (80 features) or not (50).
    """

    hidden: int = 128
    lstm_hidden: int = 128
    slot_telemetry: bool = True

    def __post_init__(self) -> None:
        check_int("policy.hidden", self.hidden, 1, MAX_POLICY_WIDTH)
        check_int("policy.lstm_hidden", self.lstm_hidden, 1, MAX_POLICY_WIDTH)
        check_bool("policy.slot_telemetry", self.slot_telemetry)


@dataclass(frozen=True)
class PolicyOutput:
    """What ``PolicyNetwork.forward`` returns.

    Attributes:
        logits: head name -> ``(B, T, n_head)`` unmasked logits.
        value: ``(B, T)`` state values.
        state: the LSTM state after the last step.
    """

    logits: dict[str, Tensor]
    value: Tensor
    state: LSTMState


@dataclass(frozen=True)
class ActStep:
    """One sampling call: action, its log-probability and the state value.

    Attributes:
        actions: ``(B, 5)`` long, one index per head in ``HEADS`` order (irrelevant heads hold
            some valid index that the op ignores).
        log_prob: ``(B,)`` sum of the log-probabilities of the heads the op reads.
        value: ``(B,)`` V(s).
        state: the LSTM state after the step.
    """

    actions: Tensor
    log_prob: Tensor
    value: Tensor
    state: LSTMState


@dataclass(frozen=True)
class Evaluation:
    """``PolicyNetwork.evaluate`` over ``(B, T)`` steps of stored actions.

    Attributes:
        log_prob: ``(B, T)`` sum of ``head_log_prob`` over heads.
        head_log_prob: ``(B, T, 5)`` per-head log-probabilities, 0 for irrelevant heads.
        entropy: ``(B, T, 5)`` per-head normalized entropy in [0, 1], 0 for irrelevant heads.
        relevance: ``(B, T, 5)`` bool, which heads the taken op reads.
        value: ``(B, T)`` V(s).
    """

    log_prob: Tensor
    head_log_prob: Tensor
    entropy: Tensor
    relevance: Tensor
    value: Tensor


def reset_state(state: LSTMState, episode_start: Tensor) -> LSTMState:
    """Zero the LSTM state of the batch rows that start a new episode.

    Args:
        state: ``(h, c)``, each ``(1, B, H)``.
        episode_start: ``(B,)`` bool.

    Returns:
        The state with rows where ``episode_start`` is True set to 0.

    Raises:
        ValueError: ``episode_start`` is not a bool ``(B,)`` tensor (0/1 integers were
            inverted bitwise, ``~1`` being -2, and one flag reset every row).
    """
    batch = state[0].shape[1]
    require(
        episode_start.dtype is torch.bool and tuple(episode_start.shape) == (batch,),
        f"episode_start must be a bool ({batch},) tensor, one flag per state row, got "
        f"{episode_start.dtype} {tuple(episode_start.shape)}",
    )
    keep = (~episode_start).to(state[0].dtype).view(1, -1, 1)  # (1, B, 1)
    return state[0] * keep, state[1] * keep


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _distribution(
    head: str, logits: Tensor, mask: Tensor, relevant: Tensor, validate: bool = True
) -> MaskedCategorical:
    """The head's distribution; rows of irrelevant heads with no valid choice allow every choice.

    Such a row (the slot row of WAIT, say) never affects an action or a loss, but it still needs
    an index; a relevant row with no valid choice is a bug upstream and raises.
    """
    drop = ~(relevant.unsqueeze(-1) | mask.any(dim=-1, keepdim=True))  # (…, 1)
    safe = mask | drop
    try:
        return MaskedCategorical(logits, safe, validate)
    except ValueError as error:
        raise ValueError(f"head {head!r}: {error}") from error


class PolicyNetwork(nn.Module):
    """Recurrent actor-critic over the factored action space.

    Args:
        obs_size: observation length (``observation_size(telemetry)``).
        head_sizes: choices per head; keys must be exactly ``HEADS``.
        config: layer sizes.

    Raises:
        ValueError: a size that is not an integer in [1, ``MAX_POLICY_WIDTH``], or head keys
            other than ``HEADS``.
    """

    def __init__(self, obs_size: int, head_sizes: Mapping[str, int], config: PolicyConfig) -> None:
        super().__init__()
        check_int("obs_size", obs_size, 1, MAX_POLICY_WIDTH)
        require(
            set(head_sizes) == set(HEADS),
            f"head_sizes keys {sorted(head_sizes)} must be exactly {HEADS}",
        )
        for head, n in head_sizes.items():
            check_int(f"head {head!r}'s number of choices", n, 1, MAX_POLICY_WIDTH)
        self.obs_size = obs_size
        self.head_sizes = {head: int(head_sizes[head]) for head in HEADS}
        self.config = config
        self.encoder = nn.Sequential(
            _orthogonal(nn.Linear(obs_size, config.hidden), ENCODER_GAIN),
            nn.Tanh(),
            _orthogonal(nn.Linear(config.hidden, config.hidden), ENCODER_GAIN),
            nn.Tanh(),
        )
        self.lstm = nn.LSTM(config.hidden, config.lstm_hidden, batch_first=True)
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.zeros_(param)
        self.heads = nn.ModuleDict(
            {
                head: _orthogonal(nn.Linear(config.lstm_hidden, n), ACTION_HEAD_GAIN)
                for head, n in self.head_sizes.items()
            }
        )
        self.value_head = _orthogonal(nn.Linear(config.lstm_hidden, 1), VALUE_HEAD_GAIN)

    def initial_state(self, batch: int, device: torch.device | None = None) -> LSTMState:
        """Zero LSTM state ``(h, c)``, each ``(1, batch, lstm_hidden)``, on ``device``
        (default: the parameters' device)."""
        if device is None:
            device = self.value_head.weight.device
        shape = (1, batch, self.config.lstm_hidden)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(self, obs: Tensor, state: LSTMState, episode_start: Tensor) -> PolicyOutput:
        """Run ``T`` steps for ``B`` sequences.

        Args:
            obs: ``(B, T, obs_size)`` normalized observations.
            state: the LSTM state before the first step.
            episode_start: ``(B, T)`` bool; the state is zeroed before every True step.

        Returns:
            Per-head logits ``(B, T, n)``, values ``(B, T)`` and the final state.

        Raises:
            ValueError: for mismatched shapes, or ``obs`` of another dtype than the weights.
        """
        if obs.dim() != 3 or obs.shape[-1] != self.obs_size:
            raise ValueError(f"obs must be (B, T, {self.obs_size}), got {tuple(obs.shape)}")
        dtype = self.value_head.weight.dtype
        if obs.dtype != dtype:
            raise ValueError(f"obs must be {dtype} like the network's weights, got {obs.dtype}")
        want = (1, obs.shape[0], self.config.lstm_hidden)
        if any(tuple(part.shape) != want for part in state):
            got = [tuple(part.shape) for part in state]
            raise ValueError(f"state must be (h, c), each {want} for this batch, got {got}")
        if episode_start.shape != obs.shape[:2] or episode_start.dtype is not torch.bool:
            raise ValueError(
                f"episode_start must be a bool (B, T) = {tuple(obs.shape[:2])} tensor, "
                f"got {episode_start.dtype} {tuple(episode_start.shape)}"
            )
        steps = obs.shape[1]
        x = self.encoder(obs)  # (B, T, hidden)
        # Segments start at t = 0 and at every later step where some sequence restarts. Finding
        # them reads the flags back, which would make an accelerator's acting step (T = 1, one
        # segment) wait for the device: only longer sequences (the update) look.
        bounds = [0, steps]
        if steps > 1:
            restarts = episode_start[:, 1:].any(dim=0).nonzero().flatten() + 1
            bounds[1:1] = restarts.tolist()
        outputs = []
        for start, stop in pairwise(bounds):
            state = reset_state(state, episode_start[:, start])
            y, (h, c) = self.lstm(x[:, start:stop], state)  # (B, stop - start, lstm_hidden)
            state = (h, c)
            outputs.append(y)
        y = torch.cat(outputs, dim=1)  # (B, T, lstm_hidden)
        logits = {head: layer(y) for head, layer in self.heads.items()}
        value = self.value_head(y).squeeze(-1)  # (B, T)
        return PolicyOutput(logits=logits, value=value, state=state)

    def act(
        self,
        obs: Tensor,
        masks: ActionMasks,
        state: LSTMState,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActStep:
        """Choose one action per row, with its log-probability and V(s), in one pass.

        The op is chosen first; the slot then comes from that op's row of the slot mask, and the
        blueprint, tempo and α target from their masks. The caller zeroes the state of rows that
        start an episode (``reset_state``) and wraps the call in ``torch.no_grad()`` when
        collecting rollouts.

        Args:
            obs: ``(B, obs_size)`` normalized observations.
            masks: masks batched to ``B``.
            state: LSTM state before the step.
            deterministic: take each head's most likely valid choice instead of sampling.
            generator: random source for sampling (default: torch's global one).

        Returns:
            Actions ``(B, 5)``, log-probabilities ``(B,)``, values ``(B,)`` and the next state.

        Raises:
            ValueError: ``obs`` holds NaN (on the CPU; the step chose WAIT with a NaN
                probability), or see ``forward``.
        """
        if obs.device.type == "cpu" and bool(obs.isnan().any()):  # the one check of the step
            raise ValueError("obs holds NaN; observations must not be NaN")
        batch = obs.shape[0]
        no_start = torch.zeros(batch, 1, dtype=torch.bool, device=obs.device)
        out = self.forward(obs.unsqueeze(1), state, no_start)
        logits = {head: value[:, 0] for head, value in out.logits.items()}  # (B, n)

        def choose(dist: MaskedCategorical) -> Tensor:
            return dist.mode() if deterministic else dist.sample(generator)

        op_dist = MaskedCategorical(logits["op"], masks.op, validate_args=False)
        op = choose(op_dist)  # (B,)
        relevance = head_relevance(op)  # (B, 5)
        rows = torch.arange(batch, device=op.device)
        head_masks = {f.name: getattr(masks, f.name) for f in fields(masks)}
        head_masks["slot"] = masks.slot[rows, op]  # (B, n_slots): the chosen op's row
        actions, log_prob = [op], op_dist.log_prob(op)
        for i, head in enumerate(HEADS[1:], start=1):
            dist = _distribution(head, logits[head], head_masks[head], relevance[:, i], False)
            choice = choose(dist)
            actions.append(choice)
            log_prob = log_prob + torch.where(relevance[:, i], dist.log_prob(choice), 0.0)
        return ActStep(
            actions=torch.stack(actions, dim=-1),
            log_prob=log_prob,
            value=out.value[:, 0],
            state=out.state,
        )

    def evaluate(
        self,
        obs: Tensor,
        masks: ActionMasks,
        actions: Tensor,
        state: LSTMState,
        episode_start: Tensor,
    ) -> Evaluation:
        """Score stored actions over sequences (the PPO update's view of ``act``).

        Args:
            obs: ``(B, T, obs_size)`` normalized observations.
            masks: masks batched to ``(B, T)``.
            actions: ``(B, T, 5)`` long, as ``act`` returned them.
            state: LSTM state before the first step.
            episode_start: ``(B, T)`` bool.

        Returns:
            Per-step log-probabilities, per-head log-probabilities and entropies (irrelevant
            heads 0), relevance and values.
        """
        out = self.forward(obs, state, episode_start)
        op = actions[..., 0]  # (B, T)
        relevance = head_relevance(op)  # (B, T, 5)
        n_slots = masks.slot.shape[-1]
        index = op[..., None, None].expand(*op.shape, 1, n_slots)  # (B, T, 1, n_slots)
        head_masks = {f.name: getattr(masks, f.name) for f in fields(masks)}
        head_masks["slot"] = masks.slot.gather(-2, index).squeeze(-2)  # (B, T, n_slots)
        log_probs, entropies = [], []
        for i, head in enumerate(HEADS):
            dist = _distribution(head, out.logits[head], head_masks[head], relevance[..., i])
            log_probs.append(dist.log_prob(actions[..., i]))
            entropies.append(dist.entropy())
        zero = torch.zeros((), dtype=out.value.dtype, device=out.value.device)
        head_log_prob = torch.where(relevance, torch.stack(log_probs, dim=-1), zero)
        entropy = torch.where(relevance, torch.stack(entropies, dim=-1), zero)
        return Evaluation(
            log_prob=head_log_prob.sum(dim=-1),
            head_log_prob=head_log_prob,
            entropy=entropy,
            relevance=relevance,
            value=out.value,
        )


class PolicyController:
    """A trained ``PolicyNetwork`` as a ``Controller``: one ``decide`` per engine step.

    The LSTM state carries over between calls; the first call after construction or ``reset``
    starts an episode from a zero state.

    Args:
        network: the policy (weights come from the policy checkpoint, not ``state_dict``).
        space: the action space the network was built for.
        normalizer: the observation statistics the network was trained with.
        telemetry: whether observations include the per-slot telemetry blocks.
        deterministic: take the most likely valid action (True) or sample one from a private
            generator seeded from torch's global one (its state is in ``state_dict``).

    Attributes:
        emit: where each decision's ``PolicyDecision`` event goes (chosen and valid options,
            log-probability, value); None (the default) records nothing.

    Raises:
        ValueError: if the network, normalizer and space disagree on sizes.
    """

    def __init__(
        self,
        network: PolicyNetwork,
        space: ActionSpace,
        normalizer: RunningMeanStd,
        telemetry: bool,
        deterministic: bool = True,
    ) -> None:
        size = observation_size(telemetry)
        require(
            network.obs_size == size == normalizer.size,
            f"telemetry={telemetry} observations have {size} features, but the network "
            f"takes {network.obs_size} and the normalizer {normalizer.size}",
        )
        require(
            network.head_sizes == space.head_sizes,
            f"network heads {network.head_sizes} do not match the action space "
            f"{space.head_sizes} ({space.topology.value})",
        )
        self.network = network
        self.space = space
        self.normalizer = normalizer
        self.telemetry = telemetry
        self.deterministic = deterministic
        self._device = network.value_head.weight.device
        self._generator: torch.Generator | None = None
        if not deterministic:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            self._generator = torch.Generator(device=self._device).manual_seed(seed)
        self._state: LSTMState | None = None
        self._steps = 0
        self.emit: Callable[[PolicyDecision], None] | None = None

    def decide(self, observation: Observation) -> Action:
        """Encode, normalize and act on one observation (batch of 1)."""
        x = encode_observation(observation, self.telemetry).to(self._device)
        x = self.normalizer.normalize(x).unsqueeze(0)  # (1, D)
        valid = self.space.masks(observation)
        masks = ActionMasks.stack([valid]).to(self._device)
        state = self._state if self._state is not None else self.network.initial_state(1)
        with torch.no_grad():
            step = self.network.act(x, masks, state, self.deterministic, self._generator)
        self._state = step.state
        self._steps += 1
        indices = step.actions[0].tolist()
        if self.emit is not None:
            log_prob, value = float(step.log_prob[0]), float(step.value[0])
            epoch = observation.signals.epoch
            self.emit(self.space.decision(valid, indices, epoch, log_prob, value))
        return self.space.decode(indices, reason="policy")

    def reset(self) -> None:
        """Forget the episode: the next ``decide`` starts from a zero LSTM state."""
        self._state = None
        self._steps = 0

    def state_dict(self) -> dict[str, Any]:
        """Decisions so far, the LSTM state (nested lists, ``None`` before the first decision)
        and the sampling generator's state (``None`` when deterministic), as JSON data."""
        lstm = None if self._state is None else [t.tolist() for t in self._state]
        rng = None if self._generator is None else self._generator.get_state().tolist()
        return {"steps": self._steps, "lstm": lstm, "rng": rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the memory saved by ``state_dict``.

        Raises:
            ValueError: for wrong keys, an LSTM state of the wrong shape or not finite, a step
                count that is not an integer >= 0, or a generator state that does not fit this
                controller's ``deterministic`` setting.
        """
        keys = sorted(self.state_dict())
        require(
            sorted(state) == keys,
            f"PolicyController state keys {sorted(state)} do not match {keys}",
        )
        lstm: LSTMState | None = None
        if state["lstm"] is not None:
            h, c = (
                torch.tensor(v, dtype=torch.float32, device=self._device) for v in state["lstm"]
            )
            expected = (1, 1, self.network.config.lstm_hidden)
            require(
                h.shape == c.shape == expected,
                f"LSTM state shapes {tuple(h.shape)}/{tuple(c.shape)}, expected {expected}",
            )
            finite = bool(h.isfinite().all() and c.isfinite().all())
            require(finite, "the LSTM state is not finite (NaN or infinity)")
            lstm = (h, c)
        check_int("steps", state["steps"], 0, MAX_INT64)
        require(
            (state["rng"] is None) == (self._generator is None),
            f"generator state {'missing' if state['rng'] is None else 'present'} but this "
            f"controller has deterministic={self.deterministic}",
        )
        if self._generator is not None:
            self._generator.set_state(torch.tensor(state["rng"], dtype=torch.uint8))
        self._state = lstm
        self._steps = state["steps"]
