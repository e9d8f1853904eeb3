"""The web dashboard's server: run list, snapshot streams, studies, path safety, static files,
CLI errors, and its defences: Host/Origin checks, links out of the runs directory,
Last-Event-ID, memory.

Snapshot streams are read from the real uvicorn server (on a free 127.0.0.1 port, stopped by each
test) with an HTTP client whose read timeout turns a stalled stream into a failure, not a hang.
Every snapshot is checked against ``snapshot(fold(events))`` computed here from the log.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from conftest import growth_summary, ppo_summary, unprivileged, write_run
from esper.cli.dashboard import LEFT_OUT, study_table
from esper.cli.main import EXIT_BAD_INPUT, main
from esper.karn import dashboard
from esper.karn.colours import MARK_STYLES, STAGE_COLOURS
from esper.karn.dashboard import (
    STATIC_DIR,
    DashboardServer,
    create_app,
    open_listener,
    stream_snapshots,
)
from esper.karn.guard import READ_BYTES, accepted_hosts, confined_opener, parse_last_event_id
from esper.karn.snapshot import RECENT_SHOWN, snapshot
from esper.karn.studies import StudyFindings, StudyRow
from esper.leyline.events import EVENT_TYPES, EpochCompleted, RunFinished, RunStarted, event_record
from esper.leyline.files import try_lock
from esper.leyline.stages import SeedStage
from esper.leyline.trials import (
    JUDGING_FILE,
    LOCK_FILE,
    STUDY_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
    TrialRow,
)
from esper.nissa import log
from esper.nissa.bands import band, fewer_note, quantile
from esper.nissa.fold import MARK_KINDS, RunState
from esper.nissa.log import EVENTS_FILE, EventLogError, EventTail, open_run, read_events
from esper.nissa.record import known_study_score, write_summary
from esper.study.stats import ALL_TASKS, summarize

POLL = 0.05  # a fast poll keeps these tests short
SNAPSHOT = 0.05  # likewise, the least time between two snapshots of a stream
LOCAL = ("127.0.0.1", 8000)  # the address TestClient apps pretend to listen on
READ_TIMEOUT = 5.0  # seconds without a byte before a stream read fails the test


def copy_run(source: Path, destination: Path, lines: int | None = None) -> Path:
    """A run directory with ``source``'s config and the first ``lines`` lines of its log.

    The summary (the mark of a run that has stopped) is copied only with the whole log.
    """
    destination.mkdir(parents=True)
    shutil.copy(source / "config.json", destination / "config.json")
    if lines is None:
        shutil.copy(source / "summary.json", destination / "summary.json")
    text = (source / EVENTS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    (destination / EVENTS_FILE).write_text("".join(text[:lines]), encoding="utf-8")
    return destination


def append(run: Path, *lines: str) -> None:
    with (run / EVENTS_FILE).open("a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def line_count(run: Path) -> int:
    return len((run / EVENTS_FILE).read_text(encoding="utf-8").splitlines())


def folded(run: Path, name: str) -> dict[str, Any]:
    """The oracle: the run's log read whole, folded once and snapshotted, as the page gets it."""
    state = RunState(recent=RECENT_SHOWN).apply_all(read_events(run / EVENTS_FILE).records)
    data: dict[str, Any] = json.loads(json.dumps(snapshot(state, name), allow_nan=False))
    return data


def sse_messages(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The Server-Sent Events messages of a streaming response (fields of each message)."""
    message: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if message:
                yield message
            message = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            message[field] = value.removeprefix(" ")


def take(messages: Iterator[dict[str, str]], n: int) -> list[dict[str, str]]:
    """The next ``n`` messages that carry an event (``retry`` hints are skipped)."""
    taken: list[dict[str, str]] = []
    while len(taken) < n:
        message = next(messages)
        if "event" in message:
            taken.append(message)
    return taken


def snapshot_with(messages: Iterator[dict[str, str]], events: int) -> dict[str, Any]:
    """The next snapshot holding ``events`` events (earlier ones are skipped)."""
    while True:
        (message,) = take(messages, 1)
        assert message["event"] == "snapshot", message
        if int(message["id"]) == events:
            data: dict[str, Any] = json.loads(message["data"])
            assert data["events"]["count"] == events
            return data


def epoch_line(template: dict[str, Any], epoch: int, val_accuracy: float) -> str:
    """An EpochCompleted line like ``template`` with a recognisable epoch and accuracy."""
    return json.dumps({**template, "epoch": epoch, "val_accuracy": val_accuracy})


def first_epoch(run: Path) -> dict[str, Any]:
    for line in (run / EVENTS_FILE).read_text(encoding="utf-8").splitlines():
        record: dict[str, Any] = json.loads(line)
        if record["event"] == EpochCompleted.__name__:
            return record
    raise AssertionError(f"no {EpochCompleted.__name__} in {run}")


@pytest.fixture
def runs_dir(tmp_path: Path, recorded_runs: dict[str, Path]) -> Path:
    """A runs directory with a copy of the recorded heuristic and PPO runs (``live``, ``ppo``)."""
    root = tmp_path / "runs"
    copy_run(recorded_runs["heuristic"], root / "live")
    copy_run(recorded_runs["ppo"], root / "ppo")
    return root


def serve(runs_dir: Path) -> DashboardServer:
    sock = open_listener("127.0.0.1", 0)
    return DashboardServer(runs_dir, sock, poll_seconds=POLL, snapshot_seconds=SNAPSHOT)


def local_client(runs_dir: Path, **kwargs: Any) -> TestClient:
    """A test client addressing the app as a browser on this machine would (Host 127.0.0.1:P)."""
    app = create_app(runs_dir, hosts=accepted_hosts(*LOCAL), **kwargs)
    return TestClient(app, base_url=f"http://{LOCAL[0]}:{LOCAL[1]}")


# ------------------------------------------------------------------ the run list


def test_run_list_matches_the_run_directories(recorded_runs: dict[str, Path]) -> None:
    root = recorded_runs["heuristic"].parent
    listing = local_client(root).get("/api/runs").json()
    expected = []
    for path in sorted(recorded_runs.values()):
        run = open_run(path)
        expected.append(
            {
                "name": run.name,
                "mode": run.mode,
                "task": run.task,
                "seed": run.seed,
                "status": run.status,
                "error": None,
                "study": None,
                "modified": (path / EVENTS_FILE).stat().st_mtime,
            }
        )
    assert listing["runs"] == expected
    assert {run["mode"] for run in listing["runs"]} == {"heuristic", "static", "ppo"}
    assert {run["status"] for run in listing["runs"]} == {"completed"}
    assert listing["newest"] == max(expected, key=lambda run: run["modified"])["name"]


def test_the_newest_run_is_the_one_whose_log_changed_last(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    for name, age in (("a", 300), ("b", 100), ("c", 200)):
        run = copy_run(recorded_runs["static"], tmp_path / name)
        stamp = time.time() - age
        os.utime(run / EVENTS_FILE, (stamp, stamp))
    copy_run(recorded_runs["static"], tmp_path / "d", lines=0)  # unreadable: never the newest
    client = local_client(tmp_path)
    assert client.get("/api/runs").json()["newest"] == "b"
    append(tmp_path / "a", "")  # a run that logs again is the newest
    assert client.get("/api/runs").json()["newest"] == "a"
    assert local_client(tmp_path / "d").get("/api/runs").json()["newest"] is None


def test_runs_that_appear_later_are_listed_and_unreadable_ones_do_not_hide_others(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    client = local_client(tmp_path)
    assert client.get("/api/runs").json()["runs"] == []
    copy_run(recorded_runs["static"], tmp_path / "b")
    copy_run(recorded_runs["heuristic"], tmp_path / "a", lines=5)  # still running
    starting = copy_run(recorded_runs["heuristic"], tmp_path / "c", lines=0)  # no RunStarted yet
    (tmp_path / "not-a-run").mkdir()
    listed = client.get("/api/runs").json()["runs"]
    assert [run["name"] for run in listed] == ["a", "b", "c"]
    assert [run["status"] for run in listed] == ["unfinished", "completed", "unreadable"]
    assert listed[2]["mode"] is None and str(starting) in listed[2]["error"]
    assert listed[2]["modified"] is None


def test_one_run_directory_can_be_served_by_itself(recorded_runs: dict[str, Path]) -> None:
    run = recorded_runs["static"]
    listed = local_client(run).get("/api/runs").json()["runs"]
    assert [(r["name"], r["mode"]) for r in listed] == [(run.name, "static")]


# ------------------------------------------------------------------ snapshot streams


def test_a_stream_sends_the_folded_run_then_each_change(runs_dir: Path) -> None:
    run = runs_dir / "live"
    existing = line_count(run)
    template = first_epoch(run)
    server = serve(runs_dir)
    with (
        server.in_background() as url,
        httpx.Client(timeout=READ_TIMEOUT) as client,
        client.stream("GET", f"{url}api/runs/live/events") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(response)
        (first,) = take(messages, 1)
        assert (first["event"], int(first["id"])) == ("snapshot", existing)
        assert json.loads(first["data"]) == folded(run, "live")

        append(run, epoch_line(template, 901, 87.654), epoch_line(template, 902, 12.5))
        later = snapshot_with(messages, existing + 2)
        assert later == folded(run, "live")
        (episode,) = later["envs"][0]["episodes"]
        assert episode["epochs"]["epoch"][-2:] == [901, 902]
        assert episode["epochs"]["val_accuracy"][-2:] == [87.654, 12.5]


def test_a_backlog_is_sent_in_snapshots_no_more_often_than_the_interval(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    runs = tmp_path / "runs"
    run = copy_run(recorded_runs["ppo"], runs / "ppo")
    total = line_count(run)

    async def all_snapshots() -> list[tuple[float, int]]:
        sent = []
        body = stream_snapshots(
            run / EVENTS_FILE,
            "ppo",
            root=runs,
            skip=0,
            poll_seconds=POLL,
            stopping=lambda: False,
            interval=0.2,
            read_bytes=2000,  # many reads, so the backlog takes several intervals
        )
        async for text in body:
            if "event: snapshot" in text:
                sent.append((time.monotonic(), int(text.split("id: ")[1].split("\n")[0])))
                if sent[-1][1] == total:
                    break
        await body.aclose()  # type: ignore[attr-defined]
        return sent

    sent = asyncio.run(all_snapshots())
    counts = [count for _, count in sent]
    assert counts == sorted(counts) and counts[-1] == total
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(sent)]
    assert all(gap >= 0.2 - 0.01 for gap in gaps), gaps


def test_a_resumed_run_streams_as_it_finally_happened(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """Epochs 1-12, Ctrl-C, resume from the checkpoint after epoch 8: the stream shows epochs
    9-12 as the resumed attempt ran them, once each, and the run live again."""
    runs = tmp_path / "runs"
    source = recorded_runs["heuristic"]
    lines = (source / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    epochs = [json.loads(line) for line in lines if '"EpochCompleted"' in line]
    run = copy_run(source, runs / "r", lines=1)  # its RunStarted
    first_try = [epoch_line(e, e["epoch"], 11.0) for e in epochs[:12]]
    stopped = RunFinished("interrupted", 12, None, None, 0, 0, 0, 1.0)
    resumed = RunStarted("r", "heuristic", "synthetic", 0, 40, ("early", "mid", "late"), 8)
    second_try = [epoch_line(e, e["epoch"], 22.0 + e["epoch"]) for e in epochs[8:14]]
    wrap = [json.dumps({"t": 2.0, "run_id": "r", **event_record(e)}) for e in (stopped, resumed)]
    append(run, *first_try, wrap[0], wrap[1], *second_try)
    total = line_count(run)
    server = serve(runs)
    with (
        server.in_background() as url,
        httpx.Client(timeout=READ_TIMEOUT) as client,
        client.stream("GET", f"{url}api/runs/r/events") as response,
    ):
        data = snapshot_with(sse_messages(response), total)
    assert data == folded(run, "r")
    (episode,) = data["envs"][0]["episodes"]
    assert episode["epochs"]["epoch"] == list(range(1, 15))
    assert episode["epochs"]["val_accuracy"] == [11.0] * 8 + [22.0 + e for e in range(9, 15)]
    # The log cannot tell a live attempt from a crashed one (a kill -9 leaves the same lines):
    # it read "running" for a crashed run forever, where the picker and runs list said this.
    assert (data["run"]["status"], data["run"]["attempts"]) == ("unfinished", 2)


def test_a_reconnecting_browser_gets_the_current_snapshot_unless_it_has_it(
    runs_dir: Path,
) -> None:
    run = runs_dir / "live"
    existing = line_count(run)
    template = first_epoch(run)
    server = serve(runs_dir)
    with server.in_background() as url, httpx.Client(timeout=READ_TIMEOUT) as client:
        behind = {"Last-Event-ID": str(existing - 2)}
        with client.stream("GET", f"{url}api/runs/live/events", headers=behind) as response:
            (got,) = take(sse_messages(response), 1)
        assert int(got["id"]) == existing and json.loads(got["data"]) == folded(run, "live")

        current = {"Last-Event-ID": str(existing)}
        with client.stream("GET", f"{url}api/runs/live/events", headers=current) as response:
            messages = sse_messages(response)
            time.sleep(3 * POLL)  # the stream has read the log and found nothing to send
            append(run, epoch_line(template, 901, 1.5))
            (got,) = take(messages, 1)  # the first snapshot sent is the one with the new line
        assert int(got["id"]) == existing + 1


def test_the_one_shot_snapshot_is_the_streamed_one(runs_dir: Path) -> None:
    client = local_client(runs_dir)
    for name in ("live", "ppo"):
        response = client.get(f"/api/runs/{name}/snapshot")
        assert response.status_code == 200
        assert response.json() == folded(runs_dir / name, name)
    template = first_epoch(runs_dir / "live")
    append(runs_dir / "live", epoch_line(template, 901, 1.5))  # read on from where it was
    assert client.get("/api/runs/live/snapshot").json() == folded(runs_dir / "live", "live")
    append(runs_dir / "live", "{not an event")
    response = client.get("/api/runs/live/snapshot")
    assert response.status_code == 422
    assert f"{EVENTS_FILE}:{line_count(runs_dir / 'live')}" in one_error_line(response.text)


def test_a_log_replaced_by_another_is_read_anew_at_once(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """The first snapshot after a run's log was replaced (a trial's folder made again) was a
    422 "the event log was replaced"; the next read the new log (a walk-through)."""
    run = copy_run(recorded_runs["heuristic"], tmp_path / "run")
    client = local_client(tmp_path)
    assert client.get("/api/runs/run/snapshot").json() == folded(run, "run")
    new = tmp_path / "new.jsonl"
    shutil.copy(recorded_runs["static"] / EVENTS_FILE, new)
    new.replace(run / EVENTS_FILE)  # another file at the path
    response = client.get("/api/runs/run/snapshot")
    assert response.status_code == 200 and response.json() == folded(run, "run")
    (run / EVENTS_FILE).unlink()  # removed: still an error, not an empty run
    assert client.get("/api/runs/run/snapshot").status_code != 200


def test_a_malformed_line_ends_that_stream_with_an_error_and_the_server_goes_on(
    runs_dir: Path,
) -> None:
    run = runs_dir / "live"
    existing = line_count(run)
    template = first_epoch(run)
    server = serve(runs_dir)
    with server.in_background() as url, httpx.Client(timeout=READ_TIMEOUT) as client:
        with client.stream("GET", f"{url}api/runs/live/events") as response:
            messages = sse_messages(response)
            take(messages, 1)
            append(run, epoch_line(template, 901, 1.5), "{this is not json")
            last, error = take(messages, 2)
            assert int(last["id"]) == existing + 1  # what came before the bad line is shown
            assert error["event"] == "stream-error"
            assert (
                f"{EVENTS_FILE}:{existing + 2}: malformed event line"
                in json.loads(error["data"])["message"]
            )
            assert json.loads(error["data"])["gone"] is False  # the page does not follow again
            assert list(messages) == []  # the stream ended
        assert client.get(f"{url}api/runs").status_code == 200
        with client.stream("GET", f"{url}api/runs/ppo/events") as response:
            (first,) = take(sse_messages(response), 1)
            assert json.loads(first["data"])["run"]["mode"] == "ppo"


def test_streams_end_on_client_disconnect_and_on_server_shutdown(runs_dir: Path) -> None:
    server = serve(runs_dir)
    running = server.server.server_state.tasks  # one task per request being answered
    with server.in_background() as url:
        with (
            httpx.Client(timeout=READ_TIMEOUT) as client,
            client.stream("GET", f"{url}api/runs/live/events") as response,
        ):
            messages = sse_messages(response)  # held: a dropped generator closes the response
            take(messages, 1)
            assert len(running) == 1
        deadline = time.monotonic() + 3
        while running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not running, "the server kept a stream open for a client that left"

        client = httpx.Client(timeout=READ_TIMEOUT)
        response = client.send(
            client.build_request("GET", f"{url}api/runs/ppo/events"), stream=True
        )
        messages = sse_messages(response)
        take(messages, 1)
        started = time.monotonic()
        server.stop()
        rest = list(messages)  # ends (no read timeout) once the server stops
        response.close()
        client.close()
    assert all(m["event"] == "snapshot" for m in rest if "event" in m)
    assert time.monotonic() - started < 3


def test_head_of_a_stream_is_its_headers_and_the_connection_goes_on(runs_dir: Path) -> None:
    """A HEAD of the event stream was answered with a chunked body that never ended: the
    server polled the log for a client that wanted none, and the connection took no other
    request."""
    server = serve(runs_dir)
    with server.in_background() as url, httpx.Client(timeout=READ_TIMEOUT) as client:
        head = client.head(f"{url}api/runs/live/events")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"].startswith("text/event-stream")
        assert client.get(f"{url}api/runs").status_code == 200  # the same connection
        assert client.head(f"{url}api/runs/nosuchrun/events").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/%2E%2E/events",
        "/api/runs/..%2Fsecret/events",
        "/api/runs/%2E%2E%2Fsecret/events",
        "/api/runs/group%2Finner/events",
        "/api/runs/group/inner/events",
        "/api/runs/group/events",  # a child directory that is not a run
        "/api/runs/nosuchrun/events",
        "/api/runs/..%2Fsecret/snapshot",
        "/api/runs/group/inner/snapshot",
        "/api/runs/nosuchrun/snapshot",
    ],
)
def test_only_runs_the_list_names_are_served(
    tmp_path: Path, recorded_runs: dict[str, Path], path: str
) -> None:
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "ok")
    copy_run(recorded_runs["static"], tmp_path / "secret")  # a run beside the runs directory
    copy_run(recorded_runs["static"], runs / "group" / "inner")  # two levels down, no study
    client = local_client(runs)
    with client.stream("GET", path) as response:
        assert response.status_code == 404
    with client.stream("GET", "/api/runs/ok/events") as response:
        assert response.status_code == 200
    assert client.get("/api/runs/ok/snapshot").status_code == 200


# ------------------------------------------------------------------ studies


def test_a_bands_legend_says_from_which_epoch_fewer_runs_are_in_its_median() -> None:
    """A governor ended one of three trials after epoch 4, another after epoch 6."""
    assert fewer_note([1, 4, 6, 7], [3, 3, 2, 1], 3) == "; from epoch 6 of fewer, down to 1"
    assert fewer_note([1, 4], [3, 3], 3) == ""


def test_band_statistics_are_the_median_and_interquartile_range() -> None:
    nan = math.nan
    curves = [{1: 10.0, 2: 20.0}, {1: 30.0, 2: None}, {1: 20.0, 2: 40.0, 3: 5.0}, {1: 40.0, 2: nan}]
    found = band(curves)
    # Epoch 1: 10 20 30 40 -> positions 0.75, 1.5, 2.25 (n - 1 = 3 times 1/4, 1/2, 3/4).
    # Epoch 2: 20 40 (None and NaN are missing, not 0) -> 25, 30, 35. Epoch 3: 5 alone.
    assert found.epoch == [1, 2, 3]
    assert found.q1 == [17.5, 25.0, 5.0]
    assert found.median == [25.0, 30.0, 5.0]
    assert found.q3 == [32.5, 35.0, 5.0]
    assert found.n == [4, 2, 1]
    assert band([{1: None}]).median == [None]
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):  # numpy's default percentile is the same method
        assert quantile(values, p) == pytest.approx(float(np.percentile(values, 100 * p)))
    # p = -0.5 gave the largest value, 1.5 an IndexError; NaN sorted where it stood, so the
    # median of [nan, 3, 1, 2, 5] was 2.0 (the others' is 2.5)
    for p in (-0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
            quantile(values, p)
    with pytest.raises(ValueError, match="holding NaN"):
        quantile([math.nan, 3.0, 1.0, 2.0, 5.0], 0.5)


def write_study(directory: Path, recorded_runs: dict[str, Path]) -> Path:
    """A study directory as ``esper study`` leaves it: ``study.json``, ``trials/`` with a
    heuristic and a static trial for each of two seeds (copies of the recorded runs with their
    validation accuracy shifted per seed) and ``trials.csv``."""
    directory.mkdir(parents=True)
    (directory / STUDY_FILE).write_text('{"settings": {}, "attempts": {}, "errors": {}}')
    rows = []
    for arm in ("heuristic", "static"):
        for seed in (0, 1):
            name = f"synthetic.{arm}.seed{seed}"
            run = copy_run(recorded_runs[arm], directory / TRIALS_DIR / name)
            lines = []
            for line in (run / EVENTS_FILE).read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if record["event"] == EpochCompleted.__name__:
                    record["val_accuracy"] += 10 * seed
                lines.append(json.dumps(record))
            (run / EVENTS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
            row = TrialRow(
                "synthetic",
                arm,
                seed,
                "completed",
                50.0 + seed + (arm == "static"),
                None,
                1000 + seed,
                1000,
                1e6,
                2.0 + seed,
                None,
            )
            rows.append({**asdict(row), "run": name})
    with (directory / TRIALS_FILE).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, [f.name for f in fields(TrialRow)] + ["run"])
        writer.writeheader()
        writer.writerows(rows)
    return directory


def validation(run: Path) -> dict[int, float | None]:
    epochs = [e for e in read_events(run / EVENTS_FILE).records]
    return {
        e.event.epoch: e.event.val_accuracy for e in epochs if isinstance(e.event, EpochCompleted)
    }


def test_the_study_table_is_summarize_over_the_trials(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    study = write_study(tmp_path / "study", recorded_runs)
    rows = study_table(study).rows
    with (study / TRIALS_FILE).open(newline="", encoding="utf-8") as f:
        trials = [
            TrialRow(
                r["task"],
                r["arm"],
                int(r["seed"]),
                r["status"],
                float(r["score"]),
                None,
                int(r["final_params"]),
                int(r["peak_params"]),
                float(r["flops"]),
                float(r["seconds"]),
                None,
            )
            for r in csv.DictReader(f)
        ]
    expected = summarize(trials)
    assert [(r.task, r.arm) for r in rows] == [(s.task, s.arm) for s in expected]
    for row, summary in zip(rows, expected, strict=True):
        assert (row.iqm, row.iqm_low, row.iqm_high) == (
            summary.iqm.point,
            summary.iqm.low,
            summary.iqm.high,
        )
        assert (row.mean, row.n, row.final_params, row.seconds) == (
            summary.mean.point,
            summary.n,
            summary.final_params,
            summary.seconds,
        )
        seeds = (0, 1) if row.task != ALL_TASKS else ()
        assert row.runs == tuple(f"synthetic.{row.arm}.seed{seed}" for seed in seeds)


def test_the_study_table_takes_results_md_bootstrap_and_follows_results_json(
    tmp_path: Path, recorded_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study page's intervals came from 2000 resamples whatever the study's ``reps``
    (results.md's differed); they now take results.json's, and are computed again when it
    changes (as esper study writes it after trials.csv); a damaged one gives the default
    bootstrap and a note why, as the study report does."""
    from esper.study import results, stats
    from esper.study.results import Judging

    runs = tmp_path / "runs"
    study = write_study(runs / "st", recorded_runs)
    asked: list[tuple[int, int]] = []
    summarize = stats.summarize

    def recorded(rows: Any, reps: int = 0, seed: int = 0) -> Any:
        asked.append((reps, seed))
        return summarize(rows, reps, seed)

    monkeypatch.setattr(results, "summarize", recorded)  # as study_results calls it
    client = local_client(runs, study_table=study_table)
    assert client.get("/api/studies/st").json()["rows"] and asked == [(stats.DEFAULT_REPS, 0)]
    # A judging of no trials' digest: its bootstrap, and "of other trials" (not asserted here)
    judging = Judging((), (), (), (), 40, 7, 0, "")
    (study / JUDGING_FILE).write_text(json.dumps(asdict(judging)))
    assert client.get("/api/studies/st").json()["rows"] and asked[1:] == [(40, 7)]
    assert client.get("/api/studies/st").json()["rows"] and len(asked) == 2  # cached
    (study / JUDGING_FILE).write_text("{")  # damaged: the default bootstrap, and a note why
    data = client.get("/api/studies/st").json()
    assert data["rows"] and data["error"] is None and asked[2:] == [(stats.DEFAULT_REPS, 0)]
    assert data["verdicts"] == data["tables"] == []
    assert data["notes"] == [
        "no probabilities of improvement or verdicts: they need results.json, and "
        f"{str(study / JUDGING_FILE)!r} is not an Esper study's judging (invalid JSON at line "
        "1, column 2: Expecting property name enclosed in double quotes); `esper study` on the "
        "study file writes it (running only what is not finished)"
    ]
    # One linked out of the runs directory is not read (a review: its keys reached the page).
    outside = tmp_path / "secret.json"
    outside.write_text('{"api_token": "hunter2"}')
    (study / JUDGING_FILE).unlink()
    (study / JUDGING_FILE).symlink_to(outside)
    data = client.get("/api/studies/st").json()
    assert data["error"] == "results.json links outside the runs directory, so it is not read"
    assert "hunter2" not in json.dumps(data) and "api_token" not in json.dumps(data)


def test_the_study_page_shows_results_md_tables_verdicts_and_notes(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """The study page showed only the scores: no matched sizes, probabilities of improvement or
    verdicts, nor that an interrupted study's results were results so far, nor that results.md
    was of other trials. It now shows them with results.md's very cells (oracle: its text)."""
    from esper.leyline.trials import VerdictRoles, read_trials
    from esper.study.results import write_results

    runs = tmp_path / "runs"
    study = write_study(runs / "st", recorded_runs)
    with (study / TRIALS_FILE).open("a", encoding="utf-8") as f:  # a failed trial
        f.write("synthetic,static,2,failed,,,,,,,boom,synthetic.static.seed2\n")
    rows = [trial.row for trial in read_trials(study)]
    roles = VerdictRoles(matched=frozenset({("heuristic", "static")}))
    write_results(study, rows, ["static"], reps=30, seed=4, unfinished=3, roles=roles)
    markdown = (study / "results.md").read_text(encoding="utf-8")

    def md_section(title: str) -> str:
        return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]

    def md_rows(title: str) -> list[list[str]]:
        table = [line for line in md_section(title).splitlines() if line.startswith("| ")]
        return [[c.strip() for c in line.strip("|").split(" | ")] for line in table]

    client = local_client(runs, study_table=study_table)
    data = client.get("/api/studies/st").json()
    assert data["error"] is None and len(data["rows"]) == 4
    # The scores as results.md writes them: "all tasks (1)", "1,000" params (1000.5 rounded to
    # even; the page's own rounding gave 1001), without median, std, peak params and FLOPs.
    scores = md_rows("Scores")
    kept = [i for i, column in enumerate(scores[0]) if column not in LEFT_OUT]
    assert [row["cells"] for row in data["rows"]] == [[r[i] for i in kept] for r in scores[1:]]
    assert data["rows"][0]["cells"][5] == "1,000" and data["rows"][2]["cells"][0] == "all tasks (1)"
    assert [t["title"] for t in data["tables"]] == ["Matched sizes", "Probability of improvement"]
    for table in data["tables"]:
        assert [table["columns"], *table["rows"]] == md_rows(table["title"])
    assert len(data["tables"][1]["rows"]) == 2  # heuristic over static: the task and over all
    bullets = [line[2:] for line in md_section("Verdicts").splitlines() if line.startswith("- ")]
    assert data["verdicts"] == bullets and len(bullets) == 1
    text = (study / TRIALS_FILE).read_text(encoding="utf-8")
    (study / TRIALS_FILE).write_text(text + text.splitlines()[1] + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as twice:  # the page's error names the file, as the report
        study_table(study)
    assert str(twice.value).startswith(f"{study / TRIALS_FILE}: synthetic/heuristic: more than")
    (study / TRIALS_FILE).write_text(text, encoding="utf-8")
    assert data["notes"] == [
        "Results so far: the study was interrupted with 3 trial(s) not finished. Running it "
        "again completes them.",
        "1 trial(s) not counted (failed, or finished without a score): synthetic/static/seed 2 "
        "(boom)",
    ]
    assert "**Results so far: the study was interrupted with 3 trial(s)" in markdown
    # The study running again (its driver holds the study's lock): the page said it was
    # interrupted while it ran. The lock is looked at on every request: its note follows.
    fd = try_lock(study / LOCK_FILE)
    assert fd is not None
    try:
        running = client.get("/api/studies/st").json()
    finally:
        os.close(fd)
    assert running["notes"][0] == (
        "Results so far: the study is running again. These are of its last invocation, which "
        "stopped with 3 trial(s) not finished; they are written again when this one ends."
    )
    assert client.get("/api/studies/st").json()["notes"] == data["notes"]  # stopped again
    # trials.csv written again after results.md (a study stopped between the two): a note,
    # the "so far" of another invocation no more
    text = (study / TRIALS_FILE).read_text(encoding="utf-8")
    (study / TRIALS_FILE).write_text(text.replace(",50.0,", ",49.0,", 1), encoding="utf-8")
    stale = client.get("/api/studies/st").json()
    assert stale["notes"] and "are of other trials than trials.csv holds" in stale["notes"][0]
    assert len(stale["notes"]) == 2 and stale["verdicts"]


def test_a_study_lists_its_trials_as_runs_and_serves_its_table_and_bands(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "solo")
    study = write_study(runs / "st", recorded_runs)
    row = StudyRow(
        "synthetic",
        "heuristic",
        2,
        1.0,
        0.5,
        1.5,
        2.0,
        1.5,
        2.5,
        None,
        3.0,
        ("synthetic.heuristic.seed0", "synthetic.heuristic.seed1", "../../solo"),
        ("synthetic", "heuristic", "2", "1.00 [0.50, 1.50]", "2.00 [1.50, 2.50]", "—", "3.0"),
    )
    asked: list[Path] = []

    def table(directory: Path) -> StudyFindings:
        asked.append(directory)
        return StudyFindings((row,))

    client = local_client(runs, study_table=table)
    listed = client.get("/api/runs").json()["runs"]
    names = [(r["name"], r["study"]) for r in listed]
    assert names[0] == ("solo", None)
    assert ("st/synthetic.static.seed1", "st") in names and len(names) == 5
    assert client.get("/api/studies").json() == {"studies": ["st"]}

    data = client.get("/api/studies/st").json()
    assert data["error"] is None and data["score"] == "test accuracy"  # study.json says none
    links = ["st/synthetic.heuristic.seed0", "st/synthetic.heuristic.seed1"]  # not ../../solo
    assert data["rows"] == [{**asdict(row), "runs": links, "cells": list(row.cells)}]
    (got,) = data["bands"]
    trials = [study / TRIALS_DIR / f"synthetic.heuristic.seed{seed}" for seed in (0, 1)]
    assert got == {
        "task": "synthetic",
        "arm": "heuristic",
        "trials": 2,
        "label": "heuristic median of 2",
        **asdict(band([validation(t) for t in trials])),
    }
    assert got["median"][0] == pytest.approx(validation(trials[0])[1] + 5)  # seeds 10 apart
    saved = (study / STUDY_FILE).read_text()
    (study / STUDY_FILE).write_text(
        saved.replace('"settings": {}', '"settings": {"score": "validation"}')
    )
    assert client.get("/api/studies/st").json()["score"] == "validation accuracy"
    # study.json unreadable: the table stands on trials.csv, its scores unnamed
    (study / STUDY_FILE).write_text(saved.replace('"settings": {}', '"settings": {"score": "val"}'))
    damaged = client.get("/api/studies/st").json()
    assert damaged["error"] is None and damaged["score"] == "score"
    _, why = known_study_score(study)  # the report's warning, the page's note
    assert why is not None and why.startswith("test or validation accuracy? ")
    assert damaged["notes"] == [why] and 'its score "val" is not one of' in why
    assert damaged["rows"] == [{**asdict(row), "runs": links, "cells": list(row.cells)}]
    (study / STUDY_FILE).write_text(saved)
    assert asked == [study]  # computed again only when trials.csv changes
    assert client.get("/api/runs/st/synthetic.static.seed0/snapshot").json() == folded(
        study / TRIALS_DIR / "synthetic.static.seed0", "st/synthetic.static.seed0"
    )
    assert client.get("/api/studies/nosuch").status_code == 404

    broken = local_client(runs, study_table=lambda d: summarize_fails())
    assert "one trial per task, arm and seed" in broken.get("/api/studies/st").json()["error"]
    assert local_client(runs).get("/api/studies").json() == {"studies": []}  # no table: none
    (study / TRIALS_FILE).rename(tmp_path / TRIALS_FILE)
    (study / TRIALS_FILE).symlink_to(tmp_path / TRIALS_FILE)  # a link out is not read
    refused = local_client(runs, study_table=table).get("/api/studies/st").json()
    assert "links outside the runs directory" in refused["error"] and refused["rows"] == []
    assert asked == [study]  # never asked to read it
    assert local_client(study, study_table=table).get("/api/studies").json() == {
        "studies": ["st"]
    }  # a study served by itself


def test_a_study_before_its_first_end_is_pending_not_an_error(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """A running study has no trials.csv until its invocation ends: the page showed a red
    "cannot be computed ... run `esper study FILE` to the end" for the whole run (a browser
    walk-through)."""
    runs = tmp_path / "runs"
    study = write_study(runs / "st", recorded_runs)
    (study / TRIALS_FILE).unlink()
    asked: list[Path] = []
    client = local_client(runs, study_table=lambda d: asked.append(d) or StudyFindings(()))
    data = client.get("/api/studies/st").json()
    assert data == {
        "name": "st",
        "score": "test accuracy",
        "rows": [],
        "bands": [],
        "tables": [],
        "verdicts": [],
        "notes": [],
        "error": None,
        "pending": True,
    }
    assert asked == []  # nothing to compute yet


def test_a_study_refresh_folds_only_the_trials_whose_logs_changed(
    tmp_path: Path, recorded_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every refresh folded every trial's log again; beyond ``FOLDS_KEPT`` trials each was read
    whole (0.65 s a refresh for 200 small trials)."""
    study = write_study(tmp_path / "st", recorded_runs)
    trials = [f"synthetic.heuristic.seed{seed}" for seed in (0, 1)]
    row = StudyRow("synthetic", "heuristic", 2, 1, 0, 2, 1, 0, 2, None, 1, tuple(trials), ())
    folded_logs: list[Path] = []
    use = dashboard.Folds.use

    def counted(self: Any, events_path: Path, view: Any) -> Any:
        folded_logs.append(events_path)
        return use(self, events_path, view)

    monkeypatch.setattr(dashboard.Folds, "use", counted)
    client = local_client(study, study_table=lambda directory: StudyFindings((row,)))
    first = client.get("/api/studies/st").json()
    assert len(folded_logs) == 2
    assert client.get("/api/studies/st").json() == first and len(folded_logs) == 2
    log = study / TRIALS_DIR / trials[0] / EVENTS_FILE
    last = max(validation(log.parent))
    append(log.parent, epoch_line(first_epoch(log.parent), last + 1, 99.0))
    (got,) = client.get("/api/studies/st").json()["bands"]
    assert folded_logs[2:] == [log]
    assert got["epoch"][-1] == last + 1 and got["median"][-1] == 99.0 and got["n"][-1] == 1
    assert got["trials"] == 2  # the page's legend says where fewer are in the median
    assert got["label"] == f"heuristic median of 2; from epoch {last + 1} of fewer, down to 1"


def summarize_fails() -> StudyFindings:
    raise ValueError(
        "synthetic/heuristic: more than one completed trial for one seed; a study "
        "has one trial per task, arm and seed"
    )


# ------------------------------------------------------------------ the page and the CLI


def test_page_and_static_files_are_served_locally_with_their_types(tmp_path: Path) -> None:
    client = local_client(tmp_path)
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(linked) == [
        "static/dashboard.css",
        "static/dashboard.js",
        "static/vendor/uplot/uPlot.iife.min.js",
        "static/vendor/uplot/uPlot.min.css",
    ]
    types = {".css": "text/css", ".js": ("text/javascript", "application/js")}
    for path in linked:
        response = client.get(f"/{path}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(types[Path(path).suffix])
        assert response.text == (STATIC_DIR / path.removeprefix("static/")).read_text("utf-8")
    # The page's own files; third-party libraries sit unchanged in vendor/ (see its VENDORED.md).
    files = sorted(f for f in STATIC_DIR.iterdir() if f.is_file())
    assert [f.name for f in files] == ["dashboard.css", "dashboard.js", "index.html"]
    for text in [page.text, *(f.read_text(encoding="utf-8") for f in files)]:
        for remote in ("http://", "https://", "//cdn", "@import", "url("):
            assert remote not in text.lower()
    assert client.get("/static/../dashboard.py").status_code == 404


def test_the_page_folds_nothing_and_gets_its_colours_from_the_server(tmp_path: Path) -> None:
    script = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    named = [name for name in EVENT_TYPES if name in script]
    assert named == [], f"the page reads events itself: {named}"
    for stage in SeedStage:
        assert f'"{stage.value}"' not in script
    meta = local_client(tmp_path).get("/api/meta").json()
    assert meta["stages"] == [stage.value for stage in SeedStage]
    assert meta["stage_colours"] == {s.value: STAGE_COLOURS[s] for s in SeedStage}
    assert meta["mark_colours"] == {kind: s.colour for kind, s in MARK_STYLES.items()}
    assert set(meta["mark_shapes"]) == set(MARK_KINDS.values()) == set(MARK_STYLES)
    # the page draws each kind as the report marks it, with a shape its glyph() knows
    drawn = {"^": "triangle", "*": "star", "X": "cross"}  # matplotlib marker -> page shape
    for kind, style in MARK_STYLES.items():
        assert meta["mark_shapes"][kind] == drawn[style.marker]
    assert 'shape === "triangle"' in script and 'shape === "star"' in script  # else: cross
    assert meta["runs_dir"] == str(tmp_path)


def one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_port_in_use_is_one_line_naming_the_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["dashboard", str(tmp_path), "--port", str(port)])
    assert code == EXIT_BAD_INPUT
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("esper: error: ") and f"port {port}" in line and "--port" in line


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_runs_dir_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    bad = tmp_path / "nowhere"
    if kind == "file":
        bad.write_text("not a directory")
    assert main(["dashboard", str(bad), "--port", "1"]) == EXIT_BAD_INPUT
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line
    assert ("does not exist" if kind == "missing" else "is not a directory") in line


def test_a_runs_directory_moved_away_while_served_is_a_one_line_503(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """It was a 500 on every request, with a traceback in the server's log, and the page said
    the server was unreachable."""
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "r1")
    app = create_app(runs, hosts=accepted_hosts(*LOCAL))
    client = TestClient(app, f"http://{LOCAL[0]}:{LOCAL[1]}", raise_server_exceptions=False)
    assert client.get("/api/runs").status_code == 200
    runs.rename(tmp_path / "moved")
    for path in ("/api/runs", "/api/runs/r1/snapshot", "/api/runs/r1/events"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.text == f"runs directory {str(runs)!r} does not exist", path
    (tmp_path / "moved").rename(runs)
    assert [r["name"] for r in client.get("/api/runs").json()["runs"]] == ["r1"]


def test_a_runs_directory_that_cannot_be_looked_into_is_a_503_for_studies_too(
    tmp_path: Path, recorded_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study list looked for studies outside the check: a locked runs directory was a 500
    and a traceback there. (As root, mode bits do not bind in this process: the refusal is
    what ``is_study`` raises on a directory without search permission.)"""
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "r1")

    def locked(path: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(dashboard, "is_study", locked)
    app = create_app(runs, hosts=accepted_hosts(*LOCAL), study_table=lambda d: StudyFindings(()))
    client = TestClient(app, f"http://{LOCAL[0]}:{LOCAL[1]}", raise_server_exceptions=False)
    for path in ("/api/studies", "/api/studies/st"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.text == f"runs directory {str(runs)!r} cannot be read (Permission denied)"


def test_ctrl_c_stops_the_dashboard_cleanly(runs_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "esper.cli.main", "dashboard", str(runs_dir)]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in banner and "2 runs" in banner
        with httpx.Client(timeout=READ_TIMEOUT) as client:
            assert len(client.get(f"http://127.0.0.1:{port}/api/runs").json()["runs"]) == 2
            with client.stream("GET", f"http://127.0.0.1:{port}/api/runs/live/events") as live:
                take(sse_messages(live), 1)  # a browser is watching while Ctrl-C comes
                process.send_signal(signal.SIGINT)
                _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_the_default_runs_directory_is_made_before_the_first_run(tmp_path: Path) -> None:
    """In a fresh checkout ``esper dashboard`` failed: "runs directory 'runs' does not exist",
    where the README has it pick up runs as they start (a walk-through). A runs directory
    given elsewhere is still refused when missing; with the port taken, nothing is made."""
    command = [sys.executable, "-m", "esper.cli.main", "dashboard"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run([*command, "--port", port], cwd=tmp_path, capture_output=True)
        assert done.returncode == EXIT_BAD_INPUT and not (tmp_path / "runs").exists()
    server = subprocess.Popen(
        [*command, "--port", port], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stderr is not None
        banner = server.stdout.readline()
        assert "(0 runs in runs; new ones appear as they start)" in banner, banner
        assert server.stderr.readline() == "esper dashboard: made runs/, where runs go by default\n"
        assert (tmp_path / "runs").is_dir()
        with httpx.Client(timeout=READ_TIMEOUT) as client:
            assert client.get(f"http://127.0.0.1:{port}/api/runs").json()["runs"] == []
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=10)


def test_the_picker_reads_statuses_from_the_record(tmp_path: Path) -> None:
    write_run(tmp_path / "grow", growth_summary("grow"))
    write_run(tmp_path / "learn", ppo_summary("learn"))
    write_run(tmp_path / "live", None)
    broken = write_run(tmp_path / "odd", None)
    (broken / "summary.json").write_text('{"status": "completed"}')  # not a run summary
    entries = {e.name: e for e in dashboard.list_runs(tmp_path)}
    assert [entries[n].status for n in ("grow", "learn", "live", "odd")] == [
        "interrupted",
        "failed",
        "unfinished",
        "unreadable",
    ]
    assert entries["learn"].mode == "ppo"
    error = entries["odd"].error
    assert error is not None and "is not an Esper run summary: missing" in error


def test_a_listing_opens_again_only_the_runs_whose_record_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every refresh of the picker opened every run (1 s for 2,000 runs, every 5 s)."""
    for name in ("a", "b", "c"):
        write_run(tmp_path / name, None)
    opened_runs: list[str] = []
    open_run = dashboard.open_run

    def counted(path: Path) -> Any:
        opened_runs.append(path.name)
        return open_run(path)

    monkeypatch.setattr(dashboard, "open_run", counted)
    client = local_client(tmp_path)
    first = client.get("/api/runs").json()
    assert sorted(opened_runs) == ["a", "b", "c"]
    assert client.get("/api/runs").json() == first and len(opened_runs) == 3
    write_run(tmp_path / "d", None)  # a new run, and a summary written for another
    write_summary(tmp_path / "b", growth_summary("b"))
    statuses = {r["name"]: r["status"] for r in client.get("/api/runs").json()["runs"]}
    assert sorted(opened_runs[3:]) == ["b", "d"]
    assert statuses == {"a": "unfinished", "b": "interrupted", "c": "unfinished", "d": "unfinished"}


# ------------------------------------------------------------------ Host and Origin (DNS rebinding)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 8000, {"127.0.0.1:8000", "localhost:8000"}),
        ("::1", 8000, {"[::1]:8000", "localhost:8000"}),
        ("192.168.1.5", 8000, {"192.168.1.5:8000"}),
        ("0.0.0.0", 8000, {"0.0.0.0:8000", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"}),
        ("127.0.0.1", 80, {"127.0.0.1:80", "localhost:80", "127.0.0.1", "localhost"}),
    ],
)
def test_accepted_hosts_are_the_listening_address(host: str, port: int, expected: set[str]) -> None:
    assert accepted_hosts(host, port) == expected


FOREIGN_HEADERS = [
    {"Host": "evil.example:8000"},  # DNS rebinding: the attacker's name for our address
    {"Host": "evil.example"},
    {"Host": "127.0.0.1:8001"},  # another port on this machine
    {"Host": "127.0.0.1"},  # port 80, not ours
    {"Host": "127.0.0.1:8000.evil.example"},
    {"Host": ""},
    {"Origin": "http://evil.example:8000"},
    {"Origin": "http://evil.example"},
    {"Origin": "null"},  # sandboxed frames and file:// pages
    {"Origin": "https://127.0.0.1:8000"},  # another scheme is another origin
    {"Origin": "http://127.0.0.1:8000.evil.example"},
    {"Host": "localhost:8000", "Origin": "http://evil.example"},
]
EVERY_PATH = [
    "/",
    "/api/meta",
    "/api/runs",
    "/api/runs/live/events",
    "/api/runs/live/snapshot",
    "/api/studies",
    "/static/dashboard.js",
    "/static/vendor/uplot/uPlot.iife.min.js",
    "/x",
]


@pytest.mark.parametrize("headers", FOREIGN_HEADERS, ids=lambda h: " ".join(h.values()) or "empty")
def test_requests_with_a_foreign_host_or_origin_are_refused(
    runs_dir: Path, headers: dict[str, str]
) -> None:
    client = local_client(runs_dir)
    for path in EVERY_PATH:
        response = client.get(path, headers=headers)
        assert response.status_code == 403, path
        assert response.headers["content-type"].startswith("text/plain")
        line = one_error_line(response.text)
        assert "127.0.0.1:8000" in line and str(runs_dir) not in line


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Host": "localhost:8000"},
        {"Host": "LocalHost:8000"},  # host names are case-insensitive
        {"Origin": "http://127.0.0.1:8000"},
        {"Host": "localhost:8000", "Origin": "http://localhost:8000"},
    ],
    ids=lambda h: " ".join(h.values()) or "default",
)
def test_requests_addressed_to_this_server_are_answered(
    runs_dir: Path, headers: dict[str, str]
) -> None:
    client = local_client(runs_dir)
    for path in ("/", "/api/meta", "/api/runs", "/api/runs/live/snapshot", "/static/dashboard.js"):
        assert client.get(path, headers=headers).status_code == 200, path
    with client.stream("GET", "/api/runs/live/events", headers=headers) as response:
        assert response.status_code == 200


def raw_request(url: str, head: bytes) -> tuple[int, str]:
    """Status and body of one request sent byte for byte (headers an HTTP client would refuse);
    the request must ask for ``Connection: close``."""
    address = httpx.URL(url)
    assert address.port is not None
    with socket.create_connection((address.host, address.port), timeout=READ_TIMEOUT) as conn:
        conn.sendall(head)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode("latin-1")


def test_the_server_refuses_foreign_and_garbled_headers_in_one_line(runs_dir: Path) -> None:
    server = serve(runs_dir)
    with server.in_background() as url, httpx.Client(timeout=READ_TIMEOUT) as client:
        port = httpx.URL(url).port
        assert client.get(f"{url}api/runs").status_code == 200
        localhost = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
        assert client.get(f"{url}api/runs", headers=localhost).status_code == 200
        ours = f"127.0.0.1:{port}".encode()
        refused = [
            (b"Host: evil.example:%d\r\n" % port, 403),
            (b"Host: " + ours + b"\xff\r\n", 403),  # a byte that is not ASCII
            (b"Host: " + ours + b"\r\nOrigin: http://\xc3\xa9vil.example\r\n", 403),
            (b"Host: " + ours + b"\r\nOrigin: http://evil.example\r\n", 403),
            (b"Host: " + ours + b"\r\nLast-Event-ID: \xb2\r\n", 400),  # latin-1 "²"
            (b"Host: " + ours + b"\r\nLast-Event-ID: " + b"7" * 5000 + b"\r\n", 400),
        ]
        for headers, expected in refused:
            head = b"GET /api/runs/live/events HTTP/1.1\r\n" + headers
            status, body = raw_request(url, head + b"Connection: close\r\n\r\n")
            assert status == expected, headers
            one_error_line(body)
            assert str(runs_dir) not in body


# ------------------------------------------------------------------ Last-Event-ID


def test_last_event_id_is_an_event_count() -> None:
    assert parse_last_event_id(None) == 0
    assert parse_last_event_id("0") == 0
    assert parse_last_event_id("42") == 42
    assert parse_last_event_id("9" * 18) == 10**18 - 1


@pytest.mark.parametrize(
    "value",
    [b"x", b"-1", b"", b"1.5", b"+3", b"9" * 19, b"9" * 5000, "²".encode("latin-1"), "١".encode()],
    ids=["letter", "negative", "empty", "fraction", "sign", "19-digits", "5000-digits", "²", "١"],
)
def test_a_bad_last_event_id_is_a_one_line_400(runs_dir: Path, value: bytes) -> None:
    with pytest.raises(ValueError, match="Last-Event-ID"):
        parse_last_event_id(value.decode("latin-1"))  # as Starlette decodes header bytes
    client = local_client(runs_dir)
    response = client.get("/api/runs/live/events", headers={"Last-Event-ID": value})
    assert response.status_code == 400
    assert "Last-Event-ID" in one_error_line(response.text)


# ------------------------------------------------------------------ links out of the runs directory

MARK = "TOP-SECRET-MARKER"  # in every file outside the runs directory; must reach no response


@pytest.fixture
def outside(tmp_path: Path, recorded_runs: dict[str, Path]) -> Path:
    """Beside the runs directory: a valid run whose first event names the task ``MARK``, and a
    ``passwd`` file (an event log that links there would be quoted in ``open_run``'s error)."""
    run = copy_run(recorded_runs["static"], tmp_path / "outside" / "run")
    lines = (run / EVENTS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    lines[0] = json.dumps({**json.loads(lines[0]), "task": MARK}) + "\n"
    (run / EVENTS_FILE).write_text("".join(lines), encoding="utf-8")
    (tmp_path / "outside" / "passwd").write_text(f"root:x:0:0:{MARK}:/root:/bin/sh\n")
    return tmp_path / "outside"


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("", "run"),  # the run directory itself
        (EVENTS_FILE, f"run/{EVENTS_FILE}"),
        (EVENTS_FILE, "passwd"),
        ("summary.json", "run/summary.json"),
        ("config.json", "run/config.json"),
    ],
    ids=["run-dir", "events", "events-to-passwd", "summary", "config"],
)
def test_links_out_of_the_runs_directory_are_neither_read_nor_served(
    tmp_path: Path, recorded_runs: dict[str, Path], outside: Path, link: str, target: str
) -> None:
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "ok")
    if link:
        linked = copy_run(recorded_runs["static"], runs / "linked")
        (linked / link).unlink()
        (linked / link).symlink_to(outside / target)
    else:
        (runs / "linked").symlink_to(outside / target, target_is_directory=True)
    client = local_client(runs)
    response = client.get("/api/runs")
    entries = {entry["name"]: entry for entry in response.json()["runs"]}
    assert entries["ok"]["status"] == "completed"
    assert entries["linked"]["status"] == "unreadable"
    assert entries["linked"]["mode"] is None
    assert f"{link or 'linked'} links outside the runs directory" in entries["linked"]["error"]
    assert MARK not in response.text
    for path in ("/api/runs/linked/events", "/api/runs/linked/snapshot"):
        with client.stream("GET", path) as stream:
            assert stream.status_code == 404
            assert MARK not in stream.read().decode()


def test_links_that_stay_in_the_runs_directory_are_followed(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "ok")
    (runs / "alias").symlink_to("ok", target_is_directory=True)
    entries = local_client(runs).get("/api/runs").json()["runs"]
    assert [(e["name"], e["status"]) for e in entries] == [
        ("alias", "completed"),
        ("ok", "completed"),
    ]
    with local_client(runs).stream("GET", "/api/runs/alias/events") as stream:
        assert stream.status_code == 200


def test_a_log_replaced_by_a_link_out_ends_its_stream_without_quoting_it(
    tmp_path: Path, recorded_runs: dict[str, Path], outside: Path
) -> None:
    runs = tmp_path / "runs"
    run = copy_run(recorded_runs["static"], runs / "r")
    tail = EventTail(run / EVENTS_FILE, confined_opener(runs))
    assert len(tail.events(READ_BYTES)) == line_count(run)
    (run / EVENTS_FILE).unlink()
    (run / EVENTS_FILE).symlink_to(outside / "passwd")
    with pytest.raises(EventLogError, match="links outside the runs directory") as raised:
        tail.events(READ_BYTES)
    assert MARK not in str(raised.value)


# ------------------------------------------------------------------ bounded reading


def test_the_tail_reads_whole_lines_a_bounded_amount_at_a_time(
    tmp_path: Path, recorded_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    run = copy_run(recorded_runs["heuristic"], runs / "r")
    lines = (run / EVENTS_FILE).read_bytes().splitlines(keepends=True)
    read_bytes = 2000
    tail = EventTail(run / EVENTS_FILE, confined_opener(runs))
    records: list[dict[str, Any]] = []
    while not tail.caught_up:
        before = tail.offset
        records += [item.record() for item in tail.events(read_bytes)]  # as the hub wrote them
        assert tail.offset - before <= read_bytes + max(map(len, lines))  # whole lines only
    assert records == [json.loads(line) for line in lines]
    assert len(lines) * 650 // read_bytes < 100  # many polls were needed

    template = first_epoch(run)
    with (run / EVENTS_FILE).open("a", encoding="utf-8") as f:
        f.write(epoch_line(template, 901, 1.5))  # a line still being written
    assert tail.events(read_bytes) == [] and tail.caught_up
    append(run, "")  # its newline
    assert [item.event.epoch for item in tail.events(read_bytes)] == [901]  # type: ignore[union-attr]

    good = epoch_line(template, 902, 1.5) + "\n"
    monkeypatch.setattr(log, "MAX_LINE_BYTES", len(good))
    with (run / EVENTS_FILE).open("a", encoding="utf-8") as f:
        f.write(good + "x" * (len(good) + 1))
    # The events before the long line come first: they were dropped with it (the dashboard
    # showed an empty run, where a malformed line had a snapshot of what preceded it; a review).
    assert [item.event.epoch for item in tail.events(read_bytes)] == [902]  # type: ignore[union-attr]
    with pytest.raises(EventLogError, match=f"{EVENTS_FILE}:{len(lines) + 3}: a line longer"):
        tail.events(read_bytes)


HUGE_LOG_BYTES = 8_000_000
"""The synthetic log streamed by the memory test (about 500 PPO rounds): more than the bound, so
a stream that held the log's bytes — or its decoded events, several times more — would fail it.
Larger logs only make the test slower (tracemalloc: 16 MB took 17 s)."""
STREAM_PEAK_BYTES = 6_000_000
"""What one client may hold while its stream folds that log and sends its snapshots. Measured:
about 4.3 MB — the fold (a few numbers per round and per finished episode, the last 4 episodes
per environment in detail), one snapshot being built (both grow with the rounds: 8.3 MB in all
for a 16 MB log of 1000 rounds) and one bounded read of decoded events."""


def long_ppo_log(source: Path, run: Path) -> tuple[int, int]:
    """``run``'s log: ``source``'s PPO run with its rounds repeated, renumbered, until the log is
    ``HUGE_LOG_BYTES`` long (a long training run). Returns (events, rounds)."""
    lines = [json.loads(line) for line in (source / EVENTS_FILE).read_text().splitlines()]
    start, body = lines[0], [r for r in lines[1:] if r["event"] != "PPORunFinished"]
    rounds = max(r["round"] for r in body if "round" in r)
    count, repeat = 1, 0
    with (run / EVENTS_FILE).open("w", encoding="utf-8") as f:
        f.write(json.dumps(start) + "\n")
        while f.tell() < HUGE_LOG_BYTES:
            shift = repeat * rounds
            for record in body:
                moved = {**record}
                for key in ("episode", "round"):
                    if key in moved:
                        moved[key] += shift
                f.write(json.dumps(moved) + "\n")
            count += len(body)
            repeat += 1
    return count, repeat * rounds


def test_a_huge_log_is_streamed_in_bounded_memory(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    runs = tmp_path / "runs"
    run = copy_run(recorded_runs["ppo"], runs / "huge", lines=0)
    count, rounds = long_ppo_log(recorded_runs["ppo"], run)

    async def stream_all() -> dict[str, Any]:
        body = stream_snapshots(
            run / EVENTS_FILE,
            "huge",
            root=runs,
            skip=0,
            poll_seconds=POLL,
            stopping=lambda: False,
        )
        async for text in body:
            if f"id: {count}\n" in text:
                break
        await body.aclose()  # type: ignore[attr-defined]
        data: dict[str, Any] = json.loads(text.rsplit("data: ", 1)[1])
        return data

    tracemalloc.start()
    try:
        data = asyncio.run(stream_all())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data["events"]["count"] == count
    assert {"label": "events", "value": f"{count:,}"} in data["header"]  # as runs compare writes
    assert {"label": "rounds", "value": f"{rounds:,}"} in data["header"]
    assert data["rounds"]["round"] == list(range(1, rounds + 1))
    assert [len(env["episodes"]) for env in data["envs"]] == [4, 4]  # the fold keeps its last 4
    assert peak < STREAM_PEAK_BYTES, f"one stream held {peak / 1e6:.1f} MB"


# ------------------------------------------------------------------ damaged records (a sweep's)


def rewrite_line(run: Path, index: int, change: dict[str, Any]) -> None:
    """Line ``index`` of the run's log with the keys in ``change`` replaced (raw JSON text)."""
    lines = (run / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[index])
    marker = {key: f"@@{key}@@" for key in change}
    text = json.dumps({**record, **marker})
    for key, raw in change.items():
        text = text.replace(json.dumps(marker[key]), raw)
    lines[index] = text
    (run / EVENTS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("key", "raw", "reason"),
    [
        ("seed", '"abc"', "seed is 'abc', not int"),
        ("seed", "[1]", "seed is [1], not int"),
        ("seed", "null", "seed is null, not int"),
        ("seed", "1e400", "not int"),
        ("mode", '{"a": 1}', 'mode is {"a": 1}, not str'),
        ("t", "null", "t is null, not a time"),
    ],
)
def test_a_first_line_of_the_wrong_types_is_one_unreadable_run(
    tmp_path: Path, recorded_runs: dict[str, Path], key: str, raw: str, reason: str
) -> None:
    """``RunStarted``'s fields went through ``int()`` and ``str()`` unchecked: a bad seed made
    ``/api/runs`` a 500 for every run, and a dict mode was listed as its text."""
    copy_run(recorded_runs["static"], tmp_path / "good")
    rewrite_line(copy_run(recorded_runs["static"], tmp_path / "bad"), 0, {key: raw})
    listed = {run["name"]: run for run in local_client(tmp_path).get("/api/runs").json()["runs"]}
    assert listed["good"]["status"] == "completed"
    assert listed["bad"]["status"] == "unreadable" and reason in listed["bad"]["error"]
    assert f"{EVENTS_FILE}:1" in listed["bad"]["error"]


@pytest.mark.parametrize(
    ("key", "raw", "reason"),
    [
        ("train_loss", "1" + "0" * 400, "beyond a float's range"),
        ("t", "1" + "0" * 400, "t is 1000"),
        ("t", "null", "t is null, not a time"),
    ],
)
def test_a_number_no_float_holds_is_a_422_and_a_stream_error(
    tmp_path: Path, recorded_runs: dict[str, Path], key: str, raw: str, reason: str
) -> None:
    """An integer of 400 digits in a float field raised OverflowError (a 500, and a stream cut
    without a message); a null ``t`` reached the snapshot as NaN (a 500)."""
    run = copy_run(recorded_runs["heuristic"], tmp_path / "run")
    lines = (run / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if EpochCompleted.__name__ in line)
    rewrite_line(run, index, {key: raw})
    client = local_client(tmp_path, poll_seconds=POLL, snapshot_seconds=SNAPSHOT)
    response = client.get("/api/runs/run/snapshot")
    assert response.status_code == 422
    line = one_error_line(response.text)
    assert f"{EVENTS_FILE}:{index + 1}" in line and reason in line
    with client.stream("GET", "/api/runs/run/events") as stream:
        messages = [m for m in sse_messages(stream) if "event" in m]
    assert messages[-1]["event"] == "stream-error"
    assert reason in json.loads(messages[-1]["data"])["message"]


def test_a_malformed_log_is_a_422_every_time(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """The fold kept the events before a malformed line and answered 200 with them on every
    other request."""
    run = copy_run(recorded_runs["static"], tmp_path / "run", lines=3)
    append(run, "{not an event")
    client = local_client(tmp_path)
    assert [client.get("/api/runs/run/snapshot").status_code for _ in range(4)] == [422] * 4


def test_a_huge_first_line_is_not_read_whole(
    tmp_path: Path, recorded_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The run list read a log's first line whole: a 1 GB log of one line held the server for
    seconds per request and gigabytes of memory."""
    run = copy_run(recorded_runs["static"], tmp_path / "big")
    with (run / EVENTS_FILE).open("wb") as f:
        f.truncate(64 * log.MAX_LINE_BYTES)  # sparse: 256 MiB of zeros, no newline
    tracemalloc.start()
    try:
        (entry,) = dashboard.list_runs(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert entry.status == "unreadable"
    assert f"a line longer than {log.MAX_LINE_BYTES} bytes is not an event" in (entry.error or "")
    assert peak < 4 * log.MAX_LINE_BYTES
    assert main(["runs", "list", str(tmp_path)]) == 0
    assert "longer than" in capsys.readouterr().err  # the list goes on without it


def test_a_run_named_with_a_line_break_is_served(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """Starlette's ``path`` convertor stops at a line break: such a run was listed, then 404.
    It is named as ``runs list`` names it, the line break escaped."""
    copy_run(recorded_runs["static"], tmp_path / "new\nline")
    client = local_client(tmp_path)
    assert [run["name"] for run in client.get("/api/runs").json()["runs"]] == ["new\\nline"]
    response = client.get("/api/runs/new%5Cnline/snapshot")
    assert response.status_code == 200
    assert response.json() == folded(tmp_path / "new\nline", "new\\nline")


def test_names_that_are_no_utf8_are_listed_and_served(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """A run, a study or the runs directory named with bytes that are no UTF-8 made
    ``/api/runs``, ``/api/studies`` or ``/api/meta`` a 500 (JSON cannot carry the surrogates
    Python keeps them as), and the page showed nothing. They are named as ``runs list`` names
    them, and served under that name."""
    root = Path(os.fsdecode(bytes(tmp_path) + b"/dir\xfe"))
    copy_run(recorded_runs["static"], root / os.fsdecode(b"bad\xff"))
    write_study(root / os.fsdecode(b"st\xfd"), recorded_runs)
    client = local_client(root, study_table=lambda d: StudyFindings(()))
    assert client.get("/api/meta").json()["runs_dir"] == f"{tmp_path}/dir\\xfe"
    names = {run["name"] for run in client.get("/api/runs").json()["runs"]}
    assert "bad\\xff" in names and "st\\xfd/synthetic.static.seed0" in names and len(names) == 5
    assert client.get("/api/studies").json() == {"studies": ["st\\xfd"]}
    assert client.get("/api/studies/st%5Cxfd").json()["error"] is None
    response = client.get("/api/runs/bad%5Cxff/snapshot")
    assert response.status_code == 200
    assert response.json() == folded(root / os.fsdecode(b"bad\xff"), "bad\\xff")
    # A study served by itself is named too.
    study = local_client(root / os.fsdecode(b"st\xfd"), study_table=lambda d: StudyFindings(()))
    assert study.get("/api/studies").json() == {"studies": ["st\\xfd"]}


def test_a_404_does_not_echo_a_long_name(tmp_path: Path) -> None:
    client = local_client(tmp_path)
    for path in ("/api/runs/" + "x" * 20_000 + "/snapshot", "/api/studies/" + "y" * 20_000):
        response = client.get(path)
        assert response.status_code == 404 and len(response.text) < 400


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_study_whose_mean_overflows_is_served_with_nulls(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """Seconds of 1.7e308 per trial pass TrialRow's checks; their mean is inf, which
    JSONResponse refused (a 500)."""
    study = write_study(tmp_path / "st", recorded_runs)
    with (study / TRIALS_FILE).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with (study / TRIALS_FILE).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "seconds": "1.7e308"} for row in rows)
    response = local_client(tmp_path, study_table=study_table).get("/api/studies/st")
    assert response.status_code == 200
    data = response.json()
    assert data["error"] is None and data["rows"]
    assert all(row["seconds"] is None for row in data["rows"])


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_trials_file_that_is_not_a_file_is_named_so(
    tmp_path: Path, recorded_runs: dict[str, Path], kind: str
) -> None:
    """A pipe or a directory named trials.csv was reported as a study that had not finished."""
    study = write_study(tmp_path / "st", recorded_runs)
    (study / TRIALS_FILE).unlink()
    if kind == "fifo":
        os.mkfifo(study / TRIALS_FILE)
    else:
        (study / TRIALS_FILE).mkdir()
    error = local_client(tmp_path, study_table=study_table).get("/api/studies/st").json()["error"]
    what = "a named pipe" if kind == "fifo" else "a directory"
    assert f"cannot read {study / TRIALS_FILE}: it is {what}, not a regular file" == error


def test_a_log_removed_after_it_was_read_ends_its_stream(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """A stream of a deleted run went on polling in silence; a log that was never there is
    still a run that has not started."""
    run = copy_run(recorded_runs["static"], tmp_path / "run")
    tail = EventTail(run / EVENTS_FILE)
    assert tail.events() and tail.caught_up
    (run / EVENTS_FILE).unlink()
    for _ in range(2):
        with pytest.raises(EventLogError, match="the event log was removed"):
            tail.events()
    assert EventTail(tmp_path / "none" / EVENTS_FILE).events() == []


def test_an_unreadable_directory_hides_nothing_and_an_unreadable_runs_dir_is_one_line(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    """A directory without permissions beside the runs made the dashboard's start a traceback
    and every API route a 500 (``Path.is_file`` raises PermissionError); the runs directory
    itself, or one below an unreadable one, was a traceback too."""
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "ok")
    (runs / "locked").mkdir(mode=0)
    (runs / "st").mkdir()
    (runs / "st" / STUDY_FILE).write_text("{}")
    (runs / "st" / TRIALS_DIR).mkdir(mode=0)  # a study whose trials cannot be read
    (tmp_path / "shut").mkdir(mode=0)
    esper = [*unprivileged(), sys.executable, "-m", "esper"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    try:
        for bad, why in ((tmp_path / "shut", "cannot be read"), (tmp_path / "shut" / "x", "")):
            done = subprocess.run(
                [*esper, "dashboard", str(bad), "--port", port], capture_output=True, text=True
            )
            assert done.returncode == EXIT_BAD_INPUT, done.stderr
            line = one_error_line(done.stderr)
            assert str(bad) in line and why in line and "Permission denied" in line
        server = subprocess.Popen(
            [*esper, "dashboard", str(runs), "--port", port], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            banner = server.stdout.readline()
            assert "(3 runs, 1 study in " in banner, banner
            url = re.search(r"http://\S+/", banner)
            assert url is not None
            with httpx.Client(timeout=READ_TIMEOUT) as client:
                listed = client.get(f"{url[0]}api/runs").json()["runs"]
                assert [(run["name"], run["status"]) for run in listed] == [
                    ("locked", "unreadable"),  # it may hold a run: named, not passed over
                    ("ok", "completed"),
                    (f"st/{TRIALS_DIR}", "unreadable"),  # one entry for the study's trials
                ]
                assert "cannot be read (Permission denied)" in listed[0]["error"]
                assert "cannot be read (Permission denied)" in listed[2]["error"]
                assert client.get(f"{url[0]}api/runs/ok/snapshot").status_code == 200
                assert client.get(f"{url[0]}api/studies").json() == {"studies": ["st"]}
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=10)
    finally:
        for path in (runs / "locked", runs / "st" / TRIALS_DIR, tmp_path / "shut"):
            path.chmod(0o755)
