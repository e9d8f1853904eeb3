"""The settings every run shares: host training and telemetry (DESIGN §8, "one config tree").

``HostTraining`` is the one host-training block. It is nested in the growth-run config
(``esper static|heuristic|eval``) and in Simic's ``TrainingConfig`` (``esper ppo``), read by
Tolaria's ``Trainer`` and by the episode, and resolved against its task in exactly one function,
``esper.tasks.resolve_training``: a field left ``None`` takes the task's default there.

Every field's docstring is its ``--help`` text. Values are validated at construction, so a flag,
a config file and a hand-edited ``config.json`` fail with the same one-line message.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from esper.leyline.slots import ordered_slots

MAX_SEED = 2**63 - 1
"""Seeds are stored in int64 (torch generators, JSON readers): larger ones cannot be recorded."""

MAX_COUNT = 10**7
"""Upper bound of epochs, batch sizes, sample counts: far above any run this machine can hold,
low enough that a typo (1e9 epochs) fails up front rather than after hours."""

TelemetryName = Literal["minimal", "normal", "debug"]


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok`` (the one-line error every setting uses)."""
    if not ok:
        raise ValueError(message)


def check_int(name: str, value: object, low: int = 1, high: int = MAX_COUNT) -> None:
    """``value`` is an integer (not a bool) in ``[low, high]``, else a one-line error."""
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    require(ok, f"{name} must be an integer in [{low}, {high}], got {value!r}")


def check_float(
    name: str, value: object, low: float, high: float, strict_low: bool = False
) -> None:
    """``value`` is a finite number in ``(low, high]`` (``strict_low``) or ``[low, high]``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict_low else value >= low) and value <= high  # type: ignore[operator]
    bound = "(" if strict_low else "["
    require(ok, f"{name} must be a number in {bound}{low}, {high}], got {value!r}")


def check_bool(name: str, value: object) -> None:
    """``value`` is ``True`` or ``False`` (a JSON 1 is not)."""
    require(isinstance(value, bool), f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class HostTraining:
    """Task, host training and slots.

    Attributes:
        task: task preset (host + data + defaults); ``esper --help`` lists them.
        epochs: host epochs per episode (None: the task's default).
        batch_size: training batch size (None: the task's).
        batches_per_epoch: training batches per epoch (None: the task's; a full pass if unset).
        val_samples: validation samples per epoch (None: the task's; all if unset).
        lr: AdamW learning rate of the host and fossilized seeds (None: the task's).
        seed_lr: AdamW learning rate of live seeds (None: ``lr``).
        weight_decay: AdamW decoupled weight decay.
        threads: torch intra-op threads (None: torch's default); the count changes results.
        slots: slots a controller may grow in.
        shapley: also measure exact Shapley values of blended seeds every epoch (2^n forwards).
        data_dir: dataset directory or text file (None: the standard locations).
        download: whether a missing dataset may be downloaded.
    """

    task: str
    epochs: int | None = None
    batch_size: int | None = None
    batches_per_epoch: int | None = None
    val_samples: int | None = None
    lr: float | None = None
    seed_lr: float | None = None
    weight_decay: float = 0.0
    threads: int | None = None
    slots: tuple[str, ...] = ("early", "mid", "late")
    shapley: bool = False
    data_dir: str | None = None
    download: bool = True

    def __post_init__(self) -> None:
        require(isinstance(self.task, str), f"task must be a task name, got {self.task!r}")
        for name in ("epochs", "batch_size", "batches_per_epoch", "val_samples"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        for name in ("lr", "seed_lr"):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), 0.0, 10.0, strict_low=True)
        check_float("weight_decay", self.weight_decay, 0.0, 10.0)
        if self.threads is not None:
            check_int("threads", self.threads, 1, 1024)
        require(
            isinstance(self.slots, tuple | list)
            and bool(self.slots)
            and all(isinstance(s, str) for s in self.slots),
            f"slots must be a non-empty list of slot names, got {self.slots!r}",
        )
        object.__setattr__(self, "slots", ordered_slots(self.slots))
        check_bool("shapley", self.shapley)
        check_bool("download", self.download)
        require(
            self.data_dir is None or isinstance(self.data_dir, str),
            f"data_dir must be a path or null, got {self.data_dir!r}",
        )

    @property
    def resolved(self) -> bool:
        """Whether the task's defaults have been filled in (``esper.tasks.resolve_training``)."""
        return None not in (self.epochs, self.batch_size, self.lr, self.seed_lr)

    def episode_length(self) -> int:
        """``epochs`` of a resolved block.

        Raises:
            ValueError: the block was not resolved against its task.
        """
        require(self.epochs is not None, "host training is not resolved (epochs is None)")
        assert self.epochs is not None
        return self.epochs


@dataclass(frozen=True)
class TelemetrySettings:
    """What a run logs beyond its event log.

    Attributes:
        level: telemetry level of the event log.
        tensorboard: also write TensorBoard scalars to ``tensorboard/`` in the run directory.
    """

    level: TelemetryName = "normal"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        require(
            self.level in ("minimal", "normal", "debug"),
            f"telemetry level must be one of minimal, normal, debug, got {self.level!r}",
        )
        check_bool("tensorboard", self.tensorboard)


MAX_CONFIG_DEPTH = 16
"""Deepest nesting a config file may have: the deepest real config has 2 levels."""


def _depth(data: object, limit: int) -> int:
    """Nesting depth of ``data``, stopping early past ``limit`` (no recursion on hostile input)."""
    level, frontier = 0, [data]
    while frontier and level <= limit:
        nxt: list[object] = []
        for item in frontier:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
        frontier, level = nxt, level + 1
    return level - 1 if not frontier else limit + 1


def override(obj: Any, data: object, path: str = "") -> Any:
    """``obj`` (a frozen config dataclass) with the groups and fields in ``data`` replaced.

    Strict: an unknown key fails naming the accepted ones; a nested dataclass takes a nested
    mapping; lists become tuples; each dataclass validates its values when rebuilt.

    Raises:
        ValueError: for an unknown key, a value of the wrong shape or a bad value.
    """
    where = path or "the configuration"
    if path == "" and _depth(data, MAX_CONFIG_DEPTH) > MAX_CONFIG_DEPTH:
        raise ValueError(f"the configuration is nested deeper than {MAX_CONFIG_DEPTH} levels")
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table of settings, got {data!r}")
    known = {f.name for f in fields(obj)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in {where}; accepted: {', '.join(sorted(known))}"
        )
    changes: dict[str, Any] = {}
    for name, value in data.items():
        current = getattr(obj, name)
        key = f"{path}.{name}" if path else name
        if is_dataclass(current):
            changes[name] = override(current, value, key)
        elif isinstance(current, tuple):
            if not isinstance(value, list | tuple):
                raise ValueError(f"{key} must be a list, got {value!r}")
            changes[name] = tuple(value)
        else:
            changes[name] = value
    try:
        return replace(obj, **changes)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path + ': ' if path else ''}{err}") from None


def config_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as plain data (tuples as lists): what ``config.json`` holds."""
    data: dict[str, Any] = json.loads(json.dumps(asdict(obj)))
    return data


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML (``.toml``) or JSON (any other name) config file.

    Raises:
        ValueError: for an unreadable file or invalid syntax, naming the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as err:
        raise ValueError(f"cannot read config file {str(path)!r}: {err}") from None
    except RecursionError:
        raise ValueError(f"config file {str(path)!r} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table of settings")
    return data


def config_text(obj: Any) -> str:
    """The effective configuration as readable multi-line TOML-like text (``key = value``
    lines under ``[group]`` headers), printed at the start of every run."""
    top: list[str] = []
    groups: list[str] = []
    for name, value in config_dict(obj).items():
        if isinstance(value, dict):
            groups.append(f"[{name}]")
            groups += [f"{k} = {json.dumps(v)}" for k, v in value.items()]
        else:
            top.append(f"{name} = {json.dumps(value)}")
    return "\n".join(top + groups)
