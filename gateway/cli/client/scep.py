"""`gateway client scep getcaps|getcacert|enroll|renew|poll`: the project's own SCEP client (scep/client.py)."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cli.support import FILE, F, echo_to
from scep import client as scep_client
from scep.asn1 import Digest, PkiStatus
from scep.envelope import ContentCipher
from shared_ca.ca_material import parse_subject
from shared_ca.keys import load_certificates
from shared_ca.serials import serial_hex


@click.group("scep")
def scep() -> None:
    """SCEP client (RFC 8894), to test a SCEP server."""


def scep_options(func: F) -> F:
    """--url, --cacert, --cipher and --digest, shared by every `gateway client scep` command."""
    for decorator in reversed(
        [
            click.option("--url", required=True, help="SCEP URL, such as http://HOST:8080/scep."),
            click.option("--cacert", type=FILE, help="Trust this CA (PEM) for an https:// URL."),
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


def _subject(text: str) -> x509.Name:
    try:
        return parse_subject(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subject") from None


def _scep_client(url: str, cacert: Path | None) -> scep_client.ScepHttpClient:
    return scep_client.ScepHttpClient(url, ssl_context=scep_client.tls_context(cacert))


def _scep_result(result: scep_client.EnrollResult, out: Path | None) -> None:
    """Write the certificate and print its serial; exit 1 with one line on FAILURE or PENDING."""
    if result.status is not PkiStatus.SUCCESS or result.certificate is None:
        raise click.ClickException(scep_client.describe(result))
    echo_to(result.certificate.public_bytes(Encoding.PEM).decode("ascii"), out)
    click.echo(f"SUCCESS serial {serial_hex(result.certificate.serial_number)}", err=out is None)


@scep.command("getcaps")
@scep_options
def scep_getcaps(url: str, cacert: Path | None, cipher: str, digest: str) -> None:
    """Print the server's capabilities (GetCACaps), one a line."""
    for cap in _scep_client(url, cacert).get_ca_caps():
        click.echo(cap)


@scep.command("getcacert")
@scep_options
@click.option("--out", type=FILE, help="Write the RA and CA certificates here (PEM).")
def scep_getcacert(url: str, cacert: Path | None, cipher: str, digest: str, out: Path | None) -> None:
    """Fetch the RA certificate (with separate roles: the encryption, then the signing RA) and the CA
    chain (GetCACert) as PEM."""
    ras = _scep_client(url, cacert).ra_certificates()
    certs = list(dict.fromkeys([ras.recipient, ras.signer, *ras.chain]))
    echo_to(b"".join(c.public_bytes(Encoding.PEM) for c in certs).decode("ascii"), out)


@scep.command("enroll")
@scep_options
@click.option("--challenge", help="Challenge password.")
@click.option("--subject", default="CN=scep-client", show_default=True, help="Subject (RFC 4514).")
@click.option("--key", "key_file", type=FILE, required=True, help="RSA key; a new RSA-2048 key if missing.")
@click.option("--out", type=FILE, help="Write the certificate here (PEM; default stdout).")
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
    name = _subject(subject)
    client = _scep_client(url, cacert)
    key, _created = scep_client.load_or_create_rsa_key(key_file)
    result = scep_client.enroll(
        client, key=key, subject=name, challenge=challenge, cipher=ContentCipher(cipher), digest=Digest(digest)
    )
    _scep_result(result, out)


@scep.command("renew")
@scep_options
@click.option("--key", "key_file", type=FILE, required=True, help="Key of the current certificate.")
@click.option("--cert", "cert_file", type=FILE, required=True, help="The current certificate (PEM).")
@click.option("--new-key", "new_key_file", type=FILE, help="Rekey: certify this key (a new RSA-2048 if missing).")
@click.option("--out", type=FILE, help="Write the new certificate here (PEM; default stdout).")
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
@click.option("--key", "key_file", type=FILE, required=True, help="Key of the pending request.")
@click.option("--subject", required=True, help="Subject of the pending request (RFC 4514).")
@click.option("--transaction-id", required=True, help="transactionID printed by `enroll`.")
@click.option("--out", type=FILE, help="Write the certificate here (PEM; default stdout).")
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
    name = _subject(subject)
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
