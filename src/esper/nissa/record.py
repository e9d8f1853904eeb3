"""The run record: the one module that owns an Esper run directory.

Layout (every mode)::

    RUN/config.json        the resolved configuration             write_json
    RUN/meta.json          git revision, versions, seeds, command  run_meta -> write_json
    RUN/events.jsonl       one typed event per line                esper.nissa.hub.JsonlSink
    RUN/metrics.csv        one row per epoch (growth modes)        esper.nissa.csvlog.CsvLog
    RUN/rounds.csv         one row per round (ppo)                 esper.nissa.csvlog.CsvLog
    RUN/checkpoints/       LATEST + step-NNNNNNNN/                 esper.nissa.checkpoints
    RUN/summary.json       once the run stops: RunSummary          write_summary
    RUN/model.pt           the grown model (growth modes)          esper.kasmina.save_model
    RUN/outcomes.json      the seeds' outcomes (growth modes)      esper.study.growth

Every whole file is replaced through ``esper.leyline.files.atomic_write``; the event log's lines are
appended and flushed, the CSV rows appended and fsynced one by one (``esper.nissa.csvlog``, which
owns the CSV logs). A checkpoint is committed as a whole, with a manifest of every file's SHA-256
verified when it is loaded (``esper.nissa.checkpoints``, which owns the checkpoint format).

Readers load summaries through ``read_summary`` (one ``RunSummary`` schema for every mode,
mode-specific parts as nested sections). Anything malformed is a ``RunRecordError`` whose
message is one line naming the file.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import platform
import re
import secrets
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from esper.leyline.config import (
    MAX_COUNT,
    MAX_INT64,
    check_float,
    check_int,
    decode,
    json_reason,
    quoted,
)
from esper.leyline.files import (
    atomic_write,
    file_mode,
    lock_held,
    not_regular,
    read_regular,
    try_lock,
)
from esper.leyline.pages import REPORT_FILE as REPORT_FILE
from esper.leyline.trials import SCORES, STUDY_FILE, TRIALS_DIR, Score

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
META_FILE = "meta.json"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.pt"
OUTCOMES_FILE = "outcomes.json"
RUNS_DIR = Path("runs")
"""Where a run goes without ``--out`` (``runs/<name>-<stamp()>``), and the directory the views
(``esper runs``, ``dashboard``) look in by default."""

CHECKPOINTS_DIR = "checkpoints"
REPORT_DIR = "report"
"""Where ``esper report RUN`` writes the run's report by default."""
RUN_REPORT = Path(REPORT_DIR) / REPORT_FILE
"""That report's page, relative to the run directory."""

GROWTH_MODES = ("heuristic", "static", "eval", "random", "periodic")
"""Modes that train one host (``growth`` summary section, ``metrics.csv``)."""
PPO_MODE = "ppo"
"""The mode of ``esper ppo`` runs (``ppo`` summary section, ``rounds.csv``)."""
MODES = (*GROWTH_MODES, PPO_MODE)

CSV_FILES: Mapping[str, str] = {
    **dict.fromkeys(GROWTH_MODES, "metrics.csv"),
    PPO_MODE: "rounds.csv",
}
"""The per-step CSV of each mode."""

RUN_FILES = (CONFIG_FILE, EVENTS_FILE)
"""The files that make a directory an Esper run directory (written before the first step)."""

STAGING_PREFIX = ".esper-partial-"
"""A new run directory is assembled as ``.esper-partial-<pid>@<host>@<name>`` beside it and
renamed into place complete, so a kill during start-up leaves no half-made run at ``--out``.
Its name says who made it: only a staging of this host whose process is gone is removed. The
views list no staging: it is no run yet, or a start killed before its rename."""

STATUSES = ("completed", "interrupted", "terminated", "failed")
"""How a run can stop: all steps done; Ctrl-C/SIGTERM; the governor ended it; an error."""
UNFINISHED = "unfinished"
"""The status of a run without a summary: still running, or killed."""

_VERSIONED_PACKAGES = ("esper", "torch", "numpy", "tqdm", "scikit-learn", "ray", "rliable")


class RunRecordError(ValueError):
    """A run-directory file that is missing, malformed, corrupt or foreign (one-line message)."""


class RunLockedError(RunRecordError):
    """Another process is running the run (it holds the run directory's lock)."""


_NO_LOCKS = frozenset({errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})
"""How a file system without directory locks refuses one: NFS emulates ``flock`` with a
byte-range lock, which needs a file open for writing (EBADF); no lock manager (ENOLCK); some
FUSE and parallel file systems (EOPNOTSUPP, EINVAL)."""


LOCK_TRIES, LOCK_PAUSE_SECONDS = 5, 0.05
"""How often ``lock_run`` tries a lock held by another (and the pause between): a probe holds it
for an instant, a running run for good."""


def lock_run(directory: Path) -> int | None:
    """Lock the run in ``directory`` for this process (the directory itself is locked: nothing
    is written, and the lock goes where the directory is moved): the descriptor whose closing
    releases it; the kernel releases it when the process ends, kill -9 included. Two resumes of
    one run at once interleaved their rows, checkpoints and events. None, with a warning, where
    the file system cannot lock a directory: the run goes on unguarded.

    Raises:
        RunLockedError: another process is running the run.
        OSError: the directory cannot be opened.
    """
    try:
        fd = try_lock(directory, directory=True)
        for _ in range(LOCK_TRIES - 1):  # a holder for an instant (``run_is_held``'s probe)
            if fd is not None:
                break
            time.sleep(LOCK_PAUSE_SECONDS)
            fd = try_lock(directory, directory=True)
    except OSError as err:
        if err.errno not in _NO_LOCKS:
            raise
        logger.warning(
            "%s: its file system cannot lock it (%s): nothing stops a second process from "
            "running this run at the same time",
            directory,
            err.strerror,
        )
        return None
    if fd is None:
        raise RunLockedError(
            f"another process is running the run in {str(directory)!r}; wait for that run to "
            "end, or stop it, and resume then"
        )
    return fd


# ------------------------------------------------------------------------------- JSON files


_PLAIN_JSON = frozenset({str, int, bool, type(None)})
_JSON_KEYS = frozenset({str, int, float, bool, type(None)})  # json.dumps writes these keys itself


def strict_json(value: Any) -> Any:
    """``value`` as strict JSON data: dataclasses as objects, tuples as lists, a float that is
    not finite as null (missing, never NaN): the one rule of every JSON Esper writes (the run
    record's files, event lines, query results, the dashboard's answers)."""
    if type(value) in _PLAIN_JSON:  # the common cases first: this runs on every event
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k if type(k) in _JSON_KEYS else str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: strict_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` (JSON data or a dataclass) as sorted, indented, strict JSON, atomically.

    Raises:
        DiskFullError: the disk is full (``path`` keeps its old content).
    """
    text = json.dumps(strict_json(data), indent=2, sort_keys=True, allow_nan=False)
    atomic_write(path, text + "\n")


MAX_JSON_BYTES = 64 << 20
"""The largest JSON record read (config, meta, summary, outcomes, manifest: kilobytes each)."""


def read_bytes(path: Path, limit: int | None = None, what: str = "") -> bytes:
    """``path``'s bytes, if it is a regular file of at most ``limit`` bytes
    (``esper.leyline.files.read_regular``: a pipe or device is refused, not read)."""
    try:
        return read_regular(path, limit)
    except OSError as err:
        raise RunRecordError(
            f"cannot read {what}{' ' * bool(what)}{str(path)!r}: {err.strerror}"
        ) from None


def read_json(path: Path, what: str, limit: int | None = MAX_JSON_BYTES) -> Any:
    """The JSON in ``path`` (at most ``limit`` bytes), None without the file; else a
    ``RunRecordError`` saying why not."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir():
        raise RunRecordError(f"{str(path)!r} is a directory, not {what}")
    try:
        text = read_bytes(path, limit, what).decode("utf-8")
    except UnicodeDecodeError:
        raise RunRecordError(f"{str(path)!r} is not {what} (not UTF-8 text)") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise RunRecordError(f"{str(path)!r} is not {what} ({json_reason(err)})") from None


_T = TypeVar("_T")


def read_record(
    path: Path, cls: type[_T], what: str, added: Mapping[str, Any] | None = None
) -> _T | None:
    """The dataclass ``cls`` in ``path`` parsed strictly (no missing or unknown keys), or None.
    ``added``: keys of fields added since earlier versions wrote the file, with the value
    missing one stands for."""
    data = read_json(path, what)
    if isinstance(data, dict) and added:
        data = _with_added(data, added)
    try:
        return None if data is None else decode(cls, data)
    except ValueError as err:
        raise RunRecordError(f"{str(path)!r} is not {what}: {err}") from None


def _with_added(data: dict[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``read_record``'s ``added`` keys it lacks; ``section.key`` adds ``key`` to
    the table ``section`` when the file has that table."""
    merged = {**{k: v for k, v in added.items() if "." not in k}, **data}
    for key, value in added.items():
        section, dot, name = key.partition(".")
        if dot and isinstance(inner := merged.get(section), dict):
            merged[section] = {name: value, **inner}
    return merged


# --------------------------------------------------------------------------------- meta.json


@dataclass(frozen=True)
class RunMeta:
    """The reproducibility receipt of a run (``meta.json``), written when it starts; each
    resume adds itself to ``resumes``.

    Attributes:
        run_id: the run's id (``new_run_id``), written into every event and checkpoint.
        mode: one of ``MODES`` (the growth commands' or ``ppo``).
        started: start time, ISO 8601 with time zone.
        command: the command line.
        git_revision: the source revision (``-dirty`` with uncommitted changes), None outside
            a git checkout.
        versions: python and package versions (None: not installed).
        seeds: every seed the run derives (run, data order, environments, policy, ...).
        threads: torch's intra-op thread count.
        platform: the operating system, machine and CPU (model and vector extensions: torch's
            kernels dispatch on them, so a run's floating-point results can depend on them).
        data: the dataset, where it was read from and its splits' samples
            (``Dataset.receipt``); None in runs from before it was recorded.
        policy: an eval's policy: its PPO run's ``path``, ``run_id``, the PPO ``round`` it
            finished, the ``task`` it trained on and its run's ``rounds_planned`` (the last two
            missing in evals from before they were recorded); None for other modes.
        priors: a bandit selector's priors from the knowledge store (``priors_receipt``:
            how many outcomes, their SHA-256, the store), which other runs add to; None when
            it started from none, or for another controller.
        resumes: each resume of the run (``resume_record``): the step it continued after, when,
            its command, git revision and package versions, which may differ from the start's.
    """

    run_id: str
    mode: str
    started: str
    command: tuple[str, ...]
    git_revision: str | None
    versions: dict[str, str | None]
    seeds: dict[str, Any]
    threads: int
    platform: str
    data: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    priors: dict[str, Any] | None = None
    resumes: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        check_int("threads", self.threads, 1, MAX_COUNT)  # torch runs on one thread at least

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``meta.json``."""
        return dict(strict_json(self))


def _git_revision() -> str | None:
    source = str(Path(__file__).resolve().parent)
    try:
        rev, dirty = (
            subprocess.run(
                ["git", "-C", source, *args], capture_output=True, text=True, check=True, timeout=5
            ).stdout.strip()
            for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])
        )
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed wheel): recorded as null
    return rev + ("-dirty" if dirty else "")


_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
"""The vector extensions that choose torch's CPU kernels (oneDNN dispatches on them)."""


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]] | None:
    """The x86 CPU's model and which of ``_CPU_FLAGS`` it has, from Linux's ``/proc/cpuinfo``
    (None elsewhere: another system, or another architecture, whose extensions it lists
    otherwise, as ARM's ``Features``)."""
    model, flags = "", None
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        return None  # not Linux
    return None if flags is None else (model, flags & set(_CPU_FLAGS))


def _platform() -> str:
    """``platform.platform()``, the CPU model and which of ``_CPU_FLAGS`` it has
    (``cpu_info``; elsewhere ``platform.processor()`` alone, which on Linux would run
    ``uname``)."""
    model, flags = cpu_info() or ("", set())
    model = model or platform.processor() or platform.machine()
    extensions = " ".join(flag for flag in _CPU_FLAGS if flag in flags) or "none of avx2/avx512"
    return f"{platform.platform()}; CPU {model} ({extensions})"


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def stamp() -> str:
    """The local time as a new default run directory's names carry it: ``20261206-101530``."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def free_stamp(paths: Callable[[str], Sequence[Path]]) -> str:
    """``stamp()``, or with ``-2``, ``-3`` … added while one of the ``paths`` named with it
    exists: runs started in the same second (a shell loop's, two demos) get their own names (the
    second was refused, told to continue the first with ``--resume``). A thousand in one second
    get the last name, which the run's own check then refuses."""
    now = stamp()
    names = [now, *(f"{now}-{n}" for n in range(2, 1000))]
    return next((s for s in names if not any(os.path.lexists(p) for p in paths(s))), names[-1])


def new_run_id(directory: Path) -> str:
    """A new run's id: its directory's name and eight random hex digits.

    The name keeps it readable; the digits tell runs of the same name apart (two studies'
    ``TASK.ARM.seedN`` trials, ``a/grow`` and ``b/grow``, a run made again after its directory
    was deleted), which the knowledge store, keyed by run id, slot and epoch, would take for one
    run and keep only the first one's seeds. A moved or resumed run keeps its id (``meta.json``).
    """
    return f"{directory.name}-{secrets.token_hex(4)}"


_ID_DIGITS = re.compile(r"-[0-9a-f]{8}")


def named(run_id: str, name: str) -> bool:
    """``run_id`` is the id ``new_run_id`` gives a run made in a directory called ``name`` (or
    ``name`` itself, the id of a run made before ids had digits)."""
    rest = run_id[len(name) :] if run_id.startswith(name) else None
    return rest == "" or (rest is not None and _ID_DIGITS.fullmatch(rest) is not None)


def run_meta(
    run_id: str,
    mode: str,
    seeds: Mapping[str, Any],
    threads: int,
    command: Sequence[str],
    data: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
    priors: Mapping[str, Any] | None = None,
) -> RunMeta:
    """The receipt of a run starting now: git revision, package versions, platform, time, its
    ``data`` (``Dataset.receipt``) and an eval's ``policy`` (``RunMeta.policy``).

    Write it with ``write_json(run_dir / META_FILE, meta)``.
    """
    return RunMeta(
        run_id=run_id,
        mode=mode,
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        command=tuple(command),
        git_revision=_git_revision(),
        versions=_versions(),
        seeds=dict(seeds),
        threads=threads,
        platform=_platform(),
        data=None if data is None else dict(data),
        policy=None if policy is None else dict(policy),
        priors=None if priors is None else dict(priors),
    )


def code_record(command: Sequence[str]) -> dict[str, Any]:
    """What code a ``command`` starting now runs: when, the command, git revision and package
    versions (a study records one per invocation in ``study.json``)."""
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(command),
        "git_revision": _git_revision(),
        "versions": _versions(),
    }


def resume_record(step: int, command: Sequence[str]) -> dict[str, Any]:
    """What ``RunMeta.resumes`` records of a resume starting now after checkpoint ``step``."""
    return {"step": step, **code_record(command)}


def code_change(meta: RunMeta, resume: Mapping[str, Any]) -> str | None:
    """How the code of a resume (``resume_record``) differs from the code the run last ran
    (its start's, or its last resume's): "revision A -> B, torch X -> Y"; None: the same."""
    last: Mapping[str, Any] = meta.resumes[-1] if meta.resumes else {
        "git_revision": meta.git_revision, "versions": meta.versions
    }  # fmt: skip
    return code_changed(last, resume)


def code_changed(last: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """How the code of ``now`` (``code_record``) differs from ``last``'s: "revision A -> B,
    torch X -> Y"; None: the same."""
    changes = []
    if now["git_revision"] != last.get("git_revision"):
        changes.append(f"revision {last.get('git_revision')} -> {now['git_revision']}")
    was = last.get("versions") or {}
    for name, version in now["versions"].items():
        if name in was and was[name] != version:  # one recorded only since is no change
            changes.append(f"{name} {was[name]} -> {version}")
    return ", ".join(changes) or None


def samples_text(samples: object) -> str | None:
    """A data receipt's samples per split for people, ``1,079 train / 359 val / 359 test``;
    None when they are not a receipt's."""
    try:
        return " / ".join(f"{int(samples[k]):,} {k}" for k in ("train", "val", "test"))  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


def read_meta(run_dir: Path) -> RunMeta | None:
    """The run's ``meta.json``, or None when it has none.

    Raises:
        RunRecordError: the file is a directory, unreadable, or not a run meta file.
    """
    added: dict[str, Any] = {"data": None, "policy": None, "priors": None, "resumes": []}
    return read_record(run_dir / META_FILE, RunMeta, "an Esper run meta file", added)


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved configuration (``config.json``) as a JSON object.

    Raises:
        RunRecordError: no such file, or not a JSON object.
    """
    path = run_dir / CONFIG_FILE
    data = read_json(path, "an Esper run configuration")
    if data is None:
        raise RunRecordError(f"{str(run_dir)!r} is not an Esper run directory (no {CONFIG_FILE})")
    if not isinstance(data, dict):
        raise RunRecordError(f"{str(path)!r} is not an Esper run configuration (not an object)")
    return data


# ------------------------------------------------------------------------------ summary.json
# A summary's numbers are checked when it is read, so that a hand-edited or foreign file (a NaN
# wall time, a negative seed, more epochs done than planned) is refused by every view instead
# of shown or aggregated.


def _check_counts(record: Any, names: Sequence[str], high: int = MAX_INT64) -> None:
    for name in names:
        check_int(name, getattr(record, name), 0, high)


def _check_measures(record: Any, percents: Sequence[str], others: Sequence[str] = ()) -> None:
    """Optional fields: accuracies in [0, 100], other measures finite and not negative."""
    for name in (*percents, *others):
        value = getattr(record, name)
        if value is not None:
            check_float(name, value, 0.0, 100.0 if name in percents else math.inf)


@dataclass(frozen=True)
class FinalMetrics:
    """A growth run's last recorded epoch (None: not measured, e.g. not finite)."""

    train_loss: float | None
    train_accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None

    def __post_init__(self) -> None:
        _check_measures(self, ("train_accuracy", "val_accuracy"), ("train_loss", "val_loss"))


@dataclass(frozen=True)
class TestMetrics:
    """The test split, read once when a growth run ends (None: not finite).

    Attributes:
        final_loss: the final model's mean test loss.
        final_accuracy: the final model's test accuracy (percent).
        best_loss: the best validation epoch's model's mean test loss (None: no finite epoch).
        best_accuracy: that model's test accuracy (percent).
    """

    final_loss: float | None
    final_accuracy: float | None
    best_loss: float | None
    best_accuracy: float | None

    def __post_init__(self) -> None:
        _check_measures(self, ("final_accuracy", "best_accuracy"), ("final_loss", "best_loss"))


@dataclass(frozen=True)
class SeedSummary:
    """A slot that holds (or held) a seed when the run stopped.

    Attributes:
        slot: the slot's name.
        stage: the seed's lifecycle stage (a ``SeedStage`` value).
        blueprint: the seed's blueprint name.
    """

    slot: str
    stage: str
    blueprint: str


@dataclass(frozen=True)
class GrowthSummary:
    """The ``growth`` section: what a growth run (``GROWTH_MODES``) ended with.

    Attributes:
        epochs_completed: epochs trained (and checkpointed).
        epochs_planned: the configured episode length.
        final: the last recorded epoch's metrics, None before the first epoch.
        best_val_accuracy: best validation accuracy (percent) of any epoch but a terminated
            run's last, which panicked (it measured the model the governor discarded).
        param_count: active parameters at the end (host + fossilized/live seeds).
        host_param_count: the host's own parameters.
        peak_param_count: the most active parameters at the end of any recorded epoch.
        train_flops: training FLOPs of the recorded epochs (one counted step per epoch times
            its batches; ``esper.tolaria.flops``).
        fossilized: seeds fossilized.
        pruned: seeds pruned.
        seeds: the slots holding a seed at the end.
        test: the test split's metrics; None unless the run finished (completed or terminated).
        final_model_val_accuracy: the validation accuracy (percent) of the model ``test``'s
            ``final_accuracy`` scores (``model.pt``), measured when the episode ended on the
            samples every epoch validated on: ``final.val_accuracy`` measured the last epoch's
            model before the epoch's end moved its seeds' lifecycle on, and a terminated run's
            model is the one the governor restored. What a ``score = "validation"`` study
            scores a trial by. None unless the run finished, and in summaries from before it
            was recorded.
    """

    epochs_completed: int
    epochs_planned: int
    final: FinalMetrics | None
    best_val_accuracy: float | None
    param_count: int
    host_param_count: int
    peak_param_count: int
    train_flops: float
    fossilized: int
    pruned: int
    seeds: tuple[SeedSummary, ...]
    test: TestMetrics | None
    final_model_val_accuracy: float | None

    def __post_init__(self) -> None:
        _check_counts(self, ("epochs_planned",), MAX_COUNT)
        _check_counts(self, ("epochs_completed",), self.epochs_planned)
        _check_counts(self, ("param_count", "host_param_count", "peak_param_count"))
        _check_counts(self, ("fossilized", "pruned"))
        _check_measures(self, ("best_val_accuracy", "final_model_val_accuracy"), ("train_flops",))

    @property
    def final_val_accuracy(self) -> float | None:
        """The run's final validation accuracy as its closing line, ``RunFinished`` and
        ``esper runs list`` give it: the final model's (``final_model_val_accuracy``) where
        measured, else the last epoch's (an interrupted run, or a summary from before)."""
        if self.final_model_val_accuracy is not None:
            return self.final_model_val_accuracy
        return None if self.final is None else self.final.val_accuracy


@dataclass(frozen=True)
class PPOSummary:
    """The ``ppo`` section: what a PPO training run ended with.

    Attributes:
        rounds_completed: rounds trained (and checkpointed).
        rounds_planned: the configured number of rounds.
        env_steps: environment steps of every round so far (as the last round's ``PPOUpdate``
            counts them; None before the first).
        final_mean_return: the last round's mean episode return.
        best_mean_return: the best round's mean episode return.
        final_mean_accuracy: the last round's mean final validation accuracy (percent).
    """

    rounds_completed: int
    rounds_planned: int
    env_steps: int | None
    final_mean_return: float | None
    best_mean_return: float | None
    final_mean_accuracy: float | None

    def __post_init__(self) -> None:
        _check_counts(self, ("rounds_planned",), MAX_COUNT)
        _check_counts(self, ("rounds_completed",), self.rounds_planned)
        if self.env_steps is not None:
            _check_counts(self, ("env_steps",))
        _check_measures(self, ("final_mean_accuracy",))
        for name in ("final_mean_return", "best_mean_return"):  # returns may be negative
            value = getattr(self, name)
            if value is not None:
                check_float(name, value, -math.inf, math.inf)


@dataclass(frozen=True)
class RunSummary:
    """How a run stopped (``summary.json``): one schema for every mode.

    Attributes:
        status: ``completed``, ``interrupted``, ``terminated`` or ``failed``.
        mode: one of ``MODES`` (the growth commands' or ``ppo``).
        task: the task preset.
        seed: the run seed.
        run_id: the run's id (``new_run_id``).
        wall_seconds: training time: the wall time of the recorded steps (training,
            validation, the controller's decisions; PPO: rollouts and updates) summed over
            every attempt, without start-up, data loading, checkpoints or the test evaluation.
        failure: what stopped a ``failed`` run, else None.
        growth: the growth modes' section (None for ``ppo``).
        ppo: the ``ppo`` section (None for the growth modes).
    """

    status: str
    mode: str
    task: str
    seed: int
    run_id: str
    wall_seconds: float
    failure: str | None
    growth: GrowthSummary | None = None
    ppo: PPOSummary | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if (self.status == "failed") != (self.failure is not None):
            raise ValueError("a failure message belongs to exactly the failed runs")
        check_int("seed", self.seed, 0, MAX_INT64)  # runs before seeds stopped at MAX_SEED
        check_float("wall_seconds", self.wall_seconds, 0.0, math.inf)
        ppo = self.mode == PPO_MODE
        if (self.ppo is not None) != ppo or (self.growth is not None) == ppo:
            section = "ppo" if ppo else "growth"
            raise ValueError(f"a {self.mode} run's summary has exactly the {section!r} section")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``summary.json`` (non-finite numbers as null)."""
        return dict(strict_json(self))


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    """Write ``run_dir/summary.json`` atomically.

    Raises:
        DiskFullError: the disk is full (any earlier summary stays as it was).
    """
    write_json(run_dir / SUMMARY_FILE, summary)


def read_summary(run_dir: str | os.PathLike[str]) -> RunSummary | None:
    """The summary of the run in ``run_dir``, or None when it has none (still running, or
    killed).

    Raises:
        RunRecordError: ``summary.json`` is a directory, unreadable, or not a run summary
            (garbage, missing or unknown keys, wrong types).
    """
    added = {"growth.final_model_val_accuracy": None}
    return read_record(Path(run_dir) / SUMMARY_FILE, RunSummary, "an Esper run summary", added)


def is_run_directory(path: Path) -> bool:
    """Whether ``path`` is an Esper run directory (it holds every file of ``RUN_FILES``).

    Raises:
        PermissionError: it cannot be looked into (see ``run_problem``).
    """
    return _not_a_run(path) is None


def not_a_run(path: Path) -> str | None:
    """Why ``path`` is not an Esper run directory, as one line; None when it is one."""
    return run_problem(path)[0]


def run_problem(path: Path) -> tuple[str | None, bool]:
    """``not_a_run``'s line, and whether it is that ``path`` cannot be looked into (no read or
    search permission): such a directory may hold a run, so listings name it rather than pass
    over it, and a study does not take a trial's run for missing."""
    try:
        return _not_a_run(path), False
    except PermissionError as err:
        return f"{str(path)!r} cannot be read ({err.strerror})", True


def _not_a_run(path: Path) -> str | None:
    mode = file_mode(path)
    if mode is None:
        return f"run directory {str(path)!r} does not exist"
    if not stat.S_ISDIR(mode):
        return f"{str(path)!r} is a file, not a run directory"
    modes = {name: file_mode(path / name) for name in RUN_FILES}
    missing = [name for name, m in modes.items() if m is None or not stat.S_ISREG(m)]
    if not missing:
        return None
    odd = [name for name in missing if modes[name] is not None]  # a directory, a pipe, ...
    if not odd and is_study(path):  # esper tui or runs show given a study: where its runs are
        return (
            f"{str(path)!r} is a study directory, not a run directory: its trials' runs are in "
            f"{str(path / TRIALS_DIR)!r}"
        )
    if odd:
        kind = not_regular(modes[odd[0]] or 0)
        return (
            f"{str(path)!r} is not an Esper run directory ({odd[0]} is {kind}, not a regular file)"
        )
    return f"{str(path)!r} is not an Esper run directory (no {' or '.join(missing)} file)"


def is_study(path: Path) -> bool:
    """Whether ``path`` is a study directory (``esper study``'s output: it holds ``study.json``).

    Raises:
        PermissionError: it cannot be looked into.
    """
    mode = file_mode(path / STUDY_FILE)
    return mode is not None and stat.S_ISREG(mode)


def run_is_held(directory: Path) -> bool | None:
    """Whether a process holds the run's lock (``lock_run``: it is running; ``lock_held``'s
    probe, for which ``lock_run`` tries again for a moment, so the probe never refuses a run
    that starts that instant). None where it cannot be told: the directory cannot be opened,
    or its file system cannot lock it (a run there runs unlocked)."""
    held = lock_held(directory, directory=True)
    return None if held is False and not directory.is_dir() else held


def study_score(directory: Path) -> Score:
    """What the study in ``directory`` scores its trials by (``SCORES``), from the settings its
    ``study.json`` saved: ``test`` for a study saved before the setting existed.

    Raises:
        RunRecordError: no ``study.json``, or one that is unreadable or names no known score.
    """
    path, what = directory / STUDY_FILE, "an Esper study state file"
    data = read_json(path, what)
    if data is None:
        raise RunRecordError(f"{str(directory)!r} holds no study (no {STUDY_FILE})")
    settings = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise RunRecordError(f"{str(path)!r} is not {what} (it holds no settings table)")
    score = settings.get("score", "test")
    for kind in SCORES:
        if score == kind:
            return kind
    raise RunRecordError(
        f"{str(path)!r} is not {what} (its score {quoted(score, as_json=True)} is not one of "
        f"{', '.join(SCORES)})"
    )


def known_study_score(directory: Path) -> tuple[Score | None, str | None]:
    """``study_score``, or None and a warning saying why it cannot be told: a study's results,
    report and dashboard page stand on its ``trials.csv``, and only name their scores from it."""
    try:
        return study_score(directory), None
    except RunRecordError as err:
        return None, f"test or validation accuracy? {err}"


def run_status(run_dir: Path) -> str:
    """The run's recorded status, or ``UNFINISHED`` without a summary.

    Raises:
        RunRecordError: a malformed ``summary.json``.
    """
    summary = read_summary(run_dir)
    return UNFINISHED if summary is None else summary.status
