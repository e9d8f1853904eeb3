"""``esper runs``: list, show, compare and DuckDB queries over recorded runs."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from conftest import growth_summary, ppo_summary, unprivileged, write_run
from esper.cli.main import main
from esper.cli.runs import TABLE_ROWS
from esper.leyline.config import HostTraining
from esper.leyline.events import EpochCompleted, PPOUpdate, SlotSnapshot
from esper.leyline.trials import STUDY_FILE, TRIALS_DIR
from esper.nissa import views
from esper.nissa.record import (
    SUMMARY_FILE,
    GrowthSummary,
    PPOSummary,
    RunSummary,
    read_summary,
)
from esper.nissa.views import VIEW_COLUMNS, VIEW_NAMES
from esper.tasks import resolve_training
from test_dashboard import copy_run, write_study


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _summary(run: Path) -> RunSummary:
    summary = read_summary(run)
    assert summary is not None
    return summary


def _growth(run: Path) -> GrowthSummary:
    growth = _summary(run).growth
    assert growth is not None and growth.final is not None
    return growth


def _ppo(run: Path) -> PPOSummary:
    ppo = _summary(run).ppo
    assert ppo is not None
    return ppo


def _query(capsys, sql: str, *paths: Path, fmt: str = "json") -> list[dict[str, Any]]:
    code = main(["runs", "query", sql, "--runs", *map(str, paths), "--format", fmt])
    out = capsys.readouterr().out
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines()]


class _Counting(io.TextIOBase):
    """A stdout that keeps its last line and the number of lines written to it."""

    def __init__(self) -> None:
        self.lines, self.last = 0, ""

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        self.last = text.rstrip("\r\n").rsplit("\n", 1)[-1] or self.last
        return len(text)


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_a_huge_answer_is_written_in_bounded_memory(recorded_runs, monkeypatch, fmt) -> None:
    """csv and json rows are written as they are fetched, and a table shows the first
    ``TABLE_ROWS`` and counts the rest: the whole answer was held as Python tuples first (0.7
    GB for 2M rows of three columns; a table 0.9 GB)."""
    n = 50_000 if fmt == "json" else 100_000  # json takes longer per row
    monkeypatch.setattr(views, "FETCH_ROWS", 1_000, raising=False)
    sql = f"SELECT range AS i, range * 2 AS j, 'row ' || range AS s FROM range({n})"
    out = _Counting()
    monkeypatch.setattr(sys, "stdout", out)
    import duckdb  # noqa: F401  (imported before the count: the first import is not the answer)

    tracemalloc.start()
    try:
        assert (
            main(["runs", "query", sql, "--runs", str(recorded_runs["static"]), "--format", fmt])
            == 0
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    last = n - 1
    if fmt == "table":  # a header, a rule, the rows shown, the count
        assert out.lines == 2 + TABLE_ROWS + 1
        shown = f"the first {TABLE_ROWS:,} shown; --format csv writes them all"
        assert out.last == f"({n:,} rows, {shown})"
    else:
        assert out.lines == n + (fmt == "csv")  # csv's header line
        row = json.dumps({"i": last, "j": 2 * last, "s": f"row {last}"})
        assert out.last == (f"{last},{2 * last},row {last}" if fmt == "csv" else row)
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB"  # whole: 31 (csv), 10 (json), 38 MiB


def test_list_shows_each_run_from_its_summary(tmp_path: Path, recorded_runs, capsys) -> None:
    parent = tmp_path / "runs"
    for mode in ("heuristic", "ppo"):
        shutil.copytree(recorded_runs[mode], parent / mode)
    (parent / "notes").mkdir()  # not a run: ignored
    assert main(["runs", "list", str(parent)]) == 0
    lines = capsys.readouterr().out.splitlines()
    heuristic = next(line.split() for line in lines if line.startswith("heuristic "))
    s = _growth(recorded_runs["heuristic"])
    assert heuristic[:6] == ["heuristic", "heuristic", "synthetic", "0", "completed", "40/40"]
    assert s.final is not None and heuristic[6] == f"{s.final.val_accuracy:.2f}%"
    assert heuristic[7] == f"{s.param_count:,}" and heuristic[8] == "—"  # no return: not PPO
    ppo = next(line.split() for line in lines if line.startswith("ppo "))
    p = _ppo(recorded_runs["ppo"])
    assert ppo[5] == "2/2" and ppo[6] == f"{p.final_mean_accuracy:.2f}%"
    assert ppo[7] == "—" and ppo[8] == f"{p.final_mean_return:.3f}"


def test_list_reads_an_unfinished_run_from_its_log(tmp_path: Path, recorded_runs, capsys) -> None:
    run = tmp_path / "live"
    shutil.copytree(recorded_runs["heuristic"], run)
    (run / "summary.json").unlink()
    records = _records(run)
    keep = [r for r in records if r["event"] != "RunFinished"][:30]
    last = [r for r in keep if r["event"] == "EpochCompleted"][-1]
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep) + '{"t": 1')
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "events.jsonl").write_text("garbage\n")
    assert main(["runs", "list", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    row = next(line.split() for line in captured.out.splitlines() if line.startswith("live "))
    assert row[4] == "unfinished" and row[5] == f"{last['epoch']}/40"
    assert row[6] == f"{last['val_accuracy']:.2f}%"
    assert "broken: not readable" in captured.err
    assert f"live: events.jsonl line {len(keep) + 1} is truncated" in captured.err
    # an unfinished run's config.json with a section that is no table was a TypeError
    # traceback that hid every other run (a walk-through)
    for config in ('{"training": 5}', '{"training": {"epochs": "many"}}', "{}"):
        (run / "config.json").write_text(config)
        assert main(["runs", "list", str(tmp_path)]) == 0
        err = capsys.readouterr().err
        assert f"live: not readable: {run / 'config.json'}: training.epochs is not a whole" in err


def test_compare_reads_an_unfinished_run_from_its_log(
    tmp_path: Path, recorded_runs, capsys
) -> None:
    """``runs list`` showed a killed run's epoch, accuracy and size from its log; ``runs
    compare`` showed its column all "—", epochs and params included (a walk-through)."""
    for name in ("live", "ppo-live"):
        shutil.copytree(
            recorded_runs["ppo" if name == "ppo-live" else "heuristic"], tmp_path / name
        )
        (tmp_path / name / "summary.json").unlink()
    run = tmp_path / "live"
    keep = [r for r in _records(run) if r["event"] != "RunFinished"][:30]
    last = [r for r in keep if r["event"] == "EpochCompleted"][-1]
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    ppo = tmp_path / "ppo-live"
    update = [r for r in _records(ppo) if r["event"] == "PPOUpdate"][-1]
    finished = recorded_runs["static"]
    assert main(["runs", "compare", str(finished), str(run), str(ppo)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in out)}
    static = _growth(finished)
    assert static.final is not None
    assert rows["status"] == ["completed", "unfinished", "unfinished"]
    assert rows["epochs"] == [str(static.epochs_completed), str(last["epoch"]), "—"]
    assert rows["last epoch val acc"] == [
        f"{static.final.val_accuracy:.2f}%",
        f"{last['val_accuracy']:.2f}%",
        "—",
    ]
    assert rows["params"] == [f"{static.param_count:,}", f"{last['param_count']:,}", "—"]
    assert rows["rounds"] == ["—", "—", str(update["round"])]
    assert rows["final mean return"] == ["—", "—", f"{update['mean_return']:.3f}"]
    # the loss and best of the log too (they read "—" beside the last accuracy; a walk-through)
    best = max(r["val_accuracy"] for r in keep if r["event"] == "EpochCompleted")
    assert rows["best epoch val acc"][1:] == [f"{best:.2f}%", "—"]
    assert rows["last epoch val loss"][1:] == [f"{last['val_loss']:.4f}", "—"]
    returns = [r["mean_return"] for r in _records(ppo) if r["event"] == "PPOUpdate"]
    assert rows["best mean return"][1:] == ["—", f"{max(returns):.3f}"]
    assert rows["env steps"][1:] == ["—", f"{update['env_steps']:,}"]
    with (run / "events.jsonl").open("a") as log:
        log.write("{not an event\n")
    assert main(["runs", "compare", str(finished), str(run)]) == 2
    assert "live: not readable: " in capsys.readouterr().err


def test_show_counts_every_event(recorded_runs, capsys) -> None:
    assert main(["runs", "show", str(recorded_runs["ppo"])]) == 0
    out = capsys.readouterr().out
    counts = Counter(r["event"] for r in _records(recorded_runs["ppo"]))
    for name, count in counts.items():
        assert f"  {name:<18}{count}" in out.splitlines()
    assert "mode      ppo" in out


def test_compare_puts_final_metrics_side_by_side(recorded_runs, capsys) -> None:
    runs = [recorded_runs[m] for m in ("static", "heuristic", "ppo")]
    assert main(["runs", "compare", *map(str, runs)]) == 0
    rows = {line[:18].strip(): line[18:].split() for line in capsys.readouterr().out.splitlines()}
    static, heuristic, ppo = _growth(runs[0]), _growth(runs[1]), _ppo(runs[2])
    assert static.final is not None and heuristic.final is not None
    assert rows["last epoch val acc"] == [
        f"{static.final.val_accuracy:.2f}%",
        f"{heuristic.final.val_accuracy:.2f}%",
        "—",
    ]
    assert rows["fossilized"] == ["0", str(heuristic.fossilized), "—"]
    assert rows["final mean return"] == ["—", "—", f"{ppo.final_mean_return:.3f}"]


def test_compare_tells_runs_of_one_name_apart(tmp_path, recorded_runs, capsys) -> None:
    """Two runs named h0 in two directories had two columns both headed h0."""
    a, b = tmp_path / "a" / "h0", tmp_path / "b" / "h0"
    shutil.copytree(recorded_runs["static"], a)
    shutil.copytree(recorded_runs["heuristic"], b)
    assert main(["runs", "compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == [str(a), str(b)]


def test_compare_shows_the_host_settings_the_runs_do_not_share(tmp_path, capsys) -> None:
    """Runs validated on 32 and 64 samples stood side by side under "final val acc" with no
    word of it. A row per setting they do not share; none for those they do."""
    common = ["static", "--task", "synthetic", "--epochs", "1", "--batches-per-epoch", "1"]
    for name, samples in (("a", "32"), ("b", "64"), ("c", "64")):
        assert main([*common, "--val-samples", samples, "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert main(["runs", "compare", *(str(tmp_path / n) for n in "abc")]) == 0
    lines = capsys.readouterr().out.splitlines()
    settings = [line.split() for line in lines if line.startswith("setting ")]
    assert settings == [["setting", "val_samples", "32", "64", "64"]]
    assert main(["runs", "compare", str(tmp_path / "b"), str(tmp_path / "c")]) == 0
    assert "setting " not in capsys.readouterr().out


def test_compare_shows_the_growth_settings_the_runs_do_not_share(tmp_path, capsys) -> None:
    """Runs that grew in other slots, with seeds on another learning rate or advanced by the
    engine stood side by side with no setting row (a walk-through: the README promises one
    per host setting they do not share)."""
    common = ["heuristic", "--task", "synthetic", "--epochs", "1", "--batches-per-epoch", "1"]
    changed = ["--slots", "early", "--seed-lr", "0.01", "--auto-advance", "--shapley"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, *changed, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["runs", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("  ")[0]: line.split()[2:] for line in lines if line.startswith("setting ")}
    default = resolve_training(HostTraining("synthetic"))
    slots = ", ".join(default.slots)
    assert rows == {
        "setting seed_lr": [str(default.seed_lr), "0.01"],
        "setting slots": [*slots.split(), "early"],
        "setting auto_advance": ["False", "True"],
        "setting shapley": ["False", "True"],
    }


def test_every_view_exists_with_its_declared_columns(recorded_runs, capsys) -> None:
    for view in VIEW_NAMES:
        rows = _query(capsys, f"DESCRIBE {view}", recorded_runs["heuristic"])
        assert [(r["column_name"], r["column_type"]) for r in rows] == VIEW_COLUMNS[view]
    epoch_fields = {f.name for f in fields(EpochCompleted)}
    assert epoch_fields <= {c for c, _ in VIEW_COLUMNS["epochs"]}
    assert {f.name for f in fields(SlotSnapshot)} <= {c for c, _ in VIEW_COLUMNS["slots"]}
    assert {f.name for f in fields(PPOUpdate)} <= {c for c, _ in VIEW_COLUMNS["ppo_updates"]}


def test_views_match_the_event_log(recorded_runs, capsys) -> None:
    heuristic, ppo = recorded_runs["heuristic"], recorded_runs["ppo"]
    records = _records(heuristic)
    epochs = [r for r in records if r["event"] == "EpochCompleted"]
    rows = _query(capsys, "SELECT epoch, val_accuracy FROM epochs ORDER BY epoch", heuristic)
    assert [(r["epoch"], r["val_accuracy"]) for r in rows] == [
        (e["epoch"], e["val_accuracy"]) for e in epochs
    ]
    slots = _query(capsys, "SELECT count(*) AS n FROM slots", heuristic)
    assert slots == [{"n": sum(len(e["slots"]) for e in epochs)}]
    fossilized = _query(
        capsys, "SELECT slot FROM lifecycle WHERE to_stage = 'FOSSILIZED' ORDER BY t", heuristic
    )
    assert [r["slot"] for r in fossilized] == [
        r["slot"]
        for r in records
        if r["event"] == "SeedTransition" and r["to_stage"] == "FOSSILIZED"
    ]
    # The reward total is the sum of its components, step by step.
    sums = _query(
        capsys,
        "SELECT r.env, r.episode, r.epoch, r.total, sum(c.value) AS parts FROM rewards r "
        "JOIN reward_components c USING (run, env, episode, epoch) GROUP BY ALL",
        ppo,
    )
    assert len(sums) == sum(r["event"] == "RewardComputed" for r in _records(ppo))
    assert all(r["total"] == pytest.approx(r["parts"]) for r in sums)
    updates = _query(capsys, "SELECT round, entropy FROM ppo_updates ORDER BY round", ppo)
    logged = [r for r in _records(ppo) if r["event"] == "PPOUpdate"]
    assert updates == [{"round": u["round"], "entropy": u["entropy"]} for u in logged]
    runs = _query(capsys, "SELECT run, mode, status FROM runs ORDER BY run", heuristic, ppo)
    assert runs == [
        {"run": "heuristic", "mode": "heuristic", "status": "completed"},
        {"run": "ppo", "mode": "ppo", "status": "completed"},
    ]
    missing = _query(capsys, "SELECT count(*) AS n FROM epochs WHERE env IS NOT NULL", heuristic)
    assert missing == [{"n": 0}]  # env is NULL outside PPO runs, never 0


def test_query_formats(recorded_runs, capsys) -> None:
    sql = "SELECT epoch, val_accuracy FROM epochs ORDER BY epoch LIMIT 2"
    assert (
        main(["runs", "query", sql, "--runs", str(recorded_runs["static"]), "--format", "csv"]) == 0
    )
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["epoch", "val_accuracy"] and [r[0] for r in rows[1:]] == ["1", "2"]
    assert main(["runs", "query", sql, "--runs", str(recorded_runs["static"])]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["epoch", "val_accuracy"] and table[-1] == "(2 rows)"
    # JSON columns are nested in --format json as what they hold (they were strings of JSON
    # text, to be decoded twice), and compare equal to the log's own lines
    sql = (
        "SELECT epoch, slots, record FROM epochs JOIN events USING (run, t) WHERE event = "
        "'EpochCompleted' AND CAST(record->>'epoch' AS INTEGER) = epoch ORDER BY epoch"
    )
    rows = _query(capsys, f"{sql} LIMIT 1", recorded_runs["heuristic"])
    logged = next(r for r in _records(recorded_runs["heuristic"]) if r["event"] == "EpochCompleted")
    assert rows[0]["slots"] == logged["slots"] and rows[0]["record"] == logged
    # JSON that DuckDB takes and Python cannot parse stays its text (it was a traceback)
    big = "('[' || repeat('9', 5000) || ']')::JSON AS big"
    deep = "(repeat('[', 3000) || repeat(']', 3000))::JSON AS deep"
    rows = _query(capsys, f"SELECT {big}, {deep}", recorded_runs["static"])
    assert rows == [{"big": f"[{'9' * 5000}]", "deep": "[" * 3000 + "]" * 3000}]


def test_a_truncated_last_line_is_reported_and_skipped(tmp_path, recorded_runs, capsys) -> None:
    run = tmp_path / "crashed"
    shutil.copytree(recorded_runs["static"], run)
    with (run / "events.jsonl").open("a") as f:
        f.write('{"t": 5.0, "run_id": "crashed", "event": "EpochComp')
    lines = len((run / "events.jsonl").read_text().splitlines())
    code = main(["runs", "query", "SELECT count(*) AS n FROM events", "--runs", str(run)])
    captured = capsys.readouterr()
    assert code == 0
    assert f"line {lines} is truncated" in captured.err
    assert captured.out.splitlines()[2].strip() == str(lines - 1)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("epoch", 2**63, "epoch 9223372036854775808 (the epochs view) does not fit"),
        ("val_loss", 10**30, None),
    ],  # an integer in a DOUBLE column loads as a float
)
def test_an_event_number_beyond_its_column_is_one_line(
    tmp_path, recorded_runs, capsys, field: str, value: int, expected: str | None
) -> None:
    """A number a view's column cannot hold (DuckDB's cast error and a traceback before)."""
    run = tmp_path / "altered"
    shutil.copytree(recorded_runs["static"], run)
    lines = (run / "events.jsonl").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"EpochCompleted"' in line)
    record = json.loads(lines[at])
    record[field] = value
    lines[at] = json.dumps(record)
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    code = main(["runs", "query", f"SELECT max({field}) AS m FROM epochs", "--runs", str(run)])
    captured = capsys.readouterr()
    if expected is None:
        assert code == 0 and "1e+30" in captured.out.replace("1e30", "1e+30")
        return
    assert code == 2 and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert f"{run / 'events.jsonl'}: {expected}" in captured.err


def test_runs_with_the_same_name_are_told_apart_by_path(tmp_path, recorded_runs, capsys) -> None:
    for parent in ("a", "b"):
        shutil.copytree(recorded_runs["static"], tmp_path / parent / "run")
    rows = _query(capsys, "SELECT run FROM runs ORDER BY run", tmp_path / "a", tmp_path / "b")
    assert [r["run"] for r in rows] == [str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]


def test_a_run_linked_beside_itself_is_one_run(tmp_path, recorded_runs, capsys) -> None:
    """``runs/latest -> runs/x`` made ``runs list`` show the run twice, and a query counted it
    once under the link's name (the later name won). Both now have it once, under its
    directory's name, whichever sorts first; given twice, it keeps the name given last."""
    parent = tmp_path / "runs"
    shutil.copytree(recorded_runs["static"], parent / "x")
    shutil.copytree(recorded_runs["heuristic"], parent / "y")
    (parent / "a-latest").symlink_to("x")  # sorts before its target
    (parent / "z-latest").symlink_to(parent / "y")  # after it, and absolute
    write_study(parent / "st", recorded_runs)
    (parent / "a-st").symlink_to("st")  # a link to a study: its trials are no links (a review)
    trials = [
        f"st/synthetic.{arm}.seed{seed}" for arm in ("heuristic", "static") for seed in (0, 1)
    ]
    assert main(["runs", "list", str(parent)]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert listed == ["x", "y", *trials]
    rows = _query(capsys, "SELECT run, count(*) AS n FROM runs GROUP BY run ORDER BY run", parent)
    assert rows == [{"run": run, "n": 1} for run in sorted([*trials, "x", "y"])]
    for name in ("a-st", "st"):
        (parent / name).rename(tmp_path / name)  # the rest of the test: runs alone
    given = (parent, parent / "a-latest")
    assert [r["run"] for r in _query(capsys, "SELECT run FROM runs ORDER BY run", *given)] == [
        "a-latest",
        "y",
    ]


def test_the_runs_directory_of_a_study_lists_and_queries_its_trials(
    tmp_path, recorded_runs, capsys, monkeypatch
) -> None:
    """After ``esper study`` writes ``runs/STUDY``, ``esper runs`` on ``runs/`` shows its trials
    as runs named ``STUDY/trial``, as the dashboard does (it said "no runs in runs"), and the
    ``trials`` view holds its trials.csv, naming each trial's run as the other views do (so
    trials join epochs). A study's trials folder given alone fills the ``trials`` view too (it
    was silently empty)."""
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "solo")
    study = write_study(runs / "st", recorded_runs)
    trials = [f"synthetic.{arm}.seed{seed}" for arm in ("heuristic", "static") for seed in (0, 1)]
    assert main(["runs", "list", str(runs)]) == 0
    listed = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[2:]]
    names = ["solo", *(f"st/{t}" for t in trials)]
    modes = ["static", *(name.split(".")[1] for name in trials)]
    assert listed == [[n, m] for n, m in zip(names, modes, strict=True)]

    sql = "SELECT run, arm, seed, count(e.epoch) AS epochs FROM trials LEFT JOIN epochs e USING "
    sql += "(run) GROUP BY ALL ORDER BY run"
    epochs = {
        t: sum(r["event"] == "EpochCompleted" for r in _records(study / TRIALS_DIR / t))
        for t in trials
    }
    expected = [
        {"run": f"st/{t}", "arm": t.split(".")[1], "seed": int(t[-1]), "epochs": epochs[t]}
        for t in trials
    ]
    assert all(epochs.values()) and _query(capsys, sql, runs) == expected
    given_alone = [{**row, "run": row["run"].removeprefix("st/")} for row in expected]
    assert _query(capsys, sql, study / TRIALS_DIR) == given_alone
    assert _query(capsys, sql, study) == given_alone
    both = _query(capsys, "SELECT count(*) AS n FROM trials", runs, study, study / TRIALS_DIR)
    assert both == [{"n": len(trials)}]  # one study, however it is named
    # ... and its trials' runs named alike in every view, however it is spelt (review)
    monkeypatch.chdir(tmp_path)
    assert _query(capsys, sql, study, Path("runs")) == expected
    # the study itself too: its column was the path as --runs spelt it (a walk-through)
    spelt = [Path("runs/st"), Path("runs/st/../st"), study]
    places = [_query(capsys, "SELECT DISTINCT study FROM trials", s) for s in spelt]
    assert places == [[{"study": str(study)}]] * 3

    # A run holding a stray study.json is one run (it was listed twice: solo and solo/solo),
    # and a trial that cannot be read is named with its study.
    (runs / "solo" / STUDY_FILE).write_text("{}")
    (study / TRIALS_DIR / trials[-1] / "events.jsonl").write_text("")
    assert main(["runs", "list", str(runs)]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[2:]] == names[:-1]
    assert err.startswith(f"st/{trials[-1]}: not readable: ")


def test_names_that_showed_alike_are_two_runs(tmp_path, recorded_runs, capsys) -> None:
    """A directory named with the byte 0xff and one named with the four characters \\xff
    both showed as r\\xff: the runs views pooled their epochs into one group, and the
    dashboard served only one of them."""
    from esper.karn.dashboard import run_paths

    byte, text = tmp_path / os.fsdecode(b"r\xff"), tmp_path / "r\\xff"
    shutil.copytree(recorded_runs["heuristic"], byte)
    shutil.copytree(recorded_runs["static"], text)
    rows = _query(capsys, "SELECT run, count(*) AS n FROM epochs GROUP BY run ORDER BY run",
                  tmp_path)  # fmt: skip
    assert rows == [{"run": "r\\\\xff", "n": 40}, {"run": "r\\xff", "n": 40}]  # "\\" < "x"
    assert sorted(run_paths(tmp_path)) == ["r\\\\xff", "r\\xff"]


def test_names_that_would_drive_the_terminal_are_shown_escaped(
    tmp_path, recorded_runs, capsys
) -> None:
    """A run copied under a name holding an escape sequence or a newline (Esper refuses such
    an --out, but a copy is named by hand) was printed as it is: the terminal turned red, and
    the newline split a table's row in two."""
    red, broken = tmp_path / "esc\x1b[31mred", tmp_path / "new\nline"
    shutil.copytree(recorded_runs["heuristic"], red)
    shutil.copytree(recorded_runs["static"], broken)
    assert main(["runs", "list", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "\x1b" not in listed and len(listed.splitlines()) == 4  # header, rule, two runs
    assert [line.split()[0] for line in listed.splitlines()[2:]] == [
        "esc\\x1b[31mred",
        "new\\nline",
    ]
    assert main(["runs", "show", str(broken)]) == 0
    shown = capsys.readouterr().out.splitlines()[0]
    assert shown == f"run       new\\nline  ({tmp_path}/new\\nline)"
    assert main(["runs", "compare", str(red), str(broken)]) == 0
    assert "\x1b" not in capsys.readouterr().out
    rows = _query(capsys, "SELECT run FROM runs ORDER BY run", tmp_path)
    assert rows == [{"run": "esc\\x1b[31mred"}, {"run": "new\\nline"}]


def test_a_summary_copied_from_another_run_is_not_taken_for_the_runs(
    tmp_path, recorded_runs, capsys
) -> None:
    """A PPO run's summary.json copied into a heuristic run was listed as its result (PPO
    figures in a growth row), and the other way round."""
    parent = tmp_path / "runs"
    for run, other in (("heuristic", "ppo"), ("ppo", "heuristic")):
        shutil.copytree(recorded_runs[run], parent / run)
        shutil.copy(recorded_runs[other] / "summary.json", parent / run / "summary.json")
    assert main(["runs", "list", str(parent)]) == 0
    err = capsys.readouterr().err.splitlines()
    ids = {run: json.loads((recorded_runs[run] / "meta.json").read_text())["run_id"]
           for run in ("heuristic", "ppo")}  # fmt: skip
    for run, other in (("heuristic", "ppo"), ("ppo", "heuristic")):
        summary = parent / run / "summary.json"
        assert f"{str(summary)!r} is the summary of another run ({other} run {ids[other]!r}; " \
            f"the event log is of the {run} run {ids[run]!r})" in "\n".join(err)  # fmt: skip
    assert main(["runs", "show", str(parent / "ppo")]) == 2
    assert "is the summary of another run" in capsys.readouterr().err
    # The run of the same name and mode in another place (another study's trial, say): its
    # seed, task or length differ from what this run's log started with.
    for field, value in (("seed", 99), ("task", "digits"), ("epochs_planned", 41)):
        copy = parent / f"same-{field}"
        shutil.copytree(recorded_runs["heuristic"], copy)
        summary = json.loads((copy / "summary.json").read_text())
        (summary["growth"] if field == "epochs_planned" else summary)[field] = value
        (copy / "summary.json").write_text(json.dumps(summary))
        assert main(["runs", "show", str(copy)]) == 2
        line = capsys.readouterr().err
        assert line.count("\n") == 1 and "is the summary of another run of the name" in line
        assert f"{field.split('_')[0]} {value!r} (the log: " in line, line


def test_names_and_strings_that_are_no_utf8_are_queried(tmp_path, recorded_runs, capsys) -> None:
    """A run copied under a name that is no UTF-8, or a logged string holding such bytes
    (escaped as a lone surrogate), made DuckDB refuse the views' own JSON: a traceback."""
    run = tmp_path / os.fsdecode(b"run\xff")
    shutil.copytree(recorded_runs["heuristic"], run)
    lines = (run / "events.jsonl").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"ActionTaken"' in line)
    lines[at] = lines[at].replace('"reason": "', '"reason": "\\udcff', 1)
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    rows = _query(capsys, "SELECT run, path FROM runs", run)
    assert rows == [{"run": "run\\xff", "path": f"{tmp_path}/run\\xff"}]
    # two such names stay two runs (shown alike as U+FFFD, they were taken for one)
    shutil.copytree(run, tmp_path / os.fsdecode(b"run\xfe"))
    sql = "SELECT run, count(*) AS n FROM epochs GROUP BY run ORDER BY run"
    epochs = sum('"EpochCompleted"' in line for line in lines)
    rows = _query(capsys, sql, tmp_path)
    assert rows == [{"run": "run\\xfe", "n": epochs}, {"run": "run\\xff", "n": epochs}]
    rows = _query(capsys, "SELECT reason FROM actions", run)
    assert len(rows) == sum('"ActionTaken"' in line for line in lines)
    assert rows[0]["reason"].startswith("?") and not rows[1]["reason"].startswith("?")


def test_a_damaged_run_is_named_not_passed_over(tmp_path: Path, recorded_runs, capsys) -> None:
    """A run directory that lost its config.json or events.jsonl was skipped in silence: the
    run vanished from ``runs list``, and a query counted the runs left without a word."""
    parent = tmp_path / "runs"
    for name, lost in (("whole", None), ("no_config", "config.json"), ("no_log", "events.jsonl")):
        shutil.copytree(recorded_runs["heuristic"], parent / name)
        if lost is not None:
            (parent / name / lost).unlink()
    (parent / "plots").mkdir()  # no run's file in it: not a run, not named
    (parent / "plots" / "curve.png").write_bytes(b"png")
    (parent / "hf-model").mkdir()  # a config.json is many tools' (a review): not a run either
    (parent / "hf-model" / "config.json").write_text("{}")
    staging = parent / ".esper-partial-1@h@x"  # a run being assembled (or a start killed
    staging.mkdir()  # before its rename): no run, even once it holds a run's files
    shutil.copy(recorded_runs["heuristic"] / "config.json", staging / "config.json")
    (staging / "events.jsonl").write_text("")
    shutil.copy(recorded_runs["heuristic"] / "meta.json", parent / "meta.json")  # beside them:
    # the runs folder is no damaged run for it (every run in it was hidden; a review)
    assert main(["runs", "list", str(parent)]) == 0
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[2:]] == ["whole"]
    assert captured.err.splitlines() == [
        f"no_config: not readable: {str(parent / 'no_config')!r} is not an Esper run directory "
        "(no config.json file)",
        f"no_log: not readable: {str(parent / 'no_log')!r} is not an Esper run directory "
        "(no events.jsonl file)",
    ]
    # a query over the directory would count one run of three: refused, saying how to go on
    assert main(["runs", "query", "SELECT count(*) FROM runs", "--runs", str(parent)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error: ") and "(no config.json file); it is in " in err
    assert err.rstrip().endswith("name the other runs to leave it out") and err.count("\n") == 1
    rows = _query(capsys, "SELECT count(*) AS n FROM runs", parent / "whole")
    assert rows == [{"n": 1}]
    # named itself, it says what it lacks (it read "no runs in ...", exit 0), and a query of
    # it alone names no other runs to name
    assert main(["runs", "list", str(parent / "no_log")]) == 0
    assert "no_log: not readable: " in capsys.readouterr().err
    assert main(["runs", "query", "SELECT 1", "--runs", str(parent / "no_log")]) == 2
    assert capsys.readouterr().err.rstrip().endswith("(no events.jsonl file)")
    shutil.rmtree(parent / "no_config")
    shutil.rmtree(parent / "no_log")
    assert _query(capsys, "SELECT count(*) AS n FROM runs", parent) == [{"n": 1}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "show", "{tmp}/missing"], "run directory '{tmp}/missing' does not exist"),
        (["runs", "list", "{tmp}/missing"], "runs directory '{tmp}/missing' does not exist"),
        (["runs", "compare", "{tmp}"], "is not an Esper run directory"),
        (["runs", "query", "SELECT 1", "--runs", "{tmp}"], "holds no Esper runs"),
        (["runs", "query", "SELEC nothing", "--runs", "{run}"], "query failed: Parser Error"),
        (["runs", "query", "SELECT * FROM nope", "--runs", "{run}"], "query failed: Catalog"),
        (["runs", "query", "", "--runs", "{run}"], "no SQL statement in ''"),
        (["runs", "query", "-- a comment ;", "--runs", "{run}"], "no SQL statement in"),
        # DuckDB ran both and printed the last alone (adversarial sweep)
        (["runs", "query", "SELECT 1; SELECT 2", "--runs", "{run}"], "one SQL statement at a"),
        # queries read the views only: no file is written, attached, read or installed
        (["runs", "query", "COPY runs TO '{tmp}/x.csv'", "--runs", "{run}"], "Permission Error"),
        (["runs", "query", "ATTACH '{tmp}/x.db'", "--runs", "{run}"], "Permission Error"),
        (["runs", "query", "SELECT * FROM read_csv('{csv}')", "--runs", "{run}"], "Permission"),
        (["runs", "query", "INSTALL httpfs", "--runs", "{run}"], "Permission Error"),
        (["runs", "query", "SET enable_external_access = true", "--runs", "{run}"], "locked"),
        (["runs", "show", "{bad}"], "bad/events.jsonl:3: malformed event line"),
        # a second sweep: TypeError out of DuckDB's parser, exit 1
        (["runs", "query", "SELECT '\udcff'", "--runs", "{run}"], "the SQL is not UTF-8 text"),
        # --runs took the SQL for a path, and the message did not say so (views walk-through)
        (["runs", "query", "--runs", "{run}", "SELECT 1"], "sql; a --runs before it takes every"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, recorded_runs, capsys, args, message) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(recorded_runs["static"], bad)
    lines = (bad / "events.jsonl").read_text().splitlines()
    lines[2] = "{oops"
    (bad / "events.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "empty").mkdir()
    csv_file = recorded_runs["static"] / "metrics.csv"
    where = {"tmp": str(tmp_path / "empty"), "run": str(recorded_runs["static"]), "bad": str(bad)}
    where["csv"] = str(csv_file)
    assert main([a.format(**where) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error: ") and err.count("\n") == 1
    assert message.format(**where) in err
    assert not any((tmp_path / "empty").iterdir())


def test_a_query_writes_nothing_beside_itself(tmp_path, recorded_runs, capsys, monkeypatch):
    """Two ways a query left files (a walk-through): DuckDB spilled a big sort or join to
    ./.tmp in the working directory, and SIGTERM (``timeout``, a scheduler) killed it with its
    temporary copy of every log left in $TMPDIR (2 GB for 3,000 runs). Spilling is off (a query
    past memory fails in one line), and SIGTERM stops a query as Ctrl-C does, cleaning up."""
    import signal
    import tempfile

    [row] = _query(capsys, "SELECT current_setting('temp_directory') AS t", recorded_runs["static"])
    assert row == {"t": ""}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    read = views.read_events

    def terminated(path: Path) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # as the logs are copied
        return read(path)

    monkeypatch.setattr(views, "read_events", terminated)
    assert main(["runs", "query", "SELECT 1", "--runs", str(recorded_runs["static"])]) == 130
    assert "esper: interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_views_show_a_resumed_run_as_it_finally_happened(tmp_path, recorded_runs, capsys) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(recorded_runs["static"], run)
    records = _records(run)
    epochs = [r for r in records if r["event"] == "EpochCompleted"]
    first = [records[0], *epochs[:5]]  # the attempt Ctrl-C stopped after epoch 5 ...
    stopped = {**records[-1], "status": "interrupted", "epochs": 3}  # ... checkpointed at 3
    resumed = {**records[0], "resumed_from_epoch": 3}
    again = [{**e, "val_accuracy": 1.0 + e["epoch"]} for e in epochs[3:6]]  # epochs 4–6 rerun
    lines = [*first, stopped, resumed, *again]
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = _query(capsys, "SELECT epoch, val_accuracy FROM epochs ORDER BY epoch", run)
    expected = [(e["epoch"], e["val_accuracy"]) for e in epochs[:3]]
    expected += [(e["epoch"], 1.0 + e["epoch"]) for e in epochs[3:6]]
    assert [(r["epoch"], r["val_accuracy"]) for r in rows] == expected
    assert _query(capsys, "SELECT count(*) AS n FROM events", run) == [{"n": len(lines)}]
    # runs show counts the log's events, the rerun epochs twice: it says so (it did not)
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "resumes": [{"step": 3}]}))
    assert main(["runs", "show", str(run)]) == 0
    shown = capsys.readouterr().out
    logged = f"events    {len(lines)} in events.jsonl (as logged: a resume logs again what ran "
    assert logged in shown
    assert f"  EpochCompleted    {len(first) - 1 + len(again)}\n" in shown


# --- runs written through esper.nissa.record (the one summary schema) ----------------------


def test_list_and_compare_read_the_record_summary(tmp_path: Path, capsys) -> None:
    growth = write_run(tmp_path / "grow", growth_summary("grow"))
    ppo = write_run(tmp_path / "learn", ppo_summary("learn"))
    assert main(["runs", "list", str(tmp_path)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["grow"][1:6] == ["heuristic", "synthetic", "7", "interrupted", "3/5"]
    # the final val accuracy was NaN: written as null, shown as missing
    assert rows["grow"][6:] == ["—", "1,200", "—"]
    assert rows["learn"][4:] == ["failed", "2/4", "—", "—", "1.250"]
    assert main(["runs", "compare", str(growth), str(ppo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    width = lines[0].index("grow")  # the label column's
    table = {line[:width].strip(): line[width:].split() for line in lines}
    assert table["best epoch val acc"] == ["77.50%", "—"] and table["fossilized"] == ["1", "—"]
    assert table["last epoch train acc"] == ["81.00%", "—"]
    assert table["env steps"] == ["—", "640"] and table["best mean return"] == ["—", "1.500"]
    assert table["training time (s)"] == ["12.5", "3.0"]
    assert table["host params"] == ["1,000", "—"]  # the run report's format too


def test_show_prints_the_summary_and_meta(tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "grow", growth_summary("grow"))
    assert main(["runs", "show", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = next(line for line in out if line.startswith("summary   "))
    assert json.loads(summary.removeprefix("summary   ")) == growth_summary("grow").to_json()
    assert any(line.startswith("git       ") and "started 20" in line for line in out)


def test_show_names_the_runs_data(recorded_runs, capsys) -> None:
    assert main(["runs", "show", str(recorded_runs["static"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        "data      synthetic from generated (make_synthetic, seed 0): 512 train / 256 val / "
        "256 test"
    ) in out


def test_a_malformed_summary_is_one_line_for_every_runs_command(tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "grow", None)
    (run / SUMMARY_FILE).mkdir()
    write_run(tmp_path / "fine", growth_summary("fine"))
    assert main(["runs", "list", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "fine" in captured.out
    assert f"grow: not readable: {str(run / SUMMARY_FILE)!r} is a directory" in captured.err
    for command in (["show", str(run)], ["compare", str(run)]):
        assert main(["runs", *command]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "is a directory" in err
    (run / SUMMARY_FILE).rmdir()
    meta = (run / "meta.json").read_text()
    (run / "meta.json").write_text("[]")
    assert main(["runs", "show", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "meta.json' is not an Esper run meta file" in err and "\n" not in err
    (run / "meta.json").write_text(meta.replace('"threads": 1,', '"threads": 0,'))  # was taken
    assert main(["runs", "show", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "meta file: threads must be an integer in [1, " in err and "\n" not in err


def test_json_rows_need_distinct_column_names(recorded_runs, capsys) -> None:
    """``SELECT 1 AS a, 2 AS a`` printed {"a": 2}: one of the values was lost."""
    sql = "SELECT 1 AS a, 2 AS a, 3 AS b"
    args = ["runs", "query", sql, "--runs", str(recorded_runs["static"]), "--format", "json"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert "--format json needs distinct column names; ['a'] repeat" in captured.err
    assert main([*args[:-2], "--format", "csv"]) == 0  # a table keeps both
    assert capsys.readouterr().out.splitlines() == ["a,a,b", "1,2,3"]


def test_json_rows_are_strict_json_with_null_for_nan_and_infinity(recorded_runs, capsys) -> None:
    sql = "SELECT 'nan'::DOUBLE AS a, '-inf'::DOUBLE AS b, 1.5::DOUBLE AS c"
    args = ["runs", "query", sql, "--runs", str(recorded_runs["static"]), "--format", "json"]
    assert main(args) == 0
    [line] = capsys.readouterr().out.splitlines()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(line, parse_constant=refuse) == {"a": None, "b": None, "c": 1.5}


def test_json_rows_write_decimals_as_numbers(recorded_runs, capsys) -> None:
    """DuckDB types ``0.1 + 0.2`` and casts to DECIMAL as decimals: they were written as
    strings ({"x": "0.3"}; a review)."""
    sql = "SELECT 0.1 + 0.2 AS x, 100 * 0.5 AS y, 54.444::DECIMAL(6, 2) AS z, "
    sql += "12::DECIMAL(18, 0) AS w"
    args = ["runs", "query", sql, "--runs", str(recorded_runs["static"]), "--format", "json"]
    assert main(args) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line == '{"x": 0.3, "y": 50.0, "z": 54.44, "w": 12}'
    sql = "SELECT [0.1, 0.25] AS l, {'a': 0.5, 'b': [1.5]} AS s"  # in lists and structs too
    assert main([*args[:2], sql, *args[3:]]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line == '{"l": [0.1, 0.25], "s": {"a": 0.5, "b": [1.5]}}'


def test_a_run_directory_that_cannot_be_read_is_named_not_passed_over(
    recorded_runs, tmp_path
) -> None:
    """``runs list`` and ``runs query`` left a directory without permissions out in silence
    (taken for "not a run"); it may hold one, so it is named as not readable."""
    for name in ("a", "b"):
        shutil.copytree(recorded_runs["static"], tmp_path / name)
    (tmp_path / "a").chmod(0o000)
    esper = [*unprivileged(), sys.executable, "-m", "esper"]
    query = ["runs", "query", "SELECT DISTINCT run FROM events", "--runs", str(tmp_path)]
    try:
        listed = subprocess.run(
            [*esper, "runs", "list", str(tmp_path)], capture_output=True, text=True, timeout=120
        )
        queried = subprocess.run([*esper, *query], capture_output=True, text=True, timeout=120)
    finally:
        (tmp_path / "a").chmod(0o755)
    assert queried.returncode == 2 and queried.stdout == ""  # no answer from part of the runs
    assert queried.stderr == f"esper: error: {str(tmp_path / 'a')!r} cannot be read " + (
        f"(Permission denied); it is in {str(tmp_path)!r}: name the other runs to leave it out\n"
    )
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[2:]] == ["b"]
    assert f"a: not readable: {str(tmp_path / 'a')!r} cannot be read (Permission denied)" in (
        listed.stderr
    )


def test_views_write_to_an_ascii_stdout_without_a_traceback(recorded_runs, tmp_path) -> None:
    """With PYTHONIOENCODING=ascii a table's "—" (no return for a growth run) and a run's
    non-ASCII name were a UnicodeEncodeError traceback, exit 1: they are written escaped."""
    shutil.copytree(recorded_runs["static"], tmp_path / "runé")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    listed = subprocess.run(
        [sys.executable, "-m", "esper", "runs", "list", str(tmp_path)],
        capture_output=True,
        text=True,
        encoding="ascii",
        env=env,
        timeout=120,
    )
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    row = listed.stdout.splitlines()[2].split()
    assert row[0] == "run\\xe9" and row[-1] == "\\u2014"  # shown_path's escape, then stdout's


def test_a_study_directory_given_for_a_run_says_where_its_runs_are(tmp_path, capsys) -> None:
    """``esper tui STUDY`` and ``esper runs show STUDY`` said "is not an Esper run directory"
    of a directory esper report takes as a study (a walk-through)."""
    study = tmp_path / "study"
    (study / TRIALS_DIR).mkdir(parents=True)
    (study / STUDY_FILE).write_text("{}")
    for command in (["runs", "show"], ["tui"]):
        assert main([*command, str(study)]) == 2
        assert capsys.readouterr().err == (
            f"esper: error: {str(study)!r} is a study directory, not a run directory: its "
            f"trials' runs are in {str(study / TRIALS_DIR)!r}\n"
        )


def test_a_listing_says_where_a_folder_of_runs_inside_it_is(tmp_path, capsys) -> None:
    """``esper demo --out runs/demo`` then ``esper runs list`` listed nothing and said nothing
    of runs/demo (a walk-through): a listing reads runs and studies one level down."""
    runs = tmp_path / "runs"
    tiny = ["static", "--task", "synthetic", "--epochs", "1", "--batches-per-epoch", "1"]
    for name in ("a", "b"):
        assert main([*tiny, "--out", str(runs / "demo" / name)]) == 0
    (runs / "empty").mkdir()  # a folder of no runs: nothing to say
    capsys.readouterr()
    assert main(["runs", "list", str(runs)]) == 0
    printed = capsys.readouterr()
    assert printed.out == f"no runs in {runs}\n"
    assert printed.err == (
        f"{runs / 'demo'} is no run but holds 2 runs: esper runs list {runs / 'demo'}\n"
    )
    assert main(["runs", "list", str(runs / "demo")]) == 0
    assert capsys.readouterr().err == ""
