"""The one authorization decision (shared_ca.authorization): every rule, allowed and refused.

Each refusal names the rule it tests; tests/test_security_matrix.py runs the same rules through
`gateway serve` for both protocols.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from shared_ca.authority import CertificateAuthority, PublicUrls
from shared_ca.authorization import (
    Authorizer,
    CertificateRequest,
    Principal,
    PrincipalKind,
    spending_use,
)
from shared_ca.ca_material import create_root_ca, register_issuer
from shared_ca.errors import AlgorithmNotAllowed, PolicyDenied
from shared_ca.identity import DEFAULT_IDENTITY
from shared_ca.keys import KeyType, PrivateKey, generate_private_key
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES, Profile, profile_from_mapping
from shared_ca.storage.device_contacts import NewDevice
from shared_ca.storage.devices import Devices
from shared_ca.storage.est_users import EstUserRecord, EstUsers, hash_generated_secret, new_generated_secret
from shared_ca.storage.inventory import InventoryRecords
from shared_ca.storage.repositories import Storage
from shared_ca.trust import RecognisedCertificate, recognise
from tests.support import SettableClock, ec_key, storage_of, subject

DEFAULT = DEFAULT_PROFILES["default"]
SERVER = DEFAULT_PROFILES["tls-server"]
WIFI = Profile(name="wifi")
PROFILES = {"default": DEFAULT, "tls-server": SERVER, "wifi": WIFI}


@dataclass
class World:
    authority: CertificateAuthority
    authorizer: Authorizer
    devices: Devices
    users: EstUsers
    clock: SettableClock

    def issue(
        self,
        name: x509.Name,
        *,
        profile: Profile = DEFAULT,
        sans: tuple[x509.GeneralName, ...] = (),
        key: PrivateKey | None = None,
        authority: CertificateAuthority | None = None,
    ) -> RecognisedCertificate:
        """A certificate issued under `profile` (by `authority`), as authentication would recognise it."""
        key = key or ec_key()
        policy = authorize_request(profile, name, list(sans), key.public_key(), self.clock())
        issued = (authority or self.authority).issue(policy, protocol="test", actor="test")
        recognised = recognise(storage_of(self.authority), issued.certificate, self.clock())
        assert recognised is not None
        return recognised

    def user(self, name: str, **fields: object) -> EstUserRecord:
        secret = hash_generated_secret(new_generated_secret())
        values: dict[str, object] = {"kind": "password", "created_by": "test", "now": self.clock(), **fields}
        return self.users.add_est_user(name, secret, **values)  # type: ignore[arg-type]

    def allow(self, principal: Principal, profile: Profile, protocol: str, request: CertificateRequest) -> None:
        self.authorizer.authorize(principal, profile, protocol, request)

    def refuse(
        self,
        principal: Principal | Callable[[], Principal],
        profile: Profile,
        protocol: str,
        request: CertificateRequest,
        match: str,
        *,
        renewal: bool = False,
    ) -> None:
        with pytest.raises(PolicyDenied, match=match):
            self.authorizer.authorize(principal, profile, protocol, request, renewal=renewal)


@pytest.fixture
def world(authority: CertificateAuthority, clock: SettableClock) -> World:
    devices = Storage.open(storage_of(authority).engine).devices
    authorizer = Authorizer(
        DEFAULT_IDENTITY, default_profile="default", clock=clock, devices=devices, est_url="https://gw/est"
    )
    return World(authority, authorizer, devices, Storage.open(storage_of(authority).engine).est_users, clock)


def ask(cn: str = "dev-1", *sans: x509.GeneralName, key: PrivateKey | None = None, **extra: str) -> CertificateRequest:
    return CertificateRequest(subject(cn, **extra), tuple(sans), (key or ec_key()).public_key())


def dns(name: str) -> x509.DNSName:
    return x509.DNSName(name)


CN_ATTRIBUTE = x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")
O_ATTRIBUTE = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")
STATIC = Principal.challenge(PrincipalKind.STATIC_CHALLENGE, "default")
ADMIN = Principal.admin("root")


# -- 1. a profile is served over a protocol only when it says so ----------------------------------------


def test_the_built_in_tls_server_profile_is_served_over_no_protocol(world: World) -> None:
    principal = Principal.challenge(PrincipalKind.STATIC_CHALLENGE, "tls-server")
    for protocol in ("scep", "est"):
        world.refuse(principal, SERVER, protocol, ask("gw.example"), f"not served over {protocol.upper()}")
    world.allow(ADMIN, SERVER, "admin", ask("gw.example"))  # the administrator issues under any profile
    world.allow(ADMIN, SERVER, "scep", ask("gw.example"))  # ... whatever protocol name a caller passes


def test_a_profile_serves_the_protocols_it_lists(world: World) -> None:
    est_only = replace(WIFI, protocols=("est",))
    principal = Principal.challenge(PrincipalKind.STATIC_CHALLENGE, "wifi")
    world.refuse(principal, est_only, "scep", ask(), "not served over SCEP")
    world.allow(principal, est_only, "est", ask())


@pytest.mark.parametrize(
    ("settings", "served"),
    [
        pytest.param({}, ("scep", "est"), id="client-auth/both"),
        pytest.param({"extended_key_usage": ["server_auth"]}, (), id="server-auth/none"),
        pytest.param({"extended_key_usage": ["1.3.6.1.5.5.7.3.1"]}, (), id="server-auth-oid/none"),
        pytest.param({"extended_key_usage": ["2.5.29.37.0"]}, (), id="any-eku/none"),
        pytest.param({"extended_key_usage": []}, (), id="no-eku/none"),
        pytest.param({"extended_key_usage": ["server_auth"], "protocols": ["est"]}, ("est",), id="server-auth/opened"),
        pytest.param({"protocols": []}, (), id="client-auth/closed"),
    ],
)
def test_profiles_that_make_server_certificates_are_closed_unless_configured(
    settings: dict[str, object], served: tuple[str, ...]
) -> None:
    assert profile_from_mapping("custom", settings).protocols == served


def test_configuring_the_built_in_tls_server_profile_opens_it() -> None:
    assert profile_from_mapping("tls-server", {"validity_days": 90}, SERVER).protocols == ()
    assert profile_from_mapping("tls-server", {"protocols": ["est"]}, SERVER).protocols == ("est",)


# -- 2. a secret opens its profiles and its device ------------------------------------------------------


def test_a_challenge_opens_its_own_profile_only(world: World) -> None:
    world.allow(STATIC, DEFAULT, "scep", ask())
    world.refuse(STATIC, WIFI, "scep", ask(), "may not enroll under this profile")


def test_a_one_time_challenge_bound_to_a_device_enrolls_that_device_only(world: World) -> None:
    bound = Principal.challenge(PrincipalKind.ONE_TIME_CHALLENGE, "default", "dev-1")
    world.allow(bound, DEFAULT, "scep", ask("dev-1"))
    world.refuse(bound, DEFAULT, "scep", ask("dev-2"), "enrolls only its own device")


def test_an_est_user_without_labels_opens_the_default_label_only(world: World) -> None:
    principal = world.authorizer.user_principal(world.user("enroller"))
    assert principal.profiles == frozenset({"default"})
    world.allow(principal, DEFAULT, "est", ask())
    world.refuse(principal, WIFI, "est", ask(), "may not enroll under this profile")


def test_an_est_user_opens_every_label_it_was_given(world: World) -> None:
    principal = world.authorizer.user_principal(world.user("routers", labels=("wifi", "default")))
    world.allow(principal, WIFI, "est", ask())
    world.allow(principal, DEFAULT, "est", ask())
    opened = replace(SERVER, protocols=("est",))
    world.refuse(principal, opened, "est", ask("gw.example"), "may not enroll under this profile")


def test_a_bootstrap_user_enrolls_its_device_only(world: World) -> None:
    principal = world.authorizer.user_principal(world.user("boot-1", kind="bootstrap", device_identity="dev-9"))
    assert principal.kind is PrincipalKind.BOOTSTRAP_USER
    world.allow(principal, DEFAULT, "est", ask("dev-9"))
    world.refuse(principal, DEFAULT, "est", ask("dev-10"), "enrolls only its own device")


def test_a_renewal_proper_needs_a_certificate(world: World) -> None:
    principal = world.authorizer.user_principal(world.user("enroller"))
    world.refuse(principal, DEFAULT, "est", ask(), "authenticated by the certificate it renews", renewal=True)


# -- 3. a certificate renews only itself ----------------------------------------------------------------


def test_a_certificate_renews_itself(world: World) -> None:
    held = world.issue(subject("dev-1"), sans=(dns("dev-1.example"), dns("alt.example")))
    principal = world.authorizer.certificate_principal(held)
    authorization = world.authorizer.authorize(principal, DEFAULT, "est", ask("dev-1", dns("dev-1.example")))
    assert authorization.renewal_of == held.record  # revoke-on-renewal and the renewal link follow from it
    assert authorization.policy.sans == (dns("dev-1.example"),)  # fewer names than it holds: allowed


@pytest.mark.parametrize("protocol", ["scep", "est"])
def test_a_device_certificate_cannot_be_stretched(world: World, protocol: str) -> None:
    """The finding: a device certificate bought a TLS server certificate for any host name."""
    held = world.issue(subject("dev-1"), sans=(dns("dev-1.example"),))
    principal = world.authorizer.certificate_principal(held)
    opened = replace(SERVER, protocols=("scep", "est"))  # even where tls-server is served
    world.refuse(principal, opened, protocol, ask("dev-1"), "may not enroll under this profile")
    world.refuse(principal, WIFI, protocol, ask("dev-1"), "may not enroll under this profile")
    world.refuse(principal, DEFAULT, protocol, ask("admin-b"), "the subject must stay the same")
    world.refuse(principal, DEFAULT, protocol, ask("dev-1", O="Other"), "the subject must stay the same")
    extra = ask("dev-1", dns("dev-1.example"), dns("gateway.example.com"))
    world.refuse(principal, DEFAULT, protocol, extra, "no subjectAltName it does not already hold")
    email = ask("dev-1", x509.RFC822Name("administrator@corp.example"))
    world.refuse(principal, DEFAULT, protocol, email, "no subjectAltName it does not already hold")


def test_a_renewal_proper_keeps_exactly_the_names(world: World) -> None:
    held = world.issue(subject("dev-1"), sans=(dns("dev-1.example"),))
    principal = world.authorizer.certificate_principal(held)
    world.refuse(principal, DEFAULT, "est", ask("dev-1"), "must equal those of the certificate", renewal=True)
    world.authorizer.authorize(principal, DEFAULT, "est", ask("dev-1", dns("dev-1.example")), renewal=True)


def test_key_reuse_on_renewal_follows_the_profile(world: World) -> None:
    key = ec_key()
    held = world.issue(subject("dev-1"), key=key)
    principal = world.authorizer.certificate_principal(held)
    world.allow(principal, DEFAULT, "scep", ask("dev-1", key=key))
    strict = replace(DEFAULT, allow_key_reuse=False)
    for protocol in ("scep", "est"):  # one rule for both protocols
        world.refuse(principal, strict, protocol, ask("dev-1", key=key), "requires a new key on renewal")
        world.allow(principal, strict, protocol, ask("dev-1"))


def test_the_renewal_window(world: World) -> None:
    windowed = replace(DEFAULT, renewal_window_days=30)
    held = world.issue(subject("dev-1"), profile=windowed)
    principal = world.authorizer.certificate_principal(held)
    world.refuse(principal, windowed, "est", ask("dev-1"), "too early to renew")
    world.clock.advance(days=windowed.validity_days - 31)
    world.refuse(principal, windowed, "scep", ask("dev-1"), "too early to renew")
    world.clock.advance(days=2)
    world.allow(principal, windowed, "scep", ask("dev-1"))


def test_scep_renewal_off_refuses_scep_but_not_est(world: World) -> None:
    no_scep_renewal = replace(DEFAULT, scep_renewal=False)
    principal = world.authorizer.certificate_principal(world.issue(subject("dev-1")))
    world.refuse(principal, no_scep_renewal, "scep", ask("dev-1"), "does not renew over SCEP")
    world.allow(principal, no_scep_renewal, "est", ask("dev-1"))


def test_a_certificate_of_a_profile_that_no_longer_exists_renews_nowhere(world: World) -> None:
    gone = Profile(name="retired-profile")
    principal = world.authorizer.certificate_principal(world.issue(subject("dev-1"), profile=gone))
    world.refuse(principal, DEFAULT, "est", ask("dev-1"), "may not enroll under this profile")


def _legacy_ca(world: World) -> CertificateAuthority:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Legacy CA")])
    material = create_root_ca(generate_private_key(KeyType.P256), name, 3650, world.clock())
    store: Storage = storage_of(world.authority)
    issuer = register_issuer(store.issuers, "legacy", material.certificate, kind="legacy", actor="t", now=world.clock(),
        trust_until=world.clock() + dt.timedelta(days=90),
    )  # fmt: skip
    return CertificateAuthority(
        store.certificates,
        issuer,
        material.certificate,
        material.chain,
        material.key,
        PublicUrls("http://legacy"),
        world.clock,
    )


def test_a_legacy_certificate_renews_into_the_label_its_device_was_mapped_to(world: World) -> None:
    legacy = _legacy_ca(world)
    held = world.issue(subject("old-1"), authority=legacy)
    assert held.legacy
    # Unmapped: the default profile.
    principal = world.authorizer.certificate_principal(held)
    world.allow(principal, DEFAULT, "est", ask("old-1"))
    world.refuse(principal, WIFI, "est", ask("old-1"), "may not enroll under this profile")
    # Mapped to the wifi label: that profile, and no other.
    InventoryRecords(world.devices.db).add_imported_devices([NewDevice(identity="old-1", source="test")], world.clock())
    world.devices.set_mapping("old-1", "certificate", held.record.fingerprint_sha256, world.clock(), label="wifi")
    principal = world.authorizer.certificate_principal(held)
    world.allow(principal, WIFI, "est", ask("old-1"))
    world.refuse(principal, DEFAULT, "est", ask("old-1"), "may not enroll under this profile")


def test_a_certificate_holder_that_also_logs_in_is_held_to_both(world: World) -> None:
    held = world.authorizer.certificate_principal(world.issue(subject("dev-1")))
    wifi_user = world.authorizer.user_principal(world.user("wifi-only", labels=("wifi",)))
    both = held.with_user(wifi_user)
    assert both.certificate is not None and both.user is not None and both.user.name == "wifi-only"
    world.refuse(both, DEFAULT, "est", ask("dev-1"), "may not enroll under this profile")
    default_user = world.authorizer.user_principal(world.user("default-user"))
    world.allow(held.with_user(default_user), DEFAULT, "est", ask("dev-1"))


# -- 4. the profile's own rules, before any principal is asked ------------------------------------------


@pytest.mark.parametrize(
    ("name", "profile", "match"),
    [
        pytest.param(
            x509.Name([x509.RelativeDistinguishedName([CN_ATTRIBUTE, O_ATTRIBUTE])]),
            DEFAULT,
            "multi-valued RDN",
            id="fail/multi-valued-rdn",
        ),
        pytest.param(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1"), x509.NameAttribute(NameOID.COMMON_NAME, "b")]),
            DEFAULT,
            "names CN more than once",
            id="fail/repeated-cn",
        ),
        pytest.param(subject("dev\nINJECTED"), DEFAULT, "control character", id="fail/newline-in-cn"),
        pytest.param(subject("dev-1", O="Org\x1b[31m"), DEFAULT, "control character", id="fail/escape-in-o"),
        pytest.param(subject("dev\u2028x"), DEFAULT, "control character", id="fail/line-separator"),
        pytest.param(subject("dev\x85x"), DEFAULT, "control character", id="fail/c1-next-line"),
    ],
)
def test_subject_shapes_relying_parties_read_differently_are_refused(
    world: World, name: x509.Name, profile: Profile, match: str
) -> None:
    request = CertificateRequest(name, (), ec_key().public_key())
    world.refuse(ADMIN, profile, "admin", request, match)


def test_what_a_profile_may_allow_of_the_subject_shape(world: World) -> None:
    relaxed = replace(DEFAULT, allow_multi_valued_rdns=True, subject_repeatable=("OU", "DC", "CN"))
    multi = x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.COMMON_NAME, "dev-1"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org"),
    ])])  # fmt: skip
    world.allow(ADMIN, relaxed, "admin", CertificateRequest(multi, (), ec_key().public_key()))
    twice = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a"), x509.NameAttribute(NameOID.COMMON_NAME, "b")])
    world.allow(ADMIN, relaxed, "admin", CertificateRequest(twice, (), ec_key().public_key()))
    ous = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "dev-1"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "a"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "b"),
    ])  # fmt: skip
    world.allow(ADMIN, DEFAULT, "admin", CertificateRequest(ous, (), ec_key().public_key()))  # OU repeats by default


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(x509.RFC822Name("a\n@example.com"), id="fail/email"),
        pytest.param(x509.UniformResourceIdentifier("https://example.com/\r\nx"), id="fail/uri"),
        pytest.param(x509.DirectoryName(subject("x\ty")), id="fail/dirname"),
    ],
)
def test_control_characters_in_subject_alt_names_are_refused(world: World, name: x509.GeneralName) -> None:
    profile = replace(DEFAULT, san_types=("dns", "ip", "email", "uri", "upn", "dirname"))
    world.refuse(ADMIN, profile, "admin", ask("dev-1", name), "control character")


def test_the_profile_rules_come_before_authentication(world: World) -> None:
    """A request the profile refuses anyway never reaches the authentication that would spend a challenge."""
    called: list[bool] = []

    def authenticate() -> Principal:
        called.append(True)
        return STATIC

    world.refuse(authenticate, DEFAULT, "scep", ask("dev\n1"), "control character")
    with pytest.raises(AlgorithmNotAllowed):
        world.authorizer.authorize(authenticate, replace(DEFAULT, key_types=("rsa",)), "scep", ask())
    assert not called
    world.authorizer.authorize(authenticate, DEFAULT, "scep", ask())
    assert called == [True]


def test_the_scep_sunset_and_no_downgrade_rules(world: World) -> None:
    now = world.clock()
    InventoryRecords(world.devices.db).add_imported_devices(
        [NewDevice(identity="dev-1", source="test", group_name="kiosks")], now
    )
    world.devices.set_group_policy("kiosks", sunset_at=now + dt.timedelta(seconds=1), allow_downgrade=False,
                                   actor="t", now=now)  # fmt: skip
    world.allow(STATIC, DEFAULT, "scep", ask("dev-1"))  # one second before the sunset
    world.clock.advance(seconds=1)
    world.refuse(STATIC, DEFAULT, "scep", ask("dev-1"), "SCEP enrollment ended on .* enroll over EST at https://gw/est")
    world.allow(STATIC, DEFAULT, "est", ask("dev-1"))  # the sunset is SCEP's only
    world.allow(STATIC, DEFAULT, "scep", ask("dev-2"))  # and only its group's


# -- revocation and credential uses -------------------------------------------------------------------


def test_a_device_revokes_only_its_own_certificate(world: World) -> None:
    held = world.issue(subject("dev-1"))
    other = world.issue(subject("dev-2"))
    principal = world.authorizer.certificate_principal(held)
    issuer_der = world.authority.certificate.subject.public_bytes()
    serial = int(held.record.serial_hex, 16)
    own = world.authority.issuer.id
    assert world.authorizer.authorize_revocation(principal, serial, issuer_der, own) == held.record
    with pytest.raises(PolicyDenied, match="only its own certificate"):
        world.authorizer.authorize_revocation(principal, int(other.record.serial_hex, 16), issuer_der, own)
    with pytest.raises(PolicyDenied, match="only its own certificate"):
        world.authorizer.authorize_revocation(principal, serial, subject("Other CA").public_bytes(), own)
    with pytest.raises(PolicyDenied, match="authenticated by the certificate it revokes"):
        world.authorizer.authorize_revocation(STATIC, serial, issuer_der, own)
    legacy = world.issue(subject("old-1"), authority=_legacy_ca(world))
    legacy_principal = world.authorizer.certificate_principal(legacy)
    legacy_issuer = legacy.issuer.id
    with pytest.raises(PolicyDenied, match="revoked at that CA"):
        world.authorizer.authorize_revocation(
            legacy_principal, int(legacy.record.serial_hex, 16), _issuer_der(legacy), own
        )
    assert legacy_issuer != own
    # A CA that a rollover replaced (still publishing its CRL) is named by the caller: its devices may.
    replaced = world.authorizer.authorize_revocation(
        legacy_principal,
        int(legacy.record.serial_hex, 16),
        _issuer_der(legacy),
        own,
        replaced_issuer_ids=[legacy_issuer],
    )
    assert replaced == legacy.record
    with pytest.raises(PolicyDenied, match="revoked at that CA"):
        world.authorizer.authorize_revocation(
            legacy_principal,
            int(legacy.record.serial_hex, 16),
            _issuer_der(legacy),
            own,
            replaced_issuer_ids=[own + 99],
        )


def _issuer_der(recognised: RecognisedCertificate) -> bytes:
    return x509.load_der_x509_certificate(recognised.record.der).issuer.public_bytes()


def test_spending_a_use_and_giving_it_back(world: World) -> None:
    user = world.user("once", uses_left=1)
    principal = world.authorizer.user_principal(user)
    with pytest.raises(RuntimeError), spending_use(world.users, principal, world.clock()):
        raise RuntimeError("issuance failed")
    assert (world.users.est_user("once") or user).uses_left == 1  # refunded
    with spending_use(world.users, principal, world.clock()):
        pass
    assert (world.users.est_user("once") or user).uses_left == 0
    with pytest.raises(PolicyDenied, match="no uses left"), spending_use(world.users, principal, world.clock()):
        raise AssertionError("not reached")
    unlimited = world.authorizer.user_principal(world.user("many"))
    with spending_use(world.users, unlimited, world.clock()):
        pass
    assert (world.users.est_user("many") or user).uses_left is None


def test_an_ip_address_san_held_is_kept(world: World) -> None:
    address = x509.IPAddress(ipaddress.ip_address("192.0.2.1"))
    principal = world.authorizer.certificate_principal(world.issue(subject("dev-1"), sans=(address,)))
    world.allow(principal, DEFAULT, "est", ask("dev-1", address))
