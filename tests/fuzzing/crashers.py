"""The inputs the fuzzer found, rebuilt on purpose: for the unit tests of each fix and the corpus.

Each builder takes the key to sign with and returns DER; `scep_request` and `est_request` wrap
them into the request cases that crashed the gateway (see tests/vectors/fuzz/README.md).
"""

from __future__ import annotations

import base64
import hashlib
import random

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from scep.envelope import ContentCipher, KeyTransport, seal_envelope
from shared_ca.cms import der_integer, der_octet_string, der_oid, der_sequence, der_tlv
from tests.fuzzing import cms_forge, der_tree, forge
from tests.fuzzing.gateway_env import CHALLENGE, FuzzCase
from tests.fuzzing.scep_target import sign_pki_message, signed_attributes

_RNG_SEED = 20261206  # only the RSA-PSS choice and nonces draw from it: the bytes are the same every time


def _rng() -> random.Random:
    return random.Random(_RNG_SEED)


def _resigned(der: bytes, key: forge.SigningKey, change: bytes, into: bytes) -> bytes:
    """A signed X.509 object whose to-be-signed part has the element `change` replaced by the bytes
    `into` (every enclosing length recomputed), signed again by `key`."""
    root = der_tree.parse(der)
    assert root.children, "not a signed object"
    tbs = root.children[0]
    for node in tbs.walk():
        for index, child in enumerate(node.children or ()):
            if child.encode() == change:
                assert node.children is not None
                node.children[index] = der_tree.Node(b"", content=into)  # headless: encodes as `into`
                return _sign(tbs.encode(), key)
    raise AssertionError(f"{change.hex()} is not an element of the object")


def _sign(tbs: bytes, key: forge.SigningKey) -> bytes:
    rng = _rng()
    rng.random = lambda: 1.0  # type: ignore[method-assign]  # never RSASSA-PSS: PKCS#1 v1.5 is deterministic
    return forge.sign_tbs(rng, tbs, key, "sha256")


def csr(key: forge.SigningKey, cn: str = "device1", challenge: str | None = CHALLENGE, **extensions: bool) -> bytes:
    """A valid CSR for CN=`cn` (extensions: `san=True` adds a dNSName, `unknown=True` an extension 1.2.3.4)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if challenge is not None:
        builder = builder.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    if extensions.get("san"):
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{cn}.example")]), False)
    if extensions.get("unknown"):
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"), False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def csr_cn_tag(key: forge.SigningKey, tag: int, cn: str = "device1") -> bytes:
    """The security review's case: the CN's UTF8String tag (0x0c) changed, e.g. to 0x31 (a SET)."""
    value = cn.encode()
    return _resigned(csr(key, cn), key, b"\x0c" + bytes([len(value)]) + value, bytes([tag, len(value)]) + value)


def csr_version(key: forge.SigningKey, version: int) -> bytes:
    """A CSR whose version is not v1 (0): cryptography raises InvalidVersion, not ValueError."""
    return _resigned(csr(key), key, b"\x02\x01\x00", b"\x02\x01" + bytes([version]))


def csr_duplicate_extension(key: forge.SigningKey) -> bytes:
    """A CSR whose extensionRequest carries extension 1.2.3.4 twice (cryptography: DuplicateExtension)."""
    extension = der_sequence(der_oid("1.2.3.4"), der_octet_string(b"\x05\x00"))
    return _resigned(csr(key, challenge=None, unknown=True), key, extension, extension + extension)


def csr_empty_rdn(key: forge.SigningKey) -> bytes:
    """A CSR whose subject has an empty RDN before the CN (cryptography: 'cannot be empty' on .subject)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device1")]).public_bytes()
    return _resigned(csr(key), key, name, der_sequence(b"\x31\x00" + name[2:]))


def csr_broken_san(key: forge.SigningKey) -> bytes:
    """A CSR whose subjectAltName dNSName has a length that overruns its SEQUENCE."""
    return _resigned(csr(key, challenge=None, san=True), key, b"\x82\x0fdevice1.example", b"\x82\x10device1.example")


def csr_bit_string_cn(key: forge.SigningKey, cn: str = "device1") -> bytes:
    """A CSR whose CN is a well-formed BIT STRING: cryptography raises TypeError (not ValueError) on
    .subject, as only x500UniqueIdentifier may be one."""
    value = cn.encode()
    return _resigned(csr(key, cn), key, der_tlv(0x0C, value), der_tlv(0x03, b"\x00" + value))


def csr_unknown_key_algorithm(key: forge.SigningKey) -> bytes:
    """A P-256 CSR whose key's algorithm OID is 2.5.29.17 (subjectAltName): UnsupportedAlgorithm on
    .public_key(). The signature still verifies with the real key, for what checks it."""
    return _resigned(csr(key), key, der_oid("1.2.840.10045.2.1"), der_oid("2.5.29.17"))


def certificate_cn_tag(key: rsa.RSAPrivateKey, tag: int, cn: str = "device1") -> bytes:
    """A self-signed certificate whose subject CN has the string tag `tag`."""
    value = cn.encode()
    der = forge.self_signed(key, cn).public_bytes(Encoding.DER)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]).public_bytes()
    old, new = b"\x0c" + bytes([len(value)]) + value, bytes([tag, len(value)]) + value
    root = der_tree.parse(der)
    assert root.children and root.children[0].children
    fields = root.children[0].children
    subject = 5 if fields[0].first == 0xA0 else 4
    assert fields[subject].encode() == name
    fields[subject] = der_tree.parse(name.replace(old, new))
    return _sign(root.children[0].encode(), key)


def pki_message(
    content: bytes,
    key: rsa.RSAPrivateKey,
    signer_der: bytes,
    ra: x509.Certificate,
    *,
    digest: str = "sha256",
    message_type: str = "19",
    transaction_id: str = "fuzz-regression",
) -> bytes:
    """A pkiMessage carrying `content` to the RA `ra`, signed by `key` (certificate `signer_der`)."""
    rng = _rng()
    envelope = seal_envelope(content, ra, ContentCipher.AES256, KeyTransport.RSA_PKCS1V15, rng=rng.randbytes)
    # The transactionID as a UTF8String when it is not PrintableString text (as the fuzzer sent it).
    tag = 0x13 if all(" " <= char <= "~" for char in transaction_id) else 0x0C
    nonce = rng.randbytes(16)
    attributes = signed_attributes(rng, envelope, digest, message_type, transaction_id, nonce, transaction_tag=tag)
    rng.random = lambda: 1.0  # type: ignore[method-assign]
    rng.randrange = lambda *args: 2  # type: ignore[method-assign]  # rsaEncryption, as certmonger signs
    return sign_pki_message(
        rng, envelope=envelope, attributes=attributes, key=key, signer_der=signer_der, digest=digest
    )


def scep_case(message: bytes, path: str = "/scep", what: str = "") -> FuzzCase:
    """A POST PKIOperation carrying `message` to `path`."""
    return FuzzCase(
        "scep",
        "POST",
        path,
        "operation=PKIOperation",
        message,
        {"Content-Type": "application/x-pki-message"},
        note=what,
    )


def est_case(
    operation: str,
    body: bytes,
    what: str = "",
    *,
    headers: dict[str, str] | None = None,
    client_cert: bytes | None = None,
) -> FuzzCase:
    """An EST POST over HTTPS, Content-Type application/pkcs10 unless `headers` say otherwise."""
    path = f"/.well-known/est/{operation}"
    sent = {"Content-Type": "application/pkcs10", **(headers or {})}
    return FuzzCase("est", "POST", path, body=body, headers=sent, https=True, client_cert=client_cert, note=what)


def full_cmc(csr_der: bytes, key: forge.SigningKey) -> bytes:
    """A Full PKI Request with one tcr (body part 1), signed by `key` named by its subjectKeyIdentifier."""
    pki_data = der_sequence(
        der_sequence(), der_sequence(der_tlv(0xA0, der_integer(1) + csr_der)), der_sequence(), der_sequence()
    )
    attributes = cms_forge.attribute("1.2.840.113549.1.9.3", der_oid("1.3.6.1.5.5.7.12.2")) + cms_forge.attribute(
        "1.2.840.113549.1.9.4", der_octet_string(hashlib.sha256(pki_data).digest())
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    rng = _rng()
    rng.randrange = lambda *args: 2  # type: ignore[method-assign]
    return cms_forge.signed_data(
        rng,
        content_type="1.3.6.1.5.5.7.12.2",
        content=pki_data,
        attributes=attributes,
        key=key,
        sid=der_tlv(0x80, ski),
        certificates=(),
        digest="sha256",
    )


def b64(der: bytes) -> bytes:
    """Base64 of `der` (the EST body form)."""
    return base64.b64encode(der)
