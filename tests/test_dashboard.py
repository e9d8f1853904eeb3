"""The web dashboard's server: run list, event streams, path safety, static files, CLI errors.

Event streams are read from the real uvicorn server (on a free 127.0.0.1 port, stopped by each
test) with an HTTP client whose read timeout turns a stalled stream into a failure, not a hang.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from conftest import growth_summary, ppo_summary, write_run
from esper.cli.main import EXIT_BAD_INPUT, main
from esper.karn import dashboard
from esper.karn.colours import STAGE_COLOURS
from esper.karn.dashboard import (
    STATIC_DIR,
    DashboardServer,
    create_app,
    open_listener,
)
from esper.leyline.events import EVENT_TYPES, EpochCompleted
from esper.leyline.stages import SeedStage
from esper.nissa.log import EVENTS_FILE, open_run

POLL = 0.05  # a fast poll keeps these tests short
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
    return DashboardServer(runs_dir, open_listener("127.0.0.1", 0), poll_seconds=POLL)


def test_run_list_matches_the_run_directories(recorded_runs: dict[str, Path]) -> None:
    root = recorded_runs["heuristic"].parent
    listed = TestClient(create_app(root)).get("/api/runs").json()["runs"]
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
            }
        )
    assert listed == expected
    assert {run["mode"] for run in listed} == {"heuristic", "static", "ppo"}
    assert {run["status"] for run in listed} == {"completed"}


def test_runs_that_appear_later_are_listed_and_unreadable_ones_do_not_hide_others(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    client = TestClient(create_app(tmp_path))
    assert client.get("/api/runs").json()["runs"] == []
    copy_run(recorded_runs["static"], tmp_path / "b")
    copy_run(recorded_runs["heuristic"], tmp_path / "a", lines=5)  # still running
    starting = copy_run(recorded_runs["heuristic"], tmp_path / "c", lines=0)  # no RunStarted yet
    (tmp_path / "not-a-run").mkdir()
    listed = client.get("/api/runs").json()["runs"]
    assert [run["name"] for run in listed] == ["a", "b", "c"]
    assert [run["status"] for run in listed] == ["unfinished", "completed", "unreadable"]
    assert listed[2]["mode"] is None and str(starting) in listed[2]["error"]


def test_one_run_directory_can_be_served_by_itself(recorded_runs: dict[str, Path]) -> None:
    run = recorded_runs["static"]
    listed = TestClient(create_app(run)).get("/api/runs").json()["runs"]
    assert [(r["name"], r["mode"]) for r in listed] == [(run.name, "static")]


def test_stream_sends_every_record_then_the_ones_appended_later(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "CHUNK_RECORDS", 7)  # the backlog goes out in many pieces
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
        first = take(messages, existing)
        assert {m["event"] for m in first} == {"record"}
        assert [int(m["id"]) for m in first] == list(range(1, existing + 1))
        records = [json.loads(m["data"]) for m in first]
        on_disk = [json.loads(line) for line in (run / EVENTS_FILE).read_text().splitlines()]
        assert records == on_disk
        append(run, epoch_line(template, 901, 87.654), epoch_line(template, 902, 12.5))
        later = [json.loads(m["data"]) for m in take(messages, 2)]
        assert [(r["epoch"], r["val_accuracy"]) for r in later] == [(901, 87.654), (902, 12.5)]


def test_a_reconnecting_browser_gets_only_what_it_missed(runs_dir: Path) -> None:
    run = runs_dir / "live"
    existing = line_count(run)
    server = serve(runs_dir)
    with server.in_background() as url, httpx.Client(timeout=READ_TIMEOUT) as client:
        headers = {"Last-Event-ID": str(existing - 2)}
        with client.stream("GET", f"{url}api/runs/live/events", headers=headers) as response:
            got = take(sse_messages(response), 2)
    assert [int(m["id"]) for m in got] == [existing - 1, existing]


def test_a_malformed_line_ends_that_stream_with_an_error_and_the_server_goes_on(
    runs_dir: Path,
) -> None:
    run = runs_dir / "live"
    existing = line_count(run)
    server = serve(runs_dir)
    with server.in_background() as url, httpx.Client(timeout=READ_TIMEOUT) as client:
        with client.stream("GET", f"{url}api/runs/live/events") as response:
            messages = sse_messages(response)
            take(messages, existing)
            append(run, "{this is not json")
            (error,) = take(messages, 1)
            assert error["event"] == "stream-error"
            assert (
                f"{EVENTS_FILE}:{existing + 1}: malformed event line"
                in json.loads(error["data"])["message"]
            )
            assert list(messages) == []  # the stream ended
        assert client.get(f"{url}api/runs").status_code == 200
        with client.stream("GET", f"{url}api/runs/ppo/events") as response:
            (record,) = take(sse_messages(response), 1)
            assert json.loads(record["data"])["mode"] == "ppo"


def test_streams_end_on_client_disconnect_and_on_server_shutdown(runs_dir: Path) -> None:
    server = serve(runs_dir)
    running = server.server.server_state.tasks  # one task per request being answered
    with server.in_background() as url:
        with (
            httpx.Client(timeout=READ_TIMEOUT) as client,
            client.stream("GET", f"{url}api/runs/live/events") as response,
        ):
            take(sse_messages(response), 1)
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
    assert all(m["event"] == "record" for m in rest if "event" in m)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/%2E%2E/events",
        "/api/runs/..%2Fsecret/events",
        "/api/runs/%2E%2E%2Fsecret/events",
        "/api/runs/group%2Finner/events",
        "/api/runs/group/events",  # a child directory that is not a run
        "/api/runs/nosuchrun/events",
    ],
)
def test_only_runs_directly_in_the_runs_directory_are_served(
    tmp_path: Path, recorded_runs: dict[str, Path], path: str
) -> None:
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "ok")
    copy_run(recorded_runs["static"], tmp_path / "secret")  # a run beside the runs directory
    copy_run(recorded_runs["static"], runs / "group" / "inner")  # a run two levels down
    client = TestClient(create_app(runs))
    with client.stream("GET", path) as response:
        assert response.status_code == 404
    with client.stream("GET", "/api/runs/ok/events") as response:
        assert response.status_code == 200


def test_page_and_static_files_are_served_locally_with_their_types(tmp_path: Path) -> None:
    client = TestClient(create_app(tmp_path))
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(linked) == ["static/dashboard.css", "static/dashboard.js"]
    types = {"dashboard.css": "text/css", "dashboard.js": ("text/javascript", "application/js")}
    for name, expected in types.items():
        response = client.get(f"/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(expected)
        assert response.text == (STATIC_DIR / name).read_text(encoding="utf-8")
    files = sorted(STATIC_DIR.iterdir())
    assert [f.name for f in files] == ["dashboard.css", "dashboard.js", "index.html"]
    for text in [page.text, *(f.read_text(encoding="utf-8") for f in files)]:
        for remote in ("http://", "https://", "//cdn", "@import", "url("):
            assert remote not in text.lower()
    assert client.get("/static/../dashboard.py").status_code == 404


def test_page_reads_only_event_names_and_stages_that_exist(tmp_path: Path) -> None:
    script = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    block = re.search(r"const EV = \{(.*?)\};", script, re.S)
    assert block is not None
    names = re.findall(r'"(\w+)"', block.group(1))
    assert len(names) >= 5 and all(name in EVENT_TYPES for name in names)
    meta = TestClient(create_app(tmp_path)).get("/api/meta").json()
    assert meta["stages"] == [stage.value for stage in SeedStage]
    assert meta["stage_colours"] == {s.value: STAGE_COLOURS[s] for s in SeedStage}
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
