"""Crash safety of ``esper static|heuristic``: SIGKILL at any checkpoint change, SIGTERM, bit
flips in checkpoints, a full disk and bad input never lose or corrupt a run."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import torch

import esper.study.checks as study_checks
import esper.study.run as study_run
from esper.cli.main import main
from esper.leyline.files import DiskFullError
from esper.nissa import checkpoints, record
from esper.nissa.csvlog import read_rows
from esper.nissa.stopping import Stop
from esper.simic.training import PPOTrainer
from esper.study.growth import EpochRow, GrowthRunner

ESPER = [sys.executable, "-m", "esper"]
KILL_ARGS = [
    "heuristic", "--task", "synthetic", "--epochs", "4", "--batches-per-epoch", "2",
    "--val-samples", "128", "--threads", "1",
]  # fmt: skip
TINY = ["--task", "synthetic", "--batches-per-epoch", "2", "--val-samples", "128"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _listing(path: Path) -> dict[str, int] | None:
    """Names and mtimes in ``path`` (None when it does not exist)."""
    try:
        return {e.name: e.stat(follow_symlinks=False).st_mtime_ns for e in os.scandir(path)}
    except (FileNotFoundError, NotADirectoryError):
        return None


def _files(run: Path) -> tuple[object, ...]:
    """What a start or a step changes: the run's parent (where a new run is assembled and
    renamed into place) and its checkpoints directory."""
    return (_listing(run.parent), _listing(run / record.CHECKPOINTS_DIR))


def _run_killed_at(args: list[str], run: Path, k: int | None) -> bool:
    """Run ``esper ARGS``; SIGKILL it at the k-th change of the run's files (None: never).
    Returns whether it was killed; a run that ends by itself must succeed."""
    proc = subprocess.Popen(
        [*ESPER, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seen, changes = _files(run), 0
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        now = _files(run)
        if now != seen:
            seen, changes = now, changes + 1
            if k is not None and changes >= k:
                proc.kill()
                proc.wait()
                return True
        time.sleep(0.002)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return False


def _kill_chain(run: Path, ks: list[int]) -> int:
    """Kill a run at the k-th checkpoint change of each process, for each k in turn, resuming
    after every kill, until a process completes; return the number of kills."""
    kills, args = 0, [*KILL_ARGS, "--out", str(run)]
    for k in [*ks, None]:
        if not _run_killed_at(args, run, k):
            return kills
        kills += 1
        if args[1] != "--resume" and not run.exists():
            # killed while the new run was assembled: nothing half-made at --out, and nothing
            # hidden left beside it once the same command starts again
            continue
        if record.run_status(run) == "completed":  # killed after its summary: nothing to do
            return kills
        assert (run / record.CHECKPOINTS_DIR / checkpoints.LATEST_FILE).is_file()  # resumable
        args = [KILL_ARGS[0], "--resume", str(run)]
    raise AssertionError(f"still running after kills at {ks}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    assert not _run_killed_at([*KILL_ARGS, "--out", str(run)], run, None)
    return run


def _same_as(run: Path, reference: Path) -> None:
    assert not list(run.parent.glob(".esper-partial-*"))  # no half-made run left beside it
    assert (run / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    a, b = record.read_summary(reference), record.read_summary(run)
    assert a is not None and b is not None and a.growth is not None and b.growth is not None
    assert b.status == a.status == "completed"
    assert a.growth.final == b.growth.final  # floats compared exactly
    for key in ("best_val_accuracy", "param_count", "fossilized", "pruned", "seeds"):
        assert getattr(a.growth, key) == getattr(b.growth, key), key


def test_sigkill_at_a_few_checkpoint_changes_then_resume(tmp_path, reference) -> None:
    run = tmp_path / "run"
    kills = _kill_chain(run, [2, 3, 5])
    assert kills >= 1
    _same_as(run, reference)


@pytest.mark.slow
def test_sigkill_at_every_checkpoint_change_then_resume(tmp_path, reference) -> None:
    run = tmp_path / "run"
    kills = _kill_chain(run, list(range(1, 200)))
    assert kills >= 3
    _same_as(run, reference)


# ------------------------------------------------------------------------------ SIGTERM


def test_sigterm_interrupts_and_resume_completes(tmp_path) -> None:
    run = tmp_path / "run"
    args = ["heuristic", *TINY, "--epochs", "30", "--threads", "1", "--out", str(run)]
    proc = subprocess.Popen(
        [*ESPER, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_step(run, 2, proc.poll)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    summary = record.read_summary(run)
    assert summary is not None and summary.status == "interrupted"
    assert summary.growth is not None and 2 <= summary.growth.epochs_completed < 30
    assert main(["heuristic", "--resume", str(run)]) == 0
    done = record.read_summary(run)
    assert done is not None and done.status == "completed"
    assert done.growth is not None and done.growth.epochs_completed == 30


def test_a_closed_terminal_interrupts_the_run_and_resume_completes(tmp_path) -> None:
    """The run's terminal hangs up (an SSH session closed): SIGHUP stops it as SIGTERM does,
    and the output that can no longer reach the terminal does not cut the stop short."""
    run = tmp_path / "run"
    args = ["heuristic", *TINY, "--epochs", "30", "--threads", "1", "--out", str(run)]
    pid, terminal = pty.fork()  # the child's controlling terminal is the pty
    if pid == 0:  # pragma: no cover - the child
        try:  # as a login shell starts it: SIGHUP not ignored, even if pytest's (nohup) is
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            os.execve(sys.executable, [*ESPER, *args], ENV)
        finally:
            os._exit(127)  # never run the rest of pytest in the child

    def ended() -> int | None:
        _drain(terminal)  # a terminal nobody reads would block the run's output
        return os.waitpid(pid, os.WNOHANG)[0] or None

    try:
        _wait_for_step(run, 2, ended)
    except BaseException:
        with suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        os.close(terminal)  # the hang-up: SIGHUP, and EIO for every later write to it
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 130  # neither killed by SIGHUP nor failed
    summary = record.read_summary(run)
    assert summary is not None and summary.status == "interrupted"
    assert summary.growth is not None and 2 <= summary.growth.epochs_completed < 30
    assert main(["heuristic", "--resume", str(run)]) == 0
    done = record.read_summary(run)
    assert done is not None and done.status == "completed" and done.growth is not None
    assert done.growth.epochs_completed == 30


def test_under_nohup_a_hangup_does_not_stop_the_run(tmp_path) -> None:
    """A run started with SIGHUP ignored (``nohup``) keeps it ignored."""
    run = tmp_path / "run"
    args = ["heuristic", *TINY, "--epochs", "12", "--threads", "1", "--out", str(run)]
    proc = subprocess.Popen(
        ["nohup", *ESPER, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for_step(run, 2, proc.poll)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = record.read_summary(run)
    assert summary is not None and summary.status == "completed"


# ------------------------------------------------------------------------------ helpers


def _wait_for_step(run: Path, step: int, ended: Callable[[], object]) -> None:
    """Until ``run`` has committed checkpoint ``step`` (``ended`` returns not None once the
    run's process has ended, which fails the test)."""
    latest = run / record.CHECKPOINTS_DIR / checkpoints.LATEST_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert ended() is None, f"the run ended before step {step}"
        if latest.exists() and latest.read_text().strip() >= checkpoints.step_directory(step):
            return
        time.sleep(0.01)
    raise AssertionError(f"no step {step} within 120 s")


def _drain(fd: int) -> None:
    """Read what a pty holds, without waiting."""
    with suppress(OSError):  # EIO: the child has closed it
        while select.select([fd], [], [], 0)[0] and os.read(fd, 4096):
            pass


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: file bytes, None for a directory (and the modes)."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = None if path.is_dir() else path.read_bytes()
        found[rel + "@mode"] = oct(path.stat().st_mode).encode()
    return found


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("esper: error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A heuristic run stopped (as by Ctrl-C) after its first epoch."""
    from esper.tolaria.episode import Episode

    run = tmp_path_factory.mktemp("interrupted") / "run"
    original = Episode.step

    def stop(self, *args, **kwargs):
        raise Stop

    Episode.step = stop  # type: ignore[method-assign]
    try:
        code = main(["heuristic", *TINY, "--epochs", "3", "--out", str(run)])
    finally:
        Episode.step = original  # type: ignore[method-assign]
    assert code == 130
    summary = record.read_summary(run)
    assert summary is not None and summary.status == "interrupted"
    return run


@pytest.fixture
def run_copy(interrupted_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    return run


# ------------------------------------------------------------------------------ bit flips


def _latest(run: Path) -> Path:
    root = run / record.CHECKPOINTS_DIR
    return root / (root / checkpoints.LATEST_FILE).read_text().strip()


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("name", ["state.pt", "manifest.json", "LATEST"])
def test_a_flipped_bit_is_reported_and_changes_nothing(run_copy, capsys, name, where) -> None:
    path = (
        run_copy / record.CHECKPOINTS_DIR / name if name == "LATEST" else _latest(run_copy) / name
    )
    data = bytearray(path.read_bytes())
    at = min(int(len(data) * where), len(data) - 1)
    if name == "LATEST" and where == 1.0:
        at = len(data.rstrip()) - 1  # the last digit, not the newline
    data[at] ^= 1
    path.write_bytes(bytes(data))
    before = _snapshot(run_copy)
    capsys.readouterr()
    assert main(["heuristic", "--resume", str(run_copy)]) == 2
    line = _one_error_line(capsys)
    assert name in line, line
    assert _snapshot(run_copy) == before


# ------------------------------------------------------------------------------ full disk


@pytest.mark.parametrize("small_disk", ["300k"], indirect=True)  # room for a few epochs
def test_full_disk_stops_cleanly_and_the_run_resumes(small_disk, tmp_path, capsys) -> None:
    """The disk fills once the heuristic's first seed makes the checkpoint grow (epoch 9 of
    seed 0's run); the resume, on a disk with room, trains the rest."""
    run = small_disk / "run"
    args = ["heuristic", *TINY, "--epochs", "30", "--threads", "1", "--out", str(run)]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "disk" in line.lower() or "space" in line.lower(), line
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    assert main(["heuristic", "--resume", str(moved)]) == 0
    summary = record.read_summary(moved)
    assert summary is not None and summary.status == "completed"
    assert summary.growth is not None and summary.growth.epochs_completed == 30


# ------------------------------------------------------------------------------ bad input


def _bad_config(tmp: Path, kind: str) -> Path:
    path = tmp / (f"{kind}.json" if kind != "toml" else "c.toml")
    if kind == "unknown-key":
        path.write_text(json.dumps({"training": {"task": "synthetic"}, "colour": 1}))
    elif kind == "deep":
        path.write_text("[" * 100000 + "]" * 100000)
    elif kind == "hidden":
        path.write_text(json.dumps({"policy": {"hidden": 1e30}}))
    elif kind == "deep-object":
        path.write_text('{"a":' * 100000 + "1" + "}" * 100000)
    else:
        path.write_text("training = {task = \n")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["heuristic", *TINY, "--seed", "1e26"], "--seed"),
        (["heuristic", *TINY, "--seed", "99999999999999999999999"], "seed"),
        (["heuristic", *TINY, "--epochs", "0"], "epochs"),
        (["heuristic", *TINY, "--epochs", "x"], "--epochs"),
        (["heuristic", "--task", "nope"], "nope"),
        (["heuristic", *TINY, "--frobnicate"], "--frobnicate"),
        (["static", *TINY, "--slots", "early"], "slots"),
        (["eval", *TINY], "--policy"),
        (["eval", *TINY, "--policy", "{tmp}"], "PPO"),
        (["heuristic", "--config", "{unknown-key}"], "colour"),
        (["heuristic", "--config", "{deep}"], "cannot read config file"),
        (["heuristic", "--config", "{deep-object}"], "cannot read config file"),
        (["heuristic", "--config", "{toml}"], "cannot read config file"),
        (["heuristic", *TINY, "--out", "{tmp}/" + "x" * 300], "x" * 20),
        # esper ppo: sizes that cannot fit are refused up front, naming the limit
        (["ppo", "--preset", "tiny", "--ppo.n-envs", "1000000"], "[1, 256]"),
        (["ppo", "--preset", "tiny", "--policy.hidden", "1000000000"], "[1, 4096]"),
        (["ppo", "--preset", "tiny", "--policy.lstm-hidden", "65536"], "[1, 4096]"),
        (["ppo", "--preset", "tiny", "--seed", "1e26"], "--seed"),
        (["ppo", "--preset", "tiny", "--seed", str(2**63)], "runtime.seed"),
        (["ppo", "--preset", "tiny", "--seed", str(2**32 - 7920)], "runtime.seed"),  # policy
        (["ppo", "--preset", "nope"], "known presets"),
        (["ppo", "--config", "{hidden}"], "policy.hidden"),
    ],
)
def test_bad_input_is_one_line_and_touches_nothing(
    tmp_path, capsys, monkeypatch, args, message
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    configs = {
        k: str(_bad_config(tmp_path, k))
        for k in ("unknown-key", "deep", "deep-object", "toml", "hidden")
    }
    args = [a.format(tmp=work, **configs) if "{" in a else a for a in args]
    if "--out" not in args:
        args += ["--out", str(work / "run")]
    before = _snapshot(tmp_path)
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert message in line, line
    assert _snapshot(tmp_path) == before


def _resume_bad(run: Path, capsys, extra: list[str] | None = None) -> str:
    before = _snapshot(run.parent)
    assert main(["heuristic", "--resume", str(run), *(extra or [])]) == 2
    line = _one_error_line(capsys)
    assert _snapshot(run.parent) == before
    return line


def _tiny_run(out: Path) -> subprocess.Popen[bytes]:
    """A two-epoch heuristic run at ``out`` in a child process, its stderr piped."""
    return subprocess.Popen(
        [*ESPER, "heuristic", *TINY, "--epochs", "2", "--out", str(out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # a shell without job control starts background jobs with SIGINT ignored, and Python
        # keeps it so: the Ctrl-C test needs the child as a terminal would start it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_sigterm_during_start_up_exits_cleanly(tmp_path) -> None:
    """A signal once the configuration is printed (data loading, building the run): exit 130
    with one line, no traceback, and either nothing at --out or a resumable run."""
    out = tmp_path / "run"
    proc = _tiny_run(out)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "esper heuristic: effective configuration"
    assert b"effective configuration" in first, first
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err and b"interrupted" in err
    assert not out.exists() or (out / record.CHECKPOINTS_DIR / checkpoints.LATEST_FILE).is_file()


def test_ctrl_c_while_the_command_loads_exits_quietly(tmp_path) -> None:
    """Loading the command's modules (torch among them) takes about a second, before any handler
    of the command exists: a Ctrl-C then printed a KeyboardInterrupt traceback."""
    out = tmp_path / "run"
    proc = _tiny_run(out)
    # torch's library is being mapped: the command's modules are loading (a fixed sleep could
    # land before the interpreter's own start-up ended, on a loaded machine)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while "libtorch" not in maps.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, "torch never loaded"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err and b"esper: interrupted" in err
    assert not out.exists()


def test_a_signal_while_a_run_completes_waits_for_it(tmp_path, capsys, monkeypatch) -> None:
    """Between the last epoch and the summary (model, outcomes, test scores) a signal left no
    summary.json; now the run completes, and the signal, moot, is dropped."""
    original = GrowthRunner._test

    def signalled(self: GrowthRunner) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(GrowthRunner, "_test", signalled)
    out = tmp_path / "run"
    assert main(["heuristic", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    summary = record.read_summary(out)
    assert summary is not None and summary.status == "completed"


def test_a_signal_while_the_last_step_is_committed_completes_the_run(
    tmp_path, capsys, monkeypatch
) -> None:
    """Held while the last epoch's checkpoint was written, the signal then stopped the run: a
    finished run recorded as "interrupted" (exit 130). It is one after the last step, which
    waits for the run to complete and is dropped, as during the completion."""
    original = study_run.Recorder.commit

    def signalled(self: study_run.Recorder, step: int, *args: Any) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        original(self, step, *args)

    monkeypatch.setattr(study_run.Recorder, "commit", signalled)
    out = tmp_path / "run"
    assert main(["heuristic", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    summary = record.read_summary(out)
    assert summary is not None and summary.status == "completed"
    assert (out / "model.pt").is_file()
    # one step earlier it still stops the run, after that step's checkpoint
    out = tmp_path / "early"
    assert main(["heuristic", *TINY, "--epochs", "3", "--out", str(out)]) == 130
    summary = record.read_summary(out)
    assert summary is not None and summary.status == "interrupted"
    assert summary.growth is not None and summary.growth.epochs_completed == 2


def _main_with_ctrl_c(argv: list[str]) -> int:
    """``main(argv)`` with Python's Ctrl-C, as the esper command has it (a pytest-xdist worker
    ignores SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return main(argv)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_burst_of_signals_keeps_the_interrupted_summary(tmp_path, capsys, monkeypatch):
    """Ctrl-C pressed twice, or SIGTERM from two nested ``timeout`` commands, a few ms apart:
    the second cut the first's interrupted summary short, so no summary.json was written and
    every view showed the run unfinished (a walk-through). Signals after the first are dropped
    while it stops."""
    count_flops, write_summary = GrowthRunner._count_flops, record.write_summary

    def first(self: GrowthRunner) -> None:  # the burst's first signal, during an epoch
        os.kill(os.getpid(), signal.SIGINT)
        count_flops(self)

    def second(*args: Any) -> None:  # and its next ones, as the summary is written
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        write_summary(*args)

    monkeypatch.setattr(GrowthRunner, "_count_flops", first)
    monkeypatch.setattr(record, "write_summary", second)
    out = tmp_path / "run"
    assert _main_with_ctrl_c(["heuristic", *TINY, "--epochs", "3", "--out", str(out)]) == 130
    assert "continue with: esper heuristic --resume" in capsys.readouterr().err
    summary = record.read_summary(out)
    assert summary is not None and summary.status == "interrupted"
    monkeypatch.undo()
    assert main(["heuristic", "--resume", str(out)]) == 0


def test_after_a_stop_from_a_held_block_further_signals_wait() -> None:
    """A signal held in a block stops the run when the block ends; one more while that Stop
    unwound to the summary raised a second Stop that skipped the summary (a review)."""
    with study_run.stop_signals() as held:
        with pytest.raises(Stop), held():
            os.kill(os.getpid(), signal.SIGINT)  # held until the block ends, then Stop
        os.kill(os.getpid(), signal.SIGINT)  # the burst's next: waits, the run is stopping
        with held(final=True):  # the interrupted summary, then the end: dropped
            pass


def test_a_signal_before_the_run_loop_says_how_to_continue(tmp_path, capsys, monkeypatch):
    """Between the run directory's creation and the loop that holds signals (the lock, the
    printed configuration, the start event) a signal said only "esper: interrupted"."""
    original = study_run.Recorder.start

    def signalled(self: study_run.Recorder, *args: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        original(self, *args)

    monkeypatch.setattr(study_run.Recorder, "start", signalled)
    out = tmp_path / "run"
    assert _main_with_ctrl_c(["heuristic", *TINY, "--epochs", "2", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"continue with: esper heuristic --resume {out}" in err, err
    monkeypatch.setattr(study_run.Recorder, "start", original)
    assert main(["heuristic", "--resume", str(out)]) == 0


def test_a_signal_while_the_run_directory_is_made_says_how_to_continue(
    tmp_path, capsys, monkeypatch
) -> None:
    """Held until the directory is complete, the signal then stopped the command with "esper:
    interrupted" alone, though --out now held a run (so the same command failed again)."""
    original = study_run._create

    def signalled(*args: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        original(*args)

    monkeypatch.setattr(study_run, "_create", signalled)
    out = tmp_path / "a run"  # quoted in the command to copy: it said --resume .../a run
    assert main(["heuristic", *TINY, "--epochs", "2", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"esper: interrupted; continue with: esper heuristic --resume '{out}'" in err, err
    monkeypatch.setattr(study_run, "_create", original)
    assert main(["heuristic", "--resume", str(out)]) == 0


def test_a_plain_keyboard_interrupt_in_a_round_is_a_stop(tmp_path, capsys, monkeypatch) -> None:
    """Ray turns a signal that arrives inside ray.wait into its own KeyboardInterrupt, not
    Esper's Stop: the run ended without a summary or the resume command."""
    original = PPOTrainer.run_round

    def interrupted(self: PPOTrainer) -> Any:
        if self.round == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(PPOTrainer, "run_round", interrupted)
    out = tmp_path / "run"
    assert main(["ppo", "--preset", "tiny", "--out", str(out)]) == 130
    assert "continue with: esper ppo --resume" in capsys.readouterr().err
    summary = record.read_summary(out)
    assert summary is not None and summary.status == "interrupted"


def test_sigterm_while_ray_starts_ends_as_a_stop(tmp_path, capsys, monkeypatch) -> None:
    """``ray.init`` put its own SIGTERM handler in place while it started, which exited with
    status 15 and no word (and left Ray's agents running); the signal is sent once Ray has
    started its processes, before ``ray.init`` returns."""
    import ray
    from ray._private.node import Node

    assert not ray.is_initialized()
    start = Node.start_ray_processes

    def start_then_signal(self: Node) -> None:
        start(self)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Node, "start_ray_processes", start_then_signal)
    out = tmp_path / "run"
    assert main(["ppo", "--preset", "tiny", "--workers", "2", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "esper: interrupted", err
    assert not out.exists() and not ray.is_initialized()
    assert signal.getsignal(signal.SIGTERM).__module__ == "esper.nissa.stopping"  # not Ray's


# ------------------------------------------------------------------------------ one process per run


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """``directory`` locked as the process running a run locks it (flock: another open file
    conflicts with it, in this process too)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        os.close(fd)


def test_a_run_another_process_holds_is_refused_and_resumes_once_released(run_copy, capsys) -> None:
    """Two resumes of one run at once interleaved their rows, checkpoints and events (a round
    lost from rounds.csv, two RunStarted, a traceback for one of them). The process running a
    run locks its directory; a second is one line, exit 2, nothing changed."""
    with _locked(run_copy):
        line = _resume_bad(run_copy, capsys)
    assert f"another process is running the run in {str(run_copy)!r}" in line, line
    assert main(["heuristic", "--resume", str(run_copy)]) == 0


def test_a_lock_held_for_an_instant_does_not_refuse_a_resume(run_copy) -> None:
    """``esper tui`` probes a quiet run's lock (``run_is_held``: a shared lock taken and dropped
    at once); a resume starting at that instant was refused as another process's run. The
    probe sees a held lock as held and a free one as free, leaving it free."""
    import threading

    from esper.nissa.record import lock_run, run_is_held

    assert run_is_held(run_copy) is False
    with _locked(run_copy):
        assert run_is_held(run_copy) is True
    fd = os.open(run_copy, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe's lock, dropped a moment later
    threading.Timer(0.08, os.close, (fd,)).start()
    held = lock_run(run_copy)
    assert held is not None
    os.close(held)
    assert run_is_held(run_copy) is False and run_is_held(run_copy / "missing") is None


def test_a_file_system_without_directory_locks_runs_unguarded(tmp_path, monkeypatch, caplog):
    """NFS emulates flock with a byte-range lock, which needs a file open for writing: a
    directory's lock fails with EBADF there, and every run and resume on a shared file system
    (a study's cluster set-up) failed. The run goes on with a warning."""
    import errno

    import esper.leyline.files as files

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(files.fcntl, "flock", no_locks)
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        assert main(["static", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert "its file system cannot lock it (Bad file descriptor)" in caplog.text


def test_an_attempt_that_fails_before_training_unlocks_the_run(run_copy, capsys, monkeypatch):
    """Failures between the lock and the first step (here the event log's sink) left the run
    locked while their runner lived (a traceback, a test's excinfo, a Ray worker's frame):
    the next resume in this process was refused as "another process is running the run"."""
    from esper.leyline.config import UserError

    kept: list[GrowthRunner] = []
    init = GrowthRunner.__init__

    def keep(self: GrowthRunner, *args: Any, **kwargs: Any) -> None:
        kept.append(self)
        init(self, *args, **kwargs)

    def refuse(path: Path) -> None:
        raise UserError("the event log cannot be opened")

    monkeypatch.setattr(GrowthRunner, "__init__", keep)
    monkeypatch.setattr(study_run, "JsonlSink", refuse)
    assert main(["heuristic", "--resume", str(run_copy)]) == 2
    assert "the event log cannot be opened" in _one_error_line(capsys)
    assert kept  # the runner is still referenced ...
    with _locked(run_copy):  # ... and the run is free
        pass


def test_a_live_run_cannot_be_resumed_beside_itself_and_kill_9_frees_it(tmp_path, capsys):
    """A resume of a run still training was not refused: it trained beside the original."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*ESPER, "heuristic", *TINY, "--epochs", "500", "--out", str(out)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_step(out, 1, proc.poll)
        assert main(["heuristic", "--resume", str(out)]) == 2
        line = _one_error_line(capsys)
        assert "another process is running the run" in line, line
    finally:
        proc.kill()  # SIGKILL: no code of the run's runs after it
        proc.wait(timeout=60)
    with _locked(out):  # the kernel released the killed holder's lock
        pass


def test_a_ppo_resume_with_workers_is_refused_before_ray_starts(
    recorded_runs, tmp_path, capsys, monkeypatch
) -> None:
    """Refused only after Ray's start (26 s) when the other process happened to finish first."""
    import esper.study.ppo as ppo

    run = tmp_path / "ppo"
    shutil.copytree(recorded_runs["ppo"], run)
    config = json.loads((run / record.CONFIG_FILE).read_text())
    config["runtime"]["workers"] = 1
    (run / record.CONFIG_FILE).write_text(json.dumps(config))

    def start_ray(config):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ppo, "start_ray", start_ray)
    with _locked(run):
        assert main(["ppo", "--resume", str(run), "--ppo.rounds", "3"]) == 2
    assert "another process is running the run" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--amp"], "--amp needs the policy on a CUDA device, not cpu"),
        (["--devices", "cuda"], "unknown or unavailable device 'cuda'"),
        (
            ["--task", "fashion_mnist", "--no-download", "--data-dir", "."],
            "fashion-mnist not found",
        ),
        (["--task", "text_lm", "--width", "4096"], "width 4096 does not fit"),
    ],
)
def test_what_this_process_can_check_is_refused_before_ray(
    tmp_path, capsys, monkeypatch, flags, message
) -> None:
    """With --workers these were refused only after Ray's start (10-24 s here): the learner
    runs in this process, on ``--devices``' first entry, whatever the cluster has; the data
    and the memory the environments need here are checked as in a run without workers."""
    import esper.study.ppo as ppo

    if torch.cuda.is_available():
        pytest.skip("this process has a GPU")

    def start_ray(config):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ppo, "start_ray", start_ray)
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # the data directory "." holds no dataset
    monkeypatch.setattr(study_checks, "memory_bytes", lambda: 16 * 2**30)  # any machine's
    assert main(["ppo", "--preset", "tiny", "--workers", "2", *flags, "--out", str(out)]) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_sigterm_once_rays_core_worker_runs_prints_no_native_stack(tmp_path) -> None:
    """Ray's failure signal handler (Abseil's) dumped a native stack for a SIGTERM that came
    once the driver's core worker was up, before ``ray.init`` returned, and aborted the process
    (status 134) when it came inside a blocking call. Not installed in the driver: the run's
    own handler takes the signal. The signal is sent the moment the core worker is up.

    RAY_ADDRESS names a cluster (where nothing listens): without --ray-address a run starts a
    Ray of its own. Ray's default joined it and refused the run's CPU count ("When connecting
    to an existing cluster, num_cpus and num_gpus must not be provided")."""
    script = tmp_path / "start.py"
    script.write_text(
        "import os, signal\n"
        "import ray._private.worker as worker\n"
        "from esper.simic.workers import init_ray\n"
        "connect = worker.connect\n"
        "def connect_then_signal(*args, **kwargs):\n"
        "    connected = connect(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return connected\n"
        "worker.connect = connect_then_signal\n"
        "def stop(signum, frame):\n"
        "    raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "try:\n"
        "    init_ray(num_cpus=1)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    env = {**ENV, "RAY_ADDRESS": "127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0 and done.stdout.strip() == "interrupted", done.stderr
    assert "SIGTERM received" not in done.stderr, done.stderr


_SIGNAL_WHILE_IMPORTING = (
    "import os, signal, sys, time\n"
    "module, signum = sys.argv[1], getattr(signal, sys.argv[2])\n"
    "class SignalOnImport:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == module:\n"
    "            os.kill(os.getpid(), signum)\n"
    "            time.sleep(0.5)  # the handler runs here\n"
    "        return None\n"
    "for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # pytest-xdist, nohup\n"
    "    signal.signal(each, signal.SIG_DFL)  # a terminal's defaults\n"
    "if sys.argv[3] == 'nohup':\n"
    "    signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    "if sys.argv[3] == 'background':  # a shell's `esper ... &`\n"
    "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "sys.meta_path.insert(0, SignalOnImport())\n"
    "sys.argv = ['esper', *sys.argv[4:]]\n"
    "from esper.cli.entry import run\n"
    "run()\n"
)


@pytest.mark.parametrize(
    ("module", "signum", "command", "started"),
    [
        ("esper.cli.main", "SIGINT", "heuristic", "terminal"),
        ("esper.cli.main", "SIGTERM", "heuristic", "terminal"),
        ("esper.study.run", "SIGINT", "heuristic", "terminal"),
        ("esper.study.run", "SIGINT", "heuristic", "background"),
        ("esper.study.run", "SIGTERM", "heuristic", "terminal"),
        ("esper.study.run", "SIGHUP", "ppo", "terminal"),
        ("esper.cli.report", "SIGTERM", "report", "terminal"),
    ],
)
def test_a_signal_while_the_command_loads_ends_it_in_one_line(
    tmp_path, module, signum, command, started
) -> None:
    """SIGTERM or SIGHUP while a command imported its modules (torch: about two seconds of a
    run's start) killed the process by the signal with no word; Ctrl-C and later signals end
    it with "esper: interrupted" and status 130. The signal is sent as ``module`` is imported.
    A background job's ignored Ctrl-C is taken, as the command takes it once loaded."""
    script = tmp_path / "load.py"
    script.write_text(_SIGNAL_WHILE_IMPORTING)
    out = tmp_path / "run"
    argv = [command, str(out)] if command == "report" else [command, *TINY, "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(script), module, signum, started, *argv],
        capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "\nesper: interrupted\n")
    assert not out.exists()


def test_a_view_command_runs_in_a_thread_of_its_own(tmp_path) -> None:
    """``main`` run in a program's thread: setting the loading window's signal handlers
    raised "signal only works in main thread" for every view command."""
    import threading

    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(["runs", "list", str(tmp_path)])))
    thread.start()
    thread.join(timeout=60)
    assert codes == [0]


def test_a_sighup_ignored_by_nohup_stays_ignored_while_the_command_loads(tmp_path) -> None:
    script = tmp_path / "load.py"
    script.write_text(_SIGNAL_WHILE_IMPORTING)
    done = subprocess.run(
        [sys.executable, str(script), "esper.study.run", "SIGHUP", "nohup", "heuristic",
         "--task", "no_such_task"],
        capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip
    assert done.returncode == 2 and "no_such_task" in done.stderr, done.stderr


def test_signals_after_the_command_returned_leave_its_exit_quiet(tmp_path) -> None:
    """A burst of SIGTERMs (or a held-down Ctrl-C) outlasting the interrupted run: the ones
    that came while the interpreter ran its exit handlers (Ray's, torch's) printed a traceback
    after "continue with: ...", or killed the process by the signal instead of its status."""
    script = tmp_path / "burst.py"
    script.write_text(
        "import atexit, os, signal, time\n"
        "import esper.cli.main\n"
        "from esper.cli.entry import run\n"
        "from esper.nissa.stopping import interrupt_on_termination\n"
        "def exit_handler():\n"
        "    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
        "        os.kill(os.getpid(), signum)\n"
        "    time.sleep(0.2)\n"
        "    print('exit handler done', flush=True)\n"
        "def main():\n"
        "    interrupt_on_termination()  # as every run command has its handlers\n"
        "    atexit.register(exit_handler)\n"
        "    return 130\n"
        "esper.cli.main.main = main\n"
        "run()\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=ENV
    )
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert done.stdout == "exit handler done\n" and done.stderr == "", done.stderr


def test_a_signal_well_after_the_command_returned_ends_a_stuck_exit(tmp_path) -> None:
    """The signals a burst sends are ignored while the interpreter exits; one that comes after
    EXIT_GRACE_SECONDS ends an exit handler that hangs (nothing but SIGKILL did), with the
    command's own status."""
    script = tmp_path / "stuck.py"
    script.write_text(
        "import atexit, os, signal, time\n"
        "import esper.cli.main\n"
        "from esper.cli.entry import EXIT_GRACE_SECONDS, run\n"
        "def hanging():\n"
        "    time.sleep(EXIT_GRACE_SECONDS + 0.5)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(60)\n"
        "    print('waited it out', flush=True)\n"
        "def main():\n"
        "    atexit.register(hanging)\n"
        "    return 3\n"
        "esper.cli.main.main = main\n"
        "run()\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=ENV
    )
    assert done.returncode == 3 and done.stdout == "" and done.stderr == "", done.stderr
    assert time.monotonic() - started < 30


def _processes_naming(text: str) -> list[int]:
    """The live processes whose command line or open files name ``text`` (Ray's agents rename
    themselves, ``ray::RuntimeEnvAgent``, but keep their logs open)."""
    found = []
    for entry in Path("/proc").iterdir():
        with suppress(OSError):
            if not entry.name.isdigit():
                continue
            named = [(entry / "cmdline").read_text(errors="replace")]
            named += [os.readlink(fd) for fd in (entry / "fd").iterdir()]
            if any(text in name for name in named):
                found.append(int(entry.name))
    return found


def test_a_signal_while_ray_starts_its_processes_leaves_none_running(tmp_path) -> None:
    """SIGTERM once Ray's node processes were started, before ``ray.init`` returned: the run's
    handler stopped the command at once and Ray's agents outlived it, reparented to init (and
    at times the interpreter's exit crashed with status 139). Now the signal waits until Ray
    has started, Ray is shut down, and the command's handler takes it."""
    ray_dir = Path(tempfile.mkdtemp(prefix="esr", dir="/tmp"))  # its sockets' paths are short
    script = tmp_path / "start.py"
    script.write_text(
        "import os, signal, sys\n"
        "import ray\n"
        "from ray._private.node import Node\n"
        "from esper.simic.workers import init_ray\n"
        "start = Node.start_ray_processes\n"
        "def start_then_signal(self):\n"
        "    start(self)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "Node.start_ray_processes = start_then_signal\n"
        "def stop(signum, frame):\n"
        "    raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "try:\n"
        "    init_ray(num_cpus=1, _temp_dir=sys.argv[1])\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', ray.is_initialized())\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(ray_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert done.returncode == 0 and done.stdout.strip() == "interrupted False", done.stderr
        deadline = time.monotonic() + 20  # Ray's processes exit as they notice the shutdown
        while _processes_naming(str(ray_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_naming(str(ray_dir)), "Ray processes outlived the command"
    finally:
        for pid in _processes_naming(str(ray_dir)):
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_a_resume_that_needs_more_cores_names_no_flag_to_change(
    run_copy, recorded_runs, tmp_path, capsys, monkeypatch
) -> None:
    """A resume takes no --workers or --threads, yet the refusal said "use --threads 1" (in
    process) or "use --workers 1 or fewer" (Ray), flags the user never typed."""
    import esper.tolaria.threads as threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    config = json.loads((run_copy / record.CONFIG_FILE).read_text())
    config["training"]["threads"] = 2  # as if it ran on a machine of two cores
    (run_copy / record.CONFIG_FILE).write_text(json.dumps(config))
    line = _resume_bad(run_copy, capsys)
    assert f"cannot resume {str(run_copy)!r} here: it runs 1 worker(s) of 2 torch thread(s)" in line
    assert "this process may use 1" in line and "--threads" not in line, line

    run = tmp_path / "ppo"
    shutil.copytree(recorded_runs["ppo"], run)
    config = json.loads((run / record.CONFIG_FILE).read_text())
    config["runtime"]["workers"] = 2
    (run / record.CONFIG_FILE).write_text(json.dumps(config))
    assert main(["ppo", "--resume", str(run), "--ppo.rounds", "3"]) == 2
    line = _one_error_line(capsys)
    assert "it runs 2 worker(s) of 1 torch thread(s), 2 cores" in line
    assert "--workers" not in line, line


def test_resume_of_a_directory_that_is_no_run(tmp_path, capsys) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    assert "not an Esper run directory" in _resume_bad(plain, capsys)


def test_resume_with_summary_json_a_directory(run_copy, capsys) -> None:
    (run_copy / "summary.json").unlink()
    (run_copy / "summary.json").mkdir()
    assert "summary.json" in _resume_bad(run_copy, capsys)


def _entries(root: Path) -> dict[str, object]:
    """Every path under ``root`` without opening anything but regular files: a pipe or a link
    to a device is recorded by its type and target, not read."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            found[rel] = (path.read_bytes(), info.st_mtime_ns)
        else:
            found[rel] = stat.S_IFMT(info.st_mode)
    return found


class _Hung(BaseException):
    """Raised by ``_within``'s alarm: not an ``OSError`` (as ``TimeoutError`` is), so no reader
    can turn it into a one-line error."""


@contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: a pipe blocked its reader forever."""

    def expire(signum, frame):
        raise _Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", ["pipe", "device"])
@pytest.mark.parametrize(
    "name",
    ["config.json", "meta.json", "summary.json", "metrics.csv", "events.jsonl", "LATEST",
     "state.pt", "manifest.json"],
)  # fmt: skip
def test_a_record_file_that_is_a_pipe_or_a_device_is_one_line(run_copy, capsys, name, kind):
    """A named pipe blocked the reader forever; a link to /dev/zero was read until memory ran
    out (config.json, meta.json, summary.json). Now each is refused without reading it."""
    if name in ("state.pt", "manifest.json"):
        path = _latest(run_copy) / name
    elif name == "LATEST":
        path = run_copy / record.CHECKPOINTS_DIR / name
    else:
        path = run_copy / name
    path.unlink()
    if kind == "pipe":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    before = _entries(run_copy.parent)
    capsys.readouterr()
    commands = [["heuristic", "--resume"], ["runs", "show"], ["report"]]
    for command in (
        commands
        if name in ("config.json", "meta.json", "summary.json")
        else [["heuristic", "--resume"]]
    ):
        with _within(20):
            assert main([*command, str(run_copy)]) == 2, command
        line = _one_error_line(capsys)
        assert name in line, line
        if name in record.RUN_FILES:  # it said "no events.jsonl file" of a pipe
            assert "not a regular file" in line, line
    assert _entries(run_copy.parent) == before


def test_resume_with_an_emptied_event_log_says_what_it_lacks(run_copy, capsys) -> None:
    """--resume appended to an emptied log without a word, so the views silently lacked the
    epochs before the checkpoint. Log lines are flushed, not fsynced: a system crash can empty
    the log of a run whose checkpoint survived, so the run continues, with a warning."""
    (run_copy / "events.jsonl").write_bytes(b"")
    capsys.readouterr()
    assert main(["heuristic", "--resume", str(run_copy)]) == 0
    err = capsys.readouterr().err
    assert "events.jsonl is empty though the checkpoint is at step 1" in err, err
    assert "its views lack steps 1 to 1" in err
    first = json.loads((run_copy / "events.jsonl").read_text().splitlines()[0])
    assert first["event"] == "RunStarted" and first["resumed_from_epoch"] == 1


@pytest.mark.parametrize("content", [b"", b"\x00\xffgarbage\n1,2,3\n", b"epoch,x\n1,2\n"])
def test_resume_with_a_damaged_metrics_csv(run_copy, capsys, content) -> None:
    (run_copy / "metrics.csv").write_bytes(content)
    assert "metrics.csv" in _resume_bad(run_copy, capsys)


def test_resume_with_extra_flags(run_copy, capsys) -> None:
    assert "drop --epochs" in _resume_bad(run_copy, capsys, ["--epochs", "5"])
    assert "drop --out" in _resume_bad(run_copy, capsys, ["--out", str(run_copy.parent / "o")])
    # a word no flag takes resumed the run without a word (a walk-through); ppo refused it
    assert _resume_bad(run_copy, capsys, ["garbage"]).endswith("as configured; drop garbage")


def test_out_inside_an_existing_run(run_copy, capsys) -> None:
    before = _snapshot(run_copy.parent)
    out = run_copy / "inner"
    assert main(["heuristic", *TINY, "--epochs", "1", "--out", str(out)]) == 2
    assert "lies inside the run" in _one_error_line(capsys)
    assert _snapshot(run_copy.parent) == before
    # "run/../new" is beside the run, not inside it (it was refused as inside), and "run/.."
    # is the run's parent, refused for what it is: a directory that is not empty.
    beside = run_copy.parent / "beside"
    assert main(["heuristic", *TINY, "--epochs", "1", "--out", f"{run_copy}/../beside"]) == 0
    assert (beside / "summary.json").is_file()
    assert main(["heuristic", *TINY, "--epochs", "1", "--out", f"{run_copy}/.."]) == 2
    assert "already exists and is not empty" in _one_error_line(capsys)


@pytest.mark.parametrize("command", ["heuristic", "ppo"])
@pytest.mark.parametrize("where", [".", "trials/new"])
def test_out_in_a_study_directory_is_refused(tmp_path, capsys, command, where) -> None:
    """A stray run there was accepted, and views and reports then took it for a trial's."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{}")
    out = study / where
    args = [*TINY, "--epochs", "1"] if command == "heuristic" else ["--preset", "tiny"]
    assert main([command, *args, "--out", str(out)]) == 2
    assert f"the study directory {str(study)!r}" in _one_error_line(capsys)
    assert sorted(p.name for p in study.iterdir()) == ["study.json"]


def test_out_that_is_not_utf8_is_refused(tmp_path, capsys) -> None:
    """Such a name was accepted, and runs query and report then failed on it with tracebacks."""
    out = tmp_path / os.fsdecode(b"bad\xffname")
    assert main(["heuristic", *TINY, "--epochs", "1", "--out", str(out)]) == 2
    assert "is not UTF-8 text" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["line\nbreak", "tab\there", "bell\a"])
def test_out_with_a_control_character_is_refused(tmp_path, capsys, name) -> None:
    """Such a run was made, its id then refused by ``esper knowledge import`` (its own
    outcomes.json could not be imported), and its name split ``runs list``'s table."""
    out = tmp_path / name
    assert main(["heuristic", *TINY, "--epochs", "1", "--out", str(out)]) == 2
    assert "its name holds a character that is not printable" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """``path`` read-only for the block: a read-only bind mount as root (whom permissions do
    not stop; so CI tests what a read-only file system does), its directories' modes otherwise."""
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
            yield
        finally:
            subprocess.run(["umount", "-l", str(path)], check=True)
        return
    directories = [p for p in [path, *path.rglob("*")] if p.is_dir()]
    for directory in directories:
        directory.chmod(0o555)
    try:
        yield
    finally:
        for directory in directories:
            directory.chmod(0o755)


@pytest.mark.parametrize("part", [".", record.CHECKPOINTS_DIR])
def test_resume_of_a_read_only_directory(run_copy, capsys, part: str) -> None:
    """Refused before anything is written: a read-only file system used to raise from the first
    CSV rewrite, or (only checkpoints/ read-only) after training an epoch, with summary.json
    already deleted."""
    path = run_copy / part
    with _read_only(path):
        line = _resume_bad(run_copy, capsys)
    assert f"{str(path)!r} is not writable" in line, line


# ------------------------------------------------------------------------------ review cases


def test_a_refused_resume_keeps_the_summary(run_copy, capsys) -> None:
    """A resume refused by a later check (here: another thread count) deletes nothing."""
    summary = (run_copy / "summary.json").read_bytes()
    config = json.loads((run_copy / "config.json").read_text())
    config["training"]["threads"] += 1
    (run_copy / "config.json").write_text(json.dumps(config))
    before = _snapshot(run_copy)
    assert main(["heuristic", "--resume", str(run_copy)]) == 2
    # (it read "1 torch threads")
    assert "it ran with 1 torch thread, this process has 2;" in _one_error_line(capsys)
    assert (run_copy / "summary.json").read_bytes() == summary
    assert _snapshot(run_copy) == before  # no stale cleaning, no CSV rewrite either


def test_a_resume_without_meta_json_says_so(run_copy, capsys) -> None:
    (run_copy / "meta.json").unlink()
    assert main(["heuristic", "--resume", str(run_copy)]) == 2
    assert "no meta.json" in _one_error_line(capsys)


def test_ppo_resume_of_a_growth_run_names_its_command(run_copy, capsys) -> None:
    assert main(["ppo", "--resume", str(run_copy)]) == 2
    assert "is a heuristic run; use esper heuristic" in _one_error_line(capsys)


@pytest.mark.parametrize("bad", ["{oops", '{"event": "NoSuchEvent", "t": 1.0}'])
def test_a_resume_refuses_an_event_log_damaged_before_its_last_line(run_copy, capsys, bad) -> None:
    """Such a log was resumed (exit 0), after which runs show, report and tui failed on it."""
    log = run_copy / "events.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = bad + "\n"
    log.write_text("".join(lines))
    before = _snapshot(run_copy)
    assert main(["heuristic", "--resume", str(run_copy)]) == 2
    line = _one_error_line(capsys)
    assert "cannot resume" in line and "events.jsonl:3" in line, line
    assert _snapshot(run_copy) == before


def test_growth_resume_of_a_ppo_run_names_its_command(recorded_runs, capsys) -> None:
    """It said "unknown key(s) ['env', 'ppo', ...]" (the config was read before the mode)."""
    for command in ("heuristic", "static", "eval"):
        assert main([command, "--resume", str(recorded_runs["ppo"])]) == 2
        assert "is a ppo run; use esper ppo" in _one_error_line(capsys)


def test_a_moved_run_keeps_its_run_id(run_copy, tmp_path) -> None:
    meta = record.read_meta(run_copy)
    assert meta is not None and meta.run_id.startswith("run-")
    moved = tmp_path / "moved"
    run_copy.rename(moved)
    assert main(["heuristic", "--resume", str(moved)]) == 0
    ids = {json.loads(line)["run_id"] for line in (moved / "events.jsonl").read_text().splitlines()}
    assert ids == {meta.run_id}  # the id recorded in meta.json, not the directory's new name


def test_a_resume_records_its_code_and_warns_when_it_changed(
    run_copy, tmp_path, capsys, monkeypatch
) -> None:
    """A resume at another git revision (or torch) trained on without a word, and meta.json
    kept naming only the start's revision: the record misstated how later epochs were made."""
    meta = record.read_meta(run_copy)
    assert meta is not None and meta.resumes == ()
    same = tmp_path / "same"
    shutil.copytree(run_copy, same)
    older = json.loads((same / "meta.json").read_text())
    del older["versions"]["ray"]  # a run from before ray's version was recorded
    (same / "meta.json").write_text(json.dumps(older))
    assert main(["heuristic", "--resume", str(same)]) == 0  # the same code: recorded, no word
    assert "other code" not in capsys.readouterr().err
    resumed = record.read_meta(same)
    assert resumed is not None and [r["step"] for r in resumed.resumes] == [1]
    assert resumed.resumes[0]["git_revision"] == meta.git_revision
    monkeypatch.setattr(record, "_git_revision", lambda: "feedface-dirty")
    assert main(["heuristic", "--resume", str(run_copy)]) == 0
    err = capsys.readouterr().err
    assert f"revision {meta.git_revision} -> feedface-dirty" in err, err
    assert "its steps after 1 run on it" in err, err
    resumed = record.read_meta(run_copy)
    assert resumed is not None and resumed.git_revision == meta.git_revision  # the start's
    (resume,) = resumed.resumes
    assert (resume["step"], resume["git_revision"]) == (1, "feedface-dirty")
    assert resume["versions"] == meta.versions
    assert main(["runs", "show", str(run_copy)]) == 0
    assert "resumed   after step 1   git feedface-dirty   started " in capsys.readouterr().out


def test_a_failed_commit_leaves_the_csv_and_summary_at_the_last_checkpoint(
    tmp_path, capsys, monkeypatch
) -> None:
    real, calls = checkpoints.commit_checkpoint, []

    def full_at_step_3(run_dir, step, files, run_id):
        calls.append(step)
        if step == 3:
            raise DiskFullError(28, "out of disk space writing 'state.pt'")
        return real(run_dir, step, files, run_id)

    monkeypatch.setattr(checkpoints, "commit_checkpoint", full_at_step_3)
    out = tmp_path / "run"
    assert main(["heuristic", *TINY, "--epochs", "5", "--out", str(out)]) == 2
    assert "out of disk space" in _one_error_line(capsys)
    rows = read_rows(out / "metrics.csv", EpochRow)
    summary = record.read_summary(out)
    assert [r.epoch for r in rows] == [1, 2] and summary is not None and summary.growth
    assert summary.growth.epochs_completed == 2
    assert summary.growth.final is not None
    assert summary.growth.final.val_loss == rows[-1].val_loss  # epoch 2's, not epoch 3's


def test_a_start_removes_only_its_own_abandoned_stagings(tmp_path) -> None:
    host = socket.gethostname()
    notes = tmp_path / ".partial-mynotes-2024"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    odd = tmp_path / ".esper-partial-notes"  # our prefix, but no pid@host: not ours
    odd.mkdir()
    abandoned = tmp_path / f".esper-partial-999999999@{host}@run"
    abandoned.mkdir()
    other_host = tmp_path / ".esper-partial-1@another-machine@run"
    other_host.mkdir()
    assert main(["heuristic", *TINY, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert (notes / "keep.txt").read_text() == "mine"  # not ours: untouched
    assert odd.exists() and other_host.exists()  # not provably ours / another machine's
    assert not abandoned.exists()  # ours, its process gone


def test_eval_of_a_policy_with_a_damaged_checkpoint_says_what_it_wanted(
    recorded_runs, tmp_path, capsys
) -> None:
    """It said "cannot resume" for a run it was only reading a policy from."""
    policy = tmp_path / "policy"
    shutil.copytree(recorded_runs["ppo"], policy)
    checkpoint = policy / "checkpoints" / (policy / "checkpoints" / "LATEST").read_text().strip()
    state = checkpoint / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    out = tmp_path / "eval"
    assert main(["eval", "--policy", str(policy), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"cannot read the policy in {str(policy)!r}" in line and "SHA-256" in line, line
    assert not out.exists()


def test_a_state_without_its_thread_count_is_refused_in_one_line(run_copy, capsys) -> None:
    """A state.pt re-signed into a valid checkpoint but not written by Esper said "it ran with
    None torch threads"."""
    meta = record.read_meta(run_copy)
    assert meta is not None
    checkpoint = checkpoints.load_checkpoint(run_copy, meta.run_id)
    state = torch.load(io.BytesIO(checkpoint.files["state.pt"]), weights_only=True)
    del state["threads"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    checkpoints.commit_checkpoint(
        run_copy, checkpoint.step - 1, {"state.pt": buffer.getvalue()}, meta.run_id
    )
    assert main(["heuristic", "--resume", str(run_copy)]) == 2
    assert "state.pt records no torch thread count" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"threads": 1, "trainer": {}}, "its checkpoint holds no growth run's state"),
        ([1, 2], "state.pt is not a state"),
    ],
    ids=["foreign", "not-a-dict"],
)
def test_a_re_signed_foreign_state_is_one_line(run_copy, capsys, state: Any, expected) -> None:
    """A state.pt that is not a growth run's (e.g. a PPO trainer's), re-signed into a valid
    checkpoint: a KeyError traceback before."""
    meta = record.read_meta(run_copy)
    assert meta is not None
    checkpoint = checkpoints.load_checkpoint(run_copy, meta.run_id)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    checkpoints.commit_checkpoint(
        run_copy, checkpoint.step - 1, {"state.pt": buffer.getvalue()}, meta.run_id
    )
    assert main(["heuristic", "--resume", str(run_copy)]) == 2
    assert expected in _one_error_line(capsys)


@pytest.mark.parametrize("command", ["static", "ppo"])
def test_a_signal_while_the_run_starts_leaves_an_interrupted_summary(
    tmp_path, capsys, monkeypatch, command
) -> None:
    """SIGTERM just after the step-0 checkpoint, while the run attached its sinks: the console
    said "interrupted ... continue with --resume", but no summary was written, so every view
    showed the run as unfinished (the TUI: "killed?"; a views walk-through)."""
    run = tmp_path / "run"
    args = ["--preset", "tiny", "--ppo.rounds", "2"] if command == "ppo" else TINY
    console = study_run.Recorder.console

    def stopped(*args: object, **kwargs: object) -> None:
        raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(study_run.Recorder, "console", stopped)
        assert main([command, *args, "--epochs", "2", "--out", str(run)]) == 130
    assert "continue with: esper " in capsys.readouterr().err
    summary = record.read_summary(run)
    assert summary is not None and summary.status == "interrupted"
    assert study_run.Recorder.console is console
    assert main([command, "--resume", str(run)]) == 0
    finished = record.read_summary(run)
    assert finished is not None and finished.status == "completed"


def test_a_resume_refuses_other_data_than_its_run_trained_on(tmp_path, capsys, monkeypatch):
    """config.json's data_dir may change (a study moved with its data carries on), so a
    data_dir edited to other files of the same kind trained on them without a word, under a
    meta.json that named the first. The dataset and its splits' samples must match."""
    from pydoc_data.topics import topics

    from esper.tolaria.episode import Episode

    text = "\n".join(topics.values())
    first, other = tmp_path / "a" / "corpus.txt", tmp_path / "b.txt"
    first.parent.mkdir()
    first.write_text(text[:60_000])
    other.write_text(text[60_000:120_000])
    run = tmp_path / "run"
    args = ["static", "--task", "text_lm_impaired", "--data-dir", str(first), *TINY[2:]]

    def interrupted(*args: object, **kwargs: object) -> None:
        raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(Episode, "step", interrupted)
        assert main([*args, "--epochs", "2", "--out", str(run)]) == 130
    config = json.loads((run / "config.json").read_text())
    config["training"]["data_dir"] = str(other)
    (run / "config.json").write_text(json.dumps(config))
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["static", "--resume", str(run)]) == 2
    err = _one_error_line(capsys)
    assert "it trained on 'text:corpus.txt' (" in err and " train / " in err, err
    assert "its data_dir now gives 'text:b.txt' (" in err and "put back the data" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    moved = tmp_path / "moved" / "corpus.txt"  # the same data elsewhere: carries on
    moved.parent.mkdir()
    moved.write_text(text[:60_000][::-1])  # but first the same name and length, other text
    config["training"]["data_dir"] = str(moved)
    (run / "config.json").write_text(json.dumps(config))
    assert main(["static", "--resume", str(run)]) == 2
    err = _one_error_line(capsys)
    assert "its data 'text:corpus.txt'" in err and "is not what it trained on (SHA-256" in err
    first.rename(moved)
    assert main(["static", "--resume", str(run)]) == 0


def test_a_resume_of_a_config_json_with_its_task_edited_names_config_json(
    tmp_path, capsys, monkeypatch
):
    """Its task edited, the refusal blamed the data_dir, which was never touched; its task
    removed, it said "unknown task ''" without naming config.json or the resume (a
    walk-through)."""
    from esper.tolaria.episode import Episode

    run = tmp_path / "run"

    def interrupted(*args: object, **kwargs: object) -> None:
        raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(Episode, "step", interrupted)
        assert main(["static", *TINY, "--epochs", "2", "--out", str(run)]) == 130
    config = json.loads((run / "config.json").read_text())
    config["training"]["task"] = "digits"
    (run / "config.json").write_text(json.dumps(config))
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["static", "--resume", str(run)]) == 2
    err = _one_error_line(capsys)
    assert "it trained on 'synthetic' (" in err and "and the task its config.json names now " in err
    assert "gives 'digits' (" in err and err.endswith("restore config.json, or start a new run")
    del config["training"]["task"]
    (run / "config.json").write_text(json.dumps(config))
    files[run / "config.json"] = (run / "config.json").read_bytes()
    assert main(["static", "--resume", str(run)]) == 2
    assert _one_error_line(capsys) == (
        f"esper: error: cannot resume {str(run)!r}: its config.json names no training.task, "
        "which a static run records; restore it, or start a new run"
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("std::bad_alloc")])
def test_data_too_big_for_memory_is_one_line(tmp_path, capsys, monkeypatch, error) -> None:
    """A corpus too big for memory (under a ulimit) ended in torch's bad_alloc traceback."""
    import esper.study.checks as checks

    def too_big(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(checks, "load_dataset", too_big)
    out = tmp_path / "run"
    assert main(["static", *TINY, "--out", str(out)]) == 2
    assert "not enough memory to load the data of task synthetic" in _one_error_line(capsys)
    assert not out.exists()


def test_a_re_signed_empty_state_names_its_error(run_copy, capsys) -> None:
    """An empty state.pt behind a re-signed manifest said "state.pt: " and nothing more (an
    EOFError without a message)."""
    meta = record.read_meta(run_copy)
    assert meta is not None
    step = checkpoints.load_checkpoint(run_copy, meta.run_id).step
    checkpoints.commit_checkpoint(run_copy, step - 1, {"state.pt": b""}, meta.run_id)
    assert main(["heuristic", "--resume", str(run_copy)]) == 2
    assert _one_error_line(capsys).endswith("state.pt: EOFError()")


@pytest.mark.parametrize(
    ("group", "key", "value", "refused"),
    [
        ("training", "lr", 0.5, "training.lr: "),
        ("training", "slots", ["early"], "training.slots"),
        ("telemetry", "level", "debug", None),  # where telemetry goes: free to change
    ],
)
def test_a_resume_refuses_an_edited_config(run_copy, capsys, group, key, value, refused) -> None:
    """The run continued with whatever config.json said (an lr of 0.5 ended in a governor
    termination); its checkpoint now records the configuration it ran with."""
    path = run_copy / "config.json"
    config = json.loads(path.read_text())
    config[group][key] = value
    path.write_text(json.dumps(config))
    if refused is None:
        assert main(["heuristic", "--resume", str(run_copy)]) == 0
        return
    line = _resume_bad(run_copy, capsys)
    assert "its config.json differs from the configuration its checkpoint ran with" in line
    assert refused in line, line


def test_a_ppo_resume_refuses_an_edited_config_but_more_rounds(tmp_path, capsys) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--out", str(run)]) == 0
    (run / "summary.json").unlink()  # as if interrupted after its round
    config = json.loads((run / "config.json").read_text())
    edited = {**config, "env": {**config["env"], "epochs": config["env"]["epochs"] + 1}}
    (run / "config.json").write_text(json.dumps(edited))
    assert main(["ppo", "--resume", str(run)]) == 2
    assert "env.epochs: " in _one_error_line(capsys)
    # A value its config cannot hold is named with the run, as esper static's resume does
    # (it said "runtime.ray_address needs runtime.workers" alone).
    odd = {**config, "runtime": {**config["runtime"], "ray_address": "127.0.0.1:1"}}
    (run / "config.json").write_text(json.dumps(odd))
    assert main(["ppo", "--resume", str(run)]) == 2
    line = _one_error_line(capsys)
    assert (
        line
        == f"esper: error: cannot resume {str(run)!r}: runtime.ray_address needs runtime.workers"
    )
    more = {**config, "ppo": {**config["ppo"], "rounds": 2}}
    (run / "config.json").write_text(json.dumps(more))
    assert main(["ppo", "--resume", str(run)]) == 0  # it trains on
    assert len((run / "rounds.csv").read_text().splitlines()) == 3  # header and two rounds


def _recorded_data_dir(run: Path, section: str, in_state: bool) -> None:
    """Make ``run`` look written by an Esper that ignored a data_dir for a task without files:
    its config.json (and with ``in_state`` its checkpoint's configuration) records one."""
    config = json.loads((run / "config.json").read_text())
    config[section]["data_dir"] = "/old/data"
    (run / "config.json").write_text(json.dumps(config))
    if not in_state:
        return
    meta = record.read_meta(run)
    assert meta is not None
    checkpoint = checkpoints.load_checkpoint(run, meta.run_id)
    state = torch.load(io.BytesIO(checkpoint.files["state.pt"]), weights_only=True)
    state["config"][section]["data_dir"] = "/old/data"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files = {**checkpoint.files, "state.pt": buffer.getvalue()}
    latest = _latest(run)  # re-signed in place: the step stays the state's
    (latest / "state.pt").write_bytes(files["state.pt"])
    manifest = checkpoints._manifest_bytes(meta.run_id, checkpoint.step, files)
    (latest / checkpoints.MANIFEST_FILE).write_bytes(manifest)


def test_a_run_recorded_with_a_stray_data_dir_still_resumes(run_copy, tmp_path) -> None:
    """Synthetic and digits now refuse a data_dir; one recorded by an Esper that ignored it is
    dropped on resume instead of making the run unresumable (review)."""
    _recorded_data_dir(run_copy, "training", in_state=False)
    assert main(["heuristic", "--resume", str(run_copy)]) == 0
    ppo = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--out", str(ppo)]) == 0
    (ppo / "summary.json").unlink()
    _recorded_data_dir(ppo, "env", in_state=True)
    assert main(["ppo", "--resume", str(ppo)]) == 0
    summary = record.read_summary(ppo)
    assert summary is not None and summary.status == "completed"


# ------------------------------------------------------------------------------ permissions


def _unprivileged_esper(*args: str) -> subprocess.CompletedProcess[str]:
    from conftest import unprivileged

    command = [*unprivileged(), *ESPER, *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line (a resume prints its configuration first), exit 2, no traceback."""
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("esper: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.rstrip("\n").endswith(errors[0])
    return errors[0]


def test_an_old_checkpoint_that_cannot_be_removed_leaves_the_run_resumable(run_copy) -> None:
    """Removing the previous step after LATEST had switched failed the commit: the CSV was
    cut behind the new checkpoint ("the rows end at epoch 5, the checkpoint is at 6") and the
    run could never resume. The stale step is now left for the next start to clean."""
    old = _latest(run_copy)
    old.chmod(0o555)  # its files cannot be unlinked
    try:
        done = _unprivileged_esper("heuristic", "--resume", str(run_copy))
        assert done.returncode == 0, done.stderr
    finally:
        old.chmod(0o755)
    summary = record.read_summary(run_copy)
    assert summary is not None and summary.status == "completed"
    assert summary.growth is not None and summary.growth.epochs_completed == 3
    assert (run_copy / "metrics.csv").read_text().count("\n") == 1 + 3
    assert old.is_dir() and _latest(run_copy) != old  # stale, left behind
    assert old in checkpoints.clean_stale(run_copy)  # the next start removes it


@pytest.mark.parametrize(("mode", "where"), [(0o000, record.META_FILE), (0o333, "")])
def test_a_run_without_permissions_is_one_line_and_untouched(run_copy, mode, where) -> None:
    """``--resume`` of a run directory without search (or read) permission was a traceback."""
    before = _snapshot(run_copy)
    run_copy.chmod(mode)
    try:
        line = _error_line(_unprivileged_esper("heuristic", "--resume", str(run_copy)))
    finally:
        run_copy.chmod(0o755)
    assert "Permission denied" in line and str(run_copy) in line and where in line
    assert _snapshot(run_copy) == before


def test_an_unreadable_checkpoint_pointer_is_not_called_corrupt(run_copy) -> None:
    pointer = run_copy / record.CHECKPOINTS_DIR / checkpoints.LATEST_FILE
    pointer.chmod(0o000)
    try:
        line = _error_line(_unprivileged_esper("heuristic", "--resume", str(run_copy)))
    finally:
        pointer.chmod(0o644)
    assert f"cannot read {str(pointer)!r}: Permission denied" in line and "corrupt" not in line


def test_a_new_run_under_a_parent_it_cannot_read_is_not_made(tmp_path) -> None:
    """With the parent writable but not readable, the run was renamed into place, then the
    parent's fsync failed: an error said the run was not made, and there it was."""
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o333)
    try:
        done = _unprivileged_esper("heuristic", *TINY, "--epochs", "2", "--out", str(parent / "r"))
        line = _error_line(done)
        assert "Permission denied" in line
        assert os.listdir(parent) == []  # neither the run nor its staging directory
    finally:
        parent.chmod(0o755)
