"""Simic rewards against hand-computed values (DESIGN §5)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from typing import Any

import pytest

from conftest import seed_report
from esper.leyline import Action, Op, SeedStage, SeedStateReport
from esper.simic.rewards import (
    CONTRIBUTION_MODES,
    LOSS_COMPONENTS,
    REWARD_FAMILIES,
    SHAPED_COMPONENTS,
    SIMPLIFIED_COMPONENTS,
    SPARSE_COMPONENTS,
    STAGE_POTENTIALS,
    RewardBreakdown,
    RewardConfig,
    RewardFunction,
    RewardInput,
    check_gamma,
)

SLOTS = ("early", "mid", "late")
GAMMA = 0.9
WAIT = Action(Op.WAIT)
GERMINATE = Action(Op.GERMINATE, slot="mid", blueprint="norm")


def rep(
    slot: str, stage: SeedStage = SeedStage.DORMANT, contribution: float | None = None
) -> SeedStateReport:
    seeded = stage is not SeedStage.DORMANT
    return seed_report(
        slot,
        stage,
        alpha_target=1.0 if seeded else 0.0,
        contribution=contribution,
        seed_params=100 if seeded else 0,
    )


def reports(**stages: SeedStage) -> dict[str, SeedStateReport]:
    """Reports of the three slots: the given stages, DORMANT elsewhere."""
    return {s: rep(s, stages.get(s, SeedStage.DORMANT)) for s in SLOTS}


def holding_mid(contribution: float) -> dict[str, SeedStateReport]:
    """Reports with a HOLDING seed in ``mid`` that contributes ``contribution`` points."""
    return {**reports(), "mid": rep("mid", SeedStage.HOLDING, contribution)}


def step(**overrides: Any) -> RewardInput:
    """A mid-episode step with no seeds, no change in metrics and no extra parameters."""
    fields: dict[str, Any] = {
        "action": WAIT,
        "accepted": True,
        "before": reports(),
        "after": reports(),
        "val_accuracy_before": 60.0,
        "val_accuracy_after": 60.0,
        "val_loss_before": 1.0,
        "val_loss_after": 1.0,
        "active_params": 1000,
        "host_params": 1000,
        "terminated": False,
        "truncated": False,
        "epoch": 5,
        "max_epochs": 10,
    }
    fields.update(overrides)
    return RewardInput(**fields)


def component(breakdown: RewardBreakdown, name: str) -> float:
    return dict(breakdown.components)[name]


def reward(config: RewardConfig | None = None, gamma: float = GAMMA) -> RewardFunction:
    return RewardFunction(RewardConfig() if config is None else config, gamma)


# ------------------------------------------------------------------------------------ PBRS


def test_stage_potentials_grow_along_the_productive_lifecycle() -> None:
    ladder = [
        SeedStage.DORMANT,
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.HOLDING,
        SeedStage.FOSSILIZED,
    ]
    values = [STAGE_POTENTIALS[s] for s in ladder]
    assert values == sorted(values) and len(set(values)) == len(values)
    for pruned in (SeedStage.PRUNED, SeedStage.EMBARGOED, SeedStage.RESETTING):
        assert STAGE_POTENTIALS[pruned] <= STAGE_POTENTIALS[SeedStage.GERMINATED]
    assert set(STAGE_POTENTIALS) == set(SeedStage)
    assert min(STAGE_POTENTIALS.values()) >= 0.0


def test_pbrs_telescopes_over_an_episode() -> None:
    # mid grows DORMANT -> GERMINATED -> TRAINING -> TRAINING -> BLENDING while a late seed
    # appears and is pruned. Potentials (pbrs_weight 0.1): 0, 0.1, 0.3, 0.3, 0.3.
    episode: list[Mapping[str, SeedStateReport]] = [
        reports(),
        reports(mid=SeedStage.GERMINATED),
        reports(mid=SeedStage.TRAINING, late=SeedStage.GERMINATED),
        reports(mid=SeedStage.TRAINING, late=SeedStage.GERMINATED),
        reports(mid=SeedStage.BLENDING, late=SeedStage.PRUNED),
    ]
    fn = reward(RewardConfig(mode="simplified"))
    shaping = [
        component(fn(step(before=s, after=s_next, epoch=t + 1)), "pbrs")
        for t, (s, s_next) in enumerate(itertools.pairwise(episode))
    ]
    discounted = sum(GAMMA**t * f for t, f in enumerate(shaping))
    # gamma^T Phi(s_T) - Phi(s_0) with T = 4, Phi(s_T) = 0.1 * 3 (BLENDING), Phi(s_0) = 0:
    # 0.9^4 * 0.3 = 0.6561 * 0.3 = 0.19683.
    assert discounted == pytest.approx(0.19683, abs=1e-12)
    assert shaping[0] == pytest.approx(0.9 * 0.1 - 0.0)
    assert shaping[1] == pytest.approx(0.9 * 0.3 - 0.1)


def test_pbrs_terminal_potential_is_zero_on_termination_and_real_on_truncation() -> None:
    fn = reward(RewardConfig(mode="simplified"))
    holding = reports(mid=SeedStage.HOLDING)  # Phi = 0.4
    died = fn(step(before=holding, after=holding, terminated=True))
    assert component(died, "pbrs") == pytest.approx(-0.4)
    finished = fn(step(before=holding, after=holding, truncated=True, epoch=10))
    assert component(finished, "pbrs") == pytest.approx(0.9 * 0.4 - 0.4)


def test_with_horizon_termination_the_final_potential_is_zero_at_the_length_too() -> None:
    """``ppo.horizon = "termination"`` (``final_potential=False``): the episode's length ends it
    as a panic would, so the last step's shaping is −Φ(s) and the shaping of any episode sums
    to −Φ(s_0); the terminal bonus is still paid, a step inside the episode is unchanged."""
    fn = RewardFunction(RewardConfig(mode="simplified"), gamma=0.9, final_potential=False)
    holding = reports(mid=SeedStage.HOLDING)  # Phi = 0.4
    finished = fn(step(before=holding, after=holding, truncated=True, epoch=10))
    assert component(finished, "pbrs") == pytest.approx(-0.4)
    assert component(finished, "terminal") > 0
    inside = fn(step(before=reports(), after=holding))
    assert component(inside, "pbrs") == pytest.approx(0.9 * 0.4)


def test_potential_is_weighted_sum_of_stage_potentials() -> None:
    fn = reward(RewardConfig(pbrs_weight=0.5))
    assert fn.potential(reports(early=SeedStage.TRAINING, late=SeedStage.FOSSILIZED)) == 3.5


def test_check_gamma() -> None:
    check_gamma(reward(gamma=0.99), 0.99)
    with pytest.raises(ValueError, match=r"0\.99.*0\.95"):
        check_gamma(reward(gamma=0.99), 0.95)


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.5, math.nan, True])
def test_gamma_out_of_range_is_rejected(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma"):
        reward(gamma=gamma)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"terminated": "no"}, "terminated must be true or false, got 'no'"),
        ({"accepted": 1}, "accepted must be true or false, got 1"),
        ({"active_params": 1000.5}, r"active_params must be an integer in \[0, "),
        ({"host_params": True}, r"host_params must be an integer in \[0, "),
    ],
)
def test_a_step_of_the_wrong_types_is_refused(change: dict[str, Any], message: str) -> None:
    """``terminated="no"`` is truthy: the step was paid the panic penalty."""
    with pytest.raises(ValueError, match=message):
        step(**change)


# --------------------------------------------------------------------------------- shaped


def test_rent_is_normalized_by_host_size() -> None:
    fn = reward()
    small = component(fn(step(active_params=1500, host_params=1000)), "rent")
    large = component(fn(step(active_params=2500, host_params=2000)), "rent")
    assert small == pytest.approx(-1.0 * 500 / 1000)
    assert large == pytest.approx(small / 2)
    unrented = component(fn(step(active_params=1000, host_params=1000)), "rent")
    assert math.copysign(1.0, unrented) == 1.0  # 0.0: the log showed ["rent", -0.0]


def test_blended_rent_charges_each_seed_its_alpha_weighted_share() -> None:
    after = {
        "early": seed_report("early", SeedStage.TRAINING, "norm", seed_params=400),
        "mid": seed_report("mid", SeedStage.BLENDING, "norm", alpha=0.25, seed_params=200),
        "late": seed_report("late", SeedStage.FOSSILIZED, "norm", alpha=1.0, seed_params=100),
    }
    inp = step(after=after, before=after, active_params=1700, host_params=1000)
    active = component(reward()(inp), "rent")
    blended = component(reward(RewardConfig(rent_basis="blended"))(inp), "rent")
    assert active == pytest.approx(-1.0 * 700 / 1000)  # every seed that runs, TRAINING included
    assert blended == pytest.approx(-1.0 * (0.25 * 200 + 1.0 * 100) / 1000)
    untouched = {s: seed_report(s, SeedStage.TRAINING, "norm", seed_params=400) for s in SLOTS}
    quiet = step(after=untouched, before=untouched, active_params=2200, host_params=1000)
    blended_fn = reward(RewardConfig(rent_basis="blended"))
    assert component(blended_fn(quiet), "rent") == 0.0  # nothing blended yet
    with pytest.raises(ValueError, match=r"unknown reward\.rent_basis 'output'; accepted"):
        RewardConfig(rent_basis="output")


def test_contribution_counts_blended_seeds_and_skips_missing_ones() -> None:
    after = {
        "early": rep("early", SeedStage.BLENDING, 2.0),
        "mid": rep("mid", SeedStage.HOLDING, None),  # not measured: absent, not 0
        "late": rep("late", SeedStage.TRAINING, 5.0),  # a probe, not in the output
    }
    got = component(reward()(step(after=after)), "contribution")
    assert got == pytest.approx(0.1 * 2.0)
    after["mid"] = rep("mid", SeedStage.HOLDING, -1.0)
    assert component(reward()(step(after=after)), "contribution") == pytest.approx(0.1)
    after["mid"] = rep("mid", SeedStage.HOLDING, math.nan)
    assert component(reward()(step(after=after)), "contribution") == pytest.approx(0.2)


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    ("config", "names"),
    [
        (RewardConfig(), SHAPED_COMPONENTS),
        (RewardConfig(mode="simplified"), SIMPLIFIED_COMPONENTS),
        (RewardConfig(mode="sparse"), SPARSE_COMPONENTS),
        (RewardConfig(family="loss"), LOSS_COMPONENTS),
    ],
)
def test_total_is_the_sum_of_fixed_components(config: RewardConfig, names: tuple[str, ...]) -> None:
    fn = reward(config)
    busy = step(
        action=GERMINATE,
        accepted=False,
        before=reports(mid=SeedStage.TRAINING),
        after={**reports(mid=SeedStage.BLENDING), "late": rep("late", SeedStage.HOLDING, 1.5)},
        val_accuracy_after=70.0,
        val_loss_after=0.8,
        active_params=1300,
        truncated=True,
        epoch=10,
    )
    for inp in (step(), busy):
        out = fn(inp)
        assert tuple(name for name, _ in out.components) == names
        assert out.total == sum(value for _, value in out.components)
    assert fn(busy).total != 0.0


def test_breakdown_rejects_a_wrong_total_and_non_finite_terms() -> None:
    with pytest.raises(ValueError, match="sum"):
        RewardBreakdown(1.0, (("a", 0.5),))
    with pytest.raises(ValueError, match="finite"):
        RewardBreakdown.of((("a", math.nan),))


def test_sparse_is_zero_until_the_final_step() -> None:
    fn = reward(RewardConfig(mode="sparse"))
    busy = step(
        action=GERMINATE,
        before=reports(),
        after=holding_mid(3.0),
        val_accuracy_after=80.0,
        active_params=1500,
    )
    assert fn(busy).total == 0.0
    final = fn(step(val_accuracy_after=80.0, truncated=True, epoch=10))
    assert final.total == pytest.approx(0.8)


def test_simplified_action_costs() -> None:
    fn = reward(RewardConfig(mode="simplified"))
    assert component(fn(step()), "action_cost") == 0.0
    assert component(fn(step(action=GERMINATE)), "action_cost") == -0.01
    assert component(fn(step(action=GERMINATE, accepted=False)), "action_cost") == -0.05


def test_loss_family_rewards_a_falling_loss() -> None:
    fn = reward(RewardConfig(family="loss"))
    out = fn(step(val_loss_before=1.0, val_loss_after=0.9, active_params=1100))
    assert component(out, "loss_delta") == pytest.approx(10.0 * 0.1)
    assert component(out, "rent") == pytest.approx(-0.1)


# ---------------------------------------------------------------------------- panic / NaN


@pytest.mark.parametrize(
    "config",
    [
        RewardConfig(),
        RewardConfig(mode="simplified"),
        RewardConfig(mode="sparse"),
        RewardConfig(family="loss"),
    ],
)
def test_nan_metrics_on_a_panic_step_give_a_finite_reward_with_the_penalty(
    config: RewardConfig,
) -> None:
    after = {s: rep(s, SeedStage.HOLDING, math.nan) for s in SLOTS}
    panic = step(
        action=GERMINATE,
        before=reports(),
        after=after,
        val_accuracy_after=math.nan,
        val_loss_after=math.inf,
        terminated=True,
        truncated=True,
        epoch=10,
    )
    out = reward(config)(panic)
    assert math.isfinite(out.total)
    assert component(out, "panic") == -1.0
    # The penalty is the verdict; only the simplified action cost (an accepted op) adds to it.
    assert out.total == pytest.approx(-1.0 - (0.01 if config.mode == "simplified" else 0.0))


def test_non_finite_metrics_without_a_panic_leave_their_term_at_zero() -> None:
    sparse = reward(RewardConfig(mode="sparse"))
    assert sparse(step(val_accuracy_after=math.nan, truncated=True, epoch=10)).total == 0.0
    loss = reward(RewardConfig(family="loss"))
    assert loss(step(val_loss_after=math.nan)).total == 0.0


# ---------------------------------------------------------------------- every field matters


_RICH = step(
    action=GERMINATE,
    accepted=True,
    before=reports(),
    after=holding_mid(2.0),
    val_accuracy_after=70.0,
    val_loss_after=0.8,
    active_params=1200,
    truncated=True,
    epoch=10,
)


@pytest.mark.parametrize(
    ("base", "field", "value", "inp"),
    [
        (RewardConfig(), "family", "loss", _RICH),
        (RewardConfig(), "mode", "sparse", _RICH),
        (RewardConfig(), "contribution_weight", 0.5, _RICH),
        (RewardConfig(), "pbrs_weight", 0.5, _RICH),
        (RewardConfig(), "rent_weight", 0.5, _RICH),
        (RewardConfig(mode="simplified"), "action_cost", 0.5, _RICH),
        (
            RewardConfig(mode="simplified"),
            "refused_cost",
            0.5,
            dataclasses.replace(_RICH, accepted=False),
        ),
        (RewardConfig(mode="sparse"), "terminal_weight", 0.5, _RICH),
        (RewardConfig(), "panic_penalty", 0.5, dataclasses.replace(_RICH, terminated=True)),
        (RewardConfig(family="loss"), "loss_weight", 0.5, _RICH),
    ],
)
def test_every_config_field_changes_the_reward(
    base: RewardConfig, field: str, value: Any, inp: RewardInput
) -> None:
    changed = dataclasses.replace(base, **{field: value})
    assert reward(base)(inp).total != reward(changed)(inp).total


def test_the_field_table_covers_every_config_field() -> None:
    tested = {"family", "mode", "contribution_weight", "pbrs_weight", "rent_weight", "rent_basis"}
    tested |= {"action_cost", "refused_cost", "terminal_weight", "panic_penalty", "loss_weight"}
    assert tested == {f.name for f in dataclasses.fields(RewardConfig)}


# ------------------------------------------------------------------------------ validation


def test_config_validation_names_the_accepted_values() -> None:
    assert REWARD_FAMILIES == ("contribution", "loss")
    assert CONTRIBUTION_MODES == ("shaped", "simplified", "sparse")
    with pytest.raises(ValueError, match=r"'accuracy'.*\['contribution', 'loss'\]"):
        RewardConfig(family="accuracy")
    with pytest.raises(ValueError, match=r"'dense'.*\['shaped', 'simplified', 'sparse'\]"):
        RewardConfig(mode="dense")
    with pytest.raises(ValueError, match="contribution family only"):
        RewardConfig(family="loss", mode="sparse")
    with pytest.raises(ValueError, match="rent_weight"):
        RewardConfig(rent_weight=-1.0)
    with pytest.raises(ValueError, match="panic_penalty"):
        RewardConfig(panic_penalty=math.inf)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"host_params": 0}, "host_params"),
        ({"active_params": 999}, "active_params"),
        ({"after": {"early": rep("early")}}, "same slots"),
        ({"epoch": 11}, "epoch"),
        ({"truncated": True, "epoch": 9}, "truncated"),
    ],
)
def test_input_validation(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        step(**overrides)


def test_a_setting_the_chosen_reward_does_not_read_is_refused() -> None:
    """``--reward.loss-weight 99`` on the contribution family, or ``--reward.rent-weight 5``
    with the sparse mode, were accepted and did nothing (a walk-through). Which reward reads
    which setting, as RewardConfig's docstring says it."""
    read_by = {
        "contribution_weight": {"shaped"},
        "pbrs_weight": {"shaped", "simplified"},
        "rent_weight": {"shaped", "loss"},
        "rent_basis": {"shaped", "loss"},
        "action_cost": {"simplified"},
        "refused_cost": {"simplified"},
        "terminal_weight": {"simplified", "sparse"},
        "panic_penalty": {"shaped", "simplified", "sparse", "loss"},
        "loss_weight": {"loss"},
    }
    rewards = {
        "shaped": {},
        "simplified": {"mode": "simplified"},
        "sparse": {"mode": "sparse"},
        "loss": {"family": "loss"},
    }
    for name, readers in read_by.items():
        changed = "blended" if name == "rent_basis" else 0.5
        for reward, base in rewards.items():
            if reward in readers:
                assert getattr(RewardConfig(**base, **{name: changed}), name) == changed
            else:
                with pytest.raises(ValueError, match=f"reward.{name} = .* does nothing in the"):
                    RewardConfig(**base, **{name: changed})
    default = RewardConfig(mode="sparse", rent_weight=1.0)  # its default: nothing changed
    assert default.rent_weight == 1.0


def test_a_flag_naming_a_weight_its_reward_does_not_read_is_refused_at_its_default() -> None:
    """``esper ppo --reward.mode sparse --reward.rent-weight 1`` ran, where 0.37 was refused:
    the value was its default, which the config cannot tell from not given (a walk-through;
    the README says such a weight is refused rather than ignored)."""
    from esper.cli.config import RunOptions
    from esper.cli.ppo import parse
    from esper.leyline.config import UserError

    sparse = ["--preset", "tiny", "--reward.mode", "sparse"]
    with pytest.raises(UserError) as info:
        parse([*sparse, "--reward.rent-weight", "1"], RunOptions())
    assert str(info.value) == (
        "reward.rent_weight = 1.0 does nothing in the contribution/sparse reward (it weighs the "
        "rent component, which only the contribution/shaped and loss rewards have); drop it"
    )
    assert parse(sparse, RunOptions()).reward.rent_weight == 1.0  # not named: its default
    assert parse(["--preset", "tiny", "--reward.rent-weight", "1"], RunOptions())  # read there
