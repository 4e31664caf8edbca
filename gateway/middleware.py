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
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from est.auth import ProxyNetwork
from gateway.proxies import resolve

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

CLIENT_CERT_DER = "gateway.client_cert_der"
TLS_UNIQUE = "gateway.tls_unique"
TLS_VERSION = "gateway.tls_version"
LISTENER = "gateway.listener"  # "https" or "http": the client's own connection, as resolved
CLIENT_ADDRESS = "gateway.client_address"  # the client's IP address, as resolved (None: unknown)
VIA_PROXY = "gateway.via_proxy"  # True when the socket peer is a trusted proxy
REQUEST_ID = "gateway.request_id"

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


class GatewayMiddleware:
    """Request id, transport facts and the access log around the Flask app.

    `trusted`: the networks of the trusted proxies (`listen.trusted_proxies`), whose forwarding
    headers are believed; empty: nobody's.
    """

    def __init__(self, app: WSGIApp, trusted: Sequence[ProxyNetwork] = ()) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        offered = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = offered if _REQUEST_ID_OK.fullmatch(offered) else uuid.uuid4().hex[:16]
        environ[REQUEST_ID] = request_id
        transport_facts(environ, self.trusted)
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
