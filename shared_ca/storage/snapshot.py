"""The database side of a gateway backup (gateway.backup): an online SQLite snapshot, what a database
holds (schema revision, certificates, issuers), and the revisions this version knows.

A copy of a SQLite file made while the gateway writes misses what is still in its write-ahead log (and
may catch a page half-written). `snapshot_sqlite` uses SQLite's online backup API instead: every page
in one step, within one read transaction, so the snapshot is consistent while writers go on (in WAL
mode they do not wait for it).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from shared_ca.storage.db import MIGRATIONS_DIR, SQLITE_BUSY_TIMEOUT_MS, describe_database_error

PG_CONNECT_TIMEOUT_SECONDS = 10


class SnapshotError(Exception):
    """A snapshot cannot be made or a database cannot be read; the message says why in one line."""


@dataclass(frozen=True)
class DatabaseSummary:
    """What a gateway database holds, in brief."""

    schema_revision: str | None  # None: never migrated
    certificates: int
    issuers: tuple[str, ...]  # "name (kind)", in the order they were registered


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite database URL; None for another backend. SnapshotError for an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
        raise SnapshotError("database_url: an in-memory SQLite database cannot be backed up")
    return Path(str(parsed.database))


def libpq_url(url: str) -> str:
    """A PostgreSQL SQLAlchemy URL as pg_dump and pg_restore take it: no driver suffix, no password
    (they read it from PGPASSWORD or ~/.pgpass)."""
    parsed = make_url(url)._replace(drivername="postgresql", password=None)  # URL.set() cannot unset a field
    return parsed.render_as_string(hide_password=False)


def snapshot_sqlite(source: Path, target: Path) -> None:
    """Copy the SQLite database `source` into the new file `target` (0600) with SQLite's online backup
    API: a consistent snapshot, write-ahead log included, while writers go on. The snapshot is one
    self-contained file (rollback-journal mode, no -wal beside it) that passed SQLite's integrity check."""
    if not source.is_file():
        raise SnapshotError(f"the SQLite database {source} does not exist")
    try:
        reader = sqlite3.connect(f"file:{quote(str(source))}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            copy = sqlite3.connect(target)
            try:
                reader.backup(copy)  # pages=-1: every page in one step, within one read transaction
                copy.execute("PRAGMA journal_mode=DELETE")
                (verdict,) = copy.execute("PRAGMA integrity_check").fetchone()
            finally:
                copy.close()
        finally:
            reader.close()
    except sqlite3.Error as exc:
        raise SnapshotError(f"cannot back up the SQLite database {source}: {exc}") from None
    if verdict != "ok":
        raise SnapshotError(f"the snapshot of {source} fails SQLite's integrity check: {verdict}")
    target.chmod(0o600)


def _summary(conn: Connection) -> DatabaseSummary:
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is None:
        return DatabaseSummary(None, 0, ())
    # Tables and columns as the first migration made them: readable at any revision.
    count = conn.execute(text("SELECT count(*) FROM certificates")).scalar_one()
    issuers = conn.execute(text("SELECT name, kind FROM issuers ORDER BY id")).all()
    return DatabaseSummary(revision, int(count), tuple(f"{name} ({kind})" for name, kind in issuers))


def summarize_sqlite(path: Path) -> DatabaseSummary:
    """The summary of a SQLite file, read without changing it; SnapshotError when it is no gateway database."""
    engine = create_engine(f"sqlite:///file:{quote(str(path))}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            return _summary(conn)
    except SQLAlchemyError as exc:
        raise SnapshotError(f"{path}: not a readable gateway database ({describe_database_error(exc)})") from None
    finally:
        engine.dispose()


def summarize_postgres(url: str) -> DatabaseSummary | None:
    """The summary of a PostgreSQL database; None when it does not answer (within a few seconds)."""
    engine = create_engine(url, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS})
    try:
        with engine.connect() as conn:
            return _summary(conn)
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def known_revisions() -> set[str]:
    """Every schema revision this version's migrations know."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}
