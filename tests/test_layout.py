"""channels_last: CNN hosts, seeds and image data are NHWC, train like the NCHW layout within
float tolerance, and keep the layout through checkpoints, rollback and ``.to``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import grow
from esper.data import (
    BatchStream,
    Dataset,
    augment_crop_flip,
    images_channels_last,
    load_dataset,
    make_synthetic,
)
from esper.kasmina import (
    CNNHost,
    CNNHostConfig,
    MorphogeneticModel,
    blueprint_registry,
    capture_state,
    restore_state,
)
from esper.kasmina.checkpoint import model_bytes, model_from_bytes
from esper.leyline import Action, Op, SeedStage, Topology
from esper.leyline.config import HostTraining
from esper.tolaria import Trainer

SLOTS = ["early", "mid", "late"]
SHAPE = (3, 16, 16)
"""Three channels: a one-channel batch is both NCHW- and NHWC-contiguous, telling nothing."""

FLOAT64_TOLERANCE = 1e-10
"""The two layouts sum convolutions in different orders; in float64 that stays near 1e-15."""

FLOAT32_TOLERANCE = 1e-4
"""float32 rounding (~1e-7 per operation) grows through six AdamW steps, whose update
``m / sqrt(v)`` amplifies relative differences in small gradients."""


def _is_nhwc(t: Tensor) -> bool:
    """Stored channels last: channel stride 1 (a 1x1 map is the same memory in both layouts)."""
    return t.is_contiguous(memory_format=torch.channels_last) and (
        t.stride(1) == 1 or t.shape[2:].numel() == 1
    )


def _conv_weights(module: nn.Module) -> list[Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def _assert_nhwc(module: nn.Module) -> None:
    weights = _conv_weights(module)
    bad = [tuple(p.shape) for p in weights if not _is_nhwc(p)]
    assert not bad, f"4-D parameters not in channels_last: {bad}"


def _model(dtype: torch.dtype = torch.float32) -> MorphogeneticModel:
    torch.manual_seed(0)
    host = CNNHost(CNNHostConfig(in_channels=SHAPE[0], input_size=SHAPE[1], base_channels=8))
    return MorphogeneticModel(host, SLOTS, gate_mode="permissive").to(dtype)


# ---------------------------------------------------------------------------- parameters


def test_cnn_host_holds_its_conv_weights_channels_last() -> None:
    host = CNNHost(CNNHostConfig(in_channels=1, input_size=28, base_channels=8))
    weights = _conv_weights(host)
    assert len(weights) == 3
    _assert_nhwc(host)
    assert not any(p.is_contiguous() for p in weights if p.shape[1] > 1)  # not NCHW too


@pytest.mark.parametrize("stage", [SeedStage.TRAINING, SeedStage.BLENDING], ids=lambda s: s.value)
@pytest.mark.parametrize("blueprint", blueprint_registry.names(Topology.CNN))
def test_cnn_seeds_are_channels_last_and_train(blueprint: str, stage: SeedStage) -> None:
    """Also the regression test of torch's GroupNorm crash on a detached channels_last stream
    (``blueprints._GroupNorm``): the seed's input is detached in both stages."""
    model = _model(torch.float64)
    grow(model, "early", blueprint, stage)
    assert model.isolate_blending
    _assert_nhwc(model)
    x = torch.randn(4, *SHAPE, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    grads = [p.grad for p in model.seed_parameters("early")]
    assert all(g is not None and g.dtype == torch.float64 for g in grads)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_norm_seed_trains_on_a_one_pixel_channels_last_stream() -> None:
    """A 1x1 map with channels_last strides counts as contiguous, yet crashed GroupNorm too."""
    host = CNNHost(CNNHostConfig(in_channels=3, input_size=8, base_channels=4))
    model = MorphogeneticModel(host, SLOTS)
    assert model.slot("late").spec.shape[1:] == (1, 1)
    grow(model, "late", "norm", SeedStage.TRAINING)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    assert all(p.grad is not None for p in model.seed_parameters("late"))


def test_norm_seed_trains_on_a_channel_slice_of_a_wider_stream() -> None:
    """Grouped hosts hand each seed its channel slice of one wide NHWC stream: not
    channels_last-contiguous, yet GroupNorm's crashing path too."""
    spec = _model().slot("early").spec
    seed = blueprint_registry.get("norm", Topology.CNN).build(spec)
    wide = torch.randn(4, 2 * spec.channels, *spec.shape[1:])
    x = wide.contiguous(memory_format=torch.channels_last)[:, spec.channels :]
    assert not x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = seed(x)
    assert _is_nhwc(out)
    out.sum().backward()
    assert all(p.grad is not None for p in seed.parameters())


def test_to_device_and_dtype_keep_the_layout() -> None:
    model = _model()
    grow(model, "mid", "conv_heavy", SeedStage.BLENDING)
    for moved in (model.to(torch.float64), model.to("cpu"), model.to(torch.device("cpu"))):
        _assert_nhwc(moved)


# ---------------------------------------------------------------------------- equality


def _old_layout(model: MorphogeneticModel) -> MorphogeneticModel:
    """A copy of ``model`` with every 4-D parameter in the default NCHW layout."""
    old = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    assert all(p.is_contiguous() and not _is_nhwc(p) for p in _conv_weights(old) if p.shape[1] > 1)
    return old


def _train(model: MorphogeneticModel, batches: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """AdamW steps over ``batches``, an epoch boundary (α moves) half-way; the outputs."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    outputs = []
    for i, (x, y) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        F.cross_entropy(out, y).backward()
        optimizer.step()
        outputs.append(out.detach())
        if i == len(batches) // 2:
            model.step_epoch()
    return outputs


@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    [(torch.float64, FLOAT64_TOLERANCE), (torch.float32, FLOAT32_TOLERANCE)],
    ids=["float64", "float32"],
)
def test_channels_last_trains_like_the_old_layout(dtype: torch.dtype, tolerance: float) -> None:
    new = _model(dtype)
    grow(new, "early", "conv_light", SeedStage.TRAINING)
    grow(new, "mid", "conv_heavy", SeedStage.BLENDING, alpha=0.25)
    old = _old_layout(new)
    gen = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(16, *SHAPE, generator=gen, dtype=dtype),
            torch.randint(0, 10, (16,), generator=gen),
        )
        for _ in range(6)
    ]
    nhwc = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in data]
    assert all(_is_nhwc(x) for x, _ in nhwc)

    new_out, old_out = _train(new, nhwc), _train(old, data)

    _assert_nhwc(new)  # AdamW's updates kept the layout
    for a, b in zip(new_out, old_out, strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    for (name, a), b in zip(new.named_parameters(), old.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance, msg=name)
    assert not torch.equal(new.host.head.weight, _model(dtype).host.head.weight)  # it trained


# ---------------------------------------------------------------------------- data


def test_load_dataset_gives_channels_last_images_and_batches() -> None:
    data = load_dataset("synthetic")
    assert _is_nhwc(data.x_train) and _is_nhwc(data.x_val)
    assert not data.x_train.is_contiguous()
    reference = make_synthetic()
    assert torch.equal(data.x_train, reference.x_train)  # the values are unchanged
    stream = BatchStream(data.x_train, data.y_train, 32, seed=0)
    for _ in range(stream.batches_per_pass + 1):  # across a pass boundary
        assert _is_nhwc(stream.next_batch()[0])
    assert _is_nhwc(data.x_val[:16])  # validation batches are slices


def test_augmented_batches_are_channels_last_with_the_same_values() -> None:
    x = torch.randn(8, *SHAPE)
    for given in (x, x.contiguous(memory_format=torch.channels_last)):
        out = augment_crop_flip(given, torch.Generator().manual_seed(3))
        assert _is_nhwc(out)
        torch.testing.assert_close(
            out, augment_crop_flip(x, torch.Generator().manual_seed(3)), rtol=0, atol=0
        )
    stream = BatchStream(x, torch.zeros(8, dtype=torch.int64), 4, seed=0, augment=True)
    assert _is_nhwc(stream.next_batch()[0])


def test_token_data_is_left_alone() -> None:
    tokens = torch.randint(0, 5, (6, 4))
    data = Dataset(
        "tokens", tokens, tokens, tokens, tokens, tokens, tokens, num_classes=5, input_shape=(4,)
    )
    assert images_channels_last(data) is data


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_bytes_restore_the_layout_and_outputs() -> None:
    model = _model()
    grow(model, "early", "conv_light", SeedStage.TRAINING)
    grow(model, "late", "depthwise", SeedStage.FOSSILIZED)
    loaded = model_from_bytes(model_bytes(model), "in memory")
    _assert_nhwc(loaded)
    x = torch.randn(4, *SHAPE).contiguous(memory_format=torch.channels_last)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_captured_state_restores_seeds_channels_last() -> None:
    model = _model()
    grow(model, "mid", "conv_heavy", SeedStage.HOLDING)
    state = capture_state(model)
    model.prune("mid")
    restore_state(model, state)
    assert model.slot("mid").stage is SeedStage.HOLDING
    _assert_nhwc(model)


def test_governor_rollback_keeps_the_layout_of_weights_and_optimizer_state() -> None:
    torch.manual_seed(0)
    data = images_channels_last(make_synthetic(n_train=128, n_val=64, input_shape=SHAPE))
    host = CNNHost(CNNHostConfig(num_classes=data.num_classes, input_size=SHAPE[1]))
    model = MorphogeneticModel(host, SLOTS)
    stream = BatchStream(data.x_train, data.y_train, 32, seed=0)
    config = HostTraining("synthetic", epochs=6, batch_size=32, lr=3e-3, seed_lr=3e-3)
    trainer = Trainer(model, data, stream, config, lambda event: None)
    trainer.train_step()
    trainer.apply(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
    trainer.apply(Action(Op.ADVANCE, slot="mid"))
    trainer.train_step()  # healthy: the governor snapshots
    with torch.no_grad():
        next(model.host.parameters()).fill_(float("nan"))
    assert trainer.train_step().panic is not None  # rolled back
    _assert_nhwc(model)
    state = trainer.optimizer.state
    moments = [s["exp_avg"] for p, s in state.items() if p.dim() == 4]
    assert moments and all(_is_nhwc(m) for m in moments)
