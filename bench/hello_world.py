"""A hello-world Flask app under exactly the gunicorn settings of `gateway serve`: bench/run's HTTP ceiling.

`python bench/hello_world.py http|https` is the twin of `python -m gateway.server http|https`: it
reads the same configuration from the environment (GATEWAY_DATA_DIR, GATEWAY_LISTEN_*; see
`gateway.server.child_environment`) and runs one gunicorn arbiter through a subclass of the
gateway's own `ListenerApplication`, so the gevent worker (gateway.worker: TLS, deadlines, the
per-address cap), listen.workers, keepalive, timeouts and the request-line limit are the gateway's
by construction. For the HTTPS listener the SSLContext is the gateway's too (`build_ssl_context`:
TLS >= 1.2, the data directory's server certificate, client certificates optional with our CA as the
accepted issuer), built once in the arbiter. Only the WSGI app differs:

- `GET /` answers `ok` (text/plain);
- `POST` to any path answers with the request body (echo, same content type).

No database, CA key or gateway state is opened: what this serves is the cost of gunicorn, TLS and
Flask alone on this machine.
"""

from __future__ import annotations

import ssl
import sys
from typing import Any

from cryptography import x509
from flask import Flask, Response, request

from gateway.app import config_from_environment
from gateway.logs import configure_logging
from gateway.server import ListenerApplication, build_ssl_context
from gateway.supervisor import LISTENERS


def create_hello_app() -> Flask:
    """The whole app: `GET /` → ok, `POST /<anything>` → the body back."""
    app = Flask("hello")

    @app.get("/")
    def index() -> Response:
        return Response(b"ok", mimetype="text/plain")

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def echo(path: str) -> Response:
        return Response(request.get_data(), content_type=request.content_type or "application/octet-stream")

    return app


class HelloApplication(ListenerApplication):
    """`ListenerApplication` with the hello-world app: same gunicorn configuration, same TLS context."""

    def _arbiter_ssl_context(self) -> ssl.SSLContext:
        """Built once in the arbiter before the fork, as the gateway's (no database here)."""
        config = self.gateway_config
        own_ca = x509.load_pem_x509_certificate((config.data_dir / "ca.pem").read_bytes())
        return build_ssl_context(config, [own_ca])  # a freshly initialised gateway trusts exactly its CA

    def _post_worker_init(self, _worker: Any) -> None:
        """The gateway starts its CRL timer here; the hello world has nothing to start."""

    def load_config(self) -> None:
        super().load_config()
        self.cfg.set("proc_name", f"hello-{self.listener}")

    def load(self) -> Any:
        return create_hello_app()


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in LISTENERS:
        sys.stderr.write("usage: python bench/hello_world.py http|https  (configuration from GATEWAY_* as serve)\n")
        sys.exit(2)
    config = config_from_environment()
    configure_logging(config["log.format"], config["log.level"])
    HelloApplication(sys.argv[1], config).run()


if __name__ == "__main__":
    main()
