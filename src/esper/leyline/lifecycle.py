"""The lifecycle tables of DESIGN §2, defined once.

Kasmina enforces them (``SeedSlot``), Tamiyo reads them for its masks, features and heuristic;
a test checks that the masks and the slot state machine agree on every stage and op.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from esper.leyline import thresholds as T
from esper.leyline.control import Op
from esper.leyline.stages import GateLevel, SeedStage

VALID_TRANSITIONS: Mapping[SeedStage, frozenset[SeedStage]] = MappingProxyType(
    {
        SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
        SeedStage.GERMINATED: frozenset({SeedStage.TRAINING, SeedStage.PRUNED}),
        SeedStage.TRAINING: frozenset({SeedStage.BLENDING, SeedStage.PRUNED}),
        SeedStage.BLENDING: frozenset({SeedStage.HOLDING, SeedStage.PRUNED}),
        SeedStage.HOLDING: frozenset({SeedStage.FOSSILIZED, SeedStage.PRUNED}),
        SeedStage.FOSSILIZED: frozenset(),
        SeedStage.PRUNED: frozenset({SeedStage.EMBARGOED}),
        SeedStage.EMBARGOED: frozenset({SeedStage.RESETTING}),
        SeedStage.RESETTING: frozenset({SeedStage.DORMANT}),
    }
)
"""Stage -> stages it may move to. Anything else raises."""

ADVANCE_TO: Mapping[SeedStage, tuple[SeedStage, GateLevel]] = MappingProxyType(
    {
        SeedStage.GERMINATED: (SeedStage.TRAINING, GateLevel.G1),
        SeedStage.TRAINING: (SeedStage.BLENDING, GateLevel.G2),
        SeedStage.BLENDING: (SeedStage.HOLDING, GateLevel.G3),
    }
)
"""ADVANCE: stage -> (next stage, the gate guarding the move). HOLDING ends by FOSSILIZE."""

FORWARD_STAGES = frozenset(
    {SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED}
)
"""Stages in which the seed runs in the forward pass (in TRAINING only for its gradient)."""

BLENDED_STAGES = frozenset({SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED})
"""Stages in which the seed changes the model's output (α may be > 0)."""

ALIVE_STAGES = frozenset(
    {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING}
)
"""Stages a seed can still be pruned from."""

RETIRED_STAGES = frozenset({SeedStage.PRUNED, SeedStage.EMBARGOED, SeedStage.RESETTING})
"""A pruned seed on its way back to DORMANT: the slot is unusable meanwhile."""

SEED_MODULE_STAGES = ALIVE_STAGES | {SeedStage.FOSSILIZED}
"""Stages that hold a seed module (it is freed on prune)."""

OP_STAGES: Mapping[Op, frozenset[SeedStage]] = MappingProxyType(
    {
        Op.WAIT: frozenset(),  # targets no slot
        Op.GERMINATE: frozenset({SeedStage.DORMANT}),
        Op.ADVANCE: frozenset(ADVANCE_TO),
        # The α ramp can be planned before BLENDING and re-planned during it.
        Op.SET_ALPHA_TARGET: frozenset(ADVANCE_TO),
        Op.PRUNE: ALIVE_STAGES,
        Op.FOSSILIZE: frozenset({SeedStage.HOLDING}),
    }
)
"""Stages a slot must be in for each op to apply to it; gates may still refuse ADVANCE and
FOSSILIZE."""

MIN_LIFECYCLE_EPOCHS = (
    1  # GERMINATED -> TRAINING at the next decision
    + T.G2_MIN_TRAINING_EPOCHS
    + max(T.DEFAULT_BLEND_TEMPO, T.G3_MIN_BLENDING_EPOCHS)
    + T.G5_MIN_HOLDING_EPOCHS
)
"""Fewest steps from germination to fossilization under the strict gates and default tempo."""


def first_blending_epoch(auto_advance: bool) -> int:
    """The earliest epoch of an episode a seed can train in BLENDING, its output blended in:
    germinated at the first decision (after epoch 1), in TRAINING from epoch 2 with
    auto-advance (G1 passes at once) or from epoch 3 after an ADVANCE, then
    ``G2_MIN_TRAINING_EPOCHS`` epochs there before G2 lets it blend."""
    return (2 if auto_advance else 3) + T.G2_MIN_TRAINING_EPOCHS


def never_blends(epochs: int, auto_advance: bool) -> str | None:
    """Why no seed can change the output of an episode of ``epochs`` epochs (none can reach
    BLENDING: its accuracy is a static host's whatever the controller does), or None."""
    first = first_blending_epoch(auto_advance)
    if epochs >= first:
        return None
    how = "with auto-advance" if auto_advance else "without auto-advance"
    return (
        f"episodes of {epochs} epoch{'s' * (epochs != 1)} are too short for any seed to blend "
        f"in ({how}, the first epoch a seed can blend is epoch {first}: germinated after epoch "
        f"1, then G2_MIN_TRAINING_EPOCHS = {T.G2_MIN_TRAINING_EPOCHS} epochs of training): "
        "every accuracy is the static host's, whatever the controller chooses"
    )
