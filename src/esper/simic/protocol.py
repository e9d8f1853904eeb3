"""The environment interface PPO learns from: ``reset()`` then ``step(action)`` until done.

An environment is self-contained (built from a plain config), so the same environments could run
in worker processes or on a cluster engine without touching the PPO code (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from esper.leyline import Action, Observation, Topology
from esper.leyline.events import Event

if TYPE_CHECKING:
    from esper.simic.acting import RoundPolicy, Trajectory

Emit = Callable[[Event, dict[str, Any]], None]
"""Where PPO's telemetry goes: an event and its context (``{"env": i, "episode": k}`` or
empty)."""


@dataclass(frozen=True)
class EnvStep:
    """What one environment step returns.

    Attributes:
        observation: the observation after the step (the last one of the episode when done).
        reward: the scalar reward of the step (the sum of ``components``).
        components: every reward term by name, in a fixed order, for telemetry.
        terminated: the episode ended by failure (a governor panic): no bootstrap.
        truncated: the episode reached its length: the learner bootstraps from V(observation)
            (``ppo.horizon`` ``truncation``) or ends the episode there (``termination``).
        accepted: whether the environment accepted the action (a refused action is a no-op).
    """

    observation: Observation
    reward: float
    components: tuple[tuple[str, float], ...]
    terminated: bool
    truncated: bool
    accepted: bool

    @property
    def done(self) -> bool:
        """The episode is over either way."""
        return self.terminated or self.truncated


@dataclass(frozen=True)
class EpisodeInfo:
    """How an episode ended, for telemetry; None where the environment has no such notion.

    Attributes:
        final_val_accuracy: the last epoch's validation accuracy (None if not finite).
        param_count: active parameters of the grown model at the end.
        host_param_count: parameters of the host alone.
    """

    final_val_accuracy: float | None
    param_count: int | None
    host_param_count: int | None


class Env(Protocol):
    """An episodic environment with Tamiyo's observation and action interfaces.

    Attributes:
        topology: the host kind, which fixes the blueprint head of the action space.
        slots: the enabled slots, in ``ordered_slots`` order.
        max_steps: the most ``step`` calls an episode can take (it is truncated there).
    """

    topology: Topology
    slots: tuple[str, ...]
    max_steps: int

    def reset(self) -> Observation:
        """Start a new episode and return its first observation."""
        ...

    def step(self, action: Action) -> EnvStep:
        """Apply ``action``, advance one step, and report what happened."""
        ...

    def episode_info(self) -> EpisodeInfo:
        """How the current (just finished) episode ended."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this environment exactly between episodes
        (episode counter, random state)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output."""
        ...


class EnvVector(Protocol):
    """Environments that run a round together (``VectorEnv`` in this process, or on Ray workers).

    Attributes:
        topology: the environments' shared host kind.
        max_steps: the longest episode any of them can take.
    """

    topology: Topology
    max_steps: int

    def __len__(self) -> int: ...

    def collect(self, policy: RoundPolicy) -> list[Trajectory]:
        """One episode in every environment, ``policy`` acting (``esper.simic.acting``)."""
        ...

    def state_dicts(self) -> list[dict[str, Any]]:
        """Each environment's state (taken between rounds)."""
        ...

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> None:
        """Restore ``state_dicts`` output."""
        ...
