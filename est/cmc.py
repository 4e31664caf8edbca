"""EST full CMC (RFC 7030 §4.3, RFC 5272): verify a Full PKI Request, build a Full PKI Response.

Sans-I/O: DER in, typed values out, and the reverse; no clock (signingTime is passed in) and no
randomness (the reply's senderNonce is passed in). What is *not* checked here: the PKCS#10
requests' own signatures (`shared_ca.csr.load_csr` does that for every protocol) and whether the
signer certificate is one we trust (chain, validity, revocation): the service judges that.

`parse_full_cmc` raises `CmcDecodeError` (HTTP 400: not a readable request) or a `CmcFailure`
(readable, refused as a whole: a signed failure response via `build_failure_response`, or 400).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Sequence
from typing import Any, NamedTuple

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from est import cmc_asn1 as asn1
from est.cmc_asn1 import CmcFailInfo, CmcStatus
from est.wire import EstWireError
from shared_ca.errors import CAError, ErrorKind

__all__ = [
    "FULL_CMC_REQUEST",
    "FULL_CMC_RESPONSE",
    "MAX_BODY_PARTS",
    "MAX_CERTIFICATES",
    "MAX_CONTROL_VALUES",
    "MAX_MESSAGE_BYTES",
    "BodyPartKind",
    "CmcAlgorithmError",
    "CmcControl",
    "CmcDecodeError",
    "CmcFailInfo",
    "CmcFailure",
    "CmcReplyContext",
    "CmcRequest",
    "CmcResponse",
    "CmcRevokeRequest",
    "CmcSignatureError",
    "CmcSigner",
    "CmcStatus",
    "CmcStatusInfo",
    "Pkcs10Request",
    "UnsupportedBodyPart",
    "build_failure_response",
    "build_pki_response",
    "parse_full_cmc",
    "parse_pki_response",
]

# RFC 7030 §4.3.1, §4.3.2.
FULL_CMC_REQUEST = "application/pkcs7-mime; smime-type=CMC-request"
FULL_CMC_RESPONSE = "application/pkcs7-mime; smime-type=CMC-response"

MAX_MESSAGE_BYTES = 64 * 1024
MAX_BODY_PARTS = 16  # controls + requests + cmsSequence + otherMsgSequence, in one PKIData
MAX_CONTROL_VALUES = 16  # values in one control's attrValues
MAX_CERTIFICATES = asn1.MAX_CERTIFICATES  # in SignedData.certificates


class CmcDecodeError(EstWireError):
    """Not a CMC message we can read (not DER, not one SignedData over PKIData, malformed, over a
    bound): HTTP 400. Nothing in it is trusted enough to echo in a signed reply."""

    http_status = 400


@dataclasses.dataclass(frozen=True)
class CmcReplyContext:
    """What a response to a request echoes (RFC 5272 §6.6) and which body parts it answers."""

    transaction_id: int | None = None
    sender_nonce: bytes | None = None  # the request's senderNonce, returned as recipientNonce
    body_part_ids: tuple[int, ...] = ()  # the requests and revokeRequests; () answers the PKIData (0)


_KINDS = {CmcFailInfo.BAD_ALG: ErrorKind.BAD_ALGORITHM, CmcFailInfo.BAD_MESSAGE_CHECK: ErrorKind.BAD_SIGNATURE}


class CmcFailure(CAError):
    """A readable request refused as a whole: answer `build_failure_response(signer, reply=...,
    fail_info=..., text=...)` (CMCStatusInfoV2 failed), or HTTP 400. `text` is safe to send."""

    def __init__(self, fail_info: CmcFailInfo, text: str, reply: CmcReplyContext, *, detail: str | None = None) -> None:
        super().__init__(text, detail=detail)
        self.kind = _KINDS.get(fail_info, ErrorKind.BAD_INPUT)
        self.fail_info = fail_info
        self.text = text
        self.reply = reply


class CmcSignatureError(CmcFailure):
    """The SignerInfo does not verify, its signed attributes are wrong, or its signer is neither a
    certificate in the message nor the key of a PKCS#10 request in it: badMessageCheck."""

    def __init__(self, text: str, reply: CmcReplyContext, *, detail: str | None = None) -> None:
        super().__init__(CmcFailInfo.BAD_MESSAGE_CHECK, text, reply, detail=detail)


class CmcAlgorithmError(CmcFailure):
    """A digest or signature algorithm we refuse (MD5) or do not implement: badAlg."""

    def __init__(self, text: str, reply: CmcReplyContext, *, detail: str | None = None) -> None:
        super().__init__(CmcFailInfo.BAD_ALG, text, reply, detail=detail)


class BodyPartKind(enum.StrEnum):
    """Where an unsupported body part sits in the PKIData (RFC 5272 §3.2.1)."""

    CONTROL = "control"
    CRM = "crm"  # CRMF request (RFC 4211)
    ORM = "orm"  # other request message
    CMS = "cmsSequence"
    OTHER_MSG = "otherMsgSequence"


@dataclasses.dataclass(frozen=True)
class CmcControl:
    """A control (TaggedAttribute, RFC 5272 §3.2.1.1): each value as DER."""

    body_part_id: int
    oid: str
    values: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class Pkcs10Request:
    """A TaggedCertificationRequest (tcr): the PKCS#10 DER, its signature not yet checked."""

    body_part_id: int
    der: bytes


@dataclasses.dataclass(frozen=True)
class CmcRevokeRequest:
    """A revokeRequest control value (RFC 5272 §6.11)."""

    body_part_id: int
    issuer: x509.Name
    issuer_der: bytes  # exactly as sent, to compare with a CA subject's DER
    serial_number: int
    reason: x509.ReasonFlags
    invalidity_date: dt.datetime | None = None
    passphrase: bytes | None = dataclasses.field(default=None, repr=False)
    comment: str | None = None


@dataclasses.dataclass(frozen=True)
class UnsupportedBodyPart:
    """A body part we do not act on; `type_oid` is the control, request or content type."""

    body_part_id: int
    kind: BodyPartKind
    type_oid: str | None = None


@dataclasses.dataclass(frozen=True)
class CmcRequest:
    """A Full PKI Request (RFC 5272 §3.2) whose signature verified.

    transactionId, senderNonce and recipientNonce are understood (RFC 5272 §6.6): the first two are
    echoed by `reply`, recipientNonce is ignored (we never answer pending). Everything else we do
    not implement is listed in `unsupported`; RFC 5272 §3.2.1.1 lets the service fail the request.
    """

    controls: tuple[CmcControl, ...]  # every control, in wire order
    certification_requests: tuple[Pkcs10Request, ...]
    revoke_requests: tuple[CmcRevokeRequest, ...]
    unsupported: tuple[UnsupportedBodyPart, ...]
    transaction_id: int | None
    sender_nonce: bytes | None
    signer_certificate: x509.Certificate | None  # None when the key of a PKCS#10 request signed
    signer_request_id: int | None  # the bodyPartID of that PKCS#10 request
    digest: str  # "sha256", …
    signature_algorithm: str  # "rsassa_pkcs1v15", "rsassa_pss", "ecdsa"
    reply: CmcReplyContext


def parse_full_cmc(der: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> CmcRequest:
    """Decode a Full PKI Request (ContentInfo/SignedData over id-cct-PKIData) and verify its signer."""
    if len(der) > max_bytes:
        raise CmcDecodeError("the CMC request is too large", detail=f"{len(der)} bytes > {max_bytes}")
    signed = _decode(der, asn1.PKI_DATA_OID, "PKIData")
    try:
        parts = _read_pki_data(signed.content)
    except CmcDecodeError:
        raise
    except asn1.DECODE_ERRORS as exc:
        raise CmcDecodeError("the PKIData is malformed", detail=repr(exc)) from exc
    operations = tuple(r.body_part_id for r in parts.requests) + tuple(r.body_part_id for r in parts.revocations)
    operations += tuple(u.body_part_id for u in parts.unsupported if u.kind in (BodyPartKind.CRM, BodyPartKind.ORM))
    reply = CmcReplyContext(parts.transaction_id, parts.sender_nonce, operations)
    signer = _verify(signed, [(r.body_part_id, r.der) for r in parts.requests], reply)
    return CmcRequest(
        controls=parts.controls,
        certification_requests=parts.requests,
        revoke_requests=parts.revocations,
        unsupported=parts.unsupported,
        transaction_id=parts.transaction_id,
        sender_nonce=parts.sender_nonce,
        signer_certificate=signer.certificate,
        signer_request_id=signer.request_id,
        digest=signed.digest,
        signature_algorithm=signer.signature_algorithm,
        reply=reply,
    )


def _decode(der: bytes, content_type: str, what: str) -> asn1.SignedContent:
    try:
        return asn1.decode_signed_content(der, content_type, what)
    except asn1.UndecodableMessage as exc:
        raise CmcDecodeError(exc.text, detail=exc.detail) from exc


def _verify(signed: asn1.SignedContent, requests: Sequence[tuple[int, bytes]], reply: CmcReplyContext) -> asn1.Signer:
    try:
        return asn1.verify_signed_content(signed, requests)
    except asn1.SignatureCheckError as exc:
        error = CmcAlgorithmError if exc.fail_info is CmcFailInfo.BAD_ALG else CmcSignatureError
        raise error(exc.text, reply, detail=exc.detail) from exc


class _PkiDataParts(NamedTuple):
    controls: tuple[CmcControl, ...]
    requests: tuple[Pkcs10Request, ...]
    revocations: tuple[CmcRevokeRequest, ...]
    unsupported: tuple[UnsupportedBodyPart, ...]
    transaction_id: int | None
    sender_nonce: bytes | None


_SINGLE_CONTROLS = ("transaction_id", "sender_nonce", "recipient_nonce")


def _read_pki_data(content: bytes) -> _PkiDataParts:
    """Walk a PKIData (RFC 5272 §3.2.1); asn1crypto errors propagate for the caller to wrap."""
    pki_data = asn1.PKIData.load(content, strict=True)
    sequences = [pki_data[name] for name in ("control_sequence", "req_sequence", "cms_sequence", "other_msg_sequence")]
    count = sum(len(sequence) for sequence in sequences)
    if count > MAX_BODY_PARTS:
        raise CmcDecodeError("the PKIData has too many body parts", detail=f"{count} > {MAX_BODY_PARTS}")
    controls_seq, requests_seq, cms_seq, other_seq = sequences
    seen: set[int] = set()

    def identity(value: Any) -> int:
        # RFC 5272 §3.2.2: unique within the PKIData; 0 is reserved for the PKIData itself.
        number: int = value.native
        if not 0 < number <= asn1.BODY_PART_ID_MAX or number in seen:
            raise CmcDecodeError("a bodyPartID is reserved, out of range or used twice", detail=str(number))
        seen.add(number)
        return number

    controls: list[CmcControl] = []
    revocations: list[CmcRevokeRequest] = []
    unsupported: list[UnsupportedBodyPart] = []
    singles: dict[str, Any] = {}
    for control in controls_seq:
        part = identity(control["body_part_id"])
        oid, name, values = control["attr_type"].dotted, control["attr_type"].native, control["attr_values"]
        if not 0 < len(values) <= MAX_CONTROL_VALUES:
            raise CmcDecodeError("a control has no values or too many", detail=f"{oid}: {len(values)}")
        controls.append(CmcControl(part, oid, tuple(value.dump() for value in values)))
        if name == "revoke_request":
            revocations.extend(_revoke_request(part, value) for value in values)
        elif name in _SINGLE_CONTROLS:
            if name in singles or len(values) != 1:
                raise CmcDecodeError(f"the {name} control must appear once with one value")
            singles[name] = values[0].native
        else:
            unsupported.append(UnsupportedBodyPart(part, BodyPartKind.CONTROL, oid))
    requests: list[Pkcs10Request] = []
    for request in requests_seq:
        chosen = request.chosen
        if request.name == "tcr":
            requests.append(Pkcs10Request(identity(chosen["body_part_id"]), chosen["certification_request"].dump()))
        elif request.name == "crm":  # its identity is the certReqId (RFC 5272 §3.2.2)
            unsupported.append(UnsupportedBodyPart(identity(chosen["cert_req"]["cert_req_id"]), BodyPartKind.CRM))
        else:
            oid = chosen["request_message_type"].dotted
            unsupported.append(UnsupportedBodyPart(identity(chosen["body_part_id"]), BodyPartKind.ORM, oid))
    for item in cms_seq:
        oid = item["content_info"]["content_type"].dotted
        unsupported.append(UnsupportedBodyPart(identity(item["body_part_id"]), BodyPartKind.CMS, oid))
    for item in other_seq:
        oid = item["other_msg_type"].dotted
        unsupported.append(UnsupportedBodyPart(identity(item["body_part_id"]), BodyPartKind.OTHER_MSG, oid))
    transaction_id, sender_nonce = singles.get("transaction_id"), singles.get("sender_nonce")
    if not isinstance(transaction_id, int | None) or not isinstance(sender_nonce, bytes | None):
        raise CmcDecodeError("transactionId or senderNonce has the wrong type")
    return _PkiDataParts(
        tuple(controls), tuple(requests), tuple(revocations), tuple(unsupported), transaction_id, sender_nonce
    )


def _revoke_request(part: int, value: Any) -> CmcRevokeRequest:
    """A RevokeRequest value (RFC 5272 §6.11); CRLReason 7 is unassigned and refused."""
    attributes = []
    for rdn in value["issuer_name"].chosen:
        for type_and_value in rdn:
            text = type_and_value["value"].native
            if not isinstance(text, str):
                raise ValueError("a revokeRequest issuerName attribute is not a string")
            attributes.append(x509.NameAttribute(x509.ObjectIdentifier(type_and_value["type"].dotted), text))
    return CmcRevokeRequest(
        body_part_id=part,
        issuer=x509.Name(attributes),
        issuer_der=value["issuer_name"].dump(),
        serial_number=value["serial_number"].native,
        reason=_REASONS[value["reason"].native],
        invalidity_date=value["invalidity_date"].native,
        passphrase=value["passphrase"].native,
        comment=value["comment"].native,
    )


_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "ca_compromise": x509.ReasonFlags.ca_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
    "remove_from_crl": x509.ReasonFlags.remove_from_crl,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aa_compromise": x509.ReasonFlags.aa_compromise,
}


# --- the response (RFC 5272 §4.2, RFC 7030 §4.3.2) -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class CmcSigner:
    """The key that signs Full PKI Responses (the RA's), with its certificate and chain encoded
    once: make it once per worker with `create`."""

    key: asn1.SigningKey
    certificate: x509.Certificate
    issuer_and_serial_der: bytes
    certificates_der: tuple[bytes, ...]  # the signer's certificate, then its chain

    @classmethod
    def create(
        cls, key: asn1.SigningKey, certificate: x509.Certificate, chain: Sequence[x509.Certificate] = ()
    ) -> CmcSigner:
        """Encode `certificate` and `chain` once."""
        ias = cms.IssuerAndSerialNumber(
            {
                "issuer": asn1_x509.Name.load(certificate.issuer.public_bytes()),
                "serial_number": certificate.serial_number,
            }
        )
        ders = tuple(cert.public_bytes(Encoding.DER) for cert in (certificate, *chain))
        return cls(key, certificate, ias.dump(), ders)


@dataclasses.dataclass(frozen=True)
class CmcStatusInfo:
    """One CMCStatusInfoV2 (RFC 5272 §6.1.1): `status` for the body parts listed, with a
    statusString and, only when failed, a CMCFailInfo."""

    status: CmcStatus
    body_part_ids: tuple[int, ...]
    text: str | None = None
    fail_info: CmcFailInfo | None = None

    def __post_init__(self) -> None:
        if not self.body_part_ids or not all(0 <= i <= asn1.BODY_PART_ID_MAX for i in self.body_part_ids):
            raise ValueError("a CMCStatusInfoV2 lists one or more valid bodyPartIDs")
        if self.fail_info is not None and self.status is not CmcStatus.FAILED:
            raise ValueError("failInfo is present only when the status is failed")
        if self.status in (CmcStatus.PENDING, CmcStatus.PARTIAL):
            raise ValueError("pending and partial need a pendInfo, which we do not send")


def build_pki_response(
    signer: CmcSigner,
    *,
    statuses: Sequence[CmcStatusInfo],
    certificates: Sequence[x509.Certificate] = (),
    reply: CmcReplyContext | None = None,
    sender_nonce: bytes | None = None,
    signing_time: dt.datetime | None = None,
) -> bytes:
    """A Full PKI Response: SignedData over id-cct-PKIResponse, signed by `signer` with SHA-256.

    The controlSequence holds each CMCStatusInfoV2, then transactionId and recipientNonce echoed
    from `reply`, then our `sender_nonce` (RFC 5272 §6.6). `certificates` (the issued ones and
    their chain) go first into SignedData.certificates, followed by the signer's own.
    """
    if not statuses:
        raise ValueError("a Full PKI Response needs at least one CMCStatusInfoV2")
    values: list[tuple[str, Any]] = [("status_info_v2", _status_value(status)) for status in statuses]
    if reply is not None and reply.transaction_id is not None:
        values.append(("transaction_id", core.Integer(reply.transaction_id)))
    if reply is not None and reply.sender_nonce is not None:
        values.append(("recipient_nonce", core.OctetString(reply.sender_nonce)))
    if sender_nonce is not None:
        values.append(("sender_nonce", core.OctetString(sender_nonce)))
    controls = [
        {"body_part_id": number, "attr_type": name, "attr_values": [value]}
        for number, (name, value) in enumerate(values, start=1)
    ]
    body = asn1.PKIResponse({"control_sequence": controls, "cms_sequence": [], "other_msg_sequence": []})
    ders = dict.fromkeys([*(cert.public_bytes(Encoding.DER) for cert in certificates), *signer.certificates_der])
    return asn1.sign_content(
        signer.key, signer.issuer_and_serial_der, asn1.PKI_RESPONSE_OID, body.dump(), list(ders), signing_time
    )


def build_failure_response(
    signer: CmcSigner,
    *,
    reply: CmcReplyContext,
    fail_info: CmcFailInfo,
    text: str | None,
    sender_nonce: bytes | None = None,
    signing_time: dt.datetime | None = None,
) -> bytes:
    """A Full PKI Response failing the whole request `reply` describes (e.g. `CmcFailure.reply`)."""
    status = CmcStatusInfo(CmcStatus.FAILED, reply.body_part_ids or (0,), text, fail_info)
    return build_pki_response(
        signer, statuses=[status], reply=reply, sender_nonce=sender_nonce, signing_time=signing_time
    )


def _status_value(status: CmcStatusInfo) -> Any:
    value: dict[str, Any] = {
        "cmc_status": int(status.status),
        "body_list": [asn1.BodyPartReference(name="body_part_id", value=i) for i in status.body_part_ids],
    }
    if status.text is not None:
        value["status_string"] = status.text
    if status.fail_info is not None:
        value["other_info"] = {"fail_info": int(status.fail_info)}
    return asn1.CMCStatusInfoV2(value)


# --- reading a response (for EST clients and round-trip tests) -----------------------------------


@dataclasses.dataclass(frozen=True)
class CmcResponse:
    """A Full PKI Response whose signature verified against the certificate it names."""

    statuses: tuple[CmcStatusInfo, ...]
    certificates: tuple[x509.Certificate, ...]  # SignedData.certificates, in wire order
    transaction_id: int | None
    recipient_nonce: bytes | None
    sender_nonce: bytes | None
    signer_certificate: x509.Certificate


def parse_pki_response(der: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> CmcResponse:
    """Decode a Full PKI Response and verify it with the signer certificate it carries; whether
    that signer is trusted is the caller's question. CmcDecodeError or CmcFailure when not."""
    if len(der) > max_bytes:
        raise CmcDecodeError("the CMC response is too large")
    signed = _decode(der, asn1.PKI_RESPONSE_OID, "PKIResponse")
    signer = _verify(signed, (), CmcReplyContext()).certificate
    assert signer is not None  # no requests to sign with
    try:
        body = asn1.PKIResponse.load(signed.content, strict=True)
        statuses: list[CmcStatusInfo] = []
        singles: dict[str, Any] = {}
        for control in body["control_sequence"]:
            name = control["attr_type"].native
            if name == "status_info_v2":
                statuses.extend(_read_status(value) for value in control["attr_values"])
            elif name in _SINGLE_CONTROLS:
                singles[name] = control["attr_values"][0].native
    except asn1.DECODE_ERRORS as exc:
        raise CmcDecodeError("the PKIResponse is malformed", detail=repr(exc)) from exc
    return CmcResponse(
        tuple(statuses),
        signed.certificates,
        singles.get("transaction_id"),
        singles.get("recipient_nonce"),
        singles.get("sender_nonce"),
        signer,
    )


def _read_status(value: Any) -> CmcStatusInfo:
    ids = []
    for reference in value["body_list"]:
        if reference.name != "body_part_id":
            raise ValueError("bodyPartPath references are not supported")
        ids.append(reference.chosen.native)
    other = value["other_info"]
    fail_info = None
    if not isinstance(other, core.Void):
        if other.name != "fail_info":
            raise ValueError("only a failInfo is read from otherInfo")
        fail_info = CmcFailInfo(int(other.chosen))
    return CmcStatusInfo(CmcStatus(int(value["cmc_status"])), tuple(ids), value["status_string"].native, fail_info)
