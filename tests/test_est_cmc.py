"""est.cmc: the Full CMC codec for EST /fullcmc (RFC 7030 §4.3, RFC 5272).

Requests are built here, with the CMC declarations of est.cmc_asn1 and a small signer of our own,
so every malformed case can be made; one real request (Windows CertEnroll, tests/vectors/est/cmc)
checks we read what a real client sends. Responses are checked with `openssl cms -verify` as well
as with our own parser.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import random
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms, core
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from est import cmc_asn1 as asn1
from est.cmc import (
    FULL_CMC_REQUEST,
    FULL_CMC_RESPONSE,
    CmcAlgorithmError,
    CmcDecodeError,
    CmcFailInfo,
    CmcFailure,
    CmcReplyContext,
    CmcRequest,
    CmcSignatureError,
    CmcStatus,
    CmcStatusInfo,
    build_failure_response,
    build_pki_response,
    parse_full_cmc,
    parse_pki_response,
    response_signer,
)
from est.cmc_pki_data import MAX_BODY_PARTS, MAX_CONTROL_VALUES, BodyPartKind, UnsupportedBodyPart
from est.cmc_signed import MAX_CERTIFICATES
from est.wire import EstWireError, decode_request_body
from shared_ca.csr import load_csr
from shared_ca.errors import CAError, ErrorKind, InvalidRequest

VECTORS = Path(__file__).parent / "vectors" / "est" / "cmc"
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
NONCE = b"client-nonce-0123456789"
IDENTIFICATION_OID = "1.3.6.1.5.5.7.7.2"  # id-cmc-identification: a control we do not implement

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# --- keys, certificates, requests ----------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _certificate(
    subject: str, key: Key, issuer: x509.Certificate | None, issuer_key: Key, serial: int
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclasses.dataclass(frozen=True)
class Pki:
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    ra_key: rsa.RSAPrivateKey
    ra: x509.Certificate
    device_key: rsa.RSAPrivateKey
    device: x509.Certificate  # an existing certificate: signs revocations and renewals
    new_key: rsa.RSAPrivateKey  # the key a first enrollment asks to certify
    ec_key: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("CMC Test CA", ca_key, None, ca_key, 1)
    ra_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    device_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Pki(
        ca_key=ca_key,
        ca=ca,
        ra_key=ra_key,
        ra=_certificate("CMC Test RA", ra_key, ca, ca_key, 2),
        device_key=device_key,
        device=_certificate("device1", device_key, ca, ca_key, 0x1001),
        new_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_key=ec.generate_private_key(ec.SECP384R1()),
    )


def _csr(key: Key, cn: str = "device1", ski: bytes | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(cn))
    if ski is not None:
        builder = builder.add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def _ski(key: Key) -> bytes:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest


# --- PKIData and the SignedData around it (the client side, for these tests only) ---------------


def tcr(part: int, csr_der: bytes) -> Any:
    value = {"body_part_id": part, "certification_request": asn1_csr.CertificationRequest.load(csr_der)}
    return asn1.TaggedRequest(name="tcr", value=value)


def control(part: int, attr_type: str, *values: Any) -> Any:
    return asn1.TaggedAttribute({"body_part_id": part, "attr_type": attr_type, "attr_values": list(values)})


def standard_controls(first: int = 10) -> list[Any]:
    """transactionId 7 and a senderNonce, as RFC 5272 §6.6 clients send them."""
    return [
        control(first, "transaction_id", core.Integer(7)),
        control(first + 1, "sender_nonce", core.OctetString(NONCE)),
    ]


def pki_data(
    controls: Sequence[Any] = (),
    requests: Sequence[Any] = (),
    cms_items: Sequence[Any] = (),
    others: Sequence[Any] = (),
) -> bytes:
    value = {
        "control_sequence": list(controls),
        "req_sequence": list(requests),
        "cms_sequence": list(cms_items),
        "other_msg_sequence": list(others),
    }
    der: bytes = asn1.PKIData(value).dump()
    return der


def sid_ski(identifier: bytes) -> Any:
    return cms.SignerIdentifier(name="subject_key_identifier", value=identifier)


def sid_ias(cert: x509.Certificate) -> Any:
    value = {"issuer": asn1_x509.Name.load(cert.issuer.public_bytes()), "serial_number": cert.serial_number}
    return cms.SignerIdentifier(name="issuer_and_serial_number", value=value)


_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def sign(
    content: bytes,
    key: Key,
    sid: Any,
    *,
    certificates: Sequence[x509.Certificate] = (),
    digest: str = "sha256",
    signature_algorithm: dict[str, Any] | None = None,
    pss: bool = False,
    attributes: list[dict[str, Any]] | None = None,
    signed_attrs: bool = True,
    e_content_type: str = asn1.PKI_DATA_OID,
    signers: int = 1,
    corrupt: bool = False,
) -> bytes:
    """A CMC request: ContentInfo(SignedData) over `content`, as a client builds it."""
    if attributes is None:
        message_digest = hashlib.new(digest, content).digest()
        attributes = [
            {"type": "content_type", "values": [e_content_type]},
            {"type": "message_digest", "values": [message_digest]},
        ]
    signed = cms.CMSAttributes(attributes) if signed_attrs else None
    data = signed.dump() if signed is not None else content
    hash_algorithm = _HASH.get(digest, hashes.SHA256)()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(data, ec.ECDSA(hash_algorithm))
        algorithm: dict[str, Any] = {"algorithm": f"{digest}_ecdsa"}
    elif pss:
        salt = hash_algorithm.digest_size
        signature = key.sign(data, padding.PSS(padding.MGF1(hash_algorithm), salt), hash_algorithm)
        hash_id = {"algorithm": digest}
        parameters = {"hash_algorithm": hash_id, "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": hash_id}}
        algorithm = {"algorithm": "rsassa_pss", "parameters": {**parameters, "salt_length": salt}}
    else:
        signature = key.sign(data, padding.PKCS1v15(), hash_algorithm)
        algorithm = {"algorithm": "rsassa_pkcs1v15"}  # rsaEncryption, as Windows sends it
    if corrupt:
        signature = signature[:-1] + bytes([signature[-1] ^ 1])
    signer_info: dict[str, Any] = {
        "version": "v3" if sid.name == "subject_key_identifier" else "v1",
        "sid": sid,
        "digest_algorithm": {"algorithm": digest},
        "signature_algorithm": signature_algorithm or algorithm,
        "signature": signature,
    }
    if signed is not None:
        signer_info["signed_attrs"] = signed
    signed_data = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [{"algorithm": digest}],
            "encap_content_info": {"content_type": e_content_type, "content": content},
            "certificates": [asn1_x509.Certificate.load(c.public_bytes(Encoding.DER)) for c in certificates] or None,
            "signer_infos": [signer_info] * signers,
        }
    )
    der: bytes = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
    return der


def enrollment(pki: Pki, **options: Any) -> bytes:
    """A first enrollment: one tcr (body part 1), signed by the key being certified (sid = its SKI)."""
    content = pki_data(standard_controls(), [tcr(1, _csr(pki.new_key))])
    return sign(content, pki.new_key, sid_ski(_ski(pki.new_key)), **options)


def revoke_value(pki: Pki, reason: str = "key_compromise") -> Any:
    return asn1.RevokeRequest(
        {
            "issuer_name": asn1_x509.Name.load(pki.ca.subject.public_bytes()),
            "serial_number": pki.device.serial_number,
            "reason": reason,
            "invalidity_date": NOW,
            "passphrase": b"revocation secret",
            "comment": "laptop stolen",
        }
    )


def revocation(pki: Pki, value: Any = None, **options: Any) -> bytes:
    """A revokeRequest (body part 3) signed by the certificate being revoked (issuerAndSerialNumber)."""
    content = pki_data([*standard_controls(), control(3, "revoke_request", value or revoke_value(pki))])
    return sign(content, pki.device_key, sid_ias(pki.device), certificates=[pki.device, pki.ca], **options)


def status_v2(part: int) -> Any:
    """A CMCStatusInfoV2 success for one body part."""
    body_list = [asn1.BodyPartReference(name="body_part_id", value=part)]
    return asn1.CMCStatusInfoV2({"cmc_status": "success", "body_list": body_list})


def openssl_verify(der: bytes, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    message, content = tmp_path / "message.der", tmp_path / "content.der"
    message.write_bytes(der)
    command = ["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-binary", "-in", str(message)]
    result = subprocess.run([*command, "-out", str(content)], capture_output=True, check=False)
    result.stdout = content.read_bytes() if result.returncode == 0 else b""
    return result


def econtent(der: bytes) -> bytes:
    content: bytes = cms.ContentInfo.load(der)["content"]["encap_content_info"]["content"].native
    return content


# --- parsing: what verifies ----------------------------------------------------------------------


def test_first_enrollment_signed_by_the_key_being_certified(pki: Pki) -> None:
    request = parse_full_cmc(enrollment(pki))
    assert [r.body_part_id for r in request.certification_requests] == [1]
    assert request.certification_requests[0].der == _csr(pki.new_key)  # byte for byte (PKCS#1 v1.5 is deterministic)
    assert load_csr(request.certification_requests[0].der).public_key() == pki.new_key.public_key()
    assert request.signer_certificate is None
    assert request.signer_request_id == 1
    assert (request.transaction_id, request.sender_nonce) == (7, NONCE)
    assert request.reply == CmcReplyContext(7, NONCE, (1,))
    assert (request.digest, request.signature_algorithm) == ("sha256", "rsassa_pkcs1v15")
    assert request.unsupported == ()
    assert [c.oid for c in request.controls] == [asn1.TRANSACTION_ID_OID, asn1.SENDER_NONCE_OID]
    assert request.controls[1].values == (core.OctetString(NONCE).dump(),)


def test_a_base64_body_decodes_through_the_est_wire_layer(pki: Pki) -> None:
    body = base64.encodebytes(enrollment(pki))
    assert parse_full_cmc(decode_request_body(body, FULL_CMC_REQUEST)).signer_request_id == 1


def _ec_enrollment(pki: Pki) -> bytes:
    content = pki_data(standard_controls(), [tcr(1, _csr(pki.ec_key))])
    return sign(content, pki.ec_key, sid_ski(_ski(pki.ec_key)), digest="sha384")


def _ski_from_extension(pki: Pki) -> bytes:
    chosen = b"\x42" * 20  # RFC 5272 lets the request carry its own key identifier
    content = pki_data(requests=[tcr(1, _csr(pki.new_key, ski=chosen))])
    return sign(content, pki.new_key, sid_ski(chosen))


def _renewal_by_certificate(pki: Pki) -> bytes:
    content = pki_data(standard_controls(), [tcr(1, _csr(pki.new_key))])
    return sign(content, pki.device_key, sid_ias(pki.device), certificates=[pki.device])


def _certificate_by_ski(pki: Pki) -> bytes:
    content = pki_data(standard_controls(), [tcr(1, _csr(pki.new_key))])
    return sign(content, pki.device_key, sid_ski(_ski(pki.device_key)), certificates=[pki.ca, pki.device])


VERIFYING: list[tuple[str, Callable[[Pki], bytes], dict[str, Any]]] = [
    ("rsa-pkcs1-sha256", enrollment, {"digest": "sha256", "signature_algorithm": "rsassa_pkcs1v15"}),
    ("rsa-pkcs1-sha1", lambda p: enrollment(p, digest="sha1"), {"digest": "sha1"}),
    ("rsa-pkcs1-sha512", lambda p: enrollment(p, digest="sha512"), {"digest": "sha512"}),
    ("rsa-pss-sha256", lambda p: enrollment(p, pss=True), {"signature_algorithm": "rsassa_pss"}),
    ("ecdsa-sha384", _ec_enrollment, {"digest": "sha384", "signature_algorithm": "ecdsa"}),
    ("no-signed-attributes", lambda p: enrollment(p, signed_attrs=False), {"signer_request_id": 1}),
    ("ski-from-request-extension", _ski_from_extension, {"signer_request_id": 1}),
    ("renewal-signed-by-certificate", _renewal_by_certificate, {"signer_request_id": None}),
    ("certificate-named-by-ski", _certificate_by_ski, {"signer_request_id": None}),
]


@pytest.mark.parametrize(("build", "expected"), [v[1:] for v in VERIFYING], ids=[f"ok/{v[0]}" for v in VERIFYING])
def test_signers_and_algorithms_that_verify(pki: Pki, build: Callable[[Pki], bytes], expected: dict[str, Any]) -> None:
    request = parse_full_cmc(build(pki))
    for name, value in expected.items():
        assert getattr(request, name) == value, name
    if request.signer_request_id is None:
        assert request.signer_certificate == pki.device


def test_revoke_request_signed_by_a_certificate(pki: Pki, tmp_path: Path) -> None:
    der = revocation(pki)
    assert openssl_verify(der, tmp_path).returncode == 0  # our test client builds valid CMS
    request = parse_full_cmc(der)
    assert request.certification_requests == ()
    assert request.signer_certificate == pki.device
    (revoke,) = request.revoke_requests
    assert revoke.body_part_id == 3
    assert revoke.issuer == pki.ca.subject
    assert revoke.issuer_der == pki.ca.subject.public_bytes()
    assert revoke.serial_number == 0x1001
    assert revoke.reason is x509.ReasonFlags.key_compromise
    assert revoke.invalidity_date == NOW
    assert revoke.comment == "laptop stolen"
    assert revoke.passphrase == b"revocation secret"
    assert "revocation secret" not in repr(revoke)
    assert request.reply.body_part_ids == (3,)


REASONS = [
    ("unspecified", x509.ReasonFlags.unspecified),
    ("key_compromise", x509.ReasonFlags.key_compromise),
    ("ca_compromise", x509.ReasonFlags.ca_compromise),
    ("affiliation_changed", x509.ReasonFlags.affiliation_changed),
    ("superseded", x509.ReasonFlags.superseded),
    ("cessation_of_operation", x509.ReasonFlags.cessation_of_operation),
    ("certificate_hold", x509.ReasonFlags.certificate_hold),
    ("remove_from_crl", x509.ReasonFlags.remove_from_crl),
    ("privilege_withdrawn", x509.ReasonFlags.privilege_withdrawn),
    ("aa_compromise", x509.ReasonFlags.aa_compromise),
]


@pytest.mark.parametrize(("name", "flag"), REASONS, ids=[f"reason/{r[0]}" for r in REASONS])
def test_every_crl_reason_maps_to_a_reason_flag(pki: Pki, name: str, flag: x509.ReasonFlags) -> None:
    assert parse_full_cmc(revocation(pki, revoke_value(pki, name))).revoke_requests[0].reason is flag


def test_unsupported_body_parts_are_listed_not_refused(pki: Pki) -> None:
    crm = asn1.TaggedRequest.load(bytes.fromhex("a10730050201053000"))  # CertReqMsg, certReqId 5
    orm = asn1.TaggedRequest(
        name="orm", value={"body_part_id": 6, "request_message_type": "1.2.3.4", "value": core.Null()}
    )
    content = pki_data(
        [
            *standard_controls(),
            control(3, IDENTIFICATION_OID, core.UTF8String("device1")),
            control(4, "recipient_nonce", core.OctetString(b"server nonce")),  # understood, ignored
            control(9, "status_info_v2", status_v2(1)),
        ],
        [tcr(1, _csr(pki.new_key)), crm, orm],
        [asn1.TaggedContentInfo({"body_part_id": 7, "content_info": {"content_type": "data", "content": b"x"}})],
        [asn1.OtherMsg({"body_part_id": 8, "other_msg_type": "1.2.3.5", "value": core.Null()})],
    )
    request = parse_full_cmc(sign(content, pki.new_key, sid_ski(_ski(pki.new_key))))
    assert request.unsupported == (
        UnsupportedBodyPart(3, BodyPartKind.CONTROL, IDENTIFICATION_OID),
        UnsupportedBodyPart(9, BodyPartKind.CONTROL, asn1.STATUS_INFO_V2_OID),
        UnsupportedBodyPart(5, BodyPartKind.CRM),
        UnsupportedBodyPart(6, BodyPartKind.ORM, "1.2.3.4"),
        UnsupportedBodyPart(7, BodyPartKind.CMS, "1.2.840.113549.1.7.1"),
        UnsupportedBodyPart(8, BodyPartKind.OTHER_MSG, "1.2.3.5"),
    )
    assert [r.body_part_id for r in request.certification_requests] == [1]
    assert request.reply.body_part_ids == (1, 5, 6)
    assert request.controls[2].values == (core.UTF8String("device1").dump(),)


def test_two_pkcs10_requests_are_both_returned_for_the_service_to_judge(pki: Pki) -> None:
    content = pki_data(requests=[tcr(1, _csr(pki.ec_key, "other")), tcr(2, _csr(pki.new_key))])
    request = parse_full_cmc(sign(content, pki.new_key, sid_ski(_ski(pki.new_key))))
    assert [r.body_part_id for r in request.certification_requests] == [1, 2]
    assert request.signer_request_id == 2  # the request whose key signed
    assert request.reply.body_part_ids == (1, 2)


def test_windows_certenroll_vector() -> None:
    """A real CMC request from Windows CertEnroll (see tests/vectors/README.md): SHA-1, rsaEncryption,
    signed by the key being certified, named by the SKI extension of its own PKCS#10."""
    der = (VECTORS / "windows-certenroll-pkidata.der").read_bytes()
    assert hashlib.sha256(der).hexdigest() == "962b09c3596f7dc958c521b13cdb16914b928527333bd6074ef1065ef42bfbcf"
    request = parse_full_cmc(der)
    assert request.signer_certificate is None
    assert (request.signer_request_id, request.digest, request.signature_algorithm) == (1, "sha1", "rsassa_pkcs1v15")
    assert request.unsupported == (UnsupportedBodyPart(2, BodyPartKind.CONTROL, "1.3.6.1.4.1.311.10.10.1"),)
    assert (request.transaction_id, request.sender_nonce) == (None, None)
    csr = load_csr(request.certification_requests[0].der)  # our shared CSR check accepts it
    ski = csr.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ski.hex() == "c5b6b249fcf20c6138d599400e2c5860436faf32"


# --- parsing: what is undecodable (HTTP 400) -----------------------------------------------------


def _body_parts(count: int) -> bytes:
    return pki_data([control(i, IDENTIFICATION_OID, core.UTF8String("x")) for i in range(1, count + 1)])


def _signed_by_new_key(pki: Pki, content: bytes) -> bytes:
    return sign(content, pki.new_key, sid_ski(_ski(pki.new_key)))


def _revoke_with_reason_7(pki: Pki) -> bytes:
    value = asn1.RevokeRequest.load(revoke_value(pki, "unspecified").dump().replace(b"\x0a\x01\x00", b"\x0a\x01\x07"))
    return revocation(pki, value)


def _certificate_with_serial_0(pki: Pki) -> bytes:
    cert = asn1_x509.Certificate.load(pki.device.public_bytes(Encoding.DER))
    cert["tbs_certificate"]["serial_number"] = 0  # RFC 5280 §4.1.2.2: positive; cryptography warns
    content = pki_data(standard_controls(), [tcr(1, _csr(pki.new_key))])
    signed = cms.ContentInfo.load(sign(content, pki.new_key, sid_ski(_ski(pki.new_key))))
    signed["content"]["certificates"] = [cert]
    der: bytes = signed.dump(force=True)
    return der


UNDECODABLE: list[tuple[str, Callable[[Pki], bytes]]] = [
    ("empty", lambda p: b""),
    ("not-der", lambda p: b"hello, CMC"),
    ("truncated", lambda p: enrollment(p)[:-20]),
    ("trailing-bytes", lambda p: enrollment(p) + b"\x00\x00"),
    ("content-info-not-signed-data", lambda p: cms.ContentInfo({"content_type": "data", "content": b"x"}).dump()),
    ("econtent-type-data", lambda p: sign(pki_data(), p.new_key, sid_ski(b"x"), e_content_type="1.2.840.113549.1.7.1")),
    (
        "econtent-type-pki-response",
        lambda p: sign(pki_data(), p.new_key, sid_ski(b"x"), e_content_type=asn1.PKI_RESPONSE_OID),
    ),
    ("pkidata-not-der", lambda p: _signed_by_new_key(p, b"\x30\x03\x02\x01\x05")),
    ("two-signers", lambda p: enrollment(p, signers=2)),
    ("body-part-id-0", lambda p: _signed_by_new_key(p, pki_data(requests=[tcr(0, _csr(p.new_key))]))),
    ("body-part-id-too-big", lambda p: _signed_by_new_key(p, pki_data(requests=[tcr(2**32, _csr(p.new_key))]))),
    (
        "body-part-id-twice",
        lambda p: _signed_by_new_key(p, pki_data(standard_controls(first=1), [tcr(1, _csr(p.new_key))])),
    ),
    (
        "transaction-id-twice",
        lambda p: _signed_by_new_key(
            p, pki_data([*standard_controls(1), control(3, "transaction_id", core.Integer(8))])
        ),
    ),
    (
        "sender-nonce-two-values",
        lambda p: _signed_by_new_key(
            p, pki_data([control(1, "sender_nonce", core.OctetString(b"a"), core.OctetString(b"b"))])
        ),
    ),
    ("control-without-values", lambda p: _signed_by_new_key(p, pki_data([control(1, IDENTIFICATION_OID)]))),
    (
        "tcr-not-a-csr",
        lambda p: _signed_by_new_key(p, pki_data(requests=[asn1.TaggedRequest.load(b"\xa0\x05\x02\x01\x01\x05\x00")])),
    ),
    (
        "unknown-request-choice",
        lambda p: _signed_by_new_key(p, bytes.fromhex("300d 3000 3005 a303020101 3000 3000")),
    ),
    ("crl-reason-7", _revoke_with_reason_7),
    ("too-many-body-parts", lambda p: _signed_by_new_key(p, _body_parts(MAX_BODY_PARTS + 1))),
    (
        "too-many-control-values",
        lambda p: _signed_by_new_key(
            p,
            pki_data(
                [control(1, IDENTIFICATION_OID, *[core.UTF8String(str(i)) for i in range(MAX_CONTROL_VALUES + 1)])]
            ),
        ),
    ),
    ("too-many-certificates", lambda p: enrollment(p, certificates=[p.device] * (MAX_CERTIFICATES + 1))),
    ("certificate-serial-0", _certificate_with_serial_0),
]


@pytest.mark.parametrize("build", [u[1] for u in UNDECODABLE], ids=[f"400/{u[0]}" for u in UNDECODABLE])
def test_undecodable_requests_are_400(pki: Pki, build: Callable[[Pki], bytes]) -> None:
    with pytest.raises(CmcDecodeError) as caught:
        parse_full_cmc(build(pki))
    assert isinstance(caught.value, EstWireError) and isinstance(caught.value, InvalidRequest)
    assert caught.value.kind is ErrorKind.BAD_INPUT
    assert caught.value.http_status == 400


def test_the_bounds_themselves_are_accepted(pki: Pki) -> None:
    full = sign(_body_parts(MAX_BODY_PARTS), pki.device_key, sid_ias(pki.device), certificates=[pki.device])
    assert len(parse_full_cmc(full).unsupported) == MAX_BODY_PARTS
    assert parse_full_cmc(enrollment(pki, certificates=[pki.device] * MAX_CERTIFICATES)).signer_request_id == 1


def test_a_message_over_the_size_limit_is_refused_before_decoding(pki: Pki) -> None:
    der = enrollment(pki)
    with pytest.raises(CmcDecodeError, match="too large"):
        parse_full_cmc(der, max_bytes=len(der) - 1)
    with pytest.raises(CmcDecodeError, match="too large"):
        parse_full_cmc(b"\x30" * (64 * 1024 + 1))


# --- parsing: readable but refused (a CMC failure response, or 400) ------------------------------


def _attrs(content_type: str, digest_of: bytes | None) -> list[dict[str, Any]]:
    attributes: list[dict[str, Any]] = [{"type": "content_type", "values": [content_type]}]
    if digest_of is not None:
        attributes.append({"type": "message_digest", "values": [hashlib.sha256(digest_of).digest()]})
    return attributes


def _enrollment_content(pki: Pki) -> bytes:
    return pki_data(standard_controls(), [tcr(1, _csr(pki.new_key))])


REFUSED: list[tuple[str, Callable[[Pki], bytes], type[CmcFailure], CmcFailInfo]] = [
    ("bad-signature", lambda p: enrollment(p, corrupt=True), CmcSignatureError, CmcFailInfo.BAD_MESSAGE_CHECK),
    (
        "signed-by-another-key",
        lambda p: sign(_enrollment_content(p), p.device_key, sid_ski(_ski(p.new_key))),
        CmcSignatureError,
        CmcFailInfo.BAD_MESSAGE_CHECK,
    ),
    (
        "unknown-ski",
        lambda p: sign(_enrollment_content(p), p.new_key, sid_ski(b"\x00" * 20)),
        CmcSignatureError,
        CmcFailInfo.BAD_MESSAGE_CHECK,
    ),
    (
        "signer-certificate-missing",
        lambda p: sign(_enrollment_content(p), p.device_key, sid_ias(p.device), certificates=[p.ca]),
        CmcSignatureError,
        CmcFailInfo.BAD_MESSAGE_CHECK,
    ),
    (
        "content-type-attribute-data",
        lambda p: enrollment(p, attributes=_attrs("data", _enrollment_content(p))),
        CmcSignatureError,
        CmcFailInfo.BAD_MESSAGE_CHECK,
    ),
    (
        "message-digest-of-other-content",
        lambda p: enrollment(p, attributes=_attrs(asn1.PKI_DATA_OID, b"other")),
        CmcSignatureError,
        CmcFailInfo.BAD_MESSAGE_CHECK,
    ),
    (
        "message-digest-missing",
        lambda p: enrollment(p, attributes=_attrs(asn1.PKI_DATA_OID, None)),
        CmcSignatureError,
        CmcFailInfo.BAD_MESSAGE_CHECK,
    ),
    (
        "rsa-algorithm-ec-key",
        lambda p: sign(
            _enrollment_content(p),
            p.new_key,
            sid_ski(_ski(p.new_key)),
            signature_algorithm={"algorithm": "sha256_ecdsa"},
        ),
        CmcSignatureError,
        CmcFailInfo.BAD_MESSAGE_CHECK,
    ),
    (
        "md5",
        lambda p: enrollment(p, digest="md5", signature_algorithm={"algorithm": "md5_rsa"}),
        CmcAlgorithmError,
        CmcFailInfo.BAD_ALG,
    ),
    (
        "signature-and-digest-disagree",
        lambda p: enrollment(p, signature_algorithm={"algorithm": "sha1_rsa"}),
        CmcAlgorithmError,
        CmcFailInfo.BAD_ALG,
    ),
    (
        "dsa",
        lambda p: enrollment(p, signature_algorithm={"algorithm": "sha256_dsa"}),
        CmcAlgorithmError,
        CmcFailInfo.BAD_ALG,
    ),
]


@pytest.mark.parametrize(
    ("build", "error", "fail_info"), [r[1:] for r in REFUSED], ids=[f"fail/{r[0]}" for r in REFUSED]
)
def test_refused_requests_carry_their_cmc_failure(
    pki: Pki, build: Callable[[Pki], bytes], error: type[CmcFailure], fail_info: CmcFailInfo
) -> None:
    with pytest.raises(error) as caught:
        parse_full_cmc(build(pki))
    failure = caught.value
    assert isinstance(failure, CAError)
    assert failure.fail_info is fail_info
    expected_kind = ErrorKind.BAD_ALGORITHM if fail_info is CmcFailInfo.BAD_ALG else ErrorKind.BAD_SIGNATURE
    assert failure.kind is expected_kind
    assert failure.reply == CmcReplyContext(7, NONCE, (1,))  # what the failure response echoes
    assert failure.public_message and failure.public_message in str(failure)


def test_a_refused_request_is_answered_with_a_signed_failure(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(CmcSignatureError) as caught:
        parse_full_cmc(enrollment(pki, corrupt=True))
    failure = caught.value
    signer = response_signer(pki.ra_key, pki.ra, [pki.ca])
    der = build_failure_response(
        signer, reply=failure.reply, fail_info=failure.fail_info, text=failure.public_message, sender_nonce=b"s" * 16
    )
    assert openssl_verify(der, tmp_path).returncode == 0
    response = parse_pki_response(der)
    assert response.statuses == (
        CmcStatusInfo(CmcStatus.FAILED, (1,), "the CMC signature does not verify", CmcFailInfo.BAD_MESSAGE_CHECK),
    )
    assert (response.transaction_id, response.recipient_nonce, response.sender_nonce) == (7, NONCE, b"s" * 16)
    assert response.certificates == (pki.ra, pki.ca)


def test_a_failure_with_nothing_to_echo_answers_the_pkidata_itself(pki: Pki) -> None:
    signer = response_signer(pki.ra_key, pki.ra)
    der = build_failure_response(signer, reply=CmcReplyContext(), fail_info=CmcFailInfo.BAD_REQUEST, text=None)
    response = parse_pki_response(der)
    assert response.statuses == (CmcStatusInfo(CmcStatus.FAILED, (0,), None, CmcFailInfo.BAD_REQUEST),)
    assert (response.transaction_id, response.recipient_nonce, response.sender_nonce) == (None, None, None)
    controls = asn1.PKIResponse.load(econtent(der))["control_sequence"]
    assert [c["attr_type"].dotted for c in controls] == [asn1.STATUS_INFO_V2_OID]


# --- responses -----------------------------------------------------------------------------------


def test_success_response_verifies_with_openssl_and_our_parser(pki: Pki, tmp_path: Path) -> None:
    request = parse_full_cmc(enrollment(pki))
    signer = response_signer(pki.ra_key, pki.ra, [pki.ca])
    issued = pki.device  # stands in for the certificate issued to the request
    der = build_pki_response(
        signer,
        statuses=[CmcStatusInfo(CmcStatus.SUCCESS, request.reply.body_part_ids)],
        certificates=[issued, pki.ca],
        reply=request.reply,
        sender_nonce=b"server-nonce-16b",
        signing_time=NOW,
    )
    verified = openssl_verify(der, tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == econtent(der)
    response = parse_pki_response(der)
    assert response.statuses == (CmcStatusInfo(CmcStatus.SUCCESS, (1,)),)
    assert response.certificates == (issued, pki.ca, pki.ra)  # issued first; no certificate twice
    assert response.signer_certificate == pki.ra
    assert (response.transaction_id, response.recipient_nonce, response.sender_nonce) == (7, NONCE, b"server-nonce-16b")

    info = cms.ContentInfo.load(der)
    signed_data = info["content"]
    assert signed_data["version"].native == "v3"  # RFC 5652 §5.1: eContentType is not id-data
    assert signed_data["encap_content_info"]["content_type"].dotted == asn1.PKI_RESPONSE_OID
    attributes = {a["type"].native: a["values"][0].native for a in signed_data["signer_infos"][0]["signed_attrs"]}
    assert attributes["content_type"] == asn1.PKI_RESPONSE_OID
    assert attributes["message_digest"] == hashlib.sha256(econtent(der)).digest()
    assert attributes["signing_time"] == NOW


def test_response_controls_and_status_info_v2_on_the_wire(pki: Pki) -> None:
    signer = response_signer(pki.ra_key, pki.ra)
    statuses = [
        CmcStatusInfo(CmcStatus.SUCCESS, (1,)),
        CmcStatusInfo(CmcStatus.FAILED, (3, 4), "revocation refused", CmcFailInfo.BAD_CERT_ID),
        CmcStatusInfo(CmcStatus.NO_SUPPORT, (5,), "CRMF is not supported"),
    ]
    der = build_pki_response(signer, statuses=statuses, reply=CmcReplyContext(2**40, b"n", (1,)), sender_nonce=b"s")
    body = asn1.PKIResponse.load(econtent(der), strict=True)
    controls = body["control_sequence"]
    assert [c["body_part_id"].native for c in controls] == [1, 2, 3, 4, 5, 6]
    assert [c["attr_type"].dotted for c in controls] == [
        asn1.STATUS_INFO_V2_OID,
        asn1.STATUS_INFO_V2_OID,
        asn1.STATUS_INFO_V2_OID,
        asn1.TRANSACTION_ID_OID,
        asn1.RECIPIENT_NONCE_OID,
        asn1.SENDER_NONCE_OID,
    ]
    failed = controls[1]["attr_values"][0]
    assert failed["cmc_status"].native == "failed"
    assert [r.chosen.native for r in failed["body_list"]] == [3, 4]
    assert failed["status_string"].native == "revocation refused"
    assert (failed["other_info"].name, failed["other_info"].chosen.native) == ("fail_info", "bad_cert_id")
    assert controls[3]["attr_values"][0].native == 2**40
    assert (len(body["cms_sequence"]), len(body["other_msg_sequence"])) == (0, 0)
    assert parse_pki_response(der).statuses == tuple(statuses)


def test_an_ec_signer_signs_with_ecdsa_sha256(pki: Pki, tmp_path: Path) -> None:
    signer = response_signer(pki.ca_key, pki.ca)
    der = build_pki_response(signer, statuses=[CmcStatusInfo(CmcStatus.SUCCESS, (1,))], certificates=[pki.device])
    assert openssl_verify(der, tmp_path).returncode == 0
    assert parse_pki_response(der).signer_certificate == pki.ca
    algorithm = cms.ContentInfo.load(der)["content"]["signer_infos"][0]["signature_algorithm"]
    assert algorithm["algorithm"].native == "sha256_ecdsa"


def test_an_rsa_response_without_signing_time_is_deterministic(pki: Pki) -> None:
    signer = response_signer(pki.ra_key, pki.ra, [pki.ca])
    statuses = [CmcStatusInfo(CmcStatus.SUCCESS, (1,))]
    assert build_pki_response(signer, statuses=statuses) == build_pki_response(signer, statuses=statuses)


def test_a_tampered_response_does_not_verify(pki: Pki, tmp_path: Path) -> None:
    signer = response_signer(pki.ra_key, pki.ra)
    der = build_pki_response(signer, statuses=[CmcStatusInfo(CmcStatus.SUCCESS, (1,))])
    tampered = der.replace(
        status_v2(1).dump(),
        status_v2(2).dump(),
    )
    assert tampered != der
    assert openssl_verify(tampered, tmp_path).returncode != 0
    with pytest.raises(CmcSignatureError, match="messageDigest"):
        parse_pki_response(tampered)


def test_requests_and_responses_are_not_mistaken_for_each_other(pki: Pki) -> None:
    response = build_pki_response(
        response_signer(pki.ra_key, pki.ra), statuses=[CmcStatusInfo(CmcStatus.SUCCESS, (1,))]
    )
    with pytest.raises(CmcDecodeError, match="PKIData"):
        parse_full_cmc(response)
    with pytest.raises(CmcDecodeError, match="PKIResponse"):
        parse_pki_response(revocation(pki))


STATUS_ERRORS: list[tuple[str, Callable[[], object]]] = [
    ("no-body-parts", lambda: CmcStatusInfo(CmcStatus.SUCCESS, ())),
    ("body-part-out-of-range", lambda: CmcStatusInfo(CmcStatus.SUCCESS, (2**32,))),
    ("fail-info-on-success", lambda: CmcStatusInfo(CmcStatus.SUCCESS, (1,), None, CmcFailInfo.BAD_REQUEST)),
    ("pending-without-pend-info", lambda: CmcStatusInfo(CmcStatus.PENDING, (1,))),
    ("partial-without-pend-info", lambda: CmcStatusInfo(CmcStatus.PARTIAL, (1,))),
]


@pytest.mark.parametrize("make", [s[1] for s in STATUS_ERRORS], ids=[f"refuse/{s[0]}" for s in STATUS_ERRORS])
def test_status_infos_we_cannot_send_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_a_response_needs_a_status(pki: Pki) -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_pki_response(response_signer(pki.ra_key, pki.ra), statuses=[])


def test_content_types_and_request_type() -> None:
    assert FULL_CMC_REQUEST == "application/pkcs7-mime; smime-type=CMC-request"
    assert FULL_CMC_RESPONSE == "application/pkcs7-mime; smime-type=CMC-response"
    assert {f.name for f in dataclasses.fields(CmcRequest)} >= {"certification_requests", "revoke_requests", "reply"}


def test_mutated_messages_fail_only_with_our_errors(pki: Pki) -> None:
    """Random byte changes, cuts and insertions: every outcome is a result, a CmcDecodeError or a
    CmcFailure, never another exception (a cheap, deterministic stand-in for a fuzzer)."""
    signer = response_signer(pki.ra_key, pki.ra, [pki.ca])
    response = build_pki_response(
        signer, statuses=[CmcStatusInfo(CmcStatus.SUCCESS, (1,))], certificates=[pki.device], reply=CmcReplyContext(7)
    )
    seeds = [enrollment(pki), revocation(pki), (VECTORS / "windows-certenroll-pkidata.der").read_bytes(), response]
    rng = random.Random(5272)
    for _ in range(400):
        message = bytearray(rng.choice(seeds))
        position = rng.randrange(len(message))
        change = rng.random()
        if change < 0.6:
            message[position] = rng.randrange(256)
        elif change < 0.8:
            del message[position : position + rng.randint(1, 8)]
        else:
            message[position:position] = rng.randbytes(rng.randint(1, 4))
        for parse in (parse_full_cmc, parse_pki_response):
            with contextlib.suppress(CmcDecodeError, CmcFailure):
                parse(bytes(message))
