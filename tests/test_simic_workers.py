"""``esper ppo --workers N``: environments on Ray actors give the in-process run's rounds, survive
a killed actor, resume exactly, and Ray stays unimported without them.

One local Ray instance (2 CPUs) serves the module; ``start_ray`` uses a session the process
already runs, so the CLI runs below join it instead of starting their own.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from esper.cli.main import main
from esper.data import DatasetNotFoundError, make_synthetic
from esper.leyline import Action, Op
from esper.leyline.config import override, read_config_file
from esper.leyline.events import PPOUpdate
from esper.nissa import TelemetryHub
from esper.nissa.csvlog import read_rows
from esper.simic import workers
from esper.simic.build import build_envs, build_trainer
from esper.simic.config import TrainingConfig, load_preset
from esper.simic.training import PPOTrainer
from esper.simic.vector import VectorEnv
from esper.simic.workers import (
    RayVectorEnv,
    WorkerLostError,
    actor_resources,
    chunks,
    gpus_needed,
    start_ray,
)
from esper.study.run import read_policy

TINY = ["ppo", "--preset", "tiny"]
KILL_AFTER_S = 0.1
"""When an actor is killed after its round began: its tiny-preset episodes take longer (the
test checks that they did)."""
TIMING = {"t", "run_id", "seconds", "seconds_rollout", "seconds_update", "wall_seconds"}
RELATIVE_TOLERANCE = 1e-4
"""Two workers group the environments' hosts differently from the default in-process run (one
grouped chunk of both vs one each), which moves float32 results in their last bits (seen: 3e-8
in the policy weights). With the in-process grouping made the same, and with one worker, the
runs are compared bit for bit."""


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    signal.signal(signal.SIGTERM, sigterm)  # ray.init replaces it
    yield
    ray.shutdown()


def _events(run: Path) -> list[dict[str, Any]]:
    lines = (run / "events.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _rows(run: Path) -> list[dict[str, str]]:
    header, *lines = (run / "rounds.csv").read_text().splitlines()
    names = header.split(",")
    return [
        {k: v for k, v in zip(names, line.split(","), strict=True) if k not in TIMING}
        for line in lines
    ]


def _untimed(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in TIMING}


def _by_env(events: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Each environment's events, and the run's own (no ``env``), in their order."""
    split: dict[Any, list[dict[str, Any]]] = {}
    for event in events:
        split.setdefault(event.get("env"), []).append(event)
    return split


def _policy(run: Path) -> dict[str, torch.Tensor]:
    policy: dict[str, torch.Tensor] = read_policy(run).state["trainer"]["policy"]
    return policy


def _close(a: Any, b: Any) -> bool:
    """Equal, or (numbers, recursively) within ``RELATIVE_TOLERANCE``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str):
        try:
            a, b = float(a), float(b)
        except ValueError:
            return a == b
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-6)
    return bool(a == b)


def _differences(a: list[dict[str, str]], b: list[dict[str, str]]) -> list[str]:
    """Where two runs' ``rounds.csv`` rows are not ``_close``: round, column and both values."""
    return [
        f"row {i} {key}: {x.get(key)} vs {y.get(key)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        for key in dict.fromkeys([*x, *y])
        if key not in x or key not in y or not _close(x[key], y[key])
    ]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset run in this process with one torch thread (a worker's count)."""
    run = tmp_path_factory.mktemp("in-process") / "run"
    assert main([*TINY, "--threads", "1", "--out", str(run)]) == 0
    return run


def test_chunks_are_contiguous_and_differ_by_at_most_one() -> None:
    assert chunks(5, 2) == [range(0, 3), range(3, 5)]
    assert chunks(4, 4) == [range(k, k + 1) for k in range(4)]
    assert chunks(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]


def test_workers_and_ray_address_are_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[runtime]\nworkers = 2\nray_address = "127.0.0.1:6379"\n')
    config: TrainingConfig = override(load_preset("tiny"), read_config_file(path))
    assert (config.runtime.workers, config.runtime.ray_address) == (2, "127.0.0.1:6379")
    assert TrainingConfig().runtime.workers is None  # in-process by default


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (  # it said "[1, 2]" without saying why
            ["--workers", "3"],
            "runtime.workers 3 is more than ppo.n_envs 2: each worker steps at least one "
            "environment; give at most 2 workers or more environments",
        ),
        (["--workers", "0"], "runtime.workers must be an integer in [1, 256], got 0"),
        (["--ray-address", "127.0.0.1:6379"], "runtime.ray_address needs runtime.workers"),
        (["--workers", "1", "--ray-address", "head"], "runtime.ray_address must be HOST:PORT"),
        # These passed the form check and failed later: an idna UnicodeError for a label
        # longer than 63 characters or a non-ASCII host, "Connection refused; start one with
        # ray start --head --port 99999" for a port no TCP has.
        (["--workers", "1", "--ray-address", f"{'a' * 64}.x:6390"], "port 1..65535"),
        (["--workers", "1", "--ray-address", "hé.x:6390"], "must be HOST:PORT of a Ray head"),
        (["--workers", "1", "--ray-address", "127.0.0.1:99999"], "got '127.0.0.1:99999'"),
        (["--workers", "1", "--ray-address", "127.0.0.1:0"], "must be HOST:PORT of a Ray head"),
        (
            ["--workers", "1", "--devices", "cuda:0"],
            "runtime.devices must be ['cpu'] or ['cuda'] with workers (cuda: each actor gets a "
            "GPU, or a share of one, from Ray), got ['cuda:0']",
        ),
        (
            ["--workers", "1", "--devices", "cpu,cuda"],
            "runtime.devices must be ['cpu'] or ['cuda'] with workers",
        ),
        (
            ["--workers-per-gpu", "2"],
            "runtime.workers_per_gpu 2 needs runtime.workers and runtime.devices ['cuda']",
        ),
        (
            ["--workers", "2", "--workers-per-gpu", "2"],
            "runtime.workers_per_gpu 2 needs runtime.workers and runtime.devices ['cuda']",
        ),
        (
            ["--workers", "2", "--workers-per-gpu", "0"],
            "runtime.workers_per_gpu must be an integer in [1, 64], got 0",
        ),
    ],
)
def test_bad_worker_settings_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert main([*TINY, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not out.exists()


def test_an_unreachable_cluster_is_one_line(tmp_path: Path, capsys) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    address = f"127.0.0.1:{port}"
    assert main([*TINY, "--workers", "1", "--ray-address", address, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"esper: error: cannot reach a Ray cluster at --ray-address {address}")
    assert not out.exists()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Nothing on stderr: the test reads it."""


def _close_each(listener: socket.socket) -> None:
    """Accept each connection and close it at once, until ``listener`` is closed."""
    with contextlib.suppress(OSError):
        while True:
            listener.accept()[0].close()


@pytest.mark.parametrize(
    ("server", "why"),
    [
        ("http", "it does not speak HTTP/2 (it answered "),
        ("silent", "it sent no HTTP/2 reply within 0.5 s"),
        ("closing", "it closed the connection without a reply"),
    ],
)
def test_a_port_that_is_no_ray_head_is_one_line(tmp_path, capsys, monkeypatch, server, why):
    """Something else listening there (a web server; a process that never answers) made Ray's
    client wait for minutes without a word."""
    monkeypatch.setattr(workers, "CONNECT_TIMEOUT_S", 0.5)
    if server == "http":
        listener: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
        threading.Thread(target=listener.serve_forever, daemon=True).start()
        port, stop = listener.server_address[1], listener.shutdown
    else:
        listener = socket.create_server(("127.0.0.1", 0))  # accepts; answers nothing
        port, stop = listener.getsockname()[1], listener.close
        if server == "closing":
            threading.Thread(target=_close_each, args=(listener,), daemon=True).start()
    out, address = tmp_path / "run", f"127.0.0.1:{port}"
    try:
        code = main([*TINY, "--workers", "1", "--ray-address", address, "--out", str(out)])
    finally:
        stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"esper: error: --ray-address {address} is not a Ray head's port: {why}"
    )
    assert not out.exists()


def _answer_as_a_head(listener: socket.socket) -> None:
    """Answer each connection's client preface with an empty HTTP/2 SETTINGS frame, as a Ray
    head's gRPC does first, until ``listener`` is closed."""
    with contextlib.suppress(OSError):
        while True:
            connection = listener.accept()[0]
            connection.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))


def test_a_loopback_address_is_checked_where_ray_connects_for_it(tmp_path, capsys, monkeypatch):
    """Ray connects to ``127.0.0.1:P`` at this machine's own address: a head's port forwarded
    to the loopback interface alone (``ssh -L``) passed the check, then Ray's client retried
    the other address for 14 minutes and blamed token authentication (a walk-through)."""
    from ray._private.services import canonicalize_bootstrap_address

    monkeypatch.setattr(workers, "CONNECT_TIMEOUT_S", 0.5)
    listener = socket.create_server(("127.0.0.1", 0))  # loopback only
    port = listener.getsockname()[1]
    dialled = canonicalize_bootstrap_address(f"127.0.0.1:{port}")
    if dialled is None or dialled.startswith("127."):
        listener.close()
        pytest.skip("Ray finds no address of this machine but the loopback one")
    threading.Thread(target=_answer_as_a_head, args=(listener,), daemon=True).start()
    out, address = tmp_path / "run", f"127.0.0.1:{port}"
    try:
        code = main([*TINY, "--workers", "1", "--ray-address", address, "--out", str(out)])
    finally:
        listener.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"esper: error: cannot reach a Ray cluster at {dialled}, which Ray connects to for "
        f"--ray-address {address} ("
    )
    assert err[0].endswith(
        f"start one with `ray start --head --port {port}` or give --ray-address the address the "
        "head listens on (Ray replaces a loopback address with this machine's own)"
    )
    assert not out.exists()


def test_a_resume_takes_another_clusters_address(
    ray_session: None, two_workers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run on a cluster whose head is gone said "start one ... or drop --ray-address", which
    ``--resume`` refused ("it takes --ppo.rounds only"): it could not go on elsewhere. A
    resume now takes ``--ray-address`` (the cluster changes no result), and the advice says
    so; config.json is unchanged by a refusal."""
    run = tmp_path / "run"
    shutil.copytree(two_workers, run)
    config = (run / "config.json").read_text()
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    resume = ["ppo", "--resume", str(run), "--ppo.rounds", "3"]
    assert main([*resume, "--ray-address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        f"start one with `ray start --head --port {port}` or resume with --ray-address "
        "HOST:PORT of a running cluster"
    ), err
    assert (run / "config.json").read_text() == config


@pytest.mark.parametrize("auth", ["", "token"])
def test_a_failed_join_names_ray_s_cause(monkeypatch: pytest.MonkeyPatch, auth: str) -> None:
    """A head whose raylet was killed: Ray said "Failed to connect to Ray cluster" and kept
    the cause (no node to connect to) in ``__cause__``, which the one line dropped, blaming
    token authentication even where RAY_AUTH_MODE=token was set (a walk-through)."""
    import ray

    def failing(**settings: Any) -> None:
        try:
            raise RuntimeError("No node info found matching attributes: ''\nmore")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.9:6379") from cause

    monkeypatch.setattr(workers, "_check_reachable", lambda *args: None)
    monkeypatch.setattr(workers, "init_ray", failing)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_AUTH_MODE", auth)
    with pytest.raises(ValueError) as raised:
        workers.join_ray("127.0.0.1:6379")
    message = str(raised.value)
    assert message.startswith(
        "cannot join the Ray cluster at --ray-address 127.0.0.1:6379: Failed to connect to Ray "
        "cluster at 192.0.2.9:6379: No node info found matching attributes: ''"
    )
    assert ("RAY_AUTH_MODE=token" in message) is (auth != "token")


def test_without_workers_ray_is_not_imported(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from esper.cli.main import main\n"
        f"code = main(['ppo', '--preset', 'tiny', '--ppo.rounds', '1', '--epochs', '2', "
        f"'--threads', '1', '--out', {str(tmp_path / 'run')!r}])\n"
        "assert code == 0, code\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def two_workers(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset on two workers, uninterrupted."""
    run = tmp_path_factory.mktemp("two-workers") / "run"
    assert main([*TINY, "--workers", "2", "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("n_workers", [1, 2])
def test_workers_give_the_in_process_rounds(
    ray_session: None,
    in_process: Path,
    two_workers: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    n_workers: int,
) -> None:
    run = two_workers
    if n_workers == 1:
        run = tmp_path / "run"
        assert main([*TINY, "--workers", "1", "--out", str(run)]) == 0
        printed = "learner: cpu\nRay workers (torch threads each: 1):\nworker 0: envs 0, 1\n"
        assert printed in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["runtime"]["workers"] == n_workers and config["env"]["threads"] == 1
    config["runtime"]["workers"] = None
    assert config == json.loads((in_process / "config.json").read_text())
    a, b = _policy(in_process), _policy(run)
    if n_workers == 1:  # the same chunk: bit for bit
        assert _rows(run) == _rows(in_process) and _events(run) == _events(in_process)
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert not _differences(_rows(run), _rows(in_process))
        # Each environment's events in the same order (how environments of different chunks
        # interleave in the log follows the chunks).
        assert _close(_by_env(_events(run)), _by_env(_events(in_process)))
        assert all(torch.allclose(a[k], b[k], rtol=RELATIVE_TOLERANCE, atol=1e-6) for k in a)


def test_actors_telemetry_streams_in_step_by_step(two_workers: Path) -> None:
    """The driver re-emits an actor's telemetry at every lockstep step, not once its round is
    over: in each round of the two-worker run, environment 1 (actor 1) has events logged before
    environment 0 (actor 0) has its last, step by step in the same order every time."""
    rounds: dict[int, list[int]] = {}
    for event in _events(two_workers):
        if "env" in event:
            rounds.setdefault(event["episode"], []).append(event["env"])
    assert len(rounds) == load_preset("tiny").ppo.rounds
    for envs in rounds.values():
        last_of_0 = len(envs) - 1 - envs[::-1].index(0)
        assert envs.index(1) < last_of_0
        switches = sum(a != b for a, b in pairwise(envs))
        assert switches > 2  # interleaved step by step, not one actor's round after the other's


def _worker_trainer(**env: Any) -> PPOTrainer:
    config = override(load_preset("tiny"), {"runtime": {"workers": 2}, "env": env}).resolved()
    config, _ = start_ray(config)  # the module's session: nothing to stop
    trainer, _ = build_trainer(config, TelemetryHub("t", []), make_synthetic())
    return trainer


def test_actors_telemetry_arrives_while_their_round_runs(ray_session: None) -> None:
    """The first environment events reach the driver early in the round (after the actors'
    resets), not when the round's trajectories do."""
    trainer = _worker_trainer(batches_per_epoch=16)  # steps long next to Ray's latency
    vec = trainer.vec
    assert isinstance(vec, RayVectorEnv)
    arrivals: list[float] = []
    span: list[float] = []
    emit, collect = vec.emit, vec.collect

    def arrived(event: Any, context: dict[str, Any]) -> None:
        arrivals.append(time.perf_counter())
        emit(event, context)

    def timed(policy: Any) -> Any:
        span.append(time.perf_counter())
        trajectories = collect(policy)
        span.append(time.perf_counter())
        return trajectories

    trainer.run_round()  # a fresh actor's first round also warms torch up
    vec.emit, vec.collect = arrived, timed  # type: ignore[method-assign]
    trainer.run_round()
    started, ended = span
    # First events at ~24 % of the round here (0.63 once in CI, two test workers starving an
    # actor on 2 cores); events sent with the trajectories would all arrive at ~100 %.
    assert arrivals and arrivals[0] < started + 0.8 * (ended - started)
    vec.close()


def test_actors_that_keep_dying_fail_the_run_in_one_line(
    ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "MAX_DEATHS", 0)
    trainer = _worker_trainer()
    vec = trainer.vec
    assert isinstance(vec, RayVectorEnv)
    os.kill(vec.pids()[1], signal.SIGKILL)
    with pytest.raises(
        WorkerLostError, match=r"^Ray workers died 1 times this round \(the last ran env 1\)"
    ):
        trainer.run_round()
    vec.close()


def test_an_actor_dead_after_a_round_replays_it_with_that_rounds_policy(
    ray_session: None,
) -> None:
    """An actor found dead after a round (at the checkpoint's ``state_dicts``) is rebuilt by
    replaying the round with the policy it was run with, not the trainer's network as the
    update left it: the environments' states equal those before the death even when the
    network has changed beyond recognition since."""
    trainer = _worker_trainer()
    vec = trainer.vec
    assert isinstance(vec, RayVectorEnv)
    trainer.run_round()
    before = vec.state_dicts()
    with torch.no_grad():
        for parameter in trainer.network.parameters():
            parameter.normal_(0.0, 10.0)  # a policy that would act differently
    os.kill(vec.pids()[0], signal.SIGKILL)
    after = vec.state_dicts()
    assert after[0]["episode"] == before[0]["episode"] == 1
    assert all(torch.equal(a["rng"], b["rng"]) for a, b in zip(before, after, strict=True))
    vec.close()


def test_an_error_in_an_actor_arrives_as_itself(ray_session: None, tmp_path: Path) -> None:
    missing = {"task": "fashion_mnist_impaired", "data_dir": str(tmp_path), "download": False}
    with pytest.raises(DatasetNotFoundError) as err:
        _worker_trainer(**missing)  # the actors look for Fashion-MNIST in an empty directory
    assert str(tmp_path) in str(err.value) and "RayTaskError" not in str(err.value)


def test_two_workers_are_the_in_process_run_with_the_same_chunks(two_workers: Path) -> None:
    """In-process environments grouped as the actors group them (one each, ``chunk=1``): the
    same rounds and policy bit for bit (the CLI runs use the same settings and seeds)."""
    config = override(load_preset("tiny"), {"env": {"threads": 1}}).resolved()
    hub = TelemetryHub("t", [])
    envs = build_envs(config, make_synthetic(), hub.emit, range(config.ppo.n_envs))
    trainer = PPOTrainer(
        VectorEnv(envs.envs, envs.devices, hub.emit, chunk=1),
        torch.device("cpu"),
        config,
        hub.emit,
        hub.set_level,
    )
    stats = [trainer.run_round().stats for _ in range(config.ppo.rounds)]
    recorded = read_rows(two_workers / "rounds.csv", PPOUpdate)
    assert [_untimed(asdict(s)) for s in stats] == [_untimed(asdict(r)) for r in recorded]
    policy = _policy(two_workers)
    assert all(torch.equal(v, policy[k]) for k, v in trainer.network.state_dict().items())


def test_an_environment_state_between_episodes_restarts_the_sequence_exactly() -> None:
    """``GrowthEnv.state_dict`` (what a revived actor and a resumed run start from) holds no
    finished episode: loaded into a fresh environment, the next episode equals the original's
    next one; mid-episode it refuses."""
    config = override(load_preset("tiny"), {"env": {"threads": 1}}).resolved()
    original, fresh = (
        build_envs(config, make_synthetic(), lambda event, context: None, [1]).envs[0]
        for _ in range(2)
    )
    original.reset()
    with pytest.raises(RuntimeError, match="between episodes"):
        original.state_dict()
    while not original.episode.done:
        original.step(Action(Op.WAIT))
    state = original.state_dict()
    assert set(state) == {"episode", "rng", "cuda_rng"} and state["episode"] == 1
    fresh.load_state_dict(state)
    first, again = original.reset(), fresh.reset()
    assert first.signals == again.signals
    action = Action(Op.GERMINATE, slot="early", blueprint="conv_light")
    a, b = original.step(action), fresh.step(action)
    assert (a.observation.signals, a.reward) == (b.observation.signals, b.reward)
    weights = zip(
        original.episode.model.state_dict().values(),
        fresh.episode.model.state_dict().values(),
        strict=True,
    )
    assert all(torch.equal(u, v) for u, v in weights)


def test_a_killed_actor_is_replayed_and_an_interrupted_run_resumes_exactly(
    two_workers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Actor 0's process is killed while round 1's episodes run, then Ctrl-C stops the run at
    round 2; ``--resume`` finishes it (on fresh actors). Rounds, policy and every environment's
    events equal the uninterrupted run's: nothing lost, nothing emitted twice. The revived
    actor's GPUs (none here) replace the dead one's in what ``describe`` prints."""
    collect, run_round, pids, gpus = RayVectorEnv.collect, PPOTrainer.run_round, [], []

    def collect_through_a_kill(self: RayVectorEnv, policy: Any) -> Any:
        before = self.pids()
        if not pids:  # round 1: the kill lands while the actors run their episodes
            threading.Timer(KILL_AFTER_S, os.kill, (before[0], signal.SIGKILL)).start()
            self.gpus = [["stale"] for _ in self.gpus]  # what describe says comes from each build
        started = time.perf_counter()
        trajectories = collect(self, policy)
        pids.append((before, self.pids(), time.perf_counter() - started))
        gpus.append([list(g) for g in self.gpus])
        return trajectories

    def interrupted_in_the_second(self: PPOTrainer) -> Any:
        if self.round == 1:
            signal.raise_signal(signal.SIGINT)
        return run_round(self)

    monkeypatch.setattr(RayVectorEnv, "collect", collect_through_a_kill)
    monkeypatch.setattr(PPOTrainer, "run_round", interrupted_in_the_second)
    run = tmp_path / "run"
    assert main([*TINY, "--workers", "2", "--out", str(run)]) == 130
    (before, after, seconds), *_ = pids
    assert seconds > KILL_AFTER_S  # the kill came before the round's trajectories did
    assert after[0] != before[0] and after[1] == before[1]  # actor 0 was replaced
    assert gpus[0] == [[], ["stale"]]  # the new actor's build (no GPU here) replaced actor 0's
    assert _rows(run) == _rows(two_workers)[:1]  # round 1, as if nothing had died

    monkeypatch.setattr(PPOTrainer, "run_round", run_round)
    assert main(["ppo", "--resume", str(run)]) == 0
    assert _rows(run) == _rows(two_workers)
    a, b = _policy(two_workers), _policy(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    envs = [e for e in _events(run) if "env" in e]  # the run's own events say "resumed"
    assert envs == [e for e in _events(two_workers) if "env" in e]


def test_an_actor_reserves_a_gpu_or_its_share_only_for_cuda() -> None:
    config = load_preset("tiny")
    with pytest.raises(ValueError, match="threads must be set"):
        actor_resources(config)
    cpu = replace(config, env=replace(config.env, threads=2), ppo=replace(config.ppo, n_envs=5))
    assert actor_resources(cpu) == {"num_cpus": 2, "num_gpus": 0}
    assert gpus_needed(replace(cpu, runtime=replace(cpu.runtime, workers=3))) == 0
    cuda = replace(cpu, runtime=replace(cpu.runtime, devices=("cuda",), workers=5))
    assert actor_resources(cuda) == {"num_cpus": 2, "num_gpus": 1}
    assert gpus_needed(cuda) == 5
    shared = replace(cuda, runtime=replace(cuda.runtime, workers_per_gpu=4))
    assert actor_resources(shared) == {"num_cpus": 2, "num_gpus": 0.25}
    assert gpus_needed(shared) == 2  # four actors on one GPU, the fifth on another


def test_more_gpu_workers_than_gpus_are_refused(
    ray_session: None, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ray without GPUs (this machine's; on a GPU machine Ray is told it has none): one GPU
    actor would wait for one forever. The learner's GPU, checked before Ray starts, is
    pretended here (this machine has none)."""
    import esper.study.ppo as study_ppo

    monkeypatch.setattr(study_ppo, "parse_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    out = tmp_path / "run"
    assert main([*TINY, "--workers", "2", "--devices", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = "needs 2 GPUs (one per actor), but Ray has 0 here; use --devices cpu"
    assert len(err) == 1 and expected in err[0]
    assert not out.exists() and ray.is_initialized()  # the module's session is left running


@pytest.mark.parametrize(
    ("workers", "share", "gpus", "message"),
    [
        (
            3,
            1,
            1,
            "needs 3 GPUs (one per actor), but Ray has 1 here; use at most 1 worker, "
            "or --workers-per-gpu 3",
        ),
        (
            5,
            2,
            2,
            "needs 3 GPUs (one per 2 actors), but Ray has 2 here; use at most 4 workers, "
            "or --workers-per-gpu 3",
        ),
        (200, 1, 1, "needs 200 GPUs (one per actor), but Ray has 1 here; use at most 1 worker"),
        (
            1,
            1,
            0,
            "with 1 worker needs 1 GPU (one per actor), but Ray has 0 here; use --devices cpu",
        ),
        (5, 3, 2, None),  # three actors on one GPU, two on the other
    ],
)
def test_actors_sharing_gpus_must_fit_the_clusters_gpus(
    ray_session: None,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    share: int,
    gpus: int,
    message: str | None,
) -> None:
    """``start_ray`` on a Ray said to have ``gpus`` GPUs (this machine has none): it refuses in
    one line that says what would fit (no share above the limit of 64), or lets them start."""
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 256.0, "GPU": float(gpus)})
    config = load_preset("tiny")
    config = replace(
        config,
        ppo=replace(config.ppo, n_envs=workers),
        runtime=replace(config.runtime, devices=("cuda",), workers=workers, workers_per_gpu=share),
    )
    if message is None:
        started, _ = start_ray(config)
        assert started.env.threads == 1
        return
    with pytest.raises(ValueError) as refused:
        start_ray(config)
    assert str(refused.value).endswith(message)


def test_threads_beyond_the_cluster_cpus_are_refused(ray_session: None, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main([*TINY, "--workers", "2", "--threads", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cores" in err[0] and not out.exists()


def _ray_start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A Ray node in the foreground (``--block``): stopping this process stops its node. Returns
    once the node says it runs."""
    command = [str(Path(sys.executable).parent / "ray"), "start", "--block", *args]
    node = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert node.stdout is not None
    for line in node.stdout:  # ends if the node fails to start
        if "Ray runtime started" in line:
            break
    return node


@pytest.mark.slow
def test_a_two_node_cluster_on_loopback(tmp_path: Path) -> None:
    """Two Ray nodes (one CPU each) started by ``ray start``; ``--ray-address`` joins them and a
    worker lands on each. A subprocess: this module's own session must not be in the way. The
    nodes and the driver share a token (Ray's token authentication; an explicit address is
    never authenticated unless ``RAY_AUTH_MODE=token`` says so)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    temp = Path("/tmp") / f"esper-ray-{os.getpid()}"  # Ray's socket paths must stay short
    address = f"127.0.0.1:{port}"
    nodes = [_ray_start("--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp}", env=env)]
    try:
        nodes.append(_ray_start(f"--address={address}", "--num-cpus=1", env=env))
        run = tmp_path / "run"
        argv = [*TINY, "--workers", "2", "--ray-address", address, "--ppo.rounds", "1"]
        done = subprocess.run(
            [sys.executable, "-m", "esper", *argv, "--out", str(run)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        # A resume may name the cluster another way (a new head's address): recorded.
        address = f"localhost:{port}"
        argv = ["ppo", "--resume", str(run), "--ppo.rounds", "2", "--ray-address", address]
        done = subprocess.run(
            [sys.executable, "-m", "esper", *argv], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        for node in reversed(nodes):
            node.terminate()
            node.wait(timeout=60)
    assert len(_rows(run)) == 2 and json.loads((run / "config.json").read_text())["runtime"] == {
        "seed": 0,
        "devices": ["cpu"],
        "amp": False,
        "workers": 2,
        "ray_address": address,
        "workers_per_gpu": 1,
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_worker_gives_the_in_process_gpu_rounds(tmp_path: Path, capsys) -> None:
    """``--devices cuda`` with a worker: the actor reserves the GPU Ray gives it and its
    environments run there; the rounds are the in-process GPU run's (to CUDA's rounding: its
    convolution kernels need not sum in one order)."""
    alone, worker = tmp_path / "alone", tmp_path / "worker"
    assert main([*TINY, "--threads", "1", "--devices", "cuda:0", "--out", str(alone)]) == 0
    assert main([*TINY, "--workers", "1", "--devices", "cuda", "--out", str(worker)]) == 0
    assert "worker 0: envs 0, 1 on GPU " in capsys.readouterr().err
    assert not _differences(_rows(worker), _rows(alone))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_workers_share_one_gpu(tmp_path: Path, capsys) -> None:
    """``--workers-per-gpu 2``: Ray puts both actors on one GPU (each sees it as its only one)
    and the run completes its rounds there."""
    run = tmp_path / "shared"
    argv = [*TINY, "--workers", "2", "--workers-per-gpu", "2", "--devices", "cuda"]
    assert main([*argv, "--out", str(run)]) == 0
    err = capsys.readouterr().err
    gpus = re.findall(r"worker \d: envs? [\d, ]+ on GPU (\d+)", err)
    assert len(gpus) == 2 and gpus[0] == gpus[1], err
    assert len(_rows(run)) == load_preset("tiny").ppo.rounds
