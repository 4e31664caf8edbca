"""shared_ca.trust.recognise: which presented certificates may authenticate now."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from shared_ca.authority import CertificateAuthority, PublicUrls
from shared_ca.ca_material import create_root_ca, register_issuer
from shared_ca.errors import PolicyDenied
from shared_ca.keys import KeyType, generate_private_key
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.trust import recognise
from tests.support import SettableClock, ec_key, storage_of, subject


def _issue(authority: CertificateAuthority, cn: str) -> x509.Certificate:
    policy = authorize_request(DEFAULT_PROFILES["default"], subject(cn), [], ec_key().public_key(), authority.clock())
    return authority.issue(policy, protocol="test", actor="test").certificate


def _other_ca(
    authority: CertificateAuthority, name: str, kind: str, trust_until: dt.datetime | None
) -> CertificateAuthority:
    now = authority.clock()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{kind} CA {name}")])
    material = create_root_ca(generate_private_key(KeyType.P256), ca_name, 3650, now)
    issuer = register_issuer(
        storage_of(authority).issuers,
        name,
        material.certificate,
        kind=kind,
        actor="t",
        now=now,
        trust_until=trust_until,
    )
    return CertificateAuthority(
        storage_of(authority).certificates,
        issuer,
        material.certificate,
        material.chain,
        material.key,
        PublicUrls("http://other.example"),
        authority.clock,
    )


def test_own_valid_certificate_is_recognised(authority: CertificateAuthority, clock: SettableClock) -> None:
    cert = _issue(authority, "mine")
    found = recognise(storage_of(authority), cert, clock())
    assert found is not None and not found.legacy
    assert found.record.serial_hex == format(cert.serial_number, "x")


def test_unknown_certificate_is_none(authority: CertificateAuthority, clock: SettableClock) -> None:
    foreign = _other_ca(authority, "foreign", "ca-elsewhere", None)
    assert (
        recognise(storage_of(authority), _issue(foreign, "stranger"), clock()) is None
    )  # an issuer kind we never trust
    assert recognise(storage_of(authority), foreign.certificate, clock()) is None  # a certificate the store never held


def test_revoked_and_expired_are_refused(authority: CertificateAuthority, clock: SettableClock) -> None:
    revoked = _issue(authority, "revoked")
    authority.revoke(format(revoked.serial_number, "x"), x509.ReasonFlags.key_compromise, actor="t")
    with pytest.raises(PolicyDenied, match="revoked"):
        recognise(storage_of(authority), revoked, clock())
    expiring = _issue(authority, "expiring")
    clock.advance(days=400)
    with pytest.raises(PolicyDenied, match="expired"):
        recognise(storage_of(authority), expiring, clock())


def test_legacy_certificate_inside_and_after_its_window(authority: CertificateAuthority, clock: SettableClock) -> None:
    legacy = _other_ca(authority, "legacy", "legacy", clock() + dt.timedelta(days=10))
    cert = _issue(legacy, "old-device")
    found = recognise(storage_of(authority), cert, clock())
    assert found is not None and found.legacy
    clock.advance(days=11)
    with pytest.raises(PolicyDenied, match="no longer trusted"):
        recognise(storage_of(authority), cert, clock())


def test_legacy_issuer_without_a_window_is_not_trusted(authority: CertificateAuthority, clock: SettableClock) -> None:
    legacy = _other_ca(authority, "legacy-open", "legacy", None)
    with pytest.raises(PolicyDenied, match="no longer trusted"):
        recognise(storage_of(authority), _issue(legacy, "device"), clock())
