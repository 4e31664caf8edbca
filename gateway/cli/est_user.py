"""`gateway est-user add|list|disable`: the HTTP Basic users of EST enrollment.

User management needs the database and the profile names only, never the CA's keys.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import click

from gateway.cli.output import format_option, render
from gateway.cli.support import actor, config_options, database_storage, load_cli_config, parse_time, refuse
from shared_ca.authority import utcnow
from shared_ca.storage.est_users import (
    EstUserRecord,
    check_est_user_name,
    hash_generated_secret,
    hash_password,
    new_generated_secret,
)

MIN_PASSWORD = 8
MAX_USES = 1_000_000


def _read_password() -> str:
    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise refuse("--password-stdin", "no password on standard input (an empty line)")
    if len(password) < MIN_PASSWORD:
        raise refuse("--password-stdin", f"the password must have at least {MIN_PASSWORD} characters")
    return password


def _parse_uses(text: str | None) -> int | None:
    if text is None:
        return None
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_USES:
        raise refuse("--uses", f"{text!r} is not a number of uses between 1 and {MAX_USES}")
    return int(value)


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _row(user: EstUserRecord, now: dt.datetime) -> dict[str, Any]:
    return {
        "name": user.name,
        "kind": user.kind,
        "status": user.status(now),
        "labels": ",".join(user.labels) or None,
        "device": user.device_identity,
        "uses_left": user.uses_left,
        "expires_at": _time(user.expires_at),
        "last_used_at": _time(user.last_used_at),
        "created_at": _time(user.created_at),
        "created_by": user.created_by,
        "disabled_at": _time(user.disabled_at),
    }


@click.group("est-user")
def est_user() -> None:
    """EST enrollment users (HTTP Basic): add, list, disable."""


@est_user.command("add")
@config_options
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password (8 characters or more) from one stdin line.")
@click.option("--generate", is_flag=True, help="Generate a 192-bit secret, print it once, store its hash.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="An EST label (a profile name) it may use; repeat for several [default: the default label only].",
)
@click.option("--uses", help="Number of enrollments allowed [default: unlimited].")
@click.option("--expires", help="Refused from this time on: YYYY-MM-DD (midnight UTC) or ISO 8601 date and time.")
@click.option("--device", help="Device identity this credential belongs to (for the migration report).")
def est_user_add(
    data_dir: Path,
    config_file: Path | None,
    name: str,
    password_stdin: bool,
    generate: bool,
    labels: tuple[str, ...],
    uses: str | None,
    expires: str | None,
    device: str | None,
) -> None:
    """Add a user with a password read from stdin, or with a generated secret printed once."""
    try:
        check_est_user_name(name)
    except ValueError as exc:
        raise refuse("NAME", str(exc)) from None
    if password_stdin == generate:
        raise refuse("--password-stdin/--generate", "give exactly one of them")
    now = utcnow()
    uses_left = _parse_uses(uses)
    expires_at = parse_time(expires, "--expires", now) if expires is not None else None
    if device is not None and not 1 <= len(device) <= 255:
        raise refuse("--device", "a device identity has 1-255 characters")
    config = load_cli_config(data_dir, config_file)
    for label in labels:
        if label not in config.profiles:
            raise refuse("--label", f"no profile {label!r} (have: {', '.join(sorted(config.profiles))})")
        if not config.profiles[label].served_over("est"):
            raise refuse(
                "--label",
                f"profile {label!r} is not served over EST (its protocols: {list(config.profiles[label].protocols)})",
            )
    secret = new_generated_secret() if generate else _read_password()
    secret_hash = hash_generated_secret(secret) if generate else hash_password(secret)
    with database_storage(config) as storage:
        store = storage.est_users
        store.add_est_user(
            name,
            secret_hash,
            kind="bootstrap" if generate else "password",
            created_by=actor(),
            now=now,
            labels=labels,
            device_identity=device,
            uses_left=uses_left,
            expires_at=expires_at,
        )
    if generate:
        click.echo(secret)
        click.echo(f"EST user {name!r} added; its secret is shown only now", err=True)
    else:
        click.echo(f"EST user {name!r} added")


@est_user.command("list")
@config_options
@format_option
def est_user_list(data_dir: Path, config_file: Path | None, fmt: str) -> None:
    """List the users (never their secrets or hashes), oldest first."""
    with database_storage(load_cli_config(data_dir, config_file)) as storage:
        store = storage.est_users
        users = store.list_est_users()
    now = utcnow()
    rows = [_row(u, now) for u in users]
    columns = ["name", "kind", "status", "labels", "uses_left", "expires_at", "last_used_at"]
    if fmt == "csv" and rows:
        columns = list(rows[0])
    click.echo(render(rows, columns, fmt), nl=False)


@est_user.command("disable")
@config_options
@click.argument("name")
def est_user_disable(data_dir: Path, config_file: Path | None, name: str) -> None:
    """Disable a user for good (its requests are refused from now on)."""
    with database_storage(load_cli_config(data_dir, config_file)) as storage:
        store = storage.est_users
        record = store.disable_est_user(name, actor=actor(), now=utcnow())
    click.echo(f"EST user {name!r} disabled at {_time(record.disabled_at)}")
