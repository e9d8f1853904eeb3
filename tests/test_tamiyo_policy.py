"""MaskedCategorical, RunningMeanStd, PolicyNetwork and PolicyController against oracles."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import fields

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.hooks import RemovableHandle

from conftest import seed_report
from esper.kasmina import blueprint_registry
from esper.leyline import Observation, Op, SeedStage, SeedStateReport, Topology, TrainingSignals
from esper.simic.acting import pack_inputs, to_device, unpack_inputs
from esper.tamiyo import (
    HEADS,
    MASK_VALUE,
    RELEVANT_HEADS,
    ActionMasks,
    ActionSpace,
    ActStep,
    Controller,
    MaskedCategorical,
    PolicyConfig,
    PolicyController,
    PolicyNetwork,
    RunningMeanStd,
    encode_observation,
    observation_size,
    reset_state,
)

SLOTS = ("early", "mid", "late")
CNN_BLUEPRINTS = blueprint_registry.names(Topology.CNN)
SPACE = ActionSpace(Topology.CNN)
OPS = tuple(Op)
SMALL = PolicyConfig(hidden=16, lstm_hidden=8)


# ------------------------------------------------------------------------------ builders


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: on a busy machine intra-op threads cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rep(slot: str, stage: SeedStage, epochs: int = 0) -> SeedStateReport:
    """A report with every measurement present once a seed is live."""
    live = stage is not SeedStage.DORMANT
    return seed_report(
        slot,
        stage,
        alpha=0.5 if stage in (SeedStage.BLENDING, SeedStage.HOLDING) else 0.0,
        epochs=epochs,
        contribution=1.0 if live else None,
        ratio=1.0 if live else None,
        healthy=True if live else None,
        seed_params=100 if live else 0,
    )


def random_obs(rng: random.Random, epoch: int = 5) -> Observation:
    """Random stages in a random non-empty set of enabled slots, random offered blueprints."""
    enabled = [s for s in SLOTS if rng.random() < 0.75] or ["mid"]
    reports = {s: rep(s, rng.choice(list(SeedStage)), rng.randrange(5)) for s in enabled}
    offered = tuple(b for b in CNN_BLUEPRINTS if rng.random() < 0.6)
    acc = rng.uniform(30.0, 90.0)
    signals = TrainingSignals(
        epoch=epoch,
        train_loss=rng.uniform(0.2, 2.0),
        train_accuracy=acc,
        val_loss=rng.uniform(0.2, 2.0),
        val_accuracy=acc,
        loss_delta=rng.uniform(-0.2, 0.1),
        accuracy_delta=rng.uniform(-1.0, 2.0),
        best_val_accuracy=acc + 1.0,
        plateau_epochs=rng.randrange(4),
        host_stabilized=rng.random() < 0.5,
        loss_history=(1.0, 0.9),
        accuracy_history=(acc - 1.0, acc),
        slots=(),
        best_slot=None,
        worst_slot=None,
    )
    return Observation(signals, reports, offered, 20)


def randomized_network(telemetry: bool = True, seed: int = 0) -> PolicyNetwork:
    """A policy with large random weights, so logits are far from uniform (harder cases)."""
    torch.manual_seed(seed)
    net = PolicyNetwork(observation_size(telemetry), SPACE.head_sizes, SMALL)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.7)
    return net


def batched_masks(observations: Sequence[Sequence[Observation]]) -> ActionMasks:
    """``(B, T)`` masks from a B-by-T grid of observations."""
    return ActionMasks.stack(
        [ActionMasks.stack([SPACE.masks(o) for o in row]) for row in observations]
    )


def at_step(masks: ActionMasks, t: int) -> ActionMasks:
    return ActionMasks(**{f.name: getattr(masks, f.name)[:, t] for f in fields(ActionMasks)})


def check_valid(actions: Tensor, masks: ActionMasks) -> None:
    """Every head the chosen op reads picked a choice its mask allows (rows of a (B,) batch)."""
    for b, row in enumerate(actions.tolist()):
        op = row[0]
        assert masks.op[b, op], f"row {b}: masked op {OPS[op]}"
        relevant = RELEVANT_HEADS[OPS[op]]
        if "slot" in relevant:
            assert masks.slot[b, op, row[1]], f"row {b}: masked slot for {OPS[op]}"
        if "blueprint" in relevant:
            assert masks.blueprint[b, row[2]], f"row {b}: blueprint not offered"


# ------------------------------------------------------------------------------ MaskedCategorical


def test_masked_logits_use_the_fp16_safe_value() -> None:
    assert MASK_VALUE == -1e4
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, 9.0]])
    mask = torch.tensor([[True, False, True], [False, False, True]])
    dist = MaskedCategorical(logits, mask)
    assert dist.logits[~mask].eq(-1e4).all() and torch.equal(dist.logits[mask], logits[mask])
    half = MaskedCategorical(logits.half(), mask)
    assert half.logits.dtype == torch.float16 and half.logits[~mask].eq(-1e4).all()


def test_all_false_rows_raise() -> None:
    mask = torch.tensor([[True, False], [False, False], [False, False]])
    with pytest.raises(ValueError, match="2 of 3 mask rows"):
        MaskedCategorical(torch.zeros(3, 2), mask)
    with pytest.raises(ValueError, match="bool"):
        MaskedCategorical(torch.zeros(3, 2), mask.float())


class HostToDevice(TorchDispatchMode):
    """Counts copies from the CPU to another device (each a wait for a GPU unless pinned and
    non-blocking)."""

    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default:
            self.copies += args[0].device.type == "cpu" and out.device.type != "cpu"
        elif func is torch.ops.aten.copy_.default:
            self.copies += args[1].device.type == "cpu" and args[0].device.type != "cpu"
        return out


def test_an_acting_step_reads_nothing_back_from_its_device() -> None:
    """On an accelerator every read of a tensor's value makes the host wait for the device.
    Meta tensors have no values, so any such read (``bool``, ``.item()``, ``.tolist()``,
    ``nonzero``) raises: a step that runs on them reads nothing back, the mask check included
    (it asserts on the device there, and on the CPU still raises at once). Nor does it copy
    anything from the host; its inputs go over in one copy."""
    rng = random.Random(11)
    observations = [random_obs(rng) for _ in range(8)]
    masks = ActionMasks.stack([SPACE.masks(o) for o in observations])
    x = torch.stack([encode_observation(o, True) for o in observations])
    net = randomized_network(seed=1)
    meta = net.to("meta")
    with torch.no_grad():
        meta.act(x.to("meta"), masks.to("meta"), meta.initial_state(8))  # once-per-device set-up
        for deterministic in (False, True):
            with HostToDevice() as transfers:
                moved_x, moved_masks = to_device(x, masks, torch.device("meta"))
            assert transfers.copies == 1
            with HostToDevice() as transfers:
                step = meta.act(moved_x, moved_masks, meta.initial_state(8), deterministic)
            assert transfers.copies == 0
            assert step.actions.shape == (8, 5) and step.value.shape == (8,)


def test_inputs_reach_the_device_as_they_were() -> None:
    rng = random.Random(3)
    observations = [random_obs(rng) for _ in range(4)]
    masks = ActionMasks.stack([SPACE.masks(o) for o in observations])
    x = torch.stack([encode_observation(o, True) for o in observations]).double()
    back_x, back = unpack_inputs(pack_inputs(x, masks), x, masks)
    assert back_x.dtype == torch.float64 and torch.equal(back_x, x)
    assert all(torch.equal(getattr(back, f.name), getattr(masks, f.name)) for f in fields(masks))
    moved_x, moved = to_device(x, masks, torch.device("meta"))
    assert moved_x.shape == x.shape and moved.slot.shape == masks.slot.shape
    assert to_device(x, masks, torch.device("cpu")) == (x, masks)  # the CPU: nothing moves


def test_log_prob_probs_and_entropy_against_numpy() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 7.0], [0.0, 0.0, 0.0, 0.0], [4.0, -3.0, 2.0, 1.0]])
    mask = torch.tensor(
        [[True, True, True, False], [True, False, True, True], [False] * 3 + [True]]
    )
    dist = MaskedCategorical(logits, mask)
    for r in range(3):
        valid = mask[r].numpy()
        z = logits[r].numpy()[valid].astype(np.float64)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        expected = np.zeros(4)
        expected[valid] = p
        assert dist.probs[r].numpy() == pytest.approx(expected, abs=1e-6)
        assert (dist.probs[r][~mask[r]] == 0).all(), "masked probability is exactly 0"
        h = -(p * np.log(p)).sum()
        n = valid.sum()
        norm = 0.0 if n == 1 else h / np.log(n)
        assert float(dist.entropy()[r]) == pytest.approx(norm, abs=1e-6)
        for j in np.flatnonzero(valid):
            lp = dist.log_prob(torch.tensor([j, j, j]))[r]
            assert float(lp) == pytest.approx(math.log(expected[j]), abs=1e-5)
    assert float(dist.entropy()[1]) == pytest.approx(1.0, abs=1e-6), "uniform over valid -> 1"
    assert float(dist.entropy()[2]) == 0.0, "one valid choice -> exactly 0"
    assert dist.log_prob(torch.tensor([3, 1, 0]))[:2].eq(-math.inf).all(), "masked -> -inf"
    assert dist.mode().tolist() == [2, 0, 3]


def test_entropy_gradients_stay_finite_with_one_valid_choice() -> None:
    logits = torch.randn(4, 5, requires_grad=True)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, 2] = True
    mask[0] = True
    dist = MaskedCategorical(logits, mask)
    (dist.entropy().sum() + dist.log_prob(torch.full((4,), 2)).sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad[1:][~mask[1:]] == 0).all(), "masked logits get no gradient"


def test_sampling_draws_what_torch_multinomial_draws() -> None:
    """``sample`` avoids ``torch.multinomial`` (its validity check reads a flag back from a GPU)
    but draws the same choices from the same generator state, masked rows included, and its
    frequencies match the probabilities."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(4000, 6, generator=gen)
    mask = torch.rand(4000, 6, generator=gen) < 0.6
    mask[:, 3] = True
    dist = MaskedCategorical(logits, mask)
    ours = dist.sample(torch.Generator().manual_seed(99))
    theirs = torch.multinomial(dist.probs, 1, generator=torch.Generator().manual_seed(99))
    assert torch.equal(ours, theirs.squeeze(-1))
    one_row = MaskedCategorical(logits[:1].expand(20000, 6), mask[:1].expand(20000, 6))
    counts = torch.bincount(one_row.sample(gen), minlength=6) / 20000
    assert torch.allclose(counts, one_row.probs[0], atol=0.015)


def test_masked_choices_are_never_sampled_property() -> None:
    """Random shapes, masks, logits (fp32 and fp16, adversarial scales): masked never drawn."""
    gen = torch.Generator().manual_seed(1234)
    for case in range(1000):
        rows, n = int(torch.randint(1, 8, (1,))), int(torch.randint(1, 12, (1,)))
        mask = torch.rand(rows, n, generator=gen) < 0.4
        mask[torch.arange(rows), torch.randint(0, n, (rows,), generator=gen)] = True
        scale = (0.1, 10.0, 1000.0)[case % 3]
        logits = torch.randn(rows, n, generator=gen) * scale
        if case % 4 == 0:  # masked entries look irresistible, valid ones hopeless
            logits = torch.where(mask, torch.full_like(logits, -5e4), torch.full_like(logits, 5e4))
        if case % 2 == 1:
            logits = logits.clamp(-6e4, 6e4).half()
        draws = 200
        dist = MaskedCategorical(logits.expand(draws, rows, n), mask.expand(draws, rows, n))
        samples = dist.sample(gen)  # (draws, rows)
        assert samples.shape == (draws, rows)
        picked = mask.expand(draws, rows, n).gather(-1, samples.unsqueeze(-1))
        assert picked.all(), f"case {case}: a masked choice was sampled"
        assert mask.gather(-1, dist.mode()[0].unsqueeze(-1)).all()
        probs = dist.probs[0]
        assert (probs[~mask] == 0).all()
        assert torch.allclose(probs.sum(-1), torch.ones(rows), atol=1e-5)
        entropy = dist.entropy()[0]
        assert (
            torch.isfinite(entropy).all() and (entropy >= 0).all() and (entropy <= 1 + 1e-5).all()
        )
        assert torch.isfinite(dist.log_prob(samples)).all()


def test_sampling_follows_the_probabilities() -> None:
    logits = torch.tensor([math.log(1.0), math.log(3.0), 50.0, math.log(6.0)])
    mask = torch.tensor([True, True, False, True])
    dist = MaskedCategorical(logits.expand(20000, 4), mask.expand(20000, 4))
    counts = torch.bincount(dist.sample(torch.Generator().manual_seed(0)), minlength=4)
    freq = counts.float() / 20000
    assert freq.tolist() == pytest.approx([0.1, 0.3, 0.0, 0.6], abs=0.015)


# ------------------------------------------------------------------------------ RunningMeanStd


def test_running_mean_std_matches_concatenated_batches() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=i, scale=1 + i, size=(n, 7)) for i, n in enumerate((5, 1, 40, 13))]
    norm = RunningMeanStd(7)
    for b in batches:
        norm.update(torch.tensor(b, dtype=torch.float32))
    all_rows = np.concatenate([b.astype(np.float32).astype(np.float64) for b in batches])
    assert norm.mean.numpy() == pytest.approx(all_rows.mean(axis=0), rel=1e-10, abs=1e-12)
    assert norm.var.numpy() == pytest.approx(all_rows.var(axis=0), rel=1e-10)
    assert (norm.count, norm.update_count) == (59, 4)
    x = torch.tensor(rng.normal(size=(2, 3, 7)), dtype=torch.float32)
    expected = (x.double().numpy() - all_rows.mean(0)) / np.sqrt(all_rows.var(0) + 1e-8)
    out = norm.normalize(x)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 7)
    assert out.numpy() == pytest.approx(np.clip(expected, -10, 10), abs=1e-5)


def test_normalize_clips_and_is_identity_before_updates() -> None:
    norm = RunningMeanStd(3, clip=5.0)
    x = torch.tensor([1.0, -2.0, 0.5])
    assert torch.allclose(norm.normalize(x), x)
    norm.update(torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]))  # mean 1, std 1
    out = norm.normalize(torch.tensor([[1000.0, -1000.0, 2.0]], dtype=torch.float64))
    assert out.dtype == torch.float64
    assert out[0].tolist() == pytest.approx([5.0, -5.0, 1.0], abs=1e-6)


def test_normalizer_state_round_trip_and_errors() -> None:
    norm = RunningMeanStd(4)
    norm.update(torch.randn(10, 4) * 3 + 1)
    norm.update(torch.randn(3, 4))
    state = json.loads(json.dumps(norm.state_dict()))
    other = RunningMeanStd(4)
    other.load_state_dict(state)
    x = torch.randn(6, 4)
    assert torch.equal(other.normalize(x), norm.normalize(x))
    assert (other.count, other.update_count) == (13, 2)
    assert torch.equal(other.mean, norm.mean) and torch.equal(other.var, norm.var)
    with pytest.raises(ValueError, match="size 4"):
        RunningMeanStd(5).load_state_dict(state)
    with pytest.raises(ValueError, match="non-finite"):
        norm.update(torch.tensor([[math.nan, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        norm.update(torch.zeros(4))
    assert norm.update_count == 2, "a rejected batch is not counted"


# ------------------------------------------------------------------------------ PolicyNetwork


def test_config_and_network_validation() -> None:
    with pytest.raises(ValueError, match="hidden"):
        PolicyConfig(hidden=0)
    with pytest.raises(ValueError, match="head_sizes"):
        PolicyNetwork(80, {"op": 6}, SMALL)
    net = PolicyNetwork(80, SPACE.head_sizes, SMALL)
    out = net(torch.zeros(2, 3, 80), net.initial_state(2), torch.zeros(2, 3, dtype=torch.bool))
    assert {h: tuple(v.shape) for h, v in out.logits.items()} == {
        h: (2, 3, n) for h, n in SPACE.head_sizes.items()
    }
    assert out.value.shape == (2, 3) and out.state[0].shape == (1, 2, 8)
    with pytest.raises(ValueError, match="episode_start"):
        net(torch.zeros(2, 3, 80), net.initial_state(2), torch.zeros(2, 3))


def _rollout_setup(batch: int = 3, steps: int = 7) -> tuple[Tensor, ActionMasks, Tensor]:
    rng = random.Random(5)
    grid = [[random_obs(rng, epoch=t + 1) for t in range(steps)] for _ in range(batch)]
    obs = torch.randn(
        batch, steps, observation_size(True), generator=torch.Generator().manual_seed(3)
    )
    starts = torch.zeros(batch, steps, dtype=torch.bool)
    starts[:, 0] = True  # every rollout begins an episode
    starts[0, 3] = True  # env 0 resets mid-sequence
    starts[1, 5] = True  # env 1 later; env 2 never
    return obs, batched_masks(grid), starts


def _sample_rollout(
    net: PolicyNetwork,
    obs: Tensor,
    masks: ActionMasks,
    starts: Tensor,
    gen: torch.Generator,
    steps: list[ActStep] | None = None,
    state: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Act step by step as a rollout does (resetting finished rows); ``(B, T, 5)`` actions."""
    state = net.initial_state(obs.shape[0]) if state is None else state
    actions = []
    for t in range(obs.shape[1]):
        state = reset_state(state, starts[:, t])
        step = net.act(obs[:, t], at_step(masks, t), state, generator=gen)
        check_valid(step.actions, at_step(masks, t))
        actions.append(step.actions)
        if steps is not None:
            steps.append(step)
        state = step.state
    return torch.stack(actions, dim=1)


def test_act_matches_evaluate_over_a_sequence_with_resets() -> None:
    net = randomized_network()
    obs, masks, starts = _rollout_setup()
    initial = net.initial_state(3)
    carried = (initial[0] + 0.3, initial[1] - 0.2)  # a non-zero carried-in state
    steps: list[ActStep] = []
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        taken = _sample_rollout(net, obs, masks, starts, gen, steps, carried)
        ev = net.evaluate(obs, masks, taken, carried, starts)
    assert taken.dtype == torch.long and taken.shape == (3, 7, 5)
    log_probs = torch.stack([s.log_prob for s in steps], dim=1)  # (B, T)
    values = torch.stack([s.value for s in steps], dim=1)
    assert torch.allclose(ev.log_prob, log_probs, atol=1e-5)
    assert torch.allclose(ev.value, values, atol=1e-5)
    assert torch.allclose(ev.head_log_prob.sum(-1), ev.log_prob)
    # The oracle can fail: ignoring the mid-sequence resets changes what evaluate computes.
    no_reset = starts.clone()
    no_reset[:, 1:] = False
    with torch.no_grad():
        wrong = net.evaluate(obs, masks, taken, carried, no_reset)
    assert not torch.allclose(wrong.value, ev.value, atol=1e-3)
    assert torch.allclose(wrong.value[2], ev.value[2]), "env 2 never resets: unchanged"


def test_causal_masking_of_irrelevant_heads() -> None:
    net = randomized_network()
    obs, _, starts = _rollout_setup(batch=2, steps=6)
    everything = ActionMasks(
        op=torch.ones(2, 6, 6, dtype=torch.bool),
        slot=torch.ones(2, 6, 6, 3, dtype=torch.bool),
        blueprint=torch.ones(2, 6, 6, dtype=torch.bool),
        tempo=torch.ones(2, 6, 4, dtype=torch.bool),
        alpha_target=torch.ones(2, 6, 4, dtype=torch.bool),
    )
    ops = torch.tensor([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])  # every op, in tuple(Op) order
    gen = torch.Generator().manual_seed(0)
    actions = torch.stack(
        [ops] + [torch.randint(0, n, (2, 6), generator=gen) for n in (3, 6, 4, 4)], dim=-1
    )
    captured: dict[str, Tensor] = {}

    def keep(head: str) -> RemovableHandle:
        def hook(_m: torch.nn.Module, _i: tuple[Tensor, ...], out: Tensor) -> None:
            out.retain_grad()  # the head's logits (B, T, n)
            captured[head] = out

        return net.heads[head].register_forward_hook(hook)

    handles = [keep(head) for head in HEADS]
    ev = net.evaluate(obs, everything, actions, net.initial_state(2), starts)
    (ev.log_prob.sum() + ev.entropy.sum()).backward()
    for handle in handles:
        handle.remove()
    for i, head in enumerate(HEADS):
        grad = captured[head].grad
        assert grad is not None
        for b in range(2):
            for t in range(6):
                relevant = head in RELEVANT_HEADS[OPS[int(ops[b, t])]]
                assert bool(ev.relevance[b, t, i]) == relevant
                if relevant:
                    assert grad[b, t].abs().sum() > 0, (head, b, t)
                else:
                    assert torch.equal(grad[b, t], torch.zeros_like(grad[b, t])), (head, b, t)
                    assert ev.head_log_prob[b, t, i] == 0 and ev.entropy[b, t, i] == 0
    # Changing only irrelevant indices changes neither log-probabilities nor entropies.
    shuffled = actions.clone()
    for b in range(2):
        for t in range(6):
            for i, head in enumerate(HEADS[1:], start=1):
                if not ev.relevance[b, t, i]:
                    shuffled[b, t, i] = (actions[b, t, i] + 1) % SPACE.head_sizes[head]
    assert not torch.equal(shuffled, actions)
    # With gradients, as above: torch's no-grad LSTM kernel may round differently on some CPUs.
    again = net.evaluate(obs, everything, shuffled, net.initial_state(2), starts)
    assert torch.equal(again.log_prob, ev.log_prob.detach())
    assert torch.equal(again.entropy.detach(), ev.entropy.detach())
    assert (ev.entropy >= 0).all() and (ev.entropy <= 1 + 1e-5).all()


def test_act_never_picks_masked_choices() -> None:
    net = randomized_network(seed=1)
    rng = random.Random(11)
    observations = [random_obs(rng) for _ in range(128)]
    masks = ActionMasks.stack([SPACE.masks(o) for o in observations])
    x = torch.stack([encode_observation(o, True) for o in observations])
    gen = torch.Generator().manual_seed(2)
    seen_ops = set()
    with torch.no_grad():
        for deterministic in (False,) * 10 + (True,):
            step = net.act(x, masks, net.initial_state(128), deterministic, gen)
            check_valid(step.actions, masks)
            for row in step.actions.tolist():
                SPACE.decode(row)  # builds a well-formed Action
                seen_ops.add(OPS[row[0]])
    assert seen_ops == set(Op), "the random cases exercise every op"


def test_value_does_not_depend_on_the_action() -> None:
    net = randomized_network()
    obs, masks, starts = _rollout_setup()
    state = net.initial_state(3)
    with torch.no_grad():
        first = net.act(obs[:, 0], at_step(masks, 0), state, generator=torch.Generator())
        other = net.act(obs[:, 0], at_step(masks, 0), state, deterministic=True)
        waits = torch.zeros(3, 7, 5, dtype=torch.long)  # WAIT is always valid
        sampled = _sample_rollout(net, obs, masks, starts, torch.Generator().manual_seed(1))
        a = net.evaluate(obs, masks, waits, state, starts)
        b = net.evaluate(obs, masks, sampled, state, starts)
    assert torch.equal(first.value, other.value)
    assert torch.equal(a.value, b.value)
    assert not torch.equal(a.log_prob, b.log_prob), "the actions did differ"


# ------------------------------------------------------------------------------ PolicyController


def _controller(net: PolicyNetwork, deterministic: bool = True) -> PolicyController:
    norm = RunningMeanStd(observation_size(True))
    rng = random.Random(99)
    norm.update(torch.stack([encode_observation(random_obs(rng), True) for _ in range(32)]))
    return PolicyController(net, SPACE, norm, telemetry=True, deterministic=deterministic)


def test_controller_decides_valid_actions() -> None:
    net = randomized_network(seed=3)
    controller = _controller(net)
    assert isinstance(controller, Controller)
    rng = random.Random(4)
    sequence = [random_obs(rng, epoch=t + 1) for t in range(12)]
    first = sequence[0]
    x = controller.normalizer.normalize(encode_observation(first, True)).unsqueeze(0)
    masks = ActionMasks.stack([SPACE.masks(first)])
    with torch.no_grad():
        oracle = net.act(x, masks, net.initial_state(1), deterministic=True)
    assert controller.decide(first) == SPACE.decode(oracle.actions[0].tolist())
    for o in sequence[1:]:
        action = controller.decide(o)
        indices = SPACE.encode(action)
        check_valid(torch.tensor([indices]), ActionMasks.stack([SPACE.masks(o)]))
    assert controller.state_dict()["steps"] == 12
    controller.reset()
    assert controller.state_dict() == {"steps": 0, "lstm": None, "rng": None}
    assert controller.decide(first) == SPACE.decode(oracle.actions[0].tolist())


@pytest.mark.parametrize("deterministic", [True, False])
def test_controller_state_round_trips_through_json(deterministic: bool) -> None:
    net = randomized_network(seed=4)
    rng = random.Random(8)
    sequence = [random_obs(rng, epoch=t + 1) for t in range(14)]
    a = _controller(net, deterministic)
    for o in sequence[:4]:
        a.decide(o)
    saved = json.loads(json.dumps(a.state_dict()))
    b = _controller(net, deterministic)
    b.load_state_dict(saved)
    assert b.state_dict() == saved
    decisions_a = [a.decide(o) for o in sequence[4:]]
    decisions_b = [b.decide(o) for o in sequence[4:]]
    assert decisions_a == decisions_b
    assert a.state_dict() == b.state_dict()
    fresh = _controller(net, deterministic)
    fresh.decide(sequence[4])
    assert fresh.state_dict()["lstm"] != b.state_dict()["lstm"], "the saved state mattered"


def test_controller_rejects_mismatches() -> None:
    net = PolicyNetwork(observation_size(True), SPACE.head_sizes, SMALL)
    with pytest.raises(ValueError, match="telemetry=False"):
        PolicyController(net, SPACE, RunningMeanStd(50), telemetry=False)
    with pytest.raises(ValueError, match="action space"):
        PolicyController(net, ActionSpace(Topology.TRANSFORMER), RunningMeanStd(80), telemetry=True)
    controller = PolicyController(net, SPACE, RunningMeanStd(80), telemetry=True)
    with pytest.raises(ValueError, match="keys"):
        controller.load_state_dict({"steps": 0})
    with pytest.raises(ValueError, match="deterministic=True"):
        controller.load_state_dict({"steps": 0, "lstm": None, "rng": [1, 2]})


# ------------------------------------------------------------------ inputs computed wrongly before


def test_log_prob_takes_one_index_per_row_only() -> None:
    """``gather`` read a shorter value as the first rows' (shape (1,) for a batch of 4)."""
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    dist = MaskedCategorical(logits, torch.ones(4, 3, dtype=torch.bool))
    value = torch.tensor([1, 0, 2, 1])
    oracle = torch.distributions.Categorical(logits=logits).log_prob(value)
    assert torch.allclose(dist.log_prob(value), oracle)
    for short in (torch.tensor([1]), torch.tensor([0, 1])):
        with pytest.raises(ValueError, match=r"value must have the batch's shape \(4,\)"):
            dist.log_prob(short)
    with pytest.raises(ValueError, match=r"integer indices, got torch.float32"):
        dist.log_prob(torch.tensor([0.7, 0.0, 0.0, 0.0]))
    for outside in (3, -1):
        with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
            dist.log_prob(torch.tensor([0, outside, 0, 0]))


def test_a_minus_infinite_logit_has_probability_zero_and_a_finite_entropy() -> None:
    logits = torch.tensor([0.0, -math.inf, 1.0], requires_grad=True)
    dist = MaskedCategorical(logits, torch.ones(3, dtype=torch.bool))
    oracle = torch.distributions.Categorical(logits=logits.detach()).entropy() / math.log(3)
    entropy = dist.entropy()
    assert entropy.item() == pytest.approx(oracle.item())  # was NaN: 0 * -inf
    entropy.backward()
    assert logits.grad is not None and bool(logits.grad.isfinite().all())


def test_nan_logits_are_refused_where_they_count() -> None:
    """NaN was sampled as index 0 with a NaN probability; a NaN behind the mask is harmless."""
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="NaN at a valid choice"):
        MaskedCategorical(torch.tensor([[0.0, math.nan, 1.0]]), mask)
    dist = MaskedCategorical(torch.tensor([[0.0, 1.0, math.nan]]), mask)
    assert dist.probs[0, 2] == 0 and bool(dist.entropy().isfinite().all())


def test_normalize_gives_floats_for_integer_input_and_refuses_nan() -> None:
    norm = RunningMeanStd(2)
    norm.update(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))  # mean 5, std 5
    z = norm.normalize(torch.tensor([[7, 2]]))
    assert z.dtype == torch.float32  # was int64 [[0, 0]]
    assert z[0].tolist() == pytest.approx([0.4, -0.6], abs=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        norm.normalize(torch.tensor([[math.nan, 0.0]]))
    assert norm.normalize(torch.tensor([[math.inf, 0.0]]))[0, 0] == 10.0  # clipped


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"clip": -1.0}, r"clip must be a number in \(0.0, inf\]"),
        ({"clip": math.nan}, r"clip must be a number in \(0.0, inf\]"),
        ({"var": [-1.0, 1.0]}, "must be finite, var >= 0"),
        ({"mean": [math.nan, 0.0]}, "must be finite"),
        ({"count": -5}, r"count must be an integer in \[0, "),
        ({"count": 2.7}, r"count must be an integer in \[0, "),
        ({"update_count": True}, r"update_count must be an integer"),
    ],
)
def test_normalizer_state_no_update_could_make_is_refused(change: dict, message: str) -> None:
    norm = RunningMeanStd(2)
    norm.update(torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
    before = norm.state_dict()
    with pytest.raises(ValueError, match=message):
        norm.load_state_dict({**before, **change})
    assert norm.state_dict() == before


def test_reset_state_takes_one_bool_flag_per_row() -> None:
    """0/1 integers were inverted bitwise (rows scaled by -1 and -2), one flag reset all rows."""
    state = (torch.ones(1, 2, 3), torch.ones(1, 2, 3))
    h, _ = reset_state(state, torch.tensor([False, True]))
    assert h[0, :, 0].tolist() == [1.0, 0.0]
    for flags in (torch.tensor([0, 1]), torch.tensor([1.0, 0.0]), torch.tensor([True])):
        with pytest.raises(ValueError, match=r"episode_start must be a bool \(2,\) tensor"):
            reset_state(state, flags)


def test_network_inputs_and_sizes_are_checked_up_front() -> None:
    net = PolicyNetwork(80, SPACE.head_sizes, SMALL)
    start = torch.zeros(2, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"obs must be torch.float32 like the network's weights"):
        net(torch.zeros(2, 1, 80, dtype=torch.float64), net.initial_state(2), start)
    with pytest.raises(ValueError, match=r"state must be \(h, c\), each \(1, 2, 8\)"):
        net(torch.zeros(2, 1, 80), net.initial_state(3), start)
    masks = ActionMasks.stack([SPACE.masks(random_obs(random.Random(0)))])
    with pytest.raises(ValueError, match="obs holds NaN"):  # it chose WAIT with a NaN log-prob
        net.act(torch.full((1, 80), math.nan), masks, net.initial_state(1))
    big = dict(SPACE.head_sizes, op=10**9)
    for obs_size, heads in ((10**9, SPACE.head_sizes), (True, SPACE.head_sizes), (80, big)):
        with pytest.raises(ValueError, match=r"must be an integer in \[1, 4096\]"):
            PolicyNetwork(obs_size, heads, SMALL)  # 10**9 asked for gigabytes first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": -3}, r"steps must be an integer in \[0, "),
        ({"lstm": [[[[math.nan] * 8]], [[[0.0] * 8]]]}, "LSTM state is not finite"),
    ],
)
def test_controller_refuses_a_state_no_episode_could_make(change: dict, message: str) -> None:
    controller = _controller(randomized_network(seed=5))
    controller.decide(random_obs(random.Random(1)))
    before = controller.state_dict()
    with pytest.raises(ValueError, match=message):
        controller.load_state_dict({**before, **change})
    assert controller.state_dict() == before
