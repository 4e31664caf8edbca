"""SCEP over HTTP (RFC 8894 §4): the only Flask module of the SCEP package. Transport only.

Served on both listeners under every path legacy devices are configured with, so NDES-style and
older-server URLs can be pointed here by DNS alone.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, request

from scep.service import (
    CA_RA_CERT_TYPE,
    NEXT_CA_CERT_TYPE,
    PKI_MESSAGE_TYPE,
    ScepClient,
    ScepService,
    capabilities,
)
from scep.transport import (
    Operation,
    TransportError,
    capabilities_text,
    message_from_body,
    message_from_query,
    parse_operation,
)

log = logging.getLogger("scep.views")
bp = Blueprint("scep", __name__)
DEFAULT = "__default__"
CLIENT_PATH_END = "pkiclient.exe"


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status=status, mimetype="text/plain")


def _service() -> ScepService:
    service: ScepService = current_app.extensions["scep"]
    return service


def _handle(profile_name: str) -> Response:
    service = _service()
    if profile_name == DEFAULT:
        profile_name = current_app.extensions["scep_default_profile"]
    profile = service.profiles.get(profile_name)
    if profile is None or not profile.served_over("scep"):
        # A profile SCEP does not serve (tls-server unless configured) does not exist here.
        log.info("SCEP request for %s profile %r", "unknown" if profile is None else "unserved", profile_name)
        return _plain(404, "unknown SCEP profile")
    try:
        operation = parse_operation(request.args.get("operation"))
        if operation is Operation.GET_CA_CAPS:
            caps = capabilities(profile, next_ca=service.next_ca_reply is not None)
            return Response(capabilities_text(caps), mimetype="text/plain")
        if operation is Operation.GET_CA_CERT:
            return Response(service.ca_ra_certs, mimetype=CA_RA_CERT_TYPE)
        if operation is Operation.GET_NEXT_CA_CERT:
            if service.next_ca_reply is None:
                return _plain(404, "no next CA certificate is configured")
            return Response(service.next_ca_reply, mimetype=NEXT_CA_CERT_TYPE)
        if request.method == "POST":
            message = message_from_body(request.get_data(cache=False))
        else:
            message = message_from_query(request.args.get("message"))
    except TransportError as exc:
        log.info("SCEP request refused: %s", exc)
        return _plain(400, str(exc))
    client = ScepClient(
        request.environ.get("gateway.client_address", request.remote_addr),
        request.headers.get("User-Agent"),
        float(request.environ.get("gateway.loop_lag", 0.0)),  # gateway.middleware.LOOP_LAG
        path=request.path,
        method=request.method,
        http_version=request.environ.get("SERVER_PROTOCOL"),
        content_type=request.headers.get("Content-Type"),
    )
    reply = service.pki_operation(message, profile, client)
    return Response(reply, mimetype=PKI_MESSAGE_TYPE)


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
        return _plain(404, "not a SCEP path")
    return _handle(name)
