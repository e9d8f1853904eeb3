"""One episode under one controller into a run directory: ``esper static|heuristic|eval`` and
every study trial.

The episode is Tolaria's ``Episode`` — the loop every PPO environment runs too — driven by the
controller of the mode: ``StaticController`` (never grows), ``HeuristicTamiyo``, or the greedy
policy of a PPO run (``eval``). After every epoch its row goes to ``metrics.csv`` and the whole
state (episode, controller, elapsed time) to a checkpoint; the grown model is saved as
``model.pt`` when the run ends.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro

from esper.kasmina import blueprint_registry, save_model
from esper.kasmina.checkpoint import model_bytes, model_from_bytes
from esper.leyline import SeedStage
from esper.leyline.config import (
    MAX_SEED,
    HostTraining,
    TelemetrySettings,
    UserError,
    check_int,
    check_sections,
    config_dict,
    measured,
    override,
)
from esper.leyline.events import PolicyDecision, RunFinished, TelemetryLevel
from esper.leyline.files import atomic_write
from esper.leyline.knowledge import HostSignature, SeedOutcome
from esper.leyline.lifecycle import never_blends
from esper.leyline.trials import FINISHED
from esper.nissa import TelemetryHub, record
from esper.seeding import run_seeds, seed_everything
from esper.simic.build import PolicyCheckpointError, load_policy, policy_training
from esper.simic.env import task_episode
from esper.study.checks import (
    check_fits,
    check_out,
    check_same_config,
    check_sinks,
    load_data,
    set_threads,
    warn_slow_precision,
    warn_whole_splits,
)
from esper.study.ledger import SeedLedger
from esper.study.run import Policy, Recorder, read_policy
from esper.tamiyo import (
    Controller,
    HeuristicConfig,
    HeuristicTamiyo,
    PeriodicConfig,
    PeriodicController,
    RandomController,
    StaticController,
)
from esper.tamiyo.strategies import blueprint_sizes
from esper.tasks import TASKS, resolve_training
from esper.tolaria.engine import evaluate
from esper.tolaria.episode import Episode
from esper.tolaria.flops import step_flops

logger = logging.getLogger(__name__)


STATE_KEYS = frozenset(
    {"episode", "controller", "elapsed", "policy_round", "flops", "best", "ledger"}
)
"""What a growth run's checkpoint state must hold (``GrowthRunner._state``; its ``config``, the
configuration it ran with, is checked when present: older checkpoints lack it)."""


@dataclass(frozen=True)
class GrowthRun:
    """The configuration of a growth run: static, heuristic, eval, random or periodic (saved as
    ``config.json``).

    Attributes:
        training: task, host training and slots.
        seed: run seed: host and seed initialization, the data order, and the random
            controller's own generator.
        policy: eval only: the PPO run directory whose policy controls growth.
        periodic: periodic only: the growth schedule.
        heuristic: heuristic only: its rules, blueprint selector and orchestration strategy.
        knowledge: the knowledge store the run's seed outcomes go to, a SQLAlchemy URL
            (sqlite:///PATH or postgresql+psycopg://...; None: $ESPER_KNOWLEDGE, else
            knowledge.sqlite in the user cache). A store that fails costs a warning, never the
            run: the outcomes stay in outcomes.json for esper knowledge import.
        telemetry: what the run logs.
    """

    training: Annotated[HostTraining, tyro.conf.OmitArgPrefixes]
    seed: int = 0
    policy: str | None = None
    periodic: PeriodicConfig = field(default_factory=PeriodicConfig)
    heuristic: Annotated[HeuristicConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=HeuristicConfig
    )
    knowledge: str | None = None
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)

    def __post_init__(self) -> None:
        check_sections(self)
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.knowledge is not None:
            from esper.nissa.knowledge import parse_url

            parse_url(self.knowledge)  # a malformed URL or scheme fails before anything runs

    def never_grows(self, mode: str, epochs: int, settable: bool = True) -> str | None:
        """Why a ``mode`` run of ``epochs`` epochs can never grow (a heuristic run too short for
        its rules, a periodic one shorter than its period, an eval too short for a seed to
        blend), or None.
        ``settable``: whether the heuristic's rules can be changed (not in a study)."""
        if mode == "heuristic":
            return self.heuristic.never_grows(epochs, settable)
        if mode == "periodic":
            return self.periodic.never_grows(epochs)
        if mode == "eval":  # a policy germinates when it likes; a seed must blend to count
            return never_blends(epochs, self.training.auto_advance)
        return None


HEURISTIC_FIELDS = frozenset(f.name for f in fields(HeuristicConfig))
PERIODIC_FIELDS = frozenset(f"periodic.{f.name}" for f in fields(PeriodicConfig))
GROWTH_FIELDS = ("slots", "shapley", "auto_advance", "seed_lr", "knowledge")
"""The settings a static run refuses: it grows nothing."""


def unread_settings(mode: str) -> tuple[str, ...]:
    """The top-level settings of ``GrowthRun`` a ``mode`` run does not read (``check_mode``
    refuses them given)."""
    unread = {
        "policy": mode != "eval",
        "periodic": mode != "periodic",
        "heuristic": mode != "heuristic",
        "knowledge": mode == "static",
    }
    return tuple(name for name, skipped in unread.items() if skipped)


def check_mode(mode: str, config: GrowthRun, named: frozenset[str] = frozenset()) -> None:
    """Settings that only some modes read: a static run grows nothing, only eval has a policy,
    only periodic a schedule. A setting counts as given when its value differs from the default
    or when it is ``named`` (the fields whose flags the command line gives, e.g.
    ``plateau_patience``, ``periodic.period``): ``static --plateau-patience 3`` names a knob
    that does nothing there even at its default.

    Raises:
        UserError: naming the setting the mode does not take.
    """
    if mode == "eval" and config.policy is None:
        raise UserError("eval needs --policy RUN")
    if mode != "eval" and (config.policy is not None or "policy" in named):
        raise UserError(f"{mode} runs take no policy (--policy, or policy in a config file)")
    if mode != "periodic" and (config.periodic != PeriodicConfig() or named & PERIODIC_FIELDS):
        raise UserError(f"{mode} runs take no periodic settings; they are for esper periodic")
    if mode != "heuristic" and (config.heuristic != HeuristicConfig() or named & HEURISTIC_FIELDS):
        raise UserError(f"{mode} runs take no heuristic settings; they are for esper heuristic")
    if mode == "heuristic":
        _check_preference(config.heuristic, config.training.task)
    if config.heuristic.needs_shapley and not config.training.shapley:
        raise UserError(
            f"strategy {config.heuristic.strategy!r} prunes by Shapley value: add --shapley"
        )
    if mode == "static":
        t = config.training
        changed = {
            "slots": t.slots != HostTraining(t.task).slots,
            "shapley": t.shapley,
            "auto_advance": t.auto_advance,
            "seed_lr": t.seed_lr not in (None, t.lr),  # a resolved config has seed_lr=lr
            "knowledge": config.knowledge is not None,
        }
        given = [name for name in GROWTH_FIELDS if changed[name] or name in named]
        if given:
            switch = {"shapley", "auto_advance"}  # given as --no-shapley too
            flags = ", ".join(
                f"--{'[no-]' * (name in switch)}{name.replace('_', '-')}" for name in given
            )
            keys = ", ".join(name if name == "knowledge" else f"training.{name}" for name in given)
            raise UserError(f"a static run grows nothing; drop {flags} ({keys} in a config file)")


def _check_preference(heuristic: HeuristicConfig, task: str) -> None:
    """A ``blueprint_preference`` names at least one blueprint the task's host offers: else it
    orders nothing. (Naming others too is allowed: one list may serve CNN and transformer tasks,
    as the default does.)

    Raises:
        UserError: naming the host's blueprints.
    """
    if task not in TASKS:
        return  # an unknown task is refused where it is resolved
    kind = TASKS[task].host_kind
    offered = blueprint_registry.names(kind)
    preference = heuristic.blueprint_preference
    if not any(b in offered for b in preference):
        raise UserError(
            f"blueprint_preference {list(preference)} names none of the blueprints the "
            f"{kind.value} host of task {task!r} offers: {', '.join(offered)}"
        )


@dataclass(frozen=True)
class EpochRow:
    """One row of ``metrics.csv`` (its columns are these fields)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    params: int


def make_controller(
    mode: str,
    config: GrowthRun,
    episode: Episode,
    hub: TelemetryHub,
    policy: dict[str, Any] | None,
    priors: Sequence[SeedOutcome] = (),
) -> Controller:
    """The controller of ``mode`` (eval: the ``policy`` state of a PPO run's checkpoint, its
    decisions logged when NORMAL; heuristic: a bandit selector starts from ``priors``,
    ``selector_priors``)."""
    if mode == "static":
        return StaticController()
    if mode == "heuristic":
        return _heuristic(config, episode, priors)
    if mode == "random":
        return RandomController(episode.topology, config.seed, config.training.auto_advance)
    if mode == "periodic":
        return PeriodicController(config.periodic)
    assert policy is not None
    try:
        controller = load_policy(policy, episode.topology, config.training.auto_advance)
    except PolicyCheckpointError as err:
        raise UserError(f"--policy {config.policy!r}: {err}") from err
    if TelemetryLevel.parse(config.telemetry.level).value >= PolicyDecision.level.value:
        controller.emit = hub.emit
    return controller


def _bandit(mode: str, config: GrowthRun) -> bool:
    """Whether the run's controller is the heuristic with a bandit selector (the rotation
    neither learns nor draws)."""
    return mode == "heuristic" and config.heuristic.selector != "rotation"


def _trained(policy: Policy) -> dict[str, Any]:
    """What ``meta.json`` records of how an eval's policy was trained, beside its run and
    round: its task and its run's planned rounds (None where its ``config.json`` says none)."""
    try:
        planned = record.read_config(policy.path).get("ppo", {}).get("rounds")
    except record.RunRecordError:  # (read_policy read its checkpoint; eval notes read this)
        planned = None
    task = policy_training(policy.state).task
    return {"task": task, "rounds_planned": planned if type(planned) is int else None}


def _with_store(mode: str, config: GrowthRun, resume: Path | None) -> GrowthRun:
    """``config`` naming the store a new run records in (``_recorded_store``); a malformed
    default store is said now (a bandit reads the store now: it warns when it does)."""
    if resume is None and (config.knowledge is not None or _bandit(mode, config)):
        config = replace(config, knowledge=_recorded_store(config.knowledge))
    if mode != "static" and not _bandit(mode, config) and config.knowledge is None:
        _check_default_store()
    return config


def _recorded_store(url: str | None) -> str | None:
    """The store a new run names in its ``config.json`` (``knowledge.recorded_url``): a
    relative SQLite path followed the working directory of a resume, and a resume without
    ``$ESPER_KNOWLEDGE`` recorded its outcomes in another store than its priors came from.

    Raises:
        UserError: the URL cannot be made absolute.
    """
    from esper.nissa.knowledge import KnowledgeURLError, recorded_url  # SQLAlchemy: loaded

    try:
        return recorded_url(url)
    except KnowledgeURLError as err:
        raise UserError(str(err)) from err


def selector_priors(mode: str, config: GrowthRun, host: HostSignature) -> list[SeedOutcome]:
    """A heuristic's bandit selector's priors: the knowledge store's outcomes on ``host``
    (none for another controller)."""
    if not _bandit(mode, config):
        return []
    from esper.nissa.knowledge import outcomes_for  # SQLAlchemy: only when used

    return outcomes_for(config.knowledge, host, _warn)


def _heuristic(
    config: GrowthRun, episode: Episode, priors: Sequence[SeedOutcome]
) -> HeuristicTamiyo:
    """The heuristic with its selector's priors (a bandit's only) and blueprint sizes (the
    specialize strategy's only)."""
    settings = config.heuristic
    sizes = None
    if settings.strategy == "specialize":
        sizes = blueprint_sizes(episode.initial_model.host.injection_points)
    return HeuristicTamiyo(settings, config.seed, list(priors), sizes)


class GrowthRunner:
    """A prepared run: data, episode and controller, built before any file is written.

    Args:
        mode: static, heuristic, eval, random or periodic.
        config: the run's configuration.
        out: a new run's directory (None: ``runs/<task>-<mode>-<time>``).
        resume: the directory of an interrupted run to continue instead.
        device: where the host trains (None: the CPU; a study trial given a GPU uses it).
        policy: an eval's policy as its caller read it to check it (None: ``config.policy``
            read now); the run records and runs this read.
    """

    def __init__(
        self,
        mode: str,
        config: GrowthRun,
        out: Path | None = None,
        resume: Path | None = None,
        device: torch.device | None = None,
        policy: Policy | None = None,
    ) -> None:
        training = set_threads(_resolved(config.training), resume)
        self.mode = mode
        self.config = _with_store(mode, replace(config, training=training), resume)
        self.threads = torch.get_num_threads()
        seed_everything(config.seed)
        check_sinks(config.telemetry)
        check_out(out, resume)  # before the data loads: bad input fails at once
        data = load_data(training, resume)
        warn_whole_splits(training, data)
        self.data = data.receipt()  # what meta.json records
        device = device or torch.device("cpu")
        warn_slow_precision(training, device.type == "cpu")
        if device.type == "cpu":
            check_fits(training, data)
        hub = TelemetryHub("", [], TelemetryLevel.parse(config.telemetry.level))
        try:
            self.episode = task_episode(training, data, config.seed, device, hub.emit, hub.progress)
        except ValueError as err:  # e.g. slots the task's host lacks
            raise UserError(str(err)) from err
        if policy is None and config.policy is not None:
            policy = read_policy(Path(config.policy))
        model = self.episode.initial_model
        host = HostSignature(
            training.task, self.episode.topology.value, model.host.config.width,
            model.host_param_count,
        )  # fmt: skip
        priors = self._read_priors(host, resume)
        state = None if policy is None else policy.state
        self.controller = make_controller(mode, self.config, self.episode, hub, state, priors)
        # The PPO run may train on after this eval started, or another run take its place; a
        # resume must use the same policy: the same run (its id) at the same round.
        self.policy_round = None if policy is None else policy.rounds
        self.policy_run = None if policy is None else policy.meta.run_id
        self.policy_trained = None if policy is None else _trained(policy)
        self.elapsed = 0.0
        self.flops = 0.0  # training FLOPs so far (``_count_flops``)
        self.best: bytes | None = None  # the model of the best validation epoch so far
        self.episode.on_validated = self._keep_if_best
        self.test: record.TestMetrics | None = None  # read once, when the run ends
        self.final_val: float | None = None  # the final model's validation accuracy, then too
        self.ledger = SeedLedger("", host)
        self.recorder = Recorder.open(
            mode, self.config, out, resume, EpochRow, self._meta, hub, self._state
        )
        self.ledger.run_id = self.recorder.run_id
        if self.recorder.checkpoint is not None:
            with self.recorder.releasing():
                self._restore(self.recorder.state())

    def _read_priors(self, host: HostSignature, resume: Path | None) -> list[SeedOutcome]:
        """A bandit selector's priors (``selector_priors``); ``priors`` is what ``meta.json``
        records of them, ``priors_elsewhere`` the store's outcomes of the task it does not learn
        from (another width or topology) where it found none of its own."""
        # a resume's selector statistics come from its checkpoint, priors included: the store
        # is not read (a store unusable by then warned "starting without" them, untrue)
        priors = [] if resume is not None else selector_priors(self.mode, self.config, host)
        self.priors = _priors_receipt(self.config, priors)
        self.priors_elsewhere: str | None = None
        if not priors and resume is None and _bandit(self.mode, self.config):
            from esper.nissa.knowledge import elsewhere

            self.priors_elsewhere = elsewhere(self.config.knowledge, host)
        return priors

    def never_grows(self) -> str | None:
        """Why this run can never germinate a seed (``GrowthRun.never_grows``), or None."""
        return self.config.never_grows(self.mode, self.episode.max_epochs)

    def _meta(self, run_id: str) -> record.RunMeta:
        drawing = self.mode == "random" or _bandit(self.mode, self.config)
        seeds = run_seeds(self.config.seed, drawing=drawing)
        policy = None
        if self.policy_run is not None:
            path, run, at = self.config.policy, self.policy_run, self.policy_round
            policy = {"path": path, "run_id": run, "round": at, **(self.policy_trained or {})}
        threads, data = self.threads, self.data
        return record.run_meta(
            run_id, self.mode, seeds, threads, sys.argv, data, policy, self.priors
        )

    def _restore(self, state: Any) -> None:
        where = f"cannot resume {str(self.recorder.directory)!r}"
        if not isinstance(state, dict) or not state.keys() >= STATE_KEYS:
            raise UserError(
                f"{where}: its checkpoint holds no growth run's state (one with "
                f"{', '.join(sorted(STATE_KEYS))}); was it written by another command?"
            )
        if "config" in state:  # (checkpoints from before it was recorded have none)
            try:
                ran = config_dict(override(GrowthRun(HostTraining("")), state["config"]))
            except (ValueError, TypeError) as err:
                raise UserError(f"{where}: its checkpoint's configuration: {err}") from err
            check_same_config(self.recorder.directory, ran, config_dict(self.config))
        if state.get("policy_run", self.policy_run) != self.policy_run:  # older: unrecorded
            raise UserError(
                f"{where}: it ran the policy of PPO run {state['policy_run']}; "
                f"{self.config.policy!r} now holds run {self.policy_run}; put that run back "
                "there, or start a new eval"
            )
        if state["policy_round"] != self.policy_round:
            raise UserError(
                f"{where}: it ran the policy of round {state['policy_round']} of "
                f"{self.config.policy!r}, which is now at round {self.policy_round}; start a "
                "new eval"
            )
        try:
            self.episode.load_state_dict(state["episode"])
            self.controller.load_state_dict(json.loads(state["controller"]))
            self.elapsed = float(state["elapsed"])
            self.flops = float(state["flops"])
            self.best = state["best"]
            self.ledger.load_state_dict(state["ledger"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise UserError(f"{where}: {err}") from err
        self.recorder.check_step(self.epoch, self.config.training.episode_length(), "epoch")

    def _state(self) -> dict[str, Any]:
        return {
            "config": config_dict(self.config),
            "episode": self.episode.state_dict(),
            "controller": json.dumps(self.controller.state_dict()),
            "elapsed": self.elapsed,
            "policy_round": self.policy_round,
            "policy_run": self.policy_run,
            "flops": self.flops,
            "best": self.best,
            "ledger": self.ledger.state_dict(),
        }

    @property
    def epoch(self) -> int:
        """Epochs trained so far."""
        return self.episode.epoch

    def run(self, label: str = "") -> str:
        """Step the episode to its end, committing every epoch; return the final status.

        Raises:
            Stop: Ctrl-C or SIGTERM (the last epoch is checkpointed and summarised first).
            UserError: out of disk space (the previous checkpoint is intact).
        """
        recorder, training = self.recorder, self.config.training

        def begin() -> None:
            recorder.start(self.mode, training, self.config.seed, self.config.telemetry)
            recorder.console(label or f"{training.task} {self.mode}", training.episode_length())

        status, _ = recorder.drive(
            self._step,
            lambda: self.epoch > 0 and self.episode.done,
            lambda s, f: self._finish(s),
            self._complete,
            begin=begin,
        )
        return status

    def _complete(self) -> str:
        """The finished run's model, outcomes, test scores and summary; its status."""
        directory = self.recorder.directory
        status = "terminated" if self.episode.trainer.terminated else "completed"
        save_model(self.episode.model, directory / record.MODEL_FILE)
        outcomes = self.ledger.outcomes()
        data = json.dumps([asdict(o) for o in outcomes], indent=1)
        atomic_write(directory / record.OUTCOMES_FILE, data)
        if self.mode != "static":  # a static run grows nothing
            from esper.nissa.knowledge import record_outcomes  # SQLAlchemy: only when used

            record_outcomes(self.config.knowledge, outcomes, _warn)
        self.test = self._test()
        self.final_val = measured(self.episode.trainer.evaluate_validation()[1])
        self._finish(status)
        return status

    def _step(self, held: Callable[[], AbstractContextManager[None]]) -> None:
        """Train one epoch (the first, or after the controller's decision), then commit it.
        Training time counts the epoch, not the host's building (start-up)."""
        if self.epoch == 0:
            self.episode.build()
        started = time.perf_counter()
        if self.epoch == 0:
            self.episode.reset()  # trains the host just built
        else:
            self.episode.step(self.controller.decide(self.episode.observation))
        with held():
            self.elapsed += time.perf_counter() - started
            r = self.episode.last
            params = self.episode.model.active_param_count()
            row = EpochRow(
                r.epoch, r.train_loss, r.train_accuracy, r.val_loss, r.val_accuracy, params
            )
            self._count_flops()
            rollback = self.episode.trainer.rollback
            vanished = None if rollback is None else dict(rollback.vanished)
            self.ledger.observe(r.epoch, r.val_accuracy, self.episode.model.reports(), vanished)
            self.recorder.commit(self.epoch, row, self._state())

    def _keep_if_best(self, accuracy: float) -> None:
        """Keep the model as validated (``Trainer.on_validated``: before the epoch's end moves
        its seeds' α on) when its accuracy is the best so far; a panicked epoch (never given)
        measured the model the governor then discarded."""
        if math.isfinite(accuracy) and accuracy > max(self._val_accuracies(), default=-math.inf):
            self.best = model_bytes(self.episode.model)

    def _val_accuracies(self) -> list[float]:
        """The finite validation accuracies of the recorded epochs."""
        return [r.val_accuracy for r in self.recorder.rows if math.isfinite(r.val_accuracy)]

    def _count_flops(self) -> None:
        """Add the epoch just trained: the FLOPs of one training step (forward, loss, backward;
        ``esper.tolaria.flops``) of the model as it stands after the epoch, times the epoch's
        batches. A seed germinated or pruned within the epoch counts from the next one."""
        trainer = self.episode.trainer
        batches = trainer.config.batches_per_epoch or trainer.stream.batches_per_pass
        n = trainer.config.batch_size
        x, y = self.episode.data.x_train[:n], self.episode.data.y_train[:n]
        # a float: a long study's FLOP count passes 2**53, where int -> JSON readers lose digits
        self.flops += float(step_flops(self.episode.model, x, y)) * batches

    def _test(self) -> record.TestMetrics:
        """The test split, read once: by the final model and by the best validation epoch's."""
        data = self.episode.data
        final_loss, final_accuracy = evaluate(self.episode.model, data.x_test, data.y_test)
        best_loss = best_accuracy = None
        if self.best is not None:
            best = model_from_bytes(self.best, "the best-validation model", data.x_test.device)
            best_loss, best_accuracy = evaluate(best, data.x_test, data.y_test)
        return record.TestMetrics(
            measured(final_loss),
            measured(final_accuracy),
            measured(best_loss),
            measured(best_accuracy),
        )

    def _finish(self, status: str) -> None:
        """Summarise what the last checkpoint holds (on a stop: reload it first)."""
        if status == "interrupted":
            self._restore(self.recorder.state())
        summary = self.summary(status)
        g = summary.growth
        assert g is not None
        finished = RunFinished(
            status,
            g.epochs_completed,
            g.final_val_accuracy,
            g.best_val_accuracy,
            g.param_count,
            g.fossilized,
            g.pruned,
            self.elapsed,
        )
        self.recorder.finish(summary, finished)

    def summary(self, status: str) -> record.RunSummary:
        """The run's summary, from the recorded (checkpointed) epochs only."""
        rows: list[EpochRow] = self.recorder.rows
        # a terminated run's last epoch panicked: it measured a model the governor discarded
        scored = rows[:-1] if status == "terminated" else rows
        finite = [r.val_accuracy for r in scored if math.isfinite(r.val_accuracy)]
        model = self.episode.model if self.epoch > 0 else self.episode.initial_model
        reports = model.reports()
        last = rows[-1] if rows else None
        final = (
            None
            if last is None
            else record.FinalMetrics(
                measured(last.train_loss),
                measured(last.train_accuracy),
                measured(last.val_loss),
                measured(last.val_accuracy),
            )
        )
        growth = record.GrowthSummary(
            epochs_completed=self.epoch,
            epochs_planned=self.config.training.episode_length(),
            final=final,
            best_val_accuracy=max(finite) if finite else None,
            param_count=model.active_param_count(),
            host_param_count=model.host_param_count,
            peak_param_count=max((r.params for r in rows), default=model.active_param_count()),
            train_flops=self.flops,
            fossilized=sum(r.stage is SeedStage.FOSSILIZED for r in reports.values()),
            pruned=self.episode.trainer.pruned_count if self.epoch > 0 else 0,
            seeds=tuple(
                record.SeedSummary(r.slot, r.stage.value, r.blueprint)
                for r in reports.values()
                if r.blueprint is not None
            ),
            test=self.test if status in FINISHED else None,
            final_model_val_accuracy=self.final_val if status in FINISHED else None,
        )
        task, seed = self.config.training.task, self.config.seed
        run_id, seconds = self.recorder.run_id, round(self.elapsed, 3)
        return record.RunSummary(status, self.mode, task, seed, run_id, seconds, None, growth)


def _priors_receipt(config: GrowthRun, priors: Sequence[SeedOutcome]) -> dict[str, Any] | None:
    """``meta.json``'s record of a bandit selector's priors (None: no outcome to start from)."""
    if not priors:
        return None
    from esper.nissa.knowledge import priors_receipt

    return priors_receipt(config.knowledge, priors)


def _check_default_store() -> None:
    """Warn at once where the default store's URL (``$ESPER_KNOWLEDGE``'s) is malformed: the
    run records its outcomes there when it ends, and said so only then."""
    from esper.nissa.knowledge import KnowledgeURLError, default_url, parse_url, url_origin

    try:
        parse_url(default_url())
    except KnowledgeURLError as err:
        _warn(
            f"{err}{url_origin(None)}: this run's seed outcomes will not be recorded in a "
            "store (they stay in its outcomes.json: `esper knowledge import RUN`)"
        )


def _warn(message: str) -> None:
    """A knowledge store that failed: a warning, never the run's failure."""
    logger.warning("%s", message)


def _resolved(training: HostTraining) -> HostTraining:
    try:
        return resolve_training(training)
    except ValueError as err:
        raise UserError(str(err)) from err
