"""`gateway admin-token add|list|disable`: bearer tokens of the admin API.

Token management needs the database only, never the CA's keys.
"""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.output import format_option, render
from gateway.cli.support import actor, config_options, database_storage, hidden_alias, load_cli_config
from shared_ca.authority import utcnow
from shared_ca.storage.admin import check_token_name


@click.group("admin-token")
def admin_token() -> None:
    """Admin API bearer tokens: add, list, disable.

    A token opens the admin API (/admin/api/...) and the NDES-style admin page (/certsrv/mscep_admin/).
    """


@admin_token.command("add")
@config_options
@click.argument("name")
def admin_token_add(data_dir: Path, config_file: Path | None, name: str) -> None:
    """Create a token and print it once (only its hash is stored)."""
    try:
        check_token_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    with database_storage(load_cli_config(data_dir, config_file)) as storage:
        store = storage.admin_tokens
        created = store.create_admin_token(name, created_by=actor(), now=utcnow())
    click.echo(created.token)
    click.echo(f"admin token {name!r} created; it is shown only now", err=True)


admin_token.add_command(hidden_alias(admin_token_add, "new", "gateway admin-token add"))
admin_token.add_command(hidden_alias(admin_token_add, "create", "gateway admin-token add"))


@admin_token.command("list")
@config_options
@format_option
def admin_token_list(data_dir: Path, config_file: Path | None, fmt: str) -> None:
    """List the tokens (never the tokens themselves), oldest first."""
    with database_storage(load_cli_config(data_dir, config_file)) as storage:
        store = storage.admin_tokens
        records = store.list_admin_tokens()
    rows = [
        {
            "name": r.name,
            "status": "active" if r.active else "disabled",
            "scopes": list(r.scopes),
            "created_at": r.created_at.isoformat(timespec="seconds"),
            "created_by": r.created_by,
            "last_used_at": r.last_used_at.isoformat(timespec="seconds") if r.last_used_at else None,
            "disabled_at": r.disabled_at.isoformat(timespec="seconds") if r.disabled_at else None,
        }
        for r in records
    ]
    click.echo(render(rows, ["name", "status", "scopes", "created_at", "last_used_at"], fmt), nl=False)


@admin_token.command("disable")
@config_options
@click.argument("name")
def admin_token_disable(data_dir: Path, config_file: Path | None, name: str) -> None:
    """Disable a token for good (requests carrying it are refused from now on)."""
    with database_storage(load_cli_config(data_dir, config_file)) as storage:
        store = storage.admin_tokens
        record = store.disable_admin_token(name, actor=actor(), now=utcnow())
    assert record.disabled_at is not None
    click.echo(f"admin token {name!r} disabled at {record.disabled_at.isoformat(timespec='seconds')}")
