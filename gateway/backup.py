"""`gateway backup`: one archive holding a consistent copy of a gateway, made while it serves.

The archive is a gzip-compressed tar file, written 0600 (it holds the private keys), with these members:

- `manifest.json` first: format, gateway version, creation time, source data directory, what the
  database is and whether it is included, its schema revision and certificate count, where each path
  setting's file goes when restored, and the SHA-256 and size of every other member;
- `config.toml`: the configuration file, byte for byte;
- `data/<path>`: each file a path setting names (CA, RA and TLS certificates and keys, the next CA's
  and RA's, the EST key-encryption keys) and `ca.pem`, byte for byte: an encrypted key stays
  encrypted. A file outside the data directory goes to `data/external/<setting>/<name>`, where the
  restored configuration points. The key passphrase file is never included: an archive that held it
  would hold the keys in clear;
- `database/gateway.db`: for SQLite, a snapshot made with SQLite's online backup API from one read
  transaction, so it is consistent however many writers go on (a file copy of gateway.db misses what
  is still in the write-ahead log). A PostgreSQL database is not included: `pg_dump` backs it up
  (`postgres_commands`), and the manifest says so.

The archive is written to a hidden temporary file beside FILE and renamed at the end: FILE is either
absent or complete. gateway.restore reads it back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import os
import shlex
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gateway.config import GatewayConfig
from gateway.settings import SETTINGS
from shared_ca.kms import is_token_key
from shared_ca.storage.db import redact_url
from shared_ca.storage.snapshot import (
    SnapshotError,
    libpq_url,
    snapshot_sqlite,
    sqlite_path,
    summarize_postgres,
    summarize_sqlite,
)

FORMAT = "scep-est-gateway-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG_MEMBER = "config.toml"
DATABASE_MEMBER = "database/gateway.db"
DATA_PREFIX = "data/"
EXTERNAL_DIR = "external"  # where files from outside the data directory go, under the restored one
PASSPHRASE_SETTING = "keys.passphrase_file"  # noqa: S105 - a setting's name, not a secret
KEK_SETTING = "est.kek_dir"  # a directory: every regular file in it
# Every setting that names a file the gateway serves from, but the passphrase file.
PATH_SETTINGS = tuple(s.key for s in SETTINGS if s.kind == "path" and s.key != PASSPHRASE_SETTING)
OPTIONAL_SETTINGS = frozenset({"next_ca.cert", "next_ca.key", "next_ra.cert", "next_ra.key", KEK_SETTING})
PUBLIC_FILES = ("ca.pem",)  # in the data directory itself, named by no setting
RESERVED_NAMES = frozenset({"config.toml", "gateway.db"})  # where a restore puts the config and the snapshot
_CHUNK = 1024 * 1024
_ENCRYPTED_KEY = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"  # PKCS#8 with a passphrase


class BackupError(Exception):
    """A backup cannot be made or read; the message says why in one line."""


@dataclass(frozen=True)
class Member:
    """One archive member besides the manifest: its name, SHA-256 (hex) and size in bytes."""

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DatabaseFacts:
    """The database of the backed-up gateway, as the backup found it."""

    kind: str  # sqlite | postgresql
    included: bool
    schema_revision: str | None  # None: unknown (PostgreSQL not reachable at backup time)
    certificates: int | None
    issuers: tuple[str, ...]  # "name (kind)"
    source: str  # the SQLite file, or the PostgreSQL URL without its password


@dataclass(frozen=True)
class Manifest:
    """What an archive holds (its member `manifest.json`)."""

    gateway_version: str
    created_at: str
    source_data_dir: str
    source_config: str | None
    database: DatabaseFacts
    settings: Mapping[str, str]  # path setting -> where its file (or directory) goes, relative to the data dir
    keys_encrypted: bool
    passphrase_file: str  # the setting's value at backup time ("" when unset); the file is not included
    members: tuple[Member, ...]

    def to_json(self) -> bytes:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}
        data["settings"] = dict(self.settings)
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """The manifest in `raw`; BackupError naming the first field that is missing or wrong."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BackupError("manifest.json is not JSON") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BackupError("manifest.json: not the manifest of a gateway backup")
        if data.get("format_version") != FORMAT_VERSION:
            raise BackupError(
                f"manifest.json: format_version {data.get('format_version')!r} is not {FORMAT_VERSION}: "
                "restore with the gateway version that made it"
            )
        database = _field(data, "database", dict)
        return cls(
            gateway_version=_field(data, "gateway_version", str),
            created_at=_field(data, "created_at", str),
            source_data_dir=_field(data, "source_data_dir", str),
            source_config=_field(data, "source_config", str, optional=True),
            database=DatabaseFacts(
                kind=_choice(database, "kind", ("sqlite", "postgresql")),
                included=_field(database, "included", bool),
                schema_revision=_field(database, "schema_revision", str, optional=True),
                certificates=_field(database, "certificates", int, optional=True),
                issuers=tuple(_strings(database, "issuers")),
                source=_field(database, "source", str),
            ),
            settings=_settings(data),
            keys_encrypted=_field(data, "keys_encrypted", bool),
            passphrase_file=_field(data, "passphrase_file", str),
            members=tuple(_members(data)),
        )


def _field(data: Mapping[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BackupError(f"manifest.json: {key} is missing or not a {kind.__name__}")
    return value


def _choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value: str = _field(data, key, str)
    if value not in choices:
        raise BackupError(f"manifest.json: {key} {value!r} is not one of {', '.join(choices)}")
    return value


def _strings(data: Mapping[str, Any], key: str) -> list[str]:
    values = _field(data, key, list)
    if not all(isinstance(v, str) for v in values):
        raise BackupError(f"manifest.json: {key} must be a list of strings")
    return list(values)


def _settings(data: Mapping[str, Any]) -> dict[str, str]:
    settings: dict[str, str] = _field(data, "settings", dict)
    for key, value in settings.items():
        if key not in PATH_SETTINGS:
            raise BackupError(f"manifest.json: settings names {key!r}, which is no path setting")
        if not isinstance(value, str) or not safe_relative(value):
            raise BackupError(f"manifest.json: settings.{key} must be a relative path inside the data directory")
    return dict(settings)


def _members(data: Mapping[str, Any]) -> list[Member]:
    members = []
    for entry in _field(data, "members", list):
        if not isinstance(entry, dict):
            raise BackupError("manifest.json: members must be a list of objects")
        name, digest, size = _field(entry, "name", str), _field(entry, "sha256", str), _field(entry, "size", int)
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest) or size < 0:
            raise BackupError(f"manifest.json: member {name!r} has no valid sha256 or size")
        members.append(Member(name, digest, size))
    return members


def safe_relative(path: str) -> bool:
    """True when `path` is a relative POSIX path that stays inside the directory it is taken from."""
    pure = PurePosixPath(path)
    return (
        bool(path)
        and "\\" not in path
        and "\x00" not in path
        and not pure.is_absolute()
        and all(part not in ("", ".", "..") for part in path.split("/"))
    )


def member_kind(name: str) -> str:
    """What an archive member is by its name (config, database, data, manifest); BackupError for a
    name the format has no place for."""
    if name == MANIFEST:
        return "manifest"
    if name == CONFIG_MEMBER:
        return "config"
    if name == DATABASE_MEMBER:
        return "database"
    relative = name[len(DATA_PREFIX) :]
    if name.startswith(DATA_PREFIX) and safe_relative(relative) and relative not in RESERVED_NAMES:
        return "data"
    raise BackupError(f"member {name!r} has no place in a gateway backup")


def gateway_version() -> str:
    try:
        return importlib.metadata.version("scep-est-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- what to copy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    member: str
    path: Path


def _restored_path(data_dir: Path, setting: str, path: Path) -> str:
    """Where `path` (the file or directory of `setting`) goes, relative to the restored data directory:
    the same place when it is inside the data directory, else external/<setting>/<name>."""
    resolved = path.resolve()
    with contextlib.suppress(ValueError):
        relative = resolved.relative_to(data_dir)
        if relative.parts:
            return relative.as_posix()
    return f"{EXTERNAL_DIR}/{setting}" + ("" if setting == KEK_SETTING else f"/{resolved.name}")


def _data_sources(config: GatewayConfig) -> tuple[list[_Source], dict[str, str]]:
    """The files to copy and where each path setting points once restored."""
    data_dir = config.data_dir.resolve()
    sources: dict[str, _Source] = {}
    settings: dict[str, str] = {}
    for setting in PATH_SETTINGS:
        if not config[setting] or is_token_key(config[setting]):  # a key in a token stays there (shared_ca.kms)
            continue
        path = config.path(setting)
        if not path.exists():
            if setting in OPTIONAL_SETTINGS:
                continue
            raise BackupError(f"{setting}: {path} does not exist")
        restored = _restored_path(data_dir, setting, path)
        if setting == KEK_SETTING:
            if not path.is_dir():
                raise BackupError(f"{setting}: {path} is not a directory")
            for entry in sorted(path.iterdir()):
                if entry.is_file():
                    member = f"{DATA_PREFIX}{restored}/{entry.name}"
                    sources[member] = _Source(member, entry)
        elif path.is_file():
            member = DATA_PREFIX + restored
            sources[member] = _Source(member, path)
        else:
            raise BackupError(f"{setting}: {path} is not a file")
        settings[setting] = restored
    for name in PUBLIC_FILES:
        if (data_dir / name).is_file():
            sources[DATA_PREFIX + name] = _Source(DATA_PREFIX + name, data_dir / name)
    return list(sources.values()), settings


# -- the database -----------------------------------------------------------------------------------


def _sqlite_facts(source: Path, snapshot: Path) -> DatabaseFacts:
    try:
        snapshot_sqlite(source, snapshot)
        summary = summarize_sqlite(snapshot)
    except SnapshotError as exc:
        raise BackupError(str(exc)) from None
    return DatabaseFacts("sqlite", True, summary.schema_revision, summary.certificates, summary.issuers, str(source))


def _postgres_facts(url: str) -> DatabaseFacts:
    """What the backup records of a PostgreSQL database (not included): its revision and certificate
    count when it answers, unknown when it does not (the keys and config are worth backing up anyway)."""
    summary = summarize_postgres(url)
    if summary is None:
        return DatabaseFacts("postgresql", False, None, None, (), redact_url(url))
    return DatabaseFacts(
        "postgresql", False, summary.schema_revision, summary.certificates, summary.issuers, redact_url(url)
    )


def postgres_commands(url: str, dump_file: str) -> tuple[str, str]:
    """The pg_dump and pg_restore commands for the PostgreSQL database at the SQLAlchemy `url` (its
    password left out: give it with PGPASSWORD or ~/.pgpass)."""
    libpq = shlex.quote(libpq_url(url))
    dump = f"pg_dump --format=custom --file={shlex.quote(dump_file)} {libpq}"
    restore = f"pg_restore --clean --if-exists --no-owner --dbname={libpq} {shlex.quote(dump_file)}"
    return dump, restore


# -- writing the archive ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: Manifest
    size: int
    sha256: str  # of the archive file


@dataclass(frozen=True)
class _Entry:
    """One member to write: its bytes (a config or key file, read once) or the file holding them (the
    database snapshot, which nothing else writes)."""

    name: str
    mode: int
    data: bytes | None = None
    path: Path | None = None

    def member(self) -> Member:
        digest = hashlib.sha256()
        size = 0
        for chunk in self.chunks():
            digest.update(chunk)
            size += len(chunk)
        return Member(self.name, digest.hexdigest(), size)

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        assert self.path is not None
        with self.path.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                yield chunk


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of a file."""
    return _Entry(path.name, 0, path=path).member().sha256


def _read(path: Path, name: str) -> _Entry:
    """The bytes of one file to back up, read once (so the checksum is that of what is archived)."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode & 0o755  # a restored copy: the source's bits, no write for others
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    return _Entry(name, mode, data=data)


def _check_out(out: Path, force: bool) -> Path:
    out = out.absolute()
    if not out.parent.is_dir():
        raise BackupError(f"--out: directory {out.parent} does not exist")
    if out.is_dir():
        raise BackupError(f"--out: {out} is a directory")
    if out.exists() and not force:
        raise BackupError(f"--out: {out} exists (use --force to replace it)")
    return out


def create_backup(
    config: GatewayConfig, out: Path, *, force: bool = False, now: dt.datetime | None = None
) -> BackupResult:
    """Write the archive of the gateway `config` describes to `out` (module docstring)."""
    out = _check_out(out, force)
    now = now or dt.datetime.now(dt.UTC)
    if config.source is None or not config.source.is_file():
        raise BackupError(f"no configuration file in {config.data_dir}: nothing to back up")
    sources, settings = _data_sources(config)
    entries = [_read(config.source, CONFIG_MEMBER)] + [_read(s.path, s.member) for s in sources]
    try:
        source_db = sqlite_path(config.database_url)
    except SnapshotError as exc:
        raise BackupError(str(exc)) from None
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        if source_db is not None:
            snapshot = Path(scratch) / "gateway.db"
            database = _sqlite_facts(source_db, snapshot)
            entries.append(_Entry(DATABASE_MEMBER, 0o600, path=snapshot))
        else:
            database = _postgres_facts(config.database_url)
        manifest = Manifest(
            gateway_version=gateway_version(),
            created_at=now.isoformat(timespec="seconds"),
            source_data_dir=str(config.data_dir.resolve()),
            source_config=str(config.source.resolve()),
            database=database,
            settings=settings,
            keys_encrypted=any(e.data is not None and _ENCRYPTED_KEY in e.data for e in entries),
            passphrase_file=str(config[PASSPHRASE_SETTING]),
            members=tuple(entry.member() for entry in entries),
        )
        _write_archive(out, force, manifest, entries, now.timestamp())
    return BackupResult(out, manifest, out.stat().st_size, file_sha256(out))


def _add(tar: tarfile.TarFile, entry: _Entry, size: int, mtime: float) -> None:
    info = tarfile.TarInfo(entry.name)
    info.size, info.mtime, info.mode = size, mtime, entry.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.data is not None:
        tar.addfile(info, io.BytesIO(entry.data))
    else:
        assert entry.path is not None
        with entry.path.open("rb") as stream:
            tar.addfile(info, stream)


def _write_archive(out: Path, force: bool, manifest: Manifest, entries: list[_Entry], mtime: float) -> None:
    """Write the tar.gz beside `out` (0600: it holds the keys) and move it into place once complete."""
    fd, partial_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    partial = Path(partial_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                body = manifest.to_json()
                _add(tar, _Entry(MANIFEST, 0o600, data=body), len(body), mtime)
                for entry, member in zip(entries, manifest.members, strict=True):
                    _add(tar, entry, member.size, mtime)
            raw.flush()
            os.fsync(raw.fileno())
        if force:
            os.replace(partial, out)
        else:
            try:
                os.link(partial, out)  # fails if FILE appeared meanwhile: never replaced without --force
            except FileExistsError:
                raise BackupError(f"--out: {out} exists (use --force to replace it)") from None
            partial.unlink()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
