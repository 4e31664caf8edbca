"""Separate SCEP RA roles: a signing RA (digitalSignature) and an encryption RA (keyEncipherment).

The roles' rules (scep.ra_roles), `gateway init --separate-ra-keys`, GetCACert and PKIOperation through
the Flask test client, the project's own client reading such a GetCACert, and every way the settings
ra.encryption_cert / ra.encryption_key can be wrong. The real clients against `gateway serve` are in
test_ra_roles_serve.py.
"""

from __future__ import annotations

import datetime as dt
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto import cms
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from flask import Flask
from flask.testing import FlaskClient

from gateway.app import create_app
from gateway.backup import MANIFEST, Manifest, create_backup
from gateway.cli import main
from gateway.config import GatewayConfig, load_config
from gateway.initdir import InitOptions, initialise
from gateway.metrics_state import GatewayState
from gateway.runtime import GatewayLoader, open_gateway
from scep.asn1 import Digest, FailInfo, MessageType, PkiStatus
from scep.client import parse_ca_certs
from scep.client_messages import (
    CertRepError,
    build_pki_request,
    parse_cert_rep,
    self_signed_signer,
    transaction_id_for,
)
from scep.envelope import ContentCipher
from scep.ra_roles import getcacert_certificates, select_ra_certificates, separate_roles_problem
from shared_ca.errors import KeyMaterialError
from shared_ca.keys import KeyType, load_private_key, write_private_key, write_public_file
from shared_ca.profiles import RA_ENCRYPTION_PROFILE, RA_PROFILE, RA_SIGNING_PROFILE
from tests.support import ec_key, rsa_key
from tests.test_scep_service import DEFAULT_CAPS
from tests.test_status import as_json, status

CHALLENGE = "s3cret"
PKI = "application/x-pki-message"
CERTIFICATE_REQUEST_AGENT = ObjectIdentifier("1.3.6.1.4.1.311.20.2.1")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# -- certificates with chosen key usages, for the rules ---------------------------------------------

_ISSUER_KEY = ec_key()
_ISSUER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rules CA")])


def certificate(
    cn: str,
    usages: tuple[str, ...] | None,
    *,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
    ca: bool = False,
    issuer: x509.Name = _ISSUER,
    authority_key_id: bytes | None = None,
) -> x509.Certificate:
    """A certificate for `key` (a new P-256 key) with key usage `usages` (None: no extension)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer)
        .public_key((key or ec_key()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if authority_key_id is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(authority_key_id, None, None), critical=False)
    if usages is not None:
        flags = {
            name: name in usages
            for name in (
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "key_cert_sign",
                "crl_sign",
            )
        }
        builder = builder.add_extension(x509.KeyUsage(encipher_only=False, decipher_only=False, **flags), critical=True)
    return builder.sign(_ISSUER_KEY, hashes.SHA256())


SIGNING = certificate("signing", ("digital_signature",))
ENCRYPTION = certificate("encryption", ("key_encipherment",))
BOTH = certificate("both", ("digital_signature", "key_encipherment"))
DATA_ONLY = certificate("data", ("data_encipherment",))
NO_USAGE = certificate("no key usage", None)
CA = certificate("ca", ("key_cert_sign", "crl_sign"), ca=True)


def test_separate_roles_accepted() -> None:
    assert separate_roles_problem(SIGNING, ENCRYPTION) is None


@pytest.mark.parametrize(
    ("signing", "encryption", "problem"),
    [
        pytest.param(
            BOTH, ENCRYPTION, "signing RA certificate also allows keyEncipherment", id="fail/signer-enciphers"
        ),
        pytest.param(
            certificate("sign+data", ("digital_signature", "data_encipherment")),
            ENCRYPTION,
            "also allows keyEncipherment or dataEncipherment",
            id="fail/signer-data-enciphers",
        ),
        pytest.param(NO_USAGE, ENCRYPTION, "also allows keyEncipherment", id="fail/signer-without-key-usage"),
        pytest.param(ENCRYPTION, BOTH, "does not allow digitalSignature", id="fail/signer-cannot-sign"),
        pytest.param(SIGNING, DATA_ONLY, "does not allow keyEncipherment", id="fail/recipient-no-key-encipherment"),
        pytest.param(SIGNING, SIGNING, "hold the same key", id="fail/same-key"),
        pytest.param(
            SIGNING,
            certificate("other CA's", ("key_encipherment",), issuer=x509.Name.from_rfc4514_string("CN=Next CA")),
            "issued by another CA (CN=Next CA) than the signing RA certificate (CN=Rules CA)",
            id="fail/different-issuers",
        ),
        pytest.param(
            certificate("signing", ("digital_signature",), authority_key_id=b"\x01" * 20),
            certificate("next CA's", ("key_encipherment",), authority_key_id=b"\x02" * 20),
            "issued by another CA (CN=Rules CA) than the signing RA certificate (CN=Rules CA)",
            id="fail/same-issuer-name-other-ca-key",
        ),
    ],
)
def test_separate_roles_refused(signing: x509.Certificate, encryption: x509.Certificate, problem: str) -> None:
    found = separate_roles_problem(signing, encryption)
    assert found is not None
    assert problem in found


def test_getcacert_order() -> None:
    assert getcacert_certificates(BOTH, None, [CA]) == [BOTH, CA]
    assert getcacert_certificates(SIGNING, ENCRYPTION, [CA]) == [ENCRYPTION, SIGNING, CA]


@pytest.mark.parametrize(
    ("certs", "recipient", "signer", "chain"),
    [
        pytest.param([BOTH, CA], BOTH, BOTH, (CA,), id="one-ra"),
        pytest.param([ENCRYPTION, SIGNING, CA], ENCRYPTION, SIGNING, (CA,), id="separate"),
        pytest.param([CA, SIGNING, ENCRYPTION], ENCRYPTION, SIGNING, (CA,), id="separate/any-order"),
        pytest.param([SIGNING, DATA_ONLY, CA], DATA_ONLY, SIGNING, (CA,), id="separate/data-encipherment"),
        pytest.param([NO_USAGE, CA], NO_USAGE, NO_USAGE, (CA,), id="ra-without-key-usage"),
        pytest.param([CA], CA, CA, (CA,), id="ca-is-its-own-ra"),
    ],
)
def test_client_tells_the_roles_apart(
    certs: list[x509.Certificate],
    recipient: x509.Certificate,
    signer: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
) -> None:
    found = select_ra_certificates(certs)
    assert (found.recipient, found.signer, found.chain) == (recipient, signer, chain)
    assert found.separate is (recipient != signer)


def test_client_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="no certificate"):
        select_ra_certificates([])


def test_profiles_split_the_key_usages() -> None:
    assert RA_PROFILE.key_usage == ("digital_signature", "key_encipherment")
    assert RA_SIGNING_PROFILE.key_usage == ("digital_signature",)
    assert RA_ENCRYPTION_PROFILE.key_usage == ("key_encipherment",)
    for profile in (RA_SIGNING_PROFILE, RA_ENCRYPTION_PROFILE):
        assert profile.extended_key_usage == RA_PROFILE.extended_key_usage
        assert profile.key_types == ("rsa",)


# -- a data directory with separate RA keys ---------------------------------------------------------


@pytest.fixture
def split_dir(tmp_path: Path, database_url: str) -> Path:
    """`gateway init --separate-ra-keys` (P-256 CA for speed) on the test's database."""
    directory = tmp_path / "split"
    external = None if database_url.startswith("sqlite") else database_url
    initialise(
        InitOptions(
            data_dir=directory,
            ca_key_type=KeyType.P256,
            database_url=external,
            scep_challenge=CHALLENGE,
            separate_ra_keys=True,
        )
    )
    return directory


@pytest.fixture
def split_app(split_dir: Path) -> Iterator[Flask]:
    application = create_app(load_config(split_dir, environ={}))
    yield application
    application.extensions["gateway"].get().storage.db.dispose()


def load_pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def key_usage(cert: x509.Certificate) -> x509.KeyUsage:
    return cert.extensions.get_extension_for_class(x509.KeyUsage).value


def test_init_makes_a_signing_and_an_encryption_ra(split_dir: Path) -> None:
    config = load_config(split_dir, environ={})
    assert config["ra.encryption_cert"] == "ra/ra-encryption.crt"
    assert config["ra.encryption_key"] == "ra/ra-encryption.key"
    signing, encryption = load_pem(config.path("ra.cert")), load_pem(config.path("ra.encryption_cert"))
    assert signing.subject.rfc4514_string() == "CN=SCEP-EST Gateway CA SCEP RA signing"
    assert encryption.subject.rfc4514_string() == "CN=SCEP-EST Gateway CA SCEP RA encryption"
    sign_usage, encrypt_usage = key_usage(signing), key_usage(encryption)
    assert (sign_usage.digital_signature, sign_usage.key_encipherment, sign_usage.data_encipherment) == (
        True,
        False,
        False,
    )
    assert (encrypt_usage.digital_signature, encrypt_usage.key_encipherment) == (False, True)
    for cert in (signing, encryption):
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [CERTIFICATE_REQUEST_AGENT]
        assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert config.path("ra.encryption_key").stat().st_mode & 0o777 == 0o600
    key = load_private_key(config.path("ra.encryption_key"), None)
    assert key.public_key() == encryption.public_key()
    gateway = open_gateway(config)
    try:  # both are recorded as issued by the CA, like the single RA
        records = gateway.storage.certificates.list_certificates(now=dt.datetime.now(dt.UTC))
        recorded = {r.serial_hex for r in records}
        assert {format(signing.serial_number, "x"), format(encryption.serial_number, "x")} <= recorded
    finally:
        gateway.storage.db.dispose()


def test_init_cli_flag(tmp_path: Path, runner: CliRunner) -> None:
    data_dir = tmp_path / "cli"
    args = ["init", "--data-dir", str(data_dir), "--ca-key-type", "p256", "--separate-ra-keys"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "separate keys: ra/ra.crt signs, ra/ra-encryption.crt decrypts" in result.output
    assert (data_dir / "ra" / "ra-encryption.crt").is_file()


def test_default_init_keeps_one_ra(data_dir: Path) -> None:
    config = load_config(data_dir, environ={})
    assert config["ra.encryption_cert"] == config["ra.encryption_key"] == ""
    assert not (data_dir / "ra" / "ra-encryption.crt").exists()
    usage = key_usage(load_pem(config.path("ra.cert")))
    assert usage.digital_signature and usage.key_encipherment


# -- the protocol through the Flask test client -----------------------------------------------------


def getcacert(client: FlaskClient) -> list[x509.Certificate]:
    response = client.get("/scep", query_string={"operation": "GetCACert", "message": "0"})
    assert response.status_code == 200
    assert response.mimetype == "application/x-x509-ca-ra-cert"
    with warnings.catch_warnings():  # our order, not DER SET order: cryptography falls back to BER
        warnings.filterwarnings("ignore", message="PKCS#7 certificates could not be parsed as DER")
        return pkcs7.load_der_pkcs7_certificates(response.data)


def test_getcacert_carries_both_ras_then_the_chain(split_app: Flask, split_dir: Path) -> None:
    config = load_config(split_dir, environ={})
    certs = getcacert(split_app.test_client())
    assert certs == [
        load_pem(config.path("ra.encryption_cert")),
        load_pem(config.path("ra.cert")),
        load_pem(config.path("ca.cert")),
    ]


def test_getcacaps_unaffected(split_app: Flask) -> None:
    caps = split_app.test_client().get("/scep", query_string={"operation": "GetCACaps"})
    assert caps.status_code == 200
    assert caps.get_data(as_text=True).splitlines() == DEFAULT_CAPS  # as with one RA


def test_our_client_reads_the_roles(split_app: Flask, split_dir: Path) -> None:
    config = load_config(split_dir, environ={})
    response = split_app.test_client().get("/scep", query_string={"operation": "GetCACert"})
    found = parse_ca_certs(response.data, response.content_type or "")
    assert found.recipient == load_pem(config.path("ra.encryption_cert"))
    assert found.signer == load_pem(config.path("ra.cert"))
    assert found.chain == (load_pem(config.path("ca.cert")),)
    assert found.separate


def pkcs_req(recipient: x509.Certificate, cn: str) -> tuple[bytes, rsa.RSAPrivateKey, x509.Certificate, bytes]:
    key = rsa_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, CHALLENGE.encode())
        .sign(key, hashes.SHA256())
    )
    signer = self_signed_signer(key, subject)
    nonce = b"n" * 16
    der = build_pki_request(
        MessageType.PKCSReq,
        content_der=csr.public_bytes(Encoding.DER),
        signer_cert=signer,
        signer_key=key,
        recipient_cert=recipient,
        transaction_id=transaction_id_for(key.public_key()) + cn,
        sender_nonce=nonce,
        digest=Digest.SHA256,
        content_cipher=ContentCipher.AES256,
    )
    return der, key, signer, nonce


def post(client: FlaskClient, der: bytes) -> bytes:
    response = client.post("/scep", query_string={"operation": "PKIOperation"}, data=der, headers={"Content-Type": PKI})
    assert response.status_code == 200, response.data
    assert response.mimetype == PKI
    data: bytes = response.data
    return data


def test_enrollment_decrypts_with_the_encryption_ra_and_signs_with_the_signing_ra(
    split_app: Flask, split_dir: Path
) -> None:
    config = load_config(split_dir, environ={})
    signing, encryption = load_pem(config.path("ra.cert")), load_pem(config.path("ra.encryption_cert"))
    der, key, signer, nonce = pkcs_req(encryption, "split-device")
    answer = post(split_app.test_client(), der)
    reply = parse_cert_rep(answer, ra_cert=signing, signer_key=key, signer_cert=signer)
    assert reply.status is PkiStatus.SUCCESS, (reply.fail_info, reply.fail_info_text)
    assert reply.recipient_nonce == nonce
    issued = [c for c in reply.certificates if c.public_key() == key.public_key()]
    assert len(issued) == 1
    assert issued[0].issuer == load_pem(config.path("ca.cert")).subject
    # The SignerInfo names the signing RA, whose certificate the CertRep carries (not the encryption RA).
    signed_data = cms.ContentInfo.load(answer)["content"]
    (signer_info,) = signed_data["signer_infos"]
    assert signer_info["sid"].chosen["serial_number"].native == signing.serial_number
    carried = [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed_data["certificates"]]
    assert signing in carried
    assert encryption not in carried
    with pytest.raises(CertRepError, match="unreadable CertRep"):
        parse_cert_rep(answer, ra_cert=encryption, signer_key=key, signer_cert=signer)


def test_request_enveloped_to_the_signing_ra_is_refused(
    split_app: Flask, split_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(split_dir, environ={})
    signing = load_pem(config.path("ra.cert"))
    der, key, signer, _nonce = pkcs_req(signing, "wrong-recipient")
    reply = parse_cert_rep(post(split_app.test_client(), der), ra_cert=signing, signer_key=key, signer_cert=signer)
    assert reply.status is PkiStatus.FAILURE
    assert reply.fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert reply.fail_info_text == "the envelope is not addressed to this server"


# -- settings that cannot work ------------------------------------------------------------------------


def set_values(data_dir: Path, **values: str) -> GatewayConfig:
    """The data directory's configuration with ra.<name> settings given in the environment."""
    return load_config(data_dir, environ=ra_env(**values))


def ra_env(**values: str) -> dict[str, str]:
    return {f"GATEWAY_RA_{name.upper()}": value for name, value in values.items()}


def issue_with_ca(
    data_dir: Path, usages: tuple[str, ...], key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """A certificate for `key` signed by the data directory's CA, with key usage `usages`."""
    ca_cert = load_pem(data_dir / "ca" / "ca.crt")
    ca_key = load_private_key(data_dir / "ca" / "ca.key", None)
    flags = {name: name in usages for name in ("digital_signature", "key_encipherment")}
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made RA")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
        .add_extension(
            x509.KeyUsage(
                **flags,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return cert.sign(ca_key, hashes.SHA256())


def refused(config: GatewayConfig, *expected: str) -> None:
    with pytest.raises(KeyMaterialError) as caught:
        gateway = open_gateway(config)
        gateway.storage.db.dispose()
    for text in expected:
        assert text in str(caught.value)


def test_encryption_cert_without_key(split_dir: Path) -> None:
    config = set_values(split_dir, encryption_key="")
    refused(config, "ra.encryption_key is not set: ra.encryption_cert and ra.encryption_key go together")


def test_encryption_key_without_cert(split_dir: Path) -> None:
    config = set_values(split_dir, encryption_cert="")
    refused(config, "ra.encryption_cert is not set: ra.encryption_cert and ra.encryption_key go together")


def test_encryption_key_of_another_certificate(split_dir: Path) -> None:
    config = set_values(split_dir, encryption_key="ra/ra.key")
    refused(config, "ra.key does not match the certificate in", "ra-encryption.crt")


def test_encryption_certificate_missing(split_dir: Path) -> None:
    (split_dir / "ra" / "ra-encryption.crt").unlink()
    refused(load_config(split_dir, environ={}), "ra-encryption.crt")


def test_encryption_key_must_be_rsa(split_dir: Path) -> None:
    key = ec_key()
    write_private_key(split_dir / "ra" / "ec.key", key, None)
    write_public_file(
        split_dir / "ra" / "ec.crt", issue_with_ca(split_dir, ("key_encipherment",), key).public_bytes(Encoding.PEM)
    )
    config = set_values(split_dir, encryption_cert="ra/ec.crt", encryption_key="ra/ec.key")
    refused(config, "the SCEP RA encryption key", "must be RSA")


def test_single_ra_certificate_cannot_be_the_signing_ra(data_dir: Path) -> None:
    """The RA of a default init may encipher: beside an encryption RA, clients could encrypt to it."""
    key = rsa_key()
    write_private_key(data_dir / "ra" / "enc.key", key, None)
    cert = issue_with_ca(data_dir, ("key_encipherment",), key)
    write_public_file(data_dir / "ra" / "enc.crt", cert.public_bytes(Encoding.PEM))
    config = set_values(data_dir, encryption_cert="ra/enc.crt", encryption_key="ra/enc.key")
    refused(
        config,
        "enc.crt beside the RA certificate of CN=SCEP-EST Gateway CA SCEP RA: ",
        "the signing RA certificate also allows keyEncipherment",
    )


def test_encryption_ra_without_key_encipherment(split_dir: Path) -> None:
    key = rsa_key()
    write_private_key(split_dir / "ra" / "sig2.key", key, None)
    cert = issue_with_ca(split_dir, ("digital_signature",), key)
    write_public_file(split_dir / "ra" / "sig2.crt", cert.public_bytes(Encoding.PEM))
    config = set_values(split_dir, encryption_cert="ra/sig2.crt", encryption_key="ra/sig2.key")
    refused(config, "the encryption RA certificate does not allow keyEncipherment")


def test_cli_names_the_setting_in_one_line(split_dir: Path, runner: CliRunner) -> None:
    result = runner.invoke(main, ["ca", "show", "--data-dir", str(split_dir)], env=ra_env(encryption_key=""))
    assert result.exit_code != 0
    assert "ra.encryption_key is not set" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_status_lists_the_encryption_ra(split_dir: Path) -> None:
    report = as_json(status(split_dir, "--format", "json"))
    assert [c["role"] for c in report["certificates"]] == ["ca", "ra", "ra encryption", "tls"]
    encryption = report["certificates"][2]
    assert encryption["path"] == str(split_dir / "ra" / "ra-encryption.crt")
    assert encryption["days_left"] == 729


# -- gateway ca ra-split ------------------------------------------------------------------------------

SPLIT_ENV = {
    "GATEWAY_RA_CERT": "ra/ra-signing.crt",
    "GATEWAY_RA_KEY": "ra/ra-signing.key",
    "GATEWAY_RA_ENCRYPTION_CERT": "ra/ra-encryption.crt",
    "GATEWAY_RA_ENCRYPTION_KEY": "ra/ra-encryption.key",
}


def one_line_failure(result: Result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert text in result.output, result.output


def test_ra_split_on_a_data_dir_with_one_ra(data_dir: Path, runner: CliRunner) -> None:
    old_ra = (data_dir / "ra" / "ra.crt").read_bytes()
    result = runner.invoke(main, ["ca", "ra-split", "--data-dir", str(data_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-5:] == [
        "[ra]",
        'cert = "ra/ra-signing.crt"',
        'key = "ra/ra-signing.key"',
        'encryption_cert = "ra/ra-encryption.crt"',
        'encryption_key = "ra/ra-encryption.key"',
    ]
    assert "signing RA     CN=SCEP-EST Gateway CA SCEP RA signing (digitalSignature)" in result.output
    assert (data_dir / "ra" / "ra.crt").read_bytes() == old_ra  # the current RA keeps serving until a restart
    for name in ("ra-signing.key", "ra-encryption.key"):
        assert (data_dir / "ra" / name).stat().st_mode & 0o777 == 0o600
    # With the printed settings the gateway opens with separate roles.
    config = load_config(data_dir, environ=SPLIT_ENV)
    signing, encryption = load_pem(config.path("ra.cert")), load_pem(config.path("ra.encryption_cert"))
    assert separate_roles_problem(signing, encryption) is None
    application = create_app(config)
    try:
        assert getcacert(application.test_client())[:2] == [encryption, signing]
    finally:
        application.extensions["gateway"].get().storage.db.dispose()


def test_ra_split_refused_when_split_already(split_dir: Path, runner: CliRunner) -> None:
    result = runner.invoke(main, ["ca", "ra-split", "--data-dir", str(split_dir)])
    one_line_failure(result, "the SCEP RA has separate keys already")


def test_ra_split_refused_when_its_files_exist(data_dir: Path, runner: CliRunner) -> None:
    (data_dir / "ra" / "ra-encryption.key").write_text("someone's key\n")
    result = runner.invoke(main, ["ca", "ra-split", "--data-dir", str(data_dir)])
    one_line_failure(result, "ra-encryption.key exist already: move them away first")
    assert not (data_dir / "ra" / "ra-signing.crt").exists()


def test_ra_split_refused_without_the_ca_key(data_dir: Path, runner: CliRunner) -> None:
    (data_dir / "ca" / "ca.key").unlink()
    result = runner.invoke(main, ["ca", "ra-split", "--data-dir", str(data_dir)])
    one_line_failure(result, "ca.key")
    assert not (data_dir / "ra" / "ra-signing.crt").exists()


def test_backup_holds_the_encryption_ra(split_dir: Path, tmp_path: Path) -> None:
    archive = create_backup(load_config(split_dir, environ={}), tmp_path / "split.backup").path
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = Manifest.from_json(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    assert {"data/ra/ra-encryption.crt", "data/ra/ra-encryption.key", "data/ra/ra.key"} <= names
    assert manifest.settings["ra.encryption_key"] == "ra/ra-encryption.key"


def test_metrics_show_the_encryption_ra_expiry(split_app: Flask, split_dir: Path) -> None:
    gateway = split_app.extensions["gateway"].get()
    families = GatewayState(GatewayLoader.ready(gateway)).collect()
    expiry = {
        sample.labels["role"]: sample.value
        for family in families
        for sample in family.samples
        if sample.name == "gateway_certificate_expiry_timestamp_seconds"
    }
    encryption = load_pem(split_dir / "ra" / "ra-encryption.crt")
    assert expiry["ra_encryption"] == encryption.not_valid_after_utc.timestamp()
    assert expiry["ra"] == gateway.ra_certificate.not_valid_after_utc.timestamp()


def test_ra_split_refused_once_a_rolled_over_ca_issues(data_dir: Path, runner: CliRunner) -> None:
    """After `gateway ca rollover` and `ca activate` the issuing CA's RA is next_ra.cert: not split."""
    for args in (["ca", "rollover", "--ca-key-type", "p256"], ["ca", "activate"]):
        done = runner.invoke(main, [*args, "--data-dir", str(data_dir)], catch_exceptions=False)
        assert done.exit_code == 0, done.output
    result = runner.invoke(main, ["ca", "ra-split", "--data-dir", str(data_dir)])
    one_line_failure(result, "has its RA elsewhere than ra.cert")
    assert not (data_dir / "ra" / "ra-signing.crt").exists()
