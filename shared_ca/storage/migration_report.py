"""The SQL of the migration report (migration_tools.report): counts, the devices still to move, and
the per-day trend, all computed by the database.

Totals are one GROUP BY query and the trend two (first sightings per day; the later moves per
triple of days); no count is made by looping over devices in Python, so the report over a million
devices takes seconds.
Device lists are read in id order with keyset pagination (`after_id`), never with OFFSET.

The trend is rebuilt from the dates a device row keeps (first_seen_at, mapped_at, migrated_at,
retired_at): a device is `legacy` from its first sighting, `mapped` from its mapping (if that came
before its migration), `migrated` from its first EST certificate, and gone when retired. A row keeps
only the latest of each date, so a device that went back and forth is counted at its latest moves.
Native devices (first seen over EST, `source = 'est'`, retired or not) never were on SCEP: the trend
leaves them out, as the percentage does.
"""

from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, and_, case, cast, func, or_, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Date

from shared_ca.errors import InvalidRequest
from shared_ca.storage.database import Database
from shared_ca.storage.devices import GroupRecord
from shared_ca.storage.schema import DEVICE_STATES, device_groups, devices

TO_MOVE_STATES = ("legacy", "mapped")
_Row = TypeVar("_Row", bound=Any)


@dataclass(frozen=True)
class StateCount:
    """How many devices of one group are in one state (group None: devices in no group)."""

    group_name: str | None
    state: str
    devices: int


@dataclass(frozen=True)
class DeviceStanding:
    """A device as the report judges it: its row's migration facts and its group's sunset policy."""

    id: int
    identity: str
    group_name: str | None
    owner: str | None
    state: str
    first_seen_at: dt.datetime
    last_scep_at: dt.datetime | None
    last_est_at: dt.datetime | None
    scep_user_agent: str | None
    scep_cipher: str | None
    scep_digest: str | None
    scep_challenge: str | None
    scep_client: str | None
    certificate_not_after: dt.datetime | None
    mapping_mode: str | None
    mapped_at: dt.datetime | None
    migrated_at: dt.datetime | None
    retired_at: dt.datetime | None
    sunset_at: dt.datetime | None


@dataclass(frozen=True)
class DeviceFilter:
    """Which devices a list or count covers; every field left empty matches every device."""

    states: tuple[str, ...] = ()
    group: str | None = None
    silent_before: dt.datetime | None = None  # only `mapped` devices mapped before this, silent on EST since

    def __post_init__(self) -> None:
        unknown = [s for s in self.states if s not in DEVICE_STATES]
        if unknown:
            raise InvalidRequest(f"state: unknown device state {unknown[0]!r} (known: {', '.join(DEVICE_STATES)})")


@dataclass(frozen=True)
class DayChange:
    """The net change of the legacy, mapped and migrated counts on one day (UTC)."""

    day: dt.date
    legacy: int
    mapped: int
    migrated: int


_STANDING_COLUMNS = [devices.c[name] for name in DeviceStanding.__dataclass_fields__ if name != "sunset_at"]
_STANDINGS: Select[Any] = select(*_STANDING_COLUMNS, device_groups.c.sunset_at).select_from(
    devices.outerjoin(device_groups, device_groups.c.name == devices.c.group_name)
)


def _where(query: Select[_Row], where: DeviceFilter) -> Select[_Row]:
    d = devices.c
    if where.states:
        query = query.where(d.state.in_(where.states))
    if where.group is not None:
        query = query.where(d.group_name == where.group)
    if where.silent_before is not None:
        query = query.where(
            d.state == "mapped",
            d.mapped_at <= where.silent_before,
            or_(d.last_est_at.is_(None), d.last_est_at < d.mapped_at),
        )
    return query


class MigrationReportQueries:
    """Read-only queries behind the migration report and the dashboard."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def state_counts(self, group: str | None = None) -> list[StateCount]:
        """Devices per (group, state), one GROUP BY over the table."""
        d = devices.c
        # Answered from ix_devices_group_state alone (a covering index), without reading the table.
        query = select(d.group_name, d.state, func.count()).group_by(d.group_name, d.state)
        if group is not None:
            query = query.where(d.group_name == group)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [StateCount(row[0], row[1], int(row[2])) for row in rows]

    def group_policies(self, group: str | None = None) -> list[GroupRecord]:
        """The groups that have a sunset policy row, by name."""
        query = select(device_groups).order_by(device_groups.c.name)
        if group is not None:
            query = query.where(device_groups.c.name == group)
        with self.db.read() as conn:
            rows = conn.execute(query).mappings().all()
        return [GroupRecord(r["name"], r["sunset_at"], bool(r["allow_downgrade"]), r["updated_at"]) for r in rows]

    def count_devices(self, where: DeviceFilter) -> int:
        query = _where(select(func.count()).select_from(devices), where)
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def device_standings(
        self, where: DeviceFilter, *, after_id: int = 0, limit: int | None = None
    ) -> list[DeviceStanding]:
        """Devices matching `where` with id > `after_id`, in id order, at most `limit` of them.

        Several states are read one query each and merged: an index on `state` holds its rows in id
        order within one state (SQLite appends the rowid), so a page of one state needs no sort, and
        a page of several would sort every row of those states.
        """
        if limit is not None and limit < 0:
            raise InvalidRequest("limit: must not be negative")
        if limit == 0:
            return []
        states = where.states if len(where.states) > 1 else (where.states or (None,))
        pages = []
        with self.db.read() as conn:
            for state in states:
                one = DeviceFilter((state,) if state else (), where.group, where.silent_before)
                query: Select[Any] = _where(_STANDINGS.where(devices.c.id > after_id).order_by(devices.c.id), one)
                if limit is not None:
                    query = query.limit(limit)
                pages.append([_standing(row) for row in conn.execute(query).mappings()])
        merged = list(heapq.merge(*pages, key=lambda standing: standing.id))
        return merged[:limit] if limit is not None else merged

    def day_changes(self, group: str | None = None) -> list[DayChange]:
        """Net legacy/mapped/migrated changes per day, oldest first (see the module docstring).

        Two scans: first sightings per day, and the later moves per (mapping day, migration day,
        retirement day) triple, each day NULL when that move does not count; the triples (at most
        days² of them, never one per device) are spread onto their days here.
        """
        dialect = self.db.engine.dialect.name
        d = devices.c

        def day_of(column: ColumnElement[object], counts: ColumnElement[bool]) -> ColumnElement[object]:
            # A move is dated no earlier than the device's first sighting (an import may date that later).
            return case((counts, _day(dialect, _later(dialect, column, d.first_seen_at))), else_=None)

        # Mapped counts when it came before the migration and the retirement; migrated, before the retirement.
        mapped_counts = and_(
            d.mapped_at.is_not(None),
            or_(d.migrated_at.is_(None), d.mapped_at < d.migrated_at),
            or_(d.retired_at.is_(None), d.mapped_at < d.retired_at),
        )
        migrated_counts = and_(d.migrated_at.is_not(None), or_(d.retired_at.is_(None), d.migrated_at <= d.retired_at))
        seen = _day(dialect, d.first_seen_at)
        mapped = day_of(d.mapped_at, mapped_counts)
        migrated = day_of(d.migrated_at, migrated_counts)
        retired = day_of(d.retired_at, d.retired_at.is_not(None))
        ever_on_scep = d.source != "est"  # native devices, retired or not, have no place in the trend
        sightings = select(seen, func.count()).where(ever_on_scep).group_by(seen)
        moves = (
            select(mapped, migrated, retired, func.count())
            .where(ever_on_scep)
            .where(or_(d.mapped_at.is_not(None), d.migrated_at.is_not(None), d.retired_at.is_not(None)))
            .group_by(mapped, migrated, retired)
        )
        if group is not None:
            sightings = sightings.where(d.group_name == group)
            moves = moves.where(d.group_name == group)
        with self.db.read() as conn:
            seen_rows = conn.execute(sightings).all()
            move_rows = conn.execute(moves).all()
        merged: dict[dt.date, list[int]] = {}

        def add(day: object, legacy: int, mapped: int, migrated: int) -> None:
            changes = merged.setdefault(_as_date(day), [0, 0, 0])
            changes[0] += legacy
            changes[1] += mapped
            changes[2] += migrated

        for day, count in seen_rows:
            add(day, int(count), 0, 0)
        for mapped_day, migrated_day, retired_day, raw_count in move_rows:
            count = int(raw_count)
            leaving = (0, -count) if mapped_day is not None else (-count, 0)  # mapped, or still legacy
            if mapped_day is not None:
                add(mapped_day, -count, count, 0)
            if migrated_day is not None:
                add(migrated_day, *leaving, count)
            if retired_day is not None:
                add(retired_day, *((0, 0, -count) if migrated_day is not None else (*leaving, 0)))
        return [DayChange(key, *merged[key]) for key in sorted(merged)]


def _standing(row: RowMapping) -> DeviceStanding:
    return DeviceStanding(**{name: row[name] for name in DeviceStanding.__dataclass_fields__})


def _day(dialect: str, column: ColumnElement[object]) -> ColumnElement[object]:
    """The UTC day of a timestamp column, computed by the database."""
    if dialect == "sqlite":  # SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff' text (naive UTC): the day is its prefix
        return func.substr(column, 1, 10)
    return cast(column, Date)


def _later(dialect: str, first: ColumnElement[object], second: ColumnElement[object]) -> ColumnElement[object]:
    """The later of two non-null timestamps (SQLite's two-argument max() is PostgreSQL's greatest())."""
    return func.max(first, second) if dialect == "sqlite" else func.greatest(first, second)


def _as_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])
