"""The approval queue's table: requests of either protocol held until an administrator decides.

A queued request keeps what was asked (public key, subject, subjectAltNames, profile) and who asked
(principal kind and name, the EST user whose use an approval spends, the certificate a renewal
renews), never the PKCS#10 itself, whose challengePassword is a secret. Its `request_key` is a hash
of what was asked and by whom, unique per protocol: an EST client that sends the same request again
after a 202, even re-signed, finds its row. A SCEP request waiting for approval also has its SCEP
transaction row (status 'pending', `approval_id`), which the decision updates in the same database
transaction, so the device's CertPoll reads the outcome where it reads every other answer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from shared_ca.errors import Conflict, NotFound
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.database import Database
from shared_ca.storage.enrollment_records import (
    EnrollmentEvent,
    NewScepTransaction,
    TransactionExists,
    is_transaction_violation,
    write_enrollment_event,
    write_scep_transaction,
)
from shared_ca.storage.schema import approval_requests, certificates, scep_transactions

MAX_PRINCIPAL_NAME = 255


def approval_key(
    *, public_key_der: bytes, subject_der: bytes, sans_der: bytes | None, profile: str, principal_ref: str
) -> str:
    """Hex SHA-256 over what is asked and by whom, each part length-prefixed (no two requests share one)."""
    digest = hashlib.sha256()
    for part in (public_key_der, subject_der, sans_der or b"", profile.encode("utf-8"), principal_ref.encode("utf-8")):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class NewApproval:
    """A request to hold for approval."""

    protocol: str
    profile: str
    request_key: str
    principal_kind: str
    principal_name: str
    subject: str
    subject_der: bytes
    public_key_der: bytes
    sans_der: bytes | None
    est_user_id: int | None = None
    renewal_of_id: int | None = None
    device_identity: str | None = None
    client_address: str | None = None
    deferred: bool = False  # held by admission control (issued in the background), not for an administrator


@dataclass(frozen=True)
class ApprovalRecord:
    """A queued request and, once decided, its outcome."""

    id: int
    protocol: str
    profile: str
    request_key: str
    status: str  # 'pending' | 'issued' | 'rejected'
    principal_kind: str
    principal_name: str
    est_user_id: int | None
    renewal_of_id: int | None
    device_identity: str | None
    subject: str
    subject_der: bytes
    public_key_der: bytes
    sans_der: bytes | None
    client_address: str | None
    certificate_id: int | None
    certificate_der: bytes | None  # joined from certificates when issued
    reason: str | None
    created_at: dt.datetime
    decided_at: dt.datetime | None
    decided_by: str | None
    deferred: bool = False
    claimed_until: dt.datetime | None = None


class ApprovalExists(Conflict):
    """A request with the same key is queued already; nothing of this write was kept."""

    def __init__(self, protocol: str, request_key: str) -> None:
        super().__init__("this request is queued already", detail=f"{protocol} approval request {request_key}")
        self.protocol = protocol
        self.request_key = request_key


def _record(row: Mapping[Any, Any]) -> ApprovalRecord:
    return ApprovalRecord(**{name: row[name] for name in ApprovalRecord.__dataclass_fields__})


def _query() -> Any:
    a = approval_requests
    return select(a, certificates.c.der.label("certificate_der")).select_from(
        a.outerjoin(certificates, certificates.c.id == a.c.certificate_id)
    )


def _is_key_violation(exc: IntegrityError) -> bool:
    message = str(exc.orig).lower()
    return "uq_approval_requests_protocol_key" in message or "approval_requests.protocol" in message


class Approvals:
    """Hold, find, list and reject queued requests. Approving is issuing: `record_issued` with
    `CompletePending`, so a request is approved once, in the issuance's own transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def hold(
        self,
        new: NewApproval,
        event: EnrollmentEvent,
        now: dt.datetime,
        *,
        scep_transaction: NewScepTransaction | None = None,
    ) -> ApprovalRecord:
        """Queue `new` with its enrollment event (and the SCEP transaction that waits on it), in one
        transaction. ApprovalExists or TransactionExists (nothing kept) when a twin is recorded already."""
        if scep_transaction is not None and scep_transaction.status != "pending":
            raise ValueError("the SCEP transaction of a held request is 'pending'")
        values = dict(vars(new), principal_name=new.principal_name[:MAX_PRINCIPAL_NAME])
        try:
            with self.db.write() as conn:
                approval_id = conn.execute(
                    insert(approval_requests)
                    .values(**values, status="pending", created_at=now)
                    .returning(approval_requests.c.id)
                ).scalar_one()
                if scep_transaction is not None:
                    write_scep_transaction(conn, replace(scep_transaction, approval_id=approval_id), now)
                write_enrollment_event(conn, event, now)
        except IntegrityError as exc:
            if _is_key_violation(exc):
                raise ApprovalExists(new.protocol, new.request_key) from exc
            if scep_transaction is not None and is_transaction_violation(exc):
                raise TransactionExists(scep_transaction.signer_key_sha256, scep_transaction.transaction_id) from exc
            raise
        return ApprovalRecord(
            **values,
            id=approval_id,
            status="pending",
            certificate_id=None,
            certificate_der=None,
            reason=None,
            created_at=now,
            decided_at=None,
            decided_by=None,
        )

    def approval(self, approval_id: int) -> ApprovalRecord | None:
        with self.db.read() as conn:
            row = conn.execute(_query().where(approval_requests.c.id == approval_id)).mappings().first()
        return _record(row) if row else None

    def approval_by_key(self, protocol: str, request_key: str) -> ApprovalRecord | None:
        """The queued request of `protocol` with this key, whatever its status."""
        a = approval_requests.c
        query = _query().where(and_(a.protocol == protocol, a.request_key == request_key))
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _record(row) if row else None

    def list_approvals(
        self, *, status: str | None = "pending", profile: str | None = None, deferred: bool | None = False
    ) -> list[ApprovalRecord]:
        """Queued requests (pending ones unless `status` says otherwise; None: all), oldest first; those
        waiting for an administrator unless `deferred` says otherwise (True: admission's; None: both)."""
        a = approval_requests.c
        query = _query().order_by(a.id)
        if deferred is not None:
            query = query.where(a.deferred.is_(deferred))
        if status is not None:
            query = query.where(a.status == status)
        if profile is not None:
            query = query.where(a.profile == profile)
        with self.db.read() as conn:
            return [_record(r) for r in conn.execute(query).mappings().all()]

    def claim_deferred(self, now: dt.datetime, lease_until: dt.datetime) -> ApprovalRecord | None:
        """The oldest deferred request nobody is issuing now, leased to the caller until `lease_until`; None
        when there is none. One conditional UPDATE settles a race: of workers and nodes claiming at once,
        one gets each request; a claim that lapsed (its worker died) is claimed again."""
        a = approval_requests.c
        free = and_(a.deferred.is_(True), a.status == "pending", or_(a.claimed_until.is_(None), a.claimed_until < now))
        with self.db.read() as conn:  # most polls find nothing: no write transaction for them (SQLite's one writer)
            candidate = conn.execute(select(a.id).where(free).order_by(a.id).limit(1)).scalar()
        if candidate is None:
            return None
        with self.db.write() as conn:
            claimed = conn.execute(
                update(approval_requests).where(and_(a.id == candidate, free)).values(claimed_until=lease_until)
            ).rowcount
        return self.approval(candidate) if claimed == 1 else None

    def reject(self, approval_id: int, reason: str, *, actor: str, now: dt.datetime) -> ApprovalRecord:
        """Refuse a pending request: EST's next retry gets 403 with `reason`, SCEP's next CertPoll FAILURE
        badRequest with it. NotFound or Conflict (not pending)."""
        a = approval_requests.c
        with self.db.write() as conn:
            changed = conn.execute(
                update(approval_requests)
                .where(and_(a.id == approval_id, a.status == "pending"))
                .values(status="rejected", reason=reason, decided_at=now, decided_by=actor[:255])
            ).rowcount
            if changed != 1:
                if conn.execute(select(a.id).where(a.id == approval_id)).first() is None:
                    raise NotFound(f"no request {approval_id}")
                raise Conflict(f"request {approval_id} is not pending")
            t = scep_transactions.c
            conn.execute(
                update(scep_transactions)
                .where(and_(t.approval_id == approval_id, t.status == "pending"))
                .values(status="rejected", fail_info="badRequest", fail_info_text=reason, updated_at=now)
            )
            write_audit(
                conn,
                AuditEvent(actor, "request.rejected", detail={"request": approval_id, "reason": reason}),
                now,
            )
        record = self.approval(approval_id)
        assert record is not None
        return record
