"""``esper ppo``: train a growth policy with PPO (``esper.study.ppo.PPORunner``); ``--resume``
continues one exactly."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from esper.cli.config import (
    RunOptions,
    absolute_data_dir,
    announce,
    interrupted_hint,
    layered,
    named_fields,
    parse_flags,
    refuse_passwords,
    refuse_repeats,
    seed_lr_following,
)
from esper.cli.main import EXIT_INTERRUPTED, RUN_COMMANDS
from esper.leyline.config import UserError, override
from esper.leyline.files import shell_path
from esper.leyline.lifecycle import never_blends
from esper.nissa import record
from esper.nissa.log import counted, display, percent
from esper.nissa.stopping import Stop
from esper.seeding import environment_seeds
from esper.simic.config import PRESETS, TrainingConfig, load_preset
from esper.study.checks import check_recorded_mode
from esper.study.ppo import PPORunner, checked_data, start_workers
from esper.study.run import EXIT_FAILED
from esper.tasks import without_stray_data_dir


def _preset(argv: list[str]) -> tuple[str, list[str]]:
    """``--preset NAME`` taken out of ``argv`` (default ``default``)."""
    refuse_repeats(argv, ("--preset",))
    for i, item in enumerate(argv):
        flag, eq, value = item.partition("=")
        if flag == "--preset":
            name = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            rest = argv[:i] + argv[i + (1 if eq else 2) :]
            if not name or name.startswith("--"):
                raise UserError(f"--preset needs a name; known presets: {', '.join(PRESETS)}")
            if name not in PRESETS:
                raise UserError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
            return name, rest
    return "default", argv


def parse(argv: list[str], options: RunOptions) -> TrainingConfig:
    """Defaults ← ``--preset`` ← ``--config`` ← flags, resolved; or the recorded config.

    Raises:
        UserError: for an unknown preset, a bad file, flag or value.
    """
    try:
        presets = ", ".join(PRESETS)
        description = RUN_COMMANDS["ppo"]
        preset = (
            f"  --preset NAME   base settings that --config and flags override: {presets}\n"
            f"                  (default: default; its episodes are "
            f"{load_preset('default').env.epochs} epochs on any task)"
        )
        if options.resume is not None:  # argv: PPO_ON_RESUME's flags at most (split_options)
            check_recorded_mode(options.resume, "ppo")
            try:
                data = record.read_config(options.resume)
                config: TrainingConfig = override(TrainingConfig(), data)
            except (record.RunRecordError, ValueError) as err:  # as esper static's resume says
                raise UserError(f"cannot resume {str(options.resume)!r}: {err}") from err
            config = replace(config, env=without_stray_data_dir(config.env))
            if config.runtime.workers is None and "ray_address" in named_fields(argv):
                raise UserError(
                    f"{str(options.resume)!r} ran without --workers, and a resume keeps how it "
                    "ran: drop --ray-address"
                )
            return parse_flags(TrainingConfig, argv, "esper ppo", description, config).resolved()
        name, argv = _preset(argv)
        base = layered(load_preset(name), options)
        base = replace(base, env=seed_lr_following(base.env, named_fields(argv)))
        config = parse_flags(TrainingConfig, argv, "esper ppo", description, base, preset)
        config.reward.check_named(named_fields(argv))
        refuse_passwords(config.telemetry)
        return replace(config, env=absolute_data_dir(config.env)).resolved()
    except (record.RunRecordError, ValueError) as err:
        raise UserError(str(err)) from err


def run_ppo(argv: list[str], options: RunOptions) -> int:
    """``esper ppo``."""
    with ExitStack() as stack:  # Ray, if started, stops on every way out
        config = parse(argv, options)
        # With --workers the data, --out and memory are checked before Ray starts (the
        # driver's data serves these checks only: each actor loads its own).
        if config.runtime.workers is None:
            data = None
        else:
            data = checked_data(config, options.out, options.resume)
        config = start_workers(config, options.resume, stack)
        runner = PPORunner(config, options.out, options.resume, data)
        stack.callback(runner.close)
        directory = runner.recorder.directory
        try:  # from here on there is a run to continue, even before its loop holds signals
            print(runner.describe(), file=sys.stderr)
            announce("ppo", runner.config, options.resume)  # resolved and checked
            env = runner.config.env
            short = never_blends(env.episode_length(), env.auto_advance)
            if short is not None and options.resume is None:  # the tiny preset's smoke runs
                print(f"esper ppo: note: {short}; the policy has nothing to learn", file=sys.stderr)
            status, failure = runner.run()
        except (Stop, KeyboardInterrupt):  # a KeyboardInterrupt: a signal before the loop
            interrupted_hint("ppo", directory, f"round {len(runner.recorder.rows)}")
            return EXIT_INTERRUPTED
        if status == "failed":
            print(f"esper: error: {failure} (run recorded in {directory})", file=sys.stderr)
            return EXIT_FAILED
        return _farewell(runner, directory)


def _farewell(runner: PPORunner, directory: Path) -> int:
    summary = runner.summary("completed", None)
    ppo = summary.ppo
    assert ppo is not None
    # the first seed after the training environments': an eval on theirs is refused
    held_out = max(environment_seeds(runner.config.runtime.seed, runner.config.ppo.n_envs)) + 1
    print(
        f"ppo {summary.task}: {counted(ppo.rounds_completed, 'round')}, "
        "mean return "
        f"{display(ppo.final_mean_return, '.3f')}, final accuracy "
        f"{percent(ppo.final_mean_accuracy)} -> {directory}\n"
        f"run the policy with: esper eval --policy {shell_path(directory)} --seed {held_out}"
    )
    return 0
