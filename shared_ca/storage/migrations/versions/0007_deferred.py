"""Deferred requests: what admission control stores instead of issuing at once, and who issues them.

`approval_requests.deferred` marks a request held because its worker was at capacity (issued in the
background, not by an administrator); `claimed_until` is the lease of the worker issuing it, so a
request is issued by one worker at a time and by another if that one died.

Revision ID: 0007_deferred
Revises: 0006_approvals
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared_ca.storage.schema import UTCDateTime

revision = "0007_deferred"
down_revision = "0006_approvals"
branch_labels = None
depends_on = None


# Plain ALTER TABLE (recreate="never"), never SQLite's copy-the-table batch mode: scep_transactions refers to
# approval_requests, and a copy would break that reference where rows exist (SQLite >= 3.35 drops a
# column in place).


def upgrade() -> None:
    with op.batch_alter_table("approval_requests", recreate="never") as batch:
        batch.add_column(sa.Column("deferred", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("claimed_until", UTCDateTime, nullable=True))
    op.create_index("ix_approval_requests_deferred", "approval_requests", ["deferred", "status"])


def downgrade() -> None:
    op.drop_index("ix_approval_requests_deferred", table_name="approval_requests")
    with op.batch_alter_table("approval_requests", recreate="never") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("deferred")
