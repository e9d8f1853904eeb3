"""``esper study --address``: a study on a real two-node Ray cluster survives a worker killed in
the middle of a trial (issue #12).

Two nodes (one CPU each) are started on this machine by ``ray start``, each in its own session
and temp dir; the study runs in a subprocess that joins them at 127.0.0.1. While trials run, the
second node's worker that executes a trial is SIGKILLed once the trial has checkpointed a grown
model; Ray retries the task (``max_retries``) and the trial resumes from its run directory. The
study must still end with every trial once, complete, every run's epochs once each, and the
killed trial trained exactly as its uninterrupted twin. Every process of the cluster is found
by the test's token in its environment and must be gone once the nodes are stopped. Run time
here: ~50 s (2 shared cores), hence the slow lane.

Network: Ray 2.60 cannot be kept on loopback on Linux. It replaces a loopback
``--node-ip-address`` with the machine's routable address
(``ray._private.services.resolve_ip_for_localhost``), its GCS and raylets listen on every
interface and its client server on that address too. What Ray lets a test choose is chosen:
no dashboard (nothing serves HTTP), free ports for those with fixed defaults (so concurrent
clusters do not collide), and token authentication, so nothing without this test's token joins.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from esper.leyline.trials import TRIALS_DIR, TRIALS_FILE
from esper.nissa import checkpoints, record

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; Ray clusters"),
]

EPOCHS = 16
"""Epochs per trial: at ~0.3 s each here, a trial runs for seconds, a wide window to kill in."""

ARMS = ("grow", "twin")
"""Two arms with the same settings: each trial has a twin that trains exactly as it does, the
oracle of the killed trial's resume."""

STUDY = f"""\
out = "out"
tasks = ["synthetic"]
seeds = 2
reps = 100  # coarse intervals: the results are not what this test checks
[budget]
epochs = {EPOCHS}
batches_per_epoch = 16  # ~0.3 s an epoch here
val_samples = 128
""" + "".join(f'[[arms]]\nname = "{arm}"\ncontroller = "periodic"\nperiod = 2\n' for arm in ARMS)
TRIALS = sorted(f"synthetic.{arm}.seed{s}" for arm in ARMS for s in (0, 1))

KILL_FROM = 4
"""Kill only once the trial's checkpoint holds this epoch: the periodic controller (period 2)
has germinated a seed by then (epoch 3), so the resume rebuilds a grown model mid-schedule."""

KILL_BEFORE = EPOCHS - 3
"""... and while it holds at most this one: the trial has epochs left to train whatever the few
milliseconds between reading the checkpoint and the kill bring."""

NODE_START_S = 120.0
"""A node's ``ray start`` prints that it runs within this (~7 s here, on 2 busy cores)."""

STUDY_S = 300.0
"""The whole study, kill and retry included (~30 s here)."""

STOP_S = 60.0
"""Ray's processes exit within this after their node is stopped."""

POLL_S = 0.1
"""How often the test looks at processes and checkpoints while it waits for something (a
scan of /proc takes ~5 ms of the 2 cores the trials train on)."""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on now (on any interface: Ray binds them all)."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(n)]
        for probe in probes:
            probe.bind(("", 0))
        return [probe.getsockname()[1] for probe in probes]


def _wait_for(what: str, ready: Callable[[], Any], timeout: float) -> Any:
    """Poll ``ready()`` until it returns something true; fail naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)
    return value


# ------------------------------------------------------------------------------ /proc


def _proc_file(pid: int, name: str) -> bytes:
    """``/proc/<pid>/<name>``, or b"" for a process that is gone (or not ours to read)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _parent(pid: int) -> int | None:
    """A live process's parent pid (None: gone, or a zombie)."""
    stat = _proc_file(pid, "stat")
    if not stat:
        return None
    state, ppid = stat[stat.rindex(b")") + 2 :].split()[:2]  # the name may hold spaces
    return None if state == b"Z" else int(ppid)


def _trial_workers(nodes: tuple[int, ...]) -> dict[int, dict[int, str | None]]:
    """Per node (its ``ray start`` pid): its Ray workers that run a trial now (``run_job``),
    each with the trial whose event log it holds open (None: it has not opened it yet)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        parent = _parent(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found: dict[int, dict[int, str | None]] = {}
    for node in nodes:
        found[node], below = {}, list(children.get(node, []))
        while below:
            pid = below.pop()
            below.extend(children.get(pid, []))
            if _proc_file(pid, "cmdline").startswith(b"ray::run_job"):
                found[node][pid] = _open_trial(pid)  # an idle worker is titled ray::IDLE
    return found


def _open_trial(pid: int) -> str | None:
    """The trial whose event log (``trials/<trial>/events.jsonl``) process ``pid`` holds open."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.name == record.EVENTS_FILE and target.parent.parent.name == TRIALS_DIR:
            return target.parent.name
    return None


def _carrying(token: str) -> list[int]:
    """The live processes started with this test's Ray token in their environment: the nodes'
    processes, their workers and the study driver."""
    marker = f"RAY_AUTH_TOKEN={token}".encode()
    return [
        pid
        for pid in _pids()
        if pid != os.getpid()
        and _parent(pid) is not None
        and marker in _proc_file(pid, "environ").split(b"\0")
    ]


# ------------------------------------------------------------------------------ the cluster


def _start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A Ray node in the foreground (``ray start --block``: stopping this process stops the
    node) in a session of its own, its output in ``log``."""
    command = [str(Path(sys.executable).parent / "ray"), "start", "--block", *args]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_started(node: subprocess.Popen[bytes], log: Path) -> None:
    """Return once ``node`` says it runs; fail with its output if it exits or takes too long."""

    def started() -> bool:
        if node.poll() is not None:
            pytest.fail(f"ray start exited with {node.returncode}:\n{log.read_text()[-3000:]}")
        return "Ray runtime started" in log.read_text(errors="replace")

    _wait_for(f"the Ray node of {log.name}", started, NODE_START_S)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (``ray start --block`` then stops its node's processes), SIGKILL to the
    process's whole session if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_S)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left
    process.wait(timeout=STOP_S)


@contextmanager
def _cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], int, int, list[int]]]:
    """Two Ray nodes with one CPU each, joined by token authentication.

    Yields:
        the head's address, the environment a driver needs (the token), the head's and the
        second node's ``ray start`` pids, and the list that receives the pids of this cluster's
        processes still alive after it stopped (filled on exit).
    """
    token = os.urandom(16).hex()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    port, dashboard, client, *agents = _free_ports(5)
    address = f"127.0.0.1:{port}"
    temps = [Path(tempfile.mkdtemp(prefix="esper-ray-", dir="/tmp")) for _ in range(2)]
    common = ["--num-cpus=1", "--disable-usage-stats"]
    processes: list[subprocess.Popen[bytes]] = []
    survivors: list[int] = []
    try:
        head = [
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
        ]
        for k, args in enumerate([head, [f"--address={address}"]]):
            args = [*args, *common, f"--temp-dir={temps[k]}"]
            args.append(f"--dashboard-agent-listen-port={agents[k]}")
            log = tmp_path / f"node{k}.log"
            processes.append(_start_node(args, log, env))
            _wait_started(processes[-1], log)
        yield address, env, processes[0].pid, processes[1].pid, survivors
    finally:
        for process in reversed(processes):
            _stop(process)
        deadline = time.monotonic() + STOP_S  # workers exit once their raylet is gone
        while (left := _carrying(token)) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        survivors.extend(left)
        for pid in left:  # this test's processes: the token is unique to it
            os.kill(pid, signal.SIGKILL)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------------------ the test


def _checkpoint_step(run: Path) -> int | None:
    """The epoch of ``run``'s last committed checkpoint (None: none yet)."""
    try:
        latest = (run / record.CHECKPOINTS_DIR / checkpoints.LATEST_FILE).read_text().strip()
    except OSError:
        return None
    return int(latest.removeprefix("step-")) if latest.startswith("step-") else None


def _kill_a_trial(workers: dict[int, str | None], trials: Path) -> tuple[str, int] | None:
    """SIGKILL the first of ``workers`` whose trial's checkpoint holds an epoch with epochs left
    after it; that trial and the epoch (None: no such worker now)."""
    for pid, trial in workers.items():
        step = None if trial is None else _checkpoint_step(trials / trial)
        if trial is not None and step is not None and KILL_FROM <= step <= KILL_BEFORE:
            os.kill(pid, signal.SIGKILL)
            return trial, step
    return None


def _run_study(
    argv: list[str], env: dict[str, str], log: Path, nodes: tuple[int, int], trials: Path
) -> tuple[int, tuple[str, int] | None, set[int]]:
    """Run the study, killing the second node's worker of a trial in mid-run once.

    Returns:
        the study's exit status, the killed trial with its checkpoint's epoch at the kill, and
        the nodes seen running a trial.
    """
    with log.open("wb") as f:
        study = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)
    killed, used = None, set()
    try:
        deadline = time.monotonic() + STUDY_S
        while study.poll() is None:
            assert time.monotonic() < deadline, f"the study ran past {STUDY_S:.0f} s"
            if killed is None or len(used) < len(nodes):  # the scan costs CPU: only as needed
                workers = _trial_workers(nodes)
                used |= {node for node in nodes if workers[node]}
                killed = killed or _kill_a_trial(workers[nodes[1]], trials)
            time.sleep(POLL_S)
    finally:
        if study.poll() is None:
            study.kill()
        study.wait()
    return study.returncode, killed, used


def _events(run: Path, name: str) -> list[dict[str, Any]]:
    lines = (run / record.EVENTS_FILE).read_text().splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == name]


def test_a_study_survives_a_worker_killed_mid_trial_on_a_two_node_cluster(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    (tmp_path / "study.toml").write_text(STUDY)
    out, log = tmp_path / "out", tmp_path / "study.log"
    trials = out / TRIALS_DIR
    with _cluster(tmp_path) as (address, env, head, second, survivors):
        argv = [sys.executable, "-m", "esper", "study", str(tmp_path / "study.toml")]
        status, killed, used = _run_study(
            [*argv, "--address", address], env, log, (head, second), trials
        )
    assert survivors == [], "Ray processes outlived their nodes"
    assert status == 0, log.read_text(errors="replace")[-3000:]
    assert used == {head, second}, "trials ran on one node only"
    assert killed is not None, "no trial of the second node was caught in mid-run"
    victim, killed_at = killed

    # Every trial once, completed, with a score; nothing else in trials/.
    with (out / TRIALS_FILE).open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
        f.seek(0)
        assert sorted(r["run"] for r in csv.DictReader(f)) == TRIALS
    for row in rows.values():
        assert row["status"] == "completed" and math.isfinite(float(row["score"])), row
    assert sorted(p.name for p in trials.iterdir()) == TRIALS  # no staging left, no duplicate
    for name in TRIALS:
        run = trials / name
        summaries = [p.relative_to(run) for p in run.rglob(record.SUMMARY_FILE)]
        assert summaries == [Path(record.SUMMARY_FILE)], name
        with (run / "metrics.csv").open() as f:
            epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
        assert epochs == list(range(1, EPOCHS + 1)), name  # a resume repeats and skips none
        assert len(_events(run, "RunFinished")) == 1, name
        if name != victim:
            assert [e["resumed_from_epoch"] for e in _events(run, "RunStarted")] == [None], name
    # The killed worker's task ran again and resumed the run from its checkpoint ...
    resumed = [e["resumed_from_epoch"] for e in _events(trials / victim, "RunStarted")]
    assert len(resumed) == 2 and resumed[0] is None, resumed
    assert killed_at <= resumed[1] < EPOCHS, (killed_at, resumed)
    # ... exactly: it trained as its twin (the other arm, same seed), which ran uninterrupted.
    arm, seed = rows[victim]["arm"], rows[victim]["seed"]
    twin = f"synthetic.{next(a for a in ARMS if a != arm)}.seed{seed}"
    assert (trials / victim / "metrics.csv").read_text() == (
        trials / twin / "metrics.csv"
    ).read_text()
    same = ("score", "best_score", "final_params", "peak_params", "flops")
    assert {k: rows[victim][k] for k in same} == {k: rows[twin][k] for k in same}
