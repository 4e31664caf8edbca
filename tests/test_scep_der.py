"""scep.der, the BER/DER reader under parse_pki_message and open_envelope.

Four rings: the reader on hand-made encodings (table-driven); every real captured vector read by it
gives the fields asn1crypto's generic parser gives; BER re-encodings of the vectors (indefinite
lengths, chunked OCTET STRINGs, as OpenSSL `-stream` and BouncyCastle send them) read the same,
as they did with asn1crypto; and hostile input (truncation at every offset, every byte flipped, wrong
tags, lengths past the end, indefinite lengths where X.690 forbids them, trailing bytes, deep nesting)
ends in DerError, ScepDecodeError, a signed FAILURE or an EnvelopeError, never another exception.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import algos, cms, core, parser
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scep import der
from scep.asn1 import ScepAttributes
from scep.envelope import EnvelopeError, open_envelope
from scep.message import (
    ScepDecodeError,
    ScepMessageError,
    SignedMessage,
    decode_signed_message,
    parse_pki_message,
)
from shared_ca.cms import der_header, der_oid, der_sequence, der_tlv
from tests.test_scep_vectors_sanity import _python_decrypt

VECTORS = Path(__file__).resolve().parent / "vectors"
VECTOR_PATHS = [pytest.param(path, id=f"vector/{path.stem}") for path in sorted(VECTORS.glob("*.der"))]


@functools.cache
def vector_ra() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((VECTORS / "ra.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key, x509.load_pem_x509_certificate((VECTORS / "ra.pem").read_bytes())


def parse_vector(data: bytes) -> Any:
    key, cert = vector_ra()
    return parse_pki_message(data, ra_key=key, ra_cert=cert)


# --- the reader on hand-made encodings -----------------------------------------------------------

READS = {
    "ok/short-length": (b"\x04\x03abc", 0x04, b"abc"),
    "ok/long-length": (b"\x04\x81\x03abc", 0x04, b"abc"),
    "ok/non-minimal-length": (b"\x04\x83\x00\x00\x03abc", 0x04, b"abc"),  # BER allows it, as asn1crypto did
    "ok/empty": (b"\x05\x00", 0x05, b""),
    "ok/indefinite": (b"\x30\x80\x04\x01a\x00\x00", 0x30, b"\x04\x01a"),
    "ok/nested-indefinite": (b"\x30\x80\x31\x80\x04\x01a\x00\x00\x00\x00", 0x30, b"\x31\x80\x04\x01a\x00\x00"),
    "ok/high-tag-number": (b"\x5f\x81\x00\x01a", 0x5F, b"a"),
}


@pytest.mark.parametrize(("encoded", "tag", "contents"), list(READS.values()), ids=list(READS))
def test_reads(encoded: bytes, tag: int, contents: bytes) -> None:
    tlv = der.read_whole(encoded, tag)
    assert der.contents(encoded, tlv) == contents
    assert der.encoding(encoded, tlv) == encoded


REFUSED = {
    "fail/empty": (b"", "missing"),
    "fail/tag-only": (b"\x30", "truncated"),
    "fail/truncated-contents": (b"\x04\x05abc", "past the end"),
    "fail/truncated-long-length": (b"\x04\x82\x01", "length is truncated"),
    "fail/child-past-parent": (b"\x30\x03\x04\x05a", "past the end"),
    "fail/indefinite-primitive": (b"\x04\x80abc\x00\x00", "indefinite length on a primitive"),  # X.690 §8.1.3.2
    "fail/indefinite-without-end": (b"\x30\x80\x04\x01a", "missing"),
    "fail/end-of-contents-cut": (b"\x30\x80\x04\x01a\x00", "truncated"),
    "fail/trailing-byte": (b"\x04\x01a\x00", "trailing bytes"),
    "fail/trailing-value": (b"\x30\x00\x30\x00", "trailing bytes"),
    "fail/indefinite-too-deep": (b"\x30\x80" * (der.MAX_DEPTH + 1) + b"\x00\x00" * (der.MAX_DEPTH + 1), "too deeply"),
    "fail/high-tag-truncated": (b"\x5f\x81", "truncated"),
    "fail/huge-length": (b"\x04\x88\xff\xff\xff\xff\xff\xff\xff\xffabc", "past the end"),
    "fail/wrong-tag": (b"\x31\x00", "unexpected tag 0x31"),
    "fail/primitive-as-constructed": (b"\x10\x03\x02\x01\x01", "unexpected tag 0x10"),
}


@pytest.mark.parametrize(("encoded", "cause"), list(REFUSED.values()), ids=list(REFUSED))
def test_refuses(encoded: bytes, cause: str) -> None:
    with pytest.raises(der.DerError, match=cause):
        der.children(encoded, der.read_whole(encoded, 0x30))


def test_indefinite_depth_limit_is_asn1crypto_s() -> None:
    """As deep as asn1crypto read, and no deeper."""
    deepest = b"\x30\x80" * der.MAX_DEPTH + b"\x00\x00" * der.MAX_DEPTH
    assert der.read_whole(deepest, 0x30).stop == len(deepest)
    parser.parse(deepest, strict=True)
    with pytest.raises(ValueError, match="recursion limit"):
        parser.parse(b"\x30\x80" + deepest + b"\x00\x00", strict=True)


OCTETS = {
    "ok/primitive": (b"\x04\x03abc", b"abc"),
    "ok/constructed": (b"\x24\x08\x04\x01a\x04\x03bcd", b"abcd"),
    "ok/constructed-indefinite": (b"\x24\x80\x04\x01a\x24\x80\x04\x01b\x00\x00\x00\x00", b"ab"),
    "ok/constructed-empty": (b"\x24\x00", b""),
    "ok/implicit-tag": (b"\xa0\x05\x04\x03abc", b"abc"),  # the caller checks the tag
}


@pytest.mark.parametrize(("encoded", "value"), list(OCTETS.values()), ids=list(OCTETS))
def test_octets(encoded: bytes, value: bytes) -> None:
    assert der.octets(encoded, der.read_whole(encoded, encoded[0])) == value


def _nested_chunks(levels: int) -> bytes:
    encoded = b"\x04\x01a"
    for _ in range(levels):
        encoded = der_tlv(0x24, encoded)
    return encoded


def test_octets_nesting_limit() -> None:
    deepest = _nested_chunks(der.MAX_DEPTH)
    assert der.octets(deepest, der.read_whole(deepest, 0x24)) == b"a"


@pytest.mark.parametrize(
    ("encoded", "cause"),
    [
        pytest.param(b"\x24\x03\x02\x01\x01", "holds something else", id="fail/chunk-not-octets"),
        pytest.param(b"\x24\x80\x04\x01a", "missing", id="fail/chunks-unterminated"),
        pytest.param(_nested_chunks(der.MAX_DEPTH + 1), "too deeply", id="fail/chunks-too-deep"),
    ],
)
def test_octets_refuses(encoded: bytes, cause: str) -> None:
    with pytest.raises(der.DerError, match=cause):
        der.octets(encoded, der.read_tlv(encoded, 0, len(encoded)))


LAYOUT = (der.field(der.INTEGER), der.field(der.context(0), optional=True), der.field(der.SET))


@pytest.mark.parametrize(
    ("encoded", "present"),
    [
        pytest.param(b"\x30\x05\x02\x01\x01\x31\x00", [True, False, True], id="ok/optional-absent"),
        pytest.param(b"\x30\x07\x02\x01\x01\xa0\x00\x31\x00", [True, True, True], id="ok/optional-present"),
        pytest.param(b"\x30\x03\x02\x01\x01", None, id="fail/required-missing"),
        pytest.param(b"\x30\x05\x02\x01\x01\x30\x00", None, id="fail/wrong-tag"),
        pytest.param(b"\x30\x07\x02\x01\x01\x31\x00\x05\x00", None, id="fail/left-over"),
        pytest.param(b"\x10\x05\x02\x01\x01\x31\x00", None, id="fail/primitive-sequence"),
    ],
)
def test_fields(encoded: bytes, present: list[bool] | None) -> None:
    tlv = der.read_tlv(encoded, 0, len(encoded))
    if present is None:
        with pytest.raises(der.DerError):
            der.fields(encoded, tlv, LAYOUT)
        return
    assert [value is not der.ABSENT for value in der.fields(encoded, tlv, LAYOUT)] == present


def test_explicit_holds_exactly_one_value() -> None:
    for encoded in (b"\xa0\x00", b"\xa0\x04\x05\x00\x05\x00"):
        with pytest.raises(der.DerError):
            der.explicit(encoded, der.read_tlv(encoded, 0, len(encoded)))


def test_integers() -> None:
    for value in (0, 1, 127, 128, -1, -129, 2**159 + 12345):
        encoded = core.Integer(value).dump()
        assert der.integer(encoded, der.read_whole(encoded, der.INTEGER)) == value


def test_object_identifiers_read_as_asn1crypto_reads_them() -> None:
    known = [*algos.DigestAlgorithmId._map, *algos.SignedDigestAlgorithmId._map, *cms.CMSAttributeType._map]
    for dotted in known:
        assert der.dotted(der.oid_contents(dotted)) == dotted
        assert core.ObjectIdentifier(dotted).contents == der.oid_contents(dotted)
    rng = random.Random(8894)
    for size in range(1, 40):  # any octets, unterminated last arcs included
        contents = bytes(rng.randrange(256) for _ in range(size))
        assert der.dotted(contents) == core.ObjectIdentifier.load(der_header(0x06, size) + contents).dotted


# --- real vectors: the reader and asn1crypto agree ------------------------------------------------


def _asn1crypto_view(data: bytes) -> dict[str, Any]:
    """What the former asn1crypto-based decoder made of a message, field by field."""
    signed_data = cms.ContentInfo.load(data, strict=True)["content"]
    signer = signed_data["signer_infos"][0]
    sid = signer["sid"].chosen
    [certificate] = [
        choice.chosen.dump()
        for choice in signed_data["certificates"]
        if choice.chosen.serial_number == sid["serial_number"].native and choice.chosen.issuer == sid["issuer"]
    ]
    attributes_der = der_header(0x31, len(signer["signed_attrs"].contents)) + signer["signed_attrs"].contents
    attributes = {attr["type"].native: attr["values"][0] for attr in ScepAttributes.load(attributes_der)}
    natives = {name: value.native for name, value in attributes.items()}
    return {
        "attributes_der": attributes_der,
        "content_type_attribute": attributes["content_type"].dotted,
        "message_digest": natives["message_digest"],
        "scep": {name: natives.get(name) for name in ("message_type", "transaction_id", "sender_nonce")},
        "digest_name": signer["digest_algorithm"]["algorithm"].native,
        "signature_algorithm": signer["signature_algorithm"].signature_algo,
        "signature": signer["signature"].native,
        "signer_certificate": certificate,
        "content_type": signed_data["encap_content_info"]["content_type"].dotted,
        "content": signed_data["encap_content_info"]["content"].native,
    }


def _view(message: SignedMessage) -> dict[str, Any]:
    attrs = message.attributes
    assert message.signer_certificate is not None
    return {
        "attributes_der": attrs.der,
        "content_type_attribute": attrs.content_type,
        "message_digest": attrs.message_digest,
        "scep": {
            "message_type": attrs.message_type,
            "transaction_id": attrs.transaction_id,
            "sender_nonce": attrs.sender_nonce,
        },
        "digest_name": message.digest_name,
        "signature_algorithm": message.signature_algorithm,
        "signature": message.signature,
        "signer_certificate": message.signer_certificate.public_bytes(serialization.Encoding.DER),
        "content_type": message.content_type,
        "content": message.content,
    }


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_vector_reads_as_asn1crypto_read_it(path: Path) -> None:
    data = path.read_bytes()
    assert _view(decode_signed_message(data)) == _asn1crypto_view(data)


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_vector_attributes_read_as_asn1crypto_read_them(path: Path) -> None:
    message = decode_signed_message(path.read_bytes())
    expected = {attr["type"].native: attr["values"][0].native for attr in ScepAttributes.load(message.attributes.der)}
    attrs = message.attributes
    got = {
        "content_type": attrs.content_type,
        "message_digest": attrs.message_digest,
        "signing_time": attrs.signing_time,
        "message_type": attrs.message_type,
        "transaction_id": attrs.transaction_id,
        "sender_nonce": attrs.sender_nonce,
    }
    expected["content_type"] = "1.2.840.113549.1.7.1"  # asn1crypto names it "data"
    assert got == {name: expected.get(name) for name in got}


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_vector_envelope_opens_as_asn1crypto_opens_it(path: Path) -> None:
    envelope = decode_signed_message(path.read_bytes()).content
    assert envelope is not None
    key, cert = vector_ra()
    opened = open_envelope(envelope, key, cert)
    algorithm = cms.ContentInfo.load(envelope)["content"]["encrypted_content_info"]["content_encryption_algorithm"]
    assert opened.cipher.oid == algorithm["algorithm"].dotted
    assert opened.plaintext == _python_decrypt(envelope)


# --- BER: what OpenSSL -stream and BouncyCastle send ----------------------------------------------


def to_ber(encoded: bytes, keep: Callable[[bytes], bool] = lambda _: False, chunk: int = 7) -> bytes:
    """Re-encode with asn1crypto's parser: indefinite lengths on every constructed value and OCTET
    STRINGs as constructed chunks, except the values `keep` names (they stay as they are)."""
    if keep(encoded):
        return encoded
    class_, method, tag, _header, contents, _trailer = parser.parse(encoded, strict=True)
    identifier = bytes([class_ << 6 | method << 5 | tag])
    if (class_, method, tag) == (0, 0, 4):
        pieces = [contents[i : i + chunk] for i in range(0, len(contents), chunk)]
        return b"\x24\x80" + b"".join(der_header(0x04, len(p)) + p for p in pieces) + b"\x00\x00"
    if not method:
        return encoded
    children = []
    while contents:
        size = parser.peek(contents)
        children.append(to_ber(contents[:size], keep, chunk))
        contents = contents[size:]
    return identifier + b"\x80" + b"".join(children) + b"\x00\x00"


def ber_message(data: bytes) -> bytes:
    """A vector in BER; the signed attributes, the sid's issuer and the certificates stay DER, as BER
    encoders copy them (the signature covers the first, the others are compared and loaded as DER)."""
    signer = cms.ContentInfo.load(data)["content"]["signer_infos"][0]
    certificates = cms.ContentInfo.load(data)["content"]["certificates"]
    kept = {signer["signed_attrs"].dump(), signer["sid"].chosen.dump(), *(c.chosen.dump() for c in certificates)}
    return to_ber(data, kept.__contains__)


def ber_envelope(envelope: bytes, chunk: int = 7) -> bytes:
    """An envelope in BER, but for the recipients' issuerAndSerialNumber (compared as DER names)."""
    recipients = cms.ContentInfo.load(envelope)["content"]["recipient_infos"]
    kept = {info.chosen["rid"].chosen.dump() for info in recipients}
    return to_ber(envelope, kept.__contains__, chunk)


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_ber_vector_parses_like_the_der_one(path: Path) -> None:
    data = path.read_bytes()
    ber = ber_message(data)
    assert b"\x30\x80" in ber and b"\x24\x80" in ber
    assert parse_vector(ber) == parse_vector(data)
    assert _asn1crypto_view(ber) == _asn1crypto_view(data)  # the former parser read it too


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_ber_envelope_opens_like_the_der_one(path: Path) -> None:
    envelope = decode_signed_message(path.read_bytes()).content
    assert envelope is not None
    key, cert = vector_ra()
    expected = open_envelope(envelope, key, cert)
    for chunk in (1, 16, 1000):
        assert open_envelope(ber_envelope(envelope, chunk), key, cert) == expected


# --- hostile input --------------------------------------------------------------------------------


def _vector(name: str) -> bytes:
    return (VECTORS / f"{name}.der").read_bytes()


@pytest.mark.parametrize("name", ["scepclient-pkcsreq", "certmonger-pkcsreq"])
def test_vector_truncated_at_every_offset(name: str) -> None:
    data = _vector(name)
    for end in range(len(data)):
        with pytest.raises(ScepDecodeError):
            parse_vector(data[:end])
    ber = ber_message(data)
    for end in range(len(ber)):
        with pytest.raises(ScepDecodeError):
            parse_vector(ber[:end])


@pytest.mark.parametrize("name", ["scepclient-pkcsreq", "certmonger-pkcsreq"])
def test_vector_envelope_truncated_at_every_offset(name: str) -> None:
    envelope = decode_signed_message(_vector(name)).content
    assert envelope is not None
    key, cert = vector_ra()
    for data in (envelope, ber_envelope(envelope)):
        for end in range(len(data)):
            with pytest.raises(EnvelopeError):
                open_envelope(data[:end], key, cert)


@pytest.mark.parametrize("name", ["scepclient-pkcsreq", "certmonger-getcertinitial"])
def test_vector_with_any_byte_changed_ends_in_one_of_the_two_errors(name: str) -> None:
    data = _vector(name)
    outcomes: set[str] = set()
    for offset in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            mutated = data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]
            try:
                parse_vector(mutated)
                outcomes.add("parsed")  # an unsigned, unread part: the version, digestAlgorithms' contents
            except ScepDecodeError:
                outcomes.add("decode")
            except ScepMessageError as exc:
                outcomes.add(exc.fail_info.rfc_name)
    assert {"decode", "badMessageCheck"} <= outcomes


def test_vector_envelope_with_any_byte_changed_ends_in_an_envelope_error() -> None:
    envelope = decode_signed_message(_vector("certmonger-pkcsreq")).content
    assert envelope is not None
    key, cert = vector_ra()
    for offset in range(len(envelope)):
        mutated = envelope[:offset] + bytes([envelope[offset] ^ 0x81]) + envelope[offset + 1 :]
        with contextlib.suppress(EnvelopeError):
            open_envelope(mutated, key, cert)


def _signed_data_fields(data: bytes) -> list[bytes]:
    """The encoded fields of a message's SignedData, in order, as asn1crypto's parser splits them."""
    contents: bytes = cms.ContentInfo.load(data)["content"].contents
    fields = []
    while contents:
        size = parser.peek(contents)
        fields.append(contents[:size])
        contents = contents[size:]
    return fields


def _message(fields: list[bytes], *, after_signed_data: bytes = b"") -> bytes:
    """ContentInfo(SignedData) of the given fields; `after_signed_data` goes inside the [0] EXPLICIT."""
    signed_data = der_tlv(0x30, b"".join(fields))
    return der_sequence(der_oid("1.2.840.113549.1.7.2"), der_tlv(0xA0, signed_data + after_signed_data))


def _retagged(field: bytes, tag: int) -> bytes:
    return bytes([tag]) + field[1:]


def _with_field(index: int, make: Callable[[bytes], bytes]) -> Callable[[list[bytes]], bytes]:
    """The message with SignedData field `index` (-1: signerInfos) replaced by `make` of it."""

    def build(fields: list[bytes]) -> bytes:
        changed = list(fields)
        changed[index] = make(fields[index])
        return _message(changed)

    return build


def _signer_info_field(index: int, make: Callable[[bytes], bytes]) -> Callable[[list[bytes]], bytes]:
    """A change to the one SignerInfo's field `index`."""

    def signer_infos(encoded: bytes) -> bytes:
        signer_info: bytes = cms.SignerInfos.load(encoded)[0].contents
        values = []
        while signer_info:
            size = parser.peek(signer_info)
            values.append(signer_info[:size])
            signer_info = signer_info[size:]
        values[index] = make(values[index])
        return der_tlv(0x31, der_tlv(0x30, b"".join(values)))

    return _with_field(-1, signer_infos)


def _indefinite_primitive(field: bytes) -> bytes:
    contents: bytes = parser.parse(field)[4]
    return bytes([field[0], 0x80]) + contents + b"\x00\x00"


def _econtent_indefinite_primitive(encap: bytes) -> bytes:
    info = cms.ContentInfo.load(encap)
    octets = _indefinite_primitive(der_tlv(0x04, info["content"].native))
    return der_tlv(0x30, info["content_type"].dump() + der_tlv(0xA0, octets))


DEEP = b"\x30\x80" * 40 + b"\x00\x00" * 40
WRONG_TAG = "a required field is missing or has the wrong tag"
HOSTILE: dict[str, tuple[Callable[[list[bytes]], bytes], str]] = {
    "fail/trailing-byte": (lambda fields: _message(fields) + b"\x00", "trailing bytes"),
    "fail/trailing-inside-explicit": (
        lambda fields: _message(fields, after_signed_data=b"\x05\x00"),
        "an explicit tag must hold exactly one value",
    ),
    "fail/length-past-the-end": (lambda fields: _message(fields)[:-1], "runs past the end"),
    "fail/digest-algorithms-not-a-set": (_with_field(1, lambda field: _retagged(field, 0x30)), WRONG_TAG),
    "fail/signer-infos-not-a-set": (_with_field(-1, lambda field: _retagged(field, 0x30)), WRONG_TAG),
    "fail/encap-content-info-not-a-sequence": (_with_field(2, lambda field: _retagged(field, 0x31)), WRONG_TAG),
    "fail/certificates-hold-an-integer": (
        _with_field(3, lambda _: der_tlv(0xA0, b"\x02\x01\x01")),
        "unexpected tag 0x02",
    ),
    "fail/crls-nested-too-deep": (
        lambda fields: _message([*fields[:4], b"\xa1\x80" + DEEP + b"\x00\x00", fields[4]]),
        "nested too deeply",
    ),
    "fail/econtent-indefinite-primitive": (
        _with_field(2, _econtent_indefinite_primitive),
        "indefinite length on a primitive value",
    ),
    "fail/signature-indefinite-primitive": (
        _signer_info_field(5, _indefinite_primitive),
        "indefinite length on a primitive value",
    ),
    "fail/signed-attributes-primitive": (_signer_info_field(3, lambda field: _retagged(field, 0x80)), WRONG_TAG),
    "fail/signer-info-extra-field": (
        _signer_info_field(5, lambda field: field + b"\x05\x00"),
        "unexpected fields at the end",
    ),
    "fail/sid-an-integer": (_signer_info_field(1, lambda _: b"\x02\x01\x01"), WRONG_TAG),
    "fail/attribute-values-not-a-set": (
        _signer_info_field(3, lambda field: field.replace(b"\x31\x04\x13\x0219", b"\x05\x00\x13\x0219", 1)),
        WRONG_TAG,
    ),
}


@pytest.mark.parametrize("name", ["scepclient-pkcsreq", "certmonger-pkcsreq"])
@pytest.mark.parametrize(("build", "cause"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_message_is_undecodable(build: Callable[[list[bytes]], bytes], cause: str, name: str) -> None:
    fields = _signed_data_fields(_vector(name))
    assert _message(fields) == _vector(name)
    hostile = build(fields)
    assert hostile != _vector(name)
    with pytest.raises(ScepDecodeError) as info:
        parse_vector(hostile)
    assert info.value.http_status == 400
    assert cause in str(info.value.detail)
