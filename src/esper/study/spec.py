"""Study files (DESIGN §9): what a study runs, read and checked.

A study file is TOML::

    out = "studies/impaired"          # the study directory (trials, results)
    tasks = ["fashion_mnist_impaired"]
    seeds = 10                        # evaluation seeds first_seed .. first_seed + seeds - 1
    score = "test"                    # or "validation", for a study that chooses a setting
    [budget]                          # host training of every trial (HostTraining keys)
    epochs = 20
    [resources]                       # what one trial asks Ray for
    cpus = 1
    [[arms]]
    name = "heuristic"
    controller = "heuristic"
    [[arms]]
    name = "static-matched"
    controller = "static-matched"
    match = "heuristic"

Every table is checked strictly (an unknown key fails naming the accepted ones) before anything
starts, and so are the study directory, the policies arms name and the seeds they trained on.
``training`` and ``ppo_config`` resolve what a trial's run trains with; ``esper.study.plan``
turns the study into its trials.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from esper.leyline.config import (
    MAX_COUNT,
    MAX_SEED,
    MAX_WIDTH,
    HostTraining,
    TelemetrySettings,
    UserError,
    check_float,
    check_int,
    config_dict,
    decode,
    override,
    quoted,
    read_config_file,
    require,
)
from esper.leyline.files import absolute_path, is_utf8_path
from esper.leyline.trials import (
    DEFAULT_REPS,
    KNOWLEDGE_FILE,
    REPS_RANGE,
    STUDY_FILE,
    STUDY_OUTPUTS,
    TRIALS_DIR,
    TRIALS_FILE,
    Score,
    VerdictRoles,
)
from esper.nissa import record
from esper.seeding import environment_seeds, replayed_episode
from esper.simic.config import PRESETS, TrainingConfig, load_preset
from esper.simic.rewards import CONTRIBUTION_MODES
from esper.study.run import read_policy
from esper.tamiyo import HeuristicConfig
from esper.tasks import get_task, reads_files, resolve_training

logger = logging.getLogger(__name__)

Controller = Literal["static", "static-matched", "heuristic", "random", "periodic", "ppo"]

MATCHED = "static-matched"
"""The arm kind whose host width is matched to another arm's median final parameters."""

DEFAULT_SEEDS = 10
"""Evaluation seeds per task × arm: the fewest for which rliable's IQM intervals are useful."""

DEFAULT_RETRIES = 2
"""Extra attempts of a failing trial (across invocations) before it is listed as failed."""

MAX_TRIALS = 100_000
"""Tasks x arms x seeds a study may hold: listing them stays within about half a minute (80,000
trials took 26 s to list here; at 20 s a trial they would be 18 days of one core)."""

POLICY_TELEMETRY = TelemetrySettings(level="normal")
"""Policy runs (PPO training) log every step (about 3 MB per 40-round run of 4 environments):
their reports' diagnostics — reward components, ops and how far seeds get per round — are
folded from the steps, and a policy that learned nothing is explained by them (issue #13)."""

MAX_ARM_BYTES = 100
"""The longest arm name, in UTF-8 bytes: with the longest task name and seed, a trial's
directory name stays far below the 255 bytes a file system allows."""


@dataclass(frozen=True)
class ArmSpec:
    """One arm: a controller with its settings.

    Attributes:
        name: the arm's name in results (unique in the study).
        controller: static, static-matched, heuristic, random, periodic or ppo.
        width: static only: the host width (None: the task's).
        match: static-matched only: the arm whose median final parameters the width matches.
        period: periodic only: germinate every this many epochs.
        policy: ppo only: evaluate this PPO run's policy (a run directory).
        preset: ppo training only: the PPO preset (``esper ppo --preset``).
        reward: ppo training only: the reward mode (shaped, simplified or sparse).
        training_seeds: ppo training only: one PPO run per seed (no seed twice); the i-th
            evaluation seed (``first_seed + i``) runs the policy of
            ``training_seeds[i mod len(training_seeds)]``. Their environment seeds may not
            overlap the evaluation seeds.
        ppo: ppo training only: further ``TrainingConfig`` settings (keys as in its config.json)
            but ``env`` (the study's budget), ``telemetry`` (the study's) and ``runtime`` other
            than ``amp`` (seeds come from training_seeds, the device from resources.gpus, and a
            trial is one Ray task, so it starts no Ray workers of its own).
        selector: heuristic only: the blueprint selector (rotation, ucb, thompson, epsilon).
        strategy: heuristic only: the orchestration strategy (spread, replace, diversify,
            specialize, ensemble; ensemble turns the budget's Shapley values on).
        auto_advance: heuristic, periodic, random and ppo training only: the arm's runs
            advance every seed whose gate passes (``HostTraining.auto_advance``; None: the
            budget's). A ppo arm's policy trains and is evaluated with it; an arm evaluating a
            given policy runs as that policy trained, and static arms never advance anything.
    """

    name: str
    controller: Controller
    width: int | None = None
    match: str | None = None
    period: int | None = None
    policy: str | None = None
    preset: str | None = None
    reward: str | None = None
    training_seeds: tuple[int, ...] = ()
    ppo: dict[str, Any] = field(default_factory=dict)
    selector: str | None = None
    strategy: str | None = None
    auto_advance: bool | None = None

    def __post_init__(self) -> None:
        require(
            bool(self.name) and self.name.replace("-", "").replace("_", "").isalnum(),
            f"arm name must be letters, digits, '-' or '_', got {self.name!r}",
        )
        size = len(self.name.encode("utf-8"))
        require(  # TASK.ARM.seedN names each trial's directory; a file name holds 255 bytes
            size <= MAX_ARM_BYTES,
            f"arm name must be at most {MAX_ARM_BYTES} bytes (it names the trials' "
            f"directories), got {quoted(self.name)} ({size} bytes)",
        )
        given = {
            "width": self.width is not None,
            "match": self.match is not None,
            "period": self.period is not None,
            "policy": self.policy is not None,
            "preset": self.preset is not None,
            "reward": self.reward is not None,
            "training_seeds": bool(self.training_seeds),
            "ppo": bool(self.ppo),
            "selector": self.selector is not None,
            "strategy": self.strategy is not None,
            "auto_advance": self.auto_advance is not None,
        }
        takes = {
            "static": {"width"},
            MATCHED: {"match"},
            "periodic": {"period", "auto_advance"},
            "random": {"auto_advance"},
            "heuristic": {"selector", "strategy", "auto_advance"},
            "ppo": {"policy", "preset", "reward", "training_seeds", "ppo", "auto_advance"},
        }.get(self.controller, set())
        extra = sorted(k for k, v in given.items() if v and k not in takes)
        accepted = ", ".join(sorted(takes)) or "no settings"
        require(not extra, f"arm {self.name!r} ({self.controller}) takes {accepted}; drop {extra}")
        where = f"arm {self.name!r}"
        if self.controller == "heuristic":
            try:  # an unknown selector or strategy names the accepted ones
                HeuristicConfig(
                    selector=self.selector or HeuristicConfig.selector,
                    strategy=self.strategy or HeuristicConfig.strategy,
                )
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        if self.width is not None:
            check_int(f"{where}: width", self.width, 1, MAX_WIDTH)
        if self.period is not None:
            check_int(f"{where}: period", self.period)
        for seed in self.training_seeds:
            check_int(f"{where}: training seed", seed, 0, MAX_SEED)
        repeated = sorted({s for s in self.training_seeds if self.training_seeds.count(s) > 1})
        require(not repeated, f"{where}: training_seeds repeat {repeated}; give each seed once")
        require(
            self.controller != MATCHED or self.match is not None,
            f"{where} ({MATCHED}) needs match = the name of the arm whose size it matches",
        )
        if self.controller == "ppo":
            self._check_ppo(where)

    def _check_ppo(self, where: str) -> None:
        """A ppo arm: a policy to evaluate or training seeds, and PPO settings it may set."""
        trains = bool(self.training_seeds)
        require(
            (self.policy is not None) != trains,
            f"{where} (ppo) needs exactly one of policy = a PPO run directory to evaluate, "
            "or training_seeds = seeds of the PPO runs to train first",
        )
        require(
            self.policy is None or self.auto_advance is None,
            f"{where}: auto_advance comes from the policy's own run when policy is given; "
            "drop auto_advance",
        )
        training = [k for k in ("preset", "reward") if getattr(self, k) is not None]
        training += ["ppo"] * bool(self.ppo)
        require(
            self.policy is None or not training,
            f"{where}: {', '.join(training)} set how the arm's policies train; with policy = "
            "a trained run nothing trains: drop them",
        )
        settable = [f.name for f in fields(TrainingConfig) if f.name not in ("env", "telemetry")]
        unknown = sorted(set(self.ppo) - set(settable) - {"env", "telemetry"})
        require(  # TrainingConfig's own message offered env and telemetry, refused below
            not unknown,
            f"{where}: ppo: unknown key(s) {unknown}; accepted: {', '.join(settable)} (of "
            "runtime only amp)",
        )
        refused = sorted({"env", "telemetry"} & set(self.ppo))
        runtime = self.ppo.get("runtime")
        if isinstance(runtime, dict):
            refused += [f"runtime.{key}" for key in sorted(runtime) if key != "amp"]
        require(
            not refused,
            f"{where}: ppo may not set {refused}: host training comes from the study's "
            "budget, seeds from training_seeds, the device from resources.gpus, telemetry "
            "from the study, and a trial starts no Ray workers; of runtime only amp",
        )
        require(
            self.preset is None or self.preset in PRESETS,
            f"{where}: unknown preset {self.preset!r}; known presets: {', '.join(PRESETS)}",
        )
        require(
            self.reward is None or self.reward in CONTRIBUTION_MODES,
            f"{where}: unknown reward {self.reward!r}; accepted: {', '.join(CONTRIBUTION_MODES)}",
        )

    @property
    def trains_policy(self) -> bool:
        """Whether this arm trains its policies in the study (train-then-evaluate)."""
        return bool(self.training_seeds)


RAY_RESOURCE_UNIT = 0.0001
"""The smallest non-zero amount of a resource Ray schedules."""


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for.

    Attributes:
        cpus: CPU cores per trial; also its torch thread count (rounded down, at least 1).
        gpus: GPUs per trial; a fraction (e.g. 0.25) shares one GPU between trials. A trial
            given a GPU trains on it.
    """

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        # Ray counts resources in units of 1/10,000 and refuses a non-zero amount below one.
        check_float("resources.cpus", self.cpus, RAY_RESOURCE_UNIT, 1024.0)
        check_float("resources.gpus", self.gpus, 0.0, 64.0)
        require(
            self.gpus == 0 or self.gpus >= RAY_RESOURCE_UNIT,
            f"resources.gpus must be 0 or a number in [{RAY_RESOURCE_UNIT}, 64.0], got "
            f"{quoted(self.gpus)}",
        )

    @property
    def threads(self) -> int:
        """torch threads of one trial."""
        return max(1, int(self.cpus))


@dataclass(frozen=True)
class StudySpec:
    """A study: tasks × arms × seeds (the TOML file's top-level keys).

    Attributes:
        out: the study directory, relative to the file's directory unless absolute.
        tasks: task presets (esper --help lists them).
        arms: the arms (``[[arms]]`` tables).
        seeds: evaluation seeds per task × arm.
        first_seed: the first evaluation seed.
        budget: host training of every trial: ``HostTraining`` keys but ``task`` and
            ``threads`` (resources.cpus sets them) (epochs, batch_size, batches_per_epoch,
            val_samples, lr, width, slots, ...). ``width`` is every trial's host width but a
            static arm's own and a static-matched arm's; ``auto_advance`` is every growing
            arm's unless the arm sets its own; an arm evaluating a trained policy uses the
            policy's slots and auto_advance. A relative ``data_dir`` is taken against the
            file's directory.
        task_budgets: per-task additions to ``budget`` (``[task_budgets.TASK]`` tables, the same
            keys), for what one task needs and another must not get: Fashion-MNIST's 100
            batches per epoch would be four epochs of the text task's.
        resources: what one trial asks Ray for.
        retries: extra attempts of a failing trial before it is listed as failed.
        baselines: the arms every arm's probability of improvement is computed against (empty:
            every arm that is not ppo).
        reps: bootstrap resamples per confidence interval (rliable's stratified bootstrap);
            ``DEFAULT_REPS`` follows rliable, fewer give coarser intervals sooner (and below
            ``MIN_VERDICT_REPS`` no verdict: the interval's ends are too noisy).
        knowledge: the knowledge store every trial records its seed outcomes in and bandit
            selectors learn from (a SQLAlchemy URL, an SQLite path relative to the study
            file's directory: ``store_url``; None: knowledge.sqlite in the study directory, so
            a study's bandits learn from its own trials only).
        score: what the trials are scored by (``SCORES``): ``test``, the final model's test
            accuracy (a study that reports results), or ``validation``, that model's
            validation accuracy (a study that chooses a setting, which must not see the test
            split). Its tables, plots and verdicts then rank by it.
    """

    out: str
    tasks: tuple[str, ...]
    arms: tuple[ArmSpec, ...]
    seeds: int = DEFAULT_SEEDS
    first_seed: int = 0
    budget: dict[str, Any] = field(default_factory=dict)
    task_budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    retries: int = DEFAULT_RETRIES
    baselines: tuple[str, ...] = ()
    reps: int = DEFAULT_REPS
    knowledge: str | None = None
    score: Score = "test"

    def __post_init__(self) -> None:
        check_int("reps", self.reps, *REPS_RANGE)
        if self.knowledge is not None:
            from esper.nissa.knowledge import parse_url

            parse_url(self.knowledge)  # a malformed URL or scheme fails before anything runs
        require(bool(self.out), "out must name the study directory")
        require(bool(self.tasks), "tasks must name at least one task")
        for task in self.tasks:
            get_task(task)  # an unknown task names the known ones
        twice = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        require(not twice, f"tasks repeat {twice}; give each task once")
        require(bool(self.arms), "a study needs at least one [[arms]] table")
        check_int("seeds", self.seeds, 1, MAX_COUNT)
        check_int("first_seed", self.first_seed, 0, MAX_SEED - self.seeds + 1)  # last: MAX_SEED
        check_int("retries", self.retries, 0, 100)
        self._check_arm_names()
        names = [a.name for a in self.arms]
        trials = len(self.tasks) * len(self.arms) * self.seeds
        require(
            trials <= MAX_TRIALS,
            f"{len(self.tasks)} task(s) x {len(self.arms)} arm(s) x {self.seeds} seeds = "
            f"{trials:,} trials; a study holds at most {MAX_TRIALS:,} (fewer seeds, or split it)",
        )
        for arm in self.arms:
            if arm.match is not None:
                target = next((a for a in self.arms if a.name == arm.match), None)
                require(
                    target is not None and target.controller not in ("static", MATCHED),
                    f"arm {arm.name!r}: match = {arm.match!r} must name a growing arm of this "
                    f"study; growing arms: {[a.name for a in self.arms if _grows(a)]}",
                )
        unknown = sorted(set(self.baselines) - set(names))
        require(not unknown, f"unknown baseline arm(s) {unknown}; arms: {names}")
        strays = sorted(set(self.task_budgets) - set(self.tasks))
        require(
            not strays,
            f"task_budgets name tasks {strays} the study lacks; tasks: {list(self.tasks)}",
        )
        for where, budget in (
            ("budget", self.budget),
            *((f"task_budgets.{t}", b) for t, b in self.task_budgets.items()),
        ):
            require("task" not in budget, f"{where} may not set task: the study's tasks do")
            require(
                "threads" not in budget,
                f"{where} may not set threads: resources.cpus sets every trial's threads",
            )
            keys = [f.name for f in fields(HostTraining) if f.name not in ("task", "threads")]
            extra = sorted(k for k in budget if k not in keys)
            require(not extra, f"{where}: unknown key(s) {extra}; accepted: {', '.join(keys)}")
            try:  # bad values fail now
                override(HostTraining("synthetic"), budget)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        self._check_data_dirs()
        self._check_hosts()

    def _check_arm_names(self) -> None:
        """No two arms share a name, case aside: trial directories are named after their arms,
        and on a file system that ignores case (macOS, Windows) "Grow" and "grow" would share
        them."""
        folded = [a.name.casefold() for a in self.arms]
        twice = sorted({a.name for a in self.arms if folded.count(a.name.casefold()) > 1})
        require(
            not twice,
            f"arm names repeat {twice} (case aside: trial directories are named after arms); "
            "give each arm its own name",
        )

    def _check_data_dirs(self) -> None:
        """A ``data_dir`` reaches only tasks whose dataset is read from files (the others refuse
        one): a study of both kinds sets it per task."""
        for task in self.tasks:
            if reads_files(task):
                continue
            own = f"task_budgets.{task}" if "data_dir" in self.task_budgets.get(task, {}) else None
            where = own or ("budget" if "data_dir" in self.budget else None)
            require(
                where is None,
                f"{where}.data_dir reaches task {task!r}, whose dataset reads no files; set "
                f"data_dir in the [task_budgets.TASK] table of each task that reads files",
            )

    def _check_hosts(self) -> None:
        """Every trial's host width and slots suit its task's host (a transformer's width a
        multiple of its heads, slots the host has), checked before anything runs. An arm that
        evaluates a given policy runs with the policy's slots, a static-matched arm at a width
        the matching chooses among valid ones."""
        for task in self.tasks:
            for arm in self.arms:
                if arm.policy is not None:
                    continue
                try:  # the width too: training() refuses one the task's host cannot take
                    host = training(self, task, arm.width if arm.controller == "static" else None)
                    width = None if arm.controller == MATCHED else host.width
                    get_task(task).check_host(width, host.slots)
                except ValueError as err:
                    raise ValueError(f"arm {arm.name!r} on {task}: {err}") from None

    @property
    def evaluation_seeds(self) -> tuple[int, ...]:
        """The seeds every task × arm is evaluated on."""
        return tuple(range(self.first_seed, self.first_seed + self.seeds))

    def baseline_arms(self) -> tuple[str, ...]:
        """``baselines``, or every arm that is not ppo."""
        return self.baselines or tuple(a.name for a in self.arms if a.controller != "ppo")

    def arm(self, name: str) -> ArmSpec:
        """The arm called ``name``."""
        return next(a for a in self.arms if a.name == name)

    def verdict_roles(self) -> VerdictRoles:
        """The arms' roles in the verdicts, from their controllers (``stats.verdicts``)."""
        return VerdictRoles(
            matched=frozenset((a.match, a.name) for a in self.arms if a.match is not None),
            learned=frozenset(a.name for a in self.arms if a.controller == "ppo"),
            handwritten=frozenset(a.name for a in self.arms if a.controller == "heuristic"),
        )


def _grows(arm: ArmSpec) -> bool:
    return arm.controller not in ("static", MATCHED)


def read_study(path: Path) -> tuple[StudySpec, Path]:
    """The study in ``path`` and its directory (``out`` resolved against the file's
    directory), every setting checked — including seeds, policies and presets.

    Raises:
        UserError-worthy ``ValueError``: one line naming the bad key or value.
    """
    table = with_defaults(StudySpec, read_config_file(path))
    table["resources"] = with_defaults(Resources, table["resources"])
    arms = table.get("arms")
    if isinstance(arms, list):
        table["arms"] = [with_defaults(ArmSpec, arm) for arm in arms]
    spec: StudySpec = decode(StudySpec, table, "", None)
    out = Path(spec.out)
    directory = Path(os.path.normpath(out if out.is_absolute() else path.parent / out))
    _check_out(directory)
    for arm in spec.arms:
        if arm.controller == "ppo":
            _check_policy_seeds(spec, arm, path.parent)
    # A policy named relative to the file's directory: the trials run from any directory.
    arms = [
        replace(a, policy=str(_policy_directory(a, path.parent).resolve()))
        if a.policy is not None
        else a
        for a in spec.arms
    ]
    return replace(_absolute_data_dirs(spec, path.parent), arms=tuple(arms)), directory


def _absolute_data_dirs(spec: StudySpec, base: Path) -> StudySpec:
    """``spec`` with each ``data_dir`` of its budgets absolute, ``~`` expanded and a relative
    one taken against ``base`` (the study file's directory), as ``out`` and ``policy`` are: it
    was taken relative to wherever a trial's process ran (the command's directory, or a Ray
    node's), so a study run from another directory read, or downloaded into, another folder."""

    def absolute(budget: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(budget.get("data_dir"), str):
            return budget
        try:
            return {**budget, "data_dir": absolute_path(budget["data_dir"], base)}
        except ValueError as err:
            raise ValueError(f"data_dir {err}") from None

    tasks = {task: absolute(budget) for task, budget in spec.task_budgets.items()}
    return replace(spec, budget=absolute(spec.budget), task_budgets=tasks)


def store_url(spec: StudySpec, study_file: Path) -> str | None:
    """The knowledge store the study names, with an SQLite file named by a relative path made
    absolute against the study file's directory, as ``out`` and ``policy`` are (it was taken
    relative to wherever the command ran: a study run from another directory used, and made,
    another store, unnoticed). ``spec.knowledge`` keeps the URL as written, which is what a
    study directory compares, so a study moved with its file carries on."""
    url = spec.knowledge
    if url is None:
        return None
    from sqlalchemy.engine import make_url  # what parse_url (checked when read) reads it with

    parsed = make_url(url)
    database = parsed.database
    if parsed.drivername != "sqlite" or not database or database.startswith(("~", "/")):
        return url
    absolute = os.path.normpath(study_file.parent.absolute() / database)
    return parsed.set(database=absolute).render_as_string(hide_password=False)


def _check_out(directory: Path) -> None:
    """The study directory can hold a study: neither it nor a directory above it is a file, a
    run directory or (above it) another study's directory, and it is new, empty or a study's.

    Raises:
        ValueError: naming ``out`` and what is in the way.
    """
    where = f"out {str(directory)!r}"
    require("\0" not in str(directory), f"{where}: a path cannot hold a NUL character")
    require(  # every trial's run directory would refuse it
        is_utf8_path(directory),
        f"{where} is not UTF-8 text (run views, reports and the knowledge store's URL need "
        "names they can read); choose another out",
    )
    for place in (directory, *directory.absolute().parents):
        try:
            require(
                not place.exists() or place.is_dir(),
                f"{where}: {str(place)!r} is a file, not a directory",
            )
            what = "is" if place == directory else "lies inside"
            require(
                not record.is_run_directory(place),
                f"{where} {what} the run directory {str(place)!r}; choose a directory outside "
                "any run",
            )
            inside = place != directory and record.is_study(place)
        except OSError as err:
            raise ValueError(f"{where}: cannot use {str(place)!r}: {err.strerror}") from None
        require(
            not inside,
            f"{where} lies inside the study directory {str(place)!r}; choose a directory "
            "outside any study",
        )
    try:
        foreign = _foreign(directory)
    except OSError as err:
        raise ValueError(f"{where}: cannot use it: {err.strerror}") from None
    if foreign:
        raise ValueError(
            f"{where} already exists and holds no study (no {STUDY_FILE}, but "
            f"{quoted(min(foreign))}); choose a new or empty directory"
        )
    trials = directory / TRIALS_DIR
    require(  # every trial would fail to make its run directory
        not os.path.lexists(trials) or trials.is_dir(),
        f"{where}: {str(trials)!r} is not a directory; the study keeps its trials' runs there",
    )


def _foreign(directory: Path) -> list[str]:
    """What in ``directory`` no study wrote, where a study is to go. A study continues in its
    own directory and starts only where nothing else is; one that lost its ``study.json`` but
    holds its trials (``trials/`` or ``trials.csv``) and otherwise only what a study writes
    continues (each trial's run is still checked against the settings the study gives it;
    the attempts counted are lost). Hidden files do not count."""
    if not directory.is_dir() or (directory / STUDY_FILE).exists():
        return []
    names = [p.name for p in directory.iterdir() if not p.name.startswith(".")]
    if not {TRIALS_DIR, TRIALS_FILE} & set(names):  # a results.md alone is anyone's
        return names
    store = tuple(f"{KNOWLEDGE_FILE}-{part}" for part in ("journal", "wal", "shm"))  # SQLite's
    return [name for name in names if name not in STUDY_OUTPUTS and name not in store]


def with_defaults(cls: type, table: Any) -> Any:
    """``table`` with the fields it leaves out that have defaults filled in (a study file
    states only what it changes; ``decode`` then checks every key; a study directory's saved
    settings predate fields added since)."""
    if not isinstance(table, dict):
        return table  # decode says what is wrong with it
    filled = dict(table)
    for f in fields(cls):
        if f.name not in filled and f.default is not MISSING:
            filled[f.name] = config_dict_value(f.default)
        elif f.name not in filled and f.default_factory is not MISSING:
            filled[f.name] = config_dict_value(f.default_factory())
    return filled


def config_dict_value(value: Any) -> Any:
    """A default as plain data (a dataclass as its table, a tuple as a list)."""
    return config_dict(value) if is_dataclass(value) else json.loads(json.dumps(value))


def _check_policy_seeds(spec: StudySpec, arm: ArmSpec, base: Path) -> None:
    """A PPO arm's training environments never used an evaluation seed (DESIGN §9), nor run
    an episode an evaluation seed would replay (``seeding.replayed_episode``).

    Raises:
        ValueError: naming the overlapping seeds, or a policy that cannot be read.
    """
    evaluation = set(spec.evaluation_seeds)
    if arm.policy is not None:
        directory = _policy_directory(arm, base)
        try:
            policy = read_policy(directory)  # one that cannot be evaluated fails now
        except UserError as err:
            raise ValueError(f"arm {arm.name!r}: {err}") from None  # err names the policy
        state, meta = policy.state, policy.meta
        for task in spec.tasks:  # a policy acts only on hosts of the kind it trained on
            host = get_task(task).host_kind.value
            require(
                state.get("topology") == host,
                f"arm {arm.name!r}: policy {arm.policy!r} was trained on a "
                f"{state.get('topology')} host; task {task!r}'s host is a {host}",
            )
        used = {int(s) for s in meta.seeds["environments"]}
        origin = f"its PPO run {arm.policy!r} trained on environment seeds"
    else:
        unused = arm.training_seeds[spec.seeds :]  # evaluation seed i runs policy i mod n
        require(
            not unused,
            f"arm {arm.name!r}: {len(arm.training_seeds)} training_seeds for {spec.seeds} "
            f"evaluation seeds: no trial would evaluate the policies of {list(unused)[:8]}; "
            f"give at most {spec.seeds}",
        )
        config = ppo_config(spec, arm, spec.tasks[0], arm.training_seeds[0])
        require(
            not config.runtime.amp or spec.resources.gpus > 0,
            f"arm {arm.name!r}: ppo.runtime.amp needs the policy on a GPU; the study's "
            "resources.gpus is 0",
        )
        n_envs = config.ppo.n_envs
        _warn_shared_environments(arm, n_envs)
        used = {e for s in arm.training_seeds for e in environment_seeds(s, n_envs)}
        origin = f"its training seeds {list(arm.training_seeds)} use environment seeds"
    overlap = sorted(used & evaluation)
    require(
        not overlap,
        f"arm {arm.name!r}: {origin} {sorted(used)[:8]}{'...' if len(used) > 8 else ''}, "
        f"overlapping the evaluation seeds at {overlap[:8]}; evaluation seeds are "
        f"{spec.first_seed}..{spec.first_seed + spec.seeds - 1}: move first_seed or the "
        "training seeds",
    )
    replays = [(t, r) for t in sorted(evaluation) if (r := replayed_episode(t, used)) is not None]
    if replays:
        seed, (environment, episode) = replays[0]
        raise ValueError(
            f"arm {arm.name!r}: evaluation seed {seed} replays episode {episode} of training "
            f"environment {environment} (the same host and data order: episode seeds meet in "
            "the 32 bits torch's CPU generator keeps); move first_seed or the training seeds"
        )


def _warn_shared_environments(arm: ArmSpec, n_envs: int) -> None:
    """Warn of training seeds closer than ``n_envs``: environment i of training seed s is
    seeded s + i, so the trainings of seeds 100 and 101 with 8 environments build the same
    hosts and draw the same data in 7 of them, episode for episode (only the policies'
    initializations and draws differ) — not independent replicates. Not refused: studies so
    written (``studies/results_digits_seeds.toml``) must still run as recorded."""
    seeds = sorted(arm.training_seeds)
    close = [(a, b) for a, b in itertools.combinations(seeds, 2) if b - a < n_envs]
    if close:
        a, b = close[0]
        logger.warning(
            "arm %r: training seeds %d and %d share %d of their %d environment seeds "
            "(environment i of training seed s is seeded s + i)%s: their policies train "
            "partly on the same hosts and data; space training seeds %d or more apart",
            arm.name, a, b, n_envs - (b - a), n_envs,
            f", as do {len(close) - 1} more pair(s)" if len(close) > 1 else "", n_envs,
        )  # fmt: skip


def _policy_directory(arm: ArmSpec, base: Path) -> Path:
    assert arm.policy is not None
    policy = Path(arm.policy)
    return policy if policy.is_absolute() else base / policy


def training(spec: StudySpec, task: str, width: int | None = None) -> HostTraining:
    """The resolved host training of a trial on ``task``: the study's budget and the task's
    own additions to it, with ``width`` (if given) as the host width and the threads of
    ``resources.cpus``."""
    block = override(HostTraining(task), {**spec.budget, **spec.task_budgets.get(task, {})})
    width = block.width if width is None else width
    return resolve_training(replace(block, width=width, threads=spec.resources.threads))


def ppo_config(spec: StudySpec, arm: ArmSpec, task: str, seed: int) -> TrainingConfig:
    """The ``TrainingConfig`` of an arm's PPO run on ``task`` with training seed ``seed``:
    preset, then the arm's ``ppo`` table, then the study's task, budget (with the task's
    ``task_budgets`` and the arm's ``auto_advance``), reward and seed.

    Raises:
        ValueError: a bad key or value in the arm's ``ppo`` table.
    """
    base = load_preset(arm.preset or "default")
    try:
        config = override(base, arm.ppo)
    except ValueError as err:
        raise ValueError(f"arm {arm.name!r}: ppo: {err}") from None
    reward = config.reward if arm.reward is None else replace(config.reward, mode=arm.reward)
    try:
        runtime = replace(config.runtime, seed=seed)
    except ValueError as err:  # e.g. a seed whose environments' seeds pass int64
        raise ValueError(f"arm {arm.name!r}: training seed {seed}: {err}") from None
    env = training(spec, task)  # the budget's slots too: presets leave slots at the default
    if arm.auto_advance is not None:
        env = replace(env, auto_advance=arm.auto_advance)
    try:
        return replace(config, env=env, reward=reward, runtime=runtime, telemetry=POLICY_TELEMETRY)
    except ValueError as err:  # e.g. a budget of 1 epoch: no decision to train on
        raise ValueError(f"arm {arm.name!r} on {task}: {err}") from None


__all__ = [
    "MATCHED",
    "ArmSpec",
    "Resources",
    "StudySpec",
    "ppo_config",
    "read_study",
    "store_url",
    "training",
    "with_defaults",
]
