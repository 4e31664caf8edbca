"""EST: per-user Basic credentials (hashed), and the TLS version of each enrollment event.

Revision ID: 0004_est
Revises: 0003_admin_tokens
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared_ca.storage.schema import Id, UTCDateTime

revision = "0004_est"
down_revision = "0003_admin_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "est_users",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("device_identity", sa.String(255), nullable=True),
        sa.Column("uses_left", sa.Integer, nullable=True),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("disabled_at", UTCDateTime, nullable=True),
        sa.Column("last_used_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.CheckConstraint("uses_left >= 0", name="ck_est_users_uses_left"),
        sa.CheckConstraint("kind IN ('password', 'bootstrap')", name="ck_est_users_kind"),
        sa.Index("ix_est_users_device_identity", "device_identity"),
    )
    # SQLite adds a nullable column in place (batch mode recreates the table only when it must).
    with op.batch_alter_table("enrollment_events") as batch:
        batch.add_column(sa.Column("tls_version", sa.String(16), nullable=True))


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place; recreating the table would lose its CHECK constraint.
    with op.batch_alter_table("enrollment_events", recreate="never") as batch:
        batch.drop_column("tls_version")
    op.drop_table("est_users")
