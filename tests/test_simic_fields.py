"""Every TrainingConfig field is read and changes behaviour (no lying knobs).

The table below has one entry per field (the contract test checks it covers all of them): an
alternative value, optionally a base override that puts the field in play, and a probe that
runs the part of training the field flows into. The probe's fingerprint must differ between
the base and the alternative.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

import esper.study.checks as study_checks
from esper.leyline import Action, Op, SeedStage, SeedStateReport, TelemetryLevel, thresholds
from esper.leyline.config import UserError, config_dict, override
from esper.leyline.events import EpochCompleted
from esper.nissa import TelemetryHub
from esper.simic.build import build_envs, build_trainer
from esper.simic.config import TrainingConfig
from esper.simic.env import GrowthEnv
from esper.simic.rewards import RewardFunction, RewardInput
from esper.study.checks import load_data, set_threads
from esper.tamiyo.features import encode_observation
from standin import PlateauEnv, StandInConfig, standin_trainer

BASE: dict[str, Any] = {
    "env": {"epochs": 4, "batches_per_epoch": 2, "val_samples": 128},
    "policy": {"hidden": 16, "lstm_hidden": 16},
    "ppo": {"n_envs": 2, "rounds": 1, "ppo_epochs": 2},
}


def _config(*overrides: dict[str, Any]) -> TrainingConfig:
    config: TrainingConfig = override(TrainingConfig(), BASE)
    for data in overrides:
        config = override(config, data)
    return config.resolved()


def env_probe(config: TrainingConfig, advances: int = 1) -> list[float]:
    """One growth episode: germinate, advance (to TRAINING), train it, to the end; the
    observations, rewards and the Shapley values the epochs reported."""
    data = load_data(config.env)
    reward = RewardFunction(config.reward, config.ppo.gamma)
    shapley: list[float] = []

    def emit(event: Any, context: dict[str, Any]) -> None:
        if isinstance(event, EpochCompleted):
            shapley.extend(s.shapley for s in event.slots if s.shapley is not None)

    env = GrowthEnv(config.env, data, config.runtime.seed, torch.device("cpu"), reward, emit)
    slot = config.env.slots[0]
    out = [float(env.max_steps), *encode_observation(env.reset(), True).tolist()]
    actions = [Action(Op.GERMINATE, slot=slot, blueprint="norm")]
    actions += [Action(Op.ADVANCE, slot=slot)] * advances
    while True:
        step = env.step(actions.pop(0) if actions else Action(Op.WAIT))
        out += [step.reward, *encode_observation(step.observation, True).tolist()]
        if step.done:
            return out + shapley


def blending_probe(config: TrainingConfig) -> list[float]:
    """``env_probe`` advancing the seed every step, on to BLENDING (where Shapley values are
    measured), with G2's quality thresholds out of the way (a short run's seed cannot pass)."""
    relaxed = {
        "G2_MIN_PROBE_IMPROVEMENT": -math.inf,
        "GRADIENT_RATIO_HEALTHY_MIN": 0.0,
        "GRADIENT_RATIO_HEALTHY_MAX": math.inf,
    }
    with mock.patch.multiple(thresholds, **relaxed):
        return env_probe(config, advances=config.env.epochs or 0)


def threads_probe(config: TrainingConfig) -> list[float]:
    """The torch thread count a run sets up (``cli.run.set_threads``), restored afterwards."""
    before = torch.get_num_threads()
    try:
        return [float(set_threads(config.env).threads or 0), float(torch.get_num_threads())]
    finally:
        torch.set_num_threads(before)


def learn_probe(config: TrainingConfig) -> list[float]:
    """PPO on stand-in environments: final policy weights and what each round reported."""
    n = config.ppo.n_envs
    envs = [PlateauEnv(StandInConfig(episode_length=6, plateau_latest=4), seed=i) for i in range(n)]
    hub = TelemetryHub("t", [])
    trainer = standin_trainer(config, envs, hub)
    results = []
    trainer.train(results.append)
    out = [float(len(results)), float(hub.level.value)]
    for r in results:
        out += [float(r.stats.passes), float(r.diagnostic is not None), r.stats.entropy_coef]
    return out + torch.cat([p.flatten() for p in trainer.network.parameters()]).tolist()


def _report(slot: str, stage: SeedStage, contribution: float | None = None) -> SeedStateReport:
    live = stage is not SeedStage.DORMANT
    return SeedStateReport(
        slot, stage, "norm" if live else None, None, 0.5 if live else 0.0, 1.0, 1,
        contribution, None, None, None, 40 if live else 0, 400,
    )  # fmt: skip


def horizon_probe(config: TrainingConfig) -> list[float]:
    """The learner's GAE at the episode's length (``learn_probe``) and the reward the real
    environments are built with (Φ of the final state counted or not)."""
    vec = build_envs(config, load_data(config.env), lambda event, context: None, [0])
    env = vec.envs[0]
    assert isinstance(env, GrowthEnv)
    return [float(env.reward.final_potential), *learn_probe(config)]


def reward_probe(config: TrainingConfig) -> list[float]:
    """The reward on a germination, a blending step, a refused op, a truncation, a panic."""
    fn = RewardFunction(config.reward, config.ppo.gamma)
    empty = {"mid": _report("mid", SeedStage.DORMANT)}
    germinated = {"mid": _report("mid", SeedStage.GERMINATED)}
    blending = {"mid": _report("mid", SeedStage.BLENDING, contribution=2.0)}
    germinate = Action(Op.GERMINATE, slot="mid", blueprint="norm")
    cases = [
        (germinate, True, empty, germinated, 1, False, False),
        (Action(Op.WAIT), True, blending, blending, 2, False, False),
        (Action(Op.FOSSILIZE, slot="mid"), False, blending, blending, 3, False, False),
        (Action(Op.WAIT), True, blending, blending, 4, False, True),
        (Action(Op.WAIT), True, blending, blending, 3, True, False),
    ]
    return [
        fn(
            RewardInput(a, ok, before, after, 50.0, 52.0, 1.2, 1.1, 440, 400, term, trunc, ep, 4)
        ).total
        for a, ok, before, after, ep, term, trunc in cases
    ]


def policy_probe(config: TrainingConfig) -> list[float]:
    hub = TelemetryHub("t", [])
    env = PlateauEnv(StandInConfig(), seed=0)
    trainer = standin_trainer(config, [env], hub)
    return [float(sum(p.numel() for p in trainer.network.parameters()))]


def build_probe(config: TrainingConfig) -> list[float]:
    """Building the real trainer: which devices, whether AMP is possible, the hub's level."""
    hub = TelemetryHub("t", [], level=_level(config))
    try:
        _, devices = build_trainer(config, hub, load_data(config.env))
    except ValueError as err:
        return [float(hash(str(err)))]
    return [float(hash(tuple(map(str, devices)))), float(hub.level.value)]


def run_probe(config: TrainingConfig) -> list[float]:
    """A one-round ``esper ppo`` run of ``config``: which files its run directory holds."""
    from esper.cli.main import main

    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "config.json", Path(tmp) / "run"
        path.write_text(json.dumps(config_dict(config)), encoding="utf-8")
        argv = ["ppo", "--config", str(path), "--ppo.rounds", "1", "--out", str(out)]
        assert main(argv) == 0
        return [float(hash(tuple(sorted(p.name for p in out.iterdir()))))]


def tracking_probe(config: TrainingConfig) -> list[float]:
    """``run_probe`` with the MLflow store, when one is set, in a temporary directory."""
    if config.telemetry.mlflow is None:
        return run_probe(config)
    pytest.importorskip("mlflow")
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / config.telemetry.mlflow.removeprefix('sqlite:///')}"
        return run_probe(replace(config, telemetry=replace(config.telemetry, mlflow=uri)))


def _level(config: TrainingConfig) -> TelemetryLevel:
    return TelemetryLevel.parse(config.telemetry.level)


def loader_probe(config: TrainingConfig) -> list[float]:
    """What the dataset loader is asked for (data_dir and download flow into it)."""
    calls: list[tuple[Any, ...]] = []
    original = study_checks.load_dataset

    def spy(name, data_dir=None, **kwargs):
        calls.append((name, data_dir, kwargs["download"]))
        raise FileNotFoundError("spy")

    study_checks.load_dataset = spy
    try:
        with pytest.raises(UserError, match="spy"):
            load_data(config.env)
    finally:
        study_checks.load_dataset = original
    return [float(hash(calls[0]))]


def workers_probe(config: TrainingConfig) -> list[float]:
    """Where the environments run: how many Ray actors, joined at which address."""
    from esper.simic.workers import RayVectorEnv, start_ray

    try:
        config, stop = start_ray(config)
    except ValueError as err:  # e.g. nothing listens at the address
        return [float(hash(str(err)))]
    try:
        trainer, _ = build_trainer(config, TelemetryHub("t", []), load_data(config.env))
        assert isinstance(trainer.vec, RayVectorEnv)
        chunks = trainer.vec.chunks
        trainer.vec.close()
    finally:
        stop()
    return [float(len(chunks))]


def resources_probe(config: TrainingConfig) -> list[float]:
    """What each Ray actor reserves, and the GPUs all of them need."""
    from esper.simic.workers import actor_resources, gpus_needed

    threaded = replace(config, env=replace(config.env, threads=1))
    return [*actor_resources(threaded).values(), float(gpus_needed(config))]


Probe = Callable[[TrainingConfig], list[float]]
CONTRIBUTION_SIMPLIFIED = {"reward": {"mode": "simplified"}}
TINY_RUN = {"ppo": {"n_envs": 1}, "env": {"epochs": 3, "batches_per_epoch": 2}}
FIELD_CASES: dict[str, tuple[Any, dict[str, Any], Probe]] = {
    "env.task": ("digits", {}, env_probe),
    "env.epochs": (5, {}, env_probe),
    "env.batch_size": (32, {}, env_probe),
    "env.batches_per_epoch": (3, {}, env_probe),
    "env.val_samples": (64, {}, env_probe),
    "env.lr": (1e-2, {}, env_probe),
    "env.seed_lr": (1e-1, {}, env_probe),
    "env.weight_decay": (0.5, {}, env_probe),
    "env.threads": (1, {"env": {"threads": 2}}, threads_probe),
    "env.precision": ("bfloat16", {}, env_probe),
    "env.slots": (["mid", "late"], {}, env_probe),
    "env.width": (8, {}, env_probe),
    "env.shapley": (True, {"env": {"epochs": 8}}, blending_probe),
    "env.auto_advance": (True, {}, env_probe),  # the germinated seed trains at once
    # only a dataset read from files takes a data_dir (synthetic refuses one)
    "env.data_dir": ("/somewhere/else", {"env": {"task": "fashion_mnist_impaired"}}, loader_probe),
    # only a dataset that is downloaded takes download = false (synthetic refuses it)
    "env.download": (False, {"env": {"task": "fashion_mnist_impaired"}}, loader_probe),
    "policy.hidden": (8, {}, policy_probe),
    "policy.lstm_hidden": (8, {}, policy_probe),
    "policy.slot_telemetry": (False, {}, policy_probe),
    "ppo.n_envs": (3, {}, learn_probe),
    "ppo.rounds": (2, {}, learn_probe),
    "ppo.lr": (1e-2, {}, learn_probe),
    "ppo.gamma": (0.5, {}, learn_probe),
    "ppo.gae_lambda": (0.5, {}, learn_probe),
    "ppo.clip_ratio": (0.01, {"ppo": {"lr": 1e-2}}, learn_probe),
    "ppo.ppo_epochs": (3, {}, learn_probe),
    "ppo.minibatches": (2, {}, learn_probe),
    "ppo.value_coef": (2.0, {}, learn_probe),
    "ppo.entropy_coef": (0.5, {}, learn_probe),
    "ppo.entropy_coef_final": (0.5, {}, learn_probe),
    "ppo.entropy_anneal_steps": (0, {}, learn_probe),
    "ppo.max_grad_norm": (1e-3, {}, learn_probe),
    "ppo.target_kl": (1e-9, {}, learn_probe),
    "ppo.ratio_explosion": (1.0001, {"ppo": {"lr": 1e-2}}, learn_probe),
    "ppo.reward_scaling": (True, {"ppo": {"rounds": 2}}, learn_probe),  # from round 2 on
    "ppo.normalize_advantages": (False, {}, learn_probe),
    "ppo.horizon": ("termination", {}, horizon_probe),
    "reward.family": ("loss", {}, reward_probe),
    "reward.mode": ("sparse", {}, reward_probe),
    "reward.contribution_weight": (1.0, {}, reward_probe),
    "reward.pbrs_weight": (1.0, {}, reward_probe),
    "reward.rent_weight": (3.0, {}, reward_probe),
    "reward.rent_basis": ("blended", {}, reward_probe),
    "reward.action_cost": (0.5, CONTRIBUTION_SIMPLIFIED, reward_probe),
    "reward.refused_cost": (0.5, CONTRIBUTION_SIMPLIFIED, reward_probe),
    "reward.terminal_weight": (3.0, CONTRIBUTION_SIMPLIFIED, reward_probe),
    "reward.panic_penalty": (3.0, {}, reward_probe),
    "reward.loss_weight": (1.0, {"reward": {"family": "loss"}}, reward_probe),
    "runtime.seed": (1, {}, env_probe),
    "runtime.devices": (["cuda:0"], {}, build_probe),
    "runtime.amp": (True, {}, build_probe),
    "runtime.workers": (2, {"runtime": {"workers": 1}}, workers_probe),
    "runtime.ray_address": ("127.0.0.1:1", {"runtime": {"workers": 1}}, workers_probe),
    "runtime.workers_per_gpu": (
        2,
        {"runtime": {"workers": 2, "devices": ["cuda"]}},
        resources_probe,
    ),
    "telemetry.level": ("debug", {}, build_probe),
    "telemetry.tensorboard": (True, TINY_RUN, run_probe),
    "telemetry.mlflow": ("sqlite:///mlflow.db", TINY_RUN, tracking_probe),
}


def test_the_table_covers_every_field() -> None:
    config = TrainingConfig()
    paths = {
        f"{group.name}.{f.name}"
        for group in fields(config)
        for f in fields(getattr(config, group.name))
    }
    assert set(FIELD_CASES) == paths


RAY_STARTS = {"runtime.workers", "runtime.ray_address"}
"""Probes that start Ray three times (15-35 s): slow lane; tests/test_simic_workers.py covers
both settings' behaviour in the fast lane."""


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=[pytest.mark.slow] if p in RAY_STARTS else [])
        for p in sorted(FIELD_CASES)
    ],
)
def test_each_field_changes_behaviour(path: str) -> None:
    value, base, probe = FIELD_CASES[path]
    group, name = path.split(".")
    before = probe(_config(base))
    after = probe(_config(base, {group: {name: value}}))
    assert before != after, f"{path}={value!r} changed nothing"
