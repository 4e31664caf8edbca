"""EST operations (RFC 7030 §4): from an authenticated request to a reply body, through shared_ca.

Transport-free: the views hand in the body, the label's profile and what the connection says about
the client (EstConnection); the service answers with an EstReply or raises a CAError whose kind the
views map to the HTTP status (DESIGN.md error table). Every request writes exactly one enrollment
event, a refusal included, with the cause for the report and the log.

`EstService` has one method per operation and hands each to its module: est.enrollment
(simpleenroll, simplereenroll), est.serverkeygen, est.fullcmc; cacerts and csrattrs are answered
here. Those share est.intake (limits, authentication, the CSR), est.issuance (issue, queue or
defer) and est.events.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from est import cmc, csrattrs, wire
from est.auth import UserLookup
from est.enrollment import Enrollment
from est.events import EventLog, EventRecorder
from est.fullcmc import FullCmc
from est.intake import Intake, IntakeStorage
from est.issuance import Issuance
from est.request import EstConnection, EstReply, EstRequest
from est.serverkeygen import ServerKeygen
from shared_ca.admission import Admission
from shared_ca.approval import ApprovalQueue
from shared_ca.authority import CertificateAuthority
from shared_ca.authorization import Authorizer, CredentialUses
from shared_ca.errors import KeyMaterialError
from shared_ca.identity import DEFAULT_IDENTITY, IdentityRule
from shared_ca.keys import PrivateKey
from shared_ca.profiles import Profile

Operation = Callable[[EstRequest, bytes, str | None], EstReply]


class EstUsers(UserLookup, CredentialUses, Protocol):
    """The EST users an operation authenticates and spends (shared_ca.storage.est_users)."""


class EstStorage(IntakeStorage, Protocol):
    """What EST reads and writes (shared_ca.storage.repositories.Storage)."""

    @property
    def est_users(self) -> EstUsers: ...
    @property
    def enrollments(self) -> EventRecorder: ...


class EstService:
    """Runs each EST operation for one CA. Immutable; one per worker."""

    def __init__(
        self,
        *,
        authority: CertificateAuthority,
        storage: EstStorage,
        profiles: Mapping[str, Profile],
        authorizer: Authorizer,
        approvals: ApprovalQueue,
        admission: Admission | None = None,
        signer_key: PrivateKey,
        signer_certificate: x509.Certificate,
        keks: Mapping[bytes, bytes] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        identity: IdentityRule = DEFAULT_IDENTITY,
        root_key_update: Sequence[x509.Certificate] = (),
        previous_authorities: Sequence[CertificateAuthority] = (),
    ) -> None:
        if not isinstance(signer_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise KeyMaterialError("the EST signer (the RA key) must be an RSA or EC key")
        clock = clock or authority.clock
        self._profiles = profiles
        self._admission = admission or Admission.unlimited()  # in-flight cap, deferral, rate limits
        self._events = EventLog(storage.enrollments, clock, identity)  # identity names the device in events
        intake = Intake(
            storage=storage,
            authorizer=authorizer,  # who may obtain what (shared_ca.authorization)
            approvals=approvals,  # the manual-approval queue, shared with SCEP
            admission=self._admission,
            identity=identity,
            clock=clock,
        )
        issuance = Issuance(
            authority=authority,
            users=storage.est_users,
            approvals=approvals,
            admission=self._admission,
            events=self._events,
            clock=clock,
        )
        self._enrollment = Enrollment(intake=intake, issuance=issuance, authorizer=authorizer, events=self._events)
        self._keygen = ServerKeygen(
            intake=intake,
            issuance=issuance,
            authorizer=authorizer,
            events=self._events,
            signer_key=signer_key,  # the RA key signs server-generated key packages and CMC responses
            signer_certificate=signer_certificate,
            keks=dict(keks or {}),
        )
        self._fullcmc = FullCmc(
            intake=intake,
            enrollment=self._enrollment,
            authorizer=authorizer,
            authority=authority,
            events=self._events,
            signer=cmc.response_signer(signer_key, signer_certificate, authority.chain),
            clock=clock,
            previous=previous_authorities,
        )
        # RFC 7030 §4.1.3: the current CA's chain and, while a CA rollover is under way, the root key
        # update certificates (shared_ca.ca_rollover.CaRoles.root_key_update), as one DER SET.
        self._cacerts_body = wire.encode_base64_body(wire.certs_only([*authority.chain, *root_key_update]))
        # Each label's /csrattrs answer depends on its profile alone: built once (~0.15 ms each).
        self._csrattrs_bodies = {name: (profile, _csrattrs_body(profile)) for name, profile in profiles.items()}

    def profile(self, label: str) -> Profile | None:
        """The profile a label names when EST serves it (tls-server only when configured); None otherwise."""
        profile = self._profiles.get(label)
        return profile if profile is not None and profile.served_over("est") else None

    # -- distribution: no authentication ----------------------------------------------------------

    def cacerts(self, profile: Profile, connection: EstConnection) -> EstReply:
        """RFC 7030 §4.1: the CA certificate and its chain, certs-only (and during a CA rollover the root
        key update certificates, §4.1.3)."""
        self._events.record(EstRequest("cacerts", profile, connection), "delivered")
        return EstReply(self._cacerts_body, wire.CERTS_ONLY)

    def csrattrs(self, profile: Profile, connection: EstConnection) -> EstReply:
        """RFC 7030 §4.5: what this label wants in a CSR (est.csrattrs.template)."""
        built = self._csrattrs_bodies.get(profile.name)
        body = built[1] if built is not None and built[0] is profile else _csrattrs_body(profile)
        self._events.record(EstRequest("csrattrs", profile, connection), "delivered")
        return EstReply(body, wire.CSRATTRS)

    # -- operations that enroll or revoke ---------------------------------------------------------

    def simpleenroll(
        self, profile: Profile, connection: EstConnection, body: bytes, content_type: str | None
    ) -> EstReply:
        """RFC 7030 §4.2.1: a new certificate for a Basic user or a recognised client certificate."""
        return self._run("simpleenroll", self._enrollment.simpleenroll, profile, connection, body, content_type)

    def simplereenroll(
        self, profile: Profile, connection: EstConnection, body: bytes, content_type: str | None
    ) -> EstReply:
        """RFC 7030 §4.2.2: renew or rekey the TLS client certificate, keeping subject and SANs."""
        return self._run("simplereenroll", self._enrollment.simplereenroll, profile, connection, body, content_type)

    def serverkeygen(
        self, profile: Profile, connection: EstConnection, body: bytes, content_type: str | None
    ) -> EstReply:
        """RFC 7030 §4.4: the gateway generates the key; key and certificate go back in one reply."""
        return self._run("serverkeygen", self._keygen.serverkeygen, profile, connection, body, content_type)

    def fullcmc(self, profile: Profile, connection: EstConnection, body: bytes, content_type: str | None) -> EstReply:
        """RFC 7030 §4.3: one PKCS#10 enrollment, or the revokeRequest of the TLS client certificate itself,
        answered with a signed Full PKI Response."""
        return self._run("fullcmc", self._fullcmc.fullcmc, profile, connection, body, content_type)

    def _run(
        self,
        name: str,
        operation: Operation,
        profile: Profile,
        connection: EstConnection,
        body: bytes,
        content_type: str | None,
    ) -> EstReply:
        """Run `operation` in a slot of the worker, or deferred when none frees within the queue wait
        (shared_ca.admission): the operation then defers or sheds."""
        with self._admission.enter("est", waited=connection.waited) as admitted:
            return operation(EstRequest(name, profile, connection, deferred=not admitted), body, content_type)

    def refused_in_transport(self, operation: str, label: str | None, connection: EstConnection, cause: str) -> None:
        """The event of a request the transport refused before any operation ran (unknown label, wrong
        method, body too large)."""
        self._events.refused_in_transport(operation, label, connection, cause)


def _csrattrs_body(profile: Profile) -> bytes:
    """The /csrattrs reply body of a label: its template as one base64 line."""
    oids, attributes = csrattrs.template(profile)
    return wire.encode_base64_body(wire.encode_csr_attrs(oids, attributes), line_length=None)
