"""The one interface every controller implements, and the control arm that never grows."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from esper.leyline import Action, Observation, Op


@runtime_checkable
class Controller(Protocol):
    """What the engine needs from a controller: one ``Action`` per step, and resumable state.

    The heuristic and the PPO policy both implement it, so every command can swap them.
    """

    def decide(self, observation: Observation) -> Action:
        """Propose one action for the step just finished."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The controller's memory as JSON-serializable data, for checkpoints and resume."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the memory saved by ``state_dict``."""
        ...


class StaticController:
    """The control arm of every experiment: a host that never grows.

    ``decide`` always returns ``Action(Op.WAIT, reason="static")``; it has no memory.
    """

    def decide(self, observation: Observation) -> Action:
        """Always WAIT."""
        return Action(Op.WAIT, reason="static")

    def state_dict(self) -> dict[str, Any]:
        """An empty dict: the static controller remembers nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accept only the empty state ``state_dict`` produces.

        Raises:
            ValueError: if ``state`` holds any key (it was saved by another controller).
        """
        if state:
            raise ValueError(
                f"StaticController has no state; got keys {sorted(state)} "
                "(a checkpoint from another controller?)"
            )
