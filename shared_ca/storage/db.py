"""Engine set-up for SQLite (embedded default) and PostgreSQL, and migrations to head."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from shared_ca.errors import Unavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WRITE = {"gateway_write": True}
SQLITE_BUSY_TIMEOUT_MS = 30_000
_PG_MIGRATION_LOCK = 0x5CE9E57  # advisory lock key: one node migrates at a time


def sqlite_url(path: Path) -> str:
    """The database URL of a SQLite file."""
    return f"sqlite:///{path}"


def validate_database_url(url: str) -> str | None:
    """None when `url` names a supported backend, else what is wrong with it."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return f"{url!r} is not a database URL (sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        return f"unsupported database driver {parsed.drivername!r}: use sqlite or postgresql+psycopg"
    return None


def redact_url(url: str) -> str:
    """The database URL with its password masked, for display."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def create_store_engine(url: str, *, pool_size: int = 5, connect_args: dict[str, Any] | None = None) -> Engine:
    """An Engine configured for concurrent use by several threads and processes."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, **(connect_args or {})})
        _configure_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_pre_ping=True,
        connect_args=connect_args or {},
    )


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the database to WAL (persistent; a no-op once done).

    Switching a new database needs an exclusive lock, and SQLite answers "database is locked" at
    once instead of applying the busy timeout, so two processes opening a new file together would
    fail: retry until the busy timeout is spent.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        # Take BEGIN into our own hands (see _on_begin); pysqlite's implicit BEGIN is DEFERRED.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock up front: a DEFERRED one that upgrades later can
        # fail with SQLITE_BUSY without waiting, which would lose an enrollment under concurrency.
        if conn.get_execution_options().get("gateway_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class SqliteWriterGate:
    """Queues the writers of one SQLite database: threads on a lock, processes on an flock.

    SQLite lets one writer in at a time; one that finds the lock taken sleeps in SQLite's busy
    handler with growing back-off (1, 2, 5, 10 ... 100 ms), which leaves the CPU idle and the p99
    high under load. The kernel wakes an flock waiter the moment the lock is released. The lock file
    sits beside the database; without one (":memory:", an unwritable directory) only threads queue.
    """

    def __init__(self, database: str | None) -> None:
        self._threads = threading.RLock()
        self._path = f"{database}-writers.lock" if database and database != ":memory:" else None
        self._fd: int | None = None
        self._pid = 0
        self._depth = 0

    def _descriptor(self) -> int | None:
        if self._path is None:
            return None
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                self._path = None
                return None
            self._fd, self._pid = fd, os.getpid()
            weakref.finalize(self, os.close, fd)
        return self._fd

    def __enter__(self) -> None:
        self._threads.acquire()
        self._depth += 1
        if self._depth == 1:
            try:
                fd = self._descriptor()
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                self._depth -= 1
                self._threads.release()
                raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._depth == 1 and self._fd is not None and self._path is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._depth -= 1
            self._threads.release()


def writer_gate(engine: Engine) -> AbstractContextManager[None]:
    """What write transactions on `engine` pass through: a SqliteWriterGate for SQLite, nothing else."""
    if engine.dialect.name == "sqlite":
        return SqliteWriterGate(engine.url.database)
    return nullcontext()


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None when it was never migrated); Unavailable when unreachable."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise Unavailable("the database is unavailable", detail=f"cannot reach the database: {exc}") from exc


def migrate_to_head(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to run from several nodes at once."""
    try:
        _migrate_to_head(engine)
    except (OperationalError, InterfaceError) as exc:
        raise Unavailable("the database is unavailable", detail=f"cannot migrate the database: {exc}") from exc


def _migrate_to_head(engine: Engine) -> None:
    cfg = _alembic_config()
    with engine.connect().execution_options(**WRITE) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()


def require_schema_at_head(engine: Engine) -> None:
    """Refuse to serve from a database that `gateway init` (or an upgrade) has not migrated."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise Unavailable(
            "database schema is not current",
            detail=f"database is at revision {current or 'none'}, code expects {head}: run `gateway db upgrade`",
        )
