"""The stand-in environment: its known optimum, its signals, its rules."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

import pytest
import torch

from esper.kasmina import blueprint_registry
from esper.leyline import Action, Observation, Op, SeedStage, Topology
from esper.simic.protocol import Env, EnvStep, EpisodeInfo
from standin import (
    STANDIN_COMPONENTS,
    PlateauEnv,
    StandInConfig,
    optimal_action,
)

CONFIG = StandInConfig()
Policy = Callable[[Observation], Action]


def run_episode(env: PlateauEnv, policy: Policy) -> tuple[float, list[EnvStep]]:
    """Play one episode; return its (undiscounted) return and its steps."""
    observation = env.reset()
    steps: list[EnvStep] = []
    while not steps or not steps[-1].done:
        steps.append(env.step(policy(observation)))
        observation = steps[-1].observation
    return sum(s.reward for s in steps), steps


def valid_actions(observation: Observation) -> list[Action]:
    """WAIT, or GERMINATE any offered blueprint into any DORMANT slot (built by hand)."""
    actions = [Action(Op.WAIT)]
    for slot, report in observation.reports.items():
        if report.stage is SeedStage.DORMANT:
            actions += [
                Action(Op.GERMINATE, slot=slot, blueprint=b) for b in observation.blueprints
            ]
    return actions


def germinate(slot: str = "mid", blueprint: str = CONFIG.target_blueprint) -> Action:
    return Action(Op.GERMINATE, slot=slot, blueprint=blueprint)


def plateau_epoch(env: PlateauEnv) -> tuple[Observation, int]:
    """Reset and WAIT until the plateau signal comes on; return that observation and its epoch."""
    observation = env.reset()
    while not observation.signals.host_stabilized:
        observation = env.step(Action(Op.WAIT)).observation
    return observation, observation.signals.epoch


def test_implements_the_env_protocol() -> None:
    env: Env = PlateauEnv(CONFIG, seed=0)
    assert env.topology is Topology.CNN
    assert env.slots == ("early", "mid", "late")
    assert CONFIG.target_blueprint in blueprint_registry.names(Topology.CNN)


def test_optimal_policy_scores_the_optimal_return_every_episode() -> None:
    env = PlateauEnv(CONFIG, seed=1)
    returns = [run_episode(env, lambda o: optimal_action(o, CONFIG))[0] for _ in range(50)]
    assert returns == [env.optimal_return] * 50
    assert env.optimal_return == 1.0


def test_random_valid_policy_scores_far_below_optimal() -> None:
    env = PlateauEnv(CONFIG, seed=2)
    rng = random.Random(3)
    returns = [run_episode(env, lambda o: rng.choice(valid_actions(o)))[0] for _ in range(200)]
    mean = statistics.fmean(returns)
    hits = sum(r > 0 for r in returns)
    assert mean < 0.3 * env.optimal_return, f"random mean return {mean:.3f} ({hits}/200 hits)"
    assert min(returns) >= -3 * CONFIG.wrong_cost  # at most one wrong seed per slot


def test_fixed_timing_cannot_match_waiting_for_the_signal() -> None:
    env = PlateauEnv(CONFIG, seed=4)

    def at_epoch_5(o: Observation) -> Action:
        return germinate() if o.signals.epoch == 5 else Action(Op.WAIT)

    returns = [run_episode(env, at_epoch_5)[0] for _ in range(50)]
    assert set(returns) == {1.0, -CONFIG.wrong_cost}  # plateau in 3..5 vs 6..7


def test_plateau_signals() -> None:
    env = PlateauEnv(CONFIG, seed=5)
    for _ in range(20):
        _, steps = run_episode(env, lambda o: Action(Op.WAIT))
        signals = [s.observation.signals for s in steps]
        p = next(s.epoch for s in signals if s.host_stabilized)
        assert CONFIG.plateau_earliest <= p <= CONFIG.plateau_latest
        for s in signals:
            assert s.host_stabilized == (s.epoch >= p)
            assert s.plateau_epochs == max(s.epoch - p, 0)
            assert s.loss_delta is not None and s.accuracy_delta is not None
            if s.epoch <= p:
                assert s.loss_delta < 0 < s.accuracy_delta
            else:
                assert s.loss_delta == 0.0 == s.accuracy_delta
            assert 0.5 < s.val_loss < 2.31 and 10.0 < s.val_accuracy < 80.0
            assert s.best_val_accuracy == max(s.accuracy_history)
            assert len(s.loss_history) == min(s.epoch, 5)


def test_truncates_at_episode_length_and_never_terminates() -> None:
    config = StandInConfig(episode_length=9, plateau_earliest=2, plateau_latest=8)
    env = PlateauEnv(config, seed=6)
    first = env.reset()
    assert first.signals.epoch == 1 and first.max_epochs == 9
    assert first.signals.loss_delta is None
    _, steps = run_episode(env, lambda o: Action(Op.WAIT))
    assert len(steps) == 8 == env.max_steps  # the first epoch is trained by reset()
    assert [s.truncated for s in steps] == [False] * 7 + [True]
    assert not any(s.terminated for s in steps)
    assert steps[-1].observation.signals.epoch == 9
    with pytest.raises(RuntimeError, match="reset"):
        env.step(Action(Op.WAIT))
    with pytest.raises(RuntimeError, match="reset"):
        PlateauEnv(config, seed=6).step(Action(Op.WAIT))


def test_deterministic_given_the_seed() -> None:
    def trace(seed: int) -> list[tuple[object, ...]]:
        env = PlateauEnv(CONFIG, seed=seed)
        rng = random.Random(7)
        out: list[tuple[object, ...]] = []
        for _ in range(5):
            _, steps = run_episode(env, lambda o: rng.choice(valid_actions(o)))
            out += [(s.observation, s.reward, s.components, s.accepted) for s in steps]
        return out

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)


def test_state_dict_resumes_the_episode_sequence_exactly() -> None:
    def curves(env: PlateauEnv, n: int) -> list[tuple[float, ...]]:
        return [
            run_episode(env, lambda o: Action(Op.WAIT))[1][-1].observation.signals.loss_history
            for _ in range(n)
        ]

    env = PlateauEnv(CONFIG, seed=15)
    curves(env, 2)
    state = env.state_dict()
    expected = curves(env, 3)
    resumed = PlateauEnv(CONFIG, seed=99)
    resumed.load_state_dict(state)
    assert resumed.episode == 2
    assert curves(resumed, 3) == expected and resumed.episode == env.episode == 5
    with pytest.raises(ValueError, match="keys"):
        resumed.load_state_dict({"episode": 1})


def test_episode_info() -> None:
    env = PlateauEnv(CONFIG, seed=16)
    assert env.episode_info() == EpisodeInfo(None, None, None)
    _, steps = run_episode(env, lambda o: optimal_action(o, CONFIG))
    info = env.episode_info()
    last = steps[-1].observation
    assert info.final_val_accuracy == last.signals.val_accuracy
    assert info.host_param_count == last.reports["mid"].host_param_count
    assert info.param_count == info.host_param_count + last.reports["mid"].seed_param_count


def test_uses_no_global_random_state() -> None:
    torch.manual_seed(0)
    random.seed(0)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(0)
    random.seed(0)
    env = PlateauEnv(CONFIG, seed=8)
    run_episode(env, lambda o: optimal_action(o, CONFIG))
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_observations_report_three_slots_in_order() -> None:
    env = PlateauEnv(CONFIG, seed=9)
    observation = env.reset()
    assert tuple(observation.reports) == ("early", "mid", "late")
    assert tuple(s.slot for s in observation.signals.slots) == ("early", "mid", "late")
    assert observation.blueprints == blueprint_registry.names(Topology.CNN)
    for name, report in observation.reports.items():
        assert report.slot == name and report.stage is SeedStage.DORMANT
        assert report.blueprint is None and report.seed_param_count == 0
        assert report.host_param_count > 0
    after = env.step(germinate("late", "norm")).observation
    late = after.reports["late"]
    assert late.stage is SeedStage.GERMINATED and late.blueprint == "norm"
    assert late.seed_param_count > 0 and late.counterfactual_contribution is None
    assert after.signals.slots[2].stage is SeedStage.GERMINATED
    assert tuple(after.reports) == ("early", "mid", "late")


def test_germination_rules() -> None:
    env = PlateauEnv(CONFIG, seed=10)
    plateau_epoch(env)
    wrong_slot = env.step(germinate("early"))
    assert wrong_slot.accepted and wrong_slot.components == (("target", 0.0), ("wrong", -0.1))
    occupied = env.step(germinate("early"))
    assert not occupied.accepted and occupied.reward == 0.0
    wrong_blueprint = env.step(germinate("late", "norm"))
    assert wrong_blueprint.reward == -CONFIG.wrong_cost
    hit = env.step(germinate())
    assert hit.accepted and hit.components == (("target", 1.0), ("wrong", 0.0))
    assert tuple(name for name, _ in hit.components) == STANDIN_COMPONENTS
    again = env.step(germinate())
    assert not again.accepted and again.reward == 0.0


def test_germinating_the_target_too_early_forfeits_the_reward() -> None:
    env = PlateauEnv(CONFIG, seed=11)
    env.reset()
    early = env.step(germinate())  # chosen on epoch 1, before the earliest plateau (3)
    assert early.accepted and early.reward == -CONFIG.wrong_cost
    last, later = early, 0.0
    while not last.done:
        last = env.step(optimal_action(last.observation, CONFIG))
        later += last.reward
    assert later == 0.0  # the target slot is taken: the +1 is gone


@pytest.mark.parametrize(
    "action",
    [
        Action(Op.ADVANCE, slot="mid"),
        Action(Op.PRUNE, slot="mid"),
        Action(Op.FOSSILIZE, slot="mid"),
        Action(Op.SET_ALPHA_TARGET, slot="mid", tempo=3, alpha_target=0.5),
    ],
)
def test_other_ops_are_refused_no_ops(action: Action) -> None:
    env = PlateauEnv(CONFIG, seed=12)
    env.reset()
    env.step(germinate())  # a seed to act on
    out = env.step(action)
    assert not out.accepted and out.reward == 0.0
    assert out.observation.reports["mid"].stage is SeedStage.GERMINATED


def test_rejects_actions_outside_the_action_space() -> None:
    env = PlateauEnv(CONFIG, seed=13)
    env.reset()
    with pytest.raises(ValueError, match=r"'r2'.*'early', 'mid', 'late'"):
        env.step(germinate("r2"))
    with pytest.raises(ValueError, match=r"'lora'.*'norm'"):
        env.step(germinate("mid", "lora"))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"episode_length": 1, "plateau_earliest": 1, "plateau_latest": 1}, "episode_length"),
        ({"plateau_earliest": 0}, "plateau_earliest"),
        ({"plateau_earliest": 8, "plateau_latest": 7}, "plateau_earliest"),
        ({"plateau_latest": 12}, "plateau_latest"),
        ({"target_slot": "r2"}, r"'r2'.*'early', 'mid', 'late'"),
        ({"target_blueprint": "lora"}, r"'lora'.*'norm'"),
        ({"wrong_cost": -0.1}, "wrong_cost"),
    ],
)
def test_config_validation(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StandInConfig(**overrides)  # type: ignore[arg-type]


def test_every_config_field_changes_the_episodes() -> None:
    def returns(config: StandInConfig, policy: Policy) -> list[float]:
        env = PlateauEnv(config, seed=14)
        return [run_episode(env, policy)[0] for _ in range(10)]

    def eager(o: Observation) -> Action:  # grows the default target at once, before any plateau
        return germinate() if o.reports["mid"].stage is SeedStage.DORMANT else Action(Op.WAIT)

    def patient(o: Observation) -> Action:  # the optimal policy for the default config
        return optimal_action(o, CONFIG)

    assert returns(CONFIG, eager) == [-0.1] * 10
    assert returns(CONFIG, patient) == [1.0] * 10
    assert returns(StandInConfig(wrong_cost=0.5), eager) == [-0.5] * 10
    assert returns(StandInConfig(plateau_earliest=1, plateau_latest=1), eager) == [1.0] * 10
    assert returns(StandInConfig(plateau_earliest=2, plateau_latest=2), eager) == [-0.1] * 10
    assert returns(StandInConfig(target_slot="late"), patient) == [-0.1] * 10
    assert returns(StandInConfig(target_blueprint="norm"), patient) == [-0.1] * 10
    env = PlateauEnv(StandInConfig(episode_length=20), seed=14)
    assert len(run_episode(env, patient)[1]) == 19
