"""How an enrollment event moves the device it names (written inside the event's own transaction).

Kept apart from devices.py so the event writer (enrollment_records.py) can use it without the
repository: see shared_ca/storage/devices.py for the model.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import String, bindparam, case, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ClauseElement

from shared_ca.errors import InvalidRequest
from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.schema import DEVICE_STATES, Id, UTCDateTime, devices

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
        if self.state == "native" or self.source == "est":  # native: first seen over EST, never imported
            raise InvalidRequest("state: an imported device is not native")


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
    client_family: str | None = None  # scep.clients.ClientFamily's value; None: nothing told
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
        "scep_client": None,
        "certificate_id": device.certificate_id,
        "certificate_not_after": device.certificate_not_after,
        "mapping_mode": None,
        "est_credential": None,
        "mapped_at": None,
        "migrated_at": now if device.state == "migrated" else None,
        "retired_at": now if device.state == "retired" else None,
    }


_TEXT = String()


def _contact_values(protocol: str, issued: bool) -> dict[str, object]:
    """What one contact sets, as bound parameters: a device's optional fingerprint fields keep their
    value when the event carries none (COALESCE)."""
    d = devices.c
    values: dict[str, object] = {"updated_at": bindparam("now", type_=UTCDateTime())}
    if protocol == "scep":
        values.update(
            last_scep_at=bindparam("now", type_=UTCDateTime()),
            scep_user_agent=case(
                (bindparam("cipher", type_=_TEXT).is_(None), d.scep_user_agent),
                else_=bindparam("user_agent", type_=_TEXT),
            ),
            scep_cipher=func.coalesce(bindparam("cipher", type_=_TEXT), d.scep_cipher),
            scep_digest=case(
                (bindparam("cipher", type_=_TEXT).is_(None), d.scep_digest), else_=bindparam("digest", type_=_TEXT)
            ),
            scep_challenge=func.coalesce(bindparam("challenge", type_=_TEXT), d.scep_challenge),
            scep_client=func.coalesce(bindparam("client", type_=_TEXT), d.scep_client),
        )
    else:
        values["last_est_at"] = bindparam("now", type_=UTCDateTime())
    if issued:
        values.update(
            certificate_id=bindparam("cert_id", type_=Id),
            certificate_not_after=bindparam("not_after", type_=UTCDateTime()),
            retired_at=None,
        )
        native = d.source == "est"  # first seen over EST and never issued over SCEP (retired or not)
        if protocol == "est":  # moved from SCEP, or native all along
            values.update(
                state=case((native, "native"), else_="migrated"),
                migrated_at=case(
                    (native, None), else_=func.coalesce(d.migrated_at, bindparam("now", type_=UTCDateTime()))
                ),
            )
        else:  # a retired device enrolling again over SCEP, or a native one, is a SCEP device still to move
            values.update(
                state=case((d.state == "retired", "legacy"), (native, "legacy"), else_=d.state),
                source=case((native, "scep"), else_=d.source),
            )
    return values


def _contact_statement(dialect_name: str, protocol: str, issued: bool) -> ClauseElement:
    """The one statement a contact costs: an UPDATE, or for an issuance an upsert creating a new device."""
    values = _contact_values(protocol, issued)
    if not issued:
        return update(devices).where(devices.c.identity == bindparam("device_identity", type_=_TEXT)).values(**values)
    now = bindparam("now", type_=UTCDateTime())
    scep = protocol == "scep"
    row: dict[str, object] = {
        "identity": bindparam("device_identity", type_=_TEXT),
        "tags": "[]",
        "state": "legacy" if scep else "native",
        "source": protocol,
        "first_seen_at": now,
        "updated_at": now,
        "last_scep_at": now if scep else None,
        "last_est_at": None if scep else now,
        "scep_user_agent": bindparam("user_agent", type_=_TEXT) if scep else None,
        "scep_cipher": bindparam("cipher", type_=_TEXT) if scep else None,
        "scep_digest": bindparam("digest", type_=_TEXT) if scep else None,
        "scep_challenge": bindparam("challenge", type_=_TEXT) if scep else None,
        "scep_client": bindparam("client", type_=_TEXT) if scep else None,
        "certificate_id": bindparam("cert_id", type_=Id),
        "certificate_not_after": bindparam("not_after", type_=UTCDateTime()),
        "migrated_at": None,
    }
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(devices).values(**row)
    upsert: ClauseElement = statement.on_conflict_do_update(index_elements=["identity"], set_=values)
    return upsert


_CONTACT_STATEMENTS: dict[tuple[str, str, bool], PreparedStatement] = {
    (name, protocol, issued): PreparedStatement(_contact_statement(name, protocol, issued))
    for name in ("sqlite", "postgresql")
    for protocol in ("scep", "est")
    for issued in (False, True)
}  # built once: compiling a 20-column upsert per enrollment cost more than signing the certificate


def touch_device(conn: Connection, contact: DeviceContact, now: dt.datetime) -> None:
    """Record one contact of a device inside the caller's transaction (see the module docstring), in
    one prebuilt statement."""
    issued = contact.outcome == "issued" and contact.certificate_id is not None
    key = ("postgresql" if conn.dialect.name == "postgresql" else "sqlite", contact.protocol, issued)
    challenge = contact.challenge_kind if contact.challenge_kind not in (None, "none") else None
    _CONTACT_STATEMENTS[key].execute(
        conn,
        {
            "device_identity": contact.identity,
            "now": now,
            "user_agent": contact.user_agent,
            "cipher": contact.cipher,
            "digest": contact.digest,
            "challenge": challenge,
            "client": contact.client_family,
            "cert_id": contact.certificate_id,
            "not_after": contact.certificate_not_after,
        },
    )
