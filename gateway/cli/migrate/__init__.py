"""`gateway migrate import|map|report|sunset`: bring a legacy SCEP fleet's inventory in, give each
device an EST credential, report who still has to move, and close SCEP group by group
(DESIGN.md "Migration model"). One module a subcommand.
"""

from __future__ import annotations

import click

from gateway.cli.migrate import import_, map, report, sunset


@click.group("migrate")
def migrate() -> None:
    """Move a SCEP fleet to EST: import, map, report, sunset.

    Import the legacy inventory, map each device to an EST credential, report who still has to move,
    and close SCEP group by group.
    """


migrate.add_command(import_.migrate_import)
migrate.add_command(map.migrate_map)
migrate.add_command(report.migrate_report)
migrate.add_command(sunset.migrate_sunset)
