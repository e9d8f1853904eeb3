"""``esper ppo`` and ``esper eval`` end to end on the tiny preset."""

from __future__ import annotations

import csv
import io
import json
import shlex
import shutil
import signal
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import torch

from conftest import trains_on_after_its_first_read
from esper.cli.main import main
from esper.leyline.config import config_dict
from esper.leyline.events import PPOUpdate
from esper.nissa import checkpoints, record
from esper.nissa.csvlog import read_rows
from esper.nissa.log import policy_line
from esper.simic.config import load_preset
from esper.simic.training import PPOTrainer
from esper.study.run import read_policy
from esper.tasks import get_task

TIMING = {"seconds_rollout", "seconds_update"}
ROUND_FIELDS = tuple(f.name for f in fields(PPOUpdate))


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _rows(run: Path) -> list[dict]:
    with (run / "rounds.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _policy(run: Path) -> dict[str, torch.Tensor]:
    policy: dict[str, torch.Tensor] = read_policy(run).state["trainer"]["policy"]
    return policy


def _but_short(err: str) -> str:
    """``err`` without the note that episodes are too short for a seed to blend (the tiny
    preset's 5 epochs: ``never_blends``)."""
    return "\n".join(line for line in err.splitlines() if "too short for any seed" not in line)


def _state_file(run: Path) -> Path:
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    return run / "checkpoints" / latest / "state.pt"


def test_tiny_preset_run_directory(tmp_path, capsys) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "device map:\ncpu: envs 0, 1" in err
    tiny = load_preset("tiny").resolved()
    tiny = replace(tiny, env=replace(tiny.env, threads=torch.get_num_threads()))
    assert json.loads((run / "config.json").read_text()) == config_dict(tiny)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seeds"]["environments"] == [0, 1] and "git_revision" in meta
    assert len(_rows(run)) == 2
    events = _events(run)
    names = {e["event"] for e in events}
    assert {
        "RunStarted",
        "PPOUpdate",
        "EpisodeFinished",
        "RewardComputed",
        "PPORunFinished",
    } <= names
    assert {e["env"] for e in events if e["event"] == "EpochCompleted"} == {0, 1}
    rewards = [e for e in events if e["event"] == "RewardComputed"]
    assert all(set(dict(e["components"])) for e in rewards)  # every component named
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["ppo"]["rounds_completed"] == 2
    assert summary["ppo"]["rounds_planned"] == 2 and summary["growth"] is None
    assert (run / "checkpoints" / "LATEST").read_text().strip() == checkpoints.step_directory(2)


def test_rounds_csv_is_the_ppo_update_of_each_round(tmp_path) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--out", str(run)]) == 0
    with (run / "rounds.csv").open(newline="") as f:
        assert csv.DictReader(f).fieldnames == list(ROUND_FIELDS)
    recorded = [asdict(r) for r in read_rows(run / "rounds.csv", PPOUpdate)]
    logged = [e for e in _events(run) if e["event"] == "PPOUpdate"]
    assert recorded == [{k: e[k] for k in ROUND_FIELDS} for e in logged]
    assert [r["round"] for r in recorded] == [1, 2]
    assert all(r["mean_final_accuracy"] is not None for r in recorded)


def test_eval_runs_a_saved_policy_like_heuristic(tmp_path, capsys) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--out", str(run)]) == 0
    assert "ppo synthetic: 1 round, mean return " in capsys.readouterr().out  # not "1 rounds"
    out = tmp_path / "eval"
    args = ["eval", "--policy", str(run), "--task", "synthetic", "--epochs", "4", "--seed", "2"]
    assert main([*args, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "checkpoints",
        "config.json",
        "events.jsonl",
        "meta.json",
        "metrics.csv",
        "model.pt",
        "outcomes.json",
        "summary.json",
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "eval" and summary["status"] == "completed"
    actions = [e for e in _events(out) if e["event"] == "ActionTaken"]
    assert len(actions) == 3 and all(a["reason"] == "policy" for a in actions)  # epochs - 1
    printed = capsys.readouterr()
    assert "eval synthetic (completed)" in printed.out and "note:" not in _but_short(printed.err)
    assert "note: episodes of 4 epochs are too short for any seed to blend in" in printed.err
    assert "[heuristic]" not in printed.err and "[periodic]" not in printed.err  # unread
    # which policy ran, beyond its path (a PPO run may train on, or another take its place)
    meta = json.loads((out / "meta.json").read_text())
    ppo_meta = json.loads((run / "meta.json").read_text())
    policy = {"path": str(run.resolve()), "run_id": ppo_meta["run_id"], "round": 1}
    # ... and what it trained on, and for how long (an eval on another task, or of a run
    # stopped early, did not say)
    assert meta["policy"] == {**policy, "task": "synthetic", "rounds_planned": 1}
    assert main(["runs", "show", str(out)]) == 0
    named = (
        f"{run.resolve()} (run {ppo_meta['run_id']}, trained on synthetic, after PPO round 1 of 1)"
    )
    assert f"policy    {named}" in capsys.readouterr().out
    older = policy_line(policy)  # an eval's meta.json from before those two were recorded
    assert older == f"{run.resolve()} (run {ppo_meta['run_id']}, after PPO round 1)"
    # ... and its report (it named none: what was evaluated was not on the page)
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"<tr><th>policy</th><td>{named}</td></tr>" in page

    # Fewer slots than it trained with: the policy runs masked to them, and the eval says so.
    narrow = tmp_path / "narrow"
    assert main([*args, "--slots", "mid", "--out", str(narrow)]) == 0
    assert json.loads((narrow / "config.json").read_text())["training"]["slots"] == ["mid"]
    acted = [e for e in _events(narrow) if e["event"] == "ActionTaken"]
    assert len(acted) == 3 and {a["slot"] for a in acted if a["accepted"]} <= {None, "mid"}
    err = capsys.readouterr().err
    assert "note: the policy trained with slots = early, mid, late; this eval runs with " in err
    assert _but_short(err).count("note:") == 1 and "slots = mid\n" in err

    # A slot the host lacks: the one error line alone, not the note before it.
    assert main([*args, "--slots", "mid_3", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "note:" not in err and len(err.strip().splitlines()) == 1, err

    # The task's own width given explicitly is no override (the policy's run recorded none).
    width = get_task("synthetic").host_width()
    assert main([*args, "--width", str(width), "--out", str(tmp_path / "same")]) == 0
    assert "note:" not in _but_short(capsys.readouterr().err)

    # Another task keeps the policy's run's budget but what is given; the eval says which
    # (the note named the task alone, and a 4-batch digits eval read as the task's own).
    # (seed 0 trained the policy on synthetic, not on digits: allowed)
    other = ["eval", "--policy", str(run), "--task", "digits_impaired", "--epochs", "2"]
    assert main([*other, "--out", str(tmp_path / "digits")]) == 0
    err = capsys.readouterr().err
    assert (
        "esper eval: note: batches_per_epoch = 4, val_samples = 256 come from the policy's run "
        "on synthetic; the task digits_impaired has batches_per_epoch = all, val_samples = all"
    ) in err
    training = json.loads((tmp_path / "digits" / "config.json").read_text())["training"]
    assert (training["epochs"], training["batches_per_epoch"], training["val_samples"]) == (
        2,
        4,
        256,
    )


def test_eval_config_round_trips_and_a_resume_keeps_its_policy(
    tmp_path, capsys, monkeypatch
) -> None:
    """An eval's config.json (policy included, stored absolute) runs again through --config;
    a resume refuses once the PPO run it evaluates has trained on, or another run is in its
    place."""
    ppo = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--out", str(ppo)]) == 0
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "e1"
    args = ["eval", "--policy", "ppo", "--epochs", "3", "--seed", "100"]
    assert main([*args, "--out", str(first)]) == 0
    config = json.loads((first / "config.json").read_text())
    assert config["policy"] == str(ppo.resolve())
    again = tmp_path / "e2"
    assert main(["eval", "--config", str(first / "config.json"), "--out", str(again)]) == 0
    assert (again / "metrics.csv").read_text() == (first / "metrics.csv").read_text()

    (first / "summary.json").unlink()  # as if interrupted
    state = ppo / "checkpoints"
    before = {p.name for p in state.iterdir()}
    assert main(["ppo", "--resume", str(ppo)]) == 2  # completed: nothing to resume
    config = json.loads((ppo / "config.json").read_text())
    config["ppo"]["rounds"] = 2
    (ppo / "config.json").write_text(json.dumps(config))
    (ppo / "summary.json").unlink()
    assert main(["ppo", "--resume", str(ppo)]) == 0  # the PPO run trains one more round
    assert {p.name for p in state.iterdir()} != before
    capsys.readouterr()
    assert main(["eval", "--resume", str(first)]) == 2
    assert "now at round 2; start a new eval" in capsys.readouterr().err

    # Another PPO run of as many rounds put at the policy's path: the resume took it silently
    # (half the eval one policy, half another).
    original_id = json.loads((ppo / "meta.json").read_text())["run_id"]
    ppo.rename(tmp_path / "ppo-moved")
    other = ["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--seed", "1", "--out", str(ppo)]
    assert main(other) == 0
    other_id = json.loads((ppo / "meta.json").read_text())["run_id"]
    capsys.readouterr()
    assert main(["eval", "--resume", str(first)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert (
        f"it ran the policy of PPO run {original_id}; {str(ppo.resolve())!r} now holds run"
        in err[0]
    )
    assert other_id in err[0] and not (first / "summary.json").exists()


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_an_eval_on_another_dataset_does_not_take_the_policys_data_dir(tmp_path, capsys) -> None:
    """The policy's Fashion-MNIST folder became a digits eval's data_dir, which is refused
    (review); an eval on the policy's own dataset keeps it."""
    run = tmp_path / "ppo"
    tiny = ["--epochs", "2", "--batches-per-epoch", "2", "--val-samples", "128"]
    ppo = ["ppo", "--preset", "tiny", "--task", "fashion_mnist_impaired", "--ppo.n-envs", "1"]
    ppo += ["--ppo.rounds", "1", "--data-dir", str(FASHION), *tiny]
    assert main([*ppo, "--out", str(run)]) == 0
    for task, data_dir in (("digits_impaired", None), ("fashion_mnist_impaired", str(FASHION))):
        out = tmp_path / task
        args = ["eval", "--policy", str(run), "--task", task, *tiny, "--seed", "100"]
        args += ["--out", str(out)]
        assert main(args) == 0, capsys.readouterr().err
        assert json.loads((out / "config.json").read_text())["training"]["data_dir"] == data_dir


def test_eval_help_and_a_policy_flag_without_a_value(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "--policy" in out
    # its task showed as "(required)" and its epochs as the task's: it takes the policy's run's
    assert "the training options (task, epochs," in " ".join(out.split())
    assert "(required)" not in out
    assert main(["eval", "--policy"]) == 2
    assert capsys.readouterr().err.strip() == "esper: error: --policy needs a PPO run directory"


def test_ppo_help_lists_its_preset_option(capsys) -> None:
    """--preset was named only in the description ("--preset NAME first"), with no line of its
    own, and the preset's episode length read as the task's default under --epochs."""
    with pytest.raises(SystemExit) as stop:
        main(["ppo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0
    assert "--preset NAME base settings that --config and flags override: default, tiny" in out
    assert "(default: default; its episodes are 12 epochs on any task)" in out


def test_an_untrained_policy_is_refused_and_a_partial_one_is_noted(
    tmp_path, capsys, recorded_runs
) -> None:
    """A PPO run stopped in its first round (only its step-0 checkpoint) was evaluated as a
    policy without a word; one stopped part-way said nothing either."""
    partial = tmp_path / "partial"
    shutil.copytree(recorded_runs["ppo"], partial)
    config = json.loads((partial / "config.json").read_text())
    config["ppo"]["rounds"] = 5  # planned 5, stopped after its 2nd
    (partial / "config.json").write_text(json.dumps(config))
    args = ["eval", "--policy", str(partial), "--task", "synthetic", "--epochs", "1", "--seed", "9"]
    args += ["--batches-per-epoch", "2", "--val-samples", "64"]
    assert main([*args, "--out", str(tmp_path / "e1")]) == 0
    note = "esper eval: note: the policy finished 2 of its run's 5 PPO rounds (stopped early, or "
    assert note in capsys.readouterr().err
    assert main(["eval", "--policy", str(recorded_runs["ppo"]), *args[3:], "--out",
                 str(tmp_path / "e2")]) == 0  # fmt: skip
    assert "PPO rounds" not in capsys.readouterr().err
    untrained = tmp_path / "untrained"  # as a run stopped in round 1 leaves it: round 0
    shutil.copytree(recorded_runs["ppo"], untrained)
    run_id = json.loads((untrained / "meta.json").read_text())["run_id"]
    state = read_policy(untrained).state
    state["trainer"]["round"] = 0
    buffer = io.BytesIO()
    torch.save(state, buffer)
    checkpoints.commit_checkpoint(untrained, 3, {"state.pt": buffer.getvalue()}, run_id)
    assert main(["eval", "--policy", str(untrained), *args[3:], "--out", str(tmp_path / "e3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has finished no PPO round" in err, err
    assert f"esper ppo --resume {untrained}" in err and not (tmp_path / "e3").exists()


def test_an_eval_runs_and_records_the_policy_round_it_read_once(
    tmp_path, capsys, monkeypatch, recorded_runs
) -> None:
    """``esper eval`` read the policy's checkpoint twice: to check and note it, then to run
    it; a PPO run training on between the two made the eval run (and record) another round
    than the one its note named. Now the one read is what runs and is recorded."""
    policy = tmp_path / "policy"
    shutil.copytree(recorded_runs["ppo"], policy)
    config = json.loads((policy / "config.json").read_text())
    config["ppo"]["rounds"] = 5  # still training: its note names the round read
    (policy / "config.json").write_text(json.dumps(config))
    got = trains_on_after_its_first_read(monkeypatch, policy)
    out = tmp_path / "eval"
    args = ["eval", "--policy", str(policy), "--task", "synthetic", "--epochs", "1", "--seed", "9"]
    assert main([*args, "--batches-per-epoch", "2", "--out", str(out)]) == 0
    assert "the policy finished 2 of its run's 5 PPO rounds" in capsys.readouterr().err
    assert json.loads((out / "meta.json").read_text())["policy"]["round"] == 2
    assert got == [2]
    assert read_policy(policy).state["trainer"]["round"] == 3  # it did train on


def test_a_saved_ppo_config_with_a_new_lr_moves_the_seed_lr_that_followed_it(
    recorded_runs,
) -> None:
    from esper.cli.config import RunOptions
    from esper.cli.ppo import parse

    options = RunOptions(config=recorded_runs["ppo"] / "config.json")
    env = parse(["--lr", "0.01"], options).env
    assert (env.lr, env.seed_lr) == (0.01, 0.01)  # was (0.01, the file's lr)
    env = parse(["--lr", "0.01", "--seed-lr", "0.02"], options).env
    assert (env.lr, env.seed_lr) == (0.01, 0.02)


def test_an_eval_config_file_with_a_new_lr_moves_the_seed_lr_that_followed_it(
    recorded_runs, tmp_path
) -> None:
    """``training.lr`` in an eval's --config over its policy's settings kept the policy's
    seed_lr (``--lr`` moved it: the same setting gave two runs; a walk-through)."""
    from esper.cli.config import RunOptions
    from esper.cli.growth import parse

    file = tmp_path / "eval.toml"
    file.write_text(f'policy = "{recorded_runs["ppo"]}"\nseed = 2\n[training]\nlr = 0.01\n')
    by_file = parse("eval", [], RunOptions(config=file)).training
    policy = ["--policy", str(recorded_runs["ppo"]), "--seed", "2", "--lr", "0.01"]
    by_flag = parse("eval", policy, RunOptions()).training
    assert (by_file.lr, by_file.seed_lr) == (by_flag.lr, by_flag.seed_lr) == (0.01, None)  # lr
    file.write_text(file.read_text() + "seed_lr = 0.02\n")  # given: kept
    by_file = parse("eval", [], RunOptions(config=file)).training
    assert (by_file.lr, by_file.seed_lr) == (0.01, 0.02)


def test_an_eval_without_a_seed_takes_the_first_its_policy_did_not_train_on(
    recorded_runs, tmp_path
) -> None:
    """Its default was 0, the seed of the policy's first training environment: ``esper eval
    --policy RUN`` as typed was always refused (a walk-through). Oracle: the recorded run's
    environments were seeded 0 and 1 (its meta.json)."""
    from esper.cli.config import RunOptions
    from esper.cli.growth import parse

    policy = recorded_runs["ppo"]
    assert json.loads((policy / "meta.json").read_text())["seeds"]["environments"] == [0, 1]
    assert parse("eval", ["--policy", str(policy)], RunOptions()).seed == 2
    assert parse("eval", ["--policy", str(policy), "--seed", "7"], RunOptions()).seed == 7
    file = tmp_path / "eval.toml"
    file.write_text(f'policy = "{policy}"\nseed = 9\n')
    assert parse("eval", [], RunOptions(config=file)).seed == 9


def test_an_eval_resumed_after_its_policy_was_removed_from_config_json_is_one_line(
    tmp_path, capsys, recorded_runs, monkeypatch
) -> None:
    """``"policy": null`` in an interrupted eval's config.json ended in an AssertionError
    traceback at the controller (an adversarial walk-through)."""
    from esper.nissa.stopping import Stop
    from esper.tolaria.episode import Episode

    def interrupted(*args: object, **kwargs: object) -> None:
        raise Stop

    out = tmp_path / "eval"
    args = ["eval", "--policy", str(recorded_runs["ppo"]), "--epochs", "2", "--out", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(Episode, "step", interrupted)
        assert main(args) == 130
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "policy": None}))
    capsys.readouterr()
    assert main(["eval", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"esper: error: cannot resume {str(out)!r}: its config.json names no policy, which an "
        "eval run records; restore it, or start a new run\n"
    )


def _static_first_epoch(out: Path, seed: int) -> dict[str, str]:
    """The first ``metrics.csv`` row of a static run of ``seed`` with the tiny preset's budget
    (the recorded PPO run's environments trained so)."""
    static = ["static", "--task", "synthetic", "--epochs", "1", "--batches-per-epoch", "4"]
    assert main([*static, "--val-samples", "256", "--seed", str(seed), "--out", str(out)]) == 0
    with (out / "metrics.csv").open() as f:
        return next(csv.DictReader(f))


def test_an_eval_on_a_training_seed_of_its_policy_is_refused(
    tmp_path, capsys, recorded_runs
) -> None:
    """``esper ppo`` and ``esper eval`` both default to seed 0, and environment i of a PPO run
    of seed s is seeded s + i: the README's own example evaluated on a training episode (then
    only a note said so). Evaluation seeds are never training ones. Oracle for "re-runs a
    training episode": the first epoch of an eval on the seed is that environment's, as the
    run of its episode shows."""
    policy = recorded_runs["ppo"]
    trained = [e for e in _events(policy) if e["event"] == "EpochCompleted" and e["epoch"] == 1]
    for seed in (0, 1):  # the policy's environments were seeded 0 and 1
        out = tmp_path / f"e{seed}"
        args = ["eval", "--policy", str(policy), "--epochs", "1", "--seed", str(seed)]
        assert main([*args, "--out", str(out)]) == 2
        assert capsys.readouterr().err == (
            f"esper: error: --seed {seed} is one of the policy's training environment seeds "
            "(0-1): an eval on it re-runs a training episode, not a held-out one; give --seed "
            "outside them (e.g. --seed 2)\n"
        )
        assert not out.exists()
    env1 = next(e for e in trained if e["env"] == 1 and e["episode"] == 1)
    first = _static_first_epoch(tmp_path / "s1", 1)
    assert float(first["train_loss"]) == pytest.approx(env1["train_loss"], rel=1e-5)
    out = tmp_path / "e2"
    args = ["eval", "--policy", str(policy), "--epochs", "1", "--seed", "2", "--out", str(out)]
    assert main(args) == 0
    with (out / "metrics.csv").open() as f:
        first = next(csv.DictReader(f))
    assert all(float(first["val_loss"]) != e["val_loss"] for e in trained)


def test_an_eval_seed_that_replays_a_later_training_episode_is_refused(
    tmp_path, capsys, recorded_runs
) -> None:
    """Episode k of environment s is seeded s·1000003 + k, of which torch's CPU generator
    keeps 32 bits: --seed 2021759595 (1000003⁻¹ mod 2³²) met round 2's episode of environment
    0 there and was accepted (a walk-through). Oracle: a static run on that seed trains its
    first epoch exactly as that training episode did."""
    seed = pow(1_000_003, -1, 2**32)
    policy = recorded_runs["ppo"]
    replayed = next(
        e for e in _events(policy)
        if e["event"] == "EpochCompleted" and (e["env"], e["episode"], e["epoch"]) == (0, 2, 1)
    )  # fmt: skip
    out = tmp_path / "eval"
    args = ["eval", "--policy", str(policy), "--epochs", "1", "--seed", str(seed)]
    assert main([*args, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"esper: error: --seed {seed} replays episode 2 of the policy's training environment 0 "
        "(the same host and data order: episode seeds meet in the 32 bits torch's CPU generator "
        "keeps), not a held-out one; give another --seed (e.g. --seed 2)\n"
    )
    assert not out.exists()
    first = _static_first_epoch(tmp_path / "s", seed)
    assert float(first["train_loss"]) == pytest.approx(replayed["train_loss"], rel=1e-5)


@pytest.mark.parametrize("rounds", ["missing", "2", True, -1, 1.5])
def test_a_policy_without_a_whole_round_count_is_one_line(
    tmp_path, capsys, recorded_runs, rounds
) -> None:
    """A checkpoint (checksums intact) whose trainer state lacks its round count was a KeyError
    traceback; "2" ran as if 2, and -1 ran and said it finished -1 of 2 rounds."""
    policy = tmp_path / "policy"
    shutil.copytree(recorded_runs["ppo"], policy)
    run_id = json.loads((policy / "meta.json").read_text())["run_id"]
    state = read_policy(policy).state
    if rounds == "missing":
        del state["trainer"]["round"]
    else:
        state["trainer"]["round"] = rounds
    buffer = io.BytesIO()
    torch.save(state, buffer)
    checkpoints.commit_checkpoint(policy, 3, {"state.pt": buffer.getvalue()}, run_id)
    out = tmp_path / "e"
    assert main(["eval", "--policy", str(policy), "--task", "synthetic", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gives no count of finished PPO rounds" in err, err
    assert not out.exists()


@pytest.mark.parametrize("value", ["5", '""', '["a"]'])
def test_an_eval_config_policy_that_is_not_a_path_is_one_line(tmp_path, capsys, value) -> None:
    """``policy = 5`` said "eval needs --policy RUN", as if none were given."""
    config = tmp_path / "eval.toml"
    config.write_text(f"policy = {value}\n")
    assert main(["eval", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "policy must be a PPO run directory (a string)" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # Read before tyro parses the rest: the first --policy won, for --preset tyro failed.
        (["eval", "--policy", "a", "--policy=b"], "--policy is given 2 times; give it once"),
        (["ppo", "--preset", "tiny", "--preset", "default"], "--preset is given 2 times"),
        (["static", "--out", "a", "--out", "b"], "--out is given 2 times; give it once"),
        (["static", "--task", "synthetic", "--tui=no"], "--tui takes no value, got '--tui=no'"),
        # Parsed by tyro, which took the last silently (a second sweep)
        (["static", "--task", "synthetic", "--epochs", "1", "--epochs=2"], "--epochs is given 2"),
        (
            ["periodic", "--task", "synthetic", "--periodic.period=2", "--periodic.period", "3"],
            "--periodic.period is given 2 times; give it once",
        ),
        (["ppo", "--ppo.rounds", "1", "--ppo.rounds", "2"], "--ppo.rounds is given 2 times"),
        (
            ["heuristic", "--task", "synthetic", "--batch_size", "8", "--batch-size", "16"],
            "--batch_size and --batch-size are both given; give one",
        ),
        (
            ["heuristic", "--task", "synthetic", "--shapley", "--no-shapley"],
            "--shapley and --no-shapley are both given; give one",
        ),
    ],
)
def test_a_flag_read_before_parsing_given_twice_or_with_a_value_is_one_line(
    tmp_path, monkeypatch, capsys, argv, message
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not any(tmp_path.iterdir())


def test_interrupted_ppo_resumes_exactly(tmp_path, monkeypatch) -> None:
    straight = tmp_path / "straight"
    argv = ["ppo", "--preset", "tiny", "--ppo.rounds", "3"]
    assert main([*argv, "--out", str(straight)]) == 0

    run_round = PPOTrainer.run_round
    calls = {"n": 0}

    def interrupted_on_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C in the third round
        return run_round(self)

    monkeypatch.setattr(PPOTrainer, "run_round", interrupted_on_third)
    resumed = tmp_path / "resumed"
    assert main([*argv, "--out", str(resumed)]) == 130
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["ppo"]["rounds_completed"] == 2
    monkeypatch.setattr(PPOTrainer, "run_round", run_round)
    assert main(["ppo", "--resume", str(resumed)]) == 0

    assert _rows(resumed) == _rows(straight)
    a, b = _policy(straight), _policy(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((resumed / "rounds.csv").open()))
    summary = json.loads((resumed / "summary.json").read_text())
    both_attempts = sum(float(r["seconds_rollout"]) + float(r["seconds_update"]) for r in rows)
    assert summary["wall_seconds"] == pytest.approx(both_attempts, abs=2e-3)
    assert main(["ppo", "--resume", str(resumed)]) == 2  # completed: nothing to resume


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_a_completed_run_trains_on_to_a_larger_ppo_rounds(tmp_path, capsys) -> None:
    """``--resume RUN --ppo.rounds N``: the one flag a resume takes. A completed run trains on
    and ends as a run planned for N rounds from the start; config.json records the new plan."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "3", "--out", str(straight)]) == 0
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "2", "--out", str(run)]) == 0
    before = _files(run)
    capsys.readouterr()
    for more in ([], ["--ppo.rounds", "2"], ["--ppo.rounds", "1"], ["--ppo.rounds", "-5"]):
        assert main(["ppo", "--resume", str(run), *more]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "already completed round 2" in err or "ppo.rounds must be" in err, err
    assert main(["ppo", "--resume", str(run), "--ppo.n-envs", "3", "--ppo.rounds", "3"]) == 2
    assert "(it takes --ppo.rounds, --ray-address only); drop --ppo.n-envs" in (
        capsys.readouterr().err
    )
    assert main(["ppo", "--resume", str(run), "--ray-address=127.0.0.1:6379"]) == 2
    assert capsys.readouterr().err == (
        f"esper: error: {str(run)!r} ran without --workers, and a resume keeps how it ran: "
        "drop --ray-address\n"
    )
    assert main(["heuristic", "--resume", str(run), "--ppo.rounds", "3"]) == 2
    assert "as configured; drop --ppo.rounds" in capsys.readouterr().err
    assert _files(run) == before  # every refusal left the run as it was
    # Not completed (no summary), a plan below its rounds: the refusal named the plan "3"
    # as the run's own (a walk-through), not the flag that gave it.
    stopped = shutil.copytree(run, tmp_path / "stopped")
    (stopped / "summary.json").unlink()
    assert main(["ppo", "--resume", str(stopped), "--ppo.rounds", "1"]) == 2
    assert capsys.readouterr().err.endswith(
        "it has done 2 rounds, more than the 1 planned; --ppo.rounds takes 2 or more\n"
    )

    assert main(["ppo", "--resume", str(run), "--ppo.rounds", "3"]) == 0
    assert _rows(run) == _rows(straight)
    a, b = _policy(straight), _policy(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "config.json").read_text()) == json.loads(
        (straight / "config.json").read_text()
    )
    summary = json.loads((run / "summary.json").read_text())["ppo"]
    assert (summary["rounds_completed"], summary["rounds_planned"]) == (3, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "{path}"], "unknown key(s) ['ppo_epochs']"),
        (["--devices", "cuda:7"], "unknown or unavailable device 'cuda:7'; available: cpu"),
        (
            ["--ppo.n-envs", "1", "--epochs", "1"],
            "esper: error: env.epochs must be at least 2 for PPO (an episode",
        ),
        (["--envs", "3"], "--envs"),  # the old flags are gone, and say so
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ppo_epochs": 3}))
    out = tmp_path / "run"
    argv = ["ppo", "--preset", "tiny", "--out", str(out)]
    assert main(argv + [a.replace("{path}", str(bad)) for a in args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not out.exists()


def test_resume_errors(tmp_path, capsys) -> None:
    assert main(["ppo", "--resume", str(tmp_path)]) == 2
    assert "is not an Esper run directory" in capsys.readouterr().err
    assert main(["ppo", "--resume", str(tmp_path), "--ppo.n-envs", "3"]) == 2
    assert "drop --ppo.n-envs" in capsys.readouterr().err
    assert main(["ppo", "--resume", str(tmp_path), "--preset", "tiny"]) == 2
    assert "drop --preset" in capsys.readouterr().err
    assert main(["eval", "--task", "synthetic"]) == 2
    assert "eval needs --policy" in capsys.readouterr().err


def test_a_damaged_rounds_csv_is_refused_before_training(tmp_path, capsys) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "2", "--out", str(run)]) == 0
    summary = run / "summary.json"
    summary.write_text(summary.read_text().replace('"completed"', '"interrupted"'))
    lines = (run / "rounds.csv").read_text().splitlines()
    cells = lines[1].split(",")
    cells[ROUND_FIELDS.index("seconds_rollout")] = ""
    (run / "rounds.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    events = (run / "events.jsonl").read_text()
    capsys.readouterr()
    assert main(["ppo", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "rounds.csv" in err and "seconds_rollout" in err and "Traceback" not in err
    assert (run / "events.jsonl").read_text() == events  # nothing was started


def test_a_run_with_an_older_checkpoint_format_does_not_resume(tmp_path, capsys) -> None:
    """Format 2 stored one acting generator (format 3 derives them per round): such a run is
    refused in one line, nothing written; its policy still evaluates."""
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "2", "--out", str(run)]) == 0
    summary = run / "summary.json"
    summary.write_text(summary.read_text().replace('"completed"', '"interrupted"'))
    state = torch.load(_state_file(run), weights_only=False)
    buffer = io.BytesIO()
    torch.save({**state, "format": 2}, buffer)
    meta = record.read_meta(run)
    assert meta is not None
    for step in (1, 2):  # step 2 again, now as a format-2 checkpoint
        checkpoints.commit_checkpoint(run, step, {"state.pt": buffer.getvalue()}, meta.run_id)
    events = (run / "events.jsonl").read_text()
    capsys.readouterr()
    assert main(["ppo", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "checkpoint is format 2, and this Esper resumes format 3 only" in err[0]
    assert (run / "events.jsonl").read_text() == events
    args = ["eval", "--task", "synthetic", "--policy", str(run), "--seed", "100"]
    assert main([*args, "--out", str(tmp_path / "e")]) == 0


def test_garbage_checkpoints_are_one_line_errors(tmp_path, capsys) -> None:
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--out", str(run)]) == 0
    summary = run / "summary.json"
    summary.write_text(summary.read_text().replace('"completed"', '"interrupted"'))
    _state_file(run).write_bytes(b"not a checkpoint at all")
    capsys.readouterr()
    assert main(["ppo", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "state.pt" in err and "Traceback" not in err
    args = ["eval", "--task", "synthetic", "--out", str(tmp_path / "e")]
    assert main([*args, "--policy", str(run)]) == 2
    assert "state.pt" in capsys.readouterr().err
    assert main([*args, "--policy", str(run / "rounds.csv")]) == 2
    assert "is not an Esper PPO run directory" in capsys.readouterr().err
    assert main([*args, "--policy", str(run / "nothing")]) == 2  # as report and runs say it
    assert f"{str(run / 'nothing')!r} does not exist (a PPO run" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_a_round_without_finite_returns_leaves_them_out_of_the_summary(
    tmp_path, monkeypatch
) -> None:
    """A summary holds no NaN (its range checks refuse one): a round whose mean return and
    accuracy were not finite is summarised as not measured, not as a crash at the run's end."""
    original = PPOTrainer.run_round

    def not_finite(self: PPOTrainer):
        result = original(self)
        nan = float("nan")
        stats = replace(result.stats, mean_return=nan, mean_final_accuracy=nan)
        return replace(result, stats=stats)

    monkeypatch.setattr(PPOTrainer, "run_round", not_finite)
    run = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--out", str(run)]) == 0
    summary = record.read_summary(run)
    assert summary is not None and summary.ppo is not None
    ppo = summary.ppo
    assert (ppo.final_mean_return, ppo.best_mean_return, ppo.final_mean_accuracy) == (None,) * 3


def test_an_unknown_horizon_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    argv = ["ppo", "--preset", "tiny", "--ppo.horizon", "episode", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    expected = "unknown ppo.horizon 'episode'; accepted: ['truncation', 'termination']"
    assert expected in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_an_unset_budget_is_the_tasks_own_not_the_policys() -> None:
    """An unset setting resolves to the new task's default: the eval note named it as kept
    from the policy ("batches_per_epoch = all") where the task trains 25 batches."""
    from esper.cli.growth import _budget_note
    from esper.leyline.config import HostTraining
    from esper.tasks import resolve_training

    trained = resolve_training(HostTraining("digits_impaired"))
    assert trained.batches_per_epoch is None and trained.val_samples is None
    running = replace(trained, task="text_lm_impaired")
    assert resolve_training(running).batches_per_epoch != trained.batches_per_epoch
    note = _budget_note(trained, running, frozenset())
    assert note is None or "batches_per_epoch" not in note
    kept = _budget_note(replace(trained, epochs=5), replace(running, epochs=5), frozenset())
    assert kept is not None and kept.startswith(
        "esper eval: note: epochs = 5, batch_size = 64 come from"  # text's own: 32
    )
    named = frozenset({"epochs", "batch_size"})
    assert _budget_note(replace(trained, epochs=5), replace(running, epochs=5), named) is None
    # The batch size is the policy's too (64 on digits; fashion_mnist_impaired's own is 128),
    # and the note named only the other budget settings (adversarial sweep).
    fashion = replace(trained, task="fashion_mnist_impaired")
    note = _budget_note(trained, fashion, frozenset())
    assert note is not None and note.startswith("esper eval: note: batch_size = 64 come from")
    assert "the task fashion_mnist_impaired has batch_size = 128 (" in note
    # With --lr given, the task's own seed_lr is that lr, and the policy's is kept (review).
    faster = replace(fashion, lr=0.02, batch_size=128)
    note = _budget_note(trained, faster, frozenset({"lr", "batch_size"}))
    assert note is not None and note.startswith("esper eval: note: seed_lr = 0.003 come from")
    assert "the task fashion_mnist_impaired has seed_lr = 0.02 (" in note


def test_the_commands_printed_to_run_next_are_quoted_for_the_shell(
    tmp_path, capsys, monkeypatch
) -> None:
    """``esper ppo --out "runs/a b"`` printed ``esper eval --policy runs/a b``, and ``--out -x``
    ``esper eval --policy -x``, which read as a flag."""
    monkeypatch.chdir(tmp_path)
    for out, printed in (("a b", "'a b'"), ("-x", "./-x")):
        argv = ["ppo", "--preset", "tiny", "--ppo.rounds", "1", f"--out={out}"]
        assert main(argv) == 0
        hint = f"run the policy with: esper eval --policy {printed} --seed 2\n"
        assert hint in capsys.readouterr().out  # 2: the first seed no environment trained on
        command = shlex.split(hint.split(": ", 1)[1])  # the printed command runs as printed
        assert main([*command[1:], "--epochs", "2", "--out", "e"]) == 0
        shutil.rmtree("e")


def test_an_esper_ppo_config_given_to_eval_names_the_keys_it_does_not_take(
    tmp_path, capsys
) -> None:
    """A PPO run's config.json has a policy table (the network), which eval read as its policy
    run: "policy must be a PPO run directory (a string), got {'hidden': 32, ...}"."""
    ppo = tmp_path / "ppo"
    assert main(["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--out", str(ppo)]) == 0
    capsys.readouterr()
    out = tmp_path / "e"
    assert main(["eval", "--config", str(ppo / "config.json"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"esper: error: --config {str(ppo / 'config.json')!r}: unknown key(s) ['env', 'ppo', "
        "'reward', 'runtime'] in the top level; accepted: heuristic, knowledge, periodic, "
        "policy, seed, telemetry, training\n"
    )
    assert not out.exists()


def test_the_resume_flags_are_the_settings_a_resume_saves() -> None:
    """``esper ppo --resume`` took two flags named in cli/main.py, and saved two settings named
    in study/ppo.py, kept alike by hand; each flag now comes from the setting it sets."""
    from esper.cli.config import parse_flags
    from esper.cli.main import PPO_ON_RESUME
    from esper.leyline.config import PPO_RESUME_SETTINGS
    from esper.simic.config import TrainingConfig

    values = {"rounds": "7", "ray_address": "127.0.0.1:6379"}
    tiny = load_preset("tiny")
    base = replace(tiny, runtime=replace(tiny.runtime, workers=1))  # ray_address needs workers
    for flag, (section, key) in zip(PPO_ON_RESUME, PPO_RESUME_SETTINGS, strict=True):
        parsed = parse_flags(TrainingConfig, [flag, values[key]], "esper ppo", "", base)
        assert str(getattr(getattr(parsed, section), key)) == values[key]
        assert getattr(getattr(base, section), key) != getattr(getattr(parsed, section), key)
