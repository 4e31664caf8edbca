"""The world of tests/test_security_matrix.py: one `gateway serve` with the principals of docs/security.md.

`build_world` initialises a data directory (RSA CA, so SCEP works; a static SCEP challenge for the
default profile), adds the profiles `wifi`, `servers` and `strict`, creates the EST users and a
one-time SCEP challenge with the CLI, starts the server, and obtains the device certificates the
certificate rows present: CN=dev-1 over EST, and RSA certificates over SCEP. The request helpers
speak to the real listeners (EST over HTTPS, SCEP over plain HTTP); the ledger helpers read what the
server stored, so a row can tell that nothing was issued.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AttributeOID, NameOID
from sqlalchemy import select

from gateway.config import load_config
from gateway.runtime import open_storage
from scep.asn1 import Digest, MessageType
from scep.client_messages import CertRepReply, build_pki_request, parse_cert_rep, read_certs_only, self_signed_signer
from scep.envelope import ContentCipher
from shared_ca.keys import PrivateKey
from shared_ca.storage.enrollment_records import EnrollmentRecord
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import certificates
from tests.test_est_auth_matrix import Answer, basic, est_path
from tests.test_serve import (
    REPO,
    Server,
    child_env,
    fetch,
    free_ports,
    gateway_command,
    start_server,
    stop_server,
    tls_context,
    write_client_credentials,
)

STATIC_CHALLENGE = "Matrix-Static-Challenge-1"  # the default profile's static SCEP challenge
WIFI_CHALLENGE = "Matrix-Wifi-Challenge-2"
STRICT_CHALLENGE = "Matrix-Strict-Challenge-3"
PASSWORD = "Matrix-User-Password-4"
USERS: dict[str, tuple[str, ...]] = {
    "enroller": (),  # no --label: the default label only
    "wifi-user": ("--label", "wifi"),
    "server-admin": ("--label", "servers"),
}
BOOTSTRAP_USER, BOOTSTRAP_DEVICE = "boot-user", "boot-dev"
OTC_DEVICE = "otc-dev"
PROFILES = f"""
[profiles.wifi]
description = "an ordinary client profile with a challenge of its own"
scep_challenge = "{WIFI_CHALLENGE}"

[profiles.servers]
description = "server certificates, opened to EST by configuration"
extended_key_usage = ["server_auth"]
protocols = ["est"]
cn_as_dns_san = true
san_types = ["dns"]

[profiles.strict]
description = "a new key on every renewal"
allow_key_reuse = false
scep_challenge = "{STRICT_CHALLENGE}"
"""
PKI_MESSAGE = "application/x-pki-message"
COMMAND_SECONDS = 60.0

Credentials = tuple[Path, Path]  # (certificate PEM, private key PEM)


@dataclass(frozen=True)
class Held:
    """A certificate the gateway issued to a device, with its key and the files a TLS client loads."""

    certificate: x509.Certificate
    key: PrivateKey
    files: Credentials

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")


@dataclass
class World:
    """The running server and every credential of the matrix."""

    server: Server
    workdir: Path
    store: Storage
    ra: x509.Certificate
    ca: x509.Certificate
    bootstrap_secret: str
    one_time_challenge: str
    label_refusal: subprocess.CompletedProcess[str]  # `est-user add ... --label tls-server`
    est_device: Held | None = None  # CN=dev-1, DNS dev-1.example, over EST by `enroller`
    scep_device: Held | None = None  # CN=scep-dev, DNS scep-dev.example, over SCEP (static challenge)
    strict_scep: Held | None = None  # CN=strict-scep under `strict`, over SCEP: its SCEP renewals
    strict_est: Held | None = None  # CN=strict-est under `strict`, over SCEP: its EST renewals

    def held(self, name: str) -> Held:
        found: Held | None = getattr(self, name)
        assert found is not None, f"the world has no {name}"
        return found


# -- requests ---------------------------------------------------------------------------------------


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def csr_der(
    key: PrivateKey,
    subject: x509.Name,
    *,
    dns: Sequence[str] = (),
    emails: Sequence[str] = (),
    challenge: str | None = None,
) -> bytes:
    """A PKCS#10 request (DER): SANs in an extensionRequest, a challengePassword when given."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns] + [x509.RFC822Name(e) for e in emails]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    der: bytes = builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)
    return der


def est_post(
    world: World,
    operation: str,
    body: bytes,
    *,
    label: str | None = None,
    auth: tuple[str, str] | None = None,
    client: Credentials | None = None,
    content_type: str = "application/pkcs10",
) -> Answer:
    """POST to an EST operation over the HTTPS listener, with Basic credentials and/or a client certificate."""
    headers = {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = basic(*auth)
    reply = fetch(
        world.server.https_port,
        est_path(operation, label),
        context=tls_context(world.server.ca_pem, client=client),
        method="POST",
        body=body,
        headers=headers,
    )
    return Answer(reply.status, reply.headers, reply.body)


@dataclass(frozen=True)
class Sent:
    """A pkiMessage we built, with what reading its CertRep needs."""

    der: bytes
    key: rsa.RSAPrivateKey
    signer: x509.Certificate
    transaction_id: str
    nonce: bytes


def scep_message(
    world: World,
    message_type: MessageType,
    content_der: bytes,
    *,
    key: rsa.RSAPrivateKey,
    signer: x509.Certificate | None = None,
) -> Sent:
    """A pkiMessage enveloped to the RA, signed by `key` with `signer` (default: a self-signed certificate)."""
    signer = signer or self_signed_signer(key, x509.load_der_x509_csr(content_der).subject)
    transaction_id, nonce = uuid.uuid4().hex, os.urandom(16)
    der = build_pki_request(
        message_type,
        content_der=content_der,
        signer_cert=signer,
        signer_key=key,
        recipient_cert=world.ra,
        transaction_id=transaction_id,
        sender_nonce=nonce,
        digest=Digest.SHA256,
        content_cipher=ContentCipher.AES256,
    )
    return Sent(der, key, signer, transaction_id, nonce)


def scep_post(world: World, path: str, sent: Sent) -> Answer:
    """POST a PKIOperation to the plain-HTTP listener."""
    reply = fetch(
        world.server.http_port,
        f"{path}?operation=PKIOperation",
        method="POST",
        body=sent.der,
        headers={"Content-Type": PKI_MESSAGE},
    )
    return Answer(reply.status, reply.headers, reply.body)


def cert_rep(world: World, answer: Answer, sent: Sent) -> CertRepReply:
    """The CertRep of a 200 answer, its RA signature verified and its envelope opened."""
    assert answer.status == 200, answer
    assert answer.headers.get("content-type") == PKI_MESSAGE, answer.headers
    reply = parse_cert_rep(answer.body, ra_cert=world.ra, signer_key=sent.key, signer_cert=sent.signer)
    assert (reply.transaction_id, reply.recipient_nonce) == (sent.transaction_id, sent.nonce), reply
    return reply


def issued_for(certs: Sequence[x509.Certificate], key: PrivateKey) -> x509.Certificate:
    """The one certificate of `certs` that certifies `key`."""
    found = [c for c in certs if c.public_key() == key.public_key()]
    assert len(found) == 1, certs
    return found[0]


# -- what the server stored -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    """The serials in the certificates table and the newest enrollment event, before a request."""

    serials: frozenset[str]
    last_event: int


def stored_serials(store: Storage) -> dict[str, tuple[str, str]]:
    """Every row of the certificates table: serial → (profile, protocol)."""
    query = select(certificates.c.serial_hex, certificates.c.profile, certificates.c.protocol)
    with store.engine.connect() as conn:
        return {row.serial_hex: (row.profile, row.protocol) for row in conn.execute(query)}


def ledger(store: Storage) -> Ledger:
    newest = store.enrollments.enrollment_events(limit=1)
    return Ledger(frozenset(stored_serials(store)), newest[0].id if newest else 0)


def issued_since(store: Storage, before: Ledger) -> dict[str, tuple[str, str]]:
    return {serial: row for serial, row in stored_serials(store).items() if serial not in before.serials}


def events_since(store: Storage, before: Ledger) -> list[EnrollmentRecord]:
    return [e for e in reversed(store.enrollments.enrollment_events(limit=50)) if e.id > before.last_event]


def logged_messages(server: Server) -> list[str]:
    """The messages of the server's JSON log records (its stderr)."""
    messages = []
    for line in server.stderr_text().splitlines():
        if line.startswith("{"):
            record: dict[str, Any] = json.loads(line)
            messages.append(str(record.get("message", "")))
    return messages


# -- the world --------------------------------------------------------------------------------------


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )


def _prepare(data_dir: Path) -> tuple[str, str, subprocess.CompletedProcess[str]]:
    """The CLI's part, run side by side (each start costs a second or two): the EST users, the bootstrap
    user, the one-time SCEP challenge, and an EST user for `tls-server`, which the CLI must refuse.
    Returns (bootstrap secret, one-time challenge, the refused `est-user add`)."""
    where = ("--data-dir", str(data_dir))
    password = PASSWORD + "\n"
    commands: list[tuple[tuple[str, ...], str | None]] = [
        (("est-user", "add", user, "--password-stdin", *options, *where), password) for user, options in USERS.items()
    ]
    commands += [
        (("est-user", "add", BOOTSTRAP_USER, "--generate", "--device", BOOTSTRAP_DEVICE, "--uses", "1", *where), None),
        (("challenge", "add", "--device", OTC_DEVICE, *where), None),
        (("est-user", "add", "tls-admin", "--password-stdin", "--label", "tls-server", *where), password),
    ]
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        *made, refused = pool.map(lambda command: _cli(*command[0], stdin=command[1]), commands)
    for result in made:
        assert result.returncode == 0, (result.args, result.stderr)
    bootstrap, challenge = made[-2].stdout.strip(), made[-1].stdout.strip()
    assert bootstrap and challenge, (made[-2].stdout, made[-1].stdout)
    return bootstrap, challenge, refused


def _ra_and_ca(server: Server) -> tuple[x509.Certificate, x509.Certificate]:
    reply = fetch(server.http_port, "/scep?operation=GetCACert")
    assert reply.status == 200, reply
    certs, _crls = read_certs_only(reply.body)
    ra, ca = certs[0], certs[1]
    assert ra.issuer == ca.subject
    return ra, ca


def _enroll_over_est(world: World, cn: str, dns: Sequence[str]) -> Held:
    key = ec.generate_private_key(ec.SECP256R1())
    body = base64.encodebytes(csr_der(key, name(cn), dns=dns))
    answer = est_post(world, "simpleenroll", body, auth=("enroller", PASSWORD))
    assert answer.status == 200, answer
    (certificate,) = read_certs_only(base64.b64decode(answer.body))[0]
    return Held(certificate, key, write_client_credentials(world.workdir, cn, certificate, key))


def _enroll_over_scep(world: World, cn: str, challenge: str, path: str, dns: Sequence[str] = ()) -> Held:
    key = rsa.generate_private_key(65537, 2048)
    sent = scep_message(world, MessageType.PKCSReq, csr_der(key, name(cn), dns=dns, challenge=challenge), key=key)
    certificate = issued_for(cert_rep(world, scep_post(world, path, sent), sent).certificates, key)
    return Held(certificate, key, write_client_credentials(world.workdir, cn, certificate, key))


def build_world(workdir: Path) -> World:
    """Initialise, configure, start the server and obtain the device certificates (see the module docstring)."""
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)  # certificates name the HTTP port: pick it before init
    done = gateway_command(
        "init",
        "--data-dir",
        str(data_dir),
        "--ca-key-type",
        "rsa2048",
        "--scep-challenge",
        STATIC_CHALLENGE,
        "--public-base-url",
        f"http://127.0.0.1:{http_port}",
    )
    assert done.returncode == 0, done.stderr
    with (data_dir / "config.toml").open("a", encoding="utf-8") as config:
        config.write(PROFILES)
    bootstrap, challenge, refused = _prepare(data_dir)
    server = start_server(data_dir, workdir, http_port=http_port)
    try:
        store = open_storage(load_config(data_dir, environ={}))
        ra, ca = _ra_and_ca(server)
        world = World(server, workdir, store, ra, ca, bootstrap, challenge, refused)
        world.est_device = _enroll_over_est(world, "dev-1", ["dev-1.example"])
        world.scep_device = _enroll_over_scep(world, "scep-dev", STATIC_CHALLENGE, "/scep", ["scep-dev.example"])
        world.strict_scep = _enroll_over_scep(world, "strict-scep", STRICT_CHALLENGE, "/scep/strict")
        world.strict_est = _enroll_over_scep(world, "strict-est", STRICT_CHALLENGE, "/scep/strict")
    except BaseException:
        stop_server(server)
        raise
    return world


def close_world(world: World) -> None:
    stop_server(world.server)
    world.store.engine.dispose()
