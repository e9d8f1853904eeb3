"""The growth environment: one host training run as an episode for PPO.

``reset()`` builds a fresh host and trainer and trains the first epoch; each ``step(action)``
applies the policy's action through Tolaria, trains the next epoch and returns the reward. An
episode of ``episode_length`` epochs therefore has ``episode_length − 1`` decisions. It ends by
**truncation** when the last epoch is trained and by **termination** when the governor panics.

An environment is built from plain values (settings, seed, device), owns its data order (its own
``BatchStream`` per episode) and its own torch random state (host and seed initialization), so
its results do not depend on how many environments run beside it or in which order they step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from esper.data import BatchStream
from esper.kasmina import MorphogeneticModel, blueprint_registry
from esper.leyline import Action, Observation, SeedStateReport, Topology
from esper.leyline.data import Dataset
from esper.leyline.events import Event, RewardComputed
from esper.simic.config import EnvSettings
from esper.simic.protocol import EnvStep, EpisodeInfo
from esper.simic.rewards import RewardFunction, RewardInput
from esper.tamiyo import SignalTracker
from esper.tasks import get_task
from esper.tolaria import EngineConfig, StepResult, Trainer

EPISODE_SEED_STRIDE = 1_000_003
"""Episode ``k`` of an environment with seed ``s`` uses ``s * stride + k`` for its data order
and initialization; a prime stride keeps the streams of nearby seeds from overlapping."""

Emit = Callable[[Event, dict[str, Any]], None]


class EpisodeStartError(RuntimeError):
    """The governor ended an episode on its first epoch: no decision can be made, the settings
    (typically the learning rate) are broken."""


def dataset_on(data: Dataset, device: torch.device) -> Dataset:
    """The dataset with its tensors on ``device`` (the same object when already there)."""
    if data.x_train.device == device:
        return data
    return replace(
        data,
        x_train=data.x_train.to(device),
        y_train=data.y_train.to(device),
        x_val=data.x_val.to(device),
        y_val=data.y_val.to(device),
    )


class GrowthEnv:
    """A morphogenetic training run as an RL environment (implements ``Env``).

    Args:
        settings: task, host training and slots (already ``resolved``).
        data: the task's dataset (shared read-only between environments).
        seed: this environment's seed.
        device: where its host trains.
        reward: the reward function.
        emit: where its telemetry goes, with ``{"env": index, "episode": k}`` context.
        index: this environment's index (for telemetry).
    """

    def __init__(
        self,
        settings: EnvSettings,
        data: Dataset,
        seed: int,
        device: torch.device,
        reward: RewardFunction,
        emit: Emit,
        index: int = 0,
    ) -> None:
        if settings.batch_size is None or settings.host_lr is None or settings.seed_lr is None:
            raise ValueError("GrowthEnv needs resolved settings (TrainingConfig.resolved())")
        self.settings, self.seed, self.device = settings, seed, device
        self.data = dataset_on(data, device)
        self.task = get_task(settings.task)
        self.reward = reward
        self._emit, self.index = emit, index
        self.slots = settings.slots
        self.max_steps = settings.episode_length - 1
        self.engine = EngineConfig(
            max_epochs=settings.episode_length,
            batches_per_epoch=settings.batches_per_epoch,
            val_samples=settings.val_samples,
            host_lr=settings.host_lr,
            seed_lr=settings.seed_lr,
        )
        probe = self.task.build_host(self.data)  # validates the slots before the first episode
        MorphogeneticModel(probe, list(self.slots))
        self.topology: Topology = probe.injection_points[0].topology
        self.blueprints = blueprint_registry.names(self.topology)
        self.episode = 0  # episodes started so far
        self._rng = torch.Generator().manual_seed(seed).get_state()  # this env's torch RNG
        self._cuda_rng: torch.Tensor | None = None  # its CUDA device's, once it has run there
        self._trainer: Trainer | None = None
        self._tracker = SignalTracker()
        self._last: StepResult | None = None
        self._reports: dict[str, SeedStateReport] = {}

    # ------------------------------------------------------------------------------ RNG

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run the block on this environment's torch random state (CPU, and its CUDA device's),
        then save it back; the global states are restored afterwards."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.set_rng_state(self._rng)
            if cuda and self._cuda_rng is not None:
                torch.cuda.set_rng_state(self._cuda_rng, self.device)
            yield
            self._rng = torch.get_rng_state()
            if cuda:
                self._cuda_rng = torch.cuda.get_rng_state(self.device)

    def _emit_event(self, event: Event) -> None:
        self._emit(event, {"env": self.index, "episode": self.episode})

    # ------------------------------------------------------------------------------ episode

    @property
    def model(self) -> MorphogeneticModel:
        """The current episode's model."""
        if self._trainer is None:
            raise RuntimeError("call reset() before using the environment")
        return self._trainer.model

    def reset(self) -> Observation:
        """Build a fresh host and trainer, train the first epoch, return the first observation.

        Raises:
            EpisodeStartError: when the governor terminates the episode on its very first epoch
                (nothing can be decided; the settings are broken, e.g. a diverging lr).
        """
        self.episode += 1
        episode_seed = self.seed * EPISODE_SEED_STRIDE + self.episode
        with self._own_rng():
            torch.default_generator.manual_seed(episode_seed)
            if self.device.type == "cuda":  # only this env's device, not every GPU
                torch.cuda.default_generators[self.device.index or 0].manual_seed(episode_seed)
            host = self.task.build_host(self.data).to(self.device)
            model = MorphogeneticModel(host, list(self.slots))
            assert self.settings.batch_size is not None
            stream = BatchStream(
                self.data.x_train,
                self.data.y_train,
                self.settings.batch_size,
                episode_seed,
                augment=self.data.augment,
            )
            self._trainer = Trainer(model, self.data, stream, self.engine, self._emit_event)
            self._tracker = SignalTracker()
            result = self._trainer.train_step()
        if self._trainer.terminated:
            raise EpisodeStartError(
                f"env {self.index}: the governor ended episode {self.episode} on its first "
                f"epoch (val loss {result.val_loss}); lower the learning rate"
            )
        return self._observe(result)

    def _observe(self, result: StepResult) -> Observation:
        self._last = result
        self._reports = dict(self.model.reports())
        signals = self._tracker.update(
            train_loss=result.train_loss,
            train_accuracy=result.train_accuracy,
            val_loss=result.val_loss,
            val_accuracy=result.val_accuracy,
            reports=self._reports,
        )
        return Observation(signals, self._reports, self.blueprints, self.settings.episode_length)

    def step(self, action: Action) -> EnvStep:
        """Apply ``action``, train the next epoch, and score the step."""
        trainer, before, last = self._trainer, self._reports, self._last
        if trainer is None or last is None or trainer.done:
            raise RuntimeError("the episode is over; call reset()")
        with self._own_rng():
            accepted = trainer.apply(action)
            result = trainer.train_step()
        observation = self._observe(result)
        terminated = trainer.terminated
        truncated = not terminated and trainer.done
        breakdown = self.reward(
            RewardInput(
                action=action,
                accepted=accepted,
                before=before,
                after=self._reports,
                val_accuracy_before=last.val_accuracy,
                val_accuracy_after=result.val_accuracy,
                val_loss_before=last.val_loss,
                val_loss_after=result.val_loss,
                active_params=self.model.active_param_count(),
                host_params=self.model.host_param_count,
                terminated=terminated,
                truncated=truncated,
                epoch=trainer.epoch,
                max_epochs=self.settings.episode_length,
            )
        )
        self._emit_event(RewardComputed(trainer.epoch, breakdown.total, breakdown.components))
        return EnvStep(
            observation,
            breakdown.total,
            breakdown.components,
            terminated,
            truncated,
            accepted,
        )

    def episode_info(self) -> EpisodeInfo:
        """Final validation accuracy (None when not finite) and parameter counts."""
        accuracy = None if self._last is None else self._last.val_accuracy
        return EpisodeInfo(
            accuracy if accuracy is not None and math.isfinite(accuracy) else None,
            self.model.active_param_count(),
            self.model.host_param_count,
        )

    # ------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """Episode counter and torch random state (taken between episodes)."""
        cuda = None if self._cuda_rng is None else self._cuda_rng.clone()
        return {"episode": self.episode, "rng": self._rng.clone(), "cuda_rng": cuda}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output; the next ``reset`` continues the sequence exactly."""
        self.episode = int(state["episode"])
        self._rng = state["rng"].clone()
        cuda = state["cuda_rng"]
        self._cuda_rng = None if cuda is None else cuda.clone()
