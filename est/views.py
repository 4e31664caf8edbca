"""EST over HTTPS (RFC 7030 §3.2.2): the only Flask module of the EST package. Transport only.

`/.well-known/est/<operation>` serves the default profile; `/.well-known/est/<label>/<operation>`
the profile named by the label. An unknown label is a 404 and never falls back to the default.
EST is served over HTTPS only (a request on plain HTTP is a 404): the client's connection, or
a trusted TLS-terminating proxy that says the client used HTTPS. What the connection says about
the client (TLS facts, client certificate, proxy headers) is read by the `est_connection` callable
the application provides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, request

from est.auth import BASIC_REALM
from est.service import EstConnection, EstReply, EstService
from est.wire import MAX_REQUEST_BODY
from shared_ca.errors import CAError, ErrorKind, TooManyRequests, Unavailable

log = logging.getLogger("est.views")
bp = Blueprint("est", __name__)

ConnectionFacts = Callable[[dict[str, Any]], EstConnection | None]
"""Given the WSGI environ: the connection's facts, or None when EST must not be served on it."""

_STATUS = {
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
DEFAULT_RETRY_AFTER = 30  # seconds, for a 503 that does not say (a database outage)
_GET_OPERATIONS = frozenset({"cacerts", "csrattrs"})
_POST_OPERATIONS = frozenset({"simpleenroll", "simplereenroll", "serverkeygen", "fullcmc"})
_OPERATIONS = _GET_OPERATIONS | _POST_OPERATIONS


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    response = Response(text + "\n", status=status, mimetype="text/plain")
    response.headers.update(headers or {})
    return response


def _reply(reply: EstReply) -> Response:
    headers = [("Content-Type", reply.content_type)]
    if reply.base64:
        headers.append(("Content-Transfer-Encoding", "base64"))  # RFC 8951 §3.2: for older clients
    headers.extend(reply.headers)
    return Response(reply.body, status=reply.status, headers=headers)


def _transport_refusal(service: EstService, name: str, operation: str) -> tuple[int, str, dict[str, str]] | None:
    """What the transport refuses before an operation runs: (status, text, headers), or None."""
    if operation not in _OPERATIONS:
        return 404, "unknown EST operation", {}
    allowed = "GET" if operation in _GET_OPERATIONS else "POST"
    if request.method != allowed:
        return 405, "method not allowed", {"Allow": allowed}
    if name not in service.profiles or not service.profiles[name].served_over("est"):
        return 404, "unknown EST label", {}  # a profile EST does not serve (tls-server unless configured)
    if (request.content_length or 0) > MAX_REQUEST_BODY:
        return 413, "request body too large", {}
    return None


def _handle(label: str | None, operation: str) -> Response:
    service: EstService = current_app.extensions["est"]
    facts: ConnectionFacts = current_app.extensions["est_connection"]
    connection = facts(request.environ)
    if connection is None:
        return _plain(404, "not found")
    name = label if label is not None else current_app.extensions["est_default_label"]
    refusal = _transport_refusal(service, name, operation)
    if refusal is not None:
        status, text, headers = refusal
        log.info("EST %s %s refused (%d): %s", name, operation, status, text)
        service.refused_in_transport(operation, name, connection, f"{status} {text}")
        return _plain(status, text, headers)
    profile = service.profiles[name]
    body = request.get_data(cache=False) if request.method == "POST" else b""
    content_type = request.headers.get("Content-Type")
    try:
        if operation == "cacerts":
            return _reply(service.cacerts(profile, connection))
        if operation == "csrattrs":
            return _reply(service.csrattrs(profile, connection))
        if operation == "simpleenroll":
            return _reply(service.simpleenroll(profile, connection, body, content_type))
        if operation == "simplereenroll":
            return _reply(service.simplereenroll(profile, connection, body, content_type))
        if operation == "serverkeygen":
            return _reply(service.serverkeygen(profile, connection, body, content_type))
        return _reply(service.fullcmc(profile, connection, body, content_type))
    except CAError as exc:
        status = _STATUS[exc.kind]
        log.warning(
            "EST %s %s refused (%d): %s",
            name,
            operation,
            status,
            exc.detail,
            extra={"client": connection.client_address},
        )
        headers = {"WWW-Authenticate": BASIC_REALM} if status == 401 else {}
        if isinstance(exc, Unavailable | TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after or DEFAULT_RETRY_AFTER)
        return _plain(status, exc.public_message, headers)


_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


@bp.route("/.well-known/est/<operation>", methods=_METHODS)
def default_label(operation: str) -> Response:
    return _handle(None, operation)


@bp.route("/.well-known/est/<label>/<operation>", methods=_METHODS)
def labelled(label: str, operation: str) -> Response:
    return _handle(label, operation)
