"""`gateway migrate report`: how far the fleet has moved to EST and what to do about the rest.

Needs the database and the configuration only, never the CA's keys. It first retires the devices
whose certificate is revoked or long expired (`migration.retire_after_days`), so they are not
counted as still to move, then builds the report (migration_tools.report) and prints it
(migration_tools.render) as a table, CSV (one section per file: --section), JSON or a
self-contained HTML page.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from gateway.cli.support import config_options, echo_to, load_cli_config
from migration_tools.render import CSV_DEFAULT_SECTION, FORMATS, render
from migration_tools.report import DEFAULT_LIST_LIMIT, DEFAULT_TREND_DAYS, MAX_TREND_DAYS, ReportSettings, build_report
from migration_tools.report_rows import SECTIONS
from shared_ca.authority import utcnow
from shared_ca.storage.db import create_store_engine, require_schema_at_head
from shared_ca.storage.device_contacts import MAX_GROUP
from shared_ca.storage.repositories import Storage


@click.command("report")
@config_options
@click.option("--group", help="Only this device group.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option(
    "--section",
    type=click.Choice(SECTIONS),
    help=f"The one table a CSV file holds [default: {CSV_DEFAULT_SECTION}]; with table, only this section.",
)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write the report to FILE.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=DEFAULT_LIST_LIMIT,
    show_default=True,
    help="Devices listed in each list (still to move, silent); 0: every one.",
)
@click.option(
    "--trend-days",
    type=click.IntRange(1, MAX_TREND_DAYS),
    default=DEFAULT_TREND_DAYS,
    show_default=True,
    help="Days the trend covers, up to today.",
)
def migrate_report(
    data_dir: Path,
    config_file: Path | None,
    group: str | None,
    fmt: str,
    section: str | None,
    out: Path | None,
    limit: int,
    trend_days: int,
) -> None:
    """Report the migration: totals, devices still to move with their next action, sunsets, trend."""
    if group is not None and not 1 <= len(group) <= MAX_GROUP:
        raise click.BadParameter(f"a group name has 1-{MAX_GROUP} characters", param_hint="--group")
    if section is not None and fmt not in ("csv", "table"):
        raise click.BadParameter(
            f"a {fmt} report holds every section; use it with csv or table", param_hint="--section"
        )
    if out is not None and not out.parent.is_dir():
        raise click.BadParameter(f"no directory {str(out.parent)!r} to write into", param_hint="--out")
    config = load_cli_config(data_dir, config_file)
    settings = ReportSettings(
        silent_days=int(config["migration.silent_days"]), trend_days=trend_days, list_limit=limit or None
    )
    engine = create_store_engine(config.database_url)
    try:
        require_schema_at_head(engine)
        now = utcnow()
        storage = Storage.open(engine)
        retired = storage.devices.retire_stale(now, dt.timedelta(days=int(config["migration.retire_after_days"])))
        if retired:
            click.echo(f"retired {retired} device(s) whose certificate is revoked or long expired", err=True)
        built = build_report(storage.migration_report, now, group=group, settings=settings)
    finally:
        engine.dispose()
    try:
        echo_to(render(built, fmt, section), out)
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
    if out is not None:
        what = f"{fmt}, section {section or CSV_DEFAULT_SECTION}" if fmt == "csv" else fmt
        click.echo(f"report written to {out} ({what})", err=True)
    if len(built.to_move) < built.to_move_total:
        click.echo(
            f"listed {len(built.to_move)} of the {built.to_move_total} devices still to move; --limit 0 lists them all",
            err=True,
        )
