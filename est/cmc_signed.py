"""The CMS SignedData a CMC message travels in (RFC 5652 §5, RFC 5272 §3.2, §4.2): decode it, find
its signer and verify it with `shared_ca.cms`. `est.cmc` builds on this.

Refusals are the shared errors: InvalidRequest (not a readable SignedData), BadSignature
(badMessageCheck) and AlgorithmNotAllowed (badAlg); `est.cmc` maps them to its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from asn1crypto import cms, core
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from est.cmc_asn1 import CmcContentInfo
from shared_ca.cms import (
    DECODE_ERRORS,
    DIGESTS,
    ContentAttributes,
    SignatureAlgorithm,
    SignerInfo,
    der_tlv,
    digest_algorithm,
    verify_signer_info,
)
from shared_ca.errors import AlgorithmNotAllowed, BadSignature, InvalidRequest

MAX_CERTIFICATES = 16  # in SignedData.certificates
ACCEPTED_DIGESTS = {name: hash_class for name, hash_class in DIGESTS.items() if name != "md5"}
"""Digests a CMC signer may use. MD5 is refused (RFC 6151)."""


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
    """ContentInfo(SignedData) with one SignerInfo over eContentType `content_type`, else InvalidRequest."""
    try:
        info = CmcContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise InvalidRequest("the CMC message is not a CMS SignedData")
        signed_data = info["content"]
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise InvalidRequest("the CMC message must have exactly one signer", detail=f"{len(signer_infos)} signers")
        encap = signed_data["encap_content_info"]
        if encap["content_type"].dotted != content_type:
            raise InvalidRequest(f"the SignedData does not carry a {what}", detail=encap["content_type"].dotted)
        content = encap["content"].native
        if not isinstance(content, bytes):
            raise InvalidRequest(f"the SignedData carries no {what}")
        choices = list(signed_data["certificates"] or ())
        if len(choices) > MAX_CERTIFICATES:
            raise InvalidRequest("the CMC message carries too many certificates", detail=f"{len(choices)}")
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
        raise InvalidRequest("the CMC message is not a readable CMS SignedData", detail=repr(exc)) from exc


def _check_readable(cert: Any) -> None:
    """Parse what the signer lookup reads, so that a malformed certificate is undecodable rather than
    an unknown signer. A serial number that is not positive is refused (RFC 5280 §4.1.2.2), as
    cryptography will refuse it (it warns for now)."""
    if cert.serial_number <= 0:
        raise ValueError("a certificate's serial number is not positive")
    (cert.issuer.hashable, cert.key_identifier, cert.public_key.sha1)  # noqa: B018


def verify_signed_content(signed: SignedContent, requests: Sequence[tuple[int, bytes]]) -> Signer:
    """Check the SignerInfo (RFC 5652 §5.4, §5.6) against a certificate in the message or the key
    of one of `requests` (bodyPartID, PKCS#10 DER).

    Signed attributes must hold one contentType and one messageDigest; without signed attributes
    the signature covers the eContent itself (RFC 5652 §5.4 asks for them on non-data content; a
    signature without them still binds the content, so it is accepted)."""
    signer_info = signed.signer_info
    if signed.digest == "md5":
        raise AlgorithmNotAllowed("MD5 is not accepted")
    digest_algorithm(signed.digest, ACCEPTED_DIGESTS)  # refused before the attributes are read
    attributes = signer_info["signed_attrs"]
    signed_attributes = None if isinstance(attributes, core.Void) else _content_attributes(attributes.contents)
    algorithm = signer_info["signature_algorithm"]
    verified = SignerInfo(
        signed.digest,
        SignatureAlgorithm.from_oid(algorithm["algorithm"].dotted, algorithm["parameters"].dump()),
        signer_info["signature"].native,
        signed_attributes,
    )
    # The signer is looked up only once the signed attributes match: a tampered message says so first.
    find_signer = functools.cache(lambda: _find_signer(signer_info["sid"], signed, requests))
    verify_signer_info(
        verified,
        content_type=signed.content_type,
        content=signed.content,
        signer_key=lambda: find_signer()[0],
        digests=ACCEPTED_DIGESTS,
        what="CMC",
    )
    _key, certificate, request_id = find_signer()
    return Signer(certificate, request_id, verified.signature_algorithm.name)


def _content_attributes(contents: bytes) -> ContentAttributes:
    """contentType and messageDigest, each once with one value (RFC 5652 §5.3, §11.1, §11.2), of the
    [0] IMPLICIT signedAttrs re-tagged as the SET OF the signature covers, contents as received."""
    set_der = der_tlv(0x31, contents)
    found: dict[str, list[Any]] = {}
    try:
        for attribute in cms.CMSAttributes.load(set_der, strict=True):
            found.setdefault(attribute["type"].native, []).append(attribute["values"])
        (content_types,), (digests,) = found["content_type"], found["message_digest"]
        (content_type,), (message_digest,) = content_types, digests
        text, octets = content_type.dotted, message_digest.native
    except DECODE_ERRORS as exc:
        raise BadSignature(
            "the signed attributes lack one contentType and one messageDigest", detail=repr(exc)
        ) from exc
    if not isinstance(octets, bytes):
        raise BadSignature("the messageDigest attribute is malformed")
    return ContentAttributes(set_der, text, octets)


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
        raise BadSignature("the signer is neither a certificate nor a request in the message")
    try:
        public_key = holder.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AlgorithmNotAllowed("the signer's key type is not supported", detail=repr(exc)) from exc
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
