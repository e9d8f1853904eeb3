"""``MaskedCategorical``: a categorical distribution over the valid choices of one head.

Masked choices get probability exactly 0: the distribution is renormalized over the valid entries
(a log-sum-exp over them alone), so no masked choice is ever sampled, whatever the logits, and the
masked logit value only matters for code that reads ``logits``. Entropy is taken over the valid
entries and divided by ``log(n_valid)``, so it lies in [0, 1] for any number of valid choices
and is exactly 0 when only one is valid (DESIGN §4).

All arithmetic runs in float32 (or the logits' dtype when wider), so half-precision logits from
an autocast forward are handled without overflow.
"""

from __future__ import annotations

import torch
from torch import Tensor

MASK_VALUE = -1e4
"""Logit of a masked choice. It fits in float16 (max 65504) where ``-inf`` would turn a
softmax over an all-masked row into NaN and ``torch.finfo(dtype).min`` would overflow to ``-inf``
as soon as anything is subtracted from it; exp(-1e4) is 0 in every float format."""


def require_choices(empty: Tensor) -> None:
    """Raise if any row of ``empty`` (``(…)`` bool, True for a mask row with no valid choice)
    is True.

    On the CPU this is a ValueError that counts the rows and names the first. On an accelerator
    reading the flag would make the host wait for the device at every head of every step, so the
    device asserts instead, asynchronously: the error (a RuntimeError) surfaces at the next
    synchronisation, which in acting is the copy of the step's choice, and on CUDA it is a
    device-side assert, after which the process can use the GPU no more. The masks of
    ``ActionSpace`` never have such a row where it counts (WAIT is always valid, and the rows of
    the other heads are relaxed where the chosen op does not read them), so this is the check
    of an invariant, not of input.
    """
    if empty.device.type != "cpu":
        torch._assert_async(
            ~empty.any(), "a mask row has no valid choice; every row needs at least one True"
        )
        return
    if bool(empty.any()):
        rows = empty.nonzero().tolist()
        raise ValueError(
            f"{len(rows)} of {empty.numel()} mask rows have no valid choice "
            f"(first at batch index {tuple(rows[0])}); every row needs at least one True"
        )


class MaskedCategorical:
    """Categorical distribution restricted to ``mask``.

    Args:
        logits: ``(…, n)`` unnormalized log-probabilities (any float dtype).
        mask: ``(…, n)`` bool, True where a choice is valid.
        validate_args: check the values on the CPU (as torch's distributions do): NaN logits
            at valid choices, indices given to ``log_prob`` outside ``[0, n)``. Each check is a
            few operations; the policy's acting step, whose logits come from finite inputs and
            whose indices it samples itself, skips them.

    Attributes:
        mask: ``(…, n)`` the mask.

    Raises:
        ValueError: if shapes differ, the mask is not bool, or any row has no valid choice
            (the message counts those rows and names the first; on an accelerator that check
            is asynchronous, see ``require_choices``); with ``validate_args``, on the CPU, a
            NaN logit at a valid choice.
    """

    def __init__(self, logits: Tensor, mask: Tensor, validate_args: bool = True) -> None:
        if mask.dtype is not torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
        if logits.shape != mask.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and mask {tuple(mask.shape)} must match"
            )
        if logits.dim() == 0:
            raise ValueError("logits need at least one dimension (the choices)")
        n_valid = mask.sum(dim=-1)  # (…)
        require_choices(n_valid == 0)
        # NaN would be sampled as index 0 with a NaN probability. Only the CPU looks: on an
        # accelerator reading a flag makes the host wait, and a mixed-precision update's
        # overflow is the grad scaler's to skip, not an assert's.
        self._validate = validate_args and logits.device.type == "cpu"
        if self._validate and bool((logits.isnan() & mask).any()):
            raise ValueError("logits are NaN at a valid choice")
        self.mask, self._given = mask, logits
        compute = torch.promote_types(logits.dtype, torch.float32)
        # masked entries -inf: weight 0 in the log-sum-exp
        excluded = logits.to(compute).masked_fill(~mask, float("-inf"))
        # Shift by the largest valid logit first: z - logsumexp(z) computed on logits of size
        # 1e4 would lose ~1e-3 to rounding. The shift is a constant, so it changes no gradient.
        z = excluded - excluded.amax(dim=-1, keepdim=True).detach()
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        # Finite everywhere (0 at masked entries) so products and gradients never see -inf.
        self._log_p = torch.where(mask, z - lse, 0.0)  # (…, n)
        self._n_valid = n_valid

    @property
    def logits(self) -> Tensor:
        """``(…, n)`` the given logits with masked entries replaced by ``MASK_VALUE`` (in the
        logits' dtype); made when read (acting never reads them)."""
        return self._given.masked_fill(~self.mask, MASK_VALUE)

    @property
    def probs(self) -> Tensor:
        """``(…, n)`` probabilities; exactly 0 at masked entries, summing to 1 over valid ones."""
        return torch.where(self.mask, self._log_p.exp(), 0.0)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """``(…)`` long: one draw per row (never a masked choice).

        The choice maximising ``p / E`` with ``E ~ Exp(1)`` per entry is drawn with probability
        ``p``: the draws ``torch.multinomial(probs, 1)`` makes from the same generator, without
        its validity check, which reads a flag back and so makes the host wait for a GPU.
        Masked entries score -1, below every valid one, even where a draw of ``E`` is 0.
        """
        probs = self.probs.detach()
        noise = torch.empty_like(probs).exponential_(1, generator=generator)
        return torch.where(self.mask, probs / noise, -1.0).argmax(dim=-1)

    def mode(self) -> Tensor:
        """``(…)`` long: the most likely valid choice (the first on ties)."""
        return self._log_p.masked_fill(~self.mask, float("-inf")).argmax(dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        """``(…)`` log-probability of ``value`` (``(…)`` integer indices); ``-inf`` for a masked
        choice.

        Raises:
            ValueError: ``value`` is not of integer dtype and the batch's shape (``gather``
                read a shorter one as its first rows), or (with ``validate_args``, on the CPU)
                an index is outside ``[0, n)``.
        """
        batch, n = tuple(self.mask.shape[:-1]), self.mask.shape[-1]
        if value.is_floating_point() or value.is_complex() or value.dtype is torch.bool:
            raise ValueError(f"value must hold integer indices, got {value.dtype}")
        if tuple(value.shape) != batch:
            raise ValueError(f"value must have the batch's shape {batch}, got {tuple(value.shape)}")
        if self._validate and bool(((value < 0) | (value >= n)).any()):
            raise ValueError(f"value holds an index outside [0, {n})")
        index = value.long().unsqueeze(-1)  # (…, 1)
        log_p = self._log_p.gather(-1, index).squeeze(-1)
        valid = self.mask.gather(-1, index).squeeze(-1)
        return torch.where(valid, log_p, float("-inf"))

    def entropy(self) -> Tensor:
        """``(…)`` entropy over the valid choices divided by ``log(n_valid)``, in [0, 1].

        Exactly 0 for a row with one valid choice; 1 for uniform probabilities over the valid
        choices.
        """
        p = self.probs
        # masked entries: 0 * 0; a valid logit of -inf: 0 * (the lowest finite), not 0 * -inf
        log_p = self._log_p.clamp(min=torch.finfo(self._log_p.dtype).min)
        h = -(p * log_p).sum(dim=-1)
        n = self._n_valid.to(h.dtype)
        # log(1) = 0 would divide 0 by 0 (NaN gradient even under where); divide by 1 instead.
        scale = torch.where(self._n_valid > 1, n.log(), torch.ones_like(n))
        return h / scale
