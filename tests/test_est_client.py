"""est/client.py and `gateway client est …` against a scripted EST server: a tiny http.server over TLS in a thread.

The fake server issues real certificates from a test CA, so success paths are checked end to end
(CSR in, certificate for our key out); each test scripts the error it needs (401 challenge, 202
Retry-After, 4xx text, bad base64, wrong content type, a connection the server drops). Tests
against the real `gateway serve` are in tests/test_est_client_serve.py.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import http.server
import ipaddress
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from asn1crypto import csr as asn1_csr
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs7
from cryptography.x509.oid import NameOID

from est.client import EstClient, EstClientError, EstPendingError, build_csr
from est.client_messages import decode_base64_reply, parse_serverkeygen, retry_after_seconds
from est.wire import certs_only, encode_base64_body, encode_csr_attrs, serverkeygen_multipart
from gateway.cli import main
from shared_ca.keys import PrivateKey, load_private_key, public_key_bytes
from tests.support import ec_key, subject

USER, PASSWORD = "device1", "pa:ss wörd"
CERTS_ONLY_TYPE = "application/pkcs7-mime; smime-type=certs-only"


# -- a test PKI -------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    key: PrivateKey, name: x509.Name, issuer_key: PrivateKey, issuer: x509.Name, *, ca: bool = False
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclasses.dataclass
class Pki:
    """A CA, the fake server's TLS certificate (127.0.0.1) and a client certificate, as files too."""

    directory: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate

    def path(self, name: str) -> Path:
        return self.directory / name

    def issue(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.ca.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        return builder.sign(self.ca_key, hashes.SHA256())


def _write_key(path: Path, key: PrivateKey) -> None:
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("est-pki")
    ca_key = ec_key()
    ca = _cert(ca_key, _name("EST Test CA"), ca_key, _name("EST Test CA"), ca=True)
    server_key, client_key, other_key = ec_key(), ec_key(), ec_key()
    server = _cert(server_key, _name("127.0.0.1"), ca_key, ca.subject)
    client = _cert(client_key, _name("client1"), ca_key, ca.subject)
    other = _cert(other_key, _name("Other CA"), other_key, _name("Other CA"), ca=True)
    (directory / "ca.pem").write_bytes(ca.public_bytes(Encoding.PEM))
    (directory / "other-ca.pem").write_bytes(other.public_bytes(Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(Encoding.PEM))
    (directory / "client.pem").write_bytes(client.public_bytes(Encoding.PEM))
    _write_key(directory / "server.key", server_key)
    _write_key(directory / "client.key", client_key)
    return Pki(directory, ca_key, ca)


# -- the scripted server ------------------------------------------------------------------------------


@dataclasses.dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    tls_version: str | None
    tls_unique: bytes | None
    peer_cert: bytes | None
    connection: int


@dataclasses.dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    drop_connection: bool = False  # close the socket after answering, without saying so


Script = Callable[[Seen], Answer]


class FakeEst:
    """Answers each request with the next scripted function (the last one repeats)."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.scripts: list[Script] = [self.issue]
        self.seen: list[Seen] = []
        self.handshakes = 0
        self.port = 0
        self.lock = threading.Lock()

    def answer(self, seen: Seen) -> Answer:
        with self.lock:
            self.seen.append(seen)
            script = self.scripts.pop(0) if len(self.scripts) > 1 else self.scripts[0]
        return script(seen)

    def csr(self, seen: Seen) -> x509.CertificateSigningRequest:
        return x509.load_der_x509_csr(decode_base64_reply(seen.body, "test"))

    def issue(self, seen: Seen) -> Answer:
        """A certs-only reply with a certificate for the CSR's key (cacerts: the CA)."""
        if seen.path.endswith("/cacerts"):
            return certs_reply([self.pki.ca])
        return certs_reply([self.pki.issue(self.csr(seen))])


def certs_reply(certs: list[x509.Certificate], *, line_length: int | None = 64) -> Answer:
    body = encode_base64_body(certs_only(certs), line_length=line_length)
    return Answer(200, body, {"Content-Type": CERTS_ONLY_TYPE, "Content-Transfer-Encoding": "base64"})


def text_reply(status: int, text: str, **headers: str) -> Script:
    return lambda _seen: Answer(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8", **headers})


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: _Server

    def setup(self) -> None:
        super().setup()
        assert isinstance(self.request, ssl.SSLSocket)
        self.request.do_handshake()
        with self.server.fake.lock:
            self.server.fake.handshakes += 1
            self.number = self.server.fake.handshakes

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        sock = self.request
        assert isinstance(sock, ssl.SSLSocket)
        version = sock.version()
        seen = Seen(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            version,
            sock.get_channel_binding("tls-unique") if version == "TLSv1.2" else None,
            sock.getpeercert(binary_form=True),
            self.number,
        )
        answer = self.server.fake.answer(seen)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)
        self.wfile.flush()
        if answer.drop_connection:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeEst, context: ssl.SSLContext) -> None:
        self.fake = fake
        self.context = context
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # failed handshakes are what some tests provoke


@pytest.fixture
def fake(pki: Pki) -> Iterator[FakeEst]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.path("server.pem"), pki.path("server.key"))
    context.load_verify_locations(pki.path("ca.pem"))
    context.verify_mode = ssl.CERT_OPTIONAL
    server_fake = FakeEst(pki)
    server = _Server(server_fake, context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server_fake.port = int(server.server_address[1])
    try:
        yield server_fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def base_url(fake: FakeEst) -> str:
    return f"https://127.0.0.1:{fake.port}"


def client_for(fake: FakeEst, **options: object) -> EstClient:
    return EstClient(base_url(fake), fake.pki.path("ca.pem"), **options)  # type: ignore[arg-type]


def csr_der(key: PrivateKey, cn: str = "device1") -> bytes:
    return build_csr(key, subject(cn)).public_bytes(Encoding.DER)


# -- URLs and construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "label", "expected"),
    [
        pytest.param("https://h:8443", None, "https://h:8443/.well-known/est/cacerts", id="host-only"),
        pytest.param("https://h/", None, "https://h/.well-known/est/cacerts", id="slash"),
        pytest.param("https://h/.well-known/est/", "iot", "https://h/.well-known/est/iot/cacerts", id="label"),
        pytest.param("https://h/est", None, "https://h/est/cacerts", id="own-prefix"),
    ],
)
def test_operation_urls(pki: Pki, url: str, label: str | None, expected: str) -> None:
    with EstClient(url, pki.path("ca.pem"), label=label) as client:
        assert client.url("cacerts") == expected


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        pytest.param("http://h/", {}, "not an https:// URL", id="fail/plain-http"),
        pytest.param("https://h/", {"label": "a/b"}, "not an EST label", id="fail/label"),
        pytest.param("https://h/", {"username": "u"}, "both a username and a password", id="fail/user-only"),
        pytest.param("https://h/", {"username": "a:b", "password": "p"}, "cannot contain ':'", id="fail/colon"),
        pytest.param("https://h:99999/", {}, "invalid port", id="fail/port"),
    ],
)
def test_bad_construction(pki: Pki, url: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(EstClientError, match=message):
        EstClient(url, pki.path("ca.pem"), **options)  # type: ignore[arg-type]


def test_unreadable_ca_file(tmp_path: Path) -> None:
    with pytest.raises(EstClientError, match="cannot load CA file"):
        EstClient("https://h/", tmp_path / "missing.pem")


# -- cacerts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line_length", [64, 76, None], ids=["crlf-64", "crlf-76", "one-line"])
def test_cacerts_any_line_breaks(fake: FakeEst, line_length: int | None) -> None:
    fake.scripts = [lambda _seen: certs_reply([fake.pki.ca], line_length=line_length)]
    with client_for(fake) as client:
        assert client.cacerts() == [fake.pki.ca]
    assert fake.seen[0].method == "GET"
    assert fake.seen[0].path == "/.well-known/est/cacerts"
    assert "authorization" not in fake.seen[0].headers


def test_cacerts_tolerates_lf_and_missing_padding(fake: FakeEst) -> None:
    encoded = base64.b64encode(certs_only([fake.pki.ca])).rstrip(b"=")
    body = b"\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60)) + b"\n"
    fake.scripts = [lambda _seen: Answer(200, body, {"Content-Type": "application/pkcs7-mime"})]
    with client_for(fake) as client:
        assert client.cacerts() == [fake.pki.ca]


def test_kept_alive_connection_is_reused(fake: FakeEst) -> None:
    with client_for(fake) as client:
        client.cacerts()
        client.cacerts()
    assert [s.connection for s in fake.seen] == [1, 1]


def test_connection_dropped_while_idle_is_reopened(fake: FakeEst) -> None:
    dropping = dataclasses.replace(certs_reply([fake.pki.ca]), drop_connection=True)
    fake.scripts = [lambda _seen: dropping, fake.issue]
    with client_for(fake) as client:
        client.cacerts()
        assert client.cacerts() == [fake.pki.ca]
    assert [s.connection for s in fake.seen] == [1, 2]


# -- enrollment and authentication ----------------------------------------------------------------------


def test_simpleenroll_sends_basic_and_returns_our_certificate(fake: FakeEst) -> None:
    key = ec_key()
    with client_for(fake, username=USER, password=PASSWORD) as client:
        result = client.simpleenroll(csr_der(key))
    assert public_key_bytes(result.certificate.public_key()) == public_key_bytes(key.public_key())
    assert result.chain == ()
    seen = fake.seen[0]
    assert (seen.method, seen.path) == ("POST", "/.well-known/est/simpleenroll")
    assert seen.headers["content-type"] == "application/pkcs10"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert seen.headers["authorization"] == f"Basic {token}"
    assert x509.load_der_x509_csr(base64.b64decode(seen.body)).subject == subject("device1")


def test_simpleenroll_accepts_a_pem_csr(fake: FakeEst) -> None:
    key = ec_key()
    with client_for(fake) as client:
        result = client.simpleenroll(build_csr(key, subject("pem")).public_bytes(Encoding.PEM))
    assert result.certificate.subject == subject("pem")


def test_401_challenge_is_answered_once_with_basic(fake: FakeEst) -> None:
    fake.scripts = [text_reply(401, "authentication required", **{"WWW-Authenticate": 'Basic realm="EST"'}), fake.issue]
    with client_for(fake, username=USER, password=PASSWORD, preemptive_basic=False) as client:
        client.simpleenroll(csr_der(ec_key()))
    assert ["authorization" in s.headers for s in fake.seen] == [False, True]


def test_401_with_credentials_sent_is_an_error(fake: FakeEst) -> None:
    fake.scripts = [text_reply(401, "bad password", **{"WWW-Authenticate": 'Basic realm="EST"'})]
    with client_for(fake, username=USER, password="wrong") as client, pytest.raises(EstClientError) as caught:
        client.simpleenroll(csr_der(ec_key()))
    assert caught.value.status == 401
    assert caught.value.server_text == "bad password"
    assert 'Basic realm="EST"' in str(caught.value)
    assert len(fake.seen) == 1


def test_401_without_credentials_is_an_error(fake: FakeEst) -> None:
    fake.scripts = [text_reply(401, "who are you", **{"WWW-Authenticate": 'Basic realm="EST"'})]
    with client_for(fake) as client, pytest.raises(EstClientError, match=r"HTTP 401 .* who are you"):
        client.simpleenroll(csr_der(ec_key()))
    assert len(fake.seen) == 1


def test_client_certificate_is_presented(fake: FakeEst) -> None:
    pki = fake.pki
    key = load_private_key(pki.path("client.key"), None)
    with client_for(fake, cert_file=pki.path("client.pem"), key_file=pki.path("client.key")) as client:
        client.enroll_with_key(key, subject("client1"), reenroll=True)
    assert fake.seen[0].path == "/.well-known/est/simplereenroll"
    assert fake.seen[0].peer_cert == x509.load_pem_x509_certificate(pki.path("client.pem").read_bytes()).public_bytes(
        Encoding.DER
    )


def test_mismatched_client_key_is_refused_before_connecting(fake: FakeEst) -> None:
    with pytest.raises(EstClientError, match="cannot use client certificate"):
        client_for(fake, cert_file=fake.pki.path("client.pem"), key_file=fake.pki.path("server.key"))


def test_reply_without_our_certificate_is_an_error(fake: FakeEst) -> None:
    fake.scripts = [lambda _seen: certs_reply([fake.pki.ca])]
    with client_for(fake) as client, pytest.raises(EstClientError, match="no certificate for the requested key"):
        client.simpleenroll(csr_der(ec_key()))


def test_channel_binding_puts_tls_unique_into_the_csr(fake: FakeEst) -> None:
    key = ec_key()
    with client_for(fake) as client:
        result = client.enroll_with_key(key, subject("linked"), [x509.DNSName("d.example")], link_channel=True)
    seen = fake.seen[0]
    assert seen.tls_version == "TLSv1.2"
    assert seen.tls_unique
    request = asn1_csr.CertificationRequest.load(decode_base64_reply(seen.body, "test"))
    attributes = {a["type"].dotted: a["values"][0] for a in request["certification_request_info"]["attributes"]}
    password = attributes["1.2.840.113549.1.9.7"]
    assert password.name == "printable_string"
    assert password.native == base64.b64encode(seen.tls_unique).decode()
    sans = fake.csr(seen).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["d.example"]
    assert result.certificate.subject == subject("linked")


def test_without_channel_binding_tls_13_and_no_challenge_password(fake: FakeEst) -> None:
    with client_for(fake) as client:
        client.enroll_with_key(ec_key(), subject("plain"))
    assert fake.seen[0].tls_version == "TLSv1.3"
    assert not list(fake.csr(fake.seen[0]).attributes)


# -- 202 Retry-After -------------------------------------------------------------------------------------


def test_202_is_retried_within_the_wait_budget(fake: FakeEst) -> None:
    slept: list[float] = []
    fake.scripts = [text_reply(202, "awaiting approval", **{"Retry-After": "3"}), fake.issue]
    with client_for(fake, wait=10, sleep=slept.append) as client:
        client.simpleenroll(csr_der(ec_key()))
    assert slept == [3.0]
    assert fake.seen[0].body == fake.seen[1].body  # the same request, re-sent (RFC 7030 §4.2.3)


def test_202_beyond_the_wait_budget_is_pending(fake: FakeEst) -> None:
    slept: list[float] = []
    fake.scripts = [text_reply(202, "awaiting approval", **{"Retry-After": "30"})]
    with client_for(fake, wait=10, sleep=slept.append) as client, pytest.raises(EstPendingError) as caught:
        client.simpleenroll(csr_der(ec_key()))
    assert (caught.value.status, caught.value.retry_after, slept) == (202, 30.0, [])


def test_202_forever_ends_when_the_budget_is_spent(fake: FakeEst) -> None:
    slept: list[float] = []
    fake.scripts = [text_reply(202, "", **{"Retry-After": "0"})]
    with client_for(fake, wait=5, sleep=slept.append) as client, pytest.raises(EstPendingError):
        client.simpleenroll(csr_der(ec_key()))
    assert slept == [1.0] * 5  # Retry-After 0 is taken as the 1 s minimum


def test_202_with_channel_binding_rebuilds_the_csr_per_connection(fake: FakeEst) -> None:
    fake.scripts = [
        lambda _seen: Answer(202, b"", {"Retry-After": "1", "Connection": "close"}, drop_connection=True),
        fake.issue,
    ]
    with client_for(fake, wait=5, sleep=lambda _s: None) as client:
        client.enroll_with_key(ec_key(), subject("linked"), link_channel=True)
    first, second = fake.seen
    assert first.connection != second.connection
    for seen in (first, second):
        password = fake.csr(seen).attributes.get_attribute_for_oid(x509.oid.AttributeOID.CHALLENGE_PASSWORD).value
        assert seen.tls_unique is not None
        assert password == base64.b64encode(seen.tls_unique)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("120", 120.0, id="delay-seconds"),
        pytest.param(" 7 ", 7.0, id="spaces"),
        pytest.param("Wed, 21 Oct 2015 07:28:30 GMT", 30.0, id="http-date"),
        pytest.param("Wed, 21 Oct 2015 07:27:00 GMT", 0.0, id="http-date-past"),
        pytest.param("soon", None, id="unreadable"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    now = dt.datetime(2015, 10, 21, 7, 28, tzinfo=dt.UTC)
    assert retry_after_seconds(value, now) == expected


# -- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "status", "message"),
    [
        pytest.param(
            text_reply(403, "subject not allowed\n"),
            403,
            r"HTTP 403 Forbidden from https://127\.0\.0\.1:\d+/"
            r"\.well-known/est/simpleenroll: subject not allowed$",
            id="fail/403-text",
        ),
        pytest.param(
            lambda _s: Answer(503, b"<html><body><h1>Service down</h1></body></html>", {"Content-Type": "text/html"}),
            503,
            "HTTP 503 .*: Service down$",
            id="fail/503-html",
        ),
        pytest.param(
            lambda _s: Answer(200, b"this is not base64 !!", {"Content-Type": CERTS_ONLY_TYPE}),
            None,
            "the simpleenroll reply is not base64",
            id="fail/bad-base64",
        ),
        pytest.param(
            lambda _s: Answer(200, base64.b64encode(b"not a pkcs7"), {"Content-Type": CERTS_ONLY_TYPE}),
            None,
            "not a certs-only PKCS#7",
            id="fail/not-pkcs7",
        ),
        pytest.param(
            lambda _s: Answer(200, b"<html>Welcome to the proxy</html>", {"Content-Type": "text/html"}),
            200,
            "unexpected Content-Type text/html in the simpleenroll reply .*: Welcome to the proxy",
            id="fail/wrong-content-type",
        ),
        pytest.param(lambda _s: Answer(404), 404, "HTTP 404 Not Found", id="fail/404-no-body"),
    ],
)
def test_error_replies(fake: FakeEst, script: Script, status: int | None, message: str) -> None:
    fake.scripts = [script]
    with client_for(fake) as client, pytest.raises(EstClientError, match=message) as caught:
        client.simpleenroll(csr_der(ec_key()))
    assert caught.value.status == status
    assert "\n" not in str(caught.value)


def test_tls_verification_failure(fake: FakeEst) -> None:
    with (
        EstClient(base_url(fake), fake.pki.path("other-ca.pem")) as client,
        pytest.raises(
            EstClientError,
            match=r"cannot verify the TLS server of https://127\.0\.0\.1:\d+/\.well-known/est/cacerts: \w",
        ),
    ):
        client.cacerts()
    assert fake.seen == []


def test_host_name_mismatch(fake: FakeEst) -> None:
    url = f"https://localhost:{fake.port}"
    with EstClient(url, fake.pki.path("ca.pem")) as client, pytest.raises(EstClientError, match="cannot verify"):
        client.cacerts()


def test_nobody_listening() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with EstClient(f"https://127.0.0.1:{port}", None) as client, pytest.raises(EstClientError, match="cannot reach"):
        client.cacerts()


# -- csrattrs and serverkeygen ---------------------------------------------------------------------------


def test_csrattrs_parsed(fake: FakeEst) -> None:
    p384 = bytes.fromhex("06052b81040022")
    der = encode_csr_attrs(["1.2.840.113549.1.9.7"], [("1.2.840.10045.2.1", [p384])])
    fake.scripts = [lambda _s: Answer(200, encode_base64_body(der), {"Content-Type": "application/csrattrs"})]
    with client_for(fake) as client:
        attrs = client.csrattrs()
    assert attrs.oids == ("1.2.840.113549.1.9.7",)
    assert attrs.attributes == (("1.2.840.10045.2.1", (p384,)),)
    assert attrs.asks_for_channel_binding


@pytest.mark.parametrize("status", [204, 404])
def test_csrattrs_none_available(fake: FakeEst, status: int) -> None:
    fake.scripts = [lambda _s: Answer(status)]
    with client_for(fake) as client:
        attrs = client.csrattrs()
    assert (attrs.oids, attrs.attributes, attrs.asks_for_channel_binding) == ((), (), False)


def _keygen_script(fake: FakeEst, key_type: str) -> Script:
    def script(seen: Seen) -> Answer:
        server_key = ec_key()
        csr = fake.csr(seen)
        cert = fake.pki.issue(build_csr(server_key, csr.subject))
        if key_type == "pkcs8":
            key_der = server_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
            key_content_type = "application/pkcs8"
        else:
            key_der = pkcs7.serialize_certificates([fake.pki.ca], Encoding.DER)  # stands in for CMS EnvelopedData
            key_content_type = "application/pkcs7-mime; smime-type=server-generated-key"
        body, content_type = serverkeygen_multipart(key_der, key_content_type, certs_only([cert]), "est-boundary")
        return Answer(200, body, {"Content-Type": content_type})

    return script


def test_serverkeygen_pkcs8(fake: FakeEst) -> None:
    fake.scripts = [_keygen_script(fake, "pkcs8")]
    with client_for(fake) as client:
        result = client.serverkeygen(csr_der(ec_key(), "keygen"))
    assert result.private_key is not None and result.encrypted_key is None
    assert public_key_bytes(result.private_key.public_key()) == public_key_bytes(result.certificate.public_key())
    assert result.certificate.subject == subject("keygen")


def test_serverkeygen_encrypted_key_is_kept_as_bytes(fake: FakeEst) -> None:
    fake.scripts = [_keygen_script(fake, "encrypted")]
    with client_for(fake) as client:
        result = client.serverkeygen_with_key(ec_key(), subject("keygen"))
    assert result.private_key is None
    assert result.encrypted_key == pkcs7.serialize_certificates([fake.pki.ca], Encoding.DER)


def test_serverkeygen_parts_in_any_order_and_missing_key(pki: Pki) -> None:
    key = ec_key()
    cert = pki.issue(build_csr(key, subject("x")))
    key_der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    body, content_type = serverkeygen_multipart(key_der, "application/pkcs8", certs_only([cert]), "b1")
    first, second = body.split(b"--b1\r\n")[1:3]
    swapped = b"--b1\r\n" + second.replace(b"--b1--\r\n", b"") + b"--b1\r\n" + first + b"--b1--\r\n"
    assert parse_serverkeygen(swapped, content_type)[0] == "application/pkcs8"
    only_certs = b"--b1\r\n" + second
    with pytest.raises(EstClientError, match="no private key part"):
        parse_serverkeygen(only_certs, content_type)


# -- the command line --------------------------------------------------------------------------------------


def est_cli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["client", "est", *args], input=stdin)


def one_line_failure(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def common(fake: FakeEst) -> list[str]:
    return ["--url", base_url(fake), "--cacert", str(fake.pki.path("ca.pem"))]


def test_cli_enroll_writes_key_and_certificate(fake: FakeEst, tmp_path: Path) -> None:
    out = tmp_path / "dev.pem"
    args = [*common(fake), "--user", USER, "--password-stdin", "--cn", "dev", "--key-type", "p384", "--out", str(out)]
    result = est_cli("enroll", *args, "--tls-unique", "no", stdin=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    key_file = tmp_path / "dev.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    key = load_private_key(key_file, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert public_key_bytes(cert.public_key()) == public_key_bytes(key.public_key())
    assert "issued serial" in result.stdout
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert fake.seen[-1].headers["authorization"] == f"Basic {token}"


def test_cli_enroll_auto_binding_follows_csrattrs(fake: FakeEst, tmp_path: Path) -> None:
    der = encode_csr_attrs(["1.2.840.113549.1.9.7"], [])
    fake.scripts = [
        lambda _s: Answer(200, encode_base64_body(der), {"Content-Type": "application/csrattrs"}),
        fake.issue,
    ]
    result = est_cli("enroll", *common(fake), "--cn", "dev", "--out", str(tmp_path / "dev.pem"))
    assert result.exit_code == 0, result.output
    assert [s.path.rsplit("/", 1)[1] for s in fake.seen] == ["csrattrs", "simpleenroll"]
    assert fake.seen[1].tls_version == "TLSv1.2" and fake.seen[1].tls_unique is not None


def test_cli_enroll_ready_csr_to_stdout(fake: FakeEst, tmp_path: Path) -> None:
    csr_file = tmp_path / "d.csr"
    csr_file.write_bytes(build_csr(ec_key(), subject("ready")).public_bytes(Encoding.PEM))
    result = est_cli("enroll", *common(fake), "--csr", str(csr_file))
    assert result.exit_code == 0, result.output
    assert x509.load_pem_x509_certificate(result.stdout.encode()).subject == subject("ready")


def test_cli_pending_keeps_the_key_for_the_next_run(fake: FakeEst, tmp_path: Path) -> None:
    fake.scripts = [text_reply(202, "", **{"Retry-After": "60"}), fake.issue]
    args = ["enroll", *common(fake), "--cn", "dev", "--out", str(tmp_path / "dev.pem"), "--tls-unique", "no"]
    line = one_line_failure(est_cli(*args))
    assert "awaits approval" in line and "retry in 60 s" in line and "dev.key" in line
    again = est_cli(*args)
    assert again.exit_code == 0, again.output
    assert "using the existing key" in again.stderr
    assert fake.seen[0].body == fake.seen[1].body  # the same CSR, so the server finds its queued request


def test_cli_reenroll_same_key_and_rekey(fake: FakeEst, tmp_path: Path) -> None:
    pki = fake.pki
    tls = [*common(fake), "--cert", str(pki.path("client.pem")), "--key", str(pki.path("client.key"))]
    same = est_cli("reenroll", *tls, "--out", str(tmp_path / "same.pem"), "--tls-unique", "no")
    assert same.exit_code == 0, same.output
    current_key = load_private_key(pki.path("client.key"), None)
    renewed = x509.load_pem_x509_certificate((tmp_path / "same.pem").read_bytes())
    assert public_key_bytes(renewed.public_key()) == public_key_bytes(current_key.public_key())
    rekey = est_cli("reenroll", *tls, "--rekey", "--out", str(tmp_path / "new.pem"), "--tls-unique", "no")
    assert rekey.exit_code == 0, rekey.output
    new_cert = x509.load_pem_x509_certificate((tmp_path / "new.pem").read_bytes())
    new_key = load_private_key(tmp_path / "new.key", None)
    assert public_key_bytes(new_cert.public_key()) == public_key_bytes(new_key.public_key())
    assert new_cert.subject == _name("client1")
    assert all(s.path.endswith("/simplereenroll") and s.peer_cert for s in fake.seen)


def test_cli_serverkeygen_writes_both(fake: FakeEst, tmp_path: Path) -> None:
    fake.scripts = [_keygen_script(fake, "pkcs8")]
    out = tmp_path / "kg.pem"
    result = est_cli("serverkeygen", *common(fake), "--cn", "kg", "--out", str(out), "--tls-unique", "no")
    assert result.exit_code == 0, result.output
    key = load_private_key(tmp_path / "kg.key", None)
    assert stat.S_IMODE((tmp_path / "kg.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert public_key_bytes(cert.public_key()) == public_key_bytes(key.public_key())


def test_cli_cacerts_and_csrattrs(fake: FakeEst, tmp_path: Path) -> None:
    out = tmp_path / "ca.pem"
    result = est_cli("cacerts", *common(fake), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert x509.load_pem_x509_certificates(out.read_bytes()) == [fake.pki.ca]
    der = encode_csr_attrs(["1.2.840.113549.1.9.7"], [("1.2.840.10045.2.1", [bytes.fromhex("06052b81040022")])])
    fake.scripts = [lambda _s: Answer(200, encode_base64_body(der), {"Content-Type": "application/csrattrs"})]
    shown = est_cli("csrattrs", *common(fake))
    assert shown.exit_code == 0, shown.output
    assert "1.2.840.113549.1.9.7 (challengePassword)" in shown.stdout
    assert "1.3.132.0.34 (P-384)" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["enroll", "--cn", "x"], "give --out or --key-out", id="fail/no-key-file"),
        pytest.param(
            ["enroll", "--cn", "x", "--subject", "CN=y", "--out", "o.pem"], "--subject or --cn", id="fail/both"
        ),
        pytest.param(["reenroll"], "needs --cert and --key", id="fail/reenroll-no-cert"),
        pytest.param(["cacerts", "--user", "u"], "--password-stdin go together", id="fail/user-no-password"),
    ],
)
def test_cli_usage_errors(fake: FakeEst, args: list[str], message: str) -> None:
    result = est_cli(args[0], *common(fake), *args[1:])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_cli_server_error_is_one_line(fake: FakeEst, tmp_path: Path) -> None:
    fake.scripts = [text_reply(403, "the profile refuses this subject")]
    line = one_line_failure(est_cli("enroll", *common(fake), "--cn", "x", "--out", str(tmp_path / "x.pem")))
    assert line.startswith("Error: HTTP 403 Forbidden from https://127.0.0.1:")
    assert line.endswith("the profile refuses this subject")
    assert not (tmp_path / "x.key").exists()  # the key made for a refused request is removed


def test_cli_tls_failure_is_one_line(fake: FakeEst) -> None:
    line = one_line_failure(est_cli("cacerts", "--url", base_url(fake), "--cacert", str(fake.pki.path("other-ca.pem"))))
    assert "cannot verify the TLS server" in line


def test_cli_est_alias_still_runs_the_client(fake: FakeEst, tmp_path: Path) -> None:
    """`gateway est …`, the name before `gateway client est …`, is kept hidden for one release."""
    out = tmp_path / "ca.pem"
    result = CliRunner().invoke(main, ["est", "cacerts", *common(fake), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert x509.load_pem_x509_certificates(out.read_bytes()) == [fake.pki.ca]
    assert "Use `gateway client est`" in result.stderr
