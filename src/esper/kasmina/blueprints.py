"""The blueprint registry: the one place a seed architecture is defined.

A blueprint builds a module that maps the stream at an injection point to a *residual* ``delta``
of the same shape; the seed's output is ``s = x + delta(x)``. Every blueprint zero-initializes its
last layer, so ``delta`` is exactly 0 at germination and growing a seed never changes the model's
output by itself. The action space derives blueprint indices from ``blueprint_registry.names``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina.shapes import shapes_only
from esper.leyline import InjectionSpec, Topology

Builder = Callable[[InjectionSpec], nn.Module]

MAX_NORM_GROUPS = 8
"""GroupNorm groups for CNN seeds: the largest divisor of C up to 8 (GroupNorm paper's range),
reduced until every group normalizes at least two values (a 1x1 map with one channel per group
would normalize single numbers to 0)."""

SE_REDUCTION = 4
"""Squeeze-excite bottleneck: C -> C/4 -> C, light enough for 8-channel hosts."""

BOTTLENECK_REDUCTION = 4
"""Bottleneck seeds work at C/4 channels, as in ResNet bottleneck blocks."""

LORA_RANK = 8
"""Low-rank adapter rank (capped at the model dimension)."""

MLP_EXPANSION = 2
"""Seed MLPs expand by 2x, half of the host block's 4x: a seed is meant to be small."""


def _groups(channels: int, spec: InjectionSpec) -> int:
    area = math.prod(spec.shape[1:])  # H·W of the injection point
    fits = [
        g
        for g in range(1, min(MAX_NORM_GROUPS, channels) + 1)
        if channels % g == 0 and (channels // g) * area >= 2
    ]
    if not fits:
        raise ValueError(
            f"slot {spec.slot!r} carries {channels} channel(s) of {spec.shape[1:]}: too few values "
            "for a normalization layer"
        )
    return max(fits)


class _GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that avoids a crash of torch's CPU kernel on channels_last streams.

    torch 2.13's ``native_group_norm_backward`` on the CPU dies with a segmentation fault for a
    channels_last input when no gradient is wanted for the input itself (only for the affine
    weights): exactly the ``norm`` seed in TRAINING and isolated BLENDING, whose input is the
    detached host stream. Only that case, on the CPU, takes a detour through an NCHW copy (back
    to NHWC when the input's channels were innermost); every other call is the plain layer.
    The detour does not test for channels_last: a channel slice of a wider NHWC stream (grouped
    hosts) is not channels_last-contiguous, and a 1x1 map with NHWC strides counts as
    contiguous, yet the kernel takes its crashing path for both; so the copy is a ``clone``,
    not ``contiguous()``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad or not torch.is_grad_enabled() or x.device.type != "cpu":
            return super().forward(x)
        out: Tensor = super().forward(x.clone(memory_format=torch.contiguous_format))
        return out.contiguous(memory_format=torch.channels_last) if x.stride(1) == 1 else out


def _group_norm(channels: int, spec: InjectionSpec) -> nn.GroupNorm:
    return _GroupNorm(_groups(channels, spec), channels)


M = TypeVar("M", bound=nn.Module)


def _zeroed(module: M) -> M:
    """``module`` with every parameter set to 0 (the last layer of a seed: delta starts at 0)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _zero_conv(c_in: int, c_out: int, kernel: int) -> nn.Conv2d:
    return _zeroed(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2))


@dataclass(frozen=True)
class Blueprint:
    """A registered seed architecture.

    Attributes:
        name: registry name, unique within a topology.
        topology: the host kind it fits.
        description: one line for help texts and reports.
        builder: builds the delta module for an injection point.
    """

    name: str
    topology: Topology
    description: str
    builder: Builder

    def build(self, spec: InjectionSpec) -> nn.Module:
        """Build the seed's delta module for ``spec``.

        CNN seeds hold their conv weights in ``torch.channels_last``, the layout of the CNN
        host's stream (``CNNHost``), so a seed neither converts nor slows the stream it reads.
        """
        module = self.builder(spec)
        if self.topology is Topology.CNN:
            # 4-D (conv) weights only; torch's type stubs omit the documented memory_format.
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return module

    def param_count(self, spec: InjectionSpec) -> int:
        """Real parameter count of this blueprint at ``spec`` (built by ``shapes_only``)."""
        with shapes_only():
            module = self.builder(spec)
        return sum(p.numel() for p in module.parameters())


class BlueprintRegistry:
    """Blueprints by topology and name, in registration order."""

    def __init__(self) -> None:
        self._by_topology: dict[Topology, dict[str, Blueprint]] = {t: {} for t in Topology}

    def register(
        self, name: str, topology: Topology, description: str
    ) -> Callable[[Builder], Builder]:
        """Decorator adding a builder under ``name`` for ``topology``.

        Raises:
            ValueError: if the name is already taken for that topology.
        """

        def add(builder: Builder) -> Builder:
            if name in self._by_topology[topology]:
                raise ValueError(f"blueprint {name!r} is already registered for {topology.value}")
            self._by_topology[topology][name] = Blueprint(name, topology, description, builder)
            return builder

        return add

    def _table(self, topology: Topology | str) -> dict[str, Blueprint]:
        """The blueprints of ``topology``, given as a ``Topology`` or its value (a host's
        ``kind``, ``"cnn"``).

        Raises:
            ValueError: naming the unknown topology and the accepted ones.
        """
        try:
            return self._by_topology[Topology(topology)]
        except ValueError:
            accepted = [t.value for t in Topology]
            raise ValueError(f"unknown topology {topology!r}; accepted: {accepted}") from None

    def names(self, topology: Topology | str) -> tuple[str, ...]:
        """Blueprint names for ``topology`` in registration order (the action-space order)."""
        return tuple(self._table(topology))

    def all_names(self) -> list[str]:
        """Every blueprint name of any topology, sorted (a name means one kind of module in
        either)."""
        return sorted({name for table in self._by_topology.values() for name in table})

    def get(self, name: str, topology: Topology | str) -> Blueprint:
        """Look a blueprint up.

        Raises:
            ValueError: naming the unknown blueprint (or topology) and the accepted ones.
        """
        table = self._table(topology)
        if not isinstance(name, str) or name not in table:
            raise ValueError(
                f"unknown blueprint {name!r} for a {Topology(topology).value} host; "
                f"accepted: {list(table)}"
            )
        return table[name]


blueprint_registry = BlueprintRegistry()
register = blueprint_registry.register


# --------------------------------------------------------------------------------------------
# CNN blueprints: (B, C, H, W) -> (B, C, H, W)


@register("norm", Topology.CNN, "GroupNorm of the stream with zero-initialized affine (2C params)")
def _cnn_norm(spec: InjectionSpec) -> nn.Module:
    return _zeroed(_group_norm(spec.channels, spec))


class _SqueezeExcite(nn.Module):
    """delta = x * tanh(W2 relu(W1 mean_hw(x))); W2 zero-initialized so delta starts at 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // SE_REDUCTION, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = _zeroed(nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        z = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))  # (B, C)
        return x * torch.tanh(z)[:, :, None, None]


@register("attention", Topology.CNN, "squeeze-and-excitation channel attention")
def _cnn_attention(spec: InjectionSpec) -> nn.Module:
    return _SqueezeExcite(spec.channels)


@register("depthwise", Topology.CNN, "depthwise 3x3 -> norm -> ReLU -> pointwise 1x1")
def _cnn_depthwise(spec: InjectionSpec) -> nn.Module:
    c = spec.channels
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
        _group_norm(c, spec),
        nn.ReLU(),
        _zero_conv(c, c, 1),
    )


@register("conv_light", Topology.CNN, "one 3x3 conv followed by a zero-initialized GroupNorm")
def _cnn_conv_light(spec: InjectionSpec) -> nn.Module:
    c = spec.channels
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), _zeroed(_group_norm(c, spec)))


@register("conv_heavy", Topology.CNN, "3x3 conv -> norm -> ReLU -> 3x3 conv")
def _cnn_conv_heavy(spec: InjectionSpec) -> nn.Module:
    c = spec.channels
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, bias=False),
        _group_norm(c, spec),
        nn.ReLU(),
        _zero_conv(c, c, 3),
    )


@register("bottleneck", Topology.CNN, "1x1 reduce -> 3x3 -> 1x1 expand at C/4 channels")
def _cnn_bottleneck(spec: InjectionSpec) -> nn.Module:
    c = spec.channels
    r = max(c // BOTTLENECK_REDUCTION, 1)
    return nn.Sequential(
        nn.Conv2d(c, r, 1, bias=False),
        _group_norm(r, spec),
        nn.ReLU(),
        nn.Conv2d(r, r, 3, padding=1, bias=False),
        _group_norm(r, spec),
        nn.ReLU(),
        _zero_conv(r, c, 1),
    )


# --------------------------------------------------------------------------------------------
# Transformer blueprints: (B, T, C) -> (B, T, C)


@register("norm", Topology.TRANSFORMER, "LayerNorm of the stream with zero-initialized affine")
def _tf_norm(spec: InjectionSpec) -> nn.Module:
    return _zeroed(nn.LayerNorm(spec.channels))


class _LoRA(nn.Module):
    """delta = B(A(x)) with rank r; B zero-initialized (Hu et al., 2021)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = _zeroed(nn.Linear(rank, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


@register("lora", Topology.TRANSFORMER, "low-rank adapter x -> A -> B (rank 8)")
def _tf_lora(spec: InjectionSpec) -> nn.Module:
    return _LoRA(spec.channels, min(LORA_RANK, spec.channels))


class _SeedAttention(nn.Module):
    """One causal self-attention head over the normalized stream, zero-initialized projection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = _zeroed(nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.ln(x)).split(x.shape[-1], dim=-1)  # (B, T, C) each
        return self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))


@register("attention", Topology.TRANSFORMER, "single-head causal self-attention")
def _tf_attention(spec: InjectionSpec) -> nn.Module:
    return _SeedAttention(spec.channels)


@register("mlp", Topology.TRANSFORMER, "LayerNorm -> Linear(2C) -> GELU -> Linear(C)")
def _tf_mlp(spec: InjectionSpec) -> nn.Module:
    d = spec.channels
    return nn.Sequential(
        nn.LayerNorm(d),
        nn.Linear(d, MLP_EXPANSION * d),
        nn.GELU(),
        _zeroed(nn.Linear(MLP_EXPANSION * d, d)),
    )
