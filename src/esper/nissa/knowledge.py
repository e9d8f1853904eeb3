"""The knowledge store: every run's seed outcomes, kept across runs (DESIGN §11).

A growth run ends by handing its ``SeedOutcome``s to ``record_outcomes``; the bandit blueprint
selectors read the outcomes of earlier runs on the same host through ``outcomes_for``; ``esper
knowledge`` shows, exports, imports and resets the store. Both run-side entries never fail a
run: a store that cannot be reached or read costs one warning line, and the run's outcomes stay
in its run directory (``outcomes.json``) for ``esper knowledge import``.

Where: a SQLAlchemy URL. ``sqlite:///PATH`` (the default, ``default_url()``: the file
``knowledge.sqlite`` in the user cache, or ``$ESPER_KNOWLEDGE``) for one machine, or
``postgresql://USER@HOST/DB`` (driven by psycopg 3) for a cluster.

Schema: the ``schema_version`` table (one row) and the ``outcomes`` table, one column per
``SeedOutcome`` field with the host's fields flattened to ``host_*`` (``OUTCOME_COLUMNS``), an
autoincrement ``id`` and a ``recorded_at`` timestamp; a seed is identified by (run_id, slot,
germinated_epoch), so importing a run twice adds nothing. ``open`` applies the forward
migrations the database lacks, in order, in one transaction; it refuses a database whose schema
is newer than this code, or one that holds tables but not ours.

Concurrent writers: every writing transaction on SQLite starts with ``BEGIN IMMEDIATE`` (it takes
the write lock up front, so SQLite's busy timeout applies rather than a lock-upgrade deadlock) in
WAL mode, and a transaction that still finds the database locked is retried with backoff for a
bounded time. Readers (``outcomes``, and ``open`` of a store whose schema is current) begin
deferred, so in WAL mode they read beside a writer instead of waiting for its lock. PostgreSQL
serialises writers itself; migrations there hold an advisory lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Insert

from esper.leyline.files import is_utf8_path, nearest_existing, not_a_folder, not_regular
from esper.leyline.knowledge import HostSignature, SeedOutcome, outcome_score
from esper.leyline.net import hidden_password
from esper.leyline.trials import KNOWLEDGE_FILE
from esper.nissa.log import shown_path

T = TypeVar("T")

KNOWLEDGE_ENV = "ESPER_KNOWLEDGE"
"""Environment variable holding the store's URL; it replaces the default SQLite file."""

SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
"""Accepted URL schemes; plain ``postgresql`` is driven by psycopg 3 (SQLAlchemy would pick
psycopg2, which Esper does not install)."""

ACCEPTED_URLS = (
    "accepted: sqlite:///PATH, postgresql://USER@HOST[:PORT]/DB, postgresql+psycopg://..."
)

CONNECT_TIMEOUT_S = 5
"""Seconds to wait for a PostgreSQL server: an unreachable one delays a run's end by no more."""

BUSY_TIMEOUT_S = 10.0
"""Seconds one SQLite statement waits for another process's write lock before failing."""

LOCKED_RETRY_S = 30.0
"""Total seconds a locked SQLite transaction is retried (with backoff) before giving up: long
enough for dozens of parallel runs finishing at once, bounded so a stuck lock cannot hang one."""

PG_LOCK_TIMEOUT_S = LOCKED_RETRY_S
"""Seconds a PostgreSQL statement waits for a lock (``lock_timeout``; the migration's advisory
lock every open takes, a table lock): as bounded as SQLite's wait. Without it, a client stuck
holding one (a suspended Ray worker) hung every run's start and ``esper knowledge show``."""

MIGRATION_LOCK_KEY = 0x45535045_4B4E4F57
"""PostgreSQL advisory lock held while migrating, so concurrent first opens create the tables
once. The key is "ESPEKNOW" in ASCII: an int64 that other applications are unlikely to lock."""

HOST_PREFIX = "host_"
"""Column prefix of the ``HostSignature`` fields in the flattened outcome."""

OUTCOME_COLUMNS: tuple[str, ...] = tuple(
    name
    for f in fields(SeedOutcome)
    for name in (
        [HOST_PREFIX + h.name for h in fields(HostSignature)] if f.name == "host" else [f.name]
    )
)
"""A ``SeedOutcome`` as flat columns (the store's table, ``esper knowledge export --format
csv``): its fields in order, the host's replaced by ``host_task``, ``host_topology``, ..."""

SEED_KEY = ("run_id", "slot", "germinated_epoch")
"""What identifies one seed across imports: a run grows at most one seed per slot per epoch."""


class KnowledgeURLError(ValueError):
    """A store URL that is malformed or names an unsupported database."""


class KnowledgeStoreError(Exception):
    """The store cannot be used: unreachable, corrupt, foreign or newer than this code. The
    message is one line naming the URL (its password hidden)."""


NOTHING_RECORDED = "does not exist: no run has recorded seed outcomes there"


class KnowledgeConflict(KnowledgeStoreError):
    """Outcomes to record differ from the store's own for the same seeds (``SEED_KEY``), and
    were refused: nothing was recorded."""


class KnowledgeStoreMissing(KnowledgeStoreError):
    """Opened to read (``create=False``), the store does not exist: no SQLite file, or a
    server database without Esper's tables. Nothing was created."""


def default_url() -> str:
    """The store's URL: ``$ESPER_KNOWLEDGE`` if set, else an SQLite file in the user cache.

    The cache directory is ``$XDG_CACHE_HOME/esper/`` or ``~/.cache/esper/``, the same place
    as the datasets' (``esper.data.locate.cache_dir``, which Nissa may not import).
    """
    env = os.environ.get(KNOWLEDGE_ENV, "")
    if env:
        return env
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return sqlite_url(base / "esper" / KNOWLEDGE_FILE)


def url_origin(url: str | None) -> str:
    """Where a store's URL came from when it was not given (``url`` None), for a message about
    it: `` (the URL is $ESPER_KNOWLEDGE)``; "" for the built-in default or a given one."""
    from_env = url is None and os.environ.get(KNOWLEDGE_ENV)
    return f" (the URL is ${KNOWLEDGE_ENV})" if from_env else ""


def sqlite_url(path: Path) -> str:
    """The URL of an SQLite store at ``path``, quoted so that ``parse_url`` reads ``path`` back
    (pasted in, a ``%41`` in a directory name was read as ``A``, a ``?`` as the start of
    options: the store went to another file).

    Raises:
        KnowledgeURLError: ``path`` holds bytes that are no UTF-8 (a URL cannot carry them).
    """
    if not is_utf8_path(path):
        raise KnowledgeURLError(
            f"knowledge store path {shown_path(path)!r} is not UTF-8 text, which a store URL "
            f"needs; name the store with --knowledge or ${KNOWLEDGE_ENV} ({ACCEPTED_URLS})"
        )
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def shown_url(parsed: URL) -> str:
    """``parsed`` for messages and records, its password hidden (``hidden_password``)."""
    return hidden_password(parsed.render_as_string(hide_password=False))


def shown_store(parsed: URL) -> str:
    """A store's URL (``parse_url``'s) as the store's messages name it: ``shown_url`` with an
    SQLite file's path made absolute (``sqlite:///tmp/k.sqlite``, three slashes, is relative:
    "imported ... into sqlite:///tmp/k.sqlite" read as /tmp/k.sqlite; a walk-through)."""
    sqlite_file = _sqlite_file(parsed)
    if sqlite_file is not None and str(parsed.database) != ":memory:":
        parsed = parsed.set(database=str(sqlite_file.absolute()))
    return shown_url(parsed)


def recorded_url(url: str | None) -> str | None:
    """The store URL a new run records in its ``config.json``, so that a resume started in
    another directory or without ``$ESPER_KNOWLEDGE`` uses the store the run began with:
    ``url`` (None: ``default_url()``) with an SQLite path made absolute.

    Returns:
        That URL; None where ``url`` is None and the default cannot be used (the run warns
        when it opens it) or carries a password (kept out of the run's files: a resume reads
        ``$ESPER_KNOWLEDGE`` again).

    Raises:
        KnowledgeURLError: ``url`` is malformed, or names an SQLite file whose absolute path
            is no UTF-8 text.
    """
    try:
        parsed = parse_url(default_url() if url is None else url)
        if parsed.drivername == "sqlite":
            return sqlite_url(Path(str(parsed.database)).absolute())
    except KnowledgeURLError:
        if url is not None:
            raise
        return None
    if url is None and (parsed.password is not None or "password" in parsed.query):
        return None
    return default_url() if url is None else url


def parse_url(url: str) -> URL:
    """Check a store URL and return it parsed, ready for ``create_engine``.

    ``postgresql`` becomes ``postgresql+psycopg``; ``~`` in an SQLite path is expanded.

    Raises:
        KnowledgeURLError: a malformed URL, an unsupported scheme or an SQLite URL without a file.
    """
    given = hidden_password(url)  # a malformed URL's messages too (a walk-through)
    try:
        url.encode("utf-8")  # a path of bytes that are no UTF-8 (surrogates) cannot be sent
        parsed = make_url(url)
        # no file or host can be named with a NUL, given as is or as %00 (which make_url
        # decodes): os.stat and sqlite3 raise ValueError, libpq cuts the string there
        parts = [url, parsed.database, parsed.host, parsed.username, parsed.password]
        parts += [value for values in parsed.normalized_query.values() for value in values]
        if any("\0" in part for part in parts if part):
            raise ValueError("NUL character")
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        raise KnowledgeURLError(
            f"malformed knowledge store URL {given!r}; {ACCEPTED_URLS}"
        ) from None
    shown = shown_url(parsed)
    if parsed.drivername not in SCHEMES:
        raise KnowledgeURLError(
            f"unsupported knowledge store URL {shown!r} (scheme {parsed.drivername!r}); "
            + ACCEPTED_URLS
        )
    if parsed.drivername == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise KnowledgeURLError(
                f"knowledge store URL {given!r} names no file (an in-memory store would forget "
                f"everything); {ACCEPTED_URLS}"
            )
        if parsed.query:  # a store needs none; SQLAlchemy warns about those it does not take
            raise KnowledgeURLError(
                f"knowledge store URL {given!r}: an SQLite store takes no query options "
                f"(given: {', '.join(sorted(parsed.query))}); {ACCEPTED_URLS}"
            )
        try:
            path = Path(str(parsed.database)).expanduser()
        except RuntimeError:  # ~name of no user
            home = str(parsed.database).split("/")[0]
            raise KnowledgeURLError(
                f"knowledge store URL {given!r}: cannot expand {home!r} (no such user); "
                f"{ACCEPTED_URLS}"
            ) from None
        return parsed.set(database=str(path))
    return parsed.set(drivername="postgresql+psycopg")


def _refuse_uncreatable(path: Path, shown: str) -> None:
    """A missing SQLite store's file can be made: its nearest existing ancestor is a folder
    this process may write in. A study's check passed a store under a regular file, and each
    trial then only warned (in a Ray worker's log) and recorded nothing.

    Raises:
        KnowledgeStoreError: naming the ancestor in the way.
    """
    nearest = nearest_existing(path.parent)
    if not nearest.is_dir():
        problem = f"{str(nearest)!r} is {not_a_folder(nearest)}, not a folder"
    elif not os.access(nearest, os.W_OK | os.X_OK):
        problem = f"{str(nearest)!r} is not writable"
    else:
        return
    raise KnowledgeStoreError(f"knowledge store {shown}: cannot be created: {problem}")


def _refuse_special_file(path: Path, shown: str) -> None:
    """An SQLite store's path is a regular file or nothing yet: a device took a journal file
    beside it (``/dev/null-journal``), a named pipe would block, and of a directory SQLite
    said only "unable to open database file".

    Raises:
        KnowledgeStoreError: naming what the path is.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing (created on open), or unreachable: SQLite says which
    if not stat.S_ISREG(mode):
        raise KnowledgeStoreError(
            f"knowledge store {shown}: {str(path)!r} is {not_regular(mode)}, not a database file"
        )


def _sqlite_file(parsed: URL) -> Path | None:
    """The file a parsed SQLite store URL names; None for a server's URL."""
    return Path(str(parsed.database)) if parsed.get_backend_name() == "sqlite" else None


def flatten(outcome: SeedOutcome) -> dict[str, Any]:
    """An outcome as one flat row keyed by ``OUTCOME_COLUMNS``."""
    row = asdict(outcome)
    host = row.pop("host")
    row.update({HOST_PREFIX + k: v for k, v in host.items()})
    return {name: row[name] for name in OUTCOME_COLUMNS}


def unflatten(row: Mapping[str, Any]) -> SeedOutcome:
    """The inverse of ``flatten`` (extra keys, such as the table's ``id``, are ignored)."""
    host = HostSignature(**{h.name: row[HOST_PREFIX + h.name] for h in fields(HostSignature)})
    own = {f.name: row[f.name] for f in fields(SeedOutcome) if f.name != "host"}
    return SeedOutcome(host=host, **own)


_METADATA = MetaData()

VERSION_TABLE = Table("schema_version", _METADATA, Column("version", Integer, nullable=False))

OUTCOMES = Table(
    "outcomes",
    _METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String, nullable=False),
    Column("host_task", String, nullable=False),
    Column("host_topology", String, nullable=False),
    Column("host_width", BigInteger, nullable=False),
    Column("host_params", BigInteger, nullable=False),
    Column("slot", String, nullable=False),
    Column("blueprint", String, nullable=False),
    Column("stage", String, nullable=False),
    Column("contribution", Float, nullable=True),
    Column("seed_params", BigInteger, nullable=False),
    Column("accuracy_change", Float, nullable=True),
    Column("germinated_epoch", BigInteger, nullable=False),
    Column("epochs", BigInteger, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint(*SEED_KEY, name="outcomes_one_row_per_seed"),
)
"""The outcomes table as the newest migration leaves it (a test checks the two agree)."""


def _v1_outcomes(conn: Connection) -> None:
    """Version 1: the outcomes table, its integers ``Integer`` (32-bit on PostgreSQL).

    A migration creates what its version had: ``OUTCOMES`` as version 1 defined it, which
    version 2 altered.
    """
    v1 = OUTCOMES.to_metadata(MetaData())
    for column in v1.columns:
        if isinstance(column.type, BigInteger):
            column.type = Integer()
    v1.create(conn)


INT64_COLUMNS = ("host_width", "host_params", "seed_params", "germinated_epoch", "epochs")
"""The outcome's integers, which it checks up to 2**63 - 1 (``SeedOutcome``)."""


def _v2_int64(conn: Connection) -> None:
    """Version 2: ``INT64_COLUMNS`` hold 64-bit integers. PostgreSQL's ``integer`` is 32-bit,
    so an outcome SQLite took (its INTEGER is 64-bit) failed to import there with "integer
    out of range", naming no column (a walk-through); SQLite has nothing to change."""
    if conn.dialect.name == "postgresql":
        for name in INT64_COLUMNS:
            conn.execute(text(f"ALTER TABLE {OUTCOMES.name} ALTER COLUMN {name} TYPE BIGINT"))


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_v1_outcomes, _v2_int64)
"""Forward migrations: ``MIGRATIONS[v]`` takes a version-``v`` database to version ``v + 1``.
Released ones are never edited; a change to the schema is a new function appended here."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes and reads."""


def _reason(err: BaseException) -> str:
    """The first line of what the database driver said (SQLAlchemy appends the statement and a
    link, psycopg a hint on further lines)."""
    cause = err.orig if isinstance(err, DBAPIError) and err.orig is not None else err
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def _locked(err: Exception) -> bool:
    """Whether SQLite refused for another process's lock (worth retrying), not for a fault
    (``err``: SQLAlchemy's wrapper, or sqlite3's own error from a raw connection)."""
    orig = getattr(err, "orig", err)
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


def _engine(url: URL) -> Engine:
    """An engine with the store's connection settings (see the module docstring)."""
    if url.get_backend_name() == "postgresql":
        # milliseconds; after the URL's own ``options`` (which this argument replaces)
        options = [*url.normalized_query.get("options", ())]
        options.append(f"-c lock_timeout={round(PG_LOCK_TIMEOUT_S * 1000)}")
        return create_engine(
            url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "options": " ".join(options)}
        )
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (it would defer it past reads and DDL) ...
        dbapi_connection.isolation_level = None
        # Read the file's header, changing nothing: a file that is not SQLite fails here ("file
        # is not a database"). WAL is switched on only once the schema is known to be ours.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA schema_version")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        reading = conn.get_execution_options().get(_READING, False)
        conn.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


_READING = "esper_reading"
"""The execution option of a connection whose transaction only reads (``_transaction``)."""


class _WriteNeeded(Exception):
    """``_migrate`` told to only read found the store to create or migrate."""


def _migrate(conn: Connection, shown: str, create: bool, write: bool = True) -> None:
    """Bring the database to ``SCHEMA_VERSION``, inside the caller's transaction (an empty one
    only when ``create``); without ``write``, raise ``_WriteNeeded`` where that changes it."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    inspector = inspect(conn)
    tables = sorted(inspector.get_table_names())
    if not tables and not create:
        raise KnowledgeStoreMissing(f"knowledge store {shown} {NOTHING_RECORDED}")
    if not tables and not write:
        raise _WriteNeeded
    if not tables:
        VERSION_TABLE.create(conn)
        conn.execute(insert(VERSION_TABLE).values(version=0))
    version_columns = (
        [c["name"] for c in inspector.get_columns(VERSION_TABLE.name)]
        if VERSION_TABLE.name in tables
        else []
    )
    if tables and version_columns != ["version"]:
        raise KnowledgeStoreError(
            f"knowledge store {shown}: not Esper's (it holds other tables: {', '.join(tables)});"
            f" give another URL with --knowledge or ${KNOWLEDGE_ENV}"
        )
    versions = conn.execute(select(VERSION_TABLE.c.version)).scalars().all()
    if len(versions) != 1:
        raise KnowledgeStoreError(
            f"knowledge store {shown}: damaged schema_version table ({len(versions)} rows, "
            "expected 1)"
        )
    version = versions[0]
    lowest = 1 if set(tables) - {VERSION_TABLE.name} else 0  # 0: the version table alone
    if not isinstance(version, int) or isinstance(version, bool) or version < lowest:
        raise KnowledgeStoreError(
            f"knowledge store {shown}: damaged schema_version table (version {version!r}, "
            f"expected an integer from {lowest} to {SCHEMA_VERSION})"
        )
    if version > SCHEMA_VERSION:
        raise KnowledgeStoreError(
            f"knowledge store {shown}: schema version {version} is newer than this Esper's "
            f"{SCHEMA_VERSION} (a later Esper wrote it); upgrade Esper"
        )
    if version < SCHEMA_VERSION and not write:
        raise _WriteNeeded
    for migration in MIGRATIONS[version:]:
        migration(conn)
    if version < SCHEMA_VERSION:
        conn.execute(update(VERSION_TABLE).values(version=SCHEMA_VERSION))


def _outcomes_query(host: HostSignature | None = None) -> Select[Any]:
    """The outcomes on ``host``'s task, topology and width (None: all), oldest first."""
    # Not ``recorded_at``: no outcome field, and SQLAlchemy parses it while fetching, so
    # a malformed one (written by hand, or another tool) would fail outside ``_outcome``.
    query = select(*(c for c in OUTCOMES.c if c.name != "recorded_at")).order_by(OUTCOMES.c.id)
    if host is None:
        return query
    return query.where(
        OUTCOMES.c.host_task == host.task,
        OUTCOMES.c.host_topology == host.topology,
        OUTCOMES.c.host_width == host.width,
    )


def _insert_new(dialect: str) -> Insert:
    """An INSERT into the outcomes table that skips a seed already recorded."""
    if dialect == "postgresql":
        return postgresql.insert(OUTCOMES).on_conflict_do_nothing(index_elements=SEED_KEY)
    return sqlite.insert(OUTCOMES).on_conflict_do_nothing(index_elements=SEED_KEY)


class KnowledgeStore:
    """The seed outcomes of all runs, in one database (SQLite or PostgreSQL).

    Open with ``KnowledgeStore.open(url)``; use as a context manager or ``close()`` it. Every
    method is one transaction. Any database failure is a ``KnowledgeStoreError`` naming the URL.
    """

    def __init__(self, engine: Engine, shown: str) -> None:
        """Use ``open``; ``shown`` is the URL with its password hidden, for messages."""
        self._engine = engine
        self.url = shown
        """The store's URL, password hidden."""

    @classmethod
    def open(cls, url: str, create: bool = True) -> KnowledgeStore:
        """Connect, creating the database (an SQLite file and its directory) and applying
        missing migrations; an SQLite store is then put in WAL mode, so readers proceed beside
        a writer (a foreign file is refused before anything in it changes).

        Args:
            url: A SQLAlchemy URL (``sqlite:///PATH``, ``postgresql://USER@HOST/DB``).
            create: create the store (an SQLite file, or Esper's tables in an empty server
                database) where it does not exist; False: refuse it, creating nothing, as a
                reader that would find nothing there should.

        Raises:
            KnowledgeURLError: a malformed or unsupported URL.
            KnowledgeStoreMissing: ``create`` is False and the store does not exist.
            KnowledgeStoreError: unreachable, not a database, foreign tables, or a schema
                newer than this code.
        """
        store = cls._connected(url, create)
        try:
            try:  # the schema is current: read it beside a writer, not after its lock
                store._transaction(lambda conn: _migrate(conn, store.url, create, False), True)
            except _WriteNeeded:
                store._transaction(lambda conn: _migrate(conn, store.url, create))
            if store._engine.dialect.name == "sqlite":
                store._use_wal()
        except KnowledgeStoreError as err:
            store.close()
            if "readonly database" in str(err):  # SQLite's words for a file or folder it
                raise KnowledgeStoreError(  # cannot write in (its journal lives beside it)
                    f"{err} (Esper opens its store for writing, readers too: the file and its "
                    "directory must be writable, as SQLite keeps its -wal and -shm files there)"
                ) from None
            raise
        return store

    @classmethod
    def _connected(cls, url: str, create: bool) -> KnowledgeStore:
        """A store on ``url``'s engine, its schema not yet read (``open`` and ``check``).

        Raises:
            KnowledgeURLError: a malformed or unsupported URL.
            KnowledgeStoreMissing: ``create`` is False and the SQLite file does not exist.
            KnowledgeStoreError: the engine cannot be made (e.g. a missing driver).
        """
        parsed = parse_url(url)
        sqlite_file = _sqlite_file(parsed)
        shown = shown_store(parsed)
        if sqlite_file is not None and not create and not sqlite_file.exists():
            _refuse_uncreatable(sqlite_file, shown)  # "does not exist yet" must mean "can"
            raise KnowledgeStoreMissing(f"knowledge store {shown} {NOTHING_RECORDED}")
        if sqlite_file is not None:
            _refuse_special_file(sqlite_file, shown)
        try:
            if sqlite_file is not None:
                sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            engine = _engine(parsed)
        except (OSError, SQLAlchemyError) as err:  # SQLAlchemyError: e.g. a missing driver
            raise KnowledgeStoreError(f"knowledge store {shown}: {_reason(err)}") from None
        return cls(engine, shown)

    @classmethod
    def check(cls, url: str) -> None:
        """That ``url`` names a store Esper can use, changing nothing: ``open``'s checks and
        migrations run in a transaction that is rolled back, and an SQLite file keeps its
        journal mode; every outcome is read, as a bandit selector reads its host's (a damaged
        page or an invalid row passed, and each trial then warned into Ray's worker logs and
        started without priors). A store that does not exist yet passes (its first writer
        creates it).

        Raises:
            KnowledgeURLError: a malformed or unsupported URL.
            KnowledgeStoreError: unreachable, not a database, foreign tables, a schema newer
                than this code, a damaged file, or a row that is no valid outcome.
        """
        try:
            store = cls._connected(url, create=False)
        except KnowledgeStoreMissing:
            return

        def attempt() -> None:
            with store._engine.connect() as conn:
                transaction = conn.begin()
                try:
                    _migrate(conn, store.url, create=False)
                    for row in conn.execute(_outcomes_query()):  # damaged pages, bad rows
                        store._outcome(row._asdict())
                finally:
                    transaction.rollback()

        try:
            store._retrying(attempt)
        except KnowledgeStoreMissing:
            pass
        finally:
            store.close()

    def _use_wal(self) -> None:
        """Switch an SQLite store to WAL (kept in the file; outside any transaction, which
        SQLite requires for it), retried while another process holds the lock."""

        def switch() -> None:
            raw = self._engine.raw_connection()
            try:
                cursor = raw.cursor()
                if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # a read
                    cursor.execute("PRAGMA journal_mode=WAL")
            finally:
                raw.close()

        self._retrying(switch)

    def record(self, outcomes: Sequence[SeedOutcome], refuse_differing: bool = False) -> int:
        """Add outcomes, in one transaction; a seed already recorded is skipped (the store
        keeps one outcome per seed, the first recorded).

        Args:
            outcomes: what to add.
            refuse_differing: refuse them all where one differs from the store's outcome of
                the same seed (an import of an edited or foreign export), rather than skip it.

        Returns:
            The number of rows added.

        Raises:
            KnowledgeConflict: ``refuse_differing``, and an outcome differs from the store's;
                nothing was added.
        """
        now = datetime.now(UTC)
        rows = [{**flatten(o), "recorded_at": now} for o in outcomes]
        if not rows:
            return 0

        def work(conn: Connection) -> int:
            # RETURNING: a skipped seed returns no row (psycopg's rowcount here is -1).
            statement = _insert_new(conn.dialect.name).returning(OUTCOMES.c.id)
            added, differing = 0, []
            for outcome, row in zip(outcomes, rows, strict=True):
                if conn.execute(statement, row).all():
                    added += 1
                elif refuse_differing:
                    stored = self._stored(conn, outcome)
                    differing += [(outcome, stored)] if differences(outcome, stored, "") else []
            if differing:  # raised inside the transaction: it rolls back
                raise KnowledgeConflict(_conflict(self.url, differing))
            return added

        return self._transaction(work)

    def _stored(self, conn: Connection, outcome: SeedOutcome) -> SeedOutcome:
        """The store's outcome of ``outcome``'s seed (``SEED_KEY``), which it holds."""
        where = [OUTCOMES.c[key] == getattr(outcome, key) for key in SEED_KEY]
        return self._outcome(conn.execute(_outcomes_query().where(*where)).one()._asdict())

    def outcomes(self, host: HostSignature | None = None) -> list[SeedOutcome]:
        """The recorded outcomes, oldest first.

        Args:
            host: Only outcomes on hosts with this signature's task, topology and width (its
                parameter count is not compared); None: all.
        """
        query = _outcomes_query(host)
        return self._transaction(
            lambda conn: [self._outcome(row._asdict()) for row in conn.execute(query)], True
        )

    def _outcome(self, row: Mapping[str, Any]) -> SeedOutcome:
        """A stored row as its outcome; a row no Esper of today would write (an earlier
        version stored unchecked values) is a store problem naming the row."""
        try:
            return unflatten(row)
        except ValueError as err:
            raise KnowledgeStoreError(
                f"knowledge store {self.url}: row id {row.get('id')} is not a valid seed "
                f"outcome ({err}); delete it, or reset the store"
            ) from None

    def reset(self) -> int:
        """Delete every outcome (the schema stays). Returns the number deleted."""
        return self._transaction(lambda conn: conn.execute(delete(OUTCOMES)).rowcount)

    def close(self) -> None:
        """Close the store's connections."""
        self._engine.dispose()

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _transaction(self, work: Callable[[Connection], T], reading: bool = False) -> T:
        """Run ``work`` in one transaction (``_retrying``), deferred where it only ``reading``
        (see the module docstring)."""

        def attempt() -> T:
            with self._engine.connect() as conn:
                conn.execution_options(**{_READING: reading})  # set on ``conn`` itself
                with conn.begin():
                    return work(conn)

        return self._retrying(attempt)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, retried while SQLite says another process holds the lock (up to
        ``LOCKED_RETRY_S``); database failures become ``KnowledgeStoreError``."""
        deadline, delay = time.monotonic() + LOCKED_RETRY_S, 0.01
        while True:
            try:
                return attempt()
            except (OperationalError, sqlite3.OperationalError) as err:
                why = f"knowledge store {self.url}: {_reason(err)}"
                if not _locked(err):
                    raise KnowledgeStoreError(why) from err
                if time.monotonic() + delay > deadline:  # it said only "database is locked"
                    raise KnowledgeStoreError(
                        f"{why}: another process held its write lock for {LOCKED_RETRY_S:g} "
                        "s; try again once it has finished"
                    ) from err
            except (SQLAlchemyError, sqlite3.Error) as err:
                raise KnowledgeStoreError(f"knowledge store {self.url}: {_reason(err)}") from err
            time.sleep(delay)
            delay = min(2 * delay, 0.5)


def seed_name(outcome: SeedOutcome) -> str:
    """Which seed an outcome is of (``SEED_KEY``), for people."""
    slot, epoch = outcome.slot, outcome.germinated_epoch
    return f"run {outcome.run_id}'s seed in slot {slot} germinated after epoch {epoch}"


def differences(a: SeedOutcome, b: SeedOutcome, other: str) -> str:
    """How outcome ``a`` differs from ``b``: "stage 'FOSSILIZED' (other: 'PRUNED'); ..." ("":
    the same, field by field, NaN equal to NaN)."""
    mine, theirs = flatten(a), flatten(b)
    shown = [
        f"{name} {mine[name]!r} ({other}: {theirs[name]!r})"
        for name in OUTCOME_COLUMNS
        if json.dumps(mine[name]) != json.dumps(theirs[name])
    ]
    return "; ".join(shown)


def _conflict(url: str, differing: list[tuple[SeedOutcome, SeedOutcome]]) -> str:
    outcome, stored = differing[0]
    more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
    return (
        f"knowledge store {url}: {len(differing)} outcome(s) differ from the store's for the "
        f"same seed: {seed_name(outcome)}{more}: {differences(outcome, stored, 'stored')}; "
        "nothing recorded (the store keeps one outcome per seed: reset it, or give another "
        "store)"
    )


def record_outcomes(
    url: str | None, outcomes: Sequence[SeedOutcome], warn: Callable[[str], None]
) -> bool:
    """Record a finished run's outcomes; never raises for a store problem.

    Args:
        url: The store (None: ``default_url()``).
        outcomes: The run's seed outcomes (none: nothing is opened).
        warn: Told one line, naming the URL, when the store cannot be used.

    Returns:
        Whether the outcomes are in the store.
    """
    if not outcomes:
        return True
    try:  # the default URL too: its cache directory may not be UTF-8 text
        with KnowledgeStore.open(default_url() if url is None else url) as store:
            store.record(outcomes)
    except (KnowledgeURLError, KnowledgeStoreError) as err:
        warn(
            f"{err}{url_origin(url)}; the run's {len(outcomes)} seed outcome(s) were not "
            "recorded (they stay in its outcomes.json: `esper knowledge import RUN`)"
        )
        return False
    return True


def elsewhere(url: str | None, host: HostSignature) -> str | None:
    """Where a bandit selector that found no outcome on ``host`` could have: the store's
    outcomes of ``host``'s task on other hosts (another width or topology), which it does not
    learn from, in a sentence; None where there are none, or the store cannot be read (its
    reading warned already)."""
    try:
        with KnowledgeStore.open(default_url() if url is None else url, create=False) as store:
            shown = store.url
            found = [o.host for o in store.outcomes() if o.host.task == host.task]
    except (KnowledgeURLError, KnowledgeStoreError):
        return None
    if not found:
        return None
    counts = Counter((h.topology, h.width) for h in found)
    hosts = ", ".join(
        f"{n:,} at {topology} width {width}" for (topology, width), n in sorted(counts.items())
    )
    return (
        f"the knowledge store {shown} holds no seed outcome of {host.task} at {host.topology} "
        f"width {host.width}, the selector's host, but {hosts}: a selector learns from its own "
        "host's only"
    )


def priors_receipt(url: str | None, outcomes: Sequence[SeedOutcome]) -> dict[str, Any]:
    """What ``meta.json`` records of a bandit selector's priors (``outcomes_for``): how many,
    how many of them are decided (``scored``: fossilized or pruned, the ones a selector learns
    from; a seed alive when its run ended is not), their SHA-256 (of their JSON, in order) and
    the store they came from (password hidden): the store grows with every run, so the same
    command starts from other outcomes later. ``url`` opened (the outcomes came from it), so it
    parses."""
    url = default_url() if url is None else url
    shown = shown_url(make_url(url))
    text = json.dumps([asdict(o) for o in outcomes], sort_keys=True, allow_nan=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    scored = sum(outcome_score(o) is not None for o in outcomes)
    return {"outcomes": len(outcomes), "scored": scored, "sha256": digest, "store": shown}


def outcomes_for(
    url: str | None, host: HostSignature, warn: Callable[[str], None]
) -> list[SeedOutcome]:
    """The outcomes of earlier runs on ``host`` (see ``KnowledgeStore.outcomes``); never raises
    for a store problem.

    Args:
        url: The store (None: ``default_url()``).
        host: The host whose task, topology and width must match.
        warn: Told one line, naming the URL, when the store cannot be used.

    Returns:
        The outcomes, oldest first; empty when the store cannot be used.
    """
    try:
        with KnowledgeStore.open(default_url() if url is None else url) as store:
            return store.outcomes(host)
    except (KnowledgeURLError, KnowledgeStoreError) as err:
        warn(f"{err}{url_origin(url)}; starting without earlier runs' outcomes")
        return []
