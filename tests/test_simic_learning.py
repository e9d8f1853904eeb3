"""PPO end to end on the stand-in environment: it learns the known optimum, random does not.

The stand-in has the real observation and action interfaces and a known optimal policy (germinate
the target blueprint in the target slot once the host has plateaued, return 1.0). This proves
the learner (rollouts, GAE, masks, causal credit, the update) works, separately from the costly
host-training environment.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import replace
from typing import Any

import pytest

from esper.leyline import Action, Observation
from esper.leyline.config import override
from esper.nissa import TelemetryHub
from esper.simic.config import TrainingConfig
from esper.simic.protocol import EnvStep
from esper.simic.training import PPOTrainer
from esper.tamiyo.actions import ActionSpace
from esper.tamiyo.policy import PolicyController
from standin import PlateauEnv, StandInConfig, standin_trainer

N_ENVS = 16
ROUNDS = 150  # ≈ 30 s on 2 CPU cores; seeds 0, 1 and 2 were all optimal (greedy) by round 125
EVAL_EPISODES = 50
CHECK_EVERY = 25  # rounds between validation checks of the greedy policy (6 in all)
VALIDATION_SEED = 20_000  # episodes that pick the best round, apart from the reported ones

LEARNING = {
    "policy": {"hidden": 64, "lstm_hidden": 64},
    "ppo": {
        "n_envs": N_ENVS,
        "rounds": ROUNDS,
        "lr": 1e-3,
        "entropy_coef": 0.05,  # enough exploration to find the 1-in-108 germination
        "entropy_coef_final": 0.0,
        "entropy_anneal_steps": 12_000,  # ≈ round 70 of 150 (16 envs × 11 steps per round)
        "target_kl": 0.03,
        "minibatches": 4,
    },
}


def _trainer(seed: int = 0) -> PPOTrainer:
    config = override(TrainingConfig(), {**LEARNING, "runtime": {"seed": seed}})
    envs = [PlateauEnv(StandInConfig(), seed=seed + i) for i in range(N_ENVS)]
    hub = TelemetryHub("test", [])
    return standin_trainer(config, envs, hub)


def _mean_return(decide, reset, seed: int) -> float:
    env = PlateauEnv(StandInConfig(), seed=seed)
    total = 0.0
    for _ in range(EVAL_EPISODES):
        reset()
        observation, done = env.reset(), False
        while not done:
            step = env.step(decide(observation))
            observation, done = step.observation, step.done
            total += step.reward
    return total / EVAL_EPISODES


def _uniform_random_policy(space: ActionSpace, rng: random.Random):
    """Uniform over valid ops, then uniform over that op's valid arguments."""

    def decide(observation: Observation):
        masks = space.masks(observation)
        op = rng.choice(masks.op.nonzero().flatten().tolist())
        indices = [op]
        for mask in (masks.slot[op], masks.blueprint, masks.tempo, masks.alpha_target):
            valid = mask.nonzero().flatten().tolist()
            indices.append(rng.choice(valid) if valid else 0)  # WAIT's slot row is empty
        return space.decode(indices)

    return decide


def test_ppo_reaches_the_optimum_and_random_does_not() -> None:
    """The greedy policy of the best round — chosen on validation episodes (seed 20,000) every
    ``CHECK_EVERY`` rounds, as a run picks its best checkpoint — scores near the optimum on
    other episodes (seed 10,000). After the entropy anneal the greedy policy of a single round
    can drift (seed 0 on one CPU: optimal at rounds 50-75, 0.0 at 100, 1.0 at 125), so the test
    checks what training found, not the last round alone. Training stops early once the
    validation episodes score the optimum (nothing later can be chosen over it); a learner that
    never gets there runs all ``ROUNDS``."""
    trainer = _trainer()
    optimal = PlateauEnv(StandInConfig(), seed=0).optimal_return
    best: tuple[float, Any] = (-math.inf, None)  # (validation score, network and normalizer)
    while trainer.round < ROUNDS and best[0] < optimal - 1e-9:  # ≤ 30 s; see docs/benchmarks.md
        trainer.run_round()
        if trainer.round % CHECK_EVERY == 0:
            greedy = PolicyController(trainer.network, trainer.space, trainer.normalizer, True)
            score = _mean_return(greedy.decide, greedy.reset, seed=VALIDATION_SEED)
            if score > best[0]:
                saved = (trainer.network.state_dict(), trainer.normalizer.state_dict())
                best = (score, copy.deepcopy(saved))
    assert best[1] is not None
    trainer.network.load_state_dict(best[1][0])
    trainer.normalizer.load_state_dict(best[1][1])
    greedy = PolicyController(trainer.network, trainer.space, trainer.normalizer, telemetry=True)
    learned = _mean_return(greedy.decide, greedy.reset, seed=10_000)
    rand = _mean_return(
        _uniform_random_policy(trainer.space, random.Random(0)), lambda: None, seed=10_000
    )
    assert learned >= 0.9 * optimal, f"PPO reached {learned:.3f} of {optimal}"
    assert rand <= 0.3 * optimal, f"a random policy scored {rand:.3f}"


class _FinalBonus(PlateauEnv):
    """The stand-in paying 1.0 on an episode's last step and 0 elsewhere, whatever the policy
    does (the shape of the simplified and sparse rewards' terminal bonus): the last decision's
    true value is 1 whatever was done, and nothing follows it."""

    def step(self, action: Action) -> EnvStep:
        done = super().step(action)
        paid = 1.0 if done.truncated else 0.0
        return replace(done, reward=paid, components=(("target", paid), ("wrong", 0.0)))


# the truncation case shows DESIGN's default at fault, which the GAE unit tests pin: slow lane
@pytest.mark.parametrize(
    "horizon", [pytest.param("truncation", marks=pytest.mark.slow), "termination"]
)
def test_the_critic_learns_the_last_decisions_value_unless_the_end_is_bootstrapped(
    horizon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oracle: V(last decision) = 1. With ``ppo.horizon = "termination"`` the critic learns it;
    with ``truncation`` (DESIGN's contract) the return of the last step is 1 + γ·V(final
    observation), an observation never acted on whose V follows V(last decision) up: the critic
    climbs past 5 within 25 rounds (to ~46 by round 150 in a longer run)."""
    settings = {"n_envs": 8, "rounds": 25, "lr": 1e-3, "minibatches": 2, "horizon": horizon}
    config = override(
        TrainingConfig(), {"policy": {"hidden": 32, "lstm_hidden": 32}, "ppo": settings}
    )
    envs = [_FinalBonus(StandInConfig(episode_length=8), seed=i) for i in range(8)]
    trainer = standin_trainer(config, envs, TelemetryHub("test", []))
    collected: list[Any] = []
    collect = trainer.vec.collect
    monkeypatch.setattr(
        trainer.vec, "collect", lambda p: collected.append(collect(p)) or collected[-1]
    )
    for _ in range(25):
        trainer.run_round()
    last_values = [float(t.values[-1]) for t in collected[-1]]
    mean = sum(last_values) / len(last_values)
    if horizon == "termination":
        assert abs(mean - 1.0) < 0.3, f"V(last decision) {mean:.3f}, true value 1"
    else:
        assert mean > 5.0, f"V(last decision) {mean:.3f}: the bootstrap no longer feeds it"
