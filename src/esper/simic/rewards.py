"""Rewards for learning the controller (DESIGN §5): what one environment step was worth.

Two families: ``contribution`` (modes ``shaped``, ``simplified``, ``sparse``) and ``loss``.
Every reward is a sum of named components (a ``RewardBreakdown``), so telemetry shows each term.

Notation: one step goes from state s (the ``before`` seed reports) to s' (the ``after`` reports);
γ is the PPO discount; ``c_i`` is slot i's counterfactual contribution in accuracy points; ``N`` is
the active parameter count (host and seeds) and ``H`` the host's own; ``acc'`` and ``L``/``L'`` are
validation accuracy (percent) after the step and validation loss before/after it; ``α_i`` and
``P_i`` are seed i's blend weight and parameter count.

Terms (each a component of the same name)::

    Φ(s)         = pbrs_weight · Σ_slots STAGE_POTENTIALS[stage of the slot in s]
    pbrs         = γ · Φ(s') − Φ(s),   with Φ(s') := 0 when the step terminated (and at the
                   episode's length with ``ppo.horizon`` ``termination``)
    contribution = contribution_weight · Σ_{i in BLENDING or HOLDING in s', c_i measured} c_i
    rent         = −rent_weight · (N − H) / H                      (rent_basis "active")
                   −rent_weight · Σ_{seeds in s'} α_i · P_i / H        (rent_basis "blended")
    action_cost  = 0 for WAIT, −action_cost for an accepted op, −refused_cost for a refused op
    terminal     = terminal_weight · acc' / 100   on the final step (truncated), else 0
    loss_delta   = −loss_weight · (L' − L)
    panic        = −panic_penalty   when the step terminated (governor panic), else 0

Families and modes (components in this order)::

    contribution/shaped     = contribution + pbrs + rent + panic
    contribution/simplified = pbrs + action_cost + terminal + panic
    contribution/sparse     = terminal + panic
    loss                    = loss_delta + rent + panic

The end of an episode:

* **Termination** (governor panic): Φ(terminal) = 0, so with potentials ≥ 0 shaping can never
  reward dying; the metrics of a diverged step are not trusted, so every metric-based term
  (contribution, terminal, loss_delta) is 0 and the panic penalty is the whole verdict. A step
  that is both terminated and truncated counts as terminated.
* **Truncation** (episode length reached): Φ(s') is the real potential, because PPO bootstraps
  from V(s') there as if the episode went on; the terminal bonus is paid. With ``ppo.horizon``
  ``termination`` the length is the episode's end: no bootstrap, Φ(s') = 0, the bonus paid.

Over an episode s_0 … s_T the shaping terms telescope (Ng, Harada & Russell, 1999, "Policy
invariance under reward transformations"): Σ_t γ^t F_t = γ^T Φ(s_T) − Φ(s_0). This holds only if
F uses the PPO γ, which ``check_gamma`` enforces.

Missing is not zero: a contribution that is ``None`` or non-finite is absent from the sum (not a
0 contribution), and a non-finite accuracy or loss leaves its term at 0 (unmeasured), so the reward
is always finite.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

from esper.leyline import Action, Op, SeedStage, SeedStateReport
from esper.leyline.config import MAX_INT64, check_bool, check_float, check_int, require

RENT_BASES = ("active", "blended")
"""``reward.rent_basis`` choices: rent on every parameter that runs (``active``: a seed costs
from TRAINING on, before it can change the output) or only on the blended part of each seed's
(``blended``: α-weighted, so a seed costs nothing until it blends and all of it once held)."""

REWARD_FAMILIES = ("contribution", "loss")
"""``--reward-family`` choices."""

CONTRIBUTION_MODES = ("shaped", "simplified", "sparse")
"""``--reward-mode`` choices; they apply to the ``contribution`` family only."""

_DEFAULT_MODE = "shaped"
"""The only mode the ``loss`` family accepts: it has no modes, so another would be ignored."""

MAX_WEIGHT = 1e6
"""Largest reward weight accepted: far above any sensible scale, low enough to catch a typo."""

SHAPED_COMPONENTS = ("contribution", "pbrs", "rent", "panic")
"""Component names of ``contribution``/``shaped``, in breakdown order."""

SIMPLIFIED_COMPONENTS = ("pbrs", "action_cost", "terminal", "panic")
"""Component names of ``contribution``/``simplified``, in breakdown order."""

SPARSE_COMPONENTS = ("terminal", "panic")
"""Component names of ``contribution``/``sparse``, in breakdown order."""

LOSS_COMPONENTS = ("loss_delta", "rent", "panic")
"""Component names of the ``loss`` family, in breakdown order."""

_COMPONENTS_OF = {
    "contribution/shaped": SHAPED_COMPONENTS,
    "contribution/simplified": SIMPLIFIED_COMPONENTS,
    "contribution/sparse": SPARSE_COMPONENTS,
    "loss": LOSS_COMPONENTS,
}

FIELD_COMPONENTS = {
    "contribution_weight": "contribution",
    "pbrs_weight": "pbrs",
    "rent_weight": "rent",
    "rent_basis": "rent",
    "action_cost": "action_cost",
    "refused_cost": "action_cost",
    "terminal_weight": "terminal",
    "panic_penalty": "panic",
    "loss_weight": "loss_delta",
}
"""The component each ``RewardConfig`` setting (but family and mode) weighs or shapes."""

STAGE_POTENTIALS: Mapping[SeedStage, float] = MappingProxyType(
    {
        SeedStage.DORMANT: 0.0,
        SeedStage.GERMINATED: 1.0,
        SeedStage.TRAINING: 2.0,
        SeedStage.BLENDING: 3.0,
        SeedStage.HOLDING: 4.0,
        SeedStage.FOSSILIZED: 5.0,
        SeedStage.PRUNED: 0.0,
        SeedStage.EMBARGOED: 0.0,
        SeedStage.RESETTING: 0.0,
    }
)
"""Φ per slot stage, before ``pbrs_weight``: one rung per step along the productive lifecycle.

Each forward transition (DORMANT → … → FOSSILIZED) gains one unit, so progress toward a permanent
seed is paid as it happens instead of only at the end. The pruned branch (PRUNED, EMBARGOED,
RESETTING) is worth what an empty slot is worth: pruning gives back what the seed had gained, and
the way back to DORMANT neither costs nor pays. All potentials are ≥ 0, so with Φ(terminal) = 0
a panic can never gain shaping reward. PBRS leaves the optimal policy unchanged whatever the
values; they only decide how early the credit arrives.
"""

_CONTRIBUTING_STAGES = frozenset({SeedStage.BLENDING, SeedStage.HOLDING})
"""Seeds whose contribution is paid each step: they change the output and their fate is still
open. A TRAINING contribution is a probe of a seed not yet in the output; a FOSSILIZED seed is
permanent, its worth is paid by the top potential, and paying it every step would only reward
fossilizing early to collect."""

_WEIGHT_SUFFIXES = ("_weight", "_cost", "_penalty")
"""``RewardConfig`` fields that are weights (non-negative, finite), by name."""

_PERCENT = 100.0
"""Accuracies are percentages; the terminal bonus uses the fraction so it lies in [0, weight]."""


@dataclass(frozen=True)
class RewardConfig:
    """Which reward and its weights. Each field lists the family/modes that read it.

    Attributes:
        family: contribution or loss (REWARD_FAMILIES).
        mode: shaped, simplified or sparse (CONTRIBUTION_MODES); contribution
            family only, so the loss family requires the default shaped.
        contribution_weight: reward per accuracy point of contribution per step (shaped); 0.1
            makes a seed worth one point pay 0.1 a step, the scale of the other terms.
        pbrs_weight: scale of the stage potentials Φ (shaped, simplified); 0.1 makes a full
            lifecycle (5 rungs) worth 0.5, half what one point of contribution earns over the
            10 steps a lifecycle takes at least (``MIN_LIFECYCLE_EPOCHS``).
        rent_weight: cost per step of growing the model by 100% of the host's parameters
            (shaped, loss); 1.0 means a seed adding 10% parameters must contribute 1 point
            (at the default contribution weight) to pay its way.
        rent_basis: which parameters pay rent (shaped, loss; RENT_BASES): ``active`` every one
            in the forward pass, ``blended`` each seed's α-weighted share.
        action_cost: cost of an accepted op other than WAIT (simplified); 0.01 discourages
            churn without drowning the terminal bonus.
        refused_cost: cost of a refused op (simplified), instead of action_cost; 0.05,
            five times higher, because a refused op wastes a step and signals a bad policy.
        terminal_weight: bonus per unit of final validation accuracy fraction (simplified,
            sparse); 1.0 puts the bonus in [0, 1].
        panic_penalty: cost of an episode ended by a governor panic (every family); 1.0 equals
            the largest possible terminal bonus, so dying never beats finishing.
        loss_weight: reward per unit of validation-loss decrease (loss); 10.0 makes a 0.01 drop
            in cross-entropy worth 0.1, like one point of contribution.

    Raises:
        ValueError: for an unknown family or mode, a mode given to the loss family, or a
            weight that is negative or not finite.
    """

    family: str = "contribution"
    mode: str = _DEFAULT_MODE
    contribution_weight: float = 0.1
    pbrs_weight: float = 0.1
    rent_weight: float = 1.0
    rent_basis: str = "active"
    action_cost: float = 0.01
    refused_cost: float = 0.05
    terminal_weight: float = 1.0
    panic_penalty: float = 1.0
    loss_weight: float = 10.0

    def __post_init__(self) -> None:
        require(
            self.family in REWARD_FAMILIES,
            f"unknown reward family {self.family!r}; accepted: {list(REWARD_FAMILIES)}",
        )
        require(
            self.mode in CONTRIBUTION_MODES,
            f"unknown reward mode {self.mode!r}; accepted: {list(CONTRIBUTION_MODES)}",
        )
        require(
            self.family != "loss" or self.mode == _DEFAULT_MODE,
            f"reward mode {self.mode!r} applies to the contribution family only; "
            f"the loss family has no modes (leave mode at {_DEFAULT_MODE!r})",
        )
        require(
            self.rent_basis in RENT_BASES,
            f"unknown reward.rent_basis {self.rent_basis!r}; accepted: {list(RENT_BASES)}",
        )
        for name in (f.name for f in fields(self) if f.name.endswith(_WEIGHT_SUFFIXES)):
            check_float(f"reward.{name}", getattr(self, name), 0.0, MAX_WEIGHT)
        self._check_read()

    def _check_read(self, named: Collection[str] = ()) -> None:
        """A setting changed from its default, or ``named`` (given as a flag, e.g.
        ``rent_weight``, even at its default), must be read by this reward: one that no
        component of it reads would do nothing (``--reward.loss-weight 99`` on the contribution
        family was accepted without a word)."""
        defaults = RewardConfig.__dataclass_fields__
        for name, component in FIELD_COMPONENTS.items():
            value, default = getattr(self, name), defaults[name].default
            if component in self.component_names or (value == default and name not in named):
                continue
            readers = [r for r, names in _COMPONENTS_OF.items() if component in names]
            advice = f"leave it at {default!r}" if value != default else "drop it"
            raise ValueError(
                f"reward.{name} = {value!r} does nothing in the {self.kind} reward (it weighs the "
                f"{component} component, which only the {' and '.join(readers)} "
                f"reward{'s have' if len(readers) > 1 else ' has'}); {advice}"
            )

    def check_named(self, named: Collection[str]) -> None:
        """``_check_read`` for the settings a command line names (``reward.rent_weight``):
        one this reward does not read is refused even at its default value, as the growth
        commands refuse another mode's settings.

        Raises:
            ValueError: naming the setting and the rewards that read it.
        """
        self._check_read({n.removeprefix("reward.") for n in named if n.startswith("reward.")})

    @property
    def component_names(self) -> tuple[str, ...]:
        """The names of this reward's components, in breakdown order."""
        return _COMPONENTS_OF[self.kind]

    @property
    def kind(self) -> str:
        """Which reward this is: ``loss``, or ``contribution/`` and its mode."""
        return "loss" if self.family == "loss" else f"contribution/{self.mode}"


@dataclass(frozen=True)
class RewardInput:
    """Everything the reward of one step may depend on.

    Attributes:
        action: the action taken this step.
        accepted: whether the environment accepted it (a refused action is a no-op).
        before: seed reports of every enabled slot before the step.
        after: seed reports of the same slots after the step.
        val_accuracy_before: validation accuracy before the step, percent.
        val_accuracy_after: validation accuracy after the step, percent (may be NaN after a
            panic).
        val_loss_before: validation loss before the step.
        val_loss_after: validation loss after the step (may be NaN after a panic).
        active_params: parameters in the forward pass after the step (host and seeds).
        host_params: parameters of the host alone.
        terminated: the step ended the episode by a governor panic.
        truncated: the step reached the episode length.
        epoch: steps completed after this one (1 after the first step).
        max_epochs: the episode length; truncation happens at ``epoch == max_epochs``.

    Raises:
        ValueError: a flag that is not a bool or a count that is not an integer, or if
            ``before`` and ``after`` cover different slots, ``host_params`` < 1,
            ``active_params`` < ``host_params``, ``epoch`` is outside [0, ``max_epochs``], or
            ``truncated`` is set before ``epoch == max_epochs``.
    """

    action: Action
    accepted: bool
    before: Mapping[str, SeedStateReport]
    after: Mapping[str, SeedStateReport]
    val_accuracy_before: float
    val_accuracy_after: float
    val_loss_before: float
    val_loss_after: float
    active_params: int
    host_params: int
    terminated: bool
    truncated: bool
    epoch: int
    max_epochs: int

    def __post_init__(self) -> None:
        for flag in ("accepted", "terminated", "truncated"):  # "no" paid the panic penalty
            check_bool(flag, getattr(self, flag))
        for count in ("active_params", "host_params", "epoch", "max_epochs"):
            check_int(count, getattr(self, count), 0, MAX_INT64)
        require(
            set(self.before) == set(self.after),
            f"before and after must report the same slots, got {sorted(self.before)} "
            f"and {sorted(self.after)}",
        )
        require(self.host_params >= 1, f"host_params must be >= 1, got {self.host_params}")
        require(
            self.active_params >= self.host_params,
            f"active_params ({self.active_params}) counts the host, so it must be >= "
            f"host_params ({self.host_params})",
        )
        require(
            0 <= self.epoch <= self.max_epochs,
            f"epoch must be in [0, {self.max_epochs}], got {self.epoch}",
        )
        require(
            not self.truncated or self.epoch == self.max_epochs,
            f"truncated is the episode length being reached (epoch == max_epochs == "
            f"{self.max_epochs}), got epoch {self.epoch}",
        )


@dataclass(frozen=True)
class RewardBreakdown:
    """A step's reward and its named terms.

    Attributes:
        total: the reward, exactly ``sum`` of the component values in order.
        components: ``(name, value)`` pairs in the family/mode's fixed order.

    Raises:
        ValueError: if ``total`` is not that sum or a value is not finite.
    """

    total: float
    components: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        values = [value for _, value in self.components]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"reward components must be finite, got {self.components}")
        if self.total != sum(values):
            raise ValueError(f"total {self.total} is not the sum of {self.components}")

    @classmethod
    def of(cls, components: tuple[tuple[str, float], ...]) -> RewardBreakdown:
        """A breakdown whose total is the sum of ``components``."""
        return cls(sum(value for _, value in components), components)


def _finite_or_zero(value: float) -> float:
    """A term computed from unmeasurable metrics is 0 (absent), never NaN."""
    return value if math.isfinite(value) else 0.0


class RewardFunction:
    """Computes the reward of each step for one ``RewardConfig``.

    Args:
        config: family, mode and weights.
        gamma: the PPO discount, used by the PBRS term (see ``check_gamma``).
        final_potential: whether Φ of the state a full-length episode ends in counts
            (``ppo.horizon`` ``truncation``, where PPO bootstraps there); else it is 0 there,
            as at a termination, and the shaping telescopes to −Φ(s_0) over any episode.

    Raises:
        ValueError: if ``gamma`` is not in (0, 1].
    """

    def __init__(self, config: RewardConfig, gamma: float, final_potential: bool = True) -> None:
        check_float("gamma", gamma, 0.0, 1.0, strict_low=True)
        self.config = config
        self.gamma = gamma
        self.final_potential = final_potential
        self.component_names = config.component_names

    def potential(self, reports: Mapping[str, SeedStateReport]) -> float:
        """Φ(s) = pbrs_weight · Σ over slots of ``STAGE_POTENTIALS[stage]``."""
        return self.config.pbrs_weight * sum(STAGE_POTENTIALS[r.stage] for r in reports.values())

    def __call__(self, inp: RewardInput) -> RewardBreakdown:
        """The reward of one step, split into the family/mode's named components."""
        terms = {
            "contribution": self._contribution(inp),
            "pbrs": self._shaping(inp),
            "rent": self._rent(inp),
            "action_cost": self._action_cost(inp),
            "terminal": self._terminal(inp),
            "loss_delta": self._loss_delta(inp),
            "panic": -self.config.panic_penalty if inp.terminated else 0.0,
        }
        return RewardBreakdown.of(tuple((name, terms[name]) for name in self.component_names))

    def _contribution(self, inp: RewardInput) -> float:
        if inp.terminated:
            return 0.0
        measured = [
            c
            for r in inp.after.values()
            if r.stage in _CONTRIBUTING_STAGES
            and (c := r.counterfactual_contribution) is not None
            and math.isfinite(c)
        ]
        return self.config.contribution_weight * sum(measured)

    def _shaping(self, inp: RewardInput) -> float:
        ended = inp.terminated or (inp.truncated and not self.final_potential)
        next_potential = 0.0 if ended else self.potential(inp.after)
        return self.gamma * next_potential - self.potential(inp.before)

    def _rent(self, inp: RewardInput) -> float:
        if self.config.rent_basis == "blended":
            grown = sum(r.alpha * r.seed_param_count for r in inp.after.values())
        else:
            grown = inp.active_params - inp.host_params
        return 0.0 - self.config.rent_weight * grown / inp.host_params  # no rent: 0.0, not -0.0

    def _action_cost(self, inp: RewardInput) -> float:
        if inp.action.op is Op.WAIT:
            return 0.0
        return -(self.config.action_cost if inp.accepted else self.config.refused_cost)

    def _terminal(self, inp: RewardInput) -> float:
        if inp.terminated or not inp.truncated:
            return 0.0
        return _finite_or_zero(self.config.terminal_weight * inp.val_accuracy_after / _PERCENT)

    def _loss_delta(self, inp: RewardInput) -> float:
        if inp.terminated:
            return 0.0
        return _finite_or_zero(
            -self.config.loss_weight * (inp.val_loss_after - inp.val_loss_before)
        )


def check_gamma(reward: RewardFunction, ppo_gamma: float) -> None:
    """Check that PBRS uses the PPO discount, without which shaping can change the optimum.

    Raises:
        ValueError: naming both values when ``reward.gamma`` differs from ``ppo_gamma``.
    """
    require(
        reward.gamma == ppo_gamma,
        f"the reward's PBRS gamma ({reward.gamma}) differs from the PPO gamma ({ppo_gamma}); "
        "potential-based shaping preserves the optimal policy only with the same discount",
    )
