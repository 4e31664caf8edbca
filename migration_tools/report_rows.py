"""The migration report as sections of text rows: what the table, CSV and HTML formats all write.

Each section is (name, header, rows), in the order of SECTIONS; a device is one flat row
whose columns are DEVICE_COLUMNS (TABLE_DEVICE_COLUMNS on a terminal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from migration_tools.report_json import STATES, device_to_dict, group_to_dict, totals_to_dict, when
from migration_tools.report_model import DeviceEntry, GroupSummary, MigrationReport, StateTotals, TrendPoint

SECTIONS = ("report", "totals", "groups", "silent", "to_move", "trend")  # in the order the formats show them
LIST_SEPARATOR = "; "
TOTAL_FIELDS = (*STATES, "total", "to_move", "percent_migrated")
GROUP_COLUMNS = ("group", *TOTAL_FIELDS, "sunset_at", "allow_downgrade", "cut_off")
DEVICE_COLUMNS = (
    "id",
    "identity",
    "group",
    "owner",
    "state",
    "last_scep_at",
    "last_est_at",
    "mapped_at",
    "certificate_not_after",
    "sunset_at",
    "client",
    "est_client",
    "user_agent",
    "cipher",
    "digest",
    "challenge",
    "weak",
    "next_action",
    "actions",
)
TABLE_DEVICE_COLUMNS = (
    "id", "identity", "group", "state", "last_scep_at", "certificate_not_after", "client", "weak", "actions",
)  # fmt: skip
TREND_COLUMNS = ("day", "legacy", "mapped", "migrated")


def percent_text(value: float | None) -> str:
    """A percentage to one decimal, as every format writes it; empty for None."""
    return "" if value is None else f"{value:.1f}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return percent_text(value)
    return str(value)


def _totals_rows(totals: StateTotals) -> list[list[str]]:
    data = totals_to_dict(totals)
    return [[field, _text(data[field])] for field in TOTAL_FIELDS]


def _group_rows(groups: Sequence[GroupSummary]) -> list[list[str]]:
    rows = []
    for group in groups:
        data = group_to_dict(group)
        data["group"] = data.pop("name")
        rows.append([_text(data[c]) for c in GROUP_COLUMNS])
    return rows


def device_row(device: DeviceEntry) -> dict[str, str]:
    """A device as one flat row of text (CSV, table and HTML columns)."""
    data = device_to_dict(device)
    client = data.pop("client")
    data.update({key: client[key] for key in ("user_agent", "cipher", "digest", "challenge", "est_client")})
    data["client"] = client["name"]
    data["weak"] = LIST_SEPARATOR.join(data["weak"])
    data["actions"] = LIST_SEPARATOR.join(data["actions"])
    return {column: _text(data[column]) for column in DEVICE_COLUMNS}


def _trend_rows(trend: Sequence[TrendPoint]) -> list[list[str]]:
    return [[p.day.isoformat(), str(p.legacy), str(p.mapped), str(p.migrated)] for p in trend]


def _heading(report: MigrationReport) -> list[list[str]]:
    return [
        ["generated_at", when(report.generated_at) or ""],
        ["group", report.group or ""],
        ["silent_days", str(report.silent_days)],
        ["to_move_total", str(report.to_move_total)],
        ["to_move_listed", str(len(report.to_move))],
        ["silent_total", str(report.silent_total)],
        ["silent_listed", str(len(report.silent))],
    ]


def report_sections(
    report: MigrationReport, device_columns: Sequence[str]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(name, header, rows) of every section, in the order every format shows them."""

    def devices(entries: Sequence[DeviceEntry]) -> list[list[str]]:
        return [[row[c] for c in device_columns] for row in map(device_row, entries)]

    return [  # SECTIONS, in its order
        ("report", ["field", "value"], _heading(report)),
        ("totals", ["state", "devices"], _totals_rows(report.totals)),
        ("groups", list(GROUP_COLUMNS), _group_rows(report.groups)),
        ("silent", list(device_columns), devices(report.silent)),
        ("to_move", list(device_columns), devices(report.to_move)),
        ("trend", list(TREND_COLUMNS), _trend_rows(report.trend)),
    ]
