"""A study's trial results: the contract between the study runner, which writes ``trials.csv``,
and the run store, whose DuckDB view ``trials`` reads it (DESIGN §9)."""

from __future__ import annotations

import csv
import io
import math
import statistics
import typing
from collections.abc import Iterable, Set
from dataclasses import dataclass, field, fields
from pathlib import Path

from esper.leyline.config import MAX_INT64, check_float, check_int, quoted
from esper.leyline.files import lock_held, open_regular
from esper.leyline.pages import REPORT_FILE

COMPLETED = "completed"
"""A run that trained every epoch."""
FINISHED = (COMPLETED, "terminated")
"""Statuses of a trial with a result: a governor-terminated episode is an outcome of its arm
(leaving it out would flatter arms that diverge)."""

STUDY_FILE = "study.json"
"""Marks a study directory: the study's settings and every trial's attempts and last error."""
TRIALS_FILE = "trials.csv"
"""One ``TrialRow`` (plus its run directory's name, ``run``) per finished or failed trial."""
RUN_COLUMN = "run"
"""``trials.csv``'s column beyond ``TrialRow``'s fields: the trial's run directory name."""
TRIALS_DIR = "trials"
"""Where a study's run directories go, one level deep (``esper runs list`` lists them)."""
RESULTS_FILE = "results.md"
"""The study's tables and verdicts (``esper.study.results.write_results``), with its two plots:"""
INTERVALS_FILE = "interval_estimates.png"
PROFILE_FILE = "performance_profile.png"
JUDGING_FILE = "results.json"
"""How ``results.md`` was computed (``esper.study.results.Judging``: baselines, verdict roles,
bootstrap, trials not finished), written with it: the study report shows the same numbers."""
RESULTS_FILES = (RESULTS_FILE, INTERVALS_FILE, PROFILE_FILE, JUDGING_FILE)
"""What ``esper.study.results.write_results`` writes, all replaced together."""
KNOWLEDGE_FILE = "knowledge.sqlite"
"""A study's own knowledge store (unless the study names one): its bandits learn from its trials;
also the user's default store's name, in the cache directory ``esper/``."""
LOCK_FILE = ".esper-study.lock"
"""The study directory's lock file: held (flock) by the driver running the study."""
STUDY_OUTPUTS = (
    STUDY_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
    *RESULTS_FILES,
    KNOWLEDGE_FILE,
    REPORT_FILE,  # ``esper report STUDY``'s page
)
"""Everything a study and its report write in the study directory, but hidden files (its lock,
temporaries) and the SQLite store's own files beside it (``knowledge.sqlite-wal``, ...)."""

DEFAULT_REPS = 2000
"""Bootstrap resamples per interval unless a study (``reps``) or ``esper report --reps`` says
otherwise. rliable's interval estimates default to 50,000 (2,000 is its performance
profiles' default); in the case a walk-through checked, an IQM interval at 2,000 equalled an
independent 20,000-resample bootstrap's to two decimals, where 500 moved a bound by 0.9."""

Score = typing.Literal["test", "validation"]
SCORES: dict[Score, str] = {"test": "test accuracy", "validation": "validation accuracy"}
"""What a study scores its trials by (the study file's ``score``), and what its results call
it. ``test``: the final model's accuracy on the test split, for a study that reports (the
results table). ``validation``: the same model's accuracy on the validation samples its run
validated on, for a study that chooses something (a reward, a preset, a setting): such a choice
made on test accuracy leaks the test images into every later result on them."""


def score_label(score: Score | None) -> str:
    """What a study's scores are called (``SCORES``); "score" when its ``study.json``, which
    says, cannot be read."""
    return "score" if score is None else SCORES[score]


def study_running(directory: Path) -> bool:
    """Whether an ``esper study`` is running the study in ``directory`` (it holds
    ``LOCK_FILE``); False where that cannot be told."""
    return lock_held(directory / LOCK_FILE) is True


REPS_RANGE = (10, 100_000)
"""Bootstrap resamples per interval a study (its file, ``esper report STUDY --reps``) accepts:
fewer than 10 give no interval worth the name; 100,000 already takes minutes per table."""


MIN_VERDICT_REPS = 1000
"""The fewest bootstrap resamples a study's verdict (``esper.study.stats.conclusion``) is drawn
from. The interval's ends are percentiles of the resamples: with few, the 2.5th is noisy and
"yes" comes too often. Simulated identical arms (normal scores, 4 seeds, 2,000 studies) came
out "yes" in 13 %, 6 % and 4 % of studies at 10, 50 and 200 resamples, 3 % at 2,000; and one
study's line said "no" at 300 resamples where 2,000 said "not established" (an independent
check)."""


@dataclass(frozen=True)
class VerdictRoles:
    """Which arms answer which of Esper's two questions, from the arms' controllers (arm names
    are the user's: an arm is judged by what it runs, not by what it is called).

    Attributes:
        matched: (growing arm, the static-matched arm of its size) pairs: Q1 (growth per
            parameter) compares each growing arm with its own matched arm only.
        learned: the arms running a trained PPO policy: Q2's contenders.
        handwritten: the arms running the heuristic controller: Q2's baselines.
    """

    matched: Set[tuple[str, str]] = field(default_factory=frozenset)
    learned: Set[str] = field(default_factory=frozenset)
    handwritten: Set[str] = field(default_factory=frozenset)

    @property
    def baselines(self) -> tuple[str, ...]:
        """The arms the verdicts compare against, sorted."""
        return tuple(sorted({s for _, s in self.matched} | set(self.handwritten)))


@dataclass(frozen=True)
class TrialRow:
    """One trial of a study as the statistics see it.

    Attributes:
        task: The task's name.
        arm: The arm's name (``static``, ``static-matched``, ``heuristic``, ``ppo…``, ...).
        seed: The trial's seed.
        status: the run's status (``completed``, ``terminated`` by the governor), or
            ``failed``; finished trials with a score count.
        score: The study's score (``SCORES``) of the final model, in percent: its test accuracy,
            or in a ``score = "validation"`` study its validation accuracy; ``None`` when not
            measured.
        best_score: The test accuracy of the best validation epoch's model, or in a
            ``score = "validation"`` study that epoch's validation accuracy, in percent.
        final_params: Parameters of the final model.
        peak_params: The most parameters the model had during training.
        flops: Training FLOPs.
        seconds: Training time of the trial (its run summary's ``wall_seconds``).
        error: What went wrong, for a trial that did not complete (or finished without the
            score its study asks for).
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
        check_int("seed", self.seed, 0, MAX_INT64)  # trials before seeds stopped at MAX_SEED
        for name in ("score", "best_score"):
            if (value := getattr(self, name)) is not None:
                check_float(name, value, 0.0, 100.0)  # an accuracy in percent
        for name in ("final_params", "peak_params"):
            if (value := getattr(self, name)) is not None:
                check_int(name, value, 0, MAX_INT64)  # what an int64 column holds
        for name in ("flops", "seconds"):
            if (value := getattr(self, name)) is not None:
                check_float(name, value, 0.0, math.inf)

    @property
    def counts(self) -> bool:
        """Whether the trial enters the statistics: it finished (completed, or ended by the
        governor) and has a score."""
        return self.status in FINISHED and self.score is not None


def matched_target(rows: Iterable[TrialRow], task: str, arm: str) -> int | None:
    """The parameter count a static-matched arm matching ``arm`` is sized to on ``task``: the
    median final parameters of ``arm``'s finished trials there (None: none has finished)."""
    counts = [r.final_params for r in rows if (r.task, r.arm) == (task, arm)]
    known = [count for count in counts if count is not None]
    return round(statistics.median(known)) if known else None


class TrialsFileError(ValueError):
    """A ``trials.csv`` that cannot be read (the message is one line naming file, line, cell)."""


@dataclass(frozen=True)
class TrialRun:
    """One row of ``trials.csv``: the trial's result and its run directory's name."""

    run: str
    row: TrialRow


def read_trials(directory: Path) -> list[TrialRun]:
    """The trials ``esper study`` recorded in ``directory/trials.csv``, in file order: the one
    reader of the file (the study report, the dashboard and the ``trials`` view).

    Raises:
        TrialsFileError: no ``trials.csv`` (no invocation of the study has finished), one
            that is not a regular file or cannot be read, or a header, row or cell that is not
            what ``esper.study.execute`` writes (naming file:line).
    """
    path = directory / TRIALS_FILE
    try:
        raw = open_regular(path)  # a pipe is refused, not read forever
    except FileNotFoundError:
        raise TrialsFileError(
            f"{str(directory)!r} has no {TRIALS_FILE} yet: no invocation of the study has "
            "finished (run `esper study FILE` to the end, then report it)"
        ) from None
    except OSError as err:  # a directory, a pipe, no permission
        raise TrialsFileError(f"cannot read {path}: {err.strerror}") from None
    hints = typing.get_type_hints(TrialRow)
    names = [f.name for f in fields(TrialRow)]
    try:
        with io.TextIOWrapper(raw, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:  # an empty file (a disk that filled, a hand edit)
                raise TrialsFileError(f"{path}: empty, not a trials table (its header is missing)")
            if set(reader.fieldnames) != {*names, RUN_COLUMN}:
                raise TrialsFileError(f"{path}: not a trials table (header {reader.fieldnames})")
            trials = []
            for line in reader:
                where = f"{path}:{reader.line_num}"
                if None in line or None in line.values():  # DictReader's extra or missing cells
                    raise TrialsFileError(f"{where}: not {len(names) + 1} cells, as the header")
                cells = {name: _cell(line[name], hints[name], f"{where}: {name}") for name in names}
                try:
                    row = TrialRow(**cells)
                except ValueError as err:  # TrialRow's own checks (a score out of [0, 100])
                    raise TrialsFileError(f"{where}: {err}") from None
                trials.append(TrialRun(line[RUN_COLUMN], row))
    except (OSError, csv.Error) as err:
        raise TrialsFileError(f"cannot read {path}: {err}") from None
    except UnicodeDecodeError:
        raise TrialsFileError(f"{path}: not a trials table (not UTF-8 text)") from None
    return trials


def _cell(text: str, hint: typing.Any, where: str) -> typing.Any:
    """A ``trials.csv`` cell as its ``TrialRow`` field's type; an empty optional cell is None."""
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)] or [hint]
    if text == "":
        if type(None) in typing.get_args(hint):
            return None
        raise TrialsFileError(f"{where} is empty")
    try:
        return kinds[0](text)
    except ValueError:
        raise TrialsFileError(f"{where} is {quoted(text)}, not {kinds[0].__name__}") from None
