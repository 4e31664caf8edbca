"""The enrollment repository: events, SCEP transactions and approvals, one-time challenges, lockout.

Every rule that must hold across workers and hosts is settled by one statement or one database
transaction: a one-time challenge is spent by a single conditional UPDATE, failures are counted by
an atomic upsert, and a (signer key, transactionID) pair is a unique constraint.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, delete, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from shared_ca.errors import Conflict, NotFound
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
from shared_ca.storage.repository import AuditEvent, Store
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
# A request counts against at most two keys (its challenge and its address): a fixed pair of binds
# keeps the compiled statement cached, where an expanding IN is rendered again on every call.
_LOCKED = PreparedStatement(
    select(func.max(challenge_failures.c.locked_until).label("until")).where(
        and_(
            challenge_failures.c.key.in_([bindparam("key1"), bindparam("key2")]),
            challenge_failures.c.locked_until > bindparam("now"),
        )
    )
)


class EnrollmentStore(Store):
    """The CA's Store plus what both protocols record about enrollments."""

    # -- enrollment events ------------------------------------------------------------------------

    def record_event(self, event: EnrollmentEvent, now: dt.datetime) -> int:
        """Write one enrollment event on its own (a refusal, a GetCACert); its id.

        An issued certificate's event goes through `record_issued(..., enrollment=...)` instead.
        """
        with self._write() as conn:
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
        with self._read() as conn:
            return [enrollment_record(r) for r in conn.execute(query).mappings().all()]

    # -- SCEP transactions ------------------------------------------------------------------------

    def scep_transaction(self, signer_key_sha256: str, transaction_id: str) -> ScepTransactionRecord | None:
        """The transaction of this signer key and transactionID, with its certificate when issued."""
        with self._read() as conn:
            row = _TRANSACTION_BY_SIGNER.first(
                conn, {"signer_key": signer_key_sha256, "transaction_id": transaction_id}
            )
        return _scep_transaction(row) if row else None

    def scep_transaction_by_id(self, scep_transaction_id: int) -> ScepTransactionRecord | None:
        query = _transactions_query().where(scep_transactions.c.id == scep_transaction_id)
        with self._read() as conn:
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
            with self._write() as conn:
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
            request_der=txn.request_der,
            subject=txn.subject,
            client_address=txn.client_address,
            created_at=now,
            updated_at=now,
        )

    # -- manual approval --------------------------------------------------------------------------

    def list_pending(self, *, profile: str | None = None) -> list[ScepTransactionRecord]:
        """SCEP requests waiting for approval, oldest first.

        Approve one by issuing with `scep_transaction=CompletePending(id)`: the transaction turns
        'issued' in the issuance's own database transaction, so a request is approved once.
        """
        t = scep_transactions.c
        query = _transactions_query().where(t.status == "pending").order_by(t.id)
        if profile is not None:
            query = query.where(t.profile == profile)
        with self._read() as conn:
            return [_scep_transaction(r) for r in conn.execute(query).mappings().all()]

    def reject_pending(
        self, scep_transaction_id: int, reason: str, *, actor: str, now: dt.datetime
    ) -> ScepTransactionRecord:
        """Refuse a pending request: its next CertPoll gets FAILURE badRequest with `reason`."""
        t = scep_transactions.c
        with self._write() as conn:
            changed = conn.execute(
                update(scep_transactions)
                .where(and_(t.id == scep_transaction_id, t.status == "pending"))
                .values(status="rejected", fail_info="badRequest", fail_info_text=reason, updated_at=now)
            ).rowcount
            if changed != 1:
                exists = conn.execute(select(t.id).where(t.id == scep_transaction_id)).first()
                if exists is None:
                    raise NotFound(f"no SCEP request {scep_transaction_id}")
                raise Conflict(f"SCEP request {scep_transaction_id} is not pending")
            self._audit(
                conn,
                AuditEvent(actor, "scep.request.rejected", detail={"request": scep_transaction_id, "reason": reason}),
                now,
            )
        record = self.scep_transaction_by_id(scep_transaction_id)
        assert record is not None
        return record

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
            with self._write() as conn:
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
                self._audit(conn, AuditEvent(created_by, "scep.challenge.created", detail=detail), now)
        except IntegrityError as exc:
            raise Conflict("this challenge secret is already stored") from exc
        return _challenge(row)

    def consume_challenge(
        self, secret_sha256: str, now: dt.datetime, *, profile: str, device_id: str | None, subject: str | None
    ) -> ChallengeRecord | None:
        """Spend one use of the challenge, if it is unexpired, has a use left and fits the request.

        One conditional UPDATE ... RETURNING: concurrent attempts on the last use yield exactly one
        record, on any number of workers. None when nothing matched (nothing is spent then).
        """
        c = scep_challenges.c
        statement = (
            update(scep_challenges)
            .where(
                and_(
                    c.secret_sha256 == secret_sha256,
                    c.uses_left > 0,
                    c.expires_at > now,
                    c.profile == profile,
                    or_(c.device_id.is_(None), c.device_id == device_id),
                    or_(c.expected_subject.is_(None), c.expected_subject == subject),
                )
            )
            .values(uses_left=c.uses_left - 1)
            .returning(*scep_challenges.c)
        )
        with self._write() as conn:
            row = conn.execute(statement).mappings().first()
        return _challenge(row) if row else None

    def challenge(self, secret_sha256: str) -> ChallengeRecord | None:
        """A stored challenge by the hash of its secret (to log why one was not accepted)."""
        with self._read() as conn:
            row = (
                conn.execute(select(scep_challenges).where(scep_challenges.c.secret_sha256 == secret_sha256))
                .mappings()
                .first()
            )
        return _challenge(row) if row else None

    def purge_challenges(self, now: dt.datetime) -> int:
        """Delete challenges that expired or have no use left; how many."""
        c = scep_challenges.c
        with self._write() as conn:
            return int(conn.execute(delete(scep_challenges).where(or_(c.expires_at <= now, c.uses_left <= 0))).rowcount)

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
        if threshold < 1:
            raise ValueError("the lockout threshold is at least 1")
        lock_until = now + lock_for
        window_start = now - window
        locks = []
        with self._write() as conn:
            for key in sorted(set(keys)):  # one order for every writer: no deadlock on PostgreSQL
                _count, locked_until = _upsert_failure(conn, key, now, window_start, threshold, lock_until)
                if locked_until is not None and locked_until > now:
                    locks.append(locked_until)
        return max(locks, default=None)

    def locked(self, keys: Iterable[str], now: dt.datetime) -> dt.datetime | None:
        """When the longest lock on any of `keys` lifts, or None when none is locked at `now`."""
        wanted = sorted(set(keys))
        if not wanted:
            return None
        locks = []
        with self._read() as conn:
            for i in range(0, len(wanted), 2):
                pair = wanted[i : i + 2]
                found = _LOCKED.first(conn, {"key1": pair[0], "key2": pair[-1], "now": now})
                if found is not None and found["until"] is not None:
                    locks.append(found["until"])
        return max(locks, default=None)

    def clear_failures(self, keys: Iterable[str]) -> int:
        """Forget the failures (and locks) of `keys`; how many keys had any."""
        wanted = sorted(set(keys))
        if not wanted:
            return 0
        with self._write() as conn:
            return int(conn.execute(delete(challenge_failures).where(challenge_failures.c.key.in_(wanted))).rowcount)


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
