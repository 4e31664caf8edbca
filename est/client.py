"""The project's own EST client (RFC 7030, clarified by RFC 8951) over http.client: what `gateway client est …` runs.

Written from the RFCs, not from our server, so it works against any conforming EST server. One
EstClient keeps one TLS connection alive between requests (it is not thread-safe: one client per
thread); its HTTP is est.client_transport. After a 202 the same CSR is sent again (RFC 7030 §4.2.3;
see RequestCsr). Every failure is an EstClientError with one line of text, the HTTP status and the
server's text/plain message; a request still awaiting approval when the wait budget is spent is an
EstPendingError.
"""

from __future__ import annotations

import base64
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from est.client_messages import (
    PKCS7_TYPES,
    CsrAttrs,
    EnrollResult,
    EstClientError,
    EstPendingError,
    RequestCsr,
    ServerKeygenResult,
    build_csr,
    decode_base64_reply,
    issued_for,
    load_csr,
    parse_certs_only,
    parse_serverkeygen,
    serverkeygen_result,
)
from est.client_transport import BodyFactory, EstTransport, HttpReply, server_text
from est.wire import EstWireError, decode_csr_attrs, encode_base64_body
from shared_ca.keys import PrivateKey

__all__ = [
    "CsrAttrs",
    "EnrollResult",
    "EstClient",
    "EstClientError",
    "EstPendingError",
    "RequestCsr",
    "ServerKeygenResult",
    "build_csr",
]

WELL_KNOWN = "/.well-known/est"
CSRATTRS_TYPES = frozenset({"application/csrattrs"})
MULTIPART_TYPES = frozenset({"multipart/mixed"})

_LABEL = re.compile(r"[A-Za-z0-9._~-]+")  # one path segment of unreserved characters (RFC 7030 §3.2.2)


class EstClient:
    """One EST server: `base_url` is https://HOST[:PORT] (then /.well-known/est is used) or the full
    EST path prefix; `label` selects /.well-known/est/<label>/ (RFC 7030 §3.2.2).

    The server is verified against `cafile` (the system trust store when None), host name included.
    Basic credentials are sent with every request (`preemptive_basic`), or only after a 401
    challenge; the client certificate, when given, in every TLS handshake. A 202 is followed by
    re-sending after Retry-After while the `wait` budget (seconds) lasts.
    """

    def __init__(
        self,
        base_url: str,
        cafile: str | Path | None,
        *,
        label: str | None = None,
        username: str | None = None,
        password: str | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        key_password: bytes | None = None,
        timeout: float = 30.0,
        wait: float = 0.0,
        preemptive_basic: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        try:
            port = parts.port or 443
        except ValueError:
            raise EstClientError(f"{base_url!r} has an invalid port") from None
        if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
            raise EstClientError(f"{base_url!r} is not an https:// URL (EST runs over TLS only, RFC 7030 §3.3)")
        if label is not None and not _LABEL.fullmatch(label):
            raise EstClientError(f"{label!r} is not an EST label (one path segment)")
        if (username is None) != (password is None):
            raise EstClientError("Basic authentication needs both a username and a password")
        if username is not None and ":" in username:
            raise EstClientError("a Basic username cannot contain ':' (RFC 7617 §2)")
        self.base_url = f"https://{parts.netloc}{parts.path.rstrip('/') or WELL_KNOWN}" + (f"/{label}" if label else "")
        authorization = None
        if username is not None and password is not None:
            token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            authorization = f"Basic {token}"
        self._transport = EstTransport(
            parts.hostname,
            port,
            cafile,
            cert_file=cert_file,
            key_file=key_file,
            key_password=key_password,
            authorization=authorization,
            timeout=timeout,
            wait=wait,
            preemptive_basic=preemptive_basic,
            sleep=sleep,
        )

    def url(self, operation: str) -> str:
        """The URL of an operation (cacerts, simpleenroll, …) under this base URL and label."""
        return f"{self.base_url}/{operation}"

    def close(self) -> None:
        """Close the kept-alive connection (a later request opens a new one)."""
        self._transport.close()

    def __enter__(self) -> EstClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # -- operations -------------------------------------------------------------------------------

    def cacerts(self) -> list[x509.Certificate]:
        """/cacerts (RFC 7030 §4.1): the CA certificates the server currently publishes."""
        reply = self._call("GET", "cacerts", None)
        return self._certs(reply, "cacerts")

    def csrattrs(self) -> CsrAttrs:
        """/csrattrs (RFC 7030 §4.5): what the server wants in a CSR; empty on 204 or 404."""
        try:
            reply = self._call("GET", "csrattrs", None)
        except EstClientError as exc:
            if exc.status == 404:  # RFC 7030 §4.5.2: "no CSR attributes are available"
                return CsrAttrs((), ())
            raise
        if reply.status == 204 or not reply.body.strip():
            return CsrAttrs((), ())
        self._expect(reply, CSRATTRS_TYPES, "csrattrs")
        try:
            oids, attributes = decode_csr_attrs(decode_base64_reply(reply.body, "csrattrs"))
        except EstWireError as exc:
            raise EstClientError(f"unreadable csrattrs reply from {self.url('csrattrs')}: {exc}") from None
        return CsrAttrs(oids, attributes)

    def simpleenroll(self, csr: bytes) -> EnrollResult:
        """/simpleenroll (RFC 7030 §4.2.1) of a PKCS#10 request (DER or PEM)."""
        return self._enroll("simpleenroll", csr)

    def simplereenroll(self, csr: bytes) -> EnrollResult:
        """/simplereenroll (RFC 7030 §4.2.2): the CSR keeps the subject and SANs of the current certificate,
        which authenticates the request as the TLS client certificate."""
        return self._enroll("simplereenroll", csr)

    def serverkeygen(self, csr: bytes) -> ServerKeygenResult:
        """/serverkeygen (RFC 7030 §4.4): the server makes the key; the CSR says what to certify."""
        request = load_csr(csr)
        reply = self._call("POST", "serverkeygen", encode_base64_body(request.public_bytes(Encoding.DER)))
        return self._serverkeygen_result(reply)

    def enroll_with_key(
        self,
        key: PrivateKey,
        subject: x509.Name,
        sans: Sequence[x509.GeneralName] | None = None,
        *,
        link_channel: bool = False,
        reenroll: bool = False,
    ) -> EnrollResult:
        """simpleenroll (or simplereenroll) of a CSR built here for `key`, once: every retry after a 202
        sends the same CSR. With `link_channel`, the CSR is built on the open connection (TLS 1.2
        forced) with its tls-unique value, base64, as the challengePassword (RFC 7030 §3.5); a new
        connection gets a new CSR (see RequestCsr)."""
        operation = "simplereenroll" if reenroll else "simpleenroll"
        reply = self._call("POST", operation, _csr_body(RequestCsr(key, subject, sans)), linking=link_channel)
        return issued_for(self._certs(reply, operation), key.public_key())

    def serverkeygen_with_key(
        self,
        key: PrivateKey,
        subject: x509.Name,
        sans: Sequence[x509.GeneralName] | None = None,
        *,
        link_channel: bool = False,
    ) -> ServerKeygenResult:
        """serverkeygen of a CSR built here and signed by `key` (its key type is a hint to the server)."""
        request = RequestCsr(key, subject, sans)
        reply = self._call("POST", "serverkeygen", _csr_body(request), linking=link_channel)
        return self._serverkeygen_result(reply)

    def _enroll(self, operation: str, csr: bytes) -> EnrollResult:
        request = load_csr(csr)
        reply = self._call("POST", operation, encode_base64_body(request.public_bytes(Encoding.DER)))
        return issued_for(self._certs(reply, operation), request.public_key())

    def _serverkeygen_result(self, reply: HttpReply) -> ServerKeygenResult:
        self._expect(reply, MULTIPART_TYPES, "serverkeygen")
        try:
            return serverkeygen_result(*parse_serverkeygen(reply.body, reply.headers.get("Content-Type", "")))
        except EstClientError as exc:
            raise EstClientError(f"{exc} (from {self.url('serverkeygen')})") from None

    def _certs(self, reply: HttpReply, operation: str) -> list[x509.Certificate]:
        self._expect(reply, PKCS7_TYPES, operation)
        try:
            return parse_certs_only(decode_base64_reply(reply.body, operation))
        except EstClientError as exc:
            raise EstClientError(f"{exc} (from {self.url(operation)})") from None

    def _expect(self, reply: HttpReply, accepted: frozenset[str], operation: str) -> None:
        """Refuse a reply whose Content-Type is set and not one `operation` answers with."""
        if reply.content_type and reply.content_type not in accepted:
            text = server_text(reply)
            raise EstClientError(
                f"unexpected Content-Type {reply.content_type} in the {operation} reply from {self.url(operation)} "
                f"(expected {' or '.join(sorted(accepted))})" + (f": {text}" if text else ""),
                status=reply.status,
                server_text=text,
            )

    def _call(
        self, method: str, operation: str, body: bytes | BodyFactory | None, *, linking: bool = False
    ) -> HttpReply:
        return self._transport.call(method, self.url(operation), body, linking=linking)


def _csr_body(request: RequestCsr) -> BodyFactory:
    return lambda binding: encode_base64_body(request.der(binding))
