"""`gateway requests`, `gateway challenge` and `gateway scep`: SCEP approvals, one-time challenges and
the project's own SCEP client."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cli_support import F, actor, config_options, echo_to, open_cli_gateway
from gateway.output import FORMATS, render
from scep import client as scep_client
from scep.asn1 import Digest, PkiStatus
from scep.challenges import new_one_time_challenge
from scep.envelope import ContentCipher
from shared_ca.authority import utcnow
from shared_ca.ca_material import parse_subject
from shared_ca.keys import load_certificates
from shared_ca.serials import serial_hex


@click.group()
def requests() -> None:
    """SCEP and EST requests waiting for manual approval (profiles with approval = "manual")."""


@requests.command("list")
@config_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def requests_list(data_dir: Path, config_file: Path | None, fmt: str) -> None:
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


@requests.command("approve")
@config_options
@click.argument("request_id", type=int)
def requests_approve(data_dir: Path, config_file: Path | None, request_id: int) -> None:
    """Issue the certificate of a pending request; the device gets it at its next poll or retry."""
    gw = open_cli_gateway(data_dir, config_file)
    record = gw.approvals.approve(request_id, actor=actor())
    click.echo(f"approved request {request_id}: issued {record.serial_hex} ({record.subject})")


@requests.command("reject")
@config_options
@click.argument("request_id", type=int)
@click.option("--reason", default="rejected by an administrator", show_default=True)
def requests_reject(data_dir: Path, config_file: Path | None, request_id: int, reason: str) -> None:
    """Refuse a pending request; the device gets the refusal at its next poll or retry."""
    gw = open_cli_gateway(data_dir, config_file)
    gw.approvals.reject(request_id, reason, actor=actor())
    click.echo(f"rejected request {request_id}")


@click.command("challenge")
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
    gw = open_cli_gateway(data_dir, config_file)
    if profile_name is not None and profile_name not in gw.config.profiles:
        raise click.BadParameter(f"no profile {profile_name!r}", param_hint="--profile")
    profile = gw.config.profiles[profile_name] if profile_name else gw.config.default_profile
    if not profile.served_over("scep"):
        raise click.BadParameter(
            f"profile {profile.name!r} is not served over SCEP (its protocols: {list(profile.protocols)})",
            param_hint="--profile",
        )
    lifetime = _duration(ttl)
    secret = new_one_time_challenge(
        gw.store,
        device,
        profile.name,
        lifetime,
        uses,
        expected_subject,
        created_by=actor(),
        now=utcnow(),
    )
    click.echo(secret)


def _duration(text: str) -> dt.timedelta:
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    value = text.strip()
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit() or int(value[:-1]) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 1h or 7d", param_hint="--ttl")
    return dt.timedelta(**{units[value[-1]]: int(value[:-1])})


# -- scep (the project's own SCEP client) ---------------------------------------------------------


@click.group()
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
@click.option("--out", type=_FILE, help="Write the RA and CA certificates here (PEM).")
def scep_getcacert(url: str, cacert: Path | None, cipher: str, digest: str, out: Path | None) -> None:
    """Fetch the RA certificate and the CA chain (GetCACert) as PEM."""
    ra, chain = _scep_client(url, cacert).get_ca_certs()
    certs = [ra, *(c for c in chain if c != ra)]
    echo_to(b"".join(c.public_bytes(Encoding.PEM) for c in certs).decode("ascii"), out)


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
    name = _subject(subject)
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
