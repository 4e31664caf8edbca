"""Enrollment storage: migration 0002, events, SCEP transactions (atomic with issuance), approvals."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select

from shared_ca.authority import CertificateAuthority, Issued
from shared_ca.errors import Conflict, InvalidRequest, NotFound
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.storage.approvals import ApprovalExists, ApprovalRecord, Approvals, NewApproval
from shared_ca.storage.audit import AuditEvent, AuditLog
from shared_ca.storage.certificates import NewCertificate, SerialCollision
from shared_ca.storage.db import MIGRATIONS_DIR, current_revision, head_revision, migrate_to_head
from shared_ca.storage.enrollment import Enrollments
from shared_ca.storage.enrollment_records import (
    CompletePending,
    EnrollmentEvent,
    NewScepTransaction,
    TransactionExists,
)
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import metadata, scep_transactions
from tests.support import SettableClock, ec_key, run_together, storage_of, subject

KEY = ec_key()
SIGNER = "a" * 64
TXN = NewScepTransaction(
    signer_key_sha256=SIGNER,
    transaction_id="111898541792906021837665",
    signer_cert_sha256="b" * 64,
    message_type="19",
    profile="default",
    request_sha256="c" * 64,
    subject="CN=device1",
    client_address="192.0.2.7",
)


def event(outcome: str = "issued", **changes: Any) -> EnrollmentEvent:
    fields: dict[str, Any] = {
        "protocol": "scep",
        "operation": "PKCSReq",
        "outcome": outcome,
        "profile": "default",
        "device_identity": "device1",
        "client_address": "192.0.2.7",
        "user_agent": "Go-http-client/1.1",
        "cipher": "des-cbc",
        "digest": "sha1",
        "challenge_kind": "static",
        "transaction_id": TXN.transaction_id,
        "detail": {"nonce": "00ff"},
    }
    return EnrollmentEvent(**{**fields, **changes})


@pytest.fixture
def enrollments(store: Storage) -> Enrollments:
    return store.enrollments


def issue(authority: CertificateAuthority, cn: str = "device1", **kwargs: Any) -> Issued:
    policy = authorize_request(DEFAULT_PROFILES["default"], subject(cn), [], KEY.public_key(), authority.clock())
    return authority.issue(policy, protocol="scep", actor="scep", **kwargs)


def transaction_rows(store: Storage) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(scep_transactions)).scalar_one())


def counts(authority: CertificateAuthority, enrollments: Enrollments) -> tuple[int, int, int, int]:
    """(certificates, certificate.issued audit events, enrollment events, SCEP transactions)."""
    store = storage_of(authority)
    issued_events = len(store.audit.audit_events(action="certificate.issued"))
    return (
        store.certificates.count_certificates(),
        issued_events,
        len(enrollments.enrollment_events()),
        transaction_rows(store),
    )


# -- migration -----------------------------------------------------------------------------------


def test_migration_0002_creates_the_enrollment_tables_and_constraints(store: Storage) -> None:
    assert ScriptDirectory(str(MIGRATIONS_DIR)).get_revision("0002_enrollment") is not None
    inspector = inspect(store.engine)
    assert {"enrollment_events", "scep_transactions", "scep_challenges", "challenge_failures"} <= set(
        inspector.get_table_names()
    )
    unique = {c["name"]: c["column_names"] for c in inspector.get_unique_constraints("scep_transactions")}
    assert unique["uq_scep_transactions_signer_txn"] == ["signer_key_sha256", "transaction_id"]
    indexed = {i["name"]: i["column_names"] for i in inspector.get_indexes("enrollment_events")}
    assert indexed["ix_enrollment_events_device_identity"] == ["device_identity"]
    assert indexed["ix_enrollment_events_occurred_at"] == ["occurred_at"]
    assert inspector.get_pk_constraint("challenge_failures")["constrained_columns"] == ["key"]


def test_migration_0002_downgrades_and_upgrades_again(store: Storage) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store.engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001_ca_core")
        conn.commit()
        assert "scep_transactions" not in inspect(conn).get_table_names()
    migrate_to_head(store.engine)
    assert current_revision(store.engine) == head_revision()


def test_schema_module_matches_the_migrations(store: Storage) -> None:
    """schema.py (what the code queries) and the migrations (what databases hold) do not drift."""
    with store.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


# -- enrollment events ---------------------------------------------------------------------------


def test_a_refusal_is_recorded_on_its_own(enrollments: Enrollments, clock: SettableClock) -> None:
    event_id = enrollments.record_event(event("refused", challenge_kind="none"), clock())
    other = enrollments.record_event(event("issued", device_identity="device2", protocol="est"), clock())
    [record] = enrollments.enrollment_events(device_identity="device1")
    assert (record.id, record.outcome, record.challenge_kind, record.protocol) == (event_id, "refused", "none", "scep")
    assert (record.occurred_at, record.detail, record.certificate_id) == (clock(), {"nonce": "00ff"}, None)
    assert [r.id for r in enrollments.enrollment_events()] == [other, event_id]  # newest first
    assert [r.id for r in enrollments.enrollment_events(transaction_id="nope")] == []


def test_values_that_cannot_be_stored_are_refused_before_the_database() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        event(protocol="cmp")
    with pytest.raises(ValueError, match="unknown SCEP transaction status"):
        replace(TXN, status="approved")
    with pytest.raises(InvalidRequest, match="transactionID is longer than 255"):
        replace(TXN, transaction_id="9" * 256)
    with pytest.raises(InvalidRequest, match="transactionID is longer than 255"):
        event(transaction_id="9" * 256)
    with pytest.raises(InvalidRequest, match="device identity is longer than 255"):
        event(device_identity="d" * 256)


def test_the_longest_transaction_id_is_stored_on_every_backend(enrollments: Enrollments, clock: SettableClock) -> None:
    longest = replace(TXN, transaction_id="9" * 255, status="failed")
    enrollments.record_scep_outcome(longest, event("failure:badRequest", transaction_id="9" * 255), clock())
    found = enrollments.scep_transaction(SIGNER, "9" * 255)
    assert found is not None and found.transaction_id == "9" * 255


# -- issuance within a SCEP transaction ----------------------------------------------------------


def test_issuance_records_certificate_transaction_and_event_together(
    authority: CertificateAuthority, enrollments: Enrollments
) -> None:
    issued = issue(authority, enrollment=event(), scep_transaction=TXN)
    found = enrollments.scep_transaction(SIGNER, TXN.transaction_id)
    assert found is not None
    assert (found.status, found.certificate_id, found.certificate_der) == (
        "issued",
        issued.record.id,
        issued.record.der,
    )
    assert (found.signer_cert_sha256, found.message_type, found.request_sha256) == ("b" * 64, "19", "c" * 64)
    assert found.is_retransmission("b" * 64, "19", "c" * 64)
    assert not found.is_retransmission("c" * 64, "19", "c" * 64)  # certmonger resubmit: new signer cert
    assert not found.is_retransmission("b" * 64, "17", "c" * 64)  # scepclient RenewalReq
    assert not found.is_retransmission("b" * 64, "19", "d" * 64)  # another CSR
    [recorded] = enrollments.enrollment_events()
    assert (recorded.certificate_id, recorded.serial_hex) == (issued.record.id, issued.record.serial_hex)
    assert enrollments.scep_transaction(SIGNER, "other") is None
    assert enrollments.scep_transaction_by_id(found.id) == found


def test_a_duplicate_transaction_rolls_back_the_whole_issuance(
    authority: CertificateAuthority, enrollments: Enrollments
) -> None:
    first = issue(authority, enrollment=event(), scep_transaction=TXN)
    with pytest.raises(TransactionExists) as caught:
        issue(authority, "device1-again", enrollment=event(), scep_transaction=replace(TXN, subject="CN=x"))
    assert (caught.value.signer_key_sha256, caught.value.transaction_id) == (SIGNER, TXN.transaction_id)
    assert counts(authority, enrollments) == (1, 1, 1, 1)  # no certificate without its record and event
    winner = enrollments.scep_transaction(SIGNER, TXN.transaction_id)
    assert winner is not None and winner.certificate_der == first.record.der


def test_serial_collision_inside_a_scep_transaction_keeps_nothing(
    authority: CertificateAuthority, enrollments: Enrollments, clock: SettableClock
) -> None:
    store = storage_of(authority)
    row = NewCertificate(
        authority.issuer.id,
        "abc",
        "1" * 64,
        "CN=x",
        "x",
        (),
        "EC P-256",
        clock(),
        clock(),
        "default",
        "scep",
        None,
        b"0",
    )
    store.certificates.record_issued(row, AuditEvent("t", "certificate.issued"), clock())
    with pytest.raises(SerialCollision):
        store.certificates.record_issued(
            replace(row, fingerprint_sha256="2" * 64),
            AuditEvent("t", "certificate.issued"),
            clock(),
            enrollment=event(),
            scep_transaction=TXN,
        )
    assert counts(authority, enrollments) == (1, 1, 0, 0)
    with pytest.raises(ValueError, match="status 'issued'"):
        store.certificates.record_issued(
            row, AuditEvent("t", "x"), clock(), scep_transaction=replace(TXN, status="pending")
        )


def test_concurrent_retransmissions_issue_one_certificate(
    authority: CertificateAuthority, enrollments: Enrollments
) -> None:
    results, errors = run_together(16, lambda i: issue(authority, f"d{i}", enrollment=event(), scep_transaction=TXN))
    assert len(results) == 1
    assert len(errors) == 15 and all(isinstance(e, TransactionExists) for e in errors), errors
    assert counts(authority, enrollments) == (1, 1, 1, 1)
    [issued] = results
    winner = enrollments.scep_transaction(SIGNER, TXN.transaction_id)
    assert isinstance(issued, Issued) and winner is not None and winner.certificate_id == issued.record.id


def test_a_new_enrollment_replaces_a_finished_transaction_of_the_same_pair(
    authority: CertificateAuthority, enrollments: Enrollments
) -> None:
    """certmonger resubmit and scepclient RenewalReq reuse the (signer key, transactionID) pair."""
    first = issue(authority, enrollment=event(), scep_transaction=TXN)
    old = enrollments.scep_transaction(SIGNER, TXN.transaction_id)
    assert old is not None
    renewal = replace(TXN, signer_cert_sha256="c" * 64, message_type="17", replaces_id=old.id)
    second = issue(authority, enrollment=event(operation="RenewalReq"), scep_transaction=renewal)
    new = enrollments.scep_transaction(SIGNER, TXN.transaction_id)
    assert new is not None and new.id != old.id and new.certificate_der == second.record.der != first.record.der
    with pytest.raises(TransactionExists):  # a concurrent twin read the same old row: it lost
        issue(authority, enrollment=event(), scep_transaction=replace(renewal, message_type="19"))
    assert counts(authority, enrollments) == (2, 2, 2, 1)


def test_a_pending_transaction_is_not_replaced(enrollments: Enrollments, clock: SettableClock) -> None:
    pending = enrollments.record_scep_outcome(replace(TXN, status="pending"), event("pending"), clock())
    with pytest.raises(TransactionExists):
        enrollments.record_scep_outcome(
            replace(TXN, status="failed", replaces_id=pending.id), event("failure:badRequest"), clock()
        )
    assert enrollments.scep_transaction(SIGNER, TXN.transaction_id) == pending


# -- outcomes without a certificate, and manual approval -----------------------------------------


def test_failed_and_pending_outcomes_are_recorded_once(enrollments: Enrollments, clock: SettableClock) -> None:
    failed = replace(TXN, status="failed", fail_info="badRequest", fail_info_text="wrong challenge")
    record = enrollments.record_scep_outcome(failed, event("failure:badRequest"), clock())
    assert enrollments.scep_transaction(SIGNER, TXN.transaction_id) == record
    assert (record.status, record.fail_info, record.certificate_der) == ("failed", "badRequest", None)
    with pytest.raises(TransactionExists):
        enrollments.record_scep_outcome(replace(TXN, status="pending"), event("pending"), clock())
    assert [e.outcome for e in enrollments.enrollment_events()] == ["failure:badRequest"]  # the loser's event too
    with pytest.raises(ValueError, match="record_issued"):
        enrollments.record_scep_outcome(TXN, event(), clock())


def _held(approvals: Approvals, clock: SettableClock) -> ApprovalRecord:
    new = NewApproval(
        protocol="scep",
        profile="default",
        request_key="k" * 64,
        principal_kind="static",
        principal_name="static challenge",
        subject="CN=device1",
        subject_der=subject("device1").public_bytes(),
        public_key_der=b"\x30\x00",
        sans_der=None,
        device_identity="device1",
        client_address="192.0.2.7",
    )
    return approvals.hold(new, event("pending"), clock(), scep_transaction=replace(TXN, status="pending"))


def test_approving_a_pending_request_issues_once(
    authority: CertificateAuthority, enrollments: Enrollments, clock: SettableClock
) -> None:
    approvals = Storage.open(enrollments.db.engine).approvals
    pending = _held(approvals, clock)
    waiting = enrollments.scep_transaction(SIGNER, TXN.transaction_id)
    assert waiting is not None and (waiting.status, waiting.approval_id) == ("pending", pending.id)
    assert approvals.list_approvals() == [pending]
    assert approvals.list_approvals(profile="other") == []
    with pytest.raises(ApprovalExists):
        _held(approvals, clock)  # the same request key: one row
    clock.advance(minutes=5)
    approve = CompletePending(pending.id, "admin")
    results, errors = run_together(
        8, lambda i: issue(authority, enrollment=event(operation="approve"), scep_transaction=approve)
    )
    assert len(results) == 1 and len(errors) == 7
    assert all(isinstance(e, Conflict) and "not pending" in str(e) for e in errors), errors
    [issued] = results
    assert isinstance(issued, Issued)
    done = approvals.approval(pending.id)
    assert done is not None
    assert (done.status, done.certificate_der, done.decided_at, done.decided_by) == (
        "issued",
        issued.record.der,
        clock(),
        "admin",
    )
    polled = enrollments.scep_transaction(SIGNER, TXN.transaction_id)  # what the device's CertPoll reads
    assert polled is not None and (polled.status, polled.certificate_der) == ("issued", issued.record.der)
    assert approvals.list_approvals() == []
    assert counts(authority, enrollments) == (1, 1, 2, 1)


def test_rejecting_a_pending_request(
    authority: CertificateAuthority, enrollments: Enrollments, clock: SettableClock
) -> None:
    approvals = Storage.open(enrollments.db.engine).approvals
    pending = _held(approvals, clock)
    rejected = approvals.reject(pending.id, "not a known router", actor="admin", now=clock())
    assert (rejected.status, rejected.reason, rejected.decided_by) == ("rejected", "not a known router", "admin")
    polled = enrollments.scep_transaction(SIGNER, TXN.transaction_id)
    assert polled is not None
    assert (polled.status, polled.fail_info, polled.fail_info_text) == ("rejected", "badRequest", "not a known router")
    [audit] = AuditLog(enrollments.db).audit_events(action="request.rejected")
    assert (audit.actor, audit.detail) == ("admin", {"request": pending.id, "reason": "not a known router"})
    with pytest.raises(Conflict, match="not pending"):
        approvals.reject(pending.id, "again", actor="admin", now=clock())
    with pytest.raises(Conflict, match="not pending"):
        issue(authority, scep_transaction=CompletePending(pending.id, "admin"))
    with pytest.raises(NotFound):
        approvals.reject(pending.id + 100, "who", actor="admin", now=clock())
    assert storage_of(authority).certificates.count_certificates() == 0
