"""The migration report as one self-contained HTML page: inline style, an inline SVG trend chart,
no script and nothing fetched. Every value from a client is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence

from migration_tools.report_json import when
from migration_tools.report_model import GroupSummary, MigrationReport, TrendPoint
from migration_tools.report_rows import DEVICE_COLUMNS, TOTAL_FIELDS, percent_text, report_sections

SERIES_COLOURS = {"legacy": "#c0392b", "mapped": "#d68910", "migrated": "#1e8449"}

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
    lead = f"{percent_text(percent)} % migrated" if percent is not None else "no active device"
    sections = {}
    for name, header, rows in report_sections(report, DEVICE_COLUMNS):
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
