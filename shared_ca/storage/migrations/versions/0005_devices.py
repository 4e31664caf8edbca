"""Migration model: devices (one row per device, whichever protocol it arrives by) and device groups
(sunset date, downgrade policy).

Revision ID: 0005_devices
Revises: 0004_est
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared_ca.storage.schema import Id, UTCDateTime

revision = "0005_devices"
down_revision = "0004_est"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_groups",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("sunset_at", UTCDateTime, nullable=True),
        sa.Column("allow_downgrade", sa.Boolean, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("identity", sa.String(255), nullable=False, unique=True),
        sa.Column("group_name", sa.String(64), nullable=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("first_seen_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("last_scep_at", UTCDateTime, nullable=True),
        sa.Column("last_est_at", UTCDateTime, nullable=True),
        sa.Column("scep_user_agent", sa.Text, nullable=True),
        sa.Column("scep_cipher", sa.String(32), nullable=True),
        sa.Column("scep_digest", sa.String(32), nullable=True),
        sa.Column("scep_challenge", sa.String(16), nullable=True),
        sa.Column("certificate_id", Id, sa.ForeignKey("certificates.id"), nullable=True),
        sa.Column("certificate_not_after", UTCDateTime, nullable=True),
        sa.Column("mapping_mode", sa.String(16), nullable=True),
        sa.Column("est_credential", sa.String(128), nullable=True),
        sa.Column("mapped_at", UTCDateTime, nullable=True),
        sa.Column("migrated_at", UTCDateTime, nullable=True),
        sa.Column("retired_at", UTCDateTime, nullable=True),
        sa.CheckConstraint("state IN ('legacy', 'mapped', 'migrated', 'retired')", name="ck_devices_state"),
        sa.CheckConstraint(
            "mapping_mode IS NULL OR mapping_mode IN ('certificate', 'bootstrap')", name="ck_devices_mapping_mode"
        ),
        sa.Index("ix_devices_state", "state"),
        sa.Index("ix_devices_group_state", "group_name", "state"),
    )


def downgrade() -> None:
    op.drop_table("devices")
    op.drop_table("device_groups")
