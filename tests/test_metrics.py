"""Prometheus metrics in-process (gateway.metrics*): what is counted, with which labels, who may scrape,
and what a scrape says while the database is away. Every scrape is parsed by prometheus_client's own
parser. The counters of the in-process app are this test process's, shared by every test: each test
compares a count before and after what it does. The real server, with its workers counting together,
is tests/test_metrics_serve.py."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from werkzeug.test import TestResponse

from est import views as est_views
from gateway import supervisor
from gateway.app import create_app
from gateway.config import ConfigError, load_config
from gateway.metrics import (
    LATENCY_BUCKETS,
    bounded,
    create_multiprocess_dir,
    forget_dead_processes,
    outcome_label,
    process_metrics,
    remove_multiprocess_dir,
)
from gateway.metrics_endpoint import route_labels
from gateway.metrics_observers import CountedAdmission
from gateway.metrics_requests import EST_OPERATIONS, SCEP_OPERATIONS, RequestRecord, request_labels, status_outcome
from gateway.metrics_state import GatewayState
from gateway.runtime import Gateway, GatewayLoader, open_storage
from gateway.supervisor import ServeError
from scep.asn1 import Digest, MessageType, PkiStatus
from scep.client import make_csr as scep_csr
from scep.client_messages import build_pki_request, parse_cert_rep, self_signed_signer, transaction_id_for
from scep.envelope import ContentCipher
from scep.transport import Operation
from shared_ca.admission import AdmissionSettings
from shared_ca.authority import utcnow
from shared_ca.storage.approvals import NewApproval
from shared_ca.storage.enrollment_records import EnrollmentEvent
from shared_ca.storage.est_users import hash_password
from tests.support import SettableClock, ec_key, make_csr, rsa_key, subject
from tests.test_serve import free_ports

HTTPS = "https://localhost"
EST = "/.well-known/est"
CHALLENGE = "s3cret"  # the data_dir fixture's static SCEP challenge
EST_USER, EST_PASSWORD = "metrics-user", "correct horse battery"
DEAD_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/none"  # nothing listens on port 1


# -- reading a scrape ----------------------------------------------------------------------------------


def parse(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape(client: FlaskClient, **options: object) -> list[Sample]:
    response = client.get("/metrics", **options)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return parse(response.get_data(as_text=True))


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def names(samples: list[Sample]) -> set[str]:
    return {s.name for s in samples}


class ServedClient(FlaskClient):
    """A test client that reads and closes every answer, as a server does: a request is counted when its
    answer is closed (gateway.metrics_requests)."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    app.test_client_class = ServedClient
    return app.test_client()


def counted(name: str, **labels: str) -> float:
    """A sample of this process's own counts (this test process counts on its own: no multiprocess)."""
    return process_metrics().registry.get_sample_value(name, labels) or 0.0


def gateway_of(app: Flask) -> Gateway:
    found: Gateway = app.extensions["gateway"].get()
    return found


# -- driving enrollments -------------------------------------------------------------------------------


def scep_enroll(client: FlaskClient, app: Flask, cn: str, challenge: str) -> PkiStatus:
    """One PKCSReq POSTed to /scep; the CertRep's status."""
    ra = gateway_of(app).ra_certificate
    key = rsa_key(fresh=True)
    signer = self_signed_signer(key, subject(cn))
    message = build_pki_request(
        MessageType.PKCSReq,
        content_der=scep_csr(key, subject(cn), challenge=challenge).public_bytes(Encoding.DER),
        signer_cert=signer,
        signer_key=key,
        recipient_cert=ra,
        transaction_id=transaction_id_for(key.public_key()),
        sender_nonce=os.urandom(16),
        digest=Digest.SHA256,
        content_cipher=ContentCipher.AES256,
    )
    response = client.post(
        "/scep?operation=PKIOperation", data=message, headers={"Content-Type": "application/x-pki-message"}
    )
    assert response.status_code == 200, response.data
    return parse_cert_rep(response.data, ra_cert=ra, signer_key=key, signer_cert=signer).status


def est_enroll(client: FlaskClient, cn: str, password: str = EST_PASSWORD, path: str = f"{EST}/simpleenroll") -> int:
    csr = base64.b64encode(make_csr(ec_key(), subject(cn)).public_bytes(Encoding.DER))
    token = base64.b64encode(f"{EST_USER}:{password}".encode()).decode()
    response = client.post(
        path,
        data=csr,
        headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {token}"},
        base_url=HTTPS,
    )
    if response.status_code == 200:
        assert len(pkcs7.load_der_pkcs7_certificates(base64.b64decode(response.data))) == 1
    return response.status_code


@pytest.fixture
def est_user(app: Flask) -> str:
    gateway_of(app).storage.est_users.add_est_user(
        EST_USER, hash_password(EST_PASSWORD), kind="password", created_by="test", now=utcnow(), labels=("default",)
    )
    return EST_USER


@pytest.fixture
def admin_token(app: Flask) -> str:
    made = gateway_of(app).storage.admin_tokens.create_admin_token("metrics-reader", created_by="test", now=utcnow())
    return made.token


# -- the endpoint ---------------------------------------------------------------------------------------


def test_a_scrape_parses_and_shows_every_family(client: FlaskClient) -> None:
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.headers["Cache-Control"] == "no-store"
    families = {family.name for family in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_requests_in_flight",
        "gateway_certificates_issued",
        "gateway_certificates_revoked",
        "gateway_admission_decisions",
        "gateway_lockouts",
        "gateway_lockout_refusals",
        "gateway_database_errors",
        "gateway_database_up",
        "gateway_approvals_pending",
        "gateway_approvals_oldest_pending_timestamp_seconds",
        "gateway_lockouts_active",
        "gateway_devices",
        "gateway_certificate_expiry_timestamp_seconds",
        "gateway_info",
    } <= families
    samples = scrape(client)
    assert value(samples, "gateway_database_up") == 1
    assert value(samples, "gateway_requests_total", protocol="other", operation="healthz", outcome="ok") >= 1
    assert not [s for s in samples if s.name.endswith("_created")]


def test_enrollments_are_counted_by_protocol_operation_profile_and_outcome(
    client: FlaskClient, app: Flask, est_user: str
) -> None:
    before = scrape(client)
    assert scep_enroll(client, app, "scep-counted", CHALLENGE) is PkiStatus.SUCCESS
    assert scep_enroll(client, app, "scep-refused", "wrong") is PkiStatus.FAILURE
    assert est_enroll(client, "est-counted") == 200
    assert est_enroll(client, "est-refused", password="wrong") == 401
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gateway_certificates_issued_total", profile="default", protocol="scep") == 1
    assert delta("gateway_certificates_issued_total", profile="default", protocol="est") == 1
    requests = "gateway_requests_total"
    assert delta(requests, protocol="scep", operation="PKCSReq", profile="default", outcome="issued") == 1
    assert delta(requests, protocol="scep", operation="PKCSReq", profile="default", outcome="failure:badRequest") == 1
    assert delta(requests, protocol="est", operation="simpleenroll", profile="default", outcome="issued") == 1
    refused = {"protocol": "est", "operation": "simpleenroll", "profile": "default", "outcome": "refused:unauthorized"}
    assert delta(requests, **refused) == 1
    issued = {"protocol": "scep", "operation": "PKCSReq", "profile": "default", "outcome": "issued"}
    assert delta("gateway_request_duration_seconds_count", **issued) == 1
    assert delta("gateway_request_duration_seconds_bucket", le="+Inf", **issued) == 1
    assert delta("gateway_request_duration_seconds_sum", **issued) > 0
    assert delta("gateway_admission_decisions_total", protocol="scep", decision="admitted") == 2
    assert delta("gateway_admission_decisions_total", protocol="est", decision="admitted") >= 1


def test_a_revocation_is_counted_by_profile_protocol_and_reason(client: FlaskClient, app: Flask, est_user: str) -> None:
    assert est_enroll(client, "to-revoke") == 200
    gw = gateway_of(app)
    (record,) = [r for r in gw.storage.certificates.list_certificates(now=utcnow()) if r.subject == "CN=to-revoke"]
    before = scrape(client)
    gw.authority.revoke(record.serial_hex, x509.ReasonFlags.key_compromise, actor="test")
    after = scrape(client)
    labels = {"profile": "default", "protocol": "est", "reason": "keyCompromise"}
    assert (
        value(after, "gateway_certificates_revoked_total", **labels)
        - value(before, "gateway_certificates_revoked_total", **labels)
        == 1
    )


def test_label_values_come_from_fixed_sets_whatever_the_client_sends(
    client: FlaskClient, app: Flask, est_user: str
) -> None:
    # The process's registry also holds what earlier tests counted (with their apps' profiles):
    # only what these requests added is judged.
    before = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in scrape(client)}
    marker = f"zz{uuid.uuid4().hex[:8]}"
    est_enroll(client, "odd-label", path=f"{EST}/{marker}/simpleenroll")  # an unknown EST label
    client.post(f"{EST}/{marker}", base_url=HTTPS)  # an unknown EST operation
    client.get(f"/scep?operation={marker}")  # a SCEP operation of the client's invention
    client.get(f"/{marker}/path")  # routed nowhere
    samples = scrape(client)
    assert not [s for s in samples if any(marker in v for v in s.labels.values())]
    added = [
        s
        for s in samples
        if s.name == "gateway_requests_total" and s.value > before.get((s.name, tuple(sorted(s.labels.items()))), 0)
    ]
    added_labels = [(s.labels["protocol"], s.labels["operation"], s.labels["profile"]) for s in added]
    assert any(s.labels["protocol"] == "est" and s.labels["operation"] == "other" for s in added), added_labels
    assert ("est", "simpleenroll", "other") in added_labels, added_labels
    assert any(s.labels["protocol"] == "scep" and s.labels["operation"] == "other" for s in added), added_labels
    assert any(s.labels["operation"] == "unrouted" and s.labels["outcome"] == "refused" for s in added), added_labels
    scrapes = [s for s in added if s.labels["operation"] == "scrape"]  # the first scrape, counted by the second
    assert len(added) - len(scrapes) == 4, added_labels
    for sample in added:
        assert sample.labels["protocol"] in ("scep", "est", "admin", "ocsp", "crl", "other")
        assert sample.labels["profile"] in (*gateway_of(app).config.profiles, "none", "other")


# -- who may scrape --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "status"),
    [
        pytest.param("127.0.0.1", 200, id="ok/loopback"),
        pytest.param("127.8.9.10", 200, id="ok/loopback-network"),
        pytest.param("::1", 200, id="ok/ipv6-loopback"),
        pytest.param("::ffff:127.0.0.1", 200, id="ok/ipv4-mapped-loopback"),
        pytest.param("192.0.2.10", 403, id="fail/other-address"),
        pytest.param("::2", 403, id="fail/other-ipv6-address"),
    ],
)
def test_the_address_allow_list_defaults_to_loopback(client: FlaskClient, address: str, status: int) -> None:
    response = client.get("/metrics", environ_overrides={"REMOTE_ADDR": address})
    assert response.status_code == status
    if status == 403:
        assert response.get_data(as_text=True) == "forbidden\n"
        assert response.content_type.startswith("text/plain")


def test_a_refusal_logs_its_cause_and_tells_the_client_nothing(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "gateway.metrics"):
        response = client.get("/metrics", environ_overrides={"REMOTE_ADDR": "192.0.2.10"})
    assert (response.status_code, response.get_data(as_text=True)) == (403, "forbidden\n")
    assert "192.0.2.10 is not in metrics.allowed_addresses" in caplog.text


@pytest.mark.parametrize(
    ("authorization", "https", "status"),
    [
        pytest.param("Bearer {token}", True, 200, id="ok/token-over-https"),
        pytest.param("Bearer {token}", False, 403, id="fail/token-over-http"),
        pytest.param("Bearer not-a-token", True, 401, id="fail/unknown-token"),
        pytest.param("Basic {token}", True, 401, id="fail/not-bearer"),
        pytest.param("Bearer ", True, 401, id="fail/empty-token"),
    ],
)
def test_an_admin_token_opens_it_over_https_only(
    client: FlaskClient, admin_token: str, authorization: str, https: bool, status: int
) -> None:
    response = client.get(
        "/metrics",
        headers={"Authorization": authorization.format(token=admin_token)},
        environ_overrides={"REMOTE_ADDR": "192.0.2.10"},
        base_url=HTTPS if https else "http://localhost",
    )
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="gateway admin API"')
    if status == 200:
        assert "gateway_requests_total" in response.get_data(as_text=True)


def test_a_disabled_token_or_one_without_the_admin_scope_is_refused(client: FlaskClient, app: Flask) -> None:
    tokens = gateway_of(app).storage.admin_tokens
    disabled = tokens.create_admin_token("metrics-old", created_by="test", now=utcnow()).token
    tokens.disable_admin_token("metrics-old", actor="test", now=utcnow())
    unscoped = tokens.create_admin_token("metrics-other", created_by="test", now=utcnow(), scopes=("reports",)).token
    for token, status in ((disabled, 401), (unscoped, 403)):
        response = client.get(
            "/metrics",
            headers={"Authorization": f"Bearer {token}"},
            environ_overrides={"REMOTE_ADDR": "192.0.2.10"},
            base_url=HTTPS,
        )
        assert response.status_code == status


@contextlib.contextmanager
def configured_app(data_dir: Path, **settings: str) -> Iterator[Flask]:
    application = create_app(load_config(data_dir, environ={f"GATEWAY_{k.upper()}": v for k, v in settings.items()}))
    application.test_client_class = ServedClient
    try:
        yield application
    finally:
        gateway_of(application).storage.db.dispose()


def test_an_empty_allow_list_leaves_the_token_only(data_dir: Path) -> None:
    with configured_app(data_dir, metrics_allowed_addresses="") as application:
        assert application.test_client().get("/metrics").status_code == 403


def test_behind_a_trusted_proxy_the_forwarded_client_is_judged(data_dir: Path) -> None:
    """A reverse proxy on the same host connects from loopback: the client it forwards is the one judged."""
    with configured_app(data_dir, listen_trusted_proxies="127.0.0.1") as application:
        proxied = application.test_client()
        assert proxied.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
        assert proxied.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200


def test_the_client_address_is_the_resolved_one(client: FlaskClient) -> None:
    """A client cannot claim loopback with a forwarding header: nobody is a trusted proxy by default."""
    response = client.get(
        "/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, environ_overrides={"REMOTE_ADDR": "192.0.2.10"}
    )
    assert response.status_code == 403


# -- while the database is away -------------------------------------------------------------------------------


def test_a_gateway_that_cannot_open_still_answers_the_scrape(data_dir: Path) -> None:
    config = load_config(data_dir, environ={"GATEWAY_DATABASE_URL": DEAD_DATABASE})
    application = create_app(loader=GatewayLoader(config))
    application.test_client_class = ServedClient
    client = application.test_client()
    assert client.get("/scep?operation=GetCACaps").status_code == 503  # what needs the gateway
    samples = scrape(client)
    assert value(samples, "gateway_database_up") == 0
    assert "gateway_approvals_pending" not in names(samples)
    ca = x509.load_pem_x509_certificate((data_dir / "ca" / "ca.crt").read_bytes())
    assert (
        value(samples, "gateway_certificate_expiry_timestamp_seconds", role="ca") == ca.not_valid_after_utc.timestamp()
    )
    assert value(samples, "gateway_database_errors_total", error="OperationalError") >= 1
    # A token cannot be checked without the database: 503, never a 500.
    response = client.get(
        "/metrics",
        headers={"Authorization": "Bearer x"},
        environ_overrides={"REMOTE_ADDR": "192.0.2.10"},
        base_url=HTTPS,
    )
    assert response.status_code == 503


def test_a_database_gone_after_opening_shows_as_down_and_counts_errors(app: Flask, data_dir: Path) -> None:
    broken = open_storage(load_config(data_dir, environ={"GATEWAY_DATABASE_URL": DEAD_DATABASE}))
    try:
        gateway = dataclasses.replace(gateway_of(app), storage=broken)
        before = counted("gateway_database_errors_total", error="OperationalError")
        state = GatewayState(GatewayLoader.ready(gateway))
        samples = [sample for family in state.collect() for sample in family.samples]
        assert value(samples, "gateway_database_up") == 0
        assert not names(samples) & {"gateway_approvals_pending", "gateway_devices", "gateway_lockouts_active"}
        assert value(samples, "gateway_certificate_expiry_timestamp_seconds", role="ra") == (
            gateway.ra_certificate.not_valid_after_utc.timestamp()
        )
        assert counted("gateway_database_errors_total", error="OperationalError") > before
    finally:
        broken.db.dispose()


# -- the node's state ------------------------------------------------------------------------------------------


def state_samples(state: GatewayState) -> list[Sample]:
    return [sample for family in state.collect() for sample in family.samples]


def test_the_approval_queue_and_locks_are_read_and_kept_for_a_while(app: Flask, est_user: str) -> None:
    gw = gateway_of(app)
    now = utcnow()
    clock = SettableClock()
    ticks = [0.0]
    state = GatewayState(app.extensions["gateway"], clock=lambda: ticks[0], now=clock)
    first = state_samples(state)
    assert value(first, "gateway_approvals_pending") == 0
    held = NewApproval(
        protocol="est",
        profile="default",
        request_key="k" * 64,
        principal_kind="est-user",
        principal_name=EST_USER,
        subject="CN=held",
        subject_der=subject("held").public_bytes(),
        public_key_der=b"\x30\x00",
        sans_der=None,
    )
    event = EnrollmentEvent(protocol="est", operation="simpleenroll", outcome="pending", profile="default")
    gw.storage.approvals.hold(held, event, now)
    deferred = dataclasses.replace(held, request_key="d" * 64, deferred=True)
    gw.storage.approvals.hold(deferred, event, now + dt.timedelta(seconds=30))
    gw.storage.enrollments.count_failures(
        {"address:default:192.0.2.7": 1}, clock(), window=dt.timedelta(minutes=5), lock_for=dt.timedelta(minutes=5)
    )
    assert value(state_samples(state), "gateway_approvals_pending") == 0  # kept: read less than 10 s ago
    ticks[0] = 10.0
    later = state_samples(state)
    assert value(later, "gateway_approvals_pending", protocol="est", profile="default", kind="manual") == 1
    oldest = value(later, "gateway_approvals_oldest_pending_timestamp_seconds", kind="manual")
    assert abs(oldest - now.timestamp()) < 1
    assert value(later, "gateway_approvals_pending", kind="deferred") == 1
    assert value(later, "gateway_approvals_oldest_pending_timestamp_seconds", kind="deferred") > oldest
    assert value(later, "gateway_lockouts_active", counter="address") == 1
    assert value(later, "gateway_lockouts_active", counter="device") == 0


def test_devices_per_state_and_group(client: FlaskClient, app: Flask, est_user: str) -> None:
    assert est_enroll(client, "fleet-device") == 200  # first seen on EST: a native device, in no group
    state = GatewayState(app.extensions["gateway"])
    samples = state_samples(state)
    assert value(samples, "gateway_devices", state="native", group="") >= 1
    assert {s.labels["state"] for s in samples if s.name == "gateway_devices"} == {
        "legacy",
        "mapped",
        "migrated",
        "native",
        "retired",
    }


# -- lockouts and admission --------------------------------------------------------------------------------------


def test_lockouts_and_refusals_are_counted(app: Flask) -> None:
    enrollments = gateway_of(app).storage.enrollments
    before_locked = counted("gateway_lockouts_total", counter="device")
    before_refused = counted("gateway_lockout_refusals_total")
    now = utcnow()
    window = {"window": dt.timedelta(minutes=5), "lock_for": dt.timedelta(minutes=5)}
    device, profile = f"device:{uuid.uuid4().hex}", f"profile:{uuid.uuid4().hex}"
    enrollments.count_failures({device: 2, profile: 1}, now, **window)  # the profile counter locks at once
    assert counted("gateway_lockouts_total", counter="device") == before_locked
    assert enrollments.locks([profile], now) != {}
    assert counted("gateway_lockout_refusals_total") == before_refused  # a profile lock refuses nothing by itself
    enrollments.count_failures({device: 2}, now, **window)
    assert counted("gateway_lockouts_total", counter="device") == before_locked + 1
    assert enrollments.locks([device, profile], now) != {}
    assert counted("gateway_lockout_refusals_total") == before_refused + 1


def test_admission_decisions_are_counted() -> None:
    admission = CountedAdmission(AdmissionSettings())
    before = counted("gateway_admission_decisions_total", protocol="est", decision="shed")
    admission.count("shed", "est")
    assert counted("gateway_admission_decisions_total", protocol="est", decision="shed") == before + 1
    assert admission.snapshot() == {"est:shed": 1}


# -- labels ------------------------------------------------------------------------------------------------------


def test_the_operation_sets_are_the_protocols_own() -> None:
    assert EST_OPERATIONS == est_views._OPERATIONS
    assert {op.value for op in Operation} <= SCEP_OPERATIONS
    assert {"PKCSReq", "RenewalReq", "CertPoll", "GetCert", "GetCRL"} <= SCEP_OPERATIONS


@pytest.mark.parametrize(
    ("blueprint", "endpoint", "operation", "expected"),
    [
        pytest.param("scep", "scep.scep_default", "GetCACaps", ("scep", "GetCACaps"), id="scep"),
        pytest.param("scep", "scep.scep_default", "Nope", ("scep", "other"), id="scep/unknown-operation"),
        pytest.param("est", "est.labelled", "simpleenroll", ("est", "simpleenroll"), id="est"),
        pytest.param("est", "est.labelled", "x" * 200, ("est", "other"), id="est/unknown-operation"),
        pytest.param("admin", "admin.create_challenge", None, ("admin", "create_challenge"), id="admin"),
        pytest.param("dashboard", "dashboard.summary", None, ("admin", "summary"), id="dashboard"),
        pytest.param(None, "ca.ocsp_get", None, ("ocsp", "ocsp"), id="ocsp"),
        pytest.param(None, "ca.crl_der", None, ("crl", "crl"), id="crl"),
        pytest.param(None, "ca.healthz", None, ("other", "healthz"), id="health"),
        pytest.param("metrics", "metrics.scrape", None, ("other", "scrape"), id="metrics"),
        pytest.param(None, None, None, ("other", "unrouted"), id="unrouted"),
    ],
)
def test_route_labels(
    blueprint: str | None, endpoint: str | None, operation: str | None, expected: tuple[str, str]
) -> None:
    assert route_labels(blueprint, endpoint, operation) == expected


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "ok"), (302, "ok"), (401, "refused"), (404, "refused"), (503, "unavailable"), (500, "error")],
)
def test_the_outcome_of_a_request_without_an_event(status: int, outcome: str) -> None:
    assert status_outcome(status) == outcome


def test_an_event_names_operation_profile_and_outcome_within_bounds() -> None:
    profiles = ("default",)
    event = EnrollmentEvent(protocol="est", operation="simpleenroll", outcome="refused:policy", profile="default")
    assert request_labels(RequestRecord("est", "simpleenroll", event), 403, profiles) == (
        "est",
        "simpleenroll",
        "default",
        "refused:policy",
    )
    odd = EnrollmentEvent(protocol="est", operation="made-up", outcome="refused:transport", profile="made-up-label")
    assert request_labels(RequestRecord("est", "other", odd), 404, profiles) == (
        "est",
        "other",
        "other",
        "refused:transport",
    )
    assert request_labels(RequestRecord("bogus", "x"), 200, profiles) == ("other", "x", "none", "ok")
    assert outcome_label("failure:badRequest") == "failure:badRequest"
    assert outcome_label("Bad Outcome\n") == "other"
    assert bounded(None, profiles) == "none"
    assert bounded("x", profiles) == "other"
    assert tuple(sorted(LATENCY_BUCKETS)) == LATENCY_BUCKETS


# -- the directory of a run ----------------------------------------------------------------------------------------


def dead_pid() -> int:
    """A pid no process has now (the highest pids are free on any test machine)."""
    pid = 4_194_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_a_run_directory_is_private_and_goes_away() -> None:
    directory = create_multiprocess_dir()
    try:
        assert directory.is_dir()
        assert directory.stat().st_mode & 0o777 == 0o700
    finally:
        remove_multiprocess_dir(directory)
    assert not directory.exists()


def test_dead_processes_lose_their_live_gauges_and_keep_their_counts() -> None:
    directory = create_multiprocess_dir()
    try:
        dead, alive = dead_pid(), os.getpid()
        for kind, pid in (("gauge_livesum", dead), ("counter", dead), ("gauge_livesum", alive)):
            (directory / f"{kind}_{pid}.db").touch()  # prometheus_client's file names; the content is not read
        assert forget_dead_processes(directory) == [dead]
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            [f"counter_{dead}.db", f"gauge_livesum_{alive}.db"]
        )
    finally:
        remove_multiprocess_dir(directory)


def test_a_bad_allow_list_entry_is_a_configuration_error_naming_the_setting(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.allowed_addresses.*'10\.0\.0\.300'"):
        load_config(data_dir, environ={"GATEWAY_METRICS_ALLOWED_ADDRESSES": "127.0.0.1, 10.0.0.300"})


def test_serve_stops_in_one_line_when_it_cannot_make_the_metrics_directory(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http_port, https_port = free_ports(2)
    listen = {"GATEWAY_LISTEN_HTTP": f"127.0.0.1:{http_port}", "GATEWAY_LISTEN_HTTPS": f"127.0.0.1:{https_port}"}
    config = load_config(data_dir, environ=listen)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(
        ServeError, match=r"cannot create the metrics directory in .*missing: No such file or directory"
    ):
        supervisor.serve(config, {}, print)
    for port in (http_port, https_port):  # both sockets were closed again
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
