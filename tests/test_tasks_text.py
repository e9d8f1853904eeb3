"""The impaired text task ``text_lm_impaired``: its host on the real bundled text (Python's
``pydoc_data`` topics), its size against ``text_lm``'s, one tiny training run, and germination of
every transformer blueprint at every slot."""

from __future__ import annotations

import math

import pytest
import torch

from esper.cli.main import main
from esper.data import load_dataset
from esper.kasmina import MorphogeneticModel, TransformerHost, blueprint_registry
from esper.leyline import GateMode, SeedStage, Topology
from esper.leyline.data import Dataset
from esper.nissa import record
from esper.tasks import get_task, host_param_count

TASK = "text_lm_impaired"

SMALLER_THAN_TEXT_LM = 10
"""The impaired host has at least 10x fewer parameters than ``text_lm``'s (measured: 12.8x)."""


@pytest.fixture(scope="module")
def text() -> Dataset:
    """The task's real data: the bundled pydoc text at the default block size."""
    return load_dataset(get_task(TASK).dataset)


def test_preset_is_a_small_transformer_on_the_text_data() -> None:
    task, full = get_task(TASK), get_task("text_lm")
    assert (task.dataset, task.host_kind) == (full.dataset, full.host_kind)
    assert (task.dataset, task.host_kind) == ("text", Topology.TRANSFORMER)
    assert dict(task.host_config) == {"n_embd": 16, "n_head": 1, "n_layer": 3, "n_points": 3}
    # the same training steps as text_lm (1000 batches of 32 windows), in shorter epochs
    assert task.batch_size == full.batch_size
    assert task.batches_per_epoch is not None and full.batches_per_epoch is not None
    assert task.epochs * task.batches_per_epoch == full.epochs * full.batches_per_epoch


def test_help_lists_the_task(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert f"{TASK} (" in capsys.readouterr().out


def test_host_builds_and_is_smaller_than_text_lms(text: Dataset) -> None:
    host = get_task(TASK).build_host(text)
    assert isinstance(host, TransformerHost)
    assert (host.config.vocab_size, host.config.block_size) == (text.num_classes, 64)
    assert [p.slot for p in host.injection_points] == ["early", "mid", "late"]
    assert [p.channels for p in host.injection_points] == [16, 16, 16]
    impaired = host_param_count(TASK, text, None)
    # (vocab + block) * d + 3 * (12 d^2 + 13 d) + 2 d at d = 16 (tests/test_width.py's formula)
    assert impaired == (text.num_classes + 64) * 16 + 3 * (12 * 16 * 16 + 13 * 16) + 2 * 16
    assert impaired == sum(p.numel() for p in host.parameters())
    assert host_param_count("text_lm", text, None) >= SMALLER_THAN_TEXT_LM * impaired


def test_one_tiny_epoch_on_the_bundled_text(tmp_path) -> None:
    run = tmp_path / "run"
    tiny = ["--epochs", "1", "--batches-per-epoch", "2", "--val-samples", "16"]
    assert main(["static", "--task", TASK, *tiny, "--out", str(run)]) == 0
    summary = record.read_summary(run)
    assert summary is not None and summary.status == "completed"
    assert summary.growth is not None and summary.growth.final is not None
    accuracy = summary.growth.final.val_accuracy
    assert accuracy is not None and math.isfinite(accuracy) and 0.0 <= accuracy <= 100.0


@pytest.mark.parametrize("blueprint", blueprint_registry.names(Topology.TRANSFORMER))
def test_every_blueprint_germinates_at_every_slot(text: Dataset, blueprint: str) -> None:
    host = get_task(TASK).build_host(text)
    slots = [p.slot for p in host.injection_points]
    model = MorphogeneticModel(host, slots, gate_mode=GateMode.STRICT)
    x = text.x_val[:4]  # (B, T) real token ids
    model.eval()
    with torch.no_grad():
        before = model(x)
        for slot in slots:
            model.germinate(slot, blueprint)  # gate G0: output shape and zero output
            seed = model.slot(slot).seed
            assert model.slot(slot).stage is SeedStage.GERMINATED and seed is not None
            h = host.forward_to_segment(slot, x)  # (B, T, 16): the real stream at the slot
            delta = seed(h)
            assert delta.shape == h.shape and torch.equal(delta, torch.zeros_like(delta))
        assert torch.equal(model(x), before)
