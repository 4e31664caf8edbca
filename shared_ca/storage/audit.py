"""The audit log: who did what to the CA's records, one row per change, written in the change's
own transaction (`write_audit`) or on its own (`AuditLog.record_audit`)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from shared_ca.storage.database import Database
from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.schema import audit_events

_INSERT_AUDIT = PreparedStatement(insert(audit_events), columns_from_params=True)


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


def write_audit(conn: Connection, event: AuditEvent, now: dt.datetime) -> None:
    """Write one audit event in the caller's transaction."""
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


class AuditLog:
    """Write and read audit events."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record_audit(self, event: AuditEvent, now: dt.datetime) -> None:
        """Write one audit event on its own."""
        with self.db.write() as conn:
            write_audit(conn, event, now)

    def audit_events(self, *, action: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The newest audit events, newest first."""
        query = select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
        if action:
            query = query.where(audit_events.c.action == action)
        with self.db.read() as conn:
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
