"""Kasmina: the model that grows.

Kasmina owns host networks with a segmented forward (``CNNHost``, ``TransformerHost``), seed
slots at their injection points, the seed lifecycle state machine with its gates, gradient
isolation and α blending, the blueprint registry, the fused counterfactual forward with exact
Shapley values, seed reports, and checkpoints that restore a grown model exactly. It imports
only Leyline (and torch); training loops live in Tolaria.
"""

from esper.kasmina.blueprints import Blueprint, blueprint_registry
from esper.kasmina.checkpoint import (
    ModelState,
    capture_state,
    load_model,
    restore_state,
    save_model,
)
from esper.kasmina.counterfactual import per_sample_accuracy, shapley_from_coalitions
from esper.kasmina.errors import CheckpointError, GateError, IllegalTransitionError, LifecycleError
from esper.kasmina.hosts import (
    CNNHost,
    CNNHostConfig,
    HostConfig,
    SegmentedHost,
    TransformerHost,
    TransformerHostConfig,
    build_host,
    host_config_from_dict,
)
from esper.kasmina.model import Metric, MorphogeneticModel
from esper.kasmina.slot import SeedSlot

__all__ = [
    "Blueprint",
    "CNNHost",
    "CNNHostConfig",
    "CheckpointError",
    "GateError",
    "HostConfig",
    "IllegalTransitionError",
    "LifecycleError",
    "Metric",
    "ModelState",
    "MorphogeneticModel",
    "SeedSlot",
    "SegmentedHost",
    "TransformerHost",
    "TransformerHostConfig",
    "blueprint_registry",
    "build_host",
    "capture_state",
    "host_config_from_dict",
    "load_model",
    "per_sample_accuracy",
    "restore_state",
    "save_model",
    "shapley_from_coalitions",
]
