"""CMC's ASN.1 vocabulary (RFC 5272 Appendix A, updated by RFC 6402) and the CMS SignedData a CMC
message travels in (RFC 5652 §5): decode, verify and sign it. `est.cmc` builds on this.

Declared by subclassing asn1crypto's classes, never by patching the library: other code in the
process sees asn1crypto unchanged. The CMC module is `DEFINITIONS IMPLICIT TAGS`, so the context
tags of TaggedRequest and OtherStatusInfo replace the tag of the alternative they mark.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from asn1crypto import cms, core, crl
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

# RFC 5272 §3.2, §4.2 (id-cct, the CMC content types).
PKI_DATA_OID = "1.3.6.1.5.5.7.12.2"
PKI_RESPONSE_OID = "1.3.6.1.5.5.7.12.3"
# RFC 5272 §6 (id-cmc, the controls we read or write).
STATUS_INFO_OID = "1.3.6.1.5.5.7.7.1"
TRANSACTION_ID_OID = "1.3.6.1.5.5.7.7.5"
SENDER_NONCE_OID = "1.3.6.1.5.5.7.7.6"
RECIPIENT_NONCE_OID = "1.3.6.1.5.5.7.7.7"
REVOKE_REQUEST_OID = "1.3.6.1.5.5.7.7.17"
STATUS_INFO_V2_OID = "1.3.6.1.5.5.7.7.25"

BODY_PART_ID_MAX = 4294967295
"""RFC 5272 §3.2.2: BodyPartID ::= INTEGER(0..4294967295); 0 names the enclosing PKIData itself."""


class CmcStatus(enum.IntEnum):
    """CMCStatus (RFC 5272 §6.1.3); 1 is reserved."""

    SUCCESS = 0
    FAILED = 2
    PENDING = 3
    NO_SUPPORT = 4
    CONFIRM_REQUIRED = 5
    POP_REQUIRED = 6
    PARTIAL = 7


class CmcFailInfo(enum.IntEnum):
    """CMCFailInfo (RFC 5272 §6.1.4): why a request failed."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4
    UNSUPPORTED_EXT = 5
    MUST_ARCHIVE_KEYS = 6
    BAD_IDENTITY = 7
    POP_REQUIRED = 8
    POP_FAILED = 9
    NO_KEY_REUSE = 10
    INTERNAL_CA_ERROR = 11
    TRY_LATER = 12
    AUTH_DATA_FAIL = 13


class BodyPartID(core.Integer):  # type: ignore[misc]
    """RFC 5272 §3.2.2; the range is checked by the parser, which knows what a value is for."""


class BodyPartPath(core.SequenceOf):  # type: ignore[misc]
    _child_spec = BodyPartID


class BodyPartReference(core.Choice):  # type: ignore[misc]
    """RFC 5272 §3.2.2 (BodyPartReference, used by CMCStatusInfoV2)."""

    _alternatives = [("body_part_id", BodyPartID), ("body_part_path", BodyPartPath)]


class BodyPartReferences(core.SequenceOf):  # type: ignore[misc]
    _child_spec = BodyPartReference


class CMCStatusValue(core.Integer):  # type: ignore[misc]
    _map = {status.value: status.name.lower() for status in CmcStatus}


class CMCFailInfoValue(core.Integer):  # type: ignore[misc]
    _map = {info.value: info.name.lower() for info in CmcFailInfo}


class PendInfo(core.Sequence):  # type: ignore[misc]
    _fields = [("pend_token", core.OctetString), ("pend_time", core.GeneralizedTime)]


class ExtendedFailInfo(core.Sequence):  # type: ignore[misc]
    _fields = [("fail_info_oid", core.ObjectIdentifier), ("fail_info_value", core.Any)]


class OtherStatusInfo(core.Choice):  # type: ignore[misc]
    """RFC 6402 App. A.2 tags extendedFailInfo [1]; the untagged 1988 form would read as pendInfo.
    We only ever send failInfo."""

    _alternatives = [
        ("fail_info", CMCFailInfoValue),
        ("pend_info", PendInfo),
        ("extended_fail_info", ExtendedFailInfo, {"implicit": 1}),
    ]


class CMCStatusInfoV2(core.Sequence):  # type: ignore[misc]
    """RFC 5272 §6.1.1 (id-cmc-statusInfoV2)."""

    _fields = [
        ("cmc_status", CMCStatusValue),
        ("body_list", BodyPartReferences),
        ("status_string", core.UTF8String, {"optional": True}),
        ("other_info", OtherStatusInfo, {"optional": True}),
    ]


class RevokeRequest(core.Sequence):  # type: ignore[misc]
    """RFC 5272 §6.11 (id-cmc-revokeRequest)."""

    _fields = [
        ("issuer_name", asn1_x509.Name),
        ("serial_number", core.Integer),
        ("reason", crl.CRLReason),
        ("invalidity_date", core.GeneralizedTime, {"optional": True}),
        ("passphrase", core.OctetString, {"optional": True}),
        ("comment", core.UTF8String, {"optional": True}),
    ]


class SetOfStatusInfoV2(core.SetOf):  # type: ignore[misc]
    _child_spec = CMCStatusInfoV2


class SetOfRevokeRequest(core.SetOf):  # type: ignore[misc]
    _child_spec = RevokeRequest


class SetOfInteger(core.SetOf):  # type: ignore[misc]
    _child_spec = core.Integer


class ControlType(core.ObjectIdentifier):  # type: ignore[misc]
    """Control types (TaggedAttribute attrType) with names for the ones whose values we decode."""

    _map = {
        STATUS_INFO_V2_OID: "status_info_v2",
        TRANSACTION_ID_OID: "transaction_id",
        SENDER_NONCE_OID: "sender_nonce",
        RECIPIENT_NONCE_OID: "recipient_nonce",
        REVOKE_REQUEST_OID: "revoke_request",
    }


class TaggedAttribute(core.Sequence):  # type: ignore[misc]
    """RFC 5272 §3.2.1.1: a control. Values of the controls we know decode to their types."""

    _fields = [("body_part_id", BodyPartID), ("attr_type", ControlType), ("attr_values", None)]
    _oid_specs = {
        "status_info_v2": SetOfStatusInfoV2,
        "transaction_id": SetOfInteger,
        "sender_nonce": cms.SetOfOctetString,
        "recipient_nonce": cms.SetOfOctetString,
        "revoke_request": SetOfRevokeRequest,
    }

    def _values_spec(self) -> type:
        spec: type = self._oid_specs.get(self["attr_type"].native, cms.SetOfAny)
        return spec

    _spec_callbacks = {"attr_values": _values_spec}


class TaggedCertificationRequest(core.Sequence):  # type: ignore[misc]
    _fields = [("body_part_id", BodyPartID), ("certification_request", asn1_csr.CertificationRequest)]


class CertRequest(core.Sequence):  # type: ignore[misc]
    """RFC 4211 §5, only as far as its certReqId, the body part identity of a crm (RFC 5272 §3.2.2)."""

    _fields = [("cert_req_id", core.Integer), ("cert_template", core.Any), ("controls", core.Any, {"optional": True})]


class CertReqMsg(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("cert_req", CertRequest),
        ("popo", core.Any, {"optional": True}),
        ("reg_info", core.Any, {"optional": True}),
    ]


class OtherRequestMsg(core.Sequence):  # type: ignore[misc]
    _fields = [("body_part_id", BodyPartID), ("request_message_type", core.ObjectIdentifier), ("value", core.Any)]


class TaggedRequest(core.Choice):  # type: ignore[misc]
    """RFC 5272 §3.2.1.2: tcr (PKCS#10), crm (CRMF) or orm (other)."""

    _alternatives = [
        ("tcr", TaggedCertificationRequest, {"implicit": 0}),
        ("crm", CertReqMsg, {"implicit": 1}),
        ("orm", OtherRequestMsg, {"implicit": 2}),
    ]


class TaggedContentInfo(core.Sequence):  # type: ignore[misc]
    """RFC 5272 §3.2.1.3; only the ContentInfo's type is ever read, since we never act on one."""

    _fields = [("body_part_id", BodyPartID), ("content_info", cms.ContentInfo)]


class OtherMsg(core.Sequence):  # type: ignore[misc]
    """RFC 5272 §3.2.1.4."""

    _fields = [("body_part_id", BodyPartID), ("other_msg_type", core.ObjectIdentifier), ("value", core.Any)]


class Controls(core.SequenceOf):  # type: ignore[misc]
    _child_spec = TaggedAttribute


class TaggedRequests(core.SequenceOf):  # type: ignore[misc]
    _child_spec = TaggedRequest


class TaggedContentInfos(core.SequenceOf):  # type: ignore[misc]
    _child_spec = TaggedContentInfo


class OtherMsgs(core.SequenceOf):  # type: ignore[misc]
    _child_spec = OtherMsg


class PKIData(core.Sequence):  # type: ignore[misc]
    """RFC 5272 §3.2.1: the Full PKI Request body (eContentType id-cct-PKIData)."""

    _fields = [
        ("control_sequence", Controls),
        ("req_sequence", TaggedRequests),
        ("cms_sequence", TaggedContentInfos),
        ("other_msg_sequence", OtherMsgs),
    ]


class PKIResponse(core.Sequence):  # type: ignore[misc]
    """RFC 5272 §4.2: the Full PKI Response body (eContentType id-cct-PKIResponse)."""

    _fields = [
        ("control_sequence", Controls),
        ("cms_sequence", TaggedContentInfos),
        ("other_msg_sequence", OtherMsgs),
    ]


class CmcSignedData(cms.SignedData):  # type: ignore[misc]
    """SignedData whose encapContentInfo is always read as CMS (eContent an OCTET STRING, RFC 5652
    §5.2), whatever the version: CMC content is never PKCS#7 v1.5 `ANY`."""

    def _encap_spec(self) -> type:
        spec: type = cms.EncapsulatedContentInfo
        return spec

    _spec_callbacks = {"encap_content_info": _encap_spec}


class CmcContentInfo(cms.ContentInfo):  # type: ignore[misc]
    _oid_specs = {**cms.ContentInfo._oid_specs, "signed_data": CmcSignedData}


# --- the CMS SignedData around a CMC message (RFC 5652 §5, RFC 5272 §3.2, §4.2) ------------------

MAX_CERTIFICATES = 16  # in SignedData.certificates
DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError)
"""What asn1crypto raises on malformed input (AttributeError: `.native` of a universal type it does
not implement, such as ObjectDescriptor, inside an ANY)."""

SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
"""Digests a CMC signer may use, by asn1crypto name. MD5 is refused (RFC 6151)."""

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class UndecodableMessage(Exception):
    """Not a readable SignedData carrying the expected content; `text` is safe to show."""

    def __init__(self, text: str, detail: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.detail = detail or text


class SignatureCheckError(Exception):
    """The SignerInfo does not verify (badMessageCheck) or uses an algorithm we refuse (badAlg)."""

    def __init__(self, fail_info: CmcFailInfo, text: str, detail: str | None = None) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text
        self.detail = detail or text


@dataclasses.dataclass(frozen=True)
class SignedContent:
    """A decoded, not yet verified, SignedData with one SignerInfo."""

    content_type: str  # eContentType, dotted
    content: bytes  # eContent octets
    digest: str  # the SignerInfo's digestAlgorithm, as asn1crypto names it
    signer_info: Any = dataclasses.field(repr=False)
    certificates: tuple[x509.Certificate, ...] = dataclasses.field(repr=False)
    asn1_certificates: tuple[Any, ...] = dataclasses.field(repr=False)  # the same, as asn1crypto read them


@dataclasses.dataclass(frozen=True)
class Signer:
    """Who signed: a certificate in the message, or the key of a PKCS#10 request in it."""

    certificate: x509.Certificate | None
    request_id: int | None  # the bodyPartID of that request
    signature_algorithm: str  # "rsassa_pkcs1v15", "rsassa_pss", "ecdsa"


def decode_signed_content(der: bytes, content_type: str, what: str) -> SignedContent:
    """ContentInfo(SignedData) with one SignerInfo over eContentType `content_type`, else UndecodableMessage."""
    try:
        info = CmcContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise UndecodableMessage("the CMC message is not a CMS SignedData")
        signed_data = info["content"]
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise UndecodableMessage("the CMC message must have exactly one signer", f"{len(signer_infos)} signers")
        encap = signed_data["encap_content_info"]
        if encap["content_type"].dotted != content_type:
            raise UndecodableMessage(f"the SignedData does not carry a {what}", encap["content_type"].dotted)
        content = encap["content"].native
        if not isinstance(content, bytes):
            raise UndecodableMessage(f"the SignedData carries no {what}")
        choices = list(signed_data["certificates"] or ())
        if len(choices) > MAX_CERTIFICATES:
            raise UndecodableMessage("the CMC message carries too many certificates", f"{len(choices)}")
        asn1_certificates = tuple(choice.chosen for choice in choices if choice.name == "certificate")
        for cert in asn1_certificates:
            _check_readable(cert)
        certificates = tuple(x509.load_der_x509_certificate(cert.dump()) for cert in asn1_certificates)
        signer_info = signer_infos[0]
        signer_info.native  # noqa: B018 - a malformed SignerInfo is undecodable, not a bad signature
        if signer_info["sid"].name == "issuer_and_serial_number":
            signer_info["sid"].chosen["issuer"].hashable  # noqa: B018
        digest: str = signer_info["digest_algorithm"]["algorithm"].native
        return SignedContent(content_type, content, digest, signer_info, certificates, asn1_certificates)
    except (*DECODE_ERRORS, x509.InvalidVersion) as exc:
        raise UndecodableMessage("the CMC message is not a readable CMS SignedData", repr(exc)) from exc


def _check_readable(cert: Any) -> None:
    """Parse what the signer lookup reads, so that a malformed certificate is undecodable rather than
    an unknown signer. A serial number that is not positive is refused (RFC 5280 §4.1.2.2), as
    cryptography will refuse it (it warns for now)."""
    if cert.serial_number <= 0:
        raise ValueError("a certificate's serial number is not positive")
    (cert.issuer.hashable, cert.key_identifier, cert.public_key.sha1)  # noqa: B018


def verify_signed_content(signed: SignedContent, requests: Sequence[tuple[int, bytes]]) -> Signer:
    """Check the SignerInfo (RFC 5652 §5.4, §5.6) against a certificate in the message or the key
    of one of `requests` (bodyPartID, PKCS#10 DER); SignatureCheckError when it fails.

    Signed attributes must hold one contentType and one messageDigest; without signed attributes
    the signature covers the eContent itself (RFC 5652 §5.4 asks for them on non-data content; a
    signature without them still binds the content, so it is accepted)."""
    signer_info = signed.signer_info
    if signed.digest == "md5":
        raise SignatureCheckError(CmcFailInfo.BAD_ALG, "MD5 is not accepted")
    if signed.digest not in SIGNATURE_HASHES:
        raise SignatureCheckError(CmcFailInfo.BAD_ALG, "the digest algorithm is not supported", signed.digest)
    attributes = signer_info["signed_attrs"]
    if isinstance(attributes, core.Void):
        data = signed.content
    else:
        data = _set_of(attributes.contents)
        content_type, message_digest = _content_attributes(data)
        if content_type != signed.content_type:
            raise SignatureCheckError(CmcFailInfo.BAD_MESSAGE_CHECK, "the contentType attribute does not match")
        if not hmac.compare_digest(hashlib.new(signed.digest, signed.content).digest(), message_digest):
            raise SignatureCheckError(CmcFailInfo.BAD_MESSAGE_CHECK, "the messageDigest does not match the content")
    public_key, certificate, request_id = _find_signer(signer_info["sid"], signed, requests)
    signature: bytes = signer_info["signature"].native
    name = _verify_signature(public_key, signature, data, signer_info["signature_algorithm"], signed.digest)
    return Signer(certificate, request_id, name)


def _set_of(contents: bytes) -> bytes:
    """The [0] IMPLICIT signedAttrs re-tagged as the SET OF the signature covers, contents as received."""
    return _tlv(0x31, contents)


def _tlv(tag: int, contents: bytes) -> bytes:
    """A DER element: one-byte `tag`, definite length, `contents`."""
    length = len(contents)
    if length < 0x80:
        return bytes((tag, length)) + contents
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + contents


def _content_attributes(set_der: bytes) -> tuple[str, bytes]:
    """contentType and messageDigest, each once with one value (RFC 5652 §5.3, §11.1, §11.2)."""
    found: dict[str, list[Any]] = {}
    try:
        for attribute in cms.CMSAttributes.load(set_der, strict=True):
            found.setdefault(attribute["type"].native, []).append(attribute["values"])
        (content_types,), (digests,) = found["content_type"], found["message_digest"]
        (content_type,), (message_digest,) = content_types, digests
        text, octets = content_type.dotted, message_digest.native
    except DECODE_ERRORS as exc:
        text = "the signed attributes lack one contentType and one messageDigest"
        raise SignatureCheckError(CmcFailInfo.BAD_MESSAGE_CHECK, text, repr(exc)) from exc
    if not isinstance(octets, bytes):
        raise SignatureCheckError(CmcFailInfo.BAD_MESSAGE_CHECK, "the messageDigest attribute is malformed")
    return text, octets


def _find_signer(
    sid: Any, signed: SignedContent, requests: Sequence[tuple[int, bytes]]
) -> tuple[object, x509.Certificate | None, int | None]:
    """The key the SignerIdentifier names: a certificate in the message or (subjectKeyIdentifier
    only) the key of a PKCS#10 request in it, as when a first enrollment signs with the key being
    certified (RFC 5272 §3.2.1.3; Windows CertEnroll does so). A key identifier matches the SKI
    extension or the RFC 5280 §4.2.1.2 method (1) SHA-1 of the key."""
    holder: x509.Certificate | x509.CertificateSigningRequest | None = None
    request_id: int | None = None
    for cert, loaded in zip(signed.asn1_certificates, signed.certificates, strict=True):
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            found = ias["serial_number"].native == cert.serial_number and ias["issuer"] == cert.issuer
        else:
            found = sid.chosen.native in (cert.key_identifier, cert.public_key.sha1)
        if found:
            holder = loaded
            break
    if holder is None and sid.name == "subject_key_identifier":
        for part, der in requests:
            with contextlib.suppress(ValueError, x509.InvalidVersion):  # a request that names no key
                csr = x509.load_der_x509_csr(der)
                if sid.chosen.native in _key_identifiers(csr):
                    holder, request_id = csr, part
                    break
    if holder is None:
        text = "the signer is neither a certificate nor a request in the message"
        raise SignatureCheckError(CmcFailInfo.BAD_MESSAGE_CHECK, text)
    try:
        public_key = holder.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureCheckError(CmcFailInfo.BAD_ALG, "the signer's key type is not supported", repr(exc)) from exc
    if isinstance(holder, x509.Certificate):
        return public_key, holder, None
    return public_key, None, request_id


_KEY_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def _key_identifiers(holder: x509.CertificateSigningRequest) -> set[bytes]:
    """The SHA-1 of the key (RFC 5280 §4.2.1.2 (1)) and the SKI extension's value, where readable."""
    identifiers: set[bytes] = set()
    with contextlib.suppress(*_KEY_ERRORS):
        identifiers.add(x509.SubjectKeyIdentifier.from_public_key(holder.public_key()).digest)
    with contextlib.suppress(x509.ExtensionNotFound, *_KEY_ERRORS):
        identifiers.add(holder.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    return identifiers


def _verify_signature(public_key: object, signature: bytes, data: bytes, algorithm: Any, digest: str) -> str:
    """Verify with the low-level key API (x509 helpers refuse SHA-1); return the algorithm's name."""
    try:
        name: str = algorithm.signature_algo
    except ValueError:
        name = algorithm["algorithm"].dotted
    try:
        named_hash = algorithm.hash_algo
    except (ValueError, KeyError, TypeError):  # rsaEncryption or bare ecdsa: the digestAlgorithm applies
        named_hash = digest
    if named_hash != digest:
        text = "the signature and digest algorithms disagree"
        raise SignatureCheckError(CmcFailInfo.BAD_ALG, text, f"{named_hash}/{digest}")
    hash_algorithm = SIGNATURE_HASHES[digest]()
    try:
        if name == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
        elif name == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, _pss(algorithm["parameters"]), hash_algorithm)
        elif name == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
        elif name in ("rsassa_pkcs1v15", "rsassa_pss", "ecdsa"):
            raise InvalidSignature  # an algorithm the signer's key cannot have produced
        else:
            raise SignatureCheckError(CmcFailInfo.BAD_ALG, "the signature algorithm is not supported", name)
    except InvalidSignature:
        raise SignatureCheckError(CmcFailInfo.BAD_MESSAGE_CHECK, "the CMC signature does not verify") from None
    except (UnsupportedAlgorithm, *DECODE_ERRORS) as exc:
        raise SignatureCheckError(CmcFailInfo.BAD_ALG, "the signature algorithm is not supported", repr(exc)) from exc
    return name


def _pss(params: Any) -> padding.PSS:
    """RSASSA-PSS-params (RFC 4055 §3.1) as cryptography's padding; MGF1 only."""
    mgf = params["mask_gen_algorithm"]
    mgf_hash = SIGNATURE_HASHES.get(mgf["parameters"]["algorithm"].native)
    if mgf["algorithm"].native != "mgf1" or mgf_hash is None:
        raise ValueError("unsupported RSA-PSS mask generation")
    return padding.PSS(padding.MGF1(mgf_hash()), params["salt_length"].native)


_SHA256_ALGORITHM: bytes = cms.DigestAlgorithm({"algorithm": "sha256"}).dump()
_SIGNED_DATA_OID: bytes = cms.ContentType("signed_data").dump()


def sign_content(
    key: SigningKey,
    issuer_and_serial_der: bytes,
    content_type: str,
    content: bytes,
    certificates_der: Sequence[bytes],
    signing_time: dt.datetime | None = None,
) -> bytes:
    """DER ContentInfo(SignedData) v3 (RFC 5652 §5.1: eContentType is not id-data) over `content`,
    one SignerInfo by `key` with SHA-256 and signed attributes contentType, messageDigest and, when
    given, signingTime; the certificates in the order given."""
    attributes: list[dict[str, Any]] = [
        {"type": "content_type", "values": [content_type]},
        {"type": "message_digest", "values": [hashlib.sha256(content).digest()]},
    ]
    if signing_time is not None:  # RFC 5652 §11.3: UTCTime for 1950-2049
        choice = "utc_time" if 1950 <= signing_time.year < 2050 else "generalized_time"
        attributes.append({"type": "signing_time", "values": [cms.Time({choice: signing_time})]})
    signed_attrs = cms.CMSAttributes(attributes)
    to_sign = signed_attrs.dump()  # DER: the SET OF sorted
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = {"algorithm": "sha256_rsa"}
        signature = key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
    else:
        algorithm = {"algorithm": "sha256_ecdsa"}
        signature = key.sign(to_sign, ec.ECDSA(hashes.SHA256()))
    sid = cms.SignerIdentifier(
        name="issuer_and_serial_number", value=cms.IssuerAndSerialNumber.load(issuer_and_serial_der)
    )
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": sid,
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": signed_attrs,
            "signature_algorithm": algorithm,
            "signature": signature,
        }
    )
    encap = cms.EncapsulatedContentInfo({"content_type": content_type, "content": content})
    # Assembled by hand around the parts, so that the certificates go out byte for byte and in the
    # order given (issued first), not re-encoded and DER-sorted by asn1crypto.
    signed_data = _tlv(
        0x30,
        core.Integer(3).dump()
        + _tlv(0x31, _SHA256_ALGORITHM)
        + encap.dump()
        + (_tlv(0xA0, b"".join(certificates_der)) if certificates_der else b"")
        + _tlv(0x31, signer_info.dump()),
    )
    return _tlv(0x30, _SIGNED_DATA_OID + _tlv(0xA0, signed_data))
