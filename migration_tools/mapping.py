"""Mapping: give every legacy SCEP device an EST credential, and the export an MDM pushes to it.

Two modes (DESIGN.md "Migration model"):

- `certificate`: the device's current SCEP certificate authenticates EST simplereenroll as the TLS
  client certificate: nothing new to push but the EST URL. Only a certificate that would
  authenticate now qualifies: the rule is EST's own (`shared_ca.trust.recognise`: one this CA
  issued, or one a legacy CA issued inside its migration window; not revoked, not expired).
- `bootstrap`: a one-time HTTP Basic user for simpleenroll, bound to the device's identity (EST
  refuses it for any other subject), with a 192-bit generated password stored as a fast keyed hash.

The password exists in one place only: the export row handed to `emit`, which the caller writes
to the file the MDM reads (`ExportFile`: created 0600, never overwritten by accident). Neither the
database, the log nor any summary holds it. A device is marked `mapped` only after its row was
emitted, so a credential is never recorded whose secret did not reach the file.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import io
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

from cryptography import x509

from migration_tools.mapping_storage import (
    BootstrapUsers,
    CertificateStorage,
    DeviceList,
    MappingStorage,
    UserByName,
)
from shared_ca.errors import Conflict, NotFound, PolicyDenied
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.devices import DeviceRecord
from shared_ca.storage.est_users import MAX_NAME, hash_generated_secret, new_generated_secret
from shared_ca.storage.schema import MAPPING_MODES
from shared_ca.trust import recognise

EXPORT_COLUMNS = ("device_id", "est_url", "mode", "username", "password")
EXPORT_FORMATS = {".csv": "csv", ".json": "json"}
DEFAULT_EXPIRY = dt.timedelta(days=30)
PAGE = 500  # devices read per query (keyset pagination)
USERNAME_PREFIX = "boot-"
_SUFFIX_BYTES = 4  # 8 hex characters: tells two credentials of one device apart
_SLUG_MAX = MAX_NAME - len(USERNAME_PREFIX) - 1 - 2 * _SUFFIX_BYTES
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._@-]+")


# -- what to map, and the rows --------------------------------------------------------------------


@dataclass(frozen=True)
class MapRequest:
    """What `gateway migrate map` was asked to do."""

    mode: str  # "certificate" | "bootstrap"
    est_url: str  # the configured EST base URL (GatewayConfig.est_url)
    actor: str
    group: str | None = None
    label: str | None = None  # an EST label (profile name); None: the default label
    rotate: bool = False  # also re-map devices that are `mapped` already
    expires_in: dt.timedelta = DEFAULT_EXPIRY  # of a bootstrap credential

    def __post_init__(self) -> None:
        if self.mode not in MAPPING_MODES:
            raise ValueError(f"mode must be one of {', '.join(MAPPING_MODES)}, not {self.mode!r}")
        if self.expires_in <= dt.timedelta(0):
            raise ValueError("expires_in must be positive")

    @property
    def device_est_url(self) -> str:
        return device_est_url(self.est_url, self.label)


@dataclass(frozen=True)
class MappedDevice:
    """One export row: where the device enrolls over EST, and with what."""

    device_id: str
    est_url: str
    mode: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # bootstrap only; shown once, in the file

    def as_row(self) -> dict[str, str | None]:
        return {column: getattr(self, column) for column in EXPORT_COLUMNS}


@dataclass(frozen=True)
class SkippedDevice:
    device_id: str
    reason: str


@dataclass
class MapSummary:
    """What a run did: identities mapped for the first time, re-mapped (--rotate), and skipped."""

    mapped: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    skipped: list[SkippedDevice] = field(default_factory=list)
    already_mapped: int = 0  # `mapped` devices left alone (no --rotate)
    unchanged: int = 0  # certificate-mapped devices --rotate left as they are: nothing to renew
    disabled_users: int = 0  # old bootstrap users disabled by --rotate


def device_est_url(base: str, label: str | None) -> str:
    """The EST base URL with `/<label>` appended: https://host:port/.well-known/est/<label>."""
    base = base.rstrip("/")
    return f"{base}/{quote(label, safe='')}" if label else base


def bootstrap_username(identity: str) -> str:
    """`boot-<identity slug>-<8 random hex>`: an EST user name (letters, digits, . _ @ -) of ≤ 128 characters."""
    slug = _NOT_IN_NAME.sub("-", identity).strip("-.")[:_SLUG_MAX].rstrip("-.") or "device"
    return f"{USERNAME_PREFIX}{slug}-{secrets.token_hex(_SUFFIX_BYTES)}"


def certificate_refusal(storage: CertificateStorage, device: DeviceRecord, now: dt.datetime) -> str | None:
    """Why the device's current certificate cannot authenticate EST now; None when it can."""
    if device.certificate_id is None:
        return "no certificate on record"
    record = storage.certificates.certificate_by_id(device.certificate_id)
    if record is None:
        return "its certificate is not in the store"
    try:
        recognised = recognise(storage, x509.load_der_x509_certificate(record.der), now)
    except PolicyDenied as exc:
        return f"{exc.public_message} ({exc.detail})" if exc.detail != exc.public_message else exc.public_message
    if recognised is None:
        return "its certificate was not issued by this CA or a trusted legacy CA"
    return None


# -- the run --------------------------------------------------------------------------------------


def _candidates(devices: DeviceList, group: str | None) -> Iterator[DeviceRecord]:
    after = 0
    while page := devices.devices(group=group, limit=PAGE, after_id=after):
        yield from page
        after = page[-1].id


def map_devices(
    storage: MappingStorage,
    request: MapRequest,
    now: dt.datetime,
    emit: Callable[[MappedDevice], None],
) -> MapSummary:
    """Map every `legacy` device (of `request.group`), and with `rotate` every `mapped` one again.

    `emit` receives each export row before the device is recorded as mapped, and must have stored
    it (written and flushed) when it returns; an exception from it stops the run, the credential
    just made is disabled, and the device stays as it was.
    """
    summary = MapSummary()
    for device in _candidates(storage.devices, request.group):
        if device.state == "mapped" and not request.rotate:
            summary.already_mapped += 1
            continue
        if device.state not in ("legacy", "mapped"):
            continue
        if device.state == "mapped" and request.mode == device.mapping_mode == "certificate":
            summary.unchanged += 1  # the certificate still is the credential: nothing to renew
            continue
        outcome = _map_one(storage, request, device, now, emit)
        if isinstance(outcome, SkippedDevice):
            summary.skipped.append(outcome)
            continue
        (summary.rotated if device.state == "mapped" else summary.mapped).append(device.identity)
        if outcome is not None and _disable_quietly(storage.est_users, outcome, request.actor, now):
            summary.disabled_users += 1
    if summary.mapped or summary.rotated:
        detail: dict[str, Any] = {
            "mode": request.mode,
            "group": request.group,
            "label": request.label,
            "mapped": len(summary.mapped),
            "rotated": len(summary.rotated),
            "skipped": len(summary.skipped),
        }
        storage.audit.record_audit(AuditEvent(request.actor, "devices.mapped", detail=detail), now)
    return summary


def _map_one(
    storage: MappingStorage,
    request: MapRequest,
    device: DeviceRecord,
    now: dt.datetime,
    emit: Callable[[MappedDevice], None],
) -> SkippedDevice | str | None:
    """Map one device: a SkippedDevice, or the name of the old bootstrap user it no longer needs (or None)."""
    url = request.device_est_url
    if request.mode == "certificate":
        reason = certificate_refusal(storage, device, now)
        if reason is not None:
            return SkippedDevice(device.identity, reason)
        record = storage.certificates.certificate_by_id(device.certificate_id or 0)
        assert record is not None  # certificate_refusal found it
        emit(MappedDevice(device.identity, url, "certificate"))
        credential = record.fingerprint_sha256
    else:
        username, password = _new_bootstrap_user(storage.est_users, request, device.identity, now)
        try:
            emit(MappedDevice(device.identity, url, "bootstrap", username, password))
        except BaseException:
            _disable_quietly(storage.est_users, username, request.actor, now)  # its secret reached no one
            raise
        credential = username
    storage.devices.set_mapping(device.identity, request.mode, credential, now, label=request.label)
    return device.est_credential if device.mapping_mode == "bootstrap" and device.est_credential else None


def _new_bootstrap_user(users: BootstrapUsers, request: MapRequest, identity: str, now: dt.datetime) -> tuple[str, str]:
    """(name, password) of a new one-time EST user bound to `identity`; only the password's hash is stored."""
    password = new_generated_secret()
    for attempt in range(3):
        username = bootstrap_username(identity)
        try:
            users.add_est_user(
                username,
                hash_generated_secret(password),
                kind="bootstrap",
                created_by=request.actor,
                now=now,
                labels=(request.label,) if request.label else (),
                device_identity=identity,
                uses_left=1,
                expires_at=now + request.expires_in,
            )
        except Conflict:  # 32 random bits collided with a name in use: draw again
            if attempt == 2:
                raise
            continue
        return username, password
    raise AssertionError("unreachable")


def _disable_quietly(users: BootstrapUsers, name: str, actor: str, now: dt.datetime) -> bool:
    """Disable an EST user; False when it is gone or disabled already."""
    try:
        users.disable_est_user(name, actor=actor, now=now)
    except (NotFound, Conflict):
        return False
    return True


def group_exposure(devices: DeviceList, group: str) -> collections.Counter[str]:
    """How many devices of `group` are in each state (who a sunset would cut off: legacy and mapped)."""
    return collections.Counter(device.state for device in _candidates(devices, group))


# -- the export file ------------------------------------------------------------------------------


def export_format(path: Path) -> str:
    """'csv' or 'json', from the file name's extension; ValueError for any other."""
    fmt = EXPORT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path.name}: the file name must end in .csv or .json")
    return fmt


class ExportFile:
    """The export file, written row by row (each flushed as it is written): CSV with the header
    `device_id,est_url,mode,username,password`, or a JSON array of objects with those keys.

    Created with mode 0600 and O_EXCL: an existing file (or symlink) is refused with
    FileExistsError unless `replace`, which removes it first. Closing completes the document even
    after an error, so the rows written so far stay readable.
    """

    def __init__(self, path: Path, *, replace: bool = False) -> None:
        self.path = path
        self.format = export_format(path)
        self.rows = 0
        if replace and (path.is_symlink() or path.exists()):
            if path.is_dir():
                raise IsADirectoryError(str(path))
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)  # whatever the umask
        self._file: IO[str] = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self._write("[" if self.format == "json" else _csv_line(EXPORT_COLUMNS))

    def _write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    def write(self, device: MappedDevice) -> None:
        """Append one row and flush it to the operating system."""
        row = device.as_row()
        if self.format == "json":
            self._write(("," if self.rows else "") + "\n  " + json.dumps(row))
        else:
            self._write(_csv_line([row[c] or "" for c in EXPORT_COLUMNS]))
        self.rows += 1

    def close(self) -> None:
        if self._file.closed:
            return
        if self.format == "json":
            self._write("\n]\n" if self.rows else "]\n")
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> ExportFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class UnreadableExport(ValueError):
    """A file that is not an export this module wrote (so what it holds cannot be told)."""


def read_export(path: Path) -> list[MappedDevice]:
    """The rows of an export file (CSV or JSON, as ExportFile writes them). UnreadableExport when the
    file is not one: another header, broken CSV or JSON, a row without a device, an unknown mode."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableExport(f"cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    rows: list[dict[str, Any]]
    if export_format(path) == "json":
        try:
            loaded = json.loads(text) if text.strip() else []  # a run cut off before its first row
        except ValueError as exc:
            raise UnreadableExport(f"not JSON ({exc})") from None
        if not isinstance(loaded, list) or not all(isinstance(row, dict) for row in loaded):
            raise UnreadableExport("not a JSON array of export rows")
        rows = loaded
    else:
        try:
            records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        except csv.Error as exc:
            raise UnreadableExport(f"broken CSV ({exc})") from None
        if records and tuple(records[0]) != EXPORT_COLUMNS:
            raise UnreadableExport(f"its header is not {','.join(EXPORT_COLUMNS)}")
        if any(len(record) != len(EXPORT_COLUMNS) for record in records[1:]):
            raise UnreadableExport(f"a row has not {len(EXPORT_COLUMNS)} fields")
        rows = [dict(zip(EXPORT_COLUMNS, record, strict=True)) for record in records[1:]]
    found = []
    for number, row in enumerate(rows, start=1):
        values: dict[str, Any] = {column: row.get(column) or None for column in EXPORT_COLUMNS}
        if not isinstance(values["device_id"], str) or values["mode"] not in MAPPING_MODES:
            raise UnreadableExport(f"row {number} names no device or no known mode")
        if not all(value is None or isinstance(value, str) for value in values.values()):
            raise UnreadableExport(f"row {number} holds a value that is not text")
        found.append(MappedDevice(**{**values, "est_url": values["est_url"] or ""}))
    return found


def unused_credentials(rows: list[MappedDevice], users: UserByName, now: dt.datetime) -> list[MappedDevice]:
    """The bootstrap rows whose EST user can still enroll (active: not disabled, expired or used up).
    Their passwords exist only in the file the rows came from."""
    unused = []
    for row in rows:
        if row.mode != "bootstrap" or row.username is None:
            continue
        user = users.est_user(row.username)
        if user is not None and user.status(now) == "active":
            unused.append(row)
    return unused


def _csv_line(values: Any) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()
