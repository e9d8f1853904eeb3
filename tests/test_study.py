"""``esper study``: studies on Ray (local), resume, failures, matched widths, PPO arms, the
``trials`` view, and bad study files.

The Ray tests share one local Ray session (the driver joins a session this process runs), so
Ray and its workers start once for the module.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest
import torch

from esper.cli import study as cli_study
from esper.cli.main import EXIT_BAD_INPUT, EXIT_INTERRUPTED, main
from esper.leyline.config import HostTraining, read_config_file
from esper.leyline.trials import STUDY_FILE, TRIALS_DIR, TRIALS_FILE
from esper.nissa import checkpoints, record
from esper.study.checks import load_data
from esper.study.state import StudyState
from esper.tasks import host_param_count, matched_width, resolve_training

BUDGET = "epochs = 6\nbatches_per_epoch = 2\nval_samples = 128\n"
FAST = "reps = 100\n"  # coarse intervals: this file checks the flow, test_study_stats the numbers


def _study(tmp_path: Path, body: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _dry_run_of_a_copy(path: Path, capsys, changes: dict[str, str]) -> tuple[int, str]:
    """``esper study --dry-run`` of the study's trials copied into a new directory, through
    a copy of the study file with ``out`` pointing there and ``changes`` applied to its text:
    (exit code, what it printed). A moved study holds other paths in its trials' config.json
    (the study's knowledge store, the policies evaluated); a copy lacks ``study.json``."""
    copy = path.parent / "copy"
    if not copy.exists():
        shutil.copytree(path.parent / "out" / TRIALS_DIR, copy / TRIALS_DIR, symlinks=True)
    text = path.read_text().replace('out = "out"', 'out = "copy"')
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    code = main(["study", str(_study(path.parent, text, "copy.toml")), "--dry-run"])
    out, err = capsys.readouterr()
    return code, out + err


def _trials(directory: Path) -> list[dict[str, str]]:
    with (directory / TRIALS_FILE).open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray session for the module's studies (2 CPUs: this machine's cores)."""
    ray = pytest.importorskip("ray")
    # One logical GPU (this machine has none): trials ask for none unless a test says so.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _refused(*args: object) -> NoReturn:
    raise AssertionError(f"called with {args}")


def test_a_validation_study_scores_and_names_the_final_models_validation_accuracy(
    tmp_path, ray_session, capsys
):
    """``score = "validation"``: a study that chooses a setting ranks by the final model's
    validation accuracy (each run's summary: the oracle), and its results, report and start
    line say so; no test accuracy appears in what it writes. The score is part of the study:
    changing it later is refused."""
    body = (
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 2\nscore = "validation"\n{FAST}'
        f'[budget]\n{BUDGET}[[arms]]\nname = "static"\ncontroller = "static"\n'
    )
    path = _study(tmp_path, body)
    assert main(["study", str(path)]) == 0
    assert "2 trials, 0 already done, scored by validation accuracy ->" in capsys.readouterr().err
    out = tmp_path / "out"
    rows, tests = _trials(out), []
    for row in rows:
        g = record.read_summary(out / TRIALS_DIR / row["run"]).growth
        assert g is not None and g.test is not None and g.final_model_val_accuracy is not None
        assert float(row["score"]) == g.final_model_val_accuracy
        assert float(row["best_score"]) == g.best_val_accuracy
        tests.append(g.test.final_accuracy)
    assert [float(r["score"]) for r in rows] != tests  # not the test split's
    results = (out / "results.md").read_text()
    assert "Scores are validation accuracy (%) of the final model" in results
    assert "2 trials: 2 finished with a score" in results  # counted(): "1 trials" was said
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "<p>2 trials: 2 finished with a score" in page
    assert "<th>validation accuracy (%)</th>" in page and "Scores are validation accuracy" in page
    capsys.readouterr()
    sql = "SELECT DISTINCT scored_by FROM trials"
    assert main(["runs", "query", sql, "--runs", str(out), "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["scored_by", "validation"]
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "; scored by validation accuracy" in capsys.readouterr().out
    path.write_text(body.replace('"validation"', '"test"'))
    assert main(["study", str(path), "--dry-run"]) == EXIT_BAD_INPUT
    assert 'score: "validation" -> "test"' in capsys.readouterr().err


def test_study_runs_every_trial_then_resumes_without_rerunning(tmp_path, ray_session, capsys):
    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 3\n{FAST}[budget]\n{BUDGET}'
        '[[arms]]\nname = "static"\ncontroller = "static"\n'
        '[[arms]]\nname = "grow"\ncontroller = "periodic"\nperiod = 1\n',
    )
    assert main(["study", str(path)]) == 0
    out = tmp_path / "out"
    rows = _trials(out)
    assert sorted((r["arm"], int(r["seed"])) for r in rows) == [
        (arm, s) for arm in ("grow", "static") for s in (0, 1, 2)
    ]
    for row in rows:  # each row is its run's summary: test accuracy of the final model
        summary = record.read_summary(out / TRIALS_DIR / row["run"])
        assert summary is not None and summary.growth is not None and summary.growth.test
        assert float(row["score"]) == summary.growth.test.final_accuracy
        assert int(row["final_params"]) == summary.growth.param_count
        assert summary.seed == int(row["seed"]) and summary.task == "synthetic"
    grown = [int(r["final_params"]) for r in rows if r["arm"] == "grow"]
    static = [int(r["final_params"]) for r in rows if r["arm"] == "static"]
    assert min(grown) > max(static)  # the periodic arm grew
    results = (out / "results.md").read_text()
    assert "| synthetic | grow | 3 |" in results and "| synthetic | static | 3 |" in results
    assert (out / "interval_estimates.png").stat().st_size > 0
    # which code ran the trials: study.json records the invocation, results.md names it
    [invocation] = json.loads((out / STUDY_FILE).read_text())["invocations"]
    revision = record.code_record([])["git_revision"]
    assert invocation["git_revision"] == revision and invocation["versions"]["torch"]
    assert f"Esper's git revision: {revision} (study.json records" in results
    # Again: everything is done, nothing runs, nothing changes; what a driver killed while
    # writing its results left (a hidden temporary file) goes.
    logs = {p: p.read_bytes() for p in (out / TRIALS_DIR).glob("*/events.jsonl")}
    (out / ".results.md.tmp-k9").write_text("| half")
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:  # nothing to run: Ray is not joined
        patch.setattr(cli_study, "connect_ray", _refused)
        patch.setattr(cli_study, "trial_slots", _refused)
        assert main(["study", str(path)]) == 0
    assert "6 trials, 6 already done" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in logs} == logs
    assert len(json.loads((out / STUDY_FILE).read_text())["invocations"]) == 1  # none ran
    assert not (out / ".results.md.tmp-k9").exists()
    # The trials view of `esper runs query` reads the study.
    assert main(["runs", "query", "SELECT arm, count(*) FROM trials GROUP BY arm ORDER BY arm",
                 "--runs", str(out), "--format", "csv"]) == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines()[1:] == ["grow,3", "static,3"]
    assert main(["runs", "list", str(out)]) == 0  # a study directory lists its trials' runs
    listed = capsys.readouterr().out
    assert all(row["run"] in listed for row in rows)
    # A study directory that lost its study.json holds only what the study wrote: it carries
    # on (it was refused as "no study, but 'interval_estimates.png'", advice to start anew).
    saved = (out / STUDY_FILE).read_bytes()
    (out / STUDY_FILE).unlink()
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "6 trials, 0 to run" in capsys.readouterr().out
    (out / STUDY_FILE).write_bytes(saved)
    # Its trials in a directory without study.json: counted as done for the same settings,
    # refused for others (they counted as done, and study.json's check was not reached).
    code, printed = _dry_run_of_a_copy(path, capsys, {})
    assert code == 0 and "6 trials, 0 to run" in printed, printed
    code, printed = _dry_run_of_a_copy(path, capsys, {"epochs = 6": "epochs = 7"})
    assert code == EXIT_BAD_INPUT and len(printed.splitlines()) == 1, printed
    assert "is a run of other settings than the study gives trial" in printed
    assert "(run -> study: training.epochs: 6 -> 7)" in printed
    copied = tmp_path / "copy" / TRIALS_DIR
    # A finished trial whose log a system crash emptied (lines are flushed, not fsynced) is
    # still done: checking its summary against the log refused the whole study.
    log = copied / "synthetic.grow.seed1" / "events.jsonl"
    log.write_bytes(b"")
    code, printed = _dry_run_of_a_copy(path, capsys, {})
    assert code == 0 and "6 trials, 0 to run" in printed, printed
    summary = log.parent / "summary.json"  # ... but its summary must still be its own
    shutil.copyfile(copied / "synthetic.grow.seed0" / "summary.json", summary)
    code, printed = _dry_run_of_a_copy(path, capsys, {})
    assert code == EXIT_BAD_INPUT and len(printed.splitlines()) == 1, printed
    assert re.search(
        r"its summary.json is of the periodic run 'synthetic.grow.seed0-[0-9a-f]{8}', its "
        r"directory holds the periodic run 'synthetic.grow.seed1-[0-9a-f]{8}'",
        printed,
    )
    for name in ("events.jsonl", "summary.json"):
        shutil.copyfile(out / TRIALS_DIR / "synthetic.grow.seed1" / name, log.parent / name)
    # A trial's summary.json copied from another trial (its score was taken for the trial's).
    own = copied / "synthetic.grow.seed0" / "summary.json"
    shutil.copyfile(copied / "synthetic.grow.seed1" / "summary.json", own)
    before = own.read_bytes()
    code, printed = _dry_run_of_a_copy(path, capsys, {})
    assert code == EXIT_BAD_INPUT and len(printed.splitlines()) == 1, printed
    assert f"trial run {str(copied / 'synthetic.grow.seed0')!r}: " in printed
    assert "is the summary of another run (periodic run 'synthetic.grow.seed1-" in printed
    assert own.read_bytes() == before
    # Another arm's run in a trial's directory: a static run and a heuristic one differ in
    # no setting the check compares, and it was counted as the grown arm's.
    shutil.rmtree(own.parent)
    shutil.copytree(copied / "synthetic.static.seed0", own.parent)
    code, printed = _dry_run_of_a_copy(path, capsys, {})
    assert code == EXIT_BAD_INPUT and len(printed.splitlines()) == 1, printed
    assert re.search(
        f"{re.escape(repr(str(own.parent)))} holds the static run 'synthetic.static.seed0-"
        r"[0-9a-f]{8}', not trial synthetic.grow.seed0's periodic run: a run copied or linked in",
        printed,
    )
    # An unfinished run of other settings was resumed as it was, unchecked.
    for trial in copied.iterdir():
        if trial.name != "synthetic.static.seed1":
            shutil.rmtree(trial)
    (copied / "synthetic.static.seed1" / "summary.json").unlink()
    code, printed = _dry_run_of_a_copy(path, capsys, {"epochs = 6": "epochs = 7"})
    assert code == EXIT_BAD_INPUT and len(printed.splitlines()) == 1, printed
    assert "is a run of other settings than the study gives trial synthetic.static.seed1" in printed


def test_a_study_records_the_code_of_each_invocation_and_names_a_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """study.json recorded no revision: a study resumed at another commit mixed code in one
    table unseen (an independent check found one only through each trial's meta.json)."""
    state = StudyState({}, {}, {})
    assert state.revisions() is None
    monkeypatch.setattr(record, "_git_revision", lambda: "aaa")
    assert state.ran(["esper", "study", "s.toml"]) is None  # the first: nothing to compare
    assert state.ran(["esper", "study", "s.toml"]) is None
    monkeypatch.setattr(record, "_git_revision", lambda: "bbb")
    assert state.ran(["esper", "study", "s.toml"]) == "revision aaa -> bbb"
    assert state.revisions() == "aaa (2 invocations), then bbb (1 invocation)"
    assert [i["command"] for i in state.invocations] == [["esper", "study", "s.toml"]] * 3


def test_failing_trial_is_isolated_capped_and_retried_later(tmp_path, ray_session, capsys):
    body = (
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 2\nretries = RETRIES\n{FAST}'
        f"[budget]\n{BUDGET}"
        '[[arms]]\nname = "static"\ncontroller = "static"\n'
    )
    path = _study(tmp_path, body.replace("RETRIES", "1"))
    assert main(["study", str(path)]) == 0
    # Trial 1 unfinished, its last checkpoint damaged: every attempt to resume it fails. (A
    # place no attempt could use, such as a file, is refused before Ray starts: test_study_inputs.)
    run = tmp_path / "out" / TRIALS_DIR / "synthetic.static.seed1"
    (run / record.SUMMARY_FILE).unlink()
    root = run / record.CHECKPOINTS_DIR
    state_file = root / (root / checkpoints.LATEST_FILE).read_text().strip() / "state.pt"
    good = state_file.read_bytes()
    state_file.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    capsys.readouterr()
    assert main(["study", str(path)]) == 1
    err = capsys.readouterr().err
    assert "gave up synthetic.static.seed1 after 2 attempts" in err and "SHA-256 mismatch" in err
    assert "--out" not in err and "--resume" not in err  # a run command's advice
    state = json.loads((tmp_path / "out" / STUDY_FILE).read_text())
    assert state["attempts"] == {"synthetic.static.seed0": 1, "synthetic.static.seed1": 2}
    rows = {r["run"]: r for r in _trials(tmp_path / "out")}
    assert rows["synthetic.static.seed0"]["status"] == "completed"
    assert rows["synthetic.static.seed1"]["status"] == "failed"
    assert "SHA-256 mismatch" in rows["synthetic.static.seed1"]["error"]
    assert "SHA-256 mismatch" in (tmp_path / "out" / "results.md").read_text()
    # Out of attempts: the next invocation does not try again ...
    state_file.write_bytes(good)
    assert main(["study", str(path)]) == 1
    assert not (run / record.SUMMARY_FILE).exists()
    # ... until the cap is raised; then only the failed trial runs.
    path.write_text(body.replace("RETRIES", "3"))
    assert main(["study", str(path)]) == 0
    state = json.loads((tmp_path / "out" / STUDY_FILE).read_text())
    assert state["attempts"] == {"synthetic.static.seed0": 1, "synthetic.static.seed1": 3}
    assert {r["status"] for r in _trials(tmp_path / "out")} == {"completed"}


def test_static_matched_width_matches_the_grown_arms_median(tmp_path, ray_session, capsys):
    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 3\n{FAST}[budget]\n'
        f"{BUDGET.replace('epochs = 6', 'epochs = 8')}"
        '[[arms]]\nname = "grow"\ncontroller = "periodic"\nperiod = 1\n'
        '[[arms]]\nname = "matched"\ncontroller = "static-matched"\nmatch = "grow"\n',
    )
    assert main(["study", str(path)]) == 0
    rows = _trials(tmp_path / "out")
    target = statistics.median(int(r["final_params"]) for r in rows if r["arm"] == "grow")
    data = load_data(resolve_training(HostTraining("synthetic")))
    width = matched_width("synthetic", data, round(target))
    assert width != 4  # not the task's own width: the grown arm's size decides
    for row in (r for r in rows if r["arm"] == "matched"):
        config = read_config_file(tmp_path / "out" / TRIALS_DIR / row["run"] / "config.json")
        assert config["training"]["width"] == width
        assert int(row["final_params"]) == host_param_count("synthetic", data, width)
        for other in (width - 1, width + 1):  # no other width is nearer the target
            assert abs(host_param_count("synthetic", data, other) - target) >= abs(
                int(row["final_params"]) - target
            )
    code, printed = _dry_run_of_a_copy(path, capsys, {})  # each run's width is its own
    assert code == 0 and "6 trials, 0 to run" in printed, printed
    results = (tmp_path / "out" / "results.md").read_text()
    assert "| synthetic | matched | 3 |" in results
    # What the matched arm was sized to, and what it got (results.md showed neither).
    params = host_param_count("synthetic", data, width)
    assert f"| synthetic | matched | grow | {round(target):,} | {params:,} |" in results
    # Q1 compares the grown arm with the static arm of its size, whatever the arm is called.
    assert "Q1 does growing beat a static network per parameter? grow vs matched:" in results


def test_ppo_arm_trains_on_its_own_seeds_then_evaluates(tmp_path, ray_session, capsys):
    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 2\n{FAST}[budget]\n{BUDGET}'
        '[[arms]]\nname = "heuristic"\ncontroller = "heuristic"\n'
        '[[arms]]\nname = "ppo"\ncontroller = "ppo"\npreset = "tiny"\nreward = "simplified"\n'
        "training_seeds = [100]\n[arms.ppo.ppo]\nrounds = 1\n",
    )
    assert main(["study", str(path)]) == 0
    trials = tmp_path / "out" / TRIALS_DIR
    policy = trials / "synthetic.ppo.policy100"
    meta = record.read_meta(policy)
    assert meta is not None and meta.mode == "ppo"
    assert set(meta.seeds["environments"]) == {100, 101}  # never an evaluation seed (0, 1)
    ppo_config = read_config_file(policy / "config.json")
    assert ppo_config["reward"]["mode"] == "simplified" and ppo_config["ppo"]["rounds"] == 1
    for seed in (0, 1):
        config = read_config_file(trials / f"synthetic.ppo.seed{seed}" / "config.json")
        assert Path(config["policy"]) == policy.resolve()
        assert record.read_meta(trials / f"synthetic.ppo.seed{seed}").mode == "eval"
    results = (tmp_path / "out" / "results.md").read_text()
    assert "ppo vs heuristic" in results  # the second question's verdict line
    code, printed = _dry_run_of_a_copy(path, capsys, {})  # other policy and knowledge paths
    assert code == 0 and "5 trials (1 PPO policy training among them), 0 to run" in printed, printed
    # A policy training that Ray gave a GPU records that device (run_job): still this study's.
    copied = tmp_path / "copy" / TRIALS_DIR / "synthetic.ppo.policy100" / "config.json"
    config = json.loads(copied.read_text())
    config["runtime"]["devices"] = ["cuda:0"]
    copied.write_text(json.dumps(config))
    code, printed = _dry_run_of_a_copy(path, capsys, {})
    assert code == 0 and "5 trials (1 PPO policy training among them), 0 to run" in printed, printed
    code, printed = _dry_run_of_a_copy(path, capsys, {"rounds = 1": "rounds = 2"})
    assert code == EXIT_BAD_INPUT and "ppo.rounds: 1 -> 2" in printed, printed


def test_heuristic_arms_take_a_selector_and_a_strategy_and_learn_in_the_studys_store(
    tmp_path, ray_session
):
    from esper.nissa.knowledge import KnowledgeStore

    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 2\n{FAST}[budget]\n'
        f"{BUDGET.replace('epochs = 6', 'epochs = 14')}"
        '[[arms]]\nname = "ens"\ncontroller = "heuristic"\nselector = "thompson"\n'
        'strategy = "ensemble"\n',
    )
    assert main(["study", str(path)]) == 0
    out = tmp_path / "out"
    written = []
    for seed in (0, 1):
        run = out / TRIALS_DIR / f"synthetic.ens.seed{seed}"
        config = read_config_file(run / "config.json")
        assert config["heuristic"]["selector"] == "thompson"
        assert config["heuristic"]["strategy"] == "ensemble"
        assert config["training"]["shapley"] is True  # ensemble prunes by Shapley value
        assert config["knowledge"] == f"sqlite:///{(out / 'knowledge.sqlite').resolve()}"
        written += json.loads((run / "outcomes.json").read_text())
    with KnowledgeStore.open(f"sqlite:///{out / 'knowledge.sqlite'}") as store:
        assert len(store.outcomes()) == len(written) > 0  # every trial's seeds, in the study's


def test_a_trial_given_a_gpu_or_a_fraction_trains_on_cuda(ray_session, monkeypatch):
    """The placement logic on a CPU machine: Ray's logical GPU, no CUDA needed to decide."""
    from esper.simic.vector import parse_device
    from esper.study.job import trial_device

    def where(gpus: float) -> str:
        task = ray_session.remote(trial_device).options(num_cpus=1, num_gpus=gpus)
        return str(ray_session.get(task.remote()))

    assert [where(1), where(0.5), where(0)] == ["cuda:0", "cuda:0", "cpu"]
    assert str(trial_device()) == "cpu"  # the driver itself holds no GPU
    # a PPO trial puts that name in runtime.devices: a name the device parser accepts
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert parse_device(where(1)) == torch.device("cuda", 0)


def test_ctrl_c_before_the_first_trial_says_how_to_continue(tmp_path, capsys, monkeypatch):
    """Ctrl-C after the study directory was made but before the driver's own signal handling
    (while the statistics libraries load) ended in a bare "esper: interrupted", the directory
    left without a word on how to go on (a walk-through)."""
    from esper.cli import study

    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 1\n{FAST}[budget]\n{BUDGET}'
        '[[arms]]\nname = "s"\ncontroller = "static"\n',
    )
    stopped: list[bool] = []
    monkeypatch.setattr(study, "_join_ray", lambda address, directory: lambda: stopped.append(1))
    monkeypatch.setattr(study, "trial_slots", lambda resources: 1)

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "import_libraries", ctrl_c)
    assert main(["study", str(path)]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.rstrip().endswith(f"interrupted: continue with: esper study {path}"), err
    assert "esper: interrupted" not in err and stopped == [1]  # Ray was stopped all the same


def test_dry_run_lists_trials_and_cost_and_starts_nothing(tmp_path, capsys):
    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 2\n{FAST}[budget]\n{BUDGET}'
        '[[arms]]\nname = "grow"\ncontroller = "heuristic"\n'
        '[[arms]]\nname = "matched"\ncontroller = "static-matched"\nmatch = "grow"\n',
    )
    assert main(["study", str(path), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "timing epochs of synthetic's static host (2 batches each) ...\n" in err
    # 6 epochs: the heuristic arm never grows, and the matched one matches a static host
    assert "esper study: note: arm 'grow' on synthetic: a run of 6 epochs never germinates" in err
    # ... and says what a study can change: its epochs, not no_germinate_last_epochs (a
    # walk-through: a study file has no such key)
    assert "give it at least 14 epochs\n" in err and "no_germinate_last_epochs)" not in err
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:5]}
    assert out.splitlines()[0].split() == ["trial", "mode", "state"]  # the run's mode: a
    assert rows == {  # matched arm's trials were listed as "growth"
        **{f"synthetic.grow.seed{s}": "heuristic" for s in (0, 1)},
        **{f"synthetic.matched.seed{s}": "static" for s in (0, 1)},
    }
    assert "waits for synthetic.grow.seed0 and 1 more" in out
    assert "4 trials, 4 to run: 24 host epochs" in out
    assert "wall time: about " in out and "timed here now: synthetic " in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("cores", "grouped", "wall"),
    [(1, 1, "8 min"), (2, 1, "5 min"), (4, 1, "5 min"), (1, 2, "6 min"), (2, 2, "3 min")],
)
def test_dry_run_wall_time_is_the_longer_of_shared_cores_and_the_longest_chain(
    tmp_path, capsys, monkeypatch, cores, grouped, wall
):
    """10 s per static-host epoch: 2 static trials of 6 epochs, a policy training of 2 rounds ×
    2 environments × 6 epochs, then 2 evaluations of 6 epochs: 480 s in all, 300 s of them in
    a row (the training, then an evaluation). With the host trained in groups of 2 at 5 s per
    environment the training takes 120 s: 360 s in all, 180 s in a row."""
    from esper.cli import study

    epoch = study._Epoch(1e9, 10.0, 10.0 / grouped, grouped)
    per_host = {("synthetic", None): epoch}  # the task's host
    monkeypatch.setattr(study, "_static_epoch", lambda spec, tasks, timed: per_host)
    monkeypatch.setattr(study, "usable_cores", lambda: cores)
    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 2\n[budget]\n{BUDGET}'
        '[[arms]]\nname = "static"\ncontroller = "static"\n'
        '[[arms]]\nname = "ppo"\ncontroller = "ppo"\npreset = "tiny"\ntraining_seeds = [100]\n'
        "[arms.ppo.ppo]\nrounds = 2\nn_envs = 2\nminibatches = 1\n",
    )
    assert main(["study", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "48 host epochs" in out
    assert f"wall time: about {wall} or more on this machine's {cores} core(s)" in out
    shown = "in groups of" in out  # the PPO training's environments train in groups
    assert shown == (grouped > 1) and "per environment of a PPO training" in out


def test_a_dry_run_without_ppo_says_nothing_of_environments(tmp_path, capsys) -> None:
    """Every dry run said "one static-host epoch per environment ... (0.0104 s in groups of
    4)", a PPO training's grouping, with no PPO arm (a walk-through)."""
    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 1\n[budget]\n{BUDGET}'
        '[[arms]]\nname = "static"\ncontroller = "static"\n',
    )
    assert main(["study", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "one static-host epoch per trial, timed here now: synthetic " in out
    assert "environment" not in out and "groups of" not in out


def test_dry_run_times_part_of_a_long_epoch_and_scales_it(tmp_path, capsys, monkeypatch):
    """batches_per_epoch = 10000000 made the dry run time whole epochs of that: hours. It
    times MAX_TIMED_BATCHES (here 3) of them with that share of the validation samples and
    scales the time to the budget. On a clock where a batch takes 1 s and a validation
    sample 0.5 s, 300 batches and 200 samples take 400 s, alone or in a group."""
    from esper.cli import study
    from esper.study.spec import read_study
    from esper.tolaria import episode

    monkeypatch.setattr(study, "MAX_TIMED_BATCHES", 3)
    budget = "epochs = 2\nbatches_per_epoch = 300\nval_samples = 200\n"
    body = f'out = "out"\ntasks = ["synthetic"]\nseeds = 1\n[budget]\n{budget}'
    path = _study(tmp_path, body + '[[arms]]\nname = "static"\ncontroller = "static"\n')
    clock, timed = [0.0], []

    def epochs(episodes, chunk):  # the dry run imports it where it times
        timed.append([(e.training.batches_per_epoch, e.training.val_samples) for e in episodes])
        clock[0] += sum(b * 1.0 + v * 0.5 for b, v in timed[-1])

    monkeypatch.setattr(episode, "reset_together", epochs)
    monkeypatch.setattr(study, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    spec, _ = read_study(path)
    epoch = study._static_epoch(spec, ["synthetic"], timed=True)[("synthetic", None)]
    assert timed and all(set(parts) == {(3, 2)} for parts in timed), timed
    assert epoch.seconds == pytest.approx(400.0) and epoch.grouped == pytest.approx(400.0)
    assert "(3 of 300 batches each, scaled) ..." in capsys.readouterr().err


def test_dry_run_does_not_time_cpu_epochs_for_gpu_trials(tmp_path, capsys, monkeypatch):
    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 2\n[budget]\n{BUDGET}'
        '[resources]\ngpus = 1\n[[arms]]\nname = "static"\ncontroller = "static"\n',
    )
    # Without a GPU a local study refuses up front (it passed, and the real run refused once
    # Ray had started); a cluster (--address) may have GPUs this machine lacks.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["study", str(path), "--dry-run"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == (
        "esper: error: resources.gpus = 1, but this machine has 0 CUDA GPU(s): one trial would "
        "wait forever; ask for at most 0 (or join a cluster with --address)\n"
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "wall time: not estimated for trials on GPUs" in capsys.readouterr().out


ARMS = '[[arms]]\nname = "static"\ncontroller = "static"\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('out = "o"\ntasks = ["synthetic"]\n[[arms]]\nname = "a"\ncontroller = "magic"\n',
         "controller must be one of static, static-matched"),
        (f'out = "o"\ntasks = ["mnist"]\n{ARMS}', "unknown task 'mnist'; known tasks:"),
        (f'out = "o"\ntasks = ["synthetic"]\ncolour = 1\n{ARMS}', "unknown key(s) ['colour']"),
        (f'out = "o"\ntasks = ["synthetic"]\nseeds = 0\n{ARMS}', "seeds must be an integer in [1"),
        (f'out = "o"\ntasks = ["synthetic"]\n[budget]\nepoch = 3\n{ARMS}',
         "unknown key(s) ['epoch']"),
        ('out = "o"\ntasks = ["synthetic"]\n[[arms]]\nname = "s"\ncontroller = "static"\n'
         "period = 2\n", "arm 's' (static) takes width; drop ['period']"),
        ('out = "o"\ntasks = ["synthetic"]\n[[arms]]\nname = "m"\ncontroller = "static-matched"\n'
         'match = "nobody"\n', "match = 'nobody' must name a growing arm"),
        ('out = "o"\ntasks = ["synthetic"]\nseeds = 3\n[[arms]]\nname = "p"\n'
         'controller = "ppo"\npreset = "tiny"\ntraining_seeds = [1]\n',
         "overlapping the evaluation seeds at [1, 2]"),
        # 2273207702 = 1 - 1000003⁻¹ mod 2³²: evaluation seed 1's episode has the CPU seed of
        # round 2's episode of environment 2273207702 (seeding.replayed_episode; a walk-through)
        ('out = "o"\ntasks = ["synthetic"]\nseeds = 3\n[[arms]]\nname = "p"\n'
         'controller = "ppo"\npreset = "tiny"\ntraining_seeds = [2273207702]\n',
         "arm 'p': evaluation seed 1 replays episode 2 of training environment 2273207702"),
        ('out = "o"\ntasks = ["synthetic"]\n[[arms]]\nname = "p"\ncontroller = "ppo"\n'
         'training_seeds = [50]\n[arms.ppo.env]\nepochs = 3\n', "host training comes from"),
        ('out = "o"\ntasks = ["synthetic"\n', "cannot read config file"),
        ('out = "o"\ntasks = ["synthetic"]\n[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
         'selector = "greedy"\n', "arm 'h': unknown selector 'greedy'; accepted: rotation"),
        ('out = "o"\ntasks = ["synthetic"]\n[[arms]]\nname = "p"\ncontroller = "periodic"\n'
         'strategy = "replace"\n',
         "arm 'p' (periodic) takes auto_advance, period; drop ['strategy']"),
        (f'out = "o"\ntasks = ["synthetic"]\nknowledge = "mysql://x/y"\n{ARMS}', "mysql://x/y"),
    ],
)  # fmt: skip
def test_bad_study_file_is_one_line_exit_2_nothing_made(tmp_path, capsys, body, message):
    path = _study(tmp_path, body)
    assert main(["study", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_unreachable_ray_address_is_one_line_and_starts_nothing(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a free port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a heuristic arm too short to grow: its note comes once the study starts, not before
    # this one-line error
    short = '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
    path = _study(tmp_path, f'out = "o"\ntasks = ["synthetic"]\n{ARMS}{short}')
    for address, message in (
        (f"127.0.0.1:{port}", f"cannot reach a Ray cluster at --address 127.0.0.1:{port}"),
        ("nowhere", "--address must be HOST:PORT"),
        (f"{'a' * 64}.x:6390", "--address must be HOST:PORT"),  # idna's UnicodeError got out
        ("hé.x:6390", "--address must be HOST:PORT"),
    ):
        assert main(["study", str(path), "--address", address]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_a_study_file_named_like_the_state_file_is_one_line(tmp_path, capsys):
    """Its directory looked like a study's: "out ... lies inside the study directory"."""
    path = _study(tmp_path, '{"out": "out", "tasks": ["synthetic"], "arms": []}', STUDY_FILE)
    assert main(["study", str(path), "--dry-run"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.endswith("give the study file another name (e.g. study.toml)"), err
    assert len(err.splitlines()) == 1 and sorted(tmp_path.iterdir()) == [path]


def test_missing_study_file(tmp_path, capsys):
    assert main(["study", str(tmp_path / "none.toml")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "studies").glob("*.toml")))
def test_shipped_study_files_are_valid(path):
    from esper.study.plan import plan
    from esper.study.spec import read_study

    spec, directory = read_study(path)
    assert directory.parent.name == "runs"  # studies write under runs/ (git-ignored)
    policies = sum(len(arm.training_seeds) for arm in spec.arms)  # PPO runs trained too
    assert len(plan(spec)) == len(spec.tasks) * (len(spec.arms) * spec.seeds + policies)


def test_plan_submits_what_waits_for_nothing_first(tmp_path):
    """A PPO policy training used to come first: on two cores hours of it ran before any
    static or heuristic trial, so a study stopped early held no answer at all."""
    from esper.study.plan import plan
    from esper.study.spec import read_study

    policy = tmp_path / "policy"
    tiny = ["--epochs", "2", "--batches-per-epoch", "2", "--val-samples", "128"]
    ppo = ["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--seed", "500", *tiny]
    assert main([*ppo, "--out", str(policy)]) == 0

    path = tmp_path / "s.toml"
    path.write_text(
        'out = "o"\ntasks = ["synthetic"]\nseeds = 2\n'
        '[[arms]]\nname = "m"\ncontroller = "static-matched"\nmatch = "h"\n'
        '[[arms]]\nname = "p"\ncontroller = "ppo"\ntraining_seeds = [100]\n'
        '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
        '[[arms]]\nname = "s"\ncontroller = "static"\n'
        f'[[arms]]\nname = "e"\ncontroller = "ppo"\npolicy = "{policy}"\n'
    )
    spec, _ = read_study(path)
    order = [(t.arm, t.kind) for t in plan(spec)]
    assert order == [
        ("h", "growth"), ("h", "growth"), ("s", "growth"), ("s", "growth"),
        ("e", "growth"), ("e", "growth"),  # evaluates a policy it need not train
        ("p", "policy"), ("p", "growth"), ("p", "growth"), ("m", "growth"), ("m", "growth"),
    ]  # fmt: skip


def _driver(tmp_path: Path, body: str, say: Callable[[str], None] = lambda _: None) -> Any:
    """The ``StudyDriver`` of the study ``body`` (written to ``tmp_path/s.toml``), its
    directory made."""
    from esper.study.execute import StudyDriver
    from esper.study.spec import read_study

    path = tmp_path / "s.toml"
    path.write_text(body)
    spec, directory = read_study(path)
    directory.mkdir()
    return StudyDriver(spec, directory, say)


class _Ray:
    """The part of Ray the study driver uses, finishing trials in submission order at once;
    it records what was submitted and how many trials were running then."""

    exceptions = SimpleNamespace(RayError=RuntimeError)

    def __init__(self) -> None:
        self.submitted: list[tuple[str, int]] = []
        self.running: list[str] = []
        self.jobs: dict[str, Any] = {}  # trial name -> its job

    def remote(self, function):  # ray.remote(run_job).options(...).remote(job)
        ray = self

        class Handle:
            def options(self, **_: object) -> Handle:
                return self

            def remote(self, job):
                ray.running.append(job.trial.name)
                ray.submitted.append((job.trial.name, len(ray.running)))
                ray.jobs[job.trial.name] = job
                return job.trial.name

        return Handle()

    def wait(self, refs, num_returns):
        first = next(r for r in self.running if r in refs)
        self.running.remove(first)
        return [first], []

    def get(self, ref):
        from esper.leyline.trials import TrialRow

        task, arm, seed = ref.split(".")
        if not seed.startswith("seed"):
            return None  # a policy training has no row
        return TrialRow(task, arm, int(seed.removeprefix("seed")), "completed", 50.0, 50.0,
                        600, 600, 1.0, 1.0, None)  # fmt: skip


class _RayStopped(_Ray):
    """Ray with two trials running when Ctrl-C arrives; the first runs to its end before its
    cancel takes (in the driver's wait for the cancelled trials)."""

    def __init__(self, damage: bool = False) -> None:
        super().__init__()
        self.damage = damage  # leave the finished trial's summary.json unreadable

    def wait(self, refs, num_returns, timeout=None):
        if timeout is None:
            raise KeyboardInterrupt  # the study's Ctrl-C, while it waits for a trial
        from esper.study.job import run_job

        job = self.jobs[refs[0]]
        run_job(job)  # it finished; the other stopped at its checkpoint
        if self.damage:
            (Path(job.directory) / "summary.json").write_text("{")
        return refs[:1], refs[1:]

    def cancel(self, ref) -> None:
        pass


class _RayCancelled(_Ray):
    """Ray that takes cancels, and has nothing left to wait for once they are sent."""

    def wait(self, refs, num_returns, timeout=None):
        return ([], list(refs)) if timeout is not None else super().wait(refs, num_returns)

    def cancel(self, ref) -> None:
        pass


def test_a_trial_whose_job_a_signal_caught_being_built_is_not_finished(tmp_path, monkeypatch):
    """Ctrl-C while a static-matched trial's job was built (its data loading) took it out of
    the trials waiting before it was running: the results so far said one trial fewer was not
    finished, or 0 and no "so far" at all (a walk-through)."""
    from esper.nissa.stopping import Stop

    driver = _driver(
        tmp_path,
        'out = "o"\ntasks = ["synthetic"]\nseeds = 1\n'
        "[budget]\nepochs = 2\nbatches_per_epoch = 2\nval_samples = 128\n"
        '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
        '[[arms]]\nname = "m"\ncontroller = "static-matched"\nmatch = "h"\n',
    )
    job = driver.job

    def interrupted(trial):  # the heuristic's is built; the matched one's meets a Ctrl-C
        if trial.arm == "m":
            raise KeyboardInterrupt
        return job(trial)

    monkeypatch.setattr(driver, "job", interrupted)
    with pytest.raises(Stop):
        driver._loop(_RayCancelled(), 2)
    assert driver.stopped is not None
    assert driver.stopped.pending == ["synthetic.m.seed0"]
    assert [name for name, _ in driver.stopped.rows] == ["synthetic.h.seed0"]


def test_results_so_far_count_a_trial_that_finished_as_the_study_stopped(tmp_path):
    """The interrupted study's results said "2 trial(s) not finished" and left out the one that
    finished during the wait for the cancelled trials; its resume then found it done (a
    walk-through)."""
    from esper.nissa.stopping import Stop

    said: list[str] = []
    driver = _driver(
        tmp_path,
        'out = "o"\ntasks = ["synthetic"]\nseeds = 2\n'
        "[budget]\nepochs = 2\nbatches_per_epoch = 2\nval_samples = 128\n"
        '[[arms]]\nname = "s"\ncontroller = "static"\n',
        said.append,
    )
    with pytest.raises(Stop):
        driver._loop(_RayStopped(), 2)
    assert driver.stopped is not None
    assert driver.stopped.pending == ["synthetic.s.seed1"]
    [(name, row)] = driver.stopped.rows
    assert (name, row.status) == ("synthetic.s.seed0", "completed") and row.score is not None
    # it was counted silently
    assert said == [f"done synthetic.s.seed0: {row.score:.2f}% test accuracy"]
    trials_csv = list(csv.DictReader((driver.directory / TRIALS_FILE).open()))
    assert [(r["arm"], r["seed"], r["status"]) for r in trials_csv] == [("s", "0", "completed")]
    # A run it cannot read is not finished (the resume will say why); the results are written.
    (tmp_path / "damaged").mkdir()
    driver = _driver(tmp_path / "damaged", (tmp_path / "s.toml").read_text())
    with pytest.raises(Stop):
        driver._loop(_RayStopped(damage=True), 2)
    assert driver.stopped is not None and driver.stopped.rows == []
    assert driver.stopped.pending == ["synthetic.s.seed0", "synthetic.s.seed1"]
    assert (driver.directory / TRIALS_FILE).exists()


def test_dry_run_counts_what_an_interrupted_trial_has_left(tmp_path, capsys):
    """A trial stopped after epoch 2 of 6 was listed "to run" and counted at its 6 epochs."""
    from esper.nissa.checkpoints import LATEST_FILE
    from esper.nissa.stopping import Stop

    body = f'out = "o"\ntasks = ["synthetic"]\nseeds = 2\n{FAST}[budget]\n{BUDGET}'
    body += '[[arms]]\nname = "s"\ncontroller = "static"\n'
    driver = _driver(tmp_path, body)
    with pytest.raises(Stop):
        driver._loop(_RayStopped(), 2)  # seed 0 ran to its end; make it stopped at epoch 2
    run = driver.directory / "trials" / "synthetic.s.seed0"
    (run / "summary.json").unlink()
    (run / "checkpoints" / LATEST_FILE).write_text("step-00000002\n")
    assert main(["study", str(tmp_path / "s.toml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"synthetic\.s\.seed0 +static +to resume after epoch 2 of 6\n", out), out
    assert re.search(r"synthetic\.s\.seed1 +static +to run\n", out), out
    assert "2 trials, 2 to run: 10 host epochs" in out
    # While a study (or a resume) runs it: "running now", not "to resume" (a walk-through's
    # --dry-run beside a live study listed the trials it was running as waiting to resume).
    from esper.nissa.record import lock_run

    held = lock_run(run)
    assert held is not None
    try:
        assert main(["study", str(tmp_path / "s.toml"), "--dry-run"]) == 0
    finally:
        os.close(held)
    out = capsys.readouterr().out
    assert re.search(r"synthetic\.s\.seed0 +static +running now: epoch 2 of 6 checkpointed\n", out)
    assert "2 trials, 2 to run (1 running now: another process runs them): 10 host epochs" in out


@pytest.mark.parametrize("capacity", [1, 2, None])
def test_a_driver_with_capacity_runs_growth_trials_before_policy_trainings(tmp_path, capacity):
    """A static-matched arm became ready once the heuristic had finished and queued behind hours
    of PPO training on two cores; the driver now keeps ``capacity`` trials submitted and picks
    growth trials first (None: everything ready at once, for a cluster that may grow)."""

    ray = _Ray()
    driver = _driver(
        tmp_path,
        'out = "o"\ntasks = ["synthetic"]\nseeds = 2\n'
        '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
        '[[arms]]\nname = "p"\ncontroller = "ppo"\ntraining_seeds = [100]\n'
        '[[arms]]\nname = "m"\ncontroller = "static-matched"\nmatch = "h"\n',
    )
    driver._loop(ray, capacity)  # the stand-in finishes the policy without a run to evaluate
    order = [n.split(".")[1] + (".policy" if "policy" in n else "") for n, _ in ray.submitted]
    most = max(n for _, n in ray.submitted)
    # The matched arm is ready once both heuristic trials have finished; a free slot before
    # that takes the policy rather than stay idle.
    expected = {
        None: (["h", "h", "p.policy", "m", "m"], 3),
        1: (["h", "h", "m", "m", "p.policy"], 1),
        2: (["h", "h", "p.policy", "m", "m"], 2),
    }
    assert (order, most) == expected[capacity]


def test_pending_follows_the_trials_as_they_finish(tmp_path):
    """``pending`` (what the driver's readiness and the dry run's "waits for" read) is kept per
    (task, arm) instead of scanning every trial per static-matched trial: it must still equal
    the scan, on two tasks, at every finished trial."""

    driver = _driver(
        tmp_path,
        'out = "o"\ntasks = ["synthetic", "digits"]\nseeds = 3\n'
        '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
        '[[arms]]\nname = "p"\ncontroller = "ppo"\ntraining_seeds = [100]\n'
        '[[arms]]\nname = "m"\ncontroller = "static-matched"\nmatch = "h"\n',
    )
    seen = []

    def scan(trial) -> list[str]:
        if trial.arm == "m":
            group = [t for t in driver.trials if t.task == trial.task and t.arm == "h"]
        elif trial.arm == "p" and trial.kind == "growth":
            group = [t for t in driver.trials if t.task == trial.task and t.kind == "policy"]
        else:
            group = []
        return [t.name for t in group if t.name not in driver.done]

    def check(line: str) -> None:
        seen.append(line)
        for trial in driver.trials:
            assert list(driver.pending(trial)) == scan(trial), (line, trial.name)
            assert driver.ready(trial) == (not scan(trial))

    check("start")
    assert list(driver.pending(driver.trials[-1])) == [
        f"digits.h.seed{s}" for s in range(3)
    ]  # the last trial: digits's matched arm, waiting for its task's heuristic only
    driver.say = check
    driver._loop(_Ray(), 1)  # the stand-in trains no policy: the ppo arm's trials give up
    assert driver.done == {t.name for t in driver.trials if t.arm != "p" or t.kind == "policy"}
    assert sum(line.startswith("done ") for line in seen) == len(driver.done)


@pytest.mark.parametrize("capacity", [1, None])
def test_a_trial_whose_job_cannot_be_built_leaves_nothing_unsubmitted(tmp_path, capacity):
    """With one slot, a trial that failed before it was submitted (its policy run missing) ended
    the study with ready trials never tried and the failed one's attempts unused."""

    lines: list[str] = []
    driver = _driver(
        tmp_path,
        'out = "o"\ntasks = ["synthetic"]\nseeds = 2\nretries = 1\n'
        '[[arms]]\nname = "p"\ncontroller = "ppo"\ntraining_seeds = [100]\n',
        lines.append,
    )
    outcome = driver._loop(_Ray(), capacity)  # the stand-in makes no policy run to evaluate
    assert outcome.pending == []
    assert sorted(outcome.failed) == ["synthetic.p.seed0", "synthetic.p.seed1"]
    assert driver.state.attempts == {"synthetic.p.policy100": 1, **dict.fromkeys(outcome.failed, 2)}
    assert sum(line.startswith("gave up synthetic.p.seed") for line in lines) == 2


def test_trials_that_cannot_be_read_are_not_taken_for_missing(tmp_path) -> None:
    """With ``trials/`` unreadable, every finished trial was taken for not started: the study
    ran each again, failed it on every attempt and rewrote its results with failures."""
    import subprocess
    import sys

    from conftest import unprivileged

    path = _study(
        tmp_path,
        f'out = "out"\ntasks = ["synthetic"]\nseeds = 1\n{FAST}[budget]\n{BUDGET}'
        '[[arms]]\nname = "s"\ncontroller = "static"\n',
    )
    trials = tmp_path / "out" / TRIALS_DIR
    trials.mkdir(parents=True, mode=0o000)
    try:
        done = subprocess.run(
            [*unprivileged(), sys.executable, "-m", "esper", "study", str(path), "--dry-run"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        trials.chmod(0o755)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "trial synthetic.s.seed0: " in done.stderr and "cannot be read" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [TRIALS_DIR]


def test_results_that_change_under_a_written_report_say_it_is_of_earlier_ones(tmp_path, capsys):
    """After a resume the study report still said "results so far … 12 not finished" beside a
    finished results.md, and nothing said so (a walk-through)."""
    from esper.leyline.trials import TrialRow
    from esper.study.execute import Outcome
    from esper.study.spec import read_study

    body = f'out = "o"\ntasks = ["synthetic"]\nseeds = 2\n{FAST}[budget]\n{BUDGET}'
    spec, directory = read_study(
        _study(tmp_path, body + '[[arms]]\nname = "s"\ncontroller = "static"\n')
    )

    def outcome(*seeds: int) -> Outcome:
        rows = [TrialRow("synthetic", "s", seed, "completed", 50.0 + seed, None, 10, 10, 1.0,
                         1.0, None) for seed in seeds]  # fmt: skip
        return Outcome([(f"synthetic.s.seed{row.seed}", row) for row in rows], {}, [])

    cli_study._write_results(spec, directory, outcome(0), unfinished=1)  # interrupted
    (directory / record.REPORT_FILE).write_text("<html>results so far</html>")  # esper report
    capsys.readouterr()
    cli_study._write_results(spec, directory, outcome(0, 1))  # resumed to the end
    hint = f"{directory / record.REPORT_FILE} shows the results before these: `esper report"
    assert hint in capsys.readouterr().err
    cli_study._write_results(spec, directory, outcome(0, 1))  # the same results: no word
    assert capsys.readouterr().err == ""
    (directory / record.REPORT_FILE).unlink()  # no report: nothing to say
    cli_study._write_results(spec, directory, outcome(0))
    assert capsys.readouterr().err == ""
