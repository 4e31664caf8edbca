"""Slow and idle clients cannot starve others (issue 12), through `gateway serve` as a real process.

One server with short deadlines (3 s) and a small per-address cap. The slow clients connect from
127.0.0.2 (bench/slow_clients.py); well-behaved ones from 127.0.0.1 must be answered, every one.
Latencies are printed, never asserted (bench/slowclients measures them).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.slow_clients import est_probe, healthz_probe, scep_probe, slow_clients
from scep.client import ScepHttpClient
from tests.test_est_auth_matrix import PASSWORD, add_est_user
from tests.test_serve import Server, child_env, free_ports, init_data_dir, start_server, stop_server

pytestmark = pytest.mark.slow

CHALLENGE = "slow-clients-test"
DEADLINE = 3  # seconds: head, handshake and body deadlines of the server under test
PER_ADDRESS = 40  # connections one address may hold per worker
WORKERS = 2
EVENTUALLY = 30.0  # generous bound for "the server closes it" (never a timing assertion on DEADLINE)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("slow-clients")
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port, child_env(), key_type="rsa2048", extra=("--scep-challenge", CHALLENGE))
    env = child_env(
        GATEWAY_LISTEN_HEADER_TIMEOUT_SECONDS=str(DEADLINE),
        GATEWAY_LISTEN_TLS_HANDSHAKE_TIMEOUT_SECONDS=str(DEADLINE),
        GATEWAY_LISTEN_BODY_TIMEOUT_SECONDS=str(DEADLINE),
        GATEWAY_LISTEN_MAX_CONNECTIONS_PER_ADDRESS=str(PER_ADDRESS),
    )
    running = start_server(data_dir, workdir, env=env, http_port=http_port, workers=WORKERS)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def secret(server: Server) -> str:
    add_est_user(server.data_dir, "probe")
    return PASSWORD


def _tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by EVENTUALLY)."""
    sock.settimeout(EVENTUALLY)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_other_clients_are_answered_while_a_thousand_slow_connections_are_held(server: Server, secret: str) -> None:
    ca = str(server.ca_pem)
    ra, _chain = ScepHttpClient(f"http://127.0.0.1:{server.http_port}/scep", timeout=10).get_ca_certs()
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(2)]
    probes = [
        healthz_probe(server.http_port, None),
        healthz_probe(server.https_port, ca),
        scep_probe(server.http_port, ra, CHALLENGE, keys),
        est_probe(server.https_port, ca, "probe", secret),
    ]
    with slow_clients(server.http_port, server.https_port, 200) as held:  # 5 kinds: 1,000 connections
        time.sleep(DEADLINE + 1)  # past the first deadlines: slow clients are being closed and re-opened
        for probe, times in zip(probes, (20, 20, 5, 5), strict=True):
            probe.run(times)
        stats = vars(held.stats)
    for probe in probes:
        print(probe.summary())
    print("slow clients:", stats)
    assert [probe.failures for probe in probes] == [[], [], [], []]
    assert stats["refused"] > 0  # the per-address cap turned most of them away
    assert stats["closed_by_server"] > 0  # and the deadlines closed the ones it took


@pytest.mark.parametrize(
    ("kind", "opening"),
    [
        pytest.param("head", b"GET /healthz HTTP/1.1\r\nHost", id="plain-head-trickle"),
        pytest.param("tls-head", b"GET /healthz HTTP/1.1\r\nHost", id="tls-head-trickle"),
        pytest.param("tls-idle", b"", id="idle-after-handshake"),
    ],
)
def test_a_request_head_that_does_not_arrive_is_closed(server: Server, kind: str, opening: bytes) -> None:
    port = server.http_port if kind == "head" else server.https_port
    sock = socket.create_connection(("127.0.0.1", port), 5)
    if kind != "head":
        sock = _tls().wrap_socket(sock)
    with sock:
        sock.sendall(opening)
        started = time.monotonic()
        assert closed_by_server(sock) == b""  # closed without a word: no request was received
        print(f"{kind}: closed after {time.monotonic() - started:.1f} s")


def test_a_tcp_connection_that_never_starts_tls_is_closed(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.https_port), 5) as sock:
        assert closed_by_server(sock) == b""


def test_a_body_that_does_not_arrive_in_time_is_408_and_the_connection_closes(server: Server) -> None:
    with _tls().wrap_socket(socket.create_connection(("127.0.0.1", server.https_port), 5)) as sock:
        sock.sendall(
            b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\r\n"
            b"Content-Length: 1000\r\n\r\nMII"
        )
        sock.settimeout(0.5)
        received = b""
        deadline = time.monotonic() + EVENTUALLY
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"a")  # a byte now and then: never the whole body
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]


def test_one_address_holds_at_most_its_share_of_connections(server: Server) -> None:
    held = []
    try:
        for _ in range(PER_ADDRESS * WORKERS * 3):
            held.append(socket.create_connection(("127.0.0.1", server.http_port), 5, ("127.0.0.3", 0)))
        time.sleep(1)
        closed = 0
        for sock in held:
            sock.settimeout(0.05)
            try:
                if sock.recv(1) == b"":
                    closed += 1
            except TimeoutError:
                pass
            except OSError:
                closed += 1
        assert closed >= PER_ADDRESS * WORKERS  # beyond the cap, the gateway closed them at once
        assert healthz_probe(server.http_port, None).send() == ""  # another address is served meanwhile
    finally:
        for sock in held:
            sock.close()


def test_tls_connections_end_with_close_notify(server: Server) -> None:
    raw = socket.create_connection(("127.0.0.1", server.https_port), 5)
    with _tls().wrap_socket(raw, suppress_ragged_eofs=False) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(10)
        received = b""
        while chunk := sock.recv(4096):  # SSLEOFError here means the server left without close_notify
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")
