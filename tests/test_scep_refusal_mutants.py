"""SCEP enrollment, refusal and retrieval paths (scep.service) where mutation testing found the tests
silent (docs/security.md, "Mutation testing"):

- what an issuance records (the renewal link, the requester, the protocol, the audit actor) and logs;
- the failInfoText a client reads for each refusal (retrieval, signer, algorithm) and the cause the
  event keeps, which is never the client's text;
- the one enrollment event each GetCert, GetCRL and CertPoll writes, and the actor of the CRL a
  GetCRL publishes;
- what a request held for approval leaves behind (its queue row, its pending event, the log line
  that gives the operator the request's id) and a retransmission of it;
- a transaction keeps its subject, and a failed retry under its transactionID takes its place;
- the lockout's cause names the client, a webhook outage says the check is unavailable;
- a signingTime exactly at the tolerance is accepted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from flask import Flask
from flask.testing import FlaskClient

from gateway import runtime
from gateway.app import create_app
from gateway.config import GatewayConfig, load_config
from scep.asn1 import Digest, FailInfo, MessageType, PkiStatus
from scep.client_messages import issuer_and_serial_der, parse_cert_rep, self_signed_signer
from scep.enrollment import spki_sha256
from tests.support import SettableClock, ec_key
from tests.test_refusals_webhook import WEBHOOK_SECRET, Webhook
from tests.test_scep_service import (
    CHALLENGE,
    Ra,
    Sent,
    _issue,
    _poll,
    csr_der,
    device_key,
    enroll,
    enrollment,
    failure,
    get_ca,
    name,
    post,
    reply_of,
    request,
    store_of,
)

EXTRA_PROFILES = """
[profiles.manual]
scep_challenge = "s3cret"
approval = "manual"

[profiles.locked]
scep_challenge = "s3cret"
scep_lockout_threshold = 1
"""


@pytest.fixture
def gateway_config(data_dir: Path) -> GatewayConfig:
    """The data directory's configuration with a `manual` profile."""
    with (data_dir / "config.toml").open("a", encoding="utf-8") as config:
        config.write(EXTRA_PROFILES)
    return load_config(data_dir, environ={})


def events(app: Flask, transaction_id: str) -> list[tuple[str, str, str | None]]:
    """(operation, outcome, device) of the events of one transaction, newest first."""
    found = store_of(app).enrollments.enrollment_events(transaction_id=transaction_id)
    return [(e.operation, e.outcome, e.device_identity) for e in found]


def asking(ra: Ra, message_type: MessageType, content: bytes, transaction_id: str) -> Sent:
    """A retrieval request signed by the self-signed certificate of CN=asker."""
    key = device_key(1)
    signer = self_signed_signer(key, name("asker"))
    return request(ra, content, key=key, signer=signer, message_type=message_type, transaction_id=transaction_id)


def test_get_cert_answers_and_records_each_request(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    _key, cert = _issue(client, ra, "lookup-target")
    found = asking(ra, MessageType.GetCert, issuer_and_serial_der(ra.ca.subject, cert.serial_number), "get-cert")
    assert reply_of(post(client, found.der), ra, found).status is PkiStatus.SUCCESS
    assert events(app, "get-cert") == [("GetCert", "delivered", "asker")]

    missing = asking(ra, MessageType.GetCert, issuer_and_serial_der(ra.ca.subject, 0x1234567), "get-missing")
    refused = failure(client, ra, missing)
    assert (refused.fail_info, refused.fail_info_text) == (FailInfo.BAD_CERT_ID, "no such certificate")
    assert events(app, "get-missing") == [("GetCert", "failure:badCertID", "asker")]


def test_get_crl_answers_publishes_as_scep_and_records_each_request(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    _key, cert = _issue(client, ra, "to-revoke")
    gw = app.extensions["gateway"].get()
    gw.authority.revoke(format(cert.serial_number, "x"), x509.ReasonFlags.key_compromise, actor="test")
    ours = asking(ra, MessageType.GetCRL, issuer_and_serial_der(ra.ca.subject, cert.serial_number), "get-crl")
    reply = reply_of(post(client, ours.der), ra, ours)
    assert reply.status is PkiStatus.SUCCESS and reply.crl is not None
    assert events(app, "get-crl") == [("GetCRL", "delivered", "asker")]
    published = gw.storage.audit.audit_events(action="crl.published", limit=1)
    assert [e.actor for e in published] == ["scep"]  # the revocation made it due: this GetCRL published it

    other = asking(ra, MessageType.GetCRL, issuer_and_serial_der(name("Other CA"), 1), "get-crl-other")
    refused = failure(client, ra, other)
    assert (refused.fail_info, refused.fail_info_text) == (FailInfo.BAD_CERT_ID, "no CRL for this issuer")


def test_certpoll_of_an_unknown_transaction_says_so(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    sent = enrollment(ra, "nobody", transaction_id="never-sent")
    refused = failure(client, ra, _poll(ra, sent, "nobody"))
    assert (refused.fail_info, refused.fail_info_text) == (FailInfo.BAD_CERT_ID, "no request with this transactionID")


def test_a_held_request_is_queued_logged_and_polled(
    client: FlaskClient, app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    ra = get_ca(client)
    sent = enrollment(ra, "held-device", transaction_id="held-1")
    with caplog.at_level(logging.INFO, logger="scep.enrollment"):
        assert reply_of(post(client, sent.der, "/scep/manual"), ra, sent).status is PkiStatus.PENDING
    (row,) = app.extensions["gateway"].get().approvals.pending(profile="manual")
    assert (row.protocol, row.device_identity, row.client_address) == ("scep", "held-device", "127.0.0.1")
    assert f"SCEP held-1: awaiting approval (request {row.id})" in caplog.messages
    assert events(app, "held-1") == [("PKCSReq", "pending", "held-device")]

    poll = _poll(ra, sent, "held-device")
    assert reply_of(post(client, poll.der, "/scep/manual"), ra, poll).status is PkiStatus.PENDING
    assert events(app, "held-1")[0] == ("CertPoll", "poll:pending", "held-device")

    with caplog.at_level(logging.INFO, logger="scep.enrollment"):
        again = reply_of(post(client, sent.der, "/scep/manual"), ra, sent)  # the same message: a retransmission
    assert again.status is PkiStatus.PENDING
    assert "SCEP held-1: retransmission, answered as before" in caplog.messages
    key = device_key()
    other = request(
        ra,
        csr_der(key, name("another-device")),
        key=key,
        signer=self_signed_signer(key, name("another-device")),
        transaction_id="held-1",
    )
    refused = failure(client, ra, other, "/scep/manual")
    assert (refused.fail_info, refused.fail_info_text) == (
        FailInfo.BAD_REQUEST,
        "a different request with this transactionID awaits approval",
    )


def test_a_renewal_records_what_it_renews_who_asked_and_is_logged(
    client: FlaskClient, app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    ra = get_ca(client)
    key, cert = _issue(client, ra, "renew-me")
    renewal = request(
        ra,
        csr_der(key, name("renew-me"), challenge=None),
        key=key,
        signer=cert,
        message_type=MessageType.RenewalReq,
        transaction_id="renewal-1",
    )
    with caplog.at_level(logging.INFO, logger="scep.enrollment"):
        renewed = enroll(client, ra, renewal)
    gw = app.extensions["gateway"].get()
    old = gw.storage.certificates.certificate(gw.authority.issuer.id, format(cert.serial_number, "x"))
    new = gw.storage.certificates.certificate(gw.authority.issuer.id, format(renewed.serial_number, "x"))
    assert old is not None and new is not None
    assert (new.renewed_from_id, new.requester, new.protocol) == (old.id, "127.0.0.1", "scep")
    (audit,) = gw.storage.audit.audit_events(action="certificate.renewed", limit=1)
    assert (audit.actor, audit.serial_hex) == ("scep:127.0.0.1", new.serial_hex)
    assert f"SCEP renewal-1: issued {new.serial_hex} to CN=renew-me" in caplog.messages


# -- who is asking: each refusal's words, and its cause --------------------------------------------------


def test_each_refusal_of_the_signer_says_why(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    self_signed = enrollment(ra, "not-ours", challenge=None, message_type=MessageType.RenewalReq)
    refused = failure(client, ra, self_signed)
    assert (refused.fail_info, refused.fail_info_text) == (
        FailInfo.BAD_REQUEST,
        "renewal must be signed by a certificate issued by this CA",
    )

    other_key = device_key(1)
    borrowed = request(
        ra, csr_der(device_key(), name("borrowed")), key=other_key, signer=self_signed_signer(other_key, name("x"))
    )
    refused = failure(client, ra, borrowed)
    assert (refused.fail_info, refused.fail_info_text) == (
        FailInfo.BAD_MESSAGE_CHECK,
        "the request must be signed with the key it certifies",
    )

    key, cert = _issue(client, ra, "revoked-device")
    gw = app.extensions["gateway"].get()
    gw.authority.revoke(format(cert.serial_number, "x"), x509.ReasonFlags.key_compromise, actor="test")
    renewal = request(
        ra,
        csr_der(key, name("revoked-device"), challenge=None),
        key=key,
        signer=cert,
        message_type=MessageType.RenewalReq,
        transaction_id="renew-revoked",
    )
    refused = failure(client, ra, renewal)
    assert refused.fail_info_text == "the signing certificate cannot renew: the certificate is revoked"
    (event,) = store_of(app).enrollments.enrollment_events(transaction_id="renew-revoked")
    assert event.detail["cause"] == "the certificate is revoked"


def test_a_lockout_refusal_logs_the_client_it_counted(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    wrong = enrollment(ra, "guesser", challenge="wrong", transaction_id="guess-1")
    assert failure(client, ra, wrong, "/scep/locked").fail_info is FailInfo.BAD_REQUEST  # the threshold: locked now
    right = enrollment(ra, "guesser", challenge=CHALLENGE, key=device_key(1), transaction_id="guess-2")
    assert failure(client, ra, right, "/scep/locked").fail_info is FailInfo.BAD_REQUEST
    (event,) = store_of(app).enrollments.enrollment_events(transaction_id="guess-2")
    assert event.detail["cause"].endswith("; client 127.0.0.1)")


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    service = Webhook()
    service.start()
    try:
        yield service
    finally:
        service.stop()


def test_a_webhook_outage_says_the_check_is_unavailable_and_logs_why(
    data_dir: Path, webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    with (data_dir / "config.toml").open("a", encoding="utf-8") as config:
        config.write(
            f'\n[profiles.hooked]\nscep_webhook_url = "{webhook.url}"\nscep_webhook_secret = "{WEBHOOK_SECRET}"\n'
        )
    application = create_app(load_config(data_dir, environ={}))
    try:
        client = application.test_client()
        sent = enrollment(get_ca(client), "hooked", challenge="whatever")
        webhook.mode = "fail"
        with caplog.at_level(logging.WARNING, logger="gateway.app"):
            down = post(client, sent.der, "/scep/hooked")
        assert (down.status_code, down.get_data(as_text=True)) == (503, "the enrollment check is unavailable\n")
        cause = "one-time challenge refused: unknown challenge; webhook answered HTTP 500"  # every check's verdict
        assert f"POST /scep/hooked refused (503): {cause}" in caplog.messages
    finally:
        application.extensions["gateway"].get().storage.engine.dispose()


def test_a_transaction_keeps_its_subject_and_a_failed_retry_takes_its_place(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    key = device_key()
    first = enrollment(ra, "txn-device", key=key, transaction_id="txn-1")
    enroll(client, ra, first)
    store = store_of(app)
    issued = store.enrollments.scep_transaction(spki_sha256(first.signer), "txn-1")
    assert issued is not None and (issued.status, issued.subject) == ("issued", "CN=txn-device")
    wrong = enrollment(ra, "txn-device", key=key, challenge="wrong", transaction_id="txn-1")
    assert failure(client, ra, wrong).fail_info is FailInfo.BAD_REQUEST
    failed = store.enrollments.scep_transaction(spki_sha256(first.signer), "txn-1")
    assert failed is not None and (failed.status, failed.fail_info) == ("failed", "badRequest")
    assert failure(client, ra, wrong).fail_info is FailInfo.BAD_REQUEST  # answered from the stored failure
    assert [outcome for _op, outcome, _device in events(app, "txn-1")][:2] == [
        "retransmission:failed",
        "failure:badRequest",
    ]


# -- algorithms and signingTime: each refusal's words, and the tolerance's exact edge ------------------


def test_each_algorithm_refusal_names_what_is_refused(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    md5 = enrollment(ra, "old-digest", digest=Digest.MD5, transaction_id="md5")
    refused = failure(client, ra, md5)
    assert (refused.fail_info, refused.fail_info_text) == (FailInfo.BAD_ALG, "digest MD5 is not allowed")

    key = ec_key()
    ec_signed = request(ra, csr_der(key, name("ec-device")), key=key, signer=self_signed_signer(key, name("ec-device")))
    response = post(client, ec_signed.der)
    assert response.status_code == 200, response.data
    reply = parse_cert_rep(response.data, ra_cert=ra.ra, signer_key=device_key(), signer_cert=ec_signed.signer)
    assert (reply.status, reply.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_ALG)
    assert reply.fail_info_text == "sign SCEP requests with an RSA key"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SettableClock:
    """The clock every service of the app reads: real time to the second, until a test moves it."""
    settable = SettableClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    monkeypatch.setattr(runtime, "utcnow", settable)
    return settable


def test_a_signing_time_exactly_at_the_tolerance_is_accepted(
    gateway_config: GatewayConfig, clock: SettableClock
) -> None:
    app = create_app(gateway_config)
    try:
        client = app.test_client()
        ra = get_ca(client)
        tolerance = dt.timedelta(minutes=1440)  # the default
        at_the_edge = enrollment(ra, "edge", signing_time=clock() - tolerance, transaction_id="edge")
        enroll(client, ra, at_the_edge)
        beyond = enrollment(
            ra, "beyond", signing_time=clock() - tolerance - dt.timedelta(seconds=1), transaction_id="beyond"
        )
        assert failure(client, ra, beyond).fail_info is FailInfo.BAD_TIME
        (event,) = store_of(app).enrollments.enrollment_events(transaction_id="beyond")
        signed_at = (clock() - tolerance - dt.timedelta(seconds=1)).isoformat()
        assert event.detail["cause"] == (
            f"signingTime {signed_at} is 1 day, 0:00:01 from the server's clock (tolerance 1440 min)"
        )
    finally:
        app.extensions["gateway"].get().storage.engine.dispose()
