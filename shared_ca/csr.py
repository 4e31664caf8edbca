"""PKCS#10 certificate requests: decode (PEM or DER) and verify the self-signature."""

from __future__ import annotations

import re

from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from shared_ca.errors import AlgorithmNotAllowed, BadSignature, InvalidRequest

CHALLENGE_PASSWORD_OID = "1.2.840.113549.1.9.7"  # noqa: S105 - an OID, not a secret
_PEM_CSR = re.compile(rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----")


# What cryptography raises for a request it cannot decode, besides ValueError and TypeError: a version
# other than v1 (0), the same extension twice, a SAN of a type it does not model.
UNDECODABLE = (ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Decode a CSR given as PEM or DER and check its signature; each failure is a CAError."""
    try:
        if _PEM_CSR.search(data):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        # Touch the parts issuance reads, so malformed inner encodings fail here, not later.
        csr.subject.rfc4514_string()
        csr.public_key()
        list(csr.extensions)
    except UNDECODABLE as exc:
        raise InvalidRequest("the request is not a PKCS#10 certificate request", detail=str(exc)) from exc
    except UnsupportedAlgorithm as exc:
        raise AlgorithmNotAllowed("the request uses an unsupported key algorithm", detail=str(exc)) from exc
    verify_csr_signature(csr)
    return csr


def readable_csr(data: bytes) -> x509.CertificateSigningRequest | None:
    """The CSR in `data` (DER) when cryptography can decode it, its signature not checked; None otherwise.

    For naming the device of a request that is refused anyway; issuance always goes through load_csr."""
    try:
        return x509.load_der_x509_csr(data)
    except UNDECODABLE:
        return None


# Digests a CSR self-signature may use. SHA-1 stays accepted: legacy SCEP clients sign with it, and
# the signature only proves possession of the key. MD5 is refused (RFC 6151).
CSR_SIGNATURE_HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512")


def verify_csr_signature(csr: x509.CertificateSigningRequest) -> str:
    """Check the self-signature and return its digest name ('ed25519' for Ed25519).

    Verified with the low-level key API rather than `is_signature_valid`, which newer cryptography
    releases answer False for SHA-1: a legacy client's valid request must not read as forged.
    """
    try:
        algorithm = csr.signature_hash_algorithm
        key = csr.public_key()
    except UnsupportedAlgorithm as exc:
        raise AlgorithmNotAllowed("the request's signature algorithm is not supported", detail=str(exc)) from exc
    name = algorithm.name if algorithm is not None else "ed25519"
    if algorithm is not None and name not in CSR_SIGNATURE_HASHES:
        raise AlgorithmNotAllowed(f"the request is signed with {name.upper()}, which is not accepted")
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            params = csr.signature_algorithm_parameters
            pad = params if isinstance(params, padding.PSS) else padding.PKCS1v15()
            key.verify(csr.signature, csr.tbs_certrequest_bytes, pad, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(csr.signature, csr.tbs_certrequest_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) and algorithm is None:
            key.verify(csr.signature, csr.tbs_certrequest_bytes)
        elif csr.is_signature_valid:  # any other pairing cryptography itself knows
            return name
        else:
            raise InvalidSignature
    except InvalidSignature:
        raise BadSignature("the certificate request's signature does not verify") from None
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise AlgorithmNotAllowed("the request's signature algorithm is not supported", detail=str(exc)) from exc
    return name


def requested_sans(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    """The subjectAltName entries the request asks for (from its extensionRequest); InvalidRequest when
    the extensions cannot be decoded (a request that did not go through load_csr may be read here)."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except UNDECODABLE as exc:
        raise InvalidRequest("the request's extensions cannot be decoded", detail=str(exc)) from exc
    return list(ext.value)


def challenge_password(csr_der: bytes) -> str | None:
    """The CSR's challengePassword, decoded by its own string type (Printable, UTF8, BMP, ...).

    Attributes are read one at a time: certmonger sends a BMPString friendlyName that would make
    decoding the whole request fail.
    """
    try:
        info = asn1_csr.CertificationRequest.load(csr_der)["certification_request_info"]
        for attribute in info["attributes"]:
            if attribute["type"].dotted == CHALLENGE_PASSWORD_OID:
                value = attribute["values"][0].native
                return value if isinstance(value, str) else None
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return None
