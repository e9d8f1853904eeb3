"""Slot names and the one function that orders them.

Every consumer that lists slots (features, masks, reports, UIs) goes through ``ordered_slots`` so
that "slot 0" means the same injection point everywhere, whatever order a dict or a user gave.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_MID_PREFIX = "mid_"


def slot_names(n_points: int) -> tuple[str, ...]:
    """Names for a host with ``n_points`` injection points, in execution order.

    Three-point hosts use ``early, mid, late``; two-point hosts ``early, late``; a one-point host
    ``late``; deeper hosts ``early, mid_1, …, mid_{n-2}, late``.

    Raises:
        ValueError: if ``n_points`` < 1.
    """
    if n_points < 1:
        raise ValueError(f"a host needs at least one injection point, got n_points={n_points}")
    if n_points == 1:
        return ("late",)
    if n_points == 2:
        return ("early", "late")
    if n_points == 3:
        return ("early", "mid", "late")
    return ("early", *(f"{_MID_PREFIX}{i}" for i in range(1, n_points - 1)), "late")


def check_slots(slots: Sequence[str], names: Sequence[str], host: str = "this host") -> None:
    """``slots`` name at least one slot, each one of ``names`` (the host's), else one line
    naming the unknown ones and the host's (``host``: how the message names it).

    Raises:
        ValueError: a string instead of a list, no slots, or a slot the host lacks.
    """
    if isinstance(slots, str):
        raise ValueError(f"slots must be a list of names, got the string {slots!r}")
    unknown = [s for s in slots if s not in names]
    if unknown or not slots:
        raise ValueError(f"unknown or no slots {unknown or list(slots)}; {host} has {list(names)}")


def _rank(name: str) -> int:
    if name == "early":
        return 0
    if name == "mid":
        return 1
    if name.startswith(_MID_PREFIX) and name[len(_MID_PREFIX) :].isdigit():
        index = int(name[len(_MID_PREFIX) :])
        if index >= 1:
            return index
    if name == "late":
        return 1 << 30  # after every mid_k
    raise ValueError(
        f"unknown slot name {name!r}; accepted: 'early', 'mid', 'mid_<k>' (k >= 1), 'late'"
    )


def ordered_slots(enabled: Iterable[str]) -> tuple[str, ...]:
    """Return the enabled slot names in execution order (early before mid before late).

    Raises:
        ValueError: for an unknown slot name or a name given twice.
    """
    names = list(enabled)
    if len(set(names)) != len(names):
        raise ValueError(f"slot names must be unique, got {names}")
    return tuple(sorted(names, key=_rank))
