"""Grouped training of k environments equals training each on its own (DESIGN §10).

The oracle is the sequential path: each episode stepped alone (``chunk=1``) through the same
scripted actions. Grouped runs put the same episodes side by side in one computation; each
episode's trajectory — losses, accuracies, lifecycle stages, final weights — must not depend on
it, to 1e-9 in float64 and to a float32 tolerance in the default precision.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import esper.kasmina.grouped as grouped
import esper.kasmina.hosts as hosts
from conftest import perturb_seed
from esper.data import BatchStream, make_synthetic
from esper.kasmina import CNNHost, CNNHostConfig, MorphogeneticModel
from esper.kasmina.grouped import groupable, grouped_forward
from esper.leyline import Action, GateMode, Op
from esper.leyline.config import HostTraining
from esper.leyline.data import Dataset
from esper.leyline.events import Event, GovernorPanic
from esper.simic.env import GrowthEnv
from esper.simic.rewards import RewardConfig, RewardFunction
from esper.simic.vector import CPU_CHUNK, VectorEnv, chunk_size
from esper.tamiyo import SignalTracker
from esper.tasks import resolve_training
from esper.tolaria.engine import train_together
from esper.tolaria.episode import Episode, StepResult, dataset_on, reset_together, step_together

W = Action(Op.WAIT)
SCRIPTS = {
    # germinate, train, blend, hold, fossilize
    "grow": [
        Action(Op.GERMINATE, slot="mid", blueprint="conv_light"),
        Action(Op.ADVANCE, slot="mid"),
        Action(Op.ADVANCE, slot="mid"),
        W,
        Action(Op.ADVANCE, slot="mid"),
        Action(Op.FOSSILIZE, slot="mid"),
        W,
    ],
    # germinate, train, blend, prune
    "prune": [
        Action(Op.GERMINATE, slot="early", blueprint="norm"),
        Action(Op.ADVANCE, slot="early"),
        Action(Op.ADVANCE, slot="early"),
        W,
        Action(Op.PRUNE, slot="early"),
        W,
        W,
    ],
    # germinate, train; then the learning rate explodes: the governor rolls back
    "diverge": [
        Action(Op.GERMINATE, slot="late", blueprint="conv_light"),
        Action(Op.ADVANCE, slot="late"),
        W,
        W,
        W,
        W,
        W,
    ],
}
EPOCHS = len(SCRIPTS["grow"]) + 1
CPU = torch.device("cpu")
DIVERGE_AT = 3  # the "diverge" episode's learning rate is raised before this step


@pytest.fixture
def float64() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


IMPAIRED = {"base_channels": 4, "kernel_size": 1}
"""An impaired host on one-channel images: its first blocks run in closed form
(``esper.kasmina.hosts.one_channel_blocks``), alone and grouped."""


def _data(dtype: torch.dtype, channels: int = 3) -> Dataset:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # datasets are made (and checked) in float32
    data = make_synthetic(n_train=192, n_val=96, input_shape=(channels, 8, 8), seed=7)
    torch.set_default_dtype(before)
    # Datasets hold float32 images; the float64 oracle bypasses that check on purpose.
    object.__setattr__(data, "x_train", data.x_train.to(dtype))
    object.__setattr__(data, "x_val", data.x_val.to(dtype))
    return data


def _episodes(
    data: Dataset, events: list[Event], device: torch.device = CPU, **host: int
) -> list[Episode]:
    training = HostTraining(
        "synthetic",
        epochs=EPOCHS,
        batch_size=32,
        lr=3e-3,
        seed_lr=3e-3,
        slots=("early", "mid", "late"),
    )
    config = CNNHostConfig(
        in_channels=data.x_train.shape[1],
        num_classes=data.num_classes,
        input_size=8,
        **{"base_channels": 4, **host},
    )

    on_device = dataset_on(data, device)  # what the episodes train on: the streams read it too

    def stream(seed: int) -> BatchStream:
        return BatchStream(on_device.x_train, on_device.y_train, 32, seed)

    return [
        Episode(
            training,
            data,
            lambda _: CNNHost(config),
            stream,
            SignalTracker,
            seed,
            device,
            events.append,
        )
        for seed in range(len(SCRIPTS))
    ]


def _run(
    data: Dataset, chunk: int, device: torch.device = CPU, **host: int
) -> tuple[list[list[StepResult]], list[Episode], list[Event]]:
    """Every scripted episode, stepped together in chunks of ``chunk``."""
    events: list[Event] = []
    episodes = _episodes(data, events, device, **host)
    reset_together(episodes, chunk)
    for e in episodes:  # structural gates only: the script decides when seeds advance
        e.model.gate_mode = GateMode.PERMISSIVE
    results = [[e.last] for e in episodes]
    for step in range(EPOCHS - 1):
        if step == DIVERGE_AT:
            optimizer = episodes[2].trainer.optimizer
            optimizer.host_lr = optimizer.seed_lr = 1e6
        live = [i for i, e in enumerate(episodes) if not e.done]
        actions = [list(SCRIPTS.values())[i][step] for i in live]
        for i, t in zip(
            live, step_together([episodes[i] for i in live], actions, chunk), strict=True
        ):
            results[i].append(t.after[0])
    return results, episodes, events


def _measured(result: StepResult) -> list[float]:
    return [result.train_loss, result.train_accuracy, result.val_loss, result.val_accuracy]


def compare_grouped(
    data: Dataset,
    tolerance: float,
    monkeypatch: pytest.MonkeyPatch,
    device: torch.device = CPU,
    **host: int,
) -> None:
    """Scripted episodes stepped alone and together give the same trajectories."""
    alone, alone_eps, _ = _run(data, chunk=1, device=device, **host)
    calls = []
    original = grouped.grouped_forward

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr("esper.tolaria.engine.grouped_forward", counting)
    together, together_eps, events = _run(data, chunk=len(SCRIPTS), device=device, **host)
    assert 3 in calls and 2 in calls  # all three grouped, then two after the rollback
    for a, b in zip(alone, together, strict=True):
        assert len(a) == len(b)
        for ra, rb in zip(a, b, strict=True):
            assert torch.allclose(
                torch.tensor(_measured(ra)),
                torch.tensor(_measured(rb)),
                rtol=tolerance,
                atol=tolerance,
                equal_nan=True,
            )
    for ea, eb in zip(alone_eps, together_eps, strict=True):
        assert [r.stage for r in ea.model.reports().values()] == [
            r.stage for r in eb.model.reports().values()
        ]
        for (name, pa), pb in zip(
            ea.model.state_dict().items(), eb.model.state_dict().values(), strict=True
        ):
            pa, pb = pa.double().cpu(), pb.double().cpu()
            assert torch.allclose(pa, pb, rtol=tolerance, atol=tolerance), name
    # The script really did what it says: a fossilized seed, a pruned one, a rollback.
    stages = [[r.stage.value for r in e.model.reports().values()] for e in together_eps]
    assert "FOSSILIZED" in stages[0]
    assert "EMBARGOED" in stages[1] or "RESETTING" in stages[1] or "DORMANT" in stages[1]
    assert together_eps[2].trainer.terminated and len(together[2]) < EPOCHS
    assert any(isinstance(e, GovernorPanic) for e in events)


def test_grouped_equals_sequential_in_float64(
    float64: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    compare_grouped(_data(torch.float64), 1e-9, monkeypatch)


def test_grouped_matches_sequential_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    compare_grouped(_data(torch.float32), 1e-4, monkeypatch)


def _counting_closed_forms(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many blocks each call of ``one_channel_blocks`` computes, alone or grouped."""
    calls: list[int] = []
    original = hosts.one_channel_blocks

    def counting(blocks, x):
        calls.append(len(blocks))
        return original(blocks, x)

    monkeypatch.setattr(hosts, "one_channel_blocks", counting)
    monkeypatch.setattr(grouped, "one_channel_blocks", counting)
    return calls


def _waiting(data: Dataset, chunk: int) -> tuple[list[list[float]], list[Episode]]:
    """Impaired-host episodes that only wait, stepped in chunks of ``chunk``."""
    episodes = _episodes(data, [], **IMPAIRED)
    reset_together(episodes, chunk)
    measured = [_measured(e.last) for e in episodes]
    for _ in range(EPOCHS - 1):
        done = step_together(episodes, [W] * len(episodes), chunk)
        measured += [_measured(t.after[0]) for t in done]
    return measured, episodes


def test_grouped_impaired_hosts_on_one_channel_equal_sequential(
    float64: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Impaired hosts on one-channel images, whose first blocks run in closed form (alone: one
    block; grouped: the k first blocks as one): whole episodes agree to 1e-9 in float64.

    The scripted growth episodes above do not agree to 1e-9 on these hosts, with or without the
    closed form: a seed's per-channel constant (its GroupNorm bias) ahead of a 1×1 convolution
    and a batch norm is cancelled by the norm, so its exact gradient is zero and the computed one
    is rounding noise that depends on summation order, which AdamW turns into steps of the
    learning rate's size. With seeds, one training pass is compared instead (next test)."""
    calls = _counting_closed_forms(monkeypatch)
    data = _data(torch.float64, channels=1)
    alone, alone_eps = _waiting(data, chunk=1)
    together, together_eps = _waiting(data, chunk=len(SCRIPTS))
    assert calls.count(1) > 0 and calls.count(len(SCRIPTS)) > 0
    assert torch.allclose(torch.tensor(alone), torch.tensor(together), rtol=1e-9, atol=1e-9)
    for a, b in zip(alone_eps, together_eps, strict=True):
        states = zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True)
        for (name, pa), pb in states:
            assert torch.allclose(pa.double(), pb.double(), rtol=1e-9, atol=1e-9), name


def test_grouped_closed_form_with_seeds_equals_each_model(
    float64: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One training pass of impaired hosts with seeds in TRAINING and BLENDING at every point:
    grouped outputs, parameter gradients and running statistics equal each model's own."""
    calls = _counting_closed_forms(monkeypatch)
    config = CNNHostConfig(in_channels=1, input_size=8, **IMPAIRED)
    slots = ["early", "mid", "late"]
    models = [MorphogeneticModel(CNNHost(config), slots) for _ in range(3)]
    for model in models:
        model.gate_mode = GateMode.PERMISSIVE
    for model, slot in zip(models, slots, strict=True):
        model.germinate(slot, "conv_light")
        model.advance(slot)
        perturb_seed(model, slot)
    models[2].advance("late")  # BLENDING
    alone = copy.deepcopy(models)
    xs = [torch.randn(16, 1, 8, 8) for _ in models]
    with pytest.raises(ValueError, match=r"one batch per model: 3 models, 2 batches"):
        grouped_forward(models, xs[:2])  # a torch error from inside the first convolution
    outs = grouped_forward(models, xs).unbind(1)
    weights = torch.linspace(-1, 1, outs[0].numel()).view_as(outs[0])
    sum((out * weights).sum() for out in outs).backward()
    for model, twin, x, out in zip(models, alone, xs, outs, strict=True):
        own = twin.train()(x)
        (own * weights).sum().backward()
        assert torch.allclose(out, own, rtol=1e-12, atol=1e-12)
        for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                assert torch.allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12), name
        for (name, b), c in zip(model.named_buffers(), twin.buffers(), strict=True):
            assert torch.allclose(b.double(), c.double(), rtol=1e-12, atol=1e-12), name
    assert calls == [3, 1, 1, 1]


def test_a_non_finite_input_stays_in_its_own_model(float64: None) -> None:
    """A NaN or inf pixel in one impaired host's batch leaves the other hosts' grouped outputs
    finite and equal to their own (the closed form's product would mix it in: ``0 · inf``)."""
    config = CNNHostConfig(in_channels=1, input_size=8, num_classes=4, **IMPAIRED)
    for bad in (math.nan, math.inf, -math.inf):
        models = [MorphogeneticModel(CNNHost(config), ["mid"]) for _ in range(3)]
        alone = copy.deepcopy(models)
        xs = [torch.randn(8, 1, 8, 8) for _ in models]
        xs[0][2, 0, 3, 4] = bad
        outs = grouped_forward(models, xs).unbind(1)
        for twin, x, out in list(zip(alone, xs, outs, strict=True))[1:]:
            assert torch.isfinite(out).all()
            assert torch.allclose(out, twin.train()(x), rtol=1e-12, atol=1e-12)


def test_grouped_forward_gradients_reach_each_model(float64: None) -> None:
    config = CNNHostConfig(in_channels=1, input_size=8, base_channels=4)
    models = [MorphogeneticModel(CNNHost(config), ["early", "mid", "late"]) for _ in range(3)]
    models[1].germinate("mid", "conv_light")
    models[1].advance("mid")
    xs = [torch.randn(5, 1, 8, 8) for _ in models]
    outs = grouped_forward(models, xs).unbind(1)
    (outs[1] ** 2).sum().backward()
    for i, model in enumerate(models):
        touched = [p.grad is not None and bool(p.grad.abs().sum()) for p in model.parameters()]
        assert any(touched) == (i == 1)  # only the model whose output is in the loss
    expected = models[1](xs[1])  # same weights, after the grouped pass updated its running stats
    assert expected.shape == outs[1].shape


def test_groupable_refuses_what_it_cannot_group() -> None:
    config = CNNHostConfig(in_channels=1, input_size=8, base_channels=4)
    a = MorphogeneticModel(CNNHost(config), ["mid"])
    assert not groupable([a])  # one model: nothing to group
    assert groupable([a, MorphogeneticModel(CNNHost(config), ["mid"])])
    assert not groupable([a, MorphogeneticModel(CNNHost(config.with_width(8)), ["mid"])])
    assert not groupable([a, MorphogeneticModel(CNNHost(config), ["early"])])
    b = MorphogeneticModel(CNNHost(config), ["mid"])
    b.slot("mid").seed = torch.nn.Dropout()  # a random layer needs the model's own RNG
    assert not groupable([a, b])
    for setting, value in (("momentum", 0.2), ("eps", 1e-3)):  # one norm runs with a's
        c = MorphogeneticModel(CNNHost(config), ["mid"])
        setattr(c.host.segments[1][0][1], setting, value)
        assert not groupable([a, c])


def test_a_reset_after_build_trains_the_host_built_and_builds_no_other() -> None:
    """``build`` then ``reset`` (a growth run builds apart, out of its training time) is one
    ``reset``: the same episode count and first epoch, bit for bit. A ``step`` between them
    is refused, as before any ``reset``: it trained the new host as the old episode's."""
    data = _data(torch.float32)
    plain, split = _episodes(data, [])[0], _episodes(data, [])[0]
    first = plain.reset()
    split.build()
    assert split.reset() == first and split.episode == plain.episode == 1
    assert [p.tolist() for p in split.model.parameters()] == [
        p.tolist() for p in plain.model.parameters()
    ]
    assert plain.reset() == split.reset() and split.episode == 2  # a later reset builds anew
    split.build()  # the next episode's host; the last one's epoch is no step of it
    with pytest.raises(RuntimeError, match="call reset"):
        split.step(W)
    assert split.reset() == plain.reset() and split.episode == 3


def test_unchecked_epoch_loop_matches_the_checked_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA epoch loop skips the per-batch finiteness check (it would synchronise); run on
    a CPU it gives the same results, and a poisoned model still reports NaN for the epoch."""
    data = _data(torch.float32)

    def first_epochs(poison: bool) -> list[list[float]]:
        episodes = _episodes(data, [])
        for e in episodes:
            e.build()
        if poison:
            with torch.no_grad():
                next(episodes[1].model.host.parameters()).fill_(float("inf"))
        trained = train_together([e.trainer for e in episodes])
        return [[t.loss, t.accuracy] for t in trained]

    checked = first_epochs(poison=False), first_epochs(poison=True)
    monkeypatch.setattr("esper.tolaria.engine.checks_each_batch", lambda device: False)
    unchecked = first_epochs(poison=False), first_epochs(poison=True)
    assert checked[0] == unchecked[0]
    for results in (checked[1], unchecked[1]):
        assert math.isnan(results[1][0]) and math.isnan(results[1][1])
        assert results[0] == checked[0][0] and results[2] == checked[0][2]  # the others unharmed


class _OpCounts(TorchDispatchMode):
    """How many times each aten operation ran (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


ONCE_PER_CHUNK = (
    "nll_loss2d_forward",  # the (B, classes, k) logits of all k models
    "nll_loss2d_backward",
    "_log_softmax",
    "_log_softmax_backward_data",
    "argmax",
    "_foreach_add_",
    "_foreach_copy_",
    "_foreach_lerp_",
    "lerp_",
)
"""Operations of a grouped batch that the number of models must not change: the loss and
accuracy, the epoch's totals and the norms' running statistics (on CUDA, kernel launches)."""


def test_a_grouped_batch_scores_and_tallies_its_models_at_once() -> None:
    """An epoch of 2 or 3 grouped impaired hosts (closed-form first block, grouped norms after
    it) runs the loss, the totals and the running-statistics updates the same number of times:
    once per batch, not once per model (counted in a second epoch: an optimizer's first step
    makes its state on its own)."""
    data = _data(torch.float32, channels=1)
    counts = []
    for k in (2, 3):
        episodes = _episodes(data, [], **IMPAIRED)[:k]
        for e in episodes:
            e.build()
        trainers = [e.trainer for e in episodes]
        assert groupable([t.model for t in trainers])
        train_together(trainers)
        with _OpCounts() as mode:
            train_together(trainers)
        counts.append({name: mode.counts[name] for name in ONCE_PER_CHUNK})
    batches = math.ceil(192 / 32)
    assert counts[0] == counts[1]
    assert counts[0]["nll_loss2d_forward"] == counts[0]["nll_loss2d_backward"] == batches
    # running means and variances: the closed form's block lerped, the two later blocks copied
    assert counts[0]["_foreach_lerp_"] == 2 * batches
    assert counts[0]["_foreach_copy_"] == 2 * 2 * batches
    assert counts[0]["lerp_"] == 0
    # the epoch's loss and accuracy totals, the norms' batch counters, AdamW's step counts
    assert counts[0]["_foreach_add_"] == (2 + 3 + 1) * batches


def _growth_envs(task: str, n: int, **training: object) -> list[GrowthEnv]:
    settings = resolve_training(HostTraining(task, epochs=3, **training))  # type: ignore[arg-type]
    data = make_synthetic(n_train=128, n_val=64, input_shape=(1, 28, 28), num_classes=10)
    reward = RewardFunction(RewardConfig(), gamma=0.99)
    return [
        GrowthEnv(settings, data, i, CPU, reward, lambda event, context: None, i) for i in range(n)
    ]


def test_chunk_size_groups_small_hosts_only() -> None:
    small = _growth_envs("fashion_mnist_impaired", 2)  # 4 channels: 1.6 MiB activations
    wide = _growth_envs("fashion_mnist", 2)  # 16 channels: 6.4 MiB
    assert chunk_size(small, CPU) == CPU_CHUNK
    assert chunk_size(wide, CPU) == 1
    assert chunk_size(wide, torch.device("cuda")) == 2  # on a GPU: one large grouped batch
    # bfloat16 activations take half the bytes: width 8 (1.6 MiB) groups, width 16 does not.
    assert chunk_size(_growth_envs("fashion_mnist", 2, width=8), CPU) == 1  # 3.2 MiB
    narrow_bf16 = _growth_envs("fashion_mnist", 2, width=8, precision="bfloat16")
    assert chunk_size(narrow_bf16, CPU) == CPU_CHUNK
    assert chunk_size(_growth_envs("fashion_mnist", 2, precision="bfloat16"), CPU) == 1


def test_vector_env_steps_grouped_like_one_by_one() -> None:
    rewards = []
    for chunk in (1, None):
        envs = _growth_envs("fashion_mnist_impaired", 3, batches_per_epoch=2, batch_size=32)
        vec = VectorEnv(envs, [CPU] * 3, lambda event, context: None, chunk=chunk)
        vec.reset()
        germinate = [Action(Op.GERMINATE, slot=envs[0].slots[0], blueprint="norm")] * 3
        steps = vec.step([germinate[0], None, Action(Op.WAIT)])
        assert steps[1] is None  # an environment whose episode is over is not stepped
        rewards.append([s.reward for s in steps if s is not None])
        rewards[-1] += [s.observation.signals.val_accuracy for s in steps if s is not None]
    assert rewards[0] == pytest.approx(rewards[1], abs=1e-4)


def test_a_chunk_that_is_not_a_positive_count_is_refused_before_any_reset() -> None:
    """chunk=0 raised "range() arg 3 must not be zero" after every episode had been reset and
    counted; chunk=-1 was taken."""
    events: list[Event] = []
    episodes = _episodes(_data(torch.float32), events)
    for chunk in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"chunk must be an integer in \[1, "):
            reset_together(episodes, chunk)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"chunk must be an integer in \[1, "):
            step_together(episodes, [], chunk)  # type: ignore[arg-type]
    assert events == []
    envs = _growth_envs("fashion_mnist_impaired", 2)
    for chunk in (True, 2.5, 0):  # True and 2.5 were taken and refused only at reset
        with pytest.raises(ValueError, match=r"chunk must be an integer in \[1, "):
            VectorEnv(envs, [CPU] * 2, lambda event, context: None, chunk=chunk)  # type: ignore[arg-type]
