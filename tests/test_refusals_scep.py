"""SCEP refusals a security review found untested, through the Flask test client: each test fails when
the check it names is taken out of the product, and each asserts that nothing was issued.

- a renewal keeps the subject of the certificate it renews (no CN=victim-a -> CN=admin-b takeover);
- `scep_renewal = false` refuses renewal on that profile;
- a signer certificate that is not yet valid renews nothing;
- GetCRL for an issuer that is not ours is FAILURE badCertID;
- a different request under a transactionID that awaits approval is FAILURE, and the queue keeps
  the original request.

The webhook outage (HTTP 503) is in tests/test_refusals_webhook.py, the sunset boundary in
tests/test_refusals_sunset.py.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient

from gateway import runtime
from gateway.app import create_app
from gateway.cli import main
from gateway.config import GatewayConfig, load_config
from scep.asn1 import FailInfo, MessageType, PkiStatus
from scep.client_messages import issuer_and_serial_der, issuer_and_subject_der, self_signed_signer
from tests.support import SettableClock, issued_count
from tests.test_scep_service import (
    csr_der,
    device_key,
    enroll,
    enrollment,
    failure,
    get_ca,
    name,
    post,
    reply_of,
    request,
)

EXTRA_PROFILES = """
[profiles.norenew]
scep_challenge = "s3cret"
scep_renewal = false

[profiles.manual]
scep_challenge = "s3cret"
approval = "manual"
"""


@pytest.fixture
def gateway_config(data_dir: Path) -> GatewayConfig:
    """The data directory's configuration with the profiles `norenew` and `manual`."""
    with (data_dir / "config.toml").open("a", encoding="utf-8") as config:
        config.write(EXTRA_PROFILES)
    return load_config(data_dir, environ={})


def count(app: Flask) -> int:
    """Certificates in the app's database."""
    return issued_count(app.extensions["gateway"].get().storage.engine)


def subjects(app: Flask) -> list[str]:
    """The subjects of every certificate in the app's database."""
    gw = app.extensions["gateway"].get()
    return sorted(r.subject for r in gw.storage.certificates.list_certificates(now=dt.datetime.now(dt.UTC)))


# -- a renewal keeps the subject ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "new_key"),
    [
        pytest.param(MessageType.RenewalReq, False, id="fail/renewalreq-same-key"),
        pytest.param(MessageType.RenewalReq, True, id="fail/renewalreq-new-key"),
        pytest.param(MessageType.PKCSReq, True, id="fail/pkcsreq-signed-by-the-certificate"),
    ],
)
def test_a_device_certificate_cannot_renew_into_another_subject(
    client: FlaskClient, app: Flask, message_type: MessageType, new_key: bool
) -> None:
    """CN=victim-a's certificate signs a request for CN=admin-b, with no challenge: FAILURE, nothing issued."""
    ra = get_ca(client)
    key = device_key()
    victim = enroll(client, ra, enrollment(ra, "victim-a", key=key, transaction_id="victim-a-first"))
    before = count(app)
    requested_key = device_key(1) if new_key else key
    takeover = request(
        ra,
        csr_der(requested_key, name("admin-b"), challenge=None),
        key=key,
        signer=victim,
        message_type=message_type,
        transaction_id=f"takeover-{message_type.value}-{new_key}",
    )
    reply = failure(client, ra, takeover)
    assert reply.fail_info is FailInfo.BAD_REQUEST
    assert not reply.certificates
    assert count(app) == before
    assert "CN=admin-b" not in subjects(app)


def test_the_same_renewal_for_its_own_subject_is_issued(client: FlaskClient, app: Flask) -> None:
    """Positive control for the test above: the very path succeeds when the subject is kept."""
    ra = get_ca(client)
    key = device_key()
    victim = enroll(client, ra, enrollment(ra, "victim-a", key=key, transaction_id="victim-a-first"))
    before = count(app)
    renewal = request(
        ra,
        csr_der(key, name("victim-a"), challenge=None),
        key=key,
        signer=victim,
        message_type=MessageType.RenewalReq,
        transaction_id="victim-a-renewal",
    )
    assert enroll(client, ra, renewal).subject == victim.subject
    assert count(app) == before + 1


# -- scep_renewal = false ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message_type",
    [
        pytest.param(MessageType.RenewalReq, id="fail/renewalreq"),
        pytest.param(MessageType.PKCSReq, id="fail/pkcsreq-signed-by-the-certificate"),
    ],
)
def test_a_profile_without_scep_renewal_refuses_renewal(
    client: FlaskClient, app: Flask, message_type: MessageType
) -> None:
    ra = get_ca(client)
    caps = client.get("/scep/norenew", query_string={"operation": "GetCACaps"}).get_data(as_text=True)
    assert "Renewal" not in caps.splitlines()
    key = device_key()
    cert = enroll(client, ra, enrollment(ra, "no-renew", key=key, transaction_id="no-renew-first"), "/scep/norenew")
    before = count(app)
    renewal = request(
        ra,
        csr_der(key, name("no-renew"), challenge=None),
        key=key,
        signer=cert,
        message_type=message_type,
        transaction_id=f"no-renew-{message_type.value}",
    )
    reply = failure(client, ra, renewal, "/scep/norenew")
    assert reply.fail_info is FailInfo.BAD_REQUEST
    assert not reply.certificates
    assert count(app) == before


# -- a not yet valid signer certificate ----------------------------------------------------------------


@pytest.fixture
def clock() -> SettableClock:
    """Real time to the second, until a test moves it."""
    return SettableClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


@pytest.fixture
def clocked_app(
    gateway_config: GatewayConfig, clock: SettableClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Flask]:
    """The app as `gateway serve` composes it, with the CA's clock (which every service reads) settable."""
    monkeypatch.setattr(runtime, "utcnow", clock)
    application = create_app(gateway_config)
    yield application
    application.extensions["gateway"].get().storage.engine.dispose()


def test_a_signer_certificate_that_is_not_yet_valid_renews_nothing(clocked_app: Flask, clock: SettableClock) -> None:
    client = clocked_app.test_client()
    ra = get_ca(client)
    key = device_key()
    clock.advance(days=2)  # the certificate is issued while the CA's clock runs two days ahead
    early = enroll(client, ra, enrollment(ra, "early-bird", key=key, transaction_id="early-first"))
    clock.advance(days=-2)
    assert early.not_valid_before_utc > clock()
    before = count(clocked_app)
    renewal = request(
        ra,
        csr_der(key, name("early-bird"), challenge=None),
        key=key,
        signer=early,
        message_type=MessageType.RenewalReq,
        transaction_id="early-renewal",
    )
    reply = failure(client, ra, renewal)
    assert reply.fail_info is FailInfo.BAD_REQUEST
    assert count(clocked_app) == before
    clock.advance(days=2, minutes=1)  # once it is valid, the same renewal goes through
    retry = request(
        ra,
        csr_der(key, name("early-bird"), challenge=None),
        key=key,
        signer=early,
        message_type=MessageType.RenewalReq,
        transaction_id="early-renewal-later",
    )
    assert enroll(client, ra, retry).subject == early.subject


# -- GetCRL for another issuer -------------------------------------------------------------------------


def test_get_crl_for_a_foreign_issuer_is_bad_cert_id(client: FlaskClient, app: Flask) -> None:
    ra = get_ca(client)
    cert = enroll(client, ra, enrollment(ra, "crl-asker", transaction_id="crl-asker-first"))
    asker = device_key(1)
    signer = self_signed_signer(asker, name("crl-asker-2"))
    before = count(app)
    our_cn = str(ra.ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    lookalike = name(our_cn, x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Elsewhere"))  # our CN, not our name
    for index, issuer in enumerate([name("Some Other CA"), lookalike]):
        assert issuer != ra.ca.subject
        ask = request(
            ra,
            issuer_and_serial_der(issuer, cert.serial_number),
            key=asker,
            signer=signer,
            message_type=MessageType.GetCRL,
            transaction_id=f"foreign-crl-{index}",
        )
        reply = failure(client, ra, ask)
        assert reply.fail_info is FailInfo.BAD_CERT_ID
        assert reply.crl is None
    assert count(app) == before
    ours = request(
        ra,
        issuer_and_serial_der(ra.ca.subject, cert.serial_number),
        key=asker,
        signer=signer,
        message_type=MessageType.GetCRL,
        transaction_id="our-crl",
    )
    answered = reply_of(post(client, ours.der), ra, ours)
    assert answered.status is PkiStatus.SUCCESS and answered.crl is not None


# -- another request under a pending transactionID -----------------------------------------------------


def pending_subjects(runner: CliRunner, data_dir: Path) -> dict[str, int]:
    """`gateway request list`: the id of each waiting request, by subject."""
    result = runner.invoke(main, ["request", "list", "--format", "json", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return {row["subject"]: int(row["id"]) for row in json.loads(result.output)}


def test_a_different_request_under_a_pending_transaction_id_is_refused(
    client: FlaskClient, app: Flask, runner: CliRunner, data_dir: Path
) -> None:
    ra = get_ca(client)
    key = device_key()
    first = enrollment(ra, "queued-first", key=key, transaction_id="shared-txid")
    assert reply_of(post(client, first.der, "/scep/manual"), ra, first).status is PkiStatus.PENDING
    before = count(app)
    second = request(
        ra,
        csr_der(key, name("queued-second")),
        key=key,
        signer=self_signed_signer(key, name("queued-second")),
        transaction_id="shared-txid",
    )
    reply = failure(client, ra, second, "/scep/manual")
    assert reply.fail_info is FailInfo.BAD_REQUEST
    assert count(app) == before
    queued = pending_subjects(runner, data_dir)
    assert list(queued) == ["CN=queued-first"]  # the original request is still the one waiting
    approved = runner.invoke(main, ["request", "approve", str(queued["CN=queued-first"]), "--data-dir", str(data_dir)])
    assert approved.exit_code == 0, approved.output
    poll = request(
        ra,
        issuer_and_subject_der(ra.ca.subject, name("queued-first")),
        key=key,
        signer=first.signer,
        message_type=MessageType.CertPoll,
        transaction_id="shared-txid",
    )
    assert enroll(client, ra, poll, "/scep/manual").subject == name("queued-first")
    assert count(app) == before + 1
    assert "CN=queued-second" not in subjects(app)
