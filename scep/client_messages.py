"""What a SCEP client does on the wire (RFC 8894 §3, §4): build pkiMessages, read CertReps.

Used by the project's own client (`gateway client scep …`) and by the tests; the server never imports it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from scep.asn1 import Digest, FailInfo, IssuerAndSubject, MessageType, PkiStatus, encode_signed_attributes
from scep.envelope import ContentCipher, EnvelopeError, KeyTransport, Rng, open_envelope, seal_envelope
from scep.message import MAX_MESSAGE_BYTES, ScepDecodeError, decode_signed_message
from shared_ca.cms import DATA_OID, CmsSigner, RsaScheme, SigningKey, build_signed_data
from shared_ca.errors import AlgorithmNotAllowed, BadSignature
from shared_ca.keys import PublicKey, public_key_bytes

# RFC 5280 §4.1.2.5: 99991231235959Z means "no well-defined expiration date". With a fixed start
# the transient signer certificate needs no clock and is valid whenever it is checked.
SIGNER_NOT_BEFORE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
SIGNER_NOT_AFTER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


class CertRepError(Exception):
    """A CertRep that cannot be read or whose RA signature does not verify."""


def transaction_id_for(public_key: PublicKey) -> str:
    """The transactionID many clients use: hex SHA-256 of the SubjectPublicKeyInfo (RFC 8894 §3.2.1.1)."""
    return hashlib.sha256(public_key_bytes(public_key)).hexdigest()


def self_signed_signer(
    key: SigningKey,
    subject: x509.Name,
    *,
    not_before: dt.datetime = SIGNER_NOT_BEFORE,
    not_after: dt.datetime = SIGNER_NOT_AFTER,
) -> x509.Certificate:
    """The transient self-signed certificate a client signs its PKCSReq with (RFC 8894 §2.3).

    The serial is derived from the key, so the same key always yields the same certificate.
    """
    serial = int.from_bytes(hashlib.sha256(public_key_bytes(key.public_key())).digest()[:16], "big") >> 1
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial or 1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    return builder.sign(key, hashes.SHA256())


def issuer_and_serial_der(issuer: x509.Name, serial_number: int) -> bytes:
    """IssuerAndSerialNumber (RFC 5652 §10.2.4): the GetCert and GetCRL content (RFC 8894 §3.3.4-5)."""
    value = cms.IssuerAndSerialNumber(
        {"issuer": asn1_x509.Name.load(issuer.public_bytes()), "serial_number": serial_number}
    )
    der: bytes = value.dump()
    return der


def issuer_and_subject_der(issuer: x509.Name, subject: x509.Name) -> bytes:
    """IssuerAndSubject (RFC 8894 §3.3.3): the CertPoll content."""
    value = IssuerAndSubject(
        {"issuer": asn1_x509.Name.load(issuer.public_bytes()), "subject": asn1_x509.Name.load(subject.public_bytes())}
    )
    der: bytes = value.dump()
    return der


def build_pki_request(
    message_type: MessageType,
    *,
    content_der: bytes,
    signer_cert: x509.Certificate,
    signer_key: SigningKey,
    recipient_cert: x509.Certificate,
    transaction_id: str,
    sender_nonce: bytes,
    digest: Digest,
    content_cipher: ContentCipher,
    key_transport: KeyTransport = KeyTransport.RSA_PKCS1V15,
    rsa_pss: bool = False,
    signing_time: dt.datetime | None = None,
    rng: Rng = os.urandom,
) -> bytes:
    """A pkiMessage (RFC 8894 §3.2): `content_der` enveloped to the RA `recipient_cert`, signed by
    `signer_key` with its certificate included."""
    envelope = seal_envelope(content_der, recipient_cert, content_cipher, key_transport, rng=rng)
    attributes = encode_signed_attributes(
        content_digest=digest.compute(envelope),
        message_type=message_type,
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        signing_time=signing_time,
    )
    signer = CmsSigner.create(signer_key, signer_cert, rsa_scheme=RsaScheme.PSS if rsa_pss else RsaScheme.PKCS1V15)
    return build_signed_data(signer, digest=digest, signed_attributes_der=attributes, content=envelope)


@dataclasses.dataclass(frozen=True)
class CertRepReply:
    """A verified CertRep (RFC 8894 §3.3.2), its envelope opened on SUCCESS."""

    status: PkiStatus
    fail_info: FailInfo | None
    fail_info_text: str | None
    transaction_id: str
    sender_nonce: bytes
    recipient_nonce: bytes
    certificates: tuple[x509.Certificate, ...]
    crl: bytes | None
    digest: Digest
    content_cipher: ContentCipher | None = None
    key_transport: KeyTransport | None = None


def parse_cert_rep(
    data: bytes,
    *,
    ra_cert: x509.Certificate,
    signer_key: rsa.RSAPrivateKey,
    signer_cert: x509.Certificate,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> CertRepReply:
    """Verify a CertRep's signature with the RA's key and open its envelope with ours."""
    try:
        message = decode_signed_message(data, max_bytes=max_bytes)
        message.verify(ra_cert.public_key())
    except (ScepDecodeError, BadSignature, AlgorithmNotAllowed) as exc:
        raise CertRepError(f"unreadable CertRep: {exc}") from exc
    attrs = message.attributes
    assert message.digest is not None  # verify() refused the message otherwise
    try:
        if attrs.message_type is None or MessageType(attrs.message_type) is not MessageType.CertRep:
            raise ValueError(f"messageType {attrs.message_type!r}")
        if attrs.transaction_id is None or attrs.sender_nonce is None or attrs.recipient_nonce is None:
            raise ValueError("transactionID, senderNonce or recipientNonce missing")
        status = PkiStatus(attrs.pki_status or "")
        fail_info = FailInfo(attrs.fail_info or "") if status is PkiStatus.FAILURE else None
    except ValueError as exc:
        raise CertRepError(f"unreadable CertRep: {exc}") from exc
    reply = CertRepReply(
        status=status,
        fail_info=fail_info,
        fail_info_text=attrs.fail_info_text,
        transaction_id=attrs.transaction_id,
        sender_nonce=attrs.sender_nonce,
        recipient_nonce=attrs.recipient_nonce,
        certificates=(),
        crl=None,
        digest=message.digest,
    )
    if status is not PkiStatus.SUCCESS:
        return reply
    if message.content is None:
        raise CertRepError("a SUCCESS CertRep without content")
    try:
        opened = open_envelope(message.content, signer_key, signer_cert)
        certificates, crls = read_certs_only(opened.plaintext)
    except EnvelopeError as exc:
        raise CertRepError(f"cannot open the CertRep envelope: {exc}") from exc
    return dataclasses.replace(
        reply,
        certificates=tuple(certificates),
        crl=crls[0] if crls else None,
        content_cipher=opened.cipher,
        key_transport=opened.key_transport,
    )


def read_certs_only(der: bytes) -> tuple[list[x509.Certificate], list[bytes]]:
    """Certificates and CRLs (DER) of a degenerate certs-only SignedData (RFC 8894 §3.4)."""
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise ValueError("not a SignedData")
        signed_data = info["content"]
        certs = [
            x509.load_der_x509_certificate(choice.chosen.dump())
            for choice in signed_data["certificates"] or ()
            if choice.name == "certificate"
        ]
        crls = [choice.chosen.dump() for choice in signed_data["crls"] or () if choice.name == "crl"]
    except (ValueError, TypeError, KeyError, IndexError, x509.InvalidVersion) as exc:
        raise CertRepError(f"unreadable certs-only PKCS#7: {exc}") from exc
    return certs, crls


def parse_next_ca_reply(
    data: bytes, *, ra_cert: x509.Certificate, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[x509.Certificate]:
    """The next CA (and next RA) certificates of a GetNextCACert reply (RFC 8894 §4.7.1), after
    checking that the current RA (`ra_cert`, from GetCACert) signed it; CertRepError otherwise."""
    try:
        message = decode_signed_message(data, max_bytes=max_bytes)
        message.verify(ra_cert.public_key())
    except (ScepDecodeError, BadSignature, AlgorithmNotAllowed) as exc:
        raise CertRepError(f"unreadable GetNextCACert reply: {exc}") from exc
    if message.content_type != DATA_OID:
        raise CertRepError(f"GetNextCACert reply: eContentType {message.content_type} is not id-data")
    if message.content is None:
        raise CertRepError("GetNextCACert reply without content")
    certificates, _ = read_certs_only(message.content)
    if not certificates:
        raise CertRepError("GetNextCACert reply holds no certificate")
    return certificates
