"""The trials a study plans (DESIGN §9).

``plan`` turns a study (``esper.study.spec``) into trials: one growth run per task × arm ×
evaluation seed, and for an arm that trains its policy, one PPO run per task × training seed,
which that arm's growth runs wait for. A static-matched arm's trials wait for the arm it
matches: their width is chosen from its median final parameters. ``growth_config`` gives each
growth trial the run it makes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from esper.leyline.config import HostTraining, TelemetrySettings
from esper.simic.build import policy_training
from esper.study.growth import GrowthRun
from esper.study.run import read_policy
from esper.study.spec import MATCHED, ArmSpec, StudySpec, training
from esper.tamiyo import HeuristicConfig, PeriodicConfig
from esper.tasks import get_task, resolve_training

TRIAL_TELEMETRY = TelemetrySettings(level="normal")
"""Growth trials log every epoch, seed transition and action (a few KB per epoch): the study
report draws each arm's validation curve from its trials' epochs."""


@dataclass(frozen=True)
class Trial:
    """One run of a study.

    Attributes:
        task: the task.
        arm: the arm's name.
        seed: the run seed (an evaluation seed; for a policy run, its training seed).
        kind: ``growth`` (one episode, evaluated) or ``policy`` (PPO training of an arm's
            policy, which that arm's growth trials then run).
    """

    task: str
    arm: str
    seed: int
    kind: Literal["growth", "policy"] = "growth"

    @property
    def name(self) -> str:
        """The trial's run directory name under ``trials/``: task, arm and seed."""
        what = "policy" if self.kind == "policy" else "seed"
        return f"{self.task}.{self.arm}.{what}{self.seed}"


def trial_mode(spec: StudySpec, trial: Trial) -> str:
    """The mode of ``trial``'s run (``RunMeta.mode``): ``ppo`` for a policy's training, else the
    growth command its arm runs (a ppo arm's trials evaluate: ``eval``)."""
    if trial.kind == "policy":
        return "ppo"
    controller = spec.arm(trial.arm).controller
    return {"ppo": "eval", MATCHED: "static"}.get(controller, controller)


def growth_config(
    spec: StudySpec,
    trial: Trial,
    width: int | None = None,
    policy: Path | None = None,
    knowledge: str | None = None,
) -> tuple[str, GrowthRun]:
    """The mode and ``GrowthRun`` of a growth trial (a static-matched arm passes its matched
    ``width``, a ppo arm the ``policy`` run it evaluates; ``knowledge``: the store's URL)."""
    arm = spec.arm(trial.arm)
    mode = trial_mode(spec, trial)
    host = training(spec, trial.task, arm.width if arm.controller == "static" else width)
    if mode == "static":  # nothing to advance: the budget's auto_advance is for growing arms
        host = replace(host, auto_advance=False)
    elif arm.auto_advance is not None:
        host = replace(host, auto_advance=arm.auto_advance)
    periodic = PeriodicConfig(arm.period) if arm.period is not None else PeriodicConfig()
    heuristic = HeuristicConfig(
        selector=arm.selector or HeuristicConfig.selector,
        strategy=arm.strategy or HeuristicConfig.strategy,
    )
    if heuristic.needs_shapley:  # ensemble prunes by Shapley value: the arm needs them measured
        host = replace(host, shapley=True)
    if policy is not None:
        policy_env = policy_training(read_policy(policy).state)
        # The policy's slots and auto_advance: its action space was trained with them.
        host = replace(host, slots=policy_env.slots, auto_advance=policy_env.auto_advance)
    config = GrowthRun(
        host,
        seed=trial.seed,
        policy=None if policy is None else str(policy.resolve()),
        periodic=periodic,
        heuristic=heuristic,
        knowledge=None if mode == "static" else knowledge,
        telemetry=TRIAL_TELEMETRY,
    )
    return mode, config


POLICY_EPISODE = ("task", "width", "epochs", "batch_size", "batches_per_epoch", "val_samples")
"""What makes a policy's episodes what they are: where a study's budget runs a given policy
(``policy = RUN``) otherwise, ``policy_notes`` says so."""


def policy_notes(spec: StudySpec, arm: ArmSpec) -> list[str]:
    """A note for each task on which the study's budget runs the arm's given policy
    (``arm.policy``) in other episodes than it trained in (``POLICY_EPISODE``): every arm of a
    task runs the same budget, so the comparison stands, but the policy meets what it never
    saw (``esper eval`` says the same of its own overrides)."""
    assert arm.policy is not None
    policy = Path(arm.policy)
    trained = _episode(policy_training(read_policy(policy).state))
    lines = []
    for task in spec.tasks:
        _, config = growth_config(spec, Trial(task, arm.name, spec.first_seed), None, policy)
        running = _episode(config.training)
        differ = [name for name in POLICY_EPISODE if trained[name] != running[name]]
        if differ:
            lines.append(
                f"note: arm {arm.name!r} on {task}: its policy trained with "
                + ", ".join(f"{name} = {trained[name]}" for name in differ)
                + "; the study's budget runs it with "
                + ", ".join(f"{name} = {running[name]}" for name in differ)
                + " (every arm of a task runs the same)"
            )
    return lines


def _episode(training: HostTraining) -> dict[str, object]:
    """``training``'s ``POLICY_EPISODE`` settings, resolved against its task."""
    resolved = resolve_training(training)
    values = {name: getattr(resolved, name) for name in POLICY_EPISODE}
    values["width"] = resolved.width or get_task(resolved.task).host_width()
    values["val_samples"] = resolved.val_samples or "all"  # None: the whole validation split
    return values


def never_growing(spec: StudySpec) -> list[str]:
    """A line for each heuristic or periodic arm and task whose runs can never germinate a
    seed (``GrowthRun.never_grows``): such an arm is a static one under another name."""
    lines = []
    for arm in (a for a in spec.arms if a.controller in ("heuristic", "periodic")):
        for task in spec.tasks:
            mode, config = growth_config(spec, Trial(task, arm.name, spec.first_seed))
            never = config.never_grows(mode, config.training.episode_length(), settable=False)
            if never is not None:
                lines.append(f"note: arm {arm.name!r} on {task}: {never}")
    return lines


def plan(spec: StudySpec) -> list[Trial]:
    """Every trial of the study in the order it is submitted: growth trials that wait for
    nothing (every arm but static-matched and the ppo arms that train their policies), then
    policy trainings, then the trials that wait for them, static-matched arms last.

    The driver submits every trial as soon as what it waits for has finished, so the order
    matters only where trials queue for cores: there the growth arms' answers come before hours
    of PPO training. (A static-matched arm becomes ready when the arm it matches has finished,
    and then queues behind trials submitted before it.)
    """
    policies = [
        Trial(task, arm.name, seed, "policy")
        for task in spec.tasks
        for arm in spec.arms
        if arm.trains_policy
        for seed in arm.training_seeds
    ]
    order = sorted(spec.arms, key=lambda a: a.controller == MATCHED)
    growth = [
        Trial(task, arm.name, seed)
        for task in spec.tasks
        for arm in order
        for seed in spec.evaluation_seeds
    ]

    def waits(trial: Trial) -> bool:
        arm = spec.arm(trial.arm)
        return arm.trains_policy or arm.controller == MATCHED

    return [t for t in growth if not waits(t)] + policies + [t for t in growth if waits(t)]


def policy_trial(spec: StudySpec, trial: Trial) -> Trial:
    """The policy run a ppo arm's growth trial evaluates (training seeds in rotation)."""
    seeds = spec.arm(trial.arm).training_seeds
    index = spec.evaluation_seeds.index(trial.seed) % len(seeds)
    return Trial(trial.task, trial.arm, seeds[index], "policy")


__all__ = [
    "Trial",
    "growth_config",
    "never_growing",
    "plan",
    "policy_trial",
    "trial_mode",
]
