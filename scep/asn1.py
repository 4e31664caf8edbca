"""SCEP's ASN.1 vocabulary (RFC 8894 §3.2.1 and §3.3), declared once.

The SCEP signed attributes are declared by subclassing asn1crypto's CMS attribute classes, never by
patching the library's global tables: other code in the process sees asn1crypto unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes

from scep import der
from shared_ca.cms import DIGESTS, content_attributes, der_attribute, der_octet_string, der_oid, der_set_of, der_tlv

# RFC 8894 §3.2.1.1-§3.2.1.6: the Verisign arc the SCEP drafts used, kept by the RFC.
MESSAGE_TYPE_OID = "2.16.840.1.113733.1.9.2"
PKI_STATUS_OID = "2.16.840.1.113733.1.9.3"
FAIL_INFO_OID = "2.16.840.1.113733.1.9.4"
SENDER_NONCE_OID = "2.16.840.1.113733.1.9.5"
RECIPIENT_NONCE_OID = "2.16.840.1.113733.1.9.6"
TRANSACTION_ID_OID = "2.16.840.1.113733.1.9.7"
# RFC 8894 §3.2.1.4 (id-scep-failInfoText, from the PKIX arc).
FAIL_INFO_TEXT_OID = "1.3.6.1.5.5.7.24.1"


class MessageType(enum.StrEnum):
    """RFC 8894 §3.2.1.2: "The messageType attribute specifies the type of operation performed by the
    transaction." Carried as a PrintableString of the decimal number."""

    CertRep = "3"
    """Response to certificate or CRL request."""
    RenewalReq = "17"
    """PKCS #10 certificate request authenticated with an existing certificate."""
    UpdateReq = "18"
    """PKCS #10 certificate request for a CA key update (RFC 8894 keeps it for old clients)."""
    PKCSReq = "19"
    """PKCS #10 certificate request authenticated with a shared secret."""
    CertPoll = "20"
    """Certificate polling in manual enrolment (called GetCertInitial by the drafts)."""
    GetCertInitial = "20"
    GetCert = "21"
    """Retrieve a certificate."""
    GetCRL = "22"
    """Retrieve a CRL."""

    @property
    def is_enrolment(self) -> bool:
        """True for the types whose content is a PKCS#10 request."""
        return self in (MessageType.PKCSReq, MessageType.RenewalReq, MessageType.UpdateReq)


class PkiStatus(enum.StrEnum):
    """RFC 8894 §3.2.1.3: "The pkiStatus attribute contains information about the status of the
    request." A PrintableString of the decimal number."""

    SUCCESS = "0"
    """Request granted."""
    FAILURE = "2"
    """Request rejected (failInfo says why)."""
    PENDING = "3"
    """Request pending for manual approval."""


class FailInfo(enum.StrEnum):
    """RFC 8894 §3.2.1.4: "The failInfo attribute MUST contain one of the following failure reasons"."""

    BAD_ALG = "0"
    """badAlg: Unrecognized or unsupported algorithm."""
    BAD_MESSAGE_CHECK = "1"
    """badMessageCheck: Integrity check (meaning signature verification of the CMS message) failed."""
    BAD_REQUEST = "2"
    """badRequest: Transaction not permitted or supported."""
    BAD_TIME = "3"
    """badTime: The signingTime attribute from the CMS authenticatedAttributes was not sufficiently
    close to the system time."""
    BAD_CERT_ID = "4"
    """badCertID: No certificate could be identified matching the provided criteria."""

    @property
    def rfc_name(self) -> str:
        """The name RFC 8894 gives the value, for logs."""
        return _FAIL_INFO_NAMES[self]


_FAIL_INFO_NAMES = {
    FailInfo.BAD_ALG: "badAlg",
    FailInfo.BAD_MESSAGE_CHECK: "badMessageCheck",
    FailInfo.BAD_REQUEST: "badRequest",
    FailInfo.BAD_TIME: "badTime",
    FailInfo.BAD_CERT_ID: "badCertID",
}


class Digest(enum.StrEnum):
    """Message digests SCEP messages are signed with; values are cryptography's hash names.

    MD5 is decoded and reported so the service can refuse it by policy (RFC 8894 §3.5.2 says
    "MD5 SHOULD NOT be used"); it is never chosen by us.
    """

    MD5 = "md5"
    SHA1 = "sha1"
    SHA224 = "sha224"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """A fresh cryptography hash object for this digest."""
        return DIGESTS[self]()

    def compute(self, data: bytes) -> bytes:
        """The digest of `data`."""
        return hashlib.new(self.value, data).digest()

    @classmethod
    def from_asn1_name(cls, name: str) -> Digest | None:
        """Map asn1crypto's DigestAlgorithm name ('sha256') to a Digest, None when unsupported."""
        try:
            return cls(name)
        except ValueError:
            return None


class SetOfString(core.SetOf):  # type: ignore[misc]
    """Values RFC 8894 declares PrintableString (UTF8String for failInfoText); any directory string
    type is read, since a lenient server outlives a strict one."""

    _child_spec = asn1_x509.DirectoryString


def printable_string(value: str) -> Any:
    """A SCEP string value as we send it: PrintableString (RFC 8894 §3.2.1)."""
    return asn1_x509.DirectoryString(name="printable_string", value=value)


def utf8_string(value: str) -> Any:
    """A failInfoText value: UTF8String (RFC 8894 §3.2.1.4)."""
    return asn1_x509.DirectoryString(name="utf8_string", value=value)


class ScepAttributeType(cms.CMSAttributeType):  # type: ignore[misc]
    """CMS attribute types, with SCEP's added (RFC 8894 §3.2.1)."""

    _map = {
        **cms.CMSAttributeType._map,
        MESSAGE_TYPE_OID: "message_type",
        PKI_STATUS_OID: "pki_status",
        FAIL_INFO_OID: "fail_info",
        SENDER_NONCE_OID: "sender_nonce",
        RECIPIENT_NONCE_OID: "recipient_nonce",
        TRANSACTION_ID_OID: "transaction_id",
        FAIL_INFO_TEXT_OID: "fail_info_text",
    }
    # asn1crypto builds the name → OID map once per class, but skips a class that inherited one.
    _reverse_map = None


class ScepAttribute(cms.CMSAttribute):  # type: ignore[misc]
    """A signed attribute whose SCEP values decode to their declared types."""

    _fields = [("type", ScepAttributeType), ("values", None)]
    _oid_specs = {
        **cms.CMSAttribute._oid_specs,
        "message_type": SetOfString,
        "pki_status": SetOfString,
        "fail_info": SetOfString,
        "sender_nonce": cms.SetOfOctetString,
        "recipient_nonce": cms.SetOfOctetString,
        "transaction_id": SetOfString,
        "fail_info_text": SetOfString,
    }


class ScepAttributes(cms.CMSAttributes):  # type: ignore[misc]
    """SignedAttributes (RFC 5652 §5.3) as a SCEP message carries them."""

    _child_spec = ScepAttribute


class IssuerAndSubject(core.Sequence):  # type: ignore[misc]
    """RFC 8894 §3.3.3: the CertPoll content, identifying the pending request."""

    _fields = [("issuer", asn1_x509.Name), ("subject", asn1_x509.Name)]


class GcmParameters(core.Sequence):  # type: ignore[misc]
    """RFC 5084 §3.2 GCMParameters: aes-nonce and aes-ICVlen (DEFAULT 12)."""

    _fields = [("nonce", core.OctetString), ("icv_len", core.Integer, {"default": 12})]


@dataclasses.dataclass(frozen=True)
class SignedAttributes:
    """The signed attributes of a SCEP message (RFC 8894 §3.2.1), decoded; None where absent.

    String values are kept as sent (`message_type` "19", not MessageType) so the caller decides what
    an unknown value means.
    """

    der: bytes  # the SET OF the signature covers
    content_type: str | None = None  # dotted OID
    message_digest: bytes | None = None
    signing_time: dt.datetime | None = None
    message_type: str | None = None
    transaction_id: str | None = None
    sender_nonce: bytes | None = None
    recipient_nonce: bytes | None = None
    pki_status: str | None = None
    fail_info: str | None = None
    fail_info_text: str | None = None


_SINGLE_VALUED = {
    "content_type",
    "message_digest",
    "signing_time",
    "message_type",
    "transaction_id",
    "sender_nonce",
    "recipient_nonce",
    "pki_status",
    "fail_info",
    "fail_info_text",
}
# The attribute types we read, by OID contents, named as ScepAttributeType names them.
_ATTRIBUTE_NAMES = {
    der.oid_contents(oid): name for oid, name in ScepAttributeType._map.items() if name in _SINGLE_VALUED
}
_ATTRIBUTE = (der.field(der.OID), der.field(der.SET))
_STRING_CODECS = {0x13: "latin1", 0x0C: "utf-8"}  # PrintableString, UTF8String: as asn1crypto decodes them
_T = TypeVar("_T")


def decode_signed_attributes(set_der: bytes) -> SignedAttributes:
    """Decode a DER SET OF Attribute; ValueError when malformed or when a SCEP or CMS attribute
    is repeated or has other than one value (RFC 5652 §5.3, §11). Other attributes are skipped unread."""
    values: dict[str, der.Tlv] = {}
    for attribute in der.children(set_der, der.read_whole(set_der, der.SET)):
        attr_type, attr_values = der.fields(set_der, der.expect(attribute, der.SEQUENCE), _ATTRIBUTE)
        name = _ATTRIBUTE_NAMES.get(der.contents(set_der, attr_type))
        if name is None:
            continue
        entries = der.children(set_der, attr_values)
        if name in values or len(entries) != 1:
            raise ValueError(f"attribute {name} must appear once with one value")
        values[name] = entries[0]

    def value(name: str, read: Callable[[bytes, der.Tlv], _T]) -> _T | None:
        return read(set_der, values[name]) if name in values else None

    return SignedAttributes(
        der=set_der,
        content_type=value("content_type", _dotted),
        message_digest=value("message_digest", _octets),
        signing_time=value("signing_time", _time),
        message_type=value("message_type", _string),
        transaction_id=value("transaction_id", _string),
        sender_nonce=value("sender_nonce", _octets),
        recipient_nonce=value("recipient_nonce", _octets),
        pki_status=value("pki_status", _string),
        fail_info=value("fail_info", _string),
        fail_info_text=value("fail_info_text", _string),
    )


def names_match(first: bytes, second: bytes) -> bool:
    """Whether two DER Names are the same: equal encodings, else RFC 5280 §7.1 matching (about 1 ms,
    rarely needed: peers almost always copy a name's encoding)."""
    return first == second or bool(asn1_x509.Name.load(first) == asn1_x509.Name.load(second))


def _dotted(data: bytes, value: der.Tlv) -> str:
    return der.dotted(der.contents(data, der.expect(value, der.OID)))


def _octets(data: bytes, value: der.Tlv) -> bytes:
    return der.octets(data, der.expect(value, *der.OCTET_STRINGS))


def _string(data: bytes, value: der.Tlv) -> str:
    """A DirectoryString value; the uncommon string types are left to asn1crypto."""
    codec = _STRING_CODECS.get(value.tag)
    if codec is not None:
        return der.contents(data, value).decode(codec)
    try:
        native = asn1_x509.DirectoryString.load(der.encoding(data, value), strict=True).native
    except (TypeError, KeyError, OverflowError) as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(native, str):
        raise ValueError("a string attribute has the wrong type")
    return native


def _time(data: bytes, value: der.Tlv) -> dt.datetime:
    """A signingTime value (RFC 5652 §11.3), decoded by asn1crypto: rare, and its calendar rules are subtle."""
    try:
        native = cms.Time.load(der.encoding(data, value), strict=True).native
    except (TypeError, KeyError, OverflowError) as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(native, dt.datetime):
        raise ValueError("attribute signing_time has the wrong type")
    return native


# SCEP attribute types as DER OIDs (RFC 8894 §3.2.1).
_MESSAGE_TYPE_DER = der_oid(MESSAGE_TYPE_OID)
_PKI_STATUS_DER = der_oid(PKI_STATUS_OID)
_FAIL_INFO_DER = der_oid(FAIL_INFO_OID)
_SENDER_NONCE_DER = der_oid(SENDER_NONCE_OID)
_RECIPIENT_NONCE_DER = der_oid(RECIPIENT_NONCE_OID)
_TRANSACTION_ID_DER = der_oid(TRANSACTION_ID_OID)
_FAIL_INFO_TEXT_DER = der_oid(FAIL_INFO_TEXT_OID)


def _printable(value: str) -> bytes:
    """A PrintableString, its characters encoded as asn1crypto does (Latin-1)."""
    return der_tlv(0x13, value.encode("latin1"))


def encode_signed_attributes(
    *,
    content_digest: bytes,
    message_type: MessageType,
    transaction_id: str,
    sender_nonce: bytes,
    recipient_nonce: bytes | None = None,
    pki_status: PkiStatus | None = None,
    fail_info: FailInfo | None = None,
    fail_info_text: str | None = None,
    signing_time: dt.datetime | None = None,
) -> bytes:
    """The DER SET OF signed attributes of a SCEP message (content type data), DER-sorted."""
    entries = [
        *content_attributes(content_digest, signing_time=signing_time),
        der_attribute(_MESSAGE_TYPE_DER, _printable(message_type.value)),
        der_attribute(_TRANSACTION_ID_DER, _printable(transaction_id)),
        der_attribute(_SENDER_NONCE_DER, der_octet_string(sender_nonce)),
    ]
    if recipient_nonce is not None:
        entries.append(der_attribute(_RECIPIENT_NONCE_DER, der_octet_string(recipient_nonce)))
    if pki_status is not None:
        entries.append(der_attribute(_PKI_STATUS_DER, _printable(pki_status.value)))
    if fail_info is not None:
        entries.append(der_attribute(_FAIL_INFO_DER, _printable(fail_info.value)))
    if fail_info_text is not None:
        entries.append(der_attribute(_FAIL_INFO_TEXT_DER, der_tlv(0x0C, fail_info_text.encode("utf-8"))))
    return der_set_of(entries)


def encode_content_attributes(*, content_digest: bytes, signing_time: dt.datetime | None = None) -> bytes:
    """The DER SET OF signed attributes of a plain CMS SignedData over id-data (RFC 5652 §5.3): contentType and
    messageDigest, and signingTime when given. The GetNextCACert reply carries no SCEP attributes."""
    return der_set_of(content_attributes(content_digest, signing_time=signing_time))
