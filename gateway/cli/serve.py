"""`gateway serve`: run the HTTP and HTTPS listeners."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from gateway.cli.support import config_options, load_cli_config, one_line
from shared_ca.errors import CAError


@click.command("serve")
@config_options
@click.option("--http", "http_bind", help="Plain-HTTP listener HOST:PORT [default: 127.0.0.1:8080].")
@click.option("--https", "https_bind", help="HTTPS listener HOST:PORT [default: 127.0.0.1:8443].")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes per listener [default: 2].")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log format [default: text].")
def serve(
    data_dir: Path,
    config_file: Path | None,
    http_bind: str | None,
    https_bind: str | None,
    workers: int | None,
    log_format: str | None,
) -> None:
    """Run the HTTP and HTTPS listeners until SIGTERM or SIGINT."""
    from gateway.logs import announcer, capture_process_output, configure_logging
    from gateway.supervisor import ServeError, child_environment
    from gateway.supervisor import serve as run_servers

    overrides = {
        "listen.http": http_bind,
        "listen.https": https_bind,
        "listen.workers": workers,
        "log.format": log_format,
    }
    config = load_cli_config(data_dir, config_file, overrides)
    configure_logging(config["log.format"], config["log.level"])
    capture_process_output(config["log.format"])
    try:
        code = run_servers(config, child_environment(config, dict(os.environ)), announcer(config["log.format"]))
    except (ServeError, CAError) as exc:
        message = one_line(exc) if isinstance(exc, CAError) else str(exc)
        if config["log.format"] == "json":  # the reason as a record like every other line
            logging.getLogger("gateway.server").error("cannot serve: %s", message)
            sys.exit(1)
        raise click.ClickException(message) from None
    sys.exit(code)
