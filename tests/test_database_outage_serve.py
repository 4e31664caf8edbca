"""A PostgreSQL outage under the real server: EST answers 503 with Retry-After and issues nothing,
and once the database is back the node serves again by itself (DESIGN.md, "Staying up").

The server reaches PostgreSQL through a TCP relay on 127.0.0.1 that the test owns: stopping the relay
closes its port and cuts every open connection, as a database host going away would; starting it
again on the same port brings the database back. Runs where the PostgreSQL tests run
(GATEWAY_TEST_DATABASE_URL, the `postgres` marker); its SQLite counterpart, a database that cannot
be written, is in tests/test_http_errors_serve.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared_ca.storage.db import create_store_engine
from tests.conftest import PG_URL, pg_schema_url
from tests.support import ec_key, issued_count
from tests.test_est_auth_matrix import PASSWORD, add_est_user, certificate_of, csr_body, post
from tests.test_serve import (
    Server,
    child_env,
    children_of,
    fetch,
    free_ports,
    gateway_command,
    spawn_server,
    start_server,
    stop_server,
)
from tests.test_stays_up_serve import arbiter, eventually

pytestmark = [pytest.mark.slow, pytest.mark.postgres]  # collected only with PostgreSQL (tests/conftest.py)

USER = "outage-user"


class Relay:
    """A TCP relay 127.0.0.1:port -> the database; `stop` closes the port and cuts every connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._listener is not None:
            return  # running already
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            cut = list(self._open)
        for sock in cut:  # each connection's own thread closes it once both directions ended
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # stopped
                return
            threading.Thread(target=self._relay, args=(client, listener), daemon=True).start()

    def _relay(self, client: socket.socket, listener: socket.socket) -> None:
        """Carry one connection both ways until either side (or `stop`) ends it; then close both ends."""
        with contextlib.closing(client):
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return
            with contextlib.closing(upstream):
                upstream.settimeout(None)
                with self._lock:
                    self._open.update((client, upstream))
                if self._listener is not listener:  # stopped while this one was being connected
                    for sock in (client, upstream):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join()
                with self._lock:
                    self._open.difference_update((client, upstream))


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy `source` to `sink` until `source` ends; then end both directions of both."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def role() -> str:
    """The PostgreSQL role the gateway logs in as: its own, so a test can make its sessions read-only."""
    return f"gw_outage_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def schema(role: str) -> Iterator[str]:
    """A PostgreSQL schema of the module's own, owned by `role`; both dropped at the end."""
    name = f"t_outage_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
            conn.execute(text(f'CREATE SCHEMA "{name}" AUTHORIZATION "{role}"'))
        yield name
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
            conn.execute(text(f'DROP ROLE "{role}"'))
    finally:
        admin.dispose()


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    """The relay to the test database, running."""
    url = make_url(PG_URL)
    running = Relay((url.host or "127.0.0.1", url.port or 5432))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, schema: str, role: str, relay: Relay) -> Iterator[Server]:
    """`gateway serve` on a data directory whose database is PostgreSQL, reached through the relay."""
    workdir = tmp_path_factory.mktemp("outage")
    data_dir = workdir / "data"
    through_relay = make_url(pg_schema_url(schema)).set(username=role, host="127.0.0.1", port=relay.port)
    (http_port,) = free_ports(1)
    done = gateway_command(
        "init",
        "--data-dir",
        str(data_dir),
        "--ca-key-type",
        "p256",
        "--public-base-url",
        f"http://127.0.0.1:{http_port}",
        "--database-url",
        through_relay.render_as_string(hide_password=False),
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    add_est_user(data_dir, USER)
    running = start_server(data_dir, workdir, http_port=http_port)
    try:
        yield running
    finally:
        stop_server(running)


def test_est_is_503_while_the_database_is_down_and_serves_again_when_it_is_back(
    server: Server, relay: Relay, schema: str
) -> None:
    direct = create_store_engine(pg_schema_url(schema))  # counts past the relay
    try:
        certificate_of(post(server, "simpleenroll", csr_body(ec_key(), "before-outage"), auth=(USER, PASSWORD)))
        before = issued_count(direct)
        body = csr_body(ec_key(), "during-outage")
        relay.stop()
        try:
            for _attempt in range(2):
                answer = post(server, "simpleenroll", body, auth=(USER, PASSWORD))
                assert answer.status == 503, answer
                assert answer.headers.get("content-type", "").startswith("text/plain"), answer.headers
                assert answer.headers.get("retry-after", "").isdigit(), answer.headers
                assert "psycopg" not in answer.text and "5432" not in answer.text
        finally:
            relay.start()  # the same port: the database is back
        assert issued_count(direct) == before
        certificate_of(post(server, "simpleenroll", body, auth=(USER, PASSWORD)))
        assert issued_count(direct) == before + 1
    finally:
        direct.dispose()


# -- issue 12: not ready, a worker killed, started while away, read-only sessions -------------------


def _readyz(server: Server) -> dict[str, Any]:
    reply = fetch(server.http_port, "/readyz", timeout=10)
    body: dict[str, Any] = json.loads(reply.body)
    body["http_status"] = reply.status
    return body


def test_a_worker_killed_during_the_outage_comes_back_answering_503(server: Server, relay: Relay) -> None:
    https = arbiter(server, "https")
    assert https is not None
    relay.stop()
    try:
        eventually(lambda: _readyz(server)["http_status"] == 503, "not ready")
        assert _readyz(server)["checks"]["database"] == "unreachable"
        workers = children_of(https)
        os.kill(workers[0], signal.SIGKILL)
        eventually(lambda: len(children_of(https)) == 1 and workers[0] not in children_of(https), "a new worker")
        answer = post(server, "simpleenroll", csr_body(ec_key(), "killed-during"), auth=(USER, PASSWORD))
        assert answer.status == 503 and answer.headers.get("retry-after"), answer
        assert fetch(server.http_port, "/healthz").status == 200
    finally:
        relay.start()
    eventually(lambda: _readyz(server)["status"] == "ready", "ready once the database is back")
    # The new worker tries its database again at most every 2 s: whichever worker answers, soon 200.
    eventually(lambda: _enroll(server, "killed-after") == 200, "enrollments again")
    assert server.process.poll() is None and arbiter(server, "https") == https  # no restart


def test_a_node_started_while_its_database_is_away_serves_once_it_is_back(
    tmp_path: Path, schema: str, relay: Relay, server: Server
) -> None:
    relay.stop()  # `server` made the schema and its data directory; this node shares them
    node = spawn_server(server.data_dir, tmp_path)
    try:
        eventually(lambda: _status(node.http_port, "/healthz") == 200, "the node answers while the database is away")
        assert _readyz(node)["http_status"] == 503
        answer = post(node, "simpleenroll", csr_body(ec_key(), "started-away"), auth=(USER, PASSWORD))
        assert answer.status == 503 and answer.headers.get("retry-after"), answer
        assert "the database is unavailable (" in node.stderr_text()  # the supervisor said so, and went on
        relay.start()
        eventually(lambda: _readyz(node)["status"] == "ready", "ready once the database is back")
        eventually(lambda: _enroll(node, "started-back") == 200, "enrollments once the database is back")
        assert node.process.poll() is None
    finally:
        relay.start()
        stop_server(node)


def test_read_only_sessions_are_not_ready(server: Server, relay: Relay, role: str) -> None:
    """What a PostgreSQL in recovery refuses (any write in a read-only transaction), here by making every
    new session of the gateway's role read-only: not ready, 503, and ready again when writable."""
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'ALTER ROLE "{role}" SET default_transaction_read_only = on'))
        relay.stop()  # cut the pooled sessions: the next ones are read-only
        relay.start()
        eventually(lambda: _readyz(server)["checks"]["database"] == "read-only", "read-only")
        assert _readyz(server)["http_status"] == 503
        answer = post(server, "simpleenroll", csr_body(ec_key(), "read-only"), auth=(USER, PASSWORD))
        assert answer.status == 503, answer
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'ALTER ROLE "{role}" RESET default_transaction_read_only'))
        admin.dispose()
        relay.stop()
        relay.start()
    eventually(lambda: _readyz(server)["status"] == "ready", "ready once writable")
    eventually(lambda: _enroll(server, "writable") == 200, "enrollments once writable")


def _status(port: int, path: str) -> int:
    try:
        return fetch(port, path, timeout=3).status
    except (OSError, http.client.HTTPException):
        return 0


def _enroll(server: Server, cn: str) -> int:
    answer = post(server, "simpleenroll", csr_body(ec_key(), cn), auth=(USER, PASSWORD))
    if answer.status == 200:
        certificate_of(answer)
    return answer.status
