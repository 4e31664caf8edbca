"""What every `gateway` command shares: error translation, common options and parsers, loading the gateway."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import getpass
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from est.client import EstClientError
from gateway.audit_trail import open_store
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.initdir import InitError
from gateway.runtime import Gateway, open_gateway
from scep import client as scep_client
from shared_ca.errors import CAError
from shared_ca.storage.db import database_failure, require_schema_at_head
from shared_ca.storage.device_contacts import MAX_GROUP
from shared_ca.storage.repositories import Storage

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=click.Command)

FILE = click.Path(path_type=Path, dir_okay=False)


class GatewayGroup(click.Group):
    """Turns every expected failure into one line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CAError as exc:
            raise click.ClickException(one_line(exc)) from None
        except (ConfigError, InitError, scep_client.ScepClientError, EstClientError) as exc:
            raise click.ClickException(str(exc)) from None
        except PermissionError as exc:
            raise click.ClickException(f"permission denied: {exc.filename}") from None
        except Exception as exc:
            # A database error no store translated (a constraint nobody expected, a driver error outside
            # a transaction): SQLAlchemy's own message holds the SQL and its parameters, hashes included.
            failure = as_ca_error(exc)
            if failure is None:
                raise
            raise click.ClickException(one_line(failure)) from None


def hidden_alias(command: C, old_name: str, replacement: str) -> C:
    """`command` under the name it had before: left out of --help, and naming its replacement on stderr."""
    alias = copy.copy(command)
    alias.name = old_name
    alias.hidden = True
    alias.deprecated = f"Use `{replacement}`; the old name goes in a later release."
    return alias


def as_ca_error(exc: BaseException) -> CAError | None:
    """`exc` itself when it is a CAError, the project's error for a database failure, else None."""
    return exc if isinstance(exc, CAError) else database_failure(exc)


def one_line(exc: CAError) -> str:
    """The public message with the operator-only detail after it, folded onto one line."""
    text = exc.public_message
    if exc.detail and exc.detail != exc.public_message:
        text = f"{text}: {exc.detail}"
    return " ".join(text.split())


def refuse(field: str, message: str) -> click.ClickException:
    """A one-line refusal naming the option or argument (exit status 1)."""
    return click.ClickException(f"{field}: {message}")


def parse_time(text: str, field: str, now: dt.datetime | None = None) -> dt.datetime:
    """YYYY-MM-DD (midnight UTC) or an ISO 8601 date and time (UTC unless it names an offset);
    when `now` is given, the time must come after it."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise refuse(field, f"{text!r} is not a date (YYYY-MM-DD) or ISO 8601 date and time") from None
    when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    if now is not None and when <= now:
        raise refuse(field, f"{when.isoformat()} is not in the future")
    return when


def check_group(group: str | None) -> None:
    """Refuse a --group name the devices table cannot hold."""
    if group is not None and not 1 <= len(group) <= MAX_GROUP:
        raise refuse("--group", f"a group name has 1-{MAX_GROUP} characters")


def actor() -> str:
    """Who the audit log names for this command: cli:USER."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def config_options(func: F) -> F:
    """--data-dir and --config, taken by every command that reads the configuration."""
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


@contextlib.contextmanager
def database_storage(config: GatewayConfig) -> Iterator[Storage]:
    """The repositories of the configured database, for commands that need no key material; the
    schema must be at head (`gateway db upgrade`)."""
    engine = open_store(config).engine
    try:
        require_schema_at_head(engine)
        yield Storage.open(engine)
    finally:
        engine.dispose()


def open_cli_gateway(data_dir: Path, config_file: Path | None) -> Gateway:
    gateway = open_gateway(load_cli_config(data_dir, config_file))
    # Close the pooled database connections when the command ends, successful or not.
    click.get_current_context().call_on_close(gateway.storage.db.dispose)
    return gateway


def echo_to(text: str, out: Path | None = None) -> None:
    """`text` on stdout, or into the file `out`."""
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
