"""`gateway status`: a fresh data directory nobody serves, a running `gateway serve`, a listener that is
up but not ready, an old schema, an unreachable or missing database, certificates expiring, expired or
unreadable, pending approvals, and the trust revision moving with the issuers.

The CLI runs in-process (CliRunner) with the listeners pointed at ports chosen per test, so nothing
else on this machine (a developer's gateway on 8080) changes the outcome.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import text
from werkzeug.serving import BaseWSGIServer, make_server

from gateway.app import create_app
from gateway.cli import main
from gateway.config import load_config
from gateway.initdir import InitOptions, initialise
from shared_ca.ca_material import create_root_ca
from shared_ca.keys import KeyType, generate_private_key
from shared_ca.storage.db import MIGRATIONS_DIR, create_store_engine, current_revision, head_revision
from tests.test_serve import Server, free_ports, init_data_dir, start_server, stop_server
from tests.test_serve import gateway_command as run_gateway

CHALLENGE = "status-challenge"
REVISION = re.compile(r"revision [0-9a-f]{12}")


def listener_env(ports: Iterable[int]) -> dict[str, str | None]:
    """The listeners on `ports`; no other GATEWAY_* setting of the developer's."""
    http, https = ports
    env: dict[str, str | None] = {key: None for key in os.environ if key.startswith("GATEWAY_")}
    env.update(GATEWAY_LISTEN_HTTP=f"127.0.0.1:{http}", GATEWAY_LISTEN_HTTPS=f"127.0.0.1:{https}")
    return env


def status(data_dir: Path, *args: str, ports: Iterable[int] | None = None, **env: str) -> Result:
    """`gateway status --data-dir DATA_DIR ARGS` with the listeners on `ports` (default: two closed ones)."""
    environ = listener_env(ports if ports is not None else free_ports(2))
    environ.update(env)
    return CliRunner().invoke(main, ["status", "--data-dir", str(data_dir), *args], env=environ, prog_name="gateway")


def rows(result: Result) -> dict[str, tuple[str, str]]:
    """The table: check -> (state, detail), read by the columns of its header."""
    lines = result.stdout.splitlines()
    header = lines[0]
    state_at, detail_at = header.index("STATE"), header.index("DETAIL")
    table: dict[str, tuple[str, str]] = {}
    for line in lines[1:]:
        if not line.strip():
            break
        table[line[:state_at].strip()] = (line[state_at:detail_at].strip(), line[detail_at:].strip())
    return table


def as_json(result: Result) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


# -- a data directory nobody serves ---------------------------------------------------------------


def test_fresh_data_dir_not_served(data_dir: Path) -> None:
    result = status(data_dir)
    no_traceback(result)
    assert result.exit_code == 1
    table = rows(result)
    assert table["listener http"][0] == table["listener https"][0] == "down"
    assert "connection refused" in table["listener http"][1]
    assert table["readiness"] == ("unknown", "no listener answered")
    assert table["database"][0] == "ok"
    assert table["schema"] == ("current", head_revision())
    for role in ("ca", "ra", "tls"):
        assert table[f"{role} certificate"][0] == "ok", table
    assert "(3649 days)" in table["ca certificate"][1]
    assert table["approvals"] == ("0 pending", "0 deferred")
    assert REVISION.fullmatch(table["trust"][0]) and table["trust"][1] == "issuers: 1 ca"
    assert result.stdout.splitlines()[-1] == "needs attention: listener http: down, listener https: down"


def test_json_report(data_dir: Path) -> None:
    result = status(data_dir, "--format", "json")
    assert result.exit_code == 1
    report = as_json(result)
    assert report["ok"] is False
    assert report["attention"] == ["listener http: down", "listener https: down"]
    assert [(s["name"], s["up"]) for s in report["listeners"]] == [("http", False), ("https", False)]
    database = report["database"]
    assert database["kind"] in ("sqlite", "postgresql") and database["reachable"] is True
    assert database["schema_current"] == database["schema_head"] == head_revision()
    assert database["schema_at_head"] is True
    assert [c["role"] for c in report["certificates"]] == ["ca", "ra", "tls"]
    ca = report["certificates"][0]
    assert ca["path"] == str(data_dir / "ca" / "ca.crt") and ca["days_left"] == 3649
    assert dt.datetime.fromisoformat(ca["not_after"]).tzinfo is not None
    assert report["approvals"] == {"pending": 0, "deferred": 0}
    assert report["trust"]["issuers"] == {"ca": 1} and re.fullmatch(r"[0-9a-f]{12}", report["trust"]["revision"])
    assert report["warn_days"] == 30


def test_csv_report(data_dir: Path) -> None:
    result = status(data_dir, "--format", "csv")
    lines = result.stdout.splitlines()
    assert lines[0] == "check,state,detail"
    assert lines[1].startswith("listener http,down,127.0.0.1:")
    assert "needs attention" not in result.stdout  # the summary line is the table's only


def test_a_configuration_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    result = status(tmp_path / "nothing-here")
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and "config.toml" in line


@pytest.mark.parametrize(("args", "field"), [(["--warn-days", "-1"], "--warn-days"), (["--timeout", "0"], "--timeout")])
def test_bad_options_name_the_option(data_dir: Path, args: list[str], field: str) -> None:
    result = status(data_dir, *args)
    assert result.exit_code == 2
    assert f"Invalid value for '{field}'" in result.stderr


# -- the database -------------------------------------------------------------------------------------


def _downgrade_one_step(url: str) -> None:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")
            conn.commit()
    finally:
        engine.dispose()


def test_schema_behind(data_dir: Path) -> None:
    url = load_config(data_dir, environ={}).database_url
    _downgrade_one_step(url)
    engine = create_store_engine(url)
    try:
        behind = current_revision(engine)
    finally:
        engine.dispose()
    assert behind is not None and behind != head_revision()
    result = status(data_dir)
    no_traceback(result)
    assert result.exit_code == 1
    table = rows(result)
    assert table["schema"] == (
        "not current",
        f"database at {behind}, this version needs {head_revision()}: run `gateway db upgrade`",
    )
    assert table["approvals"] == ("unknown", "the schema is not current")
    assert table["trust"] == ("unknown", "the schema is not current")
    assert "schema: not current" in result.stdout.splitlines()[-1]
    # `gateway db upgrade` mends it.
    upgraded = CliRunner().invoke(main, ["db", "upgrade", "--data-dir", str(data_dir)], env=listener_env([1, 2]))
    assert upgraded.exit_code == 0, upgraded.output
    assert rows(status(data_dir))["schema"] == ("current", head_revision())


def test_a_database_that_fails_a_read_is_reported_in_one_line(data_dir: Path) -> None:
    """The revision says current, but a table is gone (a restore gone wrong): what was read is shown."""
    url = load_config(data_dir, environ={}).database_url
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            cascade = " CASCADE" if conn.dialect.name == "postgresql" else ""
            conn.execute(text(f"DROP TABLE approval_requests{cascade}"))
    finally:
        engine.dispose()
    result = status(data_dir)
    no_traceback(result)
    table = rows(result)
    assert table["schema"] == ("current", head_revision())
    state, detail = table["approvals"]
    assert state == "unknown" and detail.startswith("cannot read the database: database error: ")
    assert ("no such table" in detail) if url.startswith("sqlite") else ("a table is missing" in detail)
    assert table["trust"] == ("unknown", detail)
    assert "SELECT" not in result.output


@pytest.fixture(scope="module")
def sqlite_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the tests that only read it, or copy it before they change it."""
    directory = tmp_path_factory.mktemp("status") / "data"
    initialise(InitOptions(data_dir=directory, ca_key_type=KeyType.P256))
    return directory


def test_database_unreachable_still_reports_the_rest(sqlite_data_dir: Path) -> None:
    result = status(sqlite_data_dir, GATEWAY_DATABASE_URL="postgresql+psycopg://gw:hunter2@127.0.0.1:1/test")
    no_traceback(result)
    assert result.exit_code == 1
    table = rows(result)
    state, detail = table["database"]
    assert state == "unreachable"
    assert detail.startswith("postgresql+psycopg://gw:***@127.0.0.1:1/test: ")
    assert "127.0.0.1" in detail and "port 1" in detail and "hunter2" not in result.output
    assert table["schema"] == ("unknown", f"this version needs {head_revision()}")
    assert table["approvals"] == ("unknown", "the database is unreachable")
    for role in ("ca", "ra", "tls"):
        assert table[f"{role} certificate"][0] == "ok"
    assert result.stdout.splitlines()[-1] == (
        "needs attention: listener http: down, listener https: down, database: unreachable"
    )
    assert result.stderr == ""


def test_a_missing_sqlite_file_is_reported_not_created(sqlite_data_dir: Path, tmp_path: Path) -> None:
    data = shutil.copytree(sqlite_data_dir, tmp_path / "data")
    (data / "gateway.db").unlink()
    result = status(data)
    assert result.exit_code == 1
    state, detail = rows(result)["database"]
    assert state == "unreachable" and f"the database file {data / 'gateway.db'} does not exist" in detail
    assert not (data / "gateway.db").exists()


# -- certificates --------------------------------------------------------------------------------------


def test_a_ca_expiring_within_30_days_needs_attention(tmp_path: Path) -> None:
    data = tmp_path / "data"
    initialise(InitOptions(data_dir=data, ca_key_type=KeyType.P256, ca_days=20))
    result = status(data, "--format", "json")
    report = as_json(result)
    ca = report["certificates"][0]
    assert ca["role"] == "ca" and ca["days_left"] == 19
    assert "ca certificate: expiring" in report["attention"]
    state, detail = rows(status(data))["ca certificate"]
    assert state == "expiring" and detail.endswith("(19 days)")
    # --warn-days moves the line: within 10 days only, nothing expires soon enough to need attention.
    relaxed = as_json(status(data, "--format", "json", "--warn-days", "10"))
    assert not [line for line in relaxed["attention"] if "certificate" in line]


def _write_expired_certificate(path: Path) -> None:
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    material = create_root_ca(generate_private_key(KeyType.P256), name, 10, then)
    path.write_bytes(material.certificate.public_bytes(Encoding.PEM))


def test_expired_and_unreadable_certificates(sqlite_data_dir: Path, tmp_path: Path) -> None:
    data = shutil.copytree(sqlite_data_dir, tmp_path / "data")
    _write_expired_certificate(data / "tls" / "server.crt")
    (data / "ra" / "ra.crt").write_text("not a certificate\n")
    result = status(data)
    table = rows(result)
    assert table["tls certificate"][0] == "expired" and table["tls certificate"][1].endswith("(expired 30 days ago)")
    assert table["ra certificate"] == ("unreadable", f"{data / 'ra' / 'ra.crt'} holds no readable X.509 certificate")
    last = result.stdout.splitlines()[-1]
    assert "ra certificate: unreadable" in last and "tls certificate: expired" in last


# -- trust revision --------------------------------------------------------------------------------------


def _cli(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), env=listener_env([1, 2]), prog_name="gateway")
    assert result.exit_code == 0, result.output
    return result


def test_the_trust_revision_follows_the_issuers(data_dir: Path, tmp_path: Path) -> None:
    before = as_json(status(data_dir, "--format", "json"))["trust"]
    # A legacy CA imported with a trust window ...
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Legacy CA")])
    legacy = create_root_ca(generate_private_key(KeyType.P256), name, 365, dt.datetime.now(dt.UTC))
    pem = tmp_path / "legacy.pem"
    pem.write_bytes(legacy.certificate.public_bytes(Encoding.PEM))
    _cli("migrate", "import", "--from", "pem", str(pem), "--trust-until", "2099-01-01", "--data-dir", str(data_dir))
    imported = as_json(status(data_dir, "--format", "json"))["trust"]
    assert imported["revision"] != before["revision"]
    assert imported["issuers"] == {"ca": 1, "legacy": 1}
    assert imported["legacy_trusted"] == 1 and imported["legacy_trust_ends"].startswith("2099-01-01")
    assert rows(status(data_dir))["trust"][1] == (
        "issuers: 1 ca, 1 legacy; 1 legacy CA(s) trusted until 2099-01-01T00:00:00+00:00"
    )
    # ... and a next CA prepared by a rollover: a new revision again, and its certificates reported.
    _cli("ca", "rollover", "--ca-key-type", "p256", "--data-dir", str(data_dir))
    report = as_json(status(data_dir, "--format", "json"))
    assert report["trust"]["revision"] not in (before["revision"], imported["revision"])
    assert report["trust"]["issuers"] == {"ca": 1, "legacy": 1, "next": 1}
    assert [c["role"] for c in report["certificates"]] == ["ca", "ra", "tls", "next ca", "next ra"]
    assert all(c["error"] is None and c["days_left"] > 300 for c in report["certificates"])
    # Asking again changes nothing.
    assert as_json(status(data_dir, "--format", "json"))["trust"] == report["trust"]


# -- listeners that answer, but not as they should -------------------------------------------------------


@pytest.fixture
def serve_in_thread() -> Iterator[Callable[[Any, int], BaseWSGIServer]]:
    """Serve a WSGI app on 127.0.0.1:PORT from a thread (werkzeug), stopped after the test."""
    started: list[tuple[BaseWSGIServer, threading.Thread]] = []

    def start(app: Any, port: int) -> BaseWSGIServer:
        server = make_server("127.0.0.1", port, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_gateway_up_but_not_ready(
    sqlite_data_dir: Path, serve_in_thread: Callable[[Any, int], BaseWSGIServer]
) -> None:
    """The real app on the http port, nothing on the https port: /healthz answers, /readyz says why not."""
    ports = free_ports(2)
    config = load_config(sqlite_data_dir, environ={k: v for k, v in listener_env(ports).items() if v is not None})
    app = create_app(config)
    try:
        serve_in_thread(app, ports[0])
        result = status(sqlite_data_dir, ports=ports)
    finally:
        app.extensions["gateway"].get().storage.db.dispose()
    no_traceback(result)
    assert result.exit_code == 1
    table = rows(result)
    assert table["listener http"] == ("up", f"127.0.0.1:{ports[0]} (/healthz 200)")
    assert table["listener https"][0] == "down"
    assert table["readiness"] == ("not ready", "listener_https: not accepting connections")
    assert result.stdout.splitlines()[-1] == "needs attention: listener https: down, readiness: not ready"


def _not_the_gateway(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ["PATH_INFO"] == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"OK\n"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no\n"]


def _nothing_found(_environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no\n"]


@pytest.mark.parametrize(
    ("app", "says"),
    [(_nothing_found, "/healthz answered 404"), (_not_the_gateway, "/healthz answered, but not as the gateway does")],
    ids=["404", "other-200"],
)
def test_another_program_on_the_port_is_no_listener_of_ours(
    sqlite_data_dir: Path,
    serve_in_thread: Callable[[Any, int], BaseWSGIServer],
    app: Callable[..., list[bytes]],
    says: str,
) -> None:
    ports = free_ports(2)
    serve_in_thread(app, ports[0])
    table = rows(status(sqlite_data_dir, ports=ports))
    assert table["listener http"] == ("down", f"127.0.0.1:{ports[0]} ({says})")
    assert table["readiness"] == ("unknown", "no listener answered")


def test_a_readiness_check_that_hangs_needs_attention(
    sqlite_data_dir: Path, serve_in_thread: Callable[[Any, int], BaseWSGIServer]
) -> None:
    """A node alive on /healthz whose /readyz never answers (a worker stuck on its database): --timeout."""
    release = threading.Event()

    def hung(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] == "/readyz":
            release.wait(10)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status": "alive"}']

    ports = free_ports(2)
    serve_in_thread(hung, ports[0])
    try:
        result = status(sqlite_data_dir, "--timeout", "0.5", ports=ports)
    finally:
        release.set()
    table = rows(result)
    assert table["listener http"][0] == "up"
    assert table["readiness"] == ("unknown", "/readyz on http: no answer in time")
    assert result.stdout.splitlines()[-1] == "needs attention: listener https: down, readiness: unknown"


# -- a running `gateway serve` -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `gateway serve --workers 1` whose default profile holds requests for approval."""
    workdir = tmp_path_factory.mktemp("status-serve")
    data_dir = workdir / "data"
    http_port = free_ports(1)[0]
    init_data_dir(data_dir, http_port)
    with (data_dir / "config.toml").open("a") as config:
        config.write(f'\n[profiles.default]\nscep_challenge = "{CHALLENGE}"\napproval = "manual"\n')
    running = start_server(data_dir, workdir, http_port=http_port)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.mark.slow
def test_a_running_gateway_is_all_well(server: Server) -> None:
    result = status(server.data_dir, ports=[server.http_port, server.https_port])
    no_traceback(result)
    assert result.exit_code == 0, result.output
    table = rows(result)
    assert table["listener http"] == ("up", f"127.0.0.1:{server.http_port} (/healthz 200)")
    assert table["listener https"] == ("up", f"127.0.0.1:{server.https_port} (/healthz 200)")
    assert table["readiness"] == ("ready", "/readyz on http")
    assert result.stdout.splitlines()[-1] == "all is well"
    report = as_json(status(server.data_dir, "--format", "json", ports=[server.http_port, server.https_port]))
    assert report["ok"] is True and report["attention"] == []


@pytest.mark.slow
def test_a_request_held_for_approval_is_counted(server: Server, tmp_path: Path) -> None:
    enrolled = run_gateway(
        "client",
        "scep",
        "enroll",
        "--url",
        f"http://127.0.0.1:{server.http_port}/scep",
        "--challenge",
        CHALLENGE,
        "--subject",
        "CN=held-device",
        "--key",
        str(tmp_path / "device.key"),
    )
    assert enrolled.returncode == 1 and "PENDING" in enrolled.stderr + enrolled.stdout, enrolled
    result = status(server.data_dir, ports=[server.http_port, server.https_port])
    assert rows(result)["approvals"] == ("1 pending", "0 deferred")
    assert result.exit_code == 0  # a request waiting for an administrator is work, not a fault
