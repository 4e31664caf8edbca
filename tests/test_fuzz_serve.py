"""A few hundred mutated SCEP and EST requests over real HTTP to `gateway serve` (gunicorn): no 5xx but
503, and the server still answers /healthz afterwards. The mutations are tests/fuzzing's, over the
same fuzz data directory (made in-process, then served); EST goes over real TLS, with the client
certificate of the case when it is one issued at set-up."""

from __future__ import annotations

import collections
import http.client
import json
import random
import ssl
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.fuzzing.corpus import crash_site, open_crash_sites
from tests.fuzzing.est_target import EstTarget
from tests.fuzzing.gateway_env import FuzzCase, FuzzGateway, Outcome
from tests.fuzzing.runner import make_case
from tests.fuzzing.scep_target import ScepTarget
from tests.test_serve import Server, fetch, start_server, stop_server, tls_context

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]
SCEP_REQUESTS = 200
EST_REQUESTS = 150
KNOWN = open_crash_sites()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, list[FuzzCase], dict[bytes, ssl.SSLContext]]]:
    """The fuzz data directory served by `gateway serve`, the cases to send, and a TLS context per
    client certificate issued at set-up."""
    workdir = tmp_path_factory.mktemp("fuzz-serve")
    env = FuzzGateway(workdir / "data")
    rng = random.Random(20261206)
    scep, est = ScepTarget(env), EstTarget(env)
    cases = [make_case(scep, rng) for _ in range(SCEP_REQUESTS)] + [make_case(est, rng) for _ in range(EST_REQUESTS)]
    contexts: dict[bytes, ssl.SSLContext] = {}
    for index, holder in enumerate(env.issued):
        cert, key = workdir / f"client{index}.pem", workdir / f"client{index}.key"
        cert.write_bytes(holder.certificate.public_bytes(Encoding.PEM))
        key.write_bytes(holder.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        key.chmod(0o600)
        contexts[holder.der] = tls_context(env.directory / "ca.pem", client=(cert, key))
    env.close()  # the server opens the directory on its own
    server = start_server(env.directory, workdir)
    try:
        yield server, cases, contexts
    finally:
        stop_server(server)


def send(server: Server, case: FuzzCase, contexts: dict[bytes, ssl.SSLContext], request_id: str) -> int:
    """One case over a real connection: SCEP on the HTTP listener, EST on HTTPS (with its client
    certificate when it is one of ours; a forged one has no key here and goes without)."""
    path = case.path + ("?" + case.query if case.query else "")
    headers = {k: v for k, v in case.headers.items() if v.isprintable()}
    headers["X-Request-Id"] = request_id
    if not case.https:
        return fetch(server.http_port, path, method=case.method, body=case.body, headers=headers).status
    context = contexts.get(case.client_cert or b"") or tls_context(server.ca_pem)
    reply = fetch(server.https_port, path, context=context, method=case.method, body=case.body, headers=headers)
    return reply.status


def crash_of(server: Server, request_id: str) -> str | None:
    """The traceback the server logged (JSON log) for the request `request_id`, if any."""
    for line in server.stderr_text().splitlines():
        if line.startswith("{") and request_id in line:
            record = json.loads(line)
            if record.get("request_id") == request_id and record.get("exception"):
                return str(record["exception"])
    return None


def test_no_5xx_over_real_http(served: tuple[Server, list[FuzzCase], dict[bytes, ssl.SSLContext]]) -> None:
    server, cases, contexts = served
    statuses: dict[str, collections.Counter[int]] = {"scep": collections.Counter(), "est": collections.Counter()}
    failures, known = [], collections.Counter[tuple[str, str]]()
    for index, case in enumerate(cases):
        request_id = f"fuzz-serve-{index}"
        try:
            status = send(server, case, contexts, request_id)
        except (OSError, http.client.HTTPException) as exc:
            # An early answer (413 to an over-long body) closes the connection while the body is still
            # being sent; the access log says what was answered. No answer at all is as bad as a 5xx.
            try:
                status = int(server.access_record(request_id, timeout=2.0)["status"])
            except AssertionError:
                failures.append(f"{case.note}: no answer ({exc!r})")
                continue
        statuses[case.target][status] += 1
        if 500 <= status < 600 and status != 503:
            site = crash_site(Outcome(status, crash_of(server, request_id) or "").signature)
            if site in KNOWN:  # an open corpus entry's crash, pinned by its strict xfail
                known[site] += 1
            else:
                failures.append(f"{case.note}: HTTP {status} at {site}")
    assert not failures, "\n".join(failures[:20]) + "\n" + server.stderr_text()[-6000:]
    assert sum(statuses["scep"].values()) == SCEP_REQUESTS and sum(statuses["est"].values()) == EST_REQUESTS
    assert statuses["scep"][200] >= SCEP_REQUESTS // 4, statuses  # CertReps, not only 400s
    assert statuses["est"][200] >= 3 and statuses["est"][401] >= 3, statuses
    assert fetch(server.http_port, "/healthz").status == 200
    assert fetch(server.https_port, "/healthz", context=tls_context(server.ca_pem)).status == 200
    assert server.process.poll() is None
