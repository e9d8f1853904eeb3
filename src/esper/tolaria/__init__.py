"""Tolaria: the host training engine.

Tolaria owns the epoch loop (train, validate, measure counterfactuals; k hosts' epochs as one
grouped computation), the optimizer with its per-seed parameter groups, the governor that rolls
a diverging run back to its last healthy snapshot, the one run loop (``episode.Episode``: host
epoch -> reports -> tracker -> a controller's decision -> apply, for every growth command and
every PPO environment), the thread policy (``threads``) and the training-FLOPs counter
(``flops``). It imports Leyline and Kasmina; datasets reach it through Leyline's data
contracts. Controllers (Tamiyo) decide, Tolaria applies.
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
