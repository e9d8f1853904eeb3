"""The one seeding function every Esper entry point calls."""

from __future__ import annotations

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
