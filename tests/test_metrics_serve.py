"""/metrics through the real server: `gateway serve --workers 2`, so two HTTP and two HTTPS workers under
two arbiters count in their own processes and every scrape adds them up.

Real SCEP and EST enrollments are made with the project's own clients (scep.client, est.client), with a
refusal of each; both listeners are then scraped and parsed with prometheus_client's parser. The node
allows 127.0.0.1/32 only (`metrics.allowed_addresses`): a client on 127.0.0.2 is refused, and gets in
with an admin token over HTTPS. Last, a worker is killed: gunicorn starts another, and the counts of the
dead one stay in every scrape. Traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from est.client import EstClient, EstClientError
from scep import client as scep_client
from scep.asn1 import PkiStatus
from tests.support import ec_key, rsa_key, subject
from tests.test_serve import (
    Server,
    child_env,
    descendants,
    fetch,
    free_ports,
    gateway_command,
    init_data_dir,
    start_server,
    stop_server,
    tls_context,
)

pytestmark = pytest.mark.slow

CHALLENGE = "metrics-serve-challenge"
SCEP_ENROLLMENTS = 4
EST_ENROLLMENTS = 2
OUTSIDER = "127.0.0.2"  # on loopback, but not in the node's allow-list


@dataclass(frozen=True)
class Node:
    server: Server
    est_user: str
    est_password: str
    token: str

    @property
    def metrics_dir(self) -> Path:
        """The run's multiprocess directory: where the workers' memory-mapped count files are."""
        for process in descendants(self.server.process.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{process.pid}/maps").read_text().splitlines():
                    path = Path(line.split()[-1])
                    if path.suffix == ".db" and path.parent.name.startswith("gateway-metrics-"):
                        return path.parent
        raise AssertionError("no worker has a metrics file mapped")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    workdir = tmp_path_factory.mktemp("metrics-serve")
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port, extra=["--scep-challenge", CHALLENGE])
    user = gateway_command("est-user", "add", "metrics-dev", "--generate", "--data-dir", str(data_dir))
    assert user.returncode == 0, user.stderr
    token = gateway_command("admin-token", "add", "metrics-reader", "--data-dir", str(data_dir))
    assert token.returncode == 0, token.stderr
    env = child_env(GATEWAY_METRICS_ALLOWED_ADDRESSES="127.0.0.1/32")
    server = start_server(data_dir, workdir, env=env, http_port=http_port, workers=2)
    try:
        running = Node(server, "metrics-dev", user.stdout.strip(), token.stdout.strip())
        directory = running.metrics_dir  # wait_ready's /healthz made both listeners' workers count
        yield running
    finally:
        assert stop_server(server) == 0, server.stderr_text()
    assert not directory.exists()  # the run's counts go with it


def get_metrics(
    node: Node, *, tls: bool, source: str = "127.0.0.1", token: str | None = None
) -> tuple[int, str, dict[str, str]]:
    """GET /metrics from `source` over HTTP or HTTPS: status, body, headers."""
    server = node.server
    address = ("127.0.0.1", server.https_port if tls else server.http_port)
    connection: http.client.HTTPConnection
    if tls:
        context = tls_context(server.ca_pem)
        connection = http.client.HTTPSConnection(*address, context=context, timeout=10, source_address=(source, 0))
    else:
        connection = http.client.HTTPConnection(*address, timeout=10, source_address=(source, 0))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def scrape(node: Node, *, tls: bool) -> list[Sample]:
    status, body, headers = get_metrics(node, tls=tls)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return [sample for family in text_string_to_metric_families(body) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def enrolled(node: Node) -> None:
    """SCEP enrollments on the HTTP listener and EST ones on HTTPS, each with one refusal."""
    server = node.server
    scep = scep_client.ScepHttpClient(f"http://127.0.0.1:{server.http_port}/scep", timeout=10)
    for n in range(SCEP_ENROLLMENTS):
        result = scep_client.enroll(scep, key=rsa_key(fresh=True), subject=subject(f"scep-{n}"), challenge=CHALLENGE)
        assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    refused = scep_client.enroll(scep, key=rsa_key(fresh=True), subject=subject("scep-x"), challenge="wrong")
    assert refused.status is PkiStatus.FAILURE
    url = f"https://127.0.0.1:{server.https_port}"
    with EstClient(url, server.ca_pem, username=node.est_user, password=node.est_password) as est:
        for n in range(EST_ENROLLMENTS):
            est.enroll_with_key(ec_key(), subject(f"est-{n}"))
    with (
        EstClient(url, server.ca_pem, username=node.est_user, password="wrong") as est,
        pytest.raises(EstClientError, match="401"),
    ):
        est.enroll_with_key(ec_key(), subject("est-x"))
    # A request is counted as its answer closes, just after the client has it: wait until the access log,
    # written right after the count, shows every answer.
    wait_for_answers(
        server,
        {
            ("POST", "/scep", 200): SCEP_ENROLLMENTS + 1,
            ("POST", "/.well-known/est/simpleenroll", 200): EST_ENROLLMENTS,
            ("POST", "/.well-known/est/simpleenroll", 401): 1,
        },
    )


def wait_for_answers(server: Server, expected: dict[tuple[str, str, int], int], seconds: float = 5.0) -> None:
    """Until the access log holds `expected` answers of each (method, path, status)."""
    deadline = time.monotonic() + seconds
    while True:
        seen: collections.Counter[tuple[str, str, int]] = collections.Counter()
        for line in server.stderr_text().splitlines():
            if line.startswith("{") and '"gateway.access"' in line:
                record = json.loads(line)
                seen[(record["method"], record["path"], record["status"])] += 1
        if all(seen[key] >= count for key, count in expected.items()):
            return
        assert time.monotonic() < deadline, f"answers not logged: {expected} (seen {dict(seen)})"
        time.sleep(0.05)


def test_every_worker_of_both_listeners_is_counted(node: Node, enrolled: None) -> None:
    for tls in (False, True):  # either listener, whichever worker answers: the same counts
        samples = scrape(node, tls=tls)
        assert value(samples, "gateway_certificates_issued_total", profile="default", protocol="scep") == (
            SCEP_ENROLLMENTS
        )
        assert value(samples, "gateway_certificates_issued_total", profile="default", protocol="est") == (
            EST_ENROLLMENTS
        )
        scep_issued = {"protocol": "scep", "operation": "PKCSReq", "profile": "default", "outcome": "issued"}
        assert value(samples, "gateway_requests_total", **scep_issued) == SCEP_ENROLLMENTS
        assert value(samples, "gateway_request_duration_seconds_bucket", le="+Inf", **scep_issued) == SCEP_ENROLLMENTS
        assert value(samples, "gateway_request_duration_seconds_sum", **scep_issued) > 0
        refused = {"protocol": "scep", "operation": "PKCSReq", "outcome": "failure:badRequest"}
        assert value(samples, "gateway_requests_total", **refused) == 1
        est_issued = {"protocol": "est", "operation": "simpleenroll", "profile": "default", "outcome": "issued"}
        assert value(samples, "gateway_requests_total", **est_issued) == EST_ENROLLMENTS
        assert value(samples, "gateway_requests_total", protocol="est", outcome="refused:unauthorized") >= 1
        assert value(samples, "gateway_admission_decisions_total", protocol="scep", decision="admitted") == (
            SCEP_ENROLLMENTS + 1
        )
        assert value(samples, "gateway_database_up") == 1
        assert value(samples, "gateway_database_errors_total") == 0
        assert value(samples, "gateway_devices", state="legacy") == SCEP_ENROLLMENTS
        assert value(samples, "gateway_devices", state="native") == EST_ENROLLMENTS
    counted_by = {path.stem.rsplit("_", 1)[1] for path in node.metrics_dir.glob("counter_*.db")}
    assert len(counted_by) >= 2, counted_by  # at least one worker of each arbiter
    assert node.metrics_dir.stat().st_mode & 0o777 == 0o700


def test_the_expiry_gauges_are_the_certificates_not_after(node: Node) -> None:
    samples = scrape(node, tls=True)
    data_dir = node.server.data_dir
    for role, path in (("ca", "ca/ca.crt"), ("ra", "ra/ra.crt"), ("tls", "tls/server.crt")):
        certificate = x509.load_pem_x509_certificate((data_dir / path).read_bytes())
        shown = [
            s for s in samples if s.name == "gateway_certificate_expiry_timestamp_seconds" and s.labels["role"] == role
        ]
        assert [(s.labels["subject"], s.value) for s in shown] == [
            (certificate.subject.rfc4514_string(), certificate.not_valid_after_utc.timestamp())
        ]


def test_an_address_not_allowed_is_refused_and_an_admin_token_over_https_opens_it(node: Node) -> None:
    assert get_metrics(node, tls=False, source=OUTSIDER)[:2] == (403, "forbidden\n")
    assert get_metrics(node, tls=False, source=OUTSIDER, token=node.token)[0] == 403  # never a token over HTTP
    assert get_metrics(node, tls=True, source=OUTSIDER)[0] == 403
    status, _body, headers = get_metrics(node, tls=True, source=OUTSIDER, token="not-a-token")
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    status, body, _headers = get_metrics(node, tls=True, source=OUTSIDER, token=node.token)
    assert status == 200
    assert any(f.name == "gateway_requests" for f in text_string_to_metric_families(body))
    logged = node.server.stderr_text()
    assert f"client {OUTSIDER} is not in metrics.allowed_addresses and sent no admin token" in logged
    assert "over plain HTTP" in logged


def test_a_killed_worker_is_replaced_and_its_counts_stay(node: Node, enrolled: None) -> None:
    before = scrape(node, tls=False)
    http_workers = [p.pid for p in descendants(node.server.process.pid) if "worker [gateway-http]" in p.cmdline]
    assert len(http_workers) == 2, http_workers
    directory = node.metrics_dir
    victim = next(pid for pid in http_workers if (directory / f"counter_{pid}.db").exists())
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        workers = [p.pid for p in descendants(node.server.process.pid) if "worker [gateway-http]" in p.cmdline]
        if len(workers) == 2 and victim not in workers:
            break
        assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
        time.sleep(0.1)
    (replacement,) = set(workers) - set(http_workers)
    answered_by(node, replacement, deadline)
    after = scrape(node, tls=False)
    for name, labels in (
        ("gateway_certificates_issued_total", {"protocol": "scep"}),
        ("gateway_requests_total", {"protocol": "scep", "operation": "PKCSReq"}),
        ("gateway_request_duration_seconds_count", {"protocol": "scep"}),
    ):
        assert value(after, name, **labels) == value(before, name, **labels), name
    assert (directory / f"counter_{victim}.db").exists()  # its counts stay
    assert not list(directory.glob(f"gauge_live*_{victim}.db"))  # its in-flight gauge went (child_exit)
    assert value(after, "gateway_requests_in_flight") == 1  # this scrape


def answered_by(node: Node, pid: int, deadline: float) -> None:
    """Send /healthz on new connections until worker `pid` answers one: it has booted and serves."""
    while True:
        request_id = uuid.uuid4().hex[:16]
        assert fetch(node.server.http_port, "/healthz", headers={"X-Request-ID": request_id}).status == 200
        if node.server.access_record(request_id)["pid"] == pid:
            return
        assert time.monotonic() < deadline, f"worker {pid} answered no request"
