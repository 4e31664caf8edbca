"""The SCEP RA certificate renews itself (gateway.ra_renewal): when it is due, under the node's lease,
same key and key usage, the file replaced atomically and followed by a running app; and the job
leases it relies on (shared_ca.storage.leases). tests/test_rollover_serve.py watches it happen in
`gateway serve`."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.app import create_app
from gateway.audit_trail import audit_node
from gateway.config import GatewayConfig, load_config
from gateway.ra_renewal import renew_ra_if_due, renewal_due
from gateway.runtime import Gateway, GatewayLoader, open_gateway
from shared_ca.authority import fingerprint
from shared_ca.policy import authorize_request
from shared_ca.profiles import RA_PROFILE, Profile
from shared_ca.storage.leases import Leases
from tests.support import SettableClock, rsa_key


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def replace_ra(
    config: GatewayConfig, *, days: float, profile: Profile = RA_PROFILE, not_after: dt.datetime | None = None
) -> x509.Certificate:
    """Give the RA's key a new certificate from the CA, valid `days` (or until `not_after`), recorded as
    any issuance is, and put it in ra.cert: an RA certificate near its end."""
    gateway = open_gateway(config)
    try:
        ra = gateway.ra_certificate
        now = gateway.authority.clock()
        policy = authorize_request(profile, ra.subject, [], ra.public_key(), now)
        policy = replace(policy, not_after=not_after or now + dt.timedelta(days=days))
        short = gateway.authority.issue(policy, protocol="system", actor="test").certificate
    finally:
        gateway.storage.engine.dispose()
    config.path("ra.cert").write_bytes(short.public_bytes(Encoding.PEM))
    return short


@pytest.fixture
def opened(gateway_config: GatewayConfig) -> Iterator[list[Gateway]]:
    gateways: list[Gateway] = []
    yield gateways
    for gateway in gateways:
        gateway.storage.engine.dispose()


def open_one(config: GatewayConfig, opened: list[Gateway]) -> Gateway:
    gateway = open_gateway(config)
    opened.append(gateway)
    return gateway


def certificate(not_before: dt.datetime, days: float) -> x509.Certificate:
    key = rsa_key()
    name = x509.Name.from_rfc4514_string("CN=RA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


NOW = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("lifetime", "left", "before", "due"),
    [
        pytest.param(730, 300, 30, False, id="ok/plenty-left"),
        pytest.param(730, 29, 30, True, id="ok/fewer-days-than-the-setting"),
        pytest.param(730, 200, 30, True, id="ok/less-than-a-third-of-its-lifetime"),
        pytest.param(30, 9, 5, True, id="ok/a-third-of-a-short-lifetime"),
        pytest.param(30, 11, 5, False, id="ok/more-than-a-third-of-a-short-lifetime"),
        pytest.param(730, 1, 0, False, id="ok/never-when-zero"),
        pytest.param(730, -1, 30, True, id="ok/expired-already"),
    ],
)
def test_renewal_due(lifetime: int, left: int, before: int, due: bool) -> None:
    cert = certificate(NOW + dt.timedelta(days=left - lifetime), lifetime)
    assert renewal_due(cert, before, NOW) is due


def test_a_due_ra_certificate_is_renewed_with_the_same_key_and_followed_without_restart(
    gateway_config: GatewayConfig, opened: list[Gateway]
) -> None:
    short = replace_ra(gateway_config, days=10)
    application = create_app(gateway_config)
    loader: GatewayLoader = application.extensions["gateway"]
    gateway = loader.get()
    opened.append(gateway)
    assert gateway.ra_certificate == short
    now = gateway.authority.clock()

    renewal = renew_ra_if_due(gateway, now, holder="worker-1")
    assert renewal is not None and renewal.path == gateway_config.path("ra.cert")
    renewed = renewal.certificate
    assert x509.load_pem_x509_certificate(renewal.path.read_bytes()) == renewed
    assert oct(renewal.path.stat().st_mode & 0o777) == "0o644"
    assert renewed.public_key() == short.public_key() and renewed.subject == short.subject
    assert renewed.not_valid_after_utc > now + dt.timedelta(days=700)
    assert renewed.extensions.get_extension_for_class(x509.KeyUsage).value == (
        short.extensions.get_extension_for_class(x509.KeyUsage).value
    )
    renewed.verify_directly_issued_by(gateway.authority.certificate)
    record = gateway.storage.certificates.certificate_by_fingerprint(fingerprint(renewed))
    assert record is not None and record.profile == RA_PROFILE.name
    assert not list(renewal.path.parent.glob(".ra.crt.*"))  # no temporary file left
    # The lease was given back: another worker could take it at once.
    lease = f"ra-renewal:{audit_node(gateway_config)}"
    assert gateway.storage.leases.acquire(lease, "other", dt.datetime.now(dt.UTC), dt.timedelta(minutes=1))

    # The worker that renewed, and every other, serves the new certificate after its trust-watch round.
    client = application.test_client()
    loader.refresh(dt.datetime.now(dt.UTC))
    reply = client.get("/scep", query_string={"operation": "GetCACert"})
    assert renewed.public_bytes(Encoding.DER) in reply.data
    assert short.public_bytes(Encoding.DER) not in reply.data
    assert renew_ra_if_due(loader.get(), now, holder="worker-1") is None  # no longer due


def test_nothing_happens_while_the_ra_certificate_is_not_due(
    gateway_config: GatewayConfig, opened: list[Gateway]
) -> None:
    gateway = open_one(gateway_config, opened)
    before = gateway_config.path("ra.cert").read_bytes()
    assert renew_ra_if_due(gateway, gateway.authority.clock(), holder="w") is None
    assert gateway_config.path("ra.cert").read_bytes() == before


def test_renewal_is_off_with_zero_days(gateway_config: GatewayConfig, opened: list[Gateway]) -> None:
    short = replace_ra(gateway_config, days=2)
    config = load_config(gateway_config.data_dir, environ={"GATEWAY_RA_RENEW_BEFORE_DAYS": "0"})
    gateway = open_one(config, opened)
    assert renew_ra_if_due(gateway, gateway.authority.clock(), holder="w") is None
    assert x509.load_pem_x509_certificate(config.path("ra.cert").read_bytes()) == short


def test_only_the_lease_holder_renews(gateway_config: GatewayConfig, opened: list[Gateway]) -> None:
    short = replace_ra(gateway_config, days=10)
    gateway = open_one(gateway_config, opened)
    now = gateway.authority.clock()
    lease = f"ra-renewal:{audit_node(gateway_config)}"
    assert gateway.storage.leases.acquire(lease, "another-worker", now, dt.timedelta(minutes=5))
    issued = gateway.storage.certificates.count_certificates()
    assert renew_ra_if_due(gateway, now, holder="this-worker") is None
    assert gateway.storage.certificates.count_certificates() == issued
    assert x509.load_pem_x509_certificate(gateway_config.path("ra.cert").read_bytes()) == short


def test_a_worker_with_a_stale_ra_leaves_it_to_the_reload(gateway_config: GatewayConfig, opened: list[Gateway]) -> None:
    replace_ra(gateway_config, days=10)
    first, second = open_one(gateway_config, opened), open_one(gateway_config, opened)
    now = first.authority.clock()
    renewal = renew_ra_if_due(first, now, holder="worker-1")
    assert renewal is not None
    issued = second.storage.certificates.count_certificates()
    assert renew_ra_if_due(second, now, holder="worker-2") is None  # its RA is no longer the file's
    assert second.storage.certificates.count_certificates() == issued


def test_an_ra_certificate_cannot_outlive_its_ca(
    gateway_config: GatewayConfig, opened: list[Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = open_one(gateway_config, opened)
    ca_end = gateway.authority.certificate.not_valid_after_utc
    opened.clear()
    gateway.storage.engine.dispose()
    replace_ra(gateway_config, days=0, not_after=ca_end)
    gateway = open_one(gateway_config, opened)
    issued = gateway.storage.certificates.count_certificates()
    with caplog.at_level(logging.WARNING, logger="gateway.ra_renewal"):
        assert renew_ra_if_due(gateway, ca_end - dt.timedelta(days=5), holder="w") is None
    assert "roll the CA over" in caplog.text
    assert gateway.storage.certificates.count_certificates() == issued


def test_a_signing_only_ra_stays_signing_only(gateway_config: GatewayConfig, opened: list[Gateway]) -> None:
    signing = replace(RA_PROFILE, name="scep-ra-signing", key_usage=("digital_signature",))
    replace_ra(gateway_config, days=10, profile=signing)
    gateway = open_one(gateway_config, opened)
    renewal = renew_ra_if_due(gateway, gateway.authority.clock(), holder="w")
    assert renewal is not None
    usage = renewal.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    record = gateway.storage.certificates.certificate_by_fingerprint(fingerprint(renewal.certificate))
    assert record is not None and record.profile == "scep-ra-signing"


# -- job leases -------------------------------------------------------------------------------------


def test_a_lease_is_held_until_it_expires_or_is_given_back(
    gateway_config: GatewayConfig, opened: list[Gateway]
) -> None:
    leases: Leases = open_one(gateway_config, opened).storage.leases
    clock = SettableClock()
    minute = dt.timedelta(minutes=1)
    assert leases.acquire("job", "a", clock(), minute)  # never taken: inserted
    assert not leases.acquire("job", "b", clock(), minute)  # held by a
    assert leases.acquire("job", "a", clock(), minute)  # a again: extended
    assert leases.acquire("other-job", "b", clock(), minute)  # another name is another lease
    clock.advance(seconds=61)
    assert leases.acquire("job", "b", clock(), minute)  # a's ran out
    leases.release("job", "a", clock())  # not a's any more: nothing happens
    assert not leases.acquire("job", "a", clock(), minute)
    leases.release("job", "b", clock())
    assert leases.acquire("job", "a", clock(), minute)
