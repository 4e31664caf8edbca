"""Devices and device groups: the migration model's rows (DESIGN.md "Migration model").

A device is one row per identity (shared_ca.identity), whichever way it arrives: imported from a
legacy CA's inventory, or seen enrolling over SCEP or EST. Its state moves by itself as enrollment
events are written (`touch_device`, called inside the event's own transaction):

- a certificate issued over SCEP to a device not yet known creates it `legacy`;
- a certificate issued over EST makes it `migrated` (from any state);
- `gateway migrate map` makes a `legacy` device `mapped`;
- `retire_stale` makes a device `retired` when its certificate is revoked, or expired for longer
  than the configured age.

Every contact updates its last SCEP or EST time; a SCEP contact also the client's fingerprint
(User-Agent, envelope cipher, digest, challenge kind) that the migration report judges.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping

from shared_ca.errors import InvalidRequest, NotFound
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.database import Database
from shared_ca.storage.device_contacts import check_device_fields
from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.schema import MAPPING_MODES, certificates, device_groups, devices


@dataclass(frozen=True)
class DeviceRecord:
    id: int
    identity: str
    group_name: str | None
    owner: str | None
    tags: tuple[str, ...]
    state: str
    source: str
    first_seen_at: dt.datetime
    updated_at: dt.datetime
    last_scep_at: dt.datetime | None
    last_est_at: dt.datetime | None
    scep_user_agent: str | None
    scep_cipher: str | None
    scep_digest: str | None
    scep_challenge: str | None
    scep_client: str | None  # the SCEP client family (scep.clients), None while nothing told
    certificate_id: int | None
    certificate_not_after: dt.datetime | None
    mapping_mode: str | None
    est_credential: str | None
    mapped_at: dt.datetime | None
    migrated_at: dt.datetime | None
    retired_at: dt.datetime | None


@dataclass(frozen=True)
class GroupRecord:
    name: str
    sunset_at: dt.datetime | None
    allow_downgrade: bool
    updated_at: dt.datetime


@dataclass(frozen=True)
class ScepGate:
    """What decides whether a device may still enroll over SCEP: its state and its group's policy."""

    state: str
    group_name: str | None
    sunset_at: dt.datetime | None
    allow_downgrade: bool


def _device(row: RowMapping) -> DeviceRecord:
    values = {name: row[name] for name in DeviceRecord.__dataclass_fields__}
    values["tags"] = tuple(json.loads(row["tags"] or "[]"))
    return DeviceRecord(**values)


def _group(row: RowMapping) -> GroupRecord:
    return GroupRecord(**{name: row[name] for name in GroupRecord.__dataclass_fields__})


_GATE = PreparedStatement(
    select(devices.c.state, devices.c.group_name, device_groups.c.sunset_at, device_groups.c.allow_downgrade)
    .select_from(devices.outerjoin(device_groups, device_groups.c.name == devices.c.group_name))
    .where(devices.c.identity == bindparam("identity"))
)  # read on every SCEP enrollment


class Devices:
    """Devices and groups: look-ups, imports, mapping, sunset policy and retirement."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- devices ------------------------------------------------------------------------------------

    def device(self, identity: str) -> DeviceRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(devices).where(devices.c.identity == identity)).mappings().first()
        return _device(row) if row else None

    def devices(
        self,
        *,
        state: str | None = None,
        group: str | None = None,
        limit: int | None = None,
        after_id: int = 0,
    ) -> list[DeviceRecord]:
        """Devices in id order (keyset pagination with `after_id`), filtered by state and group."""
        d = devices.c
        query = select(devices).where(d.id > after_id).order_by(d.id)
        if state is not None:
            query = query.where(d.state == state)
        if group is not None:
            query = query.where(d.group_name == group)
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as conn:
            return [_device(r) for r in conn.execute(query).mappings().all()]

    def annotate(
        self,
        identity: str,
        *,
        group: str | None,
        owner: str | None,
        tags: Sequence[str],
        now: dt.datetime,
    ) -> bool:
        """Set a device's group, owner and tags (from an MDM export); False when there is no such device."""
        check_device_fields(identity, group, owner, tags)
        values: dict[str, object] = {"updated_at": now, "tags": json.dumps(list(tags))}
        if group is not None:
            values["group_name"] = group
        if owner is not None:
            values["owner"] = owner
        with self.db.write() as conn:
            changed = conn.execute(update(devices).where(devices.c.identity == identity).values(**values)).rowcount
        return bool(changed)

    def set_mapping(
        self, identity: str, mode: str, est_credential: str | None, now: dt.datetime, *, label: str | None = None
    ) -> DeviceRecord:
        """Record the EST credential a device was given (for EST label `label`; None: the default label);
        a `legacy` device becomes `mapped`."""
        if mode not in MAPPING_MODES:
            raise InvalidRequest(f"mode: must be one of {', '.join(MAPPING_MODES)}")
        d = devices.c
        with self.db.write() as conn:
            row = (
                conn.execute(
                    update(devices)
                    .where(d.identity == identity)
                    .values(
                        mapping_mode=mode,
                        est_credential=est_credential,
                        est_label=label,
                        mapped_at=now,
                        updated_at=now,
                        state=_mapped_state(),
                    )
                    .returning(*devices.c)
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"no device {identity!r}")
        return _device(row)

    def mapped_label(self, identity: str) -> str | None:
        """The EST label the device was mapped to; None when unmapped or mapped to the default label."""
        with self.db.read() as conn:
            return conn.execute(select(devices.c.est_label).where(devices.c.identity == identity)).scalar()

    def scep_gate(self, identity: str) -> ScepGate | None:
        """The device's state and its group's sunset policy, in one query; None for an unknown device."""
        with self.db.read() as conn:
            row = _GATE.first(conn, {"identity": identity})
        if row is None:
            return None
        return ScepGate(row["state"], row["group_name"], row["sunset_at"], bool(row["allow_downgrade"]))

    def retire_stale(self, now: dt.datetime, expired_for: dt.timedelta) -> int:
        """Retire every device whose current certificate is revoked, or expired before now - expired_for."""
        d, c = devices.c, certificates.c
        gone = (
            select(c.id)
            .where(
                c.id == d.certificate_id,
                or_(
                    c.status == "revoked",
                    and_(c.supersede_at.is_not(None), c.supersede_at <= now),
                    c.not_after < now - expired_for,
                ),
            )
            .exists()
        )
        with self.db.write() as conn:
            changed = conn.execute(
                update(devices)
                .where(d.state != "retired", d.certificate_id.is_not(None), gone)
                .values(state="retired", retired_at=now, updated_at=now)
            ).rowcount
        return int(changed or 0)

    # -- groups -------------------------------------------------------------------------------------

    def group(self, name: str) -> GroupRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(device_groups).where(device_groups.c.name == name)).mappings().first()
        return _group(row) if row else None

    def groups(self) -> list[GroupRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(device_groups).order_by(device_groups.c.name)).mappings().all()
        return [_group(r) for r in rows]

    def set_group_policy(
        self, name: str, *, sunset_at: dt.datetime | None, allow_downgrade: bool, actor: str, now: dt.datetime
    ) -> GroupRecord:
        """Set a group's SCEP sunset date (None: no sunset) and whether migrated devices may use SCEP again."""
        check_device_fields("-", name, None, ())
        values = {"sunset_at": sunset_at, "allow_downgrade": allow_downgrade, "updated_at": now}
        dialect = postgresql if self.db.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(device_groups).values(name=name, **values)
        statement = statement.on_conflict_do_update(index_elements=["name"], set_=values)
        with self.db.write() as conn:
            conn.execute(statement)
            detail = {
                "group": name,
                "sunset_at": sunset_at.isoformat() if sunset_at else None,
                "allow_downgrade": allow_downgrade,
            }
            write_audit(conn, AuditEvent(actor, "device_group.policy", detail=detail), now)
        return GroupRecord(name, sunset_at, allow_downgrade, now)


def _mapped_state() -> object:
    d = devices.c
    return case((d.state == "legacy", "mapped"), else_=d.state)
