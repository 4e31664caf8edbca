"""The audit log: every security-relevant act, one row each, append-only and hash-chained per node.

An act writes its record in its own transaction (`write_audit(conn, …)`), so the act and its record
commit together or not at all; `AuditLog.record_audit` writes one on its own. Appending locks the
node's chain head (audit_chain_heads) until the transaction ends, so the writers of one node, in any
number of processes, take turns; nodes do not wait for each other (shared_ca.storage.audit_chain says
what the chain proves). The node comes from the engine (`configure_audit`), the host name otherwise.

A sink (`configure_audit`) gets each record once its transaction has committed, never one that rolled
back (Database.write's after-commit actions); a record written outside a Database.write scope goes to
no sink.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine, Select, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping

from shared_ca.storage.audit_chain import (
    GENESIS,
    Anchor,
    ChainedFields,
    ChainedRecord,
    ChainHead,
    ChainReport,
    check_chain,
    check_node_name,
    record_digest,
)
from shared_ca.storage.database import Database, after_commit
from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.schema import audit_chain_heads, audit_events

MAX_ACTOR = 255
MAX_ACTION = 64
_TRAIL_OPTION = "gateway_audit_trail"  # the engine execution option configure_audit sets
_PAGE = 2000  # records read at a time by verify and export

_head = audit_chain_heads.c
# Locks the node's head row until the transaction ends and takes the next seq.
_ADVANCE_HEAD = PreparedStatement(
    update(audit_chain_heads)
    .where(_head.node == bindparam("chain_node"))
    .values(last_seq=_head.last_seq + 1)
    .returning(_head.last_seq, _head.last_hash)
)
_SET_HEAD_HASH = PreparedStatement(
    update(audit_chain_heads).where(_head.node == bindparam("chain_node")).values(last_hash=bindparam("chain_hash"))
)
_INSERT_AUDIT = PreparedStatement(insert(audit_events), columns_from_params=True)
_INSERT_AUDIT_RETURNING = PreparedStatement(insert(audit_events).returning(audit_events.c.id), columns_from_params=True)
# PostgreSQL: the record and the head's new hash in one statement, one round trip less while the head is locked.
_CHAINED_COLUMNS = ("occurred_at", "actor", "action", "issuer_id", "serial_hex", "detail", "node", "seq", "prev_hash")
_appended = (
    insert(audit_events)
    .values({name: bindparam(f"record_{name}") for name in (*_CHAINED_COLUMNS, "hash")})
    .returning(audit_events.c.id)
    .cte("appended")
)
_APPEND_IN_ONE = PreparedStatement(
    update(audit_chain_heads)
    .where(_head.node == bindparam("chain_node"))
    .values(last_hash=bindparam("chain_hash"))
    .add_cte(_appended)
    .returning(select(_appended.c.id).scalar_subquery())
)


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
    node: str
    seq: int
    prev_hash: str
    hash: str


class AuditSink(Protocol):
    """Where records go besides the database (a syslog server): each once its transaction committed.
    `send` must not block and must not raise."""

    def send(self, record: AuditRecord) -> None: ...


@dataclass(frozen=True)
class AuditTrail:
    """How one engine's audit records are written: the node's chain, and the sink if any."""

    node: str
    sink: AuditSink | None = None


def configure_audit(engine: Engine, node: str, sink: AuditSink | None = None) -> None:
    """Write the audit records of `engine` into the chain of `node` (ValueError for a name that cannot
    be one), and send each to `sink` after its commit."""
    engine.update_execution_options(**{_TRAIL_OPTION: AuditTrail(check_node_name(node), sink)})


def default_node() -> str:
    """The chain of an engine nobody configured: the host name (up to its first dot when too long)."""
    name = socket.gethostname() or "localhost"
    return name if len(name) <= 64 else name.split(".", 1)[0][:64]


def _trail(conn: Connection) -> AuditTrail:
    trail = conn.get_execution_options().get(_TRAIL_OPTION)
    return trail if isinstance(trail, AuditTrail) else AuditTrail(default_node())


def canonical_detail(detail: dict[str, Any] | None) -> str:
    """The stored (and hashed) text of a record's detail: JSON, sorted keys, no spaces, ASCII."""
    return json.dumps(detail or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _chain_head(conn: Connection, node: str) -> tuple[int, str]:
    """The next seq of `node`'s chain and its predecessor's hash, the head row locked until the
    transaction ends (its first record creates the head: a concurrent creator waits, then advances it)."""
    row = _ADVANCE_HEAD.execute(conn, {"chain_node": node})
    if row is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(audit_chain_heads)
            .values(node=node, last_seq=0, last_hash=GENESIS)
            .on_conflict_do_nothing(index_elements=["node"])
        )
        row = _ADVANCE_HEAD.execute(conn, {"chain_node": node})
        assert row is not None
    return int(row[0]), str(row[1])


def write_audit(conn: Connection, event: AuditEvent, now: dt.datetime) -> None:
    """Append one audit record to this node's chain in the caller's transaction."""
    trail = _trail(conn)
    seq, prev_hash = _chain_head(conn, trail.node)
    fields = ChainedFields(
        node=trail.node,
        seq=seq,
        prev_hash=prev_hash,
        occurred_at=now,
        actor=event.actor[:MAX_ACTOR],
        action=event.action[:MAX_ACTION],
        issuer_id=event.issuer_id,
        serial_hex=event.serial_hex,
        detail=canonical_detail(event.detail),
    )
    digest = record_digest(fields)
    values = {**vars(fields), "hash": digest}
    head = {"chain_node": trail.node, "chain_hash": digest}
    if conn.dialect.name == "postgresql":
        row = _APPEND_IN_ONE.execute(conn, {**{f"record_{k}": v for k, v in values.items()}, **head})
    elif trail.sink is None:
        _INSERT_AUDIT.execute(conn, values)
        _SET_HEAD_HASH.rowcount(conn, head)
        return
    else:
        row = _INSERT_AUDIT_RETURNING.execute(conn, values)
        _SET_HEAD_HASH.rowcount(conn, head)
    if trail.sink is None:
        return
    assert row is not None
    record = _record_of(int(row[0]), fields, digest)
    sink = trail.sink
    after_commit(conn, lambda: sink.send(record))


def _record_of(record_id: int, fields: ChainedFields, digest: str) -> AuditRecord:
    return AuditRecord(
        id=record_id,
        occurred_at=fields.occurred_at.astimezone(dt.UTC),
        actor=fields.actor,
        action=fields.action,
        issuer_id=fields.issuer_id,
        serial_hex=fields.serial_hex,
        detail=json.loads(fields.detail),
        node=fields.node,
        seq=fields.seq,
        prev_hash=fields.prev_hash,
        hash=digest,
    )


def audit_record(row: RowMapping) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        occurred_at=row["occurred_at"],
        actor=row["actor"],
        action=row["action"],
        issuer_id=row["issuer_id"],
        serial_hex=row["serial_hex"],
        detail=json.loads(row["detail"]),
        node=row["node"],
        seq=row["seq"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def _chained(row: RowMapping) -> ChainedRecord:
    fields = ChainedFields(
        node=row["node"],
        seq=row["seq"],
        prev_hash=row["prev_hash"],
        occurred_at=row["occurred_at"],
        actor=row["actor"],
        action=row["action"],
        issuer_id=row["issuer_id"],
        serial_hex=row["serial_hex"],
        detail=row["detail"],
    )
    return ChainedRecord(row["id"], fields, row["hash"])


class AuditLog:
    """Write, read, export and verify audit records."""

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
        return [audit_record(r) for r in rows]

    def last_of_node(self, node: str, action: str) -> AuditRecord | None:
        """The newest record of `action` in `node`'s chain."""
        a = audit_events.c
        query = select(audit_events).where(a.action == action, a.node == node).order_by(a.seq.desc()).limit(1)
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return audit_record(row) if row else None

    def records(
        self, *, since: dt.datetime | None = None, until: dt.datetime | None = None, node: str | None = None
    ) -> Iterator[AuditRecord]:
        """The records written from `since` (inclusive) to `until` (exclusive), in the order they were
        written (row id), read a page at a time."""
        a = audit_events.c
        after = 0
        while True:
            query = select(audit_events).where(a.id > after).order_by(a.id).limit(_PAGE)
            if since is not None:
                query = query.where(a.occurred_at >= since)
            if until is not None:
                query = query.where(a.occurred_at < until)
            if node is not None:
                query = query.where(a.node == node)
            with self.db.read() as conn:
                rows = conn.execute(query).mappings().all()
            for row in rows:
                yield audit_record(row)
            if len(rows) < _PAGE:
                return
            after = rows[-1]["id"]

    def heads(self) -> list[ChainHead]:
        """Every node's chain head, by node name."""
        with self.db.read() as conn:
            rows = conn.execute(select(audit_chain_heads).order_by(audit_chain_heads.c.node)).all()
        return [ChainHead(r.node, r.last_seq, r.last_hash) for r in rows]

    def nodes(self) -> list[str]:
        """Every node with a chain head or a record, by name."""
        with self.db.read() as conn:
            found = set(conn.execute(select(audit_events.c.node).distinct()).scalars())
        return sorted(found | {head.node for head in self.heads()})

    def verify(self, *, nodes: Sequence[str] | None = None, anchors: Sequence[Anchor] = ()) -> list[ChainReport]:
        """Check the chains of `nodes` (default: all, and every anchor's), one report each, by node name."""
        heads = {head.node: head for head in self.heads()}
        wanted = sorted(set(nodes) | {a.node for a in anchors}) if nodes is not None else None
        names = wanted if wanted is not None else sorted(set(self.nodes()) | {a.node for a in anchors})
        return [
            check_chain(node, self._chain(node), heads.get(node), _Lookup(self.db, node), anchors) for node in names
        ]

    def _chain(self, node: str) -> Iterator[ChainedRecord]:
        a = audit_events.c
        after = 0
        while True:
            query = select(audit_events).where(a.node == node, a.seq > after).order_by(a.seq, a.id).limit(_PAGE)
            with self.db.read() as conn:
                rows = conn.execute(query).mappings().all()
            for row in rows:
                yield _chained(row)
            if len(rows) < _PAGE:
                return
            after = rows[-1]["seq"]


class _Lookup:
    """Where a node's records sit, for the records verify finds out of place (shared_ca.storage.audit_chain)."""

    def __init__(self, db: Database, node: str) -> None:
        self.db = db
        self.node = node

    def seq_with_hash(self, digest: str) -> int | None:
        a = audit_events.c
        return self._seq(select(a.seq).where(a.node == self.node, a.hash == digest).limit(1))

    def seq_linking_to(self, digest: str) -> int | None:
        a = audit_events.c
        return self._seq(select(a.seq).where(a.node == self.node, a.prev_hash == digest).limit(1))

    def _seq(self, query: Select[int]) -> int | None:
        with self.db.read() as conn:
            found = conn.execute(query).scalar()
        return int(found) if found is not None else None
