"""Endpoints of the CA itself on both listeners: health, CRLs, OCSP, CA certificates."""

from __future__ import annotations

import base64
import binascii
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.ocsp import OCSPResponseStatus
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from gateway.config import parse_hostport
from gateway.middleware import LISTENER
from gateway.runtime import Gateway
from shared_ca.errors import KeyMaterialError, NotFound, Unavailable
from shared_ca.keys import certificates_pem
from shared_ca.kms import TokenKey
from shared_ca.ocsp import unsuccessful

log = logging.getLogger("gateway.ca")
bp = Blueprint("ca", __name__)
OCSP_MAX_REQUEST = 16 * 1024
LISTENER_CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class CaEndpoints:
    """The CA endpoints' state in a Flask app (`app.extensions["ca"]`)."""

    gateway: Callable[[], Gateway]  # the gateway open now; Unavailable while it cannot be opened
    listeners: Mapping[str, str]  # listener name ("http", "https") → the host:port it listens on


def init_app(app: Flask, gateway: Callable[[], Gateway], *, listeners: Mapping[str, str]) -> None:
    """Serve the CA's own endpoints from `app`, over the gateway `gateway()` returns; readiness checks
    that each of `listeners` accepts connections."""
    app.extensions["ca"] = CaEndpoints(gateway, listeners)
    app.register_blueprint(bp)


def _endpoints() -> CaEndpoints:
    found: CaEndpoints = current_app.extensions["ca"]
    return found


def _gateway() -> Gateway:
    return _endpoints().gateway()


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers. It does not touch the database (a load balancer should not
    restart a node because its database is away; /readyz says whether to send it traffic)."""
    return jsonify({"status": "alive", "listener": request.environ.get(LISTENER)})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: the gateway is open (its keys loaded), its database answers a read and would take a
    write (a read-only SQLite file or a PostgreSQL in recovery is not ready), and both listeners accept
    connections. 503 with a JSON reason when any fails."""
    endpoints = _endpoints()
    checks: dict[str, str] = {}
    try:
        gw = endpoints.gateway()
    except Unavailable as exc:
        log.warning("readiness: gateway not open: %s", exc.detail)
        checks["keys"] = checks["database"] = "not loaded: the database did not answer"
    except KeyMaterialError as exc:  # a key token missing or refusing the PIN when the worker opened
        log.warning("readiness: gateway not open: %s", exc.detail)
        checks["keys"] = "not loaded: a key could not be loaded"
        checks["database"] = "not checked"
    else:
        checks["keys"] = _token_state(gw)
        checks["database"] = _database_state(gw)
    for listener, hostport in endpoints.listeners.items():
        checks[f"listener_{listener}"] = _listener_state(hostport)
    failed = {name: state for name, state in checks.items() if state != "ok"}
    body: dict[str, object] = {"status": "ready" if not failed else "not ready", "checks": checks}
    if failed:
        body["reason"] = "; ".join(f"{name}: {state}" for name, state in failed.items())
    response = jsonify(body)
    if failed:
        response.status_code = 503
        response.headers["Retry-After"] = "5"
    return response


ANSWERED_WITHOUT_GATEWAY = frozenset({"ca.healthz", "ca.readyz"})
"""Endpoints the app answers while the gateway cannot be opened (gateway.app)."""


def _token_state(gw: Gateway) -> str:
    """'ok', or 'token unavailable' when a key in a PKCS#11 token (shared_ca.kms) does not sign a probe:
    the token removed, the session lost and not reopened, the PIN changed."""
    for key in (gw.authority.key, gw.ra_key):
        if isinstance(key, TokenKey):
            try:
                key.probe()
            except Unavailable as exc:
                log.warning("readiness: %s does not sign: %s", key.reference, exc.detail)
                return "token unavailable"
    return "ok"


def _database_state(gw: Gateway) -> str:
    try:
        gw.storage.db.ping()
    except Unavailable as exc:
        log.warning("readiness: database read failed: %s", exc.detail)
        return "unreachable"
    try:
        gw.storage.db.check_writable()
    except Unavailable as exc:
        log.warning("readiness: database write check failed: %s", exc.detail)
        return "read-only" if _says_read_only(exc.detail) else "not writable"
    return "ok"


def _says_read_only(detail: str) -> bool:
    lowered = detail.lower()
    return any(marker in lowered for marker in ("readonly", "read-only", "read only", "recovery"))


def _listener_state(hostport: str) -> str:
    host, port = parse_hostport(hostport)
    if host in ("0.0.0.0", "::"):  # noqa: S104 - reading the configuration, not binding
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # noqa: S104
    try:
        with socket.create_connection((host, port), timeout=LISTENER_CHECK_SECONDS):
            return "ok"
    except OSError as exc:
        log.warning("readiness: listener %s does not accept connections: %s", hostport, exc)
        return "not accepting connections"


def _crl_der(name: str) -> bytes:
    """The CRL of the issuing CA, or of a CA a rollover replaced (until it is retired)."""
    publisher = _gateway().crl_publisher(name)
    if publisher is None:
        raise NotFound(f"no CRL for issuer {name!r}")
    return publisher.current(actor="crl-endpoint").der


@bp.get("/crl/<name>.crl")
def crl_der(name: str) -> Response:
    response = Response(_crl_der(name), mimetype="application/pkix-crl")
    response.headers["Cache-Control"] = "max-age=300"
    return response


@bp.get("/crl/<name>.pem")
def crl_pem(name: str) -> Response:
    der = _crl_der(name)
    pem = x509.load_der_x509_crl(der).public_bytes(Encoding.PEM)
    return Response(pem, mimetype="application/x-pem-file")


@bp.get("/ca.pem")
def ca_pem() -> Response:
    """The CA chain clients are told to trust."""
    return Response(certificates_pem(list(_gateway().authority.chain)), mimetype="application/x-pem-file")


@bp.get("/ca/<name>.crt")
def ca_der(name: str) -> Response:
    """The issuer certificate named in authorityInfoAccess caIssuers (DER, RFC 5280 §4.2.2.1): the issuing
    CA's, or a previous CA's (its certificates name it until they expire)."""
    gw = _gateway()
    authority = next((a for a in (gw.authority, *gw.previous) if a.name == name), None)
    if authority is None:
        raise NotFound(f"no issuer named {name!r}")
    return Response(authority.certificate.public_bytes(Encoding.DER), mimetype="application/pkix-cert")


def _ocsp_reply(request_der: bytes) -> Response:
    try:
        answer = _gateway().ocsp.respond(request_der)
    except Unavailable as exc:
        # RFC 6960 §2.3: tryLater, in the protocol's own form, while the store cannot answer.
        log.error("ocsp unavailable: %s", exc.detail)
        return Response(unsuccessful(OCSPResponseStatus.TRY_LATER), status=503, mimetype="application/ocsp-response")
    log.info("ocsp %s", answer.log)
    return Response(answer.der, status=answer.http_status, mimetype="application/ocsp-response")


def _malformed(reason: str) -> Response:
    log.info("ocsp refused: %s", reason)
    return Response(
        unsuccessful(OCSPResponseStatus.MALFORMED_REQUEST), status=400, mimetype="application/ocsp-response"
    )


@bp.post("/ocsp")
def ocsp_post() -> Response:
    if request.content_length is not None and request.content_length > OCSP_MAX_REQUEST:
        return _malformed(f"request of {request.content_length} bytes is too large")
    body = request.get_data(cache=False)
    if len(body) > OCSP_MAX_REQUEST or not body:
        return _malformed("empty or oversized request body")
    return _ocsp_reply(body)


@bp.get("/ocsp/<path:encoded>")
def ocsp_get(encoded: str) -> Response:
    """RFC 6960 Appendix A.1: GET {url}/{url-encoding of base64 encoding of the DER request}."""
    text = unquote(encoded).replace(" ", "+")
    if len(text) > OCSP_MAX_REQUEST:
        return _malformed("request URL too long")
    try:
        der = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return _malformed("the URL does not carry base64")
    return _ocsp_reply(der)
