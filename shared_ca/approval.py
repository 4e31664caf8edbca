"""Manual approval for both protocols: a queued request, keyed on what is asked, decided once.

A profile with `approval = "manual"` holds every authorized request here instead of issuing it. The
queue keeps what was asked and who asked (shared_ca.storage.approvals), never the request's bytes.
Approving re-establishes the principal as it is now (its certificate still valid, its EST user still
enabled, a use left) and asks the Authorizer again under the profile as configured now, so an
approval cannot issue what a fresh request would not get; then it issues, spending the user's use,
and marks the request (and the SCEP transaction waiting on it) issued in the same transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared_ca.admission import Admission
from shared_ca.authority import CertificateAuthority
from shared_ca.authorization import (
    Authorization,
    Authorizer,
    CertificateRequest,
    CredentialUses,
    Principal,
    PrincipalKind,
    spending_use,
)
from shared_ca.errors import Conflict, NotFound, PolicyDenied
from shared_ca.profiles import Profile
from shared_ca.storage.approvals import ApprovalExists, ApprovalRecord, NewApproval, approval_key
from shared_ca.storage.certificates import CertificateRecord
from shared_ca.storage.enrollment_records import CompletePending, EnrollmentEvent, NewScepTransaction
from shared_ca.storage.est_users import EstUserRecord
from shared_ca.trust import CertificateByFingerprint, IssuerById, recognise


class QueuedRequests(Protocol):
    """The approval storage the queue uses (shared_ca.storage.approvals)."""

    def hold(
        self,
        new: NewApproval,
        event: EnrollmentEvent,
        now: dt.datetime,
        *,
        scep_transaction: NewScepTransaction | None = None,
    ) -> ApprovalRecord: ...
    def approval(self, approval_id: int) -> ApprovalRecord | None: ...
    def approval_by_key(self, protocol: str, request_key: str) -> ApprovalRecord | None: ...
    def list_approvals(
        self, *, status: str | None = "pending", profile: str | None = None, deferred: bool | None = False
    ) -> list[ApprovalRecord]: ...
    def claim_deferred(self, now: dt.datetime, lease_until: dt.datetime) -> ApprovalRecord | None: ...
    def reject(self, approval_id: int, reason: str, *, actor: str, now: dt.datetime) -> ApprovalRecord: ...


class QueueUsers(CredentialUses, Protocol):
    def est_user_by_id(self, user_id: int) -> EstUserRecord | None: ...


class QueueCertificates(CertificateByFingerprint, Protocol):
    def certificate_by_id(self, cert_id: int) -> CertificateRecord | None: ...


class ApprovalStorage(Protocol):
    """What the queue reads and writes: the queue, the EST users it spends, the certificates it renews."""

    @property
    def approvals(self) -> QueuedRequests: ...
    @property
    def est_users(self) -> QueueUsers: ...
    @property
    def certificates(self) -> QueueCertificates: ...
    @property
    def issuers(self) -> IssuerById: ...


DEFERRED_LEASE = dt.timedelta(minutes=2)  # a worker issuing a deferred request holds it this long at most
_CHALLENGE_KINDS = (PrincipalKind.STATIC_CHALLENGE, PrincipalKind.ONE_TIME_CHALLENGE, PrincipalKind.WEBHOOK)


def principal_ref(principal: Principal) -> str:
    """Who asked, as part of an EST request's queue key: the same user or certificate sending the same
    request again finds its row; another one does not."""
    if principal.certificate is not None:
        return f"cert:{principal.certificate.record.fingerprint_sha256}"
    if principal.user is not None:
        return f"user:{principal.user.name}"
    return f"{principal.kind.value}:{principal.name}"


def request_parts(request: CertificateRequest) -> tuple[bytes, bytes, bytes | None]:
    """(subject DER, SubjectPublicKeyInfo DER, SubjectAlternativeName DER or None) of a request."""
    spki = request.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    sans = x509.SubjectAlternativeName(list(request.sans)).public_bytes() if request.sans else None
    return request.subject.public_bytes(), spki, sans


def queued_request(record: ApprovalRecord) -> CertificateRequest:
    """The request a queue row holds, read back with cryptography's own parsers: the stored parts are put
    in an unsigned PKCS#10 envelope (cryptography loads a name or GeneralNames only inside one)."""
    info: dict[str, object] = {
        "version": "v1",
        "subject": asn1_x509.Name.load(record.subject_der),
        "subject_pk_info": asn1_keys.PublicKeyInfo.load(record.public_key_der),
        "attributes": [],
    }
    if record.sans_der is not None:
        extension = {
            "extn_id": "subject_alt_name",
            "critical": False,
            "extn_value": asn1_x509.GeneralNames.load(record.sans_der),
        }
        info["attributes"] = [{"type": "extension_request", "values": [[extension]]}]
    envelope = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": "sha256_rsa"},
            "signature": b"",
        }
    )
    return CertificateRequest.from_csr(x509.load_der_x509_csr(envelope.dump()))


@dataclass(frozen=True)
class Held:
    """An answer from the queue: the request's row, as it stands now."""

    record: ApprovalRecord
    new: bool  # queued by this request (not found from an earlier one)


class ApprovalQueue:
    """Holds, approves and rejects requests of either protocol. Immutable; one per worker."""

    def __init__(
        self,
        *,
        authority: CertificateAuthority,
        authorizer: Authorizer,
        storage: ApprovalStorage,
        profiles: Mapping[str, Profile],
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.authority = authority
        self.authorizer = authorizer
        self.storage = storage
        self.approvals = storage.approvals
        self.users = storage.est_users
        self.profiles = profiles
        self.clock = clock

    def describe(
        self,
        protocol: str,
        authorization: Authorization,
        request: CertificateRequest,
        *,
        reference: str,
        device: str | None,
        client_address: str | None,
        deferred: bool = False,
    ) -> NewApproval:
        """The queue row of an authorized request; `reference` tells its key apart (principal_ref for EST,
        the SCEP signer key and transactionID for SCEP)."""
        subject_der, spki, sans_der = request_parts(request)
        principal = authorization.principal
        profile = authorization.policy.profile.name
        return NewApproval(
            protocol=protocol,
            profile=profile,
            request_key=approval_key(
                public_key_der=spki,
                subject_der=subject_der,
                sans_der=sans_der,
                profile=profile,
                principal_ref=reference,
            ),
            principal_kind=principal.kind.value,
            principal_name=principal.name,
            subject=request.subject.rfc4514_string(),
            subject_der=subject_der,
            public_key_der=spki,
            sans_der=sans_der,
            est_user_id=principal.user.id if principal.user is not None else None,
            renewal_of_id=authorization.renewal_of.id if authorization.renewal_of is not None else None,
            device_identity=device,
            client_address=client_address,
            deferred=deferred,
        )

    def find(self, new: NewApproval) -> ApprovalRecord | None:
        """The queued twin of `new` (same protocol and key), whatever its status."""
        return self.approvals.approval_by_key(new.protocol, new.request_key)

    def find_request(
        self, protocol: str, profile: str, request: CertificateRequest, reference: str
    ) -> ApprovalRecord | None:
        """The queued request of `protocol` asking `request` under `profile` by `reference`, if any."""
        subject_der, spki, sans_der = request_parts(request)
        key = approval_key(
            public_key_der=spki, subject_der=subject_der, sans_der=sans_der, profile=profile, principal_ref=reference
        )
        return self.approvals.approval_by_key(protocol, key)

    def hold(
        self, new: NewApproval, event: EnrollmentEvent, *, scep_transaction: NewScepTransaction | None = None
    ) -> Held:
        """Queue `new` (with its event and waiting SCEP transaction); a twin queued concurrently answers
        instead. TransactionExists when a SCEP transaction with the same pair won."""
        try:
            return Held(self.approvals.hold(new, event, self.clock(), scep_transaction=scep_transaction), True)
        except ApprovalExists:
            winner = self.find(new)
            if winner is None:
                raise Conflict("the request could not be queued", detail="queued request vanished") from None
            return Held(winner, False)

    def pending(self, *, profile: str | None = None) -> list[ApprovalRecord]:
        return self.approvals.list_approvals(profile=profile)

    def approve(self, approval_id: int, *, actor: str) -> CertificateRecord:
        """Issue for a pending request, re-authorized now; NotFound, Conflict or PolicyDenied otherwise."""
        queued = self.approvals.approval(approval_id)
        if queued is None:
            raise NotFound(f"no request {approval_id}")
        if queued.status != "pending":
            raise Conflict(f"request {approval_id} is not pending (it is {queued.status})")
        return self._issue(queued, actor)

    def issue_deferred(self, *, actor: str, lease: dt.timedelta = DEFERRED_LEASE) -> ApprovalRecord | None:
        """Issue the oldest request admission control deferred (shared_ca.admission), re-authorized now like
        an approval; None when there is none. A request it may no longer have is rejected with the reason,
        so the client's next retry or CertPoll gets the refusal; an outage leaves it for a later try."""
        now = self.clock()
        queued = self.approvals.claim_deferred(now, now + lease)
        if queued is None:
            return None
        try:
            self._issue(queued, actor)
        except (PolicyDenied, Conflict, NotFound) as exc:
            with contextlib.suppress(Conflict, NotFound):  # decided meanwhile: nothing to reject
                self.approvals.reject(queued.id, exc.public_message, actor=actor, now=self.clock())
        return queued

    def _issue(self, queued: ApprovalRecord, actor: str) -> CertificateRecord:
        approval_id = queued.id
        profile = self.profiles.get(queued.profile)
        if profile is None:
            raise PolicyDenied(f"profile {queued.profile!r} of request {approval_id} no longer exists")
        principal = self._principal(queued)
        authorization = self.authorizer.authorize(principal, profile, queued.protocol, queued_request(queued))
        event = EnrollmentEvent(
            protocol=queued.protocol,
            operation="deferred" if queued.deferred else "approval",
            outcome="issued",
            profile=profile.name,
            device_identity=queued.device_identity,
            client_address=queued.client_address,
            # A deferred request keeps how its client authenticated (the migration report reads it); an
            # approved one was admitted by an administrator.
            challenge_kind=_event_kind(queued) if queued.deferred else "manual",
            detail={"approved_by": actor, "request": approval_id, "principal": principal.name},
        )
        with spending_use(self.users, principal, self.clock()):
            issued = self.authority.issue(
                authorization.policy,
                protocol=queued.protocol,
                actor=actor,
                requester=queued.client_address,
                renewal_of=authorization.renewal_of,
                enrollment=event,
                scep_transaction=CompletePending(approval_id, actor),
            )
        return issued.record

    def reject(self, approval_id: int, reason: str, *, actor: str) -> ApprovalRecord:
        """Refuse a pending request; its client's next retry or CertPoll gets the refusal with `reason`."""
        return self.approvals.reject(approval_id, reason, actor=actor, now=self.clock())

    def _principal(self, queued: ApprovalRecord) -> Principal:
        """Who asked, as they stand now: a certificate still valid, an EST user still enabled."""
        kind = PrincipalKind(queued.principal_kind)
        now = self.clock()
        if kind in _CHALLENGE_KINDS:
            return Principal.challenge(kind, queued.profile, queued.device_identity)
        principal: Principal | None = None
        if kind is PrincipalKind.CERTIFICATE:
            record = self.storage.certificates.certificate_by_id(queued.renewal_of_id or 0)
            if record is None:
                raise PolicyDenied(f"the certificate that asked for request {queued.id} is gone")
            recognised = recognise(self.storage, x509.load_der_x509_certificate(record.der), now)
            if recognised is None:
                raise PolicyDenied(f"the certificate that asked for request {queued.id} is not trusted now")
            principal = self.authorizer.certificate_principal(recognised)
        if queued.est_user_id is not None:
            user = self.users.est_user_by_id(queued.est_user_id)
            if user is None:
                raise PolicyDenied(f"the EST user that asked for request {queued.id} is gone")
            status = user.status(now)
            if status not in ("active", "used up"):  # a use is spent at issuance, and refused there when none is left
                raise PolicyDenied(f"the EST user {user.name!r} that asked for request {queued.id} is {status}")
            as_user = self.authorizer.user_principal(user)
            principal = as_user if principal is None else principal.with_user(as_user)
        if principal is None:
            raise PolicyDenied(f"request {queued.id} names no principal that can be re-established")
        return principal


def _event_kind(queued: ApprovalRecord) -> str:
    """How the client of a queued request authenticated, as its protocol's events say it."""
    if queued.protocol == "scep" and queued.principal_kind == PrincipalKind.CERTIFICATE.value:
        return "renewal"
    return queued.principal_kind


def drain_deferred(
    queue: ApprovalQueue, admission: Admission, *, actor: str, busy: Callable[[], bool] = lambda: False
) -> int:
    """Issue deferred requests while this worker has a slot to spare and is not `busy` (clients' requests
    go first); how many were taken. Called by each worker's background loop (gateway.server), whose `busy`
    lets waiting requests run between two issuances and says whether any did."""
    taken = 0
    while True:
        with admission.spare_slot() as spare:
            if not spare or queue.issue_deferred(actor=actor) is None:
                return taken
            taken += 1
        if busy():
            return taken
