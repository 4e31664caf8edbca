"""Issuers: the CA certificates the gateway signs with or trusts (ours, a prepared next CA, the CA a
rollover replaced, imported legacy CAs), each with its CRL counter."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from shared_ca.errors import Conflict
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.database import Database
from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.schema import crl_publications, issuers

_ISSUER_BY_ID = PreparedStatement(select(issuers).where(issuers.c.id == bindparam("issuer_id")))


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
    activates_at: dt.datetime | None = None  # a next CA's activation (`gateway ca activate`)
    rollover_of: int | None = None  # the issuer a next CA replaces
    new_with_old: bytes | None = None  # RFC 4210 §4.4: this CA's key certified by `rollover_of`'s (DER)
    old_with_new: bytes | None = None  # and `rollover_of`'s key certified by this CA's (DER)


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


def issuer_record(row: Mapping[Any, Any]) -> IssuerRecord:
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
        activates_at=row["activates_at"],
        rollover_of=row["rollover_of"],
        new_with_old=row["new_with_old"],
        old_with_new=row["old_with_new"],
    )


class Issuers:
    """Register, find and re-kind issuers."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_issuer(self, issuer: NewIssuer, event: AuditEvent, now: dt.datetime) -> IssuerRecord:
        """Register a CA certificate (ours or an imported legacy one) with its CRL counter."""
        with self.db.write() as conn:
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
            write_audit(conn, AuditEvent(event.actor, event.action, issuer_id, None, event.detail), now)
        found = self.issuer_by_id(issuer_id)
        assert found is not None
        return found

    def issuer_by_name(self, name: str) -> IssuerRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(issuers).where(issuers.c.name == name)).mappings().first()
        return issuer_record(row) if row else None

    def issuer_by_id(self, issuer_id: int) -> IssuerRecord | None:
        with self.db.read() as conn:
            row = _ISSUER_BY_ID.first(conn, {"issuer_id": issuer_id})
        return issuer_record(row) if row else None

    def list_issuers(self) -> list[IssuerRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(issuers).order_by(issuers.c.id)).mappings().all()
        return [issuer_record(r) for r in rows]

    def issuers_of_kind(self, kind: str) -> list[IssuerRecord]:
        """Issuers of one kind ('ca', 'legacy', 'next' for a prepared rollover CA, 'previous' for the CA a
        rollover replaced, 'retired'), oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(select(issuers).where(issuers.c.kind == kind).order_by(issuers.c.id)).mappings().all()
        return [issuer_record(r) for r in rows]

    def set_issuer_kind(self, issuer_id: int, kind: str, event: AuditEvent, now: dt.datetime) -> None:
        """Change an issuer's kind (e.g. retire a replaced next CA), with its audit event, atomically."""
        with self.db.write() as conn:
            conn.execute(update(issuers).where(issuers.c.id == issuer_id).values(kind=kind))
            write_audit(conn, AuditEvent(event.actor, event.action, issuer_id, None, event.detail), now)

    def link_rollover(self, issuer_id: int, rollover_of: int, new_with_old: bytes, old_with_new: bytes) -> None:
        """Record which issuer a next CA replaces and the two root key update certificates linking them."""
        with self.db.write() as conn:
            conn.execute(
                update(issuers)
                .where(issuers.c.id == issuer_id)
                .values(rollover_of=rollover_of, new_with_old=new_with_old, old_with_new=old_with_new)
            )

    def schedule_activation(
        self, issuer_id: int, at: dt.datetime, event: AuditEvent | None, now: dt.datetime
    ) -> bool:
        """Set when a next CA starts issuing (with `event` in the audit log, if given); False when it is no
        longer a next CA (activated or replaced)."""
        with self.db.write() as conn:
            done = conn.execute(
                update(issuers).where(and_(issuers.c.id == issuer_id, issuers.c.kind == "next")).values(activates_at=at)
            )
            if done.rowcount != 1:
                return False
            if event is not None:
                write_audit(conn, AuditEvent(event.actor, event.action, issuer_id, None, event.detail), now)
        return True

    def activate_due(self, now: dt.datetime, actor: str) -> IssuerRecord | None:
        """Make the next CA whose activation time has come the issuing CA ('ca'), and the CA it replaces
        'previous' (it still publishes CRLs and answers OCSP for its certificates), atomically with the
        'issuer.activated' audit record. Idempotent: None when no activation was due, or another worker
        or node made it first."""
        due = [(i, i.activates_at) for i in self.issuers_of_kind("next") if i.activates_at and i.activates_at <= now]
        if not due:
            return None
        issuer, at = due[-1]
        with self.db.write() as conn:
            done = conn.execute(
                update(issuers).where(and_(issuers.c.id == issuer.id, issuers.c.kind == "next")).values(kind="ca")
            )
            if done.rowcount != 1:
                return None
            replaced = conn.execute(
                select(issuers.c.name).where(and_(issuers.c.kind == "ca", issuers.c.id != issuer.id))
            ).scalars().all()
            conn.execute(
                update(issuers).where(and_(issuers.c.kind == "ca", issuers.c.id != issuer.id)).values(kind="previous")
            )
            detail = {"name": issuer.name, "at": at.isoformat(), "previous": sorted(replaced)}
            write_audit(conn, AuditEvent(actor, "issuer.activated", issuer.id, None, detail), now)
        return self.issuer_by_id(issuer.id)
