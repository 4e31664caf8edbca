"""Parse and verify the pkiMessage a SCEP client sends (RFC 8894 §3.2, §3.3).

`parse_pki_message` turns bytes into a `PkiRequest` or raises one of two errors carrying their wire
mapping: `ScepDecodeError` (HTTP 400: nothing is known that a signed reply could echo) and
`ScepMessageError` (a signed CertRep FAILURE with failInfo and failInfoText). The generic pieces,
`decode_signed_message` and `SignedMessage.verify`, also read a server's CertRep on the client side.
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import Any, NoReturn

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from scep.asn1 import (
    Digest,
    FailInfo,
    IssuerAndSubject,
    MessageType,
    SignedAttributes,
    as_set_of,
    decode_signed_attributes,
)
from scep.envelope import (
    DECRYPTION_FAILED,
    ContentCipher,
    EnvelopeDecryptionError,
    KeyTransport,
    MalformedEnvelope,
    NotForRecipient,
    UnsupportedEnvelopeAlgorithm,
    open_envelope,
)
from shared_ca.errors import CAError, ErrorKind, InvalidRequest

MAX_MESSAGE_BYTES = 256 * 1024
MAX_NONCE_BYTES = 64
DATA_OID = "1.2.840.113549.1.7.1"


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
    `text` (as failInfoText). `text` is safe to send; `detail` is for the log."""

    def __init__(self, fail_info: FailInfo, text: str, reply: ReplyContext, *, detail: str | None = None) -> None:
        super().__init__(text, detail=detail)
        self.kind = _KINDS[fail_info]
        self.fail_info = fail_info
        self.text = text
        self.reply = reply


class SignatureCheckError(Exception):
    """The signed attributes do not verify (`fail_info` badMessageCheck) or use an algorithm we do
    not implement (badAlg). The message is safe to show the peer."""

    def __init__(self, fail_info: FailInfo, text: str) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text


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
    _signature_algorithm: Any = dataclasses.field(repr=False, compare=False)

    def verify(self, public_key: object) -> None:
        """Check contentType, messageDigest and the signature (RFC 5652 §5.4, §5.6) with `public_key`."""
        if self.digest is None:
            raise SignatureCheckError(FailInfo.BAD_ALG, "the message digest algorithm is not supported")
        if self.attributes.content_type != self.content_type:
            raise SignatureCheckError(FailInfo.BAD_MESSAGE_CHECK, "the contentType attribute does not match")
        expected = self.digest.compute(self.content or b"")
        if self.attributes.message_digest is None or not hmac.compare_digest(expected, self.attributes.message_digest):
            raise SignatureCheckError(FailInfo.BAD_MESSAGE_CHECK, "the messageDigest does not match the content")
        _verify_signature(
            public_key,
            self.signature,
            self.attributes.der,
            self.signature_algorithm,
            self._signature_algorithm,
            self.digest,
        )


def decode_signed_message(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> SignedMessage:
    """Decode ContentInfo(SignedData) with one SignerInfo carrying signed attributes."""
    if len(data) > max_bytes:
        raise ScepDecodeError("the message is too large", detail=f"{len(data)} bytes > {max_bytes}")
    try:
        info = cms.ContentInfo.load(data, strict=True)
        if info["content_type"].native != "signed_data":
            raise ScepDecodeError("the message is not a CMS SignedData")
        signed_data = info["content"]
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise ScepDecodeError("the message must have exactly one signer", detail=f"{len(signer_infos)} signers")
        signer_info = signer_infos[0]
        if not signer_info["signed_attrs"]:
            raise ScepDecodeError("the message has no signed attributes")
        attributes = decode_signed_attributes(as_set_of(signer_info["signed_attrs"]))
        encap = signed_data["encap_content_info"]
        digest_name: str = signer_info["digest_algorithm"]["algorithm"].native
        signature_algorithm = signer_info["signature_algorithm"]
        content_value = encap["content"]
        content: bytes | None = None if content_value.native is None else _octets(content_value)
        return SignedMessage(
            attributes=attributes,
            digest_name=digest_name,
            digest=Digest.from_asn1_name(digest_name),
            signature_algorithm=_signature_name(signature_algorithm),
            signature=signer_info["signature"].native,
            signer_certificate=_signer_certificate(signed_data["certificates"], signer_info["sid"]),
            content_type=encap["content_type"].dotted,
            content=content,
            _signature_algorithm=signature_algorithm,
        )
    except ScepDecodeError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise ScepDecodeError("the message is not a readable CMS SignedData", detail=repr(exc)) from exc


def _octets(value: Any) -> bytes:
    """eContent octets: OCTET STRING in CMS and in PKCS#7 v1 SignedData as SCEP sends it (RFC 2315)."""
    native = value.native
    if not isinstance(native, bytes):
        raise ValueError("eContent is not an OCTET STRING")
    return native


def _signer_certificate(certificates: Any, sid: Any) -> x509.Certificate | None:
    """The certificate the SignerIdentifier names (RFC 5652 §5.3), if the SignedData carries it."""
    for choice in certificates or ():
        if choice.name != "certificate":
            continue
        cert = choice.chosen
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            found = ias["serial_number"].native == cert.serial_number and ias["issuer"] == cert.issuer
        else:
            found = sid.chosen.native == cert.key_identifier
        if found:
            try:
                return x509.load_der_x509_certificate(cert.dump())
            except (ValueError, x509.InvalidVersion):
                return None
    return None


def _signature_name(algorithm: Any) -> str:
    """asn1crypto's signature scheme name ("rsassa_pkcs1v15", "ecdsa", …), or the dotted OID."""
    try:
        name: str = algorithm.signature_algo
    except ValueError:
        name = algorithm["algorithm"].dotted
    return name


def _verify_signature(
    public_key: object, signature: bytes, data: bytes, name: str, algorithm: Any, digest: Digest
) -> None:
    """Verify with the low-level key API: x509 helpers refuse SHA-1, which legacy clients sign with."""
    try:
        named_hash = algorithm.hash_algo
    except (ValueError, KeyError):  # rsaEncryption or bare ecdsa: the SignerInfo's digestAlgorithm applies
        named_hash = digest.value
    if named_hash != digest.value:
        raise SignatureCheckError(FailInfo.BAD_ALG, "the signature and digest algorithms disagree")
    if name not in ("rsassa_pkcs1v15", "rsassa_pss", "ecdsa"):
        raise SignatureCheckError(FailInfo.BAD_ALG, "the signature algorithm is not supported")
    hash_algorithm = digest.hash_algorithm()
    try:
        if name == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
        elif name == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, _pss(algorithm["parameters"]), hash_algorithm)
        elif name == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
        else:  # a signature algorithm the signer's key cannot have produced
            raise InvalidSignature
    except InvalidSignature:
        raise SignatureCheckError(FailInfo.BAD_MESSAGE_CHECK, "the message signature does not verify") from None
    except (UnsupportedAlgorithm, ValueError, TypeError, KeyError) as exc:
        raise SignatureCheckError(FailInfo.BAD_ALG, "the signature algorithm is not supported") from exc


def _pss(params: Any) -> padding.PSS:
    """RSASSA-PSS-params (RFC 4055 §3.1) as cryptography's padding; MGF1 only."""
    mgf = params["mask_gen_algorithm"]
    mgf_digest = Digest.from_asn1_name(mgf["parameters"]["algorithm"].native)
    if mgf["algorithm"].native != "mgf1" or mgf_digest is None:
        raise ValueError("unsupported RSA-PSS mask generation")
    return padding.PSS(padding.MGF1(mgf_digest.hash_algorithm()), params["salt_length"].native)


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
    data: bytes, *, ra_key: rsa.RSAPrivateKey, ra_cert: x509.Certificate, max_bytes: int = MAX_MESSAGE_BYTES
) -> PkiRequest:
    """Decode, verify and decrypt a pkiMessage (RFC 8894 §3.2) sent to the RA `ra_cert`.

    A message of a type we do not serve is answered badRequest only when its signature and envelope
    check out; otherwise it is an undecodable request (HTTP 400) like any other garbage.
    """
    message = decode_signed_message(data, max_bytes=max_bytes)
    attrs = message.attributes
    if not attrs.transaction_id:
        raise ScepDecodeError("the message has no transactionID")
    if not attrs.sender_nonce or len(attrs.sender_nonce) > MAX_NONCE_BYTES:
        raise ScepDecodeError("the message has no usable senderNonce")
    if attrs.message_type is None:
        raise ScepDecodeError("the message has no messageType")
    # An unsupported digest is answered badAlg, signed with SHA-256 since the requester's is unusable.
    reply = ReplyContext(attrs.transaction_id, attrs.sender_nonce, message.digest or Digest.SHA256)
    message_type = _request_type(attrs.message_type)

    def refuse(fail_info: FailInfo, text: str, detail: str | None = None) -> NoReturn:
        if message_type is None:
            raise ScepDecodeError("the message type is not supported", detail=f"{text} ({attrs.message_type!r})")
        raise ScepMessageError(fail_info, text, reply, detail=detail)

    signer = message.signer_certificate
    if signer is None:
        refuse(FailInfo.BAD_MESSAGE_CHECK, "the signer certificate is missing")
    reply = dataclasses.replace(reply, signer_certificate=signer)
    try:
        public_key = signer.public_key()
    except (ValueError, UnsupportedAlgorithm):
        refuse(FailInfo.BAD_ALG, "the signer's key type is not supported")
    try:
        message.verify(public_key)
    except SignatureCheckError as exc:
        refuse(exc.fail_info, exc.text)
    if message.content_type != DATA_OID or message.content is None:
        refuse(FailInfo.BAD_REQUEST, "the message carries no data content")
    try:
        opened = open_envelope(message.content, ra_key, ra_cert)
    except EnvelopeDecryptionError:
        refuse(FailInfo.BAD_MESSAGE_CHECK, DECRYPTION_FAILED)
    except NotForRecipient:
        refuse(FailInfo.BAD_MESSAGE_CHECK, "the envelope is not addressed to this server")
    except UnsupportedEnvelopeAlgorithm as exc:
        refuse(FailInfo.BAD_ALG, str(exc))
    except MalformedEnvelope as exc:
        refuse(FailInfo.BAD_REQUEST, str(exc), repr(exc.__cause__))
    reply = dataclasses.replace(reply, content_cipher=opened.cipher, key_transport=opened.key_transport)
    if message_type is None:
        detail = f"messageType {attrs.message_type!r}"
        raise ScepMessageError(FailInfo.BAD_REQUEST, "the message type is not supported", reply, detail=detail)
    assert message.digest is not None  # verify() refused the message otherwise
    request = PkiRequest(
        message_type=message_type,
        transaction_id=attrs.transaction_id,
        sender_nonce=attrs.sender_nonce,
        signer_certificate=signer,
        digest=message.digest,
        signature_algorithm=message.signature_algorithm,
        content_cipher=opened.cipher,
        key_transport=opened.key_transport,
        attributes=attrs,
    )
    try:
        return _with_content(request, opened.plaintext)
    except (ValueError, TypeError, KeyError, IndexError, x509.InvalidVersion) as exc:
        text = f"the {message_type.name} content is malformed"
        raise ScepMessageError(FailInfo.BAD_REQUEST, text, reply, detail=repr(exc)) from None


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
        # The CSR's own signature is checked by shared_ca.csr.load_csr, not here.
        csr = x509.load_der_x509_csr(plaintext)
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
