"""What every `gateway` subcommand shares: error translation, common options, loading the gateway."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.initdir import InitError
from gateway.runtime import Gateway, open_gateway
from scep import client as scep_client
from shared_ca.errors import CAError
from shared_ca.storage.db import database_failure

F = TypeVar("F", bound=Callable[..., Any])


class GatewayGroup(click.Group):
    """Turns every expected failure into one line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CAError as exc:
            raise click.ClickException(one_line(exc)) from None
        except (ConfigError, InitError) as exc:
            raise click.ClickException(str(exc)) from None
        except PermissionError as exc:
            raise click.ClickException(f"permission denied: {exc.filename}") from None
        except scep_client.ScepClientError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            # A database error no store translated (a constraint nobody expected, a driver error outside
            # a transaction): SQLAlchemy's own message holds the SQL and its parameters, hashes included.
            failure = as_ca_error(exc)
            if failure is None:
                raise
            raise click.ClickException(one_line(failure)) from None


def as_ca_error(exc: BaseException) -> CAError | None:
    """`exc` itself when it is a CAError, the project's error for a database failure, else None."""
    return exc if isinstance(exc, CAError) else database_failure(exc)


def one_line(exc: CAError) -> str:
    """The public message with the operator-only detail after it, folded onto one line."""
    text = exc.public_message
    if exc.detail and exc.detail != exc.public_message:
        text = f"{text}: {exc.detail}"
    return " ".join(text.split())


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def config_options(func: F) -> F:
    func = click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="GATEWAY_CONFIG",
        help="Config file (default: DATA_DIR/config.toml).",
    )(func)
    func = click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        envvar="GATEWAY_DATA_DIR",
        default=Path("data"),
        show_default=True,
        help="Data directory (also GATEWAY_DATA_DIR).",
    )(func)
    return func


def load_cli_config(data_dir: Path, config_file: Path | None, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    return load_config(data_dir.resolve(), config_file, overrides=overrides, require_file=config_file is None)


def open_cli_gateway(data_dir: Path, config_file: Path | None) -> Gateway:
    gateway = open_gateway(load_cli_config(data_dir, config_file))
    # Close the pooled database connections when the command ends, successful or not.
    click.get_current_context().call_on_close(gateway.store.engine.dispose)
    return gateway


def echo_to(text: str, out: Path | None = None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
