"""A database the CLI cannot write or reach: one short `Error:` line, exit status 1, and never the SQL,
its parameters, a secret's hash or a traceback (SQLAlchemy's own messages hold all of these).

The process runs as root in CI, where file permissions do not stop a write: the read-only database is
opened read-only instead (SQLite `mode=ro`; PostgreSQL `default_transaction_read_only`).
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from psycopg import errors as pg_errors
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DataError, IntegrityError, InternalError, OperationalError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.cli import main
from gateway.cli.support import GatewayGroup
from gateway.config import load_config
from gateway.initdir import InitOptions, initialise
from shared_ca.errors import Conflict, Unavailable
from shared_ca.keys import KeyType
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.db import (
    create_store_engine,
    database_failure,
    describe_database_error,
    migrate_to_head,
    sqlite_url,
)
from shared_ca.storage.repositories import Storage
from tests.support import csr_pem, ec_key, make_csr, subject

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple"
# What SQLAlchemy's message of a failed INSERT holds and the CLI must never print.
LEAKS = (
    "INSERT",
    "UPDATE",
    "SELECT",
    "[SQL",
    "[parameters",
    "sqlalche.me",
    "scrypt$",
    "sha256$",
    "Traceback",
    PASSWORD,
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: a GATEWAY_* variable of the developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def gw(data_dir: Path, *args: str, url: str | None = None, stdin: str | None = None) -> Result:
    """`gateway ARGS --data-dir DATA_DIR`, on the database at `url` when given."""
    env = {"GATEWAY_DATABASE_URL": url} if url is not None else None
    return CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)], env=env, input=stdin)


def assert_one_short_error(result: Result, *fragments: str) -> str:
    """Exit status 1, nothing on stdout, one short `Error:` line on stderr holding every fragment."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: ") and len(line) <= 250, line
    for leak in LEAKS:
        assert leak not in line, line
    for fragment in fragments:
        assert fragment in line, line
    return line


def read_only_url(data_dir: Path) -> str:
    """The data directory's database, opened so that every write fails."""
    url = load_config(data_dir, environ={}).database_url
    if url.startswith("sqlite"):
        return f"sqlite:///file:{data_dir / 'gateway.db'}?mode=ro&uri=true"
    assert "options=-c" in url and url.index("options=") > url.rindex("&" if "&" in url else "?")  # the last one
    return f"{url}%20-cdefault_transaction_read_only%3Don"


def foreign_certificate_pem(directory: Path) -> Path:
    """A self-signed certificate for `migrate import --from pem`."""
    key = ec_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject("Legacy CA"))
        .issuer_name(subject("Legacy CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "legacy.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return path


def test_read_only_database(data_dir: Path, tmp_path: Path) -> None:
    csr_file = tmp_path / "device.csr"
    csr_file.write_bytes(csr_pem(make_csr(ec_key(), subject("device-ro"))))
    issued = gw(data_dir, "cert", "issue", "--csr", str(csr_file))
    assert issued.exit_code == 0, issued.output
    serial = issued.stderr.split("issued serial ", 1)[1].split()[0]
    url = read_only_url(data_dir)
    legacy = foreign_certificate_pem(tmp_path)
    refused = {
        "est-user add --password-stdin": gw(
            data_dir, "est-user", "add", "alice", "--password-stdin", url=url, stdin=PASSWORD + "\n"
        ),
        "est-user add --generate": gw(data_dir, "est-user", "add", "bob", "--generate", url=url),
        "challenge add": gw(data_dir, "challenge", "add", "--device", "device-ro", url=url),
        "challenge remove": gw(data_dir, "challenge", "remove", "1", url=url),
        "admin-token add": gw(data_dir, "admin-token", "add", "mdm", url=url),
        "cert issue": gw(data_dir, "cert", "issue", "--csr", str(csr_file), url=url),
        "cert revoke": gw(data_dir, "cert", "revoke", serial, "--reason", "superseded", url=url),
        "crl publish": gw(data_dir, "crl", "publish", url=url),
        "migrate import": gw(
            data_dir, "migrate", "import", "--from", "pem", str(legacy), "--trust-until", "2099-01-01", url=url
        ),
    }
    for command, result in refused.items():
        line = assert_one_short_error(result, "unavailable")
        assert "read-only" in line or "readonly" in line, (command, line)
    # Reading still works on the same URL: the refusal is the write, not the connection.
    listed = gw(data_dir, "cert", "list", "--format", "json", url=url)
    assert listed.exit_code == 0 and serial in listed.stdout, listed.output


UNREACHABLE: dict[str, Callable[[Path], str]] = {
    "sqlite-missing-directory": lambda tmp: sqlite_url(tmp / "no-such-directory" / "gateway.db"),
    "sqlite-missing-file-read-only": lambda tmp: f"sqlite:///file:{tmp / 'missing.db'}?mode=ro&uri=true",
    "postgresql-refused": lambda _tmp: "postgresql+psycopg://postgres@127.0.0.1:1/test",
}


@pytest.fixture(scope="module")
def sqlite_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised data directory for the tests that point it at a database it cannot reach."""
    directory = tmp_path_factory.mktemp("cli-db") / "data"
    initialise(InitOptions(data_dir=directory, ca_key_type=KeyType.P256))
    return directory


@pytest.mark.parametrize("where", list(UNREACHABLE))
@pytest.mark.parametrize(
    "command",
    [
        ["est-user", "add", "alice", "--generate"],
        ["challenge", "add", "--device", "device-1"],
        ["challenge", "list"],
        ["challenge", "remove", "1"],
        ["admin-token", "add", "mdm"],
        ["cert", "revoke", "01", "--reason", "superseded"],
        ["db", "upgrade"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_unreachable_database(sqlite_data_dir: Path, tmp_path: Path, where: str, command: list[str]) -> None:
    url = UNREACHABLE[where](tmp_path)
    line = assert_one_short_error(gw(sqlite_data_dir, *command, url=url), "the database is unavailable")
    assert ("127.0.0.1" in line and "port 1" in line) if where.startswith("postgresql") else "SQLITE_CANTOPEN" in line
    assert not (tmp_path / "missing.db").exists()


def test_est_user_add_as_a_process_on_a_read_only_database(data_dir: Path) -> None:
    """The reported case end to end: the real command, its real stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_DATABASE_URL"] = read_only_url(data_dir)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "est-user", "add", "alice", "--password-stdin", "--data-dir", str(data_dir)],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: the certificate store is unavailable: database error: ")
    for leak in LEAKS:
        assert leak not in line, line


# -- the translation below the CLI ----------------------------------------------------------------


def test_store_write_on_a_read_only_sqlite_is_unavailable_without_the_statement(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    writable = create_store_engine(sqlite_url(path))
    migrate_to_head(writable)
    writable.dispose()
    store = Storage.open(create_store_engine(f"sqlite:///file:{path}?mode=ro&uri=true"))
    try:
        with pytest.raises(Unavailable) as caught:
            store.audit.record_audit(
                AuditEvent("tester", "secret-action", detail={"token": "hunter2"}), dt.datetime.now(dt.UTC)
            )
        assert caught.value.detail == "database error: attempt to write a readonly database (SQLITE_READONLY)"
        assert caught.value.__suppress_context__  # a traceback of it does not print SQLAlchemy's message
        assert store.issuers.list_issuers() == []
    finally:
        store.engine.dispose()


def _sqlite_error(statement: str) -> sqlite3.Error:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE users (name TEXT UNIQUE NOT NULL)")
    connection.execute("INSERT INTO users VALUES ('alice')")
    try:
        connection.execute(statement, ("alice",))
    except sqlite3.Error as exc:
        return exc
    finally:
        connection.close()
    raise AssertionError(f"{statement} did not fail")


def test_integrity_error_becomes_conflict_without_the_value() -> None:
    orig = _sqlite_error("INSERT INTO users VALUES (?)")
    wrapped = IntegrityError("INSERT INTO users VALUES (?)", ("alice",), orig)
    failure = database_failure(wrapped)
    assert isinstance(failure, Conflict)
    assert failure.detail == "UNIQUE constraint failed: users.name (SQLITE_CONSTRAINT_UNIQUE)"
    assert "alice" not in failure.detail and "INSERT" not in failure.detail


@pytest.mark.parametrize(
    ("exc", "detail"),
    [
        pytest.param(
            OperationalError(
                "UPDATE t SET s = ?", ("scrypt$14$8$1$salt$hash",), sqlite3.OperationalError("disk I/O error")
            ),
            "disk I/O error",
            id="sqlite-without-error-name",
        ),
        pytest.param(PoolTimeout("QueuePool limit of size 5 overflow 10 reached"), "no database connection", id="pool"),
        pytest.param(
            StatementError("bad value", "INSERT INTO t VALUES (?)", {"secret": "hunter2"}, TypeError("not a str")),
            "the statement could not be run (TypeError)",
            id="statement",
        ),
    ],
)
def test_describe_database_error(exc: Exception, detail: str) -> None:
    described = describe_database_error(exc)
    assert described.startswith(detail), described
    for leak in ("UPDATE", "INSERT", "scrypt$", "hunter2", "QueuePool"):
        assert leak not in described
    failure = database_failure(exc)
    assert isinstance(failure, Unavailable) and failure.detail == described


def test_postgresql_errors_name_the_class_and_sqlstate_never_the_message() -> None:
    read_only = pg_errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
    assert describe_database_error(InternalError("INSERT INTO t VALUES (%s)", ("x",), read_only)) == (
        "the database is read-only (ReadOnlySqlTransaction, SQLSTATE 25006)"
    )
    bad_value = pg_errors.InvalidTextRepresentation('invalid input syntax for type integer: "hunter2"')
    assert describe_database_error(DataError("SELECT", ("hunter2",), bad_value)) == (
        "database error (InvalidTextRepresentation, SQLSTATE 22P02)"
    )
    duplicate = pg_errors.UniqueViolation(
        'duplicate key value violates unique constraint "uq"\nDETAIL: Key (name)=(alice)'
    )
    failure = database_failure(IntegrityError("INSERT", ("alice",), duplicate))
    assert isinstance(failure, Conflict) and "alice" not in failure.detail and "SQLSTATE 23505" in failure.detail


def test_other_errors_are_not_database_failures() -> None:
    assert database_failure(ValueError("x")) is None
    assert database_failure(RuntimeError("INSERT")) is None


# -- the CLI's last line of defence: a database error no store translated -----------------------------------


@click.group(cls=GatewayGroup)
def _probe() -> None:
    """A command group like `gateway`'s, for errors no real command can raise on purpose."""


@_probe.command("duplicate")
@click.argument("path", type=click.Path(path_type=Path))
def _duplicate(path: Path) -> None:
    """Insert a row a unique constraint refuses, outside any store: SQLAlchemy's IntegrityError escapes."""
    engine = create_engine(sqlite_url(path))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS users (name TEXT UNIQUE, secret TEXT)"))
            for _ in range(2):
                conn.execute(text("INSERT INTO users VALUES (:n, :s)"), {"n": "alice", "s": "scrypt$14$8$1$c2FsdA=="})
    finally:
        engine.dispose()


def test_an_untranslated_database_error_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(_probe, ["duplicate", str(tmp_path / "probe.db")])
    line = assert_one_short_error(result, "conflicts with what the database holds")
    assert line.endswith("UNIQUE constraint failed: users.name (SQLITE_CONSTRAINT_UNIQUE)")
    assert "alice" not in line


def test_the_engine_hides_parameters_even_from_untranslated_errors(database_url: str) -> None:
    engine = create_store_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE probe_users (name VARCHAR(40) UNIQUE, secret VARCHAR(80))"))
        with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
            for _ in range(2):
                conn.execute(
                    text("INSERT INTO probe_users VALUES (:n, :s)"), {"n": "alice", "s": "scrypt$14$8$1$c2FsdA=="}
                )
        assert "scrypt$" not in str(caught.value) and "parameters hidden" in str(caught.value)
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS probe_users"))
        engine.dispose()
