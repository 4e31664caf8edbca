"""EST /fullcmc (RFC 7030 §4.3, RFC 5272): one PKCS#10 enrollment, or the revokeRequest of the client's own
certificate, answered with a signed Full PKI Response.

A readable request that is refused gets a CMC failure response (and a 'failed:<failInfo>' event),
not an HTTP error; what cannot be read, or who cannot be authenticated, is an HTTP error as elsewhere.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable, Sequence

from cryptography import x509

from est import cmc, wire
from est.cmc_pki_data import CmcRevokeRequest
from est.enrollment import Enrollment
from est.events import EventLog
from est.intake import Intake
from est.request import EstReply, EstRequest
from shared_ca.authority import CertificateAuthority
from shared_ca.authorization import Authorizer
from shared_ca.cms import CmsSigner
from shared_ca.errors import CAError

log = logging.getLogger("est.service")


class FullCmc:
    """The fullcmc operation for one CA. Immutable."""

    def __init__(
        self,
        *,
        intake: Intake,
        enrollment: Enrollment,
        authorizer: Authorizer,
        authority: CertificateAuthority,
        events: EventLog,
        signer: CmsSigner,
        clock: Callable[[], dt.datetime],
        previous: Sequence[CertificateAuthority] = (),
    ) -> None:
        self.previous = tuple(previous)  # CAs a rollover replaced: their devices may still revoke theirs
        self.intake = intake
        self.enrollment = enrollment
        self.authorizer = authorizer
        self.authority = authority
        self.events = events
        self.signer = signer  # the RA key and certificate, which sign every Full PKI Response
        self.clock = clock

    def fullcmc(self, request: EstRequest, body: bytes, content_type: str | None) -> EstReply:
        """One PKCS#10 enrollment, or the revokeRequest of the TLS client certificate itself."""
        try:
            self.intake.limit_address(request)
            request = self.intake.authenticate(request)
            try:
                message = cmc.parse_full_cmc(wire.decode_request_body(body, content_type))
            except cmc.CmcFailure as exc:
                return self._failure(request, exc.reply, exc.fail_info, exc.public_message, exc.detail)
            if message.unsupported:
                names = ", ".join(sorted({p.type_oid or p.kind.value for p in message.unsupported}))
                return self._failure(request, message.reply, cmc.CmcFailInfo.BAD_REQUEST, f"unsupported: {names}")
            if len(message.certification_requests) + len(message.revoke_requests) != 1:
                public_message = "a Full PKI Request here carries exactly one PKCS#10 request or one revokeRequest"
                return self._failure(request, message.reply, cmc.CmcFailInfo.BAD_REQUEST, public_message)
            if message.revoke_requests:
                request = request.as_operation("fullcmc-revoke")
                self.intake.shed(request)
                return self._revoke(request, message.reply, message.revoke_requests[0])
            (tagged,) = message.certification_requests
            request, csr = self.intake.read_csr(request, tagged.der)
            self.intake.limit_device(request)
            result = self.enrollment.enroll(request, csr)
            if isinstance(result, EstReply):
                return result
            status = cmc.CmcStatusInfo(cmc.CmcStatus.SUCCESS, (tagged.body_part_id,))
            return self._response(message.reply, [status], [result, *self.authority.chain])
        except CAError as exc:
            self.events.refused(request, exc, body, content_type)
            raise

    def _revoke(self, request: EstRequest, reply: cmc.CmcReplyContext, revoke: CmcRevokeRequest) -> EstReply:
        """RFC 5272 §6.11, for a device's own certificate: the TLS client certificate is the one named."""
        target = self.authorizer.authorize_revocation(
            request.asker,
            revoke.serial_number,
            revoke.issuer_der,
            self.authority.issuer.id,
            replaced_issuer_ids=[a.issuer.id for a in self.previous],
        )
        # onto the CRL of the CA that issued it: the issuing one, or a replaced one until it is retired
        authority = next((a for a in self.previous if a.issuer.id == target.issuer_id), self.authority)
        revoked = authority.revoke(target.serial_hex, revoke.reason, actor=f"est:{request.asker.name}")
        self.events.record(request.noting(serial=revoked.serial_hex, reason=revoke.reason.value), "revoked")
        status = cmc.CmcStatusInfo(cmc.CmcStatus.SUCCESS, (revoke.body_part_id,))
        return self._response(reply, [status], [])

    def _failure(
        self,
        request: EstRequest,
        reply: cmc.CmcReplyContext,
        fail_info: cmc.CmcFailInfo,
        public_message: str,
        detail: str | None = None,
    ) -> EstReply:
        """The CMC failure response to a readable request, with its event and log line."""
        self.events.record(request.noting(cause=detail or public_message), f"failed:{fail_info.name.lower()}")
        log.warning("EST fullcmc failed (%s): %s", fail_info.name, detail or public_message)
        der = cmc.build_failure_response(
            self.signer,
            reply=reply,
            fail_info=fail_info,
            text=public_message,
            sender_nonce=secrets.token_bytes(16),
            signing_time=self.clock(),
        )
        return EstReply(wire.encode_base64_body(der), cmc.FULL_CMC_RESPONSE)

    def _response(
        self, reply: cmc.CmcReplyContext, statuses: list[cmc.CmcStatusInfo], certs: list[x509.Certificate]
    ) -> EstReply:
        der = cmc.build_pki_response(
            self.signer,
            statuses=statuses,
            certificates=certs,
            reply=reply,
            sender_nonce=secrets.token_bytes(16),
            signing_time=self.clock(),
        )
        return EstReply(wire.encode_base64_body(der), cmc.FULL_CMC_RESPONSE)
