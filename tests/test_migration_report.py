"""The migration report: totals, per-group sunset exposure, the devices still to move with their
weak client choices and next actions, silent mapped devices, the trend, and the four formats
(table, CSV, JSON, HTML) agreeing on every number. States are built through the stores and real
enrollment events, over SQLite and PostgreSQL (the database_url fixture)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from sqlalchemy import event, insert

from gateway.cli import main
from gateway.config import load_config
from gateway.runtime import open_gateway
from migration_tools.client_families import FAMILIES
from migration_tools.render import render
from migration_tools.report import (
    ACTION_MAP,
    ACTION_PUSH,
    ACTION_PUSH_BOOTSTRAP,
    ACTION_PUSH_CERTIFICATE,
    ReportSettings,
    TrendCache,
    build_report,
    device_page,
    next_actions,
)
from migration_tools.report_html import _DEVICE_WIDTHS
from migration_tools.report_model import MigrationReport
from migration_tools.report_rows import DEVICE_COLUMNS, SECTIONS, TABLE_DEVICE_COLUMNS, TOTAL_FIELDS
from shared_ca.authority import CertificateAuthority
from shared_ca.errors import InvalidRequest, NotFound
from shared_ca.policy import authorize_csr
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.storage.device_contacts import NewDevice
from shared_ca.storage.enrollment_records import EnrollmentEvent
from shared_ca.storage.inventory import InventoryRecords
from shared_ca.storage.migration_report import DayChange, DeviceStanding
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import devices
from tests.support import SettableClock, make_csr, subject

DAY = dt.timedelta(days=1)


def enroll(
    authority: CertificateAuthority,
    cn: str,
    protocol: str,
    *,
    cipher: str | None = "aes256",
    digest: str | None = "sha256",
    challenge: str = "one-time",
) -> str:
    """A certificate issued with its enrollment event (as the services do); its serial."""
    scep = protocol == "scep"
    event = EnrollmentEvent(
        protocol=protocol,
        operation="PKCSReq" if scep else "simpleenroll",
        outcome="issued",
        device_identity=cn,
        user_agent="sscep/0.10" if scep else "est-client/1",
        cipher=cipher if scep else None,
        digest=digest if scep else None,
        challenge_kind=challenge if scep else "basic",
    )
    policy = authorize_csr(DEFAULT_PROFILES["default"], make_csr(name=subject(cn)), authority.clock())
    return authority.issue(policy, protocol=protocol, actor="test", enrollment=event).record.serial_hex


@dataclass(frozen=True)
class Fleet:
    base: dt.datetime
    now: dt.datetime
    retired_serial: str


def build_fleet(store: Storage, authority: CertificateAuthority, clock: SettableClock) -> Fleet:
    """Ten devices in every state, three groups, 40 days of history (see the test for what each is)."""
    devs, events = store.devices, store.enrollments
    now = clock.now.replace(hour=12, minute=0, second=0, microsecond=0)
    base = now - 40 * DAY
    clock.now = base
    enroll(authority, "scep-des", "scep", cipher="des", digest="sha1", challenge="static")
    clock.now = base + DAY
    enroll(authority, "scep-md5", "scep", cipher="aes128", digest="md5")
    retired_serial = enroll(authority, "retired-1", "scep")
    clock.now = base + 2 * DAY
    enroll(authority, "scep-strong", "scep")
    clock.now = base + 3 * DAY
    enroll(authority, "mapped-fresh", "scep")
    enroll(authority, "mapped-tried", "scep")
    clock.now = base + 4 * DAY
    enroll(authority, "migrated-1", "scep")
    devs.set_mapping("scep-strong", "bootstrap", "est-user-1", base + 5 * DAY)
    devs.set_mapping("migrated-1", "certificate", None, base + 6 * DAY)
    clock.now = base + 8 * DAY
    enroll(authority, "migrated-1", "est")
    devs.set_mapping("mapped-tried", "bootstrap", "est-user-2", base + 10 * DAY)
    pending = EnrollmentEvent(
        protocol="est", operation="simpleenroll", outcome="pending", device_identity="mapped-tried"
    )
    events.record_event(pending, base + 12 * DAY)
    clock.now = base + 20 * DAY
    enroll(authority, "est-native", "est")
    InventoryRecords(devs.db).add_imported_devices(
        [
            NewDevice(
                "imported-old",
                "import:test",
                group_name="kiosks",
                first_seen_at=base - 100 * DAY,
                certificate_not_after=now + 10 * DAY,
            ),
            NewDevice("printer-1", "import:test", group_name="printers", first_seen_at=base + 30 * DAY),
        ],
        base + 30 * DAY,
    )
    for identity, group in [("scep-des", "kiosks"), ("scep-md5", "kiosks")] + [
        (name, "laptops") for name in ("scep-strong", "mapped-fresh", "mapped-tried", "migrated-1")
    ]:
        assert devs.annotate(identity, group=group, owner=None, tags=(), now=base + 30 * DAY)
    devs.set_mapping("mapped-fresh", "certificate", None, now - 2 * DAY)
    devs.set_group_policy("kiosks", sunset_at=now + 30 * DAY, allow_downgrade=False, actor="test", now=now)
    devs.set_group_policy("printers", sunset_at=now - DAY, allow_downgrade=False, actor="test", now=now)
    devs.set_group_policy("empty", sunset_at=None, allow_downgrade=True, actor="test", now=now)
    clock.now = now
    authority.revoke(retired_serial, x509.ReasonFlags.key_compromise, actor="test")
    assert devs.retire_stale(now, 30 * DAY) == 1
    return Fleet(base, now, retired_serial)


@pytest.fixture
def fleet(store: Storage, authority: CertificateAuthority, clock: SettableClock) -> Fleet:
    return build_fleet(store, authority, clock)


@pytest.fixture
def report(store: Storage, fleet: Fleet) -> MigrationReport:
    return build_report(store.migration_report, fleet.now)


def by_identity(report: MigrationReport) -> dict[str, Any]:
    return {d.identity: d for d in report.to_move}


# -- numbers ------------------------------------------------------------------------------------------


def test_totals_and_groups(report: MigrationReport, fleet: Fleet) -> None:
    t = report.totals
    assert (t.legacy, t.mapped, t.migrated, t.native, t.retired, t.total, t.to_move) == (4, 3, 1, 1, 1, 10, 7)
    assert t.percent_migrated == 12.5  # 1 of the 8 SCEP devices not retired; est-native was never on SCEP
    groups = {g.name: g for g in report.groups}
    assert list(groups) == ["empty", "kiosks", "laptops", "printers", None]
    kiosks, laptops, printers = groups["kiosks"], groups["laptops"], groups["printers"]
    assert (kiosks.totals.legacy, kiosks.sunset_at, kiosks.cut_off) == (3, fleet.now + 30 * DAY, 3)
    assert (laptops.totals.mapped, laptops.totals.migrated, laptops.totals.percent_migrated) == (3, 1, 25.0)
    assert (laptops.sunset_at, laptops.cut_off) == (None, 0)
    assert (printers.totals.legacy, printers.cut_off) == (1, 1)
    no_group = groups[None].totals
    assert (no_group.migrated, no_group.native, no_group.retired, no_group.percent_migrated) == (0, 1, 1, None)
    assert (groups["empty"].totals.total, groups["empty"].totals.percent_migrated, groups["empty"].allow_downgrade) == (
        0,
        None,
        True,
    )


def test_every_device_still_to_move_with_its_fingerprint_and_next_actions(
    report: MigrationReport, fleet: Fleet
) -> None:
    assert report.to_move_total == 7
    moving = by_identity(report)
    assert list(moving) == [
        "scep-des", "scep-md5", "scep-strong", "mapped-fresh", "mapped-tried", "imported-old", "printer-1",
    ]  # fmt: skip
    assert [d.id for d in report.to_move] == sorted(d.id for d in report.to_move)
    des = moving["scep-des"]
    assert (des.client.cipher, des.client.digest, des.client.challenge) == ("des", "sha1", "static")
    assert des.client.weak == ("DES", "SHA-1", "static challenge")
    assert des.last_scep_at == fleet.base and des.certificate_not_after is not None
    assert moving["scep-md5"].client.weak == ("MD5",)
    assert moving["scep-strong"].client.weak == () and moving["imported-old"].client.weak == ()
    sunset, passed = (fleet.now + 30 * DAY).date(), (fleet.now - DAY).date()
    expected = {
        "scep-des": (ACTION_MAP, f"SCEP closes for its group on {sunset}"),
        "scep-md5": (ACTION_MAP, f"SCEP closes for its group on {sunset}"),
        "scep-strong": ("silent on EST since mapping for 35 days",),
        "mapped-fresh": (ACTION_PUSH_CERTIFICATE,),
        "mapped-tried": (
            f"contacted EST on {(fleet.base + 12 * DAY).date()} but holds no EST certificate yet: check its enrollment",
        ),
        "imported-old": (
            ACTION_MAP,
            f"certificate expires on {(fleet.now + 10 * DAY).date()}, before the group's sunset date {sunset}",
            f"SCEP closes for its group on {sunset}",
        ),
        "printer-1": (ACTION_MAP, f"SCEP closed for its group on {passed}"),
    }
    assert {name: d.actions for name, d in moving.items()} == expected
    assert moving["scep-strong"].next_action == "silent on EST since mapping for 35 days"


def _standing(state: str, **fields: Any) -> DeviceStanding:
    values: dict[str, Any] = dict.fromkeys(DeviceStanding.__dataclass_fields__)
    values.update(id=1, identity="d", state=state, first_seen_at=NOW - 100 * DAY, **fields)
    return DeviceStanding(**values)


NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("device", "actions"),
    [
        pytest.param(_standing("migrated"), (), id="migrated"),
        pytest.param(_standing("retired"), (), id="retired"),
        pytest.param(_standing("legacy"), (ACTION_MAP,), id="legacy"),
        pytest.param(_standing("mapped", mapped_at=NOW - DAY), (ACTION_PUSH,), id="mapped-without-mode"),
        pytest.param(
            _standing("mapped", mapped_at=NOW - 14 * DAY, mapping_mode="bootstrap"),
            ("silent on EST since mapping for 14 days",),
            id="silent-exactly-silent-days",
        ),
        pytest.param(
            _standing("legacy", certificate_not_after=NOW - 2 * DAY, sunset_at=NOW + DAY),
            (ACTION_MAP, "certificate expired on 2026-05-30", "SCEP closes for its group on 2026-06-02"),
            id="expired",
        ),
        pytest.param(
            _standing("legacy", certificate_not_after=NOW + 5 * DAY, sunset_at=NOW + 5 * DAY),
            (ACTION_MAP, "SCEP closes for its group on 2026-06-06"),
            id="expires-with-the-sunset",
        ),
        pytest.param(
            _standing("legacy", sunset_at=NOW), (ACTION_MAP, "SCEP closed for its group on 2026-06-01"), id="sunset-now"
        ),
        pytest.param(
            _standing("legacy", scep_client="apple", sunset_at=NOW + DAY),
            (f"Apple MDM (iOS, iPadOS, macOS): {FAMILIES['apple'].route}", "SCEP closes for its group on 2026-06-02"),
            id="apple-no-est-client",
        ),
        pytest.param(
            _standing("mapped", scep_client="windows", mapped_at=NOW - 30 * DAY),
            (f"Windows / Intune (NDES path): {FAMILIES['windows'].route}",),
            id="windows-mapped-anyway",
        ),
        pytest.param(
            _standing("legacy", scep_client="certmonger"),
            (f"certmonger: {FAMILIES['certmonger'].route}", ACTION_MAP),
            id="certmonger-needs-another-client",
        ),
        pytest.param(_standing("legacy", scep_client="cisco-ios"), (ACTION_MAP,), id="cisco-some-versions"),
        pytest.param(_standing("legacy", scep_client="no-such-family"), (ACTION_MAP,), id="unknown-family"),
    ],
)
def test_next_actions(device: DeviceStanding, actions: tuple[str, ...]) -> None:
    assert next_actions(device, NOW, 14) == actions


def test_silent_mapped_devices(store: Storage, report: MigrationReport, fleet: Fleet) -> None:
    assert report.silent_total == 1
    assert [d.identity for d in report.silent] == ["scep-strong"]
    later = build_report(store.migration_report, fleet.now + 13 * DAY)
    assert [d.identity for d in later.silent] == ["scep-strong", "mapped-fresh"]  # mapped 15 days before
    assert by_identity(later)["mapped-fresh"].actions == ("silent on EST since mapping for 15 days",)
    tolerant = build_report(store.migration_report, fleet.now, settings=ReportSettings(silent_days=36))
    assert tolerant.silent_total == 0
    assert by_identity(tolerant)["scep-strong"].actions == (ACTION_PUSH_BOOTSTRAP,)


def test_trend_per_day(store: Storage, report: MigrationReport, fleet: Fleet) -> None:
    points = {p.day: (p.legacy, p.mapped, p.migrated) for p in report.trend}
    today, base = fleet.now.date(), fleet.base.date()
    assert report.trend[0].day == today - 89 * DAY and report.trend[-1].day == today
    assert len(report.trend) == 90 and list(points) == sorted(points)
    assert points[base - DAY] == (1, 0, 0)  # imported-old, first seen long before: folded into the start
    assert points[base] == (2, 0, 0)
    assert points[base + 4 * DAY] == (8, 0, 0)
    assert points[base + 6 * DAY] == (6, 2, 0)  # scep-strong and migrated-1 mapped
    assert points[base + 8 * DAY] == (6, 1, 1)  # migrated-1 enrolled over EST
    assert points[base + 20 * DAY] == (5, 2, 1)  # est-native, first seen that day, is native: not in the trend
    assert points[today - 2 * DAY] == (5, 3, 1)  # mapped-fresh mapped
    assert points[today] == (report.totals.legacy, report.totals.mapped, report.totals.migrated)  # retired-1 gone
    short = build_report(store.migration_report, fleet.now, settings=ReportSettings(trend_days=3))
    assert short.trend == report.trend[-3:]


def test_one_group_and_unknown_group(store: Storage, fleet: Fleet) -> None:
    kiosks = build_report(store.migration_report, fleet.now, group="kiosks")
    assert kiosks.group == "kiosks" and [g.name for g in kiosks.groups] == ["kiosks"]
    assert (kiosks.totals.legacy, kiosks.totals.total, kiosks.to_move_total) == (3, 3, 3)
    assert {d.identity for d in kiosks.to_move} == {"scep-des", "scep-md5", "imported-old"}
    assert kiosks.trend[-1].legacy == 3
    with pytest.raises(NotFound, match="no group 'nobody'"):
        build_report(store.migration_report, fleet.now, group="nobody")


def test_list_limit_keeps_the_totals(store: Storage, fleet: Fleet) -> None:
    capped = build_report(store.migration_report, fleet.now, settings=ReportSettings(list_limit=2))
    assert [d.identity for d in capped.to_move] == ["scep-des", "scep-md5"] and capped.to_move_total == 7
    assert capped.silent_total == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"silent_days": 0}, "silent days: must be at least 1", id="fail/silent-days"),
        pytest.param({"trend_days": 0}, "trend days: must be from 1 to 3660", id="fail/trend-days"),
        pytest.param({"list_limit": -1}, "limit: must not be negative", id="fail/limit"),
    ],
)
def test_settings_are_checked(settings: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        ReportSettings(**settings)


def test_device_pages_follow_the_keyset(store: Storage, fleet: Fleet) -> None:
    reports = store.migration_report
    seen, after = [], 0
    while True:
        page = device_page(reports, fleet.now, states=("legacy", "mapped"), after_id=after, limit=3)
        seen += [d.identity for d in page.devices]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == [d.identity for d in build_report(reports, fleet.now).to_move]
    migrated = device_page(reports, fleet.now, states=("migrated",), limit=10)
    assert [(d.identity, d.actions) for d in migrated.devices] == [("migrated-1", ())]
    native = device_page(reports, fleet.now, states=("native",), limit=10)
    assert [(d.identity, d.actions, d.migrated_at) for d in native.devices] == [("est-native", (), None)]
    silent = device_page(reports, fleet.now, silent_only=True, group="laptops", limit=10)
    assert [d.identity for d in silent.devices] == ["scep-strong"] and silent.next_after is None
    assert device_page(reports, fleet.now, silent_only=True, states=("legacy",)).devices == ()
    assert len(device_page(reports, fleet.now, limit=100).devices) == 10


def test_totals_take_a_fixed_number_of_queries(store: Storage, fleet: Fleet) -> None:
    """No per-device query: 500 more devices, the same statements."""
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    reports = store.migration_report
    settings = ReportSettings(list_limit=5)
    event.listen(store.engine, "before_cursor_execute", count)
    try:
        build_report(reports, fleet.now, settings=settings)
        before = len(statements)
        rows = [{**_bulk_row(fleet.now), "identity": f"bulk-{n}"} for n in range(500)]
        with store.engine.begin() as conn:
            conn.execute(insert(devices), rows)
        statements.clear()
        bigger = build_report(reports, fleet.now, settings=settings)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert len(statements) == before <= 20, statements
    assert bigger.totals.legacy == 504


def _bulk_row(now: dt.datetime) -> dict[str, Any]:
    return {
        "group_name": "bulk", "owner": None, "tags": "[]", "state": "legacy", "source": "import:bulk",
        "first_seen_at": now - 3 * DAY, "updated_at": now,
    }  # fmt: skip


# -- the four formats ---------------------------------------------------------------------------------

Sections = dict[str, list[dict[str, str]]]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list):
        return "; ".join(value)
    return str(value)


def sections_of_json(text: str) -> Sections:
    data = json.loads(text)

    def device(entry: dict[str, Any]) -> dict[str, str]:
        flat = {**entry, **entry["client"], "client": entry["client"]["name"]}
        return {c: _text(flat[c]) for c in DEVICE_COLUMNS}

    heading = {
        "generated_at": data["generated_at"],
        "group": data["group"],
        "silent_days": data["silent_days"],
        "to_move_total": data["to_move_total"],
        "to_move_listed": len(data["to_move"]),
        "silent_total": data["silent_total"],
        "silent_listed": len(data["silent"]),
    }
    return {
        "report": [{"field": k, "value": _text(v)} for k, v in heading.items()],
        "totals": [{"state": k, "devices": _text(data["totals"][k])} for k in TOTAL_FIELDS],
        "groups": [{("group" if k == "name" else k): _text(v) for k, v in g.items()} for g in data["groups"]],
        "silent": [device(d) for d in data["silent"]],
        "to_move": [device(d) for d in data["to_move"]],
        "trend": [{k: _text(v) for k, v in p.items()} for p in data["trend"]],
    }


def table_of_csv(text: str) -> list[dict[str, str]]:
    """A CSV report file: exactly one table, a header row and its rows, as a spreadsheet reads it."""
    return list(csv.DictReader(io.StringIO(text)))


def sections_of_csv(report: MigrationReport) -> Sections:
    """Every section, one CSV file each (--section)."""
    found = {name: table_of_csv(render(report, "csv", name)) for name in SECTIONS}
    assert render(report, "csv") == render(report, "csv", "to_move")  # the default section
    return found


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.empty: list[str] = []
        self.circles: list[dict[str, str | None]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table":
            self._table = found["id"]
            self.tables[str(self._table)] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "p" and found.get("id"):
            self.empty.append(str(found["id"]))
        elif tag == "circle":
            self.circles.append(found)

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None


def sections_of_html(text: str) -> tuple[Sections, list[dict[str, str | None]]]:
    parser = _Tables()
    parser.feed(text)
    found: Sections = {name: [] for name in parser.empty}
    for name, (header, *rows) in parser.tables.items():
        found[name] = [dict(zip(header, row, strict=True)) for row in rows]
    return found, parser.circles


def sections_of_table(text: str) -> Sections:
    found: Sections = {}
    blocks = text.strip("\n").split("\n\n")
    for block in blocks:
        title, *lines = block.split("\n")
        name = re.fullmatch(r"== (.+) ==", title).group(1).replace(" ", "_")  # type: ignore[union-attr]
        found[name] = []
        if lines == ["(none)"]:
            continue
        starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
        header = [h.lower() for h in lines[0].split()]
        for line in lines[1:]:
            cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            found[name].append({h: ("" if c == "-" else c) for h, c in zip(header, cells, strict=True)})
    return found


def test_the_four_formats_agree_on_every_number(report: MigrationReport) -> None:
    expected = sections_of_json(render(report, "json"))
    assert sections_of_csv(report) == expected
    html, circles = sections_of_html(render(report, "html"))
    assert html == expected
    table = sections_of_table(render(report, "table"))
    projected = {
        name: [{c: row[c] for c in TABLE_DEVICE_COLUMNS} for row in rows] if name in ("silent", "to_move") else rows
        for name, rows in expected.items()
    }
    assert table == projected
    assert expected["totals"][0] == {"state": "legacy", "devices": "4"}
    assert {"state": "percent_migrated", "devices": "12.5"} in expected["totals"]
    assert {"state": "native", "devices": "1"} in expected["totals"]
    # the chart: one point per day and series, carrying the trend's numbers
    assert len(circles) == 3 * len(report.trend)
    for series in ("legacy", "mapped", "migrated"):
        drawn = [(c["data-day"], int(str(c["data-value"]))) for c in circles if c["data-series"] == series]
        assert drawn == [(p.day.isoformat(), getattr(p, series)) for p in report.trend]


def test_html_is_self_contained(report: MigrationReport) -> None:
    page = render(report, "html")
    assert "<script" not in page and "<svg" in page and 'id="trend-chart"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page


def test_client_supplied_text_is_defused_in_every_format(store: Storage, clock: SettableClock) -> None:
    devs = store.devices
    InventoryRecords(devs.db).add_imported_devices(
        [NewDevice('=HYPERLINK("http://x")', "import:t", group_name="<b>g</b>")], clock()
    )
    events = store.enrollments
    hostile = EnrollmentEvent(
        protocol="scep", operation="PKCSReq", outcome="pending", device_identity='=HYPERLINK("http://x")',
        user_agent="evil\x1b[2J<script>alert(1)</script>", cipher="des", digest="md5", challenge_kind="static",
    )  # fmt: skip
    events.record_event(hostile, clock())
    report = build_report(store.migration_report, clock())
    rows = table_of_csv(render(report, "csv"))
    assert rows[0]["identity"] == '\'=HYPERLINK("http://x")'
    assert rows[0]["weak"] == "DES; MD5; static challenge"
    page = render(report, "html")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;g&lt;/b&gt;" in page
    assert "\x1b" not in render(report, "table")
    assert json.loads(render(report, "json"))["to_move"][0]["client"]["user_agent"].startswith("evil\x1b")


def test_an_empty_fleet(store: Storage, clock: SettableClock) -> None:
    report = build_report(store.migration_report, clock())
    assert (report.totals.total, report.totals.percent_migrated, report.trend, report.groups) == (0, None, (), ())
    for fmt in ("table", "csv", "json", "html"):
        assert render(report, fmt)
    assert "(none)" in render(report, "table")
    with pytest.raises(ValueError, match="unknown report format 'xml'"):
        render(report, "xml")
    with pytest.raises(ValueError, match="unknown report section 'everything'"):
        render(report, "csv", "everything")
    with pytest.raises(ValueError, match="holds every section"):
        render(report, "html", "totals")


# -- gateway migrate report ---------------------------------------------------------------------------


def run(runner: CliRunner, data_dir: Path, *args: str, code: int = 0) -> str:
    result = runner.invoke(main, ["migrate", "report", *args, "--data-dir", str(data_dir)])
    assert result.exit_code == code, result.output
    return result.output


def test_cli_report_retires_stale_devices_first(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    gateway = open_gateway(load_config(data_dir, environ={}))
    try:
        enroll(gateway.authority, "router-1", "scep", cipher="des")
        serial = enroll(gateway.authority, "router-2", "scep")
        gateway.authority.revoke(serial, x509.ReasonFlags.superseded, actor="test")
    finally:
        gateway.storage.engine.dispose()
    out = tmp_path / "report.json"
    result = runner.invoke(
        main, ["migrate", "report", "--format", "json", "--out", str(out), "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "retired 1 device(s)" in result.output and f"report written to {out} (json)" in result.output
    data = json.loads(out.read_text())
    assert (data["totals"]["legacy"], data["totals"]["retired"]) == (1, 1)
    assert [(d["identity"], d["weak"]) for d in data["to_move"]] == [("router-1", ["DES"])]
    table = run(runner, data_dir)
    assert "== totals ==" in table and "router-1" in table and "retired 1" not in table
    csv_text = run(runner, data_dir, "--format", "csv", "--limit", "0")
    assert table_of_csv(csv_text)[0]["identity"] == "router-1"
    totals = table_of_csv(run(runner, data_dir, "--format", "csv", "--section", "totals"))
    assert {"state": "legacy", "devices": "1"} in totals and list(totals[0]) == ["state", "devices"]
    only = run(runner, data_dir, "--section", "groups")
    assert only.startswith("== groups ==") and "== totals ==" not in only
    page = run(runner, data_dir, "--format", "html", "--trend-days", "7")
    assert (
        page.startswith("<!DOCTYPE html>") and page.count('data-series="legacy" data-day') == 1
    )  # history starts today


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["--group", "nobody"], 1, "no group 'nobody': no device is in it", id="fail/unknown-group"),
        pytest.param(["--group", "x" * 65], 2, "a group name has 1-64 characters", id="fail/long-group"),
        pytest.param(["--format", "xml"], 2, "'xml' is not one of", id="fail/format"),
        pytest.param(["--out", "/nonexistent/dir/r.html"], 2, "no directory '/nonexistent/dir'", id="fail/out-dir"),
        pytest.param(["--limit", "-1"], 2, "-1 is not in the range x>=0", id="fail/limit"),
        pytest.param(["--format", "json", "--section", "totals"], 2, "holds every section", id="fail/json-section"),
        pytest.param(["--format", "csv", "--section", "all"], 2, "'all' is not one of", id="fail/section"),
    ],
)
def test_cli_report_errors_are_one_line(
    runner: CliRunner, data_dir: Path, args: list[str], code: int, message: str
) -> None:
    output = run(runner, data_dir, *args, code=code)
    assert message in output and "Traceback" not in output


def test_the_html_device_tables_have_a_width_for_every_column() -> None:
    assert set(_DEVICE_WIDTHS) == set(DEVICE_COLUMNS) and sum(_DEVICE_WIDTHS.values()) == 100


def test_the_trend_cache_keeps_a_groups_changes_for_its_seconds(store: Storage, fleet: Fleet) -> None:
    reports = store.migration_report
    calls: list[str | None] = []
    counted = reports.day_changes

    def day_changes(group: str | None = None) -> list[DayChange]:
        calls.append(group)
        return counted(group)

    reports.day_changes = day_changes  # type: ignore[method-assign]
    now = [0.0]
    cache = TrendCache(seconds=60, clock=lambda: now[0])
    first = build_report(reports, fleet.now, trend=cache)
    assert build_report(reports, fleet.now, trend=cache).trend == first.trend == build_report(reports, fleet.now).trend
    assert calls == [None, None]  # the cached build asked once; the uncached one asked again
    cache.changes(reports, "kiosks")
    now[0] = 59.9
    cache.changes(reports, "kiosks")
    assert calls == [None, None, "kiosks"]
    now[0] = 60.0  # expired
    cache.changes(reports, "kiosks")
    assert calls == [None, None, "kiosks", "kiosks"]
