"""TrainingConfig: strict config files, presets, flags flowing through it, resolution."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from esper.cli.config import RunOptions
from esper.cli.ppo import parse
from esper.leyline.config import UserError, config_dict, config_text, override, read_config_file
from esper.simic.config import PRESETS, TrainingConfig, load_preset
from esper.study.spec import ppo_config, read_study


def _load(path) -> TrainingConfig:
    config: TrainingConfig = override(TrainingConfig(), read_config_file(path))
    return config


def test_unknown_top_level_key_fails_naming_the_accepted_ones(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ppo": {"n_envs": 2}, "learning_rate": 1e-3}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\].*accepted: env"):
        _load(path)


def test_unknown_nested_key_fails(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[ppo]\nn_env = 2\n")
    expected = r"unknown key\(s\) \['n_env'\] in ppo; accepted: .*n_envs"
    with pytest.raises(ValueError, match=expected):
        _load(path)


def test_bad_values_and_bad_files_fail(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"ppo.gamma must be a number in \(0.0, 1.0\], got 1.5"):
        override(TrainingConfig(), {"ppo": {"gamma": 1.5}})
    with pytest.raises(ValueError, match="unknown task 'mnist'"):
        override(TrainingConfig(), {"env": {"task": "mnist"}}).resolved()
    with pytest.raises(ValueError, match="ppo must be a table of settings"):
        override(TrainingConfig(), {"ppo": 3})
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read config file '[^']*broken.json': "):
        _load(path)
    yaml = tmp_path / "settings.yaml"  # neither: read as JSON, and the message says so
    yaml.write_text("ppo:\n  gamma: 0.9\n")
    with pytest.raises(ValueError, match=r"settings.yaml' \(read as JSON: only .toml is TOML\)"):
        _load(yaml)
    bom = tmp_path / "bom.toml"  # a byte-order mark, as some editors write: read past
    bom.write_bytes(b"\xef\xbb\xbf[ppo]\ngamma = 0.9\n")
    assert read_config_file(bom) == {"ppo": {"gamma": 0.9}}


def test_presets_override_only_what_they_name() -> None:
    tiny = load_preset("tiny")
    assert tiny.ppo.n_envs == 2 and tiny.policy.hidden == 32
    assert tiny.ppo.gamma == TrainingConfig().ppo.gamma  # untouched fields keep the defaults
    with pytest.raises(ValueError, match="unknown preset 'huge'; known presets: default, tiny"):
        load_preset("huge")
    for name in PRESETS:
        load_preset(name)  # every preset is valid


def test_round_trip_through_json() -> None:
    config = load_preset("tiny").resolved()
    again = override(TrainingConfig(), json.loads(json.dumps(config_dict(config))))
    assert again == config


def test_resolved_fills_the_task_defaults_once() -> None:
    config = override(TrainingConfig(), {"env": {"task": "text_lm"}}).resolved()
    assert config.env.batch_size == 32 and config.env.batches_per_epoch == 100
    assert config.env.seed_lr == config.env.lr == 3e-3
    assert config.resolved() == config
    with pytest.raises(ValueError, match=r"env.epochs must be at least 2 for PPO"):
        override(TrainingConfig(), {"env": {"epochs": 1}}).resolved()


def test_flags_flow_through_the_config(tmp_path) -> None:
    overrides = tmp_path / "o.toml"
    overrides.write_text("[ppo]\nn_envs = 3\nlr = 1e-3\n")
    argv = [
        "--preset",
        "tiny",
        "--ppo.n-envs",
        "4",
        "--epochs",
        "7",
        "--ppo.rounds",
        "9",
        "--seed",
        "5",
        "--reward.family",
        "loss",
        "--telemetry.level",
        "debug",
        "--auto-advance",
        "--weight-decay",
        "0.1",
    ]
    config = parse(argv, RunOptions(config=overrides))
    assert config.ppo.n_envs == 4  # the flag beats the config file
    assert config.ppo.lr == 1e-3  # the config file beats the preset
    assert config.policy.hidden == 32  # the preset beats the defaults
    assert (config.env.epochs, config.ppo.rounds, config.runtime.seed) == (7, 9, 5)
    assert config.reward.family == "loss" and config.telemetry.level == "debug"
    assert config.env.auto_advance is True and config.env.weight_decay == 0.1
    assert config.env.batch_size == 64  # resolved against the task


def test_bad_flags_and_presets_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        parse(["--preset", "huge"], RunOptions())
    with pytest.raises(UserError, match="--preset needs a name; known presets: default"):
        parse(["--preset"], RunOptions())
    with pytest.raises(UserError, match="--preset needs a name"):
        parse(["--preset", "--seed", "3"], RunOptions())
    with pytest.raises(UserError, match=r"ppo\.gamma"):
        parse(["--ppo.gamma", "1.5"], RunOptions())
    with pytest.raises(UserError):
        parse(["--envs", "3"], RunOptions())  # the old flag is gone


def test_every_field_is_a_flag(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        parse(["--help"], RunOptions())
    assert stop.value.code == 0
    text = capsys.readouterr().out
    data = config_dict(TrainingConfig())
    for group, values in data.items():
        for name in values:
            flag = name.replace("_", "-")
            prefix = "--" if group in ("env", "runtime") else f"--{group}."
            assert f"{prefix}{flag}" in text or f"{prefix}no-{flag}" in text, (group, name)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_printed_config_is_toml_that_round_trips(preset: str) -> None:
    """The effective configuration every run prints is valid TOML (unset values as comments:
    TOML has no null) and, read back as a config file, gives the same configuration."""
    config = load_preset(preset).resolved()
    text = config_text(config)
    assert "null" not in text
    assert override(TrainingConfig(), tomllib.loads(text)) == config


@pytest.mark.parametrize("data_dir", ["/d/😀 faces", "/d/a\x7fb", '/d/tab\tq"uote\\'])
def test_printed_config_round_trips_any_path(data_dir: str) -> None:
    """JSON's escapes are not all TOML's: a path with a character outside the BMP was printed
    as a surrogate pair (``\\ud83d\\ude00``), which TOML refuses, and DEL stood bare."""
    config = load_preset("tiny").resolved()
    config = replace(config, env=replace(config.env, data_dir=data_dir))
    assert tomllib.loads(config_text(config))["env"]["data_dir"] == data_dir


def test_the_readmes_fashion_command_is_the_results_studys_fashion_policy_training() -> None:
    """README and docs/results.md §5 give ``esper ppo --preset digits --task
    fashion_mnist_impaired --batches-per-epoch 50 --val-samples 2000`` as the Fashion-MNIST
    policy training of the results study."""
    from esper.cli.config import RunOptions
    from esper.cli.ppo import parse

    spec, _ = read_study(Path(__file__).parents[1] / "studies" / "results.toml")
    arm = ppo_config(spec, spec.arm("ppo"), "fashion_mnist_impaired", 100)
    argv = "--preset digits --task fashion_mnist_impaired --batches-per-epoch 50 --val-samples 2000"
    config = parse([*argv.split(), "--seed", "100"], RunOptions())
    assert replace(config, env=replace(config.env, threads=1), telemetry=arm.telemetry) == arm


def test_digits_preset_is_the_reward_ab_winners_training() -> None:
    """``--preset digits`` is documented as the A/B's winning arm (docs/results.md §4): the same
    settings the study trained it with, but the study's telemetry."""
    study = Path(__file__).parents[1] / "studies" / "reward_ab.toml"
    spec, _ = read_study(study)
    arm = ppo_config(spec, spec.arm("ppo-simplified"), "digits_impaired", 0)
    preset = load_preset("digits").resolved()
    assert replace(preset, env=replace(preset.env, threads=1), telemetry=arm.telemetry) == arm


def test_a_section_built_in_python_must_be_its_dataclass() -> None:
    """A dict, None or the class itself was accepted and failed far away (or never)."""
    from esper.leyline.config import HostTraining
    from esper.simic.config import PPOSettings, RuntimeSettings
    from esper.study.growth import GrowthRun
    from esper.tamiyo.policy import PolicyConfig

    cases = [
        ({"ppo": {"n_envs": 2}}, r"ppo must be a PPOSettings instance, got \{'n_envs': 2\}"),
        ({"reward": None}, "reward must be a RewardConfig instance, got None"),
        ({"policy": PolicyConfig}, "policy must be a PolicyConfig instance, got the class"),
    ]
    for given, message in cases:
        with pytest.raises(ValueError, match=message):
            TrainingConfig(**given)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="training must be a HostTraining instance, got None"):
        GrowthRun(None)  # type: ignore[arg-type]
    assert GrowthRun(HostTraining("digits")).training.task == "digits"
    # a string is a sequence of one-letter device names ('c', 'u', ...)
    with pytest.raises(ValueError, match=r"runtime.devices must be a non-empty list .* 'cuda:0'"):
        RuntimeSettings(devices="cuda:0")  # type: ignore[arg-type]
    # numpy's numbers read as out of range ("an integer in [1, 256], got np.int64(4)")
    with pytest.raises(ValueError, match=r"ppo.n_envs must be a Python int, got numpy's int64 4"):
        PPOSettings(n_envs=np.int64(4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ppo.lr must be a Python float, got numpy's float32"):
        PPOSettings(lr=np.float32(1e-3))  # type: ignore[arg-type]
    assert PPOSettings(lr=np.float64(1e-3)).lr == 1e-3  # a float subclass: JSON writes it
    # out of range either way: the range is what to fix, not the type
    with pytest.raises(ValueError, match=r"ppo.n_envs must be an integer in \[1, "):
        PPOSettings(n_envs=np.int64(-4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ppo.lr must be a number in "):
        PPOSettings(lr=np.float64(50.0))


def test_no_download_for_a_task_never_downloaded_is_refused() -> None:
    """``--no-download`` on synthetic or digits was accepted and did nothing, where a
    ``--data-dir`` for them is refused (a walk-through)."""
    with pytest.raises(UserError, match=r"download = false: task 'synthetic' .* is never down"):
        parse(["--preset", "tiny", "--no-download"], RunOptions())
    config = parse(["--preset", "tiny", "--task", "fashion_mnist", "--no-download"], RunOptions())
    assert config.env.download is False
