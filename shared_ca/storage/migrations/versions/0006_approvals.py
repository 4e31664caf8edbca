"""A protocol-neutral approval queue, and no challengePassword at rest.

- `approval_requests`: requests of either protocol held for manual approval, keyed on what is asked
  (public key, subject, subjectAltNames, profile, principal), not on the CSR's bytes. EST rows that
  were stored as SCEP transactions (message_type 'est', signer 'user:<name>') move there, and a
  pending SCEP transaction links to its approval request.
- `scep_transactions.request_der` (every PKCS#10 with its challengePassword in clear, wrong guesses
  included) becomes `request_sha256`, which is all a retransmission check needs.
- `est_users.label` (one label; NULL meant any) becomes `labels` (several; NULL means the default
  label only).
- `devices.est_label`: the EST label a device was mapped to, the profile its legacy certificate
  renews into.

Revision ID: 0006_approvals
Revises: 0005_devices
Create Date: 2026-12-06
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import sqlalchemy as sa
from alembic import op
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared_ca.storage.approvals import approval_key
from shared_ca.storage.schema import Id, UTCDateTime

revision = "0006_approvals"
down_revision = "0005_devices"
branch_labels = None
depends_on = None

EST_MESSAGE_TYPE = "est"
# SQLite's batch mode copies the table into a new one: it must keep AUTOINCREMENT (a replaced SCEP
# transaction's id is never reused, see schema.scep_transactions).
_KEEP_AUTOINCREMENT = {"sqlite_autoincrement": True}


def upgrade() -> None:
    # est_users first: SQLite's batch mode copies it into a new table, which it cannot do once
    # approval_requests rows refer to it.
    with op.batch_alter_table("est_users") as batch:
        batch.add_column(sa.Column("labels", sa.Text, nullable=True))
    op.get_bind().execute(sa.text("UPDATE est_users SET labels = label"))
    with op.batch_alter_table("est_users") as batch:
        batch.drop_column("label")
    op.create_table(
        "approval_requests",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("request_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("principal_kind", sa.String(16), nullable=False),
        sa.Column("principal_name", sa.String(255), nullable=False),
        sa.Column("est_user_id", Id, sa.ForeignKey("est_users.id"), nullable=True),
        sa.Column("renewal_of_id", Id, sa.ForeignKey("certificates.id"), nullable=True),
        sa.Column("device_identity", sa.String(255), nullable=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("subject_der", sa.LargeBinary, nullable=False),
        sa.Column("public_key_der", sa.LargeBinary, nullable=False),
        sa.Column("sans_der", sa.LargeBinary, nullable=True),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("certificate_id", Id, sa.ForeignKey("certificates.id"), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=True),
        sa.Column("decided_by", sa.String(255), nullable=True),
        sa.UniqueConstraint("protocol", "request_key", name="uq_approval_requests_protocol_key"),
        sa.CheckConstraint("status IN ('pending', 'issued', 'rejected')", name="ck_approval_requests_status"),
        sa.CheckConstraint("protocol IN ('scep', 'est')", name="ck_approval_requests_protocol"),
    )
    op.create_index("ix_approval_requests_status", "approval_requests", ["status"])
    with op.batch_alter_table("scep_transactions", table_kwargs=_KEEP_AUTOINCREMENT) as batch:
        batch.add_column(sa.Column("request_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("approval_id", Id, nullable=True))
        batch.create_foreign_key("fk_scep_transactions_approval_id", "approval_requests", ["approval_id"], ["id"])
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("est_label", sa.String(64), nullable=True))
    _move_transactions(op.get_bind())
    with op.batch_alter_table("scep_transactions", table_kwargs=_KEEP_AUTOINCREMENT) as batch:
        batch.drop_column("request_der")


def _move_transactions(conn: sa.Connection) -> None:
    """Hash every stored request; queue the pending ones (and every EST row) as approval requests."""
    query = sa.text(
        "SELECT id, signer_key_sha256, transaction_id, signer_cert_sha256, message_type, profile, status, "
        "certificate_id, fail_info_text, request_der, client_address, created_at, updated_at "
        "FROM scep_transactions"
    ).columns(created_at=UTCDateTime(), updated_at=UTCDateTime())
    rows = conn.execute(query).mappings().all()
    users = {row["name"]: row["id"] for row in conn.execute(sa.text("SELECT id, name FROM est_users")).mappings()}
    for row in rows:
        request_der: bytes | None = row["request_der"]
        request_sha = hashlib.sha256(request_der).hexdigest() if request_der is not None else None
        is_est = row["message_type"] == EST_MESSAGE_TYPE
        approval_id = None
        if request_der is not None and (is_est or row["status"] == "pending"):
            approval_id = _queue(conn, row, request_der, is_est, users)
        if is_est:
            conn.execute(sa.text("DELETE FROM scep_transactions WHERE id = :id"), {"id": row["id"]})
            continue
        conn.execute(
            sa.text("UPDATE scep_transactions SET request_sha256 = :sha, approval_id = :approval WHERE id = :id"),
            {"sha": request_sha, "approval": approval_id, "id": row["id"]},
        )


def _queue(conn: sa.Connection, row: Any, request_der: bytes, is_est: bool, users: dict[str, int]) -> int | None:
    try:
        csr = x509.load_der_x509_csr(request_der)
        subject_der = csr.subject.public_bytes()
        spki = csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        try:
            sans_der: bytes | None = csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.public_bytes()
        except x509.ExtensionNotFound:
            sans_der = None
        subject = csr.subject.rfc4514_string()
    except ValueError:
        return None  # an unreadable request was never issuable: it leaves the queue
    signer_ref: str = row["signer_cert_sha256"]
    renewal_of = conn.execute(
        sa.text("SELECT id FROM certificates WHERE fingerprint_sha256 = :fp"), {"fp": signer_ref}
    ).scalar()
    if is_est:
        protocol = "est"
        user_name = signer_ref.removeprefix("user:") if signer_ref.startswith("user:") else None
        principal_ref = f"user:{user_name}" if user_name is not None else f"cert:{signer_ref}"
        kind = "basic" if user_name is not None else "certificate"
        name = user_name or subject
    else:
        protocol = "scep"
        principal_ref = f"scep:{row['signer_key_sha256']}:{row['transaction_id']}"
        kind = "certificate" if renewal_of is not None else "static"
        name = subject if renewal_of is not None else "static challenge"
        user_name = None
    status = {"failed": "rejected"}.get(row["status"], row["status"])
    key = approval_key(
        public_key_der=spki,
        subject_der=subject_der,
        sans_der=sans_der,
        profile=row["profile"],
        principal_ref=principal_ref,
    )
    decided: dt.datetime | None = row["updated_at"] if status != "pending" else None
    return conn.execute(
        sa.text(
            "INSERT INTO approval_requests (protocol, profile, request_key, status, principal_kind, principal_name, "
            "est_user_id, renewal_of_id, subject, subject_der, public_key_der, sans_der, client_address, "
            "certificate_id, reason, created_at, decided_at) VALUES (:protocol, :profile, :key, :status, :kind, "
            ":name, :user, :renewal_of, :subject, :subject_der, :spki, :sans, :address, :certificate, :reason, "
            ":created, :decided) RETURNING id"
        ).bindparams(
            sa.bindparam("created", type_=UTCDateTime()),
            sa.bindparam("decided", type_=UTCDateTime()),
            sa.bindparam("subject_der", type_=sa.LargeBinary()),
            sa.bindparam("spki", type_=sa.LargeBinary()),
            sa.bindparam("sans", type_=sa.LargeBinary()),
        ),
        {
            "protocol": protocol,
            "profile": row["profile"],
            "key": key,
            "status": status,
            "kind": kind,
            "name": name[:255],
            "user": users.get(user_name) if user_name is not None else None,
            "renewal_of": renewal_of if kind == "certificate" else None,
            "subject": subject,
            "subject_der": subject_der,
            "spki": spki,
            "sans": sans_der,
            "address": row["client_address"],
            "certificate": row["certificate_id"],
            "reason": row["fail_info_text"] if status == "rejected" else None,
            "created": row["created_at"],
            "decided": decided,
        },
    ).scalar()


def downgrade() -> None:
    """Back to 0005's shape. The requests themselves were never kept, so `request_der` comes back empty:
    requests still pending then cannot be approved and must be sent again; EST's queue is dropped."""
    with op.batch_alter_table("scep_transactions", table_kwargs=_KEEP_AUTOINCREMENT) as batch:
        batch.add_column(sa.Column("request_der", sa.LargeBinary, nullable=True))
        batch.drop_constraint("fk_scep_transactions_approval_id", type_="foreignkey")
        batch.drop_column("approval_id")
        batch.drop_column("request_sha256")
    op.drop_index("ix_approval_requests_status", table_name="approval_requests")
    op.drop_table("approval_requests")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("est_label")
    with op.batch_alter_table("est_users") as batch:
        batch.add_column(sa.Column("label", sa.String(64), nullable=True))
    conn = op.get_bind()
    for user_id, labels in conn.execute(sa.text("SELECT id, labels FROM est_users WHERE labels IS NOT NULL")):
        first = labels.split(",")[0][:64] or None
        conn.execute(sa.text("UPDATE est_users SET label = :label WHERE id = :id"), {"label": first, "id": user_id})
    with op.batch_alter_table("est_users") as batch:
        batch.drop_column("labels")
