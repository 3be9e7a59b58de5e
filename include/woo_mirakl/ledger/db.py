"""The ledger's database: its URL from the Airflow connection, engines, and safe schema creation.

SQLite (the default) runs in WAL mode with a busy timeout, and every writing transaction starts
with ``BEGIN IMMEDIATE`` so concurrent Airflow tasks queue for the write lock instead of failing
with "database is locked" when a read turns into a write. PostgreSQL serialises schema creation
with an advisory lock. Passwords never leave this module in clear: use `safe_url`.
"""
from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, make_url, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError

from include.woo_mirakl.ledger.models import Base, SchemaVersion

SCHEMA_VERSION = 2


def _actions_attempt_times(conn: Connection) -> None:
    timestamp = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    conn.exec_driver_sql(f"ALTER TABLE actions ADD COLUMN last_attempt_at {timestamp}")
    conn.exec_driver_sql("ALTER TABLE actions ADD COLUMN generation INTEGER NOT NULL DEFAULT 1")
    conn.exec_driver_sql("UPDATE actions SET last_attempt_at = started_at")


# Upgrades from version N-1 to N, keyed by N; a fresh database gets the current models directly.
_UPGRADES: dict[int, tuple[str, Callable[[Connection], None]]] = {
    2: ("actions: last attempt time and generation", _actions_attempt_times),
}

WRITE_OPTION = "woo_mirakl_ledger_write"
SQLITE_BUSY_TIMEOUT_MS = 60_000
_PG_SCHEMA_LOCK_KEY = 0x57_4D_4C_44  # "WMLD": any constant shared by every process of the project
_SUPPORTED_BACKENDS = ("sqlite", "postgresql")


class LedgerError(Exception):
    """Base class of the ledger's own errors."""


class LedgerUnavailableError(LedgerError):
    """The ledger database cannot be reached or opened (the message never holds the password)."""


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable ledger URL>"


def ledger_url_from_connection(conn: Any) -> str:
    """SQLAlchemy URL of the ledger from an Airflow connection.

    ``extra.sqlalchemy_url`` wins; otherwise ``sqlite`` connections name the database file in
    ``host`` (an absolute path; Airflow's URI parser puts it in ``schema``), and ``postgres``
    connections give host, port, login, password and the database name in ``schema``.
    """
    extra = conn.extra_dejson or {}
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    conn_type = (conn.conn_type or "").lower()
    if conn_type == "sqlite":
        path = conn.host or conn.schema
        if not path or not os.path.isabs(path):
            raise LedgerError(
                f"connection {conn.conn_id!r}: an sqlite ledger needs the absolute path of its file in host, got {path!r}"
            )
        return f"sqlite:///{path}"
    if conn_type in ("postgres", "postgresql"):
        if not conn.host or not conn.schema:
            raise LedgerError(f"connection {conn.conn_id!r}: a postgres ledger needs host and schema (the database name)")
        query = {"sslmode": str(extra["sslmode"])} if extra.get("sslmode") else {}
        url = URL.create(
            "postgresql+psycopg2",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host,
            port=conn.port or 5432,
            database=conn.schema,
            query=query,
        )
        return url.render_as_string(hide_password=False)
    raise LedgerError(
        f"connection {conn.conn_id!r}: unsupported ledger connection type {conn.conn_type!r} "
        "(use sqlite or postgres, or set extra.sqlalchemy_url)"
    )


def create_ledger_engine(url: str) -> Engine:
    """A new engine for the ledger at `url`, tuned for concurrent tasks; does not touch the schema."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise LedgerError("the ledger URL is not a valid SQLAlchemy URL") from None
    if parsed.get_backend_name() not in _SUPPORTED_BACKENDS:
        raise LedgerError(f"unsupported ledger database {safe_url(parsed)!r}: use sqlite or postgresql")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _tune_sqlite(engine)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=3)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own implicit BEGIN is replaced by ours (below), so writers can ask for IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def writer(engine: Engine) -> Engine:
    """The same engine, but its transactions take SQLite's write lock up front."""
    return engine.execution_options(**{WRITE_OPTION: True})


def ensure_schema(engine: Engine) -> None:
    """Create or upgrade the schema; safe when several processes start at the same moment."""
    try:
        if engine.dialect.name == "sqlite":
            # Switching to WAL needs an exclusive lock that SQLite's busy handler does not always wait
            # for, so first use of a file is serialised by a lock file beside it (one machine).
            with _file_lock(engine.url.database):
                _enable_wal(engine)
                _create_or_upgrade(engine)
        else:
            _create_or_upgrade(engine)
    except DBAPIError as exc:
        raise _unavailable(engine, exc) from None


def _enable_wal(engine: Engine) -> None:
    # Outside any transaction (SQLite refuses the switch inside one); WAL then persists in the file.
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA journal_mode = WAL")
    finally:
        raw.close()


@contextmanager
def _file_lock(database: str | None) -> Iterator[None]:
    if not database or database == ":memory:":
        yield
        return
    with open(f"{os.path.abspath(database)}.init-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_or_upgrade(engine: Engine) -> None:
    if _current_version(engine) == SCHEMA_VERSION:
        return
    with writer(engine).connect() as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_SCHEMA_LOCK_KEY})")
        _migrate(conn)


def _current_version(engine: Engine) -> int | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table(SchemaVersion.__tablename__):
            return None
        return conn.scalar(select(func.max(SchemaVersion.version)))


def _migrate(conn: Connection) -> None:
    # Under the lock: another process may have finished the work while we waited.
    version = None
    if inspect(conn).has_table(SchemaVersion.__tablename__):
        version = conn.scalar(select(func.max(SchemaVersion.version)))
    if version is None:
        Base.metadata.create_all(conn)
        conn.execute(SchemaVersion.__table__.insert().values(version=SCHEMA_VERSION, description="initial schema"))
        return
    if version > SCHEMA_VERSION:
        raise LedgerError(f"the ledger schema is at version {version}, newer than this code ({SCHEMA_VERSION})")
    for step in range(version + 1, SCHEMA_VERSION + 1):
        description, upgrade = _UPGRADES[step]
        upgrade(conn)
        conn.execute(SchemaVersion.__table__.insert().values(version=step, description=description))


def _unavailable(engine: Engine, exc: DBAPIError) -> LedgerUnavailableError:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    password = engine.url.password
    if password:
        reason = reason.replace(str(password), "***")
    return LedgerUnavailableError(f"cannot open the ledger at {safe_url(engine.url)}: {reason}")


_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def engine_for_url(url: str) -> Engine:
    """The process's one engine for `url`, with the schema ensured on first use."""
    key = (os.getpid(), url)  # engines must not cross a fork
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_ledger_engine(url)
            ensure_schema(engine)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Close every cached engine of this process (tests, and before dropping a database)."""
    with _engines_lock:
        for (pid, _url), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
        _engines.clear()
