"""HTTP tests through Flask's test client: health, CA certificates, CRLs and OCSP (RFC 6960).

Every test runs on SQLite, and on PostgreSQL too when GATEWAY_TEST_DATABASE_URL is set (the
`app`/`client` fixtures of conftest are parametrised over the backends).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
import random
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from gateway.app import create_app
from gateway.config import load_config
from gateway.initdir import InitOptions, initialise
from gateway.runtime import Gateway
from gateway.views import OCSP_MAX_REQUEST
from scep.service import ScepService
from shared_ca.authority import CertificateAuthority, utcnow
from shared_ca.ca_material import CAMaterial, create_root_ca
from shared_ca.crl import CrlPublisher
from shared_ca.keys import KeyType, generate_private_key, load_certificates
from shared_ca.ocsp import OcspResponder
from shared_ca.policy import authorize_csr
from shared_ca.storage.db import create_store_engine, sqlite_url
from shared_ca.storage.repositories import Storage
from tests.support import make_csr, subject

OCSP_TYPE = "application/ocsp-response"
REQUEST_ID = re.compile(r"[0-9a-f]{16}")
CERTID_SHA1 = hashes.SHA1()  # noqa: S303 - RFC 5019 §2.1.1: lightweight clients hash CertIDs with SHA-1
HASHES = [pytest.param(CERTID_SHA1, id="sha1"), pytest.param(hashes.SHA256(), id="sha256")]


# -- helpers ----------------------------------------------------------------------------------------


def gateway_of(app: Flask) -> Gateway:
    gw: Gateway = app.extensions["gateway"].get()
    return gw


def issue(app: Flask, cn: str) -> x509.Certificate:
    """A client certificate issued by the app's CA under the default profile (and recorded)."""
    gw = gateway_of(app)
    policy = authorize_csr(gw.config.profiles["default"], make_csr(name=subject(cn)), utcnow())
    return gw.authority.issue(policy, protocol="test", actor="test").certificate


def revoke(app: Flask, cert: x509.Certificate, reason: x509.ReasonFlags) -> None:
    gateway_of(app).authority.revoke(format(cert.serial_number, "x"), reason, actor="test")


def ocsp_request(
    cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm, nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def ocsp_by_serial(app: Flask, serial: int, algorithm: hashes.HashAlgorithm) -> bytes:
    """A request for `serial` under our CA (serials the builder would refuse are not supported)."""
    ca = gateway_of(app).authority.certificate
    template = ocsp.OCSPRequestBuilder().add_certificate(ca, ca, algorithm).build()
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        template.issuer_name_hash, template.issuer_key_hash, serial, algorithm
    )
    return builder.build().public_bytes(Encoding.DER)


def post_ocsp(client: FlaskClient, der: bytes) -> TestResponse:
    return client.post("/ocsp", data=der, headers={"Content-Type": "application/ocsp-request"})


def signed_response(reply: TestResponse, ca: x509.Certificate) -> ocsp.OCSPResponse:
    """The reply as a successful OCSP response, signed by `ca` and naming it by key hash."""
    assert reply.status_code == 200, reply.data
    assert reply.mimetype == OCSP_TYPE
    response = ocsp.load_der_ocsp_response(reply.data)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
    assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(public_key).digest
    assert response.responder_name is None
    return response


def unsuccessful_status(reply: TestResponse) -> ocsp.OCSPResponseStatus:
    assert reply.mimetype == OCSP_TYPE
    return ocsp.load_der_ocsp_response(reply.data).response_status


def assert_malformed(reply: TestResponse) -> None:
    assert reply.status_code == 400
    assert unsuccessful_status(reply) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def served_crl(client: FlaskClient) -> x509.CertificateRevocationList:
    reply = client.get("/crl/ca.crl")
    assert reply.status_code == 200
    assert reply.mimetype == "application/pkix-crl"
    return x509.load_der_x509_crl(reply.data)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def foreign_ca(name: x509.Name) -> CAMaterial:
    return create_root_ca(generate_private_key(KeyType.P256), name, 365, utcnow())


def foreign_leaf(ca: CAMaterial, serial: int) -> x509.Certificate:
    """A client certificate from another CA (same serial as one of ours, to show the issuer counts)."""
    now = utcnow()
    key = generate_private_key(KeyType.P256)
    return (
        x509.CertificateBuilder()
        .subject_name(subject("stranger"))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def b64_with(der_factory: Callable[[bytes], bytes], *needed: str) -> str:
    """Base64 of a request whose encoding contains every character in `needed` (nonce and its length varied)."""
    for attempt in range(500):
        text = base64.b64encode(der_factory(os.urandom(16 + attempt % 3))).decode("ascii")
        if all(ch in text for ch in needed):
            return text
    raise AssertionError(f"no request encoded with {needed!r} in 500 attempts")


def edited_request(der: bytes, edit: Any) -> bytes:
    """`der` re-encoded after `edit` changed its asn1crypto form (for requests cryptography won't build)."""
    parsed = asn1_ocsp.OCSPRequest.load(der)
    edit(parsed)
    return bytes(asn1_ocsp.OCSPRequest.load(parsed.dump(force=True)).dump(force=True))


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- health -----------------------------------------------------------------------------------------


def test_healthz_is_liveness_as_json(client: FlaskClient) -> None:
    reply = client.get("/healthz")
    assert reply.status_code == 200
    assert reply.mimetype == "application/json"
    assert reply.json == {"status": "alive", "listener": "http"}


def test_readyz_checks_the_database_keys_and_listeners(client: FlaskClient) -> None:
    reply = client.get("/readyz")
    assert reply.mimetype == "application/json" and reply.json is not None
    assert reply.json["checks"]["database"] == "ok" and reply.json["checks"]["keys"] == "ok"
    # In process nothing listens on listen.http / listen.https: not ready, and it says so.
    assert reply.json["checks"]["listener_http"] == "not accepting connections"
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "5"
    assert reply.json["status"] == "not ready" and "listener_http" in reply.json["reason"]


@pytest.fixture
def unreachable_app(app: Flask, database_url: str, tmp_path: Path) -> Iterator[Flask]:
    """The same CA over a store whose database cannot be reached.

    SQLite: the database file's directory is gone (it cannot even be created); PostgreSQL: nothing
    listens on the database port any more.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        broken_url = sqlite_url(tmp_path / "volume-gone" / "gateway.db")
    else:
        broken_url = url.set(host="127.0.0.1", port=closed_port()).render_as_string(hide_password=False)
    engine = create_store_engine(broken_url)
    store = Storage.open(engine)
    gw = gateway_of(app)
    old = gw.authority
    authority = CertificateAuthority(
        store.certificates, old.issuer, old.certificate, old.chain, old.key, old.urls, old.clock
    )
    broken = dataclasses.replace(
        gw,
        storage=store,
        authority=authority,
        crl=CrlPublisher(authority, store.crls, gw.crl.validity, gw.crl.refresh),
        ocsp=OcspResponder([authority], gw.ocsp.validity),
        scep=ScepService(
            authority=authority,
            storage=store,
            crl=CrlPublisher(authority, store.crls, gw.crl.validity, gw.crl.refresh),
            ra_key=gw.ra_key,
            ra_certificate=gw.ra_certificate,
            profiles=gw.config.profiles,
            authorizer=gw.authorizer,
            approvals=gw.approvals,
        ),
    )
    try:
        yield create_app(gateway=broken)
    finally:
        engine.dispose()


def test_readyz_is_503_and_healthz_200_when_the_database_is_unreachable(unreachable_app: Flask) -> None:
    client = unreachable_app.test_client()
    assert client.get("/healthz").status_code == 200  # the process answers: liveness
    reply = client.get("/readyz")
    assert reply.status_code == 503 and reply.json is not None
    assert reply.json["checks"]["database"] == "unreachable"
    assert "database: unreachable" in reply.json["reason"]


def test_database_outage_is_503_never_500(unreachable_app: Flask, app: Flask) -> None:
    client = unreachable_app.test_client()
    cert = issue(app, "device1")  # recorded in the real store, which the broken app cannot reach
    for reply in (
        client.get("/crl/ca.crl"),
        client.get("/crl/ca.pem"),
        post_ocsp(client, ocsp_request(cert, gateway_of(app).authority.certificate, hashes.SHA256())),
    ):
        assert reply.status_code == 503, reply.data
        assert reply.headers["X-Request-ID"]
        assert b"Traceback" not in reply.data
        assert b"database error" not in reply.data  # the cause goes to the log, not to the client
    # What needs no database still works.
    assert client.get("/ca.pem").status_code == 200


def test_ocsp_during_an_outage_says_try_later_in_ocsp(unreachable_app: Flask, app: Flask) -> None:
    cert = issue(app, "device-outage")
    client = unreachable_app.test_client()
    reply = post_ocsp(client, ocsp_request(cert, gateway_of(app).authority.certificate, hashes.SHA256()))
    assert reply.status_code == 503
    assert reply.mimetype == "application/ocsp-response"
    assert ocsp.load_der_ocsp_response(reply.data).response_status == ocsp.OCSPResponseStatus.TRY_LATER


def test_readyz_follows_the_sqlite_file_going_away_and_coming_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    initialise(InitOptions(data_dir=data_dir, ca_key_type=KeyType.P256))
    app = create_app(load_config(data_dir, environ={}))
    engine = gateway_of(app).storage.engine
    try:
        client = app.test_client()

        def database() -> str:
            reply = client.get("/readyz")
            assert reply.json is not None
            state: str = reply.json["checks"]["database"]
            return state

        assert database() == "ok"
        moved = data_dir.rename(tmp_path / "elsewhere")
        engine.dispose()  # pooled connections would still hold the old file open
        assert database() == "unreachable"
        assert client.get("/healthz").status_code == 200
        moved.rename(data_dir)
        assert database() == "ok"
    finally:
        engine.dispose()


# -- CA certificates --------------------------------------------------------------------------------


def test_ca_pem_is_the_chain(client: FlaskClient, app: Flask) -> None:
    reply = client.get("/ca.pem")
    assert reply.status_code == 200
    assert reply.mimetype == "application/x-pem-file"
    served = x509.load_pem_x509_certificates(reply.data)
    assert served == list(gateway_of(app).authority.chain)
    assert served == load_certificates(gateway_of(app).config.data_dir / "ca.pem")


def test_ca_certificate_is_der(client: FlaskClient, app: Flask) -> None:
    reply = client.get("/ca/ca.crt")
    assert reply.status_code == 200
    assert reply.mimetype == "application/pkix-cert"
    assert x509.load_der_x509_certificate(reply.data) == gateway_of(app).authority.certificate


def test_ca_issuers_url_of_issued_certificates_is_served(client: FlaskClient, app: Flask) -> None:
    cert = issue(app, "device1")
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    urls = {d.access_method: str(d.access_location.value) for d in aia}
    path = urls[AuthorityInformationAccessOID.CA_ISSUERS].removeprefix("http://127.0.0.1:8080")
    assert path == "/ca/ca.crt"
    assert client.get(path).status_code == 200
    crl_url = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name
    assert crl_url is not None
    assert client.get(str(crl_url[0].value).removeprefix("http://127.0.0.1:8080")).status_code == 200


@pytest.mark.parametrize("path", ["/ca/other.crt", "/crl/other.crl", "/crl/other.pem", "/ca/CA.crt"])
def test_unknown_issuer_is_404_plain_text(client: FlaskClient, path: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 404
    assert reply.mimetype == "text/plain"
    assert reply.data.endswith(b"\n")


# -- CRLs -------------------------------------------------------------------------------------------


def test_crl_is_signed_der_with_number_and_aki(client: FlaskClient, app: Flask) -> None:
    ca = gateway_of(app).authority.certificate
    reply = client.get("/crl/ca.crl")
    assert reply.status_code == 200
    assert reply.mimetype == "application/pkix-crl"
    assert "max-age" in reply.headers["Cache-Control"]
    crl = x509.load_der_x509_crl(reply.data)
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public_key)
    assert crl.issuer == ca.subject
    assert crl_number(crl) >= 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert crl.next_update_utc is not None
    assert crl.last_update_utc <= utcnow() + dt.timedelta(seconds=1) < crl.next_update_utc
    assert len(crl) == 0


def test_crl_pem_is_the_same_crl(client: FlaskClient) -> None:
    der = served_crl(client)
    reply = client.get("/crl/ca.pem")
    assert reply.status_code == 200
    assert reply.mimetype == "application/x-pem-file"
    assert reply.data.startswith(b"-----BEGIN X509 CRL-----")
    assert x509.load_pem_x509_crl(reply.data) == der


def test_crl_is_not_resigned_on_every_request(client: FlaskClient) -> None:
    first = served_crl(client)
    second = served_crl(client)
    assert crl_number(second) == crl_number(first)
    assert second.public_bytes(Encoding.DER) == first.public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    "reason",
    [
        x509.ReasonFlags.key_compromise,
        x509.ReasonFlags.superseded,
        x509.ReasonFlags.cessation_of_operation,
        x509.ReasonFlags.affiliation_changed,
    ],
    ids=lambda r: r.value,
)
def test_revoked_certificate_is_listed_with_its_reason(
    client: FlaskClient, app: Flask, reason: x509.ReasonFlags
) -> None:
    kept = issue(app, "kept")
    gone = issue(app, "gone")
    before = crl_number(served_crl(client))
    started = utcnow().replace(microsecond=0)
    revoke(app, gone, reason)
    crl = served_crl(client)
    assert crl_number(crl) > before
    entry = crl.get_revoked_certificate_by_serial_number(gone.serial_number)
    assert entry is not None
    assert started <= entry.revocation_date_utc <= utcnow()
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is reason
    assert crl.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    assert len(crl) == 1


def test_unspecified_reason_is_omitted_from_the_crl_entry(client: FlaskClient, app: Flask) -> None:
    cert = issue(app, "device1")
    revoke(app, cert, x509.ReasonFlags.unspecified)
    entry = served_crl(client).get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    with pytest.raises(x509.ExtensionNotFound):
        entry.extensions.get_extension_for_class(x509.CRLReason)


def test_crl_number_increases_with_each_revocation(client: FlaskClient, app: Flask) -> None:
    numbers = [crl_number(served_crl(client))]
    for cn in ("one", "two"):
        revoke(app, issue(app, cn), x509.ReasonFlags.key_compromise)
        crl = served_crl(client)
        numbers.append(crl_number(crl))
    assert numbers[0] < numbers[1] < numbers[2]
    assert len(crl) == 2
    pem = x509.load_pem_x509_crl(client.get("/crl/ca.pem").data)
    assert crl_number(pem) == numbers[2]


# -- OCSP -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", HASHES)
def test_ocsp_good(client: FlaskClient, app: Flask, algorithm: hashes.HashAlgorithm) -> None:
    ca = gateway_of(app).authority.certificate
    cert = issue(app, "device1")
    response = signed_response(post_ocsp(client, ocsp_request(cert, ca, algorithm)), ca)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == cert.serial_number
    assert isinstance(response.hash_algorithm, type(algorithm))
    request = ocsp.load_der_ocsp_request(ocsp_request(cert, ca, algorithm))
    assert response.issuer_key_hash == request.issuer_key_hash
    assert response.issuer_name_hash == request.issuer_name_hash
    now = utcnow()
    assert response.this_update_utc <= now + dt.timedelta(seconds=1)
    assert response.next_update_utc is not None
    assert response.next_update_utc > now
    assert response.revocation_time_utc is None
    with pytest.raises(x509.ExtensionNotFound):  # no nonce asked, none sent
        response.extensions.get_extension_for_class(x509.OCSPNonce)


@pytest.mark.parametrize("algorithm", HASHES)
def test_ocsp_revoked_with_reason_and_time(client: FlaskClient, app: Flask, algorithm: hashes.HashAlgorithm) -> None:
    ca = gateway_of(app).authority.certificate
    cert = issue(app, "device1")
    started = utcnow().replace(microsecond=0)
    revoke(app, cert, x509.ReasonFlags.key_compromise)
    response = signed_response(post_ocsp(client, ocsp_request(cert, ca, algorithm)), ca)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is x509.ReasonFlags.key_compromise
    assert response.revocation_time_utc is not None
    assert started <= response.revocation_time_utc <= utcnow()
    assert response.serial_number == cert.serial_number


@pytest.mark.parametrize("algorithm", HASHES)
def test_ocsp_unknown_serial(client: FlaskClient, app: Flask, algorithm: hashes.HashAlgorithm) -> None:
    ca = gateway_of(app).authority.certificate
    issued = issue(app, "device1")
    serial = issued.serial_number ^ 1
    response = signed_response(post_ocsp(client, ocsp_by_serial(app, serial, algorithm)), ca)
    assert response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    assert response.serial_number == serial


@pytest.mark.parametrize("algorithm", HASHES)
def test_ocsp_certificate_of_another_ca_is_unauthorized(
    client: FlaskClient, app: Flask, algorithm: hashes.HashAlgorithm
) -> None:
    ours = gateway_of(app).authority.certificate
    ca = foreign_ca(ours.subject)  # same name, other key: only the key hash tells them apart
    leaf = foreign_leaf(ca, issue(app, "device1").serial_number)
    reply = post_ocsp(client, ocsp_request(leaf, ca.certificate, algorithm))
    assert reply.status_code == 200
    assert unsuccessful_status(reply) is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_ocsp_nonce_is_echoed(client: FlaskClient, app: Flask) -> None:
    ca = gateway_of(app).authority.certificate
    cert = issue(app, "device1")
    nonce = os.urandom(32)
    response = signed_response(post_ocsp(client, ocsp_request(cert, ca, hashes.SHA256(), nonce)), ca)
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD


def test_ocsp_follows_revocation(client: FlaskClient, app: Flask) -> None:
    ca = gateway_of(app).authority.certificate
    cert = issue(app, "device1")
    other = issue(app, "device2")
    der = ocsp_request(cert, ca, CERTID_SHA1)
    assert signed_response(post_ocsp(client, der), ca).certificate_status is ocsp.OCSPCertStatus.GOOD
    revoke(app, cert, x509.ReasonFlags.superseded)
    assert signed_response(post_ocsp(client, der), ca).certificate_status is ocsp.OCSPCertStatus.REVOKED
    still = signed_response(post_ocsp(client, ocsp_request(other, ca, CERTID_SHA1)), ca)
    assert still.certificate_status is ocsp.OCSPCertStatus.GOOD


def _get_variants(text: str) -> list[str]:
    return [
        text,  # as is: '/' and '+' unescaped (what many clients send)
        quote(text, safe=""),  # RFC 6960 A.1: URL-encoded
        text.replace("+", "%20"),  # '+' decoded to a space by some layer on the way
        quote(text, safe="").replace("%2B", "+"),  # '+' left alone, the rest encoded
        text.rstrip("="),  # padding dropped
    ]


@pytest.mark.parametrize("variant", range(5), ids=["raw", "url-encoded", "plus-as-space", "plus-raw", "no-padding"])
def test_ocsp_get(client: FlaskClient, app: Flask, variant: int) -> None:
    ca = gateway_of(app).authority.certificate
    cert = issue(app, "device1")
    nonces: list[bytes] = []

    def make(nonce: bytes) -> bytes:
        nonces.append(nonce)
        return ocsp_request(cert, ca, CERTID_SHA1, nonce)

    text = b64_with(make, "+", "/", "=")
    path = "/ocsp/" + _get_variants(text)[variant]
    response = signed_response(client.get(path), ca)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == cert.serial_number
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonces[-1]


def test_ocsp_get_revoked(client: FlaskClient, app: Flask) -> None:
    ca = gateway_of(app).authority.certificate
    cert = issue(app, "device1")
    revoke(app, cert, x509.ReasonFlags.cessation_of_operation)
    encoded = quote(base64.b64encode(ocsp_request(cert, ca, hashes.SHA256())).decode("ascii"), safe="")
    response = signed_response(client.get(f"/ocsp/{encoded}"), ca)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is x509.ReasonFlags.cessation_of_operation


def _valid(app: Flask) -> bytes:
    return ocsp_request(issue(app, "device1"), gateway_of(app).authority.certificate, CERTID_SHA1, b"nonce")


def _two_cert_ids(parsed: Any) -> None:
    entries = parsed["tbs_request"]["request_list"]
    entries.append(asn1_ocsp.Request.load(entries[0].dump()))


def _no_cert_ids(parsed: Any) -> None:
    parsed["tbs_request"]["request_list"] = []


def _md5_cert_id(parsed: Any) -> None:
    parsed["tbs_request"]["request_list"][0]["req_cert"]["hash_algorithm"]["algorithm"] = "md5"


def _nonce_twice(parsed: Any) -> None:
    extensions = parsed["tbs_request"]["request_extensions"]
    extensions.append(asn1_ocsp.TBSRequestExtension({"extn_id": "nonce", "critical": False, "extn_value": b"again"}))


def _negative_serial(parsed: Any) -> None:
    parsed["tbs_request"]["request_list"][0]["req_cert"]["serial_number"] = -5


MALFORMED_BODIES: list[Any] = [
    pytest.param(lambda app: b"", id="fail/empty"),
    pytest.param(lambda app: b"not an OCSP request", id="fail/text"),
    pytest.param(lambda app: b"\x30\x80\x00\x00", id="fail/ber-indefinite"),
    pytest.param(lambda app: _valid(app)[:-7], id="fail/truncated"),
    pytest.param(lambda app: _valid(app) + b"\x00\x00", id="fail/trailing-bytes"),
    pytest.param(lambda app: b"\x30" * (OCSP_MAX_REQUEST + 1), id="fail/oversized"),
    pytest.param(lambda app: edited_request(_valid(app), _two_cert_ids), id="fail/two-cert-ids"),
    pytest.param(lambda app: edited_request(_valid(app), _no_cert_ids), id="fail/no-cert-id"),
    pytest.param(lambda app: edited_request(_valid(app), _md5_cert_id), id="fail/md5-cert-id"),
    pytest.param(lambda app: edited_request(_valid(app), _nonce_twice), id="fail/duplicate-nonce"),
    pytest.param(lambda app: edited_request(_valid(app), _negative_serial), id="fail/negative-serial"),
    pytest.param(
        lambda app: ocsp.load_der_ocsp_response(
            ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR).public_bytes(
                Encoding.DER
            )
        ).public_bytes(Encoding.DER),
        id="fail/a-response-not-a-request",
    ),
]


@pytest.mark.parametrize("body", MALFORMED_BODIES)
def test_ocsp_post_malformed_is_400_malformed_request(client: FlaskClient, app: Flask, body: Any) -> None:
    assert_malformed(post_ocsp(client, body(app)))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x30" * (OCSP_MAX_REQUEST + 1), id="over-ocsp-cap"),
        pytest.param(b"\x30" * (2 << 20), id="over-app-cap"),
    ],
)
def test_ocsp_post_oversized_body(client: FlaskClient, body: bytes) -> None:
    assert_malformed(post_ocsp(client, body))


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param("not*base64!", id="fail/not-base64"),
        pytest.param("%%%", id="fail/bad-percent"),
        pytest.param("QUJD" + "A", id="fail/bad-length"),
        pytest.param(base64.b64encode(b"garbage bytes").decode(), id="fail/not-der"),
        pytest.param("A" * (OCSP_MAX_REQUEST + 4), id="fail/too-long"),
        pytest.param("-_-_", id="fail/url-safe-alphabet-garbage"),
    ],
)
def test_ocsp_get_malformed_is_400_malformed_request(client: FlaskClient, encoded: str) -> None:
    assert_malformed(client.get(f"/ocsp/{encoded}"))


# -- transport: 404, 405, request ids, never 500 ----------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/ocsp/", "/crl/", "/crl/ca", "/ca", "/.well-known/nothing", "/ca.pem/x"])
def test_unknown_path_is_404_plain_text(client: FlaskClient, path: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 404
    assert reply.mimetype == "text/plain"
    assert b"<" not in reply.data  # no HTML error page


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/healthz", "GET"),
        ("PUT", "/ocsp", "POST"),
        ("GET", "/ocsp", "POST"),
        ("DELETE", "/crl/ca.crl", "GET"),
        ("POST", "/ca.pem", "GET"),
        ("PATCH", "/ca/ca.crt", "GET"),
        ("POST", "/ocsp/MAA=", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(client: FlaskClient, method: str, path: str, allowed: str) -> None:
    reply = client.open(path, method=method)
    assert reply.status_code == 405
    assert reply.mimetype == "text/plain"
    assert allowed in {m.strip() for m in reply.headers["Allow"].split(",")}


REQUESTS: list[Any] = [
    pytest.param("GET", "/healthz", b"", id="healthz"),
    pytest.param("GET", "/ca.pem", b"", id="ca.pem"),
    pytest.param("GET", "/ca/ca.crt", b"", id="ca.crt"),
    pytest.param("GET", "/crl/ca.crl", b"", id="crl"),
    pytest.param("GET", "/crl/ca.pem", b"", id="crl.pem"),
    pytest.param("GET", "/crl/x.crl", b"", id="crl-404"),
    pytest.param("POST", "/ocsp", b"junk", id="ocsp-400"),
    pytest.param("GET", "/ocsp/!!", b"", id="ocsp-get-400"),
    pytest.param("GET", "/nope", b"", id="404"),
    pytest.param("DELETE", "/healthz", b"", id="405"),
    pytest.param("HEAD", "/crl/ca.crl", b"", id="head"),
    pytest.param("OPTIONS", "/ocsp", b"", id="options"),
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
def test_every_response_has_a_request_id(client: FlaskClient, method: str, path: str, body: bytes) -> None:
    reply = client.open(path, method=method, data=body)
    assert reply.status_code < 500
    assert REQUEST_ID.fullmatch(reply.headers["X-Request-ID"])
    offered = client.open(path, method=method, data=body, headers={"X-Request-ID": "lb-7f3a.9_x"})
    assert offered.headers.getlist("X-Request-ID") == ["lb-7f3a.9_x"]


@pytest.mark.parametrize("offered", ["has space", "x" * 65, "semi;colon", "", "é"])
def test_unacceptable_offered_request_id_is_replaced(client: FlaskClient, offered: str) -> None:
    reply = client.get("/healthz", headers={"X-Request-ID": offered})
    assert REQUEST_ID.fullmatch(reply.headers["X-Request-ID"])


def test_request_ids_differ(client: FlaskClient) -> None:
    ids = {client.get("/nope").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


BAD_INPUT: list[Any] = [
    pytest.param("GET", "/crl/..%2Fca.crl", {}, id="crl-dotdot"),
    pytest.param("GET", "/crl/%00.crl", {}, id="crl-nul"),
    pytest.param("GET", "/ca/%ff%fe.crt", {}, id="ca-bad-utf8"),
    pytest.param("GET", "/crl/ca.crl?x=%ff", {}, id="crl-odd-query"),
    pytest.param("GET", "/ocsp/%", {}, id="ocsp-lone-percent"),
    pytest.param("GET", "/ocsp/%00%00%00%00", {}, id="ocsp-nul"),
    pytest.param("GET", "/ocsp/" + "%41" * 6000, {}, id="ocsp-long-escaped"),
    pytest.param("GET", "/ocsp/////", {}, id="ocsp-slashes"),
    pytest.param("POST", "/ocsp", {"data": b"\x00" * 100, "content_type": "text/html"}, id="ocsp-wrong-type"),
    pytest.param("POST", "/ocsp", {"data": b"x", "headers": {"Content-Length": "abc"}}, id="ocsp-bad-length"),
    pytest.param("POST", "/ocsp", {"data": "\u00e9\u4e2d".encode()}, id="ocsp-utf8"),
    pytest.param("GET", "/healthz", {"headers": {"Host": "\u00e9xample"}}, id="odd-host"),
    pytest.param("GET", "/%ff", {}, id="bad-utf8-path"),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), BAD_INPUT)
def test_bad_input_is_never_500(client: FlaskClient, method: str, path: str, kwargs: dict[str, Any]) -> None:
    reply = client.open(path, method=method, **kwargs)
    assert 200 <= reply.status_code < 500, (reply.status_code, reply.data)
    assert reply.headers["X-Request-ID"]
    assert b"Traceback" not in reply.data
    assert b"internal error" not in reply.data


def test_many_random_ocsp_bodies_are_never_500(client: FlaskClient, app: Flask) -> None:
    """Mutations of a valid request: each answer is an OCSP response, never an internal error."""
    valid = _valid(app)
    rng = random.Random(6960)
    for _ in range(150):
        mutated = bytearray(valid)
        for _flip in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        reply = post_ocsp(client, bytes(mutated))
        assert reply.status_code in (200, 400), (reply.status_code, bytes(mutated).hex())
        status = unsuccessful_status(reply)
        if reply.status_code == 400:
            assert status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        else:
            assert status in (ocsp.OCSPResponseStatus.SUCCESSFUL, ocsp.OCSPResponseStatus.UNAUTHORIZED)
