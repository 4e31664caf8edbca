"""Engine set-up for SQLite (embedded default) and PostgreSQL, and migrations to head."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from shared_ca.errors import CAError, Conflict, Unavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WRITE = {"gateway_write": True}
SQLITE_BUSY_TIMEOUT_MS = 30_000
POOL_SIZE = 5  # connections a worker keeps open; twice as many more while busy (create_store_engine)
POOL_TIMEOUT_SECONDS = 30.0  # how long a statement waits for a connection before the store is unavailable
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


# -- failures: what the driver said, without the statement, its parameters or row values -----------

_MAX_CAUSE = 200
# PostgreSQL SQLSTATE classes and codes (PostgreSQL manual, appendix A) an operator can act on.
_POSTGRES_CAUSES = {
    "25006": "the database is read-only",
    "42501": "the database user lacks a privilege",
    "42P01": "the database schema is not current (a table is missing)",
    "42703": "the database schema is not current (a column is missing)",
    "08": "the connection to the database failed",
    "23": "a database constraint refused the change",
    "28": "the database refused the credentials",
    "3D": "the database does not exist",
    "40": "the database rolled the transaction back (serialization failure or deadlock)",
    "53": "the database server is out of resources",
    "57": "the database server stopped the operation (shutting down or cancelled)",
    "58": "the database server has a system error",
}


def _is_psycopg(error: BaseException) -> bool:
    """A psycopg error, told without importing psycopg (SQLAlchemy loads it for PostgreSQL URLs only)."""
    return type(error).__module__.partition(".")[0] == "psycopg"


def _first_line(text: str) -> str:
    line = text.strip().split("\n", 1)[0].strip()
    return line if len(line) <= _MAX_CAUSE else line[: _MAX_CAUSE - 1] + "…"


def _describe_sqlite(error: sqlite3.Error) -> str:
    # SQLite's own messages name tables, columns and constraints ("UNIQUE constraint failed: t.c",
    # "attempt to write a readonly database"), never a bound value.
    name = getattr(error, "sqlite_errorname", None)
    message = _first_line(str(error))
    return f"{message} ({name})" if name else message


def _describe_postgres(error: BaseException, sqlstate: str | None) -> str:
    if sqlstate is None:
        # No server answer: libpq's connection message names the host and port, never a statement.
        return _first_line(str(error))
    cause = _POSTGRES_CAUSES.get(sqlstate) or _POSTGRES_CAUSES.get(sqlstate[:2]) or "database error"
    # The server's message may quote a value ('invalid input syntax for type integer: "…"', or a key in
    # DETAIL): only the error's class, its SQLSTATE and a constraint's name are shown.
    constraint = getattr(getattr(error, "diag", None), "constraint_name", None)
    named = f" {constraint}" if constraint else ""
    return f"{cause}{named} ({type(error).__name__}, SQLSTATE {sqlstate})"


def describe_database_error(exc: BaseException) -> str:
    """A short cause of a database failure, for a log line or an operator: the driver's error name and
    message where they cannot hold data, never the SQL statement, its parameters or row values."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(orig, sqlite3.Error):
        return _describe_sqlite(orig)
    if _is_psycopg(orig):
        return _describe_postgres(orig, getattr(orig, "sqlstate", None))
    if isinstance(exc, PoolTimeout):
        return "no database connection became free in time (pool timeout)"
    if isinstance(exc, StatementError) and exc.orig is not None:
        return f"the statement could not be run ({type(exc.orig).__name__})"
    return type(exc).__name__


def database_failure(exc: BaseException, public_message: str = "the database is unavailable") -> CAError | None:
    """The project's error for a database failure, None when `exc` is none: Conflict for a constraint
    the change violates, Unavailable for anything else; its detail is `describe_database_error`."""
    if not (isinstance(exc, (SQLAlchemyError, sqlite3.Error)) or _is_psycopg(exc)):
        return None
    detail = describe_database_error(exc)
    if any(cls.__name__ == "IntegrityError" for cls in type(exc).__mro__):  # SQLAlchemy's, sqlite3's, psycopg's
        return Conflict("the change conflicts with what the database holds", detail=detail)
    return Unavailable(public_message, detail=detail)


def create_store_engine(
    url: str,
    *,
    pool_size: int = POOL_SIZE,
    pool_timeout: float = POOL_TIMEOUT_SECONDS,
    connect_args: dict[str, Any] | None = None,
) -> Engine:
    """An Engine configured for concurrent use by several threads, greenlets and processes.

    Its pool keeps `pool_size` connections and opens twice as many more while busy; its ConnectionGate
    (engine_gates) lets `pool_size` scopes use them at once, so no checkout waits on itself. Its errors
    never show the statement's parameters (password hashes, secrets, client text), even in a traceback
    of an error nobody translated: SQLAlchemy's `hide_parameters`.
    """
    parsed = make_url(url)
    pool = {"pool_size": pool_size, "max_overflow": pool_size * 2, "pool_timeout": pool_timeout}
    if parsed.get_backend_name() == "sqlite":
        in_memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, **(connect_args or {})},
            hide_parameters=True,
            **({} if in_memory else pool),  # one connection per thread in memory: SQLAlchemy's own pool
        )
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args or {}, hide_parameters=True, **pool)
    _register_gates(engine, pool_timeout)
    return engine


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


class ConnectionGate:
    """Bounds the database work of one engine that may run at once in this process, so that a pool
    checkout never waits on itself.

    A request can hold two connections at once (a `Database.reading()` scope, and a write inside it). In a
    gevent worker a hundred requests reach the database together; once each holds its first connection
    and waits for a second, none finishes, and all of them wait for the pool timeout (30 s) before
    failing. The gate admits at most `permits` outermost scopes; the scopes nested in one (the same
    thread or greenlet) pass freely. With `permits` equal to the pool's size and the pool allowed
    twice as many overflow connections, every admitted scope can hold three connections.
    """

    def __init__(self, permits: int, timeout: float) -> None:
        self._permits = threading.BoundedSemaphore(permits)
        self._timeout = timeout

    @contextmanager
    def __call__(self) -> Iterator[None]:
        held = _GATES_HELD.get()
        if self in held:
            yield
            return
        if not self._permits.acquire(timeout=self._timeout):
            raise PoolTimeout("no database connection became free in time")
        token = _GATES_HELD.set(held | {self})
        try:
            yield
        finally:
            _GATES_HELD.reset(token)
            self._permits.release()


_GATES_HELD: ContextVar[frozenset[ConnectionGate]] = ContextVar("gateway_connection_gates", default=frozenset())


@dataclass(frozen=True)
class EngineGates:
    """What the Databases of one engine share: the writer queue and the connection gate."""

    writers: AbstractContextManager[None]
    connections: Callable[[], AbstractContextManager[None]]


_ENGINE_GATES: weakref.WeakKeyDictionary[Engine, EngineGates] = weakref.WeakKeyDictionary()
_ENGINE_GATES_LOCK = threading.Lock()


def _register_gates(engine: Engine, timeout: float) -> EngineGates:
    writers: AbstractContextManager[None] = (
        SqliteWriterGate(engine.url.database) if engine.dialect.name == "sqlite" else nullcontext()
    )
    pool = engine.pool
    connections: Callable[[], AbstractContextManager[None]] = (
        ConnectionGate(pool.size(), timeout) if isinstance(pool, QueuePool) else nullcontext
    )
    gates = EngineGates(writers, connections)
    with _ENGINE_GATES_LOCK:
        return _ENGINE_GATES.setdefault(engine, gates)


def engine_gates(engine: Engine) -> EngineGates:
    """The gates every Database on `engine` passes (one set per engine, however many use it): a
    SqliteWriterGate for SQLite writers, and a ConnectionGate sized to a queue pool."""
    with _ENGINE_GATES_LOCK:
        gates = _ENGINE_GATES.get(engine)
    return gates if gates is not None else _register_gates(engine, POOL_TIMEOUT_SECONDS)


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
        detail = f"cannot reach the database: {describe_database_error(exc)}"
        raise Unavailable("the database is unavailable", detail=detail) from None


def migrate_to_head(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to run from several nodes at once."""
    try:
        _migrate_to_head(engine)
    except SQLAlchemyError as exc:
        detail = f"cannot migrate the database: {describe_database_error(exc)}"
        raise Unavailable("the database is unavailable", detail=detail) from None


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


class SchemaNotCurrent(Unavailable):
    """The database answers, but its schema is not the one this code expects: no retry mends it."""


def require_schema_at_head(engine: Engine) -> None:
    """Refuse to serve from a database that `gateway init` (or an upgrade) has not migrated."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaNotCurrent(
            "database schema is not current",
            detail=f"database is at revision {current or 'none'}, code expects {head}: run `gateway db upgrade`",
        )
