"""One seed slot and the seed lifecycle state machine (DESIGN §2).

A ``SeedSlot`` sits at one injection point. It holds at most one seed, its stage, its α schedule
and its latest measurements, and it applies the seed to the host stream:

============  ===================================================  =========================
stage         forward output                                       gradient into the host
============  ===================================================  =========================
DORMANT ...   ``h`` (seed not run)                                 unchanged
TRAINING      ``h`` exactly; seed trained as if added (bounded)    unchanged (seed input detached)
BLENDING      ``lerp(h, x_in + delta(x_in), α)``                   ``(1-α)·g`` when isolated
HOLDING       same as BLENDING with α fixed                        same
FOSSILIZED    same, ``x_in = h``: trains with the host             full
============  ===================================================  =========================

``x_in`` is ``h.detach()`` in TRAINING, and in BLENDING/HOLDING when ``isolate_blending`` is set
(the CNN default); transformer seeds may co-adapt with their host instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from esper.kasmina.blending import AlphaSchedule, BlendGate, straight_through
from esper.kasmina.blueprints import blueprint_registry
from esper.kasmina.errors import GateError, IllegalTransitionError, LifecycleError
from esper.kasmina.gates import enforce
from esper.leyline import (
    AlphaCurve,
    BlendMode,
    GateLevel,
    GateMode,
    InjectionSpec,
    LifecycleTransition,
    Op,
    SeedStage,
    SeedStateReport,
)
from esper.leyline import thresholds as T
from esper.leyline.config import is_number
from esper.leyline.lifecycle import (
    ADVANCE_TO,
    BLENDED_STAGES,
    FORWARD_STAGES,
    OP_STAGES,
    SEED_MODULE_STAGES,
    VALID_TRANSITIONS,
)


class SeedSlot(nn.Module):
    """A seed slot at one injection point.

    Args:
        spec: the injection point.
        isolate_blending: detach the seed's input in BLENDING and HOLDING too.
        embargo_epochs: epochs a pruned slot stays EMBARGOED.
        log: where transitions are appended (shared by a model's slots, so it is chronological).
    """

    def __init__(
        self,
        spec: InjectionSpec,
        isolate_blending: bool,
        embargo_epochs: int,
        log: list[LifecycleTransition],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.slot
        self.isolate_blending = isolate_blending
        self.embargo_epochs = embargo_epochs
        self.seed: nn.Module | None = None
        self.gate: BlendGate | None = None
        self._clear_state()
        self.transitions = log

    def _clear_state(self) -> None:
        self.stage = SeedStage.DORMANT
        self.blueprint: str | None = None
        self.blend_mode: BlendMode | None = None
        self.alpha = 0.0
        self.schedule: AlphaSchedule | None = None
        # What BLENDING will do once it starts; set_alpha_target may change it beforehand.
        self.plan = AlphaSchedule(
            0.0, T.DEFAULT_ALPHA_TARGET, T.DEFAULT_BLEND_TEMPO, AlphaCurve.LINEAR
        )
        self.epochs_in_stage = 0
        self._clear_measurements()

    def _clear_measurements(self) -> None:
        self.contribution: float | None = None
        self.shapley: float | None = None
        self.gradient_ratio: float | None = None

    # ---------------------------------------------------------------- forward

    def forward(self, h: Tensor, alpha: float | Tensor | None = None) -> Tensor:
        """Apply the seed to the host stream ``h``.

        Args:
            h: host activations at this point, ``(B, C, H, W)`` or ``(B, T, C)``.
            alpha: ``None`` for the stage's own behaviour; a float or a per-sample ``(B,)`` tensor
                to evaluate the seed blended at that α instead (counterfactual measurement).
        """
        if self.stage not in FORWARD_STAGES:
            return h
        assert self.seed is not None
        if alpha is None and self.stage is SeedStage.TRAINING:
            return straight_through(h, self.seed(h.detach()))
        if alpha is None:
            alpha = self.alpha
        elif isinstance(alpha, Tensor):
            alpha = alpha.view(-1, *([1] * (h.dim() - 1)))  # (B,) -> (B, 1, ...) for broadcasting
        if isinstance(alpha, float) and alpha == 0.0:
            return h  # exact identity; no need to run the seed
        detach = self.stage is SeedStage.TRAINING or (
            self.stage is not SeedStage.FOSSILIZED and self.isolate_blending
        )
        x_in = h.detach() if detach else h
        zero_rows = alpha == 0 if isinstance(alpha, Tensor) else None
        if self.gate is not None:
            alpha = alpha * self.gate(x_in)
        if isinstance(alpha, Tensor):  # under a bfloat16 autocast: lerp needs h's dtype
            alpha = alpha.to(h.dtype)
        out = torch.lerp(h, (x_in + self.seed(x_in)).to(h.dtype), alpha)
        if zero_rows is not None:
            # α = 0 must return h even when the seed's output is not finite (lerp gives NaN).
            out = torch.where(zero_rows, h, out)
        return out

    # ---------------------------------------------------------------- lifecycle

    def _require(self, to: SeedStage) -> None:
        if to not in VALID_TRANSITIONS[self.stage]:
            allowed = sorted(s.value for s in VALID_TRANSITIONS[self.stage]) or ["none (terminal)"]
            raise IllegalTransitionError(
                f"slot {self.name!r}: {self.stage.value} -> {to.value} is not a legal transition; "
                f"from {self.stage.value} the lifecycle allows {allowed}"
            )

    def _transition(self, to: SeedStage, epoch: int, reason: str) -> None:
        self._require(to)
        self.transitions.append(
            LifecycleTransition(self.name, self.blueprint, self.stage, to, epoch, reason)
        )
        self.stage = to
        self.epochs_in_stage = 0
        self._clear_measurements()  # measurements describe the current stage only

    def _attach(
        self, blueprint: str, blend_mode: BlendMode, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.seed = (
            blueprint_registry.get(blueprint, self.spec.topology).build(self.spec).to(device, dtype)
        )
        self.gate = (
            BlendGate(self.spec).to(device, dtype) if blend_mode is BlendMode.GATED else None
        )
        self.blueprint = blueprint
        self.blend_mode = blend_mode

    def _detach(self) -> None:
        self.seed = self.gate = None
        self.blueprint = self.blend_mode = None

    def germinate(
        self,
        blueprint: str,
        blend_mode: BlendMode,
        device: torch.device,
        dtype: torch.dtype,
        epoch: int,
    ) -> None:
        """DORMANT -> GERMINATED through gate G0 (blueprint fits, shape right, delta zero)."""
        self._require(SeedStage.GERMINATED)
        try:
            self._attach(blueprint, blend_mode, device, dtype)
            assert self.seed is not None
            # A private generator: probing must not shift the global random stream.
            gen = torch.Generator(device=device).manual_seed(0)
            probe = torch.randn(2, *self.spec.shape, generator=gen, device=device, dtype=dtype)
            with torch.no_grad():
                delta = self.seed(probe)
        except (ValueError, RuntimeError) as err:  # unknown blueprint, or it cannot run here
            self._detach()
            raise GateError(GateLevel.G0, self.name, [f"blueprint_fits: {err}"]) from err
        failures = []
        if delta.shape != probe.shape:
            failures.append(f"output_shape: seed maps {tuple(probe.shape)} to {tuple(delta.shape)}")
        elif not torch.equal(delta, torch.zeros_like(delta)):
            failures.append(
                "zero_output: a fresh seed must add exactly 0 (zero-init its last layer)"
            )
        if failures:
            self._detach()
            raise GateError(GateLevel.G0, self.name, failures)
        self._transition(SeedStage.GERMINATED, epoch, f"germinate {blueprint}")

    def advance(self, mode: GateMode, epoch: int) -> SeedStage:
        """Move to the next stage through its gate; returns the new stage."""
        if self.stage not in ADVANCE_TO:
            hint = " (use fossilize or prune)" if self.stage is SeedStage.HOLDING else ""
            raise LifecycleError(
                f"slot {self.name!r}: advance is not possible from {self.stage.value}{hint}; "
                f"advance works from {[s.value for s in ADVANCE_TO]}"
            )
        to, gate = ADVANCE_TO[self.stage]
        enforce(gate, self, mode)
        self._transition(to, epoch, f"advance ({gate.value})")
        if to is SeedStage.BLENDING:
            self.schedule = AlphaSchedule(0.0, self.plan.target, self.plan.tempo, self.plan.curve)
            self.alpha = 0.0
        elif to is SeedStage.HOLDING:
            self.schedule = None  # α is held where it is
        return to

    def fossilize(self, mode: GateMode, epoch: int) -> None:
        """HOLDING -> FOSSILIZED through gate G5; the seed becomes part of the host."""
        self._require(SeedStage.FOSSILIZED)
        enforce(GateLevel.G5, self, mode)
        self._transition(SeedStage.FOSSILIZED, epoch, "fossilize (G5)")

    def prune(self, epoch: int, reason: str) -> None:
        """Remove a live seed from the forward pass: PRUNED, then EMBARGOED, RESETTING, DORMANT."""
        self._transition(SeedStage.PRUNED, epoch, reason)
        self.alpha = 0.0
        self.schedule = None
        self.seed = self.gate = None  # freed at once; the blueprint name stays for reports

    def set_alpha_target(self, target: float, tempo: int, curve: AlphaCurve) -> None:
        """Plan (GERMINATED, TRAINING) or re-plan from the current α (BLENDING) the α ramp."""
        if not (is_number(target) and 0.0 < target <= 1.0):  # numpy's scalars too, not True
            raise ValueError(f"alpha target must be a number in (0, 1], got {target!r}")
        if not (is_number(tempo, integral=True) and tempo >= 1):
            raise ValueError(f"tempo must be a positive number of epochs, got {tempo!r}")
        tempo = int(tempo)
        allowed = OP_STAGES[Op.SET_ALPHA_TARGET]
        if self.stage not in allowed:
            raise LifecycleError(
                f"slot {self.name!r}: set_alpha_target is allowed in "
                f"{[s.value for s in SeedStage if s in allowed]}, not {self.stage.value}"
            )
        self.plan = AlphaSchedule(0.0, float(target), tempo, curve)
        if self.stage is SeedStage.BLENDING:
            self.schedule = AlphaSchedule(self.alpha, float(target), tempo, curve)

    def step_epoch(self, epoch: int) -> None:
        """End of an epoch: tick the α schedule and the embargo/reset timers."""
        self.epochs_in_stage += 1
        if self.stage is SeedStage.BLENDING and self.schedule is not None:
            self.alpha = self.schedule.step()
        elif self.stage is SeedStage.PRUNED:
            self._transition(SeedStage.EMBARGOED, epoch, "embargo")
        elif self.stage is SeedStage.EMBARGOED and self.epochs_in_stage >= self.embargo_epochs:
            self._transition(SeedStage.RESETTING, epoch, "embargo over")
        elif self.stage is SeedStage.RESETTING:
            self._transition(SeedStage.DORMANT, epoch, "reset")
            self._clear_state()

    # ---------------------------------------------------------------- measurements

    @property
    def gradient_healthy(self) -> bool | None:
        if self.gradient_ratio is None:
            return None
        return math.isfinite(self.gradient_ratio) and (
            T.GRADIENT_RATIO_HEALTHY_MIN <= self.gradient_ratio <= T.GRADIENT_RATIO_HEALTHY_MAX
        )

    def record_gradient_ratio(self, ratio: float) -> None:
        if self.gradient_ratio is None or not math.isfinite(self.gradient_ratio):
            self.gradient_ratio = ratio
        else:
            d = T.GRADIENT_EMA_DECAY
            self.gradient_ratio = d * self.gradient_ratio + (1 - d) * ratio

    def seed_parameters(self) -> list[nn.Parameter]:
        """The seed's (and its gate's) parameters; empty for an empty slot."""
        return [p for m in (self.seed, self.gate) if m is not None for p in m.parameters()]

    def report(self, host_param_count: int) -> SeedStateReport:
        if self.schedule is not None:
            target = self.schedule.target
        elif self.stage in (SeedStage.HOLDING, SeedStage.FOSSILIZED):
            target = self.alpha  # held
        elif self.seed is not None:
            target = self.plan.target  # GERMINATED or TRAINING: what BLENDING will aim for
        else:
            target = 0.0  # no seed, nothing planned
        return SeedStateReport(
            slot=self.name,
            stage=self.stage,
            blueprint=self.blueprint,
            blend_mode=self.blend_mode,
            alpha=self.alpha,
            alpha_target=target,
            epochs_in_stage=self.epochs_in_stage,
            counterfactual_contribution=self.contribution,
            shapley_value=self.shapley,
            seed_gradient_norm_ratio=self.gradient_ratio,
            gradient_healthy=self.gradient_healthy,
            seed_param_count=sum(p.numel() for p in self.seed_parameters()),
            host_param_count=host_param_count,
        )

    # ---------------------------------------------------------------- checkpoint manifest

    def manifest(self) -> dict[str, Any]:
        """Everything but the weights needed to rebuild this slot exactly."""
        return {
            "stage": self.stage.value,
            "blueprint": self.blueprint,
            "blend_mode": None if self.blend_mode is None else self.blend_mode.value,
            "alpha": self.alpha,
            "schedule": None if self.schedule is None else self.schedule.to_dict(),
            "plan": self.plan.to_dict(),
            "epochs_in_stage": self.epochs_in_stage,
            "contribution": self.contribution,
            "shapley": self.shapley,
            "gradient_ratio": self.gradient_ratio,
        }

    def restore(self, data: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        """Rebuild from ``manifest()`` output, replacing any seed held now (weights are loaded
        afterwards).

        Raises:
            ValueError: for a value of the wrong type or out of range.
        """
        unknown = sorted(set(data) - set(self.manifest()))
        if unknown:
            raise ValueError(f"slot {self.name!r}: unknown key(s) {unknown} in its manifest entry")
        stage = SeedStage(data["stage"])
        self._detach()
        self._clear_state()
        blueprint, blend = data["blueprint"], data["blend_mode"]
        if (blueprint is None) != (stage is SeedStage.DORMANT):
            raise ValueError(
                f"slot {self.name!r}: stage {stage.value} with blueprint {blueprint!r}"
            )
        if stage in SEED_MODULE_STAGES:
            self._attach(blueprint, BlendMode(blend), device, dtype)
        else:
            self.blueprint = blueprint
            self.blend_mode = None if blend is None else BlendMode(blend)
        self.stage = stage
        alpha = _optional_float(data, "alpha")
        if alpha is None or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0.0, 1.0], got {data['alpha']!r}")
        held = stage in (SeedStage.HOLDING, SeedStage.FOSSILIZED)
        if (alpha > 0.0 and stage not in BLENDED_STAGES) or (alpha == 0.0 and held):
            raise ValueError(
                f"slot {self.name!r}: alpha {alpha} in {stage.value}; only BLENDING, HOLDING "
                "and FOSSILIZED seeds are blended in (α > 0), and the last two always are"
            )
        self.alpha = alpha
        self.schedule = (
            None if data["schedule"] is None else AlphaSchedule.from_dict(data["schedule"])
        )
        self.plan = AlphaSchedule.from_dict(data["plan"])
        epochs = data["epochs_in_stage"]
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ValueError(
                f"slot {self.name!r}: epochs_in_stage must be an int >= 0, got {epochs!r}"
            )
        self.epochs_in_stage = epochs
        self.contribution = _optional_float(data, "contribution")
        self.shapley = _optional_float(data, "shapley")
        self.gradient_ratio = _optional_float(data, "gradient_ratio")
        self._check_restored()

    def _check_restored(self) -> None:
        """What the lifecycle keeps true holds for the restored slot: a BLENDING seed, and it
        alone, has an α schedule, at its α; a plan aims above 0; a gradient ratio is not
        negative. An edited manifest otherwise held α at 0.25 forever, or past G3 never.

        Raises:
            ValueError: naming what is inconsistent.
        """
        where, blending = f"slot {self.name!r}", self.stage is SeedStage.BLENDING
        if (self.schedule is not None) != blending:
            raise ValueError(
                f"{where}: a BLENDING seed has an α schedule and no other stage has one; got "
                f"{self.stage.value} with schedule {self.schedule}"
            )
        if self.schedule is not None and not math.isclose(
            self.alpha, self.schedule.value(), rel_tol=0.0, abs_tol=1e-9
        ):
            raise ValueError(
                f"{where}: alpha {self.alpha} is not where its schedule is "
                f"({self.schedule.value()})"
            )
        if not self.plan.target > 0.0:
            raise ValueError(f"{where}: its α plan's target must be in (0, 1], got 0")
        if self.gradient_ratio is not None and self.gradient_ratio < 0:
            raise ValueError(f"{where}: gradient_ratio must be >= 0, got {self.gradient_ratio}")


def _optional_float(data: dict[str, Any], key: str) -> float | None:
    value = data[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number or null, got {value!r}")
    return float(value)
