"""The ``esper`` command: smoke runs, run-directory receipts, bad input, Ctrl-C and resume."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from esper.cli.main import EXIT_BAD_INPUT, MAX_ERROR_LINE, RUN_COMMANDS, main
from esper.leyline.config import MAX_SEED, HostTraining, UserError, read_config_file
from esper.leyline.events import EVENT_TYPES
from esper.nissa import checkpoints, record
from esper.nissa.stopping import Stop
from esper.study.growth import EpochRow
from esper.tolaria import Trainer
from esper.tolaria.optim import SlotOptimizer

ESPER = [sys.executable, "-m", "esper"]
TINY = ["--batches-per-epoch", "2", "--val-samples", "128"]


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _summary(run: Path) -> record.RunSummary:
    summary = record.read_summary(run)
    assert summary is not None and summary.growth is not None
    return summary


def test_help_lists_commands_and_tasks(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("heuristic", "static", "demo", "fashion_mnist_impaired", "synthetic"):
        assert word in out


def test_every_run_mode_is_a_command_and_every_run_command_a_mode() -> None:
    """The run commands' names are the modes a run directory records (``meta.json``)."""
    assert set(RUN_COMMANDS) == set(record.MODES)


def test_run_command_help_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["heuristic", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--task", "--epochs", "--slots", "--seed", "--telemetry.level"):
        assert flag in out


def test_heuristic_run_directory(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = ["heuristic", "--task", "synthetic", "--epochs", "3", *TINY, "--out", str(run)]
    assert main(args) == 0
    # A run too short for the rules to ever germinate says so (it is a static run).
    assert "esper heuristic: note: a run of 3 epochs never germinates a seed: " in (
        capsys.readouterr().err
    )
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["task"] == "synthetic" and config["training"]["epochs"] == 3
    assert config["seed"] == 0 and config["policy"] is None
    assert set(config) == {
        "training", "seed", "policy", "periodic", "heuristic", "knowledge", "telemetry"
    }  # fmt: skip
    meta = record.read_meta(run)
    assert meta is not None and meta.mode == "heuristic"
    assert re.fullmatch(r"run-[0-9a-f]{8}", meta.run_id)  # the directory's name, made unique
    meta_json = json.loads((run / "meta.json").read_text())
    assert meta_json["seeds"]["run"] == 0
    assert meta_json["versions"]["torch"] and meta_json["versions"]["python"]
    assert meta_json["versions"]["ray"]  # --workers runs and studies depend on it
    assert "git_revision" in meta_json  # a revision string, or null outside a git checkout
    events = _events(run)
    assert all(e["event"] in EVENT_TYPES for e in events)
    assert events[0]["event"] == "RunStarted" and events[-1]["event"] == "RunFinished"
    assert [e["epoch"] for e in events if e["event"] == "EpochCompleted"] == [1, 2, 3]
    rows = _rows(run)
    assert list(rows[0]) == [f for f in EpochRow.__dataclass_fields__]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    summary = _summary(run)
    g = summary.growth
    assert summary.status == "completed" and summary.mode == "heuristic"
    assert summary.task == "synthetic" and summary.run_id == meta.run_id
    assert {e["run_id"] for e in events} == {meta.run_id}
    assert g.epochs_completed == 3 == g.epochs_planned
    assert g.final is not None and g.final.val_accuracy == float(rows[-1]["val_accuracy"])
    assert (run / "model.pt").is_file()
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    assert latest == checkpoints.step_directory(3)
    assert (run / "checkpoints" / latest / "state.pt").is_file()
    assert (run / "checkpoints" / latest / "manifest.json").is_file()


def test_config_json_is_a_valid_config_file(tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["--task", "synthetic", "--epochs", "2", *TINY, "--seed", "3"]
    assert main(["heuristic", *args, "--out", str(first)]) == 0
    assert main(["heuristic", "--config", str(first / "config.json"), "--out", str(second)]) == 0
    assert json.loads((first / "config.json").read_text()) == json.loads(
        (second / "config.json").read_text()
    )
    assert _rows(first) == _rows(second)


@pytest.mark.parametrize(
    ("mode", "sections"),
    [
        ("static", {"seed", "training", "telemetry"}),
        ("random", {"seed", "training", "telemetry"}),  # knowledge: unset, a comment
        ("periodic", {"seed", "training", "periodic", "telemetry"}),
        ("heuristic", {"seed", "training", "heuristic", "telemetry"}),
    ],
)
def test_the_printed_configuration_is_what_the_mode_reads(tmp_path, capsys, mode, sections):
    """Every growth run printed ``[periodic]`` and ``[heuristic]`` with their defaults, as if an
    eval or static run followed a schedule or rules (it refuses either given). The printed
    text holds what the mode reads, and given back as ``--config`` runs the same
    configuration."""
    args = ["--task", "synthetic", "--epochs", "1", *TINY, "--seed", "3"]
    assert main([mode, *args, "--out", str(tmp_path / "first")]) == 0
    err = capsys.readouterr().err
    lines = err.split("effective configuration\n", 1)[1].splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith(("esper ", "[synthetic")))
    printed = "\n".join(lines[:end])  # before a note or the first epoch
    assert set(tomllib.loads(printed)) == sections
    assert ("# knowledge: not set" in printed) is (mode != "static")
    (tmp_path / "printed.toml").write_text(printed)
    again = [mode, "--config", str(tmp_path / "printed.toml"), "--out", str(tmp_path / "again")]
    assert main(again) == 0
    assert (tmp_path / "first" / "config.json").read_text() == (
        tmp_path / "again" / "config.json"
    ).read_text()


def test_config_file_toml_and_flags_override_it(tmp_path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        'seed = 4\n[training]\ntask = "synthetic"\nepochs = 5\n'
        "batches_per_epoch = 2\nval_samples = 128\n"
    )
    assert read_config_file(conf)["seed"] == 4
    run = tmp_path / "run"
    assert main(["static", "--config", str(conf), "--epochs", "2", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 4 and config["training"]["epochs"] == 2
    assert _summary(run).growth.epochs_completed == 2


@pytest.mark.parametrize(
    "text",
    [
        '{"seed": 1, "seed": 2}',
        '{"training": {"task": "synthetic", "epochs": 2, "epochs": 3}}',
    ],
)
def test_a_key_given_twice_in_a_json_config_is_one_line_exit_2(tmp_path, capsys, text) -> None:
    conf = tmp_path / "c.json"
    conf.write_text(text)
    run = tmp_path / "run"
    assert main(["static", "--config", str(conf), "--out", str(run)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is given twice" in err and "Traceback" not in err
    assert not run.exists()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("directory", "a directory or a device, not a file"),
        ("device", "a directory or a device, not a file"),  # /dev/zero was read until OOM
        ("long name", "File name too long"),
    ],
)
def test_a_config_that_cannot_be_a_file_is_one_line_exit_2(tmp_path, capsys, kind, message):
    conf = {"directory": tmp_path / "c.json", "device": Path("/dev/zero")}.get(kind)
    if kind == "directory":
        conf.mkdir()
    conf = tmp_path / ("a" * 5000 + ".json") if conf is None else conf
    run = tmp_path / "run"
    assert main(["static", "--config", str(conf), "--out", str(run)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not run.exists()
    if kind == "long name":  # the 5,000-character name is cut, the reason kept
        assert "cannot read config file '" in err and "characters) [Errno 36]" in err
        assert len(err) <= len("esper: error: \n") + MAX_ERROR_LINE
    else:  # the file named once ("--config 'x': cannot read config file 'x': ...")
        assert err.startswith(f"esper: error: cannot read config file {str(conf)!r}")
        assert err.count(str(conf)) == 1


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_config_with_an_integer_too_long_to_read_is_one_line(tmp_path, capsys, suffix) -> None:
    """Python refuses integers of over 4,300 digits and advises sys.set_int_max_str_digits()."""
    conf, run = tmp_path / f"c{suffix}", tmp_path / "run"
    digits = "9" * 5000
    conf.write_text(f"seed = {digits}\n" if suffix == ".toml" else f'{{"seed": {digits}}}')
    assert main(["static", "--config", str(conf), "--out", str(run)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a 5000-digit integer; at most 4300 digits are read" in err
    assert "sys.set_int_max_str_digits" not in err and not run.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # the value was shown as Python's repr: "datetime.datetime(1979, 5, 27, 7, 32, t..."
        ("epochs = 1979-05-27T07:32:00Z", "got 1979-05-27T07:32:00+00:00 (a TOML date or time)"),
        ("epochs = 07:32:00", "got 07:32:00 (a TOML date or time)"),
        # an empty data_dir was taken for the current directory ('.')
        ('data_dir = ""', "data_dir must be a path or null, got ''"),
    ],
)
def test_a_config_value_is_shown_as_written(tmp_path, capsys, text, message) -> None:
    conf, run = tmp_path / "c.toml", tmp_path / "run"
    conf.write_text(f'[training]\ntask = "fashion_mnist"\n{text}\n')
    assert main(["static", "--config", str(conf), "--out", str(run)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not run.exists()


def test_the_largest_seed_runs_and_the_next_would_repeat_seed_0(tmp_path) -> None:
    """Seeds up to int64 were taken, but torch's generator keeps a seed's low 32 bits: seed
    2**32 drew what seed 0 draws (a study's "other" seed was the same run again)."""
    draws = [
        torch.randint(0, 2**31, (8,), generator=torch.Generator().manual_seed(seed)).tolist()
        for seed in (0, MAX_SEED + 1, MAX_SEED)
    ]
    assert draws[0] == draws[1] != draws[2]
    run = tmp_path / "run"  # the episode's own seed (seed x stride + episode) is reduced too
    args = ["static", "--task", "synthetic", "--epochs", "1", *TINY, "--seed", str(MAX_SEED)]
    assert main([*args, "--out", str(run)]) == 0
    assert _summary(run).seed == MAX_SEED


def test_a_hexadecimal_integer_too_long_to_write_out_is_one_line(tmp_path, capsys) -> None:
    """TOML reads 0x... at any length, and the error then could not show it (Python's advice)."""
    conf, run = tmp_path / "c.toml", tmp_path / "run"
    conf.write_text("seed = 0x" + "f" * 4000 + "\n")
    assert main(["static", "--config", str(conf), "--out", str(run)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sys.set_int_max_str_digits" not in err
    assert "seed must be an integer in [0, 4294967295], got an integer of over 4300" in err


@pytest.mark.parametrize(
    "command",
    [["runs", "show", "{long}"], ["runs", "list", "{long}"], ["report", "{long}"],
     ["tui", "{long}"], ["heuristic", "--resume", "{long}"], ["ppo", "--resume", "{long}"],
     ["static", "--task", "synthetic", "--out", "{long}/run"], ["study", "{long}.toml"],
     ["eval", "--policy", "{long}", "--task", "synthetic"], ["demo", "--out", "{long}/demo"]],
)  # fmt: skip
def test_a_path_with_a_name_too_long_is_one_line(tmp_path, capsys, command) -> None:
    """A path component over the file system's 255 bytes raised OSError [Errno 36] from the
    first stat, a traceback, in most commands."""
    long = str(tmp_path / ("x" * 300))
    assert main([part.replace("{long}", long) for part in command]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("esper: error: File name too long: '"), err
    assert "(3" in err and "characters)" in err  # the name, cut
    assert list(tmp_path.iterdir()) == []


def test_a_config_from_a_pipe_is_read(tmp_path) -> None:
    """Process substitution (``--config <(...)``) hands over a FIFO: read like a file."""
    conf, run = tmp_path / "c.json", tmp_path / "run"
    os.mkfifo(conf)
    writer = subprocess.Popen(["sh", "-c", f"echo '{{\"seed\": 3}}' > {conf}"])
    args = ["static", "--config", str(conf), "--task", "synthetic", "--epochs", "1", *TINY]
    assert main([*args, "--out", str(run)]) == 0
    writer.wait(timeout=30)
    assert json.loads((run / "config.json").read_text())["seed"] == 3


def test_static_run_never_grows(tmp_path) -> None:
    run = tmp_path / "static"
    assert main(["static", "--task", "synthetic", "--epochs", "8", *TINY, "--out", str(run)]) == 0
    g = _summary(run).growth
    assert g.seeds == () and g.param_count == g.host_param_count
    assert not any(e["event"] == "SeedTransition" for e in _events(run))


@pytest.mark.parametrize(("period", "germinates"), [(3, True), (4, False)])
def test_a_periodic_run_shorter_than_its_period_says_it_never_grows(
    tmp_path, capsys, period: int, germinates: bool
) -> None:
    """Oracle: the run's own seed transitions. A 4-epoch run decides after epochs 1-3, so a
    period of 4 never germinates; it ran as a static host without a word."""
    run = tmp_path / "periodic"
    args = ["periodic", "--task", "synthetic", "--epochs", "4", *TINY, "--out", str(run)]
    assert main([*args, "--periodic.period", str(period)]) == 0
    grew = any(e["event"] == "SeedTransition" for e in _events(run))
    note = "esper periodic: note: a run of 4 epochs never germinates a seed"
    assert grew == germinates and (note in capsys.readouterr().err) == (not germinates)


def test_training_time_leaves_out_building_the_host(tmp_path, monkeypatch) -> None:
    """A process's first torch optimizer imported ``torch._dynamo`` (1-3 s): it was counted as
    the first run's training time (a study's static arm, scheduled first, read 2.9 s against
    0.5 s for the others; a walk-through). A slow optimizer constructor stands in for such
    costs of building."""
    build = SlotOptimizer.__init__

    def slow(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        time.sleep(2.0)
        build(self, *args, **kwargs)

    monkeypatch.setattr(SlotOptimizer, "__init__", slow)
    run = tmp_path / "run"
    assert main(["static", "--task", "synthetic", *TINY, "--epochs", "2", "--out", str(run)]) == 0
    summary = record.read_summary(run)
    assert summary is not None and summary.wall_seconds < 2.0


@pytest.mark.parametrize(("task", "epochs"), [("synthetic", 24), ("text_lm_impaired", 16)])
def test_a_growth_run_does_not_import_torchs_compiler(tmp_path, task, epochs) -> None:
    """``torch._dynamo`` took 1.1 s of the 3.3 s from launch to the first batch here, imported
    by the first use of a ``torch.optim`` optimizer, of torch's FLOP counter and of a random
    initialisation on the meta device (a transformer host's size). A growth run, seeds trained,
    fossilized and pruned included, uses none of them and never loads it."""
    run = tmp_path / "run"
    argv = ["heuristic", "--task", task, "--epochs", str(epochs), *TINY, "--out", str(run)]
    code = (
        "import sys; from esper.cli.main import main; "
        f"status = main({argv!r}); print(status, 'torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.splitlines()[-1] == "0 False", done.stderr[-2000:]
    trained = [e for e in _events(run) if e["event"] == "SeedTransition"]
    assert any(e["to_stage"] == "TRAINING" for e in trained)


def test_runs_started_in_the_same_second_without_out_get_their_own_names(
    tmp_path, monkeypatch, capsys
) -> None:
    """The default name is the task, mode and second: a shell loop's runs started together
    collided, the second refused with advice to --resume the first's (a walk-through). The
    next free ``-2``, ``-3`` is taken, also when another run takes the chosen name before this
    one's directory is renamed into place."""
    import esper.study.run as study_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(record, "stamp", lambda: "20261207-080631")
    args = ["static", "--task", "synthetic", "--epochs", "1", *TINY]
    assert main(args) == 0 and main(args) == 0
    create = study_run._create

    def raced(out: Path, *rest: Any) -> None:  # another run appears at the chosen name first
        monkeypatch.setattr(study_run, "_create", create)
        (out / "other").mkdir(parents=True)
        create(out, *rest)

    monkeypatch.setattr(study_run, "_create", raced)
    assert main(args) == 0
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    stem = "synthetic-static-20261207-080631"
    assert names == [stem, f"{stem}-2", f"{stem}-3", f"{stem}-4"]
    assert [(tmp_path / "runs" / n / "summary.json").is_file() for n in names] == [
        True, True, False, True
    ]  # fmt: skip
    assert capsys.readouterr().err.count("esper: error") == 0


def test_heuristic_grows_in_more_than_one_slot(tmp_path, capsys) -> None:
    run = tmp_path / "grow"
    # Long enough for several lifecycles: the heuristic stops germinating 10 epochs before the
    # end, so that every seed it grows can finish.
    slots = ["--slots", "early", "mid", "late"]
    code = main(["heuristic", "--task", "synthetic", "--epochs", "40", *slots, "--out", str(run)])
    assert code == 0
    assert "never germinates" not in capsys.readouterr().err
    germinated = {
        e["slot"]
        for e in _events(run)
        if e["event"] == "SeedTransition" and e["to_stage"] == "GERMINATED"
    }
    assert len(germinated) >= 2, germinated


LONG_URL = "postgresq://u@127.0.0.1/" + "d" * 70
"""A mistyped knowledge store URL longer than tyro's 80-column error box."""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["heuristic", "--task", "mnist"], "unknown task 'mnist'"),
        (["heuristic", "--task", "synthetic", "--epochs", "0"], "epochs must be an integer"),
        (["heuristic", "--task", "synthetic", "--lr", "-1"], "lr must be a number in"),
        # tyro's "Error parsing GrowthRun: " named the command's class; a section reads as a
        # --config file's refusal does ("training: lr must be ...")
        (
            ["heuristic", "--task", "synthetic", "--seed", "-1"],
            "esper: error: seed must be an integer in [0, 4294967295], got -1",
        ),
        (
            ["heuristic", "--task", "synthetic", "--lr", "0"],
            "esper: error: training: lr must be a number in (0.0, 10.0], got 0.0",
        ),
        (  # a message that names its section is not prefixed with it again ("ppo: ppo.n_envs")
            ["ppo", "--ppo.n-envs", "0"],
            "esper: error: ppo.n_envs must be an integer in [1, 256], got 0",
        ),
        (
            ["heuristic", "--task", "synthetic", "--slots", "middle"],
            "unknown slot name 'middle'; accepted",
        ),
        (["static", "--task", ""], "esper static needs a task: --task NAME (or training.task"),
        (  # tyro's "Missing from esper heuristic: --task STR ... (required)"
            ["heuristic"],
            "esper: error: --task is required: task preset (host + data + defaults); esper",
        ),
        # Python's refusals were passed on: "invalid literal for int() with base 10: 'abc'"
        (["ppo", "--ppo.rounds", "abc"], "esper: error: --ppo.rounds: expected INT, got 'abc'"),
        (["ppo", "--ppo.lr", "abc"], "esper: error: --ppo.lr: expected FLOAT, got 'abc'"),
        # tyro's metavar "{None}|INT" in words; the command is not named twice ("esper: error:
        # esper heuristic: ...")
        (
            ["heuristic", "--task", "synthetic", "--epochs", "x"],
            "esper: error: --epochs: expected INT or None, got 'x'",
        ),
        (  # tyro's "invalid choice 'fp16' for argument '--precision'. Expected one of (...)."
            ["heuristic", "--task", "synthetic", "--precision", "fp16"],
            "esper: error: --precision: expected one of float32, bfloat16, got 'fp16'",
        ),
        # A switch's value read as an unknown flag: "unknown flag yes"
        (
            ["heuristic", "--task", "synthetic", "--shapley", "yes"],
            "--shapley takes no value, got 'yes' (a switch: --shapley or --no-shapley)",
        ),
        (  # the switch before the value's last place, not --epochs before its first
            ["heuristic", "--task", "synthetic", "--epochs", "2", "--shapley", "2"],
            "--shapley takes no value, got '2' (a switch: --shapley or --no-shapley)",
        ),
        (["heuristic", "--task", "synthetic", "--epochs", "2", "2"], "unknown flag 2;"),
        (  # --switch=value blamed the flag before the value's first place (a walk-through)
            ["ppo", "--preset", "tiny", "--ppo.n-envs", "2", "--amp=2"],
            "--amp takes no value, got '2' (a switch: --amp or --no-amp)",
        ),
        (
            ["heuristic", "--task", "synthetic", "--seed", "0", "--telemetry.tensorboard=0"],
            "--telemetry.tensorboard takes no value, got '0' (a switch: --telemetry.tensorboard "
            "or --telemetry.no-tensorboard)",
        ),
        (  # of two flags given the value, the switch (a flag taking a value took its own)
            ["heuristic", "--task", "synthetic", "--shapley", "2", "--epochs=2"],
            "--shapley takes no value, got '2' (a switch: --shapley or --no-shapley)",
        ),
        (  # beside a missing --task, tyro lists them one per line: they were glued together
            ["heuristic", "--tas", "synthetic", "--foo", "3"],
            "unknown flags --tas, --foo (similar: --task); --task is required; --help lists",
        ),
        (  # a nested switch's other form is tyro's
            ["ppo", "--ppo.no-normalize-advantages", "yes"],
            "--ppo.no-normalize-advantages takes no value, got 'yes' (a switch: "
            "--ppo.normalize-advantages or --ppo.no-normalize-advantages)",
        ),
        (["heuristic", "--task", "synthetic", "--slots", "mid_2"], "unknown or no slots ['mid_2']"),
        (["heuristic", "--task", "synthetic", "--bogus"], "--bogus"),
        # tyro listed a flag's value as an option: "Unrecognized options: --sed, 3"
        (
            ["heuristic", "--task", "synthetic", "--sed", "3", "--bogus"],
            "unknown flags --sed, --bogus (similar: --seed); --help lists every flag",
        ),
        # a negative value is no flag; tyro's "Perhaps you meant" is a suggestion too
        (["ppo", "--ppo.lrr", "-0.5"], "unknown flag --ppo.lrr (similar: --ppo.lr); --help"),
        # the list wraps at 80 columns, breaking a long flag: all of it, whole
        (
            ["heuristic", "--task", "synthetic", *(f"--a{i}" for i in range(12)), "--" + "b" * 90],
            f"unknown flags --a0, --a1, --a2, --a3, --a4, --a5, --a6, --a7, --a8, --a9, --a10, "
            f"--a11, --{'b' * 90}; --help",
        ),
        (["static", "--task", "synthetic", "--slots", "early"], "a static run grows nothing"),
        # a knob the mode does not read is refused even at its default value
        (
            ["static", "--task", "synthetic", "--plateau-patience=3"],
            "static runs take no heuristic settings",
        ),
        (
            ["random", "--task", "synthetic", "--germinate_cooldown", "3"],
            "random runs take no heuristic settings",
        ),
        (
            ["heuristic", "--task", "synthetic", "--periodic.period", "3"],
            "heuristic runs take no periodic settings",
        ),
        (
            ["static", "--task", "synthetic", "--no-shapley"],
            "a static run grows nothing; drop --[no-]shapley (training.shapley in a config file)",
        ),
        (["eval", "--task", "synthetic"], "eval needs --policy"),
        (
            ["heuristic", "--task", "synthetic", "--policy", "x"],
            "take no policy (--policy, or policy in a",
        ),
        (
            ["random", "--task", "synthetic", "--policy", "None"],
            "take no policy (--policy, or policy in a",
        ),
        # Python's refusal ends "use sys.set_int_max_str_digits()": advice for programmers
        (
            ["heuristic", "--task", "synthetic", "--seed", "9" * 5000],
            "--seed: a 5000-digit integer; at most 4300 digits are read",
        ),
        (  # tyro's box wraps at 80 columns: the URL came back as 'postgresq://user@1 27.0.0.1...'
            ["heuristic", "--task", "synthetic", "--knowledge", LONG_URL],
            f"unsupported knowledge store URL '{LONG_URL}' (scheme",
        ),
        (  # a value that only quotes Python's refusal is not taken for it
            [
                "heuristic",
                "--task",
                "synthetic",
                "--slots",
                "Exceeds the limit (4300 digits) for integer string conversion",
            ],
            "unknown slot name 'Exceeds the limit (4300 digits) for integer string conversion'",
        ),
        # a password in a URL went into config.json, the printed configuration, MLflow's
        # parameters and TensorBoard (a walk-through): refused, saying where it goes instead
        (
            ["heuristic", "--task", "synthetic", "--telemetry.mlflow", "http://a:s3cret@h:1"],
            "telemetry: mlflow 'http://a:***@h:1' carries a password, which the run would save "
            "in its config.json and print; give it outside the URI: MLFLOW_TRACKING_USERNAME",
        ),
        (
            ["ppo", "--telemetry.mlflow", "postgresql://u@h/d?password=s3cret"],
            "mlflow 'postgresql://u@h/d?password=***' carries a password",
        ),
        (
            ["random", "--task", "synthetic", "--knowledge", "postgresql://u:s3cret@h/d"],
            "knowledge 'postgresql://u:***@h/d' carries a password, which the run would save in "
            "its config.json and print; set the URL in $ESPER_KNOWLEDGE instead",
        ),
        (  # a value of thousands of characters is cut; what is accepted is still said
            ["heuristic", "--task", "x" * 5000],
            "xxxxx... (5003 characters) known tasks: fashion_mnist",
        ),
        (  # a number it can read but not accept, cut to 40 characters: the line was 4,163 long
            ["heuristic", "--task", "synthetic", "--seed", "9" * 4000],
            "seed must be an integer in [0, 4294967295], got 99999",
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    code = main([*args, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("esper: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and len(err) <= len("esper: error: \n") + MAX_ERROR_LINE
    assert not out.exists(), "bad input must leave nothing behind"


def _stderr_of(args: list[str], encoding: str, cwd: Path) -> str:
    """``esper ARGS``'s stderr, run with Python's standard streams in ``encoding``."""
    done = subprocess.run(
        [sys.executable, "-m", "esper", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONIOENCODING": encoding},
        timeout=120,
    )
    assert done.returncode == EXIT_BAD_INPUT
    return done.stderr


def test_a_flag_error_reads_the_same_when_stderr_cannot_encode_box_drawing(tmp_path) -> None:
    """tyro draws its error box in ASCII then, with rules of dashes: the line carried two
    78-dash rules."""
    args = ["static", "--seed", "x", "--task", "synthetic"]
    lines = {encoding: _stderr_of(args, encoding, tmp_path) for encoding in ("utf-8", "ascii")}
    assert lines["ascii"] == lines["utf-8"] == "esper: error: --seed: expected INT, got 'x'\n"
    # In a box drawn in UTF-8 a value of dashes is a value, not a rule: the line ended at it.
    # (In ASCII a wrapped line of dashes is a rule's twin; such a value ends the paragraph.)
    dashes = ["heuristic", "--task", "synthetic", "--precision=" + "-" * 200]
    line = _stderr_of(dashes, "utf-8", tmp_path)
    cut = f"'{'-' * 39}... (200 characters)"
    expected = f"--precision: expected one of float32, bfloat16, got {cut}"
    assert line == f"esper: error: {expected}\n"  # whole, then cut (a space was put in it)


def test_missing_dataset_is_reported(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ESPER_DATA_DIR", raising=False)
    out = tmp_path / "run"
    code = main(["static", "--task", "cifar10", "--no-download", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cifar" in err.lower() and "Traceback" not in err
    assert not out.exists()


def test_existing_run_directory_is_not_overwritten(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    assert main(["static", "--task", "synthetic", *TINY, "--out", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in run.iterdir()) == ["precious.txt"]


def test_unreadable_checkpoint_on_resume(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = ["static", "--task", "synthetic", "--epochs", "2", *TINY, "--out", str(run)]
    assert main(args) == 0
    (run / "summary.json").unlink()  # as if the run had crashed
    latest = run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()
    (latest / "state.pt").write_bytes(b"garbage")
    assert main(["static", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "state.pt" in err and "Traceback" not in err
    assert main(["static", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nowhere': it does not exist" in capsys.readouterr().err


def _checkpointed_epoch(run: Path) -> int:
    """The epoch of the run's committed checkpoint (0 before the first). An epoch already
    logged in ``events.jsonl`` may not be committed yet: a signal then resumes before it."""
    try:
        name = (run / "checkpoints" / checkpoints.LATEST_FILE).read_text().strip()
    except FileNotFoundError:
        return 0
    return int(name.removeprefix("step-"))


def _wait_for_epoch(run: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "run ended before it could be interrupted"
        if _checkpointed_epoch(run) >= epoch:
            return
        time.sleep(0.05)
    raise AssertionError("run did not reach the epoch in time")


def test_ctrl_c_then_resume_matches_uninterrupted_run(tmp_path) -> None:
    # 40 epochs: seeds germinate, blend and get pruned or fossilized; interrupt mid-growth.
    args = ["heuristic", "--task", "synthetic", "--epochs", "40", "--seed", "5", "--threads", "1"]
    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight)]) == 0

    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*ESPER, *args, "--out", str(interrupted)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_epoch(interrupted, 15, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    summary = _summary(interrupted)
    assert summary.status == "interrupted" and summary.growth.epochs_completed < 40
    rows = _rows(interrupted)
    # the record matches the checkpoint
    assert int(rows[-1]["epoch"]) == summary.growth.epochs_completed
    assert (
        interrupted / "checkpoints" / "LATEST"
    ).read_text().strip() == checkpoints.step_directory(summary.growth.epochs_completed)

    assert main(["heuristic", "--resume", str(interrupted)]) == 0
    a, b = _summary(straight), _summary(interrupted)
    assert b.status == a.status != "interrupted"
    assert a.growth is not None and b.growth is not None
    for key in ("final", "best_val_accuracy", "param_count", "fossilized", "pruned", "seeds"):
        assert getattr(a.growth, key) == getattr(b.growth, key), key
    assert _rows(straight) == _rows(interrupted)
    starts = [e for e in _events(interrupted) if e["event"] == "RunStarted"]
    assert len(starts) == 2
    resumed = [v for k, v in starts[1].items() if k.startswith("resumed")]
    assert [v for k, v in starts[0].items() if k.startswith("resumed")] == [None]
    assert resumed and resumed[0] >= 15
    grown = [e for e in _events(straight) if e["event"] == "SeedTransition"]
    assert grown, "the resumed stretch must cover live seeds to test anything"


def test_demo_falls_back_to_digits_and_prints_a_table(tmp_path, capsys, monkeypatch) -> None:
    import esper.cli.demo as demo
    from esper.data import DatasetNotFoundError

    def unavailable(name, *args, **kwargs):
        raise DatasetNotFoundError(f"{name}: looked in /nowhere")

    monkeypatch.setattr(demo, "load_dataset", unavailable)
    assert main(["demo", "--epochs", "2", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "Fashion-MNIST is not available" in captured.err
    assert "digits_impaired" in captured.err
    assert "esper demo: note: a run of 2 epochs never germinates a seed" in captured.err
    table = captured.out
    assert "run" in table and "final model val acc" in table and "params" in table
    assert "static" in table and "heuristic" in table
    for run in tmp_path.iterdir():  # the test column is each run's test accuracy
        test = _summary(run).growth.test
        assert test is not None and f"{test.final_accuracy:.2f}%" in table
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert len(runs) == 2 and all("digits_impaired" in r for r in runs)
    for run in tmp_path.iterdir():
        assert _summary(run).status == "completed"


def test_two_demos_in_one_second_get_their_own_runs(tmp_path, capsys, monkeypatch) -> None:
    """The second was refused: its runs' names were the first's, and the advice was to
    continue with a --resume the demo does not take (a walk-through)."""
    import esper.cli.demo as demo
    from esper.data import DatasetNotFoundError
    from esper.nissa import record

    def unavailable(name, *args, **kwargs):
        raise DatasetNotFoundError(f"{name}: looked in /nowhere")

    monkeypatch.setattr(demo, "load_dataset", unavailable)
    monkeypatch.setattr(record, "stamp", lambda: "20261207-060000")
    for _ in range(2):
        assert main(["demo", "--epochs", "1", "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        f"demo-20261207-060000{n}-digits_impaired-{mode}"
        for n in ("-2", "")
        for mode in ("heuristic", "static")
    ]


def test_demo_with_an_explicit_data_dir_does_not_fall_back(tmp_path, capsys, monkeypatch) -> None:
    """A --data-dir without Fashion-MNIST ran the digits demo instead (adversarial sweep)."""
    import esper.cli.demo as demo
    from esper.data import DatasetNotFoundError

    def unavailable(name, *args, **kwargs):
        raise DatasetNotFoundError(f"{name}: looked in {tmp_path / 'data'}")

    monkeypatch.setattr(demo, "load_dataset", unavailable)
    args = ["demo", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    data = tmp_path / "data"
    err = capsys.readouterr().err
    assert err == f"esper: error: --data-dir {str(data)!r}: fashion_mnist: looked in {data}\n"
    assert not (tmp_path / "out").exists()


def test_demo_with_a_file_where_the_download_folder_goes_is_one_line(tmp_path, capsys) -> None:
    """``DIR/fashion-mnist`` a file: the download's mkdir raised FileExistsError, which the demo
    did not catch (a 36-line traceback, exit 1; a walk-through)."""
    (tmp_path / "fashion-mnist").write_text("x")
    args = ["demo", "--epochs", "1", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    folder = str(tmp_path / "fashion-mnist")
    assert f"cannot download into {folder!r}: {folder!r} is a file, not a folder" in err
    assert "move what is in the download's way" in err and "retry" not in err  # not the network
    assert not (tmp_path / "o").exists()
    # a link to nothing in its place was blamed on the folder above it (a review)
    (tmp_path / "fashion-mnist").unlink()
    (tmp_path / "fashion-mnist").symlink_to(tmp_path / "gone")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{folder!r}: {folder!r} is a link to nothing, not a folder" in err


def test_demo_with_a_dataset_it_cannot_read_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    """Any other OSError of the loader (the study's load_data takes them all) was a traceback."""
    import esper.cli.demo as demo

    def unreadable(name, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.gz"))

    monkeypatch.setattr(demo, "load_dataset", unreadable)
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    path = str(tmp_path / "x.gz")
    assert err == f"esper: error: Fashion-MNIST: [Errno 13] Permission denied: {path!r}\n"

    def silent(name, *args, **kwargs):
        raise OSError  # no message: its repr is the line (an IndexError was; a review)

    monkeypatch.setattr(demo, "load_dataset", silent)
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "esper: error: Fashion-MNIST: OSError()\n"
    assert not (tmp_path / "out").exists()


def test_demo_with_a_data_dir_variable_lacking_the_data_does_not_fall_back(
    tmp_path, capsys, monkeypatch
) -> None:
    """A $ESPER_DATA_DIR that does not exist (or lacks Fashion-MNIST) ran the digits demo
    instead, where every other command refuses it (a README check)."""
    missing = tmp_path / "nonexist"
    monkeypatch.setenv("ESPER_DATA_DIR", str(missing))
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"esper: error: fashion-mnist: $ESPER_DATA_DIR {str(missing)!r} does")
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_demo_falls_back_when_the_download_cannot_be_written(tmp_path, capsys, monkeypatch) -> None:
    """A full or read-only cache stopped the demo ("Fashion-MNIST: [Errno 28] No space left
    on device"), where README says it cannot download and so runs on digits (a walk-through)."""
    import esper.data.download as download
    import esper.data.fashion_mnist as fashion

    def full(*args: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(download, "_stream", full)
    monkeypatch.setattr(fashion, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ESPER_DATA_DIR", raising=False)
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    cache = str(tmp_path / "cache" / "esper" / "fashion-mnist")
    assert f"the download could not be written into {cache!r}: No space left on device" in err
    assert "running the demo on the digits_impaired task instead" in err
    assert "a run of 1 epoch never germinates" in err
    assert all("digits_impaired" in run.name for run in (tmp_path / "out").iterdir())


def test_demo_with_a_home_of_no_user_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    """``--data-dir ~nosuchuser/x`` reached Path.expanduser in the data search before the
    check every run command makes: a traceback, exit 1 (a walk-through)."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--epochs", "1", "--data-dir", "~esper-no-such-user/x"]) == 2
    err = capsys.readouterr().err
    assert err == (  # argparse's path type expands ~ (every path option does)
        "esper: error: --data-dir: '~esper-no-such-user/x': no such user's home "
        "directory (see esper demo --help)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_demo_stopped_by_sigterm_is_clean_at_any_point(tmp_path, capsys, monkeypatch) -> None:
    """SIGTERM while the demo looked for (or downloaded) its data killed it with no message
    and left the download's part files; in a run it named no way to continue (a walk-through)."""
    import esper.cli.demo as demo
    from esper.tolaria.episode import Episode

    def terminated(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(demo, "load_dataset", terminated)
        assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == "\nesper: interrupted\n"
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(demo, "_pick_task", lambda data_dir: "digits_impaired")
    monkeypatch.setattr(Episode, "step", terminated)
    assert main(["demo", "--epochs", "2", "--out", str(tmp_path / "out")]) == 130
    (run,) = (tmp_path / "out").iterdir()
    assert run.name.endswith("-static")
    assert capsys.readouterr().err.endswith(
        f"interrupted: epoch 1 checkpointed; continue with: esper static --resume {run}\n"
        "esper demo: the side-by-side table and report need the whole demo: run esper demo "
        "again for them (it starts both runs anew)\n"  # the resume alone finishes one run
    )


@pytest.mark.parametrize("where", ["", "sub"])
def test_demo_into_a_study_directory_is_refused(tmp_path, capsys, where) -> None:
    """``esper demo --out STUDY`` made its runs among the study's trials (adversarial sweep),
    where ``esper heuristic --out`` is refused."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{}")
    out = study / where if where else study
    assert main(["demo", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("esper: error: run directory ")
    assert f"lies inside the study directory {str(study)!r}" in err
    assert sorted(p.name for p in study.iterdir()) == ["study.json"]


@pytest.mark.slow
def test_full_demo_finishes(tmp_path, capsys) -> None:
    """The real demo (Fashion-MNIST when present) within its 10-minute budget on 2 cores."""
    started = time.monotonic()
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert time.monotonic() - started < 600
    assert "heuristic" in capsys.readouterr().out


def test_resuming_a_completed_run_is_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = ["static", "--task", "synthetic", "--epochs", "2", *TINY, "--out", str(run)]
    assert main(args) == 0
    before = (run / "summary.json").read_text()
    assert main(["static", "--resume", str(run)]) == 2
    assert "already completed; nothing to resume" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == before


def test_a_saved_config_with_a_new_lr_moves_the_seed_lr_that_followed_it(tmp_path) -> None:
    """config.json holds resolved values, seed_lr = lr among them: ``--config it --lr X`` kept
    the old lr for the seeds of a heuristic run (a run from flags gives them X), and a static
    run of its own config.json was refused: "a static run grows nothing; drop seed_lr"."""
    first = tmp_path / "first"
    assert main(["static", "--task", "synthetic", "--epochs", "1", *TINY, "--out", str(first)]) == 0
    saved = str(first / "config.json")

    def lrs(run: Path) -> tuple[float, float]:
        training = json.loads((run / "config.json").read_text())["training"]
        return training["lr"], training["seed_lr"]

    for mode, extra, expected in (
        ("static", [], (0.01, 0.01)),
        ("heuristic", [], (0.01, 0.01)),
        ("heuristic", ["--seed-lr", "0.02"], (0.01, 0.02)),  # given: kept
    ):
        out = tmp_path / f"{mode}{len(extra)}"
        assert main([mode, "--config", saved, "--lr", "0.01", *extra, "--out", str(out)]) == 0
        assert lrs(out) == expected
    out = tmp_path / "same"  # without --lr: the file's, both
    assert main(["heuristic", "--config", saved, "--out", str(out)]) == 0
    assert lrs(out) == lrs(first)


def test_resuming_a_terminated_run_is_refused(tmp_path, capsys, monkeypatch) -> None:
    """A run the governor terminated resumed with exit 0 as often as asked, appending another
    RunStarted and RunFinished each time. A non-finite validation loss in epoch 3 panics."""
    validate = Trainer._validate

    def nan_in_epoch_3(self: Trainer) -> tuple[float, float]:
        loss, accuracy = validate(self)
        return (math.nan if self.epoch == 2 else loss), accuracy

    monkeypatch.setattr(Trainer, "_validate", nan_in_epoch_3)
    run = tmp_path / "run"
    args = ["static", "--task", "synthetic", "--epochs", "6", *TINY, "--out", str(run)]
    assert main(args) == 0
    assert _summary(run).status == "terminated" and len(_rows(run)) == 3
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["static", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already finished: the governor terminated it" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_a_panicked_epochs_accuracy_is_not_the_best(spiked_run) -> None:
    """A spike panic's epoch measured a model the governor then discarded: its accuracy (here
    a made-up 99 %) became the run's best validation accuracy, and the restored model was saved
    as the best under it. Oracle: the recorded rows before the panic."""
    summary, rows = _summary(spiked_run), _rows(spiked_run)
    assert summary.status == "terminated" and len(rows) == 7
    assert float(rows[-1]["val_accuracy"]) == 99.0  # the panicked epoch, as measured
    before = max(float(r["val_accuracy"]) for r in rows[:-1])
    assert summary.growth.best_val_accuracy == before < 99.0


def test_a_terminated_runs_final_model_is_validated_as_restored(spiked_run) -> None:
    """The summary's validation accuracy of the final model (a ``score = "validation"`` study's
    score): a terminated run's model is the one the governor restored, the model of epoch 5
    (the last healthy epoch), not the panicked epoch 7 the last row measured. Oracles:
    ``model.pt`` evaluated here, and epoch 5's row (a static host: nothing else changed)."""
    from esper.data import load_dataset
    from esper.kasmina import load_model
    from esper.tolaria import evaluate

    g, rows = _summary(spiked_run).growth, _rows(spiked_run)
    assert g is not None and g.final is not None and g.final.val_accuracy == 99.0
    data = load_dataset("synthetic")
    model = load_model(spiked_run / "model.pt")
    accuracy = evaluate(model, data.x_val[:128], data.y_val[:128])[1]
    assert g.final_model_val_accuracy == accuracy
    assert accuracy == pytest.approx(float(rows[4]["val_accuracy"]), abs=1e-9)
    # The run's "final" accuracy (its end event, closing line, runs list) is this model's, not
    # the panicked epoch's made-up 99 %.
    (finished,) = [e for e in _events(spiked_run) if e["event"] == "RunFinished"]
    assert finished["final_val_accuracy"] == accuracy == g.final_val_accuracy


def test_the_best_validation_model_is_the_model_that_was_validated(tmp_path) -> None:
    """The model kept as the best validation epoch's (scored on the test split) was taken after
    the epoch's end moved its blending seed's α on (0.6 -> 0.8 here): it scored 35.10 % on the
    validation split whose 35.65 % made it the best. Oracles: the kept model and model.pt
    evaluated here."""
    import io

    from esper.data import load_dataset
    from esper.kasmina import load_model
    from esper.kasmina.checkpoint import model_from_bytes
    from esper.tolaria import evaluate

    run = tmp_path / "run"
    args = ["--task", "digits_impaired", "--epochs", "14", "--no-germinate-last-epochs", "3"]
    assert main(["heuristic", *args, "--out", str(run)]) == 0
    summary = _summary(run)
    g, data = summary.growth, load_dataset("digits")
    assert g is not None and g.final is not None and g.test is not None
    final = load_model(run / "model.pt")
    # The run ends mid-blend: its final model is not the one the last epoch validated.
    assert g.final_model_val_accuracy == evaluate(final, data.x_val, data.y_val)[1]
    assert g.final_model_val_accuracy != g.final.val_accuracy
    checkpoint = checkpoints.load_checkpoint(run, summary.run_id)
    state = torch.load(io.BytesIO(checkpoint.files["state.pt"]), weights_only=True)
    best = model_from_bytes(state["best"], "the best model", torch.device("cpu"))
    assert evaluate(best, data.x_val, data.y_val)[1] == g.best_val_accuracy
    assert evaluate(best, data.x_test, data.y_test)[1] == g.test.best_accuracy


def test_resume_with_the_wrong_command_is_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = ["static", "--task", "synthetic", "--epochs", "1", *TINY, "--out", str(run)]
    assert main(args) == 0
    (run / "summary.json").unlink()
    assert main(["heuristic", "--resume", str(run)]) == 2
    assert "is a static run; use esper static" in capsys.readouterr().err
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "mode": "eval"}))
    assert main(["ppo", "--resume", str(run)]) == 2
    assert "is an eval run; use esper eval" in capsys.readouterr().err  # not "a eval"
    # A path that does not exist is not "not an Esper run directory (no meta.json)".
    assert main(["ppo", "--resume", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err == f"esper: error: cannot resume {str(tmp_path / 'missing')!r}: it does not exist\n"


@pytest.mark.parametrize("command", ["static", "heuristic", "ppo"])
def test_a_data_dir_for_a_task_without_files_is_refused(tmp_path, capsys, command) -> None:
    """It was ignored with a log line: a knob that did nothing."""
    run = tmp_path / "run"
    argv = [command, "--data-dir", str(tmp_path), "--out", str(run)]
    argv += ["--preset", "tiny"] if command == "ppo" else ["--task", "digits"]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    task = "synthetic" if command == "ppo" else "digits"
    assert err.count("\n") == 1 and f"task {task!r} (dataset {task!r}) reads no files" in err, err
    assert "a data_dir is for the tasks fashion_mnist, fashion_mnist_impaired, cifar10" in err, err
    assert not run.exists()


@pytest.mark.parametrize(
    ("task", "preference", "message"),
    [
        ("text_lm_impaired", ["conv_light", "depthwise"], "['conv_light', 'depthwise'] names "
         "none of the blueprints the transformer host of task 'text_lm_impaired' offers: norm,"),
        ("synthetic", ["mlp", "lora"], "names none of the blueprints the cnn host of task "
         "'synthetic' offers: norm, attention, depthwise"),
    ],
)  # fmt: skip
def test_a_preference_for_blueprints_the_host_lacks_is_refused(
    tmp_path, capsys, task, preference, message
) -> None:
    """A preference naming only CNN blueprints on a transformer host ordered nothing. (One
    naming some of the host's, as the default does for either kind, is kept.)"""
    run = tmp_path / "run"
    argv = ["heuristic", "--task", task, "--blueprint-preference", *preference]
    assert main([*argv, "--out", str(run)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not run.exists()


def test_a_preference_naming_other_hosts_blueprints_too_is_kept() -> None:
    """One list may serve CNN and transformer tasks (the default names both kinds')."""
    from esper.study.growth import GrowthRun, check_mode
    from esper.tamiyo import HeuristicConfig

    mixed = HeuristicConfig(blueprint_preference=("lora", "mlp", "norm", "conv_light"))
    for task in ("synthetic", "text_lm_impaired"):
        config = GrowthRun(HostTraining(task), heuristic=mixed)
        check_mode("heuristic", config)  # no UserError


def test_out_pointing_at_a_file(tmp_path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["static", "--task", "synthetic", *TINY, "--out", str(afile)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert afile.read_text() == "x"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"task": "nope"}, "unknown task 'nope'"),
        ({"epochs": -3}, "epochs must be an integer in [1, 10000000], got -3"),
        ({"epochs": "40"}, 'training.epochs must be an integer, got "40"'),
        ({"lr": 0}, "lr must be a number in (0.0, 10.0], got 0"),
        ({"extra": 1}, "unknown key(s) ['extra'] in training"),
    ],
)
def test_edited_run_config_is_reported(tmp_path, capsys, edit, message: str) -> None:
    run = tmp_path / "run"
    args = ["static", "--task", "synthetic", "--epochs", "1", *TINY, "--out", str(run)]
    assert main(args) == 0
    (run / "summary.json").unlink()
    config = json.loads((run / "config.json").read_text())
    config["training"].update(edit)
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["static", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert err.count("esper: error:") == 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_trainer_state(tmp_path, capsys) -> None:
    """A state.pt that is not a torch file, re-signed in the manifest so the hash passes."""
    run = tmp_path / "run"
    args = ["static", "--task", "synthetic", "--epochs", "1", *TINY, "--out", str(run)]
    assert main(args) == 0
    (run / "summary.json").unlink()
    latest = run / "checkpoints" / checkpoints.step_directory(1)
    garbage = b"\x80\x04garbage"
    (latest / "state.pt").write_bytes(garbage)
    run_id = json.loads((run / "meta.json").read_text())["run_id"]
    manifest = checkpoints._manifest_bytes(run_id, 1, {"state.pt": garbage})
    (latest / "manifest.json").write_bytes(manifest)
    assert main(["static", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "Traceback" not in err


def test_resume_refuses_run_flags(tmp_path, capsys) -> None:
    assert main(["heuristic", "--resume", str(tmp_path), "--seed", "7", "--slots", "late"]) == 2
    assert "drop --seed, --slots" in capsys.readouterr().err


def test_ctrl_c_in_the_first_epoch_can_be_resumed(tmp_path, monkeypatch) -> None:
    from esper.tolaria.episode import Episode

    run = tmp_path / "run"
    original = Episode.reset

    def interrupted(self, *args, **kwargs):
        raise Stop

    monkeypatch.setattr(Episode, "reset", interrupted)
    args = ["static", "--task", "synthetic", "--epochs", "2", *TINY, "--out", str(run)]
    assert main(args) == 130
    summary = _summary(run)
    assert summary.status == "interrupted" and summary.growth.epochs_completed == 0
    assert summary.growth.final is None and summary.growth.best_val_accuracy is None
    assert (run / "checkpoints" / "LATEST").read_text().strip() == checkpoints.step_directory(0)
    monkeypatch.setattr(Episode, "reset", original)
    assert main(["static", "--resume", str(run)]) == 0
    assert _summary(run).growth.epochs_completed == 2


def test_json_files_never_hold_nan(tmp_path) -> None:
    path = tmp_path / "x.json"
    record.write_json(path, {"a": float("nan"), "b": [1.0, float("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None]}


def test_help_and_the_run_views_do_not_load_torch(recorded_runs) -> None:
    """torch takes about 1.7 s to import; the run record pulled it in through the Leyline
    package (its checkpoint loader), so ``esper --help`` and ``esper runs list`` took ~1.9 s,
    and ``esper tui`` loaded the run code for ``--tui``'s sake. They run without it now."""
    code = (
        "import sys\n"
        "from esper.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert main(['runs', 'list', sys.argv[1]]) == 0\n"
        "assert main(['runs', 'show', sys.argv[2]]) == 0\n"
        "assert main(['tui', sys.argv[2]]) == 2  # it reads the run, then finds no terminal\n"
        "print('LOADED' if 'torch' in sys.modules else 'CLEAN')\n"
    )
    runs = [str(recorded_runs["static"].parent), str(recorded_runs["static"])]
    result = subprocess.run(
        [sys.executable, "-c", code, *runs],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.stdout.strip().endswith("CLEAN")


def test_help_into_a_closed_pipe_is_quiet() -> None:
    """`esper heuristic --help | head -1`: the reader leaves early; no traceback, exit 141."""
    esper = Path(sys.executable).with_name("esper")
    proc = subprocess.Popen(
        [str(esper), "heuristic", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before esper (still importing) writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_output_into_a_full_disk_is_one_line(tmp_path) -> None:
    """`esper runs list > /dev/full` (and `knowledge export`, `runs show`, ...): a traceback
    ending in "No space left on device", exit 1 (a walk-through)."""
    esper = Path(sys.executable).with_name("esper")
    run = tmp_path / "r"
    assert main(["static", "--task", "synthetic", "--epochs", "1", *TINY, "--out", str(run)]) == 0
    for command in (["runs", "list", str(tmp_path)], ["runs", "show", str(run)]):
        with open("/dev/full", "w") as full:
            proc = subprocess.run(
                [str(esper), *command], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60
            )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == "esper: error: cannot write the output: No space left on device\n"
    # --help: a traceback (tyro's commands), or exit 0 with nothing written (argparse's drops
    # the error) where stdout is unbuffered
    helps = ((["runs", "--help"], "1"), (["--help"], ""), (["static", "-h"], ""))
    for command, unbuffered in helps:
        env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
        with open("/dev/full", "w") as full:
            proc = subprocess.run(
                [str(esper), *command], stdout=full, stderr=subprocess.PIPE, text=True, env=env,
                timeout=60,
            )  # fmt: skip
        assert (command, proc.returncode, proc.stderr) == (
            command, 2, "esper: error: cannot write the output: No space left on device\n"
        )  # fmt: skip
    for command in (["runs", "list", str(tmp_path)], ["static", "--help"], ["--help"]):
        closed = subprocess.run(  # started without a stdout: sys.stdout is None (a review; tyro's
            [str(esper), *command],  # --help was a traceback)
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            preexec_fn=lambda: os.close(1),
        )
        assert (command, closed.returncode, closed.stderr) == (command, 0, "")


def test_test_split_is_read_once_for_the_final_and_the_best_validation_model(tmp_path) -> None:
    """The summary's test metrics: the final model's (checked against model.pt) and the best
    validation epoch's, checked against a run that stops at that epoch (same seed: the same
    training up to there)."""
    from esper.data import load_dataset
    from esper.kasmina import load_model
    from esper.tolaria import evaluate
    from esper.tolaria.flops import step_flops

    args = ["--task", "synthetic", *TINY]
    run = tmp_path / "run"
    assert main(["static", *args, "--epochs", "6", "--out", str(run)]) == 0
    g = _summary(run).growth
    assert g is not None and g.test is not None
    data = load_dataset("synthetic")
    model = load_model(run / "model.pt")
    assert g.test.final_accuracy == evaluate(model, data.x_test, data.y_test)[1]
    assert g.final_model_val_accuracy == evaluate(model, data.x_val[:128], data.y_val[:128])[1]
    rows = _rows(run)
    accuracies = [float(r["val_accuracy"]) for r in rows]
    best = accuracies.index(max(accuracies)) + 1  # the first epoch reaching the best
    short = tmp_path / "short"
    assert main(["static", *args, "--epochs", str(best), "--out", str(short)]) == 0
    s = _summary(short).growth
    assert s is not None and s.test is not None
    assert g.test.best_accuracy == s.test.final_accuracy
    assert g.test.best_loss == s.test.final_loss
    # A static host's training FLOPs: every epoch the same step, 2 batches per epoch.
    assert g.train_flops == 6 * 2 * step_flops(model, data.x_train[:64], data.y_train[:64])
    assert g.peak_param_count == g.param_count == g.host_param_count


@pytest.mark.parametrize(
    ("mode", "flags"), [("random", []), ("periodic", ["--periodic.period", "1"])]
)
def test_baseline_controllers_run_as_commands(tmp_path, mode, flags) -> None:
    run = tmp_path / mode
    args = [mode, "--task", "synthetic", "--epochs", "6", *TINY, *flags, "--out", str(run)]
    assert main(args) == 0
    summary = _summary(run)
    assert summary.mode == mode and summary.growth is not None
    actions = [e for e in _events(run) if e["event"] == "ActionTaken"]
    assert len(actions) == 5  # one decision after each epoch but the last
    if mode == "periodic":  # germinates at every epoch while a slot is free
        germinated = [a["slot"] for a in actions if a["op"] == "GERMINATE" and a["accepted"]]
        assert germinated == ["early", "mid", "late"]
    # The grown model's validation accuracy as saved (its seeds' lifecycle moved on after the
    # last epoch validated): model.pt evaluated here.
    from esper.data import load_dataset
    from esper.kasmina import load_model
    from esper.tolaria import evaluate

    data, model = load_dataset("synthetic"), load_model(run / "model.pt")
    accuracy = evaluate(model, data.x_val[:128], data.y_val[:128])[1]
    assert summary.growth.final_model_val_accuracy == accuracy


def test_periodic_settings_belong_to_periodic_runs(tmp_path, capsys) -> None:
    args = ["heuristic", "--task", "synthetic", "--periodic.period", "2"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "heuristic runs take no periodic settings" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--selector", "greedy"], "unknown selector 'greedy'; accepted: rotation, ucb, thompson"),
        (["--strategy", "grow"], "unknown strategy 'grow'; accepted: spread, replace, diversify"),
        (["--knowledge", "mysql://h/db"], "mysql://h/db"),
        (["--knowledge", "not a url"], "not a url"),
    ],
)
def test_bad_selector_strategy_or_knowledge_url_is_one_line(tmp_path, capsys, flags, message):
    args = ["heuristic", "--task", "synthetic", *flags, "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["bogus"], "COMMAND: expected one of heuristic, static, eval, "),
        # argparse kept an option's last value: the demo ran seed 2, a query read b alone
        (["demo", "--seed=1", "--seed", "2"], "--seed is given 2 times; give it once (see"),
        (["runs", "query", "SELECT 1", "--runs", "a", "--runs", "b"], "--runs is given 2 times"),
        # argparse's "argument --format: invalid choice: 'xml' (choose from 'csv', 'json')",
        # as the run commands' flag errors read (a walk-through)
        (
            ["knowledge", "export", "--format", "xml"],
            "error: --format: expected one of csv, json, got 'xml' (see",
        ),
        (["demo", "--seed", str(2**64)], "expected an integer in [0, 4294967295]"),
        # torch's generator keeps a seed's low 32 bits: 2**32 would rerun seed 0
        (["demo", "--seed", str(2**32)], "expected an integer in [0, 4294967295], got 4294967296"),
        (["demo", "--epochs", "99999999999999"], "expected an integer in [1, 10000000]"),
        (["demo", "--epochs", "1.5"], "expected an integer in [1, 10000000], got '1.5'"),
        (["report", "x", "--reps", "9"], "expected an integer in [10, 100000], got 9"),
        (["report", "x", "--reps", str(10**12)], "expected an integer in [10, 100000]"),
        (["runs", "query"], "the following arguments are required: sql"),
        (["dashboard", "--port", "65536"], "expected a TCP port in 1..65535"),
        # long values are cut: the whole 5,000 characters made a 5,000-character line
        (["dashboard", "--port", "9" * 5000], "port in 1..65535, got '99999999999999"),
        (["demo", "--seed", "9" * 4000], "got 9999999999999999999999999999999999999999... (4000"),
        (["demo", "--out", ""], "expected a path, got ''"),
        # An empty path is "here": the report went into the working directory.
        (["report", "r", "--out", ""], "expected a path, got ''"),
        (["runs", "list", " "], "expected a path, got ' '"),
        (["runs", "show", ""], "expected a path, got ''"),
        (["study", ""], "expected a path, got ''"),
        # a subcommand's unknown argument names its help, not esper's
        (["runs", "show", "r", "--bogus"], "arguments: --bogus (see esper runs show --help)"),
        (["knowledge", "show", "--bogus"], "arguments: --bogus (see esper knowledge show --help)"),
        (["report", "a", "b"], "unrecognized arguments: b (see esper report --help)"),
        (["dashboard", "--bogus"], "unrecognized arguments: --bogus (see esper dashboard --help)"),
    ],
)
def test_argument_errors_are_one_line_without_the_usage_block(
    tmp_path, monkeypatch, capsys, argv, message
) -> None:
    """argparse printed its usage block above the error (two to four lines); demo's seed and
    epochs had no upper bound and failed with a traceback later (adversarial sweep)."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error: ") and err.count("\n") == 1, err
    assert message in err and "usage:" not in err and "(see esper" in err
    assert not any(tmp_path.iterdir())


def test_an_error_line_too_long_even_with_its_long_words_cut_keeps_its_start_and_end() -> None:
    """tyro wraps a long value into 76-character pieces, words too short to be cut."""
    from esper.cli.main import one_line

    message = "invalid choice '" + " ".join(["-" * 76] * 60) + "'. Expected one of ('a', 'b')."
    line = one_line(message)
    assert len(line) <= MAX_ERROR_LINE and line.startswith("invalid choice '----")
    assert line.endswith("'. Expected one of ('a', 'b').") and " characters cut) ... " in line
    word = "x" * 400
    assert one_line(f"unknown task '{word}'; known: a, b") == (
        f"unknown task '{word[:99]}... (403 characters) known: a, b"
    )


def test_a_multi_line_library_message_is_printed_as_one_line(monkeypatch, capsys) -> None:
    """torch's state-dict mismatch and unpickling messages ran over six lines after
    'esper: error:' (a resumed run whose config.json policy width differs from its checkpoint)."""
    import esper.cli.report as cli_report
    from esper.leyline.config import UserError

    message = "cannot resume 'r': Error(s) in loading state_dict:\n\tsize mismatch a\n\n\tb\n"

    def fail(args: object) -> int:
        raise UserError(message)

    monkeypatch.setattr(cli_report, "run_report", fail)
    assert main(["report", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "esper: error: cannot resume 'r': Error(s) in loading state_dict:; size mismatch a; b\n"
    )


def test_a_new_runs_relative_data_dir_is_recorded_absolute(tmp_path, monkeypatch) -> None:
    """A run recorded ``data_dir: "good"`` as typed; resumed from another directory it trained
    on that directory's ``good/``, other images of the same shape, without a word (a sweep's
    run went from 57 % to 10 %). Links and ``..`` stay as given."""
    from esper.cli import growth, ppo
    from esper.cli.config import split_options

    monkeypatch.chdir(tmp_path)
    flags = ["--task", "fashion_mnist_impaired", "--data-dir", "data/../fm"]
    options, rest = split_options([*flags, "--out", "r"])
    assert growth.parse("static", rest, options).training.data_dir == f"{tmp_path}/data/../fm"
    options, rest = split_options([*flags, "--out", "p"])
    assert ppo.parse(rest, options).env.data_dir == f"{tmp_path}/data/../fm"
    options, rest = split_options(["--task", "fashion_mnist_impaired", "--data-dir", "/x/fm"])
    assert growth.parse("heuristic", rest, options).training.data_dir == "/x/fm"
    # "~" the shell left (--data-dir=~/fm, a config file) is the home's, not ./~ (a review's)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    options, rest = split_options(["--task", "fashion_mnist_impaired", "--data-dir=~/fm"])
    assert growth.parse("static", rest, options).training.data_dir == f"{tmp_path}/home/fm"
    # a user that does not exist: Path.expanduser's RuntimeError was a traceback
    options, rest = split_options(["--task", "fashion_mnist_impaired", "--data-dir=~nouser7/x"])
    with pytest.raises(UserError, match=r"^--data-dir '~nouser7/x': no such user's home"):
        growth.parse("static", rest, options)


def test_the_run_options_paths_expand_a_home(tmp_path, monkeypatch) -> None:
    """``--out=~/x`` (the shell expands only a word beginning with ~) made a directory named
    ``~`` in the working directory, which ``rm -rf ~`` would then remove the home for; --data-dir
    and --knowledge expanded it (a walk-through)."""
    from esper.cli.config import split_options

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    options, _ = split_options(["--out=~/x", "--config", "~/c.toml"])
    assert (options.out, options.config) == (tmp_path / "home/x", tmp_path / "home/c.toml")
    options, _ = split_options(["--resume=~/r"])
    assert options.resume == tmp_path / "home/r"
    with pytest.raises(UserError, match=r"^--out '~nouser7/x': no such user's home directory$"):
        split_options(["--out", "~nouser7/x"])
    from esper.cli.runs import path_arg  # every other command's paths (report --out=~/r)

    assert path_arg("~/r") == tmp_path / "home/r"


@pytest.mark.parametrize("command", ["static", "ppo"])
def test_a_batch_or_validation_subset_beyond_its_split_is_noted(tmp_path, capsys, command) -> None:
    """A run cut them to the split without a word, and recorded them as given. Not refused: a
    study's budget serves tasks of several sizes, an eval keeps its policy's settings on another
    task, and earlier runs so configured must resume."""
    out = tmp_path / "run"
    args = ["--task", "synthetic", "--batch-size", "513", "--val-samples", "1000"]
    if command == "ppo":
        args += ["--preset", "tiny", "--ppo.rounds", "1"]
    else:
        args += ["--epochs", "2"]
    assert main([command, *args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: batch_size 513 is more than the training split of synthetic holds: all its 512 "
        "samples are used\nwarning: val_samples 1,000 is more than the validation split of "
        "synthetic holds: all its 256 samples are used\n"
    ) in err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["data"]["samples"] == {"train": 512, "val": 256, "test": 256}


def test_a_url_saved_with_a_password_before_it_was_refused_is_read_back(tmp_path) -> None:
    """A new run's URL with a password is refused (``refuse_passwords``); a run that saved one
    before could no longer be resumed: its config.json was refused as it was read back (as
    ``--resume`` reads it), with advice a resume cannot take (a review)."""
    from esper.cli.config import refuse_passwords
    from esper.leyline.config import HostTraining, TelemetrySettings, UserError, override
    from esper.study.growth import GrowthRun

    saved = {
        "training": {"task": "synthetic"},
        "knowledge": "postgresql://u:pw@127.0.0.1/k",
        "telemetry": {"mlflow": "http://u:pw@127.0.0.1:1"},
    }
    config = override(GrowthRun(HostTraining("")), saved)  # as --resume reads it back
    assert config.knowledge == saved["knowledge"] and config.telemetry.mlflow is not None
    with pytest.raises(UserError, match=r"^telemetry: mlflow 'http://u:\*\*\*@127"):
        refuse_passwords(config.telemetry, config.knowledge)  # what a new run is told
    with pytest.raises(UserError, match=r"^knowledge 'postgresql://u:\*\*\*@127.0.0.1/k'"):
        refuse_passwords(TelemetrySettings(), config.knowledge)
    # SQLAlchemy reads a password up to the "@", "/" and all: it was kept and shown
    with pytest.raises(UserError, match=r"'postgresql://u:\*\*\*@h/d' carries a password"):
        refuse_passwords(TelemetrySettings(), "postgresql://u:pa/ss@h/d")
    refuse_passwords(TelemetrySettings(), "postgresql://u:@h/d")  # an empty one is none
    # a user name holding an "@" (alice@srv): SQLAlchemy reads the password after it
    with pytest.raises(UserError, match=r"'postgresql://alice@srv:\*\*\*@h/d' carries a"):
        refuse_passwords(TelemetrySettings(), "postgresql://alice@srv:s3cret@h/d")


def test_version_flag_prints_the_version(capsys) -> None:
    """``esper --version`` said "the following arguments are required: COMMAND"."""
    import esper

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"esper {esper.__version__}\n"
