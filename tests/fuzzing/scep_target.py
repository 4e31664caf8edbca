"""SCEP PKIOperation inputs (POST and GET), from the captured vectors and from messages built here.

Layers, each chosen with its own weight by `ScepTarget.generate`:

- `valid`: a seed request as it is, with a new transactionID and any digest and cipher (the baseline
  that keeps issuance, idempotency and the MD5/DES refusals exercised);
- `vector-raw`: a captured pkiMessage with raw byte or DER-structure mutations (the outer parser);
- `transport`: a valid message through GET `message=` or a base64 POST body, the base64/URL layer mutated;
- `attrs`: the signed attributes mutated (types, values, duplicates), then signed again;
- `envelope`: the EnvelopedData mutated (algorithms, recipients, lengths), then signed again;
- `csr`: the CSR mutated inside (subject string tags, versions, attributes, extensions, keys), signed
  again by its key, enveloped to the RA and the pkiMessage signed again: it reaches policy and events;
- `signer`: the signer certificate mutated (subject, validity, key, serial), self-signed again or
  signed by the test CA, so renewal and identity code reads it;
- `vector-rewrap`: the captured CSR itself mutated and re-wrapped with the captured client's key;
- `other`: CertPoll, GetCert and GetCRL with mutated contents.

Digest (MD5 included), content cipher (DES included), key transport and signature form vary.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import random

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from scep.envelope import ContentCipher, KeyTransport, seal_envelope
from scep.message import parse_pki_message
from shared_ca.cms import der_integer, der_octet_string, der_oid, der_sequence, der_tlv
from tests.fuzzing import cms_forge, der_tree, forge
from tests.fuzzing.gateway_env import CHALLENGE, VECTORS, FuzzCase, FuzzGateway
from tests.fuzzing.mutate import INTERESTING_TEXTS, base64_forms, mutate_bytes, query_value

VECTOR_NAMES = (
    "scepclient-pkcsreq",
    "scepclient-renewalreq",
    "certmonger-pkcsreq",
    "certmonger-resubmit",
    "certmonger-rekey",
    "certmonger-rekey-norenewal",
    "certmonger-getcertinitial",
)
VECTOR_KEYS = {"scepclient": "scepclient-client.key", "certmonger": "certmonger-device2.key"}
PATHS = (
    "/scep",
    "/scep",
    "/cgi-bin/pkiclient.exe",
    "/certsrv/mscep/mscep.dll/pkiclient.exe",
    "/scep/strict",
    "/scep/manual",
    "/scep/default/x/pkiclient.exe",
)
DIGESTS = cms_forge.DIGESTS
MESSAGE_TYPES = ("19", "19", "19", "17", "20", "21", "22", "3", "", " 19", "019", "abc", "\x00")
SCEP_OID = "2.16.840.1.113733.1.9."
LAYERS = (
    ("valid", 6),
    ("csr", 30),
    ("signer", 12),
    ("attrs", 12),
    ("envelope", 8),
    ("vector-raw", 12),
    ("transport", 10),
    ("vector-rewrap", 10),
    ("other", 6),
)


@dataclasses.dataclass(frozen=True)
class Seed:
    """A valid request to start from: the CSR (or other content), and who signs it."""

    name: str
    message_type: str
    content: bytes
    key: forge.SigningKey
    signer_der: bytes
    transaction_id: str
    challenge: str = CHALLENGE


def _attribute(oid: str, value: bytes) -> bytes:
    return der_sequence(der_oid(oid), der_tlv(0x31, value))


def signed_attributes(
    rng: random.Random,
    content: bytes,
    digest: str,
    message_type: str,
    transaction_id: str,
    nonce: bytes,
    *,
    mutate: bool = False,
    transaction_tag: int = 0x13,
) -> bytes:
    """The contents of the SET OF signed attributes of a request; `mutate` varies their values and
    string types (mostly keeping the structure readable) or, one time in three, the structure."""
    tag = transaction_tag
    if mutate and rng.random() < 0.5:
        tag = rng.choice(der_tree.STRING_TAGS)
        transaction_id = rng.choice((transaction_id, *INTERESTING_TEXTS))
    encode = "utf-16-be" if tag == 0x1E else "utf-8"
    entries = [
        _attribute("1.2.840.113549.1.9.3", der_oid("1.2.840.113549.1.7.1")),
        _attribute("1.2.840.113549.1.9.4", der_octet_string(hashlib.new(digest, content).digest())),
        _attribute(SCEP_OID + "2", der_tlv(0x13, message_type.encode("utf-8"))),
        _attribute(SCEP_OID + "7", der_tlv(tag, transaction_id.encode(encode))),
        _attribute(SCEP_OID + "5", der_octet_string(nonce)),
    ]
    if mutate and rng.random() < 0.5:  # attributes a client does not send, or sends oddly
        extra = rng.choice(
            (
                _attribute(SCEP_OID + "6", der_octet_string(rng.randbytes(16))),
                _attribute(SCEP_OID + "3", der_tlv(0x13, rng.choice((b"0", b"2", b"3", b"x")))),
                _attribute(SCEP_OID + "4", der_tlv(0x13, rng.choice((b"0", b"4", b"99")))),
                _attribute("1.2.840.113549.1.9.5", der_tlv(rng.choice((0x17, 0x18)), rng.choice(forge.TIME_VALUES)[1])),
                _attribute("1.3.6.1.5.5.7.24.1", der_tlv(0x0C, rng.choice(INTERESTING_TEXTS).encode())),
                _attribute("1.2.3.4", der_tlv(0x05, b"")),
            )
        )
        entries.insert(rng.randrange(len(entries) + 1), extra)
    if not mutate or rng.random() < 0.67:
        return b"".join(entries)
    root = der_tree.parse(der_tlv(0x31, b"".join(entries)))
    children = root.children or []
    choice = rng.randrange(3)
    if choice == 0 and children:  # a second attribute of a type already present
        children.append(der_tree.parse(rng.choice(entries)))
    elif choice == 1 and children:
        children.remove(rng.choice(children))
    else:
        der_tree.mutate_tree(rng, root)
    return root.body()


def sign_pki_message(
    rng: random.Random,
    *,
    envelope: bytes,
    attributes: bytes,
    key: forge.SigningKey,
    signer_der: bytes,
    digest: str,
    extra_certs: tuple[bytes, ...] = (),
) -> bytes:
    """ContentInfo(SignedData) over `envelope`, signed by `key` over the SET OF `attributes` (as a client would)."""
    return cms_forge.signed_data(
        rng,
        content_type=cms_forge.DATA_OID,
        content=envelope,
        attributes=attributes,
        key=key,
        sid=forge.issuer_and_serial(signer_der),
        certificates=(signer_der, *extra_certs),
        digest=digest,
    )


class ScepTarget:
    """Makes one SCEP request case at a time (see the module docstring for the layers)."""

    name = "scep"

    def __init__(self, env: FuzzGateway) -> None:
        self.env = env
        self.vectors = {name: (VECTORS / f"{name}.der").read_bytes() for name in VECTOR_NAMES}
        self.seeds = self._seeds(env)
        self.cache = {
            seed.name: self._build(random.Random(0), seed, "sha256", ContentCipher.AES256) for seed in self.seeds
        }

    def _seeds(self, env: FuzzGateway) -> list[Seed]:
        keys = forge.key_pool()
        seeds = []
        for key_name in ("rsa2048-a", "rsa2048-b", "rsa1024", "rsa3-exponent", "p256"):
            key = keys[key_name]
            cn = f"scep-{key_name}"
            signer = forge.self_signed(key, cn).public_bytes(Encoding.DER)
            csr = forge.base_csr(
                key, cn, CHALLENGE, sans=[x509.DNSName(f"{cn}.example")] if key_name[-1] == "b" else None
            )
            seeds.append(Seed(f"pkcsreq-{key_name}", "19", csr, key, signer, hashlib.sha256(csr).hexdigest()[:40]))
        renewing = env.issued[0]
        csr = forge.base_csr(renewing.key, "fuzz-device-0", None)
        seeds.append(Seed("renewalreq", "17", csr, renewing.key, renewing.der, "renewal-0"))
        seeds.append(Seed("pkcsreq-by-certificate", "19", csr, renewing.key, renewing.der, "resubmit-0"))
        for name in VECTOR_NAMES:  # the captured requests, opened: their real CSRs and signers
            request = parse_pki_message(self.vectors[name], ra_key=env.gateway.ra_key, ra_cert=env.ra)
            pem = (VECTORS / VECTOR_KEYS[name.split("-")[0]]).read_bytes()
            vector_key = load_pem_private_key(pem, None)
            assert isinstance(vector_key, rsa.RSAPrivateKey)
            content = request.csr_der or _content_of_vector(request)
            signer = request.signer_certificate.public_bytes(Encoding.DER)
            seeds.append(
                Seed(f"vector:{name}", request.message_type.value, content, vector_key, signer, request.transaction_id)
            )
        ca_name = env.ca.subject.public_bytes()
        serial = env.issued[0].certificate.serial_number
        signer_seed = seeds[0]
        for message_type, content in (
            (
                "20",
                der_sequence(
                    ca_name, x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "scep-rsa2048-a")]).public_bytes()
                ),
            ),
            ("21", der_sequence(ca_name, der_integer(serial))),
            ("22", der_sequence(ca_name, der_integer(serial))),
        ):
            seeds.append(
                dataclasses.replace(
                    signer_seed, name=f"type-{message_type}", message_type=message_type, content=content
                )
            )
        return seeds

    def _build(
        self,
        rng: random.Random,
        seed: Seed,
        digest: str,
        cipher: ContentCipher,
        *,
        content: bytes | None = None,
        signer_der: bytes | None = None,
        transport: KeyTransport = KeyTransport.RSA_PKCS1V15,
        mutate_attributes: bool = False,
        mutate_envelope: bool = False,
        message_type: str | None = None,
        transaction_id: str | None = None,
    ) -> bytes:
        envelope = seal_envelope(
            content if content is not None else seed.content, self.env.ra, cipher, transport, rng=rng.randbytes
        )
        if mutate_envelope:
            envelope = der_tree.mutate_der(rng, envelope, rng.randrange(1, 3))
        nonce = rng.randbytes(16) if rng.random() < 0.92 else rng.choice((b"", rng.randbytes(65), rng.randbytes(1)))
        attributes = signed_attributes(
            rng,
            envelope,
            digest,
            message_type if message_type is not None else seed.message_type,
            transaction_id if transaction_id is not None else seed.transaction_id,
            nonce,
            mutate=mutate_attributes,
        )
        extra = (self.env.ca.public_bytes(Encoding.DER),) if rng.random() < 0.2 else ()
        return sign_pki_message(
            rng,
            envelope=envelope,
            attributes=attributes,
            key=seed.key,
            signer_der=signer_der or seed.signer_der,
            digest=digest,
            extra_certs=extra,
        )

    def generate(self, rng: random.Random) -> FuzzCase:
        """One SCEP case: a layer, a digest, a cipher and a key transport, then that layer mutated."""
        layer = rng.choices([name for name, _ in LAYERS], [weight for _, weight in LAYERS])[0]
        digest = rng.choice(DIGESTS)
        cipher = rng.choice(list(ContentCipher))
        transport = rng.choice(
            (KeyTransport.RSA_PKCS1V15, KeyTransport.RSA_PKCS1V15, KeyTransport.RSA_OAEP, KeyTransport.RSA_OAEP_SHA256)
        )
        new_transaction = f"fz-{rng.getrandbits(48):x}" if rng.random() < 0.8 else None
        enrolment = [s for s in self.seeds if s.message_type in ("19", "17") and not s.name.startswith("vector:")]
        note = f"layer={layer} digest={digest} cipher={cipher.value} transport={transport.value}"
        if layer == "vector-raw":
            name = rng.choice(VECTOR_NAMES)
            der = self.vectors[name]
            der = der_tree.mutate_der(rng, der, rng.randrange(1, 3)) if rng.random() < 0.5 else mutate_bytes(rng, der)
            return self._case(rng, der, f"{note} vector={name}", transport_layer=False)
        if layer == "transport":
            seed = rng.choice(self.seeds)
            return self._case(rng, self.cache[seed.name], f"{note} seed={seed.name}", transport_layer=True)
        if layer == "other":
            seed = rng.choice([s for s in self.seeds if s.name.startswith("type-")])
            inner = der_tree.mutate_der(rng, seed.content, rng.randrange(1, 3)) if rng.random() < 0.7 else seed.content
            der = self._build(
                rng, seed, digest, cipher, content=inner, transport=transport, transaction_id=new_transaction
            )
            return self._case(rng, der, f"{note} seed={seed.name}")
        if layer == "vector-rewrap":
            seed = rng.choice(
                [s for s in self.seeds if s.name.startswith("vector:") and s.message_type in ("19", "17")]
            )
            inner = forge.mutated_csr(rng, seed.content, seed.key, CHALLENGE, rng.choice(DIGESTS))
            der = self._build(
                rng, seed, digest, cipher, content=inner, transport=transport, transaction_id=new_transaction
            )
            return self._case(rng, der, f"{note} seed={seed.name} csr-mutated")
        seed = rng.choice(enrolment)
        content: bytes | None = None
        signer: bytes | None = None
        if layer == "csr":
            csr_key = seed.key if rng.random() < 0.9 else rng.choice(list(forge.key_pool().values()))
            content = forge.mutated_csr(rng, seed.content, csr_key, CHALLENGE, rng.choice(DIGESTS))
        elif layer == "signer":
            signer_key = self.env.ca_key if rng.random() < 0.4 else seed.key
            assert isinstance(signer_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
            signer = forge.mutated_certificate(rng, seed.signer_der, signer_key, rng.choice(DIGESTS))
            if rng.random() < 0.3:
                content = forge.mutated_csr(rng, seed.content, seed.key, CHALLENGE)
        der = self._build(
            rng,
            seed,
            digest,
            cipher,
            content=content,
            signer_der=signer,
            transport=transport,
            mutate_attributes=layer == "attrs",
            mutate_envelope=layer == "envelope",
            message_type=rng.choice(MESSAGE_TYPES) if layer == "attrs" and rng.random() < 0.3 else None,
            transaction_id=new_transaction,
        )
        return self._case(rng, der, f"{note} seed={seed.name}")

    def _case(self, rng: random.Random, der: bytes, note: str, *, transport_layer: bool = False) -> FuzzCase:
        path = rng.choice(PATHS)
        operation = rng.choice(("PKIOperation", "PKIOperation", "PKIOperation", "pkioperation", " PKIOperation"))
        if rng.random() < 0.3 or (transport_layer and rng.random() < 0.6):  # GET message=<base64>
            text = base64_forms(rng, der) if transport_layer else _plain_base64(der)
            query = f"operation={operation}&message={query_value(rng, text)}"
            return FuzzCase(self.name, "GET", path, query, note=note + " GET")
        body = der
        if transport_layer:
            body = base64_forms(rng, der).encode("utf-8")
        headers = {"Content-Type": rng.choice(("application/x-pki-message", "application/octet-stream", "text/plain"))}
        return FuzzCase(self.name, "POST", path, f"operation={operation}", body, headers, note=note + " POST")


def _plain_base64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


def _content_of_vector(request: object) -> bytes:
    """The IssuerAndSubject of the captured GetCertInitial (CertPoll), re-encoded."""
    subject = getattr(request, "issuer_and_subject", None)
    if subject is None:
        return b"\x30\x00"
    return der_sequence(subject.issuer_der, subject.subject_der)
