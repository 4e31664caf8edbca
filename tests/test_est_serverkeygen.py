"""est.serverkeygen: the RFC 7030 §4.4.1 CSR attributes, key generation under a profile, PKCS#8, the
encrypted key (EnvelopedData(SignedData(AsymmetricKeyPackage))) opened and verified by `openssl cms`
for every recipient kind, and the pre-shared KEK directory."""

from __future__ import annotations

import datetime as dt
import functools
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import cms, core, keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from est.key_delivery import (
    ASYMMETRIC_KEY_PACKAGE_OID,
    AsymmetricKeyPackage,
    SignerKey,
    encrypt_to_certificate,
    encrypt_to_kek,
    load_keks,
    pkcs8_der,
)
from est.serverkeygen import KeyEncryptionRequest, KeyProtection, generate_key, key_request
from est.wire import EstWireError
from shared_ca.errors import AlgorithmNotAllowed, KeyMaterialError
from shared_ca.keys import PrivateKey, PublicKey, public_key_bytes
from shared_ca.profiles import Profile
from tests.support import ec_key, ed_key, rsa_key

SYM = KeyProtection.SYMMETRIC.value
ASYM = KeyProtection.ASYMMETRIC.value
CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
FRIENDLY_NAME = "1.2.840.113549.1.9.20"  # certmonger sends it as a BMPString


# --- CSRs with hand-made attributes ----------------------------------------------------------------


def tlv(tag: int, contents: bytes) -> bytes:
    length = len(contents)
    if length < 0x80:
        return bytes((tag, length)) + contents
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + contents


def attribute(oid: str, *values: bytes) -> bytes:
    return tlv(0x30, core.ObjectIdentifier(oid).dump() + tlv(0x31, b"".join(sorted(values))))


def octets(value: bytes) -> bytes:
    return bytes(core.OctetString(value).dump())


def csr_with(attributes: Sequence[bytes] | None, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A signed PKCS#10 request (ECDSA P-256) carrying `attributes` as given; None leaves the [0]
    attributes field out entirely."""
    key = key or ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device1")])
    spki = public_key_bytes(key.public_key())
    fields = core.Integer(0).dump() + name.public_bytes() + spki
    if attributes is not None:
        fields += tlv(0xA0, b"".join(sorted(attributes)))
    info = tlv(0x30, fields)
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    algorithm = tlv(0x30, core.ObjectIdentifier("1.2.840.10045.4.3.2").dump())
    return tlv(0x30, info + algorithm + tlv(0x03, b"\x00" + signature))


CERTMONGER_EXTRAS = [
    attribute(FRIENDLY_NAME, core.BMPString("dev").dump()),
    attribute(CHALLENGE_PASSWORD, core.PrintableString("VectorSecret123").dump()),
]
SKI = bytes(range(20))

KEY_REQUESTS = [
    pytest.param([], None, id="none/empty-attributes"),
    pytest.param(None, None, id="none/no-attributes-field"),
    pytest.param(CERTMONGER_EXTRAS, None, id="none/other-attributes"),
    pytest.param(
        [attribute(SYM, octets(b"kek-1"))], KeyEncryptionRequest(KeyProtection.SYMMETRIC, b"kek-1"), id="symmetric"
    ),
    pytest.param([attribute(ASYM, octets(SKI))], KeyEncryptionRequest(KeyProtection.ASYMMETRIC, SKI), id="asymmetric"),
    pytest.param(
        [*CERTMONGER_EXTRAS, attribute(ASYM, octets(SKI))],
        KeyEncryptionRequest(KeyProtection.ASYMMETRIC, SKI),
        id="asymmetric/with-certmonger-bmpstring",
    ),
]


@pytest.mark.parametrize(("attributes", "expected"), KEY_REQUESTS)
def test_key_request(attributes: list[bytes] | None, expected: KeyEncryptionRequest | None) -> None:
    der = csr_with(attributes)
    if attributes is not None:  # the hand-made request is one cryptography accepts and verifies
        assert x509.load_der_x509_csr(der).is_signature_valid
    request = key_request(der)
    assert request == expected
    if request is not None:
        assert request.asymmetric is (request.protection is KeyProtection.ASYMMETRIC)


MALFORMED = [
    pytest.param([attribute(SYM, core.UTF8String("kek-1").dump())], "not an OCTET STRING", id="fail/utf8-value"),
    pytest.param([attribute(ASYM, core.Integer(5).dump())], "not an OCTET STRING", id="fail/integer-value"),
    pytest.param([attribute(ASYM)], "exactly one value, it has 0", id="fail/no-value"),
    pytest.param([attribute(ASYM, octets(b"a"), octets(b"b"))], "exactly one value, it has 2", id="fail/two-values"),
    pytest.param([attribute(SYM, octets(b""))], "DecryptKeyIdentifier is empty", id="fail/empty-identifier"),
    pytest.param([attribute(SYM, octets(b"a")), attribute(SYM, octets(b"b"))], "more than once", id="fail/repeated"),
    pytest.param([attribute(SYM, octets(b"a")), attribute(ASYM, octets(SKI))], "both", id="fail/both"),
    pytest.param([tlv(0x30, b"")], "malformed attribute", id="fail/attribute-without-type"),
    pytest.param([tlv(0x30, b"\x04\x01x")], "malformed attribute", id="fail/attribute-type-not-oid"),
]


@pytest.mark.parametrize(("attributes", "message"), MALFORMED)
def test_key_request_refuses_malformed_attributes(attributes: list[bytes], message: str) -> None:
    with pytest.raises(EstWireError, match=message):
        key_request(csr_with(attributes))


@pytest.mark.parametrize(
    "der",
    [
        pytest.param(b"not DER at all", id="fail/garbage"),
        pytest.param(tlv(0x30, tlv(0x30, core.Integer(0).dump())), id="fail/short-request-info"),
        pytest.param(csr_with([])[:-5], id="fail/truncated"),
    ],
)
def test_key_request_refuses_what_is_no_csr(der: bytes) -> None:
    with pytest.raises(EstWireError, match="not a PKCS#10"):
        key_request(der)


# --- generate_key ----------------------------------------------------------------------------------

DEFAULT = Profile(name="t")


def describe(key: PrivateKey) -> tuple[str, object]:
    if isinstance(key, rsa.RSAPrivateKey):
        return ("rsa", key.key_size)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ("ec", key.curve.name)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return ("ed25519", None)


GENERATE = [
    pytest.param(lambda: rsa_key(2048).public_key(), DEFAULT, ("rsa", 2048), id="rsa-2048"),
    pytest.param(lambda: rsa_key(3072).public_key(), DEFAULT, ("rsa", 3072), id="rsa-3072"),
    pytest.param(lambda: ec_key(ec.SECP256R1()).public_key(), DEFAULT, ("ec", "secp256r1"), id="p-256"),
    pytest.param(lambda: ec_key(ec.SECP384R1()).public_key(), DEFAULT, ("ec", "secp384r1"), id="p-384"),
    pytest.param(
        lambda: ed_key().public_key(),
        Profile(name="t", key_types=("rsa", "ec", "ed25519")),
        ("ed25519", None),
        id="ed25519-allowed",
    ),
    pytest.param(lambda: ed_key().public_key(), DEFAULT, ("rsa", 2048), id="fallback/ed25519-not-allowed"),
    pytest.param(
        lambda: rsa.generate_private_key(65537, 1024).public_key(),  # noqa: S505 - a request the profile refuses
        DEFAULT,
        ("rsa", 2048),
        id="fallback/rsa-too-small",
    ),
    pytest.param(
        lambda: rsa_key(3072).public_key(),
        Profile(name="t", rsa_max_bits=2048),
        ("rsa", 2048),
        id="fallback/rsa-too-large",
    ),
    pytest.param(
        lambda: ec_key(ec.SECP256R1()).public_key(),
        Profile(name="t", key_types=("ec", "rsa"), ec_curves=("P-384",)),
        ("ec", "secp384r1"),
        id="fallback/curve-not-allowed",
    ),
    pytest.param(
        lambda: ec_key(ec.SECP256K1()).public_key(), DEFAULT, ("rsa", 2048), id="fallback/curve-not-supported"
    ),
    pytest.param(
        lambda: rsa_key(2048).public_key(),
        Profile(name="t", key_types=("ec",), ec_curves=("P-521", "P-256")),
        ("ec", "secp521r1"),
        id="fallback/rsa-not-allowed-first-curve",
    ),
    pytest.param(
        lambda: ed_key().public_key(),
        Profile(name="t", key_types=("rsa",), rsa_min_bits=3072),
        ("rsa", 3072),
        id="fallback/rsa-min-bits",
    ),
    pytest.param(
        lambda: rsa_key(2048).public_key(),
        Profile(name="t", key_types=("ed25519",)),
        ("ed25519", None),
        id="fallback/ed25519-only",
    ),
]


@pytest.mark.parametrize(("requested", "profile", "expected"), GENERATE)
def test_generate_key(requested: Callable[[], PublicKey], profile: Profile, expected: tuple[str, object]) -> None:
    hint = requested()
    key = generate_key(hint, profile)
    assert describe(key) == expected
    profile.check_public_key(key.public_key())
    assert public_key_bytes(key.public_key()) != public_key_bytes(hint)


# --- PKCS#8 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: rsa_key(2048), id="rsa"),
        pytest.param(lambda: ec_key(ec.SECP384R1()), id="ec"),
        pytest.param(ed_key, id="ed25519"),
    ],
)
def test_pkcs8_round_trip(make: Callable[[], PrivateKey]) -> None:
    key = make()
    der = pkcs8_der(key)
    assert keys.PrivateKeyInfo.load(der)["version"].native == 0  # OneAsymmetricKey v1
    loaded = serialization.load_der_private_key(der, password=None)
    assert pkcs8_der(loaded) == der  # type: ignore[arg-type]
    assert public_key_bytes(loaded.public_key()) == public_key_bytes(key.public_key())  # type: ignore[arg-type]


# --- the encrypted key, opened by openssl --------------------------------------------------------------


def certificate(name: str, key: PrivateKey, issuer_key: PrivateKey | None = None, serial: int = 2) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Serverkeygen Test CA")]) if issuer_key else subject
    algorithm = None if isinstance(issuer_key or key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2044, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer_key or key, algorithm)
    )


@dataclass(frozen=True)
class Signer:
    key: SignerKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]


@functools.cache
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, certificate("Serverkeygen Test CA", key, serial=1)


@functools.cache
def signer(kind: str) -> Signer:
    ca_key, ca_cert = ca()
    key: SignerKey = rsa_key(2048) if kind == "rsa" else ec.generate_private_key(ec.SECP384R1())
    return Signer(key, certificate(f"Gateway RA ({kind})", key, ca_key, serial=0x5A), (ca_cert,))


def openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], capture_output=True, check=False)


def verified_key(tmp_path: Path, signed_data: bytes, signer: Signer) -> PrivateKey:
    """`openssl cms -verify` the decrypted SignedData (wrapped in a ContentInfo, as openssl reads it)
    and load the one key of the AsymmetricKeyPackage it yields; checks the SignedData on the way."""
    parsed = cms.SignedData.load(signed_data)
    assert parsed["version"].native == "v3"
    assert parsed["encap_content_info"]["content_type"].dotted == ASYMMETRIC_KEY_PACKAGE_OID
    assert len(parsed["certificates"]) == 1 + len(signer.chain)
    (signer_info,) = parsed["signer_infos"]
    assert [a["type"].native for a in signer_info["signed_attrs"]] == ["content_type", "message_digest"]
    assert signer_info["digest_algorithm"]["algorithm"].native == "sha256"
    wrapped = tmp_path / "signed.der"
    wrapped.write_bytes(cms.ContentInfo({"content_type": "signed_data", "content": parsed}).dump())
    verify = openssl("cms", "-verify", "-noverify", "-binary", "-inform", "DER", "-in", str(wrapped))
    assert verify.returncode == 0, verify.stderr.decode()
    assert b"Verification successful" in verify.stderr
    package = AsymmetricKeyPackage.load(verify.stdout)
    assert len(package) == 1
    loaded = serialization.load_der_private_key(package[0].dump(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    return loaded


def write_pem(path: Path, data: x509.Certificate | PrivateKey) -> str:
    if isinstance(data, x509.Certificate):
        path.write_bytes(data.public_bytes(serialization.Encoding.PEM))
    else:
        pem = serialization.PrivateFormat.PKCS8
        path.write_bytes(data.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()))
    return str(path)


RECIPIENTS = [
    pytest.param(lambda: rsa_key(2048, fresh=True), False, "ktri", "rsaes_pkcs1v15", id="rsa-pkcs1v15"),
    pytest.param(lambda: rsa_key(3072), True, "ktri", "rsaes_oaep", id="rsa-oaep-sha256"),
    pytest.param(lambda: ec_key(ec.SECP256R1()), False, "kari", "1.3.132.1.11.1", id="ec-p256"),
    pytest.param(lambda: ec_key(ec.SECP384R1()), False, "kari", "1.3.132.1.11.1", id="ec-p384"),
    pytest.param(lambda: ec_key(ec.SECP521R1()), False, "kari", "1.3.132.1.11.1", id="ec-p521"),
]
GENERATED = [
    pytest.param(lambda: ec_key(ec.SECP256R1()), "rsa", id="key-p256/signer-rsa"),
    pytest.param(lambda: rsa_key(2048), "ec", id="key-rsa/signer-ec"),
    pytest.param(ed_key, "rsa", id="key-ed25519/signer-rsa"),
]


@pytest.mark.parametrize(("make_recipient", "oaep", "kind", "algorithm"), RECIPIENTS)
@pytest.mark.parametrize(("make_key", "signer_kind"), GENERATED)
def test_openssl_opens_key_encrypted_to_certificate(
    tmp_path: Path,
    make_recipient: Callable[[], rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey],
    oaep: bool,
    kind: str,
    algorithm: str,
    make_key: Callable[[], PrivateKey],
    signer_kind: str,
) -> None:
    recipient_key = make_recipient()
    recipient = certificate("device1", recipient_key, ca()[0], serial=0x1001)
    key, gateway = make_key(), signer(signer_kind)
    der = encrypt_to_certificate(key, recipient, gateway.key, gateway.cert, gateway.chain, rsa_oaep=oaep)

    info = cms.ContentInfo.load(der)
    assert info["content_type"].native == "enveloped_data"
    enveloped = info["content"]
    assert enveloped["version"].native == ("v0" if kind == "ktri" else "v2")
    (recipient_info,) = enveloped["recipient_infos"]
    assert recipient_info.name == kind
    assert recipient_info.chosen["key_encryption_algorithm"]["algorithm"].native == algorithm
    encrypted = enveloped["encrypted_content_info"]
    assert encrypted["content_type"].native == "signed_data"
    assert encrypted["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"

    (tmp_path / "key.der").write_bytes(der)
    recip = write_pem(tmp_path / "recipient.pem", recipient)
    inkey = write_pem(tmp_path / "recipient.key", recipient_key)
    decrypt = openssl(
        "cms",
        "-decrypt",
        "-binary",
        "-inform",
        "DER",
        "-in",
        str(tmp_path / "key.der"),
        "-recip",
        recip,
        "-inkey",
        inkey,
    )
    assert decrypt.returncode == 0, decrypt.stderr.decode()
    assert pkcs8_der(verified_key(tmp_path, decrypt.stdout, gateway)) == pkcs8_der(key)


def test_openssl_refuses_the_wrong_recipient_key(tmp_path: Path) -> None:
    recipient = certificate("device1", ec_key(), ca()[0])
    gateway = signer("rsa")
    (tmp_path / "key.der").write_bytes(encrypt_to_certificate(ed_key(), recipient, gateway.key, gateway.cert))
    other = write_pem(tmp_path / "other.key", ec_key())
    decrypt = openssl(
        "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "key.der"),
        "-recip", write_pem(tmp_path / "recipient.pem", recipient), "-inkey", other,
    )  # fmt: skip
    assert decrypt.returncode != 0


@pytest.mark.parametrize(
    ("make_recipient", "message"),
    [
        pytest.param(ed_key, "an Ed25519 key", id="fail/ed25519"),
        pytest.param(lambda: ec_key(ec.SECP256K1()), "an EC secp256k1 key", id="fail/secp256k1"),
    ],
)
def test_encrypt_to_certificate_refuses_unsupported_recipients(
    make_recipient: Callable[[], PrivateKey], message: str
) -> None:
    recipient = certificate("device1", make_recipient(), ca()[0])
    gateway = signer("rsa")
    with pytest.raises(AlgorithmNotAllowed, match=message):
        encrypt_to_certificate(ec_key(), recipient, gateway.key, gateway.cert)


def test_signer_key_must_match_its_certificate() -> None:
    recipient = certificate("device1", ec_key(), ca()[0])
    with pytest.raises(ValueError, match="signer key does not belong"):
        encrypt_to_certificate(ec_key(), recipient, signer("ec").key, signer("rsa").cert)


def test_signer_key_must_be_rsa_or_ec() -> None:
    ed_signer = ed_key()
    with pytest.raises(ValueError, match="RSA or EC key, not Ed25519PrivateKey"):
        encrypt_to_kek(ec_key(), b"id", bytes(16), ed_signer, certificate("Ed25519 RA", ed_signer))


# --- the encrypted key to a pre-shared KEK ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kek", "kek_id", "wrap"),
    [
        pytest.param(os.urandom(16), b"\x01", "aes128_wrap", id="aes128-wrap"),
        pytest.param(os.urandom(24), b"device-kek", "aes192_wrap", id="aes192-wrap"),
        pytest.param(os.urandom(32), bytes(range(32)), "aes256_wrap", id="aes256-wrap"),
    ],
)
@pytest.mark.parametrize("signer_kind", ["rsa", "ec"])
def test_openssl_opens_key_encrypted_to_kek(
    tmp_path: Path, kek: bytes, kek_id: bytes, wrap: str, signer_kind: str
) -> None:
    key, gateway = ec_key(), signer(signer_kind)
    der = encrypt_to_kek(key, kek_id, kek, gateway.key, gateway.cert, gateway.chain)
    enveloped = cms.ContentInfo.load(der)["content"]
    assert enveloped["version"].native == "v2"
    (recipient_info,) = enveloped["recipient_infos"]
    assert recipient_info.name == "kekri"
    assert recipient_info.chosen["kekid"]["key_identifier"].native == kek_id
    assert recipient_info.chosen["key_encryption_algorithm"]["algorithm"].native == wrap

    (tmp_path / "key.der").write_bytes(der)
    base = ("cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(tmp_path / "key.der"))
    decrypt = openssl(*base, "-secretkey", kek.hex(), "-secretkeyid", kek_id.hex())
    assert decrypt.returncode == 0, decrypt.stderr.decode()
    assert pkcs8_der(verified_key(tmp_path, decrypt.stdout, gateway)) == pkcs8_der(key)
    wrong = bytes(b ^ 1 for b in kek)
    assert openssl(*base, "-secretkey", wrong.hex(), "-secretkeyid", kek_id.hex()).returncode != 0


@pytest.mark.parametrize(
    ("kek_id", "kek", "message"),
    [
        pytest.param(b"id", bytes(15), "16, 24 or 32 bytes, not 15", id="fail/kek-15-bytes"),
        pytest.param(b"id", bytes(64), "16, 24 or 32 bytes, not 64", id="fail/kek-64-bytes"),
        pytest.param(b"", bytes(32), "non-empty identifier", id="fail/empty-identifier"),
    ],
)
def test_encrypt_to_kek_refuses_bad_keks(kek_id: bytes, kek: bytes, message: str) -> None:
    gateway = signer("rsa")
    with pytest.raises(ValueError, match=message):
        encrypt_to_kek(ec_key(), kek_id, kek, gateway.key, gateway.cert)


# --- load_keks ----------------------------------------------------------------------------------------

KEK_HEX = "00112233445566778899aabbccddeeff" * 2


def write_kek(directory: Path, name: str, content: str | bytes, mode: int = 0o600) -> Path:
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


def test_load_keks(tmp_path: Path) -> None:
    write_kek(tmp_path, "0a1b.key", KEK_HEX + "\n")
    write_kek(tmp_path, "FF.key", " " + KEK_HEX[:32].upper() + "\r\n")
    write_kek(tmp_path, "cafe.key", KEK_HEX[:48])
    write_kek(tmp_path, "README.md", "not a key", 0o644)
    write_kek(tmp_path, ".0a1b.key.tmp", "partial", 0o644)
    write_kek(tmp_path, ".hidden.key", "ignored", 0o644)
    (tmp_path / "old").mkdir()
    assert load_keks(tmp_path) == {
        b"\x0a\x1b": bytes.fromhex(KEK_HEX),
        b"\xff": bytes.fromhex(KEK_HEX[:32]),
        b"\xca\xfe": bytes.fromhex(KEK_HEX[:48]),
    }


def test_load_keks_missing_or_empty_directory(tmp_path: Path) -> None:
    assert load_keks(tmp_path / "missing") == {}
    assert load_keks(tmp_path) == {}


@pytest.mark.parametrize(
    ("files", "bad", "message"),
    [
        pytest.param([("ab.key", "zz" * 16, 0o600)], "ab.key", "32, 48 or 64 hex digits", id="fail/not-hex"),
        pytest.param([("ab.key", "00" * 20, 0o600)], "ab.key", "32, 48 or 64 hex digits", id="fail/40-digits"),
        pytest.param([("ab.key", "", 0o600)], "ab.key", "32, 48 or 64 hex digits", id="fail/empty"),
        pytest.param([("ab.key", KEK_HEX[:31] + " 0", 0o600)], "ab.key", "hex digits", id="fail/inner-space"),
        pytest.param([("ab.key", b"\xff" * 32, 0o600)], "ab.key", "hex digits", id="fail/not-ascii"),
        pytest.param([("kek1.key", KEK_HEX, 0o600)], "kek1.key", "<hex identifier>.key", id="fail/name-not-hex"),
        pytest.param([("abc.key", KEK_HEX, 0o600)], "abc.key", "<hex identifier>.key", id="fail/name-odd-length"),
        pytest.param([("ab.key", KEK_HEX, 0o640)], "ab.key", "mode 0640", id="fail/group-readable"),
        pytest.param([("ab.key", KEK_HEX, 0o604)], "ab.key", "mode 0604", id="fail/world-readable"),
        pytest.param(
            [("ab.key", KEK_HEX, 0o600), ("AB.key", KEK_HEX, 0o600)], "ab.key", "same identifier", id="fail/duplicate"
        ),
    ],
)
def test_load_keks_refuses_bad_files(
    tmp_path: Path, files: list[tuple[str, str | bytes, int]], bad: str, message: str
) -> None:
    for name, content, mode in files:
        write_kek(tmp_path, name, content, mode)
    with pytest.raises(KeyMaterialError, match=message) as caught:
        load_keks(tmp_path)
    assert str(tmp_path / bad) in str(caught.value)


def test_load_keks_refuses_a_directory_named_like_a_key(tmp_path: Path) -> None:
    (tmp_path / "ab.key").mkdir()
    with pytest.raises(KeyMaterialError, match=r"ab\.key is not a regular file"):
        load_keks(tmp_path)


def test_load_keks_refuses_a_file_for_a_directory(tmp_path: Path) -> None:
    write_kek(tmp_path, "keks", KEK_HEX)
    with pytest.raises(KeyMaterialError, match="is not a directory"):
        load_keks(tmp_path / "keks")
