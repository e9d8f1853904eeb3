"""Save and load grown models: a JSON architecture manifest next to the weights.

The file is written by ``torch.save`` with only strings and tensors inside and read back with
``torch.load(weights_only=True)``, so loading never unpickles arbitrary objects. The manifest
records the host (kind + its config's fields), the enabled slots, the model options, and every
slot's lifecycle state (blueprint, stage, α schedule, measurements); the model is rebuilt from it
and the weights are loaded strictly on top.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from esper.kasmina.errors import CheckpointError
from esper.kasmina.hosts import (
    CNNHost,
    SegmentedHost,
    TransformerHost,
    build_host,
    host_config_from_dict,
)
from esper.kasmina.model import MorphogeneticModel
from esper.kasmina.shapes import shapes_only
from esper.leyline.config import json_reason
from esper.leyline.files import WriteError, atomic_write, read_regular
from esper.leyline.loading import TORCH_LOAD_ERRORS, load_untrusted

FORMAT = "esper-model"
VERSION = 1


@dataclass(frozen=True)
class ModelState:
    """An in-memory snapshot of a grown model: the manifest and a copy of every tensor."""

    manifest: dict[str, Any]
    weights: dict[str, torch.Tensor]


def _host_entry(host: SegmentedHost) -> dict[str, Any]:
    return {"kind": host.kind, "config": asdict(host.config)}


def _manifest(model: MorphogeneticModel) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "host": _host_entry(model.host),
        "slots": list(model.order),
        "gate_mode": model.gate_mode.value,
        "embargo_epochs": model.embargo_epochs,
        "isolate_blending": model.isolate_blending,
        "dtype": _dtype_name(model._device_dtype()[1]),
        "epoch": model.epoch,
        "seeds": {name: model.slot(name).manifest() for name in model.order},
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def capture_state(model: MorphogeneticModel) -> ModelState:
    """Snapshot ``model`` (architecture and weights) in memory; later changes do not touch it."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ModelState(json.loads(json.dumps(_manifest(model))), weights)


def restore_state(model: MorphogeneticModel, state: ModelState) -> None:
    """Put ``model`` back as ``state`` recorded it, in place: its epoch, every slot's seed and
    lifecycle, and the weights. All or nothing: a state that cannot be restored leaves the
    model as it was (in value; its seeds are rebuilt, as by every restore). The gate mode
    stays the model's (how its caller wants transitions checked from now on, not a state of
    the model).

    Seeds are rebuilt from the manifest (new parameter objects; optimizers must re-register
    them) and the weights are loaded strictly. The host must be the one the state came from.

    Raises:
        ValueError: if the state describes another host, other slots, other options fixed at
            construction (embargo epochs, blending isolation) or another dtype, or holds a
            lifecycle or weights that cannot be restored.
    """
    manifest = state.manifest
    host = _host_entry(model.host)
    dtype_name = _dtype_name(model._device_dtype()[1])
    if manifest["dtype"] != dtype_name:
        raise ValueError(f"state holds {manifest['dtype']} weights, the model is {dtype_name}")
    if manifest["host"] != host or manifest["slots"] != list(model.order):
        raise ValueError(
            f"state is for host {manifest['host']} with slots {manifest['slots']}, "
            f"not {host} with slots {list(model.order)}"
        )
    options = {"embargo_epochs": model.embargo_epochs, "isolate_blending": model.isolate_blending}
    recorded = {key: manifest[key] for key in options}
    if recorded != options:
        raise ValueError(f"state was captured from a model with {recorded}, not {options}")
    before = capture_state(model)
    try:
        _restore(model, state)
    except (KeyError, TypeError) as err:  # a manifest entry missing or of another type
        _restore(model, before)
        raise ValueError(f"state has an inconsistent manifest: {err!r}") from err
    except BaseException:
        _restore(model, before)
        raise


def _restore(model: MorphogeneticModel, state: ModelState) -> None:
    manifest = state.manifest
    epoch = manifest["epoch"]
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
        raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
    model.epoch = epoch
    device, dtype = model._device_dtype()
    for name in model.order:
        model.slot(name).restore(manifest["seeds"][name], device, dtype)
    _check_weights(model, state.weights)
    model.load_state_dict(state.weights, strict=True)


class WeightsMismatchError(ValueError):
    """Weights that do not fit the architecture they are loaded into."""


def _check_weights(model: MorphogeneticModel, weights: dict[str, torch.Tensor]) -> None:
    """Name the keys, shapes and dtypes that differ (``load_state_dict`` only summarizes the
    first two, and casts the third: int64 weights in a float32 model were truncated)."""
    own = model.state_dict()
    _compare({k: tuple(v.shape) for k, v in own.items()}, weights)
    _mismatch([f"{k}: dtype {weights[k].dtype} != {v.dtype}" for k, v in own.items()
               if weights[k].dtype != v.dtype])  # fmt: skip


def _check_host_weights(config: Any, weights: dict[str, torch.Tensor]) -> None:
    """The file's host weights have the shapes ``config``'s host has, compared before that host
    is built: built on the meta device, which allocates nothing. A manifest edited to a huge
    host (a few bytes of JSON) otherwise filled memory before any comparison."""
    with shapes_only():
        host = build_host(config)
    host_weights = {k: v for k, v in weights.items() if k.startswith("host.")}
    _compare({f"host.{k}": tuple(v.shape) for k, v in host.state_dict().items()}, host_weights)


def _compare(expected: dict[str, tuple[int, ...]], weights: dict[str, torch.Tensor]) -> None:
    given = {k: tuple(v.shape) for k, v in weights.items()}
    problems = [f"missing {k}" for k in expected if k not in given]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [
        f"{k}: shape {given[k]} != {expected[k]}"
        for k in expected
        if k in given and given[k] != expected[k]
    ]
    _mismatch(problems)


def _mismatch(problems: list[str]) -> None:
    """Raise ``WeightsMismatchError`` naming the first five ``problems``, if any."""
    if problems:
        more = len(problems) - 5
        raise WeightsMismatchError(
            "; ".join(problems[:5]) + (f"; … {more} more" if more > 0 else "")
        )


def save_model(model: MorphogeneticModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` atomically (``esper.leyline.files.atomic_write``).

    Returns:
        The path written.

    Raises:
        TypeError: ``model`` is not a ``MorphogeneticModel``.
        ValueError: its host is not one ``load_model`` can rebuild (a ``SegmentedHost`` of
            one's own: the file would be written, then refused).
        WriteError: ``path`` or a parent of it cannot be what it needs to be (a directory, a
            file).
    """
    if not isinstance(model, MorphogeneticModel):
        raise TypeError(f"save_model saves a MorphogeneticModel, got {type(model).__name__}")
    if type(model.host) not in (CNNHost, TransformerHost):
        raise ValueError(
            f"load_model rebuilds CNNHost and TransformerHost models only; a model of a "
            f"{type(model.host).__name__} could be written but not read back"
        )
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise WriteError(
            f"cannot write {str(path)!r}: a parent of it is a file, not a directory"
        ) from None
    atomic_write(path, model_bytes(model))
    return path


def model_bytes(model: MorphogeneticModel) -> bytes:
    """``model`` (manifest and weights) as the bytes of a model file, for ``save_model`` or
    a file of a run's checkpoint."""
    payload = {
        "manifest": json.dumps(_manifest(model), sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _read(data: bytes, path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        payload = load_untrusted(data)
    except TORCH_LOAD_ERRORS as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable Esper model file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'})"
        ) from err
    if not isinstance(payload, dict) or set(payload) != {"manifest", "state_dict"}:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not an Esper model file (unexpected layout)"
        )
    try:
        manifest = json.loads(payload["manifest"])
    except (TypeError, ValueError, RecursionError) as err:  # not a string, or unreadable JSON
        raise CheckpointError(
            f"checkpoint {str(path)!r} has a corrupt manifest: {json_reason(err)}"
        ) from None
    if not isinstance(manifest, dict) or "format" not in manifest or "version" not in manifest:
        raise CheckpointError(f"checkpoint {str(path)!r} has no Esper manifest")
    if manifest["format"] != FORMAT or manifest["version"] != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {manifest['format']!r} version "
            f"{manifest['version']!r}; this Esper reads {FORMAT!r} version {VERSION}"
        )
    weights = payload["state_dict"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not an Esper model file (its state_dict is not a "
            "dict of named tensors)"
        )
    return manifest, weights


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> MorphogeneticModel:
    """Rebuild a model saved by ``save_model``: host, slots, seeds in their stages, weights.

    Raises:
        CheckpointError: for a missing, corrupt, foreign or inconsistent file, naming what is wrong.
        ValueError: ``map_location`` is no device this machine has (checked before reading).
    """
    _check_device(map_location)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        data = read_regular(path)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err.strerror}") from err
    return model_from_bytes(data, str(path), map_location)


def _check_device(where: str | torch.device) -> None:
    """``where`` names a device torch knows, and a CUDA device this machine has: a bogus name
    or CUDA on a machine without it failed after the whole file was read, with torch's own
    error (other accelerators are left to torch)."""
    try:
        device = torch.device(where)
    except (RuntimeError, TypeError):  # torch's message lists every device type it knows
        raise ValueError(
            f"map_location {where!r} is no torch device (e.g. 'cpu', 'cuda:0')"
        ) from None
    count = torch.cuda.device_count() if device.type == "cuda" else 1
    if device.type == "cuda" and (device.index or 0) >= count:
        raise ValueError(f"map_location {where!r}: this machine has {count} CUDA device(s)")


def model_from_bytes(
    data: bytes, path: str, map_location: str | torch.device = "cpu"
) -> MorphogeneticModel:
    """Rebuild a model from the bytes ``model_bytes`` made (``path`` names them in errors).

    Raises:
        CheckpointError: for corrupt, foreign or inconsistent bytes, naming what is wrong.
    """
    manifest, weights = _read(data, path)
    try:
        dtype = getattr(torch, manifest["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {manifest['dtype']!r}")
        config = host_config_from_dict(manifest["host"]["kind"], manifest["host"]["config"])
        _check_host_weights(config, weights)
        host = build_host(config).to(dtype)
        model = MorphogeneticModel(
            host,
            manifest["slots"],
            gate_mode=manifest["gate_mode"],
            embargo_epochs=manifest["embargo_epochs"],
            isolate_blending=manifest["isolate_blending"],
        )
        restore_state(model, ModelState(manifest, weights))
    except WeightsMismatchError as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: weights do not match the manifest's architecture: {err}"
        ) from err
    except (KeyError, TypeError, ValueError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, KeyError | TypeError) else err
        raise CheckpointError(
            f"checkpoint {str(path)!r} has an inconsistent manifest: {cause!r}"
        ) from err
    return model.to(map_location)
