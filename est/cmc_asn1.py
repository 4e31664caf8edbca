"""CMC's ASN.1 vocabulary (RFC 5272 Appendix A, updated by RFC 6402), and the CMS SignedData a CMC
message travels in (RFC 5652 §5) as CMC reads it. `est.cmc` and `est.cmc_signed` build on this.

Declared by subclassing asn1crypto's classes, never by patching the library: other code in the
process sees asn1crypto unchanged. The CMC module is `DEFINITIONS IMPLICIT TAGS`, so the context
tags of TaggedRequest and OtherStatusInfo replace the tag of the alternative they mark.
"""

from __future__ import annotations

import enum

from asn1crypto import cms, core, crl
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509

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
