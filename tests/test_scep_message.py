"""scep.message, scep.builder and scep.client_messages: client → server and server → client round
trips for every cipher, digest and key transport, the real-client vectors, and a table of hostile
inputs that each end in ScepDecodeError (HTTP 400) or ScepMessageError (signed FAILURE)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import algos, cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from scep.asn1 import (
    Digest,
    FailInfo,
    MessageType,
    PkiStatus,
    ScepAttributes,
    decode_signed_attributes,
    encode_signed_attributes,
    printable_string,
)
from scep.builder import RaIdentity, build_cert_rep, build_failure, degenerate_certs_only
from scep.client_messages import (
    CertRepError,
    build_pki_request,
    issuer_and_serial_der,
    issuer_and_subject_der,
    parse_cert_rep,
    read_certs_only,
    self_signed_signer,
    transaction_id_for,
)
from scep.envelope import DECRYPTION_FAILED, ContentCipher, KeyTransport, seal_envelope
from scep.message import PkiRequest, ScepDecodeError, ScepMessageError, parse_pki_message
from shared_ca.cms import CmsSigner, build_signed_data
from shared_ca.errors import ErrorKind, InvalidRequest
from shared_ca.keys import public_key_bytes
from tests.support import csr_der, ec_key, make_csr, subject
from tests.test_scep_envelope import counter_rng, issue, pki, replace_ciphertext, replace_encrypted_key

NONCE = bytes(range(16))
VECTORS = Path(__file__).resolve().parent / "vectors"


@functools.cache
def client() -> tuple[rsa.RSAPrivateKey, x509.Certificate, bytes]:
    """The client's RSA key, its transient self-signed signer certificate and a CSR (DER)."""
    key = pki().other_key
    return key, self_signed_signer(key, subject("SCEP SIGNER")), csr_der(make_csr(key, subject("device1")))


@functools.cache
def ra() -> RaIdentity:
    return RaIdentity.create(pki().ra_key, pki().ra_cert, [pki().ca_cert])


def request(
    message_type: MessageType = MessageType.PKCSReq,
    *,
    content: bytes | None = None,
    digest: Digest = Digest.SHA256,
    cipher: ContentCipher = ContentCipher.AES256,
    transport: KeyTransport = KeyTransport.RSA_PKCS1V15,
    nonce: bytes = NONCE,
    rsa_pss: bool = False,
    signer: tuple[Any, x509.Certificate] | None = None,
) -> bytes:
    key, cert, csr = client()
    signer_key, signer_cert = signer or (key, cert)
    return build_pki_request(
        message_type,
        content_der=csr if content is None else content,
        signer_cert=signer_cert,
        signer_key=signer_key,
        recipient_cert=pki().ra_cert,
        transaction_id="tid-1",
        sender_nonce=nonce,
        digest=digest,
        content_cipher=cipher,
        key_transport=transport,
        rsa_pss=rsa_pss,
    )


def parse(data: bytes, **kwargs: Any) -> PkiRequest:
    return parse_pki_message(data, ra_key=pki().ra_key, ra_cert=pki().ra_cert, **kwargs)


def signed(
    envelope: bytes | None, *, signer: CmsSigner | None = None, digest_of: bytes | None = None, **attrs: Any
) -> bytes:
    """A request with hand-made attributes: defaults PKCSReq, tid-1, NONCE; None drops one."""
    key, cert, _ = client()
    values = {"message_type": MessageType.PKCSReq, "transaction_id": "tid-1", "sender_nonce": NONCE, **attrs}
    digest = hashlib.sha256((envelope or b"") if digest_of is None else digest_of).digest()
    entries: list[dict[str, Any]] = [
        {"type": "content_type", "values": ["data"]},
        {"type": "message_digest", "values": [digest]},
    ]
    for name, value in values.items():
        if value is not None:
            wire = value if isinstance(value, bytes) else printable_string(str(value))
            entries.append({"type": name, "values": [wire]})
    attributes = ScepAttributes(entries).dump()
    material = signer or CmsSigner.create(key, cert)
    return build_signed_data(material, digest=Digest.SHA256, signed_attributes_der=attributes, content=envelope)


def envelope(plaintext: bytes | None = None, cipher: ContentCipher = ContentCipher.AES256, **kwargs: Any) -> bytes:
    return seal_envelope(client()[2] if plaintext is None else plaintext, pki().ra_cert, cipher, **kwargs)


def rewrite(der: bytes, mutate: Callable[[Any], None]) -> bytes:
    """Change a decoded SignedData in place and re-encode it."""
    info = cms.ContentInfo.load(der)
    mutate(info["content"])
    out: bytes = info.dump(force=True)
    return out


# --- round trips ---------------------------------------------------------------------------------

ROUND_TRIPS = [
    pytest.param(cipher, digest, transport, id=f"ok/{cipher.value}-{digest.value}-{transport.value}")
    for cipher in ContentCipher
    for digest in Digest
    for transport in KeyTransport
]


@pytest.mark.parametrize(("cipher", "digest", "transport"), ROUND_TRIPS)
def test_round_trip(cipher: ContentCipher, digest: Digest, transport: KeyTransport) -> None:
    key, cert, csr = client()
    parsed = parse(request(digest=digest, cipher=cipher, transport=transport))
    assert (parsed.message_type, parsed.transaction_id, parsed.sender_nonce) == (MessageType.PKCSReq, "tid-1", NONCE)
    assert (parsed.digest, parsed.content_cipher, parsed.key_transport) == (digest, cipher, transport)
    assert parsed.signer_certificate == cert and parsed.csr_der == csr and parsed.csr is not None
    assert parsed.signature_algorithm == "rsassa_pkcs1v15"
    reply = parsed.reply
    issued = issue("device1", key, pki().ca_key, pki().ca_cert.subject, serial=99)
    rep = build_cert_rep(
        ra=ra(),
        status=PkiStatus.SUCCESS,
        transaction_id=reply.transaction_id,
        recipient_nonce=reply.sender_nonce,
        sender_nonce=b"s" * 16,
        digest=reply.digest,
        issued=[issued],
        recipient_cert=reply.signer_certificate,
        content_cipher=reply.content_cipher,
        key_transport=transport,
    )
    got = parse_cert_rep(rep, ra_cert=pki().ra_cert, signer_key=key, signer_cert=cert)
    assert (got.status, got.transaction_id, got.recipient_nonce, got.sender_nonce) == (
        PkiStatus.SUCCESS,
        "tid-1",
        NONCE,
        b"s" * 16,
    )
    assert (got.certificates, got.digest, got.content_cipher, got.key_transport) == (
        (issued,),
        digest,
        cipher,
        transport,
    )


@pytest.mark.parametrize(
    ("message_type", "content", "field", "expected"),
    [
        pytest.param(MessageType.RenewalReq, None, "csr_der", None, id="ok/renewalreq"),
        pytest.param(MessageType.UpdateReq, None, "csr_der", None, id="ok/updatereq"),
        pytest.param(MessageType.GetCert, "ias", "issuer_and_serial", "ias", id="ok/getcert"),
        pytest.param(MessageType.GetCRL, "ias", "issuer_and_serial", "ias", id="ok/getcrl"),
        pytest.param(MessageType.CertPoll, "iasub", "issuer_and_subject", "iasub", id="ok/certpoll"),
    ],
)
def test_message_types(message_type: MessageType, content: str | None, field: str, expected: str | None) -> None:
    ca = pki().ca_cert
    contents = {
        "ias": issuer_and_serial_der(ca.subject, 0x1001),
        "iasub": issuer_and_subject_der(ca.subject, subject("device1")),
    }
    parsed = parse(request(message_type, content=contents.get(content or "")))
    assert parsed.message_type is message_type
    if field == "csr_der":
        assert parsed.csr_der == client()[2]
    elif expected == "ias":
        assert parsed.issuer_and_serial is not None
        assert (parsed.issuer_and_serial.issuer_der, parsed.issuer_and_serial.serial_number) == (
            ca.subject.public_bytes(),
            0x1001,
        )
    else:
        assert parsed.issuer_and_subject is not None
        assert parsed.issuer_and_subject.issuer_der == ca.subject.public_bytes()
        assert parsed.issuer_and_subject.subject_der == subject("device1").public_bytes()


def test_rsa_pss_and_ecdsa_signers() -> None:
    parsed = parse(request(rsa_pss=True, digest=Digest.SHA384))
    assert (parsed.signature_algorithm, parsed.digest) == ("rsassa_pss", Digest.SHA384)
    key = ec_key()
    ec_signer = self_signed_signer(key, subject("ec device"))
    parsed = parse(request(signer=(key, ec_signer), digest=Digest.SHA512))
    assert (parsed.signature_algorithm, parsed.signer_certificate) == ("ecdsa", ec_signer)


def test_signer_named_by_subject_key_identifier() -> None:
    """RFC 5652 §5.3: a SignerIdentifier may be the signer certificate's subjectKeyIdentifier."""
    key, cert = _issued_signer()
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    data = rewrite(request(signer=(key, cert)), _signer_field("sid", {"subject_key_identifier": ski}))
    assert parse(data).signer_certificate == cert


@pytest.mark.parametrize("size", [8, 16, 32, 64], ids=lambda n: f"ok/nonce-{n}")
def test_nonce_sizes(size: int) -> None:
    assert parse(request(nonce=b"n" * size)).sender_nonce == b"n" * size


@pytest.mark.parametrize("path", sorted(VECTORS.glob("*.der")), ids=lambda p: f"vector/{p.stem}")
def test_real_client_vectors(path: Path) -> None:
    """Messages captured from micromdm scepclient and certmonger (tests/vectors/README.md)."""
    ra_cert = x509.load_pem_x509_certificate((VECTORS / "ra.pem").read_bytes())
    ra_key = serialization.load_pem_private_key((VECTORS / "ra.key").read_bytes(), None)
    assert isinstance(ra_key, rsa.RSAPrivateKey)
    parsed = parse_pki_message(path.read_bytes(), ra_key=ra_key, ra_cert=ra_cert)
    scepclient = path.name.startswith("scepclient")
    expected = (Digest.SHA1, ContentCipher.DES) if scepclient else (Digest.SHA256, ContentCipher.AES256)
    assert (parsed.digest, parsed.content_cipher, parsed.key_transport) == (*expected, KeyTransport.RSA_PKCS1V15)
    assert len(parsed.sender_nonce) == 16
    assert (parsed.csr is None) == (parsed.message_type is MessageType.CertPoll)


# --- replies -------------------------------------------------------------------------------------


def _cert_rep(status: PkiStatus, **kwargs: Any) -> bytes:
    return build_cert_rep(
        ra=ra(),
        status=status,
        transaction_id="tid-1",
        recipient_nonce=NONCE,
        sender_nonce=b"s" * 16,
        digest=Digest.SHA256,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("status", "kwargs"),
    [
        pytest.param(PkiStatus.PENDING, {}, id="pending"),
        pytest.param(PkiStatus.FAILURE, {"fail_info": FailInfo.BAD_CERT_ID, "fail_info_text": "no such"}, id="failure"),
    ],
)
def test_replies_without_content(status: PkiStatus, kwargs: dict[str, Any]) -> None:
    key, cert, _ = client()
    rep = _cert_rep(status, signing_time=dt.datetime(2030, 1, 2, tzinfo=dt.UTC), **kwargs)
    signed_data = cms.ContentInfo.load(rep)["content"]
    assert signed_data["encap_content_info"]["content"].native is None
    assert tuple(c.chosen.dump() for c in signed_data["certificates"]) == ra().certificates_der
    got = parse_cert_rep(rep, ra_cert=pki().ra_cert, signer_key=key, signer_cert=cert)
    assert (got.status, got.fail_info, got.fail_info_text) == (
        status,
        kwargs.get("fail_info"),
        kwargs.get("fail_info_text"),
    )
    assert got.certificates == () and got.recipient_nonce == NONCE


def test_getcrl_reply_carries_the_crl() -> None:
    key, cert, _ = client()
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki().ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=1))
        .sign(pki().ca_key, hashes.SHA256())
    )
    crl_der = crl.public_bytes(serialization.Encoding.DER)
    rep = _cert_rep(PkiStatus.SUCCESS, crl_der=crl_der, recipient_cert=cert, content_cipher=ContentCipher.DES)
    assert parse_cert_rep(rep, ra_cert=pki().ra_cert, signer_key=key, signer_cert=cert).crl == crl_der


def test_reply_from_another_ra_is_refused() -> None:
    key, cert, _ = client()
    with pytest.raises(CertRepError):
        parse_cert_rep(_cert_rep(PkiStatus.PENDING), ra_cert=pki().other_cert, signer_key=key, signer_cert=cert)


def test_misused_builder_raises() -> None:
    with pytest.raises(ValueError, match="SUCCESS"):
        _cert_rep(PkiStatus.SUCCESS)
    with pytest.raises(ValueError, match="failInfo"):
        _cert_rep(PkiStatus.FAILURE)


def test_failure_for_an_error_echoes_the_request() -> None:
    key, cert, _ = client()
    with pytest.raises(ScepMessageError) as info:
        parse(request(MessageType.PKCSReq, content=b"not a CSR", digest=Digest.SHA512))
    error = info.value
    rep = build_failure(
        ra=ra(), reply=error.reply, fail_info=error.fail_info, text=error.public_message, sender_nonce=b"f" * 16
    )
    got = parse_cert_rep(rep, ra_cert=pki().ra_cert, signer_key=key, signer_cert=cert)
    assert (got.status, got.fail_info, got.transaction_id, got.recipient_nonce) == (
        PkiStatus.FAILURE,
        FailInfo.BAD_REQUEST,
        "tid-1",
        NONCE,
    )
    assert (got.digest, got.fail_info_text) == (Digest.SHA512, info.value.public_message)


def _openssl_verify(tmp_path: Path, der: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    path = tmp_path / "rep.der"
    path.write_bytes(der)
    command = ["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-in", str(path), "-out", "/dev/null"]
    return subprocess.run([*command, *extra], capture_output=True, check=False)


def test_openssl_verifies_our_cert_rep(tmp_path: Path) -> None:
    _key, cert, _ = client()
    success = _cert_rep(PkiStatus.SUCCESS, issued=[cert], recipient_cert=cert, content_cipher=ContentCipher.AES128)
    result = _openssl_verify(tmp_path, success)
    assert result.returncode == 0, result.stderr.decode()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    failure = _cert_rep(PkiStatus.FAILURE, fail_info=FailInfo.BAD_ALG, fail_info_text="MD5 is not allowed")
    result = _openssl_verify(tmp_path, failure, "-content", str(empty))  # no eContent: detached, empty
    assert result.returncode == 0, result.stderr.decode()


def test_degenerate_certs_only(tmp_path: Path) -> None:
    der = degenerate_certs_only([pki().ra_cert, pki().ca_cert])
    assert read_certs_only(der) == ([pki().ra_cert, pki().ca_cert], [])
    path = tmp_path / "cacert.p7"
    path.write_bytes(der)
    result = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", str(path), "-print_certs", "-noout"],
        capture_output=True,
        check=True,
    )
    assert result.stdout.decode().count("subject=") == 2


def test_scep_attribute_names_survive_asn1crypto_using_its_own() -> None:
    """asn1crypto maps names to OIDs once per class; the subclass must not inherit the parent's map."""
    cms.CMSAttribute({"type": "content_type", "values": ["data"]}).dump()
    der = encode_signed_attributes(
        content_digest=b"d" * 32, message_type=MessageType.GetCRL, transaction_id="t", sender_nonce=b"n"
    )
    decoded = decode_signed_attributes(der)
    assert (decoded.message_type, decoded.transaction_id, decoded.sender_nonce) == ("22", "t", b"n")


def test_client_helpers() -> None:
    key = pki().other_key
    assert transaction_id_for(key.public_key()) == hashlib.sha256(public_key_bytes(key.public_key())).hexdigest()
    assert self_signed_signer(key, subject("a")) == self_signed_signer(key, subject("a"))


# --- hostile input -------------------------------------------------------------------------------


def _two_signers(signed_data: Any) -> None:
    signed_data["signer_infos"] = [signed_data["signer_infos"][0], signed_data["signer_infos"][0]]


def _signer_field(name: str, value: Any) -> Callable[[Any], None]:
    def mutate(signed_data: Any) -> None:
        signed_data["signer_infos"][0][name] = value

    return mutate


def _tampered_attributes() -> bytes:
    """A signed attribute added after signing (transactionID and nonce unchanged)."""

    def mutate(signed_data: Any) -> None:
        attrs = signed_data["signer_infos"][0]["signed_attrs"]
        when = cms.Time({"utc_time": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)})
        attrs.append(cms.CMSAttribute({"type": "signing_time", "values": [when]}))

    return rewrite(request(), mutate)


def _bad_padding_vs_wrong_key() -> tuple[bytes, bytes]:
    """Two envelopes that fail differently inside: CBC padding, and a wrapped key that is not the key."""
    sealed = envelope(rng=counter_rng())
    replay = counter_rng()
    key, iv = replay(32), replay(16)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    bad_padding = replace_ciphertext(sealed, encryptor.update(b"\x00" * 15 + b"\x11") + encryptor.finalize())
    public_key = pki().ra_cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    wrong_key = replace_encrypted_key(sealed, public_key.encrypt(_a_key_that_unpads_badly(key, iv), padding.PKCS1v15()))
    return signed(bad_padding), signed(wrong_key)


def _a_key_that_unpads_badly(key: bytes, iv: bytes) -> bytes:
    """A wrong content key under which the sealed CSR's last block does not end in valid PKCS#7 padding.
    About one wrong key in 256 happens to unpad (the garbage then fails as a malformed CSR instead): the
    client's CSR differs from run to run, so the key is chosen against this run's ciphertext."""
    plaintext = client()[2]
    padded = plaintext + bytes([16 - len(plaintext) % 16]) * (16 - len(plaintext) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    for first in range(1, 256):
        candidate = bytes((first + i) % 256 for i in range(32))
        decryptor = Cipher(algorithms.AES(candidate), modes.CBC(ciphertext[-32:-16])).decryptor()
        last = decryptor.update(ciphertext[-16:]) + decryptor.finalize()
        pad = last[-1]
        if not 1 <= pad <= 16 or last[-pad:] != bytes([pad]) * pad:
            return candidate
    raise AssertionError("no wrong key found")


def _unsupported_cipher() -> bytes:
    sealed = envelope(cipher=ContentCipher.AES128)
    return signed(sealed.replace(bytes.fromhex("0609608648016503040102"), bytes.fromhex("0609608648016503040103")))


def _no_signer_certificate() -> bytes:
    key, cert, _ = client()
    material = CmsSigner.create(key, cert)
    return signed(envelope(), signer=CmsSigner(key, cert, material.issuer_and_serial_der, ()))


def _certificate_of_another_key(key: Any) -> Callable[[], bytes]:
    """Names the client's certificate, signs with another key."""
    return lambda: signed(envelope(), signer=CmsSigner.create(key, client()[1]))


_ALGORITHM = {"algorithm": "sha512_rsa"}
_PSS_WITHOUT_MGF1 = {
    "algorithm": "rsassa_pss",
    "parameters": {
        "hash_algorithm": {"algorithm": "sha256"},
        "mask_gen_algorithm": {"algorithm": "1.2.3.4", "parameters": algos.DigestAlgorithm({"algorithm": "sha256"})},
        "salt_length": 32,
    },
}


def _issued_signer() -> tuple[Any, x509.Certificate]:
    """The client's key with a CA-issued certificate that has a subjectKeyIdentifier."""
    return pki().other_key, pki().other_cert


_MESSAGE_ERRORS: dict[str, tuple[Callable[[], bytes], FailInfo, str | None]] = {
    "fail/message-digest-mismatch": (lambda: signed(envelope(), digest_of=b"other"), FailInfo.BAD_MESSAGE_CHECK, None),
    "fail/tampered-attributes": (_tampered_attributes, FailInfo.BAD_MESSAGE_CHECK, None),
    "fail/signer-cert-missing": (_no_signer_certificate, FailInfo.BAD_MESSAGE_CHECK, None),
    "fail/signed-by-another-key": (_certificate_of_another_key(pki().ra_key), FailInfo.BAD_MESSAGE_CHECK, None),
    "fail/ecdsa-for-rsa-cert": (_certificate_of_another_key(ec_key()), FailInfo.BAD_MESSAGE_CHECK, None),
    "fail/wrong-recipient": (
        lambda: signed(seal_envelope(client()[2], pki().other_cert, ContentCipher.AES128)),
        FailInfo.BAD_MESSAGE_CHECK,
        "the envelope is not addressed to this server",
    ),
    "fail/bad-padding": (lambda: _bad_padding_vs_wrong_key()[0], FailInfo.BAD_MESSAGE_CHECK, DECRYPTION_FAILED),
    "fail/wrong-content-key": (lambda: _bad_padding_vs_wrong_key()[1], FailInfo.BAD_MESSAGE_CHECK, DECRYPTION_FAILED),
    "fail/content-type-mismatch": (
        lambda: rewrite(request(), lambda sd: sd["encap_content_info"].__setitem__("content_type", "1.2.3.4")),
        FailInfo.BAD_MESSAGE_CHECK,
        None,
    ),
    "fail/unsupported-digest": (
        lambda: rewrite(request(), _signer_field("digest_algorithm", {"algorithm": "sha3_256"})),
        FailInfo.BAD_ALG,
        None,
    ),
    "fail/digest-signature-disagree": (
        lambda: rewrite(request(), _signer_field("signature_algorithm", _ALGORITHM)),
        FailInfo.BAD_ALG,
        None,
    ),
    "fail/dsa-signature": (
        lambda: rewrite(request(), _signer_field("signature_algorithm", {"algorithm": "sha256_dsa"})),
        FailInfo.BAD_ALG,
        None,
    ),
    "fail/unknown-signature-oid": (
        lambda: rewrite(request(), _signer_field("signature_algorithm", {"algorithm": "1.2.3.4"})),
        FailInfo.BAD_ALG,
        None,
    ),
    # RFC 4055 §3.1: the parameters MUST be present (asn1crypto's reader raised a TypeError here: HTTP 500).
    "fail/pss-without-parameters": (
        lambda: rewrite(request(rsa_pss=True), _signer_field("signature_algorithm", {"algorithm": "rsassa_pss"})),
        FailInfo.BAD_ALG,
        "the signature algorithm is not supported",
    ),
    "fail/pss-with-another-mask-generation": (
        lambda: rewrite(request(rsa_pss=True), _signer_field("signature_algorithm", _PSS_WITHOUT_MGF1)),
        FailInfo.BAD_ALG,
        "the signature algorithm is not supported",
    ),
    "fail/signer-named-by-another-key-identifier": (
        lambda: rewrite(request(signer=_issued_signer()), _signer_field("sid", {"subject_key_identifier": b"k" * 20})),
        FailInfo.BAD_MESSAGE_CHECK,
        "the signer certificate is missing",
    ),
    "fail/unsupported-cipher": (_unsupported_cipher, FailInfo.BAD_ALG, None),
    "fail/envelope-not-cms": (lambda: signed(b"not an envelope"), FailInfo.BAD_REQUEST, None),
    "fail/no-content": (lambda: signed(None), FailInfo.BAD_REQUEST, None),
    "fail/csr-garbage": (lambda: signed(envelope(b"not a CSR")), FailInfo.BAD_REQUEST, None),
    "fail/getcert-garbage": (
        lambda: signed(envelope(b"\x30\x00"), message_type=MessageType.GetCert),
        FailInfo.BAD_REQUEST,
        None,
    ),
    "fail/unknown-message-type": (lambda: signed(envelope(), message_type="99"), FailInfo.BAD_REQUEST, None),
    "fail/non-numeric-message-type": (lambda: signed(envelope(), message_type="PKCSReq"), FailInfo.BAD_REQUEST, None),
    "fail/certrep-sent-to-server": (lambda: signed(envelope(), message_type="3"), FailInfo.BAD_REQUEST, None),
}


@pytest.mark.parametrize(("build", "fail_info", "text"), list(_MESSAGE_ERRORS.values()), ids=list(_MESSAGE_ERRORS))
def test_signed_failures(build: Callable[[], bytes], fail_info: FailInfo, text: str | None) -> None:
    with pytest.raises(ScepMessageError) as info:
        parse(build())
    error = info.value
    assert error.fail_info is fail_info
    if text is not None:
        assert error.public_message == text
    assert error.reply.transaction_id == "tid-1" and error.reply.sender_nonce == NONCE
    assert (
        "asn1crypto" not in error.public_message
        and "Error" not in error.public_message
        and len(error.public_message) < 80
    )
    expected_digest = Digest.SHA256 if "digest" not in error.public_message else error.reply.digest
    assert error.reply.digest is expected_digest


def test_bad_padding_and_wrong_key_answer_identically() -> None:
    errors = []
    for der in _bad_padding_vs_wrong_key():
        with pytest.raises(ScepMessageError) as info:
            parse(der)
        errors.append((info.value.fail_info, info.value.public_message, info.value.detail, info.value.kind))
    assert (
        errors[0]
        == errors[1]
        == (FailInfo.BAD_MESSAGE_CHECK, DECRYPTION_FAILED, DECRYPTION_FAILED, ErrorKind.BAD_SIGNATURE)
    )


def _degenerate() -> bytes:
    return degenerate_certs_only([pki().ra_cert])


_DECODE_ERRORS: dict[str, Callable[[], bytes]] = {
    "fail/empty": lambda: b"",
    "fail/garbage": lambda: b"\x00\x01garbage" * 10,
    "fail/base64-not-decoded": lambda: b"MIIHdwYJKoZIhvcNAQcCoIIHaDCCB2QCAQExDzANBglghkgBZQMEAgEFADCC",
    "fail/pem-certificate": lambda: pki().ra_cert.public_bytes(serialization.Encoding.PEM),
    "fail/der-certificate": lambda: pki().ra_cert.public_bytes(serialization.Encoding.DER),
    "fail/enveloped-data-at-top": envelope,
    "fail/no-signer": _degenerate,
    "fail/two-signers": lambda: rewrite(request(), _two_signers),
    "fail/no-signed-attributes": lambda: rewrite(request(), _signer_field("signed_attrs", None)),
    "fail/transaction-id-missing": lambda: signed(envelope(), transaction_id=None),
    "fail/transaction-id-empty": lambda: signed(envelope(), transaction_id=""),
    "fail/sender-nonce-missing": lambda: signed(envelope(), sender_nonce=None),
    "fail/sender-nonce-empty": lambda: signed(envelope(), sender_nonce=b""),
    "fail/sender-nonce-65": lambda: signed(envelope(), sender_nonce=b"n" * 65),
    "fail/message-type-missing": lambda: signed(envelope(), message_type=None),
    "fail/unknown-type-bad-signature": lambda: signed(envelope(), message_type="99", digest_of=b"x"),
    "fail/unknown-type-bad-envelope": lambda: signed(b"junk", message_type="99"),
    "fail/trailing-bytes": lambda: request() + b"\x00",
    "fail/truncated": lambda: request()[:-1],
}


@pytest.mark.parametrize("build", list(_DECODE_ERRORS.values()), ids=list(_DECODE_ERRORS))
def test_decode_failures(build: Callable[[], bytes]) -> None:
    with pytest.raises(ScepDecodeError) as info:
        parse(build())
    assert isinstance(info.value, InvalidRequest) and info.value.http_status == 400


def test_size_cap() -> None:
    data = request()
    with pytest.raises(ScepDecodeError, match="too large"):
        parse(data, max_bytes=len(data) - 1)
    assert parse(data, max_bytes=len(data)).transaction_id == "tid-1"


def test_truncated_at_every_offset() -> None:
    data = request(cipher=ContentCipher.DES, digest=Digest.SHA1)
    for end in range(len(data)):
        with pytest.raises(ScepDecodeError):
            parse(data[:end])


def test_flipped_bytes_never_escape_the_two_errors() -> None:
    """A byte changed anywhere: a 400 or a signed FAILURE, never another exception."""
    data = request(cipher=ContentCipher.TRIPLE_DES)
    outcomes = set()
    for offset in range(0, len(data), 3):
        mutated = data[:offset] + bytes([data[offset] ^ 0x41]) + data[offset + 1 :]
        try:
            parse(mutated)
            outcomes.add("parsed")
        except ScepDecodeError:
            outcomes.add("decode")
        except ScepMessageError as exc:
            outcomes.add(exc.fail_info.rfc_name)
    assert {"decode", "badMessageCheck"} <= outcomes


def test_flipped_cert_rep_bytes_are_refused_or_harmless() -> None:
    key, cert, _ = client()
    data = _cert_rep(PkiStatus.SUCCESS, issued=[cert], recipient_cert=cert, content_cipher=ContentCipher.AES128)
    original = parse_cert_rep(data, ra_cert=pki().ra_cert, signer_key=key, signer_cert=cert)
    refused = 0
    for offset in range(0, len(data), 5):
        mutated = data[:offset] + bytes([data[offset] ^ 0x41]) + data[offset + 1 :]
        try:
            got = parse_cert_rep(mutated, ra_cert=pki().ra_cert, signer_key=key, signer_cert=cert)
        except CertRepError:
            refused += 1
        else:  # the flip hit an unsigned part (the certificates set, the version): same reply
            assert got == original
    assert refused > len(data) // 5 // 2


# -- envelopes for another of our RA keys, or an earlier certificate of one ---------------------------


def _sealed_to(cert: x509.Certificate) -> bytes:
    return signed(seal_envelope(client()[2], cert, ContentCipher.AES128))


def test_an_envelope_for_a_replaced_cas_ra_is_opened_with_its_key() -> None:
    parsed = parse(_sealed_to(pki().other_cert), also_for=[(pki().other_key, pki().other_cert)])
    assert parsed.recipient == pki().other_cert and parsed.csr is not None
    assert parse(request()).recipient == pki().ra_cert


def test_an_envelope_for_an_earlier_certificate_of_the_ra_key_is_opened() -> None:
    earlier = issue("RA before renewal", pki().ra_key, pki().ca_key, pki().ca_cert.subject, serial=0x4242)
    looked_up: list[tuple[bytes, int]] = []

    def lookup(issuer: bytes, serial: int) -> x509.Certificate | None:
        looked_up.append((issuer, serial))
        return earlier if serial == 0x4242 else None

    parsed = parse(_sealed_to(earlier), earlier=lookup)
    assert parsed.recipient == pki().ra_cert  # answered as the RA it is now
    assert looked_up == [(pki().ca_cert.subject.public_bytes(), 0x4242)]


@pytest.mark.parametrize(
    "found",
    [pytest.param(None, id="fail/unknown-certificate"), pytest.param("other", id="fail/certificate-of-another-key")],
)
def test_an_envelope_for_a_certificate_not_of_our_keys_is_refused(found: str | None) -> None:
    named = issue("Not ours", pki().other_key, pki().ca_key, pki().ca_cert.subject, serial=0x77)
    with pytest.raises(ScepMessageError) as refused:
        parse(_sealed_to(named), earlier=lambda _issuer, _serial: named if found else None)
    assert refused.value.fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert refused.value.public_message == "the envelope is not addressed to this server"
