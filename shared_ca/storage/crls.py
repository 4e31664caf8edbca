"""Revocation lists: what an issuer's CRL lists, its numbers and revision, the published CRLs, and
renewed certificates whose grace period ended (superseded, so revoked)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Connection

from shared_ca.errors import Unavailable
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.database import Database
from shared_ca.storage.schema import certificates, crl_publications


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


def bump_revision(conn: Connection, issuer_id: int) -> None:
    """Count a change of the issuer's revocation list, in the transaction that makes it."""
    conn.execute(
        update(crl_publications)
        .where(crl_publications.c.issuer_id == issuer_id)
        .values(revision=crl_publications.c.revision + 1)
    )


class Crls:
    """The revocation list of each issuer and its published CRL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def crl_revision(self, issuer_id: int) -> int:
        """How many revocation changes the issuer has had; a CRL that includes fewer is out of date.

        Read it before reading the revoked entries: whatever committed before the read is then in
        the entries, and whatever commits after it raises the revision above the CRL's.
        """
        with self.db.read() as conn:
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
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        entries = []
        for serial, status, revoked_at, reason, supersede_at in rows:
            if status == "revoked":
                entries.append(RevokedEntry(serial, revoked_at, reason or "unspecified"))
            else:
                entries.append(RevokedEntry(serial, supersede_at, "superseded"))
        return entries

    def allocate_crl_number(self, issuer_id: int) -> int:
        """The next CRL number of an issuer; unique across every node (one atomic UPDATE)."""
        with self.db.write() as conn:
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
        with self.db.write() as conn:
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
                write_audit(conn, event, now)
        return bool(changed)

    def latest_crl(self, issuer_id: int) -> CrlRecord | None:
        p = crl_publications.c
        with self.db.read() as conn:
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
        with self.db.read() as conn:
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

    def apply_due_supersessions(self, now: dt.datetime, actor: str) -> int:
        """Turn every certificate whose renewal grace period ended into a revoked one (superseded)."""
        c = certificates.c
        with self.db.write() as conn:
            due = conn.execute(
                select(c.id, c.issuer_id, c.serial_hex, c.supersede_at).where(
                    and_(c.status == "valid", c.supersede_at.is_not(None), c.supersede_at <= now)
                )
            ).all()
            for cert_id, issuer_id, _serial, at in due:
                conn.execute(
                    update(certificates)
                    .where(and_(c.id == cert_id, c.status == "valid"))
                    .values(status="revoked", revoked_at=at, revocation_reason="superseded")
                )
                bump_revision(conn, issuer_id)
            for _cert_id, issuer_id, serial, _at in due:  # last: the audit chain's head is the last lock taken
                write_audit(
                    conn,
                    AuditEvent(actor, "certificate.revoked", issuer_id, serial, {"reason": "superseded"}),
                    now,
                )
        return len(due)
