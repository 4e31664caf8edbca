"""What the admin API (gateway.admin) and the migration dashboard (gateway.dashboard) share: their
refusal and its one renderer, the HTTPS-only rule of the admin paths, and the admin-token check."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping

from flask import Response, abort, request

from gateway.middleware import CLIENT_ADDRESS, LISTENER, REQUEST_ID
from gateway.runtime import Gateway
from shared_ca.authority import utcnow
from shared_ca.storage.admin import ADMIN_SCOPE, AdminTokenRecord, AdminTokenUse

log = logging.getLogger("gateway.admin")
BEARER_REALM = 'Bearer realm="gateway admin API"'
ADMIN_PREFIXES = ("/admin/", "/certsrv/mscep_admin")
"""The paths of the admin API and the dashboard, none of which exists on the plain-HTTP listener."""


class AdminRefusal(Exception):
    """A refusal of the admin API or the dashboard: `status`, `headers` and `public_message` go to the
    client, `detail` to the log only."""

    def __init__(
        self, status: int, public_message: str, *, detail: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail or public_message)
        self.status = status
        self.public_message = public_message
        self.detail = detail or public_message
        self.headers = dict(headers or {})


UnauthorizedRefusal = Callable[[str], AdminRefusal]
"""The 401 refusal of an endpoint (with its WWW-Authenticate challenge), given the detail to log."""


def refusal_response(
    exc: AdminRefusal, logger: logging.Logger, extra_headers: Mapping[str, str] | None = None
) -> Response:
    """Log the refusal's detail; answer its status with one line of text and its headers."""
    logger.warning(
        "%s %s refused (%d): %s",
        request.method,
        request.path,
        exc.status,
        exc.detail,
        extra={"request_id": request.environ.get(REQUEST_ID), "client": request.environ.get(CLIENT_ADDRESS)},
    )
    response = Response(exc.public_message + "\n", status=exc.status, mimetype="text/plain")
    response.headers.update(exc.headers)
    response.headers.update(extra_headers or {})
    return response


def https_only() -> None:
    """Before an admin path is served: it does not exist on the plain-HTTP listener (404, logged)."""
    if request.environ.get(LISTENER) != "https":
        log.warning(
            "%s %s refused (404): admin path requested on the %s listener",
            request.method,
            request.path,
            request.environ.get(LISTENER),
            extra={"request_id": request.environ.get(REQUEST_ID), "client": request.environ.get(CLIENT_ADDRESS)},
        )
        abort(404)


def unrouted_https_only() -> None:
    """Before a request routing did not match (unknown path, wrong method, slash redirect): one for an
    admin path is a 404 on plain HTTP too, not a 405 or a redirect. Routed requests pass untouched."""
    if request.routing_exception is not None and request.path.startswith(ADMIN_PREFIXES):
        https_only()


def check_admin_token(
    gateway: Gateway, token: str, *, unauthorized: UnauthorizedRefusal, expected_name: str | None = None
) -> AdminTokenRecord:
    """The enabled admin token `token` with the admin scope (and the name `expected_name`, when given):
    `unauthorized` for an unknown, disabled or misnamed token, 403 for a token without the scope."""
    tokens = gateway.storage.admin_tokens
    use = AdminTokenUse(request.method, request.path, request.environ.get(CLIENT_ADDRESS))
    record = tokens.authenticate_admin_token(token, utcnow(), use=use)  # audited: admin_token.used
    if record is None:
        known = tokens.admin_token_for_secret(token)
        raise unauthorized(f"admin token {known.name!r} is disabled" if known is not None else "unknown admin token")
    if expected_name is not None and not hmac.compare_digest(record.name.encode(), expected_name.encode()):
        raise unauthorized(f"the token of {record.name!r} was presented with user name {expected_name!r}")
    if ADMIN_SCOPE not in record.scopes:
        raise AdminRefusal(403, "forbidden", detail=f"admin token {record.name!r} lacks the {ADMIN_SCOPE!r} scope")
    return record
