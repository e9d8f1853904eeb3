"""Shared builders and independent oracles: hosts and grown models (Kasmina), seed reports,
training signals and observations (Tamiyo, Simic)."""

from __future__ import annotations

import atexit
import dataclasses
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from esper.kasmina import (
    CNNHost,
    CNNHostConfig,
    MorphogeneticModel,
    SegmentedHost,
    TransformerHost,
    TransformerHostConfig,
    blueprint_registry,
)
from esper.leyline import (
    BLENDED_STAGES,
    FORWARD_STAGES,
    Action,
    GateMode,
    Observation,
    Op,
    SeedStage,
    SeedStateReport,
    Topology,
    TrainingSignals,
)
from esper.nissa.record import (
    FinalMetrics,
    GrowthSummary,
    PPOSummary,
    RunSummary,
    SeedSummary,
    write_summary,
)

# One torch thread for the whole session: the test models are tiny, and with the CPU shared by
# other jobs torch's default threads only spin (an epoch measured 6x slower with 2 threads).
torch.set_num_threads(1)

# Runs record their seed outcomes in the knowledge store: the tests' go to a store of their own
# (child processes and Ray workers inherit it), never the user's ~/.cache/esper. Each pytest
# process (the controller and every xdist worker) makes one and removes it when it exits.
_KNOWLEDGE_DIR = Path(tempfile.mkdtemp(prefix="esper-test-knowledge-"))
atexit.register(shutil.rmtree, _KNOWLEDGE_DIR, ignore_errors=True)
os.environ["ESPER_KNOWLEDGE"] = f"sqlite:///{_KNOWLEDGE_DIR / 'knowledge.sqlite'}"

VOCAB = 17


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def cnn_host(**overrides: int) -> CNNHost:
    return CNNHost(CNNHostConfig(**{"base_channels": 4, "input_size": 8, **overrides}))


def transformer_host(**overrides: int) -> TransformerHost:
    kwargs = {
        "vocab_size": VOCAB,
        "block_size": 8,
        "n_embd": 16,
        "n_head": 2,
        "n_layer": 3,
        **overrides,
    }
    return TransformerHost(TransformerHostConfig(**kwargs))


def host_input(host: SegmentedHost, batch: int = 5) -> Tensor:
    if isinstance(host, TransformerHost):
        return torch.randint(0, VOCAB, (batch, host.config.block_size))
    cfg = host.config
    return torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size)


def host_target(host: SegmentedHost, batch: int = 5) -> Tensor:
    if isinstance(host, TransformerHost):
        return torch.randint(0, VOCAB, (batch, host.config.block_size))
    return torch.randint(0, host.config.num_classes, (batch,))


def perturb_seed(model: MorphogeneticModel, slot: str, scale: float = 0.5) -> None:
    """Move a seed off its zero initialization so that it really changes the stream."""
    with torch.no_grad():
        for p in model.seed_parameters(slot):
            p.add_(torch.randn_like(p) * scale)


def grow(
    model: MorphogeneticModel,
    slot: str,
    blueprint: str,
    stage: SeedStage,
    *,
    blend_mode: str = "add",
    alpha: float = 0.5,
    perturb: bool = True,
) -> None:
    """Drive one seed to ``stage`` through the public lifecycle API (permissive gates).

    Only this slot's timers are ticked, so several seeds can be grown into different stages.
    In BLENDING α is ``alpha`` (half-way along a 2-epoch ramp to ``2 * alpha``); HOLDING and
    FOSSILIZED hold α = ``alpha``.
    """
    s = model.slot(slot)
    mode, model.gate_mode = model.gate_mode, GateMode.PERMISSIVE
    try:
        model.germinate(slot, blueprint, blend_mode=blend_mode)
        if perturb:
            perturb_seed(model, slot)
        if stage in (SeedStage.PRUNED, SeedStage.EMBARGOED, SeedStage.RESETTING):
            model.prune(slot)
            if stage is not SeedStage.PRUNED:
                s.step_epoch(model.epoch)
            if stage is SeedStage.RESETTING:
                for _ in range(model.embargo_epochs):
                    s.step_epoch(model.epoch)
        elif stage is not SeedStage.GERMINATED:
            model.advance(slot)  # TRAINING
            if stage is not SeedStage.TRAINING:
                in_blending = stage is SeedStage.BLENDING
                model.set_alpha_target(slot, 2 * alpha if in_blending else alpha, tempo=2)
                model.advance(slot)  # BLENDING
                s.step_epoch(model.epoch)
                if not in_blending:
                    s.step_epoch(model.epoch)
                    model.advance(slot)  # HOLDING
                if stage is SeedStage.FOSSILIZED:
                    model.fossilize(slot)
    finally:
        model.gate_mode = mode
    assert s.stage is stage, (s.stage, stage)


def expected_output(
    model: MorphogeneticModel, x: Tensor, alphas: Mapping[str, float] | None = None
) -> Tensor:
    """Oracle for the model's output written from the stage semantics, not from the slot code.

    Each enabled slot maps ``h`` to ``h + α·g·delta(h)`` when its seed is blended (or when an α
    is given for it), and to ``h`` otherwise. ``g`` is the blend gate (1 without one).
    """
    alphas = dict(alphas or {})
    host = model.host
    h, prev = x, None
    for name in model.order:
        h = host.forward_to_segment(name, h, from_point=prev)
        slot = model.slot(name)
        alpha = alphas.get(name, slot.alpha if slot.stage in BLENDED_STAGES else 0.0)
        if alpha != 0.0:
            assert slot.seed is not None
            gate = slot.gate(h) if slot.gate is not None else 1.0
            h = h + alpha * gate * slot.seed(h)
        prev = name
    assert prev is not None
    return host.forward_from_segment(prev, h)


@pytest.fixture(scope="session")
def recorded_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three real run directories, recorded once per test session; tests must not modify them.

    ``heuristic``: 40 synthetic epochs in which the heuristic germinates, blends, fossilizes and
    prunes seeds; ``static``: the same host and seed without growth (a baseline); ``ppo``: two
    rounds of the tiny PPO preset (two environments, reward components, PPO updates).
    """
    from esper.cli.main import main

    root = tmp_path_factory.mktemp("recorded")
    runs = {mode: root / mode for mode in ("heuristic", "static", "ppo")}
    for mode in ("heuristic", "static"):
        args = [mode, "--task", "synthetic", "--epochs", "40", "--out", str(runs[mode])]
        assert main(args) == 0
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "2", "--out", str(runs["ppo"])]) == 0
    return runs


def spike_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation losses spike from epoch 6 on, so the governor panics in epoch 7 (the second
    spiking epoch, ``spike_patience`` 2), which measures a made-up 99 % (the model the governor
    then discards)."""
    from esper.tolaria import Trainer

    validate = Trainer._validate

    def spiking(self: Trainer) -> tuple[float, float]:
        loss, accuracy = validate(self)
        if self.epoch >= 5:
            return loss * 1e3, (99.0 if self.epoch == 6 else accuracy)
        return loss, accuracy

    monkeypatch.setattr(Trainer, "_validate", spiking)


@pytest.fixture
def spiked_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A static synthetic run the governor terminated in epoch 7 (``spike_validation``)."""
    from esper.cli.main import main

    run = tmp_path / "spiked"
    args = ["static", "--task", "synthetic", "--epochs", "10", "--batches-per-epoch", "2"]
    with monkeypatch.context() as patched:
        spike_validation(patched)
        assert main([*args, "--val-samples", "128", "--out", str(run)]) == 0
    return run


# ------------------------------------------------------------------ reports and observations

SLOTS = ("early", "mid", "late")
CNN_BLUEPRINTS = blueprint_registry.names(Topology.CNN)


def seed_report(
    slot: str,
    stage: SeedStage = SeedStage.DORMANT,
    blueprint: str | None = None,
    *,
    alpha: float = 0.0,
    alpha_target: float = 1.0,
    epochs: int = 0,
    contribution: float | None = None,
    shapley: float | None = None,
    ratio: float | None = None,
    healthy: bool | None = None,
    seed_params: int = 0,
    host_params: int = 1000,
) -> SeedStateReport:
    """A seed report; a seed outside DORMANT holds ``blueprint`` (``norm`` unless given)."""
    if blueprint is None and stage is not SeedStage.DORMANT:
        blueprint = "norm"
    return SeedStateReport(
        slot=slot,
        stage=stage,
        blueprint=blueprint,
        blend_mode=None,
        alpha=alpha,
        alpha_target=alpha_target,
        epochs_in_stage=epochs,
        counterfactual_contribution=contribution,
        shapley_value=shapley,
        seed_gradient_norm_ratio=ratio,
        gradient_healthy=healthy,
        seed_param_count=seed_params,
        host_param_count=host_params,
    )


def training_signals(**overrides: object) -> TrainingSignals:
    """Signals of step 5 with a distinct value in every field; ``overrides`` replace fields."""
    signals = TrainingSignals(
        epoch=5,
        train_loss=0.9,
        train_accuracy=65.0,
        val_loss=1.0,
        val_accuracy=60.0,
        loss_delta=-0.1,
        accuracy_delta=1.0,
        best_val_accuracy=60.0,
        plateau_epochs=2,
        host_stabilized=True,
        loss_history=(1.2, 1.1, 1.0),
        accuracy_history=(50.0, 55.0, 60.0),
        slots=(),
        best_slot=None,
        worst_slot=None,
    )
    return dataclasses.replace(signals, **overrides)  # type: ignore[arg-type]


def observation(
    reports: Mapping[str, SeedStateReport] | Sequence[SeedStateReport] = (),
    *,
    enabled: Sequence[str] = SLOTS,
    blueprints: tuple[str, ...] = CNN_BLUEPRINTS,
    max_epochs: int = 30,
    **signals: object,
) -> Observation:
    """An observation with ``training_signals(**signals)``.

    A mapping of reports is used as given (its order kept); a sequence is completed with a
    DORMANT report for every other slot of ``enabled`` and keyed by slot.
    """
    if isinstance(reports, Mapping):
        table = dict(reports)
    else:
        given = {r.slot: r for r in reports}
        table = {s: given.get(s, seed_report(s)) for s in enabled}
    return Observation(training_signals(**signals), table, blueprints, max_epochs)


def growth_summary(run_id: str = "run-a", **overrides: Any) -> RunSummary:
    """A heuristic run's summary (``overrides`` replace its top-level fields)."""
    growth = GrowthSummary(
        epochs_completed=3,
        epochs_planned=5,
        final=FinalMetrics(0.5, 81.0, 0.7, None),  # None: not measured (NaN)
        best_val_accuracy=77.5,
        param_count=1200,
        host_param_count=1000,
        peak_param_count=1300,
        train_flops=2.5e9,
        fossilized=1,
        pruned=2,
        seeds=(SeedSummary("mid", "FOSSILIZED", "conv_light"),),
        test=None,
        final_model_val_accuracy=None,
    )
    values: dict[str, Any] = {
        "status": "interrupted",
        "mode": "heuristic",
        "task": "synthetic",
        "seed": 7,
        "run_id": run_id,
        "wall_seconds": 12.5,
        "failure": None,
        "growth": growth,
    }
    return RunSummary(**(values | overrides))


def ppo_summary(run_id: str = "run-a") -> RunSummary:
    """A failed PPO run's summary."""
    ppo = PPOSummary(2, 4, 640, 1.25, 1.5, None)
    return RunSummary("failed", "ppo", "synthetic", 0, run_id, 3.0, "no episode", ppo=ppo)


def write_run(directory: Path, summary: RunSummary | None, mode: str = "heuristic") -> Path:
    """A run directory written through the run record's writers: ``config.json``,
    ``meta.json``, an event log that starts with ``RunStarted`` and, when given, ``summary``
    (whose mode, task, seed and planned epochs the log then starts with)."""
    from esper.leyline.events import RunStarted
    from esper.nissa import JsonlSink, TelemetryHub
    from esper.nissa.record import CONFIG_FILE, EVENTS_FILE, META_FILE, run_meta, write_json

    mode = mode if summary is None else summary.mode
    task, seed = ("synthetic", 7) if summary is None else (summary.task, summary.seed)
    epochs = 5 if summary is None or summary.growth is None else summary.growth.epochs_planned
    directory.mkdir(parents=True)
    write_json(directory / CONFIG_FILE, {"mode": mode, "task": task})
    meta = run_meta(directory.name, mode, {"run": seed}, 1, ["esper", mode])
    write_json(directory / META_FILE, meta)
    hub = TelemetryHub(directory.name, [JsonlSink(directory / EVENTS_FILE)])
    hub.emit(RunStarted(directory.name, mode, task, seed, epochs, ("mid",), None))
    hub.close()
    if summary is not None:
        write_summary(directory, summary)
    return directory


# ------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs (256 KiB, or the size given by indirect parametrization), mounted for
    the test and unmounted after it; skipped with the reason where it cannot be mounted."""
    size = getattr(request, "param", "256k")
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)  # -l: a run may hold a file


def apply_action(model: MorphogeneticModel, action: Action) -> None:
    """Apply a controller's action through the model's public lifecycle API (a gate or
    lifecycle refusal raises, failing the test); SET_ALPHA_TARGET is not a scripted op."""
    if action.op is Op.WAIT:
        return
    assert action.slot is not None
    if action.op is Op.GERMINATE:
        assert action.blueprint is not None
        model.germinate(action.slot, action.blueprint)
    elif action.op is Op.ADVANCE:
        model.advance(action.slot)
    elif action.op is Op.PRUNE:
        model.prune(action.slot, action.reason)
    elif action.op is Op.FOSSILIZE:
        model.fossilize(action.slot)
    else:
        raise AssertionError(f"controllers under test never propose {action.op}")


def fabricated_step(
    model: MorphogeneticModel,
    tracker: Any,
    contribution: Callable[[str], float],
    blueprints: Sequence[str],
    max_epochs: int,
) -> Observation:
    """One engine step in Tolaria's order with fabricated measurements: every running seed
    (not fossilized) gets ``contribution(blueprint)`` and a healthy gradient ratio, the epoch
    ends, and the tracker (a ``SignalTracker``) turns fixed metrics into the observation a
    controller decides on."""
    for name in model.order:
        slot = model.slot(name)
        if slot.stage in FORWARD_STAGES and slot.stage is not SeedStage.FOSSILIZED:
            assert slot.blueprint is not None
            slot.contribution = contribution(slot.blueprint)
            slot.gradient_ratio = 1.0
    model.step_epoch()
    signals = tracker.update(
        train_loss=1.0,
        train_accuracy=50.0,
        val_loss=1.0,
        val_accuracy=50.0,
        reports=model.reports(),
    )
    return Observation(signals, model.reports(), tuple(blueprints), max_epochs)


class KeptRecords:
    """A telemetry sink that keeps every record it is given; ``events`` are the event names it
    asks for as an unfiltered sink (none by default)."""

    def __init__(self, events: frozenset[str] = frozenset()) -> None:
        self.events = events
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def unprivileged() -> list[str]:
    """A command prefix under which mode bits bind this process's children: as root, the
    capabilities that ignore them are dropped (``setpriv``, util-linux)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv, so file permissions cannot bind")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def trains_on_after_its_first_read(monkeypatch: pytest.MonkeyPatch, policy: Path) -> list[int]:
    """Make ``policy``'s PPO run commit its next round's checkpoint the moment anything has
    read its last one (as a run training beside an eval's start does); the rounds each read
    got."""
    from esper.nissa import checkpoints
    from esper.study import run as study_run

    read = study_run.read_state
    got: list[int] = []

    def reading(directory: Path, run_id: str, purpose: str = "cannot resume") -> dict[str, Any]:
        state = read(directory, run_id, purpose)
        if directory.resolve() == policy.resolve():
            got.append(state["trainer"]["round"])
            if len(got) == 1:
                trained = {**state, "trainer": {**state["trainer"], "round": got[0] + 1}}
                buffer = io.BytesIO()
                torch.save(trained, buffer)
                step = got[0] + 1
                checkpoints.commit_checkpoint(policy, step, {"state.pt": buffer.getvalue()}, run_id)
        return state

    monkeypatch.setattr(study_run, "read_state", reading)
    return got
