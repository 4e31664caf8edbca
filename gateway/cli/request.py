"""`gateway request list|approve|reject`: SCEP and EST requests waiting for manual approval."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.output import format_option, render
from gateway.cli.support import actor, config_options, open_cli_gateway


@click.group("request")
def request() -> None:
    """Requests awaiting manual approval: list, approve, reject.

    SCEP and EST requests under a profile with approval = "manual" wait here.
    """


@request.command("list")
@config_options
@format_option
def request_list(data_dir: Path, config_file: Path | None, fmt: str) -> None:
    """List pending requests, oldest first."""
    gw = open_cli_gateway(data_dir, config_file)
    rows = [
        {
            "id": q.id,
            "protocol": q.protocol,
            "profile": q.profile,
            "subject": q.subject,
            "requester": f"{q.principal_kind}:{q.principal_name}",
            "device": q.device_identity,
            "client": q.client_address,
            "received": q.created_at.isoformat(timespec="seconds"),
        }
        for q in gw.approvals.pending()
    ]
    columns = ["id", "protocol", "profile", "subject", "requester", "client", "received"]
    click.echo(render(rows, columns, fmt), nl=False)


@request.command("approve")
@config_options
@click.argument("request_id", type=int)
def request_approve(data_dir: Path, config_file: Path | None, request_id: int) -> None:
    """Issue the certificate of a pending request; the device gets it at its next poll or retry."""
    gw = open_cli_gateway(data_dir, config_file)
    record = gw.approvals.approve(request_id, actor=actor())
    click.echo(f"approved request {request_id}: issued {record.serial_hex} ({record.subject})")


@request.command("reject")
@config_options
@click.argument("request_id", type=int)
@click.option("--reason", default="rejected by an administrator", show_default=True)
def request_reject(data_dir: Path, config_file: Path | None, request_id: int, reason: str) -> None:
    """Refuse a pending request; the device gets the refusal at its next poll or retry."""
    gw = open_cli_gateway(data_dir, config_file)
    gw.approvals.reject(request_id, reason, actor=actor())
    click.echo(f"rejected request {request_id}")
