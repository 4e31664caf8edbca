"""`gateway challenge add|list|remove`: one-time SCEP challenge passwords, bound to a device and a profile."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from gateway.cli.output import format_option, render
from gateway.cli.support import actor, config_options, database_storage, hidden_alias, load_cli_config, open_cli_gateway
from scep.challenges import new_one_time_challenge
from shared_ca.authority import utcnow
from shared_ca.storage.enrollment import ChallengeRecord


@click.group("challenge")
def challenge() -> None:
    """One-time SCEP challenge passwords: add, list, remove.

    A challenge is bound to one device and one profile, and only its hash is stored.
    """


@challenge.command("add")
@config_options
@click.option("--device", required=True, help="Device identity the challenge is bound to (the CSR's CN).")
@click.option("--profile", "profile_name", help="Profile (default: the configured default_profile).")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: 30m, 1h, 7d ...")
@click.option("--uses", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--subject", "expected_subject", help="Only a CSR with exactly this subject (RFC 4514) may use it.")
def challenge_add(
    data_dir: Path,
    config_file: Path | None,
    device: str,
    profile_name: str | None,
    ttl: str,
    uses: int,
    expected_subject: str | None,
) -> None:
    """Print a new one-time SCEP challenge password (stored hashed)."""
    gw = open_cli_gateway(data_dir, config_file)
    if profile_name is not None and profile_name not in gw.config.profiles:
        raise click.BadParameter(f"no profile {profile_name!r}", param_hint="--profile")
    profile = gw.config.profiles[profile_name] if profile_name else gw.config.default_profile
    if not profile.served_over("scep"):
        raise click.BadParameter(
            f"profile {profile.name!r} is not served over SCEP (its protocols: {list(profile.protocols)})",
            param_hint="--profile",
        )
    lifetime = _duration(ttl)
    secret = new_one_time_challenge(
        gw.storage.enrollments,
        device,
        profile.name,
        lifetime,
        uses,
        expected_subject,
        created_by=actor(),
        now=utcnow(),
    )
    click.echo(secret)


challenge.add_command(hidden_alias(challenge_add, "new", "gateway challenge add"))


def _status(record: ChallengeRecord, now: dt.datetime) -> str:
    if record.uses_left <= 0:
        return "spent"
    return "expired" if record.expires_at <= now else "usable"


@challenge.command("list")
@config_options
@click.option("--all", "include_unusable", is_flag=True, help="Also the spent and expired ones still kept.")
@format_option
def challenge_list(data_dir: Path, config_file: Path | None, include_unusable: bool, fmt: str) -> None:
    """List the one-time challenges that can still be used (never their secrets)."""
    now = utcnow()
    with database_storage(load_cli_config(data_dir, config_file)) as storage:
        enrollments = storage.enrollments
        records = enrollments.list_challenges(now, include_unusable=include_unusable)
    rows = [
        {
            "id": r.id,
            "device": r.device_id,
            "profile": r.profile,
            "subject": r.expected_subject,
            "status": _status(r, now),
            "uses_left": r.uses_left,
            "expires_at": r.expires_at.isoformat(timespec="seconds"),
            "created_at": r.created_at.isoformat(timespec="seconds"),
            "created_by": r.created_by,
        }
        for r in records
    ]
    columns = ["id", "device", "profile", "status", "uses_left", "expires_at", "created_by"]
    click.echo(render(rows, columns, fmt), nl=False)


@challenge.command("remove")
@config_options
@click.argument("challenge_id", metavar="ID", type=click.IntRange(min=1))
def challenge_remove(data_dir: Path, config_file: Path | None, challenge_id: int) -> None:
    """Remove a one-time challenge, used or not: its secret is refused from now on."""
    with database_storage(load_cli_config(data_dir, config_file)) as storage:
        enrollments = storage.enrollments
        removed = enrollments.remove_challenge(challenge_id, actor=actor(), now=utcnow())
    click.echo(f"challenge {removed.id} (device {removed.device_id or 'any'}, profile {removed.profile}) removed")


def _duration(text: str) -> dt.timedelta:
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    value = text.strip()
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit() or int(value[:-1]) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 1h or 7d", param_hint="--ttl")
    return dt.timedelta(**{units[value[-1]]: int(value[:-1])})
