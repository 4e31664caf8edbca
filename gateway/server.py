"""`gateway serve`: two gunicorn arbiters (plain HTTP and TLS) started and stopped together.

gunicorn applies one TLS setting to all of its binds, so each listener is its own arbiter, run in
its own process by `python -m gateway.server LISTENER`. The parent supervises both: a signal to the
parent stops both; one arbiter dying stops the other.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from gateway.app import config_from_environment, create_app
from gateway.config import GatewayConfig
from gateway.logs import GunicornLogger, configure_logging
from gateway.runtime import Gateway, key_passphrase, open_gateway
from shared_ca.errors import CAError
from shared_ca.keys import certificates_pem

log = logging.getLogger("gateway.server")
LISTENERS = ("http", "https")
CRL_CHECK_SECONDS = 60
MAX_REQUEST_LINE = 8190  # gunicorn's largest bounded request line (its default is 4094)
X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL's flag; Python's ssl.VerifyFlags does not name it


def build_ssl_context(gateway: Gateway) -> ssl.SSLContext:
    """The HTTPS listener's context: TLS >= 1.2, optional client certificates from every trusted issuer."""
    config = gateway.config
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if config["tls.min_version"] == "1.3" else ssl.TLSVersion.TLSv1_2
    passphrase = key_passphrase(config)
    context.load_cert_chain(str(config.path("tls.cert")), str(config.path("tls.key")), password=passphrase)
    linking = sorted(name for name, profile in config.profiles.items() if profile.est_pop_linking)
    if linking:
        # RFC 7030 §3.5 binds the CSR to tls-unique, which TLS 1.3 does not define (RFC 9266 §3), and
        # Python's ssl has no keying-material export for tls-exporter: this listener stays on TLS 1.2.
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        log.info("HTTPS listener limited to TLS 1.2: profiles %s bind CSRs to tls-unique", ", ".join(linking))
    if config["tls.client_certificates"] == "optional":
        context.verify_mode = ssl.CERT_OPTIONAL
        trusted = gateway.trusted_client_issuers(dt.datetime.now(dt.UTC))
        context.load_verify_locations(cadata=certificates_pem(trusted).decode("ascii"))
        # The handshake checks the chain; validity in time, revocation and whether the certificate is
        # one we know are checked per request (shared_ca.trust), so an expired or revoked certificate
        # gets a clear 403 and an enrollment event instead of a bare TLS alert.
        context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    else:
        context.verify_mode = ssl.CERT_NONE
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def start_crl_timer(gateway: Gateway, stop: threading.Event) -> threading.Thread:
    """Publish the CRL when it is due (refresh interval or revocations), checked about once a minute."""

    def _run() -> None:
        while not stop.wait(CRL_CHECK_SECONDS * random.uniform(0.8, 1.2)):  # noqa: S311 - jitter only
            try:
                gateway.crl.current(actor="crl-timer")
            except CAError as exc:
                log.error("CRL publication failed: %s", exc.detail)
            except Exception:
                log.exception("CRL publication failed")

    thread = threading.Thread(target=_run, name="crl-timer", daemon=True)
    thread.start()
    return thread


class ListenerApplication(BaseApplication):  # type: ignore[misc]
    """One gunicorn arbiter serving the gateway app on one listener."""

    def __init__(self, listener: str, config: GatewayConfig) -> None:
        self.listener = listener
        self.gateway_config = config
        self._gateway: Gateway | None = None
        self._context: ssl.SSLContext | None = None
        super().__init__()

    def _loaded(self) -> Gateway:
        if self._gateway is None:
            self._gateway = open_gateway(self.gateway_config)
        return self._gateway

    def _ssl_context(self, _conf: Any, _default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        # gunicorn calls this for every connection: hand out the one built by the arbiter.
        if self._context is None:  # not built before the fork (cannot happen under load_config)
            self._context = build_ssl_context(self._loaded())
        return self._context

    def _arbiter_ssl_context(self) -> ssl.SSLContext:
        """The HTTPS context, built once in the arbiter before it forks its workers: every worker then
        holds the same session-ticket key, so a client resumes its TLS session whichever worker its
        next connection lands on (one context per worker resumed about one connection in three)."""
        gateway = open_gateway(self.gateway_config)
        try:
            return build_ssl_context(gateway)
        finally:
            gateway.store.engine.dispose()  # no database connection may cross the fork

    def _post_worker_init(self, _worker: Any) -> None:
        if self.listener == "https":
            start_crl_timer(self._loaded(), threading.Event())

    def load_config(self) -> None:
        config = self.gateway_config
        cfg = self.cfg
        cfg.set("bind", [config[f"listen.{self.listener}"]])
        cfg.set("workers", config["listen.workers"])
        cfg.set("threads", config["listen.threads"])
        cfg.set("worker_class", "gthread")
        cfg.set("timeout", config["listen.timeout_seconds"])
        cfg.set("graceful_timeout", 10)
        cfg.set("keepalive", 15)
        # SCEP PKIOperation by GET carries the whole pkiMessage in the query: certmonger's renewals
        # signed by an issued certificate make request lines above gunicorn's default 4094 bytes.
        cfg.set("limit_request_line", MAX_REQUEST_LINE)
        # gunicorn believes X-Forwarded-Proto / X-Forwarded-Ssl from 127.0.0.1 by default and turns them
        # into wsgi.url_scheme. It trusts nobody here: the middleware decides the scheme and the client
        # address from the socket, or from the headers of listen.trusted_proxies (gateway.proxies).
        cfg.set("forwarded_allow_ips", "")  # an empty list: no peer may set forwarding headers
        cfg.set("secure_scheme_headers", {})  # and no header turns a request into HTTPS
        cfg.set("forwarder_headers", "")  # nor overrides SCRIPT_NAME / PATH_INFO
        cfg.set("proxy_allow_ips", "")  # PROXY protocol (off anyway) from nobody
        cfg.set("proc_name", f"gateway-{self.listener}")
        cfg.set("loglevel", config["log.level"])
        cfg.set("accesslog", None)
        cfg.set("errorlog", "-")
        cfg.set("logger_class", GunicornLogger)  # its lines through our handler: same format and escaping
        cfg.set("post_worker_init", self._post_worker_init)
        if "control_socket_disable" in cfg.settings:  # gunicorn >= 24: both arbiters would share one socket
            cfg.set("control_socket_disable", True)
        if self.listener == "https":
            self._context = self._arbiter_ssl_context()
            cfg.set("certfile", str(config.path("tls.cert")))
            cfg.set("keyfile", str(config.path("tls.key")))
            cfg.set("ssl_context", self._ssl_context)

    def load(self) -> Any:
        return create_app(gateway=self._loaded())


def run_listener(listener: str) -> None:
    """Entry of one arbiter process (`python -m gateway.server LISTENER`)."""
    config = config_from_environment()
    configure_logging(config["log.format"], config["log.level"])
    ListenerApplication(listener, config).run()


def serve(config: GatewayConfig, environ: dict[str, str], announce: Callable[[str], None]) -> int:
    """Start both arbiters, print where they listen, and supervise them until a signal or a death."""
    open_gateway(config).store.engine.dispose()  # fail here, in one line, rather than in every worker
    for notice in config.deprecations:
        log.warning("configuration: %s", notice)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stopping.set()

    # Handlers before the first child: a SIGTERM during start-up must stop the arbiters already started.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    base_http = f"http://{config['listen.http']}"
    base_https = f"https://{config['listen.https']}"
    exit_code = 0
    try:
        for listener in LISTENERS:
            children[listener] = subprocess.Popen([sys.executable, "-m", "gateway.server", listener], env=environ)
        announce(f"SCEP   {base_http}/scep  and  {base_https}/scep")
        announce(f"EST    {base_https}/.well-known/est")
        announce(f"health {base_http}/healthz  and  {base_https}/healthz")
        announce(f"CRL    {base_http}/crl/{config['ca.name']}.crl   OCSP {base_http}/ocsp")
        announce(f"CA certificate (trust this): {config.data_dir / 'ca.pem'}  (also {base_http}/ca.pem)")
        while not stopping.is_set():
            for listener, child in children.items():
                code = child.poll()
                if code is not None:
                    log.error("the %s listener exited with status %s; stopping the other", listener, code)
                    exit_code = code or 1
                    stopping.set()
            stopping.wait(0.5)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code


def child_environment(config: GatewayConfig, base: dict[str, str]) -> dict[str, str]:
    """What an arbiter process needs to load the same configuration as the parent."""
    env = dict(base)
    env["GATEWAY_DATA_DIR"] = str(config.data_dir)
    if config.source is not None:
        env["GATEWAY_CONFIG"] = str(config.source)
    for key in ("listen.http", "listen.https", "listen.workers", "log.format", "log.level"):
        env["GATEWAY_" + key.replace(".", "_").upper()] = str(config[key])
    return env


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in LISTENERS:
        sys.stderr.write("usage: python -m gateway.server http|https\n")
        sys.exit(2)
    try:
        run_listener(sys.argv[1])
    except CAError as exc:
        sys.stderr.write(f"gateway: {exc.detail}\n")
        sys.exit(1)
    sys.exit(0)
