"""``RunningMeanStd``: the observation normalizer, updated once per rollout batch (DESIGN §4).

Statistics are kept in float64 and merged batch by batch with the parallel algorithm of Chan,
Golub and LeVeque (1979), so the mean and (population) variance equal those of all batches
concatenated, up to rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from esper.leyline.config import MAX_INT64, check_float, check_int, require

VAR_EPSILON = 1e-8
"""Added to the variance before the square root, so a constant feature (variance 0, e.g. a
disabled slot's block) normalizes to 0 instead of dividing by zero."""


class RunningMeanStd:
    """Running per-feature mean and variance with clipped normalization.

    Before the first update the mean is 0 and the variance 1, so ``normalize`` is (nearly) the
    identity.

    Args:
        size: number of features.
        clip: normalized values are clamped to ``[-clip, clip]``; 10 standard deviations keeps
            rare outliers bounded without touching ordinary values.

    Attributes:
        mean: ``(size,)`` float64 running mean.
        var: ``(size,)`` float64 running population variance.
        count: samples seen.
        update_count: ``update`` calls so far (one per rollout batch).
    """

    def __init__(self, size: int, clip: float = 10.0) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        check_float("clip", clip, 0.0, math.inf, strict_low=True)
        self.size = size
        self.clip = float(clip)
        self.mean = torch.zeros(size, dtype=torch.float64)
        self.var = torch.ones(size, dtype=torch.float64)
        self.count = 0
        self.update_count = 0

    def update(self, batch: Tensor) -> None:
        """Merge a ``(N, size)`` batch into the statistics.

        Raises:
            ValueError: for a wrong shape, an empty batch or non-finite values (they would
                poison the statistics for the rest of the run).
        """
        if batch.dim() != 2 or batch.shape[1] != self.size or batch.shape[0] == 0:
            raise ValueError(
                f"update needs a non-empty (N, {self.size}) batch, got {tuple(batch.shape)}"
            )
        x = batch.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("update got non-finite values; observations must be finite")
        n = x.shape[0]
        batch_mean = x.mean(dim=0)
        batch_var = x.var(dim=0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        # Sum of squared deviations of both parts plus the between-means term.
        m2 = self.var * self.count + batch_var * n + delta.square() * (self.count * n / total)
        self.var = m2 / total
        self.count = total
        self.update_count += 1

    def normalize(self, x: Tensor) -> Tensor:
        """``(…, size)`` -> ``(…, size)``: ``(x - mean) / sqrt(var + VAR_EPSILON)``, clipped.

        The result has ``x``'s device, and its dtype when floating point (integers give
        torch's default dtype, float32 unless changed: cast back, 7 normalized to 0.4 read 0).

        Raises:
            ValueError: if the last dimension is not ``size``, or (on the CPU) ``x`` holds NaN,
                which would reach the policy as a decision with no probability (±inf is
                clipped like any outlier).
        """
        if x.shape[-1] != self.size:
            raise ValueError(f"normalize needs (..., {self.size}), got {tuple(x.shape)}")
        if x.device.type == "cpu" and bool(torch.isnan(x).any()):
            raise ValueError("normalize got NaN; observations must not be NaN")
        mean = self.mean.to(x.device)
        std = (self.var + VAR_EPSILON).sqrt().to(x.device)
        z = (x.to(torch.float64) - mean) / std
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return z.clamp(-self.clip, self.clip).to(dtype)

    def state_dict(self) -> dict[str, Any]:
        """The statistics as JSON-serializable data (float64 values as Python floats)."""
        return {
            "size": self.size,
            "clip": self.clip,
            "mean": self.mean.tolist(),
            "var": self.var.tolist(),
            "count": self.count,
            "update_count": self.update_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore statistics saved by ``state_dict``.

        Raises:
            ValueError: for missing or unknown keys, a different ``size``, or statistics no
                update could have made (non-finite or negative variances, a count that is not a
                whole number ≥ 0, a clip that is not finite and > 0); nothing is changed then.
        """
        keys = sorted(self.state_dict())
        require(
            sorted(state) == keys, f"RunningMeanStd state keys {sorted(state)} do not match {keys}"
        )
        size = state["size"]
        require(size == self.size, f"state is for size {size}, this normalizer has {self.size}")
        mean = torch.tensor(state["mean"], dtype=torch.float64)
        var = torch.tensor(state["var"], dtype=torch.float64)
        require(
            mean.shape == var.shape == (self.size,),
            f"state mean/var have shapes {tuple(mean.shape)}/{tuple(var.shape)}, "
            f"expected ({self.size},)",
        )
        finite = bool(torch.isfinite(mean).all() and torch.isfinite(var).all())
        require(finite and bool((var >= 0).all()), "state mean/var must be finite, var >= 0")
        clip, count, updates = state["clip"], state["count"], state["update_count"]
        check_float("state clip", clip, 0.0, math.inf, strict_low=True)
        for name, value in (("count", count), ("update_count", updates)):
            check_int(f"state {name}", value, 0, MAX_INT64)
        self.clip = float(clip)
        self.mean, self.var = mean, var
        self.count, self.update_count = count, updates
