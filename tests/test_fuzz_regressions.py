"""One unit test per parser-layer fix of what the fuzzer found (tests/vectors/fuzz/README.md), each
with the crashing input rebuilt by tests/fuzzing/crashers.py. The same inputs go through the whole
app in tests/test_fuzz_corpus.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from flask import Flask
from flask.testing import FlaskClient

from est.cmc import CmcSignatureError, parse_full_cmc
from scep.asn1 import FailInfo
from scep.message import ScepDecodeError, ScepMessageError, parse_pki_message
from shared_ca.csr import load_csr, readable_csr, requested_sans
from shared_ca.errors import AlgorithmNotAllowed, InvalidRequest
from shared_ca.identity import IdentityRule
from shared_ca.storage.repositories import Storage
from tests.fuzzing import crashers, forge

VECTORS = Path(__file__).parent / "vectors"
HTTPS = "https://localhost"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    found = forge.key_pool()["rsa2048-a"]
    assert isinstance(found, rsa.RSAPrivateKey)
    return found


@pytest.fixture(scope="module")
def ra() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    ra_key = load_pem_private_key((VECTORS / "ra.key").read_bytes(), None)
    assert isinstance(ra_key, rsa.RSAPrivateKey)
    return ra_key, x509.load_pem_x509_certificate((VECTORS / "ra.pem").read_bytes())


# -- shared_ca/csr.py --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3], ids=["v2", "v3", "v4"])
def test_load_csr_refuses_a_version_other_than_v1(key: rsa.RSAPrivateKey, version: int) -> None:
    der = crashers.csr_version(key, version)
    with pytest.raises(x509.InvalidVersion):  # what cryptography raises, and escaped before
        x509.load_der_x509_csr(der)
    with pytest.raises(InvalidRequest, match="not a PKCS#10"):
        load_csr(der)
    assert readable_csr(der) is None


def test_load_csr_refuses_a_duplicate_extension(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidRequest, match="not a PKCS#10"):
        load_csr(crashers.csr_duplicate_extension(key))


def test_load_csr_refuses_a_bit_string_cn(key: rsa.RSAPrivateKey) -> None:
    der = crashers.csr_bit_string_cn(key)
    with pytest.raises(TypeError):  # cryptography's own exception type for it
        x509.load_der_x509_csr(der).subject  # noqa: B018
    with pytest.raises(InvalidRequest, match="not a PKCS#10"):
        load_csr(der)


def test_load_csr_refuses_an_unknown_key_algorithm() -> None:
    with pytest.raises(AlgorithmNotAllowed, match="unsupported key algorithm"):
        load_csr(crashers.csr_unknown_key_algorithm(forge.key_pool()["p256"]))


@pytest.mark.parametrize("build", [crashers.csr_duplicate_extension, crashers.csr_broken_san], ids=["dup", "san"])
def test_requested_sans_of_undecodable_extensions_is_invalid_request(key: rsa.RSAPrivateKey, build: object) -> None:
    csr = x509.load_der_x509_csr(build(key))  # type: ignore[operator]
    with pytest.raises(InvalidRequest, match="extensions cannot be decoded"):
        requested_sans(csr)


def test_readable_csr_reads_a_valid_one(key: rsa.RSAPrivateKey) -> None:
    csr = readable_csr(crashers.csr(key))
    assert csr is not None and csr.subject.rfc4514_string() == "CN=device1"


# -- shared_ca/identity.py ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda k: crashers.csr_cn_tag(k, 0x31),
        lambda k: crashers.csr_cn_tag(k, 0x02),
        crashers.csr_empty_rdn,
        crashers.csr_bit_string_cn,
    ],
    ids=["cn-tag-0x31", "cn-tag-0x02", "empty-rdn", "bit-string-cn"],
)
@pytest.mark.parametrize("rule", ["cn", "san:dns", "serialNumber", "regex:CN=(?P<id>.*)"])
def test_an_undecodable_subject_names_no_device(key: rsa.RSAPrivateKey, build: object, rule: str) -> None:
    csr = x509.load_der_x509_csr(build(key))  # type: ignore[operator]
    with pytest.raises((ValueError, TypeError)):
        csr.subject  # noqa: B018 - cryptography decodes it only now
    assert IdentityRule.parse(rule).of_request(csr) is None


def test_undecodable_sans_name_no_device_by_san(key: rsa.RSAPrivateKey) -> None:
    csr = x509.load_der_x509_csr(crashers.csr_broken_san(key))
    assert IdentityRule.parse("san:dns").of_request(csr) is None
    assert IdentityRule.parse("cn").of_request(csr) == "device1"  # the CN rule never reads the SANs


def test_a_signer_certificate_with_an_undecodable_subject_names_no_device(key: rsa.RSAPrivateKey) -> None:
    certificate = x509.load_der_x509_certificate(crashers.certificate_cn_tag(key, 0x31))
    assert IdentityRule.parse("cn").of_certificate(certificate) is None
    readable = forge.self_signed(key, "device1")
    assert IdentityRule.parse("cn").of_certificate(readable) == "device1"


# -- scep/message.py ---------------------------------------------------------------------------------


def _signer(key: rsa.RSAPrivateKey) -> bytes:
    return forge.self_signed(key, "device1").public_bytes(Encoding.DER)


def test_a_pkcsreq_whose_csr_subject_cannot_be_decoded_is_bad_request(
    key: rsa.RSAPrivateKey, ra: tuple[rsa.RSAPrivateKey, x509.Certificate]
) -> None:
    message = crashers.pki_message(crashers.csr_cn_tag(key, 0x31), key, _signer(key), ra[1])
    with pytest.raises(ScepMessageError) as raised:
        parse_pki_message(message, ra_key=ra[0], ra_cert=ra[1])
    assert raised.value.fail_info is FailInfo.BAD_REQUEST
    assert raised.value.public_message == "the PKCSReq content is malformed"
    assert raised.value.reply.signer_certificate is not None  # the signed FAILURE can be enveloped back


@pytest.mark.parametrize("build", [crashers.csr_duplicate_extension, crashers.csr_broken_san], ids=["dup", "san"])
def test_a_pkcsreq_whose_csr_extensions_cannot_be_decoded_is_bad_request(
    key: rsa.RSAPrivateKey, ra: tuple[rsa.RSAPrivateKey, x509.Certificate], build: object
) -> None:
    message = crashers.pki_message(build(key), key, _signer(key), ra[1])  # type: ignore[operator]
    with pytest.raises(ScepMessageError) as raised:
        parse_pki_message(message, ra_key=ra[0], ra_cert=ra[1])
    assert raised.value.fail_info is FailInfo.BAD_REQUEST


def test_a_signer_certificate_whose_subject_cannot_be_decoded_counts_as_missing(
    key: rsa.RSAPrivateKey, ra: tuple[rsa.RSAPrivateKey, x509.Certificate]
) -> None:
    signer = crashers.certificate_cn_tag(key, 0x31)
    message = crashers.pki_message(crashers.csr(key), key, signer, ra[1], digest="md5")
    with pytest.raises(ScepMessageError) as raised:
        parse_pki_message(message, ra_key=ra[0], ra_cert=ra[1])
    assert raised.value.fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert raised.value.public_message == "the signer certificate is missing"
    assert raised.value.reply.signer_certificate is None


@pytest.mark.parametrize("transaction_id", ["\ufeffbom", "tx\x00id", "tx\nid", "Ā"], ids=["bom", "nul", "lf", "u0100"])
def test_a_transaction_id_a_certrep_cannot_echo_is_undecodable(
    key: rsa.RSAPrivateKey, ra: tuple[rsa.RSAPrivateKey, x509.Certificate], transaction_id: str
) -> None:
    message = crashers.pki_message(crashers.csr(key), key, _signer(key), ra[1], transaction_id=transaction_id)
    with pytest.raises(ScepDecodeError, match="transactionID is not a printable string"):
        parse_pki_message(message, ra_key=ra[0], ra_cert=ra[1])


def test_latin1_transaction_ids_still_parse(
    key: rsa.RSAPrivateKey, ra: tuple[rsa.RSAPrivateKey, x509.Certificate]
) -> None:
    message = crashers.pki_message(crashers.csr(key), key, _signer(key), ra[1], transaction_id="Meq+NfN3/é=")
    assert parse_pki_message(message, ra_key=ra[0], ra_cert=ra[1]).transaction_id == "Meq+NfN3/é="


# -- est/cmc_signed.py --------------------------------------------------------------------------------


def test_a_full_cmc_request_whose_tcr_has_version_2_names_no_signer() -> None:
    p256 = forge.key_pool()["p256"]
    der = crashers.full_cmc(crashers.csr_version(p256, 2), p256)
    with pytest.raises(CmcSignatureError, match="neither a certificate nor a request"):
        parse_full_cmc(der)


# -- gateway/admin.py (JSON body) --------------------------------------------------------------------


@pytest.fixture
def admin_token(app: Flask) -> str:
    tokens = Storage.open(app.extensions["gateway"].get().storage.engine).admin_tokens
    return tokens.create_admin_token("fuzz", created_by="test", now=dt.datetime.now(dt.UTC)).token


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 5000 + b"]" * 5000, id="nested-arrays"),
        pytest.param(b'{"device_id": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="nested-field"),
        pytest.param(b'{"device_id": "dev1", "expected_subject": "CN=\\u00e9,O=\\ud800"}', id="lone-surrogate"),
        pytest.param(b'{"device_id": "dev1", "\\udfff": 1}', id="lone-surrogate-key"),
    ],
)
def test_admin_api_refuses_json_it_cannot_use(client: FlaskClient, admin_token: str, body: bytes) -> None:
    response = client.post(
        "/admin/api/scep/challenges",
        data=body,
        headers={"Authorization": f"Bearer {admin_token}"},
        content_type="application/json",
        base_url=HTTPS,
    )
    assert response.status_code == 400, response.data
    assert response.get_data(as_text=True).startswith("the body must be a JSON object")


def test_admin_api_still_takes_unicode(client: FlaskClient, admin_token: str) -> None:
    body = json.dumps({"device_id": "dév1", "expected_subject": "CN=dév1,O=Ünïcode"}).encode()
    response = client.post(
        "/admin/api/scep/challenges",
        data=body,
        headers={"Authorization": f"Bearer {admin_token}"},
        content_type="application/json",
        base_url=HTTPS,
    )
    assert response.status_code == 201, response.data
    assert response.get_json()["device_id"] == "dév1"


def test_crashers_rebuild_their_inputs_exactly(key: rsa.RSAPrivateKey) -> None:
    """The corpus's README promises deterministic builders: a CSR's bytes never vary."""
    assert crashers.csr_cn_tag(key, 0x31) == crashers.csr_cn_tag(key, 0x31)
    assert base64.b64encode(crashers.csr_version(key, 2)) == base64.b64encode(crashers.csr_version(key, 2))
