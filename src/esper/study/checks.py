"""What a run command checks and settles before it writes anything: its threads, its data and
whether the host fits in memory, the output directory, the telemetry sinks, and for a resume the
run's mode and whether its ``config.json`` is the configuration its checkpoint ran with."""

from __future__ import annotations

import bisect
import logging
import os
import re
import sys
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from esper.data import DatasetNotFoundError, load_dataset
from esper.leyline.config import (
    MAX_WIDTH,
    HostTraining,
    TelemetrySettings,
    UserError,
    first_line,
    quoted,
)
from esper.leyline.data import Dataset
from esper.leyline.files import is_utf8_path
from esper.nissa import record
from esper.nissa.log import with_article
from esper.nissa.sinks import TensorBoardSetupError, check_tensorboard
from esper.nissa.tracking import TrackingError, TrackingSetupError, check_mlflow
from esper.tasks import get_task, host_param_count
from esper.tolaria.threads import TooFewCores, threads_per_worker

logger = logging.getLogger(__name__)


def set_threads(training: HostTraining, resume: Path | None = None) -> HostTraining:
    """Set torch's intra-op threads by the thread policy (``esper.tolaria.threads``) for this
    in-process run, one worker: 1 unless ``training.threads`` says otherwise. Returns the block
    with the count filled in, so it is recorded and a resume runs with the same.

    Raises:
        UserError: more threads than this process may use cores (for a ``resume``, without
            advice to change a flag it takes no more).
    """
    try:
        threads = threads_per_worker(training.threads, workers=1)
    except TooFewCores as err:
        raise UserError(err.refusal(resume)) from err
    except ValueError as err:
        raise UserError(str(err)) from err
    torch.set_num_threads(threads)
    return replace(training, threads=threads)


def load_data(training: HostTraining, resume: Path | None = None) -> Dataset:
    """The task's dataset; for a ``resume``, the one its run trained on (``check_same_data``).

    Raises:
        UserError: the dataset is missing or unreadable (the first line of what to do), or
            not the resumed run's.
    """
    try:
        data = load_dataset(
            get_task(training.task).dataset,
            training.data_dir,
            download=training.download,
            progress=sys.stderr.isatty(),
        )
    except (DatasetNotFoundError, ValueError, OSError) as err:
        raise UserError(first_line(err)) from err
    except (MemoryError, RuntimeError) as err:  # torch's allocator: "std::bad_alloc"
        if isinstance(err, RuntimeError) and "bad_alloc" not in str(err):
            raise
        raise UserError(
            f"not enough memory to load the data of task {training.task} "
            f"({first_line(err)}); a smaller corpus, or a machine with more memory"
        ) from err
    if resume is not None:
        check_same_data(resume, data)
    return data


def check_same_data(directory: Path, data: Dataset) -> None:
    """The data a resume of the run in ``directory`` found is the dataset its ``meta.json``
    says it trained on: the same name and samples per split (where it is read from may change:
    a study moved with its data carries on). A ``data_dir`` edited in config.json to other
    files of the same kind continued the run on them without a word.

    Raises:
        UserError: naming both.
    """
    try:
        meta = record.read_meta(directory)
    except record.RunRecordError:
        return  # refused, naming the file, where the run is reopened
    if meta is None or meta.data is None:  # a run from before meta.json recorded its data
        return

    def shown(receipt: dict[str, Any]) -> str:
        samples = receipt.get("samples")
        return f"{receipt.get('dataset')!r} ({record.samples_text(samples) or samples})"

    now = data.receipt()
    was_kind = str(meta.data.get("dataset")).partition(":")[0]  # "text:corpus.txt": the file
    if was_kind != now["dataset"].partition(":")[0]:  # the task names it, not data_dir
        raise UserError(
            f"cannot resume {str(directory)!r}: it trained on {shown(meta.data)}, and the task "
            f"its config.json names now gives {shown(now)}; restore config.json, or start a "
            "new run"
        )
    if (meta.data.get("dataset"), meta.data.get("samples")) != (now["dataset"], now["samples"]):
        raise UserError(
            f"cannot resume {str(directory)!r}: it trained on {shown(meta.data)}, and its "
            f"data_dir now gives {shown(now)}; put back the data it trained on"
        )
    was = meta.data.get("sha256")  # runs from before it was taken have none
    if was is not None and was != now.get("sha256"):
        raise UserError(
            f"cannot resume {str(directory)!r}: its data {now['dataset']!r} ({now['source']}) "
            f"is not what it trained on (SHA-256 {str(was)[:12]}..., now "
            f"{str(now.get('sha256'))[:12]}...); put back the data it trained on"
        )


def warn_whole_splits(training: HostTraining, data: Dataset) -> None:
    """Warn of a batch size or validation subset larger than its split, which takes the whole
    split (a run cut them so without a word, recorded as given; meta.json's ``data`` records
    the splits' samples). Not refused: a study's budget serves tasks of several sizes, an eval
    keeps its policy's settings on another task, and earlier runs so configured must resume."""
    for name, split, given in (
        ("batch_size", "training", training.batch_size),
        ("val_samples", "validation", training.val_samples),
    ):
        held = len(data.x_train if split == "training" else data.x_val)
        if given is not None and given > held:
            logger.warning(
                "%s %s is more than the %s split of %s holds: all its %s samples are used",
                name, f"{given:,}", split, training.task, f"{held:,}",
            )  # fmt: skip


BF16_UNITS = ("amx_tile", "avx512_bf16")
"""CPU extensions that compute in bfloat16 (oneDNN's kernels); without them it is emulated."""


def warn_slow_precision(training: HostTraining, on_cpu: bool) -> None:
    """Warn of ``--precision bfloat16`` on a CPU without ``BF16_UNITS``: emulated there, it ran
    ``fashion_mnist``'s width-16 epoch 10x slower than float32 (an AMD EPYC with AVX2; 1.6x
    faster with AMX, docs/benchmarks.md). Not refused: it computes the same, and a run so
    configured must resume on another machine."""
    if training.precision != "bfloat16" or not on_cpu:
        return
    found = record.cpu_info()  # read only for such a run: every run's start passes here
    if found is None:
        return
    model, flags = found
    if not flags & set(BF16_UNITS):
        logger.warning(
            "precision bfloat16 on a CPU without AMX or AVX-512 BF16 (%s: %s) is emulated: "
            "about 10x slower than float32 on fashion_mnist's host (docs/benchmarks.md)",
            model or "this CPU",
            " ".join(sorted(flags)) or "no AVX2/AVX-512",
        )


RUN_COPIES = 25
"""A growth run's peak memory in float32 copies of its host's parameters. Measured: ``esper
heuristic --task text_lm --epochs 2 --batches-per-epoch 2 --val-samples 64`` peaked at 4.09 GiB
of resident memory at ``--width 1024`` (145 MiB per copy) and 0.54 GiB at ``--width 64``: 25
copies (``static``: 24). Training holds about 10 (the weights, their gradients, AdamW's two
moments, the governor's snapshot, the best epoch's model); the peak comes after it, when the
test split is evaluated in one batch, whose activations grow only linearly with the width, so
the rule refuses some wider transformers that would fit. Counting the training state alone (8)
passed ``--width 4096``, which then swapped."""

ENV_COPIES = 11
"""The same per PPO environment (no host checkpoint; activations included): ``esper ppo --task
text_lm --width 1024`` with one environment peaked at 2.08 GiB, with two at 3.41 GiB (11, then
9.4 more copies)."""


def memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(
    training: HostTraining, data: Dataset, envs: int | None = None, setting: str = "--width"
) -> None:
    """Refuse, before anything is built, a host too wide for this machine's memory: building it
    ran out of memory with a traceback, or swapped for minutes. A growth run (``envs`` None)
    needs ``RUN_COPIES`` float32 copies of its parameters, ``envs`` PPO environments
    ``ENV_COPIES`` each (both measured on a wide transformer host, activations included; a host
    whose activations are larger beside its parameters may still not fit).

    ``setting``: how the user sets the width, for the hint (a flag, or a study file's key).

    Raises:
        UserError: naming the width, the bytes it needs and the widest host that fits.
    """
    copies = RUN_COPIES if envs is None else ENV_COPIES * envs
    who = "a run of this host needs" if envs is None else f"{envs} environment(s) of it need"

    def needs(width: int) -> int:
        return host_param_count(training.task, data, width) * 4 * copies

    config = get_task(training.task).host_config_for(data)
    width, have = training.width or config.width, memory_bytes()
    if needs(width) <= have:
        return
    widths = range(config.width_step, MAX_WIDTH + 1, config.width_step)
    fitting = bisect.bisect_right(widths, have, key=needs)  # counts rise with the width
    hint = f"use {setting} {widths[fitting - 1]} or less" if fitting else "no width of it fits"
    raise UserError(
        f"width {width} does not fit: {who} {needs(width) / 2**30:.1f} GiB at the peak, and "
        f"this machine has {have / 2**30:.1f} GiB; {hint}"
    )


def config_changes(old: Any, new: Any, where: str) -> list[str]:
    """Each setting where ``new`` differs from ``old`` as ``key: old -> new`` (tables and
    equally long lists compared item by item; a missing key shows as null)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in config_changes(old.get(k), new.get(k), f"{where}.{k}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = enumerate(zip(old, new, strict=True))
        return [c for i, (o, n) in pairs for c in config_changes(o, n, f"{where}[{i}]")]
    if old == new:
        return []
    return [f"{where}: {quoted(old, as_json=True)} -> {quoted(new, as_json=True)}"]


def changed_settings(old: dict[str, Any], new: dict[str, Any], skip: tuple[str, ...]) -> list[str]:
    """``config_changes`` of two configurations, table by table, but for the settings whose
    change (``key: old -> new``, ``key.sub: …``; a list's item ``key[0]: …`` read as ``key: …``)
    starts with one of ``skip``."""
    keys = sorted(set(old) | set(new))
    changes = [c for key in keys for c in config_changes(old.get(key), new.get(key), key)]
    return [change for change in changes if not _setting(change).startswith(skip)]


_LIST_ITEM = re.compile(r"\[\d+\]")


def _setting(change: str) -> str:
    """The setting ``change`` (``key[0].sub: old -> new``) is of, as ``key.sub: ``: a changed
    item of a list is a change of the list."""
    return _LIST_ITEM.sub("", change.partition(": ")[0]) + ": "


DATA_DIR_SETTINGS = ("training.data_dir:", "env.data_dir:")
"""A growth run's and a PPO run's ``data_dir`` in ``changed_settings``' terms: where the dataset's
files are, which a moved study changes."""

UNCHECKED_SETTINGS = ("telemetry", "runtime.ray_address", "ppo.rounds:", *DATA_DIR_SETTINGS)
"""Settings a resume may find changed in ``config.json``: where telemetry goes, which cluster
runs the workers and where the dataset's files are (a study moved with its data gives its
unfinished trials the new place) change nothing the run computes, and PPO's rounds only say
when it stops (``esper ppo --resume RUN --ppo.rounds N`` raises them: a finished run trains
on)."""


def check_same_config(directory: Path, ran: dict[str, Any], now: dict[str, Any]) -> None:
    """The configuration a checkpoint ran with (``ran``) is the run's ``config.json`` (``now``),
    but for ``UNCHECKED_SETTINGS``: an edited ``config.json`` would continue the run as another.

    Raises:
        UserError: naming the first changed settings.
    """
    changed = changed_settings(ran, now, UNCHECKED_SETTINGS)
    if changed:
        raise UserError(
            f"cannot resume {str(directory)!r}: its config.json differs from the configuration "
            f"its checkpoint ran with ({'; '.join(changed[:3])}); restore it, or start a new run"
        )


def default_out(task: str, mode: str) -> Path:
    """``runs/<task>-<mode>-<time>``: where a run goes without ``--out`` (``-2``, ``-3`` …
    after the time while a run started in the same second has it: ``record.free_stamp``)."""

    def named(stamp: str) -> Path:
        return record.RUNS_DIR / f"{task}-{mode}-{stamp}"

    return named(record.free_stamp(lambda stamp: [named(stamp)]))


def check_out(out: Path | None, resume: Path | None) -> None:
    """A given ``--out`` can take a new run (checked again when the run is created)."""
    if resume is None and out is not None:
        check_new_run_directory(out)


def check_new_run_directory(directory: Path) -> None:
    """A new run may be created at ``directory``: it does not exist or is an empty directory,
    and it does not lie inside another run.

    Raises:
        UserError: naming what is wrong.
    """
    if not is_utf8_path(directory):
        raise UserError(
            f"run directory {str(directory)!r} is not UTF-8 text (run views and reports need "
            "names they can read); choose another --out"
        )
    if not directory.absolute().name.isprintable():  # the name begins the run's id
        raise UserError(
            f"run directory {str(directory)!r}: its name holds a character that is not "
            "printable (a line break or tab would split run tables, and the knowledge store "
            "takes only printable run ids); choose another --out"
        )
    real = Path(os.path.realpath(directory))  # "run/../new" is not inside "run"
    inside = next((p for p in real.parents if record.is_run_directory(p)), None)
    if inside is not None:
        raise UserError(f"run directory {str(directory)!r} lies inside the run {str(inside)!r}")
    try:
        if directory.exists() and not directory.is_dir():
            raise UserError(f"run directory {str(directory)!r} is a file, not a directory")
        if directory.exists() and any(directory.iterdir()):
            raise UserError(
                f"run directory {str(directory)!r} already exists and is not empty; "
                "choose another --out or continue it with --resume"
            )
    except OSError as err:
        raise UserError(f"cannot use run directory {str(directory)!r}: {err.strerror}") from err


def check_outside_studies(directory: Path) -> None:
    """A run the user starts (``--out``) is neither a study directory nor inside one: a study's
    trials' runs are its own, and views and reports would take a stray run for one of them.

    Raises:
        UserError: naming the study directory.
    """
    for place in (directory, *Path(os.path.realpath(directory)).parents):
        with suppress(OSError):  # a place it cannot look into: no study found there
            if not record.is_study(place):
                continue
            what = "is" if place == directory else "lies inside"
            raise UserError(
                f"run directory {str(directory)!r} {what} the study directory {str(place)!r}; "
                "choose a directory outside any study"
            )


def check_recorded_mode(directory: Path, mode: str) -> None:
    """``--resume DIR`` names a run of this command.

    Raises:
        UserError: not a run directory (no readable ``meta.json``), or another command's run.
    """
    try:
        meta = record.read_meta(directory)
    except record.RunRecordError as err:
        raise UserError(f"cannot resume {str(directory)!r}: {err}") from err
    if meta is None and not os.path.lexists(directory):
        raise UserError(f"cannot resume {str(directory)!r}: it does not exist")
    if meta is None:
        raise UserError(f"{str(directory)!r} is not an Esper run directory (no meta.json)")
    if meta.mode != mode:
        raise UserError(
            f"{str(directory)!r} is {with_article(meta.mode)} run; use esper {meta.mode}"
        )


def check_sinks(telemetry: TelemetrySettings) -> None:
    """TensorBoard or MLflow was asked for: fail before anything is written if it is missing
    (or the MLflow server does not answer)."""
    try:
        if telemetry.tensorboard:
            check_tensorboard()
        if telemetry.mlflow is not None:
            check_mlflow(telemetry.mlflow)
    except (TensorBoardSetupError, TrackingSetupError, TrackingError) as err:
        raise UserError(str(err)) from err
