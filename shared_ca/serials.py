"""Certificate serial numbers: random, positive, below 2**159 (RFC 5280 §4.1.2.2 allows 20 octets).

Uniqueness per issuer is a database constraint, not a property of this generator.
"""

from __future__ import annotations

import secrets

SERIAL_LIMIT = 1 << 159


def new_serial() -> int:
    """A random serial in [1, 2**159): 159 bits of entropy, DER-encoded in at most 20 octets."""
    while True:
        value = secrets.randbits(159)
        if value:
            return value


def serial_hex(serial: int) -> str:
    """The canonical text form used in storage and on the command line: lowercase hex, no 0x."""
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """Parse a serial given as hex (optionally 0x-prefixed, colons allowed) or as `dec:NNN`."""
    cleaned = text.strip().lower()
    try:
        # Look for "dec:" before dropping colons, or "dec:10" would be read as the hex 0xdec10.
        if cleaned.startswith("dec:"):
            value = int(cleaned[4:], 10)
        else:
            value = int(cleaned.replace(":", "").removeprefix("0x"), 16)
    except ValueError:
        raise ValueError(f"serial {text!r} is not a hexadecimal number (or dec:NNN)") from None
    if value <= 0:
        raise ValueError(f"serial {text!r} must be positive")
    return value
