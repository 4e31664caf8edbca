"""The migration report: how far the fleet has moved from SCEP to EST, and what to do about the rest.

Built from the device table (shared_ca.storage.migration_report): totals per state and the share
migrated, overall and per group; every device still to move (legacy or mapped) with its last SCEP
contact, its certificate's expiry, its SCEP client's fingerprint with the weak choices flagged, and
its next action; the mapped devices silent on EST for longer than `migration.silent_days`; each
group's sunset date and how many devices it would cut off; and the per-day trend.

The values it is made of are in migration_tools.report_model; migration_tools.render prints it as
a table, CSV, JSON or HTML.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from migration_tools.client_families import family_facts
from migration_tools.report_model import (
    ClientFingerprint,
    DeviceEntry,
    DevicePage,
    GroupSummary,
    MigrationReport,
    StateTotals,
    TrendPoint,
)
from shared_ca.errors import InvalidRequest, NotFound
from shared_ca.storage.devices import GroupRecord
from shared_ca.storage.migration_report import (
    TO_MOVE_STATES,
    DayChange,
    DeviceFilter,
    DeviceStanding,
    StateCount,
)


class ReportQueries(Protocol):
    """The storage a migration report reads (shared_ca.storage.migration_report)."""

    def state_counts(self, group: str | None = None) -> list[StateCount]: ...
    def group_policies(self, group: str | None = None) -> list[GroupRecord]: ...
    def count_devices(self, where: DeviceFilter) -> int: ...
    def device_standings(
        self, where: DeviceFilter, *, after_id: int = 0, limit: int | None = None
    ) -> list[DeviceStanding]: ...
    def day_changes(self, group: str | None = None) -> list[DayChange]: ...


DEFAULT_LIST_LIMIT = 1000
TREND_CACHE_SECONDS = 60.0
MAX_CACHED_GROUPS = 1000
DEFAULT_TREND_DAYS = 90
MAX_TREND_DAYS = 3660

ACTION_MAP = "map it to an EST credential (gateway migrate map)"
ACTION_PUSH_BOOTSTRAP = "push its one-time EST bootstrap credential and the EST URL to the device"
ACTION_PUSH_CERTIFICATE = "push the EST URL to the device (its current certificate is its EST credential)"
ACTION_PUSH = "push its EST credential and the EST URL to the device"


@dataclass(frozen=True)
class ReportSettings:
    """What the report is asked for: the silence threshold, the trend window and the list lengths."""

    silent_days: int = 14
    trend_days: int = DEFAULT_TREND_DAYS
    list_limit: int | None = DEFAULT_LIST_LIMIT  # devices listed per list; None: every one

    def __post_init__(self) -> None:
        if self.silent_days < 1:
            raise InvalidRequest("silent days: must be at least 1")
        if not 1 <= self.trend_days <= MAX_TREND_DAYS:
            raise InvalidRequest(f"trend days: must be from 1 to {MAX_TREND_DAYS}")
        if self.list_limit is not None and self.list_limit < 0:
            raise InvalidRequest("limit: must not be negative")


def _day(moment: dt.datetime) -> str:
    return moment.date().isoformat()


def next_actions(device: DeviceStanding, now: dt.datetime, silent_days: int) -> tuple[str, ...]:
    """What to do about a device still on SCEP, most pressing first; () for migrated, native and retired ones."""
    if device.state not in TO_MOVE_STATES:
        return ()
    actions: list[str] = []
    facts = family_facts(device.scep_client)
    if not facts.moves_to_est:  # mapping it would hand out a credential nothing on the device can use
        actions.append(f"{facts.name}: {facts.route}")
    elif device.state == "legacy":
        if facts.host_alternative:
            actions.append(f"{facts.name}: {facts.route}")
        actions.append(ACTION_MAP)
    else:
        mapped_at, last_est = device.mapped_at, device.last_est_at
        if mapped_at is not None and last_est is not None and last_est >= mapped_at:
            actions.append(f"contacted EST on {_day(last_est)} but holds no EST certificate yet: check its enrollment")
        elif mapped_at is not None and now - mapped_at >= dt.timedelta(days=silent_days):
            actions.append(f"silent on EST since mapping for {(now - mapped_at).days} days")
        elif device.mapping_mode == "bootstrap":
            actions.append(ACTION_PUSH_BOOTSTRAP)
        elif device.mapping_mode == "certificate":
            actions.append(ACTION_PUSH_CERTIFICATE)
        else:
            actions.append(ACTION_PUSH)
    expiry, sunset = device.certificate_not_after, device.sunset_at
    if expiry is not None and expiry <= now:
        actions.append(f"certificate expired on {_day(expiry)}")
    elif expiry is not None and sunset is not None and expiry < sunset:
        actions.append(f"certificate expires on {_day(expiry)}, before the group's sunset date {_day(sunset)}")
    if sunset is not None:
        closes = "closed" if sunset <= now else "closes"
        actions.append(f"SCEP {closes} for its group on {_day(sunset)}")
    return tuple(actions)


def judge_device(device: DeviceStanding, now: dt.datetime, silent_days: int) -> DeviceEntry:
    """A device row as the report lists it: its client fingerprint and next actions."""
    return DeviceEntry(
        id=device.id,
        identity=device.identity,
        group=device.group_name,
        owner=device.owner,
        state=device.state,
        first_seen_at=device.first_seen_at,
        last_scep_at=device.last_scep_at,
        last_est_at=device.last_est_at,
        mapped_at=device.mapped_at,
        mapping_mode=device.mapping_mode,
        migrated_at=device.migrated_at,
        certificate_not_after=device.certificate_not_after,
        sunset_at=device.sunset_at,
        client=ClientFingerprint(
            device.scep_user_agent, device.scep_cipher, device.scep_digest, device.scep_challenge, device.scep_client
        ),
        actions=next_actions(device, now, silent_days),
    )


def silent_filter(now: dt.datetime, silent_days: int, group: str | None) -> DeviceFilter:
    """Mapped devices with no EST contact since a mapping older than `silent_days`."""
    return DeviceFilter(states=("mapped",), group=group, silent_before=now - dt.timedelta(days=silent_days))


def device_page(
    queries: ReportQueries,
    now: dt.datetime,
    *,
    states: tuple[str, ...] = (),
    group: str | None = None,
    silent_days: int = 14,
    silent_only: bool = False,
    after_id: int = 0,
    limit: int = 100,
) -> DevicePage:
    """One page of devices in id order (keyset pagination: pass `next_after` as `after_id`)."""
    if limit < 1:
        raise InvalidRequest("limit: must be at least 1")
    if silent_only:
        if states and "mapped" not in states:
            return DevicePage((), None)
        where = silent_filter(now, silent_days, group)
    else:
        where = DeviceFilter(states=states, group=group)
    rows = queries.device_standings(where, after_id=after_id, limit=limit + 1)
    entries = tuple(judge_device(row, now, silent_days) for row in rows[:limit])
    return DevicePage(entries, entries[-1].id if len(rows) > limit else None)


def _trend(changes: list[DayChange], today: dt.date, days: int) -> tuple[TrendPoint, ...]:
    """Running totals per day over the last `days` days (from the first change, if later)."""
    if not changes:
        return ()
    start = max(changes[0].day, today - dt.timedelta(days=days - 1))
    end = max(today, start)
    baseline = [0, 0, 0]
    per_day: dict[dt.date, list[int]] = {}
    for change in changes:
        # Days before the window fold into its first point; a future day (clock skew) counts today.
        target = baseline if change.day < start else per_day.setdefault(min(change.day, end), [0, 0, 0])
        target[0] += change.legacy
        target[1] += change.mapped
        target[2] += change.migrated
    points = []
    running = baseline
    for offset in range((end - start).days + 1):
        day = start + dt.timedelta(days=offset)
        delta = per_day.get(day, [0, 0, 0])
        running = [running[0] + delta[0], running[1] + delta[1], running[2] + delta[2]]
        points.append(TrendPoint(day, *running))
    return tuple(points)


def _groups(queries: ReportQueries, counts: list[StateCount], group: str | None) -> tuple[GroupSummary, ...]:
    policies = {p.name: p for p in queries.group_policies(group)}
    names: set[str | None] = {c.group_name for c in counts} | set(policies)
    summaries = []
    for name in sorted(names, key=lambda n: (n is None, n or "")):
        policy = policies.get(name) if name is not None else None
        summaries.append(
            GroupSummary(
                name=name,
                totals=StateTotals.of(c for c in counts if c.group_name == name),
                sunset_at=policy.sunset_at if policy else None,
                allow_downgrade=policy.allow_downgrade if policy else False,
            )
        )
    return tuple(summaries)


def build_report(
    queries: ReportQueries,
    now: dt.datetime,
    *,
    group: str | None = None,
    settings: ReportSettings | None = None,
    trend: TrendCache | None = None,
) -> MigrationReport:
    """The report over every device (or one group's); NotFound for a group nobody is in. The trend's
    day changes come from `trend` when given (a dashboard's cache), else from `queries`."""
    settings = settings or ReportSettings()
    counts = queries.state_counts(group)
    groups = _groups(queries, counts, group)
    if group is not None and not groups:
        raise NotFound(f"no group {group!r}: no device is in it and it has no sunset policy")
    totals = StateTotals.of(counts)
    silent_where = silent_filter(now, settings.silent_days, group)
    to_move = queries.device_standings(DeviceFilter(states=TO_MOVE_STATES, group=group), limit=settings.list_limit)
    silent = queries.device_standings(silent_where, limit=settings.list_limit)
    silent_total = len(silent) if settings.list_limit is None else queries.count_devices(silent_where)
    return MigrationReport(
        generated_at=now,
        group=group,
        silent_days=settings.silent_days,
        totals=totals,
        groups=groups,
        to_move_total=totals.to_move,
        to_move=tuple(judge_device(d, now, settings.silent_days) for d in to_move),
        silent_total=silent_total,
        silent=tuple(judge_device(d, now, settings.silent_days) for d in silent),
        trend=_trend(
            trend.changes(queries, group) if trend is not None else queries.day_changes(group),
            now.date(),
            settings.trend_days,
        ),
    )


class TrendCache:
    """The trend's day changes per group, kept for `seconds`: the trend counts whole days, so a
    minute-old one draws the same picture, and it is the report's one expensive part (two scans of
    the devices). For the dashboard, whose summary is asked for by every open page every 30 s.
    Kept per report repository; thread-safe."""

    def __init__(self, seconds: float = TREND_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        # Keyed by the repository (weakly: one gone takes its entries with it).
        self._entries: weakref.WeakKeyDictionary[Any, dict[str | None, tuple[float, list[DayChange]]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def changes(self, queries: ReportQueries, group: str | None) -> list[DayChange]:
        now = self._clock()
        with self._lock:
            hit = self._entries.get(queries, {}).get(group)
        if hit is not None and hit[0] > now:
            return hit[1]
        changes = queries.day_changes(group)
        with self._lock:
            per_group = self._entries.setdefault(queries, {})
            if len(per_group) >= MAX_CACHED_GROUPS:
                per_group.clear()  # an unbounded number of groups asked for: start afresh
            per_group[group] = (now + self.seconds, changes)
        return changes
