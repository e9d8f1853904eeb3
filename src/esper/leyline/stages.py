"""Seed lifecycle stages and the small enums around them (the tables are in ``lifecycle``)."""

from __future__ import annotations

from enum import Enum


class SeedStage(Enum):
    """Where a slot's seed is in its life (DESIGN §2). One seed per slot at a time."""

    DORMANT = "DORMANT"  # empty slot: identity, costs nothing
    GERMINATED = "GERMINATED"  # seed built and attached, not yet run
    TRAINING = "TRAINING"  # learns on the host's error; output equals the host's exactly
    BLENDING = "BLENDING"  # α ramps from 0 to its target
    HOLDING = "HOLDING"  # α held at target while the contribution is measured
    FOSSILIZED = "FOSSILIZED"  # permanent; trains with the host (terminal)
    PRUNED = "PRUNED"  # removed from the forward pass
    EMBARGOED = "EMBARGOED"  # slot cools down before it may be reused
    RESETTING = "RESETTING"  # seed module is dropped at the end of this epoch


class GateLevel(Enum):
    """Quality gates guarding transitions. DESIGN §2 numbers them G0, G1, G2, G3, G5 (no G4)."""

    G0 = "G0"  # DORMANT -> GERMINATED: slot, blueprint and shapes valid
    G1 = "G1"  # GERMINATED -> TRAINING: seed built, finite, still an identity
    G2 = "G2"  # TRAINING -> BLENDING: trained long enough, gradients healthy, improving
    G3 = "G3"  # BLENDING -> HOLDING: α reached its target, blended long enough
    G5 = "G5"  # HOLDING -> FOSSILIZED: measured contribution clears the threshold


class GateMode(Enum):
    """STRICT applies the numeric thresholds; PERMISSIVE applies only the structural checks."""

    STRICT = "strict"
    PERMISSIVE = "permissive"


class BlendMode(Enum):
    """How a seed's output is mixed into the host stream.

    ADD: ``lerp(h, s, α)``. GATED: ``lerp(h, s, α·g(x))`` with a small learned per-sample gate g.
    """

    ADD = "add"
    GATED = "gated"


class AlphaCurve(Enum):
    """Shape of the α ramp from its start value to its target over ``tempo`` epochs."""

    LINEAR = "linear"
    COSINE = "cosine"
    SIGMOID = "sigmoid"


class Topology(Enum):
    """The kind of tensor flowing through a host's injection points."""

    CNN = "cnn"  # (B, C, H, W)
    TRANSFORMER = "transformer"  # (B, T, C)
