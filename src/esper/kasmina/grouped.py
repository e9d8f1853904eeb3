"""k growing CNN models run forward as one grouped computation (DESIGN §10).

Training k small hosts one after another spends most of its time in per-call overhead: each
convolution of a 390-parameter host is too small to keep a core busy. ``grouped_forward`` lays the
k hosts' channels side by side — ``(B, k·C, H, W)`` — and runs every host layer once for all of
them: convolutions with ``groups = k`` over the concatenated weights, one batch norm over the
``k·C`` channels (batch statistics are per channel, so per host), and the k linear heads as one
``einsum``. Each model keeps its own parameters and buffers: the concatenated weights are built
from them on every call, so gradients flow back into each model's own tensors, each model keeps
its own optimizer, and running statistics are written back to each model's own norm layers.
Seeds stay ordinary modules: at an injection point, each model's slot acts on its host's channel
slice. Impaired hosts' first blocks on one-channel images run as one closed form for all k
(``esper.kasmina.hosts.one_channel_blocks``).

Each model's output depends only on its own parameters and input, exactly as in ``model(x)``;
only the floating-point summation order may differ (float64: equal to ~1e-12).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina.hosts import CNNHost, closed_form, norm_buffers, one_channel_blocks
from esper.kasmina.model import MorphogeneticModel
from esper.leyline.lifecycle import FORWARD_STAGES

CHANNELWISE_LAYERS = (nn.ReLU, nn.MaxPool2d, nn.Identity)
"""Parameter-free layers that act on each channel alone: they run unchanged on ``k·C`` channels."""

RANDOM_LAYERS = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
"""Layers that draw random numbers in training: a model holding one trains on its own."""


def activation_bytes(
    model: MorphogeneticModel, batch: int, dtype: torch.dtype | None = None
) -> int:
    """Bytes of a CNN host's largest activation for one ``batch``: the first block's conv
    output, before its pool (channels double each block while the area quarters), in ``dtype``
    (None: the host's parameters' dtype; bfloat16 under a bfloat16 autocast)."""
    config = cast(CNNHost, model.host).config
    size, largest = config.input_size, 0
    for i in range(config.depth):
        largest = max(largest, config.base_channels * 2**i * size * size)
        size = size // 2 if size >= 2 else size
    element = next(model.host.parameters()).element_size() if dtype is None else dtype.itemsize
    return largest * batch * element


def _blocks(model: MorphogeneticModel) -> list[list[nn.Sequential]]:
    """The host's blocks, segment by segment (one list per injection point)."""
    segments = cast(Iterable[Iterable[nn.Sequential]], model.host.segments)
    return [list(segment) for segment in segments]


def _layers(model: MorphogeneticModel) -> list[list[nn.Module]]:
    """The host's layers, segment by segment (one list per injection point)."""
    return [[layer for block in segment for layer in block] for segment in _blocks(model)]


def _norm_settings(model: MorphogeneticModel) -> list[tuple[object, ...]]:
    """Each host batch norm's ``eps``, momentum and flags, in order."""
    return [
        (layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
        for segment in _layers(model)
        for layer in segment
        if isinstance(layer, nn.BatchNorm2d)
    ]


def groupable(models: Sequence[MorphogeneticModel]) -> bool:
    """Whether ``models`` can run as one grouped computation.

    They must be at least two CNN hosts of one config, with the same enabled slots, on one
    device and dtype, built only of convolutions, batch norms and channel-wise layers, with the
    same norm settings layer by layer (one grouped norm runs with the first model's ``eps`` and
    momentum), and without dropout anywhere (seeds included): a grouped pass then draws no
    random numbers, so it needs no per-model random state.
    """
    if len(models) < 2 or not all(isinstance(m.host, CNNHost) for m in models):
        return False
    first = models[0]
    p, norms = next(first.host.parameters()), _norm_settings(first)
    for m in models:
        q = next(m.host.parameters())
        same = m.host.config == first.host.config and m.order == first.order
        same = same and _norm_settings(m) == norms
        if not (same and q.device == p.device and q.dtype == p.dtype):
            return False
        if any(isinstance(module, RANDOM_LAYERS) for module in m.modules()):
            return False
    kinds = (nn.Conv2d, nn.BatchNorm2d, *CHANNELWISE_LAYERS)
    return all(isinstance(layer, kinds) for seg in _layers(first) for layer in seg)


def _conv(layers: Sequence[nn.Conv2d], h: Tensor) -> Tensor:
    """The k convolutions as one: weights stacked along output channels, ``groups = k·g``."""
    c = layers[0]
    weight = torch.cat([layer.weight for layer in layers])  # (k·C_out, C_in / g, kh, kw)
    bias = None if c.bias is None else torch.cat([cast(Tensor, layer.bias) for layer in layers])
    return F.conv2d(h, weight, bias, c.stride, c.padding, c.dilation, len(layers) * c.groups)


def _batch_norm(layers: Sequence[nn.BatchNorm2d], h: Tensor) -> Tensor:
    """The k batch norms (train mode) as one over ``k·C`` channels; running statistics are
    updated in each layer's own buffers, as ``nn.BatchNorm2d`` would."""
    first = layers[0]
    if first.momentum is None or not first.track_running_stats or not first.affine:
        raise ValueError("grouped batch norm needs affine layers with a momentum and running stats")
    mean = torch.cat(norm_buffers(layers, "running_mean"))
    var = torch.cat(norm_buffers(layers, "running_var"))
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    out = F.batch_norm(h, mean, var, weight, bias, True, first.momentum, first.eps)
    # One multi-tensor call per statistic instead of one copy per layer: on CUDA one kernel
    # launch each, whatever the number of models.
    k = len(layers)
    with torch.no_grad():
        torch._foreach_copy_(norm_buffers(layers, "running_mean"), list(mean.chunk(k)))
        torch._foreach_copy_(norm_buffers(layers, "running_var"), list(var.chunk(k)))
        torch._foreach_add_(norm_buffers(layers, "num_batches_tracked"), 1)
    return out


def _layer(layers: list[nn.Module], h: Tensor) -> Tensor:
    first = layers[0]
    if isinstance(first, nn.Conv2d):
        return _conv(layers, h)  # type: ignore[arg-type]
    if isinstance(first, nn.BatchNorm2d):
        return _batch_norm(layers, h)  # type: ignore[arg-type]
    return first(h)  # channel-wise: the same on k·C channels


def _apply_slots(models: Sequence[MorphogeneticModel], name: str, h: Tensor) -> Tensor:
    """Each model's slot ``name`` on its host's channel slice (no copy when none is running)."""
    slots = [m.slot(name) for m in models]
    if all(slot.stage not in FORWARD_STAGES for slot in slots):
        return h
    # k × (B, C, H, W) strided views. Seeds' GroupNorm guards itself against torch 2.13's
    # channels_last backward crash on such a slice (``esper.kasmina.blueprints._GroupNorm``).
    parts = h.chunk(len(models), dim=1)
    return torch.cat([slot(part) for slot, part in zip(slots, parts, strict=True)], dim=1)


def grouped_forward(models: Sequence[MorphogeneticModel], xs: Sequence[Tensor]) -> Tensor:
    """Each model's ``model(x)``, computed as one grouped pass.

    Args:
        models: models for which ``groupable(models)`` holds.
        xs: one input batch per model, all ``(B, C_in, H, W)`` of one shape.

    Batch norms run in training mode (batch statistics, running statistics updated): this is the
    training forward.

    Returns:
        The outputs stacked ``(B, k, classes)``: ``[:, i]`` is what ``models[i](xs[i])`` would
        give (up to floating-point summation order), with gradients into each model's own
        parameters. Kept stacked so that the loss of all k models is one computation.

    Raises:
        ValueError: not one batch per model (a torch error from inside a convolution).
    """
    k = len(models)
    if len(xs) != k:
        raise ValueError(
            f"grouped_forward needs one batch per model: {k} models, {len(xs)} batches"
        )
    h = torch.cat(list(xs), dim=1)  # (B, k·C_in, H, W)
    per_model = [_blocks(m) for m in models]
    enabled = set(models[0].order)
    for i, spec in enumerate(models[0].host.injection_points):
        for j in range(len(per_model[0][i])):
            blocks = [segments[i][j] for segments in per_model]
            # impaired hosts' first blocks on grayscale images; training mode, like every layer
            if blocks[0].training and closed_form(blocks, h):
                h = one_channel_blocks(blocks, h)
                continue
            # channels_last (a no-op after the first block): an NCHW input here made every layer
            # convert its activations, 0.60 -> 0.43 s per 4-host epoch of 10 batches
            h = h.contiguous(memory_format=torch.channels_last)
            for layers in zip(*blocks, strict=True):
                h = _layer(list(layers), h)
        if spec.slot in enabled:
            h = _apply_slots(models, spec.slot, h)
    pooled = h.mean(dim=(2, 3)).view(h.shape[0], k, -1)  # (B, k·C) -> (B, k, C)
    heads = [cast(nn.Linear, m.host.head) for m in models]
    weight = torch.stack([head.weight for head in heads])  # (k, classes, C)
    bias = torch.stack([head.bias for head in heads])  # (k, classes)
    return torch.einsum("bkc,koc->bko", pooled, weight) + bias  # (B, k, classes)
