"""CA rollover (issue 16): a next CA's activation time and its link to the CA it replaces, and leases
for jobs that one worker of one node runs at a time.

`issuers` gains:
- `activates_at`: when a next CA (kind 'next') becomes the issuing CA (`gateway ca activate`);
- `rollover_of`: the issuer a next CA replaces;
- `new_with_old` and `old_with_new`: the root key update certificates of RFC 4210 §4.4 that link the
  two (the new CA's key certified by the old CA, and the old CA's key certified by the new one), served
  by EST /cacerts (RFC 7030 §4.1.3).

`job_leases` holds one row per background job that must not run twice at once (the RA certificate's
renewal): whoever holds an unexpired lease runs it.

Revision ID: 0011_ca_rollover
Revises: 0010_audit_chain
Create Date: 2026-12-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared_ca.storage.schema import Id, UTCDateTime

revision = "0011_ca_rollover"
down_revision = "0010_audit_chain"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issuers", recreate="never") as batch:
        batch.add_column(sa.Column("activates_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("rollover_of", Id, nullable=True))
        batch.add_column(sa.Column("new_with_old", sa.LargeBinary, nullable=True))
        batch.add_column(sa.Column("old_with_new", sa.LargeBinary, nullable=True))
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
    with op.batch_alter_table("issuers", recreate="never") as batch:
        for name in ("old_with_new", "new_with_old", "rollover_of", "activates_at"):
            batch.drop_column(name)
