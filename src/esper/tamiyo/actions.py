"""The factored action space: five heads, their masks, and the map to and from ``Action``.

An action is one index per head of ``HEADS``: ``op``, ``slot``, ``blueprint``, ``tempo`` and
``alpha_target``. Only the heads an op needs count (``RELEVANT_HEADS``, derived from Leyline's
``OP_ARGUMENTS``): the others still carry an index, but the policy gives them no log-probability,
no gradient and no entropy credit (causal masking, DESIGN §4).

Masks come from the seed reports alone and Leyline's lifecycle tables (DESIGN §2):

* WAIT is always valid; any other op is valid iff at least one enabled slot is valid for it;
* a slot is valid for an op iff its stage is in ``OP_STAGES[op]`` (GERMINATE also needs an
  offered blueprint). Gates may still refuse a valid ADVANCE or FOSSILIZE; the mask only rules
  out what the lifecycle forbids outright;
* the slot mask has one row per op (row k: slots valid for op k). The row of an op with no valid
  slot (WAIT, or an op that is itself masked) is all False; the policy never samples the slot head
  from such a row for a relevant head, since the op that would need it cannot be chosen;
* the blueprint mask allows the blueprints the observation offers; every tempo and α target is
  always allowed;
* with ``auto_advance`` (``HostTraining.auto_advance``: the engine advances every seed whose
  gate passes) ADVANCE is always masked: it stays in the op head, so networks keep their shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from esper.kasmina import blueprint_registry
from esper.leyline import OP_ARGUMENTS, OP_STAGES, Action, Observation, Op, Topology
from esper.leyline.config import is_number
from esper.leyline.events import PolicyDecision
from esper.tamiyo.features import FEATURE_SLOTS, aligned_reports

HEADS: tuple[str, ...] = ("op", "slot", "blueprint", "tempo", "alpha_target")
"""The action heads, in the order of every ``(…, 5)`` action tensor."""

TEMPOS: tuple[int, ...] = (1, 3, 5, 8)
"""α ramp lengths in epochs: a jump, fast, the default (``DEFAULT_BLEND_TEMPO``), and slow."""

ALPHA_TARGETS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
"""α targets: quarter steps up to a full blend (0 is PRUNE's job, not a target)."""

RELEVANT_HEADS: dict[Op, tuple[str, ...]] = {op: ("op", *OP_ARGUMENTS[op]) for op in Op}
"""The heads each op reads: ``op`` itself and the ``Action`` fields it needs."""

_RELEVANCE = torch.tensor([[head in RELEVANT_HEADS[op] for head in HEADS] for op in Op])
"""(n_ops, 5) bool: row k says which heads op k reads; rows follow ``tuple(Op)``."""


def head_relevance(op_index: Tensor) -> Tensor:
    """Which heads count for each chosen op (causal masking).

    Args:
        op_index: ``(…)`` long, indices into ``tuple(Op)``.

    Returns:
        ``(…, 5)`` bool on ``op_index``'s device, in ``HEADS`` order.
    """
    return _relevance_on(op_index.device)[op_index]


@functools.cache
def _relevance_on(device: torch.device) -> Tensor:
    """``_RELEVANCE`` on ``device``, copied there once: a copy per acting step would make the
    host wait for a GPU at every step."""
    return _RELEVANCE.to(device)


@dataclass(frozen=True)
class ActionMasks:
    """Boolean masks of valid choices per head (True = allowed).

    Attributes:
        op: ``(…, n_ops)``.
        slot: ``(…, n_ops, n_slots)``; row k holds the slots valid for op k.
        blueprint: ``(…, n_blueprints)``.
        tempo: ``(…, n_tempos)``.
        alpha_target: ``(…, n_alpha_targets)``.
    """

    op: Tensor
    slot: Tensor
    blueprint: Tensor
    tempo: Tensor
    alpha_target: Tensor

    def __post_init__(self) -> None:
        batch = self.op.shape[:-1]
        for f in fields(self):
            mask: Tensor = getattr(self, f.name)
            if mask.dtype is not torch.bool:
                raise ValueError(f"mask {f.name!r} must be bool, got {mask.dtype}")
            lead = mask.shape[:-2] if f.name == "slot" else mask.shape[:-1]
            if lead != batch:
                raise ValueError(
                    f"mask {f.name!r} has batch shape {tuple(lead)}, op has {tuple(batch)}"
                )
        if self.slot.shape[-2] != self.op.shape[-1]:
            raise ValueError(
                f"slot mask has {self.slot.shape[-2]} op rows for {self.op.shape[-1]} ops"
            )

    @staticmethod
    def stack(masks: Sequence[ActionMasks]) -> ActionMasks:
        """Stack masks along a new leading batch dimension (``(…)`` -> ``(B, …)``).

        Raises:
            ValueError: for an empty sequence.
        """
        if not masks:
            raise ValueError("cannot stack an empty sequence of ActionMasks")
        return ActionMasks(
            **{
                f.name: torch.stack([getattr(m, f.name) for m in masks])
                for f in fields(ActionMasks)
            }
        )

    def map(self, fn: Callable[[Tensor], Tensor]) -> ActionMasks:
        """The masks with ``fn`` applied to each one (indexing, transposing, moving)."""
        return ActionMasks(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> ActionMasks:
        """The same masks on ``device``."""
        return self.map(lambda t: t.to(device))


def _label(choice: object) -> str:
    """An option as telemetry writes it: an op by its name, anything else as text."""
    return choice.value if isinstance(choice, Op) else str(choice)


class ActionSpace:
    """The factored action space of one host topology.

    Args:
        topology: the host kind; it fixes the blueprint head (registry order).
        auto_advance: the environment advances seeds itself (``HostTraining.auto_advance``):
            ADVANCE is masked out everywhere.

    Attributes:
        ops: every ``Op``, in enum order (the op head).
        slots: ``FEATURE_SLOTS`` (the slot head).
        blueprints: ``blueprint_registry.names(topology)`` (the blueprint head).
        tempos: ``TEMPOS``.
        alpha_targets: ``ALPHA_TARGETS``.
    """

    def __init__(self, topology: Topology, auto_advance: bool = False) -> None:
        self.topology = topology
        self.auto_advance = auto_advance
        self.ops: tuple[Op, ...] = tuple(Op)
        self.slots: tuple[str, ...] = FEATURE_SLOTS
        self.blueprints: tuple[str, ...] = blueprint_registry.names(topology)
        self.tempos: tuple[int, ...] = TEMPOS
        self.alpha_targets: tuple[float, ...] = ALPHA_TARGETS
        heads = (self.ops, self.slots, self.blueprints, self.tempos, self.alpha_targets)
        self._choices: dict[str, tuple[object, ...]] = dict(zip(HEADS, heads, strict=True))

    @property
    def head_sizes(self) -> dict[str, int]:
        """Number of choices per head, in ``HEADS`` order."""
        return {head: len(self._choices[head]) for head in HEADS}

    def masks(self, observation: Observation) -> ActionMasks:
        """The valid choices for ``observation`` (unbatched; see the module docstring).

        Raises:
            ValueError: for a report of a slot outside ``FEATURE_SLOTS`` or an offered
                blueprint this topology does not have.
        """
        reports = aligned_reports(observation.reports)  # FEATURE_SLOTS order
        slot = torch.zeros(len(self.ops), len(self.slots), dtype=torch.bool)
        for k, op in enumerate(self.ops):
            for j, report in enumerate(reports):
                slot[k, j] = report is not None and report.stage in OP_STAGES[op]
        for name in observation.blueprints:
            if name not in self.blueprints:
                raise ValueError(
                    f"offered blueprint {name!r} is not a {self.topology.value} blueprint; "
                    f"accepted: {list(self.blueprints)}"
                )
        blueprint = torch.tensor([name in observation.blueprints for name in self.blueprints])
        if not observation.blueprints:
            slot[self.ops.index(Op.GERMINATE)] = False  # nothing to germinate
        if self.auto_advance:
            slot[self.ops.index(Op.ADVANCE)] = False  # the engine advances on its own
        op_mask = slot.any(dim=-1)  # (n_ops,): an op is valid iff some slot is valid for it
        op_mask[self.ops.index(Op.WAIT)] = True
        return ActionMasks(
            op=op_mask,
            slot=slot,
            blueprint=blueprint,
            tempo=torch.ones(len(self.tempos), dtype=torch.bool),
            alpha_target=torch.ones(len(self.alpha_targets), dtype=torch.bool),
        )

    def decode(self, indices: Sequence[int], reason: str = "policy") -> Action:
        """The ``Action`` for one index per head; indices of irrelevant heads are ignored.

        Raises:
            ValueError: for a wrong number of indices, an index that is not an integer (1.9 was
                read as 1) or one out of its head's range.
        """
        if len(indices) != len(HEADS):
            raise ValueError(f"expected {len(HEADS)} indices ({HEADS}), got {list(indices)}")
        for head, i in zip(HEADS, indices, strict=True):
            if not is_number(i, integral=True):
                raise ValueError(f"{head} index must be an integer, got {i!r}")
        op_i, slot_i, blueprint_i, tempo_i, alpha_i = (
            self._checked(head, int(i)) for head, i in zip(HEADS, indices, strict=True)
        )
        needs = OP_ARGUMENTS[self.ops[op_i]]
        return Action(
            self.ops[op_i],
            slot=self.slots[slot_i] if "slot" in needs else None,
            blueprint=self.blueprints[blueprint_i] if "blueprint" in needs else None,
            tempo=self.tempos[tempo_i] if "tempo" in needs else None,
            alpha_target=self.alpha_targets[alpha_i] if "alpha_target" in needs else None,
            reason=reason,
        )

    def decision(
        self, masks: ActionMasks, indices: Sequence[int], epoch: int, log_prob: float, value: float
    ) -> PolicyDecision:
        """The telemetry event for one unbatched decision: chosen options and valid ones.

        Args:
            masks: the unbatched masks the policy acted under.
            indices: one index per head (``HEADS`` order).
            epoch: the environment's epoch when deciding.
            log_prob: joint log-probability of the relevant heads.
            value: the critic's estimate.
        """
        action = self.decode(indices)
        op = self.ops.index(action.op)
        chosen = tuple(
            (head, _label(self._choices[head][int(i)]))
            for head, i in zip(HEADS, indices, strict=True)
            if head in RELEVANT_HEADS[action.op]
        )

        def allowed(names: Sequence[object], mask: Tensor) -> tuple[str, ...]:
            return tuple(_label(n) for n, ok in zip(names, mask.tolist(), strict=True) if ok)

        return PolicyDecision(
            epoch,
            chosen,
            allowed(self.ops, masks.op),
            allowed(self.slots, masks.slot[op]),
            allowed(self.blueprints, masks.blueprint),
            log_prob,
            value,
        )

    def encode(self, action: Action) -> tuple[int, int, int, int, int]:
        """The head indices of ``action``; heads the op does not read get 0.

        Raises:
            ValueError: naming a slot, blueprint, tempo or α target the space does not have,
                with the accepted values.
        """
        index = [0] * len(HEADS)
        for i, head in enumerate(HEADS):
            if head not in RELEVANT_HEADS[action.op]:
                continue
            choices, value = self._choices[head], getattr(action, head)  # heads are Action fields
            if value not in choices:
                raise ValueError(
                    f"{action.op.value}: {head} {value!r} is not in the action space; "
                    f"accepted: {list(choices)}"
                )
            index[i] = choices.index(value)
        return index[0], index[1], index[2], index[3], index[4]

    def relevance(self, op_index: Tensor) -> Tensor:
        """``(…)`` op indices -> ``(…, 5)`` bool: which heads count (see ``head_relevance``)."""
        return head_relevance(op_index)

    def _checked(self, head: str, index: int) -> int:
        """``index`` if it is in range for ``head``; irrelevant heads are checked too."""
        choices = self._choices[head]
        if not 0 <= index < len(choices):
            raise ValueError(
                f"{head} index {index} out of range; accepted: 0..{len(choices) - 1} ({choices})"
            )
        return index
