"""EST refusals a security review found untested, through the Flask test client: each test fails when
the check it names is taken out of the product, and each asserts that nothing was issued (and, for
the revocation, that nothing was revoked).

- serverkeygen with a client certificate: for that certificate's own subject only;
- fullcmc may not revoke a certificate of an imported legacy CA (not even when one of our own
  certificates has the same serial number);
- a client certificate that is not yet valid authenticates nothing;
- a request body over 64 KiB is 413, whatever the operation; exactly 64 KiB is read.

TLS facts are environ overrides, as in tests/test_est_views.py; the real listener's 413 is in
tests/test_http_errors_serve.py.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from est.wire import MAX_REQUEST_BODY
from gateway import runtime
from gateway.app import create_app
from gateway.cli import main
from gateway.config import GatewayConfig
from shared_ca.ca_material import create_root_ca
from shared_ca.keys import KeyType, generate_private_key
from tests.support import SettableClock, ec_key, issued_count, make_csr, subject
from tests.test_est_views import PASSWORD, b64_csr, basic, certs_of, cmc_revocation, parts, post, tls

OPERATIONS = ["simpleenroll", "simplereenroll", "serverkeygen", "fullcmc"]


@pytest.fixture
def clock() -> SettableClock:
    """Real time to the second, until a test moves it."""
    return SettableClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


@pytest.fixture
def est_app(
    gateway_config: GatewayConfig,
    data_dir: Path,
    runner: CliRunner,
    clock: SettableClock,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Flask]:
    """The app as `gateway serve` composes it, on a settable clock, with the EST user `alice`."""
    added = runner.invoke(
        main, ["est-user", "add", "alice", "--password-stdin", "--data-dir", str(data_dir)], input=PASSWORD + "\n"
    )
    assert added.exit_code == 0, added.output
    monkeypatch.setattr(runtime, "utcnow", clock)
    application = create_app(gateway_config)
    yield application
    application.extensions["gateway"].get().storage.engine.dispose()


@pytest.fixture
def est(est_app: Flask) -> FlaskClient:
    """A test client of `est_app`."""
    return est_app.test_client()


def count(app: Flask) -> int:
    """Certificates in the app's database."""
    return issued_count(app.extensions["gateway"].get().storage.engine)


def enroll(client: FlaskClient, cn: str) -> x509.Certificate:
    """A certificate for CN=`cn` from simpleenroll with alice's password."""
    response = post(client, "simpleenroll", b64_csr(make_csr(ec_key(), subject(cn))), headers=basic())
    assert response.status_code == 200, response.get_data(as_text=True)
    (cert,) = certs_of(response.get_data())
    return cert


def assert_refused(response: TestResponse, status: int) -> None:
    """The refusal's status, as a short text/plain answer."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"


# -- serverkeygen: a client certificate enrolls its own subject only --------------------------------


def test_serverkeygen_with_a_client_certificate_is_for_its_own_subject_only(est: FlaskClient, est_app: Flask) -> None:
    holder = enroll(est, "keygen-holder")
    before = count(est_app)
    other = post(est, "serverkeygen", b64_csr(make_csr(ec_key(), subject("keygen-admin"))), environ=tls(holder))
    assert_refused(other, 403)
    assert count(est_app) == before
    # The same request for the holder's own subject is served: the refusal is about the subject.
    own = post(est, "serverkeygen", b64_csr(make_csr(ec_key(), subject("keygen-holder"))), environ=tls(holder))
    assert own.status_code == 200, own.get_data(as_text=True)
    (_key_part, (_type, certs_der)) = parts(own)
    assert certs_der
    assert count(est_app) == before + 1


# -- fullcmc: no revocation of a legacy CA's certificate ---------------------------------------------


def legacy_certificate(serial: int, cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A legacy CA's client certificate for CN=`cn` with the given serial: (certificate, its key, the CA)."""
    now = dt.datetime.now(dt.UTC)
    ca = create_root_ca(generate_private_key(KeyType.P256), subject("Legacy MDM CA"), 3650, now)
    key = ec_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject(cn))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key, ca.certificate


def import_legacy(runner: CliRunner, data_dir: Path, tmp_path: Path, *certs: x509.Certificate) -> None:
    """`gateway migrate import --from pem`, with a migration window open for 30 days."""
    bundle = tmp_path / "legacy.pem"
    bundle.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs))
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).date().isoformat()
    done = runner.invoke(
        main,
        ["migrate", "import", "--from", "pem", str(bundle), "--trust-until", until, "--data-dir", str(data_dir)],
    )
    assert done.exit_code == 0, done.output


def revoked_serials(client: FlaskClient) -> set[int]:
    """The serials on the CRL the gateway serves."""
    reply = client.get("/crl/ca.crl")
    assert reply.status_code == 200
    return {entry.serial_number for entry in x509.load_der_x509_crl(reply.data)}


def test_fullcmc_does_not_revoke_a_legacy_ca_certificate(
    est: FlaskClient, est_app: Flask, runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    """The legacy certificate shares its serial with one of ours: revoking "its" serial here would
    revoke a bystander's certificate."""
    bystander = enroll(est, "bystander")
    legacy, legacy_key, legacy_ca = legacy_certificate(bystander.serial_number, "legacy-device")
    import_legacy(runner, data_dir, tmp_path, legacy_ca, legacy)
    store = est_app.extensions["gateway"].get().storage
    record = store.certificates.certificate_by_fingerprint(legacy.fingerprint(hashes.SHA256()).hex())
    assert record is not None and record.status == "valid"
    # The legacy certificate authenticates (it may enroll its own subject), so the refusal below is
    # the revocation's own rule and not a failed authentication.
    control = post(est, "simpleenroll", b64_csr(make_csr(ec_key(), subject("legacy-device"))), environ=tls(legacy))
    assert control.status_code == 200, control.get_data(as_text=True)
    before = count(est_app)

    refused = post(est, "fullcmc", cmc_revocation(legacy, legacy_key, legacy_ca), environ=tls(legacy))
    assert_refused(refused, 403)
    assert bystander.serial_number not in revoked_serials(est)
    for cert in (bystander, legacy):
        kept = store.certificates.certificate_by_fingerprint(cert.fingerprint(hashes.SHA256()).hex())
        assert kept is not None and kept.status == "valid", cert.subject
    assert count(est_app) == before


# -- a client certificate that is not yet valid --------------------------------------------------------


@pytest.mark.parametrize("operation", ["simplereenroll", "simpleenroll", "serverkeygen"])
def test_a_client_certificate_that_is_not_yet_valid_authenticates_nothing(
    est: FlaskClient, est_app: Flask, clock: SettableClock, operation: str
) -> None:
    clock.advance(days=2)  # issued while the CA's clock runs two days ahead
    early = enroll(est, "early-device")
    clock.advance(days=-2)
    assert early.not_valid_before_utc > clock()
    before = count(est_app)
    body = b64_csr(make_csr(ec_key(), subject("early-device")))
    assert_refused(post(est, operation, body, environ=tls(early)), 403)
    assert count(est_app) == before
    clock.advance(days=2, minutes=1)  # once valid, the same request is served
    served = post(est, operation, body, environ=tls(early))
    assert served.status_code == 200, served.get_data(as_text=True)
    assert count(est_app) == before + 1


# -- 413 ------------------------------------------------------------------------------------------------


def padded(body: bytes, size: int) -> bytes:
    """`body` followed by line breaks up to `size` bytes: still a readable base64 request."""
    assert len(body) <= size
    return body + b"\n" * (size - len(body))


def test_a_body_of_exactly_the_limit_is_read(est: FlaskClient, est_app: Flask) -> None:
    before = count(est_app)
    body = padded(b64_csr(make_csr(ec_key(), subject("at-the-limit"))), MAX_REQUEST_BODY)
    response = post(est, "simpleenroll", body, headers=basic())
    assert response.status_code == 200, response.get_data(as_text=True)
    assert count(est_app) == before + 1


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("size", [MAX_REQUEST_BODY + 1, 512 * 1024], ids=["limit+1", "512KiB"])
def test_a_body_over_the_limit_is_413(est: FlaskClient, est_app: Flask, operation: str, size: int) -> None:
    before = count(est_app)
    body = padded(base64.encodebytes(make_csr(ec_key(), subject("too-big")).public_bytes(Encoding.DER)), size)
    response = post(est, operation, body, headers=basic())
    assert_refused(response, 413)
    assert count(est_app) == before
