"""CRLs and OCSP at library level, cross-checked by OpenSSL itself."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from shared_ca.authority import CertificateAuthority, Issued, PublicUrls
from shared_ca.ca_material import create_root_ca, register_issuer
from shared_ca.crl import CrlPublisher, build_crl
from shared_ca.keys import KeyType, generate_private_key
from shared_ca.ocsp import OcspResponder
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES, Profile
from shared_ca.storage.crls import CrlRecord
from shared_ca.storage.repositories import Storage
from tests.conftest import BASE_URL
from tests.support import SettableClock, ec_key, renew, storage_of, subject

DEFAULT = DEFAULT_PROFILES["default"]
RENEWING = replace(DEFAULT, name="renewing", revoke_on_renewal=True, renewal_grace_hours=2)
VALIDITY = dt.timedelta(days=7)
REFRESH = dt.timedelta(hours=6)
KEY = ec_key()
# RFC 6960 §4.1.1 CertIDs are SHA-1 hashes of the issuer name and key; OpenSSL still defaults to it.
SHA1 = hashes.SHA1()  # noqa: S303


def _issue(authority: CertificateAuthority, cn: str = "device", profile: Profile = DEFAULT) -> Issued:
    policy = authorize_request(profile, subject(cn), [], KEY.public_key(), authority.clock())
    return authority.issue(policy, protocol="scep", actor="tester")


def _second(dt_value: dt.datetime) -> dt.datetime:
    """X.509 and CRL times have one-second resolution."""
    return dt_value.replace(microsecond=0)


def _load_crl(record: CrlRecord) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(record.der)


def _ca_key(authority: CertificateAuthority) -> ec.EllipticCurvePublicKey:
    key = authority.certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _other_ca(store: Storage, clock: SettableClock, name: str) -> CertificateAuthority:
    subject_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Other CA {name}")])
    material = create_root_ca(generate_private_key(KeyType.P256), subject_name, 365, clock())
    issuer = register_issuer(store.issuers, name, material.certificate, kind="ca", actor="test", now=clock())
    return CertificateAuthority(
        store.certificates, issuer, material.certificate, material.chain, material.key, PublicUrls(BASE_URL), clock
    )


@pytest.fixture
def publisher(authority: CertificateAuthority) -> CrlPublisher:
    return CrlPublisher(authority, storage_of(authority).crls, VALIDITY, REFRESH)


# -- CRL: building and numbering -----------------------------------------------------------------


def test_refresh_must_be_shorter_than_validity(authority: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="shorter than its validity"):
        CrlPublisher(authority, storage_of(authority).crls, dt.timedelta(hours=1), dt.timedelta(hours=1))


def test_empty_crl(authority: CertificateAuthority, publisher: CrlPublisher, clock: SettableClock) -> None:
    record = publisher.publish("tester")
    crl = _load_crl(record)
    ca = authority.certificate
    assert record.number == 1
    assert record.issuer_id == authority.issuer.id
    assert record.this_update == clock()
    assert record.next_update == clock() + VALIDITY
    assert crl.issuer == ca.subject
    assert crl.last_update_utc == _second(clock())
    assert crl.next_update_utc == _second(clock() + VALIDITY)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert len(crl) == 0
    assert crl.is_signature_valid(_ca_key(authority))
    assert isinstance(crl.signature_hash_algorithm, hashes.SHA256)
    assert storage_of(authority).crls.latest_crl(authority.issuer.id) == record
    events = storage_of(authority).audit.audit_events(action="crl.published")
    assert [(e.actor, e.detail) for e in events] == [("tester", {"number": 1, "entries": 0})]


def test_crl_signature_does_not_verify_with_another_key(
    authority: CertificateAuthority, publisher: CrlPublisher
) -> None:
    crl = _load_crl(publisher.publish("tester"))
    assert not crl.is_signature_valid(ec_key().public_key())


def test_crl_numbers_increase(authority: CertificateAuthority, publisher: CrlPublisher, clock: SettableClock) -> None:
    numbers = []
    for _ in range(4):
        record = publisher.publish("tester")
        numbers.append(_load_crl(record).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        assert storage_of(authority).crls.latest_crl(authority.issuer.id) == record
        clock.advance(minutes=1)
    assert numbers == [1, 2, 3, 4]


def test_revoked_entries_and_reasons(
    authority: CertificateAuthority, publisher: CrlPublisher, clock: SettableClock
) -> None:
    compromised = _issue(authority, "a")
    unspecified = _issue(authority, "b")
    still_good = _issue(authority, "c")
    clock.advance(minutes=10)
    authority.revoke(compromised.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")
    compromised_at = clock()
    clock.advance(minutes=10)
    authority.revoke(unspecified.record.serial_hex, x509.ReasonFlags.unspecified, actor="admin")
    unspecified_at = clock()
    clock.advance(minutes=1)

    record = publisher.publish("tester")
    crl = _load_crl(record)
    assert crl.is_signature_valid(_ca_key(authority))
    assert len(crl) == 2
    assert crl.get_revoked_certificate_by_serial_number(still_good.certificate.serial_number) is None

    entry = crl.get_revoked_certificate_by_serial_number(compromised.certificate.serial_number)
    assert entry is not None
    assert entry.revocation_date_utc == _second(compromised_at)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise

    entry = crl.get_revoked_certificate_by_serial_number(unspecified.certificate.serial_number)
    assert entry is not None
    assert entry.revocation_date_utc == _second(unspecified_at)
    # RFC 5280 §5.3.1: reasonCode unspecified SHOULD be absent.
    assert len(entry.extensions) == 0
    assert storage_of(authority).audit.audit_events(action="crl.published")[0].detail == {"number": 1, "entries": 2}


def test_expired_certificates_leave_the_crl(
    authority: CertificateAuthority, publisher: CrlPublisher, clock: SettableClock
) -> None:
    short = _issue(authority, "short", replace(DEFAULT, validity_days=1))
    long = _issue(authority, "long")
    for issued in (short, long):
        authority.revoke(issued.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")
    crl = _load_crl(publisher.publish("tester"))
    assert {r.serial_number for r in crl} == {short.certificate.serial_number, long.certificate.serial_number}

    clock.advance(days=1, minutes=1)
    crl = _load_crl(publisher.publish("tester"))
    assert {r.serial_number for r in crl} == {long.certificate.serial_number}


def test_superseded_certificates_appear_after_the_grace_period(
    authority: CertificateAuthority, publisher: CrlPublisher, clock: SettableClock
) -> None:
    old = _issue(authority, "renewed", RENEWING)
    renewed = renew(authority, old.record, ec_key().public_key(), RENEWING, protocol="est", actor="device")
    renewed_at = clock()

    assert len(_load_crl(publisher.publish("tester"))) == 0
    clock.advance(hours=1)
    assert len(_load_crl(publisher.publish("tester"))) == 0

    clock.advance(hours=1, seconds=1)
    crl = _load_crl(publisher.publish("tester"))
    assert [r.serial_number for r in crl] == [old.certificate.serial_number]
    entry = crl.get_revoked_certificate_by_serial_number(old.certificate.serial_number)
    assert entry is not None
    assert entry.revocation_date_utc == _second(renewed_at + dt.timedelta(hours=2))
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.superseded
    # Publishing applied the supersession to the row.
    row = storage_of(authority).certificates.certificate_by_id(old.record.id)
    assert row is not None
    assert (row.status, row.revocation_reason) == ("revoked", "superseded")
    assert storage_of(authority).certificates.certificate_by_id(renewed.record.id) is not None


def test_build_crl_directly(authority: CertificateAuthority, clock: SettableClock) -> None:
    der = build_crl(authority, 42, [], clock(), clock() + dt.timedelta(hours=1))
    crl = x509.load_der_x509_crl(der)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    assert crl.is_signature_valid(_ca_key(authority))


# -- CRL: when to publish ------------------------------------------------------------------------


def test_is_due(authority: CertificateAuthority, publisher: CrlPublisher, clock: SettableClock) -> None:
    assert publisher.is_due(None, clock())
    crl = publisher.publish("tester")
    assert not publisher.is_due(crl, clock())
    clock.advance(hours=5, minutes=59)
    assert not publisher.is_due(crl, clock())
    clock.advance(minutes=1)
    assert publisher.is_due(crl, clock())  # refresh interval reached


def test_is_due_past_next_update(authority: CertificateAuthority, clock: SettableClock) -> None:
    publisher = CrlPublisher(authority, storage_of(authority).crls, dt.timedelta(hours=1), dt.timedelta(minutes=59))
    crl = publisher.publish("tester")
    stale = replace(crl, next_update=crl.this_update + dt.timedelta(minutes=30))
    clock.advance(minutes=31)
    assert not publisher.is_due(replace(stale, next_update=crl.next_update), clock())
    assert publisher.is_due(stale, clock())


def test_is_due_after_a_revocation(
    authority: CertificateAuthority, publisher: CrlPublisher, clock: SettableClock
) -> None:
    issued = _issue(authority)
    crl = publisher.publish("tester")
    clock.advance(minutes=1)
    assert not publisher.is_due(crl, clock())
    authority.revoke(issued.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")
    assert publisher.is_due(crl, clock())
    clock.advance(minutes=1)
    fresh = publisher.publish("tester")
    clock.advance(minutes=1)
    assert not publisher.is_due(fresh, clock())


def test_is_due_when_a_grace_period_ends(
    authority: CertificateAuthority, publisher: CrlPublisher, clock: SettableClock
) -> None:
    old = _issue(authority, "renewed", RENEWING)
    renew(authority, old.record, ec_key().public_key(), RENEWING, protocol="est", actor="device")
    clock.advance(hours=1)
    crl = publisher.publish("tester")
    clock.advance(minutes=59)
    assert not publisher.is_due(crl, clock())
    clock.advance(minutes=2)  # the old certificate now counts as revoked, long before the refresh
    assert publisher.is_due(crl, clock())


def test_current_reuses_the_stored_crl_until_due(
    authority: CertificateAuthority, publisher: CrlPublisher, clock: SettableClock
) -> None:
    first = publisher.current("tester")
    assert first.number == 1
    clock.advance(hours=1)
    assert publisher.current("tester") == first
    issued = _issue(authority)
    authority.revoke(issued.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")
    second = publisher.current("tester")
    assert second.number == 2
    assert len(_load_crl(second)) == 1
    clock.advance(hours=6)
    assert publisher.current("tester").number == 3


def test_publish_returns_a_concurrent_newer_crl(
    authority: CertificateAuthority, publisher: CrlPublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes publish at once: the one holding the older number yields to the newer CRL."""
    store = storage_of(authority)
    allocate = publisher.crls.allocate_crl_number

    def allocate_then_lose_the_race(issuer_id: int) -> int:
        number = allocate(issuer_id)
        monkeypatch.setattr(publisher.crls, "allocate_crl_number", allocate)
        publisher.publish("other-node")  # takes number + 1 and stores it first
        return number

    monkeypatch.setattr(publisher.crls, "allocate_crl_number", allocate_then_lose_the_race)
    result = publisher.publish("tester")
    assert result.number == 2
    assert store.crls.latest_crl(authority.issuer.id) == result
    assert [e.actor for e in store.audit.audit_events(action="crl.published")] == ["other-node"]


# -- CRL checked by OpenSSL ----------------------------------------------------------------------


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENSSL_CONF": "/dev/null"}
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, env=env, check=False
    )


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return path


def test_openssl_verify_with_crl(authority: CertificateAuthority, publisher: CrlPublisher, tmp_path: Path) -> None:
    good = _issue(authority, "good")
    compromised = _issue(authority, "compromised")
    unspecified = _issue(authority, "unspecified")
    authority.revoke(compromised.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")
    authority.revoke(unspecified.record.serial_hex, x509.ReasonFlags.unspecified, actor="admin")
    crl = _load_crl(publisher.publish("tester"))

    ca_pem = _pem(tmp_path / "ca.pem", authority.certificate)
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(crl.public_bytes(Encoding.PEM))

    checked = _openssl("crl", "-in", crl_pem, "-CAfile", ca_pem, "-noout", "-text")
    assert checked.returncode == 0, checked.stderr
    assert "verify OK" in checked.stderr + checked.stdout
    assert "Key Compromise" in checked.stdout

    ok = _openssl(
        "verify", "-crl_check", "-CAfile", ca_pem, "-CRLfile", crl_pem, _pem(tmp_path / "good.pem", good.certificate)
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith("good.pem: OK")

    for name, issued in (("compromised", compromised), ("unspecified", unspecified)):
        cert_pem = _pem(tmp_path / f"{name}.pem", issued.certificate)
        revoked = _openssl("verify", "-crl_check", "-CAfile", ca_pem, "-CRLfile", crl_pem, cert_pem)
        assert revoked.returncode != 0
        assert "certificate revoked" in revoked.stdout + revoked.stderr


def test_openssl_refuses_a_crl_from_another_ca(
    authority: CertificateAuthority, store: Storage, clock: SettableClock, tmp_path: Path
) -> None:
    """The negative control for the test above: OpenSSL does check the CRL's signer."""
    other = _other_ca(store, clock, "other")
    good = _issue(authority, "good")
    forged = x509.load_der_x509_crl(build_crl(other, 1, [], clock(), clock() + VALIDITY))
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(forged.public_bytes(Encoding.PEM))
    result = _openssl(
        "verify", "-crl_check", "-CAfile", _pem(tmp_path / "ca.pem", authority.certificate), "-CRLfile", crl_pem,
        _pem(tmp_path / "good.pem", good.certificate),
    )  # fmt: skip
    assert result.returncode != 0
    assert "unable to get certificate CRL" in result.stdout + result.stderr


# -- OCSP ----------------------------------------------------------------------------------------

OCSP_VALIDITY = dt.timedelta(hours=1)
NONCE = bytes(range(16))


def _request(
    cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm, nonce: bytes | None = NONCE
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def _verify_signature(response: ocsp.OCSPResponse, ca: x509.Certificate) -> None:
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    algorithm = response.signature_hash_algorithm
    assert algorithm is not None
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))


def _answer(responder: OcspResponder, request: bytes, ca: x509.Certificate) -> ocsp.OCSPResponse:
    answer = responder.respond(request)
    assert answer.http_status == 200
    response = ocsp.load_der_ocsp_response(answer.der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    _verify_signature(response, ca)
    return response


@pytest.fixture
def responder(authority: CertificateAuthority) -> OcspResponder:
    return OcspResponder([authority], OCSP_VALIDITY)


@pytest.mark.parametrize(
    "algorithm",
    [
        pytest.param(SHA1, id="sha1"),
        pytest.param(hashes.SHA256(), id="sha256"),
        pytest.param(hashes.SHA384(), id="sha384"),
        pytest.param(hashes.SHA512(), id="sha512"),
    ],
)
def test_ocsp_good(
    authority: CertificateAuthority, responder: OcspResponder, clock: SettableClock, algorithm: hashes.HashAlgorithm
) -> None:
    issued = _issue(authority)
    request_der = _request(issued.certificate, authority.certificate, algorithm)
    request = ocsp.load_der_ocsp_request(request_der)
    answer = responder.respond(request_der)
    assert answer.log == f"serial {issued.record.serial_hex}: good"
    response = _answer(responder, request_der, authority.certificate)

    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == issued.certificate.serial_number
    assert isinstance(response.hash_algorithm, type(algorithm))
    assert response.issuer_name_hash == request.issuer_name_hash
    assert response.issuer_key_hash == request.issuer_key_hash
    assert response.this_update_utc == _second(clock())
    assert response.next_update_utc == _second(clock() + OCSP_VALIDITY)
    assert response.revocation_time_utc is None
    assert response.revocation_reason is None
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == NONCE
    ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert response.responder_key_hash == ski
    assert response.responder_name is None


def test_ocsp_without_nonce_has_no_nonce(authority: CertificateAuthority, responder: OcspResponder) -> None:
    issued = _issue(authority)
    response = _answer(
        responder, _request(issued.certificate, authority.certificate, SHA1, None), authority.certificate
    )
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    with pytest.raises(x509.ExtensionNotFound):
        response.extensions.get_extension_for_class(x509.OCSPNonce)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        pytest.param(x509.ReasonFlags.key_compromise, x509.ReasonFlags.key_compromise, id="key-compromise"),
        pytest.param(x509.ReasonFlags.cessation_of_operation, x509.ReasonFlags.cessation_of_operation, id="cessation"),
        pytest.param(x509.ReasonFlags.unspecified, x509.ReasonFlags.unspecified, id="unspecified"),
    ],
)
def test_ocsp_revoked(
    authority: CertificateAuthority,
    responder: OcspResponder,
    clock: SettableClock,
    reason: x509.ReasonFlags,
    expected: x509.ReasonFlags,
) -> None:
    issued = _issue(authority)
    clock.advance(minutes=3)
    authority.revoke(issued.record.serial_hex, reason, actor="admin")
    revoked_at = clock()
    clock.advance(minutes=1)
    request = _request(issued.certificate, authority.certificate, hashes.SHA256())
    assert responder.respond(request).log.endswith(": revoked")
    response = _answer(responder, request, authority.certificate)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == _second(revoked_at)
    assert response.revocation_reason is expected
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == NONCE


def test_ocsp_superseded_after_grace(
    authority: CertificateAuthority, responder: OcspResponder, clock: SettableClock
) -> None:
    old = _issue(authority, "renewed", RENEWING)
    renew(authority, old.record, ec_key().public_key(), RENEWING, protocol="est", actor="device")
    supersede_at = clock() + dt.timedelta(hours=2)
    request = _request(old.certificate, authority.certificate, SHA1)

    clock.advance(hours=1)
    assert _answer(responder, request, authority.certificate).certificate_status is ocsp.OCSPCertStatus.GOOD
    clock.advance(hours=1, minutes=1)  # before any sweep applied it to the row
    response = _answer(responder, request, authority.certificate)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == _second(supersede_at)
    assert response.revocation_reason is x509.ReasonFlags.superseded


def test_ocsp_unknown_serial(authority: CertificateAuthority, responder: OcspResponder, clock: SettableClock) -> None:
    _issue(authority)
    # A certificate with our issuer's name and key hashes that we never recorded.
    stranger = (
        x509.CertificateBuilder()
        .subject_name(subject("stranger"))
        .issuer_name(authority.certificate.subject)
        .public_key(KEY.public_key())
        .serial_number(0x1234567)
        .not_valid_before(clock())
        .not_valid_after(clock() + dt.timedelta(days=1))
        .sign(authority.key, hashes.SHA256())
    )
    request = _request(stranger, authority.certificate, hashes.SHA256())
    answer = responder.respond(request)
    assert answer.log == "serial 1234567: unknown"
    response = _answer(responder, request, authority.certificate)
    assert response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    assert response.serial_number == 0x1234567
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == NONCE


def test_ocsp_foreign_issuer_is_unauthorized(
    authority: CertificateAuthority, responder: OcspResponder, store: Storage, clock: SettableClock
) -> None:
    other = _other_ca(store, clock, "foreign")
    issued = _issue(other)
    answer = responder.respond(_request(issued.certificate, other.certificate, SHA1))
    assert answer.http_status == 200
    assert "not our issuer" in answer.log
    response = ocsp.load_der_ocsp_response(answer.der)
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_ocsp_same_name_other_key_is_unauthorized(
    authority: CertificateAuthority, responder: OcspResponder, store: Storage, clock: SettableClock
) -> None:
    """The issuer key hash matters, not just the name: a rogue CA named like ours gets no answer."""
    material = create_root_ca(generate_private_key(KeyType.P256), authority.certificate.subject, 365, clock())
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            issuer_name_hash=ocsp.load_der_ocsp_request(
                _request(_issue(authority).certificate, authority.certificate, SHA1)
            ).issuer_name_hash,
            issuer_key_hash=material.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value.digest,
            serial_number=1,
            algorithm=SHA1,
        )
        .build()
        .public_bytes(Encoding.DER)
    )
    response = ocsp.load_der_ocsp_response(responder.respond(request).der)
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="fail/empty"),
        pytest.param(b"garbage", id="fail/garbage"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="fail/wrong-der"),
    ],
)
def test_ocsp_malformed(responder: OcspResponder, data: bytes) -> None:
    answer = responder.respond(data)
    assert answer.http_status == 400
    assert answer.log.startswith("malformed")
    assert ocsp.load_der_ocsp_response(answer.der).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_ocsp_truncated_request_is_malformed(authority: CertificateAuthority, responder: OcspResponder) -> None:
    request = _request(_issue(authority).certificate, authority.certificate, SHA1)
    answer = responder.respond(request[:-5])
    assert answer.http_status == 400
    assert ocsp.load_der_ocsp_response(answer.der).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_ocsp_answers_for_each_of_several_issuers(
    authority: CertificateAuthority, store: Storage, clock: SettableClock
) -> None:
    other = _other_ca(store, clock, "second")
    responder = OcspResponder([authority, other], OCSP_VALIDITY)
    mine, theirs = _issue(authority), _issue(other)
    other.revoke(theirs.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")
    good = _answer(responder, _request(mine.certificate, authority.certificate, SHA1), authority.certificate)
    bad = _answer(responder, _request(theirs.certificate, other.certificate, SHA1), other.certificate)
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert bad.certificate_status is ocsp.OCSPCertStatus.REVOKED
    with pytest.raises(InvalidSignature):  # the response is signed by the other CA
        _verify_signature(bad, authority.certificate)


# -- OCSP checked by OpenSSL ---------------------------------------------------------------------


@pytest.mark.parametrize("digest", ["sha1", "sha256"])
def test_openssl_ocsp_good_and_revoked(
    authority: CertificateAuthority, responder: OcspResponder, tmp_path: Path, digest: str
) -> None:
    ca_pem = _pem(tmp_path / "ca.pem", authority.certificate)
    good = _issue(authority, "good")
    compromised = _issue(authority, "compromised")
    authority.revoke(compromised.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")

    for name, issued, expected in (("good", good, "good"), ("bad", compromised, "revoked")):
        cert_pem = _pem(tmp_path / f"{name}.pem", issued.certificate)
        request = tmp_path / f"{name}-req.der"
        made = _openssl("ocsp", f"-{digest}", "-issuer", ca_pem, "-cert", cert_pem, "-reqout", request)
        assert made.returncode == 0, made.stderr
        answer = responder.respond(request.read_bytes())
        assert answer.http_status == 200
        response = tmp_path / f"{name}-resp.der"
        response.write_bytes(answer.der)

        # With -reqin alone OpenSSL checks the signature and that our nonce echoes its own request's.
        nonce_checked = _openssl(
            "ocsp", "-reqin", request, "-respin", response, "-CAfile", ca_pem, "-verify_other", ca_pem
        )
        assert nonce_checked.returncode == 0, nonce_checked.stderr
        assert "Response verify OK" in nonce_checked.stderr
        assert "WARNING" not in nonce_checked.stdout + nonce_checked.stderr

        # -cert makes OpenSSL build a new request (with a new nonce, hence -no_nonce) to look the status up.
        for trust in ("-CAfile", "-VAfile"):
            result = _openssl(
                "ocsp", f"-{digest}", "-no_nonce", "-respin", response, "-issuer", ca_pem, trust, ca_pem,
                "-cert", cert_pem,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "Response verify OK" in result.stderr
            assert f"{cert_pem}: {expected}" in result.stdout
            if expected == "revoked":
                assert "Reason: keyCompromise" in result.stdout


def test_openssl_notices_a_nonce_that_was_not_echoed(
    authority: CertificateAuthority, responder: OcspResponder, tmp_path: Path
) -> None:
    """Negative control for the nonce check above: a response to another request fails it."""
    ca_pem = _pem(tmp_path / "ca.pem", authority.certificate)
    cert_pem = _pem(tmp_path / "good.pem", _issue(authority, "good").certificate)
    first, second = tmp_path / "first.der", tmp_path / "second.der"
    for request in (first, second):
        assert _openssl("ocsp", "-issuer", ca_pem, "-cert", cert_pem, "-reqout", request).returncode == 0
    response = tmp_path / "resp.der"
    response.write_bytes(responder.respond(first.read_bytes()).der)
    result = _openssl("ocsp", "-reqin", second, "-respin", response, "-CAfile", ca_pem, "-verify_other", ca_pem)
    assert "Nonce Verify error" in result.stderr


def test_openssl_ocsp_rejects_a_response_signed_by_another_ca(
    authority: CertificateAuthority, store: Storage, clock: SettableClock, tmp_path: Path
) -> None:
    """Negative control: OpenSSL does check who signed the response."""
    other = _other_ca(store, clock, "impostor")
    good = _issue(authority, "good")
    ca_pem = _pem(tmp_path / "ca.pem", authority.certificate)
    cert_pem = _pem(tmp_path / "good.pem", good.certificate)
    # The impostor answers for our CA's certificate IDs.
    forged = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=good.certificate,
            issuer=authority.certificate,
            algorithm=SHA1,
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=clock(),
            next_update=clock() + OCSP_VALIDITY,
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, other.certificate)
        .sign(other.key, hashes.SHA256())
    )
    response = tmp_path / "resp.der"
    response.write_bytes(forged.public_bytes(Encoding.DER))
    result = _openssl("ocsp", "-respin", response, "-issuer", ca_pem, "-CAfile", ca_pem, "-cert", cert_pem)
    assert "Response verify OK" not in result.stdout + result.stderr
    assert "Response Verify Failure" in result.stdout + result.stderr
