"""Bringing a legacy CA's inventory in (`gateway migrate import`): its CA certificate as a trusted
legacy issuer with a migration window, its certificates with the status it recorded, a device for
each, and the group, owner and tags an MDM export gives those devices.

Every write is idempotent, so an import can simply be run again: an issuer is known by its
certificate's fingerprint, a certificate by its own (`ON CONFLICT DO NOTHING`), a device by its
identity. Batches are written in chunks of `CHUNK` rows, one transaction each, so that a long
import never holds SQLite's write lock for long and live enrollments go on between chunks. With
`dry_run` the same look-ups run and nothing is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import String, Table, any_, bindparam, cast, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.expression import ColumnElement

from shared_ca.errors import Conflict, InvalidRequest
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.database import Database
from shared_ca.storage.device_contacts import NewDevice, new_device_row
from shared_ca.storage.issuers import IssuerRecord, NewIssuer, issuer_record
from shared_ca.storage.schema import UTCDateTime, certificates, crl_publications, devices, issuers

CHUNK = 1000  # rows per transaction
IMPORT_PROTOCOL = "import"
IMPORT_PROFILE = "legacy-import"
MATCHING_ISSUER_KINDS = ("legacy", "ca")  # whose serials an MDM export may name: imported CAs and ours

T = TypeVar("T")


@dataclass(frozen=True)
class ImportedCertificate:
    """A certificate from a legacy inventory, with the status its CA recorded (expired is simply a
    notAfter in the past). `issuer_id` is None only in a dry run, for an issuer not registered yet."""

    issuer_id: int | None
    serial_hex: str
    fingerprint_sha256: str
    subject: str
    common_name: str | None
    sans: tuple[str, ...]
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    der: bytes
    status: str = "valid"
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None  # RFC 5280 name, e.g. 'keyCompromise'

    def __post_init__(self) -> None:
        if self.status not in ("valid", "revoked"):
            raise ValueError(f"status: 'valid' or 'revoked', not {self.status!r}")
        if (self.status == "revoked") != (self.revoked_at is not None):
            raise ValueError("revoked_at: given exactly when the certificate is revoked")


@dataclass(frozen=True)
class CertificateBatch:
    """What became of a batch: new rows, rows the store already held (same fingerprint), the
    fingerprints refused because their issuer already has another certificate with that serial, and
    the id of every stored one by fingerprint (empty in a dry run)."""

    inserted: int
    present: int
    serial_taken: tuple[str, ...] = ()
    ids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceAnnotation:
    """What an MDM export says about a device; None leaves a field as it is."""

    identity: str
    group: str | None = None
    owner: str | None = None
    tags: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StoredCertificate:
    """A stored certificate an MDM export row may name, with its DER for the identity rule."""

    fingerprint_sha256: str
    serial_hex: str
    issuer_id: int
    der: bytes


@dataclass(frozen=True)
class LegacyRegistration:
    issuer: IssuerRecord
    created: bool
    trust_changed: bool


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _among(conn: Connection, column: ColumnElement[str], values: Sequence[str]) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `column = ANY(array)`: one parameter instead of a thousand,
    whose statement psycopg parses client-side every time (19 ms against 8.5 ms a 1,000-row look-up)."""
    if conn.dialect.name == "postgresql":
        return column == any_(cast(bindparam(None, list(values)), ARRAY(column.type)))
    return column.in_(values)


def _certificate_row(cert: ImportedCertificate, now: dt.datetime) -> dict[str, object]:
    return {
        "issuer_id": cert.issuer_id,
        "serial_hex": cert.serial_hex,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "subject": cert.subject,
        "common_name": cert.common_name,
        "sans": json.dumps(list(cert.sans)),
        "key_type": cert.key_type,
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "profile": IMPORT_PROFILE,
        "protocol": IMPORT_PROTOCOL,
        "requester": None,
        "status": cert.status,
        "revoked_at": cert.revoked_at,
        "revocation_reason": cert.revocation_reason,
        "supersede_at": None,
        "renewed_from_id": None,
        "der": cert.der,
        "created_at": now,
    }


_TEXT = String()
_ANNOTATE = (
    update(devices)
    .where(devices.c.identity == bindparam("b_identity", type_=_TEXT))
    .values(
        group_name=func.coalesce(bindparam("b_group", type_=_TEXT), devices.c.group_name),
        owner=func.coalesce(bindparam("b_owner", type_=_TEXT), devices.c.owner),
        tags=func.coalesce(bindparam("b_tags", type_=_TEXT), devices.c.tags),
        updated_at=bindparam("b_now", type_=UTCDateTime()),
    )
)


class InventoryRecords:
    """Legacy issuers, imported certificates and devices, and MDM annotations, in batches."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _session(self, dry_run: bool) -> AbstractContextManager[Connection]:
        return self.db.read() if dry_run else self.db.write()

    @staticmethod
    def _insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that can take ON CONFLICT DO NOTHING, in the connection's dialect."""
        return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)

    def issuer_by_fingerprint(self, fingerprint_sha256: str) -> IssuerRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(issuers).where(issuers.c.fingerprint_sha256 == fingerprint_sha256)).mappings()
            found = row.first()
        return issuer_record(found) if found else None

    def register_legacy_issuer(self, issuer: NewIssuer, actor: str, now: dt.datetime) -> LegacyRegistration:
        """Trust a legacy CA until `issuer.trust_until`; idempotent by fingerprint. Given again, its
        trust window moves to the new `trust_until` (None keeps it). Conflict when the certificate is
        one of this gateway's own issuers, or the name is taken by another certificate."""
        if issuer.kind != "legacy":
            raise ValueError("register_legacy_issuer registers kind 'legacy' only")
        i = issuers.c
        with self.db.write() as conn:
            row = conn.execute(select(issuers).where(i.fingerprint_sha256 == issuer.fingerprint_sha256)).mappings()
            existing = row.first()
            if existing is None:
                if issuer.trust_until is None:
                    raise InvalidRequest("trust_until: a legacy CA is registered with the end of its migration window")
                return self._add_legacy(conn, issuer, actor, now)
            record = issuer_record(existing)
            if record.kind != "legacy":
                raise Conflict(
                    f"CA {record.subject!r} is this gateway's issuer {record.name!r} (kind {record.kind}), "
                    "not a legacy CA"
                )
            if issuer.trust_until is None or issuer.trust_until == record.trust_until:
                return LegacyRegistration(record, created=False, trust_changed=False)
            conn.execute(update(issuers).where(i.id == record.id).values(trust_until=issuer.trust_until))
            detail = {
                "name": record.name,
                "trust_until": issuer.trust_until.isoformat(),
                "previous": record.trust_until.isoformat() if record.trust_until else None,
            }
            write_audit(conn, AuditEvent(actor, "issuer.trust_window", record.id, None, detail), now)
        updated = dataclasses.replace(record, trust_until=issuer.trust_until)
        return LegacyRegistration(updated, created=False, trust_changed=True)

    def _add_legacy(self, conn: Connection, issuer: NewIssuer, actor: str, now: dt.datetime) -> LegacyRegistration:
        values = {**vars(issuer), "created_at": now}
        statement = (
            self._insert(conn, issuers)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["fingerprint_sha256"])
            .returning(issuers.c.id)
        )
        try:
            issuer_id = conn.execute(statement).scalar_one_or_none()
        except IntegrityError as exc:
            raise Conflict(f"issuer name {issuer.name!r} is taken by another certificate") from exc
        if issuer_id is None:  # a concurrent import registered it first
            row = conn.execute(select(issuers).where(issuers.c.fingerprint_sha256 == issuer.fingerprint_sha256))
            return LegacyRegistration(issuer_record(row.mappings().one()), created=False, trust_changed=False)
        conn.execute(
            crl_publications.insert().values(
                issuer_id=issuer_id, last_number=0, published_number=0, revision=0, published_revision=0
            )
        )
        trust_until = issuer.trust_until.isoformat() if issuer.trust_until else None
        detail = {"name": issuer.name, "kind": "legacy", "subject": issuer.subject, "trust_until": trust_until}
        write_audit(conn, AuditEvent(actor, "issuer.added", issuer_id, None, detail), now)
        return LegacyRegistration(IssuerRecord(id=issuer_id, **vars(issuer)), created=True, trust_changed=False)

    def add_imported_certificates(
        self, batch: Sequence[ImportedCertificate], now: dt.datetime, *, dry_run: bool = False
    ) -> CertificateBatch:
        """Insert certificates whose fingerprint is new, keeping their status; a chunk a transaction."""
        inserted = present = 0
        refused: list[str] = []
        ids: dict[str, int] = {}
        c = certificates.c
        for chunk in _chunks(batch):
            with self._session(dry_run) as conn:
                fingerprints = [r.fingerprint_sha256 for r in chunk]
                query = select(c.fingerprint_sha256, c.id).where(_among(conn, c.fingerprint_sha256, fingerprints))
                known = {fp: cert_id for fp, cert_id in conn.execute(query)}
                wanted = [r for r in chunk if r.fingerprint_sha256 not in known]
                if dry_run:
                    taken = self._taken_serials(conn, wanted)
                    stored = {r.fingerprint_sha256: 0 for r in wanted if (r.issuer_id, r.serial_hex) not in taken}
                    ours = set(stored)
                else:
                    stored, ours = self._insert_certificates(conn, wanted, now)
                    ids.update(known)
                    ids.update(stored)
            refused += [r.fingerprint_sha256 for r in wanted if r.fingerprint_sha256 not in stored]
            inserted += len(ours)
            present += len(known) + len(stored) - len(ours)  # a concurrent import may have stored some
        return CertificateBatch(inserted, present, tuple(refused), ids)

    @staticmethod
    def _taken_serials(conn: Connection, rows: Sequence[ImportedCertificate]) -> set[tuple[int | None, str]]:
        """(issuer, serial) pairs of `rows` another stored certificate has (what a dry run checks)."""
        by_issuer: dict[int, list[str]] = {}
        for row in rows:
            if row.issuer_id is not None:
                by_issuer.setdefault(row.issuer_id, []).append(row.serial_hex)
        taken: set[tuple[int | None, str]] = set()
        c = certificates.c
        for issuer_id, serials in by_issuer.items():
            query = select(c.serial_hex).where(c.issuer_id == issuer_id, _among(conn, c.serial_hex, serials))
            taken.update((issuer_id, serial) for serial in conn.execute(query).scalars())
        return taken

    def _insert_certificates(
        self, conn: Connection, rows: Sequence[ImportedCertificate], now: dt.datetime
    ) -> tuple[dict[str, int], set[str]]:
        """Insert, ignoring conflicts; the ids of those stored afterwards by fingerprint, and the
        fingerprints this insert stored.

        A row not stored afterwards conflicted on its issuer's serial: serials are not looked up
        beforehand, as PostgreSQL prepares that query's plan while the table is small and keeps it
        (a sequential scan a chunk: 96 s over 100,000 certificates).
        """
        if not rows:
            return {}, set()
        if any(r.issuer_id is None for r in rows):
            raise ValueError("an imported certificate needs its issuer's id")
        self._insert_ignoring_conflicts(conn, certificates, [_certificate_row(r, now) for r in rows])
        c = certificates.c
        query = select(c.fingerprint_sha256, c.id, c.created_at).where(
            _among(conn, c.fingerprint_sha256, [r.fingerprint_sha256 for r in rows])
        )
        found = conn.execute(query).all()
        return {fp: cert_id for fp, cert_id, _ in found}, {fp for fp, _, created_at in found if created_at == now}

    @staticmethod
    def _insert_ignoring_conflicts(conn: Connection, table: Table, rows: list[dict[str, object]]) -> None:
        """INSERT … ON CONFLICT DO NOTHING of many rows, the fastest way each driver offers (measured
        with 1,000-row chunks): on SQLite an INSERT … RETURNING, which SQLAlchemy sends as multi-row
        VALUES, beats executemany by a third; psycopg pipelines executemany, while it parses each
        multi-row RETURNING batch client-side, three times slower. Neither reports a reliable count."""
        statement = InventoryRecords._insert(conn, table).on_conflict_do_nothing()
        if conn.dialect.name == "sqlite":
            conn.execute(statement.returning(table.c.id), rows).all()
        else:
            conn.execute(statement, rows)

    @staticmethod
    def _count(conn: Connection, table: Table, *conditions: ColumnElement[bool]) -> int:
        """How many rows of `table` match: after an insert that ignored conflicts, the rows it wrote
        are those absent before it that carry this run's timestamp."""
        return int(conn.execute(select(func.count()).select_from(table).where(*conditions)).scalar_one())

    def add_imported_devices(
        self, batch: Sequence[NewDevice], now: dt.datetime, *, dry_run: bool = False
    ) -> tuple[int, int]:
        """Create the devices whose identity is new; (added, already present)."""
        added = present = 0
        d = devices.c
        for chunk in _chunks(batch):
            names = [device.identity for device in chunk]
            with self._session(dry_run) as conn:
                known = set(conn.execute(select(d.identity).where(_among(conn, d.identity, names))).scalars())
                fresh = [device for device in chunk if device.identity not in known]
                new = len(fresh)
                if fresh and not dry_run:
                    self._insert_ignoring_conflicts(conn, devices, [new_device_row(device, now) for device in fresh])
                    # a device a live enrollment created since the look-up above is not ours
                    fresh_names = [device.identity for device in fresh]
                    sources = {device.source for device in fresh}
                    new = self._count(
                        conn, devices, _among(conn, d.identity, fresh_names), d.updated_at == now, d.source.in_(sources)
                    )
            added += new
            present += len(chunk) - new
        return added, present

    # -- MDM exports --------------------------------------------------------------------------------

    def certificates_by_fingerprints(self, fingerprints: Sequence[str]) -> list[StoredCertificate]:
        """Stored certificates with one of these SHA-256 fingerprints, of any issuer."""
        c = certificates.c
        query = select(c.fingerprint_sha256, c.serial_hex, c.issuer_id, c.der)
        with self.db.read() as conn:
            return [
                StoredCertificate(*row)
                for chunk in _chunks(list(fingerprints))
                for row in conn.execute(query.where(_among(conn, c.fingerprint_sha256, chunk)))
            ]

    def certificates_by_serials(self, serials: Sequence[str]) -> list[StoredCertificate]:
        """Stored certificates with one of these serials, issued by a legacy CA or ours."""
        c, i = certificates.c, issuers.c
        query = (
            select(c.fingerprint_sha256, c.serial_hex, c.issuer_id, c.der)
            .join(issuers, i.id == c.issuer_id)
            .where(i.kind.in_(MATCHING_ISSUER_KINDS))
        )
        with self.db.read() as conn:
            return [
                StoredCertificate(*row)
                for chunk in _chunks(list(serials))
                for row in conn.execute(query.where(_among(conn, c.serial_hex, chunk)))
            ]

    def device_annotations(self, identities: Sequence[str]) -> dict[str, DeviceAnnotation]:
        """The current group, owner and tags of those devices that exist."""
        d = devices.c
        result: dict[str, DeviceAnnotation] = {}
        with self.db.read() as conn:
            for chunk in _chunks(list(identities)):
                query = select(d.identity, d.group_name, d.owner, d.tags).where(_among(conn, d.identity, chunk))
                for identity, group, owner, tags in conn.execute(query):
                    result[identity] = DeviceAnnotation(identity, group, owner, tuple(json.loads(tags or "[]")))
        return result

    def annotate_devices(self, batch: Sequence[DeviceAnnotation], now: dt.datetime) -> None:
        """Set group, owner and tags of existing devices (fields given as None stay as they are)."""
        for chunk in _chunks(batch):
            params = [
                {
                    "b_identity": a.identity,
                    "b_group": a.group,
                    "b_owner": a.owner,
                    "b_tags": None if a.tags is None else json.dumps(list(a.tags)),
                    "b_now": now,
                }
                for a in chunk
            ]
            with self.db.write() as conn:
                conn.execute(_ANNOTATE, params)
