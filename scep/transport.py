"""SCEP over HTTP (RFC 8894 §4.1), without a web framework: operations and message recovery.

Real clients bend the transport in known ways (INTEROP.md): GET PKIOperation with standard base64
whose '+' arrives as a space, URL-safe base64, line breaks inside the value, missing padding, a POST
body that is base64 instead of DER. Every repair lives here, tested as plain functions.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re

MAX_MESSAGE_BYTES = 256 * 1024
CA_RA_CERT_TYPE = "application/x-x509-ca-ra-cert"
NEXT_CA_CERT_TYPE = "application/x-x509-next-ca-cert"
PKI_MESSAGE_TYPE = "application/x-pki-message"


class Operation(enum.Enum):
    """The `operation` query parameter (RFC 8894 §4.1)."""

    GET_CA_CAPS = "GetCACaps"
    GET_CA_CERT = "GetCACert"
    GET_NEXT_CA_CERT = "GetNextCACert"
    PKI_OPERATION = "PKIOperation"


class TransportError(Exception):
    """The HTTP request cannot carry a SCEP message (answered 400 with this text)."""


_BY_NAME = {op.value.lower(): op for op in Operation}
_NON_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")


def parse_operation(value: str | None) -> Operation:
    """The operation named in the query; names are matched case-insensitively (old clients vary)."""
    if not value:
        raise TransportError("missing operation parameter")
    found = _BY_NAME.get(value.strip().lower())
    if found is None:
        raise TransportError(f"unknown operation {value[:40]!r}")
    return found


def decode_base64_message(text: str) -> bytes:
    """Decode a base64 PKIOperation message as clients really send it.

    '+' turned into ' ' by form decoding is put back; URL-safe '-' and '_' become '+' and '/';
    CR/LF and other whitespace inside the value are dropped; missing '=' padding is restored.
    """
    # Spaces first: a value that starts or ends with '+' arrives with a space there, and stripping
    # it as whitespace would lose a base64 digit.
    cleaned = text.replace(" ", "+").replace("-", "+").replace("_", "/")
    cleaned = re.sub(r"[\r\n\t]", "", cleaned)
    if _NON_BASE64.search(cleaned):
        raise TransportError("message is not base64")
    cleaned = cleaned.rstrip("=")
    if len(cleaned) % 4 == 1:
        raise TransportError("message is not base64 (truncated)")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        data = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise TransportError("message is not base64") from None
    if not data:
        raise TransportError("empty message")
    return data


def message_from_body(body: bytes) -> bytes:
    """The DER message of a POST: the body itself, or its base64 decoding for clients that encode it."""
    if not body:
        raise TransportError("empty request body")
    if len(body) > MAX_MESSAGE_BYTES:
        raise TransportError("message too large")
    if body[:1] == b"\x30":  # a DER SEQUENCE: the normal case
        return body
    try:
        return decode_base64_message(body.decode("ascii"))
    except UnicodeDecodeError:
        raise TransportError("request body is neither DER nor base64") from None


def message_from_query(value: str | None) -> bytes:
    """The DER message of a GET PKIOperation (the `message` parameter)."""
    if value is None or not value.strip():
        raise TransportError("missing message parameter")
    if len(value) > MAX_MESSAGE_BYTES * 4 // 3 + 16:
        raise TransportError("message too large")
    return decode_base64_message(value)


def capabilities_text(capabilities: list[str]) -> str:
    """GetCACaps reply body: one capability a line (RFC 8894 §3.5.2)."""
    return "".join(f"{cap}\n" for cap in capabilities)
