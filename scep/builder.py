"""Build the SignedData SCEP sends: CertRep (RFC 8894 §3.3.2) and degenerate certs-only PKCS#7.

`RaIdentity` holds the RA's key and its certificates already encoded, made once per worker, so a
reply costs one SignedData assembly and one RSA signature, never a certificate parse.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Sequence
from typing import Any

from asn1crypto import cms
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from scep.asn1 import (
    Digest,
    FailInfo,
    MessageType,
    PkiStatus,
    ScepAttributes,
    der_header,
    encode_content_attributes,
    encode_signed_attributes,
)
from scep.envelope import ContentCipher, KeyTransport, Rng, seal_envelope
from scep.message import ReplyContext, ScepMessageError

SignerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclasses.dataclass(frozen=True)
class SignerMaterial:
    """A signing key with its certificate's IssuerAndSerialNumber and the certificates to include,
    pre-encoded (DER)."""

    key: SignerKey
    certificate: x509.Certificate
    issuer_and_serial_der: bytes
    certificates_der: tuple[bytes, ...]

    @classmethod
    def create(
        cls, key: SignerKey, certificate: x509.Certificate, extra: Sequence[x509.Certificate] = ()
    ) -> SignerMaterial:
        """Encode once: `certificate` first, then `extra` (for the RA, the CA chain)."""
        ias = cms.IssuerAndSerialNumber(
            {
                "issuer": asn1_x509.Name.load(certificate.issuer.public_bytes()),
                "serial_number": certificate.serial_number,
            }
        )
        ders = tuple(c.public_bytes(Encoding.DER) for c in (certificate, *extra))
        return cls(key, certificate, ias.dump(), ders)


RaIdentity = SignerMaterial
"""The RA as a CertRep signer: its key, its certificate, then the CA chain (RFC 8894 §3.3.2)."""


def sign_message(
    signer: SignerMaterial,
    *,
    digest: Digest,
    signed_attributes_der: bytes,
    content: bytes | None,
    rsa_pss: bool = False,
) -> bytes:
    """DER ContentInfo(SignedData) version 1 with one SignerInfo over `signed_attributes_der`.

    `content` becomes the eContent of type data; None leaves eContent absent (RFC 8894 §3.3.2:
    PENDING and FAILURE carry no content). RSA signs PKCS#1 v1.5 under rsaEncryption unless
    `rsa_pss`; EC keys sign ECDSA.
    """
    hash_algorithm = digest.hash_algorithm()
    key = signer.key
    signature_algorithm: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey) and rsa_pss:
        params = {
            "hash_algorithm": {"algorithm": digest.value},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": digest.value}},
            "salt_length": hash_algorithm.digest_size,
        }
        signature_algorithm = {"algorithm": "rsassa_pss", "parameters": params}
        pss = padding.PSS(padding.MGF1(hash_algorithm), hash_algorithm.digest_size)
        signature = key.sign(signed_attributes_der, pss, hash_algorithm)
    elif isinstance(key, rsa.RSAPrivateKey):
        signature_algorithm = {"algorithm": "rsassa_pkcs1v15"}
        signature = key.sign(signed_attributes_der, padding.PKCS1v15(), hash_algorithm)
    else:
        signature_algorithm = {"algorithm": f"{digest.value}_ecdsa"}
        signature = key.sign(signed_attributes_der, ec.ECDSA(hash_algorithm))
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {"issuer_and_serial_number": cms.IssuerAndSerialNumber.load(signer.issuer_and_serial_der)}
            ),
            "digest_algorithm": {"algorithm": digest.value},
            "signed_attrs": ScepAttributes.load(signed_attributes_der),
            "signature_algorithm": signature_algorithm,
            "signature": signature,
        }
    )
    encap: dict[str, Any] = {"content_type": "data"}
    if content is not None:
        encap["content"] = content
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": digest.value}],
            "encap_content_info": encap,
            "certificates": _certificate_set(signer.certificates_der),
            "signer_infos": [signer_info],
        }
    )
    der: bytes = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
    return der


def degenerate_certs_only(certs: Sequence[x509.Certificate], crls: Sequence[bytes] = ()) -> bytes:
    """A degenerate certs-only SignedData (RFC 8894 §3.4): certificates and CRLs (DER), no signers.

    This is the GetCACert reply (RA first, then the CA chain) and the inner content of a CertRep.
    """
    signed_data: dict[str, Any] = {
        "version": "v1",
        "digest_algorithms": [],
        "encap_content_info": {"content_type": "data"},
        "certificates": _certificate_set([c.public_bytes(Encoding.DER) for c in certs]),
        "signer_infos": [],
    }
    if crls:
        signed_data["crls"] = [cms.RevocationInfoChoice({"crl": asn1_crl.CertificateList.load(d)}) for d in crls]
    der: bytes = cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData(signed_data)}).dump()
    return der


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
    return sign_message(ra, digest=Digest.SHA256, signed_attributes_der=attributes, content=content)


def _certificate_set(ders: Sequence[bytes]) -> cms.CertificateSet:
    """The certificates in the order given (RA first, then its chain), as micromdm and step-ca send
    them, rather than DER-sorted: some clients take the first certificate for the RA."""
    contents = b"".join(ders)
    return cms.CertificateSet.load(der_header(0x31, len(contents)) + contents)


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
    return sign_message(ra, digest=digest, signed_attributes_der=attributes, content=content)


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


def build_failure_for(
    error: ScepMessageError, *, ra: RaIdentity, sender_nonce: bytes, signing_time: dt.datetime | None = None
) -> bytes:
    """The signed FAILURE a `ScepMessageError` maps to (failInfo and its public text)."""
    return build_failure(
        ra=ra,
        reply=error.reply,
        fail_info=error.fail_info,
        text=error.text,
        sender_nonce=sender_nonce,
        signing_time=signing_time,
    )
