"""Orchestration strategies of the heuristic: where and what it grows (DESIGN §11).

The heuristic (``esper.tamiyo.heuristic``) reads ``HeuristicConfig.strategy`` at a few points;
this module holds what the strategies need beyond its rules. ``STRATEGIES``:

- ``spread`` (the default): the heuristic's original behaviour, none of the four below. It
  germinates after a plateau into a slot that never held a seed first, at most
  ``max_live_seeds`` live seeds, the selector choosing among every offered blueprint; a slot
  whose seed was pruned is regrown later like any other DORMANT slot.
- ``replace``: a slot whose seed the heuristic pruned (it stalled or hurt) is regrown as soon
  as it is DORMANT again, without waiting for a plateau or the cooldown, with a *different*
  blueprint; within the horizon and live-seed limits.
- ``diversify``: the blueprint comes from the families (``FAMILIES``) least represented among
  the seeds in the other slots (live or fossilized), so the slots hold different kinds of
  module.
- ``specialize``: after the heuristic fossilizes a seed, the next germination (necessarily in
  another slot) grows a *larger* member of the fossilized blueprint's family: one with more
  parameters at the target slot (``blueprint_sizes``); the same family when there is no larger
  one.
- ``ensemble``: several seeds blend at once: germination fills every enabled slot, and
  ``max_live_seeds`` becomes the budget of *settled* blended seeds (BLENDING or HOLDING with α
  at its target). Blended seeds are judged by their exact Shapley value (the reports must carry
  it: ``HostTraining.shapley``) instead of their leave-one-out contribution, which credits
  neither of two redundant seeds: one below ``prune_contribution`` is pruned, and over budget
  the settled seed with the lowest Shapley value is pruned. A seed still ramping α up is not
  compared: its value is measured at a partial α.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from esper.kasmina import blueprint_registry
from esper.leyline import (
    ALIVE_STAGES,
    Action,
    InjectionSpec,
    Op,
    SeedStage,
    SeedStateReport,
)
from esper.leyline import thresholds as T
from esper.leyline.config import require

STRATEGIES = ("spread", "replace", "diversify", "specialize", "ensemble")

FAMILIES: dict[str, str] = {
    # New spatial features: convolutions of any shape and cost.
    "conv_light": "conv",
    "conv_heavy": "conv",
    "depthwise": "conv",
    "bottleneck": "conv",
    # Token mixing in a transformer; channel gating (squeeze-excite) in a CNN: both reweight
    # the stream by what the rest of it holds.
    "attention": "attention",
    # Rescaling the stream's own statistics.
    "norm": "norm",
    # Per-position feature maps: the MLP and its low-rank cousin.
    "mlp": "mlp",
    "lora": "mlp",
}
"""Blueprint families by registry name (both topologies; a name means one kind of module in
either)."""

_UNFAMILIAR = sorted(set(blueprint_registry.all_names()) - set(FAMILIES))
if _UNFAMILIAR:  # a new blueprint must say which family it joins
    raise ImportError(f"blueprints without a family in FAMILIES: {_UNFAMILIAR}")

SHAPLEY_STAGES = frozenset({SeedStage.BLENDING, SeedStage.HOLDING})
"""Live blended seeds: the ones the ensemble judges by their Shapley value."""


def family(blueprint: str) -> str:
    """The family of ``blueprint`` (``FAMILIES``).

    Raises:
        ValueError: for a blueprint without a family.
    """
    require(blueprint in FAMILIES, f"blueprint {blueprint!r} has no family in FAMILIES")
    return FAMILIES[blueprint]


def blueprint_sizes(specs: Sequence[InjectionSpec]) -> dict[str, dict[str, int]]:
    """Each blueprint's parameter count at each injection point (built on the meta device):
    what ``specialize`` calls larger.

    Args:
        specs: the host's injection points (``host.injection_points``).

    Returns:
        ``{slot: {blueprint: parameters}}`` for every blueprint that fits the host.

    Raises:
        ValueError: two specs name one slot (the last one's sizes were kept).
    """
    slots = [spec.slot for spec in specs]
    repeated = sorted({slot for slot in slots if slots.count(slot) > 1})
    if repeated:
        raise ValueError(f"injection points must name distinct slots; repeated: {repeated}")
    return {
        spec.slot: {
            name: blueprint_registry.get(name, spec.topology).param_count(spec)
            for name in blueprint_registry.names(spec.topology)
        }
        for spec in specs
    }


def diverse(candidates: Sequence[str], reports: Sequence[SeedStateReport], slot: str) -> list[str]:
    """``diversify``: the candidates of the families least present in the other slots.

    Args:
        candidates: offered blueprints, in preference order (kept).
        reports: every enabled slot's report.
        slot: the slot about to be grown.
    """
    present = Counter(
        family(r.blueprint)
        for r in reports
        if r.slot != slot
        and r.blueprint is not None
        and r.stage in ALIVE_STAGES | {SeedStage.FOSSILIZED}
    )
    fewest = min(present[family(b)] for b in candidates)
    return [b for b in candidates if present[family(b)] == fewest]


def specialized(candidates: Sequence[str], fossilized: str, sizes: Mapping[str, int]) -> list[str]:
    """``specialize``: the candidates of ``fossilized``'s family larger than it at the target
    slot; the whole family when none is larger; all candidates when the family is not offered.

    Args:
        candidates: offered blueprints, in preference order (kept).
        fossilized: the blueprint of the seed the heuristic fossilized last.
        sizes: every blueprint's parameter count at the target slot.

    Raises:
        ValueError: when ``sizes`` lacks a blueprint it must compare.
    """
    kin = [b for b in candidates if family(b) == family(fossilized)]
    unknown = sorted({fossilized, *kin} - set(sizes))
    require(not unknown, f"no parameter count for {unknown} at the target slot in sizes")
    larger = [b for b in kin if sizes[b] > sizes[fossilized]]
    return larger or kin or list(candidates)


def check_shapley(reports: Sequence[SeedStateReport]) -> None:
    """``ensemble`` judges blended seeds by their Shapley value: fail loudly without one.

    Raises:
        ValueError: naming the blended seeds whose reports carry no Shapley value.
    """
    missing = [r.slot for r in reports if r.stage in SHAPLEY_STAGES and r.shapley_value is None]
    require(
        not missing,
        f"the ensemble strategy needs Shapley values (train with shapley on); none for {missing}",
    )


def _shapley(report: SeedStateReport) -> float:
    assert report.shapley_value is not None  # check_shapley ran first
    return report.shapley_value


def over_budget(reports: Sequence[SeedStateReport], budget: int) -> Action | None:
    """``ensemble``: PRUNE the settled blended seed with the lowest Shapley value when more
    than ``budget`` are settled (the first in slot order on a tie), else None."""
    settled = [
        r
        for r in reports
        if r.stage in SHAPLEY_STAGES and abs(r.alpha - r.alpha_target) <= T.ALPHA_EPSILON
    ]
    if len(settled) <= budget:
        return None
    check_shapley(settled)
    worst = min(settled, key=_shapley)
    reason = (
        f"{len(settled)} settled blended seeds, budget {budget}: "
        f"lowest Shapley value {worst.shapley_value:.3g}"
    )
    return Action(Op.PRUNE, slot=worst.slot, reason=reason)
