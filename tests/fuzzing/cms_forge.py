"""A client-side CMS SignedData writer that takes raw parts, for SCEP pkiMessages and CMC requests.

The project's own builders (scep.builder, est.cmc) take parsed certificates and well-formed values;
a fuzzer needs to sign over mutated attributes and to include a signer certificate that may not
even parse, so this one works on bytes only.
"""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric import padding, rsa

from shared_ca import cms
from shared_ca.cms import der_integer, der_octet_string, der_oid, der_sequence, der_tlv
from tests.fuzzing import forge

DIGEST_OIDS = forge.HASH_OIDS
DIGESTS = tuple(DIGEST_OIDS)
DATA_OID = "1.2.840.113549.1.7.1"
SIGNED_DATA_OID = "1.2.840.113549.1.7.2"


def digest_algorithm(digest: str) -> bytes:
    """DigestAlgorithmIdentifier: NULL parameters for the SHA family, none for MD5 (as clients send them)."""
    return der_sequence(der_oid(DIGEST_OIDS[digest]), *(() if digest == "md5" else (b"\x05\x00",)))


def attribute(oid: str, *values: bytes) -> bytes:
    """Attribute ::= SEQUENCE { type, SET OF value } (values not sorted: a fuzzer sends what it likes)."""
    return der_sequence(der_oid(oid), der_tlv(0x31, b"".join(values)))


def signature(rng: random.Random, key: forge.SigningKey, data: bytes, digest: str) -> tuple[bytes, bytes]:
    """(signatureAlgorithm, signature) over `data`: RSA as rsaEncryption (certmonger), as
    <digest>WithRSAEncryption (scepclient) or as RSASSA-PSS; other keys as forge signs them."""
    if not isinstance(key, rsa.RSAPrivateKey):
        return forge.signature(rng, data, key, digest)
    hash_algorithm = cms.DIGESTS[digest]()
    form = rng.randrange(8)
    if form == 0 and digest != "md5" and key.key_size >= 2048:
        pss = padding.PSS(padding.MGF1(hash_algorithm), hash_algorithm.digest_size)
        params = der_sequence(
            der_tlv(0xA0, digest_algorithm(digest)),
            der_tlv(0xA1, der_sequence(der_oid("1.2.840.113549.1.1.8"), digest_algorithm(digest))),
            der_tlv(0xA2, der_integer(hash_algorithm.digest_size)),
        )
        return der_sequence(der_oid("1.2.840.113549.1.1.10"), params), key.sign(data, pss, hash_algorithm)
    oid = forge.RSA_SIGNATURE_OIDS[digest] if form == 1 else "1.2.840.113549.1.1.1"
    return der_sequence(der_oid(oid), b"\x05\x00"), key.sign(data, padding.PKCS1v15(), hash_algorithm)


def signed_data(
    rng: random.Random,
    *,
    content_type: str,
    content: bytes,
    attributes: bytes,
    key: forge.SigningKey,
    sid: bytes,
    certificates: tuple[bytes, ...],
    digest: str,
) -> bytes:
    """ContentInfo(SignedData) over `content`; `attributes` are the contents of the signed SET OF,
    `sid` the SignerIdentifier as DER (an IssuerAndSerialNumber or a [0] subjectKeyIdentifier)."""
    algorithm, value = signature(rng, key, der_tlv(0x31, attributes), digest)
    version = 3 if sid[:1] == b"\x80" else 1
    signer_info = der_sequence(
        der_integer(version),
        sid,
        digest_algorithm(digest),
        der_tlv(0xA0, attributes),
        algorithm,
        der_octet_string(value),
    )
    fields = [
        der_integer(version),
        der_tlv(0x31, digest_algorithm(digest)),
        der_sequence(der_oid(content_type), der_tlv(0xA0, der_octet_string(content))),
    ]
    if certificates:
        fields.append(der_tlv(0xA0, b"".join(certificates)))
    fields.append(der_tlv(0x31, signer_info))
    return der_sequence(der_oid(SIGNED_DATA_OID), der_tlv(0xA0, der_sequence(*fields)))
