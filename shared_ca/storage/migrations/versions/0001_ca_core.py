"""CA core: issuers, certificates, audit events, CRL publications.

Revision ID: 0001_ca_core
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared_ca.storage.schema import Id, UTCDateTime

revision = "0001_ca_core"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issuers",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("ski_hex", sa.String(128), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("cert_der", sa.LargeBinary, nullable=False),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("not_after", UTCDateTime, nullable=False),
        sa.Column("trust_until", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("issuer_id", Id, sa.ForeignKey("issuers.id"), nullable=False),
        sa.Column("serial_hex", sa.String(40), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("common_name", sa.String(255), nullable=True),
        sa.Column("sans", sa.Text, nullable=False),
        sa.Column("key_type", sa.String(32), nullable=False),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("not_after", UTCDateTime, nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("requester", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("revocation_reason", sa.String(32), nullable=True),
        sa.Column("supersede_at", UTCDateTime, nullable=True),
        sa.Column("renewed_from_id", Id, sa.ForeignKey("certificates.id"), nullable=True),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("issuer_id", "serial_hex", name="uq_certificates_issuer_serial"),
    )
    op.create_index("ix_certificates_common_name", "certificates", ["common_name"])
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])
    op.create_index("ix_certificates_status", "certificates", ["status"])
    op.create_table(
        "audit_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("issuer_id", Id, sa.ForeignKey("issuers.id"), nullable=True),
        sa.Column("serial_hex", sa.String(40), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])
    op.create_table(
        "crl_publications",
        sa.Column("issuer_id", Id, sa.ForeignKey("issuers.id"), primary_key=True, autoincrement=False),
        sa.Column("last_number", sa.BigInteger, nullable=False),
        sa.Column("published_number", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("published_revision", sa.BigInteger, nullable=False),
        sa.Column("this_update", UTCDateTime, nullable=True),
        sa.Column("next_update", UTCDateTime, nullable=True),
        sa.Column("der", sa.LargeBinary, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("crl_publications")
    op.drop_table("audit_events")
    op.drop_table("certificates")
    op.drop_table("issuers")
