"""Modules built for their shapes alone: on torch's meta device, without initialisation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_RANDOM_INITS = frozenset(
    {nn.init.normal_, nn.init.uniform_, nn.init.kaiming_uniform_, torch.Tensor.normal_,
     torch.Tensor.uniform_, torch.Tensor.erfinv_}
)  # fmt: skip
"""Random draws as a torch function mode sees them: ``torch.nn.init``'s functions that dispatch
to one, and the tensor methods the others call (``kaiming_normal_``, ``xavier_*``,
``trunc_normal_``). On meta tensors torch runs them in Python (``torch._refs``), whose first use
imports ``torch._dynamo`` (1.1 s of a run's start, for a compiler Esper does not use)."""


class _NoDraws(TorchFunctionMode):
    """Passes over ``_RANDOM_INITS``: a meta tensor has no values to draw."""

    def __torch_function__(
        self, func: Any, types: Any, args: Any = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _RANDOM_INITS:
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)


@contextmanager
def shapes_only() -> Iterator[None]:
    """Build modules on the meta device: parameters with shapes and no storage (counting or
    comparing a huge host allocates nothing), their initialisation's random draws skipped."""
    with torch.device("meta"), _NoDraws():
        yield
