"""CMS (RFC 5652) as SCEP and EST both use it: DER encoding, one SignedData signer, one SignerInfo
verifier, the RSASSA-PSS parameters, and the CRLReason names.

Each protocol reads a SignedData with its own reader, hands the SignerInfo's parts to
`verify_signer_info`, and maps the errors it raises (`BadSignature`, `AlgorithmNotAllowed`) to its
own failure code. Signing is assembled from pre-encoded parts: asn1crypto would cost a
millisecond or two a message, several times the signature.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Self

from asn1crypto import algos, cms, core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from shared_ca.errors import AlgorithmNotAllowed, BadSignature

DATA_OID = "1.2.840.113549.1.7.1"  # id-data (RFC 5652 §4)
RSASSA_PSS_OID = "1.2.840.113549.1.1.10"
DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError)
"""What asn1crypto raises on malformed input (AttributeError: `.native` of a universal type it does
not implement, such as ObjectDescriptor, inside an ANY)."""

CRL_REASONS: dict[str, x509.ReasonFlags] = {flag.name: flag for flag in x509.ReasonFlags}
"""RFC 5280 §5.3.1 CRLReason by asn1crypto's name ('key_compromise'), which is the ReasonFlags member's."""

# --- DER encoding (X.690 §10) ----------------------------------------------------------------------


def der_header(tag_byte: int, length: int) -> bytes:
    """A DER tag-and-length header for a value of `length` octets."""
    if length < 0x80:
        return bytes((tag_byte, length))
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag_byte, 0x80 | len(size))) + size


def der_tlv(tag_byte: int, contents: bytes) -> bytes:
    """A DER value: `tag_byte`, the definite length of `contents`, `contents`."""
    return der_header(tag_byte, len(contents)) + contents


def der_sequence(*parts: bytes) -> bytes:
    """A DER SEQUENCE of the pre-encoded `parts`, in order."""
    return der_tlv(0x30, b"".join(parts))


def der_set_of(parts: Sequence[bytes]) -> bytes:
    """A DER SET OF the pre-encoded `parts`, sorted by their encodings (X.690 §11.6)."""
    return der_tlv(0x31, b"".join(sorted(parts)))


def der_integer(value: int) -> bytes:
    """A DER INTEGER: minimal two's complement."""
    size = ((value if value >= 0 else ~value).bit_length() + 8) // 8
    return der_tlv(0x02, value.to_bytes(size, "big", signed=True))


def der_octet_string(value: bytes) -> bytes:
    """A DER OCTET STRING."""
    return der_tlv(0x04, value)


@functools.cache
def der_oid(dotted: str) -> bytes:
    """A DER OBJECT IDENTIFIER, encoded once per OID."""
    encoded: bytes = core.ObjectIdentifier(dotted).dump()
    return encoded


DER_NULL = b"\x05\x00"
DER_DATA_OID = der_oid(DATA_OID)
MGF1_OID_DER = der_oid("1.2.840.113549.1.1.8")
RSA_ENCRYPTION_DER = der_sequence(der_oid("1.2.840.113549.1.1.1"), DER_NULL)
"""The rsaEncryption AlgorithmIdentifier (RFC 3370 §3.2, §4.2.1)."""

# --- algorithms ------------------------------------------------------------------------------------

DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
"""Message digests by name (asn1crypto's and cryptography's). MD5 is read; refusing it is the
protocol's choice (RFC 6151)."""

# By digest: its OID (RFC 5754 §2), ECDSA with it (RFC 5758 §3.2), RSA PKCS#1 v1.5 with it (RFC 4055 §5).
_ALGORITHM_OIDS = {
    "md5": ("1.2.840.113549.2.5", None, None),
    "sha1": ("1.3.14.3.2.26", "1.2.840.10045.4.1", "1.2.840.113549.1.1.5"),
    "sha224": ("2.16.840.1.101.3.4.2.4", "1.2.840.10045.4.3.1", "1.2.840.113549.1.1.14"),
    "sha256": ("2.16.840.1.101.3.4.2.1", "1.2.840.10045.4.3.2", "1.2.840.113549.1.1.11"),
    "sha384": ("2.16.840.1.101.3.4.2.2", "1.2.840.10045.4.3.3", "1.2.840.113549.1.1.12"),
    "sha512": ("2.16.840.1.101.3.4.2.3", "1.2.840.10045.4.3.4", "1.2.840.113549.1.1.13"),
}
DIGEST_ALGORITHM_DER = {
    name: der_sequence(der_oid(oid), *(() if name == "md5" else (DER_NULL,)))
    for name, (oid, _, _) in _ALGORITHM_OIDS.items()
}
"""DigestAlgorithmIdentifier by name: the SHA family with NULL parameters (RFC 5754 §2), MD5 with none."""
_ECDSA_ALGORITHM_DER = {name: der_sequence(der_oid(oid)) for name, (_, oid, _) in _ALGORITHM_OIDS.items() if oid}
_RSA_WITH_DIGEST_DER = {
    name: der_sequence(der_oid(oid), DER_NULL) for name, (_, _, oid) in _ALGORITHM_OIDS.items() if oid
}
_RSASSA_PSS_OID_DER = der_oid(RSASSA_PSS_OID)
_SIGNED_DATA_OID_DER = der_oid("1.2.840.113549.1.7.2")
_SCHEMES = ("rsassa_pkcs1v15", "rsassa_pss", "ecdsa")


def _pss_algorithm(digest: str, salt_length: int) -> bytes:
    """RSASSA-PSS AlgorithmIdentifier (RFC 4055 §3.1): hash and MGF1 hash `digest`, omitted when the
    SHA-1 default, as is a salt length of 20; the trailer field is always the default."""
    fields = []
    if digest != "sha1":
        fields.append(der_tlv(0xA0, DIGEST_ALGORITHM_DER[digest]))
        fields.append(der_tlv(0xA1, der_sequence(MGF1_OID_DER, DIGEST_ALGORITHM_DER[digest])))
    if salt_length != 20:
        fields.append(der_tlv(0xA2, der_integer(salt_length)))
    return der_sequence(_RSASSA_PSS_OID_DER, der_sequence(*fields))


# --- signing ---------------------------------------------------------------------------------------

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class RsaScheme(enum.Enum):
    """How an RSA key signs, and the signatureAlgorithm its SignerInfo names. EC keys sign ECDSA."""

    PKCS1V15 = enum.auto()
    """PKCS#1 v1.5 named rsaEncryption, the digestAlgorithm giving the hash (RFC 3370 §3.2): as SCEP
    clients expect it."""
    PKCS1V15_WITH_DIGEST = enum.auto()
    """PKCS#1 v1.5 named with its hash (RFC 4055 §5)."""
    PSS = enum.auto()
    """RSASSA-PSS, MGF1 with the same hash and a salt as long as the hash (RFC 4055 §3)."""


@dataclasses.dataclass(frozen=True)
class CmsSigner:
    """A signing key with its certificate's IssuerAndSerialNumber and the certificates to include,
    pre-encoded (DER): make it once per worker with `create`."""

    key: SigningKey
    certificate: x509.Certificate
    issuer_and_serial_der: bytes
    certificates_der: tuple[bytes, ...]  # the signer's certificate, then its chain
    rsa_scheme: RsaScheme = RsaScheme.PKCS1V15

    @classmethod
    def create(
        cls,
        key: SigningKey,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
        *,
        rsa_scheme: RsaScheme | None = None,
    ) -> Self:
        """Encode once: `certificate` first, then `chain`. Without `rsa_scheme`, the class's default."""
        ias = cms.IssuerAndSerialNumber(
            {
                "issuer": asn1_x509.Name.load(certificate.issuer.public_bytes()),
                "serial_number": certificate.serial_number,
            }
        )
        ders = tuple(cert.public_bytes(Encoding.DER) for cert in (certificate, *chain))
        signer = cls(key, certificate, ias.dump(), ders)
        return signer if rsa_scheme is None else dataclasses.replace(signer, rsa_scheme=rsa_scheme)

    def sign(self, data: bytes, digest: str) -> tuple[bytes, bytes]:
        """The signatureAlgorithm (DER) and the signature over `data` with the hash `digest`."""
        hash_algorithm = DIGESTS[digest]()
        key = self.key
        if isinstance(key, rsa.RSAPrivateKey) and self.rsa_scheme is RsaScheme.PSS:
            pss = padding.PSS(padding.MGF1(hash_algorithm), hash_algorithm.digest_size)
            return _pss_algorithm(digest, hash_algorithm.digest_size), key.sign(data, pss, hash_algorithm)
        if isinstance(key, rsa.RSAPrivateKey):
            if self.rsa_scheme is RsaScheme.PKCS1V15:
                algorithm = RSA_ENCRYPTION_DER
            elif digest in _RSA_WITH_DIGEST_DER:
                algorithm = _RSA_WITH_DIGEST_DER[digest]
            else:
                raise ValueError(f"no RSA signature algorithm names {digest}")
            return algorithm, key.sign(data, padding.PKCS1v15(), hash_algorithm)
        if digest not in _ECDSA_ALGORITHM_DER:
            raise ValueError(f"no ECDSA signature algorithm with {digest}")
        return _ECDSA_ALGORITHM_DER[digest], key.sign(data, ec.ECDSA(hash_algorithm))


def content_attributes(
    content_digest: bytes, *, content_type: str = DATA_OID, signing_time: dt.datetime | None = None
) -> list[bytes]:
    """The contentType, messageDigest and (when given) signingTime signed attributes (RFC 5652 §11.1-3),
    each DER, for `der_set_of`."""
    entries = [
        der_attribute(_CONTENT_TYPE_DER, der_oid(content_type)),
        der_attribute(_MESSAGE_DIGEST_DER, der_octet_string(content_digest)),
    ]
    if signing_time is not None:  # RFC 5652 §11.3: UTCTime for 1950-2049, GeneralizedTime otherwise
        choice = "utc_time" if 1950 <= signing_time.year < 2050 else "generalized_time"
        entries.append(der_attribute(_SIGNING_TIME_DER, cms.Time({choice: signing_time}).dump()))
    return entries


def der_attribute(type_der: bytes, value_der: bytes) -> bytes:
    """Attribute ::= SEQUENCE { attrType OID, attrValues SET OF } with one value (RFC 5652 §5.3)."""
    return der_sequence(type_der, der_tlv(0x31, value_der))


_CONTENT_TYPE_DER = der_oid("1.2.840.113549.1.9.3")
_MESSAGE_DIGEST_DER = der_oid("1.2.840.113549.1.9.4")
_SIGNING_TIME_DER = der_oid("1.2.840.113549.1.9.5")


def build_signed_data(
    signer: CmsSigner,
    *,
    digest: str,
    signed_attributes_der: bytes,
    content: bytes | None,
    content_type: str = DATA_OID,
    certificates_der: Sequence[bytes] | None = None,
) -> bytes:
    """DER ContentInfo(SignedData) with one SignerInfo (version 1, IssuerAndSerialNumber) over
    `signed_attributes_der`, a DER SET OF sent re-tagged [0].

    Version 1 over id-data, 3 over any other eContentType (RFC 5652 §5.1). `content` None leaves the
    eContent absent. The certificates (by default the signer's) go out byte for byte, in the order
    given: some clients take the first for the signer.
    """
    class_, method, tag, _header, attributes, _trailer = parser.parse(signed_attributes_der)
    if (class_, method, tag) != (0, 1, 17):
        raise ValueError("the signed attributes are not a SET OF")
    signature_algorithm, signature = signer.sign(signed_attributes_der, digest)
    version = der_integer(1 if content_type == DATA_OID else 3)
    signer_info = der_sequence(
        der_integer(1),
        signer.issuer_and_serial_der,
        DIGEST_ALGORITHM_DER[digest],
        der_tlv(0xA0, attributes),
        signature_algorithm,
        der_octet_string(signature),
    )
    econtent = () if content is None else (der_tlv(0xA0, der_octet_string(content)),)
    certificates = signer.certificates_der if certificates_der is None else certificates_der
    signed_data = der_sequence(
        version,
        der_tlv(0x31, DIGEST_ALGORITHM_DER[digest]),
        der_sequence(der_oid(content_type), *econtent),
        der_tlv(0xA0, b"".join(certificates)),
        der_tlv(0x31, signer_info),
    )
    return der_sequence(_SIGNED_DATA_OID_DER, der_tlv(0xA0, signed_data))


# --- verifying -------------------------------------------------------------------------------------


class SignatureAlgorithm(NamedTuple):
    """A signature algorithm: the scheme ("rsassa_pkcs1v15", "rsassa_pss", "ecdsa", …, or the dotted
    OID), the hash its OID fixes (None: the SignerInfo's digestAlgorithm applies) and, for
    RSASSA-PSS, the parameters as sent."""

    name: str
    hash_name: str | None
    parameters: bytes = b""

    @classmethod
    def from_oid(cls, oid: str, parameters: bytes = b"") -> SignatureAlgorithm:
        """Named by asn1crypto's rules; an OID it does not know keeps its dotted form."""
        if oid == RSASSA_PSS_OID:
            return cls("rsassa_pss", None, parameters)
        if oid not in algos.SignedDigestAlgorithmId._map:
            return cls(oid, None)
        algorithm = algos.SignedDigestAlgorithm({"algorithm": oid})
        try:
            hash_name: str | None = algorithm.hash_algo
        except ValueError:  # rsaEncryption, bare ecdsa, the SHA-3 ECDSA OIDs
            hash_name = None
        return cls(algorithm.signature_algo, hash_name)


class ContentAttributes(NamedTuple):
    """The signed attributes RFC 5652 §5.4 has a verifier check, and the DER SET OF the signature covers."""

    der: bytes
    content_type: str | None  # dotted
    message_digest: bytes | None


@dataclasses.dataclass(frozen=True)
class SignerInfo:
    """What a verifier reads of a SignerInfo (RFC 5652 §5.3), decoded by the protocol's reader."""

    digest: str  # the digestAlgorithm's name
    signature_algorithm: SignatureAlgorithm
    signature: bytes
    signed_attributes: ContentAttributes | None  # None: the signature covers the content itself


def verify_signer_info(
    signer_info: SignerInfo,
    *,
    content_type: str,
    content: bytes,
    signer_key: Callable[[], object],
    digests: Mapping[str, type[hashes.HashAlgorithm]] = DIGESTS,
    what: str = "message",
) -> None:
    """Check the contentType and messageDigest signed attributes, then the signature (RFC 5652 §5.4,
    §5.6) with the public key `signer_key` returns, asked only once the attributes match.

    Raises BadSignature when the message fails a check ("the `what` signature does not verify"), and
    AlgorithmNotAllowed for a digest outside `digests` (also those MGF1 may use) or a signature
    algorithm we do not implement. Verifies with the low-level key API: the x509 helpers refuse SHA-1,
    which legacy clients sign with.
    """
    digest = signer_info.digest
    hash_class = digest_algorithm(digest, digests)
    data = content
    attributes = signer_info.signed_attributes
    if attributes is not None:
        if attributes.content_type != content_type:
            raise BadSignature("the contentType attribute does not match")
        expected = hashlib.new(digest, content).digest()
        if attributes.message_digest is None or not hmac.compare_digest(expected, attributes.message_digest):
            raise BadSignature("the messageDigest does not match the content")
        data = attributes.der
    public_key = signer_key()
    name, named_hash, pss = signer_info.signature_algorithm.name, signer_info.signature_algorithm.hash_name, None
    if name == "rsassa_pss":
        named_hash, pss = read_pss(signer_info.signature_algorithm.parameters, digests)
    if (named_hash or digest) != digest:  # rsaEncryption, bare ecdsa: the digestAlgorithm applies
        raise AlgorithmNotAllowed("the signature and digest algorithms disagree", detail=f"{named_hash}/{digest}")
    if name not in _SCHEMES:
        raise AlgorithmNotAllowed("the signature algorithm is not supported", detail=name)
    hash_algorithm, signature = hash_class(), signer_info.signature
    try:
        if name == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
        elif name == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
            if pss is None:
                raise ValueError("unsupported RSASSA-PSS parameters")
            public_key.verify(signature, data, pss, hash_algorithm)
        elif name == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
        else:  # a signature algorithm the signer's key cannot have produced
            raise InvalidSignature
    except InvalidSignature:
        raise BadSignature(f"the {what} signature does not verify") from None
    except (UnsupportedAlgorithm, *DECODE_ERRORS) as exc:
        raise AlgorithmNotAllowed("the signature algorithm is not supported", detail=repr(exc)) from exc


def digest_algorithm(name: str, digests: Mapping[str, type[hashes.HashAlgorithm]]) -> type[hashes.HashAlgorithm]:
    """The hash `name` among `digests`; AlgorithmNotAllowed when it is not there."""
    hash_class = digests.get(name)
    if hash_class is None:
        raise AlgorithmNotAllowed("the digest algorithm is not supported", detail=name)
    return hash_class


def read_pss(
    parameters: bytes, digests: Mapping[str, type[hashes.HashAlgorithm]] = DIGESTS
) -> tuple[str | None, padding.PSS | None]:
    """RSASSA-PSS-params (RFC 4055 §3.1), with their defaults (SHA-1, MGF1 with SHA-1, salt 20): the
    hash's name (None when unreadable) and the padding they describe (None unless the mask generation
    is MGF1 with one of `digests` and the salt length is usable)."""
    try:
        params = algos.RSASSAPSSParams.load(parameters, strict=True)
    except DECODE_ERRORS:
        return None, None
    try:
        hash_name: str | None = params["hash_algorithm"]["algorithm"].native
    except DECODE_ERRORS:
        hash_name = None
    try:
        mgf = params["mask_gen_algorithm"]
        mgf_hash = digests.get(mgf["parameters"]["algorithm"].native) if mgf["algorithm"].native == "mgf1" else None
        pss = None if mgf_hash is None else padding.PSS(padding.MGF1(mgf_hash()), params["salt_length"].native)
    except DECODE_ERRORS:  # unreadable, or a negative salt length
        pss = None
    return hash_name, pss
