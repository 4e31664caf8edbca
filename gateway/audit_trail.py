"""The audit trail as this gateway configures it: which chain a node writes (`audit.node`), the
optional syslog copy of each record (`audit.syslog`), and the `config.changed` record at start-up.

Every engine the gateway opens for its database comes from `open_store`, so the records of the
server, the CLI and `init` go into the node's chain (shared_ca.storage.audit).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import weakref
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.audit_formats import cef_line, product_version, severity
from gateway.config import ConfigError, GatewayConfig
from shared_ca.kms import redact
from shared_ca.storage.audit import AuditEvent, AuditRecord, configure_audit, default_node
from shared_ca.storage.audit_chain import check_node_name, format_time
from shared_ca.storage.db import create_store_engine, redact_url
from shared_ca.storage.repositories import Storage

log = logging.getLogger("gateway.audit")

SYSLOG_APP = "gateway-audit"
SYSLOG_FACILITY_AUTHPRIV = 10  # RFC 5424 §6.2.1: security/authorization messages (private)
MAX_DATAGRAM = 65_000
# Settings whose values never reach the audit log, not even hashed: a change shows as a keyed tag
# (`_secret_tags`) that nobody without the RA key can test guesses against.
SECRET_SETTINGS = frozenset({"database_url", "keys.kms"})  # keys.kms: the token URI may carry pin-value=
SECRET_PROFILE_KEYS = frozenset({"scep_challenge", "scep_webhook_secret"})
_TAG_MESSAGE = b"scep-est-gateway audit: tags of secret settings, v1"


def audit_node(config: GatewayConfig) -> str:
    """The chain this node writes: `audit.node`, else the host name; ConfigError naming the setting."""
    name = str(config["audit.node"]) or default_node()
    try:
        return check_node_name(name)
    except ValueError as exc:
        hint = "" if config["audit.node"] else " (the host name): set audit.node"
        raise ConfigError(f"audit.node: {exc}{hint}") from None


def open_store(config: GatewayConfig) -> Storage:
    """The repositories of the configured database, on an engine of their own
    (shared_ca.storage.db.create_store_engine) whose audit records go into this node's chain, and to
    syslog when `audit.syslog` says so. Its `engine` is the caller's to dispose of."""
    node = audit_node(config)
    sink = syslog_sink(config, node)
    engine = create_store_engine(config.database_url)
    configure_audit(engine, node, sink)
    return Storage.open(engine)


# -- syslog ---------------------------------------------------------------------------------------


class SyslogSink:
    """Sends each committed audit record to syslog as one CEF line: RFC 5424 over UDP to a server, or
    the local format over a Unix datagram socket (/dev/log). Never blocks and never raises: a datagram
    that cannot be sent is dropped, and the first drop after a success is logged."""

    def __init__(self, target: str, node: str) -> None:
        self.target = target
        self.node = node
        self._family, self._address = _syslog_address(target)
        self._socket: socket.socket | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._failing = False
        self._version = product_version()

    def _sock(self) -> socket.socket:
        with self._lock:
            if self._socket is None or self._pid != os.getpid():  # a forked worker opens its own
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._socket, self._pid = sock, os.getpid()
                weakref.finalize(self, sock.close)
            return self._socket

    def message(self, record: AuditRecord) -> bytes:
        """The datagram of one record."""
        level = severity(record.action)
        syslog_severity = 4 if level >= 7 else 5 if level >= 5 else 6  # warning, notice, info
        priority = SYSLOG_FACILITY_AUTHPRIV * 8 + syslog_severity
        body = cef_line(record, self._version).rstrip("\n")
        if self._family == socket.AF_UNIX:
            return f"<{priority}>{SYSLOG_APP}[{os.getpid()}]: {body}".encode()
        msgid = "".join(c for c in record.action if 33 <= ord(c) <= 126)[:32] or "-"
        header = f"<{priority}>1 {format_time(record.occurred_at)} {record.node} {SYSLOG_APP} {os.getpid()} {msgid} -"
        return f"{header} {body}".encode()

    def send(self, record: AuditRecord) -> None:
        try:
            self._sock().sendto(self.message(record)[:MAX_DATAGRAM], self._address)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "audit records are not reaching syslog at %s (%s): dropped until it answers", self.target, exc
                )
            self._failing = True
            return
        if self._failing:
            log.info("audit records reach syslog at %s again", self.target)
        self._failing = False


def _syslog_address(target: str) -> tuple[socket.AddressFamily, Any]:
    """The socket family and address of `audit.syslog`: udp://HOST:PORT or the path of a Unix datagram
    socket; ConfigError naming the setting."""
    if target.startswith("/"):
        return socket.AF_UNIX, target
    parsed = urlsplit(target)
    if parsed.scheme != "udp" or not parsed.hostname:
        raise ConfigError(f"audit.syslog: {target!r} is neither udp://HOST:PORT nor a socket path such as /dev/log")
    try:
        port = parsed.port or 514
        found = socket.getaddrinfo(parsed.hostname, port, type=socket.SOCK_DGRAM)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"audit.syslog: cannot resolve {target!r}: {exc}") from None
    family, _type, _proto, _name, address = found[0]
    return family, address


def syslog_sink(config: GatewayConfig, node: str) -> SyslogSink | None:
    target = str(config["audit.syslog"]).strip()
    return SyslogSink(target, node) if target else None


# -- configuration changes ------------------------------------------------------------------------


def config_snapshot(config: GatewayConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """The effective configuration as (settings that may be shown, secret settings): every setting and
    every profile key (`profiles.NAME.KEY`); a secret shows as '<set>' (the database URL with its
    password masked) and is returned apart."""
    public: dict[str, Any] = {}
    secret: dict[str, str] = {}
    for key, value in sorted(config.values.items()):
        if key in SECRET_SETTINGS:
            public[key] = (redact(value) if key == "keys.kms" else redact_url(value)) if value else ""
            if value:
                secret[key] = str(value)
        else:
            public[key] = value
    for name, profile in sorted(config.profiles.items()):
        for field in dataclasses.fields(profile):
            key, value = f"profiles.{name}.{field.name}", getattr(profile, field.name)
            if field.name in SECRET_PROFILE_KEYS:
                public[key] = "<set>" if value else ""
                if value:
                    secret[key] = str(value)
            else:
                public[key] = list(value) if isinstance(value, tuple) else value
    return json.loads(json.dumps(public, default=str)), secret


def _is_secret(name: str) -> bool:
    return name in SECRET_SETTINGS or (name.startswith("profiles.") and name.rsplit(".", 1)[1] in SECRET_PROFILE_KEYS)


def config_digest(public: dict[str, Any], tags: dict[str, str]) -> str:
    """Hex SHA-256 over the canonical JSON of the shown settings and the secrets' tags."""
    canonical = json.dumps({"settings": public, "secret_tags": tags}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _tag_key(ra_key: rsa.RSAPrivateKey) -> bytes:
    """The key of the secrets' tags: a hash of the RA key's (deterministic) PKCS#1 v1.5 signature of a
    fixed message, so it works for a key that cannot be exported; only its holder can compute it."""
    signature = ra_key.sign(_TAG_MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    return hashlib.sha256(signature).digest()


def _secret_tags(secret: dict[str, str], key: bytes) -> dict[str, str]:
    return {name: hmac.new(key, value.encode(), "sha256").hexdigest() for name, value in secret.items()}


def config_change(
    config: GatewayConfig, ra_key: rsa.RSAPrivateKey, previous: AuditRecord | None
) -> dict[str, Any] | None:
    """The detail of the `config.changed` record the effective configuration calls for, given the node's
    last one; None when nothing changed. It names each changed key with its old and new value, a secret
    by name only."""
    public, secret = config_snapshot(config)
    key = _tag_key(ra_key)
    tags = _secret_tags(secret, key)
    key_id = hashlib.sha256(key).hexdigest()[:16]
    digest = config_digest(public, tags)
    detail: dict[str, Any] = {"config_sha256": digest, "source": str(config.source or ""), "settings": public}
    detail.update({"secret_tags": tags, "tag_key": key_id})
    if previous is None:
        return {**detail, "first": True, "changed": {}}
    before = previous.detail
    if before.get("config_sha256") == digest and before.get("tag_key") == key_id:
        return None
    old_settings: dict[str, Any] = before.get("settings", {})
    old_tags: dict[str, str] = before.get("secret_tags", {})
    comparable = before.get("tag_key") == key_id
    changed: dict[str, Any] = {}
    for name in sorted(set(old_settings) | set(public)):
        old, new = old_settings.get(name), public.get(name)
        if old != new:
            changed[name] = {"from": old, "to": new}
        elif _is_secret(name) and comparable and old_tags.get(name) != tags.get(name):
            changed[name] = {"secret": "changed"}
    if not comparable:
        detail["note"] = "the RA key changed: secret values could not be compared"
    if not changed and comparable:
        return None
    return {**detail, "changed": changed}


def record_config_change(storage: Storage, config: GatewayConfig, ra_key: rsa.RSAPrivateKey, now: dt.datetime) -> bool:
    """Write `config.changed` when the effective configuration differs from the one this node's last such
    record holds (or there is none); whether it wrote one."""
    previous = storage.audit.last_of_node(audit_node(config), "config.changed")
    detail = config_change(config, ra_key, previous)
    if detail is None:
        return False
    storage.audit.record_audit(AuditEvent("serve", "config.changed", detail=detail), now)
    changed = ", ".join(detail["changed"]) or "first start"
    log.info("configuration recorded in the audit trail (config.changed: %s)", changed)
    return True
