"""EST over HTTPS (RFC 7030 §3.2.2): the only Flask module of the EST package. Transport only.

`/.well-known/est/<operation>` serves the default profile; `/.well-known/est/<label>/<operation>`
the profile named by the label. An unknown label is a 404 and never falls back to the default.
EST is served over HTTPS only (a request on plain HTTP is a 404): the client's connection, or
a trusted TLS-terminating proxy that says the client used HTTPS. What the connection says about
the client (TLS facts, client certificate, proxy headers) is read by the `connection` callable
the application gives `init_app`.

Every CAError an operation raises is answered by the blueprint's one error handler, with the status of
its kind (shared_ca.errors.ErrorKind.http_status): 401 with WWW-Authenticate, 429 and 503 with
Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request

from est.auth import BASIC_REALM
from est.request import EstConnection, EstReply
from est.service import EstService
from est.wire import MAX_REQUEST_BODY
from shared_ca.errors import CAError
from shared_ca.profiles import Profile

log = logging.getLogger("est.views")
bp = Blueprint("est", __name__)

ConnectionFacts = Callable[[dict[str, Any]], EstConnection | None]
"""Given the WSGI environ: the connection's facts, or None when EST must not be served on it."""

DEFAULT_RETRY_AFTER = 30  # seconds, for a 503 that does not say (a database outage)
EXTENSION = "est"
_GET_OPERATIONS = frozenset({"cacerts", "csrattrs"})
_POST_OPERATIONS = frozenset({"simpleenroll", "simplereenroll", "serverkeygen", "fullcmc"})
_OPERATIONS = _GET_OPERATIONS | _POST_OPERATIONS


@dataclass(frozen=True)
class EstExtension:
    """What the EST blueprint needs from the application: `app.extensions["est"]`."""

    service: Callable[[], EstService]  # the worker's EstService (opened on demand by the application)
    default_label: str  # the label of /.well-known/est/<operation>
    connection: ConnectionFacts


def init_app(app: Flask, service: Callable[[], EstService], *, default_label: str, connection: ConnectionFacts) -> None:
    """Serve EST on `app`: the blueprint, its error handler and its extension."""
    app.extensions[EXTENSION] = EstExtension(service, default_label, connection)
    app.register_blueprint(bp)


def _text(status: int, public_message: str, headers: dict[str, str] | None = None) -> Response:
    """The plain-text answer of every EST refusal."""
    response = Response(public_message + "\n", status=status, mimetype="text/plain")
    response.headers.update(headers or {})
    return response


def _reply(reply: EstReply) -> Response:
    headers = [("Content-Type", reply.content_type)]
    if reply.base64:
        headers.append(("Content-Transfer-Encoding", "base64"))  # RFC 8951 §3.2: for older clients
    headers.extend(reply.headers)
    return Response(reply.body, status=reply.status, headers=headers)


def _transport_refusal(profile: Profile | None, operation: str) -> tuple[int, str, dict[str, str]] | None:
    """What the transport refuses before an operation runs: (status, public message, headers), or None."""
    if operation not in _OPERATIONS:
        return 404, "unknown EST operation", {}
    allowed = "GET" if operation in _GET_OPERATIONS else "POST"
    if request.method != allowed:
        return 405, "method not allowed", {"Allow": allowed}
    if profile is None:
        return 404, "unknown EST label", {}  # a profile EST does not serve (tls-server unless configured)
    if (request.content_length or 0) > MAX_REQUEST_BODY:
        return 413, "request body too large", {}
    return None


def _handle(label: str | None, operation: str) -> Response:
    est: EstExtension = current_app.extensions[EXTENSION]
    service = est.service()
    connection = est.connection(request.environ)
    if connection is None:
        return _text(404, "not found")
    g.est_connection = connection  # for the error handler's log line
    name = label if label is not None else est.default_label
    profile = service.profile(name)
    refusal = _transport_refusal(profile, operation)
    if refusal is not None:
        status, public_message, headers = refusal
        log.info("EST %s %s refused (%d): %s", name, operation, status, public_message)
        service.refused_in_transport(operation, name, connection, f"{status} {public_message}")
        return _text(status, public_message, headers)
    assert profile is not None
    if operation == "cacerts":
        return _reply(service.cacerts(profile, connection))
    if operation == "csrattrs":
        return _reply(service.csrattrs(profile, connection))
    body = request.get_data(cache=False)
    content_type = request.headers.get("Content-Type")
    if operation == "simpleenroll":
        return _reply(service.simpleenroll(profile, connection, body, content_type))
    if operation == "simplereenroll":
        return _reply(service.simplereenroll(profile, connection, body, content_type))
    if operation == "serverkeygen":
        return _reply(service.serverkeygen(profile, connection, body, content_type))
    return _reply(service.fullcmc(profile, connection, body, content_type))


@bp.errorhandler(CAError)
def _refused(exc: CAError) -> Response:
    """The one EST answer to a CAError: its kind's status, its public message; the detail goes to the log."""
    status = exc.kind.http_status
    arguments = request.view_args or {}
    est: EstExtension = current_app.extensions[EXTENSION]
    label = arguments.get("label") or est.default_label
    connection: EstConnection | None = g.get("est_connection")
    log.warning(
        "EST %s %s refused (%d): %s",
        label,
        arguments.get("operation"),
        status,
        exc.detail,
        extra={"client": connection.client_address if connection is not None else None},
    )
    headers = {"WWW-Authenticate": BASIC_REALM} if status == 401 else {}
    if (retry_after := exc.http_retry_after(DEFAULT_RETRY_AFTER)) is not None:
        headers["Retry-After"] = str(retry_after)
    return _text(status, exc.public_message, headers)


_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


@bp.route("/.well-known/est/<operation>", methods=_METHODS)
def default_label(operation: str) -> Response:
    return _handle(None, operation)


@bp.route("/.well-known/est/<label>/<operation>", methods=_METHODS)
def labelled(label: str, operation: str) -> Response:
    return _handle(label, operation)
