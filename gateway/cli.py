"""The `gateway` command: thin click commands over library functions."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.config import ConfigError, GatewayConfig, load_config, render_config, sample_config
from gateway.initdir import DEFAULT_CA_SUBJECT, InitError, InitOptions, initialise
from gateway.output import FORMATS, render, render_mapping
from gateway.runtime import PASSPHRASE_ENV, Gateway, open_gateway, read_passphrase_file
from scep import client as scep_client
from scep.asn1 import Digest, PkiStatus
from scep.challenges import new_one_time_challenge
from scep.envelope import ContentCipher
from shared_ca.authority import fingerprint, parse_reason, utcnow
from shared_ca.ca_material import parse_subject
from shared_ca.csr import load_csr
from shared_ca.errors import CAError, NotFound
from shared_ca.keys import KeyType, describe_public_key, load_certificates
from shared_ca.policy import authorize_csr
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

F = TypeVar("F", bound=Callable[..., Any])


class GatewayGroup(click.Group):
    """Turns every expected failure into one line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CAError as exc:
            raise click.ClickException(_one_line(exc)) from None
        except (ConfigError, InitError) as exc:
            raise click.ClickException(str(exc)) from None
        except PermissionError as exc:
            raise click.ClickException(f"permission denied: {exc.filename}") from None
        except scep_client.ScepClientError as exc:
            raise click.ClickException(str(exc)) from None


def _one_line(exc: CAError) -> str:
    """The public message with the operator-only detail after it, folded onto one line."""
    text = exc.public_message
    if exc.detail and exc.detail != exc.public_message:
        text = f"{text}: {exc.detail}"
    return " ".join(text.split())


def _actor() -> str:
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


def _config(data_dir: Path, config_file: Path | None, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    return load_config(data_dir.resolve(), config_file, overrides=overrides, require_file=config_file is None)


def _gateway(data_dir: Path, config_file: Path | None) -> Gateway:
    gateway = open_gateway(_config(data_dir, config_file))
    # Close the pooled database connections when the command ends, successful or not.
    click.get_current_context().call_on_close(gateway.store.engine.dispose)
    return gateway


def _echo(text: str, out: Path | None = None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


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
    from gateway.server import child_environment
    from gateway.server import serve as run_servers

    overrides = {
        "listen.http": http_bind,
        "listen.https": https_bind,
        "listen.workers": workers,
        "log.format": log_format,
    }
    config = _config(data_dir, config_file, overrides)
    configure_logging(config["log.format"], config["log.level"])
    code = run_servers(config, child_environment(config, dict(os.environ)), click.echo)
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
    cfg = _config(data_dir, config_file)
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
    gw = _gateway(data_dir, config_file)
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
    gw = _gateway(data_dir, config_file)
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
    options = RolloverOptions(KeyType(ca_key_type), subject, ca_days, force, _actor())
    try:
        result = rollover(_config(data_dir, config_file), options)
    except RolloverError as exc:
        raise click.ClickException(str(exc)) from None
    if result.replaced is not None:
        click.echo(f"replaced the previous next CA; its files are in {result.replaced}", err=True)
    click.echo(f"next CA    {result.ca_subject} (issuer {result.issuer_name}, not active yet)")
    click.echo(f"SHA-256    {result.ca_fingerprint}")
    click.echo(f"expires    {result.ca_not_after:%Y-%m-%d}")
    click.echo(f"next RA    {result.ra_subject}")
    click.echo(f"files      {result.ca_cert}, {result.ra_cert}")
    click.echo("restart `gateway serve` to offer it through GetNextCACert")


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
    gw = _gateway(data_dir, config_file)
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
    policy = authorize_csr(profile, csr, utcnow())
    issued = gw.authority.issue(policy, protocol="cli", actor=_actor(), requester=str(csr_file))
    serial = issued.record.serial_hex
    try:
        _echo(issued.certificate.public_bytes(Encoding.PEM).decode("ascii"), out)
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
    gw = _gateway(data_dir, config_file)
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
    gw = _gateway(data_dir, config_file)
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
    gw = _gateway(data_dir, config_file)
    record = _find(gw, serial)
    if record.issuer_id != gw.authority.issuer.id:
        raise click.ClickException(f"certificate {record.serial_hex} was not issued by this gateway's CA")
    revoked = gw.authority.revoke(record.serial_hex, flag, actor=_actor())
    crl = gw.crl.publish(actor=_actor())
    click.echo(f"revoked {revoked.serial_hex} ({flag.value}); CRL number {crl.number} published")


@cli.group()
def crl() -> None:
    """Certificate revocation lists."""


@crl.command("publish")
@config_options
def crl_publish(data_dir: Path, config_file: Path | None) -> None:
    """Sign and publish a new CRL now."""
    gw = _gateway(data_dir, config_file)
    record = gw.crl.publish(actor=_actor())
    click.echo(f"CRL number {record.number} published; next update {record.next_update:%Y-%m-%d %H:%M:%SZ}")


@cli.group()
def requests() -> None:
    """SCEP requests waiting for manual approval (profiles with approval = "manual")."""


@requests.command("list")
@config_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def requests_list(data_dir: Path, config_file: Path | None, fmt: str) -> None:
    """List pending requests, oldest first."""
    gw = _gateway(data_dir, config_file)
    rows = [
        {
            "id": t.id,
            "profile": t.profile,
            "subject": t.subject,
            "client": t.client_address,
            "transaction_id": t.transaction_id,
            "received": t.created_at.isoformat(timespec="seconds"),
        }
        for t in gw.store.list_pending()
    ]
    click.echo(render(rows, ["id", "profile", "subject", "client", "received"], fmt), nl=False)


@requests.command("approve")
@config_options
@click.argument("request_id", type=int)
def requests_approve(data_dir: Path, config_file: Path | None, request_id: int) -> None:
    """Issue the certificate of a pending request; the device gets it at its next poll."""
    gw = _gateway(data_dir, config_file)
    record = gw.scep.approve(request_id, actor=_actor())
    click.echo(f"approved request {request_id}: issued {record.serial_hex} ({record.subject})")


@requests.command("reject")
@config_options
@click.argument("request_id", type=int)
@click.option("--reason", default="rejected by an administrator", show_default=True)
def requests_reject(data_dir: Path, config_file: Path | None, request_id: int, reason: str) -> None:
    """Refuse a pending request; the device gets FAILURE at its next poll."""
    gw = _gateway(data_dir, config_file)
    gw.scep.reject(request_id, reason, actor=_actor())
    click.echo(f"rejected request {request_id}")


@cli.command("challenge")
@config_options
@click.argument("action", type=click.Choice(["new"]))
@click.option("--device", required=True, help="Device identity the challenge is bound to (the CSR's CN).")
@click.option("--profile", "profile_name", help="Profile (default: the configured default_profile).")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: 30m, 1h, 7d ...")
@click.option("--uses", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--subject", "expected_subject", help="Only a CSR with exactly this subject (RFC 4514) may use it.")
def challenge(
    data_dir: Path,
    config_file: Path | None,
    action: str,
    device: str,
    profile_name: str | None,
    ttl: str,
    uses: int,
    expected_subject: str | None,
) -> None:
    """Print a new one-time SCEP challenge password (stored hashed)."""
    gw = _gateway(data_dir, config_file)
    if profile_name is not None and profile_name not in gw.config.profiles:
        raise click.BadParameter(f"no profile {profile_name!r}", param_hint="--profile")
    lifetime = _duration(ttl)
    secret = new_one_time_challenge(
        gw.store,
        device,
        profile_name or gw.config["default_profile"],
        lifetime,
        uses,
        expected_subject,
        created_by=_actor(),
        now=utcnow(),
    )
    click.echo(secret)


def _duration(text: str) -> dt.timedelta:
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    value = text.strip()
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit() or int(value[:-1]) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 1h or 7d", param_hint="--ttl")
    return dt.timedelta(**{units[value[-1]]: int(value[:-1])})


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@config_options
def db_upgrade(data_dir: Path, config_file: Path | None) -> None:
    """Migrate the database to the schema this version needs."""
    cfg = _config(data_dir, config_file)
    engine = create_store_engine(cfg.database_url)
    try:
        before = current_revision(engine)
        migrate_to_head(engine)
    finally:
        engine.dispose()
    click.echo(f"database at {head_revision()} (was {before or 'empty'})")


# -- scep (the project's own SCEP client) ---------------------------------------------------------


@cli.group()
def scep() -> None:
    """A SCEP client, to test a SCEP server (this one or another)."""


_FILE = click.Path(path_type=Path, dir_okay=False)


def scep_options(func: F) -> F:
    """--url, --cacert, --cipher and --digest, shared by every `gateway scep` command."""
    for decorator in reversed(
        [
            click.option("--url", required=True, help="SCEP URL, such as http://HOST:8080/scep."),
            click.option("--cacert", type=_FILE, help="Trust this CA (PEM) for an https:// URL."),
            click.option(
                "--cipher",
                type=click.Choice(["des", "3des", "aes128", "aes192", "aes256"]),
                default="aes256",
                show_default=True,
            ),
            click.option(
                "--digest", type=click.Choice(["sha1", "sha256", "sha512", "md5"]), default="sha256", show_default=True
            ),
        ]
    ):
        func = decorator(func)
    return func


def _scep_client(url: str, cacert: Path | None) -> scep_client.ScepHttpClient:
    return scep_client.ScepHttpClient(url, ssl_context=scep_client.tls_context(cacert))


def _scep_result(result: scep_client.EnrollResult, out: Path | None) -> None:
    """Write the certificate and print its serial; exit 1 with one line on FAILURE or PENDING."""
    if result.status is not PkiStatus.SUCCESS or result.certificate is None:
        raise click.ClickException(scep_client.describe(result))
    _echo(result.certificate.public_bytes(Encoding.PEM).decode("ascii"), out)
    click.echo(f"SUCCESS serial {serial_hex(result.certificate.serial_number)}", err=out is None)


@scep.command("getcaps")
@scep_options
def scep_getcaps(url: str, cacert: Path | None, cipher: str, digest: str) -> None:
    """Print the server's capabilities (GetCACaps), one a line."""
    for cap in _scep_client(url, cacert).get_ca_caps():
        click.echo(cap)


@scep.command("getcacert")
@scep_options
@click.option("--out", type=_FILE, help="Write the RA and CA certificates here (PEM).")
def scep_getcacert(url: str, cacert: Path | None, cipher: str, digest: str, out: Path | None) -> None:
    """Fetch the RA certificate and the CA chain (GetCACert) as PEM."""
    ra, chain = _scep_client(url, cacert).get_ca_certs()
    certs = [ra, *(c for c in chain if c != ra)]
    _echo(b"".join(c.public_bytes(Encoding.PEM) for c in certs).decode("ascii"), out)


@scep.command("enroll")
@scep_options
@click.option("--challenge", help="Challenge password.")
@click.option("--subject", default="CN=scep-client", show_default=True, help="Subject (RFC 4514).")
@click.option("--key", "key_file", type=_FILE, required=True, help="RSA key; a new RSA-2048 key if missing.")
@click.option("--out", type=_FILE, help="Write the certificate here (PEM; default stdout).")
def scep_enroll(
    url: str,
    cacert: Path | None,
    cipher: str,
    digest: str,
    challenge: str | None,
    subject: str,
    key_file: Path,
    out: Path | None,
) -> None:
    """Enroll (PKCSReq) for a new certificate."""
    try:
        name = parse_subject(subject)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subject") from None
    client = _scep_client(url, cacert)
    key, _created = scep_client.load_or_create_rsa_key(key_file)
    result = scep_client.enroll(
        client, key=key, subject=name, challenge=challenge, cipher=ContentCipher(cipher), digest=Digest(digest)
    )
    _scep_result(result, out)


@scep.command("renew")
@scep_options
@click.option("--key", "key_file", type=_FILE, required=True, help="Key of the current certificate.")
@click.option("--cert", "cert_file", type=_FILE, required=True, help="The current certificate (PEM).")
@click.option("--new-key", "new_key_file", type=_FILE, help="Rekey: certify this key (a new RSA-2048 if missing).")
@click.option("--out", type=_FILE, help="Write the new certificate here (PEM; default stdout).")
def scep_renew(
    url: str,
    cacert: Path | None,
    cipher: str,
    digest: str,
    key_file: Path,
    cert_file: Path,
    new_key_file: Path | None,
    out: Path | None,
) -> None:
    """Renew (RenewalReq) the current certificate, signed by it."""
    client = _scep_client(url, cacert)
    key = scep_client.load_rsa_key(key_file)
    new_key = scep_client.load_or_create_rsa_key(new_key_file)[0] if new_key_file else None
    current = load_certificates(cert_file)[0]
    result = scep_client.renew(
        client, key=key, cert=current, new_key=new_key, cipher=ContentCipher(cipher), digest=Digest(digest)
    )
    _scep_result(result, out)


@scep.command("poll")
@scep_options
@click.option("--key", "key_file", type=_FILE, required=True, help="Key of the pending request.")
@click.option("--subject", required=True, help="Subject of the pending request (RFC 4514).")
@click.option("--transaction-id", required=True, help="transactionID printed by `enroll`.")
@click.option("--out", type=_FILE, help="Write the certificate here (PEM; default stdout).")
def scep_poll(
    url: str,
    cacert: Path | None,
    cipher: str,
    digest: str,
    key_file: Path,
    subject: str,
    transaction_id: str,
    out: Path | None,
) -> None:
    """Ask for the outcome of a pending request (CertPoll)."""
    try:
        name = parse_subject(subject)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subject") from None
    client = _scep_client(url, cacert)
    key = scep_client.load_rsa_key(key_file)
    result = scep_client.poll(
        client,
        key=key,
        subject=name,
        transaction_id=transaction_id,
        cipher=ContentCipher(cipher),
        digest=Digest(digest),
    )
    _scep_result(result, out)


# -- admin tokens ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _admin_tokens(data_dir: Path, config_file: Path | None) -> Iterator[AdminTokenStore]:
    """The admin-token store of the configured database (no key material needed)."""
    engine = create_store_engine(_config(data_dir, config_file).database_url)
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
        created = store.create_admin_token(name, created_by=_actor(), now=utcnow())
    click.echo(created.token)
    click.echo(f"admin token {name!r} created; it is shown only now", err=True)


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
        record = store.disable_admin_token(name, actor=_actor(), now=utcnow())
    assert record.disabled_at is not None
    click.echo(f"admin token {name!r} disabled at {record.disabled_at.isoformat(timespec='seconds')}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="gateway")
