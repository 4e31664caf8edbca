"""bench/storm: an enrollment storm against `gateway serve`, from clients that poll and retry as real ones do.

Run it through `bench/storm`. Issue 12 asks that a storm (an MDM pushing a profile to a fleet at 9:00, a CA
rollover) is answered with the protocols' own deferral, never with timeouts or errors. One run, per
backend (SQLite in the data directory; PostgreSQL in a fresh schema when it answers):

1. Sets up, in a temporary directory: `gateway init --ca-key-type rsa2048 --scep-challenge SECRET`, an EST
   user with a generated secret and unlimited uses, `gateway serve` (default admission settings unless
   `--admission KEY=VALUE`) on free loopback ports.
2. Capacity: `--capacity-devices` distinct devices (half SCEP, half EST) at concurrency 4, where nothing
   is deferred: certificates per second is the node's measured capacity.
3. The storm: `--devices` distinct devices (half SCEP PKCSReq over HTTP, half EST simpleenroll over
   TLS), all due at once, driven by `--concurrency` client threads spread over `--processes`
   load-generator processes (each thread one request at a time, a new connection per request, as
   separate devices do). Each device behaves as the real clients do:
   - SCEP: on PENDING, CertPoll every `--poll-seconds` (Apple's RetryDelay default is 10 s) with the
     same transactionID until SUCCESS; on HTTP 503, the same PKCSReq again after its Retry-After;
   - EST: on 202, 429 or 503, the same request again after its Retry-After (RFC 7030 §4.2.3);
   - a connection error or any other answer: again after 5 s (counted; there should be none).
   A FAILURE is final for that device (counted; there should be none).
   The first request of every device is due at the start, so the offered rate is what the
   concurrency lets through: the run prints it and its ratio to the measured capacity.
4. After the storm, untimed: every certificate is checked (the device's key and name, issued by the
   CA), and the store is read: certificates of this run, duplicates per device, serials, events.
5. Prints one table per backend: devices, devices with a verified certificate, lost, wall time,
   certificates/s, offered arrival rate and its ratio to capacity, answers by kind, 5xx other than a
   503 with Retry-After, p50/p99/max latency of admitted requests (answered with a certificate) and of
   deferral answers, and time to certificate per device.

Usage: bench/storm [--devices 20000] [--concurrency 256] [--processes 8] [--backend sqlite,postgresql]
                   [--poll-seconds 10] [--admission max_in_flight=16 ...] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import heapq
import http.client
import json
import multiprocessing
import os
import platform
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from est_bench import PYTHON, REPO, free_ports, percentile, stop, wait_healthy
from migration_bench import drop_schema, postgres_schema

from est.client_messages import build_csr
from scep.asn1 import Digest, MessageType, PkiStatus
from scep.client import ScepHttpClient, make_csr
from scep.client_messages import (
    CertRepError,
    build_pki_request,
    issuer_and_subject_der,
    parse_cert_rep,
    self_signed_signer,
)
from scep.envelope import ContentCipher
from shared_ca.keys import public_key_bytes

CHALLENGE = "SECRET"
USER = "storm"
KEY_POOL = 64
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1/test"
REQUEST_TIMEOUT = 60.0  # a request without an answer this long counts as a timeout
ERROR_RETRY_SECONDS = 5.0
SCEP_PATH = "/scep?operation=PKIOperation"
EST_PATH = "/.well-known/est/simpleenroll"


# -- one device ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Device:
    """One device of the storm and where it stands."""

    index: int
    protocol: str  # "scep" or "est"
    name: x509.Name
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    body: bytes  # the PKCSReq or the simpleenroll body, sent again as it is on a retry
    signer: x509.Certificate | None = None  # SCEP: the self-signed signer certificate
    transaction_id: str = ""
    polling: bool = False  # SCEP: PENDING seen, CertPoll from now on
    first_sent: float = 0.0
    finished: float = 0.0
    certificate: bytes = b""  # DER, once it has one
    failure: str = ""  # final: a FAILURE, or given up


@dataclasses.dataclass(frozen=True)
class Request:
    """One request as the client saw it."""

    protocol: str
    kind: str  # "enroll", "poll"
    answer: str  # "SUCCESS", "PENDING", "FAILURE badRequest", "HTTP 202", "HTTP 503", "error: timeout", ...
    seconds: float
    retry_after: bool  # the answer carried Retry-After


def _cn(index: int, run: str, protocol: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "storm"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"storm-{run}-{protocol}-{index}"),
        ]
    )


def build_devices(
    indices: list[int], run: str, ra: x509.Certificate, rsa_keys: list[rsa.RSAPrivateKey], ec_keys: list[Any]
) -> list[Device]:
    """The devices of `indices` (even: SCEP, odd: EST), each with its request built (untimed)."""
    devices = []
    for index in indices:
        if index % 2 == 0:
            key = rsa_keys[index % len(rsa_keys)]
            name = _cn(index, run, "scep")
            signer = self_signed_signer(key, name)
            transaction_id = uuid.uuid4().hex
            body = build_pki_request(
                MessageType.PKCSReq,
                content_der=make_csr(key, name, challenge=CHALLENGE).public_bytes(Encoding.DER),
                signer_cert=signer,
                signer_key=key,
                recipient_cert=ra,
                transaction_id=transaction_id,
                sender_nonce=os.urandom(16),
                digest=Digest.SHA256,
                content_cipher=ContentCipher.AES256,
            )
            devices.append(Device(index, "scep", name, key, body, signer, transaction_id))
        else:
            ec_key = ec_keys[index % len(ec_keys)]
            name = _cn(index, run, "est")
            body = base64.b64encode(build_csr(ec_key, name).public_bytes(Encoding.DER))
            devices.append(Device(index, "est", name, ec_key, body))
    return devices


# -- a load-generator process ------------------------------------------------------------------------


class Client:
    """One load-generator process: its devices, a schedule of what each does next, and threads that
    send one request at a time from it."""

    def __init__(self, devices: list[Device], settings: dict[str, Any]) -> None:
        self.devices = devices
        self.settings = settings
        self.ra = x509.load_der_x509_certificate(settings["ra"])
        self.tls = ssl.create_default_context(cafile=settings["cafile"])
        self.schedule: list[tuple[float, int, int]] = []  # (due, tie-breaker, device position)
        self.lock = threading.Condition()
        self.open = len(devices)
        self.requests: list[Request] = []
        self._seq = 0

    def plan(self, position: int, due: float) -> None:
        with self.lock:
            self._seq += 1
            heapq.heappush(self.schedule, (due, self._seq, position))
            self.lock.notify()

    def done(self) -> None:
        with self.lock:
            self.open -= 1
            self.lock.notify_all()

    def next_due(self, give_up: float) -> int | None:
        """The next device whose time has come (waiting for it), None when every device is done."""
        with self.lock:
            while True:
                if self.open == 0 or time.monotonic() > give_up:
                    return None
                if self.schedule:
                    due, _seq, position = self.schedule[0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self.schedule)
                        return position
                    self.lock.wait(min(wait, 1.0))
                else:
                    self.lock.wait(1.0)

    def run(self, threads: int, ready: Any, give_up_seconds: float) -> float:
        for position in range(len(self.devices)):
            self.plan(position, 0.0)
        ready.wait()
        started = time.monotonic()
        give_up = started + give_up_seconds
        workers = [threading.Thread(target=self._work, args=(give_up,)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        for device in self.devices:
            if not device.certificate and not device.failure:
                device.failure = "given up: no certificate in time"
        return started

    def _work(self, give_up: float) -> None:
        while (position := self.next_due(give_up)) is not None:
            device = self.devices[position]
            if not device.first_sent:
                device.first_sent = time.monotonic()
            again = self._step(device)
            if again is None:
                device.finished = time.monotonic()
                self.done()
            else:
                self.plan(position, time.monotonic() + again)

    def _post(self, https: bool, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        conn: http.client.HTTPConnection
        if https:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.settings["https_port"], timeout=REQUEST_TIMEOUT, context=self.tls
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.settings["http_port"], timeout=REQUEST_TIMEOUT)
        try:
            conn.request("POST", path, body=body, headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.read(), reply.getheader("Retry-After")
        finally:
            conn.close()

    def _step(self, device: Device) -> float | None:
        """Send the device's next request; None when it is done (certificate or final failure), else the
        seconds until it tries again."""
        kind = "poll" if device.polling else "enroll"
        started = time.perf_counter()
        try:
            if device.protocol == "scep":
                body = self._poll_body(device) if device.polling else device.body
                status, data, retry_after = self._post(
                    False, SCEP_PATH, body, {"Content-Type": "application/x-pki-message"}
                )
            else:
                authorization = self.settings["authorization"]
                headers = {"Content-Type": "application/pkcs10", "Authorization": authorization}
                status, data, retry_after = self._post(True, EST_PATH, device.body, headers)
        except (OSError, http.client.HTTPException) as exc:
            what = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            self._record(device, kind, f"error: {what}", started, False)
            return ERROR_RETRY_SECONDS
        if device.protocol == "scep" and status == 200:
            return self._scep_answer(device, kind, data, started)
        self._record(device, kind, f"HTTP {status}", started, retry_after is not None)
        if status == 200:  # EST
            device.certificate = data
            return None
        if status in (202, 429, 503):
            return float(retry_after) if retry_after and retry_after.isdigit() else ERROR_RETRY_SECONDS
        return ERROR_RETRY_SECONDS

    def _scep_answer(self, device: Device, kind: str, data: bytes, started: float) -> float | None:
        assert device.signer is not None and isinstance(device.key, rsa.RSAPrivateKey)
        try:
            reply = parse_cert_rep(data, ra_cert=self.ra, signer_key=device.key, signer_cert=device.signer)
        except CertRepError as exc:
            self._record(device, kind, f"unreadable CertRep: {exc}", started, False)
            return ERROR_RETRY_SECONDS
        if reply.status is PkiStatus.SUCCESS:
            self._record(device, kind, "SUCCESS", started, False)
            device.certificate = reply.certificates[0].public_bytes(Encoding.DER) if reply.certificates else b""
            if not device.certificate:
                device.failure = "SUCCESS without a certificate"
            return None
        if reply.status is PkiStatus.PENDING:
            self._record(device, kind, "PENDING", started, False)
            device.polling = True
            return float(self.settings["poll_seconds"])
        fail = reply.fail_info.rfc_name if reply.fail_info is not None else "?"
        self._record(device, kind, f"FAILURE {fail}", started, False)
        device.failure = f"FAILURE {fail}: {reply.fail_info_text or ''}"
        return None

    def _poll_body(self, device: Device) -> bytes:
        assert device.signer is not None and isinstance(device.key, rsa.RSAPrivateKey)
        return build_pki_request(
            MessageType.CertPoll,
            content_der=issuer_and_subject_der(self.ra.issuer, device.name),
            signer_cert=device.signer,
            signer_key=device.key,
            recipient_cert=self.ra,
            transaction_id=device.transaction_id,
            sender_nonce=os.urandom(16),
            digest=Digest.SHA256,
            content_cipher=ContentCipher.AES256,
        )

    def _record(self, device: Device, kind: str, answer: str, started: float, retry_after: bool) -> None:
        request = Request(device.protocol, kind, answer, time.perf_counter() - started, retry_after)
        with self.lock:
            self.requests.append(request)


def verify(device: Device, ca: x509.Certificate) -> tuple[str, str]:
    """(serial hex, '') for a certificate of the device's key and name issued by `ca`; else ('', why not)."""
    if device.failure:
        return "", device.failure
    try:
        if device.protocol == "est":
            certificates = pkcs7.load_der_pkcs7_certificates(base64.b64decode(device.certificate))
        else:
            certificates = [x509.load_der_x509_certificate(device.certificate)]
    except ValueError as exc:
        return "", f"unreadable certificate: {exc}"
    mine = public_key_bytes(device.key.public_key())
    for certificate in certificates:
        if public_key_bytes(certificate.public_key()) == mine and certificate.subject == device.name:
            if certificate.issuer != ca.subject:
                return "", "issued by another CA"
            return f"{certificate.serial_number:x}", ""
    return "", "no certificate for the device's key and name"


def client_process(indices: list[int], settings: dict[str, Any], threads: int, ready: Any, results: Any) -> None:
    """One load-generator process: build its devices, run them, verify what they got, report."""
    rsa_keys = [
        k for k in (serialization.load_pem_private_key(p, None) for p in settings["rsa_keys"])
        if isinstance(k, rsa.RSAPrivateKey)
    ]  # fmt: skip
    ec_keys = [serialization.load_pem_private_key(p, None) for p in settings["ec_keys"]]
    ra = x509.load_der_x509_certificate(settings["ra"])
    ca = x509.load_der_x509_certificate(settings["ca"])
    client = Client(build_devices(indices, settings["run"], ra, rsa_keys, ec_keys), settings)
    started = client.run(threads, ready, settings["give_up_seconds"])
    # Times are the system-wide monotonic clock, so the parent can put every process on one time line.
    verdicts = [(d.index, d.protocol, d.first_sent, d.finished, *verify(d, ca)) for d in client.devices]
    results.put((started, verdicts, client.requests))


# -- one phase: a set of devices at a concurrency --------------------------------------------------


@dataclasses.dataclass
class Phase:
    devices: int
    concurrency: int
    seconds: float
    verdicts: list[tuple[int, str, float, float, str, str]]  # index, protocol, first sent, finished, serial, why not
    requests: list[Request]


def run_phase(first: int, count: int, concurrency: int, processes: int, settings: dict[str, Any]) -> Phase:
    processes = max(1, min(processes, concurrency))
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    shares = [list(range(first + slot, first + count, processes)) for slot in range(processes)]
    threads = [concurrency // processes + (1 if slot < concurrency % processes else 0) for slot in range(processes)]
    workers = [
        ctx.Process(target=client_process, args=(shares[slot], settings, threads[slot], ready, results))
        for slot in range(processes)
    ]
    for worker in workers:
        worker.start()
    ready.wait()  # every process has built its devices: the storm starts for all of them at once
    try:
        collected = [results.get(timeout=settings["give_up_seconds"] + 600) for _ in workers]
    except queue.Empty:
        for worker in workers:
            worker.kill()
        raise SystemExit("a load-generator process did not report (see its traceback above)") from None
    for worker in workers:
        worker.join(30)
    started = min(c[0] for c in collected)
    verdicts = [
        (index, protocol, max(0.0, sent - started), max(0.0, finished - started), serial, why)
        for _started, process_verdicts, _requests in collected
        for index, protocol, sent, finished, serial, why in process_verdicts
    ]
    requests = [r for _started, _verdicts, process_requests in collected for r in process_requests]
    seconds = max((v[3] for v in verdicts), default=0.0)  # the last device done (or given up)
    return Phase(count, concurrency, seconds, verdicts, requests)


# -- the store -----------------------------------------------------------------------------------------


def store_check(database_url: str, run: str) -> dict[str, int]:
    """What the store holds for this run's devices: certificates, duplicates, events, deferred requests."""
    from sqlalchemy import text

    from shared_ca.storage.db import create_store_engine

    engine = create_store_engine(database_url)
    pattern = f"%storm-{run}-%"
    try:
        with engine.connect() as conn:

            def one(sql: str) -> int:
                return int(conn.execute(text(sql), {"p": pattern}).scalar_one())

            return {
                "certificates": one("SELECT count(*) FROM certificates WHERE subject LIKE :p"),
                "distinct_subjects": one("SELECT count(DISTINCT subject) FROM certificates WHERE subject LIKE :p"),
                "distinct_serials": one("SELECT count(DISTINCT serial_hex) FROM certificates WHERE subject LIKE :p"),
                "without_issued_event": one(
                    "SELECT count(*) FROM certificates c WHERE c.subject LIKE :p AND NOT EXISTS "
                    "(SELECT 1 FROM enrollment_events e WHERE e.certificate_id = c.id AND e.outcome = 'issued')"
                ),
                "deferred_scep": one("SELECT count(*) FROM approval_requests WHERE deferred AND subject LIKE :p"),
                "deferred_not_issued": one(
                    "SELECT count(*) FROM approval_requests WHERE deferred AND subject LIKE :p AND status <> 'issued'"
                ),
            }
    finally:
        engine.dispose()


# -- orchestration --------------------------------------------------------------------------------


def gateway(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    command = [str(PYTHON), "-m", "gateway", *args]
    done = subprocess.run(
        command, cwd=REPO, env=env, input=stdin, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}")
    return done.stdout


def admission_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not value:
            raise SystemExit(f"--admission expects KEY=VALUE, got {pair!r}")
        env[f"GATEWAY_ADMISSION_{key.strip().upper()}"] = value.strip()
    return env


def summarise(phase: Phase, capacity: float) -> dict[str, Any]:
    verdicts = phase.verdicts
    ok = [v for v in verdicts if v[5] == ""]
    lost = collections.Counter(v[5][:60] for v in verdicts if v[5])
    answers = collections.Counter(f"{r.protocol} {r.kind} {r.answer}" for r in phase.requests)
    bad_5xx = sum(
        1 for r in phase.requests if r.answer.startswith("HTTP 5") and not (r.answer == "HTTP 503" and r.retry_after)
    )
    admitted = sorted(r.seconds for r in phase.requests if r.answer in ("SUCCESS", "HTTP 200"))
    deferrals = sorted(r.seconds for r in phase.requests if r.answer in ("PENDING", "HTTP 202", "HTTP 429", "HTTP 503"))
    to_certificate = sorted(v[3] for v in ok)
    arrival = max((v[2] for v in verdicts), default=0.0)  # when the last device sent its first request
    offered = phase.devices / arrival if arrival > 0 else float("inf")
    return {
        "devices": phase.devices,
        "concurrency": phase.concurrency,
        "with_certificate": len(ok),
        "lost": phase.devices - len(ok),
        "lost_reasons": lost.most_common(5),
        "seconds": round(phase.seconds, 1),
        "certificates_per_s": round(len(ok) / phase.seconds, 1) if phase.seconds else 0.0,
        "arrival_seconds": round(arrival, 1),
        "offered_per_s": round(offered, 1),
        "offered_over_capacity": round(offered / capacity, 1) if capacity else None,
        "requests": len(phase.requests),
        "answers": dict(sorted(answers.items())),
        "5xx_not_503_with_retry_after": bad_5xx,
        "admitted_p50_ms": round(percentile(admitted, 0.50) * 1000, 1),
        "admitted_p99_ms": round(percentile(admitted, 0.99) * 1000, 1),
        "admitted_max_ms": round((admitted[-1] if admitted else 0.0) * 1000, 1),
        "deferral_p99_ms": round(percentile(deferrals, 0.99) * 1000, 1),
        "to_certificate_p50_s": round(percentile(to_certificate, 0.50), 1),
        "to_certificate_p99_s": round(percentile(to_certificate, 0.99), 1),
        "to_certificate_max_s": round(to_certificate[-1] if to_certificate else 0.0, 1),
        "serials": len({v[4] for v in ok}),
    }


def run_backend(args: argparse.Namespace, backend: str, database_url: str | None, tmp: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    data_dir = tmp / f"data-{backend}"
    http_port, https_port = free_ports(2)
    init = ["init", "--data-dir", str(data_dir), "--ca-key-type", "rsa2048", "--scep-challenge", CHALLENGE]
    init += ["--public-base-url", f"http://127.0.0.1:{http_port}"]
    if database_url:
        init += ["--database-url", database_url]
    gateway(*init, env=env)
    secret = gateway("est-user", "add", USER, "--data-dir", str(data_dir), "--generate", env=env).strip()
    serve = ["serve", "--data-dir", str(data_dir), "--http", f"127.0.0.1:{http_port}"]
    serve += ["--https", f"127.0.0.1:{https_port}"]
    if args.workers:
        serve += ["--workers", str(args.workers)]
    log = tmp / f"serve-{backend}.log"
    server: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as out:
            server = subprocess.Popen(
                [str(PYTHON), "-m", "gateway", *serve], cwd=REPO, env={**env, **admission_env(args.admission)},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        cafile = data_dir / "ca.pem"
        wait_healthy(https_port, cafile, server, log)
        ra, chain = ScepHttpClient(f"http://127.0.0.1:{http_port}/scep", timeout=10).get_ca_certs()
        ca = next(c for c in chain if c.subject == ra.issuer)
        run = uuid.uuid4().hex[:8]
        print(f"# {backend}: building {KEY_POOL} RSA-2048 requester keys", file=sys.stderr)
        rsa_keys = [rsa.generate_private_key(65537, 2048) for _ in range(KEY_POOL)]
        ec_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(KEY_POOL)]
        pem = serialization.PrivateFormat.PKCS8
        settings = {
            "run": run,
            "http_port": http_port,
            "https_port": https_port,
            "cafile": str(cafile),
            "ra": ra.public_bytes(Encoding.DER),
            "ca": ca.public_bytes(Encoding.DER),
            "authorization": "Basic " + base64.b64encode(f"{USER}:{secret}".encode()).decode("ascii"),
            "poll_seconds": args.poll_seconds,
            "give_up_seconds": args.give_up_seconds,
            "rsa_keys": [k.private_bytes(Encoding.PEM, pem, serialization.NoEncryption()) for k in rsa_keys],
            "ec_keys": [k.private_bytes(Encoding.PEM, pem, serialization.NoEncryption()) for k in ec_keys],
        }
        print(f"# {backend}: capacity, {args.capacity_devices} devices at concurrency 4", file=sys.stderr)
        capacity_phase = run_phase(0, args.capacity_devices, 4, 4, {**settings, "run": f"{run}c"})
        capacity = summarise(capacity_phase, 0.0)
        print(f"# {backend}: capacity {capacity['certificates_per_s']}/s; storm of {args.devices}", file=sys.stderr)
        storm_phase = run_phase(
            args.capacity_devices, args.devices, args.concurrency, args.processes, {**settings, "run": f"{run}s"}
        )
        storm = summarise(storm_phase, float(capacity["certificates_per_s"]))
        url = database_url or f"sqlite:///{data_dir / 'gateway.db'}"
        stored = store_check(url, f"{run}s")
        return {"backend": backend, "capacity": capacity, "storm": storm, "store": stored}
    finally:
        stop(server)
        if server is not None and server.returncode not in (0, -signal.SIGTERM):
            print(f"# gateway serve exited with {server.returncode}; log {log}", file=sys.stderr)


def print_result(result: dict[str, Any], args: argparse.Namespace) -> None:
    storm, capacity, stored = result["storm"], result["capacity"], result["store"]
    print(f"## {result['backend']}")
    print(
        f"capacity (concurrency 4, {capacity['devices']} devices): {capacity['certificates_per_s']} certificates/s, "
        f"admitted p99 {capacity['admitted_p99_ms']} ms, lost {capacity['lost']}"
    )
    print("| storm | value |")
    print("|---|---:|")
    rows = [
        ("devices (half SCEP, half EST), all due at once", storm["devices"]),
        ("client concurrency (requests in flight at most)", storm["concurrency"]),
        ("devices with a verified certificate", storm["with_certificate"]),
        ("devices lost", storm["lost"]),
        ("wall time, s", storm["seconds"]),
        ("certificates/s", storm["certificates_per_s"]),
        ("every device's first request sent within, s", storm["arrival_seconds"]),
        ("offered rate (new devices/s) / capacity", f"{storm['offered_per_s']} / {capacity['certificates_per_s']} "
         f"= {storm['offered_over_capacity']}x"),
        ("requests sent", storm["requests"]),
        ("5xx other than 503 with Retry-After", storm["5xx_not_503_with_retry_after"]),
        ("admitted requests (answered with a certificate): p50 / p99 / max ms",
         f"{storm['admitted_p50_ms']} / {storm['admitted_p99_ms']} / {storm['admitted_max_ms']}"),
        ("deferral answers (PENDING, 202, 429, 503): p99 ms", storm["deferral_p99_ms"]),
        ("time to certificate per device: p50 / p99 / max s",
         f"{storm['to_certificate_p50_s']} / {storm['to_certificate_p99_s']} / {storm['to_certificate_max_s']}"),
        ("store: certificates of this run / distinct subjects / distinct serials",
         f"{stored['certificates']} / {stored['distinct_subjects']} / {stored['distinct_serials']}"),
        ("store: certificates without an issued event", stored["without_issued_event"]),
        ("store: SCEP requests deferred / of them not issued",
         f"{stored['deferred_scep']} / {stored['deferred_not_issued']}"),
    ]  # fmt: skip
    for label, value in rows:
        print(f"| {label} | {value} |")
    print("| answers | count |")
    print("|---|---:|")
    for answer, count in storm["answers"].items():
        print(f"| {answer} | {count} |")
    if storm["lost_reasons"]:
        print("# lost: " + "; ".join(f"{n} x {why}" for why, n in storm["lost_reasons"]))


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20_000, help="distinct devices in the storm")
    parser.add_argument("--concurrency", type=int, default=256, help="client threads (requests in flight)")
    parser.add_argument("--processes", type=int, default=8, help="load-generator processes")
    parser.add_argument("--capacity-devices", type=int, default=400, help="devices of the capacity phase")
    parser.add_argument("--backend", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL URL (a schema is made in it)")
    parser.add_argument("--poll-seconds", type=float, default=10.0, help="SCEP CertPoll interval after PENDING")
    parser.add_argument("--give-up-seconds", type=float, default=3600.0, help="a device gives up after this")
    parser.add_argument("--workers", type=int, default=0, help="gateway serve --workers (default: its own)")
    parser.add_argument("--admission", action="append", default=[], help="admission setting KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _raise_exit)
    tmp = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    results = []
    print(
        f"# bench/storm {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.devices} devices at concurrency {args.concurrency} "
        f"({args.processes} load-generator processes on the same cores), SCEP poll every {args.poll_seconds:g} s; "
        f"admission {' '.join(args.admission) or 'defaults'}"
    )
    try:
        for backend in [b.strip() for b in args.backend.split(",") if b.strip()]:
            schema = None
            database_url = None
            if backend == "postgresql":
                made = postgres_schema(args.postgres)
                if made is None:
                    continue
                schema, database_url = made
            elif backend != "sqlite":
                raise SystemExit(f"--backend: unknown {backend!r} (sqlite, postgresql)")
            try:
                result = run_backend(args, backend, database_url, tmp)
            finally:
                if schema is not None:
                    with contextlib.suppress(Exception):
                        drop_schema(args.postgres, schema)
            print_result(result, args)
            sys.stdout.flush()
            results.append(result)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if args.keep:
            print(f"# kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
