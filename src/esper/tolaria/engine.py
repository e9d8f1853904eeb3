"""The host training engine: one step = one host epoch + validation + counterfactuals.

``Trainer.train_step`` trains ``batches_per_epoch`` batches (a full pass when unset), validates,
measures every running seed's counterfactual contribution with the fused forward, lets the
governor judge the step (rolling back on panic, snapshotting when healthy) and ticks the seeds'
epoch timers. The caller then asks its controller for an action and hands it to ``apply``
(which, with ``HostTraining.auto_advance``, then advances every seed whose next gate passes).
Each trainer owns its data order (its own seeded ``BatchStream``), so results do not depend on
how many trainers run beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina import GateError, LifecycleError, MorphogeneticModel
from esper.kasmina.grouped import groupable, grouped_forward
from esper.kasmina.model import GradientNorms
from esper.leyline import (
    ADVANCE_TO,
    BLENDED_STAGES,
    FORWARD_STAGES,
    SEED_MODULE_STAGES,
    Action,
    Op,
    SeedStage,
)
from esper.leyline.config import HostTraining, measured
from esper.leyline.data import BatchSource, Dataset
from esper.leyline.events import (
    ActionTaken,
    BatchProgress,
    EpochCompleted,
    Event,
    GovernorPanic,
    SeedTransition,
    SlotSnapshot,
)
from esper.tolaria.governor import Governor, GovernorConfig, Panic, Rollback, copied_state
from esper.tolaria.optim import SlotOptimizer, step_optimizers

EVAL_BATCH = 1024
"""Validation batch size: large batches are fastest for no-grad passes and change no result."""

GRADIENT_STATS_EVERY = 4
"""Seed gradient ratios are sampled every 4th batch (always the first): the ratio is a moving
average, ~117 samples per Fashion-MNIST epoch suffice, and measuring every batch cost ~2%."""

PROGRESS_EVERY_S = 0.5
"""A trainer that reports progress does so at most twice a second of wall time: often enough for
a live progress bar, and the check (one clock read per batch) and the report (one read of the
running loss, a device synchronisation on CUDA) cost nothing measurable."""

Emit = Callable[[Event], None]
ReportProgress = Callable[[BatchProgress], None]


@dataclass(frozen=True)
class StepResult:
    """What one step measured."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    panic: Panic | None
    seconds: float


def _loss_and_correct(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy and number of correct predictions (per token for sequences)."""
    logits = out.flatten(0, -2)  # (B, C) or (B·T, V)
    target = y.flatten()
    loss = F.cross_entropy(logits, target, reduction="sum")
    return loss, (logits.argmax(dim=-1) == target).sum()


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in eval mode without gradients.

    Runs in batches of ``EVAL_BATCH``; for sequences every token counts as one prediction. The
    model is left in eval mode, as validation leaves it (training calls ``model.train()``).

    Args:
        model: maps inputs ``(B, ...)`` to logits ``(B, C)`` or ``(B, T, V)``.
        x: inputs ``(N, ...)`` on the model's device.
        y: targets: labels ``(N,)`` or next-token ids ``(N, T)``.

    Returns:
        ``(mean loss, accuracy in percent)`` over all ``N`` samples (``N * T`` tokens).

    Raises:
        ValueError: ``x`` and ``y`` hold different numbers of samples, or none, or (on the
            CPU) a negative label: cross-entropy skips -100 (its ``ignore_index``) while the
            mean counted it, so ignored labels halved a loss.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"evaluate needs equal, non-zero sample counts; x has {len(x)}, y {len(y)}"
        )
    if y.device.type == "cpu" and int(y.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(y.min())}")
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(x), EVAL_BATCH):
            target = y[i : i + EVAL_BATCH]
            loss, hits = _loss_and_correct(model(x[i : i + EVAL_BATCH]), target)
            loss_sum += loss.item()
            correct += int(hits.item())
            count += target.numel()
    return loss_sum / count, 100.0 * correct / count


@dataclass(frozen=True)
class Trained:
    """One trainer's training part of a step, when done outside ``train_step``.

    Attributes:
        loss: mean training loss (NaN when a batch was not finite).
        accuracy: training accuracy in percent (NaN likewise).
        seconds: this trainer's share of the wall time spent training.
    """

    loss: float
    accuracy: float
    seconds: float


def _scored(
    models: Sequence[MorphogeneticModel],
    batches: Sequence[tuple[Tensor, Tensor]],
    grouped: bool,
    autocast: torch.autocast,
) -> tuple[Tensor, Tensor, Tensor]:
    """Each model's training forward on its batch (under ``autocast``), scored in its
    parameters' precision (bfloat16 outputs in float32): the ``(k,)`` summed cross-entropies,
    their means per prediction, and numbers of correct predictions.

    When ``grouped`` (the models, or a set they belong to, are ``groupable``) and the batches
    have one shape, the forward is one grouped computation and so is the loss of all k models:
    a fixed number of operations whatever k (on CUDA, kernel launches). Otherwise each model
    runs and is scored on its own.
    """
    xs = [x for x, _ in batches]
    if grouped and len(models) > 1 and len({x.shape for x in xs}) == 1:
        with autocast:
            out = grouped_forward(models, xs)  # (B, k, classes)
        logits = out.float() if out.dtype == torch.bfloat16 else out
        y = torch.stack([y for _, y in batches], dim=1)  # (B, k)
        losses = F.cross_entropy(logits.movedim(-1, 1), y, reduction="none").sum(dim=0)
        correct = (logits.argmax(dim=-1) == y).sum(dim=0)
        return losses, losses / y.shape[0], correct
    scored = []
    for model, (x, y) in zip(models, batches, strict=True):
        with autocast:
            out = model(x)
        loss, hits = _loss_and_correct(out.float() if out.dtype == torch.bfloat16 else out, y)
        scored.append((loss, loss / y.numel(), hits))
    losses, means, correct = (torch.stack(column) for column in zip(*scored, strict=True))
    return losses, means, correct


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype ``HostTraining.precision`` runs the training forward in under autocast (None:
    float32, no autocast)."""
    return torch.bfloat16 if precision == "bfloat16" else None


def training_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The training forward's ``torch.autocast`` for ``HostTraining.precision`` on ``device``:
    ``autocast_dtype``'s, or disabled (float32)."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def checks_each_batch(device: torch.device) -> bool:
    """Whether the epoch loop checks every batch's loss for finiteness: on a CPU, where it is
    free; not on CUDA, where reading the flag would synchronise with the host every batch."""
    return device.type != "cuda"


class _Tally:
    """One trainer's running totals over an epoch (device tensors: no synchronisation)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.count = 0
        self.batches = 0  # optimizer steps taken
        self.norms: list[GradientNorms] = []  # recorded at the end of the epoch, in order
        self.stopped = False  # a non-finite loss ended this trainer's epoch

    def mean_loss(self) -> float | None:
        """The mean training loss so far (None before the first batch or after a non-finite
        one)."""
        loss = self.loss.item() / self.count if self.count else math.nan
        return None if self.stopped or not math.isfinite(loss) else loss

    def result(self, model: MorphogeneticModel, seconds: float) -> Trained:
        for norms in self.norms:
            model.record_gradient_norms(norms)
        loss = self.loss.item() / max(self.count, 1)
        if self.stopped or not math.isfinite(loss):
            return Trained(math.nan, math.nan, seconds)
        return Trained(loss, 100.0 * self.correct.item() / self.count, seconds)


def _train_batch(
    trainers: Sequence[Trainer],
    tallies: Sequence[_Tally],
    measure: bool,
    check: bool,
    grouped: bool,
    autocast: torch.autocast,
) -> None:
    """One batch for each trainer: forward together (grouped when ``grouped``) under
    ``autocast``, the losses at least in float32, one backward, the optimizers step together, the
    epoch's totals added."""
    batches = [t.stream.next_batch() for t in trainers]
    for t in trainers:
        t.optimizer.zero_grad()
    losses, means, correct = _scored([t.model for t in trainers], batches, grouped, autocast)
    finite = means.isfinite().tolist() if check else [True] * len(trainers)
    kept = [j for j, ok in enumerate(finite) if ok]
    rows = slice(None) if len(kept) == len(trainers) else kept  # no index op when all are kept
    if kept:
        # Parameters are disjoint: each trainer's gradient is that of its own mean loss.
        means[rows].sum().backward()  # type: ignore[no-untyped-call]
    for j, (t, tally) in enumerate(zip(trainers, tallies, strict=True)):
        if j not in kept:  # no step on a poisoned batch (and no gradient left from it)
            tally.stopped = True
            t.optimizer.zero_grad()
            continue
        if measure:
            measured = t.model.gradient_norms()
            if measured is not None:
                tally.norms.append(measured)
        tally.count += batches[j][1].numel()
        tally.batches += 1
    if kept:  # one multi-tensor call per total (on CUDA one kernel launch each, whatever k)
        live = [tallies[j] for j in kept]
        torch._foreach_add_([tally.loss for tally in live], list(losses.detach()[rows].unbind()))
        torch._foreach_add_([tally.correct for tally in live], list(correct[rows].unbind()))
    step_optimizers([trainers[j].optimizer for j in kept])


def train_together(
    trainers: Sequence[Trainer], clock: Callable[[], float] = time.monotonic
) -> list[Trained]:
    """Train one epoch of every trainer, in lockstep, batch by batch.

    Each trainer draws its own batches and keeps its own optimizer, step counts and gradient
    statistics; the forward and backward passes run as one grouped computation when the models
    allow it (``esper.kasmina.grouped``), so a trainer's results do not depend on the others
    beyond floating-point summation order. A trainer whose loss turns non-finite stops at that
    batch (no optimizer step; its governor then decides), as it would alone. On CPU that check
    runs every batch; on CUDA, where it would synchronise with the host, once at the end of the
    epoch (a non-finite epoch is rolled back by the governor either way).

    Trainers given a ``progress`` callable get a ``BatchProgress`` at most every
    ``PROGRESS_EVERY_S`` seconds of ``clock`` (wall time) while the epoch trains.

    Returns:
        Each trainer's loss and accuracy (NaN after a non-finite loss) and share of the time.
    """
    started = time.perf_counter()
    for t in trainers:
        t.model.train()
    device = trainers[0].model.host_parameters()[0].device
    precisions = {t.config.precision for t in trainers}
    if len(precisions) > 1:
        raise ValueError(f"trainers of one epoch must share a precision, got {sorted(precisions)}")
    autocast = training_autocast(device, precisions.pop())
    tallies = [_Tally(device) for _ in trainers]
    check = checks_each_batch(device)
    # Models change shape only between epochs, and any two of a groupable set are groupable:
    # asked once here instead of every batch (it walks every module; ~3 % of a PPO round).
    grouped = groupable([t.model for t in trainers])
    lengths = [t.config.batches_per_epoch or t.stream.batches_per_pass for t in trainers]
    reporting = [  # (where to, epoch, tally, batches in the epoch) of each reporting trainer
        (t.progress, t.epoch + 1, tally, n)
        for t, tally, n in zip(trainers, tallies, lengths, strict=True)
        if t.progress is not None
    ]
    begun = clock()
    report_at = begun + PROGRESS_EVERY_S
    for i in range(max(lengths)):
        live = [j for j, tally in enumerate(tallies) if not tally.stopped and i < lengths[j]]
        if not live:
            break
        measure = i % GRADIENT_STATS_EVERY == 0
        batch_trainers = [trainers[j] for j in live]
        live_tallies = [tallies[j] for j in live]
        _train_batch(batch_trainers, live_tallies, measure, check, grouped, autocast)
        if reporting and (now := clock()) >= report_at:
            report_at = now + PROGRESS_EVERY_S
            for report, epoch, tally, n in reporting:
                report(BatchProgress(epoch, tally.batches, n, tally.mean_loss(), now - begun))
    share = (time.perf_counter() - started) / len(trainers)
    return [tally.result(t.model, share) for t, tally in zip(trainers, tallies, strict=True)]


class Trainer:
    """Trains one growing model on one dataset.

    Args:
        model: the model (its seeds are driven through ``apply``).
        data: the dataset (validation split and number of classes are read from it).
        stream: this trainer's own seeded stream of training batches.
        config: host-training settings, resolved against the task
            (``esper.tasks.resolve_training``).
        emit: where telemetry events go.
        governor: the governor's thresholds.
        progress: where ``BatchProgress`` goes while an epoch trains (None: nowhere; only
            single-model runs show it).
    """

    def __init__(
        self,
        model: MorphogeneticModel,
        data: Dataset,
        stream: BatchSource,
        config: HostTraining,
        emit: Emit,
        governor: GovernorConfig | None = None,
        progress: ReportProgress | None = None,
    ) -> None:
        if not config.resolved:
            raise ValueError("Trainer needs host training resolved against its task")
        assert config.lr is not None and config.seed_lr is not None
        self.model = model
        self.data = data
        self.config = config
        self.emit, self.progress = emit, progress
        self.stream = stream
        self.max_epochs = config.episode_length()
        self.optimizer = SlotOptimizer(model, config.lr, config.seed_lr, config.weight_decay)
        self.governor = Governor(
            governor or GovernorConfig(), chance_loss=math.log(data.num_classes)
        )
        n_val = len(data.x_val) if config.val_samples is None else config.val_samples
        self._x_val, self._y_val = data.x_val[:n_val], data.y_val[:n_val]
        self.epoch = model.epoch  # a model may arrive already trained for some epochs
        self.pruned_count = 0  # seeds pruned so far, by the controller or by a rollback
        self.terminated = False  # a governor panic ends the episode
        self.rollback: Rollback | None = None  # the panic's rollback, which ended the episode
        self.on_validated: Callable[[float], None] | None = None
        """Called with a healthy epoch's validation accuracy (no panic) while the model is as
        validated: before the epoch's end moves its seeds' lifecycle on (α, timers), after
        which the model differs from the one the accuracy measured (``Episode.on_validated``)."""
        self.governor.snapshot(model, self.optimizer)  # the untrained model is a safe fallback

    @property
    def done(self) -> bool:
        """The episode is over: all epochs trained, or terminated by a governor panic."""
        return self.terminated or self.epoch >= self.max_epochs

    # ------------------------------------------------------------------------------ one step

    def _val_batches(self) -> list[tuple[Tensor, Tensor]]:
        n = len(self._x_val)
        return [
            (self._x_val[i : i + EVAL_BATCH], self._y_val[i : i + EVAL_BATCH])
            for i in range(0, n, EVAL_BATCH)
        ]

    def evaluate_validation(self) -> tuple[float, float]:
        """The model's validation loss and accuracy as it stands, on the samples every epoch
        validates on (``evaluate``; no counterfactuals)."""
        return evaluate(self.model, self._x_val, self._y_val)

    def _validate(self) -> tuple[float, float]:
        """Validation loss and accuracy; with running seeds, from the counterfactual pass itself
        (its first configuration is the model as it is), which also stores each contribution."""
        stages = [r.stage for r in self.model.reports().values()]
        if not any(stage in FORWARD_STAGES for stage in stages):
            return self.evaluate_validation()
        totals = {"loss": 0.0, "correct": 0, "count": 0}

        def observe(out: Tensor, y: Tensor) -> None:
            loss, hits = _loss_and_correct(out, y)
            totals["loss"] += loss.item()
            totals["correct"] += int(hits.item())
            totals["count"] += y.numel()

        self.model.measure_contributions(self._val_batches(), observe=observe)
        if self.config.shapley and any(stage in BLENDED_STAGES for stage in stages):
            self.model.shapley_values(self._val_batches())
        count = totals["count"]
        return totals["loss"] / count, 100.0 * totals["correct"] / count

    def train_step(self, trained: Trained | None = None) -> StepResult:
        """Train, validate, measure counterfactuals, check health, tick the seeds' timers.

        Args:
            trained: this epoch's training already done together with other trainers
                (``train_together``); None trains it here.
        """
        if self.done:
            raise RuntimeError(f"episode is over: {self.epoch} of {self.max_epochs} epochs")
        if trained is None:
            trained = train_together([self])[0]
        started = time.perf_counter()  # validation onwards; training time is in ``trained``
        train_loss, train_acc = trained.loss, trained.accuracy
        val_loss, val_acc = self._validate()
        panic = self.governor.check(train_loss, val_loss)
        if panic is not None:
            self._roll_back(panic, val_loss)
            if panic.rule == "non_finite":  # accuracies of a NaN model are not measurements
                train_acc = val_acc = math.nan
        elif self.on_validated is not None:
            self.on_validated(val_acc)
        self.model.step_epoch()
        self.epoch = self.model.epoch
        if panic is None and not self.governor.suspicious:
            self.governor.snapshot(self.model, self.optimizer)  # end of a healthy epoch
        self._emit_transitions()
        result = StepResult(
            self.epoch,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            panic,
            trained.seconds + time.perf_counter() - started,
        )
        self.emit(self._epoch_event(result))
        return result

    def _roll_back(self, panic: Panic, val_loss: float) -> None:
        """Restore the governor's snapshot and log every change it made, all at the epoch of
        the panic: slots it set back (a seed pruned after the snapshot given back: that prune
        undone, so no longer counted), seeds it removed, and the governor's prunes."""
        rollback = self.rollback = self.governor.rollback(self.model, self.optimizer)
        self.terminated = True
        at = self.epoch + 1
        for name, was, back in rollback.restored:
            # no seed before, one after: it was pruned after the snapshot (and counted then)
            self.pruned_count -= (
                was.stage not in SEED_MODULE_STAGES and back.stage in SEED_MODULE_STAGES
            )
            why = "restored by the governor's rollback"
            stages = (was.stage.value, back.stage.value)
            self.emit(SeedTransition(at, name, back.blueprint, *stages, why))
        for name, was in rollback.vanished:
            self.pruned_count += 1
            why = "grown after the last snapshot: removed by the governor's rollback"
            stages = (was.stage.value, self.model.slot(name).stage.value)
            self.emit(SeedTransition(at, name, was.blueprint, *stages, why))
        self._emit_transitions(epoch=at)  # the governor's prunes
        slots = rollback.pruned + tuple(name for name, _ in rollback.vanished)
        loss = measured(val_loss)
        self.emit(
            GovernorPanic(
                self.epoch + 1, panic.rule, panic.detail, loss, rollback.restored_epoch, slots
            )
        )

    def apply(self, action: Action) -> bool:
        """Carry out a controller's action through the model's lifecycle API, then (with
        ``auto_advance`` set) advance every seed whose next gate passes (``advance_ready``).

        A refused action (gate, illegal transition, bad value) is recorded, not raised.

        Returns:
            Whether the model accepted the controller's action.
        """
        model, error = self.model, None
        try:
            if action.op is Op.GERMINATE:
                assert action.slot is not None and action.blueprint is not None
                model.germinate(action.slot, action.blueprint)
            elif action.op is Op.ADVANCE:
                assert action.slot is not None
                model.advance(action.slot)
            elif action.op is Op.SET_ALPHA_TARGET:
                assert action.slot is not None and action.alpha_target is not None
                assert action.tempo is not None
                model.set_alpha_target(action.slot, action.alpha_target, tempo=action.tempo)
            elif action.op is Op.PRUNE:
                assert action.slot is not None
                model.prune(action.slot, reason=action.reason or "controller")
            elif action.op is Op.FOSSILIZE:
                assert action.slot is not None
                model.fossilize(action.slot)
        except (LifecycleError, ValueError) as err:
            error = str(err)
        self.optimizer.sync()
        self.emit(
            ActionTaken(
                self.epoch,
                action.op.value,
                action.slot,
                action.blueprint,
                action.tempo,
                action.alpha_target,
                action.reason,
                error is None,
                error,
            )
        )
        self._emit_transitions()
        if self.config.auto_advance:
            self.advance_ready()
        return error is None

    def advance_ready(self) -> None:
        """Advance every seed in a stage ADVANCE works from (GERMINATED, TRAINING, BLENDING)
        whose next gate passes, slots in ``ordered_slots`` order, one stage per seed per call.

        Kasmina's gates decide: each advance is tried, and a ``GateError`` means the gate
        refused, which leaves the seed exactly as it was (``SeedSlot.advance`` checks the gate
        before it changes anything, and no check draws random numbers). Each move is logged as
        a ``SeedTransition`` whose reason is ``auto-advance (G1|G2|G3)``; no ``ActionTaken`` is
        logged, since no controller chose it.
        """
        model = self.model
        for name in model.order:
            stage = model.slot(name).stage
            if stage not in ADVANCE_TO:
                continue
            gate = ADVANCE_TO[stage][1]
            try:
                model.advance(name)
            except GateError:
                continue  # not yet: the seed stays in its stage
            self._emit_transitions(f"auto-advance ({gate.value})")
        self.optimizer.sync()  # as after any lifecycle change

    # ------------------------------------------------------------------------------ telemetry

    def _emit_transitions(self, reason: str | None = None, epoch: int | None = None) -> None:
        """Log the model's transitions since the last call (``reason``: instead of Kasmina's,
        for a move no controller chose; ``epoch``: instead of the model's, for the prunes of a
        rollback, made before the model's epoch moved on to the one that panicked)."""
        for t in self.model.drain_transitions():
            self.pruned_count += t.to_stage is SeedStage.PRUNED
            self.emit(
                SeedTransition(
                    t.epoch if epoch is None else epoch,
                    t.slot,
                    t.blueprint,
                    t.from_stage.value,
                    t.to_stage.value,
                    t.reason if reason is None else reason,
                )
            )

    def _epoch_event(self, result: StepResult) -> EpochCompleted:
        slots = tuple(
            SlotSnapshot(
                r.slot,
                r.stage.value,
                r.blueprint,
                r.alpha,
                r.counterfactual_contribution,
                r.shapley_value,
                r.seed_param_count,
            )
            for r in self.model.reports().values()
        )
        return EpochCompleted(
            result.epoch,
            result.train_loss,
            result.train_accuracy,
            result.val_loss,
            result.val_accuracy,
            self.model.active_param_count(),
            slots,
            result.seconds,
        )

    # ------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """Everything but the model needed to continue exactly (optimizer, data order, RNG), as
        it is now: the optimizer's state is copied (torch's shares its moment tensors, which
        the next steps change in place)."""
        return {
            "epoch": self.epoch,
            "pruned_count": self.pruned_count,
            "terminated": self.terminated,
            "optimizer": copied_state(self.optimizer.state_dict()),
            "stream": self.stream.state_dict(),
            "governor": self.governor.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` output; the model must already be restored. The
        optimizer's state is copied in (the governor's snapshot is copied at every rollback),
        so two trainers loaded from one state do not change each other."""
        self.stream.load_state_dict(state["stream"])  # first: it refuses a state no stream makes
        self.epoch = int(state["epoch"])
        self.pruned_count = int(state["pruned_count"])
        self.terminated = bool(state["terminated"])
        self.optimizer.sync()
        self.optimizer.load_state_dict(copied_state(state["optimizer"]))
        self.governor.load_state_dict(state["governor"])
        torch.set_rng_state(state["torch_rng"])
