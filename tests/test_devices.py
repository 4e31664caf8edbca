"""The migration model's devices: identity rule, state moved by enrollment events, groups, retirement."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from shared_ca.authority import CertificateAuthority
from shared_ca.errors import InvalidRequest, NotFound
from shared_ca.identity import IdentityRule
from shared_ca.policy import authorize_csr
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.storage.device_contacts import NewDevice
from shared_ca.storage.devices import Devices
from shared_ca.storage.enrollment_records import EnrollmentEvent
from shared_ca.storage.inventory import InventoryRecords
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import devices
from tests.support import SettableClock, make_csr, subject

# -- the identity rule ------------------------------------------------------------------------------

NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.COMMON_NAME, "laptop-7"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, "C02XK1ABJG5H"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "dev-0042"),
    ]
)
SANS: list[x509.GeneralName] = [
    x509.DNSName("laptop-7.corp.example"),
    x509.RFC822Name("ann@example.com"),
    x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        pytest.param("cn", "laptop-7", id="cn"),
        pytest.param("serialNumber", "C02XK1ABJG5H", id="serial-number"),
        pytest.param("san:dns", "laptop-7.corp.example", id="san-dns"),
        pytest.param("san:email", "ann@example.com", id="san-email"),
        pytest.param("san:ip", "10.1.2.3", id="san-ip"),
        pytest.param("san:uri", None, id="san-uri-missing"),
        pytest.param(r"regex:OU=(?P<id>dev-\d+)", "dev-0042", id="regex-named-group"),
        pytest.param(r"regex:OU=(dev-\d+)", "dev-0042", id="regex-first-group"),
        pytest.param(r"regex:dev-\d+", "dev-0042", id="regex-whole-match"),
        pytest.param(r"regex:nomatch-\d+", None, id="regex-no-match"),
    ],
)
def test_identity_rules(rule: str, expected: str | None) -> None:
    parsed = IdentityRule.parse(rule)
    assert parsed.identify(NAME, SANS) == expected
    assert str(parsed) == rule


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        pytest.param("ou", "expected cn, san:TYPE", id="fail/unknown"),
        pytest.param("san:x400", "unknown SAN type 'x400'", id="fail/san-type"),
        pytest.param("regex:(", "not a valid regular expression", id="fail/regex"),
    ],
)
def test_identity_rule_errors(rule: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        IdentityRule.parse(rule)
    assert fragment in str(caught.value)


def test_identity_of_a_request_and_a_certificate(authority: CertificateAuthority) -> None:
    csr = make_csr(name=subject("kiosk-3"), dns=["kiosk-3.example"])
    rule = IdentityRule.parse("san:dns")
    assert rule.of_request(csr) == "kiosk-3.example"
    issued = authority.issue(
        authorize_csr(DEFAULT_PROFILES["default"], csr, authority.clock()), protocol="scep", actor="t"
    )
    assert rule.of_certificate(issued.certificate) == "kiosk-3.example"


# -- state moved by enrollment events ---------------------------------------------------------------


def issue(
    authority: CertificateAuthority, cn: str, protocol: str, *, outcome: str = "issued", cipher: str | None = None
) -> None:
    csr = make_csr(name=subject(cn))
    event = EnrollmentEvent(
        protocol=protocol,
        operation="PKCSReq" if protocol == "scep" else "simpleenroll",
        outcome=outcome,
        device_identity=cn,
        user_agent="scepclient/2.1",
        cipher=cipher,
        digest="sha1" if cipher else None,
        challenge_kind="static" if protocol == "scep" else "basic",
    )
    policy = authorize_csr(DEFAULT_PROFILES["default"], csr, authority.clock())
    authority.issue(policy, protocol=protocol, actor="t", enrollment=event)


def devices_of(store: Storage) -> Devices:
    return store.devices


def test_scep_issuance_creates_a_legacy_device_with_its_fingerprint(
    store: Storage, authority: CertificateAuthority
) -> None:
    issue(authority, "dev1", "scep", cipher="des")
    device = devices_of(store).device("dev1")
    assert device is not None
    assert (device.state, device.source, device.scep_cipher, device.scep_digest) == ("legacy", "scep", "des", "sha1")
    assert (device.scep_user_agent, device.scep_challenge) == ("scepclient/2.1", "static")
    assert device.last_scep_at is not None and device.last_est_at is None
    assert device.certificate_id is not None and device.certificate_not_after is not None


def test_est_issuance_migrates_the_device(
    store: Storage, authority: CertificateAuthority, clock: SettableClock
) -> None:
    issue(authority, "dev2", "scep", cipher="aes256")
    devices_of(store).set_mapping("dev2", "certificate", None, clock())
    assert devices_of(store).device("dev2").state == "mapped"  # type: ignore[union-attr]
    clock.advance(hours=1)
    issue(authority, "dev2", "est")
    device = devices_of(store).device("dev2")
    assert device is not None and device.state == "migrated"
    assert device.migrated_at == clock() and device.last_est_at == clock()
    assert device.scep_cipher == "aes256"  # the SCEP fingerprint stays for the report


def test_a_device_first_seen_on_est_is_native_and_stays_so_on_est(
    store: Storage, authority: CertificateAuthority, clock: SettableClock
) -> None:
    issue(authority, "new-on-est", "est")
    device = devices_of(store).device("new-on-est")
    assert device is not None and (device.state, device.source, device.migrated_at) == ("native", "est", None)
    clock.advance(days=30)
    issue(authority, "new-on-est", "est")  # a renewal over EST: still native, never "migrated"
    device = devices_of(store).device("new-on-est")
    assert device is not None and (device.state, device.migrated_at, device.last_est_at) == ("native", None, clock())


def test_a_native_device_issued_over_scep_becomes_a_scep_device_still_to_move(
    store: Storage, authority: CertificateAuthority, clock: SettableClock
) -> None:
    issue(authority, "both", "est")
    clock.advance(days=1)
    issue(authority, "both", "scep", cipher="aes256")  # its group allowed the downgrade
    device = devices_of(store).device("both")
    assert device is not None and (device.state, device.source) == ("legacy", "scep")
    clock.advance(days=1)
    issue(authority, "both", "est")  # and moving it to EST again is a migration
    device = devices_of(store).device("both")
    assert device is not None and (device.state, device.migrated_at) == ("migrated", clock())


def test_a_retired_native_device_back_on_est_is_native(
    store: Storage, authority: CertificateAuthority, clock: SettableClock
) -> None:
    issue(authority, "gone", "est")
    with store.engine.begin() as conn:
        conn.execute(devices.update().where(devices.c.identity == "gone").values(state="retired", retired_at=clock()))
    issue(authority, "gone", "est")
    device = devices_of(store).device("gone")
    assert device is not None and (device.state, device.migrated_at, device.retired_at) == ("native", None, None)


def test_an_imported_device_cannot_be_native() -> None:
    with pytest.raises(InvalidRequest, match="not native"):
        NewDevice("imp", "import:pem", state="native")
    with pytest.raises(InvalidRequest, match="not native"):
        NewDevice("imp", "est")


def test_refused_requests_move_no_device(store: Storage, authority: CertificateAuthority, clock: SettableClock) -> None:
    issue(authority, "dev3", "scep", cipher="des")
    before = devices_of(store).device("dev3")
    clock.advance(hours=2)
    events = store.enrollments
    events.record_event(
        EnrollmentEvent(
            protocol="est", operation="simpleenroll", outcome="refused:unauthorized", device_identity="dev3"
        ),
        clock(),
    )
    events.record_event(
        EnrollmentEvent(protocol="scep", operation="PKCSReq", outcome="failure:badRequest", device_identity="nobody"),
        clock(),
    )
    assert devices_of(store).device("dev3") == before
    assert devices_of(store).device("nobody") is None


def test_a_contact_updates_last_seen(store: Storage, authority: CertificateAuthority, clock: SettableClock) -> None:
    issue(authority, "dev4", "scep", cipher="des")
    first = devices_of(store).device("dev4")
    clock.advance(days=1)
    store.enrollments.record_event(
        EnrollmentEvent(
            protocol="scep", operation="GetCert", outcome="delivered", device_identity="dev4", cipher="3des"
        ),
        clock(),
    )
    device = devices_of(store).device("dev4")
    assert device is not None and device.last_scep_at == clock() and device.scep_cipher == "3des"
    assert first is not None and device.certificate_id == first.certificate_id  # a contact keeps the certificate
    assert device.scep_challenge == "static"  # an event without a challenge keeps the last one


# -- imports, groups, mapping, retirement ---------------------------------------------------------------


def test_add_devices_is_idempotent(store: Storage, clock: SettableClock) -> None:
    devices = devices_of(store)
    batch = [NewDevice(f"imp-{i}", "import:pem", group_name="stores") for i in range(5)]
    assert InventoryRecords(devices.db).add_imported_devices(batch, clock()) == (5, 0)
    assert InventoryRecords(devices.db).add_imported_devices(batch, clock()) == (0, 5)
    assert len(devices.devices(group="stores")) == 5
    assert [d.identity for d in devices.devices(limit=2, after_id=devices.devices(limit=1)[0].id)] == ["imp-1", "imp-2"]


def test_annotate_and_field_checks(store: Storage, clock: SettableClock) -> None:
    devices = devices_of(store)
    InventoryRecords(devices.db).add_imported_devices([NewDevice("ann-1", "import:csv")], clock())
    assert devices.annotate("ann-1", group="hq", owner="Ann", tags=["kiosk", "floor-2"], now=clock())
    device = devices.device("ann-1")
    assert device is not None and (device.group_name, device.owner, device.tags) == ("hq", "Ann", ("kiosk", "floor-2"))
    assert not devices.annotate("missing", group="hq", owner=None, tags=[], now=clock())
    with pytest.raises(InvalidRequest, match="group"):
        devices.annotate("ann-1", group="g" * 65, owner=None, tags=[], now=clock())
    with pytest.raises(InvalidRequest, match="device id"):
        NewDevice("", "import:csv")
    with pytest.raises(InvalidRequest, match="state"):
        NewDevice("x", "import:csv", state="gone")


def test_mapping_moves_only_legacy_devices(store: Storage, clock: SettableClock) -> None:
    devices = devices_of(store)
    InventoryRecords(devices.db).add_imported_devices(
        [NewDevice("m-1", "import:pem"), NewDevice("m-2", "import:pem", state="migrated")], clock()
    )
    assert devices.set_mapping("m-1", "bootstrap", "boot-m-1", clock()).state == "mapped"
    assert devices.set_mapping("m-2", "certificate", None, clock()).state == "migrated"
    with pytest.raises(NotFound):
        devices.set_mapping("m-3", "certificate", None, clock())
    with pytest.raises(InvalidRequest, match="mode"):
        devices.set_mapping("m-1", "sms", None, clock())


def test_group_policy_and_scep_gate(store: Storage, clock: SettableClock) -> None:
    devices = devices_of(store)
    InventoryRecords(devices.db).add_imported_devices([NewDevice("g-1", "import:pem", group_name="branch")], clock())
    assert devices.scep_gate("g-1") == devices.scep_gate("g-1")  # stable
    gate = devices.scep_gate("g-1")
    assert gate is not None and gate.sunset_at is None and not gate.allow_downgrade
    sunset = clock() + dt.timedelta(days=30)
    devices.set_group_policy("branch", sunset_at=sunset, allow_downgrade=True, actor="t", now=clock())
    gate = devices.scep_gate("g-1")
    assert gate is not None and (gate.sunset_at, gate.allow_downgrade, gate.group_name) == (sunset, True, "branch")
    devices.set_group_policy("branch", sunset_at=None, allow_downgrade=False, actor="t", now=clock())
    assert [g.name for g in devices.groups()] == ["branch"] and devices.group("branch").sunset_at is None  # type: ignore[union-attr]
    assert devices.scep_gate("unknown") is None


def test_retire_stale(store: Storage, authority: CertificateAuthority, clock: SettableClock) -> None:
    issue(authority, "old-1", "scep", cipher="des")
    issue(authority, "revoked-1", "scep", cipher="des")
    issue(authority, "fine-1", "scep", cipher="des")
    devices = devices_of(store)
    revoked = devices.device("revoked-1")
    assert revoked is not None and revoked.certificate_id is not None
    record = next(c for c in store.certificates.list_certificates(now=clock()) if c.id == revoked.certificate_id)
    authority.revoke(record.serial_hex, x509.ReasonFlags.key_compromise, actor="t")
    assert devices.retire_stale(clock(), dt.timedelta(days=30)) == 1
    assert devices.device("revoked-1").state == "retired"  # type: ignore[union-attr]
    clock.advance(days=365 + 31)  # the default profile's certificates expired more than 30 days ago
    assert devices.retire_stale(clock(), dt.timedelta(days=30)) == 2
    issue(authority, "old-1", "scep", cipher="des")  # enrolls again: back in the fleet
    assert devices.device("old-1").state == "legacy"  # type: ignore[union-attr]
