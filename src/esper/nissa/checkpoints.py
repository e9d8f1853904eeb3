"""Checkpoints of a run (``RUN/checkpoints/``, ``esper.nissa.record``'s layout): committed as a
whole, verified byte for byte when loaded.

A checkpoint's files and a ``manifest.json`` (format, run id, step, each file's size and SHA-256,
and the manifest's own SHA-256) are written into ``checkpoints/.partial-<step>-<pid>``, fsynced,
renamed to ``checkpoints/step-<step:08d>``, and only then does the pointer file
``checkpoints/LATEST`` (the directory's name) switch to it, atomically; older step directories
are deleted afterwards. A crash at any point leaves LATEST naming a complete checkpoint, and
``clean_stale`` removes what the crash left behind. ``load_checkpoint`` verifies pointer,
manifest and every byte; anything wrong is a ``RunRecordError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.leyline.config import json_reason
from esper.leyline.files import (
    DiskFullError,
    atomic_write,
    disk_full,
    fsync_directory,
    is_disk_full,
    read_regular,
    remove_temporaries,
    write_new_file,
)
from esper.nissa.record import (
    CHECKPOINTS_DIR,
    MAX_JSON_BYTES,
    META_FILE,
    RunRecordError,
    read_bytes,
)

logger = logging.getLogger(__name__)

LATEST_FILE = "LATEST"
MANIFEST_FILE = "manifest.json"
PARTIAL_PREFIX = ".partial-"
CHECKPOINT_FORMAT = "esper-checkpoint"
CHECKPOINT_VERSION = 1
"""Bumped whenever the checkpoint layout changes, so an old one fails with a clear message."""

_STEP_DIR = re.compile(r"step-(\d{8,})")


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint: its step and every file's bytes (verified)."""

    step: int
    files: dict[str, bytes]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _manifest_bytes(run_id: str, step: int, files: Mapping[str, bytes]) -> bytes:
    body = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "run_id": run_id,
        "step": step,
        "files": {n: {"sha256": _sha256(d), "size": len(d)} for n, d in files.items()},
    }
    # The manifest's own digest makes a flipped bit in it an error, not a misread file list.
    return _canonical({**body, "manifest_sha256": _sha256(_canonical(body))})


def step_directory(step: int) -> str:
    """The name of the checkpoint directory of ``step``."""
    return f"step-{step:08d}"


_RESERVED = (MANIFEST_FILE, LATEST_FILE)


def _latest_name(root: Path) -> str | None:
    """The directory LATEST names if it is well-formed, else None (absent or corrupt)."""
    try:
        text = read_regular(root / LATEST_FILE, limit=64).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    name = text.removesuffix("\n")
    return name if text.endswith("\n") and _STEP_DIR.fullmatch(name) else None


def latest_step(run_dir: Path) -> int | None:
    """The step of the run's last committed checkpoint (a growth run's epochs, a PPO run's
    rounds) as ``LATEST`` names it, unverified (a resume verifies it); None without one."""
    name = _latest_name(run_dir / CHECKPOINTS_DIR)
    found = None if name is None else _STEP_DIR.fullmatch(name)
    return None if found is None else int(found[1])


def commit_checkpoint(run_dir: Path, step: int, files: Mapping[str, bytes], run_id: str) -> Path:
    """Commit ``files`` as the run's checkpoint of ``step``, as a whole (the steps are in the
    module docstring); until LATEST switches, the previous checkpoint is the one that loads.

    Args:
        run_dir: the run directory.
        step: the epoch (round) the checkpoint is taken after; it must not be the step LATEST
            already names.
        files: file name → bytes (plain names; ``manifest.json`` is the module's own).
        run_id: the run's id, recorded and checked by ``load_checkpoint``.

    Returns:
        The committed step directory.

    Raises:
        DiskFullError: the disk is full; nothing of this checkpoint is left behind and the
            previous one still loads.
        ValueError: a bad file name or step.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"a checkpoint step is an integer >= 0, got {step!r}")
    for name in files:
        if not name or name[0] == "." or "/" in name or "\0" in name or name in _RESERVED:
            raise ValueError(f"{name!r} is not a checkpoint file name")
    if not files:
        raise ValueError("a checkpoint needs at least one file")
    root = run_dir / CHECKPOINTS_DIR
    final = root / step_directory(step)
    if _latest_name(root) == final.name:
        raise ValueError(f"checkpoint {final.name} is already committed in {str(root)!r}")
    partial = root / f"{PARTIAL_PREFIX}{step}-{os.getpid()}"
    renamed = False
    try:
        root.mkdir(exist_ok=True)
        if partial.exists() or partial.is_symlink():
            _remove(partial)
        partial.mkdir()
        for name, data in files.items():
            write_new_file(partial / name, data)
        write_new_file(partial / MANIFEST_FILE, _manifest_bytes(run_id, step, files))
        fsync_directory(partial)
        if final.exists() or final.is_symlink():  # an attempt crashed before switching LATEST
            _remove(final)
        os.rename(partial, final)
        renamed = True
        fsync_directory(root)
        atomic_write(root / LATEST_FILE, final.name + "\n")
    except BaseException as err:
        # Best effort: the original error is what the caller must see.
        shutil.rmtree(final if renamed else partial, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, DiskFullError) and is_disk_full(err):
            raise disk_full(err, partial) from None
        raise
    _drop_old_steps(root, final)
    return final


def _drop_old_steps(root: Path, final: Path) -> None:
    """Remove the steps before ``final``, once LATEST names it: cleanup, not part of the commit.
    A step that cannot be removed (no permission) is stale, and ``clean_stale`` retries it on
    the next start; failing the commit here made the caller cut its CSV behind the switched
    LATEST, and the run could never resume."""
    try:
        for old in root.iterdir():
            if old != final and _STEP_DIR.fullmatch(old.name) and old.is_dir():
                _remove(old)
        fsync_directory(root)
    except OSError as err:
        logger.warning("checkpoint %s committed; an older step stays until the next start: %s",
                       final.name, err)  # fmt: skip


def _remove(path: Path) -> None:
    """Delete a checkpoint directory, or only the link when it is a symbolic link (its target,
    wherever it is, is not the run's to delete)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)


def _corrupt(path: Path, why: str) -> RunRecordError:
    return RunRecordError(f"checkpoint file {str(path)!r} is corrupt ({why})")


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest's body, verified against its own SHA-256 and exact bytes."""
    try:
        raw = read_regular(path, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise RunRecordError(f"checkpoint {str(path.parent)!r} has no {MANIFEST_FILE}") from None
    except OSError as err:
        raise RunRecordError(f"cannot read {str(path)!r}: {err.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, an integer too long
        raise _corrupt(path, json_reason(err)) from None
    if not isinstance(data, dict) or not isinstance(data.get("manifest_sha256"), str):
        raise _corrupt(path, "no manifest_sha256")
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    if _sha256(_canonical(body)) != data["manifest_sha256"] or _canonical(data) != raw:
        raise _corrupt(path, "SHA-256 mismatch")
    return body


def _check_manifest(body: dict[str, Any], path: Path, run_id: str, step: int) -> dict[str, Any]:
    """The manifest's file table, after checking format, run id and step."""
    if (body.get("format"), body.get("version")) != (CHECKPOINT_FORMAT, CHECKPOINT_VERSION):
        raise RunRecordError(
            f"checkpoint {str(path.parent)!r} has format {body.get('format')!r} version "
            f"{body.get('version')!r}; this Esper reads {CHECKPOINT_FORMAT!r} version "
            f"{CHECKPOINT_VERSION}"
        )
    if body.get("run_id") != run_id:
        raise RunRecordError(
            f"checkpoint {str(path.parent)!r} belongs to run {body.get('run_id')!r}, "
            f"not {run_id!r} (the run {META_FILE} names): the checkpoint or {META_FILE} comes "
            "from another run"
        )
    table = body.get("files")
    entries = list(table.values()) if isinstance(table, dict) and table else []
    well_formed = [
        isinstance(e, dict) and set(e) == {"sha256", "size"} and isinstance(e["size"], int)
        for e in entries
    ]
    if body.get("step") != step or not isinstance(table, dict) or not all(well_formed):
        raise RunRecordError(f"checkpoint manifest {str(path)!r} is inconsistent")
    return table


def load_checkpoint(run_dir: Path, run_id: str) -> Checkpoint:
    """The checkpoint LATEST names, every byte verified against its manifest.

    Raises:
        RunRecordError: one line naming the file: no checkpoint, a corrupt pointer, a missing
            directory, a corrupt or foreign manifest, or a file whose size or SHA-256 differs.
    """
    root = run_dir / CHECKPOINTS_DIR
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        raise RunRecordError(f"{str(root)!r} holds no committed checkpoint (no {LATEST_FILE})")
    name = _latest_name(root)
    if name is None:
        try:  # no permission is not corruption
            read_regular(pointer, limit=64)
        except OSError as err:
            raise RunRecordError(f"cannot read {str(pointer)!r}: {err.strerror}") from None
        raise RunRecordError(f"checkpoint pointer {str(pointer)!r} is corrupt")
    directory = root / name
    if not directory.is_dir():
        raise RunRecordError(
            f"checkpoint pointer {str(pointer)!r} names {name!r}, which does not exist"
        )
    step = int(name.removeprefix("step-"))
    manifest = directory / MANIFEST_FILE
    table = _check_manifest(_read_manifest(manifest), manifest, run_id, step)
    present = {p.name for p in directory.iterdir()} - {MANIFEST_FILE}
    if present != set(table):
        odd = sorted(present ^ set(table))
        raise RunRecordError(f"checkpoint {str(directory)!r}: files {odd} differ from its manifest")
    loaded = {name: _verified(directory / name, entry) for name, entry in sorted(table.items())}
    return Checkpoint(step, loaded)


def _verified(path: Path, entry: dict[str, Any]) -> bytes:
    """A checkpoint file's bytes, checked against its manifest ``entry``; its size is checked
    before it is read (a link to a device has size 0 and is never read)."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise RunRecordError(f"cannot read {str(path)!r}: {err.strerror}") from None
    if size != entry["size"]:
        raise _corrupt(path, f"{size} bytes, the manifest says {entry['size']}")
    data = read_bytes(path, size)  # one that changed since is refused: too long, or its digest
    if _sha256(data) != entry["sha256"]:
        raise _corrupt(path, "SHA-256 mismatch")
    return data


def clean_stale(run_dir: Path) -> list[Path]:
    """Remove what a crashed writer left: hidden temporary files (``.NAME.tmp-*``) in the run
    and checkpoint directories, partial checkpoints, and step directories LATEST does not
    name. Call it on every start and resume, before anything is written.

    With a LATEST that is present but corrupt, step directories are kept (``load_checkpoint``
    reports the problem).

    Returns:
        The paths removed.
    """
    root = run_dir / CHECKPOINTS_DIR
    removed = [p for d in (run_dir, root) for p in remove_temporaries(d)]
    if root.is_dir():
        latest = _latest_name(root)
        keep_steps = latest is None and (root / LATEST_FILE).exists()
        for path in sorted(root.iterdir()):
            stale_step = _STEP_DIR.fullmatch(path.name) and path.name != latest and not keep_steps
            if path.is_dir() and (path.name.startswith(PARTIAL_PREFIX) or stale_step):
                _remove(path)
                removed.append(path)
    for directory in {p.parent for p in removed}:
        fsync_directory(directory)
    return removed
