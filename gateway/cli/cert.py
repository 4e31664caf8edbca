"""`gateway cert issue|list|show|revoke`: the certificates of this CA."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cli.output import format_option, render, render_mapping
from gateway.cli.support import actor, config_options, echo_to, open_cli_gateway
from gateway.runtime import Gateway
from shared_ca.authority import parse_reason, utcnow
from shared_ca.authorization import ADMIN_PROTOCOL, CertificateRequest, Principal
from shared_ca.csr import load_csr
from shared_ca.errors import NotFound
from shared_ca.serials import parse_serial, serial_hex
from shared_ca.storage.certificates import CertificateRecord


@click.group("cert")
def cert() -> None:
    """Certificates of this CA: issue, list, show, revoke."""


def _cert_row(record: CertificateRecord, issuer: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "serial": record.serial_hex,
        "issuer": issuer,
        "subject": record.subject,
        "sans": list(record.sans),
        "status": record.effective_status(now),
        "not_before": record.not_before.isoformat(),
        "not_after": record.not_after.isoformat(),
        "profile": record.profile,
        "protocol": record.protocol,
        "key": record.key_type,
        "sha256": record.fingerprint_sha256,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "revocation_reason": record.revocation_reason,
    }


@cert.command("issue")
@config_options
@click.option(
    "--csr",
    "csr_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="PKCS#10 request, PEM or DER.",
)
@click.option("--profile", "profile_name", help="Profile (default: the configured default_profile).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write the certificate here (PEM).")
def cert_issue(
    data_dir: Path, config_file: Path | None, csr_file: Path, profile_name: str | None, out: Path | None
) -> None:
    """Issue a certificate for a CSR under a profile."""
    gw = open_cli_gateway(data_dir, config_file)
    if profile_name is not None and profile_name not in gw.config.profiles:
        raise click.BadParameter(
            f"no profile {profile_name!r} (have: {', '.join(sorted(gw.config.profiles))})", param_hint="--profile"
        )
    profile = gw.config.profiles[profile_name] if profile_name else gw.config.default_profile
    try:
        data = csr_file.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {csr_file}: {exc.strerror}", param_hint="--csr") from None
    csr = load_csr(data)
    authorization = gw.authorizer.authorize(
        Principal.admin(actor()), profile, ADMIN_PROTOCOL, CertificateRequest.from_csr(csr)
    )
    issued = gw.authority.issue(authorization.policy, protocol="cli", actor=actor(), requester=str(csr_file))
    serial = issued.record.serial_hex
    try:
        echo_to(issued.certificate.public_bytes(Encoding.PEM).decode("ascii"), out)
    except OSError as exc:  # the certificate is issued and recorded: say how to get it back
        raise click.ClickException(
            f"issued serial {serial}, but cannot write {out}: {exc.strerror}; "
            f"`gateway cert show {serial} --pem` prints it"
        ) from None
    click.echo(f"issued serial {serial} ({issued.record.subject}, profile {profile.name})", err=True)


@cert.command("list")
@config_options
@click.option("--status", type=click.Choice(["valid", "revoked", "expired"]))
@format_option
@click.option("--limit", type=click.IntRange(1), help="At most this many rows.")
def cert_list(data_dir: Path, config_file: Path | None, status: str | None, fmt: str, limit: int | None) -> None:
    """List certificates, oldest first."""
    gw = open_cli_gateway(data_dir, config_file)
    now = utcnow()
    names = {i.id: i.name for i in gw.storage.issuers.list_issuers()}
    rows = [
        _cert_row(r, names.get(r.issuer_id, "?"), now)
        for r in gw.storage.certificates.list_certificates(now=now, status=status, limit=limit)
    ]
    columns = ["serial", "status", "not_after", "profile", "protocol", "subject"]
    if fmt != "table":
        columns = list(rows[0]) if rows else columns
    click.echo(render(rows, columns, fmt), nl=False)


def _find(gw: Gateway, serial_text: str) -> CertificateRecord:
    try:
        serial = serial_hex(parse_serial(serial_text))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SERIAL") from None
    found = gw.storage.certificates.certificates_by_serial(serial)
    if not found:
        raise NotFound(f"no certificate with serial {serial}")
    if len(found) > 1:
        raise click.ClickException(f"serial {serial} exists under several issuers; it is ambiguous")
    return found[0]


@cert.command("show")
@config_options
@click.argument("serial")
@format_option
@click.option("--pem", is_flag=True, help="Print the certificate itself (PEM).")
def cert_show(data_dir: Path, config_file: Path | None, serial: str, fmt: str, pem: bool) -> None:
    """Show one certificate by serial (hex)."""
    gw = open_cli_gateway(data_dir, config_file)
    record = _find(gw, serial)
    if pem:
        click.echo(x509.load_der_x509_certificate(record.der).public_bytes(Encoding.PEM).decode("ascii"), nl=False)
        return
    names = {i.id: i.name for i in gw.storage.issuers.list_issuers()}
    click.echo(render_mapping(_cert_row(record, names.get(record.issuer_id, "?"), utcnow()), fmt), nl=False)


@cert.command("revoke")
@config_options
@click.argument("serial")
@click.option(
    "--reason",
    required=True,
    help="RFC 5280 reason: unspecified, key_compromise, ca_compromise, "
    "affiliation_changed, superseded, cessation_of_operation, privilege_withdrawn, aa_compromise.",
)
def cert_revoke(data_dir: Path, config_file: Path | None, serial: str, reason: str) -> None:
    """Revoke a certificate and publish a new CRL."""
    try:
        flag = parse_reason(reason)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None
    gw = open_cli_gateway(data_dir, config_file)
    record = _find(gw, serial)
    # The issuing CA's, or a previous CA's (replaced by a rollover, still publishing its CRL).
    authority = next((a for a in (gw.authority, *gw.previous) if a.issuer.id == record.issuer_id), None)
    publisher = gw.crl_publisher(authority.name) if authority is not None else None
    if authority is None or publisher is None:
        raise click.ClickException(f"certificate {record.serial_hex} was not issued by this gateway's CA")
    revoked = authority.revoke(record.serial_hex, flag, actor=actor())
    crl = publisher.publish(actor=actor())
    click.echo(f"revoked {revoked.serial_hex} ({flag.value}); CRL number {crl.number} published")
