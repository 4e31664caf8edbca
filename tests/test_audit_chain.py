"""The tamper-evident audit trail (shared_ca.storage.audit, audit_chain; `gateway audit verify|export`):
records changed, deleted, reordered, forged or rehashed in the database are each found and named; a
rewritten chain is found against an anchor; writers of one node take turns across threads and
processes; the acts the issue lists write their records; and the export and syslog formats.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import multiprocessing
import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import Engine, text

from gateway.app import create_app
from gateway.audit_formats import cef_line, jsonl_line
from gateway.audit_trail import SyslogSink, audit_node, config_change, open_store, record_config_change
from gateway.cli import main
from gateway.cli.audit import parse_since
from gateway.config import ConfigError, GatewayConfig, load_config
from shared_ca.approval import ApprovalQueue
from shared_ca.authority import CertificateAuthority
from shared_ca.authorization import Authorizer, Principal, PrincipalKind
from shared_ca.identity import DEFAULT_IDENTITY
from shared_ca.storage.admin import AdminTokenUse
from shared_ca.storage.audit import AuditEvent, AuditRecord, configure_audit, write_audit
from shared_ca.storage.audit_chain import (
    GENESIS,
    Anchor,
    ChainedFields,
    ChainProblem,
    ProblemKind,
    check_node_name,
    record_digest,
)
from shared_ca.storage.db import create_store_engine, migrate_to_head
from shared_ca.storage.enrollment_records import EnrollmentEvent, NewScepTransaction
from shared_ca.storage.repositories import Storage
from tests.support import SettableClock, rsa_key, storage_of
from tests.test_authorization import DEFAULT, ask
from tests.test_migration_0006 import _to
from tests.test_scep_service import device_key, enrollment, get_ca, post, reply_of

NODE = "node-a"
T0 = dt.datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture
def chain(store: Storage) -> Storage:
    """The store writing into chain `node-a`, with five records (seq 1..5) in it."""
    configure_audit(store.engine, NODE)
    for i in range(5):
        store.audit.record_audit(AuditEvent("tester", "test.act", None, None, {"i": i}), T0 + dt.timedelta(seconds=i))
    return store


def _ids(store: Storage) -> dict[int, int]:
    """seq → row id of node-a's records."""
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, id FROM audit_events WHERE node = :n"), {"n": NODE}).all()
    return {int(seq): int(row_id) for seq, row_id in rows}


def _sql(store: Storage, *statements: str, **params: Any) -> None:
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)


def _found(
    store: Storage, anchors: tuple[Anchor, ...] = ()
) -> list[tuple[str, str, int | None, int | None, int | None]]:
    """(node, kind, seq, last seq, row id) of every problem verify finds."""
    problems: list[ChainProblem] = [p for r in store.audit.verify(anchors=anchors) for p in r.problems]
    return [(p.node, p.kind, p.seq, p.last_seq, p.record_id) for p in problems]


def _row(store: Storage, seq: int) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM audit_events WHERE node = :n AND seq = :s"), {"n": NODE, "s": seq})
        return dict(row.mappings().one())


def _rehash(store: Storage, seq: int, prev_hash: str | None = None) -> str:
    """Recompute the stored hash of node-a's record `seq` (after its fields were changed), as an attacker
    who knows the algorithm would; its new hash."""
    row = _row(store, seq)
    occurred = storage_record_time(row["occurred_at"])
    fields = ChainedFields(
        NODE,
        seq,
        prev_hash or row["prev_hash"],
        occurred,
        row["actor"],
        row["action"],
        row["issuer_id"],
        row["serial_hex"],
        row["detail"],
    )
    digest = record_digest(fields)
    _sql(
        store,
        "UPDATE audit_events SET hash = :h, prev_hash = :p WHERE node = :n AND seq = :s",
        h=digest,
        p=fields.prev_hash,
        n=NODE,
        s=seq,
    )
    return digest


def storage_record_time(value: Any) -> dt.datetime:
    """A raw occurred_at (naive UTC datetime on PostgreSQL, text on SQLite) as an aware UTC datetime."""
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return when.replace(tzinfo=dt.UTC)


# -- an intact chain -------------------------------------------------------------------------------


def test_an_untouched_chain_verifies_with_its_head(chain: Storage) -> None:
    [report] = chain.audit.verify()
    assert (report.node, report.records, report.intact) == (NODE, 5, True)
    assert report.head is not None and report.head.last_seq == 5
    newest = chain.audit.audit_events(limit=1)[0]
    assert (newest.seq, newest.hash, newest.node) == (5, report.head.last_hash, NODE)
    records = sorted(chain.audit.audit_events(), key=lambda r: r.seq)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))


def test_a_rolled_back_act_leaves_no_record_and_no_gap(chain: Storage) -> None:
    with pytest.raises(RuntimeError), chain.db.write() as conn:
        write_audit(conn, AuditEvent("t", "rolled.back"), T0)
        raise RuntimeError("the act failed")
    chain.audit.record_audit(AuditEvent("t", "kept"), T0)
    assert [(r.seq, r.action) for r in chain.audit.audit_events(limit=1)] == [(6, "kept")]
    assert _found(chain) == []


def test_each_node_has_its_own_chain(chain: Storage, database_url: str) -> None:
    other = create_store_engine(database_url)
    try:
        configure_audit(other, "node-b")
        Storage.open(other).audit.record_audit(AuditEvent("t", "elsewhere"), T0)
    finally:
        other.dispose()
    reports = {r.node: r for r in chain.audit.verify()}
    assert {n: (r.records, r.intact) for n, r in reports.items()} == {NODE: (5, True), "node-b": (1, True)}
    assert [r.node for r in chain.audit.verify(nodes=["node-b"])] == ["node-b"]


# -- tampering: each kind is found and named -------------------------------------------------------


def test_a_changed_detail_is_named(chain: Storage) -> None:
    ids = _ids(chain)
    _sql(chain, "UPDATE audit_events SET detail = :d WHERE node = :n AND seq = 3", d='{"i":99}', n=NODE)
    assert _found(chain) == [(NODE, ProblemKind.CHANGED, 3, None, ids[3])]


def test_a_changed_actor_is_named(chain: Storage) -> None:
    ids = _ids(chain)
    _sql(chain, "UPDATE audit_events SET actor = 'mallory' WHERE node = :n AND seq = 2", n=NODE)
    assert _found(chain) == [(NODE, ProblemKind.CHANGED, 2, None, ids[2])]


def test_a_changed_time_is_named(chain: Storage) -> None:
    ids = _ids(chain)
    _sql(
        chain, "UPDATE audit_events SET occurred_at = :t WHERE node = :n AND seq = 4", t=dt.datetime(2020, 1, 1), n=NODE
    )
    assert _found(chain) == [(NODE, ProblemKind.CHANGED, 4, None, ids[4])]


def test_a_deleted_middle_record_is_named(chain: Storage) -> None:
    _sql(chain, "DELETE FROM audit_events WHERE node = :n AND seq = 3", n=NODE)
    assert _found(chain) == [(NODE, ProblemKind.MISSING, 3, 3, None)]


def test_deleted_newest_records_are_found_against_the_head(chain: Storage) -> None:
    _sql(chain, "DELETE FROM audit_events WHERE node = :n AND seq >= 4", n=NODE)
    assert _found(chain) == [(NODE, ProblemKind.MISSING, 4, 5, None)]


@pytest.mark.parametrize(("first", "second"), [(2, 4), (3, 4), (1, 5)], ids=["apart", "adjacent", "ends"])
def test_swapped_records_are_named_out_of_order(chain: Storage, first: int, second: int) -> None:
    ids = _ids(chain)
    _sql(
        chain,
        "UPDATE audit_events SET seq = -1 WHERE node = :n AND seq = :a",
        "UPDATE audit_events SET seq = :a WHERE node = :n AND seq = :b",
        "UPDATE audit_events SET seq = :b WHERE node = :n AND seq = -1",
        n=NODE,
        a=first,
        b=second,
    )
    assert _found(chain) == [
        (NODE, ProblemKind.OUT_OF_ORDER, first, None, ids[second]),
        (NODE, ProblemKind.OUT_OF_ORDER, second, None, ids[first]),
    ]
    [report] = chain.audit.verify()
    assert [p.message for p in report.problems] == [
        f"out of order: written as seq {second}",
        f"out of order: written as seq {first}",
    ]


def test_a_forged_record_appended_with_a_valid_hash_is_past_the_head(chain: Storage) -> None:
    last = _row(chain, 5)
    forged = ChainedFields(NODE, 6, last["hash"], T0, "mallory", "admin_token.created", None, None, "{}")
    _sql(
        chain,
        "INSERT INTO audit_events (occurred_at, actor, action, detail, node, seq, prev_hash, hash)"
        " VALUES (:t, 'mallory', 'admin_token.created', '{}', :n, 6, :p, :h)",
        t=T0.replace(tzinfo=None),
        n=NODE,
        p=last["hash"],
        h=record_digest(forged),
    )
    assert _found(chain) == [(NODE, ProblemKind.BEYOND_HEAD, 6, 6, None)]


def test_a_forged_record_with_a_made_up_hash_is_named(chain: Storage) -> None:
    _sql(
        chain,
        "INSERT INTO audit_events (occurred_at, actor, action, detail, node, seq, prev_hash, hash)"
        " VALUES (:t, 'mallory', 'x', '{}', :n, 6, :p, :h)",
        t=T0.replace(tzinfo=None),
        n=NODE,
        p=GENESIS,
        h="f" * 64,
    )
    forged_id = _ids(chain)[6]
    assert _found(chain) == [
        (NODE, ProblemKind.CHANGED, 6, None, forged_id),
        (NODE, ProblemKind.BEYOND_HEAD, 6, 6, None),
    ]


def test_a_forged_chain_without_a_head_is_named(chain: Storage) -> None:
    forged = ChainedFields("ghost", 1, GENESIS, T0, "mallory", "x", None, None, "{}")
    _sql(
        chain,
        "INSERT INTO audit_events (occurred_at, actor, action, detail, node, seq, prev_hash, hash)"
        " VALUES (:t, 'mallory', 'x', '{}', 'ghost', 1, :p, :h)",
        t=T0.replace(tzinfo=None),
        p=GENESIS,
        h=record_digest(forged),
    )
    assert _found(chain) == [("ghost", ProblemKind.NO_HEAD, 1, 1, None)]


def test_a_changed_and_rehashed_record_breaks_the_link_of_the_next(chain: Storage) -> None:
    ids = _ids(chain)
    _sql(chain, "UPDATE audit_events SET actor = 'mallory' WHERE node = :n AND seq = 3", n=NODE)
    _rehash(chain, 3)
    assert _found(chain) == [(NODE, ProblemKind.BROKEN_LINK, 4, None, ids[4])]


def test_a_rehashed_newest_record_differs_from_the_head(chain: Storage) -> None:
    _sql(chain, "UPDATE audit_events SET actor = 'mallory' WHERE node = :n AND seq = 5", n=NODE)
    _rehash(chain, 5)
    assert _found(chain) == [(NODE, ProblemKind.HEAD_MISMATCH, 5, None, None)]


def test_a_rewritten_chain_and_head_pass_but_an_anchor_finds_them(chain: Storage) -> None:
    """The limit of a chain in the database it protects: a full rewrite verifies; the anchor does not."""
    [before] = chain.audit.verify()
    assert before.head is not None
    anchor = Anchor(NODE, 5, before.head.last_hash)
    _sql(chain, "UPDATE audit_events SET actor = 'mallory' WHERE node = :n AND seq = 3", n=NODE)
    digest = _rehash(chain, 3)
    digest = _rehash(chain, 4, digest)
    digest = _rehash(chain, 5, digest)
    _sql(chain, "UPDATE audit_chain_heads SET last_hash = :h WHERE node = :n", h=digest, n=NODE)
    assert _found(chain) == []
    assert _found(chain, (anchor,)) == [(NODE, ProblemKind.ANCHOR_MISMATCH, 5, None, _ids(chain)[5])]
    assert _found(chain, (Anchor(NODE, 9, "a" * 64),)) == [(NODE, ProblemKind.ANCHOR_MISSING, 9, None, None)]


def test_anchors_and_node_names_are_checked() -> None:
    assert Anchor.parse("gw-1:12:" + "AB" * 32) == Anchor("gw-1", 12, "ab" * 32)
    assert str(Anchor("gw-1", 12, "ab" * 32)) == "gw-1:12:" + "ab" * 32
    for bad, why in [("gw-1:12", "NODE:SEQ:HASH"), ("gw-1:0:" + "a" * 64, "sequence"), ("gw-1:1:xyz", "SHA-256")]:
        with pytest.raises(ValueError, match=why):
            Anchor.parse(bad)
    with pytest.raises(ValueError, match="node name"):
        check_node_name("no spaces")
    with pytest.raises(ValueError, match="node name"):
        check_node_name("x" * 65)


# -- concurrency ------------------------------------------------------------------------------------


def test_threads_of_two_nodes_write_two_valid_chains(store: Storage, database_url: str) -> None:
    engines = [create_store_engine(database_url) for _ in range(2)]
    try:
        for engine, node in zip(engines, ("node-a", "node-b"), strict=True):
            configure_audit(engine, node)
        stores = [Storage.open(e) for e in engines]
        errors: list[BaseException] = []

        def write(target: Storage, worker: int) -> None:
            try:
                for i in range(15):
                    target.audit.record_audit(AuditEvent(f"w{worker}", "test.concurrent", None, None, {"i": i}), T0)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(stores[w % 2], w)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
    finally:
        for engine in engines:
            engine.dispose()
    reports = {r.node: r for r in store.audit.verify()}
    assert {n: (r.records, r.intact) for n, r in reports.items()} == {"node-a": (60, True), "node-b": (60, True)}
    with store.engine.connect() as conn:
        seqs = conn.execute(text("SELECT node, seq FROM audit_events ORDER BY node, seq")).all()
    assert [tuple(s) for s in seqs] == [(n, i) for n in ("node-a", "node-b") for i in range(1, 61)]


def _write_from_a_process(url: str, node: str, count: int) -> None:
    engine = create_store_engine(url)
    try:
        configure_audit(engine, node)
        audit = Storage.open(engine).audit
        for i in range(count):
            audit.record_audit(AuditEvent(f"pid{os.getpid()}", "test.process", None, None, {"i": i}), T0)
    finally:
        engine.dispose()


def test_processes_of_one_node_take_turns(store: Storage, database_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_from_a_process, args=(database_url, NODE, 20)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    [report] = store.audit.verify()
    assert (report.node, report.records, report.intact) == (NODE, 60, True)
    assert report.head is not None and report.head.last_seq == 60


# -- migration 0010 ---------------------------------------------------------------------------------


@pytest.fixture
def at_0009(store: Storage) -> Iterator[Engine]:
    _to(store.engine, "0009_client_family", down=True)
    yield store.engine


def _insert_legacy(conn: Any, actor: str, when: dt.datetime, detail: str) -> None:
    conn.execute(
        text(
            "INSERT INTO audit_events (occurred_at, actor, action, issuer_id, serial_hex, detail)"
            " VALUES (:t, :a, 'certificate.issued', NULL, 'ab01', :d)"
        ),
        {"t": when.replace(tzinfo=None), "a": actor, "d": detail},
    )


def test_0010_chains_the_records_written_before_it(at_0009: Engine, store: Storage) -> None:
    with at_0009.begin() as conn:
        for i in range(3):
            _insert_legacy(conn, f"before-{i}", T0 + dt.timedelta(minutes=i), json.dumps({"i": i, "s": "é"}))
    _to(at_0009, "0010_audit_chain")
    [report] = store.audit.verify()
    assert (report.node, report.records, report.intact) == ("legacy", 3, True)
    assert report.head is not None and report.head.last_seq == 3
    configure_audit(at_0009, NODE)
    store.audit.record_audit(AuditEvent("after", "test.act"), T0)
    assert {r.node: (r.records, r.intact) for r in store.audit.verify()} == {"legacy": (3, True), NODE: (1, True)}
    _sql(store, "UPDATE audit_events SET actor = 'mallory' WHERE node = 'legacy' AND seq = 2")
    assert [(p.node, p.kind, p.seq) for r in store.audit.verify() for p in r.problems] == [
        ("legacy", ProblemKind.CHANGED, 2)
    ]


def test_0010_downgrades_and_upgrades_again(at_0009: Engine, store: Storage) -> None:
    with at_0009.begin() as conn:
        _insert_legacy(conn, "before", T0, "{}")
    _to(at_0009, "0010_audit_chain")
    configure_audit(at_0009, NODE)
    store.audit.record_audit(AuditEvent("after", "test.act"), T0)
    _to(at_0009, "0009_client_family", down=True)
    with at_0009.connect() as conn:
        columns = set(conn.execute(text("SELECT * FROM audit_events")).keys())
        assert conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one() == 2
    assert not {"node", "seq", "prev_hash", "hash"} & columns
    _to(at_0009, "0010_audit_chain")
    [report] = store.audit.verify()  # both records now in the legacy chain, in the order written
    assert (report.node, report.records, report.intact) == ("legacy", 2, True)


# -- the acts the audit log records -------------------------------------------------------------------


def _event(outcome: str, **fields: Any) -> EnrollmentEvent:
    values: dict[str, Any] = {"protocol": "est", "operation": "simpleenroll", "client_address": "192.0.2.1"}
    return EnrollmentEvent(outcome=outcome, **{**values, **fields})


@pytest.mark.parametrize(
    ("event", "audited"),
    [
        pytest.param(_event("refused:unauthorized", detail={"cause": "wrong password"}), True, id="est/unauthorized"),
        pytest.param(_event("refused:policy", detail={"principal": "alice", "cause": "x"}), True, id="est/policy"),
        pytest.param(_event("failed:badrequest"), True, id="est/cmc-failure"),
        pytest.param(_event("refused:too_many_requests"), False, id="est/rate-limited"),
        pytest.param(_event("refused:unavailable"), False, id="est/shed"),
        pytest.param(_event("refused:transport"), False, id="est/transport"),
        pytest.param(_event("failure:badRequest", protocol="scep", refusal_kind="policy"), True, id="scep/policy"),
        pytest.param(
            _event("failure:badRequest", protocol="scep", refusal_kind="too_many_requests"), False, id="scep/rate"
        ),
        pytest.param(_event("issued"), False, id="issued"),
        pytest.param(_event("pending"), False, id="pending"),
        pytest.param(_event("retransmission:failed", protocol="scep"), False, id="scep/retransmission"),
    ],
)
def test_refusals_that_judge_the_requester_are_audited(store: Storage, event: EnrollmentEvent, audited: bool) -> None:
    event_id = store.enrollments.record_event(event, T0)
    found = store.audit.audit_events(action="request.refused")
    if not audited:
        assert found == []
        return
    [record] = found
    principal = (event.detail or {}).get("principal")
    assert record.actor == f"{event.protocol}:{principal or '192.0.2.1'}"
    assert record.detail["event"] == event_id and record.detail["outcome"] == event.outcome
    assert record.detail.get("cause") == (event.detail or {}).get("cause")


def test_a_kept_scep_refusal_is_audited_with_its_transaction_or_not_at_all(store: Storage) -> None:
    txn = NewScepTransaction("k" * 64, "txn-1", "c" * 64, "19", "default", "r" * 64, status="failed")
    event = _event("failure:badRequest", protocol="scep", refusal_kind="unauthorized", transaction_id="txn-1")
    store.enrollments.record_scep_outcome(txn, event, T0)
    assert [r.detail["transaction_id"] for r in store.audit.audit_events(action="request.refused")] == ["txn-1"]
    with pytest.raises(Exception, match="already recorded"):
        store.enrollments.record_scep_outcome(txn, event, T0)  # the same pair: nothing of it is kept
    assert len(store.audit.audit_events(action="request.refused")) == 1
    assert [r.intact for r in store.audit.verify()] == [True]


def test_scep_over_the_app_audits_a_refusal_but_not_a_rate_limit(data_dir: Path) -> None:
    environ = {"GATEWAY_ADMISSION_ADDRESS_RATE_PER_MINUTE": "1", "GATEWAY_ADMISSION_BURST": "1"}
    app = create_app(load_config(data_dir, environ=environ))
    gw = app.extensions["gateway"].get()
    try:
        client = app.test_client()
        ra = get_ca(client)
        wrong = enrollment(ra, "audited-dev", key=device_key(), challenge="wrong")
        assert reply_of(post(client, wrong.der), ra, wrong).fail_info is not None
        limited = enrollment(ra, "limited-dev", key=device_key())
        assert reply_of(post(client, limited.der), ra, limited).fail_info_text == "too many requests; try again later"
        refused = gw.storage.audit.audit_events(action="request.refused")
        assert [(r.detail["protocol"], r.detail["kind"], r.detail.get("device")) for r in refused] == [
            ("scep", "unauthorized", "audited-dev")
        ]
    finally:
        gw.storage.engine.dispose()


def test_an_approval_is_audited_and_a_deferred_issuance_is_not(
    authority: CertificateAuthority, clock: SettableClock
) -> None:
    storage = storage_of(authority)
    manual = replace(DEFAULT, approval="manual")
    authorizer = Authorizer(DEFAULT_IDENTITY, default_profile="default", clock=clock)
    queue = ApprovalQueue(
        authority=authority, authorizer=authorizer, storage=storage, profiles={"default": manual}, clock=clock
    )
    principal = Principal.challenge(PrincipalKind.STATIC_CHALLENGE, "default")

    def held(cn: str, *, deferred: bool) -> int:
        request = ask(cn)
        authorization = authorizer.authorize(principal, manual, "est", request)
        new = queue.describe(
            "est", authorization, request, reference=cn, device=cn, client_address="192.0.2.9", deferred=deferred
        )
        return queue.hold(new, _event("pending", device_identity=cn)).record.id

    approved = queue.approve(held("approved-dev", deferred=False), actor="cli:alice")
    held("deferred-dev", deferred=True)
    assert queue.issue_deferred(actor="deferred-issuer") is not None
    [record] = storage.audit.audit_events(action="request.approved")
    assert (record.actor, record.serial_hex, record.issuer_id) == (
        "cli:alice",
        approved.serial_hex,
        authority.issuer.id,
    )
    assert record.detail["device"] == "approved-dev" and record.detail["principal"] == principal.name
    assert len(storage.audit.audit_events(action="certificate.issued")) == 2
    assert all(r.intact for r in storage.audit.verify())


def test_an_admin_token_use_is_audited_with_method_and_path(store: Storage) -> None:
    created = store.admin_tokens.create_admin_token("ops", created_by="test", now=T0)
    use = AdminTokenUse("GET", "/admin/api/devices", "192.0.2.5")
    assert store.admin_tokens.authenticate_admin_token(created.token, T0, use=use) is not None
    assert store.admin_tokens.authenticate_admin_token(created.token + "x", T0, use=use) is None
    [record] = store.audit.audit_events(action="admin_token.used")
    assert record.actor == "admin-token:ops"
    assert record.detail == {
        "token": created.record.id,
        "name": "ops",
        "method": "GET",
        "path": "/admin/api/devices",
        "client": "192.0.2.5",
    }
    assert created.token not in json.dumps([r.detail for r in store.audit.audit_events()])


def test_the_admin_api_audits_each_request_by_token(app: Flask) -> None:
    storage = app.extensions["gateway"].get().storage
    created = storage.admin_tokens.create_admin_token("dash", created_by="test", now=T0)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {created.token}"}
    for path in ("/admin/api/migration/summary", "/admin/api/devices"):
        assert client.get(path, headers=headers, base_url="https://localhost").status_code == 200
    used = storage.audit.audit_events(action="admin_token.used")
    assert [(r.detail["method"], r.detail["path"]) for r in reversed(used)] == [
        ("GET", "/admin/api/migration/summary"),
        ("GET", "/admin/api/devices"),
    ]


# -- configuration changes ---------------------------------------------------------------------------


def _config(data_dir: Path, **environ: str) -> GatewayConfig:
    return load_config(data_dir, environ=environ)


def test_config_changes_are_recorded_by_key_and_secrets_by_name_only(data_dir: Path) -> None:
    ra = rsa_key()
    config = _config(data_dir)
    storage = open_store(config)
    try:
        node = audit_node(config)
        assert record_config_change(storage, config, ra, T0)  # the first start
        assert not record_config_change(storage, config, ra, T0)  # nothing changed
        changed = _config(
            data_dir,
            GATEWAY_LISTEN_WORKERS="3",
            GATEWAY_PROFILES_DEFAULT_SCEP_CHALLENGE="n3w-s3cret",
        )
        assert record_config_change(storage, changed, ra, T0)
        last = storage.audit.last_of_node(node, "config.changed")
        assert last is not None
        assert last.detail["changed"] == {
            "listen.workers": {"from": 2, "to": 3},
            "profiles.default.scep_challenge": {"secret": "changed"},
        }
        assert last.detail["settings"]["profiles.default.scep_challenge"] == "<set>"
        dumped = json.dumps([r.detail for r in storage.audit.audit_events()])
        assert "n3w-s3cret" not in dumped and "s3cret" not in dumped.replace("<set>", "")
        assert not record_config_change(storage, changed, ra, T0)
        assert config_change(changed, rsa_key(2048, fresh=True), last) is not None  # another RA key: re-keyed
    finally:
        storage.engine.dispose()


def test_a_bad_audit_node_or_syslog_target_is_one_line_naming_the_setting(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^audit\.node: "):
        audit_node(_config(data_dir, GATEWAY_AUDIT_NODE="has space"))
    with pytest.raises(ConfigError, match=r"^audit\.syslog: "):
        open_store(_config(data_dir, GATEWAY_AUDIT_SYSLOG="tcp://127.0.0.1:514"))
    assert audit_node(_config(data_dir, GATEWAY_AUDIT_NODE="gw-7")) == "gw-7"


# -- export formats and the syslog sink ---------------------------------------------------------------


def _record(**fields: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "id": 7,
        "occurred_at": T0,
        "actor": "est:a|b",
        "action": "request.refused",
        "issuer_id": None,
        "serial_hex": None,
        "detail": {"cause": "x=1\\2\nINJECTED|line", "client": "192.0.2.1"},
        "node": NODE,
        "seq": 3,
        "prev_hash": "1" * 64,
        "hash": "2" * 64,
    }
    return AuditRecord(**{**values, **fields})


def test_cef_escapes_what_would_split_a_field_or_a_line() -> None:
    line = cef_line(_record(), "1.0|x\\y")
    assert line.endswith("\n") and line.count("\n") == 1
    header = line.split("|")
    assert header[:3] == ["CEF:0", "scep-est-gateway", "gateway"]
    assert "|1.0\\|x\\\\y|request.refused|request refused|5|" in line
    extension = line.split("|request refused|5|", 1)[1]
    assert "suser=est:a|b " in extension  # a pipe needs no escape in the extension
    assert "src=192.0.2.1 " in extension and "dvchost=node-a " in extension and "cn1=3 " in extension
    assert f"rt={int(T0.timestamp() * 1000)} " in extension
    assert 'msg={"cause":"x\\=1\\\\\\\\2\\\\nINJECTED|line","client":"192.0.2.1"}' in extension


def test_jsonl_holds_every_field_on_one_line() -> None:
    line = jsonl_line(_record(serial_hex="ab", issuer_id=1))
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "id": 7,
        "node": NODE,
        "seq": 3,
        "occurred_at": "2026-03-01T09:30:00.123456Z",
        "actor": "est:a|b",
        "action": "request.refused",
        "issuer_id": 1,
        "serial_hex": "ab",
        "detail": {"cause": "x=1\\2\nINJECTED|line", "client": "192.0.2.1"},
        "prev_hash": "1" * 64,
        "hash": "2" * 64,
    }


@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_syslog_gets_each_committed_record_and_none_that_rolled_back(
    store: Storage, udp_listener: socket.socket
) -> None:
    port = udp_listener.getsockname()[1]
    configure_audit(store.engine, NODE, SyslogSink(f"udp://127.0.0.1:{port}", NODE))
    with pytest.raises(RuntimeError), store.db.write() as conn:
        write_audit(conn, AuditEvent("t", "rolled.back"), T0)
        raise RuntimeError("the act failed")
    store.audit.record_audit(AuditEvent("cli:alice", "admin_token.created", detail={"name": "ops"}), T0)
    datagram = udp_listener.recv(65535).decode()
    assert datagram.startswith(f"<84>1 2026-03-01T09:30:00.123456Z {NODE} gateway-audit {os.getpid()} ")
    assert " admin_token.created - CEF:0|scep-est-gateway|gateway|" in datagram
    assert "suser=cli:alice" in datagram and "cn1=1 " in datagram  # seq 1: the rolled-back one took none
    udp_listener.settimeout(0.2)
    with pytest.raises(TimeoutError):
        udp_listener.recv(65535)


def test_syslog_over_a_unix_socket_and_a_missing_one_never_fails_the_act(
    store: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(5)
        configure_audit(store.engine, NODE, SyslogSink(str(path), NODE))
        store.audit.record_audit(AuditEvent("t", "test.local"), T0)
        assert listener.recv(65535).decode().startswith(f"<86>gateway-audit[{os.getpid()}]: CEF:0|")
    path.unlink()
    store.audit.record_audit(AuditEvent("t", "test.dropped"), T0)  # nobody listens: kept, not sent
    store.audit.record_audit(AuditEvent("t", "test.dropped"), T0)
    assert len(store.audit.audit_events(action="test.dropped")) == 2
    warned = [r.getMessage() for r in caplog.records if "not reaching syslog" in r.getMessage()]
    assert len(warned) == 1 and str(path) in warned[0]  # once, not once a record


# -- the CLI ------------------------------------------------------------------------------------------


def _cli(runner: CliRunner, data_dir: Path, *args: str) -> Any:
    return runner.invoke(main, ["audit", *args, "--data-dir", str(data_dir)])


def test_cli_verify_prints_heads_then_names_a_changed_record(runner: CliRunner, data_dir: Path) -> None:
    done = _cli(runner, data_dir, "verify")
    assert done.exit_code == 0, done.output
    node = audit_node(_config(data_dir))
    [summary, hint] = done.output.splitlines()
    assert summary.startswith(f"node {node}: 3 records, head {node}:3:") and summary.endswith(": intact")
    anchor = summary.split(", head ", 1)[1].rsplit(": ", 1)[0]
    assert "--expect" in hint
    assert _cli(runner, data_dir, "verify", "--expect", anchor).exit_code == 0

    storage = open_store(_config(data_dir))
    try:
        _sql(storage, "UPDATE audit_events SET detail = '{}' WHERE seq = 2")
        record_id = storage.audit.audit_events(limit=3)[1].id
    finally:
        storage.engine.dispose()
    done = _cli(runner, data_dir, "verify")
    assert done.exit_code == 1
    assert f"  node {node} seq 2 (id {record_id}): changed: its fields do not give its hash" in done.output
    assert "audit trail NOT intact: 1 problem(s) in 1 of 1 chain(s)" in done.output
    found = json.loads(_cli(runner, data_dir, "verify", "--json").stdout)
    assert found["intact"] is False
    assert found["chains"][0]["problems"] == [
        {
            "kind": "changed",
            "seq": 2,
            "last_seq": 2,
            "id": record_id,
            "message": "changed: its fields do not give its hash",
        }
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--expect", "gw:1:nothex"], "Error: --expect: 'nothex' is not a hex SHA-256 (64 hex digits)"),
        (["verify", "--node", "bad node"], "Error: --node: 'bad node' is not a node name"),
        (["verify", "--node", "nobody"], "Error: --node: no chain named 'nobody'"),
        (["export", "--since", "yesterday"], "Error: --since: 'yesterday' is neither an ISO 8601 date or time"),
        (["export", "--until", "3x"], "Error: --until: '3x' is neither"),
        (["export", "--since", "1d", "--until", "2d"], "Error: --until: "),
    ],
    ids=["bad-anchor", "bad-node", "unknown-node", "bad-since", "bad-until", "until-before-since"],
)
def test_cli_bad_options_are_one_line_naming_the_option(
    runner: CliRunner, data_dir: Path, args: list[str], message: str
) -> None:
    done = _cli(runner, data_dir, *args)
    assert done.exit_code == 1
    assert done.output.startswith(message) and done.output.count("\n") == 1, done.output


def test_cli_database_errors_are_one_line(runner: CliRunner, tmp_path: Path, data_dir: Path) -> None:
    empty = {"GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path}/empty.db"}
    for args in (["verify"], ["export"]):
        done = runner.invoke(main, ["audit", *args, "--data-dir", str(data_dir)], env=empty)
        assert done.exit_code == 1
        assert done.output.count("\n") == 1 and "database schema is not current" in done.output, done.output


def test_cli_export_jsonl_and_cef_by_time(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    done = _cli(runner, data_dir, "export")
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in done.output.splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3] and lines[0]["action"] == "issuer.added"
    assert set(lines[0]) == {
        "id", "node", "seq", "occurred_at", "actor", "action", "issuer_id", "serial_hex", "detail", "prev_hash", "hash",
    }  # fmt: skip
    assert _cli(runner, data_dir, "export", "--since", "1h").output == done.output
    assert _cli(runner, data_dir, "export", "--until", "1h").output == ""
    assert _cli(runner, data_dir, "export", "--since", "2999-01-01").output == ""
    out = tmp_path / "audit.cef"
    done = _cli(runner, data_dir, "export", "--format", "cef", "--out", str(out))
    assert done.exit_code == 0 and f"exported 3 audit records to {out}" in done.output
    cef = out.read_text().splitlines()
    assert len(cef) == 3 and all(line.startswith("CEF:0|scep-est-gateway|gateway|") for line in cef)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_durations_and_dates_for_since() -> None:
    now = T0
    assert parse_since("90m", "--since", now) == now - dt.timedelta(minutes=90)
    assert parse_since("2w", "--since", now) == now - dt.timedelta(weeks=2)
    assert parse_since("2026-01-31", "--since", now) == dt.datetime(2026, 1, 31, tzinfo=dt.UTC)
    assert parse_since("2026-01-31T10:00+02:00", "--since", now) == dt.datetime(2026, 1, 31, 8, tzinfo=dt.UTC)


def test_store_engine_writes_into_the_configured_node(data_dir: Path) -> None:
    storage = open_store(_config(data_dir, GATEWAY_AUDIT_NODE="gw-cli"))
    try:
        storage.audit.record_audit(AuditEvent("t", "test.node"), T0)
        assert storage.audit.audit_events(limit=1)[0].node == "gw-cli"
    finally:
        storage.engine.dispose()


def test_an_empty_trail_verifies_and_says_so(runner: CliRunner, tmp_path: Path, database_url: str) -> None:
    engine = create_store_engine(database_url)
    try:
        migrate_to_head(engine)
        assert Storage.open(engine).audit.verify() == []
    finally:
        engine.dispose()
    (tmp_path / "config.toml").write_text("")
    done = runner.invoke(
        main, ["audit", "verify", "--data-dir", str(tmp_path)], env={"GATEWAY_DATABASE_URL": database_url}
    )
    assert (done.exit_code, done.output) == (0, "no audit records yet\n")
