"""Training FLOPs: what one training step of a model costs, counted by torch.

``step_flops`` runs one forward, the engine's cross-entropy loss and one backward pass under a
counting dispatch mode (``_Counter``: torch's FLOP formulas) on a copy of the model, so counting
leaves the model itself (weights, gradients, BatchNorm statistics, seed state) and the global
random state exactly as they were.

What is counted: the matrix products and convolutions (``aten.mm``, ``addmm``, ``bmm``,
``convolution`` and their backward passes, scaled dot-product attention), at 2 FLOPs per
multiply-add; elementwise work (activations, normalisation, blending, the loss itself, the
optimizer step) is not. A backward pass costs the weight gradient and, where autograd needs it,
the input gradient: a layer whose input does not require a gradient (the first layer on data, a
seed fed the host's detached stream) costs as much in backward as in its forward (the weight
gradient), every other layer twice as much (the input gradient too): 2x and 3x its forward for
the whole step.
Attention counts torch's formula for every device: 4·B·T²·C forward (QKᵀ and the weighted sum,
the causal mask not discounted) and 10·B·T²·C backward (the scores recomputed, four gradient
products).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
    shape_wrapper,
)

from esper.kasmina.hosts import use_torch_layers
from esper.tolaria.engine import _loss_and_correct


def _cpu_attention(query: Any, key: Any, value: Any, *_: Any, **__: Any) -> int:
    return int(sdpa_flop_count(query, key, value))  # type: ignore[no-untyped-call]


def _cpu_attention_backward(grad: Any, query: Any, key: Any, value: Any, *_: Any, **__: Any) -> int:
    return int(sdpa_backward_flop_count(grad, query, key, value))  # type: ignore[no-untyped-call]


_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}
"""torch (2.13) counts the CUDA attention kernels but not the CPU one, which would make a
transformer's count depend on the device; these entries give the CPU kernel the CUDA formulas
(arguments arrive as shapes: query, key, value, and the output gradient first in backward)."""

_FORMULAS = {
    **flop_registry,
    **{op: shape_wrapper(f) for op, f in _CPU_ATTENTION.items()},  # type: ignore[no-untyped-call]
}
"""FLOPs by operator: torch's formulas (``torch.utils.flop_counter``), which take the tensors
(``out_val`` the output) and read their shapes, and ``_CPU_ATTENTION``."""


class _Counter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """The FLOPs of the operators run under it, by ``_FORMULAS``; an operator without a formula
    is counted as what it decomposes into, if it does. Not ``torch.utils.flop_counter``'s
    ``FlopCounterMode``, which counts the same with the same formulas: its dispatch is wrapped to
    keep ``torch.compile`` out, and that wrapper imports ``torch._dynamo`` on first use (1.1 s
    of a run, for a compiler Esper does not use); this mode is not compiled into."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.total = 0

    @classmethod
    def _should_skip_dynamo(cls) -> bool:  # torch's hook: no wrapper, no import
        return False

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Any = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        formula = _FORMULAS.get(func._overloadpacket)
        if formula is None and func is not torch.ops.prim.device.default:
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def step_flops(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """FLOPs of one training step of ``model`` as it is: forward, loss and backward.

    The step runs on a ``copy.deepcopy`` of the model in the model's current mode (train or
    eval), with the global random state forked, so ``model`` is left untouched (its gradients
    stay as they were). Seeds count as they run: a TRAINING seed's forward and weight gradient
    are included although it does not change the output; a GERMINATED seed does not run.

    Args:
        model: the model, e.g. an ``esper.kasmina.MorphogeneticModel``.
        x: one input batch, ``(B, C, H, W)`` images or ``(B, T)`` token ids.
        y: its targets, ``(B,)`` labels or ``(B, T)`` next-token ids.

    Returns:
        The counted FLOPs (see the module docstring for what is counted).
    """
    # Kasmina computes an impaired host's first block in closed form, whose small products the
    # counter would count instead of the convolution: the copy counts torch's layers.
    counted = use_torch_layers(copy.deepcopy(model))
    counted.zero_grad(set_to_none=True)  # no copied gradient buffers to accumulate into
    cuda = [x.device] if x.device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=cuda),
        torch.enable_grad(),  # a caller's no_grad left the backward nothing to run
        _Counter() as counter,
    ):
        loss, _ = _loss_and_correct(counted(x), y)
        (loss / y.numel()).backward()  # type: ignore[no-untyped-call]
    return counter.total
