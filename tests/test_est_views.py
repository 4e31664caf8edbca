"""EST through the Flask app (`app.test_client()`): every operation's success path and each way it fails.

The TLS facts the middleware reads from gunicorn's socket are given as environ overrides here:
the client certificate (DER), the TLS version and tls-unique. The real listener is exercised by
tests/test_est_interop.py and tests/test_est_auth_matrix.py.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_der_private_key, pkcs7
from cryptography.x509.oid import AttributeOID
from flask import Flask
from flask.testing import FlaskClient

from est import cmc
from est import cmc_asn1 as asn1
from est.wire import decode_csr_attrs
from gateway.app import create_app
from gateway.config import load_config
from gateway.middleware import CLIENT_CERT_DER, TLS_UNIQUE, TLS_VERSION
from gateway.runtime import Gateway
from shared_ca.errors import Conflict, NotFound
from shared_ca.storage.est_users import hash_password
from shared_ca.storage.repositories import Storage
from tests import test_est_cmc as cmc_tests
from tests.support import csr_der, ec_key, make_csr, multipart_parts, subject

HTTPS = "https://localhost"
EST = "/.well-known/est"
PASSWORD = "correct horse battery"
BINDING = b"\x01\x02tls-unique-of-this-channel"
EXTRA_PROFILES = """
[profiles.manual]
approval = "manual"
est_retry_after_seconds = 7

[profiles.linked]
est_pop_linking = true

[profiles.strict]
est_csrattrs_enforce = true
est_required_san_types = ["dns"]

[profiles.nokeygen]
est_serverkeygen = false
"""


@pytest.fixture
def est_app(data_dir: Path) -> Iterator[Flask]:
    with (data_dir / "config.toml").open("a") as config:
        config.write(EXTRA_PROFILES)
    application = create_app(load_config(data_dir, environ={}))
    gw: Gateway = application.extensions["gateway"].get()
    users = gw.storage.est_users
    now = dt.datetime.now(dt.UTC)
    labels = ("default", "manual", "linked", "strict", "nokeygen")
    users.add_est_user("alice", hash_password(PASSWORD), kind="password", created_by="test", now=now, labels=labels)
    users.add_est_user(
        "once", hash_password(PASSWORD), kind="password", created_by="test", now=now, uses_left=1, labels=labels
    )
    users.add_est_user(
        "boot-dev9", hash_password(PASSWORD), kind="bootstrap", created_by="test", now=now, device_identity="dev9"
    )
    yield application
    gw.storage.engine.dispose()


@pytest.fixture
def est(est_app: Flask) -> FlaskClient:
    return est_app.test_client()


def gateway_of(app: Flask) -> Gateway:
    gw: Gateway = app.extensions["gateway"].get()
    return gw


def basic(user: str = "alice", password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def tls(
    cert: x509.Certificate | None = None, *, version: str = "TLSv1.3", unique: bytes | None = None
) -> dict[str, Any]:
    environ: dict[str, Any] = {TLS_VERSION: version}
    if cert is not None:
        environ[CLIENT_CERT_DER] = cert.public_bytes(Encoding.DER)
    if unique is not None:
        environ[TLS_UNIQUE] = unique
    return environ


def post(
    client: FlaskClient,
    operation: str,
    body: bytes,
    *,
    label: str | None = None,
    headers: dict[str, str] | None = None,
    environ: dict[str, Any] | None = None,
) -> Any:
    path = f"{EST}/{label}/{operation}" if label else f"{EST}/{operation}"
    return client.post(
        path,
        data=body,
        headers={"Content-Type": "application/pkcs10", **(headers or {})},
        base_url=HTTPS,
        environ_overrides=environ or tls(),
    )


def b64_csr(csr: x509.CertificateSigningRequest) -> bytes:
    return base64.b64encode(csr_der(csr))


def certs_of(body: bytes) -> list[x509.Certificate]:
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))


def enroll(client: FlaskClient, cn: str = "device1", key: ec.EllipticCurvePrivateKey | None = None) -> x509.Certificate:
    response = post(client, "simpleenroll", b64_csr(make_csr(key or ec_key(), subject(cn))), headers=basic())
    assert response.status_code == 200, response.get_data(as_text=True)
    (cert,) = certs_of(response.get_data())
    return cert


def est_certificates(app: Flask) -> list[str]:
    """Serials of the certificates issued over EST."""
    records = gateway_of(app).storage.certificates.list_certificates(now=dt.datetime.now(dt.UTC))
    return [r.serial_hex for r in records if r.protocol == "est"]


def events(app: Flask, device: str) -> list[tuple[str, str, str]]:
    return [
        (e.operation, e.outcome, e.challenge_kind)
        for e in reversed(gateway_of(app).storage.enrollments.enrollment_events(device_identity=device))
    ]


# -- cacerts and csrattrs --------------------------------------------------------------------------


def test_cacerts_is_the_ca_chain_in_base64(est: FlaskClient, est_app: Flask) -> None:
    response = est.get(f"{EST}/cacerts", base_url=HTTPS)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert response.headers["Content-Transfer-Encoding"] == "base64"
    assert certs_of(response.get_data()) == [gateway_of(est_app).authority.certificate]


def test_est_is_not_served_on_plain_http(est: FlaskClient) -> None:
    assert est.get(f"{EST}/cacerts").status_code == 404


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        pytest.param(f"{EST}/nosuchlabel/cacerts", "GET", 404, id="fail/unknown-label"),
        pytest.param(f"{EST}/frobnicate", "GET", 404, id="fail/unknown-operation"),
        pytest.param(f"{EST}/cacerts", "POST", 405, id="fail/post-cacerts"),
        pytest.param(f"{EST}/simpleenroll", "GET", 405, id="fail/get-simpleenroll"),
    ],
)
def test_paths_and_methods(est: FlaskClient, path: str, method: str, status: int) -> None:
    response = est.open(path, method=method, base_url=HTTPS)
    assert response.status_code == status
    assert response.mimetype == "text/plain"


def test_csrattrs_follow_the_profile(est: FlaskClient) -> None:
    plain = est.get(f"{EST}/csrattrs", base_url=HTTPS)
    assert plain.status_code == 200 and plain.headers["Content-Type"] == "application/csrattrs"
    oids, attributes = decode_csr_attrs(base64.b64decode(plain.get_data()))
    assert "1.2.840.113549.1.9.7" not in oids
    assert {oid for oid, _ in attributes} == {"1.2.840.10045.2.1", "1.2.840.113549.1.1.1", "1.2.840.113549.1.9.14"}
    linked = est.get(f"{EST}/linked/csrattrs", base_url=HTTPS)
    assert "1.2.840.113549.1.9.7" in decode_csr_attrs(base64.b64decode(linked.get_data()))[0]
    strict = est.get(f"{EST}/strict/csrattrs", base_url=HTTPS)
    (extension_request,) = [
        v for oid, v in decode_csr_attrs(base64.b64decode(strict.get_data()))[1] if oid.endswith(".9.14")
    ]
    assert b"\x06\x03\x55\x1d\x11" in extension_request[0]  # subjectAltName is asked for


# -- simpleenroll ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(base64.b64encode, id="base64-one-line"),
        pytest.param(base64.encodebytes, id="base64-lf"),
        pytest.param(lambda der: base64.encodebytes(der).replace(b"\n", b"\r\n"), id="base64-crlf"),
        pytest.param(lambda der: x509.load_der_x509_csr(der).public_bytes(Encoding.PEM), id="pem"),
    ],
)
def test_simpleenroll_accepts_every_body_form(est: FlaskClient, est_app: Flask, encode: Any) -> None:
    key = ec_key()
    response = post(
        est,
        "simpleenroll",
        encode(csr_der(make_csr(key, subject("forms")))),
        headers={**basic(), "Content-Transfer-Encoding": "base64"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    (cert,) = certs_of(response.get_data())
    assert cert.public_key() == key.public_key()
    record = gateway_of(est_app).storage.certificates.certificate_by_fingerprint(
        cert.fingerprint(hashes.SHA256()).hex()
    )
    assert record is not None and record.protocol == "est"
    assert ("simpleenroll", "issued", "basic") in events(est_app, "forms")


def test_simpleenroll_refusals(est: FlaskClient, est_app: Flask) -> None:
    good = b64_csr(make_csr(ec_key(), subject("refused")))
    cases = [
        (post(est, "simpleenroll", good), 401),
        (post(est, "simpleenroll", good, headers=basic(password="wrong")), 401),
        (post(est, "simpleenroll", good, headers=basic(user="nobody")), 401),
        (post(est, "simpleenroll", good, headers={"Authorization": "Basic !!!"}), 401),
        (post(est, "simpleenroll", b"not base64 at all \x00", headers=basic()), 400),
        (post(est, "simpleenroll", base64.b64encode(b"\x30\x03\x02\x01\x00"), headers=basic()), 400),
        (post(est, "simpleenroll", good, headers=basic("boot-dev9")), 403),  # bootstrap bound to dev9
        (post(est, "simpleenroll", good, label="strict", headers=basic()), 400),  # no dns SAN
        (post(est, "simpleenroll", good, label="linked", headers=basic()), 403),  # no TLS binding
    ]
    for response, status in cases:
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.mimetype == "text/plain"
        if status == 401:
            assert response.headers["WWW-Authenticate"] == 'Basic realm="EST"'
    assert est_certificates(est_app) == []
    outcomes = [outcome for _op, outcome, _kind in events(est_app, "refused")]
    assert "issued" not in outcomes and len(outcomes) >= 4


def test_a_csr_whose_signature_does_not_verify_is_400(est: FlaskClient, est_app: Flask) -> None:
    der = bytearray(csr_der(make_csr(ec_key(), subject("tampered"))))
    der[-3] ^= 0x01
    response = post(est, "simpleenroll", base64.b64encode(bytes(der)), headers=basic())
    assert response.status_code == 400
    assert est_certificates(est_app) == []


def test_one_use_credential_enrolls_once(est: FlaskClient, est_app: Flask) -> None:
    first = post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("one"))), headers=basic("once"))
    assert first.status_code == 200
    second = post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("two"))), headers=basic("once"))
    assert second.status_code == 403
    assert len(est_certificates(est_app)) == 1


def test_a_refused_request_gives_the_use_back(est: FlaskClient, est_app: Flask) -> None:
    bad = make_csr(ec_key(), x509.Name([]))  # no subject and no SAN: the policy refuses
    assert post(est, "simpleenroll", b64_csr(bad), headers=basic("once")).status_code == 403
    users = Storage.open(gateway_of(est_app).storage.engine).est_users
    assert users.est_user("once") is not None and users.est_user("once").uses_left == 1  # type: ignore[union-attr]


def test_bootstrap_credential_enrolls_its_own_device(est: FlaskClient) -> None:
    response = post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("dev9"))), headers=basic("boot-dev9"))
    assert response.status_code == 200


def test_client_certificate_enrolls_its_own_subject_only(est: FlaskClient) -> None:
    key = ec_key()
    cert = enroll(est, "holder", key)
    same = post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("holder"))), environ=tls(cert))
    assert same.status_code == 200
    other = post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("someone-else"))), environ=tls(cert))
    assert other.status_code == 403


# -- channel binding (RFC 7030 §3.5) -----------------------------------------------------------------


def linked_csr(cn: str, password: bytes) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject(cn))
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, password)
        .sign(ec_key(), hashes.SHA256())
    )
    return b64_csr(csr)


def test_channel_binding_accepted_when_it_matches(est: FlaskClient) -> None:
    body = linked_csr("linked1", base64.b64encode(BINDING))
    ok = post(
        est, "simpleenroll", body, label="linked", headers=basic(), environ=tls(version="TLSv1.2", unique=BINDING)
    )
    assert ok.status_code == 200, ok.get_data(as_text=True)


@pytest.mark.parametrize(
    ("password", "environ"),
    [
        pytest.param(base64.b64encode(b"another channel"), tls(version="TLSv1.2", unique=BINDING), id="fail/other"),
        pytest.param(base64.b64encode(BINDING), tls(version="TLSv1.3", unique=BINDING), id="fail/tls13"),
        pytest.param(base64.b64encode(BINDING), tls(version="TLSv1.2"), id="fail/no-binding"),
    ],
)
def test_channel_binding_refusals(est: FlaskClient, password: bytes, environ: dict[str, Any]) -> None:
    response = post(
        est, "simpleenroll", linked_csr("linked2", password), label="linked", headers=basic(), environ=environ
    )
    assert response.status_code == 403


# -- simplereenroll ----------------------------------------------------------------------------------


def test_simplereenroll_renews_and_rekeys(est: FlaskClient, est_app: Flask) -> None:
    key = ec_key()
    cert = enroll(est, "renewer", key)
    same_key = post(est, "simplereenroll", b64_csr(make_csr(key, subject("renewer"))), environ=tls(cert))
    assert same_key.status_code == 200
    new_key = ec_key()
    rekeyed = post(est, "simplereenroll", b64_csr(make_csr(new_key, subject("renewer"))), environ=tls(cert))
    assert rekeyed.status_code == 200
    (renewed,) = certs_of(rekeyed.get_data())
    assert renewed.subject == cert.subject and renewed.public_key() == new_key.public_key()
    record = gateway_of(est_app).storage.certificates.certificate_by_fingerprint(
        renewed.fingerprint(hashes.SHA256()).hex()
    )
    assert record is not None and record.renewed_from_id is not None
    assert ("simplereenroll", "issued", "certificate") in events(est_app, "renewer")


@pytest.mark.parametrize(
    ("operation", "label", "password", "certificate"),
    [
        pytest.param("simplereenroll", None, False, True, id="certificate"),
        pytest.param("simplereenroll", None, True, True, id="certificate-and-basic"),
        pytest.param("simpleenroll", None, True, False, id="basic"),
        pytest.param("simpleenroll", "manual", True, False, id="basic-manual-approval"),
    ],
)
def test_the_look_ups_before_issuance_share_one_connection(
    est: FlaskClient,
    est_app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
    label: str | None,
    password: bool,
    certificate: bool,
) -> None:
    """The client certificate, its issuer, the Basic user and the approval queue are read in one pool
    checkout (Storage.reading); issuing (or queueing) takes its own."""
    key = ec_key()
    cert = enroll(est, "one-read", key)
    engine = gateway_of(est_app).storage.engine
    checkouts: list[object] = []
    connect = engine.connect

    def counting_connect() -> Any:
        connection = connect()
        checkouts.append(connection)
        return connection

    monkeypatch.setattr(engine, "connect", counting_connect)
    response = post(
        est,
        operation,
        b64_csr(make_csr(key, subject("one-read"))),
        label=label,
        headers=basic() if password else None,
        environ=tls(cert if certificate else None),
    )
    assert response.status_code == (202 if label == "manual" else 200), response.get_data(as_text=True)
    # manual approval: the queue is looked up again after the scope (a concurrent retry may have queued it)
    assert len(checkouts) == (3 if label == "manual" else 2)


def test_simplereenroll_refusals(est: FlaskClient, est_app: Flask) -> None:
    key = ec_key()
    cert = enroll(est, "holder2", key)
    before = len(est_certificates(est_app))
    cases = [
        (post(est, "simplereenroll", b64_csr(make_csr(key, subject("holder2")))), 401),
        (post(est, "simplereenroll", b64_csr(make_csr(key, subject("holder2"))), headers=basic()), 403),
        (post(est, "simplereenroll", b64_csr(make_csr(key, subject("other"))), environ=tls(cert)), 403),
        (
            post(
                est, "simplereenroll", b64_csr(make_csr(key, subject("holder2"), dns=["x.example"])), environ=tls(cert)
            ),
            403,
        ),
    ]
    for response, status in cases:
        assert response.status_code == status, response.get_data(as_text=True)
    gateway_of(est_app).authority.revoke(format(cert.serial_number, "x"), x509.ReasonFlags.key_compromise, actor="t")
    revoked = post(est, "simplereenroll", b64_csr(make_csr(key, subject("holder2"))), environ=tls(cert))
    assert revoked.status_code == 403
    assert len(est_certificates(est_app)) == before


# -- manual approval ---------------------------------------------------------------------------------


def test_manual_approval_answers_202_then_the_certificate(est: FlaskClient, est_app: Flask) -> None:
    body = b64_csr(make_csr(ec_key(), subject("waiting")))
    first = post(est, "simpleenroll", body, label="manual", headers=basic("once"))
    assert first.status_code == 202 and first.headers["Retry-After"] == "7"
    again = post(est, "simpleenroll", body, label="manual", headers=basic("once"))
    assert again.status_code == 202
    gw = gateway_of(est_app)
    (queued,) = gw.approvals.pending()
    assert (queued.protocol, queued.principal_name, queued.subject) == ("est", "once", "CN=waiting")
    record = gw.approvals.approve(queued.id, actor="test")
    done = post(est, "simpleenroll", body, label="manual", headers=basic("once"))
    assert done.status_code == 200
    (cert,) = certs_of(done.get_data())
    # The certificate delivered is the very one the approval issued: same serial, same DER.
    assert int(record.serial_hex, 16) == cert.serial_number
    assert record.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert gw.storage.est_users.est_user("once").uses_left == 0  # type: ignore[union-attr]


def test_a_rejected_request_is_403(est: FlaskClient, est_app: Flask) -> None:
    body = b64_csr(make_csr(ec_key(), subject("rejected")))
    assert post(est, "simpleenroll", body, label="manual", headers=basic()).status_code == 202
    gw = gateway_of(est_app)
    (queued,) = gw.approvals.pending()
    gw.approvals.reject(queued.id, "not on the inventory", actor="test")
    refused = post(est, "simpleenroll", body, label="manual", headers=basic())
    assert refused.status_code == 403 and "not on the inventory" in refused.get_data(as_text=True)


# -- serverkeygen ------------------------------------------------------------------------------------


def parts(response: Any) -> list[tuple[str, bytes]]:
    return multipart_parts(response.headers["Content-Type"], response.get_data())


def test_serverkeygen_returns_a_pkcs8_key_and_its_certificate(est: FlaskClient, est_app: Flask) -> None:
    hint = ec_key(ec.SECP384R1())
    response = post(est, "serverkeygen", b64_csr(make_csr(hint, subject("keyless"))), headers=basic())
    assert response.status_code == 200, response.get_data(as_text=True)
    (key_type, key_der), (certs_type, certs_der) = parts(response)
    assert (key_type, certs_type) == ("application/pkcs8", "application/pkcs7-mime")
    key = load_der_private_key(key_der, password=None)
    (cert,) = pkcs7.load_der_pkcs7_certificates(certs_der)
    assert cert.public_key() == key.public_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert key.public_key() != hint.public_key()
    assert ("serverkeygen", "issued", "basic") in events(est_app, "keyless")


def test_serverkeygen_refusals(est: FlaskClient) -> None:
    body = b64_csr(make_csr(ec_key(), subject("keyless2")))
    assert post(est, "serverkeygen", body, label="nokeygen", headers=basic()).status_code == 403
    assert post(est, "serverkeygen", body, label="manual", headers=basic()).status_code == 403
    assert post(est, "serverkeygen", body).status_code == 401


# -- fullcmc -----------------------------------------------------------------------------------------


def cmc_enrollment(key: ec.EllipticCurvePrivateKey, cn: str, *, extra_controls: list[Any] | None = None) -> bytes:
    """A Full PKI Request with one PKCS#10 (body part 1), signed by the key being certified."""
    content = cmc_tests.pki_data(
        [*cmc_tests.standard_controls(), *(extra_controls or [])],
        [cmc_tests.tcr(1, csr_der(make_csr(key, subject(cn))))],
    )
    return base64.b64encode(cmc_tests.sign(content, key, cmc_tests.sid_ski(cmc_tests._ski(key))))


def cmc_revocation(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate) -> bytes:
    value = asn1.RevokeRequest(
        {
            "issuer_name": asn1_x509.Name.load(cert.issuer.public_bytes()),
            "serial_number": cert.serial_number,
            "reason": "key_compromise",
            "comment": "laptop stolen",
        }
    )
    content = cmc_tests.pki_data([*cmc_tests.standard_controls(), cmc_tests.control(3, "revoke_request", value)])
    der = cmc_tests.sign(content, key, cmc_tests.sid_ias(cert), certificates=[cert, issuer])
    return base64.b64encode(der)


def cmc_response(response: Any) -> cmc.CmcResponse:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == cmc.FULL_CMC_RESPONSE
    return cmc.parse_pki_response(base64.b64decode(response.get_data()))


def test_fullcmc_enrollment_then_self_revocation_shows_in_the_crl(est: FlaskClient, est_app: Flask) -> None:
    gw = gateway_of(est_app)
    key = ec_key()
    enrolled = cmc_response(post(est, "fullcmc", cmc_enrollment(key, "cmc-device"), headers=basic()))
    assert [(s.status, s.body_part_ids) for s in enrolled.statuses] == [(cmc.CmcStatus.SUCCESS, (1,))]
    assert enrolled.transaction_id == 7 and enrolled.recipient_nonce == cmc_tests.NONCE
    assert enrolled.signer_certificate == gw.ra_certificate
    cert = enrolled.certificates[0]
    assert cert.public_key() == key.public_key() and cert.subject == subject("cmc-device")

    body = cmc_revocation(cert, key, gw.authority.certificate)
    revoked = cmc_response(post(est, "fullcmc", body, environ=tls(cert)))
    assert [(s.status, s.body_part_ids) for s in revoked.statuses] == [(cmc.CmcStatus.SUCCESS, (3,))]
    crl = x509.load_der_x509_crl(gw.crl.current(actor="test").der)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert ("fullcmc-revoke", "revoked", "certificate") in events(est_app, "cmc-device")


def test_fullcmc_revocation_needs_the_certificate_itself(est: FlaskClient, est_app: Flask) -> None:
    gw = gateway_of(est_app)
    key, other_key = ec_key(), ec_key()
    cert = enroll(est, "victim", key)
    other = enroll(est, "attacker", other_key)
    body = cmc_revocation(cert, key, gw.authority.certificate)
    assert post(est, "fullcmc", body, headers=basic()).status_code == 403  # Basic cannot revoke
    assert post(est, "fullcmc", body, environ=tls(other)).status_code == 403  # another device's certificate
    record = gw.storage.certificates.certificate_by_fingerprint(cert.fingerprint(hashes.SHA256()).hex())
    assert record is not None and record.status == "valid"


def test_fullcmc_failures_are_signed_cmc_responses(est: FlaskClient) -> None:
    unknown_control = cmc_tests.control(20, cmc_tests.IDENTIFICATION_OID, core.UTF8String("x"))
    unsupported = cmc_response(
        post(est, "fullcmc", cmc_enrollment(ec_key(), "cmc2", extra_controls=[unknown_control]), headers=basic())
    )
    (status,) = unsupported.statuses
    assert status.status is cmc.CmcStatus.FAILED and status.fail_info is cmc.CmcFailInfo.BAD_REQUEST
    key = ec_key()
    content = cmc_tests.pki_data(cmc_tests.standard_controls(), [cmc_tests.tcr(1, csr_der(make_csr(key)))])
    tampered = cmc_tests.sign(content, key, cmc_tests.sid_ski(cmc_tests._ski(key)), corrupt=True)
    bad = cmc_response(post(est, "fullcmc", base64.b64encode(tampered), headers=basic()))
    assert bad.statuses[0].fail_info is cmc.CmcFailInfo.BAD_MESSAGE_CHECK
    assert post(est, "fullcmc", base64.b64encode(b"\x30\x00"), headers=basic()).status_code == 400
    assert post(est, "fullcmc", cmc_enrollment(ec_key(), "cmc3")).status_code == 401


def test_approval_refusals(est: FlaskClient, est_app: Flask) -> None:
    gw = gateway_of(est_app)
    with pytest.raises(NotFound, match="no request 999"):
        gw.approvals.approve(999, actor="test")
    with pytest.raises(NotFound, match="no request 999"):
        gw.approvals.reject(999, "no", actor="test")
    body = b64_csr(make_csr(ec_key(), subject("twice")))
    assert post(est, "simpleenroll", body, label="manual", headers=basic()).status_code == 202
    (queued,) = gw.approvals.pending()
    gw.approvals.approve(queued.id, actor="test")
    with pytest.raises(Conflict, match="is not pending"):
        gw.approvals.approve(queued.id, actor="test")
    with pytest.raises(Conflict, match="is not pending"):
        gw.approvals.reject(queued.id, "too late", actor="test")
