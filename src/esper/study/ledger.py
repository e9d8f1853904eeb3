"""Every seed a run grows, followed from its slot reports into ``SeedOutcome``s (DESIGN §11).

The runner shows the ledger the model's reports after every epoch. A seed's life starts when its
slot first reports it alive (GERMINATED through HOLDING) and ends when the slot reports it
FOSSILIZED, or retired (PRUNED, EMBARGOED, RESETTING — a controller's prune or a governor
rollback — or DORMANT again); a seed still alive when the run ends keeps the stage it reached.
A seed grown in the epoch a governor rollback ended, which no report showed alive, is followed
from the rollback's report of it.
Reports, not telemetry events, are the source, so the outcomes do not depend on the telemetry
level (a study's policy runs log at ``minimal``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from esper.leyline import ALIVE_STAGES, SeedStage, SeedStateReport
from esper.leyline.config import decode, measured
from esper.leyline.knowledge import HostSignature, SeedOutcome


@dataclass
class _Life:
    """A seed being followed."""

    blueprint: str
    germinated_epoch: int
    accuracy_before: float | None  # validation accuracy when it was germinated
    accuracy_now: float | None
    contribution: float | None
    seed_params: int
    stage: str


class SeedLedger:
    """Follows a run's seeds; ``outcomes()`` lists their lives.

    Args:
        run_id: the run's id.
        host: the host the seeds grow on.
    """

    def __init__(self, run_id: str, host: HostSignature) -> None:
        self.run_id, self.host = run_id, host
        self.alive: dict[str, _Life] = {}
        self.closed: list[SeedOutcome] = []
        self.accuracy: float | None = None  # the last epoch's validation accuracy
        self.epoch = 0

    def observe(
        self,
        epoch: int,
        val_accuracy: float,
        reports: Mapping[str, SeedStateReport],
        vanished: Mapping[str, SeedStateReport] | None = None,
    ) -> None:
        """The reports and validation accuracy at the end of ``epoch``; ``vanished``: the seeds
        a governor rollback in ``epoch`` removed, with their reports from before it
        (``Rollback.vanished``). One germinated after the epoch before, which no report showed
        alive, is followed from its report and then retired with the others."""
        accuracy = measured(val_accuracy)
        self.epoch = epoch
        for slot, report in (vanished or {}).items():
            if slot not in self.alive and report.stage in ALIVE_STAGES and report.blueprint:
                self.alive[slot] = _Life(
                    report.blueprint, epoch - 1, self.accuracy, None,
                    report.counterfactual_contribution, report.seed_param_count,
                    report.stage.name,
                )  # fmt: skip
        for slot, report in reports.items():
            life = self.alive.get(slot)
            if life is not None and (
                report.stage not in ALIVE_STAGES or life.blueprint != report.blueprint
            ):
                self._close(slot, life, report.stage, accuracy)
                life = None
            if report.stage in ALIVE_STAGES and report.blueprint is not None:
                if life is None:
                    life = self.alive[slot] = _Life(
                        report.blueprint, epoch - 1, self.accuracy, None, None, 0, ""
                    )
                life.stage = report.stage.name
                life.accuracy_now = accuracy
                life.seed_params = max(life.seed_params, report.seed_param_count)
                if report.counterfactual_contribution is not None:
                    life.contribution = report.counterfactual_contribution
        self.accuracy = accuracy

    def _close(self, slot: str, life: _Life, stage: SeedStage, accuracy: float | None) -> None:
        """End a life: fossilized, or retired (a prune or a rollback) counted as PRUNED."""
        fossilized = stage is SeedStage.FOSSILIZED
        if fossilized:
            life.accuracy_now = accuracy
        # It was last alive in the epoch before this one: a prune or fossilization decided after
        # epoch e shows in epoch e + 1's reports, and epoch e + 1 trained without the seed.
        ended = self.epoch - 1
        self.closed.append(
            self._outcome(slot, life, "FOSSILIZED" if fossilized else "PRUNED", ended)
        )
        del self.alive[slot]

    def _outcome(self, slot: str, life: _Life, stage: str, last_epoch: int) -> SeedOutcome:
        change = None
        if life.accuracy_now is not None and life.accuracy_before is not None:
            change = life.accuracy_now - life.accuracy_before
        return SeedOutcome(
            run_id=self.run_id,
            host=self.host,
            slot=slot,
            blueprint=life.blueprint,
            stage=stage,
            contribution=life.contribution,
            seed_params=life.seed_params,
            accuracy_change=change,
            germinated_epoch=life.germinated_epoch,
            epochs=last_epoch - life.germinated_epoch,
        )

    def outcomes(self) -> list[SeedOutcome]:
        """Every seed's life so far: the ended ones, then those still alive (in slot order)."""
        open_lives = [
            self._outcome(s, life, life.stage, self.epoch) for s, life in self.alive.items()
        ]
        return [*self.closed, *open_lives]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state, for the run's checkpoint."""
        return {
            "alive": {slot: asdict(life) for slot, life in self.alive.items()},
            "closed": [asdict(o) for o in self.closed],
            "accuracy": self.accuracy,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` output (the run id is this run's: a resume keeps it).

        Raises:
            ValueError: a malformed state.
        """
        self.alive = {slot: _Life(**life) for slot, life in state["alive"].items()}
        closed = decode(tuple[SeedOutcome, ...], state["closed"], "ledger.closed")
        self.closed = [replace(o, run_id=self.run_id) for o in closed]
        self.accuracy, self.epoch = state["accuracy"], int(state["epoch"])
