"""Who is asking and what they send, for every EST operation that enrolls or revokes.

Rate limits and load shedding (shared_ca.admission), authentication (est.auth) turned into the
Authorizer's principal, the CSR (read, its signature checked, the device named) and the checks a
label puts on it (channel binding, csrattrs template). Each step that learns something returns
the request with it (est.request.EstRequest); a refusal is a CAError.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from est import csrattrs, wire
from est.auth import AuthStorage, EstAuthenticator, EstCredentials, parse_basic
from est.request import EstRequest
from shared_ca.admission import Admission
from shared_ca.approval import ApprovalQueue
from shared_ca.authority import fingerprint
from shared_ca.authorization import Authorizer, CertificateRequest
from shared_ca.csr import challenge_password, load_csr
from shared_ca.errors import CAError, InvalidRequest, PolicyDenied, TooManyRequests, Unavailable
from shared_ca.identity import IdentityRule

BUSY = "the gateway is busy; try again later"


@dataclass(frozen=True)
class ReceivedCsr:
    """The PKCS#10 request of an enrollment: its DER and the request, signature checked."""

    der: bytes
    csr: x509.CertificateSigningRequest


class IntakeStorage(AuthStorage, Protocol):
    """What the checks before an EST operation read (shared_ca.storage)."""

    def look_ups(self) -> contextlib.AbstractContextManager[None]:
        """One read scope for the look-ups of one request."""
        ...


class Intake:
    """The checks before an EST operation decides: limits, authentication, the CSR. Immutable."""

    def __init__(
        self,
        *,
        storage: IntakeStorage,
        authorizer: Authorizer,
        approvals: ApprovalQueue,
        admission: Admission,
        identity: IdentityRule,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.storage = storage
        self.authorizer = authorizer
        self.approvals = approvals
        self.admission = admission
        self.identity = identity
        self.authenticator = EstAuthenticator(storage, clock)

    # -- limits -----------------------------------------------------------------------------------

    def limit_address(self, request: EstRequest) -> None:
        if not self.admission.allow_address(request.connection.client_address):
            raise self._too_many(f"client address {request.connection.client_address}")

    def limit_device(self, request: EstRequest) -> None:
        if not self.admission.allow_device(request.device_identity):
            raise self._too_many(f"device {request.device_identity!r}")

    def shed(self, request: EstRequest) -> None:
        """At capacity, what cannot be deferred is refused: 503 with Retry-After."""
        if request.deferred:
            self.admission.count("shed", "est")
            raise Unavailable(BUSY, detail=f"{request.operation} at capacity", retry_after=self.admission.retry_after)

    def _too_many(self, who: str) -> TooManyRequests:
        self.admission.count("rate-limited", "est")
        return TooManyRequests(
            "too many requests; try again later",
            detail=f"{who} is over its rate limit (admission.device_rate_per_minute, address_rate_per_minute)",
            retry_after=self.admission.retry_after,
        )

    # -- who is asking ----------------------------------------------------------------------------

    def look_ups(self, request: EstRequest) -> contextlib.AbstractContextManager[None]:
        """One read connection for the look-ups before issuance when there are several: a client certificate
        (the certificate, its issuer, perhaps a Basic user) or a label with manual approval (the queue, the
        user). A lone Basic user look-up takes its own connection, which costs less than the shared scope."""
        if request.connection.client_certificate is not None or request.profile.approval == "manual":
            return self.storage.look_ups()
        return contextlib.nullcontext()

    def authenticate(self, request: EstRequest, *, used_up_ok: Callable[[], bool] | None = None) -> EstRequest:
        """The request with who is asking (est.auth) as the Authorizer's principal: a certificate holder (with
        the EST user it also logged in as, if any), which names the device, or an EST user."""
        connection = request.connection
        credentials = EstCredentials(
            basic=parse_basic(connection.authorization),
            client_certificate=connection.client_certificate,
            certificate_source=connection.certificate_source,
        )
        with self.look_ups(request):
            authenticated = self.authenticator.authenticate(credentials, used_up_ok=used_up_ok)
            as_user = self.authorizer.user_principal(authenticated.user) if authenticated.user is not None else None
            if authenticated.certificate is None:
                assert as_user is not None
                return request.by(as_user)
            principal = self.authorizer.certificate_principal(authenticated.certificate)
        if as_user is not None:
            principal = principal.with_user(as_user)
        held = x509.load_der_x509_certificate(authenticated.certificate.record.der)
        return request.by(principal).for_device(self.identity.of_certificate(held))

    def collecting(self, request: EstRequest, body: bytes, content_type: str | None) -> bool:
        """Whether this is the retry of a request queued for approval (RFC 7030 §4.2.3): it spends no use,
        so a one-use credential whose use the approval spent may still collect its certificate. Asked only
        of a used-up user; found by who claims to ask (the presented certificate or Basic user name),
        before authentication proves it; authentication still runs in full."""
        if request.profile.approval != "manual":
            return False
        connection = request.connection
        if connection.client_certificate is not None:
            reference = f"cert:{fingerprint(connection.client_certificate)}"
        else:
            try:
                basic = parse_basic(connection.authorization)
            except CAError:
                return False
            if basic is None:
                return False
            reference = f"user:{basic[0]}"
        try:  # the whole check of load_csr: this CSR is read before anyone authenticated
            wanted = CertificateRequest.from_csr(load_csr(wire.decode_request_body(body, content_type)))
        except CAError:
            return False
        return self.approvals.find_request("est", request.profile.name, wanted, reference) is not None

    # -- the CSR ----------------------------------------------------------------------------------

    def read_csr(self, request: EstRequest, der: bytes) -> tuple[EstRequest, ReceivedCsr]:
        """The CSR `der` (BadSignature, 400, when its signature does not verify) and the request naming
        its device."""
        csr = load_csr(der)
        return request.for_device(self.identity.of_request(csr)), ReceivedCsr(der, csr)

    def check_csr(self, request: EstRequest, received: ReceivedCsr) -> None:
        """Channel binding (RFC 7030 §3.5) and, when enforced, the csrattrs template."""
        profile = request.profile
        if not (profile.est_csrattrs_enforce or profile.est_pop_linking):
            return  # neither reads the challengePassword: do not parse the CSR a second time
        password = challenge_password(received.der)
        if profile.est_csrattrs_enforce:
            lacking = csrattrs.missing(profile, received.csr, password)
            if lacking:
                raise InvalidRequest("the CSR lacks what /csrattrs asks for: " + "; ".join(lacking))
        if profile.est_pop_linking:
            binding = request.connection.tls_unique
            if binding is None:
                raise PolicyDenied(
                    "this label binds the CSR to the TLS channel (tls-unique), which this connection lacks",
                    detail=f"TLS {request.connection.tls_version} offers no tls-unique (proxied, or TLS 1.3)",
                )
            expected = base64.b64encode(binding).decode("ascii")
            if password is None or not hmac.compare_digest(password.strip(), expected):
                raise PolicyDenied(
                    "the CSR's challengePassword does not carry this TLS channel's binding (RFC 7030 §3.5)"
                )
