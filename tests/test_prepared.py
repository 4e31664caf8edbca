"""shared_ca.storage.prepared and Storage.reading, on SQLite and (in CI) PostgreSQL.

A PreparedStatement must write exactly what SQLAlchemy Core writes for the same statement and
values, raise the errors Core raises, and run inside the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import bindparam, case, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, InvalidRequestError, StatementError

from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import audit_events, certificates, devices, issuers

NOW = dt.datetime(2026, 11, 27, 10, 30, 15, 123456, tzinfo=dt.UTC)


def _issuer_row(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "ca",
        "subject": f"CN={name}",
        "ski_hex": "ab" * 20,
        "fingerprint_sha256": name.encode().hex().ljust(64, "0"),
        "cert_der": b"\x30\x03\x02\x01\x00",
        "not_before": NOW,
        "not_after": NOW + dt.timedelta(days=365),
        "trust_until": None,
        "created_at": NOW,
    }


def _certificate_row(issuer_id: int, serial: str) -> dict[str, Any]:
    return {
        "issuer_id": issuer_id,
        "serial_hex": serial,
        "fingerprint_sha256": serial.rjust(64, "0"),
        "subject": "CN=device,O=Example",
        "common_name": "device",
        "sans": '["dns:device.example"]',
        "key_type": "p256",
        "not_before": NOW,
        "not_after": NOW + dt.timedelta(days=30),
        "profile": "default",
        "protocol": "scep",
        "requester": None,
        "status": "valid",
        "renewed_from_id": None,
        "der": bytes(range(256)),
        "created_at": NOW,
    }


def _stored(store: Storage, table: Any, row_id: int, *, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """A row as the database holds it (no type processing on the way out), minus `without`."""
    with store.engine.connect() as conn:
        row = conn.execute(select(text("*")).select_from(table).where(table.c.id == row_id)).mappings().one()
    return {k: v for k, v in row.items() if k not in ("id", *without)}


def test_insert_stores_what_core_stores(store: Storage) -> None:
    prepared = PreparedStatement(insert(issuers).returning(issuers.c.id), columns_from_params=True)
    core_row, fast_row = _issuer_row("core"), _issuer_row("fast")
    fast_row["fingerprint_sha256"] = core_row["fingerprint_sha256"][::-1]
    with store.engine.begin() as conn:
        core_id = conn.execute(insert(issuers).returning(issuers.c.id), core_row).scalar_one()
        fast_id = prepared.inserted_id(conn, fast_row)
    assert fast_id == core_id + 1
    differing = ("name", "subject", "fingerprint_sha256")
    assert _stored(store, issuers, fast_id, without=differing) == _stored(store, issuers, core_id, without=differing)
    with store.engine.connect() as conn:
        stored = conn.execute(select(issuers.c.not_before, issuers.c.cert_der).where(issuers.c.id == fast_id)).one()
    assert (stored.not_before, stored.cert_der) == (NOW, b"\x30\x03\x02\x01\x00")


def test_literals_and_repeated_binds_are_filled_in(store: Storage) -> None:
    """An UPDATE with a literal value, a CASE literal and one bind used twice."""
    with store.engine.begin() as conn:
        issuer_id = conn.execute(insert(issuers).returning(issuers.c.id), _issuer_row("ca")).scalar_one()
        conn.execute(insert(certificates), [_certificate_row(issuer_id, "01"), _certificate_row(issuer_id, "02")])
    c = certificates.c
    statement = (
        update(certificates)
        .where(c.serial_hex == bindparam("serial"))
        .values(
            status=case((c.status == "valid", "revoked"), else_=c.status),
            revocation_reason="keyCompromise",
            revoked_at=bindparam("at", type_=c.revoked_at.type),
            supersede_at=bindparam("at", type_=c.revoked_at.type),
        )
    )
    prepared = PreparedStatement(statement)
    with store.engine.begin() as conn:
        assert prepared.rowcount(conn, {"serial": "01", "at": NOW}) == 1
        assert prepared.rowcount(conn, {"serial": "ff", "at": NOW}) == 0
    with store.engine.begin() as conn:
        conn.execute(statement, {"serial": "02", "at": NOW})
        fast_id, core_id = (
            conn.execute(select(c.id).where(c.serial_hex == serial)).scalar_one() for serial in ("01", "02")
        )
    differing = ("serial_hex", "fingerprint_sha256")
    assert _stored(store, certificates, fast_id, without=differing) == _stored(
        store, certificates, core_id, without=differing
    )
    with store.engine.connect() as conn:
        rows = conn.execute(select(c.status, c.revocation_reason, c.revoked_at, c.supersede_at)).all()
    assert [tuple(r) for r in rows] == [("revoked", "keyCompromise", NOW, NOW)] * 2


def test_runs_inside_the_callers_transaction(store: Storage) -> None:
    prepared = PreparedStatement(insert(audit_events), columns_from_params=True)
    row = {"occurred_at": NOW, "actor": "t", "action": "rolled-back", "issuer_id": None, "serial_hex": None}
    row |= {"node": "n", "seq": 1, "prev_hash": "0" * 64, "hash": "0" * 64}  # the chain's columns (0010)
    with pytest.raises(RuntimeError), store.engine.begin() as conn:
        prepared.execute(conn, {**row, "detail": "{}"})
        raise RuntimeError("abort")
    with store.engine.connect() as conn:
        assert conn.execute(select(audit_events.c.id)).all() == []


def test_a_duplicate_raises_integrity_error_and_keeps_nothing(store: Storage) -> None:
    prepared = PreparedStatement(insert(issuers).returning(issuers.c.id), columns_from_params=True)
    with store.engine.begin() as conn:
        prepared.inserted_id(conn, _issuer_row("one"))
    with pytest.raises(IntegrityError) as caught, store.engine.begin() as conn:
        prepared.inserted_id(conn, _issuer_row("two"))  # a new name …
        prepared.inserted_id(conn, _issuer_row("one"))  # … then a duplicate in the same transaction
    assert "issuers" in str(caught.value.orig).lower() or "unique" in str(caught.value.orig).lower()
    with store.engine.connect() as conn:
        assert conn.execute(select(issuers.c.name)).scalars().all() == ["one"]


def test_a_value_the_column_refuses_raises_statement_error(store: Storage) -> None:
    prepared = PreparedStatement(insert(audit_events), columns_from_params=True)
    naive = {
        "occurred_at": dt.datetime(2026, 1, 1),
        "actor": "t",
        "action": "naive",
        "issuer_id": None,
        "serial_hex": None,
        "detail": "{}",
    }
    with pytest.raises(StatementError, match="naive datetime"), store.engine.begin() as conn:
        prepared.execute(conn, naive)


def test_a_missing_parameter_is_refused(store: Storage) -> None:
    prepared = PreparedStatement(delete(devices).where(devices.c.identity == bindparam("identity")))
    with pytest.raises(InvalidRequestError, match="identity"), store.engine.begin() as conn:
        prepared.rowcount(conn, {})


def test_inserted_id_needs_a_row_back(store: Storage) -> None:
    prepared = PreparedStatement(update(audit_events).where(audit_events.c.id == -1).values(action="x"))
    with pytest.raises(ValueError, match="no row"), store.engine.begin() as conn:
        prepared.inserted_id(conn, {})


def test_reading_lends_one_connection_to_every_read(store: Storage) -> None:
    checkouts: list[object] = []
    original = store.engine.connect

    def counting_connect() -> Any:
        connection = original()
        checkouts.append(connection)
        return connection

    store.engine.connect = counting_connect  # type: ignore[method-assign]
    try:
        with store.db.reading():
            assert store.issuers.list_issuers() == []
            assert store.issuers.issuer_by_name("x") is None
            with store.db.reading():  # nested: still the same connection
                assert store.certificates.certificate_by_fingerprint("00" * 32) is None
        assert len(checkouts) == 1
        store.issuers.list_issuers()  # after the scope: a connection of its own again
        assert len(checkouts) == 2
    finally:
        store.engine.connect = original  # type: ignore[method-assign]


def test_writes_inside_a_read_scope_take_their_own_connection(store: Storage) -> None:
    from shared_ca.storage.audit import AuditEvent

    with store.db.reading():
        store.audit.record_audit(AuditEvent("t", "inside"), NOW)
    assert [e.action for e in store.audit.audit_events()] == ["inside"]


def test_a_read_scope_is_per_engine(store: Storage, tmp_path: Any) -> None:
    from shared_ca.storage.db import create_store_engine, migrate_to_head, sqlite_url

    other_engine = create_store_engine(sqlite_url(tmp_path / "other.db"))
    migrate_to_head(other_engine)
    other = Storage.open(other_engine)
    try:
        with store.db.reading():
            assert other.issuers.list_issuers() == []  # another database: its own connection, not the lent one
    finally:
        other_engine.dispose()


def test_first_returns_what_core_returns(store: Storage) -> None:
    """A SELECT's row with each column's result processing: aware datetimes, booleans, bytes, NULLs,
    a labelled column and an outer join."""
    with store.engine.begin() as conn:
        issuer_id = conn.execute(insert(issuers).returning(issuers.c.id), _issuer_row("ca")).scalar_one()
        conn.execute(insert(certificates), [_certificate_row(issuer_id, "0a")])
    c = certificates.c
    joined = (
        select(c.serial_hex, c.der, c.not_before, c.revoked_at, issuers.c.trust_until, issuers.c.name.label("ca"))
        .select_from(certificates.outerjoin(issuers, issuers.c.id == c.issuer_id))
        .where(c.serial_hex == bindparam("serial"))
    )
    whole_row = select(certificates).where(c.serial_hex == bindparam("serial"))
    with store.engine.connect() as conn:
        for query in (joined, whole_row):
            core = conn.execute(query, {"serial": "0a"}).mappings().first()
            assert core is not None
            assert PreparedStatement(query).first(conn, {"serial": "0a"}) == dict(core)
            assert PreparedStatement(query).first(conn, {"serial": "ff"}) is None
    fast = PreparedStatement(joined)
    with store.engine.connect() as conn:
        row = fast.first(conn, {"serial": "0a"})
    assert row is not None
    assert row["not_before"] == NOW and row["not_before"].tzinfo is not None
    assert (row["ca"], row["der"], row["revoked_at"]) == ("ca", bytes(range(256)), None)


def test_first_reads_booleans_and_aggregates(store: Storage) -> None:
    from shared_ca.storage.schema import device_groups

    with store.engine.begin() as conn:
        conn.execute(
            insert(device_groups),
            [
                {"name": "stores", "sunset_at": NOW, "allow_downgrade": True, "updated_at": NOW},
                {"name": "lab", "sunset_at": None, "allow_downgrade": False, "updated_at": NOW},
            ],
        )
    g = device_groups.c
    by_name = select(g.allow_downgrade, g.sunset_at).where(g.name == bindparam("name"))
    latest = select(func.max(g.sunset_at).label("latest"))
    with store.engine.connect() as conn:
        assert PreparedStatement(by_name).first(conn, {"name": "stores"}) == {"allow_downgrade": True, "sunset_at": NOW}
        assert PreparedStatement(by_name).first(conn, {"name": "lab"}) == {"allow_downgrade": False, "sunset_at": None}
        assert PreparedStatement(latest).first(conn, {}) == {"latest": NOW}
