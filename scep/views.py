"""SCEP over HTTP (RFC 8894 §4): the only Flask module of the SCEP package. Transport only.

Served on both listeners under every path legacy devices are configured with, so NDES-style and
older-server URLs can be pointed here by DNS alone. A CAError that reaches the view (no CertRep is
owed: the message cannot be read, or our own state) is answered by `_refused` with its HTTP status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, request

from scep.clients import ScepClient
from scep.service import ScepService
from scep.transport import (
    CA_RA_CERT_TYPE,
    NEXT_CA_CERT_TYPE,
    PKI_MESSAGE_TYPE,
    Operation,
    TransportError,
    capabilities_text,
    message_from_body,
    message_from_query,
    parse_operation,
)
from shared_ca.errors import CAError

log = logging.getLogger(__name__)
bp = Blueprint("scep", __name__)
DEFAULT = "__default__"
CLIENT_PATH_END = "pkiclient.exe"
RETRY_AFTER_SECONDS = 5  # when an Unavailable does not say
# What the gateway's WSGI middleware puts in the environ (gateway.middleware).
CLIENT_ADDRESS = "gateway.client_address"
LOOP_LAG = "gateway.loop_lag"
REQUEST_ID = "gateway.request_id"


@dataclass(frozen=True)
class ScepExtension:
    """app.extensions["scep"]: the worker's service (opened on first use) and the profile of /scep."""

    service: Callable[[], ScepService]
    default_profile: str


def init_app(app: Flask, service: Callable[[], ScepService], *, default_profile: str) -> None:
    """Serve SCEP on `app`: the blueprint, its error handler, and app.extensions["scep"]."""
    app.extensions["scep"] = ScepExtension(service, default_profile)
    app.register_blueprint(bp)


def _extension() -> ScepExtension:
    found: ScepExtension = current_app.extensions["scep"]
    return found


def _text(status: int, text: str, *, retry_after: int | None = None) -> Response:
    """The one plain-text answer of the blueprint (refusals before a CertRep is owed)."""
    response = Response(text + "\n", status=status, mimetype="text/plain")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@bp.errorhandler(CAError)
def _refused(exc: CAError) -> Response:
    status, request_id = exc.kind.http_status, request.environ.get(REQUEST_ID)
    log.warning(
        "%s %s refused (%s): %s", request.method, request.path, status, exc.detail, extra={"request_id": request_id}
    )
    return _text(status, exc.public_message, retry_after=exc.http_retry_after(RETRY_AFTER_SECONDS))


def _handle(profile_name: str) -> Response:
    scep = _extension()
    service = scep.service()
    profile = service.profile(scep.default_profile if profile_name == DEFAULT else profile_name)
    if profile is None:
        return _text(404, "unknown SCEP profile")
    try:
        operation = parse_operation(request.args.get("operation"))
        if operation is Operation.GET_CA_CAPS:
            return Response(capabilities_text(service.capabilities(profile)), mimetype="text/plain")
        if operation is Operation.GET_CA_CERT:
            return Response(service.ca_certificates(), mimetype=CA_RA_CERT_TYPE)
        if operation is Operation.GET_NEXT_CA_CERT:
            next_ca = service.next_ca_certificates()
            if next_ca is None:
                return _text(404, "no next CA certificate is configured")
            return Response(next_ca, mimetype=NEXT_CA_CERT_TYPE)
        if request.method == "POST":
            message = message_from_body(request.get_data(cache=False))
        else:
            message = message_from_query(request.args.get("message"))
    except TransportError as exc:
        log.info("SCEP request refused: %s", exc)
        return _text(400, str(exc))
    client = ScepClient(
        request.environ.get(CLIENT_ADDRESS, request.remote_addr),
        request.headers.get("User-Agent"),
        float(request.environ.get(LOOP_LAG, 0.0)),
        path=request.path,
        method=request.method,
        http_version=request.environ.get("SERVER_PROTOCOL"),
        content_type=request.headers.get("Content-Type"),
    )
    return Response(service.pki_operation(message, profile, client), mimetype=PKI_MESSAGE_TYPE)


_METHODS = ["GET", "POST"]


@bp.route("/scep", methods=_METHODS)
@bp.route("/scep/", methods=_METHODS)
@bp.route("/cgi-bin/pkiclient.exe", methods=_METHODS)
@bp.route("/certsrv/mscep/mscep.dll", methods=_METHODS)
@bp.route("/certsrv/mscep/mscep.dll/", methods=_METHODS)
@bp.route("/certsrv/mscep/mscep.dll/pkiclient.exe", methods=_METHODS)
def scep_default() -> Response:
    return _handle(DEFAULT)


@bp.route("/scep/<name>", methods=_METHODS)
@bp.route("/scep/<name>/", methods=_METHODS)
def scep_profile(name: str) -> Response:
    return _handle(DEFAULT if name == CLIENT_PATH_END else name)


@bp.route("/scep/<name>/<path:rest>", methods=_METHODS)
def scep_profile_client_path(name: str, rest: str) -> Response:
    """Any further path ending in pkiclient.exe, as clients append it to the configured URL."""
    if not rest.endswith(CLIENT_PATH_END):
        return _text(404, "not a SCEP path")
    return _handle(name)
