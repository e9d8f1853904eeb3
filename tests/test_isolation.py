"""Gradient isolation: what flows where in TRAINING, BLENDING and FOSSILIZED."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import cnn_host, grow, host_input, host_target, transformer_host
from esper.kasmina import MorphogeneticModel
from esper.kasmina.blending import TRAINING_PROXIMAL, straight_through
from esper.leyline import SeedStage


def _loss(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    out = model(x)
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


def _host_grads(model: MorphogeneticModel) -> list[Tensor]:
    return [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for p in model.host.parameters()
    ]


def _oracle_host_grads(
    model: MorphogeneticModel, x: Tensor, y: Tensor, slot: str, seed_as_constant: bool
) -> list[Tensor]:
    """Host gradients of an independent re-implementation of the blended forward.

    With ``seed_as_constant`` the seed's output is precomputed and detached: the host then gets
    exactly the gradient of ``lerp(h, const, α)`` and nothing through the seed.
    """
    clone = copy.deepcopy(model)
    clone.zero_grad(set_to_none=True)
    s = clone.slot(slot)
    assert s.seed is not None
    h, prev = x, None
    for name in clone.order:
        h = clone.host.forward_to_segment(name, h, from_point=prev)
        if name == slot:
            seed_out = h + s.seed(h)
            weight = s.alpha if s.gate is None else s.alpha * s.gate(h)
            if seed_as_constant:
                seed_out = seed_out.detach()
                weight = weight.detach() if isinstance(weight, Tensor) else weight
            h = torch.lerp(h, seed_out, weight)
        prev = name
    out = clone.host.forward_from_segment(prev, h)
    F.cross_entropy(out.flatten(0, -2), y.flatten()).backward()
    return _host_grads(clone)


@pytest.mark.parametrize("make", [cnn_host, transformer_host], ids=["cnn", "transformer"])
@pytest.mark.parametrize("blueprint", ["norm", "attention"])
def test_training_seed_is_invisible_to_host(make, blueprint: str) -> None:
    host = make()
    bare = copy.deepcopy(host)
    model = MorphogeneticModel(host, ["early", "mid", "late"])
    grow(model, "mid", blueprint, SeedStage.TRAINING)
    x, y = host_input(host), host_target(host)

    out = model(x)
    assert torch.equal(out, bare(x)), "TRAINING must not change the output at all"

    _loss(model, x, y).backward()
    _loss(bare, x, y).backward()
    for p_model, p_bare in zip(model.host.parameters(), bare.parameters(), strict=True):
        assert torch.equal(p_model.grad, p_bare.grad), "seed leaked gradient into the host"

    seed_grads = [p.grad for p in model.seed_parameters("mid")]
    assert all(g is not None for g in seed_grads)
    assert any(g.abs().sum() > 0 for g in seed_grads), "seed must learn in TRAINING"


def test_training_seed_gets_straight_through_gradient() -> None:
    """Seed gradients equal those of the textbook estimator ``h + (s - s.detach())`` plus the
    explicit proximal penalty ``κ/(2B) Σ‖δ‖²`` on the seed's output."""
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    grow(model, "mid", "conv_heavy", SeedStage.TRAINING)
    x, y = host_input(model.host), host_target(model.host)
    _loss(model, x, y).backward()
    ours = [p.grad.clone() for p in model.seed_parameters("mid")]

    clone = copy.deepcopy(model)
    clone.zero_grad(set_to_none=True)
    seed = clone.slot("mid").seed
    h, prev, penalty = x, None, None
    for name in clone.order:
        h = clone.host.forward_to_segment(name, h, from_point=prev)
        if name == "mid":
            delta = seed(h.detach())
            s = h.detach() + delta
            h = h + (s - s.detach())
            penalty = TRAINING_PROXIMAL / (2 * len(x)) * delta.pow(2).sum()
        prev = name
    loss = F.cross_entropy(clone.host.forward_from_segment(prev, h), y) + penalty
    loss.backward()
    for a, b in zip(ours, clone.seed_parameters("mid"), strict=True):
        # Same terms summed in another order: float32 rounding only.
        torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-6)


def test_proximal_term_bounds_the_seed_output() -> None:
    """On a linear loss Σ w·out the surrogate's minimum is δ* = −B·w/κ; plain straight-through
    (κ = 0) has none and the seed's output grows without bound."""
    b, kappa = 4, 2.0
    h = torch.randn(b, 3)
    w = torch.randn(b, 3)
    for k in (kappa, 0.0):
        delta = torch.zeros(b, 3, requires_grad=True)
        opt = torch.optim.SGD([delta], lr=0.5)
        for _ in range(400):
            opt.zero_grad()
            out = straight_through(h, delta, kappa=k)
            assert torch.equal(out, h)
            (w * out).sum().backward()
            opt.step()
        if k:
            torch.testing.assert_close(delta.detach(), -b * w / k, rtol=1e-4, atol=1e-4)
        else:
            # 400 steps of 0.5·w: linear growth without bound (float32 accumulation tolerance).
            torch.testing.assert_close(delta.detach(), -0.5 * 400 * w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stage", [SeedStage.BLENDING, SeedStage.HOLDING])
@pytest.mark.parametrize("blend_mode", ["add", "gated"])
def test_cnn_blending_sends_no_gradient_into_host(stage: SeedStage, blend_mode: str) -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    assert model.isolate_blending  # CNN default
    grow(model, "mid", "conv_light", stage, blend_mode=blend_mode, alpha=0.4)
    x, y = host_input(model.host), host_target(model.host)
    _loss(model, x, y).backward()
    # Host gradients are exactly those of lerp(h, constant, α·gate): nothing through the seed.
    for ours, oracle in zip(
        _host_grads(model),
        _oracle_host_grads(model, x, y, "mid", seed_as_constant=True),
        strict=True,
    ):
        torch.testing.assert_close(ours, oracle, rtol=1e-5, atol=1e-7)
    # Direct check: the seed's input carries no graph back to the host.
    slot = model.slot("mid")
    captured = {}
    handle = slot.seed.register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0]))
    model(x)
    handle.remove()
    assert not captured["x"].requires_grad
    assert any(p.grad.abs().sum() > 0 for p in model.seed_parameters("mid"))


@pytest.mark.parametrize("isolate", [False, True])
def test_transformer_blending_switch(isolate: bool) -> None:
    """Transformer seeds co-adapt by default; ``isolate_blending=True`` isolates them like CNNs."""
    host = transformer_host()
    model = MorphogeneticModel(
        host, ["early", "mid", "late"], isolate_blending=isolate if isolate else None
    )
    assert model.isolate_blending is isolate
    grow(model, "mid", "mlp", SeedStage.BLENDING, alpha=0.5)
    x, y = host_input(host), host_target(host)
    _loss(model, x, y).backward()
    ours = _host_grads(model)
    constant = _oracle_host_grads(model, x, y, "mid", seed_as_constant=True)
    through = _oracle_host_grads(model, x, y, "mid", seed_as_constant=False)
    matches = constant if isolate else through
    differs = through if isolate else constant
    for a, b in zip(ours, matches, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert any(
        not torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(ours, differs, strict=True)
    )


def test_fossilized_seed_trains_with_host() -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    grow(model, "mid", "conv_light", SeedStage.FOSSILIZED, alpha=0.8)
    x, y = host_input(model.host), host_target(model.host)
    _loss(model, x, y).backward()
    ours = _host_grads(model)
    through = _oracle_host_grads(model, x, y, "mid", seed_as_constant=False)
    constant = _oracle_host_grads(model, x, y, "mid", seed_as_constant=True)
    for a, b in zip(ours, through, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # Parameters upstream of the seed receive gradient through it.
    assert any(
        not torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(ours, constant, strict=True)
    )
