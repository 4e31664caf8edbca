"""Transport trust through the real server (`python -m gateway serve`, both gunicorn listeners).

Headers that claim HTTPS (X-Forwarded-Proto, X-Forwarded-Ssl, Forwarded: proto=https) or a client
address (X-Forwarded-For, Forwarded: for=) on the plain-HTTP port unlock nothing and reach no event
or log while no proxy is trusted; with `listen.trusted_proxies = 127.0.0.1` the same headers from
127.0.0.1 are believed, on every consumer: EST, the admin API, the dashboard, SCEP events and the
access log. One data directory, two servers on it (one trusting nobody, one trusting 127.0.0.1).
Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import load_config
from gateway.runtime import open_storage
from scep.asn1 import Digest, MessageType, PkiStatus
from scep.client_messages import CertRepReply, build_pki_request, parse_cert_rep, self_signed_signer
from scep.envelope import ContentCipher
from shared_ca.storage.enrollment_records import EnrollmentRecord
from shared_ca.storage.repositories import Storage
from tests.support import ec_key, rsa_key, subject
from tests.test_est_auth_matrix import PASSWORD, add_est_user, basic, csr_body, est_path
from tests.test_scep_service import csr_der
from tests.test_serve import (
    Reply,
    Server,
    child_env,
    fetch,
    free_ports,
    gateway_command,
    init_data_dir,
    start_server,
    stop_server,
    tls_context,
)

pytestmark = pytest.mark.slow

USER = "proxy-enroller"
CLAIMS_HTTPS = {
    "x-forwarded-proto": {"X-Forwarded-Proto": "https"},
    "x-forwarded-ssl": {"X-Forwarded-Ssl": "on"},
    "forwarded": {"Forwarded": "proto=https"},
}


@dataclass(frozen=True)
class Setup:
    data_dir: Path
    token: str
    plain: Server  # trusts nobody
    proxied: Server  # listen.trusted_proxies = 127.0.0.1


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("proxies")
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    add_est_user(data_dir, USER)
    made = gateway_command("admin-token", "add", "proxy-admin", "--data-dir", str(data_dir))
    assert made.returncode == 0, made.stderr
    plain = start_server(data_dir, workdir, http_port=http_port)
    try:
        proxied = start_server(data_dir, workdir, env=child_env(GATEWAY_LISTEN_TRUSTED_PROXIES="127.0.0.1"))
        try:
            yield Setup(data_dir, made.stdout.strip(), plain, proxied)
        finally:
            stop_server(proxied)
    finally:
        stop_server(plain)


@pytest.fixture(scope="module")
def store(setup: Setup) -> Iterator[Storage]:
    opened = open_storage(load_config(setup.data_dir, environ={}))
    try:
        yield opened
    finally:
        opened.engine.dispose()


def call(
    server: Server,
    path: str,
    *,
    tls: bool = False,
    method: str = "GET",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One request to the HTTP port (or the HTTPS one, verified against the CA, with `tls`)."""
    port = server.https_port if tls else server.http_port
    context = tls_context(server.ca_pem) if tls else None
    return fetch(port, path, context=context, method=method, body=body, headers=headers)


def est_enroll(server: Server, headers: Mapping[str, str], *, tls: bool = False) -> Reply:
    sent = {"Content-Type": "application/pkcs10", "Authorization": basic(USER, PASSWORD), **headers}
    body = csr_body(ec_key(), f"proxy-{uuid.uuid4().hex[:8]}")
    return call(server, est_path("simpleenroll"), tls=tls, method="POST", body=body, headers=sent)


def admin_challenge(server: Server, token: str, headers: Mapping[str, str], *, tls: bool = False) -> Reply:
    sent = {"Content-Type": "application/json", "Authorization": f"Bearer {token}", **headers}
    body = json.dumps({"device_id": "proxy-device"}).encode()
    return call(server, "/admin/api/scep/challenges", tls=tls, method="POST", body=body, headers=sent)


def dashboard(server: Server, token: str, headers: Mapping[str, str], *, tls: bool = False) -> tuple[int, int]:
    page = call(server, "/admin/migration", tls=tls, headers=headers)
    summary = call(
        server, "/admin/api/migration/summary", tls=tls, headers={"Authorization": f"Bearer {token}", **headers}
    )
    return page.status, summary.status


# -- SCEP over the wire -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScepAnswer:
    reply: CertRepReply
    transaction_id: str
    request_id: str


def scep_enroll(
    server: Server,
    cn: str,
    challenge: str | None,
    headers: Mapping[str, str] | None = None,
    *,
    key: rsa.RSAPrivateKey | None = None,
) -> ScepAnswer:
    """One PKCSReq for CN=`cn` POSTed to /scep on the HTTP port with `headers`; the verified CertRep."""
    key = key or rsa_key()
    ra = x509.load_pem_x509_certificate((server.data_dir / "ra" / "ra.crt").read_bytes())
    signer = self_signed_signer(key, subject(cn))
    transaction_id = uuid.uuid4().hex
    message = build_pki_request(
        MessageType.PKCSReq,
        content_der=csr_der(key, subject(cn), challenge),
        signer_cert=signer,
        signer_key=key,
        recipient_cert=ra,
        transaction_id=transaction_id,
        sender_nonce=os.urandom(16),
        digest=Digest.SHA256,
        content_cipher=ContentCipher.AES256,
    )
    request_id = uuid.uuid4().hex[:16]
    sent = {"Content-Type": "application/x-pki-message", "X-Request-ID": request_id, **(headers or {})}
    answer = call(server, "/scep?operation=PKIOperation", method="POST", body=message, headers=sent)
    assert answer.status == 200, answer.body
    reply = parse_cert_rep(answer.body, ra_cert=ra, signer_key=key, signer_cert=signer)
    assert reply.transaction_id == transaction_id
    return ScepAnswer(reply, transaction_id, request_id)


def scep_event(store: Storage, answer: ScepAnswer) -> EnrollmentRecord:
    (event,) = store.enrollments.enrollment_events(transaction_id=answer.transaction_id)
    return event


# -- nobody trusted -----------------------------------------------------------------------------------


def test_the_credentials_work_over_https(setup: Setup, store: Storage) -> None:
    """Control: the same requests over TLS succeed, so each 404 below is the listener's, not the credentials'."""
    before = store.certificates.count_certificates()
    assert est_enroll(setup.plain, {}, tls=True).status == 200
    assert admin_challenge(setup.plain, setup.token, {}, tls=True).status == 201
    assert dashboard(setup.plain, setup.token, {}, tls=True) == (200, 200)
    assert store.certificates.count_certificates() == before + 1


@pytest.mark.parametrize("claim", list(CLAIMS_HTTPS))
def test_claiming_https_on_the_http_port_unlocks_nothing(setup: Setup, store: Storage, claim: str) -> None:
    headers = CLAIMS_HTTPS[claim]
    before = store.certificates.count_certificates()
    assert est_enroll(setup.plain, headers).status == 404
    assert admin_challenge(setup.plain, setup.token, headers).status == 404
    assert dashboard(setup.plain, setup.token, headers) == (404, 404)
    healthz = json.loads(call(setup.plain, "/healthz", headers=headers).body)
    assert healthz["listener"] == "http"
    assert store.certificates.count_certificates() == before


def test_a_forged_client_address_reaches_no_event_and_no_log(setup: Setup, store: Storage) -> None:
    forged = {"X-Forwarded-For": "192.0.2.66", "Forwarded": "for=192.0.2.67"}
    answer = scep_enroll(setup.plain, "forged-address", "no-such-challenge", forged)
    assert answer.reply.status is PkiStatus.FAILURE
    assert scep_event(store, answer).client_address == "127.0.0.1"
    record = setup.plain.access_record(answer.request_id)
    assert (record["client"], record["peer"]) == ("127.0.0.1", "127.0.0.1")
    assert "192.0.2.66" not in setup.plain.stderr_text() and "192.0.2.67" not in setup.plain.stderr_text()


# -- 127.0.0.1 trusted ----------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", list(CLAIMS_HTTPS))
def test_a_trusted_proxy_is_believed(setup: Setup, store: Storage, claim: str) -> None:
    headers = CLAIMS_HTTPS[claim]
    before = store.certificates.count_certificates()
    assert est_enroll(setup.proxied, headers).status == 200
    assert admin_challenge(setup.proxied, setup.token, headers).status == 201
    assert dashboard(setup.proxied, setup.token, headers) == (200, 200)
    assert store.certificates.count_certificates() == before + 1


def test_a_trusted_proxy_that_says_nothing_is_plain_http(setup: Setup, store: Storage) -> None:
    before = store.certificates.count_certificates()
    for said in ({}, {"X-Forwarded-Proto": "http"}, {"Forwarded": "proto=http"}):
        assert est_enroll(setup.proxied, said).status == 404, said
        assert admin_challenge(setup.proxied, setup.token, said).status == 404, said
        assert dashboard(setup.proxied, setup.token, said) == (404, 404), said
    assert store.certificates.count_certificates() == before


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        pytest.param({"X-Forwarded-For": "203.0.113.5, 192.0.2.10"}, "192.0.2.10", id="x-forwarded-for"),
        pytest.param({"Forwarded": 'for="[2001:db8::10]:5000"'}, "2001:db8::10", id="forwarded-ipv6"),
    ],
)
def test_the_forwarded_client_address_reaches_the_event_and_the_access_log(
    setup: Setup, store: Storage, headers: dict[str, str], client: str
) -> None:
    answer = scep_enroll(setup.proxied, f"proxied-{client}", "no-such-challenge", headers)
    assert answer.reply.status is PkiStatus.FAILURE
    assert scep_event(store, answer).client_address == client
    record = setup.proxied.access_record(answer.request_id)
    assert (record["client"], record["peer"], record["listener"]) == (client, "127.0.0.1", "http")
