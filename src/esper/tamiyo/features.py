"""The observation schema: one ``Observation`` in, one fixed-size float vector out (DESIGN §4).

The vector is ``BASE_FEATURES`` (50) followed, when telemetry is on, by one ``SLOT_FEATURES``
block (10) per slot of ``FEATURE_SLOTS`` (early, mid, late): 80 features with telemetry, 50
without. Every index has a name (``feature_names``, ``feature_index``); a test checks the layout.

Base features (50):

* 23 about the host: episode progress, the step's losses and accuracies, their deltas, the best
  accuracy, the plateau counter, the stabilization latch, a finiteness flag and a short
  validation history (the step's own value plus up to ``HISTORY_LAGS`` earlier steps);
* 9 per slot, a lifecycle summary visible even without telemetry: whether the slot is enabled,
  a one-hot of its stage group (``STAGE_GROUPS``) and its α.

Per-slot telemetry (10 per slot): the counterfactual contribution and its delta within the stage,
the Shapley value, the seed/host gradient ratio with its health, the seed's size relative to the
host, and the epochs spent in the current stage. The report's ``alpha_target`` is left out: it is
either the default, a target this policy set itself (its recurrent state remembers that), or equal
to α once held; the ramp itself shows in the base ``alpha``.

Missing is not zero (STYLE 12). A value that was not measured (``None``) or is not finite (NaN/Inf,
e.g. the step a governor panic rolls back) is encoded as 0 *with a presence flag of 0* beside it:

* the step's four metrics share ``metrics_finite`` (also covering ``best_val_accuracy``, which is
  NaN only while no finite accuracy has ever been seen, so never on a step with finite metrics);
* each delta, contribution and Shapley value has its own ``*_present`` flag;
* the gradient ratio's presence is ``gradient_health`` (+1 healthy, -1 unhealthy, 0 not measured);
* the history window reaches back over consecutive steps whose loss and accuracy are both finite;
  ``history_lags`` says how many lags that is, and lags beyond it are 0.

A disabled slot (no report) has an all-zero summary and telemetry block, so its ``enabled`` flag is
0. The output is always finite: every feature is finally clamped to ``±FEATURE_LIMIT``.

Features read only ``SeedStateReport`` and ``TrainingSignals`` fields, never slot internals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from esper.leyline import (
    MIN_LIFECYCLE_EPOCHS,
    RETIRED_STAGES,
    Observation,
    SeedStage,
    SeedStateReport,
    SlotSignals,
    slot_names,
)
from esper.leyline import thresholds as T
from esper.leyline.config import check_bool

FEATURE_SLOTS: tuple[str, ...] = slot_names(3)
"""The slots the schema has room for, in ``ordered_slots`` order: early, mid, late."""

HISTORY_LAGS = 4
"""Earlier validation steps in the history window; with the current step that makes 5, the
tracker's default history length."""

ACCURACY_SCALE = 100.0
"""Accuracies (and their deltas) arrive in percent; /100 maps them to [0, 1]."""

PLATEAU_SCALE = 10.0
"""Plateau counters of a few to ~10 steps are what matter in 15–30 epoch runs."""

EPOCHS_IN_STAGE_SCALE = 10.0
"""Stage timers run from 0 to ~10 epochs (gates need 1–3; the heuristic prunes by ~6)."""

CONTRIBUTION_SCALE = 10.0
"""Contributions and Shapley values are a few accuracy points; /10 puts typical ones near ±0.5."""

GRADIENT_LOG_SCALE = math.log10(T.GRADIENT_RATIO_HEALTHY_MAX)
"""log10 of the healthy band's edge (3), so the healthy gradient ratio band maps to [-1, 1]."""

GRADIENT_LOG_CLIP = 2.0 * GRADIENT_LOG_SCALE
"""A ratio of 0 or Inf has no logarithm; beyond twice the band's edge the exact value is moot."""

FEATURE_LIMIT = 100.0
"""Every feature is clamped to ±this: far above healthy values (losses of a few units, fractions
near 1), small enough that one diverged step cannot swamp the running normalization statistics."""

STAGE_GROUPS: tuple[tuple[str, frozenset[SeedStage]], ...] = (
    ("dormant", frozenset({SeedStage.DORMANT})),
    ("germinated", frozenset({SeedStage.GERMINATED})),
    ("training", frozenset({SeedStage.TRAINING})),
    ("blending", frozenset({SeedStage.BLENDING})),
    ("holding", frozenset({SeedStage.HOLDING})),
    ("fossilized", frozenset({SeedStage.FOSSILIZED})),
    ("retired", RETIRED_STAGES),
)
"""The base one-hot of a slot's stage: every stage in exactly one group."""

_GLOBAL_FEATURES: tuple[str, ...] = (
    "epoch_fraction",  # epoch / max_epochs, in [0, 1]
    "remaining_lifecycles",  # epochs left / MIN_LIFECYCLE_EPOCHS, capped at 1
    "train_loss",
    "val_loss",
    "train_accuracy",
    "val_accuracy",
    "loss_delta",
    "loss_delta_present",
    "accuracy_delta",
    "accuracy_delta_present",
    "best_val_accuracy",
    "plateau_epochs",
    "host_stabilized",
    "metrics_finite",
    *(f"val_loss_lag{k}" for k in range(1, HISTORY_LAGS + 1)),
    *(f"val_accuracy_lag{k}" for k in range(1, HISTORY_LAGS + 1)),
    "history_lags",  # lags present / HISTORY_LAGS
)

SLOT_SUMMARY_FEATURES: tuple[str, ...] = (
    "enabled",
    *(f"stage_{group}" for group, _ in STAGE_GROUPS),
    "alpha",
)
"""The per-slot lifecycle summary inside the base features, named ``f"{slot}.{name}"``."""

BASE_FEATURES: tuple[str, ...] = (
    *_GLOBAL_FEATURES,
    *(f"{slot}.{name}" for slot in FEATURE_SLOTS for name in SLOT_SUMMARY_FEATURES),
)
"""The 50 features every policy sees, in vector order."""

SLOT_FEATURES: tuple[str, ...] = (
    "contribution",
    "contribution_present",
    "contribution_delta",
    "contribution_delta_present",
    "shapley",
    "shapley_present",
    "log_gradient_ratio",
    "gradient_health",  # +1 healthy, -1 unhealthy, 0 not measured
    "param_ratio",  # seed parameters / host parameters
    "epochs_in_stage",
)
"""The per-slot telemetry block (10), one per slot of ``FEATURE_SLOTS`` when telemetry is on."""

_BASE_SIZE = 50
_SLOT_SIZE = 10
if (len(BASE_FEATURES), len(SLOT_FEATURES)) != (_BASE_SIZE, _SLOT_SIZE):
    # Fail at import if an edit above breaks the sizes DESIGN §4 fixes.
    raise RuntimeError(
        f"feature schema has {len(BASE_FEATURES)} base and {len(SLOT_FEATURES)} slot features; "
        f"DESIGN §4 fixes {_BASE_SIZE} and {_SLOT_SIZE}"
    )


def feature_names(telemetry: bool) -> tuple[str, ...]:
    """Names of the observation vector's entries, in order.

    Args:
        telemetry: whether the per-slot telemetry blocks follow the base features.

    Returns:
        ``BASE_FEATURES``, then (with telemetry) ``f"{slot}.{name}"`` for every slot of
        ``FEATURE_SLOTS`` and every name of ``SLOT_FEATURES``.
    """
    if not telemetry:
        return BASE_FEATURES
    return BASE_FEATURES + tuple(
        f"{slot}.{name}" for slot in FEATURE_SLOTS for name in SLOT_FEATURES
    )


def observation_size(telemetry: bool) -> int:
    """Length of the observation vector: 80 with telemetry, 50 without."""
    return len(BASE_FEATURES) + (len(FEATURE_SLOTS) * len(SLOT_FEATURES) if telemetry else 0)


_INDEX = {
    telemetry: {name: i for i, name in enumerate(feature_names(telemetry))}
    for telemetry in (False, True)
}


def feature_index(name: str, telemetry: bool = True) -> int:
    """Position of the feature ``name`` in the observation vector.

    Raises:
        KeyError: naming the unknown feature and the accepted names (a telemetry feature asked
            for with ``telemetry=False`` is unknown there).
    """
    index = _INDEX[telemetry]
    if name not in index:
        raise KeyError(f"unknown feature {name!r} (telemetry={telemetry}); accepted: {list(index)}")
    return index[name]


def aligned_reports(reports: Mapping[str, SeedStateReport]) -> tuple[SeedStateReport | None, ...]:
    """The reports in ``FEATURE_SLOTS`` order, ``None`` for a slot without one (disabled).

    The mapping's own order never matters.

    Raises:
        ValueError: for a slot name outside ``FEATURE_SLOTS`` or a report filed under another
            slot's name.
    """
    for key, report in reports.items():
        if key not in FEATURE_SLOTS:
            raise ValueError(
                f"slot {key!r} has no place in the observation; accepted: {list(FEATURE_SLOTS)}"
            )
        if report.slot != key:
            raise ValueError(f"the report filed under {key!r} is for slot {report.slot!r}")
    return tuple(reports.get(slot) for slot in FEATURE_SLOTS)


def _present(value: float | None, scale: float = 1.0) -> tuple[float, float]:
    """``(value / scale, 1.0)`` for a finite value, ``(0.0, 0.0)`` when missing or non-finite."""
    if value is None or not math.isfinite(value):
        return 0.0, 0.0
    return value / scale, 1.0


def _global_features(observation: Observation) -> list[float]:
    s = observation.signals
    if observation.max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {observation.max_epochs}")
    fraction = min(max(s.epoch / observation.max_epochs, 0.0), 1.0)
    remaining = max(observation.max_epochs - s.epoch, 0)
    metrics = (s.train_loss, s.val_loss, s.train_accuracy, s.val_accuracy)
    finite = all(math.isfinite(m) for m in metrics)
    train_loss, val_loss, train_acc, val_acc = (m if math.isfinite(m) else 0.0 for m in metrics)
    loss_delta, loss_delta_present = _present(s.loss_delta)
    acc_delta, acc_delta_present = _present(s.accuracy_delta, ACCURACY_SCALE)
    best = s.best_val_accuracy if math.isfinite(s.best_val_accuracy) else 0.0

    # Lag k is the k-th step before this one; the window stops at the first missing or
    # non-finite lag, so every value inside it is real and everything past it is 0.
    loss_lags = [0.0] * HISTORY_LAGS
    acc_lags = [0.0] * HISTORY_LAGS
    lags = 0
    for k in range(1, HISTORY_LAGS + 1):
        if k >= len(s.loss_history) or k >= len(s.accuracy_history):
            break
        loss, acc = s.loss_history[-1 - k], s.accuracy_history[-1 - k]
        if not (math.isfinite(loss) and math.isfinite(acc)):
            break
        loss_lags[k - 1], acc_lags[k - 1] = loss, acc / ACCURACY_SCALE
        lags = k
    return [
        fraction,
        min(remaining / MIN_LIFECYCLE_EPOCHS, 1.0),
        train_loss,
        val_loss,
        train_acc / ACCURACY_SCALE,
        val_acc / ACCURACY_SCALE,
        loss_delta,
        loss_delta_present,
        acc_delta,
        acc_delta_present,
        best / ACCURACY_SCALE,
        s.plateau_epochs / PLATEAU_SCALE,
        float(s.host_stabilized),
        float(finite),
        *loss_lags,
        *acc_lags,
        lags / HISTORY_LAGS,
    ]


def _summary(report: SeedStateReport | None) -> list[float]:
    if report is None:
        return [0.0] * len(SLOT_SUMMARY_FEATURES)
    one_hot = [float(report.stage in stages) for _, stages in STAGE_GROUPS]
    alpha = report.alpha if math.isfinite(report.alpha) else 0.0
    return [1.0, *one_hot, alpha]


def _log_gradient_ratio(ratio: float | None) -> float:
    if ratio is None or math.isnan(ratio):
        return 0.0
    if ratio <= 0.0:
        return -GRADIENT_LOG_CLIP / GRADIENT_LOG_SCALE
    log = min(max(math.log10(ratio), -GRADIENT_LOG_CLIP), GRADIENT_LOG_CLIP)  # log10(inf) = inf
    return log / GRADIENT_LOG_SCALE


def _telemetry(report: SeedStateReport | None, signals: SlotSignals | None) -> list[float]:
    if report is None:
        return [0.0] * len(SLOT_FEATURES)
    if report.host_param_count < 1:
        raise ValueError(
            f"slot {report.slot!r}: host_param_count must be >= 1, got {report.host_param_count}"
        )
    contribution = _present(report.counterfactual_contribution, CONTRIBUTION_SCALE)
    delta = None if signals is None else signals.contribution_delta
    health = {None: 0.0, True: 1.0, False: -1.0}[report.gradient_healthy]
    return [
        *contribution,
        *_present(delta, CONTRIBUTION_SCALE),
        *_present(report.shapley_value, CONTRIBUTION_SCALE),
        _log_gradient_ratio(report.seed_gradient_norm_ratio),
        health,
        report.seed_param_count / report.host_param_count,
        report.epochs_in_stage / EPOCHS_IN_STAGE_SCALE,
    ]


def encode_observation(observation: Observation, telemetry: bool) -> torch.Tensor:
    """Encode one observation as the policy's input vector.

    Args:
        observation: the controller's observation; its reports may come in any order.
        telemetry: whether to append the per-slot telemetry blocks.

    Returns:
        A finite float32 tensor of shape ``(observation_size(telemetry),)``, laid out as
        ``feature_names(telemetry)``.

    Raises:
        ValueError: for a report of a slot outside ``FEATURE_SLOTS``, a report filed under the
            wrong slot, ``max_epochs`` < 1, a report with no host parameters, or a
            ``telemetry`` that is not a bool (``"no"`` is true: 80 features, not 50).
    """
    check_bool("telemetry", telemetry)
    reports = aligned_reports(observation.reports)
    values = _global_features(observation)
    for report in reports:
        values += _summary(report)
    if telemetry:
        # A slot without SlotSignals (e.g. a hand-built observation) has no measured delta.
        by_slot = {s.slot: s for s in observation.signals.slots}
        for slot, report in zip(FEATURE_SLOTS, reports, strict=True):
            values += _telemetry(report, by_slot.get(slot) if report is not None else None)
    x = torch.tensor(values, dtype=torch.float32)  # (D,)
    return torch.nan_to_num(x, nan=0.0).clamp_(-FEATURE_LIMIT, FEATURE_LIMIT)
