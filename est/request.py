"""One EST request as the operations see it: the connection's facts, what is known so far, the reply.

An `EstRequest` is immutable: a step that learns who is asking, which device it is or a detail for
the report returns a new one, and the operation carries the latest along. Its event, issued or
refused, is built from that latest value by `enrollment_event`, the one place an EST enrollment
event is made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509

from shared_ca.authority import fingerprint
from shared_ca.authorization import Principal, PrincipalKind
from shared_ca.profiles import Profile
from shared_ca.storage.enrollment_records import EnrollmentEvent


@dataclass(frozen=True)
class EstConnection:
    """What the transport knows about the client: address, User-Agent, TLS facts, credentials."""

    authorization: str | None = None  # the Authorization header, parsed here so a bad one is an event
    client_certificate: x509.Certificate | None = None  # as presented over TLS or by a trusted proxy
    certificate_source: str = "none"  # "tls" | "proxy" | "none"
    client_address: str | None = None
    user_agent: str | None = None
    tls_version: str | None = None
    tls_unique: bytes | None = None
    waited: float = 0.0  # seconds the request waited behind others for its worker (admission control)


@dataclass(frozen=True)
class EstReply:
    """A successful answer: status 200 (or 202 while pending), body, content type, extra headers."""

    body: bytes
    content_type: str
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    base64: bool = True  # the body is base64 (Content-Transfer-Encoding: base64 for older clients)


@dataclass(frozen=True)
class EstRequest:
    """One request of an operation on a label, and what its event will say as far as it is known."""

    operation: str
    profile: Profile
    connection: EstConnection
    deferred: bool = False  # no slot within the queue wait (shared_ca.admission): defer or shed
    principal: Principal | None = None
    device_identity: str | None = None
    detail: Mapping[str, str] = field(default_factory=dict)

    @property
    def asker(self) -> Principal:
        """Who is asking; only once est.intake authenticated the request."""
        assert self.principal is not None, "the request is not authenticated yet"
        return self.principal

    def as_operation(self, operation: str) -> EstRequest:
        """The same request, recorded as another operation (a fullcmc that turns out to be a revocation)."""
        return dataclasses.replace(self, operation=operation)

    def by(self, principal: Principal) -> EstRequest:
        return dataclasses.replace(self, principal=principal)

    def for_device(self, identity: str | None) -> EstRequest:
        """Named after a device, unless a device is already named (a client certificate names it first)."""
        return dataclasses.replace(self, device_identity=self.device_identity or identity)

    def noting(self, **detail: str) -> EstRequest:
        """With more detail for the event (the report and the log)."""
        return dataclasses.replace(self, detail={**self.detail, **detail})

    def event(self, outcome: str) -> EnrollmentEvent:
        """This request's enrollment event with `outcome` ('issued', 'pending', 'refused:policy', …)."""
        return enrollment_event(
            self.operation,
            outcome,
            self.profile.name,
            self.connection,
            principal=self.principal,
            device_identity=self.device_identity,
            client_certificate=self.connection.client_certificate,
            detail=self.detail,
        )


def enrollment_event(
    operation: str,
    outcome: str,
    profile: str | None,
    connection: EstConnection,
    *,
    principal: Principal | None = None,
    device_identity: str | None = None,
    client_certificate: x509.Certificate | None = None,
    detail: Mapping[str, str],
) -> EnrollmentEvent:
    """An EST enrollment event: the principal's name and the client certificate's fingerprint join `detail`."""
    recorded = dict(detail)
    challenge_kind = "none"  # how the caller authenticated: 'certificate', 'basic' or 'none'
    if principal is not None:
        recorded["principal"] = principal.name
        challenge_kind = "certificate" if principal.kind is PrincipalKind.CERTIFICATE else "basic"
    if client_certificate is not None:
        recorded["client_certificate"] = fingerprint(client_certificate)
    return EnrollmentEvent(
        protocol="est",
        operation=operation,
        outcome=outcome,
        profile=profile,
        device_identity=device_identity,
        client_address=connection.client_address,
        user_agent=connection.user_agent,
        challenge_kind=challenge_kind,
        tls_version=connection.tls_version,
        detail=recorded,
    )
