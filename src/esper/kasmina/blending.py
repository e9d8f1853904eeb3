"""α schedules, the straight-through estimator for TRAINING, and the gated blend.

Blending follows DESIGN §2: ``out = lerp(h, s, α)`` where ``s = x_in + delta(x_in)`` is the seed's
output and ``x_in`` is the seed's input (``h.detach()`` while the seed is isolated, ``h`` once it
may co-adapt). ``lerp`` with α = 0 returns ``h`` bit for bit, and with α = 1 returns ``s``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from esper.leyline import AlphaCurve, InjectionSpec, Topology
from esper.leyline.thresholds import GATE_INIT_LOGIT

SIGMOID_STEEPNESS = 10.0
"""Logistic ramp steepness over the normalized schedule: ~99% of the change in the middle 90%."""


def curve_value(curve: AlphaCurve, u: float) -> float:
    """Fraction of the way from start to target at progress ``u`` in [0, 1]; 0 at 0, 1 at 1."""
    u = min(max(u, 0.0), 1.0)
    if curve is AlphaCurve.LINEAR:
        return u
    if curve is AlphaCurve.COSINE:
        return 0.5 * (1.0 - math.cos(math.pi * u))
    k = SIGMOID_STEEPNESS
    lo, hi = 1.0 / (1.0 + math.exp(k / 2)), 1.0 / (1.0 + math.exp(-k / 2))
    return (1.0 / (1.0 + math.exp(-k * (u - 0.5))) - lo) / (hi - lo)


@dataclass
class AlphaSchedule:
    """Moves α from ``start`` to ``target`` over ``tempo`` ticks (epochs) along ``curve``.

    The last tick sets α to ``target`` exactly, whatever rounding the curve does.
    """

    start: float
    target: float
    tempo: int
    curve: AlphaCurve
    tick: int = 0

    def __post_init__(self) -> None:
        if self.tempo < 1:
            raise ValueError(f"tempo must be >= 1 epoch, got {self.tempo}")

    @property
    def done(self) -> bool:
        return self.tick >= self.tempo

    def value(self) -> float:
        if self.done:
            return self.target
        return self.start + (self.target - self.start) * curve_value(
            self.curve, self.tick / self.tempo
        )

    def step(self) -> float:
        """Advance one tick and return the new α."""
        self.tick = min(self.tick + 1, self.tempo)
        return self.value()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "curve": self.curve.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlphaSchedule:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: for values of the wrong type or out of range.
        """
        start, target, tempo, tick = data["start"], data["target"], data["tempo"], data["tick"]
        numbers = (start, target)
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers) or not all(
            0.0 <= v <= 1.0 for v in numbers
        ):
            raise ValueError(
                f"α schedule start/target must be in [0, 1], got {start!r}, {target!r}"
            )
        counts = (tempo, tick)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in counts) or not (
            0 <= tick <= tempo
        ):
            raise ValueError(f"α schedule needs ints 0 <= tick <= tempo, got {tick!r}, {tempo!r}")
        return cls(float(start), float(target), tempo, AlphaCurve(data["curve"]), tick)


TRAINING_PROXIMAL = 1.0
"""κ of the proximal term that bounds a TRAINING seed (see ``straight_through``). Measured on
fashion_mnist_impaired (conv_light and depthwise seeds, 4 epochs): κ = 0 (plain
straight-through) gave probe contributions of −27 to −41 points, κ = 1 gave +0.05 to +2.0,
κ = 10 about 0, κ = 0.3 larger but sometimes negative values."""


class _StraightThrough(torch.autograd.Function):
    """Forward returns the host stream unchanged; backward hands its gradient to the seed too,
    plus the gradient of a proximal term ``κ/(2B) Σ_i ‖δ_i‖²`` on the seed's output δ."""

    @staticmethod
    def forward(ctx: Any, host: Tensor, delta: Tensor, kappa: float) -> Tensor:
        ctx.kappa = kappa
        ctx.save_for_backward(delta)
        return host.view_as(host)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        (delta,) = ctx.saved_tensors
        return grad, torch.add(grad, delta, alpha=ctx.kappa / delta.shape[0]), None


def straight_through(host: Tensor, delta: Tensor, kappa: float = TRAINING_PROXIMAL) -> Tensor:
    """Output ``host`` exactly; train the seed's residual ``delta`` as if it were added.

    The seed gets the host's gradient ``g`` at ``h`` (the straight-through estimator
    ``h + (s - s.detach())`` of DESIGN §2, without its two elementwise passes) plus the
    gradient of ``κ/(2B) Σ_i ‖δ_i‖²``. Why the extra term: ``g`` does not depend on δ, so
    plain straight-through minimizes the linear surrogate ⟨g, δ⟩, which has no minimum — the
    seed's output grows without bound and blending it in destroys the model. With the proximal
    term the surrogate's minimum is ``δ_i = −∇_h ℓ_i / κ``: a bounded step along the host's
    functional gradient, as in gradient boosting. ``kappa=0`` gives plain straight-through.
    """
    out: Tensor = _StraightThrough.apply(host, delta, kappa)  # type: ignore[no-untyped-call]
    return out


class BlendGate(nn.Module):
    """Per-sample (CNN) or per-position (transformer) gate in (0, 1) that scales α.

    CNN: ``σ(w · mean_hw(x) + b)`` -> (B, 1, 1, 1). Transformer: ``σ(w · x_t + b)`` -> (B, T, 1);
    it is per position because pooling over the sequence would leak future tokens backwards.
    The weight starts at zero and the bias at ``GATE_INIT_LOGIT``, so the gate opens nearly fully.
    """

    def __init__(self, spec: InjectionSpec) -> None:
        super().__init__()
        self.topology = spec.topology
        self.linear = nn.Linear(spec.channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, GATE_INIT_LOGIT)

    def forward(self, x: Tensor) -> Tensor:
        if self.topology is Topology.CNN:
            return torch.sigmoid(self.linear(x.mean(dim=(2, 3))))[:, :, None, None]
        return torch.sigmoid(self.linear(x))
