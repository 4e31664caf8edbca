"""The migration report in one of its formats: a terminal table, CSV, JSON, or a self-contained HTML page.

Every format shows the same numbers, written from one set of rows (migration_tools.report_rows).
A CSV file holds one section as one table (a spreadsheet loads it as it is); the others hold them
all. JSON is written by migration_tools.report_json, the HTML page by migration_tools.report_html.

Device identities and User-Agent strings come from clients, so each format defuses them: HTML
escapes them, the table replaces control characters (no terminal escape sequences), and CSV
prefixes a cell that a spreadsheet would run as a formula with an apostrophe (OWASP's advice).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence

from migration_tools.report_html import render_html
from migration_tools.report_json import render_json
from migration_tools.report_model import MigrationReport
from migration_tools.report_rows import DEVICE_COLUMNS, SECTIONS, TABLE_DEVICE_COLUMNS, report_sections

FORMATS = ("table", "csv", "json", "html")
CSV_DEFAULT_SECTION = "to_move"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


# -- CSV ------------------------------------------------------------------------------------------------


def _csv_cell(value: str) -> str:
    if value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def render_csv(report: MigrationReport, section: str = CSV_DEFAULT_SECTION) -> str:
    """One section as one table (a header row, then its rows), so a spreadsheet loads the file as it is."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for name, header, rows in report_sections(report, DEVICE_COLUMNS):
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
    for name, header, rows in report_sections(report, TABLE_DEVICE_COLUMNS):
        if section in (None, name):
            lines += [f"== {name.replace('_', ' ')} ==", *(_table(header, rows) if rows else ["(none)"]), ""]
    return "\n".join(lines)


# -- any format ------------------------------------------------------------------------------------------


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
