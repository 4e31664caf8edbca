"""`gateway db upgrade`: the database schema."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.support import config_options, load_cli_config
from shared_ca.storage.db import create_store_engine, current_revision, head_revision, migrate_to_head


@click.group("db")
def db() -> None:
    """The database schema: upgrade."""


@db.command("upgrade")
@config_options
def db_upgrade(data_dir: Path, config_file: Path | None) -> None:
    """Migrate the database to the schema this version needs."""
    cfg = load_cli_config(data_dir, config_file)
    engine = create_store_engine(cfg.database_url)
    try:
        before = current_revision(engine)
        migrate_to_head(engine)
    finally:
        engine.dispose()
    click.echo(f"database at {head_revision()} (was {before or 'empty'})")
