"""The typed reader and the one fold of a run's events (``esper.nissa.fold``), against recorded
logs: what the fold holds is checked against the raw JSON lines, read independently."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from esper.leyline import SeedStage
from esper.leyline.events import SeedTransition
from esper.nissa.fold import MARK_KINDS, Episode, RunState, StageSpan, fold
from esper.nissa.log import EventLogError, EventTail, read_events


def _raw(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _write(run: Path, records: list[dict[str, Any]]) -> None:
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _state(run: Path, **kwargs: Any) -> RunState:
    return RunState(**kwargs).apply_all(read_events(run / "events.jsonl").records)


def test_every_recorded_line_decodes_to_its_event_and_back(recorded_runs) -> None:
    for run in recorded_runs.values():
        raw = _raw(run)
        decoded = read_events(run / "events.jsonl").records
        assert [item.record() for item in decoded] == raw


def test_a_field_of_the_wrong_type_names_the_line_and_field(tmp_path, recorded_runs) -> None:
    raw = _raw(recorded_runs["static"])
    epoch = next(i for i, r in enumerate(raw) if r["event"] == "EpochCompleted")
    raw[epoch]["val_accuracy"] = "high"
    _write(tmp_path, raw)
    with pytest.raises(EventLogError, match=rf":{epoch + 1}: EpochCompleted\.val_accuracy is"):
        read_events(tmp_path / "events.jsonl")
    raw[epoch]["val_accuracy"] = None  # a non-finite value is written as null: NaN again
    raw[epoch]["slots"][0]["stage"] = "SPROUTING"
    _write(tmp_path, raw)
    with pytest.raises(EventLogError, match=r"slots\[0\]\.stage: unknown seed stage 'SPROUTING'"):
        read_events(tmp_path / "events.jsonl")


def test_a_growth_run_folds_to_its_epochs_transitions_and_counts(recorded_runs) -> None:
    raw = _raw(recorded_runs["heuristic"])
    state = _state(recorded_runs["heuristic"])
    epochs = [r for r in raw if r["event"] == "EpochCompleted"]
    episode = state.episode()
    assert [(e.epoch, e.val_accuracy, e.param_count) for e in episode.epochs] == [
        (r["epoch"], r["val_accuracy"], r["param_count"]) for r in epochs
    ]
    assert state.events == len(raw) and state.counts == Counter(r["event"] for r in raw)
    assert state.status == "completed" and state.attempts == 1 and not state.is_ppo
    transitions = [r for r in raw if r["event"] == "SeedTransition"]
    entering = {stage.value: kind for stage, kind in MARK_KINDS.items()}
    assert [(m.epoch, m.slot, m.kind) for m in episode.marks()] == [
        (r["epoch"], r["slot"], entering[r["to_stage"]])
        for r in transitions
        if r["to_stage"] in entering
    ]
    assert {m.kind for m in episode.marks()} >= {"germinate", "fossilize", "prune"}
    # Each slot's timeline ends in the stage its last snapshot reports, at the last epoch.
    timeline = episode.timeline(state.slots())
    for snapshot in epochs[-1]["slots"]:
        last = timeline[snapshot["slot"]][-1]
        assert last.stage.value == snapshot["stage"] and last.end == epochs[-1]["epoch"]


def test_a_timeline_follows_its_transitions() -> None:
    def moved(epoch: int, old: SeedStage, new: SeedStage) -> SeedTransition:
        return SeedTransition(epoch, "mid", "conv_light", old.value, new.value, "test")

    episode = Episode(None)
    episode.transitions = [
        moved(2, SeedStage.DORMANT, SeedStage.GERMINATED),
        moved(2, SeedStage.GERMINATED, SeedStage.TRAINING),  # same epoch: no zero-length span
        moved(5, SeedStage.TRAINING, SeedStage.PRUNED),
        moved(6, SeedStage.PRUNED, SeedStage.EMBARGOED),
    ]
    spans = episode.timeline(["early", "mid"], end=9)
    assert spans["early"] == [StageSpan(SeedStage.DORMANT, 0.0, 9, None)]
    assert spans["mid"] == [
        StageSpan(SeedStage.DORMANT, 0.0, 2.0, None),
        StageSpan(SeedStage.TRAINING, 2.0, 5.0, "conv_light"),
        StageSpan(SeedStage.PRUNED, 5.0, 6.0, "conv_light"),
        StageSpan(SeedStage.EMBARGOED, 6.0, 9, "conv_light"),
    ]
    assert [(m.epoch, m.kind) for m in episode.marks()] == [(2, "germinate"), (5, "prune")]
    # A stage entered at the last epoch still ends the timeline (a zero-length last span): the
    # slot finished DORMANT, not RESETTING (the recorded heuristic run resets at epoch 40).
    episode.transitions += [
        moved(8, SeedStage.EMBARGOED, SeedStage.RESETTING),
        moved(9, SeedStage.RESETTING, SeedStage.DORMANT),
    ]
    spans = episode.timeline(["mid"], end=9)["mid"]
    assert spans[-2:] == [
        StageSpan(SeedStage.RESETTING, 8.0, 9.0, "conv_light"),
        StageSpan(SeedStage.DORMANT, 9.0, 9.0, None),
    ]


def test_a_resumed_growth_run_folds_as_it_finally_happened(tmp_path, recorded_runs) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(recorded_runs["static"], run)
    raw = _raw(run)
    epochs = [r for r in raw if r["event"] == "EpochCompleted"]
    first = [raw[0], *epochs[:5]]  # the attempt stopped after epoch 5 ...
    stopped = {**raw[-1], "status": "interrupted", "epochs": 3}  # ... checkpointed at 3
    resumed = {**raw[0], "resumed_from_epoch": 3}
    again = [{**e, "val_accuracy": 1.0 + e["epoch"]} for e in epochs[3:6]]  # epochs 4–6 rerun
    _write(run, [*first, stopped])
    assert _state(run).status == "interrupted"
    _write(run, [*first, stopped, resumed, *again])
    state = _state(run)
    expected = [(e["epoch"], e["val_accuracy"]) for e in epochs[:3]]
    expected += [(e["epoch"], 1.0 + e["epoch"]) for e in epochs[3:6]]
    assert [(e.epoch, e.val_accuracy) for e in state.episode().epochs] == expected
    assert state.status is None and state.attempts == 2  # live again until it finishes


def test_an_interrupted_growth_run_folds_to_its_last_checkpoint(tmp_path, recorded_runs):
    """Stopped after the decision that follows epoch k was logged, before epoch k + 1 was
    committed: the run ended at k's checkpoint, without that decision, but the views showed the
    seed fossilized (the report's timeline, the TUI's slots) while the summary said 0 (a
    walk-through)."""
    raw = _raw(recorded_runs["heuristic"])
    ends = {r["epoch"]: i for i, r in enumerate(raw) if r["event"] == "EpochCompleted"}
    # the first epoch whose decision moved a seed: its transitions come after its record
    k = next(
        r["epoch"]
        for i, r in enumerate(raw)
        if r["event"] == "SeedTransition" and r["epoch"] in ends and i > ends[r["epoch"]]
    )
    logged = raw[: ends[k + 1]]  # the decision after epoch k, then the stop in epoch k + 1
    after = [r for r in logged[ends[k] + 1 :] if r["event"] in ("SeedTransition", "ActionTaken")]
    assert any(r["event"] == "SeedTransition" for r in after)
    stopped = {**raw[-1], "status": "interrupted", "epochs": k}
    _write(tmp_path, [*logged, stopped])
    episode = _state(tmp_path).episode()
    kept = [r for r in raw[: ends[k] + 1] if r["event"] == "SeedTransition"]
    assert [(t.epoch, t.slot, t.to_stage) for t in episode.transitions] == [
        (r["epoch"], r["slot"], SeedStage[r["to_stage"]]) for r in kept
    ]
    assert [a.epoch for a in episode.actions] == [
        r["epoch"] for r in raw[: ends[k] + 1] if r["event"] == "ActionTaken"
    ]
    assert episode.epochs[-1].epoch == k and _state(tmp_path).status == "interrupted"


def test_an_interrupted_ppo_run_folds_to_its_last_round(tmp_path, recorded_runs) -> None:
    """Stopped in round 2: the TUI's environments showed the abandoned episode 2 under
    "finished (interrupted) · round 1"."""
    raw = _raw(recorded_runs["ppo"])
    first = next(i for i, r in enumerate(raw) if r["event"] == "PPOUpdate")  # round 1's end
    second = [i for i, r in enumerate(raw) if r["event"] == "EpochCompleted" and i > first]
    stopped = {"event": "PPORunFinished", **{k: v for k, v in raw[-1].items() if k != "event"}}
    stopped |= {"status": "interrupted", "rounds": 1}
    _write(tmp_path, [*raw[: second[2] + 1], stopped])  # some of round 2's epochs logged
    state = _state(tmp_path)
    assert [r.update.round for r in state.rounds] == [1] and state.status == "interrupted"
    assert {env.episode.number for env in state.envs.values() if env.episode} == {1}


def test_a_ppo_run_folds_its_rounds_from_the_steps_before_each_update(recorded_runs) -> None:
    raw = _raw(recorded_runs["ppo"])
    state = _state(recorded_runs["ppo"])
    assert state.is_ppo and state.status == "completed"
    updates = [i for i, r in enumerate(raw) if r["event"] == "PPOUpdate"]
    assert [r.update.round for r in state.rounds] == [raw[i]["round"] for i in updates]
    start = 0
    for folded, end in zip(state.rounds, updates, strict=True):
        steps = raw[start:end]
        ops = Counter(r["op"] for r in steps if r["event"] == "ActionTaken")
        totals = [r["total"] for r in steps if r["event"] == "RewardComputed"]
        assert folded.ops == dict(ops) and sum(ops.values()) > 0
        assert folded.mean_reward == pytest.approx(sum(totals) / len(totals))
        start = end
    for env in (0, 1):
        mine = [r for r in raw if r["event"] == "EpisodeFinished" and r["env"] == env]
        assert [r.episode_return for r in state.env(env).results] == [
            r["episode_return"] for r in mine
        ]
        last = [
            r["epoch"]
            for r in raw
            if r["event"] == "EpochCompleted" and r["env"] == env and r["episode"] == 2
        ]
        assert [e.epoch for e in state.episode(env).epochs] == last
    assert len(_state(recorded_runs["ppo"], keep_episodes=1).env(0).episodes) == 1


def test_a_resumed_ppo_run_forgets_the_rounds_after_its_checkpoint(tmp_path, recorded_runs):
    raw = _raw(recorded_runs["ppo"])
    second = next(i for i, r in enumerate(raw) if r["event"] == "PPOUpdate")  # round 1's end
    resumed = {**raw[0], "resumed_from_epoch": 1}
    # The attempt ran round 2 fully, then was resumed from round 1 and never got further.
    _write(tmp_path, [*raw[:-1], resumed])
    state = _state(tmp_path)
    assert [r.update.round for r in state.rounds] == [1]
    assert all(env.results[-1].episode == 1 for env in state.envs.values())
    assert all(env.episode is not None and env.episode.number == 1 for env in state.envs.values())
    assert state.status is None and second > 0


def test_recent_events_and_episodes_are_bounded(recorded_runs) -> None:
    state = _state(recorded_runs["heuristic"], recent=3)
    assert len(state.recent) == 3 and state.recent[-1].name == "RunFinished"
    assert fold([]).events == 0 and fold([]).episode().latest is None


def test_a_tail_read_in_small_pieces_gives_the_same_events(recorded_runs) -> None:
    path = recorded_runs["ppo"] / "events.jsonl"
    whole = read_events(path).records
    tail, pieces, polls = EventTail(path), [], 0
    while True:
        got = tail.events(max_bytes=512)
        pieces += got
        polls += 1
        if tail.caught_up:
            break
    assert pieces == whole and polls > 10
