"""Building a PPO run from a ``TrainingConfig``, and loading a trained policy back.

A PPO checkpoint state (``trainer_state``) is one dict holding the resolved configuration, the
trainer's full state (policy, optimizer, grad scaler, normalizer, random states, counters,
environments) and the topology of the host; the run record stores it. ``load_policy`` turns it
into a ``PolicyController`` that any command can use in place of the heuristic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from esper.leyline import Topology
from esper.leyline.config import HostTraining, config_dict, override
from esper.leyline.data import Dataset
from esper.seeding import environment_seeds
from esper.simic.config import TrainingConfig
from esper.simic.env import GrowthEnv
from esper.simic.protocol import Emit, EnvVector
from esper.simic.rewards import RewardFunction, check_gamma
from esper.simic.training import PPOTrainer, Telemetry
from esper.simic.vector import VectorEnv, assign_devices
from esper.tamiyo.actions import ActionSpace
from esper.tamiyo.features import observation_size
from esper.tamiyo.normalizer import RunningMeanStd
from esper.tamiyo.policy import PolicyController, PolicyNetwork
from esper.tolaria.episode import dataset_on

CHECKPOINT_FORMAT = 3
"""Bumped whenever the checkpoint layout changes, so an old file fails with a clear message.
Format 3: the acting generators are derived each round (``RoundPolicy.generator``), none is
stored, so a format-2 run cannot resume; its policy still loads (``POLICY_FORMATS``)."""

POLICY_FORMATS = (2, 3)
"""Checkpoint formats whose trained policy ``load_policy`` reads (the network and normalizer
are stored alike in both)."""


class PolicyCheckpointError(ValueError):
    """A policy checkpoint is missing, unreadable, or not an Esper PPO checkpoint."""


def build_envs(
    config: TrainingConfig, data: Dataset, emit: Emit, indices: Sequence[int]
) -> VectorEnv:
    """Environments ``indices`` of a run (all of them in-process; a chunk on a Ray worker):
    environment ``i`` has seed ``runtime.seed + i`` and device ``i`` of the round-robin map.

    Args:
        config: the resolved training configuration.
        data: the task's dataset (shared read-only between the environments).
        emit: where the environments' telemetry goes, with ``{"env": i, "episode": k}``.
        indices: which of the run's ``ppo.n_envs`` environments to build.

    Raises:
        ValueError: for bad devices, slots, or a reward γ that differs from PPO's.
    """
    devices = assign_devices(config.ppo.n_envs, config.runtime.devices)
    reward = RewardFunction(config.reward, config.ppo.gamma, config.ppo.truncation)
    check_gamma(reward, config.ppo.gamma)
    # one copy of the dataset per device, shared by its environments (not one per environment)
    on_device = {devices[i]: dataset_on(data, devices[i]) for i in indices}
    seeds = environment_seeds(config.runtime.seed, config.ppo.n_envs)
    envs = [
        GrowthEnv(
            config.env,
            on_device[devices[i]],
            seed=seeds[i],
            device=devices[i],
            reward=reward,
            emit=emit,
            index=i,
        )
        for i in indices
    ]
    return VectorEnv(envs, [devices[i] for i in indices], emit, indices=indices)


def build_trainer(
    config: TrainingConfig, telemetry: Telemetry, data: Dataset
) -> tuple[PPOTrainer, tuple[torch.device, ...]]:
    """Environments (one per ``n_envs``, mapped round-robin to devices; on
    ``runtime.workers`` Ray actors when set) and their trainer, both emitting to ``telemetry``
    (a ``nissa.TelemetryHub``).

    Raises:
        ValueError: for bad devices, slots, or a reward γ that differs from PPO's.
    """
    config = config.resolved()
    devices = assign_devices(config.ppo.n_envs, config.runtime.devices)
    vec: EnvVector
    if config.runtime.workers is None:
        vec = build_envs(config, data, telemetry.emit, range(config.ppo.n_envs))
    else:  # imported only here: a run without workers never imports Ray
        from esper.simic.workers import RayVectorEnv

        vec = RayVectorEnv(config, telemetry.emit)
    trainer = PPOTrainer(vec, devices[0], config, telemetry.emit, telemetry.set_level)
    return trainer, devices


def trainer_state(trainer: PPOTrainer) -> dict[str, Any]:
    """What a PPO checkpoint holds: the resolved configuration, the host topology and the
    trainer's full state (policy, optimizer, scaler, normalizer, random states, environments)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config_dict(trainer.config),
        "topology": trainer.topology.value,
        "trainer": trainer.state_dict(),
    }


def _config_of(state: Any) -> TrainingConfig:
    if not isinstance(state, dict) or state.get("format") not in POLICY_FORMATS:
        formats = " or ".join(map(str, POLICY_FORMATS))
        raise PolicyCheckpointError(
            f"not an Esper PPO checkpoint (format {formats}); was it written by another "
            "version of Esper?"
        )
    try:
        config: TrainingConfig = override(TrainingConfig(), state["config"])
    except (KeyError, ValueError) as err:
        raise PolicyCheckpointError(f"damaged PPO checkpoint: {err}") from err
    return config


def check_resumable(state: dict[str, Any]) -> None:
    """A PPO checkpoint state this Esper can continue training from.

    Raises:
        PolicyCheckpointError: written in another checkpoint format (an older one's policy
            still evaluates with ``esper eval --policy``).
    """
    found = state.get("format")
    if found != CHECKPOINT_FORMAT:
        why = " (acting changed; its policy still evaluates)" if found in POLICY_FORMATS else ""
        raise PolicyCheckpointError(
            f"its checkpoint is format {found!r}, and this Esper resumes format "
            f"{CHECKPOINT_FORMAT} only{why}"
        )


def policy_training(state: dict[str, Any]) -> HostTraining:
    """The environment settings the policy in a PPO checkpoint state was trained with.

    Raises:
        PolicyCheckpointError: not a PPO checkpoint state.
    """
    return _config_of(state).env


def load_policy(state: dict[str, Any], topology: Topology, auto_advance: bool) -> PolicyController:
    """A ``PolicyController`` acting greedily with the policy in a PPO checkpoint state.

    Args:
        state: ``trainer_state`` output, read back from a PPO run's checkpoint.
        topology: the topology of the host it will control (must match the training host's).
        auto_advance: whether the episode it controls advances seeds itself
            (``HostTraining.auto_advance``; ADVANCE is then masked). An eval takes the PPO
            run's setting (``policy_training``) unless told otherwise.

    Raises:
        PolicyCheckpointError: for a damaged state or a topology mismatch.
    """
    config = _config_of(state)
    try:
        trained_on = Topology(state["topology"])
        space = ActionSpace(trained_on, auto_advance)
        size = observation_size(config.policy.slot_telemetry)
        network = PolicyNetwork(size, space.head_sizes, config.policy)
        network.load_state_dict(state["trainer"]["policy"])
        normalizer = RunningMeanStd(size)
        normalizer.load_state_dict(state["trainer"]["normalizer"])
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise PolicyCheckpointError(f"damaged PPO checkpoint: {err}") from err
    # NaN weights choose WAIT forever, with no probability or value to show for it (the
    # normalizer refuses non-finite statistics itself)
    if not all(bool(t.isfinite().all()) for t in network.state_dict().values()):
        raise PolicyCheckpointError(
            "the policy's weights are not finite (NaN or infinity): its training diverged, or "
            "the checkpoint was altered"
        )
    if trained_on is not topology:
        raise PolicyCheckpointError(
            f"the policy was trained on a {trained_on.value} host; "
            f"this task's host is {topology.value}"
        )
    network.eval()
    return PolicyController(network, space, normalizer, config.policy.slot_telemetry)
