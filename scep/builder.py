"""Build the SignedData SCEP sends: CertRep (RFC 8894 §3.3.2) and degenerate certs-only PKCS#7.

`RaIdentity` holds the RA's key and its certificates already encoded, made once per worker, so a
reply costs one SignedData assembly and one RSA signature, never a certificate parse.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

from asn1crypto import parser
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from scep.asn1 import Digest, FailInfo, MessageType, PkiStatus, encode_content_attributes, encode_signed_attributes
from scep.envelope import ContentCipher, KeyTransport, Rng, seal_envelope
from scep.message import ReplyContext
from shared_ca.cms import DER_DATA_OID, CmsSigner, build_signed_data, der_integer, der_oid, der_sequence, der_tlv

RaIdentity = CmsSigner
"""The RA as a CertRep signer: its key, its certificate, then the CA chain (RFC 8894 §3.3.2)."""

_SIGNED_DATA_OID = der_oid("1.2.840.113549.1.7.2")
_VERSION_1 = der_integer(1)
_EMPTY_SET = b"\x31\x00"
_DATA_CONTENT_INFO = der_sequence(DER_DATA_OID)  # EncapsulatedContentInfo of type data, eContent absent


def _signed_data_info(*fields: bytes) -> bytes:
    """ContentInfo(SignedData) around the SignedData `fields` (RFC 5652 §3, §5.1)."""
    return der_sequence(_SIGNED_DATA_OID, der_tlv(0xA0, der_sequence(_VERSION_1, *fields)))


def degenerate_certs_only(certs: Sequence[x509.Certificate], crls: Sequence[bytes] = ()) -> bytes:
    """A degenerate certs-only SignedData (RFC 8894 §3.4): certificates and CRLs (DER), no signers.

    This is the GetCACert reply (RA first, then the CA chain) and the inner content of a CertRep.
    The CRLs are a DER SET OF, sorted.
    """
    fields = [_EMPTY_SET, _DATA_CONTENT_INFO, _certificate_set([c.public_bytes(Encoding.DER) for c in certs])]
    if crls:
        fields.append(der_tlv(0xA1, b"".join(sorted(_crl_der(d) for d in crls))))
    fields.append(_EMPTY_SET)
    return _signed_data_info(*fields)


def build_next_ca_reply(
    ra: RaIdentity, certs: Sequence[x509.Certificate], *, signing_time: dt.datetime | None = None
) -> bytes:
    """The GetNextCACert reply (RFC 8894 §4.7.1): a SignedData signed by the current RA whose content
    (eContentType id-data, as every SCEP SignedData) is a degenerate certs-only SignedData holding the
    next CA and next RA certificates. SHA-256, contentType and messageDigest signed attributes; no
    SCEP attributes, since this is no pkiMessage. Without `signing_time` the reply is deterministic
    (RSA PKCS#1 v1.5), so a worker can build it once."""
    if not certs:
        raise ValueError("a GetNextCACert reply needs at least the next CA certificate")
    content = degenerate_certs_only(certs)
    attributes = encode_content_attributes(content_digest=Digest.SHA256.compute(content), signing_time=signing_time)
    return build_signed_data(ra, digest=Digest.SHA256, signed_attributes_der=attributes, content=content)


def _certificate_set(ders: Sequence[bytes]) -> bytes:
    """The [0] IMPLICIT certificates in the order given (RA first, then its chain), as micromdm and step-ca
    send them, rather than DER-sorted: some clients take the first certificate for the RA."""
    return der_tlv(0xA0, b"".join(ders))


def _crl_der(der: bytes) -> bytes:
    """The CertificateList at the start of `der`; ValueError when it is no SEQUENCE."""
    class_, method, tag, header, contents, _trailer = parser.parse(der)
    if (class_, method, tag) != (0, 1, 16):
        raise ValueError("a CRL is not a SEQUENCE")
    return bytes(header) + bytes(contents)


def build_cert_rep(
    *,
    ra: RaIdentity,
    status: PkiStatus,
    transaction_id: str,
    recipient_nonce: bytes,
    sender_nonce: bytes,
    digest: Digest,
    fail_info: FailInfo | None = None,
    fail_info_text: str | None = None,
    issued: Sequence[x509.Certificate] = (),
    recipient_cert: x509.Certificate | None = None,
    content_cipher: ContentCipher | None = None,
    key_transport: KeyTransport = KeyTransport.RSA_PKCS1V15,
    crl_der: bytes | None = None,
    signing_time: dt.datetime | None = None,
    rng: Rng = os.urandom,
) -> bytes:
    """A CertRep signed by the RA with the requester's digest (RFC 8894 §3.3.2).

    SUCCESS envelopes a degenerate certs-only SignedData holding `issued` (or `crl_der`, for GetCRL)
    to `recipient_cert` with the requester's `content_cipher`; FAILURE carries failInfo and, when
    given, failInfoText; PENDING and FAILURE have no content. `sender_nonce` must be fresh;
    `recipient_nonce` is the request's senderNonce.
    """
    content: bytes | None = None
    if status is PkiStatus.SUCCESS:
        if recipient_cert is None or content_cipher is None or not (issued or crl_der):
            raise ValueError("a SUCCESS CertRep needs a recipient, a cipher, and certificates or a CRL")
        inner = degenerate_certs_only(issued, [crl_der] if crl_der else [])
        content = seal_envelope(inner, recipient_cert, content_cipher, key_transport, rng=rng)
    elif status is PkiStatus.FAILURE and fail_info is None:
        raise ValueError("a FAILURE CertRep needs a failInfo")
    failed = status is PkiStatus.FAILURE
    attributes = encode_signed_attributes(
        content_digest=digest.compute(content or b""),
        message_type=MessageType.CertRep,
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        recipient_nonce=recipient_nonce,
        pki_status=status,
        fail_info=fail_info if failed else None,
        fail_info_text=fail_info_text if failed else None,
        signing_time=signing_time,
    )
    return build_signed_data(ra, digest=digest, signed_attributes_der=attributes, content=content)


def build_failure(
    *,
    ra: RaIdentity,
    reply: ReplyContext,
    fail_info: FailInfo,
    text: str | None,
    sender_nonce: bytes,
    signing_time: dt.datetime | None = None,
) -> bytes:
    """A CertRep FAILURE answering the request `reply` describes."""
    return build_cert_rep(
        ra=ra,
        status=PkiStatus.FAILURE,
        transaction_id=reply.transaction_id,
        recipient_nonce=reply.sender_nonce,
        sender_nonce=sender_nonce,
        digest=reply.digest,
        fail_info=fail_info,
        fail_info_text=text,
        signing_time=signing_time,
    )
