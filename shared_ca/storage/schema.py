"""Table definitions used by the repositories (SQLAlchemy Core). Migrations create them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import false, text
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

# BIGINT keys on PostgreSQL, INTEGER (rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, returns aware UTC, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


issuers = Table(
    "issuers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("subject", Text, nullable=False),
    Column("ski_hex", String(128), nullable=False),
    Column("fingerprint_sha256", String(64), nullable=False, unique=True),
    Column("cert_der", LargeBinary, nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("trust_until", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # CA rollover (revision 0011): when a next CA starts issuing, the CA it replaces, and the RFC 4210
    # §4.4 root key update certificates that link the two.
    Column("activates_at", UTCDateTime, nullable=True),
    Column("rollover_of", Id, nullable=True),
    Column("new_with_old", LargeBinary, nullable=True),
    Column("old_with_new", LargeBinary, nullable=True),
)

certificates = Table(
    "certificates",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("issuer_id", Id, ForeignKey("issuers.id"), nullable=False),
    Column("serial_hex", String(40), nullable=False),
    Column("fingerprint_sha256", String(64), nullable=False, unique=True),
    Column("subject", Text, nullable=False),
    Column("common_name", String(255), nullable=True, index=True),
    Column("sans", Text, nullable=False),
    Column("key_type", String(32), nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False, index=True),
    Column("profile", String(64), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("requester", Text, nullable=True),
    Column("status", String(16), nullable=False, index=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revocation_reason", String(32), nullable=True),
    Column("supersede_at", UTCDateTime, nullable=True),
    Column("renewed_from_id", Id, ForeignKey("certificates.id"), nullable=True),
    Column("der", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("issuer_id", "serial_hex", name="uq_certificates_issuer_serial"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("occurred_at", UTCDateTime, nullable=False, index=True),
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("issuer_id", Id, ForeignKey("issuers.id"), nullable=True),
    Column("serial_hex", String(40), nullable=True),
    Column("detail", Text, nullable=False),
    # The hash chain (revision 0010, shared_ca.storage.audit_chain): one chain per node, numbered 1..n.
    Column("node", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("node", "seq", name="uq_audit_events_node_seq"),
    Index("ix_audit_events_action_node", "action", "node", "seq"),
)

# The newest record of each node's chain: the row a writer locks to append, and what shows that the
# newest records of a chain were deleted (revision 0010).
audit_chain_heads = Table(
    "audit_chain_heads",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

# Background jobs one worker of one node runs at a time (revision 0011).
job_leases = Table(
    "job_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

crl_publications = Table(
    "crl_publications",
    metadata,
    Column("issuer_id", Id, ForeignKey("issuers.id"), primary_key=True, autoincrement=False),
    Column("last_number", BigInteger, nullable=False),
    Column("published_number", BigInteger, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("published_revision", BigInteger, nullable=False),
    Column("this_update", UTCDateTime, nullable=True),
    Column("next_update", UTCDateTime, nullable=True),
    Column("der", LargeBinary, nullable=True),
)

# -- manual approval (revision 0006) ---------------------------------------------------------------

APPROVAL_STATUSES = ("pending", "issued", "rejected")

approval_requests = Table(
    "approval_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("protocol", String(8), nullable=False),
    Column("profile", String(64), nullable=False),
    # SHA-256 over what is asked (key, subject, subjectAltNames, profile, principal): the same request sent
    # again, even re-signed, finds its row (RFC 7030 §4.2.3).
    Column("request_key", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("principal_kind", String(16), nullable=False),
    Column("principal_name", String(255), nullable=False),
    Column("est_user_id", Id, ForeignKey("est_users.id"), nullable=True),
    Column("renewal_of_id", Id, ForeignKey("certificates.id"), nullable=True),
    Column("device_identity", String(255), nullable=True),
    Column("subject", Text, nullable=False),
    Column("subject_der", LargeBinary, nullable=False),
    Column("public_key_der", LargeBinary, nullable=False),
    Column("sans_der", LargeBinary, nullable=True),
    Column("client_address", String(64), nullable=True),
    Column("certificate_id", Id, ForeignKey("certificates.id"), nullable=True),
    Column("reason", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("decided_by", String(255), nullable=True),
    # revision 0007: held because its worker was at capacity (issued in the background), and the lease
    # of the worker issuing it.
    Column("deferred", Boolean, nullable=False, server_default=false()),
    Column("claimed_until", UTCDateTime, nullable=True),
    UniqueConstraint("protocol", "request_key", name="uq_approval_requests_protocol_key"),
    CheckConstraint("status IN ('pending', 'issued', 'rejected')", name="ck_approval_requests_status"),
    CheckConstraint("protocol IN ('scep', 'est')", name="ck_approval_requests_protocol"),
    Index("ix_approval_requests_status", "status"),
    Index("ix_approval_requests_deferred", "deferred", "status"),
)

# -- enrollment (revision 0002) -------------------------------------------------------------------

enrollment_events = Table(
    "enrollment_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("protocol", String(8), nullable=False),
    Column("operation", String(32), nullable=False),
    Column("profile", String(64), nullable=True),
    Column("device_identity", String(255), nullable=True),
    Column("client_address", String(64), nullable=True),
    Column("user_agent", Text, nullable=True),
    Column("cipher", String(32), nullable=True),
    Column("digest", String(32), nullable=True),
    Column("challenge_kind", String(16), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("transaction_id", String(255), nullable=True),
    Column("serial_hex", String(40), nullable=True),
    Column("certificate_id", Id, ForeignKey("certificates.id"), nullable=True),
    Column("detail", Text, nullable=False),
    Column("tls_version", String(16), nullable=True),  # revision 0004: e.g. 'TLSv1.3'; None over plain HTTP
    CheckConstraint("protocol IN ('scep', 'est')", name="ck_enrollment_events_protocol"),
    Index("ix_enrollment_events_device_identity", "device_identity"),
    Index("ix_enrollment_events_occurred_at", "occurred_at"),
)

SCEP_TRANSACTION_STATUSES = ("pending", "issued", "failed", "rejected")

scep_transactions = Table(
    "scep_transactions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("signer_key_sha256", String(64), nullable=False),
    Column("transaction_id", String(255), nullable=False),
    Column("signer_cert_sha256", String(64), nullable=False),
    Column("message_type", String(8), nullable=False),
    Column("profile", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("certificate_id", Id, ForeignKey("certificates.id"), nullable=True),
    Column("fail_info", String(32), nullable=True),
    Column("fail_info_text", Text, nullable=True),
    # revision 0006: SHA-256 of the PKCS#10 (not the request itself, whose challengePassword is a secret),
    # to recognise retransmissions; a request held for approval is in approval_requests.
    Column("request_sha256", String(64), nullable=True),
    Column("approval_id", Id, ForeignKey("approval_requests.id"), nullable=True),
    Column("subject", Text, nullable=True),
    Column("client_address", String(64), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("signer_key_sha256", "transaction_id", name="uq_scep_transactions_signer_txn"),
    CheckConstraint("status IN ('pending', 'issued', 'failed', 'rejected')", name="ck_scep_transactions_status"),
    Index("ix_scep_transactions_status", "status"),
    sqlite_autoincrement=True,  # a replaced transaction's id is never reused for another request
)

scep_challenges = Table(
    "scep_challenges",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("device_id", String(255), nullable=True),
    Column("profile", String(64), nullable=False),
    Column("expected_subject", Text, nullable=True),
    Column("uses_left", Integer, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(255), nullable=False),
    CheckConstraint("uses_left >= 0", name="ck_scep_challenges_uses_left"),
)

challenge_failures = Table(
    "challenge_failures",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("first_failure_at", UTCDateTime, nullable=False),
    Column("locked_until", UTCDateTime, nullable=True),
)

# -- admin tokens (revision 0003) -----------------------------------------------------------------

admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("scopes", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("disabled_at", UTCDateTime, nullable=True),
)

# -- EST users (revision 0004) --------------------------------------------------------------------

EST_USER_KINDS = ("password", "bootstrap")

est_users = Table(
    "est_users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("secret_hash", Text, nullable=False),  # self-describing: 'scrypt$...' or 'sha256$...'
    Column("kind", String(16), nullable=False),
    Column("labels", Text, nullable=True),  # revision 0006: comma-separated EST labels; None: the default label
    Column("device_identity", String(255), nullable=True),
    Column("uses_left", Integer, nullable=True),  # None: unlimited
    Column("expires_at", UTCDateTime, nullable=True),
    Column("disabled_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(255), nullable=False),
    CheckConstraint("uses_left >= 0", name="ck_est_users_uses_left"),
    CheckConstraint("kind IN ('password', 'bootstrap')", name="ck_est_users_kind"),
    Index("ix_est_users_device_identity", "device_identity"),
)

# -- migration model (revision 0005) ----------------------------------------------------------------

DEVICE_STATES = ("legacy", "mapped", "migrated", "native", "retired")
# The devices that moved at least once: what the trend's second scan reads (a partial index of them).
TREND_MOVES = text("mapped_at IS NOT NULL OR migrated_at IS NOT NULL OR retired_at IS NOT NULL")
MAPPING_MODES = ("certificate", "bootstrap")

device_groups = Table(
    "device_groups",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("sunset_at", UTCDateTime, nullable=True),
    Column("allow_downgrade", Boolean, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("identity", String(255), nullable=False, unique=True),
    Column("group_name", String(64), nullable=True),
    Column("owner", String(255), nullable=True),
    Column("tags", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("source", String(32), nullable=False),  # 'est' only while native (or retired as such): 0008
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_scep_at", UTCDateTime, nullable=True),
    Column("last_est_at", UTCDateTime, nullable=True),
    Column("scep_user_agent", Text, nullable=True),
    Column("scep_cipher", String(32), nullable=True),
    Column("scep_digest", String(32), nullable=True),
    Column("scep_challenge", String(16), nullable=True),
    Column("scep_client", String(32), nullable=True),  # revision 0009: the SCEP client's family (scep.clients)
    Column("certificate_id", Id, ForeignKey("certificates.id"), nullable=True),
    Column("certificate_not_after", UTCDateTime, nullable=True),
    Column("mapping_mode", String(16), nullable=True),
    Column("est_credential", String(128), nullable=True),
    Column("mapped_at", UTCDateTime, nullable=True),
    Column("est_label", String(64), nullable=True),  # revision 0006: the EST label it was mapped to
    Column("migrated_at", UTCDateTime, nullable=True),
    Column("retired_at", UTCDateTime, nullable=True),
    CheckConstraint("state IN ('legacy', 'mapped', 'migrated', 'native', 'retired')", name="ck_devices_state"),
    CheckConstraint(
        "mapping_mode IS NULL OR mapping_mode IN ('certificate', 'bootstrap')", name="ck_devices_mapping_mode"
    ),
    Index("ix_devices_state", "state"),
    Index("ix_devices_group_state", "group_name", "state"),
    # revision 0009: the silent-on-EST count, and the trend's two scans (migration_report.day_changes),
    # read these instead of the table
    Index("ix_devices_silent", "state", "mapped_at", "last_est_at", "group_name"),
    Index("ix_devices_trend_seen", "first_seen_at", "source"),
    Index(
        "ix_devices_trend_moves",
        "mapped_at",
        "migrated_at",
        "retired_at",
        "first_seen_at",
        "source",
        sqlite_where=TREND_MOVES,
        postgresql_where=TREND_MOVES,
    ),
)
