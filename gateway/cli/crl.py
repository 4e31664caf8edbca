"""`gateway crl publish`: certificate revocation lists."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.support import actor, config_options, open_cli_gateway


@click.group("crl")
def crl() -> None:
    """Certificate revocation lists: publish."""


@crl.command("publish")
@config_options
def crl_publish(data_dir: Path, config_file: Path | None) -> None:
    """Sign and publish a new CRL now (and one for each previous CA a rollover replaced)."""
    gw = open_cli_gateway(data_dir, config_file)
    record = gw.crl.publish(actor=actor())
    click.echo(f"CRL number {record.number} published; next update {record.next_update:%Y-%m-%d %H:%M:%SZ}")
    for publisher in gw.previous_crls:
        earlier = publisher.publish(actor=actor())
        click.echo(f"CRL number {earlier.number} of previous CA {publisher.authority.name} published")
