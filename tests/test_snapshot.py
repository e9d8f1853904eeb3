"""The dashboard's data (``esper.karn.snapshot``): a folded run as JSON, checked against the raw
event lines of recorded runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from esper.karn.snapshot import snapshot
from esper.nissa.fold import RunState
from esper.nissa.log import read_events


def _raw(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _snapshot(run: Path, **kwargs: Any) -> dict[str, Any]:
    state = RunState().apply_all(read_events(run / "events.jsonl").records)
    data = snapshot(state, run.name, **kwargs)
    json.dumps(data, allow_nan=False)  # plain JSON: no NaN, no objects
    return data


def test_a_growth_snapshot_carries_its_epochs_timeline_and_labelled_header(recorded_runs) -> None:
    raw = _raw(recorded_runs["heuristic"])
    data = _snapshot(recorded_runs["heuristic"])
    epochs = [r for r in raw if r["event"] == "EpochCompleted"]
    (env,) = data["envs"]
    (episode,) = env["episodes"]
    assert env["env"] is None and episode["epochs"]["epoch"] == [r["epoch"] for r in epochs]
    assert episode["epochs"]["val_accuracy"] == [r["val_accuracy"] for r in epochs]
    assert env["slots_now"] == epochs[-1]["slots"]
    header = {row["label"]: row["value"] for row in data["header"]}
    last = epochs[-1]
    assert header["epoch"] == f"{last['epoch']} / 40"
    assert header[f"val accuracy (epoch {last['epoch']})"] == f"{last['val_accuracy']:.2f}%"
    best = max(r["val_accuracy"] for r in epochs)
    assert header["best val accuracy"] == f"{best:.2f}%"
    assert last["param_count"] >= 1000  # written as the other views write it: 1,672
    assert header["parameters"] == f"{last['param_count']:,}" and "," in header["parameters"]
    # The timeline comes from the transitions: a pruned seed shows its PRUNED span.
    pruned = [r for r in raw if r["event"] == "SeedTransition" and r["to_stage"] == "PRUNED"]
    assert pruned
    for transition in pruned:
        spans = episode["timeline"][transition["slot"]]
        assert {"stage": "PRUNED", "start": float(transition["epoch"])}.items() <= next(
            s for s in spans if s["start"] == transition["epoch"] and s["stage"] == "PRUNED"
        ).items()
    kinds = {(m["epoch"], m["slot"], m["kind"]) for m in episode["marks"]}
    assert {(r["epoch"], r["slot"], "prune") for r in pruned} <= kinds
    assert data["run"]["status"] == "completed" and data["slots"] == ["early", "mid", "late"]


def test_a_ppo_snapshot_labels_the_round_mean_not_one_environment(recorded_runs) -> None:
    raw = _raw(recorded_runs["ppo"])
    data = _snapshot(recorded_runs["ppo"])
    updates = [r for r in raw if r["event"] == "PPOUpdate"]
    last = updates[-1]
    header = {row["label"]: row["value"] for row in data["header"]}
    label = f"mean final val accuracy over environments (round {last['round']})"
    assert header[label] == f"{last['mean_final_accuracy']:.2f}%"
    assert data["rounds"]["round"] == [r["round"] for r in updates]
    assert data["rounds"]["entropy"] == [r["entropy"] for r in updates]
    assert [env["env"] for env in data["envs"]] == [0, 1]
    for env in data["envs"]:
        assert [e["episode"] for e in env["episodes"]] == [1, 2]  # episode boundaries
        finished = [r for r in raw if r["event"] == "EpisodeFinished" and r["env"] == env["env"]]
        assert [r["episode_return"] for r in env["results"]] == [
            r["episode_return"] for r in finished
        ]


def test_recent_events_are_numbered_by_their_line(recorded_runs) -> None:
    raw = _raw(recorded_runs["static"])
    data = _snapshot(recorded_runs["static"], recent=4)
    recent = data["events"]["recent"]
    assert [e["n"] for e in recent] == list(range(len(raw) - 3, len(raw) + 1))
    assert [e["event"] for e in recent] == [r["event"] for r in raw[-4:]]
    assert recent[-1]["text"].startswith("status=completed")
    assert data["events"]["count"] == len(raw)


def test_a_terminated_runs_best_leaves_out_its_panicked_epoch(spiked_run) -> None:
    """The header's best validation accuracy took the panicked epoch's (a made-up 99 %, the
    model the governor discarded); the run's summary leaves it out. Oracle: the raw epochs
    before the GovernorPanic's."""
    raw = _raw(spiked_run)
    (panic,) = [r for r in raw if r["event"] == "GovernorPanic"]
    epochs = [r for r in raw if r["event"] == "EpochCompleted"]
    assert panic["epoch"] == epochs[-1]["epoch"] and epochs[-1]["val_accuracy"] == 99.0
    best = max(r["val_accuracy"] for r in epochs if r["epoch"] != panic["epoch"])
    header = {row["label"]: row["value"] for row in _snapshot(spiked_run)["header"]}
    assert header["best val accuracy"] == f"{best:.2f}%" != "99.00%"


def test_a_run_logged_at_level_minimal_is_headed_by_its_end_record(tmp_path, recorded_runs):
    """``--telemetry.level minimal`` logs a growth run's start and end, no epoch: the finished
    run's header read "epoch — / 40", every value "—" (a walk-through)."""
    from esper.leyline.events import EVENT_TYPES, TelemetryLevel

    raw = _raw(recorded_runs["heuristic"])
    kept = [r for r in raw if EVENT_TYPES[r["event"]].level == TelemetryLevel.MINIMAL]
    run = tmp_path / "minimal"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    end = raw[-1]
    assert end["event"] == "RunFinished" and not any(r["event"] == "EpochCompleted" for r in kept)
    header = {row["label"]: row["value"] for row in _snapshot(run)["header"]}
    assert header == {
        "epoch": f"{end['epochs']} / 40",
        "final model val accuracy": f"{end['final_val_accuracy']:.2f}%",
        "best val accuracy": f"{end['best_val_accuracy']:.2f}%",
        "parameters": f"{end['param_count']:,}",
        "governor panics": "0",
        "events": f"{len(kept):,}",
        **{k: v for k, v in header.items() if k in ("run", "mode", "task", "seed", "status")},
    }
