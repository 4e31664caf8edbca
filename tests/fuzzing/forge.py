"""Forge what a hostile client signs itself: CSRs and certificates mutated inside and re-signed.

A mutated CertificationRequestInfo or TBSCertificate is signed again (by the key it names, by
another key, or by the test CA for certificates it "issued"), so the result passes every signature
check and the mutation reaches the code that reads the subject, the attributes and the extensions.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import random

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import AttributeOID, NameOID

from shared_ca.cms import DIGESTS, der_oid, der_sequence, der_tlv
from tests.fuzzing import der_tree
from tests.fuzzing.der_tree import Node
from tests.fuzzing.mutate import INTERESTING_TEXTS, interesting_integer, interesting_text

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
SIGNING_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
RSA_SIGNATURE_OIDS = {
    "md5": "1.2.840.113549.1.1.4",
    "sha1": "1.2.840.113549.1.1.5",
    "sha224": "1.2.840.113549.1.1.14",
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
_ECDSA_SIG = {
    "sha1": "1.2.840.10045.4.1",
    "sha224": "1.2.840.10045.4.3.1",
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}
_NULL = b"\x05\x00"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@functools.cache
def key_pool() -> dict[str, SigningKey]:
    """Keys made once per process: the RSA ones are what SCEP needs; the others reach key-type code."""
    return {
        "rsa2048-a": rsa.generate_private_key(65537, 2048),
        "rsa2048-b": rsa.generate_private_key(65537, 2048),
        "rsa1024": rsa.generate_private_key(65537, 1024),  # noqa: S505 - an input the policy must refuse
        "rsa3-exponent": rsa.generate_private_key(3, 2048),
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "k256": ec.generate_private_key(ec.SECP256K1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "ed448": ed448.Ed448PrivateKey.generate(),
    }


def spki_der(key: SigningKey) -> bytes:
    """The SubjectPublicKeyInfo DER of `key`'s public key."""
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def sign_tbs(rng: random.Random, tbs: bytes, key: SigningKey, digest: str = "sha256") -> bytes:
    """SEQUENCE { tbs, signatureAlgorithm, BIT STRING signature }: a signed X.509 object over `tbs`."""
    algorithm, value = signature(rng, tbs, key, digest)
    return der_sequence(tbs, algorithm, der_tlv(0x03, b"\x00" + value))


def signature(rng: random.Random, data: bytes, key: SigningKey, digest: str) -> tuple[bytes, bytes]:
    """(signatureAlgorithm DER, signature) of `data` by `key` with `digest` where the key type has it."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return der_sequence(der_oid("1.3.101.112")), key.sign(data)
    if isinstance(key, ed448.Ed448PrivateKey):
        return der_sequence(der_oid("1.3.101.113")), key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = digest if digest in _ECDSA_SIG else "sha256"
        return der_sequence(der_oid(_ECDSA_SIG[digest])), key.sign(
            data, ec.ECDSA(DIGESTS[digest](), deterministic_signing=True)
        )
    if rng.random() < 0.1 and digest != "md5" and key.key_size >= 2048:  # RSASSA-PSS, explicit parameters
        algorithm = DIGESTS[digest]()
        hash_id = der_sequence(der_oid(HASH_OIDS[digest]), _NULL)
        params = der_sequence(
            der_tlv(0xA0, hash_id),
            der_tlv(0xA1, der_sequence(der_oid("1.2.840.113549.1.1.8"), hash_id)),
            der_tlv(0xA2, bytes([0x02, 0x01, algorithm.digest_size])),
        )
        pss = padding.PSS(padding.MGF1(algorithm), algorithm.digest_size)
        return der_sequence(der_oid("1.2.840.113549.1.1.10"), params), key.sign(data, pss, algorithm)
    return der_sequence(der_oid(RSA_SIGNATURE_OIDS[digest]), _NULL), key.sign(
        data, padding.PKCS1v15(), DIGESTS[digest]()
    )


HASH_OIDS = {
    "md5": "1.2.840.113549.2.5",
    "sha1": "1.3.14.3.2.26",
    "sha224": "2.16.840.1.101.3.4.2.4",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}


# --- names -----------------------------------------------------------------------------------------

NAME_OIDS = (
    "2.5.4.3",
    "2.5.4.5",
    "2.5.4.10",
    "2.5.4.11",
    "2.5.4.6",
    "1.2.840.113549.1.9.1",
    "0.9.2342.19200300.100.1.1",
    "0.9.2342.19200300.100.1.25",
    "2.5.4.12",
    "1.2.3.4.5",
    "2.5.4.65",
)


def _atv(oid: str, tag: int, value: bytes) -> Node:
    return Node(b"\x30", children=[Node(b"\x06", content=der_oid(oid)[2:]), Node(bytes([tag]), content=value)])


def mutate_name(rng: random.Random, name: Node) -> None:
    """Subject-specific mutations: string tags, values, multi-valued and duplicated RDNs, odd OIDs."""
    if name.children is None:
        name.children = []
    rdns = name.children
    atvs = [atv for rdn in rdns for atv in (rdn.children or ()) if atv.children and len(atv.children) >= 2]
    action = rng.randrange(9)
    if action == 0 and atvs:  # the CN tag 0x0c -> 0x31 case, and every other tag
        value = rng.choice(atvs).children[1]  # type: ignore[index]
        der_tree.set_tag(rng, value)
    elif action in (1, 2) and atvs:
        value = rng.choice(atvs).children[1]  # type: ignore[index]
        value.content = interesting_text(rng, value.first)
        value.children = None
    elif action == 3 and len(rdns) > 1:  # multi-valued RDN: CN=a+O=b
        first, second = rng.sample(range(len(rdns)), 2)
        (rdns[first].children or []).extend(rdns[second].children or [])
        del rdns[second]
    elif action == 4 and rdns:
        rdns.append(copy.deepcopy(rng.choice(rdns)))
    elif action == 5:
        tag = rng.choice(der_tree.STRING_TAGS)
        text = rng.choice(INTERESTING_TEXTS).encode("utf-16-be" if tag == 0x1E else "utf-8")
        rdns.insert(rng.randrange(len(rdns) + 1), Node(b"\x31", children=[_atv(rng.choice(NAME_OIDS), tag, text)]))
    elif action == 6:
        rdns.insert(rng.randrange(len(rdns) + 1), Node(b"\x31", children=[]))  # an empty RDN
    elif action == 7 and atvs:
        oid = rng.choice(atvs).children[0]  # type: ignore[index]
        oid.content = rng.choice((der_oid(rng.choice(NAME_OIDS))[2:], b"", b"\x80", b"\x2a\x86", rng.randbytes(3)))
    else:
        name.children = [] if rng.random() < 0.5 else rdns[:1]


# --- CSRs ------------------------------------------------------------------------------------------

CHALLENGE_TAGS = (0x13, 0x0C, 0x1E, 0x16, 0x14, 0x04, 0x02)


def base_csr(key: SigningKey, cn: str, challenge: str | None, *, sans: list[x509.GeneralName] | None = None) -> bytes:
    """A valid CSR made by cryptography (the starting point of every CSR mutation)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fuzz")])
    )
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(Encoding.DER)


def _extension_request(rng: random.Random) -> Node:
    """An extensionRequest attribute with odd extensions: duplicated, unknown critical, not DER inside."""
    extensions = []
    for _ in range(rng.randrange(1, 4)):
        oid = rng.choice(("2.5.29.17", "2.5.29.19", "2.5.29.15", "2.5.29.37", "2.5.29.14", "1.2.3.4", "2.5.29.17"))
        value = rng.choice(
            (
                b"\x30\x00",
                b"\x30\x03\x01\x01\xff",
                b"\x03\x02\x05\xa0",
                b"\x30\x06\x82\x04" + rng.choice((b"a.b.", b"\x00\xff..", b"*.*.")),
                b"\x30\x06\x87\x04\x7f\x00\x00\x01",
                b"\x30\x07\x87\x05\x7f\x00\x00\x01\x01",
                b"\x30\x0c\xa0\x0a\x06\x03\x2b\x06\x01\xa0\x03\x0c\x01\xff",
                b"\x30\x05\x81\x03\xc3\xa9@",
                b"\x30\x04\xa4\x02\x30\x00",
                rng.randbytes(rng.randrange(0, 8)),
            )
        )
        fields = [Node(b"\x06", content=der_oid(oid)[2:])]
        if rng.random() < 0.3:
            fields.append(Node(b"\x01", content=b"\xff"))
        fields.append(Node(b"\x04", content=value))
        extensions.append(Node(b"\x30", children=fields))
    values = Node(b"\x31", children=[Node(b"\x30", children=extensions)])
    return Node(b"\x30", children=[Node(b"\x06", content=der_oid("1.2.840.113549.1.9.14")[2:]), values])


def _challenge_attribute(rng: random.Random, challenge: str) -> Node:
    tag = rng.choice(CHALLENGE_TAGS)
    value = challenge.encode("utf-16-be") if tag == 0x1E else challenge.encode()
    values = [Node(bytes([tag]), content=value) for _ in range(rng.choice((0, 1, 1, 1, 2)))]
    return Node(
        b"\x30", children=[Node(b"\x06", content=der_oid("1.2.840.113549.1.9.7")[2:]), Node(b"\x31", children=values)]
    )


def _key_id_attribute(rng: random.Random) -> Node:
    oid = rng.choice(("1.2.840.113549.1.9.16.2.37", "1.2.840.113549.1.9.16.2.54"))
    values = [Node(b"\x04", content=rng.randbytes(rng.choice((0, 8, 20)))) for _ in range(rng.choice((0, 1, 1, 2)))]
    return Node(b"\x30", children=[Node(b"\x06", content=der_oid(oid)[2:]), Node(b"\x31", children=values)])


def mutate_csr_info(rng: random.Random, info: Node, challenge: str) -> None:
    """One semantic mutation of a CertificationRequestInfo: version, subject, key or attributes."""
    fields = info.children if info.children is not None else []
    action = rng.randrange(10)
    if action == 0 and fields:
        fields[0].content, fields[0].children = interesting_integer(rng), None
    elif action in (1, 2, 3) and len(fields) > 1:
        mutate_name(rng, fields[1])
    elif action == 4 and len(fields) > 2:
        fields[2] = der_tree.parse(spki_der(rng.choice(list(key_pool().values()))))
        if rng.random() < 0.5:
            der_tree.mutate_tree(rng, fields[2])
    elif action in (5, 6, 7):
        attributes = next((f for f in fields[3:] if f.first == 0xA0), None)
        if attributes is None:
            attributes = Node(b"\xa0", children=[])
            fields.append(attributes)
        if attributes.children is None:
            attributes.children = []
        maker = rng.choice((_extension_request, _key_id_attribute, lambda r: _challenge_attribute(r, challenge)))
        attributes.children.append(maker(rng))
        if rng.random() < 0.3:
            der_tree.mutate_tree(rng, attributes)
    else:
        der_tree.mutate_tree(rng, info, rng.randrange(1, 3))


def mutated_csr(rng: random.Random, csr_der: bytes, key: SigningKey, challenge: str, digest: str = "sha256") -> bytes:
    """`csr_der` with its CertificationRequestInfo mutated one to three times, signed again by `key`."""
    info = _first_child(csr_der)
    for _ in range(rng.randrange(1, 4)):
        mutate_csr_info(rng, info, challenge)
    if rng.random() < 0.8:
        der_tree.sort_sets(info)
    return sign_tbs(rng, info.encode(), key, digest)


def _first_child(signed_der: bytes) -> Node:
    """The to-be-signed part of a signed X.509 object (a copy of the whole when it has none)."""
    root = der_tree.parse(signed_der)
    return root.children[0] if root.children else root


# --- certificates ----------------------------------------------------------------------------------

TIME_VALUES = (
    (0x17, b"491231235959Z"),
    (0x17, b"500101000000Z"),
    (0x17, b"991301000000Z"),
    (0x17, b"000229000000Z"),
    (0x17, b"2501010000Z"),
    (0x17, b"250101000000+0100"),
    (0x17, b"250101000000"),
    (0x18, b"99991231235959Z"),
    (0x18, b"00010101000000Z"),
    (0x18, b"20250101000000.123Z"),
    (0x18, b"20251301000000Z"),
    (0x18, b"2025010100Z"),
    (0x17, b""),
    (0x18, b"\xff\xfe"),
)


def _tbs_fields(tbs: Node) -> tuple[list[Node], int]:
    """The TBSCertificate's fields and the index of its serialNumber (1 after an explicit version)."""
    fields = tbs.children if tbs.children is not None else []
    return fields, 1 if fields and fields[0].first == 0xA0 else 0


def mutate_tbs_certificate(rng: random.Random, tbs: Node) -> None:
    """One semantic mutation: version, serial, issuer, validity, subject, key or extensions."""
    fields, at = _tbs_fields(tbs)
    action = rng.randrange(9)
    if action == 0 and at == 1 and fields[0].children:
        fields[0].children[0].content = rng.choice((b"\x00", b"\x01", b"\x02", b"\x03", b"\xff"))
    elif action == 1 and len(fields) > at:
        fields[at].content, fields[at].children = interesting_integer(rng), None
    elif action == 2 and len(fields) > at + 3 and fields[at + 3].children:  # validity
        tag, value = rng.choice(TIME_VALUES)
        target = rng.choice(fields[at + 3].children or [fields[at + 3]])
        target.tag, target.content, target.children = bytes([tag]), value, None
    elif action in (3, 4, 5) and len(fields) > at + 4:
        mutate_name(rng, fields[at + 4])
    elif action == 6 and len(fields) > at + 2:
        mutate_name(rng, fields[at + 2])
    elif action == 7 and len(fields) > at + 5:
        fields[at + 5] = der_tree.parse(spki_der(rng.choice(list(key_pool().values()))))
    else:
        der_tree.mutate_tree(rng, tbs, rng.randrange(1, 3))


def self_signed(key: SigningKey, cn: str, *, days: int = 365) -> x509.Certificate:
    """A self-signed certificate for CN=`cn` (random serial), valid from yesterday for `days`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def mutated_certificate(
    rng: random.Random, certificate_der: bytes, signer: SigningKey, digest: str = "sha256"
) -> bytes:
    """`certificate_der` with its TBSCertificate mutated one to three times, signed again by `signer`."""
    tbs = _first_child(certificate_der)
    for _ in range(rng.randrange(1, 4)):
        mutate_tbs_certificate(rng, tbs)
    if rng.random() < 0.8:
        der_tree.sort_sets(tbs)
    return sign_tbs(rng, tbs.encode(), signer, digest)


def issuer_and_serial(certificate_der: bytes) -> bytes:
    """IssuerAndSerialNumber of a certificate read leniently from its DER (for mangled ones too)."""
    root = der_tree.parse(certificate_der)
    try:
        tbs = root.children[0]  # type: ignore[index]
        fields, at = _tbs_fields(tbs)
        return der_sequence(fields[at + 2].encode(), fields[at].encode())
    except (TypeError, IndexError):
        return der_sequence(der_sequence(), b"\x02\x01\x01")
