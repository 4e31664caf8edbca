"""A device holding a certificate from an imported legacy CA renews over SCEP inside the migration
window, without a challenge, and gets a certificate from our CA; after the window it is refused."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient

from scep.asn1 import FailInfo, MessageType
from shared_ca.authority import CertificateAuthority, PublicUrls, utcnow
from shared_ca.ca_material import create_root_ca, register_issuer
from shared_ca.keys import KeyType, generate_private_key
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES
from tests.test_scep_service import csr_der, device_key, enroll, failure, get_ca, name, request, store_of


def _legacy_certificate(app: Flask, issuer_name: str, trust_until: dt.datetime, cn: str) -> x509.Certificate:
    """A legacy CA registered with a migration window, and a device certificate it issued (imported)."""
    store = store_of(app)
    now = utcnow()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Legacy MDM CA {issuer_name}")])
    material = create_root_ca(generate_private_key(KeyType.P256), subject, 3650, now)
    issuer = register_issuer(
        store.issuers, issuer_name, material.certificate, kind="legacy", actor="test", now=now, trust_until=trust_until
    )
    legacy = CertificateAuthority(
        store.certificates,
        issuer,
        material.certificate,
        material.chain,
        material.key,
        PublicUrls("http://legacy.example"),
    )
    policy = authorize_request(DEFAULT_PROFILES["default"], name(cn), [], device_key(3).public_key(), now)
    return legacy.issue(policy, protocol="import", actor="test").certificate


@pytest.mark.parametrize("message_type", [MessageType.RenewalReq, MessageType.PKCSReq])
def test_legacy_certificate_renews_inside_the_window(
    client: FlaskClient, app: Flask, message_type: MessageType
) -> None:
    cn = f"legacy-{message_type.value}"
    old = _legacy_certificate(app, f"mdm-{message_type.value}", utcnow() + dt.timedelta(days=30), cn)
    ra = get_ca(client)
    renewal = request(
        ra, csr_der(device_key(3), name(cn), challenge=None), key=device_key(3), signer=old, message_type=message_type
    )
    renewed = enroll(client, ra, renewal)
    assert renewed.issuer == ra.ca.subject  # now from our CA
    assert renewed.subject == old.subject
    events = store_of(app).enrollments.enrollment_events(transaction_id=renewal.transaction_id)
    assert [(e.outcome, e.challenge_kind) for e in events] == [("issued", "renewal")]


def test_legacy_certificate_is_refused_after_the_window(client: FlaskClient, app: Flask) -> None:
    old = _legacy_certificate(app, "mdm-closed", utcnow() - dt.timedelta(days=1), "legacy-late")
    ra = get_ca(client)
    renewal = request(
        ra,
        csr_der(device_key(3), name("legacy-late"), challenge=None),
        key=device_key(3),
        signer=old,
        message_type=MessageType.RenewalReq,
    )
    reply = failure(client, ra, renewal)
    assert reply.fail_info is FailInfo.BAD_REQUEST
    assert reply.fail_info_text is not None and "no longer trusted" in reply.fail_info_text
