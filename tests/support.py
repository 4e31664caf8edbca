"""Helpers shared by the tests: keys, CSRs, a settable clock, a thread race."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import threading
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, func, select

from shared_ca.authority import CertificateAuthority, Issued
from shared_ca.authorization import Authorizer, CertificateRequest
from shared_ca.errors import PolicyDenied
from shared_ca.identity import DEFAULT_IDENTITY, certificate_sans
from shared_ca.keys import PrivateKey, PublicKey
from shared_ca.profiles import Profile
from shared_ca.storage.certificates import CertificateRecord, Certificates
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import certificates
from shared_ca.trust import recognise


class SettableClock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime | None = None) -> None:
        self.now = now or dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


_RSA_CACHE: dict[int, rsa.RSAPrivateKey] = {}


def storage_of(authority: CertificateAuthority) -> Storage:
    """The repositories of the database an authority of the tests records in."""
    assert isinstance(authority.certificates, Certificates)
    return Storage.open(authority.certificates.db.engine)


def rsa_key(bits: int = 2048, *, fresh: bool = False) -> rsa.RSAPrivateKey:
    """An RSA key; cached per size unless `fresh` (RSA generation is slow)."""
    if fresh or bits not in _RSA_CACHE:
        key = rsa.generate_private_key(65537, bits)
        if fresh:
            return key
        _RSA_CACHE[bits] = key
    return _RSA_CACHE[bits]


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def subject(cn: str | None = "device1", **extra: str) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn is not None else []
    oids = {
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "C": NameOID.COUNTRY_NAME,
        "title": NameOID.TITLE,
        "pseudonym": NameOID.PSEUDONYM,
    }
    attrs += [x509.NameAttribute(oids[k], v) for k, v in extra.items()]
    return x509.Name(attrs)


def make_csr(
    key: PrivateKey | None = None,
    name: x509.Name | None = None,
    *,
    dns: list[str] | None = None,
    ips: list[str] | None = None,
    emails: list[str] | None = None,
    uris: list[str] | None = None,
) -> x509.CertificateSigningRequest:
    """A signed CSR; SANs in an extensionRequest when given."""
    key = key or ec_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(name if name is not None else subject())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
    sans += [x509.RFC822Name(e) for e in emails or []]
    sans += [x509.UniformResourceIdentifier(u) for u in uris or []]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(Encoding.PEM)


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(Encoding.DER)


def run_together(count: int, attempt: Callable[[int], object]) -> tuple[list[object], list[BaseException]]:
    """Run `attempt(i)` on `count` threads released at once; (results, exceptions)."""
    start = threading.Barrier(count)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        start.wait(30)
        try:
            outcome = attempt(i)
        except BaseException as exc:  # collected for the assertions
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results, errors


def multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(content type, decoded payload) of each part of a multipart body, read by Python's email parser
    (independent of the product's own code)."""
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode("ascii") + b"\r\n\r\n" + body, policy=email.policy.HTTP
    )
    assert message.is_multipart(), content_type
    parts: list[tuple[str, bytes]] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts.append((part.get_content_type(), payload))
    return parts


def issued_count(engine: Engine) -> int:
    """Rows in the certificates table: what a refusal must leave unchanged."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(certificates)).scalar_one())


def renew(
    authority: CertificateAuthority,
    current: CertificateRecord,
    public_key: PublicKey,
    profile: Profile,
    *,
    protocol: str = "est",
    actor: str = "device",
) -> Issued:
    """Renew `current` the way a device holding it would: recognised, authorized by the Authorizer (its own
    profile, subject and SANs, `profile`'s renewal rules), then issued by the CA."""
    held = x509.load_der_x509_certificate(current.der)
    recognised = recognise(storage_of(authority), held, authority.clock())
    if recognised is None:
        raise PolicyDenied("the certificate to renew was not issued by this CA")
    authorizer = Authorizer(DEFAULT_IDENTITY, default_profile=profile.name, clock=authority.clock)
    request = CertificateRequest(held.subject, tuple(certificate_sans(held)), public_key)
    authorization = authorizer.authorize(authorizer.certificate_principal(recognised), profile, protocol, request)
    return authority.issue(authorization.policy, protocol=protocol, actor=actor, renewal_of=authorization.renewal_of)
