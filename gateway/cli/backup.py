"""`gateway backup` and `gateway restore`: a consistent copy of a serving gateway, and bringing it back."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.backup import BackupError, Manifest, create_backup, postgres_commands
from gateway.cli.support import FILE, config_options, load_cli_config, refuse
from gateway.restore import RestoreResult, passphrase_note, restore_backup, verify_backup

DUMP_FILE = "gateway.pgdump"


@click.command("backup")
@config_options
@click.option("--out", "out", type=FILE, required=True, help="The archive to write (tar.gz, mode 0600).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
def backup(data_dir: Path, config_file: Path | None, out: Path, force: bool) -> None:
    """Copy the database, keys and config of a gateway, consistently, while it serves.

    \b
    SQLite: the database is in the archive (an online snapshot).
    PostgreSQL: keys and config only; back the database up with pg_dump (printed).
    """
    config = load_cli_config(data_dir, config_file)
    try:
        result = create_backup(config, out, force=force)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    manifest = result.manifest
    click.echo(f"backup written to {result.path} ({result.size} bytes, sha256 {result.sha256})")
    click.echo(f"files: {len(manifest.members)} ({_keys(manifest)})")
    click.echo(_database_line(manifest))
    if not manifest.database.included:
        dump, _restore = postgres_commands(config.database_url, DUMP_FILE)
        click.echo("the PostgreSQL database is not in the archive; back it up with:")
        click.echo(f"  {dump}")


@click.command("restore")
@click.argument("archive", type=FILE)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="The new data directory (absent or empty).",
)
@click.option("--database-url", help="PostgreSQL backups: the database the restored gateway uses.")
@click.option("--verify", is_flag=True, help="Only check the archive (manifest and every checksum); write nothing.")
def restore(archive: Path, data_dir: Path | None, database_url: str | None, verify: bool) -> None:
    """Bring a backup back into a new data directory (or, with --verify, only check it)."""
    try:
        if verify:
            manifest = verify_backup(archive)
            click.echo(f"{archive}: a complete backup of {manifest.source_data_dir}, made {manifest.created_at}")
            click.echo(f"files: {len(manifest.members)}, every checksum matches ({_keys(manifest)})")
            click.echo(_database_line(manifest))
            return
        if data_dir is None:
            raise refuse("--data-dir", "name the new data directory to restore into (or use --verify)")
        result = restore_backup(archive, data_dir, database_url=database_url)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    _report(result)


def _keys(manifest: Manifest) -> str:
    return "keys encrypted, passphrase not included" if manifest.keys_encrypted else "keys not encrypted"


def _database_line(manifest: Manifest) -> str:
    database = manifest.database
    count = "unknown" if database.certificates is None else str(database.certificates)
    revision = database.schema_revision or "unknown"
    where = "in the archive" if database.included else "NOT in the archive"
    return f"database: {database.kind} {database.source}, {where}; schema {revision}, {count} certificates"


def _report(result: RestoreResult) -> None:
    manifest = result.manifest
    click.echo(f"restored the backup of {manifest.source_data_dir} (made {manifest.created_at}) into {result.data_dir}")
    if manifest.database.included:
        state = "older than this version: run `gateway db upgrade` first" if result.upgrade_needed else "current"
        click.echo(f"database: SQLite, schema {result.schema_revision} ({state}), {result.certificates} certificates")
    else:
        click.echo(f"database: PostgreSQL, not in the archive ({result.certificates} certificates at backup time)")
        _dump, pg_restore = postgres_commands(result.database_url, DUMP_FILE)
        click.echo(f"  restore its dump with: {pg_restore}")
        click.echo(f"  then: gateway db upgrade --data-dir {result.data_dir}")
    click.echo(f"issuers: {', '.join(result.issuers) or 'none'}")
    for setting, value in sorted(result.rewritten.items()):
        click.echo(f"config: {setting} = {value!r}")
    note = passphrase_note(result)
    if note:
        click.echo(note)
    click.echo(f"start it: gateway serve --data-dir {result.data_dir}")
