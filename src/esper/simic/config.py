"""``TrainingConfig``: the single source of truth for a PPO run (DESIGN §5).

Resolution order, each layer overriding the one before: the field defaults below, a preset
(``PRESETS``), a strict JSON file (``--config-json``; unknown keys fail), then command-line flags.
Derived values (the task's defaults for unset host-training fields) are filled in exactly one
place, ``TrainingConfig.resolved``. The effective configuration is printed and saved as
``config.json`` in the run directory.

Fields are grouped by concern: ``env`` (task, host training, slots), ``policy`` (network),
``ppo`` (the learner), ``reward`` and ``runtime`` (seed, devices, AMP, telemetry).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from esper.leyline import TelemetryLevel, ordered_slots
from esper.simic.rewards import RewardConfig
from esper.tasks import get_task


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _positive_int(name: str, value: object, low: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    _require(ok, f"{name} must be an integer >= {low}, got {value!r}")


def _finite(name: str, value: object, low: float, high: float, strict_low: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict_low else value >= low) and value <= high  # type: ignore[operator]
    bound = "(" if strict_low else "["
    _require(ok, f"{name} must be a number in {bound}{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class EnvSettings:
    """Task, host training and slots of every environment.

    Attributes:
        task: task preset (host + data + defaults).
        episode_length: host epochs per episode; the policy decides after each but the last.
        batch_size: training batch size (None: the task's).
        batches_per_epoch: training batches per epoch (None: the task's; a full pass if unset).
        val_samples: validation samples per epoch (None: the task's; all if unset).
        host_lr: AdamW learning rate of the host (None: the task's).
        seed_lr: AdamW learning rate of live seeds (None: ``host_lr``).
        slots: slots the policy may grow in.
        data_dir: dataset directory or text file (None: the standard locations).
        download: whether a missing dataset may be downloaded.
    """

    task: str = "synthetic"
    episode_length: int = 12
    batch_size: int | None = None
    batches_per_epoch: int | None = None
    val_samples: int | None = None
    host_lr: float | None = None
    seed_lr: float | None = None
    slots: tuple[str, ...] = ("early", "mid", "late")
    data_dir: str | None = None
    download: bool = True

    def __post_init__(self) -> None:
        get_task(self.task)
        _positive_int("env.episode_length", self.episode_length, low=2)
        for name in ("batch_size", "batches_per_epoch", "val_samples"):
            if getattr(self, name) is not None:
                _positive_int(f"env.{name}", getattr(self, name))
        for name in ("host_lr", "seed_lr"):
            if getattr(self, name) is not None:
                _finite(f"env.{name}", getattr(self, name), 0.0, 1.0, strict_low=True)
        _require(
            bool(self.slots) and all(isinstance(s, str) for s in self.slots),
            f"env.slots must be a non-empty list of slot names, got {self.slots!r}",
        )
        object.__setattr__(self, "slots", ordered_slots(self.slots))
        _require(isinstance(self.download, bool), f"env.download must be a bool: {self.download!r}")
        _require(
            self.data_dir is None or isinstance(self.data_dir, str),
            f"env.data_dir must be a path string or null, got {self.data_dir!r}",
        )


@dataclass(frozen=True)
class PolicySettings:
    """The policy network and its input.

    Attributes:
        hidden: width of the observation MLP.
        lstm_hidden: LSTM state size.
        slot_telemetry: include the per-slot telemetry blocks (80 features) or not (50).
    """

    hidden: int = 128
    lstm_hidden: int = 128
    slot_telemetry: bool = True

    def __post_init__(self) -> None:
        _positive_int("policy.hidden", self.hidden)
        _positive_int("policy.lstm_hidden", self.lstm_hidden)
        _require(
            isinstance(self.slot_telemetry, bool),
            f"policy.slot_telemetry must be a bool, got {self.slot_telemetry!r}",
        )


@dataclass(frozen=True)
class PPOSettings:
    """The learner (PPO with GAE; Schulman et al. 2017, 2016).

    Attributes:
        n_envs: environments stepped in lockstep.
        rounds: rollout + update rounds; a round is one episode in every environment.
        lr: Adam learning rate of the policy.
        gamma: discount; the reward's PBRS uses the same γ.
        gae_lambda: GAE λ.
        clip_ratio: PPO clipping ε.
        ppo_epochs: update passes over each rollout batch.
        minibatches: minibatches per pass (environments are split, sequences kept whole).
        value_coef: weight of the value loss.
        entropy_coef: entropy bonus weight at the start.
        entropy_coef_final: entropy bonus weight after annealing.
        entropy_anneal_steps: environment steps (summed over envs) over which the entropy weight
            goes linearly from ``entropy_coef`` to ``entropy_coef_final``.
        max_grad_norm: gradient clipping norm.
        target_kl: stop the update passes early once the approximate KL exceeds this.
        ratio_explosion: a max ratio above this produces a ``RatioExplosionDiagnostic``.
    """

    n_envs: int = 4
    rounds: int = 50
    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_ratio: float = 0.2
    ppo_epochs: int = 4
    minibatches: int = 1
    value_coef: float = 0.5
    entropy_coef: float = 0.05
    entropy_coef_final: float = 0.01
    entropy_anneal_steps: int = 2_000  # ≈ the default run's 50 rounds × 4 envs × 11 steps
    max_grad_norm: float = 0.5
    target_kl: float = 0.03
    ratio_explosion: float = 5.0

    def __post_init__(self) -> None:
        for name in ("n_envs", "rounds", "ppo_epochs", "minibatches"):
            _positive_int(f"ppo.{name}", getattr(self, name))
        _positive_int("ppo.entropy_anneal_steps", self.entropy_anneal_steps, low=0)
        _require(
            self.minibatches <= self.n_envs,
            f"ppo.minibatches ({self.minibatches}) cannot exceed ppo.n_envs ({self.n_envs})",
        )
        _finite("ppo.lr", self.lr, 0.0, 1.0, strict_low=True)
        _finite("ppo.gamma", self.gamma, 0.0, 1.0, strict_low=True)
        _finite("ppo.gae_lambda", self.gae_lambda, 0.0, 1.0)
        _finite("ppo.clip_ratio", self.clip_ratio, 0.0, 1.0, strict_low=True)
        for name in ("value_coef", "entropy_coef", "entropy_coef_final"):
            _finite(f"ppo.{name}", getattr(self, name), 0.0, 100.0)
        _finite("ppo.max_grad_norm", self.max_grad_norm, 0.0, 1e6, strict_low=True)
        _finite("ppo.target_kl", self.target_kl, 0.0, 1e6, strict_low=True)
        _finite("ppo.ratio_explosion", self.ratio_explosion, 1.0, 1e6, strict_low=True)


@dataclass(frozen=True)
class RuntimeSettings:
    """Seeds, devices and logging.

    Attributes:
        seed: run seed; environment ``i`` uses ``seed + i`` for its host and data order.
        devices: devices environments are mapped to round-robin (``cpu``, ``cuda:0``, …).
        amp: mixed-precision policy updates with a grad scaler (CUDA only).
        telemetry: telemetry level (minimal, normal, debug).
        tensorboard: also write TensorBoard scalars to ``tensorboard/`` in the run directory.
    """

    seed: int = 0
    devices: tuple[str, ...] = ("cpu",)
    amp: bool = False
    telemetry: str = "normal"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        _positive_int("runtime.seed", self.seed, low=0)
        _require(isinstance(self.amp, bool), f"runtime.amp must be a bool, got {self.amp!r}")
        _require(
            isinstance(self.tensorboard, bool),
            f"runtime.tensorboard must be a bool, got {self.tensorboard!r}",
        )
        _require(
            bool(self.devices) and all(isinstance(d, str) for d in self.devices),
            f"runtime.devices must be a non-empty list of device names, got {self.devices!r}",
        )
        TelemetryLevel.parse(self.telemetry)


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a PPO run reads. Nothing else configures training."""

    env: EnvSettings = field(default_factory=EnvSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    reward: RewardConfig = field(default_factory=RewardConfig)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def resolved(self) -> TrainingConfig:
        """Fill the task's defaults into unset host-training fields (the one derivation)."""
        task = get_task(self.env.task)
        host_lr = task.lr if self.env.host_lr is None else self.env.host_lr
        env = replace(
            self.env,
            batch_size=task.batch_size if self.env.batch_size is None else self.env.batch_size,
            batches_per_epoch=self.env.batches_per_epoch or task.batches_per_epoch,
            val_samples=self.env.val_samples or task.val_samples,
            host_lr=host_lr,
            seed_lr=host_lr if self.env.seed_lr is None else self.env.seed_lr,
        )
        return replace(self, env=env)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: TrainingConfig | None = None) -> TrainingConfig:
        """Override ``base`` (the defaults when None) with the groups and fields in ``data``.

        Raises:
            ValueError: for an unknown group or field (naming the accepted ones) or a bad value.
        """
        return _override(base or cls(), data, "")


_TUPLE_FIELDS = {"slots", "devices"}


def _override(obj: Any, data: Any, path: str) -> Any:
    where = path or "the configuration"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {data!r}")
    known = {f.name: f for f in fields(obj)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in {where}; accepted: {', '.join(sorted(known))}"
        )
    changes: dict[str, Any] = {}
    for name, value in data.items():
        current = getattr(obj, name)
        key = f"{path}.{name}" if path else name
        if is_dataclass(current):
            changes[name] = _override(current, value, key)
        elif name in _TUPLE_FIELDS:
            if not isinstance(value, list | tuple):
                raise ValueError(f"{key} must be a list, got {value!r}")
            changes[name] = tuple(value)
        else:
            changes[name] = value
    try:
        return replace(obj, **changes)
    except TypeError as err:  # pragma: no cover - fields were checked above
        raise ValueError(f"{where}: {err}") from err


# Presets are small override files (nanoGPT's config/): each says only what differs from the
# defaults above, and why.
PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: the synthetic task, 4 envs, 50 rounds (about 6 min on 2 CPU cores).
    "default": {},
    # CPU smoke run, well under 2 minutes: 2 envs, 2 rounds, a few batches per epoch, tiny nets.
    "tiny": {
        "env": {"episode_length": 5, "batches_per_epoch": 4, "val_samples": 256},
        "policy": {"hidden": 32, "lstm_hidden": 32},
        "ppo": {"n_envs": 2, "rounds": 2, "ppo_epochs": 2},
    },
    # The real question: Fashion-MNIST with the impaired host, 15-epoch episodes.
    "fashion": {
        "env": {
            "task": "fashion_mnist_impaired",
            "episode_length": 15,
            "batches_per_epoch": 100,
            "val_samples": 2000,
        },
        "ppo": {"n_envs": 4, "rounds": 40},
    },
}
"""Named presets for ``--preset``."""


def load_preset(name: str) -> TrainingConfig:
    """The preset ``name`` applied over the defaults.

    Raises:
        ValueError: for an unknown preset, naming the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return TrainingConfig.from_dict(PRESETS[name])


def load_config_json(path: Path, base: TrainingConfig) -> TrainingConfig:
    """Apply a strict JSON override file to ``base``.

    Raises:
        ValueError: for an unreadable file, invalid JSON, unknown keys or bad values.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read --config-json {str(path)!r}: {err}") from err
    return TrainingConfig.from_dict(data, base)
