"""``esper static|heuristic|eval``: parse the run's configuration, run it
(``esper.study.growth.GrowthRunner``) and print the result."""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from esper.cli.config import (
    RunOptions,
    absolute_data_dir,
    announce,
    growth_config,
    interrupted_hint,
    named_fields,
    policy_arg,
)
from esper.cli.main import EXIT_INTERRUPTED
from esper.leyline.config import HostTraining, UserError, override
from esper.leyline.files import shell_path
from esper.nissa import record
from esper.nissa.log import counted, percent, with_article
from esper.nissa.stopping import Stop
from esper.seeding import replayed_episode
from esper.simic.build import PolicyCheckpointError, policy_training
from esper.study.checks import check_recorded_mode
from esper.study.growth import GrowthRun, GrowthRunner, unread_settings
from esper.study.run import Policy, partial_policy, read_policy
from esper.tasks import (
    TASK_SETTINGS,
    TASKS,
    get_task,
    resolve_training,
    without_stray_data_dir,
)


def _policy_facing(training: HostTraining) -> dict[str, str]:
    """The host-training settings that change the host a policy controls or what it may do,
    as an eval's note shows them (an eval that overrides one says what the policy trained
    with). The width is the one the host gets: unset, the task's own (an unknown task is
    refused later, by the run)."""
    width = training.width
    if width is None and training.task in TASKS:
        width = get_task(training.task).host_width()
    return {
        "task": training.task,
        "width": str(width),
        "slots": ", ".join(training.slots),
        "auto_advance": str(training.auto_advance).lower(),
    }


def parse(mode: str, argv: list[str], options: RunOptions) -> GrowthRun:
    """The run's configuration: recorded (``--resume``) or from defaults, file and flags."""
    return _parsed(mode, argv, options)[0]


def _parsed(
    mode: str, argv: list[str], options: RunOptions
) -> tuple[GrowthRun, str | None, Policy | None]:
    """``parse``'s configuration; for an eval the note on what it runs differently from how
    its policy trained (None: nothing), to print once the run's settings passed every check,
    and the policy as read for its checks (the run takes this read, not a later round)."""
    if options.resume is not None:
        check_recorded_mode(options.resume, mode)  # first: another command's config is no error
        try:
            data = record.read_config(options.resume)
            config: GrowthRun = override(GrowthRun(HostTraining("")), data)
        except (record.RunRecordError, ValueError) as err:
            raise UserError(f"cannot resume {str(options.resume)!r}: {err}") from err
        missing = [  # a run always records them: its config.json (or meta.json) was edited
            key
            for key, absent in (("training.task", not config.training.task),
                                ("policy", mode == "eval" and config.policy is None))
            if absent
        ]  # fmt: skip
        if missing:
            raise UserError(
                f"cannot resume {str(options.resume)!r}: its config.json names no "
                f"{' and no '.join(missing)}, which {with_article(mode)} run records; restore "
                "it, or start a new run"
            )
        return replace(config, training=without_stray_data_dir(config.training)), None, None
    base, policy = None, None
    if mode == "eval" and not {"-h", "--help"} & set(argv):
        path = policy_arg(argv, options)
        if path is None:
            raise UserError("eval needs --policy RUN (a PPO run directory)")
        policy = read_policy(path)
        try:
            base = policy_training(policy.state)
        except PolicyCheckpointError as err:
            raise UserError(f"--policy {str(path)!r}: {err}") from err
    held_out = 0 if policy is None else _first_held_out(_training_seeds(policy))
    config = growth_config(mode, argv, options, base, held_out)
    if policy is None or base is None:
        return replace(config, training=absolute_data_dir(config.training)), None, None
    config = replace(config, training=absolute_data_dir(_own_data_dir(base, config.training)))
    _check_held_out(policy, base, config.training, config.seed)
    notes = [
        _policy_note(base, config.training),
        _budget_note(base, config.training, named_fields(argv)),
        _partial_note(partial_policy(policy.path, policy.rounds), policy.path),
    ]
    note = "\n".join(n for n in notes if n is not None) or None
    config = replace(config, policy=str(policy.path.resolve()))  # a resume may start elsewhere
    return config, note, policy


def _budget_note(
    trained_with: HostTraining, running_with: HostTraining, named: frozenset[str]
) -> str | None:
    """An eval on another task than its policy's keeps the policy's run's budget and learning
    rates (``TASK_SETTINGS``) unless told otherwise: where they differ from the task's own, say
    so (None: nothing to say)."""
    task = running_with.task
    if task == trained_with.task or task not in TASKS:
        return None
    given = {name: getattr(running_with, name) for name in TASK_SETTINGS if name in named}
    own = resolve_training(replace(HostTraining(task), **given))  # seed_lr follows a given lr
    kept = [  # unset (None) is the task's own, not the policy's
        name
        for name in TASK_SETTINGS
        if name not in named
        and getattr(running_with, name) is not None
        and getattr(running_with, name) == getattr(trained_with, name)
        and getattr(running_with, name) != getattr(own, name)
    ]
    if not kept:
        return None

    def shown(training: HostTraining) -> str:
        values = {name: getattr(training, name) for name in kept}
        return ", ".join(f"{k} = {'all' if v is None else v}" for k, v in values.items())

    return (
        f"esper eval: note: {shown(running_with)} come from the policy's run on "
        f"{trained_with.task}; the task {task} has {shown(own)} (give them as flags to change "
        "them; a comparison with other runs on the task needs the same settings)"
    )


def _partial_note(partial: str | None, policy: Path) -> str | None:
    """The eval's note of a policy stopped before its planned rounds (``partial_policy``)."""
    if partial is None:
        return None
    resume = f"esper ppo --resume {shell_path(policy)}"
    return f"esper eval: note: {partial}; {resume} trains a stopped run on"


def _priors_note(config: GrowthRun, priors: dict[str, Any]) -> str:
    """What a run whose bandit selector starts from the knowledge store's outcomes must know:
    the store grows with every run, so the same command starts from other outcomes later."""
    outcomes = counted(priors["outcomes"], "seed outcome")
    if priors["scored"] < priors["outcomes"]:  # undecided ones teach it nothing
        outcomes += f" ({priors['scored']:,} decided: the others' seeds were alive at the end)"
    return (
        f"the {config.heuristic.selector} selector starts from {outcomes} "
        f"of the knowledge store {priors['store']} (SHA-256 {priors['sha256'][:12]}..., in "
        "meta.json): the same command repeats this run only from the same outcomes (a store "
        "of its own, --knowledge URL, keeps them)"
    )


def _check_held_out(
    policy: Policy, trained_with: HostTraining, running_with: HostTraining, seed: int
) -> None:
    """Refuse an eval on its policy's task that would replay a training episode: its seed is
    one of the training environments' (their round 1), or meets a later episode of one in the
    32 bits torch's CPU generator keeps (``seeding.replayed_episode``): the same host and data
    order, no evaluation (evaluation seeds are never training ones). On another task the seed
    builds another host on other data.

    Raises:
        UserError: naming the seed, the episode it replays and a seed that replays none.
    """
    if running_with.task != trained_with.task:
        return
    used = _training_seeds(policy)
    replayed = replayed_episode(seed, used)
    if replayed is None:
        return
    environment, episode = replayed
    if episode == 1:
        raise UserError(
            f"--seed {seed} is one of the policy's training environment seeds "
            f"({_seed_range(used)}): an eval on it re-runs a training episode, not a held-out "
            f"one; give --seed outside them (e.g. --seed {_first_held_out(used)})"
        )
    raise UserError(
        f"--seed {seed} replays episode {episode} of the policy's training environment "
        f"{environment} (the same host and data order: episode seeds meet in the 32 bits torch's "
        f"CPU generator keeps), not a held-out one; give another --seed "
        f"(e.g. --seed {_first_held_out(used)})"
    )


def _training_seeds(policy: Policy) -> list[int]:
    """The seeds of the policy's PPO run's environments, as its ``meta.json`` records them."""
    seeds = policy.meta.seeds.get("environments")
    return [s for s in seeds if type(s) is int] if isinstance(seeds, list) else []


def _first_held_out(used: list[int]) -> int:
    """An eval's default seed: the first after the policy's training seeds whose episode
    replays none of theirs (``replayed_episode``)."""
    start = max(used) + 1 if used else 0
    return next(s for s in itertools.count(start) if replayed_episode(s, used) is None)


def _seed_range(seeds: list[int]) -> str:
    """``0-7`` for consecutive seeds, else the list."""
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(map(str, seeds))


def _own_data_dir(trained_with: HostTraining, running_with: HostTraining) -> HostTraining:
    """An eval on a task of another dataset than its policy's does not take the policy's
    ``data_dir`` (a Fashion-MNIST folder means nothing to digits or CIFAR-10); one given to the
    eval itself is kept (and checked)."""
    task, was = running_with.task, trained_with.task
    if running_with.data_dir != trained_with.data_dir or task not in TASKS or was not in TASKS:
        return running_with
    if TASKS[task].dataset == TASKS[was].dataset:
        return running_with
    return replace(running_with, data_dir=None)


def _policy_note(trained_with: HostTraining, running_with: HostTraining) -> str | None:
    trained, running = _policy_facing(trained_with), _policy_facing(running_with)
    changed = [(name, trained[name], now) for name, now in running.items() if now != trained[name]]
    if not changed:
        return None
    return (
        "esper eval: note: the policy trained with "
        + ", ".join(f"{name} = {was}" for name, was, _ in changed)
        + "; this eval runs with "
        + ", ".join(f"{name} = {now}" for name, _, now in changed)
    )


def run_growth(mode: str, argv: list[str], options: RunOptions) -> int:
    """``esper static|heuristic|eval``."""
    config, note, policy = _parsed(mode, argv, options)
    runner = GrowthRunner(mode, config, options.out, options.resume, policy=policy)
    directory = runner.recorder.directory
    try:  # from here on there is a run to continue, even before its loop holds signals
        if note is not None:  # the policy never trained like this
            print(note, file=sys.stderr)
        announce(mode, runner.config, options.resume, unread_settings(mode))  # resolved, checked
        never = runner.never_grows()
        if never is not None:  # a static run by another name, below the settings for growth
            print(f"esper {mode}: note: {never}", file=sys.stderr)
        if runner.priors is not None and options.resume is None:
            note = _priors_note(runner.config, runner.priors)
            print(f"esper {mode}: note: {note}", file=sys.stderr)
        if runner.priors_elsewhere is not None:
            print(f"esper {mode}: note: {runner.priors_elsewhere}", file=sys.stderr)
        runner.run()
    except (Stop, KeyboardInterrupt):  # a KeyboardInterrupt: a signal before the run's loop
        interrupted_hint(mode, directory, f"epoch {runner.epoch}")
        return EXIT_INTERRUPTED
    summary = record.read_summary(directory)
    assert summary is not None and summary.growth is not None
    g = summary.growth
    print(
        f"{mode} {summary.task} ({summary.status}): final model val accuracy "
        f"{percent(g.final_val_accuracy)} (best epoch {percent(g.best_val_accuracy)}), "
        f"{g.param_count:,} params, {g.fossilized} "
        f"fossilized, {g.pruned} pruned -> {directory}"
    )
    return 0
