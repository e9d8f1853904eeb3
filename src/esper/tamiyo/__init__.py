"""Tamiyo: the controllers that decide when, where and what a host grows.

Tamiyo owns the ``Controller`` interface shared by every controller, the ``SignalTracker`` that
turns per-step metrics into ``TrainingSignals``, the control arm (``StaticController``) and the
rule-based ``HeuristicTamiyo``; observation features, action masks and the policy network will
live here as well. It imports Leyline contracts and reads Kasmina only through its seed reports:
a controller proposes an ``Action``, the engine (Tolaria) applies it.
"""

from esper.tamiyo.controller import Controller, StaticController
from esper.tamiyo.heuristic import HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.tracker import SignalTracker, TrackerConfig

__all__ = [
    "Controller",
    "HeuristicConfig",
    "HeuristicTamiyo",
    "SignalTracker",
    "StaticController",
    "TrackerConfig",
]
