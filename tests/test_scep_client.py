"""`gateway client scep …`, the project's own SCEP client, against a real `gateway serve` process.

The server runs as its own process (module-scoped); the client side runs in-process through click's
CliRunner, which is much faster than a subprocess per command.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.cli import main
from scep.asn1 import PkiStatus
from scep.client import ScepClientError, ScepHttpClient, enroll, load_or_create_rsa_key
from scep.client_messages import transaction_id_for
from tests.test_serve import Server, free_ports, gateway_command, openssl, start_server, stop_server

pytestmark = pytest.mark.slow

CHALLENGE = "s3cret-challenge"
CIPHERS = ["des", "3des", "aes128", "aes192", "aes256"]
DIGESTS = ["sha1", "sha256", "sha512"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("scep-client")
    data_dir = workdir / "data"
    done = gateway_command(
        "init", "--data-dir", str(data_dir), "--ca-key-type", "rsa2048", "--scep-challenge", CHALLENGE
    )
    assert done.returncode == 0, done.stderr
    running = start_server(data_dir, workdir)
    yield running
    assert stop_server(running) == 0, running.stderr_text()


@pytest.fixture(scope="module")
def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.http_port}/scep"


def scep(*args: str) -> Result:
    return CliRunner().invoke(main, ["client", "scep", *args])


def assert_one_line_failure(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def enroll_cli(url: str, tmp_path: Path, name: str, *extra: str, challenge: str = CHALLENGE) -> Result:
    return scep(
        "enroll",
        "--url",
        url,
        "--challenge",
        challenge,
        "--subject",
        f"CN={name},O=Example",
        "--key",
        str(tmp_path / f"{name}.key"),
        "--out",
        str(tmp_path / f"{name}.pem"),
        *extra,
    )


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_enroll_with_every_cipher_and_digest(server: Server, url: str, tmp_path: Path) -> None:
    for cipher, digest in itertools.product(CIPHERS, DIGESTS):
        name = f"dev-{cipher}-{digest}"
        result = enroll_cli(url, tmp_path, name, "--cipher", cipher, "--digest", digest)
        assert result.exit_code == 0, (cipher, digest, result.output)
        cert = load(tmp_path / f"{name}.pem")
        assert f"SUCCESS serial {cert.serial_number:x}" in result.stdout
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert (tmp_path / f"{name}.key").stat().st_mode & 0o777 == 0o600
        verified = openssl("verify", "-CAfile", str(server.ca_pem), str(tmp_path / f"{name}.pem"))
        assert verified.returncode == 0, (cipher, digest, verified.stdout, verified.stderr)


def test_md5_is_refused_with_bad_alg(url: str, tmp_path: Path) -> None:
    line = assert_one_line_failure(enroll_cli(url, tmp_path, "dev-md5", "--digest", "md5"))
    assert "FAILURE badAlg" in line
    assert not (tmp_path / "dev-md5.pem").exists()


def test_wrong_challenge_is_refused_with_bad_request(url: str, tmp_path: Path) -> None:
    line = assert_one_line_failure(enroll_cli(url, tmp_path, "dev-wrong", challenge="not-the-challenge"))
    assert "FAILURE badRequest" in line


def test_enroll_again_with_the_same_key_gets_the_same_certificate(url: str, tmp_path: Path) -> None:
    """The transactionID is the key's hash: a repeated request is a retransmission, not a second certificate."""
    assert enroll_cli(url, tmp_path, "dev-again").exit_code == 0
    first = load(tmp_path / "dev-again.pem")
    assert enroll_cli(url, tmp_path, "dev-again").exit_code == 0
    assert load(tmp_path / "dev-again.pem").serial_number == first.serial_number


def test_renew_and_rekey(server: Server, url: str, tmp_path: Path) -> None:
    assert enroll_cli(url, tmp_path, "dev-renew").exit_code == 0
    key, cert = tmp_path / "dev-renew.key", tmp_path / "dev-renew.pem"
    renewed_path = tmp_path / "renewed.pem"
    result = scep("renew", "--url", url, "--key", str(key), "--cert", str(cert), "--out", str(renewed_path))
    assert result.exit_code == 0, result.output
    old, renewed = load(cert), load(renewed_path)
    assert renewed.serial_number != old.serial_number
    assert renewed.subject == old.subject
    assert renewed.public_key() == old.public_key()

    new_key, rekeyed_path = tmp_path / "new.key", tmp_path / "rekeyed.pem"
    result = scep(
        "renew",
        "--url",
        url,
        "--key",
        str(key),
        "--cert",
        str(renewed_path),
        "--new-key",
        str(new_key),
        "--out",
        str(rekeyed_path),
        "--cipher",
        "3des",
        "--digest",
        "sha1",
    )
    assert result.exit_code == 0, result.output
    rekeyed = load(rekeyed_path)
    assert rekeyed.serial_number not in (old.serial_number, renewed.serial_number)
    assert rekeyed.public_key() == load_or_create_rsa_key(new_key)[0].public_key()
    verified = openssl("verify", "-CAfile", str(server.ca_pem), str(rekeyed_path))
    assert verified.returncode == 0, verified.stderr


def test_poll_answers_an_issued_transaction(url: str, tmp_path: Path) -> None:
    assert enroll_cli(url, tmp_path, "dev-poll").exit_code == 0
    issued = load(tmp_path / "dev-poll.pem")
    client = ScepHttpClient(url)
    key, _ = load_or_create_rsa_key(tmp_path / "dev-poll.key")
    common = ["poll", "--url", url, "--key", str(tmp_path / "dev-poll.key"), "--subject", "CN=dev-poll,O=Example"]
    result = scep(*common, "--transaction-id", transaction_id_for(key.public_key()))
    assert result.exit_code == 0, result.output
    assert x509.load_pem_x509_certificate(result.stdout_bytes).serial_number == issued.serial_number
    assert f"SUCCESS serial {issued.serial_number:x}" in result.stderr
    line = assert_one_line_failure(scep(*common, "--transaction-id", "0" * 64))
    assert "FAILURE badCertID" in line
    assert client.get_ca_caps()  # the library client works on the same URL


def test_getcaps(url: str) -> None:
    result = scep("getcaps", "--url", url)
    assert result.exit_code == 0, result.output
    caps = result.stdout.split()
    for cap in ("POSTPKIOperation", "SHA-1", "SHA-256", "SHA-512", "AES", "DES3", "Renewal", "SCEPStandard"):
        assert cap in caps


def test_getcacert_over_https(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "ca-ra.pem"
    https = f"https://127.0.0.1:{server.https_port}/cgi-bin/pkiclient.exe"
    result = scep("getcacert", "--url", https, "--cacert", str(server.ca_pem), "--out", str(out))
    assert result.exit_code == 0, result.output
    ra, ca = x509.load_pem_x509_certificates(out.read_bytes())
    assert ca == load(server.ca_pem)
    assert ra.issuer == ca.subject
    untrusted = assert_one_line_failure(scep("getcaps", "--url", https))
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted


def test_enroll_by_get_when_post_is_not_advertised(url: str) -> None:
    client = ScepHttpClient(url)
    client._caps = ["SHA-256", "AES"]  # a server without POSTPKIOperation
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    result = enroll(client, key=key, subject=x509.Name.from_rfc4514_string("CN=dev-get,O=Example"), challenge=CHALLENGE)
    assert result.status is PkiStatus.SUCCESS, result
    assert result.certificate is not None
    assert result.certificate.public_key() == key.public_key()


def test_unreachable_server_is_one_clear_line(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    line = assert_one_line_failure(scep("getcaps", "--url", f"http://127.0.0.1:{port}/scep"))
    assert f"cannot reach http://127.0.0.1:{port}/scep" in line
    assert "refused" in line.lower()
    line = assert_one_line_failure(enroll_cli(f"http://127.0.0.1:{port}/scep", tmp_path, "dev-unreachable"))
    assert "cannot reach" in line


def test_http_errors_are_one_line_with_status_and_body(server: Server) -> None:
    line = assert_one_line_failure(scep("getcaps", "--url", f"http://127.0.0.1:{server.http_port}/scep/nope"))
    assert "HTTP 404" in line
    assert "unknown SCEP profile" in line
    with pytest.raises(ScepClientError, match="not an http"):
        ScepHttpClient("ftp://example.invalid/scep")


def test_scep_alias_still_runs_the_client(url: str, tmp_path: Path) -> None:
    """`gateway scep …`, the name before `gateway client scep …`, is kept hidden for one release."""
    caps = CliRunner().invoke(main, ["scep", "getcaps", "--url", url])
    assert caps.exit_code == 0, caps.output
    assert caps.stdout == scep("getcaps", "--url", url).stdout
    assert "Use `gateway client scep`" in caps.stderr
    name = "dev-old-spelling"
    key, out = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    old = ["scep", "enroll", "--url", url, "--challenge", CHALLENGE, "--subject", f"CN={name}", "--key", str(key)]
    enrolled = CliRunner().invoke(main, [*old, "--out", str(out)])
    assert enrolled.exit_code == 0, enrolled.output
    assert f"SUCCESS serial {load(out).serial_number:x}" in enrolled.stdout
