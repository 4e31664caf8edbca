"""SCEP operations (RFC 8894 §3.3, §4): from a request to its answer, through shared_ca.

`ScepService` answers what the view asks: the profile a path names, GetCACaps, GetCACert,
GetNextCACert and PKIOperation. A pkiMessage is read, checked (algorithms, signingTime, the client's
rate), then run by scep.enrollment (PKCSReq, RenewalReq) or scep.retrieval (CertPoll, GetCert,
GetCRL). Every CAError comes back to `pki_operation`, which has scep.replies answer it: a signed
FAILURE, or, when no CertRep is owed, the HTTP answer the view's error handler writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from scep.asn1 import FailInfo, MessageType, names_match
from scep.builder import RaIdentity, build_next_ca_reply, degenerate_certs_only
from scep.clients import ScepClient
from scep.enrollment import Enrollment, EnrollmentRecords, too_many_requests
from scep.message import PkiRequest, ScepMessageError, parse_pki_message
from scep.ra_roles import getcacert_certificates
from scep.replies import OutcomeLog, Replies
from scep.retrieval import CertificateBySerial, Retrieval
from shared_ca.admission import Admission
from shared_ca.approval import ApprovalQueue
from shared_ca.authority import CertificateAuthority
from shared_ca.authorization import Authorizer
from shared_ca.crl import CrlPublisher
from shared_ca.errors import AlgorithmNotAllowed, CAError, Unavailable
from shared_ca.identity import DEFAULT_IDENTITY, IdentityRule
from shared_ca.profiles import Profile
from shared_ca.serials import serial_hex
from shared_ca.trust import CertificateByFingerprint, IssuerById

log = logging.getLogger(__name__)
BUSY = "the gateway is busy; try again later"
AT_CAPACITY = "at capacity: no slot within the queue wait (admission.max_in_flight, admission.queue_wait_ms)"


class ScepRecords(EnrollmentRecords, OutcomeLog, Protocol):
    """Everything SCEP records about enrollments (shared_ca.storage.enrollment)."""


class ScepCertificates(CertificateByFingerprint, CertificateBySerial, Protocol):
    """The certificates SCEP looks up: a renewal's signer, GetCert's certificate."""


class ScepStorage(Protocol):
    """What SCEP reads and writes (shared_ca.storage.repositories.Storage)."""

    @property
    def enrollments(self) -> ScepRecords: ...
    @property
    def certificates(self) -> ScepCertificates: ...
    @property
    def issuers(self) -> IssuerById: ...
    def look_ups(self) -> AbstractContextManager[None]:
        """One read scope for the look-ups of one request."""
        ...


@dataclasses.dataclass(frozen=True)
class PreviousRa:
    """The SCEP RA of a CA a rollover replaced, still kept until that CA is retired."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the replaced CA's chain
    issuer_id: int  # the replaced CA's


class ScepService:
    """Runs each SCEP operation for one CA and its RA. Immutable; one per worker."""

    def __init__(
        self,
        *,
        authority: CertificateAuthority,
        storage: ScepStorage,
        crl: CrlPublisher,
        ra_key: rsa.RSAPrivateKey,
        ra_certificate: x509.Certificate,
        profiles: Mapping[str, Profile],
        authorizer: Authorizer,
        approvals: ApprovalQueue,
        admission: Admission | None = None,
        nonce: Callable[[], bytes] = lambda: os.urandom(16),
        next_ca_certs: Sequence[x509.Certificate] = (),
        identity: IdentityRule = DEFAULT_IDENTITY,
        ra_encryption_key: rsa.RSAPrivateKey | None = None,
        ra_encryption_certificate: x509.Certificate | None = None,
        previous_ras: Sequence[PreviousRa] = (),
    ) -> None:
        if (ra_encryption_key is None) != (ra_encryption_certificate is None):
            raise ValueError("the RA encryption key and certificate go together")
        # Separate RA roles (scep.ra_roles): requests are enveloped to the encryption RA, and the RA of
        # ra_key and ra_certificate only signs. Otherwise that one RA does both.
        self._recipient_key = ra_encryption_key or ra_key
        self._recipient_certificate = ra_encryption_certificate or ra_certificate
        self._profiles = profiles
        self._clock = authority.clock
        self._admission = admission or Admission.unlimited()  # in-flight cap, deferral, rate limits
        ra = RaIdentity.create(ra_key, ra_certificate, authority.chain)
        self._ca_ra_certs = degenerate_certs_only(
            getcacert_certificates(ra_certificate, ra_encryption_certificate, authority.chain)
        )
        # GetNextCACert (RFC 8894 §4.7): the next RA and CA certificates, signed once by the current RA.
        self._next_ca_reply = build_next_ca_reply(ra, next_ca_certs) if next_ca_certs else None

        def answering(identity_of_ra: RaIdentity) -> tuple[Replies, Enrollment, Retrieval]:
            """The replies, enrollments and retrievals one RA signs."""
            replies = Replies(
                ra=identity_of_ra,
                enrollments=storage.enrollments,
                identity=identity,
                clock=authority.clock,
                nonce=nonce,
            )
            enrollment = Enrollment(
                authority=authority,
                storage=storage,
                profiles=profiles,
                authorizer=authorizer,
                approvals=approvals,
                admission=self._admission,
                identity=identity,
                replies=replies,
            )
            return replies, enrollment, Retrieval(authority=authority, storage=storage, crl=crl, replies=replies)

        self._replies, self._enrollment, self._retrieval = answering(ra)
        # After a CA rollover, a client that kept the replaced CA's GetCACert still encrypts to its RA
        # and trusts only CertReps from it: such a request is opened with that RA's key and answered
        # by that RA (its chain in the CertRep), while the certificate comes from the issuing CA.
        self._previous = {
            p.certificate.fingerprint(hashes.SHA256()): answering(RaIdentity.create(p.key, p.certificate, p.chain))
            for p in previous_ras
        }
        self._also_for = tuple((p.key, p.certificate) for p in previous_ras)
        self._certificates = storage.certificates
        self._our_cas = (
            (authority.issuer.id, authority.certificate),
            *((p.issuer_id, p.chain[0]) for p in previous_ras),
        )

    # -- what needs no pkiMessage -------------------------------------------------------------------

    def profile(self, name: str) -> Profile | None:
        """The profile SCEP serves under `name`; None when there is none (a profile SCEP does not serve,
        such as tls-server unless configured, does not exist here)."""
        profile = self._profiles.get(name)
        if profile is None or not profile.served_over("scep"):
            log.info("SCEP request for %s profile %r", "unknown" if profile is None else "unserved", name)
            return None
        return profile

    def capabilities(self, profile: Profile) -> list[str]:
        """GetCACaps: exactly what this profile is served with (RFC 8894 §3.5.2); GetNextCACert only
        when a next CA is configured."""
        caps = ["POSTPKIOperation"]
        if self._next_ca_reply is not None:
            caps.append("GetNextCACert")
        caps += [
            name
            for name, digest in (("SHA-1", "sha1"), ("SHA-256", "sha256"), ("SHA-512", "sha512"))
            if digest in profile.scep_digests
        ]
        if any(c.startswith("aes") for c in profile.scep_ciphers):
            caps.append("AES")
        if "3des" in profile.scep_ciphers:
            caps.append("DES3")
        if profile.scep_renewal:
            caps.append("Renewal")
        caps.append("SCEPStandard")
        return caps

    def ca_certificates(self) -> bytes:
        """GetCACert: the RA certificate (with separate roles: the encryption, then the signing RA) and the
        CA chain, as a degenerate certs-only SignedData."""
        return self._ca_ra_certs

    def next_ca_certificates(self) -> bytes | None:
        """GetNextCACert: the signed reply, or None when no next CA is configured."""
        return self._next_ca_reply

    # -- the PKIOperation ---------------------------------------------------------------------------

    def pki_operation(self, message: bytes, profile: Profile, client: ScepClient) -> bytes:
        """Answer one pkiMessage with a CertRep; a CAError rises when none is owed (ScepDecodeError: the
        message cannot be read; Unavailable, Conflict: our own state).

        At capacity (shared_ca.admission) a new enrollment is deferred (PENDING, issued in the background)
        and anything else is Unavailable (HTTP 503 with Retry-After)."""
        with self._admission.enter("scep", waited=client.waited) as admitted:
            request: PkiRequest | None = None
            try:
                request = parse_pki_message(
                    message,
                    ra_key=self._recipient_key,
                    ra_cert=self._recipient_certificate,
                    also_for=self._also_for,
                    earlier=self._our_certificate,
                )
                return self._run(request, profile, client, admitted=admitted)
            except CAError as exc:
                return self._handlers(request)[0].refused(exc, request, profile, client)

    def _our_certificate(self, issuer: bytes, serial: int) -> x509.Certificate | None:
        """A certificate one of our CAs issued, by the issuer name (DER) and serial an envelope's recipient
        names: how a request addressed to the RA's certificate before it renewed itself is recognised."""
        for issuer_id, ca in self._our_cas:
            if not names_match(issuer, ca.subject.public_bytes()):
                continue
            record = self._certificates.certificate(issuer_id, serial_hex(serial))
            if record is not None:
                return x509.load_der_x509_certificate(record.der)
        return None

    def _handlers(self, request: PkiRequest | None) -> tuple[Replies, Enrollment, Retrieval]:
        """Who answers `request`: the RA it was sent to (the current one, or a replaced CA's)."""
        if request is not None and request.recipient is not None and self._previous:
            found = self._previous.get(request.recipient.fingerprint(hashes.SHA256()))
            if found is not None:
                log.info(
                    "SCEP %s (transaction %s) was encrypted to the replaced CA's RA %s: answered by that RA",
                    request.message_type.name,
                    request.transaction_id,
                    request.recipient.subject.rfc4514_string(),
                )
                return found
        return self._replies, self._enrollment, self._retrieval

    def _run(self, request: PkiRequest, profile: Profile, client: ScepClient, *, admitted: bool) -> bytes:
        _replies, enrollment, retrieval = self._handlers(request)
        self._check_algorithms(request, profile)
        self._check_signing_time(request, profile)
        if not self._admission.allow_address(client.address):
            self._admission.count("rate-limited", "scep")
            raise too_many_requests(f"client address {client.address}", self._admission.retry_after)
        if request.message_type.is_enrolment:
            return enrollment.enroll(request, profile, client, defer=not admitted)
        if request.message_type is MessageType.CertPoll:  # how a deferred request is delivered: always
            return retrieval.poll(request, profile, client)
        if not admitted:
            self._admission.count("shed", "scep")
            raise Unavailable(BUSY, detail=AT_CAPACITY, retry_after=self._admission.retry_after)
        if request.message_type is MessageType.GetCert:
            return retrieval.get_cert(request, profile, client)
        return retrieval.get_crl(request, profile, client)

    def _check_algorithms(self, request: PkiRequest, profile: Profile) -> None:
        if request.digest.value not in profile.scep_digests:
            raise AlgorithmNotAllowed(f"digest {request.digest.value.upper()} is not allowed")
        if request.content_cipher.value not in profile.scep_ciphers:
            raise AlgorithmNotAllowed(f"envelope cipher {request.content_cipher.value} is not allowed")
        if not isinstance(request.signer_certificate.public_key(), rsa.RSAPublicKey):
            # The reply is enveloped to the signer's key, and SCEP envelopes use RSA key transport.
            raise AlgorithmNotAllowed("sign SCEP requests with an RSA key")

    def _check_signing_time(self, request: PkiRequest, profile: Profile) -> None:
        """RFC 8894 §3.3.2.2 badTime: a signingTime, when the client sends one, close enough to our clock."""
        signed_at = request.attributes.signing_time
        tolerance = profile.scep_signing_time_tolerance_minutes
        if signed_at is None or not tolerance:
            return
        skew = abs(self._clock() - signed_at)
        if skew > dt.timedelta(minutes=tolerance):
            detail = (
                f"signingTime {signed_at.isoformat()} is {skew} from the server's clock (tolerance {tolerance} min)"
            )
            text = "the message's signingTime is too far from the server's time"
            raise ScepMessageError(FailInfo.BAD_TIME, text, request.reply, detail=detail)
