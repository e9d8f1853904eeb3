"""Tamiyo: the controllers that decide when, where and what a host grows.

Tamiyo owns the ``Controller`` interface shared by every controller, the ``SignalTracker`` that
turns per-step metrics into ``TrainingSignals``, the control arm (``StaticController``), the
rule-based ``HeuristicTamiyo`` with its blueprint selectors (``selectors``: a rotation, or a
bandit learning from seed outcomes) and orchestration strategies (``strategies``), the baseline
arms (``RandomController``, ``PeriodicController`` in ``baselines``), and the learned
controller's parts: the observation schema (``features``), the factored action space with its
masks (``actions``), the masked categorical distribution (``distributions``), the observation
normalizer (``normalizer``) and the recurrent policy network with its ``PolicyController``
(``policy``). It imports Leyline contracts and the Kasmina blueprint registry, and reads
Kasmina's models only through their seed reports: a controller proposes an ``Action``, the
engine (Tolaria) applies it; learning lives in Simic.
"""

from esper.tamiyo.actions import (
    ALPHA_TARGETS,
    HEADS,
    RELEVANT_HEADS,
    TEMPOS,
    ActionMasks,
    ActionSpace,
    head_relevance,
)
from esper.tamiyo.baselines import PeriodicConfig, PeriodicController, RandomController
from esper.tamiyo.controller import Controller, StaticController
from esper.tamiyo.distributions import MASK_VALUE, MaskedCategorical
from esper.tamiyo.features import (
    BASE_FEATURES,
    FEATURE_SLOTS,
    SLOT_FEATURES,
    encode_observation,
    feature_index,
    feature_names,
    observation_size,
)
from esper.tamiyo.heuristic import HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.normalizer import RunningMeanStd
from esper.tamiyo.policy import (
    ActStep,
    Evaluation,
    PolicyConfig,
    PolicyController,
    PolicyNetwork,
    PolicyOutput,
    reset_state,
)
from esper.tamiyo.selectors import SELECTORS, BlueprintSelector, make_selector
from esper.tamiyo.strategies import STRATEGIES, blueprint_sizes
from esper.tamiyo.tracker import SignalTracker, TrackerConfig

__all__ = [
    "ALPHA_TARGETS",
    "BASE_FEATURES",
    "FEATURE_SLOTS",
    "HEADS",
    "MASK_VALUE",
    "RELEVANT_HEADS",
    "SELECTORS",
    "SLOT_FEATURES",
    "STRATEGIES",
    "TEMPOS",
    "ActStep",
    "ActionMasks",
    "ActionSpace",
    "BlueprintSelector",
    "Controller",
    "Evaluation",
    "HeuristicConfig",
    "HeuristicTamiyo",
    "MaskedCategorical",
    "PeriodicConfig",
    "PeriodicController",
    "PolicyConfig",
    "PolicyController",
    "PolicyNetwork",
    "PolicyOutput",
    "RandomController",
    "RunningMeanStd",
    "SignalTracker",
    "StaticController",
    "TrackerConfig",
    "blueprint_sizes",
    "encode_observation",
    "feature_index",
    "feature_names",
    "head_relevance",
    "make_selector",
    "observation_size",
    "reset_state",
]
