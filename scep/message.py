"""Parse and verify the pkiMessage a SCEP client sends (RFC 8894 §3.2, §3.3).

`parse_pki_message` turns bytes into a `PkiRequest` or raises one of two errors carrying their wire
mapping: `ScepDecodeError` (HTTP 400: nothing is known that a signed reply could echo) and
`ScepMessageError` (a signed CertRep FAILURE with failInfo and failInfoText). The generic pieces,
`decode_signed_message` and `SignedMessage.verify`, also read a server's CertRep on the client side.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import NoReturn

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scep import der
from scep.asn1 import (
    Digest,
    FailInfo,
    IssuerAndSubject,
    MessageType,
    SignedAttributes,
    decode_signed_attributes,
    names_match,
)
from scep.envelope import (
    DECRYPTION_FAILED,
    ContentCipher,
    EnvelopeDecryptionError,
    KeyTransport,
    MalformedEnvelope,
    NotForRecipient,
    OpenedEnvelope,
    UnsupportedEnvelopeAlgorithm,
    open_envelope,
)
from shared_ca.cms import DATA_OID, ContentAttributes, SignatureAlgorithm, SignerInfo, der_header, verify_signer_info
from shared_ca.csr import UNDECODABLE
from shared_ca.errors import AlgorithmNotAllowed, BadSignature, CAError, ErrorKind, InvalidRequest

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 256 * 1024
MAX_NONCE_BYTES = 64


class ScepDecodeError(InvalidRequest):
    """The request cannot be decoded far enough to answer with a signed CertRep: HTTP 400."""

    http_status = 400


@dataclasses.dataclass(frozen=True)
class ReplyContext:
    """What a CertRep answering the request needs (RFC 8894 §3.3.2): transactionID to echo, the
    senderNonce to return as recipientNonce, and the requester's digest (and cipher, for SUCCESS)."""

    transaction_id: str
    sender_nonce: bytes
    digest: Digest
    signer_certificate: x509.Certificate | None = None
    content_cipher: ContentCipher | None = None
    key_transport: KeyTransport | None = None


_KINDS = {
    FailInfo.BAD_ALG: ErrorKind.BAD_ALGORITHM,
    FailInfo.BAD_MESSAGE_CHECK: ErrorKind.BAD_SIGNATURE,
    FailInfo.BAD_REQUEST: ErrorKind.BAD_INPUT,
    FailInfo.BAD_TIME: ErrorKind.BAD_INPUT,
    FailInfo.BAD_CERT_ID: ErrorKind.NOT_FOUND,
}


class ScepMessageError(CAError):
    """A readable request that fails: answer with a signed CertRep FAILURE carrying `fail_info` and
    `public_message` (as failInfoText); `detail` is for the log."""

    def __init__(
        self, fail_info: FailInfo, public_message: str, reply: ReplyContext, *, detail: str | None = None
    ) -> None:
        super().__init__(public_message, detail=detail)
        self.kind = _KINDS[fail_info]
        self.fail_info = fail_info
        self.reply = reply


@dataclasses.dataclass(frozen=True)
class SignedMessage:
    """A decoded (not yet verified) SignedData with exactly one SignerInfo."""

    attributes: SignedAttributes
    digest_name: str  # as asn1crypto names the SignerInfo's digestAlgorithm
    digest: Digest | None  # None when we do not implement it
    signature_algorithm: str  # "rsassa_pkcs1v15", "rsassa_pss", "ecdsa", …
    signature: bytes
    signer_certificate: x509.Certificate | None  # from the certificates set, matched by sid
    content_type: str  # eContentType, dotted
    content: bytes | None  # eContent octets
    _signature_algorithm: SignatureAlgorithm = dataclasses.field(repr=False, compare=False)

    def verify(self, public_key: object) -> None:
        """Check contentType, messageDigest and the signature (RFC 5652 §5.4, §5.6) with `public_key`:
        BadSignature (badMessageCheck) or AlgorithmNotAllowed (badAlg) when they fail."""
        if self.digest is None:
            raise AlgorithmNotAllowed("the message digest algorithm is not supported")
        attrs = self.attributes
        signer_info = SignerInfo(
            self.digest,
            self._signature_algorithm,
            self.signature,
            ContentAttributes(attrs.der, attrs.content_type, attrs.message_digest),
        )
        content = self.content or b""
        verify_signer_info(signer_info, content_type=self.content_type, content=content, signer_key=lambda: public_key)


def decode_signed_message(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> SignedMessage:
    """Decode ContentInfo(SignedData) with one SignerInfo carrying signed attributes."""
    if len(data) > max_bytes:
        raise ScepDecodeError("the message is too large", detail=f"{len(data)} bytes > {max_bytes}")
    try:
        content_type, info = der.content_info(data)
        if content_type != _SIGNED_DATA_OID:
            raise ScepDecodeError("the message is not a CMS SignedData")
        signed_data = der.expect(der.content(data, info), der.SEQUENCE)
        _version, _digests, encap, certificates, _crls, signer_set = der.fields(data, signed_data, der.SIGNED_DATA)
        signer_infos = der.children(data, signer_set)
        if len(signer_infos) != 1:
            raise ScepDecodeError("the message must have exactly one signer", detail=f"{len(signer_infos)} signers")
        signer_info = der.expect(signer_infos[0], der.SEQUENCE)
        _version, sid, digest_tlv, signed_attrs, algorithm_tlv, signature, _ = der.fields(
            data, signer_info, der.SIGNER_INFO
        )
        if signed_attrs.body == signed_attrs.end:
            raise ScepDecodeError("the message has no signed attributes")
        # RFC 5652 §5.4: the signature covers the DER SET OF, not the [0] IMPLICIT sent; contents as received.
        attributes = decode_signed_attributes(
            der_header(der.SET, signed_attrs.end - signed_attrs.body) + der.contents(data, signed_attrs)
        )
        encap_type, encap_content = der.fields(data, encap, der.ENCAPSULATED_CONTENT_INFO)
        digest_name = der.digest_name(der.algorithm(data, digest_tlv).oid)
        signature_algorithm = der.signature_algorithm(data, algorithm_tlv)
        return SignedMessage(
            attributes=attributes,
            digest_name=digest_name,
            digest=Digest.from_asn1_name(digest_name),
            signature_algorithm=signature_algorithm.name,
            signature=der.octets(data, signature),
            signer_certificate=_signer_certificate(data, certificates, sid),
            content_type=der.dotted(der.contents(data, encap_type)),
            content=_octets(data, encap_type, encap_content),
            _signature_algorithm=signature_algorithm,
        )
    except ScepDecodeError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise ScepDecodeError("the message is not a readable CMS SignedData", detail=repr(exc)) from exc


_SIGNED_DATA_OID = der.oid_contents("1.2.840.113549.1.7.2")
# eContentTypes asn1crypto decoded as CMS structures, never as octets: a message carrying one is unreadable.
_STRUCTURED_CONTENT = frozenset(der.oid_contents(oid) for oid, name in cms.ContentType._map.items() if name != "data")


def _octets(data: bytes, content_type: der.Tlv, content: der.Tlv) -> bytes | None:
    """eContent octets: OCTET STRING in CMS and in PKCS#7 v1 SignedData as SCEP sends it (RFC 2315)."""
    if content is der.ABSENT:
        return None
    if der.contents(data, content_type) in _STRUCTURED_CONTENT:
        raise ValueError("eContent is not an OCTET STRING")
    return der.octets(data, der.expect(der.explicit(data, content), *der.OCTET_STRINGS))


def _signer_certificate(data: bytes, certificates: der.Tlv, sid: der.Tlv) -> x509.Certificate | None:
    """The certificate the SignerIdentifier names (RFC 5652 §5.3), if the SignedData carries it."""
    choices = [der.expect(choice, *der.CERTIFICATE_CHOICES) for choice in der.children(data, certificates)]
    for choice in choices:
        if choice.tag != der.SEQUENCE:  # attribute and other certificate formats
            continue
        encoded = der.encoding(data, choice)
        if sid.tag == der.SEQUENCE:
            issuer, serial = der.fields(data, sid, der.ISSUER_AND_SERIAL)
            cert_serial, cert_issuer = der.serial_and_issuer(data, choice)
            found = der.integer(data, serial) == cert_serial and names_match(der.encoding(data, issuer), cert_issuer)
        else:  # RFC 5280 §4.2.1.2, read by asn1crypto: few signers name themselves so
            found = der.octets(data, sid) == asn1_x509.Certificate.load(encoded).key_identifier
        if found:
            return _readable_certificate(encoded)
    return None


def _readable_certificate(encoded: bytes) -> x509.Certificate | None:
    """The certificate when every part the service reads decodes; cryptography decodes names and
    extensions only when first asked, so a certificate with, say, a subject whose string tag is a SET
    loads and then fails in the middle of a refusal. Such a signer counts as absent."""
    try:
        certificate = x509.load_der_x509_certificate(encoded)
        certificate.subject.rfc4514_string()
        certificate.issuer.rfc4514_string()
        list(certificate.extensions)
    except UNDECODABLE:
        return None
    return certificate


@dataclasses.dataclass(frozen=True)
class IssuerAndSerial:
    """IssuerAndSerialNumber (RFC 5652 §10.2.4): the GetCert and GetCRL content."""

    issuer_der: bytes
    serial_number: int


@dataclasses.dataclass(frozen=True)
class IssuerSubject:
    """IssuerAndSubject (RFC 8894 §3.3.3): the CertPoll content."""

    issuer_der: bytes
    subject_der: bytes


@dataclasses.dataclass(frozen=True)
class PkiRequest:
    """A verified, decrypted SCEP request."""

    message_type: MessageType
    transaction_id: str
    sender_nonce: bytes
    signer_certificate: x509.Certificate
    digest: Digest
    signature_algorithm: str
    content_cipher: ContentCipher
    key_transport: KeyTransport
    attributes: SignedAttributes
    csr_der: bytes | None = None
    csr: x509.CertificateSigningRequest | None = None
    issuer_and_serial: IssuerAndSerial | None = None
    issuer_and_subject: IssuerSubject | None = None
    recipient: x509.Certificate | None = None  # the RA certificate the envelope was opened for

    @property
    def reply(self) -> ReplyContext:
        """What a CertRep answering this request needs."""
        return ReplyContext(
            self.transaction_id,
            self.sender_nonce,
            self.digest,
            self.signer_certificate,
            self.content_cipher,
            self.key_transport,
        )


def parse_pki_message(
    data: bytes,
    *,
    ra_key: rsa.RSAPrivateKey,
    ra_cert: x509.Certificate,
    max_bytes: int = MAX_MESSAGE_BYTES,
    also_for: Sequence[tuple[rsa.RSAPrivateKey, x509.Certificate]] = (),
    earlier: Callable[[bytes, int], x509.Certificate | None] | None = None,
) -> PkiRequest:
    """Decode, verify and decrypt a pkiMessage (RFC 8894 §3.2) sent to the RA `ra_cert`, or to one of
    the RAs of `also_for` (a replaced CA's RA, which clients that keep GetCACert may still encrypt to);
    the request's `recipient` says which. `earlier` finds a certificate by issuer name (DER) and serial
    number: an envelope addressed to an earlier certificate of one of those RA keys (before the RA
    renewed itself) is opened with that key too.

    A message of a type we do not serve is answered badRequest only when its signature and envelope
    check out; otherwise it is an undecodable request (HTTP 400) like any other garbage.
    """
    message = decode_signed_message(data, max_bytes=max_bytes)
    attrs = message.attributes
    transaction_id, sender_nonce, message_type_value = _reply_attributes(attrs)
    # An unsupported digest is answered badAlg, signed with SHA-256 since the requester's is unusable.
    reply = ReplyContext(transaction_id, sender_nonce, message.digest or Digest.SHA256)
    message_type = _request_type(message_type_value)

    def refuse(fail_info: FailInfo, text: str, detail: str | None = None) -> NoReturn:
        if message_type is None:
            raise ScepDecodeError("the message type is not supported", detail=f"{text} ({attrs.message_type!r})")
        raise ScepMessageError(fail_info, text, reply, detail=detail)

    signer = message.signer_certificate
    if signer is None:
        refuse(FailInfo.BAD_MESSAGE_CHECK, "the signer certificate is missing")
    reply = ReplyContext(reply.transaction_id, reply.sender_nonce, reply.digest, signer)
    try:
        public_key = signer.public_key()
    except (ValueError, UnsupportedAlgorithm):
        refuse(FailInfo.BAD_ALG, "the signer's key type is not supported")
    try:
        message.verify(public_key)
    except (BadSignature, AlgorithmNotAllowed) as exc:
        bad_alg = exc.kind is ErrorKind.BAD_ALGORITHM
        refuse(FailInfo.BAD_ALG if bad_alg else FailInfo.BAD_MESSAGE_CHECK, exc.public_message)
    if message.content_type != DATA_OID or message.content is None:
        refuse(FailInfo.BAD_REQUEST, "the message carries no data content")
    opened, recipient = _open_for_us(message.content, ((ra_key, ra_cert), *also_for), earlier, refuse)
    reply = ReplyContext(
        reply.transaction_id, reply.sender_nonce, reply.digest, signer, opened.cipher, opened.key_transport
    )
    if message_type is None:
        detail = f"messageType {attrs.message_type!r}"
        raise ScepMessageError(FailInfo.BAD_REQUEST, "the message type is not supported", reply, detail=detail)
    assert message.digest is not None  # verify() refused the message otherwise
    request = PkiRequest(
        message_type=message_type,
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        signer_certificate=signer,
        digest=message.digest,
        signature_algorithm=message.signature_algorithm,
        content_cipher=opened.cipher,
        key_transport=opened.key_transport,
        attributes=attrs,
        recipient=recipient,
    )
    try:
        return _with_content(request, opened.plaintext)
    except (*UNDECODABLE, KeyError, IndexError) as exc:
        text = f"the {message_type.name} content is malformed"
        raise ScepMessageError(FailInfo.BAD_REQUEST, text, reply, detail=repr(exc)) from None


def _open_for_us(
    content: bytes,
    ours: Sequence[tuple[rsa.RSAPrivateKey, x509.Certificate]],
    earlier: Callable[[bytes, int], x509.Certificate | None] | None,
    refuse: Callable[..., NoReturn],
) -> tuple[OpenedEnvelope, x509.Certificate]:
    """The envelope opened with the first of our RA keys it is addressed to (by the RA certificate, or
    by an earlier certificate of the same key `earlier` finds), and our RA certificate of that key."""
    attempts = [(key, cert, cert) for key, cert in ours]
    while attempts:
        key, addressed, recipient = attempts.pop(0)
        try:
            return open_envelope(content, key, addressed), recipient
        except EnvelopeDecryptionError:
            refuse(FailInfo.BAD_MESSAGE_CHECK, DECRYPTION_FAILED)
        except NotForRecipient as exc:
            if not attempts and earlier is not None:
                attempts = _earlier_certificates(exc.named, ours, earlier)
                earlier = None  # looked up once
        except UnsupportedEnvelopeAlgorithm as exc:
            refuse(FailInfo.BAD_ALG, str(exc))
        except MalformedEnvelope as exc:
            refuse(FailInfo.BAD_REQUEST, str(exc), repr(exc.__cause__))
    refuse(FailInfo.BAD_MESSAGE_CHECK, "the envelope is not addressed to this server")


def _earlier_certificates(
    named: Sequence[tuple[bytes, int]],
    ours: Sequence[tuple[rsa.RSAPrivateKey, x509.Certificate]],
    earlier: Callable[[bytes, int], x509.Certificate | None],
) -> list[tuple[rsa.RSAPrivateKey, x509.Certificate, x509.Certificate]]:
    """(key, the earlier certificate the envelope names, our RA certificate of that key) for each
    certificate the envelope's recipients name that holds one of our RA keys."""
    spki = {
        cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo): (key, cert)
        for key, cert in ours
    }
    found = []
    for issuer, serial in named[:4]:  # a request names one or two recipients; never look up many
        cert = earlier(issuer, serial)
        if cert is None:
            continue
        match = spki.get(cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
        if match is not None:
            log.info("SCEP envelope addressed to an earlier RA certificate (serial %x): opened with its key", serial)
            found.append((match[0], cert, match[1]))
    return found


def _reply_attributes(attrs: SignedAttributes) -> tuple[str, bytes, str]:
    """transactionID, senderNonce and messageType: what any reply needs; ScepDecodeError without them."""
    if not attrs.transaction_id:
        raise ScepDecodeError("the message has no transactionID")
    if not _echoable(attrs.transaction_id):
        # The CertRep echoes it as a PrintableString (scep.asn1 encodes those as latin-1 octets).
        raise ScepDecodeError("the transactionID is not a printable string", detail=repr(attrs.transaction_id[:80]))
    if not attrs.sender_nonce or len(attrs.sender_nonce) > MAX_NONCE_BYTES:
        raise ScepDecodeError("the message has no usable senderNonce")
    if attrs.message_type is None:
        raise ScepDecodeError("the message has no messageType")
    return attrs.transaction_id, attrs.sender_nonce, attrs.message_type


def _echoable(transaction_id: str) -> bool:
    """Whether a CertRep can carry the transactionID back: one octet a character, no control characters."""
    return all(" " <= character <= "\xff" and character != "\x7f" for character in transaction_id)


def _request_type(value: str) -> MessageType | None:
    """The request type for a messageType value; None for values a client may not send us."""
    try:
        message_type = MessageType(value.strip())
    except ValueError:
        return None
    return None if message_type is MessageType.CertRep else message_type


def _with_content(request: PkiRequest, plaintext: bytes) -> PkiRequest:
    """Decode the decrypted content by message type (RFC 8894 §3.3)."""
    if request.message_type.is_enrolment:
        # The CSR's own signature is checked by shared_ca.csr.load_csr, not here; the names and
        # extensions it carries are decoded now, so the service never meets one that cannot be read.
        csr = x509.load_der_x509_csr(plaintext)
        csr.subject.rfc4514_string()
        list(csr.extensions)
        return dataclasses.replace(request, csr_der=plaintext, csr=csr)
    if request.message_type is MessageType.CertPoll:
        ias = IssuerAndSubject.load(plaintext, strict=True)
        subject = IssuerSubject(ias["issuer"].dump(), ias["subject"].dump())
        ias.native  # noqa: B018 - reject malformed names now
        return dataclasses.replace(request, issuer_and_subject=subject)
    isn = cms.IssuerAndSerialNumber.load(plaintext, strict=True)
    serial: int = isn["serial_number"].native
    isn.native  # noqa: B018
    return dataclasses.replace(request, issuer_and_serial=IssuerAndSerial(isn["issuer"].dump(), serial))
