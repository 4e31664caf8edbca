"""Issuing an authorized EST request, or holding it: the approval queue, deferral at capacity, credential uses.

A counted credential (a one-time bootstrap user) spends its use in the issuance and gets it back when
the issuance fails (shared_ca.authorization.spending_use); a request that waits spends nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from cryptography import x509

from est import wire
from est.events import EventLog
from est.request import EstReply, EstRequest
from shared_ca.admission import Admission
from shared_ca.approval import ApprovalQueue, principal_ref
from shared_ca.authority import CertificateAuthority, Issued
from shared_ca.authorization import Authorization, CertificateRequest, CredentialUses, spending_use
from shared_ca.errors import PolicyDenied
from shared_ca.profiles import Profile
from shared_ca.storage.approvals import ApprovalRecord

log = logging.getLogger("est.service")


class Issuance:
    """Issues, queues for approval or defers an authorized EST request. Immutable."""

    def __init__(
        self,
        *,
        authority: CertificateAuthority,
        users: CredentialUses,
        approvals: ApprovalQueue,
        admission: Admission,
        events: EventLog,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.authority = authority
        self.users = users
        self.approvals = approvals
        self.admission = admission
        self.events = events
        self.clock = clock

    def issue_or_hold(
        self, request: EstRequest, authorization: Authorization, wanted: CertificateRequest
    ) -> x509.Certificate | EstReply:
        """The issued certificate, or the 202 reply while the request waits. At capacity (shared_ca.admission)
        an authorized request is answered 202 with Retry-After and only its event is written, not the
        request: the client sends the same request again (RFC 7030 §4.2.3) and a free slot issues it then,
        so nothing can be issued twice. Under manual approval the request is queued for an administrator,
        and its retry (even re-signed) is answered from the queue."""
        if request.profile.approval != "manual":
            if request.deferred:
                self.admission.count("deferred", "est")
                self.events.record(request, "deferred")
                return self._pending(request.profile, deferred=True)
            return self.issue(request, authorization).certificate
        new = self.approvals.describe(
            "est",
            authorization,
            wanted,
            reference=principal_ref(authorization.principal),
            device=request.device_identity,
            client_address=request.connection.client_address,
        )
        queued = self.approvals.find(new)
        if queued is None:
            held = self.approvals.hold(new, request.event("pending"))
            if held.new:
                log.info("EST %s: awaiting approval (request %d)", request.operation, held.record.id)
                return self._pending(request.profile, deferred=False)
            queued = held.record
        return self._queued_answer(request, queued)

    def issue(self, request: EstRequest, authorization: Authorization) -> Issued:
        """Issue now, spending a use of a counted credential, with the request's 'issued' event."""
        principal = authorization.principal
        with spending_use(self.users, principal, self.clock()):
            issued = self.authority.issue(
                authorization.policy,
                protocol="est",
                actor=f"est:{principal.name}",
                requester=request.connection.client_address,
                renewal_of=authorization.renewal_of,
                enrollment=request.event("issued"),
            )
        log.info("EST %s: issued %s to %s", request.operation, issued.record.serial_hex, issued.record.subject)
        return issued

    def _queued_answer(self, request: EstRequest, queued: ApprovalRecord) -> x509.Certificate | EstReply:
        if queued.status == "issued" and queued.certificate_der is not None:
            self.events.record(request, "delivered")
            return x509.load_der_x509_certificate(queued.certificate_der)
        if queued.status == "pending":
            self.events.record(request, "pending")
            return self._pending(request.profile, deferred=False)
        raise PolicyDenied(queued.reason or "the request was rejected", detail=f"queued request {queued.id}")

    def _pending(self, profile: Profile, *, deferred: bool) -> EstReply:
        # RFC 7030 §4.2.3: 202 with Retry-After; the client sends the same request again.
        retry_after = self.admission.retry_after if deferred else profile.est_retry_after_seconds
        text = b"the request is queued: the gateway is busy\n" if deferred else b"the request awaits approval\n"
        return EstReply(text, "text/plain", status=202, headers=(("Retry-After", str(retry_after)),), base64=False)


def certs_only(result: x509.Certificate | EstReply) -> EstReply:
    """The certs-only reply of an issued certificate; a 202 reply as it is."""
    if isinstance(result, EstReply):
        return result
    return EstReply(wire.encode_base64_body(wire.certs_only([result])), wire.CERTS_ONLY)
