"""`gateway migrate map`: give legacy devices an EST credential (DESIGN.md "Migration model").

Needs the database and the configuration only, never the CA's keys. The logic lives in
migration_tools.mapping; this command parses options, calls it and prints a summary. Bootstrap
passwords go to the --out file alone, never to the terminal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from gateway.cli.output import render, render_mapping
from gateway.cli.support import (
    actor,
    as_ca_error,
    check_group,
    config_options,
    database_storage,
    load_cli_config,
    one_line,
    refuse,
)
from migration_tools.mapping import (
    DEFAULT_EXPIRY,
    ExportFile,
    MapRequest,
    MapSummary,
    UnreadableExport,
    export_format,
    map_devices,
    read_export,
    unused_credentials,
)
from shared_ca.authority import utcnow
from shared_ca.storage.est_users import EstUsers
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import MAPPING_MODES

MAX_EXPIRES_DAYS = 365


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
    check_group(group)
    if out is None and mode == "bootstrap":
        raise refuse("--out", "bootstrap passwords are written only to a file: give --out FILE.csv or FILE.json")
    if out is not None:
        try:
            export_format(out)
        except ValueError as exc:
            raise refuse("--out", str(exc)) from None
        if not force and (out.exists() or out.is_symlink()):
            raise refuse("--out", f"{out} exists; give --force to replace it")
    config = load_cli_config(data_dir, config_file)
    if label is not None and label not in config.profiles:
        raise refuse("--label", f"no profile {label!r} (have: {', '.join(sorted(config.profiles))})")
    if label is not None and not config.profiles[label].served_over("est"):
        raise refuse("--label", f"profile {label!r} is not served over EST")
    request = MapRequest(
        mode=mode,
        est_url=config.est_url,
        actor=actor(),
        group=group,
        label=label,
        rotate=rotate,
        expires_in=dt.timedelta(days=expires_days),
    )
    with database_storage(config) as storage:
        devices = storage.devices
        if group is not None and devices.group(group) is None and not devices.devices(group=group, limit=1):
            raise refuse("--group", f"no device is in group {group!r}")
        if out is not None and force and (out.exists() or out.is_symlink()):
            _refuse_to_drop_credentials(out, storage.est_users)
        _run_map(storage, request, out, force)


def _refuse_to_drop_credentials(out: Path, users: EstUsers) -> None:
    """--force never replaces a file holding bootstrap passwords that can still enroll: they exist
    nowhere else (only their hashes are stored). Nor one it cannot read, which might hold some."""
    try:
        unused = unused_credentials(read_export(out), users, utcnow())
    except UnreadableExport as exc:
        raise refuse("--force", f"{out} is not an export file this command can read: {exc}; move it away") from None
    if unused:
        first = unused[0].device_id
        raise refuse(
            "--force",
            f"{out} holds {len(unused)} bootstrap credentials not used yet (the first for device {first!r}); "
            "their passwords exist nowhere else: push the file to the devices or move it away first",
        )


def _run_map(storage: Storage, request: MapRequest, out: Path | None, force: bool) -> None:
    with _export(out, force) as export:
        try:
            summary = map_devices(storage, request, utcnow(), export.write if export else _discard)
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
        raise refuse("--out", f"{out} exists; give --force to replace it") from None
    except OSError as exc:
        raise refuse("--out", f"cannot create {out}: {exc.strerror}") from None
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
