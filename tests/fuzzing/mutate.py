"""Byte, text and transport-layer mutators, and the interesting values they draw from.

Every mutator takes a `random.Random` (a plain one in bench/fuzz, hypothesis's in tests/test_fuzz.py,
so hypothesis can shrink what it finds) and returns new bytes or text; nothing is mutated in place.
"""

from __future__ import annotations

import base64
import random
import urllib.parse

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF, 0x30, 0x31, 0x0C, 0x13, 0x1E, 0x84, 0x0A, 0x0D)

# Texts that have broken name, identity and log code elsewhere: control characters, bidi and
# zero-width marks, RFC 4514 specials, surrogate-free astral characters, format strings, huge ones.
INTERESTING_TEXTS = (
    "",
    " ",
    "device1",
    "\x00",
    "a\x00b",
    "\n",
    "line\r\nInjected: yes",
    "\x1b[31mred\x1b[0m",
    "\u202etxt.exe",
    "\u200b",
    "\ufeffbom",
    "é",
    "😀" * 3,
    "%s%n%x",
    "{0}{1}",
    "CN=evil,O=x",
    "a+b=c",
    "#0400",
    "\\",
    '"quoted"',
    ",",
    "=",
    "../../etc/passwd",
    "x" * 65,
    "y" * 300,
    "z" * 5000,
)


def interesting_integer(rng: random.Random) -> bytes:
    """INTEGER contents: zero, negative, non-minimal, huge, empty."""
    return rng.choice(
        (
            b"\x00",
            b"\x01",
            b"\x02",
            b"\x03",
            b"\xff",
            b"\x80",
            b"\x00\x00",
            b"\x00\x01",
            b"",
            b"\x7f" + b"\xff" * 20,
            b"\x7f" + b"\xff" * 200,
            b"\x80" + b"\x00" * 19,
            rng.randbytes(rng.randrange(1, 24)),
        )
    )


def interesting_text(rng: random.Random, tag: int) -> bytes:
    """String contents for a string tag: mostly valid in that tag's own encoding (so the value is
    read and reaches policy and identity code), sometimes invalid."""
    text = rng.choice(INTERESTING_TEXTS)
    if rng.random() < 0.6:
        if tag == 0x1E:
            return text.encode("utf-16-be")
        if tag == 0x1C:
            return text.encode("utf-32-be")
        return text.encode("utf-8") if tag == 0x0C else text.encode("ascii", "replace")
    choice = rng.randrange(6)
    if choice == 0:
        return b"\xff\xfe\xc0\x80"  # invalid UTF-8 (overlong, stray bytes)
    if choice == 1:
        return text.encode("utf-16-be")[: rng.choice((1, 3, 5, 100))]  # odd-length BMPString
    if choice == 2 and tag == 0x1E:
        return text.encode("utf-16-be")
    if choice == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
    return text.encode("utf-8")


def interesting_content(rng: random.Random) -> bytes:
    """Any primitive content: empty, one byte, DER-looking, long."""
    return rng.choice(
        (
            b"",
            b"\x00",
            b"\xff",
            b"\x30\x00",
            b"\x31\x80\x00\x00",
            b"\x06\x03\x55\x04\x03",
            b"\x05\x00",
            b"A" * 128,
            b"\x00" * 70000,
            rng.randbytes(rng.randrange(1, 64)),
        )
    )


# --- raw bytes -------------------------------------------------------------------------------------


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    """One to three bits flipped."""
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_byte(rng: random.Random, data: bytes) -> bytes:
    """One byte set to an interesting value (a tag, a length form, 0x00, 0xff)."""
    if not data:
        return data
    out = bytearray(data)
    out[rng.randrange(len(out))] = rng.choice(INTERESTING_BYTES)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    """Cut anywhere (possibly to nothing)."""
    return data[: rng.randrange(len(data) + 1)]


def insert_bytes(rng: random.Random, data: bytes) -> bytes:
    """Random bytes, zeros or an indefinite-length header inserted anywhere."""
    at = rng.randrange(len(data) + 1)
    filler = rng.choice((rng.randbytes(rng.randrange(1, 9)), b"\x00" * rng.randrange(1, 300), b"\x30\x80"))
    return data[:at] + filler + data[at:]


def delete_chunk(rng: random.Random, data: bytes) -> bytes:
    """Up to 32 bytes removed."""
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randrange(1, 33) :]


def duplicate_chunk(rng: random.Random, data: bytes) -> bytes:
    """Up to 64 bytes repeated in place."""
    if not data:
        return data
    at = rng.randrange(len(data))
    chunk = data[at : at + rng.randrange(1, 65)]
    return data[:at] + chunk + data[at:]


def append_garbage(rng: random.Random, data: bytes) -> bytes:
    """Trailing bytes after the message."""
    return data + rng.choice((b"\x00", b"\x00\x00", rng.randbytes(rng.randrange(1, 17)), data[:32]))


BYTE_MUTATORS = (flip_bits, set_byte, truncate, insert_bytes, delete_chunk, duplicate_chunk, append_garbage)


def mutate_bytes(rng: random.Random, data: bytes, count: int | None = None) -> bytes:
    """`data` after one to three raw byte mutations."""
    for _ in range(count or rng.randrange(1, 4)):
        data = rng.choice(BYTE_MUTATORS)(rng, data)
    return data


# --- base64 and URL layer --------------------------------------------------------------------------


def base64_forms(rng: random.Random, der: bytes) -> str:
    """`der` in one of the base64 forms real clients send, or a broken one."""
    text = base64.b64encode(der).decode("ascii")
    choice = rng.randrange(11)
    if choice == 0:
        return base64.urlsafe_b64encode(der).decode("ascii")
    if choice == 1:
        return text.rstrip("=")
    if choice == 2:
        return "\r\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    if choice == 3:
        return "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n"
    if choice == 4:
        return text.replace("+", " ")
    if choice == 5:  # a stray character
        at = rng.randrange(len(text) + 1)
        return text[:at] + rng.choice(("!", "*", "\x00", "é", "%", "=", "-", "_", "\t")) + text[at:]
    if choice == 6:
        return text[: rng.randrange(len(text) + 1)]
    if choice == 7:
        return text + "=" * rng.randrange(1, 5)
    if choice == 8:
        return " " + text + " "
    return text


def query_value(rng: random.Random, text: str) -> str:
    """The `message` value as it goes into the query string: quoted, half-quoted or raw."""
    choice = rng.randrange(5)
    if choice == 0:
        return urllib.parse.quote(text, safe="")
    if choice == 1:
        return text.replace("/", "%2F").replace("=", "%3D")  # '+' left raw: arrives as a space
    if choice == 2:
        return urllib.parse.quote(text, safe="") + rng.choice(("%", "%zz", "%00", "%C3", "&message=x"))
    return urllib.parse.quote(text, safe="+/=")
