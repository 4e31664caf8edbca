"""Transport repairs for what real SCEP clients send (INTEROP.md), table-driven."""

from __future__ import annotations

import base64
from urllib.parse import quote, unquote_plus

import pytest

from scep.transport import (
    MAX_MESSAGE_BYTES,
    Operation,
    TransportError,
    capabilities_text,
    message_from_body,
    message_from_query,
    parse_operation,
)

# Bytes whose standard base64 contains '+', '/' and needs padding.
MESSAGE = bytes([0x30, 0x82, 0xFB, 0xEF, 0xFF, 0xFE, 0x3E, 0x3F]) * 3 + b"\x01"
STANDARD = base64.b64encode(MESSAGE).decode()


def test_the_sample_exercises_every_repair() -> None:
    assert "+" in STANDARD and "/" in STANDARD and STANDARD.endswith("=")


# Standard base64 that starts and ends with '+', which form decoding turns into spaces.
EDGES = bytes([0xFB, 0xEF, 0xBE, 0x01, 0x02, 0x03, 0xFB, 0xEF, 0xBE])
EDGES_B64 = base64.b64encode(EDGES).decode()


def test_a_plus_at_either_end_survives_form_decoding() -> None:
    assert EDGES_B64.startswith("+") and EDGES_B64.endswith("+")
    assert message_from_query(unquote_plus(EDGES_B64)) == EDGES


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(STANDARD, id="ok/standard"),
        pytest.param(unquote_plus(STANDARD), id="ok/plus-sent-as-space"),
        pytest.param(base64.urlsafe_b64encode(MESSAGE).decode(), id="ok/url-safe"),
        pytest.param(STANDARD.rstrip("="), id="ok/no-padding"),
        pytest.param("\r\n".join(STANDARD[i : i + 8] for i in range(0, len(STANDARD), 8)), id="ok/crlf-folded"),
        pytest.param("\n" + STANDARD + "\r\n", id="ok/surrounding-line-breaks"),
    ],
)
def test_query_message_repairs(value: str) -> None:
    assert message_from_query(value) == MESSAGE


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(None, "missing message", id="fail/missing"),
        pytest.param("   ", "missing message", id="fail/blank"),
        pytest.param("abc$def", "not base64", id="fail/bad-character"),
        pytest.param("QUJDR", "truncated", id="fail/impossible-length"),
        pytest.param("====", "empty message", id="fail/only-padding"),
        pytest.param("A" * (MAX_MESSAGE_BYTES * 2), "too large", id="fail/huge"),
    ],
)
def test_query_message_refusals(value: str | None, text: str) -> None:
    with pytest.raises(TransportError, match=text):
        message_from_query(value)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(MESSAGE, id="ok/der"),
        pytest.param(STANDARD.encode(), id="ok/base64-body"),
        pytest.param(
            quote(STANDARD).encode().replace(b"%2B", b"+").replace(b"%2F", b"/").replace(b"%3D", b"="),
            id="ok/base64-body-unquoted",
        ),
    ],
)
def test_body_message(body: bytes) -> None:
    assert message_from_body(body) == MESSAGE


@pytest.mark.parametrize(
    ("body", "text"),
    [
        pytest.param(b"", "empty request body", id="fail/empty"),
        pytest.param(b"\xff\xfe\x00", "neither DER nor base64", id="fail/binary-not-der"),
        pytest.param(b"\x30" * (MAX_MESSAGE_BYTES + 1), "too large", id="fail/huge"),
        pytest.param(b"hello world!", "not base64", id="fail/text"),
    ],
)
def test_body_refusals(body: bytes, text: str) -> None:
    with pytest.raises(TransportError, match=text):
        message_from_body(body)


@pytest.mark.parametrize(
    ("value", "operation"),
    [
        ("GetCACaps", Operation.GET_CA_CAPS),
        ("getcacaps", Operation.GET_CA_CAPS),
        ("GetCACert", Operation.GET_CA_CERT),
        ("GetNextCACert", Operation.GET_NEXT_CA_CERT),
        ("PKIOperation", Operation.PKI_OPERATION),
        (" PKIOPERATION ", Operation.PKI_OPERATION),
    ],
)
def test_operations(value: str, operation: Operation) -> None:
    assert parse_operation(value) is operation


@pytest.mark.parametrize("value", [None, "", "GetCRL", "x" * 500])
def test_unknown_operations(value: str | None) -> None:
    with pytest.raises(TransportError):
        parse_operation(value)


def test_capabilities_one_per_line() -> None:
    assert capabilities_text(["POSTPKIOperation", "SHA-256"]) == "POSTPKIOperation\nSHA-256\n"
