"""The CA's repository: every read and write of issuers, certificates, audit events and CRLs.

Each public write is one database transaction. Callers never see SQL or SQLAlchemy rows.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared_ca.errors import Conflict, Unavailable
from shared_ca.storage.db import WRITE, describe_database_error, engine_gates
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
from shared_ca.storage.schema import audit_events, certificates, crl_publications, issuers

# Hot-path statements built once: SQLAlchemy then reuses their compiled form and cache key instead of
# re-coercing a fresh construct on every call.
_INSERT_CERTIFICATE = PreparedStatement(insert(certificates).returning(certificates.c.id), columns_from_params=True)
_INSERT_AUDIT = PreparedStatement(insert(audit_events), columns_from_params=True)
_ISSUER_BY_ID = PreparedStatement(select(issuers).where(issuers.c.id == bindparam("issuer_id")))
_CERTIFICATE_BY_FINGERPRINT = PreparedStatement(
    select(certificates).where(certificates.c.fingerprint_sha256 == bindparam("fingerprint"))
)  # every renewal check and client-certificate log-in


# The connection a `Store.reading()` scope lends to every read on the same engine in this thread.
_SHARED_READ: ContextVar[tuple[Engine, Connection] | None] = ContextVar("gateway_shared_read", default=None)


class SerialCollision(Exception):
    """The (issuer, serial) pair is taken: the caller draws a new serial and signs again."""


@dataclass(frozen=True)
class IssuerRecord:
    id: int
    name: str
    kind: str
    subject: str
    ski_hex: str
    fingerprint_sha256: str
    cert_der: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    trust_until: dt.datetime | None


@dataclass(frozen=True)
class NewIssuer:
    name: str
    kind: str
    subject: str
    ski_hex: str
    fingerprint_sha256: str
    cert_der: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    trust_until: dt.datetime | None = None


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


@dataclass(frozen=True)
class RevokedEntry:
    serial_hex: str
    revoked_at: dt.datetime
    reason: str


@dataclass(frozen=True)
class CrlRecord:
    issuer_id: int
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    der: bytes
    revision: int = 0  # the issuer's revocation revision this CRL includes


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str
    issuer_id: int | None = None
    serial_hex: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class AuditRecord:
    id: int
    occurred_at: dt.datetime
    actor: str
    action: str
    issuer_id: int | None
    serial_hex: str | None
    detail: dict[str, Any]


def _is_serial_violation(exc: IntegrityError) -> bool:
    message = str(exc.orig).lower()
    return "uq_certificates_issuer_serial" in message or "certificates.issuer_id, certificates.serial_hex" in message


def _unavailable(exc: DBAPIError | PoolTimeout) -> Unavailable:
    """The store's refusal for a failed statement or connection: a short cause, never the SQL, its
    parameters (hashes, secrets, client text) or row values, which SQLAlchemy's own message holds."""
    return Unavailable("the certificate store is unavailable", detail=f"database error: {describe_database_error(exc)}")


def _drop_if_read_only(conn: Connection, exc: DBAPIError) -> None:
    """Discard a connection that found its database read-only: SQLite keeps that state for the life of
    the connection even once the file or its directory is writable again, so the next checkout opens a
    new one and sees the database as it is then."""
    message = str(exc.orig).lower()
    if "readonly" in message or "read-only" in message:
        conn.invalidate()


class Store:
    """Repository over one Engine. Thread-safe; holds no state but the engine.

    `_read` and `_write` turn every driver error into Unavailable, except IntegrityError: the stores
    translate the constraints they expect into their own refusals (Conflict, TransactionExists).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        gates = engine_gates(engine)  # shared by every Store on this engine
        self._writers = gates.writers  # SQLite: writers queue instead of polling (see SqliteWriterGate)
        self._connections = gates.connections  # no pool checkout waits on itself (see ConnectionGate)

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
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
        """Run every read inside on one connection and one read transaction: one pool checkout for the
        look-ups of a request instead of one each (any Store on this engine, this thread only).

        Writes still take their own connection. On SQLite the reads inside see one snapshot, taken
        at the first read: close the scope before reading what a write inside it committed.
        """
        shared = _SHARED_READ.get()
        if shared is not None and shared[0] is self.engine:
            yield
            return
        with self._read() as conn:
            token = _SHARED_READ.set((self.engine, conn))
            try:
                yield
            finally:
                _SHARED_READ.reset(token)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with (
                self._connections(),
                self._writers,
                self.engine.connect().execution_options(**WRITE) as conn,
                conn.begin(),
            ):
                try:
                    yield conn
                except DBAPIError as exc:
                    _drop_if_read_only(conn, exc)
                    raise
        except IntegrityError:
            raise
        except (DBAPIError, PoolTimeout) as exc:
            raise _unavailable(exc) from None

    def ping(self) -> None:
        """Raise Unavailable unless the database answers."""
        with self._read() as conn:
            conn.execute(text("SELECT 1"))

    def check_writable(self) -> None:
        """Raise Unavailable unless the database takes a write now (not a read-only SQLite file or
        directory, not a PostgreSQL standby or read-only session). The write is real, or a read-only
        file system would only show at the next commit: one row rewritten with its own value."""
        with self._write() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))

    @staticmethod
    def _audit(conn: Connection, event: AuditEvent, now: dt.datetime) -> None:
        _INSERT_AUDIT.execute(
            conn,
            {
                "occurred_at": now,
                "actor": event.actor,
                "action": event.action,
                "issuer_id": event.issuer_id,
                "serial_hex": event.serial_hex,
                "detail": json.dumps(event.detail or {}, sort_keys=True),
            },
        )

    def record_audit(self, event: AuditEvent, now: dt.datetime) -> None:
        """Write one audit event on its own."""
        with self._write() as conn:
            self._audit(conn, event, now)

    def audit_events(self, *, action: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The newest audit events, newest first."""
        query = select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
        if action:
            query = query.where(audit_events.c.action == action)
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            AuditRecord(
                id=r["id"],
                occurred_at=r["occurred_at"],
                actor=r["actor"],
                action=r["action"],
                issuer_id=r["issuer_id"],
                serial_hex=r["serial_hex"],
                detail=json.loads(r["detail"]),
            )
            for r in rows
        ]

    # -- issuers ----------------------------------------------------------------------------------

    def add_issuer(self, issuer: NewIssuer, event: AuditEvent, now: dt.datetime) -> IssuerRecord:
        """Register a CA certificate (ours or an imported legacy one) with its CRL counter."""
        with self._write() as conn:
            try:
                issuer_id = conn.execute(
                    insert(issuers)
                    .values(
                        name=issuer.name,
                        kind=issuer.kind,
                        subject=issuer.subject,
                        ski_hex=issuer.ski_hex,
                        fingerprint_sha256=issuer.fingerprint_sha256,
                        cert_der=issuer.cert_der,
                        not_before=issuer.not_before,
                        not_after=issuer.not_after,
                        trust_until=issuer.trust_until,
                        created_at=now,
                    )
                    .returning(issuers.c.id)
                ).scalar_one()
            except IntegrityError as exc:
                raise Conflict(f"issuer {issuer.name!r} or its certificate is already registered") from exc
            conn.execute(
                insert(crl_publications).values(
                    issuer_id=issuer_id, last_number=0, published_number=0, revision=0, published_revision=0
                )
            )
            self._audit(conn, AuditEvent(event.actor, event.action, issuer_id, None, event.detail), now)
        found = self.issuer_by_id(issuer_id)
        assert found is not None
        return found

    @staticmethod
    def _issuer(row: Mapping[Any, Any]) -> IssuerRecord:
        return IssuerRecord(
            id=row["id"],
            name=row["name"],
            kind=row["kind"],
            subject=row["subject"],
            ski_hex=row["ski_hex"],
            fingerprint_sha256=row["fingerprint_sha256"],
            cert_der=row["cert_der"],
            not_before=row["not_before"],
            not_after=row["not_after"],
            trust_until=row["trust_until"],
        )

    def issuer_by_name(self, name: str) -> IssuerRecord | None:
        with self._read() as conn:
            row = conn.execute(select(issuers).where(issuers.c.name == name)).mappings().first()
        return self._issuer(row) if row else None

    def issuer_by_id(self, issuer_id: int) -> IssuerRecord | None:
        with self._read() as conn:
            row = _ISSUER_BY_ID.first(conn, {"issuer_id": issuer_id})
        return self._issuer(row) if row else None

    def list_issuers(self) -> list[IssuerRecord]:
        with self._read() as conn:
            rows = conn.execute(select(issuers).order_by(issuers.c.id)).mappings().all()
        return [self._issuer(r) for r in rows]

    def issuers_of_kind(self, kind: str) -> list[IssuerRecord]:
        """Issuers of one kind ('ca', 'legacy', 'next' for a prepared rollover CA, 'retired'), oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(issuers).where(issuers.c.kind == kind).order_by(issuers.c.id)).mappings().all()
        return [self._issuer(r) for r in rows]

    def set_issuer_kind(self, issuer_id: int, kind: str, event: AuditEvent, now: dt.datetime) -> None:
        """Change an issuer's kind (e.g. retire a replaced next CA), with its audit event, atomically."""
        with self._write() as conn:
            conn.execute(update(issuers).where(issuers.c.id == issuer_id).values(kind=kind))
            self._audit(conn, AuditEvent(event.actor, event.action, issuer_id, None, event.detail), now)

    # -- certificates -----------------------------------------------------------------------------

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
            with self._write() as conn:
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
                if isinstance(scep_transaction, NewScepTransaction):
                    write_scep_transaction(conn, scep_transaction, now, certificate_id=cert_id)
                elif scep_transaction is not None:
                    complete_pending(conn, scep_transaction, cert_id, now)
                if enrollment is not None:
                    write_enrollment_event(
                        conn,
                        enrollment,
                        now,
                        certificate_id=cert_id,
                        serial_hex=cert.serial_hex,
                        certificate_not_after=cert.not_after,
                    )
                self._audit(conn, event, now)
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

    @staticmethod
    def _certificate(row: Mapping[Any, Any]) -> CertificateRecord:
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

    def certificate_by_id(self, cert_id: int) -> CertificateRecord | None:
        with self._read() as conn:
            row = conn.execute(select(certificates).where(certificates.c.id == cert_id)).mappings().first()
        return self._certificate(row) if row else None

    def certificate(self, issuer_id: int, serial_hex: str) -> CertificateRecord | None:
        """The certificate `serial_hex` of one issuer."""
        with self._read() as conn:
            row = (
                conn.execute(
                    select(certificates).where(
                        and_(certificates.c.issuer_id == issuer_id, certificates.c.serial_hex == serial_hex)
                    )
                )
                .mappings()
                .first()
            )
        return self._certificate(row) if row else None

    def certificates_by_serial(self, serial_hex: str) -> list[CertificateRecord]:
        """Every certificate with this serial, across issuers."""
        with self._read() as conn:
            rows = conn.execute(select(certificates).where(certificates.c.serial_hex == serial_hex)).mappings().all()
        return [self._certificate(r) for r in rows]

    def certificate_by_fingerprint(self, fingerprint_sha256: str) -> CertificateRecord | None:
        with self._read() as conn:
            row = _CERTIFICATE_BY_FINGERPRINT.first(conn, {"fingerprint": fingerprint_sha256})
        return self._certificate(row) if row else None

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
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [self._certificate(r) for r in rows]

    def count_certificates(self, issuer_id: int | None = None) -> int:
        query = select(func.count()).select_from(certificates)
        if issuer_id is not None:
            query = query.where(certificates.c.issuer_id == issuer_id)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def revoke(
        self, cert_id: int, reason: str, revoked_at: dt.datetime, event: AuditEvent, now: dt.datetime
    ) -> CertificateRecord:
        """Mark a valid certificate revoked, with its audit event, in one transaction."""
        with self._write() as conn:
            changed = conn.execute(
                update(certificates)
                .where(and_(certificates.c.id == cert_id, certificates.c.status == "valid"))
                .values(status="revoked", revoked_at=revoked_at, revocation_reason=reason)
            ).rowcount
            if changed != 1:
                raise Conflict("the certificate is already revoked")
            issuer_id = conn.execute(select(certificates.c.issuer_id).where(certificates.c.id == cert_id)).scalar_one()
            self._bump_revision(conn, issuer_id)
            self._audit(conn, event, now)
        record = self.certificate_by_id(cert_id)
        assert record is not None
        return record

    def apply_due_supersessions(self, now: dt.datetime, actor: str) -> int:
        """Turn every certificate whose renewal grace period ended into a revoked one (superseded)."""
        c = certificates.c
        with self._write() as conn:
            due = conn.execute(
                select(c.id, c.issuer_id, c.serial_hex, c.supersede_at).where(
                    and_(c.status == "valid", c.supersede_at.is_not(None), c.supersede_at <= now)
                )
            ).all()
            for cert_id, issuer_id, serial, at in due:
                conn.execute(
                    update(certificates)
                    .where(and_(c.id == cert_id, c.status == "valid"))
                    .values(status="revoked", revoked_at=at, revocation_reason="superseded")
                )
                self._bump_revision(conn, issuer_id)
                self._audit(
                    conn,
                    AuditEvent(actor, "certificate.revoked", issuer_id, serial, {"reason": "superseded"}),
                    now,
                )
        return len(due)

    @staticmethod
    def _bump_revision(conn: Connection, issuer_id: int) -> None:
        """Count a change of the issuer's revocation list, in the transaction that makes it."""
        conn.execute(
            update(crl_publications)
            .where(crl_publications.c.issuer_id == issuer_id)
            .values(revision=crl_publications.c.revision + 1)
        )

    def crl_revision(self, issuer_id: int) -> int:
        """How many revocation changes the issuer has had; a CRL that includes fewer is out of date.

        Read it before reading the revoked entries: whatever committed before the read is then in
        the entries, and whatever commits after it raises the revision above the CRL's.
        """
        with self._read() as conn:
            value = conn.execute(
                select(crl_publications.c.revision).where(crl_publications.c.issuer_id == issuer_id)
            ).scalar_one_or_none()
        return int(value or 0)

    def revoked_entries(self, issuer_id: int, now: dt.datetime) -> list[RevokedEntry]:
        """What a CRL of this issuer lists at `now`: revoked (or superseded) and not yet expired."""
        c = certificates.c
        query = (
            select(c.serial_hex, c.status, c.revoked_at, c.revocation_reason, c.supersede_at)
            .where(
                and_(
                    c.issuer_id == issuer_id,
                    c.not_after >= now,
                    or_(c.status == "revoked", and_(c.supersede_at.is_not(None), c.supersede_at <= now)),
                )
            )
            .order_by(c.id)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        entries = []
        for serial, status, revoked_at, reason, supersede_at in rows:
            if status == "revoked":
                entries.append(RevokedEntry(serial, revoked_at, reason or "unspecified"))
            else:
                entries.append(RevokedEntry(serial, supersede_at, "superseded"))
        return entries

    # -- CRLs -------------------------------------------------------------------------------------

    def allocate_crl_number(self, issuer_id: int) -> int:
        """The next CRL number of an issuer; unique across every node (one atomic UPDATE)."""
        with self._write() as conn:
            number = conn.execute(
                update(crl_publications)
                .where(crl_publications.c.issuer_id == issuer_id)
                .values(last_number=crl_publications.c.last_number + 1)
                .returning(crl_publications.c.last_number)
            ).scalar_one_or_none()
        if number is None:
            raise Unavailable("no CRL counter for this issuer", detail=f"issuer id {issuer_id} has no CRL row")
        return int(number)

    def save_crl(self, crl: CrlRecord, event: AuditEvent, now: dt.datetime) -> bool:
        """Store a signed CRL unless a newer one is already stored; True when it was stored."""
        p = crl_publications.c
        with self._write() as conn:
            changed = conn.execute(
                update(crl_publications)
                .where(and_(p.issuer_id == crl.issuer_id, p.published_number < crl.number))
                .values(
                    published_number=crl.number,
                    this_update=crl.this_update,
                    next_update=crl.next_update,
                    der=crl.der,
                    published_revision=crl.revision,
                )
            ).rowcount
            if changed:
                self._audit(conn, event, now)
        return bool(changed)

    def latest_crl(self, issuer_id: int) -> CrlRecord | None:
        p = crl_publications.c
        with self._read() as conn:
            row = conn.execute(select(crl_publications).where(p.issuer_id == issuer_id)).mappings().first()
        if row is None or row["der"] is None:
            return None
        return CrlRecord(
            issuer_id=row["issuer_id"],
            number=int(row["published_number"]),
            this_update=row["this_update"],
            next_update=row["next_update"],
            der=row["der"],
            revision=int(row["published_revision"]),
        )

    def due_supersessions(self, issuer_id: int, now: dt.datetime) -> int:
        """How many of the issuer's certificates count as superseded by `now` but are not revoked yet."""
        c = certificates.c
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        and_(
                            c.issuer_id == issuer_id,
                            c.status == "valid",
                            c.supersede_at.is_not(None),
                            c.supersede_at <= now,
                        )
                    )
                ).scalar_one()
            )
