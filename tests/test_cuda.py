"""CUDA placement: seeds follow the host's device. Marked ``gpu``; skips cleanly without CUDA."""

from __future__ import annotations

import pytest
import torch

from conftest import cnn_host, grow, host_input
from esper.kasmina import MorphogeneticModel, load_model, save_model
from esper.leyline import SeedStage

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_model_on_cuda_matches_cpu(tmp_path) -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    grow(model, "mid", "conv_heavy", SeedStage.HOLDING, alpha=0.5)
    model.eval()
    x = host_input(model.host)
    cpu_out = model(x)
    gpu = model.to("cuda")
    grow(gpu, "early", "norm", SeedStage.TRAINING)  # germinated after the move: lands on CUDA
    assert all(p.device.type == "cuda" for p in gpu.seed_parameters("early"))
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu_out, rtol=1e-4, atol=1e-5)
        fused = gpu.fused_forward(x.cuda(), [{}, {"mid": 0.0}])
    torch.testing.assert_close(fused[0].cpu(), cpu_out, rtol=1e-4, atol=1e-5)
    loaded = load_model(save_model(gpu, tmp_path / "m.pt"), map_location="cuda").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x.cuda()), gpu(x.cuda()), rtol=0, atol=0)
