"""When est/client.py sends a request again, and what it sends: a connection the server closed.

A tiny TLS server on raw sockets plays each connection by a plan, one step a request: answer and
keep the connection, answer and close it at once (gunicorn's idle keep-alive close: no
close_notify), read the request and close or reset without answering, answer a line that is no
HTTP. The client must send a request once more only when a *reused* kept-alive connection turns out
closed, never after a failure on a new connection, never twice; and an enrollment sends the same
CSR every time, unless it is linked to the TLS channel and the connection is new. The real server's
side of this (gunicorn's keep-alive timeout, the approval queue) is in tests/test_est_client_approval.py.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import http.client
import io
import ipaddress
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import AttributeOID

from est.client import EstClient, EstClientError
from est.client_messages import RequestCsr, build_csr, decode_base64_reply
from est.client_transport import closed_by_peer
from est.wire import certs_only, encode_base64_body
from gateway.cli import main
from shared_ca.keys import PrivateKey
from tests.support import ec_key, rsa_key, subject

Step = Literal["answer", "answer-then-close", "close-unanswered", "reset", "garbage", "no-tls"]
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"


@dataclasses.dataclass(frozen=True)
class Received:
    """One request as the tiny server read it."""

    connection: int
    method: str
    path: str
    body: bytes
    tls_unique: bytes | None


Reply = Callable[[Received], tuple[int, dict[str, str], bytes]]


def _certificate(
    key: PrivateKey, name: x509.Name, issuer_key: PrivateKey, issuer: x509.Name, *, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class TinyServer:
    """TLS on 127.0.0.1, one connection after the other; connection n (from 1) follows plans[n-1]
    (the last plan repeats), one step a request, and is closed when its plan ends."""

    def __init__(self, directory: Path, plans: list[list[Step]]) -> None:
        self.ca_key = ec_key()
        self.ca = _certificate(self.ca_key, subject("Tiny CA"), self.ca_key, subject("Tiny CA"), ca=True)
        server_key = ec_key()
        server_cert = _certificate(server_key, subject("127.0.0.1"), self.ca_key, self.ca.subject, ca=False)
        self.ca_file = directory / "tiny-ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(Encoding.PEM))
        (directory / "tiny.pem").write_bytes(server_cert.public_bytes(Encoding.PEM))
        (directory / "tiny.key").write_bytes(
            server_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(directory / "tiny.pem", directory / "tiny.key")
        self.plans = plans
        self.reply: Reply = self.cacerts_reply
        self.received: list[Received] = []
        self.connections = 0
        self.closed = threading.Condition()
        self.closed_count = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self, **options: object) -> EstClient:
        return EstClient(self.url, self.ca_file, timeout=5, **options)  # type: ignore[arg-type]

    def wait_closed(self, count: int) -> None:
        """Until the server has closed `count` connections (so the client's next request meets a closed one)."""
        with self.closed:
            assert self.closed.wait_for(lambda: self.closed_count >= count, timeout=5), "the server did not close"

    def stop(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread (close alone does not)
        self.listener.close()
        self.thread.join(5)
        assert not self.thread.is_alive()

    def cacerts_reply(self, _received: Received) -> tuple[int, dict[str, str], bytes]:
        """The default answer: a certs-only reply with the CA certificate."""
        return 200, {"Content-Type": CERTS_ONLY}, encode_base64_body(certs_only([self.ca]))

    def issue_reply(self, received: Received) -> tuple[int, dict[str, str], bytes]:
        """A certs-only reply with a certificate for the key of the request's CSR."""
        csr = x509.load_der_x509_csr(decode_base64_reply(received.body, "test"))
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.ca.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
        )
        issued = builder.sign(self.ca_key, hashes.SHA256())
        return 200, {"Content-Type": CERTS_ONLY}, encode_base64_body(certs_only([issued]))

    def _serve(self) -> None:
        while True:
            try:
                raw, _address = self.listener.accept()
            except OSError:
                return  # stopped
            self.connections += 1
            plan = self.plans[min(self.connections, len(self.plans)) - 1]
            try:
                self._play(raw, self.connections, plan)
            except OSError:
                pass  # the client went away: its side is what the test checks
            finally:
                raw.close()
                with self.closed:
                    self.closed_count += 1
                    self.closed.notify_all()

    def _play(self, raw: socket.socket, number: int, plan: list[Step]) -> None:
        raw.settimeout(5)
        if plan == ["no-tls"]:
            return  # closed before the handshake
        with self.context.wrap_socket(raw, server_side=True) as tls:
            reader = tls.makefile("rb")
            for step in plan:
                received = self._read(reader, tls, number)
                if received is None:
                    return
                self.received.append(received)
                if step == "reset":  # RST instead of FIN
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if step == "close-unanswered":
                    return
                if step == "garbage":
                    tls.sendall(b"NONSENSE\r\n\r\n")
                    return
                status, headers, body = self.reply(received)
                head = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Status')}"]
                head += [f"{name}: {value}" for name, value in {**headers, "Content-Length": str(len(body))}.items()]
                tls.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                if step == "answer-then-close":
                    return  # like gunicorn's keep-alive timeout: socket closed, no close_notify

    @staticmethod
    def _read(reader: io.BufferedReader, tls: ssl.SSLSocket, number: int) -> Received | None:
        request_line = reader.readline()
        if not request_line:
            return None
        method, path, _version = request_line.decode("latin-1").split(" ", 2)
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        binding = tls.get_channel_binding("tls-unique") if tls.version() == "TLSv1.2" else None
        return Received(number, method, path, reader.read(length), binding)


Start = Callable[[list[list[Step]]], TinyServer]


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Start]:
    started: list[TinyServer] = []

    def start(plans: list[list[Step]]) -> TinyServer:
        server = TinyServer(tmp_path, plans)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- the decision -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True, id="ssl-eof"),
        pytest.param(ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"), True, id="close-notify"),
        pytest.param(ConnectionResetError(104, "Connection reset by peer"), True, id="reset"),
        pytest.param(BrokenPipeError(32, "Broken pipe"), True, id="broken-pipe"),
        pytest.param(ConnectionAbortedError(103, "Software caused connection abort"), True, id="aborted"),
        pytest.param(http.client.RemoteDisconnected("Remote end closed connection"), True, id="remote-disconnected"),
        pytest.param(http.client.BadStatusLine("NONSENSE\r\n"), False, id="keep/garbage-status-line"),
        pytest.param(http.client.IncompleteRead(b"half", 10), False, id="keep/reply-cut-short"),
        pytest.param(TimeoutError("timed out"), False, id="keep/timeout"),
        pytest.param(ConnectionRefusedError(111, "Connection refused"), False, id="keep/refused"),
        pytest.param(ssl.SSLCertVerificationError(1, "certificate verify failed"), False, id="keep/verify"),
        pytest.param(ssl.SSLError(1, "wrong version number"), False, id="keep/tls-error"),
    ],
)
def test_closed_by_peer(exc: BaseException, expected: bool) -> None:
    assert closed_by_peer(exc) is expected


# -- reused connections ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plans", "seen_by_first"),
    [
        pytest.param([["answer-then-close"], ["answer"]], 1, id="closed-while-idle"),
        pytest.param([["answer", "close-unanswered"], ["answer"]], 2, id="closed-after-reading"),
        pytest.param([["answer", "reset"], ["answer"]], 2, id="reset-after-reading"),
    ],
)
def test_reused_connection_closed_by_the_server_is_reopened_once(
    tiny: Start, plans: list[list[Step]], seen_by_first: int
) -> None:
    server = tiny(plans)
    with server.client() as client:
        assert client.cacerts() == [server.ca]
        if plans[0] == ["answer-then-close"]:
            server.wait_closed(1)
        assert client.cacerts() == [server.ca]
    assert server.connections == 2
    assert [r.connection for r in server.received] == [1] * seen_by_first + [2]
    assert {r.path for r in server.received} == {"/.well-known/est/cacerts"}


def test_a_post_after_the_idle_close_is_sent_again_unchanged(tiny: Start) -> None:
    """The reported failure: POST on a kept-alive connection gunicorn had closed (SSLEOFError on send)."""
    server = tiny([["answer-then-close"], ["answer"]])
    server.reply = lambda r: server.issue_reply(r) if r.method == "POST" else server.cacerts_reply(r)
    key = ec_key()
    with server.client() as client:
        client.cacerts()
        server.wait_closed(1)
        result = client.enroll_with_key(key, subject("after-idle"))
    assert result.certificate.subject == subject("after-idle")
    assert [(r.connection, r.method) for r in server.received] == [(1, "GET"), (2, "POST")]


def test_only_one_retry(tiny: Start) -> None:
    server = tiny([["answer", "close-unanswered"], ["close-unanswered"]])
    with server.client() as client:
        client.cacerts()
        with pytest.raises(EstClientError) as caught:
            client.cacerts()
    message = str(caught.value)
    assert message.startswith("the server closed the connection without answering https://127.0.0.1:")
    assert "again, on a new connection" in message
    assert server.connections == 2
    assert [r.connection for r in server.received] == [1, 1, 2]


def test_a_status_line_that_is_no_http_is_not_retried(tiny: Start) -> None:
    server = tiny([["answer", "garbage"], ["answer"]])
    with server.client() as client:
        client.cacerts()
        with pytest.raises(EstClientError, match=r"^bad HTTP reply from https://\S+/cacerts: BadStatusLine"):
            client.cacerts()
    assert server.connections == 1


# -- new connections: reported, not retried ------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        pytest.param(
            ["close-unanswered"], r"^the server closed the connection without answering https://\S+$", id="closed"
        ),
        pytest.param(["reset"], r"^the server closed the connection without answering https://\S+$", id="reset"),
        pytest.param(
            ["no-tls"], r"^the server closed the connection during the TLS handshake for https://\S+$", id="handshake"
        ),
    ],
)
def test_failure_on_a_new_connection_is_final(tiny: Start, plan: list[Step], message: str) -> None:
    server = tiny([plan, ["answer"]])
    with server.client() as client, pytest.raises(EstClientError, match=message):
        client.cacerts()
    assert server.connections == 1


# -- the same CSR on every retry ------------------------------------------------------------------------


def _pending_then_issue(server: TinyServer, pending: int) -> Reply:
    count = [0]

    def reply(received: Received) -> tuple[int, dict[str, str], bytes]:
        count[0] += 1
        if count[0] <= pending:
            return 202, {"Retry-After": "1", "Content-Type": "text/plain"}, b"the request awaits approval\n"
        return server.issue_reply(received)

    return reply


@pytest.mark.parametrize(
    "plans",
    [
        pytest.param([["answer"] * 4], id="one-connection"),
        pytest.param([["answer-then-close"]] * 3 + [["answer"]], id="new-connection-each-time"),
    ],
)
def test_retries_after_202_send_the_same_csr(tiny: Start, plans: list[list[Step]]) -> None:
    server = tiny(plans)
    server.reply = _pending_then_issue(server, pending=3)
    with server.client(wait=10, sleep=lambda _s: None) as client:
        result = client.enroll_with_key(ec_key(), subject("same"), [x509.DNSName("same.example")])
    assert result.certificate.subject == subject("same")
    assert len(server.received) == 4
    assert len({r.body for r in server.received}) == 1
    assert server.connections == (1 if len(plans) == 1 else 4)


def _password(received: Received) -> bytes:
    csr = x509.load_der_x509_csr(decode_base64_reply(received.body, "test"))
    return csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value


def test_linked_csr_is_kept_on_one_connection_and_rebuilt_on_a_new_one(tiny: Start) -> None:
    server = tiny([["answer", "answer-then-close"], ["answer"]])
    server.reply = _pending_then_issue(server, pending=2)
    with server.client(wait=10, sleep=lambda _s: None) as client:
        client.enroll_with_key(ec_key(), subject("linked"), link_channel=True)
    first, second, third = server.received
    assert (first.connection, second.connection, third.connection) == (1, 1, 2)
    assert first.body == second.body  # same connection, same tls-unique: the same CSR
    assert third.body != first.body
    for received in server.received:
        assert received.tls_unique is not None
        assert _password(received) == base64.b64encode(received.tls_unique)


# -- the CSR itself ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_key", [ec_key, rsa_key], ids=["ecdsa", "rsa"])
def test_csr_bytes_depend_only_on_what_is_asked(make_key: Callable[[], PrivateKey]) -> None:
    """Deterministic signatures: the command run again with the same key sends the same CSR."""
    key = make_key()
    sans = [x509.DNSName("d.example")]
    first = build_csr(key, subject("d"), sans).public_bytes(Encoding.DER)
    assert build_csr(key, subject("d"), sans).public_bytes(Encoding.DER) == first
    assert build_csr(key, subject("e"), sans).public_bytes(Encoding.DER) != first
    assert build_csr(key, subject("d"), sans, challenge_password="x").public_bytes(Encoding.DER) != first


def test_request_csr_is_built_once_per_binding() -> None:
    request = RequestCsr(ec_key(), subject("once"))
    plain = request.der(None)
    assert request.der(None) is plain
    linked = request.der(b"binding-1")
    assert linked != plain and request.der(b"binding-1") is linked
    assert request.der(b"binding-2") != linked
    password = x509.load_der_x509_csr(request.der(b"binding-2")).attributes.get_attribute_for_oid(
        AttributeOID.CHALLENGE_PASSWORD
    )
    assert password.value == base64.b64encode(b"binding-2")


# -- the command line ---------------------------------------------------------------------------------------


def test_cli_wait_sends_one_csr_across_idle_closes(tiny: Start, tmp_path: Path) -> None:
    server = tiny([["answer-then-close"], ["answer-then-close"], ["answer"]])
    server.reply = _pending_then_issue(server, pending=2)
    out = tmp_path / "dev.pem"
    args = ["--url", server.url, "--cacert", str(server.ca_file), "--cn", "dev", "--out", str(out)]
    result = CliRunner().invoke(main, ["client", "est", "enroll", *args, "--wait", "10", "--tls-unique", "no"])
    assert result.exit_code == 0, result.output
    assert x509.load_pem_x509_certificate(out.read_bytes()).subject == subject("dev")
    assert [r.connection for r in server.received] == [1, 2, 3]
    assert len({r.body for r in server.received}) == 1


@pytest.mark.parametrize(
    ("plan", "says"),
    [
        pytest.param(["close-unanswered"], "the server closed the connection without answering", id="closed"),
        pytest.param(["no-tls"], "the server closed the connection during the TLS handshake for", id="handshake"),
    ],
)
def test_cli_final_failure_is_one_line(tiny: Start, plan: list[Step], says: str) -> None:
    server = tiny([plan])
    command = ["client", "est", "cacerts", "--url", server.url, "--cacert", str(server.ca_file)]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.splitlines() == [f"Error: {says} {server.url}/.well-known/est/cacerts"]
