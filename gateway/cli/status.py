"""`gateway status`: listeners, database, schema, CA and RA expiry, approvals, trust revision."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gateway.cli.output import format_option, render
from gateway.cli.support import config_options, load_cli_config
from gateway.status import PROBE_TIMEOUT_SECONDS, WARN_DAYS, collect


@click.command("status")
@config_options
@format_option
@click.option(
    "--warn-days",
    type=click.IntRange(0, 3650),
    default=WARN_DAYS,
    show_default=True,
    help="A certificate expiring within this many days needs attention.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60),
    default=PROBE_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds to wait for each listener and for the database.",
)
def status(data_dir: Path, config_file: Path | None, fmt: str, warn_days: int, timeout: float) -> None:
    """What an operator checks first: listeners, database, schema version, expiries, pending approvals.

    \b
    Exit status 0 when all is well, 1 when something needs attention: a listener down or the node
    not ready, the database unreachable, its schema not current, a certificate unreadable, expired
    or expiring within --warn-days. The configuration must load (else one error line, status 1).
    """
    config = load_cli_config(data_dir, config_file)
    report = collect(config, warn_days=warn_days, timeout=timeout)
    attention = report.attention()
    if fmt == "json":
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        rows = [{"check": f.check, "state": f.state, "detail": f.detail} for f in report.findings()]
        click.echo(render(rows, ["check", "state", "detail"], fmt), nl=False)
        if fmt == "table":
            click.echo(f"\nneeds attention: {', '.join(attention)}" if attention else "\nall is well")
    sys.exit(1 if attention else 0)
