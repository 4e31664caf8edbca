"""`gateway migrate sunset`: close SCEP for a device group from a date on (DESIGN.md "Migration model").

Needs the database and the configuration only, never the CA's keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gateway.cli.output import render_mapping
from gateway.cli.support import (
    actor,
    check_group,
    config_options,
    database_storage,
    load_cli_config,
    parse_time,
    refuse,
)
from migration_tools.mapping import group_exposure
from shared_ca.authority import utcnow


@click.command("sunset")
@config_options
@click.option("--group", required=True, help="The device group.")
@click.option("--date", "date_text", help="SCEP is refused from then on: YYYY-MM-DD (midnight UTC) or ISO 8601.")
@click.option("--clear", is_flag=True, help="Remove the group's sunset: SCEP stays open.")
@click.option(
    "--allow-downgrade/--no-allow-downgrade",
    default=None,
    help="Whether devices that moved to EST may enroll over SCEP again [default: unchanged; new group: no].",
)
def migrate_sunset(
    data_dir: Path,
    config_file: Path | None,
    group: str,
    date_text: str | None,
    clear: bool,
    allow_downgrade: bool | None,
) -> None:
    """Set (or --clear) the date from which a group's devices are refused SCEP and told to use EST."""
    check_group(group)
    if (date_text is not None) == clear:
        raise refuse("--date/--clear", "give exactly one of them")
    sunset_at = parse_time(date_text, "--date") if date_text is not None else None
    config = load_cli_config(data_dir, config_file)
    now = utcnow()
    with database_storage(config) as storage:
        devices = storage.devices
        existing = devices.group(group)
        states = group_exposure(devices, group)
        if existing is None and not states:
            raise refuse("--group", f"no device is in group {group!r}")
        downgrade = allow_downgrade if allow_downgrade is not None else bool(existing and existing.allow_downgrade)
        policy = devices.set_group_policy(group, sunset_at=sunset_at, allow_downgrade=downgrade, actor=actor(), now=now)
    facts: dict[str, Any] = {"group": policy.name}
    if policy.sunset_at is None:
        facts["sunset"] = "none: SCEP stays open"
    else:
        when = "in effect now" if policy.sunset_at <= now else f"in {(policy.sunset_at - now).days} days"
        facts["sunset"] = f"{policy.sunset_at.isoformat()} ({when})"
        waiting = states["legacy"] + states["mapped"]
        facts["cut off"] = f"{waiting} devices not on EST yet (legacy {states['legacy']}, mapped {states['mapped']})"
        facts["told"] = f"enroll over EST at {config.est_url}"
    on_est = f"{states['migrated']} migrated and {states['native']} native devices"
    facts["downgrade"] = (
        f"allowed: {on_est} may still use SCEP" if policy.allow_downgrade else f"refused: {on_est} may not use SCEP"
    )
    click.echo(render_mapping(facts, "table"), nl=False)
