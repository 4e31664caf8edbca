"""`gateway migrate`: bring a legacy SCEP fleet's inventory in, give each device an EST credential,
report who still has to move, and close SCEP group by group (DESIGN.md "Migration model").

Each subcommand lives in its own module and is added here.
"""

from __future__ import annotations

import click

from gateway.cli_migrate_import import import_command
from gateway.cli_migrate_map import migrate_map, migrate_sunset
from gateway.cli_migrate_report import report


@click.group()
def migrate() -> None:
    """Move a SCEP fleet to EST: import, map, report, sunset."""


migrate.add_command(migrate_map)
migrate.add_command(migrate_sunset)
migrate.add_command(report)
migrate.add_command(import_command)
