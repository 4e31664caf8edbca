"""PKIData, the body of a Full PKI Request (RFC 5272 §3.2.1): its controls, its PKCS#10 requests,
its revokeRequests, and the body parts we do not act on. `est.cmc` builds on this.

What breaks a rule of RFC 5272 or one of our bounds raises InvalidRequest; asn1crypto's errors on
malformed DER propagate for the caller to wrap.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any, NamedTuple

from cryptography import x509

from est import cmc_asn1 as asn1
from shared_ca.cms import CRL_REASONS
from shared_ca.errors import InvalidRequest

MAX_BODY_PARTS = 16  # controls + requests + cmsSequence + otherMsgSequence, in one PKIData
MAX_CONTROL_VALUES = 16  # values in one control's attrValues


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


class PkiDataParts(NamedTuple):
    """The body parts of a PKIData, and the transactionId and senderNonce controls."""

    controls: tuple[CmcControl, ...]
    requests: tuple[Pkcs10Request, ...]
    revocations: tuple[CmcRevokeRequest, ...]
    unsupported: tuple[UnsupportedBodyPart, ...]
    transaction_id: int | None
    sender_nonce: bytes | None


SINGLE_CONTROLS = ("transaction_id", "sender_nonce", "recipient_nonce")


def read_pki_data(content: bytes) -> PkiDataParts:
    """Walk a PKIData (RFC 5272 §3.2.1): InvalidRequest past a bound; asn1crypto errors propagate."""
    pki_data = asn1.PKIData.load(content, strict=True)
    sequences = [pki_data[name] for name in ("control_sequence", "req_sequence", "cms_sequence", "other_msg_sequence")]
    count = sum(len(sequence) for sequence in sequences)
    if count > MAX_BODY_PARTS:
        raise InvalidRequest("the PKIData has too many body parts", detail=f"{count} > {MAX_BODY_PARTS}")
    controls_seq, requests_seq, cms_seq, other_seq = sequences
    seen: set[int] = set()

    def identity(value: Any) -> int:
        # RFC 5272 §3.2.2: unique within the PKIData; 0 is reserved for the PKIData itself.
        number: int = value.native
        if not 0 < number <= asn1.BODY_PART_ID_MAX or number in seen:
            raise InvalidRequest("a bodyPartID is reserved, out of range or used twice", detail=str(number))
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
            raise InvalidRequest("a control has no values or too many", detail=f"{oid}: {len(values)}")
        controls.append(CmcControl(part, oid, tuple(value.dump() for value in values)))
        if name == "revoke_request":
            revocations.extend(_revoke_request(part, value) for value in values)
        elif name in SINGLE_CONTROLS:
            if name in singles or len(values) != 1:
                raise InvalidRequest(f"the {name} control must appear once with one value")
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
        raise InvalidRequest("transactionId or senderNonce has the wrong type")
    return PkiDataParts(
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
        reason=CRL_REASONS[value["reason"].native],
        invalidity_date=value["invalidity_date"].native,
        passphrase=value["passphrase"].native,
        comment=value["comment"].native,
    )
