"""HeuristicTamiyo driving a real Kasmina model with strict gates, on fabricated measurements.

The host is never trained: every step the test writes the measurements the engine would have
taken (contribution by blueprint, a healthy gradient ratio) onto the running seeds, feeds a
flat (plateaued, stabilized) loss curve to a real ``SignalTracker``, and applies each action
through the model's public API. A GateError or LifecycleError fails the test.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence

from conftest import apply_action, fabricated_step
from esper.kasmina import CNNHost, CNNHostConfig, MorphogeneticModel, blueprint_registry
from esper.leyline import Action, Op, SeedStage, Topology
from esper.tamiyo import Controller, HeuristicTamiyo, SignalTracker, StaticController

HURTS = "depthwise"
"""The blueprint whose fabricated contribution is negative, so some seeds must be pruned."""

Contribution = Callable[[str], float]


def _contribution(blueprint: str) -> float:
    return -2.0 if blueprint == HURTS else 1.0


def _model(slots: Sequence[str] = ("early", "mid", "late")) -> MorphogeneticModel:
    return MorphogeneticModel(CNNHost(CNNHostConfig(base_channels=4, input_size=8)), list(slots))


def _step(
    model: MorphogeneticModel,
    tracker: SignalTracker,
    controller: Controller,
    max_epochs: int,
    contribution: Contribution = _contribution,
) -> Action:
    """One engine step in Tolaria's order: measure, end the epoch, then decide and apply."""
    names = blueprint_registry.names(Topology.CNN)
    observation = fabricated_step(model, tracker, contribution, names, max_epochs)
    action = controller.decide(observation)
    apply_action(model, action)
    return action


def _episode(model: MorphogeneticModel, controller: Controller, max_epochs: int) -> list[Action]:
    tracker = SignalTracker()
    return [_step(model, tracker, controller, max_epochs) for _ in range(max_epochs)]


def test_heuristic_grows_through_strict_gates_in_several_slots() -> None:
    model = _model()
    actions = _episode(model, HeuristicTamiyo(), max_epochs=40)
    transitions = model.drain_transitions()
    germinated = {t.slot for t in transitions if t.to_stage is SeedStage.GERMINATED}
    fossilized = {t.slot for t in transitions if t.to_stage is SeedStage.FOSSILIZED}
    pruned = {t.blueprint for t in transitions if t.to_stage is SeedStage.PRUNED}
    assert germinated == {"early", "mid", "late"}, "every enabled slot is used"
    assert len(fossilized) >= 2
    assert pruned == {HURTS}
    assert {a.op for a in actions} == {Op.WAIT, Op.GERMINATE, Op.ADVANCE, Op.PRUNE, Op.FOSSILIZE}
    assert all(a.reason for a in actions)


def test_heuristic_names_only_enabled_slots() -> None:
    model = _model(("early", "late"))
    actions = _episode(model, HeuristicTamiyo(), max_epochs=40)
    named = {a.slot for a in actions if a.slot is not None}
    assert named == {"early", "late"}
    stages = {r.stage for r in model.reports().values()}
    assert stages == {SeedStage.FOSSILIZED}


def test_static_controller_never_grows() -> None:
    model = _model()
    actions = _episode(model, StaticController(), max_epochs=12)
    assert {a.op for a in actions} == {Op.WAIT}
    assert not model.drain_transitions()


def test_resumed_heuristic_continues_identically() -> None:
    max_epochs, split = 40, 14
    model, tracker, tamiyo = _model(), SignalTracker(), HeuristicTamiyo()
    for _ in range(split):
        _step(model, tracker, tamiyo, max_epochs)
    state = json.loads(json.dumps(tamiyo.state_dict(), allow_nan=False))
    tracker_state = json.loads(json.dumps(tracker.state_dict(), allow_nan=False))

    def resume(controller: HeuristicTamiyo) -> list[Action]:
        twin, twin_tracker = copy.deepcopy(model), SignalTracker()
        twin_tracker.load_state_dict(tracker_state)
        return [_step(twin, twin_tracker, controller, max_epochs) for _ in range(split, 40)]

    resumed = HeuristicTamiyo()
    resumed.load_state_dict(state)
    expected = resume(tamiyo)
    assert resume(resumed) == expected
    assert resume(HeuristicTamiyo()) != expected, "a controller without its memory differs"
