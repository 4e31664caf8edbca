"""Scale-out: two `gateway serve` nodes on one database, as two hosts behind a load balancer would be.

4,000 enrollments at concurrency 16, half SCEP and half EST, spread over both nodes; retransmissions
of SCEP transactions sent to the *other* node; 64 concurrent attempts to spend one one-time
challenge. It passes when no serial is issued twice, every issued certificate is recorded with its
enrollment event, every retransmission gets the very certificate of the first answer, and exactly
one attempt on the one-time challenge succeeds.

Runs on every backend the suite runs on: SQLite (both nodes on one host share the file; writers
queue on its lock) and PostgreSQL (the scale-out store; CI's PostgreSQL pass). Requests are built
before the load starts; only the exchanges are concurrent.
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from gateway.config import load_config
from gateway.runtime import open_storage
from scep.asn1 import Digest, MessageType, PkiStatus
from scep.client import make_csr as scep_csr
from scep.client_messages import build_pki_request, parse_cert_rep, self_signed_signer
from scep.envelope import ContentCipher
from shared_ca.storage.schema import certificates, enrollment_events
from tests.test_serve import Server, child_env, free_ports, gateway_command, init_data_dir, start_server, stop_server

pytestmark = pytest.mark.slow

TOTAL = 4000
CONCURRENCY = 16
RETRANSMISSIONS = 200
CHALLENGE_ATTEMPTS = 64
SCEP_KEYS = 32
STATIC = "scale-out-static"
USER, PASSWORD = "fleet", "scale-out-password"


@dataclass(frozen=True)
class ScepJob:
    message: bytes
    key: rsa.RSAPrivateKey
    signer: x509.Certificate
    transaction_id: str


@dataclass
class Node:
    server: Server
    ssl_context: ssl.SSLContext
    local: threading.local
    opened: list[http.client.HTTPConnection]

    def close(self) -> None:
        for conn in self.opened:
            conn.close()

    def connection(self, https: bool) -> http.client.HTTPConnection:
        name = "https" if https else "http"
        conn: http.client.HTTPConnection | None = getattr(self.local, name, None)
        if conn is None:
            if https:
                conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.server.https_port, context=self.ssl_context, timeout=60
                )
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=60)
            setattr(self.local, name, conn)
            self.opened.append(conn)  # list.append is atomic: threads may add at once
        return conn

    def post(self, https: bool, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (1, 2):
            conn = self.connection(https)
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                setattr(self.local, "https" if https else "http", None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture
def nodes(tmp_path: Path, database_url: str) -> Iterator[list[Node]]:
    """Two `gateway serve` processes on one data directory (shared keys) and one database."""
    data_dir = tmp_path / "data"
    (http_port,) = free_ports(1)
    extra = ["--scep-challenge", STATIC]
    if not database_url.startswith("sqlite"):
        extra += ["--database-url", database_url]
    init_data_dir(data_dir, http_port, key_type="rsa2048", extra=extra)
    added = subprocess.run(
        [sys.executable, "-m", "gateway", "est-user", "add", USER, "--password-stdin", "--data-dir", str(data_dir)],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    env = child_env(GATEWAY_LISTEN_WORKERS="2")
    servers: list[Server] = []
    made: list[Node] = []
    try:
        servers.append(start_server(data_dir, tmp_path, env=env, http_port=http_port))
        servers.append(start_server(data_dir, tmp_path, env=env))
        context = ssl.create_default_context(cafile=str(data_dir / "ca.pem"))
        made = [Node(server, context, threading.local(), []) for server in servers]
        yield made
    finally:
        for node in made:
            node.close()
        for server in servers:
            stop_server(server)


def ra_certificate(data_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data_dir / "ra" / "ra.crt").read_bytes())


def scep_job(index: int, key: rsa.RSAPrivateKey, ra: x509.Certificate, challenge: str, cn: str) -> ScepJob:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = scep_csr(key, name, challenge=challenge)
    signer = self_signed_signer(key, name)
    transaction_id = f"scale-{index}-{os.urandom(4).hex()}"
    message = build_pki_request(
        MessageType.PKCSReq,
        content_der=csr.public_bytes(Encoding.DER),
        signer_cert=signer,
        signer_key=key,
        recipient_cert=ra,
        transaction_id=transaction_id,
        sender_nonce=os.urandom(16),
        digest=Digest.SHA256,
        content_cipher=ContentCipher.AES128,
    )
    return ScepJob(message, key, signer, transaction_id)


def send_scep(node: Node, job: ScepJob, ra: x509.Certificate) -> tuple[PkiStatus, x509.Certificate | None]:
    status, body = node.post(
        False, "/scep?operation=PKIOperation", job.message, {"Content-Type": "application/x-pki-message"}
    )
    assert status == 200, body[:200]
    reply = parse_cert_rep(body, ra_cert=ra, signer_key=job.key, signer_cert=job.signer)
    return reply.status, (reply.certificates[0] if reply.certificates else None)


def send_est(node: Node, body: bytes) -> x509.Certificate:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Content-Type": "application/pkcs10", "Authorization": f"Basic {token}"}
    status, reply = node.post(True, "/.well-known/est/simpleenroll", body, headers)
    assert status == 200, reply[:200]
    (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(reply))
    return cert


def run_all(tasks: list[Callable[[], object]]) -> None:
    """Run every task on CONCURRENCY threads; the first failure is raised."""
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        for future in [pool.submit(task) for task in tasks]:
            future.result()


def test_two_nodes_share_one_database(nodes: list[Node], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ra = ra_certificate(data_dir)
    scep_keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(SCEP_KEYS)]
    est_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(16)]
    half = TOTAL // 2
    scep_jobs = [scep_job(i, scep_keys[i % SCEP_KEYS], ra, STATIC, f"scep-{i}") for i in range(half)]
    est_bodies = [
        base64.b64encode(
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"est-{i}")]))
            .sign(est_keys[i % len(est_keys)], hashes.SHA256())
            .public_bytes(Encoding.DER)
        )
        for i in range(half)
    ]
    one_time = gateway_command("challenge", "add", "--device", "contested", "--data-dir", str(data_dir))
    assert one_time.returncode == 0, one_time.stderr
    secret = one_time.stdout.strip()
    contested = [
        scep_job(10_000 + i, scep_keys[i % SCEP_KEYS], ra, secret, "contested") for i in range(CHALLENGE_ATTEMPTS)
    ]

    scep_issued: dict[int, x509.Certificate] = {}
    est_issued: dict[int, x509.Certificate] = {}

    def enroll_scep(i: int) -> None:
        status, cert = send_scep(nodes[i % 2], scep_jobs[i], ra)
        assert status is PkiStatus.SUCCESS and cert is not None
        scep_issued[i] = cert

    def enroll_est(i: int) -> None:
        est_issued[i] = send_est(nodes[(i + 1) % 2], est_bodies[i])

    tasks: list[Callable[[], object]] = []
    for i in range(half):  # interleaved, spread over both nodes
        tasks += [partial(enroll_scep, i), partial(enroll_est, i)]
    run_all(tasks)
    assert len(scep_issued) == half and len(est_issued) == half

    # Retransmissions of answered SCEP transactions, each to the node that did not answer it first,
    # together with the contest for the one-time challenge.
    again = list(range(0, half, half // RETRANSMISSIONS))[:RETRANSMISSIONS]
    repeated: dict[int, x509.Certificate | None] = {}
    contest: list[PkiStatus] = []

    def retransmit(i: int) -> None:
        status, cert = send_scep(nodes[(i + 1) % 2], scep_jobs[i], ra)
        assert status is PkiStatus.SUCCESS
        repeated[i] = cert

    def compete(j: int) -> None:
        contest.append(send_scep(nodes[j % 2], contested[j], ra)[0])

    tasks = [partial(retransmit, i) for i in again]
    tasks += [partial(compete, j) for j in range(CHALLENGE_ATTEMPTS)]
    run_all(tasks)
    for i in again:
        cert = repeated[i]
        assert cert is not None and cert.serial_number == scep_issued[i].serial_number, f"retransmission {i}"
    assert contest.count(PkiStatus.SUCCESS) == 1, f"{contest.count(PkiStatus.SUCCESS)} attempts spent the challenge"
    assert contest.count(PkiStatus.FAILURE) == CHALLENGE_ATTEMPTS - 1

    store = open_storage(load_config(data_dir, environ={}))
    try:
        with store.engine.connect() as conn:
            c, e = certificates.c, enrollment_events.c
            issued = select(c.id).where(c.protocol.in_(("scep", "est")))
            count = conn.execute(select(func.count()).select_from(issued.subquery())).scalar_one()
            serials = conn.execute(
                select(func.count(func.distinct(c.serial_hex))).where(c.protocol.in_(("scep", "est")))
            ).scalar_one()
            with_event = conn.execute(
                select(func.count(func.distinct(e.certificate_id))).where(
                    e.certificate_id.in_(issued), e.outcome == "issued"
                )
            ).scalar_one()
    finally:
        store.engine.dispose()
    assert count == TOTAL + 1, "one certificate per enrollment, plus the one-time challenge's winner"
    assert serials == count, "a serial was issued twice"
    assert with_event == count, "an issued certificate has no enrollment event"
    client_serials = {cert.serial_number for cert in [*scep_issued.values(), *est_issued.values()]}
    assert len(client_serials) == TOTAL
