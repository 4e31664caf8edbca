"""PKCS#10 certificate requests: decode (PEM or DER) and verify the self-signature."""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from shared_ca.errors import AlgorithmNotAllowed, BadSignature, InvalidRequest

_PEM_CSR = re.compile(rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----")


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
    except (ValueError, TypeError) as exc:
        raise InvalidRequest("the request is not a PKCS#10 certificate request", detail=str(exc)) from exc
    except UnsupportedAlgorithm as exc:
        raise AlgorithmNotAllowed("the request uses an unsupported key algorithm", detail=str(exc)) from exc
    try:
        valid = csr.is_signature_valid
    except UnsupportedAlgorithm as exc:
        raise AlgorithmNotAllowed("the request's signature algorithm is not supported", detail=str(exc)) from exc
    if not valid:
        raise BadSignature("the certificate request's signature does not verify")
    return csr


def requested_sans(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    """The subjectAltName entries the request asks for (from its extensionRequest)."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value)
