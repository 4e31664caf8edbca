"""WSGI middleware: request id, access log line, and the TLS facts of the connection.

Under gunicorn the TLS socket is environ['gunicorn.socket']; the client certificate (if any) and the
channel binding are read from it here, so views never touch sockets.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

CLIENT_CERT_DER = "gateway.client_cert_der"
TLS_UNIQUE = "gateway.tls_unique"
TLS_VERSION = "gateway.tls_version"
LISTENER = "gateway.listener"
REQUEST_ID = "gateway.request_id"

access_log = logging.getLogger("gateway.access")
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._-]{1,64}")


def tls_facts(environ: dict[str, Any]) -> None:
    """Copy the client certificate, tls-unique and TLS version of the connection into environ."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, ssl.SSLSocket):
        environ[LISTENER] = "https" if environ.get("wsgi.url_scheme") == "https" else "http"
        return
    environ[LISTENER] = "https"
    try:
        der = sock.getpeercert(binary_form=True)
    except (ValueError, OSError):
        der = None
    if der:
        environ[CLIENT_CERT_DER] = der
    environ[TLS_VERSION] = sock.version()
    with contextlib.suppress(ValueError, OSError):
        environ[TLS_UNIQUE] = sock.get_channel_binding("tls-unique")


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
    """Request id, TLS facts and the access log around the Flask app."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        offered = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = offered if _REQUEST_ID_OK.fullmatch(offered) else uuid.uuid4().hex[:16]
        environ[REQUEST_ID] = request_id
        tls_facts(environ)
        status_holder: list[str] = ["000"]

        def _start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_holder[0] = status.split(" ", 1)[0]
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, exc_info)

        def _finish(sent: int) -> None:
            access_log.info(
                '%s %s %s %s %d %.1fms "%s" rid=%s',
                environ.get("REMOTE_ADDR", "-"),
                environ.get("REQUEST_METHOD", "-"),
                environ.get("PATH_INFO", "-"),
                status_holder[0],
                sent,
                (time.perf_counter() - started) * 1000,
                environ.get("HTTP_USER_AGENT", "-"),
                request_id,
                extra={
                    "request_id": request_id,
                    "client": environ.get("REMOTE_ADDR"),
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
