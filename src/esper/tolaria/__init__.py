"""Tolaria: the host training engine.

Tolaria owns the epoch loop (train, validate, measure counterfactuals), the optimizer with its
per-seed parameter groups, and the governor that rolls a diverging run back to its last healthy
snapshot. It imports Leyline, Kasmina and the data layer; controllers (Tamiyo) decide, Tolaria
applies.
"""

from esper.tolaria.engine import StepResult, Trainer, evaluate
from esper.tolaria.governor import Governor, GovernorConfig, Panic
from esper.tolaria.optim import SlotOptimizer

__all__ = [
    "Governor",
    "GovernorConfig",
    "Panic",
    "SlotOptimizer",
    "StepResult",
    "Trainer",
    "evaluate",
]
