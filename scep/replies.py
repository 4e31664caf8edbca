"""What a SCEP request is answered with: signed CertReps, SCEP's column of the error table, and the
request's enrollment event.

Once a pkiMessage has been read a CertRep is owed, and every CAError maps to a signed FAILURE with
failInfo and a client-safe failInfoText (DESIGN.md error table), except our own state (Conflict,
Unavailable): it rises to the HTTP answer, because a signed FAILURE is final for a SCEP client. The
cause goes to the log and to the enrollment event, never to the client.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from cryptography import x509

from scep.asn1 import FailInfo, PkiStatus
from scep.builder import RaIdentity, build_cert_rep, build_failure
from scep.clients import ScepClient
from scep.message import PkiRequest, ReplyContext, ScepMessageError
from shared_ca.errors import CAError, ErrorKind, TooManyRequests
from shared_ca.identity import IdentityRule
from shared_ca.profiles import Profile
from shared_ca.storage.enrollment_records import (
    EnrollmentEvent,
    NewScepTransaction,
    ScepTransactionRecord,
    TransactionExists,
)


class OutcomeLog(Protocol):
    """The enrollment storage replies write (shared_ca.storage.enrollment)."""

    def record_event(self, event: EnrollmentEvent, now: dt.datetime) -> int: ...
    def record_scep_outcome(
        self, txn: NewScepTransaction, event: EnrollmentEvent, now: dt.datetime
    ) -> ScepTransactionRecord: ...


log = logging.getLogger(__name__)

_FAIL_INFO = {
    ErrorKind.BAD_SIGNATURE: FailInfo.BAD_MESSAGE_CHECK,
    ErrorKind.BAD_ALGORITHM: FailInfo.BAD_ALG,
    ErrorKind.NOT_FOUND: FailInfo.BAD_CERT_ID,
}
_RISES_TO_HTTP = frozenset({ErrorKind.CONFLICT, ErrorKind.UNAVAILABLE})
_FAIL_INFO_BY_NAME = {f.rfc_name: f for f in FailInfo}


def fail_info_of(exc: CAError) -> FailInfo | None:
    """The failInfo a refusal is answered with once a CertRep is owed; None when it rises to HTTP."""
    if exc.kind in _RISES_TO_HTTP:
        return None
    if isinstance(exc, ScepMessageError):
        return exc.fail_info
    return _FAIL_INFO.get(exc.kind, FailInfo.BAD_REQUEST)


class Replies:
    """Builds every CertRep signed by the RA, and writes the enrollment events of answers that issue
    nothing. Immutable; one per worker."""

    def __init__(
        self,
        *,
        ra: RaIdentity,
        enrollments: OutcomeLog,
        identity: IdentityRule,
        clock: Callable[[], dt.datetime],
        nonce: Callable[[], bytes],
    ) -> None:
        self.ra = ra
        self.enrollments = enrollments
        self.identity = identity  # names the device in events
        self.clock = clock
        self.nonce = nonce

    # -- CertReps -----------------------------------------------------------------------------------

    def success(self, request: PkiRequest, certs: list[x509.Certificate], crl_der: bytes | None = None) -> bytes:
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

    def pending(self, request: PkiRequest) -> bytes:
        return build_cert_rep(
            ra=self.ra,
            status=PkiStatus.PENDING,
            transaction_id=request.transaction_id,
            recipient_nonce=request.sender_nonce,
            sender_nonce=self.nonce(),
            digest=request.digest,
        )

    def failure(self, reply: ReplyContext, fail_info: FailInfo, public_message: str) -> bytes:
        return build_failure(
            ra=self.ra, reply=reply, fail_info=fail_info, text=public_message, sender_nonce=self.nonce()
        )

    def answer(self, request: PkiRequest, txn: ScepTransactionRecord) -> bytes:
        """Answer as the recorded transaction was answered (a retransmission, a poll, a lost race)."""
        if txn.status == "issued" and txn.certificate_der is not None:
            return self.success(request, [x509.load_der_x509_certificate(txn.certificate_der)])
        if txn.status == "pending":
            return self.pending(request)
        fail_info = _FAIL_INFO_BY_NAME.get(txn.fail_info or "", FailInfo.BAD_REQUEST)
        return self.failure(request.reply, fail_info, txn.fail_info_text or "the request was rejected")

    # -- refusals -----------------------------------------------------------------------------------

    def refused(
        self,
        exc: CAError,
        request: PkiRequest | None,
        profile: Profile,
        client: ScepClient,
        *,
        kept: NewScepTransaction | None = None,
    ) -> bytes:
        """The signed FAILURE `exc` maps to, logged and recorded; `exc` itself rises when no CertRep is
        owed (`request` None: the message could not be read) or it is our own state.

        With `kept`, the FAILURE becomes that transaction's answer, so a retransmission gets it again;
        a rate limit is not kept: the same request sent later is judged afresh."""
        if request is None and not isinstance(exc, ScepMessageError):
            self.event(profile, client, "PKIOperation", "undecodable", None, exc.detail)
            raise exc
        fail_info = fail_info_of(exc)
        if fail_info is None:
            raise exc
        outcome = f"failure:{fail_info.rfc_name}"
        if request is None:
            assert isinstance(exc, ScepMessageError)
            log.warning("SCEP %s refused (%s): %s", exc.reply.transaction_id, fail_info.rfc_name, exc.detail)
            self.event(profile, client, "PKIOperation", outcome, exc.reply, exc.detail, refusal_kind=exc.kind.value)
            return self.failure(exc.reply, fail_info, exc.public_message)
        keep = None if isinstance(exc, TooManyRequests) else kept
        if keep is not None:
            self._keep(keep, exc, fail_info, request, profile, client)
        operation = request.message_type.name
        log.warning("SCEP %s %s refused (%s): %s", operation, request.transaction_id, fail_info.rfc_name, exc.detail)
        if keep is None:
            self.event(profile, client, operation, outcome, request.reply, exc.detail, refusal_kind=exc.kind.value)
        return self.failure(request.reply, fail_info, exc.public_message)

    def _keep(
        self,
        txn: NewScepTransaction,
        exc: CAError,
        fail_info: FailInfo,
        request: PkiRequest,
        profile: Profile,
        client: ScepClient,
    ) -> None:
        """Record the refusal as the transaction's answer, with its event (only the event when a
        concurrent request recorded the transaction first)."""
        outcome = f"failure:{fail_info.rfc_name}"
        failed = replace(txn, status="failed", fail_info=fail_info.rfc_name, fail_info_text=exc.public_message)
        device = self.device_of(request)
        event = self.enrollment_event(profile, client, request, outcome, "none", device, {"cause": exc.detail})
        event = replace(event, refusal_kind=exc.kind.value)
        try:
            self.enrollments.record_scep_outcome(failed, event, self.clock())
        except TransactionExists:
            self.enrollments.record_event(event, self.clock())

    # -- enrollment events --------------------------------------------------------------------------

    def enrollment_event(
        self,
        profile: Profile,
        client: ScepClient,
        request: PkiRequest,
        outcome: str,
        challenge_kind: str,
        identity: str | None,
        detail: dict[str, str] | None = None,
    ) -> EnrollmentEvent:
        """The event of an enrollment request, written with what it records (issued, held, kept)."""
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

    def device_of(self, request: PkiRequest) -> str | None:
        """The device a request names: by its CSR when it carries a readable one, else by its signer."""
        csr = request.csr
        if csr is not None:
            return self.identity.of_request(csr)
        return self.identity.of_certificate(request.signer_certificate)

    def event(
        self,
        profile: Profile,
        client: ScepClient,
        operation: str,
        outcome: str,
        context: ReplyContext | None,
        cause: str | None = None,
        *,
        refusal_kind: str | None = None,
    ) -> None:
        """Write the request's enrollment event on its own (refusals, polls, retrievals); a refusal's kind
        (an ErrorKind value) decides whether it is audited (shared_ca.storage.enrollment_records)."""
        cipher = context.content_cipher.value if context is not None and context.content_cipher is not None else None
        digest = context.digest.value if context is not None else None
        transaction_id = context.transaction_id if context is not None else None
        signer = context.signer_certificate if context is not None else None
        event = EnrollmentEvent(
            protocol="scep",
            operation=operation,
            outcome=outcome,
            profile=profile.name,
            device_identity=self.identity.of_certificate(signer) if signer is not None else None,
            client_address=client.address,
            user_agent=client.user_agent,
            cipher=cipher,
            digest=digest,
            transaction_id=transaction_id,
            detail={"cause": cause} if cause is not None else None,
            client_family=client.family(operation, transaction_id, cipher, digest),
            refusal_kind=refusal_kind,
        )
        try:
            self.enrollments.record_event(event, self.clock())
        except CAError as exc:  # an event must never turn an answer into an error
            log.error("could not record the SCEP enrollment event: %s", exc.detail)
