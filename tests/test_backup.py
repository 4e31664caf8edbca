"""`gateway backup` and `gateway restore` (gateway.backup, gateway.restore), without a server: what the
archive holds, the round trip, and every way either refuses. The backup of a serving gateway under load
is tests/test_backup_serve.py.

Runs on every backend of the suite (tests/conftest.py `data_dir`): a SQLite database is in the archive,
a PostgreSQL one is not (the manifest says so)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from est.key_delivery import load_keks
from gateway.backup import DATABASE_MEMBER, MANIFEST, BackupError, Manifest, create_backup
from gateway.cli import main
from gateway.config import load_config
from gateway.initdir import InitOptions, initialise
from gateway.restore import restore_backup, verify_backup
from gateway.runtime import open_gateway
from shared_ca.keys import KeyType
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.repositories import Storage
from shared_ca.storage.snapshot import SnapshotError, snapshot_sqlite, summarize_sqlite

PASSPHRASE = b"backup-passphrase"
UNREACHABLE_PG = "postgresql+psycopg://gateway:secret@127.0.0.1:1/gateway"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: a GATEWAY_* variable of the developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    assert result.exception is None, repr(result.exception)
    return result


def refused(result: Result, *fragments: str) -> str:
    """The one `Error:` line of a refusal (exit status 1, no traceback) holding every fragment."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output
    return lines[0]


def backup_cli(runner: CliRunner, data_dir: Path, out: Path, *extra: str) -> Result:
    return runner.invoke(main, ["backup", "--data-dir", str(data_dir), "--out", str(out), *extra])


def restore_cli(runner: CliRunner, archive: Path, *extra: str) -> Result:
    return runner.invoke(main, ["restore", str(archive), *extra])


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar.getmembers()}  # type: ignore[union-attr]


def manifest_of(archive: Path) -> Manifest:
    return Manifest.from_json(members(archive)[MANIFEST])


def certificate_count(data_dir: Path) -> int:
    engine = create_store_engine(load_config(data_dir, environ={}).database_url)
    try:
        return Storage.open(engine).certificates.count_certificates()
    finally:
        engine.dispose()


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary files a failed backup or restore might have left."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def write_archive(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def rebuilt(
    archive: Path, target: Path, change: Callable[[dict[str, bytes]], list[tuple[tarfile.TarInfo, bytes]]]
) -> Path:
    """A copy of `archive` whose members `change` rewrites (manifest first, as backup writes it)."""
    write_archive(target, change(members(archive)))
    return target


def regular(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o600
    return info


# -- the archive ------------------------------------------------------------------------------------


@pytest.fixture
def archive(data_dir: Path, tmp_path: Path) -> Path:
    return create_backup(load_config(data_dir, environ={}), tmp_path / "gateway.backup").path


@pytest.fixture(scope="module")
def sqlite_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One backup of a SQLite gateway, for the tests that break or refuse an archive (they only read it)."""
    workdir = tmp_path_factory.mktemp("backup-source")
    initialise(InitOptions(data_dir=workdir / "data", ca_key_type=KeyType.P256))
    return create_backup(load_config(workdir / "data", environ={}), workdir / "gateway.backup").path


def test_archive_holds_config_keys_and_database_with_checksums(
    data_dir: Path, archive: Path, database_url: str
) -> None:
    assert archive.stat().st_mode & 0o777 == 0o600  # it holds the private keys
    contents = members(archive)
    assert next(iter(contents)) == MANIFEST  # first: a restore reads it before anything else
    manifest = Manifest.from_json(contents[MANIFEST])
    assert manifest.source_data_dir == str(data_dir.resolve())
    for name in (
        "config.toml",
        "data/ca/ca.key",
        "data/ca/ca.crt",
        "data/ra/ra.key",
        "data/tls/server.key",
        "data/ca.pem",
    ):
        assert name in contents
    for relative in ("ca/ca.key", "ra/ra.key", "tls/server.key", "ca/ca.crt", "ca.pem"):
        assert contents[f"data/{relative}"] == (data_dir / relative).read_bytes()  # byte for byte
    assert contents["config.toml"] == (data_dir / "config.toml").read_bytes()
    assert {m.name: m.sha256 for m in manifest.members} == {
        name: hashlib.sha256(data).hexdigest() for name, data in contents.items() if name != MANIFEST
    }
    assert manifest.settings["ca.key"] == "ca/ca.key" and "next_ca.key" not in manifest.settings
    assert not manifest.keys_encrypted
    if database_url.startswith("sqlite"):
        assert manifest.database.included and DATABASE_MEMBER in contents
        assert manifest.database.certificates == certificate_count(data_dir) == 2  # RA and TLS
        assert manifest.database.issuers == ("ca (ca)",)
    else:
        assert not manifest.database.included and DATABASE_MEMBER not in contents
        assert manifest.database.kind == "postgresql" and manifest.database.certificates == 2
        assert "secret" not in manifest.database.source


def test_restore_round_trip(data_dir: Path, archive: Path, tmp_path: Path, database_url: str) -> None:
    target = tmp_path / "restored"
    result = restore_backup(archive, target)
    for relative in ("ca/ca.key", "ca/ca.crt", "ra/ra.key", "ra/ra.crt", "tls/server.key", "tls/server.crt", "ca.pem"):
        assert (target / relative).read_bytes() == (data_dir / relative).read_bytes()
    assert (target / "ca/ca.key").stat().st_mode & 0o777 == 0o600
    assert (target / "ca.pem").stat().st_mode & 0o777 == 0o644
    assert target.stat().st_mode & 0o777 == 0o700
    assert result.certificates == 2 and result.issuers == ("ca (ca)",) and not result.upgrade_needed
    config = load_config(target, environ={})
    if database_url.startswith("sqlite"):
        assert config.database_url.endswith(f"{target}/gateway.db")
        assert not (target / "gateway.db-wal").exists()
    else:
        assert config.database_url == database_url  # the archived configuration's database
    gateway = open_gateway(config)  # keys load and match their certificates
    try:
        assert gateway.storage.certificates.count_certificates() == 2
    finally:
        gateway.storage.db.dispose()
    assert leftovers(tmp_path) == []


def test_backup_and_restore_commands(runner: CliRunner, data_dir: Path, tmp_path: Path, database_url: str) -> None:
    out = tmp_path / "nightly.tar.gz"
    made = ok(backup_cli(runner, data_dir, out)).output
    assert made.startswith(f"backup written to {out} (")
    assert "keys not encrypted" in made
    checked = ok(restore_cli(runner, out, "--verify")).output
    assert "every checksum matches" in checked and not (tmp_path / "restored").exists()
    restored = ok(restore_cli(runner, out, "--data-dir", str(tmp_path / "restored"))).output
    assert "issuers: ca (ca)" in restored
    assert f"start it: gateway serve --data-dir {tmp_path / 'restored'}" in restored
    if database_url.startswith("sqlite"):
        assert "database: sqlite" in made and "in the archive; schema" in made and ", 2 certificates" in made
        assert "database: SQLite, schema" in restored and "(current), 2 certificates" in restored
    else:
        assert "NOT in the archive" in made and "pg_dump --format=custom" in made
        assert "pg_restore --clean --if-exists --no-owner" in restored


def test_a_sqlite_database_elsewhere_is_restored_into_the_data_directory(tmp_path: Path) -> None:
    data_dir, database = tmp_path / "data", tmp_path / "db" / "elsewhere.db"
    database.parent.mkdir()
    initialise(InitOptions(data_dir=data_dir, ca_key_type=KeyType.P256, database_url=f"sqlite:///{database}"))
    archive = create_backup(load_config(data_dir, environ={}), tmp_path / "b.tgz").path
    result = restore_backup(archive, tmp_path / "restored")
    assert result.rewritten == {"database_url": ""}
    assert load_config(tmp_path / "restored", environ={}).database_url.endswith("restored/gateway.db")
    assert certificate_count(tmp_path / "restored") == 2


def test_encrypted_keys_are_archived_as_they_are_without_the_passphrase(runner: CliRunner, tmp_path: Path) -> None:
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    data_dir = tmp_path / "data"
    initialise(
        InitOptions(data_dir=data_dir, ca_key_type=KeyType.P256, passphrase=PASSPHRASE, passphrase_file=passphrase_file)
    )
    out = tmp_path / "b.tgz"
    assert "keys encrypted, passphrase not included" in ok(backup_cli(runner, data_dir, out)).output
    contents = members(out)
    for relative in ("ca/ca.key", "ra/ra.key", "tls/server.key"):
        assert contents[f"data/{relative}"] == (data_dir / relative).read_bytes()
        assert contents[f"data/{relative}"].startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert not any(PASSPHRASE in data for data in contents.values())
    manifest = manifest_of(out)
    assert manifest.keys_encrypted and manifest.passphrase_file == str(passphrase_file.resolve())
    restored = ok(restore_cli(runner, out, "--data-dir", str(tmp_path / "restored"))).output
    assert f"the keys are encrypted: put the passphrase file at {passphrase_file.resolve()}" in restored
    gateway = open_gateway(load_config(tmp_path / "restored", environ={}))  # the passphrase file opens them
    gateway.storage.db.dispose()


def test_files_outside_the_data_directory_come_back_inside_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    initialise(InitOptions(data_dir=data_dir, ca_key_type=KeyType.P256))
    secure = tmp_path / "secure"
    secure.mkdir()
    shutil.move(data_dir / "ca" / "ca.key", secure / "ca.key")
    keks = tmp_path / "keks"
    keks.mkdir()
    (keks / "0102.key").write_text("00112233445566778899aabbccddeeff\n")
    (keks / "0102.key").chmod(0o600)
    config_file = data_dir / "config.toml"
    config_file.write_text(
        config_file.read_text().replace("[ca]\n", f'[ca]\nkey = "{secure / "ca.key"}"\n')
        + f'\n[est]\nkek_dir = "{keks}"\n'
    )
    archive = create_backup(load_config(data_dir, environ={}), tmp_path / "b.tgz").path
    assert {"data/external/ca.key/ca.key", "data/external/est.kek_dir/0102.key"} <= set(members(archive))
    target = tmp_path / "restored"
    result = restore_backup(archive, target)
    assert result.rewritten == {"ca.key": "external/ca.key/ca.key", "est.kek_dir": "external/est.kek_dir"}
    assert (target / "external/ca.key/ca.key").read_bytes() == (secure / "ca.key").read_bytes()
    config = load_config(target, environ={})
    assert config.path("ca.key") == target / "external/ca.key/ca.key"
    assert list(load_keks(config.path("est.kek_dir"))) == [bytes.fromhex("0102")]  # 0600 kept, or refused
    open_gateway(config).storage.db.dispose()  # the CA key from its new place


# -- a consistent SQLite snapshot -------------------------------------------------------------------


def _wal_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # what a writer commits stays in the WAL
    conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    return conn


def test_snapshot_holds_what_is_still_in_the_write_ahead_log(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    writer = _wal_database(source)
    try:
        for n in range(21):
            writer.execute("INSERT INTO rows (body) VALUES (?)", (f"certificate {n}" * 50,))
        copied = tmp_path / "copied.db"
        shutil.copyfile(source, copied)  # what copying gateway.db while serving gives
        with sqlite3.connect(copied) as plain:
            assert plain.execute("SELECT count(*) FROM sqlite_master WHERE name = 'rows'").fetchone() == (0,)
        snapshot_sqlite(source, tmp_path / "snapshot.db")
    finally:
        writer.close()
    snapshot = sqlite3.connect(tmp_path / "snapshot.db")
    try:
        assert snapshot.execute("SELECT count(*) FROM rows").fetchone() == (21,)
        assert snapshot.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        snapshot.close()
    assert (tmp_path / "snapshot.db").stat().st_mode & 0o777 == 0o600


def test_snapshot_is_consistent_while_a_writer_goes_on(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    _wal_database(source).close()
    stop = threading.Event()
    committed: list[int] = []

    def write() -> None:
        conn = sqlite3.connect(source, isolation_level=None)
        try:
            while not stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO rows (body) VALUES ('a')")
                conn.execute("INSERT INTO rows (body) VALUES ('b')")  # two rows a transaction: never one alone
                conn.execute("COMMIT")
                committed.append(1)
        finally:
            conn.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while len(committed) < 50:
            stop.wait(0.001)
        before = 2 * len(committed)
        snapshot_sqlite(source, tmp_path / "snapshot.db")
        after = 2 * len(committed)
    finally:
        stop.set()
        thread.join()
    snapshot = sqlite3.connect(tmp_path / "snapshot.db")
    try:
        count, highest = snapshot.execute("SELECT count(*), max(id) FROM rows").fetchone()
    finally:
        snapshot.close()
    assert before <= count <= after  # everything committed before it began, nothing half-written
    assert count % 2 == 0 and highest == count  # whole transactions, no gaps


def test_snapshot_of_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="does not exist"):
        snapshot_sqlite(tmp_path / "none.db", tmp_path / "snapshot.db")
    assert not (tmp_path / "snapshot.db").exists()


def test_summary_of_a_file_that_is_no_database(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"not sqlite" * 100)
    with pytest.raises(SnapshotError, match="not a readable gateway database"):
        summarize_sqlite(tmp_path / "junk.db")


# -- refusals of `gateway backup` -------------------------------------------------------------------


def test_backup_refuses_an_in_memory_database(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    initialise(InitOptions(data_dir=data_dir, ca_key_type=KeyType.P256))
    config_file = data_dir / "config.toml"
    config_file.write_text('database_url = "sqlite:///:memory:"\n' + config_file.read_text())
    refused(backup_cli(runner, data_dir, tmp_path / "b.tgz"), "in-memory SQLite database cannot be backed up")
    assert not (tmp_path / "b.tgz").exists()


def test_backup_refuses_an_out_in_a_missing_directory(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    refused(backup_cli(runner, data_dir, tmp_path / "missing" / "b.tgz"), f"--out: directory {tmp_path / 'missing'}")


def test_backup_refuses_an_out_that_is_a_directory(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    result = backup_cli(runner, data_dir, tmp_path)  # click's own check of the option: a usage error
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Error: Invalid value for '--out': File '{tmp_path}' is a directory." in result.output


def test_backup_replaces_an_existing_file_only_with_force(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.tgz"
    out.write_bytes(b"yesterday")
    refused(backup_cli(runner, data_dir, out), f"--out: {out} exists (use --force to replace it)")
    assert out.read_bytes() == b"yesterday"
    ok(backup_cli(runner, data_dir, out, "--force"))
    assert manifest_of(out).source_data_dir == str(data_dir.resolve())
    assert out.stat().st_mode & 0o777 == 0o600
    assert leftovers(tmp_path) == []


def test_backup_of_a_directory_without_a_config(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    refused(backup_cli(runner, tmp_path / "empty", tmp_path / "b.tgz"), "no config.toml in")
    assert not (tmp_path / "b.tgz").exists()


def test_backup_refuses_a_missing_key_and_leaves_nothing(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    (data_dir / "ra" / "ra.key").unlink()
    out = tmp_path / "b.tgz"
    refused(backup_cli(runner, data_dir, out), "ra.key: ", "does not exist")
    assert not out.exists() and leftovers(tmp_path) == []


def test_backup_of_a_postgresql_gateway_holds_keys_and_config_only(runner: CliRunner, tmp_path: Path) -> None:
    """The database is pg_dump's: even when it does not answer, the keys and config are backed up."""
    data_dir = tmp_path / "data"
    initialise(InitOptions(data_dir=data_dir, ca_key_type=KeyType.P256))
    config_file = data_dir / "config.toml"
    config_file.write_text(f'database_url = "{UNREACHABLE_PG}"\n' + config_file.read_text())
    out = tmp_path / "b.tgz"
    made = ok(backup_cli(runner, data_dir, out)).output
    assert "database: postgresql postgresql+psycopg://gateway:***@127.0.0.1:1/gateway, NOT in the archive" in made
    assert "schema unknown, unknown certificates" in made
    assert "pg_dump --format=custom --file=gateway.pgdump postgresql://gateway@127.0.0.1:1/gateway" in made
    contents = members(out)
    assert DATABASE_MEMBER not in contents and "data/ca/ca.key" in contents
    database = manifest_of(out).database
    assert (database.kind, database.included, database.schema_revision) == ("postgresql", False, None)

    # Restored as it is, or onto another database named with --database-url.
    other = "postgresql+psycopg://gateway@db2.example/gateway"
    restored = ok(restore_cli(runner, out, "--data-dir", str(tmp_path / "r"), "--database-url", other)).output
    assert f"config: database_url = '{other}'" in restored
    assert "pg_restore --clean --if-exists --no-owner --dbname=postgresql://gateway@db2.example/gateway" in restored
    assert load_config(tmp_path / "r", environ={}).database_url == other
    ok(restore_cli(runner, out, "--data-dir", str(tmp_path / "r2")))
    assert load_config(tmp_path / "r2", environ={}).database_url == UNREACHABLE_PG
    bad = restore_cli(runner, out, "--data-dir", str(tmp_path / "r3"), "--database-url", "mysql://x@y/z")
    refused(bad, "--database-url: unsupported database driver 'mysql'")


# -- refusals of `gateway restore` ------------------------------------------------------------------


def test_restore_refuses_a_non_empty_directory(runner: CliRunner, sqlite_archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    refused(restore_cli(runner, sqlite_archive, "--data-dir", str(target)), f"--data-dir: {target} is not empty")
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_restore_into_an_empty_directory(sqlite_archive: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    restore_backup(sqlite_archive, tmp_path / "empty")
    assert (tmp_path / "empty" / "ca" / "ca.key").is_file()


def test_restore_refuses_a_file_as_target_and_a_missing_parent(
    runner: CliRunner, sqlite_archive: Path, tmp_path: Path
) -> None:
    as_file = restore_cli(runner, sqlite_archive, "--data-dir", str(sqlite_archive))  # click's own check: a usage error
    assert (
        as_file.exit_code == 2
        and f"Error: Invalid value for '--data-dir': Directory '{sqlite_archive}' is a file." in (as_file.output)
    )
    refused(restore_cli(runner, sqlite_archive, "--data-dir", str(tmp_path / "a" / "b")), "does not exist")


def test_restore_needs_a_data_dir(runner: CliRunner, sqlite_archive: Path) -> None:
    refused(restore_cli(runner, sqlite_archive), "--data-dir: name the new data directory")


def test_restore_refuses_database_url_for_a_sqlite_backup(
    runner: CliRunner, sqlite_archive: Path, tmp_path: Path
) -> None:
    result = restore_cli(runner, sqlite_archive, "--data-dir", str(tmp_path / "r"), "--database-url", UNREACHABLE_PG)
    refused(result, "--database-url: the backup holds its SQLite database")
    assert not (tmp_path / "r").exists() and leftovers(tmp_path) == []


def test_restore_of_a_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    refused(restore_cli(runner, tmp_path / "none.tgz", "--verify"), "none.tgz: no such file")


def _corrupt(archive: Path, tmp_path: Path) -> Path:
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "corrupt.tgz").write_bytes(bytes(data))
    return tmp_path / "corrupt.tgz"


def _truncated(archive: Path, tmp_path: Path) -> Path:
    (tmp_path / "truncated.tgz").write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return tmp_path / "truncated.tgz"


def _not_an_archive(_archive: Path, tmp_path: Path) -> Path:
    (tmp_path / "junk.tgz").write_bytes(b"this is not a backup\n" * 10)
    return tmp_path / "junk.tgz"


def _altered_member(archive: Path, tmp_path: Path) -> Path:
    def change(contents: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
        contents["data/ca/ca.crt"] = contents["data/ca/ca.crt"].replace(b"A", b"B", 1)
        return [(regular(name), data) for name, data in contents.items()]

    return rebuilt(archive, tmp_path / "altered.tgz", change)


def _member_missing(archive: Path, tmp_path: Path) -> Path:
    def change(contents: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
        return [(regular(name), data) for name, data in contents.items() if name != "data/ra/ra.key"]

    return rebuilt(archive, tmp_path / "missing.tgz", change)


def _member_unlisted(archive: Path, tmp_path: Path) -> Path:
    def change(contents: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
        return [(regular(name), data) for name, data in contents.items()] + [(regular("data/extra.key"), b"x")]

    return rebuilt(archive, tmp_path / "unlisted.tgz", change)


def _manifest_not_first(archive: Path, tmp_path: Path) -> Path:
    def change(contents: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
        return [(regular(name), data) for name, data in reversed(contents.items())]

    return rebuilt(archive, tmp_path / "reordered.tgz", change)


def _manifest_field_wrong(archive: Path, tmp_path: Path) -> Path:
    def change(contents: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
        manifest = json.loads(contents[MANIFEST])
        manifest["members"][0]["size"] = "large"
        contents[MANIFEST] = json.dumps(manifest).encode()
        return [(regular(name), data) for name, data in contents.items()]

    return rebuilt(archive, tmp_path / "wrong-field.tgz", change)


def _newer_schema(archive: Path, tmp_path: Path) -> Path:
    def change(contents: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
        manifest = json.loads(contents[MANIFEST])
        manifest["database"]["schema_revision"] = "9999_from_the_future"
        manifest["gateway_version"] = "9.9.9"
        contents[MANIFEST] = json.dumps(manifest).encode()
        return [(regular(name), data) for name, data in contents.items()]

    return rebuilt(archive, tmp_path / "newer.tgz", change)


def _member_escaping(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Callable[[Path, Path], Path]:
    """An archive whose manifest is valid, followed by one member `name` (of tar type `kind`)."""

    def make(archive: Path, tmp_path: Path) -> Path:
        def change(contents: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
            info = regular(name)
            info.type, info.linkname = kind, link
            entries = [(regular(n), data) for n, data in contents.items()]
            return [entries[0], (info, b"owned\n"), *entries[1:]]

        return rebuilt(archive, tmp_path / "escaping.tgz", change)

    return make


BROKEN_ARCHIVES = [
    pytest.param(_corrupt, ("corrupt",), id="fail/corrupt"),
    pytest.param(_truncated, ("not a readable backup",), id="fail/truncated"),
    pytest.param(_not_an_archive, ("not a readable backup",), id="fail/not-an-archive"),
    pytest.param(_altered_member, ("'data/ca/ca.crt' does not match its checksum",), id="fail/bad-checksum"),
    pytest.param(_member_missing, ("lacks data/ra/ra.key",), id="fail/member-missing"),
    pytest.param(_member_unlisted, ("'data/extra.key' is not listed in manifest.json",), id="fail/member-unlisted"),
    pytest.param(_manifest_not_first, ("first member is not manifest.json",), id="fail/manifest-not-first"),
    pytest.param(_manifest_field_wrong, ("manifest.json: size is missing or not a int",), id="fail/manifest-field"),
    pytest.param(_newer_schema, ("9999_from_the_future", "gateway 9.9.9"), id="fail/newer-schema"),
    pytest.param(_member_escaping("../../evil"), ("unsafe member '../../evil'",), id="fail/tar-slip-dotdot"),
    pytest.param(_member_escaping("data/../../evil"), ("unsafe member",), id="fail/tar-slip-inside-data"),
    pytest.param(_member_escaping("/etc/evil"), ("member '/etc/evil' has no place",), id="fail/tar-slip-absolute"),
    pytest.param(
        _member_escaping("data/ca.pem2", tarfile.SYMTYPE, "/etc/passwd"), ("unsafe member",), id="fail/symlink"
    ),
    pytest.param(_member_escaping("data/dev", tarfile.CHRTYPE), ("unsafe member 'data/dev'",), id="fail/device"),
    pytest.param(_member_escaping("data/sub", tarfile.DIRTYPE), ("not a regular file",), id="fail/directory"),
    pytest.param(_member_escaping("elsewhere/x"), ("has no place in a gateway backup",), id="fail/unknown-place"),
    pytest.param(_member_escaping("data/gateway.db"), ("has no place in a gateway backup",), id="fail/reserved-name"),
]


@pytest.mark.parametrize(("make", "fragments"), BROKEN_ARCHIVES)
def test_restore_refuses_a_broken_archive_and_writes_nothing(
    runner: CliRunner,
    sqlite_archive: Path,
    tmp_path: Path,
    make: Callable[[Path, Path], Path],
    fragments: tuple[str, ...],
) -> None:
    broken = make(sqlite_archive, tmp_path)
    refused(restore_cli(runner, broken, "--verify"), *fragments)
    target = tmp_path / "restored"
    refused(restore_cli(runner, broken, "--data-dir", str(target)), *fragments)
    assert not target.exists()
    assert leftovers(tmp_path) == []
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "evil").exists()


def test_verify_backup_names_what_it_checked(sqlite_archive: Path) -> None:
    manifest = verify_backup(sqlite_archive)
    assert manifest.members and all(len(member.sha256) == 64 for member in manifest.members)


def test_manifest_rejects_a_setting_pointing_outside(sqlite_archive: Path) -> None:
    data = json.loads(members(sqlite_archive)[MANIFEST])
    data["settings"]["ca.key"] = "../outside/ca.key"
    with pytest.raises(BackupError, match=r"settings\.ca\.key must be a relative path inside the data directory"):
        Manifest.from_json(json.dumps(data).encode())
