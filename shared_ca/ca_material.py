"""Creating and importing CA material, and registering a CA certificate as an issuer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

from shared_ca.authority import fingerprint, signature_hash
from shared_ca.errors import KeyMaterialError
from shared_ca.keys import PrivateKey, key_matches_certificate, parse_private_key
from shared_ca.serials import new_serial
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.issuers import IssuerRecord, NewIssuer


@dataclass(frozen=True)
class CAMaterial:
    """A CA key and certificate, with the certificates above it (empty for a root)."""

    key: PrivateKey
    certificate: x509.Certificate
    parents: tuple[x509.Certificate, ...] = ()

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return (self.certificate, *self.parents)


def parse_subject(text: str) -> x509.Name:
    """An RFC 4514 subject such as 'CN=Gateway CA,O=Example'; ValueError naming the problem."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        reason = f": {exc}" if str(exc) else ""  # cryptography often gives no text
        raise ValueError(f"{text!r} is not an RFC 4514 name such as 'CN=Gateway CA,O=Example'{reason}") from None
    if not name.rdns:
        raise ValueError("the subject is empty")
    return name


def create_root_ca(key: PrivateKey, subject: x509.Name, days: int, now: dt.datetime) -> CAMaterial:
    """A new self-signed CA that issues end-entity certificates only (pathLen 0)."""
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, signature_hash(key))
    )
    return CAMaterial(key, cert)


def check_ca_material(material: CAMaterial, now: dt.datetime) -> None:
    """Refuse a key that does not match its certificate, or a certificate that cannot act as a CA."""
    cert = material.certificate
    if not key_matches_certificate(material.key, cert):
        raise KeyMaterialError("the CA private key does not match the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise KeyMaterialError("the CA certificate has no basicConstraints extension: it is not a CA") from None
    if not constraints.ca:
        raise KeyMaterialError("the CA certificate has basicConstraints cA=FALSE: it is not a CA")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign or not usage.crl_sign:
            raise KeyMaterialError("the CA certificate's key usage lacks keyCertSign or cRLSign")
    except x509.ExtensionNotFound:
        pass
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise KeyMaterialError("the CA certificate has no subjectKeyIdentifier extension") from None
    if cert.not_valid_after_utc <= now:
        raise KeyMaterialError(f"the CA certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")


def material_from_pem(certs: list[x509.Certificate], key: PrivateKey, now: dt.datetime) -> CAMaterial:
    """Imported PEM: the certificate matching `key` is the CA, the others its parents."""
    matching = [c for c in certs if key_matches_certificate(key, c)]
    if not matching:
        raise KeyMaterialError("the CA private key does not match any certificate in the CA certificate file")
    ca = matching[0]
    material = CAMaterial(key, ca, tuple(c for c in certs if c is not ca))
    check_ca_material(material, now)
    return material


def material_from_pkcs12(data: bytes, password: bytes | None, now: dt.datetime) -> CAMaterial:
    """Imported PKCS#12: its key, its certificate and any additional certificates."""
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        raise KeyMaterialError("cannot open the PKCS#12 file: wrong password or not PKCS#12") from exc
    if key is None or cert is None:
        raise KeyMaterialError("the PKCS#12 file must hold both the CA key and its certificate")
    der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    checked = parse_private_key(der, None, source="the PKCS#12 file")
    material = CAMaterial(checked, cert, tuple(extra))
    check_ca_material(material, now)
    return material


class IssuerRegistry(Protocol):
    """The issuer storage `register_issuer` writes (shared_ca.storage.issuers)."""

    def add_issuer(self, issuer: NewIssuer, event: AuditEvent, now: dt.datetime) -> IssuerRecord: ...


def register_issuer(
    issuers: IssuerRegistry,
    name: str,
    cert: x509.Certificate,
    *,
    kind: str,
    actor: str,
    now: dt.datetime,
    trust_until: dt.datetime | None = None,
) -> IssuerRecord:
    """Record a CA certificate as an issuer (kind 'ca' for ours, 'legacy' for an imported CA)."""
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    issuer = NewIssuer(
        name=name,
        kind=kind,
        subject=cert.subject.rfc4514_string(),
        ski_hex=ski,
        fingerprint_sha256=fingerprint(cert),
        cert_der=cert.public_bytes(Encoding.DER),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        trust_until=trust_until,
    )
    event = AuditEvent(actor, "issuer.added", detail={"name": name, "kind": kind, "subject": issuer.subject})
    return issuers.add_issuer(issuer, event, now)
