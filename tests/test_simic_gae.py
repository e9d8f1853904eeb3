"""GAE against hand-computed trajectories: truncation, termination, episode boundaries."""

from __future__ import annotations

import math

import pytest
import torch

from esper.simic.acting import Trajectory
from esper.simic.protocol import EpisodeInfo
from esper.simic.rollout import compute_gae, rollout_batch
from esper.tamiyo.actions import ActionMasks

GAMMA, LAM = 0.5, 0.5


def _gae(rewards, values, next_values, end, term):
    t = lambda v: torch.tensor([v], dtype=torch.float32)  # noqa: E731
    b = lambda v: torch.tensor([v], dtype=torch.bool)  # noqa: E731
    return compute_gae(t(rewards), t(values), t(next_values), b(end), b(term), GAMMA, LAM)


def test_truncation_bootstraps_from_the_final_value() -> None:
    # δ = r + γ V' − V: δ0 = 1 + .5·1 − .5 = 1, δ1 = 2 + .5·1.5 − 1 = 1.75, δ2 = 3 + .5·4 − 1.5
    # = 3.5; A2 = 3.5, A1 = 1.75 + .25·3.5 = 2.625, A0 = 1 + .25·2.625 = 1.65625.
    adv, ret = _gae([1, 2, 3], [0.5, 1.0, 1.5], [1.0, 1.5, 4.0], [0, 0, 1], [0, 0, 0])
    assert adv[0].tolist() == pytest.approx([1.65625, 2.625, 3.5])
    assert ret[0].tolist() == pytest.approx([2.15625, 3.625, 5.0])


def test_termination_drops_the_bootstrap() -> None:
    # Same trajectory ended by a governor panic: δ2 = 3 − 1.5 = 1.5 (the V' = 4 is ignored);
    # A1 = 1.75 + .25·1.5 = 2.125, A0 = 1 + .25·2.125 = 1.53125.
    adv, _ = _gae([1, 2, 3], [0.5, 1.0, 1.5], [1.0, 1.5, 4.0], [0, 0, 1], [0, 0, 1])
    assert adv[0].tolist() == pytest.approx([1.53125, 2.125, 1.5])


def test_an_episode_end_stops_the_recursion() -> None:
    # Episode 1 is step 0, truncated with V' = 10: A0 = δ0 = 1 + 5 − .5 = 5.5 and nothing
    # from episode 2 (steps 1–2) leaks back into it.
    adv, _ = _gae([1, 2, 3], [0.5, 1.0, 1.5], [10.0, 1.5, 4.0], [1, 0, 1], [0, 0, 0])
    assert adv[0].tolist() == pytest.approx([5.5, 2.625, 3.5])


def test_lambda_one_gives_discounted_return_minus_value() -> None:
    # Independent oracle: with λ = 1 the advantage is the Monte-Carlo return (bootstrapped at
    # the truncation) minus the value.
    rewards, values, boot = [1.0, -2.0, 0.5, 3.0], [0.3, -0.1, 0.7, 0.2], 1.5
    g = 0.9
    expected, ret = [], boot
    for r in reversed(rewards):
        ret = r + g * ret
        expected.insert(0, ret)
    t = lambda v: torch.tensor([v])  # noqa: E731
    nxt = [*values[1:], boot]
    adv, _ = compute_gae(
        t(rewards),
        t(values),
        t(nxt),
        torch.tensor([[False, False, False, True]]),
        torch.zeros(1, 4, dtype=torch.bool),
        g,
        1.0,
    )
    assert adv[0].tolist() == pytest.approx([e - v for e, v in zip(expected, values, strict=True)])


def _trajectory(rewards: list[float], values: list[float], terminated: bool, boot: float):
    n = len(rewards)
    masks = ActionMasks(
        op=torch.ones(n, 3, dtype=torch.bool),
        slot=torch.ones(n, 3, 2, dtype=torch.bool),
        blueprint=torch.ones(n, 2, dtype=torch.bool),
        tempo=torch.ones(n, 4, dtype=torch.bool),
        alpha_target=torch.ones(n, 4, dtype=torch.bool),
    )
    return Trajectory(
        raw=torch.arange(n, dtype=torch.float32)[:, None] * 2,
        obs=torch.arange(n, dtype=torch.float32)[:, None],
        masks=masks,
        actions=torch.arange(n)[:, None].expand(n, 5),
        log_prob=torch.full((n,), -1.0),
        values=torch.tensor(values),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        terminated=terminated,
        bootstrap=boot,
        info=EpisodeInfo(None, None, None),
    )


def test_a_round_batch_pads_an_early_end_and_bootstraps_only_truncations() -> None:
    """Environment 0 is truncated after 3 steps (V' = 4), environment 1 terminated after 1:
    its last two rows repeat its last step as padding, GAE gives them nothing, and the rewards
    are divided by the round's scale. Oracle: the hand-computed cases above (scale 2 turns
    rewards 2, 4, 6 into 1, 2, 3)."""
    truncated = _trajectory([2.0, 4.0, 6.0], [0.5, 1.0, 1.5], terminated=False, boot=4.0)
    panicked = _trajectory([-6.0], [0.25], terminated=True, boot=0.0)
    state = (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))
    batch = rollout_batch([truncated, panicked], state, GAMMA, LAM, scale=2.0)
    assert batch.valid.tolist() == [[True] * 3, [True, False, False]]
    assert batch.episode_start.tolist() == [[True, False, False]] * 2
    assert batch.episode_end.tolist() == [[False, False, True], [True] * 3]
    assert batch.terminated.tolist() == [[False] * 3, [True] * 3]
    assert batch.rewards.tolist() == [[1.0, 2.0, 3.0], [-3.0, 0.0, 0.0]]
    assert batch.next_values.tolist() == [[1.0, 1.5, 4.0], [0.0, 0.0, 0.0]]
    assert batch.advantages[0].tolist() == pytest.approx([1.65625, 2.625, 3.5])
    assert batch.advantages[1].tolist() == pytest.approx([-3.25, 0.0, 0.0])  # δ = −3 − .25
    assert batch.obs[1, :, 0].tolist() == [0.0, 0.0, 0.0]  # the padding repeats step 0
    assert batch.masks.slot.shape == (2, 3, 3, 2) and batch.actions.shape == (2, 3, 5)


def _inputs(**change: object) -> dict[str, object]:
    """The truncation case's inputs (A = 1.65625, 2.625, 3.5) with some replaced."""
    t = lambda v: torch.tensor([v], dtype=torch.float32)  # noqa: E731
    b = lambda v: torch.tensor([v], dtype=torch.bool)  # noqa: E731
    given = {
        "rewards": t([1, 2, 3]),
        "values": t([0.5, 1.0, 1.5]),
        "next_values": t([1.0, 1.5, 4.0]),
        "episode_end": b([0, 0, 1]),
        "terminated": b([0, 0, 0]),
        "gamma": GAMMA,
        "lam": LAM,
    }
    return {**given, **change}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # whole-number rewards gave whole-number advantages ([[0, 0, 0]] here)
        ({"rewards": torch.tensor([[1, 2, 3]])}, r"rewards must be floating point .*int64"),
        # 0/1 integer flags were inverted bitwise: ~0 = -1, ~1 = -2
        ({"episode_end": torch.tensor([[0, 0, 1]])}, r"episode_end must be a bool tensor"),
        ({"terminated": torch.tensor([[0.0, 0.0, 0.0]])}, r"terminated must be a bool tensor"),
        # a (N,) bootstrap broadcast along time
        ({"next_values": torch.tensor([4.0])}, r"next_values must have the rewards' shape"),
        ({"values": torch.tensor([[0.5, 1.0, 1.5]], dtype=torch.float64)}, r"one dtype"),
        ({"rewards": torch.tensor([1.0, 2.0, 3.0])}, r"rewards must be \(N, T\)"),
        ({"gamma": 1.5}, r"gamma must be a number in \[0.0, 1.0\], got 1.5"),
        ({"gamma": math.nan}, r"gamma must be a number in \[0.0, 1.0\], got nan"),
        ({"lam": -2}, r"lam must be a number in \[0.0, 1.0\], got -2"),
        ({"lam": True}, r"lam must be a number in \[0.0, 1.0\], got True"),
    ],
)
def test_gae_refuses_inputs_it_would_compute_wrongly(change: dict, message: str) -> None:
    assert compute_gae(**_inputs())[0][0].tolist() == pytest.approx([1.65625, 2.625, 3.5])
    with pytest.raises(ValueError, match=message):
        compute_gae(**_inputs(**change))


@pytest.mark.parametrize("scale", [0.0, -2.0, math.inf, math.nan])
def test_a_round_batch_refuses_a_scale_that_is_not_positive_and_finite(scale: float) -> None:
    """Scale 0 made every reward infinite and a negative one flipped their signs."""
    state = (torch.zeros(1, 1, 8), torch.zeros(1, 1, 8))
    trajectory = _trajectory([2.0], [0.5], terminated=True, boot=0.0)
    with pytest.raises(ValueError, match=r"scale must be a number in \(0.0, inf\]"):
        rollout_batch([trajectory], state, GAMMA, LAM, scale=scale)
    with pytest.raises(ValueError, match=r"at least one trajectory"):
        rollout_batch([], state, GAMMA, LAM, scale=1.0)


def test_with_horizon_termination_a_full_length_end_is_not_bootstrapped() -> None:
    """``ppo.horizon = "termination"``: the episode that reached its length ends there (its
    V' = 4 is dropped, the step is terminated); the panicked one is as before. Oracle: GAE by
    hand on rewards 1, 2, 3 (scale 2) and values 0.5, 1, 1.5 with V' = 0 at the end."""
    truncated = _trajectory([2.0, 4.0, 6.0], [0.5, 1.0, 1.5], terminated=False, boot=4.0)
    panicked = _trajectory([-6.0], [0.25], terminated=True, boot=0.0)
    state = (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))
    batch = rollout_batch([truncated, panicked], state, GAMMA, LAM, 2.0, truncation=False)
    assert batch.next_values.tolist() == [[1.0, 1.5, 0.0], [0.0, 0.0, 0.0]]
    assert batch.terminated.tolist() == [[False, False, True], [True] * 3]
    d2 = 3.0 - 1.5
    d1 = 2.0 + GAMMA * 1.5 - 1.0
    d0 = 1.0 + GAMMA * 1.0 - 0.5
    a1 = d1 + GAMMA * LAM * d2
    expected = [d0 + GAMMA * LAM * a1, a1, d2]
    assert batch.advantages[0].tolist() == pytest.approx(expected)
    assert batch.advantages[1].tolist() == pytest.approx([-3.25, 0.0, 0.0])
