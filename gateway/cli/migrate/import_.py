"""`gateway migrate import`: bring a legacy SCEP CA's inventory in, or an MDM export's device data
(DESIGN.md "Migration model").

The legacy CA becomes a trusted issuer until `--trust-until`; its certificates, with the status it
recorded, and a device for each are stored. The work is in migration_tools (importer.py,
device_export.py); this command checks its arguments, shows progress on a terminal, prints every
skipped line on stderr as it is found and ends with a summary. It needs the configuration and the
database, never the CA's keys.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from gateway.audit_trail import open_store
from gateway.cli.output import format_option, render, render_mapping
from gateway.cli.support import actor, check_group, config_options, load_cli_config, parse_time, refuse
from migration_tools.device_export import import_device_export, read_device_export
from migration_tools.importer import ImportOptions, ImportSummary, Progress, import_inventory
from migration_tools.inventory import KINDS, InventoryError, Problem, open_inventory
from shared_ca.authority import utcnow
from shared_ca.storage.db import require_schema_at_head
from shared_ca.storage.repositories import Storage

TRUST_HINT = (
    "a running `gateway serve` follows the change within seconds, no restart: its TLS listener accepts the "
    "client certificates of a newly trusted issuer, and every request checks the issuer's window"
)


def _check_arguments(kind: str, path: Path, **options: object) -> None:
    if not path.exists():
        raise refuse("PATH", f"{path}: no such file or directory")
    allowed = {"openssl-ca": {"ca_cert", "certs_dir", "trust_until"}, "csv": set()}.get(kind, {"trust_until"})
    for name, value in options.items():
        if value is not None and name not in allowed:
            raise click.UsageError(f"--{name.replace('_', '-')} does not apply to --from {kind}")


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Progress | None]:
    """A progress bar on a terminal; nothing when stdout is a file or a pipe."""
    if not sys.stdout.isatty() or total == 0:
        yield None
        return
    with click.progressbar(length=total, label="importing", file=sys.stdout) as bar:
        yield bar.update


def _report(problem: Problem) -> None:
    click.echo(f"skipped {problem}", err=True)


def _result(summary: ImportSummary) -> dict[str, Any]:
    return {
        "kind": summary.kind,
        "dry_run": summary.dry_run,
        "read": summary.read,
        "imported": summary.imported,
        "already_present": summary.already_present,
        "skipped": dict(summary.skipped),
        "devices_added": summary.devices_added,
        "devices_already_present": summary.devices_present,
        "issuers": [
            {
                "name": i.name,
                "subject": i.subject,
                "trust_until": i.trust_until.isoformat() if i.trust_until else None,
                "action": i.action,
            }
            for i in summary.issuers
        ],
        "issuers_changed": summary.issuers_changed,
        "warnings": summary.warnings,
    }


@click.command("import")
@config_options
@click.option("--from", "kind", type=click.Choice(KINDS), required=True, help="What PATH is.")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--group", help="Group of the devices the import creates (csv: of rows naming none).")
@click.option(
    "--trust-until",
    help="End of the legacy CA's migration window, YYYY-MM-DD (midnight UTC) or ISO 8601; "
    "required the first time a CA is imported, moves the window when given again.",
)
@click.option(
    "--ca-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="openssl-ca: the CA certificate [default: PATH/cacert.pem].",
)
@click.option(
    "--certs-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="openssl-ca: the issued certificates [default: PATH/newcerts].",
)
@click.option("--dry-run", is_flag=True, help="Read and match everything, write nothing.")
@format_option
def migrate_import(
    data_dir: Path,
    config_file: Path | None,
    kind: str,
    path: Path,
    group: str | None,
    trust_until: str | None,
    ca_cert: Path | None,
    certs_dir: Path | None,
    dry_run: bool,
    fmt: str,
) -> None:
    """Import a legacy inventory: a micromdm depot, an OpenSSL CA, PEM certificates, or an MDM CSV export.

    \b
    micromdm-depot  PATH is the depot directory (ca.pem, index.txt, one PEM per certificate)
    openssl-ca      PATH is the CA directory (index.txt, cacert.pem, newcerts/) or its index file
    pem             PATH is a PEM bundle or a directory of .pem/.crt/.cer/.der files
    csv             PATH is an MDM export: device_id, serial or sha256, group, owner, tags

    Running it again adds nothing. Skipped lines are printed on stderr with their line number.
    """
    now = utcnow()
    _check_arguments(kind, path, trust_until=trust_until, ca_cert=ca_cert, certs_dir=certs_dir)
    check_group(group)
    config = load_cli_config(data_dir, config_file)
    options = ImportOptions(
        kind=kind,
        identity=config.identity_rule,
        actor=actor(),
        group=group,
        trust_until=parse_time(trust_until, "--trust-until", now) if trust_until is not None else None,
        dry_run=dry_run,
    )
    try:
        if kind == "csv":
            rows = read_device_export(path)
        else:
            inventory = open_inventory(kind, path, ca_cert=ca_cert, certs_dir=certs_dir)
    except InventoryError as exc:
        raise click.ClickException(str(exc)) from None
    engine = open_store(config).engine
    click.get_current_context().call_on_close(engine.dispose)
    require_schema_at_head(engine)
    storage = Storage.open(engine)
    try:
        if kind == "csv":
            with _progress(len(rows)) as progress:
                summary = import_device_export(storage, rows, options, now, progress=progress, report=_report)
        else:
            with _progress(inventory.size) as progress:
                summary = import_inventory(storage, inventory, options, now, progress=progress, report=_report)
    except InventoryError as exc:
        raise click.ClickException(str(exc)) from None
    _print(summary, fmt)


_DRY_RUN_ACTIONS = {"registered": "would be registered", "trust window moved": "trust window would move"}


def _print(summary: ImportSummary, fmt: str) -> None:
    for issuer in summary.issuers:
        until = f"{issuer.trust_until:%Y-%m-%d %H:%M} UTC" if issuer.trust_until else "never"
        action = _DRY_RUN_ACTIONS.get(issuer.action, issuer.action) if summary.dry_run else issuer.action
        click.echo(f"legacy issuer {issuer.name} ({issuer.subject}) {action}: trusted until {until}", err=True)
    if fmt in ("table", "csv"):
        click.echo(render(summary.rows(), ["result", "count"], fmt), nl=False)
    else:
        click.echo(render_mapping(_result(summary), "json"), nl=False)
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    if summary.dry_run:
        click.echo("dry run: nothing written", err=True)
    if summary.issuers_changed:
        click.echo(TRUST_HINT, err=True)
