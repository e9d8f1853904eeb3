"""Device mapping (round-robin, printed), CUDA streams and AMP; GPU runs skip without GPUs."""

from __future__ import annotations

import pytest
import torch

from esper.leyline.config import override
from esper.nissa import TelemetryHub
from esper.simic.build import build_trainer
from esper.simic.config import TrainingConfig, load_preset
from esper.simic.vector import assign_devices, describe_device_map, parse_device
from esper.study.checks import load_data


def test_round_robin_over_cpu() -> None:
    assert assign_devices(3, ["cpu"]) == (torch.device("cpu"),) * 3


def test_round_robin_over_two_gpus_and_the_printed_map(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assigned = assign_devices(5, ["cuda:0", "cuda:1"])
    assert [str(d) for d in assigned] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert describe_device_map(assigned) == "cuda:0: envs 0, 2, 4\ncuda:1: envs 1, 3"
    # One environment is "env 0": "envs 0" read as none.
    assert describe_device_map(assigned[:2]) == "cuda:0: env 0\ncuda:1: env 1"


def test_unavailable_or_malformed_devices_are_named(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'cuda:3'; available: cpu, cuda, cuda:0"):
        parse_device("cuda:3")
    with pytest.raises(ValueError, match=r"'gpu0'"):
        parse_device("gpu0")
    with pytest.raises(ValueError, match="distinct"):
        assign_devices(2, ["cpu", "cpu"])
    with pytest.raises(ValueError, match="distinct"):  # the same GPU by two names
        assign_devices(2, ["cuda", "cuda:0"])
    with pytest.raises(ValueError, match="at least one device"):  # a ZeroDivisionError
        assign_devices(2, [])
    with pytest.raises(ValueError, match=r"n_envs must be an integer in \[0, "):  # was ()
        assign_devices(-1, ["cpu"])


def test_cuda_is_the_first_visible_gpu(monkeypatch) -> None:
    """A Ray actor's GPU is the only one it sees: ``cuda`` names it wherever Ray put it."""
    assert parse_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"'cuda'; available: cpu$"):
        parse_device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"'cuda:2'; available: cpu, cuda, cuda:0, cuda:1$"):
        parse_device("cuda:2")


def _tiny(devices: list[str], amp: bool = False) -> TrainingConfig:
    config: TrainingConfig = override(
        load_preset("tiny"), {"runtime": {"devices": devices, "amp": amp}}
    )
    return config.resolved()


def test_amp_needs_cuda() -> None:
    config = _tiny(["cpu"], amp=True)
    with pytest.raises(ValueError, match="--amp needs the policy on a CUDA device, not cpu"):
        build_trainer(config, TelemetryHub("t", []), load_data(config.env))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs at least 2 CUDA devices")
def test_tiny_job_lands_on_every_gpu() -> None:
    config = _tiny(["cuda:0", "cuda:1"], amp=True)
    trainer, devices = build_trainer(config, TelemetryHub("t", []), load_data(config.env))
    result = trainer.run_round()
    assert [str(d) for d in devices] == ["cuda:0", "cuda:1"]
    for env, device in zip(trainer.vec.envs, devices, strict=True):
        assert next(env.episode.model.parameters()).device == device  # type: ignore[attr-defined]
    assert trainer.vec.streams[0] is not None and trainer.vec.streams[1] is not None
    assert result.stats.policy_loss is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_job_on_one_gpu_with_amp() -> None:
    config = _tiny(["cuda:0"], amp=True)
    trainer, _ = build_trainer(config, TelemetryHub("t", []), load_data(config.env))
    result = trainer.run_round()
    assert trainer.learner.scaler.is_enabled()
    assert result.stats.skipped_steps == 0 or result.anomaly is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_environments_on_one_gpu_share_one_copy_of_the_dataset() -> None:
    """Each environment moving the dataset itself would hold n_envs copies in GPU memory."""
    from esper.simic.build import build_envs

    config = _tiny(["cuda:0"])
    vec = build_envs(config, load_data(config.env), lambda event, context: None, [0, 1])
    first, second = (env.episode.data for env in vec.envs)  # type: ignore[attr-defined]
    assert first.x_train.device == torch.device("cuda", 0)
    assert first.x_train.data_ptr() == second.x_train.data_ptr()
