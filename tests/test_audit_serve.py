"""The audit trail through `gateway serve`: an enrollment, a refusal and an admin token's use each land
in the node's chain (and reach syslog over UDP), the configuration is recorded at start-up, and
`gateway audit verify`, run as a command, finds every chain intact.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.support import csr_pem, ec_key, make_csr, subject
from tests.test_serve import (
    Server,
    child_env,
    fetch,
    free_ports,
    gateway_command,
    init_data_dir,
    start_server,
    stop_server,
    tls_context,
)

pytestmark = pytest.mark.slow

NODE = "gw-audit-test"


@dataclass
class Served:
    server: Server
    syslog: socket.socket
    user: tuple[str, str]
    token: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server (one worker) whose audit records go into chain NODE and to a UDP syslog listener here;
    an EST user and an admin token made by the CLI before it starts (in the host name's chain)."""
    workdir = tmp_path_factory.mktemp("audit-serve")
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    added = gateway_command("est-user", "add", "probe", "--generate", "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stderr
    token = gateway_command("admin-token", "add", "ops", "--data-dir", str(data_dir))
    assert token.returncode == 0, token.stderr
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    env = child_env(GATEWAY_AUDIT_NODE=NODE, GATEWAY_AUDIT_SYSLOG=f"udp://127.0.0.1:{syslog.getsockname()[1]}")
    try:
        server = start_server(data_dir, workdir, env=env, http_port=http_port)
        try:
            yield Served(server, syslog, ("probe", added.stdout.strip()), token.stdout.strip())
        finally:
            assert stop_server(server) == 0, server.stderr_text()
    finally:
        syslog.close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _syslog_actions(listener: socket.socket, wanted: set[str], seconds: float = 10.0) -> dict[str, str]:
    """action → the datagram of its record, until every wanted action arrived (or the time is up)."""
    found: dict[str, str] = {}
    deadline = time.monotonic() + seconds
    while not wanted <= set(found) and time.monotonic() < deadline:
        listener.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            datagram = listener.recv(65535).decode()
        except TimeoutError:
            break
        action = datagram.split(" ", 6)[5]  # <PRI>1 TIME HOST APP PROCID MSGID - MSG
        found.setdefault(action, datagram)
    return found


def test_acts_through_the_server_land_in_a_verifiable_chain(served: Served) -> None:
    server = served.server
    context = tls_context(server.ca_pem)
    body = csr_pem(make_csr(ec_key(), subject("audited-device")))
    headers = {"Content-Type": "application/pkcs10"}
    enrolled = fetch(
        server.https_port,
        "/.well-known/est/simpleenroll",
        context=context,
        method="POST",
        body=body,
        headers={**headers, "Authorization": _basic(*served.user)},
    )
    assert enrolled.status == 200, enrolled.body
    refused = fetch(
        server.https_port,
        "/.well-known/est/simpleenroll",
        context=context,
        method="POST",
        body=body,
        headers={**headers, "Authorization": _basic("probe", "wrong-password")},
    )
    assert refused.status == 401
    summary = fetch(
        server.https_port,
        "/admin/api/migration/summary",
        context=context,
        headers={"Authorization": f"Bearer {served.token}"},
    )
    assert summary.status == 200

    acts = {"config.changed", "certificate.issued", "request.refused", "admin_token.used"}
    datagrams = _syslog_actions(served.syslog, acts)
    assert acts <= set(datagrams), datagrams
    assert all(f" {NODE} gateway-audit " in d and " - CEF:0|scep-est-gateway|" in d for d in datagrams.values())

    exported = CliRunner().invoke(main, ["audit", "export", "--node", NODE, "--data-dir", str(server.data_dir)])
    assert exported.exit_code == 0, exported.output
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    by_action = {r["action"]: r for r in records}
    assert acts <= set(by_action)
    assert by_action["config.changed"]["detail"]["first"] is True
    assert by_action["certificate.issued"]["actor"] == "est:probe"
    refusal = by_action["request.refused"]["detail"]
    assert (refusal["protocol"], refusal["kind"], refusal["client"]) == ("est", "unauthorized", "127.0.0.1")
    used = by_action["admin_token.used"]
    assert (used["actor"], used["detail"]["method"], used["detail"]["path"]) == (
        "admin-token:ops",
        "GET",
        "/admin/api/migration/summary",
    )

    verified = gateway_command("audit", "verify", "--json", "--data-dir", str(server.data_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    result = json.loads(verified.stdout)
    chains = {c["node"]: c for c in result["chains"]}
    assert result["intact"] is True and NODE in chains and len(chains) == 2  # the CLI's chain and the server's
    assert chains[NODE]["head"]["seq"] == len(records)
    assert all(not c["problems"] for c in chains.values())


def test_the_cli_writes_into_the_host_names_chain_before_the_server_started(served: Served) -> None:
    exported = CliRunner().invoke(main, ["audit", "export", "--data-dir", str(served.server.data_dir)])
    actions = [(r["node"], r["action"]) for r in map(json.loads, exported.stdout.splitlines())]
    host_chain = [action for node, action in actions if node != NODE]
    assert host_chain[:1] == ["issuer.added"]  # gateway init
    assert "est_user.created" in host_chain and "admin_token.created" in host_chain
