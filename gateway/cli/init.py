"""`gateway init`: create (or import) the CA, the RA and TLS certificates, the database and the config file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from gateway.init_kms import (
    DEFAULT_CA_KEY_URI,
    DEFAULT_RA_ENCRYPTION_KEY_URI,
    DEFAULT_RA_KEY_URI,
    DEFAULT_TLS_KEY_URI,
)
from gateway.initdir import DEFAULT_CA_SUBJECT, InitOptions, initialise
from gateway.runtime import PASSPHRASE_ENV, read_passphrase_file
from shared_ca.ca_material import parse_subject
from shared_ca.keys import KeyType


@click.command("init")
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
@click.option(
    "--kms",
    metavar="URI",
    help="PKCS#11 token for the CA, RA and HTTPS keys (RFC 7512): "
    "'pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=gw?pin-source=file:///etc/gateway/pin'. "
    "Keys the token lacks are generated in it, never extractable. The HTTPS key needs OpenSSL's "
    "pkcs11-provider (or --tls-key-file).",
)
@click.option("--ca-key-uri", default=DEFAULT_CA_KEY_URI, show_default=True, help="The CA key in the --kms token.")
@click.option("--ra-key-uri", default=DEFAULT_RA_KEY_URI, show_default=True, help="The SCEP RA key in the --kms token.")
@click.option(
    "--ra-encryption-key-uri",
    default=DEFAULT_RA_ENCRYPTION_KEY_URI,
    show_default=True,
    help="The RA encryption key in the --kms token (with --separate-ra-keys).",
)
@click.option("--tls-key-uri", default=DEFAULT_TLS_KEY_URI, show_default=True, help="The HTTPS key in the --kms token.")
@click.option(
    "--tls-key-file",
    is_flag=True,
    help="With --kms: keep the HTTPS key in a file (tls/server.key), e.g. without OpenSSL's pkcs11-provider.",
)
@click.option(
    "--separate-ra-keys",
    is_flag=True,
    help="Two SCEP RA keys: one only signs (digitalSignature), one only decrypts (keyEncipherment).",
)
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
    separate_ra_keys: bool,
    kms: str | None,
    ca_key_uri: str,
    ra_key_uri: str,
    ra_encryption_key_uri: str,
    tls_key_uri: str,
    tls_key_file: bool,
) -> None:
    """Set up a data directory: CA, keys, database, config file.

    Creates the CA (or imports one), the RA and TLS certificates, the database and the config file.
    """
    try:
        subject = parse_subject(ca_subject)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ca-subject") from None
    if import_pkcs12 and (import_ca_cert or import_ca_key):
        raise click.UsageError("--import-pkcs12 and --import-ca-cert/--import-ca-key exclude each other")
    given = (ca_key_uri, ra_key_uri, ra_encryption_key_uri, tls_key_uri)
    defaults = (DEFAULT_CA_KEY_URI, DEFAULT_RA_KEY_URI, DEFAULT_RA_ENCRYPTION_KEY_URI, DEFAULT_TLS_KEY_URI)
    if not kms and (given != defaults or tls_key_file):
        raise click.UsageError(
            "--ca-key-uri, --ra-key-uri, --ra-encryption-key-uri, --tls-key-uri and --tls-key-file "
            "are about keys in the --kms token"
        )
    if tls_key_file and tls_key_uri != DEFAULT_TLS_KEY_URI:
        raise click.UsageError("--tls-key-file and --tls-key-uri exclude each other")
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
            separate_ra_keys=separate_ra_keys,
            kms=kms,
            ca_key_uri=ca_key_uri,
            ra_key_uri=ra_key_uri,
            ra_encryption_key_uri=ra_encryption_key_uri,
            tls_key_uri=None if tls_key_file else tls_key_uri,
        )
    )
    if result.replaced is not None:
        click.echo(f"replaced the previous CA; its files are in {result.replaced}", err=True)
    click.echo(f"initialised {result.data_dir}")
    click.echo(f"CA         {result.ca_subject}")
    click.echo(f"SHA-256    {result.ca_fingerprint}")
    click.echo(f"expires    {result.ca_not_after:%Y-%m-%d}")
    click.echo(f"config     {result.config_file}")
    if result.token_note is not None:
        click.echo(f"keys       {result.token_note}")
    if separate_ra_keys:
        click.echo("SCEP RA    separate keys: ra/ra.crt signs, ra/ra-encryption.crt decrypts")
    click.echo(f"trust this {result.ca_pem}")
