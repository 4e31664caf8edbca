"""Interop: the real SCEP clients Debian ships against `python -m gateway serve`, a real process.

- micromdm's scepclient (package `scep`): PKCSReq with the static challenge, then RenewalReq signed
  by the certificate it got; a wrong challenge gets a signed FAILURE and nothing is issued.
- certmonger (package `certmonger`): its daemon in the foreground on a private socket (INTEROP.md),
  the gateway added as a SCEP CA *without* `-N` (GetCACert carries RA + CA), then request,
  resubmit and rekey, each reaching MONITORING with a certificate from our CA.

scripts/test installs both packages, and CI runs these tests: a missing client is a failure that
says so, never a skip. One initialised data directory (RSA CA: scepclient encrypts to every
certificate of GetCACert and cannot use an EC one) and one server are shared by the module. Traffic
goes to 127.0.0.1 only. On a failure the server's log is shown (it names the cause of every SCEP
refusal), and for certmonger the daemon's log as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from cryptography.x509.oid import NameOID

from gateway.config import load_config
from gateway.runtime import open_storage
from shared_ca.storage.enrollment_records import EnrollmentRecord
from tests.test_serve import (
    Server,
    child_env,
    free_ports,
    gateway_command,
    openssl,
    running_in_group,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow

CHALLENGE = "Interop-Secret-7"
CLIENT_SECONDS = 60.0  # one client command
MONITORING_SECONDS = 60.0  # certmonger reaching MONITORING with a new certificate
DAEMON_START_SECONDS = 20.0
DAEMON_STOP_SECONDS = 10.0
CA_NICKNAME = "GW"
SCEP_SUBMIT = Path("/usr/lib/certmonger/scep-submit")
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
# getcert list states in which certmonger gives up, or would retry only after minutes.
CERTMONGER_FAILED = {"CA_UNREACHABLE", "CA_REJECTED", "CA_UNCONFIGURED", "NEED_GUIDANCE", "NEED_CA"}
PR_SET_PDEATHSIG = 1


# -- helpers ----------------------------------------------------------------------------------------


def client_binary(name: str, package: str) -> str:
    """The path of a client program, or a test failure saying how it gets installed."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.fail(
            f"`{name}` is not installed (Debian package `{package}`): scripts/test installs it "
            f"(or run `apt-get install -y {package}` as root). These interop tests must not be skipped.",
            pytrace=False,
        )
    return found


def client_env(**extra: str) -> dict[str, str]:
    """The environment of a client: no proxy, so its traffic stays on 127.0.0.1 (libcurl would obey one)."""
    env = {k: v for k, v in child_env().items() if k not in PROXY_VARIABLES}
    env.update(no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    env.update(extra)
    return env


def server_log(server: Server, lines: int = 120) -> str:
    """The end of `gateway serve`'s stderr: every SCEP refusal is logged there with its cause."""
    return "\n".join(server.stderr_text().splitlines()[-lines:])


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def spki(key_holder: x509.Certificate | Path) -> bytes:
    """The SubjectPublicKeyInfo of a certificate, or of the private key in a PEM file."""
    if isinstance(key_holder, Path):
        public_key = load_pem_private_key(key_holder.read_bytes(), password=None).public_key()
    else:
        public_key = key_holder.public_key()
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def assert_issued_by_our_ca(server: Server, cert_file: Path) -> None:
    verified = openssl("verify", "-CAfile", str(server.ca_pem), str(cert_file))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.strip() == f"{cert_file}: OK", verified.stdout


def recorded_certificates(server: Server) -> dict[str, dict[str, Any]]:
    """`gateway cert list --format json`, by serial."""
    done = gateway_command("cert", "list", "--data-dir", str(server.data_dir), "--format", "json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return {row["serial"]: row for row in rows}


def assert_recorded_as_scep(server: Server, *certs: x509.Certificate) -> None:
    records = recorded_certificates(server)
    for cert in certs:
        row = records.get(serial_hex(cert))
        assert row is not None, f"serial {serial_hex(cert)} is not recorded: {sorted(records)}"
        assert row["protocol"] == "scep", row
        assert row["subject"] == cert.subject.rfc4514_string(), row
        assert row["issuer"] == "ca", row


def enrollment_event(server: Server, cert: x509.Certificate) -> EnrollmentRecord:
    """The enrollment event the server wrote with the issuance of `cert`."""
    store = open_storage(load_config(server.data_dir, environ={}))
    try:
        events = store.enrollments.enrollment_events(device_identity=common_name(cert))
    finally:
        store.engine.dispose()
    matching = [event for event in events if event.serial_hex == serial_hex(cert)]
    assert len(matching) == 1, events
    return matching[0]


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- the server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scep-interop")


@pytest.fixture(scope="module")
def gateway(workdir: Path) -> Iterator[Server]:
    """`gateway init` (RSA CA, static challenge) and `gateway serve` on it."""
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)  # certificates name the HTTP port: pick it before init
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
    server = start_server(data_dir, workdir, http_port=http_port)
    try:
        yield server
    finally:
        stop_server(server)


# -- micromdm's scepclient --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scepclient() -> str:
    return client_binary("scepclient", "scep")


def run_scepclient(
    binary: str, server: Server, directory: Path, *, cn: str, challenge: str, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """scepclient as INTEROP.md runs it: enrolls when DIR/client.pem is missing, renews when it exists.
    It talks to `server`'s SCEP URL, or to `url` (a proxy in front of it)."""
    directory.mkdir(exist_ok=True)
    command = [
        binary,
        "-server-url",
        url or f"http://127.0.0.1:{server.http_port}/scep",
        "-private-key",
        str(directory / "client.key"),
        "-certificate",
        str(directory / "client.pem"),
        "-challenge",
        challenge,
        "-cn",
        cn,
        "-organization",
        "Test",
        "-keySize",
        "2048",
    ]
    try:
        return subprocess.run(
            command,
            cwd=directory,
            env=client_env(),
            capture_output=True,
            text=True,
            timeout=CLIENT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scepclient did not finish within {CLIENT_SECONDS:.0f} s: {exc}\n{server_log(server)}")


def scepclient_report(run: subprocess.CompletedProcess[str], server: Server) -> str:
    return (
        f"scepclient exited {run.returncode}\n--- stdout:\n{run.stdout}\n--- stderr:\n{run.stderr}\n"
        f"--- gateway serve log:\n{server_log(server)}"
    )


def test_scepclient_enrolls_then_renews_with_renewalreq(gateway: Server, workdir: Path, scepclient: str) -> None:
    directory = workdir / "scepclient"
    cert_file, key_file = directory / "client.pem", directory / "client.key"

    enroll = run_scepclient(scepclient, gateway, directory, cn="scepclient-device", challenge=CHALLENGE)
    assert enroll.returncode == 0, scepclient_report(enroll, gateway)
    assert "pkiStatus=SUCCESS" in enroll.stderr, scepclient_report(enroll, gateway)
    assert_issued_by_our_ca(gateway, cert_file)
    enrolled = load_certificate(cert_file)
    assert common_name(enrolled) == "scepclient-device"
    assert enrolled.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Test"
    assert spki(enrolled) == spki(key_file)

    # client.pem exists now: scepclient sends a RenewalReq signed by it (same key, same CSR).
    renew = run_scepclient(scepclient, gateway, directory, cn="scepclient-device", challenge=CHALLENGE)
    assert renew.returncode == 0, scepclient_report(renew, gateway)
    assert "pkiStatus=SUCCESS" in renew.stderr, scepclient_report(renew, gateway)
    assert_issued_by_our_ca(gateway, cert_file)
    renewed = load_certificate(cert_file)
    assert renewed.serial_number != enrolled.serial_number
    assert renewed.subject == enrolled.subject
    assert spki(renewed) == spki(enrolled)  # scepclient keeps its key

    assert_recorded_as_scep(gateway, enrolled, renewed)
    first, second = enrollment_event(gateway, enrolled), enrollment_event(gateway, renewed)
    assert (first.operation, first.challenge_kind, first.outcome) == ("PKCSReq", "static", "issued")
    assert (second.operation, second.challenge_kind, second.outcome) == ("RenewalReq", "renewal", "issued")
    for event in (first, second):  # scepclient 2.1.0 knows nothing else; we answered in kind
        assert (event.cipher, event.digest) == ("des", "sha1"), event


def test_scepclient_with_a_wrong_challenge_gets_failure(gateway: Server, workdir: Path, scepclient: str) -> None:
    directory = workdir / "scepclient-wrong"
    refused = run_scepclient(scepclient, gateway, directory, cn="scepclient-wrong", challenge="not-the-secret")
    assert refused.returncode != 0, scepclient_report(refused, gateway)
    # scepclient's words for a CertRep with pkiStatus FAILURE (failInfo only comes with FAILURE).
    assert "PKCSReq (19) request failed, failInfo: badRequest" in refused.stdout, scepclient_report(refused, gateway)
    assert not (directory / "client.pem").exists()
    assert not [row for row in recorded_certificates(gateway).values() if "scepclient-wrong" in row["subject"]]
    assert "refused (badRequest): wrong static challenge" in gateway.stderr_text(), server_log(gateway)


# -- certmonger -------------------------------------------------------------------------------------


@dataclass
class Certmonger:
    """One certmonger daemon of this module, on its own socket and directories."""

    binary: str
    getcert_binary: str
    directory: Path
    socket: Path
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def getcert(self, *args: str, timeout: float = CLIENT_SECONDS) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.getcert_binary, *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"`getcert {' '.join(args)}` did not finish within {timeout:.0f} s: {exc}\n{self.log_tail()}")

    def log_tail(self, lines: int = 300) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- certmonger log (last {lines} lines of {self.log}):\n" + "\n".join(text.splitlines()[-lines:])

    def processes(self) -> list[int]:
        """Live processes of ours: the daemon's process group, and anything naming our socket."""
        found = set(running_in_group(self.process.pid)) if self.process is not None else set()
        marker = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if marker in (entry / "cmdline").read_bytes():
                        found.add(int(entry.name))
        return sorted(found)


def _die_with_parent() -> None:
    """In the daemon's child before exec: SIGKILL when this test process dies, whatever kills it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_certmonger(daemon: Certmonger) -> None:
    with daemon.log.open("wb") as log:
        daemon.process = subprocess.Popen(
            [daemon.binary, "-n", "-L", "-P", str(daemon.socket), "-p", str(daemon.directory / "cm.pid"), "-d", "3"],
            env=daemon.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its helpers share the group: teardown reaches them all
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - a single prctl, before exec
        )
    deadline = time.monotonic() + DAEMON_START_SECONDS
    while True:
        if daemon.process.poll() is not None:
            pytest.fail(f"certmonger exited with status {daemon.process.returncode} at start-up\n{daemon.log_tail()}")
        if daemon.socket.exists() and daemon.getcert("list-cas", timeout=10).returncode == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"certmonger did not answer on {daemon.socket} within {DAEMON_START_SECONDS:.0f} s\n{daemon.log_tail()}"
            )
        time.sleep(0.1)


def stop_certmonger(daemon: Certmonger) -> None:
    """SIGTERM, bounded wait, SIGKILL to its process group; then check nothing of ours is left."""
    process = daemon.process
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=DAEMON_STOP_SECONDS)
    with contextlib.suppress(ProcessLookupError):  # helpers (scep-submit) in flight share the group
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert wait_until(lambda: daemon.processes() == [], 5), f"certmonger processes survive: {daemon.processes()}"


@pytest.fixture(scope="module")
def certmonger(gateway: Server, workdir: Path) -> Iterator[Certmonger]:
    """A certmonger daemon with the gateway as SCEP CA `GW`, added without `-N`."""
    binary = client_binary("certmonger", "certmonger")
    getcert_binary = client_binary("getcert", "certmonger")
    if not SCEP_SUBMIT.exists():
        pytest.fail(f"{SCEP_SUBMIT} is missing (Debian package `certmonger`): scripts/test installs it", pytrace=False)
    directory = workdir / "certmonger"
    for sub in ("requests", "cas", "tmp", "out", "local"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "tmp").chmod(0o700)
    socket_dir = directory
    if len(str(directory / "cm.sock")) > 100:  # a unix socket path has room for 107 bytes only
        socket_dir = Path(tempfile.mkdtemp(prefix="cm-"))
    socket = socket_dir / "cm.sock"
    env = client_env(
        CERTMONGER_REQUESTS_DIR=str(directory / "requests"),
        CERTMONGER_CAS_DIR=str(directory / "cas"),
        CERTMONGER_TMPDIR=str(directory / "tmp"),
        CERTMONGER_LOCAL_CA_DIR=str(directory / "local"),  # not /var/lib/certmonger
        CERTMONGER_SYSTEM_LOCK_FILE=str(directory / "lock"),  # not a system daemon's lock
        CERTMONGER_PVT_ADDRESS=f"unix:path={socket}",  # where getcert finds this daemon
    )
    daemon = Certmonger(binary, getcert_binary, directory, socket, env, directory / "certmonger.log")
    try:
        start_certmonger(daemon)
        added = daemon.getcert("add-scep-ca", "-c", CA_NICKNAME, "-u", f"http://127.0.0.1:{gateway.http_port}/scep")
        assert added.returncode == 0, f"{added.stdout}{added.stderr}\n{daemon.log_tail()}\n{server_log(gateway)}"
        yield daemon
    finally:
        try:
            stop_certmonger(daemon)
        finally:
            if socket_dir != directory:
                shutil.rmtree(socket_dir, ignore_errors=True)


@dataclass(frozen=True)
class Tracked:
    """A certmonger request: its id and where it keeps the certificate and key."""

    request_id: str
    cert: Path
    key: Path


def listing_field(listing: str, name: str) -> str | None:
    for line in listing.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == name:
            return value.strip()
    return None


def wait_monitoring(
    daemon: Certmonger,
    server: Server,
    tracked: Tracked,
    step: subprocess.CompletedProcess[str],
    previous: x509.Certificate | None = None,
) -> x509.Certificate:
    """Poll `getcert list -i ID` (bounded) until MONITORING with a certificate other than `previous`."""
    deadline = time.monotonic() + MONITORING_SECONDS
    while True:
        listing = daemon.getcert("list", "-i", tracked.request_id, timeout=10)
        status = listing_field(listing.stdout, "status")
        if status == "MONITORING" and tracked.cert.exists():
            cert = load_certificate(tracked.cert)
            if previous is None or cert.serial_number != previous.serial_number:
                return cert
        failed = status in CERTMONGER_FAILED or listing_field(listing.stdout, "stuck") == "yes"
        if failed or time.monotonic() > deadline:
            pytest.fail(
                f"certmonger request {tracked.request_id!r}: status {status}"
                f"{'' if failed else f' after {MONITORING_SECONDS:.0f} s'}, no new certificate\n"
                f"--- `getcert {' '.join(str(a) for a in step.args[1:])}` exited {step.returncode}:\n"
                f"{step.stdout}{step.stderr}\n--- getcert list -i {tracked.request_id}:\n{listing.stdout}"
                f"{listing.stderr}\n{daemon.log_tail()}\n--- gateway serve log:\n{server_log(server)}",
                pytrace=False,
            )
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tracked(certmonger: Certmonger, gateway: Server) -> Tracked:
    """`getcert request` with the static challenge: MONITORING with a certificate from our CA."""
    out = certmonger.directory / "out"
    request = Tracked("interop-dev", out / "dev.crt", out / "dev.key")
    done = certmonger.getcert(
        "request",
        "-c",
        CA_NICKNAME,
        "-f",
        str(request.cert),
        "-k",
        str(request.key),
        "-N",
        "CN=certmonger-device,O=Test",
        "-L",
        CHALLENGE,
        "-I",
        request.request_id,
        "-w",
        "-v",
    )
    wait_monitoring(certmonger, gateway, request, done)
    assert done.returncode == 0, done.stdout + done.stderr
    return request


def test_certmonger_request_reaches_monitoring(tracked: Tracked, gateway: Server) -> None:
    assert_issued_by_our_ca(gateway, tracked.cert)
    cert = load_certificate(tracked.cert)
    assert common_name(cert) == "certmonger-device"
    assert spki(cert) == spki(tracked.key)
    assert_recorded_as_scep(gateway, cert)
    event = enrollment_event(gateway, cert)
    assert (event.operation, event.challenge_kind, event.outcome) == ("PKCSReq", "static", "issued")
    assert (event.cipher, event.digest) == ("aes256", "sha256"), event  # certmonger's own, answered in kind


def test_certmonger_resubmit_renews_with_the_same_key(
    certmonger: Certmonger, tracked: Tracked, gateway: Server
) -> None:
    before = load_certificate(tracked.cert)
    done = certmonger.getcert("resubmit", "-i", tracked.request_id, "-w")
    after = wait_monitoring(certmonger, gateway, tracked, done, previous=before)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_issued_by_our_ca(gateway, tracked.cert)
    assert after.serial_number != before.serial_number
    assert after.subject == before.subject
    assert spki(after) == spki(before) == spki(tracked.key)
    assert_recorded_as_scep(gateway, before, after)
    # A PKCSReq signed by the certificate it renews: a renewal, no challenge needed.
    event = enrollment_event(gateway, after)
    assert (event.operation, event.challenge_kind, event.outcome) == ("PKCSReq", "renewal", "issued")


def test_certmonger_rekey_gets_a_certificate_for_a_new_key(
    certmonger: Certmonger, tracked: Tracked, gateway: Server
) -> None:
    before = load_certificate(tracked.cert)
    old_key = spki(tracked.key)
    assert spki(before) == old_key
    done = certmonger.getcert("rekey", "-i", tracked.request_id, "-w")
    after = wait_monitoring(certmonger, gateway, tracked, done, previous=before)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_issued_by_our_ca(gateway, tracked.cert)
    assert after.serial_number != before.serial_number
    assert after.subject == before.subject
    assert spki(after) != old_key  # a certificate for the new key ...
    assert spki(after) == spki(tracked.key)  # ... which certmonger now keeps in the key file
    assert_recorded_as_scep(gateway, before, after)
    # Signed with the old certificate and key (the CSR carries the new key): a renewal as well.
    event = enrollment_event(gateway, after)
    assert (event.operation, event.challenge_kind, event.outcome) == ("PKCSReq", "renewal", "issued")


def _raw_http(port: int, request: bytes) -> tuple[str, bytes]:
    """Send `request` as it is and read the whole reply (HTTP/1.0: the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n", 1)[0], body


def test_cisco_style_http10_without_host(gateway: Server) -> None:
    """Cisco IOS speaks HTTP/1.0 with no Host header (INTEROP.md); both listeners' paths still answer."""
    user_agent = b"User-Agent: Mozilla/4.0 (compatible; MSIE 5.0; Cisco PKI)\r\n\r\n"
    status, body = _raw_http(
        gateway.http_port,
        b"GET /cgi-bin/pkiclient.exe?operation=GetCACaps&message=CAIdentifier HTTP/1.0\r\n" + user_agent,
    )
    assert status == "HTTP/1.0 200 OK"
    assert b"POSTPKIOperation\n" in body
    status, body = _raw_http(
        gateway.http_port, b"GET /cgi-bin/pkiclient.exe?operation=GetCACert&message=0 HTTP/1.0\r\n" + user_agent
    )
    assert status == "HTTP/1.0 200 OK"
    # RA first, then the CA: in the order certmonger and scepclient expect (not DER SET order).
    assert len(cms.ContentInfo.load(body)["content"]["certificates"]) == 2
