"""OCSP responder (RFC 6960): answers good, revoked or unknown for our issuers, nonce echoed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp

from shared_ca.authority import CertificateAuthority, reason_flag
from shared_ca.serials import serial_hex

_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512)


@dataclass(frozen=True)
class OcspAnswer:
    """The DER response, the HTTP status to send it with, and a line for the log."""

    http_status: int
    der: bytes
    log: str


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _issuer_hashes(cert: x509.Certificate) -> dict[str, tuple[bytes, bytes]]:
    """(issuerNameHash, issuerKeyHash) of a CA certificate for each supported hash (RFC 6960 §4.1.1)."""
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    key_bits = asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]  # drop the unused-bits octet
    name = cert.subject.public_bytes()
    return {h.name: (_digest(h, name), _digest(h, key_bits)) for h in (cls() for cls in _HASHES)}


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(Encoding.DER)


class OcspResponder:
    """Signs OCSP responses with each issuer's own key (RFC 6960 §2.6, the CA as responder)."""

    def __init__(self, authorities: Sequence[CertificateAuthority], validity: dt.timedelta) -> None:
        self.authorities = [(a, _issuer_hashes(a.certificate)) for a in authorities]
        self.validity = validity

    def _authority_for(self, request: ocsp.OCSPRequest) -> CertificateAuthority | None:
        wanted = (request.issuer_name_hash, request.issuer_key_hash)
        for authority, by_hash in self.authorities:
            if by_hash.get(request.hash_algorithm.name) == wanted:
                return authority
        return None

    def respond(self, request_der: bytes) -> OcspAnswer:
        try:
            request = ocsp.load_der_ocsp_request(request_der)
            algorithm = request.hash_algorithm
            serial = request.serial_number
            nonce_ext = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            nonce_ext = None
        # NotImplementedError: cryptography reads exactly one CertID (none or several are refused);
        # DuplicateExtension: a request extension given twice.
        except (ValueError, UnsupportedAlgorithm, NotImplementedError, x509.DuplicateExtension) as exc:
            return OcspAnswer(400, unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST), f"malformed: {exc}")
        if serial < 0:  # RFC 5280 §4.1.2.2: serials are positive; a reply cannot even name this one
            return OcspAnswer(
                400, unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST), f"malformed: negative serial {serial}"
            )
        authority = self._authority_for(request)
        if authority is None:
            return OcspAnswer(
                200, unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED), f"serial {serial_hex(serial)}: not our issuer"
            )
        now = authority.clock()
        record = authority.certificates.certificate(authority.issuer.id, serial_hex(serial))
        builder = ocsp.OCSPResponseBuilder()
        if record is None:
            status_text = "unknown"
            builder = builder.add_response_by_hash(
                issuer_name_hash=request.issuer_name_hash,
                issuer_key_hash=request.issuer_key_hash,
                serial_number=serial,
                algorithm=algorithm,
                cert_status=ocsp.OCSPCertStatus.UNKNOWN,
                this_update=now,
                next_update=now + self.validity,
                revocation_time=None,
                revocation_reason=None,
            )
        else:
            cert = x509.load_der_x509_certificate(record.der)
            status_text = "revoked" if record.effective_status(now) == "revoked" else "good"
            revoked_at = record.revoked_at or record.supersede_at
            reason = reason_flag(record.revocation_reason or "superseded") if status_text == "revoked" else None
            builder = builder.add_response(
                cert=cert,
                issuer=authority.certificate,
                algorithm=algorithm,
                cert_status=ocsp.OCSPCertStatus.REVOKED if status_text == "revoked" else ocsp.OCSPCertStatus.GOOD,
                this_update=now,
                next_update=now + self.validity,
                revocation_time=revoked_at if status_text == "revoked" else None,
                revocation_reason=reason,
            )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, authority.certificate)
        if nonce_ext is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce_ext), critical=False)
        response = builder.sign(authority.key, authority.signing_hash)
        return OcspAnswer(200, response.public_bytes(Encoding.DER), f"serial {serial_hex(serial)}: {status_text}")
