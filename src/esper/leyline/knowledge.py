"""What a run teaches later runs: one seed's outcome (DESIGN §11).

A growth run records a ``SeedOutcome`` for every seed it grew; the knowledge store
(``esper.nissa.knowledge``) keeps them across runs, and the heuristic's bandit blueprint
selectors (``esper.tamiyo.selectors``) start from the outcomes of earlier runs on the same host
(``HostSignature``) and learn from the seeds of the run itself, each scored by ``outcome_score``.
"""

from __future__ import annotations

from dataclasses import dataclass

from esper.leyline.config import MAX_INT64, check_int, is_finite_number, require
from esper.leyline.stages import SeedStage, Topology

PER_PARAMETERS = 1000
"""Scores are per thousand seed parameters: a seed's accuracy bought per unit of size, at a
scale where the blueprints' scores are numbers near 1 rather than near 0.001."""


@dataclass(frozen=True)
class HostSignature:
    """Which host a seed grew on: outcomes transfer between runs with the same signature.

    Attributes:
        task: the task preset.
        topology: ``cnn`` or ``transformer``.
        width: the host's width (CNN base channels, transformer model dimension).
        params: the host's own parameters.
    """

    task: str
    topology: str
    width: int
    params: int

    def __post_init__(self) -> None:
        kinds = [t.value for t in Topology]
        topology = self.topology
        require(topology in kinds, f"host.topology must be one of {kinds}, got {topology!r}")
        check_int("host.width", self.width, 1, MAX_INT64)  # the store's columns are int64
        check_int("host.params", self.params, 0, MAX_INT64)


_LIVE = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING)
OUTCOME_STAGES = tuple(s.name for s in (*_LIVE, SeedStage.FOSSILIZED, SeedStage.PRUNED))
"""The stages an outcome can end in: fossilized, pruned (any retirement), or the live stage a
seed was in when its run ended."""


@dataclass(frozen=True)
class SeedOutcome:
    """One seed's life in one run.

    Attributes:
        run_id: the run that grew it.
        host: the host it grew on.
        slot: where it grew.
        blueprint: its blueprint.
        stage: how far it got: ``FOSSILIZED``, ``PRUNED`` (pruned by the controller or a
            governor rollback), or the stage it was in when the run ended.
        contribution: its last measured counterfactual contribution (accuracy points), None if
            never measured.
        seed_params: its parameters.
        accuracy_change: validation accuracy (points) at the end of its life minus at its
            germination.
        germinated_epoch: the epoch after which it was germinated.
        epochs: epochs it lived as a seed: those after ``germinated_epoch`` up to the one after
            which it was fossilized or pruned, or the run's last (a seed the governor's
            rollback removed: up to the epoch before the panic's).
    """

    run_id: str
    host: HostSignature
    slot: str
    blueprint: str
    stage: str
    contribution: float | None
    seed_params: int
    accuracy_change: float | None
    germinated_epoch: int
    epochs: int

    def __post_init__(self) -> None:
        for name in ("run_id", "slot", "blueprint"):  # slot 5 was stored and read back as '5'
            value = getattr(self, name)
            require(isinstance(value, str), f"{name} must be a str, got {value!r}")
        require(
            isinstance(self.host, HostSignature),
            f"host must be a HostSignature, got {self.host!r:.60}",
        )
        stages = list(OUTCOME_STAGES)
        require(self.stage in stages, f"stage must be one of {stages}, got {self.stage!r}")
        for name in ("contribution", "accuracy_change"):  # accuracy points: a difference of two
            value = getattr(self, name)  # percentages (1e308 made scores inf, bandits NaN)
            ok = value is None or (is_finite_number(value) and -100.0 <= value <= 100.0)
            why = f"{name} must be a number in [-100, 100] (accuracy points) or null"
            require(ok, f"{why}, got {value!r}")
        # every seed has parameters: 0 scored a contribution x 1000 (``stage_score``)
        check_int("seed_params", self.seed_params, 1, MAX_INT64)
        check_int("germinated_epoch", self.germinated_epoch, 0, MAX_INT64)
        check_int("epochs", self.epochs, 0, MAX_INT64)


def outcome_score(outcome: SeedOutcome) -> float | None:
    """The reward a blueprint selector learns from (``stage_score`` of the outcome)."""
    return stage_score(outcome.stage, outcome.contribution, outcome.seed_params)


def stage_score(stage: str, contribution: float | None, seed_params: int) -> float | None:
    """A fossilized seed's contribution per thousand of its parameters; 0 for a pruned seed;
    None while the outcome is undecided (the seed was still alive when the run ended)."""
    if stage == "PRUNED":
        return 0.0
    if stage != "FOSSILIZED" or contribution is None:
        return None
    return contribution * PER_PARAMETERS / max(seed_params, 1)
