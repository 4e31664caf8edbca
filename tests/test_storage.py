"""The storage layer: migrations, constraints, availability, and the repository's queries."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import shutil
import sqlite3
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing.queues import Queue as QueueType
from multiprocessing.synchronize import Barrier as BarrierType
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import Engine, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from shared_ca.authority import CertificateAuthority, Issued
from shared_ca.crl import CrlPublisher
from shared_ca.errors import Conflict, Unavailable
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES, Profile
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.certificates import CertificateRecord, NewCertificate, SerialCollision
from shared_ca.storage.crls import CrlRecord, RevokedEntry
from shared_ca.storage.db import (
    create_store_engine,
    current_revision,
    head_revision,
    migrate_to_head,
    require_schema_at_head,
    sqlite_url,
    validate_database_url,
)
from shared_ca.storage.issuers import NewIssuer
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import certificates
from tests.support import SettableClock, ec_key, renew, storage_of, subject

DEFAULT = DEFAULT_PROFILES["default"]
KEY = ec_key()
TABLES = {"issuers", "certificates", "audit_events", "crl_publications", "alembic_version"}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on an empty, never migrated database."""
    created = create_store_engine(database_url)
    try:
        yield created
    finally:
        created.dispose()


def _issue(authority: CertificateAuthority, cn: str = "device", profile: Profile = DEFAULT) -> Issued:
    policy = authorize_request(profile, subject(cn), [], KEY.public_key(), authority.clock())
    return authority.issue(policy, protocol="est", actor="tester")


def _row(issuer_id: int, serial: str, fingerprint: str, now: dt.datetime) -> NewCertificate:
    return NewCertificate(
        issuer_id=issuer_id,
        serial_hex=serial,
        fingerprint_sha256=fingerprint,
        subject="CN=x",
        common_name="x",
        sans=("dns:x.example",),
        key_type="EC P-256",
        not_before=now,
        not_after=now + dt.timedelta(days=1),
        profile="default",
        protocol="est",
        requester=None,
        der=b"\x30\x00",
    )


# -- migrations ----------------------------------------------------------------------------------


def test_migrations_to_head_are_idempotent(engine: Engine) -> None:
    assert current_revision(engine) is None
    migrate_to_head(engine)
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    migrate_to_head(engine)
    migrate_to_head(engine)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) == tables
    assert tables >= TABLES
    require_schema_at_head(engine)


def test_migrations_keep_data(engine: Engine, clock: SettableClock) -> None:
    migrate_to_head(engine)
    store = Storage.open(engine)
    store.audit.record_audit(AuditEvent("tester", "test.kept"), clock())
    migrate_to_head(engine)
    assert [e.action for e in store.audit.audit_events()] == ["test.kept"]


def _migrate_in_child(url: str, start: BarrierType, results: QueueType[str]) -> None:
    """One node's `gateway db upgrade` (runs in a spawned process)."""
    engine = create_store_engine(url)
    try:
        start.wait(60)
        migrate_to_head(engine)
        results.put("ok")
    except BaseException:  # the parent asserts on the text
        results.put(traceback.format_exc())
    finally:
        engine.dispose()


def test_concurrent_migrations_from_two_processes(engine: Engine, database_url: str) -> None:
    """Two nodes starting at once: one migrates, the other waits and finds the schema at head.

    Processes, not threads: Alembic's `context` and `op` are process-global proxies.
    """
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    results: QueueType[str] = ctx.Queue()
    children = [ctx.Process(target=_migrate_in_child, args=(database_url, start, results)) for _ in range(2)]
    for child in children:
        child.start()
    try:
        outcomes = [results.get(timeout=120) for _ in children]
    finally:
        for child in children:
            child.join(60)
        results.close()
        results.join_thread()
    assert outcomes == ["ok", "ok"]
    assert [c.exitcode for c in children] == [0, 0]
    assert current_revision(engine) == head_revision()
    require_schema_at_head(engine)


def test_unmigrated_database_is_refused(engine: Engine) -> None:
    with pytest.raises(Unavailable, match="schema is not current") as caught:
        require_schema_at_head(engine)
    assert "database is at revision none" in caught.value.detail
    assert "gateway db upgrade" in caught.value.detail


def test_database_at_an_unknown_revision_is_refused(store: Storage) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(Unavailable) as caught:
        require_schema_at_head(store.engine)
    assert "9999_future" in caught.value.detail


# -- constraints ---------------------------------------------------------------------------------


def test_issuer_serial_unique_constraint_exists(store: Storage) -> None:
    constraints = inspect(store.engine).get_unique_constraints("certificates")
    by_name = {c["name"]: c["column_names"] for c in constraints}
    assert by_name.get("uq_certificates_issuer_serial") == ["issuer_id", "serial_hex"]


def test_duplicate_serial_is_refused_by_the_database(authority: CertificateAuthority) -> None:
    """The rule holds for any writer, not just for code that goes through the repository."""
    record = _issue(authority).record
    row = {
        "issuer_id": record.issuer_id,
        "serial_hex": record.serial_hex,
        "fingerprint_sha256": "f" * 64,
        "subject": "CN=x",
        "sans": "[]",
        "key_type": "EC P-256",
        "not_before": record.not_before,
        "not_after": record.not_after,
        "profile": "default",
        "protocol": "est",
        "status": "valid",
        "der": b"\x30\x00",
        "created_at": record.created_at,
    }
    with pytest.raises(IntegrityError), storage_of(authority).engine.begin() as conn:
        conn.execute(insert(certificates).values(**row))
    with storage_of(authority).engine.begin() as conn:  # another serial goes in
        conn.execute(insert(certificates).values(**{**row, "serial_hex": "abc"}))
    assert storage_of(authority).certificates.count_certificates() == 2


def test_duplicate_serial_raises_serial_collision(authority: CertificateAuthority, clock: SettableClock) -> None:
    store = storage_of(authority)
    issuer_id = authority.issuer.id
    store.certificates.record_issued(
        _row(issuer_id, "abc", "1" * 64, clock()), AuditEvent("t", "certificate.issued"), clock()
    )
    with pytest.raises(SerialCollision):
        store.certificates.record_issued(
            _row(issuer_id, "abc", "2" * 64, clock()), AuditEvent("t", "certificate.issued"), clock()
        )
    assert store.certificates.count_certificates() == 1
    assert len(store.audit.audit_events(action="certificate.issued")) == 1  # rolled back with the row


def test_duplicate_fingerprint_is_a_conflict_not_a_collision(
    authority: CertificateAuthority, clock: SettableClock
) -> None:
    store = storage_of(authority)
    issuer_id = authority.issuer.id
    store.certificates.record_issued(
        _row(issuer_id, "abc", "1" * 64, clock()), AuditEvent("t", "certificate.issued"), clock()
    )
    with pytest.raises(Conflict, match="already recorded"):
        store.certificates.record_issued(
            _row(issuer_id, "abd", "1" * 64, clock()), AuditEvent("t", "certificate.issued"), clock()
        )


def test_same_serial_for_another_issuer_is_allowed(authority: CertificateAuthority, clock: SettableClock) -> None:
    store = storage_of(authority)
    other = store.issuers.add_issuer(
        replace(_new_issuer(authority), name="legacy", fingerprint_sha256="e" * 64, kind="legacy"),
        AuditEvent("t", "issuer.added"),
        clock(),
    )
    store.certificates.record_issued(_row(authority.issuer.id, "abc", "1" * 64, clock()), AuditEvent("t", "x"), clock())
    store.certificates.record_issued(_row(other.id, "abc", "2" * 64, clock()), AuditEvent("t", "x"), clock())
    assert {r.issuer_id for r in store.certificates.certificates_by_serial("abc")} == {authority.issuer.id, other.id}


def _new_issuer(authority: CertificateAuthority) -> NewIssuer:
    issuer = authority.issuer
    return NewIssuer(
        name=issuer.name,
        kind=issuer.kind,
        subject=issuer.subject,
        ski_hex=issuer.ski_hex,
        fingerprint_sha256=issuer.fingerprint_sha256,
        cert_der=issuer.cert_der,
        not_before=issuer.not_before,
        not_after=issuer.not_after,
    )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({}, id="fail/same-name-and-certificate"),
        pytest.param({"fingerprint_sha256": "e" * 64}, id="fail/same-name"),
        pytest.param({"name": "other"}, id="fail/same-certificate"),
    ],
)
def test_issuer_registered_twice_is_a_conflict(
    authority: CertificateAuthority, clock: SettableClock, change: dict[str, Any]
) -> None:
    with pytest.raises(Conflict, match="already registered"):
        storage_of(authority).issuers.add_issuer(
            replace(_new_issuer(authority), **change), AuditEvent("t", "issuer.added"), clock()
        )
    assert len(storage_of(authority).issuers.list_issuers()) == 1


def test_issuer_lookups(authority: CertificateAuthority) -> None:
    store = storage_of(authority)
    assert store.issuers.issuer_by_name("ca") == authority.issuer
    assert store.issuers.issuer_by_id(authority.issuer.id) == authority.issuer
    assert store.issuers.list_issuers() == [authority.issuer]
    assert store.issuers.issuer_by_name("nope") is None
    assert store.issuers.issuer_by_id(authority.issuer.id + 100) is None
    assert authority.issuer.not_after == authority.certificate.not_valid_after_utc
    assert authority.issuer.not_after.tzinfo is dt.UTC
    added = store.audit.audit_events(action="issuer.added")
    assert [(e.issuer_id, e.detail["name"]) for e in added] == [(authority.issuer.id, "ca")]


# -- availability --------------------------------------------------------------------------------


def test_ping_on_a_live_database(store: Storage) -> None:
    store.db.ping()


def test_ping_on_a_removed_sqlite_directory_is_unavailable(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    store = Storage.open(create_store_engine(sqlite_url(directory / "gateway.db")))
    try:
        store.db.ping()
        store.engine.dispose()
        shutil.rmtree(directory)
        with pytest.raises(Unavailable, match="store is unavailable") as caught:
            store.db.ping()
        assert "unable to open database file" in caught.value.detail
        with pytest.raises(Unavailable):
            store.certificates.count_certificates()
        with pytest.raises(Unavailable):
            store.audit.record_audit(AuditEvent("t", "x"), dt.datetime.now(dt.UTC))
    finally:
        store.engine.dispose()


def test_ping_on_an_unreachable_postgresql_is_unavailable() -> None:
    # Port 1 on the loopback: nothing listens, the connection is refused at once.
    engine = create_store_engine(
        "postgresql+psycopg://gateway@127.0.0.1:1/gateway", connect_args={"connect_timeout": 5}
    )
    try:
        with pytest.raises(Unavailable, match="store is unavailable"):
            Storage.open(engine).db.ping()
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = create_store_engine(sqlite_url(tmp_path / "wal.db"))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_new_sqlite_file_opened_while_another_process_writes(tmp_path: Path) -> None:
    """Switching a new file to WAL waits for the other writer instead of failing "database is locked"."""
    path = tmp_path / "new.db"
    other_process = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    release = threading.Timer(0.3, lambda: other_process.execute("COMMIT"))
    engine = create_store_engine(sqlite_url(path))
    try:
        other_process.execute("CREATE TABLE held (x)")
        other_process.execute("BEGIN IMMEDIATE")  # still a rollback-journal file: no WAL switch possible
        other_process.execute("INSERT INTO held VALUES (1)")
        release.start()
        started = time.monotonic()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert time.monotonic() - started >= 0.2  # it waited for the commit
    finally:
        release.join()
        other_process.close()
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("sqlite:////var/lib/gateway/gateway.db", None, id="ok/sqlite"),
        pytest.param("sqlite+pysqlite:///gateway.db", None, id="ok/pysqlite"),
        pytest.param("postgresql+psycopg://gw@db.example/gateway", None, id="ok/postgresql"),
        pytest.param("postgresql://gw@db.example/gateway", "unsupported database driver", id="fail/psycopg2"),
        pytest.param("mysql+pymysql://gw@db/gateway", "unsupported database driver", id="fail/mysql"),
        pytest.param("not a url", "is not a database URL", id="fail/not-a-url"),
    ],
)
def test_validate_database_url(url: str, problem: str | None) -> None:
    result = validate_database_url(url)
    if problem is None:
        assert result is None
    else:
        assert result is not None
        assert problem in result


# -- certificates --------------------------------------------------------------------------------


def test_list_certificates_status_filters(authority: CertificateAuthority, clock: SettableClock) -> None:
    store = storage_of(authority)
    renewing = Profile(name="renewing", revoke_on_renewal=True, renewal_grace_hours=1)
    valid = _issue(authority, "valid")
    revoked = _issue(authority, "revoked")
    expired = _issue(authority, "expired", Profile(name="short", validity_days=1))
    expired_revoked = _issue(authority, "expired-revoked", Profile(name="short", validity_days=1))
    superseded = _issue(authority, "superseded", renewing)
    successor = renew(authority, superseded.record, ec_key().public_key(), renewing, protocol="est", actor="d")
    authority.revoke(revoked.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")
    authority.revoke(expired_revoked.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")

    def ids(status: str | None, now: dt.datetime) -> list[int]:
        return [r.id for r in store.certificates.list_certificates(now=now, status=status)]

    everything = [valid, revoked, expired, expired_revoked, superseded, successor]
    now = clock()
    assert ids(None, now) == [i.record.id for i in everything]
    assert ids("valid", now) == [i.record.id for i in (valid, expired, superseded, successor)]
    assert ids("revoked", now) == [revoked.record.id, expired_revoked.record.id]
    assert ids("expired", now) == []

    later = now + dt.timedelta(days=1, minutes=1)  # past the 1-day certificates and the grace period
    assert ids("valid", later) == [valid.record.id, successor.record.id]
    assert ids("revoked", later) == [revoked.record.id, expired_revoked.record.id, superseded.record.id]
    assert ids("expired", later) == [expired.record.id]  # revoked wins over expired

    # The filters agree with each record's own effective_status.
    for status in ("valid", "revoked", "expired"):
        assert all(
            r.effective_status(later) == status for r in store.certificates.list_certificates(now=later, status=status)
        )


def test_list_certificates_paging_and_issuer(authority: CertificateAuthority) -> None:
    store = storage_of(authority)
    issued = [_issue(authority, f"d{i}").record.id for i in range(5)]
    now = authority.clock()
    assert [r.id for r in store.certificates.list_certificates(now=now, limit=2)] == issued[:2]
    assert [r.id for r in store.certificates.list_certificates(now=now, limit=2, offset=2)] == issued[2:4]
    assert [r.id for r in store.certificates.list_certificates(now=now, offset=4)] == issued[4:]
    assert [r.id for r in store.certificates.list_certificates(now=now, issuer_id=authority.issuer.id)] == issued
    assert store.certificates.list_certificates(now=now, issuer_id=authority.issuer.id + 1) == []
    assert store.certificates.count_certificates(authority.issuer.id) == 5
    assert store.certificates.count_certificates(authority.issuer.id + 1) == 0


def test_list_certificates_unknown_status(store: Storage) -> None:
    with pytest.raises(ValueError, match="unknown status 'active'"):
        store.certificates.list_certificates(now=dt.datetime.now(dt.UTC), status="active")


def test_certificate_lookups_miss(authority: CertificateAuthority) -> None:
    store = storage_of(authority)
    assert store.certificates.certificate(authority.issuer.id, "abc") is None
    assert store.certificates.certificate_by_id(12345) is None
    assert store.certificates.certificate_by_fingerprint("0" * 64) is None
    assert store.certificates.certificates_by_serial("abc") == []


def _record(**changes: object) -> CertificateRecord:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    base = CertificateRecord(
        id=1, issuer_id=1, serial_hex="1", fingerprint_sha256="", subject="", common_name=None, sans=(),
        key_type="", not_before=now, not_after=now + dt.timedelta(days=10), profile="", protocol="", requester=None,
        status="valid", revoked_at=None, revocation_reason=None, supersede_at=None, renewed_from_id=None, der=b"",
        created_at=now,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("record", "at", "expected"),
    [
        pytest.param(_record(), T0, "valid", id="valid"),
        pytest.param(_record(), T0 + dt.timedelta(days=10), "valid", id="valid-at-not-after"),
        pytest.param(_record(), T0 + dt.timedelta(days=10, seconds=1), "expired", id="expired"),
        pytest.param(_record(status="revoked"), T0, "revoked", id="revoked"),
        pytest.param(_record(status="revoked"), T0 + dt.timedelta(days=20), "revoked", id="revoked-beats-expired"),
        pytest.param(_record(supersede_at=T0 + dt.timedelta(hours=1)), T0, "valid", id="in-grace"),
        pytest.param(_record(supersede_at=T0), T0, "revoked", id="grace-ends"),
        pytest.param(_record(supersede_at=T0), T0 + dt.timedelta(days=20), "revoked", id="superseded-beats-expired"),
    ],
)
def test_effective_status(record: CertificateRecord, at: dt.datetime, expected: str) -> None:
    assert record.effective_status(at) == expected


# -- revocation bookkeeping ----------------------------------------------------------------------


def test_revoked_entries_revision_and_due_supersessions(authority: CertificateAuthority, clock: SettableClock) -> None:
    store = storage_of(authority)
    issuer_id = authority.issuer.id
    assert store.crls.revoked_entries(issuer_id, clock()) == []
    assert store.crls.crl_revision(issuer_id) == 0

    first = _issue(authority, "a")
    clock.advance(minutes=5)
    authority.revoke(first.record.serial_hex, x509.ReasonFlags.unspecified, actor="admin")
    revoked_at = clock()
    entries = store.crls.revoked_entries(issuer_id, clock())
    assert [(e.serial_hex, e.revoked_at, e.reason) for e in entries] == [
        (first.record.serial_hex, revoked_at, "unspecified")
    ]
    assert store.crls.crl_revision(issuer_id) == 1  # bumped in the revocation's own transaction
    assert store.crls.revoked_entries(issuer_id + 1, clock()) == []

    renewing = Profile(name="renewing", revoke_on_renewal=True, renewal_grace_hours=1)
    old = _issue(authority, "b", renewing)
    renew(authority, old.record, ec_key().public_key(), renewing, protocol="est", actor="d")
    supersede_at = clock() + dt.timedelta(hours=1)
    assert store.crls.due_supersessions(issuer_id, clock()) == 0  # the grace period has not ended
    clock.advance(hours=2)
    assert store.crls.due_supersessions(issuer_id, clock()) == 1
    entries = store.crls.revoked_entries(issuer_id, clock())
    assert [(e.serial_hex, e.revoked_at, e.reason) for e in entries] == [
        (first.record.serial_hex, revoked_at, "unspecified"),
        (old.record.serial_hex, supersede_at, "superseded"),
    ]
    assert store.crls.apply_due_supersessions(clock(), "timer") == 1
    assert store.crls.due_supersessions(issuer_id, clock()) == 0
    assert store.crls.crl_revision(issuer_id) == 2


def test_a_revocation_committed_after_a_crl_read_its_entries_makes_it_due(
    authority: CertificateAuthority, clock: SettableClock
) -> None:
    """The race a timestamp comparison misses: the CRL read the entries before the revocation committed."""
    publisher = CrlPublisher(authority, storage_of(authority).crls, dt.timedelta(hours=24), dt.timedelta(hours=1))
    cert = _issue(authority, "late")
    store = publisher.crls
    original = store.revoked_entries

    def entries_then_revocation(issuer_id: int, now: dt.datetime) -> list[RevokedEntry]:
        entries = original(issuer_id, now)
        clock.advance(seconds=-30)  # the revocation carries an earlier time than the CRL's thisUpdate
        authority.revoke(cert.record.serial_hex, x509.ReasonFlags.key_compromise, actor="racer")
        clock.advance(seconds=30)
        return entries

    store.revoked_entries = entries_then_revocation  # type: ignore[method-assign]
    try:
        crl = publisher.publish("timer")
    finally:
        store.revoked_entries = original  # type: ignore[method-assign]
    assert int(cert.record.serial_hex, 16) not in {r.serial_number for r in x509.load_der_x509_crl(crl.der)}
    assert publisher.is_due(crl, clock())
    fresh = publisher.current("reader")
    assert int(cert.record.serial_hex, 16) in {r.serial_number for r in x509.load_der_x509_crl(fresh.der)}


# -- CRLs ----------------------------------------------------------------------------------------


def _crl(issuer_id: int, number: int, at: dt.datetime) -> CrlRecord:
    return CrlRecord(issuer_id, number, at, at + dt.timedelta(days=1), f"crl {number}".encode())


def test_save_crl_never_replaces_a_newer_crl(authority: CertificateAuthority, clock: SettableClock) -> None:
    store = storage_of(authority)
    issuer_id = authority.issuer.id
    assert store.crls.latest_crl(issuer_id) is None
    one, two, three = (store.crls.allocate_crl_number(issuer_id) for _ in range(3))
    assert (one, two, three) == (1, 2, 3)

    assert store.crls.save_crl(_crl(issuer_id, two, clock()), AuditEvent("n2", "crl.published", issuer_id), clock())
    assert not store.crls.save_crl(_crl(issuer_id, one, clock()), AuditEvent("n1", "crl.published", issuer_id), clock())
    assert not store.crls.save_crl(
        _crl(issuer_id, two, clock()), AuditEvent("n2b", "crl.published", issuer_id), clock()
    )
    assert store.crls.latest_crl(issuer_id) == _crl(issuer_id, two, clock())

    clock.advance(minutes=1)
    assert store.crls.save_crl(_crl(issuer_id, three, clock()), AuditEvent("n3", "crl.published", issuer_id), clock())
    assert store.crls.latest_crl(issuer_id) == _crl(issuer_id, three, clock())
    assert [e.actor for e in store.audit.audit_events(action="crl.published")] == ["n3", "n2"]


def test_allocate_crl_number_is_unique_under_concurrency(store: Storage, authority: CertificateAuthority) -> None:
    issuer_id = authority.issuer.id
    numbers: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def allocate() -> None:
        try:
            start.wait()
            mine = [store.crls.allocate_crl_number(issuer_id) for _ in range(25)]
        except BaseException as exc:  # reported below
            errors.append(exc)
            return
        with lock:
            numbers.extend(mine)

    threads = [threading.Thread(target=allocate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(numbers) == list(range(1, 101))


def test_allocate_crl_number_for_an_unknown_issuer(store: Storage) -> None:
    with pytest.raises(Unavailable, match="no CRL counter"):
        store.crls.allocate_crl_number(424242)


def test_crl_counters_are_per_issuer(authority: CertificateAuthority, clock: SettableClock) -> None:
    store = storage_of(authority)
    other = store.issuers.add_issuer(
        replace(_new_issuer(authority), name="other", fingerprint_sha256="e" * 64),
        AuditEvent("t", "issuer.added"),
        clock(),
    )
    assert [store.crls.allocate_crl_number(authority.issuer.id) for _ in range(3)] == [1, 2, 3]
    assert store.crls.allocate_crl_number(other.id) == 1


# -- audit log and time --------------------------------------------------------------------------


def test_audit_events_newest_first_filtered_and_limited(store: Storage, clock: SettableClock) -> None:
    for i in range(5):
        store.audit.record_audit(
            AuditEvent(f"actor{i}", "a" if i % 2 else "b", None, None, {"i": i, "s": "é"}), clock()
        )
        clock.advance(seconds=1)
    assert [e.actor for e in store.audit.audit_events()] == ["actor4", "actor3", "actor2", "actor1", "actor0"]
    assert [e.actor for e in store.audit.audit_events(action="a")] == ["actor3", "actor1"]
    assert [e.actor for e in store.audit.audit_events(limit=2)] == ["actor4", "actor3"]
    assert store.audit.audit_events(action="b")[0].detail == {"i": 4, "s": "é"}
    assert store.audit.audit_events(action="none") == []


def test_times_are_stored_as_utc_and_returned_aware(store: Storage) -> None:
    local = dt.datetime(2026, 3, 1, 14, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    store.audit.record_audit(AuditEvent("t", "tz"), local)
    event = store.audit.audit_events(action="tz")[0]
    assert event.occurred_at == local
    assert event.occurred_at.tzinfo is dt.UTC
    assert event.occurred_at.hour == 12
    with store.engine.connect() as conn:
        raw = conn.execute(text("SELECT occurred_at FROM audit_events")).scalar_one()
    assert "12:30:15" in str(raw)


def test_naive_datetimes_are_refused(store: Storage) -> None:
    with pytest.raises(StatementError, match="naive datetime"):  # SQLAlchemy wraps the ValueError
        store.audit.record_audit(AuditEvent("t", "naive"), dt.datetime(2026, 1, 1))
    with store.engine.connect() as conn:
        assert conn.execute(select(text("count(*)")).select_from(text("audit_events"))).scalar_one() == 0
