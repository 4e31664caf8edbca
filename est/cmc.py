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
import hashlib
from collections.abc import Sequence
from typing import Any

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from est import cmc_asn1 as asn1
from est import cmc_signed
from est.cmc_asn1 import CmcFailInfo, CmcStatus
from est.cmc_pki_data import (
    SINGLE_CONTROLS,
    BodyPartKind,
    CmcControl,
    CmcRevokeRequest,
    Pkcs10Request,
    UnsupportedBodyPart,
    read_pki_data,
)
from est.wire import EstWireError
from shared_ca.cms import (
    DECODE_ERRORS,
    CmsSigner,
    RsaScheme,
    SigningKey,
    build_signed_data,
    content_attributes,
    der_set_of,
)
from shared_ca.errors import AlgorithmNotAllowed, BadSignature, CAError, ErrorKind, InvalidRequest

__all__ = [
    "FULL_CMC_REQUEST",
    "FULL_CMC_RESPONSE",
    "MAX_MESSAGE_BYTES",
    "CmcAlgorithmError",
    "CmcDecodeError",
    "CmcFailInfo",
    "CmcFailure",
    "CmcReplyContext",
    "CmcRequest",
    "CmcResponse",
    "CmcSignatureError",
    "CmcStatus",
    "CmcStatusInfo",
    "build_failure_response",
    "build_pki_response",
    "parse_full_cmc",
    "parse_pki_response",
    "response_signer",
]

# RFC 7030 §4.3.1, §4.3.2.
FULL_CMC_REQUEST = "application/pkcs7-mime; smime-type=CMC-request"
FULL_CMC_RESPONSE = "application/pkcs7-mime; smime-type=CMC-response"

MAX_MESSAGE_BYTES = 64 * 1024


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
    fail_info=..., text=public_message)` (CMCStatusInfoV2 failed), or HTTP 400; `detail` is for the log."""

    def __init__(
        self, fail_info: CmcFailInfo, public_message: str, reply: CmcReplyContext, *, detail: str | None = None
    ) -> None:
        super().__init__(public_message, detail=detail)
        self.kind = _KINDS.get(fail_info, ErrorKind.BAD_INPUT)
        self.fail_info = fail_info
        self.reply = reply


class CmcSignatureError(CmcFailure):
    """The SignerInfo does not verify, its signed attributes are wrong, or its signer is neither a
    certificate in the message nor the key of a PKCS#10 request in it: badMessageCheck."""

    def __init__(self, public_message: str, reply: CmcReplyContext, *, detail: str | None = None) -> None:
        super().__init__(CmcFailInfo.BAD_MESSAGE_CHECK, public_message, reply, detail=detail)


class CmcAlgorithmError(CmcFailure):
    """A digest or signature algorithm we refuse (MD5) or do not implement: badAlg."""

    def __init__(self, public_message: str, reply: CmcReplyContext, *, detail: str | None = None) -> None:
        super().__init__(CmcFailInfo.BAD_ALG, public_message, reply, detail=detail)


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
        parts = read_pki_data(signed.content)
    except InvalidRequest as exc:
        raise CmcDecodeError(exc.public_message, detail=exc.detail) from exc
    except DECODE_ERRORS as exc:
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


def _decode(der: bytes, content_type: str, what: str) -> cmc_signed.SignedContent:
    try:
        return cmc_signed.decode_signed_content(der, content_type, what)
    except InvalidRequest as exc:
        raise CmcDecodeError(exc.public_message, detail=exc.detail) from exc


def _verify(
    signed: cmc_signed.SignedContent, requests: Sequence[tuple[int, bytes]], reply: CmcReplyContext
) -> cmc_signed.Signer:
    try:
        return cmc_signed.verify_signed_content(signed, requests)
    except (BadSignature, AlgorithmNotAllowed) as exc:
        error = CmcAlgorithmError if exc.kind is ErrorKind.BAD_ALGORITHM else CmcSignatureError
        raise error(exc.public_message, reply, detail=exc.detail) from exc


# --- the response (RFC 5272 §4.2, RFC 7030 §4.3.2) -----------------------------------------------


def response_signer(
    key: SigningKey, certificate: x509.Certificate, chain: Sequence[x509.Certificate] = ()
) -> CmsSigner:
    """The signer of Full PKI Responses (the RA), its certificate and chain encoded once: make it once
    per worker. An RSA key signs sha256WithRSAEncryption."""
    return CmsSigner.create(key, certificate, chain, rsa_scheme=RsaScheme.PKCS1V15_WITH_DIGEST)


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
    signer: CmsSigner,
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
    content = body.dump()
    ders = dict.fromkeys([*(cert.public_bytes(Encoding.DER) for cert in certificates), *signer.certificates_der])
    digest = hashlib.sha256(content).digest()
    attributes = content_attributes(digest, content_type=asn1.PKI_RESPONSE_OID, signing_time=signing_time)
    return build_signed_data(
        signer,
        digest="sha256",
        signed_attributes_der=der_set_of(attributes),
        content=content,
        content_type=asn1.PKI_RESPONSE_OID,
        certificates_der=list(ders),
    )


def build_failure_response(
    signer: CmsSigner,
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
            elif name in SINGLE_CONTROLS:
                singles[name] = control["attr_values"][0].native
    except DECODE_ERRORS as exc:
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
