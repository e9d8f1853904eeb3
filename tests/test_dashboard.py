"""The web dashboard's server: run list, event streams, path safety, static files, CLI errors,
and its defences: Host/Origin checks, links out of the runs directory, Last-Event-ID, memory.

Event streams are read from the real uvicorn server (on a free 127.0.0.1 port, stopped by each
test) with an HTTP client whose read timeout turns a stalled stream into a failure, not a hang.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
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
    BoundedTail,
    DashboardServer,
    accepted_hosts,
    create_app,
    open_listener,
    parse_last_event_id,
    stream_events,
)
from esper.leyline.events import EVENT_TYPES, EpochCompleted
from esper.leyline.stages import SeedStage
from esper.nissa.log import EVENTS_FILE, EventLogError, open_run

POLL = 0.05  # a fast poll keeps these tests short
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


def local_client(runs_dir: Path) -> TestClient:
    """A test client addressing the app as a browser on this machine would (Host 127.0.0.1:P)."""
    app = create_app(runs_dir, hosts=accepted_hosts(*LOCAL))
    return TestClient(app, base_url=f"http://{LOCAL[0]}:{LOCAL[1]}")


def test_run_list_matches_the_run_directories(recorded_runs: dict[str, Path]) -> None:
    root = recorded_runs["heuristic"].parent
    listed = local_client(root).get("/api/runs").json()["runs"]
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


def test_one_run_directory_can_be_served_by_itself(recorded_runs: dict[str, Path]) -> None:
    run = recorded_runs["static"]
    listed = local_client(run).get("/api/runs").json()["runs"]
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
    client = local_client(runs)
    with client.stream("GET", path) as response:
        assert response.status_code == 404
    with client.stream("GET", "/api/runs/ok/events") as response:
        assert response.status_code == 200


def test_page_and_static_files_are_served_locally_with_their_types(tmp_path: Path) -> None:
    client = local_client(tmp_path)
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
    # The page's own files; third-party libraries sit unchanged in vendor/ (see its VENDORED.md).
    files = sorted(f for f in STATIC_DIR.iterdir() if f.is_file())
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
    meta = local_client(tmp_path).get("/api/meta").json()
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
EVERY_PATH = ["/", "/api/meta", "/api/runs", "/api/runs/live/events", "/static/dashboard.js", "/x"]


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
    for path in ("/", "/api/meta", "/api/runs", "/static/dashboard.js"):
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


def test_last_event_id_is_a_record_number() -> None:
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
    with client.stream("GET", "/api/runs/linked/events") as stream:
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
    tail = BoundedTail(run / EVENTS_FILE, runs)
    assert len(tail.poll()) == line_count(run)
    (run / EVENTS_FILE).unlink()
    (run / EVENTS_FILE).symlink_to(outside / "passwd")
    with pytest.raises(EventLogError, match="links outside the runs directory") as raised:
        tail.poll()
    assert MARK not in str(raised.value)


# ------------------------------------------------------------------ bounded reading


def test_the_tail_reads_whole_lines_a_bounded_amount_at_a_time(
    tmp_path: Path, recorded_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    run = copy_run(recorded_runs["heuristic"], runs / "r")
    lines = (run / EVENTS_FILE).read_bytes().splitlines(keepends=True)
    read_bytes = 2000
    tail = BoundedTail(run / EVENTS_FILE, runs, read_bytes)
    records: list[dict[str, Any]] = []
    while not tail.caught_up:
        before = tail.offset
        records += tail.poll()
        assert tail.offset - before <= read_bytes + max(map(len, lines))  # whole lines only
    assert records == [json.loads(line) for line in lines]
    assert len(lines) * 650 // read_bytes < 100  # many polls were needed

    template = first_epoch(run)
    with (run / EVENTS_FILE).open("a", encoding="utf-8") as f:
        f.write(epoch_line(template, 901, 1.5))  # a line still being written
    assert tail.poll() == [] and tail.caught_up
    append(run, "")  # its newline
    assert [r["epoch"] for r in tail.poll()] == [901]

    monkeypatch.setattr(dashboard, "MAX_LINE_BYTES", 100)
    with (run / EVENTS_FILE).open("a", encoding="utf-8") as f:
        f.write("x" * 101)
    with pytest.raises(EventLogError, match=f"{EVENTS_FILE}:{len(lines) + 2}: a line longer"):
        tail.poll()


HUGE_LOG_BYTES = 16_000_000
"""The synthetic log streamed by the memory test: twice the bound, so a stream that held the
log's bytes would fail it (the reader before bounded reads held about 8 bytes of parsed records
per byte of log). Larger logs only make the test slower: tracemalloc costs about 0.5 s/MB here."""
STREAM_PEAK_BYTES = 8_000_000
"""What one client may hold while its stream sends the whole log (measured: about 4.5 MB)."""


def test_a_huge_log_is_streamed_in_bounded_memory(
    tmp_path: Path, recorded_runs: dict[str, Path]
) -> None:
    runs = tmp_path / "runs"
    run = copy_run(recorded_runs["heuristic"], runs / "huge", lines=1)  # its RunStarted
    template = first_epoch(recorded_runs["heuristic"])
    count = 1
    with (run / EVENTS_FILE).open("a", encoding="utf-8") as f:
        while f.tell() < HUGE_LOG_BYTES:
            f.writelines(epoch_line(template, count + i, 50.0) + "\n" for i in range(1000))
            count += 1000

    async def stream_all() -> tuple[int, str]:
        sent, last = 0, ""
        body = stream_events(
            run / EVENTS_FILE, root=runs, skip=0, poll_seconds=POLL, stopping=lambda: False
        )
        async for text in body:
            sent += text.count("event: record\n")
            last = text[-800:]
            if sent == count:
                break
        await body.aclose()  # type: ignore[attr-defined]
        return sent, last

    tracemalloc.start()
    try:
        sent, last = asyncio.run(stream_all())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sent == count
    assert f"id: {count}\nevent: record\n" in last
    assert json.loads(last.rsplit("data: ", 1)[1])["epoch"] == count - 1
    assert peak < STREAM_PEAK_BYTES, f"one stream held {peak / 1e6:.1f} MB"
