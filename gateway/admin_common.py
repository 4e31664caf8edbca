"""What the admin API (gateway.admin) and the migration dashboard (gateway.dashboard) share: the
refusal they answer with, its error handler, and the admin-token check."""

from __future__ import annotations

import hmac
import logging

from flask import Response, current_app, request

from gateway.middleware import CLIENT_ADDRESS, REQUEST_ID
from gateway.runtime import Gateway
from shared_ca.authority import utcnow
from shared_ca.storage.admin import ADMIN_SCOPE, AdminTokenRecord, AdminTokenStore

BEARER_REALM = 'Bearer realm="gateway admin API"'


class Refused(Exception):
    """A refusal: `status` and `public` go to the client, `cause` to the log only."""

    def __init__(self, status: int, public: str, cause: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(cause or public)
        self.status, self.public, self.cause, self.headers = status, public, cause or public, headers or {}


def gateway() -> Gateway:
    found: Gateway = current_app.extensions["gateway"]
    return found


def refusal_response(exc: Refused, log: logging.Logger) -> Response:
    """Log the refusal's cause; answer its status with one line of text and its headers."""
    log.warning(
        "%s %s refused (%d): %s",
        request.method,
        request.path,
        exc.status,
        exc.cause,
        extra={"request_id": request.environ.get(REQUEST_ID), "client": request.environ.get(CLIENT_ADDRESS)},
    )
    response = Response(exc.public + "\n", status=exc.status, mimetype="text/plain")
    response.headers.update(exc.headers)
    return response


def check_admin_token(token: str, *, unauthorized: Refused, expected_name: str | None = None) -> AdminTokenRecord:
    """The enabled admin token `token` with the admin scope (and the name `expected_name`, when given):
    `unauthorized` (with the cause filled in) for an unknown, disabled or misnamed token, 403 for a
    token without the scope."""
    store = AdminTokenStore(gateway().store.engine)  # holds nothing but the shared engine
    record = store.authenticate_admin_token(token, utcnow())
    if record is None:
        known = store.admin_token_for_secret(token)
        cause = f"admin token {known.name!r} is disabled" if known is not None else "unknown admin token"
        raise Refused(unauthorized.status, unauthorized.public, cause, unauthorized.headers)
    if expected_name is not None and not hmac.compare_digest(record.name.encode(), expected_name.encode()):
        cause = f"the token of {record.name!r} was presented with user name {expected_name!r}"
        raise Refused(unauthorized.status, unauthorized.public, cause, unauthorized.headers)
    if ADMIN_SCOPE not in record.scopes:
        raise Refused(403, "forbidden", f"admin token {record.name!r} lacks the {ADMIN_SCOPE!r} scope")
    return record
