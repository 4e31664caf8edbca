"""What mutation testing (docs/security.md, "Mutation testing") found the authorization tests did not pin:
the exact edges of each time rule, the binding a logged-in user adds to a certificate holder, and the
words of each refusal: the client-safe message exactly, and a log detail that names the cause.

Each test here was written against a mutant of shared_ca/authorization.py or shared_ca/trust.py that
survived tests/test_authorization.py and tests/test_trust.py; the refusal table says which rule each
row holds.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace

import pytest
from cryptography import x509

from shared_ca.authority import CertificateAuthority
from shared_ca.authorization import Authorizer, Principal, PrincipalKind
from shared_ca.errors import PolicyDenied
from shared_ca.identity import DEFAULT_IDENTITY, IdentityRule
from shared_ca.storage.device_contacts import NewDevice
from shared_ca.storage.est_users import hash_generated_secret, new_generated_secret
from shared_ca.storage.inventory import InventoryRecords
from shared_ca.storage.repositories import Storage
from shared_ca.trust import recognise
from tests.support import SettableClock, ec_key, storage_of, subject
from tests.test_authorization import ADMIN, DEFAULT, SERVER, STATIC, WIFI, World, _issuer_der, _legacy_ca, ask, dns


@pytest.fixture
def world(authority: CertificateAuthority, clock: SettableClock) -> World:
    devices = Storage.open(storage_of(authority).engine).devices
    authorizer = Authorizer(DEFAULT_IDENTITY, default_profile="default", clock=clock, devices=devices)
    return World(authority, authorizer, devices, Storage.open(storage_of(authority).engine).est_users, clock)


def refusal(call: object, *args: object, **kwargs: object) -> PolicyDenied:
    """The PolicyDenied that `call(*args, **kwargs)` raises."""
    assert callable(call)
    with pytest.raises(PolicyDenied) as raised:
        call(*args, **kwargs)
    return raised.value


# -- users and certificate holders that also log in ----------------------------------------------------


def test_a_challenge_opens_its_one_profile(world: World) -> None:
    """Built inside the test: the module-level principals of tests/test_authorization.py are built at
    import, before a mutant of `Principal.challenge` is switched on."""
    principal = Principal.challenge(PrincipalKind.STATIC_CHALLENGE, "default")
    assert (principal.name, principal.profiles, principal.device) == ("static challenge", frozenset({"default"}), None)
    denied = refusal(world.authorizer.authorize, principal, WIFI, "scep", ask())
    assert denied.public_message == "this credential may not enroll under this profile"
    assert denied.detail == "static 'static challenge' opens ['default'], not 'wifi'"
    with pytest.raises(ValueError, match=r"^PrincipalKind\.EST_USER is not a challenge$"):
        Principal.challenge(PrincipalKind.EST_USER, "default")
    admin = Principal.admin("root")
    assert (admin.kind, admin.name, admin.profiles) == (PrincipalKind.ADMIN, "root", None)


def test_a_password_user_is_an_est_user_and_a_bootstrap_user_is_not(world: World) -> None:
    assert world.authorizer.user_principal(world.user("enroller")).kind is PrincipalKind.EST_USER
    boot = world.authorizer.user_principal(world.user("boot-1", kind="bootstrap", device_identity="dev-1"))
    assert boot.kind is PrincipalKind.BOOTSTRAP_USER


def test_a_bootstrap_user_binds_the_certificate_holder_to_its_device(world: World) -> None:
    held = world.authorizer.certificate_principal(world.issue(subject("dev-1")))
    boot = world.authorizer.user_principal(world.user("boot-9", kind="bootstrap", device_identity="dev-9"))
    both = held.with_user(boot)
    assert both.device == "dev-9"
    denied = refusal(world.authorizer.authorize, both, DEFAULT, "est", ask("dev-1"))
    assert denied.public_message == "this credential enrolls only its own device"
    assert denied.detail == "certificate 'CN=dev-1' is bound to device 'dev-9'"


@pytest.mark.parametrize("order", ["admin-first", "admin-as-user"])
def test_only_a_certificate_holder_logs_in_as_a_user_as_well(world: World, order: str) -> None:
    user = world.authorizer.user_principal(world.user("enroller"))
    first, second = (ADMIN, user) if order == "admin-first" else (user, ADMIN)
    with pytest.raises(ValueError, match=r"^only a certificate holder logs in as an EST user as well$"):
        first.with_user(second)


# -- renewal: each refusal's words, and the window's exact edge --------------------------------------------


def test_each_renewal_refusal_says_which_rule_and_logs_the_certificate(world: World) -> None:
    key = ec_key()
    held = world.issue(subject("dev-1"), sans=(dns("dev-1.example"),), key=key)
    principal = world.authorizer.certificate_principal(held)
    described = f"certificate {held.record.serial_hex} of issuer 'ca'"

    other = refusal(world.authorizer.authorize, principal, DEFAULT, "est", ask("admin-b"))
    assert other.public_message == "a certificate renews only itself: the subject must stay the same"
    assert other.detail == f"{described} is 'CN=dev-1', the request asks 'CN=admin-b'"

    added = ask("dev-1", dns("dev-1.example"), dns("gw.example"))
    stretched = refusal(world.authorizer.authorize, principal, DEFAULT, "est", added)
    assert stretched.public_message == "a certificate renews only itself: no subjectAltName it does not already hold"
    assert stretched.detail == f"{described} lacks ['gw.example']"

    inexact = refusal(world.authorizer.authorize, principal, DEFAULT, "est", ask("dev-1"), renewal=True)
    assert inexact.public_message == "the subjectAltNames must equal those of the certificate renewed"
    assert inexact.detail == described

    strict = replace(DEFAULT, allow_key_reuse=False)
    reused = refusal(world.authorizer.authorize, principal, strict, "est", ask("dev-1", key=key))
    assert reused.public_message == "profile 'default' requires a new key on renewal"
    assert reused.detail == described


def test_the_renewal_window_opens_at_its_exact_second(world: World) -> None:
    windowed = replace(DEFAULT, renewal_window_days=30)
    held = world.issue(subject("dev-1"), profile=windowed)
    principal = world.authorizer.certificate_principal(held)
    opens = held.record.not_after - dt.timedelta(days=30)
    world.clock.now = opens - dt.timedelta(microseconds=1)
    early = refusal(world.authorizer.authorize, principal, windowed, "est", ask("dev-1"))
    assert early.public_message == "too early to renew: profile 'default' renews within 30 days of expiry"
    assert early.detail == (f"certificate {held.record.serial_hex} of issuer 'ca' renews from {opens.isoformat()}")
    world.clock.now = opens
    world.allow(principal, windowed, "est", ask("dev-1"))


# -- the SCEP sunset and no-downgrade rules: each refusal's words ------------------------------------------


def test_a_migrated_device_stays_on_est_unless_its_group_allows_the_downgrade(world: World) -> None:
    now = world.clock()
    InventoryRecords(world.devices.db).add_imported_devices(
        [
            NewDevice(identity="moved", source="test", state="migrated", group_name="kiosks"),
            NewDevice(identity="still-legacy", source="test", group_name="kiosks"),
        ],
        now,
    )
    world.devices.set_group_policy("kiosks", sunset_at=None, allow_downgrade=False, actor="t", now=now)
    challenge = Principal.challenge(PrincipalKind.STATIC_CHALLENGE, "default")
    denied = refusal(world.authorizer.authorize, challenge, DEFAULT, "scep", ask("moved"))
    assert denied.public_message == "this device has moved to EST and may not enroll over SCEP again: use EST"
    assert denied.detail == "device 'moved' is migrated; group 'kiosks' does not allow the downgrade"
    world.allow(challenge, DEFAULT, "est", ask("moved"))  # EST is where it belongs
    world.allow(challenge, DEFAULT, "scep", ask("still-legacy"))  # the rule is about migrated devices
    world.devices.set_group_policy("kiosks", sunset_at=None, allow_downgrade=True, actor="t", now=now)
    world.allow(challenge, DEFAULT, "scep", ask("moved"))


def test_the_sunset_refusal_without_an_est_url(world: World) -> None:
    now = world.clock()
    InventoryRecords(world.devices.db).add_imported_devices(
        [NewDevice(identity="dev-1", source="test", group_name="old")], now
    )
    world.devices.set_group_policy("old", sunset_at=now, allow_downgrade=False, actor="t", now=now)
    gate = world.devices.scep_gate("dev-1")
    assert gate is not None and gate.sunset_at is not None
    denied = refusal(world.authorizer.authorize, STATIC, DEFAULT, "scep", ask("dev-1"))
    assert (
        denied.public_message == f"SCEP enrollment ended on {gate.sunset_at:%Y-%m-%d} for this device: enroll over EST"
    )
    assert denied.detail == f"device 'dev-1' of group 'old': sunset {gate.sunset_at.isoformat()}"


def test_the_sunset_finds_a_device_named_by_its_subject_alt_name(
    authority: CertificateAuthority, clock: SettableClock
) -> None:
    devices = Storage.open(storage_of(authority).engine).devices
    by_dns = Authorizer(IdentityRule.parse("san:dns"), default_profile="default", clock=clock, devices=devices)
    InventoryRecords(devices.db).add_imported_devices(
        [NewDevice(identity="dev-1.example", source="test", group_name="old")], clock()
    )
    devices.set_group_policy("old", sunset_at=clock(), allow_downgrade=False, actor="t", now=clock())
    request = ask("any-name", dns("dev-1.example"))
    with pytest.raises(PolicyDenied, match=r"^SCEP enrollment ended on "):
        by_dns.authorize(STATIC, DEFAULT, "scep", request)


def test_a_bound_credential_finds_its_device_by_subject_alt_name(
    authority: CertificateAuthority, clock: SettableClock
) -> None:
    users = Storage.open(storage_of(authority).engine).est_users
    by_dns = Authorizer(IdentityRule.parse("san:dns"), default_profile="default", clock=clock)
    secret = hash_generated_secret(new_generated_secret())
    boot = users.add_est_user(
        "boot-1", secret, kind="bootstrap", created_by="t", now=clock(), device_identity="dev-1.example"
    )
    principal = by_dns.user_principal(boot)
    by_dns.authorize(principal, DEFAULT, "est", ask("any-name", dns("dev-1.example")))
    with pytest.raises(PolicyDenied, match=r"^this credential enrolls only its own device$"):
        by_dns.authorize(principal, DEFAULT, "est", ask("any-name", dns("dev-2.example")))


def test_a_renewal_proper_by_a_user_says_who_asked(world: World) -> None:
    principal = world.authorizer.user_principal(world.user("enroller"))
    denied = refusal(world.authorizer.authorize, principal, DEFAULT, "est", ask(), renewal=True)
    assert denied.public_message == "a renewal is authenticated by the certificate it renews"
    assert denied.detail == "basic 'enroller' asked for a renewal"


def test_a_profile_not_served_over_a_protocol_logs_what_it_lists(world: World) -> None:
    principal = Principal.challenge(PrincipalKind.STATIC_CHALLENGE, "tls-server")
    denied = refusal(world.authorizer.authorize, principal, SERVER, "est", ask("gw.example"))
    assert denied.public_message == "profile 'tls-server' is not served over EST"
    assert denied.detail == "profile 'tls-server' lists protocols []"


# -- revocation: each refusal's words ----------------------------------------------------------------------


def test_each_revocation_refusal_says_which_rule_and_logs_who_asked(world: World) -> None:
    held = world.issue(subject("dev-1"))
    principal = world.authorizer.certificate_principal(held)
    issuer_der = world.authority.certificate.subject.public_bytes()
    own = world.authority.issuer.id

    by_challenge = refusal(world.authorizer.authorize_revocation, STATIC, 1, issuer_der, own)
    assert by_challenge.public_message == "a revocation is authenticated by the certificate it revokes"
    assert by_challenge.detail == "static 'static challenge' asked to revoke"

    other = refusal(world.authorizer.authorize_revocation, principal, 0xABC, issuer_der, own)
    assert other.public_message == "a device may revoke only its own certificate"
    assert other.detail == "'CN=dev-1' asked to revoke serial abc"

    legacy = world.issue(subject("old-1"), authority=_legacy_ca(world))
    serial = int(legacy.record.serial_hex, 16)
    legacy_principal = world.authorizer.certificate_principal(legacy)
    elsewhere = refusal(world.authorizer.authorize_revocation, legacy_principal, serial, _issuer_der(legacy), own)
    assert elsewhere.public_message == "certificates of an imported legacy CA are revoked at that CA, not here"
    assert elsewhere.detail == "issuer 'legacy'"


# -- trust: the exact edges of notBefore and of a legacy window --------------------------------------------


def test_a_certificate_authenticates_from_its_exact_not_before(world: World) -> None:
    held = world.issue(subject("dev-1"))
    certificate = x509.load_der_x509_certificate(held.record.der)
    not_before = held.record.not_before
    early = refusal(recognise, storage_of(world.authority), certificate, not_before - dt.timedelta(microseconds=1))
    assert early.public_message == "the certificate is not yet valid"
    assert early.detail == f"notBefore {not_before}"
    assert recognise(storage_of(world.authority), certificate, not_before) is not None


def test_a_legacy_window_is_closed_at_its_exact_end(world: World) -> None:
    legacy = world.issue(subject("old-1"), authority=_legacy_ca(world))
    certificate = x509.load_der_x509_certificate(legacy.record.der)
    until = legacy.issuer.trust_until
    assert until is not None
    assert recognise(storage_of(world.authority), certificate, until - dt.timedelta(microseconds=1)) is not None
    closed = refusal(recognise, storage_of(world.authority), certificate, until)
    assert closed.public_message == "the certificate's legacy issuer is no longer trusted"
    assert re.fullmatch(r"migration window of issuer 'legacy' ended .+", closed.detail)
