"""``ppo.reward_scaling``: rewards divided by the running standard deviation of the discounted
return, checked against the raw rewards the environments gave (an independent recomputation)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from esper.leyline.config import override
from esper.nissa import TelemetryHub
from esper.simic.config import TrainingConfig
from esper.simic.rollout import RolloutBatch
from standin import PlateauEnv, StandInConfig, standin_trainer

GAMMA = 0.9


def _run(scaling: bool, rounds: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    """Train ``rounds`` on two stand-ins; each round's raw rewards per environment (in step
    order) and the rewards the round's batch holds (per step, both environments)."""
    config = override(
        TrainingConfig(),
        {
            "policy": {"hidden": 16, "lstm_hidden": 16},
            "ppo": {"n_envs": 2, "rounds": rounds, "ppo_epochs": 1, "gamma": GAMMA},
        },
    )
    config = override(config, {"ppo": {"reward_scaling": scaling}})
    cost = StandInConfig(episode_length=6, plateau_latest=4, wrong_cost=0.5)
    envs = [PlateauEnv(cost, seed=i) for i in range(2)]
    raw: list[list[list[float]]] = []  # round -> env -> rewards
    recorded: list[list[list[float]]] = []  # round -> step -> both envs' buffered rewards
    for i, env in enumerate(envs):
        step, reset = env.step, env.reset

        def stepped(action: Any, step: Any = step, i: int = i) -> Any:
            result = step(action)
            raw[-1][i].append(result.reward)
            return result

        def started(reset: Any = reset, i: int = i) -> Any:
            if i == 0:
                raw.append([[], []])
            return reset()

        monkeypatch.setattr(env, "step", stepped)
        monkeypatch.setattr(env, "reset", started)
    trainer = standin_trainer(config, envs, TelemetryHub("t", []))
    update = trainer.learner.update

    def learn(batch: RolloutBatch) -> Any:
        recorded.append(batch.rewards.T.tolist())  # (T, N): per step, both environments
        return update(batch)

    trainer.learner.update = learn  # type: ignore[method-assign]
    trainer.train(lambda result: None)
    return trainer, raw, recorded


def _discounted(rewards: list[float]) -> list[float]:
    g, out = 0.0, []
    for r in rewards:
        g = GAMMA * g + r
        out.append(g)
    return out


def test_rewards_are_divided_by_the_std_of_earlier_discounted_returns(monkeypatch) -> None:
    trainer, raw, recorded = _run(True, rounds=3, monkeypatch=monkeypatch)
    seen: list[float] = []
    for k in range(3):
        scale = 1.0 if not seen else math.sqrt(float(np.var(seen)) + 1e-8)
        for step, buffered in enumerate(recorded[k]):
            for env in range(2):
                expected = raw[k][env][step] / scale if step < len(raw[k][env]) else 0.0
                assert buffered[env] == pytest.approx(expected, rel=1e-6, abs=1e-9)
        seen += [g for env in range(2) for g in _discounted(raw[k][env])]
        if k == 0:
            assert any(r != 0 for env in raw[0] for r in env)  # the oracle has something to scale
    assert trainer.return_stats.count == len(seen)
    assert float(trainer.return_stats.var[0]) == pytest.approx(float(np.var(seen)), rel=1e-9)
    # A resumed trainer scales the next round exactly as the original would.
    fresh, _, _ = _run(True, rounds=1, monkeypatch=monkeypatch)
    fresh.load_state_dict(trainer.state_dict())
    assert fresh._reward_scale() == trainer._reward_scale() != 1.0


def test_without_scaling_the_buffer_gets_the_raw_rewards(monkeypatch) -> None:
    trainer, raw, recorded = _run(False, rounds=2, monkeypatch=monkeypatch)
    for k in range(2):
        for step, buffered in enumerate(recorded[k]):
            assert buffered == [raw[k][env][step] for env in range(2)]
    assert trainer.return_stats is None
