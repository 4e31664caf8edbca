"""kill -9 under load (issue 12, point 6): `gateway serve` as a real process, SCEP and EST clients
enrolling concurrently, and a gunicorn worker, or an arbiter (the per-listener master the supervisor
starts again with back-off), killed with SIGKILL in the middle of it.

It passes when the node serves again by itself and the store is consistent: every issued certificate
is complete (its DER parses, its serial and fingerprint are those of its row) and has its enrollment
event; no serial is stored twice; every SCEP transaction has one certificate, the one its client
received every time it asked (a retransmission of an answered transaction gets that very certificate);
every certificate a client received is in the store. Clients behave as real ones do: a SCEP client
whose connection broke, or that got 503, sends its transaction again (and polls with CertPoll once it
was told PENDING); an EST client sends its request again (RFC 7030 §4.2.3), so a response lost in the
kill may leave an EST certificate nobody received, which is allowed; a SCEP one is not.

The deferred-issuer scenario runs with one admission slot per worker and no queue wait, so SCEP
enrollments are deferred (PENDING) and issued by each worker's background issuer; a worker is killed
while deferred requests wait, and each must be issued exactly once and delivered by CertPoll. A worker
killed between claiming a deferred request and issuing it leaves the claim to lapse
(shared_ca.approval.DEFERRED_LEASE, 2 minutes): the clients' bound allows for it, so that rare run is
slow, not failed.

Runs on every backend of the suite (tests/conftest.py `database_url`): SQLite in the data directory
`gateway init` makes, and PostgreSQL in CI's PostgreSQL pass (`-m postgres`).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import http.client
import os
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection, Engine, delete, select

from gateway.config import load_config
from scep.asn1 import Digest, MessageType, PkiStatus
from scep.client import make_csr as scep_csr
from scep.client_messages import (
    CertRepReply,
    build_pki_request,
    issuer_and_subject_der,
    parse_cert_rep,
    self_signed_signer,
)
from scep.envelope import ContentCipher
from shared_ca.approval import DEFERRED_LEASE
from shared_ca.authority import fingerprint
from shared_ca.serials import serial_hex
from shared_ca.storage.db import WRITE, create_store_engine
from shared_ca.storage.schema import (
    approval_requests,
    certificates,
    enrollment_events,
    scep_transactions,
)
from tests.support import ec_key, subject
from tests.test_est_auth_matrix import PASSWORD, add_est_user, certificate_of, csr_body, post
from tests.test_serve import (
    ProcessId,
    Server,
    child_env,
    descendants,
    fetch,
    free_ports,
    init_data_dir,
    listener_of,
    start_server,
    still_running,
    stop_server,
)
from tests.test_stays_up_serve import EVENTUALLY, answers, eventually

pytestmark = pytest.mark.slow

CHALLENGE = "kill9-challenge"
USER = "kill9"
LISTENERS = ("http", "https")
WORKERS = 2  # per listener: a killed worker leaves the other one serving
CLIENTS = 6  # threads, each enrolling device after device, SCEP and EST in turn
SCEP_KEYS = 3  # RSA keys shared by the SCEP devices (a transaction is keyed on signer key and transactionID)
WARM_UP = 2 * CLIENTS  # enrollments done before the kill: the load is running
BURST = 8  # SCEP enrollments sent at once to a node with one slot per worker: some are deferred
AFTER = 2 * CLIENTS  # enrollments begun after the node recovered, and done
GIVE_UP = 90.0  # seconds a device keeps retrying (a bound, never asserted as a time)
RETRY_STATUSES = (202, 429, 502, 503)  # answered with Retry-After: the client sends its request again
SCEP_PATH = "/scep?operation=PKIOperation"


# -- the node ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(tmp_path: Path, database_url: str, **env: str) -> Iterator[Server]:
    """`gateway serve` with WORKERS workers per listener on a fresh data directory (its SQLite database,
    or the test's PostgreSQL schema), with the static SCEP challenge and an EST user."""
    data_dir = tmp_path / "data"
    (http_port,) = free_ports(1)
    extra = ["--scep-challenge", CHALLENGE]
    if not database_url.startswith("sqlite"):
        extra += ["--database-url", database_url]
    init_data_dir(data_dir, http_port, extra=extra)
    add_est_user(data_dir, USER)
    node = start_server(data_dir, tmp_path, env=child_env(**env), http_port=http_port, workers=WORKERS)
    try:
        yield node
    finally:
        stop_server(node)


def store_engine(node: Server) -> Engine:
    return create_store_engine(load_config(node.data_dir, environ={}).database_url)


@dataclass(frozen=True)
class Listener:
    arbiter: ProcessId
    workers: list[ProcessId]


def listeners(node: Server) -> dict[str, Listener]:
    """Each listener's live arbiter and its workers."""
    family = descendants(node.process.pid)
    found: dict[str, Listener] = {}
    for process in family:
        name = listener_of(process.cmdline)
        if process.parent == node.process.pid and name is not None and still_running(process):
            workers = [p for p in family if p.parent == process.pid and still_running(p)]
            found[name] = Listener(process, workers)
    return found


def at_full_strength(node: Server, gone: list[ProcessId]) -> bool:
    """Both listeners have an arbiter and all their workers, and none of `gone` still runs."""
    found = listeners(node)
    if set(found) != set(LISTENERS) or any(len(found[name].workers) != WORKERS for name in LISTENERS):
        return False
    return not any(still_running(process) for process in gone)


def kill(node: Server, victim: str) -> list[ProcessId]:
    """SIGKILL to one worker of each listener, or to each listener's arbiter; what must be gone after:
    the victims, and for an arbiter its orphaned workers too (they see their parent change and exit)."""
    found = listeners(node)
    assert at_full_strength(node, []), found
    if victim == "worker":
        victims = [found[name].workers[0] for name in LISTENERS]
        gone = victims
    else:
        victims = [found[name].arbiter for name in LISTENERS]
        gone = victims + [worker for name in LISTENERS for worker in found[name].workers]
    for process in victims:
        os.kill(process.pid, signal.SIGKILL)
    return gone


def kill_workers(node: Server, listener: str) -> list[ProcessId]:
    """SIGKILL to every worker of one listener (whichever holds a request); the killed."""
    workers = listeners(node)[listener].workers
    for process in workers:
        os.kill(process.pid, signal.SIGKILL)
    return workers


# -- the clients --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScepDevice:
    """One SCEP device and its one transaction (sent again, with a new nonce, until it is answered)."""

    transaction_id: str
    name: x509.Name
    key: rsa.RSAPrivateKey
    signer: x509.Certificate
    csr_der: bytes


@dataclass
class Fleet:
    """The load: CLIENTS threads enrolling until `stop`, and everything they were answered."""

    node: Server
    give_up: float = GIVE_UP
    stop: threading.Event = field(default_factory=threading.Event)
    phase: int = 0  # 1 once the node recovered from the kill: enrollments begun then count as "after"
    lock: threading.Lock = field(default_factory=threading.Lock)
    devices: int = 0
    scep: dict[str, ScepDevice] = field(default_factory=dict)
    answers: dict[str, list[int]] = field(default_factory=dict)  # transactionID: serial of every SUCCESS
    pending: set[str] = field(default_factory=set)  # transactions answered PENDING at least once
    polled: dict[str, int] = field(default_factory=dict)  # transactionID: serial delivered by CertPoll
    received: dict[int, bytes] = field(default_factory=dict)  # serial: DER of each certificate received
    est_sent: int = 0  # EST requests sent (each may issue at most one certificate)
    est_received: int = 0
    completed: list[int] = field(default_factory=list)  # the phase each finished enrollment began in
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    ra: x509.Certificate = field(init=False)
    keys: list[rsa.RSAPrivateKey] = field(init=False)

    def __post_init__(self) -> None:
        self.ra = x509.load_pem_x509_certificate((self.node.data_dir / "ra" / "ra.crt").read_bytes())
        self.keys = [rsa.generate_private_key(65537, 2048) for _ in range(SCEP_KEYS)]

    def client(self, number: int) -> None:
        """One client thread: SCEP and EST enrollments in turn, each to the end, until told to stop."""
        turn = number
        while not self.stop.is_set():
            (self.enroll_scep if turn % 2 == 0 else self.enroll_est)()
            turn += 1

    def done(self, phase: int, futures: list[Future[None]]) -> int:
        """Enrollments begun in `phase` and finished; a client thread's failure is raised here."""
        for future in futures:
            if future.done():
                future.result()
        with self.lock:
            return self.completed.count(phase)

    def _next_device(self) -> int:
        with self.lock:
            self.devices += 1
            return self.devices

    def _note(self, what: str) -> None:
        with self.lock:
            self.errors[what] += 1

    def _received(self, phase: int, certificate: x509.Certificate) -> None:
        with self.lock:
            self.received[certificate.serial_number] = certificate.public_bytes(Encoding.DER)
            self.completed.append(phase)

    # -- SCEP --

    def device(self, cn: str, challenge: str = CHALLENGE) -> ScepDevice:
        """A new SCEP device (a key of the fleet's) and its transaction, asking with `challenge`."""
        key, name = self.keys[len(self.scep) % SCEP_KEYS], subject(cn)
        csr_der = scep_csr(key, name, challenge=challenge).public_bytes(Encoding.DER)
        return ScepDevice(uuid.uuid4().hex, name, key, self_signed_signer(key, name), csr_der)

    def enroll_scep(self) -> x509.Certificate:
        phase, number = self.phase, self._next_device()
        device = self.device(f"kill9-scep-{number}")
        with self.lock:
            self.scep[device.transaction_id] = device
            self.answers[device.transaction_id] = []
        certificate = self.obtain(device)
        self._received(phase, certificate)
        return certificate

    def obtain(self, device: ScepDevice) -> x509.Certificate:
        """PKCSReq, sent again after a broken connection or a 503; CertPoll once PENDING (RFC 8894 §3.3.3)."""
        message_type, content = MessageType.PKCSReq, device.csr_der
        deadline = time.monotonic() + self.give_up
        while time.monotonic() < deadline:
            reply = self.pki_operation(device, message_type, content)
            if reply is None:
                continue
            txn = device.transaction_id
            if reply.status is PkiStatus.SUCCESS:
                (certificate,) = reply.certificates
                with self.lock:
                    self.answers[txn].append(certificate.serial_number)
                    if message_type is MessageType.CertPoll:
                        self.polled[txn] = certificate.serial_number
                return certificate
            assert reply.status is PkiStatus.PENDING, f"SCEP {txn}: {reply.fail_info} {reply.fail_info_text}"
            with self.lock:
                self.pending.add(txn)
            message_type = MessageType.CertPoll
            content = issuer_and_subject_der(self.ra.issuer, device.name)  # the RA's issuer is the CA
            time.sleep(0.5)
        raise AssertionError(f"SCEP {device.transaction_id}: no certificate within {self.give_up:.0f} s")

    def pki_operation(self, device: ScepDevice, message_type: MessageType, content: bytes) -> CertRepReply | None:
        """One exchange of the device's transaction (a new senderNonce each time); None when it is to be
        sent again (no answer, or an HTTP deferral)."""
        body = build_pki_request(
            message_type, content_der=content, signer_cert=device.signer, signer_key=device.key,
            recipient_cert=self.ra, transaction_id=device.transaction_id, sender_nonce=os.urandom(16),
            digest=Digest.SHA256, content_cipher=ContentCipher.AES256,
        )  # fmt: skip
        try:
            reply = fetch(
                self.node.http_port, SCEP_PATH, method="POST", body=body,
                headers={"Content-Type": "application/x-pki-message"}, timeout=30,
            )  # fmt: skip
        except (OSError, http.client.HTTPException) as exc:
            self._note(f"scep {type(exc).__name__}")
            time.sleep(0.5)
            return None
        if reply.status in RETRY_STATUSES:
            self._note(f"scep {reply.status}")
            time.sleep(retry_after(reply.headers))
            return None
        assert reply.status == 200, (reply.status, reply.body[:300])
        return parse_cert_rep(reply.body, ra_cert=self.ra, signer_key=device.key, signer_cert=device.signer)

    # -- EST --

    def enroll_est(self) -> x509.Certificate:
        """simpleenroll, the same request sent again after a broken connection, a 202 or a 503."""
        phase, number = self.phase, self._next_device()
        body = csr_body(ec_key(), f"kill9-est-{number}")
        deadline = time.monotonic() + self.give_up
        while time.monotonic() < deadline:
            with self.lock:
                self.est_sent += 1
            try:
                answer = post(self.node, "simpleenroll", body, auth=(USER, PASSWORD))
            except (OSError, http.client.HTTPException) as exc:
                self._note(f"est {type(exc).__name__}")
                time.sleep(0.5)
                continue
            if answer.status in RETRY_STATUSES:
                self._note(f"est {answer.status}")
                time.sleep(retry_after(answer.headers))
                continue
            certificate = certificate_of(answer)
            self._received(phase, certificate)
            with self.lock:
                self.est_received += 1
            return certificate
        raise AssertionError(f"EST kill9-est-{number}: no certificate within {self.give_up:.0f} s")

    def retransmit_every_transaction(self) -> None:
        """Each SCEP transaction sent once more, as a client that lost the answer would: the same certificate."""
        for txn, device in sorted(self.scep.items()):
            deadline = time.monotonic() + self.give_up
            while (reply := self.pki_operation(device, MessageType.PKCSReq, device.csr_der)) is None:
                assert time.monotonic() < deadline, f"SCEP {txn}: no answer to its retransmission"
            assert reply.status is PkiStatus.SUCCESS, (txn, reply.status, reply.fail_info_text)
            self.answers[txn].append(reply.certificates[0].serial_number)


def retry_after(headers: dict[str, str]) -> float:
    """The answer's Retry-After, within 0.2 ... 5 s (the test's clients are impatient ones)."""
    try:
        return min(5.0, max(0.2, float(headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def load_with_a_kill(fleet: Fleet, strike: Callable[[], list[ProcessId]]) -> list[ProcessId]:
    """Run the load; once WARM_UP enrollments are done, `strike` (which kills); once the node is back at
    full strength and answers, AFTER more enrollments begun then; then stop the load. What was killed."""
    node = fleet.node
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(fleet.client, number) for number in range(CLIENTS)]
        try:
            eventually(lambda: fleet.done(0, futures) >= WARM_UP, f"{WARM_UP} enrollments before the kill")
            gone = strike()
            eventually(lambda: at_full_strength(node, gone), "the killed processes replaced, nothing orphaned")
            context = fetch_context(node)
            eventually(
                lambda: answers(node.http_port) == 200 and answers(node.https_port, context=context) == 200,
                "/healthz on both listeners",
            )
            fleet.phase = 1
            eventually(lambda: fleet.done(1, futures) >= AFTER, f"{AFTER} enrollments begun after the kill")
        finally:
            fleet.stop.set()
        for future in futures:
            future.result()
    assert node.process.poll() is None  # `gateway serve` itself never exited: the node healed by itself
    print(f"{len(fleet.completed)} enrollments; the clients saw {sorted(fleet.errors.items()) or 'no errors'}")
    return gone


def fetch_context(node: Server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(node.ca_pem))


# -- the store --------------------------------------------------------------------------------------


def store_problems(conn: Connection, fleet: Fleet) -> list[str]:
    """Everything that makes the store inconsistent with itself or with what the clients were answered."""
    c, e, t = certificates.c, enrollment_events.c, scep_transactions.c
    rows = conn.execute(
        select(c.id, c.serial_hex, c.fingerprint_sha256, c.der, c.protocol, c.common_name).where(
            c.protocol.in_(("scep", "est"))
        )
    ).all()
    problems: list[str] = []
    serials = collections.Counter(row.serial_hex for row in rows)
    problems += [f"serial {serial} is stored {count} times" for serial, count in serials.items() if count > 1]
    issued_events: dict[int, set[str | None]] = collections.defaultdict(set)
    for event in conn.execute(
        select(e.certificate_id, e.serial_hex).where(e.certificate_id.is_not(None), e.outcome == "issued")
    ):
        issued_events[event.certificate_id].add(event.serial_hex)
    for row in rows:
        try:
            certificate = x509.load_der_x509_certificate(row.der)
        except ValueError as exc:
            problems.append(f"certificate {row.serial_hex}: its DER does not parse ({exc})")
            continue
        if (
            serial_hex(certificate.serial_number) != row.serial_hex
            or fingerprint(certificate) != row.fingerprint_sha256
        ):
            problems.append(f"certificate {row.serial_hex}: the row does not describe its DER")
        if row.serial_hex not in issued_events.get(row.id, set()):
            problems.append(f"certificate {row.serial_hex} ({row.protocol}) has no enrollment event")

    by_id = {row.id: row for row in rows}
    transactions = {
        txn.transaction_id: txn
        for txn in conn.execute(select(t.transaction_id, t.status, t.certificate_id).where(t.status == "issued"))
    }
    for txn_id, answered in fleet.answers.items():
        txn = transactions.get(txn_id)
        stored = by_id.get(txn.certificate_id) if txn is not None and txn.certificate_id is not None else None
        if stored is None:
            problems.append(f"SCEP transaction {txn_id} has no issued certificate")
        elif {serial_hex(serial) for serial in answered} != {stored.serial_hex}:
            problems.append(f"SCEP transaction {txn_id} was answered with {answered}, stored {stored.serial_hex}")
    used = collections.Counter(txn.certificate_id for txn in transactions.values())
    problems += [f"certificate id {cid} answers {count} SCEP transactions" for cid, count in used.items() if count > 1]
    scep_rows = [row for row in rows if row.protocol == "scep"]
    problems += [
        f"SCEP certificate {row.serial_hex} belongs to no transaction" for row in scep_rows if row.id not in used
    ]
    names = collections.Counter(row.common_name for row in scep_rows)
    problems += [f"SCEP device {name} holds {count} certificates" for name, count in names.items() if count > 1]

    stored_der = {row.serial_hex: row.der for row in rows}
    for serial, der in fleet.received.items():
        if stored_der.get(serial_hex(serial)) != der:
            problems.append(f"certificate {serial_hex(serial)} was received by a client but is not in the store")
    est_stored = sum(row.protocol == "est" for row in rows)
    if not fleet.est_received <= est_stored <= fleet.est_sent:
        problems.append(f"{est_stored} EST certificates stored, {fleet.est_received} received, {fleet.est_sent} asked")
    return problems


def assert_store_consistent(node: Server, fleet: Fleet) -> None:
    engine = store_engine(node)
    try:
        with engine.connect().execution_options(**WRITE) as conn:
            assert store_problems(conn, fleet) == []
            conn.rollback()
            # The check can fail: with the events of one received certificate deleted (rolled back), and with
            # a transaction said to be answered by another certificate, it says so.
            serial = serial_hex(next(iter(fleet.received)))
            with conn.begin() as transaction:
                conn.execute(
                    delete(enrollment_events).where(
                        enrollment_events.c.certificate_id.in_(
                            select(certificates.c.id).where(certificates.c.serial_hex == serial)
                        )
                    )
                )
                assert any(f"{serial} (" in problem for problem in store_problems(conn, fleet))
                transaction.rollback()
            txn = next(iter(fleet.answers))
            fleet.answers[txn].append(fleet.answers[txn][0] + 1)
            try:
                assert any(txn in problem for problem in store_problems(conn, fleet))
            finally:
                fleet.answers[txn].pop()
            assert store_problems(conn, fleet) == []
    finally:
        engine.dispose()


# -- the tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["worker", "arbiter"])
def test_kill9_under_load_leaves_a_consistent_store_and_a_node_that_serves_again(
    tmp_path: Path, database_url: str, victim: str
) -> None:
    with serving(tmp_path, database_url) as node:
        fleet = Fleet(node)
        gone = load_with_a_kill(fleet, lambda: kill(node, victim))
        if victim == "arbiter":
            for listener in LISTENERS:  # the supervisor saw it, and started it again
                assert f"the {listener} listener exited with status -9; starting it again" in node.stderr_text()
        assert not any(still_running(process) for process in gone)
        # Fresh devices are served; every transaction sent again gets its certificate again.
        fleet.give_up = EVENTUALLY
        fleet.enroll_scep()
        fleet.enroll_est()
        fleet.retransmit_every_transaction()
        assert_store_consistent(node, fleet)


def deferred_waiting(engine: Engine) -> list[int]:
    """The ids of deferred requests not issued yet; none while a worker holds one (it is issuing)."""
    a = approval_requests.c
    with engine.connect() as conn:
        rows = conn.execute(select(a.id, a.claimed_until).where(a.deferred.is_(True), a.status == "pending")).all()
    now = dt.datetime.now(dt.UTC)
    if any(row.claimed_until is not None and row.claimed_until > now for row in rows):
        return []
    return [row.id for row in rows]


def test_kill9_with_deferred_requests_waiting_issues_each_once_and_delivers_it_by_certpoll(
    tmp_path: Path, database_url: str
) -> None:
    # One slot per worker and no queue wait: concurrent SCEP enrollments are deferred (PENDING).
    env = {"GATEWAY_ADMISSION_MAX_IN_FLIGHT": "1", "GATEWAY_ADMISSION_QUEUE_WAIT_MS": "0"}
    env["GATEWAY_ADMISSION_RETRY_AFTER_SECONDS"] = "1"
    # Deferred requests wait a few seconds before a worker looks for them, so there are some to be seen
    # waiting at the kill (issued within a second, a busy machine's load may never show one).
    env["GATEWAY_ADMISSION_DEFERRED_CHECK_SECONDS"] = "5"
    with serving(tmp_path, database_url, **env) as node:
        engine = store_engine(node)
        try:
            # A request claimed by the killed worker is issued once its claim lapses: the clients wait for it.
            fleet = Fleet(node, give_up=DEFERRED_LEASE.total_seconds() + EVENTUALLY)
            waiting: list[int] = []

            def found_waiting() -> bool:
                waiting[:] = deferred_waiting(engine)
                return bool(waiting)

            burst = ThreadPoolExecutor(BURST)
            sent: list[Future[x509.Certificate]] = []

            def strike() -> list[ProcessId]:
                # A burst of SCEP enrollments at once besides the load, so that some are surely deferred.
                sent.extend(burst.submit(fleet.enroll_scep) for _ in range(BURST))
                eventually(found_waiting, "deferred requests waiting")
                return kill(node, "worker")

            try:
                load_with_a_kill(fleet, strike)
            finally:
                burst.shutdown(wait=True)
            for future in sent:  # every enrollment of the burst got its certificate
                future.result()
            fleet.give_up = DEFERRED_LEASE.total_seconds() + EVENTUALLY
            fleet.retransmit_every_transaction()
            assert_store_consistent(node, fleet)

            a, t = approval_requests.c, scep_transactions.c
            with engine.connect() as conn:
                deferred = conn.execute(
                    select(a.id, a.status, a.certificate_id, t.transaction_id, t.status.label("txn_status"),
                           t.certificate_id.label("txn_certificate_id"), certificates.c.serial_hex)
                    .join(scep_transactions, t.approval_id == a.id)
                    .join(certificates, certificates.c.id == a.certificate_id, isouter=True)
                    .where(a.deferred.is_(True))
                ).all()  # fmt: skip
        finally:
            engine.dispose()
        assert set(waiting) <= {row.id for row in deferred}  # waiting at the kill: SCEP requests of ours
        for row in deferred:  # each issued once, the transaction's certificate, delivered to its client
            assert row.status == "issued" and row.txn_status == "issued", row
            assert row.certificate_id is not None and row.certificate_id == row.txn_certificate_id, row
            assert {serial_hex(serial) for serial in fleet.answers[row.transaction_id]} == {row.serial_hex}, row
            if row.transaction_id in fleet.pending:  # told PENDING: it polled, and CertPoll delivered it
                assert serial_hex(fleet.polled[row.transaction_id]) == row.serial_hex, row
        assert any(row.transaction_id in fleet.polled for row in deferred)
        print(f"{len(deferred)} deferred requests, {len(set(waiting))} waiting at the kill")
