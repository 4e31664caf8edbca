"""The audit log becomes a set of hash chains, one per node (shared_ca.storage.audit_chain).

Each record gains `node`, `seq` (1..n per node, unique), `prev_hash` and `hash`; `audit_chain_heads`
keeps each chain's newest seq and hash. The records written before this revision are chained here,
in the order they were written (row id), into the chain of node 'legacy', so `gateway audit verify`
passes after the upgrade. Chaining them now proves only that they have not changed since the
upgrade, not before it. Every node's later records go into its own chain.

Downgrading drops the chain columns and the heads: the records stay, their chains are gone.

Revision ID: 0010_audit_chain
Revises: 0009_client_family
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared_ca.storage.audit_chain import GENESIS, LEGACY_NODE, ChainedFields, record_digest
from shared_ca.storage.schema import Id, UTCDateTime

revision = "0010_audit_chain"
down_revision = "0009_client_family"
branch_labels = None
depends_on = None

_BATCH = 2000

_events = sa.table(
    "audit_events",
    sa.column("id", Id),
    sa.column("occurred_at", UTCDateTime),
    sa.column("actor", sa.String),
    sa.column("action", sa.String),
    sa.column("issuer_id", Id),
    sa.column("serial_hex", sa.String),
    sa.column("detail", sa.Text),
    sa.column("node", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
)


def _chain_existing(conn: sa.Connection) -> tuple[int, str]:
    """Chain the records there are, oldest first; the chain's last seq and hash."""
    e = _events.c
    set_chain = (
        sa.update(_events)
        .where(e.id == sa.bindparam("row_id"))
        .values(
            node=sa.bindparam("chain_node"),
            seq=sa.bindparam("chain_seq"),
            prev_hash=sa.bindparam("chain_prev"),
            hash=sa.bindparam("chain_hash"),
        )
    )
    seq, prev_hash, after = 0, GENESIS, 0
    while True:
        rows = conn.execute(
            sa.select(e.id, e.occurred_at, e.actor, e.action, e.issuer_id, e.serial_hex, e.detail)
            .where(e.id > after)
            .order_by(e.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return seq, prev_hash
        updates = []
        for row in rows:
            seq += 1
            fields = ChainedFields(
                node=LEGACY_NODE,
                seq=seq,
                prev_hash=prev_hash,
                occurred_at=row.occurred_at,
                actor=row.actor,
                action=row.action,
                issuer_id=row.issuer_id,
                serial_hex=row.serial_hex,
                detail=row.detail,
            )
            digest = record_digest(fields)
            updates.append(
                {
                    "row_id": row.id,
                    "chain_node": LEGACY_NODE,
                    "chain_seq": seq,
                    "chain_prev": prev_hash,
                    "chain_hash": digest,
                }
            )
            prev_hash = digest
        conn.execute(set_chain, updates)
        after = rows[-1].id


def upgrade() -> None:
    op.create_table(
        "audit_chain_heads",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
    )
    with op.batch_alter_table("audit_events", recreate="never") as batch:
        batch.add_column(sa.Column("node", sa.String(64), nullable=True))
        batch.add_column(sa.Column("seq", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    conn = op.get_bind()
    last_seq, last_hash = _chain_existing(conn)
    if last_seq:
        conn.execute(
            sa.text("INSERT INTO audit_chain_heads (node, last_seq, last_hash) VALUES (:node, :seq, :hash)"),
            {"node": LEGACY_NODE, "seq": last_seq, "hash": last_hash},
        )
    with op.batch_alter_table("audit_events") as batch:
        for name in ("node", "seq", "prev_hash", "hash"):
            batch.alter_column(name, nullable=False)
        batch.create_unique_constraint("uq_audit_events_node_seq", ["node", "seq"])
    op.create_index("ix_audit_events_action_node", "audit_events", ["action", "node", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_action_node", table_name="audit_events")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_node_seq", type_="unique")
        for name in ("hash", "prev_hash", "seq", "node"):
            batch.drop_column(name)
    op.drop_table("audit_chain_heads")
