"""Training FLOPs (``esper.tolaria.flops.step_flops``) against counts derived by hand.

Convention (torch's ``FlopCounterMode``): 2 FLOPs per multiply-add of a matrix product or
convolution; nothing else counts. For ``y = x @ W`` with ``x`` (B, i) and ``W`` (i, o):
forward 2·B·i·o; backward 2·B·i·o for the weight gradient plus 2·B·i·o for the input gradient,
which autograd computes only when ``x`` requires a gradient: not for a first layer fed data,
nor for a seed fed the host's detached stream.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import grow
from esper.data.small import make_synthetic
from esper.kasmina import MorphogeneticModel, TransformerHost, TransformerHostConfig
from esper.leyline import SeedStage
from esper.tasks import get_task
from esper.tolaria.flops import step_flops

B = 6


def _labels(classes: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, classes, (B, *shape))


def test_linear_on_data_costs_forward_plus_weight_gradient() -> None:
    i, o = 7, 5
    model = nn.Linear(i, o, bias=False)
    # forward 2·B·i·o; backward only the weight gradient (2·B·i·o): the data input needs none
    assert step_flops(model, torch.randn(B, i), _labels(o)) == 4 * B * i * o == 840


def test_an_inner_layer_also_pays_its_input_gradient() -> None:
    i, h, o = 7, 4, 5
    model = nn.Sequential(nn.Linear(i, h, bias=False), nn.Linear(h, o, bias=False))
    forward = 2 * B * (i * h + h * o)
    backward = 2 * B * i * h + 4 * B * h * o  # the second layer's input is the first's output
    assert step_flops(model, torch.randn(B, i), _labels(o)) == forward + backward


def test_counting_under_no_grad_counts_the_backward_too() -> None:
    """Called inside ``torch.no_grad()`` (an evaluation loop) the backward raised "element 0
    of tensors does not require grad"."""
    i, o = 7, 5
    model = nn.Linear(i, o, bias=False)
    with torch.no_grad():
        assert step_flops(model, torch.randn(B, i), _labels(o)) == 4 * B * i * o


def test_convolutions_by_formula() -> None:
    c_in, c_mid, c_out, k, size = 3, 4, 5, 3, 6
    model = nn.Sequential(
        nn.Conv2d(c_in, c_mid, k, padding=k // 2, bias=False),
        nn.Conv2d(c_mid, c_out, k, padding=k // 2, bias=False),
        nn.AdaptiveAvgPool2d(1),  # not counted: no multiply-adds of a product
        nn.Flatten(),
    )
    pixels = size * size  # padding keeps the size
    first, second = 2 * B * pixels * c_in * c_mid * k * k, 2 * B * pixels * c_mid * c_out * k * k
    expected = first + second + first + 2 * second  # backward: 1x the first, 2x the second
    assert step_flops(model, torch.randn(B, c_in, size, size), _labels(c_out)) == expected


def test_text_targets_per_token() -> None:
    vocab, d, t = 11, 8, 5
    model = nn.Sequential(nn.Embedding(vocab, d), nn.Linear(d, vocab, bias=False))
    tokens = torch.randint(0, vocab, (B, t))
    # (B, T, d) @ (d, V): forward 2·B·T·d·V; backward weight and input gradient (the embedding
    # output requires one), the embedding lookup and its backward count nothing
    assert step_flops(model, tokens, _labels(vocab, t)) == 6 * B * t * d * vocab


def test_the_model_is_left_untouched() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3)
    ).train()
    x, y = torch.randn(B, 4), _labels(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    step_flops(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()  # BatchNorm's running statistics included
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from a forked generator
    assert model.training


def test_existing_gradients_are_kept() -> None:
    model = nn.Linear(3, 2, bias=False)
    model.weight.grad = torch.ones_like(model.weight)
    assert step_flops(model, torch.randn(B, 3), _labels(2)) == 4 * B * 3 * 2
    assert torch.equal(model.weight.grad, torch.ones_like(model.weight))


def _synthetic_model() -> tuple[MorphogeneticModel, torch.Tensor, torch.Tensor]:
    data = make_synthetic(n_train=B, n_val=2)
    host = get_task("synthetic").build_host(data)  # 3x8x8 in, 4 classes, 4-8-16 channels
    return MorphogeneticModel(host, ["early", "mid", "late"]), data.x_train, data.y_train


def _synthetic_host_flops() -> int:
    """3x3 convs 3->4 at 8x8, 4->8 at 4x4, 8->16 at 2x2 (each block pools by 2), head 16->4."""
    convs = [3 * 4 * 9 * 64, 4 * 8 * 9 * 16, 8 * 16 * 9 * 4]
    forward = 2 * B * (sum(convs) + 16 * 4)
    backward = 2 * B * convs[0] + 4 * B * (sum(convs[1:]) + 16 * 4)
    return forward + backward


def test_host_flops_by_formula() -> None:
    model, x, y = _synthetic_model()
    assert step_flops(model, x, y) == _synthetic_host_flops()


def test_a_seed_counts_once_it_runs() -> None:
    model, x, y = _synthetic_model()
    base = step_flops(model, x, y)
    # conv_light at mid: one 3x3 conv 8->8 on the 2x2 stream; forward 2·B·4·8·8·9
    seed_forward = 2 * B * 4 * 8 * 8 * 9
    grow(model, "mid", "conv_light", SeedStage.GERMINATED)
    assert step_flops(model, x, y) == base  # a GERMINATED seed does not run
    model.advance("mid")
    # TRAINING: the seed reads the detached stream, so only its weight gradient is added
    assert step_flops(model, x, y) == base + 2 * seed_forward
    assert all(p.grad is None for p in model.parameters())


def test_a_fossilized_seed_pays_its_input_gradient() -> None:
    model, x, y = _synthetic_model()
    base = step_flops(model, x, y)
    grow(model, "mid", "conv_light", SeedStage.FOSSILIZED)
    seed_forward = 2 * B * 4 * 8 * 8 * 9
    assert step_flops(model, x, y) == base + 3 * seed_forward  # it trains with the host


def test_impaired_hosts_first_layer_counts_as_a_convolution() -> None:
    data = make_synthetic(n_train=B, n_val=2, input_shape=(1, 28, 28), num_classes=10)
    host = get_task("fashion_mnist_impaired").build_host(data)  # 1x1 convs, 4-8-16 channels
    model = MorphogeneticModel(host, ["early", "mid", "late"])
    convs = [1 * 4 * 28 * 28, 4 * 8 * 14 * 14, 8 * 16 * 7 * 7]
    forward = 2 * B * (sum(convs) + 16 * 10)
    backward = 2 * B * convs[0] + 4 * B * (sum(convs[1:]) + 16 * 10)
    assert step_flops(model, data.x_train, data.y_train) == forward + backward


def _transformer(
    b: int, t: int, d: int, vocab: int, n_layer: int
) -> tuple[MorphogeneticModel, torch.Tensor, torch.Tensor]:
    config = TransformerHostConfig(vocab_size=vocab, block_size=t, n_embd=d, n_layer=n_layer)
    model = MorphogeneticModel(TransformerHost(config), ["early", "mid", "late"])
    return model, torch.randint(0, vocab, (b, t)), torch.randint(0, vocab, (b, t))


def test_transformer_counts_attention_on_the_cpu() -> None:
    # torch counts only the CUDA attention kernels; step_flops gives the CPU one their formula
    b, t, d, vocab, n_layer = 2, 16, 32, 30, 3
    model, tokens, targets = _transformer(b, t, d, vocab, n_layer)
    # per block qkv 3d², projection d², MLP 8d²; the tied head d·V. Every linear reads a
    # stream that requires a gradient: backward is 2x forward
    linear = 2 * b * t * (n_layer * 12 * d * d + d * vocab)
    # QKᵀ and the weighted sum 2·(2·B·T²·d) forward; backward recomputes QKᵀ plus four products
    attention = n_layer * (4 + 10) * b * t * t * d
    assert step_flops(model, tokens, targets) == 3 * linear + attention


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_counts_equal_cpu_counts() -> None:
    cuda = torch.device("cuda")
    model, tokens, targets = _transformer(2, 16, 32, 30, 3)
    on_cpu = step_flops(model, tokens, targets)
    assert step_flops(model.to(cuda), tokens.to(cuda), targets.to(cuda)) == on_cpu
    cnn, x, y = _synthetic_model()
    on_cpu = step_flops(cnn, x, y)
    assert step_flops(cnn.to(cuda), x.to(cuda), y.to(cuda)) == on_cpu
