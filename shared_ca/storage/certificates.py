"""Certificates: recording what the CA issued (with everything the issuance writes, in one
transaction), finding them, and revoking them. Callers never see SQL or SQLAlchemy rows."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from shared_ca.errors import Conflict
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.crls import bump_revision
from shared_ca.storage.database import Database
from shared_ca.storage.enrollment_records import (
    CompletePending,
    EnrollmentEvent,
    NewScepTransaction,
    TransactionExists,
    complete_pending,
    is_transaction_violation,
    write_enrollment_event,
    write_scep_transaction,
)
from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.schema import certificates

# Hot-path statements built once: SQLAlchemy then reuses their compiled form and cache key instead of
# re-coercing a fresh construct on every call.
_INSERT_CERTIFICATE = PreparedStatement(insert(certificates).returning(certificates.c.id), columns_from_params=True)
_CERTIFICATE_BY_FINGERPRINT = PreparedStatement(
    select(certificates).where(certificates.c.fingerprint_sha256 == bindparam("fingerprint"))
)  # every renewal check and client-certificate log-in


class SerialCollision(Exception):
    """The (issuer, serial) pair is taken: the caller draws a new serial and signs again."""


@dataclass(frozen=True)
class NewCertificate:
    issuer_id: int
    serial_hex: str
    fingerprint_sha256: str
    subject: str
    common_name: str | None
    sans: tuple[str, ...]
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    profile: str
    protocol: str
    requester: str | None
    der: bytes
    renewed_from_id: int | None = None


@dataclass(frozen=True)
class CertificateRecord:
    id: int
    issuer_id: int
    serial_hex: str
    fingerprint_sha256: str
    subject: str
    common_name: str | None
    sans: tuple[str, ...]
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    profile: str
    protocol: str
    requester: str | None
    status: str
    revoked_at: dt.datetime | None
    revocation_reason: str | None
    supersede_at: dt.datetime | None
    renewed_from_id: int | None
    der: bytes
    created_at: dt.datetime

    def effective_status(self, now: dt.datetime) -> str:
        """'revoked', 'expired' or 'valid' at `now` (a superseded certificate counts as revoked)."""
        if self.status == "revoked" or (self.supersede_at is not None and self.supersede_at <= now):
            return "revoked"
        if self.not_after < now:
            return "expired"
        return "valid"


def _is_serial_violation(exc: IntegrityError) -> bool:
    message = str(exc.orig).lower()
    return "uq_certificates_issuer_serial" in message or "certificates.issuer_id, certificates.serial_hex" in message


def certificate_record(row: Mapping[Any, Any]) -> CertificateRecord:
    return CertificateRecord(
        id=row["id"],
        issuer_id=row["issuer_id"],
        serial_hex=row["serial_hex"],
        fingerprint_sha256=row["fingerprint_sha256"],
        subject=row["subject"],
        common_name=row["common_name"],
        sans=tuple(json.loads(row["sans"])),
        key_type=row["key_type"],
        not_before=row["not_before"],
        not_after=row["not_after"],
        profile=row["profile"],
        protocol=row["protocol"],
        requester=row["requester"],
        status=row["status"],
        revoked_at=row["revoked_at"],
        revocation_reason=row["revocation_reason"],
        supersede_at=row["supersede_at"],
        renewed_from_id=row["renewed_from_id"],
        der=row["der"],
        created_at=row["created_at"],
    )


class Certificates:
    """Record, find and revoke certificates."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record_issued(
        self,
        cert: NewCertificate,
        event: AuditEvent,
        now: dt.datetime,
        *,
        supersede: tuple[int, dt.datetime] | None = None,
        enrollment: EnrollmentEvent | None = None,
        scep_transaction: NewScepTransaction | CompletePending | None = None,
    ) -> CertificateRecord:
        """Insert the certificate and its audit event in one transaction.

        With `supersede=(old_id, at)` the old certificate is marked to count as revoked
        (reason superseded) from `at` on, in the same transaction. Raises SerialCollision when the
        serial is taken for this issuer.

        `enrollment` and `scep_transaction` are written in the same transaction: no certificate
        without its enrollment event and SCEP transaction. A NewScepTransaction (status 'issued')
        whose (signer key, transactionID) pair exists rolls everything back and raises
        TransactionExists; CompletePending turns a pending transaction 'issued', or rolls back with
        Conflict when it is no longer pending.
        """
        if isinstance(scep_transaction, NewScepTransaction) and scep_transaction.status != "issued":
            raise ValueError("a SCEP transaction recorded with a certificate has status 'issued'")
        try:
            with self.db.write() as conn:
                cert_id = _INSERT_CERTIFICATE.inserted_id(
                    conn,
                    {
                        "issuer_id": cert.issuer_id,
                        "serial_hex": cert.serial_hex,
                        "fingerprint_sha256": cert.fingerprint_sha256,
                        "subject": cert.subject,
                        "common_name": cert.common_name,
                        "sans": json.dumps(list(cert.sans)),
                        "key_type": cert.key_type,
                        "not_before": cert.not_before,
                        "not_after": cert.not_after,
                        "profile": cert.profile,
                        "protocol": cert.protocol,
                        "requester": cert.requester,
                        "status": "valid",
                        "renewed_from_id": cert.renewed_from_id,
                        "der": cert.der,
                        "created_at": now,
                    },
                )
                if supersede is not None:
                    old_id, at = supersede
                    conn.execute(
                        update(certificates)
                        .where(and_(certificates.c.id == old_id, certificates.c.status == "valid"))
                        .values(supersede_at=at)
                    )
                approved = None
                if isinstance(scep_transaction, NewScepTransaction):
                    write_scep_transaction(conn, scep_transaction, now, certificate_id=cert_id)
                elif scep_transaction is not None:
                    approved = complete_pending(
                        conn, scep_transaction, cert_id, now, issuer_id=cert.issuer_id, serial_hex=cert.serial_hex
                    )
                if enrollment is not None:
                    write_enrollment_event(
                        conn,
                        enrollment,
                        now,
                        certificate_id=cert_id,
                        serial_hex=cert.serial_hex,
                        certificate_not_after=cert.not_after,
                    )
                if approved is not None:
                    write_audit(conn, approved, now)
                write_audit(conn, event, now)  # last: the audit chain's head is the last lock taken
        except IntegrityError as exc:
            if _is_serial_violation(exc):
                raise SerialCollision(cert.serial_hex) from exc
            if isinstance(scep_transaction, NewScepTransaction) and is_transaction_violation(exc):
                raise TransactionExists(scep_transaction.signer_key_sha256, scep_transaction.transaction_id) from exc
            raise Conflict("this certificate is already recorded", detail=str(exc.orig)) from exc
        return CertificateRecord(
            **vars(cert),
            id=cert_id,
            status="valid",
            revoked_at=None,
            revocation_reason=None,
            supersede_at=None,
            created_at=now,
        )

    def certificate_by_id(self, cert_id: int) -> CertificateRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(certificates).where(certificates.c.id == cert_id)).mappings().first()
        return certificate_record(row) if row else None

    def certificate(self, issuer_id: int, serial_hex: str) -> CertificateRecord | None:
        """The certificate `serial_hex` of one issuer."""
        with self.db.read() as conn:
            row = (
                conn.execute(
                    select(certificates).where(
                        and_(certificates.c.issuer_id == issuer_id, certificates.c.serial_hex == serial_hex)
                    )
                )
                .mappings()
                .first()
            )
        return certificate_record(row) if row else None

    def certificates_by_serial(self, serial_hex: str) -> list[CertificateRecord]:
        """Every certificate with this serial, across issuers."""
        with self.db.read() as conn:
            rows = conn.execute(select(certificates).where(certificates.c.serial_hex == serial_hex)).mappings().all()
        return [certificate_record(r) for r in rows]

    def certificate_by_fingerprint(self, fingerprint_sha256: str) -> CertificateRecord | None:
        with self.db.read() as conn:
            row = _CERTIFICATE_BY_FINGERPRINT.first(conn, {"fingerprint": fingerprint_sha256})
        return certificate_record(row) if row else None

    def list_certificates(
        self,
        *,
        now: dt.datetime,
        status: str | None = None,
        issuer_id: int | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[CertificateRecord]:
        """Certificates, oldest first, filtered by effective status ('valid', 'revoked', 'expired')."""
        c = certificates.c
        query = select(certificates).order_by(c.id)
        revoked = or_(c.status == "revoked", and_(c.supersede_at.is_not(None), c.supersede_at <= now))
        if status == "revoked":
            query = query.where(revoked)
        elif status == "expired":
            query = query.where(and_(~revoked, c.not_after < now))
        elif status == "valid":
            query = query.where(and_(~revoked, c.not_after >= now))
        elif status is not None:
            raise ValueError(f"unknown status {status!r}")
        if issuer_id is not None:
            query = query.where(c.issuer_id == issuer_id)
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.db.read() as conn:
            rows = conn.execute(query).mappings().all()
        return [certificate_record(r) for r in rows]

    def count_certificates(self, issuer_id: int | None = None) -> int:
        query = select(func.count()).select_from(certificates)
        if issuer_id is not None:
            query = query.where(certificates.c.issuer_id == issuer_id)
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def last_expiry(self, issuer_id: int) -> dt.datetime | None:
        """When the last certificate of an issuer expires (revoked ones count: they stay on its CRL until
        then); None when it issued none."""
        query = select(func.max(certificates.c.not_after)).where(certificates.c.issuer_id == issuer_id)
        with self.db.read() as conn:
            last: dt.datetime | None = conn.execute(query).scalar_one()  # max() keeps the column's UTC type
        return last

    def revoke(
        self, cert_id: int, reason: str, revoked_at: dt.datetime, event: AuditEvent, now: dt.datetime
    ) -> CertificateRecord:
        """Mark a valid certificate revoked, with its audit event, in one transaction."""
        with self.db.write() as conn:
            changed = conn.execute(
                update(certificates)
                .where(and_(certificates.c.id == cert_id, certificates.c.status == "valid"))
                .values(status="revoked", revoked_at=revoked_at, revocation_reason=reason)
            ).rowcount
            if changed != 1:
                raise Conflict("the certificate is already revoked")
            issuer_id = conn.execute(select(certificates.c.issuer_id).where(certificates.c.id == cert_id)).scalar_one()
            bump_revision(conn, issuer_id)
            write_audit(conn, event, now)
        record = self.certificate_by_id(cert_id)
        assert record is not None
        return record
