"""Leyline: the contracts shared by Esper's subsystems.

Leyline owns the enums (seed stages, gates, blend modes, α curves), the frozen dataclasses that
cross subsystem boundaries (injection specs, seed reports, lifecycle transitions and tables,
controller signals and actions, the data contracts, knowledge records, study trial rows), every
telemetry event (``events``), the shared configuration pieces (``config``: ``HostTraining``,
telemetry settings, strict decoding, ``UserError``), the named thresholds with their reasons, the
one function that orders slots, the one atomic file write (``files.atomic_write``) every writer
uses and the one HTML page format of the run and study reports (``pages``). It imports only the
standard library and torch's types, so every other package may import it and it imports none of
them.
"""

from esper.leyline.contracts import InjectionSpec, LifecycleTransition, SeedStateReport
from esper.leyline.control import (
    OP_ARGUMENTS,
    Action,
    Observation,
    Op,
    SlotSignals,
    TrainingSignals,
)
from esper.leyline.events import TelemetryLevel
from esper.leyline.files import DiskFullError, atomic_write
from esper.leyline.lifecycle import (
    ADVANCE_TO,
    ALIVE_STAGES,
    BLENDED_STAGES,
    FORWARD_STAGES,
    MIN_LIFECYCLE_EPOCHS,
    OP_STAGES,
    RETIRED_STAGES,
    SEED_MODULE_STAGES,
    VALID_TRANSITIONS,
)
from esper.leyline.slots import ordered_slots, slot_names
from esper.leyline.stages import (
    AlphaCurve,
    BlendMode,
    GateLevel,
    GateMode,
    SeedStage,
    Topology,
)

__all__ = [
    "ADVANCE_TO",
    "ALIVE_STAGES",
    "BLENDED_STAGES",
    "FORWARD_STAGES",
    "MIN_LIFECYCLE_EPOCHS",
    "OP_ARGUMENTS",
    "OP_STAGES",
    "RETIRED_STAGES",
    "SEED_MODULE_STAGES",
    "VALID_TRANSITIONS",
    "Action",
    "AlphaCurve",
    "BlendMode",
    "DiskFullError",
    "GateLevel",
    "GateMode",
    "InjectionSpec",
    "LifecycleTransition",
    "Observation",
    "Op",
    "SeedStage",
    "SeedStateReport",
    "SlotSignals",
    "TelemetryLevel",
    "Topology",
    "TrainingSignals",
    "atomic_write",
    "ordered_slots",
    "slot_names",
]
