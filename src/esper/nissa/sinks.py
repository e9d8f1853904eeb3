"""The TensorBoard sink (an optional extra); console progress is ``esper.nissa.console``.

It reads the same records the JSONL log gets (``event_record`` output plus ``t``, ``run_id`` and,
in PPO runs, ``env``/``episode``), so it shows exactly what the log holds. A value that was not
measured (None, NaN) is left out: never 0.
"""

from __future__ import annotations

import math
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from esper.leyline.events import (
    EpisodeFinished,
    EpochCompleted,
    GovernorPanic,
    PPOUpdate,
    SlotSnapshot,
)

_EPOCH = EpochCompleted.__name__
_EPISODE = EpisodeFinished.__name__
_UPDATE = PPOUpdate.__name__
_PANIC = GovernorPanic.__name__


def _measured(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardSetupError(RuntimeError):
    """TensorBoard logging was asked for but the ``tensorboard`` package is not installed."""


def check_tensorboard() -> None:
    """Fail early, before a run writes anything, when TensorBoard logging cannot work.

    Raises:
        TensorBoardSetupError: naming the missing package and how to install it.
    """
    try:
        import torch.utils.tensorboard  # noqa: F401  (the writer needs the tensorboard package)
    except ImportError as err:
        raise TensorBoardSetupError(
            "--tensorboard needs the tensorboard package: pip install 'esper[tensorboard]'"
        ) from err


_PPO_SCALARS = tuple(f.name for f in fields(PPOUpdate) if f.name not in ("round", "early_stopped"))
_SLOT_HINTS = typing.get_type_hints(SlotSnapshot)
_SLOT_SCALARS = tuple(
    f.name for f in fields(SlotSnapshot) if _SLOT_HINTS[f.name] in (int, float, float | None)
)


class TensorBoardSink:
    """Scalars for TensorBoard in ``log_dir`` (``pip install 'esper[tensorboard]'``).

    Single-model runs: accuracy, loss, parameter count and per-slot α / contribution / Shapley
    value / seed size against the epoch, and governor panics. PPO runs: every numeric
    ``PPOUpdate`` statistic against the round, and each environment's episode return and final
    accuracy against its episode.

    Raises:
        TensorBoardSetupError: when the ``tensorboard`` package is missing.
    """

    def __init__(self, log_dir: Path) -> None:
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter  # only when enabled (STYLE 15)

        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if _measured(value):
            self._writer.add_scalar(tag, float(value), step)

    def write(self, record: dict[str, Any]) -> None:
        """Add the record's scalars (see the class docstring); other events are ignored."""
        event = record["event"]
        if event == _EPOCH and "env" not in record:
            step = record["epoch"]
            for split in ("train", "val"):
                self._scalar(f"accuracy/{split}", record[f"{split}_accuracy"], step)
                self._scalar(f"loss/{split}", record[f"{split}_loss"], step)
            self._scalar("params", record["param_count"], step)
            for slot in record["slots"]:
                for name in _SLOT_SCALARS:
                    self._scalar(f"slot/{slot['slot']}/{name}", slot[name], step)
        elif event == _PANIC and "env" not in record:
            self._scalar("governor/panic", 1, record["epoch"])
        elif event == _UPDATE:
            for name in _PPO_SCALARS:
                self._scalar(f"ppo/{name}", record[name], record["round"])
        elif event == _EPISODE:
            env, episode = record["env"], record["episode"]
            self._scalar(f"episode/return/env{env}", record["episode_return"], episode)
            self._scalar(f"episode/accuracy/env{env}", record["final_val_accuracy"], episode)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
