"""One growth or static run: configuration, run directory, the step loop, Ctrl-C and resume.

A run directory holds ``config.json`` (the resolved configuration), ``meta.json`` (git revision,
package versions, seeds, command line), ``events.jsonl`` (one typed event per line),
``metrics.csv`` (one row per epoch), ``checkpoints/`` (model + trainer state after every epoch)
and, once the run stops, ``summary.json``. Everything is validated before the directory is
created, so bad input leaves nothing behind; files are written atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import pickle
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from esper.cli.main import EXIT_INTERRUPTED, UserError
from esper.data import BatchStream, DatasetNotFoundError, load_dataset
from esper.kasmina import (
    CheckpointError,
    MorphogeneticModel,
    blueprint_registry,
    capture_state,
    load_model,
    restore_state,
)
from esper.kasmina import save_model as save_model_file
from esper.leyline import Observation, SeedStage, Topology, ordered_slots
from esper.leyline.events import PolicyDecision, RunFinished, RunStarted, TelemetryLevel
from esper.nissa import JsonlSink, Sink, TelemetryHub, json_safe
from esper.nissa.log import percent
from esper.nissa.sinks import (
    ConsoleSink,
    TensorBoardSetupError,
    TensorBoardSink,
    check_tensorboard,
)
from esper.seeding import seed_everything
from esper.tamiyo import Controller, HeuristicTamiyo, SignalTracker, StaticController
from esper.tamiyo.policy import PolicyController
from esper.tasks import TaskSpec, get_task
from esper.tolaria import EngineConfig, StepResult, Trainer

GROWTH_MODES = ("heuristic", "eval")
"""Modes whose controller may grow the host."""

METRIC_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "params")
DEFAULT_SLOTS = ("early", "mid", "late")


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of one run (saved as ``config.json``).

    Attributes:
        mode: ``"heuristic"`` (growth by rules), ``"eval"`` (growth by a trained PPO policy) or
            ``"static"`` (the same host, no growth).
        task: task preset name.
        seed: run seed: host and seed initialization, and each run's data order.
        epochs: episode length.
        batch_size: training batch size.
        batches_per_epoch: training batches per step (None: a full pass).
        val_samples: validation subset size (None: the whole validation split).
        lr: host learning rate.
        seed_lr: seed learning rate.
        slots: slots the controller may grow in.
        data_dir: dataset directory or text file, if given.
        download: whether a missing dataset may be downloaded.
        policy: the PPO checkpoint (or PPO run directory) an ``eval`` run is controlled by.
        shapley: measure exact Shapley values of the blended seeds at every validation.
        telemetry: telemetry level of the event log (minimal, normal, debug).
        tensorboard: also write TensorBoard scalars to ``tensorboard/`` in the run directory.
    """

    mode: str
    task: str
    seed: int
    epochs: int
    batch_size: int
    batches_per_epoch: int | None
    val_samples: int | None
    lr: float
    seed_lr: float
    slots: tuple[str, ...]
    data_dir: str | None
    download: bool
    policy: str | None = None
    shapley: bool = False
    telemetry: str = "normal"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        """Validate every field (a hand-edited config.json must fail as clearly as a flag)."""
        if self.mode not in (*GROWTH_MODES, "static"):
            raise ValueError(f"mode {self.mode!r} is not one of 'heuristic', 'eval', 'static'")
        if (self.mode == "eval") != isinstance(self.policy, str):
            raise ValueError(
                f"policy must be a checkpoint path exactly for eval runs: {self.policy!r}"
            )
        get_task(self.task)
        ints = {"seed": 0, "epochs": 1, "batch_size": 1}
        ints |= {"batches_per_epoch": 1, "val_samples": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if value is None and name in ("batches_per_epoch", "val_samples"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("lr", "seed_lr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (0 < value < math.inf):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")
        if not self.slots or not all(isinstance(v, str) for v in self.slots):
            raise ValueError(f"slots must be a non-empty list of names, got {self.slots!r}")
        for name in ("download", "shapley", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        TelemetryLevel.parse(self.telemetry)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        if args.task is None:
            raise UserError(f"{args.command} needs --task (or --resume DIR)")
        task = get_task(args.task)
        lr = task.lr if args.lr is None else args.lr
        growth = args.command in GROWTH_MODES
        try:
            return cls._build(args, task, lr, growth)
        except ValueError as err:  # e.g. an unknown or repeated slot name
            raise UserError(str(err)) from err

    @classmethod
    def _build(cls, args: argparse.Namespace, task: TaskSpec, lr: float, growth: bool) -> RunConfig:
        return cls(
            mode=args.command,
            task=task.name,
            seed=0 if args.seed is None else args.seed,
            epochs=task.epochs if args.epochs is None else args.epochs,
            batch_size=task.batch_size if args.batch_size is None else args.batch_size,
            batches_per_epoch=args.batches_per_epoch or task.batches_per_epoch,
            val_samples=args.val_samples or task.val_samples,
            lr=lr,
            seed_lr=(args.seed_lr or lr) if growth else lr,
            slots=ordered_slots(args.slots or DEFAULT_SLOTS) if growth else DEFAULT_SLOTS,
            data_dir=None if args.data_dir is None else str(args.data_dir),
            download=not args.no_download,
            policy=str(args.policy.resolve()) if args.command == "eval" else None,
            shapley=args.shapley if growth else False,
            telemetry=args.telemetry or "normal",
            tensorboard=args.tensorboard,
        )

    @classmethod
    def from_json(cls, path: Path) -> RunConfig:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(cls)}
            if set(data) != known:
                raise ValueError(f"fields {sorted(set(data) ^ known)} differ")
            data["slots"] = tuple(data["slots"])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise UserError(f"cannot read run configuration {str(path)!r}: {err}") from err

    def engine(self) -> EngineConfig:
        return EngineConfig(
            max_epochs=self.epochs,
            batches_per_epoch=self.batches_per_epoch,
            val_samples=self.val_samples,
            host_lr=self.lr,
            seed_lr=self.seed_lr,
            shapley=self.shapley,
        )


# ------------------------------------------------------------------------------------ files


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are meant to be shared
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    """Strict JSON: a value that is not finite is written as null (missing), never NaN."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False)
    _write_atomic(path, text + "\n")


def _git_revision() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed wheel): recorded as null
    return rev + ("-dirty" if dirty else "")


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("esper", "torch", "numpy", "tqdm", "scikit-learn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _meta(config: RunConfig, run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "git_revision": _git_revision(),
        "versions": _versions(),
        "seeds": {
            "run": config.seed,
            "data_order": config.seed,
            "torch_threads": torch.get_num_threads(),
        },
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------------------------ run


def _controller(config: RunConfig, topology: Topology) -> Controller:
    if config.mode == "heuristic":
        return HeuristicTamiyo()
    if config.mode == "static":
        return StaticController()
    from esper.simic.build import PolicyCheckpointError, load_policy

    assert config.policy is not None
    try:
        return load_policy(Path(config.policy), topology)
    except PolicyCheckpointError as err:
        raise UserError(str(err)) from err


class Run:
    """A prepared run: data, model, trainer and controller, ready to step.

    Built entirely before the run directory is touched, so every input error surfaces first.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        task = get_task(config.task)
        seed_everything(config.seed)
        try:
            self.data = load_dataset(
                task.dataset,
                config.data_dir,
                download=config.download,
                progress=sys.stderr.isatty(),
            )
        except (DatasetNotFoundError, ValueError, OSError) as err:
            raise UserError(str(err).splitlines()[0] if str(err) else repr(err)) from err
        host = task.build_host(self.data)
        self.model = MorphogeneticModel(host, list(config.slots))  # _prepare reports ValueError
        topology = host.injection_points[0].topology
        self.controller = _controller(config, topology)
        logged = TelemetryLevel.parse(config.telemetry).value >= PolicyDecision.level.value
        if isinstance(self.controller, PolicyController) and logged:
            self.controller.emit = self._emit  # its decisions, with masks, go to the log
        self.tracker = SignalTracker()
        self.blueprints = blueprint_registry.names(topology)
        self.hub = TelemetryHub("", [])
        stream = BatchStream(
            self.data.x_train,
            self.data.y_train,
            config.batch_size,
            config.seed,
            augment=self.data.augment,
        )
        self.trainer = Trainer(self.model, self.data, stream, config.engine(), self._emit)
        self.elapsed = 0.0  # seconds spent stepping, summed over every session of this run

    def _emit(self, event: Any) -> None:
        self.hub.emit(event)

    def step(self) -> StepResult:
        """One step: train + validate (Tolaria), then one controller decision (Tamiyo)."""
        result = self.trainer.train_step()
        reports = self.model.reports()
        signals = self.tracker.update(
            train_loss=result.train_loss,
            train_accuracy=result.train_accuracy,
            val_loss=result.val_loss,
            val_accuracy=result.val_accuracy,
            reports=reports,
        )
        observation = Observation(signals, reports, self.blueprints, self.config.epochs)
        self.trainer.apply(self.controller.decide(observation))
        return result

    # checkpoints ------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        state = {
            "epoch": self.trainer.epoch,
            "elapsed": self.elapsed,
            "trainer": self.trainer.state_dict(),
            "tracker": json.dumps(self.tracker.state_dict()),
            "controller": json.dumps(self.controller.state_dict()),
        }
        fd, tmp = tempfile.mkstemp(prefix=".state.pt.", dir=directory)
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, directory / "state.pt")
        save_model_file(self.model, directory / "model.pt")  # atomic too

    def load(self, directory: Path) -> None:
        """Continue from the checkpoint in ``directory``.

        Raises:
            UserError: for a missing, unreadable or inconsistent checkpoint.
        """
        try:
            saved = load_model(directory / "model.pt")
            state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
            if saved.epoch != state["epoch"]:
                raise ValueError(f"model at epoch {saved.epoch}, trainer at {state['epoch']}")
            restore_state(self.model, capture_state(saved))
            self.trainer.load_state_dict(state["trainer"])
            self.tracker.load_state_dict(json.loads(state["tracker"]))
            self.controller.load_state_dict(json.loads(state["controller"]))
            self.elapsed = float(state["elapsed"])
        except (
            CheckpointError,
            OSError,
            RuntimeError,
            ValueError,
            KeyError,
            TypeError,
            pickle.UnpicklingError,  # torch.load's answer to a damaged state.pt
        ) as err:
            raise UserError(f"cannot resume from {str(directory)!r}: {err}") from err

    def summary(self, status: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The run's summary; metrics come from the recorded (checkpointed) epochs only."""
        reports = self.model.reports()
        final = rows[-1] if rows else None
        finite = [r["val_accuracy"] for r in rows if math.isfinite(r["val_accuracy"])]
        return {
            "status": status,
            "task": self.config.task,
            "mode": self.config.mode,
            "seed": self.config.seed,
            "epochs_completed": self.trainer.epoch,
            "epochs_planned": self.config.epochs,
            "final": None if final is None else {k: final[k] for k in METRIC_FIELDS[1:-1]},
            "best_val_accuracy": max(finite) if finite else None,
            "param_count": self.model.active_param_count(),
            "host_param_count": self.model.host_param_count,
            "fossilized": sum(r.stage is SeedStage.FOSSILIZED for r in reports.values()),
            "pruned": self.trainer.pruned_count,
            "seeds": [
                {"slot": r.slot, "stage": r.stage.value, "blueprint": r.blueprint}
                for r in reports.values()
                if r.blueprint is not None
            ],
            "wall_seconds": round(self.elapsed, 3),
        }


def _metrics_row(result: StepResult, params: int) -> dict[str, Any]:
    return {
        "epoch": result.epoch,
        "train_loss": result.train_loss,
        "train_accuracy": result.train_accuracy,
        "val_loss": result.val_loss,
        "val_accuracy": result.val_accuracy,
        "params": params,
    }


def _read_metrics(path: Path, last_epoch: int) -> list[dict[str, Any]]:
    """Rows of ``metrics.csv`` up to ``last_epoch``, as numbers (``nan`` where not finite)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = [
            {k: (int(v) if k in ("epoch", "params") else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]
    return [r for r in rows if r["epoch"] <= last_epoch]


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, buffer.getvalue())


def default_out(task: str, mode: str) -> Path:
    """``runs/<task>-<mode>-<time>``: where a run goes without ``--out``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{task}-{mode}-{stamp}"


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block is done, then raise it: a checkpoint is never half-written."""
    pending: list[object] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


class Interrupted(Exception):
    """Ctrl-C stopped a run after its summary and last checkpoint were written."""

    def __init__(self, directory: Path) -> None:
        super().__init__(str(directory))
        self.directory = directory


def _recorded_status(path: Path) -> str | None:
    """The status in a run's summary.json, or None when there is no readable one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    status = data["status"] if isinstance(data, dict) and "status" in data else None
    return status if isinstance(status, str) else None


def _prepare(config: RunConfig) -> Run:
    try:
        return Run(config)
    except (ValueError, KeyError, TypeError) as err:  # e.g. slots the task's host lacks
        raise UserError(str(err)) from err


def new_run_directory(directory: Path) -> Path:
    """Create an empty run directory.

    Raises:
        UserError: ``directory`` is a file, is not empty, or cannot be created.
    """
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--out {str(directory)!r} is a file, not a directory")
    if directory.exists() and any(directory.iterdir()):
        raise UserError(
            f"run directory {str(directory)!r} already exists and is not empty; "
            "choose another --out or continue it with --resume"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create run directory {str(directory)!r}: {err}") from err
    return directory


def require_sinks(tensorboard: bool) -> None:
    """Check, before anything is written, that the asked-for sinks can be built.

    Raises:
        UserError: TensorBoard was asked for without the ``tensorboard`` package.
    """
    if tensorboard:
        try:
            check_tensorboard()
        except TensorBoardSetupError as err:
            raise UserError(str(err)) from err


def run_sinks(directory: Path, tensorboard: bool) -> list[Sink]:
    """A run's level-filtered sinks: TensorBoard if asked (checked by ``require_sinks``), and
    its event log (always). Console progress goes to the hub unfiltered."""
    sinks: list[Sink] = [TensorBoardSink(directory / "tensorboard")] if tensorboard else []
    log = JsonlSink(directory / "events.jsonl")
    if log.cut:
        print(
            f"warning: {log.path} ended in a partial line (the run crashed while writing it); "
            f"cut {len(log.cut)} bytes before continuing",
            file=sys.stderr,
        )
    return [*sinks, log]


def execute(config: RunConfig, out: Path | None, resume: Path | None, label: str = "") -> Path:
    """Run (or resume) one configuration to completion; return its directory.

    Raises:
        UserError: for bad input, before anything is written.
        Interrupted: after an interrupted run was recorded (its last epoch is checkpointed).
    """
    run = _prepare(config)
    require_sinks(config.tensorboard)
    checkpoints = (resume or Path()) / "checkpoints"
    if resume is not None:
        directory = resume
        summary_path = directory / "summary.json"
        if _recorded_status(summary_path) == "completed":
            raise UserError(f"run {str(directory)!r} already completed; nothing to resume")
        run.load(checkpoints)
        rows = _read_metrics(directory / "metrics.csv", run.trainer.epoch)
        _write_metrics(directory / "metrics.csv", rows)  # drop an interrupted epoch's row
        summary_path.unlink(missing_ok=True)  # the run is live again
    else:
        directory = new_run_directory(out or default_out(config.task, config.mode))
        checkpoints = directory / "checkpoints"
        _write_json(directory / "config.json", asdict(config))
        _write_json(directory / "meta.json", _meta(config, directory.name))
        _write_metrics(directory / "metrics.csv", [])
        run.save(checkpoints)  # epoch 0: Ctrl-C in the first epoch can still be resumed
    start_epoch = run.trainer.epoch
    console = ConsoleSink(
        sys.stderr,
        label or f"{config.task} {config.mode}",
        config.epochs,
        start_epoch,
        bar=sys.stderr.isatty(),
    )
    run.hub = TelemetryHub(
        directory.name,
        run_sinks(directory, config.tensorboard),
        TelemetryLevel.parse(config.telemetry),
        unfiltered=[console],
    )
    run.hub.emit(
        RunStarted(
            directory.name,
            config.mode,
            config.task,
            config.seed,
            config.epochs,
            tuple(config.slots),
            start_epoch if resume is not None else None,
        )
    )
    try:
        with (directory / "metrics.csv").open("a", newline="", encoding="utf-8") as metrics:
            writer = csv.DictWriter(metrics, fieldnames=METRIC_FIELDS)
            while not run.trainer.done:
                started = time.perf_counter()
                result = run.step()
                params = run.model.active_param_count()
                with _interrupts_deferred():  # the epoch's row and checkpoint land together
                    run.elapsed += time.perf_counter() - started
                    writer.writerow(_metrics_row(result, params))
                    metrics.flush()
                    run.save(checkpoints)
    except KeyboardInterrupt:
        run.load(checkpoints)  # the record must describe what a resume will continue from
        _finish(run, directory, "interrupted")
        raise Interrupted(directory) from None
    except BaseException:
        run.hub.close()  # an unexpected failure: keep what was logged, release the files
        raise
    _finish(run, directory, "terminated" if run.trainer.terminated else "completed")
    return directory


def _finish(run: Run, directory: Path, status: str) -> None:
    summary = run.summary(status, _read_metrics(directory / "metrics.csv", run.trainer.epoch))
    final = summary["final"]
    run.hub.emit(
        RunFinished(
            status,
            run.trainer.epoch,
            None if final is None else final["val_accuracy"],
            summary["best_val_accuracy"],
            summary["param_count"],
            summary["fossilized"],
            summary["pruned"],
            run.elapsed,
        )
    )
    run.hub.close()
    _write_json(directory / "summary.json", summary)


_RUN_FLAGS = {
    "task": "--task",
    "epochs": "--epochs",
    "seed": "--seed",
    "out": "--out",
    "data_dir": "--data-dir",
    "batch_size": "--batch-size",
    "batches_per_epoch": "--batches-per-epoch",
    "val_samples": "--val-samples",
    "lr": "--lr",
}
_GROWTH_FLAGS = {"slots": "--slots", "seed_lr": "--seed-lr"}
_SWITCHES = {"no_download": "--no-download", "tensorboard": "--tensorboard"}
"""On/off flags a resumed run must not be given (its configuration is recorded)."""


def run_command(args: argparse.Namespace) -> int:
    """``esper heuristic`` / ``esper static``."""
    if args.resume is not None:
        flags = _RUN_FLAGS | (_GROWTH_FLAGS if args.command in GROWTH_MODES else {})
        flags |= {"policy": "--policy"} if args.command == "eval" else {}
        flags |= {"telemetry": "--telemetry"}
        switches = _SWITCHES | ({"shapley": "--shapley"} if args.command in GROWTH_MODES else {})
        given = [flag for name, flag in flags.items() if vars(args)[name] is not None]
        given += [flag for name, flag in switches.items() if vars(args)[name]]
        if given:
            raise UserError(f"--resume continues a run as configured; drop {', '.join(given)}")
        config_path = args.resume / "config.json"
        if not config_path.is_file():
            raise UserError(f"{str(args.resume)!r} is not an Esper run directory (no config.json)")
        config = RunConfig.from_json(config_path)
        if config.mode != args.command:
            raise UserError(f"{str(args.resume)!r} is a {config.mode} run; use esper {config.mode}")
    else:
        config = RunConfig.from_args(args)
    print(f"esper {config.mode}: {json.dumps(asdict(config))}", file=sys.stderr)
    try:
        directory = execute(config, args.out, args.resume)
    except Interrupted as stop:
        print(
            f"\ninterrupted: last epoch checkpointed; continue with: "
            f"esper {config.mode} --resume {stop.directory}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    summary = json.loads((directory / "summary.json").read_text(encoding="utf-8"))
    final = summary["final"]
    print(
        f"{config.mode} {config.task} ({summary['status']}): val accuracy "
        f"{percent(None if final is None else final['val_accuracy'])} "
        f"(best {percent(summary['best_val_accuracy'])}), "
        f"{summary['param_count']} params, {summary['fossilized']} fossilized, "
        f"{summary['pruned']} pruned -> {directory}"
    )
    return 0
