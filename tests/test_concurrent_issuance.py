"""Acceptance: 2 processes x 8 threads issue 2,000 certificates at once against one database.

micromdm's file depot loses 2-25 % of enrollments at concurrency 4-8 because serials live in a
file. Here each serial, its certificate row and its audit event are one database transaction, and
(issuer, serial) is a database constraint: every certificate must come back, recorded exactly once.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.queues import Queue as QueueType
from multiprocessing.synchronize import Barrier as BarrierType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_public_key,
)
from sqlalchemy import distinct, func, select

from shared_ca.authority import CertificateAuthority, PublicUrls
from shared_ca.keys import parse_private_key
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.serials import serial_hex
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import audit_events, certificates
from tests.support import ec_key, storage_of, subject

PROCESSES = 2
THREADS_PER_PROCESS = 8
PER_PROCESS = 1000
TOTAL = PROCESSES * PER_PROCESS
SUBJECT_KEYS = 3
BASE_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class IssuingJob:
    """What one worker process needs to build its own engine, store and CA (all picklable)."""

    worker: int
    database_url: str
    issuer_name: str
    ca_key_pem: bytes
    ca_cert_pem: bytes
    subject_keys_pem: tuple[bytes, ...]
    count: int
    threads: int


@dataclass(frozen=True)
class WorkerResult:
    worker: int
    serials: tuple[str, ...]
    errors: tuple[str, ...]


def _ec_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = load_pem_public_key(pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def issue_in_process(job: IssuingJob, start: BarrierType, results: QueueType[WorkerResult]) -> None:
    """Child process: `job.threads` threads share one CertificateAuthority and issue `job.count` certificates."""
    serials: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    engine = create_store_engine(job.database_url, pool_size=job.threads)
    try:
        store = Storage.open(engine)
        issuer = store.issuers.issuer_by_name(job.issuer_name)
        if issuer is None:
            raise LookupError(f"issuer {job.issuer_name!r} is not in the store")
        certificate = x509.load_pem_x509_certificate(job.ca_cert_pem)
        key = parse_private_key(job.ca_key_pem, None, source="test CA key")
        authority = CertificateAuthority(
            store.certificates, issuer, certificate, (certificate,), key, PublicUrls(BASE_URL)
        )
        public_keys = [_ec_public_key(pem) for pem in job.subject_keys_pem]
        profile = DEFAULT_PROFILES["default"]
        threads_ready = threading.Barrier(job.threads)

        def issue_share(thread: int) -> None:
            share = range(thread, job.count, job.threads)
            try:
                threads_ready.wait(60)
                for i in share:
                    name = f"w{job.worker}-t{thread}-{i}"
                    policy = authorize_request(
                        profile,
                        subject(name),
                        [x509.DNSName(f"{name}.example")],
                        public_keys[i % len(public_keys)],
                        dt.datetime.now(dt.UTC),
                    )
                    issued = authority.issue(policy, protocol="est", actor=f"worker-{job.worker}")
                    if issued.record.serial_hex != serial_hex(issued.certificate.serial_number):
                        raise AssertionError(f"record {issued.record.serial_hex} does not match its certificate")
                    with lock:
                        serials.append(issued.record.serial_hex)
            except BaseException:  # every failure is reported to the parent
                with lock:
                    errors.append(traceback.format_exc())

        workers = [threading.Thread(target=issue_share, args=(t,)) for t in range(job.threads)]
        start.wait(120)  # both processes set up: go
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    except BaseException:
        errors.append(traceback.format_exc())
    finally:
        engine.dispose()
        results.put(WorkerResult(job.worker, tuple(serials), tuple(errors)))


@pytest.mark.slow
def test_two_processes_eight_threads_issue_2000_unique_recorded_certificates(
    authority: CertificateAuthority, database_url: str
) -> None:
    ca_public_key = authority.certificate.public_key()
    assert isinstance(ca_public_key, ec.EllipticCurvePublicKey)
    assert isinstance(ca_public_key.curve, ec.SECP256R1)
    store = storage_of(authority)
    ca_key_pem = authority.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    ca_cert_pem = authority.certificate.public_bytes(Encoding.PEM)
    subject_keys = tuple(
        ec_key().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo) for _ in range(SUBJECT_KEYS)
    )
    jobs = [
        IssuingJob(
            worker=n,
            database_url=database_url,
            issuer_name=authority.name,
            ca_key_pem=ca_key_pem,
            ca_cert_pem=ca_cert_pem,
            subject_keys_pem=subject_keys,
            count=PER_PROCESS,
            threads=THREADS_PER_PROCESS,
        )
        for n in range(PROCESSES)
    ]

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    results: QueueType[WorkerResult] = ctx.Queue()
    children = [ctx.Process(target=issue_in_process, args=(job, start, results)) for job in jobs]
    for child in children:
        child.start()
    try:
        # Drain the queue before joining: a child cannot exit while its result is unread.
        outcomes = sorted((results.get(timeout=300) for _ in children), key=lambda r: r.worker)
    finally:
        for child in children:
            child.join(60)
        results.close()
        results.join_thread()

    assert [c.exitcode for c in children] == [0] * PROCESSES
    assert [o.errors for o in outcomes] == [()] * PROCESSES, "\n".join(e for o in outcomes for e in o.errors)
    assert [len(o.serials) for o in outcomes] == [PER_PROCESS] * PROCESSES
    returned = [s for o in outcomes for s in o.serials]
    assert len(set(returned)) == TOTAL

    with store.engine.connect() as conn:
        rows, distinct_serials, distinct_fingerprints = conn.execute(
            select(
                func.count(),
                func.count(distinct(certificates.c.serial_hex)),
                func.count(distinct(certificates.c.fingerprint_sha256)),
            ).where(certificates.c.issuer_id == authority.issuer.id)
        ).one()
        stored = conn.execute(select(certificates.c.serial_hex, certificates.c.der)).all()
        issued_events = conn.execute(
            select(audit_events.c.serial_hex, audit_events.c.actor, audit_events.c.issuer_id).where(
                audit_events.c.action == "certificate.issued"
            )
        ).all()

    assert (rows, distinct_serials, distinct_fingerprints) == (TOTAL, TOTAL, TOTAL)
    assert store.certificates.count_certificates() == TOTAL
    assert {serial for serial, _ in stored} == set(returned)

    assert len(issued_events) == TOTAL
    assert {serial for serial, _, _ in issued_events} == set(returned)  # one event per certificate
    assert {issuer for _, _, issuer in issued_events} == {authority.issuer.id}
    by_worker = {o.worker: set(o.serials) for o in outcomes}
    for serial, actor, _ in issued_events:
        assert serial in by_worker[int(actor.removeprefix("worker-"))]

    # Every stored certificate is the one its row describes, signed by the CA.
    for serial, der in stored:
        cert = x509.load_der_x509_certificate(der)
        assert serial_hex(cert.serial_number) == serial
        cert.verify_directly_issued_by(authority.certificate)
