"""Audit records as text for other systems: JSON Lines, and ArcSight's Common Event Format (CEF).

CEF is `CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Extension`. In the seven header
fields a backslash and a pipe are escaped with a backslash, and a line break (which would end the
record) becomes a space; in the extension's values a backslash and '=' are escaped, and line breaks
become the two characters \\n or \\r. The signature ID is the action (`certificate.issued`).
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
from typing import Any

from shared_ca.storage.audit import AuditRecord, canonical_detail
from shared_ca.storage.audit_chain import format_time

CEF_VENDOR = "scep-est-gateway"
CEF_PRODUCT = "gateway"

# CEF severity (0-10) by action; anything else is 3. Acts that change who may obtain what rank highest.
_SEVERITY = {
    "request.refused": 5,
    "certificate.revoked": 5,
    "config.changed": 6,
    "admin_token.created": 7,
    "admin_token.disabled": 6,
    "admin_token.used": 4,
    "est_user.created": 6,
    "est_user.disabled": 5,
    "scep.challenge.created": 6,
    "scep.challenge.removed": 5,
    "issuer.added": 8,
    "issuer.trust_window": 7,
    "issuer.retired": 7,
    "device_group.policy": 6,
    "request.approved": 5,
    "request.rejected": 4,
}


def severity(action: str) -> int:
    """The CEF severity (0-10) of an action."""
    return _SEVERITY.get(action, 3)


def record_object(record: AuditRecord) -> dict[str, Any]:
    """Every field of a record, the chain's included, as JSON values (time in UTC with microseconds)."""
    return {
        "id": record.id,
        "node": record.node,
        "seq": record.seq,
        "occurred_at": format_time(record.occurred_at),
        "actor": record.actor,
        "action": record.action,
        "issuer_id": record.issuer_id,
        "serial_hex": record.serial_hex,
        "detail": record.detail,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def jsonl_line(record: AuditRecord) -> str:
    """One JSON object on one line (no line break inside: JSON escapes them), with its newline."""
    return json.dumps(record_object(record), sort_keys=True, ensure_ascii=False) + "\n"


def _header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _extension(value: str) -> str:
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def product_version() -> str:
    """The installed gateway's version, for the CEF header."""
    try:
        return importlib.metadata.version("scep-est-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cef_line(record: AuditRecord, version: str) -> str:
    """The record as one CEF line, with its newline."""
    name = record.action.replace(".", " ").replace("_", " ")
    header = [
        "CEF:0",
        _header(CEF_VENDOR),
        _header(CEF_PRODUCT),
        _header(version),
        _header(record.action),
        _header(name),
        str(severity(record.action)),
    ]
    extension: list[tuple[str, str]] = [
        ("rt", str(int(record.occurred_at.timestamp() * 1000))),
        ("dvchost", record.node),
        ("externalId", str(record.id)),
        ("cn1", str(record.seq)),
        ("cn1Label", "seq"),
        ("suser", record.actor),
        ("act", record.action),
    ]
    if record.issuer_id is not None:
        extension += [("cn2", str(record.issuer_id)), ("cn2Label", "issuerId")]
    if record.serial_hex is not None:
        extension += [("cs1", record.serial_hex), ("cs1Label", "serial")]
    client = record.detail.get("client")
    if isinstance(client, str) and _is_address(client):
        extension.append(("src", client))
    extension += [
        ("cs2", record.hash),
        ("cs2Label", "hash"),
        ("cs3", record.prev_hash),
        ("cs3Label", "prevHash"),
        ("msg", canonical_detail(record.detail)),
    ]
    text = " ".join(f"{key}={_extension(value)}" for key, value in extension)
    return "|".join(header) + "|" + text + "\n"


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
