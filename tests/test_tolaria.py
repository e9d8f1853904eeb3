"""Tolaria: governor rules, rollback, optimizer groups, the step loop and trainer resume."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from esper.data import BatchStream, make_synthetic
from esper.kasmina import (
    CNNHost,
    CNNHostConfig,
    MorphogeneticModel,
    capture_state,
    restore_state,
)
from esper.leyline import Action, Op, SeedStage
from esper.leyline.config import HostTraining
from esper.leyline.events import ActionTaken, EpochCompleted, GovernorPanic, SeedTransition
from esper.tolaria import Governor, GovernorConfig, Trainer
from esper.tolaria.engine import evaluate
from esper.tolaria.optim import SlotOptimizer, step_optimizers

CHANCE = math.log(10)


def _governor(**kw) -> Governor:
    return Governor(GovernorConfig(**kw), chance_loss=CHANCE)


# ------------------------------------------------------------------------------- governor rules


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_panics_at_once(bad: float) -> None:
    gov = _governor()
    assert gov.check(1.0, bad).rule == "non_finite"
    assert _governor().check(bad, 1.0).rule == "non_finite"


def test_collapse_to_chance_after_learning() -> None:
    gov = _governor()
    for loss in (2.2, 1.8, 1.5):  # 1.5 <= 0.7 * ln(10) = 1.61: "well below" chance
        assert gov.check(loss, loss) is None
    panic = gov.check(2.2, 2.25)  # >= 0.95 * ln(10) = 2.19
    assert panic is not None and panic.rule == "collapse"


def test_overfitting_is_not_collapse() -> None:
    """Validation loss drifting above chance while training loss stays low is overfitting."""
    gov = _governor()
    for loss in (2.0, 1.4, 1.2, 1.3, 1.5, 1.7, 1.9):
        assert gov.check(loss / 3, loss) is None
    assert gov.check(0.3, 2.25) is None  # validation above 0.95 × chance, training far below


def test_chance_level_without_having_learned_is_not_collapse() -> None:
    gov = _governor()
    for loss in (2.30, 2.28, 2.25, 2.29, 2.27):  # never well below chance
        assert gov.check(loss, loss) is None


def test_sustained_spike_panics() -> None:
    gov = _governor(spike_patience=2)
    for loss in (1.0, 0.98, 1.02, 0.99, 1.01):
        assert gov.check(loss, loss) is None
    assert gov.check(2.0, 2.0) is None and gov.suspicious  # one spike: watch, do not panic
    panic = gov.check(2.1, 2.1)
    assert panic is not None and panic.rule == "spike"


def test_single_spike_then_recovery_does_not_panic() -> None:
    gov = _governor(spike_patience=2)
    for loss in (1.0, 0.98, 1.02, 0.99, 1.01):
        gov.check(loss, loss)
    assert gov.check(2.0, 2.0) is None
    assert gov.check(1.0, 1.0) is None and not gov.suspicious
    assert 2.0 not in gov.history  # the spike did not inflate the statistics


def test_normal_noise_never_panics() -> None:
    rng = random.Random(0)
    gov = _governor()
    loss = 2.0
    for _ in range(300):
        loss = max(0.3, loss * 0.99)
        noisy = loss * (1 + rng.uniform(-0.05, 0.05))
        assert gov.check(noisy, noisy) is None


def test_spike_patience_setting_matters() -> None:
    for patience, expect_panic_at in ((1, 0), (3, 2)):
        gov = _governor(spike_patience=patience)
        for loss in (0.5, 0.49, 0.51, 0.5, 0.52):
            gov.check(loss, loss)
        results = [gov.check(1.5, 1.5) for _ in range(3)]  # a spike, still below chance
        assert [r is not None for r in results].index(True) == expect_panic_at


def test_governor_config_validated() -> None:
    with pytest.raises(ValueError, match="min_history"):
        GovernorConfig(window=2, min_history=3)
    with pytest.raises(ValueError, match="well_below_fraction < collapse_fraction"):
        GovernorConfig(well_below_fraction=0.99)
    # each was accepted: NaN never fired, sigma -1 and factor 0 fired on a healthy plateau,
    # a negative or infinite fraction, or a string compared with losses
    for name, value in [
        ("spike_sigma", math.nan),
        ("spike_sigma", -1.0),
        ("spike_sigma", "3"),
        ("spike_factor", 0.0),
        ("collapse_fraction", -0.5),
        ("collapse_fraction", math.inf),
        ("well_below_fraction", True),
    ]:
        with pytest.raises(ValueError, match=f"governor.{name} must be a number in"):
            GovernorConfig(**{name: value})
    for chance in (math.nan, 0.0, -1.0, "2.3", None):  # the collapse rule was off, or a TypeError
        with pytest.raises(ValueError, match=r"chance_loss \(.*\) must be a finite number > 0"):
            Governor(GovernorConfig(), chance)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- trainer helpers


def _trainer(seed: int = 0, epochs: int = 6, events: list | None = None, **training) -> Trainer:
    torch.manual_seed(seed)
    data = make_synthetic(n_train=256, n_val=128, seed=seed)
    host = CNNHost(CNNHostConfig(num_classes=data.num_classes, base_channels=4, input_size=8))
    model = MorphogeneticModel(host, ["early", "mid", "late"])
    stream = BatchStream(data.x_train, data.y_train, 32, seed)
    sink = events if events is not None else []
    rates = {"lr": 3e-3, "seed_lr": 3e-3} | training
    config = HostTraining("synthetic", epochs=epochs, batch_size=32, **rates)
    return Trainer(model, data, stream, config, sink.append)


def _opt_state(trainer: Trainer) -> dict:
    return copy.deepcopy(trainer.optimizer.state_dict())


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        elif isinstance(va, dict):
            _assert_same_state(va, vb)
        elif isinstance(va, list):
            assert len(va) == len(vb)
            for x, y in zip(va, vb, strict=True):
                _assert_same_state(x, y) if isinstance(x, dict) else None
                if not isinstance(x, dict):
                    assert x == y
        else:
            assert va == vb, key


# ------------------------------------------------------------------------------- rollback


def test_injected_nan_restores_weights_and_optimizer_bit_exactly() -> None:
    events: list = []
    trainer = _trainer(events=events)
    model = trainer.model
    trainer.train_step()
    trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
    trainer.apply(Action(Op.ADVANCE, slot="mid"))  # -> TRAINING (G1 is structural)
    trainer.train_step()  # healthy: the governor snapshots after this step
    weights = {k: v.clone() for k, v in model.host.state_dict().items()}
    optimizer = _opt_state(trainer)
    host_groups = [g for g in optimizer["param_groups"] if g["name"] == "host"]
    assert host_groups and len(optimizer["param_groups"]) == 2  # host + the mid seed

    with torch.no_grad():
        next(model.host.parameters()).fill_(float("nan"))  # poison the host
    result = trainer.train_step()

    assert result.panic is not None and result.panic.rule == "non_finite"
    for k, v in model.host.state_dict().items():
        assert torch.equal(v, weights[k]), k
    # Live seeds are pruned on rollback (and the epoch then ends: PRUNED -> EMBARGOED).
    assert model.reports()["mid"].stage is SeedStage.EMBARGOED
    restored = _opt_state(trainer)
    # The seed's group is gone; the host group's state is exactly the snapshot's.
    assert [g["name"] for g in restored["param_groups"]] == ["host"]
    n_host = len(host_groups[0]["params"])
    for i in range(n_host):
        for name, value in optimizer["state"][i].items():
            assert torch.equal(restored["state"][i][name], value), (i, name)
    panics = [e for e in events if isinstance(e, GovernorPanic)]
    assert len(panics) == 1 and panics[0].restored_epoch == 2 and panics[0].pruned_slots == ("mid",)


def test_rollback_restores_fossilized_seed() -> None:
    trainer = _trainer()
    model = trainer.model
    model.gate_mode = model.gate_mode.PERMISSIVE
    for op in (Op.GERMINATE, Op.ADVANCE):
        trainer.apply(Action(op, slot="early", blueprint="norm" if op is Op.GERMINATE else None))
    trainer.apply(Action(Op.SET_ALPHA_TARGET, slot="early", alpha_target=1.0, tempo=1))
    trainer.apply(Action(Op.ADVANCE, slot="early"))
    trainer.train_step()  # α reaches 1
    for op in (Op.ADVANCE, Op.FOSSILIZE):
        assert trainer.apply(Action(op, slot="early"))
    trainer.train_step()  # snapshot with the fossilized seed
    seed_weights = [p.clone() for p in model.seed_parameters("early")]
    with torch.no_grad():
        for p in model.seed_parameters("early"):
            p.fill_(float("inf"))
    assert trainer.train_step().panic is not None
    assert model.reports()["early"].stage is SeedStage.FOSSILIZED
    for p, w in zip(model.seed_parameters("early"), seed_weights, strict=True):
        assert torch.equal(p, w)
    assert trainer.optimizer.group_names() == ["host", "early"]


# ------------------------------------------------------------------------------- optimizer groups


def test_seed_parameters_join_and_leave_the_optimizer() -> None:
    trainer = _trainer()
    opt, model = trainer.optimizer, trainer.model
    assert opt.group_names() == ["host"]
    trainer.apply(Action(Op.GERMINATE, slot="late", blueprint="norm"))
    trainer.apply(Action(Op.GERMINATE, slot="early", blueprint="conv_light"))
    assert opt.group_names() == ["host", "early", "late"]  # canonical order, not arrival order
    trainer.apply(Action(Op.ADVANCE, slot="early"))
    trainer.train_step()  # the early seed now has AdamW state
    early = model.seed_parameters("early")
    assert all(p in opt.state for p in early)
    trainer.apply(Action(Op.PRUNE, slot="early"))
    assert opt.group_names() == ["host", "late"]
    assert not any(p in opt.state for p in early)


def test_the_optimizer_is_torchs_fused_adamw_bit_for_bit() -> None:
    """``SlotOptimizer`` runs torch's fused AdamW kernel without ``torch.optim`` (whose first
    use imports ``torch._dynamo``, 1.1 s of a launch): parameters, moments and ``state_dict``
    stay bit for bit ``torch.optim.AdamW(fused=True)``'s over steps of a host and two seeds at
    their own rate, and each loads the other's state (checkpoints written before load)."""
    trainer = _trainer(seed_lr=1e-2, weight_decay=0.01)
    trainer.apply(Action(Op.GERMINATE, slot="late", blueprint="norm"))
    trainer.apply(Action(Op.GERMINATE, slot="early", blueprint="conv_light"))
    trainer.apply(Action(Op.ADVANCE, slot="early"))
    trainer.apply(Action(Op.ADVANCE, slot="late"))
    ours, model = trainer.optimizer, trainer.model
    twin = copy.deepcopy(model)
    twins = dict(zip(map(id, model.parameters()), twin.parameters(), strict=True))
    groups = [
        {"params": [twins[id(p)] for p in g["params"]], "lr": g["lr"], "name": g["name"]}
        for g in ours.param_groups
    ]
    assert [g["lr"] for g in groups] == [3e-3, 1e-2, 1e-2]
    reference = torch.optim.AdamW(groups, weight_decay=0.01, fused=True)
    x, y = trainer.data.x_train[:32], trainer.data.y_train[:32]

    def steps(n: int) -> None:
        for _ in range(n):
            for m, optimizer in ((model, ours), (twin, reference)):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(m(x), y).backward()
                optimizer.step()
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q)
        mine, theirs = ours.state_dict(), reference.state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        assert mine["state"].keys() == theirs["state"].keys() and len(mine["state"]) > 10
        for i, moments in mine["state"].items():
            for key, value in moments.items():
                other = theirs["state"][i][key]
                assert value.dtype == other.dtype and torch.equal(value, other), (i, key)

    steps(3)
    reference.load_state_dict(copy.deepcopy(ours.state_dict()))
    steps(2)
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))
    steps(2)
    saved = copy.deepcopy(reference.state_dict())
    saved["state"][0] = {}  # a defaultdict's look-up: no state, made afresh at the next step
    ours.load_state_dict(copy.deepcopy(saved))
    reference.load_state_dict(saved)
    steps(1)
    # A run saved before Esper fused AdamW (fused: null, per-tensor kernel, same rule) goes
    # on, fused; a state of another rule (AMSGrad) is refused.
    older = copy.deepcopy(reference.state_dict())
    for group in older["param_groups"]:
        group["fused"] = None
        del group["decoupled_weight_decay"]  # an older torch wrote none
    ours.load_state_dict(older)
    assert all(g["fused"] is True for g in ours.param_groups)
    steps(1)
    older["param_groups"][0]["amsgrad"] = True
    with pytest.raises(ValueError, match="optimizer group 'host' is not this AdamW's"):
        ours.load_state_dict(older)


def test_optimizers_stepped_together_are_torchs_adamw_each() -> None:
    """What ``step_optimizers`` does across environments, against torch's fused AdamW per
    model: two optimizers at other rates in one call, a parameter whose gradient is missing every
    other step, and a seed group joining after the first steps (bit for bit, a review)."""
    pairs = []
    for seed, lr in ((0, 3e-3), (1, 1e-2)):
        trainer = _trainer(seed=seed, lr=lr, seed_lr=lr, weight_decay=0.01)
        twin = copy.deepcopy(trainer.model)
        reference = torch.optim.AdamW(twin.host_parameters(), lr, weight_decay=0.01, fused=True)
        pairs.append((trainer, twin, reference))
    x, y = pairs[0][0].data.x_train[:32], pairs[0][0].data.y_train[:32]
    for step in range(6):
        if step == 2:  # a seed joins the first model's optimizer (``sync``), and its twin's
            trainer, twin, reference = pairs[0]
            trainer.apply(Action(Op.GERMINATE, slot="late", blueprint="conv_light"))
            trainer.apply(Action(Op.ADVANCE, slot="late"))
            twin.load_state_dict(trainer.model.state_dict(), strict=False)
            twin.germinate("late", "conv_light")
            twin.advance("late")
            twin.load_state_dict(trainer.model.state_dict())
            reference.add_param_group({"params": twin.seed_parameters("late")})
        for trainer, twin, reference in pairs:
            for m in (trainer.model, twin):
                m.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(m(x), y).backward()
                if step % 2:
                    next(m.host.parameters()).grad = None  # sat this step out
            reference.step()
        step_optimizers([trainer.optimizer for trainer, _, _ in pairs])
        for trainer, twin, _ in pairs:
            for p, q in zip(trainer.model.parameters(), twin.parameters(), strict=True):
                assert torch.equal(p, q), step


def test_optimizers_stepped_together_step_as_each_alone() -> None:
    """``step_optimizers`` (one fused AdamW call per hyperparameter set, across environments)
    leaves every parameter and moment bit for bit where each optimizer's own ``step`` does:
    with other learning rates, a seed group at its own rate, a parameter without a gradient,
    and optimizers whose parameters have no state yet (a first step, a seed germinated late)."""

    def build() -> list[Trainer]:
        trainers = [_trainer(0), _trainer(1), _trainer(2, lr=1e-3, seed_lr=5e-4)]
        for t in trainers[::2]:
            t.apply(Action(Op.GERMINATE, slot="early", blueprint="conv_light"))
            t.apply(Action(Op.ADVANCE, slot="early"))
        return trainers

    alone, together = build(), build()
    x = alone[0].data.x_train[:16]
    for step in range(4):
        for trainers in (alone, together):
            if step == 2:  # a seed with no AdamW state yet among optimizers with state
                torch.manual_seed(5)  # the same initial weights in both sets
                trainers[1].apply(Action(Op.GERMINATE, slot="late", blueprint="norm"))
                trainers[1].apply(Action(Op.ADVANCE, slot="late"))
            for t in trainers:
                t.optimizer.zero_grad()
                t.model(x).square().mean().backward()
            trainers[0].model.host.head.bias.grad = None  # not stepped this time
        for t in alone:
            t.optimizer.step()
        step_optimizers([t.optimizer for t in together])
    for a, b in zip(alone, together, strict=True):
        assert all(
            torch.equal(p, q)
            for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True)
        )
        _assert_same_state(_opt_state(a), _opt_state(b))
    assert alone[1].optimizer.group_names() == ["host", "late"]


def test_pruning_one_of_two_identical_seeds() -> None:
    """Groups of equal size must be told apart by identity (value comparison hits tensors)."""
    trainer = _trainer()
    for slot in ("early", "late"):
        trainer.apply(Action(Op.GERMINATE, slot=slot, blueprint="conv_light"))
        trainer.apply(Action(Op.ADVANCE, slot=slot))
    trainer.train_step()
    late = trainer.model.seed_parameters("late")
    assert trainer.apply(Action(Op.PRUNE, slot="early"))
    assert trainer.optimizer.group_names() == ["host", "late"]
    assert all(p in trainer.optimizer.state for p in late)  # untouched


def test_fossilized_seed_trains_at_host_rate() -> None:
    trainer = _trainer(lr=1e-3, seed_lr=5e-3)
    model = trainer.model
    model.gate_mode = model.gate_mode.PERMISSIVE
    trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="norm"))
    rates = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates == {"host": 1e-3, "mid": 5e-3}
    trainer.apply(Action(Op.ADVANCE, slot="mid"))
    trainer.apply(Action(Op.SET_ALPHA_TARGET, slot="mid", alpha_target=0.5, tempo=1))
    trainer.apply(Action(Op.ADVANCE, slot="mid"))
    trainer.train_step()
    trainer.apply(Action(Op.ADVANCE, slot="mid"))
    trainer.apply(Action(Op.FOSSILIZE, slot="mid"))
    rates = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates == {"host": 1e-3, "mid": 1e-3}


def test_optimizer_state_for_other_seeds_is_refused() -> None:
    trainer = _trainer()
    state = trainer.optimizer.state_dict()
    trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="norm"))
    with pytest.raises(ValueError, match=r"groups \['host'\], the model has \['host', 'mid'\]"):
        trainer.optimizer.load_state_dict(state)


# ------------------------------------------------------------------------------- the step loop


def test_step_measures_and_reports() -> None:
    events: list = []
    trainer = _trainer(events=events)
    trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
    trainer.apply(Action(Op.ADVANCE, slot="mid"))
    result = trainer.train_step()
    assert result.epoch == 1 and 0 <= result.val_accuracy <= 100 and result.panic is None
    report = trainer.model.reports()["mid"]
    assert report.counterfactual_contribution is not None  # the probe was measured
    assert report.seed_gradient_norm_ratio is not None
    epoch_events = [e for e in events if isinstance(e, EpochCompleted)]
    assert epoch_events[-1].epoch == 1
    assert [s.slot for s in epoch_events[-1].slots] == ["early", "mid", "late"]
    assert any(isinstance(e, SeedTransition) and e.to_stage == "TRAINING" for e in events)


def test_refused_action_is_recorded_not_raised() -> None:
    events: list = []
    trainer = _trainer(events=events)
    assert not trainer.apply(Action(Op.FOSSILIZE, slot="mid"))
    assert not trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="lora"))
    refused = [e for e in events if isinstance(e, ActionTaken)]
    assert [e.accepted for e in refused] == [False, False]
    assert "DORMANT -> FOSSILIZED" in refused[0].error and "lora" in refused[1].error


def test_batches_per_epoch_and_val_samples_change_the_work() -> None:
    full = _trainer(epochs=1)
    short = _trainer(epochs=1, batches_per_epoch=2, val_samples=10)
    a, b = full.train_step(), short.train_step()
    assert full.stream.state_dict()["cursor"] != short.stream.state_dict()["cursor"]
    assert a.val_accuracy != b.val_accuracy or a.val_loss != b.val_loss


def test_episode_ends() -> None:
    trainer = _trainer(epochs=1)
    trainer.train_step()
    assert trainer.done
    with pytest.raises(RuntimeError, match="episode is over"):
        trainer.train_step()


def test_trainer_resume_continues_exactly() -> None:
    def run(trainer: Trainer, steps: int) -> None:
        for i in range(steps):
            trainer.train_step()
            if i == 0:
                trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
                trainer.apply(Action(Op.ADVANCE, slot="mid"))

    straight = _trainer(seed=3)
    run(straight, 4)

    first = _trainer(seed=3)
    run(first, 2)
    model_state, trainer_state = capture_state(first.model), copy.deepcopy(first.state_dict())
    torch.manual_seed(999)  # whatever happens in between must not matter

    resumed = _trainer(seed=3)
    restore_state(resumed.model, model_state)
    resumed.load_state_dict(trainer_state)
    for _ in range(2):
        resumed.train_step()
    for (k, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_a_trainer_state_is_a_copy_taken_and_given() -> None:
    """``state_dict`` held the optimizer's live moment tensors (the next step changed the
    "saved" state), and two trainers loaded from one state shared them."""
    source = _trainer(seed=4)
    source.train_step()
    state = source.state_dict()
    saved = copy.deepcopy(state["optimizer"]["state"])
    twin = _trainer(seed=4)
    twin.load_state_dict(state)
    source.train_step()
    for key, moments in saved.items():
        for name, value in moments.items():
            assert torch.equal(state["optimizer"]["state"][key][name], value), (key, name)
            assert torch.equal(_opt_state(twin)["state"][key][name], value), (key, name)


def test_validation_from_the_counterfactual_pass_matches_a_plain_forward() -> None:
    trainer = _trainer()
    for slot in ("early", "late"):
        trainer.apply(Action(Op.GERMINATE, slot=slot, blueprint="conv_light"))
        trainer.apply(Action(Op.ADVANCE, slot=slot))  # TRAINING: output unaffected by the tick
    result = trainer.train_step()
    model, data = trainer.model, trainer.data
    model.eval()
    with torch.no_grad():
        out = model(data.x_val)
        loss = torch.nn.functional.cross_entropy(out, data.y_val).item()
        accuracy = 100.0 * (out.argmax(dim=1) == data.y_val).float().mean().item()
    assert result.val_loss == pytest.approx(loss, rel=1e-5)
    assert result.val_accuracy == pytest.approx(accuracy, abs=1e-9)
    assert all(
        r.counterfactual_contribution is not None for r in list(model.reports().values())[::2]
    )


def test_nan_in_the_first_epoch_restores_the_initial_model() -> None:
    trainer = _trainer()
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        next(trainer.model.host.parameters()).fill_(float("nan"))
    result = trainer.train_step()
    assert result.panic is not None and result.panic.rule == "non_finite"
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, initial[k]), k
    assert math.isnan(result.val_accuracy)  # a NaN model's accuracy is not a measurement


def test_panic_ends_the_episode() -> None:
    trainer = _trainer(epochs=6)
    trainer.train_step()
    with torch.no_grad():
        next(trainer.model.host.parameters()).fill_(float("inf"))
    assert trainer.train_step().panic is not None
    assert trainer.done and trainer.terminated
    with pytest.raises(RuntimeError, match="episode is over"):
        trainer.train_step()


def test_seed_grown_after_the_snapshot_is_recorded_when_it_vanishes() -> None:
    events: list = []
    trainer = _trainer(events=events)
    trainer.train_step()  # snapshot at the end of epoch 1: no seeds
    trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
    trainer.apply(Action(Op.ADVANCE, slot="mid"))
    with torch.no_grad():
        next(trainer.model.host.parameters()).fill_(float("nan"))
    trainer.train_step()
    assert trainer.model.reports()["mid"].stage is SeedStage.DORMANT  # as in the snapshot
    assert trainer.pruned_count == 1
    panic = next(e for e in events if isinstance(e, GovernorPanic))
    assert panic.pruned_slots == ("mid",) and panic.restored_epoch == 1
    gone = [e for e in events if isinstance(e, SeedTransition) and "rollback" in e.reason]
    assert [(e.slot, e.from_stage, e.to_stage) for e in gone] == [("mid", "TRAINING", "DORMANT")]
    assert trainer.optimizer.group_names() == ["host"]


def test_a_prune_the_rollback_undoes_is_logged_back_and_counted_once() -> None:
    """A seed live in the snapshot and pruned after it: the restore brings it back and the
    governor prunes it again. It was counted as two prunes, logged TRAINING -> PRUNED twice
    with no way back between, and the governor's prune sat at the epoch before the panic."""
    events: list = []
    trainer = _trainer(events=events)
    trainer.train_step()
    trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
    trainer.apply(Action(Op.ADVANCE, slot="mid"))  # -> TRAINING
    trainer.train_step()  # snapshot at the end of epoch 2: mid TRAINING
    assert trainer.apply(Action(Op.PRUNE, slot="mid"))
    assert trainer.pruned_count == 1
    with torch.no_grad():
        next(trainer.model.host.parameters()).fill_(float("nan"))
    assert trainer.train_step().panic is not None
    assert trainer.pruned_count == 1  # one seed, pruned (twice over, the first undone)
    moves = [
        (e.epoch, e.from_stage, e.to_stage)
        for e in events
        if isinstance(e, SeedTransition) and e.slot == "mid"
    ]
    assert moves[-4:] == [
        (2, "TRAINING", "PRUNED"),  # the controller's, after epoch 2
        (3, "PRUNED", "TRAINING"),  # the restore, at the panic's epoch
        (3, "TRAINING", "PRUNED"),  # the governor's
        (3, "PRUNED", "EMBARGOED"),  # the epoch's end
    ]
    panic = next(e for e in events if isinstance(e, GovernorPanic))
    assert panic.epoch == 3 and panic.pruned_slots == ("mid",)


def test_a_prune_undone_a_spike_later_is_counted_once_and_logged_back(monkeypatch) -> None:
    """The governor skips the snapshot of a suspicious epoch, so a panic can restore a seed
    pruned two epochs before, by then EMBARGOED: it was counted twice, and a retired slot set
    back in its embargo was not logged at all."""
    events: list = []
    trainer = _trainer(events=events, epochs=8)
    trainer.train_step()
    trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
    trainer.apply(Action(Op.ADVANCE, slot="mid"))
    trainer.train_step()  # snapshot at the end of epoch 2: mid TRAINING
    assert trainer.apply(Action(Op.PRUNE, slot="mid"))
    governor = trainer.governor
    monkeypatch.setattr(governor, "spikes", 1, raising=False)  # a first spike: no snapshot
    monkeypatch.setattr(governor, "check", lambda *_: None)
    trainer.train_step()  # epoch 3: mid PRUNED -> EMBARGOED, not snapshotted
    assert trainer.model.reports()["mid"].stage is SeedStage.EMBARGOED
    monkeypatch.undo()
    with torch.no_grad():
        next(trainer.model.host.parameters()).fill_(float("nan"))
    assert trainer.train_step().panic is not None  # epoch 4
    assert trainer.pruned_count == 1
    moves = [
        (e.epoch, e.from_stage, e.to_stage)
        for e in events
        if isinstance(e, SeedTransition) and e.slot == "mid"
    ]
    assert moves[-3:-1] == [(4, "EMBARGOED", "TRAINING"), (4, "TRAINING", "PRUNED")]


def test_a_retired_slot_set_back_by_the_rollback_is_logged(monkeypatch) -> None:
    """A slot EMBARGOED in the snapshot and RESETTING since went back to EMBARGOED unlogged:
    the log then showed EMBARGOED -> RESETTING twice."""
    events: list = []
    trainer = _trainer(events=events, epochs=20)
    trainer.train_step()
    trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
    trainer.apply(Action(Op.PRUNE, slot="mid"))
    trainer.train_step()  # snapshot with mid EMBARGOED
    assert trainer.model.reports()["mid"].stage is SeedStage.EMBARGOED
    monkeypatch.setattr(trainer.governor, "snapshot", lambda *_: None)  # suspicious epochs
    while trainer.model.reports()["mid"].stage is SeedStage.EMBARGOED:
        trainer.train_step()
    assert trainer.model.reports()["mid"].stage is SeedStage.RESETTING
    monkeypatch.undo()
    with torch.no_grad():
        next(trainer.model.host.parameters()).fill_(float("nan"))
    assert trainer.train_step().panic is not None
    moves = [(e.from_stage, e.to_stage) for e in events if isinstance(e, SeedTransition)]
    assert ("RESETTING", "EMBARGOED") in moves
    assert trainer.pruned_count == 1


def test_a_snapshot_outlives_the_steps_after_it_and_every_rollback_to_it() -> None:
    """The optimizer steps in place: a snapshot (or a rollback's restored state) that shared a
    tensor with the optimizer would change with every step after it."""
    trainer = _trainer()
    trainer.train_step()
    model, optimizer = trainer.model, trainer.optimizer
    governor = Governor(GovernorConfig(), chance_loss=math.log(4))
    governor.snapshot(model, optimizer)
    at_snapshot = _opt_state(trainer)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = trainer.data.x_train[:32], trainer.data.y_train[:32]
    for _ in range(2):  # a rollback, then steps from the restored state, then another
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            step_optimizers([optimizer])
        assert not torch.equal(next(model.host.parameters()), weights[next(iter(weights))])
        governor.rollback(model, optimizer)
        _assert_same_state(_opt_state(trainer), at_snapshot)
        for k, v in model.state_dict().items():
            assert torch.equal(v, weights[k]), k


def test_evaluate_refuses_labels_cross_entropy_would_skip() -> None:
    """-100 (cross-entropy's ignore_index) was skipped by the loss but counted in the mean: half
    the labels at -100 halved the loss."""
    trainer = _trainer()
    data = trainer.data
    loss, _ = evaluate(trainer.model, data.x_val, data.y_val)
    with torch.no_grad():  # evaluate left the model in eval mode
        oracle = torch.nn.functional.cross_entropy(trainer.model(data.x_val), data.y_val)
    assert loss == pytest.approx(float(oracle), rel=1e-5)
    y = data.y_val.clone()
    y[::2] = -100
    with pytest.raises(ValueError, match="labels must be class indices >= 0, got -100"):
        evaluate(trainer.model, data.x_val, y)


def test_the_optimizer_refuses_rates_a_run_could_not_be_given() -> None:
    """A NaN seed rate made the seeds NaN while the run went on; -1 was gradient ascent."""
    model = _trainer().model
    for host_lr, seed_lr, decay in [(1e-3, math.nan, 0.0), (1e-3, -1.0, 0.0), (True, 1e-3, 0.0)]:
        with pytest.raises(ValueError, match=r"_lr must be a number in \(0.0, 10.0\]"):
            SlotOptimizer(model, host_lr, seed_lr, decay)
    with pytest.raises(ValueError, match=r"weight_decay must be a number in \[0.0, 10.0\]"):
        SlotOptimizer(model, 1e-3, 1e-3, -0.1)
