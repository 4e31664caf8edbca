"""`gateway config sample|show|check`: the configuration file."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.support import config_options, load_cli_config, open_cli_gateway
from gateway.config import render_config, sample_config
from shared_ca.kms import redact
from shared_ca.storage.db import redact_url


@click.group("config")
def config() -> None:
    """The configuration file: sample, show, check."""


@config.command("sample")
def config_sample() -> None:
    """Print a commented sample configuration with every key."""
    click.echo(sample_config(), nl=False)


@config.command("show")
@config_options
def config_show(data_dir: Path, config_file: Path | None) -> None:
    """Print the effective configuration (file, environment and defaults merged)."""
    cfg = load_cli_config(data_dir, config_file)
    profiles = {}
    for name, profile in cfg.profiles.items():
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(profile).items() if k != "name"}
        for secret in ("scep_challenge", "scep_webhook_secret"):
            if values.get(secret):
                values[secret] = "********"
        profiles[name] = values
    settings = dict(cfg.values)
    if settings["database_url"]:
        settings["database_url"] = redact_url(str(settings["database_url"]))
    settings["keys.kms"] = redact(str(settings["keys.kms"]))  # a pin-value= in the token URI
    click.echo(render_config(settings, profiles, commented=False), nl=False)


@config.command("check")
@config_options
def config_check(data_dir: Path, config_file: Path | None) -> None:
    """Validate the configuration and load the keys and database, as `serve` would."""
    gw = open_cli_gateway(data_dir, config_file)
    for notice in gw.config.deprecations:
        click.echo(f"warning: {notice}", err=True)
    click.echo(f"ok: {gw.config.source or 'defaults'}; CA {gw.authority.certificate.subject.rfc4514_string()}")
