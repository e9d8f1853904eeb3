"""A cheap stand-in for the growth environment, with a known optimal policy (DESIGN §5).

PPO's learning check needs an environment that steps in microseconds and whose best return is
known. ``PlateauEnv`` has the real environment's observation and action interfaces (a CNN host,
slots ``early``/``mid``/``late``, every CNN blueprint offered, valid ``SeedStateReport`` s so the
real action masks apply) but no model: the host's training curve is synthetic.

One episode:

* a plateau epoch ``p`` is drawn uniformly from ``[plateau_earliest, plateau_latest]``;
* as in the real environment, ``reset()`` trains the first (synthetic) epoch and returns its
  observation, and each step trains one more, so an episode of ``episode_length`` epochs has
  ``episode_length - 1`` decisions; the step that reaches epoch ``episode_length`` is truncated
  (the stand-in never terminates);
* validation loss falls and accuracy rises from chance level (epoch 0) on an ease-out curve that
  flattens exactly at epoch ``p`` and stays flat; from epoch ``p`` on ``host_stabilized`` is True
  and ``plateau_epochs`` counts ``epoch - p``.

Rewards (components ``target`` and ``wrong``, in that order):

* ``+1`` for GERMINATE(``target_slot``, ``target_blueprint``) chosen on an observation whose
  plateau signal (``host_stabilized``) is on. It can be earned once: the seed occupies the slot.
* ``-wrong_cost`` for any other germination into an empty slot (wrong slot, wrong blueprint, or
  before the plateau). The seed occupies its slot for the rest of the episode, so germinating the
  target slot too early forfeits the ``+1``.
* ``0`` for WAIT (accepted) and for every other op: germinating into an occupied slot, ADVANCE,
  SET_ALPHA_TARGET, PRUNE and FOSSILIZE are refused no-ops (``accepted=False``), because the
  stand-in has no lifecycle past GERMINATED.

The optimal policy (``optimal_action``) waits until the plateau signal is on and then grows the
target seed: return ``1.0`` every episode. Any policy that germinates before the plateau loses.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from esper.kasmina import CNNHost, CNNHostConfig, blueprint_registry
from esper.leyline import (
    Action,
    BlendMode,
    Observation,
    Op,
    SeedStage,
    SeedStateReport,
    SlotSignals,
    Topology,
    TrainingSignals,
    ordered_slots,
)
from esper.leyline import thresholds as T
from esper.nissa import TelemetryHub
from esper.simic.config import TrainingConfig
from esper.simic.protocol import EnvStep, EpisodeInfo
from esper.simic.training import PPOTrainer
from esper.simic.vector import VectorEnv
from esper.tamiyo import TrackerConfig

TARGET = "target"
WRONG = "wrong"
STANDIN_COMPONENTS = (TARGET, WRONG)
"""Reward component names of the stand-in, in ``EnvStep.components`` order."""

TARGET_REWARD = 1.0
"""The whole return of a perfect episode, so learning curves read as a fraction of optimal."""

CHANCE_LOSS = math.log(10)
"""Validation loss of the untrained host: cross-entropy of a uniform guess over 10 classes."""

CHANCE_ACCURACY = 10.0
"""Validation accuracy of the untrained host, percent: chance over 10 classes."""

FINAL_LOSS_RANGE = (0.7, 1.2)
"""Plateau validation loss, drawn per episode: where a small CIFAR-10 CNN levels off."""

FINAL_ACCURACY_RANGE = (55.0, 75.0)
"""Plateau validation accuracy (percent), drawn per episode, matching that loss range."""

TRAIN_LOSS_RATIO = 0.9
"""Training loss runs a little below validation loss, as with a mildly overfitting host."""

TRAIN_ACCURACY_GAP = 3.0
"""Training accuracy runs this many points above validation accuracy, for the same reason."""

_STATE_KEYS = frozenset({"episode", "rng"})

_HISTORY = TrackerConfig().history
"""History windows as long as the real tracker's, so features see the same shapes."""


@dataclass(frozen=True)
class StandInConfig:
    """The stand-in's episode shape and reward.

    Attributes:
        episode_length: epochs per episode (``reset`` trains the first, so ``episode_length - 1``
            steps); the step reaching this epoch is truncated. 12 leaves room after the latest
            plateau to act, and before the earliest to be punished for acting early.
        plateau_earliest: earliest epoch the plateau can start (>= 1).
        plateau_latest: latest such epoch (< ``episode_length``, so a decision is still taken on
            a plateaued observation and the optimal germination always fits in the episode).
            The 3..7 spread makes "wait for the signal" the only policy that scores every
            episode; a fixed timing cannot.
        target_slot: the slot the optimal policy grows into.
        target_blueprint: the blueprint it grows there (a CNN blueprint).
        wrong_cost: cost of each other germination; 0.1 makes seeding everything early clearly
            worse than waiting without making exploration of germination hopeless.

    Raises:
        ValueError: for an unknown slot or blueprint (naming the accepted ones), a plateau range
            that is empty or does not fit in the episode, or a negative or non-finite cost.
    """

    episode_length: int = 12
    plateau_earliest: int = 3
    plateau_latest: int = 7
    target_slot: str = "mid"
    target_blueprint: str = "depthwise"
    wrong_cost: float = 0.1

    def __post_init__(self) -> None:
        if self.episode_length < 2:
            raise ValueError(f"episode_length must be >= 2 epochs, got {self.episode_length}")
        if not 1 <= self.plateau_earliest <= self.plateau_latest < self.episode_length:
            raise ValueError(
                "need 1 <= plateau_earliest <= plateau_latest < episode_length, got "
                f"{self.plateau_earliest}, {self.plateau_latest}, {self.episode_length}"
            )
        slots = _host_slots()
        if self.target_slot not in slots:
            raise ValueError(f"unknown target_slot {self.target_slot!r}; accepted: {list(slots)}")
        offered = blueprint_registry.names(Topology.CNN)
        if self.target_blueprint not in offered:
            raise ValueError(
                f"unknown target_blueprint {self.target_blueprint!r}; accepted: {list(offered)}"
            )
        if not (math.isfinite(self.wrong_cost) and self.wrong_cost >= 0.0):
            raise ValueError(f"wrong_cost must be a finite number >= 0, got {self.wrong_cost}")


def _meta_host() -> CNNHost:
    """The default CNN host on the meta device: real shapes and counts, no memory, no RNG use."""
    with torch.device("meta"):
        return CNNHost(CNNHostConfig())


def _host_slots() -> tuple[str, ...]:
    return ordered_slots(spec.slot for spec in _meta_host().injection_points)


@dataclass(frozen=True)
class _Curve:
    """One episode's synthetic training curve: ease-out from chance to the plateau at ``p``."""

    plateau: int
    final_loss: float
    final_accuracy: float

    def at(self, epoch: int) -> tuple[float, float]:
        """(validation loss, validation accuracy) after ``epoch`` epochs."""
        u = min(epoch, self.plateau) / self.plateau
        progress = 1.0 - (1.0 - u) ** 2  # slope 0 at the plateau: the curve flattens into it
        loss = CHANCE_LOSS + (self.final_loss - CHANCE_LOSS) * progress
        accuracy = CHANCE_ACCURACY + (self.final_accuracy - CHANCE_ACCURACY) * progress
        return loss, accuracy


class PlateauEnv:
    """The stand-in environment (see the module docstring). Implements ``Env``.

    Args:
        config: episode shape and reward.
        seed: seeds this environment's own generator (no global RNG is used); the same seed
            and the same actions give the same episodes.

    Attributes:
        topology: ``Topology.CNN``.
        slots: ``("early", "mid", "late")``.
        max_steps: ``episode_length - 1``, the steps of every episode.
        episode: episodes started so far.
        blueprints: every CNN blueprint, in registry (action-space) order.
        config: the configuration.
    """

    def __init__(self, config: StandInConfig, seed: int) -> None:
        self.config = config
        self.topology: Topology = Topology.CNN
        self.blueprints = blueprint_registry.names(Topology.CNN)
        host = _meta_host()
        specs = {spec.slot: spec for spec in host.injection_points}
        self.slots: tuple[str, ...] = ordered_slots(specs)
        self.max_steps = config.episode_length - 1
        self.episode = 0
        self._host_params = sum(p.numel() for p in host.parameters())
        self._seed_params = {
            (slot, name): blueprint_registry.get(name, Topology.CNN).param_count(spec)
            for slot, spec in specs.items()
            for name in self.blueprints
        }
        self._rng = random.Random(seed)
        self._curve: _Curve | None = None
        self._epoch = 0
        self._done = True
        self._seeds: dict[str, str | None] = {}
        self._in_stage: dict[str, int] = {}
        self._losses: list[float] = []
        self._accuracies: list[float] = []

    @property
    def optimal_return(self) -> float:
        """The return of ``optimal_action`` in every episode."""
        return TARGET_REWARD

    def reset(self) -> Observation:
        """Draw a new episode's plateau and curve; return the observation after epoch 1."""
        c = self.config
        self.episode += 1
        self._curve = _Curve(
            plateau=self._rng.randint(c.plateau_earliest, c.plateau_latest),
            final_loss=self._rng.uniform(*FINAL_LOSS_RANGE),
            final_accuracy=self._rng.uniform(*FINAL_ACCURACY_RANGE),
        )
        self._epoch = 1
        self._done = False
        self._seeds = dict.fromkeys(self.slots)
        self._in_stage = dict.fromkeys(self.slots, 0)
        self._losses, self._accuracies = [], []
        return self._observe(self._curve)

    def step(self, action: Action) -> EnvStep:
        """Apply ``action``, train one synthetic epoch and return the reward.

        Raises:
            RuntimeError: before ``reset()`` or after the episode ended.
            ValueError: for a slot or blueprint outside this environment's action space.
        """
        if self._done or self._curve is None:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        self._check(action)
        plateau_on = self._epoch >= self._curve.plateau  # what the action was chosen on
        target = wrong = 0.0
        accepted = action.op is Op.WAIT
        slot = action.slot
        if action.op is Op.GERMINATE and slot is not None and self._seeds[slot] is None:
            accepted = True
            self._seeds[slot] = action.blueprint
            self._in_stage[slot] = 0
            c = self.config
            hit = slot == c.target_slot and action.blueprint == c.target_blueprint
            if hit and plateau_on:
                target = TARGET_REWARD
            else:
                wrong = -c.wrong_cost
        self._epoch += 1
        for name in self.slots:
            self._in_stage[name] += 1
        truncated = self._epoch == self.config.episode_length
        self._done = truncated
        return EnvStep(
            observation=self._observe(self._curve),
            reward=target + wrong,
            components=((TARGET, target), (WRONG, wrong)),
            terminated=False,
            truncated=truncated,
            accepted=accepted,
        )

    def episode_info(self) -> EpisodeInfo:
        """The current episode's last validation accuracy and parameter counts.

        All three are None before the first episode (and after ``load_state_dict``).
        """
        if self._curve is None:
            return EpisodeInfo(None, None, None)
        seeds = sum(self._report(slot).seed_param_count for slot in self.slots)
        return EpisodeInfo(self._accuracies[-1], self._host_params + seeds, self._host_params)

    def state_dict(self) -> dict[str, Any]:
        """Episode counter and random state; with them the next ``reset`` continues exactly.

        Taken between episodes: an episode in progress is not saved.
        """
        return {"episode": self.episode, "rng": self._rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output; call ``reset`` next.

        Raises:
            ValueError: if keys are missing or unknown.
        """
        if set(state) != _STATE_KEYS:
            raise ValueError(
                f"PlateauEnv state keys {sorted(state)} do not match {sorted(_STATE_KEYS)}"
            )
        self.episode = int(state["episode"])
        self._rng.setstate(state["rng"])
        self._curve, self._done = None, True

    def _check(self, action: Action) -> None:
        if action.slot is not None and action.slot not in self.slots:
            raise ValueError(f"unknown slot {action.slot!r}; accepted: {list(self.slots)}")
        if action.blueprint is not None and action.blueprint not in self.blueprints:
            raise ValueError(
                f"unknown blueprint {action.blueprint!r}; accepted: {list(self.blueprints)}"
            )

    def _report(self, slot: str) -> SeedStateReport:
        blueprint = self._seeds[slot]
        seeded = blueprint is not None
        return SeedStateReport(
            slot=slot,
            stage=SeedStage.GERMINATED if seeded else SeedStage.DORMANT,
            blueprint=blueprint,
            blend_mode=BlendMode.ADD if seeded else None,
            alpha=0.0,
            alpha_target=T.DEFAULT_ALPHA_TARGET if seeded else 0.0,
            epochs_in_stage=self._in_stage[slot],
            counterfactual_contribution=None,  # a GERMINATED seed is never measured
            shapley_value=None,
            seed_gradient_norm_ratio=None,
            gradient_healthy=None,
            seed_param_count=0 if blueprint is None else self._seed_params[(slot, blueprint)],
            host_param_count=self._host_params,
        )

    def _observe(self, curve: _Curve) -> Observation:
        loss, accuracy = curve.at(self._epoch)
        previous = (self._losses[-1], self._accuracies[-1]) if self._losses else None
        self._losses.append(loss)
        self._accuracies.append(accuracy)
        reports = {slot: self._report(slot) for slot in self.slots}
        signals = TrainingSignals(
            epoch=self._epoch,
            train_loss=loss * TRAIN_LOSS_RATIO,
            train_accuracy=min(accuracy + TRAIN_ACCURACY_GAP, 100.0),
            val_loss=loss,
            val_accuracy=accuracy,
            loss_delta=None if previous is None else loss - previous[0],
            accuracy_delta=None if previous is None else accuracy - previous[1],
            best_val_accuracy=max(self._accuracies),
            plateau_epochs=max(self._epoch - curve.plateau, 0),
            host_stabilized=self._epoch >= curve.plateau,
            loss_history=tuple(self._losses[-_HISTORY:]),
            accuracy_history=tuple(self._accuracies[-_HISTORY:]),
            slots=tuple(SlotSignals(s, r.stage, None, None, ()) for s, r in reports.items()),
            best_slot=None,
            worst_slot=None,
        )
        return Observation(
            signals=signals,
            reports=MappingProxyType(reports),
            blueprints=self.blueprints,
            max_epochs=self.config.episode_length,
        )


def optimal_action(observation: Observation, config: StandInConfig) -> Action:
    """The known optimal policy: wait for the plateau signal, then grow the target seed once.

    Reads only the observation (and the task's target from ``config``).
    """
    ready = observation.signals.host_stabilized
    if ready and observation.reports[config.target_slot].stage is SeedStage.DORMANT:
        return Action(
            Op.GERMINATE,
            slot=config.target_slot,
            blueprint=config.target_blueprint,
            reason="plateau reached: grow the target seed",
        )
    return Action(Op.WAIT, reason="target grown" if ready else "host still improving")


def standin_trainer(
    config: TrainingConfig, envs: list[PlateauEnv], hub: TelemetryHub
) -> PPOTrainer:
    """A PPO trainer on stand-in environments, policy and environments on the CPU."""
    cpu = torch.device("cpu")
    return PPOTrainer(
        VectorEnv(envs, [cpu] * len(envs), hub.emit), cpu, config, hub.emit, hub.set_level
    )
