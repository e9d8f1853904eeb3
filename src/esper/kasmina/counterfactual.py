"""Counterfactual maths: per-sample metrics and exact Shapley values.

The model evaluates K α-configurations in one fused batch (``MorphogeneticModel.fused_forward``);
this module turns the resulting scores into contributions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def per_sample_accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Accuracy in percent per sample: ``(B, classes)`` or ``(B, T, vocab)`` logits -> ``(B,)``.

    For sequences it is the share of correctly predicted tokens in each sequence. A prediction
    whose logits are not all finite scores NaN, not the class ``argmax`` happens to return for
    them: a seed that overflows the output must not be credited with an accuracy.

    Raises:
        ValueError: ``target`` is not shaped ``output.shape[:-1]`` (a ``(B, 1)`` target would
            broadcast against ``(B,)`` predictions into a ``(B, B)`` table of wrong scores), is
            not an integer tensor, or (on the CPU; an accelerator would wait to read it) holds
            a class index outside ``[0, classes)``: such a sample scored 0 for every model, so
            a contribution came out 0.
    """
    if target.shape != output.shape[:-1]:
        raise ValueError(
            f"targets must be shaped like the logits without their last dimension, "
            f"{tuple(output.shape[:-1])}; got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype is torch.bool:
        raise ValueError(f"targets must be class indices (an integer tensor), got {target.dtype}")
    classes = output.shape[-1]
    cpu = target.device.type == "cpu" and target.numel() > 0
    if cpu and not 0 <= target.min() <= target.max() < classes:
        raise ValueError(
            f"targets must be class indices in [0, {classes}), got {int(target.min())} to "
            f"{int(target.max())}"
        )
    correct = (output.argmax(dim=-1) == target).float()  # (B,) or (B, T)
    correct = correct.masked_fill(~output.isfinite().all(dim=-1), math.nan)
    if correct.dim() > 1:
        correct = correct.flatten(1).mean(dim=1)
    return correct * 100.0


def shapley_from_coalitions(values: Sequence[float], n_players: int) -> list[float]:
    """Exact Shapley values from the value of every coalition.

    Args:
        values: ``values[mask]`` is the value of the coalition whose members are the set bits of
            ``mask`` (bit i = player i), for all ``2**n_players`` masks.
        n_players: number of players.

    Returns:
        φ_i = Σ_{S ⊆ N∖{i}} |S|! (n−|S|−1)! / n! · (v(S ∪ {i}) − v(S)) for each player i.
    """
    if len(values) != 1 << n_players:
        raise ValueError(
            f"need 2**{n_players} = {1 << n_players} coalition values, got {len(values)}"
        )
    n_fact = math.factorial(n_players)
    phi = []
    for i in range(n_players):
        bit = 1 << i
        total = 0.0
        for mask in range(1 << n_players):
            if mask & bit:
                continue
            size = mask.bit_count()
            weight = math.factorial(size) * math.factorial(n_players - size - 1) / n_fact
            total += weight * (values[mask | bit] - values[mask])
        phi.append(total)
    return phi
