"""EST refusal and approval paths (est.service) where mutation testing found the tests silent
(docs/security.md, "Mutation testing"): the words a client reads for each refusal and the cause its
event keeps (never the other way round), the events of fullcmc, renewal and the approval queue, the
queue row of a held request, the requester an issued certificate records, the log lines that give an
operator the serial or the request id, and a used-up credential refused by its own rule.

The app is the one `gateway serve` composes, through the Flask test client; TLS facts are environ
overrides (tests/test_est_views.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import core
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from flask import Flask
from flask.testing import FlaskClient

from est import cmc
from gateway.app import create_app
from gateway.config import load_config
from gateway.runtime import Gateway
from shared_ca.storage.enrollment_records import EnrollmentRecord
from shared_ca.storage.est_users import hash_password
from tests import test_est_cmc as cmc_tests
from tests.support import csr_der, ec_key, make_csr, subject
from tests.test_est_serverkeygen import SYM, attribute, csr_with, octets
from tests.test_est_views import PASSWORD, b64_csr, basic, certs_of, cmc_enrollment, cmc_revocation, post, tls
from tests.test_refusals_est import import_legacy, legacy_certificate

MANUAL = """
[profiles.manual]
approval = "manual"
est_retry_after_seconds = 7
"""
CLIENT = "127.0.0.1"  # the test client's REMOTE_ADDR


@pytest.fixture
def est_app(data_dir: Path) -> Iterator[Flask]:
    """The app with a `manual` label, the EST user `alice` (both labels) and `once` (one use)."""
    with (data_dir / "config.toml").open("a", encoding="utf-8") as config:
        config.write(MANUAL)
    application = create_app(load_config(data_dir, environ={}))
    gw: Gateway = application.extensions["gateway"].get()
    users, now, labels = gw.storage.est_users, dt.datetime.now(dt.UTC), ("default", "manual")
    users.add_est_user("alice", hash_password(PASSWORD), kind="password", created_by="t", now=now, labels=labels)
    users.add_est_user("once", hash_password(PASSWORD), kind="password", created_by="t", now=now, uses_left=1)
    yield application
    gw.storage.engine.dispose()


@pytest.fixture
def est(est_app: Flask) -> FlaskClient:
    return est_app.test_client()


def gateway_of(app: Flask) -> Gateway:
    gw: Gateway = app.extensions["gateway"].get()
    return gw


def newest_event(app: Flask, device: str | None = None) -> EnrollmentRecord:
    return gateway_of(app).storage.enrollments.enrollment_events(device_identity=device, limit=1)[0]


def refused(response: Any, status: int, text: str) -> None:
    assert (response.status_code, response.get_data(as_text=True)) == (status, text + "\n")


# -- fullcmc ----------------------------------------------------------------------------------------------


def cmc_status(response: Any) -> cmc.CmcStatusInfo:
    assert response.status_code == 200, response.get_data(as_text=True)
    (status,) = cmc.parse_pki_response(base64.b64decode(response.get_data())).statuses
    return status


def test_a_cmc_failure_sends_its_text_and_logs_its_cause(est: FlaskClient, est_app: Flask) -> None:
    key = ec_key()
    content = cmc_tests.pki_data(cmc_tests.standard_controls(), [cmc_tests.tcr(1, csr_der(make_csr(key)))])
    disagreeing = {"algorithm": "sha384_ecdsa"}  # while the digestAlgorithm says SHA-256
    der = cmc_tests.sign(content, key, cmc_tests.sid_ski(cmc_tests._ski(key)), signature_algorithm=disagreeing)
    status = cmc_status(post(est, "fullcmc", base64.b64encode(der), headers=basic()))
    assert (status.fail_info, status.text) == (cmc.CmcFailInfo.BAD_ALG, "the signature and digest algorithms disagree")
    event = newest_event(est_app)
    assert (event.outcome, event.detail["cause"]) == ("failed:bad_alg", "sha384/sha256")


def test_cmc_requests_this_gateway_does_not_serve_are_named(est: FlaskClient) -> None:
    unknown = cmc_tests.control(20, cmc_tests.IDENTIFICATION_OID, core.UTF8String("x"))
    also_unknown = cmc_tests.control(21, "1.3.6.1.5.5.7.7.99", core.UTF8String("y"))
    body = cmc_enrollment(ec_key(), "cmc-2", extra_controls=[unknown, also_unknown])
    assert (
        cmc_status(post(est, "fullcmc", body, headers=basic())).text
        == f"unsupported: {cmc_tests.IDENTIFICATION_OID}, 1.3.6.1.5.5.7.7.99"
    )
    key = ec_key()
    two = cmc_tests.pki_data(
        cmc_tests.standard_controls(),
        [
            cmc_tests.tcr(1, csr_der(make_csr(key, subject("a")))),
            cmc_tests.tcr(2, csr_der(make_csr(key, subject("b")))),
        ],
    )
    body = base64.b64encode(cmc_tests.sign(two, key, cmc_tests.sid_ski(cmc_tests._ski(key))))
    assert cmc_status(post(est, "fullcmc", body, headers=basic())).text == (
        "a Full PKI Request here carries exactly one PKCS#10 request or one revokeRequest"
    )


def test_fullcmc_events_name_the_device_and_what_was_revoked(est: FlaskClient, est_app: Flask) -> None:
    key = ec_key()
    enrolled = cmc.parse_pki_response(
        base64.b64decode(post(est, "fullcmc", cmc_enrollment(key, "cmc-device"), headers=basic()).get_data())
    )
    assert (newest_event(est_app, "cmc-device").operation, newest_event(est_app, "cmc-device").outcome) == (
        "fullcmc", "issued",
    )  # fmt: skip
    cert = enrolled.certificates[0]
    body = cmc_revocation(cert, key, gateway_of(est_app).authority.certificate)
    assert cmc_status(post(est, "fullcmc", body, environ=tls(cert))).status is cmc.CmcStatus.SUCCESS
    revoked = newest_event(est_app, "cmc-device")
    assert (revoked.operation, revoked.outcome) == ("fullcmc-revoke", "revoked")
    assert (revoked.detail["serial"], revoked.detail["reason"]) == (format(cert.serial_number, "x"), "keyCompromise")


# -- serverkeygen -------------------------------------------------------------------------------------------


def test_serverkeygen_refusals_and_its_multipart_reply(est: FlaskClient) -> None:
    body = b64_csr(make_csr(ec_key(), subject("keyless")))
    refused(
        post(est, "serverkeygen", body, label="manual", headers=basic()),
        403,
        "server-side key generation is not offered where requests await approval",
    )
    unknown_kek = base64.b64encode(csr_with([attribute(SYM, octets(b"no-such-kek"))]))
    refused(
        post(est, "serverkeygen", unknown_kek, headers=basic()),
        400,
        "DecryptKeyIdentifier names no key-encryption key this server holds",
    )
    served = post(est, "serverkeygen", body, headers=basic())
    assert served.status_code == 200, served.get_data(as_text=True)
    assert "Content-Transfer-Encoding" not in served.headers  # multipart parts are binary, not base64


# -- renewal ------------------------------------------------------------------------------------------------


def test_a_renewal_event_names_the_certificate_renewed_and_a_legacy_issuer(
    est: FlaskClient, est_app: Flask, runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    response = post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("renewer"))), headers=basic())
    (cert,) = certs_of(response.get_data())
    renewed = post(est, "simplereenroll", b64_csr(make_csr(ec_key(), subject("renewer"))), environ=tls(cert))
    assert renewed.status_code == 200, renewed.get_data(as_text=True)
    event = newest_event(est_app, "renewer")
    assert event.detail["renews"] == format(cert.serial_number, "x") and "legacy_issuer" not in event.detail

    legacy, _key, legacy_ca = legacy_certificate(0x5EED, "old-device")
    import_legacy(runner, data_dir, tmp_path, legacy_ca, legacy)
    store = gateway_of(est_app).storage
    record = store.certificates.certificate_by_fingerprint(legacy.fingerprint(hashes.SHA256()).hex())
    issuer = store.issuers.issuer_by_id(record.issuer_id) if record is not None else None
    assert issuer is not None
    body = b64_csr(make_csr(ec_key(), subject("old-device")))
    assert post(est, "simplereenroll", body, environ=tls(legacy)).status_code == 200
    event = newest_event(est_app, "old-device")
    assert (event.detail["renews"], event.detail["legacy_issuer"]) == ("5eed", issuer.name)


# -- issuance and the approval queue ------------------------------------------------------------------------


def test_an_issued_certificate_records_its_requester_and_is_logged(
    est: FlaskClient, est_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="est.service"):
        response = post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("logged"))), headers=basic())
    (cert,) = certs_of(response.get_data())
    record = gateway_of(est_app).storage.certificates.certificate_by_fingerprint(
        cert.fingerprint(hashes.SHA256()).hex()
    )
    assert record is not None and record.requester == CLIENT
    assert f"EST simpleenroll: issued {record.serial_hex} to CN=logged" in caplog.messages


def test_a_held_request_is_queued_logged_collected_and_rejected(
    est: FlaskClient, est_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway_of(est_app)
    body = b64_csr(make_csr(ec_key(), subject("held")))
    with caplog.at_level(logging.INFO, logger="est.service"):
        assert post(est, "simpleenroll", body, label="manual", headers=basic()).status_code == 202
    (row,) = gw.approvals.pending(profile="manual")
    assert (row.device_identity, row.client_address) == ("held", CLIENT)
    assert f"EST simpleenroll: awaiting approval (request {row.id})" in caplog.messages
    assert newest_event(est_app, "held").outcome == "pending"
    retry = post(est, "simpleenroll", body, label="manual", headers=basic())
    assert (retry.status_code, retry.get_data(as_text=True)) == (202, "the request awaits approval\n")
    assert retry.headers["Retry-After"] == "7"  # the label's own, not the busy gateway's
    assert newest_event(est_app, "held").outcome == "pending"  # the retry's own event
    gw.approvals.approve(row.id, actor="admin")
    assert post(est, "simpleenroll", body, label="manual", headers=basic()).status_code == 200
    assert newest_event(est_app, "held").outcome == "delivered"

    other = b64_csr(make_csr(ec_key(), subject("turned-down")))
    assert post(est, "simpleenroll", other, label="manual", headers=basic()).status_code == 202
    (row,) = gw.approvals.pending(profile="manual")
    gw.approvals.reject(row.id, "", actor="admin")
    refused(post(est, "simpleenroll", other, label="manual", headers=basic()), 403, "the request was rejected")
    assert newest_event(est_app, "turned-down").detail["cause"] == f"queued request {row.id}"


@pytest.mark.parametrize("operation", ["simpleenroll", "serverkeygen", "fullcmc"])
def test_a_used_up_user_is_refused_as_used_up(est: FlaskClient, operation: str) -> None:
    """Refused by authentication, with its own words, before any request is read (only collecting an
    approved certificate lets a used-up user through)."""
    once = basic("once")
    assert post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("first"))), headers=once).status_code == 200
    body = cmc_enrollment(ec_key(), "second") if operation == "fullcmc" else b64_csr(make_csr(ec_key(), subject("2")))
    refused(post(est, operation, body, headers=once), 403, "the EST user is used up")


def test_a_used_up_user_with_an_unreadable_request_is_refused_as_used_up(est: FlaskClient) -> None:
    """Whether a used-up user collects a queued certificate is looked up by its request: one that cannot
    be read collects nothing, so the refusal is still the user's, not the request's."""
    once = basic("once")
    assert post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("first"))), headers=once).status_code == 200
    refused(post(est, "simpleenroll", b"not a request", label="manual", headers=once), 403, "the EST user is used up")


def test_an_authentication_refusal_logs_its_cause(est: FlaskClient, est_app: Flask) -> None:
    body = b64_csr(make_csr(ec_key(), subject("anonymous")))
    refused(post(est, "simpleenroll", body), 401, "authentication required")
    assert newest_event(est_app, "anonymous").detail["cause"] == "no Basic credentials and no client certificate"
    stranger, _key, _ca = legacy_certificate(0xBAD, "stranger")  # never imported: no CA here issued it
    body = b64_csr(make_csr(ec_key(), subject("stranger")))
    refused(
        post(est, "simplereenroll", body, environ=tls(stranger)),
        403,
        "the client certificate was not issued by this CA or a trusted legacy CA",
    )
    assert "(from tls, SHA-256 " in newest_event(est_app, "stranger").detail["cause"]
