"""Nissa: the event-log reader, levels, console and TensorBoard sinks, Shapley and policy events."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from conftest import KeptRecords, seed_report
from conftest import observation as make_observation
from esper.cli.main import main
from esper.leyline import SeedStage
from esper.leyline.events import (
    EVENT_TYPES,
    ActionTaken,
    EpochCompleted,
    GovernorPanic,
    PolicyDecision,
    PPOHeadStats,
    PPORunFinished,
    PPOUpdate,
    RunFinished,
    RunStarted,
    SeedTransition,
    SlotSnapshot,
    TelemetryLevel,
    event_record,
)
from esper.nissa import JsonlSink, TelemetryHub
from esper.nissa.fold import RunState, fold
from esper.nissa.log import (
    EventLogError,
    EventTail,
    Logged,
    RunDirectoryError,
    counted,
    display,
    open_run,
    read_events,
)
from esper.nissa.record import read_summary
from esper.nissa.sinks import TensorBoardSink

_SAMPLES = {
    "RunStarted": RunStarted("r", "heuristic", "synthetic", 0, 3, ("mid",), None),
    "RunFinished": RunFinished("completed", 3, 50.0, 51.0, 1000, 0, 0, 1.0),
}


def _line(event: str = "RunStarted", **fields: Any) -> str:
    """A complete log line: a sample event of that name (any name, for bad lines) + ``fields``."""
    sample = event_record(_SAMPLES[event]) if event in _SAMPLES else {"event": event}
    return json.dumps({"t": 1.0, "run_id": "r", **sample, **fields})


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _records(run: Path) -> list[dict[str, Any]]:
    """A run's events as the hub handed them to its sinks (read back through the reader)."""
    return [item.record() for item in read_events(run / "events.jsonl").records]


# ----------------------------------------------------------------------------- the reader


def test_truncated_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(_line() + "\n" + _line("RunFinished") + "\n" + '{"t": 2.0, "run_id": "r", "ev')
    log = read_events(path)
    assert [r.name for r in log.records] == ["RunStarted", "RunFinished"]
    assert log.truncated_line == 3


def test_a_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(_line() + "\n" + _line("RunFinished"))
    log = read_events(path)
    assert len(log.records) == 2 and log.truncated_line is None


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "events.jsonl:2: malformed event line"),
        ("[1, 2]", "events.jsonl:2: not an event record"),
        ("[" * 100_000 + "]" * 100_000, "events.jsonl:2: malformed event line .nested too deeply"),
        (  # Python refuses integers of over 4,300 digits with a ValueError of its own
            '{"event": "EpochCompleted", "epoch": ' + "9" * 5000 + "}",
            r"events.jsonl:2: malformed event line \(a 5000-digit integer; at most 4300 digits",
        ),
        (_line("Exploded"), "events.jsonl:2: unknown event 'Exploded'; known: ActionTaken"),
        # the writer writes null for them; the terminal UI crashed on an Infinity accuracy
        *[
            (
                f'{{"event": "EpochCompleted", "epoch": 1, "val_accuracy": {c}}}',
                rf"events.jsonl:2: malformed event line \({c} is not a JSON number",
            )
            for c in ("NaN", "Infinity", "-Infinity")
        ],
    ],
)
def test_a_malformed_middle_line_names_file_and_line(tmp_path: Path, bad: str, message) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(_line() + "\n" + bad + "\n" + _line() + "\n")
    with pytest.raises(EventLogError, match=message):
        read_events(path)


def test_a_known_event_missing_a_field_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    epoch = {k: v for k, v in _record(_epoch(1)).items() if k != "val_loss"}
    path.write_text(_line() + "\n" + json.dumps(epoch) + "\n")
    with pytest.raises(EventLogError, match=r"events\.jsonl:2: EpochCompleted lacks val_loss"):
        read_events(path)


def test_an_empty_log_is_not_a_run_yet(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "events.jsonl").write_text("")
    with pytest.raises(RunDirectoryError, match="its event log is empty"):
        open_run(tmp_path)


def _fake(cls: type[Any], **given: Any) -> Any:
    """An event of type ``cls``: ``given`` fields, every other one a zero of its type."""
    hints = typing.get_type_hints(cls)
    zero = {int: 0, float: 0.0, str: "", bool: False}
    values = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        values[f.name] = given.get(f.name, zero.get(hint, () if hint is not None else None))
        if f.name not in given and typing.get_origin(hint) is types.UnionType:
            values[f.name] = None
    return cls(**values)


def _at(event: Any, env: int | None = None, episode: int | None = None) -> Logged:
    return Logged(event, 1.0, "r", env, episode)


def _kept(records: list[Logged]) -> list[Logged]:
    """The records of the run as it finally happened, by the fold's ``lines``."""
    lines = RunState(keep_lines=True).apply_all(records).lines
    assert lines is not None
    return [records[n - 1] for n, _ in lines]


def test_the_fold_keeps_the_lines_of_the_run_as_it_finally_happened() -> None:
    def started(saved: int | None, mode: str = "heuristic") -> Logged:
        return _at(_fake(RunStarted, mode=mode, resumed_from_epoch=saved))

    records = [
        started(None),
        _at(_epoch(1)),
        _at(_epoch(2)),
        # the decision after epoch 2 comes after its checkpoint: the resumed run takes it again
        _at(_fake(ActionTaken, epoch=2)),
        _at(_epoch(3)),  # after the last checkpoint (epoch 2)
        _at(_fake(RunFinished, epochs=2)),
        started(2),
        _at(_fake(ActionTaken, epoch=2)),
        _at(_epoch(3)),
    ]
    assert _kept(records) == records[:3] + records[5:]
    ppo = [
        started(None, "ppo"),
        _at(_epoch(1), env=0, episode=1),
        _at(_fake(PPOUpdate, round=1)),
        _at(_fake(PPOHeadStats, round=1)),
        _at(_epoch(1), env=0, episode=2),  # round 2, cut short
        _at(_fake(PPORunFinished, rounds=1)),
        started(1, "ppo"),
        _at(_epoch(1), env=0, episode=2),
    ]
    assert _kept(ppo) == ppo[:4] + ppo[5:]


def test_a_resume_folds_the_decision_after_its_checkpoint_once() -> None:
    """``esper heuristic`` interrupted while training epoch 3 logged the decision after epoch 2
    (``ActionTaken`` at epoch 2, after epoch 2's checkpoint) and its transition; the resumed
    run takes it again. The fold held both: two germinations of one seed."""
    germinate = _fake(ActionTaken, epoch=2, op="GERMINATE", slot="mid", accepted=True)
    grown = _fake(SeedTransition, epoch=2, slot="mid", from_stage="DORMANT", to_stage="GERMINATED")
    before = _fake(SeedTransition, epoch=2, slot="early", from_stage="TRAINING", to_stage="PRUNED")
    start = _fake(RunStarted, mode="heuristic", resumed_from_epoch=None)
    records = [_at(start), _at(_epoch(1)), _at(before), _at(_epoch(2)), _at(germinate)]
    records += [_at(grown), _at(_fake(RunStarted, mode="heuristic", resumed_from_epoch=2))]
    records += [_at(germinate), _at(grown), _at(_epoch(3))]
    episode = fold(records).episode()
    assert episode is not None
    assert [(a.epoch, a.op) for a in episode.actions] == [(2, "GERMINATE")]
    # the transition within epoch 2, before its checkpoint, stays
    assert [(t.slot, t.to_stage) for t in episode.transitions] == [
        ("early", "PRUNED"),
        ("mid", "GERMINATED"),
    ]
    assert [e.epoch for e in episode.epochs] == [1, 2, 3]


def test_a_ppo_resume_keeps_the_panics_of_episodes_no_longer_shown() -> None:
    """The count was redone from the last ``KEEP_EPISODES`` episodes kept in detail."""
    panic = _fake(GovernorPanic, epoch=1, rule="spike")
    records = [_at(_fake(RunStarted, mode="ppo", resumed_from_epoch=None))]
    for round_ in range(1, 8):
        records += [_at(_epoch(1), env=0, episode=round_), _at(panic, env=0, episode=round_)]
    state = fold(records)
    assert state.envs[0].panics == 7
    state.apply(_at(_fake(RunStarted, mode="ppo", resumed_from_epoch=6)))  # round 7 again
    assert state.envs[0].panics == 6
    state.apply_all([_at(_epoch(1), env=0, episode=7), _at(panic, env=0, episode=7)])
    assert state.envs[0].panics == 7


def test_tail_returns_a_line_only_once_its_newline_arrives(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.events() == []  # no file yet: a run still starting
    first, second = _line(), _line("RunFinished", status="completed")
    path.write_text(first + "\n" + second[:10])
    assert [r.name for r in tail.events()] == ["RunStarted"]
    assert tail.events() == []
    with path.open("a") as f:
        f.write(second[10:])
    assert tail.events() == []  # complete JSON, but no newline yet
    with path.open("a") as f:
        f.write("\n")
    assert [r.event.status for r in tail.events()] == ["completed"]
    path.write_text(first[:5])
    with pytest.raises(EventLogError, match="shrank"):
        tail.events()


def test_open_run_rejects_what_is_not_a_run(tmp_path: Path, recorded_runs) -> None:
    with pytest.raises(RunDirectoryError, match="does not exist"):
        open_run(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file"):
        open_run(tmp_path / "file")
    with pytest.raises(RunDirectoryError, match=r"no config.json or events.jsonl"):
        open_run(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(recorded_runs["static"], run)
    lines = (run / "events.jsonl").read_text().splitlines()
    (run / "events.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(RunDirectoryError, match="starts with EpochCompleted, not RunStarted"):
        open_run(run)
    opened = open_run(recorded_runs["heuristic"])
    summary = read_summary(recorded_runs["heuristic"])
    assert (opened.mode, opened.task, opened.status) == ("heuristic", "synthetic", "completed")
    assert opened.summary == summary


def test_missing_values_display_as_a_dash() -> None:
    assert display(None) == "—" and display(math.nan, ".2f") == "—"
    assert display(0.0, ".2f") == "0.00" and display(3) == "3"


def test_counts_read_as_english() -> None:
    assert [counted(n, "round") for n in (0, 1, 2, 1200)] == [
        "0 rounds",
        "1 round",
        "2 rounds",
        "1,200 rounds",
    ]
    assert (
        counted(1, "study", "studies") == "1 study"
        and counted(3, "study", "studies") == "3 studies"
    )


# ----------------------------------------------------------------------------- the hub


def _epoch(epoch: int, accuracy: float = 50.0, loss: float = 1.0) -> EpochCompleted:
    slot = SlotSnapshot("mid", "BLENDING", "conv_light", 0.5, 1.25, None, 40)
    return EpochCompleted(epoch, 1.0, 60.0, loss, accuracy, 1000, (slot,), 0.1)


def test_levels_decide_what_is_written_and_the_level_can_change() -> None:
    keep = KeptRecords()
    hub = TelemetryHub("r", [keep], TelemetryLevel.MINIMAL)
    head = PPOHeadStats(1, "op", 0.5, 1.1, 1.0)
    hub.emit(_epoch(1))
    hub.emit(RunStarted("r", "heuristic", "synthetic", 0, 3, ("mid",), None))
    assert [r["event"] for r in keep.records] == ["RunStarted"]
    hub.set_level(TelemetryLevel.DEBUG)  # a PPO trainer's escalation after an anomaly
    hub.emit(head)
    hub.set_level(TelemetryLevel.MINIMAL)
    hub.emit(head)
    assert [r["event"] for r in keep.records] == ["RunStarted", "PPOHeadStats"]


def test_watching_sinks_get_their_events_whatever_the_level() -> None:
    keep, watch = KeptRecords(), KeptRecords(frozenset({"EpochCompleted"}))
    hub = TelemetryHub("r", [keep], TelemetryLevel.MINIMAL, unfiltered=[watch])
    hub.emit(_epoch(1))
    hub.emit(PPOHeadStats(1, "op", 0.5, 1.1, 1.0))
    hub.emit(RunStarted("r", "heuristic", "synthetic", 0, 3, ("mid",), None))
    assert [r["event"] for r in keep.records] == ["RunStarted"]
    assert [r["event"] for r in watch.records] == ["EpochCompleted"]


def test_jsonl_lines_are_on_disk_before_close(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    hub = TelemetryHub("r", [JsonlSink(path)])
    hub.emit(_epoch(1, accuracy=math.nan))
    on_disk = _lines(path)  # not closed: a crash now would keep this line
    assert on_disk[0]["val_accuracy"] is None  # NaN is missing (null), never 0
    assert on_disk[0]["slots"][0]["shapley"] is None
    hub.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_an_event_log_on_a_full_disk_names_itself() -> None:
    """The bare OSError named no file: the run's error line could not say what did not fit (a
    review)."""
    from esper.leyline.files import DiskFullError

    hub = TelemetryHub("r", [JsonlSink(Path("/dev/full"))])
    with pytest.raises(DiskFullError, match="out of disk space writing '/dev/full'"):
        hub.emit(_epoch(1))


def test_missing_tensorboard_names_the_flag_that_asked_for_it(monkeypatch) -> None:
    """It named ``--tensorboard``, which no command takes (a walk-through)."""
    from esper.nissa.sinks import TensorBoardSetupError, check_tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(TensorBoardSetupError, match=r"^--telemetry\.tensorboard needs the "):
        check_tensorboard()


def test_every_event_type_is_declared_once() -> None:
    assert "PolicyDecision" in EVENT_TYPES and EVENT_TYPES["PolicyDecision"] is PolicyDecision
    assert all(name == cls.__name__ for name, cls in EVENT_TYPES.items())


# ----------------------------------------------------------------------------- sinks


def _record(event: Any, **context: Any) -> dict[str, Any]:
    return {"t": 0.0, "run_id": "r", **context, **event_record(event)}


def test_tensorboard_sink_writes_the_logged_scalars(tmp_path: Path, recorded_runs) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path / "tb")
    records = _records(recorded_runs["heuristic"]) + _records(recorded_runs["ppo"])
    for record in records:
        sink.write(record)
    sink.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    heuristic_epochs = [r for r in records if r["event"] == "EpochCompleted" and "env" not in r]
    val = [(s.step, s.value) for s in acc.Scalars("accuracy/val")]
    expected = [(r["epoch"], pytest.approx(r["val_accuracy"])) for r in heuristic_epochs]
    assert val == expected
    contributions = acc.Scalars("slot/mid/contribution")
    measured = [
        (r["epoch"], s["contribution"])
        for r in heuristic_epochs
        for s in r["slots"]
        if s["slot"] == "mid" and s["contribution"] is not None
    ]
    assert [s.value for s in contributions] == pytest.approx([v for _, v in measured])
    assert [s.step for s in contributions] == [e for e, _ in measured]  # missing is not 0
    updates = [r for r in records if r["event"] == "PPOUpdate"]
    assert [s.value for s in acc.Scalars("ppo/entropy")] == pytest.approx(
        [r["entropy"] for r in updates]
    )


def _tensorboard(log_dir: Path) -> tuple[Any, str, Any]:
    """A TensorBoard directory read back: its accumulator, its configuration text and the
    HParams plugin's data (the session-start hyperparameters and the experiment's metrics)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    (text,) = acc.Tensors("config/text_summary")
    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    return acc, text.tensor_proto.string_val[0].decode(), (start.session_start_info, experiment)


def test_tensorboard_sink_writes_the_configuration_and_hyperparameters(
    tmp_path: Path, recorded_runs
) -> None:
    run = recorded_runs["heuristic"]
    config = json.loads((run / "config.json").read_text())
    sink = TensorBoardSink(tmp_path / "tb", config)
    for record in _lines(run / "events.jsonl"):
        sink.write(record)
    sink.close()
    acc, text, (start, experiment) = _tensorboard(tmp_path / "tb")
    assert text.startswith("```json\n") and text.endswith("\n```")
    assert json.loads(text.removeprefix("```json\n").removesuffix("\n```")) == config
    hparams = start.hparams
    assert hparams["training.task"].string_value == "synthetic"
    assert hparams["training.epochs"].number_value == 40
    assert hparams["training.slots"].string_value == '["early", "mid", "late"]'
    assert hparams["telemetry.tensorboard"].string_value == "false"  # a setting, not 0
    assert "policy" not in hparams  # unset (null): left out, never 0
    (finished,) = [r for r in _lines(run / "events.jsonl") if r["event"] == "RunFinished"]
    numbers = {
        k for k, v in finished.items() if k not in ("t", "run_id") and type(v) in (int, float)
    }
    assert {m.name.tag for m in experiment.metric_infos} == {f"run/{k}" for k in numbers}
    (final,) = acc.Scalars("run/final_val_accuracy")
    assert (final.step, final.value) == (40, pytest.approx(finished["final_val_accuracy"]))


def test_tensorboard_flag_on_a_heuristic_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["heuristic", "--task", "synthetic", "--epochs", "2", "--telemetry.tensorboard"]
    assert main([*args, "--out", str(out)]) == 0
    assert any((out / "tensorboard").iterdir())
    config = json.loads((out / "config.json").read_text())
    assert config["telemetry"]["tensorboard"] is True
    acc, text, (start, experiment) = _tensorboard(out / "tensorboard")
    assert json.loads(text.removeprefix("```json\n").removesuffix("\n```")) == config
    assert start.hparams["seed"].number_value == config["seed"]
    assert "run/final_val_accuracy" in {m.name.tag for m in experiment.metric_infos}
    assert [s.step for s in acc.Scalars("accuracy/val")] == [1, 2]


def test_minimal_telemetry_drops_epoch_events_but_not_progress(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["heuristic", "--task", "synthetic", "--epochs", "2", "--telemetry.level", "minimal"]
    assert main([*args, "--out", str(out)]) == 0
    assert [r["event"] for r in _lines(out / "events.jsonl")] == ["RunStarted", "RunFinished"]
    progress = [
        line for line in capsys.readouterr().err.splitlines() if "] epoch 2/2  val acc " in line
    ]
    assert len(progress) == 1  # console progress is not filtered by the log's level


@pytest.mark.parametrize(
    "flag", ["--telemetry.level=debug", "--telemetry.tensorboard", "--shapley"]
)
def test_resume_refuses_telemetry_flags(tmp_path: Path, capsys, flag: str) -> None:
    out = tmp_path / "run"
    assert main(["heuristic", "--task", "synthetic", "--epochs", "1", "--out", str(out)]) == 0
    (out / "summary.json").unlink()  # as if interrupted
    capsys.readouterr()
    assert main(["heuristic", "--resume", str(out), flag]) == 2
    assert f"drop {flag.split('=')[0]}" in capsys.readouterr().err


def test_missing_tensorboard_fails_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    for args in (
        ["heuristic", "--task", "synthetic", "--epochs", "1"],
        ["ppo", "--preset", "tiny", "--ppo.rounds", "1"],
    ):
        out = tmp_path / args[0]
        assert main([*args, "--telemetry.tensorboard", "--out", str(out)]) == 2
        assert "pip install 'esper[tensorboard]'" in capsys.readouterr().err
        assert not out.exists()


# ----------------------------------------------------------------------------- measurements


def test_shapley_is_measured_for_blended_seeds_only_when_asked(tmp_path: Path) -> None:
    common = ["heuristic", "--task", "synthetic", "--epochs", "24", "--batches-per-epoch", "2"]
    assert main([*common, "--shapley", "--out", str(tmp_path / "on")]) == 0
    assert main([*common, "--out", str(tmp_path / "off")]) == 0
    blended = {SeedStage.BLENDING.value, SeedStage.HOLDING.value, SeedStage.FOSSILIZED.value}
    seen_one_blended = False
    for record in _lines(tmp_path / "on" / "events.jsonl"):
        if record["event"] != "EpochCompleted":
            continue
        slots = record["slots"]
        for s in slots:
            assert (s["shapley"] is not None) == (s["stage"] in blended), (record["epoch"], s)
        live = [s for s in slots if s["stage"] in blended]
        running = [s for s in slots if s["contribution"] is not None]
        if len(live) == 1 and len(running) == 1:
            # One player: φ = v({s}) − v(∅), which is exactly its counterfactual contribution.
            assert live[0]["shapley"] == pytest.approx(live[0]["contribution"], abs=1e-9)
            seen_one_blended = True
    assert seen_one_blended
    off = [r for r in _lines(tmp_path / "off" / "events.jsonl") if r["event"] == "EpochCompleted"]
    assert all(s["shapley"] is None for r in off for s in r["slots"])


def test_ppo_decisions_precede_their_actions_and_respect_the_masks(recorded_runs) -> None:
    records = _records(recorded_runs["ppo"])
    decisions = [r for r in records if r["event"] == "PolicyDecision"]
    actions = [r for r in records if r["event"] == "ActionTaken"]
    assert len(decisions) == len(actions) > 0
    for d in decisions:
        chosen = dict(d["chosen"])
        assert chosen["op"] in d["valid_ops"]
        if "slot" in chosen:
            assert chosen["slot"] in d["valid_slots"]
        if "blueprint" in chosen:
            assert chosen["blueprint"] in d["valid_blueprints"]
        assert d["log_prob"] <= 0.0
        action = next(
            a
            for a in actions
            if (a["env"], a["episode"], a["epoch"]) == (d["env"], d["episode"], d["epoch"])
        )
        assert action["op"] == chosen["op"] and action["slot"] == chosen.get("slot")


def test_decision_event_lists_the_valid_options() -> None:
    from esper.leyline import Action, Op, Topology
    from esper.tamiyo.actions import ActionSpace

    space = ActionSpace(Topology.CNN)
    reports = {
        "mid": seed_report("mid"),
        "late": seed_report("late", SeedStage.HOLDING, alpha=1.0, epochs=2, contribution=1.0),
    }
    observation = make_observation(reports, blueprints=("conv_light",), max_epochs=10, epoch=4)
    masks = space.masks(observation)
    indices = space.encode(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
    event = space.decision(masks, indices, epoch=4, log_prob=-1.5, value=0.25)
    assert event.chosen == (("op", "GERMINATE"), ("slot", "mid"), ("blueprint", "conv_light"))
    # WAIT always; GERMINATE (mid is DORMANT); PRUNE and FOSSILIZE (late is HOLDING).
    assert event.valid_ops == ("WAIT", "GERMINATE", "PRUNE", "FOSSILIZE")
    assert event.valid_slots == ("mid",)  # the slots valid for the chosen op
    assert event.valid_blueprints == ("conv_light",)
    assert (event.epoch, event.log_prob, event.value) == (4, -1.5, 0.25)
    wait = space.decision(masks, space.encode(Action(Op.WAIT)), 4, -0.1, 0.0)
    assert wait.chosen == (("op", "WAIT"),) and wait.valid_slots == ()


def test_tail_returns_the_records_before_a_malformed_line_then_raises(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(_line() + "\n" + _line("RunFinished") + "\n{broken\n" + _line() + "\n")
    tail = EventTail(path)
    assert [r.name for r in tail.events()] == ["RunStarted", "RunFinished"]
    for _ in range(2):
        with pytest.raises(EventLogError, match=r"events\.jsonl:3: malformed"):
            tail.events()


def test_eval_runs_log_their_policy_decisions(tmp_path: Path, recorded_runs) -> None:
    out = tmp_path / "eval"
    policy = str(recorded_runs["ppo"])
    args = ["eval", "--policy", policy, "--task", "synthetic", "--epochs", "3", "--seed", "100"]
    args += ["--out", str(out)]
    assert main(args) == 0
    records = _lines(out / "events.jsonl")
    decisions = [r for r in records if r["event"] == "PolicyDecision"]
    actions = [r for r in records if r["event"] == "ActionTaken"]
    # One decision after every epoch but the last: the loop the policy was trained in.
    assert len(decisions) == len(actions) == 2
    for decision, action in zip(decisions, actions, strict=True):
        assert dict(decision["chosen"])["op"] == action["op"] in decision["valid_ops"]
        assert decision["epoch"] == action["epoch"]


@pytest.mark.parametrize("partial", [b"", b'{"t": 1.0, "ev', b"x" * 100_000])
def test_the_log_sink_cuts_a_partial_last_line_before_appending(tmp_path: Path, partial) -> None:
    path = tmp_path / "events.jsonl"
    complete = (_line() + "\n" + _line("RunFinished") + "\n").encode()
    path.write_bytes(complete + partial)
    sink = JsonlSink(path)
    assert sink.cut == partial
    sink.write(_record(_epoch(1)))
    sink.close()
    assert [r.name for r in read_events(path).records] == [
        "RunStarted",
        "RunFinished",
        "EpochCompleted",
    ]


@pytest.mark.parametrize("written", [0, 1, 3])
def test_a_tail_reads_on_over_a_partial_line_a_resume_cut_off(tmp_path: Path, written) -> None:
    """A run crashed mid-line; its resume cut the partial line off and appended ``written``
    lines. A tail that had read up to the partial line skipped as many bytes of them (the
    dashboard's stream then failed on a line glued from two), or called a log that shrank
    rewritten."""
    path = tmp_path / "events.jsonl"
    path.write_text(_line() + "\n" + _line("RunFinished") + "\n" + '{"t": 3.0, "event": "Ep')
    tail = EventTail(path)
    assert [r.name for r in tail.events()] == ["RunStarted", "RunFinished"]
    sink = JsonlSink(path)  # the resumed run's log
    assert sink.cut == b'{"t": 3.0, "event": "Ep'
    for epoch in range(1, written + 1):
        sink.write(_record(_epoch(epoch)))
    sink.close()
    read = tail.events()
    assert [r.name for r in read] == ["EpochCompleted"] * written
    assert [r.event.epoch for r in read] == list(range(1, written + 1))
    path.write_text(_line()[:5])  # below the complete lines read: rewritten
    with pytest.raises(EventLogError, match="shrank"):
        tail.events()


def test_a_tail_refuses_a_log_replaced_by_another_file(tmp_path: Path) -> None:
    """Another run's log copied over the one followed was read on from the old offset: a line
    glued from two, or, where the offset fell on a line boundary, two runs' events mixed."""
    path = tmp_path / "events.jsonl"
    path.write_text(_line() + "\n")
    tail = EventTail(path)
    assert [r.name for r in tail.events()] == ["RunStarted"]
    other = tmp_path / "other.jsonl"
    other.write_text(_line() + "\n" + _line("RunFinished") + "\n")  # longer, line-aligned
    os.replace(other, path)
    for _ in range(2):
        with pytest.raises(EventLogError, match="replaced by another file"):
            tail.events()


def test_resuming_a_run_that_crashed_mid_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["heuristic", "--task", "synthetic", "--epochs", "2", "--out", str(out)]) == 0
    (out / "summary.json").unlink()  # as if the process died ...
    with (out / "events.jsonl").open("a") as f:
        f.write('{"t": 3.0, "run_id": "run", "event": "Epoch')  # ... while writing a line
    capsys.readouterr()
    assert main(["heuristic", "--resume", str(out)]) == 0
    assert "ended in a partial line" in capsys.readouterr().err
    log = read_events(out / "events.jsonl")
    assert log.truncated_line is None and log.records[-1].name == "RunFinished"


def test_a_record_context_cannot_replace_the_envelope(tmp_path: Path) -> None:
    """``{"t": "yesterday"}`` replaced the record's time: the reader then refused the line,
    and every view of the run with it."""
    path = tmp_path / "events.jsonl"
    hub = TelemetryHub("r", [JsonlSink(path)])
    event = _epoch(1)
    for context, message in [
        ({"t": "yesterday"}, "context key 't' is not one of env, episode"),
        ({"run_id": "other"}, "context key 'run_id' is not one of env, episode"),
        ({"env": "0"}, "context env must be an integer, got '0'"),
        ({"episode": True}, "context episode must be an integer, got True"),
    ]:
        with pytest.raises(ValueError, match=message):
            hub.emit(event, context)
    hub.emit(event, {"env": 1, "episode": 2})
    hub.close()
    (logged,) = read_events(path).records
    assert (logged.run_id, logged.env, logged.episode) == ("r", 1, 2)


def test_a_hub_takes_a_level_and_a_sink_a_str_path(tmp_path: Path) -> None:
    """``level="debug"`` failed with an AttributeError at the first emit; a str path did too."""
    with pytest.raises(ValueError, match=r"level must be one of TelemetryLevel\.MINIMAL, .*debug"):
        TelemetryHub("r", [], "debug")  # type: ignore[arg-type]
    sink = JsonlSink(str(tmp_path / "events.jsonl"))
    hub = TelemetryHub("r", [sink], TelemetryLevel.DEBUG)
    hub.emit(_epoch(1))
    hub.close()
    assert [item.event for item in read_events(tmp_path / "events.jsonl").records] == [_epoch(1)]
