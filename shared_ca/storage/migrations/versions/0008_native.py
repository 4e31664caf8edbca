"""Native devices: first seen over EST, never over SCEP, not imported; apart from `migrated`.

Until now a device first seen over EST was counted `migrated`, as if it had moved from SCEP, and the
migration report's percentage counted it. This revision adds the state `native` and gives it to
every device that was `migrated` without ever having been a SCEP device: first seen over EST
(`source = 'est'`, which an import or a SCEP sighting never writes) and no SCEP contact since.
Those lose their `migrated_at` (they never moved), and so do retired devices of that kind.

From here on `source = 'est'` means exactly "native, or retired while native": a device first seen
over EST that is issued a certificate over SCEP becomes a SCEP device (`legacy`, source `scep`;
shared_ca.storage.device_contacts). Rows that broke that before (first seen over EST, SCEP contact
since) get source `scep` and keep their state.

The downgrade makes native devices `migrated` again, dated from their first sighting.

Revision ID: 0008_native
Revises: 0007_deferred
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_native"
down_revision = "0007_deferred"
branch_labels = None
depends_on = None

_WITH_NATIVE = "state IN ('legacy', 'mapped', 'migrated', 'native', 'retired')"
_WITHOUT_NATIVE = "state IN ('legacy', 'mapped', 'migrated', 'retired')"


def _state_check(condition: str) -> None:
    # SQLite changes a CHECK by copying the table (batch mode; nothing refers to devices), PostgreSQL in place.
    with op.batch_alter_table("devices") as batch:
        batch.drop_constraint("ck_devices_state", type_="check")
        batch.create_check_constraint("ck_devices_state", sa.text(condition))


def upgrade() -> None:
    _state_check(_WITH_NATIVE)
    op.execute("UPDATE devices SET source = 'scep' WHERE source = 'est' AND last_scep_at IS NOT NULL")
    op.execute("UPDATE devices SET state = 'native', migrated_at = NULL WHERE source = 'est' AND state = 'migrated'")
    op.execute("UPDATE devices SET migrated_at = NULL WHERE source = 'est' AND state = 'retired'")


def downgrade() -> None:
    op.execute("UPDATE devices SET state = 'migrated', migrated_at = first_seen_at WHERE state = 'native'")
    _state_check(_WITHOUT_NATIVE)
