"""The one seeding function every Esper entry point calls."""

from __future__ import annotations

import hashlib
import random

import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random`` and torch's global generators (CPU and every CUDA device).

    Data order does not depend on these: each environment's ``BatchStream`` owns a generator
    seeded from the run seed. What does depend on them: host initialization, seed (blueprint)
    initialization at germination, and dropout.
    """
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def stream_seed(name: str, *parts: int) -> int:
    """The seed of an independent random stream: ``name`` and integers (a run's seed, a round,
    an environment index …) hashed to 64 bits, so streams never collide the way ``seed + i``
    offsets can (environment ``i`` of one run and environment ``i - 1`` of the next seed)."""
    text = ":".join([name, *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
