"""The application factory: one Flask app for both listeners."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from gateway.config import GatewayConfig, load_config
from gateway.middleware import REQUEST_ID, GatewayMiddleware
from gateway.runtime import Gateway, GatewayLoader, open_gateway
from shared_ca.errors import CAError, ErrorKind, TooManyRequests, Unavailable

log = logging.getLogger("gateway.app")

HTTP_STATUS: dict[ErrorKind, int] = {
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
MAX_REQUEST_BYTES = 1024 * 1024
RETRY_AFTER_SECONDS = 5  # while the gateway cannot be opened


def config_from_environment() -> GatewayConfig:
    """The configuration named by GATEWAY_DATA_DIR / GATEWAY_CONFIG (what wsgi.py and workers use)."""
    data_dir = Path(os.environ.get("GATEWAY_DATA_DIR", "data"))
    config_file = os.environ.get("GATEWAY_CONFIG")
    return load_config(data_dir, Path(config_file) if config_file else None, require_file=not config_file)


def create_app(
    config: GatewayConfig | None = None, gateway: Gateway | None = None, *, loader: GatewayLoader | None = None
) -> Flask:
    """Build the WSGI app over a configured gateway: `gateway`, or one opened now from `config` (or the
    environment); with `loader`, opened on the first request and again after a failure (the gunicorn
    workers: they start, and answer 503, while the database is unreachable)."""
    if loader is None:
        loader = GatewayLoader.ready(gateway or open_gateway(config or config_from_environment()))
    config = loader.config
    app = Flask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.extensions["gateway_loader"] = loader

    from est import views as est_views
    from gateway import admin, dashboard, views
    from gateway.est_transport import est_connection_facts
    from scep import views as scep_views

    @app.before_request
    def _gateway_ready() -> Response | None:
        """Every endpoint but liveness and readiness needs the gateway open."""
        if request.endpoint in views.ANSWERED_WITHOUT_GATEWAY:
            return None
        try:
            opened = loader.get()
        except Unavailable as exc:
            log.warning("%s %s refused (503): %s", request.method, request.path, exc.detail)
            response = Response(exc.public_message + "\n", status=503, mimetype="text/plain")
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        if app.extensions.get("gateway") is not opened:
            app.extensions.update(gateway=opened, scep=opened.scep, est=opened.est)
        return None

    if loader.loaded is not None:
        app.extensions.update(gateway=loader.loaded, scep=loader.loaded.scep, est=loader.loaded.est)
    app.extensions["scep_default_profile"] = config["default_profile"]
    app.extensions["est_default_label"] = config["default_profile"]
    app.extensions["est_connection"] = est_connection_facts(config)
    app.register_blueprint(views.bp)
    app.register_blueprint(scep_views.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(dashboard.bp)
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
        response = Response(exc.public_message + "\n", status=status, mimetype="text/plain")
        if isinstance(exc, Unavailable | TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after or RETRY_AFTER_SECONDS)
        return response

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
    app.wsgi_app = GatewayMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, config.trusted_proxies, float(config["listen.body_timeout_seconds"])
    )
    return app
