"""The EST authentication matrix over HTTPS, through a real `python -m gateway serve`.

Every way a request can be refused on its credentials (no credentials, wrong or unknown Basic user,
a disabled, used-up or label-bound user, a client certificate that is foreign, revoked, expired or
for another subject, a password where a certificate is needed, a bad password next to a good
certificate, a CSR whose signature does not verify) gets its exact HTTP status, a short text/plain
body that says nothing of the internals, no certificate, and one enrollment event `refused:<kind>`.
A few positive controls (200) show that each refusal is for the reason tested and not a broken path.

One initialised data directory (P-256 CA) and one server for the module; a second server on the
same data directory with `est.trusted_proxies = "127.0.0.1"` (its own config file; the deprecated
name of `listen.trusted_proxies`, kept working) covers the TLS-terminating-proxy path. Traffic
stays on 127.0.0.1. Python's `http.client`/`ssl` drive most cases (through tests.test_serve.fetch),
curl the rest.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.config import load_config
from gateway.runtime import open_gateway, open_storage
from shared_ca.authority import utcnow
from shared_ca.keys import PrivateKey
from shared_ca.policy import authorize_request
from shared_ca.storage.enrollment_records import EnrollmentRecord
from shared_ca.storage.repositories import Storage
from tests.support import csr_der, ec_key, make_csr, subject
from tests.test_scep_interop import client_env, server_log
from tests.test_serve import (
    REPO,
    Server,
    child_env,
    fetch,
    foreign_client_certificate,
    free_ports,
    gateway_command,
    start_server,
    stop_server,
    tls_context,
    write_client_credentials,
)

pytestmark = pytest.mark.slow

PASSWORD = "Matrix-Password-1"
GOOD = "matrix-enroller"  # unlimited, any label
DISABLED = "matrix-disabled"  # disabled with `est-user disable`
ONCE = "matrix-once"  # --uses 1
OTHER = "matrix-other-label"  # --label other
USERS: dict[str, tuple[str, ...]] = {GOOD: (), DISABLED: (), ONCE: ("--uses", "1"), OTHER: ("--label", "other")}
OTHER_PROFILE = '\n[profiles.other]\nvalidity_days = 30\ndescription = "a second EST label"\n'
CERT_HEADER, VERIFY_HEADER = "X-SSL-Client-Cert", "X-SSL-Client-Verify"
BASIC_CHALLENGE = 'Basic realm="EST"'
COMMAND_SECONDS = 60.0
MAX_PUBLIC_MESSAGE = 160  # characters: a category, never a cause
INTERNALS = ("Traceback", ".py", "sqlalchemy", "sqlite", "Exception", "scrypt", "SHA-256", "serial", PASSWORD)
CURL_TLS_FAILURES = (35, 56)  # SSL connect error; failure receiving data (TLS 1.3 alert after the handshake)

ClientCredentials = tuple[Path, Path]  # (certificate PEM, private key PEM)


# -- answers, requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, header names lower-cased."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def est_path(operation: str, label: str | None = None) -> str:
    return f"/.well-known/est/{label}/{operation}" if label else f"/.well-known/est/{operation}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def csr_body(key: PrivateKey, cn: str) -> bytes:
    """An EST request body: base64 (with line breaks) of a PKCS#10 DER for CN=`cn`."""
    return base64.encodebytes(csr_der(make_csr(key, subject(cn))))


def tampered_csr_body(cn: str) -> bytes:
    """Like csr_body, with the last byte of the ECDSA signature's s flipped: still DER, no longer a signature."""
    der = bytearray(csr_der(make_csr(ec_key(), subject(cn))))
    der[-1] ^= 0x01
    return base64.encodebytes(bytes(der))


def post(
    server: Server,
    operation: str,
    body: bytes,
    *,
    auth: tuple[str, str] | None = None,
    client: ClientCredentials | None = None,
    label: str | None = None,
    headers: dict[str, str] | None = None,
    plain_http: bool = False,
) -> Answer:
    """POST to an EST operation with http.client: over TLS (optionally with a client certificate), or
    over the plain-HTTP listener, as a TLS-terminating proxy would forward it (saying the client's
    connection was HTTPS)."""
    sent = {"Content-Type": "application/pkcs10", **(headers or {})}
    if plain_http:
        sent.setdefault("X-Forwarded-Proto", "https")
    if auth is not None:
        sent["Authorization"] = basic(*auth)
    if plain_http:
        reply = fetch(server.http_port, est_path(operation, label), method="POST", body=body, headers=sent)
    else:
        context = tls_context(server.ca_pem, client=client)
        reply = fetch(
            server.https_port, est_path(operation, label), context=context, method="POST", body=body, headers=sent
        )
    return Answer(reply.status, reply.headers, reply.body)


@dataclass(frozen=True)
class CurlRun:
    exit_code: int
    answer: Answer | None  # None when no HTTP answer came (TLS failure)
    stderr: str


def curl(server: Server, directory: Path, name: str, operation: str, body: bytes, *options: str) -> CurlRun:
    """curl -sS POSTing `body` to an EST operation of `server` (trusting only ca.pem), files named `name`."""
    directory.mkdir(parents=True, exist_ok=True)
    request, response, head = directory / f"{name}.b64", directory / f"{name}.body", directory / f"{name}.headers"
    request.write_bytes(body)
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            str(response),
            "-D",
            str(head),
            "-w",
            "%{http_code}",
            "--cacert",
            str(server.ca_pem),
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            f"@{request}",
            *options,
            f"https://127.0.0.1:{server.https_port}{est_path(operation)}",
        ],
        cwd=directory,
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )
    if done.returncode != 0 or done.stdout == "000":
        return CurlRun(done.returncode, None, done.stderr)
    blocks = head.read_text(errors="replace").strip().split("\r\n\r\n")  # the last block answers the request
    headers = {}
    for line in blocks[-1].splitlines()[1:]:
        name_, _, value = line.partition(":")
        headers[name_.strip().lower()] = value.strip()
    return CurlRun(0, Answer(int(done.stdout), headers, response.read_bytes()), done.stderr)


def certificate_of(answer: Answer) -> x509.Certificate:
    """The one certificate of a 200 certs-only EST answer."""
    assert answer.status == 200, answer
    assert answer.headers["content-type"].startswith("application/pkcs7-mime"), answer.headers
    (certificate,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(answer.body))
    return certificate


def serial_hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


# -- what the store says -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    """The certificates and the newest enrollment event before a request."""

    serials: frozenset[str]
    last_event: int


def ledger(store: Storage) -> Ledger:
    serials = frozenset(r.serial_hex for r in store.certificates.list_certificates(now=utcnow()))
    newest = store.enrollments.enrollment_events(limit=1)
    return Ledger(serials, newest[0].id if newest else 0)


def events_since(store: Storage, before: Ledger) -> list[EnrollmentRecord]:
    return [e for e in reversed(store.enrollments.enrollment_events(limit=100)) if e.id > before.last_event]


def issued_since(store: Storage, before: Ledger) -> set[str]:
    return {r.serial_hex for r in store.certificates.list_certificates(now=utcnow())} - before.serials


def assert_refused(
    store: Storage,
    before: Ledger,
    answer: Answer,
    *,
    status: int,
    operation: str,
    message: str,
    server: Server,
    private: Sequence[str] = (),
) -> EnrollmentRecord:
    """The exact status, a short text/plain category without internals, nothing issued, one refusal event."""
    events = events_since(store, before)
    context = f"{answer}\nevents: {events}\n--- gateway serve log:\n{server_log(server, 30)}"
    assert answer.status == status, context
    assert answer.headers.get("content-type", "").startswith("text/plain"), context
    text = answer.text.strip()
    assert message in text, context
    assert len(text) <= MAX_PUBLIC_MESSAGE and "\n" not in text, context
    for leak in (*INTERNALS, *private):
        assert leak not in text, f"{leak!r} leaked into the answer: {text!r}"
    if status == 401:
        assert answer.headers.get("www-authenticate") == BASIC_CHALLENGE, context
    else:
        assert "www-authenticate" not in answer.headers, context
    assert issued_since(store, before) == set(), context
    assert len(events) == 1, context
    (event,) = events
    kind = {400: "bad_signature", 401: "unauthorized", 403: "policy"}[status]
    assert (event.protocol, event.operation, event.outcome) == ("est", operation, f"refused:{kind}"), context
    cause = str(event.detail.get("cause", ""))
    assert cause, context
    if cause != text:
        assert cause not in text, f"the log's cause leaked into the answer: {text!r}"
    return event


# -- fixtures -------------------------------------------------------------------------------------------


def cli_cert_serials(data_dir: Path) -> set[str]:
    """The serials `gateway cert list --format json` shows."""
    done = gateway_command("cert", "list", "--data-dir", str(data_dir), "--format", "json")
    assert done.returncode == 0, done.stderr
    return {row["serial"] for row in json.loads(done.stdout)}


def add_est_user(data_dir: Path, name: str, *options: str) -> None:
    added = subprocess.run(
        [sys.executable, "-m", "gateway", "est-user", "add", name, "--password-stdin", *options],
        input=PASSWORD + "\n",
        cwd=REPO,
        env=child_env(GATEWAY_DATA_DIR=str(data_dir)),
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    if name == DISABLED:
        disabled = gateway_command("est-user", "disable", name, "--data-dir", str(data_dir))
        assert disabled.returncode == 0, disabled.stderr


@dataclass
class Module:
    """What the module's tests share: the CLI's serials at start and every serial a test meant to issue."""

    initial_serials: set[str]
    expected: set[str]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("est-auth-matrix")


@pytest.fixture(scope="module")
def module_state() -> Module:
    return Module(set(), set())


@pytest.fixture(scope="module")
def server(workdir: Path, module_state: Module) -> Iterator[Server]:
    """The main server: no trusted proxy; a profile `other`; the EST users of the matrix."""
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    done = gateway_command(
        "init",
        "--data-dir",
        str(data_dir),
        "--ca-key-type",
        "p256",
        "--public-base-url",
        f"http://127.0.0.1:{http_port}",
    )
    assert done.returncode == 0, done.stderr
    with (data_dir / "config.toml").open("a") as config:
        config.write(OTHER_PROFILE)
    with ThreadPoolExecutor(max_workers=len(USERS) + 1) as pool:  # each CLI start costs seconds
        added = [pool.submit(add_est_user, data_dir, name, *options) for name, options in USERS.items()]
        listed = pool.submit(cli_cert_serials, data_dir)
        for future in added:
            future.result()
        module_state.initial_serials = listed.result()
    server = start_server(data_dir, workdir, http_port=http_port)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def proxy_server(server: Server, workdir: Path) -> Iterator[Server]:
    """A second server on the same data directory whose config trusts 127.0.0.1 as a TLS-terminating proxy."""
    config = workdir / "proxy.toml"
    config.write_text((server.data_dir / "config.toml").read_text() + '\n[est]\ntrusted_proxies = "127.0.0.1"\n')
    proxy = start_server(server.data_dir, workdir, env=child_env(GATEWAY_CONFIG=str(config)))
    try:
        yield proxy
    finally:
        stop_server(proxy)


@pytest.fixture(scope="module")
def store(server: Server) -> Iterator[Storage]:
    opened = open_storage(load_config(server.data_dir, environ={}))
    try:
        yield opened
    finally:
        opened.engine.dispose()


def enroll(
    server: Server, workdir: Path, module_state: Module, cn: str, *, label: str | None = None
) -> ClientCredentials:
    """A certificate for CN=`cn` from simpleenroll with GOOD's password; written as client credentials."""
    key = ec_key()
    answer = post(server, "simpleenroll", csr_body(key, cn), auth=(GOOD, PASSWORD), label=label)
    certificate = certificate_of(answer)
    module_state.expected.add(serial_hex(certificate))
    return write_client_credentials(workdir, cn, certificate, key)


@pytest.fixture(scope="module")
def client_a(server: Server, workdir: Path, module_state: Module) -> ClientCredentials:
    """CN=matrix-a, enrolled over EST with Basic: the valid client certificate of the matrix."""
    return enroll(server, workdir, module_state, "matrix-a")


@pytest.fixture(scope="module")
def foreign(workdir: Path) -> ClientCredentials:
    """A client certificate (CN=matrix-a, like ours) from a self-signed CA the gateway never heard of."""
    return write_client_credentials(workdir, "foreign", *foreign_client_certificate("matrix-a"))


def proxy_headers(cert_file: Path, verify: str) -> dict[str, str]:
    """What nginx sends upstream: $ssl_client_escaped_cert (URL-encoded PEM) and $ssl_client_verify."""
    return {CERT_HEADER: quote(cert_file.read_text(), safe=""), VERIFY_HEADER: verify}


# -- Basic credentials ----------------------------------------------------------------------------------


def test_no_credentials_on_simpleenroll_is_401_with_a_basic_challenge(
    server: Server, store: Storage, workdir: Path
) -> None:
    before = ledger(store)
    run = curl(server, workdir / "curl", "anonymous", "simpleenroll", csr_body(ec_key(), "matrix-anonymous"))
    assert run.answer is not None, run.stderr
    assert_refused(
        store,
        before,
        run.answer,
        status=401,
        operation="simpleenroll",
        message="authentication required",
        server=server,
    )


def test_no_credentials_on_simplereenroll_is_401(server: Server, store: Storage) -> None:
    before = ledger(store)
    answer = post(server, "simplereenroll", csr_body(ec_key(), "matrix-anonymous"))
    assert_refused(
        store, before, answer, status=401, operation="simplereenroll", message="authentication required", server=server
    )


def test_wrong_password_and_unknown_user_are_the_same_401(server: Server, store: Storage, workdir: Path) -> None:
    body = csr_body(ec_key(), "matrix-guess")
    before = ledger(store)
    run = curl(server, workdir / "curl", "wrong-password", "simpleenroll", body, "--user", f"{GOOD}:Not-The-Password")
    assert run.answer is not None, run.stderr
    wrong = assert_refused(
        store,
        before,
        run.answer,
        status=401,
        operation="simpleenroll",
        message="wrong user name or password",
        server=server,
    )
    assert "wrong password" in str(wrong.detail["cause"])

    before = ledger(store)
    unknown = post(server, "simpleenroll", body, auth=("matrix-nobody", PASSWORD))
    event = assert_refused(
        store,
        before,
        unknown,
        status=401,
        operation="simpleenroll",
        message="wrong user name or password",
        server=server,
        private=("matrix-nobody",),
    )
    assert "no EST user" in str(event.detail["cause"])
    assert unknown.body == run.answer.body  # no user enumeration


def test_disabled_user_is_403(server: Server, store: Storage) -> None:
    before = ledger(store)
    answer = post(server, "simpleenroll", csr_body(ec_key(), "matrix-disabled-device"), auth=(DISABLED, PASSWORD))
    assert_refused(store, before, answer, status=403, operation="simpleenroll", message="disabled", server=server)

    # Only a proven password learns the user's state: a wrong one is the plain 401.
    before = ledger(store)
    guess = post(server, "simpleenroll", csr_body(ec_key(), "matrix-disabled-device"), auth=(DISABLED, "Not-It-1"))
    assert_refused(
        store, before, guess, status=401, operation="simpleenroll", message="wrong user name or password", server=server
    )


def test_used_up_user_enrolls_once_then_403(server: Server, store: Storage, module_state: Module) -> None:
    # A refused request spends no use.
    before = ledger(store)
    refused = post(server, "simpleenroll", tampered_csr_body("matrix-once-0"), auth=(ONCE, PASSWORD))
    assert_refused(store, before, refused, status=400, operation="simpleenroll", message="signature", server=server)

    before = ledger(store)
    first = post(server, "simpleenroll", csr_body(ec_key(), "matrix-once-1"), auth=(ONCE, PASSWORD))
    certificate = certificate_of(first)
    module_state.expected.add(serial_hex(certificate))
    assert issued_since(store, before) == {serial_hex(certificate)}
    assert [(e.operation, e.outcome) for e in events_since(store, before)] == [("simpleenroll", "issued")]

    before = ledger(store)
    second = post(server, "simpleenroll", csr_body(ec_key(), "matrix-once-2"), auth=(ONCE, PASSWORD))
    assert_refused(store, before, second, status=403, operation="simpleenroll", message="used up", server=server)


def test_user_bound_to_another_label_is_403_on_the_default_label(
    server: Server, store: Storage, module_state: Module
) -> None:
    before = ledger(store)
    answer = post(server, "simpleenroll", csr_body(ec_key(), "matrix-labelled"), auth=(OTHER, PASSWORD))
    event = assert_refused(
        store,
        before,
        answer,
        status=403,
        operation="simpleenroll",
        message="may not enroll under this profile",
        server=server,
    )
    assert event.profile == "default"

    # Control: under its own label the same credentials enroll.
    own = post(server, "simpleenroll", csr_body(ec_key(), "matrix-labelled"), auth=(OTHER, PASSWORD), label="other")
    certificate = certificate_of(own)
    module_state.expected.add(serial_hex(certificate))
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc <= dt.timedelta(days=31)


# -- client certificates --------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_foreign_client_certificate_is_refused_at_the_handshake(
    server: Server, store: Storage, foreign: ClientCredentials, tls: str
) -> None:
    before = ledger(store)
    context = tls_context(server.ca_pem, client=foreign)
    context.maximum_version = ssl.TLSVersion.TLSv1_2 if tls == "1.2" else ssl.TLSVersion.TLSv1_3
    context.minimum_version = context.maximum_version
    with pytest.raises(ssl.SSLError) as refused:  # TLS 1.2: in the handshake; TLS 1.3: at the first read
        fetch(
            server.https_port,
            est_path("simplereenroll"),
            context=context,
            method="POST",
            body=csr_body(ec_key(), "matrix-a"),
            headers={"Content-Type": "application/pkcs10"},
        )
    assert refused.value.reason == "TLSV1_ALERT_UNKNOWN_CA", refused.value
    assert issued_since(store, before) == set()
    assert events_since(store, before) == []  # no request reached the application


def test_foreign_client_certificate_is_refused_at_the_handshake_by_curl(
    server: Server, store: Storage, foreign: ClientCredentials, workdir: Path
) -> None:
    before = ledger(store)
    cert_file, key_file = foreign
    run = curl(
        server,
        workdir / "curl",
        "foreign",
        "simplereenroll",
        csr_body(ec_key(), "matrix-a"),
        "--cert",
        str(cert_file),
        "--key",
        str(key_file),
    )
    assert run.exit_code in CURL_TLS_FAILURES, run
    assert "unknown ca" in run.stderr, run
    assert issued_since(store, before) == set()
    assert events_since(store, before) == []


def test_foreign_client_certificate_through_a_trusted_proxy_is_403(
    proxy_server: Server, store: Storage, foreign: ClientCredentials
) -> None:
    before = ledger(store)
    answer = post(
        proxy_server,
        "simplereenroll",
        csr_body(ec_key(), "matrix-a"),
        headers=proxy_headers(foreign[0], "SUCCESS"),
        plain_http=True,
    )
    event = assert_refused(
        store,
        before,
        answer,
        status=403,
        operation="simplereenroll",
        message="not issued by this CA",
        server=proxy_server,
    )
    assert "from proxy" in str(event.detail["cause"])

    # A certificate that fails is never traded for a good password.
    before = ledger(store)
    answer = post(
        proxy_server,
        "simplereenroll",
        csr_body(ec_key(), "matrix-a"),
        auth=(GOOD, PASSWORD),
        headers=proxy_headers(foreign[0], "SUCCESS"),
        plain_http=True,
    )
    assert_refused(
        store,
        before,
        answer,
        status=403,
        operation="simplereenroll",
        message="not issued by this CA",
        server=proxy_server,
    )


def test_proxy_that_failed_verification_is_ignored_401(
    proxy_server: Server, store: Storage, client_a: ClientCredentials
) -> None:
    before = ledger(store)
    answer = post(
        proxy_server,
        "simplereenroll",
        csr_body(ec_key(), "matrix-a"),
        headers=proxy_headers(client_a[0], "FAILED:certificate has expired"),
        plain_http=True,
    )
    assert_refused(
        store,
        before,
        answer,
        status=401,
        operation="simplereenroll",
        message="authentication required",
        server=proxy_server,
    )


def test_proxy_header_from_an_untrusted_peer_is_ignored_401(
    server: Server, store: Storage, client_a: ClientCredentials
) -> None:
    """The main server trusts no proxy: a forged header authenticates nobody."""
    before = ledger(store)
    forged = {**proxy_headers(client_a[0], "SUCCESS"), "X-Forwarded-For": "192.0.2.66"}
    answer = post(server, "simplereenroll", csr_body(ec_key(), "matrix-a"), headers=forged)
    event = assert_refused(
        store, before, answer, status=401, operation="simplereenroll", message="authentication required", server=server
    )
    assert event.client_address == "127.0.0.1"  # X-Forwarded-For of an untrusted peer is ignored too


def test_our_client_certificate_through_a_trusted_proxy_renews(
    proxy_server: Server, store: Storage, client_a: ClientCredentials, module_state: Module
) -> None:
    """Control for the proxy refusals: the same path with our certificate and SUCCESS renews."""
    before = ledger(store)
    answer = post(
        proxy_server,
        "simplereenroll",
        csr_body(ec_key(), "matrix-a"),
        headers={**proxy_headers(client_a[0], "SUCCESS"), "X-Forwarded-For": "192.0.2.10"},
        plain_http=True,
    )
    renewed = certificate_of(answer)
    module_state.expected.add(serial_hex(renewed))
    assert renewed.subject == subject("matrix-a")
    assert issued_since(store, before) == {serial_hex(renewed)}
    (event,) = events_since(store, before)
    assert (event.operation, event.outcome, event.challenge_kind) == ("simplereenroll", "issued", "certificate")
    assert event.client_address == "192.0.2.10"  # the trusted proxy's X-Forwarded-For


def test_a_trusted_proxy_that_does_not_say_https_gets_no_est(
    proxy_server: Server, store: Storage, client_a: ClientCredentials
) -> None:
    """Trusting a proxy is believing what it says: a request it says came over plain HTTP is not EST."""
    before = ledger(store)
    for said in ({"X-Forwarded-Proto": "http"}, {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "off"}):
        answer = post(
            proxy_server,
            "simplereenroll",
            csr_body(ec_key(), "matrix-a"),
            headers={**proxy_headers(client_a[0], "SUCCESS"), **said},
            plain_http=True,
        )
        assert answer.status == 404, said
    assert issued_since(store, before) == set()
    assert events_since(store, before) == []
    assert "est.trusted_proxies is deprecated" in proxy_server.stderr_text()  # the old name still works


def test_revoked_client_certificate_is_403(server: Server, store: Storage, workdir: Path, module_state: Module) -> None:
    cert_file, key_file = enroll(server, workdir, module_state, "matrix-revoked")
    serial = serial_hex(x509.load_pem_x509_certificate(cert_file.read_bytes()))
    revoked = gateway_command(
        "cert", "revoke", serial, "--reason", "key_compromise", "--data-dir", str(server.data_dir)
    )
    assert revoked.returncode == 0, revoked.stderr

    before = ledger(store)
    run = curl(
        server,
        workdir / "curl",
        "revoked",
        "simplereenroll",
        csr_body(ec_key(), "matrix-revoked"),
        "--cert",
        str(cert_file),
        "--key",
        str(key_file),
    )
    assert run.answer is not None, run
    event = assert_refused(
        store, before, run.answer, status=403, operation="simplereenroll", message="revoked", server=server
    )
    assert event.device_identity == "matrix-revoked"

    # Not traded for a good password on simpleenroll either.
    before = ledger(store)
    run = curl(
        server,
        workdir / "curl",
        "revoked-with-password",
        "simpleenroll",
        csr_body(ec_key(), "matrix-revoked"),
        "--cert",
        str(cert_file),
        "--key",
        str(key_file),
        "--user",
        f"{GOOD}:{PASSWORD}",
    )
    assert run.answer is not None, run
    assert_refused(store, before, run.answer, status=403, operation="simpleenroll", message="revoked", server=server)


def test_expired_client_certificate_is_403(server: Server, store: Storage, workdir: Path, module_state: Module) -> None:
    """Issued by our CA and recorded, but already expired: the handshake lets it through (no time check
    there), the request gets a clear 403."""
    key = ec_key()
    gateway = open_gateway(load_config(server.data_dir, environ={}))
    try:
        now = utcnow()
        policy = authorize_request(
            gateway.config.profiles["default"], subject("matrix-expired"), [], key.public_key(), now
        )
        policy = dataclasses.replace(
            policy, not_before=now - dt.timedelta(minutes=4), not_after=now - dt.timedelta(minutes=2)
        )
        issued = gateway.authority.issue(policy, protocol="est", actor="test:expired")
    finally:
        gateway.storage.engine.dispose()
    module_state.expected.add(issued.record.serial_hex)
    assert issued.certificate.not_valid_after_utc < utcnow()
    client = write_client_credentials(workdir, "matrix-expired", issued.certificate, key)

    before = ledger(store)
    answer = post(server, "simplereenroll", csr_body(ec_key(), "matrix-expired"), client=client)
    assert_refused(store, before, answer, status=403, operation="simplereenroll", message="expired", server=server)


def test_renewing_another_subject_is_403(server: Server, store: Storage, client_a: ClientCredentials) -> None:
    before = ledger(store)
    answer = post(server, "simplereenroll", csr_body(ec_key(), "matrix-b"), client=client_a)
    event = assert_refused(
        store,
        before,
        answer,
        status=403,
        operation="simplereenroll",
        message="the subject must stay the same",
        server=server,
    )
    assert event.device_identity == "matrix-a"


def test_basic_credentials_alone_cannot_simplereenroll_403(server: Server, store: Storage) -> None:
    before = ledger(store)
    answer = post(server, "simplereenroll", csr_body(ec_key(), "matrix-a"), auth=(GOOD, PASSWORD))
    assert_refused(
        store,
        before,
        answer,
        status=403,
        operation="simplereenroll",
        message="a renewal is authenticated by the certificate it renews",
        server=server,
    )


@pytest.mark.parametrize("operation", ["simpleenroll", "simplereenroll"])
def test_good_certificate_with_a_wrong_password_is_401(
    server: Server, store: Storage, client_a: ClientCredentials, operation: str
) -> None:
    before = ledger(store)
    answer = post(server, operation, csr_body(ec_key(), "matrix-a"), client=client_a, auth=(GOOD, "Not-The-Password"))
    assert_refused(
        store, before, answer, status=401, operation=operation, message="wrong user name or password", server=server
    )


def test_good_certificate_with_a_good_password_enrolls_its_own_subject(
    server: Server, store: Storage, client_a: ClientCredentials, module_state: Module
) -> None:
    before = ledger(store)
    answer = post(server, "simpleenroll", csr_body(ec_key(), "matrix-a"), client=client_a, auth=(GOOD, PASSWORD))
    certificate = certificate_of(answer)
    module_state.expected.add(serial_hex(certificate))
    assert certificate.subject == subject("matrix-a")
    assert issued_since(store, before) == {serial_hex(certificate)}
    (event,) = events_since(store, before)
    assert (event.operation, event.outcome, event.challenge_kind) == ("simpleenroll", "issued", "certificate")
    assert event.detail["principal"] == "CN=matrix-a"


def test_csr_whose_signature_does_not_verify_is_400(server: Server, store: Storage) -> None:
    before = ledger(store)
    answer = post(server, "simpleenroll", tampered_csr_body("matrix-tampered"), auth=(GOOD, PASSWORD))
    assert_refused(store, before, answer, status=400, operation="simpleenroll", message="signature", server=server)


# -- the certificate list, as the operator sees it ------------------------------------------------------


def test_cert_list_shows_only_what_the_matrix_meant_to_issue(server: Server, module_state: Module) -> None:
    """`gateway cert list --format json`: the serials at start plus exactly those of the 200 answers above."""
    assert cli_cert_serials(server.data_dir) == module_state.initial_serials | module_state.expected
