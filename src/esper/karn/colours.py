"""Colours shared by Karn's views, so a stage looks the same in the report and on the dashboard."""

from __future__ import annotations

from collections.abc import Mapping

from esper.leyline.stages import SeedStage

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

MARK_COLOURS: Mapping[str, str] = {
    "germinate": "#2ca02c",
    "fossilize": "#ffbf00",
    "prune": "#d62728",
}
"""One colour per lifecycle mark kind (``esper.nissa.fold.MARK_KINDS``' labels), as the report
marks them on its timeline and curves."""
