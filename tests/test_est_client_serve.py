"""`gateway client est …` and est/client.py against a real `gateway serve` process (its EST server on HTTPS).

The server runs as its own process (module-scoped), with one EST Basic user made by
`gateway est-user add`; the client side runs in-process through click's CliRunner. Every issued
certificate is checked with `openssl verify -CAfile`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from est.client import EstClient, EstClientError
from gateway.cli import main
from shared_ca.keys import load_private_key, public_key_bytes
from tests.support import ec_key, subject
from tests.test_serve import REPO, Server, child_env, gateway_command, openssl, start_server, stop_server

pytestmark = pytest.mark.slow

USER, PASSWORD = "est-client-test", "s3cret-password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("est-client")
    data_dir = workdir / "data"
    done = gateway_command("init", "--data-dir", str(data_dir), "--ca-key-type", "p256")
    assert done.returncode == 0, done.stderr
    with (data_dir / "config.toml").open("a") as config:  # a label whose CSRs must carry tls-unique
        config.write("\n[profiles.linked]\nest_pop_linking = true\n")
    labels = ["--label", "default", "--label", "linked"]  # a user opens only the labels it is given
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "est-user",
            "add",
            USER,
            *labels,
            "--data-dir",
            str(data_dir),
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    running = start_server(data_dir, workdir)
    yield running
    assert stop_server(running) == 0, running.stderr_text()


@pytest.fixture(scope="module")
def url(server: Server) -> str:
    return f"https://127.0.0.1:{server.https_port}"


def est(server: Server, url: str, *args: str, basic: bool = False) -> Result:
    credentials = ["--user", USER, "--password-stdin"] if basic else []
    command = ["client", "est", args[0], "--url", url, "--cacert", str(server.ca_pem), *credentials, *args[1:]]
    return CliRunner().invoke(main, command, input=PASSWORD + "\n" if basic else None)


def verified(server: Server, cert_file: Path) -> x509.Certificate:
    done = openssl("verify", "-CAfile", str(server.ca_pem), str(cert_file))
    assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done.stdout + done.stderr
    return x509.load_pem_x509_certificate(cert_file.read_bytes())


def same_key(cert: x509.Certificate, key_file: Path) -> bool:
    return public_key_bytes(cert.public_key()) == public_key_bytes(load_private_key(key_file, None).public_key())


def one_line_failure(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    return lines[-1]


def test_cacerts_is_the_ca(server: Server, url: str, tmp_path: Path) -> None:
    result = est(server, url, "cacerts", "--out", str(tmp_path / "cacerts.pem"))
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate(server.ca_pem.read_bytes())
    assert ca in x509.load_pem_x509_certificates((tmp_path / "cacerts.pem").read_bytes())


def test_csrattrs(server: Server, url: str) -> None:
    result = est(server, url, "csrattrs", "--format", "json", basic=True)
    assert result.exit_code == 0, result.output
    with EstClient(url, server.ca_pem, username=USER, password=PASSWORD) as client:
        attrs = client.csrattrs()
    assert "channel_binding" in result.stdout
    assert isinstance(attrs.asks_for_channel_binding, bool)


def test_enroll_reenroll_rekey(server: Server, url: str, tmp_path: Path) -> None:
    first = tmp_path / "dev.pem"
    enrolled = est(server, url, "enroll", "--cn", "est-dev-1", "--dns", "dev1.example", "--out", str(first), basic=True)
    assert enrolled.exit_code == 0, enrolled.output
    cert = verified(server, first)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "est-dev-1"
    assert same_key(cert, tmp_path / "dev.key")

    tls = ["--cert", str(first), "--key", str(tmp_path / "dev.key")]
    renewed = est(server, url, "reenroll", *tls, "--out", str(tmp_path / "renewed.pem"))
    assert renewed.exit_code == 0, renewed.output
    renewed_cert = verified(server, tmp_path / "renewed.pem")
    assert renewed_cert.subject == cert.subject
    assert renewed_cert.serial_number != cert.serial_number
    assert same_key(renewed_cert, tmp_path / "dev.key")
    sans = renewed_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["dev1.example"]

    tls = ["--cert", str(tmp_path / "renewed.pem"), "--key", str(tmp_path / "dev.key")]
    rekeyed = est(server, url, "reenroll", *tls, "--rekey", "--key-type", "rsa2048", "--out", str(tmp_path / "rk.pem"))
    assert rekeyed.exit_code == 0, rekeyed.output
    rekeyed_cert = verified(server, tmp_path / "rk.pem")
    assert rekeyed_cert.subject == cert.subject
    assert same_key(rekeyed_cert, tmp_path / "rk.key")
    assert not same_key(rekeyed_cert, tmp_path / "dev.key")


def test_enroll_with_channel_binding(server: Server, url: str, tmp_path: Path) -> None:
    key = ec_key()
    with EstClient(url, server.ca_pem, label="linked", username=USER, password=PASSWORD) as client:
        assert client.csrattrs().asks_for_channel_binding
        result = client.enroll_with_key(key, subject("est-linked"), link_channel=True)
        with pytest.raises(EstClientError, match="channel") as caught:
            client.enroll_with_key(ec_key(), subject("est-unlinked"))
    assert caught.value.status == 403
    (tmp_path / "linked.pem").write_bytes(result.certificate.public_bytes(Encoding.PEM))
    cert = verified(server, tmp_path / "linked.pem")
    assert public_key_bytes(cert.public_key()) == public_key_bytes(key.public_key())


def test_cli_binds_the_channel_when_csrattrs_asks(server: Server, url: str, tmp_path: Path) -> None:
    out = tmp_path / "auto.pem"
    result = est(server, url, "enroll", "--label", "linked", "--cn", "est-auto", "--out", str(out), basic=True)
    assert result.exit_code == 0, result.output
    verified(server, out)


def test_basic_after_the_401_challenge(server: Server, url: str) -> None:
    key = ec_key()
    with EstClient(url, server.ca_pem, username=USER, password=PASSWORD, preemptive_basic=False) as client:
        result = client.enroll_with_key(key, subject("est-challenged"))
    assert result.certificate.subject == subject("est-challenged")


def test_serverkeygen(server: Server, url: str, tmp_path: Path) -> None:
    out = tmp_path / "kg.pem"
    result = est(server, url, "serverkeygen", "--cn", "est-keygen", "--out", str(out), basic=True)
    assert result.exit_code == 0, result.output
    cert = verified(server, out)
    assert same_key(cert, tmp_path / "kg.key")
    assert (tmp_path / "kg.key").stat().st_mode & 0o777 == 0o600


def test_wrong_password_is_one_line(server: Server, url: str, tmp_path: Path) -> None:
    command = ["client", "est", "enroll", "--url", url, "--cacert", str(server.ca_pem)]
    command += ["--user", USER, "--password-stdin"]
    result = CliRunner().invoke(main, [*command, "--cn", "x", "--out", str(tmp_path / "x.pem")], input="wrong\n")
    line = one_line_failure(result)
    assert "HTTP 401" in line and 'Basic realm="EST"' in line
    assert not (tmp_path / "x.key").exists()


def test_unknown_label_and_no_credentials(server: Server, url: str) -> None:
    with EstClient(url, server.ca_pem, label="no-such-label", username=USER, password=PASSWORD) as client:
        with pytest.raises(EstClientError) as caught:
            client.enroll_with_key(ec_key(), subject("x"))
        assert caught.value.status == 404
    with EstClient(url, server.ca_pem) as client, pytest.raises(EstClientError) as caught:
        client.enroll_with_key(ec_key(), subject("x"))
    assert caught.value.status == 401
