"""A small, strict reader of the BER/DER that SCEP clients send (X.690 §8, §10), and the CMS
(RFC 5652) layouts and AlgorithmIdentifiers it reads.

It walks the encoding by offsets into the received bytes and builds no generic objects: the CMS
readers in `message.py` and `envelope.py` ask for the fields they need, by position and tag, and
leave everything else (certificate bodies, CRLs, unknown attributes, versions) unread.

Accepted beyond DER, because real clients send it and asn1crypto, the former reader, took it:
indefinite lengths on constructed values (OpenSSL `-stream`, BouncyCastle), non-minimal long-form
lengths, and constructed OCTET STRINGs where octets are read (micromdm's scepclient). Refused:
truncation, a length past its parent, indefinite length on a primitive value, a wrong tag, trailing
bytes (inside an EXPLICIT tag too), and nesting deeper than `MAX_DEPTH`. Every refusal is a
`DerError`, a ValueError, so callers map it with the rest of their decoding errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from asn1crypto import algos

from shared_ca.cms import RSASSA_PSS_OID, SignatureAlgorithm

MAX_DEPTH = 11  # nested indefinite-length values asn1crypto read (and one past which it refused)

# Identifier octets (X.690 §8.1.2): universal class, then context-specific [n].
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
SEQUENCE = 0x30
SET = 0x31
OCTET_STRINGS = frozenset({OCTET_STRING, OCTET_STRING | 0x20})  # primitive, or constructed (BER)


def context(number: int, *, constructed: bool = True) -> int:
    """The identifier octet of a context-specific tag [number] (number < 31)."""
    return 0x80 | (0x20 if constructed else 0) | number


class DerError(ValueError):
    """The bytes are not the BER/DER value the reader expected."""


class Tlv(NamedTuple):
    """One encoded value, as offsets into the buffer it was read from."""

    tag: int  # the identifier octet (for a high tag number, its first octet: 0x1F in the low bits)
    start: int  # offset of the identifier octet
    body: int  # offset of the first contents octet
    end: int  # offset after the last contents octet (an end-of-contents marker follows when indefinite)
    stop: int  # offset after the whole encoding


ABSENT = Tlv(-1, 0, 0, 0, 0)
"""An optional field that is not there; its contents are empty."""


def read_tlv(data: bytes, offset: int, limit: int, depth: int = 0) -> Tlv:
    """The value starting at `offset`, which must end by `limit`."""
    if offset >= limit:
        raise DerError("a value is missing")
    tag = data[offset]
    position = offset + 1
    if tag & 0x1F == 0x1F:  # high tag number: base-128 octets (X.690 §8.1.2.4)
        while position < limit and data[position] & 0x80:
            position += 1
        position += 1
    if position >= limit:
        raise DerError("the value is truncated")
    first = data[position]
    position += 1
    if first < 0x80:
        end = position + first
    elif first == 0x80:  # indefinite length (X.690 §8.1.3.6)
        if not tag & 0x20:
            raise DerError("indefinite length on a primitive value")
        if depth >= MAX_DEPTH:
            raise DerError("indefinite lengths nested too deeply")
        end = position
        while end + 2 > limit or data[end] or data[end + 1]:  # until the end-of-contents octets
            end = read_tlv(data, end, limit, depth + 1).stop
        return Tlv(tag, offset, position, end, end + 2)
    else:
        size = first & 0x7F
        if position + size > limit:
            raise DerError("the length is truncated")
        end = position + size + int.from_bytes(data[position : position + size], "big")
        position += size
    if end > limit:
        raise DerError("the length runs past the end")
    return Tlv(tag, offset, position, end, end)


def read_whole(data: bytes, tag: int) -> Tlv:
    """`data` as exactly one value with identifier `tag`: no trailing bytes."""
    tlv = read_tlv(data, 0, len(data))
    if tlv.stop != len(data):
        raise DerError("trailing bytes after the value")
    return expect(tlv, tag)


def expect(tlv: Tlv, *tags: int) -> Tlv:
    """`tlv` when its identifier is one of `tags`."""
    if tlv.tag not in tags:
        raise DerError(f"unexpected tag 0x{tlv.tag:02x}")
    return tlv


def children(data: bytes, parent: Tlv) -> list[Tlv]:
    """The values inside a constructed value, in order."""
    if not parent.tag & 0x20:
        raise DerError("a primitive value where a constructed one belongs")
    found = []
    offset, end = parent.body, parent.end
    while offset < end:
        tlv = read_tlv(data, offset, end)
        found.append(tlv)
        offset = tlv.stop
    return found


class Field(NamedTuple):
    """One field of a SEQUENCE layout: the identifier octets it may have, and whether it may be absent."""

    tags: frozenset[int]
    optional: bool = False


def field(*tags: int, optional: bool = False) -> Field:
    """A `Field` with identifier octets `tags`."""
    return Field(frozenset(tags), optional)


def fields(data: bytes, parent: Tlv, layout: Sequence[Field]) -> list[Tlv]:
    """The fields of a SEQUENCE by `layout`, ABSENT for a missing optional one; nothing may be left over."""
    values = children(data, parent)
    found = []
    index = 0
    for tags, optional in layout:
        if index < len(values) and values[index].tag in tags:
            found.append(values[index])
            index += 1
        elif optional:
            found.append(ABSENT)
        else:
            raise DerError("a required field is missing or has the wrong tag")
    if index != len(values):
        raise DerError("unexpected fields at the end of a SEQUENCE")
    return found


def explicit(data: bytes, tagged: Tlv) -> Tlv:
    """The one value inside an EXPLICIT tag."""
    inner = children(data, tagged)
    if len(inner) != 1:
        raise DerError("an explicit tag must hold exactly one value")
    return inner[0]


def contents(data: bytes, tlv: Tlv) -> bytes:
    """The contents octets of a value (empty for ABSENT)."""
    return data[tlv.body : tlv.end]


def encoding(data: bytes, tlv: Tlv) -> bytes:
    """The whole encoding of a value, header included, as received."""
    return data[tlv.start : tlv.stop]


def octets(data: bytes, tlv: Tlv, depth: int = 0) -> bytes:
    """An OCTET STRING's value (or an IMPLICIT one's: the caller checks the tag), primitive or
    constructed from OCTET STRING chunks (X.690 §8.7.3)."""
    if not tlv.tag & 0x20:
        return data[tlv.body : tlv.end]
    if depth >= MAX_DEPTH:
        raise DerError("constructed OCTET STRING nested too deeply")
    chunks = children(data, tlv)
    if any(chunk.tag not in OCTET_STRINGS for chunk in chunks):
        raise DerError("a constructed OCTET STRING holds something else")
    return b"".join(octets(data, chunk, depth + 1) for chunk in chunks)


def integer(data: bytes, tlv: Tlv) -> int:
    """An INTEGER's value (two's complement)."""
    return int.from_bytes(data[tlv.body : tlv.end], "big", signed=True)


def oid_contents(dotted: str) -> bytes:
    """The contents octets of an OBJECT IDENTIFIER (for module constants: lookups compare bytes)."""
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | rest & 0x7F)
            rest >>= 7
        body.extend(reversed(chunk))
    return bytes(body)


def dotted(oid: bytes) -> str:
    """OBJECT IDENTIFIER contents in dotted form, decoded as asn1crypto's `.dotted` does (an
    unterminated last arc is dropped)."""
    output: list[int] = []
    part = 0
    for octet in oid:
        part = part * 128 + (octet & 0x7F)
        if not octet & 0x80:
            if output:
                output.append(part)
            else:
                output.extend((2, part - 80) if part >= 80 else divmod(part, 40))
            part = 0
    return ".".join(map(str, output))


# --- CMS (RFC 5652): the layouts the SignedData and EnvelopedData readers walk ---------------------

ISSUER_AND_SERIAL = (field(SEQUENCE), field(INTEGER))
"""IssuerAndSerialNumber (RFC 5652 §10.2.4): issuer Name, serialNumber."""
SIGNED_DATA = (  # RFC 5652 §5.1; PKCS#7 v1.5 (RFC 2315 §9.1), which SCEP clients send, has the same shape
    field(INTEGER),  # version
    field(SET),  # digestAlgorithms
    field(SEQUENCE),  # encapContentInfo
    field(context(0), optional=True),  # certificates
    field(context(1), optional=True),  # crls
    field(SET),  # signerInfos
)
ENCAPSULATED_CONTENT_INFO = (field(OID), field(context(0), optional=True))  # eContentType, [0] EXPLICIT eContent
SIGNER_INFO = (  # RFC 5652 §5.3
    field(INTEGER),  # version
    field(SEQUENCE, context(0, constructed=False)),  # sid: issuerAndSerialNumber | [0] subjectKeyIdentifier
    field(SEQUENCE),  # digestAlgorithm
    field(context(0), optional=True),  # signedAttrs
    field(SEQUENCE),  # signatureAlgorithm
    field(*OCTET_STRINGS),  # signature
    field(context(1), optional=True),  # unsignedAttrs
)
CERTIFICATE_CHOICES = frozenset({SEQUENCE, *(context(n) for n in range(4))})  # RFC 5652 §10.2.2
ENVELOPED_DATA = (  # RFC 5652 §6.1
    field(INTEGER),  # version
    field(context(0), optional=True),  # originatorInfo
    field(SET),  # recipientInfos
    field(SEQUENCE),  # encryptedContentInfo
    field(context(1), optional=True),  # unprotectedAttrs
)
RECIPIENT_KINDS = {SEQUENCE: "ktri", context(1): "kari", context(2): "kekri", context(3): "pwri", context(4): "ori"}
KEY_TRANS_RECIPIENT_INFO = (  # RFC 5652 §6.2.1
    field(INTEGER),  # version
    field(SEQUENCE, context(0, constructed=False)),  # rid: issuerAndSerialNumber | [0] subjectKeyIdentifier
    field(SEQUENCE),  # keyEncryptionAlgorithm
    field(*OCTET_STRINGS),  # encryptedKey
)


def content_info(data: bytes) -> tuple[bytes, Tlv]:
    """`data` as one ContentInfo (RFC 5652 §3): its contentType (OID contents), read before
    anything else, and the ContentInfo itself for `content`."""
    info = read_whole(data, SEQUENCE)
    return contents(data, expect(read_tlv(data, info.body, info.end), OID)), info


def content(data: bytes, info: Tlv) -> Tlv:
    """The value in a ContentInfo's [0] EXPLICIT content field, which must be there."""
    _content_type, tagged = children(data, info)
    return explicit(data, expect(tagged, context(0)))


def serial_and_issuer(data: bytes, certificate: Tlv) -> tuple[int, bytes]:
    """A Certificate's serialNumber and the encoding of its issuer (RFC 5280 §4.1), nothing else read."""
    tbs = expect(children(data, expect(certificate, SEQUENCE))[0], SEQUENCE)
    values = children(data, tbs)
    if values and values[0].tag == context(0):  # version
        values = values[1:]
    serial, _signature, issuer = values[:3]
    return integer(data, expect(serial, INTEGER)), encoding(data, expect(issuer, SEQUENCE))


# --- AlgorithmIdentifier (RFC 5280 §4.1.1.2), named as asn1crypto names them ----------------------


class Algorithm(NamedTuple):
    """An AlgorithmIdentifier: OID contents and the parameters (ABSENT if none)."""

    oid: bytes
    parameters: Tlv


_ALGORITHM = (field(OID), Field(frozenset(range(256)), optional=True))  # parameters: ANY


def algorithm(data: bytes, tlv: Tlv) -> Algorithm:
    """Read an AlgorithmIdentifier; the parameters are the caller's to read."""
    oid, parameters = fields(data, expect(tlv, SEQUENCE), _ALGORITHM)
    return Algorithm(contents(data, oid), parameters)


_DIGEST_NAMES = {oid_contents(oid): name for oid, name in algos.DigestAlgorithmId._map.items()}


def digest_name(oid: bytes) -> str:
    """A digest algorithm's name ("sha256"), or its dotted OID when asn1crypto has none."""
    return _DIGEST_NAMES.get(oid) or dotted(oid)


# Every signature OID asn1crypto knows, named once by its rules; RSASSA-PSS is per message (its parameters).
_SIGNATURE_ALGORITHMS = {
    oid_contents(oid): SignatureAlgorithm.from_oid(oid)
    for oid in algos.SignedDigestAlgorithmId._map
    if oid != RSASSA_PSS_OID
}
_RSASSA_PSS_OID = oid_contents(RSASSA_PSS_OID)


def signature_algorithm(data: bytes, tlv: Tlv) -> SignatureAlgorithm:
    """Read a signature AlgorithmIdentifier."""
    oid, parameters = algorithm(data, tlv)
    if oid == _RSASSA_PSS_OID:
        return SignatureAlgorithm.from_oid(RSASSA_PSS_OID, encoding(data, parameters))
    return _SIGNATURE_ALGORITHMS.get(oid) or SignatureAlgorithm(dotted(oid), None)
