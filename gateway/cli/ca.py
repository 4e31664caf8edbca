"""`gateway ca show|rollover`: the certificate authority."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gateway.cli.output import format_option, render_mapping
from gateway.cli.support import actor, config_options, load_cli_config, open_cli_gateway
from gateway.runtime import Gateway
from scep.client_messages import parse_next_ca_reply
from shared_ca.authority import fingerprint
from shared_ca.ca_material import parse_subject
from shared_ca.keys import KeyType, describe_public_key


@click.group("ca")
def ca() -> None:
    """The certificate authority: show, rollover."""


@ca.command("show")
@config_options
@format_option
def ca_show(data_dir: Path, config_file: Path | None, fmt: str) -> None:
    """Show the CA, its RA certificate and where relying parties find CRL and OCSP."""
    gw = open_cli_gateway(data_dir, config_file)
    cert = gw.authority.certificate
    data = {
        "issuer": gw.authority.name,
        "subject": cert.subject.rfc4514_string(),
        "key": describe_public_key(cert.public_key()),
        "sha256": fingerprint(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "certificates_issued": gw.storage.certificates.count_certificates(gw.authority.issuer.id),
        "crl_url": gw.authority.urls.crl(gw.authority.name),
        "ocsp_url": gw.authority.urls.ocsp(),
        "ra_subject": gw.ra_certificate.subject.rfc4514_string(),
        "ra_not_after": gw.ra_certificate.not_valid_after_utc.isoformat(),
        "trust_file": str(gw.config.data_dir / "ca.pem"),
        **_next_ca_fields(gw),
    }
    click.echo(render_mapping(data, fmt), nl=False)


def _next_ca_fields(gw: Gateway) -> dict[str, Any]:
    """The next CA `gateway ca rollover` prepared (not yet issuing), and the certificates GetNextCACert
    serves of it, read from the very reply a client gets."""
    from gateway.rollover import next_ca_summary

    reply = gw.scep.next_ca_certificates()
    served = parse_next_ca_reply(reply, ra_cert=gw.ra_certificate) if reply is not None else []
    return next_ca_summary(gw.storage.issuers, tuple(served))


@ca.command("rollover")
@config_options
@click.option(
    "--ca-key-type",
    type=click.Choice([k.value for k in KeyType]),
    default=KeyType.RSA3072.value,
    show_default=True,
    help="Key type of the next CA.",
)
@click.option("--ca-subject", help="Subject of the next CA (RFC 4514) [default: the current CA's subject].")
@click.option("--ca-days", type=click.IntRange(1, 36500), default=3650, show_default=True, help="Validity in days.")
@click.option("--force", is_flag=True, help="Replace a next CA prepared before; its files are moved aside.")
def ca_rollover(
    data_dir: Path, config_file: Path | None, ca_key_type: str, ca_subject: str | None, ca_days: int, force: bool
) -> None:
    """Prepare the next CA and its SCEP RA, served to clients by GetNextCACert.

    The next CA is only published: certificates are still issued by the current CA. Switching
    issuance to the next CA (activation) is a separate step this command does not take.
    """
    from gateway.rollover import RolloverError, RolloverOptions, rollover

    try:
        subject = parse_subject(ca_subject) if ca_subject else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ca-subject") from None
    options = RolloverOptions(KeyType(ca_key_type), subject, ca_days, force, actor())
    try:
        result = rollover(load_cli_config(data_dir, config_file), options)
    except RolloverError as exc:
        raise click.ClickException(str(exc)) from None
    if result.replaced is not None:
        click.echo(f"replaced the previous next CA; its files are in {result.replaced}", err=True)
    click.echo(f"next CA    {result.ca_subject} (issuer {result.issuer_name}, not active yet)")
    click.echo(f"SHA-256    {result.ca_fingerprint}")
    click.echo(f"expires    {result.ca_not_after:%Y-%m-%d}")
    click.echo(f"next RA    {result.ra_subject}")
    click.echo(f"files      {result.ca_cert}, {result.ra_cert}")
    click.echo("a running `gateway serve` offers it through GetNextCACert within seconds (no restart)")
