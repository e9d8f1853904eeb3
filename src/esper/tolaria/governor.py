"""The governor: watches every step's loss and rolls a diverging run back (DESIGN §3).

Rules, checked in this order on each step's validation loss (training loss for non-finiteness):

* ``non_finite`` — NaN or Inf: panic at once.
* ``collapse`` — training *and* validation loss at or above ``collapse_fraction`` × chance-level
  loss after the best validation loss had been at or below ``well_below_fraction`` × chance: the
  model has forgotten what it learned. (Validation loss alone also rises above chance when an
  overconfident model overfits; its training loss then stays low.)
* ``spike`` — loss > mean + ``spike_sigma`` × std *and* > ``spike_factor`` × mean of the recent
  healthy losses, for ``spike_patience`` consecutive steps.

A step that passes is added to the history; a suspicious but not yet sustained step is not (it
would inflate the mean). Snapshots are taken only after a clean health check. On panic the last
snapshot (host, seeds as they were, optimizer state) is restored and every live seed is pruned.
A panic terminates the episode (DESIGN §5): the run ends on the restored, healthy model.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from esper.kasmina import ModelState, MorphogeneticModel, capture_state, restore_state
from esper.leyline import ALIVE_STAGES, SEED_MODULE_STAGES, SeedStateReport
from esper.leyline.config import check_float, check_int, is_finite_number, require
from esper.tolaria.optim import SlotOptimizer


@dataclass(frozen=True)
class GovernorConfig:
    """Governor thresholds.

    Attributes:
        window: healthy losses kept for the spike statistics.
        min_history: healthy steps needed before the spike rule can fire.
        spike_sigma: standard deviations above the mean that count as a spike.
        spike_factor: and the spike must also exceed this multiple of the mean (guards tiny σ).
        spike_patience: consecutive spiking steps before panicking (one bad epoch is noise).
        collapse_fraction: loss at this share of chance level counts as collapsed...
        well_below_fraction: ...once the best loss had been at or below this share.
    """

    window: int = 10
    min_history: int = 3
    spike_sigma: float = 3.0
    spike_factor: float = 1.5
    spike_patience: int = 2
    collapse_fraction: float = 0.95
    well_below_fraction: float = 0.7

    def __post_init__(self) -> None:
        check_int("governor.window", self.window, 2)
        check_int("governor.min_history", self.min_history, 2, self.window)
        check_int("governor.spike_patience", self.spike_patience)
        # NaN never fired; sigma -1 or factor 0 fired on a healthy plateau
        check_float("governor.spike_sigma", self.spike_sigma, 0.0, 1e6, strict_low=True)
        check_float("governor.spike_factor", self.spike_factor, 0.0, 1e6, strict_low=True)
        check_float("governor.collapse_fraction", self.collapse_fraction, 0.0, 1e6)
        check_float("governor.well_below_fraction", self.well_below_fraction, 0.0, 1e6)
        require(
            0 < self.well_below_fraction < self.collapse_fraction,
            "governor needs 0 < well_below_fraction < collapse_fraction, got "
            f"{self.well_below_fraction}, {self.collapse_fraction}",
        )


@dataclass(frozen=True)
class Panic:
    """Why the governor panicked."""

    rule: str
    detail: str


@dataclass(frozen=True)
class Rollback:
    """What a rollback did.

    Attributes:
        restored_epoch: the epoch whose end the snapshot captured.
        pruned: slots whose seed was live in the snapshot and is now pruned.
        vanished: seeds grown (or fossilized) after the snapshot, gone with the restore, with
            their report from just before it.
        restored: every other slot the restore put in another stage, or whose blueprint it
            changed (a seed pruned or fossilized after the snapshot given back, a retired slot
            set back in its embargo), with its reports from just before and just after the
            restore; a live seed given back is then in ``pruned``.
    """

    restored_epoch: int
    pruned: tuple[str, ...]
    vanished: tuple[tuple[str, SeedStateReport], ...]
    restored: tuple[tuple[str, SeedStateReport, SeedStateReport], ...] = ()


def copied_state(state: Any) -> Any:
    """An optimizer state dict that later steps cannot change: its tensors cloned, its
    containers rebuilt. ``copy.deepcopy`` did the same at 1.6 ms for the 48 state tensors of an
    impaired host and a seed, 2.5 % of a PPO round (a snapshot a healthy epoch); this takes
    about a tenth of it."""
    if isinstance(state, Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {key: copied_state(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(copied_state(value) for value in state)
    return copy.deepcopy(state)  # numbers, strings, None: returned as they are


@dataclass(frozen=True)
class _Snapshot:
    epoch: int
    model: ModelState
    optimizer: dict[str, Any]


class Governor:
    """Health checks and rollback for one training run.

    Args:
        config: thresholds.
        chance_loss: loss of a uniform prediction (``ln(num_classes)`` for cross-entropy).
    """

    def __init__(self, config: GovernorConfig, chance_loss: float) -> None:
        # NaN, 0 or below silently turned the collapse rule off
        require(
            is_finite_number(chance_loss) and chance_loss > 0,
            "chance_loss (the loss of a uniform prediction, ln of the number of classes: two "
            f"or more) must be a finite number > 0, got {chance_loss!r}",
        )
        self.config = config
        self.chance_loss = chance_loss
        self.history: list[float] = []
        self.best = math.inf
        self.spikes = 0
        self._snapshot: _Snapshot | None = None

    def check(self, train_loss: float, val_loss: float) -> Panic | None:
        """Judge one step; record it when healthy. Returns the panic, or None when healthy."""
        c = self.config
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            return Panic("non_finite", f"train loss {train_loss}, validation loss {val_loss}")
        at_chance = c.collapse_fraction * self.chance_loss
        if (
            self.best <= c.well_below_fraction * self.chance_loss
            and val_loss >= at_chance
            and train_loss >= at_chance
        ):
            return Panic(
                "collapse",
                f"training and validation losses {train_loss:.4g}, {val_loss:.4g} are back at "
                f"chance level {self.chance_loss:.4g} after reaching {self.best:.4g}",
            )
        if len(self.history) >= c.min_history:
            mean = statistics.fmean(self.history)
            std = statistics.pstdev(self.history)
            if val_loss > mean + c.spike_sigma * std and val_loss > c.spike_factor * mean:
                self.spikes += 1
                if self.spikes >= c.spike_patience:
                    self.spikes = 0
                    return Panic(
                        "spike",
                        f"validation loss {val_loss:.4g} > mean {mean:.4g} + {c.spike_sigma}σ "
                        f"({std:.3g}) for {c.spike_patience} steps",
                    )
                return None
        self.spikes = 0
        self.history = [*self.history, val_loss][-c.window :]
        self.best = min(self.best, val_loss)
        return None

    @property
    def suspicious(self) -> bool:
        """A spike is building up: do not snapshot this step."""
        return self.spikes > 0

    def snapshot(self, model: MorphogeneticModel, optimizer: SlotOptimizer) -> None:
        """Remember the model and optimizer as they are now (call only after a clean check)."""
        self._snapshot = _Snapshot(
            model.epoch, capture_state(model), copied_state(optimizer.state_dict())
        )

    def rollback(self, model: MorphogeneticModel, optimizer: SlotOptimizer) -> Rollback:
        """Restore the last snapshot and prune every seed that is live in it.

        Seeds grown after the snapshot disappear with the restore; they are reported in
        ``Rollback.vanished`` so that nothing leaves the model unrecorded.

        Raises:
            RuntimeError: if no snapshot was ever taken.
        """
        if self._snapshot is None:
            raise RuntimeError("governor has no snapshot; take one before training starts")
        before = model.reports()
        epoch = model.epoch
        restore_state(model, self._snapshot.model)
        model.epoch = epoch  # time moves on; only the weights and seeds go back
        optimizer.sync()
        # A copy: loading keeps the given tensors, which the next steps then change in place.
        optimizer.load_state_dict(copied_state(self._snapshot.optimizer))
        vanished = tuple(
            (name, report)
            for name, report in before.items()
            if report.stage in SEED_MODULE_STAGES
            and model.slot(name).stage not in SEED_MODULE_STAGES
        )
        after = model.reports()
        gone = {name for name, _ in vanished}
        restored = tuple(
            (name, report, after[name])
            for name, report in before.items()
            if name not in gone
            and (after[name].stage, after[name].blueprint) != (report.stage, report.blueprint)
        )
        pruned = tuple(n for n, r in after.items() if r.stage in ALIVE_STAGES)
        for name in pruned:
            model.prune(name, reason="governor rollback")
        optimizer.sync()
        return Rollback(self._snapshot.epoch, pruned, vanished, restored)

    def state_dict(self) -> dict[str, Any]:
        snap = self._snapshot
        return {
            "history": list(self.history),
            "best": self.best,
            "spikes": self.spikes,
            "snapshot": None
            if snap is None
            else {
                "epoch": snap.epoch,
                "manifest": snap.model.manifest,
                "weights": snap.model.weights,
                "optimizer": snap.optimizer,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(v) for v in state["history"]]
        self.best = float(state["best"])
        self.spikes = int(state["spikes"])
        snap = state["snapshot"]
        self._snapshot = (
            None
            if snap is None
            else _Snapshot(
                int(snap["epoch"]), ModelState(snap["manifest"], snap["weights"]), snap["optimizer"]
            )
        )
