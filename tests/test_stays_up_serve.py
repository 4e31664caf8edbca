"""`gateway serve` stays up (issue 12), as a real process: a port in use, an arbiter killed, SIGTERM with a
request in flight, and a SQLite database that turns read-only and writable again while a worker dies.

The PostgreSQL counterpart (connections refused, then allowed again) is tests/test_database_outage_serve.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ec_key
from tests.test_est_auth_matrix import PASSWORD, add_est_user, certificate_of, csr_body, post
from tests.test_serve import (
    REPO,
    Server,
    child_env,
    children_of,
    fetch,
    free_ports,
    init_data_dir,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow

EVENTUALLY = 60.0  # bound for "it happens by itself" (never a timing assertion)
USER = "stays-up"


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + EVENTUALLY
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {EVENTUALLY:.0f} s: {what}")
        time.sleep(0.2)


def answers(port: int, path: str = "/healthz", context: ssl.SSLContext | None = None) -> int:
    """The status of one request, 0 when there is no answer."""
    try:
        return fetch(port, path, context=context, timeout=3).status
    except (OSError, Exception):
        return 0


def arbiter(server: Server, listener: str) -> int | None:
    """The pid of the listener's arbiter, None while there is none (gunicorn renames itself
    `gunicorn: master [gateway-<listener>]` once started)."""
    for pid in children_of(server.process.pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if f"[gateway-{listener}]" in cmdline or f"gateway.server {listener}" in cmdline:
                return pid
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stays-up")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[Server]:
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    add_est_user(data_dir, USER)
    running = start_server(data_dir, workdir, http_port=http_port, workers=2)
    try:
        yield running
    finally:
        stop_server(running)


def test_a_port_in_use_is_one_line_and_exit_1_at_once(server: Server, workdir: Path) -> None:
    (other_https,) = free_ports(1)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--data-dir", str(server.data_dir),
         "--http", f"127.0.0.1:{server.http_port}", "--https", f"127.0.0.1:{other_https}"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    print(f"refused in {time.monotonic() - started:.1f} s")
    assert done.returncode == 1
    assert done.stderr == f"Error: cannot listen on 127.0.0.1:{server.http_port}: address already in use\n"
    assert done.stdout == ""  # no banner: nothing was listening
    assert answers(other_https) == 0  # and the other port was let go


def test_a_killed_arbiter_is_started_again_and_the_other_listener_goes_on(server: Server) -> None:
    context = ssl.create_default_context(cafile=str(server.ca_pem))
    https_arbiter = arbiter(server, "https")
    assert https_arbiter is not None
    os.kill(https_arbiter, signal.SIGKILL)
    assert answers(server.http_port) == 200  # the plain-HTTP listener never stopped
    eventually(lambda: arbiter(server, "https") not in (None, https_arbiter), "a new https arbiter")
    eventually(lambda: answers(server.https_port, context=context) == 200, "the https listener answers again")
    assert server.process.poll() is None  # serve itself never exited
    assert "the https listener exited with status -9; starting it again" in server.stderr_text()


def test_sigterm_lets_a_request_in_flight_finish(workdir: Path) -> None:
    data_dir = workdir / "drain"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    add_est_user(data_dir, USER)
    draining = start_server(data_dir, workdir, http_port=http_port)
    try:
        body = csr_body(ec_key(), "drained")
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        context = ssl.create_default_context(cafile=str(draining.ca_pem))
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", draining.https_port), 10), server_hostname="127.0.0.1"
        ) as sock:
            head = (
                "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Basic {token}\r\nContent-Type: application/pkcs10\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            sock.sendall(head.encode() + body[:20])  # in flight: the body is not all there yet
            time.sleep(1)
            draining.process.send_signal(signal.SIGTERM)
            time.sleep(1)
            sock.sendall(body[20:])
            sock.settimeout(30)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 "), received[:300]
        assert draining.process.wait(timeout=30) == 0
        assert answers(draining.https_port, context=context) == 0  # and it stopped
    finally:
        stop_server(draining)


def _enroll(server: Server, cn: str) -> int:
    reply = post(server, "simpleenroll", csr_body(ec_key(), cn), auth=(USER, PASSWORD))
    return reply.status


def _readyz(server: Server) -> dict[str, object]:
    reply = fetch(server.http_port, "/readyz", timeout=10)
    body: dict[str, object] = json.loads(reply.body)
    body["http_status"] = reply.status
    return body


def _chattr(flag: str, files: list[Path]) -> None:
    done = subprocess.run(["chattr", flag, *map(str, files)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"chattr {flag} failed (needs root and a file system with attributes): {done.stderr}"


def test_a_read_only_sqlite_database_is_not_ready_503_and_heals_with_a_worker_killed(workdir: Path) -> None:
    data_dir = workdir / "readonly"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    add_est_user(data_dir, USER)
    node = start_server(data_dir, workdir, http_port=http_port, workers=2)
    # The database and its write-ahead log (not its -shm index: SQLite maps that, and a write to an
    # immutable mapping is a SIGBUS, which is no way a disk turns read-only).
    database = [data_dir / name for name in ("gateway.db", "gateway.db-wal")]
    try:
        assert _enroll(node, "before") == 200
        assert _readyz(node)["status"] == "ready"
        # Made read-only (the immutable attribute: as root, permissions would not stop a write).
        _chattr("+i", [path for path in database if path.exists()])
        try:
            eventually(lambda: _readyz(node)["http_status"] == 503, "readyz says not ready")
            ready = _readyz(node)
            checks = ready["checks"]
            assert isinstance(checks, dict)
            # SQLite reports an immutable write-ahead log as a failed write (SQLITE_IOERR_WRITE), not as
            # SQLITE_READONLY: either way the write did not happen.
            assert checks.pop("database") in ("read-only", "not writable")
            assert checks == {"keys": "ok", "listener_http": "ok", "listener_https": "ok"}
            refused = post(node, "simpleenroll", csr_body(ec_key(), "during"), auth=(USER, PASSWORD))
            assert refused.status == 503 and refused.headers.get("retry-after"), refused
            assert fetch(node.http_port, "/healthz").status == 200  # alive all along
            # A worker dies during the outage: its replacement starts, and answers.
            https = arbiter(node, "https")
            assert https is not None
            workers = children_of(https)
            os.kill(workers[0], signal.SIGKILL)
            eventually(lambda: len(children_of(https)) == 2 and workers[0] not in children_of(https), "a new worker")
            for _ in range(4):  # whichever worker answers
                assert post(node, "simpleenroll", csr_body(ec_key(), "still"), auth=(USER, PASSWORD)).status == 503
        finally:
            _chattr("-i", [path for path in database if path.exists()])
        eventually(lambda: _readyz(node)["status"] == "ready", "ready again once writable")
        eventually(lambda: _enroll(node, "after") == 200, "enrollments again")
        # A worker that opened a connection while the file was read-only (the replacement did, at its
        # start) gets SQLITE_READONLY from it once, answers that request 503 with Retry-After and drops
        # the connection (shared_ca.storage.database): from then on every worker enrolls.
        eventually(
            lambda: [_enroll(node, f"after-{n}") for n in range(4)] == [200] * 4, "every worker enrolls again"
        )
        assert node.process.poll() is None and arbiter(node, "https") == https  # healed without a restart
        certificate_of(post(node, "simpleenroll", csr_body(ec_key(), "after-2"), auth=(USER, PASSWORD)))
    finally:
        stop_server(node)
