"""One signing CA: issue, renew and revoke, each recorded in storage before it is returned.

The CA's certificate, chain and key are loaded once and never change in a process; everything
that must be consistent across processes and hosts lives in the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from shared_ca.cms import CRL_REASONS
from shared_ca.errors import Conflict, KeyMaterialError, NotFound
from shared_ca.keys import PrivateKey, key_matches_certificate
from shared_ca.policy import IssuancePolicy, common_name, san_text
from shared_ca.serials import new_serial, serial_hex
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.certificates import CertificateRecord, NewCertificate, SerialCollision
from shared_ca.storage.enrollment_records import CompletePending, EnrollmentEvent, NewScepTransaction
from shared_ca.storage.issuers import IssuerRecord

Clock = Callable[[], dt.datetime]
MAX_SERIAL_ATTEMPTS = 5
_END_ENTITY = x509.BasicConstraints(ca=False, path_length=None)

# RFC 5280 §5.3.1 reasons an operator may give (removeFromCRL and certificateHold are not offered:
# this CA does not suspend certificates).
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    name: flag
    for name, flag in CRL_REASONS.items()
    if flag not in (x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl)
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_reason(text: str) -> x509.ReasonFlags:
    """A revocation reason from 'key_compromise', 'keyCompromise' or 'key-compromise'."""
    wanted = text.strip().replace("-", "_")
    for name, flag in REVOCATION_REASONS.items():
        if wanted in (name, flag.value):
            return flag
    raise ValueError(f"unknown revocation reason {text!r} (one of: {', '.join(REVOCATION_REASONS)})")


def reason_flag(stored: str) -> x509.ReasonFlags:
    """The ReasonFlags of a stored reason value (its RFC 5280 name)."""
    return x509.ReasonFlags(stored)


SigningHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


def signature_hash(key: PrivateKey) -> SigningHash | None:
    """The digest a CA key signs with: SHA-256, SHA-384 for P-384, SHA-512 for P-521, none for Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class PublicUrls:
    """Where relying parties find this gateway's CRLs, OCSP responder and CA certificates."""

    base_url: str

    def crl(self, issuer_name: str) -> str:
        return f"{self.base_url.rstrip('/')}/crl/{issuer_name}.crl"

    def ocsp(self) -> str:
        return f"{self.base_url.rstrip('/')}/ocsp"

    def ca_issuers(self, issuer_name: str) -> str:
        return f"{self.base_url.rstrip('/')}/ca/{issuer_name}.crt"


class CertificateLedger(Protocol):
    """The certificate storage a CA uses (shared_ca.storage.certificates)."""

    def record_issued(
        self,
        cert: NewCertificate,
        event: AuditEvent,
        now: dt.datetime,
        *,
        supersede: tuple[int, dt.datetime] | None = None,
        enrollment: EnrollmentEvent | None = None,
        scep_transaction: NewScepTransaction | CompletePending | None = None,
    ) -> CertificateRecord: ...

    def certificate(self, issuer_id: int, serial_hex: str) -> CertificateRecord | None: ...

    def revoke(
        self, cert_id: int, reason: str, revoked_at: dt.datetime, event: AuditEvent, now: dt.datetime
    ) -> CertificateRecord: ...


@dataclass(frozen=True)
class Issued:
    """A certificate that has been signed and recorded."""

    certificate: x509.Certificate
    record: CertificateRecord


class CertificateAuthority:
    """A CA that signs with its key and records everything it signs in `certificates`."""

    def __init__(
        self,
        certificates: CertificateLedger,
        issuer: IssuerRecord,
        certificate: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        key: PrivateKey,
        urls: PublicUrls,
        clock: Clock = utcnow,
    ) -> None:
        if not key_matches_certificate(key, certificate):
            raise KeyMaterialError(f"the key of issuer {issuer.name!r} does not match its certificate")
        self.certificates = certificates
        self.issuer = issuer
        self.certificate = certificate
        self.chain = chain  # the CA certificate first, then its own issuers
        self.key = key
        self.urls = urls
        self.clock = clock
        self.signing_hash = signature_hash(key)
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        # The extensions every certificate of this CA carries after its key usage and key identifier,
        # built once (the CA is immutable).
        self._ca_extensions: tuple[x509.Extension[x509.ExtensionType], ...] = (
            x509.Extension(
                ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            ),
            x509.Extension(
                ExtensionOID.CRL_DISTRIBUTION_POINTS,
                False,
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier(urls.crl(issuer.name))],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        )
                    ]
                ),
            ),
            x509.Extension(
                ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
                False,
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(urls.ocsp())
                        ),
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.CA_ISSUERS,
                            x509.UniformResourceIdentifier(urls.ca_issuers(issuer.name)),
                        ),
                    ]
                ),
            ),
        )

    @property
    def name(self) -> str:
        return self.issuer.name

    # -- issuance ---------------------------------------------------------------------------------

    def _build(self, policy: IssuancePolicy, serial: int) -> x509.Certificate:
        profile = policy.profile
        not_after = min(policy.not_after, self.certificate.not_valid_after_utc)
        extensions: list[x509.Extension[x509.ExtensionType]] = [
            x509.Extension(ExtensionOID.BASIC_CONSTRAINTS, True, _END_ENTITY),
            x509.Extension(ExtensionOID.KEY_USAGE, True, profile.key_usage_extension()),
            x509.Extension(
                ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, x509.SubjectKeyIdentifier.from_public_key(policy.public_key)
            ),
            *self._ca_extensions,
        ]
        builder = (
            x509.CertificateBuilder(extensions=extensions)
            .subject_name(policy.subject)
            .issuer_name(self.certificate.subject)
            .public_key(policy.public_key)
            .serial_number(serial)
            .not_valid_before(max(policy.not_before, self.certificate.not_valid_before_utc))
            .not_valid_after(not_after)
        )
        ekus = profile.extended_key_usage_oids()
        if ekus:
            builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        if policy.sans:
            # RFC 5280 §4.2.1.6: critical when the subject is empty.
            builder = builder.add_extension(
                x509.SubjectAlternativeName(list(policy.sans)), critical=not policy.subject.rdns
            )
        return builder.sign(self.key, self.signing_hash)

    def issue(
        self,
        policy: IssuancePolicy,
        *,
        protocol: str,
        actor: str,
        requester: str | None = None,
        renewal_of: CertificateRecord | None = None,
        enrollment: EnrollmentEvent | None = None,
        scep_transaction: NewScepTransaction | CompletePending | None = None,
    ) -> Issued:
        """Sign the certificate `policy` describes and record it with its audit event, atomically.

        `enrollment` and `scep_transaction` are recorded in the same database transaction (see
        Certificates.record_issued); TransactionExists means a concurrent request won and nothing was kept.
        """
        now = self.clock()
        if self.certificate.not_valid_after_utc <= now:
            raise KeyMaterialError(f"CA certificate {self.name!r} has expired")
        supersede: tuple[int, dt.datetime] | None = None
        if renewal_of is not None and policy.profile.revoke_on_renewal:
            supersede = (renewal_of.id, now + dt.timedelta(hours=policy.profile.renewal_grace_hours))
        for _attempt in range(MAX_SERIAL_ATTEMPTS):
            serial = new_serial()
            cert = self._build(policy, serial)
            detail = {
                "subject": cert.subject.rfc4514_string(),
                "profile": policy.profile.name,
                "protocol": protocol,
                "key": policy.key_description,
            }
            if renewal_of is not None:
                detail["renewal_of"] = renewal_of.serial_hex
            row = NewCertificate(
                issuer_id=self.issuer.id,
                serial_hex=serial_hex(serial),
                fingerprint_sha256=fingerprint(cert),
                subject=cert.subject.rfc4514_string(),
                common_name=common_name(cert.subject),
                sans=tuple(san_text(n) for n in policy.sans),
                key_type=policy.key_description,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                profile=policy.profile.name,
                protocol=protocol,
                requester=requester,
                der=cert.public_bytes(Encoding.DER),
                renewed_from_id=renewal_of.id if renewal_of else None,
            )
            action = "certificate.renewed" if renewal_of else "certificate.issued"
            try:
                record = self.certificates.record_issued(
                    row,
                    AuditEvent(actor, action, self.issuer.id, row.serial_hex, detail),
                    now,
                    supersede=supersede,
                    enrollment=enrollment,
                    scep_transaction=scep_transaction,
                )
            except SerialCollision:
                continue
            return Issued(cert, record)
        raise Conflict("could not allocate a unique serial number", detail="serial collisions exhausted retries")

    # -- revocation -------------------------------------------------------------------------------

    def find(self, serial: str) -> CertificateRecord:
        record = self.certificates.certificate(self.issuer.id, serial)
        if record is None:
            raise NotFound(f"no certificate with serial {serial} from issuer {self.name!r}")
        return record

    def revoke(self, serial: str, reason: x509.ReasonFlags, *, actor: str) -> CertificateRecord:
        """Revoke one of this CA's certificates (RFC 5280 reason)."""
        record = self.find(serial)
        now = self.clock()
        if record.effective_status(now) == "revoked":
            raise Conflict(f"certificate {serial} is already revoked")
        event = AuditEvent(actor, "certificate.revoked", self.issuer.id, serial, {"reason": reason.value})
        return self.certificates.revoke(record.id, reason.value, now, event, now)
