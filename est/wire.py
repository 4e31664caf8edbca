"""The EST wire format (RFC 7030, clarified by RFC 8951): bytes in, typed values out.

Pure and sans-I/O: no Flask, no database, no clock. The views hand in the request body and its
Content-Type; the service hands in DER and gets back the reply body and its content type.

Decoding is lenient where real clients differ (RFC 8951 §3.2: base64 with CRLF, LF or no line
breaks, `Content-Transfer-Encoding` ignored; a PEM-wrapped CSR; raw DER). Whether the decoded bytes
are a PKCS#10 request whose signature verifies is *not* checked here: that is
`shared_ca.csr.load_csr`'s job, so every protocol refuses a bad CSR the same way.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from shared_ca.cms import der_tlv
from shared_ca.errors import InvalidRequest

# Reply content types (RFC 7030 §4.1.3, §4.4.2, §4.5.2).
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
CSRATTRS = "application/csrattrs"
PKCS8 = "application/pkcs8"
SERVER_GENERATED_KEY = "application/pkcs7-mime; smime-type=server-generated-key"
PKCS10 = "application/pkcs10"
# Sent with every base64 reply for older clients (RFC 8951 §3.2 makes it meaningless, not harmful).
TRANSFER_ENCODING = "base64"

MAX_REQUEST_BODY = 64 * 1024
"""Largest request body accepted, in bytes as received: a PKCS#10 request with a 16 kbit RSA key
and a generous extensionRequest is far below this; anything bigger is refused before decoding."""

BASE64_LINE_LENGTH = 64
"""encode_base64_body's default: 64 characters a line, CRLF-terminated, as the examples of RFC 7030
and PEM (RFC 7468) do; every client we know of decodes this, and `openssl base64 -d` needs breaks.
Note `openssl base64 -d -A` (single-line mode, as INTEROP.md's csrattrs command uses) yields
nothing for a multi-line body: pass `line_length=None` for a single line where that matters."""


class EstWireError(InvalidRequest):
    """An EST request body that cannot be decoded; the message is safe to show the client (400)."""


_WHITESPACE = re.compile(rb"[ \t\r\n\f\v]+")
_PEM = re.compile(
    rb"-----BEGIN (?P<label>[A-Z0-9 ]+)-----(?P<body>.*?)-----END (?P=label)-----",
    re.DOTALL,
)
_PEM_CSR_LABELS = {b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"}


def decode_request_body(body: bytes, content_type: str | None) -> bytes:
    """The DER of the PKCS#10 request in an EST request body.

    Accepted forms: base64 with CRLF, LF or no line breaks (surrounding and embedded whitespace
    ignored, missing trailing `=` padding tolerated); a PEM CSR (`CERTIFICATE REQUEST` or the older
    `NEW CERTIFICATE REQUEST`); raw DER (a SEQUENCE whose length covers exactly the body), which
    RFC 7030 does not allow but some clients send.

    `content_type` is deliberately not used to refuse anything: RFC 7030 asks for
    `application/pkcs10`, but curl sends `application/x-www-form-urlencoded` unless told otherwise
    and RFC 8951 tells servers to be lenient. The body alone decides the form.
    """
    del content_type  # see the docstring: accepted for the views' sake, never a reason to refuse
    if len(body) > MAX_REQUEST_BODY:
        raise EstWireError("request too large", detail=f"request body of {len(body)} bytes")
    if _is_whole_der_sequence(body):
        return body
    text = body.strip()
    if not text:
        raise EstWireError("empty request body")
    if text.startswith(b"-----BEGIN "):
        text = _pem_csr_body(text)
    der = _b64decode(text)
    if not der:
        raise EstWireError("empty request body")
    return der


def _pem_csr_body(text: bytes) -> bytes:
    match = _PEM.match(text)
    if match is None:
        raise EstWireError("the request body is not base64", detail="unterminated PEM block")
    if match.group("label") not in _PEM_CSR_LABELS:
        label = match.group("label").decode("ascii")
        raise EstWireError("the PEM block is not a CERTIFICATE REQUEST", detail=f"PEM label {label!r}")
    return match.group("body")


def _b64decode(text: bytes) -> bytes:
    compact = _WHITESPACE.sub(b"", text)
    missing = -len(compact) % 4
    if missing == 3:  # one character short of a byte: no padding can make this base64
        raise EstWireError("the request body is not base64", detail="base64 length is 1 mod 4")
    if not compact.endswith(b"="):
        compact += b"=" * missing
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EstWireError("the request body is not base64", detail=str(exc)) from exc


def _is_whole_der_sequence(body: bytes) -> bool:
    """True when `body` is one DER SEQUENCE (tag 0x30) whose encoded length is exactly the body's.

    A base64 body cannot be mistaken for this: it would have to start with `0` and its second
    character would have to encode the remaining length."""
    if len(body) < 2 or body[0] != 0x30:
        return False
    try:
        _tag, _contents, rest = _read_tlv(body)
    except ValueError:
        return False
    return rest == b""


# --- replies -------------------------------------------------------------------------------------


def certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """A degenerate certs-only PKCS#7 SignedData (RFC 7030 §4.1.3, §4.2.3) holding `certs`, as DER.

    No signers, no CRLs; the service base64-encodes it with encode_base64_body."""
    if not certs:
        raise ValueError("a certs-only reply needs at least one certificate")
    return pkcs7.serialize_certificates(list(certs), Encoding.DER)


def encode_base64_body(der: bytes, *, line_length: int | None = BASE64_LINE_LENGTH) -> bytes:
    """`der` in base64, `line_length` characters a line, each line ending in CRLF (see
    BASE64_LINE_LENGTH); `line_length=None` gives one line ending in CRLF."""
    encoded = base64.b64encode(der)
    if line_length is None:
        return encoded + b"\r\n"
    if line_length <= 0 or line_length % 4:
        raise ValueError("line_length must be a positive multiple of 4")
    return b"".join(encoded[i : i + line_length] + b"\r\n" for i in range(0, len(encoded), line_length))


_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TOKEN = re.compile(r"[0-9A-Za-z!#$%&'*+\-.^_`|~]+")


def serverkeygen_multipart(key_der: bytes, key_content_type: str, certs_der: bytes, boundary: str) -> tuple[bytes, str]:
    """The serverkeygen reply (RFC 7030 §4.4.2): a multipart/mixed body and its Content-Type value.

    The first part is the private key (`key_content_type`: PKCS8 for a bare PKCS#8 key,
    SERVER_GENERATED_KEY for a CMS-encrypted one), the second the certs-only SignedData; each part
    in base64 with `Content-Transfer-Encoding: base64`, lines ending in CRLF. The boundary is the
    caller's (no randomness here); it must be a valid RFC 2046 boundary. A base64 line never starts
    with `-`, so no boundary can occur inside a part.
    """
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"not a valid multipart boundary: {boundary!r}")
    if "\r" in key_content_type or "\n" in key_content_type:
        raise ValueError("a content type cannot contain a line break")
    delimiter = b"--" + boundary.encode("ascii")
    parts = ((key_content_type, key_der), (CERTS_ONLY, certs_der))
    body = b""
    for content_type, der in parts:
        body += delimiter + b"\r\n"
        body += b"Content-Type: " + content_type.encode("ascii") + b"\r\n"
        body += b"Content-Transfer-Encoding: base64\r\n\r\n"
        body += encode_base64_body(der)
    body += delimiter + b"--\r\n"
    parameter = boundary if _TOKEN.fullmatch(boundary) else '"' + boundary + '"'
    return body, f"multipart/mixed; boundary={parameter}"


# --- CSR attributes (RFC 7030 §4.5.2) ------------------------------------------------------------
#
#   CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
#   AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }
#   Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET SIZE (1..MAX) OF ANY }

_SEQUENCE = 0x30
_SET = 0x31
_OID = 0x06

CsrAttribute = tuple[str, tuple[bytes, ...]]


def encode_csr_attrs(oids: Sequence[str], attributes: Sequence[tuple[str, Sequence[bytes]]]) -> bytes:
    """The DER of a CsrAttrs: the bare OIDs first, then each attribute (its OID and its values, each
    value one complete DER element, sorted into a DER SET OF)."""
    items = [_der_oid(oid) for oid in oids]
    for oid, values in attributes:
        if not values:
            raise ValueError(f"attribute {oid} needs at least one value")
        for value in values:
            try:
                _tag, _contents, rest = _read_tlv(value)
            except ValueError as exc:
                raise ValueError(f"a value of attribute {oid} is not DER: {exc}") from exc
            if rest:
                raise ValueError(f"a value of attribute {oid} is not one DER element")
        items.append(der_tlv(_SEQUENCE, _der_oid(oid) + der_tlv(_SET, b"".join(sorted(values)))))
    return der_tlv(_SEQUENCE, b"".join(items))


def decode_csr_attrs(der: bytes) -> tuple[tuple[str, ...], tuple[CsrAttribute, ...]]:
    """The bare OIDs and the attributes (OID, DER of each value) of a CsrAttrs, in wire order.

    An empty body is an empty CsrAttrs (RFC 7030 §4.5.2 allows either). EstWireError when it is
    not a CsrAttrs."""
    if not der:
        return (), ()
    try:
        return _decode_csr_attrs(der)
    except ValueError as exc:
        raise EstWireError("the CSR attributes are not a valid CsrAttrs", detail=str(exc)) from exc


def _decode_csr_attrs(der: bytes) -> tuple[tuple[str, ...], tuple[CsrAttribute, ...]]:
    tag, contents, rest = _read_tlv(der)
    if tag != _SEQUENCE or rest:
        raise ValueError("CsrAttrs is not one SEQUENCE")
    oids: list[str] = []
    attributes: list[CsrAttribute] = []
    while contents:
        tag, item, contents = _read_tlv(contents)
        if tag == _OID:
            oids.append(_oid_text(item))
            continue
        if tag != _SEQUENCE:
            raise ValueError(f"unexpected tag 0x{tag:02x} in CsrAttrs")
        tag, oid, remainder = _read_tlv(item)
        if tag != _OID:
            raise ValueError("Attribute does not start with an OBJECT IDENTIFIER")
        tag, value_set, remainder = _read_tlv(remainder)
        if tag != _SET or remainder:
            raise ValueError("Attribute values are not one SET")
        values: list[bytes] = []
        while value_set:
            start = value_set
            _tag, _value, value_set = _read_tlv(value_set)
            values.append(start[: len(start) - len(value_set)])
        if not values:
            raise ValueError("Attribute has no values")
        attributes.append((_oid_text(oid), tuple(values)))
    return tuple(oids), tuple(attributes)


# --- a minimal DER toolkit (single-byte tags; definite lengths) ----------------------------------


def _read_tlv(data: bytes) -> tuple[int, bytes, bytes]:
    """(tag, contents, rest) of the element at the start of `data`; ValueError when it is not DER."""
    if len(data) < 2:
        raise ValueError("truncated DER element")
    tag, first = data[0], data[1]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tags are not supported")
    if first < 0x80:
        length, offset = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise ValueError("indefinite or oversized DER length")
        if len(data) < 2 + count:
            raise ValueError("truncated DER length")
        length = int.from_bytes(data[2 : 2 + count], "big")
        if length < 0x80 or data[2] == 0:
            raise ValueError("non-minimal DER length")
        offset = 2 + count
    if len(data) < offset + length:
        raise ValueError("truncated DER element")
    return tag, data[offset : offset + length], data[offset + length :]


def _der_oid(dotted: str) -> bytes:
    try:
        arcs = [int(arc) for arc in dotted.split(".")]
    except ValueError:
        raise ValueError(f"not an OID: {dotted!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40) or min(arcs) < 0:
        raise ValueError(f"not an OID: {dotted!r}")
    contents = b"".join(_base128(arc) for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]])
    return der_tlv(_OID, contents)


def _base128(value: int) -> bytes:
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


def _oid_text(contents: bytes) -> str:
    if not contents or contents[-1] & 0x80:
        raise ValueError("truncated OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for i, byte in enumerate(contents):
        if value == 0 and byte == 0x80 and (i == 0 or not contents[i - 1] & 0x80):
            raise ValueError("non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])
