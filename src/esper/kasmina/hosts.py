"""Host networks with a segmented forward around named injection points.

A host exposes its injection points in execution order and two functions that split the forward
pass at them. ``forward`` itself is written as a plain pass, independent of the segment code, so
that tests can check the segmented path against it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.leyline import InjectionSpec, Topology, slot_names


def _require_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class SegmentedHost(nn.Module, ABC):
    """The host contract: injection points in execution order and a forward split at them.

    Subclasses build ``segments`` (one module per injection point, in order), call
    ``_init_points`` with their specs, and implement ``forward`` (the plain pass),
    ``forward_to_segment``, ``forward_from_segment`` and ``config``. Running every segment with
    identity slots must equal ``forward``. Segments must not modify their input in place: a slot
    in TRAINING hands the next segment a view of the stream it also keeps for the seed's gradient.
    """

    kind: str
    segments: nn.ModuleList

    @abstractmethod
    def forward_to_segment(self, point: str, x: Tensor, from_point: str | None = None) -> Tensor:
        """Run from the input (or from ``from_point``'s output) up to ``point``'s output."""

    @abstractmethod
    def forward_from_segment(self, point: str, h: Tensor) -> Tensor:
        """Run from ``point``'s output to the model output."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments, enough to rebuild the host (for checkpoints)."""

    def _init_points(self, specs: tuple[InjectionSpec, ...]) -> None:
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


class CNNHost(SegmentedHost):
    """A small convolutional classifier: blocks of conv → BatchNorm → ReLU → 2×2 max-pool.

    Channels double every block; a global average pool and a linear head follow. Injection points
    sit at the ends of every ``depth // n_points`` blocks (after the pool). Impaired hosts for
    growth experiments are the same class with few channels and ``kernel_size=1``.

    Args:
        in_channels: input image channels.
        num_classes: classifier outputs.
        base_channels: channels of the first block.
        depth: number of conv blocks.
        kernel_size: odd conv kernel size (1 makes a deliberately impaired host).
        input_size: input height = width, used to report injection shapes.
        n_points: injection points; must divide ``depth``.
    """

    kind = "cnn"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        base_channels: int = 8,
        depth: int = 3,
        kernel_size: int = 3,
        input_size: int = 32,
        n_points: int = 3,
    ) -> None:
        super().__init__()
        for name, value in [
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("base_channels", base_channels),
            ("depth", depth),
            ("kernel_size", kernel_size),
            ("input_size", input_size),
            ("n_points", n_points),
        ]:
            _require_positive(name, value)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd so padding keeps the size, got {kernel_size}"
            )
        if depth % n_points != 0:
            raise ValueError(
                f"depth ({depth}) must be a multiple of n_points ({n_points}) so every injection "
                f"point ends a segment of equal length; try n_points in "
                f"{[d for d in range(1, depth + 1) if depth % d == 0]}"
            )
        self._config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "base_channels": base_channels,
            "depth": depth,
            "kernel_size": kernel_size,
            "input_size": input_size,
            "n_points": n_points,
        }
        blocks: list[nn.Module] = []
        channels, size = in_channels, input_size
        for i in range(depth):
            out = base_channels * 2**i
            layers: list[nn.Module] = [
                nn.Conv2d(channels, out, kernel_size, padding=kernel_size // 2, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            ]
            if size >= 2:  # pool while there is something to pool
                layers.append(nn.MaxPool2d(2))
                size //= 2
            blocks.append(nn.Sequential(*layers))
            channels = out
        per = depth // n_points
        self.segments = nn.ModuleList(
            nn.Sequential(*blocks[i * per : (i + 1) * per]) for i in range(n_points)
        )
        self._blocks = tuple(blocks)  # flat view for the plain forward (already registered above)
        self.head = nn.Linear(channels, num_classes)
        names = slot_names(n_points)
        specs = []
        size = input_size
        for i in range(depth):
            if size >= 2:
                size //= 2
            if (i + 1) % per == 0:
                c = base_channels * 2**i
                specs.append(
                    InjectionSpec(names[(i + 1) // per - 1], c, (c, size, size), Topology.CNN)
                )
        self._init_points(tuple(specs))

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def _head(self, h: Tensor) -> Tensor:
        return self.head(h.mean(dim=(2, 3)))  # (B, C, H, W) -> (B, C) -> (B, classes)

    def forward(self, x: Tensor) -> Tensor:
        for block in self._blocks:
            x = block(x)
        return self._head(x)

    def forward_to_segment(self, point: str, x: Tensor, from_point: str | None = None) -> Tensor:
        start = 0 if from_point is None else self._point_index(from_point) + 1
        return self._run_segments(x, start, self._point_index(point) + 1)

    def forward_from_segment(self, point: str, h: Tensor) -> Tensor:
        h = self._run_segments(h, self._point_index(point) + 1, len(self.segments))
        return self._head(h)


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

    Args:
        vocab_size: number of tokens.
        block_size: longest sequence the position embedding covers.
        n_embd: model dimension; must be divisible by ``n_head``.
        n_head: attention heads.
        n_layer: transformer blocks; must be divisible by ``n_points``.
        n_points: injection points.
        dropout: dropout probability in attention and MLP.
    """

    kind = "transformer"

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 64,
        n_embd: int = 64,
        n_head: int = 4,
        n_layer: int = 3,
        n_points: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("vocab_size", vocab_size),
            ("block_size", block_size),
            ("n_embd", n_embd),
            ("n_head", n_head),
            ("n_layer", n_layer),
            ("n_points", n_points),
        ]:
            _require_positive(name, value)
        if n_embd % n_head != 0:
            raise ValueError(
                f"n_embd ({n_embd}) must be divisible by n_head ({n_head}); "
                f"valid n_head values: {[h for h in range(1, n_embd + 1) if n_embd % h == 0]}"
            )
        if n_layer % n_points != 0:
            raise ValueError(
                f"n_layer ({n_layer}) must be a multiple of n_points ({n_points}); "
                f"valid n_points values: {[p for p in range(1, n_layer + 1) if n_layer % p == 0]}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self._config = {
            "vocab_size": vocab_size,
            "block_size": block_size,
            "n_embd": n_embd,
            "n_head": n_head,
            "n_layer": n_layer,
            "n_points": n_points,
            "dropout": dropout,
        }
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        per = n_layer // n_points
        blocks = [_Block(n_embd, n_head, dropout) for _ in range(n_layer)]
        self.segments = nn.ModuleList(
            nn.Sequential(*blocks[i * per : (i + 1) * per]) for i in range(n_points)
        )
        self._blocks = tuple(blocks)  # flat view for the plain forward (already registered above)
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        self._init_points(
            tuple(
                InjectionSpec(name, n_embd, (block_size, n_embd), Topology.TRANSFORMER)
                for name in slot_names(n_points)
            )
        )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def _embed(self, idx: Tensor) -> Tensor:
        if idx.dim() != 2:
            raise ValueError(
                f"TransformerHost expects token ids of shape (B, T), got {tuple(idx.shape)}"
            )
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        return self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)

    def forward(self, x: Tensor) -> Tensor:
        h = self._embed(x)
        for block in self._blocks:
            h = block(h)
        return self.lm_head(self.ln_f(h))  # (B, T, vocab)

    def forward_to_segment(self, point: str, x: Tensor, from_point: str | None = None) -> Tensor:
        if from_point is None:
            return self._run_segments(self._embed(x), 0, self._point_index(point) + 1)
        return self._run_segments(
            x, self._point_index(from_point) + 1, self._point_index(point) + 1
        )

    def forward_from_segment(self, point: str, h: Tensor) -> Tensor:
        h = self._run_segments(h, self._point_index(point) + 1, len(self.segments))
        return self.lm_head(self.ln_f(h))


HOST_TYPES: dict[str, type[SegmentedHost]] = {
    CNNHost.kind: CNNHost,
    TransformerHost.kind: TransformerHost,
}
"""Host classes by ``kind``; checkpoints rebuild hosts through this table."""


def build_host(kind: str, config: dict[str, Any]) -> SegmentedHost:
    """Rebuild a host from its kind and ``config()``.

    Raises:
        ValueError: for an unknown kind.
    """
    if kind not in HOST_TYPES:
        raise ValueError(f"unknown host kind {kind!r}; known: {sorted(HOST_TYPES)}")
    return HOST_TYPES[kind](**config)
