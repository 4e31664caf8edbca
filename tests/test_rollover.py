"""`gateway ca rollover` and GetNextCACert (RFC 8894 §4.7): the next CA and RA, their files and
issuer rows, GetCACaps, the RA-signed reply (our parser and OpenSSL), `ca show`, --force, refusals."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto import cms
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask import Flask
from flask.testing import FlaskClient

from gateway.app import create_app
from gateway.ca_slots import SLOTS
from gateway.cli import main
from gateway.config import load_config
from gateway.rollover import RolloverError, RolloverOptions, _next_keys, rollover
from gateway.runtime import Gateway
from scep.client_messages import CertRepError, parse_next_ca_reply
from shared_ca.authority import fingerprint
from shared_ca.errors import CAError
from shared_ca.keys import KeyType
from shared_ca.kms import key_reference
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.repositories import Storage
from tests.test_cli import gw, ok

NEXT_FILES = ("ca-next/ca.crt", "ca-next/ca.key", "ra-next/ra.crt", "ra-next/ra.key")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def roll(runner: CliRunner, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Result:
    return gw(runner, data_dir, "ca", "rollover", "--ca-key-type", "p256", *extra, env=env)


@pytest.fixture
def open_app(data_dir: Path) -> Iterator[list[Flask]]:
    """Apps opened on the data directory (each a fresh start, as after a restart), closed at the end."""
    apps: list[Flask] = []
    yield apps
    for application in apps:
        application.extensions["gateway"].get().storage.engine.dispose()


def fresh_client(data_dir: Path, apps: list[Flask]) -> FlaskClient:
    application = create_app(load_config(data_dir, environ={}))
    apps.append(application)
    return application.test_client()


def certs_of(der: bytes) -> list[x509.Certificate]:
    with warnings.catch_warnings():  # certificates in the order sent, not DER-sorted (BER SET OF)
        warnings.filterwarnings("ignore", message="PKCS#7 certificates could not be parsed", category=UserWarning)
        return pkcs7.load_der_pkcs7_certificates(der)


def current_ra(client: FlaskClient) -> x509.Certificate:
    response = client.get("/scep", query_string={"operation": "GetCACert"})
    assert response.status_code == 200
    return certs_of(response.data)[0]


def pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def issuers(data_dir: Path) -> dict[str, str]:
    """Issuer name → kind, read from the data directory's database."""
    url = load_config(data_dir, environ={}).database_url
    engine = create_store_engine(url)
    try:
        return {i.name: i.kind for i in Storage.open(engine).issuers.list_issuers()}
    finally:
        engine.dispose()


def test_rollover_writes_next_ca_and_ra(runner: CliRunner, data_dir: Path) -> None:
    current = pem(data_dir / "ca" / "ca.crt")
    result = ok(roll(runner, data_dir))
    assert "not active yet" in result.stdout
    for name in NEXT_FILES:
        path = data_dir / name
        assert path.is_file(), name
        assert stat.S_IMODE(path.stat().st_mode) == (0o600 if name.endswith(".key") else 0o644), name
    for directory in ("ca-next", "ra-next"):
        assert stat.S_IMODE((data_dir / directory).stat().st_mode) == 0o700, directory
    assert not (data_dir / ".rollover-staging").exists()

    next_ca = pem(data_dir / "ca-next" / "ca.crt")
    next_ra = pem(data_dir / "ra-next" / "ra.crt")
    assert next_ca.subject == current.subject  # default: the current subject
    assert fingerprint(next_ca) != fingerprint(current)
    assert next_ca.issuer == next_ca.subject
    assert next_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(next_ca.public_key(), ec.EllipticCurvePublicKey)
    # The RA: RSA-2048, issued (and verifiably signed) by the next CA, with init's RA profile.
    assert next_ra.issuer == next_ca.subject
    next_ra.verify_directly_issued_by(next_ca)
    ra_key = next_ra.public_key()
    assert isinstance(ra_key, rsa.RSAPublicKey) and ra_key.key_size == 2048
    usage = next_ra.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    init_ra = pem(data_dir / "ra" / "ra.crt")
    eku = next_ra.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == list(init_ra.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ExtendedKeyUsageOID.CLIENT_AUTH not in eku
    # Keys match their certificates and are unencrypted like init's (no passphrase configured).
    ca_key = serialization.load_pem_private_key((data_dir / "ca-next" / "ca.key").read_bytes(), None)
    assert ca_key.public_key() == next_ca.public_key()

    assert issuers(data_dir) == {"ca": "ca", "ca-next": "next"}
    # The RA certificate is recorded under the next issuer.
    url = load_config(data_dir, environ={}).database_url
    engine = create_store_engine(url)
    try:
        store = Storage.open(engine)
        issuer = store.issuers.issuer_by_name("ca-next")
        assert issuer is not None and issuer.fingerprint_sha256 == fingerprint(next_ca)
        assert store.certificates.count_certificates(issuer.id) == 1
        assert store.certificates.certificate_by_fingerprint(fingerprint(next_ra)) is not None
    finally:
        engine.dispose()


def test_rollover_options_subject_key_and_days(runner: CliRunner, data_dir: Path) -> None:
    ok(roll(runner, data_dir, "--ca-subject", "CN=Gateway CA 2027,O=Example", "--ca-days", "400"))
    next_ca = pem(data_dir / "ca-next" / "ca.crt")
    assert next_ca.subject.rfc4514_string() == "CN=Gateway CA 2027,O=Example"
    lifetime = next_ca.not_valid_after_utc - next_ca.not_valid_before_utc
    assert 399 < lifetime.days <= 400
    assert pem(data_dir / "ra-next" / "ra.crt").subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "Gateway CA 2027 SCEP RA"
    )
    bad = roll(runner, data_dir, "--force", "--ca-subject", "nonsense")
    assert bad.exit_code != 0 and "--ca-subject" in bad.output


def test_second_rollover_refused_without_force(runner: CliRunner, data_dir: Path) -> None:
    ok(roll(runner, data_dir))
    first = (data_dir / "ca-next" / "ca.crt").read_bytes()
    refused = roll(runner, data_dir)
    assert refused.exit_code == 1
    assert "a next CA already exists" in refused.output and "--force" in refused.output
    assert "Traceback" not in refused.output
    assert (data_dir / "ca-next" / "ca.crt").read_bytes() == first

    result = ok(roll(runner, data_dir, "--force"))
    assert "replaced the previous next CA" in result.stderr
    second = (data_dir / "ca-next" / "ca.crt").read_bytes()
    assert second != first
    # The old files are moved aside, never deleted; the old issuer is retired, the new one numbered.
    backups = list(data_dir.glob("replaced-next-*"))
    assert len(backups) == 1
    assert (backups[0] / "ca-next" / "ca.crt").read_bytes() == first
    assert (backups[0] / "ca-next" / "ca.key").is_file()
    assert issuers(data_dir) == {"ca": "ca", "ca-next": "retired", "ca-next-2": "next"}


def test_refused_when_only_the_database_knows_a_next_ca(runner: CliRunner, data_dir: Path) -> None:
    """Another node rolled over on the shared database: this node's missing files do not hide it."""
    ok(roll(runner, data_dir))
    for name in NEXT_FILES:
        (data_dir / name).unlink()
    refused = roll(runner, data_dir)
    assert refused.exit_code == 1 and "issuer 'ca-next'" in refused.output


def test_failed_rollover_leaves_nothing_behind(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.rollover as module

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "_install", broken)
    with pytest.raises(OSError, match="No space"):
        rollover(load_config(data_dir, environ={}), RolloverOptions(ca_key_type=KeyType.P256))
    for name in NEXT_FILES:
        assert not (data_dir / name).exists(), name
    assert not (data_dir / ".rollover-staging").exists()
    assert issuers(data_dir) == {"ca": "ca", "ca-next": "retired"}
    monkeypatch.undo()
    # Nothing half-written blocks the next attempt (no --force needed).
    ok(roll(runner, data_dir))
    assert issuers(data_dir)["ca-next-2"] == "next"


def test_wrong_passphrase_refused_before_anything_is_written(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "enc"
    secret = tmp_path / "pw"
    secret.write_text("correct horse\n")
    ok(
        runner.invoke(
            main,
            ["init", "--data-dir", str(data_dir), "--ca-key-type", "p256", "--passphrase-file", str(secret)],
        )
    )
    refused = roll(runner, data_dir, env={"GATEWAY_KEY_PASSPHRASE": "wrong"})
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "passphrase" in refused.output.lower(), refused.output
    assert not (data_dir / "ca-next").exists()
    ok(roll(runner, data_dir))  # the passphrase file from the config
    key = (data_dir / "ra-next" / "ra.key").read_bytes()
    assert b"ENCRYPTED" in key
    serialization.load_pem_private_key(key, b"correct horse")
    serialization.load_pem_private_key((data_dir / "ca-next" / "ca.key").read_bytes(), b"correct horse")


def test_get_next_ca_cert_before_and_after_rollover(runner: CliRunner, data_dir: Path, open_app: list[Flask]) -> None:
    before = fresh_client(data_dir, open_app)
    caps = before.get("/scep", query_string={"operation": "GetCACaps"}).get_data(as_text=True)
    assert "GetNextCACert" not in caps.split()
    missing = before.get("/scep", query_string={"operation": "GetNextCACert"})
    assert missing.status_code == 404
    assert missing.get_data(as_text=True).strip() == "no next CA certificate is configured"

    ok(roll(runner, data_dir))
    # An app whose loader is not refreshed keeps serving what it loaded (`gateway serve` refreshes every
    # few seconds: tests/test_live_trust_serve.py, GatewayLoader.refresh); a new app offers the next CA.
    assert "GetNextCACert" not in before.get("/scep", query_string={"operation": "GetCACaps"}).get_data(as_text=True)
    after = fresh_client(data_dir, open_app)
    for path in ("/scep", "/scep/default", "/cgi-bin/pkiclient.exe"):
        lines = after.get(path, query_string={"operation": "GetCACaps"}).get_data(as_text=True).split()
        assert "GetNextCACert" in lines, path
        assert "SCEPStandard" in lines and "POSTPKIOperation" in lines

    response = after.get("/scep", query_string={"operation": "GetNextCACert"})
    assert response.status_code == 200
    assert response.mimetype == "application/x-x509-next-ca-cert"
    ra = current_ra(after)
    assert ra == pem(data_dir / "ra" / "ra.crt")  # signed by the CURRENT RA
    certs = parse_next_ca_reply(response.data, ra_cert=ra)
    next_ca, next_ra = pem(data_dir / "ca-next" / "ca.crt"), pem(data_dir / "ra-next" / "ra.crt")
    assert certs == [next_ra, next_ca]

    # Structure: SignedData, SHA-256, eContentType id-data holding a degenerate certs-only PKCS#7.
    info = cms.ContentInfo.load(response.data)
    signed = info["content"]
    assert info["content_type"].native == "signed_data"
    assert signed["encap_content_info"]["content_type"].native == "data"
    assert signed["signer_infos"][0]["digest_algorithm"]["algorithm"].native == "sha256"
    inner = signed["encap_content_info"]["content"].native
    assert certs_of(inner) == [next_ra, next_ca]
    assert len(cms.ContentInfo.load(inner)["content"]["signer_infos"]) == 0
    assert certs_of(response.data)[0] == ra  # the signer's certificate travels with the reply

    # Another key cannot pass for the RA.
    with pytest.raises(CertRepError):
        parse_next_ca_reply(response.data, ra_cert=next_ra)


@pytest.mark.parametrize("command", ["cms", "smime"])
def test_openssl_verifies_the_reply(
    runner: CliRunner, data_dir: Path, open_app: list[Flask], tmp_path: Path, command: str
) -> None:
    ok(roll(runner, data_dir))
    client = fresh_client(data_dir, open_app)
    reply = tmp_path / "next.p7"
    reply.write_bytes(client.get("/scep", query_string={"operation": "GetNextCACert"}).data)
    inner = tmp_path / "inner.der"
    # -noverify skips the chain (the RA's EKU is no S/MIME purpose); the signature is still checked.
    done = subprocess.run(
        ["openssl", command, "-verify", "-noverify", "-inform", "DER", "-in", str(reply), "-out", str(inner)],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"Verification successful" in done.stderr
    assert certs_of(inner.read_bytes())[-1] == pem(data_dir / "ca-next" / "ca.crt")
    # With the signer pinned to the current RA certificate.
    signer = tmp_path / "signer.pem"
    subprocess.run(
        ["openssl", command, "-verify", "-noverify", "-inform", "DER", "-in", str(reply), "-signer", str(signer)],
        capture_output=True,
        check=True,
    )
    assert pem(signer) == pem(data_dir / "ra" / "ra.crt")
    # A flipped byte in the signed content fails verification.
    tampered = bytearray(reply.read_bytes())
    position = bytes(tampered).find(pem(data_dir / "ca-next" / "ca.crt").public_bytes(Encoding.DER)) + 40
    tampered[position] ^= 0x01
    reply.write_bytes(bytes(tampered))
    bad = subprocess.run(
        ["openssl", command, "-verify", "-noverify", "-inform", "DER", "-in", str(reply)],
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0


def test_ca_show_lists_the_next_ca(runner: CliRunner, data_dir: Path) -> None:
    before = json.loads(ok(gw(runner, data_dir, "ca", "show", "--format", "json")).stdout)
    assert not any(k.startswith("next_") for k in before)
    ok(roll(runner, data_dir, "--ca-subject", "CN=Next CA"))
    shown = json.loads(ok(gw(runner, data_dir, "ca", "show", "--format", "json")).stdout)
    assert shown["subject"] != "CN=Next CA"  # the current CA still issues
    assert shown["next_ca"] == "ca-next"
    assert shown["next_ca_subject"] == "CN=Next CA"
    assert shown["next_ca_sha256"] == fingerprint(pem(data_dir / "ca-next" / "ca.crt"))
    assert shown["next_ra_subject"] == "CN=Next CA SCEP RA"
    assert shown["next_ca_activates_at"] == "not scheduled" and shown["next_ca_served"] is True
    table = ok(gw(runner, data_dir, "ca", "show")).stdout
    assert "next_ca_subject" in table and "CN=Next CA" in table


def test_next_ca_is_trusted_for_tls_client_certificates(
    runner: CliRunner, data_dir: Path, open_app: list[Flask]
) -> None:
    ok(roll(runner, data_dir))
    fresh_client(data_dir, open_app)
    gateway: Gateway = open_app[-1].extensions["gateway"].get()
    trusted = gateway.trusted_client_issuers(gateway.authority.clock())
    assert pem(data_dir / "ca-next" / "ca.crt") in trusted
    ok(roll(runner, data_dir, "--force"))  # the replaced next CA is trusted no more
    fresh_client(data_dir, open_app)
    gateway = open_app[-1].extensions["gateway"].get()
    trusted = gateway.trusted_client_issuers(gateway.authority.clock())
    assert pem(data_dir / "ca-next" / "ca.crt") in trusted
    assert len(trusted) == 2


def test_next_ca_file_not_in_database_refuses_to_start(
    runner: CliRunner, data_dir: Path, open_app: list[Flask], tmp_path: Path
) -> None:
    ok(roll(runner, data_dir))
    other = tmp_path / "other"
    ok(runner.invoke(main, ["init", "--data-dir", str(other), "--ca-key-type", "p256"]))
    (data_dir / "ca-next" / "ca.crt").write_bytes((other / "ca" / "ca.crt").read_bytes())
    with pytest.raises(CAError, match="is not registered in the database"):
        fresh_client(data_dir, open_app)


def test_a_rollover_into_a_slot_whose_key_settings_name_token_keys_is_refused(tmp_path: Path) -> None:
    """The second rollover of a token CA writes into the first slot; init --kms named its keys in
    config.toml (ca.key = "pkcs11:..."), where no reference file can go: refused before the token is
    opened, saying what to change."""
    kms = "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=gw?pin-value=1234"
    config = load_config(
        tmp_path,
        environ={},
        overrides={"keys.kms": kms, "ca.key": "pkcs11:object=ca-key", "ra.key": "pkcs11:object=ra-key"},
    )
    issuing = SLOTS[1]  # after the first rollover and its activation the CA issues from the second slot
    config.path(issuing.ca_key).parent.mkdir(parents=True)
    config.path(issuing.ca_key).write_bytes(key_reference("pkcs11:object=ca-next-ca-key"))
    with pytest.raises(RolloverError) as refused:
        _next_keys(config, issuing, SLOTS[0], "ca-next-2", KeyType.P256)
    assert str(refused.value) == (
        "ca.key, ra.key name token keys directly, so the next CA's keys cannot go into that slot: make ca.key and "
        'ra.key files that hold those URIs (e.g. ca.key = "ca/ca.key" with the line pkcs11:object=ca-key in it), '
        "then roll over"
    )
