"""SCEP challenge validators: static, one-time, webhook (against a real local HTTP server), AnyOf, Lockout."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from scep.challenges import (
    LOCKED,
    REFUSED,
    AnyOf,
    ChallengeAccepted,
    ChallengeKind,
    ChallengeNotVerifiable,
    ChallengeRequest,
    OneTimeChallenge,
    StaticChallenge,
    WebhookChallenge,
    challenge_sha256,
    new_one_time_challenge,
)
from scep.lockout import Lockout
from shared_ca.errors import ErrorKind, Unauthorized
from shared_ca.storage.audit import AuditLog
from shared_ca.storage.enrollment import Enrollments
from shared_ca.storage.enrollment_records import ChallengeSpent, spend_challenge_use
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import scep_challenges
from tests.support import SettableClock, run_together

REQUEST = ChallengeRequest(
    profile="default",
    challenge_password="s3cret",
    subject="CN=device1,O=Test",
    device_id="device1",
    transaction_id="111898541792906021837665",
    client_address="192.0.2.7",
    csr_der=b"\x30\x82csr-bytes",
)
HOUR = dt.timedelta(hours=1)
HMAC_KEY = b"webhook-key"


@pytest.fixture
def enrollments(store: Storage) -> Enrollments:
    return store.enrollments


def one_time(enrollments: Enrollments, clock: SettableClock, **kw: Any) -> str:
    fields: dict[str, Any] = {"device_id": "device1", "profile": "default", "ttl": HOUR}
    fields.update(kw)
    return new_one_time_challenge(enrollments, created_by="mdm", now=clock(), **fields)


def refused(validator: Any, request: ChallengeRequest) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        validator.validate(request)
    assert caught.value.kind is ErrorKind.UNAUTHORIZED
    return caught.value


# -- static --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password", [None, "", "s3cre", "s3cret ", "S3CRET", "s3cret\x00"], ids=lambda p: f"fail/{p!r}"
)
def test_static_challenge_refuses_anything_but_the_secret(password: str | None) -> None:
    error = refused(StaticChallenge("s3cret"), replace(REQUEST, challenge_password=password))
    assert error.public_message == REFUSED
    assert not isinstance(error, ChallengeNotVerifiable)


def test_static_challenge_accepts_the_secret_and_hides_it() -> None:
    assert StaticChallenge("s3cret").validate(REQUEST) == ChallengeAccepted(ChallengeKind.STATIC)
    assert "s3cret" not in repr(StaticChallenge("s3cret"))
    with pytest.raises(ValueError, match="non-empty"):
        StaticChallenge("")


# -- one-time ------------------------------------------------------------------------------------


def test_one_time_challenge_is_spent_by_its_device(enrollments: Enrollments, clock: SettableClock) -> None:
    secret = one_time(enrollments, clock, expected_subject=REQUEST.subject)
    assert len(secret) == 48 and int(secret, 16) >= 0  # 192 bits, PrintableString-safe
    validator = OneTimeChallenge(enrollments, clock)
    request = replace(REQUEST, challenge_password=secret)
    accepted = validator.validate(request)
    assert (accepted.kind, accepted.device_id) == (ChallengeKind.ONE_TIME, "device1")
    assert accepted.challenge_id is not None
    # Accepting spends nothing: the request's recorded transaction does (NewScepTransaction.spends_challenge).
    assert validator.validate(request) == accepted
    with enrollments.db.engine.begin() as conn:
        spend_challenge_use(conn, accepted.challenge_id, clock())
    assert (
        refused(validator, request).detail
        == f"one-time challenge refused: challenge {accepted.challenge_id} has no use left"
    )


def test_only_the_hash_of_a_one_time_challenge_is_stored(enrollments: Enrollments, clock: SettableClock) -> None:
    secret = one_time(enrollments, clock)
    with enrollments.db.engine.connect() as conn:
        rows = conn.execute(select(scep_challenges)).mappings().all()
    assert [r["secret_sha256"] for r in rows] == [hashlib.sha256(secret.encode()).hexdigest()]
    assert secret not in repr([dict(r) for r in rows]) + repr(AuditLog(enrollments.db).audit_events())
    assert one_time(enrollments, clock) != secret


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        pytest.param({"profile": "routers"}, "is for profile 'default', not 'routers'", id="fail/other-profile"),
        pytest.param({"device_id": "device2"}, "is for device 'device1', not 'device2'", id="fail/other-device"),
        pytest.param({"subject": "CN=device1"}, "expects subject 'CN=device1,O=Test'", id="fail/other-subject"),
        pytest.param({"challenge_password": "f" * 48}, "unknown challenge", id="fail/unknown"),
        pytest.param({"challenge_password": None}, "no challenge password", id="fail/missing"),
    ],
)
def test_a_one_time_challenge_refused_for_another_request_stays_usable(
    enrollments: Enrollments,
    clock: SettableClock,
    caplog: pytest.LogCaptureFixture,
    change: dict[str, Any],
    cause: str,
) -> None:
    secret = one_time(enrollments, clock, expected_subject=REQUEST.subject)
    validator = OneTimeChallenge(enrollments, clock)
    request = replace(REQUEST, challenge_password=secret)
    with caplog.at_level(logging.INFO, logger="scep.challenges"):
        error = refused(validator, replace(request, **change))
    assert error.public_message == REFUSED  # the client learns nothing of the cause
    assert cause in error.detail and cause in caplog.text
    assert validator.validate(request).kind is ChallengeKind.ONE_TIME


def test_a_one_time_challenge_expires(enrollments: Enrollments, clock: SettableClock) -> None:
    secret = one_time(enrollments, clock, uses=2)
    validator = OneTimeChallenge(enrollments, clock)
    request = replace(REQUEST, challenge_password=secret)
    clock.advance(minutes=59)
    validator.validate(request)
    clock.advance(minutes=1)
    assert "expired at" in refused(validator, request).detail


def test_64_concurrent_requests_spend_a_single_use_challenge_once(
    enrollments: Enrollments, clock: SettableClock
) -> None:
    request = replace(REQUEST, challenge_password=one_time(enrollments, clock))
    validator = OneTimeChallenge(enrollments, clock)

    def accept_and_record(_: int) -> int:
        accepted = validator.validate(request)  # refused once another request's use is recorded
        assert accepted.challenge_id is not None
        with enrollments.db.engine.begin() as conn:  # the spend the request's recorded transaction makes
            spend_challenge_use(conn, accepted.challenge_id, clock())
        return accepted.challenge_id

    results, errors = run_together(64, accept_and_record)
    assert len(results) == 1
    assert len(errors) == 63 and all(type(e) in (Unauthorized, ChallengeSpent) for e in errors)


# -- AnyOf ---------------------------------------------------------------------------------------


@dataclass
class Scripted:
    """A validator that answers what it is told and counts its calls."""

    outcome: ChallengeAccepted | Unauthorized
    calls: list[ChallengeRequest] = field(default_factory=list)

    def validate(self, request: ChallengeRequest) -> ChallengeAccepted:
        self.calls.append(request)
        if isinstance(self.outcome, Unauthorized):
            raise self.outcome
        return self.outcome


def test_any_of_takes_the_first_that_accepts(enrollments: Enrollments, clock: SettableClock) -> None:
    secret = one_time(enrollments, clock)
    either = AnyOf([StaticChallenge("s3cret"), OneTimeChallenge(enrollments, clock)])
    assert either.validate(REQUEST).kind is ChallengeKind.STATIC
    accepted = either.validate(replace(REQUEST, challenge_password=secret))
    assert accepted.kind is ChallengeKind.ONE_TIME and accepted.challenge_id is not None
    with enrollments.db.engine.begin() as conn:
        spend_challenge_use(conn, accepted.challenge_id, clock())
    error = refused(either, replace(REQUEST, challenge_password=secret))
    assert type(error) is Unauthorized and "wrong static challenge; one-time challenge refused" in error.detail
    with pytest.raises(ValueError, match="at least one"):
        AnyOf([])


def test_any_of_without_a_verdict_is_not_verifiable() -> None:
    no = Scripted(Unauthorized(REFUSED, detail="no"))
    down = Scripted(ChallengeNotVerifiable(REFUSED, detail="webhook down"))
    later = Scripted(ChallengeAccepted(ChallengeKind.WEBHOOK))
    assert AnyOf([no, down, later]).validate(REQUEST).kind is ChallengeKind.WEBHOOK
    assert isinstance(refused(AnyOf([no, down]), REQUEST), ChallengeNotVerifiable)
    assert (len(no.calls), len(down.calls), len(later.calls)) == (2, 2, 1)


# -- Lockout -------------------------------------------------------------------------------------


def lockout(inner: Any, enrollments: Enrollments, clock: SettableClock, threshold: int = 3) -> Lockout:
    return Lockout(inner, enrollments, threshold=threshold, window=dt.timedelta(minutes=15), lock_for=HOUR, clock=clock)


def test_wrong_attempts_from_one_address_lock_it_out(enrollments: Enrollments, clock: SettableClock) -> None:
    guarded = lockout(StaticChallenge("s3cret"), enrollments, clock)
    for guess in ("a", "b", "c"):  # a new guess for a new device each time: only the address counter reaches 3
        wrong = replace(REQUEST, challenge_password=guess, device_id=f"guess-{guess}")
        assert refused(guarded, wrong).public_message == REFUSED
    assert refused(guarded, REQUEST).public_message == LOCKED  # even the right secret, while locked
    other = replace(REQUEST, client_address="192.0.2.8")
    assert guarded.validate(other).kind is ChallengeKind.STATIC
    clock.advance(hours=1)
    assert guarded.validate(REQUEST).kind is ChallengeKind.STATIC


def test_a_locked_request_never_reaches_the_inner_validator(enrollments: Enrollments, clock: SettableClock) -> None:
    secret = one_time(enrollments, clock, device_id=None)
    guarded = lockout(OneTimeChallenge(enrollments, clock), enrollments, clock, threshold=2)
    for n, address in enumerate(("198.51.100.1", "198.51.100.2")):  # one spent-looking challenge, two addresses
        refused(guarded, replace(REQUEST, challenge_password="f" * 48, client_address=address, device_id=f"d{n}"))
    locked = replace(REQUEST, challenge_password="f" * 48, client_address="198.51.100.3", device_id="d3")
    assert refused(guarded, locked).public_message == LOCKED  # the challenge key is locked everywhere
    good = replace(REQUEST, challenge_password=secret, client_address="198.51.100.1")
    assert guarded.validate(good).kind is ChallengeKind.ONE_TIME  # the addresses and devices are not locked


def test_no_verdict_is_not_counted_as_a_wrong_attempt(enrollments: Enrollments, clock: SettableClock) -> None:
    down = Scripted(ChallengeNotVerifiable(REFUSED, detail="webhook down"))
    guarded = lockout(down, enrollments, clock, threshold=1)
    for _ in range(3):
        assert isinstance(refused(guarded, REQUEST), ChallengeNotVerifiable)
    assert len(down.calls) == 3
    assert enrollments.locked(Lockout.keys(REQUEST).per_request, clock()) is None
    anonymous = Lockout.keys(replace(REQUEST, challenge_password=None, client_address=None, device_id=None))
    assert anonymous.per_request == ("address:default:unknown",)
    with pytest.raises(ValueError, match="at least 1"):
        lockout(down, enrollments, clock, threshold=0)


# -- webhook -------------------------------------------------------------------------------------


@dataclass
class Webhook:
    """A real HTTP server on 127.0.0.1 playing the enrollment webhook."""

    url: str
    behaviour: str = "allow"
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


REPLIES: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "allow": (200, b'{"allow": true}', {}),
    "deny": (200, b'{"allow": false, "reason": "unknown device"}', {}),
    "error-500": (500, b'{"allow": true}', {}),
    "not-json": (200, b"<html>allow</html>", {}),
    "allow-string": (200, b'{"allow": "true"}', {}),
    "json-list": (200, b"[true]", {}),
    "empty-204": (204, b"", {}),
    "redirect": (302, b"", {"Location": "/elsewhere"}),
    "bad-signature": (401, b'{"error": "bad signature"}', {}),
    "huge": (200, b'{"allow": true, "pad": "' + b"x" * 70_000 + b'"}', {}),
}


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    state = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers.items()), body))
            if state.behaviour == "timeout":
                state.release.wait(10)
                return
            expected = "sha256=" + hmac.new(HMAC_KEY, body, hashlib.sha256).hexdigest()
            signed = hmac.compare_digest(self.headers.get("X-Gateway-Signature", ""), expected)
            status, reply, headers = REPLIES[state.behaviour if signed else "bad-signature"]
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/scep-webhook"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_webhook_allows_with_a_signed_request(webhook: Webhook) -> None:
    assert WebhookChallenge(webhook.url, HMAC_KEY).validate(REQUEST).kind is ChallengeKind.WEBHOOK
    [(headers, body)] = webhook.received
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Gateway-Signature"] == "sha256=" + hmac.new(HMAC_KEY, body, hashlib.sha256).hexdigest()
    assert json.loads(body) == {
        "csr": base64.b64encode(REQUEST.csr_der).decode(),
        "challenge": "s3cret",
        "transaction_id": REQUEST.transaction_id,
        "profile": "default",
    }


def test_webhook_denial_is_a_wrong_attempt(webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    webhook.behaviour = "deny"
    with caplog.at_level(logging.INFO, logger="scep.challenges"):
        error = refused(WebhookChallenge(webhook.url, HMAC_KEY), replace(REQUEST, challenge_password=None))
    assert type(error) is Unauthorized and error.public_message == REFUSED
    assert error.detail == "webhook denied: unknown device" and "unknown device" in caplog.text
    assert json.loads(webhook.received[0][1])["challenge"] is None


@pytest.mark.parametrize(
    ("behaviour", "cause"),
    [
        pytest.param("error-500", "HTTP 500", id="fail/500"),
        pytest.param("not-json", "JSONDecodeError", id="fail/not-json"),
        pytest.param("allow-string", 'boolean "allow"', id="fail/allow-not-boolean"),
        pytest.param("json-list", 'boolean "allow"', id="fail/json-list"),
        pytest.param("empty-204", "JSONDecodeError", id="fail/empty-204"),
        pytest.param("redirect", "HTTP 302", id="fail/redirect"),
        pytest.param("huge", "too large", id="fail/huge-reply"),
        pytest.param("timeout", "timed out", id="fail/timeout"),
    ],
)
def test_webhook_without_a_clear_verdict_fails_closed(webhook: Webhook, behaviour: str, cause: str) -> None:
    webhook.behaviour = behaviour
    error = refused(WebhookChallenge(webhook.url, HMAC_KEY, timeout=0.3), REQUEST)
    assert isinstance(error, ChallengeNotVerifiable) and error.public_message == REFUSED
    assert cause in error.detail
    assert len(webhook.received) == 1  # a redirect is not followed


def test_webhook_refuses_our_request_signed_with_another_key(webhook: Webhook) -> None:
    """The test server checks the signature: a wrong key is answered 401, which is no verdict."""
    error = refused(WebhookChallenge(webhook.url, b"not-the-key"), REQUEST)
    assert isinstance(error, ChallengeNotVerifiable) and "HTTP 401" in error.detail


def test_webhook_nobody_listening_fails_closed() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = refused(WebhookChallenge(f"http://127.0.0.1:{port}/", HMAC_KEY, timeout=2), REQUEST)
    assert isinstance(error, ChallengeNotVerifiable) and "refused" in error.detail.lower()


def test_webhook_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookChallenge("file:///etc/passwd", HMAC_KEY)
    with pytest.raises(ValueError, match="HMAC key"):
        WebhookChallenge("https://mdm.example/hook", b"")
    assert "key" not in repr(WebhookChallenge("https://mdm.example/hook", HMAC_KEY)).replace("<key>", "")


def test_webhook_timeouts_do_not_lock_anyone_out(
    webhook: Webhook, enrollments: Enrollments, clock: SettableClock
) -> None:
    webhook.behaviour = "timeout"
    guarded = lockout(WebhookChallenge(webhook.url, HMAC_KEY, timeout=0.2), enrollments, clock, threshold=1)
    assert isinstance(refused(guarded, REQUEST), ChallengeNotVerifiable)
    webhook.behaviour = "deny"
    assert type(refused(guarded, REQUEST)) is Unauthorized
    assert refused(guarded, REQUEST).public_message == LOCKED
    assert Lockout.keys(REQUEST).value == "challenge:" + challenge_sha256("s3cret")
