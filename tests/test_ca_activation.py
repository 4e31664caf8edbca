"""CA rollover after the prepare step: the RFC 4210 §4.4 link certificates, EST /cacerts (RFC 7030
§4.1.3), `gateway ca activate` (now and at a set time, followed by a running app without a restart),
the previous CA's CRL, OCSP and revocations, renewals into the new CA, `gateway ca retire`, a second
rollover into the freed slot, and the refusals of each command. Through the Flask app and the CLI;
tests/test_rollover_serve.py does it through `gateway serve`."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from gateway.app import create_app
from gateway.config import load_config
from gateway.runtime import Gateway, GatewayLoader
from shared_ca.authority import fingerprint
from shared_ca.ca_material import create_root_ca
from shared_ca.ca_rollover import ca_roles, cross_certificate
from shared_ca.errors import KeyMaterialError
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.est_users import hash_password
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import certificates
from tests.support import SettableClock, ec_key, make_csr, subject
from tests.test_cli import assert_clean_failure, gw, ok
from tests.test_est_views import EST, HTTPS, PASSWORD, basic, certs_of, post, tls
from tests.test_rollover import certs_of as degenerate_certs

RFC3339 = "%Y-%m-%dT%H:%M:%S+00:00"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def app(data_dir: Path) -> Iterator[Flask]:
    """One app for the whole test: it follows the CLI's changes by GatewayLoader.refresh, as a worker of
    `gateway serve` does in its trust watch, never by being created again."""
    application = create_app(load_config(data_dir, environ={}))
    gateway = loader_of(application).get()
    now = dt.datetime.now(dt.UTC)
    gateway.storage.est_users.add_est_user(
        "alice", hash_password(PASSWORD), kind="password", created_by="test", now=now, labels=("default",)
    )
    yield application
    gateway.storage.engine.dispose()


def loader_of(application: Flask) -> GatewayLoader:
    loader: GatewayLoader = application.extensions["gateway"]
    return loader


def follow(application: Flask) -> Gateway:
    """What the trust watch does every few seconds."""
    loader = loader_of(application)
    loader.refresh(dt.datetime.now(dt.UTC))
    return loader.get()


def pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def enroll(client: FlaskClient, cn: str) -> x509.Certificate:
    body = base64.b64encode(make_csr(ec_key(), subject(cn)).public_bytes(Encoding.DER))
    response = post(client, "simpleenroll", body, headers=basic())
    assert response.status_code == 200, response.get_data(as_text=True)
    (cert,) = certs_of(response.get_data())
    return cert


def reenroll(client: FlaskClient, old: x509.Certificate) -> x509.Certificate:
    body = base64.b64encode(make_csr(ec_key(), old.subject).public_bytes(Encoding.DER))
    response = post(client, "simplereenroll", body, environ=tls(old))
    assert response.status_code == 200, response.get_data(as_text=True)
    (cert,) = certs_of(response.get_data())
    return cert


def cacerts(client: FlaskClient) -> list[x509.Certificate]:
    response = client.get(f"{EST}/cacerts", base_url=HTTPS)
    assert response.status_code == 200
    return certs_of(response.get_data())


def links(
    served: list[x509.Certificate], old_ca: x509.Certificate, new_ca: x509.Certificate
) -> tuple[x509.Certificate, x509.Certificate]:
    """NewWithOld and OldWithNew of a /cacerts reply, which must hold exactly both roots and both."""
    assert len(served) == 4 and old_ca in served and new_ca in served
    new_with_old = [c for c in served if c.public_key() == new_ca.public_key() and c != new_ca]
    old_with_new = [c for c in served if c.public_key() == old_ca.public_key() and c != old_ca]
    assert len(new_with_old) == 1 and len(old_with_new) == 1
    return new_with_old[0], old_with_new[0]


def ocsp_status(client: FlaskClient, cert: x509.Certificate, issuer: x509.Certificate) -> ocsp.OCSPResponse:
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
    response = client.post(
        "/ocsp", data=request.public_bytes(Encoding.DER), headers={"Content-Type": "application/ocsp-request"}
    )
    assert response.status_code == 200
    return ocsp.load_der_ocsp_response(response.data)


def crl_of(client: FlaskClient, name: str) -> x509.CertificateRevocationList:
    response = client.get(f"/crl/{name}.crl")
    assert response.status_code == 200, name
    return x509.load_der_x509_crl(response.data)


def crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return crl.is_signature_valid(key)


def kinds(application: Flask) -> dict[str, str]:
    return {i.name: i.kind for i in loader_of(application).get().storage.issuers.list_issuers()}


def audit_actions(application: Flask) -> list[str]:
    return [r.action for r in loader_of(application).get().storage.audit.audit_events(limit=50)]


def verify_chain(
    tmp_path: Path, anchor: x509.Certificate, intermediate: x509.Certificate, leaf: x509.Certificate
) -> None:
    """OpenSSL builds and checks leaf → intermediate → anchor, the anchor alone trusted."""
    files = {}
    for name, cert in (("anchor", anchor), ("intermediate", intermediate), ("leaf", leaf)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(Encoding.PEM))
    done = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(files["anchor"]),
            "-untrusted",
            str(files["intermediate"]),
            str(files["leaf"]),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the whole rollover in one app, no restart ------------------------------------------------------


def test_rollover_activate_renew_and_the_old_ca_winding_down(
    runner: CliRunner, data_dir: Path, app: Flask, tmp_path: Path
) -> None:
    client = app.test_client()
    old_ca = pem(data_dir / "ca" / "ca.crt")
    before = enroll(client, "device-a")
    before.verify_directly_issued_by(old_ca)
    assert cacerts(client) == [old_ca]  # no rollover under way: the chain alone

    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    follow(app)
    new_ca = pem(data_dir / "ca-next" / "ca.crt")
    # RFC 7030 §4.1.3: the current root, NewWithNew, NewWithOld and OldWithNew (a DER SET: in no order).
    new_with_old, old_with_new = links(cacerts(client), old_ca, new_ca)
    assert new_with_old.public_key() == new_ca.public_key() and new_with_old.issuer == old_ca.subject
    new_with_old.verify_directly_issued_by(old_ca)
    assert old_with_new.public_key() == old_ca.public_key()
    old_with_new.verify_directly_issued_by(new_ca)
    for link, signer in ((new_with_old, old_ca), (old_with_new, new_ca)):
        aki = link.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        signer_ski = signer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert aki == signer_ski
        assert link.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert enroll(client, "device-b").issuer == old_ca.subject  # still issuing from the old CA
    assert loader_of(app).get().authority.certificate == old_ca

    activated = ok(gw(runner, data_dir, "ca", "activate"))
    assert "issuing CA ca-next" in activated.stdout and "previous   ca" in activated.stdout
    assert kinds(app) == {"ca": "previous", "ca-next": "ca"}
    assert "issuer.activated" in audit_actions(app)
    gateway = follow(app)
    assert gateway.authority.certificate == new_ca

    # SCEP GetCACert: the new RA and CA; GetNextCACert: nothing prepared any more.
    ca_certs = degenerate_certs(client.get("/scep", query_string={"operation": "GetCACert"}).data)
    assert ca_certs == [pem(data_dir / "ra-next" / "ra.crt"), new_ca]
    assert client.get("/scep", query_string={"operation": "GetNextCACert"}).status_code == 404
    # EST /cacerts: the new root, OldWithOld, OldWithNew and NewWithOld (RFC 7030 §4.1.3).
    assert links(cacerts(client), old_ca, new_ca) == (new_with_old, old_with_new)

    # A certificate of the old CA renews into the new one; a new enrollment is the new CA's.
    renewed = reenroll(client, before)
    renewed.verify_directly_issued_by(new_ca)
    assert renewed.subject == before.subject
    assert enroll(client, "device-c").issuer == new_ca.subject
    enroll(client, "device-c-check").verify_directly_issued_by(new_ca)
    # Both chains verify from either root through the link certificates (OpenSSL).
    verify_chain(tmp_path, old_ca, new_with_old, renewed)
    verify_chain(tmp_path, new_ca, old_with_new, before)

    # The old CA keeps publishing its CRL and answering OCSP; its certificate is still served.
    old_crl = crl_of(client, "ca")
    assert crl_signed_by(old_crl, old_ca) and old_crl.issuer == old_ca.subject
    assert crl_signed_by(crl_of(client, "ca-next"), new_ca)
    assert ocsp_status(client, before, old_ca).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert client.get("/ca/ca.crt").data == old_ca.public_bytes(Encoding.DER)
    assert client.get("/ca/ca-next.crt").data == new_ca.public_bytes(Encoding.DER)
    assert ocsp_status(client, renewed, new_ca).certificate_status == ocsp.OCSPCertStatus.GOOD

    # An old-CA certificate is still revoked by the CLI, onto the old CA's CRL and OCSP.
    revoked = ok(gw(runner, data_dir, "cert", "revoke", f"{before.serial_number:x}", "--reason", "superseded"))
    assert "published" in revoked.stdout
    assert ocsp_status(client, before, old_ca).certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert crl_of(client, "ca").get_revoked_certificate_by_serial_number(before.serial_number) is not None
    assert crl_of(client, "ca-next").get_revoked_certificate_by_serial_number(before.serial_number) is None
    published = ok(gw(runner, data_dir, "crl", "publish"))
    assert "of previous CA ca published" in published.stdout

    shown = json.loads(ok(gw(runner, data_dir, "ca", "show", "--format", "json")).stdout)
    assert shown["issuer"] == "ca-next" and shown["previous_ca"] == "ca"
    assert "next_ca" not in shown


def test_the_ocsp_answer_for_an_old_certificate_is_signed_by_the_old_ca(
    runner: CliRunner, data_dir: Path, app: Flask
) -> None:
    client = app.test_client()
    old_ca = pem(data_dir / "ca" / "ca.crt")
    before = enroll(client, "device-o")
    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    ok(gw(runner, data_dir, "ca", "activate"))
    follow(app)
    answer = ocsp_status(client, before, old_ca)
    assert (
        answer.responder_key_hash == old_ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    old_key = old_ca.public_key()
    assert isinstance(old_key, ec.EllipticCurvePublicKey)
    assert answer.signature_hash_algorithm is not None
    old_key.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(answer.signature_hash_algorithm))


# -- activation at a set time ------------------------------------------------------------------------


def test_a_scheduled_activation_switches_every_request_at_its_time(
    runner: CliRunner, data_dir: Path, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import runtime

    client = app.test_client()
    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    old_ca, new_ca = pem(data_dir / "ca" / "ca.crt"), pem(data_dir / "ca-next" / "ca.crt")
    at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    scheduled = ok(gw(runner, data_dir, "ca", "activate", "--at", at.strftime(RFC3339)))
    assert f"becomes the issuing CA at {at:%Y-%m-%d %H:%M:%SZ}" in scheduled.stdout
    assert kinds(app) == {"ca": "ca", "ca-next": "next"}
    assert "issuer.activation_scheduled" in audit_actions(app)
    shown = json.loads(ok(gw(runner, data_dir, "ca", "show", "--format", "json")).stdout)
    assert shown["next_ca_activates_at"] == at.isoformat()

    clock = SettableClock()
    monkeypatch.setattr(runtime, "utcnow", clock)
    gateway = follow(app)
    assert gateway.switch_at == at and gateway.authority.certificate == old_ca
    assert enroll(client, "before-the-switch").issuer == old_ca.subject

    clock.advance(hours=1, seconds=1)
    # The first request after the time switches, before any trust-watch round wrote the change.
    switched = enroll(client, "after-the-switch")
    switched.verify_directly_issued_by(new_ca)
    assert kinds(app) == {"ca": "ca", "ca-next": "next"}  # the rows follow in the next round
    loader_of(app).refresh(clock())
    assert kinds(app) == {"ca": "previous", "ca-next": "ca"}
    records = loader_of(app).get().storage.audit.audit_events(limit=10)
    activation = next(r for r in records if r.action == "issuer.activated")
    assert activation.actor == "ca-activation"
    loader_of(app).refresh(clock())  # a second round records nothing more
    assert [r.action for r in loader_of(app).get().storage.audit.audit_events(limit=10)].count("issuer.activated") == 1


def test_a_rescheduled_activation_replaces_the_first_time(runner: CliRunner, data_dir: Path) -> None:
    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    later = soon + dt.timedelta(days=6)
    ok(gw(runner, data_dir, "ca", "activate", "--at", soon.strftime(RFC3339)))
    ok(gw(runner, data_dir, "ca", "activate", "--at", later.strftime(RFC3339)))
    shown = json.loads(ok(gw(runner, data_dir, "ca", "show", "--format", "json")).stdout)
    assert shown["next_ca_activates_at"] == later.isoformat()


# -- refusals ---------------------------------------------------------------------------------------


def test_activate_without_a_next_ca_is_refused(runner: CliRunner, data_dir: Path) -> None:
    assert_clean_failure(gw(runner, data_dir, "ca", "activate"), "no next CA to activate", "gateway ca rollover")


@pytest.mark.parametrize(
    ("at", "message"),
    [
        pytest.param("yesterday", "--at", id="fail/not-a-time"),
        pytest.param("2001-01-01T00:00:00Z", "is in the past", id="fail/past"),
        pytest.param("2999-01-01T00:00:00Z", "outside the next CA's validity", id="fail/after-next-ca"),
    ],
)
def test_activate_at_a_bad_time_is_refused(runner: CliRunner, data_dir: Path, at: str, message: str) -> None:
    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    assert_clean_failure(gw(runner, data_dir, "ca", "activate", "--at", at), message)
    shown = json.loads(ok(gw(runner, data_dir, "ca", "show", "--format", "json")).stdout)
    assert shown["next_ca_activates_at"] == "not scheduled"


def test_activate_refused_on_a_node_without_the_next_ca_files(runner: CliRunner, data_dir: Path) -> None:
    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    for name in ("ca-next/ca.crt", "ca-next/ca.key", "ra-next/ra.crt", "ra-next/ra.key"):
        (data_dir / name).unlink()
    assert_clean_failure(gw(runner, data_dir, "ca", "activate"), "no files of the next CA 'ca-next'", "copy them")


def test_activate_refused_when_the_next_key_does_not_open(runner: CliRunner, data_dir: Path) -> None:
    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    other = ec_key().private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (data_dir / "ca-next" / "ca.key").write_bytes(other)
    assert_clean_failure(gw(runner, data_dir, "ca", "activate"), "does not match")


def test_retire_refusals_and_success(runner: CliRunner, data_dir: Path) -> None:
    assert_clean_failure(gw(runner, data_dir, "ca", "retire", "nosuch"), "no issuer 'nosuch'")
    assert_clean_failure(gw(runner, data_dir, "ca", "retire", "ca"), "is 'ca'", "only a previous CA")
    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    ok(gw(runner, data_dir, "ca", "activate"))
    # The old CA's RA (and TLS) certificates are still valid: its CRL is needed until they expire.
    assert_clean_failure(gw(runner, data_dir, "ca", "retire", "ca"), "still has certificates valid until")
    expire_certificates_of(data_dir, "ca")
    retired = ok(gw(runner, data_dir, "ca", "retire", "ca"))
    assert "retired    ca (its last certificate expired" in retired.stdout
    shown = json.loads(ok(gw(runner, data_dir, "ca", "show", "--format", "json")).stdout)
    assert "previous_ca" not in shown


def expire_certificates_of(data_dir: Path, issuer_name: str) -> None:
    config = load_config(data_dir, environ={})
    engine = create_store_engine(config.database_url)
    try:
        issuer = Storage.open(engine).issuers.issuer_by_name(issuer_name)
        assert issuer is not None
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        with engine.begin() as conn:
            conn.execute(update(certificates).where(certificates.c.issuer_id == issuer.id).values(not_after=past))
    finally:
        engine.dispose()


# -- the next rollover ------------------------------------------------------------------------------


def test_a_second_rollover_goes_into_the_slot_the_retired_ca_frees(
    runner: CliRunner, data_dir: Path, app: Flask
) -> None:
    client = app.test_client()
    first = pem(data_dir / "ca" / "ca.crt")
    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    ok(gw(runner, data_dir, "ca", "activate"))
    second = pem(data_dir / "ca-next" / "ca.crt")
    # The ca/ slot holds the previous CA, which still winds down: no rollover into it.
    assert_clean_failure(
        gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256", "--force"),
        "holds the previous CA 'ca'",
        "gateway ca retire ca",
    )
    expire_certificates_of(data_dir, "ca")
    ok(gw(runner, data_dir, "ca", "retire", "ca"))
    result = ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256", "--ca-subject", "CN=Third CA"))
    assert "ca-next-2" in result.stdout
    third = pem(data_dir / "ca" / "ca.crt")
    assert third.subject.rfc4514_string() == "CN=Third CA"
    moved = list(data_dir.glob("retired-ca-*"))
    assert len(moved) == 1 and pem(moved[0] / "ca" / "ca.crt") == first  # keys are never deleted
    assert (moved[0] / "ca" / "ca.key").is_file()

    gateway = follow(app)
    assert gateway.authority.certificate == second
    assert {second, third} <= set(cacerts(client))
    next_reply = client.get("/scep", query_string={"operation": "GetNextCACert"})
    assert next_reply.status_code == 200
    ok(gw(runner, data_dir, "ca", "activate"))
    gateway = follow(app)
    assert gateway.authority.certificate == third
    enroll(client, "third-gen").verify_directly_issued_by(third)
    roles = ca_roles(gateway.storage.issuers.list_issuers(), dt.datetime.now(dt.UTC))
    assert [p.name for p in roles.previous] == ["ca-next"]
    assert {i.name: i.kind for i in gateway.storage.issuers.list_issuers()} == {
        "ca": "retired",
        "ca-next": "previous",
        "ca-next-2": "ca",
    }


# -- the link certificates on their own -------------------------------------------------------------


def test_a_cross_certificate_keeps_the_subject_ca_and_ends_with_the_earlier_ca() -> None:
    now = dt.datetime.now(dt.UTC)
    key_old, key_new = ec_key(), ec_key()
    old = create_root_ca(key_old, x509.Name.from_rfc4514_string("CN=Old"), 400, now - dt.timedelta(days=300))
    new = create_root_ca(key_new, x509.Name.from_rfc4514_string("CN=New"), 3650, now)
    link = cross_certificate(new.certificate, old.certificate, key_old, now)
    assert link.subject == new.certificate.subject and link.issuer == old.certificate.subject
    assert link.not_valid_after_utc == old.certificate.not_valid_after_utc
    assert fingerprint(link) != fingerprint(new.certificate)
    link.verify_directly_issued_by(old.certificate)
    expired = create_root_ca(key_old, x509.Name.from_rfc4514_string("CN=Gone"), 1, now - dt.timedelta(days=10))
    with pytest.raises(KeyMaterialError, match="has expired"):
        cross_certificate(new.certificate, expired.certificate, key_old, now)


def test_activate_refused_with_separate_ra_keys(runner: CliRunner, data_dir: Path) -> None:
    ok(gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256"))
    env = {"GATEWAY_RA_ENCRYPTION_CERT": "ra/encryption.crt", "GATEWAY_RA_ENCRYPTION_KEY": "ra/encryption.key"}
    assert_clean_failure(gw(runner, data_dir, "ca", "activate", env=env), "ra.encryption_cert is set")
