"""`gateway migrate`: bring a legacy SCEP fleet's inventory in, give each device an EST credential,
report who still has to move, and close SCEP group by group (DESIGN.md "Migration model").

Each subcommand lives in its own module and is added here.
"""

from __future__ import annotations

import click


@click.group()
def migrate() -> None:
    """Move a SCEP fleet to EST: import, map, report, sunset."""
