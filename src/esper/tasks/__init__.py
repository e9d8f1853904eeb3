"""Tasks: named presets bundling a host, a dataset and training defaults.

This module imports no torch at import time (the ``esper`` command lists tasks in its help);
``TaskSpec.build_host`` builds the host through Kasmina when a run starts.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from esper.leyline import Topology
from esper.leyline.config import MAX_INT64, MAX_WIDTH, HostTraining, check_int, require
from esper.leyline.slots import check_slots, slot_names

if TYPE_CHECKING:
    from esper.kasmina import HostConfig, SegmentedHost
    from esper.leyline.data import Dataset


@dataclass(frozen=True)
class TaskSpec:
    """A task preset.

    Attributes:
        name: task name on the command line.
        description: one line for ``esper --help`` and reports.
        dataset: the ``esper.data.load_dataset`` name.
        host_kind: the host's ``Topology`` (CNN or transformer).
        host_config: the task's own fields of the host config (``CNNHostConfig`` or
            ``TransformerHostConfig``); ``build_host`` adds the data-dependent ones.
        epochs: default episode length.
        batch_size: default training batch size.
        batches_per_epoch: default batches per step (``None``: a full pass).
        val_samples: default validation subset (``None``: all).
        lr: default AdamW learning rate for the host and the seeds.
    """

    name: str
    description: str
    dataset: str
    host_kind: Topology
    host_config: Mapping[str, int] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 128
    batches_per_epoch: int | None = None
    val_samples: int | None = None
    lr: float = 3e-3

    def host_config_for(self, data: Dataset, width: int | None = None) -> HostConfig:
        """The config of the task's host for ``data``.

        Args:
            data: input channels and size, classes or vocabulary and block size come from it.
            width: replaces the task's width (CNN ``base_channels``, transformer ``n_embd``).

        Raises:
            ValueError: a width the host rejects (out of range, or a transformer width not a
                multiple of ``n_head``), in one line naming the value and the rule; or data of
                the other kind (text for a CNN failed to unpack its shape, images for a
                transformer gave a one-token block silently).
        """
        from esper.kasmina import CNNHostConfig, TransformerHostConfig

        rank = 3 if self.host_kind is Topology.CNN else 1
        if len(data.input_shape) != rank:
            what = "images (C, H, W)" if rank == 3 else "token sequences (T,)"
            raise ValueError(
                f"task {self.name!r} ({self.host_kind.value} host) needs {what}; the dataset "
                f"{data.name!r} holds samples of shape {data.input_shape}"
            )
        config: HostConfig
        if self.host_kind is Topology.CNN:
            channels, size, _ = data.input_shape
            config = CNNHostConfig(
                in_channels=channels,
                input_size=size,
                num_classes=data.num_classes,
                **self.host_config,
            )
        else:
            config = TransformerHostConfig(
                vocab_size=data.num_classes, block_size=data.input_shape[0], **self.host_config
            )
        return config if width is None else config.with_width(width)

    def check_host(self, width: int | None, slots: Sequence[str]) -> None:
        """Refuse a ``width`` or ``slots`` this task's host cannot have, before any data is
        loaded (neither depends on the data: ``vocab_size`` below only fills the field).

        Raises:
            ValueError: one line naming the bad width or slots and what the host accepts.
        """
        if width is not None:
            self.check_width(width)
        config = self._bare_config(width)
        check_slots(slots, slot_names(config.n_points), f"the {self.name} host")

    def check_width(self, width: int) -> None:
        """Refuse a ``width`` this task's host cannot take: a transformer's is a multiple of its
        attention heads (``width_step``); the message names the nearest that are.

        Raises:
            ValueError: one line naming the width and the widths the host takes.
        """
        step = self._bare_config(None).width_step
        if width % step == 0:
            return
        below = max(step, width - width % step)
        above = min(MAX_WIDTH - MAX_WIDTH % step, width - width % step + step)
        nearest = " or ".join(str(w) for w in sorted({below, above}))
        raise ValueError(
            f"width {width}: the {self.name} host takes widths that are multiples of its "
            f"{step} attention heads ({step}, {2 * step}, ..., {MAX_WIDTH - MAX_WIDTH % step}); "
            f"nearest: {nearest}"
        )

    def host_width(self, width: int | None = None) -> int:
        """The width of the host this task builds: ``width``, else the task's own."""
        return self._bare_config(width).width

    def _bare_config(self, width: int | None) -> HostConfig:
        """The host's config without data (data-dependent fields at their defaults; width and
        depth, hence the slots, do not depend on the data)."""
        from esper.kasmina import CNNHostConfig, TransformerHostConfig

        config: HostConfig = (
            CNNHostConfig(**self.host_config)
            if self.host_kind is Topology.CNN
            else TransformerHostConfig(vocab_size=2, **self.host_config)
        )
        return config if width is None else config.with_width(width)

    def build_host(self, data: Dataset, width: int | None = None) -> SegmentedHost:
        """The task's host for ``data`` (``host_config_for``'s arguments and errors)."""
        from esper.kasmina import build_host

        return build_host(self.host_config_for(data, width))


MATCHED_CNN_WIDTHS = range(1, 257)
"""``matched_width``'s CNN candidates: every base channel count up to 256, where channels doubling
per block give even the impaired 1x1 host 0.67 M parameters (the 3x3 hosts millions), far beyond
any grown host of the tasks."""

MATCHED_TRANSFORMER_MAX_WIDTH = 512
"""``matched_width``'s largest transformer candidate (the candidates are the multiples of
``n_head`` up to it): 8x the text task's 64 dimensions, beyond any grown host of that task."""


_IMPAIRED: Mapping[str, int] = {"base_channels": 4, "kernel_size": 1, "depth": 3}
"""A deliberately weak host: 1x1 kernels see no neighbourhood, 4 base channels — room to grow."""

_IMPAIRED_TRANSFORMER: Mapping[str, int] = {"n_embd": 16, "n_head": 1, "n_layer": 3, "n_points": 3}
"""A deliberately small transformer: a quarter of ``text_lm``'s model dimension and one head
(12,544 parameters on the bundled text, 12.8x fewer); three blocks so that every slot exists.
Measured (seed 0, ``text_lm``'s 1000 batches): 41.9 % validation accuracy against 56.9 %; at
``n_embd`` 8 it stalls near 31 %, a width no seed can add (seeds keep the stream's width). The
heuristic grows four seeds a run here, but none has yet contributed more than 0.11 points."""

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "fashion_mnist",
            "Fashion-MNIST, 16-channel CNN host",
            "fashion_mnist",
            Topology.CNN,
            {"base_channels": 16, "depth": 3},
            epochs=15,
        ),
        TaskSpec(
            "fashion_mnist_impaired",
            "Fashion-MNIST, tiny 1x1-kernel CNN host that growth can rescue",
            "fashion_mnist",
            Topology.CNN,
            _IMPAIRED,
            epochs=20,
        ),
        TaskSpec(
            "cifar10",
            "CIFAR-10, 32-channel CNN host",
            "cifar10",
            Topology.CNN,
            {"base_channels": 32},
        ),
        TaskSpec(
            "cifar10_impaired",
            "CIFAR-10, tiny 1x1-kernel CNN host",
            "cifar10",
            Topology.CNN,
            _IMPAIRED,
        ),
        TaskSpec(
            "digits",
            "scikit-learn 8x8 digits, small CNN host",
            "digits",
            Topology.CNN,
            {"base_channels": 8, "depth": 3},
            epochs=20,
            batch_size=64,
        ),
        TaskSpec(
            "digits_impaired",
            "scikit-learn 8x8 digits, tiny 1x1-kernel CNN host that growth can rescue",
            "digits",
            Topology.CNN,
            _IMPAIRED,
            epochs=20,
            batch_size=64,
        ),
        TaskSpec(
            "text_lm",
            "character-level language model, GPT-style transformer host",
            "text",
            Topology.TRANSFORMER,
            {"n_embd": 64, "n_head": 4, "n_layer": 3, "n_points": 3},
            epochs=10,
            batch_size=32,
            batches_per_epoch=100,
        ),
        TaskSpec(
            "text_lm_impaired",
            "character-level language model, small one-head transformer host that underfits",
            "text",
            Topology.TRANSFORMER,
            _IMPAIRED_TRANSFORMER,
            # text_lm's 1000 training batches in 40 short epochs: a seed needs at least
            # MIN_LIFECYCLE_EPOCHS (10) from germination to fossilization, which in 20 epochs of
            # 50 left no seed time to finish after the host stabilized (epoch ~8).
            epochs=40,
            batch_size=32,
            batches_per_epoch=25,
        ),
        TaskSpec(
            "synthetic",
            "synthetic class templates plus noise, for tests and benchmarks (not real data)",
            "synthetic",
            Topology.CNN,
            {"base_channels": 4, "depth": 3},
            epochs=6,
            batch_size=64,
        ),
    )
}
"""Every task preset by name."""


def get_task(name: str) -> TaskSpec:
    """Look a task up.

    Raises:
        ValueError: naming the unknown task and the known ones.
    """
    if not isinstance(name, str) or name not in TASKS:  # a list was a TypeError (unhashable)
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


TASK_SETTINGS = ("epochs", "batch_size", "batches_per_epoch", "val_samples", "lr", "seed_lr")
"""The host-training settings whose unset value is the task's own (``resolve_training``)."""


def resolve_training(training: HostTraining) -> HostTraining:
    """Fill the task's defaults into the unset fields of ``training`` (the one derivation).

    Raises:
        ValueError: for an unknown task, naming the known ones; a ``data_dir`` for a task whose
            dataset reads no files (``reads_files``), naming the tasks that read files;
            ``download`` off for a task whose dataset is never downloaded; a width
            the task's host cannot take (``TaskSpec.check_width``).
    """
    task = get_task(training.task)
    if training.data_dir is not None and not reads_files(training.task):
        readers = [name for name in TASKS if reads_files(name)]
        raise ValueError(
            f"data_dir {str(training.data_dir)!r}: task {training.task!r} (dataset "
            f"{task.dataset!r}) reads no files; a data_dir is for the tasks {', '.join(readers)}"
        )
    if not training.download and not _downloaded(task.dataset):
        downloaded = [name for name, t in TASKS.items() if _downloaded(t.dataset)]
        raise ValueError(
            f"download = false: task {training.task!r} (dataset {task.dataset!r}) is never "
            f"downloaded; it is for the tasks {', '.join(downloaded)}"
        )
    if training.width is not None:
        task.check_width(training.width)
    lr = task.lr if training.lr is None else training.lr
    return replace(
        training,
        epochs=task.epochs if training.epochs is None else training.epochs,
        batch_size=task.batch_size if training.batch_size is None else training.batch_size,
        batches_per_epoch=training.batches_per_epoch or task.batches_per_epoch,
        val_samples=training.val_samples or task.val_samples,
        lr=lr,
        seed_lr=lr if training.seed_lr is None else training.seed_lr,
    )


def _downloaded(dataset: str) -> bool:
    """Whether ``dataset`` is downloaded when missing (``DOWNLOADED_DATASETS``)."""
    from esper.data.registry import DOWNLOADED_DATASETS  # torch: not at import time

    return dataset in DOWNLOADED_DATASETS


def reads_files(task: str) -> bool:
    """Whether ``task``'s dataset is read from files (``esper.data.registry.FILE_DATASETS``),
    so that a ``data_dir`` means something to it.

    Raises:
        ValueError: for an unknown task, naming the known ones.
    """
    from esper.data.registry import FILE_DATASETS  # torch: not at import time

    return get_task(task).dataset in FILE_DATASETS


def without_stray_data_dir(training: HostTraining) -> HostTraining:
    """``training`` without a ``data_dir`` its task's dataset cannot read, as recorded by an
    Esper that ignored one (before ``check_data_dir`` refused it): a run it wrote resumes as it
    ran. A new run's ``data_dir`` is never dropped, but refused by ``resolve_training``."""
    if training.data_dir is None or training.task not in TASKS or reads_files(training.task):
        return training
    return replace(training, data_dir=None)


def host_param_count(task: str, data: Dataset, width: int | None) -> int:
    """Parameters of ``task``'s host for ``data`` at ``width`` (``None``: the task's), no seeds.

    The host is built for its shapes (``shapes_only``: the meta device), so counting a wide host
    allocates nothing. Tied weights (the transformer's embedding and head) count once.

    Raises:
        ValueError: an unknown task or a width the host rejects (``TaskSpec.host_config_for``).
    """
    from esper.kasmina.shapes import shapes_only  # torch: not at import time

    if width is not None:
        check_int("width", width, 1, MAX_WIDTH)
    with shapes_only():
        host = get_task(task).build_host(data, width)
    return sum(p.numel() for p in host.parameters())


def matched_width(
    task: str, data: Dataset, target: int, widths: Sequence[int] | None = None
) -> int:
    """The width whose host has the parameter count nearest ``target`` (ties: the smaller).

    This is how a static baseline is sized to match a grown model's parameters.

    Args:
        task: the task whose host is widened or narrowed.
        data: the task's dataset (input shape and classes shape the host).
        target: the parameter count to match.
        widths: candidate widths; ``None``: ``MATCHED_CNN_WIDTHS`` for a CNN host, the
            multiples of ``n_head`` up to ``MATCHED_TRANSFORMER_MAX_WIDTH`` for a transformer.

    Raises:
        ValueError: an unknown task, a bad target, no candidates, or a candidate the host
            rejects.
    """
    from esper.kasmina import CNNHostConfig

    check_int("target", target, 1, MAX_INT64)
    config = get_task(task).host_config_for(data)
    if widths is None:
        if isinstance(config, CNNHostConfig):
            widths = MATCHED_CNN_WIDTHS
        else:
            step = config.width_step
            widths = range(step, MATCHED_TRANSFORMER_MAX_WIDTH + 1, step)
    candidates = sorted(set(widths))
    require(bool(candidates), "matched_width needs at least one candidate width")
    for width in candidates:  # all up front: bisection builds only some of them
        check_int("width", width, 1, MAX_WIDTH)
        config.with_width(width)
    # A host's parameter count grows strictly with its width (every layer's weights do), so
    # bisection finds the first candidate at or above the target in log2(n) builds.
    counts: dict[int, int] = {}

    def count(width: int) -> int:
        if width not in counts:
            counts[width] = host_param_count(task, data, width)
        return counts[width]

    i = bisect.bisect_left(candidates, target, key=count)
    nearest = candidates[max(i - 1, 0) : i + 1]  # the candidates just below and at/above
    return min(nearest, key=lambda w: (abs(count(w) - target), w))


__all__ = [
    "MATCHED_CNN_WIDTHS",
    "MATCHED_TRANSFORMER_MAX_WIDTH",
    "TASKS",
    "TaskSpec",
    "get_task",
    "host_param_count",
    "matched_width",
    "resolve_training",
]
