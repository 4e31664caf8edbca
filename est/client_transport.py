"""HTTP for the project's EST client (est.client): one kept-alive TLS connection, the 401 challenge,
the retries after a 202, and one line of text for every failure.

A request that finds the kept-alive connection closed by the server is sent once more on a new one.
After a 202 the same request is sent again after Retry-After (RFC 7030 §4.2.3) while the wait budget
lasts; then it is an EstPendingError.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable
from functools import partial
from pathlib import Path

from est.client_messages import EstClientError, EstPendingError, retry_after_seconds

USER_AGENT = "gateway-est-client/1"
MAX_REPLY_BYTES = 1024 * 1024
MIN_RETRY_SECONDS = 1.0
DEFAULT_RETRY_SECONDS = 10.0
"""Wait after a 202 without a readable Retry-After (RFC 7030 §4.2.3 requires one; some servers forget)."""

_TAGS = re.compile(rb"<[^>]*>")
_SSL_SOURCE = re.compile(r" \(_ssl\.c:\d+\)$")  # where in CPython the error was raised: noise for a user

BodyFactory = Callable[[bytes | None], bytes]
"""Builds a request body given the connection's tls-unique value (None unless channel binding)."""


@dataclasses.dataclass(frozen=True)
class HttpReply:
    """One HTTP answer, fully read."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def content_type(self) -> str:
        """The media type, lower case without parameters; '' when the header is missing."""
        return self.headers.get_content_type() if self.headers.get("Content-Type") else ""


class EstTransport:
    """HTTPS to one server for EstClient; not thread-safe. The server is verified against `cafile` (the
    system trust store when None); `authorization` is the Basic header value, sent with every request
    (`preemptive_basic`) or only after a 401 challenge."""

    def __init__(
        self,
        host: str,
        port: int,
        cafile: str | Path | None,
        *,
        cert_file: str | Path | None,
        key_file: str | Path | None,
        key_password: bytes | None,
        authorization: str | None,
        timeout: float,
        wait: float,
        preemptive_basic: bool,
        sleep: Callable[[float], None],
    ) -> None:
        self.timeout = timeout
        self.wait = wait
        self.preemptive_basic = preemptive_basic
        self._host, self._port = host, port
        self._sleep = sleep
        self._authorization = authorization
        self._context_for = partial(tls_context, cafile, cert_file, key_file, key_password)
        self._context = self._context_for(tls12_only=False)
        self._linking_context: ssl.SSLContext | None = None
        self._conn: http.client.HTTPSConnection | None = None

    def close(self) -> None:
        """Close the kept-alive connection (a later request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, method: str, url: str, body: bytes | BodyFactory | None, *, linking: bool = False) -> HttpReply:
        """A 2xx reply to `method` `url`, after the 401 challenge and 202 retries; EstClientError else.

        With `linking`, on a connection of its own whose tls-unique value the body factory is given.
        """
        linked = None
        if linking:  # a connection of its own, on TLS 1.2: tls-unique is not defined for TLS 1.3
            if self._linking_context is None:
                self._linking_context = self._context_for(tls12_only=True)
            linked = self._new_connection(self._linking_context)
        send_basic = self._authorization is not None and self.preemptive_basic
        deadline = time.monotonic() + self.wait
        slept = 0.0
        try:
            while True:
                reply = self._round_trip(linked, method, url, body, send_basic)
                if reply.status == 401 and self._authorization is not None and not send_basic:
                    send_basic = True  # RFC 7030 §3.2.3: answer the challenge once
                    continue
                if reply.status == 202:
                    after = retry_after_seconds(reply.headers.get("Retry-After"), dt.datetime.now(dt.UTC))
                    delay = max(MIN_RETRY_SECONDS, DEFAULT_RETRY_SECONDS if after is None else after)
                    if slept + delay > self.wait or time.monotonic() + delay > deadline:
                        raise EstPendingError(
                            f"{url}: the request awaits approval (HTTP 202); retry in {delay:g} s",
                            retry_after=delay,
                        )
                    self._sleep(delay)
                    slept += delay
                    continue
                if 200 <= reply.status < 300:
                    return reply
                raise _http_error(url, reply)
        finally:
            if linked is not None:
                linked.close()

    def _new_connection(self, context: ssl.SSLContext) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=context)

    def _round_trip(
        self,
        linked: http.client.HTTPSConnection | None,
        method: str,
        url: str,
        body: bytes | BodyFactory | None,
        send_basic: bool,
    ) -> HttpReply:
        path = urllib.parse.urlsplit(url).path
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        if send_basic and self._authorization is not None:
            headers["Authorization"] = self._authorization
        if body is not None:
            headers["Content-Type"] = "application/pkcs10"
            headers["Content-Transfer-Encoding"] = "base64"  # meaningless since RFC 8951, wanted by old servers
        for attempt in (1, 2):
            if linked is None and self._conn is None:
                self._conn = self._new_connection(self._context)
            conn = linked or self._conn
            assert conn is not None
            reused = conn.sock is not None  # kept alive from an earlier request
            handshaking = not reused
            try:
                if not reused:
                    conn.connect()
                    handshaking = False
                payload = body(_tls_unique(conn, url) if linked else None) if callable(body) else body
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read(MAX_REPLY_BYTES + 1)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 1 and closed_by_peer(exc):
                    # The server closed the kept-alive connection while it was idle (gunicorn does
                    # after 15 s; a 202's Retry-After is often longer), so no answer came: send the
                    # request once more on a new connection, as xmlrpc.client does for a cached
                    # connection gone cold (urllib3 checks a pooled one before reusing it). Only a
                    # reused connection, and only once: a failure on a new one is the server's
                    # answer. Sending again is safe here: our requests are a GET or a CSR, and the
                    # same CSR again is exactly what RFC 7030 §4.2.3 has a client send after a 202,
                    # which a server recognises as the same request. Had the server read the
                    # request before it closed, the worst is a second certificate for the same key
                    # and names, the same as running the command again.
                    continue
                raise self._transport_error(url, exc, handshaking=handshaking, retried=attempt > 1) from None
            if len(data) > MAX_REPLY_BYTES or response.will_close:
                conn.close()
            if len(data) > MAX_REPLY_BYTES:
                raise EstClientError(f"the reply from {url} is larger than {MAX_REPLY_BYTES} bytes")
            return HttpReply(response.status, response.reason, response.headers, data)
        raise AssertionError("unreachable")

    def _transport_error(self, url: str, exc: BaseException, *, handshaking: bool, retried: bool) -> EstClientError:
        """One line for a failed exchange: what went wrong, with which URL, without internals."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return EstClientError(f"cannot verify the TLS server of {url}: {exc.verify_message or exc.reason}")
        if closed_by_peer(exc):
            if handshaking:
                return EstClientError(f"the server closed the connection during the TLS handshake for {url}")
            again = " (again, on a new connection after the kept-alive one had been closed)" if retried else ""
            return EstClientError(f"the server closed the connection without answering {url}{again}")
        if isinstance(exc, ssl.SSLError):
            return EstClientError(f"TLS with {url} failed: {exc.reason or _SSL_SOURCE.sub('', str(exc))}")
        if isinstance(exc, TimeoutError):
            return EstClientError(f"no answer from {url} within {self.timeout:g} s")
        if isinstance(exc, OSError):
            return EstClientError(f"cannot reach {url}: {exc.strerror or exc}")
        return EstClientError(f"bad HTTP reply from {url}: {type(exc).__name__} {exc}")


_PEER_CLOSED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


def closed_by_peer(exc: BaseException) -> bool:
    """Whether `exc` means the server had closed the connection before any answer was read.

    That is: the TLS layer saw the end of the connection (SSLEOFError: closed without close_notify,
    as gunicorn closes an idle kept-alive connection; SSLZeroReturnError: closed with it), the
    socket was reset or the pipe broken, or the first read of the status line found the end of the
    stream (http.client's RemoteDisconnected, both a ConnectionResetError and a BadStatusLine). A
    status line that holds text but is not HTTP came from a live peer and is not this case, nor is
    a reply cut short (IncompleteRead): the server answered something."""
    return isinstance(exc, _PEER_CLOSED)


def _tls_unique(conn: http.client.HTTPSConnection, url: str) -> bytes:
    sock = conn.sock
    assert isinstance(sock, ssl.SSLSocket)
    binding = sock.get_channel_binding("tls-unique") if sock.version() == "TLSv1.2" else None
    if not binding:
        raise EstClientError(f"no tls-unique channel binding with {url} (TLS version {sock.version()})")
    return binding


def _http_error(url: str, reply: HttpReply) -> EstClientError:
    text = server_text(reply)
    message = f"HTTP {reply.status} {reply.reason} from {url}"
    if reply.status == 401:
        challenge = reply.headers.get("WWW-Authenticate")
        message += f" (credentials missing or refused; the server asks for {challenge or 'authentication'})"
    return EstClientError(message + (f": {text}" if text else ""), status=reply.status, server_text=text)


def tls_context(
    cafile: str | Path | None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    key_password: bytes | None = None,
    *,
    tls12_only: bool = False,
) -> ssl.SSLContext:
    """A verifying client context trusting `cafile` (system store when None), with the client certificate."""
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise EstClientError(f"cannot load CA file {cafile}: {getattr(exc, 'strerror', None) or exc}") from None
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:  # a password callback, so an encrypted key fails instead of prompting on the terminal
            context.load_cert_chain(
                str(cert_file), str(key_file) if key_file is not None else None, password=lambda: key_password or b""
            )
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise EstClientError(
                f"cannot use client certificate {cert_file} with key {key_file or cert_file}: {reason} "
                "(PEM files; the key must match the certificate and be unencrypted or its password given)"
            ) from None
    return context


def server_text(reply: HttpReply) -> str | None:
    """The server's message in an error reply, one line, at most 300 characters (tags of HTML dropped)."""
    if not reply.body:
        return None
    if reply.content_type and not reply.content_type.startswith("text/"):
        return f"({reply.content_type} body of {len(reply.body)} bytes)"
    raw = reply.body[:4000]
    if reply.content_type == "text/html":
        raw = _TAGS.sub(b" ", raw)
    try:
        decoded = raw.decode(reply.headers.get_content_charset("utf-8"), "replace")
    except LookupError:  # an unknown charset name
        decoded = raw.decode("utf-8", "replace")
    text = " ".join(decoded.split())
    return (text[:297] + "...") if len(text) > 300 else (text or None)
