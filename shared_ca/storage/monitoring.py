"""What monitoring reads of the database (gateway.metrics): small counts computed by the database, and a
hook that reports every failed statement or connection of an engine.

Nothing here writes. The counts are GROUP BY queries over small tables (the approval queue, the lockout
counters), read at scrape time and cached by the caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, case, event, func, select
from sqlalchemy.engine import ExceptionContext

from shared_ca.storage.database import Database
from shared_ca.storage.schema import approval_requests, challenge_failures

LOCK_COUNTERS = ("challenge", "device", "address", "profile")
"""The kinds of lockout counter (scep.lockout names each key `<kind>:...`)."""

# PEP 249's exception classes, most specific first: a driver's own subclass (psycopg.errors.UndefinedTable)
# is reported as the PEP 249 class it derives from, so the names stay a small, fixed set.
DBAPI_ERRORS = (
    "IntegrityError",
    "OperationalError",
    "ProgrammingError",
    "DataError",
    "InternalError",
    "NotSupportedError",
    "InterfaceError",
    "DatabaseError",
    "Error",
)


@dataclass(frozen=True)
class PendingApprovals:
    """The requests of one protocol and profile waiting in the queue: for an administrator (`deferred`
    False) or for a free worker slot (`deferred` True, shared_ca.admission)."""

    protocol: str
    profile: str
    deferred: bool
    requests: int
    oldest: dt.datetime


@dataclass(frozen=True)
class ActiveLocks:
    """How many lockout counters of one kind hold a lock now."""

    counter: str
    keys: int


class MonitoringQueries:
    """Read-only counts for monitoring."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def pending_approvals(self) -> list[PendingApprovals]:
        """The pending requests, counted per protocol, profile and kind, with the oldest one's time."""
        a = approval_requests.c
        query = (
            select(a.protocol, a.profile, a.deferred, func.count(), func.min(a.created_at))
            .where(a.status == "pending")
            .group_by(a.protocol, a.profile, a.deferred)
        )
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [
            PendingApprovals(str(protocol), str(profile), bool(deferred), int(count), _utc(oldest))
            for protocol, profile, deferred, count, oldest in rows
        ]

    def active_locks(self, now: dt.datetime) -> list[ActiveLocks]:
        """The lockout counters locked at `now`, counted per kind (LOCK_COUNTERS; 'other' for a key of
        no known kind)."""
        f = challenge_failures.c
        kind = case(*((f.key.startswith(f"{name}:"), name) for name in LOCK_COUNTERS), else_="other")
        query = select(kind, func.count()).where(f.locked_until > now).group_by(kind)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [ActiveLocks(str(name), int(count)) for name, count in rows]


def _utc(value: object) -> dt.datetime:
    """A timestamp an aggregate returned: UTCDateTime's type is lost through min(), so SQLite gives text."""
    if isinstance(value, dt.datetime):
        moment = value
    else:
        moment = dt.datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def dbapi_error_name(exc: BaseException) -> str:
    """The PEP 249 class of a driver's exception ('OperationalError', ...); 'Error' when it is none."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return next((name for name in DBAPI_ERRORS if name in names), "Error")


def watch_errors(engine: Engine, report: Callable[[str], None]) -> None:
    """Call `report` with the PEP 249 class name of every statement or connection of `engine` that fails,
    connection attempts included. Left out: constraint violations (IntegrityError: the repositories
    expect them and settle races with them) and a pooled connection found dead by its pre-ping (the
    pool replaces it and the statement runs)."""

    def _failed(context: ExceptionContext) -> None:
        if context.is_pre_ping:
            return
        name = dbapi_error_name(context.original_exception)
        if name != "IntegrityError":
            report(name)

    event.listen(engine, "handle_error", _failed)
