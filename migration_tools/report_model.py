"""The migration report's model: immutable values, from the fleet's totals down to one device's row.

migration_tools.report builds a `MigrationReport`; migration_tools.render prints it as a table,
CSV, JSON or HTML.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from migration_tools.client_families import FamilyFacts, family_facts
from shared_ca.storage.migration_report import StateCount
from shared_ca.storage.schema import DEVICE_STATES

# The weak choices of a SCEP client (RFC 8894 §3.5.2: single DES and MD5 SHOULD NOT be used; SHA-1 is
# deprecated for signatures; a static challenge is one shared secret for the whole fleet).
WEAK_CIPHERS = {"des": "DES"}
WEAK_DIGESTS = {"sha1": "SHA-1", "md5": "MD5"}
WEAK_CHALLENGES = {"static": "static challenge"}


@dataclass(frozen=True)
class StateTotals:
    """Devices per state. `percent_migrated` is the share of the devices that were on SCEP and are not
    retired which moved to EST: migrated / (legacy + mapped + migrated), None when there are none.
    Native devices (on EST from the start) are counted apart and never in the percentage."""

    legacy: int = 0
    mapped: int = 0
    migrated: int = 0
    native: int = 0
    retired: int = 0

    @property
    def total(self) -> int:
        return self.legacy + self.mapped + self.migrated + self.native + self.retired

    @property
    def to_move(self) -> int:
        return self.legacy + self.mapped

    @property
    def percent_migrated(self) -> float | None:
        active = self.legacy + self.mapped + self.migrated
        return round(100 * self.migrated / active, 1) if active else None

    @classmethod
    def of(cls, counts: Iterable[StateCount]) -> StateTotals:
        by_state = dict.fromkeys(DEVICE_STATES, 0)
        for count in counts:
            by_state[count.state] += count.devices
        return cls(**by_state)


@dataclass(frozen=True)
class GroupSummary:
    """One group (name None: the devices in no group) with its totals and SCEP sunset policy."""

    name: str | None
    totals: StateTotals
    sunset_at: dt.datetime | None
    allow_downgrade: bool

    @property
    def cut_off(self) -> int:
        """Devices still on SCEP (legacy or mapped) that the group's sunset cuts off."""
        return self.totals.to_move if self.sunset_at is not None else 0


@dataclass(frozen=True)
class ClientFingerprint:
    """What a device's SCEP client chose at its last SCEP contact, and the client family it showed
    (scep.clients; None while nothing told)."""

    user_agent: str | None
    cipher: str | None
    digest: str | None
    challenge: str | None
    family: str | None = None

    @property
    def facts(self) -> FamilyFacts:
        """What the family can do about EST (migration_tools.client_families)."""
        return family_facts(self.family)

    @property
    def weak(self) -> tuple[str, ...]:
        """The weak choices, by name: DES, SHA-1, MD5, static challenge."""
        found = (
            WEAK_CIPHERS.get((self.cipher or "").lower()),
            WEAK_DIGESTS.get((self.digest or "").lower()),
            WEAK_CHALLENGES.get((self.challenge or "").lower()),
        )
        return tuple(name for name in found if name)


@dataclass(frozen=True)
class DeviceEntry:
    """A device as the report lists it; `actions` is empty for migrated, native and retired devices."""

    id: int
    identity: str
    group: str | None
    owner: str | None
    state: str
    first_seen_at: dt.datetime
    last_scep_at: dt.datetime | None
    last_est_at: dt.datetime | None
    mapped_at: dt.datetime | None
    mapping_mode: str | None
    migrated_at: dt.datetime | None
    certificate_not_after: dt.datetime | None
    sunset_at: dt.datetime | None
    client: ClientFingerprint
    actions: tuple[str, ...]

    @property
    def next_action(self) -> str | None:
        return self.actions[0] if self.actions else None


@dataclass(frozen=True)
class TrendPoint:
    """The legacy, mapped and migrated counts at the end of one day (UTC)."""

    day: dt.date
    legacy: int
    mapped: int
    migrated: int


@dataclass(frozen=True)
class MigrationReport:
    """The whole report at `generated_at` (render it with migration_tools.render)."""

    generated_at: dt.datetime
    group: str | None  # the group the report is limited to; None: the whole fleet
    silent_days: int
    totals: StateTotals
    groups: tuple[GroupSummary, ...]
    to_move_total: int
    to_move: tuple[DeviceEntry, ...]  # the first `list_limit` devices still to move, in id order
    silent_total: int
    silent: tuple[DeviceEntry, ...]  # mapped devices silent on EST for longer than silent_days
    trend: tuple[TrendPoint, ...]


@dataclass(frozen=True)
class DevicePage:
    """One page of a device list; `next_after` continues it (None: this was the last page)."""

    devices: tuple[DeviceEntry, ...]
    next_after: int | None
