"""One error vocabulary for the CA; each protocol maps an ErrorKind to its own wire reply once.

`public_message` is safe to show a client; `detail` is for the log only.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong, in protocol-neutral terms (see the error table in DESIGN.md)."""

    BAD_INPUT = "bad_input"  # undecodable request
    BAD_SIGNATURE = "bad_signature"  # readable, but a signature does not verify
    BAD_ALGORITHM = "bad_algorithm"  # algorithm or key type not allowed
    UNAUTHORIZED = "unauthorized"  # missing or wrong credentials
    POLICY = "policy"  # refused by the issuance policy
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_MANY_REQUESTS = "too_many_requests"  # a client over its rate limit (shared_ca.admission)
    UNAVAILABLE = "unavailable"  # our own fault: database down, key unavailable; or over capacity

    @property
    def http_status(self) -> int:
        """The HTTP status of this kind where a refusal is an HTTP status (EST, the gateway's endpoints)."""
        return _HTTP_STATUS[self]


_HTTP_STATUS = {
    ErrorKind.BAD_INPUT: 400,
    ErrorKind.BAD_SIGNATURE: 400,
    ErrorKind.BAD_ALGORITHM: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.POLICY: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.TOO_MANY_REQUESTS: 429,
    ErrorKind.UNAVAILABLE: 503,
}


class CAError(Exception):
    """Base of every refusal the CA raises."""

    kind: ErrorKind = ErrorKind.BAD_INPUT

    def __init__(self, public_message: str, *, detail: str | None = None) -> None:
        super().__init__(public_message)
        self.public_message = public_message
        self.detail = detail or public_message

    def __str__(self) -> str:
        return self.public_message

    def http_retry_after(self, default: int) -> int | None:
        """The Retry-After (seconds) of an HTTP answer to this error: an Unavailable's or a
        TooManyRequests' own, or `default` when it has none; None for every other error."""
        if isinstance(self, Unavailable | TooManyRequests):
            return self.retry_after or default
        return None


class InvalidRequest(CAError):
    kind = ErrorKind.BAD_INPUT


class BadSignature(CAError):
    kind = ErrorKind.BAD_SIGNATURE


class AlgorithmNotAllowed(CAError):
    kind = ErrorKind.BAD_ALGORITHM


class Unauthorized(CAError):
    kind = ErrorKind.UNAUTHORIZED


class PolicyDenied(CAError):
    kind = ErrorKind.POLICY


class NotFound(CAError):
    kind = ErrorKind.NOT_FOUND


class Conflict(CAError):
    kind = ErrorKind.CONFLICT


class TooManyRequests(CAError):
    """A client over its rate limit; `retry_after` seconds until it may try again."""

    kind = ErrorKind.TOO_MANY_REQUESTS

    def __init__(self, public_message: str, *, detail: str | None = None, retry_after: int) -> None:
        super().__init__(public_message, detail=detail)
        self.retry_after = retry_after


class Unavailable(CAError):
    """Our own fault, or the node at capacity: try again (after `retry_after` seconds, when known)."""

    kind = ErrorKind.UNAVAILABLE

    def __init__(self, public_message: str, *, detail: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(public_message, detail=detail)
        self.retry_after = retry_after


class KeyMaterialError(CAError):
    """A key or certificate file cannot be read, decrypted, or does not fit its partner."""

    kind = ErrorKind.UNAVAILABLE
