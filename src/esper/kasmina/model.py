"""``MorphogeneticModel``: a host plus seed slots at its injection points.

The forward pass runs the host segment by segment and lets each enabled slot act on the stream
between segments. Lifecycle calls are addressed by slot name and delegated to ``SeedSlot``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from esper.kasmina.counterfactual import per_sample_accuracy, shapley_from_coalitions
from esper.kasmina.hosts import SegmentedHost
from esper.kasmina.slot import SeedSlot
from esper.leyline import (
    BLENDED_STAGES,
    FORWARD_STAGES,
    AlphaCurve,
    BlendMode,
    GateMode,
    LifecycleTransition,
    SeedStage,
    SeedStateReport,
    Topology,
    ordered_slots,
)
from esper.leyline import thresholds as T
from esper.leyline.config import is_number
from esper.leyline.slots import check_slots

Metric = Callable[[Tensor, Tensor], Tensor]
"""``metric(output (B, ...), target (B, ...)) -> (B,)`` per-sample score; higher is better."""

Observer = Callable[[Tensor, Tensor], None]
"""``observe(output, target)`` sees the model's own (unmodified) outputs of each batch, so a
caller can compute validation metrics from the counterfactual pass instead of a second one."""


@dataclass(frozen=True)
class GradientNorms:
    """Gradient norms measured after one backward pass (``MorphogeneticModel.gradient_norms``).

    Attributes:
        seeds: the measured seeds' slots, in slot order.
        sizes: parameter counts with a gradient: the host's, then each seed's.
        norms: ``(1 + len(seeds),)`` L2 norms in the same order, on the model's device.
    """

    seeds: tuple[str, ...]
    sizes: tuple[int, ...]
    norms: Tensor


E = TypeVar("E", BlendMode, AlphaCurve, GateMode)


def _parse_enum(enum: type[E], value: E | str) -> E:
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        raise ValueError(
            f"unknown {enum.__name__} {value!r}; accepted: {[m.value for m in enum]}"
        ) from None


def _check_batch(x: Tensor, y: Tensor) -> None:
    """A measured batch has samples, and one target row per input."""
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            "each batch needs one target row per input and at least one sample; got inputs "
            f"{tuple(x.shape)} and targets {tuple(y.shape)}"
        )


class MorphogeneticModel(nn.Module):
    """A host network that can grow seeds in named slots.

    Args:
        host: the host network.
        slots: names of the injection points to enable (a subset of the host's).
        gate_mode: ``"strict"`` (thresholds) or ``"permissive"`` (structural checks only).
        embargo_epochs: epochs a pruned slot stays EMBARGOED before it can be reused.
        isolate_blending: detach seed inputs in BLENDING/HOLDING; ``None`` picks the topology's
            default (CNN: isolated; transformer: co-adapting).
    """

    def __init__(
        self,
        host: SegmentedHost,
        slots: Sequence[str],
        *,
        gate_mode: GateMode | str = GateMode.STRICT,
        embargo_epochs: int = T.EMBARGO_EPOCHS,
        isolate_blending: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(host, SegmentedHost):
            raise TypeError(
                "host must be a SegmentedHost (CNNHost, TransformerHost), got "
                f"{type(host).__name__}"
            )
        specs = {spec.slot: spec for spec in host.injection_points}
        if not isinstance(slots, str):
            slots = list(slots)  # a generator would be used up by the check below
        check_slots(slots, list(specs))
        if (
            isinstance(embargo_epochs, bool)
            or not isinstance(embargo_epochs, int)
            or embargo_epochs < 1
        ):
            raise ValueError(f"embargo_epochs must be a positive integer, got {embargo_epochs!r}")
        if isolate_blending is not None and not isinstance(isolate_blending, bool):
            raise ValueError(
                f"isolate_blending must be True, False or None, got {isolate_blending!r}"
            )
        self.host = host
        self.gate_mode = _parse_enum(GateMode, gate_mode)
        self.embargo_epochs = embargo_epochs
        topology = host.injection_points[0].topology
        isolate = topology is Topology.CNN if isolate_blending is None else isolate_blending
        self._isolate_blending = isolate
        self.order = ordered_slots(slots)
        self._transitions: list[LifecycleTransition] = []
        self.slots = nn.ModuleDict(
            {
                name: SeedSlot(specs[name], isolate, embargo_epochs, self._transitions)
                for name in self.order
            }
        )
        self.epoch = 0
        self.host_param_count = sum(p.numel() for p in host.parameters())

    @property
    def isolate_blending(self) -> bool:
        """Whether seed inputs stay detached in BLENDING/HOLDING (fixed at construction)."""
        return self._isolate_blending

    # ---------------------------------------------------------------- forward

    def slot(self, name: str) -> SeedSlot:
        """The slot called ``name``.

        Raises:
            ValueError: naming the slot and the enabled ones.
        """
        if not isinstance(name, str) or name not in self.slots:  # ["mid"]: unhashable
            raise ValueError(f"unknown slot {name!r}; enabled slots: {list(self.order)}")
        return cast(SeedSlot, self.slots[name])

    def forward(self, x: Tensor) -> Tensor:
        h, prev = x, None
        for name in self.order:
            h = self.host.forward_to_segment(name, h, from_point=prev)
            h = self.slots[name](h)
            prev = name
        return self.host.forward_from_segment(self.order[-1], h)

    def fused_forward(self, x: Tensor, alpha_overrides: Sequence[Mapping[str, float]]) -> Tensor:
        """Evaluate K α-configurations of the seeds in one call.

        Host work is shared wherever configurations agree. On a GPU the configurations run as
        one ``K·B`` batch with per-sample α from the first slot where they differ (one kernel
        launch per layer for all of them); on a CPU, where a bigger batch buys nothing, each
        host segment runs once per group of configurations that agree on every slot so far
        (half the work of tiling in Esper's engine benchmark).

        Args:
            x: input batch, ``(B, ...)``.
            alpha_overrides: K mappings ``slot -> α``; a slot not named keeps its current α (a
                TRAINING seed's current α is 0: it does not change the output).

        Returns:
            ``(K, B, ...)`` outputs; row k equals ``forward(x)`` with configuration k applied
            (bit for bit on a CPU; up to floating-point reassociation in a ``K·B`` batch).

        Raises:
            RuntimeError: in train mode (batch statistics would mix configurations).
            ValueError: for an unknown slot, a slot without a running seed, or α outside [0, 1].
        """
        if self.training:
            raise RuntimeError(
                "fused_forward measures counterfactuals and needs model.eval(): in train mode "
                "batch statistics would mix the configurations"
            )
        if not isinstance(alpha_overrides, Mapping):
            alpha_overrides = list(alpha_overrides)  # a generator would be used up by the check
        if isinstance(alpha_overrides, Mapping) or not all(
            isinstance(o, Mapping) for o in alpha_overrides
        ):
            raise TypeError(
                "alpha_overrides is a sequence of {slot: α} mappings, one per configuration; "
                f"got {alpha_overrides!r}"
            )
        if not alpha_overrides:
            raise ValueError("alpha_overrides must hold at least one configuration")
        configs = [self._resolve(o) for o in alpha_overrides]
        if x.device.type == "cuda":
            return self._fused_tiled(x, configs)
        return self._fused_shared(x, configs)

    def _fused_tiled(self, x: Tensor, configs: list[dict[str, float]]) -> Tensor:
        """One ``K·B`` batch from the first slot where the configurations differ."""
        k, b = len(configs), x.shape[0]
        h, prev, tiled = x, None, False
        for name in self.order:
            h = self.host.forward_to_segment(name, h, from_point=prev)
            values = [c[name] for c in configs]
            varies = any(v != values[0] for v in values)
            if varies and not tiled:
                h = h.repeat(k, *([1] * (h.dim() - 1)))  # (B, ...) -> (K·B, ...), config-major
                tiled = True
            if varies:
                alpha = torch.tensor(values, dtype=h.dtype, device=h.device).repeat_interleave(b)
                h = self.slots[name](h, alpha)
            else:  # one α for every row: a scalar (α = 0 then skips the seed entirely)
                h = self.slots[name](h, values[0])
            prev = name
        out = self.host.forward_from_segment(self.order[-1], h)
        if not tiled:
            out = out.repeat(k, *([1] * (out.dim() - 1)))
        return out.view(k, b, *out.shape[1:])

    def _fused_shared(self, x: Tensor, configs: list[dict[str, float]]) -> Tensor:
        """Run each segment once per group of configurations that agree on every slot so far."""
        groups: list[tuple[list[int], Tensor]] = [(list(range(len(configs))), x)]
        prev = None
        for name in self.order:
            split: list[tuple[list[int], Tensor]] = []
            for members, h in groups:
                h = self.host.forward_to_segment(name, h, from_point=prev)
                by_alpha: dict[float, list[int]] = {}
                for i in members:
                    by_alpha.setdefault(configs[i][name], []).append(i)
                split += [(same, self.slots[name](h, alpha)) for alpha, same in by_alpha.items()]
            groups, prev = split, name
        outputs: list[Tensor | None] = [None] * len(configs)
        for members, h in groups:
            out = self.host.forward_from_segment(self.order[-1], h)
            for i in members:
                outputs[i] = out
        return torch.stack([o for o in outputs if o is not None])  # (K, B, ...)

    def _resolve(self, override: Mapping[str, float]) -> dict[str, float]:
        config = {}
        for name in self.order:
            slot = self.slot(name)
            config[name] = slot.alpha if slot.stage in BLENDED_STAGES else 0.0
        for name, value in override.items():
            slot = self.slot(name)
            if slot.stage not in FORWARD_STAGES:
                raise ValueError(
                    f"slot {name!r} is {slot.stage.value}: only seeds in "
                    f"{sorted(s.value for s in FORWARD_STAGES)} can be given an α override"
                )
            if not (is_number(value) and 0.0 <= value <= 1.0):
                raise ValueError(
                    f"α override for slot {name!r} must be a number in [0, 1], got {value!r}"
                )
            config[name] = float(value)
        return config

    # ---------------------------------------------------------------- counterfactuals

    def _scores(
        self,
        configs: Sequence[Mapping[str, float]],
        batches: Iterable[tuple[Tensor, Tensor]],
        metric: Metric,
        observe: Observer | None = None,
    ) -> list[float]:
        """Mean per-sample metric for each configuration over all batches."""
        total: Tensor | None = None
        count = 0
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for x, y in batches:
                    _check_batch(x, y)
                    out = self.fused_forward(x, configs)  # (K, B, ...)
                    if observe is not None:
                        observe(out[0], y)
                    k, b = out.shape[:2]
                    y_k = y.repeat(k, *([1] * (y.dim() - 1)))  # (K·B, ...), config-major
                    scores = metric(out.flatten(0, 1), y_k)
                    if scores.shape != (k * b,):
                        raise ValueError(
                            f"the metric must return one score per sample, shape ({k * b},) "
                            f"for {k} configurations of {b} samples; got {tuple(scores.shape)}"
                        )
                    scores = scores.view(k, b)
                    total = scores.sum(dim=1) if total is None else total + scores.sum(dim=1)
                    count += b
        finally:
            self.train(was_training)
        if total is None:
            raise ValueError("no batches given to measure on")
        result: list[float] = (total.double() / count).tolist()
        return result

    def measure_contributions(
        self,
        batches: Iterable[tuple[Tensor, Tensor]],
        metric: Metric = per_sample_accuracy,
        observe: Observer | None = None,
    ) -> dict[str, float]:
        """Measure each running seed's counterfactual contribution and store it in its report.

        For a blended seed: metric(all seeds as they are) − metric(same, this seed at α=0).
        For a TRAINING seed (not in the output yet): metric(seed probed at α=1) − metric(as is).
        All configurations run in one fused batch per input batch; the model is evaluated in eval
        mode without gradients and returned to its previous mode. ``observe``, if given, receives
        each batch's output with every seed as it is (the plain forward) and its targets.

        Returns:
            ``{slot: contribution}`` in slot order, for seeds in TRAINING, BLENDING, HOLDING or
            FOSSILIZED.
        """
        players = [n for n in self.order if self.slot(n).stage in FORWARD_STAGES]
        if not players:
            return {}
        probing = {n: self.slot(n).stage is SeedStage.TRAINING for n in players}
        configs: list[dict[str, float]] = [{}]
        configs += [{n: 1.0 if probing[n] else 0.0} for n in players]
        scores = self._scores(configs, batches, metric, observe)
        result = {}
        for i, name in enumerate(players):
            with_seed, without = (
                (scores[i + 1], scores[0]) if probing[name] else (scores[0], scores[i + 1])
            )
            self.slot(name).contribution = result[name] = with_seed - without
        return result

    def shapley_values(
        self, batches: Iterable[tuple[Tensor, Tensor]], metric: Metric = per_sample_accuracy
    ) -> dict[str, float]:
        """Exact Shapley values of the blended seeds (BLENDING, HOLDING, FOSSILIZED) at their α.

        The value of a coalition is the metric with its members at their current α and every
        other seed at α=0; all ``2**n`` coalitions run in one fused batch.

        Raises:
            ValueError: with more than ``MAX_EXACT_SHAPLEY_SEEDS`` blended seeds.
        """
        players = [n for n in self.order if self.slot(n).stage in BLENDED_STAGES]
        if len(players) > T.MAX_EXACT_SHAPLEY_SEEDS:
            raise ValueError(
                f"exact Shapley values need 2**n configurations; {len(players)} blended seeds "
                f"exceed MAX_EXACT_SHAPLEY_SEEDS={T.MAX_EXACT_SHAPLEY_SEEDS}"
            )
        if not players:
            return {}
        configs = [
            {n: self.slot(n).alpha if mask >> i & 1 else 0.0 for i, n in enumerate(players)}
            for mask in range(1 << len(players))
        ]
        phi = shapley_from_coalitions(self._scores(configs, batches, metric), len(players))
        for name, value in zip(players, phi, strict=True):
            self.slot(name).shapley = value
        return dict(zip(players, phi, strict=True))

    def gradient_norms(self) -> GradientNorms | None:
        """Norms of the host's and each running seed's current ``.grad`` fields, as one tensor
        on the model's device (no device synchronisation: an epoch loop can collect them and
        hand them to ``record_gradient_norms`` at its end). None when nothing is measurable.
        """
        # Only parameters that received a gradient count: frozen host layers or a gate that
        # is idle in TRAINING must not dilute the RMS.
        host_grads = [p.grad for p in self.host.parameters() if p.grad is not None]
        seeds, sizes = [], [sum(g.numel() for g in host_grads)]
        norms = [torch.nn.utils.get_total_norm(host_grads)] if host_grads else []
        for name in self.order:
            slot = self.slot(name)
            grads = [p.grad for p in slot.seed_parameters() if p.grad is not None]
            if slot.stage in FORWARD_STAGES and grads:
                seeds.append(name)
                sizes.append(sum(g.numel() for g in grads))
                norms.append(torch.nn.utils.get_total_norm(grads))
        if not host_grads or not seeds:
            return None
        return GradientNorms(tuple(seeds), tuple(sizes), torch.stack(norms))

    def record_gradient_norms(self, measured: GradientNorms) -> None:
        """Update each measured seed's gradient-norm ratio from ``gradient_norms`` output.

        ratio = (‖g_seed‖ / √n_seed) / (‖g_host‖ / √n_host): per-parameter RMS gradients. A
        host without gradient (norm 0) gives nothing to compare against: nothing is recorded.
        """
        norms = measured.norms.tolist()
        host_rms = norms[0] / math.sqrt(measured.sizes[0])
        if host_rms == 0.0:
            return
        for name, norm, n in zip(measured.seeds, norms[1:], measured.sizes[1:], strict=True):
            self.slot(name).record_gradient_ratio((norm / math.sqrt(n)) / host_rms)

    def record_gradient_stats(self) -> None:
        """Update each running seed's gradient-norm ratio from the current ``.grad`` fields
        (``gradient_norms`` then ``record_gradient_norms``). Call after ``backward()``; seeds
        without gradients, or a host without any, are left as they are."""
        measured = self.gradient_norms()
        if measured is not None:
            self.record_gradient_norms(measured)

    # ---------------------------------------------------------------- lifecycle

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.host.parameters())
        return p.device, p.dtype

    def germinate(
        self, slot: str, blueprint: str, *, blend_mode: BlendMode | str = BlendMode.ADD
    ) -> None:
        """Grow ``blueprint`` in ``slot``: DORMANT -> GERMINATED through gate G0."""
        mode = _parse_enum(BlendMode, blend_mode)
        self.slot(slot).germinate(blueprint, mode, *self._device_dtype(), self.epoch)

    def advance(self, slot: str) -> SeedStage:
        """Move ``slot``'s seed to its next stage through that stage's gate; return the stage."""
        return self.slot(slot).advance(self.gate_mode, self.epoch)

    def set_alpha_target(
        self,
        slot: str,
        target: float,
        tempo: int = T.DEFAULT_BLEND_TEMPO,
        curve: AlphaCurve | str = "linear",
    ) -> None:
        """Plan (before BLENDING) or re-plan (in BLENDING) the α ramp to ``target``."""
        self.slot(slot).set_alpha_target(target, tempo, _parse_enum(AlphaCurve, curve))

    def prune(self, slot: str, reason: str = "prune") -> None:
        """Remove ``slot``'s live seed from the model (-> PRUNED, then embargo and reset)."""
        self.slot(slot).prune(self.epoch, reason)

    def fossilize(self, slot: str) -> None:
        """Make ``slot``'s held seed permanent through gate G5."""
        self.slot(slot).fossilize(self.gate_mode, self.epoch)

    def step_epoch(self) -> None:
        """End an epoch: tick α schedules and embargo/reset timers in every slot."""
        self.epoch += 1
        for name in self.order:
            self.slot(name).step_epoch(self.epoch)

    def drain_transitions(self) -> list[LifecycleTransition]:
        """Lifecycle transitions since the last call, in the order they happened (telemetry)."""
        out = list(self._transitions)
        self._transitions.clear()
        return out

    # ---------------------------------------------------------------- views

    def reports(self) -> dict[str, SeedStateReport]:
        """``{slot: SeedStateReport}`` in ``ordered_slots`` order."""
        return {name: self.slot(name).report(self.host_param_count) for name in self.order}

    def active_param_count(self) -> int:
        """Host parameters plus those of every seed in the forward pass (TRAINING..FOSSILIZED).

        Pruned, embargoed and merely germinated seeds do not count: they do not run.
        """
        seeds = sum(
            r.seed_param_count for r in self.reports().values() if r.stage in FORWARD_STAGES
        )
        return self.host_param_count + seeds

    def host_parameters(self) -> list[nn.Parameter]:
        """The host's parameters (for the host optimizer group)."""
        return list(self.host.parameters())

    def seed_parameters(self, slot: str) -> list[nn.Parameter]:
        """The parameters of ``slot``'s seed and gate (empty when the slot has none)."""
        return self.slot(slot).seed_parameters()
