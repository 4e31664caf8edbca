"""Who may enroll over SCEP: challenge validators, composed by wrapping (micromdm's middleware style).

    Lockout(AnyOf([StaticChallenge(s), OneTimeChallenge(enrollments)]), enrollments, threshold=5, ...)

A validator returns ChallengeAccepted or raises Unauthorized with one client-safe message; the
cause goes to the log. ChallengeNotVerifiable (a subclass) means no verdict could be reached (the
webhook is down, slow or answered nonsense): the request is refused all the same (fail closed),
but it is not counted as a wrong attempt. The Lockout, and each profile's composed check, are in
scep.lockout. Renewal without a challenge is decided by scep.enrollment (the request is signed by a
certificate we issued), not here.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shared_ca.authority import Clock, utcnow
from shared_ca.errors import Unauthorized
from shared_ca.storage.enrollment import ChallengeRecord

log = logging.getLogger(__name__)

REFUSED = "the challenge password is not valid"
LOCKED = "too many failed attempts; try again later"


class ChallengeKind(enum.Enum):
    """How a request was authorised; the value is what enrollment events record."""

    STATIC = "static"
    ONE_TIME = "one-time"
    WEBHOOK = "webhook"
    RENEWAL = "renewal"  # signed by a certificate we issued: no challenge needed
    NONE = "none"


@dataclass(frozen=True)
class ChallengeRequest:
    """What a validator may look at: the decrypted PKCSReq and where it came from."""

    profile: str
    challenge_password: str | None
    subject: str  # the CSR subject, RFC 4514
    device_id: str | None  # the device identity the service derived from the CSR
    transaction_id: str
    client_address: str | None  # the real client (trusted-proxy aware); None when unknown
    csr_der: bytes
    # Kinds of challenge the lockout suspended for this request (the profile-wide guard): refused
    # unseen, so a right and a wrong secret get the same answer.
    suspended: frozenset[ChallengeKind] = field(default_factory=frozenset)


@dataclass(frozen=True)
class ChallengeAccepted:
    kind: ChallengeKind
    challenge_id: int | None = None  # the one-time challenge that fits: its use is spent when the request is recorded
    device_id: str | None = None  # the device that challenge was issued for


class ChallengeNotVerifiable(Unauthorized):
    """Refused because no verdict could be reached; not a wrong attempt (Lockout does not count it)."""


class ChallengeValidator(Protocol):
    def validate(self, request: ChallengeRequest) -> ChallengeAccepted:
        """Accept the request or raise Unauthorized."""
        ...


def challenge_sha256(secret: str) -> str:
    """The stored form of a challenge: hex SHA-256 of its UTF-8 bytes (secrets are high-entropy)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class StaticChallenge:
    """One shared secret per profile, compared in constant time."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a static challenge needs a non-empty secret")
        self._digest = hashlib.sha256(secret.encode("utf-8")).digest()

    def __repr__(self) -> str:
        return "StaticChallenge(<secret>)"

    def validate(self, request: ChallengeRequest) -> ChallengeAccepted:
        if ChallengeKind.STATIC in request.suspended:  # not compared: the answer must not depend on it
            log.info("SCEP transaction %s: static challenge suspended", request.transaction_id)
            raise Unauthorized(REFUSED, detail="static challenge suspended (too many wrong challenges on the profile)")
        password = request.challenge_password
        # Comparing digests keeps the time independent of the secret's length too.
        presented = hashlib.sha256(password.encode("utf-8")).digest() if password is not None else b""
        if not hmac.compare_digest(presented, self._digest):
            cause = "no challenge password" if password is None else "wrong static challenge"
            log.info("SCEP transaction %s: %s", request.transaction_id, cause)
            raise Unauthorized(REFUSED, detail=cause)
        return ChallengeAccepted(ChallengeKind.STATIC)


class StoredChallenges(Protocol):
    """The challenge storage a one-time challenge reads (shared_ca.storage.enrollment)."""

    def usable_challenge(
        self, secret_sha256: str, now: dt.datetime, *, profile: str, device_id: str | None, subject: str | None
    ) -> ChallengeRecord | None: ...
    def challenge(self, secret_sha256: str) -> ChallengeRecord | None: ...


class ChallengeWriter(Protocol):
    """The challenge storage `new_one_time_challenge` writes (shared_ca.storage.enrollment)."""

    def create_challenge(
        self,
        secret_sha256: str,
        *,
        device_id: str | None,
        profile: str,
        expires_at: dt.datetime,
        created_by: str,
        now: dt.datetime,
        uses: int = 1,
        expected_subject: str | None = None,
    ) -> ChallengeRecord: ...


class OneTimeChallenge:
    """A stored, hashed challenge bound to a profile, optionally a device and an expected subject.

    Accepting checks that the challenge has a use left; the use is spent in the database transaction
    that records the request (NewScepTransaction.spends_challenge): one conditional UPDATE, so one use
    goes to one request across workers and hosts, and a request cut off before it was recorded (a worker
    killed, the database gone) spends nothing and can be sent again.
    """

    def __init__(self, challenges: StoredChallenges, clock: Clock = utcnow) -> None:
        self.challenges = challenges
        self.clock = clock

    def validate(self, request: ChallengeRequest) -> ChallengeAccepted:
        if request.challenge_password is None:
            log.info("SCEP transaction %s: no challenge password", request.transaction_id)
            raise Unauthorized(REFUSED, detail="no challenge password")
        digest = challenge_sha256(request.challenge_password)
        now = self.clock()
        record = self.challenges.usable_challenge(
            digest, now, profile=request.profile, device_id=request.device_id, subject=request.subject
        )
        if record is None:
            cause = _why_not_accepted(self.challenges.challenge(digest), request, now)
            log.info("SCEP transaction %s: one-time challenge refused: %s", request.transaction_id, cause)
            raise Unauthorized(REFUSED, detail=f"one-time challenge refused: {cause}")
        log.info("SCEP transaction %s: one-time challenge %d accepted", request.transaction_id, record.id)
        return ChallengeAccepted(ChallengeKind.ONE_TIME, challenge_id=record.id, device_id=record.device_id)


def _why_not_accepted(record: ChallengeRecord | None, request: ChallengeRequest, now: dt.datetime) -> str:
    """The log's explanation of a refused one-time challenge (never sent to the client)."""
    if record is None:
        return "unknown challenge"
    if record.expires_at <= now:
        return f"challenge {record.id} expired at {record.expires_at.isoformat()}"
    if record.uses_left <= 0:
        return f"challenge {record.id} has no use left"
    if record.profile != request.profile:
        return f"challenge {record.id} is for profile {record.profile!r}, not {request.profile!r}"
    if record.device_id is not None and record.device_id != request.device_id:
        return f"challenge {record.id} is for device {record.device_id!r}, not {request.device_id!r}"
    if record.expected_subject is not None and record.expected_subject != request.subject:
        return f"challenge {record.id} expects subject {record.expected_subject!r}, not {request.subject!r}"
    return f"challenge {record.id} was spent concurrently"


def new_one_time_challenge(
    challenges: ChallengeWriter,
    device_id: str | None,
    profile: str,
    ttl: dt.timedelta,
    uses: int = 1,
    expected_subject: str | None = None,
    *,
    created_by: str,
    now: dt.datetime,
    secret: str | None = None,
) -> str:
    """Create a one-time challenge and return its secret; only the secret's hash is stored.

    192 random bits as 48 hex digits unless `secret` is given: hex fits a PrintableString
    challengePassword, which the '_' of URL-safe base64 does not, so strict clients can carry it.
    """
    if secret is None:
        secret = secrets.token_hex(24)
    challenges.create_challenge(
        challenge_sha256(secret),
        device_id=device_id,
        profile=profile,
        expires_at=now + ttl,
        created_by=created_by,
        now=now,
        uses=uses,
        expected_subject=expected_subject,
    )
    return secret


def ndes_style_secret() -> str:
    """A challenge shaped like NDES's: 32 upper-case hex digits (128 random bits).

    MDM connectors scrape the NDES page with patterns such as `<B> ([A-Z0-9]{16,32}) </B>`, so the
    NDES-compatible page hands out this shape rather than the longer default.
    """
    return secrets.token_hex(16).upper()


class _RefuseRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the signed request goes to the configured URL or nowhere."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class WebhookChallenge:
    """Asks an external service: POSTs signed JSON, reads {"allow": true|false}.

    Body: {"csr": base64 DER, "challenge": str|null, "transaction_id": str, "profile": str};
    header `X-Gateway-Signature: sha256=<hex HMAC-SHA256 of the body>`. Anything but a 2xx JSON
    object whose "allow" is a boolean (an error status, a redirect, a timeout, a refused
    connection, non-JSON) is ChallengeNotVerifiable: fail closed. Environment proxies are ignored.
    """

    MAX_REPLY_BYTES = 64 * 1024

    def __init__(
        self, url: str, hmac_key: bytes, timeout: float = 5.0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http:// or https://, not {url!r}")
        if not hmac_key:
            raise ValueError("the webhook needs an HMAC key")
        self.url = url
        self.timeout = timeout
        self._hmac_key = hmac_key
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _RefuseRedirect(), urllib.request.HTTPSHandler(context=ssl_context)
        )

    def __repr__(self) -> str:
        return f"WebhookChallenge({self.url!r}, <key>, timeout={self.timeout})"

    def signature(self, body: bytes) -> str:
        """The X-Gateway-Signature header value for `body`."""
        return "sha256=" + hmac.new(self._hmac_key, body, hashlib.sha256).hexdigest()

    def validate(self, request: ChallengeRequest) -> ChallengeAccepted:
        body = json.dumps(
            {
                "csr": base64.b64encode(request.csr_der).decode("ascii"),
                "challenge": request.challenge_password,
                "transaction_id": request.transaction_id,
                "profile": request.profile,
            },
            sort_keys=True,
        ).encode("utf-8")
        outgoing = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "X-Gateway-Signature": self.signature(body)},
        )
        try:
            allow, reason = self._ask(outgoing)
        except urllib.error.HTTPError as exc:
            exc.close()
            cause = f"webhook answered HTTP {exc.code}"
            log.warning("SCEP transaction %s: %s", request.transaction_id, cause)
            raise ChallengeNotVerifiable(REFUSED, detail=cause) from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            cause = f"webhook gave no verdict: {exc!r}"
            log.warning("SCEP transaction %s: %s", request.transaction_id, cause)
            raise ChallengeNotVerifiable(REFUSED, detail=cause) from exc
        if not allow:
            cause = f"webhook denied: {reason}" if reason else "webhook denied"
            log.info("SCEP transaction %s: %s", request.transaction_id, cause)
            raise Unauthorized(REFUSED, detail=cause)
        return ChallengeAccepted(ChallengeKind.WEBHOOK)

    def _ask(self, outgoing: urllib.request.Request) -> tuple[bool, str | None]:
        with self._opener.open(outgoing, timeout=self.timeout) as response:
            raw = response.read(self.MAX_REPLY_BYTES + 1)
        if len(raw) > self.MAX_REPLY_BYTES:
            raise ValueError("webhook reply is too large")
        reply = json.loads(raw)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if not isinstance(reply, dict) or not isinstance(reply.get("allow"), bool):
            raise ValueError('webhook reply is not a JSON object with a boolean "allow"')
        reason = reply.get("reason")
        return reply["allow"], reason if isinstance(reason, str) else None


class AnyOf:
    """Accepts what the first accepting validator accepts, tried in order (put spending ones last)."""

    def __init__(self, validators: Sequence[ChallengeValidator]) -> None:
        if not validators:
            raise ValueError("AnyOf needs at least one validator")
        self.validators = tuple(validators)

    def validate(self, request: ChallengeRequest) -> ChallengeAccepted:
        causes = []
        undecided = False
        for validator in self.validators:
            try:
                return validator.validate(request)
            except ChallengeNotVerifiable as exc:
                undecided = True
                causes.append(exc.detail)
            except Unauthorized as exc:
                causes.append(exc.detail)
        detail = "; ".join(causes)
        if undecided:  # one of them might have accepted: no verdict, not a wrong attempt
            raise ChallengeNotVerifiable(REFUSED, detail=detail)
        raise Unauthorized(REFUSED, detail=detail)
