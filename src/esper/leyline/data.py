"""The data contracts: the in-memory ``Dataset`` and the ``BatchSource`` protocol.

Loaders (``esper.data``) produce datasets; the engine (``esper.tolaria``) consumes them through
these types without importing the data layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


class BatchSource(Protocol):
    """An endless, seeded stream of training batches that can be checkpointed."""

    @property
    def batches_per_pass(self) -> int:
        """Batches in one full pass over the data."""
        ...

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next ``(x, y)`` batch."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with exactly the same batches."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` output."""
        ...


@dataclass(frozen=True)
class Dataset:
    """A train/validation/test split held in memory, ready for batching.

    The three splits play different parts: training batches update the weights, validation
    drives the controllers and picks the "best" model, and test is read once at the end of a
    run, so no decision ever sees it. The splits hold disjoint samples.

    Attributes:
        name: Short name of the dataset, e.g. ``"fashion_mnist"`` or ``"text:corpus.txt"``.
        x_train: Training inputs: float32 ``(N, C, H, W)`` normalized images, or int64 ``(N, T)``
            token ids for text.
        y_train: Training targets: int64 ``(N,)`` labels, or int64 ``(N, T)`` next-token ids.
        x_val: Validation inputs, same layout as ``x_train``.
        y_val: Validation targets, same layout as ``y_train``.
        x_test: Test inputs, same layout as ``x_train``.
        y_test: Test targets, same layout as ``y_train``.
        num_classes: Number of classes, or the vocabulary size for text.
        input_shape: Per-sample shape of ``x``, e.g. ``(1, 28, 28)`` or ``(T,)``.
        vocab: For text datasets the characters, indexed by token id; ``None`` otherwise.
        augment: Whether training batches should get ``augment_crop_flip`` (CIFAR only).
        source: Where the samples came from: the directory or file read, or what bundles or
            generates them ("" when unsaid); a run records it (``receipt``).
        sha256: A digest of what was read, where the loader takes one: a text task's decoded
            text, an image dataset's samples and labels (``samples_sha256``); a copy edited
            under the same name and sizes gives another. None for the bundled and generated
            ones.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    vocab: tuple[str, ...] | None = None
    augment: bool = False
    source: str = ""
    sha256: str | None = None

    def __post_init__(self) -> None:
        classes = self.num_classes
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
            raise ValueError(f"dataset {self.name!r}: num_classes={classes!r}, need an int >= 2")
        if not isinstance(self.augment, bool):
            raise ValueError(f"dataset {self.name!r}: augment={self.augment!r}, need a bool")
        if self.augment and len(self.input_shape) != 3:
            raise ValueError(
                f"dataset {self.name!r}: augment needs images (C, H, W), got input_shape "
                f"{self.input_shape}"
            )
        if self.vocab is not None and len(self.vocab) != self.num_classes:
            raise ValueError(
                f"dataset {self.name!r}: vocab has {len(self.vocab)} entries but "
                f"num_classes={self.num_classes}; for text they must be equal"
            )
        splits = (
            ("train", self.x_train, self.y_train),
            ("val", self.x_val, self.y_val),
            ("test", self.x_test, self.y_test),
        )
        for split, x, y in splits:
            if tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"dataset {self.name!r}: x_{split} has per-sample shape "
                    f"{tuple(x.shape[1:])}, expected input_shape {self.input_shape}"
                )
            if x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(
                    f"dataset {self.name!r}: x_{split} has {x.shape[0]} samples and y_{split} "
                    f"has {y.shape[0]}; they must be equal and non-zero"
                )
            if y.dtype != torch.int64:
                raise ValueError(f"dataset {self.name!r}: y_{split} dtype {y.dtype}, need int64")
            if x.dtype not in (torch.float32, torch.int64):
                raise ValueError(
                    f"dataset {self.name!r}: x_{split} dtype {x.dtype}, "
                    "need float32 (images) or int64 (tokens)"
                )
            # labels -1 (or -100, which cross-entropy skips) or past the classes; read on the
            # CPU only (the data moved to a device was checked before it moved)
            cpu = y.device.type == "cpu"
            if cpu and y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
                raise ValueError(
                    f"dataset {self.name!r}: y_{split} holds labels from {int(y.min())} to "
                    f"{int(y.max())}, need [0, {classes})"
                )

    def receipt(self) -> dict[str, Any]:
        """What a run records of its data (``meta.json``'s ``data``): the dataset, where it
        came from (which of the places searched held it), the samples in each split and, where
        taken, its ``sha256``."""
        samples = {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}
        digest = {} if self.sha256 is None else {"sha256": self.sha256}
        return {"dataset": self.name, "source": self.source, "samples": samples, **digest}
