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
from shared_ca.errors import CAError, Unavailable

log = logging.getLogger("gateway.app")

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
    workers: they start, and answer 503, while the database is unreachable). The loader is the app's
    `gateway` extension; every blueprint obtains the gateway, or its protocol service, through it."""
    if loader is None:
        loader = GatewayLoader.ready(gateway or open_gateway(config or config_from_environment()))
    config = loader.config
    app = Flask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.extensions["gateway"] = loader

    from est import views as est_views
    from gateway import admin, dashboard, metrics_endpoint, views
    from gateway.est_transport import est_connection_facts
    from scep import views as scep_views

    @app.before_request  # registered first: it runs before the hook admin.init_app adds
    def _gateway_ready() -> Response | None:
        """Every endpoint but liveness, readiness and metrics needs the gateway open: 503 while it cannot be."""
        if request.endpoint in views.ANSWERED_WITHOUT_GATEWAY | metrics_endpoint.ANSWERED_WITHOUT_GATEWAY:
            return None
        try:
            loader.get()
        except Unavailable as exc:
            log.warning("%s %s refused (503): %s", request.method, request.path, exc.detail)
            response = Response(exc.public_message + "\n", status=503, mimetype="text/plain")
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        return None

    default_profile = str(config["default_profile"])
    views.init_app(app, loader.get, listeners={name: str(config[f"listen.{name}"]) for name in ("http", "https")})
    scep_views.init_app(app, lambda: loader.get().scep, default_profile=default_profile)
    admin.init_app(app, loader.get)
    dashboard.init_app(app, loader.get)
    metrics_endpoint.init_app(app, loader)  # /metrics, and the count and latency of every request
    est_views.init_app(
        app, lambda: loader.get().est, default_label=default_profile, connection=est_connection_facts(config)
    )
    app.register_error_handler(CAError, _ca_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    # Scheme and client address come from the socket, or from the forwarding headers of trusted proxies.
    app.wsgi_app = GatewayMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, config.trusted_proxies, float(config["listen.body_timeout_seconds"])
    )
    return app


def _ca_error(exc: CAError) -> Response:
    status, request_id = exc.kind.http_status, request.environ.get(REQUEST_ID)
    log.warning(
        "%s %s refused (%s): %s", request.method, request.path, status, exc.detail, extra={"request_id": request_id}
    )
    response = Response(exc.public_message + "\n", status=status, mimetype="text/plain")
    if (retry_after := exc.http_retry_after(RETRY_AFTER_SECONDS)) is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = Response(f"{exc.name}\n", status=status, mimetype="text/plain")
    for name, value in exc.get_headers(request.environ):
        if name.lower() != "content-type":  # keep e.g. Allow on 405 (RFC 9110 §15.5.6: MUST)
            response.headers[name] = value
    return response


def _unexpected(exc: Exception) -> Response:
    request_id = request.environ.get(REQUEST_ID)
    log.exception("unexpected error in %s %s", request.method, request.path, extra={"request_id": request_id})
    return Response(f"internal error (request id {request_id})\n", status=500, mimetype="text/plain")
