"""Enrollment: enrollment events, SCEP transactions, one-time challenges, challenge lockout.

Revision ID: 0002_enrollment
Revises: 0001_ca_core
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared_ca.storage.schema import Id, UTCDateTime

revision = "0002_enrollment"
down_revision = "0001_ca_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrollment_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("profile", sa.String(64), nullable=True),
        sa.Column("device_identity", sa.String(255), nullable=True),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.Text, nullable=True),
        sa.Column("cipher", sa.String(32), nullable=True),
        sa.Column("digest", sa.String(32), nullable=True),
        sa.Column("challenge_kind", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("transaction_id", sa.String(255), nullable=True),
        sa.Column("serial_hex", sa.String(40), nullable=True),
        sa.Column("certificate_id", Id, sa.ForeignKey("certificates.id"), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.CheckConstraint("protocol IN ('scep', 'est')", name="ck_enrollment_events_protocol"),
    )
    op.create_index("ix_enrollment_events_device_identity", "enrollment_events", ["device_identity"])
    op.create_index("ix_enrollment_events_occurred_at", "enrollment_events", ["occurred_at"])
    op.create_table(
        "scep_transactions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("signer_key_sha256", sa.String(64), nullable=False),
        sa.Column("transaction_id", sa.String(255), nullable=False),
        sa.Column("signer_cert_sha256", sa.String(64), nullable=False),
        sa.Column("message_type", sa.String(8), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("certificate_id", Id, sa.ForeignKey("certificates.id"), nullable=True),
        sa.Column("fail_info", sa.String(32), nullable=True),
        sa.Column("fail_info_text", sa.Text, nullable=True),
        sa.Column("request_der", sa.LargeBinary, nullable=True),
        sa.Column("subject", sa.Text, nullable=True),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("signer_key_sha256", "transaction_id", name="uq_scep_transactions_signer_txn"),
        sa.CheckConstraint("status IN ('pending', 'issued', 'failed', 'rejected')", name="ck_scep_transactions_status"),
        sqlite_autoincrement=True,  # a replaced transaction's id is never reused for another request
    )
    op.create_index("ix_scep_transactions_status", "scep_transactions", ["status"])
    op.create_table(
        "scep_challenges",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("device_id", sa.String(255), nullable=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("expected_subject", sa.Text, nullable=True),
        sa.Column("uses_left", sa.Integer, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.CheckConstraint("uses_left >= 0", name="ck_scep_challenges_uses_left"),
    )
    op.create_table(
        "challenge_failures",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("first_failure_at", UTCDateTime, nullable=False),
        sa.Column("locked_until", UTCDateTime, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("challenge_failures")
    op.drop_table("scep_challenges")
    op.drop_index("ix_scep_transactions_status", table_name="scep_transactions")
    op.drop_table("scep_transactions")
    op.drop_index("ix_enrollment_events_occurred_at", table_name="enrollment_events")
    op.drop_index("ix_enrollment_events_device_identity", table_name="enrollment_events")
    op.drop_table("enrollment_events")
