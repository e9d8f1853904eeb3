"""The knowledge store (``esper.nissa.knowledge``, DESIGN §11) on SQLite and on a real PostgreSQL
server started here, and the ``esper knowledge`` command.

Oracles are independent of the store: the outcomes the test wrote (dataclass equality), the
database read through its own driver (``sqlite3``, ``psycopg``), scores worked out by hand.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import itertools
import json
import multiprocessing
import os
import pwd
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, redirect_stdout
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from conftest import unprivileged
from esper.cli.knowledge import add_knowledge_parser, run_knowledge
from esper.cli.main import EXIT_BAD_INPUT, main
from esper.leyline.config import UserError, decode
from esper.leyline.knowledge import HostSignature, SeedOutcome
from esper.leyline.trials import KNOWLEDGE_FILE
from esper.nissa.knowledge import (
    CONNECT_TIMEOUT_S,
    KNOWLEDGE_ENV,
    OUTCOME_COLUMNS,
    SCHEMA_VERSION,
    KnowledgeConflict,
    KnowledgeStore,
    KnowledgeStoreError,
    KnowledgeStoreMissing,
    KnowledgeURLError,
    default_url,
    outcomes_for,
    parse_url,
    record_outcomes,
    recorded_url,
    sqlite_url,
)
from esper.nissa.record import OUTCOMES_FILE

HOST = HostSignature(task="fashion_mnist", topology="cnn", width=16, params=12_345)
TEXT_HOST = HostSignature(task="text_lm", topology="transformer", width=64, params=160_768)


def _outcome(run: str = "r1", slot: str = "mid", epoch: int = 0, **changes: Any) -> SeedOutcome:
    base = SeedOutcome(
        run_id=run,
        host=HOST,
        slot=slot,
        blueprint="conv_light",
        stage="FOSSILIZED",
        contribution=1.5,
        seed_params=2_000,
        accuracy_change=-0.25,
        germinated_epoch=epoch,
        epochs=4,
    )
    return replace(base, **changes)


def test_an_outcome_holds_the_types_its_store_reads_back() -> None:
    """slot 5 was stored and read back as '5'; a contribution of True counted as 1."""
    for change, message in [
        ({"slot": 5}, "slot must be a str, got 5"),
        ({"run_id": None}, "run_id must be a str, got None"),
        ({"host": "cnn"}, "host must be a HostSignature"),
        (
            {"contribution": True},
            "contribution must be a number in [-100, 100] (accuracy points) or null, got True",
        ),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            _outcome(**change)


class Warnings(list[str]):
    """A ``warn`` callable that keeps what it was told."""

    def __call__(self, line: str) -> None:
        self.append(line)


# --- independent access to the databases -------------------------------------------------------


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _raw(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` through the database's own driver, committed; its rows (none for DDL)."""
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            cursor = conn.execute(sql)
            rows = cursor.fetchall()
            conn.commit()
            return rows
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg, pg.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall() if cursor.description is not None else []


# --- a real PostgreSQL server ------------------------------------------------------------------

_SERVER_USER = "nobody"
"""initdb and postgres refuse to run as root; CI (and this machine) run the tests as root."""


def _postgres_bin() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's versioned ones."""
    on_path = [shutil.which("initdb"), shutil.which("pg_ctl")]
    if all(on_path):
        return Path(str(on_path[0])).resolve().parent
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: int(re.sub(r"\D", "", Path(d).parent.name) or 0),
        reverse=True,
    )
    return next((Path(d) for d in debian if os.access(f"{d}/initdb", os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_command(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool, as ``nobody`` when we are root (they refuse root)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", _SERVER_USER, "--", *argv]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def pg_port() -> Iterator[int]:
    """A PostgreSQL server of our own on 127.0.0.1 (user ``esper``, trust auth), for the module."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL not installed: no initdb/pg_ctl on PATH or in /usr/lib/postgresql")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as a plain user")
    root = Path(tempfile.mkdtemp(prefix="esper-pg-", dir="/tmp"))  # short: holds the socket
    data, log, port = root / "data", root / "server.log", _free_port()
    if os.geteuid() == 0:
        user = pwd.getpwnam(_SERVER_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    pg_ctl = str(bin_dir / "pg_ctl")
    try:
        # -N, fsync=off: a throwaway server need not survive a power cut.
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "esper", "--auth=trust", "-N"]
        done = _server_command(initdb, root)
        assert done.returncode == 0, f"initdb failed: {done.stderr}"
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]
        done = _server_command(start, root)
        assert done.returncode == 0, f"pg_ctl start failed: {done.stderr}\n{log.read_text()}"
        yield port
    finally:
        if (data / "postmaster.pid").exists():
            _server_command([pg_ctl, "-D", str(data), "-m", "immediate", "stop"], root)
        shutil.rmtree(root, ignore_errors=True)


_databases = itertools.count()


@pytest.fixture
def pg_url(pg_port: int) -> str:
    """A fresh, empty database on the module's server."""
    name = f"knowledge_{next(_databases)}"
    _raw(f"postgresql://esper@127.0.0.1:{pg_port}/postgres", f"CREATE DATABASE {name}")
    return f"postgresql://esper@127.0.0.1:{pg_port}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store of each kind (the PostgreSQL one skips without a server)."""
    if request.param == "sqlite":
        return _sqlite_url(tmp_path / "knowledge.sqlite")
    pg: str = request.getfixturevalue("pg_url")
    return pg


# --- the store ---------------------------------------------------------------------------------


def test_outcomes_round_trip_and_persist(url: str) -> None:
    outcomes = [
        _outcome(epoch=0),
        _outcome(slot="early", epoch=0, stage="PRUNED", contribution=None),
        _outcome(epoch=3, stage="TRAINING", contribution=None, accuracy_change=None),
        _outcome(run="r2", host=replace(HOST, topology="transformer", width=64)),
    ]
    with KnowledgeStore.open(url) as store:
        assert store.record(outcomes) == 4
        assert store.outcomes() == outcomes
    with KnowledgeStore.open(url) as store:  # a new connection: the rows were committed
        assert store.outcomes() == outcomes
    # Missing stays missing in the table itself, not 0.0.
    rows = _raw(url, "SELECT contribution, accuracy_change FROM outcomes ORDER BY id")
    assert rows == [(1.5, -0.25), (None, -0.25), (None, None), (1.5, -0.25)]


def test_outcomes_filter_by_task_topology_and_width(url: str) -> None:
    same = _outcome(run="same")
    other_params = _outcome(run="bigger", host=replace(HOST, params=99_999))
    others = [
        _outcome(run="task", host=replace(HOST, task="cifar10")),
        _outcome(run="topology", host=replace(HOST, topology="transformer")),
        _outcome(run="width", host=replace(HOST, width=32)),
    ]
    with KnowledgeStore.open(url) as store:
        store.record([same, *others, other_params])
        assert store.outcomes(HOST) == [same, other_params]
        assert store.outcomes(replace(HOST, width=32)) == [others[2]]
        assert store.outcomes(replace(HOST, task="unseen")) == []
        assert len(store.outcomes()) == 5


def test_recording_a_seed_twice_adds_it_once(url: str) -> None:
    first = [_outcome(epoch=0), _outcome(epoch=2)]
    with KnowledgeStore.open(url) as store:
        assert store.record(first) == 2
        assert store.record(first) == 0  # the same run imported again
        # A seed is (run, slot, epoch): a changed value does not make it a new seed.
        assert store.record([replace(first[0], stage="PRUNED"), _outcome(epoch=5)]) == 1
        assert store.record([_outcome(run="r9"), _outcome(run="r9")]) == 1
        assert [o.germinated_epoch for o in store.outcomes() if o.run_id == "r1"] == [0, 2, 5]
        assert store.outcomes()[0].stage == "FOSSILIZED"
        assert store.record([]) == 0
    assert _raw(url, "SELECT count(*) FROM outcomes") == [(4,)]


def test_an_outcome_differing_from_the_stored_one_can_be_refused(url: str) -> None:
    """An import of an edited export said "0 imported (1 already there)" and kept the
    store's values without a word; refused, it now names the seed and the difference, and
    nothing of it is recorded (one transaction)."""
    stored = _outcome(epoch=2)
    with KnowledgeStore.open(url) as store:
        assert store.record([stored]) == 1
        edited = replace(stored, stage="PRUNED", contribution=None)
        new = _outcome(epoch=7)
        with pytest.raises(KnowledgeConflict) as err:
            store.record([new, edited, replace(stored, epochs=9)], refuse_differing=True)
        assert str(err.value) == (
            f"knowledge store {store.url}: 2 outcome(s) differ from the store's for the same "
            "seed: run r1's seed in slot mid germinated after epoch 2 (and 1 more): stage "
            "'PRUNED' (stored: 'FOSSILIZED'); contribution None (stored: 1.5); nothing "
            "recorded (the store keeps one outcome per seed: reset it, or give another store)"
        )
        assert store.outcomes() == [stored]  # the new outcome beside it was not recorded
        assert store.record([stored, new], refuse_differing=True) == 1  # the same: skipped
        assert store.record([edited]) == 0  # not refused: skipped, as a run's own writer does
        assert store.outcomes() == [stored, new]


def test_reset_deletes_outcomes_and_keeps_the_schema(url: str) -> None:
    with KnowledgeStore.open(url) as store:
        store.record([_outcome(epoch=e) for e in range(3)])
        assert store.reset() == 3
        assert store.outcomes() == []
        assert store.record([_outcome()]) == 1
    assert _raw(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_a_new_database_gets_the_current_schema(url: str) -> None:
    KnowledgeStore.open(url).close()
    assert _raw(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    if url.startswith("sqlite"):
        columns = [r[1] for r in _raw(url, "PRAGMA table_info(outcomes)")]
        assert _raw(url, "PRAGMA journal_mode") == [("wal",)]
    else:
        columns = [
            r[0]
            for r in _raw(
                url,
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'outcomes' ORDER BY ordinal_position",
            )
        ]
    assert columns == ["id", *OUTCOME_COLUMNS, "recorded_at"]
    # One column per field of SeedOutcome, the host's flattened.
    assert len(OUTCOME_COLUMNS) == len(asdict(_outcome())) - 1 + len(asdict(HOST))


def test_migrations_run_from_version_zero(url: str) -> None:
    """A database that stopped at version 0 (the version table only) is brought forward."""
    _raw(url, "CREATE TABLE schema_version (version INTEGER NOT NULL)")
    _raw(url, "INSERT INTO schema_version VALUES (0)")
    with KnowledgeStore.open(url) as store:
        assert store.record([_outcome()]) == 1
    assert _raw(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_outcomes_keep_64_bit_integers_and_a_version_1_store_is_widened(url: str) -> None:
    """PostgreSQL's ``integer`` is 32-bit while an outcome's integers are checked to 2**63 - 1:
    an outcome an SQLite store took failed to import into PostgreSQL with "integer out of
    range" (a walk-through). Version 2 widens them; a version-1 store keeps its rows."""
    from sqlalchemy import create_engine

    from esper.nissa import knowledge

    engine = create_engine(knowledge.parse_url(url))
    with engine.begin() as conn:  # a store as version 1 left it, holding one outcome
        knowledge.VERSION_TABLE.create(conn)
        conn.execute(knowledge.VERSION_TABLE.insert().values(version=1))
        knowledge._v1_outcomes(conn)
    engine.dispose()
    with KnowledgeStore.open(url) as store:  # migrated to version 2 as it opens
        assert store.record([_outcome()]) == 1
    assert _raw(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)] == [(2,)]
    huge = _outcome(
        run="big",
        host=replace(HOST, width=2**40, params=2**62),
        seed_params=2**63 - 1,
        germinated_epoch=2**62,
        epochs=2**62,
    )
    with KnowledgeStore.open(url) as store:
        assert store.record([huge]) == 1
        assert store.outcomes() == [_outcome(), huge]
    if url.startswith("postgresql"):
        types = _raw(
            url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'outcomes' AND data_type LIKE '%int%' ORDER BY column_name",
        )
        assert dict(types) == {"id": "integer", **dict.fromkeys(knowledge.INT64_COLUMNS, "bigint")}


def test_check_refuses_what_open_refuses_and_changes_nothing(url: str) -> None:
    """``check`` (a study's start, its dry run) runs ``open``'s checks and migrations in a
    transaction it rolls back: a store at version 0 stays there, an empty database stays
    empty, a newer schema is refused."""
    KnowledgeStore.check(url)  # nothing there yet: fine, and nothing made
    tables = (
        "SELECT name FROM sqlite_master"
        if url.startswith("sqlite")
        else ("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    )
    assert not url.startswith("sqlite") or not Path(url.removeprefix("sqlite:///")).exists()
    assert url.startswith("sqlite") or _raw(url, tables) == []
    _raw(url, "CREATE TABLE schema_version (version INTEGER NOT NULL)")
    _raw(url, "INSERT INTO schema_version VALUES (0)")
    KnowledgeStore.check(url)
    assert _raw(url, "SELECT version FROM schema_version") == [(0,)]
    assert [r[0] for r in _raw(url, tables)] == ["schema_version"]
    _raw(url, f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(KnowledgeStoreError, match=f"version {SCHEMA_VERSION + 1} is newer"):
        KnowledgeStore.check(url)


def test_check_reads_every_outcome(url: str) -> None:
    """A study's check passed a store with an invalid row (or a damaged page), and each of its
    bandit trials then warned into Ray's worker logs and started without priors."""
    with KnowledgeStore.open(url) as store:
        store.record([_outcome(), _outcome(run="r2")])
    KnowledgeStore.check(url)
    _raw(url, "UPDATE outcomes SET stage = 'BOGUS' WHERE run_id = 'r2'")
    with pytest.raises(KnowledgeStoreError, match=r"row id 2 is not a valid seed outcome"):
        KnowledgeStore.check(url)


def test_check_refuses_a_damaged_sqlite_file(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path / "k.sqlite")
    with KnowledgeStore.open(url) as store:
        store.record([_outcome(run=f"r{i}") for i in range(200)])  # pages beyond the schema's
    with closing(sqlite3.connect(tmp_path / "k.sqlite")) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        query = "SELECT rootpage FROM sqlite_master WHERE name = 'outcomes'"
        (root,) = conn.execute(query).fetchone()
    with (tmp_path / "k.sqlite").open("r+b") as file:  # the table's root page, not the schema
        file.seek((root - 1) * page)
        file.write(b"\xff" * page)
    with pytest.raises(KnowledgeStoreError, match="malformed"):
        KnowledgeStore.check(url)


def test_a_new_runs_store_is_recorded_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative SQLite path followed the working directory of a resume, and a resume without
    $ESPER_KNOWLEDGE wrote to the default store (a walk-through); a password of the variable
    stays out of the run's files."""
    monkeypatch.chdir(tmp_path)
    assert recorded_url("sqlite:///k.sqlite") == f"sqlite:///{tmp_path}/k.sqlite"
    given = "postgresql://esper:pw@host/db"
    assert recorded_url(given) == given  # given so on the command line
    monkeypatch.delenv(KNOWLEDGE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    assert recorded_url(None) == f"sqlite:///{tmp_path}/cache/esper/knowledge.sqlite"
    for env, recorded in (
        ("sqlite:///e.sqlite", f"sqlite:///{tmp_path}/e.sqlite"),
        ("postgresql://esper@host/db", "postgresql://esper@host/db"),
        ("postgresql://esper:pw@host/db", None),
        ("postgresql://esper@host/db?password=pw", None),
        ("not a url", None),  # the run warns where it opens it, as before
    ):
        monkeypatch.setenv(KNOWLEDGE_ENV, env)
        assert recorded_url(None) == recorded, env
    with pytest.raises(KnowledgeURLError, match="malformed"):
        recorded_url("not a url")


def test_readers_read_beside_a_writer_holding_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every transaction began IMMEDIATE, reads too: `esper knowledge show` and a bandit
    run's priors waited out a writer's lock and then failed "database is locked" (a
    walk-through), though WAL lets readers read beside a writer."""
    import esper.nissa.knowledge as knowledge

    monkeypatch.setattr(knowledge, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(knowledge, "LOCKED_RETRY_S", 0.5)
    url = _sqlite_url(tmp_path / "k.sqlite")
    with KnowledgeStore.open(url) as store:
        store.record([_outcome()])
    with closing(sqlite3.connect(tmp_path / "k.sqlite", isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM outcomes")  # not committed: readers see the outcome
        with KnowledgeStore.open(url, create=False) as store:
            assert store.outcomes() == [_outcome()]
        assert outcomes_for(url, HOST, Warnings()) == [_outcome()]
        with pytest.raises(KnowledgeStoreError) as err:  # writers still queue, then give up
            KnowledgeStore.open(url).record([_outcome(run="r2")])
        # it said only "database is locked" (a walk-through)
        assert str(err.value).endswith(
            "database is locked: another process held its write lock for 0.5 s; try again once "
            "it has finished"
        )
        writer.execute("ROLLBACK")


def test_check_refuses_a_store_that_cannot_be_created(tmp_path: Path) -> None:
    """ "Does not exist yet" passed even under a regular file: a study's check let it through,
    and every trial then only warned in a Ray worker's log and recorded nothing."""
    (tmp_path / "afile").write_text("")
    for under in ("afile", "afile/deeper"):
        url = f"sqlite:///{tmp_path / under / 'k.sqlite'}"
        with pytest.raises(KnowledgeStoreError, match=r"cannot be created: .*afile' is a file"):
            KnowledgeStore.check(url)
    KnowledgeStore.check(f"sqlite:///{tmp_path / 'new' / 'folders' / 'k.sqlite'}")  # can be
    assert not (tmp_path / "new").exists()  # and a check makes nothing


def test_a_newer_schema_is_refused_untouched(url: str) -> None:
    KnowledgeStore.open(url).close()
    newer = SCHEMA_VERSION + 1
    _raw(url, f"UPDATE schema_version SET version = {newer}")
    with pytest.raises(KnowledgeStoreError, match=f"schema version {newer} is newer") as err:
        KnowledgeStore.open(url)
    assert url.split("://")[1] in str(err.value) and "\n" not in str(err.value)
    warnings = Warnings()
    assert record_outcomes(url, [_outcome()], warnings) is False
    assert len(warnings) == 1 and f"version {newer}" in warnings[0]
    assert _raw(url, "SELECT count(*) FROM outcomes") == [(0,)]
    assert _raw(url, "SELECT version FROM schema_version") == [(newer,)]


@pytest.mark.parametrize("version", ["'x'", "-1", "0"])
def test_a_damaged_schema_version_is_one_line_and_costs_a_run_a_warning(
    url: str, version: str
) -> None:
    """Found by an adversarial sweep: a text version raised TypeError (a growth run then died
    recording its outcomes), 0 or -1 re-ran the first migration ("table already exists")."""
    if version == "'x'" and not url.startswith("sqlite"):
        pytest.skip("PostgreSQL's INTEGER column holds no text")
    KnowledgeStore.open(url).close()
    _raw(url, f"UPDATE schema_version SET version = {version}")
    damaged = f"damaged schema_version table .version {version},"
    with pytest.raises(KnowledgeStoreError, match=damaged):
        KnowledgeStore.open(url)
    warnings = Warnings()
    assert record_outcomes(url, [_outcome()], warnings) is False
    assert len(warnings) == 1 and "damaged schema_version" in warnings[0]
    assert _raw(url, "SELECT count(*) FROM outcomes") == [(0,)]


def test_a_foreign_database_is_refused_untouched(url: str) -> None:
    _raw(url, "CREATE TABLE users (name TEXT)")
    with pytest.raises(KnowledgeStoreError, match=r"not Esper.s.*users") as err:
        KnowledgeStore.open(url)
    assert url.split("://")[1] in str(err.value)
    warnings = Warnings()
    assert outcomes_for(url, HOST, warnings) == []
    assert len(warnings) == 1 and "users" in warnings[0]
    tables = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if url.startswith("sqlite")
        else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    assert _raw(url, tables) == [("users",)]
    if url.startswith("sqlite"):  # not a byte of it changed (WAL was switched on before the check)
        path = Path(url.split(":///", 1)[1])
        before = path.read_bytes()
        with pytest.raises(KnowledgeStoreError, match="not Esper"):
            KnowledgeStore.open(url)
        assert path.read_bytes() == before and before[18:20] == b"\x01\x01"  # rollback journal


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"this is not an SQLite database, " * 100, "file is not a database"),
        (b"SQLite format 3\x00" + b"\xff" * 4000, "not a database|malformed"),
    ],
)
def test_a_file_that_is_not_sqlite_warns_once(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "knowledge.sqlite"
    path.write_bytes(content)
    warnings = Warnings()
    assert record_outcomes(_sqlite_url(path), [_outcome()], warnings) is False
    assert outcomes_for(_sqlite_url(path), HOST, warnings) == []
    assert len(warnings) == 2
    assert all(str(path) in w and re.search(why, w) and "\n" not in w for w in warnings)
    assert "esper knowledge import" in warnings[0]
    assert path.read_bytes() == content


def test_a_directory_in_the_way_warns_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    warnings = Warnings()
    url = _sqlite_url(tmp_path / "file" / "knowledge.sqlite")  # its parent is a file
    assert record_outcomes(url, [_outcome()], warnings) is False
    assert len(warnings) == 1 and str(tmp_path / "file") in warnings[0]


def test_a_postgresql_lock_held_elsewhere_fails_an_open_in_bounded_time(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every open takes the migration's advisory lock; a client holding it (a suspended worker)
    hung runs and ``knowledge show`` without end, where SQLite gives up after its wait (a
    walk-through). The wait is now PostgreSQL's lock_timeout (1 s here, 30 s by default)."""
    import psycopg

    from esper.nissa import knowledge

    KnowledgeStore.open(pg_url).close()  # the tables exist
    monkeypatch.setattr(knowledge, "PG_LOCK_TIMEOUT_S", 1.0)
    with psycopg.connect(pg_url) as holder:  # a transaction holding the lock until it ends
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [knowledge.MIGRATION_LOCK_KEY])
        start = time.monotonic()
        with pytest.raises(KnowledgeStoreError) as err:
            KnowledgeStore.open(pg_url)
        assert time.monotonic() - start < 10
        assert "lock timeout" in str(err.value)
        holder.rollback()
    KnowledgeStore.open(pg_url).close()  # released: opens again
    # A URL's own options are kept beside the timeout (the connect argument replaces them).
    from sqlalchemy import text

    engine = knowledge._engine(knowledge.parse_url(f"{pg_url}?options=-c%20search_path%3Dx"))
    with engine.connect() as conn:
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "1s"
        assert conn.execute(text("SHOW search_path")).scalar() == "x"
    engine.dispose()


def test_unreachable_postgresql_warns_once_and_quickly() -> None:
    url = f"postgresql://esper@127.0.0.1:{_free_port()}/knowledge"
    warnings = Warnings()
    started = time.monotonic()
    assert record_outcomes(url, [_outcome()], warnings) is False
    assert time.monotonic() - started < CONNECT_TIMEOUT_S
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0] and "\n" not in warnings[0]


def test_passwords_stay_out_of_messages() -> None:
    warnings = Warnings()
    url = f"postgresql://esper:hunter2@127.0.0.1:{_free_port()}/knowledge"
    assert record_outcomes(url, [_outcome()], warnings) is False
    assert "hunter2" not in warnings[0] and "esper:***@127.0.0.1" in warnings[0]
    # libpq takes a password as a query option too; it was shown (a walk-through)
    url = f"postgresql://esper@127.0.0.1:{_free_port()}/knowledge?password=hunter2"
    assert record_outcomes(url, [_outcome()], warnings) is False
    assert "hunter2" not in warnings[1] and "?password=***" in warnings[1]
    with pytest.raises(KnowledgeURLError) as err:
        parse_url("mysql://esper@host/db?password=hunter2")
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("not a url", "malformed"),
        ("", "malformed"),
        ("postgresql://host:port/db", "malformed"),
        ("mysql://x", "unsupported.*'mysql'"),
        ("postgres://host/db", "unsupported"),
        ("postgresql+psycopg2://host/db", "unsupported"),
        ("sqlite://", "names no file"),
        ("sqlite:///:memory:", "names no file"),
        ("sqlite:////tmp/x/a\0b.sqlite", "malformed"),  # sqlite3 raised at connect
        # SQLAlchemy ignored them with two lines of warnings before any result
        ("sqlite:////tmp/x/k.sqlite?mode=ro", r"takes no query options \(given: mode\)"),
        # both were tracebacks, and a store named in $ESPER_KNOWLEDGE so failed a finished run
        ("sqlite:///~esper-no-such-user/k.sqlite", "cannot expand '~esper-no-such-user'"),
        ("sqlite:////tmp/x\udcff/k.sqlite", "malformed"),  # bytes that are no UTF-8
    ],
)
def test_bad_urls_name_the_url_and_the_accepted_ones(bad: str, why: str) -> None:
    with pytest.raises(KnowledgeURLError, match=why) as err:
        KnowledgeStore.open(bad)
    message = str(err.value)
    assert repr(bad) in message and "sqlite:///PATH" in message and "postgresql://" in message
    assert isinstance(err.value, ValueError) and "\n" not in message
    warnings = Warnings()
    assert record_outcomes(bad, [_outcome()], warnings) is False and len(warnings) == 1


@pytest.mark.parametrize("name", ["res%41x", "q?1", "a#b", "a b", "x+y", "é"])
def test_a_store_url_made_from_a_path_names_that_path(tmp_path: Path, name: str) -> None:
    """The default store's and a study's own store's URL were the path pasted in: a directory
    named res%41x put the store in resAx, one named q?1 in q."""
    path = tmp_path / name / KNOWLEDGE_FILE
    assert parse_url(sqlite_url(path)).database == str(path)
    path.parent.mkdir()
    assert record_outcomes(sqlite_url(path), [_outcome()], Warnings()) is True
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_no_outcomes_open_nothing(tmp_path: Path) -> None:
    warnings = Warnings()
    assert record_outcomes(_sqlite_url(tmp_path / "k.sqlite"), [], warnings) is True
    assert not (tmp_path / "k.sqlite").exists() and warnings == []


def test_default_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(KNOWLEDGE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_url() == f"sqlite:///{tmp_path}/home/.cache/esper/knowledge.sqlite"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_url() == f"sqlite:///{tmp_path}/cache/esper/knowledge.sqlite"
    # None means the default: the cache directory is created with the file.
    assert record_outcomes(None, [_outcome()], Warnings()) is True
    assert _raw(default_url(), "SELECT run_id FROM outcomes") == [("r1",)]
    # A cache directory that is no UTF-8: a run's end warns (it raised UnicodeEncodeError
    # from record_outcomes, which never raises), the command says one line.
    monkeypatch.setenv("XDG_CACHE_HOME", os.fsdecode(os.fsencode(tmp_path) + b"/c\xff"))
    warnings = Warnings()
    assert record_outcomes(None, [_outcome()], warnings) is False
    assert len(warnings) == 1 and "is not UTF-8 text" in warnings[0]
    with pytest.raises(UserError, match="is not UTF-8 text"):
        _knowledge("show")
    monkeypatch.setenv(KNOWLEDGE_ENV, "postgresql://esper@cluster/knowledge")
    assert default_url() == "postgresql://esper@cluster/knowledge"


# --- several processes writing at once ---------------------------------------------------------

WRITERS, WRITES = 4, 50


def _write_one_by_one(url: str, worker: int, start: Any) -> None:
    """A process that records ``WRITES`` outcomes, one transaction each, once all are ready."""
    start.wait()
    with KnowledgeStore.open(url) as store:  # every writer also races to create the schema
        for epoch in range(WRITES):
            assert store.record([_outcome(run=f"writer{worker}", epoch=epoch)]) == 1


def test_concurrent_writers_lose_nothing(url: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(WRITERS)
    writers = [
        spawn.Process(target=_write_one_by_one, args=(url, w, start)) for w in range(WRITERS)
    ]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=120)
    assert [p.exitcode for p in writers] == [0] * WRITERS
    rows = _raw(url, "SELECT run_id, germinated_epoch FROM outcomes")
    expected = {(f"writer{w}", e) for w in range(WRITERS) for e in range(WRITES)}
    assert len(rows) == WRITERS * WRITES and set(rows) == expected
    assert _raw(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


# --- esper knowledge ---------------------------------------------------------------------------


def _knowledge(*argv: str) -> str:
    """Run ``esper knowledge ARGV``; its stdout."""
    parser = argparse.ArgumentParser(prog="esper")
    add_knowledge_parser(parser.add_subparsers(dest="command", required=True))
    out = io.StringIO()
    with redirect_stdout(out):
        assert run_knowledge(parser.parse_args(["knowledge", *argv])) == 0
    return out.getvalue()


def _run_dir(parent: Path, name: str, outcomes: list[SeedOutcome]) -> Path:
    """A run directory as a finished growth run leaves it (its outcomes.json)."""
    run = parent / name
    run.mkdir()
    (run / OUTCOMES_FILE).write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, list[SeedOutcome]]:
    one = [
        _outcome(run="a", epoch=1, contribution=2.0, seed_params=1000),  # score 2.0
        _outcome(run="a", epoch=2, contribution=4.0, seed_params=1000),  # score 4.0
        _outcome(run="a", epoch=3, stage="PRUNED"),  # score 0.0
    ]
    two = [
        _outcome(run="b", stage="TRAINING", contribution=None),  # undecided: no score
        _outcome(run="b", epoch=1, blueprint="attention", host=TEXT_HOST),
    ]
    return _run_dir(tmp_path, "a", one), _run_dir(tmp_path, "b", two), one + two


def test_cli_import_show_export(tmp_path: Path, runs: tuple[Path, Path, list[Any]]) -> None:
    a, b, outcomes = runs
    store = _sqlite_url(tmp_path / "k.sqlite")
    out = _knowledge("import", str(a), str(b), "--knowledge", store)
    assert out.startswith("imported 5 seed outcome(s) from 2 run(s)")
    out = _knowledge("import", str(a), "--knowledge", store)
    assert "imported 0 seed outcome(s)" in out and "(3 already there)" in out
    # A run named twice, or two copies of it, in one import: its seeds count once (they were
    # reported as "already there", from the command's own first copy), and so does the run.
    copy = shutil.copytree(a, tmp_path / "copy")
    fresh = _sqlite_url(tmp_path / "fresh.sqlite")
    out = _knowledge("import", str(a), str(a), str(copy), "--knowledge", fresh)
    assert out.startswith("imported 3 seed outcome(s) from 1 run(s)") and "(0 already" in out
    # a run that germinated no seed: "imported 0 seed outcome(s) from 0 run(s)" of the one
    # given (a walk-through), and an empty store made
    empty = _run_dir(tmp_path, "empty", [])
    none = tmp_path / "none.sqlite"
    out = _knowledge("import", str(empty), "--knowledge", _sqlite_url(none))
    assert out == (
        "nothing imported: the run or file given holds no seed outcome (a run records one per "
        f"seed it germinated); {_sqlite_url(none)} unchanged\n"
    )
    assert not none.exists()

    lines = _knowledge("show", "--knowledge", store).splitlines()
    assert "5 seed outcome(s) from 2 run(s)" in lines[0]
    table = [line.split() for line in lines[3:-1]]
    assert lines[-1].startswith("score: a fossilized seed's contribution (accuracy points) per 1,")
    assert table == [
        ["fashion_mnist", "cnn", "16", "conv_light", "FOSSILIZED", "2", "3.000"],  # 2.0, 4.0
        ["fashion_mnist", "cnn", "16", "conv_light", "PRUNED", "1", "0.000"],
        ["fashion_mnist", "cnn", "16", "conv_light", "TRAINING", "1", "—"],  # missing: not 0
        ["text_lm", "transformer", "64", "attention", "FOSSILIZED", "1", "0.750"],  # 1.5e3/2e3
    ]

    exported = json.loads(_knowledge("export", "--format", "json", "--knowledge", store))
    assert list(decode(tuple[SeedOutcome, ...], exported)) == outcomes
    # An export moves to another store as it is, and a run's outcomes.json given itself too
    # ("RUN/outcomes.json has no outcomes.json").
    export = tmp_path / "export.json"
    export.write_text(json.dumps(exported))
    moved = _sqlite_url(tmp_path / "moved.sqlite")
    out = _knowledge("import", str(export), str(a / OUTCOMES_FILE), "--knowledge", moved)
    assert out.startswith("imported 5 seed outcome(s) from 2 run(s)")
    assert json.loads(_knowledge("export", "--format", "json", "--knowledge", moved)) == exported

    rows = list(csv.DictReader(io.StringIO(_knowledge("export", "--knowledge", store))))
    assert len(rows) == 5
    assert rows[3] == {
        "run_id": "b",
        "host_task": "fashion_mnist",
        "host_topology": "cnn",
        "host_width": "16",
        "host_params": "12345",
        "slot": "mid",
        "blueprint": "conv_light",
        "stage": "TRAINING",
        "contribution": "",
        "seed_params": "2000",
        "accuracy_change": "-0.25",
        "germinated_epoch": "0",
        "epochs": "4",
    }


def test_a_stored_row_that_is_no_valid_outcome_is_a_store_problem(url: str) -> None:
    """Earlier versions stored unchecked values (an infinite contribution, a made-up stage);
    reading such a row raised ValueError out of code documented never to raise."""
    with KnowledgeStore.open(url) as store:
        store.record([_outcome()])
    _raw(url, "UPDATE outcomes SET stage = 'BOGUS'")
    with pytest.raises(KnowledgeStoreError, match=r"row id 1 is not a valid seed outcome") as err:
        KnowledgeStore.open(url).outcomes()
    assert "stage must be one of" in str(err.value) and "\n" not in str(err.value)
    warnings = Warnings()
    assert outcomes_for(url, HOST, warnings) == []
    assert len(warnings) == 1 and "row id 1" in warnings[0]
    with pytest.raises(UserError, match="row id 1 is not a valid seed outcome"):
        _knowledge("show", "--knowledge", url)
    # A seed without parameters (import refused it, but a row of the store was read as a
    # prior, its contribution x 1000 outweighing every other).
    _raw(url, "UPDATE outcomes SET stage = 'FOSSILIZED', seed_params = 0")
    warnings = Warnings()
    assert outcomes_for(url, HOST, warnings) == []
    assert len(warnings) == 1 and "seed_params must be an integer in [1, " in warnings[0]


@pytest.mark.parametrize("when", ["'garbage'", "42"])
def test_a_malformed_recorded_at_is_not_read(tmp_path: Path, when: str) -> None:
    """``recorded_at`` is no outcome field, but SQLAlchemy parsed it while fetching: a value
    another tool wrote there was a ValueError or TypeError out of ``outcomes_for``, ending
    the run of a bandit selector."""
    url = _sqlite_url(tmp_path / "k.sqlite")
    with KnowledgeStore.open(url) as store:
        store.record([_outcome()])
    _raw(url, f"UPDATE outcomes SET recorded_at = {when}")
    warnings = Warnings()
    assert outcomes_for(url, HOST, warnings) == [_outcome()] and not warnings
    assert "1 seed" in _knowledge("show", "--knowledge", url)


def test_cli_show_an_empty_store(tmp_path: Path) -> None:
    store = _sqlite_url(tmp_path / "k.sqlite")
    assert _knowledge("show", "--knowledge", store) == f"{store}: no seed outcomes\n"
    # Reading a store that does not exist creates neither it nor its directories.
    missing = _sqlite_url(tmp_path / "no" / "such" / "k.sqlite")
    assert _knowledge("show", "--knowledge", missing) == f"{missing}: no seed outcomes\n"
    assert _knowledge("export", "--knowledge", missing, "--format", "json") == "[]\n"
    with pytest.raises(UserError, match="does not exist: no run has recorded seed outcomes"):
        _knowledge("reset", "--yes", "--knowledge", missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_names_a_relative_sqlite_store_by_the_file_it_is(tmp_path, monkeypatch) -> None:
    """``sqlite:///tmp/k.sqlite`` (three slashes) is tmp/k.sqlite under the working directory:
    "imported ... into sqlite:///tmp/k.sqlite (0 already there)" read as /tmp/k.sqlite, which
    held them all (a walk-through). A folder given as the store was SQLite's "unable to open
    database file"."""
    monkeypatch.chdir(tmp_path)
    run = _run_dir(tmp_path, "run", [_outcome()])
    said = _knowledge("import", "--knowledge", "sqlite:///sub/k.sqlite", str(run))
    assert said.endswith(f"into sqlite:///{tmp_path}/sub/k.sqlite (0 already there)\n"), said
    assert _knowledge("show", "--knowledge", "sqlite:///sub/no.sqlite") == (
        f"sqlite:///{tmp_path}/sub/no.sqlite: no seed outcomes\n"
    )
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match=r"/folder: 'folder' is a directory, not a database file$"):
        _knowledge("show", "--knowledge", "sqlite:///folder")


def test_reading_a_store_that_does_not_exist_creates_nothing(url: str) -> None:
    """No SQLite file, or a server database without Esper's tables: readers see it empty, a
    reset refuses it, and neither creates a file or a table; an import then creates it."""
    if url.startswith("sqlite"):

        def tables() -> list[Any]:
            path = Path(url.removeprefix("sqlite:///"))
            return _raw(url, "SELECT name FROM sqlite_master") if path.exists() else ["no file"]
    else:

        def tables() -> list[Any]:
            return _raw(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")

    before = tables()
    with pytest.raises(KnowledgeStoreMissing, match="does not exist: no run has recorded"):
        KnowledgeStore.open(url, create=False)
    assert _knowledge("show", "--knowledge", url).endswith(": no seed outcomes\n")
    assert _knowledge("export", "--knowledge", url, "--format", "json") == "[]\n"
    with pytest.raises(UserError, match="does not exist: no run has recorded seed outcomes"):
        _knowledge("reset", "--yes", "--knowledge", url)
    assert tables() == before
    with KnowledgeStore.open(url) as store:
        assert store.record([_outcome()]) == 1
    with KnowledgeStore.open(url, create=False) as store:
        assert store.outcomes() == [_outcome()]


def test_cli_uses_the_default_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(KNOWLEDGE_ENV, _sqlite_url(tmp_path / "env.sqlite"))
    _knowledge("import", str(_run_dir(tmp_path, "r", [_outcome()])))
    assert _raw(_sqlite_url(tmp_path / "env.sqlite"), "SELECT count(*) FROM outcomes") == [(1,)]


def test_cli_import_refuses_two_files_that_differ_on_one_seed(tmp_path: Path) -> None:
    """Two files with one seed's different outcomes: the last given won, silently."""
    store_file = tmp_path / "k.sqlite"
    store = _sqlite_url(store_file)
    a = _run_dir(tmp_path, "a", [_outcome(epoch=1), _outcome(epoch=2)])
    b = _run_dir(tmp_path, "b", [_outcome(epoch=2, stage="PRUNED", contribution=None)])
    with pytest.raises(UserError) as err:
        _knowledge("import", str(a), str(b), "--knowledge", store)
    assert str(err.value) == (
        f"{str(b)!r} and {str(a)!r} hold different outcomes of run r1's seed in slot mid "
        f"germinated after epoch 2: stage 'PRUNED' ({a}: 'FOSSILIZED'); contribution None "
        f"({a}: 1.5); import one of them (nothing imported)"
    )
    assert not store_file.exists()
    twice = _knowledge("import", str(a), str(a), "--knowledge", store)
    assert twice.startswith("imported 2 seed outcome(s)")
    with pytest.raises(UserError, match=r"1 outcome\(s\) differ from the store's for the same"):
        _knowledge("import", str(b), "--knowledge", store)
    assert _raw(store, "SELECT stage FROM outcomes ORDER BY id") == [("FOSSILIZED",)] * 2


def test_an_import_of_a_csv_export_says_to_export_json(tmp_path: Path) -> None:
    """`knowledge import --help` said an export imports, but the default export (CSV) did not,
    and the error did not say why."""
    store = _sqlite_url(tmp_path / "k.sqlite")
    _knowledge("import", str(_run_dir(tmp_path, "a", [_outcome()])), "--knowledge", store)
    exported = tmp_path / "e.csv"
    exported.write_text(_knowledge("export", "--knowledge", store))
    with pytest.raises(UserError) as err:
        _knowledge("import", str(exported), "--knowledge", _sqlite_url(tmp_path / "k2.sqlite"))
    assert str(err.value).endswith(
        "nothing imported (a CSV export: import one written with export --format json)"
    )
    exported.write_text(_knowledge("export", "--knowledge", store, "--format", "json"))
    assert "imported 1 seed" in _knowledge("import", str(exported), "--knowledge", store + "2")


def test_an_import_file_that_is_not_a_list_is_named_as_given(tmp_path: Path) -> None:
    """``import j1.json`` said "j1.json: outcomes.json must be a list" (a walk-through)."""
    given = tmp_path / "j1.json"
    given.write_text('{"not": "a list"}')
    with pytest.raises(UserError) as err:
        _knowledge("import", str(given), "--knowledge", _sqlite_url(tmp_path / "k.sqlite"))
    assert str(err.value).startswith(f"{given}: j1.json must be a list")
    assert "outcomes.json" not in str(err.value)


def test_cli_import_checks_every_run_before_writing(
    tmp_path: Path, runs: tuple[Path, Path, list[Any]]
) -> None:
    a, b, _ = runs
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    store_file = tmp_path / "k.sqlite"
    store = _sqlite_url(store_file)
    with pytest.raises(UserError, match=f"{not_a_run} has no outcomes.json") as err:
        _knowledge("import", str(a), str(not_a_run), str(b), "--knowledge", store)
    assert "\n" not in str(err.value) and "nothing imported" in str(err.value)
    assert not store_file.exists()
    missing = tmp_path / "missing"  # "has no outcomes.json ... and is no outcomes file"
    with pytest.raises(UserError) as err:
        _knowledge("import", str(a), str(missing), "--knowledge", store)
    assert str(err.value) == (
        f"{str(missing)!r} does not exist (a run directory or an outcomes file); nothing imported"
    )
    assert not store_file.exists()

    (b / OUTCOMES_FILE).write_text('[{"run_id": "b"}]')
    with pytest.raises(UserError, match=r"outcomes.json.*missing key") as err:
        _knowledge("import", str(a), str(b), "--knowledge", store)
    (b / OUTCOMES_FILE).write_text("[{not json")
    with pytest.raises(UserError, match=f"{b / OUTCOMES_FILE}: "):
        _knowledge("import", str(a), str(b), "--knowledge", store)
    (b / OUTCOMES_FILE).write_text("[" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        _knowledge("import", str(a), str(b), "--knowledge", store)
    good = json.loads((a / OUTCOMES_FILE).read_text())[0]
    bad_values = [
        ({"seed_params": 10**30}, "seed_params must be an integer in [1, 9223372036854775807]"),
        ({"stage": "BOGUS"}, "stage must be one of ['GERMINATED'"),
        ({"stage": "DORMANT"}, "stage must be one of ['GERMINATED'"),  # no seed has this end
        ({"contribution": 1e308}, "contribution must be a number in [-100, 100]"),  # score inf
        ({"accuracy_change": -100.5}, "accuracy_change must be a number in [-100, 100]"),
        ({"epochs": -5}, "epochs must be an integer in [0, "),
        ({"contribution": float("inf")}, "contribution must be a number in [-100, 100]"),
        ({"accuracy_change": float("nan")}, "accuracy_change must be a number in [-100, 100]"),
        ({"host": {**good["host"], "width": -1}}, "host.width must be an integer in [1, "),
        ({"host": {**good["host"], "topology": "mlp"}}, "host.topology must be one of"),
        # found by an adversarial sweep: these were imported
        ({"slot": "nope"}, "unknown slot name 'nope'; accepted: 'early', 'mid'"),
        ({"blueprint": "zzz"}, "unknown blueprint 'zzz' for a cnn host; known: ['norm', 'att"),
        ({"blueprint": "lora"}, "unknown blueprint 'lora' for a cnn host"),
        ({"host": {**good["host"], "task": "imagenet"}}, "unknown task 'imagenet'; known: ["),
        # a walk-through: it scored its contribution x 1000 and outweighed every prior
        ({"seed_params": 0}, "seed_params must be an integer in [1, 9223372036854775807], got 0"),
        (  # a transformer outcome on a CNN task: a store groups outcomes by task
            {"host": {**good["host"], "topology": "transformer"}, "blueprint": "lora"},
            f"task {good['host']['task']!r} has a cnn host, not transformer",
        ),
        ({"run_id": ""}, "run_id must be a non-empty printable name, got ''"),
        ({"run_id": "a\x00b"}, "run_id must be a non-empty printable name, got 'a\\x00b'"),
    ]
    for change, message in bad_values:
        (b / OUTCOMES_FILE).write_text(json.dumps([{**good, **change}]))
        with pytest.raises(UserError, match=re.escape(message)) as err:
            _knowledge("import", str(a), str(b), "--knowledge", store)
        assert "\n" not in str(err.value) and "nothing imported" in str(err.value)
    assert not store_file.exists()


def test_cli_reset_needs_yes(tmp_path: Path, runs: tuple[Path, Path, list[Any]]) -> None:
    store = _sqlite_url(tmp_path / "k.sqlite")
    _knowledge("import", str(runs[0]), "--knowledge", store)
    with pytest.raises(UserError, match="add --yes") as err:
        _knowledge("reset", "--knowledge", store)
    assert store in str(err.value) and "\n" not in str(err.value)
    assert _raw(store, "SELECT count(*) FROM outcomes") == [(3,)]
    assert _knowledge("reset", "--yes", "--knowledge", store).startswith("deleted 3 seed outcome")
    assert _raw(store, "SELECT count(*) FROM outcomes") == [(0,)]


@pytest.mark.parametrize(
    ("url", "why"),
    [("not a url", "malformed"), ("mysql://x", "unsupported"), ("sqlite://", "names no file")],
)
def test_cli_bad_urls(url: str, why: str) -> None:
    for verb in (["show"], ["export"], ["reset", "--yes"]):
        with pytest.raises(UserError, match=why) as err:
            _knowledge(*verb, "--knowledge", url)
        assert repr(url) in str(err.value) and "accepted: sqlite:///PATH" in str(err.value)


def test_cli_unusable_store_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    path.write_bytes(b"garbage " * 200)
    with pytest.raises(UserError, match="file is not a database") as err:
        _knowledge("show", "--knowledge", _sqlite_url(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_device_or_pipe_is_refused_as_a_store(tmp_path: Path) -> None:
    """``sqlite:////dev/null`` was "disk I/O error" after SQLite had made /dev/null-journal;
    a named pipe could block the opener."""
    pipe = tmp_path / "pipe.sqlite"
    os.mkfifo(pipe)
    run = _run_dir(tmp_path, "run", [_outcome()])
    journal = Path(os.devnull + "-journal")
    journal_before = journal.exists()  # left by an Esper before this check, or another program
    for path, what in ((Path(os.devnull), "a character device"), (pipe, "a named pipe")):
        with pytest.raises(UserError) as err:
            _knowledge("import", str(run), "--knowledge", _sqlite_url(path))
        assert str(err.value).endswith(f"{str(path)!r} is {what}, not a database file")
        warnings = Warnings()
        assert outcomes_for(_sqlite_url(path), HOST, warnings) == [] and len(warnings) == 1
    assert journal.exists() == journal_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.sqlite", "run"]


def test_a_store_url_from_the_environment_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KNOWLEDGE_ENV, "garbage")
    with pytest.raises(UserError) as err:
        _knowledge("show")
    assert str(err.value).startswith("malformed knowledge store URL 'garbage'")
    assert str(err.value).endswith(f"(the URL is ${KNOWLEDGE_ENV})")
    with pytest.raises(UserError) as err:  # given on the command line: no word of it
        _knowledge("show", "--knowledge", "garbage")
    assert KNOWLEDGE_ENV not in str(err.value)


def test_a_url_with_an_encoded_nul_or_a_password_is_one_line_that_hides_it(
    tmp_path: Path,
) -> None:
    """A walk-through: ``sqlite:///%00x`` passed the URL check (only a literal NUL was refused;
    make_url decodes %00), so a run trained to its end and then died in a traceback from
    os.stat, unfinishable; and a malformed URL's message showed its password."""
    for url in ("sqlite:///%00x", "postgresql://u@127.0.0.1:5/d%00b", "sqlite:///a%00/k.sqlite"):
        with pytest.raises(UserError) as err:
            _knowledge("show", "--knowledge", url)
        assert str(err.value).startswith(f"malformed knowledge store URL {url!r}")
    with pytest.raises(UserError) as err:
        _knowledge("show", "--knowledge", "postgresql://u:s3cret@127.0.0.1:abc/db")
    assert "s3cret" not in str(err.value)
    assert str(err.value).startswith("malformed knowledge store URL 'postgresql://u:***@127")
    code = main(["heuristic", "--task", "synthetic", "--epochs", "1", "--batches-per-epoch", "1",
                 "--out", str(tmp_path / "run"), "--knowledge", "sqlite:///%00x"])  # fmt: skip
    assert code == EXIT_BAD_INPUT and not (tmp_path / "run").exists()


def test_a_store_in_a_directory_it_cannot_write_in_says_what_sqlite_needs(tmp_path: Path) -> None:
    """Even ``show`` opens the store for writing (migrations, WAL); SQLite's own words were
    "attempt to write a readonly database". Permissions bind in a child, as a user's."""
    folder = tmp_path / "shared"
    folder.mkdir()
    url = _sqlite_url(folder / "k.sqlite")
    KnowledgeStore.open(url).close()
    folder.chmod(0o555)
    show = [sys.executable, "-m", "esper", "knowledge", "show", "--knowledge", url]
    try:
        done = subprocess.run(
            [*unprivileged(), *show],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        folder.chmod(0o755)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"esper: error: knowledge store {url}: attempt to write a readonly database (Esper opens "
        "its store for writing, readers too: the file and its directory must be writable, as "
        "SQLite keeps its -wal and -shm files there)\n"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["k.sqlite"]


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["import"], ["export", "--format", "xml"]])
def test_cli_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from esper.cli.main import main

    assert main(["knowledge", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error: ") and err.count("\n") == 1, err
    assert "see esper knowledge" in err and "usage:" not in err


def test_cli_import_of_a_study_names_its_trials(tmp_path: Path) -> None:
    """A study's directory given to import was "not a growth run directory" and no more: its
    runs are its trials' (a walk-through)."""
    study = tmp_path / "st"
    study.mkdir()
    (study / "study.json").write_text("{}")
    url = _sqlite_url(tmp_path / "k.sqlite")
    with pytest.raises(UserError) as refused:
        _knowledge("import", "--knowledge", url, str(study))
    assert str(refused.value).endswith(
        f"nothing imported; a study's runs are in its trials folder: {study}/trials/*"
    )
    assert not (tmp_path / "k.sqlite").exists()
