"""Slow and idle clients against `gateway serve`, and what other clients see meanwhile.

Used by bench/slowclients (prints the numbers) and tests/test_slow_clients_serve.py (asserts that
every other client is answered). Everything talks to 127.0.0.1; the slow clients connect from
another loopback address (127.0.0.2 by default), so the gateway sees them as one other client.

Kinds of slow connection (issue 12):

- `head`: an HTTP request head trickled a byte every few seconds (plain HTTP port);
- `tls-head`: the same over TLS;
- `tls-body`: a complete head announcing a body of 10,000 bytes, then the body a byte at a time;
- `tls-idle`: a finished TLS handshake, then nothing;
- `tcp-no-tls`: a TCP connection to the HTTPS port that never starts TLS.

A connection the gateway closes is opened again, as a slowloris client would, so the pressure stays
for the whole measurement; how often that happened, and how many connections the gateway refused
outright (the per-address cap), is counted.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import os
import socket
import ssl
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from est.client_messages import build_csr
from scep.asn1 import Digest, MessageType, PkiStatus
from scep.client import make_csr
from scep.client_messages import build_pki_request, parse_cert_rep, self_signed_signer
from scep.envelope import ContentCipher

KINDS = ("head", "tls-head", "tls-body", "tls-idle", "tcp-no-tls")
TRICKLE_SECONDS = 2.0
CONNECT_SECONDS = 5.0


@dataclasses.dataclass
class SlowStats:
    """What the slow clients saw: connections held now, opened in all, refused, closed by the gateway."""

    held: int = 0
    opened: int = 0
    refused: int = 0  # connect or TLS handshake failed: the gateway would not take it
    closed_by_server: int = 0  # an open one the gateway closed (a deadline)


class SlowClients:
    """`per_kind` connections of each kind in `kinds`, held (and re-opened) until `stop`."""

    def __init__(
        self,
        http_port: int,
        https_port: int,
        per_kind: int,
        *,
        kinds: tuple[str, ...] = KINDS,
        source: str = "127.0.0.2",
        trickle_seconds: float = TRICKLE_SECONDS,
    ) -> None:
        self.ports = {"head": http_port}
        self.https_port = https_port
        self.per_kind = per_kind
        self.kinds = kinds
        self.source = source
        self.trickle_seconds = trickle_seconds
        self.stats = SlowStats()
        self._context = ssl.create_default_context()
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for kind in self.kinds:
            for _ in range(self.per_kind):
                thread = threading.Thread(target=self._keep, args=(kind,), daemon=True)
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CONNECT_SECONDS + self.trickle_seconds + 5)

    def _count(self, **changes: int) -> None:
        with self._lock:
            for name, delta in changes.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _open(self, kind: str) -> socket.socket | None:
        port = self.ports.get(kind, self.https_port)
        try:
            raw = socket.create_connection(("127.0.0.1", port), CONNECT_SECONDS, (self.source, 0))
        except OSError:
            self._count(refused=1)
            return None
        try:
            if kind == "tcp-no-tls":
                return raw
            sock: socket.socket = raw
            if kind != "head":
                sock = self._context.wrap_socket(raw)
            if kind in ("head", "tls-head"):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost")
            elif kind == "tls-body":
                sock.sendall(
                    b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/pkcs10\r\nContent-Length: 10000\r\n\r\nMII"
                )
            return sock
        except OSError:
            self._count(refused=1)
            with contextlib.suppress(OSError):
                raw.close()
            return None

    def _keep(self, kind: str) -> None:
        """One slow client: hold a connection of `kind`, trickle a byte now and then, re-open it when closed."""
        while not self._stop.is_set():
            sock = self._open(kind)
            if sock is None:
                self._stop.wait(self.trickle_seconds)
                continue
            self._count(opened=1, held=1)
            try:
                sock.settimeout(0.05)
                while not self._stop.wait(self.trickle_seconds):
                    if kind in ("head", "tls-head", "tls-body"):
                        sock.sendall(b"a")
                    with contextlib.suppress(TimeoutError, ssl.SSLWantReadError):
                        if sock.recv(4096) == b"":
                            raise ConnectionResetError("closed by the gateway")
            except OSError:
                self._count(closed_by_server=1)
            finally:
                self._count(held=-1)
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def slow_clients(http_port: int, https_port: int, per_kind: int, **options: Any) -> Iterator[SlowClients]:
    """SlowClients started, waited for (all connection attempts made once), and stopped at exit."""
    clients = SlowClients(http_port, https_port, per_kind, **options)
    clients.start()
    try:
        deadline = time.monotonic() + CONNECT_SECONDS * 4
        wanted = per_kind * len(clients.kinds)
        while clients.stats.opened + clients.stats.refused < wanted and time.monotonic() < deadline:
            time.sleep(0.1)
        yield clients
    finally:
        clients.stop()


# -- well-behaved clients ---------------------------------------------------------------------------


@dataclasses.dataclass
class Probe:
    """One kind of request a well-behaved client makes, and how each one went."""

    name: str
    send: Callable[[], str]  # '' when answered as expected, else what went wrong
    seconds: list[float] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)

    def run(self, times: int) -> None:
        for _ in range(times):
            started = time.perf_counter()
            try:
                problem = self.send()
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.seconds.append(time.perf_counter() - started)
            if problem:
                self.failures.append(problem)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.seconds)
        return {
            "request": self.name,
            "sent": len(ordered),
            "answered": len(ordered) - len(self.failures),
            "p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else None,
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 1) if ordered else None,
            "max_ms": round(ordered[-1] * 1000, 1) if ordered else None,
        }


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _https(port: int, cafile: str, timeout: float) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=cafile)
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)


def healthz_probe(port: int, cafile: str | None, timeout: float = 10.0) -> Probe:
    """GET /healthz on a new connection each time (TLS when `cafile`)."""

    def send() -> str:
        conn: http.client.HTTPConnection = (
            _https(port, cafile, timeout) if cafile else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        )
        try:
            conn.request("GET", "/healthz")
            reply = conn.getresponse()
            reply.read()
            return "" if reply.status == 200 else f"HTTP {reply.status}"
        finally:
            conn.close()

    return Probe(f"healthz {'https' if cafile else 'http'}", send)


def est_probe(port: int, cafile: str, user: str, password: str, timeout: float = 30.0) -> Probe:
    """EST simpleenroll with Basic credentials, a new P-256 key and CN each time."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()

    def send() -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"probe-{uuid.uuid4().hex[:12]}")])
        csr = build_csr(key, name).public_bytes(Encoding.DER)
        conn = _https(port, cafile, timeout)
        try:
            headers = {"Authorization": f"Basic {token}", "Content-Type": "application/pkcs10"}
            conn.request("POST", "/.well-known/est/simpleenroll", body=base64.b64encode(csr), headers=headers)
            reply = conn.getresponse()
            reply.read()
            return "" if reply.status == 200 else f"HTTP {reply.status}"
        finally:
            conn.close()

    return Probe("EST simpleenroll", send)


def scep_probe(
    port: int, ra: x509.Certificate, challenge: str, keys: list[rsa.RSAPrivateKey], timeout: float = 30.0
) -> Probe:
    """SCEP PKCSReq over plain HTTP with the static challenge, a pooled RSA key and a new CN each time."""
    turn = iter(range(10**9))

    def send() -> str:
        key = keys[next(turn) % len(keys)]
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"probe-{uuid.uuid4().hex[:12]}")])
        csr = make_csr(key, name, challenge=challenge)
        signer = self_signed_signer(key, name)
        body = build_pki_request(
            MessageType.PKCSReq,
            content_der=csr.public_bytes(Encoding.DER),
            signer_cert=signer,
            signer_key=key,
            recipient_cert=ra,
            transaction_id=uuid.uuid4().hex,
            sender_nonce=os.urandom(16),
            digest=Digest.SHA256,
            content_cipher=ContentCipher.AES256,
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("POST", "/scep?operation=PKIOperation", body=body)
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        if reply.status != 200:
            return f"HTTP {reply.status}"
        answer = parse_cert_rep(data, ra_cert=ra, signer_key=key, signer_cert=signer)
        return "" if answer.status is PkiStatus.SUCCESS else f"SCEP {answer.status.name}"

    return Probe("SCEP PKCSReq", send)
