"""Anomaly detection on PPO updates (DESIGN §5).

After every update the detector checks for the classic failure signs of policy-gradient
training. When one fires, the trainer escalates telemetry to DEBUG for ``ESCALATION_ROUNDS``
rounds (per-head statistics are then logged) and records an ``AnomalyDetected`` event saying so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from esper.leyline.config import check_float
from esper.leyline.events import PPOStats

ESCALATION_ROUNDS = 3
"""Rounds of DEBUG telemetry after an anomaly: long enough to see whether it persists."""

ENTROPY_COLLAPSE = 0.02
"""Mean normalized entropy (per relevant head, summed over heads ≈ 1–3 when exploring) below
which the policy has become nearly deterministic everywhere."""

VALUE_COLLAPSE_RATIO = 1e-3
"""Value predictions whose spread is under 0.1% of the returns' spread ignore the state."""

RETURN_SPREAD_MIN = 1e-3
"""Below this return spread a constant value function is correct, not collapsed."""


@dataclass(frozen=True)
class Anomaly:
    """What fired and the numbers that made it fire."""

    kinds: tuple[str, ...]
    detail: str


def _told_apart(value: float, limit: float) -> tuple[str, str]:
    """``value`` and the ``limit`` it passed as text: the limit as set (its shortest exact form
    up to 6 significant digits, 1/1.5 as 0.666667; more where the value lies between the limit
    and that), the value with the fewest digits (3 or more) that keep it on its side of the
    shown limit. "max ratio 1 > 1.0001" read as a false alarm, and "1.001 > 1" named a limit of
    1.0001 as 1."""
    above = value > limit
    exact = next((d for d in range(3, 7) if float(f"{limit:.{d}g}") == limit), 6)
    for limit_digits in range(exact, 18):
        shown_limit = f"{limit:.{limit_digits}g}"
        bound = float(shown_limit)
        for digits in range(3, 18):
            shown = f"{value:.{digits}g}"
            if (float(shown) > bound) == above and float(shown) != bound:
                return shown, shown_limit
    return repr(value), repr(limit)


def detect_anomalies(stats: PPOStats, ratio_explosion: float) -> Anomaly | None:
    """Check one update for ratio explosion/collapse, entropy/value collapse and non-finite steps.

    Args:
        stats: the update's statistics.
        ratio_explosion: the PPO setting; a max ratio above it is an explosion and a min ratio
            below its reciprocal a collapse.

    Returns:
        The anomaly, or None when the update looks healthy. A NaN statistic is ``non_finite``
        (no comparison with NaN is true, so it hid every other check).

    Raises:
        ValueError: ``ratio_explosion`` is not a finite number > 1.
    """
    check_float("ratio_explosion", ratio_explosion, 1.0, 1e6, strict_low=True)  # as PPOSettings
    kinds: list[str] = []
    details: list[str] = []
    nan = [
        name
        for name in ("ratio_max", "ratio_min", "entropy", "value_std", "return_std")
        if (value := getattr(stats, name)) is not None and math.isnan(value)
    ]
    if stats.ratio_max is not None and stats.ratio_max > ratio_explosion:
        kinds.append("ratio_explosion")
        details.append("max ratio {} > {}".format(*_told_apart(stats.ratio_max, ratio_explosion)))
    if stats.ratio_min is not None and stats.ratio_min < 1.0 / ratio_explosion:
        kinds.append("ratio_collapse")
        low = 1.0 / ratio_explosion
        details.append("min ratio {} < {}".format(*_told_apart(stats.ratio_min, low)))
    if stats.entropy is not None and stats.entropy < ENTROPY_COLLAPSE:
        kinds.append("entropy_collapse")
        details.append(f"entropy {stats.entropy:.3g} < {ENTROPY_COLLAPSE:g}")
    value_std, return_std = stats.value_std, stats.return_std
    if (
        value_std is not None
        and return_std is not None
        and return_std > RETURN_SPREAD_MIN
        and value_std < VALUE_COLLAPSE_RATIO * return_std
    ):
        kinds.append("value_collapse")
        details.append(f"value std {value_std:.3g} vs return std {return_std:.3g}")
    if stats.skipped_steps or nan:
        kinds.append("non_finite")
    if stats.skipped_steps:
        details.append(f"{stats.skipped_steps} optimizer step(s) skipped: non-finite loss/grads")
    if nan:
        details.append(f"{', '.join(nan)} NaN")
    if not kinds:
        return None
    return Anomaly(tuple(kinds), "; ".join(details))
