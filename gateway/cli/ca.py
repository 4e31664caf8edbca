"""`gateway ca show|rollover|activate|retire|ra-split`: the certificate authority and its rollover."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gateway.cli.output import format_option, render_mapping
from gateway.cli.support import actor, config_options, load_cli_config, open_cli_gateway, parse_time
from gateway.runtime import Gateway
from scep.client_messages import parse_next_ca_reply
from shared_ca.authority import fingerprint
from shared_ca.ca_material import parse_subject
from shared_ca.ca_rollover import ca_roles
from shared_ca.keys import KeyType, describe_public_key


@click.group("ca")
def ca() -> None:
    """The certificate authority: show, rollover, activate, retire, ra-split."""


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
    serves of it, read from the very reply a client gets; the previous CAs winding down."""
    from gateway.rollover import rollover_summary

    reply = gw.scep.next_ca_certificates()
    served = parse_next_ca_reply(reply, ra_cert=gw.ra_certificate) if reply is not None else []
    roles = ca_roles(gw.storage.issuers.list_issuers(), gw.authority.clock())
    return rollover_summary(roles, tuple(served))


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
    issuance to the next CA is `gateway ca activate`.
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
    if result.token_note is not None:
        click.echo(f"keys       {result.token_note}")
    click.echo("a running `gateway serve` offers it through GetNextCACert within seconds (no restart)")


@ca.command("activate")
@config_options
@click.option(
    "--at", "at", help="When the next CA starts issuing (ISO 8601, UTC unless it names an offset) [default: now]."
)
def ca_activate(data_dir: Path, config_file: Path | None, at: str | None) -> None:
    """Switch issuance to the next CA, now or at a set time, with no restart.

    Every running worker of every node switches at that time. The CA it replaces keeps publishing its
    CRL and answering OCSP for its certificates; retire it once they have expired.
    """
    from gateway.rollover import RolloverError, activate

    when = parse_time(at, "--at") if at is not None else None
    try:
        done = activate(load_cli_config(data_dir, config_file), when, actor())
    except RolloverError as exc:
        raise click.ClickException(str(exc)) from None
    if done.active:
        click.echo(f"issuing CA {done.issuer_name} (active since {done.at:%Y-%m-%d %H:%M:%SZ})")
        click.echo(f"previous   {done.previous_name}: still publishes its CRL and answers OCSP until retired")
        click.echo("a running `gateway serve` issues from the new CA within seconds (no restart)")
    else:
        click.echo(f"next CA    {done.issuer_name} becomes the issuing CA at {done.at:%Y-%m-%d %H:%M:%SZ}")
        click.echo(f"until then {done.previous_name} issues; every running worker switches at that time")


@ca.command("retire")
@config_options
@click.argument("name")
def ca_retire(data_dir: Path, config_file: Path | None, name: str) -> None:
    """Retire a previous CA (replaced by `ca activate`) once its last certificate has expired."""
    from gateway.rollover import RolloverError, retire

    try:
        done = retire(load_cli_config(data_dir, config_file), name, actor())
    except RolloverError as exc:
        raise click.ClickException(str(exc)) from None
    last = f"its last certificate expired {done.last_expiry:%Y-%m-%d}" if done.last_expiry else "it issued nothing"
    click.echo(f"retired    {done.issuer_name} ({last}); its CRL and OCSP answers are served no more")


@ca.command("ra-split")
@config_options
def ca_ra_split(data_dir: Path, config_file: Path | None) -> None:
    """Give the SCEP RA separate keys: a signing RA and an encryption RA, issued by the current CA.

    Writes them beside the current RA (which keeps serving) and prints the [ra] settings that switch
    to them: set those in the configuration of every node, copy the files there, and restart.
    """
    from gateway.ra_split import RaSplitError, settings_toml, split_ra

    try:
        result = split_ra(load_cli_config(data_dir, config_file), actor=actor())
    except RaSplitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"signing RA     {result.signing.subject.rfc4514_string()} (digitalSignature)")
    click.echo(f"encryption RA  {result.encryption.subject.rfc4514_string()} (keyEncipherment)")
    click.echo("put these settings in the configuration file, then restart `gateway serve`:")
    click.echo(settings_toml(result.settings), nl=False)
