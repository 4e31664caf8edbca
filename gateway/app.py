"""The application factory: one Flask app for both listeners."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from gateway.config import GatewayConfig, load_config
from gateway.middleware import REQUEST_ID, GatewayMiddleware
from gateway.runtime import Gateway, open_gateway
from shared_ca.errors import CAError, ErrorKind

log = logging.getLogger("gateway.app")

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.BAD_INPUT: 400,
    ErrorKind.BAD_SIGNATURE: 400,
    ErrorKind.BAD_ALGORITHM: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.POLICY: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.UNAVAILABLE: 503,
}
MAX_REQUEST_BYTES = 1024 * 1024


def config_from_environment() -> GatewayConfig:
    """The configuration named by GATEWAY_DATA_DIR / GATEWAY_CONFIG (what wsgi.py and workers use)."""
    data_dir = Path(os.environ.get("GATEWAY_DATA_DIR", "data"))
    config_file = os.environ.get("GATEWAY_CONFIG")
    return load_config(data_dir, Path(config_file) if config_file else None, require_file=not config_file)


def create_app(config: GatewayConfig | None = None, gateway: Gateway | None = None) -> Flask:
    """Build the WSGI app over a configured gateway (loaded from the environment when not given)."""
    if gateway is None:
        gateway = open_gateway(config or config_from_environment())
    app = Flask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.extensions["gateway"] = gateway

    from est import views as est_views
    from gateway import admin, dashboard, views
    from gateway.est_transport import est_connection_facts
    from scep import views as scep_views

    app.extensions["scep"] = gateway.scep
    app.extensions["scep_default_profile"] = gateway.config["default_profile"]
    app.register_blueprint(views.bp)
    app.register_blueprint(scep_views.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(dashboard.bp)
    app.extensions["est"] = gateway.est
    app.extensions["est_default_label"] = gateway.config["default_profile"]
    app.extensions["est_connection"] = est_connection_facts(gateway.config)
    app.register_blueprint(est_views.bp)

    @app.errorhandler(CAError)
    def _ca_error(exc: CAError) -> Response:
        status = HTTP_STATUS[exc.kind]
        log.warning(
            "%s %s refused (%s): %s",
            request.method,
            request.path,
            status,
            exc.detail,
            extra={"request_id": request.environ.get(REQUEST_ID)},
        )
        return Response(exc.public_message + "\n", status=status, mimetype="text/plain")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = Response(f"{exc.name}\n", status=status, mimetype="text/plain")
        for name, value in exc.get_headers(request.environ):
            if name.lower() != "content-type":  # keep e.g. Allow on 405 (RFC 9110 §15.5.6: MUST)
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        request_id = request.environ.get(REQUEST_ID)
        log.exception("unexpected error in %s %s", request.method, request.path, extra={"request_id": request_id})
        return Response(f"internal error (request id {request_id})\n", status=500, mimetype="text/plain")

    # Scheme and client address come from the socket, or from the forwarding headers of trusted proxies.
    app.wsgi_app = GatewayMiddleware(app.wsgi_app, gateway.config.trusted_proxies)  # type: ignore[method-assign]
    return app
