"""EST operations (RFC 7030 §4): from an authenticated request to a reply body, through shared_ca.

Transport-free: the views hand in the body, the label's profile and what the connection says about
the client (EstConnection); this module decides and answers with an EstReply or raises a CAError
whose kind maps to the HTTP status (DESIGN.md error table). Every request writes exactly one
enrollment event, a refusal included, with the cause for the report and the log.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hmac
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from est import cmc, csrattrs, serverkeygen, wire
from est.auth import EstAuthenticator, EstCredentials, parse_basic
from est.serverkeygen import KeyEncryptionRequest
from shared_ca.admission import Admission
from shared_ca.approval import ApprovalQueue, principal_ref
from shared_ca.authority import CertificateAuthority, Issued, fingerprint
from shared_ca.authorization import (
    Authorization,
    Authorizer,
    CertificateRequest,
    Principal,
    PrincipalKind,
    spending_use,
)
from shared_ca.csr import challenge_password, load_csr, readable_csr
from shared_ca.errors import CAError, InvalidRequest, KeyMaterialError, PolicyDenied, TooManyRequests, Unavailable
from shared_ca.identity import DEFAULT_IDENTITY, IdentityRule
from shared_ca.keys import PrivateKey
from shared_ca.profiles import Profile
from shared_ca.storage.approvals import ApprovalRecord
from shared_ca.storage.enrollment import EnrollmentStore
from shared_ca.storage.enrollment_records import EnrollmentEvent
from shared_ca.storage.est_users import EstUserStore

log = logging.getLogger("est.service")
BUSY = "the gateway is busy; try again later"


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


@dataclass
class _Outcome:
    """What the event of one request will say; filled in as the request goes."""

    operation: str
    profile: Profile
    connection: EstConnection
    principal: Principal | None = None
    device_identity: str | None = None
    detail: dict[str, str] = field(default_factory=dict)
    deferred: bool = False  # no slot within the queue wait (shared_ca.admission): defer or shed


Operation = Callable[["_Outcome", bytes, str | None], "EstReply"]


class EstService:
    """Runs each EST operation for one CA. Immutable; one per worker."""

    def __init__(
        self,
        *,
        authority: CertificateAuthority,
        store: EnrollmentStore,
        users: EstUserStore,
        profiles: Mapping[str, Profile],
        authorizer: Authorizer,
        approvals: ApprovalQueue,
        admission: Admission | None = None,
        signer_key: PrivateKey,
        signer_certificate: x509.Certificate,
        keks: Mapping[bytes, bytes] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        identity: IdentityRule = DEFAULT_IDENTITY,
    ) -> None:
        self.authority = authority
        self.store = store
        self.users = users
        self.profiles = profiles
        self.signer_key = signer_key  # signs CMC responses and server-generated key packages
        self.signer_certificate = signer_certificate
        self.keks = dict(keks or {})
        self.identity = identity  # names the device in events (shared_ca.identity)
        self.authorizer = authorizer  # who may obtain what (shared_ca.authorization)
        self.approvals = approvals  # the manual-approval queue, shared with SCEP
        self.admission = admission or Admission.unlimited()  # in-flight cap, deferral, rate limits
        self.clock = clock or authority.clock
        self.authenticator = EstAuthenticator(store, self.clock, users)
        self.cacerts_body = wire.encode_base64_body(wire.certs_only(list(authority.chain)))
        # Each label's /csrattrs answer depends on its profile alone: built once (~0.15 ms each).
        self._csrattrs_bodies = {name: (profile, _csrattrs_body(profile)) for name, profile in profiles.items()}
        if not isinstance(signer_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise KeyMaterialError("the EST signer (the RA key) must be an RSA or EC key")
        self.cmc_signer = cmc.CmcSigner.create(signer_key, signer_certificate, authority.chain)

    # -- unauthenticated operations ---------------------------------------------------------------

    def cacerts(self, profile: Profile, connection: EstConnection) -> EstReply:
        """RFC 7030 §4.1: the CA certificate and its chain, certs-only."""
        self._record(_Outcome("cacerts", profile, connection), "delivered")
        return EstReply(self.cacerts_body, wire.CERTS_ONLY)

    def csrattrs(self, profile: Profile, connection: EstConnection) -> EstReply:
        """RFC 7030 §4.5: what this label wants in a CSR (est.csrattrs.template)."""
        built = self._csrattrs_bodies.get(profile.name)
        body = built[1] if built is not None and built[0] is profile else _csrattrs_body(profile)
        self._record(_Outcome("csrattrs", profile, connection), "delivered")
        return EstReply(body, wire.CSRATTRS)

    # -- enrollment -------------------------------------------------------------------------------

    def simpleenroll(
        self, profile: Profile, connection: EstConnection, body: bytes, content_type: str | None
    ) -> EstReply:
        """RFC 7030 §4.2.1: a new certificate for a Basic user or a recognised client certificate."""
        return self._run(_Outcome("simpleenroll", profile, connection), self._enroll, body, content_type)

    def simplereenroll(
        self, profile: Profile, connection: EstConnection, body: bytes, content_type: str | None
    ) -> EstReply:
        """RFC 7030 §4.2.2: renew or rekey the TLS client certificate, keeping subject and SANs."""
        return self._run(_Outcome("simplereenroll", profile, connection), self._reenroll, body, content_type)

    def serverkeygen(
        self, profile: Profile, connection: EstConnection, body: bytes, content_type: str | None
    ) -> EstReply:
        """RFC 7030 §4.4: the gateway generates the key; key and certificate go back in one reply."""
        return self._run(_Outcome("serverkeygen", profile, connection), self._serverkeygen, body, content_type)

    def _run(self, outcome: _Outcome, operation: Operation, body: bytes, content_type: str | None) -> EstReply:
        """Run `operation` in a slot of the worker (or deferred: shared_ca.admission); a refusal writes its
        event (naming the device when the CSR says who) and re-raises."""
        with self.admission.enter("est", waited=outcome.connection.waited) as admitted:
            outcome.deferred = not admitted
            return self._refusals_recorded(outcome, operation, body, content_type)

    def _refusals_recorded(
        self, outcome: _Outcome, operation: Operation, body: bytes, content_type: str | None
    ) -> EstReply:
        try:
            if not self.admission.allow_address(outcome.connection.client_address):
                raise self._too_many(f"client address {outcome.connection.client_address}")
            return operation(outcome, body, content_type)
        except CAError as exc:
            outcome.detail["cause"] = exc.detail
            if outcome.device_identity is None:
                with contextlib.suppress(CAError):
                    requested = readable_csr(wire.decode_request_body(body, content_type))
                    if requested is not None:
                        outcome.device_identity = self.identity.of_request(requested)
            self._record(outcome, f"refused:{exc.kind.value}")
            raise

    def _csr(
        self, outcome: _Outcome, body: bytes, content_type: str | None
    ) -> tuple[bytes, x509.CertificateSigningRequest]:
        csr_der = wire.decode_request_body(body, content_type)
        csr = load_csr(csr_der)  # BadSignature (400) when its signature does not verify
        outcome.device_identity = outcome.device_identity or self.identity.of_request(csr)
        self._limit_device(outcome)
        return csr_der, csr

    def _limit_device(self, outcome: _Outcome) -> None:
        if not self.admission.allow_device(outcome.device_identity):
            raise self._too_many(f"device {outcome.device_identity!r}")

    def _too_many(self, who: str) -> TooManyRequests:
        self.admission.count("rate-limited", "est")
        return TooManyRequests(
            "too many requests; try again later",
            detail=f"{who} is over its rate limit (admission.device_rate_per_minute, address_rate_per_minute)",
            retry_after=self.admission.retry_after,
        )

    def _shed(self, outcome: _Outcome) -> None:
        """At capacity, what cannot be deferred is refused: 503 with Retry-After."""
        if outcome.deferred:
            self.admission.count("shed", "est")
            raise Unavailable(BUSY, detail=f"{outcome.operation} at capacity", retry_after=self.admission.retry_after)

    def _collecting(self, outcome: _Outcome, body: bytes, content_type: str | None) -> bool:
        """Whether this is the retry of a request queued for approval (RFC 7030 §4.2.3): it spends no use,
        so a one-use credential whose use the approval spent may still collect its certificate. Asked only
        of a used-up user; found by who claims to ask (the presented certificate or Basic user name),
        before authentication proves it; authentication still runs in full."""
        if outcome.profile.approval != "manual":
            return False
        connection = outcome.connection
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
        return self.approvals.find_request("est", outcome.profile.name, wanted, reference) is not None

    def _look_ups(self, outcome: _Outcome) -> contextlib.AbstractContextManager[None]:
        """One read connection for the look-ups before issuance when there are several: a client certificate
        (the certificate, its issuer, perhaps a Basic user) or a label with manual approval (the queue, the
        user). A lone Basic user look-up takes its own connection, which costs less than the shared scope."""
        if outcome.connection.client_certificate is not None or outcome.profile.approval == "manual":
            return self.store.reading()
        return contextlib.nullcontext()

    def _authenticate(self, outcome: _Outcome, *, used_up_ok: Callable[[], bool] | None = None) -> Principal:
        """Who is asking (est.auth), as the Authorizer's principal: a certificate holder (with the EST user
        it also logged in as, if any) or an EST user."""
        connection = outcome.connection
        credentials = EstCredentials(
            basic=parse_basic(connection.authorization),
            client_certificate=connection.client_certificate,
            certificate_source=connection.certificate_source,
        )
        with self._look_ups(outcome):
            authenticated = self.authenticator.authenticate(credentials, used_up_ok=used_up_ok)
            as_user = self.authorizer.user_principal(authenticated.user) if authenticated.user is not None else None
            principal: Principal
            if authenticated.certificate is not None:
                principal = self.authorizer.certificate_principal(authenticated.certificate)
                if as_user is not None:
                    principal = principal.with_user(as_user)
                held = x509.load_der_x509_certificate(authenticated.certificate.record.der)
                outcome.device_identity = self.identity.of_certificate(held)
            else:
                assert as_user is not None
                principal = as_user
        outcome.principal = principal
        return principal

    def _check_csr(self, outcome: _Outcome, csr_der: bytes, csr: x509.CertificateSigningRequest) -> None:
        """Channel binding (RFC 7030 §3.5) and, when enforced, the csrattrs template."""
        profile = outcome.profile
        if not (profile.est_csrattrs_enforce or profile.est_pop_linking):
            return  # neither reads the challengePassword: do not parse the CSR a second time
        password = challenge_password(csr_der)
        if profile.est_csrattrs_enforce:
            lacking = csrattrs.missing(profile, csr, password)
            if lacking:
                raise InvalidRequest("the CSR lacks what /csrattrs asks for: " + "; ".join(lacking))
        if profile.est_pop_linking:
            binding = outcome.connection.tls_unique
            if binding is None:
                raise PolicyDenied(
                    "this label binds the CSR to the TLS channel (tls-unique), which this connection lacks",
                    detail=f"TLS {outcome.connection.tls_version} offers no tls-unique (proxied, or TLS 1.3)",
                )
            expected = base64.b64encode(binding).decode("ascii")
            if password is None or not hmac.compare_digest(password.strip(), expected):
                raise PolicyDenied(
                    "the CSR's challengePassword does not carry this TLS channel's binding (RFC 7030 §3.5)"
                )

    def _enroll(self, outcome: _Outcome, body: bytes, content_type: str | None) -> EstReply:
        with self._look_ups(outcome):  # closed before any write: _issue_or_hold reads the queue afresh
            principal = self._authenticate(outcome, used_up_ok=lambda: self._collecting(outcome, body, content_type))
        csr_der, csr = self._csr(outcome, body, content_type)
        return self._certs_only(self._enroll_csr(outcome, principal, csr_der, csr))

    def _enroll_csr(
        self, outcome: _Outcome, principal: Principal, csr_der: bytes, csr: x509.CertificateSigningRequest
    ) -> x509.Certificate | EstReply:
        """simpleenroll's rules (also fullcmc's): the channel binding and template, then the Authorizer."""
        self._check_csr(outcome, csr_der, csr)
        wanted = CertificateRequest.from_csr(csr)
        authorization = self.authorizer.authorize(principal, outcome.profile, "est", wanted)
        return self._issue_or_hold(outcome, authorization, wanted)

    def _reenroll(self, outcome: _Outcome, body: bytes, content_type: str | None) -> EstReply:
        principal = self._authenticate(outcome)
        csr_der, csr = self._csr(outcome, body, content_type)
        self._check_csr(outcome, csr_der, csr)
        wanted = CertificateRequest.from_csr(csr)
        # RFC 7030 §4.2.2: only the certificate being renewed authenticates it, and Subject and
        # SubjectAltName MUST equal the certificate's.
        authorization = self.authorizer.authorize(principal, outcome.profile, "est", wanted, renewal=True)
        renewing = authorization.renewal_of
        assert renewing is not None and principal.certificate is not None
        outcome.detail["renews"] = renewing.serial_hex
        if principal.certificate.legacy:
            outcome.detail["legacy_issuer"] = principal.certificate.issuer.name
        return self._certs_only(self._issue_or_hold(outcome, authorization, wanted))

    def _serverkeygen(self, outcome: _Outcome, body: bytes, content_type: str | None) -> EstReply:
        profile = outcome.profile
        self._shed(outcome)  # a generated key is never stored: no deferral, no queue
        principal = self._authenticate(outcome)
        if not profile.est_serverkeygen:
            raise PolicyDenied(f"server-side key generation is not enabled for label {profile.name!r}")
        if profile.approval == "manual":
            # The key would have to be kept until an approval: generated keys are never stored.
            raise PolicyDenied("server-side key generation is not offered where requests await approval")
        csr_der, csr = self._csr(outcome, body, content_type)
        encryption = serverkeygen.key_request(csr_der)
        key = serverkeygen.generate_key(csr.public_key(), profile)
        wanted = CertificateRequest.from_csr(csr, key.public_key())
        authorization = self.authorizer.authorize(principal, profile, "est", wanted)
        key_part, key_type = self._key_part(outcome, key, encryption)
        issued = self._issue(outcome, authorization)
        certs = wire.certs_only([issued.certificate])
        boundary = "est-" + secrets.token_hex(12)
        body_bytes, multipart_type = wire.serverkeygen_multipart(key_part, key_type, certs, boundary)
        return EstReply(body_bytes, multipart_type, base64=False)

    # -- fullcmc (RFC 7030 §4.3, RFC 5272) --------------------------------------------------------

    def fullcmc(self, profile: Profile, connection: EstConnection, body: bytes, content_type: str | None) -> EstReply:
        """One PKCS#10 enrollment, or the revokeRequest of the TLS client certificate itself; answered
        with a signed Full PKI Response. A readable request refused gets a CMC failure, not an HTTP error."""
        return self._run(_Outcome("fullcmc", profile, connection), self._fullcmc, body, content_type)

    def _fullcmc(self, outcome: _Outcome, body: bytes, content_type: str | None) -> EstReply:
        principal = self._authenticate(outcome)
        try:
            request = cmc.parse_full_cmc(wire.decode_request_body(body, content_type))
        except cmc.CmcFailure as exc:
            return self._cmc_failure(outcome, exc.reply, exc.fail_info, exc.text, exc.detail)
        if request.unsupported:
            names = ", ".join(sorted({p.type_oid or p.kind.value for p in request.unsupported}))
            return self._cmc_failure(outcome, request.reply, cmc.CmcFailInfo.BAD_REQUEST, f"unsupported: {names}")
        wanted = len(request.certification_requests) + len(request.revoke_requests)
        if wanted != 1:
            text = "a Full PKI Request here carries exactly one PKCS#10 request or one revokeRequest"
            return self._cmc_failure(outcome, request.reply, cmc.CmcFailInfo.BAD_REQUEST, text)
        if request.revoke_requests:
            return self._cmc_revoke(outcome, principal, request, request.revoke_requests[0])
        (tagged,) = request.certification_requests
        csr = load_csr(tagged.der)
        outcome.device_identity = outcome.device_identity or self.identity.of_request(csr)
        self._limit_device(outcome)
        result = self._enroll_csr(outcome, principal, tagged.der, csr)
        if isinstance(result, EstReply):
            return result
        status = cmc.CmcStatusInfo(cmc.CmcStatus.SUCCESS, (tagged.body_part_id,))
        return self._cmc_reply(request.reply, [status], [result, *self.authority.chain])

    def _cmc_revoke(
        self, outcome: _Outcome, principal: Principal, request: cmc.CmcRequest, revoke: cmc.CmcRevokeRequest
    ) -> EstReply:
        """RFC 5272 §6.11, for a device's own certificate: the TLS client certificate is the one named."""
        outcome.operation = "fullcmc-revoke"
        self._shed(outcome)
        target = self.authorizer.authorize_revocation(
            principal, revoke.serial_number, revoke.issuer_der, self.authority.issuer.id
        )
        revoked = self.authority.revoke(target.serial_hex, revoke.reason, actor=f"est:{principal.name}")
        outcome.detail.update(serial=revoked.serial_hex, reason=revoke.reason.value)
        self._record(outcome, "revoked")
        status = cmc.CmcStatusInfo(cmc.CmcStatus.SUCCESS, (revoke.body_part_id,))
        return self._cmc_reply(request.reply, [status], [])

    def _cmc_failure(
        self,
        outcome: _Outcome,
        reply: cmc.CmcReplyContext,
        fail_info: cmc.CmcFailInfo,
        text: str,
        cause: str | None = None,
    ) -> EstReply:
        outcome.detail["cause"] = cause or text
        self._record(outcome, f"failed:{fail_info.name.lower()}")
        log.warning("EST fullcmc failed (%s): %s", fail_info.name, cause or text)
        der = cmc.build_failure_response(
            self.cmc_signer,
            reply=reply,
            fail_info=fail_info,
            text=text,
            sender_nonce=secrets.token_bytes(16),
            signing_time=self.clock(),
        )
        return EstReply(wire.encode_base64_body(der), cmc.FULL_CMC_RESPONSE)

    def _cmc_reply(
        self, reply: cmc.CmcReplyContext, statuses: list[cmc.CmcStatusInfo], certs: list[x509.Certificate]
    ) -> EstReply:
        der = cmc.build_pki_response(
            self.cmc_signer,
            statuses=statuses,
            certificates=certs,
            reply=reply,
            sender_nonce=secrets.token_bytes(16),
            signing_time=self.clock(),
        )
        return EstReply(wire.encode_base64_body(der), cmc.FULL_CMC_RESPONSE)

    def _key_part(
        self, outcome: _Outcome, key: PrivateKey, encryption: KeyEncryptionRequest | None
    ) -> tuple[bytes, str]:
        if encryption is None:
            outcome.detail["key_delivery"] = "pkcs8"
            return serverkeygen.pkcs8_der(key), wire.PKCS8
        if encryption.asymmetric:
            recipient = outcome.connection.client_certificate
            if recipient is None or _ski(recipient) != encryption.key_identifier:
                raise InvalidRequest(
                    "AsymmetricDecryptKeyIdentifier names no key of the TLS client certificate of this request"
                )
            outcome.detail["key_delivery"] = "cms-certificate"
            package = serverkeygen.encrypt_to_certificate(key, recipient, self.signer_key, self.signer_certificate)
            return package, wire.SERVER_GENERATED_KEY
        kek = self.keks.get(encryption.key_identifier)
        if kek is None:
            raise InvalidRequest("DecryptKeyIdentifier names no key-encryption key this server holds")
        outcome.detail["key_delivery"] = "cms-kek"
        package = serverkeygen.encrypt_to_kek(
            key, encryption.key_identifier, kek, self.signer_key, self.signer_certificate
        )
        return package, wire.SERVER_GENERATED_KEY

    # -- issuance, approval queue and credential uses ---------------------------------------------

    def _issue_or_hold(
        self, outcome: _Outcome, authorization: Authorization, wanted: CertificateRequest
    ) -> x509.Certificate | EstReply:
        """The issued certificate, or the 202 reply while the request waits. At capacity (shared_ca.admission)
        an authorized request is answered 202 with Retry-After and only its event is written, not the
        request: the client sends the same request again (RFC 7030 §4.2.3) and a free slot issues it then,
        so nothing can be issued twice. Under manual approval the request is queued for an administrator,
        and its retry (even re-signed) is answered from the queue."""
        if outcome.profile.approval != "manual":
            if outcome.deferred:
                self.admission.count("deferred", "est")
                self._record(outcome, "deferred")
                return self._pending(outcome.profile, deferred=True)
            return self._issue(outcome, authorization).certificate
        new = self.approvals.describe(
            "est",
            authorization,
            wanted,
            reference=principal_ref(authorization.principal),
            device=outcome.device_identity,
            client_address=outcome.connection.client_address,
        )
        queued = self.approvals.find(new)
        if queued is None:
            held = self.approvals.hold(new, self._event(outcome, "pending"))
            if held.new:
                log.info("EST %s: awaiting approval (request %d)", outcome.operation, held.record.id)
                return self._pending(outcome.profile, deferred=False)
            queued = held.record
        return self._queued_answer(outcome, queued)

    def _queued_answer(self, outcome: _Outcome, queued: ApprovalRecord) -> x509.Certificate | EstReply:
        if queued.status == "issued" and queued.certificate_der is not None:
            self._record(outcome, "delivered")
            return x509.load_der_x509_certificate(queued.certificate_der)
        if queued.status == "pending":
            self._record(outcome, "pending")
            return self._pending(outcome.profile, deferred=False)
        raise PolicyDenied(queued.reason or "the request was rejected", detail=f"queued request {queued.id}")

    @staticmethod
    def _certs_only(result: x509.Certificate | EstReply) -> EstReply:
        if isinstance(result, EstReply):
            return result
        return EstReply(wire.encode_base64_body(wire.certs_only([result])), wire.CERTS_ONLY)

    def _pending(self, profile: Profile, *, deferred: bool) -> EstReply:
        # RFC 7030 §4.2.3: 202 with Retry-After; the client sends the same request again.
        retry_after = self.admission.retry_after if deferred else profile.est_retry_after_seconds
        text = b"the request is queued: the gateway is busy\n" if deferred else b"the request awaits approval\n"
        return EstReply(text, "text/plain", status=202, headers=(("Retry-After", str(retry_after)),), base64=False)

    def _issue(self, outcome: _Outcome, authorization: Authorization) -> Issued:
        principal = authorization.principal
        with spending_use(self.users, principal, self.clock()):
            issued = self.authority.issue(
                authorization.policy,
                protocol="est",
                actor=f"est:{principal.name}",
                requester=outcome.connection.client_address,
                renewal_of=authorization.renewal_of,
                enrollment=self._event(outcome, "issued"),
            )
        log.info("EST %s: issued %s to %s", outcome.operation, issued.record.serial_hex, issued.record.subject)
        return issued

    def refused_in_transport(self, operation: str, label: str | None, connection: EstConnection, cause: str) -> None:
        """The event of a request the transport refused before any operation ran (unknown label, wrong
        method, body too large)."""
        event = EnrollmentEvent(
            protocol="est",
            operation=operation[:32],
            outcome="refused:transport",
            profile=(label or "")[:64] or None,
            client_address=connection.client_address,
            user_agent=connection.user_agent,
            tls_version=connection.tls_version,
            detail={"cause": cause},
        )
        try:
            self.store.record_event(event, self.clock())
        except CAError as exc:
            log.error("could not record the EST enrollment event: %s", exc.detail)

    # -- events -----------------------------------------------------------------------------------

    def _event(self, outcome: _Outcome, result: str) -> EnrollmentEvent:
        principal = outcome.principal
        detail = dict(outcome.detail)
        if principal is not None:
            detail["principal"] = principal.name
        if outcome.connection.client_certificate is not None:
            detail["client_certificate"] = fingerprint(outcome.connection.client_certificate)
        return EnrollmentEvent(
            protocol="est",
            operation=outcome.operation,
            outcome=result,
            profile=outcome.profile.name,
            device_identity=outcome.device_identity,
            client_address=outcome.connection.client_address,
            user_agent=outcome.connection.user_agent,
            challenge_kind=_challenge_kind(principal),
            tls_version=outcome.connection.tls_version,
            detail=detail,
        )

    def _record(self, outcome: _Outcome, result: str) -> None:
        try:
            self.store.record_event(self._event(outcome, result), self.clock())
        except CAError as exc:  # an event must never turn an answer into an error
            log.error("could not record the EST enrollment event: %s", exc.detail)


def _csrattrs_body(profile: Profile) -> bytes:
    """The /csrattrs reply body of a label: its template as one base64 line."""
    oids, attributes = csrattrs.template(profile)
    return wire.encode_base64_body(wire.encode_csr_attrs(oids, attributes), line_length=None)


def _challenge_kind(principal: Principal | None) -> str:
    """What an EST event records of how the caller authenticated: 'certificate', 'basic' or 'none'."""
    if principal is None:
        return "none"
    return "certificate" if principal.kind is PrincipalKind.CERTIFICATE else "basic"


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None
