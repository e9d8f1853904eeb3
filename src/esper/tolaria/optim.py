"""AdamW with one parameter group for the host and one per seed slot.

Seed parameters join the optimizer when a seed germinates and leave it (with their state) when it
is pruned; a fossilized seed trains at the host's learning rate. Groups are kept in a canonical
order — host first, then slots in ``ordered_slots`` order — so ``state_dict`` indices mean the same
thing whenever the same seeds are present, which is what rollback and resume rely on.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.adamw import adamw

from esper.kasmina import MorphogeneticModel
from esper.leyline import ALIVE_STAGES, SeedStage
from esper.leyline.config import check_float

HOST_GROUP = "host"


def preload() -> None:
    """Import what a process's first torch optimizer imports (``torch._dynamo``, 1-3 s: torch
    wraps ``Optimizer.add_param_group`` to disable it): for start-up in a process that makes no
    optimizer before its first training step, which then paid it (a Ray worker's first PPO
    round: 1.7 s against 0.3 s for the next)."""
    importlib.import_module("torch._dynamo")


class SlotOptimizer:
    """AdamW over a growing model.

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
        # fused: one kernel per step instead of ~10 per tensor. For the impaired Fashion-MNIST
        # host's 11 tensors a step took 131 us against 610 us (torch 2.13, CPU, one thread),
        # ~7% of its grouped training epoch; the update rule is AdamW's, to float rounding.
        self.optimizer = torch.optim.AdamW(
            [{"params": model.host_parameters(), "lr": host_lr, "name": HOST_GROUP}],
            lr=host_lr,
            weight_decay=weight_decay,
            fused=True,
        )
        self.sync()

    def _wanted(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        wanted = {HOST_GROUP: (self.model.host_parameters(), self.host_lr)}
        for name, report in self.model.reports().items():
            if report.stage in ALIVE_STAGES or report.stage is SeedStage.FOSSILIZED:
                lr = self.host_lr if report.stage is SeedStage.FOSSILIZED else self.seed_lr
                wanted[name] = (self.model.seed_parameters(name), lr)
        return wanted

    def sync(self) -> None:
        """Make the groups match the model's seeds: add new ones, drop pruned ones, set rates."""
        wanted = self._wanted()
        keep = []
        for group in self.optimizer.param_groups:
            name = group["name"]
            current = name in wanted and [id(p) for p in group["params"]] == [
                id(p) for p in wanted[name][0]
            ]
            if current:
                keep.append(group)
            else:
                for p in group["params"]:
                    self.optimizer.state.pop(p, None)
        # Filter by identity: list.remove would compare groups by value, tensors included.
        self.optimizer.param_groups[:] = keep
        present = {g["name"] for g in self.optimizer.param_groups}
        for name, (params, lr) in wanted.items():
            if name not in present:
                self.optimizer.add_param_group({"params": params, "lr": lr, "name": name})
        for group in self.optimizer.param_groups:
            group["lr"] = wanted[group["name"]][1]
        order = list(wanted)  # host, then slots in ordered_slots order
        self.optimizer.param_groups.sort(key=lambda g: order.index(g["name"]))

    def group_names(self) -> list[str]:
        return [g["name"] for g in self.optimizer.param_groups]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()

    def fused_inputs(self) -> list[tuple[tuple[Any, ...], tuple[list[Tensor], ...]]] | None:
        """Each group's AdamW hyperparameters and the tensors its step updates: parameters with
        gradients, their gradients, moments and step counts (None: some such parameter has no
        state yet, which only torch's own first ``step`` creates, or a group is not plain fused
        AdamW)."""
        inputs = []
        for group in self.optimizer.param_groups:
            plain = not (group["amsgrad"] or group["maximize"] or group["differentiable"])
            if not (group["fused"] and plain):  # e.g. flags a loaded state brought along
                return None
            key = (group["lr"], group["weight_decay"], *group["betas"], group["eps"])
            lists: tuple[list[Tensor], ...] = ([], [], [], [], [])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.optimizer.state.get(p)
                if not state:
                    return None
                for part, value in zip(
                    lists,
                    (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"]),
                    strict=True,
                ):
                    part.append(value)
            inputs.append((key, lists))
        return inputs

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state saved when the model had the same seeds (call ``sync`` first).

        Raises:
            ValueError: if the saved groups are not the current ones.
        """
        saved = [g["name"] for g in state["param_groups"]]
        if saved != self.group_names():
            raise ValueError(
                f"optimizer state has groups {saved}, the model has {self.group_names()}"
            )
        self.optimizer.load_state_dict(state)


def step_optimizers(optimizers: Sequence[SlotOptimizer]) -> None:
    """``step`` every optimizer, the groups of all of them that share AdamW's hyperparameters
    in one fused call: what each ``step`` computes, bit for bit (the fused kernel updates each
    tensor on its own), without each optimizer's own overhead: for a chunk of 8 impaired hosts,
    8 x 240 us per batch (of about 30 ms) against 0.43 ms for one call (torch 2.13, one CPU
    thread). An optimizer holding a parameter without state (torch's ``step`` creates it) or a
    group other than plain fused AdamW steps on its own."""
    buckets: dict[tuple[Any, ...], tuple[list[Tensor], ...]] = {}
    for optimizer in optimizers:
        inputs = optimizer.fused_inputs()
        if inputs is None:
            optimizer.step()
            continue
        for key, lists in inputs:
            bucket = buckets.setdefault(key, ([], [], [], [], []))
            for into, part in zip(bucket, lists, strict=True):
                into += part
    with torch.no_grad():
        for (lr, weight_decay, beta1, beta2, eps), tensors in buckets.items():
            params, grads, avgs, sqs, steps = tensors
            adamw(
                params, grads, avgs, sqs, [], steps, fused=True, amsgrad=False, beta1=beta1,
                beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps, maximize=False,
            )  # fmt: skip
