"""Named constants for the lifecycle gates and timers, each with its reason.

Contribution thresholds are in the units of the metric the caller measures with; Esper's
classification and language-model tasks use accuracy in percentage points.
"""

from __future__ import annotations

EMBARGO_EPOCHS = 5
"""Epochs a pruned slot waits before reuse, so the controller cannot thrash one slot (DESIGN §2)."""

DEFAULT_BLEND_TEMPO = 5
"""Epochs for α to reach its target when no tempo was chosen: slow enough for the host to adapt."""

DEFAULT_ALPHA_TARGET = 1.0
"""Blend a seed fully unless the controller asks for less."""

G2_MIN_TRAINING_EPOCHS = 3
"""A seed must train in isolation this long before blending: fewer epochs give too noisy a probe."""

G2_MIN_PROBE_IMPROVEMENT = 0.0
"""TRAINING -> BLENDING needs a probe contribution strictly above this: the seed must help."""

GRADIENT_RATIO_HEALTHY_MIN = 1e-3
"""Below this per-parameter gradient ratio the seed is effectively not learning (vanishing)."""

GRADIENT_RATIO_HEALTHY_MAX = 1e3
"""Above this the seed's gradients dwarf the host's by orders of magnitude (exploding)."""

GRADIENT_EMA_DECAY = 0.9
"""Moving-average decay for the gradient ratio: smooths per-batch noise over ~10 batches."""

G3_MIN_BLENDING_EPOCHS = 3
"""BLENDING -> HOLDING needs this many epochs blended, even when α got to its target sooner."""

G5_MIN_HOLDING_EPOCHS = 1
"""Fossilization needs at least one full held epoch so the contribution is measured at held α."""

G5_MIN_CONTRIBUTION = 0.1
"""A seed becomes permanent only if removing it costs at least this much metric (0.1 points)."""

ALPHA_EPSILON = 1e-6
"""Tolerance when asking whether α reached its target (schedules land exactly; this is slack)."""

GATE_INIT_LOGIT = 4.0
"""Gated blending starts with the gate nearly open (sigmoid(4) ≈ 0.98) so α means what it says."""

MAX_EXACT_SHAPLEY_SEEDS = 4
"""Exact Shapley needs 2^n forward configurations; 16 is the most we evaluate in one fused batch."""
