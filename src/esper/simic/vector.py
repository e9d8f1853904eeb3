"""Environments stepped in lockstep, and the device map (DESIGN §5).

``VectorEnv`` advances every environment one step per call, and runs a round of them
(``collect``: the policy acting for each before every step, ``esper.simic.acting``).
``--devices`` maps environments to devices round-robin; on CUDA each environment steps inside
its own stream so its kernels queue independently of the others'.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

import torch

from esper.kasmina import CNNHost
from esper.kasmina.grouped import activation_bytes
from esper.leyline import Action, Observation, Topology
from esper.leyline.config import MAX_INT64, check_int, require
from esper.simic.acting import RoundPolicy, Trajectory, collect
from esper.simic.env import GrowthEnv, reset_envs, step_envs
from esper.simic.protocol import Emit, Env, EnvStep, EpisodeInfo
from esper.tolaria.engine import autocast_dtype
from esper.tolaria.episode import Episode


def parse_device(name: str) -> torch.device:
    """A device name from the command line: ``cpu``, ``cuda`` (the first visible GPU, which is
    a Ray actor's own) or ``cuda:N``, checked to exist.

    Raises:
        ValueError: naming the bad device and the available ones.
    """
    n_cuda = torch.cuda.device_count()
    available = ["cpu", *(["cuda"] if n_cuda else []), *(f"cuda:{i}" for i in range(n_cuda))]
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and n_cuda:
        return torch.device("cuda", 0)
    prefix = "cuda:"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        index = int(name[len(prefix) :])
        if index < n_cuda:
            return torch.device("cuda", index)
    raise ValueError(f"unknown or unavailable device {name!r}; available: {', '.join(available)}")


def assign_devices(n_envs: int, devices: Sequence[str]) -> tuple[torch.device, ...]:
    """Environment ``i`` goes to ``devices[i % len(devices)]``.

    Raises:
        ValueError: for an unavailable device, a device named twice, no device, or a
            negative count.
    """
    check_int("n_envs", n_envs, 0, MAX_INT64)
    require(len(devices) > 0, "devices must name at least one device, got none")
    parsed = [parse_device(d) for d in devices]
    require(len(set(parsed)) == len(parsed), f"devices must be distinct, got {list(devices)}")
    return tuple(parsed[i % len(parsed)] for i in range(n_envs))


def describe_device_map(assigned: Sequence[torch.device]) -> str:
    """One line per device: which environments run there (what ``esper ppo`` prints)."""
    groups: dict[str, list[int]] = {}
    for i, device in enumerate(assigned):
        groups.setdefault(str(device), []).append(i)
    return "\n".join(f"{d}: {envs_named(ids)}" for d, ids in groups.items())


def envs_named(ids: Sequence[int]) -> str:
    """``env 0`` or ``envs 0, 2, 4``: environments by index, as the device map and the Ray
    workers' lines name them (``envs 0`` read as none)."""
    return f"env {ids[0]}" if len(ids) == 1 else f"envs {', '.join(map(str, ids))}"


CPU_CHUNK = 4
"""Growth environments per grouped chunk on a CPU, for hosts small enough to gain from it."""

CPU_GROUP_MAX_BYTES = 2 * 2**20
"""Largest per-environment activation (``activation_bytes``) grouped on a CPU. Measured
(``benchmarks/envs.py``, 1 thread): the 390-parameter impaired Fashion-MNIST host (1.6 MiB) trains
1.03-1.10x faster in chunks of 4 than one by one, and its PPO rounds 0.98-1.19x (1.3-1.4x before
its first block ran in closed form, ``kasmina.hosts.one_channel_blocks``; 1.6-2.2x before the
one-by-one path gained the one-channel product); ``CNNHost(8)`` (3.2 MiB) and wider hosts are
memory-bound, and grouping them ran 0.7-1.1x: they train one by one. Under bfloat16
(``HostTraining.precision``) activations take half the bytes: ``CNNHost(8)`` (1.6 MiB) then
trains 8 environments 1.2-1.5x faster in chunks of 4 than float32 one by one, while
``CNNHost(16)`` (3.2 MiB) grouped ran 0.7x its one by one, so it still trains one by one
(2026-12-04, docs/benchmarks.md)."""


def chunk_size(envs: Sequence[GrowthEnv], device: torch.device) -> int:
    """Environments per grouped chunk: on CUDA all of them, one large grouped batch; on a CPU
    ``CPU_CHUNK`` for small hosts and 1 (no grouping) for hosts too large to gain."""
    return len(envs) if device.type == "cuda" else cpu_chunk(envs[0].episode)


def cpu_chunk(episode: Episode) -> int:
    """Episodes like ``episode`` per grouped chunk on a CPU: ``CPU_CHUNK`` for small CNN
    hosts, 1 (no grouping) for other hosts and hosts too large to gain."""
    batch = episode.training.batch_size or 1
    model = episode.initial_model
    if not isinstance(model.host, CNNHost):
        return 1
    dtype = autocast_dtype(episode.training.precision)
    return 1 if activation_bytes(model, batch, dtype) > CPU_GROUP_MAX_BYTES else CPU_CHUNK


class VectorEnv:
    """``n`` environments advanced together.

    Growth environments (``GrowthEnv``) on one device train their epochs together, in chunks of
    ``chunk_size`` environments that each run as one grouped computation
    (``esper.simic.env.step_envs``); any other environment steps on its own, on its device's
    CUDA stream.

    Args:
        envs: the environments (each already knows its device).
        devices: the device of each environment.
        emit: where the policy's decisions go when ``collect`` runs a round (the environments
            emit their own telemetry).
        chunk: environments per grouped chunk instead of the measured default (``chunk_size``);
            1 trains them one by one (the benchmark's sequential baseline).
        indices: each environment's index in the run (default ``0 … n-1``; a Ray worker holds
            a chunk of them): its telemetry context and its acting generator's seed.
    """

    def __init__(
        self,
        envs: Sequence[Env],
        devices: Sequence[torch.device],
        emit: Emit,
        chunk: int | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        require(len(envs) == len(devices), f"{len(envs)} environments but {len(devices)} devices")
        require(bool(envs), "VectorEnv needs at least one environment")
        self.envs = list(envs)
        self.devices = tuple(devices)
        self.emit = emit
        self.indices = tuple(range(len(envs)) if indices is None else indices)
        require(len(self.indices) == len(envs), f"{len(self.indices)} indices for {len(envs)}")
        if chunk is not None:  # True or 2.5 were taken here and refused only at reset
            check_int("chunk", chunk, 1, MAX_INT64)
        self.chunk = chunk
        topologies = {env.topology for env in envs}
        require(len(topologies) == 1, f"environments must share one topology, got {topologies}")
        self.topology: Topology = envs[0].topology
        self.max_steps = max(env.max_steps for env in envs)
        self.streams: list[torch.cuda.Stream | None] = [
            torch.cuda.Stream(device=d) if d.type == "cuda" else None  # type: ignore[no-untyped-call]
            for d in devices
        ]

    def __len__(self) -> int:
        return len(self.envs)

    def _on_stream(self, i: int) -> AbstractContextManager[Any]:
        stream = self.streams[i]
        return torch.cuda.stream(stream) if stream is not None else nullcontext()

    def _join(self) -> None:
        for stream in self.streams:
            if stream is not None:
                stream.synchronize()

    def _growth(self, which: Sequence[int]) -> dict[torch.device, list[int]] | None:
        """``which`` environments by device when they are all growth environments, else None."""
        if not all(isinstance(self.envs[i], GrowthEnv) for i in which):
            return None
        groups: dict[torch.device, list[int]] = {}
        for i in which:
            groups.setdefault(self.devices[i], []).append(i)
        return groups

    def _chunk(self, envs: Sequence[GrowthEnv], device: torch.device) -> int:
        return chunk_size(envs, device) if self.chunk is None else self.chunk

    def reset(self) -> list[Observation]:
        """Reset every environment."""
        groups = self._growth(range(len(self.envs)))
        if groups is not None:
            first: dict[int, Observation] = {}
            for device, ids in groups.items():
                envs = [cast(GrowthEnv, self.envs[i]) for i in ids]
                first.update(zip(ids, reset_envs(envs, self._chunk(envs, device)), strict=True))
            return [first[i] for i in range(len(self.envs))]
        observations = []
        for i, env in enumerate(self.envs):
            with self._on_stream(i):
                observations.append(env.reset())
        self._join()
        return observations

    def step(self, actions: Sequence[Action | None]) -> list[EnvStep | None]:
        """Step every environment whose action is not None (None: its episode is over)."""
        if len(actions) != len(self.envs):
            raise ValueError(f"{len(actions)} actions for {len(self.envs)} environments")
        live = [i for i, action in enumerate(actions) if action is not None]
        groups = self._growth(live)
        if groups is not None:
            stepped: list[EnvStep | None] = [None] * len(self.envs)
            for device, ids in groups.items():
                envs = [cast(GrowthEnv, self.envs[i]) for i in ids]
                chosen = [cast(Action, actions[i]) for i in ids]
                done = step_envs(envs, chosen, self._chunk(envs, device))
                for i, result in zip(ids, done, strict=True):
                    stepped[i] = result
            return stepped
        results: list[EnvStep | None] = []
        for i, (env, action) in enumerate(zip(self.envs, actions, strict=True)):
            if action is None:
                results.append(None)
                continue
            with self._on_stream(i):
                results.append(env.step(action))
        self._join()
        return results

    def collect(self, policy: RoundPolicy) -> list[Trajectory]:
        """One episode in every environment, ``policy`` acting for each (``acting.collect``)."""
        return collect(self, policy, self.emit)

    def episode_infos(self) -> list[EpisodeInfo]:
        """Each environment's current (or last) episode outcome."""
        return [env.episode_info() for env in self.envs]

    def state_dicts(self) -> list[dict[str, Any]]:
        """Each environment's state (taken between rounds)."""
        return [env.state_dict() for env in self.envs]

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> None:
        """Restore ``state_dicts`` output.

        Raises:
            ValueError: when the number of states is not the number of environments.
        """
        n, n_saved = len(self.envs), len(states)
        require(n_saved == n, f"checkpoint has {n_saved} environments, this run {n}")
        for env, state in zip(self.envs, states, strict=True):
            env.load_state_dict(state)
