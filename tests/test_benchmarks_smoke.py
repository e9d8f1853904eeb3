"""The benchmarks keep running: a one-round smoke run of each (timings are not asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import overhead


def test_overhead_benchmark_smoke(tmp_path, capsys) -> None:
    out = tmp_path / "overhead.json"
    args = ["--rounds", "1", "--repeats", "1", "--warmup", "0", "--json", str(out)]
    assert overhead.main(args) == 0
    result = json.loads(out.read_text())
    names = [row["name"] for row in result["tables"][0]["rows"]]
    assert names[0] == "bare host" and len(names) == 9
    assert result["workload"]["host_params"] == 6418
    assert "threads = 1" in capsys.readouterr().out


def test_stats_benchmark_smoke(capsys) -> None:
    import stats

    assert stats.main(["--reps", "20", "--rounds", "2", "--tasks", "2", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("(same results)") == 2 and "median ratio rliable / Esper" in out


def test_engine_benchmark_smoke(capsys) -> None:
    import torch

    import engine

    threads = torch.get_num_threads()
    other = "2" if threads == 1 else "1"
    assert engine.main(["--quick", "--launch-task", "synthetic", "--threads", other]) == 0
    assert torch.get_num_threads() == threads  # its own count for its rounds only
    out = capsys.readouterr().out
    for line in ("raw training", "full heuristic step", "esper --help", "launch to first batch"):
        assert line in out


def test_benchmark_bad_options_are_one_line_before_any_timing(tmp_path, capsys) -> None:
    """Each ran its minutes of timing first and then ended in a traceback."""
    import engine
    import stats
    import telemetry

    (tmp_path / "file").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone" / "x.json")  # would write to "gone"
    for main, argv, says in (
        (overhead.main, ["--quick", "--json", str(tmp_path)], "cannot write a file there"),
        (overhead.main, ["--json", str(tmp_path / "file" / "x.json")], "cannot write a file"),
        (overhead.main, ["--json", str(tmp_path / "dangling")], "cannot write a file"),
        (engine.main, ["--launch-task", "nosuchtask"], "'nosuchtask' is not a task; choose"),
        (engine.main, ["--threads", "0"], "--threads must be at least 1, got 0"),
        (stats.main, ["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (stats.main, ["--reps", "1"], "--reps: reps must be"),
        (
            telemetry.main,
            ["--heuristic-run", str(tmp_path), "--ppo-run", str(tmp_path)],
            "no events.jsonl there",
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        captured = capsys.readouterr()
        assert exit_info.value.code == 2 and captured.out == ""
        assert says in captured.err.strip().splitlines()[-1]


def test_telemetry_benchmark_keeps_its_threads_after_recording_runs(
    recorded_runs, monkeypatch
) -> None:
    """The esper commands that record its runs set torch's threads by Esper's policy (1): the
    benchmark then ran at 1 thread while its header said ``--threads``."""
    import torch

    import telemetry

    class Measured(Exception):
        pass

    def record_runs(root: Path, quick: bool) -> tuple[Path, Path]:
        torch.set_num_threads(1)  # as ``esper heuristic`` and ``esper ppo`` do
        return recorded_runs["heuristic"], recorded_runs["ppo"]

    def epoch_overhead(*args: object) -> None:
        raise Measured(torch.get_num_threads())

    monkeypatch.setattr(telemetry, "record_runs", record_runs)
    monkeypatch.setattr(telemetry, "epoch_overhead", epoch_overhead)
    with pytest.raises(Measured) as measured:
        telemetry.main(["--quick", "--threads", "2"])
    assert measured.value.args == (2,)


def test_ppo_benchmark_smoke(capsys) -> None:
    import torch

    import ppo

    threads = torch.get_num_threads()
    assert ppo.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for line in ("1. scaling", "2. policy share", "3. PPO update per round", "wide (512/512)"):
        assert line in out
    assert torch.get_num_threads() == threads


def test_telemetry_benchmark_smoke(recorded_runs, capsys) -> None:
    import torch

    import telemetry

    threads = torch.get_num_threads()
    argv = ["--quick", "--heuristic-run", str(recorded_runs["heuristic"])]
    assert telemetry.main([*argv, "--ppo-run", str(recorded_runs["ppo"])]) == 0
    out = capsys.readouterr().out
    part1 = out[out.index("1. epoch time") : out.index("2. emit cost per event")]
    rows = {line.split("  ")[0]: line.split() for line in part1.splitlines()}
    for setup in telemetry.SETUP_NAMES:  # every setup has a ratio against no sinks
        assert rows[setup][-6].endswith("x") and rows[setup][-3].endswith("x")
    assert rows["no sinks"][-6] == rows["no sinks"][-3] == "1.000x"  # the baseline is its own ratio
    assert "identical trajectories across setups: yes" in part1
    part2 = out[out.index("2. emit cost per event") : out.index("3. run store")]
    emit_rows = [line.split() for line in part2.splitlines() if "heuristic " in line]
    assert len(emit_rows) == len(telemetry.SETUP_NAMES) - 1  # the A/A control is part 1's only
    part3 = out[out.index("3. run store") : out.index("4. tail following")]
    sizes = [line.split()[:2] for line in part3.splitlines() if line[:4].strip().isdigit()]
    assert [int(runs) for runs, _ in sizes] == [2, 4]  # 1 and 2 copies of each recorded run
    for line in ("poll, nothing new", "after one appended line", "us/line"):
        assert line in out
    assert torch.get_num_threads() == threads


def test_envs_benchmark_raw_section_smoke(capsys) -> None:
    import torch

    import envs

    threads = torch.get_num_threads()
    assert envs.main(["--section", "raw", "--rounds", "1", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for line in (
        "1. raw training step",
        "old layout (NCHW), baseline",
        "plain fast way (channels_last)",
        "new layout speed / old layout",
        "new layout time / plain network",
        "dataset converted once",
    ):
        assert line in out
    assert "(6274 params)" in out  # the plain network was checked to be the host's shape
    assert torch.get_num_threads() == threads


QUICK_ENVS = ["--quick", "--rounds", "1", "--warmup", "0"]


def test_envs_benchmark_envs_ppo_and_fashion_sections_smoke(capsys) -> None:
    import torch

    import envs

    threads = torch.get_num_threads()
    sections = ["--section", "envs", "--section", "ppo", "--section", "fashion"]
    # HEAD stands in for the pre-#11 revision: any clone has it, even a shallow one.
    assert envs.main([*sections, *QUICK_ENVS, "--workers", "0", "--before-rev", "HEAD"]) == 0
    out = capsys.readouterr().out
    for line in (
        "2. host epochs/s",
        "impaired host: 390 params",
        "CNNHost(8): 6274 params",
        "old layout (NCHW), sequential",
        "batched, chunk 4, default",  # the measured default groups the small host ...
        "sequential (chunk 1), default",  # ... and trains the wider one one by one
        "3. PPO env-steps/s",
        "   2 before #11 (sequential)",  # the pre-#11 code ran in its own process ...
        "vs before #11",  # ... and is the baseline of the 5x target
        "4. the 'fashion' preset",
        "batched: 40 rounds (160 env steps) ~",
        "before #11 (sequential): 40 rounds (160 env steps) ~",
    ):
        assert line in out
    assert "batched + " not in out  # --workers 0: no workers contestant (and no Ray)
    assert torch.get_num_threads() == threads


def test_envs_benchmark_precision_and_device_sections_smoke(capsys) -> None:
    import torch

    import envs

    sections = ["--section", "precision", "--section", "device", *QUICK_ENVS, "--workers", "0"]
    assert envs.main([*sections, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for line in (
        "5. one environment's training epoch",
        "text_lm host (text_lm, 160768 params)",
        "6. PPO env-steps/s on cpu",
        "   2 batched, cpu, bfloat16",
        "2 envs, batched: ",  # float32 on the CPU is the plain batched contestant
        "x the 2-core CPU's best (target >= 50x)",
    ):
        assert line in out, line
    if not torch.cuda.is_available():  # the default device: skipped in one line without it
        assert envs.main(["--section", "device", *QUICK_ENVS, "--workers", "0"]) == 0
        assert "6. device: skipped, 'cuda' is not available" in capsys.readouterr().out


def test_envs_benchmark_launches_section_smoke(capsys) -> None:
    """The launches section profiles batched rounds on the CPU (and CUDA where available) and
    prints what each environment-batch costs in operations; the CPU launches no kernels."""
    import envs

    assert envs.main(["--section", "launches", *QUICK_ENVS, "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "7. launches: batched PPO rounds" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("cpu ")]
    assert [int(row[1]) for row in rows] == list(envs.LAUNCH_ENV_COUNTS)
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)
    assert all(row[4] == "0" and row[6] == "0.0%" for row in rows)
    assert "cpu: each environment-batch beyond 4 environments adds " in out


def test_the_pre_issue_11_contestant_steps_per_tensor() -> None:
    """The old-layout trainers stand for the code before issue #11, whose AdamW stepped each
    tensor on its own: once the trainer's optimizer left torch.optim, the flag that put them
    there did nothing and they ran the fused kernel too (a review). Oracle: torch's per-tensor
    AdamW on a twin of the model, bit for bit."""
    import copy

    import torch

    import envs
    from esper.data.small import make_synthetic
    from esper.leyline.config import HostTraining
    from esper.tasks import resolve_training
    from esper.tolaria.optim import step_optimizers

    data = make_synthetic(n_train=64, n_val=8, input_shape=(1, 28, 28), num_classes=10)
    training = resolve_training(HostTraining("fashion_mnist_impaired", lr=0.01, seed_lr=0.01))
    [trainer] = envs.host_trainers(envs.HOSTS[0], data, training, 1, old_layout=True)
    model = trainer.model
    twin = copy.deepcopy(model)
    decay = trainer.optimizer.weight_decay
    torch_adamw = torch.optim.AdamW(twin.host_parameters(), 0.01, weight_decay=decay, foreach=False)
    x, y = data.x_train[:16], data.y_train[:16]
    for _ in range(3):
        for m, step in ((model, lambda: step_optimizers([trainer.optimizer])),
                        (twin, torch_adamw.step)):  # fmt: skip
            m.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x), y).backward()
            step()
    for ours, theirs in zip(model.host_parameters(), twin.host_parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_operations_counts_what_reaches_a_kernel() -> None:
    """Views launch nothing; a multi-tensor operation is one; autograd's backward on the CPU
    runs on the calling thread and is counted."""
    import torch

    import envs

    x = torch.ones(4, 3)
    with envs.Operations() as counted:
        x.view(12), x[1:], x.t(), x.detach()
    assert counted.count == 0
    with envs.Operations() as counted:
        torch._foreach_add_([x, torch.zeros(2)], 1.0)
    assert counted.count == 2  # the zeros, then one multi-tensor add
    w = torch.ones(3, requires_grad=True)
    with envs.Operations() as forward_only:
        (w * 2).sum()
    with envs.Operations() as both:
        (w * 2).sum().backward()
    assert both.count > forward_only.count


@pytest.mark.parametrize(
    ("device", "says"),
    [
        ("gpu", "--device 'gpu' is not a torch device"),
        # torch knows these, and the section crashed on them with a traceback
        ("meta", "--device 'meta': the device section runs on cpu, cuda or cuda:N"),
        ("mps", "--device 'mps': the device section runs on cpu, cuda or cuda:N"),
    ],
)
def test_envs_benchmark_unknown_device_is_one_line(capsys, device: str, says: str) -> None:
    import envs

    with pytest.raises(SystemExit) as exit_info:
        envs.main(["--section", "device", *QUICK_ENVS, "--device", device])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert says in last


def test_envs_benchmark_checks_before_rev_only_for_the_sections_that_run_it() -> None:
    """A shallow clone lacks the before-#11 commit: the raw section, which never runs it, was
    refused for it (and ``make bench`` with it)."""
    import envs

    args = envs.parse_args(["--section", "raw", "--before-rev", "nosuchrev"])
    assert args.before_rev is None
    with pytest.raises(SystemExit):
        envs.parse_args(["--section", "raw", "--section", "fashion", "--before-rev", "nosuchrev"])


def test_envs_benchmark_unknown_before_rev_is_one_line(capsys) -> None:
    import envs

    with pytest.raises(SystemExit) as exit_info:
        envs.main(["--section", "ppo", *QUICK_ENVS, "--workers", "0", "--before-rev", "nosuchrev"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "3. PPO" not in captured.out  # refused before any section ran
    last = captured.err.strip().splitlines()[-1]
    assert "--before-rev 'nosuchrev' is not a commit" in last and "or none" in last


@pytest.mark.slow
def test_envs_benchmark_workers_contestant_smoke(capsys) -> None:
    import envs

    assert envs.main(["--section", "ppo", *QUICK_ENVS, "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "batched + 2 workers" in out
