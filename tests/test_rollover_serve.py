"""CA rollover end to end on one running `gateway serve` (--workers 1), never restarted: the RA
certificate renews itself; devices enroll over SCEP (our client and micromdm's scepclient) and EST;
`gateway ca rollover` is served at once by GetNextCACert and EST /cacerts (with the RFC 7030 §4.1.3
root key update certificates); `gateway ca activate`; then renewals over SCEP (RenewalReq, both
clients) and EST (simplereenroll with the old certificate) and new enrollments get certificates of
the new CA, while the old CA's CRL and OCSP answers are still served.

certmonger does not take part: its daemon keeps local copies of the CA's and RA's certificates and
refreshes them on its own schedule (`getcert refresh-ca -c NAME` forces it), so across an activation
its next renewal works once it has refreshed them; starting its daemon and waiting for MONITORING
costs tens of seconds (tests/test_scep_interop.py does it for the other flows). docs/operations.md
(the rollover section) says what a certmonger host sees and does.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from est import cmc, cmc_asn1
from est.client import EstClient
from gateway.cli import main
from gateway.config import load_config
from scep import client as scep_client
from scep.client_messages import parse_next_ca_reply
from scep.ra_roles import RaCertificates
from tests import test_est_cmc as cmc_tests
from tests.support import ec_key, make_csr, rsa_key
from tests.test_ca_activation import crl_signed_by, links, verify_chain
from tests.test_ra_renewal import replace_ra
from tests.test_scep_interop import client_binary, load_certificate, run_scepclient, scepclient_report
from tests.test_serve import Server, fetch, free_ports, gateway_command, start_server, stop_server, tls_context
from tests.test_stays_up_serve import eventually

pytestmark = pytest.mark.slow

CHALLENGE = "Rollover-Secret-16"
USER, PASSWORD = "rollover-user", "rollover password 16"


@dataclass(frozen=True)
class Node:
    server: Server
    workdir: Path
    short_ra: x509.Certificate  # the RA certificate the node started with, ten days from its end

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def scep_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}/scep"

    @property
    def est_url(self) -> str:
        return f"https://127.0.0.1:{self.server.https_port}"


def cli(node: Node, *args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(main, [*args, "--data-dir", str(node.data_dir)], input=stdin)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    workdir = tmp_path_factory.mktemp("rollover")
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    done = gateway_command(
        "init",
        "--data-dir",
        str(data_dir),
        "--ca-key-type",
        "rsa2048",  # micromdm's scepclient encrypts to every certificate of GetCACert: RSA only
        "--scep-challenge",
        CHALLENGE,
        "--public-base-url",
        f"http://127.0.0.1:{http_port}",
    )
    assert done.returncode == 0, done.stderr
    added = CliRunner().invoke(
        main,
        ["est-user", "add", USER, "--label", "default", "--password-stdin", "--data-dir", str(data_dir)],
        input=PASSWORD + "\n",
    )
    assert added.exit_code == 0, added.output
    short = replace_ra(load_config(data_dir, environ={}), days=10)  # due: ra.renew_before_days is 30
    server = start_server(data_dir, workdir, http_port=http_port)
    try:
        yield Node(server, workdir, short)
    finally:
        stop_server(server)


def scep(node: Node) -> scep_client.ScepHttpClient:
    return scep_client.ScepHttpClient(node.scep_url, timeout=10)


def ca_certs(node: Node) -> tuple[x509.Certificate, list[x509.Certificate]]:
    return scep(node).get_ca_certs()


def est_cacerts(node: Node) -> list[x509.Certificate]:
    with EstClient(node.est_url, node.server.ca_pem) as client:
        return client.cacerts()


def pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def write_credentials(directory: Path, name: str, cert: x509.Certificate, key: object) -> tuple[Path, Path]:
    assert hasattr(key, "private_bytes")
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def ocsp_answer(node: Node, cert: x509.Certificate, issuer: x509.Certificate) -> ocsp.OCSPResponse:
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
    reply = fetch(
        node.server.http_port,
        "/ocsp",
        method="POST",
        body=request.public_bytes(Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    assert reply.status == 200
    return ocsp.load_der_ocsp_response(reply.body)


def crl(node: Node, name: str) -> x509.CertificateRevocationList:
    reply = fetch(node.server.http_port, f"/crl/{name}.crl")
    assert reply.status == 200, name
    return x509.load_der_x509_crl(reply.body)


def test_the_ra_certificate_renews_itself_while_serving(node: Node) -> None:
    https = tls_context(node.server.ca_pem)

    def renewed() -> bool:  # by every worker of both listeners: a few answers in a row from each
        for _ in range(4):
            for port, context in ((node.server.http_port, None), (node.server.https_port, https)):
                reply = fetch(port, "/scep?operation=GetCACert", context=context)
                if reply.status != 200 or node.short_ra.public_bytes(Encoding.DER) in reply.body:
                    return False
        return True

    eventually(renewed, "the renewed RA certificate served by every worker")
    ra, chain = ca_certs(node)
    assert ra.public_key() == node.short_ra.public_key() and ra.subject == node.short_ra.subject
    assert ra.not_valid_after_utc > node.short_ra.not_valid_after_utc + dt.timedelta(days=300)
    assert pem(node.data_dir / "ra" / "ra.crt") == ra
    assert "renewed the SCEP RA certificate (same key)" in node.server.stderr_text()

    # A device that kept the GetCACert of before the renewal encrypts to the earlier RA certificate: the
    # envelope names a serial the RA no longer holds, of the same key, and is opened all the same.
    kept = scep(node)
    kept._ca_certs = RaCertificates(node.short_ra, node.short_ra, tuple(chain))
    enrolled = scep_client.enroll(
        kept, key=rsa_key(fresh=True), subject=x509.Name.from_rfc4514_string("CN=kept-short-ra"), challenge=CHALLENGE
    )
    assert enrolled.certificate is not None, enrolled
    assert "SCEP envelope addressed to an earlier RA certificate" in node.server.stderr_text()


def test_rollover_prepare_activate_and_renewals_on_the_new_ca_without_restart(node: Node, tmp_path: Path) -> None:
    pid = node.server.process.pid
    old_ca = pem(node.data_dir / "ca" / "ca.crt")
    scepclient = client_binary("scepclient", "scep")

    # Before: a device of each kind holds a certificate of the old CA.
    scep_key = rsa_key(fresh=True)
    scep_dev = scep_client.enroll(
        scep(node), key=scep_key, subject=x509.Name.from_rfc4514_string("CN=rollover-scep"), challenge=CHALLENGE
    )
    assert scep_dev.certificate is not None, scep_dev
    scep_dev.certificate.verify_directly_issued_by(old_ca)
    est_key = ec_key()
    with EstClient(node.est_url, node.server.ca_pem, username=USER, password=PASSWORD) as est:
        est_dev = est.simpleenroll(
            make_csr(est_key, x509.Name.from_rfc4514_string("CN=rollover-est")).public_bytes(Encoding.DER)
        )
    est_dev.certificate.verify_directly_issued_by(old_ca)
    mdm_dir = tmp_path / "scepclient"
    first = run_scepclient(scepclient, node.server, mdm_dir, cn="rollover-mdm", challenge=CHALLENGE)
    assert first.returncode == 0, scepclient_report(first, node.server)
    load_certificate(mdm_dir / "client.pem").verify_directly_issued_by(old_ca)

    # Prepare: GetNextCACert and /cacerts publish the next CA within seconds.
    prepared = cli(node, "ca", "rollover", "--ca-key-type", "rsa2048")
    assert "not active yet" in prepared
    new_ca, new_ra = pem(node.data_dir / "ca-next" / "ca.crt"), pem(node.data_dir / "ra-next" / "ra.crt")
    https = tls_context(node.server.ca_pem)

    def published() -> bool:
        return all(
            fetch(node.server.http_port, "/scep?operation=GetNextCACert").status == 200
            and fetch(node.server.https_port, "/scep?operation=GetNextCACert", context=https).status == 200
            for _ in range(4)
        )

    eventually(published, "GetNextCACert answered by every worker")
    ra, _chain = ca_certs(node)
    reply = fetch(node.server.http_port, "/scep?operation=GetNextCACert")
    assert parse_next_ca_reply(reply.body, ra_cert=ra) == [new_ra, new_ca]
    new_with_old, old_with_new = links(est_cacerts(node), old_ca, new_ca)  # RFC 7030 §4.1.3
    new_with_old.verify_directly_issued_by(old_ca)
    old_with_new.verify_directly_issued_by(new_ca)
    still_old = scep_client.enroll(
        scep(node), key=rsa_key(fresh=True), subject=x509.Name.from_rfc4514_string("CN=still-old"), challenge=CHALLENGE
    )
    assert still_old.certificate is not None and still_old.certificate.issuer == old_ca.subject

    kept = scep(node)  # a device that keeps the GetCACert it fetched before the switch
    assert kept.get_ca_certs() == (ra, [old_ca])

    # Activate: every worker issues from the new CA, no restart.
    activated = cli(node, "ca", "activate")
    assert "issuing CA ca-next" in activated

    def switched() -> bool:
        return all(ca_certs(node) == (new_ra, [new_ca]) for _ in range(4)) and all(
            fetch(node.server.https_port, "/scep?operation=GetCACert", context=https).body.count(
                new_ca.public_bytes(Encoding.DER)
            )
            == 1
            for _ in range(4)
        )

    eventually(switched, "GetCACert answered with the new RA and CA by every worker")
    # Reports name the certificates by what their CA is now, not by the slot their files are in.
    status = CliRunner().invoke(main, ["status", "--format", "json", "--data-dir", str(node.data_dir)])
    expiring = {c["role"]: c["path"] for c in json.loads(status.stdout)["certificates"]}
    assert expiring["ca"] == str(node.data_dir / "ca-next" / "ca.crt"), expiring
    assert expiring["ra"] == str(node.data_dir / "ra-next" / "ra.crt"), expiring
    assert expiring["previous ca"] == str(node.data_dir / "ca" / "ca.crt") and "next ca" not in expiring
    metrics = fetch(node.server.http_port, "/metrics").body.decode()
    assert 'role="previous_ca"' in metrics and 'role="next_ca"' not in metrics, metrics
    assert links(est_cacerts(node), old_ca, new_ca) == (new_with_old, old_with_new)

    # That device still encrypts to the old RA: the old RA opens the request and signs the CertRep (the
    # device trusts only it), and the certificate comes from the new CA.
    late = scep_client.enroll(
        kept, key=rsa_key(fresh=True), subject=x509.Name.from_rfc4514_string("CN=kept-old-ra"), challenge=CHALLENGE
    )
    assert late.certificate is not None, late
    late.certificate.verify_directly_issued_by(new_ca)
    assert "was encrypted to the replaced CA's RA CN=" in node.server.stderr_text()

    # Renewals across the switch, on both protocols and both SCEP clients: certificates of the new CA.
    renewed = scep_client.renew(scep(node), key=scep_key, cert=scep_dev.certificate)
    assert renewed.certificate is not None, renewed
    renewed.certificate.verify_directly_issued_by(new_ca)
    assert renewed.certificate.subject == scep_dev.certificate.subject
    est_files = write_credentials(tmp_path, "est-device", est_dev.certificate, est_key)
    with EstClient(node.est_url, node.server.ca_pem, cert_file=est_files[0], key_file=est_files[1]) as est:
        est_renewed = est.simplereenroll(make_csr(ec_key(), est_dev.certificate.subject).public_bytes(Encoding.DER))
    est_renewed.certificate.verify_directly_issued_by(new_ca)
    again = run_scepclient(scepclient, node.server, mdm_dir, cn="rollover-mdm", challenge=CHALLENGE)
    assert again.returncode == 0, scepclient_report(again, node.server)
    assert "pkiStatus=SUCCESS" in again.stderr, scepclient_report(again, node.server)
    load_certificate(mdm_dir / "client.pem").verify_directly_issued_by(new_ca)
    fresh = scep_client.enroll(
        scep(node), key=rsa_key(fresh=True), subject=x509.Name.from_rfc4514_string("CN=after"), challenge=CHALLENGE
    )
    assert fresh.certificate is not None
    fresh.certificate.verify_directly_issued_by(new_ca)

    # The old CA winds down: its CRL is published and valid, OCSP still answers for its certificates.
    old_crl = crl(node, "ca")
    assert crl_signed_by(old_crl, old_ca)
    assert old_crl.next_update_utc is not None and old_crl.next_update_utc > dt.datetime.now(dt.UTC)
    assert crl_signed_by(crl(node, "ca-next"), new_ca)
    assert ocsp_answer(node, scep_dev.certificate, old_ca).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert ocsp_answer(node, renewed.certificate, new_ca).certificate_status == ocsp.OCSPCertStatus.GOOD
    # A device of the old CA may still revoke its own certificate over EST fullcmc (RFC 5272 §6.11),
    # authenticated by it: the revocation goes onto the old CA's CRL.
    revoke = cmc_asn1.RevokeRequest(
        {
            "issuer_name": asn1_x509.Name.load(est_dev.certificate.issuer.public_bytes()),
            "serial_number": est_dev.certificate.serial_number,
            "reason": "key_compromise",
        }
    )
    content = cmc_tests.pki_data([cmc_tests.control(1, "revoke_request", revoke)])
    signed = cmc_tests.sign(
        content, est_key, cmc_tests.sid_ias(est_dev.certificate), certificates=[est_dev.certificate]
    )
    with_device = tls_context(node.server.ca_pem)
    with_device.load_cert_chain(*est_files)
    reply = fetch(
        node.server.https_port,
        "/.well-known/est/fullcmc",
        method="POST",
        body=base64.encodebytes(signed),
        headers={
            "Content-Type": "application/pkcs7-mime; smime-type=CMC-request",
            "Content-Transfer-Encoding": "base64",
        },
        context=with_device,
    )
    assert reply.status == 200, reply.body
    assert cmc.parse_pki_response(base64.b64decode(reply.body)).statuses[0].status is cmc.CmcStatus.SUCCESS

    def on_the_old_crl() -> bool:
        return crl(node, "ca").get_revoked_certificate_by_serial_number(est_dev.certificate.serial_number) is not None

    eventually(on_the_old_crl, "the old CA's CRL lists the certificate its device revoked")
    assert ocsp_answer(node, est_dev.certificate, old_ca).certificate_status == ocsp.OCSPCertStatus.REVOKED

    # A relying party that trusts only the old root accepts the new CA's certificates through NewWithOld.
    verify_chain(tmp_path, old_ca, new_with_old, renewed.certificate)
    assert node.server.process.poll() is None and node.server.process.pid == pid  # never restarted
