"""`gateway client scep|est`: the project's own protocol clients, to test a server (this one or another)."""

from __future__ import annotations

import click

from gateway.cli.client import est, scep


@click.group("client")
def client() -> None:
    """Protocol clients, to test a server: scep, est.

    They enroll against any SCEP or EST server, this gateway or another.
    """


client.add_command(scep.scep)
client.add_command(est.est)
