"""Tasks: named presets bundling a host, a dataset and training defaults.

This module imports no torch at import time (the ``esper`` command lists tasks in its help);
``TaskSpec.build_host`` builds the host through Kasmina when a run starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from esper.leyline.config import HostTraining

if TYPE_CHECKING:
    from esper.kasmina import SegmentedHost
    from esper.leyline.data import Dataset


@dataclass(frozen=True)
class TaskSpec:
    """A task preset.

    Attributes:
        name: task name on the command line.
        description: one line for ``esper --help`` and reports.
        dataset: the ``esper.data.load_dataset`` name.
        host_kind: ``"cnn"`` or ``"transformer"``.
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
    host_kind: str
    host_config: Mapping[str, int] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 128
    batches_per_epoch: int | None = None
    val_samples: int | None = None
    lr: float = 3e-3

    def build_host(self, data: Dataset, width: int | None = None) -> SegmentedHost:
        """The task's host for ``data``.

        Args:
            data: input channels and size, classes or vocabulary and block size come from it.
            width: replaces the task's width (CNN ``base_channels``, transformer ``n_embd``).
        """
        from esper.kasmina import CNNHostConfig, HostConfig, TransformerHostConfig, build_host

        config: HostConfig
        if self.host_kind == "cnn":
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
        return build_host(config if width is None else config.with_width(width))


_IMPAIRED: Mapping[str, int] = {"base_channels": 4, "kernel_size": 1, "depth": 3}
"""A deliberately weak host: 1x1 kernels see no neighbourhood, 4 base channels — room to grow."""

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "fashion_mnist",
            "Fashion-MNIST, 16-channel CNN host",
            "fashion_mnist",
            "cnn",
            {"base_channels": 16, "depth": 3},
            epochs=15,
        ),
        TaskSpec(
            "fashion_mnist_impaired",
            "Fashion-MNIST, tiny 1x1-kernel CNN host that growth can rescue",
            "fashion_mnist",
            "cnn",
            _IMPAIRED,
            epochs=20,
        ),
        TaskSpec(
            "cifar10", "CIFAR-10, 32-channel CNN host", "cifar10", "cnn", {"base_channels": 32}
        ),
        TaskSpec(
            "cifar10_impaired",
            "CIFAR-10, tiny 1x1-kernel CNN host",
            "cifar10",
            "cnn",
            _IMPAIRED,
        ),
        TaskSpec(
            "digits",
            "scikit-learn 8x8 digits, small CNN host",
            "digits",
            "cnn",
            {"base_channels": 8, "depth": 3},
            epochs=20,
            batch_size=64,
        ),
        TaskSpec(
            "text_lm",
            "character-level language model, GPT-style transformer host",
            "text",
            "transformer",
            {"n_embd": 64, "n_head": 4, "n_layer": 3, "n_points": 3},
            epochs=10,
            batch_size=32,
            batches_per_epoch=100,
        ),
        TaskSpec(
            "synthetic",
            "synthetic teacher-labelled images for tests and benchmarks (not real data)",
            "synthetic",
            "cnn",
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
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def resolve_training(training: HostTraining) -> HostTraining:
    """Fill the task's defaults into the unset fields of ``training`` (the one derivation).

    Raises:
        ValueError: for an unknown task, naming the known ones.
    """
    task = get_task(training.task)
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


__all__ = ["TASKS", "TaskSpec", "get_task", "resolve_training"]
