"""``HostTraining.precision``: bfloat16 autocast of the training forward pass.

The oracle is the float32 run of the same host, data and seed: bfloat16 follows it to rounding,
and differs from it (the setting does something); grouped and one-by-one bfloat16 passes agree
to bfloat16 rounding. Weights, optimizer state, losses and validation stay float32.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import cnn_host, grow, host_input, transformer_host
from esper.cli.main import main
from esper.data import BatchStream, make_synthetic
from esper.kasmina import CNNHost, CNNHostConfig, MorphogeneticModel, blueprint_registry
from esper.kasmina.grouped import groupable, grouped_forward
from esper.leyline import SeedStage, Topology
from esper.leyline.config import HostTraining
from esper.leyline.data import Dataset
from esper.tolaria.engine import Trainer, train_together, training_autocast
from esper.tolaria.episode import dataset_on

CPU = torch.device("cpu")


def _data() -> Dataset:
    return make_synthetic(n_train=256, n_val=128, input_shape=(1, 12, 12), seed=3)


def _trainer(data: Dataset, precision: str, seed: int = 0, device: torch.device = CPU) -> Trainer:
    training = HostTraining(
        "synthetic",
        epochs=3,
        batch_size=32,
        batches_per_epoch=6,
        lr=3e-3,
        seed_lr=3e-3,
        precision=precision,  # type: ignore[arg-type]
    )
    torch.manual_seed(seed)
    config = CNNHostConfig(in_channels=1, num_classes=data.num_classes, input_size=12)
    model = MorphogeneticModel(CNNHost(config), ["early", "mid"]).to(device)
    data = dataset_on(data, device)
    stream = BatchStream(data.x_train, data.y_train, 32, seed)
    return Trainer(model, data, stream, training, lambda event: None)


def _output_dtypes(trainer: Trainer) -> set[tuple[bool, torch.dtype]]:
    """(gradients on, output dtype) of every convolution and linear layer during a step."""
    seen: set[tuple[bool, torch.dtype]] = set()

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        seen.add((torch.is_grad_enabled(), output.dtype))

    for module in trainer.model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.register_forward_hook(hook)
    trainer.train_step()
    return seen


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_bfloat16_trains_in_bfloat16_and_keeps_float32_state(precision: str) -> None:
    trainer = _trainer(_data(), precision)
    seen = _output_dtypes(trainer)
    trained = torch.bfloat16 if precision == "bfloat16" else torch.float32
    assert seen == {(True, trained), (False, torch.float32)}  # training, then validation
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    moments = [s["exp_avg"] for s in trainer.optimizer.state.values()]
    assert moments and {m.dtype for m in moments} == {torch.float32}


CUDA = pytest.param(
    torch.device("cuda"),
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_bfloat16_follows_float32_to_rounding(device: torch.device) -> None:
    data = _data()
    runs = {p: _trainer(data, p, device=device) for p in ("float32", "bfloat16")}
    results = {p: [t.train_step() for _ in range(3)] for p, t in runs.items()}
    for a, b in zip(results["float32"], results["bfloat16"], strict=True):
        assert a.train_loss != b.train_loss  # the setting changes the arithmetic
        assert b.train_loss == pytest.approx(a.train_loss, rel=0.02)
        assert b.val_loss == pytest.approx(a.val_loss, rel=0.02)


def test_grouped_bfloat16_pass_matches_one_by_one() -> None:
    """Losses and gradients of one grouped bfloat16 forward + backward of three hosts equal
    those of each host alone under the same autocast, to bfloat16 rounding."""
    data = _data()
    trainers = [_trainer(data, "bfloat16", seed) for seed in range(3)]
    models = [t.model for t in trainers]
    assert groupable(models)
    x = data.x_train[:32].contiguous(memory_format=torch.channels_last)
    y = data.y_train[:32]

    def losses_and_grads(grouped: bool) -> tuple[list[float], list[torch.Tensor]]:
        for m in models:
            m.zero_grad()
        with training_autocast(CPU, "bfloat16"):
            if grouped:
                outs = list(grouped_forward(models, [x] * 3).unbind(1))
            else:
                outs = [m(x) for m in models]
        losses = [nn.functional.cross_entropy(o.float(), y) for o in outs]
        torch.stack(losses).sum().backward()  # type: ignore[no-untyped-call]
        grads = [p.grad.clone() for m in models for p in m.parameters() if p.grad is not None]
        return [loss.item() for loss in losses], grads

    alone, together = losses_and_grads(False), losses_and_grads(True)
    assert together[0] == pytest.approx(alone[0], rel=1e-2)
    assert len(alone[1]) == len(together[1]) > 0
    # Per tensor, relative to its norm: grouped against alone differ by ~1 % here, float32
    # against bfloat16 by up to ~28 % (small gradients), so 5 % tells them apart.
    for ga, gb in zip(alone[1], together[1], strict=True):
        assert (ga - gb).norm() <= 0.05 * ga.norm()


BLUEPRINTS = [(t, name) for t in Topology for name in blueprint_registry.names(t)]


@pytest.mark.parametrize(("topology", "blueprint"), BLUEPRINTS, ids=str)
@pytest.mark.parametrize("blend_mode", ["add", "gated"])
@pytest.mark.parametrize("stage", [SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.FOSSILIZED])
def test_every_seed_trains_under_bfloat16(
    topology: Topology, blueprint: str, blend_mode: str, stage: SeedStage
) -> None:
    """Every blueprint, blend mode and stage runs forward and backward under the bfloat16
    autocast, near its float32 output (a gated transformer seed raised a dtype error)."""
    host = cnn_host() if topology is Topology.CNN else transformer_host()
    model = MorphogeneticModel(host, ["mid"])
    grow(model, "mid", blueprint, stage, blend_mode=blend_mode, alpha=0.4)
    x = host_input(model.host, batch=8)
    model.train()
    exact = model(x).double()
    with training_autocast(CPU, "bfloat16"):
        out = model(x)
    out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    assert (out.double() - exact).norm() <= 0.05 * exact.norm()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is None or torch.isfinite(g).all() for g in grads)


def test_trainers_of_one_epoch_must_share_a_precision() -> None:
    data = _data()
    mixed = [_trainer(data, "float32"), _trainer(data, "bfloat16", 1)]
    with pytest.raises(ValueError, match=r"share a precision, got \['bfloat16', 'float32'\]"):
        train_together(mixed)


def test_the_cli_records_bfloat16_and_refuses_other_precisions(tmp_path, capsys) -> None:
    tiny = ["--task", "synthetic", "--epochs", "2", "--batches-per-epoch", "2"]
    run = tmp_path / "bf16"
    assert main(["static", *tiny, "--precision", "bfloat16", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["training"]["precision"] == "bfloat16"
    assert 'precision = "bfloat16"' in capsys.readouterr().err  # the effective config

    config = tmp_path / "half.toml"
    config.write_text('[training]\ntask = "synthetic"\nprecision = "half"\n')
    for args in (
        ["static", *tiny, "--precision", "fp16"],
        ["static", "--config", str(config)],
    ):
        assert main([*args, "--out", str(tmp_path / "refused")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "float32" in err and "bfloat16" in err and ("fp16" in err or "half" in err)
        assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize(
    ("precision", "cpu", "warned"),
    [
        ("bfloat16", ("AMD EPYC", {"avx2"}), True),
        ("bfloat16", ("Xeon", {"avx2", "avx512f", "amx_tile"}), False),
        ("bfloat16", ("Xeon", {"avx512f", "avx512_bf16"}), False),
        ("bfloat16", None, False),  # not Linux: cannot tell
        ("float32", ("AMD EPYC", {"avx2"}), False),
    ],
)
def test_bfloat16_on_a_cpu_that_emulates_it_is_warned_of(
    tmp_path, capsys, monkeypatch, precision, cpu, warned
) -> None:
    """The README advised bfloat16 for CNN hosts of width 16 from an AMX machine's 1.6x; on an
    AVX2 CPU it ran fashion_mnist's host 11x slower than float32, without a word (a README
    check). A run on such a CPU now says so; where bfloat16 has units, or the CPU is unknown,
    nothing is said."""
    from esper.nissa import record

    monkeypatch.setattr(record, "cpu_info", lambda: cpu)
    args = [
        "--task",
        "synthetic",
        "--epochs",
        "1",
        "--batches-per-epoch",
        "2",
        "--val-samples",
        "64",
    ]
    assert main(["static", *args, "--precision", precision, "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    line = (
        "warning: precision bfloat16 on a CPU without AMX or AVX-512 BF16 (AMD EPYC: avx2) is "
        "emulated: about 10x slower than float32 on fashion_mnist's host (docs/benchmarks.md)\n"
    )
    assert (line in err) is warned and ("bfloat16 on a CPU" in err) is warned, err


def test_the_cpus_extensions_are_read_on_x86_alone(tmp_path) -> None:
    """An ARM CPU lists its extensions as ``Features`` (``bf16`` among them on Neoverse):
    read as x86's ``flags``, it had none, and every bfloat16 run warned (a review)."""
    from esper.nissa.record import cpu_info

    x86 = tmp_path / "x86"
    x86.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f amx_tile\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU part\t: 0xd40\n")
    assert cpu_info(str(x86)) == ("AMD EPYC", {"avx2", "avx512f", "amx_tile"})
    assert cpu_info(str(arm)) is None and cpu_info(str(tmp_path / "none")) is None


def test_a_bfloat16_study_is_warned_of_once(tmp_path, capsys, monkeypatch) -> None:
    """A study's trials warn in Ray's worker logs, which its driver does not print: the study
    itself now warns, once for all its trials (a review)."""
    from esper.nissa import record

    monkeypatch.setattr(record, "cpu_info", lambda: ("AMD EPYC", {"avx2"}))
    (tmp_path / "s.toml").write_text(
        'out = "o"\ntasks = ["synthetic", "digits_impaired"]\nseeds = 2\n'
        '[budget]\nepochs = 2\nbatches_per_epoch = 2\nval_samples = 64\nprecision = "bfloat16"\n'
        '[[arms]]\nname = "s"\ncontroller = "static"\n'
    )
    assert main(["study", str(tmp_path / "s.toml"), "--dry-run"]) == 0
    assert capsys.readouterr().err.count("warning: precision bfloat16 on a CPU without AMX") == 1
