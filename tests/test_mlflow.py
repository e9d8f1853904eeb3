"""MLflow tracking (``--telemetry.mlflow URI``, ``esper.nissa.tracking``).

The end-to-end tests run tiny ``esper heuristic`` runs against a real MLflow tracking server that
the ``server`` fixture starts on a free port of 127.0.0.1 (SQLite backend, artifacts proxied by
the server into a temporary directory) and stops afterwards; what the runs logged is read back
from the server with ``MlflowClient``. The sink's mapping of every record (growth and PPO) is
checked against a SQLite store, which needs no server. Tests that need mlflow skip without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esper.cli.main import main
from esper.leyline.config import TelemetrySettings
from esper.nissa import record, tracking
from esper.nissa.csvlog import read_rows
from esper.nissa.record import RUN_REPORT
from esper.nissa.stopping import Stop
from esper.nissa.tracking import RUN_ID_FILE, MLflowSink, TrackingError
from esper.study.growth import EpochRow

TINY = ["--task", "digits", "--batches-per-epoch", "4", "--val-samples", "128"]
SERVER_START_S = 90.0
"""How long the server may take to answer (about 7 s on 2 busy cores; generous for CI)."""


@pytest.fixture
def mlflow() -> Any:
    return pytest.importorskip("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on 127.0.0.1: its URI. Stopped (its process group) after
    the module's tests; its log is shown if it does not come up."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", (root / "artifacts").as_uri(),
    ]  # fmt: skip
    # The server's job runner (a pool of Huey consumers) serves GenAI jobs no test needs.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                            start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (root / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"the MLflow server did not come up (exit {proc.poll()}):\n{text}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _epochs(run: Path) -> list[dict[str, Any]]:
    lines = (run / record.EVENTS_FILE).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "EpochCompleted"]


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ----------------------------------------------------------------------------- a real server


def test_a_heuristic_run_is_tracked_on_a_server(mlflow, server: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["heuristic", *TINY, "--epochs", "3", "--seed", "3", "--telemetry.mlflow", server]
    assert main([*args, "--out", str(run)]) == 0
    client = mlflow.MlflowClient(server)
    run_id = (run / RUN_ID_FILE).read_text().strip()
    tracked = client.get_run(run_id)
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert tracked.data.tags["esper.mode"] == "heuristic"
    params = tracked.data.params
    assert params["seed"] == "3" and params["training.task"] == "digits"
    assert params["training.epochs"] == "3" and params["telemetry.mlflow"] == server
    assert params["training.slots"] == '["early", "mid", "late"]'
    assert params["policy"] == "null"  # unset, as in config.json: not 0
    config = json.loads((run / record.CONFIG_FILE).read_text())
    assert config["training"]["batches_per_epoch"] == 4
    # Every epoch's validation accuracy, as the event log and metrics.csv hold it.
    epochs = _epochs(run)
    assert _history(client, run_id, "accuracy/val") == [
        (e["epoch"], pytest.approx(e["val_accuracy"])) for e in epochs
    ]
    csv = read_rows(run / "metrics.csv", EpochRow)
    assert [v for _, v in _history(client, run_id, "accuracy/val")] == pytest.approx(
        [r.val_accuracy for r in csv]
    )
    assert _history(client, run_id, "params") == [(e["epoch"], e["param_count"]) for e in epochs]
    assert len(_history(client, run_id, "slot/mid/alpha")) == 3
    summary = json.loads((run / record.SUMMARY_FILE).read_text())
    final = tracked.data.metrics
    assert final["run/final_val_accuracy"] == pytest.approx(  # the final model's
        summary["growth"]["final_model_val_accuracy"]
    )
    # The artifacts went through the server; what comes back is the run's own summary.
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.json", "summary.json"}
    fetched = client.download_artifacts(run_id, "summary.json", str(tmp_path))
    assert json.loads(Path(fetched).read_text()) == summary


def test_an_interrupted_run_resumes_in_the_same_mlflow_run(
    mlflow, server: str, tmp_path: Path, monkeypatch
) -> None:
    from esper.tolaria.episode import Episode

    def stop(self: Any, *args: Any, **kwargs: Any) -> None:
        raise Stop

    run = tmp_path / "run"
    original = Episode.step
    monkeypatch.setattr(Episode, "step", stop)  # Ctrl-C after the first epoch
    args = ["heuristic", *TINY, "--epochs", "3", "--telemetry.mlflow", server, "--out", str(run)]
    assert main(args) == 130
    client = mlflow.MlflowClient(server)
    run_id = (run / RUN_ID_FILE).read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"
    assert _history(client, run_id, "accuracy/val")[0][0] == 1
    monkeypatch.setattr(Episode, "step", original)
    assert main(["heuristic", "--resume", str(run)]) == 0
    assert (run / RUN_ID_FILE).read_text().strip() == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    epochs = _epochs(run)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert _history(client, run_id, "accuracy/val") == [
        (e["epoch"], pytest.approx(e["val_accuracy"])) for e in epochs
    ]
    experiment = client.get_experiment_by_name("esper")
    named = client.search_runs(
        [experiment.experiment_id], f"tags.`esper.directory` = '{run.absolute()}'"
    )
    assert [r.info.run_id for r in named] == [run_id]


def test_a_report_in_the_run_directory_is_logged(mlflow, server: str, tmp_path: Path) -> None:
    """``esper report`` on a run stopped at its last epoch; its resumed end logs the report."""
    run = tmp_path / "run"
    args = ["heuristic", *TINY, "--epochs", "2", "--telemetry.mlflow", server, "--out", str(run)]
    assert main(args) == 0
    assert main(["report", str(run)]) == 0
    assert (run / RUN_REPORT).is_file()
    (run / record.SUMMARY_FILE).unlink()  # as if stopped after its last checkpoint
    assert main(["heuristic", "--resume", str(run)]) == 0
    client = mlflow.MlflowClient(server)
    run_id = (run / RUN_ID_FILE).read_text().strip()
    assert client.get_run(run_id).info.status == "FINISHED"
    paths = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/accuracy.png"} <= paths


def _finished(status: str) -> dict[str, Any]:
    return {
        "status": status, "epochs": 2, "final_val_accuracy": 50.0, "best_val_accuracy": None,
        "param_count": 10, "fossilized": 0, "pruned": 0, "seconds": 1.0,
    }  # fmt: skip


# ----------------------------------------------------------------------------- no server


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store shared by the module's tests (each new database migrates for seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def _run_directory(tmp_path: Path, source: Path) -> Path:
    """A directory holding ``source``'s config.json (the sink writes into its run directory;
    the recorded runs are shared and must not change)."""
    run = tmp_path / source.name
    run.mkdir(parents=True)
    (run / record.CONFIG_FILE).write_bytes((source / record.CONFIG_FILE).read_bytes())
    return run


def test_the_sink_logs_every_measured_scalar(mlflow, store, tmp_path: Path, recorded_runs) -> None:
    client = mlflow.MlflowClient(store)
    for mode in ("heuristic", "ppo"):
        run = _run_directory(tmp_path, recorded_runs[mode])
        sink = MLflowSink(store, run, mode)
        lines = (recorded_runs[mode] / record.EVENTS_FILE).read_text().splitlines()
        records = [json.loads(line) for line in lines]
        for r in records:
            sink.write(r)
        sink.close()
        tracked = client.get_run(sink.run_id)
        assert tracked.info.status == "FINISHED"
        if mode == "heuristic":
            epochs = [r for r in records if r["event"] == "EpochCompleted"]
            measured = [
                (r["epoch"], s["contribution"])
                for r in epochs
                for s in r["slots"]
                if s["slot"] == "mid" and s["contribution"] is not None
            ]
            assert measured and len(measured) < len(epochs)  # some epochs measured none
            history = _history(client, sink.run_id, "slot/mid/contribution")
            assert history == [(e, pytest.approx(v)) for e, v in measured]  # missing is not 0
            assert tracked.data.params["training.task"] == "synthetic"
        else:
            updates = [r for r in records if r["event"] == "PPOUpdate"]
            for name in ("entropy", "mean_return", "env_steps", "seconds_update"):
                assert _history(client, sink.run_id, f"ppo/{name}") == [
                    (u["round"], pytest.approx(u[name])) for u in updates
                ]
            episodes = [r for r in records if r["event"] == "EpisodeFinished" and r["env"] == 1]
            assert _history(client, sink.run_id, "episode/return/env1") == [
                (e["episode"], pytest.approx(e["episode_return"])) for e in episodes
            ]
            config = json.loads((run / record.CONFIG_FILE).read_text())
            assert tracked.data.params["runtime.seed"] == str(config["runtime"]["seed"])
            assert tracked.data.params["env.task"] == config["env"]["task"]


def test_a_run_into_a_sqlite_store(mlflow, store: str, tmp_path: Path) -> None:
    """No server: the database and, beside it, the artifacts (not ./mlruns wherever esper ran)."""
    run = tmp_path / "run"
    args = ["heuristic", *TINY, "--epochs", "2", "--telemetry.mlflow", store]
    assert main([*args, "--out", str(run)]) == 0
    client = mlflow.MlflowClient(store)
    tracked = client.get_run((run / RUN_ID_FILE).read_text().strip())
    assert tracked.info.status == "FINISHED"
    database = Path(store.removeprefix("sqlite:///"))
    assert tracked.info.artifact_uri.startswith((database.parent / "mlartifacts").as_uri())
    assert {a.path for a in client.list_artifacts(tracked.info.run_id)} == {
        "config.json",
        "summary.json",
    }
    assert not Path("mlruns").exists() and not Path("mlartifacts").exists()


def test_a_ppo_run_raised_to_more_rounds_goes_on_in_its_mlflow_run(mlflow, store, tmp_path):
    """``--ppo.rounds`` changes config.json's ppo.rounds, a parameter MLflow refuses to change:
    the resume failed, and every later one too. Now a resumed run logs only missing ones."""
    run = tmp_path / "ppo"
    args = ["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--telemetry.mlflow", store]
    assert main([*args, "--out", str(run)]) == 0
    assert main(["ppo", "--resume", str(run), "--ppo.rounds", "2"]) == 0
    client = mlflow.MlflowClient(store)
    tracked = client.get_run((run / RUN_ID_FILE).read_text().strip())
    assert tracked.info.status == "FINISHED" and tracked.data.params["ppo.rounds"] == "1"
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "ppo/mean_return")] \
        == [1, 2]  # fmt: skip


def test_statuses_of_an_end_and_of_a_crash(mlflow, store, tmp_path, recorded_runs) -> None:
    client = mlflow.MlflowClient(store)
    expected = {"completed": "FINISHED", "terminated": "FINISHED", "interrupted": "KILLED"}
    expected |= {"failed": "FAILED", None: "FAILED"}  # None: closed without an end (a crash)
    for i, (status, mlflow_status) in enumerate(expected.items()):
        run = _run_directory(tmp_path / str(i), recorded_runs["heuristic"])
        sink = MLflowSink(store, run, "heuristic")
        if status is not None:
            sink.write({"event": "RunFinished", "t": time.time(), **_finished(status)})
        sink.close()
        tracked = client.get_run(sink.run_id)
        assert tracked.info.status == mlflow_status, status
        assert "run/best_val_accuracy" not in tracked.data.metrics  # None: not logged


def test_a_store_that_fails_mid_run_is_reported_once(
    mlflow, store, tmp_path, recorded_runs, caplog, monkeypatch
):
    run = _run_directory(tmp_path, recorded_runs["heuristic"])
    sink = MLflowSink(store, run, "heuristic")
    calls = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise mlflow.exceptions.MlflowException("the store went away")

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", refuse)
    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", refuse)
    lines = (recorded_runs["heuristic"] / record.EVENTS_FILE).read_text().splitlines()
    epochs = [r for r in map(json.loads, lines) if r["event"] == "EpochCompleted"]
    for epoch in epochs[:3]:
        sink.write(epoch)
    sink.close()  # no exception: the run directory is the record
    assert len(calls) == 1  # then nothing more is sent, not even the end
    warnings = [r for r in caplog.records if "the run goes on without it" in r.getMessage()]
    assert len(warnings) == 1 and "the store went away" in warnings[0].getMessage()


def test_an_unreachable_server_fails_at_the_start(mlflow, tmp_path, monkeypatch, capsys) -> None:
    """At once, in one line naming the address (MLflow's client alone retried a refused
    connection for about four minutes), with nothing written."""
    for proxy in ("http_proxy", "https_proxy", "all_proxy"):  # a proxy leaves it to MLflow
        monkeypatch.delenv(proxy, raising=False)
        monkeypatch.delenv(proxy.upper(), raising=False)
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"  # nothing listens there
    run = tmp_path / "run"
    args = ["heuristic", *TINY, "--epochs", "1", "--telemetry.mlflow", uri, "--out", str(run)]
    started = time.monotonic()
    assert main(args) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"cannot track the run in MLflow at {uri}: nothing answers at 127.0.0.1:{port}"
    assert len(err) == 1 and expected in err[0]
    # Before anything is written: a run directory made first could never be resumed, since
    # --resume takes no other flag and its saved URI still answers nothing.
    assert not run.exists()


@pytest.fixture
def no_proxy(monkeypatch) -> None:
    """No proxy in the environment: a proxied server is left to MLflow's client."""
    for proxy in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
        monkeypatch.delenv(proxy.upper(), raising=False)


@pytest.fixture
def stalling_server() -> Iterator[str]:
    """A web server on 127.0.0.1 that answers ``/health`` and nothing else: every other
    request waits (until the test ends), as a stopped or wedged MLflow server does."""
    import http.server
    import threading

    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/health":
                release.wait()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


LOGIN = " (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)"


@pytest.mark.parametrize(
    ("status", "said", "hint"),
    [
        (404, "is not an MLflow tracking server", ""),
        (401, "wants a login", LOGIN),  # an MLflow server with authentication is one
        (403, "refused the login given (or none was given)", LOGIN),
    ],
)
def test_a_web_server_that_is_not_mlflow_fails_at_the_start(
    mlflow, tmp_path, capsys, no_proxy, status, said, hint
) -> None:
    """Another web server at the address (or one wanting a login) answered the start-up
    check's ``/health``, then refused the sink's first API call after the run directory was
    written: a half-made run whose ``--resume`` failed the same way (a walk-through)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else status)
            self.end_headers()
            self.wfile.write(b"<!DOCTYPE HTML>\n<html>not MLflow</html>\n")

        def log_message(self, *args: Any) -> None:
            pass

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # the start-up check's probe hangs up before the answer: not this test's

    web = Quiet(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    port = web.server_address[1]
    uri, run = f"http://127.0.0.1:{port}", tmp_path / "run"
    try:
        args = ["heuristic", *TINY, "--epochs", "1", "--telemetry.mlflow", uri, "--out", str(run)]
        assert main(args) == 2
    finally:
        web.shutdown()
        web.server_close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"esper: error: cannot track the run in MLflow at {uri}: the server at 127.0.0.1:{port} "
        f"{said}: HTTP {status} for /api/2.0/mlflow/experiments/get-by-name{hint}"
    ]
    assert not run.exists()


def test_a_server_that_accepts_but_never_answers_fails_at_the_start(
    mlflow, tmp_path, capsys, monkeypatch, no_proxy
) -> None:
    """Its port accepts connections (the kernel completes them), but no answer comes: the start
    waited for MLflow's client, 120 s a request, eight times (a walk-through: SIGSTOP on the
    server). The start-up check asks it for ``/health`` and gives up in one line, before
    anything is written."""
    monkeypatch.setattr("esper.nissa.tracking.CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as listener:  # listening, never accepting
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        uri = f"http://127.0.0.1:{port}"
        run = tmp_path / "run"
        args = ["heuristic", *TINY, "--epochs", "1", "--telemetry.mlflow", uri, "--out", str(run)]
        started = time.monotonic()
        assert main(args) == 2
        assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    expected = (
        f"cannot track the run in MLflow at {uri}: the server at 127.0.0.1:{port} does not "
        "answer: it accepts connections but sent no answer within 1 s"
    )
    assert err == [f"esper: error: {expected}"]
    assert not run.exists()


def test_a_server_that_stalls_is_given_up_within_a_minute(
    mlflow, stalling_server, tmp_path, recorded_runs, monkeypatch, no_proxy
) -> None:
    """MLflow's client retried a request to a server that stopped answering seven times after
    waiting 120 s for each (about 20 minutes of a stalled run, and of a Ctrl-C held while the
    epoch is committed). The sink gives its requests ``HTTP_LIMITS`` (two retries) unless the
    environment sets them: here the timeout is the environment's (1 s, kept), the retries the
    sink's (MLflow's seven, with its backoff, took minutes)."""
    for name in tracking.HTTP_LIMITS:  # unset here, and unset again after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    run = _run_directory(tmp_path, recorded_runs["heuristic"])
    started = time.monotonic()
    with pytest.raises(TrackingError, match="Read timed out"):
        MLflowSink(stalling_server, run, "heuristic")
    assert time.monotonic() - started < 30
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"


@pytest.mark.parametrize(
    ("scheme", "why"),
    [
        ("postgresql", "nothing answers at 127.0.0.1:{port} (Connection refused)"),
        ("mysql", "its database driver is not installed (No module named 'MySQLdb')"),
    ],
)
def test_a_database_store_is_checked_before_anything_is_written(
    mlflow, tmp_path, capsys, scheme, why
) -> None:
    """postgresql:// and mysql:// are accepted store URIs, but only http(s) and SQLite were
    checked first: a traceback (an SQLAlchemy connection error, a missing driver module) and
    a half-made run directory that could not be resumed (a walk-through)."""
    port = _free_port()
    uri = f"{scheme}://esper@127.0.0.1:{port}/db"
    run = tmp_path / "run"
    args = ["heuristic", *TINY, "--epochs", "1", "--telemetry.mlflow", uri, "--out", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err
    expected = f"cannot track the run in MLflow at {uri}: {why.format(port=port)}"
    assert err.count("\n") == 1 and expected in err, err
    assert not run.exists()


def test_a_tensorboard_folder_that_cannot_be_written_is_one_line_and_keeps_the_run(
    tmp_path, capsys, monkeypatch
) -> None:
    """A file in the tensorboard folder's place: a traceback, exit 1, and the resume had
    already deleted the run's interrupted summary (it did so before making its sinks)."""
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    from esper.nissa.stopping import Stop
    from esper.tolaria.episode import Episode

    run = tmp_path / "run"
    args = ["static", *TINY, "--epochs", "3", "--telemetry.tensorboard", "--out", str(run)]

    def interrupted(*args: object, **kwargs: object) -> None:
        raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(Episode, "step", interrupted)
        assert main(args) == 130
    shutil.rmtree(run / "tensorboard")
    (run / "tensorboard").write_text("in the way")
    summary = (run / "summary.json").read_text()
    capsys.readouterr()
    assert main(["static", "--resume", str(run)]) == 2
    err = capsys.readouterr().err  # the resumed configuration, then the error
    errors = [line for line in err.splitlines() if line.startswith("esper: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"cannot write TensorBoard's events into {str(run / 'tensorboard')!r}" in errors[0]
    assert (run / "summary.json").read_text() == summary  # still the interrupted run's
    (run / "tensorboard").unlink()
    assert main(["static", "--resume", str(run)]) == 0


@pytest.mark.parametrize("port", ["99999", "abc"])
def test_a_url_with_a_bad_port_is_one_line(mlflow, tmp_path, capsys, port) -> None:
    uri = f"http://127.0.0.1:{port}"
    args = ["heuristic", *TINY, "--epochs", "1", "--telemetry.mlflow", uri]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = f"cannot track the run in MLflow at {uri}: the URL's port is not a port number"
    assert err.count("\n") == 1 and expected in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("kind", "message"),
    [("garbage", "is not an SQLite database"), ("directory", "is a directory"),
     ("no directory", "cannot make the database's directory '{tmp}/file/sub': Not a directory"),
     ("pipe", "it is a named pipe, not a regular file"),
     # MLflow added its tables to it (a knowledge store's URL looks the same)
     ("other", "is an SQLite database of something else (tables seed_outcomes), not an MLflow")],
)  # fmt: skip
def test_a_sqlite_store_that_cannot_be_one_is_one_line(mlflow, tmp_path, capsys, kind, message):
    """Found by an adversarial sweep: a file that is no database gave two SQLAlchemy
    tracebacks, a missing directory a FileNotFoundError, a directory minutes of MLflow's
    retries; each left a half-made run at --out."""
    database = tmp_path / ("file/sub/x.db" if kind == "no directory" else "store.db")
    (tmp_path / "file").write_text("a file where a directory would be made\n")
    if kind == "garbage":
        database.write_text("not a database\n")
    elif kind == "directory":
        database.mkdir()
    elif kind == "pipe":
        os.mkfifo(database)
    elif kind == "other":
        with contextlib.closing(sqlite3.connect(database)) as db:
            db.execute("CREATE TABLE seed_outcomes (x)")
            db.commit()
    uri = f"sqlite:///{database}"
    args = ["heuristic", *TINY, "--epochs", "1", "--telemetry.mlflow", uri]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    expected = f"cannot track the run in MLflow at {uri}: "
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert message.replace("{tmp}", str(tmp_path)) in err, err
    assert not (tmp_path / "run").exists()
    if kind == "other":  # left as it was
        with contextlib.closing(sqlite3.connect(database)) as db:
            tables = db.execute("SELECT name FROM sqlite_master").fetchall()
        assert tables == [("seed_outcomes",)]


def test_a_sqlite_store_in_a_new_directory_or_a_quoted_path_is_taken(mlflow, tmp_path) -> None:
    """MLflow makes a missing directory itself, and SQLAlchemy reads %20 as a space: the
    start-up check refused both."""
    (tmp_path / "my dir").mkdir()
    for database, uri in [
        (tmp_path / "new" / "sub" / "m.db", f"sqlite:///{tmp_path}/new/sub/m.db"),
        (tmp_path / "my dir" / "m.db", f"sqlite:///{tmp_path}/my%20dir/m.db"),
    ]:
        run = tmp_path / f"run-{database.parent.name}"
        args = ["static", *TINY, "--epochs", "1", "--telemetry.mlflow", uri, "--out", str(run)]
        assert main(args) == 0
        assert database.is_file() and (run / RUN_ID_FILE).is_file()


def test_a_foreign_run_id_starts_a_new_mlflow_run(mlflow, store, tmp_path, recorded_runs, caplog):
    run = _run_directory(tmp_path, recorded_runs["heuristic"])
    (run / RUN_ID_FILE).write_text("0" * 32 + "\n")  # a run of another store
    sink = MLflowSink(store, run, "heuristic")
    sink.close()
    assert sink.run_id != "0" * 32
    assert (run / RUN_ID_FILE).read_text().strip() == sink.run_id
    assert any("tracking goes on in a new MLflow run" in r.getMessage() for r in caplog.records)


def test_a_deleted_mlflow_run_starts_a_new_one(mlflow, store, tmp_path, recorded_runs, caplog):
    """A run deleted in MLflow refused to run again, and the resume's advice, "continue the
    run with --resume", failed the same way for ever (a walk-through)."""
    run = _run_directory(tmp_path, recorded_runs["heuristic"])
    first = MLflowSink(store, run, "heuristic")
    first.close()
    mlflow.MlflowClient(tracking_uri=store).delete_run(first.run_id)
    again = MLflowSink(store, run, "heuristic")
    again.close()
    assert again.run_id != first.run_id
    assert (run / RUN_ID_FILE).read_text().strip() == again.run_id
    assert any("(or was deleted there)" in r.getMessage() for r in caplog.records)


def test_a_damaged_run_id_file_is_an_error(mlflow, store, tmp_path, recorded_runs) -> None:
    run = _run_directory(tmp_path, recorded_runs["heuristic"])
    (run / RUN_ID_FILE).write_text("not a run id\n")
    with pytest.raises(TrackingError, match="cannot track the run in MLflow"):
        MLflowSink(store, run, "heuristic")


# ----------------------------------------------------------------------------- no mlflow needed


def test_missing_mlflow_fails_before_anything_is_written(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails
    for args in (
        ["heuristic", "--task", "synthetic", "--epochs", "1"],
        ["ppo", "--preset", "tiny", "--ppo.rounds", "1"],
    ):
        out = tmp_path / args[0]
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        assert main([*args, "--telemetry.mlflow", uri, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "pip install 'esper[mlflow]'" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


@pytest.mark.parametrize(
    "uri", ["file:///tmp/mlruns", "127.0.0.1:5000", "http://", "sqlite://", "sqlite:///"]
)
def test_a_bad_tracking_uri_is_one_line(tmp_path, capsys, uri: str) -> None:
    out = tmp_path / "run"
    args = ["heuristic", "--task", "synthetic", "--epochs", "1", "--telemetry.mlflow", uri]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and repr(uri) in err[0]
    assert "http://HOST:PORT" in err[0] and "sqlite:///PATH" in err[0]
    assert not out.exists()


def test_tracking_uris_accepted() -> None:
    accepted = ["http://127.0.0.1:5000", "https://mlflow.example", "sqlite:////tmp/m.db"]
    accepted += ["sqlite:///m.db", "postgresql+psycopg://u@db/mlflow", "mysql://db/mlflow"]
    for uri in accepted:
        assert TelemetrySettings(mlflow=uri).mlflow == uri


@pytest.mark.parametrize("uri", ["http://[::1", "https://[zz]:80"])
def test_a_url_with_a_malformed_host_is_one_line(tmp_path, capsys, uri) -> None:
    """A bracketed host that is no IPv6 address: urllib's ValueError was a traceback."""
    out = tmp_path / "run"
    args = ["heuristic", "--task", "synthetic", "--epochs", "1", "--telemetry.mlflow", uri]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be an MLflow tracking URI" in err[0] and uri in err[0], err
    assert not out.exists()


def test_a_tracking_uri_with_a_nul_character_is_one_line(tmp_path, capsys) -> None:
    """From a config file (argv cannot hold one): MLflow retried it with warnings every 25 s."""
    config = tmp_path / "c.json"
    uri = "sqlite:///" + str(tmp_path / "a\0b.db")
    config.write_text(json.dumps({"telemetry": {"mlflow": uri}}))
    out = tmp_path / "run"
    args = ["heuristic", "--task", "synthetic", "--epochs", "1", "--config", str(config)]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be an MLflow tracking URI" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]
