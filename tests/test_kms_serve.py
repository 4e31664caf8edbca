"""The CA and SCEP RA keys in a SoftHSM2 token, through the real server (issue 16).

One `gateway init --kms` and one `gateway serve` (two HTTPS workers) for the module: SCEP and EST
enrollments with the project's clients, revocation, OCSP and the CRL checked by openssl against the CA,
/readyz, the HTTPS handshakes signed by the token's TLS key (OpenSSL's pkcs11 provider), no private
key file anywhere in the data directory, a second init that finds the keys instead of making them, and
`gateway serve` refusing a wrong PIN, a missing token or a missing TLS key in one line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from est.client import EstClient
from gateway.cli import main
from scep import client as scep_client
from shared_ca.keys import public_key_bytes
from tests.kms_support import SoftHsm, private_key_files, softhsm_token
from tests.support import ec_key, make_csr, rsa_key
from tests.test_serve import (
    REPO,
    Server,
    child_env,
    distribution_urls,
    download_crl,
    fetch,
    free_ports,
    gateway_command,
    openssl,
    openssl_ocsp,
    openssl_verify,
    start_server,
    stop_server,
)
from tests.test_stays_up_serve import eventually

pytestmark = pytest.mark.slow

CHALLENGE = "kms-challenge-secret"
USER, PASSWORD = "kms-est-user", "kms-est-password"


@dataclass(frozen=True)
class TokenGateway:
    server: Server
    hsm: SoftHsm
    env: dict[str, str]
    init_stdout: str
    workdir: Path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenGateway]:
    workdir = tmp_path_factory.mktemp("kms-serve")
    hsm = softhsm_token(workdir / "hsm")
    env = child_env(**hsm.env)
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init = [
        *("init", "--data-dir", str(data_dir), "--ca-key-type", "p256", "--kms", hsm.uri()),
        *("--scep-challenge", CHALLENGE, "--public-base-url", f"http://127.0.0.1:{http_port}"),
    ]
    done = gateway_command(*init, env=env)
    assert done.returncode == 0, done.stderr
    added = subprocess.run(
        [sys.executable, "-m", "gateway", "est-user", "add", USER, "--data-dir", str(data_dir), "--password-stdin"],
        input=PASSWORD + "\n",
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    server = start_server(data_dir, workdir, env=env, http_port=http_port, workers=2)
    try:
        yield TokenGateway(server, hsm, env, done.stdout, workdir)
    finally:
        assert stop_server(server) == 0, server.stderr_text()


def verified(gw: TokenGateway, cert_file: Path) -> x509.Certificate:
    done = openssl("verify", "-CAfile", str(gw.server.ca_pem), str(cert_file))
    assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done.stdout + done.stderr
    return x509.load_pem_x509_certificate(cert_file.read_bytes())


def scep_enroll(gw: TokenGateway, directory: Path, name: str) -> Path:
    out = directory / f"{name}.pem"
    url = f"http://127.0.0.1:{gw.server.http_port}/scep"
    result = CliRunner().invoke(
        main,
        [
            *("client", "scep", "enroll", "--url", url, "--challenge", CHALLENGE),
            *("--subject", f"CN={name},O=Example", "--key", str(directory / f"{name}.key"), "--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_init_made_the_keys_in_the_token_and_left_no_key_file(gw: TokenGateway) -> None:
    data_dir = gw.server.data_dir
    made = "keys       token 'gw': made pkcs11:object=ca-key, pkcs11:object=ra-key, pkcs11:object=tls-key"
    assert made in gw.init_stdout
    config = (data_dir / "config.toml").read_text()
    assert re.search(r'(?m)^\[ca\]\n(?:.*\n)*?key = "pkcs11:object=ca-key"$', config), config
    assert gw.hsm.uri() in config
    assert 'key = "pkcs11:object=tls-key"' in config
    assert private_key_files(data_dir) == []


def test_a_second_init_finds_the_keys_in_the_token(gw: TokenGateway) -> None:
    other = gw.workdir / "second"
    done = gateway_command("init", "--data-dir", str(other), "--kms", gw.hsm.uri(), env=gw.env)
    assert done.returncode == 0, done.stderr
    found = "keys       token 'gw': found pkcs11:object=ca-key, pkcs11:object=ra-key, pkcs11:object=tls-key"
    assert found in done.stdout
    first = x509.load_pem_x509_certificate(gw.server.ca_pem.read_bytes())
    second = x509.load_pem_x509_certificate((other / "ca.pem").read_bytes())
    assert public_key_bytes(second.public_key()) == public_key_bytes(first.public_key())
    assert private_key_files(other) == []


def test_rollover_with_keys_in_the_token_from_prepare_to_renewals_without_restart(tmp_path: Path) -> None:
    """A gateway whose CA, RA and TLS keys are in a token rolls over: the next CA's and RA's keys are
    made in the token and the slot's key files only name them; GetNextCACert serves the next CA, and
    after `gateway ca activate` (no restart) a SCEP renewal and an EST enrollment get certificates of
    the new CA, signed in the token, while OCSP still answers for the old CA's. No private key file at
    any point. A second gateway on the same token whose next keys would take the same labels is refused
    before it makes anything."""
    hsm = softhsm_token(tmp_path / "hsm", label="roll")
    env = child_env(**hsm.env)
    data_dir = tmp_path / "data"
    (http_port,) = free_ports(1)
    init = [
        *("init", "--data-dir", str(data_dir), "--ca-key-type", "p256", "--kms", hsm.uri()),
        *("--scep-challenge", CHALLENGE, "--public-base-url", f"http://127.0.0.1:{http_port}"),
    ]
    assert gateway_command(*init, env=env).returncode == 0
    server = start_server(data_dir, tmp_path, env=env, http_port=http_port, workers=2)
    try:
        scep_url = f"http://127.0.0.1:{http_port}/scep"
        client = scep_client.ScepHttpClient(scep_url, timeout=10)
        old_ca = x509.load_pem_x509_certificate((data_dir / "ca" / "ca.crt").read_bytes())
        device_key = rsa_key(fresh=True)
        device = scep_client.enroll(
            client, key=device_key, subject=x509.Name.from_rfc4514_string("CN=roll-device"), challenge=CHALLENGE
        )
        assert device.certificate is not None, device

        prepared = gateway_command("ca", "rollover", "--data-dir", str(data_dir), "--ca-key-type", "p256", env=env)
        assert prepared.returncode == 0, prepared.stderr
        assert "keys       token 'roll': made pkcs11:object=ca-next-ca-key, pkcs11:object=ca-next-ra-key" in (
            prepared.stdout
        )
        assert (data_dir / "ca-next" / "ca.key").read_text().splitlines()[-1] == "pkcs11:object=ca-next-ca-key"
        assert (data_dir / "ra-next" / "ra.key").read_text().splitlines()[-1] == "pkcs11:object=ca-next-ra-key"
        assert private_key_files(data_dir) == []
        new_ca = x509.load_pem_x509_certificate((data_dir / "ca-next" / "ca.crt").read_bytes())
        eventually(
            lambda: all(fetch(http_port, "/scep?operation=GetNextCACert").status == 200 for _ in range(4)),
            "GetNextCACert answered by every worker",
        )

        activated = gateway_command("ca", "activate", "--data-dir", str(data_dir), env=env)
        assert activated.returncode == 0, activated.stderr
        eventually(
            lambda: all(scep_client.ScepHttpClient(scep_url).get_ca_certs()[1] == [new_ca] for _ in range(4)),
            "every worker issues from the new CA",
        )
        renewed = scep_client.renew(scep_client.ScepHttpClient(scep_url), key=device_key, cert=device.certificate)
        assert renewed.certificate is not None, renewed
        renewed.certificate.verify_directly_issued_by(new_ca)  # signed by the new CA key, in the token
        added = subprocess.run(
            [sys.executable, "-m", "gateway", "est-user", "add", USER, "--data-dir", str(data_dir), "--password-stdin"],
            input=PASSWORD + "\n", cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        with EstClient(
            f"https://127.0.0.1:{server.https_port}", server.ca_pem, username=USER, password=PASSWORD
        ) as est:
            enrolled = est.simpleenroll(
                make_csr(ec_key(), x509.Name.from_rfc4514_string("CN=roll-est")).public_bytes(Encoding.DER)
            )
        enrolled.certificate.verify_directly_issued_by(new_ca)
        old_status = ocsp_status(http_port, device.certificate, old_ca)
        assert old_status == ocsp.OCSPCertStatus.GOOD  # the old CA's key, in the token, still signs OCSP
        assert private_key_files(data_dir) == []
        assert server.process.poll() is None  # never restarted

        other = tmp_path / "other"
        second = [*("init", "--data-dir", str(other), "--kms", hsm.uri(), "--ca-key-uri", "pkcs11:object=ca-2")]
        second += ["--ra-key-uri", "pkcs11:object=ra-2", "--tls-key-uri", "pkcs11:object=tls-2"]
        assert gateway_command(*second, env=env).returncode == 0
        refused = gateway_command("ca", "rollover", "--data-dir", str(other), env=env)
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr.strip().splitlines() == [
            "Error: token 'roll' already holds pkcs11:object=ca-next-ca-key, pkcs11:object=ca-next-ra-key, the "
            "labels of this rollover's keys: remove them if no CA uses them, or give this gateway a token of its own"
        ], refused.stderr
        assert not (other / "ca-next").exists()
    finally:
        assert stop_server(server) == 0, server.stderr_text()


def ocsp_status(http_port: int, cert: x509.Certificate, issuer: x509.Certificate) -> ocsp.OCSPCertStatus:
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
    reply = fetch(
        http_port,
        "/ocsp",
        method="POST",
        body=request.public_bytes(Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    assert reply.status == 200
    answer = ocsp.load_der_ocsp_response(reply.body)
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return answer.certificate_status


def test_readyz_reports_the_token(gw: TokenGateway) -> None:
    reply = fetch(gw.server.http_port, "/readyz")
    assert reply.status == 200, reply.body
    assert json.loads(reply.body)["checks"]["keys"] == "ok"


def test_scep_enrollment_signed_and_decrypted_in_the_token(gw: TokenGateway, tmp_path: Path) -> None:
    cert = verified(gw, scep_enroll(gw, tmp_path, "kms-scep-device"))
    assert cert.subject.rfc4514_string() == "CN=kms-scep-device,O=Example"
    assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256  # the P-256 CA key


def test_est_enrollment_signed_in_the_token(gw: TokenGateway, tmp_path: Path) -> None:
    out = tmp_path / "est.pem"
    url = f"https://127.0.0.1:{gw.server.https_port}"
    result = CliRunner().invoke(
        main,
        [
            *("client", "est", "enroll", "--url", url, "--cacert", str(gw.server.ca_pem)),
            *("--user", USER, "--password-stdin", "--cn", "kms-est-device", "--out", str(out)),
        ],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    cert = verified(gw, out)
    _crl_url, ocsp_url = distribution_urls(out)
    assert "good" in openssl_ocsp(gw.server, ocsp_url, out)
    assert cert.subject.rfc4514_string() == "CN=kms-est-device"


def test_revocation_shows_in_ocsp_and_the_crl(gw: TokenGateway, tmp_path: Path) -> None:
    cert_file = scep_enroll(gw, tmp_path, "kms-revoked")
    serial = format(x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number, "x")
    revoked = gateway_command(
        "cert", "revoke", serial, "--reason", "key_compromise", "--data-dir", str(gw.server.data_dir), env=gw.env
    )
    assert revoked.returncode == 0, revoked.stderr
    crl_url, ocsp_url = distribution_urls(cert_file)
    assert re.search(rf"{re.escape(str(cert_file))}: revoked", openssl_ocsp(gw.server, ocsp_url, cert_file))
    download_crl(gw.server, crl_url, tmp_path / "ca.crl.pem")
    checked = openssl_verify(gw.server, tmp_path / "ca.crl.pem", cert_file)
    assert checked.returncode != 0 and "certificate revoked" in checked.stdout + checked.stderr


def refused_start(gw: TokenGateway, kms: str | None = None, **settings: str) -> str:
    """`gateway serve` on the module's data directory with keys.kms set to `kms` (and the GATEWAY_
    variables `settings`): its one line on stderr."""
    http_port, https_port = free_ports(2)
    env = dict(gw.env, **settings)
    if kms is not None:
        env["GATEWAY_KEYS_KMS"] = kms
    done = gateway_command(
        *("serve", "--data-dir", str(gw.server.data_dir)),
        *("--http", f"127.0.0.1:{http_port}", "--https", f"127.0.0.1:{https_port}"),
        env=env,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_wrong_pin_stops_serve_in_one_line(gw: TokenGateway) -> None:
    wrong = gw.workdir / "wrong-pin"
    wrong.write_text("9999\n")
    line = refused_start(gw, gw.hsm.uri(pin_file=wrong))
    assert f"wrong PIN for token 'gw' (from {wrong})" in line


def test_a_missing_token_stops_serve_in_one_line(gw: TokenGateway) -> None:
    line = refused_start(gw, gw.hsm.uri(label="absent"))
    assert "no token 'absent' in the PKCS#11 module /usr/lib/softhsm/libsofthsm2.so (tokens there: 'gw')" in line


@pytest.mark.parametrize(
    ("tls_key", "message"),
    [
        pytest.param(
            "pkcs11:object=absent-tls",
            "Error: the HTTPS key pkcs11:object=absent-tls is not in token 'gw'",
            id="fail/absent",
        ),
        pytest.param(
            "pkcs11:object=ra-key",
            "the HTTPS key pkcs11:object=ra-key in token 'gw' does not load with ",
            id="fail/another-keys-certificate",
        ),
    ],
)
def test_a_tls_key_the_token_cannot_serve_stops_serve_in_one_line(gw: TokenGateway, tls_key: str, message: str) -> None:
    line = refused_start(gw, GATEWAY_TLS_KEY=tls_key)
    assert message in line, line


def provider_config(directory: Path) -> Path:
    """An OpenSSL configuration that loads the pkcs11 provider for the SoftHSM2 module, for openssl(1)."""
    modules = openssl("version", "-m").stdout.partition(":")[2].strip().strip('"')
    conf = directory / "openssl-pkcs11.cnf"
    conf.write_text(
        "openssl_conf = init\n[init]\nproviders = providers\n[providers]\ndefault = on\npkcs11 = pkcs11\n"
        f"[on]\nactivate = 1\n[pkcs11]\nmodule = {modules}/pkcs11.so\n"
        "pkcs11-module-path = /usr/lib/softhsm/libsofthsm2.so\npkcs11-module-quirks = no-deinit\nactivate = 1\n"
    )
    return conf


def test_https_handshakes_are_signed_by_the_token_key_in_every_worker(gw: TokenGateway, tmp_path: Path) -> None:
    """The certificate the listener presents is that of the token's tls-key (read from the token by
    openssl through the provider), and handshakes verify with TLS 1.3 and 1.2: each one's signature
    (CertificateVerify, ServerKeyExchange) was made in the token, the data directory holding no key."""
    env = dict(gw.env, OPENSSL_CONF=str(provider_config(tmp_path)))
    in_token = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", f"pkcs11:token={gw.hsm.label};object=tls-key;type=public", "-pubout"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert in_token.returncode == 0, in_token.stderr
    served_keys = set()
    for version in ("-tls1_3", "-tls1_2") * 4:  # eight connections: both workers answer some
        done = subprocess.run(
            [
                *("openssl", "s_client", version, "-connect", f"127.0.0.1:{gw.server.https_port}"),
                *("-CAfile", str(gw.server.ca_pem), "-verify_return_error", "-servername", "localhost"),
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0 and "Verify return code: 0 (ok)" in done.stdout, done.stdout + done.stderr
        leaf = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", done.stdout, re.DOTALL)
        assert leaf is not None
        served_keys.add(public_key_bytes(x509.load_pem_x509_certificate(leaf.group(0).encode()).public_key()))
    token_key = serialization.load_pem_public_key(in_token.stdout.encode())
    assert served_keys == {public_key_bytes(token_key)}  # type: ignore[arg-type]
    assert private_key_files(gw.server.data_dir) == []


def test_init_can_keep_the_tls_key_in_a_file(gw: TokenGateway) -> None:
    other = gw.workdir / "tls-file"
    uris = ["--ca-key-uri", "pkcs11:object=ca-5", "--ra-key-uri", "pkcs11:object=ra-5", "--tls-key-file"]
    done = gateway_command("init", "--data-dir", str(other), "--kms", gw.hsm.uri(), *uris, env=gw.env)
    assert done.returncode == 0, done.stderr
    assert "made pkcs11:object=ca-5, pkcs11:object=ra-5\n" in done.stdout
    assert private_key_files(other) == ["tls/server.key"]
    assert "tls-key" not in (other / "config.toml").read_text()  # tls.key keeps its default, the file


def test_separate_ra_keys_in_the_token_load_as_serve_loads_them(gw: TokenGateway) -> None:
    other = gw.workdir / "separate"
    uris = ["--ca-key-uri", "pkcs11:object=ca-3", "--ra-key-uri", "pkcs11:object=ra-sign-3"]
    uris += ["--ra-encryption-key-uri", "pkcs11:object=ra-enc-3"]
    done = gateway_command(
        "init", "--data-dir", str(other), "--separate-ra-keys", "--kms", gw.hsm.uri(), *uris, env=gw.env
    )
    assert done.returncode == 0, done.stderr
    made = "made pkcs11:object=ca-3, pkcs11:object=ra-sign-3, pkcs11:object=ra-enc-3"
    assert made in done.stdout
    assert private_key_files(other) == []
    checked = gateway_command("config", "check", "--data-dir", str(other), env=gw.env)
    assert checked.returncode == 0, checked.stderr


def test_a_failed_init_destroys_the_keys_it_made(gw: TokenGateway) -> None:
    uris = ["--ca-key-uri", "pkcs11:object=doomed-ca", "--ra-key-uri", "pkcs11:object=doomed-ra"]
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    failed = gateway_command(
        *("init", "--data-dir", str(gw.workdir / "doomed"), "--kms", gw.hsm.uri(), *uris),
        *("--database-url", unreachable),
        env=gw.env,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    again = gateway_command("init", "--data-dir", str(gw.workdir / "again"), "--kms", gw.hsm.uri(), *uris, env=gw.env)
    assert again.returncode == 0, again.stderr
    assert "made pkcs11:object=doomed-ca, pkcs11:object=doomed-ra" in again.stdout  # not found: they were gone


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(
            ["--ca-key-uri", "pkcs11:object=x"], "are about keys in the --kms token", id="fail/uri-without-kms"
        ),
        pytest.param(
            ["--kms", "KMS", "--import-ca-key", "k.pem"], "with --kms the CA key is in the token", id="fail/import"
        ),
        pytest.param(
            ["--kms", "pkcs11:token=gw?pin-value=1"],
            "--kms: pkcs11:token=gw?pin-value=*** names no module-path",
            id="fail/kms",
        ),
        pytest.param(
            ["--kms", "KMS", "--ca-key-uri", "pkcs11:object=a;type=public"], "--ca-key-uri: ", id="fail/key-uri"
        ),
        pytest.param(
            ["--kms", "KMS", "--ra-key-uri", "pkcs11:object=ca-key"], "different token objects", id="fail/same-key"
        ),
        pytest.param(
            ["--kms", "KMS", "--tls-key-uri", "pkcs11:object=ra-key"], "different token objects", id="fail/same-tls"
        ),
        pytest.param(["--tls-key-file"], "are about keys in the --kms token", id="fail/tls-file-without-kms"),
        pytest.param(
            ["--kms", "KMS", "--tls-key-file", "--tls-key-uri", "pkcs11:object=t"],
            "--tls-key-file and --tls-key-uri exclude each other",
            id="fail/tls-file-and-uri",
        ),
    ],
)
def test_init_refusals_are_one_line(gw: TokenGateway, arguments: list[str], message: str) -> None:
    arguments = [gw.hsm.uri() if a == "KMS" else a for a in arguments]
    done = gateway_command("init", "--data-dir", str(gw.workdir / "refused"), *arguments, env=gw.env)
    assert done.returncode in (1, 2), done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert message in done.stderr, done.stderr
    assert not (gw.workdir / "refused" / "config.toml").exists()


def test_a_backup_holds_no_token_key(gw: TokenGateway) -> None:
    archive = gw.workdir / "backup.tar.gz"
    made = gateway_command("backup", "--data-dir", str(gw.server.data_dir), "--out", str(archive), env=gw.env)
    assert made.returncode == 0, made.stderr
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert "data/ca/ca.crt" in names and "data/ra/ra.crt" in names
    assert "data/tls/server.crt" in names and "data/tls/server.key" not in names
    assert not [n for n in names if n.endswith(("ca.key", "ra.key"))], names
    assert not {"ca.key", "ra.key", "tls.key"} & set(manifest["settings"]), manifest["settings"]
