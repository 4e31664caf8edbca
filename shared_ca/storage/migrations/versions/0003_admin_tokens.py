"""Admin tokens: bearer credentials of the admin API, stored as the SHA-256 of the token.

Revision ID: 0003_admin_tokens
Revises: 0002_enrollment
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared_ca.storage.schema import Id, UTCDateTime

revision = "0003_admin_tokens"
down_revision = "0002_enrollment"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_tokens",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("last_used_at", UTCDateTime, nullable=True),
        sa.Column("disabled_at", UTCDateTime, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("admin_tokens")
