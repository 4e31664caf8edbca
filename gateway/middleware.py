"""WSGI middleware: request id, access log line, and the transport facts of the connection.

Under gunicorn the socket is environ['gunicorn.socket'] (an ssl.SSLSocket on the HTTPS listener);
the client certificate (if any) and the channel binding are read from it here, so views never touch
sockets. "Is this HTTPS" and "who is the client" are decided once, here (gateway.proxies: the socket,
or forwarding headers from a trusted proxy), and every consumer reads them from the environ:
`LISTENER` ("https"/"http") and `CLIENT_ADDRESS`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn

import gevent
from werkzeug.exceptions import RequestTimeout

from est.auth import ProxyNetwork
from gateway.logs import bind_request_id
from gateway.proxies import resolve

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

CLIENT_CERT_DER = "gateway.client_cert_der"
TLS_UNIQUE = "gateway.tls_unique"
TLS_VERSION = "gateway.tls_version"
LISTENER = "gateway.listener"  # "https" or "http": the client's own connection, as resolved
CLIENT_ADDRESS = "gateway.client_address"  # the client's IP address, as resolved (None: unknown)
VIA_PROXY = "gateway.via_proxy"  # True when the socket peer is a trusted proxy
REQUEST_ID = "gateway.request_id"
LOOP_LAG = "gateway.loop_lag"  # seconds the request waited behind others for its worker (gateway.worker)

access_log = logging.getLogger("gateway.access")
log = logging.getLogger("gateway.proxies")
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._-]{1,64}")


def tls_facts(environ: dict[str, Any]) -> str:
    """Copy the client certificate, tls-unique and TLS version of the connection into environ; the
    socket's scheme ("https" on a TLS socket). Without a gunicorn socket (an in-process test client,
    another server) the scheme is the server's wsgi.url_scheme."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return "https" if environ.get("wsgi.url_scheme") == "https" else "http"
    if not isinstance(sock, ssl.SSLSocket):
        return "http"
    try:
        der = sock.getpeercert(binary_form=True)
    except (ValueError, OSError):
        der = None
    if der:
        environ[CLIENT_CERT_DER] = der
    environ[TLS_VERSION] = sock.version()
    with contextlib.suppress(ValueError, OSError):
        environ[TLS_UNIQUE] = sock.get_channel_binding("tls-unique")
    return "https"


def transport_facts(environ: dict[str, Any], trusted: Sequence[ProxyNetwork]) -> None:
    """TLS facts, then the resolved scheme and client address, into environ (once per request)."""
    transport = resolve(environ, tls_facts(environ), trusted)
    environ[LISTENER] = transport.scheme
    environ[CLIENT_ADDRESS] = transport.client_address
    environ[VIA_PROXY] = transport.via_proxy
    environ["wsgi.url_scheme"] = transport.scheme  # request.scheme and is_secure agree with LISTENER
    if transport.note:
        log.warning(
            "forwarding headers of trusted proxy %s partly ignored: %s",
            environ.get("REMOTE_ADDR"),
            transport.note,
            extra={"request_id": environ.get(REQUEST_ID)},
        )


class _Logged:
    """Response iterable that logs one access line when the server closes it."""

    def __init__(self, body: Iterable[bytes], finish: Callable[[int], None]) -> None:
        self._body = body
        self._finish = finish
        self._sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self._finish(self._sent)


# Connections whose request body was not read in full (a 408): the worker closes them after the response
# instead of reading on for a next request (gateway.worker.GatewayWorker.handle_request).
CLOSE_AFTER_RESPONSE: weakref.WeakSet[socket.socket] = weakref.WeakSet()


class DeadlineInput:
    """wsgi.input that never waits past the request's body deadline: a read still waiting when the
    deadline passes ends in a 408, so a client trickling its body a byte at a time cannot hold the
    request open longer than the deadline. Under the gevent worker the deadline is a gevent.Timeout
    around each read (one read may take many receives); without a gunicorn socket (in-process test
    clients) only the time before each read is checked."""

    def __init__(self, stream: Any, sock: socket.socket | None, deadline: float) -> None:
        self._stream = stream
        self._sock = sock
        self._deadline = deadline

    def _call(self, read: Callable[..., Any], *args: Any) -> Any:
        left = self._deadline - time.monotonic()
        if left <= 0:
            self._late()
        if self._sock is None:
            return read(*args)
        timer = gevent.Timeout(left)
        timer.start()
        try:
            return read(*args)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._late()
        finally:
            timer.close()

    def _late(self) -> NoReturn:
        if self._sock is not None:
            CLOSE_AFTER_RESPONSE.add(self._sock)  # the rest of the body is still on the wire
        raise RequestTimeout("the request body did not arrive in time") from None

    def read(self, size: int | None = None) -> bytes:
        data: bytes = self._call(self._stream.read, *(() if size is None else (size,)))
        return data

    def readline(self, size: int | None = None) -> bytes:
        line: bytes = self._call(self._stream.readline, *(() if size is None else (size,)))
        return line

    def readlines(self, hint: int | None = None) -> list[bytes]:
        lines: list[bytes] = self._call(self._stream.readlines, *(() if hint is None else (hint,)))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class GatewayMiddleware:
    """Request id, transport facts, the body deadline and the access log around the Flask app.

    `trusted`: the networks of the trusted proxies (`listen.trusted_proxies`), whose forwarding
    headers are believed; empty: nobody's. `body_seconds`: the whole request body must arrive within
    this (`listen.body_timeout_seconds`; None: no deadline).
    """

    def __init__(self, app: WSGIApp, trusted: Sequence[ProxyNetwork] = (), body_seconds: float | None = None) -> None:
        self.app = app
        self.trusted = tuple(trusted)
        self.body_seconds = body_seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        offered = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = offered if _REQUEST_ID_OK.fullmatch(offered) else uuid.uuid4().hex[:16]
        environ[REQUEST_ID] = request_id
        bind_request_id(request_id)  # every record logged while it is served names it
        transport_facts(environ, self.trusted)
        if self.body_seconds is not None and "wsgi.input" in environ:
            sock = environ.get("gunicorn.socket")
            environ["wsgi.input"] = DeadlineInput(
                environ["wsgi.input"],
                sock if isinstance(sock, socket.socket) else None,
                time.monotonic() + self.body_seconds,
            )
        status_holder: list[str] = ["000"]

        def _start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_holder[0] = status.split(" ", 1)[0]
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, exc_info)

        def _finish(sent: int) -> None:
            access_log.info(
                '%s %s %s %s %d %.1fms "%s" rid=%s',
                environ.get(CLIENT_ADDRESS) or "-",
                environ.get("REQUEST_METHOD", "-"),
                environ.get("PATH_INFO", "-"),
                status_holder[0],
                sent,
                (time.perf_counter() - started) * 1000,
                environ.get("HTTP_USER_AGENT", "-"),
                request_id,
                extra={
                    "request_id": request_id,
                    "client": environ.get(CLIENT_ADDRESS),
                    "peer": environ.get("REMOTE_ADDR"),
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "status": int(status_holder[0]) if status_holder[0].isdigit() else 0,
                    "bytes": sent,
                    "listener": environ.get(LISTENER),
                    "user_agent": environ.get("HTTP_USER_AGENT"),
                    "client_cert": CLIENT_CERT_DER in environ,
                },
            )

        return _Logged(self.app(environ, _start), _finish)
