"""`gateway client est cacerts|csrattrs|enroll|reenroll|serverkeygen`: the project's own EST client
(est/client.py), to test an EST server (this one or another).

Thin commands: parse the options, call EstClient, write PEM files, print one summary line.
Every EstClientError becomes one line on stderr and exit status 1 (gateway.cli.support.GatewayGroup).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from est.client import EnrollResult, EstClient, EstClientError, EstPendingError
from est.client_messages import CsrAttrs
from gateway.cli.client.est_options import (
    EstTarget,
    est_options,
    name_options,
    request_options,
    subject_alt_names,
    subject_name,
)
from gateway.cli.support import FILE, echo_to
from shared_ca.keys import (
    KeyType,
    PrivateKey,
    generate_private_key,
    load_certificates,
    load_private_key,
    write_private_key,
    write_secret_file,
)
from shared_ca.serials import serial_hex

KEY_TYPES = ["rsa2048", "rsa3072", "p256", "p384"]
_OID_NAMES = {  # what csrattrs commonly lists and cryptography does not name
    "1.2.840.10045.3.1.7": "P-256",
    "1.3.132.0.34": "P-384",
    "1.3.132.0.35": "P-521",
    "1.2.840.113549.1.9.14": "extensionRequest",
    "1.3.6.1.1.1.1.22": "macAddress",
}


@click.group("est")
def est() -> None:
    """EST client (RFC 7030), to test an EST server."""


# -- helpers --------------------------------------------------------------------------------------


def _key_path(key_out: Path | None, out: Path | None) -> Path:
    """--key-out, else --out with the extension .key."""
    if key_out is not None:
        return key_out
    if out is None:
        raise click.UsageError("give --out or --key-out: the private key needs a file")
    return out.with_suffix(".key") if out.suffix != ".key" else out.with_name(out.name + ".key")


def _load_or_create_key(path: Path, key_type: str) -> tuple[PrivateKey, bool]:
    """The key in `path` (a re-run after a 202 must send the same request: the same key, and as CSR
    signatures are deterministic, the same CSR), or a new one written there (0600) before the
    request is sent; True when new."""
    if path.exists():
        click.echo(f"using the existing key {path}", err=True)
        return load_private_key(path, None), False
    key = generate_private_key(KeyType(key_type))
    write_private_key(path, key, None)
    return key, True


def _enroll_key(
    client: EstClient, key: PrivateKey, name: x509.Name, sans: list[x509.GeneralName], options: _KeyRequest
) -> EnrollResult:
    """enroll_with_key; a pending request keeps the key file, a refused one removes the key made for it."""
    try:
        return client.enroll_with_key(
            key, name, sans, link_channel=_link(options.tls_unique, client), reenroll=options.reenroll
        )
    except EstPendingError as exc:
        raise _pending(exc, options.key_path) from None
    except EstClientError:
        if options.created and options.key_path is not None:
            options.key_path.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class _KeyRequest:
    key_path: Path | None
    created: bool
    tls_unique: str
    reenroll: bool


def _link(choice: str, client: EstClient) -> bool:
    if choice != "auto":
        return choice == "yes"
    try:
        return client.csrattrs().asks_for_channel_binding
    except EstClientError:
        return False


def _issued(result: EnrollResult, out: Path | None, key_path: Path | None) -> None:
    cert = result.certificate
    echo_to(cert.public_bytes(Encoding.PEM).decode("ascii"), out)
    where = f"; key in {key_path}" if key_path is not None else ""
    click.echo(
        f"issued serial {serial_hex(cert.serial_number)} to {cert.subject.rfc4514_string()}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z{where}",
        err=out is None,
    )


def _pending(exc: EstPendingError, key_path: Path | None) -> click.ClickException:
    kept = f"; the key stays in {key_path} for the next run" if key_path is not None else ""
    return click.ClickException(f"{exc}: run the same command again later, or pass --wait SECONDS{kept}")


# -- commands -------------------------------------------------------------------------------------


@est.command("cacerts")
@est_options
@click.option("--out", type=FILE, help="Write the CA certificates here (PEM; default stdout).")
def est_cacerts(target: EstTarget, out: Path | None) -> None:
    """Fetch the CA certificates (/cacerts) as PEM."""
    with target.client() as client:
        certs = client.cacerts()
    echo_to(b"".join(c.public_bytes(Encoding.PEM) for c in certs).decode("ascii"), out)
    if out is not None:
        click.echo(f"{len(certs)} certificate(s): " + "; ".join(c.subject.rfc4514_string() for c in certs))


@est.command("csrattrs")
@est_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def est_csrattrs(target: EstTarget, fmt: str) -> None:
    """Show what the server wants in a CSR (/csrattrs), one OID or attribute a line."""
    with target.client() as client:
        attrs = client.csrattrs()
    if fmt == "json":
        click.echo(json.dumps(_attrs_json(attrs), indent=2))
        return
    if not attrs.oids and not attrs.attributes:
        click.echo("(no CSR attributes)")
    for oid in attrs.oids:
        click.echo(f"oid        {oid} ({_oid_name(oid)})")
    for oid, values in attrs.attributes:
        shown = ", ".join(_value_text(value) for value in values)
        click.echo(f"attribute  {oid} ({_oid_name(oid)}) = {shown}")


def _oid_name(dotted: str) -> str:
    name = _OID_NAMES.get(dotted) or x509.ObjectIdentifier(dotted)._name
    return "unknown" if name == "Unknown OID" else name


def _value_text(der: bytes) -> str:
    """An OID value by number and name, an INTEGER (an RSA key size) as a number, else hex DER (shortened)."""
    try:
        if der[:1] == b"\x06":
            dotted = str(core.ObjectIdentifier.load(der).dotted)
            return f"{dotted} ({_oid_name(dotted)})"
        if der[:1] == b"\x02":
            return f"INTEGER {int(core.Integer.load(der).native)}"
    except ValueError:
        pass
    text = der.hex()
    return text if len(text) <= 80 else text[:77] + "..."


def _attrs_json(attrs: CsrAttrs) -> dict[str, Any]:
    return {
        "channel_binding": attrs.asks_for_channel_binding,
        "oids": [{"oid": oid, "name": _oid_name(oid)} for oid in attrs.oids],
        "attributes": [
            {"oid": oid, "name": _oid_name(oid), "values": [value.hex() for value in values]}
            for oid, values in attrs.attributes
        ],
    }


@est.command("enroll")
@est_options
@name_options
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="p256", show_default=True, help="Type of a new key.")
@click.option(
    "--key-out", type=FILE, help="The key file: re-used when it exists, else created (0600) [default: OUT.key]."
)
@click.option("--csr", "csr_file", type=FILE, help="Send this ready CSR (PEM or DER) instead of making key and CSR.")
@click.option("--out", type=FILE, help="Write the certificate here (PEM; default stdout).")
@request_options
def est_enroll(
    target: EstTarget,
    subject: str | None,
    cn: str | None,
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    key_type: str,
    key_out: Path | None,
    csr_file: Path | None,
    out: Path | None,
    wait: float,
    tls_unique: str,
) -> None:
    """Enroll for a new certificate (/simpleenroll), with a new key or a ready CSR."""
    with target.client(wait) as client:
        if csr_file is not None:
            if subject or cn or dns or ip or key_out or tls_unique == "yes":
                raise click.UsageError("--csr excludes --subject, --cn, --dns, --ip, --key-out and --tls-unique yes")
            try:
                data = csr_file.read_bytes()
            except OSError as exc:
                raise click.BadParameter(f"cannot read {csr_file}: {exc.strerror}", param_hint="--csr") from None
            _issued(client.simpleenroll(data), out, None)
            return
        name, sans = subject_name(subject, cn), subject_alt_names(dns, ip)
        key_path = _key_path(key_out, out)
        key, created = _load_or_create_key(key_path, key_type)
        result = _enroll_key(client, key, name, sans, _KeyRequest(key_path, created, tls_unique, reenroll=False))
    _issued(result, out, key_path)


@est.command("reenroll")
@est_options
@click.option("--rekey", is_flag=True, help="Certify a new key (written to --key-out) instead of the current one.")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="p256", show_default=True, help="With --rekey.")
@click.option("--key-out", type=FILE, help="With --rekey: the new key (re-used when it exists) [default: OUT.key].")
@click.option("--out", type=FILE, help="Write the new certificate here (PEM; default stdout).")
@request_options
def est_reenroll(
    target: EstTarget, rekey: bool, key_type: str, key_out: Path | None, out: Path | None, wait: float, tls_unique: str
) -> None:
    """Renew the --cert/--key certificate (/simplereenroll, authenticated by it): same subject and SANs."""
    if target.cert is None or target.key is None:
        raise click.UsageError("reenroll needs --cert and --key: the certificate to renew authenticates the request")
    current = load_certificates(target.cert)[0]
    try:
        sans = list(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    key_path, created = None, False
    if rekey:
        key_path = _key_path(key_out, out)
        if key_path.resolve() == target.key.resolve():
            raise click.UsageError("--key-out must differ from --key: the current key authenticates the request")
        key, created = _load_or_create_key(key_path, key_type)
    elif key_out is not None:
        raise click.UsageError("--key-out goes with --rekey")
    else:
        key = load_private_key(target.key, None)
    with target.client(wait) as client:
        request = _KeyRequest(key_path, created, tls_unique, reenroll=True)
        result = _enroll_key(client, key, current.subject, sans, request)
    _issued(result, out, key_path)


@est.command("serverkeygen")
@est_options
@name_options
@click.option(
    "--key-type", type=click.Choice(KEY_TYPES), default="p256", show_default=True, help="Key type to ask for."
)
@click.option("--key-out", type=FILE, help="Write the server's key here (0600; must not exist) [default: OUT.key].")
@click.option("--out", type=FILE, help="Write the certificate here (PEM; default stdout).")
@request_options
def est_serverkeygen(
    target: EstTarget,
    subject: str | None,
    cn: str | None,
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    key_type: str,
    key_out: Path | None,
    out: Path | None,
    wait: float,
    tls_unique: str,
) -> None:
    """Have the server generate key and certificate (/serverkeygen); write both."""
    name, sans = subject_name(subject, cn), subject_alt_names(dns, ip)
    key_path = _key_path(key_out, out)
    if key_path.exists():
        raise click.UsageError(f"{key_path} exists; remove it or choose another --key-out")
    signing_key = generate_private_key(KeyType(key_type))  # signs the CSR; its type is the server's hint
    with target.client(wait) as client:
        try:
            result = client.serverkeygen_with_key(signing_key, name, sans, link_channel=_link(tls_unique, client))
        except EstPendingError as exc:
            raise _pending(exc, None) from None
    if result.private_key is not None:
        write_private_key(key_path, result.private_key, None)
    else:
        assert result.encrypted_key is not None
        write_secret_file(key_path, result.encrypted_key)
        click.echo(
            f"the server encrypted the key (CMS, DER) in {key_path}: open it with `openssl cms -decrypt`", err=True
        )
    _issued(EnrollResult(result.certificate, result.chain), out, key_path)
