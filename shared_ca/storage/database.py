"""One database as the repositories see it: read and write scopes over an Engine, with its gates.

Every repository (issuers, certificates, CRLs, audit, enrollments, devices, ...) takes a Database
and opens one scope per public call: `read()` for look-ups, `write()` for one transaction.

The read-scope rule: `reading()` lends one connection and one read transaction to every read on
the same engine in this thread, so the several look-ups of a request cost one pool checkout. Writes
inside it still take their own connection. On SQLite the reads inside see one snapshot, taken at the
first read: a read of what a write inside the scope committed sees the state before that write.
Hence a request's look-ups share a scope that closes before the write that issues, so that a lost
race (TransactionExists) reads the winner afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared_ca.errors import Unavailable
from shared_ca.storage.db import WRITE, describe_database_error, engine_gates

# The connection a `Database.reading()` scope lends to every read on the same engine in this thread.
_SHARED_READ: ContextVar[tuple[Engine, Connection] | None] = ContextVar("gateway_shared_read", default=None)
# The connection of the innermost `Database.write()` scope of this thread, and what is to run once it commits.
_AFTER_COMMIT: ContextVar[tuple[Connection, list[Callable[[], None]]] | None] = ContextVar(
    "gateway_after_commit", default=None
)


def after_commit(conn: Connection, action: Callable[[], None]) -> bool:
    """Run `action` once the `Database.write()` transaction of `conn` has committed, never when it rolls
    back (after the writer gate is released; an exception of `action` is the caller's to prevent). False,
    and nothing is run, when `conn` is not the connection of this thread's innermost write scope."""
    scope = _AFTER_COMMIT.get()
    if scope is None or scope[0] is not conn:
        return False
    scope[1].append(action)
    return True


def _unavailable(exc: DBAPIError | PoolTimeout) -> Unavailable:
    """The refusal for a failed statement or connection: a short cause, never the SQL, its parameters
    (hashes, secrets, client text) or row values, which SQLAlchemy's own message holds."""
    return Unavailable("the certificate store is unavailable", detail=f"database error: {describe_database_error(exc)}")


def _drop_if_read_only(conn: Connection, exc: DBAPIError) -> None:
    """Discard a connection that found its database read-only: SQLite keeps that state for the life of
    the connection even once the file or its directory is writable again, so the next checkout opens a
    new one and sees the database as it is then."""
    message = str(exc.orig).lower()
    if "readonly" in message or "read-only" in message:
        conn.invalidate()


class Database:
    """Read and write scopes over one Engine. Thread-safe; holds nothing but the engine and its gates.

    `read` and `write` turn every driver error into Unavailable, except IntegrityError: the
    repositories translate the constraints they expect into their own refusals (Conflict,
    TransactionExists).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        gates = engine_gates(engine)  # shared by every Database on this engine
        self._writers = gates.writers  # SQLite: writers queue instead of polling (see SqliteWriterGate)
        self._connections = gates.connections  # no pool checkout waits on itself (see ConnectionGate)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for look-ups: the `reading()` scope's when one is open, else one of its own."""
        shared = _SHARED_READ.get()
        if shared is not None and shared[0] is self.engine:
            try:
                yield shared[1]
            except IntegrityError:
                raise
            except (DBAPIError, PoolTimeout) as exc:
                raise _unavailable(exc) from None
            return
        try:
            with self._connections(), self.engine.connect() as conn:
                yield conn
        except IntegrityError:
            raise
        except (DBAPIError, PoolTimeout) as exc:
            raise _unavailable(exc) from None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Run every read inside on one connection and one read transaction (this thread only; see the
        module docstring for what the reads inside see)."""
        shared = _SHARED_READ.get()
        if shared is not None and shared[0] is self.engine:
            yield
            return
        with self.read() as conn:
            token = _SHARED_READ.set((self.engine, conn))
            try:
                yield
            finally:
                _SHARED_READ.reset(token)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed when the block ends (SQLite: behind the writer gate); then
        what `after_commit` queued for it runs."""
        committed: list[Callable[[], None]] = []
        try:
            with (
                self._connections(),
                self._writers,
                self.engine.connect().execution_options(**WRITE) as conn,
            ):
                token = _AFTER_COMMIT.set((conn, committed))
                try:
                    with conn.begin():
                        try:
                            yield conn
                        except DBAPIError as exc:
                            _drop_if_read_only(conn, exc)
                            raise
                except BaseException as exc:
                    committed.clear()
                    if isinstance(exc, DBAPIError) and not conn.invalidated:  # BEGIN or COMMIT found it read-only
                        _drop_if_read_only(conn, exc)
                    raise
                finally:
                    _AFTER_COMMIT.reset(token)
        except IntegrityError:
            raise
        except (DBAPIError, PoolTimeout) as exc:
            raise _unavailable(exc) from None
        for action in committed:
            action()

    def ping(self) -> None:
        """Raise Unavailable unless the database answers."""
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def check_writable(self) -> None:
        """Raise Unavailable unless the database takes a write now (not a read-only SQLite file or
        directory, not a PostgreSQL standby or read-only session). The write is real, or a read-only
        file system would only show at the next commit: one row rewritten with its own value."""
        with self.write() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))

    def dispose(self) -> None:
        """Close the engine's pooled connections (before a fork, at shutdown, after a failed start)."""
        self.engine.dispose()
