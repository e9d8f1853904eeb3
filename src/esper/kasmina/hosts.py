"""Host networks with a segmented forward around named injection points.

A host exposes its injection points in execution order and two functions that split the forward
pass at them. ``forward`` itself is written as a plain pass, independent of the segment code, so
that tests can check the segmented path against it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.leyline import InjectionSpec, Topology, slot_names
from esper.leyline.config import check_int, decode, is_plain_number, require

MAX_HOST_SIZE = 65_536
"""Largest channel count (a CNN's last block's included), dimension, depth or vocabulary a host
accepts: beyond it no host fits in memory, and checking up front names the limit instead of
failing in torch. It bounds each size, not their product: a host within it can still need more
memory than a machine has (the run commands check that, ``esper.study.checks.check_fits``)."""


def _check_sizes(config: Any, *names: str) -> None:
    """Each named field of ``config`` is an integer in ``[1, MAX_HOST_SIZE]``."""
    for name in names:
        check_int(name, getattr(config, name), 1, MAX_HOST_SIZE)


def _divisors(value: int) -> list[int]:
    return [d for d in range(1, value + 1) if value % d == 0]


def _require_multiple(name: str, value: int, of: str, by: int) -> None:
    require(
        value % by == 0,
        f"{name} ({value}) must be a multiple of {of} ({by}) so every injection point ends a "
        f"segment of equal length; valid {of} values: {_divisors(value)}",
    )


@dataclass(frozen=True)
class CNNHostConfig:
    """Everything that shapes a ``CNNHost``; the checkpoint manifest stores it as a dict.

    Attributes:
        in_channels: input image channels.
        input_size: input height = width in pixels; sets the injection shapes.
        num_classes: classifier outputs.
        base_channels: channels of the first block, doubling every block; the host's width.
        depth: number of conv blocks.
        kernel_size: odd conv kernel size (1 makes a deliberately impaired host).
        n_points: injection points; must divide ``depth``.
    """

    in_channels: int = 3
    input_size: int = 32
    num_classes: int = 10
    base_channels: int = 8
    depth: int = 3
    kernel_size: int = 3
    n_points: int = 3

    def __post_init__(self) -> None:
        _check_sizes(self, *(f.name for f in fields(self)))
        require(
            self.kernel_size % 2 == 1,
            f"kernel_size must be odd so padding keeps the size, got {self.kernel_size}",
        )
        _require_multiple("depth", self.depth, "n_points", self.n_points)
        widest = self.base_channels << (self.depth - 1)  # channels double every block
        require(
            widest <= MAX_HOST_SIZE,
            f"the last block's channels, base_channels * 2**(depth - 1) = "
            f"{self.base_channels} * 2**{self.depth - 1}, must be at most {MAX_HOST_SIZE}",
        )

    @property
    def width(self) -> int:
        """The host's width: ``base_channels``."""
        return self.base_channels

    @property
    def width_step(self) -> int:
        """The widths this host takes are the multiples of this: every width."""
        return 1

    def with_width(self, width: int) -> CNNHostConfig:
        """This config with ``base_channels = width``."""
        return replace(self, base_channels=width)


@dataclass(frozen=True)
class TransformerHostConfig:
    """Everything that shapes a ``TransformerHost``; the checkpoint manifest stores it as a dict.

    Attributes:
        vocab_size: number of tokens.
        block_size: longest sequence the position embedding covers.
        n_embd: model dimension, the host's width; must be divisible by ``n_head``.
        n_head: attention heads.
        n_layer: transformer blocks; must be divisible by ``n_points``.
        n_points: injection points.
        dropout: dropout probability in attention and MLP, in [0, 1).
    """

    vocab_size: int
    block_size: int = 64
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 3
    n_points: int = 3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_sizes(self, *(f.name for f in fields(self) if f.name != "dropout"))
        require(
            self.n_embd % self.n_head == 0,
            f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); valid "
            f"n_head values: {_divisors(self.n_embd)}",
        )
        _require_multiple("n_layer", self.n_layer, "n_points", self.n_points)
        require(
            is_plain_number(self.dropout) and 0.0 <= self.dropout < 1.0,  # False, numpy: unsaved
            f"dropout must be a number in [0, 1), got {self.dropout!r}",
        )

    @property
    def width(self) -> int:
        """The host's width: ``n_embd``."""
        return self.n_embd

    @property
    def width_step(self) -> int:
        """The widths this host takes are the multiples of this: ``n_head``."""
        return self.n_head

    def with_width(self, width: int) -> TransformerHostConfig:
        """This config with ``n_embd = width`` (still divisible by ``n_head``)."""
        return replace(self, n_embd=width)


HostConfig = CNNHostConfig | TransformerHostConfig
"""A host's config; its type decides the host class."""


class SegmentedHost(nn.Module, ABC):
    """The host contract: injection points in execution order and a forward split at them.

    Subclasses keep their ``config``, call ``_init_segments`` with their blocks and injection
    points, and implement ``_stem`` (input -> stream) and ``_head``
    (stream -> output). ``forward`` runs the flat block list, independent of the segment code, and
    running every segment with identity slots must equal it. Segments must not modify their input
    in place: a slot in TRAINING hands the next segment a view of the stream it also keeps for the
    seed's gradient.
    """

    kind: str
    config: HostConfig
    segments: nn.ModuleList
    _blocks: tuple[nn.Module, ...]

    @abstractmethod
    def _stem(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def _head(self, h: Tensor) -> Tensor: ...

    def _init_segments(self, blocks: list[nn.Module], specs: tuple[InjectionSpec, ...]) -> None:
        """One segment of equally many ``blocks`` per injection point of ``specs``, in order."""
        per = len(blocks) // len(specs)
        self.segments = nn.ModuleList(
            nn.Sequential(*blocks[i * per : (i + 1) * per]) for i in range(len(specs))
        )
        self._blocks = tuple(blocks)  # flat view for the plain forward (registered in segments)
        self._specs = specs
        self._index = {spec.slot: i for i, spec in enumerate(specs)}

    @property
    def injection_points(self) -> tuple[InjectionSpec, ...]:
        return self._specs

    def _point_index(self, point: str) -> int:
        if point not in self._index:
            raise ValueError(
                f"unknown injection point {point!r}; this host has {list(self._index)}"
            )
        return self._index[point]

    def _run_segments(self, x: Tensor, start: int, stop: int) -> Tensor:
        # Index one by one: slicing a ModuleList builds a new ModuleList on every call.
        for i in range(start, stop):
            x = self.segments[i](x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        h = self._stem(x)
        for block in self._blocks:
            h = block(h)
        return self._head(h)

    def forward_to_segment(self, point: str, x: Tensor, from_point: str | None = None) -> Tensor:
        """Run from the input (or from ``from_point``'s output) up to ``point``'s output."""
        if from_point is None:
            x, start = self._stem(x), 0
        else:
            start = self._point_index(from_point) + 1
        return self._run_segments(x, start, self._point_index(point) + 1)

    def forward_from_segment(self, point: str, h: Tensor) -> Tensor:
        """Run from ``point``'s output to the model output."""
        h = self._run_segments(h, self._point_index(point) + 1, len(self.segments))
        return self._head(h)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)``; where no gradient is needed (validation, counterfactuals), the
    maximum of the four strided views of the windows' corners.

    The same values as torch's kernel (a maximum is exact, NaN propagates either way; only the
    sign of a zero maximum and NaN payload bits may differ), 1.2–3.8× faster on this CPU for the
    4–16 channels of an impaired host (torch's kernel vectorises over channels). With autograd
    the kernel stays: its backward sends a tie's gradient to one position, where the views'
    ``maximum`` would split it. Inputs the kernel would reject or that have nothing to pool go
    to the kernel too.
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        views = (
            not (torch.is_grad_enabled() and x.requires_grad)
            and x.dim() in (3, 4)
            and x.is_floating_point()
            and min(x.shape[-2:]) >= 2
        )
        if not views:
            return super().forward(x)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # odd sizes drop their last row/col
        top = torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2])
        bottom = torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2])
        return torch.maximum(top, bottom)


class ConvBlock(nn.Sequential):
    """One ``CNNHost`` block: ``Conv2d`` → ``BatchNorm2d`` → ``MaxPool2x2`` (while there is
    something to pool) → ReLU.

    A block whose convolution is a 1×1 of one channel without a bias (an impaired host's first
    block on grayscale images), given an input that needs no gradient, is computed in closed
    form by ``one_channel_blocks``; every other block and input runs its layers one by one.
    """

    def forward(self, x: Tensor) -> Tensor:
        if closed_form([self], x):
            return one_channel_blocks([self], x)
        return super().forward(x)  # type: ignore[no-untyped-call]


def closed_form(blocks: Sequence[nn.Module], x: Tensor) -> bool:
    """Whether ``one_channel_blocks(blocks, x)`` computes these blocks.

    Each block must be a ``ConvBlock`` of a bias-free 1×1 ``nn.Conv2d`` of one channel, a batch
    norm with an affine transform, running statistics and a momentum, a 2×2 pool and a ReLU, all
    in one mode (training or evaluation), with one ``eps`` and one momentum, and no hooks on
    these layers (the closed form calls none of them); ``x`` must be a non-empty, finite float32
    or float64 CPU batch ``(B, len(blocks), H, W)`` of the layers' dtype, ``H, W >= 2``, that
    needs no gradient, outside autocast. (A non-finite value would reach other blocks' channels
    through the product's zero coefficients, ``0 · inf``.) ``torch.func.vmap`` over the closed
    form is not supported: its extremes are written with ``out=``.
    """
    if not (
        x.dim() == 4
        and x.shape[0] > 0
        and x.shape[1] == len(blocks)
        and min(x.shape[-2:]) >= 2
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not torch.is_autocast_enabled("cpu")
    ):
        return False
    training, settings = blocks[0].training, set()
    for block in blocks:
        if not (isinstance(block, ConvBlock) and len(block) == 4):
            return False
        conv, norm, pool, relu = block
        ok = (
            type(conv) is nn.Conv2d
            and conv.in_channels == 1
            and conv.kernel_size == (1, 1)
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
            and conv.padding in ((0, 0), "valid")
            and conv.bias is None
            and conv.weight.dtype == x.dtype
            and type(norm) is nn.BatchNorm2d
            and norm.affine
            and norm.track_running_stats
            and norm.momentum is not None
            and norm.weight.dtype == x.dtype
            and norm.training == training
            and type(pool) is MaxPool2x2
            and type(relu) is nn.ReLU
            and not any(m._forward_hooks or m._forward_pre_hooks for m in (block, *block))
        )
        if not ok:
            return False
        settings.add((norm.eps, norm.momentum))
    # a non-finite value makes the sum non-finite (inf + x = inf, inf - inf = NaN), and a sum of
    # finite values that overflows only sends the batch to the layers: 16 us against 1.2 ms for
    # `isfinite(x).all()` on 128 x 4 x 28 x 28 (7 % of a PPO round)
    return len(settings) == 1 and math.isfinite(float(x.sum()))


def one_channel_blocks(blocks: Sequence[nn.Sequential], x: Tensor) -> Tensor:
    """k blocks of a 1×1 convolution of one channel, batch norm, 2×2 max-pool and ReLU, each on
    its own input channel of ``x`` ``(B, k, H, W)``, in closed form; ``closed_form(blocks, x)``
    must hold.

    Output channel c of such a convolution is ``w_c · x``: its batch mean and variance are
    ``w_c·μ`` and ``w_c²·σ²`` of the input's, so the normalised channel is the affine
    ``a_c·x + b_c`` (training: ``a_c = γ_c·w_c / sqrt(w_c²·σ² + eps)``, ``b_c = β_c − a_c·μ``;
    evaluation: the running statistics in their place). A max-pool of an affine map is the map of
    the window's maximum when ``a_c > 0`` and of its minimum otherwise, and the input needs no
    gradient, so the pools run once on the input channel and the parameters' gradients flow
    through ``a`` and ``b`` alone. Running statistics are updated in each block's norm as
    ``nn.BatchNorm2d`` would (the variance unbiased). The same function as the layers, up to
    floating-point rounding (float64: ~1e-13); where ``a_c`` is exactly 0 the pool has a kink in
    ``a_c``, and the gradient takes the window minimum's side where torch's pool takes the
    first position of the tie (both are subgradients). On this CPU, one thread, an impaired
    host's first block on 28×28 images ran 2.9× faster than its layers with the convolution
    computed as the broadcast product it is (their fastest form measured here; torch's own
    convolution is slower) in training (forward and backward, batch 128: 1.37 vs 4.12 ms) and
    2.7× in evaluation (500 images: 2.17 vs 5.82 ms); paired medians of 15 interleaved rounds.

    Returns:
        ``(B, k·C, H // 2, W // 2)`` in channels_last: block i's C channels at ``i·C``.
    """
    k = len(blocks)
    convs = [cast(nn.Conv2d, block[0]) for block in blocks]
    norms = [cast(nn.BatchNorm2d, block[1]) for block in blocks]
    w = torch.stack([conv.weight.view(-1) for conv in convs])  # (k, C)
    gamma = torch.stack([norm.weight for norm in norms])
    beta = torch.stack([norm.bias for norm in norms])
    eps = norms[0].eps
    if norms[0].training:
        # two passes over each channel plane: torch.var took 7x longer here
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).square().mean(dim=(0, 2, 3)).view(k, 1)
        mean = mean.view(k, 1)
        _update_running_stats(norms, w.detach() * mean, w.detach() ** 2 * var, x.numel() // k)
        scale = gamma * w * torch.rsqrt(w * w * var + eps)
        shift = beta - scale * mean
    else:
        running_mean = torch.stack(norm_buffers(norms, "running_mean"))
        inverse = torch.rsqrt(torch.stack(norm_buffers(norms, "running_var")) + eps)
        scale = gamma * w * inverse
        shift = beta - gamma * running_mean * inverse
    # Each window's maximum and minimum, written straight into one row per output position:
    # (B·h·w, 2k) (stacking and reordering them afterwards took twice as long)
    b, h, w_ = x.shape[0], x.shape[2] // 2, x.shape[3] // 2
    extremes = x.new_empty(b, h, w_, k, 2)
    corners = [x[..., i : 2 * h : 2, j : 2 * w_ : 2] for i in (0, 1) for j in (0, 1)]
    into = extremes.permute(0, 3, 1, 2, 4)  # (B, k, h, w, 2), the corners' order
    for pick, column in ((torch.maximum, 0), (torch.minimum, 1)):
        pick(pick(corners[0], corners[1]), pick(corners[2], corners[3]), out=into[..., column])
    extremes = extremes.view(-1, 2 * k)
    # Channel c reads its window's maximum where scale > 0, its minimum elsewhere: one product
    # with a block-diagonal (2k, k·C) matrix writes every channel of every block in NHWC order.
    positive = scale > 0
    rows = torch.stack([scale.where(positive, 0.0), scale.where(~positive, 0.0)], dim=1)
    diagonal = torch.block_diag(*rows)  # type: ignore[no-untyped-call]
    out = torch.relu(torch.addmm(shift.reshape(-1), extremes, diagonal))
    return out.view(b, h, w_, -1).permute(0, 3, 1, 2)  # NHWC memory, NCHW shape


def _update_running_stats(
    norms: Sequence[nn.BatchNorm2d], mean: Tensor, var: Tensor, count: int
) -> None:
    """``nn.BatchNorm2d``'s running-statistics update from a batch's per-channel ``mean`` and
    biased ``var`` over ``count`` values per channel, one row per norm (all of one momentum),
    as one multi-tensor call per statistic: on CUDA one kernel launch each, whatever the number
    of norms."""
    unbiased = var * (count / (count - 1))
    momentum = cast(float, norms[0].momentum)
    with torch.no_grad():
        torch._foreach_lerp_(norm_buffers(norms, "running_mean"), list(mean), momentum)
        torch._foreach_lerp_(norm_buffers(norms, "running_var"), list(unbiased), momentum)
        torch._foreach_add_(norm_buffers(norms, "num_batches_tracked"), 1)


def norm_buffers(norms: Sequence[nn.Module], name: str) -> list[Tensor]:
    """Each batch norm's buffer ``name`` (``running_mean``, ``running_var`` or
    ``num_batches_tracked``), in order: what a multi-tensor update of k norms takes."""
    return [cast(Tensor, getattr(norm, name)) for norm in norms]


def use_torch_layers(module: nn.Module) -> nn.Module:
    """``module`` with every ``MaxPool2x2`` and ``ConvBlock`` in it computed by torch's own
    ``nn.MaxPool2d`` and ``nn.Sequential`` (in place; neither adds state, so parameters and
    state-dict keys stay): for a FLOP counter, which would see the closed form as a few small
    products instead of the convolution, and for benchmarks of the path before these layers."""
    for layer in module.modules():
        if isinstance(layer, MaxPool2x2):
            layer.__class__ = nn.MaxPool2d  # type: ignore[assignment]
        elif isinstance(layer, ConvBlock):
            layer.__class__ = nn.Sequential  # type: ignore[assignment]
    return module


class CNNHost(SegmentedHost):
    """A small convolutional classifier: blocks of conv → BatchNorm → ReLU → 2×2 max-pool.

    Each block pools before its ReLU: ReLU is monotone, so max-pool then ReLU is the same function
    as ReLU then max-pool, and gives bit-identical gradients (a window whose maximum is ≤ 0 sends
    zero gradient either way), while the ReLU touches a quarter of the values. That cut an
    impaired host's block (batch norm, ReLU, pool; forward and backward) from 14.1 to 8.3 ms.

    Channels double every block; a global average pool and a linear head follow. Injection points
    sit at the ends of every ``depth // n_points`` blocks (after the pool). Impaired hosts for
    growth experiments are the same class with few channels and ``kernel_size=1``.

    The conv weights are held in ``torch.channels_last`` from construction: fed channels_last
    batches (as ``esper.data.load_dataset`` provides them), every activation stays NHWC, which
    CPU convolution kernels run ~1.5x faster than NCHW (``benchmarks/envs.py --section raw``).
    Inputs in the default layout give the same results, converted at the first convolution.
    A one-channel input is the same memory in both layouts; an impaired host's 1×1 first block
    on it runs in closed form (``one_channel_blocks``) when the input needs no gradient. Without
    autograd the pools take the maximum of strided views (``MaxPool2x2``).
    """

    kind = Topology.CNN.value
    config: CNNHostConfig

    def __init__(self, config: CNNHostConfig) -> None:
        super().__init__()
        self.config = config
        k, per = config.kernel_size, config.depth // config.n_points
        names = slot_names(config.n_points)
        blocks: list[nn.Module] = []
        specs = []
        channels, size = config.in_channels, config.input_size
        for i in range(config.depth):
            out = config.base_channels * 2**i
            conv = nn.Conv2d(channels, out, k, padding=k // 2, bias=False)
            layers: list[nn.Module] = [conv, nn.BatchNorm2d(out)]
            if size >= 2:  # pool while there is something to pool
                layers.append(MaxPool2x2())
                size //= 2
            layers.append(nn.ReLU())
            blocks.append(ConvBlock(*layers))
            channels = out
            if (i + 1) % per == 0:
                specs.append(InjectionSpec(names[i // per], out, (out, size, size), Topology.CNN))
        self._init_segments(blocks, tuple(specs))
        self._least_size = 2 ** sum(isinstance(m, MaxPool2x2) for m in self.modules())
        self.head = nn.Linear(channels, config.num_classes)
        # 4-D (conv) weights only; torch's type stubs omit the documented memory_format.
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def _stem(self, x: Tensor) -> Tensor:
        c, least = self.config.in_channels, self._least_size
        # Other sizes run, as with any globally pooled CNN; one too small for the pools failed
        # deep in torch ("Output size is too small") or on the way.
        if x.dim() != 4 or x.shape[1] != c or min(x.shape[-2:]) < least:
            raise ValueError(
                f"CNNHost expects images of shape (B, {c}, H, W) with H, W >= {least} (it pools "
                f"{least.bit_length() - 1} times; input_size {self.config.input_size}), got "
                f"{tuple(x.shape)}"
            )
        if not x.is_floating_point():  # a torch error from inside the first convolution
            raise ValueError(f"CNNHost expects floating-point images, got {x.dtype}")
        return x

    def _head(self, h: Tensor) -> Tensor:
        return self.head(h.mean(dim=(2, 3)))  # (B, C, H, W) -> (B, C) -> (B, classes)


class _CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = _CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TransformerHost(SegmentedHost):
    """A GPT-style decoder: token + position embedding, pre-norm blocks, tied output head.

    Injection points sit at the ends of every ``n_layer // n_points`` blocks.
    """

    kind = Topology.TRANSFORMER.value
    config: TransformerHostConfig

    def __init__(self, config: TransformerHostConfig) -> None:
        super().__init__()
        self.config = config
        block_size, n_embd, n_head = config.block_size, config.n_embd, config.n_head
        n_layer, n_points, dropout = config.n_layer, config.n_points, config.dropout
        self.tok_emb = nn.Embedding(config.vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        shape = (block_size, n_embd)  # (T_max, C) at every injection point
        specs = tuple(
            InjectionSpec(n, n_embd, shape, Topology.TRANSFORMER) for n in slot_names(n_points)
        )
        self._init_segments([_Block(n_embd, n_head, dropout) for _ in range(n_layer)], specs)
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _stem(self, idx: Tensor) -> Tensor:
        if idx.dim() != 2:
            raise ValueError(
                f"TransformerHost expects token ids of shape (B, T), got {tuple(idx.shape)}"
            )
        t, vocab = idx.shape[1], self.config.vocab_size
        if t > self.config.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.config.block_size}")
        if idx.dtype not in (torch.int64, torch.int32):  # what an embedding takes
            raise ValueError(
                f"TransformerHost expects token ids of dtype int64 or int32, got {idx.dtype}"
            )
        # on an accelerator reading the range back would make the host wait every batch
        if idx.device.type == "cpu" and idx.numel() and not 0 <= idx.min() <= idx.max() < vocab:
            raise ValueError(
                f"token ids must be in [0, {vocab}) (vocab_size), got ids from {int(idx.min())} "
                f"to {int(idx.max())}"
            )
        pos = torch.arange(t, device=idx.device)
        return self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)

    def _head(self, h: Tensor) -> Tensor:
        return self.lm_head(self.ln_f(h))  # (B, T, C) -> (B, T, vocab)


HOST_CONFIGS: dict[str, type[HostConfig]] = {
    CNNHost.kind: CNNHostConfig,
    TransformerHost.kind: TransformerHostConfig,
}
"""Host config classes by host ``kind``; checkpoints rebuild hosts through this table."""


def host_config_from_dict(kind: str, values: Mapping[str, Any]) -> HostConfig:
    """The config of a ``kind`` host from ``dataclasses.asdict`` output (a checkpoint manifest).

    Strict (``leyline.config.decode``): every field must be present, no other key, each of its
    type.

    Raises:
        ValueError: for an unknown kind, missing or unknown keys, or an invalid value.
    """
    if kind not in HOST_CONFIGS:
        raise ValueError(f"unknown host kind {kind!r}; known: {sorted(HOST_CONFIGS)}")
    config: HostConfig = decode(HOST_CONFIGS[kind], values, f"{kind} host config")
    return config


def build_host(config: HostConfig) -> SegmentedHost:
    """The host ``config`` describes: a ``CNNHost`` or a ``TransformerHost``."""
    if isinstance(config, CNNHostConfig):
        return CNNHost(config)
    if isinstance(config, TransformerHostConfig):
        return TransformerHost(config)
    raise TypeError(
        f"build_host takes a CNNHostConfig or a TransformerHostConfig, got {type(config).__name__}"
    )
