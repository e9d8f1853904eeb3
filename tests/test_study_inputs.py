"""``esper study`` against a new user's mistakes: bad study files and flags (one line, exit 2,
nothing made), where the study may live, a second driver, relative policies, retry counting
across interruptions, and SIGTERM.

Only the last test starts Ray (in a child process, as a user would); the driver's loop is
otherwise driven through a stand-in for the ``ray`` module.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import trains_on_after_its_first_read, unprivileged
from esper.cli.main import EXIT_BAD_INPUT, EXIT_INTERRUPTED, main
from esper.leyline.config import MAX_SEED, UserError
from esper.leyline.trials import (
    KNOWLEDGE_FILE,
    STUDY_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
    read_trials,
)
from esper.nissa import checkpoints, record
from esper.nissa.knowledge import KnowledgeStore, parse_url
from esper.nissa.stopping import Stop
from esper.study.checks import changed_settings
from esper.study.execute import EVAL_DERIVED, StudyDriver, study_lock
from esper.study.job import Job, run_job, trial_row
from esper.study.plan import Trial, growth_config
from esper.study.spec import ArmSpec, StudySpec, ppo_config, read_study, store_url
from esper.study.state import StudyState, study_settings

HEAD = 'out = "o"\ntasks = ["synthetic"]\nreps = 100\n'
BUDGET = "[budget]\nepochs = 2\nbatches_per_epoch = 2\nval_samples = 128\n"
STATIC = '[[arms]]\nname = "s"\ncontroller = "static"\n'
PPO = '[[arms]]\nname = "p"\ncontroller = "ppo"\ntraining_seeds = [100]\n'


def _study(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "study.toml"
    path.write_text(body)
    return path


def _bad(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``esper`` expecting exit 2 with one line on stderr; return that line."""
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished static run and a one-round PPO run (tiny budgets), made once."""
    root = tmp_path_factory.mktemp("runs")
    tiny = ["--epochs", "2", "--batches-per-epoch", "2", "--val-samples", "128"]
    static = ["static", "--task", "synthetic", "--seed", "3", *tiny, "--out", str(root / "static")]
    assert main(static) == 0
    ppo = ["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--seed", "500", *tiny]
    assert main([*ppo, "--out", str(root / "ppo")]) == 0
    return {"static": root / "static", "ppo": root / "ppo"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # A [resources] table states only what it changes (it used to need both keys).
        # ... not "resources: resources.cpus must be ..."
        (f"{HEAD}{STATIC}[resources]\ncpus = 0\n", "': resources.cpus must be a number in [0.0001"),
        (f"{HEAD}{STATIC}[resources]\ngpus = -1\n", "resources.gpus must be a number in [0.0"),
        # The whole list was shown, the repeated name somewhere in it.
        (f'out = "o"\ntasks = ["synthetic", "digits", "synthetic"]\n{STATIC}',
         "tasks repeat ['synthetic']; give each task once"),
        (f"{HEAD}{STATIC}{STATIC}", "arm names repeat ['s'] (case aside: trial directories"),
        (HEAD + STATIC + STATIC.replace('"s"', '"S"'), "arm names repeat ['S', 's'] (case"),
        # Ray refused an amount below its unit after the study directory was made: a traceback.
        (f"{HEAD}{STATIC}[resources]\ncpus = 1e-300\n",
         "resources.cpus must be a number in [0.0001, 1024.0], got 1e-300"),
        (f"{HEAD}{STATIC}[resources]\ngpus = 0.00001\n",
         "resources.gpus must be 0 or a number in [0.0001, 64.0], got 1e-05"),
        # Training settings of an arm that evaluates a given policy were silently ignored.
        (f'{HEAD}[[arms]]\nname = "p"\ncontroller = "ppo"\npolicy = "x"\npreset = "tiny"\n'
         '[arms.ppo.ppo]\nrounds = 3\n',
         "arm 'p': preset, ppo set how the arm's policies train; with policy = a trained run"),
        # A third policy was trained that no trial of two evaluation seeds would run.
        (f"seeds = 2\n{HEAD}{PPO.replace('[100]', '[100, 200, 300]')}",
         "arm 'p': 3 training_seeds for 2 evaluation seeds: no trial would evaluate the "
         "policies of [300]; give at most 2"),
        # budget.threads was silently replaced by resources.cpus.
        (f"{HEAD}{BUDGET}threads = 2\n{STATIC}", "budget may not set threads: resources.cpus"),
        (f"{HEAD}{STATIC}[task_budgets.synthetic]\nthreads = 2\n",
         "task_budgets.synthetic may not set threads"),
        (f"{HEAD}{STATIC}[task_budgets.synthetic]\nepoch = 2\n",
         "task_budgets.synthetic: unknown key(s) ['epoch']; accepted: epochs, batch_size,"),
        # the accepted keys named task and threads, which a budget may not set
        (f"{HEAD}{BUDGET}bogus = 1\n{STATIC}", "budget: unknown key(s) ['bogus']; accepted: "
         "epochs, batch_size, batches_per_epoch, val_samples, lr, seed_lr, weight_decay, "
         "precision, slots, width, shapley, auto_advance, data_dir, download"),
        (f"{HEAD}{STATIC}[task_budgets.digits]\nepochs = 2\n",
         "task_budgets name tasks ['digits'] the study lacks; tasks: ['synthetic']"),
        # A repeated training seed planned one PPO run twice into one directory.
        (f"{HEAD}{PPO.replace('[100]', '[100, 100]')}", "training_seeds repeat [100]"),
        # runtime.devices put a trial on a device Ray did not give it; workers nested Ray.
        (f"{HEAD}{PPO}[arms.ppo.runtime]\ndevices = [\"cuda:7\"]\n",
         "ppo may not set ['runtime.devices']"),
        (f"{HEAD}{PPO}[arms.ppo.runtime]\nworkers = 2\n", "ppo may not set ['runtime.workers']"),
        # the accepted keys named env and telemetry, which an arm's ppo table may not set
        (f"{HEAD}{PPO}[arms.ppo]\nbogus = 1\n", "arm 'p': ppo: unknown key(s) ['bogus']; "
         "accepted: policy, ppo, reward, runtime (of runtime only amp)"),
        (f"{HEAD}{STATIC}auto_advance = true\n",
         "arm 's' (static) takes width; drop ['auto_advance']"),
        (f'{HEAD}[[arms]]\nname = "p"\ncontroller = "ppo"\npolicy = "x"\nauto_advance = true\n',
         "auto_advance comes from the policy's own run"),
        (f'{HEAD}{PPO}reward = "bogus"\n',
         "arm 'p': unknown reward 'bogus'; accepted: shaped, simplified, sparse"),
        # A host's slots and widths were found by the trials (or the dry run's timing, with a
        # traceback), not when the file was read.
        (f'{HEAD}{BUDGET}slots = ["mid_99"]\n{STATIC}', "arm 's' on synthetic: unknown or no "
         "slots ['mid_99']; the synthetic host has ['early', 'mid', 'late']"),
        (f'out = "o"\ntasks = ["text_lm"]\n[budget]\nwidth = 5\n{STATIC}',
         "arm 's' on text_lm: width 5: the text_lm host takes widths that are multiples of its 4 "
         "attention heads (4, 8, ..., 4096); nearest: 4 or 8"),
        (f'out = "o"\ntasks = ["text_lm"]\n{STATIC}width = 7\n',
         "arm 's' on text_lm: width 7: the text_lm host takes widths that are multiples of its 4 "
         "attention heads (4, 8, ..., 4096); nearest: 4 or 8"),
        # A data_dir for a task that reads no files was ignored with a log line.
        (f'{HEAD}{BUDGET}data_dir = "/data"\n{STATIC}', "budget.data_dir reaches task "
         "'synthetic', whose dataset reads no files; set data_dir in the [task_budgets.TASK]"),
        (f'{HEAD}{STATIC}[task_budgets.synthetic]\ndata_dir = "/data"\n',
         "task_budgets.synthetic.data_dir reaches task 'synthetic', whose dataset reads no"),
        # Path.expanduser's RuntimeError: a traceback
        ('out = "o"\ntasks = ["fashion_mnist_impaired"]\n[budget]\n'
         f'data_dir = "~nosuchuser7/fm"\n{STATIC}',
         "data_dir '~nosuchuser7/fm': no such user's home directory"),
        # A dry run passed it, then every trial failed: its directory's name was too long.
        (f'{HEAD}{STATIC.replace(chr(34) + "s" + chr(34), chr(34) + "a" * 240 + chr(34))}',
         "arm name must be at most 100 bytes (it names the trials' directories), got 'aaaa"),
        (f'{HEAD}{STATIC.replace(chr(34) + "s" + chr(34), chr(34) + "é" * 51 + chr(34))}',
         "(102 bytes)"),
        # The last seed may be MAX_SEED (one seed from 2**32 - 1 was refused), not beyond.
        (f"first_seed = {2**32 - 2}\nseeds = 3\n{HEAD}{STATIC}",
         "first_seed must be an integer in [0, 4294967293], got 4294967294"),
        # study.json and every trial's config.json kept the password (a walk-through)
        (f'knowledge = "postgresql://u:s3cret@127.0.0.1/k"\n{HEAD}{STATIC}',
         "knowledge 'postgresql://u:***@127.0.0.1/k' carries a password, which the run would "
         "save in its config.json and print; give it in PGPASSWORD or ~/.pgpass"),
    ],
)  # fmt: skip
def test_bad_study_file_is_one_line_and_makes_nothing(tmp_path, capsys, body, message):
    path = _study(tmp_path, body)
    assert message in _bad(capsys, ["study", str(path)])
    assert not (tmp_path / "o").exists()


def test_training_seeds_closer_than_the_environments_are_warned_of(tmp_path, capsys) -> None:
    """Environment i of training seed s is seeded s + i: seeds 100 and 101 with 8 environments
    train on the same hosts and data in 7 of them, which a study read as independent
    replicates without a word (a walk-through)."""
    tiny = 'preset = "tiny"\n'  # 2 environments
    for seeds, line in (
        (
            "[100, 101, 102]",
            "warning: arm 'p': training seeds 100 and 101 share 1 of their 2 "
            "environment seeds (environment i of training seed s is seeded s + i), as do 1 more "
            "pair(s): their policies train partly on the same hosts and data; space training "
            "seeds 2 or more apart",
        ),
        ("[100, 102, 104]", None),
    ):
        body = f"seeds = 4\n{HEAD}{BUDGET}{PPO.replace('[100]', seeds)}{tiny}"
        path = _study(tmp_path / seeds, body)
        assert main(["study", str(path), "--dry-run"]) == 0
        warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning")]
        assert warnings == ([] if line is None else [line])


def test_the_last_seed_may_be_the_largest() -> None:
    spec = StudySpec(out="o", tasks=("synthetic",), arms=(ArmSpec("s", "static"),))
    last = replace(spec, first_seed=2**32 - 3, seeds=3)
    assert last.evaluation_seeds[-1] == 2**32 - 1 == MAX_SEED  # adversarial sweep: refused


@pytest.mark.parametrize(
    ("names", "foreign"),
    [
        # study.json lost: its trials and its outputs, the store's SQLite files, hidden files
        ((TRIALS_DIR, "results.md", "knowledge.sqlite", "knowledge.sqlite-wal", ".x"), None),
        ((TRIALS_FILE, "interval_estimates.png", "report.html"), None),
        ((TRIALS_DIR, "results.md", "notes.txt"), "notes.txt"),
        (("results.md",), "results.md"),  # a results.md alone is anyone's
        (("report.html", "knowledge.sqlite"), "knowledge.sqlite"),
    ],
)
def test_a_study_directory_that_lost_its_study_json_carries_on(tmp_path, names, foreign):
    """It was refused as "no study.json, but 'interval_estimates.png'", with advice to start
    anew; each trial's run is still checked against the settings the study gives it."""
    out = tmp_path / "o"
    out.mkdir()
    for name in names:
        (out / name).mkdir() if name == TRIALS_DIR else (out / name).write_text("")
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}")
    if foreign is None:
        assert read_study(path)[1] == out
    else:
        with pytest.raises(ValueError, match=f"holds no study \\(no study.json, but '{foreign}'"):
            read_study(path)


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_out_whose_trials_is_not_a_directory_is_refused(tmp_path, capsys, kind):
    """Skipped as the study's own name, a file called trials passed the checks; then every
    trial failed on every attempt, and the study wrote its results beside the file."""
    out = tmp_path / "o"
    out.mkdir()
    if kind == "file":
        (out / "trials").write_text("precious\n")
    else:
        (out / "trials").symlink_to(tmp_path / "gone")
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}")
    line = _bad(capsys, ["study", str(path)])
    assert f"{str(out / 'trials')!r} is not a directory" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["trials"]
    if kind == "file":
        assert (out / "trials").read_text() == "precious\n"


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_trial_bigger_than_this_machine_is_one_line_before_ray(
    tmp_path, capsys, monkeypatch, dry_run
):
    """The dry run planned "1 trial(s) at once"; the real run refused after Ray's start-up."""
    import esper.cli.study

    monkeypatch.setattr(esper.cli.study, "usable_cores", lambda: 1)
    path = _study(tmp_path, f"{HEAD}[resources]\ncpus = 2\n{BUDGET}{STATIC}")
    assert main(["study", str(path), *(["--dry-run"] * dry_run)]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "esper: error: resources.cpus = 2, but this machine has 1 usable core(s): one trial "
        "would wait forever; ask for at most 1 (or join a cluster with --address)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("where", ["budget", "arm"])
def test_a_width_that_does_not_fit_is_one_line_before_anything(
    tmp_path, capsys, monkeypatch, where, dry_run
):
    """The dry run built the 1.5-billion-parameter host to time it (a traceback where memory
    ran out); the real run failed every attempt after Ray started, naming a flag."""
    import esper.study.checks

    monkeypatch.setattr(esper.study.checks, "memory_bytes", lambda: 24 * 2**30)  # this machine's
    budget = f"{BUDGET}width = 4096\n" if where == "budget" else BUDGET
    arm = STATIC + "width = 4096\n" * (where == "arm")
    path = _study(tmp_path, f"{HEAD}{budget}{arm}")
    assert main(["study", str(path), *(["--dry-run"] * dry_run)]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert f"study file {str(path)!r}: arm 's' on synthetic: width 4096 does not fit: " in err
    assert re.search(r"; use width = \d+ or less$", err.strip()), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("results.md", "directory"),
        (TRIALS_FILE, "directory"),
        ("interval_estimates.png", "directory"),
        (".esper-study.lock", "directory"),
        ("results.md", "dangling link"),
    ],
)
def test_a_study_file_that_cannot_be_written_is_one_line_before_ray(
    tmp_path, capsys, name, kind, dry_run
):
    """The dry run passed; the real run trained every trial left, then failed on its results
    (a traceback for the lock file, after Ray started)."""
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}")
    spec, directory = read_study(path)
    directory.mkdir()
    StudyState(study_settings(spec), {}, {}).save(directory)  # a study run before
    blocker = directory / name
    if kind == "directory":
        blocker.mkdir()
    else:
        blocker.symlink_to(tmp_path / "nowhere")
    assert main(["study", str(path), *(["--dry-run"] * dry_run)]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    if kind == "dangling link":
        assert f"{str(blocker)!r} is a symbolic link that leads nowhere" in err
    else:
        assert f"the study writes {str(blocker)!r}, and it is a directory, not a file" in err
    assert sorted(p.name for p in directory.iterdir()) == sorted([name, STUDY_FILE])


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_study_directory_below_a_dangling_link_is_refused_before_ray(tmp_path, capsys, dry_run):
    """The check looked past a dangling link (or a link loop) above the study directory to
    the folder that held it: the dry run passed, and the real run started Ray before its mkdir
    failed with "File exists" (adversarial sweep)."""
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for above in ("dangling", "loop"):
        path.write_text(path.read_text().replace('out = "o"', f'out = "{above}/o"', 1))
        line = _bad(capsys, ["study", str(path), *(["--dry-run"] * dry_run)])
        assert line == (
            f"esper: error: cannot make the study directory {str(tmp_path / above / 'o')!r}: "
            f"{str(tmp_path / above)!r} is a symbolic link that leads nowhere (or in a loop)"
        )
        path.write_text(path.read_text().replace(f'out = "{above}/o"', 'out = "o"', 1))
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_study_directory_that_cannot_be_made_is_one_line_before_ray(tmp_path, dry_run):
    """A dry run passed, and the real run started Ray before its mkdir failed. Permissions
    bind in a child process, as an unprivileged user's."""
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}")
    esper = [*unprivileged(), sys.executable, "-m", "esper", "study", str(path)]

    def refusal(out: str) -> str:
        """What ``esper study`` says with ``out = OUT`` (exit 2, nothing on stdout)."""
        path.write_text(re.sub(r'^out = ".*"$', f'out = "{out}"', path.read_text(), flags=re.M))
        done = subprocess.run(
            [*esper, *(["--dry-run"] * dry_run)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == EXIT_BAD_INPUT and done.stdout == "", done.stdout
        return done.stderr

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert refusal("locked/o") == (
        f"esper: error: cannot make the study directory {str(locked / 'o')!r}: "
        f"{str(locked)!r} is not writable (write and search)\n"
    )
    assert list(locked.iterdir()) == []
    # A dangling link as the study directory (the check followed it into nothing: a
    # traceback from os.statvfs)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert refusal("dangling") == (
        f"esper: error: cannot make the study directory {str(tmp_path / 'dangling')!r}: it is "
        "a symbolic link that leads nowhere (or in a loop)\n"
    )
    # A study directory whose trials/ takes no new run directory: the run failed every attempt
    # of every trial left.
    trials = tmp_path / "o2" / TRIALS_DIR
    trials.mkdir(parents=True, mode=0o555)
    assert refusal("o2") == (
        f"esper: error: cannot make the trials' run directories: {str(trials)!r} is not "
        "writable (write and search)\n"
    )
    assert list(trials.iterdir()) == [] and sorted(trials.parent.iterdir()) == [trials]


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("text", "file is not a database"),
        ("directory", "'{store}' is a directory, not a database file"),
    ],
)
def test_a_knowledge_store_that_cannot_be_used_is_one_line(tmp_path, capsys, kind, reason, dry_run):
    """The study ran, its trials warning only in Ray's worker logs, and its bandit arm went
    without the outcomes it was to learn from."""
    store = tmp_path / "store"
    if kind == "text":
        store.write_text("not a database\n")
    else:
        store.mkdir()
    arm = '[[arms]]\nname = "h"\ncontroller = "heuristic"\nselector = "ucb"\n'
    path = _study(tmp_path, f'knowledge = "sqlite:///{store}"\n{HEAD}{BUDGET}{arm}')
    line = _bad(capsys, ["study", str(path), *(["--dry-run"] * dry_run)])
    said = reason.format(store=store)
    assert line == f"esper: error: knowledge store sqlite:///{store}: {said}", line
    assert not (tmp_path / "o").exists()
    assert kind != "text" or store.read_text() == "not a database\n"


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_studys_own_store_is_checked_too(tmp_path, capsys, dry_run):
    """A study without ``knowledge`` uses its own store (``OUT/knowledge.sqlite``); it was
    never checked, and a store there that could not be opened cost the outcomes silently, the
    warning only in Ray's worker logs (adversarial sweep)."""
    arm = '[[arms]]\nname = "h"\ncontroller = "heuristic"\nselector = "ucb"\n'
    path = _study(tmp_path, f"{HEAD}{BUDGET}{arm}")
    spec, directory = read_study(path)
    directory.mkdir()
    StudyDriver(spec, directory, print).state.save(directory)  # a study begun before
    own = directory / KNOWLEDGE_FILE
    own.mkdir()
    line = _bad(capsys, ["study", str(path), *(["--dry-run"] * dry_run)])
    assert line == (
        f"esper: error: knowledge store sqlite:///{own}: '{own}' is a directory, not a database "
        "file"
    )
    assert sorted(p.name for p in directory.iterdir()) == [KNOWLEDGE_FILE, STUDY_FILE]


@pytest.mark.parametrize("kind", ["in DELETE journal mode", "at schema version 0"])
def test_checking_a_knowledge_store_changes_nothing_in_it(tmp_path, kind):
    """The check opened the store as a run does: it switched the file to WAL and applied the
    migrations, from a dry run too."""
    store = tmp_path / "store.sqlite"
    with sqlite3.connect(store) as db:
        if kind == "at schema version 0":  # what a store's first migration starts from
            db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (0)")
    if kind == "in DELETE journal mode":
        KnowledgeStore.open(f"sqlite:///{store}").close()  # made as a run makes it (WAL) ...
        with sqlite3.connect(store) as db:
            db.execute("PRAGMA journal_mode=DELETE")  # ... then put back in the default mode
    before = store.read_bytes()
    arm = '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
    path = _study(tmp_path, f'knowledge = "sqlite:///{store}"\n{HEAD}{BUDGET}{arm}')
    assert main(["study", str(path), "--dry-run"]) == 0
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite", "study.toml"]


def test_a_knowledge_store_not_made_yet_is_taken(tmp_path, capsys):
    store = tmp_path / "new" / "knowledge.sqlite"
    arm = '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
    path = _study(tmp_path, f'knowledge = "sqlite:///{store}"\n{HEAD}{BUDGET}{arm}')
    assert main(["study", str(path), "--dry-run"]) == 0
    assert not store.exists() and not store.parent.exists()  # a dry run makes nothing


def test_a_data_dir_set_per_task_that_reads_files_is_taken(tmp_path):
    body = 'out = "o"\ntasks = ["synthetic", "fashion_mnist_impaired"]\n' + STATIC
    spec, _ = read_study(_study(tmp_path, f'{body}[task_budgets.fashion_mnist_impaired]\n'
                                          'data_dir = "/data"\n'))  # fmt: skip
    assert spec.task_budgets == {"fashion_mnist_impaired": {"data_dir": "/data"}}


def test_partial_resources_table_keeps_the_other_default(tmp_path):
    spec, _ = read_study(_study(tmp_path, f"{HEAD}{STATIC}[resources]\ncpus = 2\n"))
    assert (spec.resources.cpus, spec.resources.gpus) == (2.0, 0.0)


def test_budget_width_is_every_growing_trials_host_width(tmp_path):
    body = f"{HEAD}{BUDGET}width = 7\n{STATIC}" + '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
    spec, _ = read_study(_study(tmp_path, body))
    for arm in ("s", "h"):  # it used to be dropped: every trial ran at the task's width
        _, config = growth_config(spec, Trial("synthetic", arm, 0))
        assert config.training.width == 7


def test_auto_advance_is_the_arms_then_the_budgets_and_never_a_static_arms(tmp_path):
    arms = f'{STATIC}{PPO}auto_advance = false\n[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
    arms += '[[arms]]\nname = "r"\ncontroller = "random"\nauto_advance = false\n'
    spec, _ = read_study(_study(tmp_path, f"{HEAD}{BUDGET}auto_advance = true\n{arms}"))
    advances = {a: growth_config(spec, Trial("synthetic", a, 0))[1].training.auto_advance
                for a in ("s", "h", "r")}  # fmt: skip
    # A static trial recorded the budget's auto_advance, a config esper static refuses.
    assert advances == {"s": False, "h": True, "r": False}
    assert not ppo_config(spec, spec.arm("p"), "synthetic", 100).env.auto_advance


def test_an_arm_evaluating_a_policy_runs_with_the_policys_auto_advance(tmp_path):
    policy = tmp_path / "policy"
    tiny = ["--epochs", "2", "--batches-per-epoch", "2", "--val-samples", "128"]
    ppo = ["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--seed", "500", "--auto-advance"]
    assert main([*ppo, *tiny, "--out", str(policy)]) == 0
    body = f'{HEAD}{BUDGET}[[arms]]\nname = "p"\ncontroller = "ppo"\npolicy = "{policy}"\n'
    spec, _ = read_study(_study(tmp_path, body))
    _, config = growth_config(spec, Trial("synthetic", "p", 0), policy=policy)
    assert config.training.auto_advance  # the budget leaves it off; the policy trained with it


def test_task_budget_adds_to_the_budget_for_its_task_only(tmp_path):
    head = HEAD.replace('["synthetic"]', '["synthetic", "digits"]')
    body = f"{head}{BUDGET}{STATIC}[task_budgets.digits]\nbatches_per_epoch = 5\n"
    spec, _ = read_study(_study(tmp_path, body))
    synthetic = growth_config(spec, Trial("synthetic", "s", 0))[1].training
    digits = growth_config(spec, Trial("digits", "s", 0))[1].training
    assert (synthetic.batches_per_epoch, digits.batches_per_epoch) == (2, 5)  # the task's wins
    assert synthetic.epochs == digits.epochs == 2  # the shared budget reaches both


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("file", "is a file, not a directory"),
        ("below a file", "is a file, not a directory"),
        ("run", "is the run directory"),
        ("inside a run", "lies inside the run directory"),
        ("study", "lies inside the study directory"),
        ("other files", "already exists and holds no study (no study.json, but 'notes.txt')"),
    ],
)
def test_out_that_cannot_hold_a_study_is_refused_before_anything(
    tmp_path, capsys, runs, where, message
):
    """A file used to fail with a traceback after Ray started; a run or another study's
    directory was written into."""
    blocker = tmp_path / "taken"
    if where in ("file", "below a file"):
        blocker.write_text("mine")
    elif where == "study":
        blocker.mkdir()
        (blocker / STUDY_FILE).write_text("{}")
    elif where == "other files":  # a study wrote study.json, trials/ and results.md among them
        blocker.mkdir()
        (blocker / "notes.txt").write_text("mine")
    out = {
        "file": blocker,
        "below a file": blocker / "sub",
        "run": runs["static"],
        "inside a run": runs["static"] / "sub",
        "study": blocker / "sub",
        "other files": blocker,
    }[where]
    before = sorted(p.name for p in tmp_path.iterdir())
    path = _study(tmp_path / "cfg", f'out = "{out}"\ntasks = ["synthetic"]\n{STATIC}')
    for argv in (["study", str(path)], ["study", str(path), "--dry-run"]):
        err = _bad(capsys, argv)
        assert f"out {str(out)!r}" in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cfg") == before
    assert not (runs["static"] / "sub").exists()
    if where == "file":
        assert blocker.read_text() == "mine"
    if where == "other files":
        assert sorted(p.name for p in blocker.iterdir()) == ["notes.txt"]


def test_an_out_with_a_nul_character_is_refused_before_ray_starts(tmp_path, capsys):
    """It passed --dry-run and failed with a traceback once Ray had started."""
    path = _study(tmp_path, 'out = "a\\u0000b"\ntasks = ["synthetic"]\n' + STATIC)
    for argv in (["study", str(path), "--dry-run"], ["study", str(path)]):
        assert "a path cannot hold a NUL character" in _bad(capsys, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


def test_an_out_that_is_no_utf8_is_refused_before_ray_starts(tmp_path, capsys):
    """It passed --dry-run; then every growing trial failed on its store's URL."""
    parent = Path(os.fsdecode(os.fsencode(tmp_path) + b"/st-\xff"))
    path = _study(parent, f"{HEAD}{BUDGET}" + '[[arms]]\nname = "h"\ncontroller = "heuristic"\n')
    for argv in (["study", str(path), "--dry-run"], ["study", str(path)]):
        assert "/o' is not UTF-8 text" in _bad(capsys, argv)
    assert sorted(p.name for p in parent.iterdir()) == ["study.toml"]


def test_address_port_out_of_range(tmp_path, capsys):
    path = _study(tmp_path, f"{HEAD}{STATIC}")
    err = _bad(capsys, ["study", str(path), "--address", "127.0.0.1:99999"])
    assert "port 1..65535" in err and "'127.0.0.1:99999'" in err
    assert not (tmp_path / "o").exists()


def test_relative_policy_is_the_files_not_the_working_directorys(tmp_path, runs, monkeypatch):
    """It was checked against the file's directory but run from the working directory, so
    every trial of ``esper study sub/study.toml`` failed."""
    rel = os.path.relpath(runs["ppo"], tmp_path / "sub")
    path = _study(tmp_path / "sub", f'{HEAD}[[arms]]\nname = "p"\ncontroller = "ppo"\n'
                                    f'policy = "{rel}"\n')  # fmt: skip
    monkeypatch.chdir(tmp_path)
    spec, directory = read_study(path.relative_to(tmp_path))
    job = StudyDriver(spec, directory, print).job(Trial("synthetic", "p", 0))
    assert Path(job.config["policy"]) == runs["ppo"].resolve()


def test_a_relative_sqlite_store_is_beside_the_study_file(tmp_path, capsys, monkeypatch):
    """It was taken relative to wherever the command ran: a study run from another directory
    checked, used and made another store, and its bandits learned from nothing. The URL as
    written stays the study's setting, so a study moved with its file carries on."""
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    grow = '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
    for written, expected in (
        ("sqlite:///k.sqlite", f"sqlite:///{tmp_path / 'sub' / 'k.sqlite'}"),
        ("sqlite:///stores/../k.sqlite", f"sqlite:///{tmp_path / 'sub' / 'k.sqlite'}"),
        (f"sqlite:///{tmp_path / 'abs.sqlite'}", f"sqlite:///{tmp_path / 'abs.sqlite'}"),
        ("sqlite:///~/k.sqlite", "sqlite:///~/k.sqlite"),  # the store expands ~ itself
        ("postgresql://esper@localhost/db", "postgresql://esper@localhost/db"),
    ):
        path = _study(tmp_path / "sub", f'{HEAD}knowledge = "{written}"\n{BUDGET}{grow}')
        spec, directory = read_study(path)
        assert spec.knowledge == written and store_url(spec, path) == expected
        driver = StudyDriver(spec, directory, print, store_url(spec, path))
        assert driver.job(Trial("synthetic", "h", 0)).config["knowledge"] == expected
    # The command checks the store beside the file: one that is no database is refused.
    (tmp_path / "sub" / "k.sqlite").write_text("not a database\n")
    path = _study(tmp_path / "sub", f'{HEAD}knowledge = "sqlite:///k.sqlite"\n{BUDGET}{grow}')
    assert main(["study", str(path), "--dry-run"]) == EXIT_BAD_INPUT
    assert "file is not a database" in capsys.readouterr().err
    assert list(here.iterdir()) == []


FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_a_relative_data_dir_is_the_files_not_the_working_directorys(tmp_path, monkeypatch):
    """It was taken relative to wherever a trial's process ran (the command's directory, or a
    Ray node's): a study run from another directory read, or downloaded into, another folder.
    The path only finds the data, as ``out`` finds the study: a study moved with its data, or
    one saved when the path was kept as written, is the same study."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    body = ('out = "o"\ntasks = ["fashion_mnist_impaired"]\nreps = 100\n[budget]\n'
            'epochs = 2\nbatches_per_epoch = 1\nval_samples = 64\ndata_dir = "{}"\n'
            f"{STATIC}[[arms]]\nname = \"p\"\ncontroller = \"ppo\"\ntraining_seeds = [100]\n"
            '[task_budgets.fashion_mnist_impaired]\nlr = 0.01\n{}')  # fmt: skip
    sub = tmp_path / "sub"
    base = here / ".." / "sub"  # the file's directory as given: links and .. as the system's
    for written, own, expected in (
        ("data", "", base / "data"),
        ("../data/./fm", "", base / "../data/fm"),  # links and .. as given, as a run's
        ("~/fm", "", home / "fm"),
        ("/abs/fm", "", Path("/abs/fm")),
        ("data", 'data_dir = "own"\n', base / "own"),  # a task's own
    ):
        _study(sub, body.format(written, own))
        spec, directory = read_study(Path("../sub/study.toml"))
        driver = StudyDriver(spec, directory, print)
        growth = driver.job(Trial("fashion_mnist_impaired", "s", 0)).config["training"]
        policy = driver.job(Trial("fashion_mnist_impaired", "p", 100, "policy")).config["env"]
        assert growth["data_dir"] == policy["data_dir"] == str(expected)
        assert "data_dir" not in study_settings(spec)["budget"]
    # The study started with the path as written carries on, from anywhere.
    spec, directory = read_study(_study(sub, body.format("data", "")))
    directory.mkdir()
    saved = study_settings(spec)
    saved["budget"] = {**saved["budget"], "data_dir": "data"}
    (directory / STUDY_FILE).write_text(
        json.dumps({"settings": saved, "attempts": {}, "errors": {}})
    )
    assert StudyDriver(spec, directory, print).state.settings == study_settings(spec)
    # Another setting beside it is still refused.
    saved["budget"]["epochs"] = 3
    (directory / STUDY_FILE).write_text(
        json.dumps({"settings": saved, "attempts": {}, "errors": {}})
    )
    with pytest.raises(UserError, match=re.escape("budget.epochs: 3 -> 2")):
        StudyDriver(spec, directory, print)


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="real Fashion-MNIST not installed at /usr/share/datasets/fashion-mnist "
                    "(apt-get install dataset-fashion-mnist)")  # fmt: skip
def test_a_trial_reads_the_data_dir_beside_its_study_file(tmp_path, monkeypatch):
    """A trial run from another directory, with a data_dir written relative to the study file,
    trains on the data there (it failed, finding nothing, or would have downloaded anew)."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "data").symlink_to(FASHION)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ESPER_DATA_DIR", raising=False)
    path = _study(sub, 'out = "o"\ntasks = ["fashion_mnist_impaired"]\n[budget]\nepochs = 1\n'
                       'batches_per_epoch = 1\nval_samples = 64\ndata_dir = "data"\n'
                       'download = false\n' + STATIC)  # fmt: skip
    spec, directory = read_study(path)
    driver = StudyDriver(spec, directory, print)
    trial = Trial("fashion_mnist_impaired", "s", 0)
    row = run_job(driver.job(trial))
    assert row is not None and row.status == "completed"
    assert record.read_config(driver.run_directory(trial))["training"]["data_dir"] == str(
        sub / "data"
    )
    # Moved with its data, the study's unfinished trial resumes reading the data's new place
    # (the resume refused the changed path: "training.data_dir: .../sub/data -> .../moved/data").
    (driver.run_directory(trial) / record.SUMMARY_FILE).unlink()
    sub.rename(tmp_path / "moved")
    spec, directory = read_study(tmp_path / "moved" / "study.toml")
    driver = StudyDriver(spec, directory, print)
    row = run_job(driver.job(trial))
    assert row is not None and row.status == "completed"


@pytest.mark.parametrize("name", ["res%41x", "q?1"])
def test_the_studys_own_store_is_in_its_directory(tmp_path, name):
    """Its URL was the path pasted in: a study in res%41x kept its store in resAx, one in q?1
    in a file q beside it (shared by a study in q?2)."""
    grow = '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
    spec, directory = read_study(_study(tmp_path / name, f"{HEAD}{BUDGET}{grow}"))
    url = StudyDriver(spec, directory, print).job(Trial("synthetic", "h", 0)).config["knowledge"]
    assert parse_url(url).database == str(tmp_path / name / "o" / KNOWLEDGE_FILE)


def test_a_list_setting_left_out_is_left_out_item_by_item():
    """An evaluating trial's slots come from its policy: its ["early", "mid"] against the
    budget's ["mid", "late"] was compared item by item (training.slots[0]: ...), past the
    skipped "training.slots:", and the study refused its own finished trials."""
    ran = {"training": {"slots": ["early", "mid"], "epochs": 2}, "seed": 0}
    study = {"training": {"slots": ["mid", "late"], "epochs": 3}, "seed": 0}
    every = [
        "training.epochs: 2 -> 3",
        'training.slots[0]: "early" -> "mid"',
        'training.slots[1]: "mid" -> "late"',
    ]
    assert changed_settings(ran, study, ()) == every
    assert changed_settings(ran, study, ("training.slot:",)) == every  # another setting
    assert changed_settings(ran, study, EVAL_DERIVED) == every[:1]
    shorter = {"training": {"slots": ["early"], "epochs": 2}, "seed": 0}
    assert changed_settings(shorter, study, EVAL_DERIVED) == every[:1]


def test_a_heuristic_or_static_run_is_no_policy(tmp_path, capsys, runs):
    path = _study(tmp_path, f'{HEAD}[[arms]]\nname = "p"\ncontroller = "ppo"\n'
                            f'policy = "{runs["static"]}"\n')  # fmt: skip
    line = _bad(capsys, ["study", str(path)])  # it said "--policy", which a study has not
    policy = str(runs["static"])
    assert line.endswith(f": arm 'p': policy {policy!r} is not an Esper PPO run directory"), line
    assert not (tmp_path / "o").exists()


def test_an_arm_evaluating_a_policy_in_other_episodes_than_it_trained_in_says_so(
    tmp_path, capsys, runs
):
    """A study's budget runs a given policy: on another episode length or task it ran without a
    word, where esper eval's own overrides get a note (a walk-through; the README said such an
    arm "runs as that policy trained")."""
    arm = f'[[arms]]\nname = "p"\ncontroller = "ppo"\npolicy = "{runs["ppo"]}"\n'
    path = _study(tmp_path / "same", f"{HEAD}{BUDGET}{arm}")  # the budget it trained with
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "note: arm 'p'" not in capsys.readouterr().err
    longer = BUDGET.replace("epochs = 2", "epochs = 3").replace("val_samples = 128", "")
    path = _study(tmp_path / "longer", f"{HEAD}{longer}{arm}")
    assert main(["study", str(path), "--dry-run"]) == 0
    assert (
        "esper study: note: arm 'p' on synthetic: its policy trained with epochs = 2, "
        "val_samples = 128; the study's budget runs it with epochs = 3, val_samples = all "
        "(every arm of a task runs the same)\n"
    ) in capsys.readouterr().err


def test_what_a_ppo_arm_cannot_run_is_refused_before_any_trial(tmp_path, capsys, runs):
    """A policy of another host kind, or amp without a GPU, passed --dry-run and failed in every
    trial's attempts, after the study directory was made (adversarial sweep)."""
    text = 'out = "o"\ntasks = ["text_lm_impaired"]\n[[arms]]\nname = "p"\ncontroller = "ppo"\n'
    path = _study(tmp_path / "a", f'{text}policy = "{runs["ppo"]}"\n')
    for argv in (["study", str(path), "--dry-run"], ["study", str(path)]):
        err = _bad(capsys, argv)
        assert "was trained on a cnn host; task 'text_lm_impaired'" in err and "transformer" in err
    amp = f"{HEAD}{PPO}[arms.ppo.runtime]\namp = true\n"
    path = _study(tmp_path / "b", amp)
    for argv in (["study", str(path), "--dry-run"], ["study", str(path)]):
        assert "ppo.runtime.amp needs the policy on a GPU" in _bad(capsys, argv)
    assert not (tmp_path / "a" / "o").exists() and not (tmp_path / "b" / "o").exists()


def test_a_training_seed_too_large_for_its_environments_names_the_arm(tmp_path, capsys):
    """It said only "runtime.seed must be an integer in [0, ...]"."""
    seed = 2**32 - 100  # a seed, but its policy seed (seed + 7919) would not be
    path = _study(tmp_path, f"{HEAD}{PPO.replace('[100]', f'[{seed}]')}")
    err = _bad(capsys, ["study", str(path), "--dry-run"])
    assert f"arm 'p': training seed {seed}: runtime.seed must be an integer in [0, " in err


def test_a_study_too_large_to_list_is_refused_at_once(tmp_path, capsys):
    """seeds = 10,000,000 with two arms did not finish --dry-run in a minute."""
    path = _study(tmp_path, f"{HEAD.replace('reps = 100', 'seeds = 10000000')}{STATIC}"
                            '[[arms]]\nname = "h"\ncontroller = "heuristic"\n')  # fmt: skip
    err = _bad(capsys, ["study", str(path), "--dry-run"])
    assert "1 task(s) x 2 arm(s) x 10000000 seeds = 20,000,000 trials; a study holds" in err


def test_changed_budget_names_the_setting_and_both_values(tmp_path, capsys):
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}")
    spec, directory = read_study(path)
    directory.mkdir()
    StudyDriver(spec, directory, print).state.save(directory)
    path.write_text(f"{HEAD}{BUDGET.replace('epochs = 2', 'epochs = 3')}{STATIC}")
    err = _bad(capsys, ["study", str(path), "--dry-run"])
    assert "budget.epochs: 2 -> 3" in err
    # retries, reps and baselines may change; so may how out is written.
    head = HEAD.replace('out = "o"', f'out = "{directory.resolve()}"\nretries = 5')
    path.write_text(f"{head}{BUDGET}{STATIC}")
    assert main(["study", str(path), "--dry-run"]) == 0


def test_arms_are_compared_by_name_and_an_added_or_removed_one_is_named(tmp_path, capsys):
    """Reordering the arms in the study file (which only orders the results) was refused as
    changing every arm, and an added arm showed as the whole arms list, cut short."""
    heuristic = '[[arms]]\nname = "h"\ncontroller = "heuristic"\n'
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}{heuristic}")
    spec, directory = read_study(path)
    directory.mkdir()
    StudyDriver(spec, directory, print).state.save(directory)
    path.write_text(f"{HEAD}{BUDGET}{heuristic}{STATIC}")
    assert main(["study", str(path), "--dry-run"]) == 0
    capsys.readouterr()
    random_arm = '[[arms]]\nname = "r"\ncontroller = "random"\n'
    path.write_text(f"{HEAD}{BUDGET}{heuristic}{random_arm}")
    err = _bad(capsys, ["study", str(path), "--dry-run"])
    assert "(study -> file: arms.r: added; arms.s: removed); use another out" in err
    path.write_text(f"{HEAD}{BUDGET}{heuristic.replace('heuristic', 'periodic')}{STATIC}")
    err = _bad(capsys, ["study", str(path), "--dry-run"])
    assert '(study -> file: arms.h.controller: "heuristic" -> "periodic"); use another' in err


def test_a_study_moved_with_its_policy_carries_on_and_another_policy_is_refused(
    tmp_path, capsys, runs
):
    """The policy's absolute path was the setting: a study moved with its file and policy was
    refused as "other settings"; the policy's run id is what is compared now."""
    first = tmp_path / "first"
    shutil.copytree(runs["ppo"], first / "pol")
    eval_arm = '[[arms]]\nname = "p"\ncontroller = "ppo"\npolicy = "pol"\n'
    spec, directory = read_study(_study(first, f"{HEAD}{BUDGET}{eval_arm}"))
    directory.mkdir()
    StudyDriver(spec, directory, print).state.save(directory)
    # A study.json of before (the policy's absolute path) resumes where the policy is.
    saved = json.loads((directory / STUDY_FILE).read_text())
    saved["settings"]["arms"][0]["policy"] = str((first / "pol").resolve())
    (directory / STUDY_FILE).write_text(json.dumps(saved))
    assert main(["study", str(first / "study.toml"), "--dry-run"]) == 0
    StudyDriver(spec, directory, print).state.save(directory)  # as a run saves it again
    moved = tmp_path / "moved"
    first.rename(moved)
    assert main(["study", str(moved / "study.toml"), "--dry-run"]) == 0
    capsys.readouterr()
    # Another run at the policy's path (here the same one under another id, re-signed).
    meta = json.loads((moved / "pol" / "meta.json").read_text())
    (moved / "pol" / "meta.json").write_text(json.dumps({**meta, "run_id": "pol-0123abcd"}))
    step = (
        moved
        / "pol"
        / "checkpoints"
        / (moved / "pol" / "checkpoints" / "LATEST").read_text().strip()
    )
    files = {p.name: p.read_bytes() for p in step.iterdir() if p.name != "manifest.json"}
    manifest = checkpoints._manifest_bytes("pol-0123abcd", int(step.name[5:]), files)
    (step / "manifest.json").write_bytes(manifest)
    err = _bad(capsys, ["study", str(moved / "study.toml"), "--dry-run"])
    assert f'arms.p.policy: "{meta["run_id"]}" -> "pol-0123abcd"' in err


def test_a_trial_runs_the_policy_round_it_checked(tmp_path, monkeypatch, runs):
    """A study's trial checked its policy's round, then its run read the policy again: a PPO
    run training on between the two made the trial evaluate (and record) the next round, the
    arm mixing two policies without a word. Now the trial runs the read it checked."""
    shutil.copytree(runs["ppo"], tmp_path / "pol")
    eval_arm = '[[arms]]\nname = "p"\ncontroller = "ppo"\npolicy = "pol"\n'
    spec, directory = read_study(_study(tmp_path, f"seeds = 1\n{HEAD}{BUDGET}{eval_arm}"))
    directory.mkdir()
    driver = StudyDriver(spec, directory, print)
    job = driver.job(driver.trials[0])
    assert job.policy_round == 1
    got = trains_on_after_its_first_read(monkeypatch, tmp_path / "pol")
    assert run_job(job) is not None
    meta = json.loads((Path(job.directory) / "meta.json").read_text())
    assert meta["policy"]["round"] == 1 and got == [1]


def test_a_policy_that_trained_on_is_another_policy_to_the_study(tmp_path, capsys, runs):
    """An arm given a policy evaluated whatever round its PPO run had reached when each trial
    started: after ``esper ppo --resume`` trained it on, the resumed study mixed two rounds in
    one arm without a word, or failed a resumed trial on every attempt (adversarial sweep).
    Now a study whose trials evaluated another round than the policy's is refused while it has
    trials left, and noted once they are all done; each trial checks the round it was sent
    with; a policy whose run stopped before its planned rounds is noted."""
    shutil.copytree(runs["ppo"], tmp_path / "pol")
    eval_arm = '[[arms]]\nname = "p"\ncontroller = "ppo"\npolicy = "pol"\n'
    path = _study(tmp_path, f"seeds = 2\n{HEAD}{BUDGET}{eval_arm}")
    spec, directory = read_study(path)
    directory.mkdir()
    driver = StudyDriver(spec, directory, print)
    driver.state.save(directory)
    first, second = (driver.job(trial) for trial in driver.trials)
    assert first.policy_round == second.policy_round == 1
    config = json.loads((tmp_path / "pol" / "config.json").read_text())
    config["ppo"]["rounds"] = 5  # as if planned for 5 and stopped after the first
    (tmp_path / "pol" / "config.json").write_text(json.dumps(config))
    assert main(["study", str(path), "--dry-run"]) == 0
    note = "esper study: note: arm 'p': the policy finished 1 of its run's 5 PPO rounds"
    assert f"{note} (stopped early, or still training); the study evaluates it as is" in (
        capsys.readouterr().err
    )
    assert run_job(first) is not None  # the first trial evaluates round 1
    assert main(["ppo", "--resume", str(tmp_path / "pol"), "--ppo.rounds", "2"]) == 0
    capsys.readouterr()
    err = _bad(capsys, ["study", str(path), "--dry-run"])
    assert err.endswith(
        "arm 'p': its trials evaluated round 1: synthetic.p.seed0 of the policy "
        f"{str(tmp_path / 'pol')!r}, which is at round 2 now (its run trained on); the trials "
        "left would evaluate another policy: evaluate it in a study of another out"
    )
    with pytest.raises(UserError, match="is at round 2, but the study evaluates round 1"):
        run_job(second)  # a trial sent before the policy trained on
    assert not Path(second.directory).exists()
    # Every trial done: the results stand, with a note.
    assert run_job(replace(second, policy_round=2)) is not None
    finished = StudyDriver(spec, directory, print)
    assert finished.notes == [
        "note: arm 'p': its trials evaluated round 1: synthetic.p.seed0; round 2: "
        f"synthetic.p.seed1 of the policy {str(tmp_path / 'pol')!r}, which is at round 2 now"
    ]


def test_a_study_saved_before_a_setting_existed_resumes(tmp_path):
    """A study.json from before task_budgets existed was refused as "other settings"
    (task_budgets: null -> {}), and restoring the study file could not help."""
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}")
    spec, directory = read_study(path)
    directory.mkdir()
    StudyDriver(spec, directory, print).state.save(directory)
    saved = json.loads((directory / STUDY_FILE).read_text())
    del saved["settings"]["task_budgets"]
    (directory / STUDY_FILE).write_text(json.dumps(saved))
    assert main(["study", str(path), "--dry-run"]) == 0
    path.write_text(f"{HEAD}{BUDGET}{STATIC}[task_budgets.synthetic]\nepochs = 3\n")
    assert main(["study", str(path), "--dry-run"]) == EXIT_BAD_INPUT  # a real change still is


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"settings": []}, "settings must be a table, got []"),
        ({"attempts": {"synthetic.s.seed0": "3"}}, "attempts.synthetic.s.seed0 must be"),
        ({"attempts": {"synthetic.s.seed0": -1}}, "must be an integer in [0, 10000000], got -1"),
        ({"attempts": {"synthetic.s.seed0": 10**30}}, "must be an integer in [0, 10000000]"),
        ({"errors": None}, "errors must be a table"),
        ({"extra": 1}, "unknown key"),
    ],
)
def test_a_damaged_study_state_file_is_one_line(tmp_path, capsys, change, message):
    """A study.json of the wrong shape raised AttributeError or TypeError (adversarial sweep)."""
    path = _study(tmp_path, f"{HEAD}{STATIC}")
    spec, directory = read_study(path)
    directory.mkdir()
    StudyDriver(spec, directory, print).state.save(directory)
    saved = json.loads((directory / STUDY_FILE).read_text())
    (directory / STUDY_FILE).write_text(json.dumps({**saved, **change}))
    before = (directory / STUDY_FILE).read_bytes()
    for argv in (["study", str(path), "--dry-run"], ["study", str(path)]):
        err = _bad(capsys, argv)
        assert STUDY_FILE in err and message in err, err
    assert (directory / STUDY_FILE).read_bytes() == before
    assert sorted(p.name for p in directory.iterdir()) == [STUDY_FILE]


def test_a_second_driver_of_one_study_is_refused(tmp_path):
    """Two drivers ran the same trials into the same run directories."""
    refused = pytest.raises(UserError, match="another esper study is running")
    with study_lock(tmp_path), refused, study_lock(tmp_path):
        pass
    with study_lock(tmp_path):  # released when the first ends (and when its process dies)
        pass


class _FakeRay:
    """Stands in for ``ray`` in ``StudyDriver._loop``: submits record the trial, and the first
    ``wait`` is a Ctrl-C."""

    exceptions = SimpleNamespace(RayError=RuntimeError)

    def remote(self, function: Any) -> Any:
        fake = self

        class Remote:
            def options(self, **settings: Any) -> Remote:
                return self

            def remote(self, job: Job) -> str:
                fake.submitted.append(job.trial.name)
                return job.trial.name

        return Remote()

    def __init__(self, again: bool = False) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.again = again  # a second Ctrl-C while the cancelled trials are waited for

    def wait(self, refs: list[str], num_returns: int = 1, timeout: float | None = None) -> Any:
        if timeout is None or self.again:
            raise KeyboardInterrupt
        return refs, []

    def cancel(self, ref: str) -> None:
        self.cancelled.append(ref)


def test_a_second_signal_while_the_cancelled_trials_are_waited_for_still_writes_trials_csv(
    tmp_path,
):
    """SIGHUP then Ctrl-C (a closed terminal, a scheduler's burst): the second signal left the
    driver's stop before it wrote trials.csv and said Stop, so the command printed neither the
    results so far nor how to continue. It now skips only the wait."""
    spec, directory = read_study(_study(tmp_path, f"{HEAD}seeds = 2\n{BUDGET}{STATIC}"))
    directory.mkdir()
    driver = StudyDriver(spec, directory, print)
    ray = _FakeRay(again=True)
    with pytest.raises(Stop):
        driver._loop(ray, None)
    assert ray.cancelled == ray.submitted == ["synthetic.s.seed0", "synthetic.s.seed1"]
    assert driver.stopped is not None
    assert driver.stopped.pending == ["synthetic.s.seed0", "synthetic.s.seed1"]
    assert (directory / TRIALS_FILE).exists()


def test_a_signal_while_the_results_so_far_are_written_is_dropped(tmp_path, monkeypatch):
    """A third signal (or a second one after the wait) while the stopped driver wrote
    trials.csv left it unwritten."""
    spec, directory = read_study(_study(tmp_path, f"{HEAD}seeds = 2\n{BUDGET}{STATIC}"))
    directory.mkdir()
    driver = StudyDriver(spec, directory, print)
    write = driver.write_trials

    def signalled(outcome):
        signal.raise_signal(signal.SIGTERM)
        write(outcome)

    def stop(signum, frame):  # as ``esper study`` takes SIGTERM (interrupt_on_termination)
        raise Stop

    monkeypatch.setattr(driver, "write_trials", signalled)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stop):
            driver._loop(_FakeRay(), None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (directory / TRIALS_FILE).exists()


def test_interrupted_and_queued_trials_keep_their_attempts(tmp_path):
    """Every submitted trial used to count an attempt, so a few Ctrl-Cs (or kill -9s) left
    trials that never ran out of attempts (and the next run died on a KeyError)."""
    path = _study(tmp_path, f"{HEAD}seeds = 3\nretries = 0\n{BUDGET}{STATIC}")
    spec, directory = read_study(path)
    directory.mkdir()
    for _ in range(2):
        driver = StudyDriver(spec, directory, print)
        ray = _FakeRay()
        with pytest.raises(Stop):
            driver._loop(ray, None)
        assert ray.cancelled == ray.submitted == [f"synthetic.s.seed{s}" for s in range(3)]
        assert json.loads((directory / STUDY_FILE).read_text())["attempts"] == {}


@pytest.mark.parametrize("damage", ["config.json removed", "a file", "a link"])
def test_a_trial_place_no_attempt_could_use_is_refused_before_ray(tmp_path, capsys, runs, damage):
    """A finished trial whose config.json was lost was listed as "to run" by the dry run; the
    real run then started Ray, failed every attempt ("holds no run") and rewrote results.md
    with the trial as failed."""
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}")
    place = tmp_path / "o" / TRIALS_DIR / "synthetic.s.seed1"
    place.parent.mkdir(parents=True)
    if damage == "a file":
        place.write_text("not a run\n")
        why = "holds no run (" + f"{str(place)!r} is a file, not a run directory)"
    elif damage == "a link":  # to an empty directory: renaming the made run onto it fails
        (tmp_path / "empty").mkdir()
        place.symlink_to(tmp_path / "empty")
        why = "is a symbolic link, where the trial's run directory is to be made"
    else:
        shutil.copytree(runs["static"], place)
        (place / record.CONFIG_FILE).unlink()
        why = f"holds no run ({str(place)!r} is not an Esper run directory (no config.json file))"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for argv in (["study", str(path), "--dry-run"], ["study", str(path)]):
        err = _bad(capsys, argv)
        assert err == (
            f"esper: error: trial synthetic.s.seed1: {str(place)!r} {why}; move it out of the "
            "study directory and run the study again"
        ), err
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_finished_trial_is_not_exhausted_with_no_retries(tmp_path):
    """retries = 0 made every finished trial "exhausted": a KeyError after every study."""
    spec, directory = read_study(_study(tmp_path, f"{HEAD}retries = 0\n{STATIC}"))
    driver = StudyDriver(spec, directory, print)
    trial = driver.trials[0]
    driver.state.attempts[trial.name] = 1  # it ran once and finished, or its run was removed
    assert not driver.exhausted(trial)
    driver.state.errors[trial.name] = "boom"
    assert driver.exhausted(trial)


def test_a_finished_trial_run_again_returns_its_result(tmp_path, runs):
    """A Ray retry or a re-run after the driver died failed with "nothing to resume"."""
    spec, _ = read_study(_study(tmp_path, f"{HEAD}{BUDGET}{STATIC}"))
    trial = Trial("synthetic", "s", 3)
    mode, _ = growth_config(spec, trial)
    before = (runs["static"] / "metrics.csv").read_bytes()
    row = run_job(Job(trial, mode, {}, str(runs["static"])))
    assert row is not None and row == trial_row(trial, runs["static"])
    assert (runs["static"] / "metrics.csv").read_bytes() == before


def test_esper_study_turns_sigterm_into_a_stop(tmp_path):
    """SIGTERM used to kill the driver outright (exit -15, no hint, Ray's agents orphaned);
    the slow test below shows the whole story."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert main(["study", str(_study(tmp_path, f"{HEAD}{STATIC}")), "--dry-run"]) == 0
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        with pytest.raises(Stop):
            handler(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("landing", ["computing", "importing", "broken", "half-imported"])
def test_a_second_ctrl_c_while_the_results_so_far_are_computed_still_exits_130_with_the_hint(
    tmp_path, capsys, monkeypatch, landing
):
    """The bootstrap of the results so far takes minutes on a big study; a second Ctrl-C then
    skips them (no traceback, nothing half-written) and still says how to continue. One that
    lands in the import of a compiled module (scipy's) is an ImportError whose context is the
    Ctrl-C: it was a traceback and exit 1 (a walk-through)."""
    from esper.cli import study
    from esper.study.execute import Outcome

    def interrupted(self, capacity=None):
        self.stopped = Outcome([], {}, ["synthetic.s.seed0"])
        raise Stop

    def stopped_again(*args, **kwargs):
        if landing == "computing":
            raise KeyboardInterrupt
        if landing == "broken":  # an ImportError of its own: its context is the first Stop
            raise ImportError("No module named 'scipy'")
        if landing == "half-imported":  # the first Ctrl-C left scipy so (a walk-through: exit 1)
            raise AttributeError("Module 'scipy' has no attribute '_lib'")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None  # pybind11 keeps the context

    monkeypatch.setattr(study, "connect_ray", lambda address: lambda: None)
    monkeypatch.setattr(study, "trial_slots", lambda resources: 1)
    monkeypatch.setattr(StudyDriver, "run", interrupted)
    monkeypatch.setattr(study, "_write_results", stopped_again)
    path = _study(tmp_path, f"{HEAD}{STATIC}")
    if landing == "broken":  # not taken for a second Ctrl-C (a review)
        with pytest.raises(ImportError, match="scipy"):
            main(["study", str(path)])
        return
    assert main(["study", str(path)]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    if landing == "half-imported":
        assert (
            "results so far not written (AttributeError: Module 'scipy' has no attribute "
            "'_lib'); running the study again writes them"
        ) in err
    else:
        assert "stopped again: results so far not written" in err
    assert "Traceback" not in err and f"interrupted: continue with: esper study {path}" in err


def test_a_signal_while_ray_shuts_down_after_a_stop_is_dropped(tmp_path, capsys, monkeypatch):
    """Ctrl-C, SIGTERM or SIGHUP while Ray shut down after a stop cut the shutdown short (Ray's
    agents outlived the command) and printed a second "esper: interrupted" after the hint."""
    from esper.cli import study
    from esper.study.execute import Outcome

    def interrupted(self, capacity=None):
        self.stopped = Outcome([], {}, ["synthetic.s.seed0"])
        raise Stop

    shut_down = []

    def stop() -> None:
        signal.raise_signal(signal.SIGTERM)
        shut_down.append(True)  # the shutdown went on

    monkeypatch.setattr(study, "connect_ray", lambda address: stop)
    monkeypatch.setattr(study, "trial_slots", lambda resources: 1)
    monkeypatch.setattr(StudyDriver, "run", interrupted)
    path = _study(tmp_path, f"{HEAD}{STATIC}")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["study", str(path)]) == EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert shut_down == [True] and "Traceback" not in err
    assert err.rstrip().endswith(f"interrupted: continue with: esper study {path}"), err
    assert err.count("interrupted") == 1, err


def test_a_study_another_driver_runs_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    """The second driver started a local Ray on every core (10 s or more) and printed its start
    line before the refusal."""
    from esper.cli import study

    def connect_ray(address):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(study, "connect_ray", connect_ray)
    path = _study(tmp_path, f"{HEAD}{BUDGET}{STATIC}")
    (tmp_path / "o").mkdir()
    with study_lock(tmp_path / "o"):
        err = _bad(capsys, ["study", str(path)])
    assert "another esper study is running the study in" in err, err


@pytest.mark.slow
def test_sigterm_exits_130_with_a_hint_and_the_study_resumes(tmp_path):
    """SIGTERM mid-study: exit 130 with a one-line hint, no attempt used; the same command then
    finishes every trial once, no epoch twice (two local Ray starts: about 40 s). Trials of 60
    short epochs: with 4, one could finish before the signal arrived once a trial's start no
    longer imported torch._dynamo."""
    body = f"{HEAD}seeds = 2\n{BUDGET.replace('epochs = 2', 'epochs = 60')}{STATIC}"
    path = _study(tmp_path, body)
    command = [sys.executable, "-m", "esper", "study", path.name]
    child = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    trials = tmp_path / "o" / TRIALS_DIR
    deadline = time.monotonic() + 120
    while not any(trials.glob("synthetic.*")) and child.poll() is None:
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    if child.returncode == 0:
        pytest.skip("the study finished before the signal arrived")
    assert child.returncode == EXIT_INTERRUPTED, err
    hints = [line for line in err.splitlines() if "continue with" in line]
    assert hints == ["interrupted: continue with: esper study study.toml"], err
    assert json.loads((tmp_path / "o" / STUDY_FILE).read_text())["attempts"] == {}
    # The results so far are written, marked as such (here: no trial had finished).
    results = (tmp_path / "o" / "results.md").read_text()
    assert "**Results so far: the study was interrupted with 2 trial(s) not finished.**" in results
    assert "results so far (2 trials not finished)" in err
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "Results so far" not in (tmp_path / "o" / "results.md").read_text()
    with (tmp_path / "o" / TRIALS_FILE).open() as f:
        assert sorted(r["run"] for r in csv.DictReader(f)) == ["synthetic.s.seed0",
                                                               "synthetic.s.seed1"]  # fmt: skip
    for run in trials.glob("synthetic.*"):
        with (run / "metrics.csv").open() as f:
            assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 61))
        assert record.run_status(run) == "completed"


def test_the_readmes_study_file_is_a_valid_study(tmp_path):
    """Its example named a task budget for a task it did not list, and failed as written."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]]
    example = next(b for b in blocks if "[[arms]]" in b)
    spec, directory = read_study(_study(tmp_path / "studies", example))
    assert directory == tmp_path / "runs" / "study-impaired"
    assert len(spec.tasks) == 2 and spec.task_budgets


def test_a_dry_run_and_bad_input_do_not_load_the_statistics_libraries(tmp_path) -> None:
    """rliable (arch, scipy, pandas, seaborn: ~2 s) and matplotlib (~0.7 s) were imported with
    the study command, so a missing study file took ~5 s to report and every --dry-run paid
    for statistics it never computes. They load when trials are about to run, or results are
    written."""
    path = _study(tmp_path, f"{HEAD}seeds = 1\n{BUDGET}{STATIC}")
    code = (
        "import sys\n"
        "from esper.cli.main import main\n"
        "assert main(['study', sys.argv[1] + '.missing']) == 2\n"
        "assert main(['study', sys.argv[1], '--dry-run']) == 0\n"
        "print(sorted(m for m in ('rliable', 'matplotlib', 'scipy') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_arm_names_keep_their_case_where_they_are_named(tmp_path) -> None:
    """Arms are told apart case aside, but named as written: a baseline naming "S" is that
    arm (the case-aside check must not fold the names the rest of the file uses)."""
    arm = STATIC.replace('"s"', '"S"')
    spec, _ = read_study(_study(tmp_path, f'{HEAD}baselines = ["S"]\n{BUDGET}{arm}'))
    assert spec.baselines == ("S",) and [a.name for a in spec.arms] == ["S"]
    with pytest.raises(ValueError, match=r"unknown baseline arm\(s\) \['s'\]; arms: \['S'\]"):
        read_study(_study(tmp_path / "b", f'{HEAD}baselines = ["s"]\n{BUDGET}{arm}'))


def test_trials_that_can_only_wait_on_a_failed_one_start_no_ray(tmp_path, capsys, monkeypatch):
    """A grown trial out of attempts leaves its static-matched trial nothing to wait for: a
    rerun (say with other reps) wrote the same results after starting Ray for nothing."""
    from esper.cli import study as cli_study

    grow = '[[arms]]\nname = "g"\ncontroller = "periodic"\nperiod = 1\n'
    matched = '[[arms]]\nname = "m"\ncontroller = "static-matched"\nmatch = "g"\n'
    path = _study(tmp_path, f"{HEAD}seeds = 1\nretries = 0\n{BUDGET}{grow}{matched}")
    spec, directory = read_study(path)
    directory.mkdir()
    driver = StudyDriver(spec, directory, print)
    assert driver.will_run()  # nothing failed yet: both will run
    failed = "synthetic.g.seed0"
    state = replace(driver.state, attempts={failed: 1}, errors={failed: "it broke"})
    state.save(directory)
    driver = StudyDriver(spec, directory, print)
    assert [t.name for t in driver.runnable()] == ["synthetic.m.seed0"] and not driver.will_run()

    def refused(*args: object) -> None:
        raise AssertionError(f"Ray was needed for {args}")

    monkeypatch.setattr(cli_study, "connect_ray", refused)
    monkeypatch.setattr(cli_study, "trial_slots", refused)
    assert main(["study", str(path)]) == 1  # one trial failed, one could not start
    err = capsys.readouterr().err
    assert "1 trial(s) failed on every attempt, 1 could not start" in err
    assert "it broke" in (directory / "results.md").read_text()  # written, without Ray
    # The trial that could not start is in the results, failed, saying why: it was in no
    # view (trials.csv, results.md's excluded trials, the dashboard), so its arm vanished.
    rows = {trial.run: trial.row for trial in read_trials(directory)}
    blocked = rows["synthetic.m.seed0"]
    assert blocked.status == "failed" and blocked.score is None
    assert blocked.error == f"could not start: {failed} failed on every attempt (it broke)"
    assert "| synthetic | m | 0 | failed | could not start: synthetic.g.seed0 failed" in (
        (directory / "results.md").read_text()
    )
    assert main(["study", str(path), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert f"cannot start: {failed} failed on every attempt" in listed
    assert "waits for" not in listed


def test_the_trial_count_reads_as_english() -> None:
    """A one-trial study said "1 trials"."""
    from esper.cli.study import _trials

    grow, policy = Trial("synthetic", "p", 0), Trial("synthetic", "p", 100, "policy")
    assert _trials([grow]) == "1 trial"
    assert _trials([grow, policy]) == "2 trials (1 PPO policy training among them)"
    assert _trials([grow] * 1200) == "1,200 trials"


def test_a_validation_studys_trial_without_the_measure_is_excluded_saying_why() -> None:
    """A finished trial whose summary records no validation accuracy of its final model (one
    from before it was measured) was excluded as "completed without a score", though its
    summary holds test scores and a best validation accuracy."""
    from dataclasses import replace as replaced

    from conftest import growth_summary
    from esper.leyline.trials import TrialRow
    from esper.study.job import summary_row
    from esper.study.results import _why_excluded

    old = growth_summary(status="completed")
    trial = Trial("synthetic", "s", 7)
    row = summary_row(trial, old, "validation")
    assert isinstance(row, TrialRow) and not row.counts and row.best_score == 77.5
    reason = "its summary records no validation accuracy of the final model"
    assert row.error == reason and _why_excluded(row) == reason
    measured = replaced(old, growth=replaced(old.growth, final_model_val_accuracy=70.0))
    row = summary_row(trial, measured, "validation")
    assert row is not None and row.counts and row.score == 70.0 and row.error is None
    assert summary_row(trial, old, "test") == replaced(row, score=None, best_score=None)


def test_the_dry_runs_flops_count_each_static_arms_own_host(tmp_path, capsys) -> None:
    """A static arm narrower than the task's host was counted at the task's host: its "at
    least" TFLOP was 3x what the trials then recorded (a walk-through). Oracle: the FLOPs the
    trials record when run (static arms: no growth to add)."""
    narrow = '[[arms]]\nname = "n"\ncontroller = "static"\nwidth = 2\n'
    path = _study(tmp_path, f"{HEAD}seeds = 1\n{BUDGET}{STATIC}{narrow}")
    assert main(["study", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    estimate = float(re.search(r"at least ([0-9.e+-]+) TFLOP", out).group(1)) * 1e12
    spec, directory = read_study(path)
    driver = StudyDriver(spec, directory, print)
    rows = [run_job(driver.job(trial)) for trial in driver.trials]
    recorded = sum(row.flops for row in rows if row is not None and row.flops is not None)
    assert len(rows) == 2 and estimate == pytest.approx(recorded, rel=5e-3)  # 3 digits printed


def test_a_study_directory_given_for_its_file_says_so(tmp_path, capsys) -> None:
    """``esper study out`` (the study's directory) said "'out' does not exist or is not a
    file": it exists."""
    _, directory = read_study(_study(tmp_path, f"{HEAD}{BUDGET}{STATIC}"))
    directory.mkdir()
    (directory / STUDY_FILE).write_text("{}")
    assert main(["study", str(directory)]) == 2
    assert capsys.readouterr().err == (
        f"esper: error: study file {str(directory)!r} is a study's directory; give the study's "
        "TOML file (e.g. studies/impaired.toml), whose out names that directory\n"
    )


def test_a_local_study_whose_data_cannot_be_found_stops_before_ray(
    tmp_path, capsys, monkeypatch
) -> None:
    """The dry run stopped on data it could not find; the real run started Ray and spent
    every attempt of every trial on it (a walk-through)."""
    from esper.cli import study as cli_study

    def refused(*args: object) -> None:
        raise AssertionError(f"Ray was started for {args}")

    monkeypatch.setattr(cli_study, "connect_ray", refused)
    budget = (
        "[task_budgets.fashion_mnist_impaired]\nepochs = 2\nbatches_per_epoch = 1\n"
        f'download = false\ndata_dir = "{tmp_path / "nodata"}"\n'
    )
    body = f'out = "o"\ntasks = ["fashion_mnist_impaired"]\nseeds = 1\n{budget}{STATIC}'
    path = _study(tmp_path, body)
    assert main(["study", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(
        f"esper: error: study file {str(path)!r}: task fashion_mnist_impaired: fashion-mnist "
        "not found: "
    )
    assert err.count("\n") == 1 and not (path.parent / "o").exists()


def test_a_study_begun_with_a_password_in_its_store_url_goes_on(tmp_path) -> None:
    """A new study whose knowledge URL carries a password is refused; one begun before that
    refusal keeps its URL (study.json and its trials hold it) and goes on (a review)."""
    from esper.cli.study import load
    from esper.leyline.config import UserError

    body = f'knowledge = "postgresql://u:pw@127.0.0.1/k"\n{HEAD}{STATIC}'
    path = _study(tmp_path, body)
    with pytest.raises(UserError, match="carries a password"):
        load(path)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / STUDY_FILE).write_text("{}")  # begun: it is a study directory
    spec, directory = load(path)
    assert spec.knowledge == "postgresql://u:pw@127.0.0.1/k" and directory == tmp_path / "o"


def test_a_begun_study_given_a_password_later_does_not_print_it(tmp_path, capsys) -> None:
    """A study begun without a store URL, its file then given one with a password: the line
    naming the changed setting printed the password (a review)."""
    path = _study(tmp_path, f"{HEAD}{STATIC}")
    spec, directory = read_study(path)
    directory.mkdir()
    StudyDriver(spec, directory, print).state.save(directory)
    _study(tmp_path, f'knowledge = "postgresql://u:s3cret@127.0.0.1/k"\n{HEAD}{STATIC}')
    line = _bad(capsys, ["study", str(path), "--dry-run"])
    assert "holds a study run with other settings" in line
    assert "postgresql://u:***@127.0.0.1/k" in line and "s3cret" not in line
