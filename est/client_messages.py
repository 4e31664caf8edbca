"""What the EST client sends and reads (RFC 7030, RFC 8951), without I/O: CSRs, reply bodies, results.

The transport is in est/client.py; everything here takes and returns bytes and typed values, so
each reply form (base64 with any line breaks, certs-only, multipart serverkeygen, Retry-After) is
testable without a server.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import email.policy
import email.utils
import re
from collections.abc import Sequence
from email.parser import BytesParser
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import AttributeOID

from est.wire import CsrAttribute
from shared_ca.keys import PrivateKey, PublicKey, public_key_bytes

CHALLENGE_PASSWORD_OID = AttributeOID.CHALLENGE_PASSWORD.dotted_string
PKCS8_TYPE = "application/pkcs8"
PKCS7_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime", "application/x-pkcs7-certificates"})
"""Media types accepted for a certs-only reply: RFC 7030's, and the x- forms of older servers."""

_PRINTABLE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]*")
_WHITESPACE = re.compile(rb"\s+")


class EstClientError(Exception):
    """The exchange failed (TLS, connection, HTTP status, unreadable reply); the text is one line."""

    def __init__(self, message: str, *, status: int | None = None, server_text: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status
        self.server_text = server_text


class EstPendingError(EstClientError):
    """The server holds the request for manual approval (HTTP 202) and the wait budget is spent."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, status=202)
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class EnrollResult:
    """The certificate issued for the CSR's key, and the other certificates of the reply (usually none)."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


@dataclasses.dataclass(frozen=True)
class ServerKeygenResult:
    """A serverkeygen answer (RFC 7030 §4.4.2): the certificate, and either the PKCS#8 private key or,
    when the server encrypted it, the CMS `server-generated-key` bytes (DER) for the client to open."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey | None
    encrypted_key: bytes | None


@dataclasses.dataclass(frozen=True)
class CsrAttrs:
    """A CsrAttrs answer (RFC 7030 §4.5.2): bare OIDs and attributes (OID, DER of each value), in wire order."""

    oids: tuple[str, ...]
    attributes: tuple[CsrAttribute, ...]

    @property
    def asks_for_channel_binding(self) -> bool:
        """True when challengePassword is listed: put tls-unique in the CSR (RFC 7030 §3.5, §4.5.2)."""
        return CHALLENGE_PASSWORD_OID in self.oids or any(o == CHALLENGE_PASSWORD_OID for o, _ in self.attributes)


# -- requests -------------------------------------------------------------------------------------


def build_csr(
    key: PrivateKey,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName] | None = None,
    *,
    challenge_password: str | None = None,
) -> x509.CertificateSigningRequest:
    """A PKCS#10 request; challengePassword as a PrintableString when it fits (RFC 2985 §5.4.1)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if challenge_password is not None:
        tag = _ASN1Type.PrintableString if _PRINTABLE.fullmatch(challenge_password) else _ASN1Type.UTF8String
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge_password.encode(), _tag=tag)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # RFC 6979 deterministic ECDSA: the same key, names and password always give the same CSR
        # bytes (RSA PKCS#1 v1.5 and EdDSA are deterministic anyway), so even the command run again
        # after a 202 sends the very request the server queued. Needs OpenSSL >= 3.2 under cryptography.
        with contextlib.suppress(UnsupportedAlgorithm):
            return builder.sign(key, signature_hash(key), ecdsa_deterministic=True)
    return builder.sign(key, signature_hash(key))


class RequestCsr:
    """The CSR of one request, built on first use and then sent unchanged on every retry.

    RFC 7030 §4.2.3: after a 202 the client sends *the same* request again, and a server may
    recognise its queued request by the CSR's bytes. The one exception is a CSR linked to the TLS
    channel (RFC 7030 §3.5): its challengePassword is the connection's tls-unique value, which the
    server compares with the value of the connection the request arrives on. tls-unique is the
    first Finished message of the handshake, so every new connection (the server closed the
    kept-alive one while the client waited, or answered `Connection: close`) has another value; a
    CSR made for the old connection would be refused on the new one, and because the CSR's
    signature covers the challengePassword it has to be built and signed again. On the same
    connection the value does not change and the CSR is re-sent as it was.
    """

    def __init__(self, key: PrivateKey, subject: x509.Name, sans: Sequence[x509.GeneralName] | None = None) -> None:
        self.key = key
        self.subject = subject
        self.sans = tuple(sans or ())
        self._built: tuple[bytes | None, bytes] | None = None

    def der(self, binding: bytes | None) -> bytes:
        """The CSR (DER) for a connection whose tls-unique is `binding` (None: not linked)."""
        if self._built is None or self._built[0] != binding:
            password = base64.b64encode(binding).decode("ascii") if binding is not None else None
            csr = build_csr(self.key, self.subject, self.sans, challenge_password=password)
            self._built = (binding, csr.public_bytes(serialization.Encoding.DER))
        return self._built[1]


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The digest to sign with: None for EdDSA, SHA-384/512 for P-384/P-521, SHA-256 otherwise."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA512() if key.curve.key_size > 384 else hashes.SHA384()
    return hashes.SHA256()


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request from DER or PEM bytes; EstClientError when it is neither."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise EstClientError("the CSR is not a PKCS#10 request (PEM or DER)") from None


# -- replies --------------------------------------------------------------------------------------


def decode_base64_reply(body: bytes, operation: str) -> bytes:
    """The DER in an EST reply body: base64 with any line breaks (RFC 8951 §3.2, Content-Transfer-Encoding
    ignored); a PEM block and raw DER from older servers are tolerated too."""
    text = body.strip()
    if text.startswith(b"-----BEGIN"):
        text = b"".join(line for line in text.splitlines() if not line.startswith(b"-----"))
    compact = _WHITESPACE.sub(b"", text)
    try:
        der = base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        if body[:1] == b"\x30":
            return body
        raise EstClientError(f"the {operation} reply is not base64") from None
    if not der:
        raise EstClientError(f"the {operation} reply is empty")
    return der


def parse_certs_only(der: bytes) -> list[x509.Certificate]:
    """The certificates of a certs-only PKCS#7 SignedData (RFC 7030 §4.1.3), in reply order."""
    try:
        certs = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError:
        raise EstClientError("the reply is not a certs-only PKCS#7") from None
    if not certs:
        raise EstClientError("the certs-only reply holds no certificate")
    return certs


def issued_for(certs: list[x509.Certificate], public_key: PublicKey) -> EnrollResult:
    """The certificate of `certs` that certifies `public_key`, and the others."""
    wanted = public_key_bytes(public_key)
    for cert in certs:
        if public_key_bytes(cert.public_key()) == wanted:
            return EnrollResult(cert, tuple(c for c in certs if c is not cert))
    raise EstClientError("the reply holds no certificate for the requested key")


def parse_serverkeygen(body: bytes, content_type: str) -> tuple[str, bytes, list[x509.Certificate]]:
    """(key part type, key DER, certificates) of a serverkeygen multipart/mixed reply (RFC 7030 §4.4.2).

    The key part is `application/pkcs8`, or `application/pkcs7-mime; smime-type=server-generated-key`
    (returned as that full type); parts are recognised by type, not by order."""
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise EstClientError("the serverkeygen reply is not multipart/mixed")
    key: tuple[str, bytes] | None = None
    certs: list[x509.Certificate] | None = None
    parts: Any = message.get_payload()
    for part in parts:
        media_type = part.get_content_type()
        smime_type = str(part.get_param("smime-type") or "").lower()
        der = decode_base64_reply(str(part.get_payload()).encode("ascii", "replace"), "serverkeygen")
        if media_type == PKCS8_TYPE:
            key = (media_type, der)
        elif media_type in PKCS7_TYPES and smime_type == "server-generated-key":
            key = (f"{media_type}; smime-type=server-generated-key", der)
        elif media_type in PKCS7_TYPES:
            certs = parse_certs_only(der)
    if key is None or certs is None:
        raise EstClientError(f"the serverkeygen reply has no {'private key' if key is None else 'certificate'} part")
    return key[0], key[1], certs


def serverkeygen_result(key_type: str, key_der: bytes, certs: list[x509.Certificate]) -> ServerKeygenResult:
    """The result of parse_serverkeygen's parts: the PKCS#8 key loaded and matched to its certificate,
    or the encrypted key kept as bytes beside the reply's end-entity certificate."""
    if key_type != PKCS8_TYPE:
        leaves = [c for c in certs if not _is_ca(c)] or certs
        return ServerKeygenResult(leaves[0], tuple(c for c in certs if c is not leaves[0]), None, key_der)
    try:
        key = serialization.load_der_private_key(key_der, password=None)
    except (ValueError, TypeError):
        raise EstClientError("the serverkeygen reply holds no readable PKCS#8 private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise EstClientError(f"the server generated an unsupported key type {type(key).__name__}")
    issued = issued_for(certs, key.public_key())
    return ServerKeygenResult(issued.certificate, issued.chain, key, None)


def retry_after_seconds(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a Retry-After value (RFC 9110 §10.2.3: delay-seconds or an HTTP-date);
    None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
