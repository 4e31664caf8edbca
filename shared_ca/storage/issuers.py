"""Issuers: the CA certificates the gateway signs with or trusts (ours, a prepared next CA, imported
legacy CAs), each with its CRL counter."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
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
        """Issuers of one kind ('ca', 'legacy', 'next' for a prepared rollover CA, 'retired'), oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(select(issuers).where(issuers.c.kind == kind).order_by(issuers.c.id)).mappings().all()
        return [issuer_record(r) for r in rows]

    def set_issuer_kind(self, issuer_id: int, kind: str, event: AuditEvent, now: dt.datetime) -> None:
        """Change an issuer's kind (e.g. retire a replaced next CA), with its audit event, atomically."""
        with self.db.write() as conn:
            conn.execute(update(issuers).where(issuers.c.id == issuer_id).values(kind=kind))
            write_audit(conn, AuditEvent(event.actor, event.action, issuer_id, None, event.detail), now)
