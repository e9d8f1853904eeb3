"""A study's trial results: the contract between the study runner, which writes ``trials.csv``,
and the run store, whose DuckDB view ``trials`` reads it (DESIGN §9)."""

from __future__ import annotations

import math
from dataclasses import dataclass

COMPLETED = "completed"
"""A run that trained every epoch."""
FINISHED = (COMPLETED, "terminated")
"""Statuses of a trial with a result: a governor-terminated episode is an outcome of its arm
(leaving it out would flatter arms that diverge)."""

STUDY_FILE = "study.json"
"""Marks a study directory: the study's settings and every trial's attempts and last error."""
TRIALS_FILE = "trials.csv"
"""One ``TrialRow`` (plus its run directory's name, ``run``) per finished or failed trial."""
TRIALS_DIR = "trials"
"""Where a study's run directories go, one level deep (``esper runs list`` lists them)."""

REPS_RANGE = (10, 100_000)
"""Bootstrap resamples per interval a study (its file, ``esper report STUDY --reps``) accepts:
fewer than 10 give no interval worth the name; 100,000 already takes minutes per table."""


@dataclass(frozen=True)
class TrialRow:
    """One trial of a study as the statistics see it.

    Attributes:
        task: The task's name.
        arm: The arm's name (``static``, ``static-matched``, ``heuristic``, ``ppo…``, ...).
        seed: The trial's seed.
        status: the run's status (``completed``, ``terminated`` by the governor), or
            ``failed``; finished trials with a score count.
        score: Test accuracy of the final model, in percent; ``None`` when not measured.
        best_score: Test accuracy of the best-validation checkpoint, in percent.
        final_params: Parameters of the final model.
        peak_params: The most parameters the model had during training.
        flops: Training FLOPs.
        seconds: Wall time of the trial.
        error: What went wrong, for a trial that did not complete.
    """

    task: str
    arm: str
    seed: int
    status: str
    score: float | None
    best_score: float | None
    final_params: int | None
    peak_params: int | None
    flops: float | None
    seconds: float | None
    error: str | None

    def __post_init__(self) -> None:
        if self.score is not None and not math.isfinite(self.score):
            raise ValueError(
                f"trial {self.task}/{self.arm}/seed {self.seed}: score {self.score} is not a "
                "number; a score that was not measured is None"
            )

    @property
    def counts(self) -> bool:
        """Whether the trial enters the statistics: it completed and has a score."""
        return self.status in FINISHED and self.score is not None
