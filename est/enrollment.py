"""EST enrollment (RFC 7030 §4.2): simpleenroll and simplereenroll, answered certs-only (or 202).

Each operation reads top to bottom: limits, who is asking, the CSR, the Authorizer, then issuance or
the queue. A refusal is recorded with what the request had established when it was raised.
"""

from __future__ import annotations

from functools import partial

from cryptography import x509

from est import wire
from est.events import EventLog
from est.intake import Intake, ReceivedCsr
from est.issuance import Issuance, certs_only
from est.request import EstReply, EstRequest
from shared_ca.authorization import Authorizer, CertificateRequest
from shared_ca.errors import CAError


class Enrollment:
    """simpleenroll and simplereenroll for one CA. Immutable."""

    def __init__(self, *, intake: Intake, issuance: Issuance, authorizer: Authorizer, events: EventLog) -> None:
        self.intake = intake
        self.issuance = issuance
        self.authorizer = authorizer
        self.events = events

    def simpleenroll(self, request: EstRequest, body: bytes, content_type: str | None) -> EstReply:
        """RFC 7030 §4.2.1: a new certificate for a Basic user or a recognised client certificate."""
        try:
            self.intake.limit_address(request)
            collecting = partial(self.intake.collecting, request, body, content_type)
            with self.intake.look_ups(request):  # closed before any write: issue_or_hold reads the queue afresh
                request = self.intake.authenticate(request, used_up_ok=collecting)
            request, csr = self.intake.read_csr(request, wire.decode_request_body(body, content_type))
            self.intake.limit_device(request)
            return certs_only(self.enroll(request, csr))
        except CAError as exc:
            self.events.refused(request, exc, body, content_type)
            raise

    def simplereenroll(self, request: EstRequest, body: bytes, content_type: str | None) -> EstReply:
        """RFC 7030 §4.2.2: renew or rekey the TLS client certificate, keeping subject and SANs."""
        try:
            self.intake.limit_address(request)
            request = self.intake.authenticate(request)
            request, csr = self.intake.read_csr(request, wire.decode_request_body(body, content_type))
            self.intake.limit_device(request)
            self.intake.check_csr(request, csr)
            wanted = CertificateRequest.from_csr(csr.csr)
            # RFC 7030 §4.2.2: only the certificate being renewed authenticates it, and Subject and
            # SubjectAltName MUST equal the certificate's.
            authorization = self.authorizer.authorize(request.asker, request.profile, "est", wanted, renewal=True)
            renewing = authorization.renewal_of
            held = request.asker.certificate
            assert renewing is not None and held is not None
            request = request.noting(renews=renewing.serial_hex)
            if held.legacy:
                request = request.noting(legacy_issuer=held.issuer.name)
            return certs_only(self.issuance.issue_or_hold(request, authorization, wanted))
        except CAError as exc:
            self.events.refused(request, exc, body, content_type)
            raise

    def enroll(self, request: EstRequest, csr: ReceivedCsr) -> x509.Certificate | EstReply:
        """simpleenroll's rules (also fullcmc's): the channel binding and template, then the Authorizer,
        then issuance or the queue. The request is authenticated and names its device."""
        self.intake.check_csr(request, csr)
        wanted = CertificateRequest.from_csr(csr.csr)
        authorization = self.authorizer.authorize(request.asker, request.profile, "est", wanted)
        return self.issuance.issue_or_hold(request, authorization, wanted)
