"""Applying a legacy inventory through storage (`gateway migrate import`).

For a certificate inventory: the legacy CA becomes a trusted issuer (kind 'legacy') with its
migration window (migration_tools.legacy_issuers); every certificate it really signed is stored
with the status the CA recorded (protocol 'import', profile 'legacy-import'); every device identity
(by the configured rule) gets a device, `legacy` when its newest certificate is valid, `retired`
when that one is revoked or expired. For an MDM export (migration_tools.device_export): each row
is matched onto a stored certificate or a known device and sets that device's group, owner and tags.

Each certificate is parsed once, checked against its CA's signature, and written in batches; the
caller is told progress and every skipped line as they happen. Running an import twice adds
nothing; with `dry_run` the same matching runs and nothing is written.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.serialization import Encoding

from migration_tools.inventory import Inventory, InventoryEntry, Problem
from migration_tools.legacy_issuers import (
    CandidateIssuer,
    IssuerOutcome,
    IssuerStorage,
    LegacyRegistry,
    register_issuers,
    signed_by,
)
from shared_ca.identity import IdentityRule, certificate_sans
from shared_ca.keys import describe_public_key
from shared_ca.policy import common_name, san_text
from shared_ca.serials import serial_hex
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.device_contacts import NewDevice
from shared_ca.storage.inventory import CHUNK, CertificateBatch, ImportedCertificate

Progress = Callable[[int], None]  # told how many more entries were handled
Report = Callable[[Problem], None]  # told each skipped line or file, as it is found


@dataclass(frozen=True)
class ImportOptions:
    """What `gateway migrate import` was asked to do."""

    kind: str
    identity: IdentityRule
    actor: str
    group: str | None = None
    trust_until: dt.datetime | None = None
    dry_run: bool = False


@dataclass
class ImportSummary:
    """Counts of one import; `read` = `imported` + `already_present` + every skipped count."""

    kind: str
    dry_run: bool
    read: int = 0
    imported: int = 0
    already_present: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    devices_added: int = 0
    devices_present: int = 0
    issuers: list[IssuerOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the run did that the operator may not mean

    @property
    def issuers_changed(self) -> bool:
        """Whether the run registered a legacy CA or moved its window (a running gateway follows it)."""
        return not self.dry_run and any(i.action != "unchanged" for i in self.issuers)

    def rows(self) -> list[dict[str, Any]]:
        """The summary as (result, count) rows, skipped ones by reason."""
        rows = [
            {"result": "read", "count": self.read},
            {"result": "imported", "count": self.imported},
            {"result": "already present", "count": self.already_present},
            {"result": "skipped", "count": sum(self.skipped.values())},
        ]
        rows += [{"result": f"skipped: {reason}", "count": n} for reason, n in sorted(self.skipped.items())]
        if self.kind != "csv":
            rows += [
                {"result": "devices added", "count": self.devices_added},
                {"result": "devices already present", "count": self.devices_present},
            ]
        return rows


@dataclass
class _Device:
    """The certificate that names a device, chosen among all of the device's certificates."""

    certificate_id: int | None  # None in a dry run
    current: bool  # valid now (not revoked, not expired)
    not_before: dt.datetime
    not_after: dt.datetime
    first_seen: dt.datetime


def _examine(
    entry: InventoryEntry, issuers: dict[bytes, list[CandidateIssuer]], rule: IdentityRule
) -> tuple[ImportedCertificate, str, str] | Problem:
    """The certificate to store, its device identity and its CA's fingerprint; or why it is skipped."""
    cert = entry.certificate
    if entry.serial is not None and cert.serial_number != entry.serial:
        return Problem(
            entry.where,
            "serial differs from the index",
            f"the certificate file has serial {serial_hex(cert.serial_number)}, the index {serial_hex(entry.serial)}",
        )
    # Encoding the issuer name costs more than the signature check: look it up only among several CAs.
    candidates = next(iter(issuers.values())) if len(issuers) == 1 else issuers.get(cert.issuer.public_bytes(), [])
    issuer = signed_by(cert, candidates)
    subject = cert.subject  # built anew on every access: read once
    if issuer is None:
        what = "the CA" if candidates else "any known CA"
        return Problem(entry.where, "not signed by the CA", f"{subject.rfc4514_string()} is not signed by {what}")
    if not issuer.usable:
        return Problem(
            entry.where,
            "issuer not trusted",
            f"its CA {issuer.certificate.subject.rfc4514_string()!r} is not registered: give --trust-until",
        )
    sans = certificate_sans(cert)
    identity = rule.identify(subject, sans)
    if identity is None:
        return Problem(entry.where, "no device identity", f"{subject.rfc4514_string()} has no {rule} identity")
    der = cert.public_bytes(Encoding.DER)
    imported = ImportedCertificate(
        issuer_id=issuer.issuer_id,
        serial_hex=serial_hex(cert.serial_number),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        subject=subject.rfc4514_string(),
        common_name=common_name(subject),
        sans=tuple(san_text(n) for n in sans),
        key_type=describe_public_key(cert.public_key()),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        der=der,
        status=entry.status,
        revoked_at=entry.revoked_at,
        revocation_reason=entry.reason,
    )
    return imported, identity, issuer.fingerprint


def _note_device(
    devices: dict[str, _Device], identity: str, cert: ImportedCertificate, cert_id: int | None, now: dt.datetime
) -> None:
    """Keep, per identity, the certificate that best names the device: a valid one, then the newest."""
    current = cert.status == "valid" and cert.not_after >= now
    seen = devices.get(identity)
    if seen is None:
        devices[identity] = _Device(cert_id, current, cert.not_before, cert.not_after, cert.not_before)
        return
    seen.first_seen = min(seen.first_seen, cert.not_before)
    if (current, cert.not_before) > (seen.current, seen.not_before):
        seen.certificate_id, seen.current = cert_id, current
        seen.not_before, seen.not_after = cert.not_before, cert.not_after


class ImportedRecords(LegacyRegistry, Protocol):
    """The inventory storage an import writes (shared_ca.storage.inventory)."""

    def add_imported_certificates(
        self, batch: Sequence[ImportedCertificate], now: dt.datetime, *, dry_run: bool = False
    ) -> CertificateBatch: ...
    def add_imported_devices(
        self, batch: Sequence[NewDevice], now: dt.datetime, *, dry_run: bool = False
    ) -> tuple[int, int]: ...


class AuditWriter(Protocol):
    def record_audit(self, event: AuditEvent, now: dt.datetime) -> None: ...


class ImportStorage(IssuerStorage, Protocol):
    """What an inventory import reads and writes (shared_ca.storage)."""

    @property
    def inventory(self) -> ImportedRecords: ...
    @property
    def audit(self) -> AuditWriter: ...


class _CertificateImport:
    """The state of one certificate import: counts, the batch being filled, and what was seen."""

    def __init__(
        self,
        storage: ImportStorage,
        options: ImportOptions,
        now: dt.datetime,
        progress: Progress | None,
        report: Report | None,
    ) -> None:
        self.storage, self.options, self.now = storage, options, now
        self.progress, self.report = progress, report
        self.summary = ImportSummary(options.kind, options.dry_run)
        self.devices: dict[str, _Device] = {}
        self.fingerprints: set[str] = set()
        self.serials: set[tuple[str, str]] = set()  # (CA fingerprint, serial) of every certificate kept
        self.batch: list[tuple[ImportedCertificate, str, str]] = []  # certificate, identity, where

    def advance(self, count: int) -> None:
        if self.progress is not None and count:
            self.progress(count)

    def skip(self, problem: Problem, *, counted: bool = True) -> None:
        self.summary.skipped[problem.category] += 1
        if self.report is not None:
            self.report(problem)
        if counted:
            self.advance(1)

    def take(self, item: InventoryEntry | Problem, issuers: dict[bytes, list[CandidateIssuer]]) -> None:
        self.summary.read += 1
        examined = _examine(item, issuers, self.options.identity) if isinstance(item, InventoryEntry) else item
        if isinstance(examined, Problem):
            self.skip(examined)
            return
        cert, identity, ca = examined
        if cert.fingerprint_sha256 in self.fingerprints:
            self.skip(Problem(item.where, "listed twice", f"{cert.subject} (serial {cert.serial_hex}) is listed twice"))
            return
        if (ca, cert.serial_hex) in self.serials:
            message = f"serial {cert.serial_hex} is taken by another certificate of its CA"
            self.skip(Problem(item.where, "serial taken by another certificate", message))
            return
        self.fingerprints.add(cert.fingerprint_sha256)
        self.serials.add((ca, cert.serial_hex))
        self.batch.append((cert, identity, item.where))
        if len(self.batch) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        """Write the batch; note the device of every certificate stored."""
        certs = [cert for cert, _, _ in self.batch]
        result = self.storage.inventory.add_imported_certificates(certs, self.now, dry_run=self.options.dry_run)
        refused = set(result.serial_taken)
        for cert, identity, where in self.batch:
            if cert.fingerprint_sha256 in refused:
                message = f"serial {cert.serial_hex} is taken by another certificate of its CA"
                self.skip(Problem(where, "serial taken by another certificate", message), counted=False)
            else:
                _note_device(self.devices, identity, cert, result.ids.get(cert.fingerprint_sha256), self.now)
        self.summary.imported += result.inserted
        self.summary.already_present += result.present
        self.advance(len(self.batch))
        self.batch.clear()


def import_inventory(
    storage: ImportStorage,
    inventory: Inventory,
    options: ImportOptions,
    now: dt.datetime,
    *,
    progress: Progress | None = None,
    report: Report | None = None,
) -> ImportSummary:
    """Bring a certificate inventory in (see the module docstring); the counts of what happened."""
    run = _CertificateImport(storage, options, now, progress, report)
    issuers, run.summary.issuers = register_issuers(
        storage, inventory, trust_until=options.trust_until, actor=options.actor, dry_run=options.dry_run, now=now
    )
    for item in inventory.entries:
        run.take(item, issuers)
    run.flush()
    _add_devices(storage.inventory, run.devices, options, now, run.summary)
    if inventory.ca_certificates and run.summary.read == 0:
        trusted = "would be trusted" if options.dry_run else "are trusted"
        run.summary.warnings.append(
            f"the inventory holds CA certificates only ({len(inventory.ca_certificates)}) and no device "
            f"certificate: they {trusted} as legacy issuers, but no device was imported "
            "(give the certificates the legacy CA issued, or the CA's depot or index)"
        )
    if not options.dry_run:
        event = AuditEvent(options.actor, "inventory.imported", detail=_audit_detail(run.summary))
        storage.audit.record_audit(event, now)
    return run.summary


def _add_devices(
    records: ImportedRecords,
    devices: dict[str, _Device],
    options: ImportOptions,
    now: dt.datetime,
    summary: ImportSummary,
) -> None:
    source = f"import:{options.kind}"
    batch = [
        NewDevice(
            identity=identity,
            source=source,
            state="legacy" if device.current else "retired",
            group_name=options.group,
            certificate_id=device.certificate_id,
            certificate_not_after=device.not_after,
            first_seen_at=device.first_seen,
        )
        for identity, device in devices.items()
    ]
    added, present = records.add_imported_devices(batch, now, dry_run=options.dry_run)
    summary.devices_added += added
    summary.devices_present += present


def _audit_detail(summary: ImportSummary) -> dict[str, Any]:
    return {
        "kind": summary.kind,
        "read": summary.read,
        "imported": summary.imported,
        "already_present": summary.already_present,
        "skipped": dict(summary.skipped),
        "devices_added": summary.devices_added,
        "issuers": [i.name for i in summary.issuers],
        "warnings": summary.warnings,
    }
