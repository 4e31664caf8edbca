"""Manual approval, shared by both protocols: a queued request re-checked under its profile today,
and the enrollment event its issuance writes. The services issue it with `CompletePending`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

from shared_ca.csr import load_csr
from shared_ca.errors import Conflict, NotFound, PolicyDenied
from shared_ca.identity import IdentityRule
from shared_ca.policy import IssuancePolicy, authorize_csr
from shared_ca.profiles import Profile
from shared_ca.storage.enrollment import EnrollmentStore
from shared_ca.storage.enrollment_records import EnrollmentEvent, ScepTransactionRecord


@dataclass(frozen=True)
class PendingApproval:
    """A pending request that may be issued now: its queue row, profile, CSR and what would be signed."""

    queued: ScepTransactionRecord
    profile: Profile
    csr: x509.CertificateSigningRequest
    policy: IssuancePolicy

    def event(self, protocol: str, identity: IdentityRule, actor: str) -> EnrollmentEvent:
        """The enrollment event of its issuance."""
        return EnrollmentEvent(
            protocol=protocol,
            operation="approval",
            outcome="issued",
            profile=self.profile.name,
            device_identity=identity.of_request(self.csr),
            client_address=self.queued.client_address,
            challenge_kind="manual",
            transaction_id=self.queued.transaction_id,
            detail={"approved_by": actor},
        )


def pending_approval(
    store: EnrollmentStore,
    profiles: Mapping[str, Profile],
    queued_id: int,
    now: dt.datetime,
    *,
    protocol: str,
    message_types: tuple[str, ...] | None = None,
) -> PendingApproval:
    """The queued request `queued_id` of `protocol` (message types `message_types`, or any but EST's
    when None), re-authorized under its profile; NotFound, Conflict or PolicyDenied otherwise."""
    what = f"{protocol.upper()} request {queued_id}"
    queued = store.scep_transaction_by_id(queued_id)
    if queued is None or (message_types is not None and queued.message_type not in message_types):
        raise NotFound(f"no {what}")
    if queued.status != "pending" or queued.request_der is None:
        raise Conflict(f"{what} is not pending (it is {queued.status})")
    profile = profiles.get(queued.profile)
    if profile is None:
        raise PolicyDenied(f"profile {queued.profile!r} of {what} no longer exists")
    csr = load_csr(queued.request_der)
    return PendingApproval(queued, profile, csr, authorize_csr(profile, csr, now))
