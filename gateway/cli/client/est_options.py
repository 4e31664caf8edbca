"""The options every `gateway client est` command shares: server, credentials, request and name options."""

from __future__ import annotations

import functools
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import click
from cryptography import x509
from cryptography.x509.oid import NameOID

from est.client import EstClient
from gateway.cli.support import FILE, F
from shared_ca.ca_material import parse_subject


@dataclass(frozen=True)
class EstTarget:
    """The server and the credentials every `gateway client est` command takes."""

    url: str
    cacert: Path | None
    label: str | None
    user: str | None
    password_stdin: bool
    cert: Path | None
    key: Path | None
    timeout: float

    def client(self, wait: float = 0.0) -> EstClient:
        if self.password_stdin != (self.user is not None):
            raise click.UsageError("--user and --password-stdin go together")
        if (self.cert is None) != (self.key is None):
            raise click.UsageError("--cert and --key go together")
        password = None
        if self.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise click.UsageError("--password-stdin: no password on standard input")
        return EstClient(
            self.url,
            self.cacert,
            label=self.label,
            username=self.user,
            password=password,
            cert_file=self.cert,
            key_file=self.key,
            timeout=self.timeout,
            wait=wait,
        )


def est_options(func: F) -> F:
    """--url, --cacert, --label, --user/--password-stdin, --cert/--key and --timeout, as one EstTarget."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        names = ("url", "cacert", "label", "user", "password_stdin", "cert", "key", "timeout")
        target = EstTarget(*(kwargs.pop(name) for name in names))
        return func(*args, target=target, **kwargs)

    options = [
        click.option("--url", required=True, help="EST server: https://HOST:PORT (or the full …/.well-known/est)."),
        click.option("--cacert", type=FILE, help="Trust this CA (PEM) for the server [default: the system store]."),
        click.option("--label", help="CA label: /.well-known/est/LABEL/ (a profile of this gateway)."),
        click.option("--user", help="HTTP Basic username."),
        click.option("--password-stdin", is_flag=True, help="Read the Basic password from the first line of stdin."),
        click.option("--cert", type=FILE, help="TLS client certificate (PEM)."),
        click.option("--key", type=FILE, help="Private key of --cert (PEM, unencrypted)."),
        click.option("--timeout", type=click.FloatRange(0.1), default=30.0, show_default=True, help="Seconds."),
    ]
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return cast(F, decorated)


def request_options(func: F) -> F:
    """--wait and --tls-unique, shared by the commands that send a CSR."""
    func = click.option(
        "--tls-unique",
        type=click.Choice(["auto", "yes", "no"]),
        default="auto",
        show_default=True,
        help="Put the TLS channel binding into the CSR (RFC 7030 §3.5); auto: when /csrattrs asks for it.",
    )(func)
    return click.option(
        "--wait",
        type=click.FloatRange(0),
        default=0.0,
        show_default=True,
        help="Seconds to keep retrying while the request awaits approval (HTTP 202).",
    )(func)


def name_options(func: F) -> F:
    """--subject/--cn and the SANs of a new CSR."""
    for option in reversed(
        [
            click.option("--subject", help="Subject (RFC 4514), such as 'CN=device1,O=Example'."),
            click.option("--cn", help="Subject common name (instead of --subject)."),
            click.option("--dns", multiple=True, help="DNS subjectAltName (repeatable)."),
            click.option("--ip", multiple=True, help="IP address subjectAltName (repeatable)."),
        ]
    ):
        func = option(func)
    return func


def subject_name(subject: str | None, cn: str | None) -> x509.Name:
    """The subject of a new CSR, from --subject or --cn (exactly one of them)."""
    if (subject is None) == (cn is None):
        raise click.UsageError("give --subject or --cn (one of them)")
    if cn is not None:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    try:
        return parse_subject(subject or "")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subject/--cn") from None


def subject_alt_names(dns: tuple[str, ...], ips: tuple[str, ...]) -> list[x509.GeneralName]:
    """The SANs of a new CSR, from --dns and --ip."""
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    try:
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ip") from None
    return names
