"""How a key made by EST /serverkeygen travels to the client (RFC 7030 §4.4.2), sans-I/O.

Bare, as the `application/pkcs8` part (`pkcs8_der`), or encrypted, as the
`smime-type=server-generated-key` part (`encrypt_to_certificate`, `encrypt_to_kek`), layered as
RFC 7030 §4.4.2 and RFC 5958 §4 describe: the key is a one-element AsymmetricKeyPackage (its
OneAsymmetricKey is the PKCS#8 PrivateKeyInfo, version v1), signed in a SignedData (eContentType
id-ct-KP-aKeyPackage; contentType and messageDigest signed attributes, SHA-256) by the gateway, and
that SignedData is the content of an EnvelopedData (content type id-signedData, AES-256-CBC) to the
client's certificate or to a pre-shared key-encryption key (`load_keks`).

Generated keys live only in the caller's memory: nothing here stores or logs them.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from asn1crypto import algos, cms, core, keys, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from shared_ca.cms import CmsSigner, RsaScheme, build_signed_data, content_attributes, der_set_of
from shared_ca.errors import AlgorithmNotAllowed, KeyMaterialError
from shared_ca.keys import PrivateKey, describe_public_key, key_matches_certificate
from shared_ca.profiles import CURVES

SignerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
"""Key types that sign the key package; the functions take any PrivateKey and refuse the others."""

ASYMMETRIC_KEY_PACKAGE_OID = "2.16.840.1.101.2.1.2.78.5"  # id-ct-KP-aKeyPackage (RFC 5958 §2)
# dhSinglePass-stdDH-sha256kdf-scheme (RFC 5753 §7.1.4): ephemeral-static ECDH, X9.63 KDF with SHA-256.
_ECDH_SHA256_KDF_OID = "1.3.132.1.11.1"
_KEY_AGREEMENT_CURVES = frozenset(CURVES.values())  # cryptography's curve names
_KEY_WRAP = {16: "aes128_wrap", 24: "aes192_wrap", 32: "aes256_wrap"}  # RFC 3565 §2.3, by KEK length
_CONTENT_KEY_SIZE = 32  # AES-256-CBC


class AsymmetricKeyPackage(core.SequenceOf):  # type: ignore[misc]
    """AsymmetricKeyPackage ::= SEQUENCE SIZE (1..MAX) OF OneAsymmetricKey (RFC 5958 §2); a v1
    OneAsymmetricKey is a PKCS#8 PrivateKeyInfo."""

    _child_spec = keys.PrivateKeyInfo


# --- the bare key ----------------------------------------------------------------------------------


def pkcs8_der(key: PrivateKey) -> bytes:
    """The unencrypted PKCS#8 PrivateKeyInfo (RFC 5958 OneAsymmetricKey v1) DER of `key`."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- the encrypted key (RFC 7030 §4.4.2) ---------------------------------------------------------


def encrypt_to_certificate(
    key: PrivateKey,
    recipient: x509.Certificate,
    signer_key: PrivateKey,
    signer_cert: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
    *,
    rsa_oaep: bool = False,
) -> bytes:
    """DER ContentInfo(EnvelopedData(SignedData(AsymmetricKeyPackage))) to `recipient`'s public key.

    RSA recipients get a KeyTransRecipientInfo, RSAES-PKCS1-v1_5 (what `openssl cms -decrypt` expects
    by default) or, with `rsa_oaep`, RSAES-OAEP with SHA-256 and MGF1-SHA-256. EC recipients (P-256,
    P-384, P-521) get a KeyAgreeRecipientInfo: ephemeral-static ECDH, dhSinglePass-stdDH-sha256kdf-scheme,
    aes256-wrap (RFC 5753). Any other recipient key raises AlgorithmNotAllowed.
    """
    signed = _signed_key_package(key, signer_key, signer_cert, chain)
    content_key = os.urandom(_CONTENT_KEY_SIZE)
    public_key = recipient.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        recipient_info, version = _key_transport(public_key, recipient, content_key, rsa_oaep), "v0"
    elif isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in _KEY_AGREEMENT_CURVES:
        recipient_info, version = _key_agreement(public_key, recipient, content_key), "v2"
    else:
        raise AlgorithmNotAllowed(
            f"cannot encrypt the generated key to an {describe_public_key(public_key)} key: the certificate "
            "needs an RSA key or an EC key on P-256, P-384 or P-521"
        )
    return _enveloped(signed, content_key, recipient_info, version)


def encrypt_to_kek(
    key: PrivateKey,
    kek_id: bytes,
    kek: bytes,
    signer_key: PrivateKey,
    signer_cert: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
) -> bytes:
    """DER ContentInfo(EnvelopedData(SignedData(AsymmetricKeyPackage))) to the pre-shared key `kek`
    (16, 24 or 32 octets): a KEKRecipientInfo whose kekid is `kek_id`, AES key wrap (RFC 3394)."""
    if len(kek) not in _KEY_WRAP:
        raise ValueError(f"a key-encryption key must be 16, 24 or 32 bytes, not {len(kek)}")
    if not kek_id:
        raise ValueError("a key-encryption key needs a non-empty identifier")
    signed = _signed_key_package(key, signer_key, signer_cert, chain)
    content_key = os.urandom(_CONTENT_KEY_SIZE)
    kekri = {
        "version": "v4",
        "kekid": {"key_identifier": kek_id},
        "key_encryption_algorithm": {"algorithm": _KEY_WRAP[len(kek)]},
        "encrypted_key": aes_key_wrap(kek, content_key),
    }
    return _enveloped(signed, content_key, cms.RecipientInfo(name="kekri", value=cms.KEKRecipientInfo(kekri)), "v2")


def _signed_key_package(
    key: PrivateKey, signer_key: PrivateKey, signer_cert: x509.Certificate, chain: Sequence[x509.Certificate]
) -> bytes:
    """DER SignedData (no ContentInfo: it is the EnvelopedData's content) over the key package, signed
    with SHA-256 (sha256WithRSAEncryption or ecdsa-with-SHA256)."""
    if not isinstance(signer_key, SignerKey):
        raise ValueError(f"the key package signer must have an RSA or EC key, not {type(signer_key).__name__}")
    if not key_matches_certificate(signer_key, signer_cert):
        raise ValueError("the signer key does not belong to the signer certificate")
    package = AsymmetricKeyPackage([keys.PrivateKeyInfo.load(pkcs8_der(key))]).dump()
    signer = CmsSigner.create(signer_key, signer_cert, chain, rsa_scheme=RsaScheme.PKCS1V15_WITH_DIGEST)
    attributes = content_attributes(hashlib.sha256(package).digest(), content_type=ASYMMETRIC_KEY_PACKAGE_OID)
    content_info = build_signed_data(
        signer,
        digest="sha256",
        signed_attributes_der=der_set_of(attributes),
        content=package,
        content_type=ASYMMETRIC_KEY_PACKAGE_OID,
    )
    # ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT SignedData }: keep the SignedData.
    contents = parser.parse(content_info)[4]
    signed_data: bytes = parser.parse(contents[parser.peek(contents) :])[4]
    return signed_data


def _enveloped(signed_data: bytes, content_key: bytes, recipient_info: cms.RecipientInfo, version: str) -> bytes:
    """ContentInfo(EnvelopedData) with one recipient; `version` per RFC 5652 §6.1 (v0 for a lone
    issuerAndSerialNumber KeyTransRecipientInfo, v2 otherwise)."""
    iv = os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(signed_data) + padder.finalize()) + encryptor.finalize()
    enveloped = cms.EnvelopedData(
        {
            "version": version,
            "recipient_infos": [recipient_info],
            "encrypted_content_info": {
                "content_type": "signed_data",
                "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
                "encrypted_content": ciphertext,
            },
        }
    )
    der: bytes = cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()
    return der


def _issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    return cms.IssuerAndSerialNumber(
        {"issuer": asn1_x509.Name.load(cert.issuer.public_bytes()), "serial_number": cert.serial_number}
    )


def _key_transport(
    public_key: rsa.RSAPublicKey, recipient: x509.Certificate, content_key: bytes, oaep: bool
) -> cms.RecipientInfo:
    """KeyTransRecipientInfo v0, rid issuerAndSerialNumber (RFC 5652 §6.2.1; RFC 4055 §4 for OAEP)."""
    if oaep:
        pad: padding.AsymmetricPadding = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        sha256 = {"algorithm": "sha256"}
        algorithm = {
            "algorithm": "rsaes_oaep",
            "parameters": algos.RSAESOAEPParams(
                {"hash_algorithm": sha256, "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": sha256}}
            ),
        }
    else:
        pad, algorithm = padding.PKCS1v15(), {"algorithm": "rsaes_pkcs1v15"}
    ktri = {
        "version": "v0",
        "rid": cms.RecipientIdentifier(name="issuer_and_serial_number", value=_issuer_and_serial(recipient)),
        "key_encryption_algorithm": algorithm,
        "encrypted_key": public_key.encrypt(content_key, pad),
    }
    return cms.RecipientInfo(name="ktri", value=cms.KeyTransRecipientInfo(ktri))


def _key_agreement(
    public_key: ec.EllipticCurvePublicKey, recipient: x509.Certificate, content_key: bytes
) -> cms.RecipientInfo:
    """KeyAgreeRecipientInfo v3 (RFC 5652 §6.2.2) for ephemeral-static ECDH as RFC 5753 §3.1 has it:
    originatorKey is the ephemeral public key (id-ecPublicKey, parameters absent: the recipient's
    curve), no ukm, and the KEK is X9.63-KDF-SHA-256(Z, ECC-CMS-SharedInfo) for aes256-wrap."""
    ephemeral = ec.generate_private_key(public_key.curve)
    shared_secret = ephemeral.exchange(ec.ECDH(), public_key)
    wrap_algorithm = cms.KeyEncryptionAlgorithm({"algorithm": "aes256_wrap"})
    shared_info = _EccCmsSharedInfo({"key_info": wrap_algorithm, "supp_pub_info": (256).to_bytes(4, "big")})
    kek = X963KDF(hashes.SHA256(), 32, shared_info.dump()).derive(shared_secret)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    originator = keys.PublicKeyInfo({"algorithm": {"algorithm": "ec"}, "public_key": point})
    rid = cms.KeyAgreementRecipientIdentifier(name="issuer_and_serial_number", value=_issuer_and_serial(recipient))
    kari = {
        "version": "v3",
        "originator": cms.OriginatorIdentifierOrKey(name="originator_key", value=originator),
        "key_encryption_algorithm": {"algorithm": _ECDH_SHA256_KDF_OID, "parameters": wrap_algorithm},
        "recipient_encrypted_keys": [{"rid": rid, "encrypted_key": aes_key_wrap(kek, content_key)}],
    }
    return cms.RecipientInfo(name="kari", value=cms.KeyAgreeRecipientInfo(kari))


class _EccCmsSharedInfo(core.Sequence):  # type: ignore[misc]
    """ECC-CMS-SharedInfo (RFC 5753 §7.2): the KDF's SharedInfo; suppPubInfo is the KEK length in bits."""

    _fields = [
        ("key_info", cms.KeyEncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


# --- pre-shared key-encryption keys --------------------------------------------------------------

_KEK_FILE = re.compile(r"(?P<identifier>(?:[0-9A-Fa-f]{2})+)\.key")
_KEK_TEXT = re.compile(rb"[0-9A-Fa-f]{32}|[0-9A-Fa-f]{48}|[0-9A-Fa-f]{64}")


def load_keks(directory: Path) -> dict[bytes, bytes]:
    """The pre-shared KEKs in `directory`: identifier → key, from files `<hex identifier>.key` each
    holding the key in hex (32, 48 or 64 digits; surrounding whitespace ignored).

    Files not ending in `.key` and hidden files are ignored; a missing or empty directory gives {}.
    A `.key` file whose name or content is not of this form, that is readable or writable by group or
    others (keep it 0600), or whose identifier another file already has, raises KeyMaterialError
    naming the file.
    """
    if not directory.exists():
        return {}
    if not directory.is_dir():
        raise KeyMaterialError(f"key-encryption key directory {directory} is not a directory")
    found: dict[bytes, tuple[Path, bytes]] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(".key"):
            continue
        identifier, kek = _load_kek(path)
        if identifier in found:
            raise KeyMaterialError(
                f"key-encryption key files {found[identifier][0]} and {path} have the same identifier"
            )
        found[identifier] = (path, kek)
    return {identifier: kek for identifier, (_path, kek) in found.items()}


def _load_kek(path: Path) -> tuple[bytes, bytes]:
    name = _KEK_FILE.fullmatch(path.name)
    if name is None:
        raise KeyMaterialError(f"key-encryption key file {path}: the name must be <hex identifier>.key")
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise KeyMaterialError(f"key-encryption key file {path} is not a regular file")
        if mode & 0o077:
            raise KeyMaterialError(
                f"key-encryption key file {path} has mode {stat.S_IMODE(mode):04o}: "
                "it must be readable by its owner only (chmod 600)"
            )
        text = path.read_bytes().strip()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read key-encryption key file {path}: {exc.strerror}") from exc
    if not _KEK_TEXT.fullmatch(text):  # the message never quotes the content: it is a secret
        raise KeyMaterialError(f"key-encryption key file {path} must hold an AES key as 32, 48 or 64 hex digits")
    return bytes.fromhex(name.group("identifier")), bytes.fromhex(text.decode("ascii"))
