"""The real server: `python -m gateway serve` with both gunicorn listeners, driven by real clients.

One initialised data directory and one running server are shared by the module (start-up costs
about two seconds); the tests that stop a server start their own on the same data directory.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from shared_ca.authority import utcnow
from shared_ca.ca_material import create_root_ca
from shared_ca.keys import KeyType, PrivateKey, generate_private_key
from tests.support import csr_pem, ec_key, make_csr, subject

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
OPENSSL = "/usr/bin/openssl"
START_SECONDS = 20.0
STOP_SECONDS = 30.0
COMMAND_SECONDS = 60.0


# -- processes --------------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """This environment without any GATEWAY_* setting of the developer's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(extra)
    return env


def gateway_command(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        env=dict(env) if env is not None else child_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *args], capture_output=True, text=True, timeout=COMMAND_SECONDS, check=False, cwd=REPO
    )


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (all bound at once, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def init_data_dir(
    data_dir: Path,
    http_port: int,
    env: Mapping[str, str] | None = None,
    *,
    key_type: str = "p256",
    extra: Sequence[str] = (),
) -> None:
    """`gateway init` for a node whose HTTP listener will be on `http_port`; `extra` arguments appended."""
    args = ["init", "--data-dir", str(data_dir), "--ca-key-type", key_type]
    done = gateway_command(*args, "--public-base-url", f"http://127.0.0.1:{http_port}", *extra, env=env)
    assert done.returncode == 0, done.stderr


def is_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Server:
    """One `gateway serve` process and where it listens."""

    data_dir: Path
    http_port: int
    https_port: int
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def ca_pem(self) -> Path:
        return self.data_dir / "ca.pem"

    def stderr_text(self) -> str:
        return self.stderr.read_text(errors="replace")

    def access_record(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The JSON access-log record of one request (written when the worker closes the response)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.stderr_text().splitlines():
                if line.startswith("{") and request_id in line:
                    record: dict[str, Any] = json.loads(line)
                    if record.get("logger") == "gateway.access" and record.get("request_id") == request_id:
                        return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log record for request {request_id}:\n{self.stderr_text()}")
            time.sleep(0.05)


def spawn_server(
    data_dir: Path,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    http_port: int | None = None,
    workers: int = 1,
) -> Server:
    """Start `gateway serve` (on fresh ports unless `http_port` is given), in a process group of its own."""
    http_port, https_port = (http_port, free_ports(1)[0]) if http_port is not None else free_ports(2)
    stdout, stderr = workdir / f"serve-{http_port}.out", workdir / f"serve-{http_port}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--data-dir",
                str(data_dir),
                "--http",
                f"127.0.0.1:{http_port}",
                "--https",
                f"127.0.0.1:{https_port}",
                "--workers",
                str(workers),
                "--log-format",
                "json",
            ],
            cwd=REPO,
            env=dict(env) if env is not None else child_env(),
            stdout=out,
            stderr=err,
            start_new_session=True,  # teardown can reach strays by the group id, and checks none remain
        )
    return Server(data_dir, http_port, https_port, process, stdout, stderr)


def start_server(
    data_dir: Path,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    http_port: int | None = None,
    workers: int = 1,
) -> Server:
    """spawn_server, then wait (bounded) until both listeners answer /healthz."""
    server = spawn_server(data_dir, workdir, env=env, http_port=http_port, workers=workers)
    try:
        wait_ready(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_SECONDS
    context = ssl.create_default_context(cafile=str(server.ca_pem))
    while True:
        code = server.process.poll()
        if code is not None:
            raise AssertionError(f"`gateway serve` exited with status {code} at start-up:\n{server.stderr_text()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if (
                fetch(server.http_port, "/healthz", timeout=2).status == 200
                and fetch(server.https_port, "/healthz", context=context, timeout=2).status == 200
            ):
                return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"`gateway serve` did not answer /healthz on both listeners within {START_SECONDS:.0f} s:\n"
                f"{server.stderr_text()}"
            )
        time.sleep(0.1)


def stop_server(server: Server) -> int:
    """SIGTERM, bounded wait, then SIGKILL to the server's own process group as the last resort."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # workers orphaned by a crash share the group
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


# -- /proc ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessId:
    """A process by pid and start time (a pid alone may be reused)."""

    pid: int
    parent: int
    start_ticks: int
    cmdline: str


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, process group, start time) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (fast path via /proc/PID/task/PID/children where the kernel has it)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in _all_pids() if (stat := _stat(child)) is not None and stat[1] == pid]


def running_in_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: where strays of a server would be."""
    return [pid for pid in _all_pids() if (stat := _stat(pid)) is not None and stat[2] == pgid and stat[0] not in "ZX"]


def descendants(root: int) -> list[ProcessId]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found: list[ProcessId] = []
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        stat = _stat(pid)
        if stat is None:
            continue
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(ProcessId(pid, stat[1], stat[3], cmdline.strip()))
        pending.extend(children.get(pid, []))
    return found


def still_running(process: ProcessId) -> bool:
    stat = _stat(process.pid)
    return stat is not None and stat[3] == process.start_ticks and stat[0] not in ("Z", "X")


# -- HTTP -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    tls_version: str | None


def fetch(
    port: int,
    path: str,
    *,
    context: ssl.SSLContext | None = None,
    server_hostname: str = "127.0.0.1",
    method: str = "GET",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One request to 127.0.0.1:`port` (TLS when `context`, with SNI and name check for `server_hostname`)."""
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        sock: socket.socket = raw
        if context is not None:
            sock = stack.enter_context(context.wrap_socket(raw, server_hostname=server_hostname))
        lines = [f"{method} {path} HTTP/1.1", f"Host: {server_hostname}:{port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        response = http.client.HTTPResponse(sock, method=method)
        stack.callback(response.close)
        response.begin()
        data = response.read()
        version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data, version)


def tls_context(ca_pem: Path, *, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_pem))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    return context


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[Server]:
    """An initialised data directory whose certificates name the served CRL and OCSP, and its server."""
    data_dir = workdir / "data"
    # The CRL and OCSP URLs in certificates must name the HTTP port the server will get: pick it first.
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    server = start_server(data_dir, workdir, http_port=http_port)
    try:
        yield server
    finally:
        stop_server(server)


def write_client_credentials(directory: Path, name: str, cert: x509.Certificate, key: PrivateKey) -> tuple[Path, Path]:
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(Encoding.PEM))
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def our_client(server: Server, workdir: Path) -> tuple[Path, Path]:
    """A TLS client certificate issued by the gateway's CA (default profile: clientAuth)."""
    key = ec_key()
    cert_file, _serial = issue_with_cli(server, workdir, "tls-client", key)
    return write_client_credentials(workdir, "ours", x509.load_pem_x509_certificate(cert_file.read_bytes()), key)


def foreign_client_certificate(cn: str) -> tuple[x509.Certificate, PrivateKey]:
    """A TLS client certificate for CN=`cn` from a CA the gateway has never heard of (same CA subject as ours)."""
    now = utcnow()
    ca = create_root_ca(generate_private_key(KeyType.P256), subject("SCEP-EST Gateway CA"), 30, now)
    key = ec_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject(cn))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def foreign_client(workdir: Path) -> tuple[Path, Path]:
    """A client certificate from a CA the gateway has never heard of (same subject as ours)."""
    return write_client_credentials(workdir, "foreign", *foreign_client_certificate("tls-client"))


# -- 1. health on both listeners --------------------------------------------------------------------


def test_healthz_over_http(server: Server) -> None:
    reply = fetch(server.http_port, "/healthz")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {"status": "alive", "listener": "http"}
    assert re.fullmatch(r"[0-9a-f]{16}", reply.headers["x-request-id"])
    announced = server.stdout.read_text()
    assert f"http://127.0.0.1:{server.http_port}/healthz" in announced
    assert f"https://127.0.0.1:{server.https_port}/healthz" in announced
    assert f"http://127.0.0.1:{server.http_port}/readyz" in announced


def test_readyz_when_the_database_keys_and_both_listeners_are_fine(server: Server) -> None:
    context = tls_context(server.ca_pem)
    for reply in (fetch(server.http_port, "/readyz"), fetch(server.https_port, "/readyz", context=context)):
        assert reply.status == 200
        assert json.loads(reply.body) == {
            "status": "ready",
            "checks": {"database": "ok", "keys": "ok", "listener_http": "ok", "listener_https": "ok"},
        }


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_healthz_over_https_verified_against_ca_pem(server: Server, hostname: str) -> None:
    context = tls_context(server.ca_pem)
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    reply = fetch(server.https_port, "/healthz", context=context, server_hostname=hostname)
    assert reply.status == 200
    assert json.loads(reply.body)["listener"] == "https"


def test_https_certificate_is_not_trusted_without_ca_pem(server: Server, workdir: Path) -> None:
    other = create_root_ca(generate_private_key(KeyType.P256), subject("Other"), 1, utcnow())
    other_pem = workdir / "other-ca.pem"
    other_pem.write_bytes(other.certificate.public_bytes(Encoding.PEM))
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch(server.https_port, "/healthz", context=tls_context(other_pem))


def test_https_certificate_names_only_its_hosts(server: Server) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
        fetch(server.https_port, "/healthz", context=tls_context(server.ca_pem), server_hostname="gateway.example")


def _healthz_session(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession | None, bool]:
    """One HTTPS /healthz on a new connection offering `session`: (the session to resume next, whether
    this connection resumed)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as sock,
    ):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        response.read()  # TLS 1.3 session tickets arrive after the handshake, with the data
        return sock.session, bool(sock.session_reused)


def test_tls_sessions_resume_whichever_worker_answers(workdir: Path) -> None:
    """The HTTPS context is built before the workers fork, so they share one session-ticket key: a
    client resumes its session on every new connection (with a context per worker it resumed only
    when it landed on the worker that issued the ticket)."""
    data_dir = workdir / "resume"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    server = start_server(data_dir, workdir, http_port=http_port, workers=3)
    try:
        context = tls_context(server.ca_pem)
        session, _ = _healthz_session(server.https_port, context, None)
        assert session is not None and session.has_ticket
        resumed = [_healthz_session(server.https_port, context, session)[1] for _ in range(15)]
        assert all(resumed), resumed
    finally:
        stop_server(server)


def test_plain_http_on_the_https_port_gets_no_answer(server: Server) -> None:
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        fetch(server.https_port, "/healthz")


# -- 2. issue → CRL and OCSP with the openssl command line, revoke, again ---------------------------


def issue_with_cli(server: Server, workdir: Path, name: str, key: PrivateKey | None = None) -> tuple[Path, str]:
    """`gateway cert issue` for a CSR with CN=`name`: the certificate file and its serial (hex)."""
    csr_file, cert_file = workdir / f"{name}.csr", workdir / f"{name}.pem"
    csr_file.write_bytes(csr_pem(make_csr(key, name=subject(name))))
    done = gateway_command(
        "cert", "issue", "--data-dir", str(server.data_dir), "--csr", str(csr_file), "--out", str(cert_file)
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"issued serial ([0-9a-f]+)", done.stderr)
    assert match, done.stderr
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert format(cert.serial_number, "x") == match.group(1)
    return cert_file, match.group(1)


def distribution_urls(cert_file: Path) -> tuple[str, str]:
    """The CRL distribution point and the OCSP responder written into a certificate."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    full_name = points[0].full_name
    assert full_name is not None
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    ocsp_urls = [str(d.access_location.value) for d in aia if d.access_method == AuthorityInformationAccessOID.OCSP]
    return str(full_name[0].value), ocsp_urls[0]


def download_crl(server: Server, url: str, target: Path) -> int:
    """Fetch the CRL at `url` (which must be this server's), store it as PEM with openssl; its number."""
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("127.0.0.1", server.http_port), url
    reply = fetch(server.http_port, parts.path)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/pkix-crl"
    der = target.with_suffix(".der")
    der.write_bytes(reply.body)
    converted = openssl("crl", "-inform", "DER", "-in", str(der), "-outform", "PEM", "-out", str(target))
    assert converted.returncode == 0, converted.stderr
    crl = x509.load_pem_x509_crl(target.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def openssl_verify(server: Server, crl: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return openssl("verify", "-crl_check", "-CAfile", str(server.ca_pem), "-CRLfile", str(crl), str(cert))


def openssl_ocsp(server: Server, url: str, cert: Path) -> str:
    done = openssl(
        "ocsp", "-issuer", str(server.ca_pem), "-cert", str(cert), "-url", url, "-CAfile", str(server.ca_pem)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Response verify OK" in output, output
    assert "WARNING" not in output, output  # e.g. a nonce not echoed, or a stale response
    return output


def test_issue_revoke_with_crl_and_ocsp_checked_by_openssl(server: Server, workdir: Path) -> None:
    first, first_serial = issue_with_cli(server, workdir, "e2e-first")
    second, _ = issue_with_cli(server, workdir, "e2e-second")
    crl_url, ocsp_url = distribution_urls(first)
    assert ocsp_url == f"http://127.0.0.1:{server.http_port}/ocsp"
    crl = workdir / "e2e-crl.pem"

    number_before = download_crl(server, crl_url, crl)
    for cert in (first, second):
        verified = openssl_verify(server, crl, cert)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.strip() == f"{cert}: OK"
        assert f"{cert}: good" in openssl_ocsp(server, ocsp_url, cert)

    revoked = gateway_command(
        "cert", "revoke", first_serial, "--reason", "key_compromise", "--data-dir", str(server.data_dir)
    )
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"revoked {first_serial} (keyCompromise)")

    number_after = download_crl(server, crl_url, crl)
    assert number_after > number_before
    refused = openssl_verify(server, crl, first)
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr
    output = openssl_ocsp(server, ocsp_url, first)
    assert f"{first}: revoked" in output
    assert "Reason: keyCompromise" in output

    still = openssl_verify(server, crl, second)
    assert still.returncode == 0, still.stdout + still.stderr
    assert f"{second}: good" in openssl_ocsp(server, ocsp_url, second)


def test_ocsp_get_through_gunicorn(server: Server, workdir: Path) -> None:
    """RFC 6960 A.1 GET, as clients send it: escaped, and with '/' and '+' left raw."""
    cert_file, _serial = issue_with_cli(server, workdir, "ocsp-get")
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    ca = x509.load_pem_x509_certificates(server.ca_pem.read_bytes())[0]
    seen: set[str] = set()
    for attempt in range(400):
        nonce = os.urandom(16 + attempt % 3)
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, ca, hashes.SHA256())
        der = builder.add_extension(x509.OCSPNonce(nonce), critical=False).build().public_bytes(Encoding.DER)
        text = base64.b64encode(der).decode("ascii")
        if "+" not in text or "/" not in text:
            continue
        for form, path in (("raw", text), ("escaped", quote(text, safe="")), ("space", text.replace("+", "%20"))):
            reply = fetch(server.http_port, f"/ocsp/{path}")
            assert reply.status == 200, (form, reply.body)
            assert reply.headers["content-type"] == "application/ocsp-response"
            response = ocsp.load_der_ocsp_response(reply.body)
            assert response.certificate_status is ocsp.OCSPCertStatus.GOOD, form
            assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
            seen.add(form)
        break
    assert seen == {"raw", "escaped", "space"}


def test_bad_ocsp_through_gunicorn_is_400_not_500(server: Server) -> None:
    for reply in (
        fetch(server.http_port, "/ocsp", method="POST", body=b"junk"),
        fetch(server.http_port, "/ocsp/%25%25%25"),
        fetch(server.http_port, "/ocsp", method="POST", body=b"\x30" * 20000),
    ):
        assert reply.status == 400
        assert reply.headers["content-type"] == "application/ocsp-response"
        assert ocsp.load_der_ocsp_response(reply.body).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    missing = fetch(server.http_port, "/nope")
    assert missing.status == 404
    assert missing.headers["content-type"].startswith("text/plain")
    assert missing.headers["x-request-id"]


# -- 3. TLS client certificates ---------------------------------------------------------------------


def test_client_certificate_from_our_ca_is_accepted_and_seen(server: Server, our_client: tuple[Path, Path]) -> None:
    with_cert, without_cert = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    context = tls_context(server.ca_pem, client=our_client)
    reply = fetch(server.https_port, "/healthz", context=context, headers={"X-Request-ID": with_cert})
    assert reply.status == 200
    assert reply.headers["x-request-id"] == with_cert
    plain = fetch(
        server.https_port, "/healthz", context=tls_context(server.ca_pem), headers={"X-Request-ID": without_cert}
    )
    assert plain.status == 200
    assert server.access_record(with_cert)["client_cert"] is True
    assert server.access_record(without_cert)["client_cert"] is False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_client_certificate_from_a_foreign_ca_is_refused_in_the_handshake(
    server: Server, foreign_client: tuple[Path, Path], version: ssl.TLSVersion
) -> None:
    context = tls_context(server.ca_pem, client=foreign_client)
    context.minimum_version = context.maximum_version = version
    client_finished = False
    with (
        socket.create_connection(("127.0.0.1", server.https_port), timeout=10) as raw,
        pytest.raises(ssl.SSLError) as refused,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        # TLS 1.3: the client sends its Finished before the server has judged its certificate, so
        # the server's alert arrives on the first read; no HTTP response is ever sent either way.
        client_finished = True
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        tls.recv(1)
    assert refused.value.reason == "TLSV1_ALERT_UNKNOWN_CA", refused.value  # the server's alert
    assert client_finished is (version is ssl.TLSVersion.TLSv1_3)  # TLS 1.2: refused inside the handshake


def test_client_certificate_our_ca_under_tls12_too(server: Server, our_client: tuple[Path, Path]) -> None:
    context = tls_context(server.ca_pem, client=our_client)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    reply = fetch(server.https_port, "/healthz", context=context)
    assert reply.status == 200
    assert reply.tls_version == "TLSv1.2"


# -- 4. protocol versions ---------------------------------------------------------------------------


def _old_tls_client(ca_pem: Path, version: ssl.TLSVersion) -> ssl.SSLContext | None:
    """A client context that offers only `version`, or None when the local OpenSSL cannot build one."""
    context = tls_context(ca_pem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # ssl deprecates naming TLS 1.0/1.1
            context.minimum_version = version
            context.maximum_version = version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let our side offer it; the server must refuse
    except (ValueError, ssl.SSLError):
        return None
    return context


@pytest.mark.parametrize("version", ["TLSv1_1", "TLSv1"])
def test_old_tls_is_refused_by_the_server(server: Server, version: str) -> None:
    context = _old_tls_client(server.ca_pem, getattr(ssl.TLSVersion, version))
    if context is None:
        # This OpenSSL cannot even offer the old version: the server's floor shows in what it negotiates.
        reply = fetch(server.https_port, "/healthz", context=tls_context(server.ca_pem))
        assert reply.tls_version in ("TLSv1.2", "TLSv1.3")
        return
    with pytest.raises(ssl.SSLError) as refused:
        fetch(server.https_port, "/healthz", context=context)
    # The server's protocol_version alert (not a client-side "no protocols available").
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value


@pytest.mark.parametrize(("maximum", "expected"), [("TLSv1_2", "TLSv1.2"), ("TLSv1_3", "TLSv1.3")])
def test_tls12_and_tls13_are_served(server: Server, maximum: str, expected: str) -> None:
    context = tls_context(server.ca_pem)
    context.maximum_version = getattr(ssl.TLSVersion, maximum)
    reply = fetch(server.https_port, "/healthz", context=context)
    assert reply.status == 200
    assert reply.tls_version == expected


# -- 5. stopping ------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def listener_of(cmdline: str) -> str | None:
    """The listener an arbiter serves, by its command line: `python -m gateway.server https`, or what
    gunicorn renames it to when setproctitle is installed, `gunicorn: master [gateway-https]`."""
    match = re.search(r"gateway\.server (https?)\b|\[gateway-(https?)\]", cmdline)
    return (match.group(1) or match.group(2)) if match else None


def listener_family(server: Server) -> tuple[list[ProcessId], list[ProcessId]]:
    """The server's two gunicorn arbiters and their workers, checked against what `--workers 1` means."""
    family = descendants(server.process.pid)
    arbiters = [p for p in family if p.parent == server.process.pid]
    assert sorted(listener_of(p.cmdline) or "?" for p in arbiters) == ["http", "https"], family
    workers = [p for p in family if p.parent in {a.pid for a in arbiters}]
    assert len(workers) == 2, family  # one worker on each listener
    return arbiters, workers


def test_sigterm_stops_both_listeners_and_every_child(server: Server, workdir: Path) -> None:
    own = start_server(server.data_dir, workdir)
    try:
        arbiters, workers = listener_family(own)
        started = time.monotonic()
        own.process.send_signal(signal.SIGTERM)  # to `gateway serve` alone, not to its process group
        code = own.process.wait(timeout=STOP_SECONDS)
        elapsed = time.monotonic() - started
        # Checked before the teardown's last-resort SIGKILL could hide a stray.
        assert not is_listening(own.http_port)
        assert not is_listening(own.https_port)
        assert wait_until(lambda: not any(still_running(p) for p in arbiters + workers), 5), [
            p for p in arbiters + workers if still_running(p)
        ]
        assert running_in_group(own.process.pid) == []
    finally:
        stop_server(own)
    assert code == 0, own.stderr_text()
    assert elapsed < 15, f"stopping took {elapsed:.1f} s"
    assert "Traceback" not in own.stderr_text()


def test_sigterm_during_start_up_leaves_nothing_behind(server: Server, workdir: Path) -> None:
    """SIGTERM as soon as the first arbiter exists: nothing may outlive `gateway serve`."""
    own = spawn_server(server.data_dir, workdir)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not (first := children_of(own.process.pid)):
            assert own.process.poll() is None, own.stderr_text()
            assert time.monotonic() < deadline, "no listener process was started"
        own.process.send_signal(signal.SIGTERM)
        code = own.process.wait(timeout=STOP_SECONDS)
        assert wait_until(lambda: running_in_group(own.process.pid) == [], 5), (first, own.stderr_text())
    finally:
        stop_server(own)
    assert code == 0, own.stderr_text()


# -- 6. start-up failures: one line, non-zero, nothing left listening -------------------------------


def assert_one_line_failure(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def serve_once(data_dir: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    http_port, https_port = free_ports(2)
    done = gateway_command(
        "serve",
        "--data-dir",
        str(data_dir),
        "--http",
        f"127.0.0.1:{http_port}",
        "--https",
        f"127.0.0.1:{https_port}",
        "--workers",
        "1",
        env=env,
    )
    assert not is_listening(http_port)
    assert not is_listening(https_port)
    return done


def test_serve_on_an_uninitialised_data_dir(workdir: Path) -> None:
    empty = workdir / "never-initialised"
    line = assert_one_line_failure(serve_once(empty))
    assert "gateway init" in line
    assert not empty.exists()  # serve does not create what init should


@pytest.fixture(scope="module")
def encrypted_data_dir(workdir: Path) -> Path:
    data_dir = workdir / "encrypted"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port, env=child_env(GATEWAY_KEY_PASSPHRASE="correct horse"))
    assert b"ENCRYPTED" in (data_dir / "ca" / "ca.key").read_bytes()
    return data_dir


@pytest.mark.parametrize(
    ("passphrase", "says"),
    [("battery staple", "wrong passphrase"), (None, "GATEWAY_KEY_PASSPHRASE")],
    ids=["wrong", "missing"],
)
def test_serve_with_a_bad_passphrase(encrypted_data_dir: Path, passphrase: str | None, says: str) -> None:
    env = child_env() if passphrase is None else child_env(GATEWAY_KEY_PASSPHRASE=passphrase)
    line = assert_one_line_failure(serve_once(encrypted_data_dir, env))
    assert says in line
    assert "correct horse" not in line


def test_serve_with_the_right_passphrase(encrypted_data_dir: Path, workdir: Path) -> None:
    own = start_server(encrypted_data_dir, workdir, env=child_env(GATEWAY_KEY_PASSPHRASE="correct horse"))
    try:
        reply = fetch(own.https_port, "/healthz", context=tls_context(own.ca_pem))
        assert reply.status == 200
    finally:
        assert stop_server(own) == 0
