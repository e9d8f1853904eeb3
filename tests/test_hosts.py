"""Hosts: segmented forward equals the plain forward, shapes, configs and their errors."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import cnn_host, expected_output, grow, host_input, transformer_host
from esper.kasmina import (
    CNNHost,
    CNNHostConfig,
    MorphogeneticModel,
    SegmentedHost,
    TransformerHost,
    TransformerHostConfig,
    build_host,
    host_config_from_dict,
)
from esper.kasmina.hosts import MaxPool2x2, closed_form, use_torch_layers
from esper.leyline import BLENDED_STAGES, SeedStage, Topology
from esper.leyline.data import Dataset
from esper.tasks import TASKS

HOSTS = {
    "cnn_3pt": lambda: cnn_host(),
    "cnn_deep_3pt": lambda: cnn_host(depth=6, input_size=16),
    "cnn_4pt": lambda: cnn_host(depth=4, n_points=4, input_size=16),
    "cnn_impaired": lambda: cnn_host(base_channels=2, kernel_size=1),
    "tf_3pt": lambda: transformer_host(),
    "tf_deep_3pt": lambda: transformer_host(n_layer=6),
    "tf_2pt": lambda: transformer_host(n_layer=4, n_points=2),
}


def _segmented(host: SegmentedHost, x: torch.Tensor) -> torch.Tensor:
    names = [spec.slot for spec in host.injection_points]
    h, prev = x, None
    for name in names:
        h = host.forward_to_segment(name, h, from_point=prev)
        prev = name
    return host.forward_from_segment(names[-1], h)


@pytest.mark.parametrize("make", HOSTS.values(), ids=HOSTS.keys())
def test_host_segments_equal_plain_forward(make) -> None:
    host = make().eval()
    x = host_input(host)
    torch.testing.assert_close(_segmented(host, x), host(x), rtol=0, atol=0)


@pytest.mark.parametrize("make", HOSTS.values(), ids=HOSTS.keys())
def test_injection_shapes_match_stream(make) -> None:
    host = make().eval()
    x = host_input(host, batch=2)
    h, prev = x, None
    for spec in host.injection_points:
        h = host.forward_to_segment(spec.slot, h, from_point=prev)
        expected = spec.shape if spec.topology is Topology.CNN else (x.shape[1], spec.channels)
        assert tuple(h.shape[1:]) == expected
        prev = spec.slot


def test_slot_names_follow_point_count() -> None:
    assert [s.slot for s in cnn_host().injection_points] == ["early", "mid", "late"]
    deep = cnn_host(depth=4, n_points=4, input_size=16)
    assert [s.slot for s in deep.injection_points] == ["early", "mid_1", "mid_2", "late"]
    assert [s.slot for s in transformer_host(n_layer=4, n_points=2).injection_points] == [
        "early",
        "late",
    ]


def test_reference_cnn_host_size() -> None:
    # The benchmark host of the issue: 8 base channels, CIFAR-shaped input, ~6.4k parameters.
    host = CNNHost(CNNHostConfig(base_channels=8, input_size=32))
    assert sum(p.numel() for p in host.parameters()) == 6418


def _relu_then_pool(host: CNNHost) -> torch.nn.Sequential:
    """The textbook block order, conv -> norm -> ReLU -> pool, sharing ``host``'s layers."""
    layers: list[torch.nn.Module] = []
    for segment in host.segments:
        for block in segment:
            conv, norm, *rest = block
            pools = [m for m in rest if isinstance(m, torch.nn.MaxPool2d)]
            layers += [conv, norm, torch.nn.ReLU(), *pools]
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("make", [HOSTS["cnn_3pt"], HOSTS["cnn_impaired"]], ids=["cnn", "impaired"])
def test_cnn_blocks_pool_before_relu_bit_identically(make) -> None:
    """Pooling before the ReLU (a quarter of the ReLU's work) changes no bit of the output or of
    any gradient, against the textbook order run on the same layers; inputs are shifted so that
    some pool windows hold only negatives."""
    host = make().train()
    orders = {tuple(type(m).__name__ for m in block) for seg in host.segments for block in seg}
    assert ("Conv2d", "BatchNorm2d", "MaxPool2x2", "ReLU") in orders
    textbook = _relu_then_pool(host)
    x = host_input(host, batch=8) - 0.5
    results = []
    for forward in (host, lambda x: host._head(textbook(x))):
        host.zero_grad()
        out = forward(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in host.parameters()])
    assert len(results[0]) == len(results[1]) > 1
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_max_pool_without_gradients_equals_the_kernel() -> None:
    """Under no_grad the four-view maximum gives torch's 2×2 max-pool values, on ties (values on
    a coarse grid), NaN and ±inf, odd sizes, unbatched inputs and both layouts; with gradients
    it is torch's kernel, whose backward sends a tie's gradient to one position; inputs the
    kernel rejects (nothing to pool, bool) fail as they do there."""
    torch.manual_seed(0)
    pool = MaxPool2x2()
    for size in ((8, 8), (7, 5), (2, 3)):
        x = torch.randint(-3, 3, (4, 3, *size)).float()
        x[0, 0, 0, 0], x[1, 2, 1, 1], x[2, 1, 1, 0] = math.nan, -math.inf, math.inf
        for y in (x, x.contiguous(memory_format=torch.channels_last), x[0]):
            with torch.no_grad():
                out = pool(y)
            expected = F.max_pool2d(y, 2)
            assert out.shape == expected.shape
            assert torch.equal(out.isnan(), expected.isnan())
            assert torch.equal(out.nan_to_num(0.0), expected.nan_to_num(0.0))
        for layout in (torch.contiguous_format, torch.channels_last):
            z = torch.randint(0, 2, (2, 3, *size)).float().contiguous(memory_format=layout)
            z.requires_grad_()
            g = torch.randn(2, 3, size[0] // 2, size[1] // 2)
            (mine,) = torch.autograd.grad(pool(z), z, g)
            (theirs,) = torch.autograd.grad(F.max_pool2d(z, 2), z, g)
            assert torch.equal(mine, theirs)
            assert (mine != 0).sum() == g.numel()  # one position per window, ties included
    for bad in (torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 4, 4, dtype=torch.bool)):
        with pytest.raises(RuntimeError), torch.no_grad():
            F.max_pool2d(bad, 2)
        with pytest.raises(RuntimeError), torch.no_grad():
            pool(bad)


def _impaired_on_grey(
    dtype: torch.dtype = torch.float32, weights=(0.7, -0.5, 0.3, -0.2)
) -> CNNHost:
    """An impaired host on one-channel 9×11 images (odd sizes: the pools drop a row and a
    column) whose first block's normalised channels have scales of both signs: conv weights
    ``weights``, norm weights (γ) of both signs and a nonzero bias (β)."""
    torch.manual_seed(0)
    config = CNNHostConfig(in_channels=1, input_size=9, base_channels=4, kernel_size=1, depth=3)
    host = CNNHost(config).to(dtype)
    conv, norm = host.segments[0][0][0], host.segments[0][0][1]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights).view(4, 1, 1, 1))
        norm.weight.copy_(torch.tensor([1.2, 0.8, -0.5, -1.1]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.05]))
    return host


def _pass(host: SegmentedHost, x: torch.Tensor) -> list[torch.Tensor]:
    """Output, every parameter's gradient and every buffer after one forward and backward."""
    host.zero_grad()
    out = host(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach()] + [p.grad.clone() for p in host.parameters()] + list(host.buffers())


def _with_moved_statistics(host: CNNHost, dtype: torch.dtype) -> tuple[CNNHost, CNNHost]:
    """``host`` and a copy computed by torch's layers, both after three training batches moved
    their running statistics off the initial values."""
    layers = use_torch_layers(copy.deepcopy(host))
    for model in (host, layers):
        for i in range(3):
            torch.manual_seed(i)
            model.train()(torch.randn(16, 1, 9, 11, dtype=dtype) + 0.5)
    return host, layers


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_channel_first_block_in_closed_form_equals_its_layers(dtype, mode) -> None:
    """An impaired host's first block on one-channel images, computed in closed form, gives its
    layers' output, parameter gradients and running statistics (training: batch statistics;
    evaluation: running ones), up to rounding, for channels whose scale is positive (the
    window's maximum) and negative (its minimum)."""
    host, layers = _with_moved_statistics(_impaired_on_grey(dtype), dtype)
    first = host.segments[0][0]
    x = torch.randn(16, 1, 9, 11, dtype=dtype) * 2 + 0.3
    host.train(mode == "train")
    layers.train(mode == "train")
    assert closed_form([first], x) and not closed_form([layers.segments[0][0]], x)
    scale = first[1].weight * first[0].weight.view(-1)  # the sign of each channel's scale
    assert (scale > 0).any() and (scale < 0).any()
    # float32: the conv weight's gradient goes through the norm's cancellations either way
    rtol, atol = (1e-12, 1e-12) if dtype == torch.float64 else (1e-3, 1e-4)
    mine, theirs = _pass(host, x), _pass(layers, x)
    assert len(mine) == len(theirs) > 10
    for a, b in zip(mine, theirs, strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)


def test_a_zero_conv_weight_gives_the_layers_output() -> None:
    """A channel whose conv weight is exactly 0 is the constant β in both (its weight gradient
    sits on the pool's kink there, where the two take different subgradients)."""
    dtype = torch.float64
    host, layers = _with_moved_statistics(_impaired_on_grey(dtype, (0.7, -0.5, 0.0, 0.3)), dtype)
    x = torch.randn(16, 1, 9, 11, dtype=dtype)
    for mode in (True, False):
        outputs = [model.train(mode)(x) for model in (host, layers)]
        assert torch.allclose(*outputs, rtol=1e-12, atol=1e-12)
    for a, b in zip(host.buffers(), layers.buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-12, atol=1e-12)


def test_closed_form_only_where_it_is_the_same_function() -> None:
    """Inputs that need a gradient, other channel counts, an unbatched, empty, non-finite or
    half-precision input, a bias, a larger kernel, a norm without momentum or affine weights,
    norms of another eps or momentum, mixed modes, hooks and autocast run the layers."""
    host = _impaired_on_grey()
    first = host.segments[0][0]
    x = torch.randn(4, 1, 9, 11)
    assert closed_form([first], x)
    assert not closed_form([first], x.clone().requires_grad_())
    with torch.no_grad():
        assert closed_form([first], x.clone().requires_grad_())
    for bad in (math.inf, -math.inf, math.nan):
        y = x.clone()
        y[1, 0, 2, 3] = bad
        assert not closed_form([first], y)
    y = x.clone()
    y[0, 0, 0, 0], y[2, 0, 1, 1] = math.inf, -math.inf  # a sum of NaN
    assert not closed_form([first], y)
    # finite, but the sum overflows float32: the layers compute it (the check is conservative)
    assert not closed_form([first], torch.full((4, 1, 9, 11), 3e38))
    assert closed_form([first], torch.full((4, 1, 9, 11), 3e34))
    assert not closed_form([first], torch.randn(0, 1, 9, 11))
    assert not closed_form([first], torch.randn(4, 2, 9, 11))
    assert not closed_form([first], torch.randn(1, 9, 11))
    assert not closed_form([first], torch.randn(4, 1, 1, 9))  # nothing to pool
    assert not closed_form([first], x.double())
    assert not closed_form([copy.deepcopy(first).bfloat16()], x.bfloat16())
    assert not closed_form([host.segments[1][0]], x)  # four input channels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not closed_form([first], x)
    other = _impaired_on_grey()
    assert closed_form([first, other.segments[0][0]], torch.randn(4, 2, 9, 11))
    other.segments[0][0][1].eps = 1e-3
    assert not closed_form([first, other.segments[0][0]], torch.randn(4, 2, 9, 11))
    other = _impaired_on_grey()
    other.segments[0][0][1].momentum = 0.2  # one momentum updates every block's statistics
    assert not closed_form([first, other.segments[0][0]], torch.randn(4, 2, 9, 11))
    other = _impaired_on_grey().eval()
    assert not closed_form([first, other.segments[0][0]], torch.randn(4, 2, 9, 11))
    changes = [
        lambda b: setattr(b[1], "momentum", None),
        lambda b: setattr(b[1], "affine", False),
        lambda b: setattr(b[1], "track_running_stats", False),
        lambda b: setattr(b[0], "bias", torch.nn.Parameter(torch.zeros(4))),
        lambda b: setattr(b[0], "kernel_size", (3, 3)),
        lambda b: b[0].register_forward_pre_hook(lambda module, args: None),
        lambda b: b[3].register_forward_hook(lambda module, args, out: None),
        lambda b: b.register_forward_hook(lambda module, args, out: None),
    ]
    for change in changes:
        block = copy.deepcopy(first)
        change(block)
        assert not closed_form([block], x)


def _params(host: SegmentedHost) -> int:
    return sum(p.numel() for p in host.parameters())


def _images(channels: int, size: int, classes: int) -> Dataset:
    x, y = torch.zeros(2, channels, size, size), torch.tensor([0, 1])
    return Dataset("images", x, y, x, y, x, y, classes, (channels, size, size))


def test_task_hosts_fill_data_fields() -> None:
    fashion = _images(1, 28, 10)
    impaired = TASKS["fashion_mnist_impaired"].build_host(fashion)
    assert isinstance(impaired, CNNHost)
    assert impaired.config == CNNHostConfig(
        in_channels=1, input_size=28, num_classes=10, base_channels=4, depth=3, kernel_size=1
    )
    assert _params(impaired) == 390
    assert _params(TASKS["synthetic"].build_host(_images(3, 8, 10))) > 0
    tokens = torch.zeros(2, 16, dtype=torch.long)
    text = Dataset("text", tokens, tokens, tokens, tokens, tokens, tokens, 30, (16,))
    lm = TASKS["text_lm"].build_host(text)
    assert isinstance(lm, TransformerHost)
    assert (lm.config.vocab_size, lm.config.block_size, lm.config.n_embd) == (30, 16, 64)


def test_width_override_sets_base_channels_and_n_embd() -> None:
    fashion = _images(1, 28, 10)
    wide = TASKS["fashion_mnist_impaired"].build_host(fashion, width=8)
    assert isinstance(wide, CNNHost) and wide.config.base_channels == 8
    assert wide.config.kernel_size == 1  # the task's other choices stay
    assert _params(wide) > 390
    assert [s.channels for s in wide.injection_points] == [8, 16, 32]
    tokens = torch.zeros(2, 16, dtype=torch.long)
    text = Dataset("text", tokens, tokens, tokens, tokens, tokens, tokens, 30, (16,))
    lm = TASKS["text_lm"].build_host(text, width=32)
    assert isinstance(lm, TransformerHost) and lm.config.n_embd == 32
    assert [s.channels for s in lm.injection_points] == [32, 32, 32]
    with pytest.raises(ValueError, match=r"n_embd \(30\) must be divisible by n_head \(4\)"):
        TASKS["text_lm"].build_host(text, width=30)


def test_build_host_picks_the_class_from_the_config() -> None:
    assert isinstance(build_host(CNNHostConfig()), CNNHost)
    assert isinstance(build_host(TransformerHostConfig(vocab_size=5)), TransformerHost)


def test_host_config_from_dict_is_strict() -> None:
    values = dataclasses.asdict(CNNHostConfig(base_channels=4))
    assert host_config_from_dict("cnn", values) == CNNHostConfig(base_channels=4)
    unknown = r"unknown key\(s\) \['width'\] in cnn host config; accepted: base_channels"
    with pytest.raises(ValueError, match=unknown):
        host_config_from_dict("cnn", values | {"width": 4})
    del values["depth"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['depth'\] in cnn host config"):
        host_config_from_dict("cnn", values)
    with pytest.raises(ValueError, match=r"cnn host config must be a table of settings, got \[4\]"):
        host_config_from_dict("cnn", [4])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cnn host config.depth must be an integer, got \"3\""):
        host_config_from_dict("cnn", values | {"depth": "3"})
    with pytest.raises(ValueError, match=r"unknown host kind 'rnn'; known: \['cnn', 'transformer'"):
        host_config_from_dict("rnn", values)


SEEDED_STAGES = [s for s in SeedStage if s is not SeedStage.DORMANT]

ORACLE_TOLERANCE = 1e-10
"""The oracle blends as ``h + α·g·δ(h)``, the model with ``lerp``: the same maths with different
rounding, which float32 convolutions amplify to ~1e-5 (more in channels_last, whose kernels sum
in another order); in float64 the two agree to ~1e-13, so the models run in float64."""


def _check_segment_consistency(
    host: SegmentedHost, blueprint: str, stage: SeedStage, blend_mode: str
) -> None:
    """The model's forward equals the stage-semantics oracle with a seed of ``stage`` in the
    last slot and fossilized/blending seeds in the slots before it (in float64: see
    ``ORACLE_TOLERANCE``)."""
    names = [s.slot for s in host.injection_points]
    model = MorphogeneticModel(host.double(), names)
    grow(model, names[-1], blueprint, stage, blend_mode=blend_mode)
    grow(model, names[0], blueprint, SeedStage.FOSSILIZED, blend_mode=blend_mode)
    if len(names) > 2:
        grow(model, names[1], blueprint, SeedStage.BLENDING, blend_mode=blend_mode)
    assert model.reports()[names[-1]].stage is stage
    x = host_input(host)
    x = x.double() if x.is_floating_point() else x
    model.eval()
    with torch.no_grad():
        expected = expected_output(model, x)
        torch.testing.assert_close(model(x), expected, rtol=ORACLE_TOLERANCE, atol=ORACLE_TOLERANCE)
        if stage not in BLENDED_STAGES:
            # With only this seed, the segmented model is the plain host forward, bit for bit.
            alone = MorphogeneticModel(copy.deepcopy(host), names)
            grow(alone, names[-1], blueprint, stage, blend_mode=blend_mode)
            alone.eval()
            assert torch.equal(alone(x), alone.host(x))


@pytest.mark.parametrize("blend_mode", ["add", "gated"])
@pytest.mark.parametrize("stage", SEEDED_STAGES, ids=lambda s: s.value)
def test_cnn_segment_consistency(stage: SeedStage, blend_mode: str) -> None:
    _check_segment_consistency(HOSTS["cnn_3pt"](), "conv_light", stage, blend_mode)


@pytest.mark.parametrize("blend_mode", ["add", "gated"])
@pytest.mark.parametrize("stage", SEEDED_STAGES, ids=lambda s: s.value)
def test_transformer_segment_consistency(stage: SeedStage, blend_mode: str) -> None:
    _check_segment_consistency(HOSTS["tf_3pt"](), "mlp", stage, blend_mode)


@pytest.mark.parametrize("stage", SEEDED_STAGES, ids=lambda s: s.value)
@pytest.mark.parametrize(
    ("make", "blueprint"),
    [(HOSTS["cnn_4pt"], "bottleneck"), (HOSTS["tf_2pt"], "attention")],
    ids=["cnn_4pt", "tf_2pt"],
)
def test_segment_consistency_other_point_counts(make, blueprint: str, stage: SeedStage) -> None:
    _check_segment_consistency(make(), blueprint, stage, "add")


def test_dormant_model_is_the_host() -> None:
    host = cnn_host().eval()
    model = MorphogeneticModel(host, ["late", "early", "mid"]).eval()
    x = host_input(host)
    assert torch.equal(model(x), host(x))
    assert model.order == ("early", "mid", "late")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, r"n_embd \(30\) must be divisible by n_head \(4\)"),
        ({"n_layer": 4, "n_points": 3}, r"n_layer \(4\) must be a multiple of n_points \(3\)"),
        ({"n_head": 0}, r"n_head must be an integer in \[1, 65536\], got 0"),
        ({"vocab_size": 2.5}, r"vocab_size must be an integer in \[1, 65536\], got 2.5"),
        ({"block_size": True}, r"block_size must be an integer in \[1, 65536\], got True"),
        ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\), got 1.5"),
        ({"dropout": "0.1"}, r"dropout must be a number in \[0, 1\), got '0.1'"),
        ({"dropout": False}, r"dropout must be a number in \[0, 1\), got False"),  # not loaded
        ({"dropout": np.float32(0.1)}, r"dropout must be a number in \[0, 1\)"),  # not saved
    ],
)
def test_transformer_validates_construction(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        TransformerHostConfig(**{"vocab_size": 10, **kwargs})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 4, "n_points": 3}, r"depth \(4\) must be a multiple of n_points \(3\)"),
        ({"kernel_size": 2}, "kernel_size must be odd"),
        ({"base_channels": -1}, r"base_channels must be an integer in \[1, 65536\], got -1"),
        ({"in_channels": 0}, r"in_channels must be an integer in \[1, 65536\], got 0"),
        ({"num_classes": "10"}, r"num_classes must be an integer in \[1, 65536\], got '10'"),
        ({"input_size": 8.0}, r"input_size must be an integer in \[1, 65536\], got 8.0"),
        # Sizes that cannot fit are refused up front, naming the limit.
        ({"base_channels": 10**9}, r"base_channels must be an integer in \[1, 65536\], got 10+"),
    ],
)
def test_cnn_validates_construction(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        CNNHostConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_configs_are_frozen_and_widths_replace_one_field() -> None:
    config = CNNHostConfig(base_channels=4, kernel_size=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.base_channels = 8  # type: ignore[misc]
    assert config.with_width(16) == CNNHostConfig(base_channels=16, kernel_size=1)
    with pytest.raises(ValueError, match=r"base_channels must be an integer in \[1, 65536\]"):
        config.with_width(0)
    tf = TransformerHostConfig(vocab_size=9, n_head=2)
    assert tf.with_width(8) == TransformerHostConfig(vocab_size=9, n_head=2, n_embd=8)


def test_transformer_rejects_long_sequences() -> None:
    host = transformer_host()
    with pytest.raises(ValueError, match="exceeds block_size 8"):
        host(torch.zeros(1, 9, dtype=torch.long))


def test_unknown_slots_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown or no slots \['middle'\]; this host has"):
        MorphogeneticModel(cnn_host(), ["early", "middle"])
    model = MorphogeneticModel(cnn_host(), ["early"])
    with pytest.raises(ValueError, match=r"unknown slot 'late'; enabled slots: \['early'\]"):
        model.germinate("late", "norm")
    with pytest.raises(ValueError, match=r"unknown slot \['early'\]; enabled"):  # unhashable
        model.slot(["early"])  # type: ignore[arg-type]


def test_transformer_tied_head() -> None:
    host = transformer_host()
    assert host.lm_head.weight is host.tok_emb.weight


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: MorphogeneticModel(torch.nn.Linear(2, 2), ["mid"]), TypeError, "got Linear"),
        (lambda: build_host("cnn"), TypeError, "takes a CNNHostConfig or a Transformer.*got str"),
        (
            lambda: MorphogeneticModel(cnn_host(), ["mid"], embargo_epochs=True),
            ValueError,
            "embargo_epochs must be a positive integer, got True",
        ),
        (
            lambda: MorphogeneticModel(cnn_host(), ["mid"], isolate_blending="no"),
            ValueError,
            "isolate_blending must be True, False or None, got 'no'",
        ),
        (
            lambda: CNNHostConfig(base_channels=1, depth=18, n_points=3),
            ValueError,
            r"1 \* 2\*\*17, must be at most 65536",
        ),
    ],
)
def test_what_the_model_and_host_constructors_refuse(build, error, message) -> None:
    """A Linear layer or a string ended in AttributeErrors ("no attribute 'injection_points'",
    "'str' object has no attribute 'block_size'"); "no" was stored and taken for True, True for
    one epoch; 17 doublings of one channel built 131,072-channel blocks (the process was
    killed)."""
    with pytest.raises(error, match=message):
        build()


def test_slots_may_be_any_iterable() -> None:
    """A generator was used up by the slot check, leaving a model with no slots."""
    model = MorphogeneticModel(cnn_host(), (s for s in ["late", "mid"]))
    assert model.order == ("mid", "late")


def test_inputs_a_host_cannot_take_are_one_clear_error() -> None:
    """A CNN image too small for its pools failed deep in torch ("Output size is too small");
    token ids outside the vocabulary gave "index out of range in self"."""
    cnn = CNNHost(CNNHostConfig(in_channels=1, input_size=9, base_channels=4, depth=3))
    assert cnn(torch.randn(2, 1, 9, 11)).shape == (2, 10)  # other sizes run, as globally pooled
    for shape in ((2, 1, 4, 9), (2, 3, 9, 9), (1, 9, 9)):
        with pytest.raises(
            ValueError, match=r"expects images of shape \(B, 1, H, W\) with H, W >= 8"
        ):
            cnn(torch.randn(*shape))
    gpt = TransformerHost(TransformerHostConfig(vocab_size=11, block_size=8, n_embd=8, n_head=2))
    assert gpt(torch.tensor([[0, 10, 3]])).shape == (1, 3, 11)
    for ids in ([[0, 11]], [[-1, 2]]):
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 11\) \(vocab_size\)"):
            gpt(torch.tensor(ids))
    for dtype in (torch.float32, torch.uint8, torch.int16, torch.bool):  # embeddings: int32/64
        with pytest.raises(ValueError, match=rf"ids of dtype int64 or int32, got {dtype}"):
            gpt(torch.tensor([[0, 1]], dtype=dtype))
    assert gpt(torch.tensor([[0, 10]], dtype=torch.int32)).shape == (1, 2, 11)
    for dtype in (torch.int64, torch.uint8, torch.bool):  # a torch error inside the first conv
        with pytest.raises(ValueError, match=rf"expects floating-point images, got {dtype}"):
            cnn(torch.ones(2, 1, 9, 9, dtype=dtype))
