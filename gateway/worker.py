"""The gunicorn worker of both listeners: one greenlet per connection, a deadline on every wait.

gthread committed a thread to a connection as soon as its first bytes arrived and read the rest
with no deadline: twelve idle connections silenced a listener. Here (gevent, measured in
docs/architecture.md) a connection that sends nothing costs a greenlet and a socket, never a
thread, and every wait ends:

- the TLS handshake within `listen.tls_handshake_timeout_seconds` (TLS is done here, not by
  gunicorn, so the handshake runs under that deadline and a stalled one holds nothing);
- a request head, and the idle time between kept-alive requests, within
  `listen.header_timeout_seconds` (a whole-head deadline: trickling a byte at a time does not
  extend it);
- each read or write of a body or response within `listen.body_timeout_seconds` (the middleware
  also bounds a whole body, gateway.middleware.DeadlineInput);
- one address holds at most `listen.max_connections_per_address` connections per worker (trusted
  proxies exempt), so one client cannot exhaust the worker's connection pool.

TLS connections end with close_notify (strict clients report UNEXPECTED_EOF without it).

The worker also measures how long a ready greenlet waits for the one thread (the event loop's lag):
a request's CPU work and SQLite calls never yield, so under a storm requests queue there, before the
app sees them. Each request carries the lag in its environ (`LOOP_LAG`), and admission control
(shared_ca.admission) defers or sheds a request that waited longer than its queue-wait budget.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import ssl as gevent_ssl
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from gateway.logs import bind_request_id
from gateway.middleware import CLOSE_AFTER_RESPONSE, LOOP_LAG

log = logging.getLogger("gateway.worker")
LAG_PROBE_SECONDS = 0.05  # how often the worker measures its event loop's lag
CLOSE_NOTIFY_SECONDS = 0.5  # how long a closing TLS connection waits to send its close_notify
LINGER_SECONDS = 1.0  # how long a failed handshake's connection waits for the client's EOF
_REFUSAL_LOG_INTERVAL = 10.0  # seconds between two log lines about one refused address


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines and caps of one listener (listen.* settings)."""

    handshake_seconds: float
    header_seconds: float
    body_seconds: float
    per_address: int
    exempt: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()  # trusted proxies


class ClosingSSLSocket(gevent_ssl.SSLSocket):  # type: ignore[misc]
    """A server TLS socket that says close_notify before it closes (RFC 8446 §6.1)."""

    def close(self) -> None:
        if getattr(self, "_sslobj", None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self.settimeout(CLOSE_NOTIFY_SECONDS)
                self.unwrap()  # sends our close_notify; waits briefly for the peer's, or its EOF
        super().close()


def server_tls_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """`context`'s settings as a gevent context whose sockets send close_notify. Built in the arbiter
    before the fork, so every worker shares its session-ticket key."""
    if not isinstance(context, gevent_ssl.SSLContext):
        raise TypeError("build the listener's context as a gevent.ssl.SSLContext")
    context.sslsocket_class = ClosingSSLSocket
    served: ssl.SSLContext = context
    return served


class GatewayWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker with the listener's TLS, deadlines and per-address cap (module docstring).

    The application object (gateway.server.ListenerApplication) provides `tls_context` (None on the
    plain-HTTP listener) and `connection_limits`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tls_context: ssl.SSLContext | None = self.app.tls_context
        self.limits: ConnectionLimits = self.app.connection_limits
        self._open: collections.Counter[str] = collections.Counter()
        self._refusal_logged: dict[str, float] = {}
        self.loop_lag = 0.0  # seconds a ready greenlet last waited for the thread

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: Any = getattr(self, "wsgi")  # noqa: B009 - set by gunicorn's load_wsgi, untyped

        def with_lag(environ: dict[str, Any], start_response: Any) -> Any:
            environ[LOOP_LAG] = self.loop_lag
            return app(environ, start_response)

        setattr(self, "wsgi", with_lag)  # noqa: B010 - gunicorn's attribute, untyped

    def run(self) -> None:
        gevent.spawn(self._watch_lag)
        super().run()

    def _watch_lag(self) -> None:
        while self.alive:
            started = time.monotonic()
            gevent.sleep(LAG_PROBE_SECONDS)
            self.loop_lag = max(0.0, time.monotonic() - started - LAG_PROBE_SECONDS)

    def timeout_ctx(self) -> gevent.Timeout:
        # gunicorn reads each request head (and waits between kept-alive requests) under this.
        return gevent.Timeout(self.limits.header_seconds, False)

    def handle(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        peer = addr[0] if isinstance(addr, tuple) and addr else ""
        if not self._admit(peer):
            with contextlib.suppress(OSError):
                client.close()
            return
        self._open[peer] += 1
        try:
            connection = self._secure(client, peer) if self.tls_context is not None else client
            if connection is None:
                return
            connection.settimeout(self.limits.body_seconds)  # every later read or write
            AsyncWorker.handle(self, listener, connection, addr)
        finally:
            self._open[peer] -= 1
            if not self._open[peer]:
                del self._open[peer]

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> None:
        super().handle_request(listener_name, req, sock, addr)
        # Served: what this connection logs next is not about it. A request that failed keeps its id
        # bound, so gunicorn's "Error handling request" line (logged after this returns) names it.
        bind_request_id(None)
        if sock in CLOSE_AFTER_RESPONSE:  # its body was cut short (408): no next request on it
            raise StopIteration

    def _admit(self, peer: str) -> bool:
        if self._open[peer] < self.limits.per_address or _exempt(peer, self.limits.exempt):
            return True
        now = time.monotonic()
        if now - self._refusal_logged.get(peer, 0.0) >= _REFUSAL_LOG_INTERVAL:
            self._refusal_logged[peer] = now
            log.warning(
                "refused connections from %s: it holds %d on this worker (listen.max_connections_per_address)",
                peer,
                self._open[peer],
            )
        return False

    def _secure(self, client: socket.socket, peer: str) -> socket.socket | None:
        """The TLS connection, its handshake done within the deadline; None when it failed (logged)."""
        assert self.tls_context is not None
        client.settimeout(self.limits.handshake_seconds)
        connection = self.tls_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        try:
            connection.do_handshake()
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket timeouts are OSErrors
            log.debug("TLS handshake with %s failed: %s", peer, exc)
            _linger_close(connection)
            return None
        return connection


def _linger_close(connection: socket.socket) -> None:
    """Close after a failed handshake so that our alert (say, unknown_ca) reaches the client: stop
    sending, then read what the client already sent before closing. Closing a socket with unread
    data makes the kernel send a reset, which can overtake the alert (TLS 1.3 clients send data
    right after their Finished, before the server has judged their certificate)."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_WR)  # an SSLSocket drops TLS here: what follows is plain TCP
        connection.settimeout(LINGER_SECONDS)
        for _ in range(16):
            if not connection.recv(4096):
                break
    with contextlib.suppress(OSError):
        connection.close()


def _exempt(peer: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
