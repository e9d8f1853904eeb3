"""Every seed a run uses, derived here from the run's ``--seed``, and the one seeding function
every entry point calls.

Esper's random streams each own a generator (so that one stream's draws never shift
another's); their seeds come from the functions below:

* an environment's episode ``k`` (``episode_seed``): its host's initialization, its seeds'
  initialization at germination and dropout (torch's generator of the episode's device) and,
  reduced to 32 bits (``low_seed``), its data order. A growth run is environment ``--seed``'s
  episode 1; environment ``i`` of a PPO run is ``--seed + i`` (``environment_seeds``), its
  round ``k``'s episode ``k``.
* a PPO run's policy (``policy_seed``): its initialization; its minibatch shuffling
  (``shuffle_seed``); each environment's sampling in each round (``acting_seed``).
* a growth run's random controller and bandit blueprint selector: a ``random.Random`` of their
  own, seeded with the run's ``--seed`` (``controller``).

``seed_everything`` seeds the global generators besides, for code outside these streams.
``run_seeds`` is what ``meta.json`` records of them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from typing import Any

import torch

EPISODE_SEED_STRIDE = 1_000_003
"""Episodes ``k`` of environments ``s`` and ``s + 1`` are seeded ``stride`` apart: far enough
that no run has that many episodes, prime so that runs' seeds interleave rather than meet."""

POLICY_SEED_OFFSET = 7919
"""The policy's initialization and shuffling generators use ``seed + offset`` and ``+ 1`` so
they never share a stream with environment 0 (which uses ``seed``)."""

_LOW = 2**32
"""Torch's CPU generator keeps a seed's low 32 bits (and a data stream takes 32-bit seeds)."""


def seed_everything(seed: int) -> None:
    """Seed Python's ``random`` and torch's global generators (CPU and every CUDA device).

    No stream of Esper's own draws from them (see the module's list, each seeded by its own
    function): this covers what other code draws from the global generators."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def stream_seed(name: str, *parts: int) -> int:
    """The seed of an independent random stream: ``name`` and integers (a run's seed, a round,
    an environment index …) hashed to 64 bits, so streams never collide the way ``seed + i``
    offsets can (environment ``i`` of one run and environment ``i - 1`` of the next seed)."""
    text = ":".join([name, *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def episode_seed(environment: int, episode: int) -> int:
    """The 63-bit seed of episode ``episode`` (1, 2, …) of the environment seeded
    ``environment``: CUDA's generator takes all of it, the CPU's its ``low_seed``."""
    return (environment * EPISODE_SEED_STRIDE + episode) % 2**63


def low_seed(seed: int) -> int:
    """``seed`` as torch's CPU generator keeps it (its low 32 bits): the data order's seed."""
    return seed % _LOW


def replayed_episode(seed: int, environments: Iterable[int]) -> tuple[int, int] | None:
    """A training episode a growth run of ``seed`` (its episode 1) would replay on the CPU:
    ``(environment, episode)`` among episodes 1 .. ``EPISODE_SEED_STRIDE`` of ``environments``
    whose ``low_seed`` is the run's (the same host and data order), or None. Beside the run's
    own seeds (episode 1) it finds seeds that meet a later episode only in the 32 bits torch's
    CPU generator keeps: ``--seed 2021759595`` replays episode 2 of environment 0.

    Every episode any run would reach is covered, whatever the rounds a PPO run has trained or
    will train when resumed; a random seed is refused with odds of about one in 4,300 per
    environment."""
    target = low_seed(episode_seed(seed, 1))
    for environment in environments:
        episode = (target - episode_seed(environment, 0)) % _LOW  # all but the top bits cancel
        if 1 <= episode <= EPISODE_SEED_STRIDE:
            return environment, episode
    return None


def environment_seeds(seed: int, n_envs: int) -> list[int]:
    """The seeds of a PPO run's environments: ``seed``, ``seed + 1``, …"""
    return [seed + i for i in range(n_envs)]


def policy_seed(seed: int) -> int:
    """A PPO run's policy initialization seed."""
    return seed + POLICY_SEED_OFFSET


def shuffle_seed(seed: int) -> int:
    """A PPO run's minibatch shuffling seed."""
    return policy_seed(seed) + 1


def acting_seed(policy: int, round_: int, env: int) -> int:
    """Environment ``env``'s sampling seed in PPO round ``round_`` (``policy``: the run's
    ``policy_seed``)."""
    return stream_seed("acting", policy, round_, env)


def run_seeds(seed: int, n_envs: int | None = None, *, drawing: bool = False) -> dict[str, Any]:
    """What ``meta.json`` records of a run's seeds: a growth run's (``n_envs`` None; with
    ``drawing``, its controller draws at random: the random controller, a bandit selector),
    or a PPO run's of ``n_envs`` environments, with how the per-round ones derive."""
    if n_envs is None:
        episode = episode_seed(seed, 1)
        seeds = {"run": seed, "episode": episode, "data_order": low_seed(episode)}
        return {**seeds, "controller": seed} if drawing else seeds
    return {
        "run": seed,
        "environments": environment_seeds(seed, n_envs),
        "episodes": "esper.seeding.episode_seed(environment, round)",
        "policy": policy_seed(seed),
        "shuffle": shuffle_seed(seed),
        "acting": "esper.seeding.acting_seed(policy, round, environment index)",
    }
