"""PKCSReq and RenewalReq (RFC 8894 §3.3.1): who is asking, whether they may have it, then issue, hold
for approval or defer at capacity; a retransmission is answered as its transaction was.

Refusals are CAErrors. Once the request has been checked against its transaction, its refusal is
kept as that transaction's answer (scep.replies), so a retransmission gets the same answer.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scep.asn1 import MessageType
from scep.challenges import REFUSED as CHALLENGE_REFUSED
from scep.challenges import ChallengeNotVerifiable, ChallengeRequest
from scep.clients import ScepClient
from scep.lockout import ChallengeStorage, challenge_check
from scep.message import PkiRequest
from scep.replies import Replies
from shared_ca.admission import Admission
from shared_ca.approval import ApprovalQueue
from shared_ca.authority import CertificateAuthority, fingerprint
from shared_ca.authorization import Authorization, Authorizer, CertificateRequest, Principal, PrincipalKind
from shared_ca.csr import challenge_password, load_csr
from shared_ca.errors import BadSignature, CAError, PolicyDenied, TooManyRequests, Unauthorized, Unavailable
from shared_ca.identity import IdentityRule
from shared_ca.profiles import Profile
from shared_ca.storage.enrollment_records import (
    ChallengeSpent,
    EnrollmentEvent,
    NewScepTransaction,
    ScepTransactionRecord,
    TransactionExists,
)
from shared_ca.trust import CertificateByFingerprint, IssuerById, recognise


class TransactionLookup(Protocol):
    def scep_transaction(self, signer_key_sha256: str, transaction_id: str) -> ScepTransactionRecord | None: ...


class EnrollmentRecords(ChallengeStorage, TransactionLookup, Protocol):
    """The enrollment storage PKCSReq and RenewalReq read: transactions, challenges, lockout counters."""


class EnrollmentStorage(Protocol):
    """What PKCSReq and RenewalReq look up before they issue (shared_ca.storage)."""

    @property
    def enrollments(self) -> EnrollmentRecords: ...
    @property
    def certificates(self) -> CertificateByFingerprint: ...
    @property
    def issuers(self) -> IssuerById: ...
    def look_ups(self) -> AbstractContextManager[None]:
        """One read scope for the look-ups of one request."""
        ...


log = logging.getLogger(__name__)


def spki_sha256(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's SubjectPublicKeyInfo (what identifies the signer key)."""
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def too_many_requests(who: str, retry_after: int) -> TooManyRequests:
    """The refusal of a client over its rate limit (shared_ca.admission)."""
    return TooManyRequests(
        "too many requests; try again later",
        detail=f"{who} is over its rate limit (admission.device_rate_per_minute, address_rate_per_minute)",
        retry_after=retry_after,
    )


def new_transaction(
    request: PkiRequest, profile: Profile, client: ScepClient, replaces: int | None
) -> NewScepTransaction:
    """The SCEP transaction row of an enrollment request (status 'issued' unless replaced)."""
    return NewScepTransaction(
        signer_key_sha256=spki_sha256(request.signer_certificate),
        transaction_id=request.transaction_id,
        signer_cert_sha256=fingerprint(request.signer_certificate),
        message_type=request.message_type.value,
        profile=profile.name,
        request_sha256=hashlib.sha256(request.csr_der).hexdigest() if request.csr_der is not None else None,
        client_address=client.address,
        replaces_id=replaces,
    )


@dataclass(frozen=True)
class _Admitted:
    """A new enrollment request that passed every check: what issuing (or holding) it needs."""

    authorization: Authorization
    wanted: CertificateRequest
    device: str | None
    event: EnrollmentEvent
    txn: NewScepTransaction

    @property
    def hold(self) -> bool:
        """Manual approval: queue it instead of issuing."""
        return self.authorization.policy.profile.approval == "manual"


class Enrollment:
    """Runs PKCSReq and RenewalReq for one CA. Immutable; one per worker."""

    def __init__(
        self,
        *,
        authority: CertificateAuthority,
        storage: EnrollmentStorage,
        profiles: Mapping[str, Profile],
        authorizer: Authorizer,
        approvals: ApprovalQueue,
        admission: Admission,
        identity: IdentityRule,
        replies: Replies,
    ) -> None:
        self.authority = authority
        self.storage = storage
        self.validators = {
            name: challenge_check(profile, storage.enrollments, authority.clock) for name, profile in profiles.items()
        }
        self.authorizer = authorizer  # who may obtain what (shared_ca.authorization)
        self.approvals = approvals  # the manual-approval queue, shared with EST
        self.admission = admission
        self.identity = identity  # names the device in events and one-time challenges (shared_ca.identity)
        self.replies = replies

    def enroll(self, request: PkiRequest, profile: Profile, client: ScepClient, *, defer: bool) -> bytes:
        """Answer an enrollment request; at capacity (`defer`) it is held for the background (PENDING)."""
        signer = request.signer_certificate
        key_sha, cert_sha = spki_sha256(signer), fingerprint(signer)
        assert request.csr_der is not None
        request_sha = hashlib.sha256(request.csr_der).hexdigest()
        # The look-ups before issuance share one read scope, closed before the issuing write.
        with self.storage.look_ups():
            existing = self.storage.enrollments.scep_transaction(key_sha, request.transaction_id)
            if existing is not None and existing.is_retransmission(cert_sha, request.message_type.value, request_sha):
                log.info("SCEP %s: retransmission, answered as before", request.transaction_id)
                outcome = f"retransmission:{existing.status}"
                self.replies.event(profile, client, request.message_type.name, outcome, request.reply)
                return self.replies.answer(request, existing)
            if existing is not None and existing.status == "pending":
                raise PolicyDenied("a different request with this transactionID awaits approval")
            txn = new_transaction(request, profile, client, existing.id if existing is not None else None)
            try:
                admitted = self._admit(request, profile, client, txn)
            except CAError as exc:
                return self.replies.refused(exc, request, profile, client, kept=txn)
        try:
            return self._issue(request, client, admitted, defer=defer)
        except ChallengeSpent as exc:  # its last use went to a concurrent request since it was checked
            log.info("SCEP %s: %s", request.transaction_id, exc.detail)
            lost = Unauthorized(CHALLENGE_REFUSED, detail=exc.detail)
            return self.replies.refused(lost, request, profile, client, kept=txn)

    def _admit(self, request: PkiRequest, profile: Profile, client: ScepClient, txn: NewScepTransaction) -> _Admitted:
        """Authenticate and authorize a new enrollment request; what issuing it needs. The Authorizer
        decides; this only says who is asking."""
        assert request.csr_der is not None
        csr = load_csr(request.csr_der)
        wanted = CertificateRequest.from_csr(csr)
        device = self.identity.of_request(csr)
        if not self.admission.allow_device(device):
            self.admission.count("rate-limited", "scep")
            raise too_many_requests(f"device {device!r}", self.admission.retry_after)
        authorization = self.authorizer.authorize(
            lambda: self._principal(request, csr, device, profile, client), profile, "scep", wanted
        )
        kind = authorization.principal.kind
        challenge_kind = "renewal" if kind is PrincipalKind.CERTIFICATE else kind.value
        event = self.replies.enrollment_event(profile, client, request, "issued", challenge_kind, device)
        admitted = replace(
            txn,
            subject=csr.subject.rfc4514_string(),
            spends_challenge=authorization.principal.challenge_id,  # taken when the request is recorded
        )
        return _Admitted(authorization, wanted, device, event, admitted)

    def _principal(
        self,
        request: PkiRequest,
        csr: x509.CertificateSigningRequest,
        device: str | None,
        profile: Profile,
        client: ScepClient,
    ) -> Principal:
        """Who is asking: the holder of the certificate that signed the request (a renewal, RFC 8894
        §3.3.1.2: one we issued, or one a legacy CA issued inside its migration window, valid now), or
        whoever knows a challenge the profile accepts."""
        try:
            known = recognise(self.storage, request.signer_certificate, self.authority.clock())
        except PolicyDenied as exc:  # ours, but revoked, expired, or its legacy window has ended
            cause = f"the signing certificate cannot renew: {exc.public_message}"
            raise PolicyDenied(cause, detail=exc.detail) from exc
        if known is not None:
            return self.authorizer.certificate_principal(known)
        if request.message_type is not MessageType.PKCSReq:
            raise Unauthorized("renewal must be signed by a certificate issued by this CA")
        signer_key = request.signer_certificate.public_key()
        if signer_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != csr.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        ):
            # RFC 8894 §3.3.1: a new enrollment is signed with the key being certified.
            raise BadSignature("the request must be signed with the key it certifies")
        assert request.csr_der is not None
        challenge = ChallengeRequest(
            profile=profile.name,
            challenge_password=challenge_password(request.csr_der),
            subject=csr.subject.rfc4514_string(),
            device_id=device,
            transaction_id=request.transaction_id,
            client_address=client.address,
            csr_der=request.csr_der,
        )
        try:
            accepted = self.validators[profile.name].validate(challenge)
        except ChallengeNotVerifiable as exc:
            # Our fault (the webhook is down): HTTP 503 lets the device retry; a FAILURE would be final.
            raise Unavailable("the enrollment check is unavailable", detail=exc.detail) from exc
        return Principal.challenge(
            PrincipalKind(accepted.kind.value), profile.name, accepted.device_id, challenge_id=accepted.challenge_id
        )

    def _issue(self, request: PkiRequest, client: ScepClient, admitted: _Admitted, *, defer: bool) -> bytes:
        """Hold the admitted request for approval or, at capacity, for the background (PENDING either way);
        or issue and answer with the certificate."""
        if admitted.hold or defer:
            return self._hold(request, client, admitted, deferred=not admitted.hold)
        try:
            issued = self.authority.issue(
                admitted.authorization.policy,
                protocol="scep",
                actor=f"scep:{client.address or '-'}",
                requester=client.address,
                renewal_of=admitted.authorization.renewal_of,
                enrollment=admitted.event,
                scep_transaction=admitted.txn,
            )
        except TransactionExists:
            return self._answer_winner(request)
        log.info("SCEP %s: issued %s to %s", request.transaction_id, issued.record.serial_hex, issued.record.subject)
        return self.replies.success(request, [issued.certificate])

    def _hold(self, request: PkiRequest, client: ScepClient, admitted: _Admitted, *, deferred: bool) -> bytes:
        new = self.approvals.describe(
            "scep",
            admitted.authorization,
            admitted.wanted,
            reference=f"scep:{admitted.txn.signer_key_sha256}:{request.transaction_id}",
            device=admitted.device,
            client_address=client.address,
            deferred=deferred,
        )
        try:
            pending = replace(admitted.txn, status="pending")
            held = self.approvals.hold(new, replace(admitted.event, outcome="pending"), scep_transaction=pending)
        except TransactionExists:
            return self._answer_winner(request)
        if not held.new:
            return self._answer_winner(request)
        if deferred:
            self.admission.count("deferred", "scep")
            log.info("SCEP %s: deferred at capacity (request %d)", request.transaction_id, held.record.id)
        else:
            log.info("SCEP %s: awaiting approval (request %d)", request.transaction_id, held.record.id)
        return self.replies.pending(request)

    def _answer_winner(self, request: PkiRequest) -> bytes:
        """A concurrent request with the same transaction won: answer as it was answered."""
        signer_key = spki_sha256(request.signer_certificate)
        winner = self.storage.enrollments.scep_transaction(signer_key, request.transaction_id)
        if winner is None:
            raise Unavailable("the SCEP transaction could not be recorded", detail="transaction vanished")
        return self.replies.answer(request, winner)
