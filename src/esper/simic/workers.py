"""Environments on Ray actors: ``esper ppo --workers N`` (DESIGN §10).

``RayVectorEnv`` is an ``EnvVector`` whose environments live in ``N`` Ray actors
(``EnvWorker``), each holding a contiguous chunk of them in an in-process ``VectorEnv``. The
learner stays in the driver. Once per round it sends each actor the round's policy
(``acting.RoundPolicy``: weights and the observation statistics frozen for the round); the
actor runs its chunk's episodes, acting for them itself, streams the telemetry its
environments and decisions emit after every lockstep step (a Ray generator; the driver
re-emits step ``s`` of every actor once all have sent it, actor by actor), and ends with one
``Trajectory`` per environment (tensors). An actor builds
its environments exactly as ``build_trainer`` does (same seeds, same devices), and each
environment acts from its own generator, so every environment's trajectory equals the
in-process run's where the hosts are grouped alike.

Fault tolerance. The driver keeps each chunk's environment states from the start of the round
and the calls that changed them since. When an actor dies (``RayActorError``), a fresh actor is
built, loads those states and replays the calls, its replayed telemetry discarded (it was
emitted the first time); then the failed call is repeated: a round's episodes re-run from
their start, identically, and what the actor streamed before it died is not emitted again.
No transition is lost or duplicated. A round survives ``MAX_DEATHS`` deaths; the next one
fails the run with ``WorkerLostError``.

Ray is imported only inside this module's functions, and this module only when a run has
``runtime.workers`` set: runs without workers never import Ray.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch

from esper.data import load_dataset
from esper.leyline import Topology
from esper.leyline.config import require
from esper.leyline.events import Event
from esper.leyline.net import not_http2, unreachable
from esper.simic.acting import RoundPolicy, Trajectory, lockstep
from esper.simic.build import build_envs
from esper.simic.config import MAX_WORKERS_PER_GPU, TrainingConfig
from esper.simic.protocol import Emit
from esper.simic.vector import envs_named
from esper.tasks import get_task
from esper.tolaria.threads import threads_per_worker

logger = logging.getLogger(__name__)

MAX_DEATHS = 3
"""Actor deaths one round survives; the next one fails the run (something kills them all)."""

OBJECT_STORE_BYTES = 256 * 2**20
"""A local Ray instance's shared-memory object store: a round's policy and trajectories are a
few MB at most, and Ray's default (30 % of RAM) would reserve /dev/shm that other jobs on the
machine need."""

CONNECT_TIMEOUT_S = 5.0
"""How long a ``--ray-address`` may take to accept a connection before it counts as down."""

Emitted = list[tuple[Event, dict[str, Any]]]
"""Telemetry an actor's environments emitted, in order, with their context."""


class WorkerLostError(RuntimeError):
    """Ray actors kept dying: more than ``MAX_DEATHS`` in one round."""


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def chunks(n_envs: int, workers: int) -> list[range]:
    """``n_envs`` environment indices in ``workers`` contiguous chunks whose sizes differ by at
    most one (the first ``n_envs % workers`` chunks take one more)."""
    require(1 <= workers <= n_envs, f"{workers} workers for {n_envs} environments")
    size, extra = divmod(n_envs, workers)
    bounds = [k * size + min(k, extra) for k in range(workers + 1)]
    return [range(bounds[k], bounds[k + 1]) for k in range(workers)]


class EnvWorker:
    """One Ray actor's chunk of environments (run remotely; every method returns its value with
    the telemetry emitted since the last call; ``collect`` streams them, one pair per lockstep
    step, the trajectories last).

    Args:
        config: the run's resolved configuration (``env.threads``: this actor's torch threads).
        indices: which of the run's environments this actor steps.
    """

    def __init__(self, config: TrainingConfig, indices: range) -> None:
        self.config, self.indices = config, indices
        self.emitted: Emitted = []

    def _emit(self, event: Event, context: dict[str, Any]) -> None:
        self.emitted.append((event, context))

    def _out(self, value: Any) -> tuple[Any, Emitted]:
        emitted, self.emitted = self.emitted, []
        return value, emitted

    def build(self) -> tuple[tuple[Topology, int, list[str]], Emitted]:
        """Load the task's data and build the chunk's environments, as ``build_trainer`` does.

        Returns:
            (topology, longest episode, the GPUs Ray gave this actor) and the telemetry.
        """
        import ray

        config, training = self.config, self.config.env
        require(training.threads is not None, "a worker needs env.threads set")
        assert training.threads is not None
        torch.set_num_threads(training.threads)
        task = get_task(training.task)
        data = load_dataset(
            task.dataset, training.data_dir, download=training.download, progress=False
        )
        self.vec = build_envs(config, data, self._emit, self.indices)
        gpus = [str(g) for g in ray.get_gpu_ids()]
        return self._out((self.vec.topology, self.vec.max_steps, gpus))

    def pid(self) -> int:
        """This actor's process id."""
        return os.getpid()

    def collect(self, policy: RoundPolicy) -> Iterator[tuple[list[Trajectory] | None, Emitted]]:
        """A round of the chunk's environments (``acting.lockstep``), streamed: after the reset
        and after every step, ``None`` and the telemetry emitted since; last, the trajectories
        and the rest. The policy acts on the chunk's device, whichever device the learner's
        copy came from."""
        policy.network.to(self.vec.devices[0])  # this call's own unpickled copy
        steps = lockstep(self.vec, policy, self._emit)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                yield self._out(done.value)
                return
            yield self._out(None)

    def state_dicts(self) -> tuple[list[dict[str, Any]], Emitted]:
        """``VectorEnv.state_dicts`` of the chunk."""
        return self._out(self.vec.state_dicts())

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> tuple[None, Emitted]:
        """``VectorEnv.load_state_dicts`` of the chunk."""
        self.vec.load_state_dicts(states)
        return self._out(None)


Call = tuple[str, tuple[Any, ...]]
"""An ``EnvWorker`` method name and its arguments."""


class RayVectorEnv:
    """``ppo.n_envs`` environments on ``runtime.workers`` Ray actors (implements ``EnvVector``).

    Ray must be running (``start_ray``). Each actor requests ``env.threads`` CPUs from Ray and
    runs its environments with that many torch threads; with ``runtime.devices`` ``['cuda']``
    it also requests a GPU, or its share of one, where its environments run
    (``actor_resources``).

    Args:
        config: the resolved training configuration, with ``runtime.workers`` and ``env.threads``
            set.
        emit: where the actors' telemetry (their environments' events and the policy's
            decisions) is re-emitted, step by step and actor by actor.

    Attributes:
        topology: the environments' shared host kind.
        max_steps: the longest episode any of them can take.
        chunks: each actor's environment indices.

    Raises:
        ValueError: for bad devices, slots or data, as ``build_trainer`` (from the actors).
    """

    def __init__(self, config: TrainingConfig, emit: Emit) -> None:
        import ray

        workers, threads = config.runtime.workers, config.env.threads
        require(workers is not None and threads is not None, "workers and threads must be set")
        require(ray.is_initialized(), "Ray is not running (start_ray starts it)")
        assert workers is not None and threads is not None
        self._ray, self.emit, self.config = ray, emit, config
        self.chunks = chunks(config.ppo.n_envs, workers)
        self._actor = ray.remote(EnvWorker).options(**actor_resources(config), max_restarts=0)
        self._workers: list[Any] = [self._new_worker(k) for k in range(workers)]
        self._log: list[list[Call]] = [[] for _ in self.chunks]  # replays each actor's state
        self._deaths = 0  # this round's
        described = self._call("build", [()] * workers)
        self.topology: Topology = described[0][0]
        self.max_steps = max(steps for _, steps, _ in described)
        self.gpus: list[list[str]] = [gpus for _, _, gpus in described]

    def __len__(self) -> int:
        return self.config.ppo.n_envs

    def _new_worker(self, k: int) -> Any:
        return self._actor.remote(self.config, self.chunks[k])

    def _split(self, items: Sequence[Any]) -> list[tuple[Any, ...]]:
        """One argument tuple per actor: its chunk of ``items`` (one per environment)."""
        require(len(items) == len(self), f"{len(items)} values for {len(self)} environments")
        return [(list(items[r.start : r.stop]),) for r in self.chunks]

    def _call(self, method: str, args: Sequence[tuple[Any, ...]], log: bool = True) -> list[Any]:
        """``method`` on every actor at once (with its ``args``); each actor's value, after its
        telemetry was emitted in environment order. A dead actor is revived and asked again;
        ``log``: the call changes the environments (replayed on revival)."""
        ray = self._ray
        refs = [getattr(w, method).remote(*a) for w, a in zip(self._workers, args, strict=True)]
        values, emitted = [], []
        for k, ref in enumerate(refs):
            while True:
                try:
                    value, events = ray.get(ref)
                    break
                except ray.exceptions.RayTaskError as err:  # the environment's own error,
                    raise err.cause from err  # as itself (the remote traceback as its cause)
                except ray.exceptions.RayActorError as err:
                    self._revive(k, err)
                    ref = getattr(self._workers[k], method).remote(*args[k])
            if log:
                self._log[k].append((method, args[k]))
            values.append(value)
            emitted.extend(events)
        for event, context in emitted:
            self.emit(event, context)
        return values

    def _revive(self, k: int, error: Exception) -> None:
        """A fresh actor for chunk ``k``, brought to where the dead one was by replaying the
        logged calls (their telemetry discarded: it was emitted the first time).

        Raises:
            WorkerLostError: the ``MAX_DEATHS + 1``-th death this round.
        """
        ray = self._ray
        while True:
            self._deaths += 1
            r = self.chunks[k]
            if self._deaths > MAX_DEATHS:
                raise WorkerLostError(
                    f"Ray workers died {self._deaths} times this round (the last ran "
                    f"{envs_named(r)}): {_first_line(error)}"
                ) from error
            logger.warning("Ray worker of %s died; replaying", envs_named(r))
            ray.kill(self._workers[k], no_restart=True)
            self._workers[k] = self._new_worker(k)
            try:
                for method, args in self._log[k]:
                    call = getattr(self._workers[k], method).remote(*args)
                    for ref in call if isinstance(call, ray.ObjectRefGenerator) else [call]:
                        value, _ = ray.get(ref)
                    if method == "build":  # the new actor may have been given another GPU
                        self.gpus[k] = value[2]
                return
            except ray.exceptions.RayActorError as again:
                error = again

    def describe(self) -> str:
        """Each actor's environments, a line each, under its thread count (``esper ppo`` prints
        it)."""
        threads = self.config.env.threads
        lines = [
            f"worker {k}: {envs_named(r)}" + (f" on GPU {', '.join(g)}" if g else "")
            for k, (r, g) in enumerate(zip(self.chunks, self.gpus, strict=True))
        ]
        return f"Ray workers (torch threads each: {threads}):\n" + "\n".join(lines)

    def pids(self) -> list[int]:
        """Each actor's process id (a replaced actor has a new one)."""
        return [self._ray.get(w.pid.remote()) for w in self._workers]

    def collect(self, policy: RoundPolicy) -> list[Trajectory]:
        """A round: each actor gets ``policy`` once and runs its chunk's episodes. The
        environments' states before it are where a revival starts from, and the policy as it
        is now (put in Ray's object store: the trainer's network changes in place after the
        round) is what a revival replays them with."""
        self._deaths = 0
        states = self._call("state_dicts", [()] * len(self.chunks), log=False)
        self._log = [[("build", ()), ("load_state_dicts", (s,))] for s in states]
        frozen = self._ray.put(policy)  # one copy for every actor, and for any replay
        chunks = self._stream_round(frozen)
        for log in self._log:
            log.append(("collect", (frozen,)))
        return [t for chunk in chunks for t in chunk]

    def _stream_round(self, policy: Any) -> list[list[Trajectory]]:
        """Every actor's ``collect`` at once, its telemetry re-emitted as it streams in: the
        telemetry of lockstep step ``s`` once every actor has sent its step ``s`` (or finished),
        actor by actor, so the log's order does not depend on timing. A dead actor is revived
        and runs its round again from the start; what it sends again is not emitted twice."""
        ray = self._ray
        streams = {k: w.collect.remote(policy) for k, w in enumerate(self._workers)}
        received: list[list[Emitted]] = [[] for _ in self._workers]  # per actor, per pause
        repeated = [0] * len(self._workers)  # pauses the current attempt has sent
        done: dict[int, list[Trajectory]] = {}
        emitted = 0  # pauses whose telemetry went out
        while streams:
            [ready], _ = ray.wait(list(streams.values()), num_returns=1)
            k = next(k for k, stream in streams.items() if stream is ready)
            try:
                value, events = ray.get(next(ready))
            except ray.exceptions.RayTaskError as err:  # the environment's own error,
                raise err.cause from err  # as itself (the remote traceback as its cause)
            except ray.exceptions.RayActorError as err:
                self._revive(k, err)
                streams[k], repeated[k] = self._workers[k].collect.remote(policy), 0
                continue
            repeated[k] += 1
            if repeated[k] > len(received[k]):  # not sent by an earlier attempt
                received[k].append(events)
            if value is not None:
                done[k] = value
                del streams[k]
            while all(len(r) > emitted or j in done for j, r in enumerate(received)):
                if all(len(r) <= emitted for r in received):
                    break
                for r in received:
                    for event, context in r[emitted] if len(r) > emitted else ():
                        self.emit(event, context)
                emitted += 1
        return [done[k] for k in range(len(self._workers))]

    def state_dicts(self) -> list[dict[str, Any]]:
        """Each environment's state (taken between rounds)."""
        states = self._call("state_dicts", [()] * len(self.chunks), log=False)
        return [s for chunk in states for s in chunk]

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> None:
        """Restore ``state_dicts`` output.

        Raises:
            ValueError: when the number of states is not the number of environments.
        """
        n, n_saved = len(self), len(states)
        require(n_saved == n, f"checkpoint has {n_saved} environments, this run {n}")
        self._log = [[("build", ())] for _ in self.chunks]
        self._call("load_state_dicts", self._split(states))

    def close(self) -> None:
        """Stop the actors (Ray itself keeps running)."""
        for worker in self._workers:
            self._ray.kill(worker, no_restart=True)
        self._workers = []


# ------------------------------------------------------------------------------ Ray itself


def actor_resources(config: TrainingConfig) -> dict[str, float]:
    """What one ``EnvWorker`` reserves from Ray: ``env.threads`` CPUs, and, when the
    environments run on ``cuda``, ``1 / runtime.workers_per_gpu`` of a GPU (Ray then makes that
    GPU the only one the actor sees, and puts ``workers_per_gpu`` such actors on each)."""
    threads = config.env.threads
    require(threads is not None, "an actor's threads must be set (start_ray sets them)")
    assert threads is not None
    cuda = tuple(config.runtime.devices) == ("cuda",)
    return {"num_cpus": threads, "num_gpus": 1 / config.runtime.workers_per_gpu if cuda else 0}


def gpus_needed(config: TrainingConfig) -> int:
    """GPUs the run's actors reserve between them: one per ``runtime.workers_per_gpu`` actors
    with ``cuda`` (the last GPU may be shared by fewer), none on the CPU."""
    workers = config.runtime.workers or 0
    if tuple(config.runtime.devices) != ("cuda",):
        return 0
    return -(-workers // config.runtime.workers_per_gpu)


def start_ray(
    config: TrainingConfig, otherwise: str | None = None
) -> tuple[TrainingConfig, Callable[[], None]]:
    """Start a local Ray instance sized for ``runtime.workers`` actors, or join the cluster at
    ``runtime.ray_address``; a Ray session this process already runs is used as it is.
    ``otherwise``: what a user may do instead of starting a head at an address that does not
    answer (``join_ray``'s).

    Returns:
        ``config`` with ``env.threads`` set to each actor's torch thread count (the thread
        policy's, checked against the local cores or the cluster's CPUs), and the function that
        stops Ray again (it leaves a session this call did not start running).

    Raises:
        ValueError: one line: the cluster cannot be reached or joined, the workers' threads
            do not fit the cores, or (with ``--devices cuda``) Ray has fewer GPUs than the
            workers need (``gpus_needed``).
    """
    import ray

    workers = config.runtime.workers
    require(workers is not None, "start_ray needs runtime.workers")
    assert workers is not None
    if config.runtime.ray_address is None and not ray.is_initialized():
        threads = threads_per_worker(config.env.threads, workers)  # this machine's cores
        init_ray(num_cpus=workers * threads, object_store_memory=OBJECT_STORE_BYTES)
        stop = ray.shutdown
    else:
        stop = join_ray(config.runtime.ray_address, otherwise=otherwise)
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        cores = int(resources.get("CPU", 0))  # a cluster without CPUs has no such key
        try:
            require(cores > 0, f"the Ray cluster at {config.runtime.ray_address} has no CPUs")
            threads = threads_per_worker(config.env.threads, workers, cores, "the Ray cluster has")
        except ValueError:
            stop()
            raise
    config = replace(config, env=replace(config.env, threads=threads))
    # all of the cluster's GPUs, not the free ones: actors wait for busy GPUs, never for absent
    gpus = int(ray.cluster_resources().get("GPU", 0))  # type: ignore[no-untyped-call]
    wanted = gpus_needed(config)
    if wanted > gpus:
        stop()
        raise ValueError(_too_few_gpus(config, wanted, gpus))
    return config, stop


def _too_few_gpus(config: TrainingConfig, wanted: int, gpus: int) -> str:
    """The one line that refuses actors Ray has too few GPUs for, with what would fit."""
    workers, share = config.runtime.workers or 0, config.runtime.workers_per_gpu
    per = "one per actor" if share == 1 else f"one per {share} actors"
    shared = -(-workers // gpus) if gpus else 0  # the share that would fit them
    fitting = f"{gpus * share} worker{'s' if gpus * share != 1 else ''}"
    if not gpus:
        fix = "use --devices cpu"
    elif shared <= MAX_WORKERS_PER_GPU:
        fix = f"use at most {fitting}, or --workers-per-gpu {shared}"
    else:
        fix = f"use at most {fitting}"
    return (
        f"--devices cuda with {workers} worker{'s' if workers != 1 else ''} needs {wanted} "
        f"GPU{'s' if wanted != 1 else ''} ({per}), but Ray has {gpus} here; {fix}"
    )


def join_ray(
    address: str | None,
    flag: str = "--ray-address",
    log_to_driver: bool = True,
    otherwise: str | None = None,
) -> Callable[[], None]:
    """Connect to the cluster at ``address`` (given as ``flag``: ``esper study`` calls it
    ``--address``), or use the session this process already runs (an ``address`` must be
    reachable either way); returns how to leave it. ``log_to_driver``: whether the workers'
    output is printed by this process (Ray's default) or stays in Ray's logs. ``otherwise``:
    what the user may do instead of starting a head there (default: drop ``flag``).

    Raises:
        ValueError: one line: nothing answers at ``address`` (or where Ray will connect for
            it), or Ray cannot join it.
    """
    import ray

    if address is not None:
        _check_reachable(address, flag, otherwise or f"drop {flag}")
    if ray.is_initialized():
        return _leave_running
    assert address is not None
    try:
        init_ray(address=address, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, TimeoutError) as err:
        cause = "" if err.__cause__ is None else f": {_first_line(err.__cause__)}"
        token = os.environ.get("RAY_AUTH_MODE") != "token"  # else the hint is no use
        raise ValueError(
            f"cannot join the Ray cluster at {flag} {address}: {_first_line(err)}{cause}"
            + " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token "
            "here)" * token
        ) from err
    return ray.shutdown


def _check_reachable(address: str, flag: str, otherwise: str) -> None:
    """A Ray head answers at ``address`` (HOST:PORT), and at the address Ray connects to for
    it, each within ``CONNECT_TIMEOUT_S``: Ray's own connection attempts to a dead address
    retry for about 14 minutes. Ray connects to ``localhost``, ``127.0.0.1`` and ``::1`` at
    this machine's own address instead, where a forwarded port (``ssh -L``) or a server bound
    to the loopback interface alone does not answer."""
    from ray._private.services import canonicalize_bootstrap_address

    host, _, port = address.rpartition(":")
    _check_head(host, int(port), f"{flag} {address}", otherwise)
    dialled = canonicalize_bootstrap_address(address)  # host:port; the node's IP for loopback
    dialled_host = None if dialled is None else dialled.rpartition(":")[0]
    if dialled_host not in (None, host):
        assert dialled_host is not None
        where = f"{dialled}, which Ray connects to for {flag} {address}"
        otherwise = (
            f"give {flag} the address the head listens on (Ray replaces a loopback address with "
            "this machine's own)"
        )
        _check_head(dialled_host, int(port), where, otherwise)


def _check_head(host: str, port: int, where: str, otherwise: str) -> None:
    """Something speaking HTTP/2 (a Ray head's gRPC) answers at ``host:port``.

    Raises:
        ValueError: naming ``where`` and what to do (start a head, or ``otherwise``).
    """
    reason = unreachable(host, port, CONNECT_TIMEOUT_S)
    if reason is not None:
        raise ValueError(
            f"cannot reach a Ray cluster at {where} ({reason}); start one with "
            f"`ray start --head --port {port}` or {otherwise}"
        )
    if os.environ.get("RAY_USE_TLS", "0") in ("0", ""):  # a TLS head takes no plain preface
        reason = not_http2(host, port, CONNECT_TIMEOUT_S)
        if reason is not None:
            raise ValueError(
                f"{where} is not a Ray head's port: {reason}; a head started with "
                f"`ray start --head --port P` listens on P (a head using TLS needs RAY_USE_TLS=1 "
                "here too)"
            )


def _leave_running() -> None:
    """The stop of a Ray session someone else started: nothing."""


def init_ray(address: str = "local", **settings: Any) -> None:
    """``ray.init`` without the dashboard and Ray's INFO lines: a local Ray instance of this
    process's own, or the cluster at ``address`` (``join_ray``; only ``--ray-address`` or
    ``--address`` names one: a plain ``ray.init`` joined the cluster ``RAY_ADDRESS`` or a ``ray
    start`` on this machine named, and refused the CPU count, "When connecting to an existing
    cluster, num_cpus ... must not be provided").

    This process's SIGTERM handler stays (Ray replaces it with an exit; Esper's stops the run
    at a checkpoint), and so does its C-level one: Ray's failure signal handler (Abseil's,
    which dumps a native stack for SIGTERM too, then aborted the process when the signal came
    inside a blocking call) is not installed in this driver; its workers keep theirs.

    Ray's own SIGTERM handlers (an exit with status 15 and no word, from which a half-started
    node was never shut down) are not installed: this process's stay. A Ctrl-C, SIGTERM or
    SIGHUP while Ray starts its processes here waits until they have started (or failed to),
    then Ray is shut down and the signal is raised again for this process's handler: raised at
    once, it left a half-started Ray (its agents outlived the command, reparented to init) and
    at times a segmentation fault as the interpreter exited. Joining a cluster starts no
    process here: a signal then stops the join once Ray's client returns from its connection
    attempt (up to about 40 s where the head does not answer; the checks before it make that
    rare). Ray is shut down after any failure.

    Raises:
        whatever ``ray.init`` raises, or a held signal's handler (a Stop or KeyboardInterrupt).
    """
    import ray
    from ray._private import ray_constants
    from ray._private import utils as ray_utils

    # Read when this process's core worker starts, from the environment at Ray's import: set
    # here, it holds for this process only (a variable in os.environ would reach the workers).
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    handlers = {
        signum: signal.getsignal(signum)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        if signal.getsignal(signum) not in (signal.SIG_IGN, None)  # nohup's SIGHUP stays so
    }
    held: list[int] = []  # the signals that came while Ray started its processes
    if address == "local":
        for signum in handlers:
            signal.signal(signum, lambda signum, frame: held.append(signum))
    install = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        ray.init(address, include_dashboard=False, logging_level=logging.ERROR, **settings)
    except BaseException:
        ray.shutdown()  # what started or joined, half
        raise
    finally:
        ray_utils.set_sigterm_handler = install
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if held:  # raised over a failure too: the command was asked to stop
            ray.shutdown()
            signal.raise_signal(held[0])
