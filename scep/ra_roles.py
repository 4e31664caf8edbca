"""The SCEP RA's two roles: signing CertReps, and opening the envelopes requests are sealed in.

One RA certificate and key usually does both (key usage digitalSignature and keyEncipherment). Keys
that may only sign or only decrypt (some FIPS HSMs) need two RAs instead: a signing RA
(digitalSignature only) and an encryption RA (keyEncipherment only). GetCACert then carries both
before the CA chain (the CA/RA certificate response of RFC 8894 §4.2.1.2), and clients tell them
apart by key usage: the envelope recipient is the RA certificate with keyEncipherment (certmonger takes
the leaf with keyEncipherment or dataEncipherment; micromdm's scepclient encrypts to every certificate
it got), and a CertRep is verified with the certificate its SignerInfo names, which the CertRep carries.

Server and client side both live here; the module does no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

_ENCIPHERMENT = ("key_encipherment", "data_encipherment")


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def allows(cert: x509.Certificate, usage: str) -> bool:
    """Whether `cert`'s key usage allows `usage` ('digital_signature', 'key_encipherment', …); a
    certificate without the extension allows every usage (RFC 5280 §4.2.1.3)."""
    found = _key_usage(cert)
    return found is None or bool(getattr(found, usage))


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def separate_roles_problem(signing: x509.Certificate, encryption: x509.Certificate) -> str | None:
    """Why `signing` and `encryption` cannot serve as the signing and the encryption RA; None when they can.

    Both come from one CA. A client picks the envelope recipient by key usage, so the signing
    certificate must allow no encipherment (a client could otherwise encrypt to the key that may not
    decrypt) and the encryption certificate must allow keyEncipherment (RSA key transport)."""
    if _spki(signing) == _spki(encryption):
        return "the signing and the encryption RA certificates hold the same key"
    if signing.issuer != encryption.issuer or _authority_key_id(signing) != _authority_key_id(encryption):
        return (
            f"the encryption RA certificate is issued by another CA ({encryption.issuer.rfc4514_string()}) than "
            f"the signing RA certificate ({signing.issuer.rfc4514_string()}): after a CA rollover both need renewing"
        )
    if not allows(signing, "digital_signature"):
        return "the signing RA certificate does not allow digitalSignature"
    if any(allows(signing, usage) for usage in _ENCIPHERMENT):
        return (
            "the signing RA certificate also allows keyEncipherment or dataEncipherment, so clients could "
            "encrypt requests to it (issue it with key usage digitalSignature only)"
        )
    if not allows(encryption, "key_encipherment"):
        return "the encryption RA certificate does not allow keyEncipherment, so clients would not encrypt to it"
    return None


def getcacert_certificates(
    signing: x509.Certificate, encryption: x509.Certificate | None, chain: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """The GetCACert certificates, in order: the RA (with separate roles the encryption RA, then the
    signing RA), then the CA chain.

    The encryption RA comes first for clients that take the first certificate as the RA: encrypting to
    the wrong one fails at the server, while the CertRep's signature can be checked with the signing
    certificate it carries."""
    ras = [signing] if encryption is None else [encryption, signing]
    return [*ras, *chain]


@dataclasses.dataclass(frozen=True)
class RaCertificates:
    """A GetCACert reply read by a client: whom to encrypt to, who signs CertReps, and the CA chain."""

    recipient: x509.Certificate
    signer: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    @property
    def separate(self) -> bool:
        """True when the RA signs with one certificate and decrypts with another."""
        return self.recipient != self.signer


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def select_ra_certificates(certs: Sequence[x509.Certificate]) -> RaCertificates:
    """The roles of the certificates of a GetCACert reply (ValueError when there are none).

    The RAs are the certificates that are not CAs (when all are, the first acts as its own RA). The
    recipient is the first RA allowing keyEncipherment, else the first allowing dataEncipherment, else
    the first RA. The signer is the first RA that may sign but not encipher (a signing RA), else the
    recipient when it may sign (one RA for both), else the first RA that may sign."""
    if not certs:
        raise ValueError("no certificate")
    ras = [c for c in certs if not _is_ca(c)] or [certs[0]]
    recipient = next((c for usage in _ENCIPHERMENT for c in ras if allows(c, usage)), ras[0])
    signing = [c for c in ras if allows(c, "digital_signature")]
    dedicated = [c for c in signing if not any(allows(c, usage) for usage in _ENCIPHERMENT)]
    if dedicated:
        signer = dedicated[0]
    elif recipient in signing or not signing:
        signer = recipient
    else:
        signer = signing[0]
    chain = tuple(c for c in certs if c not in (recipient, signer)) or (recipient,)
    return RaCertificates(recipient, signer, chain)
