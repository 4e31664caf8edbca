"""One listener's gunicorn arbiter (`python -m gateway.server LISTENER`), started by gateway.supervisor.

The arbiter serves the gateway app with gateway.worker's gevent worker on the socket the supervisor
bound, builds the HTTPS listener's TLS context once before it forks (so every worker shares one
session-ticket key), and runs the CRL timer in each worker, and the watch that follows the issuers in the
database (a legacy CA imported, a CA rollover) without a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from gevent import ssl as gevent_ssl
from gunicorn.app.base import BaseApplication

from gateway.app import config_from_environment, create_app
from gateway.ca_slots import SLOTS, slot_certificate
from gateway.config import GatewayConfig
from gateway.housekeeping import purge_stale
from gateway.logs import GunicornLogger, capture_process_output, configure_logging
from gateway.metrics import worker_exited
from gateway.ra_renewal import renew_ra_if_due
from gateway.runtime import GatewayLoader, open_gateway
from gateway.supervisor import LISTEN_FD_ENV, LISTENERS
from gateway.tls_token import load_server_key
from gateway.worker import ConnectionLimits, server_tls_context
from shared_ca.admission import LAG_FLOOR_SECONDS
from shared_ca.approval import drain_deferred
from shared_ca.authority import fingerprint
from shared_ca.errors import CAError, Unavailable
from shared_ca.keys import certificates_pem
from shared_ca.kms import release_tokens

log = logging.getLogger("gateway.server")
CRL_CHECK_SECONDS = 60
HOUSEKEEPING_SECONDS = 3600
TRUST_CHECK_SECONDS = 5.0  # how often each worker looks whether the issuers in the database changed
MAX_REQUEST_LINE = 8190  # gunicorn's largest bounded request line (its default is 4094)
X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL's flag; Python's ssl.VerifyFlags does not name it


def build_ssl_context(config: GatewayConfig, trusted: list[x509.Certificate]) -> ssl.SSLContext:
    """The HTTPS listener's context: TLS >= 1.2, optional client certificates from the `trusted` issuers.

    A gevent context (the worker's greenlets do the handshakes) whose sockets send close_notify."""
    context = server_tls_context(gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if config["tls.min_version"] == "1.3" else ssl.TLSVersion.TLSv1_2
    load_server_key(context, config)  # a file, or a key in the token (gateway.tls_token)
    linking = sorted(name for name, profile in config.profiles.items() if profile.est_pop_linking)
    if linking:
        # RFC 7030 §3.5 binds the CSR to tls-unique, which TLS 1.3 does not define (RFC 9266 §3), and
        # Python's ssl has no keying-material export for tls-exporter: this listener stays on TLS 1.2.
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        log.info("HTTPS listener limited to TLS 1.2: profiles %s bind CSRs to tls-unique", ", ".join(linking))
    if config["tls.client_certificates"] == "optional":
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=certificates_pem(trusted).decode("ascii"))
        # The handshake checks the chain; validity in time, revocation and whether the certificate is
        # one we know are checked per request (shared_ca.trust), so an expired or revoked certificate
        # gets a clear 403 and an enrollment event instead of a bare TLS alert.
        context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    else:
        context.verify_mode = ssl.CERT_NONE
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def trusted_client_issuers(config: GatewayConfig) -> list[x509.Certificate]:
    """The issuers whose client certificates the HTTPS listener accepts: our CA and the legacy CAs in
    their window, from the database; our CAs alone (from their files: the issuing one and the other of
    a rollover) while the database does not answer."""
    try:
        gateway = open_gateway(config)
    except Unavailable as exc:
        log.warning(
            "HTTPS listener: the database is unavailable (%s); accepting client certificates of this CA only "
            "until the listener restarts with the database answering",
            exc.detail,
        )
        release_tokens()
        return [c for c in (slot_certificate(config, slot) for slot in SLOTS) if c is not None]
    try:
        return gateway.trusted_client_issuers(dt.datetime.now(dt.UTC))
    finally:
        gateway.storage.db.dispose()  # no database connection may cross the fork
        release_tokens()  # nor a token session: each worker logs in itself (shared_ca.kms)


def _every(
    seconds: float, jitter: float, stop: threading.Event, name: str, job: Callable[[], object]
) -> threading.Thread:
    """Run `job` about every `seconds` (± `jitter` of it, so the workers of a node spread out) in a
    daemon thread until `stop`; a failure is logged (a CAError by its cause) and the next round comes."""

    def _run() -> None:
        while not stop.wait(seconds * random.uniform(1 - jitter, 1 + jitter)):  # noqa: S311 - jitter only
            try:
                job()
            except CAError as exc:
                log.warning("%s: %s", name, exc.detail)
            except Exception:
                log.exception("%s failed", name)

    thread = threading.Thread(target=_run, name=name, daemon=True)
    thread.start()
    return thread


def start_crl_timer(loader: GatewayLoader, stop: threading.Event) -> threading.Thread:
    """Publish each CRL when it is due (refresh interval or revocations), checked about once a minute: the
    issuing CA's, and those of the CAs a rollover replaced until they are retired."""

    def _publish() -> None:
        gateway = loader.get()
        for publisher in (gateway.crl, *gateway.previous_crls):
            publisher.current(actor="crl-timer")

    return _every(CRL_CHECK_SECONDS, 0.2, stop, "crl-timer", _publish)


def start_ra_renewal(loader: GatewayLoader, stop: threading.Event, holder: str) -> threading.Thread:
    """Renew the RA certificate before it expires (gateway.ra_renewal); the check is a date comparison,
    made as often as the trust watch looks, so every worker reloads the new one within seconds."""
    return _every(
        TRUST_CHECK_SECONDS,
        0.3,
        stop,
        "ra-renewal",
        lambda: renew_ra_if_due(loader.get(), dt.datetime.now(dt.UTC), holder=holder),
    )


def start_housekeeping(loader: GatewayLoader, stop: threading.Event) -> threading.Thread:
    """Delete stale challenges and lockout counters (gateway.housekeeping), about once an hour."""

    def _purge() -> None:
        gateway = loader.get()
        purge_stale(gateway.storage.enrollments, gateway.config.profiles, gateway.authority.clock())

    return _every(HOUSEKEEPING_SECONDS, 0.2, stop, "housekeeping", _purge)


def _clients_waiting() -> bool:
    """Let every request that is ready run (under gevent, time.sleep(0) yields to them), and say whether
    that took long enough that clients were waiting: then deferred requests wait for the next round."""
    started = time.monotonic()
    time.sleep(0)
    return time.monotonic() - started > LAG_FLOOR_SECONDS


def start_deferred_issuer(
    loader: GatewayLoader, stop: threading.Event, actor: str, every: float = 1.0
) -> threading.Thread:
    """Issue the requests admission control deferred (shared_ca.admission) whenever this worker has a slot
    to spare, looking about `every` seconds (admission.deferred_check_seconds); any worker of any node may
    issue any of them."""

    def _drain() -> None:
        gateway = loader.get()
        drain_deferred(gateway.approvals, gateway.admission, actor=actor, busy=_clients_waiting)

    return _every(every, 0.5, stop, "deferred-issuer", _drain)


class ListenerApplication(BaseApplication):  # type: ignore[misc]
    """One gunicorn arbiter serving the gateway app on one listener."""

    def __init__(self, listener: str, config: GatewayConfig, *, inherited_fd: str | None = None) -> None:
        self.listener = listener
        self.inherited_fd = inherited_fd  # the socket the supervisor bound; None: bind listen.<listener> here
        self.gateway_config = config
        self._loader: GatewayLoader | None = None
        self._context: ssl.SSLContext | None = None
        self._trusted: set[str] = set()  # fingerprints of the issuers the context verifies client certificates by
        super().__init__()

    def _worker_loader(self) -> GatewayLoader:
        """The worker's gateway, opened on first use: a worker starts even while the database is away."""
        if self._loader is None:
            self._loader = GatewayLoader(self.gateway_config)
        return self._loader

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """The context the worker wraps connections in (gateway.worker): the arbiter's, on HTTPS."""
        return self._context

    @property
    def connection_limits(self) -> ConnectionLimits:
        config = self.gateway_config
        return ConnectionLimits(
            handshake_seconds=config["listen.tls_handshake_timeout_seconds"],
            header_seconds=config["listen.header_timeout_seconds"],
            body_seconds=config["listen.body_timeout_seconds"],
            per_address=config["listen.max_connections_per_address"],
            exempt=config.trusted_proxies,
        )

    def _arbiter_ssl_context(self) -> ssl.SSLContext:
        """The HTTPS context, built once in the arbiter before it forks its workers: every worker then
        holds the same session-ticket key, so a client resumes its TLS session whichever worker its
        next connection lands on (one context per worker resumed about one connection in three)."""
        config = self.gateway_config
        trusted = trusted_client_issuers(config)
        self._trusted = {fingerprint(c) for c in trusted}
        return build_ssl_context(config, trusted)

    def _post_worker_init(self, _worker: Any) -> None:
        loader = self._worker_loader()
        with contextlib.suppress(Unavailable):  # open now when the database answers; on first use if not
            loader.get()
        every = float(self.gateway_config["admission.deferred_check_seconds"])
        start_deferred_issuer(loader, threading.Event(), f"admission:{self.listener}:{os.getpid()}", every)
        _every(TRUST_CHECK_SECONDS, 0.3, threading.Event(), "trust-watch", self._follow_issuers)
        if self.listener == "https":
            start_crl_timer(loader, threading.Event())
            start_housekeeping(loader, threading.Event())
            start_ra_renewal(loader, threading.Event(), f"{self.listener}:{os.getpid()}")

    def _follow_issuers(self) -> None:
        """The issuers in the database, followed without a restart (GatewayLoader.refresh): a CA rollover
        is served, and the TLS context accepts the client certificates of an issuer trusted since it was
        built (a legacy CA imported, its window moved, or the database away when the arbiter started).
        The context only ever gains issuers: one whose trust ended (window passed, removed) still passes
        the handshake, and every request is refused per request (shared_ca.trust: a clear 403)."""
        try:
            trusted = self._worker_loader().refresh(dt.datetime.now(dt.UTC))
        except Unavailable:
            return  # the loader logged the outage; the next round looks again
        context = self._context
        if context is None or context.verify_mode == ssl.CERT_NONE:
            return
        new = [c for c in trusted if fingerprint(c) not in self._trusted]
        if new:
            context.load_verify_locations(cadata=certificates_pem(new).decode("ascii"))
            self._trusted.update(fingerprint(c) for c in new)
            names = ", ".join(c.subject.rfc4514_string() for c in new)
            log.info("HTTPS listener: accepting client certificates of %s from now on", names)

    def load_config(self) -> None:
        config = self.gateway_config
        cfg = self.cfg
        bind = f"fd://{self.inherited_fd}" if self.inherited_fd else config[f"listen.{self.listener}"]
        cfg.set("bind", [bind])
        cfg.set("workers", config["listen.workers"])
        # One greenlet per connection (gateway.worker): a slow or idle client holds no thread.
        cfg.set("worker_class", "gateway.worker.GatewayWorker")
        cfg.set("worker_connections", config["listen.connections"])
        cfg.set("timeout", config["listen.timeout_seconds"])
        cfg.set("graceful_timeout", 10)
        cfg.set("keepalive", config["listen.header_timeout_seconds"])
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
        cfg.set("child_exit", _worker_exited)  # its in-flight gauge goes; its counts stay (gateway.metrics)
        if "control_socket_disable" in cfg.settings:  # gunicorn >= 24: both arbiters would share one socket
            cfg.set("control_socket_disable", True)
        if self.listener == "https":
            # TLS is the worker's, not gunicorn's: its handshakes run under a deadline (gateway.worker).
            self._context = self._arbiter_ssl_context()

    def load(self) -> Any:
        return create_app(loader=self._worker_loader())


def _worker_exited(_arbiter: Any, worker: Any) -> None:
    worker_exited(worker.pid)


def run_listener(listener: str) -> None:
    """Entry of one arbiter process (`python -m gateway.server LISTENER`), started by gateway.supervisor."""
    config = config_from_environment()
    configure_logging(config["log.format"], config["log.level"])
    capture_process_output(config["log.format"])  # gunicorn's prints and tracebacks as records too
    ListenerApplication(listener, config, inherited_fd=os.environ.get(LISTEN_FD_ENV)).run()


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
