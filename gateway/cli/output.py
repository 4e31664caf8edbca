"""Printing results as a table, JSON or CSV (the CLI's three formats)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

import click

from gateway.cli.support import F

FORMATS = ("table", "json", "csv")


def format_option(func: F) -> F:
    """--format table|json|csv, table by default."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)(func)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """`rows` in `fmt`; tables and CSV show `columns` in order, JSON keeps every key."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2, default=str) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(row.get(c)) for c in columns])
        return buffer.getvalue()
    cells = [[_text(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def render_mapping(data: dict[str, Any], fmt: str) -> str:
    """One record: key/value lines for people, an object for JSON, two columns for CSV."""
    if fmt == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    if fmt == "csv":
        return render([{"field": k, "value": _text(v)} for k, v in data.items()], ["field", "value"], "csv")
    width = max(len(k) for k in data) if data else 0
    return "".join(f"{k.ljust(width)}  {_text(v)}\n" for k, v in data.items())
