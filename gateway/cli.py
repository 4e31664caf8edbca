"""The `gateway` command: thin click commands over library functions."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cli_est import est_user
from gateway.cli_est_client import est
from gateway.cli_migrate import migrate
from gateway.cli_scep import challenge, requests, scep
from gateway.cli_support import GatewayGroup, actor, config_options, echo_to, load_cli_config, open_cli_gateway
from gateway.config import render_config, sample_config
from gateway.initdir import DEFAULT_CA_SUBJECT, InitOptions, initialise
from gateway.output import FORMATS, render, render_mapping
from gateway.runtime import PASSPHRASE_ENV, Gateway, read_passphrase_file
from shared_ca.authority import fingerprint, parse_reason, utcnow
from shared_ca.authorization import ADMIN_PROTOCOL, CertificateRequest, Principal
from shared_ca.ca_material import parse_subject
from shared_ca.csr import load_csr
from shared_ca.errors import NotFound
from shared_ca.keys import KeyType, describe_public_key
from shared_ca.serials import parse_serial, serial_hex
from shared_ca.storage.admin import AdminTokenStore, check_token_name
from shared_ca.storage.db import (
    create_store_engine,
    current_revision,
    head_revision,
    migrate_to_head,
    redact_url,
    require_schema_at_head,
)
from shared_ca.storage.repository import CertificateRecord


@click.group(cls=GatewayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scep-est-gateway", prog_name="gateway")
def cli() -> None:
    """SCEP-to-EST migration gateway: legacy SCEP and EST on one shared CA."""


# -- init / serve ---------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="GATEWAY_DATA_DIR",
    default=Path("data"),
    show_default=True,
    help="Directory to initialise (also GATEWAY_DATA_DIR).",
)
@click.option(
    "--ca-key-type",
    type=click.Choice(["rsa3072", "rsa2048", "p256", "p384"]),
    default="rsa3072",
    show_default=True,
    help="Key type of a new CA.",
)
@click.option(
    "--ca-subject",
    default=DEFAULT_CA_SUBJECT,
    show_default=True,
    help="Subject of a new CA (RFC 4514).",
)
@click.option(
    "--ca-days", type=click.IntRange(1, 36500), default=3650, show_default=True, help="Validity of a new CA in days."
)
@click.option(
    "--import-ca-cert", type=click.Path(path_type=Path, dir_okay=False), help="Existing CA certificate (PEM)."
)
@click.option("--import-ca-key", type=click.Path(path_type=Path, dir_okay=False), help="Existing CA key (PEM).")
@click.option("--import-pkcs12", type=click.Path(path_type=Path, dir_okay=False), help="Existing CA as PKCS#12.")
@click.option(
    "--import-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Passphrase of the imported key or PKCS#12 file.",
)
@click.option("--hostname", "hostnames", multiple=True, help="Extra name for the HTTPS certificate (repeatable).")
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Encrypt the keys with this passphrase (or set {PASSPHRASE_ENV}).",
)
@click.option("--scep-challenge", help="Static SCEP challenge of the default profile.")
@click.option("--database-url", help="Database URL (default: SQLite in the data directory).")
@click.option("--public-base-url", help="Base URL written into certificates (CRL, OCSP, CA issuers).")
@click.option("--force", is_flag=True, help="Replace an existing CA; the old files are moved aside.")
def init(
    data_dir: Path,
    ca_key_type: str,
    ca_subject: str,
    ca_days: int,
    import_ca_cert: Path | None,
    import_ca_key: Path | None,
    import_pkcs12: Path | None,
    import_passphrase_file: Path | None,
    hostnames: tuple[str, ...],
    passphrase_file: Path | None,
    scep_challenge: str | None,
    database_url: str | None,
    public_base_url: str | None,
    force: bool,
) -> None:
    """Create the CA (or import one), the RA and TLS certificates, the database and the config file."""
    try:
        subject = parse_subject(ca_subject)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ca-subject") from None
    if import_pkcs12 and (import_ca_cert or import_ca_key):
        raise click.UsageError("--import-pkcs12 and --import-ca-cert/--import-ca-key exclude each other")
    passphrase = None
    if passphrase_file is not None:
        passphrase = read_passphrase_file(passphrase_file)
    elif os.environ.get(PASSPHRASE_ENV):
        passphrase = os.environ[PASSPHRASE_ENV].encode("utf-8")
    import_passphrase = read_passphrase_file(import_passphrase_file) if import_passphrase_file else None
    result = initialise(
        InitOptions(
            data_dir=data_dir,
            ca_key_type=KeyType(ca_key_type),
            ca_subject=subject,
            ca_days=ca_days,
            import_ca_cert=import_ca_cert,
            import_ca_key=import_ca_key,
            import_pkcs12=import_pkcs12,
            import_passphrase=import_passphrase,
            hostnames=list(hostnames),
            passphrase=passphrase,
            passphrase_file=passphrase_file,
            scep_challenge=scep_challenge,
            database_url=database_url,
            public_base_url=public_base_url,
            force=force,
        )
    )
    if result.replaced is not None:
        click.echo(f"replaced the previous CA; its files are in {result.replaced}", err=True)
    click.echo(f"initialised {result.data_dir}")
    click.echo(f"CA         {result.ca_subject}")
    click.echo(f"SHA-256    {result.ca_fingerprint}")
    click.echo(f"expires    {result.ca_not_after:%Y-%m-%d}")
    click.echo(f"config     {result.config_file}")
    click.echo(f"trust this {result.ca_pem}")


@cli.command()
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
    from gateway.logs import configure_logging
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
    try:
        code = run_servers(config, child_environment(config, dict(os.environ)), click.echo)
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


# -- config ---------------------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Configuration: sample, show, check."""


@config.command("sample")
def config_sample() -> None:
    """Print a commented sample configuration with every key."""
    click.echo(sample_config(), nl=False)


@config.command("show")
@config_options
def config_show(data_dir: Path, config_file: Path | None) -> None:
    """Print the effective configuration (file, environment and defaults merged)."""
    cfg = load_cli_config(data_dir, config_file)
    profiles = {}
    for name, profile in cfg.profiles.items():
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(profile).items() if k != "name"}
        for secret in ("scep_challenge", "scep_webhook_secret"):
            if values.get(secret):
                values[secret] = "********"
        profiles[name] = values
    settings = dict(cfg.values)
    if settings["database_url"]:
        settings["database_url"] = redact_url(str(settings["database_url"]))
    click.echo(render_config(settings, profiles, commented=False), nl=False)


@config.command("check")
@config_options
def config_check(data_dir: Path, config_file: Path | None) -> None:
    """Validate the configuration and load the keys and database, as `serve` would."""
    gw = open_cli_gateway(data_dir, config_file)
    for notice in gw.config.deprecations:
        click.echo(f"warning: {notice}", err=True)
    click.echo(f"ok: {gw.config.source or 'defaults'}; CA {gw.authority.certificate.subject.rfc4514_string()}")


# -- ca / cert / crl / db -------------------------------------------------------------------------


@cli.group()
def ca() -> None:
    """The certificate authority."""


@ca.command("show")
@config_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
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
        "certificates_issued": gw.store.count_certificates(gw.authority.issuer.id),
        "crl_url": gw.authority.urls.crl(gw.authority.name),
        "ocsp_url": gw.authority.urls.ocsp(),
        "ra_subject": gw.ra_certificate.subject.rfc4514_string(),
        "ra_not_after": gw.ra_certificate.not_valid_after_utc.isoformat(),
        "trust_file": str(gw.config.data_dir / "ca.pem"),
        **_next_ca_fields(gw),
    }
    click.echo(render_mapping(data, fmt), nl=False)


def _next_ca_fields(gw: Gateway) -> dict[str, Any]:
    """The next CA `gateway ca rollover` prepared (served by GetNextCACert, not yet issuing)."""
    from gateway.rollover import next_ca_summary

    return next_ca_summary(gw.store, gw.scep.next_ca_certs)


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


@cli.group()
def cert() -> None:
    """Certificates: issue, list, show, revoke."""


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
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--limit", type=click.IntRange(1), help="At most this many rows.")
def cert_list(data_dir: Path, config_file: Path | None, status: str | None, fmt: str, limit: int | None) -> None:
    """List certificates, oldest first."""
    gw = open_cli_gateway(data_dir, config_file)
    now = utcnow()
    names = {i.id: i.name for i in gw.store.list_issuers()}
    rows = [
        _cert_row(r, names.get(r.issuer_id, "?"), now)
        for r in gw.store.list_certificates(now=now, status=status, limit=limit)
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
    found = gw.store.certificates_by_serial(serial)
    if not found:
        raise NotFound(f"no certificate with serial {serial}")
    if len(found) > 1:
        raise click.ClickException(f"serial {serial} exists under several issuers; it is ambiguous")
    return found[0]


@cert.command("show")
@config_options
@click.argument("serial")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--pem", is_flag=True, help="Print the certificate itself (PEM).")
def cert_show(data_dir: Path, config_file: Path | None, serial: str, fmt: str, pem: bool) -> None:
    """Show one certificate by serial (hex)."""
    gw = open_cli_gateway(data_dir, config_file)
    record = _find(gw, serial)
    if pem:
        click.echo(x509.load_der_x509_certificate(record.der).public_bytes(Encoding.PEM).decode("ascii"), nl=False)
        return
    names = {i.id: i.name for i in gw.store.list_issuers()}
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
    if record.issuer_id != gw.authority.issuer.id:
        raise click.ClickException(f"certificate {record.serial_hex} was not issued by this gateway's CA")
    revoked = gw.authority.revoke(record.serial_hex, flag, actor=actor())
    crl = gw.crl.publish(actor=actor())
    click.echo(f"revoked {revoked.serial_hex} ({flag.value}); CRL number {crl.number} published")


@cli.group()
def crl() -> None:
    """Certificate revocation lists."""


@crl.command("publish")
@config_options
def crl_publish(data_dir: Path, config_file: Path | None) -> None:
    """Sign and publish a new CRL now."""
    gw = open_cli_gateway(data_dir, config_file)
    record = gw.crl.publish(actor=actor())
    click.echo(f"CRL number {record.number} published; next update {record.next_update:%Y-%m-%d %H:%M:%SZ}")


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@config_options
def db_upgrade(data_dir: Path, config_file: Path | None) -> None:
    """Migrate the database to the schema this version needs."""
    cfg = load_cli_config(data_dir, config_file)
    engine = create_store_engine(cfg.database_url)
    try:
        before = current_revision(engine)
        migrate_to_head(engine)
    finally:
        engine.dispose()
    click.echo(f"database at {head_revision()} (was {before or 'empty'})")


# -- admin tokens ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _admin_tokens(data_dir: Path, config_file: Path | None) -> Iterator[AdminTokenStore]:
    """The admin-token store of the configured database (no key material needed)."""
    engine = create_store_engine(load_cli_config(data_dir, config_file).database_url)
    try:
        require_schema_at_head(engine)
        yield AdminTokenStore(engine)
    finally:
        engine.dispose()


@cli.group("admin-token")
def admin_token() -> None:
    """Bearer tokens of the admin API (POST /admin/api/..., GET /certsrv/mscep_admin/)."""


@admin_token.command("new")
@config_options
@click.argument("name")
def admin_token_new(data_dir: Path, config_file: Path | None, name: str) -> None:
    """Create a token and print it once (only its hash is stored)."""
    try:
        check_token_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    with _admin_tokens(data_dir, config_file) as store:
        created = store.create_admin_token(name, created_by=actor(), now=utcnow())
    click.echo(created.token)
    click.echo(f"admin token {name!r} created; it is shown only now", err=True)


admin_token.add_command(admin_token_new, "create")  # the name issue 5 uses; `new` stays


@admin_token.command("list")
@config_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def admin_token_list(data_dir: Path, config_file: Path | None, fmt: str) -> None:
    """List the tokens (never the tokens themselves), oldest first."""
    with _admin_tokens(data_dir, config_file) as store:
        records = store.list_admin_tokens()
    rows = [
        {
            "name": r.name,
            "status": "active" if r.active else "disabled",
            "scopes": list(r.scopes),
            "created_at": r.created_at.isoformat(timespec="seconds"),
            "created_by": r.created_by,
            "last_used_at": r.last_used_at.isoformat(timespec="seconds") if r.last_used_at else None,
            "disabled_at": r.disabled_at.isoformat(timespec="seconds") if r.disabled_at else None,
        }
        for r in records
    ]
    click.echo(render(rows, ["name", "status", "scopes", "created_at", "last_used_at"], fmt), nl=False)


@admin_token.command("disable")
@config_options
@click.argument("name")
def admin_token_disable(data_dir: Path, config_file: Path | None, name: str) -> None:
    """Disable a token for good (requests carrying it are refused from now on)."""
    with _admin_tokens(data_dir, config_file) as store:
        record = store.disable_admin_token(name, actor=actor(), now=utcnow())
    assert record.disabled_at is not None
    click.echo(f"admin token {name!r} disabled at {record.disabled_at.isoformat(timespec='seconds')}")


cli.add_command(migrate)
cli.add_command(requests)
cli.add_command(challenge)
cli.add_command(scep)
cli.add_command(est_user)
cli.add_command(est)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="gateway")
