"""`gateway challenge add`: one-time SCEP challenge passwords, bound to a device and a profile."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from gateway.cli.support import actor, config_options, hidden_alias, open_cli_gateway
from scep.challenges import new_one_time_challenge
from shared_ca.authority import utcnow


@click.group("challenge")
def challenge() -> None:
    """One-time SCEP challenge passwords: add.

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


def _duration(text: str) -> dt.timedelta:
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    value = text.strip()
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit() or int(value[:-1]) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 1h or 7d", param_hint="--ttl")
    return dt.timedelta(**{units[value[-1]]: int(value[:-1])})
