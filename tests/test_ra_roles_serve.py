"""Separate RA roles against a real `gateway serve`: what each SCEP client does with two RA certificates.

One server (`gateway init --separate-ra-keys`, RSA CA: scepclient encrypts to every certificate of
GetCACert) behind a small recording proxy, so each test can read the envelope a client sent and name
the certificates it is addressed to; the proxy can also have a CertRep signed again by a key that is
not the RA's. What was observed (ops-ra-roles.md writes it down for operators):

- our own client (`gateway client scep`): encrypts to the encryption RA only, verifies the CertRep
  with the signing RA, enrolls; refuses a CertRep signed by another key;
- micromdm's scepclient 2.1.0: encrypts to every certificate of GetCACert (encryption RA, signing RA
  and CA: one RecipientInfo each), and the gateway opens the one addressed to the encryption RA; it
  enrolls and renews (RenewalReq); it looks the CertRep's signer up among GetCACert's certificates and
  refuses one signed by another key ("pkcs7: No certificate for signer");
- certmonger 0.79: keeps the certificate with keyEncipherment as its RA (the only recipient of its
  envelopes), the CA as that RA's issuer, the signing RA in its pool; enrolls and reaches MONITORING;
  refuses a CertRep signed by another key (OpenSSL: "certificate verify error", CA_UNREACHABLE).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509

from scep.asn1 import FailInfo, MessageType, PkiStatus, encode_signed_attributes
from scep.client_messages import self_signed_signer
from scep.message import decode_signed_message
from shared_ca.cms import CmsSigner, build_signed_data
from tests.support import rsa_key
from tests.test_scep_interop import (
    CA_NICKNAME,
    CLIENT_SECONDS,
    MONITORING_SECONDS,
    SCEP_SUBMIT,
    Certmonger,
    Tracked,
    assert_issued_by_our_ca,
    client_binary,
    client_env,
    common_name,
    enrollment_event,
    listing_field,
    load_certificate,
    run_scepclient,
    scepclient_report,
    server_log,
    spki,
    start_certmonger,
    stop_certmonger,
    wait_monitoring,
)
from tests.test_serve import Server, free_ports, gateway_command, start_server, stop_server

pytestmark = pytest.mark.slow

CHALLENGE = "Split-Roles-5"
PKI = "application/x-pki-message"
IMPOSTOR_KEY = rsa_key(fresh=True)
IMPOSTOR = CmsSigner.create(
    IMPOSTOR_KEY, self_signed_signer(IMPOSTOR_KEY, x509.Name.from_rfc4514_string("CN=Not the RA"))
)


def impostor_signed(cert_rep: bytes) -> bytes:
    """`cert_rep` with its attributes and content as they are, signed again by a key that is not the RA's
    (a self-signed certificate the CertRep carries instead of the signing RA's)."""
    message = decode_signed_message(cert_rep)
    attrs, digest = message.attributes, message.digest
    assert digest is not None and attrs.transaction_id and attrs.sender_nonce and attrs.pki_status
    status = PkiStatus(attrs.pki_status)
    signed = encode_signed_attributes(
        content_digest=digest.compute(message.content or b""),
        message_type=MessageType.CertRep,
        transaction_id=attrs.transaction_id,
        sender_nonce=attrs.sender_nonce,
        recipient_nonce=attrs.recipient_nonce,
        pki_status=status,
        fail_info=FailInfo(attrs.fail_info) if status is PkiStatus.FAILURE and attrs.fail_info else None,
    )
    return build_signed_data(IMPOSTOR, digest=digest, signed_attributes_der=signed, content=message.content)


@dataclass(frozen=True)
class Seen:
    """One request the proxy forwarded."""

    method: str
    path: str
    body: bytes

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))

    def pki_message(self) -> bytes | None:
        """The pkiMessage of a PKIOperation (POST body, or GET's base64 `message`), else None."""
        if self.query.get("operation") != "PKIOperation":
            return None
        if self.method == "POST":
            return self.body
        return base64.b64decode(self.query["message"])


@dataclass
class Recorder:
    """A forwarding HTTP proxy in front of the gateway's HTTP listener that keeps what it forwarded, and
    while `impostor` is set has every CertRep signed again by a key that is not the RA's."""

    port: int
    seen: list[Seen]
    impostor: list[bool]

    @contextlib.contextmanager
    def impersonating(self) -> Iterator[None]:
        self.impostor[0] = True
        try:
            yield
        finally:
            self.impostor[0] = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/scep"

    def since(self, count: int) -> list[Seen]:
        return self.seen[count:]


def recording_proxy(target_port: int, seen: list[Seen], impostor: list[bool]) -> ThreadingHTTPServer:
    class Forward(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._forward(b"")

        def do_POST(self) -> None:
            self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        def _forward(self, body: bytes) -> None:
            seen.append(Seen(self.command, self.path, body))
            upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=CLIENT_SECONDS)
            try:
                headers = {"Content-Type": self.headers["Content-Type"]} if self.headers["Content-Type"] else {}
                upstream.request(
                    self.command, self.path, body=body if self.command == "POST" else None, headers=headers
                )
                reply = upstream.getresponse()
                data = reply.read()
            finally:
                upstream.close()
            if impostor[0] and reply.status == 200 and reply.getheader("Content-Type") == PKI:
                data = impostor_signed(data)
            self.send_response(reply.status)
            if reply.getheader("Content-Type"):
                self.send_header("Content-Type", reply.getheader("Content-Type", ""))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    return ThreadingHTTPServer(("127.0.0.1", 0), Forward)


def envelope_recipients(message: bytes) -> list[int | bytes]:
    """Whom the pkiMessage's envelope is for: per KeyTransRecipientInfo, in order, the certificate's
    serial number (issuerAndSerialNumber) or its subject key identifier."""
    signed = cms.ContentInfo.load(message)["content"]
    enveloped = cms.ContentInfo.load(signed["encap_content_info"]["content"].native)["content"]
    found: list[int | bytes] = []
    for info in enveloped["recipient_infos"]:
        rid = info.chosen["rid"]
        found.append(rid.chosen["serial_number"].native if rid.name == "issuer_and_serial_number" else rid.native)
    return found


# -- the server and the proxy -----------------------------------------------------------------------


@dataclass(frozen=True)
class Roles:
    """The gateway's certificates by role."""

    signing: x509.Certificate
    encryption: x509.Certificate
    ca: x509.Certificate

    def names(self, recipients: list[int | bytes]) -> list[str]:
        """The roles of envelope recipients (serial numbers or subject key identifiers)."""
        known: dict[int | bytes, str] = {}
        for role, cert in vars(self).items():
            known[cert.serial_number] = role
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            except x509.ExtensionNotFound:
                ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
            known[ski.digest] = role
        return [known.get(recipient, f"unknown {recipient!r}") for recipient in recipients]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ra-roles")


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
        "--separate-ra-keys",
        "--scep-challenge",
        CHALLENGE,
        "--public-base-url",
        f"http://127.0.0.1:{http_port}",
    )
    assert done.returncode == 0, done.stderr
    server = start_server(data_dir, workdir, http_port=http_port)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def roles(gateway: Server) -> Roles:
    ra = gateway.data_dir / "ra"
    return Roles(
        load_certificate(ra / "ra.crt"), load_certificate(ra / "ra-encryption.crt"), load_certificate(gateway.ca_pem)
    )


@pytest.fixture(scope="module")
def recorder(gateway: Server) -> Iterator[Recorder]:
    seen: list[Seen] = []
    impostor = [False]
    proxy = recording_proxy(gateway.http_port, seen, impostor)
    thread = threading.Thread(target=proxy.serve_forever, name="recording-proxy", daemon=True)
    thread.start()
    try:
        yield Recorder(proxy.server_address[1], seen, impostor)
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)


def recipients_of(seen: list[Seen], roles: Roles) -> list[list[str]]:
    """For each PKIOperation among `seen`, the roles of the certificates its envelope is addressed to."""
    return [roles.names(envelope_recipients(m)) for s in seen if (m := s.pki_message()) is not None]


def sorted_recipients(seen: list[Seen], roles: Roles) -> list[list[str]]:
    return [sorted(names) for names in recipients_of(seen, roles)]


# -- our own client ---------------------------------------------------------------------------------


def test_our_client_encrypts_to_the_encryption_ra(
    gateway: Server, recorder: Recorder, roles: Roles, workdir: Path
) -> None:
    fetched = gateway_command("client", "scep", "getcacert", "--url", recorder.url)
    assert fetched.returncode == 0, fetched.stderr
    assert x509.load_pem_x509_certificates(fetched.stdout.encode()) == [roles.encryption, roles.signing, roles.ca]

    before = len(recorder.seen)
    out = workdir / "ours.pem"
    enrolled = gateway_command(
        "client",
        "scep",
        "enroll",
        "--url",
        recorder.url,
        "--challenge",
        CHALLENGE,
        "--subject",
        "CN=ours-split",
        "--key",
        str(workdir / "ours.key"),
        "--out",
        str(out),
    )
    assert enrolled.returncode == 0, enrolled.stderr + server_log(gateway)
    assert enrolled.stdout.startswith("SUCCESS serial "), enrolled.stdout
    assert_issued_by_our_ca(gateway, out)
    assert recipients_of(recorder.since(before), roles) == [["encryption"]]


# -- micromdm's scepclient --------------------------------------------------------------------------


def test_scepclient_encrypts_to_every_certificate_and_enrolls(
    gateway: Server, recorder: Recorder, roles: Roles, workdir: Path
) -> None:
    binary = client_binary("scepclient", "scep")
    directory = workdir / "scepclient"
    before = len(recorder.seen)
    enroll = run_scepclient(binary, gateway, directory, cn="scepclient-split", challenge=CHALLENGE, url=recorder.url)
    assert enroll.returncode == 0, scepclient_report(enroll, gateway)
    assert "pkiStatus=SUCCESS" in enroll.stderr, scepclient_report(enroll, gateway)
    assert_issued_by_our_ca(gateway, directory / "client.pem")
    enrolled = load_certificate(directory / "client.pem")
    assert common_name(enrolled) == "scepclient-split"
    # Every certificate of GetCACert (a DER SET OF RecipientInfos: no order to read): the server opens the
    # encryption RA's.
    assert sorted_recipients(recorder.since(before), roles) == [["ca", "encryption", "signing"]]

    before = len(recorder.seen)
    renew = run_scepclient(binary, gateway, directory, cn="scepclient-split", challenge=CHALLENGE, url=recorder.url)
    assert renew.returncode == 0, scepclient_report(renew, gateway)
    renewed = load_certificate(directory / "client.pem")
    assert renewed.serial_number != enrolled.serial_number
    assert sorted_recipients(recorder.since(before), roles) == [["ca", "encryption", "signing"]]
    event = enrollment_event(gateway, renewed)
    assert (event.operation, event.challenge_kind, event.outcome) == ("RenewalReq", "renewal", "issued")


# -- certmonger -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certmonger(recorder: Recorder, gateway: Server, workdir: Path) -> Iterator[Certmonger]:
    """A certmonger daemon on a private socket (as test_scep_interop's) with the proxy as SCEP CA `GW`."""
    binary, getcert = client_binary("certmonger", "certmonger"), client_binary("getcert", "certmonger")
    if not SCEP_SUBMIT.exists():
        pytest.fail(f"{SCEP_SUBMIT} is missing (Debian package `certmonger`): scripts/test installs it", pytrace=False)
    directory = workdir / "certmonger"
    for sub in ("requests", "cas", "tmp", "out", "local"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "tmp").chmod(0o700)
    socket_dir = Path(tempfile.mkdtemp(prefix="cm-"))  # a unix socket path has room for 107 bytes only
    socket = socket_dir / "cm.sock"
    env = client_env(
        CERTMONGER_REQUESTS_DIR=str(directory / "requests"),
        CERTMONGER_CAS_DIR=str(directory / "cas"),
        CERTMONGER_TMPDIR=str(directory / "tmp"),
        CERTMONGER_LOCAL_CA_DIR=str(directory / "local"),
        CERTMONGER_SYSTEM_LOCK_FILE=str(directory / "lock"),
        CERTMONGER_PVT_ADDRESS=f"unix:path={socket}",
    )
    daemon = Certmonger(binary, getcert, directory, socket, env, directory / "certmonger.log")
    try:
        start_certmonger(daemon)
        added = daemon.getcert("add-scep-ca", "-c", CA_NICKNAME, "-u", recorder.url)
        assert added.returncode == 0, f"{added.stdout}{added.stderr}\n{daemon.log_tail()}\n{server_log(gateway)}"
        yield daemon
    finally:
        try:
            stop_certmonger(daemon)
        finally:
            shutil.rmtree(socket_dir, ignore_errors=True)


def test_certmonger_encrypts_to_the_key_encipherment_ra_and_enrolls(
    certmonger: Certmonger, gateway: Server, recorder: Recorder, roles: Roles
) -> None:
    before = len(recorder.seen)
    out = certmonger.directory / "out"
    tracked = Tracked("split-dev", out / "dev.crt", out / "dev.key")
    done = certmonger.getcert(
        "request",
        "-c",
        CA_NICKNAME,
        "-f",
        str(tracked.cert),
        "-k",
        str(tracked.key),
        "-N",
        "CN=certmonger-split,O=Test",
        "-L",
        CHALLENGE,
        "-I",
        tracked.request_id,
        "-w",
        "-v",
    )
    cert = wait_monitoring(certmonger, gateway, tracked, done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_issued_by_our_ca(gateway, tracked.cert)
    assert common_name(cert) == "certmonger-split"
    assert spki(cert) == spki(tracked.key)
    # certmonger's RA is the leaf with keyEncipherment; its envelopes (GET, as always) name only that one.
    seen = recorder.since(before)
    assert recipients_of(seen, roles) and set(map(tuple, recipients_of(seen, roles))) == {("encryption",)}
    assert {s.method for s in seen if s.pki_message() is not None} == {"GET"}
    event = enrollment_event(gateway, cert)
    assert (event.operation, event.challenge_kind, event.outcome) == ("PKCSReq", "static", "issued")
    # What certmonger keeps of GetCACert: the RA it encrypts to, that RA's issuer, and the rest (the
    # signing RA) as a pool of further certificates for verifying CertReps.
    record = ca_record(certmonger, CA_NICKNAME)
    assert certificates_of(record, "ca_encryption_cert") == [roles.encryption]
    assert certificates_of(record, "ca_encryption_issuer_cert") == [roles.ca]
    assert certificates_of(record, "ca_encryption_cert_pool") == [roles.signing]


def ca_record(daemon: Certmonger, nickname: str) -> dict[str, str]:
    """certmonger's file for the CA `nickname` (in CERTMONGER_CAS_DIR): key=value lines, each continued by
    the lines after it that start with a space."""
    for path in sorted((daemon.directory / "cas").iterdir()):
        fields: dict[str, str] = {}
        key = ""
        for line in path.read_text().splitlines():
            if line.startswith(" ") and key:
                fields[key] += "\n" + line[1:]
            else:
                key, _, value = line.partition("=")
                fields[key] = value
        if fields.get("id") == nickname:
            return fields
    pytest.fail(f"certmonger has no CA record {nickname!r}\n{daemon.log_tail()}")


def certificates_of(record: dict[str, str], field: str) -> list[x509.Certificate]:
    text = record.get(field, "")
    return x509.load_pem_x509_certificates(text.encode()) if text else []


# -- a CertRep the RA did not sign ----------------------------------------------------------------------


def test_our_client_refuses_a_certrep_the_signing_ra_did_not_sign(recorder: Recorder, workdir: Path) -> None:
    with recorder.impersonating():
        done = gateway_command(
            "client", "scep", "enroll", "--url", recorder.url, "--challenge", CHALLENGE,
            "--subject", "CN=ours-impostor", "--key", str(workdir / "impostor.key"),
        )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "bad reply from" in done.stderr and "unreadable CertRep" in done.stderr, done.stderr


def test_scepclient_refuses_a_certrep_signed_by_none_of_getcacerts_certificates(
    gateway: Server, recorder: Recorder, workdir: Path
) -> None:
    binary = client_binary("scepclient", "scep")
    directory = workdir / "scepclient-impostor"
    with recorder.impersonating():
        run = run_scepclient(
            binary, gateway, directory, cn="scepclient-impostor", challenge=CHALLENGE, url=recorder.url
        )
    assert run.returncode == 1, scepclient_report(run, gateway)
    # It looks the signer up among the certificates of GetCACert, not among those the CertRep carries.
    assert "parsing pkiMessage response PKCSReq (19): pkcs7: No certificate for signer" in run.stdout, run.stdout
    assert not (directory / "client.pem").exists()


def test_certmonger_refuses_a_certrep_the_ra_did_not_sign(certmonger: Certmonger, recorder: Recorder) -> None:
    out = certmonger.directory / "out"
    tracked = Tracked("impostor-dev", out / "imp.crt", out / "imp.key")
    with recorder.impersonating():
        done = certmonger.getcert(
            "request", "-c", CA_NICKNAME, "-f", str(tracked.cert), "-k", str(tracked.key),
            "-N", "CN=certmonger-impostor,O=Test", "-L", CHALLENGE, "-I", tracked.request_id,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        deadline = time.monotonic() + MONITORING_SECONDS
        # Wait for a state certmonger rests in; it passes through others (READING_KEYINFO, NEED_TO_SUBMIT, ...).
        while (status := listing_field(certmonger.getcert("list", "-i", tracked.request_id).stdout, "status")) not in (
            "CA_UNREACHABLE", "CA_REJECTED", "MONITORING", "NEED_GUIDANCE", "CA_UNCONFIGURED", "NEED_CA",
        ) and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.1)
    listing = certmonger.getcert("list", "-i", tracked.request_id).stdout
    assert status == "CA_UNREACHABLE", listing + certmonger.log_tail()
    # OpenSSL's PKCS7_verify with the CA and RA certificates of GetCACert as its trust anchors.
    assert listing_field(listing, "ca-error") == (
        "Error: failed to verify signature on server response. error:10800075:PKCS7 routines::certificate verify error"
    ), listing
    assert not tracked.cert.exists()
    certmonger.getcert("stop-tracking", "-i", tracked.request_id)  # no retry in the background
