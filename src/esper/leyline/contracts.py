"""Frozen dataclasses that cross subsystem boundaries."""

from __future__ import annotations

from dataclasses import dataclass

from esper.leyline.stages import BlendMode, SeedStage, Topology


@dataclass(frozen=True)
class InjectionSpec:
    """One place in a host where a seed can be grown.

    Attributes:
        slot: stable slot name (see ``esper.leyline.slot_names``).
        channels: channel count (CNN) or model dimension (transformer) of the stream there.
        shape: per-sample feature shape at the point: ``(C, H, W)`` for a CNN, ``(T_max, C)`` for a
            transformer (sequences may be shorter than ``T_max``).
        topology: the kind of host, which decides which blueprints fit.
    """

    slot: str
    channels: int
    shape: tuple[int, ...]
    topology: Topology


@dataclass(frozen=True)
class SeedStateReport:
    """What a controller may know about one slot. Unmeasured values are ``None``, never 0.

    Attributes:
        slot: slot name.
        stage: lifecycle stage.
        blueprint: blueprint name, ``None`` when the slot holds no seed.
        blend_mode: how the seed is mixed in, ``None`` without a seed.
        alpha: current blend weight (0 when not blended).
        alpha_target: where the α schedule is heading.
        epochs_in_stage: epochs since the last transition.
        counterfactual_contribution: metric(with seed) − metric(without), measured on held-out
            data; for a TRAINING seed it is the probe value with the seed blended at α=1.
        shapley_value: exact Shapley value among blended seeds, when it was computed.
        seed_gradient_norm_ratio: per-parameter RMS gradient of the seed over that of the host
            (moving average within the stage).
        gradient_healthy: whether that ratio is finite and inside the healthy band.
        seed_param_count: parameters in the seed (and its gate), 0 for an empty slot.
        host_param_count: parameters in the host alone.
    """

    slot: str
    stage: SeedStage
    blueprint: str | None
    blend_mode: BlendMode | None
    alpha: float
    alpha_target: float
    epochs_in_stage: int
    counterfactual_contribution: float | None
    shapley_value: float | None
    seed_gradient_norm_ratio: float | None
    gradient_healthy: bool | None
    seed_param_count: int
    host_param_count: int


@dataclass(frozen=True)
class LifecycleTransition:
    """A seed moved from one stage to another; Kasmina records these for telemetry to drain."""

    slot: str
    blueprint: str | None
    from_stage: SeedStage
    to_stage: SeedStage
    epoch: int
    reason: str
