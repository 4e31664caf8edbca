"""MDM device exports (`gateway migrate import --from csv`): which device each row names, and the
group, owner and tags to give it.

A header row names the columns, in any order (others are ignored): `device_id`, `serial` (a
certificate serial, hex), `sha256` (a certificate fingerprint), `group`, `owner`, `tags` (separated
by `;` or `|`). A row is matched onto a stored certificate by fingerprint (any issuer), else by
serial among legacy issuers and ours, and names the device the identity rule finds in that
certificate; else `device_id` names an existing device. An empty cell leaves its field as it is
(an empty `tags` cell clears the tags); `--group` is the group of rows without one.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509

from migration_tools.importer import AuditWriter, ImportOptions, ImportSummary, Progress, Report
from migration_tools.inventory import HEX, InventoryError, Problem, read_file
from shared_ca.errors import InvalidRequest
from shared_ca.serials import serial_hex
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.device_contacts import check_device_fields
from shared_ca.storage.inventory import CHUNK, DeviceAnnotation, StoredCertificate

# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportRow:
    """One row of an MDM device export: which device (by certificate or identity), and what to set."""

    where: str  # file:line
    line: int
    device_id: str | None
    serial: int | None
    sha256: str | None
    group: str | None
    owner: str | None
    tags: tuple[str, ...] | None  # None: the export has no tags column


def _split_tags(text: str) -> tuple[str, ...]:
    return tuple(tag.strip() for tag in re.split(r"[;|]", text) if tag.strip())


def _export_row(cells: dict[str, str], where: str, line: int, has_tags: bool) -> ExportRow:
    def cell(name: str) -> str | None:
        return cells.get(name, "").strip() or None

    serial = cell("serial")
    serial_value = None
    if serial is not None:
        cleaned = serial.lower().replace(":", "").removeprefix("0x")
        if not HEX.fullmatch(cleaned):
            raise ValueError(f"serial {serial!r} is not hexadecimal")
        serial_value = int(cleaned, 16)
    sha256 = cell("sha256")
    if sha256 is not None:
        sha256 = sha256.lower().replace(":", "")
        if len(sha256) != 64 or not HEX.fullmatch(sha256):
            raise ValueError("sha256 is not a SHA-256 fingerprint (64 hex digits)")
    device_id = cell("device_id")
    if device_id is None and serial is None and sha256 is None:
        raise ValueError("names no device: device_id, serial and sha256 are all empty")
    tags = _split_tags(cells.get("tags", "")) if has_tags else None
    group, owner = cell("group"), cell("owner")
    try:
        check_device_fields(device_id or "-", group, owner, tags or ())
    except InvalidRequest as exc:
        raise ValueError(str(exc)) from None
    return ExportRow(where, line, device_id, serial_value, sha256, group, owner, tags)


def parse_device_export(text: str, source: str) -> list[ExportRow | Problem]:
    """The rows of an MDM export with a header row; comma-separated, or `;` / tab when the header
    has no comma (spreadsheet exports in some locales). Bad rows are Problems with their line.

    One row per line: a quoted field never spans lines (no device identity, serial or tag holds a
    line break), so a quote left open is that line's problem alone, named by its line number, and
    the lines after it are read as they are (Python's csv would take the rest of the file into that
    one field).
    """
    lines = text.removeprefix("\ufeff").splitlines()
    if not lines or not lines[0].strip():
        raise InventoryError("PATH", f"{source} is empty: expected a header row")
    header = lines[0]
    delimiter = "," if "," in header else ";" if ";" in header else "\t" if "\t" in header else ","
    try:
        (names,) = [[name.strip().lower() for name in record] for record in _records(header, delimiter)]
    except csv.Error as exc:
        raise InventoryError("PATH", f"{source}:1: the header row is malformed ({exc})") from None
    if not {"device_id", "serial", "sha256"} & set(names):
        raise InventoryError("PATH", f"{source}: the header has none of the columns device_id, serial, sha256")
    rows: list[ExportRow | Problem] = []
    for line, physical in enumerate(lines[1:], start=2):
        where = f"{source}:{line}"
        try:
            records = _records(physical, delimiter)
        except csv.Error as exc:  # a quote left open, or text after a closing quote
            cause = "a quoted field is not closed on this line" if "end of data" in str(exc) else str(exc)
            rows.append(Problem(where, "malformed export row", f"malformed row: {cause}"))
            continue
        if not records or not any(value.strip() for value in records[0]):
            continue
        (record,) = records
        try:
            if len(record) > len(names):
                raise ValueError(f"{len(record)} fields, but the header names {len(names)}")
            cells = dict(zip(names, record, strict=False))
            rows.append(_export_row(cells, where, line, "tags" in names))
        except ValueError as exc:
            rows.append(Problem(where, "malformed export row", f"malformed row: {exc}"))
    return rows


def _records(line: str, delimiter: str) -> list[list[str]]:
    """The CSV records of one physical line (none or one); csv.Error when it is malformed."""
    return list(csv.reader([line], delimiter=delimiter, strict=True))


def read_device_export(path: Path) -> list[ExportRow | Problem]:
    """An MDM export file (UTF-8, a byte-order mark allowed)."""
    if path.is_dir():
        raise InventoryError("PATH", f"{path} is a directory, not a CSV file")
    data = read_file(path, "PATH", "CSV file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InventoryError("PATH", f"{path} is not UTF-8 text (byte {exc.start})") from None
    return parse_device_export(text, str(path))


# -- matching and applying -------------------------------------------------------------------------


class AnnotatedRecords(Protocol):
    """The inventory storage an MDM export reads and annotates (shared_ca.storage.inventory)."""

    def certificates_by_fingerprints(self, fingerprints: Sequence[str]) -> list[StoredCertificate]: ...
    def certificates_by_serials(self, serials: Sequence[str]) -> list[StoredCertificate]: ...
    def device_annotations(self, identities: Sequence[str]) -> dict[str, DeviceAnnotation]: ...
    def annotate_devices(self, batch: Sequence[DeviceAnnotation], now: dt.datetime) -> None: ...


class AnnotationStorage(Protocol):
    """What a device-export import reads and writes (shared_ca.storage)."""

    @property
    def inventory(self) -> AnnotatedRecords: ...
    @property
    def audit(self) -> AuditWriter: ...


class _Matcher:
    """Resolves rows of one chunk to device identities, with one look-up for the whole chunk."""

    def __init__(self, records: AnnotatedRecords, rows: Sequence[ExportRow], options: ImportOptions) -> None:
        self.rule = options.identity
        by_fingerprint = records.certificates_by_fingerprints([r.sha256 for r in rows if r.sha256])
        by_serial = records.certificates_by_serials([serial_hex(r.serial) for r in rows if r.serial is not None])
        self.by_fingerprint = {c.fingerprint_sha256: c for c in [*by_fingerprint, *by_serial]}
        self.by_serial: dict[str, list[str]] = collections.defaultdict(list)
        for cert in by_serial:
            self.by_serial[cert.serial_hex].append(cert.fingerprint_sha256)
        self._identities: dict[str, str | None] = {}

    def identity_of(self, cert: StoredCertificate) -> str | None:
        if cert.fingerprint_sha256 not in self._identities:
            parsed = x509.load_der_x509_certificate(cert.der)
            self._identities[cert.fingerprint_sha256] = self.rule.of_certificate(parsed)
        return self._identities[cert.fingerprint_sha256]

    def resolve(self, row: ExportRow) -> str | Problem:
        """The identity of the device a row names, or why it names none."""
        named: list[str] = []
        if row.sha256 and row.sha256 in self.by_fingerprint:
            named = [row.sha256]
        elif row.serial is not None:
            named = self.by_serial.get(serial_hex(row.serial), [])
        if named:
            identities = {self.identity_of(self.by_fingerprint[fp]) for fp in named}
            if row.device_id is not None and row.device_id in identities:
                return row.device_id
            if len(identities) > 1:
                message = f"serial {serial_hex(row.serial or 0)} names certificates of {len(named)} devices"
                return Problem(row.where, "ambiguous serial", f"{message}: add a device_id column")
            identity = identities.pop()
            if identity is None:
                return Problem(row.where, "no device identity", f"its certificate has no {self.rule} identity")
            return identity
        if row.device_id:
            return row.device_id
        what = f"SHA-256 {row.sha256}" if row.sha256 else f"serial {serial_hex(row.serial or 0)}"
        return Problem(row.where, "no matching certificate or device", f"no imported certificate with {what}")


def _unchanged(wanted: DeviceAnnotation, current: DeviceAnnotation) -> bool:
    return (
        wanted.group in (None, current.group)
        and wanted.owner in (None, current.owner)
        and wanted.tags in (None, current.tags)
    )


def import_device_export(
    storage: AnnotationStorage,
    rows: Sequence[ExportRow | Problem],
    options: ImportOptions,
    now: dt.datetime,
    *,
    progress: Progress | None = None,
    report: Report | None = None,
) -> ImportSummary:
    """Annotate the devices an MDM export names; rows that match nothing are skipped with a reason."""
    summary = ImportSummary("csv", options.dry_run)
    named_on: dict[str, int] = {}

    def skip(problem: Problem) -> None:
        summary.skipped[problem.category] += 1
        if report is not None:
            report(problem)

    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        good = [r for r in chunk if isinstance(r, ExportRow)]
        matcher = _Matcher(storage.inventory, good, options)
        resolved = [matcher.resolve(item) if isinstance(item, ExportRow) else item for item in chunk]
        current = storage.inventory.device_annotations([found for found in resolved if isinstance(found, str)])
        changes: list[DeviceAnnotation] = []
        for item, found in zip(chunk, resolved, strict=True):  # in line order
            summary.read += 1
            if isinstance(found, Problem):
                skip(found)
                continue
            assert isinstance(item, ExportRow)
            if found not in current:
                skip(Problem(item.where, "no such device", f"no device {found!r}"))
            elif found in named_on:
                message = f"device {found!r} is already named on line {named_on[found]}"
                skip(Problem(item.where, "listed twice", message))
            else:
                named_on[found] = item.line
                wanted = DeviceAnnotation(found, item.group or options.group, item.owner, item.tags)
                if _unchanged(wanted, current[found]):
                    summary.already_present += 1
                else:
                    changes.append(wanted)
        summary.imported += len(changes)
        if changes and not options.dry_run:
            storage.inventory.annotate_devices(changes, now)
        if progress is not None:
            progress(len(chunk))
    if not options.dry_run:
        detail = {"kind": "csv", "read": summary.read, "annotated": summary.imported, "skipped": dict(summary.skipped)}
        storage.audit.record_audit(AuditEvent(options.actor, "inventory.imported", detail=detail), now)
    return summary
