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
import json
import os
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
from esper.cli.progress import Progress
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
from esper.leyline import Observation, SeedStage
from esper.leyline.events import RunFinished, RunStarted
from esper.nissa import JsonlSink, TelemetryHub
from esper.seeding import seed_everything
from esper.tamiyo import Controller, HeuristicTamiyo, SignalTracker, StaticController
from esper.tasks import get_task
from esper.tolaria import EngineConfig, StepResult, Trainer

METRIC_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "params")
DEFAULT_SLOTS = ("early", "mid", "late")


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of one run (saved as ``config.json``).

    Attributes:
        mode: ``"heuristic"`` (growth) or ``"static"`` (the same host, no growth).
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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        if args.task is None:
            raise UserError(f"{args.command} needs --task (or --resume DIR)")
        task = get_task(args.task)
        lr = task.lr if args.lr is None else args.lr
        growth = args.command == "heuristic"
        return cls(
            mode=args.command,
            task=task.name,
            seed=args.seed,
            epochs=task.epochs if args.epochs is None else args.epochs,
            batch_size=task.batch_size if args.batch_size is None else args.batch_size,
            batches_per_epoch=args.batches_per_epoch or task.batches_per_epoch,
            val_samples=args.val_samples or task.val_samples,
            lr=lr,
            seed_lr=(args.seed_lr or lr) if growth else lr,
            slots=tuple(args.slots) if growth else DEFAULT_SLOTS,
            data_dir=None if args.data_dir is None else str(args.data_dir),
            download=not args.no_download,
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
        except (OSError, ValueError, TypeError) as err:
            raise UserError(f"cannot read run configuration {str(path)!r}: {err}") from err

    def engine(self) -> EngineConfig:
        return EngineConfig(
            max_epochs=self.epochs,
            batches_per_epoch=self.batches_per_epoch,
            val_samples=self.val_samples,
            host_lr=self.lr,
            seed_lr=self.seed_lr,
        )


# ------------------------------------------------------------------------------------ files


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


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
        try:
            self.model = MorphogeneticModel(host, list(config.slots))
        except ValueError as err:
            raise UserError(str(err)) from err
        self.controller: Controller = (
            HeuristicTamiyo() if config.mode == "heuristic" else StaticController()
        )
        self.tracker = SignalTracker()
        self.blueprints = blueprint_registry.names(host.injection_points[0].topology)
        self.hub = TelemetryHub("", [])
        stream = BatchStream(
            self.data.x_train,
            self.data.y_train,
            config.batch_size,
            config.seed,
            augment=self.data.augment,
        )
        self.trainer = Trainer(self.model, self.data, stream, config.engine(), self._emit)
        self.best: float | None = None

    def _emit(self, event: Any) -> None:
        self.hub.emit(event)

    def step(self) -> StepResult:
        """One step: train + validate (Tolaria), then one controller decision (Tamiyo)."""
        result = self.trainer.train_step()
        signals = self.tracker.update(
            train_loss=result.train_loss,
            train_accuracy=result.train_accuracy,
            val_loss=result.val_loss,
            val_accuracy=result.val_accuracy,
        )
        self.best = signals.best_val_accuracy
        observation = Observation(
            signals, self.model.reports(), self.blueprints, self.config.epochs
        )
        self.trainer.apply(self.controller.decide(observation))
        return result

    # checkpoints ------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        state = {
            "epoch": self.trainer.epoch,
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
        try:
            saved = load_model(directory / "model.pt")
            state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
        except (CheckpointError, OSError, RuntimeError) as err:
            raise UserError(f"cannot resume from {str(directory)!r}: {err}") from err
        if saved.epoch != state["epoch"]:
            raise UserError(
                f"checkpoint in {str(directory)!r} is inconsistent: model at epoch {saved.epoch}, "
                f"trainer at epoch {state['epoch']}"
            )
        restore_state(self.model, capture_state(saved))
        self.trainer.load_state_dict(state["trainer"])
        self.tracker.load_state_dict(json.loads(state["tracker"]))
        self.controller.load_state_dict(json.loads(state["controller"]))

    def summary(self, status: str, result: StepResult | None, seconds: float) -> dict[str, Any]:
        reports = self.model.reports()
        return {
            "status": status,
            "task": self.config.task,
            "mode": self.config.mode,
            "seed": self.config.seed,
            "epochs_completed": self.trainer.epoch,
            "epochs_planned": self.config.epochs,
            "final": None
            if result is None
            else {
                "train_loss": result.train_loss,
                "train_accuracy": result.train_accuracy,
                "val_loss": result.val_loss,
                "val_accuracy": result.val_accuracy,
            },
            "best_val_accuracy": self.best,
            "param_count": self.model.active_param_count(),
            "host_param_count": self.model.host_param_count,
            "fossilized": sum(r.stage is SeedStage.FOSSILIZED for r in reports.values()),
            "pruned": self.trainer.pruned_count,
            "seeds": [
                {"slot": r.slot, "stage": r.stage.value, "blueprint": r.blueprint}
                for r in reports.values()
                if r.blueprint is not None
            ],
            "wall_seconds": round(seconds, 3),
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


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop rows written after the checkpoint we resume from (an interrupted epoch)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= last_epoch]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _default_out(config: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.task}-{config.mode}-{stamp}"


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


def execute(config: RunConfig, out: Path | None, resume: Path | None, label: str = "") -> Path:
    """Run (or resume) one configuration to completion; return its directory.

    Raises:
        UserError: for bad input, before anything is written.
        Interrupted: after an interrupted run was recorded (its last epoch is checkpointed).
    """
    run = Run(config)
    if resume is not None:
        directory = resume
        run.load(directory / "checkpoints")
        _truncate_metrics(directory / "metrics.csv", run.trainer.epoch)
        summary_path = directory / "summary.json"
        summary_path.unlink(missing_ok=True)  # the run is live again
    else:
        directory = out if out is not None else _default_out(config)
        if directory.exists() and any(directory.iterdir()):
            raise UserError(
                f"run directory {str(directory)!r} already exists and is not empty; "
                "choose another --out or continue it with --resume"
            )
        directory.mkdir(parents=True, exist_ok=True)
        _write_json(directory / "config.json", asdict(config))
        _write_json(directory / "meta.json", _meta(config, directory.name))
        with (directory / "metrics.csv").open("w", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=METRIC_FIELDS).writeheader()
    run.hub = TelemetryHub(directory.name, [JsonlSink(directory / "events.jsonl")])
    started = time.perf_counter()
    start_epoch = run.trainer.epoch
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
    result: StepResult | None = None
    progress = Progress(label or f"{config.task} {config.mode}", config.epochs, start_epoch)
    try:
        with (directory / "metrics.csv").open("a", newline="", encoding="utf-8") as metrics:
            writer = csv.DictWriter(metrics, fieldnames=METRIC_FIELDS)
            while not run.trainer.done:
                result = run.step()
                params = run.model.active_param_count()
                with _interrupts_deferred():  # the epoch's row and checkpoint land together
                    writer.writerow(_metrics_row(result, params))
                    metrics.flush()
                    run.save(directory / "checkpoints")
                progress.update(result, params, run.model.reports())
    except KeyboardInterrupt:
        progress.close()
        _finish(run, directory, "interrupted", result, time.perf_counter() - started)
        raise Interrupted(directory) from None
    progress.close()
    _finish(run, directory, "completed", result, time.perf_counter() - started)
    return directory


def _finish(
    run: Run, directory: Path, status: str, result: StepResult | None, seconds: float
) -> None:
    summary = run.summary(status, result, seconds)
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
            seconds,
        )
    )
    run.hub.close()
    _write_json(directory / "summary.json", summary)


def run_command(args: argparse.Namespace) -> int:
    """``esper heuristic`` / ``esper static``."""
    if args.resume is not None:
        given = [
            name
            for name in ("task", "epochs", "out", "data_dir", "batch_size", "lr")
            if getattr(args, name) is not None
        ]
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
        f"{config.mode} {config.task}: val accuracy {final['val_accuracy']:.2f}% "
        f"(best {summary['best_val_accuracy']:.2f}%), {summary['param_count']} params, "
        f"{summary['fossilized']} fossilized, {summary['pruned']} pruned -> {directory}"
    )
    return 0
