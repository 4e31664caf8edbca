"""Interop: curl + openssl against `python -m gateway serve` over EST, exactly as INTEROP.md runs them,
and the SCEP→EST bridge: micromdm's scepclient enrolls over SCEP, then its certificate and key
authenticate an EST simplereenroll made with curl.

One initialised data directory (RSA CA: scepclient needs one) and one server for the module;
traffic stays on 127.0.0.1. Each pipeline runs under `bash -o pipefail`, so a failing curl is a
failing step, and on a failure the server's log (which names every refusal's cause) is shown.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_der_private_key
from cryptography.x509.oid import NameOID

from est import cmc
from est import cmc_asn1 as asn1
from gateway.config import load_config
from gateway.runtime import open_storage
from tests import test_est_cmc as cmc_tests
from tests.support import multipart_parts
from tests.test_scep_interop import (
    CHALLENGE,
    client_binary,
    client_env,
    common_name,
    load_certificate,
    recorded_certificates,
    run_scepclient,
    scepclient_report,
    serial_hex,
    server_log,
    spki,
)
from tests.test_serve import Server, free_ports, gateway_command, openssl, start_server, stop_server

pytestmark = pytest.mark.slow

USER, PASSWORD = "device-enroller", "Est-Interop-Password-1"
COMMAND_SECONDS = 60.0


def sh(script: str, cwd: Path, server: Server) -> subprocess.CompletedProcess[bytes]:
    """One INTEROP.md pipeline; fails the test (with the server log) if any command in it fails."""
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=client_env(),
        capture_output=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode}: {script}\n--- stderr:\n{done.stderr.decode(errors='replace')}\n"
        f"--- gateway serve log:\n{server_log(server)}"
    )
    return done


def verify(server: Server, cert_file: Path) -> None:
    verified = openssl("verify", "-CAfile", str(server.ca_pem), str(cert_file))
    assert verified.stdout.strip() == f"{cert_file}: OK", verified.stdout + verified.stderr


def est_events(server: Server, device: str) -> list[tuple[str, str, str]]:
    store = open_storage(load_config(server.data_dir, environ={}))
    try:
        events = store.enrollments.enrollment_events(device_identity=device)
    finally:
        store.engine.dispose()
    return [(e.protocol, e.operation, e.outcome) for e in reversed(events)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("est-interop")


@pytest.fixture(scope="module")
def gateway(workdir: Path) -> Iterator[Server]:
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    done = gateway_command(
        "init",
        "--data-dir",
        str(data_dir),
        "--ca-key-type",
        "rsa2048",
        "--scep-challenge",
        CHALLENGE,
        "--public-base-url",
        f"http://127.0.0.1:{http_port}",
    )
    assert done.returncode == 0, done.stderr
    added = subprocess.run(
        [sys.executable, "-m", "gateway", "est-user", "add", USER, "--password-stdin", "--data-dir", str(data_dir)],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
        env=client_env(),
    )
    assert added.returncode == 0, added.stderr
    server = start_server(data_dir, workdir, http_port=http_port)
    try:
        yield server
    finally:
        stop_server(server)


def base(server: Server) -> str:
    return f"https://127.0.0.1:{server.https_port}/.well-known/est"


def test_cacerts(gateway: Server, workdir: Path) -> None:
    done = sh(
        f"curl -sS --fail --cacert {gateway.ca_pem} {base(gateway)}/cacerts "
        "| openssl base64 -d | openssl pkcs7 -inform DER -print_certs",
        workdir,
        gateway,
    )
    certs = x509.load_pem_x509_certificates(done.stdout)
    assert certs == [load_certificate(gateway.ca_pem)]


def test_simpleenroll_then_simplereenroll(gateway: Server, workdir: Path) -> None:
    d = workdir / "curl-enroll"
    d.mkdir()
    sh(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout d.key -subj /CN=d1 "
        "-outform DER | openssl base64 > d.csr.b64",
        d,
        gateway,
    )
    sh(
        f"curl -sS --fail --cacert {gateway.ca_pem} --user {USER}:{PASSWORD} -H 'Content-Type: application/pkcs10' "
        f"--data-binary @d.csr.b64 {base(gateway)}/simpleenroll "
        "| openssl base64 -d | openssl pkcs7 -inform DER -print_certs > d.pem",
        d,
        gateway,
    )
    verify(gateway, d / "d.pem")
    enrolled = load_certificate(d / "d.pem")
    assert common_name(enrolled) == "d1"
    assert spki(enrolled) == spki(d / "d.key")

    sh("openssl req -new -key d.key -subj /CN=d1 -outform DER | openssl base64 > re.csr.b64", d, gateway)
    sh(
        f"curl -sS --fail --cacert {gateway.ca_pem} --cert d.pem --key d.key -H 'Content-Type: application/pkcs10' "
        f"--data-binary @re.csr.b64 {base(gateway)}/simplereenroll "
        "| openssl base64 -d | openssl pkcs7 -inform DER -print_certs > re.pem",
        d,
        gateway,
    )
    verify(gateway, d / "re.pem")
    renewed = load_certificate(d / "re.pem")
    assert renewed.subject == enrolled.subject and renewed.serial_number != enrolled.serial_number
    rows = recorded_certificates(gateway)
    assert rows[serial_hex(enrolled)]["protocol"] == "est"
    assert rows[serial_hex(renewed)]["protocol"] == "est"
    assert ("est", "simpleenroll", "issued") in est_events(gateway, "d1")
    assert ("est", "simplereenroll", "issued") in est_events(gateway, "d1")


def test_csrattrs(gateway: Server, workdir: Path) -> None:
    done = sh(
        f"curl -sS --fail --cacert {gateway.ca_pem} --user {USER}:{PASSWORD} {base(gateway)}/csrattrs "
        "| openssl base64 -d -A | openssl asn1parse -inform DER",
        workdir,
        gateway,
    )
    text = done.stdout.decode()
    assert "id-ecPublicKey" in text and "rsaEncryption" in text and "Extension Request" in text, text


def test_serverkeygen(gateway: Server, workdir: Path) -> None:
    d = workdir / "curl-serverkeygen"
    d.mkdir()
    sh(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ignored.key -subj /CN=skg1 "
        "-outform DER | openssl base64 > skg.csr.b64",
        d,
        gateway,
    )
    done = sh(
        f"curl -sS --fail -D headers.txt --cacert {gateway.ca_pem} --user {USER}:{PASSWORD} "
        f"-H 'Content-Type: application/pkcs10' --data-binary @skg.csr.b64 {base(gateway)}/serverkeygen",
        d,
        gateway,
    )
    headers = (d / "headers.txt").read_text()
    content_type = next(
        line.split(":", 1)[1].strip() for line in headers.splitlines() if line.lower().startswith("content-type:")
    )
    assert content_type.startswith("multipart/mixed"), headers
    parts = multipart_parts(content_type, done.stdout)
    assert [kind for kind, _ in parts] == ["application/pkcs8", "application/pkcs7-mime"]
    (_, key_der), (_, certs_der) = parts
    (d / "skg.p7").write_bytes(certs_der)
    printed = openssl("pkcs7", "-inform", "DER", "-in", str(d / "skg.p7"), "-print_certs", "-out", str(d / "skg.pem"))
    assert printed.returncode == 0, printed.stderr
    verify(gateway, d / "skg.pem")
    cert = load_certificate(d / "skg.pem")
    key = load_der_private_key(key_der, password=None)
    assert cert.public_key() == key.public_key()
    assert spki(cert) != spki(d / "ignored.key")  # the gateway made the key


def test_no_credentials_get_401_with_a_basic_challenge(gateway: Server, workdir: Path) -> None:
    d = workdir / "curl-401"
    d.mkdir()
    sh(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout n.key -subj /CN=nobody "
        "-outform DER | openssl base64 > n.csr.b64",
        d,
        gateway,
    )
    done = sh(
        f"curl -sS -o body.txt -D headers.txt -w '%{{http_code}}' --cacert {gateway.ca_pem} "
        f"-H 'Content-Type: application/pkcs10' --data-binary @n.csr.b64 {base(gateway)}/simpleenroll",
        d,
        gateway,
    )
    assert done.stdout == b"401"
    assert 'www-authenticate: basic realm="est"' in (d / "headers.txt").read_text().lower()


# -- the bridge: a SCEP device moves to EST with the certificate it has ---------------------------------


def test_scep_certificate_authenticates_est_simplereenroll(gateway: Server, workdir: Path) -> None:
    scepclient = client_binary("scepclient", "scep")
    d = workdir / "bridge"
    enroll = run_scepclient(scepclient, gateway, d, cn="bridge-device", challenge=CHALLENGE)
    assert enroll.returncode == 0, scepclient_report(enroll, gateway)
    scep_cert = load_certificate(d / "client.pem")

    # A CSR with exactly the certificate's subject, signed by the SCEP key (PKCS#1 from scepclient).
    sh(
        "openssl x509 -x509toreq -in client.pem -signkey client.key "
        "| openssl req -outform DER | openssl base64 > re.csr.b64",
        d,
        gateway,
    )
    sh(
        f"curl -sS --fail --cacert {gateway.ca_pem} --cert client.pem --key client.key "
        f"-H 'Content-Type: application/pkcs10' --data-binary @re.csr.b64 {base(gateway)}/simplereenroll "
        "| openssl base64 -d | openssl pkcs7 -inform DER -print_certs > est.pem",
        d,
        gateway,
    )
    verify(gateway, d / "est.pem")
    est_cert = load_certificate(d / "est.pem")
    assert est_cert.subject == scep_cert.subject
    assert est_cert.serial_number != scep_cert.serial_number
    rows = recorded_certificates(gateway)
    assert rows[serial_hex(scep_cert)]["protocol"] == "scep"
    assert rows[serial_hex(est_cert)]["protocol"] == "est"
    events = est_events(gateway, "bridge-device")
    assert ("scep", "PKCSReq", "issued") in events, events
    assert ("est", "simplereenroll", "issued") in events, events


# -- fullcmc: enrollment and self-revocation, posted with curl ------------------------------------------


def test_fullcmc_enrollment_and_self_revocation_show_in_the_crl(gateway: Server, workdir: Path) -> None:
    d = workdir / "curl-fullcmc"
    d.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    (d / "k.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmc-curl")])
    )
    content = cmc_tests.pki_data(
        cmc_tests.standard_controls(), [cmc_tests.tcr(1, csr.sign(key, hashes.SHA256()).public_bytes(Encoding.DER))]
    )
    request = cmc_tests.sign(content, key, cmc_tests.sid_ski(cmc_tests._ski(key)))
    (d / "enroll.b64").write_bytes(base64.encodebytes(request))
    cmc_type = "application/pkcs7-mime; smime-type=CMC-request"
    done = sh(
        f"curl -sS --fail --cacert {gateway.ca_pem} --user {USER}:{PASSWORD} -H '{'Content-Type: ' + cmc_type}' "
        f"--data-binary @enroll.b64 {base(gateway)}/fullcmc | openssl base64 -d > enrolled.der",
        d,
        gateway,
    )
    assert done.returncode == 0
    response = cmc.parse_pki_response((d / "enrolled.der").read_bytes())
    assert response.statuses[0].status is cmc.CmcStatus.SUCCESS
    cert = response.certificates[0]
    (d / "c.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    verify(gateway, d / "c.pem")

    revoke = asn1.RevokeRequest(
        {
            "issuer_name": asn1_x509.Name.load(cert.issuer.public_bytes()),
            "serial_number": cert.serial_number,
            "reason": "key_compromise",
        }
    )
    content = cmc_tests.pki_data([cmc_tests.control(1, "revoke_request", revoke)])
    (d / "revoke.b64").write_bytes(
        base64.encodebytes(cmc_tests.sign(content, key, cmc_tests.sid_ias(cert), certificates=[cert]))
    )
    sh(
        f"curl -sS --fail --cacert {gateway.ca_pem} --cert c.pem --key k.pem -H '{'Content-Type: ' + cmc_type}' "
        f"--data-binary @revoke.b64 {base(gateway)}/fullcmc | openssl base64 -d > revoked.der",
        d,
        gateway,
    )
    assert cmc.parse_pki_response((d / "revoked.der").read_bytes()).statuses[0].status is cmc.CmcStatus.SUCCESS
    sh(
        f"curl -sS --fail -o ca.crl http://127.0.0.1:{gateway.http_port}/crl/ca.crl "
        f"&& openssl crl -inform DER -in ca.crl -noout -CAfile {gateway.ca_pem}",
        d,
        gateway,
    )
    crl = x509.load_der_x509_crl((d / "ca.crl").read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None, f"serial {cert.serial_number:x} is not in the CRL"
