"""Damaged and foreign model files: each kind of damage gives one ``CheckpointError`` line.

``TORCH_LOAD_ERRORS`` names what ``torch.load`` raises; these tests show every kind of damage
lands in it (so ``_read`` turns it into a ``CheckpointError``) and nothing else leaks out, not
even a warning.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import random
import warnings
import zipfile
from collections.abc import Callable

import pytest
import torch

from conftest import cnn_host, grow
from esper.kasmina import CheckpointError, MorphogeneticModel, load_model, save_model
from esper.leyline import SeedStage
from esper.leyline.loading import TORCH_LOAD_ERRORS, load_untrusted


def _model_file_bytes(tmp_path) -> bytes:
    model = MorphogeneticModel(cnn_host(), ["early", "mid"])
    grow(model, "mid", "conv_light", SeedStage.BLENDING)
    return save_model(model, tmp_path / "good.pt").read_bytes()


def _foreign_zip(_: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("notes/readme.txt", "written by another program")
    return buffer.getvalue()


def _legacy_torch_file_cut(_: bytes) -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(4)}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()[:-40]


def _torchscript_archive(_: bytes) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
    return buffer.getvalue()


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda good: b"",
    "cut_to_10_bytes": lambda good: good[:10],
    "cut_in_half": lambda good: good[: len(good) // 2],
    "cut_near_the_end": lambda good: good[:-30],
    "random_bytes": lambda good: random.Random(0).randbytes(4096),
    "text": lambda good: b"definitely not a checkpoint\n",
    "zip_from_another_program": _foreign_zip,
    "plain_pickle": lambda good: pickle.dumps({"manifest": "{}", "state_dict": {}}),
    "legacy_torch_file_cut": _legacy_torch_file_cut,
    "header_overwritten": lambda good: b"\xff" * 64 + good[64:],
    "torchscript_archive": _torchscript_archive,
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_each_kind_of_damage_is_one_line(tmp_path, kind: str) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(DAMAGE[kind](_model_file_bytes(tmp_path)))
    with pytest.raises(CheckpointError, match="is not a readable Esper model file") as info:
        load_model(path)
    assert len(str(info.value).splitlines()) == 1
    assert isinstance(info.value.__cause__, TORCH_LOAD_ERRORS)


def test_a_torchscript_archive_is_refused_without_torchs_warning(tmp_path) -> None:
    """torch warns that it dispatches a TorchScript archive to ``torch.jit.load`` before it
    refuses it under ``weights_only``: the reader keeps the refusal the only thing said."""
    path = tmp_path / "m.pt"
    path.write_bytes(_torchscript_archive(b""))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="TorchScript archives"):
            load_model(path)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("data", [b"# a text file\n", pickle.dumps(object)])
def test_a_file_torch_will_not_load_safely_is_refused_without_advice_to_load_it_unsafely(
    tmp_path, data: bytes
) -> None:
    """torch's refusal ends "Re-running torch.load with weights_only set to False will likely
    succeed": the line passed that on, for a file that is no model at all, where the README
    says Esper never unpickles arbitrary objects (a walk-through)."""
    path = tmp_path / "m.pt"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as info:
            load_model(path)
    message = str(info.value)
    assert "weights_only" not in message and "\n" not in message
    assert "torch's weights-only reader refused it: Unsupported operand " in message
    assert "(Esper unpickles tensors and containers only)" in message
    assert [str(w.message) for w in caught] == []  # nor torch's warning on a plain pickle


@pytest.mark.filterwarnings("ignore")
def test_random_cuts_and_overwrites_raise_only_named_errors(tmp_path) -> None:
    """torch.load on damaged bytes raises nothing outside ``TORCH_LOAD_ERRORS``."""
    good = _model_file_bytes(tmp_path)
    rng = random.Random(1)
    for _ in range(300):
        data = bytearray(good[: rng.randrange(len(good))] if rng.random() < 0.5 else good)
        for _ in range(rng.randrange(1, 6)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(TORCH_LOAD_ERRORS):  # anything else fails the test
            load_untrusted(bytes(data))
