"""`gateway migrate map` and `gateway migrate sunset`: give legacy devices an EST credential, and
close SCEP for a device group from a date on (DESIGN.md "Migration model").

Both need the database and the configuration only, never the CA's keys. The logic lives in
migration_tools.mapping; these commands parse options, call it and print a summary. Bootstrap
passwords go to the --out file alone, never to the terminal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from gateway.cli_support import actor, as_ca_error, config_options, load_cli_config, one_line
from gateway.config import GatewayConfig
from gateway.output import render, render_mapping
from migration_tools.mapping import (
    DEFAULT_EXPIRY,
    ExportFile,
    MapRequest,
    MapSummary,
    UnreadableExport,
    export_format,
    group_exposure,
    map_devices,
    read_export,
    unused_credentials,
)
from shared_ca.authority import utcnow
from shared_ca.storage.db import create_store_engine, require_schema_at_head
from shared_ca.storage.device_contacts import MAX_GROUP
from shared_ca.storage.devices import DeviceStore
from shared_ca.storage.est_users import EstUserStore
from shared_ca.storage.schema import MAPPING_MODES

MAX_EXPIRES_DAYS = 365


def _refuse(option: str, message: str) -> click.ClickException:
    """A one-line refusal naming the option (exit status 1)."""
    return click.ClickException(f"{option}: {message}")


@contextlib.contextmanager
def _stores(config: GatewayConfig) -> Iterator[tuple[DeviceStore, EstUserStore]]:
    """The device and EST user stores of the configured database (no key material needed)."""
    engine = create_store_engine(config.database_url)
    try:
        require_schema_at_head(engine)
        yield DeviceStore(engine), EstUserStore(engine)
    finally:
        engine.dispose()


def _check_group(group: str | None) -> None:
    if group is not None and not 1 <= len(group) <= MAX_GROUP:
        raise _refuse("--group", f"a group name has 1-{MAX_GROUP} characters")


# -- map --------------------------------------------------------------------------------------------


@click.command("map")
@config_options
@click.option("--group", help="Only devices of this group [default: every group].")
@click.option(
    "--mode",
    type=click.Choice(MAPPING_MODES),
    default="certificate",
    show_default=True,
    help="certificate: the current SCEP certificate authenticates EST simplereenroll; "
    "bootstrap: a one-time EST username and password for simpleenroll.",
)
@click.option("--label", help="EST label (a profile name) the devices enroll under [default: the default label].")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Export file for the MDM, FILE.csv or FILE.json (created 0600; required with --mode bootstrap).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing --out file (refused while it holds bootstrap credentials not used yet).",
)
@click.option("--rotate", is_flag=True, help="Also give devices mapped before a new credential (old ones disabled).")
@click.option(
    "--expires-days",
    type=click.IntRange(1, MAX_EXPIRES_DAYS),
    default=DEFAULT_EXPIRY.days,
    show_default=True,
    help="Days a bootstrap credential stays valid.",
)
def migrate_map(
    data_dir: Path,
    config_file: Path | None,
    group: str | None,
    mode: str,
    label: str | None,
    out: Path | None,
    force: bool,
    rotate: bool,
    expires_days: int,
) -> None:
    """Give every legacy device an EST credential and write the file an MDM pushes to them.

    Devices mapped before are left alone unless --rotate. Bootstrap passwords appear once, in the
    --out file, and are stored only as hashes.
    """
    _check_group(group)
    if out is None and mode == "bootstrap":
        raise _refuse("--out", "bootstrap passwords are written only to a file: give --out FILE.csv or FILE.json")
    if out is not None:
        try:
            export_format(out)
        except ValueError as exc:
            raise _refuse("--out", str(exc)) from None
        if not force and (out.exists() or out.is_symlink()):
            raise _refuse("--out", f"{out} exists; give --force to replace it")
    config = load_cli_config(data_dir, config_file)
    if label is not None and label not in config.profiles:
        raise _refuse("--label", f"no profile {label!r} (have: {', '.join(sorted(config.profiles))})")
    if label is not None and not config.profiles[label].served_over("est"):
        raise _refuse("--label", f"profile {label!r} is not served over EST")
    request = MapRequest(
        mode=mode,
        est_url=config.est_url,
        actor=actor(),
        group=group,
        label=label,
        rotate=rotate,
        expires_in=dt.timedelta(days=expires_days),
    )
    with _stores(config) as (devices, users):
        if group is not None and devices.group(group) is None and not devices.devices(group=group, limit=1):
            raise _refuse("--group", f"no device is in group {group!r}")
        if out is not None and force and (out.exists() or out.is_symlink()):
            _refuse_to_drop_credentials(out, users)
        _run_map(devices, users, request, out, force)


def _refuse_to_drop_credentials(out: Path, users: EstUserStore) -> None:
    """--force never replaces a file holding bootstrap passwords that can still enroll: they exist
    nowhere else (only their hashes are stored). Nor one it cannot read, which might hold some."""
    try:
        unused = unused_credentials(read_export(out), users, utcnow())
    except UnreadableExport as exc:
        raise _refuse("--force", f"{out} is not an export file this command can read: {exc}; move it away") from None
    if unused:
        first = unused[0].device_id
        raise _refuse(
            "--force",
            f"{out} holds {len(unused)} bootstrap credentials not used yet (the first for device {first!r}); "
            "their passwords exist nowhere else: push the file to the devices or move it away first",
        )


def _run_map(devices: DeviceStore, users: EstUserStore, request: MapRequest, out: Path | None, force: bool) -> None:
    with _export(out, force) as export:
        try:
            summary = map_devices(devices, users, request, utcnow(), export.write if export else _discard)
        except Exception as exc:  # a CAError, or a database error no store translated
            failure = as_ca_error(exc)
            if failure is None:
                raise
            done = f"; {export.rows} devices were mapped before it, their credentials are in {out}" if export else ""
            raise click.ClickException(f"{one_line(failure)}{done}") from None
    click.echo(_map_report(request, summary, out, export.rows if export else 0), nl=False)


@contextlib.contextmanager
def _export(out: Path | None, force: bool) -> Iterator[ExportFile | None]:
    if out is None:
        yield None
        return
    try:
        export = ExportFile(out, replace=force)
    except FileExistsError:
        raise _refuse("--out", f"{out} exists; give --force to replace it") from None
    except OSError as exc:
        raise _refuse("--out", f"cannot create {out}: {exc.strerror}") from None
    with export:
        yield export


def _discard(_row: Any) -> None:
    """Certificate mode without --out: the mapping is recorded, no file is written."""


def _map_report(request: MapRequest, summary: MapSummary, out: Path | None, rows: int) -> str:
    where = f" under label {request.label!r}" if request.label else ""
    facts: dict[str, Any] = {
        "mode": request.mode,
        "est_url": request.device_est_url,
        "group": request.group or "(all)",
        "mapped": len(summary.mapped),
        "rotated": len(summary.rotated),
        "skipped": len(summary.skipped),
    }
    if summary.already_mapped:
        facts["left alone"] = f"{summary.already_mapped} mapped before (--rotate gives them new credentials)"
    if summary.unchanged:
        facts["unchanged"] = f"{summary.unchanged} certificate-mapped: their certificate stays the credential"
    if summary.disabled_users:
        facts["disabled"] = f"{summary.disabled_users} previous bootstrap users"
    if out is not None:
        secrets_note = "; it holds one-time passwords: push it, then delete it" if request.mode == "bootstrap" else ""
        facts["file"] = f"{out} ({rows} rows, mode 0600{secrets_note})"
    text = render_mapping(facts, "table")
    if request.mode == "bootstrap" and rows:
        expiry = request.expires_in.days
        text += f"\nbootstrap credentials enroll once{where}, within {expiry} days\n"
    if summary.skipped:
        skipped = [{"device": s.device_id, "reason": s.reason} for s in summary.skipped]
        text += "\n" + render(skipped, ["device", "reason"], "table")
    return text


# -- sunset -----------------------------------------------------------------------------------------


def _parse_sunset(text: str) -> dt.datetime:
    """YYYY-MM-DD (midnight UTC) or an ISO 8601 date and time (UTC unless it names an offset)."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise _refuse("--date", f"{text!r} is not a date (YYYY-MM-DD) or ISO 8601 date and time") from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


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
    _check_group(group)
    if (date_text is not None) == clear:
        raise _refuse("--date/--clear", "give exactly one of them")
    sunset_at = _parse_sunset(date_text) if date_text is not None else None
    config = load_cli_config(data_dir, config_file)
    now = utcnow()
    with _stores(config) as (devices, _users):
        existing = devices.group(group)
        states = group_exposure(devices, group)
        if existing is None and not states:
            raise _refuse("--group", f"no device is in group {group!r}")
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
