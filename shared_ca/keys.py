"""Private keys and certificate files: generate, load, write (0600, optionally encrypted), match."""

from __future__ import annotations

import enum
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from shared_ca.errors import KeyMaterialError

PrivateKey = CertificateIssuerPrivateKeyTypes
PublicKey = CertificatePublicKeyTypes


class KeyType(enum.Enum):
    """Key types `gateway init` and server-side generation can create."""

    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    P256 = "p256"
    P384 = "p384"
    P521 = "p521"
    ED25519 = "ed25519"


_CURVES: dict[KeyType, ec.EllipticCurve] = {
    KeyType.P256: ec.SECP256R1(),
    KeyType.P384: ec.SECP384R1(),
    KeyType.P521: ec.SECP521R1(),
}
_RSA_BITS = {KeyType.RSA2048: 2048, KeyType.RSA3072: 3072, KeyType.RSA4096: 4096}


def generate_private_key(key_type: KeyType) -> PrivateKey:
    """Create a new private key of `key_type`."""
    if key_type in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type])
    return ed25519.Ed25519PrivateKey.generate()


def public_key_bytes(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo DER: the canonical form for comparing keys."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches_certificate(key: PrivateKey, cert: x509.Certificate) -> bool:
    """True when `key` is the private half of the key certified by `cert`."""
    return public_key_bytes(key.public_key()) == public_key_bytes(cert.public_key())


def describe_public_key(key: PublicKey) -> str:
    """A short human name such as 'RSA-2048' or 'EC P-256'."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__


def _encryption(passphrase: bytes | None) -> serialization.KeySerializationEncryption:
    if passphrase:
        return serialization.BestAvailableEncryption(passphrase)
    return serialization.NoEncryption()


def write_secret_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only (0600), replacing any old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_private_key(path: Path, key: PrivateKey, passphrase: bytes | None) -> None:
    """PKCS#8 PEM, 0600, encrypted when a passphrase is given."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(passphrase))
    write_secret_file(path, pem)


def load_private_key(path: Path, passphrase: bytes | None) -> PrivateKey:
    """Load a PEM or DER private key, with one clear error for each way it can fail."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read private key {path}: {exc.strerror}") from exc
    return parse_private_key(data, passphrase, source=str(path))


def parse_private_key(data: bytes, passphrase: bytes | None, *, source: str) -> PrivateKey:
    """Parse private-key bytes (PEM or DER) from `source` (named in errors)."""
    loader = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        key = loader(data, password=passphrase or None)
    except TypeError as exc:
        if passphrase:
            raise KeyMaterialError(f"private key {source} is not encrypted, but a passphrase was given") from exc
        raise KeyMaterialError(
            f"private key {source} is encrypted: set GATEWAY_KEY_PASSPHRASE or keys.passphrase_file"
        ) from exc
    except ValueError as exc:
        if passphrase and b"ENCRYPTED" in data:
            raise KeyMaterialError(f"wrong passphrase for private key {source}") from exc
        raise KeyMaterialError(f"{source} is not a readable private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyMaterialError(f"private key {source} has an unsupported type {type(key).__name__}")
    return key


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM (or single DER) file, in file order."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read certificate file {path}: {exc.strerror}") from exc
    return parse_certificates(data, source=str(path))


def parse_certificates(data: bytes, *, source: str) -> list[x509.Certificate]:
    """Certificates from PEM bytes (one or more) or one DER certificate."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise KeyMaterialError(f"{source} holds no readable X.509 certificate") from exc
    return certs


def certificates_pem(certs: list[x509.Certificate]) -> bytes:
    """Concatenated PEM of `certs`."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a public file (certificates), 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)
