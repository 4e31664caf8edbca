"""The enrollment repository: events, SCEP transactions, one-time challenges, lockout.

Every rule that must hold across workers and hosts is settled by one statement or one database
transaction: a one-time challenge is spent by a single conditional UPDATE, failures are counted by
an atomic upsert, and a (signer key, transactionID) pair is a unique constraint.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, delete, func, insert, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from shared_ca.errors import Conflict, NotFound
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.database import Database
from shared_ca.storage.enrollment_records import (
    EnrollmentEvent,
    EnrollmentRecord,
    NewScepTransaction,
    ScepTransactionRecord,
    TransactionExists,
    enrollment_record,
    is_transaction_violation,
    write_enrollment_event,
    write_scep_transaction,
)
from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.schema import (
    UTCDateTime,
    certificates,
    challenge_failures,
    enrollment_events,
    scep_challenges,
    scep_transactions,
)


@dataclass(frozen=True)
class ChallengeRecord:
    """A one-time SCEP challenge; only the SHA-256 of its secret is stored."""

    id: int
    secret_sha256: str
    device_id: str | None  # None: any device may use it (NDES-style challenges)
    profile: str
    expected_subject: str | None  # RFC 4514 subject the CSR must carry, when set
    uses_left: int
    expires_at: dt.datetime
    created_at: dt.datetime
    created_by: str


def _challenge(row: RowMapping) -> ChallengeRecord:
    return ChallengeRecord(**{name: row[name] for name in ChallengeRecord.__dataclass_fields__})


def _scep_transaction(row: Mapping[Any, Any]) -> ScepTransactionRecord:
    return ScepTransactionRecord(**{name: row[name] for name in ScepTransactionRecord.__dataclass_fields__})


def _transactions_query() -> Select[tuple[object, ...]]:
    t = scep_transactions
    return select(t, certificates.c.der.label("certificate_der")).select_from(
        t.outerjoin(certificates, certificates.c.id == t.c.certificate_id)
    )


_TRANSACTION_BY_SIGNER = PreparedStatement(
    _transactions_query().where(
        and_(
            scep_transactions.c.signer_key_sha256 == bindparam("signer_key"),
            scep_transactions.c.transaction_id == bindparam("transaction_id"),
        )
    )
)  # read on every SCEP enrollment
# A SCEP request counts against at most four lockout keys (challenge, device, address, profile): a
# fixed set of binds keeps the compiled statement cached, where an expanding IN is rendered again on
# every call. One row: for each bound key, when its lock lifts if it is locked at `now` (else NULL).
LOCK_KEYS = 4  # keys `locks` reads in one statement (a SCEP request counts against at most four)
_LOCK_BINDS = [f"key{i}" for i in range(1, LOCK_KEYS + 1)]
_LOCKS = PreparedStatement(
    select(
        *(
            func.max(case((challenge_failures.c.key == bindparam(name), challenge_failures.c.locked_until))).label(name)
            for name in _LOCK_BINDS
        )
    ).where(
        and_(
            challenge_failures.c.key.in_([bindparam(name) for name in _LOCK_BINDS]),
            challenge_failures.c.locked_until > bindparam("now"),
        )
    )
)


@dataclass(frozen=True)
class FailureCount:
    """A lockout counter after one more failure: failures in its window, and its lock (if any)."""

    failures: int
    locked_until: dt.datetime | None


class Enrollments:
    """What both protocols record about enrollments: events, SCEP transactions, challenges, lockout."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- enrollment events ------------------------------------------------------------------------

    def record_event(self, event: EnrollmentEvent, now: dt.datetime) -> int:
        """Write one enrollment event on its own (a refusal, a GetCACert); its id.

        An issued certificate's event goes through `record_issued(..., enrollment=...)` instead.
        """
        with self.db.write() as conn:
            return write_enrollment_event(conn, event, now)

    def enrollment_events(
        self, *, device_identity: str | None = None, transaction_id: str | None = None, limit: int = 100
    ) -> list[EnrollmentRecord]:
        """The newest enrollment events, newest first."""
        e = enrollment_events.c
        query = select(enrollment_events).order_by(e.id.desc()).limit(limit)
        if device_identity is not None:
            query = query.where(e.device_identity == device_identity)
        if transaction_id is not None:
            query = query.where(e.transaction_id == transaction_id)
        with self.db.read() as conn:
            return [enrollment_record(r) for r in conn.execute(query).mappings().all()]

    # -- SCEP transactions ------------------------------------------------------------------------

    def scep_transaction(self, signer_key_sha256: str, transaction_id: str) -> ScepTransactionRecord | None:
        """The transaction of this signer key and transactionID, with its certificate when issued."""
        with self.db.read() as conn:
            row = _TRANSACTION_BY_SIGNER.first(
                conn, {"signer_key": signer_key_sha256, "transaction_id": transaction_id}
            )
        return _scep_transaction(row) if row else None

    def scep_transaction_by_id(self, scep_transaction_id: int) -> ScepTransactionRecord | None:
        query = _transactions_query().where(scep_transactions.c.id == scep_transaction_id)
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _scep_transaction(row) if row else None

    def record_scep_outcome(
        self, txn: NewScepTransaction, event: EnrollmentEvent, now: dt.datetime
    ) -> ScepTransactionRecord:
        """Record a transaction that issued nothing ('pending', 'failed', 'rejected') with its event.

        Raises TransactionExists (and keeps nothing) when the pair is already recorded.
        """
        if txn.status == "issued":
            raise ValueError("an issued SCEP transaction is recorded with its certificate by record_issued")
        try:
            with self.db.write() as conn:
                row_id = write_scep_transaction(conn, txn, now)
                write_enrollment_event(conn, event, now)
        except IntegrityError as exc:
            if is_transaction_violation(exc):
                raise TransactionExists(txn.signer_key_sha256, txn.transaction_id) from exc
            raise
        return ScepTransactionRecord(
            id=row_id,
            signer_key_sha256=txn.signer_key_sha256,
            transaction_id=txn.transaction_id,
            signer_cert_sha256=txn.signer_cert_sha256,
            message_type=txn.message_type,
            profile=txn.profile,
            status=txn.status,
            certificate_id=None,
            certificate_der=None,
            fail_info=txn.fail_info,
            fail_info_text=txn.fail_info_text,
            request_sha256=txn.request_sha256,
            approval_id=txn.approval_id,
            subject=txn.subject,
            client_address=txn.client_address,
            created_at=now,
            updated_at=now,
        )

    # -- one-time challenges ----------------------------------------------------------------------

    def create_challenge(
        self,
        secret_sha256: str,
        *,
        device_id: str | None,
        profile: str,
        expires_at: dt.datetime,
        created_by: str,
        now: dt.datetime,
        uses: int = 1,
        expected_subject: str | None = None,
    ) -> ChallengeRecord:
        """Store a one-time challenge by the hash of its secret, with an audit event (no secret in it)."""
        if uses < 1:
            raise ValueError("a challenge has at least one use")
        try:
            with self.db.write() as conn:
                row = (
                    conn.execute(
                        insert(scep_challenges)
                        .values(
                            secret_sha256=secret_sha256,
                            device_id=device_id,
                            profile=profile,
                            expected_subject=expected_subject,
                            uses_left=uses,
                            expires_at=expires_at,
                            created_at=now,
                            created_by=created_by,
                        )
                        .returning(*scep_challenges.c)
                    )
                    .mappings()
                    .one()
                )
                detail = {"challenge": row["id"], "device": device_id, "profile": profile, "uses": uses}
                write_audit(conn, AuditEvent(created_by, "scep.challenge.created", detail=detail), now)
        except IntegrityError as exc:
            raise Conflict("this challenge secret is already stored") from exc
        return _challenge(row)

    def usable_challenge(
        self, secret_sha256: str, now: dt.datetime, *, profile: str, device_id: str | None, subject: str | None
    ) -> ChallengeRecord | None:
        """The challenge, if it is unexpired, has a use left and fits the request; None otherwise.

        Nothing is spent here: the use is taken when the request is recorded, in the transaction that
        issues or holds it (NewScepTransaction.spends_challenge), so a request cut off before then
        leaves the challenge as it was.
        """
        c = scep_challenges.c
        query = select(scep_challenges).where(
            and_(
                c.secret_sha256 == secret_sha256,
                c.uses_left > 0,
                c.expires_at > now,
                c.profile == profile,
                or_(c.device_id.is_(None), c.device_id == device_id),
                or_(c.expected_subject.is_(None), c.expected_subject == subject),
            )
        )
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _challenge(row) if row else None

    def challenge(self, secret_sha256: str) -> ChallengeRecord | None:
        """A stored challenge by the hash of its secret (to log why one was not accepted)."""
        with self.db.read() as conn:
            row = (
                conn.execute(select(scep_challenges).where(scep_challenges.c.secret_sha256 == secret_sha256))
                .mappings()
                .first()
            )
        return _challenge(row) if row else None

    def list_challenges(self, now: dt.datetime, *, include_unusable: bool = False) -> list[ChallengeRecord]:
        """The stored challenges, newest first: those with a use left that have not expired at `now`, or
        every one kept (spent and expired ones until housekeeping deletes them) with `include_unusable`."""
        c = scep_challenges.c
        query = select(scep_challenges).order_by(c.created_at.desc(), c.id.desc())
        if not include_unusable:
            query = query.where(c.uses_left > 0, c.expires_at > now)
        with self.db.read() as conn:
            return [_challenge(row) for row in conn.execute(query).mappings()]

    def remove_challenge(self, challenge_id: int, *, actor: str, now: dt.datetime) -> ChallengeRecord:
        """Delete a challenge, whatever uses it has left (a device that will not enroll, a secret that
        leaked), with an audit event; what it was. NotFound when there is none."""
        c = scep_challenges.c
        with self.db.write() as conn:
            row = (
                conn.execute(delete(scep_challenges).where(c.id == challenge_id).returning(*scep_challenges.c))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"no challenge {challenge_id}")
            detail = {"challenge": challenge_id, "device": row["device_id"], "profile": row["profile"]}
            write_audit(
                conn, AuditEvent(actor, "scep.challenge.removed", detail=detail | {"uses_left": row["uses_left"]}), now
            )
        return _challenge(row)

    def purge_challenges(self, cutoff: dt.datetime) -> int:
        """Delete the challenges that expired before `cutoff`, or were spent and created before it; how
        many. Until then a refused reuse is still logged as what it is (ScepService reads `challenge`)."""
        c = scep_challenges.c
        spent = and_(c.uses_left <= 0, c.created_at <= cutoff)
        with self.db.write() as conn:
            return int(conn.execute(delete(scep_challenges).where(or_(c.expires_at <= cutoff, spent))).rowcount)

    # -- lockout ----------------------------------------------------------------------------------

    def record_failure(
        self,
        keys: Iterable[str],
        now: dt.datetime,
        *,
        window: dt.timedelta,
        threshold: int,
        lock_for: dt.timedelta,
    ) -> dt.datetime | None:
        """Count one failure against each key; the time the longest lock lifts, or None when unlocked.

        Failures count within `window` of a key's first failure; the `threshold`-th locks the key
        for `lock_for`. One atomic upsert per key, so concurrent failures are all counted.
        """
        counts = self.count_failures(dict.fromkeys(keys, threshold), now, window=window, lock_for=lock_for)
        locks = [c.locked_until for c in counts.values() if c.locked_until is not None and c.locked_until > now]
        return max(locks, default=None)

    def count_failures(
        self, thresholds: Mapping[str, int], now: dt.datetime, *, window: dt.timedelta, lock_for: dt.timedelta
    ) -> dict[str, FailureCount]:
        """Count one failure against each key, each with its own threshold, in one transaction; every
        key's count and lock afterwards (a key whose count equals its threshold locked just now)."""
        if any(threshold < 1 for threshold in thresholds.values()):
            raise ValueError("the lockout threshold is at least 1")
        lock_until = now + lock_for
        window_start = now - window
        counts = {}
        with self.db.write() as conn:
            for key in sorted(thresholds):  # one order for every writer: no deadlock on PostgreSQL
                count, locked_until = _upsert_failure(conn, key, now, window_start, thresholds[key], lock_until)
                counts[key] = FailureCount(count, locked_until)
        return counts

    def locked(self, keys: Iterable[str], now: dt.datetime) -> dt.datetime | None:
        """When the longest lock on any of `keys` lifts, or None when none is locked at `now`."""
        return max(self.locks(keys, now).values(), default=None)

    def locks(self, keys: Iterable[str], now: dt.datetime) -> dict[str, dt.datetime]:
        """The keys of `keys` locked at `now`, with when each lock lifts (one statement per four keys)."""
        wanted = sorted(set(keys))
        found: dict[str, dt.datetime] = {}
        if not wanted:
            return found
        with self.db.read() as conn:
            for i in range(0, len(wanted), LOCK_KEYS):
                batch = wanted[i : i + LOCK_KEYS]
                batch += [batch[-1]] * (LOCK_KEYS - len(batch))  # a fixed set of binds: compiled once
                row = _LOCKS.first(conn, {**dict(zip(_LOCK_BINDS, batch, strict=True)), "now": now})
                for name, key in zip(_LOCK_BINDS, batch, strict=True):
                    if row is not None and row[name] is not None:
                        found[key] = row[name]
        return found

    def purge_failures(self, lapsed_before: dt.datetime, now: dt.datetime) -> int:
        """Delete the failure counters first counted before `lapsed_before` (their window is over) whose
        lock, if any, lifted by `now`; how many."""
        f = challenge_failures.c
        lapsed = and_(f.first_failure_at <= lapsed_before, or_(f.locked_until.is_(None), f.locked_until <= now))
        with self.db.write() as conn:
            return int(conn.execute(delete(challenge_failures).where(lapsed)).rowcount)


def _upsert_failure(
    conn: Connection, key: str, now: dt.datetime, window_start: dt.datetime, threshold: int, lock_until: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """INSERT ... ON CONFLICT DO UPDATE (SQLite >= 3.24 and PostgreSQL); the key's count and lock."""
    f = challenge_failures.c
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    first = dialect_insert(challenge_failures).values(
        key=key, failures=1, first_failure_at=now, locked_until=lock_until if threshold <= 1 else None
    )
    window_over = f.first_failure_at <= window_start  # the old count has lapsed: start again at 1
    failures = case((window_over, 1), else_=f.failures + 1)
    statement = first.on_conflict_do_update(
        index_elements=[f.key],
        set_={
            "failures": failures,
            "first_failure_at": case((window_over, literal(now, UTCDateTime())), else_=f.first_failure_at),
            "locked_until": case((failures >= threshold, literal(lock_until, UTCDateTime())), else_=f.locked_until),
        },
    ).returning(f.failures, f.locked_until)
    count, locked_until = conn.execute(statement).one()
    return int(count), locked_until
