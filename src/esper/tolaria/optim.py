"""AdamW with one parameter group for the host and one per seed slot.

Seed parameters join the optimizer when a seed germinates and leave it (with their state) when it
is pruned; a fossilized seed trains at the host's learning rate. Groups are kept in a canonical
order — host first, then slots in ``ordered_slots`` order — so ``state_dict`` indices mean the same
thing whenever the same seeds are present, which is what rollback and resume rely on.

The update is torch's fused AdamW kernel (``torch._fused_adamw_``, what ``torch.optim.AdamW(...,
fused=True)`` calls), called here with the state kept as torch keeps it: ``state_dict`` is
``torch.optim.AdamW``'s, so checkpoints of either load into the other. Not ``torch.optim``
itself: its optimizers import ``torch._dynamo`` on first use (their methods are wrapped to
disable it), 1.1 s of a run's 3.3 s from launch to its first batch on this project's 2-core
machine, for a compiler Esper does not use.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from esper.kasmina import MorphogeneticModel
from esper.leyline import ALIVE_STAGES, SeedStage
from esper.leyline.config import check_float

HOST_GROUP = "host"

BETAS = (0.9, 0.999)
EPS = 1e-8
"""AdamW's moment decay rates and denominator term: torch's defaults, which Esper always used."""

_FLAGS = {
    "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
    "differentiable": False, "fused": True, "decoupled_weight_decay": True,
}  # fmt: skip
"""The rest of a parameter group as ``torch.optim.AdamW(..., fused=True)`` writes it: the only
variant of AdamW this optimizer runs."""

_SAME_RULE = {"amsgrad": False, "maximize": False, "differentiable": False}
"""The flags of a saved group that change AdamW's rule (the others, ``fused``, ``foreach`` and
``capturable``, pick a kernel for the same rule): a state saved with other values is refused.
A group without one (an older torch's) has torch's default."""

Moments = dict[str, Tensor]
"""One parameter's state: ``step`` (a float32 scalar on its device), ``exp_avg``,
``exp_avg_sq``."""


class SlotOptimizer:
    """AdamW over a growing model.

    ``param_groups`` (dicts: ``name``, ``params``, ``lr``, ``betas``, ``eps``,
    ``weight_decay`` and ``_FLAGS``) and ``state`` (``Moments`` by parameter, made at a
    parameter's first step) are laid out as ``torch.optim.AdamW`` lays them out.

    Args:
        model: the model whose host and seeds are optimized.
        host_lr: learning rate of the host (and of fossilized seeds).
        seed_lr: learning rate of live seeds.
        weight_decay: AdamW decoupled weight decay for every group.

    Raises:
        ValueError: a rate outside (0, 10] or a weight decay outside [0, 10], as
            ``HostTraining`` (a NaN seed rate made the seeds NaN with the run going on; -1 was
            gradient ascent).
    """

    def __init__(
        self, model: MorphogeneticModel, host_lr: float, seed_lr: float, weight_decay: float
    ) -> None:
        check_float("host_lr", host_lr, 0.0, 10.0, strict_low=True)
        check_float("seed_lr", seed_lr, 0.0, 10.0, strict_low=True)
        check_float("weight_decay", weight_decay, 0.0, 10.0)
        self.model = model
        self.host_lr = host_lr
        self.seed_lr = seed_lr
        self.weight_decay = weight_decay
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, Moments] = {}
        self.sync()

    def _wanted(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        wanted = {HOST_GROUP: (self.model.host_parameters(), self.host_lr)}
        for name, report in self.model.reports().items():
            if report.stage in ALIVE_STAGES or report.stage is SeedStage.FOSSILIZED:
                lr = self.host_lr if report.stage is SeedStage.FOSSILIZED else self.seed_lr
                wanted[name] = (self.model.seed_parameters(name), lr)
        return wanted

    def sync(self) -> None:
        """Make the groups match the model's seeds: add new ones, drop pruned ones (and their
        parameters' state), set rates."""
        wanted = self._wanted()
        keep = []
        for group in self.param_groups:
            name = group["name"]
            if name in wanted and list(map(id, group["params"])) == list(map(id, wanted[name][0])):
                keep.append(group)
            else:
                for p in group["params"]:
                    self.state.pop(p, None)
        present = {g["name"] for g in keep}
        for name, (params, lr) in wanted.items():
            if name not in present:
                keep.append(
                    {"name": name, "params": list(params), "lr": lr, "betas": BETAS, "eps": EPS,
                     "weight_decay": self.weight_decay, **_FLAGS}
                )  # fmt: skip
        for group in keep:
            group["lr"] = wanted[group["name"]][1]
        order = list(wanted)  # host, then slots in ordered_slots order
        self.param_groups = sorted(keep, key=lambda g: order.index(g["name"]))

    def group_names(self) -> list[str]:
        return [g["name"] for g in self.param_groups]

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        step_optimizers([self])

    def fused_inputs(self) -> list[tuple[tuple[Any, ...], tuple[list[Tensor], ...]]]:
        """Each group's AdamW hyperparameters and the tensors its step updates: parameters with
        gradients, their gradients, moments and step counts (a parameter's state made at its
        first step, as torch's ``step`` makes it)."""
        inputs = []
        for group in self.param_groups:
            key = (group["lr"], group["weight_decay"], *group["betas"], group["eps"])
            lists: tuple[list[Tensor], ...] = ([], [], [], [], [])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p) or self.state.setdefault(p, _fresh(p))
                values = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])
                for part, value in zip(lists, values, strict=True):
                    part.append(value)
            inputs.append((key, lists))
        return inputs

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict``'s layout: the groups with their parameters as
        indices (numbered through the groups in order) and the state of those that have one,
        by index. Its tensors are the live ones (``copied_state`` copies them)."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            groups.append({**group, "params": [index[id(p)] for p in group["params"]]})
        state = {index[id(p)]: dict(moments) for p, moments in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state saved when the model had the same seeds (call ``sync`` first): the
        groups' hyperparameters and each parameter's moments, as ``torch.optim`` loads them
        (moments in the parameter's dtype and device, the step a float32 scalar beside it).

        Raises:
            ValueError: if the saved groups are not the current ones, or follow another rule
                (``_SAME_RULE``: AMSGrad, maximizing, coupled weight decay).
        """
        saved = [g["name"] for g in state["param_groups"]]
        if saved != self.group_names():
            raise ValueError(
                f"optimizer state has groups {saved}, the model has {self.group_names()}"
            )
        by_index: dict[int, Tensor] = {}
        groups = []
        for group, loaded in zip(self.param_groups, state["param_groups"], strict=True):
            rule = {k: loaded.get(k, v) for k, v in _SAME_RULE.items()}
            decoupled = loaded.get("decoupled_weight_decay", True)  # an older torch's AdamW
            if rule != _SAME_RULE or not decoupled or len(loaded["params"]) != len(group["params"]):
                raise ValueError(f"optimizer group {group['name']!r} is not this AdamW's")
            by_index.update(zip(loaded["params"], group["params"], strict=True))
            # A run saved before Esper fused AdamW (its groups say fused: null) goes on fused.
            groups.append({**loaded, **_FLAGS, "params": group["params"]})
        moments = {}
        for i, values in state["state"].items():
            if not values:  # torch's state is a defaultdict: a look-up leaves an empty entry
                continue
            p = by_index[i]
            moments[p] = {
                k: v.to(dtype=torch.float32 if k == "step" else p.dtype, device=p.device)
                for k, v in values.items()
            }
        self.param_groups, self.state = groups, moments


def _fresh(p: Tensor) -> Moments:
    """A parameter's state before its first step, as torch's fused AdamW makes it."""
    return {
        "step": torch.zeros((), dtype=torch.float32, device=p.device),
        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


def step_optimizers(optimizers: Sequence[SlotOptimizer]) -> None:
    """``step`` every optimizer, the groups of all of them that share AdamW's hyperparameters
    (and a device and dtype, grouped as torch's own optimizers group them) in one fused call:
    what each ``step`` computes, bit for bit (the fused kernel updates each tensor on its own),
    without each optimizer's own overhead: for a chunk of 8 impaired hosts, 8 x 240 us per
    batch (of about 30 ms) against 0.43 ms for one call (torch 2.13, one CPU thread)."""
    buckets: dict[tuple[Any, ...], tuple[list[Tensor], ...]] = defaultdict(
        lambda: ([], [], [], [], [])
    )
    for optimizer in optimizers:
        for key, lists in optimizer.fused_inputs():
            for into, part in zip(buckets[key], lists, strict=True):
                into += part
    with torch.no_grad():
        for (lr, weight_decay, beta1, beta2, eps), tensors in buckets.items():
            if not tensors[0]:  # groups without a gradient this step (a seed that sat out)
                continue
            grouped = _group_tensors_by_device_and_dtype(list(tensors))  # type: ignore[arg-type]
            for same_device, _ in grouped.values():
                params, grads, avgs, sqs, steps = cast(list[list[Tensor]], same_device)
                torch._foreach_add_(steps, 1)
                torch._fused_adamw_(
                    params, grads, avgs, sqs, [], steps, amsgrad=False, lr=lr, beta1=beta1,
                    beta2=beta2, weight_decay=weight_decay, eps=eps, maximize=False,
                )  # fmt: skip
