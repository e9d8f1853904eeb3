"""Batched random crop + horizontal flip in plain torch (the standard CIFAR augmentation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from esper.leyline.config import check_float, check_int

# He et al. 2016 (ResNet on CIFAR): pad 4 pixels, take a random 32x32 crop, flip half the time.
DEFAULT_PADDING = 4
DEFAULT_FLIP_PROB = 0.5


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` (on the CPU) on ``device``; to a GPU through pinned memory, without blocking the
    host (a copy from ordinary memory makes the host wait for the GPU's queue to drain, which
    the epoch loop must not do)."""
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment_crop_flip(
    x: Tensor,
    generator: torch.Generator,
    padding: int = DEFAULT_PADDING,
    flip_prob: float = DEFAULT_FLIP_PROB,
) -> Tensor:
    """Randomly crop (after zero padding) and horizontally flip each image of a batch.

    Each sample gets its own offset ``(dy, dx)`` in ``[0, 2 * padding]``: the output is the
    zero-padded image sliced at ``[dy : dy + H, dx : dx + W]``, then mirrored left-right with
    probability ``flip_prob``. All randomness comes from ``generator`` (three draws per call:
    row offsets, column offsets, then flips), so a seeded generator reproduces the batch
    exactly. The work is one
    gather, with no loop over samples.

    Args:
        x: Images ``(B, C, H, W)``, on any device.
        generator: CPU generator supplying the randomness.
        padding: Zero padding on each side; 0 disables cropping.
        flip_prob: Probability that a sample is flipped; 0 disables flipping.

    Returns:
        The augmented batch, same shape, dtype and device as ``x``, in ``torch.channels_last``
        (the layout CNN hosts train in; the gather runs in that order, which is also faster).

    Raises:
        ValueError: ``x`` is not 4-D, ``padding`` is not an integer >= 0, ``flip_prob`` is not
            a number in [0, 1], or ``generator`` is not a ``torch.Generator``.
    """
    if x.dim() != 4:
        raise ValueError(
            f"augment_crop_flip expects (B, C, H, W) images, got shape {tuple(x.shape)}"
        )
    check_int("padding", padding, 0)
    check_float("flip_prob", flip_prob, 0.0, 1.0)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
    b, _, h, w = x.shape
    dev = generator.device
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < flip_prob
    draws = to_device(torch.stack([dy, dx, flip.long()]), x.device)  # one copy, not three
    dy, dx, flip = draws[0], draws[1], draws[2].bool()

    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    padded = padded.permute(0, 2, 3, 1)  # (B, H + 2p, W + 2p, C), a view
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    batch_idx = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch_idx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C), contiguous
    return out.permute(0, 3, 1, 2)  # (B, C, H, W) in channels_last
