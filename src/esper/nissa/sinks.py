"""The TensorBoard sink (an optional extra), and the numbers it shares with experiment trackers;
console progress is ``esper.nissa.console``, MLflow ``esper.nissa.tracking``.

The sinks read the same records the JSONL log gets (``event_record`` output plus ``t``, ``run_id``
and, in PPO runs, ``env``/``episode``), so they show exactly what the log holds. ``scalars`` is the
one mapping from a record to tagged numbers and ``flat_config`` the one flattening of a run's
``config.json``: TensorBoard and MLflow name everything alike. A value that was not measured
(None, NaN) is left out: never 0.
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple

from esper.leyline.config import is_finite_number
from esper.leyline.events import (
    EpisodeFinished,
    EpochCompleted,
    GovernorPanic,
    PPORunFinished,
    PPOUpdate,
    RunFinished,
    SlotSnapshot,
)

_EPOCH = EpochCompleted.__name__
_EPISODE = EpisodeFinished.__name__
_UPDATE = PPOUpdate.__name__
_PANIC = GovernorPanic.__name__


def _numeric(cls: type) -> tuple[str, ...]:
    """The fields of the event ``cls`` that hold a number (or None: not measured)."""
    hints = typing.get_type_hints(cls)
    kinds = (int, float, int | None, float | None)
    return tuple(f.name for f in fields(cls) if hints[f.name] in kinds)


_PPO_SCALARS = tuple(n for n in _numeric(PPOUpdate) if n != "round")
_SLOT_SCALARS = _numeric(SlotSnapshot)
_FINISHED_SCALARS = {cls.__name__: _numeric(cls) for cls in (RunFinished, PPORunFinished)}
_FINISHED_STEP = {RunFinished.__name__: "epochs", PPORunFinished.__name__: "rounds"}


class Scalar(NamedTuple):
    """One measured number of a record: its tag (``accuracy/val``), value and step."""

    tag: str
    value: float
    step: int


def scalars(record: dict[str, Any]) -> list[Scalar]:
    """The measured numbers of one record, tagged; records of other events give none.

    Single-model runs: accuracy, loss, parameter count and per-slot α / contribution / Shapley
    value / seed size against the epoch, and governor panics. PPO runs: every numeric
    ``PPOUpdate`` statistic against the round, and each environment's episode return and final
    accuracy against its episode. Both: the end of the run (``RunFinished``/``PPORunFinished``)
    as ``run/<field>`` against the last epoch or round. None and NaN are left out.
    """
    event = record["event"]
    found: list[tuple[str, Any, int]] = []
    if event == _EPOCH and "env" not in record:
        step = record["epoch"]
        for split in ("train", "val"):
            found.append((f"accuracy/{split}", record[f"{split}_accuracy"], step))
            found.append((f"loss/{split}", record[f"{split}_loss"], step))
        found.append(("params", record["param_count"], step))
        for slot in record["slots"]:
            found += [(f"slot/{slot['slot']}/{n}", slot[n], step) for n in _SLOT_SCALARS]
    elif event == _PANIC and "env" not in record:
        found.append(("governor/panic", 1, record["epoch"]))
    elif event == _UPDATE:
        found += [(f"ppo/{n}", record[n], record["round"]) for n in _PPO_SCALARS]
    elif event == _EPISODE:
        env, episode = record["env"], record["episode"]
        found.append((f"episode/return/env{env}", record["episode_return"], episode))
        found.append((f"episode/accuracy/env{env}", record["final_val_accuracy"], episode))
    elif event in _FINISHED_SCALARS:
        step = record[_FINISHED_STEP[event]]
        found += [(f"run/{n}", record[n], step) for n in _FINISHED_SCALARS[event]]
    measured = [(tag, value, step) for tag, value, step in found if is_finite_number(value)]
    return [Scalar(tag, float(value), step) for tag, value, step in measured]


def flat_config(
    tree: dict[str, Any], prefix: str = ""
) -> dict[str, str | int | float | bool | None]:
    """A run's configuration (``config.json``'s object) with dotted keys (``training.task``):
    tables are flattened, a list becomes its JSON text, other values stay as they are (None is
    a setting left unset, which the sinks write as such, never as 0)."""
    flat: dict[str, str | int | float | bool | None] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = json.dumps(value) if isinstance(value, list) else value
    return flat


def config_markdown(tree: dict[str, Any]) -> str:
    """A run's configuration as pretty JSON in a Markdown code block (TensorBoard's text)."""
    return "```json\n" + json.dumps(tree, indent=2) + "\n```"


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
            "--telemetry.tensorboard needs the tensorboard package: "
            "pip install 'esper[tensorboard]'"
        ) from err


class TensorBoardSink:
    """TensorBoard in ``log_dir`` (``pip install 'esper[tensorboard]'``): the ``scalars`` of every
    record and, given the run's configuration, its text (``config``) and its hyperparameters
    (the HParams plugin: ``flat_config`` against the ``run/...`` scalars of the run's end).

    Raises:
        TensorBoardSetupError: when the ``tensorboard`` package is missing.
    """

    def __init__(self, log_dir: Path, config: dict[str, Any] | None = None) -> None:
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter  # only when enabled (STYLE 15)

        self.log_dir, self.config = log_dir, config
        self._writer = SummaryWriter(log_dir=str(log_dir))
        self._final: set[str] = set()  # the run/... tags written: the hyperparameters' metrics
        if config is not None:
            self._writer.add_text("config", config_markdown(config), 0)

    def write(self, record: dict[str, Any]) -> None:
        """Add the record's ``scalars``."""
        for tag, value, step in scalars(record):
            self._writer.add_scalar(tag, value, step)
            if tag.startswith("run/"):
                self._final.add(tag)

    def close(self) -> None:
        """Write the hyperparameters (with the configuration), flush and close the event file."""
        if self.config is not None:
            from torch.utils.tensorboard.summary import hparams

            # The plugin stores a bool as the number 1/0: its JSON word keeps it a setting.
            values = {
                k: json.dumps(v) if isinstance(v, bool) else v
                for k, v in flat_config(self.config).items()
            }  # None (unset) is left out by the plugin
            # Only the metrics' tags are read: their values are the run/... scalars written.
            metrics = dict.fromkeys(sorted(self._final))
            writer: Any = self._writer.file_writer  # torch types it None; __init__ opened it
            for summary in hparams(values, metrics):  # type: ignore[no-untyped-call]
                writer.add_summary(summary)
        self._writer.close()
