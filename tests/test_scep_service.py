"""SCEP end to end through the Flask test client: paths, operations, every cipher x digest, the
transport tolerances, challenges, idempotency, renewal, manual approval, retrieval, hostile input
and the one enrollment event each PKIOperation writes."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7
from cryptography.x509.oid import AttributeOID, NameOID
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway.app import create_app
from gateway.cli import main
from gateway.config import GatewayConfig, load_config
from scep.asn1 import (
    Digest,
    FailInfo,
    MessageType,
    PkiStatus,
    ScepAttributes,
    encode_signed_attributes,
    printable_string,
)
from scep.client_messages import (
    CertRepReply,
    build_pki_request,
    issuer_and_serial_der,
    issuer_and_subject_der,
    parse_cert_rep,
    self_signed_signer,
    transaction_id_for,
)
from scep.envelope import ContentCipher, seal_envelope
from shared_ca.cms import CmsSigner, SigningKey, build_signed_data
from shared_ca.storage.repositories import Storage
from tests.support import ec_key, rsa_key

CHALLENGE = "s3cret"
PKI = "application/x-pki-message"
EXTRA_PROFILES = """
[profiles.legacy]
scep_challenge = "s3cret"
scep_digests = ["md5", "sha1"]

[profiles.strict]
scep_challenge = "s3cret"
scep_ciphers = ["aes256"]

[profiles.locked]
scep_challenge = "s3cret"
scep_lockout_threshold = 3

[profiles.manual]
scep_challenge = "s3cret"
approval = "manual"
"""

_KEYS: dict[int, rsa.RSAPrivateKey] = {}


def device_key(index: int = 0) -> rsa.RSAPrivateKey:
    """Distinct RSA-2048 device keys, generated once per session (index 0 is support's cached key)."""
    if index == 0:
        return rsa_key()
    if index not in _KEYS:
        _KEYS[index] = rsa_key(fresh=True)
    return _KEYS[index]


def name(cn: str, *extra: x509.NameAttribute[str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), *extra])


def spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


@pytest.fixture
def gateway_config(data_dir: Path) -> GatewayConfig:
    """The data directory's configuration with the extra profiles these tests use."""
    with (data_dir / "config.toml").open("a", encoding="utf-8") as config:
        config.write(EXTRA_PROFILES)
    return load_config(data_dir, environ={})


def store_of(app: Flask) -> Storage:
    store: Storage = app.extensions["gateway"].get().storage
    return store


@dataclass(frozen=True)
class Ra:
    ra: x509.Certificate
    ca: x509.Certificate


def get_ca(client: FlaskClient, path: str = "/scep") -> Ra:
    response = client.get(path, query_string={"operation": "GetCACert"})
    assert response.status_code == 200
    assert response.mimetype == "application/x-x509-ca-ra-cert"
    # RA first, then the CA, in the order the clients expect (not DER-sorted): cryptography
    # warns that it falls back to BER for that SET OF, which is what we want here.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="PKCS#7 certificates could not be parsed as DER", category=UserWarning
        )
        certs = pkcs7.load_der_pkcs7_certificates(response.data)
    return Ra(certs[0], certs[1])


@dataclass(frozen=True)
class Sent:
    """A pkiMessage we built, with what is needed to read the answer."""

    der: bytes
    key: SigningKey
    signer: x509.Certificate
    transaction_id: str
    nonce: bytes
    digest: Digest
    cipher: ContentCipher


def csr_der(
    key: Any,
    subject: x509.Name,
    challenge: str | None = CHALLENGE,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    der: bytes = builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)
    return der


def request(
    ra: Ra,
    content: bytes,
    *,
    key: SigningKey | None = None,
    signer: x509.Certificate | None = None,
    message_type: MessageType = MessageType.PKCSReq,
    digest: Digest = Digest.SHA256,
    cipher: ContentCipher = ContentCipher.AES256,
    transaction_id: str | None = None,
    nonce: bytes | None = None,
    recipient: x509.Certificate | None = None,
    signing_time: dt.datetime | None = None,
) -> Sent:
    key = key or device_key()
    signer = signer or self_signed_signer(key, name("device1"))
    transaction_id = transaction_id or transaction_id_for(key.public_key())
    nonce = nonce or os.urandom(16)
    der = build_pki_request(
        message_type,
        content_der=content,
        signer_cert=signer,
        signer_key=key,
        recipient_cert=recipient or ra.ra,
        transaction_id=transaction_id,
        sender_nonce=nonce,
        digest=digest,
        content_cipher=cipher,
        signing_time=signing_time,
    )
    return Sent(der, key, signer, transaction_id, nonce, digest, cipher)


def enrollment(
    ra: Ra,
    cn: str = "device1",
    *,
    key: rsa.RSAPrivateKey | None = None,
    challenge: str | None = CHALLENGE,
    **options: Any,
) -> Sent:
    """A PKCSReq for `cn`, signed by a self-signed certificate of the CSR's key."""
    key = key or device_key()
    subject = name(cn)
    return request(ra, csr_der(key, subject, challenge), key=key, signer=self_signed_signer(key, subject), **options)


def post(client: FlaskClient, der: bytes, path: str = "/scep", content_type: str | None = PKI) -> TestResponse:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post(path, query_string={"operation": "PKIOperation"}, data=der, headers=headers)


def reply_of(response: TestResponse, ra: Ra, sent: Sent) -> CertRepReply:
    assert response.status_code == 200, response.data
    assert response.mimetype == PKI
    key = sent.key
    assert isinstance(key, rsa.RSAPrivateKey)
    reply = parse_cert_rep(response.data, ra_cert=ra.ra, signer_key=key, signer_cert=sent.signer)
    assert reply.transaction_id == sent.transaction_id
    assert reply.recipient_nonce == sent.nonce
    assert reply.sender_nonce != sent.nonce
    return reply


def issued_cert(reply: CertRepReply, key: Any) -> x509.Certificate:
    """The certificate for `key` in a SUCCESS reply."""
    assert reply.status is PkiStatus.SUCCESS, (reply.fail_info, reply.fail_info_text)
    found = [c for c in reply.certificates if spki(c.public_key()) == spki(key.public_key())]
    assert len(found) == 1
    return found[0]


def enroll(client: FlaskClient, ra: Ra, sent: Sent, path: str = "/scep") -> x509.Certificate:
    reply = reply_of(post(client, sent.der, path), ra, sent)
    return issued_cert(reply, sent.key)


def failure(client: FlaskClient, ra: Ra, sent: Sent, path: str = "/scep") -> CertRepReply:
    reply = reply_of(post(client, sent.der, path), ra, sent)
    assert reply.status is PkiStatus.FAILURE
    return reply


def certs_for(app: Flask, cn: str) -> list[Any]:
    gw = app.extensions["gateway"].get()
    records = gw.storage.certificates.list_certificates(now=dt.datetime.now(dt.UTC), issuer_id=gw.authority.issuer.id)
    return [r for r in records if r.subject == f"CN={cn}"]


def run_cli(runner: CliRunner, data_dir: Path, *args: str) -> str:
    result = runner.invoke(main, [*args, "--data-dir", str(data_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# -- paths, GetCACaps, GetCACert ---------------------------------------------------------------------

ALIASES = [
    "/scep",
    "/scep/",
    "/scep/default",
    "/scep/default/pkiclient.exe",
    "/scep/pkiclient.exe",
    "/scep/default/x/y/pkiclient.exe",
    "/cgi-bin/pkiclient.exe",
    "/certsrv/mscep/mscep.dll",
    "/certsrv/mscep/mscep.dll/pkiclient.exe",
]
DEFAULT_CAPS = ["POSTPKIOperation", "SHA-1", "SHA-256", "SHA-512", "AES", "DES3", "Renewal", "SCEPStandard"]


@pytest.mark.parametrize("path", ALIASES, ids=ALIASES)
def test_get_ca_caps_and_ca_cert_on_every_alias(client: FlaskClient, app: Flask, path: str) -> None:
    caps = client.get(path, query_string={"operation": "GetCACaps"})
    assert caps.status_code == 200
    assert caps.mimetype == "text/plain"
    assert caps.get_data(as_text=True).splitlines() == DEFAULT_CAPS
    gw = app.extensions["gateway"].get()
    chain = get_ca(client, path)
    assert chain.ra == gw.ra_certificate
    assert chain.ca == gw.authority.certificate


def test_profile_caps_follow_its_allow_lists(client: FlaskClient) -> None:
    strict = client.get("/scep/strict", query_string={"operation": "GetCACaps"}).get_data(as_text=True)
    assert strict.splitlines() == ["POSTPKIOperation", "SHA-1", "SHA-256", "SHA-512", "AES", "Renewal", "SCEPStandard"]
    legacy = client.get("/scep/legacy/pkiclient.exe", query_string={"operation": "GetCACaps"})
    assert legacy.get_data(as_text=True).splitlines() == [
        "POSTPKIOperation",
        "SHA-1",
        "AES",
        "DES3",
        "Renewal",
        "SCEPStandard",
    ]


@pytest.mark.parametrize(
    ("path", "query", "status"),
    [
        pytest.param("/scep/nope", {"operation": "GetCACaps"}, 404, id="unknown-profile"),
        pytest.param("/scep/nope/pkiclient.exe", {"operation": "GetCACert"}, 404, id="unknown-profile-client-path"),
        pytest.param("/scep/default/other", {"operation": "GetCACaps"}, 404, id="not-a-client-path"),
        pytest.param("/scep", {}, 400, id="operation-missing"),
        pytest.param("/scep", {"operation": ""}, 400, id="operation-empty"),
        pytest.param("/scep", {"operation": "GetEverything"}, 400, id="operation-unknown"),
        pytest.param("/cgi-bin/pkiclient.exe", {"operation": "GetNextCACert"}, 404, id="get-next-ca-cert"),
    ],
)
def test_path_and_operation_errors(client: FlaskClient, path: str, query: dict[str, str], status: int) -> None:
    response = client.get(path, query_string=query)
    assert response.status_code == status
    assert response.mimetype == "text/plain"


# -- enrollment: every cipher x digest, every transport ----------------------------------------------

CIPHERS = list(ContentCipher)
DIGESTS = [Digest.SHA1, Digest.SHA224, Digest.SHA256, Digest.SHA384, Digest.SHA512]


@pytest.mark.parametrize("digest", DIGESTS, ids=[d.value for d in DIGESTS])
@pytest.mark.parametrize("cipher", CIPHERS, ids=[c.value for c in CIPHERS])
def test_pkcsreq_success_for_every_cipher_and_digest(
    client: FlaskClient, app: Flask, cipher: ContentCipher, digest: Digest
) -> None:
    ra = get_ca(client)
    sent = enrollment(ra, "matrix-device", cipher=cipher, digest=digest)
    reply = reply_of(post(client, sent.der), ra, sent)
    cert = issued_cert(reply, sent.key)
    assert cert.subject == name("matrix-device")
    assert cert.issuer == ra.ca.subject
    assert reply.digest is digest
    assert reply.content_cipher is cipher
    events = store_of(app).enrollments.enrollment_events(transaction_id=sent.transaction_id)
    assert [(e.outcome, e.cipher, e.digest) for e in events] == [("issued", cipher.value, digest.value)]


def _transport(client: FlaskClient, der: bytes, how: str) -> TestResponse:
    if how == "post-pki-message":
        return post(client, der)
    if how == "post-octet-stream":
        return post(client, der, content_type="application/octet-stream")
    if how == "post-no-content-type":
        return post(client, der, content_type=None)
    if how == "post-base64":
        return post(client, base64.b64encode(der), content_type="text/plain")
    text = base64.b64encode(der).decode()
    if how == "get-base64":
        return client.get("/scep", query_string={"operation": "PKIOperation", "message": text})
    if how == "get-plus-as-space":
        assert "+" in text
        return client.get("/scep", query_string=f"operation=PKIOperation&message={text}")
    assert how == "get-urlsafe"
    urlsafe = base64.urlsafe_b64encode(der).decode().rstrip("=")
    return client.get("/scep/default/pkiclient.exe", query_string={"operation": "PKIOperation", "message": urlsafe})


TRANSPORTS = [
    "post-pki-message",
    "post-octet-stream",
    "post-no-content-type",
    "post-base64",
    "get-base64",
    "get-plus-as-space",
    "get-urlsafe",
]


@pytest.mark.parametrize("how", TRANSPORTS)
def test_pkcsreq_success_over_every_transport(client: FlaskClient, how: str) -> None:
    ra = get_ca(client)
    sent = enrollment(ra, "transport-device")
    while "+" not in base64.b64encode(sent.der).decode():  # pragma: no cover - practically never
        sent = enrollment(ra, "transport-device")
    reply = reply_of(_transport(client, sent.der, how), ra, sent)
    assert issued_cert(reply, sent.key).subject == name("transport-device")


# -- algorithm policy ----------------------------------------------------------------------------------


def test_md5_is_refused_unless_the_profile_allows_it(client: FlaskClient) -> None:
    ra = get_ca(client)
    refused = failure(client, ra, enrollment(ra, "md5-device", digest=Digest.MD5))
    assert refused.fail_info is FailInfo.BAD_ALG
    legacy = enrollment(ra, "md5-device", digest=Digest.MD5, transaction_id="md5-legacy")
    reply = reply_of(post(client, legacy.der, "/scep/legacy"), ra, legacy)
    assert issued_cert(reply, legacy.key).subject == name("md5-device")
    assert reply.digest is Digest.MD5


def test_a_profile_cipher_allow_list_refuses_others(client: FlaskClient) -> None:
    ra = get_ca(client)
    refused = failure(client, ra, enrollment(ra, cipher=ContentCipher.DES), "/scep/strict")
    assert refused.fail_info is FailInfo.BAD_ALG
    ok = enrollment(ra, cipher=ContentCipher.AES256, transaction_id="strict-aes")
    enroll(client, ra, ok, "/scep/strict")


# -- challenges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("challenge", ["wrong", "", None], ids=["wrong", "empty", "missing"])
def test_wrong_or_missing_challenge_is_bad_request(client: FlaskClient, app: Flask, challenge: str | None) -> None:
    ra = get_ca(client)
    sent = enrollment(ra, challenge=challenge)
    reply = failure(client, ra, sent)
    assert reply.fail_info is FailInfo.BAD_REQUEST
    assert reply.fail_info_text == "the challenge password is not valid"
    events = store_of(app).enrollments.enrollment_events(transaction_id=sent.transaction_id)
    assert [e.outcome for e in events] == ["failure:badRequest"]


def test_lockout_after_the_threshold_even_with_the_right_challenge(client: FlaskClient) -> None:
    ra = get_ca(client)
    for attempt in range(3):
        sent = enrollment(ra, challenge="guess", transaction_id=f"guess-{attempt}")
        refused = failure(client, ra, sent, "/scep/locked")
        assert refused.fail_info is FailInfo.BAD_REQUEST
        assert refused.fail_info_text == "the challenge password is not valid"
    right = enrollment(ra, transaction_id="right-after-lockout")
    locked = failure(client, ra, right, "/scep/locked")
    assert locked.fail_info is FailInfo.BAD_REQUEST
    assert locked.fail_info_text == "too many failed attempts; try again later"


def test_one_time_challenge_works_once(client: FlaskClient, runner: CliRunner, data_dir: Path) -> None:
    secret = run_cli(runner, data_dir, "challenge", "add", "--device", "dev-otp").strip()
    assert secret and secret != CHALLENGE
    ra = get_ca(client)
    first = enrollment(ra, "dev-otp", challenge=secret)
    assert enroll(client, ra, first).subject == name("dev-otp")
    key2 = device_key(1)
    second = enrollment(ra, "dev-otp", key=key2, challenge=secret)
    reply = failure(client, ra, second)
    assert reply.fail_info is FailInfo.BAD_REQUEST
    assert reply.fail_info_text == "the challenge password is not valid"


# -- idempotency ----------------------------------------------------------------------------------------


def test_retransmission_returns_the_same_certificate(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    sent = enrollment(ra, "retransmit")
    first = enroll(client, ra, sent)
    again = enroll(client, ra, sent)
    assert again.serial_number == first.serial_number
    # Re-encrypted: same signer certificate, same CSR, new nonce and envelope.
    assert sent.key is device_key()
    csr = csr_der(sent.key, name("retransmit"))
    resent = request(ra, csr, key=sent.key, signer=sent.signer, transaction_id=sent.transaction_id)
    assert resent.der != sent.der
    assert enroll(client, ra, resent).serial_number == first.serial_number
    assert len(certs_for(app, "retransmit")) == 1
    # A new CSR under the same transactionID and signer key, with a new self-signed signer: new enrollment.
    key = device_key()
    fresh_signer = self_signed_signer(key, name("retransmit-2"))
    new = request(
        ra, csr_der(key, name("retransmit-2")), key=key, signer=fresh_signer, transaction_id=sent.transaction_id
    )
    renewed = enroll(client, ra, new)
    assert renewed.serial_number != first.serial_number
    assert renewed.subject == name("retransmit-2")
    assert len(certs_for(app, "retransmit")) == 1
    assert len(certs_for(app, "retransmit-2")) == 1


# -- renewal --------------------------------------------------------------------------------------------


def _issue(client: FlaskClient, ra: Ra, cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = device_key()
    return key, enroll(client, ra, enrollment(ra, cn, key=key, transaction_id=f"first-{cn}"))


def test_renewal_signed_by_the_issued_certificate(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    key, cert = _issue(client, ra, "renew-me")
    renewal = request(
        ra,
        csr_der(key, name("renew-me"), challenge=None),
        key=key,
        signer=cert,
        message_type=MessageType.RenewalReq,
        transaction_id="renewal-1",
    )
    renewed = enroll(client, ra, renewal)
    assert renewed.serial_number != cert.serial_number
    assert renewed.subject == cert.subject
    events = store_of(app).enrollments.enrollment_events(transaction_id="renewal-1")
    assert [(e.outcome, e.challenge_kind) for e in events] == [("issued", "renewal")]


def test_renewal_signed_by_a_self_signed_certificate_is_refused(client: FlaskClient) -> None:
    ra = get_ca(client)
    renewal = enrollment(ra, "not-ours", challenge=None, message_type=MessageType.RenewalReq)
    assert failure(client, ra, renewal).fail_info is FailInfo.BAD_REQUEST


def test_renewal_after_revocation_is_refused(client: FlaskClient, runner: CliRunner, data_dir: Path) -> None:
    ra = get_ca(client)
    key, cert = _issue(client, ra, "revoked-device")
    run_cli(runner, data_dir, "cert", "revoke", format(cert.serial_number, "x"), "--reason", "key_compromise")
    renewal = request(
        ra,
        csr_der(key, name("revoked-device"), challenge=None),
        key=key,
        signer=cert,
        message_type=MessageType.RenewalReq,
        transaction_id="renew-revoked",
    )
    assert failure(client, ra, renewal).fail_info is FailInfo.BAD_REQUEST


def test_pkcsreq_signed_by_the_issued_certificate_rekeys(client: FlaskClient) -> None:
    """certmonger's rekey: PKCSReq signed by the current certificate and key, CSR with a new key."""
    ra = get_ca(client)
    key, cert = _issue(client, ra, "rekey-device")
    new_key = device_key(1)
    rekey = request(
        ra,
        csr_der(new_key, name("rekey-device"), challenge=None),
        key=key,
        signer=cert,
        message_type=MessageType.PKCSReq,
        transaction_id=transaction_id_for(new_key.public_key()),
    )
    reply = reply_of(post(client, rekey.der), ra, rekey)
    renewed = issued_cert(reply, new_key)
    assert renewed.serial_number != cert.serial_number
    assert renewed.subject == cert.subject


# -- manual approval -------------------------------------------------------------------------------------


def _poll(ra: Ra, sent: Sent, cn: str) -> Sent:
    return request(
        ra,
        issuer_and_subject_der(ra.ca.subject, name(cn)),
        key=sent.key,
        signer=sent.signer,
        message_type=MessageType.CertPoll,
        transaction_id=sent.transaction_id,
        digest=sent.digest,
        cipher=sent.cipher,
    )


def _pending_ids(runner: CliRunner, data_dir: Path) -> dict[str, int]:
    rows = json.loads(run_cli(runner, data_dir, "request", "list", "--format", "json"))
    return {row["subject"]: int(row["id"]) for row in rows}


def test_manual_approval_through_certpoll(client: FlaskClient, app: Flask, runner: CliRunner, data_dir: Path) -> None:
    ra = get_ca(client)
    sent = enrollment(ra, "needs-approval", transaction_id="manual-1")
    pending = reply_of(post(client, sent.der, "/scep/manual"), ra, sent)
    assert pending.status is PkiStatus.PENDING
    other = enrollment(ra, "will-be-rejected", key=device_key(1), transaction_id="manual-2")
    assert reply_of(post(client, other.der, "/scep/manual"), ra, other).status is PkiStatus.PENDING
    table = run_cli(runner, data_dir, "request", "list")
    assert "CN=needs-approval" in table and "CN=will-be-rejected" in table
    ids = _pending_ids(runner, data_dir)

    poll = _poll(ra, sent, "needs-approval")
    assert reply_of(post(client, poll.der, "/scep/manual"), ra, poll).status is PkiStatus.PENDING
    run_cli(runner, data_dir, "request", "approve", str(ids["CN=needs-approval"]))
    poll = _poll(ra, sent, "needs-approval")
    assert enroll(client, ra, poll, "/scep/manual").subject == name("needs-approval")

    run_cli(runner, data_dir, "request", "reject", str(ids["CN=will-be-rejected"]), "--reason", "not on the list")
    poll = _poll(ra, other, "will-be-rejected")
    rejected = failure(client, ra, poll, "/scep/manual")
    assert rejected.fail_info is FailInfo.BAD_REQUEST
    assert rejected.fail_info_text == "not on the list"
    assert _pending_ids(runner, data_dir) == {}


def test_certpoll_for_an_unknown_transaction_is_bad_cert_id(client: FlaskClient) -> None:
    ra = get_ca(client)
    sent = enrollment(ra, "nobody", transaction_id="never-sent")
    assert failure(client, ra, _poll(ra, sent, "nobody")).fail_info is FailInfo.BAD_CERT_ID


# -- GetCert, GetCRL -----------------------------------------------------------------------------------


def test_get_cert_and_get_crl(client: FlaskClient) -> None:
    ra = get_ca(client)
    _key, cert = _issue(client, ra, "lookup-target")
    asker = device_key(1)
    signer = self_signed_signer(asker, name("asker"))

    def ask(message_type: MessageType, content: bytes, txid: str) -> Sent:
        return request(ra, content, key=asker, signer=signer, message_type=message_type, transaction_id=txid)

    get = ask(MessageType.GetCert, issuer_and_serial_der(ra.ca.subject, cert.serial_number), "get-cert")
    found = reply_of(post(client, get.der), ra, get)
    assert found.status is PkiStatus.SUCCESS
    assert list(found.certificates) == [cert]
    missing = ask(MessageType.GetCert, issuer_and_serial_der(ra.ca.subject, 0x1234567), "get-missing")
    assert failure(client, ra, missing).fail_info is FailInfo.BAD_CERT_ID
    crl_request = ask(MessageType.GetCRL, issuer_and_serial_der(ra.ca.subject, cert.serial_number), "get-crl")
    crl_reply = reply_of(post(client, crl_request.der), ra, crl_request)
    assert crl_reply.status is PkiStatus.SUCCESS and crl_reply.crl is not None
    crl = x509.load_der_x509_crl(crl_reply.crl)
    assert crl.issuer == ra.ca.subject
    public_key = ra.ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public_key)


# -- one event per PKIOperation --------------------------------------------------------------------------


def test_every_pki_operation_writes_one_event(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    store = store_of(app)
    ok = enrollment(ra, "evented", transaction_id="event-ok")
    enroll(client, ra, ok)
    bad = enrollment(ra, "evented", challenge="nope", key=device_key(1), transaction_id="event-bad")
    failure(client, ra, bad)
    md5 = enrollment(ra, "evented", digest=Digest.MD5, key=device_key(1), transaction_id="event-md5")
    failure(client, ra, md5)
    (issued,) = store.enrollments.enrollment_events(transaction_id="event-ok")
    assert (issued.protocol, issued.operation, issued.outcome) == ("scep", "PKCSReq", "issued")
    assert (issued.profile, issued.device_identity, issued.challenge_kind) == ("default", "evented", "static")
    assert issued.serial_hex is not None
    (refused,) = store.enrollments.enrollment_events(transaction_id="event-bad")
    assert refused.outcome == "failure:badRequest"
    (bad_alg,) = store.enrollments.enrollment_events(transaction_id="event-md5")
    assert bad_alg.outcome == "failure:badAlg"
    # A retransmission is one more request, so one more event.
    enroll(client, ra, ok)
    assert len(store.enrollments.enrollment_events(transaction_id="event-ok")) == 2


# -- hostile input ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """An HTTP request to send: POST `body`, or GET with the raw `query`."""

    body: bytes | None = None
    query: str | None = None
    path: str = "/scep"
    sent: Sent | None = None


@dataclass(frozen=True)
class Ctx:
    client: FlaskClient
    ra: Ra

    def good(self, **options: Any) -> Sent:
        return enrollment(self.ra, "hostile", **options)


ANY = "any"  # only: no 500
Expect = int | FailInfo | str


def _resign(info: cms.ContentInfo) -> bytes:
    der: bytes = info.dump(force=True)
    return der


def _edit(der: bytes, change: Callable[[Any], None]) -> bytes:
    info = cms.ContentInfo.load(der)
    change(info["content"])
    return _resign(info)


def _flip(data: bytes, index: int = -1) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _raw_signed(
    ctx: Ctx,
    entries: list[dict[str, Any]],
    envelope: bytes | None,
    key: SigningKey | None = None,
    digest: Digest = Digest.SHA256,
) -> Probe:
    """A SignedData over hand-written signed attributes."""
    key = key or device_key()
    signer = self_signed_signer(key, name("hostile"))
    base: list[dict[str, Any]] = [{"type": "content_type", "values": ["data"]}]
    base.append({"type": "message_digest", "values": [digest.compute(envelope or b"")]})
    der = build_signed_data(
        CmsSigner.create(key, signer),
        digest=digest,
        signed_attributes_der=ScepAttributes(base + entries).dump(),
        content=envelope,
    )
    sent = Sent(der, key, signer, "raw", b"", digest, ContentCipher.AES256)
    return Probe(body=der, sent=sent)


def _scep_attrs(
    message_type: str | None = "19", txid: str | None = "raw", nonce: bytes | None = b"n" * 16
) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    if message_type is not None:
        entries.append({"type": "message_type", "values": [printable_string(message_type)]})
    if txid is not None:
        entries.append({"type": "transaction_id", "values": [printable_string(txid)]})
    if nonce is not None:
        entries.append({"type": "sender_nonce", "values": [nonce]})
    return entries


def _envelope(ctx: Ctx, content: bytes | None = None, cipher: ContentCipher = ContentCipher.AES256) -> bytes:
    key = device_key()
    return seal_envelope(content or csr_der(key, name("hostile")), ctx.ra.ra, cipher)


def _probe(sent: Sent, path: str = "/scep") -> Probe:
    return Probe(body=sent.der, sent=sent, path=path)


def _truncated(at: Callable[[int], int]) -> Callable[[Ctx], Probe]:
    def build(ctx: Ctx) -> Probe:
        der = ctx.good().der
        return Probe(body=der[: at(len(der))])

    return build


def _bad_signature(ctx: Ctx) -> Probe:
    sent = ctx.good()

    def change(sd: Any) -> None:
        si = sd["signer_infos"][0]
        si["signature"] = _flip(si["signature"].native)

    return Probe(body=_edit(sent.der, change), sent=sent)


def _tampered_attributes(ctx: Ctx) -> Probe:
    sent = ctx.good()

    def change(sd: Any) -> None:
        forged = encode_signed_attributes(
            content_digest=sent.digest.compute(sd["encap_content_info"]["content"].native),
            message_type=MessageType.PKCSReq,
            transaction_id="forged-transaction",
            sender_nonce=sent.nonce,
        )
        sd["signer_infos"][0]["signed_attrs"] = cms.CMSAttributes.load(forged)

    return Probe(body=_edit(sent.der, change), sent=sent)


def _digest_mismatch(ctx: Ctx) -> Probe:
    sent = ctx.good()

    def change(sd: Any) -> None:
        encap = sd["encap_content_info"]
        encap["content"] = _flip(encap["content"].native, 40)

    return Probe(body=_edit(sent.der, change), sent=sent)


def _signer_missing(ctx: Ctx) -> Probe:
    sent = ctx.good()

    def change(sd: Any) -> None:
        sd["certificates"] = cms.CertificateSet([])

    return Probe(body=_edit(sent.der, change), sent=sent)


def _signer_other_cert(ctx: Ctx) -> Probe:
    sent = ctx.good()
    other = self_signed_signer(device_key(1), name("someone-else"))

    def change(sd: Any) -> None:
        sd["certificates"] = cms.CertificateSet([asn1_x509.Certificate.load(other.public_bytes(Encoding.DER))])

    return Probe(body=_edit(sent.der, change), sent=sent)


def _signature_digest_disagree(ctx: Ctx) -> Probe:
    sent = ctx.good()

    def change(sd: Any) -> None:
        sd["signer_infos"][0]["signature_algorithm"] = {"algorithm": "sha512_rsa"}

    return Probe(body=_edit(sent.der, change), sent=sent)


def _wrong_recipient(ctx: Ctx) -> Probe:
    other = self_signed_signer(device_key(1), name("not-the-ra"))
    return _probe(ctx.good(recipient=other))


def _undecryptable(ctx: Ctx) -> Probe:
    # A bad key transport continues with a random key (no oracle); under GCM that always fails the
    # tag, where CBC would let about one random key in 256 through the padding check.
    envelope = cms.ContentInfo.load(_envelope(ctx, cipher=ContentCipher.AES256_GCM))
    ktri = envelope["content"]["recipient_infos"][0].chosen
    ktri["encrypted_key"] = _flip(ktri["encrypted_key"].native, 5)
    return _raw_signed(ctx, _scep_attrs(), _resign(envelope))


def _gcm_tag_broken(ctx: Ctx) -> Probe:
    envelope = cms.ContentInfo.load(_envelope(ctx, cipher=ContentCipher.AES128_GCM))
    eci = envelope["content"]["encrypted_content_info"]
    eci["encrypted_content"] = _flip(eci["encrypted_content"].native)
    return _raw_signed(ctx, _scep_attrs(), _resign(envelope))


def _certrep_echoed(ctx: Ctx) -> Probe:
    sent = ctx.good(digest=Digest.MD5)
    reply = post(ctx.client, sent.der)
    assert reply.status_code == 200
    return Probe(body=reply.data)


def _replayed_nonce(ctx: Ctx) -> Probe:
    first = ctx.good(nonce=b"r" * 16)
    enroll(ctx.client, ctx.ra, first)
    key = device_key(1)
    second = enrollment(ctx.ra, "replayed", key=key, nonce=b"r" * 16)
    return _probe(second)


def _ec_signed(ctx: Ctx) -> Probe:
    key = ec_key()
    subject = name("ec-device")
    return _probe(request(ctx.ra, csr_der(key, subject), key=key, signer=self_signed_signer(key, subject)))


def _csr_bad_signature(ctx: Ctx) -> Probe:
    key = device_key()
    return _probe(request(ctx.ra, _flip(csr_der(key, name("hostile"))), key=key))


def _rsa_1024(ctx: Ctx) -> Probe:
    key = rsa_key(1024)
    subject = name("weak-device")
    return _probe(request(ctx.ra, csr_der(key, subject), key=key, signer=self_signed_signer(key, subject)))


def _subject_not_allowed(ctx: Ctx) -> Probe:
    key = device_key()
    subject = name("titled", x509.NameAttribute(NameOID.PSEUDONYM, "nick"))
    return _probe(request(ctx.ra, csr_der(key, subject), key=key, signer=self_signed_signer(key, subject)))


def _signer_key_differs(ctx: Ctx) -> Probe:
    csr = csr_der(device_key(1), name("hostile"))
    return _probe(request(ctx.ra, csr, key=device_key()))


def _huge(ctx: Ctx) -> Probe:
    return Probe(body=b"\x30\x83\x04\xb0\x00" + b"\x00" * (300 * 1024))


HOSTILE: list[tuple[str, Callable[[Ctx], Probe], Expect]] = [
    ("garbage", lambda ctx: Probe(body=b"\x00\x01garbage\xff"), 400),
    ("empty-body", lambda ctx: Probe(body=b""), 400),
    ("der-garbage", lambda ctx: Probe(body=b"\x30\x82\xff\xff" + b"\x00" * 20), 400),
    ("base64-garbage", lambda ctx: Probe(body=b"bm90IGEgY21zIG1lc3NhZ2U="), 400),
    ("base64-invalid", lambda ctx: Probe(body=b"!!!not base64!!!"), 400),
    ("truncated-1", _truncated(lambda n: 1), 400),
    ("truncated-10", _truncated(lambda n: 10), 400),
    ("truncated-100", _truncated(lambda n: 100), 400),
    ("truncated-half", _truncated(lambda n: n // 2), 400),
    ("truncated-last-byte", _truncated(lambda n: n - 1), 400),
    (
        "content-info-data",
        lambda ctx: Probe(body=cms.ContentInfo({"content_type": "data", "content": b"x"}).dump()),
        400,
    ),
    ("signed-data-no-signer", lambda ctx: Probe(body=ctx.client.get("/scep?operation=GetCACert").data), 400),
    ("bad-signature", _bad_signature, FailInfo.BAD_MESSAGE_CHECK),
    ("tampered-signed-attributes", _tampered_attributes, FailInfo.BAD_MESSAGE_CHECK),
    ("message-digest-mismatch", _digest_mismatch, FailInfo.BAD_MESSAGE_CHECK),
    ("signer-cert-missing", _signer_missing, FailInfo.BAD_MESSAGE_CHECK),
    ("signer-cert-mismatch", _signer_other_cert, FailInfo.BAD_MESSAGE_CHECK),
    ("signature-digest-disagree", _signature_digest_disagree, FailInfo.BAD_ALG),
    ("envelope-other-recipient", _wrong_recipient, FailInfo.BAD_MESSAGE_CHECK),
    ("envelope-undecryptable", _undecryptable, FailInfo.BAD_MESSAGE_CHECK),
    ("envelope-gcm-tag-broken", _gcm_tag_broken, FailInfo.BAD_MESSAGE_CHECK),
    ("unknown-message-type", lambda ctx: _raw_signed(ctx, _scep_attrs("99"), _envelope(ctx)), FailInfo.BAD_REQUEST),
    ("transaction-id-missing", lambda ctx: _raw_signed(ctx, _scep_attrs(txid=None), _envelope(ctx)), 400),
    ("sender-nonce-missing", lambda ctx: _raw_signed(ctx, _scep_attrs(nonce=None), _envelope(ctx)), 400),
    ("sender-nonce-huge", lambda ctx: _raw_signed(ctx, _scep_attrs(nonce=b"n" * 65), _envelope(ctx)), 400),
    ("message-type-missing", lambda ctx: _raw_signed(ctx, _scep_attrs(message_type=None), _envelope(ctx)), 400),
    ("no-econtent", lambda ctx: _raw_signed(ctx, _scep_attrs(), None), FailInfo.BAD_REQUEST),
    ("huge-message", _huge, 400),
    ("get-bad-base64", lambda ctx: Probe(query="operation=PKIOperation&message=%25%25%25%21%21"), 400),
    ("get-truncated-base64", lambda ctx: Probe(query="operation=PKIOperation&message=QUJDRA%3D%3DQ"), 400),
    ("get-message-missing", lambda ctx: Probe(query="operation=PKIOperation"), 400),
    ("certrep-as-request", lambda ctx: _probe(ctx.good(message_type=MessageType.CertRep)), FailInfo.BAD_REQUEST),
    ("certrep-echoed", _certrep_echoed, 400),
    ("replayed-nonce-other-content", _replayed_nonce, ANY),
    ("ec-signed", _ec_signed, FailInfo.BAD_ALG),
    ("md5-digest", lambda ctx: _probe(ctx.good(digest=Digest.MD5)), FailInfo.BAD_ALG),
    ("csr-bad-signature", _csr_bad_signature, FailInfo.BAD_MESSAGE_CHECK),
    ("csr-rsa-1024", _rsa_1024, FailInfo.BAD_REQUEST),
    ("csr-subject-attribute-not-allowed", _subject_not_allowed, FailInfo.BAD_REQUEST),
    ("signer-key-not-csr-key", _signer_key_differs, FailInfo.BAD_MESSAGE_CHECK),
    ("pkcsreq-content-not-csr", lambda ctx: _probe(request(ctx.ra, b"\x30\x03\x02\x01\x05")), FailInfo.BAD_REQUEST),
    (
        "getcert-content-not-issuer-and-serial",
        lambda ctx: _probe(ctx.good(message_type=MessageType.GetCert)),
        FailInfo.BAD_REQUEST,
    ),
    ("wrong-challenge", lambda ctx: _probe(ctx.good(challenge="wrong")), FailInfo.BAD_REQUEST),
    ("missing-challenge", lambda ctx: _probe(ctx.good(challenge=None)), FailInfo.BAD_REQUEST),
    ("unknown-profile", lambda ctx: _probe(ctx.good(), "/scep/no-such-profile"), 404),
]


@pytest.mark.parametrize(("build", "expect"), [pytest.param(b, e, id=i) for i, b, e in HOSTILE])
def test_hostile_input_never_500(client: FlaskClient, build: Callable[[Ctx], Probe], expect: Expect) -> None:
    ctx = Ctx(client, get_ca(client))
    probe = build(ctx)
    if probe.query is not None:
        response = client.get(probe.path, query_string=probe.query)
    else:
        assert probe.body is not None
        response = post(client, probe.body, probe.path)
    assert response.status_code != 500
    if expect == ANY:
        assert response.status_code in (200, 400)
        if response.status_code == 200 and probe.sent is not None:
            reply_of(response, ctx.ra, probe.sent)
        return
    if isinstance(expect, int):
        assert response.status_code == expect, response.data
        assert response.mimetype == "text/plain"
        assert b"Traceback" not in response.data
        return
    assert probe.sent is not None
    key = probe.sent.key
    signer_key = key if isinstance(key, rsa.RSAPrivateKey) else device_key()
    assert response.status_code == 200, response.data
    reply = parse_cert_rep(response.data, ra_cert=ctx.ra.ra, signer_key=signer_key, signer_cert=probe.sent.signer)
    assert reply.status is PkiStatus.FAILURE
    assert reply.fail_info is expect, reply.fail_info_text
    assert reply.fail_info_text


def test_hostile_table_is_large_enough() -> None:
    assert len(HOSTILE) >= 30
    assert len({case_id for case_id, _, _ in HOSTILE}) == len(HOSTILE)


TOLERANCE_VARIABLE = "GATEWAY_PROFILES_DEFAULT_SCEP_SIGNING_TIME_TOLERANCE_MINUTES"


@pytest.mark.parametrize(
    ("skew", "tolerance_minutes", "issued"),
    [
        pytest.param(dt.timedelta(hours=-1), None, True, id="ok/an-hour-behind"),
        pytest.param(dt.timedelta(hours=23), None, True, id="ok/within-a-day-ahead"),
        pytest.param(dt.timedelta(days=-2), None, False, id="fail/two-days-behind"),
        pytest.param(dt.timedelta(hours=25), None, False, id="fail/a-day-ahead"),
        pytest.param(dt.timedelta(minutes=-11), 10, False, id="fail/beyond-the-profile-tolerance"),
        pytest.param(dt.timedelta(days=-5 * 365), 0, True, id="ok/not-checked-when-zero"),
    ],
)
def test_signing_time_must_be_close_to_the_server_clock(
    data_dir: Path, skew: dt.timedelta, tolerance_minutes: int | None, issued: bool
) -> None:
    """RFC 8894 badTime: a signingTime, when sent, within the profile's tolerance (24 h by default)."""
    environ = {} if tolerance_minutes is None else {TOLERANCE_VARIABLE: str(tolerance_minutes)}
    app = create_app(load_config(data_dir, environ=environ))
    try:
        client = app.test_client()
        ra = get_ca(client)
        sent = enrollment(ra, "timed", signing_time=dt.datetime.now(dt.UTC) + skew)
        reply = reply_of(post(client, sent.der), ra, sent)
        if issued:
            issued_cert(reply, sent.key)
        else:
            assert (reply.status, reply.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_TIME)
            assert reply.fail_info_text == "the message's signingTime is too far from the server's time"
        assert len(certs_for(app, "timed")) == (1 if issued else 0)
    finally:
        app.extensions["gateway"].get().storage.engine.dispose()
