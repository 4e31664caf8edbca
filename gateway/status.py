"""What `gateway status` reports: the listeners, the database and its schema, the certificates' expiry,
the approval queue and the trust revision of one node, and which of them need attention.

It writes nothing: a missing SQLite file is reported, not created. Each part is
checked on its own, so an unreachable database still leaves the listeners and certificates reported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import json
import ssl
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.ca_slots import slot_roles
from gateway.config import GatewayConfig, parse_hostport
from gateway.runtime import issuer_revision
from shared_ca.errors import CAError
from shared_ca.keys import load_certificates
from shared_ca.storage.db import (
    create_store_engine,
    current_revision,
    database_failure,
    head_revision,
    redact_url,
)
from shared_ca.storage.issuers import IssuerRecord
from shared_ca.storage.repositories import Storage

WARN_DAYS = 30  # a certificate expiring sooner needs attention
PROBE_TIMEOUT_SECONDS = 5.0  # per listener request, and for the database connection
CERTIFICATES = (  # (role, path setting); the next CA and RA only once `gateway ca rollover` wrote them
    ("ca", "ca.cert"),
    ("ra", "ra.cert"),
    ("ra encryption", "ra.encryption_cert"),  # only with separate RA keys
    ("tls", "tls.cert"),
    ("next ca", "next_ca.cert"),
    ("next ra", "next_ra.cert"),
)
_OPTIONAL = frozenset({"ra encryption", "next ca", "next ra"})


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, its state, the detail, whether it needs attention."""

    check: str
    state: str
    detail: str
    attention: bool = False


@dataclass(frozen=True)
class ListenerStatus:
    name: str  # "http" or "https"
    address: str  # as configured (listen.http, listen.https)
    up: bool
    detail: str  # "/healthz 200", or why it did not answer


@dataclass(frozen=True)
class ReadinessStatus:
    ready: bool | None  # None: no listener answered, so nobody was asked
    reason: str
    asked: str | None = None  # the listener whose /readyz answered


@dataclass(frozen=True)
class DatabaseStatus:
    kind: str  # sqlite, postgresql
    url: str  # password masked
    reachable: bool
    error: str | None
    schema_current: str | None
    schema_head: str

    @property
    def schema_at_head(self) -> bool:
        return self.reachable and self.schema_current == self.schema_head


@dataclass(frozen=True)
class CertificateStatus:
    role: str
    path: str
    subject: str | None
    not_after: str | None  # ISO 8601, UTC
    days_left: int | None  # whole days, towards zero: 0 on its last day, negative once expired
    expired: bool = False
    error: str | None = None


@dataclass(frozen=True)
class ApprovalCounts:
    pending: int  # waiting for an administrator (`gateway request list`)
    deferred: int  # held by admission control, issued in the background


@dataclass(frozen=True)
class TrustStatus:
    revision: str  # digest of what the TLS listener and the workers follow (gateway.runtime.issuer_revision)
    issuers: dict[str, int]  # issuers by kind: ca, legacy, next, retired
    legacy_trusted: int  # legacy CAs whose trust window is open now
    legacy_trust_ends: str | None  # the earliest end of an open window, ISO 8601


@dataclass(frozen=True)
class StatusReport:
    listeners: list[ListenerStatus]
    readiness: ReadinessStatus
    database: DatabaseStatus
    certificates: list[CertificateStatus]
    approvals: ApprovalCounts | None  # None when the database could not be read
    trust: TrustStatus | None
    warn_days: int
    unread: str | None = None  # why approvals and trust were not read
    checked_at: str = field(default="")

    def findings(self) -> list[Finding]:
        """The report as lines, in the order an operator reads them."""
        found = [
            Finding(f"listener {s.name}", "up" if s.up else "down", f"{s.address} ({s.detail})", attention=not s.up)
            for s in self.listeners
        ]
        found.append(_readiness_finding(self.readiness))
        found.extend(_database_findings(self.database))
        found.extend(_certificate_finding(c, self.warn_days) for c in self.certificates)
        if self.approvals is None:
            found.append(Finding("approvals", "unknown", self.unread or "not read"))
        else:
            found.append(
                Finding("approvals", f"{self.approvals.pending} pending", f"{self.approvals.deferred} deferred")
            )
        found.append(_trust_finding(self.trust, self.unread))
        return found

    def attention(self) -> list[str]:
        """One line per part that needs attention; empty when all is well."""
        return [f"{f.check}: {f.state}" for f in self.findings() if f.attention]

    def as_json(self) -> dict[str, Any]:
        attention = self.attention()
        data: dict[str, Any] = {"ok": not attention, "attention": attention, **asdict(self)}
        data["database"]["schema_at_head"] = self.database.schema_at_head
        return data


def _readiness_finding(readiness: ReadinessStatus) -> Finding:
    if readiness.ready is None:  # a listener down is its own finding; a /readyz that failed is one
        return Finding("readiness", "unknown", readiness.reason, attention=readiness.asked is not None)
    if readiness.ready:
        return Finding("readiness", "ready", f"/readyz on {readiness.asked}")
    return Finding("readiness", "not ready", readiness.reason, attention=True)


def _database_findings(db: DatabaseStatus) -> list[Finding]:
    if not db.reachable:
        return [
            Finding("database", "unreachable", f"{db.url}: {db.error}", attention=True),
            Finding("schema", "unknown", f"this version needs {db.schema_head}"),  # the database line says why
        ]
    schema = (
        Finding("schema", "current", db.schema_head)
        if db.schema_at_head
        else Finding(
            "schema",
            "not current",
            f"database at {db.schema_current or 'none'}, this version needs {db.schema_head}: run `gateway db upgrade`",
            attention=True,
        )
    )
    return [Finding("database", "ok", f"{db.kind} {db.url}"), schema]


def _certificate_finding(cert: CertificateStatus, warn_days: int) -> Finding:
    check = f"{cert.role} certificate"
    if cert.error is not None or cert.days_left is None:
        return Finding(check, "unreadable", cert.error or cert.path, attention=True)
    until = f"{cert.subject}, until {(cert.not_after or '')[:10]}"
    if cert.expired:
        return Finding(check, "expired", f"{until} (expired {-cert.days_left} days ago)", attention=True)
    detail = f"{until} ({cert.days_left} days)"
    if cert.days_left < warn_days:
        return Finding(check, "expiring", detail, attention=True)
    return Finding(check, "ok", detail)


def _trust_finding(trust: TrustStatus | None, unread: str | None) -> Finding:
    if trust is None:
        return Finding("trust", "unknown", unread or "not read")
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(trust.issuers.items()))
    legacy = f"; {trust.legacy_trusted} legacy CA(s) trusted" if trust.legacy_trusted else ""
    until = f" until {trust.legacy_trust_ends}" if trust.legacy_trust_ends else ""
    return Finding("trust", f"revision {trust.revision}", f"issuers: {kinds}{legacy}{until}")


# -- collecting ------------------------------------------------------------------------------------


def collect(
    config: GatewayConfig,
    *,
    now: dt.datetime | None = None,
    warn_days: int = WARN_DAYS,
    timeout: float = PROBE_TIMEOUT_SECONDS,
) -> StatusReport:
    """Check every part of the node `config` describes; never raises for a part that fails."""
    now = now or dt.datetime.now(dt.UTC)
    listeners = [probe_listener(name, config[f"listen.{name}"], timeout) for name in ("http", "https")]
    readiness = probe_readiness(config, listeners, timeout)
    certificates = [
        certificate_status(role, config.path(key), now)
        for role, key in CERTIFICATES
        if role not in _OPTIONAL or (config[key] and config.path(key).is_file())
    ]
    database, storage = open_database(config.database_url, timeout)
    approvals: ApprovalCounts | None = None
    trust: TrustStatus | None = None
    unread: str | None = None
    if storage is None:
        unread = "the database is unreachable"
    else:
        try:
            if database.schema_at_head:
                approvals, trust = read_queue_and_trust(storage, now)
                certificates = named_by_role(config, certificates, storage.issuers.list_issuers(), now)
            else:
                unread = "the schema is not current"
        except Exception as exc:
            failure = exc if isinstance(exc, CAError) else database_failure(exc)
            if failure is None:
                raise
            unread = f"cannot read the database: {failure.detail or failure.public_message}"
        finally:
            storage.db.dispose()
    return StatusReport(
        listeners, readiness, database, certificates, approvals, trust, warn_days, unread, now.isoformat()
    )


def named_by_role(
    config: GatewayConfig, certificates: list[CertificateStatus], issuers: list[IssuerRecord], now: dt.datetime
) -> list[CertificateStatus]:
    """The CA and RA lines named by what the CA of their slot is now (gateway.ca_slots.slot_roles): after
    an activation the issuing CA's files are the `next_ca.*` ones, and its line says "ca", the replaced
    CA's "previous ca". Unchanged when the database names no issuing CA."""
    try:
        roles = slot_roles(config, issuers, now)
    except CAError:
        return certificates
    by_path = {}
    for key in roles:
        base = "ca" if key.endswith("ca.cert") else "ra"
        by_path[str(config.path(key))] = f"{roles[key]} {base}".strip()
    return [replace(c, role=by_path.get(c.path, c.role)) for c in certificates]


def _probe_host(hostport: str) -> tuple[str, int]:
    """Where to reach a listener configured on `hostport` from this host (a wildcard: loopback)."""
    host, port = parse_hostport(hostport)
    if host == "0.0.0.0":  # noqa: S104 - reading the configuration, not binding
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def _probe_context() -> ssl.SSLContext:
    # A liveness probe of our own listener, which sends nothing secret: the listener's certificate may
    # come from any CA and name any host, and its expiry is reported from the file.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def _connection(name: str, hostport: str, timeout: float) -> Iterator[http.client.HTTPConnection]:
    host, port = _probe_host(hostport)
    conn: http.client.HTTPConnection
    if name == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=_probe_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        yield conn
    finally:
        conn.close()


def _get(name: str, hostport: str, path: str, timeout: float) -> tuple[int, bytes]:
    with _connection(name, hostport, timeout) as conn:
        conn.request("GET", path, headers={"User-Agent": "gateway-status"})
        response = conn.getresponse()
        return response.status, response.read(64 * 1024)


def _failure_text(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def probe_listener(name: str, hostport: str, timeout: float) -> ListenerStatus:
    """GET /healthz on one listener: up when it answers 200 with the gateway's liveness body."""
    try:
        status, body = _get(name, hostport, "/healthz", timeout)
    except (OSError, http.client.HTTPException) as exc:
        return ListenerStatus(name, hostport, False, _failure_text(exc))
    if status != 200:
        return ListenerStatus(name, hostport, False, f"/healthz answered {status}")
    try:
        alive = json.loads(body).get("status") == "alive"
    except (ValueError, AttributeError):
        alive = False
    if not alive:
        return ListenerStatus(name, hostport, False, "/healthz answered, but not as the gateway does")
    return ListenerStatus(name, hostport, True, "/healthz 200")


def probe_readiness(config: GatewayConfig, listeners: list[ListenerStatus], timeout: float) -> ReadinessStatus:
    """GET /readyz on the first listener that is up (the answer covers both listeners and the database)."""
    for listener in listeners:
        if not listener.up:
            continue
        try:
            status, body = _get(listener.name, config[f"listen.{listener.name}"], "/readyz", timeout)
        except (OSError, http.client.HTTPException) as exc:
            return ReadinessStatus(None, f"/readyz on {listener.name}: {_failure_text(exc)}", listener.name)
        try:
            answer = json.loads(body)
            reason = str(answer.get("reason", "")) if isinstance(answer, dict) else ""
        except ValueError:
            reason = ""
        if status == 200:
            return ReadinessStatus(True, "", listener.name)
        return ReadinessStatus(False, reason or f"/readyz answered {status}", listener.name)
    return ReadinessStatus(None, "no listener answered")


def certificate_status(role: str, path: Path, now: dt.datetime) -> CertificateStatus:
    """The first certificate of a PEM file: subject, end of validity, whole days left."""
    try:
        cert = load_certificates(path)[0]
    except CAError as exc:
        return CertificateStatus(role, str(path), None, None, None, error=exc.public_message)
    not_after = cert.not_valid_after_utc
    left = (not_after - now).total_seconds()
    return CertificateStatus(
        role,
        str(path),
        cert.subject.rfc4514_string(),
        not_after.isoformat(),
        int(left / 86400),
        expired=left <= 0,
    )


def open_database(url: str, timeout: float) -> tuple[DatabaseStatus, Storage | None]:
    """Connect and read the schema revision; the storage (for the caller to dispose) when it answered."""
    kind = url.partition(":")[0].partition("+")[0]  # sqlite or postgresql: the configuration allows no other
    shown = redact_url(url)
    head = head_revision()
    connect_args = {"connect_timeout": max(1, round(timeout))} if kind == "postgresql" else None
    engine = create_store_engine(url, pool_size=1, pool_timeout=timeout, connect_args=connect_args)  # no connection yet
    missing = _missing_sqlite_file(engine.url.database) if kind == "sqlite" else None
    if missing is not None:
        engine.dispose()
        return DatabaseStatus(kind, shown, False, missing, None, head), None
    try:
        current = current_revision(engine)
    except CAError as exc:
        engine.dispose()
        cause = " ".join((exc.detail or exc.public_message).split())
        return DatabaseStatus(kind, shown, False, cause, None, head), None
    return DatabaseStatus(kind, shown, True, None, current, head), Storage.open(engine)


def _missing_sqlite_file(database: str | None) -> str | None:
    """Why a SQLite database cannot be opened without creating it, or None (connecting would create the
    file, and a status check must leave nothing behind)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    if not path.is_file():
        return f"the database file {path} does not exist (was `gateway init` run with this data directory?)"
    return None


def read_queue_and_trust(storage: Storage, now: dt.datetime) -> tuple[ApprovalCounts, TrustStatus]:
    """Pending and deferred approvals, and what the nodes trust now (from the issuers table)."""
    pending = len(storage.approvals.list_approvals(status="pending", deferred=False))
    deferred = len(storage.approvals.list_approvals(status="pending", deferred=True))
    return ApprovalCounts(pending, deferred), trust_status(storage.issuers.list_issuers(), now)


def trust_status(issuers: list[IssuerRecord], now: dt.datetime) -> TrustStatus:
    """The trust revision: a digest of the issuers' ids, kinds, certificates and trust windows, the
    same inputs a running node follows to rebuild its gateway and its TLS trust (trust-watch)."""
    canonical = "\n".join(
        f"{issuer_id}|{kind}|{sha256}|{_utc(until).isoformat() if until else '-'}"
        + (f"|{_utc(activates).isoformat()}" if activates else "")  # a scheduled CA activation
        for issuer_id, kind, sha256, until, activates in issuer_revision(issuers)
    )
    by_kind: dict[str, int] = {}
    for issuer in issuers:
        by_kind[issuer.kind] = by_kind.get(issuer.kind, 0) + 1
    open_windows = [
        _utc(i.trust_until) for i in issuers if i.kind == "legacy" and i.trust_until and _utc(i.trust_until) > now
    ]
    return TrustStatus(
        revision=hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12],
        issuers=by_kind,
        legacy_trusted=len(open_windows),
        legacy_trust_ends=min(open_windows).isoformat() if open_windows else None,
    )


def _utc(when: dt.datetime) -> dt.datetime:
    """SQLite hands timestamps back without a zone; they are UTC."""
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
