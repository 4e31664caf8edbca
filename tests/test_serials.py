"""Serial numbers: random, positive, below 2**159, at most 20 DER octets; the text forms operators type."""

from __future__ import annotations

import pytest
from asn1crypto.core import Integer

from shared_ca.serials import SERIAL_LIMIT, new_serial, parse_serial, serial_hex


def _der_content_length(value: int) -> int:
    """Octets of the DER INTEGER contents (what RFC 5280 §4.1.2.2 limits to 20)."""
    return len(Integer(value).contents)


def test_new_serials_are_positive_below_limit_and_fit_20_octets() -> None:
    serials = [new_serial() for _ in range(2000)]
    assert all(1 <= s < SERIAL_LIMIT for s in serials)
    assert SERIAL_LIMIT == 2**159
    assert max(_der_content_length(s) for s in serials) <= 20
    assert len(set(serials)) == len(serials)
    # 159 bits of entropy: over 2,000 draws some use the top bit (odds of none ~ 2**-2000).
    assert max(serials).bit_length() == 159


def test_largest_possible_serial_still_fits_20_octets() -> None:
    assert _der_content_length(SERIAL_LIMIT - 1) == 20
    assert _der_content_length(SERIAL_LIMIT) == 21  # why the limit is 2**159, not 2**160


def test_zero_draw_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0, 0, 7])
    monkeypatch.setattr("shared_ca.serials.secrets.randbits", lambda _bits: next(draws))
    assert new_serial() == 7


def test_serial_hex_is_lowercase_without_prefix() -> None:
    assert serial_hex(0xABCDEF) == "abcdef"
    assert parse_serial(serial_hex(SERIAL_LIMIT - 1)) == SERIAL_LIMIT - 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1a2b", 0x1A2B, id="ok/hex"),
        pytest.param("1A2B", 0x1A2B, id="ok/upper-hex"),
        pytest.param("0x1a2b", 0x1A2B, id="ok/0x-prefix"),
        pytest.param("0X1A2B", 0x1A2B, id="ok/0X-prefix"),
        pytest.param("1a:2b", 0x1A2B, id="ok/colons"),
        pytest.param("01:1A:2B", 0x11A2B, id="ok/openssl-colons"),
        pytest.param("  1a2b \n", 0x1A2B, id="ok/whitespace"),
        pytest.param("dec:6699", 6699, id="ok/decimal"),
        pytest.param("DEC:10", 10, id="ok/decimal-upper"),
        pytest.param("10", 16, id="ok/bare-digits-are-hex"),
    ],
)
def test_parse_serial(text: str, expected: int) -> None:
    assert parse_serial(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "not a hexadecimal number", id="fail/empty"),
        pytest.param("xyz", "not a hexadecimal number", id="fail/not-hex"),
        pytest.param("0x", "not a hexadecimal number", id="fail/bare-prefix"),
        pytest.param("dec:1f", "not a hexadecimal number", id="fail/hex-after-dec"),
        pytest.param("dec:", "not a hexadecimal number", id="fail/empty-decimal"),
        pytest.param("0", "must be positive", id="fail/zero"),
        pytest.param("00:00", "must be positive", id="fail/zero-colons"),
        pytest.param("dec:0", "must be positive", id="fail/decimal-zero"),
        pytest.param("dec:-5", "must be positive", id="fail/decimal-negative"),
        pytest.param("-5", "must be positive", id="fail/negative-hex"),
    ],
)
def test_parse_serial_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_serial(text)
