"""``esper static|heuristic|eval``: parse the run's configuration, run it
(``esper.study.growth.GrowthRunner``) and print the result."""

from __future__ import annotations

import sys
from dataclasses import replace

from esper.cli.config import RunOptions, announce, growth_config, interrupted_hint, policy_arg
from esper.cli.main import EXIT_INTERRUPTED
from esper.leyline.config import HostTraining, UserError, override
from esper.nissa import record
from esper.nissa.log import percent
from esper.simic.build import PolicyCheckpointError, policy_training
from esper.study.growth import GrowthRun, GrowthRunner
from esper.study.run import Stop, check_recorded_mode, ppo_state

POLICY_FACING = ("task", "width", "slots", "auto_advance")
"""Host-training settings that change the host a policy controls or what it may do: an eval
that overrides one says what the policy trained with."""


def _shown(value: object) -> str:
    """A setting as the note shows it (lists comma-separated, booleans lower-case)."""
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse(mode: str, argv: list[str], options: RunOptions) -> GrowthRun:
    """The run's configuration: recorded (``--resume``) or from defaults, file and flags."""
    if options.resume is not None:
        check_recorded_mode(options.resume, mode)  # first: another command's config is no error
        try:
            data = record.read_config(options.resume)
            config: GrowthRun = override(GrowthRun(HostTraining("")), data)
        except (record.RunRecordError, ValueError) as err:
            raise UserError(f"cannot resume {str(options.resume)!r}: {err}") from err
        return config
    base, policy = None, None
    if mode == "eval" and not {"-h", "--help"} & set(argv):
        policy = policy_arg(argv, options)
        if policy is None:
            raise UserError("eval needs --policy RUN (a PPO run directory)")
        try:
            base = policy_training(ppo_state(policy))
        except PolicyCheckpointError as err:
            raise UserError(f"--policy {str(policy)!r}: {err}") from err
    config = growth_config(mode, argv, options, base)
    if policy is None:
        return config
    assert base is not None
    changed = [
        (name, _shown(getattr(base, name)), _shown(getattr(config.training, name)))
        for name in POLICY_FACING
        if getattr(base, name) != getattr(config.training, name)
    ]
    if changed:  # the policy never trained like this
        print(
            "esper eval: note: the policy trained with "
            + ", ".join(f"{name} = {was}" for name, was, _ in changed)
            + "; this eval runs with "
            + ", ".join(f"{name} = {now}" for name, _, now in changed),
            file=sys.stderr,
        )
    return replace(config, policy=str(policy.resolve()))  # a resume may start elsewhere


def run_growth(mode: str, argv: list[str], options: RunOptions) -> int:
    """``esper static|heuristic|eval``."""
    config = parse(mode, argv, options)
    runner = GrowthRunner(mode, config, options.out, options.resume)
    announce(mode, runner.config, options.resume)  # resolved and checked
    directory = runner.recorder.directory
    try:
        runner.run()
    except Stop:
        interrupted_hint(mode, directory, f"epoch {runner.epoch}")
        return EXIT_INTERRUPTED
    summary = record.read_summary(directory)
    assert summary is not None and summary.growth is not None
    g = summary.growth
    final = None if g.final is None else g.final.val_accuracy
    print(
        f"{mode} {summary.task} ({summary.status}): val accuracy {percent(final)} "
        f"(best {percent(g.best_val_accuracy)}), {g.param_count} params, {g.fossilized} "
        f"fossilized, {g.pruned} pruned -> {directory}"
    )
    return 0
