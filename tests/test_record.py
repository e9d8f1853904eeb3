"""The run record: atomic writes, crash-safe checkpoints, one summary schema, strict CSV logs.

Every test works on real files. Crashes are real too: a forked child ``os._exit``s at the k-th
file-system call of a commit (for every k), and a child process is SIGKILLed while committing.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import cnn_host, grow, growth_summary, host_input, ppo_summary
from esper.data import make_synthetic
from esper.kasmina import MorphogeneticModel
from esper.kasmina.checkpoint import model_bytes, model_from_bytes
from esper.leyline import SeedStage
from esper.leyline.files import DiskFullError, WriteError, atomic_write, atomic_write_all
from esper.nissa.checkpoints import (
    LATEST_FILE,
    MANIFEST_FILE,
    clean_stale,
    commit_checkpoint,
    load_checkpoint,
)
from esper.nissa.csvlog import CsvLog, read_rows
from esper.nissa.record import (
    CHECKPOINTS_DIR,
    SUMMARY_FILE,
    UNFINISHED,
    RunRecordError,
    named,
    new_run_id,
    read_meta,
    read_summary,
    run_meta,
    run_status,
    study_score,
    write_json,
    write_summary,
)

RUN = "run-a"


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text, text
    return text


def _leftovers(directory: Path) -> list[str]:
    """Temporary files and partial checkpoints anywhere below ``directory``."""
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if ".tmp-" in p.name or p.name.startswith(".partial-")
    )


def test_run_ids_are_the_name_made_unique() -> None:
    ids = {new_run_id(Path("out") / "grow") for _ in range(100)}
    assert len(ids) == 100 and all(named(i, "grow") for i in ids)
    assert named("grow", "grow")  # a run made before ids had digits
    for run_id, name in [("grow-1a2b3c4d", "gro"), ("grow-1a2b3c4d", "grow-1"), ("grow", "gro"),
                         ("grow-1a2b3c4", "grow"), ("grow-1a2b3c4d-1a2b3c4d", "grow"),
                         ("grow-1A2B3C4D", "grow"), ("growx", "grow")]:  # fmt: skip
        assert not named(run_id, name), (run_id, name)


# ------------------------------------------------------------------------------ atomic write


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    atomic_write(path, "old\n")
    atomic_write(path, b"new\n")
    assert path.read_text() == "new\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_atomic_write_keeps_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "f.json"
    atomic_write(path, "old\n")

    def fail(*args: Any) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_atomic_write_onto_a_directory_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "trials.csv").mkdir()
    with pytest.raises(WriteError) as caught:
        atomic_write(tmp_path / "trials.csv", "a,b\n")
    assert _one_line(caught.value).endswith("trials.csv': it is a directory, not a file")
    assert _leftovers(tmp_path) == [] and not any((tmp_path / "trials.csv").iterdir())


def test_atomic_write_all_writes_nothing_when_one_target_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "b.png").mkdir()
    with pytest.raises(WriteError, match=r"b\.png': it is a directory"):
        atomic_write_all([(tmp_path / "a.svg", "<svg/>"), (tmp_path / "b.png", b"png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png"]
    atomic_write_all([(tmp_path / "a.svg", "<svg/>"), (tmp_path / "c.png", b"png")])
    assert (tmp_path / "a.svg").read_text() == "<svg/>" and (
        tmp_path / "c.png"
    ).read_bytes() == b"png"


def test_a_full_disk_is_its_own_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "summary.json"
    atomic_write(path, "old\n")

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFullError) as caught:
        atomic_write(path, "new\n")
    monkeypatch.undo()
    assert _one_line(caught.value) == f"out of disk space writing {str(path)!r}"
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n" and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------- checkpoints


def _files(step: int, repeat: int = 50) -> dict[str, bytes]:
    """Checkpoint files whose content says which step they belong to."""
    return {"model.pt": f"model {step} ".encode() * repeat, "state.pt": f"state {step}".encode()}


def _committed(run_dir: Path, step: int) -> Path:
    run_dir.mkdir(exist_ok=True)
    return commit_checkpoint(run_dir, step, _files(step), RUN)


def test_commit_and_load_round_trip_and_keep_only_the_latest(tmp_path: Path) -> None:
    for step in (0, 1, 2):
        _committed(tmp_path, step)
    root = tmp_path / CHECKPOINTS_DIR
    assert sorted(p.name for p in root.iterdir()) == [LATEST_FILE, "step-00000002"]
    assert (root / LATEST_FILE).read_text() == "step-00000002\n"
    checkpoint = load_checkpoint(tmp_path, RUN)
    assert checkpoint.step == 2 and checkpoint.files == _files(2)


def test_a_grown_model_travels_as_checkpoint_bytes(tmp_path: Path) -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid"])
    grow(model, "mid", "conv_light", SeedStage.BLENDING)
    commit_checkpoint(tmp_path, 3, {"model.pt": model_bytes(model)}, RUN)
    data = load_checkpoint(tmp_path, RUN).files["model.pt"]
    loaded = model_from_bytes(data, "model.pt").eval()
    x = host_input(model.host)
    assert torch.equal(loaded(x), model.eval()(x))
    assert loaded.slot("mid").stage is SeedStage.BLENDING


@pytest.mark.parametrize("name", ["model.pt", "state.pt", MANIFEST_FILE])
def test_every_flipped_bit_in_a_checkpoint_file_is_one_line_naming_it(
    tmp_path: Path, name: str
) -> None:
    """Each byte of the file in turn gets one bit flipped (bit ``i % 8``)."""
    path = _committed(tmp_path, 1) / name
    original = path.read_bytes()
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(damaged))
        with pytest.raises(RunRecordError) as caught:
            load_checkpoint(tmp_path, RUN)
        message = _one_line(caught.value)
        if name == MANIFEST_FILE:  # a flip may also break its JSON or its digest's key
            assert message.startswith(f"checkpoint file {str(path)!r} is corrupt ("), i
        else:
            assert message == f"checkpoint file {str(path)!r} is corrupt (SHA-256 mismatch)"
    path.write_bytes(original)
    assert load_checkpoint(tmp_path, RUN).files == _files(1)


def test_a_manifest_with_an_integer_too_long_to_read_is_corrupt(tmp_path: Path) -> None:
    """Python refuses integers of over 4,300 digits with a plain ValueError (a traceback)."""
    path = _committed(tmp_path, 1) / MANIFEST_FILE
    path.write_text(path.read_text().replace("{", '{"n": ' + "9" * 5000 + ", ", 1))
    with pytest.raises(RunRecordError) as caught:
        load_checkpoint(tmp_path, RUN)
    assert _one_line(caught.value) == (
        f"checkpoint file {str(path)!r} is corrupt (a 5000-digit integer; at most 4300 digits "
        "are read)"
    )


def test_a_flipped_bit_in_the_pointer_is_one_line_naming_it(tmp_path: Path) -> None:
    _committed(tmp_path, 1)
    pointer = tmp_path / CHECKPOINTS_DIR / LATEST_FILE
    original = pointer.read_bytes()
    for i in range(len(original)):
        for bit in range(8):
            damaged = bytearray(original)
            damaged[i] ^= 1 << bit
            pointer.write_bytes(bytes(damaged))
            with pytest.raises(RunRecordError) as caught:
                load_checkpoint(tmp_path, RUN)
            assert f"checkpoint pointer {str(pointer)!r}" in _one_line(caught.value)


def test_a_truncated_file_is_named_with_its_size(tmp_path: Path) -> None:
    path = _committed(tmp_path, 1) / "model.pt"
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(RunRecordError, match=r"model.pt' is corrupt \(10 bytes, the manifest says"):
        load_checkpoint(tmp_path, RUN)


def test_a_foreign_or_unknown_checkpoint_is_refused(tmp_path: Path) -> None:
    _committed(tmp_path, 4)
    with pytest.raises(RunRecordError) as caught:
        load_checkpoint(tmp_path, "run-b")
    line = _one_line(caught.value)
    assert "belongs to run 'run-a', not 'run-b'" in line
    assert "not 'run-b' (the run meta.json names): the checkpoint or meta.json" in line
    # A checkpoint of another run copied in, pointer and all, is refused the same way.
    other = tmp_path / "other"
    other.mkdir()
    commit_checkpoint(other, 30, _files(30), "run-b")
    with pytest.raises(RunRecordError, match="belongs to run 'run-b', not 'run-a'"):
        load_checkpoint(other, RUN)


def test_an_unknown_format_version_is_refused(tmp_path: Path) -> None:
    from esper.nissa import checkpoints

    directory = _committed(tmp_path, 1)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    body["version"] = 99
    canonical = checkpoints._canonical
    digest = checkpoints._sha256(canonical(body))  # a well-formed manifest of a newer Esper
    (directory / MANIFEST_FILE).write_bytes(canonical({**body, "manifest_sha256": digest}))
    with pytest.raises(RunRecordError) as caught:
        load_checkpoint(tmp_path, RUN)
    assert "version 99; this Esper reads 'esper-checkpoint' version 1" in _one_line(caught.value)


def test_missing_pointer_or_directory_or_extra_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RunRecordError, match="holds no committed checkpoint"):
        load_checkpoint(tmp_path, RUN)
    directory = _committed(tmp_path, 2)
    (directory / "stray.bin").write_bytes(b"?")
    with pytest.raises(RunRecordError, match=r"files \['stray.bin'\] differ from its manifest"):
        load_checkpoint(tmp_path, RUN)
    (directory / "stray.bin").unlink()
    (tmp_path / CHECKPOINTS_DIR / LATEST_FILE).write_text("step-00000007\n")
    with pytest.raises(RunRecordError) as caught:
        load_checkpoint(tmp_path, RUN)
    assert "names 'step-00000007', which does not exist" in _one_line(caught.value)


def test_recommitting_the_latest_step_is_refused(tmp_path: Path) -> None:
    _committed(tmp_path, 2)
    with pytest.raises(ValueError, match="already committed"):
        _committed(tmp_path, 2)
    assert load_checkpoint(tmp_path, RUN).files == _files(2)
    with pytest.raises(ValueError, match="not a checkpoint file name"):
        commit_checkpoint(tmp_path, 3, {MANIFEST_FILE: b"x"}, RUN)


def test_clean_stale_removes_what_a_crash_left(tmp_path: Path) -> None:
    _committed(tmp_path, 1)
    root = tmp_path / CHECKPOINTS_DIR
    (root / ".partial-2-999").mkdir()
    (root / ".partial-2-999" / "model.pt").write_bytes(b"half")
    (root / "step-00000002").mkdir()  # renamed, but LATEST never switched to it
    (root / ".LATEST.tmp-abc").write_text("step-00000002\n")
    (tmp_path / ".summary.json.tmp-xyz").write_text("{")
    (tmp_path / "notes.txt").write_text("kept")
    removed = clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == [
        ".LATEST.tmp-abc",
        ".partial-2-999",
        ".summary.json.tmp-xyz",
        "step-00000002",
    ]
    assert sorted(p.name for p in root.iterdir()) == [LATEST_FILE, "step-00000001"]
    assert (tmp_path / "notes.txt").exists() and _leftovers(tmp_path) == []
    assert load_checkpoint(tmp_path, RUN).step == 1
    assert clean_stale(tmp_path) == []


def test_linked_step_directories_lose_only_their_links(tmp_path: Path) -> None:
    """A step directory that is a symbolic link (a user's copy, a restored backup) is removed as
    a link, by clean_stale and by the next commit alike: its target is not the run's to delete,
    and an rmtree of a link would fail after LATEST moved on."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    _committed(run, 1)
    root = run / CHECKPOINTS_DIR
    target = elsewhere / "step-00000001"
    elsewhere.mkdir()
    os.rename(root / "step-00000001", target)
    (root / "step-00000001").symlink_to(target)  # the latest checkpoint, linked
    stray = elsewhere / "stray"
    stray.mkdir()
    (root / "step-00000000").symlink_to(stray)  # a stale step, linked
    assert [p.name for p in clean_stale(run)] == ["step-00000000"]
    assert stray.is_dir() and load_checkpoint(run, RUN).step == 1
    _committed(run, 2)
    assert sorted(p.name for p in root.iterdir()) == [LATEST_FILE, "step-00000002"]
    assert sorted(p.name for p in target.iterdir()) == sorted([*_files(1), MANIFEST_FILE])


def test_clean_stale_keeps_step_directories_behind_a_corrupt_pointer(tmp_path: Path) -> None:
    _committed(tmp_path, 1)
    (tmp_path / CHECKPOINTS_DIR / LATEST_FILE).write_text("garbage")
    assert clean_stale(tmp_path) == []
    assert (tmp_path / CHECKPOINTS_DIR / "step-00000001").is_dir()


_PATCHED = ("open", "write", "fsync", "close", "mkdir", "rename", "replace", "unlink", "rmdir")
"""The file-system calls a commit makes; a crash is simulated at each of them in turn."""


def _crash_at(k: int, action: Callable[[], None]) -> int:
    """Run ``action`` in a forked child that dies (``os._exit``, no cleanup) at its k-th
    file-system call; return the child's exit code (0: the action finished first)."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            calls = [0]
            for name in _PATCHED:
                real = getattr(os, name)

                def patched(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
                    calls[0] += 1
                    if calls[0] == k:
                        os._exit(9)
                    return _real(*args, **kwargs)

                setattr(os, name, patched)
            action()
            os._exit(0)
        except BaseException:
            os._exit(3)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_crash_at_every_file_system_call_leaves_the_old_or_the_new_checkpoint(
    tmp_path: Path,
) -> None:
    outcomes = []
    for k in range(1, 500):
        run_dir = tmp_path / f"k{k}"
        _committed(run_dir, 1)
        code = _crash_at(k, lambda run_dir=run_dir: _committed(run_dir, 2))
        assert code in (0, 9), code
        clean_stale(run_dir)
        checkpoint = load_checkpoint(run_dir, RUN)
        assert checkpoint.files == _files(checkpoint.step)
        assert _leftovers(run_dir) == []
        outcomes.append(checkpoint.step)
        if code == 0:
            break
    else:
        pytest.fail("the commit never finished")
    # Old until the pointer switches, new from then on; both happen.
    switch = outcomes.index(2)
    assert set(outcomes[:switch]) == {1} and set(outcomes[switch:]) == {2}
    assert switch > 10, outcomes  # the crash points really covered the commit's writes
    _committed(run_dir, 3)  # and the run goes on committing


_COMMITTER = """
import sys
from pathlib import Path
from esper.nissa.checkpoints import clean_stale, commit_checkpoint, load_checkpoint
run_dir = Path(sys.argv[1])
clean_stale(run_dir)
step = load_checkpoint(run_dir, "run-a").step + 1
print("ready", flush=True)
while True:  # the files of tests/test_record.py _files(step, repeat=5000)
    files = {"model.pt": f"model {step} ".encode() * 5000, "state.pt": f"state {step}".encode()}
    commit_checkpoint(run_dir, step, files, "run-a")
    step += 1
"""


def test_sigkill_while_committing_always_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    commit_checkpoint(tmp_path, 1, _files(1, repeat=5000), RUN)
    steps = []
    for i in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", _COMMITTER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        time.sleep(0.01 + 0.013 * i)
        child.send_signal(signal.SIGKILL)
        child.wait()
        clean_stale(tmp_path)
        checkpoint = load_checkpoint(tmp_path, RUN)
        assert checkpoint.files == _files(checkpoint.step, repeat=5000)
        steps.append(checkpoint.step)
    assert steps == sorted(steps) and steps[-1] > 1


def test_a_full_disk_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    run_dir = small_disk / "run"
    _committed(run_dir, 1)
    summary_path = run_dir / SUMMARY_FILE
    atomic_write(summary_path, "old\n")
    with pytest.raises(DiskFullError) as caught:
        commit_checkpoint(run_dir, 2, {"model.pt": b"\1" * 400_000}, RUN)
    assert _one_line(caught.value).startswith("out of disk space writing ")
    assert load_checkpoint(run_dir, RUN).files == _files(1)
    assert _leftovers(run_dir) == []
    with pytest.raises(DiskFullError, match="out of disk space writing"):
        atomic_write(summary_path, b"\1" * 400_000)
    assert summary_path.read_text() == "old\n" and _leftovers(run_dir) == []


def test_a_commit_at_every_free_space_succeeds_whole_or_not_at_all(small_disk: Path) -> None:
    """Free space shrinks page by page, so the commit runs out at each of its writes, the
    pointer's included: every attempt either commits or leaves the previous checkpoint."""
    run_dir = small_disk / "run"
    _committed(run_dir, 1)
    filler = small_disk / "filler"
    results = []
    for pages_free in range(12, -1, -1):
        clean_stale(run_dir)
        filler.unlink(missing_ok=True)
        stat = os.statvfs(small_disk)
        filler.write_bytes(b"\0" * max(0, (stat.f_bavail - pages_free) * stat.f_frsize))
        latest = load_checkpoint(run_dir, RUN).step
        try:
            commit_checkpoint(run_dir, latest + 1, _files(latest + 1), RUN)
            results.append("committed")
        except DiskFullError:
            results.append("full")
            assert load_checkpoint(run_dir, RUN).step == latest
            assert _leftovers(run_dir) == []
        checkpoint = load_checkpoint(run_dir, RUN)
        assert checkpoint.files == _files(checkpoint.step)
    assert "committed" in results and "full" in results, results


# ---------------------------------------------------------------------------------- summary


def test_summaries_round_trip(tmp_path: Path) -> None:
    assert read_summary(tmp_path) is None and run_status(tmp_path) == UNFINISHED
    # seed 2**32: a run made before seeds stopped at 2**32 - 1 still reads
    for summary in (growth_summary(RUN, seed=2**32), growth_summary(RUN), ppo_summary(RUN)):
        write_summary(tmp_path, summary)
        assert read_summary(tmp_path) == summary
        assert read_summary(str(tmp_path)) == summary  # public: a str path was a TypeError
        assert run_status(tmp_path) == summary.status
    text = (tmp_path / SUMMARY_FILE).read_text()
    assert json.loads(text)["ppo"]["env_steps"] == 640 and json.loads(text)["growth"] is None
    # A growth summary written before the final model's validation accuracy was recorded
    # reads without it (a score = "validation" study does not count such a trial).
    measured = replace(growth_summary(RUN), status="completed")
    measured = replace(measured, growth=replace(measured.growth, final_model_val_accuracy=80.5))
    old = measured.to_json()
    del old["growth"]["final_model_val_accuracy"]
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(old))
    assert read_summary(tmp_path) == replace(
        measured, growth=replace(measured.growth, final_model_val_accuracy=None)
    )


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        ({"settings": {"out": "o"}}, "test"),  # a study saved before the setting existed
        ({"settings": {"score": "validation"}}, "validation"),
        ({"settings": {"score": "validation "}}, 'its score "validation " is not one of test, '),
        ({"settings": {"score": 3}}, "its score 3 is not one of test, validation"),
        ({"attempts": {}}, "(it holds no settings table)"),
        ([], "(it holds no settings table)"),
        (None, "holds no study (no study.json)"),
    ],
)
def test_a_studys_score_is_read_from_its_saved_settings(tmp_path, saved, expected) -> None:
    if saved is not None:
        (tmp_path / "study.json").write_text(json.dumps(saved))
    if expected in ("test", "validation"):
        assert study_score(tmp_path) == expected
        return
    with pytest.raises(RunRecordError) as caught:
        study_score(tmp_path)
    assert expected in _one_line(caught.value)


def _broken_summaries() -> dict[str, Callable[[Path], None]]:
    good = growth_summary(RUN).to_json()
    g, ppo = good["growth"], ppo_summary(RUN).to_json()

    def write(data: Any) -> Callable[[Path], None]:
        return lambda path: path.write_text(data if isinstance(data, str) else json.dumps(data))

    return {
        "a directory": lambda path: path.mkdir(),
        "garbage": write("\x00\x01 not json"),
        "not utf-8": lambda path: path.write_bytes(b"\xff\xfe{}"),
        "a list": write([1, 2]),
        "missing keys": write({k: v for k, v in good.items() if k != "seed"}),
        "unknown key": write(good | {"seconds": 1.0}),
        "wrong type": write(good | {"seed": "seven"}),
        "a bool for a number": write(good | {"wall_seconds": True}),
        "wrong nested type": write(good | {"growth": good["growth"] | {"fossilized": 1.5}}),
        "missing nested key": write(good | {"growth": {"epochs_completed": 3}}),
        "the wrong section": write(good | {"growth": None}),
        "an unknown status": write(good | {"status": "done"}),
        "deep nesting": write("[" * 100_000 + "]" * 100_000),
        # Python refuses to read an integer of over 4,300 digits (a ValueError, not JSON's)
        "a 5000-digit seed": write(json.dumps(good).replace('"seed": 7', '"seed": ' + "9" * 5000)),
        "old schema": write({"status": "completed", "task": "t", "final": None}),
        # impossible values, which the views showed and aggregated (adversarial sweep)
        "a NaN wall time": write(json.dumps(good).replace("12.5", "NaN")),
        "a negative seed": write(good | {"seed": -7}),
        "more epochs done than planned": write(good | {"growth": g | {"epochs_completed": 6}}),
        "1e23 epochs planned": write(good | {"growth": g | {"epochs_planned": 10**23}}),
        "an accuracy of 150%": write(good | {"growth": g | {"best_val_accuracy": 150.0}}),
        "a final model at -1%": write(good | {"growth": g | {"final_model_val_accuracy": -1}}),
        "a negative parameter count": write(good | {"growth": g | {"param_count": -1}}),
        "a negative loss": write(good | {"growth": g | {"final": g["final"] | {"val_loss": -1}}}),
        "more rounds than planned": write(ppo | {"ppo": ppo["ppo"] | {"rounds_completed": 99}}),
    }


@pytest.mark.parametrize("case", list(_broken_summaries()))
def test_a_malformed_summary_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    _broken_summaries()[case](tmp_path / SUMMARY_FILE)
    with pytest.raises(RunRecordError) as caught:
        read_summary(tmp_path)
    assert str(tmp_path / SUMMARY_FILE) in _one_line(caught.value)
    if case == "a 5000-digit seed":  # it was a traceback
        assert "(a 5000-digit integer; at most 4300 digits are read)" in str(caught.value)
    if case == "a list":  # it said "the configuration", which a summary is not
        assert "summary: the top level must be a table of settings, got [1, 2]" in str(caught.value)


def test_meta_records_revision_versions_and_seeds(tmp_path: Path) -> None:
    assert read_meta(tmp_path) is None
    meta = run_meta(RUN, "ppo", {"run": 3, "environments": [3, 4]}, 2, ["esper", "ppo"])
    write_json(tmp_path / "meta.json", meta)
    loaded = read_meta(tmp_path)
    assert loaded == meta
    assert set(meta.versions) >= {"python", "esper", "torch", "numpy"}
    assert meta.git_revision is None or len(meta.git_revision.removesuffix("-dirty")) == 40
    # The CPU is part of the receipt: torch's kernels, and so the results, depend on it.
    assert meta.platform.startswith(platform.platform() + "; CPU ")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        models = re.findall(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if models:
            assert f"CPU {models[0].strip()} (" in meta.platform
        flags = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
        if flags and "avx512f" in flags.group(1).split():
            assert "avx512f" in meta.platform.rsplit("(", 1)[1]
    (tmp_path / "meta.json").write_text(json.dumps(meta.to_json() | {"mode": "grow"}))
    with pytest.raises(RunRecordError, match="mode 'grow' is not one of"):
        read_meta(tmp_path)
    # A meta.json from before the data was recorded reads as one without it.
    older = {k: v for k, v in meta.to_json().items() if k != "data"}
    (tmp_path / "meta.json").write_text(json.dumps(older))
    assert read_meta(tmp_path) == meta and meta.data is None


def test_a_runs_meta_records_its_data_where_it_came_from_and_its_splits(recorded_runs) -> None:
    """Nothing recorded which of the places searched held the data, nor the splits' sizes (a
    walk-through found them in an unshown log line only)."""
    data = make_synthetic()
    for mode in ("heuristic", "ppo"):
        meta = read_meta(recorded_runs[mode])
        assert meta is not None and meta.data == {
            "dataset": "synthetic",
            "source": "generated (make_synthetic, seed 0)",
            "samples": {"train": len(data.x_train), "val": len(data.x_val), "test": 256},
        }


# ------------------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class Row:
    step: int
    loss: float
    accuracy: float | None
    note: str


def test_csv_rows_round_trip_and_resume_drops_later_steps(tmp_path: Path) -> None:
    log = CsvLog(tmp_path / "rows.csv", Row)
    log.rewrite([])
    assert (tmp_path / "rows.csv").read_text() == "step,loss,accuracy,note\n"
    rows = [Row(1, 0.1, None, "a, b"), Row(2, float("inf"), 50.0, ""), Row(3, 1e-300, 1.5, "x")]
    for row in rows:
        log.append(row)
    assert log.read() == rows
    assert read_rows(log.path, Row) == rows
    log.append(Row(4, float("nan"), None, "n"))
    assert str(log.read()[-1].loss) == "nan"
    kept = log.read(2)  # what a resume keeps, rewritten when it starts
    log.rewrite(kept)
    assert kept == rows[:2] and log.read() == rows[:2]
    assert log.columns == ("step", "loss", "accuracy", "note")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "rows.csv:1: empty file"),
        ("step,loss,accuracy,note\n1,0.5,,a\n2,0.", "rows.csv:3: truncated last line"),
        ("epoch,loss,accuracy,note\n", "rows.csv:1: columns ['epoch', 'loss', 'accuracy', 'note']"),
        ("\x00\x17garbage\n", "rows.csv:1: columns"),
        ("step,loss,accuracy,note\n1,abc,,a\n", "rows.csv:2: loss 'abc' is not a number"),
        ("step,loss,accuracy,note\n1.0,1,,a\n", "rows.csv:2: step '1.0' is not an integer"),
        ("step,loss,accuracy,note\n1,,,a\n", "rows.csv:2: loss '' is empty"),
        ("step,loss,accuracy,note\n1,1,2\n", "rows.csv:2: 3 values, expected 4"),
        ("step,loss,accuracy,note\n1,1,,a\n1,1,,a\n", "rows.csv:3: step 1 where step 2 belongs"),
        # a missing row: steps must be 1, 2, 3, ... (a resume must not lose an epoch's row)
        ("step,loss,accuracy,note\n1,1,,a\n3,1,,a\n", "rows.csv:3: step 3 where step 2 belongs"),
        ("step,loss,accuracy,note\n2,1,,a\n", "rows.csv:2: step 2 where step 1 belongs"),
        (  # Python's own advice (sys.set_int_max_str_digits) is not for a user
            "step,loss,accuracy,note\n" + "9" * 5000 + ",1,,a\n",
            "rows.csv:2: step '999999999999999999999999999999' is a 5000-digit integer; at most",
        ),
    ],
)
def test_a_malformed_csv_is_one_line_naming_file_and_line(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(content)
    with pytest.raises(RunRecordError) as caught:
        read_rows(path, Row)
    assert message in _one_line(caught.value)


def test_rows_that_do_not_reach_the_checkpoint_are_refused(tmp_path: Path) -> None:
    log = CsvLog(tmp_path / "rows.csv", Row)
    log.rewrite([Row(1, 0.0, None, "")])
    assert log.read(0) == [] and log.read(1) == [Row(1, 0.0, None, "")]
    with pytest.raises(RunRecordError, match="the rows end at step 1, the checkpoint is at 30"):
        log.read(30)
    log.rewrite([])  # an emptied log does not silently drop a resumed run's epochs
    with pytest.raises(RunRecordError, match="the rows end at step 0, the checkpoint is at 5"):
        log.read(5)
    with pytest.raises(RunRecordError, match="not UTF-8"):
        (tmp_path / "rows.csv").write_bytes(b"\xff\xfe")
        log.read()


def test_a_resume_drops_a_partial_row_after_its_checkpoint(tmp_path: Path) -> None:
    """A short write (a full disk) of the step after the checkpoint left a row without its
    newline, and the run could never resume (every study attempt failed on it)."""
    path = tmp_path / "rows.csv"
    path.write_text("step,loss,accuracy,note\n1,0.5,,a\n2,0.")
    assert CsvLog(path, Row).read(1) == [Row(1, 0.5, None, "a")]
    with pytest.raises(RunRecordError, match=r"rows\.csv:3: truncated last line"):
        read_rows(path, Row)  # a reader of the whole log still says so
    with pytest.raises(RunRecordError, match="the rows end at step 1, the checkpoint is at 2"):
        CsvLog(path, Row).read(2)  # the partial row was the checkpoint's own: damage
    path.write_text("step,loss,acc")  # no whole header
    with pytest.raises(RunRecordError, match=r"rows\.csv:1: truncated last line"):
        CsvLog(path, Row).read(0)


def test_a_row_type_must_start_with_an_integer_step(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Bad:
        loss: float

    with pytest.raises(TypeError, match="the first field must be the integer step"):
        CsvLog(tmp_path / "x.csv", Bad)
    with pytest.raises(TypeError, match="a row must be a Row"):
        CsvLog(tmp_path / "x.csv", Row).append(Bad(1.0))  # type: ignore[arg-type]


def test_strict_json_is_the_one_rule_for_every_json_written() -> None:
    """One function for the run record and the event lines (the hub had its own, which left
    tuples and dataclasses alone): non-finite floats become null at any depth."""
    import math
    from types import MappingProxyType

    import numpy as np

    from esper.nissa.record import strict_json

    @dataclass(frozen=True)
    class Point:
        x: float
        tags: tuple[str, ...]

    value = {
        "a": [1, math.nan, (2.5, -math.inf)],
        3: Point(math.inf, ("BLENDING",)),
        "n": np.float64("nan"),
        "m": MappingProxyType({"k": (True, None)}),
    }
    out = strict_json(value)
    assert json.loads(json.dumps(out, allow_nan=False)) == {
        "a": [1, None, [2.5, None]],
        "3": {"x": None, "tags": ["BLENDING"]},
        "n": None,
        "m": {"k": [True, None]},
    }
