"""TrainingConfig: strict JSON, presets, flags flowing through it, resolution."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from esper.cli.main import build_parser
from esper.cli.ppo import _FLAG_FIELDS, resolve_config
from esper.simic.config import PRESETS, TrainingConfig, load_config_json, load_preset


def test_unknown_top_level_key_fails_naming_the_accepted_ones(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ppo": {"n_envs": 2}, "learning_rate": 1e-3}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\].*accepted: env"):
        load_config_json(path, TrainingConfig())


def test_unknown_nested_key_fails(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ppo": {"n_env": 2}}))
    expected = r"unknown key\(s\) \['n_env'\] in ppo; accepted: .*n_envs"
    with pytest.raises(ValueError, match=expected):
        load_config_json(path, TrainingConfig())


def test_bad_values_and_bad_json_fail(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"ppo.gamma must be a number in \(0.0, 1.0\], got 1.5"):
        TrainingConfig.from_dict({"ppo": {"gamma": 1.5}})
    with pytest.raises(ValueError, match="unknown task 'mnist'"):
        TrainingConfig.from_dict({"env": {"task": "mnist"}})
    with pytest.raises(ValueError, match="must be a JSON object"):
        TrainingConfig.from_dict({"ppo": 3})
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read --config-json"):
        load_config_json(path, TrainingConfig())


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
    again = TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_resolved_fills_the_task_defaults_once() -> None:
    config = TrainingConfig.from_dict({"env": {"task": "text_lm"}}).resolved()
    assert config.env.batch_size == 32 and config.env.batches_per_epoch == 100
    assert config.env.seed_lr == config.env.host_lr == 3e-3
    assert config.resolved() == config


def test_flags_flow_through_the_config(tmp_path) -> None:
    overrides = tmp_path / "o.json"
    overrides.write_text(json.dumps({"ppo": {"n_envs": 3, "lr": 1e-3}}))
    args = build_parser().parse_args(
        [
            "ppo",
            "--preset",
            "tiny",
            "--config-json",
            str(overrides),
            "--envs",
            "4",
            "--episode-length",
            "7",
            "--rounds",
            "9",
            "--seed",
            "5",
            "--reward-family",
            "loss",
            "--telemetry",
            "debug",
            "--no-download",
        ]
    )
    config = resolve_config(args)
    assert config.ppo.n_envs == 4  # the flag beats the JSON file
    assert config.ppo.lr == 1e-3  # the JSON file beats the preset
    assert config.policy.hidden == 32  # the preset beats the defaults
    assert (config.env.episode_length, config.ppo.rounds, config.runtime.seed) == (7, 9, 5)
    assert config.reward.family == "loss" and config.runtime.telemetry == "debug"
    assert config.env.download is False


def test_every_flag_names_a_real_field() -> None:
    for group, name in _FLAG_FIELDS.values():
        assert name in {f.name for f in fields(getattr(TrainingConfig(), group))}
