"""Host width: the ``width`` setting reaches the host, parameter counts against hand-derived
formulas, ``matched_width`` picks the nearest count, and bad widths fail in one line."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

from esper.cli.main import main
from esper.data.small import make_synthetic
from esper.kasmina import CNNHost, TransformerHost
from esper.leyline.config import HostTraining
from esper.leyline.data import Dataset
from esper.simic.env import task_episode
from esper.tasks import get_task, host_param_count, matched_width, resolve_training


def cnn_params(in_channels: int, width: int, depth: int, kernel: int, classes: int) -> int:
    """Parameters of ``CNNHost`` counted from its architecture: per block a bias-free
    ``kernel x kernel`` conv from the previous channels to ``width * 2**i`` and a BatchNorm
    (weight + bias per channel); then a linear head (weights + bias) from the last channels."""
    channels = [in_channels] + [width * 2**i for i in range(depth)]
    convs = sum(c_in * c_out * kernel * kernel for c_in, c_out in itertools.pairwise(channels))
    norms = 2 * sum(channels[1:])
    return convs + norms + channels[-1] * classes + classes


def transformer_params(vocab: int, block: int, width: int, n_layer: int) -> int:
    """Parameters of ``TransformerHost``: token and position embeddings (the head is tied to the
    token embedding, so it adds nothing), per block two LayerNorms (2d each), qkv (d x 3d + 3d),
    attention projection (d x d + d) and MLP (d x 4d + 4d, 4d x d + d): 12d^2 + 13d; a final
    LayerNorm (2d)."""
    d = width
    return (vocab + block) * d + n_layer * (12 * d * d + 13 * d) + 2 * d


def synthetic_params(width: int) -> int:
    """The synthetic task's host (3x8x8 inputs, 4 classes, depth 3, 3x3 kernels) in closed form:
    convs 27w + 18w^2 + 72w^2, norms 14w, head 16w + 4."""
    return 90 * width * width + 57 * width + 4


def tokens(vocab: int, block: int) -> Dataset:
    """A tiny token dataset: only its vocabulary and block size shape a transformer host."""
    t = torch.zeros(2, block, dtype=torch.long)
    splits = {f.name: t for f in fields(Dataset) if f.name.startswith(("x_", "y_"))}
    return Dataset("tokens", **splits, num_classes=vocab, input_shape=(block,))


SYNTHETIC = make_synthetic(n_train=64, n_val=32)
TEXT = tokens(30, 16)


def test_closed_form_agrees_with_the_general_formula() -> None:
    assert synthetic_params(4) == cnn_params(3, 4, 3, 3, 4) == 1672  # 1440 + 228 + 4


@pytest.mark.parametrize("width", [1, 2, 4, 7, 16, 33])
def test_cnn_host_param_count_matches_the_architecture(width: int) -> None:
    assert host_param_count("synthetic", SYNTHETIC, width) == synthetic_params(width)
    fashion = make_synthetic(n_train=2, n_val=2, input_shape=(1, 28, 28), num_classes=10)
    # the impaired task: 1x1 kernels, 1 input channel, 10 classes
    expected = cnn_params(1, width, 3, 1, 10)
    assert host_param_count("fashion_mnist_impaired", fashion, width) == expected


def test_none_is_the_tasks_own_width() -> None:
    assert host_param_count("synthetic", SYNTHETIC, None) == synthetic_params(4)
    assert host_param_count("text_lm", TEXT, None) == transformer_params(30, 16, 64, 3) == 153024


@pytest.mark.parametrize("width", [4, 8, 32, 64, 100])
def test_transformer_host_param_count_matches_the_architecture(width: int) -> None:
    assert host_param_count("text_lm", TEXT, width) == transformer_params(30, 16, width, 3)


def test_host_param_count_equals_a_built_hosts() -> None:
    # meta-device counting agrees with a real host, tied weights counted once in both
    for task, data in (("synthetic", SYNTHETIC), ("text_lm", TEXT)):
        host = get_task(task).build_host(data, 8)
        assert host_param_count(task, data, 8) == sum(p.numel() for p in host.parameters())


def _episode(training: HostTraining, data: Dataset):
    resolved = resolve_training(training)
    return task_episode(resolved, data, 0, torch.device("cpu"), lambda event: None)


def test_shapes_only_skips_every_draw_without_loading_torchs_compiler() -> None:
    """Hosts are sized on the meta device (``shapes_only``), where torch ran ``nn.init``'s
    random draws in Python and imported ``torch._dynamo`` (1.1 s of a run's start) on the
    first. Every initialiser, in a fresh process: the same shapes, nothing drawn, no import."""
    code = """
import sys
import torch
from torch import nn
from esper.kasmina.shapes import shapes_only
inits = [nn.init.normal_, nn.init.uniform_, nn.init.kaiming_uniform_, nn.init.kaiming_normal_,
         nn.init.xavier_uniform_, nn.init.xavier_normal_, nn.init.trunc_normal_,
         nn.init.orthogonal_, nn.init.zeros_, nn.init.ones_]
with shapes_only():
    shapes = [init(nn.Linear(8, 4).weight).shape for init in inits]
    embedding = nn.Embedding(30, 16).weight
print(set(shapes) == {torch.Size([4, 8])}, embedding.is_meta, "torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["True", "True", "False"], done.stderr[-2000:]


@pytest.mark.parametrize("width", [2, 8])
def test_host_training_width_reaches_the_episodes_host(width: int) -> None:
    training = HostTraining("synthetic", width=width, batches_per_epoch=1, val_samples=16)
    episode = _episode(training, SYNTHETIC)
    host = episode.initial_model.host
    assert isinstance(host, CNNHost) and host.config.base_channels == width
    assert [s.channels for s in host.injection_points] == [width, 2 * width, 4 * width]
    episode.reset()  # the trained episode's host, not only the probe, has the width
    assert episode.model.host_param_count == synthetic_params(width)


def test_no_width_keeps_the_tasks_host() -> None:
    episode = _episode(HostTraining("synthetic"), SYNTHETIC)
    assert episode.initial_model.host_param_count == synthetic_params(4)


def test_transformer_width_reaches_the_episodes_host() -> None:
    episode = _episode(HostTraining("text_lm", width=32), TEXT)
    host = episode.initial_model.host
    assert isinstance(host, TransformerHost) and host.config.n_embd == 32
    assert episode.initial_model.host_param_count == transformer_params(30, 16, 32, 3)


def test_matched_width_picks_the_nearest_count() -> None:
    # synthetic_params: 7 -> 4813, 8 -> 6220; the midpoint is 5516.5
    assert (synthetic_params(7), synthetic_params(8)) == (4813, 6220)
    assert matched_width("synthetic", SYNTHETIC, 4813) == 7
    assert matched_width("synthetic", SYNTHETIC, 5516) == 7  # 703 below 704
    assert matched_width("synthetic", SYNTHETIC, 5517) == 8  # 704 above 703
    assert matched_width("synthetic", SYNTHETIC, 1) == 1  # below every candidate
    assert matched_width("synthetic", SYNTHETIC, 10**9) == 256  # the largest default
    # transformer candidates are multiples of n_head (4): 24 -> 22,824 and 28 -> 30,660
    assert (transformer_params(30, 16, 24, 3), transformer_params(30, 16, 28, 3)) == (22824, 30660)
    assert matched_width("text_lm", TEXT, 26741) == 24  # 3917 below 3919
    assert matched_width("text_lm", TEXT, 26743) == 28  # 3919 below 3917
    assert matched_width("text_lm", TEXT, 10**9) == 512


def test_matched_width_ties_go_to_the_smaller_width() -> None:
    # synthetic_params(4) = 1672 and (6) = 3586: 2629 is 957 from both
    assert matched_width("synthetic", SYNTHETIC, 2629, [6, 4]) == 4
    assert matched_width("synthetic", SYNTHETIC, 2630, [6, 4]) == 6
    assert matched_width("synthetic", SYNTHETIC, 10**6, [3]) == 3
    # among the default transformer candidates: 26,742 is 3918 from 24's and 28's counts
    assert matched_width("text_lm", TEXT, 26742) == 24


@pytest.mark.parametrize("width", [0, -1, 1e30, True, 4097])
def test_bad_widths_fail_in_one_line(width: object) -> None:
    with pytest.raises(ValueError, match=r"width must be an integer in \[1, 4096\]") as err:
        HostTraining("synthetic", width=width)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"width must be an integer in \[1, 4096\]"):
        host_param_count("synthetic", SYNTHETIC, width)  # type: ignore[arg-type]


def test_transformer_width_must_divide_by_n_head() -> None:
    training = HostTraining("text_lm", width=30)  # the task (n_head) is known when resolved
    with pytest.raises(ValueError, match=r"width 30: the text_lm .* 4 attention heads") as err:
        _episode(training, TEXT)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"n_embd \(30\) must be divisible by n_head \(4\)"):
        matched_width("text_lm", TEXT, 1000, [28, 30])
    with pytest.raises(ValueError, match=r"n_embd \(30\) must be divisible by n_head \(4\)"):
        matched_width("text_lm", TEXT, 1, [4, 8, 12, 16, 30])  # bisection never builds 30


def test_matched_width_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one candidate width"):
        matched_width("synthetic", SYNTHETIC, 1000, [])
    with pytest.raises(ValueError, match=r"target must be an integer in \[1, "):
        matched_width("synthetic", SYNTHETIC, 0)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        matched_width("nope", SYNTHETIC, 1000)


def test_static_run_with_a_width(tmp_path) -> None:
    run = tmp_path / "run"
    args = ["static", "--task", "synthetic", "--width", "8", "--epochs", "1"]
    assert main([*args, "--batches-per-epoch", "2", "--val-samples", "64", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["training"]["width"] == 8
    summary = json.loads((run / "summary.json").read_text())
    assert summary["growth"]["host_param_count"] == synthetic_params(8)


def test_the_impaired_digits_task_has_the_impaired_host() -> None:
    """The demo's fallback grows the same 390-parameter host as fashion_mnist_impaired."""
    from esper.data import load_dataset

    digits = load_dataset("digits")
    assert host_param_count("digits_impaired", digits, None) == 390
    assert get_task("digits_impaired").host_config == get_task("fashion_mnist_impaired").host_config


HAVE = 2**20  # a machine with 1 MiB, for the tests below


def _widest(envs: int | None) -> int:
    """The widest synthetic host whose peak (25 float32 copies of its parameters for a growth
    run, ``envs`` None; 11 per PPO environment) fits ``HAVE``, from the closed form."""
    copies = 25 if envs is None else 11 * envs
    return max(w for w in range(1, 200) if synthetic_params(w) * 4 * copies <= HAVE)


@pytest.mark.parametrize(
    "args",
    [
        ["static", "--task", "text_lm", "--width", "6"],
        ["heuristic", "--task", "text_lm", "--width", "6"],
        ["ppo", "--preset", "tiny", "--task", "text_lm", "--width", "6"],
        ["static", "--config", "CONFIG"],
    ],
)
def test_a_transformer_width_off_its_heads_is_one_line_naming_the_nearest(
    tmp_path, capsys, args: list[str]
) -> None:
    """A text_lm width that is no multiple of its 4 heads crashed with a traceback naming
    n_head values, which no flag sets (the memory check built the host outside the checks)."""
    config = tmp_path / "c.toml"
    config.write_text('[training]\ntask = "text_lm"\nwidth = 6\n')
    out = tmp_path / "run"
    args = [str(config) if a == "CONFIG" else a for a in args]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "esper: error: width 6: the text_lm host takes widths that are multiples of its 4 "
        "attention heads (4, 8, ..., 4096); nearest: 4 or 8"
    ]
    assert not out.exists()


def test_the_nearest_widths_stay_within_the_limit() -> None:
    with pytest.raises(ValueError, match=r"width 4095: .* nearest: 4092 or 4096$"):
        get_task("text_lm").check_width(4095)
    with pytest.raises(ValueError, match=r"width 2: .* nearest: 4$"):
        get_task("text_lm").check_width(2)
    get_task("text_lm").check_width(4096)
    get_task("synthetic").check_width(7)  # a CNN takes every width


@pytest.mark.parametrize("command", ["static", "ppo"])
def test_a_width_that_cannot_fit_is_refused_up_front(
    tmp_path, capsys, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Building such a host ran out of memory with a traceback (or swapped for minutes); the
    refusal names the widest host that fits, and nothing is written."""
    monkeypatch.setattr("esper.study.checks.memory_bytes", lambda: HAVE)
    envs = None if command == "static" else 3
    widest = _widest(envs)
    assert widest == (10 if envs is None else 9)  # 100 or 132 (90w^2 + 57w + 4) <= 2^20
    args = ["--task", "synthetic"] if command == "static" else ["--preset", "tiny"]
    if command == "ppo":
        args += ["--task", "synthetic", "--ppo.n-envs", "3"]
    out = tmp_path / "run"
    assert main([command, *args, "--width", str(widest + 1), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"use --width {widest} or less" in err[0], err
    who = "a run of this host needs" if envs is None else "3 environment(s) of it need"
    assert f"width {widest + 1} does not fit: {who} " in err[0]
    assert list(tmp_path.iterdir()) == []


def test_the_widest_host_that_fits_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from esper.leyline.config import UserError
    from esper.study.checks import check_fits

    monkeypatch.setattr("esper.study.checks.memory_bytes", lambda: HAVE)
    training = resolve_training(HostTraining(task="synthetic", width=_widest(None)))
    check_fits(training, SYNTHETIC)
    with pytest.raises(UserError, match="use --width 10 or less"):
        check_fits(resolve_training(HostTraining(task="synthetic", width=11)), SYNTHETIC)


def test_a_task_refuses_data_of_the_other_kind() -> None:
    """Text data for a CNN task failed to unpack its shape; images for a transformer task
    gave a one-token block silently (and a matched width of 4)."""
    images = make_synthetic(input_shape=(1, 8, 8))
    text = Dataset(
        "text", *(torch.zeros(4, 8, dtype=torch.int64),) * 6, num_classes=5, input_shape=(8,)
    )
    with pytest.raises(ValueError, match=r"task 'digits' \(cnn host\) needs images"):
        get_task("digits").host_config_for(text)
    with pytest.raises(ValueError, match=r"task 'text_lm' \(transformer host\) needs token seq"):
        get_task("text_lm").host_config_for(images)
    with pytest.raises(ValueError, match="needs token sequences"):
        matched_width("text_lm", images, 1000)


def test_a_task_name_that_is_not_a_string_is_an_unknown_task() -> None:
    """``get_task(["digits"])`` was a TypeError (unhashable list)."""
    for name in (["digits"], None, 3):
        with pytest.raises(ValueError, match=r"unknown task .*; known tasks: .*digits"):
            get_task(name)  # type: ignore[arg-type]
