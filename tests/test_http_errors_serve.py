"""EST's 409, 413 and 503 through the real server (`python -m gateway serve`, gunicorn, TLS), each
refusal checked against the certificates table: nothing issued.

- 413: a body over 64 KiB, refused before it is read; a body of exactly 64 KiB is served.
- 409: the database reports a conflict the request cannot get past (every serial it draws is taken;
  the queued twin of a request that awaits approval is gone when looked for). The conflict is made
  by a trigger in the server's own SQLite database, raising the very error SQLite raises for the
  unique constraint; dropping the trigger restores the database, and the same request succeeds.
- 503: the database cannot be written (a volume gone read-only): a second server on the same data
  directory opens the database read-only. EST answers 503 with Retry-After, SCEP answers 503
  instead of a signed FAILURE (which a SCEP client would take as final); the read-write server
  then serves the very same requests.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from sqlalchemy import Engine

from est.wire import MAX_REQUEST_BODY
from scep.asn1 import Digest, MessageType, PkiStatus
from scep.client import make_csr as scep_csr
from scep.client_messages import build_pki_request, parse_cert_rep, self_signed_signer, transaction_id_for
from scep.envelope import ContentCipher
from shared_ca.storage.db import create_store_engine, sqlite_url
from tests.support import ec_key, issued_count, rsa_key
from tests.test_est_auth_matrix import PASSWORD, Answer, add_est_user, certificate_of, csr_body, post
from tests.test_serve import (
    Server,
    child_env,
    fetch,
    free_ports,
    init_data_dir,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow

USER = "errors-user"  # the default label
MANUAL_USER = "errors-manual-user"  # the label `manual`, whose requests await approval
MANUAL_PROFILE = '\n[profiles.manual]\napproval = "manual"\nest_retry_after_seconds = 5\n'
SERIAL_TAKEN = "UNIQUE constraint failed: certificates.issuer_id, certificates.serial_hex"
QUEUED_TWIN = "UNIQUE constraint failed: approval_requests.protocol, approval_requests.request_key"
SCEP_CHALLENGE = "s3cret"


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the module's data directory and server logs go."""
    return tmp_path_factory.mktemp("http-errors")


@pytest.fixture(scope="module")
def data_dir(workdir: Path) -> Path:
    """An initialised data directory with the labels `manual` and `scep` and two EST users."""
    directory = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(directory, http_port)
    with (directory / "config.toml").open("a", encoding="utf-8") as config:
        config.write(MANUAL_PROFILE)
        config.write(f'\n[profiles.scep]\nscep_challenge = "{SCEP_CHALLENGE}"\n')
    add_est_user(directory, USER)
    add_est_user(directory, MANUAL_USER, "--label", "manual")
    return directory


@pytest.fixture(scope="module")
def server(data_dir: Path, workdir: Path) -> Iterator[Server]:
    """The read-write server of the module."""
    running = start_server(data_dir, workdir)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def engine(data_dir: Path) -> Iterator[Engine]:
    """The test's own connection to the server's database, to count certificates."""
    opened = create_store_engine(sqlite_url(data_dir / "gateway.db"))
    try:
        yield opened
    finally:
        opened.dispose()


def enroll(server: Server, body: bytes, *, label: str | None = None) -> Answer:
    """simpleenroll with the password of the label's user."""
    user = MANUAL_USER if label == "manual" else USER
    return post(server, "simpleenroll", body, auth=(user, PASSWORD), label=label)


def assert_plain(answer: Answer, status: int) -> None:
    """The status, as a text/plain answer that names no internals."""
    assert answer.status == status, answer
    assert answer.headers.get("content-type", "").startswith("text/plain"), answer.headers
    for leak in ("Traceback", "sqlite", "UNIQUE", "readonly", ".py"):
        assert leak not in answer.text, answer.text


# -- 413 ------------------------------------------------------------------------------------------------


def padded(body: bytes, size: int) -> bytes:
    """`body` followed by line breaks up to `size` bytes: still a readable base64 request."""
    return body + b"\n" * (size - len(body))


def test_413_for_a_body_over_64_kib(server: Server, engine: Engine) -> None:
    before = issued_count(engine)
    answer = enroll(server, padded(csr_body(ec_key(), "too-big"), MAX_REQUEST_BODY + 1))
    assert_plain(answer, 413)
    assert issued_count(engine) == before
    served = enroll(server, padded(csr_body(ec_key(), "just-fits"), MAX_REQUEST_BODY))
    certificate_of(served)
    assert issued_count(engine) == before + 1


# -- 409 ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def conflict_on(database: Path, table: str, message: str) -> Iterator[None]:
    """While inside, every insert into `table` fails as SQLite fails it on a unique constraint."""
    name = f"test_conflict_{table}"
    quoted = message.replace("'", "''")
    with contextlib.closing(sqlite3.connect(database, isolation_level=None, timeout=30)) as conn:
        conn.execute(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, '{quoted}'); END")
        try:
            yield
        finally:
            conn.execute(f"DROP TRIGGER {name}")


def test_409_when_every_serial_drawn_is_taken(server: Server, engine: Engine, data_dir: Path) -> None:
    body = csr_body(ec_key(), "serial-conflict")
    before = issued_count(engine)
    with conflict_on(data_dir / "gateway.db", "certificates", SERIAL_TAKEN):
        answer = enroll(server, body)
    assert_plain(answer, 409)
    assert issued_count(engine) == before
    certificate_of(enroll(server, body))  # the database is itself again: the same request is served
    assert issued_count(engine) == before + 1


def test_409_when_the_queued_twin_of_a_request_is_gone(server: Server, engine: Engine, data_dir: Path) -> None:
    body = csr_body(ec_key(), "queue-conflict")
    before = issued_count(engine)
    with conflict_on(data_dir / "gateway.db", "approval_requests", QUEUED_TWIN):
        answer = enroll(server, body, label="manual")
    assert_plain(answer, 409)
    assert issued_count(engine) == before
    queued = enroll(server, body, label="manual")  # restored: the request is queued as usual
    assert queued.status == 202, queued
    assert queued.headers.get("retry-after") == "5"
    assert issued_count(engine) == before


# -- 503 ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def read_only_server(server: Server, data_dir: Path, workdir: Path) -> Iterator[Server]:
    """A second server on the same data directory whose database opens read-only (a volume gone read-only)."""
    database = data_dir / "gateway.db"
    url = f"sqlite:///file:{database}?mode=ro&uri=true"
    running = start_server(data_dir, workdir, env=child_env(GATEWAY_DATABASE_URL=url))
    try:
        yield running
    finally:
        stop_server(running)


def test_503_with_retry_after_when_the_database_cannot_be_written(
    server: Server, read_only_server: Server, engine: Engine
) -> None:
    body = csr_body(ec_key(), "read-only-volume")
    before = issued_count(engine)
    answer = enroll(read_only_server, body)
    assert_plain(answer, 503)
    assert answer.headers.get("retry-after", "").isdigit(), answer.headers
    assert issued_count(engine) == before
    certificate_of(enroll(server, body))  # where the database can be written, the same request is served
    assert issued_count(engine) == before + 1


def scep_ra(server: Server) -> x509.Certificate:
    """The SCEP RA certificate (GetCACert)."""
    reply = fetch(server.http_port, "/scep/scep?operation=GetCACert")
    assert reply.status == 200, reply
    with warnings.catch_warnings():  # RA first, then CA: not DER-sorted, as clients expect
        warnings.filterwarnings("ignore", message="PKCS#7 certificates could not be parsed as DER")
        return pkcs7.load_der_pkcs7_certificates(reply.body)[0]


def scep_request(ra: x509.Certificate, key: rsa.RSAPrivateKey, cn: str) -> tuple[bytes, x509.Certificate]:
    """A PKCSReq for CN=`cn` with the profile's challenge, and its self-signed signer certificate."""
    csr = scep_csr(key, x509.Name.from_rfc4514_string(f"CN={cn}"), challenge=SCEP_CHALLENGE)
    signer = self_signed_signer(key, csr.subject)
    der = build_pki_request(
        MessageType.PKCSReq,
        content_der=csr.public_bytes(Encoding.DER),
        signer_cert=signer,
        signer_key=key,
        recipient_cert=ra,
        transaction_id=transaction_id_for(key.public_key()),
        sender_nonce=os.urandom(16),
        digest=Digest.SHA256,
        content_cipher=ContentCipher.AES256,
    )
    return der, signer


def test_scep_answers_503_not_a_failure_when_the_database_cannot_be_written(
    server: Server, read_only_server: Server, engine: Engine
) -> None:
    ra = scep_ra(server)
    key = rsa_key()
    message, signer = scep_request(ra, key, "scep-read-only")
    headers = {"Content-Type": "application/x-pki-message"}
    before = issued_count(engine)
    path = "/scep/scep?operation=PKIOperation"
    down = fetch(read_only_server.http_port, path, method="POST", body=message, headers=headers)
    assert down.status == 503, down
    assert issued_count(engine) == before
    up = fetch(server.http_port, path, method="POST", body=message, headers=headers)
    assert up.status == 200, up
    reply = parse_cert_rep(up.body, ra_cert=ra, signer_key=key, signer_cert=signer)
    assert reply.status is PkiStatus.SUCCESS, (reply.fail_info, reply.fail_info_text)
    assert issued_count(engine) == before + 1
