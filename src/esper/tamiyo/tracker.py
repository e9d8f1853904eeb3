"""``SignalTracker``: per-step metrics in, ``TrainingSignals`` out (DESIGN §4).

The tracker is the controller's memory of how the host is doing: step counter, deltas against the
previous step, the best validation accuracy, a plateau counter, a stabilization latch and short
history windows.

Non-finite inputs (NaN/Inf, e.g. a diverged step before the governor rolls back) are *recorded*
but never *trusted*:

* they appear as given in the returned signals and in the history windows, so nothing downstream
  mistakes a broken step for a healthy one (missing is not zero);
* a delta that involves a non-finite value is ``None`` (not measurable);
* a non-finite validation accuracy never becomes the best and counts as a step without
  improvement (the plateau counter grows);
* a non-finite validation loss is left out of the stabilization window, so it can neither latch
  nor delay the latch beyond the finite steps it needs;
* ``best_val_accuracy`` is NaN until a finite validation accuracy has been seen.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esper.leyline import SeedStage, SeedStateReport, SlotSignals, TrainingSignals, ordered_slots
from esper.leyline.config import check_float, check_int, is_plain_number, require


@dataclass(frozen=True)
class TrackerConfig:
    """How the tracker turns metrics into signals. Defaults suit 15–30 epoch runs.

    Attributes:
        plateau_tolerance: a step counts as progress only if its validation accuracy beats the
            best so far by more than this many percentage points; 0.1 keeps epoch-to-epoch noise
            from resetting the plateau counter.
        stabilization_window: steps over which the relative validation-loss improvement is
            measured; 3 reacts within a few epochs of a short run.
        stabilization_threshold: the host counts as stabilized once that relative improvement
            falls below this fraction; 0.05 (5% over 3 steps) marks the end of the fast early
            descent without waiting for a true plateau.
        history: length of the validation loss/accuracy history windows; 5 covers the
            stabilization window with room for trend features.
    """

    plateau_tolerance: float = 0.1
    stabilization_window: int = 3
    stabilization_threshold: float = 0.05
    history: int = 5

    def __post_init__(self) -> None:
        check_float("plateau_tolerance", self.plateau_tolerance, 0.0, math.inf)
        check_int("stabilization_window", self.stabilization_window)
        check_float("stabilization_threshold", self.stabilization_threshold, 0.0, math.inf)
        check_int("history", self.history)


def _delta(current: float, previous: float | None) -> float | None:
    if previous is None or not (math.isfinite(current) and math.isfinite(previous)):
        return None
    return current - previous


def _encode(value: float) -> float | str:
    """A float as strict JSON: non-finite values become ``'nan'``, ``'inf'`` or ``'-inf'``."""
    return value if math.isfinite(value) else str(value)


_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def _check_step(metrics: Mapping[str, object], reports: Mapping[str, SeedStateReport]) -> None:
    """Raise a ValueError if a metric is not a Python number (NaN is one: a panicked step's; a
    0-d tensor was kept and then not JSON) or a report is filed under another slot's name."""
    for name, value in metrics.items():
        if not is_plain_number(value):
            raise ValueError(f"{name} must be a Python number (NaN allowed), got {value!r}")
    for key, report in reports.items():
        if report.slot != key:
            raise ValueError(f"the report of slot {report.slot!r} is filed under {key!r}")


class SignalTracker:
    """Accumulates per-step metrics into ``TrainingSignals``.

    Args:
        config: thresholds and window lengths.
    """

    def __init__(self, config: TrackerConfig = TrackerConfig()) -> None:
        self.config = config
        self._epoch = 0
        self._previous: tuple[float, float] | None = None  # (val_loss, val_accuracy)
        self._best: float | None = None
        self._plateau = 0
        self._stabilized = False
        # Finite validation losses only: the latch compares the newest with the oldest.
        self._loss_window: deque[float] = deque(maxlen=config.stabilization_window + 1)
        self._loss_hist: deque[float] = deque(maxlen=config.history)
        self._acc_hist: deque[float] = deque(maxlen=config.history)
        # slot -> (stage the series belongs to, this stage's contribution measurements)
        self._slots: dict[str, tuple[SeedStage, list[float]]] = {}

    def update(
        self,
        *,
        train_loss: float,
        train_accuracy: float,
        val_loss: float,
        val_accuracy: float,
        reports: Mapping[str, SeedStateReport],
    ) -> TrainingSignals:
        """Record one step's metrics and return the signals after it.

        Args:
            train_loss: mean training loss of the step.
            train_accuracy: training accuracy, percent.
            val_loss: validation loss.
            val_accuracy: validation accuracy, percent.
            reports: this step's report of every enabled slot (any order).

        Returns:
            The signals for this step (``epoch`` is 1 after the first call).

        Raises:
            ValueError: see ``_check_step``; nothing is recorded then.
        """
        metrics = (train_loss, train_accuracy, val_loss, val_accuracy)
        _check_step(dict(zip(_METRICS, metrics, strict=True)), reports)
        self._epoch += 1
        prev_loss, prev_acc = self._previous if self._previous is not None else (None, None)
        loss_delta = _delta(val_loss, prev_loss)
        accuracy_delta = _delta(val_accuracy, prev_acc)
        self._previous = (val_loss, val_accuracy)
        self._update_plateau(val_accuracy)
        self._update_latch(val_loss)
        self._loss_hist.append(val_loss)
        self._acc_hist.append(val_accuracy)
        slots = tuple(self._slot_signals(reports[name]) for name in ordered_slots(reports))
        measured = [(c, s.slot) for s in slots if (c := s.contribution) is not None]
        # max/min return the first of equal values: the earliest slot in ordered_slots order.
        best = max(measured, key=lambda pair: pair[0], default=None)
        worst = min(measured, key=lambda pair: pair[0], default=None)
        return TrainingSignals(
            epoch=self._epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            loss_delta=loss_delta,
            accuracy_delta=accuracy_delta,
            best_val_accuracy=math.nan if self._best is None else self._best,
            plateau_epochs=self._plateau,
            host_stabilized=self._stabilized,
            loss_history=tuple(self._loss_hist),
            accuracy_history=tuple(self._acc_hist),
            slots=slots,
            best_slot=None if best is None else best[1],
            worst_slot=None if worst is None else worst[1],
        )

    def _slot_signals(self, report: SeedStateReport) -> SlotSignals:
        """Extend the slot's series (restarting it on a stage change) and summarize it."""
        stage, series = self._slots.get(report.slot, (report.stage, []))
        if stage is not report.stage:
            series = []
        value = report.counterfactual_contribution
        if value is not None and math.isfinite(value):
            series = [*series, value][-self.config.history :]
        else:
            value = None  # not measured this step, or not a usable number
        self._slots[report.slot] = (report.stage, series)
        delta = series[-1] - series[-2] if value is not None and len(series) >= 2 else None
        return SlotSignals(report.slot, report.stage, value, delta, tuple(series))

    def _update_plateau(self, val_accuracy: float) -> None:
        """Reset the counter on a gain of more than the tolerance over the best, else count.

        ``best`` is the true maximum: a small gain raises it without resetting the counter, so
        a host creeping up by less than the tolerance per step still counts as plateaued.
        """
        if not math.isfinite(val_accuracy):
            self._plateau += 1
            return
        if self._best is None or val_accuracy > self._best + self.config.plateau_tolerance:
            self._plateau = 0
        else:
            self._plateau += 1
        self._best = val_accuracy if self._best is None else max(self._best, val_accuracy)

    def _update_latch(self, val_loss: float) -> None:
        """Latch once the loss fell by less than the threshold (relative) over the window.

        The improvement is ``(L[t-W] - L[t]) / |L[t-W]|`` over the last ``W + 1`` finite losses,
        so the earliest step that can latch is step ``W + 1``. A rising loss latches too.
        """
        if not math.isfinite(val_loss):
            return
        self._loss_window.append(val_loss)
        if self._stabilized or len(self._loss_window) <= self.config.stabilization_window:
            return
        oldest = self._loss_window[0]
        if oldest == 0.0:
            self._stabilized = True  # a zero loss cannot improve any further
            return
        improvement = (oldest - val_loss) / abs(oldest)
        if improvement < self.config.stabilization_threshold:
            self._stabilized = True

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state as strict JSON data (non-finite floats are strings)."""
        return {
            "epoch": self._epoch,
            "previous": None if self._previous is None else [_encode(v) for v in self._previous],
            "best": self._best,
            "plateau": self._plateau,
            "stabilized": self._stabilized,
            "loss_window": list(self._loss_window),
            "loss_hist": [_encode(v) for v in self._loss_hist],
            "acc_hist": [_encode(v) for v in self._acc_hist],
            "slots": {name: [stage.value, series] for name, (stage, series) in self._slots.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by ``state_dict`` (with the same config's window lengths).

        Raises:
            ValueError: if keys are missing or unknown.
        """
        keys = sorted(self.state_dict())
        require(
            sorted(state) == keys, f"SignalTracker state keys {sorted(state)} do not match {keys}"
        )
        self._epoch = int(state["epoch"])
        previous = state["previous"]
        self._previous = None if previous is None else (float(previous[0]), float(previous[1]))
        self._best = None if state["best"] is None else float(state["best"])
        self._plateau = int(state["plateau"])
        self._stabilized = bool(state["stabilized"])
        for name in ("loss_window", "loss_hist", "acc_hist"):
            window: deque[float] = getattr(self, f"_{name}")
            window.clear()
            window.extend(float(v) for v in state[name])
        self._slots = {
            name: (SeedStage(stage), [float(v) for v in series])
            for name, (stage, series) in state["slots"].items()
        }
