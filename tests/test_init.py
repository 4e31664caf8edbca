"""`gateway init`: the files it writes, the certificates in them, imports, passphrases, --force, refusals."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.cli import main
from gateway.config import load_config
from shared_ca.keys import PrivateKey
from shared_ca.storage.db import sqlite_url
from tests.support import ec_key

NOW = dt.datetime.now(dt.UTC)
KEY_FILES = ("ca/ca.key", "ra/ra.key", "tls/server.key")
CERT_FILES = ("ca/ca.crt", "ra/ra.crt", "tls/server.crt", "ca.pem")
ALL_FILES = (*KEY_FILES, *CERT_FILES, "config.toml", "gateway.db")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: a GATEWAY_* variable of the developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def run_init(
    runner: CliRunner,
    data_dir: Path,
    *args: str,
    key_type: str | None = "p256",
    env: dict[str, str] | None = None,
) -> Result:
    """`gateway init` on `data_dir`; a P-256 CA unless `key_type` says otherwise (None: the default)."""
    options = ["--ca-key-type", key_type] if key_type else []
    return runner.invoke(main, ["init", "--data-dir", str(data_dir), *options, *args], env=env)


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """A CLI refusal: exit status != 0, one 'Error:' line holding every fragment, no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], result.output


def certs_in(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def cert_in(path: Path) -> x509.Certificate:
    certs = certs_in(path)
    assert len(certs) == 1
    return certs[0]


def public_der(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), passphrase)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Content, mtime and mode of every file under `root`."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- key material for imports, built without the product's code ----------------------------------------


def make_cert(
    cn: str,
    key: PrivateKey,
    *,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    ca: bool = True,
    path_length: int | None = 0,
    basic_constraints: bool = True,
    expired: bool = False,
) -> x509.Certificate:
    """A CA certificate (or, with ca=False, an end-entity one), self-signed unless `issuer` is given."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    not_before = NOW - dt.timedelta(days=30 if expired else 1)
    not_after = NOW - dt.timedelta(days=1) if expired else NOW + dt.timedelta(days=365)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if basic_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    assert isinstance(signing_key, ec.EllipticCurvePrivateKey)
    return builder.sign(signing_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- a new CA ---------------------------------------------------------------------------------------------


def test_creates_every_file(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_init(runner, data_dir)
    assert result.exit_code == 0, result.output

    for name in ALL_FILES:
        assert (data_dir / name).is_file(), name
    for name in (*KEY_FILES, "config.toml", "gateway.db"):
        assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name
    for name in CERT_FILES:
        assert (data_dir / name).stat().st_mode & 0o077 == 0o044, name  # world-readable, like any certificate
    assert not (data_dir / ".init-staging").exists()
    assert not list(data_dir.glob("replaced-*"))

    ca = cert_in(data_dir / "ca" / "ca.crt")
    assert (data_dir / "ca.pem").read_bytes() == (data_dir / "ca" / "ca.crt").read_bytes()
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca.verify_directly_issued_by(ca)
    assert public_der(load_key(data_dir / "ca" / "ca.key").public_key()) == public_der(ca.public_key())
    assert ca.fingerprint(hashes.SHA256()).hex() in result.stdout
    assert f"initialised {data_dir}" in result.stdout
    assert f"trust this {data_dir / 'ca.pem'}" in result.stdout

    cfg = load_config(data_dir, environ={}, require_file=True)
    assert cfg.source == data_dir / "config.toml"
    assert cfg.database_url == sqlite_url(data_dir / "gateway.db")
    assert cfg["keys.passphrase_file"] == ""
    assert "profiles" not in tomllib.loads((data_dir / "config.toml").read_text())


def test_ra_certificate(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_init(runner, data_dir).exit_code == 0
    ca = cert_in(data_dir / "ca" / "ca.crt")
    ra = cert_in(data_dir / "ra" / "ra.crt")

    ra_key = ra.public_key()
    assert isinstance(ra_key, rsa.RSAPublicKey)
    assert ra_key.key_size == 2048
    usage = ra.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert not usage.key_cert_sign
    assert not ra.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ra.issuer == ca.subject
    ra.verify_directly_issued_by(ca)
    assert public_der(load_key(data_dir / "ra" / "ra.key").public_key()) == public_der(ra_key)


@pytest.mark.parametrize(
    ("hostnames", "expected_cn", "extra_sans"),
    [
        pytest.param([], "localhost", [], id="ok/no-hostnames"),
        pytest.param(
            ["gw.example.org", "10.1.2.3", "2001:db8::1", "localhost"],
            "gw.example.org",
            [
                x509.DNSName("gw.example.org"),
                x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
                x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
            ],
            id="ok/dns-ip-and-duplicate",
        ),
    ],
)
def test_tls_certificate_names(
    runner: CliRunner, tmp_path: Path, hostnames: list[str], expected_cn: str, extra_sans: list[x509.GeneralName]
) -> None:
    data_dir = tmp_path / "data"
    args = [arg for host in hostnames for arg in ("--hostname", host)]
    assert run_init(runner, data_dir, *args).exit_code == 0
    ca = cert_in(data_dir / "ca" / "ca.crt")
    chain = certs_in(data_dir / "tls" / "server.crt")
    assert [c.fingerprint(hashes.SHA256()) for c in chain[1:]] == [ca.fingerprint(hashes.SHA256())]
    tls = chain[0]
    tls.verify_directly_issued_by(ca)

    sans = list(tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    baseline: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for name in baseline + extra_sans:
        assert name in sans, name
    assert len(sans) == len(set(baseline + extra_sans))
    assert tls.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == expected_cn
    eku = tls.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert public_der(load_key(data_dir / "tls" / "server.key").public_key()) == public_der(tls.public_key())


@pytest.mark.parametrize(
    ("key_type", "algorithm", "size", "digest"),
    [
        pytest.param("rsa2048", "rsa", 2048, hashes.SHA256, id="ok/rsa2048"),
        pytest.param(None, "rsa", 3072, hashes.SHA256, id="ok/default-rsa3072"),
        pytest.param("p256", "ec", 256, hashes.SHA256, id="ok/p256"),
        pytest.param("p384", "ec", 384, hashes.SHA384, id="ok/p384"),
    ],
)
def test_ca_key_types(
    runner: CliRunner,
    tmp_path: Path,
    key_type: str | None,
    algorithm: str,
    size: int,
    digest: type[hashes.HashAlgorithm],
) -> None:
    data_dir = tmp_path / "data"
    assert run_init(runner, data_dir, key_type=key_type).exit_code == 0
    ca = cert_in(data_dir / "ca" / "ca.crt")
    key = ca.public_key()
    if algorithm == "rsa":
        assert isinstance(key, rsa.RSAPublicKey)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.key_size == size
    assert isinstance(ca.signature_hash_algorithm, digest)
    # Everything the CA signed at init verifies under its key.
    cert_in(data_dir / "ra" / "ra.crt").verify_directly_issued_by(ca)
    certs_in(data_dir / "tls" / "server.crt")[0].verify_directly_issued_by(ca)


def test_ca_subject_and_days(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_init(runner, data_dir, "--ca-subject", "CN=Acme Device CA,O=Acme,C=DE", "--ca-days", "30")
    assert result.exit_code == 0, result.output
    ca = cert_in(data_dir / "ca" / "ca.crt")
    assert ca.subject.rfc4514_string() == "CN=Acme Device CA,O=Acme,C=DE"
    assert ca.issuer == ca.subject
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=10)
    assert "CA         CN=Acme Device CA,O=Acme,C=DE" in result.stdout
    assert f"expires    {ca.not_valid_after_utc:%Y-%m-%d}" in result.stdout
    ra = cert_in(data_dir / "ra" / "ra.crt")
    assert ra.subject.rfc4514_string() == "CN=Acme Device CA SCEP RA"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(["--ca-subject", "garbage"], ["--ca-subject", "not an RFC 4514 name"], id="fail/subject-syntax"),
        pytest.param(["--ca-subject", "XX=foo"], ["--ca-subject", "not an RFC 4514 name"], id="fail/subject-attribute"),
        pytest.param(["--ca-subject", ""], ["--ca-subject", "empty"], id="fail/subject-empty"),
        pytest.param(["--ca-days", "0"], ["--ca-days"], id="fail/days-zero"),
        pytest.param(["--ca-key-type", "dsa1024"], ["--ca-key-type"], id="fail/key-type"),
        pytest.param(["--public-base-url", "ftp://pki.example"], ["public_base_url"], id="fail/public-base-url"),
        pytest.param(["--database-url", "mysql://u@db/gw"], ["database_url", "unsupported"], id="fail/database-url"),
        pytest.param(["--hostname", "bad host!"], ["'bad host!'", "not a valid host name"], id="fail/hostname"),
    ],
)
def test_bad_option_is_named(runner: CliRunner, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    data_dir = tmp_path / "data"
    result = runner.invoke(main, ["init", "--data-dir", str(data_dir), "--ca-key-type", "p256", *args])
    assert_clean_failure(result, *fragments)
    assert not data_dir.exists() or not any(data_dir.iterdir())


# -- importing a CA ---------------------------------------------------------------------------------------


def test_import_pem_certificate_and_key(runner: CliRunner, tmp_path: Path) -> None:
    key = ec_key()
    cert = make_cert("Imported CA", key)
    cert_file = write(tmp_path / "ca.crt", pem(cert))
    key_file = write(tmp_path / "ca.key", key_pem(key))
    data_dir = tmp_path / "data"
    result = run_init(runner, data_dir, "--import-ca-cert", str(cert_file), "--import-ca-key", str(key_file))
    assert result.exit_code == 0, result.output
    assert (data_dir / "ca" / "ca.crt").read_bytes() == pem(cert)
    assert (data_dir / "ca.pem").read_bytes() == pem(cert)
    assert public_der(load_key(data_dir / "ca" / "ca.key").public_key()) == public_der(key.public_key())
    assert (data_dir / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    cert_in(data_dir / "ra" / "ra.crt").verify_directly_issued_by(cert)
    assert cert.fingerprint(hashes.SHA256()).hex() in result.stdout


def test_import_pem_chain(runner: CliRunner, tmp_path: Path) -> None:
    root_key, intermediate_key = ec_key(), ec_key()
    root = make_cert("Root CA", root_key, path_length=1)
    intermediate = make_cert("Issuing CA", intermediate_key, issuer=(root, root_key))
    cert_file = write(tmp_path / "chain.pem", pem(root, intermediate))  # the file's order does not matter
    key_file = write(tmp_path / "ca.key", key_pem(intermediate_key, b"import-pw"))
    passphrase_file = write(tmp_path / "import-pw", b"import-pw\n")
    data_dir = tmp_path / "data"
    result = run_init(
        runner,
        data_dir,
        "--import-ca-cert",
        str(cert_file),
        "--import-ca-key",
        str(key_file),
        "--import-passphrase-file",
        str(passphrase_file),
    )
    assert result.exit_code == 0, result.output
    assert (data_dir / "ca" / "ca.crt").read_bytes() == pem(intermediate, root)
    assert (data_dir / "ca.pem").read_bytes() == pem(intermediate, root)
    tls_chain = certs_in(data_dir / "tls" / "server.crt")
    assert tls_chain[1:] == [intermediate, root]
    tls_chain[0].verify_directly_issued_by(intermediate)
    # The imported key is stored unencrypted (no --passphrase-file), and the gateway opens.
    assert b"ENCRYPTED" not in (data_dir / "ca" / "ca.key").read_bytes()
    check = runner.invoke(main, ["config", "check", "--data-dir", str(data_dir)])
    assert check.exit_code == 0, check.output
    assert "CN=Issuing CA" in check.stdout


def test_import_pkcs12(runner: CliRunner, tmp_path: Path) -> None:
    root_key, intermediate_key = ec_key(), ec_key()
    root = make_cert("Root CA", root_key, path_length=1)
    intermediate = make_cert("Issuing CA", intermediate_key, issuer=(root, root_key))
    bundle = pkcs12.serialize_key_and_certificates(
        b"ca", intermediate_key, intermediate, [root], serialization.BestAvailableEncryption(b"p12-secret")
    )
    p12_file = write(tmp_path / "ca.p12", bundle)
    passphrase_file = write(tmp_path / "p12-pw", b"p12-secret\n")
    data_dir = tmp_path / "data"
    result = run_init(
        runner, data_dir, "--import-pkcs12", str(p12_file), "--import-passphrase-file", str(passphrase_file)
    )
    assert result.exit_code == 0, result.output
    assert certs_in(data_dir / "ca" / "ca.crt") == [intermediate, root]
    key = load_key(data_dir / "ca" / "ca.key")
    assert public_der(key.public_key()) == public_der(intermediate_key.public_key())
    cert_in(data_dir / "ra" / "ra.crt").verify_directly_issued_by(intermediate)


ImportCase = Callable[[Path], list[str]]


def _mismatched_key(tmp: Path) -> list[str]:
    cert = make_cert("CA", ec_key())
    return ["--import-ca-cert", str(write(tmp / "c.pem", pem(cert))), "--import-ca-key", _key_file(tmp, ec_key())]


def _not_a_ca(tmp: Path) -> list[str]:
    key = ec_key()
    cert = make_cert("device", key, ca=False)
    return ["--import-ca-cert", str(write(tmp / "c.pem", pem(cert))), "--import-ca-key", _key_file(tmp, key)]


def _no_basic_constraints(tmp: Path) -> list[str]:
    key = ec_key()
    cert = make_cert("CA", key, basic_constraints=False)
    return ["--import-ca-cert", str(write(tmp / "c.pem", pem(cert))), "--import-ca-key", _key_file(tmp, key)]


def _expired_ca(tmp: Path) -> list[str]:
    key = ec_key()
    cert = make_cert("CA", key, expired=True)
    return ["--import-ca-cert", str(write(tmp / "c.pem", pem(cert))), "--import-ca-key", _key_file(tmp, key)]


def _wrong_key_passphrase(tmp: Path) -> list[str]:
    key = ec_key()
    cert = make_cert("CA", key)
    return [
        "--import-ca-cert",
        str(write(tmp / "c.pem", pem(cert))),
        "--import-ca-key",
        str(write(tmp / "k.pem", key_pem(key, b"right"))),
        "--import-passphrase-file",
        str(write(tmp / "pw", b"wrong\n")),
    ]


def _encrypted_key_without_passphrase(tmp: Path) -> list[str]:
    key = ec_key()
    cert = make_cert("CA", key)
    return [
        "--import-ca-cert",
        str(write(tmp / "c.pem", pem(cert))),
        "--import-ca-key",
        str(write(tmp / "k.pem", key_pem(key, b"right"))),
    ]


def _wrong_pkcs12_passphrase(tmp: Path) -> list[str]:
    key = ec_key()
    bundle = pkcs12.serialize_key_and_certificates(
        b"ca", key, make_cert("CA", key), None, serialization.BestAvailableEncryption(b"right")
    )
    return [
        "--import-pkcs12",
        str(write(tmp / "ca.p12", bundle)),
        "--import-passphrase-file",
        str(write(tmp / "pw", b"wrong\n")),
    ]


def _pkcs12_not_a_ca(tmp: Path) -> list[str]:
    key = ec_key()
    bundle = pkcs12.serialize_key_and_certificates(
        b"ee", key, make_cert("device", key, ca=False), None, serialization.NoEncryption()
    )
    return ["--import-pkcs12", str(write(tmp / "ee.p12", bundle))]


def _not_pkcs12(tmp: Path) -> list[str]:
    return ["--import-pkcs12", str(write(tmp / "ca.p12", b"not a PKCS#12 file"))]


def _not_a_certificate(tmp: Path) -> list[str]:
    return ["--import-ca-cert", str(write(tmp / "c.pem", b"hello")), "--import-ca-key", _key_file(tmp, ec_key())]


def _missing_certificate_file(tmp: Path) -> list[str]:
    return ["--import-ca-cert", str(tmp / "absent.pem"), "--import-ca-key", _key_file(tmp, ec_key())]


def _certificate_without_key(tmp: Path) -> list[str]:
    return ["--import-ca-cert", str(write(tmp / "c.pem", pem(make_cert("CA", ec_key()))))]


def _pkcs12_and_pem(tmp: Path) -> list[str]:
    return ["--import-pkcs12", str(write(tmp / "x.p12", b"x")), "--import-ca-key", _key_file(tmp, ec_key())]


def _empty_import_passphrase_file(tmp: Path) -> list[str]:
    return [*_wrong_key_passphrase(tmp)[:4], "--import-passphrase-file", str(write(tmp / "empty", b"\n"))]


def _key_file(tmp: Path, key: PrivateKey) -> str:
    return str(write(tmp / "k.pem", key_pem(key)))


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        pytest.param(_mismatched_key, ["does not match"], id="fail/key-does-not-match"),
        pytest.param(_not_a_ca, ["cA=FALSE", "not a CA"], id="fail/not-a-ca"),
        pytest.param(_no_basic_constraints, ["basicConstraints", "not a CA"], id="fail/no-basic-constraints"),
        pytest.param(_expired_ca, ["expired"], id="fail/expired-ca"),
        pytest.param(_wrong_key_passphrase, ["wrong passphrase"], id="fail/wrong-key-passphrase"),
        pytest.param(_encrypted_key_without_passphrase, ["is encrypted"], id="fail/encrypted-key-no-passphrase"),
        pytest.param(_wrong_pkcs12_passphrase, ["PKCS#12", "wrong password"], id="fail/wrong-pkcs12-passphrase"),
        pytest.param(_pkcs12_not_a_ca, ["not a CA"], id="fail/pkcs12-not-a-ca"),
        pytest.param(_not_pkcs12, ["PKCS#12"], id="fail/not-pkcs12"),
        pytest.param(_not_a_certificate, ["no readable X.509 certificate"], id="fail/not-a-certificate"),
        pytest.param(_missing_certificate_file, ["absent.pem", "No such file"], id="fail/missing-certificate"),
        pytest.param(_certificate_without_key, ["--import-ca-key"], id="fail/certificate-without-key"),
        pytest.param(_pkcs12_and_pem, ["exclude each other"], id="fail/pkcs12-and-pem"),
        pytest.param(_empty_import_passphrase_file, ["is empty"], id="fail/empty-passphrase-file"),
    ],
)
def test_import_refusals(runner: CliRunner, tmp_path: Path, case: ImportCase, fragments: list[str]) -> None:
    data_dir = tmp_path / "data"
    result = run_init(runner, data_dir, *case(tmp_path))
    assert_clean_failure(result, *fragments)
    # Nothing half-written: no CA, no config, no database.
    for name in ALL_FILES:
        assert not (data_dir / name).exists(), name


# -- encrypted keys ---------------------------------------------------------------------------------------


def test_passphrase_file_encrypts_keys(runner: CliRunner, tmp_path: Path) -> None:
    passphrase_file = write(tmp_path / "pw", b"correct horse\n")
    data_dir = tmp_path / "data"
    result = run_init(runner, data_dir, "--passphrase-file", str(passphrase_file))
    assert result.exit_code == 0, result.output
    for name in KEY_FILES:
        text = (data_dir / name).read_bytes()
        assert b"BEGIN ENCRYPTED PRIVATE KEY" in text, name
        load_key(data_dir / name, b"correct horse")
    assert load_config(data_dir, environ={})["keys.passphrase_file"] == str(passphrase_file.resolve())

    ok = runner.invoke(main, ["config", "check", "--data-dir", str(data_dir)])
    assert ok.exit_code == 0, ok.output

    wrong_env = runner.invoke(
        main, ["config", "check", "--data-dir", str(data_dir)], env={"GATEWAY_KEY_PASSPHRASE": "battery staple"}
    )
    assert_clean_failure(wrong_env, "wrong passphrase", "ca.key")

    passphrase_file.write_bytes(b"battery staple\n")
    wrong_file = runner.invoke(main, ["ca", "show", "--data-dir", str(data_dir)])
    assert_clean_failure(wrong_file, "wrong passphrase")

    passphrase_file.unlink()
    missing_file = runner.invoke(main, ["ca", "show", "--data-dir", str(data_dir)])
    assert_clean_failure(missing_file, "cannot read passphrase file", str(passphrase_file))

    fixed = runner.invoke(
        main, ["ca", "show", "--data-dir", str(data_dir)], env={"GATEWAY_KEY_PASSPHRASE": "correct horse"}
    )
    assert fixed.exit_code == 0, fixed.output


def test_environment_passphrase_encrypts_keys(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_init(runner, data_dir, env={"GATEWAY_KEY_PASSPHRASE": "from-env"})
    assert result.exit_code == 0, result.output
    for name in KEY_FILES:
        assert b"ENCRYPTED" in (data_dir / name).read_bytes(), name
        load_key(data_dir / name, b"from-env")
    assert load_config(data_dir, environ={})["keys.passphrase_file"] == ""

    without = runner.invoke(main, ["config", "check", "--data-dir", str(data_dir)])
    assert_clean_failure(without, "is encrypted", "GATEWAY_KEY_PASSPHRASE")
    wrong = runner.invoke(
        main, ["config", "check", "--data-dir", str(data_dir)], env={"GATEWAY_KEY_PASSPHRASE": "not-it"}
    )
    assert_clean_failure(wrong, "wrong passphrase")
    right = runner.invoke(
        main, ["cert", "list", "--data-dir", str(data_dir)], env={"GATEWAY_KEY_PASSPHRASE": "from-env"}
    )
    assert right.exit_code == 0, right.output
    assert "scep-ra" in right.stdout


def test_empty_passphrase_file_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    passphrase_file = write(tmp_path / "pw", b"\n")
    data_dir = tmp_path / "data"
    result = run_init(runner, data_dir, "--passphrase-file", str(passphrase_file))
    assert_clean_failure(result, "is empty")
    assert not (data_dir / "config.toml").exists()


# -- re-running init ----------------------------------------------------------------------------------------


def test_rerun_refuses_and_changes_nothing(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_init(runner, data_dir).exit_code == 0
    before = snapshot(data_dir)
    result = run_init(runner, data_dir, "--ca-subject", "CN=Other CA", key_type="p384")
    assert_clean_failure(result, "already initialised", "--force")
    assert snapshot(data_dir) == before
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "ca",
        "ca.pem",
        "config.toml",
        "gateway.db",
        "gateway.db-writers.lock",
        "ra",
        "tls",
    ]


def test_force_moves_old_files_aside(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One frozen clock: every run lands in the same second, as a quick script's would.
    frozen = dt.datetime.now(dt.UTC)
    monkeypatch.setattr("gateway.initdir.utcnow", lambda: frozen)
    data_dir = tmp_path / "data"
    assert run_init(runner, data_dir, "--scep-challenge", "old").exit_code == 0
    old = snapshot(data_dir)
    old_ca = cert_in(data_dir / "ca" / "ca.crt")

    result = run_init(runner, data_dir, "--force")
    assert result.exit_code == 0, result.output
    backups = list(data_dir.glob("replaced-*"))
    assert len(backups) == 1
    assert f"replaced the previous CA; its files are in {backups[0]}" in result.stderr
    moved = snapshot(backups[0])
    assert {name: content for name, (content, _m, _p) in moved.items()} == {
        name: content for name, (content, _m, _p) in old.items()
    }
    new_ca = cert_in(data_dir / "ca" / "ca.crt")
    assert new_ca.fingerprint(hashes.SHA256()) != old_ca.fingerprint(hashes.SHA256())
    assert new_ca.public_key() != old_ca.public_key()
    assert "profiles" not in tomllib.loads((data_dir / "config.toml").read_text())

    # The new directory has a new database: only the new RA and TLS certificates.
    listing = runner.invoke(main, ["cert", "list", "--data-dir", str(data_dir), "--format", "json"])
    assert listing.exit_code == 0, listing.output
    assert len(listing.stdout.split('"serial"')) == 3

    # A second --force within the same second gets its own backup directory.
    again = run_init(runner, data_dir, "--force")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in data_dir.glob("replaced-*")) == [backups[0].name, f"{backups[0].name}-2"]
    assert snapshot(backups[0]) == moved


def test_force_on_a_database_that_holds_the_ca_restores_everything(
    runner: CliRunner, tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    first = run_init(runner, data_dir, "--database-url", database_url)
    assert first.exit_code == 0, first.output
    assert load_config(data_dir, environ={})["database_url"] == database_url
    assert not (data_dir / "gateway.db").exists()
    listing = runner.invoke(main, ["cert", "list", "--data-dir", str(data_dir)])
    assert listing.exit_code == 0, listing.output
    assert "gateway-tls" in listing.stdout
    before = snapshot(data_dir)

    result = run_init(runner, data_dir, "--force", "--database-url", database_url)
    assert_clean_failure(result, "already holds issuer 'ca'")
    assert snapshot(data_dir) == before
    assert not list(data_dir.glob("replaced-*"))
    assert runner.invoke(main, ["config", "check", "--data-dir", str(data_dir)]).exit_code == 0


# -- options that land in config.toml -----------------------------------------------------------------------


def test_scep_challenge_lands_in_the_default_profile(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    challenge = 'p@ss "word" \\ ü'
    assert run_init(runner, data_dir, "--scep-challenge", challenge).exit_code == 0
    written = tomllib.loads((data_dir / "config.toml").read_text(encoding="utf-8"))
    assert written["profiles"]["default"] == {"scep_challenge": challenge}
    cfg = load_config(data_dir, environ={})
    assert cfg.profiles["default"].scep_challenge == challenge
    assert cfg.profiles["tls-server"].scep_challenge == ""


def test_public_base_url_lands_in_config_and_certificates(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_init(runner, data_dir, "--public-base-url", "https://pki.example:8443/").exit_code == 0
    assert load_config(data_dir, environ={})["public_base_url"] == "https://pki.example:8443/"
    ra = cert_in(data_dir / "ra" / "ra.crt")
    points = ra.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    urls = [name.value for point in points for name in point.full_name or []]
    assert urls == ["https://pki.example:8443/crl/ca.crl"]


def test_data_dir_from_environment(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    result = runner.invoke(main, ["init", "--ca-key-type", "p256"], env={"GATEWAY_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    assert (data_dir / "config.toml").is_file()


def test_unreachable_database_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_init(runner, data_dir, "--database-url", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert_clean_failure(result, "the database is unavailable", "127.0.0.1")
    for name in ALL_FILES:
        assert not (data_dir / name).exists(), name


# -- where the data directory cannot be -----------------------------------------------------------------------
# Tests run as root, which ignores permission bits; a path below a regular file fails for everyone.


def test_data_dir_below_a_regular_file(runner: CliRunner, tmp_path: Path) -> None:
    blocker = write(tmp_path / "blocker", b"a file, not a directory")
    result = run_init(runner, blocker / "data")
    assert_clean_failure(result, f"cannot create data directory {blocker / 'data'}", "Not a directory")
    assert blocker.read_bytes() == b"a file, not a directory"


def test_data_dir_that_is_a_file(runner: CliRunner, tmp_path: Path) -> None:
    blocker = write(tmp_path / "blocker", b"x")
    result = run_init(runner, blocker)
    assert_clean_failure(result, "--data-dir", "is a file")
