"""Migration 0006 on a database that holds 0005's data: the approval queue moves, stored requests go.

0005 kept every SCEP PKCS#10 (its challengePassword in clear) in scep_transactions.request_der, and
held EST requests for approval as SCEP transactions with message type 'est'. After 0006 no request
is left, the pending ones are approval requests that can still be approved, and EST users' single
label became a list.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AttributeOID
from sqlalchemy import Engine, inspect, text

from shared_ca.approval import ApprovalQueue
from shared_ca.authority import CertificateAuthority, fingerprint
from shared_ca.authorization import Authorizer, CertificateRequest
from shared_ca.identity import DEFAULT_IDENTITY
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.storage.db import MIGRATIONS_DIR, current_revision, head_revision, migrate_to_head
from shared_ca.storage.est_users import hash_generated_secret, new_generated_secret
from shared_ca.storage.repositories import Storage
from tests.support import SettableClock, ec_key, subject

SECRET = "challenge-in-clear-0005"
PROFILES = {"default": DEFAULT_PROFILES["default"]}


def _alembic(conn: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    return config


def _to(engine: Engine, revision: str, *, down: bool = False) -> None:
    with engine.connect() as conn:
        (command.downgrade if down else command.upgrade)(_alembic(conn), revision)
        conn.commit()


def _csr(cn: str, key: Any = None, challenge: str | None = SECRET) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject(cn))
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{cn}.example")]), critical=False)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return builder.sign(key or ec_key(), hashes.SHA256()).public_bytes(Encoding.DER)


@pytest.fixture
def at_0005(store: Storage) -> Iterator[Engine]:
    _to(store.engine, "0005_devices", down=True)
    yield store.engine


def _insert_transaction(conn: Any, row_id: int, **values: Any) -> None:
    fields: dict[str, Any] = {
        "id": row_id,
        "signer_key_sha256": f"{row_id:064x}",
        "transaction_id": f"txn-{row_id}",
        "signer_cert_sha256": "s" * 64,
        "message_type": "19",
        "profile": "default",
        "status": "pending",
        "certificate_id": None,
        "fail_info": None,
        "fail_info_text": None,
        "request_der": None,
        "subject": None,
        "client_address": "192.0.2.1",
        "created_at": "2026-11-30 10:00:00",
        "updated_at": "2026-11-30 10:00:00",
        **values,
    }
    columns = ", ".join(fields)
    statement = f"INSERT INTO scep_transactions ({columns}) VALUES (:{', :'.join(fields)})"  # noqa: S608 - our names
    conn.execute(text(statement), fields)


def test_0006_moves_the_queue_and_drops_every_stored_request(
    authority: CertificateAuthority,  # registered before the downgrade: its audit record needs 0010's chain columns
    at_0005: Engine,
    clock: SettableClock,
) -> None:
    engine = at_0005
    est_key = ec_key()
    pending_scep, issued_scep, est_pending = _csr("scep-wait"), _csr("scep-done"), _csr("est-wait", est_key, None)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO est_users (id, name, secret_hash, kind, label, created_at, created_by) VALUES "
                "(1, 'alice', :hash, 'password', NULL, '2026-11-30 10:00:00', 't'), "
                "(2, 'wifi-only', :hash, 'password', 'wifi', '2026-11-30 10:00:00', 't')"
            ),
            {"hash": hash_generated_secret(new_generated_secret())},
        )
        _insert_transaction(conn, 1, request_der=pending_scep, subject="CN=scep-wait")
        _insert_transaction(conn, 2, request_der=issued_scep, status="issued")
        _insert_transaction(
            conn,
            3,
            request_der=est_pending,
            message_type="est",
            signer_cert_sha256="user:alice",
            transaction_id="est:x",
        )
        _insert_transaction(conn, 4, request_der=b"\x30\x03bad", status="failed", fail_info="badRequest")
    migrate_to_head(engine)
    assert current_revision(engine) == head_revision()

    columns = {c["name"] for c in inspect(engine).get_columns("scep_transactions")}
    assert "request_der" not in columns and {"request_sha256", "approval_id"} <= columns
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(text("SELECT * FROM scep_transactions ORDER BY id"))}
        dump = b"".join(
            bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
            for table in ("scep_transactions", "approval_requests", "est_users", "audit_events")
            for r in conn.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 - fixed table names
            for value in r
        )
    assert subject("scep-wait").public_bytes() in dump  # the dump does see binary columns
    assert set(rows) == {1, 2, 4}  # the EST row left the SCEP table
    assert rows[2].request_sha256 == hashlib.sha256(issued_scep).hexdigest()
    assert rows[4].request_sha256 == hashlib.sha256(b"\x30\x03bad").hexdigest() and rows[4].approval_id is None
    assert SECRET.encode() not in dump  # no challengePassword survives, in clear or in a request

    approvals = Storage.open(engine).approvals
    queued = {q.protocol: q for q in approvals.list_approvals()}
    assert set(queued) == {"scep", "est"}
    assert rows[1].approval_id == queued["scep"].id
    assert (queued["scep"].subject, queued["scep"].principal_kind) == ("CN=scep-wait", "static")
    est = queued["est"]
    assert (est.principal_kind, est.principal_name, est.est_user_id, est.subject) == (
        "basic",
        "alice",
        1,
        "CN=est-wait",
    )

    users = Storage.open(engine).est_users
    assert (users.est_user("alice") or est).labels == ()  # type: ignore[union-attr]
    assert users.est_user("wifi-only").labels == ("wifi",)  # type: ignore[union-attr]

    # The moved EST request is found by what it asks, even re-signed, and can still be approved.
    authorizer = Authorizer(DEFAULT_IDENTITY, default_profile="default", clock=clock)
    queue = ApprovalQueue(
        authority=authority, authorizer=authorizer, storage=Storage.open(engine), profiles=PROFILES, clock=clock
    )
    resigned = CertificateRequest.from_csr(x509.load_der_x509_csr(_csr("est-wait", est_key, None)))
    assert queue.find_request("est", "default", resigned, "user:alice") == est
    record = queue.approve(est.id, actor="admin")
    assert record.subject == "CN=est-wait" and record.sans == ("dns:est-wait.example",)
    scep_record = queue.approve(queued["scep"].id, actor="admin")
    with engine.connect() as conn:
        polled = conn.execute(text("SELECT status, certificate_id FROM scep_transactions WHERE id = 1")).one()
    assert tuple(polled) == ("issued", scep_record.id)  # the device's CertPoll now gets it
    assert fingerprint(x509.load_der_x509_certificate(record.der)) == record.fingerprint_sha256


def test_0006_downgrades_and_upgrades_again(at_0005: Engine) -> None:
    migrate_to_head(at_0005)
    with at_0005.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO est_users (name, secret_hash, kind, labels, created_at, created_by) VALUES "
                "('multi', 'sha256$x$y', 'password', 'wifi,default', :now, 't')"
            ).bindparams(now=dt.datetime(2026, 12, 1)),
        )
    _to(at_0005, "0005_devices", down=True)
    with at_0005.connect() as conn:
        assert conn.execute(text("SELECT label FROM est_users WHERE name = 'multi'")).scalar() == "wifi"
        assert "approval_requests" not in inspect(conn).get_table_names()
    migrate_to_head(at_0005)
    assert Storage.open(at_0005).est_users.est_user("multi").labels == ("wifi",)  # type: ignore[union-attr]
