"""save_model / load_model: grown models reload exactly; bad files fail clearly."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from conftest import cnn_host, grow, host_input, host_target, transformer_host
from esper.kasmina import (
    CheckpointError,
    MorphogeneticModel,
    build_host,
    capture_state,
    load_model,
    restore_state,
    save_model,
)
from esper.leyline import SeedStage
from esper.leyline.files import WriteError


def _train_a_little(model: MorphogeneticModel, steps: int = 3) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        x, y = host_input(model.host, 8), host_target(model.host, 8)
        opt.zero_grad()
        out = model(x)
        F.cross_entropy(out.flatten(0, -2), y.flatten()).backward()
        opt.step()


def _grown_cnn() -> MorphogeneticModel:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"], embargo_epochs=3)
    grow(model, "early", "conv_light", SeedStage.FOSSILIZED, alpha=1.0)
    grow(model, "late", "bottleneck", SeedStage.FOSSILIZED, alpha=0.6, blend_mode="gated")
    grow(model, "mid", "depthwise", SeedStage.BLENDING, alpha=0.2)
    model.step_epoch()
    _train_a_little(model)  # BatchNorm running stats and seed weights move
    model.measure_contributions([(host_input(model.host), host_target(model.host))])
    return model


@pytest.mark.parametrize("make", [_grown_cnn], ids=["cnn"])
def test_grown_model_round_trips_exactly(tmp_path, make) -> None:
    model = make().eval()
    path = save_model(model, tmp_path / "ckpt" / "model.pt")
    loaded = load_model(path).eval()
    x = host_input(model.host, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.reports() == model.reports()
    assert loaded.epoch == model.epoch and loaded.embargo_epochs == 3
    # The α schedule continues identically after reload.
    model.step_epoch()
    loaded.step_epoch()
    assert loaded.reports()["mid"].alpha == model.reports()["mid"].alpha
    assert [p.name for p in tmp_path.joinpath("ckpt").iterdir()] == [
        "model.pt"
    ]  # no temp files left


def test_transformer_round_trip(tmp_path) -> None:
    model = MorphogeneticModel(transformer_host(), ["early", "mid", "late"])
    grow(model, "early", "lora", SeedStage.FOSSILIZED, alpha=1.0)
    grow(model, "late", "attention", SeedStage.FOSSILIZED, alpha=0.5, blend_mode="gated")
    grow(model, "mid", "mlp", SeedStage.EMBARGOED)
    _train_a_little(model)
    model.eval()
    loaded = load_model(save_model(model, tmp_path / "m.pt")).eval()
    x = host_input(model.host)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.reports() == model.reports()
    assert loaded.host.lm_head.weight is loaded.host.tok_emb.weight  # tying survives


def test_manifest_stores_the_host_config_fields(tmp_path) -> None:
    model = MorphogeneticModel(transformer_host(dropout=0.25), ["early"])
    payload = torch.load(save_model(model, tmp_path / "m.pt"), weights_only=True)
    host = json.loads(payload["manifest"])["host"]
    assert host == {"kind": "transformer", "config": dataclasses.asdict(model.host.config)}
    assert host["config"]["dropout"] == 0.25
    assert load_model(tmp_path / "m.pt").host.config == model.host.config


def test_missing_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_a_device_this_machine_lacks_is_refused_before_the_file_is_read(tmp_path) -> None:
    """A bogus name or CUDA on a machine without it failed after the whole load, with torch's
    own error (a RuntimeError listing every device type, or an AssertionError)."""
    path = save_model(_grown_cnn(), tmp_path / "m.pt")
    cases = [("bogus", "is no torch device"), (None, "is no torch device")]
    cases.append(("cuda:99", rf"this machine has {torch.cuda.device_count()} CUDA device"))
    for where, message in cases:
        with pytest.raises(ValueError, match=message):
            load_model(path, map_location=where)  # type: ignore[arg-type]
    assert load_model(path, map_location=torch.device("cpu")).epoch == load_model(path).epoch


def test_corrupt_file(tmp_path) -> None:
    path = save_model(_grown_cnn(), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable Esper model file"):
        load_model(path)
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable Esper model file"):
        load_model(path)


class _Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_arbitrary_pickles_are_refused(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"manifest": "{}", "state_dict": {}, "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable Esper model file"):
        load_model(path)
    assert "arbitrary code ran" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_model(path)


def _rewrite_manifest(path, edit) -> None:
    payload = torch.load(path, weights_only=True)
    manifest = json.loads(payload["manifest"])
    edit(manifest)
    payload["manifest"] = json.dumps(manifest)
    torch.save(payload, path)


def test_mismatched_architecture(tmp_path) -> None:
    path = save_model(_grown_cnn(), tmp_path / "m.pt")

    def swap_blueprint(m):
        m["seeds"]["early"]["blueprint"] = "norm"

    _rewrite_manifest(path, swap_blueprint)
    with pytest.raises(
        CheckpointError, match=r"do not match the manifest's architecture: missing slots\.early"
    ):
        load_model(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(version=99), "version 99; this Esper reads 'esper-model' version 1"),
        (lambda m: m["host"].update(kind="rnn"), "unknown host kind 'rnn'"),
        (
            lambda m: m["host"]["config"].update(width=4),
            r"unknown key\(s\) \['width'\] in cnn host config",
        ),
        (
            lambda m: m["host"]["config"].pop("kernel_size"),
            r"missing key\(s\) \['kernel_size'\] in cnn host config",
        ),
        (
            lambda m: m["host"]["config"].update(depth=0),
            r"depth must be an integer in \[1, 65536\], got 0",
        ),
        (
            lambda m: m["seeds"]["mid"].update(stage="SLEEPING"),
            "'SLEEPING' is not a valid SeedStage",
        ),
        (lambda m: m.pop("slots"), "inconsistent manifest: KeyError"),
        (lambda m: m["seeds"].pop("late"), r"inconsistent manifest: KeyError\('late'\)$"),
        (lambda m: m["seeds"]["mid"].update(alpha=7.0), r"alpha must be in \[0.0, 1.0\], got 7.0"),
        (lambda m: m["seeds"]["mid"].update(contribution="lots"), "contribution must be a number"),
        (lambda m: m["seeds"]["mid"].update(stage="DORMANT"), "stage DORMANT with blueprint"),
        (lambda m: m.update(dtype="float7"), "unknown dtype 'float7'"),
        # what the lifecycle keeps true (an adversarial sweep: these were restored, and the
        # seed then held α forever or never passed G3)
        (lambda m: m["seeds"]["mid"].update(schedule=None), "a BLENDING seed has an α schedule"),
        (
            lambda m: m["seeds"]["late"].update(schedule=m["seeds"]["mid"]["schedule"]),
            "got FOSSILIZED with schedule",
        ),
        (lambda m: m["seeds"]["mid"].update(alpha=0.9), r"alpha 0.9 is not where its schedule"),
        (lambda m: m["seeds"]["mid"]["plan"].update(target=0.0), "plan's target must be in"),
        (lambda m: m["seeds"]["mid"].update(epochs_in_stage=True), "epochs_in_stage must be"),
        (lambda m: m["seeds"]["mid"].update(gradient_ratio=-1.0), "gradient_ratio must be >= 0"),
    ],
)
def test_inconsistent_manifest(tmp_path, edit, message: str) -> None:
    path = save_model(_grown_cnn(), tmp_path / "m.pt")
    _rewrite_manifest(path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(epoch="7"), "epoch must be an integer >= 0, got '7'"),
        (lambda m: m.update(epoch=2.9), "epoch must be an integer >= 0, got 2.9"),
        (lambda m: m.update(epoch=-5), "epoch must be an integer >= 0, got -5"),
        (lambda m: m["seeds"]["mid"]["plan"].update(tempo=True), "α schedule needs ints"),
        (
            lambda m: m["seeds"]["early"].update(stage="TRAINING"),  # FOSSILIZED at α 1 in file
            r"slot 'early': alpha 1.0 in TRAINING; only BLENDING, HOLDING and FOSSILIZED",
        ),
        (
            lambda m: m["seeds"]["late"].update(alpha=0.0),
            r"slot 'late': alpha 0.0 in FOSSILIZED; .* and the last two always are",
        ),
        (
            lambda m: m["seeds"]["mid"].update(colour="red"),
            r"slot 'mid': unknown key\(s\) \['colour'\] in its manifest entry",
        ),
        (lambda m: m.update(embargo_epochs=True), "embargo_epochs must be a positive integer"),
        (lambda m: m.update(isolate_blending="no"), "isolate_blending must be True, False or None"),
        (
            lambda m: m["host"]["config"].update(depth=21, n_points=3),
            r"base_channels \* 2\*\*\(depth - 1\) = 4 \* 2\*\*20, must be at most 65536",
        ),
    ],
)
def test_manifest_values_the_constructors_refuse(tmp_path, edit, message: str) -> None:
    """Stored and then obeyed: a string taken for True, True for one epoch; a host whose last
    block doubles its channels 20 times."""
    path = save_model(_grown_cnn(), tmp_path / "m.pt")
    _rewrite_manifest(path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_a_manifest_edited_to_a_huge_host_is_refused_before_it_is_built(
    tmp_path, monkeypatch
) -> None:
    """A few bytes of JSON (16 blocks from 1 channel: 6e9 parameters, 24 GB) made load_model
    fill memory building the host before its weights were compared (the process was killed).
    The host is now built on the meta device (nothing allocated) until the weights match; a
    small edited host shows that, without filling this machine's memory if it regresses."""
    import esper.kasmina.checkpoint as checkpoint

    devices: list[str] = []

    def build(config):
        devices.append(torch.get_default_device().type)
        return build_host(config)

    monkeypatch.setattr(checkpoint, "build_host", build)
    path = save_model(MorphogeneticModel(cnn_host(), ["mid"]), tmp_path / "m.pt")
    load_model(path)
    assert devices == ["meta", "cpu"]
    devices.clear()
    _rewrite_manifest(path, lambda m: m["host"]["config"].update(base_channels=9))
    with pytest.raises(CheckpointError, match=r"architecture: host\.segments\.0\.0\.0\.weight"):
        load_model(path)
    assert devices == ["meta"]


@pytest.mark.parametrize("weights", [[1, 2], {"host.head.weight": 0}, {1: torch.zeros(1)}])
def test_weights_that_are_not_named_tensors_are_refused(tmp_path, weights) -> None:
    path = save_model(_grown_cnn(), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    torch.save({"manifest": payload["manifest"], "state_dict": weights}, path)
    with pytest.raises(CheckpointError, match="its state_dict is not a dict of named tensors"):
        load_model(path)


def test_save_model_refuses_what_it_could_not_read_back_or_write(tmp_path) -> None:
    model = _grown_cnn()
    with pytest.raises(TypeError, match="saves a MorphogeneticModel, got CNNHost"):
        save_model(model.host, tmp_path / "m.pt")

    class OwnHost(type(model.host)):  # type: ignore[misc]
        kind = "mine"

    own = MorphogeneticModel(OwnHost(model.host.config), ["mid"])
    with pytest.raises(ValueError, match="a model of a OwnHost could be written but not read"):
        save_model(own, tmp_path / "own.pt")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(WriteError, match="a parent of it is a file, not a directory"):
        save_model(model, tmp_path / "afile" / "m.pt")
    with pytest.raises(WriteError, match="a parent of it is a file"):
        save_model(model, tmp_path / "afile" / "deeper" / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_in_memory_state_restores_in_place() -> None:
    model = _grown_cnn().eval()
    x = host_input(model.host)
    state = capture_state(model)
    with torch.no_grad():
        before = model(x)
    reports = model.reports()
    # Change everything: prune a seed, grow another, move the weights.
    model.prune("mid")
    model.step_epoch()
    _train_a_little(model)
    model.eval()
    with torch.no_grad():
        assert not torch.equal(model(x), before)
    restore_state(model, state)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert model.reports() == reports
    # The snapshot is a copy: training the restored model does not alter it.
    _train_a_little(model)
    restore_state(model, state)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("damage", ["weights", "stage", "dtype", "missing entry"])
def test_a_state_that_cannot_be_restored_leaves_the_model_as_it_was(damage: str) -> None:
    """The slots restored before the failure stayed restored: a DORMANT model caught the error
    and went on as BLENDING at α 0.4 and epoch 1 with a freshly initialised seed. Integer
    weights were cast into the float32 model (truncated), and a manifest without a slot's
    entry was a KeyError, not the ValueError promised."""
    grown = _grown_cnn()
    state = capture_state(grown)
    manifest = json.loads(json.dumps(state.manifest))
    if damage == "weights":
        weights = {k: v for k, v in state.weights.items() if not k.startswith("slots.late")}
        bad = dataclasses.replace(state, weights=weights)
    elif damage == "dtype":
        weights = {k: v.long() if v.is_floating_point() else v for k, v in state.weights.items()}
        bad = dataclasses.replace(state, weights=weights)
    elif damage == "stage":
        manifest["seeds"]["late"]["stage"] = "NOPE"
        bad = dataclasses.replace(state, manifest=manifest)
    else:
        del manifest["seeds"]["late"]
        bad = dataclasses.replace(state, manifest=manifest)
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"], embargo_epochs=3).eval()
    x = host_input(model.host)
    with torch.no_grad():
        before = model(x)
    reports, epoch = model.reports(), model.epoch
    with pytest.raises(ValueError):
        restore_state(model, bad)
    assert model.reports() == reports and model.epoch == epoch
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_a_state_of_other_construction_options_is_refused() -> None:
    """Restored into a model of other options, the state's were silently not applied."""
    state = capture_state(_grown_cnn())  # embargo_epochs=3, blending isolated (a CNN's default)
    for options in ({"embargo_epochs": 5}, {"embargo_epochs": 3, "isolate_blending": False}):
        other = MorphogeneticModel(cnn_host(), ["early", "mid", "late"], **options)
        with pytest.raises(ValueError, match="state was captured from a model with"):
            restore_state(other, state)


def test_state_for_another_host_is_refused() -> None:
    state = capture_state(_grown_cnn())
    other = MorphogeneticModel(cnn_host(base_channels=8), ["early", "mid", "late"])
    with pytest.raises(ValueError, match="state is for host"):
        restore_state(other, state)


def test_active_param_count() -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    host = model.host_param_count
    assert model.active_param_count() == host
    grow(model, "early", "conv_light", SeedStage.GERMINATED)
    assert model.active_param_count() == host  # a germinated seed does not run yet
    grow(model, "mid", "norm", SeedStage.FOSSILIZED)
    grow(model, "late", "norm", SeedStage.PRUNED)
    assert model.active_param_count() == host + model.reports()["mid"].seed_param_count


def test_manifest_that_is_not_an_object(tmp_path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"manifest": "[1, 2]", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="has no Esper manifest"):
        load_model(path)


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        ("{not json", "Expecting property name"),
        ('{"version": ' + "9" * 5000 + "}", "a 5000-digit integer; at most 4300 digits are read"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_a_manifest_that_cannot_be_read_is_one_line(tmp_path, manifest: str, reason: str) -> None:
    """The last two raised (ValueError, RecursionError) through every reader of model files."""
    path = tmp_path / "m.pt"
    torch.save({"manifest": manifest, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="has a corrupt manifest: ") as caught:
        load_model(path)
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_float64_model_round_trips(tmp_path) -> None:
    model = MorphogeneticModel(cnn_host().double(), ["early", "mid", "late"])
    grow(model, "mid", "conv_light", SeedStage.FOSSILIZED, alpha=1.0)
    model.eval()
    loaded = load_model(save_model(model, tmp_path / "m.pt")).eval()
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    x = host_input(model.host).double()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
