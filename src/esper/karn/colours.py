"""Colours shared by Karn's views, so a stage looks the same in the report and on the dashboard."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from esper.leyline.stages import SeedStage
from esper.nissa.fold import MARK_KINDS

STAGE_COLOURS: Mapping[SeedStage, str] = {
    SeedStage.DORMANT: "#f0f0f0",
    SeedStage.GERMINATED: "#a6cee3",
    SeedStage.TRAINING: "#1f78b4",
    SeedStage.BLENDING: "#b2df8a",
    SeedStage.HOLDING: "#33a02c",
    SeedStage.FOSSILIZED: "#6a3d9a",
    SeedStage.PRUNED: "#e31a1c",
    SeedStage.EMBARGOED: "#fb9a99",
    SeedStage.RESETTING: "#fdbf6f",
}
"""One fixed colour per seed stage: light for waiting stages, strong for a seed in the output."""


@dataclass(frozen=True)
class MarkStyle:
    """How a lifecycle mark is drawn: ``colour`` everywhere, ``marker`` in the report's
    matplotlib plots, ``shape`` on the dashboard's canvas (the same figure)."""

    colour: str
    marker: str
    shape: str


MARK_STYLES: Mapping[str, MarkStyle] = {
    MARK_KINDS[SeedStage.GERMINATED]: MarkStyle("#2ca02c", "^", "triangle"),
    MARK_KINDS[SeedStage.FOSSILIZED]: MarkStyle("#ffbf00", "*", "star"),
    MARK_KINDS[SeedStage.PRUNED]: MarkStyle("#d62728", "X", "cross"),
}
"""The style of each lifecycle mark kind (``esper.nissa.fold.MARK_KINDS``' labels), on the
report's timeline and curves and on the dashboard's."""
