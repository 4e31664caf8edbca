"""`gateway restore`: check a backup archive (gateway.backup) and bring it back into a new data directory.

Nothing is written before the whole archive is checked: its manifest, every member's name (a relative
path in its place: no absolute path, no `..`, no link or device, as tarfile's data filter also checks),
size and SHA-256, and the database's schema revision (one this version knows). The files are then
written into a hidden staging directory beside the target, checked once more, and the staging
directory is renamed to the target: the target is either absent or complete.

The restored directory is self-contained: files that came from outside the source's data directory
are under `external/`, and the configuration points at them; a SQLite snapshot becomes `gateway.db`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gateway.backup import (
    CONFIG_MEMBER,
    DATA_PREFIX,
    DATABASE_MEMBER,
    MANIFEST,
    PASSPHRASE_SETTING,
    BackupError,
    Manifest,
    Member,
    member_kind,
)
from gateway.config import CONFIG_FILE_NAME, SECTIONS, ConfigError, load_config, read_config_file, render_config
from gateway.settings import SETTINGS
from shared_ca.storage.db import head_revision, validate_database_url
from shared_ca.storage.snapshot import SnapshotError, known_revisions, summarize_sqlite

MAX_MANIFEST_BYTES = 1024 * 1024
_CHUNK = 1024 * 1024
_DEFAULTS = {s.key: s.default for s in SETTINGS}


@dataclass(frozen=True)
class RestoreResult:
    data_dir: Path
    manifest: Manifest
    schema_revision: str | None  # of the restored SQLite database (None: not included)
    upgrade_needed: bool  # the restored database is older than this version's schema: `gateway db upgrade`
    certificates: int | None
    issuers: tuple[str, ...]
    rewritten: dict[str, str]  # setting -> its new value in the restored configuration
    database_url: str  # of the restored configuration


# -- reading and checking ---------------------------------------------------------------------------


@contextlib.contextmanager
def _open(archive: Path) -> Iterator[tarfile.TarFile]:
    if not archive.is_file():
        raise BackupError(f"{archive}: no such file")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            yield tar
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        reason = " ".join(str(exc).split())
        raise BackupError(f"{archive}: not a readable backup (corrupt or truncated: {reason})") from None
    except PermissionError:
        raise BackupError(f"{archive}: permission denied") from None
    except OSError as exc:  # gzip.BadGzipFile and read errors
        raise BackupError(f"{archive}: not a readable backup ({exc.strerror or exc})") from None


def _checked(info: tarfile.TarInfo) -> str:
    """The member's kind (gateway.backup.member_kind) once its name and type are safe to extract."""
    try:
        tarfile.data_filter(info, "/restore")  # absolute paths, `..`, links, devices: refused
    except tarfile.FilterError as exc:
        raise BackupError(f"unsafe member {info.name!r}: {exc}") from None
    if not info.isreg():
        raise BackupError(f"unsafe member {info.name!r}: not a regular file")
    return member_kind(info.name)


def _stream(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(info)
    if stream is None:  # pragma: no cover - a regular file always has a stream
        raise BackupError(f"member {info.name!r} cannot be read")
    return stream


def _members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """Each member after the manifest, checked (`_checked`)."""
    while (info := tar.next()) is not None:
        kind = _checked(info)
        if kind == "manifest":
            raise BackupError("the archive holds a second manifest.json")
        yield info, kind


def _manifest(tar: tarfile.TarFile) -> Manifest:
    first = tar.next()
    if first is None or first.name != MANIFEST:
        raise BackupError("not a gateway backup: its first member is not manifest.json")
    _checked(first)
    if first.size > MAX_MANIFEST_BYTES:
        raise BackupError("manifest.json is too large")
    manifest = Manifest.from_json(_stream(tar, first).read())
    names = [m.name for m in manifest.members]
    if len(set(names)) != len(names):
        raise BackupError("manifest.json lists a member twice")
    for name in names:
        if member_kind(name) == "manifest":
            raise BackupError("manifest.json lists itself")
    if CONFIG_MEMBER not in names:
        raise BackupError("manifest.json lists no config.toml")
    if manifest.database.included != (DATABASE_MEMBER in names):
        raise BackupError("manifest.json: database.included does not match its members")
    return manifest


def _copy_checked(
    source: IO[bytes], name: str, expected_size: int, expected_sha256: str, target: IO[bytes] | None
) -> None:
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if target is not None:
            target.write(chunk)
    if size != expected_size or digest.hexdigest() != expected_sha256:
        raise BackupError(f"member {name!r} does not match its checksum in manifest.json (corrupt archive)")


def _check_revision(manifest: Manifest) -> None:
    revision = manifest.database.schema_revision
    if revision is not None and revision not in known_revisions():
        raise BackupError(
            f"the backup's database is at schema revision {revision}, which this version does not know "
            f"(the backup was made by gateway {manifest.gateway_version}): restore it with that version or a newer one"
        )


def _walk(archive: Path, staging: Path | None) -> Manifest:
    """Check the archive (module docstring); with `staging`, write each member's file into it too."""
    with _open(archive) as tar:
        manifest = _manifest(tar)
        _check_revision(manifest)
        expected = {m.name: m for m in manifest.members}
        seen: set[str] = set()
        for info, kind in _members(tar):
            member = expected.get(info.name)
            if member is None:
                raise BackupError(f"member {info.name!r} is not listed in manifest.json")
            if info.name in seen:
                raise BackupError(f"member {info.name!r} appears twice")
            seen.add(info.name)
            if staging is None:
                _copy_checked(_stream(tar, info), info.name, member.size, member.sha256, None)
                continue
            _extract(tar, info, kind, member, staging / _restored_name(info.name, kind))
        missing = sorted(set(expected) - seen)
        if missing:
            raise BackupError(f"the archive lacks {', '.join(missing)} (truncated?)")
    return manifest


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, kind: str, member: Member, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            _copy_checked(_stream(tar, info), info.name, member.size, member.sha256, out)
            os.fchmod(out.fileno(), 0o600 if kind != "data" else info.mode & 0o755)
    except FileExistsError:
        raise BackupError(f"member {info.name!r} would overwrite another member's file") from None
    except NotADirectoryError:
        raise BackupError(f"member {info.name!r} would go below another member's file") from None
    except OSError as exc:  # a full disk, a member whose path another member's directory takes
        raise BackupError(f"cannot write {target}: {exc.strerror or exc}") from None


def _restored_name(name: str, kind: str) -> str:
    if kind == "config":
        return CONFIG_FILE_NAME
    if kind == "database":
        return "gateway.db"
    return name[len(DATA_PREFIX) :]


def verify_backup(archive: Path) -> Manifest:
    """Check the archive without writing anything; its manifest, or BackupError saying what is wrong."""
    return _walk(archive, None)


# -- restoring --------------------------------------------------------------------------------------


def _check_target(data_dir: Path) -> None:
    if data_dir.exists():
        if not data_dir.is_dir():
            raise BackupError(f"--data-dir: {data_dir} exists and is not a directory")
        if any(data_dir.iterdir()):
            raise BackupError(f"--data-dir: {data_dir} is not empty: restore into a new directory")
    elif not data_dir.parent.is_dir():
        raise BackupError(f"--data-dir: directory {data_dir.parent} does not exist")


def _flat_config(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A parsed config file as flat settings and its raw [profiles] tables (validated when loaded later)."""
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key == "profiles":
            continue
        if key in SECTIONS and isinstance(value, dict):
            values.update({f"{key}.{sub}": item for sub, item in value.items()})
        else:
            values[key] = value
    profiles = document.get("profiles", {})
    return values, profiles if isinstance(profiles, dict) else {}


def _rewrite_config(staging: Path, manifest: Manifest, database_url: str | None) -> dict[str, str]:
    """Point the restored configuration at the restored files and database; the changed settings."""
    path = staging / CONFIG_FILE_NAME
    try:
        values, profiles = _flat_config(read_config_file(path))
    except ConfigError as exc:
        raise BackupError(f"the archived configuration: {exc}") from None
    changes: dict[str, str] = {}
    for setting, restored in manifest.settings.items():
        if str(values.get(setting, _DEFAULTS[setting])) != restored:
            changes[setting] = restored
    if manifest.database.included and values.get("database_url"):
        changes["database_url"] = ""  # the snapshot is gateway.db in the data directory
    if database_url is not None and values.get("database_url") != database_url:
        changes["database_url"] = database_url
    if changes:
        values.update(changes)
        if values.get("database_url") == "":
            del values["database_url"]
        path.write_text(render_config(values, profiles, commented=False), encoding="utf-8")
        path.chmod(0o600)
    return changes


def _check_database_url(manifest: Manifest, database_url: str | None, archived_url: str) -> None:
    if database_url is not None:
        if manifest.database.included:
            raise BackupError("--database-url: the backup holds its SQLite database; it is restored as gateway.db")
        problem = validate_database_url(database_url)
        if problem:
            raise BackupError(f"--database-url: {problem}")
    elif not manifest.database.included and not archived_url:
        raise BackupError(
            "--database-url: the backup holds no database (its gateway used PostgreSQL, whose URL is not in "
            "the archived configuration): name the database the restored gateway uses"
        )


def _archived_database_url(staging: Path) -> str:
    try:
        values, _profiles = _flat_config(read_config_file(staging / CONFIG_FILE_NAME))
    except ConfigError as exc:
        raise BackupError(f"the archived configuration: {exc}") from None
    return str(values.get("database_url") or "")


def restore_backup(archive: Path, data_dir: Path, *, database_url: str | None = None) -> RestoreResult:
    """Check `archive`, then restore it into the new (absent or empty) directory `data_dir`."""
    data_dir = data_dir.absolute()
    _check_target(data_dir)
    verify_backup(archive)
    staging = Path(tempfile.mkdtemp(dir=data_dir.parent, prefix=f".{data_dir.name}.restore-"))
    try:
        manifest = _walk(archive, staging)
        _check_database_url(manifest, database_url, _archived_database_url(staging))
        rewritten = _rewrite_config(staging, manifest, database_url)
        try:
            restored_url = load_config(staging, environ={}, require_file=True).database_url
        except ConfigError as exc:
            raise BackupError(f"the restored configuration is not valid: {exc}") from None
        revision, certificates, issuers = None, manifest.database.certificates, manifest.database.issuers
        if manifest.database.included:
            try:
                summary = summarize_sqlite(staging / "gateway.db")
            except SnapshotError as exc:
                raise BackupError(str(exc)) from None
            revision, certificates, issuers = summary.schema_revision, summary.certificates, summary.issuers
        for directory in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
            directory.chmod(0o700)
        if data_dir.exists():
            data_dir.rmdir()  # empty (checked); the staging directory takes its place
        os.rename(staging, data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RestoreResult(
        data_dir=data_dir,
        manifest=manifest,
        schema_revision=revision,
        upgrade_needed=manifest.database.included and revision != head_revision(),
        certificates=certificates,
        issuers=tuple(issuers),
        rewritten=rewritten,
        database_url=restored_url.replace(str(staging), str(data_dir)),
    )


def passphrase_note(result: RestoreResult) -> str | None:
    """What the operator must provide for the restored keys, if anything (the passphrase is never archived)."""
    if not result.manifest.keys_encrypted:
        return None
    where = result.manifest.passphrase_file
    if not where:
        return "the keys are encrypted: set GATEWAY_KEY_PASSPHRASE as on the source"
    place = Path(where) if Path(where).is_absolute() else result.data_dir / where
    return (
        f"the keys are encrypted: put the passphrase file at {place} ({PASSPHRASE_SETTING}) "
        "or set GATEWAY_KEY_PASSPHRASE"
    )
