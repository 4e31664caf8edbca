"""How an enrollment event moves the device it names (written inside the event's own transaction).

Kept apart from devices.py so the event writer (enrollment_records.py) can use it without the
repository: see shared_ca/storage/devices.py for the model.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement

from shared_ca.errors import InvalidRequest
from shared_ca.storage.schema import DEVICE_STATES, devices

MAX_GROUP = 64
MAX_OWNER = 255
MAX_TAGS = 32


@dataclass(frozen=True)
class NewDevice:
    """A device found in an imported inventory (or an MDM export)."""

    identity: str
    source: str  # e.g. "import:micromdm-depot"
    state: str = "legacy"
    group_name: str | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    certificate_id: int | None = None
    certificate_not_after: dt.datetime | None = None
    first_seen_at: dt.datetime | None = None  # when the inventory says (its certificate's notBefore)

    def __post_init__(self) -> None:
        check_device_fields(self.identity, self.group_name, self.owner, self.tags)
        if self.state not in DEVICE_STATES:
            raise InvalidRequest(f"state: unknown device state {self.state!r}")


@dataclass(frozen=True)
class DeviceContact:
    """One enrollment event, as far as the device it names is concerned."""

    identity: str
    protocol: str
    outcome: str
    user_agent: str | None = None
    cipher: str | None = None
    digest: str | None = None
    challenge_kind: str | None = None
    certificate_id: int | None = None
    certificate_not_after: dt.datetime | None = None


def check_device_fields(identity: str, group: str | None, owner: str | None, tags: Sequence[str]) -> None:
    """InvalidRequest naming the field that does not fit its column."""
    if not identity or len(identity) > 255:
        raise InvalidRequest("device id: must have 1-255 characters")
    if group is not None and not 1 <= len(group) <= MAX_GROUP:
        raise InvalidRequest(f"group: must have 1-{MAX_GROUP} characters")
    if owner is not None and len(owner) > MAX_OWNER:
        raise InvalidRequest(f"owner: must have at most {MAX_OWNER} characters")
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"tags: at most {MAX_TAGS} tags")


def insert_ignoring_conflict(conn: Connection, rows: list[dict[str, object]]) -> int:
    """Insert devices, leaving every identity that exists alone; how many were inserted."""
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(devices).on_conflict_do_nothing(index_elements=["identity"]).returning(devices.c.id)
    # executemany reports no rowcount on psycopg; RETURNING (batched by SQLAlchemy) counts the new rows.
    return len(conn.execute(statement, rows).all())


def new_device_row(device: NewDevice, now: dt.datetime) -> dict[str, object]:
    return {
        "identity": device.identity,
        "group_name": device.group_name,
        "owner": device.owner,
        "tags": json.dumps(list(device.tags)),
        "state": device.state,
        "source": device.source,
        "first_seen_at": device.first_seen_at or now,
        "updated_at": now,
        "last_scep_at": None,
        "last_est_at": None,
        "scep_user_agent": None,
        "scep_cipher": None,
        "scep_digest": None,
        "scep_challenge": None,
        "certificate_id": device.certificate_id,
        "certificate_not_after": device.certificate_not_after,
        "mapping_mode": None,
        "est_credential": None,
        "mapped_at": None,
        "migrated_at": now if device.state == "migrated" else None,
        "retired_at": now if device.state == "retired" else None,
    }


def touch_device(conn: Connection, contact: DeviceContact, now: dt.datetime) -> None:
    """Record one contact of a device inside the caller's transaction (see the module docstring):
    one statement, an UPDATE, or for an issuance an upsert that creates the device if it is new."""
    issued = contact.outcome == "issued" and contact.certificate_id is not None
    d = devices.c
    values: dict[str, object] = {"updated_at": now}
    if contact.protocol == "scep":
        values.update(last_scep_at=now)
        if contact.cipher is not None:
            values.update(scep_user_agent=contact.user_agent, scep_cipher=contact.cipher, scep_digest=contact.digest)
        if contact.challenge_kind not in (None, "none"):
            values["scep_challenge"] = contact.challenge_kind
    else:
        values.update(last_est_at=now)
    if not issued:
        conn.execute(update(devices).where(d.identity == contact.identity).values(**values))
        return
    values.update(certificate_id=contact.certificate_id, certificate_not_after=contact.certificate_not_after)
    if contact.protocol == "est":
        values.update(state="migrated", migrated_at=func.coalesce(d.migrated_at, now), retired_at=None)
    else:  # a retired device enrolling again over SCEP is back in the fleet, still to move
        values.update(state=_scep_state_after_issue(), retired_at=None)
    state = "migrated" if contact.protocol == "est" else "legacy"
    row = new_device_row(NewDevice(contact.identity, contact.protocol, state), now)
    row.update({k: v for k, v in values.items() if not isinstance(v, ColumnElement)})  # a new row's plain values
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(devices).values(**row)
    conn.execute(statement.on_conflict_do_update(index_elements=["identity"], set_=values))


def _scep_state_after_issue() -> object:
    d = devices.c
    return case((d.state == "retired", "legacy"), else_=d.state)
