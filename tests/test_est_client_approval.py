"""`gateway client est enroll --wait` against a real `gateway serve` whose labels hold requests for approval.

The client runs as its own process, the test approves its request with `gateway request approve
ID` (found with `gateway request list --format json`), and checks that the client collects the
certificate and that the server queued ONE request however often the client asked: after a 202 the
client sends the same request again (RFC 7030 §4.2.3). Label `held` answers 202 with Retry-After
1 s; `held-long` and `held-linked` with more than gunicorn's 15 s keep-alive (gateway/server.py),
so the server closes the client's kept-alive connection while the client waits, and the client
must send its retry on a new connection (with a CSR rebuilt for it when the CSR is linked to the
TLS channel, RFC 7030 §3.5).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from est.client_transport import closed_by_peer
from shared_ca.keys import load_private_key, public_key_bytes
from tests.test_serve import REPO, Server, child_env, gateway_command, openssl, start_server, stop_server, tls_context

pytestmark = pytest.mark.slow

USER, PASSWORD = "approval-test", "approval-password"
KEEPALIVE_SECONDS = 4  # listen.header_timeout_seconds, gunicorn's keepalive (gateway/server.py); 15 by default
LONG_RETRY_AFTER = KEEPALIVE_SECONDS + 2
PROFILES = f"""
[listen]
header_timeout_seconds = {KEEPALIVE_SECONDS}

[profiles.held]
approval = "manual"
est_retry_after_seconds = 1

[profiles.held-long]
approval = "manual"
est_retry_after_seconds = {LONG_RETRY_AFTER}

[profiles.held-linked]
approval = "manual"
est_pop_linking = true
est_retry_after_seconds = {LONG_RETRY_AFTER}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("est-approval")
    data_dir = workdir / "data"
    done = gateway_command("init", "--data-dir", str(data_dir), "--ca-key-type", "p256")
    assert done.returncode == 0, done.stderr
    with (data_dir / "config.toml").open("a") as config:
        config.write(PROFILES)
    labels = [arg for label in ("held", "held-long", "held-linked") for arg in ("--label", label)]
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "est-user",
            "add",
            USER,
            *labels,
            "--data-dir",
            str(data_dir),
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    running = start_server(data_dir, workdir)
    yield running
    assert stop_server(running) == 0, running.stderr_text()


@contextlib.contextmanager
def enrolling(server: Server, label: str, cn: str, out: Path, *, wait: float, link: str) -> Iterator[Client]:
    """`gateway client est enroll --wait` running in its own process; stopped (by its pid) if the test fails."""
    command = [sys.executable, "-m", "gateway", "client", "est", "enroll"]
    command += ["--url", f"https://127.0.0.1:{server.https_port}"]
    command += ["--cacert", str(server.ca_pem), "--label", label, "--user", USER, "--password-stdin"]
    command += ["--cn", cn, "--out", str(out), "--wait", str(wait), "--tls-unique", link]
    password_file = out.with_suffix(".password")
    password_file.write_text(PASSWORD + "\n")
    with password_file.open() as password:
        process = subprocess.Popen(
            command,
            stdin=password,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=child_env(),
            text=True,
        )
    try:
        yield Client(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


class Client:
    """The client process: its exit status and output once it ended."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def running(self) -> bool:
        """True while the client waits; an AssertionError with its output when it ended too early."""
        if self.process.poll() is None:
            return True
        _stdout, stderr = self.process.communicate()
        raise AssertionError(f"the client ended with status {self.process.returncode}: {stderr}")

    def finish(self, timeout: float) -> tuple[int, str]:
        """(exit status, stderr) when the client has ended within `timeout` seconds."""
        try:
            _stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the client did not end within {timeout:g} s") from None
        return self.process.returncode, stderr


def pending(server: Server, subject: str) -> list[dict[str, Any]]:
    """The pending requests for `subject`, from `gateway request list --format json`."""
    done = gateway_command("request", "list", "--data-dir", str(server.data_dir), "--format", "json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return [row for row in rows if row.get("subject") == subject]


def approve(server: Server, request_id: object) -> None:
    done = gateway_command("request", "approve", str(request_id), "--data-dir", str(server.data_dir))
    assert done.returncode == 0, done.stderr


def answers(server: Server, label: str, status: int) -> int:
    """How many simpleenroll requests on `label` the server answered with `status` (its access log)."""
    path = f"/.well-known/est/{label}/simpleenroll"
    count = 0
    for line in server.stderr_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "gateway.access" and (record.get("path"), record.get("status")) == (
                path,
                status,
            ):
                count += 1
    return count


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        time.sleep(0.3)


def assert_issued(server: Server, out: Path, cn: str) -> None:
    """`out` holds a certificate for `cn` that openssl verifies against the CA, for the key beside it."""
    done = openssl("verify", "-CAfile", str(server.ca_pem), str(out))
    assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done.stdout + done.stderr
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert cert.subject.rfc4514_string() == f"CN={cn}"
    key = load_private_key(out.with_suffix(".key"), None)
    assert public_key_bytes(cert.public_key()) == public_key_bytes(key.public_key())


def test_wait_collects_the_certificate_of_one_queued_request(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "held.pem"
    with enrolling(server, "held", "held-1", out, wait=60, link="no") as client:
        wait_for(lambda: client.running() and pending(server, "CN=held-1"), 30, "the request is queued")
        wait_for(lambda: client.running() and answers(server, "held", 202) >= 3, 30, "the client retried twice")
        queued = pending(server, "CN=held-1")
        assert len(queued) == 1, queued  # three requests, one CSR: one queued request
        approve(server, queued[0]["id"])
        status, stderr = client.finish(30)
    assert status == 0, stderr
    assert_issued(server, out, "held-1")
    assert pending(server, "CN=held-1") == []


@pytest.mark.parametrize(
    ("label", "link"),
    [pytest.param("held-long", "no", id="plain"), pytest.param("held-linked", "yes", id="linked-csr")],
)
def test_wait_outlasts_the_servers_keepalive(server: Server, tmp_path: Path, label: str, link: str) -> None:
    cn, out = f"{label}-1", tmp_path / f"{label}.pem"
    probe = http.client.HTTPSConnection("127.0.0.1", server.https_port, context=tls_context(server.ca_pem))
    probe.request("GET", "/healthz")  # a kept-alive connection, idle from now on like the client's will be
    assert probe.getresponse().read()
    with enrolling(server, label, cn, out, wait=2 * LONG_RETRY_AFTER + 5, link=link) as client:
        wait_for(lambda: client.running() and pending(server, f"CN={cn}"), 30, "the request is queued")
        approve(server, pending(server, f"CN={cn}")[0]["id"])
        status, stderr = client.finish(LONG_RETRY_AFTER + 30)
    assert status == 0, stderr
    assert_issued(server, out, cn)
    assert answers(server, label, 202) == 1  # the retry after the idle close was not queued anew
    assert pending(server, f"CN={cn}") == []
    with pytest.raises((OSError, http.client.HTTPException)) as closed:  # the server did close idle connections
        probe.request("GET", "/healthz")
        probe.getresponse()
    assert closed_by_peer(closed.value)
    probe.close()
