"""SignalTracker: deltas, best, plateau counting, the stabilization latch, bad input, resume."""

from __future__ import annotations

import json
import math

import pytest

from conftest import seed_report
from esper.leyline import SeedStage, SeedStateReport, TrainingSignals
from esper.tamiyo import SignalTracker, TrackerConfig


def _feed(tracker: SignalTracker, val_loss: float, val_accuracy: float) -> TrainingSignals:
    return tracker.update(
        train_loss=val_loss,
        train_accuracy=val_accuracy,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        reports={},
    )


# (val_loss, val_accuracy) -> expected (loss_delta, accuracy_delta, best, plateau, stabilized),
# computed by hand for the default config (tolerance 0.1 points, window 3, threshold 0.05).
SEQUENCE = [
    ((2.00, 50.00), (None, None, 50.00, 0, False)),
    ((1.00, 60.00), (-1.00, 10.00, 60.00, 0, False)),
    ((0.90, 60.05), (-0.10, 0.05, 60.05, 1, False)),  # +0.05 <= tolerance: counted, best rises
    ((0.88, 60.12), (-0.02, 0.07, 60.12, 2, False)),  # beats 60.0 by 0.12 but 60.05 by only 0.07
    ((0.87, 59.00), (-0.01, -1.12, 60.12, 3, False)),  # (1.00 - 0.87) / 1.00 = 0.13 >= 0.05
    ((0.86, 62.00), (-0.01, 3.00, 62.00, 0, True)),  # (0.90 - 0.86) / 0.90 = 0.044 < 0.05
    ((0.50, 62.05), (-0.36, 0.05, 62.05, 1, True)),  # a big drop later does not unlatch
]


def test_hand_computed_sequence() -> None:
    tracker = SignalTracker()
    for step, ((loss, acc), (d_loss, d_acc, best, plateau, stable)) in enumerate(SEQUENCE, 1):
        s = _feed(tracker, loss, acc)
        assert s.epoch == step
        assert s.loss_delta == (None if d_loss is None else pytest.approx(d_loss))
        assert s.accuracy_delta == (None if d_acc is None else pytest.approx(d_acc))
        assert s.best_val_accuracy == pytest.approx(best)
        assert s.plateau_epochs == plateau, f"step {step}"
        assert s.host_stabilized is stable, f"step {step}"
    assert s.loss_history == (0.90, 0.88, 0.87, 0.86, 0.50)  # default history: last 5
    assert s.accuracy_history == (60.05, 60.12, 59.00, 62.00, 62.05)


def test_latch_needs_a_full_window_and_never_unlatches() -> None:
    tracker = SignalTracker(TrackerConfig(stabilization_window=2, stabilization_threshold=0.05))
    flags = [_feed(tracker, loss, 50.0).host_stabilized for loss in (1.0, 1.0, 1.0, 0.1, 5.0)]
    # A flat loss, but step 2 has seen only one step of change; the window of 2 is full at step 3.
    assert flags == [False, False, True, True, True]


def test_rising_loss_latches() -> None:
    tracker = SignalTracker(TrackerConfig(stabilization_window=1))
    assert [_feed(tracker, loss, 50.0).host_stabilized for loss in (1.0, 1.2)] == [False, True]


def test_non_finite_inputs_are_recorded_but_not_trusted() -> None:
    tracker = SignalTracker(TrackerConfig(stabilization_window=2))
    first = _feed(tracker, math.nan, math.nan)
    assert math.isnan(first.best_val_accuracy), "no finite accuracy yet: best is missing, not 0"
    assert first.plateau_epochs == 1
    s = _feed(tracker, 1.0, 50.0)
    assert (s.loss_delta, s.accuracy_delta) == (None, None)  # the previous step was not finite
    assert (s.best_val_accuracy, s.plateau_epochs) == (50.0, 0)
    s = _feed(tracker, math.inf, math.nan)
    assert (s.loss_delta, s.accuracy_delta) == (None, None)
    assert (s.best_val_accuracy, s.plateau_epochs, s.host_stabilized) == (50.0, 1, False)
    assert s.loss_history[-1] == math.inf and math.isnan(s.accuracy_history[-1])
    # Finite losses so far: 1.0, 0.99 -> the window of 2 steps is not full yet.
    assert _feed(tracker, 0.99, 50.05).host_stabilized is False
    s = _feed(tracker, 0.985, 50.0)  # (1.0 - 0.985) / 1.0 = 0.015 < 0.05
    assert s.host_stabilized is True
    assert s.epoch == 5 and s.plateau_epochs == 3


def test_state_dict_is_strict_json_and_round_trips() -> None:
    losses = [2.0, 1.5, math.nan, 1.2, 1.1, 1.05, 1.04, 1.03, 0.9]
    accs = [40.0, 50.0, 55.0, math.inf, 56.0, 56.05, 57.0, 57.0, 60.0]
    a = SignalTracker()
    for loss, acc in zip(losses[:4], accs[:4], strict=True):
        _feed(a, loss, acc)
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    b = SignalTracker()
    b.load_state_dict(state)
    assert json.dumps(b.state_dict(), allow_nan=False) == json.dumps(state, allow_nan=False)
    for loss, acc in zip(losses[4:], accs[4:], strict=True):
        sa, sb = _feed(a, loss, acc), _feed(b, loss, acc)
        # Histories may still hold the non-finite values; compare them as text.
        assert repr(sa) == repr(sb)


def test_load_rejects_foreign_state() -> None:
    with pytest.raises(ValueError, match="state keys"):
        SignalTracker().load_state_dict({"epoch": 3})


@pytest.mark.parametrize(
    "bad",
    [
        {"plateau_tolerance": -0.1},
        {"stabilization_window": 0},
        {"stabilization_threshold": math.nan},
        {"history": 0},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrackerConfig(**bad)  # type: ignore[arg-type]


def test_tolerance_and_history_change_behaviour() -> None:
    strict = SignalTracker(TrackerConfig(plateau_tolerance=0.0, history=2))
    for acc in (50.0, 50.05, 50.1):
        s = _feed(strict, 1.0, acc)
    assert s.plateau_epochs == 0  # every small gain counts when the tolerance is 0
    assert s.accuracy_history == (50.05, 50.1)


def _report(slot: str, stage: SeedStage, contribution: float | None) -> SeedStateReport:
    return seed_report(slot, stage, alpha_target=0.0, contribution=contribution, host_params=100)


def _step(tracker: SignalTracker, *reports: SeedStateReport) -> TrainingSignals:
    return tracker.update(
        train_loss=1.0,
        train_accuracy=50.0,
        val_loss=1.0,
        val_accuracy=50.0,
        reports={r.slot: r for r in reversed(reports)},  # dict order must not matter
    )


def test_a_step_of_the_wrong_types_records_nothing() -> None:
    """A 0-d tensor metric was kept (its state then held ``"tensor(nan)"``), and a report
    filed under another slot's name was read as that slot's."""
    import torch

    tracker = SignalTracker()
    before = tracker.state_dict()
    with pytest.raises(ValueError, match=r"val_loss must be a Python number \(NaN allowed\)"):
        tracker.update(
            train_loss=1.0,
            train_accuracy=50.0,
            val_loss=torch.tensor(1.0),  # type: ignore[arg-type]
            val_accuracy=50.0,
            reports={},
        )
    report = _report("mid", SeedStage.TRAINING, 1.0)
    with pytest.raises(ValueError, match="the report of slot 'mid' is filed under 'late'"):
        tracker.update(
            train_loss=1.0,
            train_accuracy=50.0,
            val_loss=1.0,
            val_accuracy=50.0,
            reports={"late": report},
        )
    assert tracker.state_dict() == before
    assert _step(tracker, report).epoch == 1


def test_every_enabled_slot_is_tracked_in_slot_order() -> None:
    tracker = SignalTracker()
    T, D = SeedStage.TRAINING, SeedStage.DORMANT
    signals = _step(
        tracker, _report("early", D, None), _report("mid", T, 0.5), _report("late", D, None)
    )
    assert [s.slot for s in signals.slots] == ["early", "mid", "late"]
    assert signals.slots[0].contribution is None and signals.slots[0].contribution_history == ()
    assert signals.best_slot == signals.worst_slot == "mid"


def test_slot_contribution_series_delta_and_restart() -> None:
    tracker = SignalTracker(TrackerConfig(history=3))
    T, B = SeedStage.TRAINING, SeedStage.BLENDING
    values = [(T, 0.5), (T, None), (T, 1.5), (T, float("nan")), (T, 2.0), (T, 2.5), (B, -1.0)]
    seen = [_step(tracker, _report("mid", stage, c)).slots[0] for stage, c in values]
    # hand-computed: unmeasured and NaN steps add nothing; history keeps the last 3; a new
    # stage restarts the series, so its first delta is None.
    assert [s.contribution for s in seen] == [0.5, None, 1.5, None, 2.0, 2.5, -1.0]
    assert [s.contribution_delta for s in seen] == [None, None, 1.0, None, 0.5, 0.5, None]
    assert seen[5].contribution_history == (1.5, 2.0, 2.5)
    assert seen[6].contribution_history == (-1.0,)


def test_best_and_worst_slot_tie_break() -> None:
    tracker = SignalTracker()
    T = SeedStage.TRAINING
    signals = _step(
        tracker, _report("early", T, 1.0), _report("mid", T, 1.0), _report("late", T, -2.0)
    )
    assert signals.best_slot == "early"  # tie with mid: the earlier slot wins
    assert signals.worst_slot == "late"
    tied = _step(SignalTracker(), _report("mid", T, 0.0), _report("late", T, 0.0))
    assert tied.best_slot == tied.worst_slot == "mid"


def test_slot_series_survive_a_state_round_trip() -> None:
    T = SeedStage.TRAINING
    first = SignalTracker()
    for c in (0.1, 0.4):
        _step(first, _report("mid", T, c))
    second = SignalTracker()
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    a = _step(first, _report("mid", T, 0.9)).slots[0]
    b = _step(second, _report("mid", T, 0.9)).slots[0]
    assert a == b and a.contribution_history == (0.1, 0.4, 0.9)
