"""The seed ledger: scripted slot reports in, the seeds' lives (``SeedOutcome``) out; and a
real run's ``outcomes.json`` against its own event log."""

from __future__ import annotations

import json

from conftest import seed_report, spike_validation
from esper.cli.main import main
from esper.leyline import SeedStage
from esper.leyline.config import decode
from esper.leyline.knowledge import HostSignature, SeedOutcome, outcome_score
from esper.nissa.record import OUTCOMES_FILE, RunSummary
from esper.study.ledger import SeedLedger

HOST = HostSignature("synthetic", "cnn", 4, 1672)
S = SeedStage


def _script(ledger: SeedLedger, steps: list[tuple[float, dict[str, tuple]]]) -> None:
    """Epoch k (from 1) ends with validation accuracy and slot -> (stage, blueprint, kw)."""
    for epoch, (accuracy, slots) in enumerate(steps, start=1):
        reports = {
            slot: seed_report(slot, stage, blueprint, **kw)
            for slot, (stage, blueprint, kw) in slots.items()
        }
        ledger.observe(epoch, accuracy, reports)


def test_a_fossilized_a_pruned_and_a_live_seed() -> None:
    ledger = SeedLedger("run-a", HOST)
    dormant = (S.DORMANT, None, {})
    _script(
        ledger,
        [
            (40.0, {"early": dormant, "mid": dormant}),
            (42.0, {"early": (S.GERMINATED, "conv_light", {"seed_params": 150}), "mid": dormant}),
            (45.0, {"early": (S.TRAINING, "conv_light", {"seed_params": 150, "contribution": 2.0}),
                    "mid": (S.GERMINATED, "norm", {"seed_params": 8})}),
            (47.0, {"early": (S.HOLDING, "conv_light", {"seed_params": 150, "contribution": 3.0}),
                    "mid": (S.TRAINING, "norm", {"seed_params": 8, "contribution": -1.0})}),
            (48.0, {"early": (S.FOSSILIZED, "conv_light", {"seed_params": 150}),
                    "mid": (S.PRUNED, "norm", {})}),
            (49.0, {"early": (S.FOSSILIZED, "conv_light", {"seed_params": 150}),
                    "mid": (S.EMBARGOED, "norm", {})}),
            (50.0, {"early": (S.FOSSILIZED, "conv_light", {"seed_params": 150}),
                    "mid": (S.GERMINATED, "depthwise", {"seed_params": 60})}),
        ],
    )  # fmt: skip
    fossil, pruned, live = ledger.outcomes()
    # Germinated after epoch 1, fossilized after epoch 4: a seed in epochs 2-4.
    assert fossil == SeedOutcome("run-a", HOST, "early", "conv_light", "FOSSILIZED", 3.0, 150,
                                 48.0 - 40.0, 1, 3)  # fmt: skip
    # The pruned seed's life ends with the last epoch it was alive in (47 %): epoch 5 trained
    # without it. It lived in epochs 3 and 4 (it was counted 3, to the epoch that showed it
    # gone).
    assert pruned == SeedOutcome("run-a", HOST, "mid", "norm", "PRUNED", -1.0, 8, 47.0 - 42.0,
                                 2, 2)  # fmt: skip
    assert live == SeedOutcome("run-a", HOST, "mid", "depthwise", "GERMINATED", None, 60,
                               50.0 - 49.0, 6, 1)  # fmt: skip
    assert outcome_score(fossil) == 3.0 * 1000 / 150
    assert outcome_score(pruned) == 0.0 and outcome_score(live) is None


def test_a_seed_a_rollback_removed_before_any_report_showed_it_is_pruned() -> None:
    """Germinated after epoch 3, whose successor panicked: the rollback removed it before the
    ledger saw it alive, so it had no outcome while the run counted it pruned. A seed seen
    alive before the panic is retired by the reports alone."""
    ledger = SeedLedger("run-c", HOST)
    dormant = (S.DORMANT, None, {})
    _script(
        ledger,
        [
            (40.0, {"early": dormant, "mid": dormant}),
            (41.0, {"early": dormant, "mid": (S.GERMINATED, "mlp", {"seed_params": 10})}),
            (42.0, {"early": dormant, "mid": (S.TRAINING, "mlp", {"seed_params": 10})}),
        ],
    )
    vanished = {
        "early": seed_report("early", S.GERMINATED, "depthwise", seed_params=60),
        "mid": seed_report("mid", S.TRAINING, "mlp", seed_params=10, contribution=0.5),
    }
    ledger.observe(4, 99.0, {s: seed_report(s) for s in ("early", "mid")}, vanished)
    early, mid = sorted(ledger.outcomes(), key=lambda o: o.slot)
    assert early == SeedOutcome("run-c", HOST, "early", "depthwise", "PRUNED", None, 60, None,
                                3, 0)  # fmt: skip
    assert mid == SeedOutcome("run-c", HOST, "mid", "mlp", "PRUNED", None, 10, 42.0 - 40.0,
                              1, 2)  # fmt: skip


def test_a_terminated_runs_outcomes_count_its_rolled_back_seeds(tmp_path, monkeypatch) -> None:
    """A periodic run germinating after every third epoch, terminated in epoch 7: the seed
    grown after epoch 6 was counted pruned (``pruned`` in summary.json) but had no outcome.
    Oracles: the event log's germinations and the trainer's count of prunes."""
    spike_validation(monkeypatch)
    run = tmp_path / "run"
    args = ["periodic", "--task", "synthetic", "--epochs", "10", "--batches-per-epoch", "2"]
    assert main([*args, "--val-samples", "128", "--periodic.period", "3", "--out", str(run)]) == 0
    summary = decode(RunSummary, json.loads((run / "summary.json").read_text()))
    outcomes = decode(tuple[SeedOutcome, ...], json.loads((run / OUTCOMES_FILE).read_text()))
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    germinated = [
        (e["slot"], e["blueprint"], e["epoch"])
        for e in events
        if e["event"] == "SeedTransition" and e["to_stage"] == "GERMINATED"
    ]
    assert summary.status == "terminated" and summary.growth is not None
    assert (germinated[-1][2], outcomes[-1].epochs) == (6, 0)  # the one grown after epoch 6
    assert [(o.slot, o.blueprint, o.germinated_epoch) for o in outcomes] == germinated
    assert sum(o.stage == "PRUNED" for o in outcomes) == summary.growth.pruned
    assert sum(o.stage == "FOSSILIZED" for o in outcomes) == summary.growth.fossilized


def test_state_round_trip_continues_identically() -> None:
    steps = [
        (40.0, {"early": (S.GERMINATED, "mlp", {"seed_params": 10})}),
        (41.0, {"early": (S.TRAINING, "mlp", {"seed_params": 10, "contribution": 0.5})}),
        (43.0, {"early": (S.PRUNED, "mlp", {})}),
        (44.0, {"early": (S.EMBARGOED, "mlp", {})}),
    ]
    straight = SeedLedger("run-b", HOST)
    _script(straight, steps)
    first = SeedLedger("run-b", HOST)
    _script(first, steps[:2])
    resumed = SeedLedger("run-b", HOST)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for epoch, (accuracy, slots) in enumerate(steps[2:], start=3):
        reports = {s: seed_report(s, st, bp, **kw) for s, (st, bp, kw) in slots.items()}
        resumed.observe(epoch, accuracy, reports)
    assert resumed.outcomes() == straight.outcomes()


def test_a_runs_outcomes_agree_with_its_event_log(tmp_path) -> None:
    run = tmp_path / "run"
    args = ["heuristic", "--task", "synthetic", "--epochs", "30", "--batches-per-epoch", "4"]
    assert main([*args, "--val-samples", "256", "--out", str(run)]) == 0
    data = json.loads((run / OUTCOMES_FILE).read_text())
    outcomes = decode(tuple[SeedOutcome, ...], data)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    germinated = [
        (e["slot"], e["blueprint"], e["epoch"])
        for e in events
        if e["event"] == "SeedTransition" and e["to_stage"] == "GERMINATED"
    ]
    ends = {
        (e["slot"], e["blueprint"]): e["to_stage"]
        for e in events
        if e["event"] == "SeedTransition" and e["to_stage"] in ("FOSSILIZED", "PRUNED")
    }
    assert len(outcomes) == len(germinated) >= 2
    run_id = events[0]["run_id"]
    for outcome in outcomes:
        assert outcome.run_id == run_id and outcome.host.params == 1672
        assert outcome.stage == ends.get((outcome.slot, outcome.blueprint), outcome.stage)
        # Epochs lived: from the epoch after which it was germinated to the one after which it
        # was fossilized or pruned, or to the run's last (30).
        end = next(
            (
                e["epoch"]
                for e in events
                if e["event"] == "SeedTransition" and e["slot"] == outcome.slot
                and e["epoch"] >= outcome.germinated_epoch
                and e["to_stage"] in ("FOSSILIZED", "PRUNED")
            ),
            30,
        )  # fmt: skip
        assert outcome.epochs == end - outcome.germinated_epoch > 0
    assert {(o.slot, o.blueprint) for o in outcomes} == {(s, b) for s, b, _ in germinated}


def test_a_run_records_its_outcomes_in_the_store_and_survives_a_broken_one(tmp_path, capsys):
    from esper.nissa.knowledge import KnowledgeStore

    url = f"sqlite:///{tmp_path / 'k.sqlite'}"
    args = ["periodic", "--task", "synthetic", "--epochs", "8", "--batches-per-epoch", "2"]
    args += ["--val-samples", "128", "--periodic.period", "1", "--knowledge"]
    assert main([*args, url, "--out", str(tmp_path / "a")]) == 0
    with KnowledgeStore.open(url) as store:
        stored = store.outcomes()
    written = decode(
        tuple[SeedOutcome, ...], json.loads((tmp_path / "a" / OUTCOMES_FILE).read_text())
    )
    assert stored == list(written) and len(stored) == 3
    # Another run of the same directory name (another study's trial, a run made again) is
    # another run: its seeds are kept beside the first one's, not taken for them.
    assert main([*args, url, "--out", str(tmp_path / "again" / "a")]) == 0
    with KnowledgeStore.open(url) as store:
        assert len(store.outcomes()) == 6 and len({o.run_id for o in store.outcomes()}) == 2
    capsys.readouterr()
    assert main(["knowledge", "show", "--knowledge", url]) == 0  # the command, end to end
    assert f"{url}: 6 seed outcome(s) from 2 run(s)" in capsys.readouterr().out
    assert main(["knowledge", "reset", "--knowledge", url]) == 2  # no --yes: nothing deleted
    assert "--yes" in capsys.readouterr().err
    broken = tmp_path / "broken.sqlite"
    broken.write_text("not a database")
    capsys.readouterr()
    assert main([*args, f"sqlite:///{broken}", "--out", str(tmp_path / "b")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(broken) in warnings[0]
    assert (tmp_path / "b" / OUTCOMES_FILE).exists()  # kept for esper knowledge import


def test_a_resume_records_in_the_store_its_run_began_with(tmp_path, monkeypatch):
    """``--knowledge sqlite:///k.sqlite`` was kept relative, so a resume from another
    directory made and filled another store; a bandit run begun with $ESPER_KNOWLEDGE and
    resumed without it took its priors from one store and gave its outcomes to another (a
    walk-through)."""
    from esper.nissa.knowledge import KNOWLEDGE_ENV, KnowledgeStore
    from esper.nissa.stopping import Stop
    from esper.tolaria.episode import Episode

    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(KNOWLEDGE_ENV, raising=False)
    args = ["--task", "synthetic", "--batches-per-epoch", "2", "--val-samples", "128"]

    def interrupted(*args: object, **kwargs: object) -> None:
        raise Stop

    runs = {
        "relative": (
            ["periodic", *args, "--epochs", "8", "--periodic.period", "1"],
            "sqlite:///k.sqlite",
        ),
        "variable": (["heuristic", *args, "--epochs", "14", "--selector", "thompson"], None),
    }
    env = f"sqlite:///{tmp_path / 'env.sqlite'}"
    for name, (command, knowledge) in runs.items():
        monkeypatch.chdir(first)
        flags = [] if knowledge is None else ["--knowledge", knowledge]
        with monkeypatch.context() as patch:
            patch.setattr(Episode, "step", interrupted)
            if knowledge is None:
                patch.setenv(KNOWLEDGE_ENV, env)
            assert main([*command, *flags, "--out", str(tmp_path / name)]) == 130
        monkeypatch.chdir(elsewhere)
        assert main([command[0], "--resume", str(tmp_path / name)]) == 0
    recorded = [json.loads((tmp_path / n / "config.json").read_text())["knowledge"] for n in runs]
    assert recorded == [f"sqlite:///{first / 'k.sqlite'}", env]
    for store, run in ((first / "k.sqlite", "relative"), (tmp_path / "env.sqlite", "variable")):
        with KnowledgeStore.open(f"sqlite:///{store}") as opened:
            held = {o.run_id for o in opened.outcomes()}
        written = json.loads((tmp_path / run / OUTCOMES_FILE).read_text())
        assert written and held == {o["run_id"] for o in written}, run
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "cache").exists()


def test_a_bandit_resumes_from_its_checkpoint_not_from_the_store(tmp_path, monkeypatch, capsys):
    """A resume read the store again and, finding it unusable, warned "starting without
    earlier runs' outcomes", though the checkpoint restores the selector's statistics."""
    from esper.nissa.knowledge import KnowledgeStore
    from esper.nissa.stopping import Stop
    from esper.tolaria.episode import Episode

    host = HostSignature("synthetic", "cnn", 4, 1672)  # the synthetic task's host
    stores = {name: tmp_path / f"{name}.sqlite" for name in ("straight", "stopped")}
    for path in stores.values():  # one each: a run adds its outcomes to the next's priors
        with KnowledgeStore.open(f"sqlite:///{path}") as store:
            store.record(
                [SeedOutcome(f"old{i}", host, "mid", "norm", "FOSSILIZED", 5.0, 100, 3.0, 2, 6)
                 for i in range(10)]
            )  # fmt: skip
    args = ["heuristic", "--task", "synthetic", "--epochs", "14", "--batches-per-epoch", "2"]
    args += ["--val-samples", "128", "--selector", "thompson", "--knowledge"]
    assert (
        main([*args, f"sqlite:///{stores['straight']}", "--out", str(tmp_path / "straight")]) == 0
    )
    step = Episode.step
    calls = []

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            raise Stop
        return step(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Episode, "step", stopping)
        assert (
            main([*args, f"sqlite:///{stores['stopped']}", "--out", str(tmp_path / "stopped")])
            == 130
        )
    stores["stopped"].write_text("not a database any more")
    capsys.readouterr()
    assert main(["heuristic", "--resume", str(tmp_path / "stopped")]) == 0
    err = capsys.readouterr().err
    assert "starting without" not in err
    straight, stopped = (
        (tmp_path / n / "metrics.csv").read_text() for n in ("straight", "stopped")
    )
    assert stopped == straight and "norm" in (tmp_path / "straight" / OUTCOMES_FILE).read_text()


def test_bad_knowledge_url_is_one_line(tmp_path, capsys):
    args = ["heuristic", "--task", "synthetic", "--knowledge", "mysql://x/y"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "mysql://x/y" in err and "sqlite" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_malformed_default_store_url_is_said_before_the_run_trains(tmp_path, monkeypatch, capsys):
    """``$ESPER_KNOWLEDGE=garbage``: the run trained to its end, then warned; --knowledge
    garbage is refused at once. The run still runs (a store never fails one), but says so
    first, naming where the URL came from."""
    from esper.nissa.knowledge import KNOWLEDGE_ENV

    monkeypatch.setenv(KNOWLEDGE_ENV, "garbage")
    args = ["periodic", "--task", "synthetic", "--epochs", "3", "--batches-per-epoch", "2"]
    assert main([*args, "--periodic.period", "1", "--out", str(tmp_path / "r")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "garbage" in line]
    assert len(warnings) == 2, warnings
    first, last = warnings
    assert "'garbage'" in first and "(the URL is $ESPER_KNOWLEDGE): this run's seed outcomes " in (
        first
    )
    assert "(the URL is $ESPER_KNOWLEDGE); the run's 2 seed outcome(s) were not recorded" in last


def _first_germination(run) -> str:
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    return next(
        e["blueprint"]
        for e in events
        if e["event"] == "SeedTransition" and e["to_stage"] == "GERMINATED"
    )


def test_a_bandit_heuristic_starts_from_the_stores_outcomes_on_its_host(tmp_path, capsys):
    from esper.nissa.knowledge import KnowledgeStore

    store_url, empty_url = (f"sqlite:///{tmp_path / n}" for n in ("k.sqlite", "e.sqlite"))
    host = HostSignature("synthetic", "cnn", 4, 1672)  # the synthetic task's host
    other = HostSignature("synthetic", "cnn", 8, 6220)  # a wider host: not a prior here
    with KnowledgeStore.open(store_url) as store:
        store.record(
            [SeedOutcome(f"old{i}", h, slot, bp, "FOSSILIZED", 5.0, 100, 3.0, 2, 6)
             for i in range(20) for slot in ("early", "mid", "late")
             for h, bp in ((host, "norm"), (other, "attention"))]
        )  # fmt: skip
    args = ["heuristic", "--task", "synthetic", "--epochs", "14", "--batches-per-epoch", "2"]
    args += ["--val-samples", "128", "--selector", "thompson", "--knowledge"]
    assert main([*args, store_url, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, empty_url, "--out", str(tmp_path / "b")]) == 0
    assert _first_germination(tmp_path / "a") == "norm"  # the prior-best blueprint on this host
    assert _first_germination(tmp_path / "b") != "norm"
    # The store grows with every run, so the same command later starts from other outcomes:
    # meta.json records which (it named only the URL, null by default), and a note says so.
    first, empty = (json.loads((tmp_path / n / "meta.json").read_text()) for n in "ab")
    assert empty["priors"] is None  # started from nothing
    assert first["priors"]["outcomes"] == 60 and first["priors"]["store"] == store_url
    assert first["priors"]["scored"] == 60  # every one decided (fossilized)
    err = capsys.readouterr().err
    assert "note: the thompson selector starts from 60 seed outcomes of the knowledge store " in err
    assert main(["runs", "show", str(tmp_path / "a")]) == 0  # runs show did not say
    shown = f"priors    60 seed outcomes (60 decided) from {store_url}, SHA-256 "
    assert f"{shown}{first['priors']['sha256'][:12]}...\n" in capsys.readouterr().out
    assert main([*args, store_url, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "meta.json").read_text())["priors"]
    grown = 60 + len(json.loads((tmp_path / "a" / OUTCOMES_FILE).read_text()))
    assert again["outcomes"] == grown > 60 and again["sha256"] != first["priors"]["sha256"]
    # A store of undecided outcomes alone (seeds alive when their runs ended) teaches nothing:
    # the note said "starts from 2 seed outcomes" all the same (a walk-through).
    held_url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    with KnowledgeStore.open(held_url) as store:
        store.record([SeedOutcome(f"h{i}", host, "early", "norm", "HOLDING", None, 100, 1.0, 2, 6)
                      for i in range(2)])  # fmt: skip
    capsys.readouterr()
    assert main([*args, held_url, "--out", str(tmp_path / "held")]) == 0
    held = json.loads((tmp_path / "held" / "meta.json").read_text())["priors"]
    assert (held["outcomes"], held["scored"]) == (2, 0)
    assert "starts from 2 seed outcomes (0 decided: the others' seeds were alive at the end)" in (
        capsys.readouterr().err
    )
    # The store's outcomes of the task on other hosts alone: the run started from none, and
    # nothing said why (a walk-through); a note names the hosts they are of.
    wide_url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    with KnowledgeStore.open(wide_url) as store:
        store.record([SeedOutcome(f"w{i}", other, "early", "norm", "PRUNED", None, 100, 1.0, 2, 6)
                      for i in range(3)])  # fmt: skip
    assert main([*args, wide_url, "--out", str(tmp_path / "wide")]) == 0
    assert json.loads((tmp_path / "wide" / "meta.json").read_text())["priors"] is None
    assert (
        f"note: the knowledge store {wide_url} holds no seed outcome of synthetic at cnn width 4, "
        "the selector's host, but 3 at cnn width 8: a selector learns from its own host's only"
    ) in capsys.readouterr().err
    assert main([*args, empty_url, "--out", str(tmp_path / "b2")]) == 0
    assert "holds no seed outcome" not in capsys.readouterr().err  # its own host's: no note
