"""The migration report as a terminal table, CSV, JSON, or a self-contained HTML page.

Every format shows the same numbers, written from one set of rows. A CSV file holds one section as
one table (a spreadsheet loads it as it is); the others hold them all. The HTML page needs no network:
its style is inline and its trend chart is an inline SVG (no script at all).

Device identities and User-Agent strings come from clients, so each format defuses them: HTML
escapes them, the table replaces control characters (no terminal escape sequences), and CSV
prefixes a cell that a spreadsheet would run as a formula with an apostrophe (OWASP's advice).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import re
from collections.abc import Sequence
from typing import Any

from migration_tools.report import DeviceEntry, GroupSummary, MigrationReport, StateTotals, TrendPoint

FORMATS = ("table", "csv", "json", "html")
SECTIONS = ("report", "totals", "groups", "silent", "to_move", "trend")  # in the order the formats show them
CSV_DEFAULT_SECTION = "to_move"
LIST_SEPARATOR = "; "
STATES = ("legacy", "mapped", "migrated", "native", "retired")
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
SERIES_COLOURS = {"legacy": "#c0392b", "mapped": "#d68910", "migrated": "#1e8449"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def when(moment: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC to the second, with a Z: the one way every format writes a time."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- JSON ---------------------------------------------------------------------------------------------


def totals_to_dict(totals: StateTotals) -> dict[str, Any]:
    return {
        **{state: getattr(totals, state) for state in STATES},
        "total": totals.total,
        "to_move": totals.to_move,
        "percent_migrated": totals.percent_migrated,
    }


def group_to_dict(group: GroupSummary) -> dict[str, Any]:
    return {
        "name": group.name,
        **totals_to_dict(group.totals),
        "sunset_at": when(group.sunset_at),
        "allow_downgrade": group.allow_downgrade,
        "cut_off": group.cut_off,
    }


def device_to_dict(device: DeviceEntry) -> dict[str, Any]:
    """A device as JSON (the report's lists and the admin API's device pages)."""
    client, facts = device.client, device.client.facts
    return {
        "id": device.id,
        "identity": device.identity,
        "group": device.group,
        "owner": device.owner,
        "state": device.state,
        "first_seen_at": when(device.first_seen_at),
        "last_scep_at": when(device.last_scep_at),
        "last_est_at": when(device.last_est_at),
        "mapped_at": when(device.mapped_at),
        "mapping_mode": device.mapping_mode,
        "migrated_at": when(device.migrated_at),
        "certificate_not_after": when(device.certificate_not_after),
        "sunset_at": when(device.sunset_at),
        "client": {
            "user_agent": client.user_agent,
            "cipher": client.cipher,
            "digest": client.digest,
            "challenge": client.challenge,
            "family": client.family,
            "name": facts.name,
            "est_client": facts.est_client,
        },
        "weak": list(client.weak),
        "next_action": device.next_action,
        "actions": list(device.actions),
    }


def trend_to_dict(point: TrendPoint) -> dict[str, Any]:
    return {"day": point.day.isoformat(), "legacy": point.legacy, "mapped": point.mapped, "migrated": point.migrated}


def report_to_dict(report: MigrationReport) -> dict[str, Any]:
    """The report as one JSON object (also what the dashboard's summary API answers)."""
    return {
        "generated_at": when(report.generated_at),
        "group": report.group,
        "silent_days": report.silent_days,
        "totals": totals_to_dict(report.totals),
        "groups": [group_to_dict(g) for g in report.groups],
        "to_move_total": report.to_move_total,
        "to_move": [device_to_dict(d) for d in report.to_move],
        "silent_total": report.silent_total,
        "silent": [device_to_dict(d) for d in report.silent],
        "trend": [trend_to_dict(p) for p in report.trend],
    }


def render_json(report: MigrationReport) -> str:
    return json.dumps(report_to_dict(report), indent=2) + "\n"


# -- rows shared by the table, CSV and HTML -------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _percent(value)
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


def _sections(report: MigrationReport, device_columns: Sequence[str]) -> list[tuple[str, list[str], list[list[str]]]]:
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


# -- CSV ------------------------------------------------------------------------------------------------


def _csv_cell(value: str) -> str:
    if value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def render_csv(report: MigrationReport, section: str = CSV_DEFAULT_SECTION) -> str:
    """One section as one table (a header row, then its rows), so a spreadsheet loads the file as it is."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for name, header, rows in _sections(report, DEVICE_COLUMNS):
        if name == section:
            writer.writerow(header)
            writer.writerows([_csv_cell(cell) for cell in row] for row in rows)
    return buffer.getvalue()


# -- terminal table -------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    cells = [[_printable(c) or "-" for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return lines


def render_table(report: MigrationReport, section: str | None = None) -> str:
    """Every section (or only `section`), each under its `== name ==` title."""
    lines: list[str] = []
    for name, header, rows in _sections(report, TABLE_DEVICE_COLUMNS):
        if section in (None, name):
            lines += [f"== {name.replace('_', ' ')} ==", *(_table(header, rows) if rows else ["(none)"]), ""]
    return "\n".join(lines)


# -- HTML -----------------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1b1b1b}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left}
td{vertical-align:top}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.devices{width:100%;table-layout:fixed}table.devices td,table.devices th{overflow-wrap:anywhere;font-size:.85em}
.weak{color:#b03a2e;font-weight:600}.meta{color:#555}svg text{font:11px system-ui,sans-serif;fill:#333}
.numbers{max-height:14em;overflow:auto;display:inline-block}
.progress{list-style:none;padding:0}.progress li{display:flex;align-items:center;gap:.6em;margin:.2em 0}
.progress .name{min-width:8em}
@media print{body{margin:0;font-size:10px}h2{break-after:avoid}tr{break-inside:avoid}
.numbers{max-height:none;overflow:visible}section{break-inside:auto}}
@page{size:A4 landscape;margin:12mm}
"""
_NUMERIC = {*TOTAL_FIELDS, "devices", "cut_off", "id"}
_HTML_ORDER = ("totals", "trend", "groups", "silent", "to_move", "report")
# Percent of the width of a device table per column (DEVICE_COLUMNS; they add up to 100).
_DEVICE_WIDTHS = {
    "id": 3, "identity": 7, "group": 4, "owner": 3, "state": 5, "last_scep_at": 5, "last_est_at": 5,
    "mapped_at": 5, "certificate_not_after": 5, "sunset_at": 5, "client": 7, "est_client": 4, "user_agent": 5,
    "cipher": 4, "digest": 4, "challenge": 4, "weak": 5, "next_action": 8, "actions": 12,
}  # fmt: skip


def trend_svg(trend: Sequence[TrendPoint], width: int = 720, height: int = 260) -> str:
    """An inline SVG stacked-area chart of the trend: legacy at the bottom, mapped on it, migrated on top
    (the top edge is the SCEP fleet), with a mark per day and series at its band's top edge."""
    left, right, top, bottom = 56, 110, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    series_names = tuple(SERIES_COLOURS)  # bottom to top
    peak = max([1, *(p.legacy + p.mapped + p.migrated for p in trend)])
    step = plot_w / (len(trend) - 1) if len(trend) > 1 else 0.0

    def x(i: int) -> float:
        return round(left + (i * step if len(trend) > 1 else plot_w / 2), 1)

    def y(value: int) -> float:
        return round(top + plot_h - value / peak * plot_h, 1)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="trend-chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="devices per state per day, stacked" '
        f'data-peak="{peak}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h + 4}" text-anchor="end">0</text>',
    ]
    if trend:
        parts.append(f'<text x="{left}" y="{height - 12}">{trend[0].day.isoformat()}</text>')
        parts.append(
            f'<text x="{left + plot_w}" y="{height - 12}" text-anchor="end">{trend[-1].day.isoformat()}</text>'
        )
    lower = [0] * len(trend)
    for index, series in enumerate(series_names):
        colour = SERIES_COLOURS[series]
        values = [int(getattr(p, series)) for p in trend]
        upper = [low + value for low, value in zip(lower, values, strict=True)]
        edge = [f"{x(i)},{y(v)}" for i, v in enumerate(upper)]
        base = [f"{x(i)},{y(v)}" for i, v in reversed(list(enumerate(lower)))]
        parts.append(
            f'<polygon class="band" data-series="{series}" fill="{colour}" fill-opacity="0.8" stroke="{colour}" '
            f'points="{" ".join(edge + base)}"/>'
        )
        parts += [
            f'<circle data-series="{series}" data-day="{p.day.isoformat()}" data-value="{v}" data-top="{t}" '
            f'cx="{x(i)}" cy="{y(t)}" r="2" fill="{colour}"><title>{p.day.isoformat()} {series}: {v}</title></circle>'
            for i, (p, v, t) in enumerate(zip(trend, values, upper, strict=True))
        ]
        legend_y = top + 14 + (len(series_names) - 1 - index) * 18  # the legend stacks as the bands do
        parts.append(f'<rect x="{width - right + 12}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{width - right + 28}" y="{legend_y}">{series}</text>')
        lower = upper
    parts.append("</svg>")
    return "\n".join(parts)


def progress_html(groups: Sequence[GroupSummary], now: dt.datetime) -> str:
    """One bar per group: its share migrated, and the days left to its SCEP sunset."""
    rows = []
    for group in groups:
        percent = group.totals.percent_migrated
        done = percent or 0.0
        if group.sunset_at is None:
            sunset = "no sunset"
        elif group.sunset_at <= now:
            sunset = f"sunset passed ({group.sunset_at.date().isoformat()})"
        else:
            sunset = f"sunset in {-(-(group.sunset_at - now) // dt.timedelta(days=1))} d ({group.sunset_at.date()})"
        share = "no SCEP device" if percent is None else f"{percent:.1f} % migrated"
        name = html.escape(group.name if group.name is not None else "(no group)")
        rows.append(
            f'<li data-group="{html.escape(group.name or "")}" data-percent="{done}"><span class="name">{name}</span>'
            f'<svg width="160" height="12" role="img" aria-label="{share}"><rect width="160" height="12" '
            f'fill="#e5e5e5"/><rect class="done" width="{round(1.6 * done, 1)}" height="12" '
            f'fill="{SERIES_COLOURS["migrated"]}"/></svg><span>{share}</span><span>{sunset}</span></li>'
        )
    return f'<ul class="progress" id="progress-bars">{"".join(rows)}</ul>' if rows else ""


def _html_table(name: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for column, value in zip(header, row, strict=True):
            classes = " ".join(
                c for c in ("num" if column in _NUMERIC else "", "weak" if column == "weak" and value else "") if c
            )
            attribute = f' class="{classes}"' if classes else ""
            cells.append(f'<td data-column="{html.escape(column)}"{attribute}>{html.escape(value)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    if name in ("silent", "to_move"):  # fixed widths that fit a 1366-px screen; long values wrap
        columns = "".join(f'<col style="width:{_DEVICE_WIDTHS.get(h, 4)}%">' for h in header)
        return (
            f'<table id="{name}" class="devices"><colgroup>{columns}</colgroup><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
        )
    return f'<table id="{name}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_TITLES = {
    "report": "Report",
    "totals": "Devices per state",
    "groups": "Groups and their SCEP sunset",
    "silent": "Mapped but silent on EST",
    "to_move": "Devices still to move",
    "trend": "Trend per day",
}


def render_html(report: MigrationReport) -> str:
    """One self-contained page: inline style, inline SVG chart, no script and nothing fetched."""
    scope = f"group {report.group}" if report.group else "the whole fleet"
    percent = report.totals.percent_migrated
    lead = f"{_percent(percent)} % migrated" if percent is not None else "no active device"
    sections = {}
    for name, header, rows in _sections(report, DEVICE_COLUMNS):
        table = _html_table(name, header, rows) if rows else f'<p id="{name}">(none)</p>'
        if name == "trend":  # the chart, with its numbers in a box that scrolls on screen and prints whole
            table = f'{trend_svg(report.trend)}<div class="numbers">{table}</div>'
        if name == "groups":
            table = progress_html(report.groups, report.generated_at) + table
        sections[name] = f'<section id="section-{name}"><h2>{_TITLES[name]}</h2>{table}</section>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>SCEP-to-EST migration report</title><style>{_STYLE}</style></head>\n<body>"
        f"<h1>SCEP-to-EST migration: {html.escape(lead)}</h1>"
        f'<p class="meta">{html.escape(scope)}, generated {html.escape(when(report.generated_at) or "")}</p>\n'
        + "\n".join(sections[name] for name in _HTML_ORDER)
        + "\n</body></html>\n"
    )


def render(report: MigrationReport, fmt: str, section: str | None = None) -> str:
    """The report in one of FORMATS. CSV holds one of SECTIONS (default CSV_DEFAULT_SECTION), a table
    every section or the one named; JSON and HTML always hold them all (ValueError for a section)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})")
    if section is not None and section not in SECTIONS:
        raise ValueError(f"unknown report section {section!r} (known: {', '.join(SECTIONS)})")
    if fmt == "csv":
        return render_csv(report, section or CSV_DEFAULT_SECTION)
    if fmt == "table":
        return render_table(report, section)
    if section is not None:
        raise ValueError(f"a {fmt} report holds every section; --section is for csv and table")
    return render_json(report) if fmt == "json" else render_html(report)
