"""est/wire.py: request body decoding, certs-only, base64 replies, serverkeygen multipart, CsrAttrs."""

from __future__ import annotations

import base64
import datetime as dt
import email
import subprocess
from email.message import Message

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs7

from est import wire
from shared_ca.errors import InvalidRequest
from tests.support import csr_der, csr_pem, ec_key, make_csr, subject

CSR = make_csr(dns=["device1.example"])
DER = csr_der(CSR)
B64 = base64.b64encode(DER)


def _lines(data: bytes, width: int, sep: bytes) -> bytes:
    return sep.join(data[i : i + width] for i in range(0, len(data), width))


def _cert(cn: str) -> x509.Certificate:
    key = ec_key()
    name = subject(cn)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


CERTS = [_cert("ca one"), _cert("ca two")]


# --- decode_request_body -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(_lines(B64, 64, b"\r\n") + b"\r\n", "application/pkcs10", id="base64-crlf"),
        pytest.param(_lines(B64, 64, b"\n") + b"\n", "application/pkcs10", id="base64-lf"),
        pytest.param(_lines(B64, 76, b"\n"), "application/pkcs10", id="base64-lf-76"),
        pytest.param(B64, "application/pkcs10", id="base64-no-breaks"),
        pytest.param(B64, None, id="base64-no-content-type"),
        pytest.param(B64, "application/x-www-form-urlencoded", id="base64-curl-default-type"),
        pytest.param(B64 + b" \r\n\t\n", "application/pkcs10", id="base64-trailing-whitespace"),
        pytest.param(b"\r\n  " + _lines(B64, 64, b" \r\n"), "application/pkcs10", id="base64-surrounding-space"),
        pytest.param(B64.rstrip(b"="), "application/pkcs10", id="base64-missing-padding"),
        pytest.param(csr_pem(CSR), "application/pkcs10", id="pem"),
        pytest.param(csr_pem(CSR).replace(b"\n", b"\r\n"), None, id="pem-crlf"),
        pytest.param(
            csr_pem(CSR).replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"), None, id="pem-new-label"
        ),
        pytest.param(b"\n" + csr_pem(CSR) + b"\n\n", "application/pkcs10", id="pem-surrounding-newlines"),
        pytest.param(DER, "application/pkcs10", id="der"),
        pytest.param(DER, None, id="der-no-content-type"),
    ],
)
def test_every_body_form_decodes_to_the_csr_der(body: bytes, content_type: str | None) -> None:
    assert wire.decode_request_body(body, content_type) == DER


def test_base64_of_garbage_is_returned_as_bytes() -> None:
    """Whether the bytes are a PKCS#10 request is shared_ca.csr.load_csr's job, not the wire's."""
    assert wire.decode_request_body(base64.b64encode(b"not a csr"), "application/pkcs10") == b"not a csr"


def test_a_der_prefix_with_a_wrong_length_is_read_as_base64_and_refused() -> None:
    with pytest.raises(wire.EstWireError, match="not base64"):
        wire.decode_request_body(DER[:-1], None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"", "empty request body", id="empty"),
        pytest.param(b" \r\n\t", "empty request body", id="only-whitespace"),
        pytest.param(b"====", "the request body is not base64", id="only-padding"),
        pytest.param(b"MIIB*AAA", "the request body is not base64", id="bad-character"),
        pytest.param(b"MIIBA", "the request body is not base64", id="impossible-length"),
        pytest.param(B64[:8] + b"=" + B64[8:], "the request body is not base64", id="padding-inside"),
        pytest.param("MIIBéAAA".encode(), "the request body is not base64", id="non-ascii"),
        pytest.param(
            csr_pem(CSR).replace(b"-----END CERTIFICATE REQUEST-----", b""),
            "the request body is not base64",
            id="pem-unterminated",
        ),
        pytest.param(
            csr_pem(CSR).replace(b"CERTIFICATE REQUEST", b"CERTIFICATE"),
            "the PEM block is not a CERTIFICATE REQUEST",
            id="pem-other-label",
        ),
        pytest.param(b"A" * (wire.MAX_REQUEST_BODY + 4), "request too large", id="too-large"),
        pytest.param(b"0" + b"\x00" * wire.MAX_REQUEST_BODY, "request too large", id="too-large-der"),
    ],
)
def test_refusals_are_invalid_requests_with_a_plain_message(body: bytes, message: str) -> None:
    with pytest.raises(wire.EstWireError) as caught:
        wire.decode_request_body(body, "application/pkcs10")
    assert isinstance(caught.value, InvalidRequest)
    assert caught.value.public_message == message


def test_a_body_at_the_cap_is_accepted() -> None:
    body = B64 + b" " * (wire.MAX_REQUEST_BODY - len(B64))
    assert len(body) == wire.MAX_REQUEST_BODY
    assert wire.decode_request_body(body, None) == DER


# --- certs_only and encode_base64_body -----------------------------------------------------------


def test_content_type_constants() -> None:
    assert wire.CERTS_ONLY == "application/pkcs7-mime; smime-type=certs-only"
    assert wire.CSRATTRS == "application/csrattrs"
    assert wire.PKCS8 == "application/pkcs8"


@pytest.mark.parametrize("count", [1, 2], ids=["one-cert", "chain"])
def test_certs_only_is_parsed_by_cryptography(count: int) -> None:
    der = wire.certs_only(CERTS[:count])
    assert set(pkcs7.load_der_pkcs7_certificates(der)) == set(CERTS[:count])


def test_certs_only_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="at least one"):
        wire.certs_only([])


def test_certs_only_is_parsed_by_openssl_after_base64() -> None:
    body = wire.encode_base64_body(wire.certs_only(CERTS))
    der = subprocess.run(["openssl", "base64", "-d"], input=body, capture_output=True, check=True).stdout
    result = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der, capture_output=True, check=True
    )
    printed = x509.load_pem_x509_certificates(result.stdout)
    assert set(printed) == set(CERTS)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 47, 48, 49, 1000], ids=lambda n: f"{n}-bytes")
def test_encode_base64_body_lines_and_round_trip(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    body = wire.encode_base64_body(data)
    assert base64.b64decode(body) == data
    if size:
        assert wire.decode_request_body(body, None) == data
        assert body.endswith(b"\r\n")
        lines = body[:-2].split(b"\r\n")
        assert all(len(line) == 64 for line in lines[:-1])
        assert 0 < len(lines[-1]) <= 64
        assert b"\n" not in body.replace(b"\r\n", b"")
    else:
        assert body == b""


def test_encode_base64_body_on_one_line() -> None:
    body = wire.encode_base64_body(bytes(500), line_length=None)
    assert body.count(b"\r\n") == 1
    assert body.endswith(b"\r\n")
    assert base64.b64decode(body) == bytes(500)


@pytest.mark.parametrize("width", [0, -4, 63], ids=["zero", "negative", "not-multiple-of-4"])
def test_encode_base64_body_refuses_bad_line_lengths(width: int) -> None:
    with pytest.raises(ValueError, match="line_length"):
        wire.encode_base64_body(b"x", line_length=width)


# --- serverkeygen_multipart ----------------------------------------------------------------------

KEY_DER = ec_key().private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())


def _parse_multipart(body: bytes, content_type: str) -> Message:
    return email.message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)


@pytest.mark.parametrize(
    ("boundary", "header"),
    [
        pytest.param("est", "multipart/mixed; boundary=est", id="token"),
        pytest.param("est-boundary_0123456789", "multipart/mixed; boundary=est-boundary_0123456789", id="long-token"),
        pytest.param("a b:c", 'multipart/mixed; boundary="a b:c"', id="quoted"),
    ],
)
def test_serverkeygen_multipart_parses_back_into_two_parts(boundary: str, header: str) -> None:
    certs_der = wire.certs_only(CERTS[:1])
    body, content_type = wire.serverkeygen_multipart(KEY_DER, wire.PKCS8, certs_der, boundary)
    assert content_type == header
    message = _parse_multipart(body, content_type)
    assert message.is_multipart()
    assert message.get_boundary() == boundary
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert len(parts) == 2
    key_part, certs_part = parts
    assert isinstance(key_part, Message)
    assert isinstance(certs_part, Message)
    assert key_part.get_content_type() == "application/pkcs8"
    assert key_part["Content-Transfer-Encoding"] == "base64"
    assert key_part.get_payload(decode=True) == KEY_DER
    assert certs_part.get_content_type() == "application/pkcs7-mime"
    assert certs_part.get_param("smime-type") == "certs-only"
    assert certs_part["Content-Transfer-Encoding"] == "base64"
    assert certs_part.get_payload(decode=True) == certs_der
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert body.endswith(b"--" + boundary.encode() + b"--\r\n")


def test_serverkeygen_multipart_carries_an_encrypted_key_type() -> None:
    body, content_type = wire.serverkeygen_multipart(b"\x30\x00", wire.SERVER_GENERATED_KEY, b"\x30\x00", "est")
    key_part = _parse_multipart(body, content_type).get_payload(0)
    assert isinstance(key_part, Message)
    assert key_part.get_param("smime-type") == "server-generated-key"


@pytest.mark.parametrize(
    ("boundary", "key_type"),
    [
        pytest.param("", wire.PKCS8, id="empty-boundary"),
        pytest.param("x" * 71, wire.PKCS8, id="boundary-too-long"),
        pytest.param("ends-in-space ", wire.PKCS8, id="boundary-trailing-space"),
        pytest.param("semi;colon", wire.PKCS8, id="boundary-bad-character"),
        pytest.param("est", "application/pkcs8\r\nX-Injected: 1", id="content-type-line-break"),
    ],
)
def test_serverkeygen_multipart_refuses_bad_boundaries_and_types(boundary: str, key_type: str) -> None:
    with pytest.raises(ValueError, match=r"boundary|line break"):
        wire.serverkeygen_multipart(KEY_DER, key_type, b"\x30\x00", boundary)


# --- CSR attributes ------------------------------------------------------------------------------

CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
SECP384R1_DER = bytes.fromhex("06052b81040022")
ECDSA_SHA384 = "1.2.840.10045.4.3.3"


@pytest.mark.parametrize(
    ("oids", "attributes"),
    [
        pytest.param((), (), id="empty"),
        pytest.param((CHALLENGE_PASSWORD,), (), id="one-oid"),
        pytest.param((CHALLENGE_PASSWORD, ECDSA_SHA384, "2.999.1234567"), (), id="oids-large-arcs"),
        pytest.param((), ((EC_PUBLIC_KEY, (SECP384R1_DER,)),), id="one-attribute"),
        pytest.param(
            (CHALLENGE_PASSWORD, ECDSA_SHA384),
            ((EC_PUBLIC_KEY, (SECP384R1_DER,)), (EXTENSION_REQUEST, (bytes.fromhex("0603551d11"),))),
            id="rfc7030-example-style",
        ),
        pytest.param((), (("1.2.3.4", (b"\x02\x01\x01", b"\x02\x01\x02")),), id="sorted-multi-valued"),
        pytest.param((), (("1.2.3.4", (b"\x04\x82\x01\x00" + bytes(256),)),), id="long-value"),
    ],
)
def test_csr_attrs_round_trip(oids: tuple[str, ...], attributes: tuple[tuple[str, tuple[bytes, ...]], ...]) -> None:
    der = wire.encode_csr_attrs(oids, attributes)
    assert wire.decode_csr_attrs(der) == (oids, attributes)


def test_csr_attrs_known_encoding() -> None:
    """The RFC 7030 §4.5.2 example's first element, challengePassword, then an ecPublicKey attribute."""
    der = wire.encode_csr_attrs([CHALLENGE_PASSWORD], [(EC_PUBLIC_KEY, [SECP384R1_DER])])
    assert der.hex() == "301f" + "06092a864886f70d010907" + "3012" + "06072a8648ce3d0201" + "3107" + "06052b81040022"


def test_csr_attrs_sorts_set_values() -> None:
    der = wire.encode_csr_attrs([], [("1.2.3.4", [b"\x02\x01\x02", b"\x02\x01\x01"])])
    assert wire.decode_csr_attrs(der)[1] == (("1.2.3.4", (b"\x02\x01\x01", b"\x02\x01\x02")),)


def test_openssl_asn1parse_accepts_csr_attrs() -> None:
    der = wire.encode_csr_attrs(
        [CHALLENGE_PASSWORD, ECDSA_SHA384], [(EC_PUBLIC_KEY, [SECP384R1_DER]), ("1.2.3.4", [b"\x02\x01\x05"])]
    )
    body = wire.encode_base64_body(der, line_length=None)
    decoded = subprocess.run(["openssl", "base64", "-d", "-A"], input=body, capture_output=True, check=True).stdout
    assert decoded == der
    result = subprocess.run(["openssl", "asn1parse", "-inform", "DER"], input=decoded, capture_output=True, check=True)
    printed = result.stdout.decode()
    assert "challengePassword" in printed
    assert "ecdsa-with-SHA384" in printed
    assert "secp384r1" in printed
    assert "error" not in printed.lower()


def test_empty_csr_attrs_body_is_empty() -> None:
    assert wire.decode_csr_attrs(b"") == ((), ())


@pytest.mark.parametrize(
    "der",
    [
        pytest.param(b"\x31\x00", id="not-a-sequence"),
        pytest.param(b"\x30\x00\x00", id="trailing-bytes"),
        pytest.param(b"\x30\x05\x06\x03\x2a", id="truncated"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="integer-item"),
        pytest.param(b"\x30\x04\x30\x02\x31\x00", id="attribute-without-oid"),
        pytest.param(b"\x30\x06\x30\x04\x06\x02\x2a\x03", id="attribute-without-set"),
        pytest.param(b"\x30\x08\x30\x06\x06\x02\x2a\x03\x31\x00", id="no-values"),
        pytest.param(b"\x30\x03\x06\x01\x81", id="oid-truncated-arc"),
        pytest.param(b"\x30\x04\x06\x02\x80\x01", id="oid-non-minimal"),
        pytest.param(b"\x30\x80\x00\x00", id="indefinite-length"),
        pytest.param(b"\x30\x81\x01\x06", id="non-minimal-length"),
    ],
)
def test_decode_csr_attrs_refuses_malformed_der(der: bytes) -> None:
    with pytest.raises(wire.EstWireError, match="not a valid CsrAttrs"):
        wire.decode_csr_attrs(der)


@pytest.mark.parametrize(
    ("oids", "attributes", "message"),
    [
        pytest.param(["1"], [], "not an OID", id="one-arc"),
        pytest.param(["3.1"], [], "not an OID", id="first-arc-3"),
        pytest.param(["1.40"], [], "not an OID", id="second-arc-40"),
        pytest.param(["1.2.x"], [], "not an OID", id="not-numeric"),
        pytest.param([], [("1.2.3", [])], "at least one value", id="no-values"),
        pytest.param([], [("1.2.3", [b"\x02"])], "not DER", id="value-not-der"),
        pytest.param([], [("1.2.3", [b"\x02\x01\x01\x05\x00"])], "not one DER element", id="two-elements"),
    ],
)
def test_encode_csr_attrs_refuses_bad_input(
    oids: list[str], attributes: list[tuple[str, list[bytes]]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        wire.encode_csr_attrs(oids, attributes)
