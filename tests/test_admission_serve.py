"""Overload answered with deferral, through `gateway serve` (issue 12): one slot per worker and no queue
wait, so concurrent clients find it busy; they poll and retry as real ones do, and every one ends with
its certificate, issued once. bench/storm does the same at scale and prints the numbers.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import os
import ssl
import time
import uuid
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import NameOID

from est.client_messages import build_csr
from scep.asn1 import Digest, MessageType, PkiStatus
from scep.client import ScepHttpClient, make_csr
from scep.client_messages import build_pki_request, issuer_and_subject_der, parse_cert_rep, self_signed_signer
from scep.envelope import ContentCipher
from shared_ca.storage.db import create_store_engine
from tests.support import issued_count
from tests.test_est_auth_matrix import PASSWORD, add_est_user
from tests.test_serve import Server, child_env, free_ports, init_data_dir, start_server, stop_server

pytestmark = pytest.mark.slow

CHALLENGE = "admission-serve"
USER = "storm"
CLIENTS = 16  # of each protocol, all at once
GIVE_UP = 120.0  # seconds a client keeps polling or retrying (a bound, never asserted as a time)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("admission")
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port, child_env(), key_type="rsa2048", extra=("--scep-challenge", CHALLENGE))
    add_est_user(data_dir, USER)
    env = child_env(
        GATEWAY_ADMISSION_MAX_IN_FLIGHT="1",
        GATEWAY_ADMISSION_QUEUE_WAIT_MS="0",
        GATEWAY_ADMISSION_RETRY_AFTER_SECONDS="1",
    )
    running = start_server(data_dir, workdir, env=env, http_port=http_port, workers=1)
    try:
        yield running
    finally:
        stop_server(running)


def scep_device(server: Server, ra: x509.Certificate, key: rsa.RSAPrivateKey, seen: list[str]) -> x509.Certificate:
    """One SCEP device: PKCSReq, then CertPoll on PENDING (and again after a 503) until SUCCESS."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"scep-{uuid.uuid4().hex[:10]}")])
    signer = self_signed_signer(key, name)
    transaction = uuid.uuid4().hex
    content = make_csr(key, name, challenge=CHALLENGE).public_bytes(Encoding.DER)
    message_type = MessageType.PKCSReq
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        body = build_pki_request(
            message_type, content_der=content, signer_cert=signer, signer_key=key, recipient_cert=ra,
            transaction_id=transaction, sender_nonce=os.urandom(16), digest=Digest.SHA256,
            content_cipher=ContentCipher.AES256,
        )  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        try:
            conn.request("POST", "/scep?operation=PKIOperation", body=body)
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        seen.append(f"scep {reply.status}")
        if reply.status == 503:
            assert reply.getheader("Retry-After"), "a 503 without Retry-After"
            time.sleep(float(reply.getheader("Retry-After") or 1))
            continue
        assert reply.status == 200, (reply.status, data[:200])
        answer = parse_cert_rep(data, ra_cert=ra, signer_key=key, signer_cert=signer)
        seen.append(f"scep {answer.status.name}")
        if answer.status is PkiStatus.SUCCESS:
            (certificate,) = answer.certificates
            return certificate
        assert answer.status is PkiStatus.PENDING, (answer.fail_info, answer.fail_info_text)
        message_type = MessageType.CertPoll  # RFC 8894 §3.3.3: poll with the same transaction
        content = issuer_and_subject_der(ra_issuer(ra), name)
        time.sleep(0.5)
    raise AssertionError("no certificate in time")


def ra_issuer(ra: x509.Certificate) -> x509.Name:
    return ra.issuer  # the RA is issued by the CA: its issuer is the CA's subject


def est_device(server: Server, seen: list[str]) -> x509.Certificate:
    """One EST device: simpleenroll, sent again (the same CSR) after each 202 or 503, as RFC 7030 says."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"est-{uuid.uuid4().hex[:10]}")])
    body = base64.b64encode(build_csr(key, name).public_bytes(Encoding.DER))
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/pkcs10"}
    context = ssl.create_default_context(cafile=str(server.ca_pem))
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        conn = http.client.HTTPSConnection("127.0.0.1", server.https_port, timeout=30, context=context)
        try:
            conn.request("POST", "/.well-known/est/simpleenroll", body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        seen.append(f"est {reply.status}")
        if reply.status in (202, 503):
            assert reply.getheader("Retry-After"), f"a {reply.status} without Retry-After"
            time.sleep(float(reply.getheader("Retry-After") or 1))
            continue
        assert reply.status == 200, (reply.status, data[:200])
        (certificate,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(data))
        return certificate
    raise AssertionError("no certificate in time")


def test_every_client_of_a_burst_gets_its_certificate_once(server: Server) -> None:
    engine = create_store_engine(f"sqlite:///{server.data_dir / 'gateway.db'}")
    ra, _chain = ScepHttpClient(f"http://127.0.0.1:{server.http_port}/scep", timeout=10).get_ca_certs()
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(4)]
    seen: list[str] = []
    try:
        before = issued_count(engine)
        with concurrent.futures.ThreadPoolExecutor(2 * CLIENTS) as pool:
            scep = [pool.submit(scep_device, server, ra, keys[i % len(keys)], seen) for i in range(CLIENTS)]
            est = [pool.submit(est_device, server, seen) for _ in range(CLIENTS)]
            certificates = [future.result() for future in scep + est]
        assert len({c.serial_number for c in certificates}) == 2 * CLIENTS
        assert issued_count(engine) == before + 2 * CLIENTS  # each once: nothing issued twice, nothing lost
        outcomes = set(seen)
        print(sorted((o, seen.count(o)) for o in outcomes))
        assert outcomes <= {"scep 200", "scep 503", "scep SUCCESS", "scep PENDING", "est 200", "est 202", "est 503"}
        # The burst really met a busy worker (32 clients, one slot, no queue wait).
        assert "deferred at capacity" in server.stderr_text() or "est 202" in outcomes
    finally:
        engine.dispose()
