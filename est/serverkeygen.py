"""Server-side key generation for EST `/serverkeygen` (RFC 7030 §4.4), sans-I/O.

The service reads what protection the client asked for (`key_request`), has a key made
(`generate_key`) and returns it bare (`pkcs8_der`, the `application/pkcs8` part) or encrypted
(`encrypt_to_certificate`, `encrypt_to_kek`: the `smime-type=server-generated-key` part).

The encrypted form is layered as RFC 7030 §4.4.2 and RFC 5958 §4 describe: the key is a one-element
AsymmetricKeyPackage (its OneAsymmetricKey is the PKCS#8 PrivateKeyInfo, version v1), signed in a
SignedData (eContentType id-ct-KP-aKeyPackage; contentType and messageDigest signed attributes,
SHA-256) by the gateway, and that SignedData is the content of an EnvelopedData (content type
id-signedData, AES-256-CBC) to the client's certificate or pre-shared key-encryption key.

Generated keys live only in the caller's memory: nothing here stores or logs them.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from asn1crypto import algos, cms, core, keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from est.wire import EstWireError
from shared_ca.errors import AlgorithmNotAllowed, CAError, KeyMaterialError
from shared_ca.keys import PrivateKey, PublicKey, describe_public_key, key_matches_certificate
from shared_ca.profiles import CURVES, Profile

SignerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
"""Key types that sign the key package; the functions take any PrivateKey and refuse the others."""

ASYMMETRIC_KEY_PACKAGE_OID = "2.16.840.1.101.2.1.2.78.5"  # id-ct-KP-aKeyPackage (RFC 5958 §2)
# dhSinglePass-stdDH-sha256kdf-scheme (RFC 5753 §7.1.4): ephemeral-static ECDH, X9.63 KDF with SHA-256.
_ECDH_SHA256_KDF_OID = "1.3.132.1.11.1"
_CURVE_BY_CRYPTOGRAPHY_NAME = {name: label for label, name in CURVES.items()}
_CURVE_CLASSES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_KEY_WRAP = {16: "aes128_wrap", 24: "aes192_wrap", 32: "aes256_wrap"}  # RFC 3565 §2.3, by KEK length
_CONTENT_KEY_SIZE = 32  # AES-256-CBC


class KeyProtection(enum.StrEnum):
    """How the client asked for the generated key to be encrypted (RFC 7030 §4.4.1): the CSR attribute's OID."""

    SYMMETRIC = "1.2.840.113549.1.9.16.2.37"
    """id-aa-decryptKeyID (RFC 4108 §2.2.5, RFC 7030 §4.4.1.1): names a symmetric key the client and
    the server share; the key is enveloped to it in a KEKRecipientInfo."""
    ASYMMETRIC = "1.2.840.113549.1.9.16.2.54"
    """id-aa-asymmDecryptKeyID (RFC 7030 §4.4.1.2): the subject key identifier of the client's
    certificate whose public key the private key is to be encrypted to."""


@dataclasses.dataclass(frozen=True)
class KeyEncryptionRequest:
    """The client's request for an encrypted key: which kind, and the key identifier it named."""

    protection: KeyProtection
    key_identifier: bytes

    @property
    def asymmetric(self) -> bool:
        """True for an AsymmetricDecryptKeyIdentifier (encrypt to a certificate), False for a KEK."""
        return self.protection is KeyProtection.ASYMMETRIC


class _UndecodedAttribute(core.Sequence):  # type: ignore[misc]
    _fields = [("type", core.ObjectIdentifier), ("values", core.Any)]


class _CertificationRequestInfo(core.Sequence):  # type: ignore[misc]
    """RFC 2986 §4.1, declared only as far as key_request reads it: each attribute's values stay undecoded."""

    _fields = [
        ("version", core.Integer),
        ("subject", core.Any),
        ("subject_pk_info", core.Any),
        ("attributes", core.SetOf, {"implicit": 0, "optional": True, "spec": _UndecodedAttribute}),
    ]


class _CertificationRequest(core.Sequence):  # type: ignore[misc]
    _fields = [("info", _CertificationRequestInfo), ("signature_algorithm", core.Any), ("signature", core.Any)]


class _KeyIdentifierAttribute(core.Sequence):  # type: ignore[misc]
    """Attribute ::= SEQUENCE { type OID, values SET OF OCTET STRING } for both RFC 7030 §4.4.1 attributes."""

    _fields = [("type", core.ObjectIdentifier), ("values", core.SetOf, {"spec": core.OctetString})]


class AsymmetricKeyPackage(core.SequenceOf):  # type: ignore[misc]
    """AsymmetricKeyPackage ::= SEQUENCE SIZE (1..MAX) OF OneAsymmetricKey (RFC 5958 §2); a v1
    OneAsymmetricKey is a PKCS#8 PrivateKeyInfo."""

    _child_spec = keys.PrivateKeyInfo


# --- the request -------------------------------------------------------------------------------


def key_request(csr_der: bytes) -> KeyEncryptionRequest | None:
    """The DecryptKeyIdentifier or AsymmetricDecryptKeyIdentifier the CSR carries; None for neither.

    Only these two attributes are decoded, each on its own: other attributes (certmonger's BMPString
    friendlyName, say) are skipped undecoded. EstWireError when the CSR cannot be walked, when one of
    them is malformed (not one non-empty OCTET STRING), repeated, or when both are present.
    """
    try:
        attributes = _CertificationRequest.load(csr_der, strict=True)["info"]["attributes"]
        attributes = [] if isinstance(attributes, core.Void) else list(attributes)
    except (ValueError, TypeError) as exc:
        raise EstWireError("the request is not a PKCS#10 certificate request", detail=str(exc)) from exc
    found: dict[KeyProtection, bytes] = {}
    for attribute in attributes:
        try:
            oid: str = attribute["type"].dotted
        except (ValueError, TypeError) as exc:
            raise EstWireError("the CSR has a malformed attribute", detail=str(exc)) from exc
        if oid not in {p.value for p in KeyProtection}:
            continue
        protection = KeyProtection(oid)
        if protection in found:
            raise EstWireError(f"the CSR carries the attribute {oid} more than once")
        found[protection] = _key_identifier(protection, attribute.dump())
    if len(found) > 1:
        raise EstWireError("the CSR asks for both symmetric and asymmetric key encryption; send one")
    return next((KeyEncryptionRequest(p, identifier) for p, identifier in found.items()), None)


def _key_identifier(protection: KeyProtection, attribute_der: bytes) -> bytes:
    name = "DecryptKeyIdentifier" if protection is KeyProtection.SYMMETRIC else "AsymmetricDecryptKeyIdentifier"
    try:
        values = _KeyIdentifierAttribute.load(attribute_der, strict=True)["values"]
        identifiers = [value.native for value in values]
    except (ValueError, TypeError) as exc:
        raise EstWireError(f"the CSR's {name} is not an OCTET STRING", detail=str(exc)) from exc
    if len(identifiers) != 1:
        raise EstWireError(f"the CSR's {name} must have exactly one value, it has {len(identifiers)}")
    if not identifiers[0]:
        raise EstWireError(f"the CSR's {name} is empty")
    identifier: bytes = identifiers[0]
    return identifier


# --- the key -----------------------------------------------------------------------------------


def generate_key(requested: PublicKey, profile: Profile) -> PrivateKey:
    """A new private key like `requested` (the CSR's public key) when `profile` allows that type and
    size, otherwise the profile's default: its first key type (RSA of max(2048, rsa_min_bits) bits, EC
    on its first curve, or Ed25519).

    RFC 7030 §4.4.1 has the server ignore the CSR's key, so here it is only a hint and a disallowed one
    is never refused: a service that wants to refuse calls `profile.check_public_key(requested)` first.
    The new key always passes `profile.check_public_key`.
    """
    key: PrivateKey
    if isinstance(requested, rsa.RSAPublicKey) and _allowed(requested, profile):
        key = rsa.generate_private_key(public_exponent=65537, key_size=requested.key_size)
    elif isinstance(requested, ec.EllipticCurvePublicKey) and _allowed(requested, profile):
        key = ec.generate_private_key(_CURVE_CLASSES[_CURVE_BY_CRYPTOGRAPHY_NAME[requested.curve.name]]())
    elif isinstance(requested, ed25519.Ed25519PublicKey) and _allowed(requested, profile):
        key = ed25519.Ed25519PrivateKey.generate()
    elif profile.key_types[0] == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=max(2048, profile.rsa_min_bits))
    elif profile.key_types[0] == "ec":
        key = ec.generate_private_key(_CURVE_CLASSES[profile.ec_curves[0]]())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    profile.check_public_key(key.public_key())
    return key


def _allowed(requested: PublicKey, profile: Profile) -> bool:
    try:
        profile.check_public_key(requested)
    except CAError:  # AlgorithmNotAllowed (type, curve) or PolicyDenied (RSA size)
        return False
    return True


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
    elif isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in _CURVE_BY_CRYPTOGRAPHY_NAME:
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
    """DER SignedData (no ContentInfo: it is the EnvelopedData's content) over the key package."""
    if not isinstance(signer_key, SignerKey):
        raise ValueError(f"the key package signer must have an RSA or EC key, not {type(signer_key).__name__}")
    if not key_matches_certificate(signer_key, signer_cert):
        raise ValueError("the signer key does not belong to the signer certificate")
    package = AsymmetricKeyPackage([keys.PrivateKeyInfo.load(pkcs8_der(key))]).dump()
    attributes = cms.CMSAttributes(  # already in DER SET OF order: contentType encodes shorter
        [
            {"type": "content_type", "values": [ASYMMETRIC_KEY_PACKAGE_OID]},
            {"type": "message_digest", "values": [hashlib.sha256(package).digest()]},
        ]
    )
    if isinstance(signer_key, rsa.RSAPrivateKey):
        signature = signer_key.sign(attributes.dump(), padding.PKCS1v15(), hashes.SHA256())
        signature_algorithm = "sha256_rsa"
    else:
        signature = signer_key.sign(attributes.dump(), ec.ECDSA(hashes.SHA256()))
        signature_algorithm = "sha256_ecdsa"
    signer_info = {
        "version": "v1",
        "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value=_issuer_and_serial(signer_cert)),
        "digest_algorithm": {"algorithm": "sha256"},
        "signed_attrs": attributes,
        "signature_algorithm": {"algorithm": signature_algorithm},
        "signature": signature,
    }
    certificates = [
        asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in (signer_cert, *chain)
    ]
    signed_data = cms.SignedData(
        {
            "version": "v3",  # RFC 5652 §5.1: eContentType is not id-data
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {"content_type": ASYMMETRIC_KEY_PACKAGE_OID, "content": package},
            "certificates": certificates,
            "signer_infos": [signer_info],
        }
    )
    der: bytes = signed_data.dump()
    return der


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
