"""SCEP operations (RFC 8894 §3.3, §4): from a verified request to a signed CertRep, through shared_ca.

Once a pkiMessage has been read, every refusal is a signed FAILURE carrying failInfo and a
client-safe failInfoText (DESIGN.md error table); the cause goes to the log and to the request's
enrollment event. Only a database outage escapes as Unavailable (HTTP 503), because a signed
FAILURE is final for a SCEP client.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scep.asn1 import FailInfo, MessageType, PkiStatus
from scep.builder import RaIdentity, build_cert_rep, build_failure, build_next_ca_reply, degenerate_certs_only
from scep.challenges import REFUSED as CHALLENGE_REFUSED
from scep.challenges import (
    AnyOf,
    ChallengeNotVerifiable,
    ChallengeRequest,
    ChallengeValidator,
    Lockout,
    OneTimeChallenge,
    StaticChallenge,
    WebhookChallenge,
)
from scep.clients import ClientFamily, ScepFingerprint, recognise_client
from scep.envelope import ContentCipher
from scep.message import PkiRequest, ReplyContext, ScepDecodeError, ScepMessageError, parse_pki_message
from shared_ca.admission import Admission
from shared_ca.approval import ApprovalQueue
from shared_ca.authority import CertificateAuthority, fingerprint
from shared_ca.authorization import Authorization, Authorizer, CertificateRequest, Principal, PrincipalKind
from shared_ca.crl import CrlPublisher
from shared_ca.csr import challenge_password, load_csr
from shared_ca.errors import (
    AlgorithmNotAllowed,
    BadSignature,
    CAError,
    InvalidRequest,
    PolicyDenied,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from shared_ca.identity import DEFAULT_IDENTITY, IdentityRule
from shared_ca.profiles import Profile
from shared_ca.serials import serial_hex
from shared_ca.storage.enrollment import EnrollmentStore
from shared_ca.storage.enrollment_records import (
    ChallengeSpent,
    EnrollmentEvent,
    NewScepTransaction,
    ScepTransactionRecord,
    TransactionExists,
)
from shared_ca.trust import recognise

log = logging.getLogger("scep.service")
CA_RA_CERT_TYPE = "application/x-x509-ca-ra-cert"
NEXT_CA_CERT_TYPE = "application/x-x509-next-ca-cert"
PKI_MESSAGE_TYPE = "application/x-pki-message"
_FAIL_INFO_BY_NAME = {f.rfc_name: f for f in FailInfo}
# The CA refusals an enrollment maps to a signed FAILURE (an Unavailable escapes as HTTP 503 instead).
_REFUSALS = (PolicyDenied, AlgorithmNotAllowed, Unauthorized, BadSignature, InvalidRequest, TooManyRequests)
BUSY = "the gateway is busy; try again later"
AT_CAPACITY = "at capacity: no slot within the queue wait (admission.max_in_flight, admission.queue_wait_ms)"


@dataclass(frozen=True)
class ScepClient:
    """Transport facts about the requester, for events, lockout, logs and its client family."""

    address: str | None
    user_agent: str | None
    waited: float = 0.0  # seconds the request waited behind others for its worker (admission control)
    path: str | None = None
    method: str | None = None
    http_version: str | None = None
    content_type: str | None = None

    def family(
        self, message_type: str, transaction_id: str | None, cipher: str | None, digest: str | None
    ) -> str | None:
        """The SCEP client family this request shows (scep.clients); None when nothing tells."""
        fingerprint = ScepFingerprint(
            user_agent=self.user_agent,
            path=self.path,
            method=self.method,
            http_version=self.http_version,
            content_type=self.content_type,
            message_type=message_type,
            transaction_id=transaction_id,
            cipher=cipher,
            digest=digest,
        )
        family = recognise_client(fingerprint)
        return None if family is ClientFamily.UNKNOWN else family.value


class Refused(Exception):
    """A refusal answered by a signed FAILURE: `text` goes to the client, `detail` to the log."""

    def __init__(self, fail_info: FailInfo, text: str, detail: str | None = None, *, store: bool = True) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text
        self.detail = detail or text
        self.recorded = False  # its enrollment event is written already
        # Kept as the transaction's answer (a retransmission gets it again); a rate limit is not: the
        # same request sent later is judged afresh.
        self.store = store


_CA_ERROR_FAIL_INFO = {AlgorithmNotAllowed: FailInfo.BAD_ALG, BadSignature: FailInfo.BAD_MESSAGE_CHECK}


def refusal_from(exc: CAError) -> Refused:
    """The FAILURE a CA refusal maps to (DESIGN.md error table)."""
    fail_info = _CA_ERROR_FAIL_INFO.get(type(exc), FailInfo.BAD_REQUEST)
    return Refused(fail_info, exc.public_message, exc.detail, store=not isinstance(exc, TooManyRequests))


def spki_sha256(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's SubjectPublicKeyInfo (what identifies the signer key)."""
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def capabilities(profile: Profile, *, next_ca: bool = False) -> list[str]:
    """GetCACaps: exactly what this profile is served with (RFC 8894 §3.5.2); GetNextCACert only
    when a next CA is configured (`next_ca`)."""
    caps = ["POSTPKIOperation"]
    if next_ca:
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


def _transaction(request: PkiRequest, profile: Profile, client: ScepClient, replaces: int | None) -> NewScepTransaction:
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


class ScepService:
    """Runs each SCEP operation for one CA and its RA. Immutable; one per worker."""

    def __init__(
        self,
        *,
        authority: CertificateAuthority,
        store: EnrollmentStore,
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
    ) -> None:
        self.authority = authority
        self.store = store
        self.crl = crl
        self.ra_key = ra_key
        self.ra_certificate = ra_certificate
        self.ra = RaIdentity.create(ra_key, ra_certificate, authority.chain)
        self.ca_ra_certs = degenerate_certs_only([ra_certificate, *authority.chain])
        # GetNextCACert (RFC 8894 §4.7): the next RA and CA certificates, signed once by the current RA.
        self.next_ca_certs = tuple(next_ca_certs)
        self.next_ca_reply = build_next_ca_reply(self.ra, self.next_ca_certs) if self.next_ca_certs else None
        self.profiles = profiles
        self.nonce = nonce
        self.validators = {name: self._validator(profile) for name, profile in profiles.items()}
        self.identity = identity  # names the device in events and one-time challenges (shared_ca.identity)
        self.authorizer = authorizer  # who may obtain what (shared_ca.authorization)
        self.approvals = approvals  # the manual-approval queue, shared with EST
        self.admission = admission or Admission.unlimited()  # in-flight cap, deferral, rate limits

    @property
    def clock(self) -> Callable[[], dt.datetime]:
        return self.authority.clock

    def _validator(self, profile: Profile) -> ChallengeValidator:
        """The profile's challenge check: static, one-time and webhook, under a lockout (with the
        profile-wide guard of its static challenge, when it has one)."""
        validators: list[ChallengeValidator] = []
        if profile.scep_challenge:
            validators.append(StaticChallenge(profile.scep_challenge))
        validators.append(OneTimeChallenge(self.store, self.clock))
        if profile.scep_webhook_url:
            validators.append(
                WebhookChallenge(
                    profile.scep_webhook_url,
                    profile.scep_webhook_secret.encode("utf-8"),
                    float(profile.scep_webhook_timeout_seconds),
                )
            )
        window = dt.timedelta(minutes=profile.scep_lockout_minutes)
        return Lockout(
            AnyOf(validators),
            self.store,
            threshold=profile.scep_lockout_threshold,
            window=window,
            lock_for=window,
            profile_threshold=profile.scep_lockout_profile_threshold if profile.scep_challenge else None,
            clock=self.clock,
        )

    # -- the PKIOperation ---------------------------------------------------------------------------

    def pki_operation(self, message: bytes, profile: Profile, client: ScepClient) -> bytes:
        """Answer one pkiMessage with a CertRep; ScepDecodeError (HTTP 400) when it cannot be read.

        At capacity (shared_ca.admission) a new enrollment is deferred (PENDING, issued in the background)
        and anything else is Unavailable (HTTP 503 with Retry-After)."""
        with self.admission.enter("scep", waited=client.waited) as admitted:
            return self._operation(message, profile, client, admitted)

    def _operation(self, message: bytes, profile: Profile, client: ScepClient, admitted: bool) -> bytes:
        try:
            request = parse_pki_message(message, ra_key=self.ra_key, ra_cert=self.ra_certificate)
        except ScepDecodeError as exc:
            self._event(profile, client, "PKIOperation", "undecodable", None, {"cause": exc.detail})
            raise
        except ScepMessageError as exc:
            log.warning("SCEP %s refused (%s): %s", exc.reply.transaction_id, exc.fail_info.rfc_name, exc.detail)
            self._event(
                profile,
                client,
                "PKIOperation",
                f"failure:{exc.fail_info.rfc_name}",
                None,
                {"cause": exc.detail},
                reply=exc.reply,
            )
            return build_failure(
                ra=self.ra, reply=exc.reply, fail_info=exc.fail_info, text=exc.text, sender_nonce=self.nonce()
            )
        try:
            self._check_algorithms(request, profile)
            self._check_signing_time(request, profile)
            if not self.admission.allow_address(client.address):
                self.admission.count("rate-limited", "scep")
                raise refusal_from(self._too_many(f"client address {client.address}"))
            if request.message_type.is_enrolment:
                return self._enroll(request, profile, client, defer=not admitted)
            if request.message_type is MessageType.CertPoll:  # how a deferred request is delivered: always
                return self._poll(request, profile, client)
            if not admitted:
                self.admission.count("shed", "scep")
                raise Unavailable(BUSY, detail=AT_CAPACITY, retry_after=self.admission.retry_after)
            if request.message_type is MessageType.GetCert:
                return self._get_cert(request, profile, client)
            return self._get_crl(request, profile, client)
        except Refused as refusal:
            log.warning(
                "SCEP %s %s refused (%s): %s",
                request.message_type.name,
                request.transaction_id,
                refusal.fail_info.rfc_name,
                refusal.detail,
            )
            if not refusal.recorded:
                self._event(
                    profile,
                    client,
                    request.message_type.name,
                    f"failure:{refusal.fail_info.rfc_name}",
                    request,
                    {"cause": refusal.detail},
                )
            return self._failure(request, refusal.fail_info, refusal.text)

    def _check_algorithms(self, request: PkiRequest, profile: Profile) -> None:
        if request.digest.value not in profile.scep_digests:
            raise Refused(FailInfo.BAD_ALG, f"digest {request.digest.value.upper()} is not allowed")
        if request.content_cipher.value not in profile.scep_ciphers:
            raise Refused(FailInfo.BAD_ALG, f"envelope cipher {request.content_cipher.value} is not allowed")
        if not isinstance(request.signer_certificate.public_key(), rsa.RSAPublicKey):
            # The reply is enveloped to the signer's key, and SCEP envelopes use RSA key transport.
            raise Refused(FailInfo.BAD_ALG, "sign SCEP requests with an RSA key")

    def _too_many(self, who: str) -> TooManyRequests:
        return TooManyRequests(
            "too many requests; try again later",
            detail=f"{who} is over its rate limit (admission.device_rate_per_minute, address_rate_per_minute)",
            retry_after=self.admission.retry_after,
        )

    def _check_signing_time(self, request: PkiRequest, profile: Profile) -> None:
        """RFC 8894 §3.3.2.2 badTime: a signingTime, when the client sends one, close enough to our clock."""
        signed_at = request.attributes.signing_time
        tolerance = profile.scep_signing_time_tolerance_minutes
        if signed_at is None or not tolerance:
            return
        skew = abs(self.clock() - signed_at)
        if skew > dt.timedelta(minutes=tolerance):
            raise Refused(
                FailInfo.BAD_TIME,
                "the message's signingTime is too far from the server's time",
                f"signingTime {signed_at.isoformat()} is {skew} from the server's clock (tolerance {tolerance} min)",
            )

    # -- enrollment ---------------------------------------------------------------------------------

    def _enroll(self, request: PkiRequest, profile: Profile, client: ScepClient, *, defer: bool = False) -> bytes:
        signer = request.signer_certificate
        key_sha, cert_sha = spki_sha256(signer), fingerprint(signer)
        assert request.csr_der is not None
        request_sha = hashlib.sha256(request.csr_der).hexdigest()
        replaces: int | None = None
        # The look-ups before issuance share one connection; the scope closes before the issuing
        # write, so a lost race (TransactionExists) reads the winner afresh.
        with self.store.reading():
            existing = self.store.scep_transaction(key_sha, request.transaction_id)
            if existing is not None:
                if existing.is_retransmission(cert_sha, request.message_type.value, request_sha):
                    log.info("SCEP %s: retransmission, answered as before", request.transaction_id)
                    self._event(
                        profile, client, request.message_type.name, f"retransmission:{existing.status}", request
                    )
                    return self._answer(request, existing)
                if existing.status == "pending":
                    raise Refused(FailInfo.BAD_REQUEST, "a different request with this transactionID awaits approval")
                replaces = existing.id
            try:
                admitted = self._admit(request, profile, client, replaces)
            except Refused as refusal:
                if refusal.store:
                    self._record_failed(request, profile, client, refusal, replaces)
                raise
        try:
            return self._issue(request, client, admitted, defer=defer)
        except ChallengeSpent as exc:  # its last use went to a concurrent request since it was checked
            log.info("SCEP %s: %s", request.transaction_id, exc.detail)
            lost = refusal_from(Unauthorized(CHALLENGE_REFUSED, detail=exc.detail))
            if lost.store:
                self._record_failed(request, profile, client, lost, replaces)
            raise lost from exc

    def _admit(self, request: PkiRequest, profile: Profile, client: ScepClient, replaces: int | None) -> _Admitted:
        """Authenticate and authorize a new enrollment request (Refused when either fails); what issuing
        it needs. The Authorizer decides; this only says who is asking."""
        assert request.csr_der is not None
        try:
            csr = load_csr(request.csr_der)
            wanted = CertificateRequest.from_csr(csr)
            device = self.identity.of_request(csr)
            if not self.admission.allow_device(device):
                self.admission.count("rate-limited", "scep")
                raise self._too_many(f"device {device!r}")
            authorization = self.authorizer.authorize(
                lambda: self._principal(request, csr, device, profile, client), profile, "scep", wanted
            )
        except _REFUSALS as exc:
            raise refusal_from(exc) from exc
        kind = authorization.principal.kind
        challenge_kind = "renewal" if kind is PrincipalKind.CERTIFICATE else kind.value
        event = self._enrollment_event(profile, client, request, "issued", challenge_kind, device)
        txn = replace(
            _transaction(request, profile, client, replaces),
            subject=csr.subject.rfc4514_string(),
            spends_challenge=authorization.principal.challenge_id,  # taken when the request is recorded
        )
        return _Admitted(authorization, wanted, device, event, txn)

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
        return self._success(request, [issued.certificate])

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
            known = recognise(self.store, request.signer_certificate, self.clock())
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
        return self._reply(request, PkiStatus.PENDING)

    def _record_failed(
        self, request: PkiRequest, profile: Profile, client: ScepClient, refusal: Refused, replaces: int | None
    ) -> None:
        """Keep the failure, so a retransmission gets the same answer (and the event is written once)."""
        txn = replace(
            _transaction(request, profile, client, replaces),
            status="failed",
            fail_info=refusal.fail_info.rfc_name,
            fail_info_text=refusal.text,
        )
        event = self._enrollment_event(
            profile,
            client,
            request,
            f"failure:{refusal.fail_info.rfc_name}",
            "none",
            self._device_of(request),
            {"cause": refusal.detail},
        )
        try:
            self.store.record_scep_outcome(txn, event, self.clock())
        except TransactionExists:
            self.store.record_event(event, self.clock())
        refusal.recorded = True

    def _answer_winner(self, request: PkiRequest) -> bytes:
        """A concurrent request with the same transaction won: answer as it was answered."""
        winner = self.store.scep_transaction(spki_sha256(request.signer_certificate), request.transaction_id)
        if winner is None:
            raise Unavailable("the SCEP transaction could not be recorded", detail="transaction vanished")
        return self._answer(request, winner)

    def _answer(self, request: PkiRequest, txn: ScepTransactionRecord) -> bytes:
        if txn.status == "issued" and txn.certificate_der is not None:
            return self._success(request, [x509.load_der_x509_certificate(txn.certificate_der)])
        if txn.status == "pending":
            return self._reply(request, PkiStatus.PENDING)
        fail_info = _FAIL_INFO_BY_NAME.get(txn.fail_info or "", FailInfo.BAD_REQUEST)
        return self._failure(request, fail_info, txn.fail_info_text or "the request was rejected")

    # -- polling and retrieval ----------------------------------------------------------------------

    def _poll(self, request: PkiRequest, profile: Profile, client: ScepClient) -> bytes:
        txn = self.store.scep_transaction(spki_sha256(request.signer_certificate), request.transaction_id)
        if txn is None:
            raise Refused(FailInfo.BAD_CERT_ID, "no request with this transactionID")
        self._event(profile, client, "CertPoll", f"poll:{txn.status}", request)
        return self._answer(request, txn)

    def _get_cert(self, request: PkiRequest, profile: Profile, client: ScepClient) -> bytes:
        wanted = request.issuer_and_serial
        assert wanted is not None
        record = None
        if wanted.issuer_der == self.authority.certificate.subject.public_bytes():
            record = self.store.certificate(self.authority.issuer.id, serial_hex(wanted.serial_number))
        if record is None:
            raise Refused(FailInfo.BAD_CERT_ID, "no such certificate")
        self._event(profile, client, "GetCert", "delivered", request)
        return self._success(request, [x509.load_der_x509_certificate(record.der)])

    def _get_crl(self, request: PkiRequest, profile: Profile, client: ScepClient) -> bytes:
        wanted = request.issuer_and_serial
        assert wanted is not None
        if wanted.issuer_der != self.authority.certificate.subject.public_bytes():
            raise Refused(FailInfo.BAD_CERT_ID, "no CRL for this issuer")
        crl = self.crl.current(actor="scep")
        self._event(profile, client, "GetCRL", "delivered", request)
        return self._success(request, [], crl_der=crl.der)

    # -- replies and events -------------------------------------------------------------------------

    def _success(self, request: PkiRequest, certs: list[x509.Certificate], crl_der: bytes | None = None) -> bytes:
        return build_cert_rep(
            ra=self.ra,
            status=PkiStatus.SUCCESS,
            transaction_id=request.transaction_id,
            recipient_nonce=request.sender_nonce,
            sender_nonce=self.nonce(),
            digest=request.digest,
            issued=certs,
            recipient_cert=request.signer_certificate,
            content_cipher=request.content_cipher,
            key_transport=request.key_transport,
            crl_der=crl_der,
        )

    def _reply(self, request: PkiRequest, status: PkiStatus) -> bytes:
        return build_cert_rep(
            ra=self.ra,
            status=status,
            transaction_id=request.transaction_id,
            recipient_nonce=request.sender_nonce,
            sender_nonce=self.nonce(),
            digest=request.digest,
        )

    def _failure(self, request: PkiRequest, fail_info: FailInfo, text: str) -> bytes:
        return build_failure(ra=self.ra, reply=request.reply, fail_info=fail_info, text=text, sender_nonce=self.nonce())

    def _enrollment_event(
        self,
        profile: Profile,
        client: ScepClient,
        request: PkiRequest,
        outcome: str,
        challenge_kind: str,
        identity: str | None,
        detail: dict[str, str] | None = None,
    ) -> EnrollmentEvent:
        return EnrollmentEvent(
            protocol="scep",
            operation=request.message_type.name,
            outcome=outcome,
            profile=profile.name,
            device_identity=identity,
            client_address=client.address,
            user_agent=client.user_agent,
            cipher=request.content_cipher.value,
            digest=request.digest.value,
            challenge_kind=challenge_kind,
            transaction_id=request.transaction_id,
            detail=detail,
            client_family=client.family(
                request.message_type.name, request.transaction_id, request.content_cipher.value, request.digest.value
            ),
        )

    def _device_of(self, request: PkiRequest) -> str | None:
        """The device a request names: by its CSR when it carries a readable one, else by its signer."""
        csr = request.csr
        if csr is not None:
            return self.identity.of_request(csr)
        return self.identity.of_certificate(request.signer_certificate)

    def _event(
        self,
        profile: Profile,
        client: ScepClient,
        operation: str,
        outcome: str,
        request: PkiRequest | None,
        detail: dict[str, str] | None = None,
        *,
        reply: ReplyContext | None = None,
    ) -> None:
        """Write the request's enrollment event on its own (refusals, polls, retrievals)."""
        context = request.reply if request is not None else reply
        cipher: ContentCipher | None = context.content_cipher if context is not None else None
        signer = context.signer_certificate if context is not None else None
        event = EnrollmentEvent(
            protocol="scep",
            operation=operation,
            outcome=outcome,
            profile=profile.name,
            device_identity=self.identity.of_certificate(signer) if signer is not None else None,
            client_address=client.address,
            user_agent=client.user_agent,
            cipher=cipher.value if cipher is not None else None,
            digest=context.digest.value if context is not None else None,
            transaction_id=context.transaction_id if context is not None else None,
            detail=detail,
            client_family=client.family(
                operation,
                context.transaction_id if context is not None else None,
                cipher.value if cipher is not None else None,
                context.digest.value if context is not None else None,
            ),
        )
        try:
            self.store.record_event(event, self.clock())
        except CAError as exc:  # an event must never turn an answer into an error
            log.error("could not record the SCEP enrollment event: %s", exc.detail)
