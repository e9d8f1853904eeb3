"""``TrainingConfig``: the single source of truth for a PPO run (DESIGN §5, §8).

Resolution order, each layer overriding the one before: the field defaults below, a preset
(``PRESETS``), a strict config file (``--config``, TOML or JSON; unknown keys fail), then
command-line flags. The task's defaults for unset host-training fields are filled in exactly one
place, ``esper.tasks.resolve_training``. The effective configuration is printed and saved as
``config.json`` in the run directory, and that file is a valid ``--config``.

Fields are grouped by concern: ``env`` (task, host training, slots: the same ``HostTraining``
every command uses), ``policy`` (network), ``ppo`` (the learner), ``reward``, ``runtime`` (seed,
devices, AMP, Ray workers) and ``telemetry``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import tyro

from esper.leyline.config import (
    MAX_SEED,
    HostTraining,
    TelemetrySettings,
    check_bool,
    check_float,
    check_int,
    check_sections,
    override,
    require,
)
from esper.leyline.net import MAX_PORT, is_host_port
from esper.seeding import POLICY_SEED_OFFSET
from esper.simic.rewards import RewardConfig
from esper.tamiyo.policy import PolicyConfig
from esper.tasks import resolve_training

MAX_ENVS = 256
"""Most environments one run may step: each holds a host, its optimizer and a dataset view."""
MAX_RUN_SEED = MAX_SEED - POLICY_SEED_OFFSET - 1
"""The largest PPO run seed: the seeds it derives (environments ``seed + i`` below
``MAX_ENVS``, the policy's ``seed + POLICY_SEED_OFFSET + 1`` above them) stay seeds."""
MAX_WORKERS_PER_GPU = 64
"""Most Ray actors that may share one GPU (``runtime.workers_per_gpu``)."""
HORIZONS = ("truncation", "termination")
"""``ppo.horizon`` choices: what the end of a full-length episode is to the learner."""


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
            goes linearly from entropy_coef to entropy_coef_final. An update is weighted at the
            steps collected up to and including its round, so the first update is already one
            round along (with fewer steps than one round, it uses entropy_coef_final).
        max_grad_norm: gradient clipping norm.
        target_kl: stop the update passes early once the approximate KL exceeds this.
        ratio_explosion: a max ratio above this produces a RatioExplosionDiagnostic.
        reward_scaling: divide each reward by the running standard deviation of the discounted
            return (Engstrom et al. 2020, "Implementation Matters in Deep Policy Gradients"), so
            the value loss keeps one scale whatever the reward's; telemetry and returns stay in
            reward units.
        normalize_advantages: scale each round's advantages to mean 0, std 1 over its real
            steps before the update passes (off: the GAE advantages as they are, in reward units).
        horizon: what the end of a full-length episode is to the learner (HORIZONS).
            ``truncation`` (DESIGN §5's contract): GAE bootstraps from V(final observation) and
            the PBRS term counts the final state's potential, as if the episode went on.
            ``termination``: nothing follows the last epoch, so both are 0 there. The final
            observation is never acted on, so under ``truncation`` V there has no target of its
            own: on the stand-in with a reward of 1 on the last step alone, V(last decision)
            climbed to 19 by round 50 (true value 1) and the final potential became a bonus
            for ending with fossilized seeds; under ``termination`` it stayed near 1
            (``tests/test_simic_learning.py``).
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
    reward_scaling: bool = False
    normalize_advantages: bool = True
    horizon: str = "truncation"

    @property
    def truncation(self) -> bool:
        """Whether a full-length episode's end is a truncation (``horizon`` ``truncation``):
        GAE bootstraps there and the reward counts the final potential."""
        return self.horizon == "truncation"

    def __post_init__(self) -> None:
        require(
            self.horizon in HORIZONS,
            f"unknown ppo.horizon {self.horizon!r}; accepted: {list(HORIZONS)}",
        )
        check_bool("ppo.reward_scaling", self.reward_scaling)
        check_bool("ppo.normalize_advantages", self.normalize_advantages)
        check_int("ppo.n_envs", self.n_envs, 1, MAX_ENVS)
        for name in ("rounds", "ppo_epochs", "minibatches"):
            check_int(f"ppo.{name}", getattr(self, name))
        check_int("ppo.entropy_anneal_steps", self.entropy_anneal_steps, low=0)
        require(
            self.minibatches <= self.n_envs,
            f"ppo.minibatches ({self.minibatches}) cannot exceed ppo.n_envs ({self.n_envs})",
        )
        check_float("ppo.lr", self.lr, 0.0, 1.0, strict_low=True)
        check_float("ppo.gamma", self.gamma, 0.0, 1.0, strict_low=True)
        check_float("ppo.gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_float("ppo.clip_ratio", self.clip_ratio, 0.0, 1.0, strict_low=True)
        for name in ("value_coef", "entropy_coef", "entropy_coef_final"):
            check_float(f"ppo.{name}", getattr(self, name), 0.0, 100.0)
        check_float("ppo.max_grad_norm", self.max_grad_norm, 0.0, 1e6, strict_low=True)
        check_float("ppo.target_kl", self.target_kl, 0.0, 1e6, strict_low=True)
        check_float("ppo.ratio_explosion", self.ratio_explosion, 1.0, 1e6, strict_low=True)


@dataclass(frozen=True)
class RuntimeSettings:
    """Seeds, devices and where the environments run.

    Attributes:
        seed: run seed; environment i uses seed + i for its host and data order.
        devices: devices environments are mapped to round-robin (cpu, cuda, cuda:0, …; cuda is
            cuda:0). With ``workers``: ``cpu``, or ``cuda`` for a GPU per actor (each actor
            reserves a GPU, or its share of one, from Ray, its only visible one; the learner
            uses this process's cuda:0), so several GPUs step at once.
        amp: mixed-precision policy updates with a grad scaler (CUDA only).
        workers: run the environments on this many Ray actors, each running a contiguous
            chunk of them (None: all in this process, Ray is not used). The learner stays in
            this process and sends each actor the policy once per round; the actors act for
            their environments, and every environment follows its in-process trajectory bit
            for bit when the chunks match the in-process grouping; else float32 rounding
            starts them apart and the gap grows: another draw of the same experiment.
            A dead actor's environments re-run from the round's start.
        ray_address: HOST:PORT of a running Ray cluster's head to join (needs workers; None:
            start a local Ray instance for the run and stop it afterwards).
        workers_per_gpu: with ``workers`` and ``devices`` ``['cuda']``: how many actors share
            each GPU (each reserves that fraction of one from Ray, which puts that many on a
            GPU). One actor's environments keep a GPU busy only part of the time (their
            per-environment host work is the limit), so several actors, each on a core of its
            own, can use one GPU at once; each holds its own CUDA context and copy of the
            data. 1: a GPU per actor.
    """

    seed: int = 0
    devices: tuple[str, ...] = ("cpu",)
    amp: bool = False
    workers: int | None = None
    ray_address: str | None = None
    workers_per_gpu: int = 1

    def __post_init__(self) -> None:
        check_int("runtime.seed", self.seed, 0, MAX_RUN_SEED)
        check_bool("runtime.amp", self.amp)
        require(
            isinstance(self.devices, tuple | list)
            and bool(self.devices)
            and all(isinstance(d, str) for d in self.devices),
            f"runtime.devices must be a non-empty list of device names, got {self.devices!r}",
        )
        if self.workers is not None:
            check_int("runtime.workers", self.workers, 1, MAX_ENVS)
            # Ray hides the GPUs from an actor that reserves none and picks the one it reserves,
            # so an actor cannot be sent to a named device: with cuda, each reserves its share
            require(
                tuple(self.devices) in (("cpu",), ("cuda",)),
                f"runtime.devices must be ['cpu'] or ['cuda'] with workers (cuda: each actor "
                f"gets a GPU, or a share of one, from Ray), got {list(self.devices)}",
            )
        if self.ray_address is not None:
            address = self.ray_address
            require(
                is_host_port(address),
                f"runtime.ray_address must be HOST:PORT of a Ray head, port 1..{MAX_PORT} (e.g. "
                f"127.0.0.1:6379), got {address!r}",
            )
            require(self.workers is not None, "runtime.ray_address needs runtime.workers")
        check_int("runtime.workers_per_gpu", self.workers_per_gpu, 1, MAX_WORKERS_PER_GPU)
        require(
            self.workers_per_gpu == 1
            or (self.workers is not None and tuple(self.devices) == ("cuda",)),
            f"runtime.workers_per_gpu {self.workers_per_gpu} needs runtime.workers and "
            "runtime.devices ['cuda'] (it is how many Ray actors share a GPU)",
        )


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a PPO run reads. Nothing else configures training.

    Attributes:
        env: task, host training and slots of every environment.
        policy: the policy network.
        ppo: the learner.
        reward: the reward and its weights.
        runtime: seed, devices, AMP, Ray workers.
        telemetry: telemetry level, TensorBoard and MLflow.
    """

    # ``env`` and ``runtime`` flags go without their group's prefix (``--task``, ``--seed``).
    env: Annotated[HostTraining, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: HostTraining("synthetic")
    )
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    reward: RewardConfig = field(default_factory=RewardConfig)
    runtime: Annotated[RuntimeSettings, tyro.conf.OmitArgPrefixes] = field(
        default_factory=RuntimeSettings
    )
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)

    def __post_init__(self) -> None:
        check_sections(self)
        if self.env.epochs is not None:  # (a task's default is 2 or more: ``resolved``)
            _check_episode(self.env.epochs)
        workers = self.runtime.workers
        if workers is not None:  # each worker steps at least one environment
            require(
                workers <= self.ppo.n_envs,
                f"runtime.workers {workers} is more than ppo.n_envs {self.ppo.n_envs}: each "
                f"worker steps at least one environment; give at most {self.ppo.n_envs} workers "
                "or more environments",
            )

    def resolved(self) -> TrainingConfig:
        """The task's defaults filled into unset host-training fields (checked: an episode
        needs at least 2 epochs, one decision).

        Raises:
            ValueError: for an unknown task or a one-epoch episode.
        """
        env = resolve_training(self.env)
        _check_episode(env.episode_length())
        return replace(self, env=env)


def _check_episode(epochs: int) -> None:
    """An episode of ``epochs`` has a decision: at least 2 epochs (the first trains the host
    before the first decision)."""
    require(
        epochs >= 2,
        f"env.epochs must be at least 2 for PPO (an episode's first decision follows its first "
        f"epoch), got {epochs}",
    )


# Presets are small override files (nanoGPT's config/): each says only what differs from the
# defaults above, and why.
PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: the synthetic task, 12-epoch episodes, 4 envs, 50 rounds (1 min 1 s on 2
    # CPU cores, 2026-12-06).
    "default": {"env": {"epochs": 12}},
    # CPU smoke run, well under 2 minutes: 2 envs, 2 rounds, a few batches per epoch, tiny nets.
    # Its 5-epoch episodes are too short for a seed to blend (``never_blends``; esper ppo says
    # so): it runs the machinery, it learns nothing.
    "tiny": {
        "env": {"epochs": 5, "batches_per_epoch": 4, "val_samples": 256},
        "policy": {"hidden": 32, "lstm_hidden": 32},
        "ppo": {"n_envs": 2, "rounds": 2, "ppo_epochs": 2},
    },
    # The real question: Fashion-MNIST with the impaired host, 15-epoch episodes.
    "fashion": {
        "env": {
            "task": "fashion_mnist_impaired",
            "epochs": 15,
            "batches_per_epoch": 100,
            "val_samples": 2000,
        },
        "ppo": {"n_envs": 4, "rounds": 40},
    },
    # A policy that learns to grow (docs/results.md §4, the reward A/B's winner): the impaired
    # digits host, 20-epoch episodes, the simplified reward, 40 Adam steps per round; about
    # 6 min on one core.
    "digits": {
        "env": {"task": "digits_impaired", "epochs": 20, "auto_advance": True},
        "ppo": {
            "n_envs": 8,
            "rounds": 40,
            "lr": 1e-3,
            "ppo_epochs": 10,
            "minibatches": 4,
            "entropy_coef": 0.01,
            "entropy_coef_final": 0.002,
        },
        "reward": {"mode": "simplified"},
    },
}
"""Named presets for ``--preset``."""


def load_preset(name: str) -> TrainingConfig:
    """The preset ``name`` applied over the defaults.

    Raises:
        ValueError: for an unknown preset, naming the known ones.
    """
    require(name in PRESETS, f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    result: TrainingConfig = override(TrainingConfig(), PRESETS[name])
    return result
