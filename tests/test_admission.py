"""Admission control (shared_ca.admission): the in-flight cap, what a request at capacity is answered,
the deferred SCEP enrollments issued in the background, and the rate limits, through the real app.

A slot is held by the test itself (`with admission.enter(...)`) and the queue wait is 0, so a request
meanwhile finds the worker at capacity at once: no timing involved.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.config import load_config
from gateway.runtime import Gateway
from scep.asn1 import FailInfo, MessageType, PkiStatus
from scep.client_messages import issuer_and_serial_der
from shared_ca.admission import Admission, AdmissionSettings, TokenBuckets
from shared_ca.approval import drain_deferred
from shared_ca.storage.est_users import hash_password
from shared_ca.storage.schema import enrollment_events
from tests.support import SettableClock, ec_key, issued_count, make_csr, subject
from tests.test_scep_service import (
    _poll,
    device_key,
    enrollment,
    get_ca,
    issued_cert,
    post,
    reply_of,
    request,
)

PASSWORD = "correct horse battery"


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the parts -------------------------------------------------------------------------------------


def test_a_token_bucket_allows_a_burst_then_its_rate() -> None:
    ticks = Ticks()
    buckets = TokenBuckets(rate_per_minute=60, burst=3, clock=ticks)
    assert [buckets.allow("a") for _ in range(4)] == [True, True, True, False]
    assert buckets.allow("b")  # another key has its own bucket
    ticks.now += 1.0  # 60 a minute: one more token a second
    assert buckets.allow("a") and not buckets.allow("a")
    ticks.now += 3600
    assert [buckets.allow("a") for _ in range(4)] == [True, True, True, False]  # never more than the burst
    assert TokenBuckets(rate_per_minute=0, burst=1).allow("x")  # 0: no limit


def test_the_buckets_are_bounded() -> None:
    buckets = TokenBuckets(rate_per_minute=1, burst=1, max_keys=2, clock=Ticks())
    assert buckets.allow("a") and buckets.allow("b") and buckets.allow("c")
    assert buckets.allow("a")  # "a" was forgotten (least recently seen) and starts afresh
    assert not buckets.allow("c")


def test_slots_wait_then_say_no_and_spare_slots_never_wait() -> None:
    admission = Admission(AdmissionSettings(max_in_flight=2, queue_wait_seconds=0.0))
    with admission.enter("scep") as first, admission.enter("scep") as second, admission.enter("scep") as third:
        assert (first, second, third) == (True, True, False)
        with admission.spare_slot() as spare:
            assert not spare
    with admission.spare_slot() as spare:
        assert spare
    assert admission.snapshot() == {"scep:admitted": 2}


def test_a_slot_freed_within_the_queue_wait_is_taken() -> None:
    admission = Admission(AdmissionSettings(max_in_flight=1, queue_wait_seconds=30.0))
    taken = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with admission.enter("est"):
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(30)
    release.set()  # frees the slot while the request below waits for it
    with admission.enter("est") as admitted:
        assert admitted
    holder.join()


# -- through the app ---------------------------------------------------------------------------------


@pytest.fixture
def busy_app(data_dir: Path) -> Iterator[Flask]:
    """One slot, no queue wait, a small rate limit: the test holds the slot to make the worker busy."""
    environ = {
        "GATEWAY_ADMISSION_MAX_IN_FLIGHT": "1",
        "GATEWAY_ADMISSION_QUEUE_WAIT_MS": "0",
        "GATEWAY_ADMISSION_RETRY_AFTER_SECONDS": "7",
        "GATEWAY_ADMISSION_DEVICE_RATE_PER_MINUTE": "60",
        "GATEWAY_ADMISSION_BURST": "1000",
    }
    app = create_app(load_config(data_dir, environ=environ))
    gw = gateway(app)
    gw.storage.est_users.add_est_user(
        "alice", hash_password(PASSWORD), kind="password", created_by="test", now=gw.authority.clock()
    )
    yield app
    gw.storage.engine.dispose()


def gateway(app: Flask) -> Gateway:
    found: Gateway = app.extensions["gateway"].get()
    return found


def est(client: FlaskClient, operation: str, cn: str, key: Any = None, **environ: Any) -> Any:
    body = base64.b64encode(make_csr(key or ec_key(), subject(cn)).public_bytes(Encoding.DER))
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    return client.post(
        f"/.well-known/est/{operation}",
        data=body,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/pkcs10"},
        base_url="https://localhost",
        environ_base=environ,
    )


def _get_cert(ra: Any, sent: Any) -> Any:
    return request(
        ra,
        issuer_and_serial_der(ra.ca.subject, 1),
        key=sent.key,
        signer=sent.signer,
        message_type=MessageType.GetCert,
        transaction_id=sent.transaction_id + "-get",
    )


def test_at_capacity_a_scep_enrollment_is_pending_then_issued_in_the_background(busy_app: Flask) -> None:
    client, gw = busy_app.test_client(), gateway(busy_app)
    before = issued_count(gw.storage.engine)  # the RA and TLS certificates of `gateway init`
    ra = get_ca(client)
    key = device_key(3)
    sent = enrollment(ra, "deferred-1", key=key)
    with gw.admission.enter("test"):  # the one slot is taken
        pending = reply_of(post(client, sent.der), ra, sent)
        assert pending.status is PkiStatus.PENDING
        again = reply_of(post(client, sent.der), ra, sent)  # its retransmission: the same answer, one row
        assert again.status is PkiStatus.PENDING
        poll = _poll(ra, sent, "deferred-1")
        still = reply_of(post(client, poll.der), ra, poll)  # a poll is answered even at capacity
        assert still.status is PkiStatus.PENDING
        get_cert = post(client, _get_cert(ra, sent).der)  # anything else is 503 with Retry-After
        assert get_cert.status_code == 503 and get_cert.headers["Retry-After"] == "7"
        assert drain_deferred(gw.approvals, gw.admission, actor="test") == 0  # no spare slot: nothing issued
    assert issued_count(gw.storage.engine) == before
    (queued,) = gw.approvals.approvals.list_approvals(deferred=True)
    assert (queued.protocol, queued.subject, queued.deferred) == ("scep", "CN=deferred-1", True)
    assert gw.approvals.pending() == []  # not an administrator's to decide
    assert drain_deferred(gw.approvals, gw.admission, actor="test") == 1
    poll = _poll(ra, sent, "deferred-1")
    issued = reply_of(post(client, poll.der), ra, poll)
    cert = issued_cert(issued, key)
    assert cert.subject == subject("deferred-1")
    assert issued_count(gw.storage.engine) == before + 1
    assert gw.admission.snapshot()["scep:deferred"] == 1 and gw.admission.snapshot()["scep:shed"] == 1
    assert drain_deferred(gw.approvals, gw.admission, actor="test") == 0  # issued once
    # Its issuance event says it was deferred (no administrator approved it) and how the device
    # authenticated, as a SCEP event does: its static challenge.
    e = enrollment_events.c
    with gw.storage.engine.connect() as conn:
        kinds = conn.execute(
            select(e.operation, e.challenge_kind).where(e.device_identity == "deferred-1", e.outcome == "issued")
        ).all()
    assert [tuple(row) for row in kinds] == [("deferred", "static")]  # issued in the background, not approved


def test_the_background_issuer_stops_when_clients_are_waiting(busy_app: Flask) -> None:
    client, gw = busy_app.test_client(), gateway(busy_app)
    before = issued_count(gw.storage.engine)
    ra = get_ca(client)
    with gw.admission.enter("test"):
        for n in range(3):
            sent = enrollment(ra, f"deferred-busy-{n}", key=device_key(n))
            assert reply_of(post(client, sent.der), ra, sent).status is PkiStatus.PENDING
    waiting = iter([True, False, False])  # clients waited after the first issuance; nobody after that
    assert drain_deferred(gw.approvals, gw.admission, actor="test", busy=lambda: next(waiting)) == 1
    assert issued_count(gw.storage.engine) == before + 1
    assert drain_deferred(gw.approvals, gw.admission, actor="test", busy=lambda: next(waiting)) == 2
    assert issued_count(gw.storage.engine) == before + 3
    assert gw.approvals.approvals.list_approvals(deferred=True) == []


def test_a_deferred_request_no_longer_allowed_is_rejected_not_issued(busy_app: Flask) -> None:
    client, gw = busy_app.test_client(), gateway(busy_app)
    before = issued_count(gw.storage.engine)
    ra = get_ca(client)
    key = device_key(4)
    sent = enrollment(ra, "deferred-2", key=key)
    with gw.admission.enter("test"):
        assert reply_of(post(client, sent.der), ra, sent).status is PkiStatus.PENDING
    # Before it is issued, the profile stops serving SCEP: issuance asks the Authorizer again.
    (queued,) = gw.approvals.approvals.list_approvals(deferred=True)
    closed = dict(gw.approvals.profiles)
    closed["default"] = dataclasses.replace(closed["default"], protocols=("est",))
    gw.approvals.profiles = closed  # as a configuration reloaded without SCEP would have it
    assert drain_deferred(gw.approvals, gw.admission, actor="test") == 1
    poll = _poll(ra, sent, "deferred-2")
    refused = reply_of(post(client, poll.der), ra, poll)
    assert (refused.status, refused.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)
    assert refused.fail_info_text == "profile 'default' is not served over SCEP"
    assert issued_count(gw.storage.engine) == before
    assert queued.id not in [q.id for q in gw.approvals.approvals.list_approvals(deferred=True)]


def test_at_capacity_an_est_enrollment_is_202_and_its_retry_gets_the_certificate(busy_app: Flask) -> None:
    client, gw = busy_app.test_client(), gateway(busy_app)
    before = issued_count(gw.storage.engine)
    key = ec_key()
    with gw.admission.enter("test"):
        deferred = est(client, "simpleenroll", "est-deferred", key)
        assert deferred.status_code == 202 and deferred.headers["Retry-After"] == "7"
        shed = est(client, "serverkeygen", "est-keygen")  # a generated key is never stored: 503
        assert shed.status_code == 503 and shed.headers["Retry-After"] == "7"
    assert issued_count(gw.storage.engine) == before  # nothing stored, nothing issued
    assert gw.approvals.approvals.list_approvals(deferred=None, status=None) == []
    retried = est(client, "simpleenroll", "est-deferred", key)
    assert retried.status_code == 200
    assert issued_count(gw.storage.engine) == before + 1
    assert gw.admission.snapshot()["est:deferred"] == 1 and gw.admission.snapshot()["est:shed"] == 1


def test_a_hammering_address_gets_429_on_est_and_a_failure_on_scep(data_dir: Path) -> None:
    environ = {"GATEWAY_ADMISSION_ADDRESS_RATE_PER_MINUTE": "1", "GATEWAY_ADMISSION_BURST": "2"}
    app = create_app(load_config(data_dir, environ=environ))
    gw = gateway(app)
    clock = SettableClock()
    try:
        gw.storage.est_users.add_est_user(
            "alice", hash_password(PASSWORD), kind="password", created_by="test", now=clock()
        )
        client = app.test_client()
        addresses = {"REMOTE_ADDR": "192.0.2.10"}
        assert est(client, "simpleenroll", "h-1", **addresses).status_code == 200
        assert est(client, "simpleenroll", "h-2", **addresses).status_code == 200
        over = est(client, "simpleenroll", "h-3", **addresses)
        assert over.status_code == 429 and over.headers["Retry-After"] == "10"
        assert over.get_data(as_text=True) == "too many requests; try again later\n"
        assert est(client, "simpleenroll", "h-4", REMOTE_ADDR="192.0.2.11").status_code == 200  # another address
        ra = get_ca(client)
        sent = enrollment(ra, "h-scep", key=device_key(5))
        scep = client.post("/scep", query_string={"operation": "PKIOperation"}, data=sent.der, environ_base=addresses)
        refused = reply_of(scep, ra, sent)
        assert (refused.status, refused.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)
        assert refused.fail_info_text == "too many requests; try again later"
        # Not stored as the transaction's answer: the same request from another address is judged afresh.
        again = client.post(
            "/scep",
            query_string={"operation": "PKIOperation"},
            data=sent.der,
            environ_base={"REMOTE_ADDR": "192.0.2.12"},
        )
        assert reply_of(again, ra, sent).status is PkiStatus.SUCCESS
        assert gw.admission.snapshot()["est:rate-limited"] == 1 and gw.admission.snapshot()["scep:rate-limited"] == 1
    finally:
        gw.storage.engine.dispose()


def test_a_hammered_device_is_limited_whatever_the_address(data_dir: Path) -> None:
    environ = {"GATEWAY_ADMISSION_DEVICE_RATE_PER_MINUTE": "1", "GATEWAY_ADMISSION_BURST": "1"}
    app = create_app(load_config(data_dir, environ=environ))
    gw = gateway(app)
    try:
        gw.storage.est_users.add_est_user(
            "alice", hash_password(PASSWORD), kind="password", created_by="test", now=gw.authority.clock()
        )
        client = app.test_client()
        before = issued_count(gw.storage.engine)
        assert est(client, "simpleenroll", "same-device", REMOTE_ADDR="192.0.2.20").status_code == 200
        limited = est(client, "simpleenroll", "same-device", REMOTE_ADDR="192.0.2.21")
        assert limited.status_code == 429
        assert issued_count(gw.storage.engine) == before + 1
    finally:
        gw.storage.engine.dispose()


def test_a_hammered_device_is_limited_over_scep_too(data_dir: Path) -> None:
    environ = {"GATEWAY_ADMISSION_DEVICE_RATE_PER_MINUTE": "1", "GATEWAY_ADMISSION_BURST": "1"}
    app = create_app(load_config(data_dir, environ=environ))
    gw = gateway(app)
    try:
        client = app.test_client()
        before = issued_count(gw.storage.engine)
        ra = get_ca(client)
        first = enrollment(ra, "scep-same", key=device_key(6))
        answered = client.post(
            "/scep", query_string={"operation": "PKIOperation"}, data=first.der,
            environ_base={"REMOTE_ADDR": "192.0.2.30"},
        )  # fmt: skip
        assert reply_of(answered, ra, first).status is PkiStatus.SUCCESS
        second = enrollment(ra, "scep-same", key=device_key(7))  # the same device, another address
        limited = client.post(
            "/scep", query_string={"operation": "PKIOperation"}, data=second.der,
            environ_base={"REMOTE_ADDR": "192.0.2.31"},
        )  # fmt: skip
        refused = reply_of(limited, ra, second)
        assert (refused.status, refused.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)
        assert refused.fail_info_text == "too many requests; try again later"
        assert gw.admission.snapshot()["scep:rate-limited"] == 1
        assert issued_count(gw.storage.engine) == before + 1
    finally:
        gw.storage.engine.dispose()
