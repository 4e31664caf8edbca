"""scep.envelope: CMS EnvelopedData round trips for every cipher and key transport, the primitive
encryptedContent, recipient selection, one identical error for every decryption failure, and
interop with `openssl cms` in both directions."""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import cms, parser
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from scep.envelope import (
    DECRYPTION_FAILED,
    ContentCipher,
    EnvelopeDecryptionError,
    KeyTransport,
    MalformedEnvelope,
    NotForRecipient,
    UnsupportedEnvelopeAlgorithm,
    open_envelope,
    seal_envelope,
)
from tests.support import rsa_key

PLAINTEXT = b"a PKCS#10 request would be here " * 5


@dataclass(frozen=True)
class Pki:
    """A CA (P-256), an RA (RSA-2048, the envelope recipient) and a second RSA party."""

    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    ra_key: rsa.RSAPrivateKey
    ra_cert: x509.Certificate
    other_key: rsa.RSAPrivateKey
    other_cert: x509.Certificate


def issue(
    name: str,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    issuer_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None = None,
    serial: int = 2,
) -> x509.Certificate:
    """A certificate for `key` named CN=`name`, signed by `issuer_key` (self-signed when no issuer)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2044, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


@functools.cache
def pki() -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue("Envelope Test CA", ca_key, ca_key, serial=1)
    ra_key = rsa_key(2048)
    other_key = rsa_key(2048, fresh=True)
    ra_cert = issue("Envelope Test RA", ra_key, ca_key, ca_cert.subject, serial=0x1234)
    other_cert = issue("Someone else", other_key, ca_key, ca_cert.subject, serial=0x5678)
    return Pki(ca_key, ca_cert, ra_key, ra_cert, other_key, other_cert)


def counter_rng() -> functools.partial[bytes]:
    """A deterministic rng: each call returns the next bytes of a fixed stream."""
    state = {"n": 0}

    def take(n: int, state: dict[str, int]) -> bytes:
        start = state["n"]
        state["n"] += n
        return bytes((start + i) * 7 % 256 for i in range(n))

    return functools.partial(take, state=state)


def replace_ciphertext(der: bytes, ciphertext: bytes) -> bytes:
    info = cms.ContentInfo.load(der)
    info["content"]["encrypted_content_info"]["encrypted_content"] = ciphertext
    out: bytes = info.dump(force=True)
    return out


def replace_encrypted_key(der: bytes, encrypted_key: bytes) -> bytes:
    info = cms.ContentInfo.load(der)
    info["content"]["recipient_infos"][0].chosen["encrypted_key"] = encrypted_key
    out: bytes = info.dump(force=True)
    return out


ROUND_TRIPS = [
    pytest.param(cipher, transport, id=f"ok/{cipher.value}-{transport.value}")
    for cipher in ContentCipher
    for transport in KeyTransport
]


@pytest.mark.parametrize(("cipher", "transport"), ROUND_TRIPS)
def test_round_trip(cipher: ContentCipher, transport: KeyTransport) -> None:
    p = pki()
    der = seal_envelope(PLAINTEXT, p.ra_cert, cipher, transport)
    opened = open_envelope(der, p.ra_key, p.ra_cert)
    assert (opened.plaintext, opened.cipher, opened.key_transport) == (PLAINTEXT, cipher, transport)


@pytest.mark.parametrize("cipher", list(ContentCipher), ids=lambda c: f"primitive/{c.value}")
def test_encrypted_content_is_primitive(cipher: ContentCipher) -> None:
    der = seal_envelope(PLAINTEXT, pki().ra_cert, cipher)
    eci = cms.ContentInfo.load(der)["content"]["encrypted_content_info"]
    class_, method, tag, _h, _c, _t = parser.parse(eci["encrypted_content"].dump())
    assert (class_, method, tag) == (2, 0, 0)  # context [0], primitive
    assert eci["content_encryption_algorithm"]["algorithm"].dotted == cipher.oid


def tlv(tag: int, contents: bytes) -> bytes:
    """A DER value with a definite length."""
    n = len(contents)
    length = (
        bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8)
    )
    return bytes([tag]) + length + contents


def test_constructed_encrypted_content_is_read() -> None:
    """micromdm's scepclient sends encryptedContent as a definite-length constructed [0] of chunks."""
    p = pki()
    info = cms.ContentInfo.load(seal_envelope(PLAINTEXT, p.ra_cert, ContentCipher.AES128))
    enveloped = info["content"]
    eci = enveloped["encrypted_content_info"]
    ciphertext: bytes = eci["encrypted_content"].native
    nested = b"\x24\x80" + tlv(0x04, ciphertext[64:]) + b"\x00\x00"  # an indefinite-length chunk, too
    chunks = tlv(0x04, ciphertext[:16]) + tlv(0x04, ciphertext[16:64]) + nested
    new_eci = tlv(0x30, eci["content_type"].dump() + eci["content_encryption_algorithm"].dump() + tlv(0xA0, chunks))
    new_enveloped = tlv(0x30, enveloped["version"].dump() + enveloped["recipient_infos"].dump() + new_eci)
    der = tlv(0x30, info["content_type"].dump() + tlv(0xA0, new_enveloped))
    assert open_envelope(der, p.ra_key, p.ra_cert).plaintext == PLAINTEXT


def test_recipient_by_subject_key_identifier() -> None:
    p = pki()
    der = seal_envelope(PLAINTEXT, p.ra_cert, ContentCipher.AES256)
    info = cms.ContentInfo.load(der)
    ski = p.ra_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    ktri = info["content"]["recipient_infos"][0].chosen
    ktri["rid"] = cms.RecipientIdentifier({"subject_key_identifier": ski})
    ktri["version"] = "v2"
    assert open_envelope(info.dump(force=True), p.ra_key, p.ra_cert).plaintext == PLAINTEXT


def test_wrong_recipient_is_its_own_error() -> None:
    p = pki()
    der = seal_envelope(PLAINTEXT, p.other_cert, ContentCipher.AES128)
    with pytest.raises(NotForRecipient):
        open_envelope(der, p.ra_key, p.ra_cert)


def _cbc_envelope_with_plaintext_block(block: bytes) -> bytes:
    """An AES-128 envelope whose ciphertext decrypts (under the known key) to `block`, unpadded."""
    rng = counter_rng()
    der = seal_envelope(PLAINTEXT, pki().ra_cert, ContentCipher.AES128, rng=rng)
    replay = counter_rng()
    key, iv = replay(16), replay(16)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return replace_ciphertext(der, encryptor.update(block) + encryptor.finalize())


def _wrong_key(der: bytes, size: int) -> bytes:
    """Replace the wrapped key with a validly wrapped key that is not the content key."""
    public_key = pki().ra_cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    return replace_encrypted_key(der, public_key.encrypt(bytes(range(100, 100 + size)), padding.PKCS1v15()))


def _decryption_failures() -> list[object]:
    p = pki()
    aes = seal_envelope(PLAINTEXT, p.ra_cert, ContentCipher.AES128, rng=counter_rng())
    gcm = seal_envelope(PLAINTEXT, p.ra_cert, ContentCipher.AES256_GCM, rng=counter_rng())
    des3 = seal_envelope(PLAINTEXT, p.ra_cert, ContentCipher.TRIPLE_DES, rng=counter_rng())
    oaep = seal_envelope(PLAINTEXT, p.ra_cert, ContentCipher.AES256_GCM, KeyTransport.RSA_OAEP)
    gcm_ciphertext: bytes = cms.ContentInfo.load(gcm)["content"]["encrypted_content_info"]["encrypted_content"].native
    public_key = p.ra_cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    cases = {
        "bad-padding": _cbc_envelope_with_plaintext_block(b"\x00" * 15 + b"\x11"),
        "bad-padding-mixed": _cbc_envelope_with_plaintext_block(b"\x00" * 13 + b"\x02\x03\x03"),
        "wrong-key-aes": _wrong_key(aes, 16),
        "wrong-key-3des": _wrong_key(des3, 24),
        "wrong-key-length-gcm": _wrong_key(gcm, 24),
        "garbage-wrapped-key-gcm": replace_encrypted_key(gcm, b"\x5a" * 256),
        "short-wrapped-key-gcm": replace_encrypted_key(gcm, b"\x01"),
        "oaep-garbage-gcm": replace_encrypted_key(oaep, b"\x5a" * 256),
        "gcm-tag-flipped": replace_ciphertext(gcm, gcm_ciphertext[:-1] + bytes([gcm_ciphertext[-1] ^ 1])),
        "gcm-shorter-than-tag": replace_ciphertext(gcm, gcm_ciphertext[:5]),
        "not-whole-blocks": replace_ciphertext(aes, b"\x00" * 17),
        "empty-ciphertext": replace_ciphertext(aes, b""),
    }
    return [pytest.param(der, id=f"fail/{name}") for name, der in cases.items()]


@pytest.mark.parametrize("der", _decryption_failures())
def test_every_decryption_failure_is_identical(der: bytes) -> None:
    p = pki()
    with pytest.raises(EnvelopeDecryptionError) as info:
        open_envelope(der, p.ra_key, p.ra_cert)
    assert str(info.value) == DECRYPTION_FAILED
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_bad_padding_and_wrong_key_look_the_same() -> None:
    p = pki()
    aes = seal_envelope(PLAINTEXT, p.ra_cert, ContentCipher.AES128, rng=counter_rng())
    errors = []
    for der in (_cbc_envelope_with_plaintext_block(b"\x00" * 15 + b"\x11"), _wrong_key(aes, 16)):
        with pytest.raises(EnvelopeDecryptionError) as info:
            open_envelope(der, p.ra_key, p.ra_cert)
        errors.append((type(info.value), str(info.value), info.value.args))
    assert errors[0] == errors[1]


def _rebuilt(
    der: bytes, *, recipient_infos: bytes | None = None, eci: bytes | None = None, after: bytes = b""
) -> bytes:
    """`der` with its recipientInfos contents or encryptedContentInfo contents replaced, or bytes
    added inside the [0] EXPLICIT after the EnvelopedData."""
    info = cms.ContentInfo.load(der)
    enveloped = info["content"]
    infos = enveloped["recipient_infos"].dump() if recipient_infos is None else tlv(0x31, recipient_infos)
    encrypted = enveloped["encrypted_content_info"]
    eci_der = encrypted.dump() if eci is None else tlv(0x30, eci)
    body = tlv(0x30, enveloped["version"].dump() + infos + eci_der) + after
    return tlv(0x30, info["content_type"].dump() + tlv(0xA0, body))


def _malformed() -> list[object]:
    p = pki()
    aes = seal_envelope(PLAINTEXT, p.ra_cert, ContentCipher.AES128)
    signed_data = cms.ContentInfo({"content_type": "data", "content": b"x"}).dump()
    info = cms.ContentInfo.load(aes)
    info["content"]["encrypted_content_info"]["content_encryption_algorithm"]["parameters"] = b"\x00" * 8
    short_iv = info.dump(force=True)
    eci = info["content"]["encrypted_content_info"]
    algorithm = cms.ContentInfo.load(aes)["content"]["encrypted_content_info"]["content_encryption_algorithm"].dump()
    ciphertext: bytes = eci["encrypted_content"].native
    return [
        pytest.param(b"", MalformedEnvelope, id="fail/empty"),
        pytest.param(b"\x30\x03\x02\x01", MalformedEnvelope, id="fail/truncated"),
        pytest.param(aes[:-7], MalformedEnvelope, id="fail/truncated-tail"),
        pytest.param(aes + b"\x00", MalformedEnvelope, id="fail/trailing-byte"),
        pytest.param(_rebuilt(aes, after=b"\x05\x00"), MalformedEnvelope, id="fail/trailing-inside-explicit"),
        pytest.param(signed_data, MalformedEnvelope, id="fail/not-enveloped-data"),
        pytest.param(short_iv, MalformedEnvelope, id="fail/short-iv"),
        pytest.param(aes.replace(bytes.fromhex("0609608648016503040102"), bytes.fromhex("0609608648016503040103")),
                     UnsupportedEnvelopeAlgorithm, id="fail/aes128-ofb"),
        pytest.param(_rebuilt(aes, recipient_infos=b"\xa5\x00"), MalformedEnvelope, id="fail/unknown-recipient-kind"),
        pytest.param(_rebuilt(aes, recipient_infos=b"\xa3\x00"), UnsupportedEnvelopeAlgorithm,
                     id="fail/password-recipient-only"),
        pytest.param(_rebuilt(aes, recipient_infos=b""), NotForRecipient, id="fail/no-recipient"),
        pytest.param(_rebuilt(aes, eci=b"\x02\x01\x01" + algorithm + tlv(0x80, ciphertext)), MalformedEnvelope,
                     id="fail/content-type-not-an-oid"),
        pytest.param(_rebuilt(aes, eci=b"\x06\x01\x01" + algorithm + tlv(0xA0, b"\x02\x01\x01")), MalformedEnvelope,
                     id="fail/encrypted-content-chunk-not-octets"),
        pytest.param(_rebuilt(aes, eci=b"\x06\x01\x01" + algorithm + tlv(0x81, ciphertext)), MalformedEnvelope,
                     id="fail/encrypted-content-not-[0]"),
        pytest.param(_rebuilt(aes, eci=b"\x06\x01\x01" + algorithm), MalformedEnvelope, id="fail/no-encrypted-content"),
        pytest.param(_rebuilt(aes, eci=b"\x06\x01\x01" + tlv(0x80, ciphertext)), MalformedEnvelope,
                     id="fail/no-content-encryption-algorithm"),
        pytest.param(_rebuilt(aes, eci=b"\x06\x01\x01" + algorithm + tlv(0x80, ciphertext) + b"\x05\x00"),
                     MalformedEnvelope, id="fail/encrypted-content-info-extra-field"),
        pytest.param(_rebuilt(aes, eci=b"\x06\x01\x01" + algorithm + b"\xa0\x80\x04\x80" + ciphertext + bytes(4)),
                     MalformedEnvelope, id="fail/indefinite-primitive-chunk"),
    ]  # fmt: skip


@pytest.mark.parametrize(("der", "error"), _malformed())
def test_malformed_envelopes(der: bytes, error: type[Exception]) -> None:
    p = pki()
    with pytest.raises(error):
        open_envelope(der, p.ra_key, p.ra_cert)


def test_oaep_parameters_on_the_wire() -> None:
    p = pki()
    for transport, expected in ((KeyTransport.RSA_OAEP, "3000"), (KeyTransport.RSA_OAEP_SHA256, "302f")):
        der = seal_envelope(PLAINTEXT, p.ra_cert, ContentCipher.AES128, transport)
        algorithm = cms.ContentInfo.load(der)["content"]["recipient_infos"][0].chosen["key_encryption_algorithm"]
        assert algorithm["algorithm"].dotted == "1.2.840.113549.1.1.7"
        assert algorithm["parameters"].dump().hex().startswith(expected)


@pytest.mark.parametrize("cipher", [ContentCipher.DES, ContentCipher.TRIPLE_DES], ids=str)
def test_des_keys_have_odd_parity(cipher: ContentCipher) -> None:
    p = pki()
    der = seal_envelope(PLAINTEXT, p.ra_cert, cipher, rng=bytes)
    wrapped: bytes = cms.ContentInfo.load(der)["content"]["recipient_infos"][0].chosen["encrypted_key"].native
    key = p.ra_key.decrypt(wrapped, padding.PKCS1v15())
    assert len(key) == cipher.key_size
    assert all(bin(octet).count("1") % 2 == 1 for octet in key)


def test_non_rsa_recipient_is_refused() -> None:
    p = pki()
    with pytest.raises(UnsupportedEnvelopeAlgorithm):
        seal_envelope(PLAINTEXT, p.ca_cert, ContentCipher.AES128)


# --- interop with OpenSSL --------------------------------------------------------------------


@functools.cache
def legacy_provider() -> bool:
    """True when OpenSSL's legacy provider (single DES) loads here."""
    result = subprocess.run(
        ["openssl", "list", "-providers", "-provider", "legacy"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and "legacy" in result.stdout.lower()


def _pem_files(tmp_path: Path) -> tuple[Path, Path]:
    p = pki()
    cert, key = tmp_path / "ra.pem", tmp_path / "ra.key"
    cert.write_bytes(p.ra_cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        p.ra_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def _provider_args(cipher: ContentCipher) -> list[str]:
    return ["-provider", "legacy", "-provider", "default"] if cipher is ContentCipher.DES else []


def _interop_ciphers() -> list[object]:
    ciphers = [
        (ContentCipher.AES256, "-aes256"),
        (ContentCipher.TRIPLE_DES, "-des3"),
        (ContentCipher.AES128, "-aes128"),
    ]
    params: list[object] = [pytest.param(c, flag, id=f"openssl/{c.value}") for c, flag in ciphers]
    # Single DES needs OpenSSL 3's legacy provider; our own round trips cover it everywhere else.
    if legacy_provider():
        params.append(pytest.param(ContentCipher.DES, "-des", id="openssl/des"))
    return params


@pytest.mark.parametrize(("cipher", "flag"), _interop_ciphers())
@pytest.mark.parametrize("transport", [KeyTransport.RSA_PKCS1V15, KeyTransport.RSA_OAEP_SHA256], ids=str)
def test_openssl_opens_what_we_seal(tmp_path: Path, cipher: ContentCipher, flag: str, transport: KeyTransport) -> None:
    cert, key = _pem_files(tmp_path)
    sealed = tmp_path / "sealed.der"
    sealed.write_bytes(seal_envelope(PLAINTEXT, pki().ra_cert, cipher, transport))
    command = ["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(sealed), "-recip", str(cert)]
    result = subprocess.run([*command, "-inkey", str(key), *_provider_args(cipher)], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == PLAINTEXT


@pytest.mark.parametrize(("cipher", "flag"), _interop_ciphers())
@pytest.mark.parametrize(
    ("transport", "keyopts"),
    [
        pytest.param(KeyTransport.RSA_PKCS1V15, [], id="rsa"),
        pytest.param(KeyTransport.RSA_OAEP, ["-keyopt", "rsa_padding_mode:oaep"], id="rsa-oaep"),
        pytest.param(
            KeyTransport.RSA_OAEP_SHA256,
            ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256", "-keyopt", "rsa_mgf1_md:sha256"],
            id="rsa-oaep-sha256",
        ),
    ],
)
def test_we_open_what_openssl_seals(
    tmp_path: Path, cipher: ContentCipher, flag: str, transport: KeyTransport, keyopts: list[str]
) -> None:
    cert, _key = _pem_files(tmp_path)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(PLAINTEXT)
    command = ["openssl", "cms", "-encrypt", "-binary", "-outform", "DER", "-in", str(plain), flag]
    result = subprocess.run(
        [*command, *_provider_args(cipher), "-recip", str(cert), *keyopts], capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    opened = open_envelope(result.stdout, pki().ra_key, pki().ra_cert)
    assert (opened.plaintext, opened.cipher, opened.key_transport) == (PLAINTEXT, cipher, transport)


def test_we_open_openssl_streamed_ber(tmp_path: Path) -> None:
    """`-stream` writes indefinite lengths and a constructed encryptedContent."""
    cert, _key = _pem_files(tmp_path)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(PLAINTEXT * 40)
    command = ["openssl", "cms", "-encrypt", "-binary", "-stream", "-outform", "DER", "-in", str(plain), "-aes256"]
    result = subprocess.run([*command, "-recip", str(cert)], capture_output=True, check=True)
    assert open_envelope(result.stdout, pki().ra_key, pki().ra_cert).plaintext == PLAINTEXT * 40


def test_cbc_padding_is_pkcs7() -> None:
    """Sanity check of the known-key helper the padding cases rely on."""
    rng = counter_rng()
    der = seal_envelope(b"abc", pki().ra_cert, ContentCipher.AES128, rng=rng)
    replay = counter_rng()
    key, iv = replay(16), replay(16)
    ciphertext: bytes = cms.ContentInfo.load(der)["content"]["encrypted_content_info"]["encrypted_content"].native
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpadder = sym_padding.PKCS7(128).unpadder()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    assert unpadder.update(padded) + unpadder.finalize() == b"abc"
