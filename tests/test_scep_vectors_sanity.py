"""The SCEP request vectors captured from real clients (tests/vectors/README.md) are there and are what
their README lines say: signed CMS, envelope to our RA, and inside a PKCS#10 CSR with the challenge
(or, for GetCertInitial, an IssuerAndSubject). Only a check of the files, not of the SCEP parser."""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms, core, parser, pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

VECTORS = Path(__file__).resolve().parent / "vectors"
CHALLENGE = "VectorSecret123"
MESSAGE_TYPE_OID = "2.16.840.1.113733.1.9.2"


@dataclass(frozen=True)
class Vector:
    name: str
    message_type: str
    cipher: str  # asn1crypto's name of the envelope's content-encryption algorithm
    digest: str
    method: str
    content_type: str | None
    user_agent: str | None
    inner: str  # "csr" or "issuer_and_subject"
    recipients: int  # key-transport recipients in the envelope (scepclient adds the CA next to the RA)


def _scepclient(name: str, message_type: str) -> Vector:
    """micromdm scepclient 2.1.0: DES-CBC + SHA-1, POST, envelope to RA and CA."""
    return Vector(name, message_type, "des", "sha1", "POST", "application/octet-stream", "Go-http-client/1.1", "csr", 2)


def _certmonger(name: str, message_type: str, inner: str = "csr") -> Vector:
    """certmonger 0.79.17: AES-256-CBC + SHA-256, GET without Content-Type or User-Agent, envelope to the RA."""
    return Vector(name, message_type, "aes256_cbc", "sha256", "GET", None, None, inner, 1)


ALL = [
    _scepclient("scepclient-pkcsreq", "19"),
    _scepclient("scepclient-renewalreq", "17"),
    _certmonger("certmonger-pkcsreq", "19"),
    _certmonger("certmonger-resubmit", "19"),
    _certmonger("certmonger-rekey", "19"),
    _certmonger("certmonger-rekey-norenewal", "19"),
    _certmonger("certmonger-getcertinitial", "20", inner="issuer_and_subject"),
]
PARAMS = [pytest.param(v, id=v.name) for v in ALL]


class IssuerAndSubject(core.Sequence):  # type: ignore[misc]
    """RFC 8894 section 3.3.3: the content of a CertPoll (GetCertInitial)."""

    _fields = [("issuer", asn1_x509.Name), ("subject", asn1_x509.Name)]


def _der(vector: Vector) -> bytes:
    return (VECTORS / f"{vector.name}.der").read_bytes()


def _signed_data(vector: Vector) -> Any:
    return cms.ContentInfo.load(_der(vector))["content"]


def _envelope(vector: Vector) -> bytes:
    """The DER of the pkcsPKIEnvelope (a ContentInfo of type envelopedData) inside the signedData."""
    content: bytes = _signed_data(vector)["encap_content_info"]["content"].native
    return content


def _octets(method: int, contents: bytes) -> bytes:
    """The value of an OCTET STRING, primitive or BER-constructed (a series of OCTET STRING chunks)."""
    if method == 0:
        return contents
    chunks = []
    offset = 0
    while offset < len(contents):
        length = parser.peek(contents[offset:])
        _, chunk_method, _, _, chunk, _ = parser.parse(contents[offset : offset + length])
        chunks.append(_octets(chunk_method, chunk))
        offset += length
    return b"".join(chunks)


def _encrypted_content(encrypted_content_info: Any) -> bytes:
    """encryptedContent [0] read by hand: micromdm's scepclient sends it constructed (definite length,
    one OCTET STRING inside), which asn1crypto's cms.EncryptedContentInfo refuses to parse."""
    contents: bytes = encrypted_content_info.contents
    offset = 0
    while offset < len(contents):
        length = parser.peek(contents[offset:])
        class_, method, tag, _, value, _ = parser.parse(contents[offset : offset + length])
        if class_ == 2 and tag == 0:
            return _octets(method, value)
        offset += length
    raise AssertionError("envelope has no encryptedContent")


def _ra_key() -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((VECTORS / "ra.key").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@functools.cache
def _legacy_provider_available() -> bool:
    result = subprocess.run(
        ["openssl", "list", "-providers", "-provider", "legacy"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and "legacy" in result.stdout


def _openssl_decrypt(envelope: bytes, cipher: str) -> bytes:
    providers = ["-provider", "legacy", "-provider", "default"] if cipher == "des" else []
    recipient = ["-recip", str(VECTORS / "ra.pem"), "-inkey", str(VECTORS / "ra.key")]
    result = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "DER", "-binary", *providers, *recipient],
        input=envelope,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def _python_decrypt(envelope: bytes) -> bytes:
    """Open the envelope without OpenSSL's legacy provider: RSA PKCS#1 v1.5 key transport, then
    AES-CBC, DES-EDE3-CBC, or single DES as TripleDES with the key K|K|K."""
    enveloped = cms.ContentInfo.load(envelope)["content"]
    _, _, ra_der = pem.unarmor((VECTORS / "ra.pem").read_bytes())
    ra = asn1_x509.Certificate.load(ra_der)
    [recipient] = [
        info.chosen
        for info in enveloped["recipient_infos"]
        if info.chosen["rid"].chosen["serial_number"].native == ra.serial_number
        and info.chosen["rid"].chosen["issuer"] == ra.issuer
    ]
    content_key = _ra_key().decrypt(recipient["encrypted_key"].native, padding.PKCS1v15())
    encrypted = enveloped["encrypted_content_info"]
    algorithm = encrypted["content_encryption_algorithm"]
    name = algorithm["algorithm"].native
    iv = algorithm["parameters"].native
    block: BlockCipherAlgorithm
    if name == "des":
        block = TripleDES(content_key * 3)
    elif name == "tripledes_3key":
        block = TripleDES(content_key)
    elif name in ("aes128_cbc", "aes192_cbc", "aes256_cbc"):
        block = algorithms.AES(content_key)
    else:
        raise AssertionError(f"unexpected envelope cipher {name}")
    decryptor = Cipher(block, modes.CBC(iv)).decryptor()
    padded = decryptor.update(_encrypted_content(encrypted)) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(block.block_size).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _open_envelope(vector: Vector) -> bytes:
    envelope = _envelope(vector)
    if vector.cipher != "des" or _legacy_provider_available():
        return _openssl_decrypt(envelope, vector.cipher)
    return _python_decrypt(envelope)


def test_every_vector_is_there_and_documented() -> None:
    readme = (VECTORS / "README.md").read_text(encoding="utf-8")
    for name in ("ca.pem", "ca.key", "ra.pem", "ra.key", "capture.py"):
        assert (VECTORS / name).is_file(), name
        assert f"`{name}`" in readme, f"README has no line for {name}"
    for vector in ALL:
        for suffix in (".der", ".json"):
            assert (VECTORS / f"{vector.name}{suffix}").is_file(), f"{vector.name}{suffix}"
            assert f"`{vector.name}{suffix}`" in readme, f"README has no line for {vector.name}{suffix}"
    assert sorted(p.stem for p in VECTORS.glob("*.der")) == sorted(v.name for v in ALL)


def test_ra_certificate_is_the_envelope_recipient_kind() -> None:
    ra = x509.load_pem_x509_certificate((VECTORS / "ra.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((VECTORS / "ca.pem").read_bytes())
    usage = ra.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    assert ra.issuer == ca.subject
    ra.verify_directly_issued_by(ca)


@pytest.mark.parametrize("vector", PARAMS)
def test_vector_is_signed_data_of_the_recorded_kind(vector: Vector) -> None:
    info = cms.ContentInfo.load(_der(vector))
    assert info["content_type"].native == "signed_data"
    signer = info["content"]["signer_infos"][0]
    assert signer["digest_algorithm"]["algorithm"].native == vector.digest
    attributes = {attr["type"].dotted: attr["values"][0].native for attr in signer["signed_attrs"]}
    assert attributes[MESSAGE_TYPE_OID] == vector.message_type
    # The signature over the signed attributes verifies against the signer certificate in the message.
    verify = subprocess.run(
        ["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-out", "/dev/null"],
        input=_der(vector),
        capture_output=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr.decode(errors="replace")


@pytest.mark.parametrize("vector", PARAMS)
def test_envelope_opens_with_the_ra_key(vector: Vector) -> None:
    envelope = _envelope(vector)
    enveloped = cms.ContentInfo.load(envelope)
    assert enveloped["content_type"].native == "enveloped_data"
    algorithm = enveloped["content"]["encrypted_content_info"]["content_encryption_algorithm"]
    assert algorithm["algorithm"].native == vector.cipher
    assert len(enveloped["content"]["recipient_infos"]) == vector.recipients
    opened = _open_envelope(vector)
    # The pure-Python route (used when OpenSSL lacks the legacy provider) must agree with it.
    assert _python_decrypt(envelope) == opened


@pytest.mark.parametrize("vector", PARAMS)
def test_envelope_holds_the_request(vector: Vector) -> None:
    content = _open_envelope(vector)
    if vector.inner == "issuer_and_subject":
        parsed = IssuerAndSubject.load(content)
        ca = x509.load_pem_x509_certificate((VECTORS / "ca.pem").read_bytes())
        assert parsed["issuer"].dump() == ca.subject.public_bytes()
        assert parsed["subject"].native["common_name"] == "device2"
        return
    result = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-noout", "-text", "-verify"],
        input=content,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    text = result.stdout.decode()
    assert "challengePassword" in text
    assert CHALLENGE in text
    assert "self-signature verify OK" in result.stderr.decode()


@pytest.mark.parametrize("vector", PARAMS)
def test_side_file_records_the_transport(vector: Vector) -> None:
    side = json.loads((VECTORS / f"{vector.name}.json").read_text(encoding="utf-8"))
    request = side["pkioperation"]
    assert side["file"] == f"{vector.name}.der"
    assert request["method"] == vector.method
    assert request["content_type"] == vector.content_type
    assert request["user_agent"] == vector.user_agent
    if vector.method == "GET":
        assert request["message_param"]["encoding"] is not None
        assert request["message_param"]["repairs"] == []
    else:
        assert request["body_length"] == len(_der(vector))
