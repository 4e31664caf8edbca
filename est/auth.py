"""EST authentication (RFC 7030 §3.2.3, §3.3.2): who is asking, from HTTP Basic credentials, a TLS
client certificate, or a client certificate a trusted TLS-terminating proxy passed on.

Sans-I/O apart from the user and certificate lookups the authenticator makes through the store: no
Flask; the view hands in the Authorization header, the peer address and headers, and the TLS client
certificate it found.

Precedence (`EstAuthenticator.authenticate`):

1. A presented client certificate is checked first, with `shared_ca.trust.recognise`: one this
   CA issued, or one a legacy CA issued while that CA's migration window is open. A certificate
   the store does not know is refused (403, "the client certificate was not issued by this CA or a
   trusted legacy CA"); a revoked, expired or not yet valid one, or one whose legacy window is
   over, is refused (403) too. A bad certificate is never ignored in favour of a password.
2. When Basic credentials come with the certificate they must be valid as well: both are
   checked (the user by the rules of 3), and a wrong password fails (401) even with a good
   certificate. The certificate stays
   the identity (kind 'certificate'); the user is attached to the principal.
3. Basic credentials alone: an unknown user or a wrong password is 401 with one public message for
   both (no user enumeration; an unknown user costs one scrypt, like a wrong password). Only once
   the password proved who is asking does a 403 say which rule refused it: the user is disabled,
   expired or used up. (`used_up_ok`, asked of a used-up user, lets it through for a request that spends no
   use, such as collecting an approved certificate.) Which labels and device a user may enroll is
   not decided here but by shared_ca.authorization, like every other "may they have it".
4. Neither: 401 "authentication required" (sent with `WWW-Authenticate: Basic realm="EST"`).

Uses are not spent here: the service spends one at issuance (`EstUsers.consume_use`, one
conditional UPDATE) and gives it back (`refund_use`) when issuance is then refused. Every refusal
carries its cause in the exception's `detail`, for the log; the public message names only the
category.

A client certificate from a proxy header (`certificate_from_proxy`) counts only when the peer
address is in the configured trusted-proxy networks and the proxy says its verification succeeded
(nginx `$ssl_client_verify` = SUCCESS); from any other peer the header is ignored.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hmac
import ipaddress
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import unquote

from cryptography import x509

from shared_ca.authority import fingerprint
from shared_ca.csr import UNDECODABLE
from shared_ca.errors import PolicyDenied, Unauthorized
from shared_ca.storage.est_users import (
    EstUserRecord,
    check_secret,
    hash_generated_secret,
    hash_password,
    new_generated_secret,
    secret_scheme,
)
from shared_ca.trust import CertificateByFingerprint, IssuerById, RecognisedCertificate, recognise

__all__ = [
    "BASIC_REALM",
    "EstAuthenticator",
    "EstCredentials",
    "EstPrincipal",
    "ProxyNetwork",
    "VerifiedPasswords",
    "certificate_from_proxy",
    "hash_generated_secret",
    "hash_password",
    "new_generated_secret",
    "parse_basic",
    "parse_trusted_proxies",
    "peer_is_trusted",
    "verify_secret",
]

BASIC_REALM = 'Basic realm="EST"'
"""The WWW-Authenticate value of every EST 401 (RFC 7617 §2)."""

MAX_AUTHORIZATION = 4096  # characters of an Authorization header we decode
ProxyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CERTIFICATE_SOURCES = ("none", "tls", "proxy")


# -- secrets --------------------------------------------------------------------------------------


class VerifiedPasswords:
    """A bounded, thread-safe LRU memo of successful scrypt verifications in this process.

    Why it is safe: `check_secret(stored, presented)` is a pure function of its two strings, and
    the memo is keyed by both: the stored hash string itself (a changed password has a new salt,
    so a new string, and misses) and HMAC-SHA256 of the presented password under a random key made
    at start-up that never leaves the process (the memo never holds a password, nor a hash of one
    that could be attacked offline). It remembers only successes: every wrong guess still costs a
    full scrypt, so guessing is not made cheaper, and only a holder of the right password can add
    or refresh an entry. It holds no state that must be consistent across workers: whether a user
    is disabled, expired, used up or bound to a label is read from the database row on every
    request and never memoised. Bounded (LRU), so its memory is fixed.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._lock = threading.Lock()

    def _entry(self, stored: str, presented: str) -> tuple[str, bytes]:
        return stored, hmac.digest(self._key, presented.encode("utf-8"), "sha256")

    def verify(self, stored: str, presented: str, check: Callable[[str, str], bool] = check_secret) -> bool:
        """`check(stored, presented)`, answered from the memo when this pair succeeded before."""
        entry = self._entry(stored, presented)
        with self._lock:
            if entry in self._entries:
                self._entries.move_to_end(entry)
                return True
        if not check(stored, presented):
            return False
        with self._lock:
            self._entries[entry] = None
            self._entries.move_to_end(entry)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_VERIFIED = VerifiedPasswords()


def verify_secret(stored: str, presented: str, *, memo: VerifiedPasswords | None = _VERIFIED) -> bool:
    """Whether `presented` matches the stored hash (constant-time); unknown scheme → False, logged.

    scrypt successes are memoised per process (`VerifiedPasswords`); the fast sha256 scheme of
    generated secrets needs no memo.
    """
    if memo is None or secret_scheme(stored) != "scrypt":
        return check_secret(stored, presented)
    return memo.verify(stored, presented)


@functools.cache
def _decoy_hash() -> str:
    """A scrypt hash no password matches: an unknown user costs what a wrong password costs."""
    return hash_password(secrets.token_urlsafe(32))


# -- HTTP Basic (RFC 7617) ------------------------------------------------------------------------


def parse_basic(authorization_header: str | None) -> tuple[str, str] | None:
    """(user-id, password) of a Basic Authorization header; None when absent or another scheme.

    Unauthorized when it says Basic but cannot be read: bad base64, no ':', not UTF-8, no user-id.
    """
    if authorization_header is None or not authorization_header.strip():
        return None
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    token = token.strip()
    if not token or len(token) > MAX_AUTHORIZATION:
        raise Unauthorized("the Basic credentials cannot be read", detail="empty or oversized Basic token")
    try:
        decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise Unauthorized(
            "the Basic credentials are not base64 of UTF-8 'user:password'", detail=f"Basic token: {exc}"
        ) from None
    user_id, colon, password = decoded.partition(":")
    if not colon:
        raise Unauthorized("the Basic credentials have no ':' between user name and password")
    if not user_id:
        raise Unauthorized("the Basic credentials have no user name")
    return user_id, password


# -- client certificate from a TLS-terminating proxy ----------------------------------------------


def parse_trusted_proxies(text: str) -> tuple[ProxyNetwork, ...]:
    """Comma-separated IP addresses or CIDR networks; ValueError naming the entry that is neither."""
    networks: list[ProxyNetwork] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as exc:
            raise ValueError(f"trusted proxy {entry!r} is not an IP address or CIDR network: {exc}") from None
    return tuple(networks)


def peer_is_trusted(peer_address: str | None, trusted: Sequence[ProxyNetwork]) -> bool:
    """Whether an address (as a socket or X-Forwarded-For gives it) is in one of the trusted networks."""
    if not trusted:
        return False  # no proxies configured (the usual case): nothing to parse
    try:
        address = ipaddress.ip_address((peer_address or "").strip().strip("[]"))
    except ValueError:
        return False  # a UNIX socket or nothing: not a listed proxy
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d
    return any(address in network for network in trusted)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


def _certificate_der(value: str) -> bytes:
    text = value.strip()
    if "%" in text:
        text = unquote(text)  # nginx $ssl_client_escaped_cert; unquote, not unquote_plus: '+' is base64
    match = _PEM_CERTIFICATE.search(text)
    body = match.group(1) if match else text  # PEM (newlines possibly folded to spaces), or base64 DER
    return base64.b64decode("".join(body.split()), validate=True)


def certificate_from_proxy(
    peer_address: str,
    headers: Mapping[str, str],
    trusted: Sequence[ProxyNetwork],
    cert_header: str,
    verify_header: str,
) -> x509.Certificate | None:
    """The client certificate a trusted TLS-terminating proxy passed on; None when there is none to take.

    None when the peer is not in `trusted` (the headers are anyone's to forge; the caller logs
    that they were ignored), when there is no certificate header, or when the verify header is not
    SUCCESS (nginx `$ssl_client_verify`: NONE, FAILED:reason). The certificate header may hold
    URL-encoded PEM (nginx `$ssl_client_escaped_cert`), PEM, or base64 DER. Unauthorized when a
    trusted proxy sends something that is none of these.
    """
    if not trusted or not peer_is_trusted(peer_address, trusted):
        return None
    value = _header(headers, cert_header)
    if value is None or not value.strip():
        return None
    if (_header(headers, verify_header) or "").strip() != "SUCCESS":
        return None
    try:
        return x509.load_der_x509_certificate(_certificate_der(value))
    except (ValueError, binascii.Error) as exc:
        raise Unauthorized(
            "the client certificate passed on by the TLS proxy cannot be read",
            detail=f"header {cert_header} from proxy {peer_address}: {exc}",
        ) from None


def _subject_text(certificate: x509.Certificate) -> str:
    """The certificate's subject for the log; a placeholder when a hostile one cannot be decoded
    (cryptography decodes names lazily, so a certificate that loaded may still fail here)."""
    try:
        return certificate.subject.rfc4514_string()
    except UNDECODABLE:
        return "<undecodable subject>"


# -- the authenticator ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EstCredentials:
    """What a request presented: Basic (user-id, password), a client certificate and where it came from."""

    basic: tuple[str, str] | None = field(default=None, repr=False)
    client_certificate: x509.Certificate | None = None
    certificate_source: str = "none"  # 'tls' (our listener), 'proxy' (trusted header) or 'none'

    def __post_init__(self) -> None:
        if self.certificate_source not in CERTIFICATE_SOURCES:
            raise ValueError(f"unknown certificate source {self.certificate_source!r}")

    def __repr__(self) -> str:  # never the password
        user = self.basic[0] if self.basic else None
        subject = _subject_text(self.client_certificate) if self.client_certificate else None
        return f"EstCredentials(user={user!r}, certificate={subject!r}, source={self.certificate_source!r})"


@dataclass(frozen=True)
class EstPrincipal:
    """Who is asking: a certificate holder (with the Basic user, when one also logged in) or a Basic user."""

    kind: Literal["basic", "certificate"]
    name: str  # the Basic user name, or the certificate's subject
    user: EstUserRecord | None
    certificate: RecognisedCertificate | None


class UserLookup(Protocol):
    def est_user(self, name: str) -> EstUserRecord | None: ...


class AuthStorage(Protocol):
    """What EST authentication reads (shared_ca.storage): users, and presented certificates with their issuers."""

    @property
    def est_users(self) -> UserLookup: ...
    @property
    def certificates(self) -> CertificateByFingerprint: ...
    @property
    def issuers(self) -> IssuerById: ...


class EstAuthenticator:
    """Turns EstCredentials into an EstPrincipal, or raises Unauthorized (401) / PolicyDenied (403)."""

    def __init__(self, storage: AuthStorage, clock: Callable[[], dt.datetime]) -> None:
        self.storage = storage
        self.clock = clock
        self.users = storage.est_users

    def authenticate(
        self, credentials: EstCredentials, *, used_up_ok: Callable[[], bool] | None = None
    ) -> EstPrincipal:
        """Who presented `credentials`; see the module docstring.

        `used_up_ok`, asked only of a user with no uses left, lets it through for a request that spends none: the
        retry that collects a certificate whose use was spent when it was approved.
        """
        now = self.clock()
        recognised = None
        if credentials.client_certificate is not None:
            recognised = self._certificate(credentials.client_certificate, credentials.certificate_source, now)
        user = None
        if credentials.basic is not None:
            user = self._basic(credentials.basic, now, used_up_ok)
        if recognised is not None:
            return EstPrincipal("certificate", recognised.record.subject, user, recognised)
        if user is not None:
            return EstPrincipal("basic", user.name, user, None)
        raise Unauthorized("authentication required", detail="no Basic credentials and no client certificate")

    def _certificate(self, certificate: x509.Certificate, source: str, now: dt.datetime) -> RecognisedCertificate:
        described = f"client certificate {_subject_text(certificate)!r} serial {certificate.serial_number:x}"
        try:
            recognised = recognise(self.storage, certificate, now)
        except PolicyDenied as exc:
            raise PolicyDenied(
                exc.public_message.replace("the certificate", "the client certificate", 1),
                detail=f"{described} (from {source}): {exc.detail}",
            ) from None
        if recognised is None:
            raise PolicyDenied(
                "the client certificate was not issued by this CA or a trusted legacy CA",
                detail=f"{described} (from {source}, SHA-256 {fingerprint(certificate)}) is not in the store",
            )
        return recognised

    def _basic(self, basic: tuple[str, str], now: dt.datetime, used_up_ok: Callable[[], bool] | None) -> EstUserRecord:
        name, password = basic
        user = self.users.est_user(name)
        if user is None:
            check_secret(_decoy_hash(), password)
            raise Unauthorized("wrong user name or password", detail=f"no EST user named {name!r}")
        if not verify_secret(user.secret_hash, password):
            raise Unauthorized("wrong user name or password", detail=f"wrong password for EST user {name!r}")
        status = user.status(now)
        if status != "active" and not (status == "used up" and used_up_ok is not None and used_up_ok()):
            raise PolicyDenied(f"the EST user is {status}", detail=f"EST user {name!r} is {status}")
        return user
