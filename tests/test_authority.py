"""The CA: what it signs, what it records, renewal, revocation, serial collisions, key checks."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from shared_ca.authority import (
    MAX_SERIAL_ATTEMPTS,
    CertificateAuthority,
    Issued,
    PublicUrls,
    fingerprint,
    parse_reason,
    signature_hash,
)
from shared_ca.ca_material import create_root_ca, register_issuer
from shared_ca.errors import Conflict, KeyMaterialError, NotFound, PolicyDenied
from shared_ca.keys import KeyType, PrivateKey, generate_private_key, public_key_bytes
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES, Profile
from shared_ca.serials import new_serial, serial_hex
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.repositories import Storage
from tests.conftest import BASE_URL
from tests.support import SettableClock, ec_key, ed_key, renew, rsa_key, storage_of, subject

DEFAULT = DEFAULT_PROFILES["default"]
ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)
SUBJECT_KEY = ec_key()


def _issue(
    authority: CertificateAuthority,
    profile: Profile = DEFAULT,
    name: x509.Name | None = None,
    sans: list[x509.GeneralName] | None = None,
    key: PrivateKey | None = None,
    *,
    requester: str | None = None,
) -> Issued:
    public_key = (key or SUBJECT_KEY).public_key()
    policy = authorize_request(profile, subject() if name is None else name, sans or [], public_key, authority.clock())
    return authority.issue(policy, protocol="est", actor="tester", requester=requester)


def _ext(cert: x509.Certificate, kind: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    return cert.extensions.get_extension_for_class(kind)


# -- what is signed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "usages", "ekus"),
    [
        pytest.param(
            DEFAULT, {"digital_signature", "key_encipherment"}, [ExtendedKeyUsageOID.CLIENT_AUTH], id="ok/default"
        ),
        pytest.param(
            DEFAULT_PROFILES["tls-server"],
            {"digital_signature", "key_encipherment"},
            [ExtendedKeyUsageOID.SERVER_AUTH],
            id="ok/tls-server",
        ),
        pytest.param(
            replace(
                DEFAULT,
                name="agreement",
                key_usage=("digital_signature", "key_agreement"),
                extended_key_usage=("client_auth", "server_auth"),
            ),
            {"digital_signature", "key_agreement"},
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
            id="ok/key-agreement-two-ekus",
        ),
        pytest.param(
            replace(DEFAULT, name="no-eku", key_usage=("digital_signature",), extended_key_usage=()),
            {"digital_signature"},
            None,
            id="ok/no-eku",
        ),
    ],
)
def test_issued_certificate_extensions(
    authority: CertificateAuthority, profile: Profile, usages: set[str], ekus: list[x509.ObjectIdentifier] | None
) -> None:
    issued = _issue(authority, profile, subject("dev1.example"), [x509.DNSName("dev1.example")])
    cert = issued.certificate
    ca = authority.certificate

    assert cert.issuer == ca.subject
    assert cert.subject == subject("dev1.example")
    assert cert.version is x509.Version.v3
    cert.verify_directly_issued_by(ca)

    ski = _ext(cert, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(SUBJECT_KEY.public_key())

    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    assert not aki.critical
    assert aki.value.key_identifier == _ext(ca, x509.SubjectKeyIdentifier).value.digest

    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    assert constraints.value.path_length is None

    key_usage = _ext(cert, x509.KeyUsage)
    assert key_usage.critical
    for name in ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign"):  # fmt: skip
        assert getattr(key_usage.value, name) is (name in usages), name

    if ekus is None:
        with pytest.raises(x509.ExtensionNotFound):
            _ext(cert, x509.ExtendedKeyUsage)
    else:
        eku = _ext(cert, x509.ExtendedKeyUsage)
        assert not eku.critical
        assert list(eku.value) == ekus

    crl_dp = _ext(cert, x509.CRLDistributionPoints)
    assert not crl_dp.critical
    assert [p.full_name for p in crl_dp.value] == [[x509.UniformResourceIdentifier(f"{BASE_URL}/crl/ca.crl")]]

    aia = _ext(cert, x509.AuthorityInformationAccess)
    assert not aia.critical
    assert [(d.access_method, d.access_location.value) for d in aia.value] == [
        (AuthorityInformationAccessOID.OCSP, f"{BASE_URL}/ocsp"),
        (AuthorityInformationAccessOID.CA_ISSUERS, f"{BASE_URL}/ca/ca.crt"),
    ]

    san = _ext(cert, x509.SubjectAlternativeName)
    assert not san.critical  # the subject is not empty
    assert list(san.value) == [x509.DNSName("dev1.example")]


def test_san_is_critical_when_the_subject_is_empty(authority: CertificateAuthority) -> None:
    profile = replace(DEFAULT, subject_required=())
    cert = _issue(authority, profile, x509.Name([]), [x509.DNSName("only.example")]).certificate
    assert cert.subject == x509.Name([])
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.DNSName("only.example")]


def test_no_san_extension_without_sans(authority: CertificateAuthority) -> None:
    cert = _issue(authority).certificate
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.SubjectAlternativeName)


def test_public_urls_strip_trailing_slash() -> None:
    urls = PublicUrls("https://pki.example/base/")
    assert urls.crl("ca") == "https://pki.example/base/crl/ca.crl"
    assert urls.ocsp() == "https://pki.example/base/ocsp"
    assert urls.ca_issuers("ca") == "https://pki.example/base/ca/ca.crt"


def test_validity_follows_the_profile(authority: CertificateAuthority, clock: SettableClock) -> None:
    profile = replace(DEFAULT, validity_days=30, backdate_minutes=2)
    cert = _issue(authority, profile).certificate
    # X.509 times have one-second resolution.
    assert cert.not_valid_before_utc == (clock() - dt.timedelta(minutes=2)).replace(microsecond=0)
    assert cert.not_valid_after_utc == (clock() + dt.timedelta(days=30)).replace(microsecond=0)


def test_validity_clamped_to_the_ca(authority: CertificateAuthority) -> None:
    """A certificate never outlives (or predates) the CA that signed it."""
    profile = replace(DEFAULT, validity_days=36500, backdate_minutes=1440)
    issued = _issue(authority, profile)
    assert issued.certificate.not_valid_after_utc == authority.certificate.not_valid_after_utc
    assert issued.certificate.not_valid_before_utc == authority.certificate.not_valid_before_utc
    assert issued.record.not_after == authority.certificate.not_valid_after_utc


def test_expired_ca_refuses_to_issue(authority: CertificateAuthority, clock: SettableClock) -> None:
    clock.now = authority.certificate.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(KeyMaterialError, match="has expired"):
        _issue(authority, replace(DEFAULT, validity_days=1))
    assert storage_of(authority).certificates.count_certificates() == 0


@pytest.mark.parametrize(
    ("key_type", "algorithm"),
    [
        pytest.param(KeyType.P384, hashes.SHA384, id="p384-sha384"),
        pytest.param(KeyType.P521, hashes.SHA512, id="p521-sha512"),
        pytest.param(KeyType.ED25519, None, id="ed25519"),
    ],
)
def test_other_ca_key_types_sign_verifiable_certificates(
    store: Storage, clock: SettableClock, key_type: KeyType, algorithm: type[hashes.HashAlgorithm] | None
) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"CA {key_type.value}")])
    material = create_root_ca(generate_private_key(key_type), name, 365, clock())
    issuer = register_issuer(store.issuers, key_type.value, material.certificate, kind="ca", actor="test", now=clock())
    ca = CertificateAuthority(
        store.certificates, issuer, material.certificate, material.chain, material.key, PublicUrls(BASE_URL), clock
    )
    cert = _issue(ca).certificate
    cert.verify_directly_issued_by(material.certificate)
    if algorithm is None:
        assert cert.signature_hash_algorithm is None
    else:
        assert isinstance(cert.signature_hash_algorithm, algorithm)
    assert _ext(cert, x509.CRLDistributionPoints).value[0].full_name == [
        x509.UniformResourceIdentifier(f"{BASE_URL}/crl/{key_type.value}.crl")
    ]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param(rsa_key(), hashes.SHA256, id="rsa"),
        pytest.param(ec_key(ec.SECP256R1()), hashes.SHA256, id="p256"),
        pytest.param(ec_key(ec.SECP384R1()), hashes.SHA384, id="p384"),
        pytest.param(ec_key(ec.SECP521R1()), hashes.SHA512, id="p521"),
    ],
)
def test_signature_hash(key: PrivateKey, expected: type[hashes.HashAlgorithm]) -> None:
    assert isinstance(signature_hash(key), expected)


def test_signature_hash_ed25519() -> None:
    assert signature_hash(ed_key()) is None


@pytest.mark.parametrize(
    "subject_key",
    [
        pytest.param(rsa_key(), id="rsa-2048"),
        pytest.param(ec_key(ec.SECP384R1()), id="p384"),
    ],
)
def test_subject_key_types(authority: CertificateAuthority, subject_key: PrivateKey) -> None:
    issued = _issue(authority, key=subject_key)
    assert public_key_bytes(issued.certificate.public_key()) == public_key_bytes(subject_key.public_key())
    expected = "RSA-2048" if isinstance(subject_key, rsa.RSAPrivateKey) else "EC P-384"
    assert issued.record.key_type == expected


# -- what is recorded ----------------------------------------------------------------------------


def test_record_and_audit_event(authority: CertificateAuthority, clock: SettableClock) -> None:
    sans: list[x509.GeneralName] = [x509.DNSName("dev1.example"), x509.RFC822Name("dev1@example.com")]
    issued = _issue(authority, DEFAULT, subject("dev1", O="Org"), sans, requester="alice@10.0.0.5")
    cert, record = issued.certificate, issued.record
    store = storage_of(authority)

    assert record.serial_hex == serial_hex(cert.serial_number)
    assert record.issuer_id == authority.issuer.id
    assert record.fingerprint_sha256 == fingerprint(cert)
    assert record.subject == cert.subject.rfc4514_string() == "O=Org,CN=dev1"
    assert record.common_name == "dev1"
    assert record.sans == ("dns:dev1.example", "email:dev1@example.com")
    assert record.key_type == "EC P-256"
    assert record.profile == "default"
    assert record.protocol == "est"
    assert record.requester == "alice@10.0.0.5"
    assert record.status == "valid"
    assert record.revoked_at is None
    assert record.supersede_at is None
    assert record.renewed_from_id is None
    assert record.created_at == clock()
    assert record.not_before == cert.not_valid_before_utc
    assert record.not_after == cert.not_valid_after_utc
    assert x509.load_der_x509_certificate(record.der) == cert
    assert record.effective_status(clock()) == "valid"

    assert store.certificates.certificate(authority.issuer.id, record.serial_hex) == record
    assert store.certificates.certificate_by_fingerprint(record.fingerprint_sha256) == record
    assert store.certificates.certificates_by_serial(record.serial_hex) == [record]

    events = store.audit.audit_events(action="certificate.issued")
    assert len(events) == 1
    event = events[0]
    assert event.serial_hex == record.serial_hex
    assert event.issuer_id == authority.issuer.id
    assert event.actor == "tester"
    assert event.occurred_at == clock()
    assert event.detail == {"subject": "O=Org,CN=dev1", "profile": "default", "protocol": "est", "key": "EC P-256"}


def test_serials_are_unique_and_random(authority: CertificateAuthority) -> None:
    serials = {_issue(authority).certificate.serial_number for _ in range(20)}
    assert len(serials) == 20
    assert all(0 < s < 2**159 for s in serials)
    assert storage_of(authority).certificates.count_certificates(authority.issuer.id) == 20


# -- serial collisions ---------------------------------------------------------------------------


def test_forced_serial_collision_is_retried(authority: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _issue(authority)
    taken = first.certificate.serial_number
    drawn: list[int] = []

    def colliding_once() -> int:
        value = taken if not drawn else new_serial()
        drawn.append(value)
        return value

    monkeypatch.setattr("shared_ca.authority.new_serial", colliding_once)
    second = _issue(authority)

    assert drawn[0] == taken
    assert len(drawn) == 2
    assert second.certificate.serial_number == drawn[1] != taken
    assert second.record.serial_hex == serial_hex(drawn[1])
    store = storage_of(authority)
    assert store.certificates.count_certificates() == 2
    assert store.certificates.certificate(authority.issuer.id, serial_hex(taken)) == first.record
    # The losing attempt left neither a row nor an audit event behind.
    assert sorted(e.serial_hex or "" for e in store.audit.audit_events(action="certificate.issued")) == sorted(
        [first.record.serial_hex, second.record.serial_hex]
    )


def test_exhausted_serial_retries_are_a_conflict(
    authority: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = _issue(authority).certificate.serial_number
    calls: list[int] = []

    def always_taken() -> int:
        calls.append(taken)
        return taken

    monkeypatch.setattr("shared_ca.authority.new_serial", always_taken)
    with pytest.raises(Conflict, match="unique serial"):
        _issue(authority)
    assert len(calls) == MAX_SERIAL_ATTEMPTS
    assert storage_of(authority).certificates.count_certificates() == 1
    assert len(storage_of(authority).audit.audit_events(action="certificate.issued")) == 1


def test_same_serial_under_another_issuer_is_no_collision(
    authority: CertificateAuthority, clock: SettableClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uniqueness is per issuer (RFC 5280 §4.1.2.2), not global."""
    taken = _issue(authority).certificate.serial_number
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Second CA")])
    material = create_root_ca(generate_private_key(KeyType.P256), name, 365, clock())
    issuer = register_issuer(
        storage_of(authority).issuers, "second", material.certificate, kind="ca", actor="t", now=clock()
    )
    second = CertificateAuthority(
        storage_of(authority).certificates,
        issuer,
        material.certificate,
        material.chain,
        material.key,
        PublicUrls(BASE_URL),
        clock,
    )
    monkeypatch.setattr("shared_ca.authority.new_serial", lambda: taken)
    issued = _issue(second)
    assert issued.certificate.serial_number == taken
    assert len(storage_of(authority).certificates.certificates_by_serial(serial_hex(taken))) == 2


# -- key material --------------------------------------------------------------------------------


def test_ca_key_not_matching_its_certificate_is_refused(authority: CertificateAuthority) -> None:
    with pytest.raises(KeyMaterialError, match="does not match its certificate"):
        CertificateAuthority(
            storage_of(authority).certificates,
            authority.issuer,
            authority.certificate,
            authority.chain,
            generate_private_key(KeyType.P256),
            authority.urls,
        )


def test_ca_key_of_another_type_is_refused(authority: CertificateAuthority) -> None:
    other: PrivateKey = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(KeyMaterialError):
        CertificateAuthority(
            storage_of(authority).certificates,
            authority.issuer,
            authority.certificate,
            authority.chain,
            other,
            authority.urls,
        )


# -- renewal -------------------------------------------------------------------------------------

RENEWING = replace(DEFAULT, name="renewing", revoke_on_renewal=True, renewal_grace_hours=2)


def test_renewal_keeps_subject_and_sans_and_links_the_records(
    authority: CertificateAuthority, clock: SettableClock
) -> None:
    sans: list[x509.GeneralName] = [x509.DNSName("dev1.example")]
    old = _issue(authority, RENEWING, subject("dev1", O="Org"), sans)
    clock.advance(days=200)
    new_key = ec_key()
    renewed = renew(authority, old.record, new_key.public_key(), RENEWING, protocol="scep", actor="device")

    cert = renewed.certificate
    cert.verify_directly_issued_by(authority.certificate)
    assert cert.subject == old.certificate.subject
    assert list(_ext(cert, x509.SubjectAlternativeName).value) == sans
    assert public_key_bytes(cert.public_key()) == public_key_bytes(new_key.public_key())
    assert cert.serial_number != old.certificate.serial_number
    assert cert.not_valid_after_utc == (clock() + dt.timedelta(days=365)).replace(microsecond=0)
    assert renewed.record.renewed_from_id == old.record.id
    assert renewed.record.protocol == "scep"
    assert renewed.record.sans == old.record.sans

    events = storage_of(authority).audit.audit_events(action="certificate.renewed")
    assert [(e.serial_hex, e.actor, e.detail["renewal_of"]) for e in events] == [
        (renewed.record.serial_hex, "device", old.record.serial_hex)
    ]


def test_renewal_supersedes_the_old_certificate_after_the_grace_period(
    authority: CertificateAuthority, clock: SettableClock
) -> None:
    store = storage_of(authority)
    old = _issue(authority, RENEWING)
    renew(authority, old.record, ec_key().public_key(), RENEWING, protocol="est", actor="device")
    renewed_at = clock()

    during_grace = store.certificates.certificate_by_id(old.record.id)
    assert during_grace is not None
    assert during_grace.status == "valid"
    assert during_grace.supersede_at == renewed_at + dt.timedelta(hours=2)
    assert during_grace.effective_status(clock()) == "valid"
    assert store.crls.apply_due_supersessions(clock(), "crl") == 0

    clock.advance(hours=1, minutes=59)
    assert during_grace.effective_status(clock()) == "valid"
    assert store.crls.apply_due_supersessions(clock(), "crl") == 0

    clock.advance(minutes=2)
    assert during_grace.effective_status(clock()) == "revoked"  # even before the sweep
    assert [r.id for r in store.certificates.list_certificates(now=clock(), status="revoked")] == [old.record.id]
    assert store.crls.apply_due_supersessions(clock(), "crl") == 1
    after = store.certificates.certificate_by_id(old.record.id)
    assert after is not None
    assert after.status == "revoked"
    assert after.revocation_reason == "superseded"
    assert after.revoked_at == renewed_at + dt.timedelta(hours=2)
    assert store.crls.apply_due_supersessions(clock(), "crl") == 0  # applied once only

    revoked_events = store.audit.audit_events(action="certificate.revoked")
    assert [(e.serial_hex, e.actor, e.detail) for e in revoked_events] == [
        (old.record.serial_hex, "crl", {"reason": "superseded"})
    ]


def test_renewal_without_revoke_on_renewal_leaves_the_old_certificate_alone(
    authority: CertificateAuthority, clock: SettableClock
) -> None:
    old = _issue(authority)
    renew(authority, old.record, ec_key().public_key(), DEFAULT, protocol="est", actor="device")
    clock.advance(days=30)
    assert storage_of(authority).crls.apply_due_supersessions(clock(), "crl") == 0
    after = storage_of(authority).certificates.certificate_by_id(old.record.id)
    assert after is not None
    assert after.supersede_at is None
    assert after.effective_status(clock()) == "valid"


def test_renewal_with_zero_grace_supersedes_at_once(authority: CertificateAuthority, clock: SettableClock) -> None:
    profile = replace(RENEWING, renewal_grace_hours=0)
    old = _issue(authority, profile)
    renew(authority, old.record, ec_key().public_key(), profile, protocol="est", actor="device")
    after = storage_of(authority).certificates.certificate_by_id(old.record.id)
    assert after is not None
    assert after.effective_status(clock()) == "revoked"


def test_renewing_a_revoked_certificate_is_refused(authority: CertificateAuthority) -> None:
    old = _issue(authority)
    revoked = authority.revoke(old.record.serial_hex, x509.ReasonFlags.key_compromise, actor="admin")
    with pytest.raises(PolicyDenied, match="is revoked"):
        renew(authority, revoked, ec_key().public_key(), DEFAULT, protocol="est", actor="device")
    assert storage_of(authority).certificates.count_certificates() == 1


def test_renewing_a_superseded_certificate_is_refused(authority: CertificateAuthority, clock: SettableClock) -> None:
    old = _issue(authority, RENEWING)
    renew(authority, old.record, ec_key().public_key(), RENEWING, protocol="est", actor="device")
    clock.advance(hours=3)
    current = storage_of(authority).certificates.certificate_by_id(old.record.id)
    assert current is not None
    with pytest.raises(PolicyDenied, match="is revoked"):
        renew(authority, current, ec_key().public_key(), RENEWING, protocol="est", actor="device")


def test_renewing_an_expired_certificate_is_refused(authority: CertificateAuthority, clock: SettableClock) -> None:
    old = _issue(authority, replace(DEFAULT, validity_days=1))
    clock.advance(days=1, minutes=1)
    with pytest.raises(PolicyDenied, match="is expired"):
        renew(authority, old.record, ec_key().public_key(), DEFAULT, protocol="est", actor="device")
    assert storage_of(authority).certificates.count_certificates() == 1


def test_renewal_key_reuse_refused_by_profile(authority: CertificateAuthority) -> None:
    profile = replace(DEFAULT, allow_key_reuse=False)
    old = _issue(authority, profile)
    with pytest.raises(PolicyDenied, match="requires a new key"):
        renew(authority, old.record, SUBJECT_KEY.public_key(), profile, protocol="est", actor="device")


# -- revocation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "stored"),
    [
        pytest.param(x509.ReasonFlags.key_compromise, "keyCompromise", id="key-compromise"),
        pytest.param(x509.ReasonFlags.unspecified, "unspecified", id="unspecified"),
        pytest.param(x509.ReasonFlags.cessation_of_operation, "cessationOfOperation", id="cessation"),
    ],
)
def test_revoke(authority: CertificateAuthority, clock: SettableClock, reason: x509.ReasonFlags, stored: str) -> None:
    issued = _issue(authority)
    clock.advance(hours=5)
    record = authority.revoke(issued.record.serial_hex, reason, actor="admin")
    assert record.id == issued.record.id
    assert record.status == "revoked"
    assert record.revocation_reason == stored
    assert record.revoked_at == clock()
    assert record.effective_status(clock()) == "revoked"
    assert storage_of(authority).certificates.certificate(authority.issuer.id, issued.record.serial_hex) == record

    events = storage_of(authority).audit.audit_events(action="certificate.revoked")
    assert [(e.serial_hex, e.issuer_id, e.actor, e.detail, e.occurred_at) for e in events] == [
        (issued.record.serial_hex, authority.issuer.id, "admin", {"reason": stored}, clock())
    ]


def test_revoking_twice_is_a_conflict(authority: CertificateAuthority) -> None:
    serial = _issue(authority).record.serial_hex
    authority.revoke(serial, x509.ReasonFlags.superseded, actor="admin")
    with pytest.raises(Conflict, match="already revoked"):
        authority.revoke(serial, x509.ReasonFlags.key_compromise, actor="admin")
    record = authority.find(serial)
    assert record.revocation_reason == "superseded"  # the first reason stands
    assert len(storage_of(authority).audit.audit_events(action="certificate.revoked")) == 1


def test_store_refuses_a_second_revocation_too(authority: CertificateAuthority, clock: SettableClock) -> None:
    """Two nodes racing past the authority's check: the database row decides."""
    record = _issue(authority).record
    event = AuditEvent("admin", "certificate.revoked", authority.issuer.id, record.serial_hex, {})
    storage_of(authority).certificates.revoke(record.id, "keyCompromise", clock(), event, clock())
    with pytest.raises(Conflict):
        storage_of(authority).certificates.revoke(record.id, "keyCompromise", clock(), event, clock())
    assert len(storage_of(authority).audit.audit_events(action="certificate.revoked")) == 1


def test_revoking_an_unknown_serial_is_not_found(authority: CertificateAuthority) -> None:
    _issue(authority)
    with pytest.raises(NotFound, match="no certificate with serial abc123"):
        authority.revoke("abc123", x509.ReasonFlags.key_compromise, actor="admin")
    assert storage_of(authority).audit.audit_events(action="certificate.revoked") == []


def test_revoking_an_expired_certificate_is_allowed(authority: CertificateAuthority, clock: SettableClock) -> None:
    serial = _issue(authority, replace(DEFAULT, validity_days=1)).record.serial_hex
    clock.advance(days=2)
    assert authority.revoke(serial, x509.ReasonFlags.key_compromise, actor="admin").status == "revoked"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("key_compromise", x509.ReasonFlags.key_compromise, id="ok/snake"),
        pytest.param("keyCompromise", x509.ReasonFlags.key_compromise, id="ok/rfc-name"),
        pytest.param("key-compromise", x509.ReasonFlags.key_compromise, id="ok/dashes"),
        pytest.param(" superseded ", x509.ReasonFlags.superseded, id="ok/whitespace"),
        pytest.param("unspecified", x509.ReasonFlags.unspecified, id="ok/unspecified"),
        pytest.param("privilegeWithdrawn", x509.ReasonFlags.privilege_withdrawn, id="ok/privilege-withdrawn"),
    ],
)
def test_parse_reason(text: str, expected: x509.ReasonFlags) -> None:
    assert parse_reason(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("certificateHold", id="fail/hold"),
        pytest.param("certificate_hold", id="fail/hold-snake"),
        pytest.param("removeFromCRL", id="fail/remove-from-crl"),
        pytest.param("stolen", id="fail/unknown"),
        pytest.param("", id="fail/empty"),
    ],
)
def test_parse_reason_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="unknown revocation reason"):
        parse_reason(text)
