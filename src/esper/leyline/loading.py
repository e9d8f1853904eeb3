"""Reading an untrusted torch file: what it can raise, and the one reader every loader uses."""

from __future__ import annotations

import io
import pickle
import struct
import warnings

import torch

TORCH_LOAD_ERRORS: tuple[type[Exception], ...] = (
    pickle.UnpicklingError,  # not a pickle, or one holding more than tensors and containers
    RuntimeError,  # the zip reader: cut, not a zip, corrupt header; a bad legacy magic number
    EOFError,  # an empty file, or one cut inside the pickle
    ValueError,  # a negative seek in a cut zip; UnicodeDecodeError in a corrupt pickled string
    OSError,  # the same negative seek on a real file
    KeyError,  # corrupt record ids inside the pickle
    IndexError,  # corrupt opcodes popping an empty pickle stack
    TypeError,  # a tensor record whose sizes or offsets were damaged
    AssertionError,  # the legacy (pre-1.6) format's own consistency checks
    struct.error,  # a legacy file cut inside a packed header
)
"""Exceptions ``torch.load(..., weights_only=True)`` raised on damaged or foreign bytes (empty,
cut at every length, random, bytes overwritten in zip and legacy files, foreign zips, plain
pickles) when tried; anything else is a bug and should surface."""


def load_untrusted(data: bytes) -> object:
    """``data`` read by ``torch.load`` onto the CPU with ``weights_only=True`` (tensors and
    containers only, never arbitrary objects).

    A TorchScript archive makes torch warn that it dispatches to ``torch.jit.load`` before it
    refuses the file; that warning is silenced so the refusal stays the one line a user sees.

    Raises:
        One of ``TORCH_LOAD_ERRORS`` for damaged or foreign bytes.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
        warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a plain pickle
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(_refusal(str(err))) from err


_WEIGHTS_ONLY = "Weights only load failed"
_DETAIL = "WeightsUnpickler error:"


def _refusal(message: str) -> str:
    """torch's refusal of what ``weights_only`` does not load, as Esper's reader says it: torch
    advises loading the file again with ``weights_only=False``, which can run arbitrary code
    (Esper never does); the detail it gives after ``_DETAIL`` is kept."""
    if not message.startswith(_WEIGHTS_ONLY):
        return message
    after = message.partition(_DETAIL)[2]
    detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
    shown = f": {detail}" if detail else ""
    return (
        f"torch's weights-only reader refused it{shown} (Esper unpickles tensors and "
        "containers only)"
    )
