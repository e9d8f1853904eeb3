"""The growth environment: Tolaria's episode plus a reward, for PPO.

The episode itself (build a host, train, apply actions, observe) is ``esper.tolaria.Episode`` —
the same loop ``esper static|heuristic|eval`` run. This module only scores each step with the
reward function and reports it, and builds episodes from a task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from esper.data import BatchStream
from esper.kasmina import SegmentedHost
from esper.leyline import Action, Observation
from esper.leyline.config import HostTraining, measured
from esper.leyline.data import Dataset
from esper.leyline.events import Event, RewardComputed
from esper.simic.protocol import Emit, EnvStep, EpisodeInfo
from esper.simic.rewards import RewardFunction, RewardInput
from esper.tamiyo import SignalTracker
from esper.tasks import get_task
from esper.tolaria.engine import ReportProgress
from esper.tolaria.episode import Episode, Transition, reset_together, step_together


class EpisodeStartError(RuntimeError):
    """The governor ended an episode on its first epoch: no decision can be made, the settings
    (typically the learning rate) are broken."""


def task_episode(
    training: HostTraining,
    data: Dataset,
    seed: int,
    device: torch.device,
    emit: Callable[[Event], None],
    progress: ReportProgress | None = None,
) -> Episode:
    """An episode of ``training``'s task: its host (at ``training.width``; None: the task's), a
    seeded ``BatchStream``, a fresh ``SignalTracker`` per episode. Every command builds its
    episodes here; ``progress`` is where progress within an epoch goes (single-model runs)."""
    batch_size = training.batch_size
    if batch_size is None:
        raise ValueError("task_episode needs host training resolved against its task")

    def stream(episode_seed: int) -> BatchStream:
        return BatchStream(
            episode.data.x_train,
            episode.data.y_train,
            batch_size,
            episode_seed,
            augment=data.augment,
        )

    task = get_task(training.task)

    def build_host(episode_data: Dataset) -> SegmentedHost:
        return task.build_host(episode_data, training.width)

    episode = Episode(
        training, data, build_host, stream, SignalTracker, seed, device, emit, progress
    )
    return episode


class GrowthEnv:
    """A morphogenetic training run as an RL environment (implements ``Env``).

    Args:
        training: task, host training and slots (resolved).
        data: the task's dataset (shared read-only between environments).
        seed: this environment's seed.
        device: where its host trains.
        reward: the reward function.
        emit: where its telemetry goes, with ``{"env": index, "episode": k}`` context.
        index: this environment's index (for telemetry).
    """

    def __init__(
        self,
        training: HostTraining,
        data: Dataset,
        seed: int,
        device: torch.device,
        reward: RewardFunction,
        emit: Emit,
        index: int = 0,
    ) -> None:
        self.reward, self.index, self._emit = reward, index, emit
        self.episode = task_episode(training, data, seed, device, self._emit_event)
        self.topology, self.slots = self.episode.topology, self.episode.slots
        self.max_steps = self.episode.max_epochs - 1

    def _emit_event(self, event: Event) -> None:
        self._emit(event, {"env": self.index, "episode": self.episode.episode})

    def reset(self) -> Observation:
        """Start the next episode (see ``Episode.reset``).

        Raises:
            EpisodeStartError: when the governor terminates the episode on its very first epoch
                (no decision can be made; the settings are broken, e.g. a diverging lr).
        """
        return reset_envs([self])[0]

    def _check_start(self, observation: Observation) -> Observation:
        if self.episode.trainer.terminated:
            raise EpisodeStartError(
                f"env {self.index}: the governor ended episode {self.episode.episode} on its "
                f"first epoch (val loss {self.episode.last.val_loss}); lower the learning rate"
            )
        return observation

    def step(self, action: Action) -> EnvStep:
        """Apply ``action``, train the next epoch, and score the step."""
        return step_envs([self], [action])[0]

    def _score(self, t: Transition) -> EnvStep:
        """Score a transition of this environment's episode with the reward function."""
        episode, action = self.episode, t.action
        (last, before), (result, after) = t.before, t.after
        terminated = episode.trainer.terminated
        truncated = not terminated and episode.done
        breakdown = self.reward(
            RewardInput(
                action=action,
                accepted=t.accepted,
                before=before,
                after=after,
                val_accuracy_before=last.val_accuracy,
                val_accuracy_after=result.val_accuracy,
                val_loss_before=last.val_loss,
                val_loss_after=result.val_loss,
                active_params=episode.model.active_param_count(),
                host_params=episode.model.host_param_count,
                terminated=terminated,
                truncated=truncated,
                epoch=result.epoch,
                max_epochs=episode.max_epochs,
            )
        )
        self._emit_event(RewardComputed(result.epoch, breakdown.total, breakdown.components))
        return EnvStep(
            t.observation, breakdown.total, breakdown.components, terminated, truncated, t.accepted
        )

    def episode_info(self) -> EpisodeInfo:
        """Final validation accuracy (None when not finite) and parameter counts."""
        accuracy = self.episode.last.val_accuracy
        return EpisodeInfo(
            measured(accuracy),
            self.episode.model.active_param_count(),
            self.episode.model.host_param_count,
        )

    def state_dict(self) -> dict[str, Any]:
        """What the next ``reset`` depends on (``Episode.start_state``), taken between episodes:
        the finished episode's model, optimizer and data order are not needed again. (They were
        3.8 MB for 8 impaired-host environments, mostly each data stream's permutation, sent
        through Ray twice a round with workers: 150-540 ms of a 2-s round.)

        Raises:
            RuntimeError: an episode is in progress.
        """
        episode = self.episode
        if episode.epoch > 0 and not episode.done:
            raise RuntimeError("an environment's state is taken between episodes")
        return episode.start_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output; the next ``reset`` continues the sequence exactly."""
        self.episode.load_state_dict(state)


def reset_envs(envs: Sequence[GrowthEnv], chunk: int = 1) -> list[Observation]:
    """``reset`` every environment, their first epochs trained together in chunks of ``chunk``
    (``esper.tolaria.episode.reset_together``).

    Raises:
        EpisodeStartError: for the first environment whose governor ended its first epoch.
    """
    observations = reset_together([env.episode for env in envs], chunk)
    return [env._check_start(o) for env, o in zip(envs, observations, strict=True)]


def step_envs(
    envs: Sequence[GrowthEnv], actions: Sequence[Action], chunk: int = 1
) -> list[EnvStep]:
    """``step`` every environment with its action, the epochs trained together in chunks of
    ``chunk`` (``esper.tolaria.episode.step_together``)."""
    transitions = step_together([env.episode for env in envs], actions, chunk)
    return [env._score(t) for env, t in zip(envs, transitions, strict=True)]
