"""Experiment tracking in MLflow (an optional extra: ``pip install 'esper[mlflow]'``).

``MLflowSink`` mirrors one run directory into one MLflow run of the experiment ``esper``, named
after the run: the resolved configuration (``config.json``, flattened by ``flat_config``) as
parameters, the ``scalars`` of every record (the tags TensorBoard gets) as metrics against the
epoch or round, and at the end ``config.json``, ``summary.json`` and the report (when
``esper report`` has written one) as artifacts, with the run's end as the MLflow status. A
value that was not measured is not logged: never 0.

The MLflow run's id is kept in the run directory (``mlflow_run_id``), so a resumed run goes on
in the same MLflow run. The run directory stays the record: an MLflow server that stops
answering mid-run is reported once and left behind, and training goes on. MLflow's client waits
120 s for each answer and retries seven times (minutes of a stalled run, and a server that
accepts connections but never answers held the start for about 20 minutes), so the
sink gives its requests ``HTTP_LIMITS`` unless the environment sets those variables itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sqlite3
import urllib.parse
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from esper.leyline.config import first_line
from esper.leyline.files import atomic_write, open_regular, read_regular
from esper.leyline.net import hidden_password, not_http, unreachable
from esper.nissa import record
from esper.nissa.sinks import Scalar, flat_config, scalars

logger = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
"""The MLflow run a run directory is tracked in (its id and a newline)."""

EXPERIMENT = "esper"
"""The MLflow experiment every run goes to; ``esper.mode`` and the parameters tell them apart."""


STATUS = {
    "completed": "FINISHED",
    "terminated": "FINISHED",  # the governor ended training early: the run ended normally
    "interrupted": "KILLED",
    "failed": "FAILED",
}
"""The MLflow status of each run status; a run that ends without a summary (a crash) FAILED."""

_FINISHED = ("RunFinished", "PPORunFinished")
_FLUSH = ("EpochCompleted", "PPOUpdate")  # one request per epoch or round, not per number
_MAX_METRICS = 1000  # MLflow's limits on one log_batch request
_MAX_PARAMS = 100


HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",  # seconds without an answer (MLflow's default: 120)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # (7)
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # seconds before the first retry, doubling (2)
}
"""MLflow's environment variables for its HTTP requests, as the sink sets them where unset: a
server that does not answer costs the run under a minute, once, not minutes per request."""


class TrackingSetupError(RuntimeError):
    """MLflow tracking was asked for but the ``mlflow`` package is not installed."""


class TrackingError(RuntimeError):
    """The MLflow tracking store refused or did not answer when the run started."""


def check_mlflow(uri: str | None = None) -> None:
    """Fail early, before a run writes anything, when MLflow tracking cannot work: the package
    is missing, or (given ``uri``) nothing answers at an ``http(s)`` server's port, or a SQLite
    store's database cannot be one (``_check_database``).

    Raises:
        TrackingSetupError: naming the missing package and how to install it.
        TrackingError: the server cannot be reached (one line naming the URI and the reason).
    """
    try:
        import mlflow  # noqa: F401
    except ImportError as err:
        raise TrackingSetupError(
            "--telemetry.mlflow needs the mlflow package: pip install 'esper[mlflow]'"
        ) from err
    if uri is not None:
        try:
            _connect(uri, api=True)
        except OSError as err:
            raise TrackingError(
                f"cannot track the run in MLflow at {hidden_password(uri)}: {err}"
            ) from err


def _sqlite_database(uri: str) -> Path | None:
    """The database file of a SQLite store's URI, read as SQLAlchemy reads it (``%20`` is a
    space); None for other stores and an in-memory one."""
    if not uri.lower().startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url  # mlflow's own dependency
    from sqlalchemy.exc import ArgumentError

    try:
        name = make_url(uri).database
    except (ArgumentError, ValueError) as err:
        raise OSError(f"not a SQLite URL ({err})") from None
    return Path(name) if name and name != ":memory:" else None


def _sqlite_artifacts(uri: str) -> str | None:
    """Where a SQLite store's artifacts go: ``mlartifacts`` beside the database (MLflow's
    default is ``./mlruns`` in whatever directory the run was started from). None for others."""
    database = _sqlite_database(uri)
    return None if database is None else (database.absolute().parent / "mlartifacts").as_uri()


CONNECT_TIMEOUT_S = 10.0
"""How long the start-up check waits for an MLflow server's port to accept a connection, and
for an ``http(s)`` server's answer."""


def _connect(uri: str, api: bool = False) -> None:
    """Fail fast when an ``http(s)`` tracking server cannot be reached, or reached does not
    answer: MLflow's own client retries a refused connection for about four minutes before it
    gives up, and waits out a silent server (``HTTP_LIMITS``) for about a minute. Reached through a
    proxy (``HTTP(S)_PROXY``), the server is left to MLflow's client. A SQLite store's database
    is checked by ``_check_database``. With ``api`` (the start-up check; the sink's own first
    request follows it) the server must also answer MLflow's API (``_check_server``).

    Raises:
        OSError: the server's port does not accept a TCP connection within
            ``CONNECT_TIMEOUT_S``, or an ``http(s)`` server sends no HTTP answer within it (in
            words naming host and port), or the URL's port is not a port number, or with
            ``api`` the server refuses MLflow's API.
    """
    _check_database(uri)  # nothing for a store that is not SQLite
    parts = urllib.parse.urlsplit(uri)
    host, backend = parts.hostname, parts.scheme.partition("+")[0]
    if backend in _DATABASE_PORTS and host:
        _check_driver(uri)
        default = _DATABASE_PORTS[backend]
    elif parts.scheme in ("http", "https") and host:
        proxies = urllib.request.getproxies()
        if (parts.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(host):
            return
        default = 443 if parts.scheme == "https" else 80
    else:
        return
    try:
        port = parts.port or default
    except ValueError as err:  # a port that is not a number in [0, 65535]
        raise OSError(f"the URL's port is not a port number ({err})") from err
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = unreachable(host, port, CONNECT_TIMEOUT_S)
    if reason is not None:
        raise OSError(f"nothing answers at {address} ({reason})")
    if backend not in _DATABASE_PORTS:
        reason = not_http(host, port, CONNECT_TIMEOUT_S, tls=parts.scheme == "https")
        if reason is not None:
            raise OSError(f"the server at {address} does not answer: {reason}")
        if api:
            _check_server(uri, address)


_API_REFUSAL = re.compile(r"endpoint (\S+) failed with error code (\d+)")


def _check_server(uri: str, address: str) -> None:
    """The server answers MLflow's API (a lookup of the experiment): another web server at the
    address, or one that wants a login, failed only when the sink opened its run, after the
    run directory was written, and so again on every ``--resume``.

    Raises:
        OSError: naming the address and the refusal (the HTTP status and endpoint).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    _limit_http()
    try:
        MlflowClient(tracking_uri=uri).get_experiment_by_name(EXPERIMENT)
    except MlflowException as err:
        found = _API_REFUSAL.search(str(err))
        if found is None:
            raise OSError(first_line(err)) from None
        endpoint, status = found.groups()
        what = _REFUSALS.get(status, "is not an MLflow tracking server")
        login = _LOGIN if status in _REFUSALS else ""
        said = f"the server at {address} {what}: HTTP {status} for {endpoint}{login}"
        raise OSError(said) from None


_REFUSALS = {"401": "wants a login", "403": "refused the login given (or none was given)"}
"""How a server that refuses MLflow's API for want of a login says it (an MLflow server with
authentication is one)."""
_LOGIN = " (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)"


def _limit_http() -> None:
    """``HTTP_LIMITS``, where the environment does not set them (MLflow's client reads them
    at each request)."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306}
"""The database servers a tracking URI may name (``TRACKING_SCHEMES``), with their ports."""


def _check_driver(uri: str) -> None:
    """The database driver SQLAlchemy would load for ``uri`` is installed (a missing one was
    a ``ModuleNotFoundError`` traceback once the run directory was written).

    Raises:
        OSError: naming the missing driver.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise OSError(f"SQLAlchemy cannot read the URL ({first_line(err)})") from None
    except ImportError as err:
        raise OSError(f"its database driver is not installed ({err})") from None


_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_database(uri: str) -> None:
    """A SQLite store's database must be one, or creatable: MLflow otherwise fails with an
    engine traceback (a file that is no database, a directory it cannot make) or retries for
    minutes (a directory). A missing directory is made, as MLflow would.

    Raises:
        OSError: naming the database file and what is wrong with it.
    """
    database = _sqlite_database(uri)
    if database is None:
        return
    name = str(database)
    if database.is_dir():
        raise OSError(f"the database {name!r} is a directory")
    if not database.exists():
        try:
            database.absolute().parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            where = str(database.parent)
            raise OSError(
                f"cannot make the database's directory {where!r}: {err.strerror}"
            ) from None
        return
    try:
        with open_regular(database) as f:  # a pipe or device is refused, not read
            header = f.read(len(_SQLITE_HEADER))
    except OSError as err:
        raise OSError(f"the database {name!r}: {err.strerror}") from None
    if header and header != _SQLITE_HEADER:
        raise OSError(f"{name!r} is not an SQLite database")
    if header:
        _check_tables(database)


def _check_tables(database: Path) -> None:
    """An SQLite database holding tables is an MLflow store (it has MLflow's ``experiments``):
    MLflow otherwise added its 60-odd tables to it (e.g. to the knowledge store, whose URL
    looks the same).

    Raises:
        OSError: naming the database and some of its tables.
    """
    address = f"{database.absolute().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(address, uri=True)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.OperationalError as err:
        if "locked" in str(err):  # another run writes to it now: a store in use is MLflow's
            return
        raise OSError(f"the database {str(database)!r} cannot be read ({err})") from None
    except sqlite3.Error as err:
        raise OSError(f"the database {str(database)!r} cannot be read ({err})") from None
    tables = sorted(str(name) for (name,) in rows)
    if tables and "experiments" not in tables:
        shown = ", ".join(tables[:3]) + (", ..." if len(tables) > 3 else "")
        raise OSError(
            f"{str(database)!r} is an SQLite database of something else (tables {shown}), "
            "not an MLflow store"
        )


class MLflowSink:
    """One run directory tracked in an MLflow run (see the module docstring).

    Args:
        uri: the tracking URI (``TelemetrySettings.mlflow``).
        directory: the run directory; its ``config.json`` gives the parameters.
        mode: the command that made the run (the ``esper.mode`` tag).

    Raises:
        TrackingSetupError: the ``mlflow`` package is missing.
        TrackingError: the store refused or did not answer (after MLflow's own retries).
    """

    def __init__(self, uri: str, directory: Path, mode: str) -> None:
        check_mlflow()
        from mlflow import MlflowClient  # only when enabled (STYLE 15)
        from mlflow.exceptions import MlflowException

        self.uri, self.directory = uri, directory
        self._client = MlflowClient(tracking_uri=uri)
        from sqlalchemy.exc import SQLAlchemyError  # a database store's, raised through

        self._errors: tuple[type[Exception], ...] = (MlflowException, OSError, SQLAlchemyError)
        self._pending: list[tuple[Scalar, int]] = []  # with its record's wall-clock time, ms
        self._status: str | None = None  # the run's own, from its finished record
        self._broken = False  # the store failed mid-run: nothing more is sent
        _limit_http()
        try:
            _connect(uri)
            self.run_id = self._open(mode)
            self._log_params(flat_config(record.read_config(directory)))
        except self._errors as err:
            first = first_line(err)
            shown = hidden_password(uri)
            raise TrackingError(f"cannot track the run in MLflow at {shown}: {first}") from err

    def _open(self, mode: str) -> str:
        """The MLflow run of a resumed run, running again; else a new one, its id recorded."""
        from mlflow.exceptions import MlflowException

        path = self.directory / RUN_ID_FILE
        if path.is_file():
            run_id = read_regular(path, limit=1024).decode("utf-8").strip()
            try:  # a deleted one refuses to run again, and --resume was told to try again
                if self._client.get_run(run_id).info.lifecycle_stage != "deleted":
                    self._client.update_run(run_id, status="RUNNING")
                    return run_id
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            logger.warning(
                "the MLflow run %s of %s is not at %s (or was deleted there); tracking goes on "
                "in a new MLflow run",
                run_id,
                self.directory,
                hidden_password(self.uri),
            )
        tags = {"esper.mode": mode, "esper.directory": str(self.directory.absolute())}
        run = self._client.create_run(self._experiment(), run_name=self.directory.name, tags=tags)
        atomic_write(path, run.info.run_id + "\n")
        return str(run.info.run_id)

    def _experiment(self) -> str:
        """The id of the experiment ``EXPERIMENT``, created if need be."""
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self._client.create_experiment(EXPERIMENT, _sqlite_artifacts(self.uri)))
        except MlflowException as err:  # another run created it meanwhile
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = self._client.get_experiment_by_name(EXPERIMENT)
            assert found is not None
            return str(found.experiment_id)

    def _log_params(self, config: dict[str, Any]) -> None:
        """The configuration as parameters: strings as they are, anything else as JSON
        (``true``, ``null``: a setting left unset, not 0). A resumed run logs only those its
        MLflow run lacks: MLflow refuses to change a parameter, and ``esper ppo --resume RUN
        --ppo.rounds N`` changes one (the MLflow run keeps the rounds it was created with)."""
        from mlflow.entities import Param

        logged = self._client.get_run(self.run_id).data.params
        params = [
            Param(k, v if isinstance(v, str) else json.dumps(v))
            for k, v in config.items()
            if k not in logged
        ]
        for start in range(0, len(params), _MAX_PARAMS):
            self._client.log_batch(self.run_id, params=params[start : start + _MAX_PARAMS])

    def write(self, record: dict[str, Any]) -> None:
        """Queue the record's ``scalars``; send them after each epoch or round."""
        t = int(record["t"] * 1000)
        self._pending += [(s, t) for s in scalars(record)]
        if record["event"] in _FINISHED:
            self._status = STATUS[record["status"]]
        if record["event"] in _FLUSH or len(self._pending) >= _MAX_METRICS:
            self._flush()

    def _flush(self) -> None:
        from mlflow.entities import Metric

        pending, self._pending = self._pending, []
        for start in range(0, len(pending), _MAX_METRICS):
            chunk = pending[start : start + _MAX_METRICS]
            metrics = [Metric(s.tag, s.value, t, s.step) for s, t in chunk]
            self._safely(partial(self._client.log_batch, self.run_id, metrics))

    def _safely(self, call: Callable[[], object]) -> None:
        """Make ``call`` unless the store already failed; on failure warn once and stop."""
        if self._broken:
            return
        try:
            call()
        except self._errors as err:
            self._broken = True
            first = first_line(err)
            logger.warning(
                "MLflow at %s failed (%s); the run goes on without it (its record is %s)",
                hidden_password(self.uri),
                first,
                self.directory,
            )

    def abandon(self) -> None:
        """End the MLflow run as interrupted (KILLED): the run did not start, since a sink
        after this one failed; its resume opens the MLflow run again."""
        self._status = STATUS["interrupted"]
        self.close()

    def close(self) -> None:
        """Send what is queued, the artifacts and the run's end (FAILED without a finished
        record: the run crashed)."""
        self._flush()
        self._safely(self._end)

    def _end(self) -> None:
        for name in (record.CONFIG_FILE, record.SUMMARY_FILE):
            if (self.directory / name).is_file():
                self._client.log_artifact(self.run_id, str(self.directory / name))
        report = self.directory / record.RUN_REPORT
        if report.is_file():  # the page and its plots
            self._client.log_artifacts(self.run_id, str(report.parent), record.REPORT_DIR)
        # MLflow prints the run's URL on stdout; library code does not print (STYLE 14).
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            self._client.set_terminated(self.run_id, self._status or "FAILED")
        for line in printed.getvalue().splitlines():
            logger.info("%s", line)
