"""The SCEP client family of each device (scep.clients), recognised at every SCEP contact.

`devices.scep_client` names the client a device runs (apple, windows, cisco-ios, certmonger, sscep,
micromdm-scepclient, jscep), or is NULL while nothing told. Existing rows are filled in from the
User-Agent their last SCEP contact kept, the one fact stored before this revision (the patterns of
scep.clients as of this revision, written out here so later changes there do not change the past);
the other facts (method, path, transactionID) come with the device's next SCEP contact.

Revision ID: 0009_client_family
Revises: 0008_native
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_client_family"
down_revision = "0008_native"
branch_labels = None
depends_on = None

# (family, LIKE patterns of the User-Agent), first match wins, as scep.clients.recognise_client does.
_BY_USER_AGENT = (
    ("windows", ("%NDES client%",)),
    ("cisco-ios", ("%Cisco PKI%",)),
    ("sscep", ("%sscep%",)),
    (
        "apple",
        (
            "%CFNetwork%",
            "%Darwin%",
            "%profiled%",
            "%mdmclient%",
            "%iPhone%",
            "%iPad%",
            "%Macintosh%",
            "%iOS%",
            "%macOS%",
        ),
    ),
    ("jscep", ("Java/%",)),
    ("micromdm-scepclient", ("Go-http-client/%",)),
)


def upgrade() -> None:
    with op.batch_alter_table("devices", recreate="never") as batch:
        batch.add_column(sa.Column("scep_client", sa.String(32), nullable=True))
    conn = op.get_bind()
    for family, patterns in _BY_USER_AGENT:
        matches = " OR ".join(f"lower(scep_user_agent) LIKE lower(:p{i})" for i in range(len(patterns)))
        conn.execute(
            sa.text(f"UPDATE devices SET scep_client = :family WHERE scep_client IS NULL AND ({matches})"),  # noqa: S608 - fixed text
            {"family": family, **{f"p{i}": pattern for i, pattern in enumerate(patterns)}},
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", recreate="never") as batch:
        batch.drop_column("scep_client")
