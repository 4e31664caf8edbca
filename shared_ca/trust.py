"""Whether a certificate a client presents is one we issued, or one a trusted legacy CA issued
inside its migration window, and whether it is still valid.

Both protocols ask this: SCEP for renewal without a challenge, EST for client-certificate
authentication. A certificate is recognised by its exact DER (its SHA-256 fingerprint) among the
certificates storage holds: ones this gateway issued and ones imported from a legacy CA.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from shared_ca.authority import fingerprint
from shared_ca.errors import PolicyDenied
from shared_ca.storage.certificates import CertificateRecord
from shared_ca.storage.issuers import IssuerRecord

# Ours: the issuing CA, a next CA (it issues from its activation time on, before its row says 'ca'), and
# the CA a rollover replaced (its certificates renew into the new CA until they expire).
OWN_ISSUER_KINDS = ("ca", "next", "previous")


class CertificateByFingerprint(Protocol):
    def certificate_by_fingerprint(self, fingerprint_sha256: str) -> CertificateRecord | None: ...


class IssuerById(Protocol):
    def issuer_by_id(self, issuer_id: int) -> IssuerRecord | None: ...


class KnownCertificates(Protocol):
    """The storage `recognise` reads: certificates by fingerprint, and their issuers."""

    @property
    def certificates(self) -> CertificateByFingerprint: ...
    @property
    def issuers(self) -> IssuerById: ...


@dataclass(frozen=True)
class RecognisedCertificate:
    """A presented certificate storage knows, valid now, from an issuer we trust now."""

    record: CertificateRecord
    issuer: IssuerRecord

    @property
    def legacy(self) -> bool:
        return self.issuer.kind == "legacy"


def recognise(
    storage: KnownCertificates, certificate: x509.Certificate, now: dt.datetime
) -> RecognisedCertificate | None:
    """None for a certificate we never issued nor imported; PolicyDenied when we know it but it may not
    authenticate now (revoked, expired, or its legacy issuer's migration window has ended)."""
    record = storage.certificates.certificate_by_fingerprint(fingerprint(certificate))
    if record is None:
        return None
    issuer = storage.issuers.issuer_by_id(record.issuer_id)
    if issuer is None:
        return None
    if issuer.kind == "legacy":
        if issuer.trust_until is None or issuer.trust_until <= now:
            raise PolicyDenied(
                "the certificate's legacy issuer is no longer trusted",
                detail=f"migration window of issuer {issuer.name!r} ended {issuer.trust_until}",
            )
    elif issuer.kind not in OWN_ISSUER_KINDS:
        return None
    if record.not_before > now:
        raise PolicyDenied("the certificate is not yet valid", detail=f"notBefore {record.not_before}")
    status = record.effective_status(now)
    if status != "valid":
        raise PolicyDenied(f"the certificate is {status}")
    return RecognisedCertificate(record, issuer)
