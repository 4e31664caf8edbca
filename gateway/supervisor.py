"""`gateway serve`: bind both listeners, run one gunicorn arbiter per listener, keep them running.

gunicorn applies one TLS setting to all of its binds, so each listener is its own arbiter, run in its
own process by `python -m gateway.server LISTENER` (gateway.server). This supervisor:

- binds both listening sockets itself, before anything starts: a port in use is one line and exit 1
  at once, and the banner is printed only once both are bound;
- hands each arbiter its socket (gunicorn's `fd://` bind), so an arbiter that dies is started again
  on the same socket: connections wait in the kernel's backlog meanwhile instead of being refused;
- restarts a dead arbiter with back-off (1, 2, 4 ... 60 s; the count resets once one has run for a
  minute) and logs why, and never stops the other listener because of it;
- makes a private directory for the run where every worker of both arbiters keeps its Prometheus
  counts (PROMETHEUS_MULTIPROC_DIR, gateway.metrics), and removes it when both have stopped;
- on SIGTERM or SIGINT closes its own copies of the sockets (new connections are refused, so a load
  balancer moves on), asks both arbiters to stop (gunicorn drains in-flight requests within the
  graceful timeout), and kills what is still running after that.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit_trail import record_config_change
from gateway.config import GatewayConfig, parse_hostport
from gateway.metrics import MULTIPROCESS_ENV, create_multiprocess_dir, forget_dead_processes, remove_multiprocess_dir
from gateway.runtime import open_gateway
from gateway.tls_token import load_server_key
from shared_ca.authority import utcnow
from shared_ca.errors import Unavailable
from shared_ca.kms import release_tokens
from shared_ca.storage.db import SchemaNotCurrent

log = logging.getLogger("gateway.server")
LISTENERS = ("http", "https")
LISTEN_FD_ENV = "GATEWAY_LISTEN_FD"  # the listening socket an arbiter inherits (a file descriptor number)
BACKLOG = 2048
GRACEFUL_SECONDS = 10  # gunicorn's graceful_timeout (gateway.server)
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
STABLE_SECONDS = 60.0  # an arbiter that ran this long starts its next back-off from the beginning


class ServeError(Exception):
    """`serve` cannot start; the message is the whole story (printed as one `Error:` line)."""


def bind_listener(hostport: str) -> socket.socket:
    """A listening TCP socket on HOST:PORT, inheritable by the arbiter; ServeError when it cannot be had."""
    host, port = parse_hostport(hostport)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ServeError(f"cannot listen on {hostport}: {reason}") from None
    sock.set_inheritable(True)
    return sock


@dataclass
class Arbiter:
    """One listener's arbiter process, and when to start it again after it died."""

    listener: str
    sock: socket.socket
    environ: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = field(default=None)

    def start(self) -> None:
        if self.environ.get(MULTIPROCESS_ENV):  # an arbiter that died may have left its workers' gauges
            forget_dead_processes(Path(self.environ[MULTIPROCESS_ENV]))
        env = dict(self.environ, **{LISTEN_FD_ENV: str(self.sock.fileno())})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.server", self.listener], env=env, pass_fds=(self.sock.fileno(),)
        )
        self.started_at = time.monotonic()
        self.restart_at = None

    def check(self, now: float) -> None:
        """Start the arbiter again when it died and its back-off has passed."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                log.warning("starting the %s listener again", self.listener)
                self.start()
            return
        code = self.process.poll() if self.process is not None else None
        if code is None:
            return
        if now - self.started_at >= STABLE_SECONDS:
            self.backoff = FIRST_BACKOFF
        log.error(
            "the %s listener exited with status %s; starting it again in %.0f s (the other listener goes on)",
            self.listener,
            code,
            self.backoff,
        )
        self.restart_at = now + self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("the %s listener did not stop within the graceful timeout: killed", self.listener)
            self.process.kill()
            self.process.wait()


def check_start(config: GatewayConfig) -> None:
    """Fail at once, in one line, on what no retry can mend (keys, the HTTPS key and certificate, an old
    schema); a database that does not answer yet is only logged: the listeners answer 503 until it does.
    A configuration that differs from the one this node last ran is recorded in the audit trail
    (config.changed)."""
    # The HTTPS arbiter loads them again for its workers (an arbiter is a new program: nothing of this
    # process's OpenSSL state, the pkcs11 provider included, reaches it).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        gateway = open_gateway(config)
    except SchemaNotCurrent:
        raise
    except Unavailable as exc:
        log.warning("the database is unavailable (%s): serving 503 until it answers", exc.detail)
        load_server_key(context, config)
        return
    try:
        load_server_key(context, config)  # before anything is recorded: a refused start changed nothing
        record_config_change(gateway.storage, config, gateway.ra_key, utcnow())
    except SchemaNotCurrent:
        raise
    except Unavailable as exc:  # e.g. a database that opens read-only: served with 503s, not refused
        log.warning("the database is unavailable (%s): serving 503 until it answers", exc.detail)
    finally:
        gateway.storage.db.dispose()
        release_tokens()  # the workers log in to a key token themselves (shared_ca.kms)


def serve(config: GatewayConfig, environ: dict[str, str], announce: Callable[[str], None]) -> int:
    """Bind, start both arbiters, print where they listen, and supervise them until SIGTERM or SIGINT."""
    sockets: dict[str, socket.socket] = {}
    try:
        for listener in LISTENERS:
            sockets[listener] = bind_listener(config[f"listen.{listener}"])
        check_start(config)
        # Where every worker of both arbiters counts (gateway.metrics): new for each run, gone after it.
        metrics_dir = _metrics_directory()
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    for notice in config.deprecations:
        log.warning("configuration: %s", notice)
    stopping = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stopping.set()

    # Handlers before the first child: a SIGTERM during start-up must stop the arbiters already started.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    environ = dict(environ, **{MULTIPROCESS_ENV: str(metrics_dir)})
    arbiters = [Arbiter(listener, sockets[listener], environ) for listener in LISTENERS]
    try:
        for arbiter in arbiters:
            arbiter.start()
        _announce(config, announce)
        while not stopping.wait(0.5):
            now = time.monotonic()
            for arbiter in arbiters:
                arbiter.check(now)
    finally:
        for sock in sockets.values():  # from now on a new connection is refused, not left in a backlog
            with contextlib.suppress(OSError):
                sock.close()
        for arbiter in arbiters:
            arbiter.stop()
        deadline = time.monotonic() + GRACEFUL_SECONDS + 10
        for arbiter in arbiters:
            arbiter.wait(deadline)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        remove_multiprocess_dir(metrics_dir)
    return 0


def _metrics_directory() -> Path:
    try:
        return create_multiprocess_dir()
    except OSError as exc:
        raise ServeError(f"cannot create the metrics directory in {tempfile.gettempdir()}: {exc.strerror}") from None


def _announce(config: GatewayConfig, announce: Callable[[str], None]) -> None:
    base_http = f"http://{config['listen.http']}"
    base_https = f"https://{config['listen.https']}"
    announce(f"SCEP   {base_http}/scep  and  {base_https}/scep")
    announce(f"EST    {base_https}/.well-known/est")
    announce(f"health {base_http}/healthz  and  {base_https}/healthz   ready {base_http}/readyz")
    announce(f"CRL    {base_http}/crl/{config['ca.name']}.crl   OCSP {base_http}/ocsp")
    announce(f"CA certificate (trust this): {config.data_dir / 'ca.pem'}  (also {base_http}/ca.pem)")


def child_environment(config: GatewayConfig, base: dict[str, str]) -> dict[str, str]:
    """What an arbiter process needs to load the same configuration as the parent."""
    env = dict(base)
    env["GATEWAY_DATA_DIR"] = str(config.data_dir)
    if config.source is not None:
        env["GATEWAY_CONFIG"] = str(config.source)
    for key in ("listen.http", "listen.https", "listen.workers", "log.format", "log.level"):
        env["GATEWAY_" + key.replace(".", "_").upper()] = str(config[key])
    return env
