"""CMS EnvelopedData (RFC 5652 §6) as SCEP uses it: one KeyTransRecipientInfo, RSA key transport.

Every way decryption can fail (RSA unwrap, key length, CBC padding, GCM tag) raises one
`EnvelopeDecryptionError` with one message, and a failed RSA unwrap continues with a random key
(RFC 3218 §2.3.2), so neither the reply nor its timing tells a padding oracle anything.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from scep import der as ber  # the reader; `der` names the bytes being read here
from scep.asn1 import GcmParameters, names_match
from shared_ca.cms import (
    DER_DATA_OID,
    DIGEST_ALGORITHM_DER,
    MGF1_OID_DER,
    RSA_ENCRYPTION_DER,
    der_integer,
    der_octet_string,
    der_oid,
    der_sequence,
    der_tlv,
)

try:  # cryptography ≥ 43 keeps 3DES among the "decrepit" ciphers
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

Rng = Callable[[int], bytes]


class EnvelopeError(Exception):
    """Base of the envelope errors; the message is safe to show a peer."""


class MalformedEnvelope(EnvelopeError):
    """Not an EnvelopedData we can read (structure, parameters, recipient kinds)."""


class NotForRecipient(EnvelopeError):
    """No KeyTransRecipientInfo names the recipient certificate we were given. `named` holds the
    (issuer name DER, serial) of each one that names a certificate by issuer and serial number."""

    def __init__(self, message: str, named: tuple[tuple[bytes, int], ...] = ()) -> None:
        super().__init__(message)
        self.named = named


class UnsupportedEnvelopeAlgorithm(EnvelopeError):
    """A content cipher or key transport we do not implement."""


DECRYPTION_FAILED = "the envelope could not be decrypted"


class EnvelopeDecryptionError(EnvelopeError):
    """Any unwrap, length, padding or tag failure; always the same message (no oracle)."""

    def __init__(self) -> None:
        super().__init__(DECRYPTION_FAILED)


class ContentCipher(enum.StrEnum):
    """Content-encryption algorithms (RFC 8894 §3.5.2: DES, 3DES, AES), by their short names."""

    DES = "des"
    TRIPLE_DES = "3des"
    AES128 = "aes128"
    AES192 = "aes192"
    AES256 = "aes256"
    AES128_GCM = "aes128-gcm"
    AES256_GCM = "aes256-gcm"

    @property
    def oid(self) -> str:
        """The content-encryption algorithm OID on the wire."""
        return _CIPHERS[self].oid

    @property
    def key_size(self) -> int:
        """Content-encryption key length in octets."""
        return _CIPHERS[self].key_size

    @property
    def is_aead(self) -> bool:
        """True for AES-GCM (RFC 5084)."""
        return _CIPHERS[self].block_bits == 0


@dataclasses.dataclass(frozen=True)
class _CipherSpec:
    oid: str
    key_size: int
    iv_size: int
    block_bits: int  # 0 for GCM


_CIPHERS = {
    ContentCipher.DES: _CipherSpec("1.3.14.3.2.7", 8, 8, 64),
    ContentCipher.TRIPLE_DES: _CipherSpec("1.2.840.113549.3.7", 24, 8, 64),
    ContentCipher.AES128: _CipherSpec("2.16.840.1.101.3.4.1.2", 16, 16, 128),
    ContentCipher.AES192: _CipherSpec("2.16.840.1.101.3.4.1.22", 24, 16, 128),
    ContentCipher.AES256: _CipherSpec("2.16.840.1.101.3.4.1.42", 32, 16, 128),
    ContentCipher.AES128_GCM: _CipherSpec("2.16.840.1.101.3.4.1.6", 16, 12, 0),
    ContentCipher.AES256_GCM: _CipherSpec("2.16.840.1.101.3.4.1.46", 32, 12, 0),
}


class KeyTransport(enum.StrEnum):
    """How the content-encryption key is wrapped for the recipient (RFC 3370 §4.2, RFC 3560)."""

    RSA_PKCS1V15 = "rsa"
    RSA_OAEP = "rsa-oaep"
    """RSAES-OAEP with the default parameters: SHA-1 and MGF1-SHA-1 (RFC 4055 §4.1)."""
    RSA_OAEP_SHA256 = "rsa-oaep-sha256"
    """RSAES-OAEP with explicit SHA-256 and MGF1-SHA-256 parameters."""

    def padding(self, label: bytes | None = None) -> padding.AsymmetricPadding:
        """The cryptography padding object for this key transport."""
        if self is KeyTransport.RSA_PKCS1V15:
            return padding.PKCS1v15()
        digest: hashes.HashAlgorithm = hashes.SHA1() if self is KeyTransport.RSA_OAEP else hashes.SHA256()  # noqa: S303 - RFC 4055 default
        return padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=label or None)


_VERSION_0 = der_integer(0)
_ENVELOPED_DATA_OID = der_oid("1.2.840.113549.1.7.3")
_ICV_LEN_16 = der_integer(16)
_CIPHER_OID_DER = {cipher: der_oid(spec.oid) for cipher, spec in _CIPHERS.items()}
_RSAES_OAEP_OID = der_oid("1.2.840.113549.1.1.7")
_SHA256_ALGORITHM = DIGEST_ALGORITHM_DER["sha256"]
_KEY_ENCRYPTION_ALGORITHM_DER = {
    KeyTransport.RSA_PKCS1V15: RSA_ENCRYPTION_DER,
    # RSAES-OAEP-params (RFC 4055 §4.1): all defaults (SHA-1, MGF1-SHA-1, empty label) is an empty SEQUENCE.
    KeyTransport.RSA_OAEP: der_sequence(_RSAES_OAEP_OID, der_sequence()),
    KeyTransport.RSA_OAEP_SHA256: der_sequence(
        _RSAES_OAEP_OID,
        der_sequence(
            der_tlv(0xA0, _SHA256_ALGORITHM),
            der_tlv(0xA1, der_sequence(MGF1_OID_DER, _SHA256_ALGORITHM)),
        ),
    ),
}


@dataclasses.dataclass(frozen=True)
class OpenedEnvelope:
    """What an opened envelope held, and how it was protected."""

    plaintext: bytes
    cipher: ContentCipher
    key_transport: KeyTransport


def open_envelope(der: bytes, recipient_key: rsa.RSAPrivateKey, recipient_cert: x509.Certificate) -> OpenedEnvelope:
    """Decrypt a ContentInfo(EnvelopedData) addressed to `recipient_cert`."""
    try:
        content_type, info = ber.content_info(der)
        if content_type != _ENVELOPED_DATA_OID_CONTENTS:
            raise MalformedEnvelope("the envelope is not an EnvelopedData")
        enveloped = ber.expect(ber.content(der, info), ber.SEQUENCE)
        _version, _originator, recipient_infos, eci, _attrs = ber.fields(der, enveloped, ber.ENVELOPED_DATA)
        ktri = _our_recipient_info(der, recipient_infos, recipient_cert)
        key_transport, label = _key_transport(der, ktri[2])
        cipher, parameters, ciphertext = _encrypted_content_info(der, eci)
        encrypted_key = ber.octets(der, ktri[3])
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise MalformedEnvelope("the envelope is malformed") from exc
    if ciphertext is None:
        raise MalformedEnvelope("the envelope has no encrypted content")
    key = _unwrap_key(recipient_key, encrypted_key, key_transport.padding(label), cipher.key_size)
    return OpenedEnvelope(_decrypt(cipher, key, parameters, ciphertext), cipher, key_transport)


def seal_envelope(
    plaintext: bytes,
    recipient_cert: x509.Certificate,
    cipher: ContentCipher,
    key_transport: KeyTransport = KeyTransport.RSA_PKCS1V15,
    *,
    rng: Rng = os.urandom,
) -> bytes:
    """Encrypt `plaintext` for `recipient_cert` as DER ContentInfo(EnvelopedData).

    The encryptedContent is a primitive [0] IMPLICIT OCTET STRING: some SCEP clients cannot read the
    constructed (BER) form.
    """
    public_key = recipient_cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise UnsupportedEnvelopeAlgorithm("the recipient certificate has no RSA key for key transport")
    spec = _CIPHERS[cipher]
    key = rng(spec.key_size)
    if spec.block_bits == 64:
        key = _des_parity(key)
    iv = rng(spec.iv_size)
    if spec.block_bits:
        padder = sym_padding.PKCS7(spec.block_bits).padder()
        padded = padder.update(plaintext) + padder.finalize()
        encryptor = Cipher(_algorithm(cipher, key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padded) + encryptor.finalize()
        parameters = der_octet_string(iv)
    else:  # AES-GCM as Go's pkcs7 (micromdm, step-ca) sends it: tag appended to the ciphertext
        gcm = Cipher(AES(key), modes.GCM(iv)).encryptor()
        ciphertext = gcm.update(plaintext) + gcm.finalize() + gcm.tag
        parameters = der_sequence(der_octet_string(iv), _ICV_LEN_16)  # GCMParameters (RFC 5084 §3.2)
    recipient_info = der_sequence(  # KeyTransRecipientInfo (RFC 5652 §6.2.1), rid issuerAndSerialNumber
        _VERSION_0,
        der_sequence(recipient_cert.issuer.public_bytes(), der_integer(recipient_cert.serial_number)),
        _KEY_ENCRYPTION_ALGORITHM_DER[key_transport],
        der_octet_string(public_key.encrypt(key, key_transport.padding())),
    )
    encrypted_content_info = der_sequence(
        DER_DATA_OID,
        der_sequence(_CIPHER_OID_DER[cipher], parameters),
        der_tlv(0x80, ciphertext),  # [0] IMPLICIT OCTET STRING, primitive
    )
    enveloped = der_sequence(_VERSION_0, der_tlv(0x31, recipient_info), encrypted_content_info)
    return der_sequence(_ENVELOPED_DATA_OID, der_tlv(0xA0, enveloped))


_ENVELOPED_DATA_OID_CONTENTS = ber.oid_contents("1.2.840.113549.1.7.3")
_RSA_ENCRYPTION = ber.oid_contents("1.2.840.113549.1.1.1")
_RSAES_OAEP = ber.oid_contents("1.2.840.113549.1.1.7")
_CIPHER_BY_OID = {ber.oid_contents(spec.oid): cipher for cipher, spec in _CIPHERS.items()}
_ENCRYPTED_CONTENT = ber.context(0, constructed=False)


def _our_recipient_info(data: bytes, recipient_infos: ber.Tlv, cert: x509.Certificate) -> list[ber.Tlv]:
    """The fields of the KeyTransRecipientInfo whose rid names `cert` (RFC 5652 §6.2.1)."""
    infos = ber.children(data, ber.expect(recipient_infos, ber.SET))
    kinds = {ber.RECIPIENT_KINDS[info.tag] for info in infos}
    named: list[tuple[bytes, int]] = []
    for info in infos:
        if info.tag != ber.SEQUENCE:
            continue
        ktri = ber.fields(data, info, ber.KEY_TRANS_RECIPIENT_INFO)
        rid = ktri[1]
        if rid.tag == ber.SEQUENCE:
            issuer, serial = ber.fields(data, rid, ber.ISSUER_AND_SERIAL)
            issuer_der, number = ber.encoding(data, issuer), ber.integer(data, serial)
            if number == cert.serial_number and names_match(issuer_der, cert.issuer.public_bytes()):
                return ktri
            named.append((issuer_der, number))
        elif ber.octets(data, rid) == _subject_key_identifier(cert):
            return ktri
    if kinds and "ktri" not in kinds:
        raise UnsupportedEnvelopeAlgorithm("the envelope uses no key transport recipient")
    raise NotForRecipient("the envelope is not addressed to this recipient", tuple(named))


def _subject_key_identifier(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _key_transport(data: bytes, algorithm_tlv: ber.Tlv) -> tuple[KeyTransport, bytes]:
    algorithm = ber.algorithm(data, algorithm_tlv)
    if algorithm.oid == _RSA_ENCRYPTION:
        return KeyTransport.RSA_PKCS1V15, b""
    if algorithm.oid == _RSAES_OAEP:  # RSAES-OAEP-params (RFC 4055 §4.1): rare, read by asn1crypto
        params = cms.KeyEncryptionAlgorithm.load(ber.encoding(data, algorithm_tlv))["parameters"]
        digest = params["hash_algorithm"]["algorithm"].native
        mgf = params["mask_gen_algorithm"]
        mgf_digest = mgf["parameters"]["algorithm"].native if mgf["algorithm"].native == "mgf1" else None
        label: bytes = params["p_source_algorithm"]["parameters"].native or b""
        if digest == mgf_digest == "sha1":
            return KeyTransport.RSA_OAEP, label
        if digest == mgf_digest == "sha256":
            return KeyTransport.RSA_OAEP_SHA256, label
    raise UnsupportedEnvelopeAlgorithm("the envelope's key transport is not supported")


def _encrypted_content_info(data: bytes, eci: ber.Tlv) -> tuple[ContentCipher, _Parameters, bytes | None]:
    """The cipher, its parameters and the encryptedContent octets of an EncryptedContentInfo (RFC 5652 §6.1).

    micromdm's scepclient sends encryptedContent as a constructed definite-length [0] of OCTET
    STRING chunks (BER allows it), OpenSSL's `-stream` an indefinite-length one.
    """
    fields = ber.children(data, eci)
    if len(fields) not in (2, 3):
        raise ber.DerError("EncryptedContentInfo has the wrong number of fields")
    ber.expect(fields[0], ber.OID)  # contentType: not looked at further
    algorithm = ber.algorithm(data, fields[1])
    ciphertext = None
    if len(fields) == 3:
        ciphertext = ber.octets(data, ber.expect(fields[2], _ENCRYPTED_CONTENT, _ENCRYPTED_CONTENT | 0x20))
    cipher = _CIPHER_BY_OID.get(algorithm.oid)
    if cipher is None:
        raise UnsupportedEnvelopeAlgorithm("the envelope's content cipher is not supported")
    if cipher.is_aead:  # GCMParameters (RFC 5084 §3.2): rare, read by asn1crypto
        gcm = GcmParameters.load(ber.encoding(data, algorithm.parameters))
        nonce, icv_len = gcm["nonce"].native, gcm["icv_len"].native
        if not 8 <= len(nonce) <= 128 or not 12 <= icv_len <= 16:  # RFC 5084 §3.2
            raise MalformedEnvelope("the envelope's GCM parameters are invalid")
        return cipher, _Parameters(nonce, icv_len), ciphertext
    if algorithm.parameters is ber.ABSENT:
        raise MalformedEnvelope("the envelope's IV has the wrong length")
    iv = ber.octets(data, ber.expect(algorithm.parameters, *ber.OCTET_STRINGS))
    if len(iv) != _CIPHERS[cipher].iv_size:
        raise MalformedEnvelope("the envelope's IV has the wrong length")
    return cipher, _Parameters(iv), ciphertext


@dataclasses.dataclass(frozen=True)
class _Parameters:
    iv: bytes
    icv_len: int = 0


def _unwrap_key(key: rsa.RSAPrivateKey, encrypted_key: bytes, pad: padding.AsymmetricPadding, size: int) -> bytes:
    """RSA-decrypt the content key; on any failure continue with a random key (RFC 3218 §2.3.2)."""
    substitute = os.urandom(size)
    try:
        content_key = key.decrypt(encrypted_key, pad)
    except ValueError:
        return substitute
    return content_key if len(content_key) == size else substitute


def _algorithm(cipher: ContentCipher, key: bytes) -> CipherAlgorithm:
    if cipher is ContentCipher.DES:
        return TripleDES(key * 3)  # single DES is EDE with K1 = K2 = K3
    if cipher is ContentCipher.TRIPLE_DES:
        return TripleDES(key)
    return AES(key)


def _decrypt(cipher: ContentCipher, key: bytes, parameters: _Parameters, ciphertext: bytes) -> bytes:
    spec = _CIPHERS[cipher]
    try:
        if spec.block_bits:
            if not ciphertext or len(ciphertext) * 8 % spec.block_bits:
                raise ValueError("ciphertext is not whole blocks")
            decryptor = Cipher(_algorithm(cipher, key), modes.CBC(parameters.iv)).decryptor()
            padded = decryptor.update(ciphertext) + decryptor.finalize()
            unpadder = sym_padding.PKCS7(spec.block_bits).unpadder()
            return unpadder.update(padded) + unpadder.finalize()
        if len(ciphertext) < parameters.icv_len:
            raise ValueError("ciphertext shorter than its tag")
        body, tag = ciphertext[: -parameters.icv_len], ciphertext[-parameters.icv_len :]
        mode = modes.GCM(parameters.iv, tag, min_tag_length=parameters.icv_len)
        decryptor = Cipher(AES(key), mode).decryptor()
        return decryptor.update(body) + decryptor.finalize()
    except (ValueError, InvalidTag):
        raise EnvelopeDecryptionError from None


def _des_parity(key: bytes) -> bytes:
    """Set odd parity on each DES key octet (FIPS 46-3 §3), as strict peers check it."""
    return bytes(b & 0xFE | (bin(b & 0xFE).count("1") + 1) % 2 for b in key)
