"""Building a PPO run from a ``TrainingConfig``, and loading a trained policy back.

A training checkpoint (``checkpoints/ppo.pt``) is one ``torch.save`` dict holding the resolved
configuration, the trainer's full state (policy, optimizer, grad scaler, normalizer, random
states, counters, environments) and the topology of the host. ``load_policy`` turns it into a
``PolicyController`` that any command can use in place of the heuristic.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from esper.data import load_dataset
from esper.leyline import Topology
from esper.leyline.data import Dataset
from esper.simic.config import TrainingConfig
from esper.simic.env import GrowthEnv
from esper.simic.rewards import RewardFunction, check_gamma
from esper.simic.training import PPOTrainer, Telemetry
from esper.simic.vector import assign_devices
from esper.tamiyo.actions import ActionSpace
from esper.tamiyo.features import observation_size
from esper.tamiyo.normalizer import RunningMeanStd
from esper.tamiyo.policy import PolicyConfig, PolicyController, PolicyNetwork
from esper.tasks import get_task

CHECKPOINT_FORMAT = 2
"""Bumped whenever the checkpoint layout changes, so an old file fails with a clear message."""


class PolicyCheckpointError(ValueError):
    """A policy checkpoint is missing, unreadable, or not an Esper PPO checkpoint."""


def load_task_data(config: TrainingConfig, progress: bool = False) -> Dataset:
    """The dataset of ``config.env.task`` (loaded once, shared by every environment)."""
    env = config.env
    return load_dataset(
        get_task(env.task).dataset, env.data_dir, download=env.download, progress=progress
    )


def build_trainer(
    config: TrainingConfig, telemetry: Telemetry, data: Dataset
) -> tuple[PPOTrainer, tuple[torch.device, ...]]:
    """Environments (one per ``n_envs``, mapped round-robin to devices) and their trainer, both
    emitting to ``telemetry`` (a ``nissa.TelemetryHub``).

    Raises:
        ValueError: for bad devices, slots, or a reward γ that differs from PPO's.
    """
    config = config.resolved()
    devices = assign_devices(config.ppo.n_envs, config.runtime.devices)
    reward = RewardFunction(config.reward, gamma=config.ppo.gamma)
    check_gamma(reward, config.ppo.gamma)
    envs = [
        GrowthEnv(
            config.env,
            data,
            seed=config.runtime.seed + i,
            device=devices[i],
            reward=reward,
            emit=telemetry.emit,
            index=i,
        )
        for i in range(config.ppo.n_envs)
    ]
    trainer = PPOTrainer(envs, devices, config, telemetry.emit, telemetry.set_level)
    return trainer, devices


def save_checkpoint(path: Path, trainer: PPOTrainer) -> None:
    """Write the trainer's state atomically (a crash never leaves half a checkpoint)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": trainer.config.to_dict(),
        "topology": trainer.topology.value,
        "trainer": trainer.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, checked for its format.

    Raises:
        PolicyCheckpointError: naming the file and what is wrong.
    """
    if not path.is_file():
        raise PolicyCheckpointError(f"policy checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PolicyCheckpointError(
            f"{str(path)!r} is not a readable Esper PPO checkpoint ({first})"
        ) from err
    if not isinstance(state, dict) or "format" not in state or state["format"] != CHECKPOINT_FORMAT:
        raise PolicyCheckpointError(
            f"{str(path)!r} is not an Esper PPO checkpoint (format {CHECKPOINT_FORMAT})"
        )
    return state


def load_policy(path: Path, topology: Topology) -> PolicyController:
    """A ``PolicyController`` acting greedily with the policy saved in ``path``.

    Args:
        path: a training checkpoint (``checkpoints/ppo.pt``) or the run directory holding it.
        topology: the topology of the host it will control (must match the training host's).

    Raises:
        PolicyCheckpointError: for an unreadable file or a topology mismatch.
    """
    if path.is_dir():
        path = path / "checkpoints" / "ppo.pt"
    state = read_checkpoint(path)
    try:
        config = TrainingConfig.from_dict(state["config"])
        trained_on = Topology(state["topology"])
        space = ActionSpace(trained_on)
        size = observation_size(config.policy.slot_telemetry)
        network = PolicyNetwork(
            size, space.head_sizes, PolicyConfig(config.policy.hidden, config.policy.lstm_hidden)
        )
        network.load_state_dict(state["trainer"]["policy"])
        normalizer = RunningMeanStd(size)
        normalizer.load_state_dict(state["trainer"]["normalizer"])
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise PolicyCheckpointError(f"damaged policy checkpoint {str(path)!r}: {err}") from err
    if trained_on is not topology:
        raise PolicyCheckpointError(
            f"the policy in {str(path)!r} was trained on a {trained_on.value} host; "
            f"this task's host is {topology.value}"
        )
    network.eval()
    return PolicyController(network, space, normalizer, config.policy.slot_telemetry)
