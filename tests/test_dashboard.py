"""The migration dashboard and its JSON API through Flask's test client: the page, the summary and
device endpoints agreeing with the report, admin-token and client-certificate authentication with
their refusals, parameter errors, the OpenAPI document, and HTTPS-only serving."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.dashboard import CLIENT_CERT_SETTING, pinned_fingerprints
from gateway.dashboard_page import SCRIPT, STYLE
from gateway.middleware import CLIENT_CERT_DER
from migration_tools.report import ReportSettings, build_report
from migration_tools.report_json import device_to_dict, report_to_dict
from migration_tools.report_model import ClientFingerprint, DeviceEntry
from shared_ca.authority import fingerprint, utcnow
from shared_ca.errors import Unavailable
from shared_ca.policy import authorize_csr
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.storage.device_contacts import NewDevice
from shared_ca.storage.inventory import InventoryRecords
from shared_ca.storage.migration_report import MigrationReportQueries
from shared_ca.storage.repositories import Storage
from tests.support import make_csr, subject
from tests.test_migration_report import enroll

HTTPS = "https://localhost"
SUMMARY = "/admin/api/migration/summary"
DEVICES = "/admin/api/devices"
DAY = dt.timedelta(days=1)


def fill_fleet(app: Flask) -> None:
    """Nine devices: legacy with weak clients, mapped (one silent), migrated, native, retired, two groups."""
    gateway = app.extensions["gateway"].get()
    devices = gateway.storage.devices
    now = utcnow()
    enroll(gateway.authority, "kiosk-1", "scep", cipher="des", digest="sha1", challenge="static")
    enroll(gateway.authority, "kiosk-2", "scep", digest="md5")
    enroll(gateway.authority, "laptop-1", "scep")
    enroll(gateway.authority, "laptop-2", "scep")
    enroll(gateway.authority, "laptop-3", "scep")
    enroll(gateway.authority, "laptop-3", "est")  # moved from SCEP: migrated
    InventoryRecords(devices.db).add_imported_devices(
        [
            NewDevice("old-1", "import:test", group_name="kiosks", first_seen_at=now - 60 * DAY),
            NewDevice("gone-1", "import:test", state="retired", first_seen_at=now - 50 * DAY),
            NewDevice("printer-1", "import:test", first_seen_at=now - 5 * DAY),
        ],
        now - 40 * DAY,
    )
    enroll(gateway.authority, "tablet-1", "est")  # on EST from the start: native, not migrated
    for identity, group in [("kiosk-1", "kiosks"), ("kiosk-2", "kiosks"), ("laptop-1", "laptops")]:
        devices.annotate(identity, group=group, owner="it", tags=(), now=now)
    devices.annotate("laptop-2", group="laptops", owner=None, tags=(), now=now)
    devices.set_mapping("laptop-1", "bootstrap", "est-1", now - 20 * DAY)
    devices.set_mapping("laptop-2", "certificate", None, now - DAY)
    devices.set_group_policy("kiosks", sunset_at=now + 30 * DAY, allow_downgrade=False, actor="test", now=now)


@pytest.fixture
def fleet(app: Flask) -> Flask:
    fill_fleet(app)
    return app


@pytest.fixture
def token(app: Flask) -> str:
    return (
        Storage.open(app.extensions["gateway"].get().storage.engine)
        .admin_tokens.create_admin_token("dash", created_by="t", now=utcnow())
        .token
    )


def get(client: FlaskClient, path: str, token: str | None = None, **kw: Any) -> TestResponse:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    return client.get(path, headers=headers, base_url=kw.pop("base_url", HTTPS), **kw)


def the_report(app: Flask, **settings: Any) -> dict[str, Any]:
    gateway = app.extensions["gateway"].get()
    config = ReportSettings(silent_days=gateway.config["migration.silent_days"], **settings)
    report = build_report(gateway.storage.migration_report, utcnow(), settings=config)
    return report_to_dict(report)


# -- the JSON API agrees with the report ----------------------------------------------------------------


def test_summary_agrees_with_the_report(client: FlaskClient, fleet: Flask, token: str) -> None:
    response = get(client, SUMMARY, token)
    assert response.status_code == 200, response.data
    assert response.headers["Cache-Control"] == "no-store"
    summary = response.get_json()
    expected = the_report(fleet, list_limit=0)
    assert abs(dt.datetime.fromisoformat(summary.pop("generated_at").replace("Z", "+00:00")) - utcnow()) < dt.timedelta(
        minutes=1
    )
    expected.pop("generated_at")
    assert summary == expected
    assert summary["totals"] == {
        "legacy": 4, "mapped": 2, "migrated": 1, "native": 1, "retired": 1, "total": 9, "to_move": 6,
        "percent_migrated": 14.3,
    }  # fmt: skip
    assert (summary["to_move_total"], summary["silent_total"], summary["to_move"]) == (6, 1, [])
    kiosks = get(client, SUMMARY, token, query_string={"group": "kiosks", "days": "7"}).get_json()
    assert (kiosks["group"], kiosks["totals"]["legacy"], len(kiosks["trend"])) == ("kiosks", 3, 7)


def test_device_pages_agree_with_the_report(client: FlaskClient, fleet: Flask, token: str) -> None:
    pages, after = [], None
    while True:
        query = {"state": "legacy,mapped", "limit": "2", **({"after": str(after)} if after else {})}
        body = get(client, DEVICES, token, query_string=query).get_json()
        assert body["limit"] == 2 and len(body["devices"]) <= 2
        pages += body["devices"]
        after = body["next_after"]
        if after is None:
            break
    assert pages == the_report(fleet, list_limit=None)["to_move"]
    kiosk = next(d for d in pages if d["identity"] == "kiosk-1")
    assert kiosk["weak"] == ["DES", "SHA-1", "static challenge"] and kiosk["client"]["cipher"] == "des"
    assert kiosk["actions"][0].startswith("map it") and kiosk["actions"][-1].startswith("SCEP closes for its group")


@pytest.mark.parametrize(
    ("query", "identities"),
    [
        pytest.param({"state": "migrated"}, ["laptop-3"], id="migrated"),
        pytest.param({"state": "native"}, ["tablet-1"], id="native"),
        pytest.param({"state": "retired"}, ["gone-1"], id="retired"),
        pytest.param({"group": "kiosks"}, ["kiosk-1", "kiosk-2", "old-1"], id="group"),
        pytest.param({"group": "laptops", "state": "mapped"}, ["laptop-1", "laptop-2"], id="group-and-state"),
        pytest.param({"silent": "true"}, ["laptop-1"], id="silent"),
        pytest.param({"silent": "true", "state": "legacy"}, [], id="silent-legacy"),
        pytest.param(
            {},
            ["kiosk-1", "kiosk-2", "laptop-1", "laptop-2", "laptop-3", "old-1", "gone-1", "printer-1", "tablet-1"],
            id="every-device",
        ),
    ],
)
def test_device_filters(
    client: FlaskClient, fleet: Flask, token: str, query: dict[str, str], identities: list[str]
) -> None:
    body = get(client, DEVICES, token, query_string=query).get_json()
    assert [d["identity"] for d in body["devices"]] == identities and body["next_after"] is None


# -- authentication -------------------------------------------------------------------------------------


def _disabled(app: Flask) -> str:
    tokens = Storage.open(app.extensions["gateway"].get().storage.engine).admin_tokens
    made = tokens.create_admin_token("old", created_by="t", now=utcnow())
    tokens.disable_admin_token("old", actor="t", now=utcnow())
    return made.token


def _read_only(app: Flask) -> str:
    tokens = Storage.open(app.extensions["gateway"].get().storage.engine).admin_tokens
    return tokens.create_admin_token("viewer", created_by="t", now=utcnow(), scopes=("read",)).token


@pytest.mark.parametrize("path", [SUMMARY, DEVICES])
@pytest.mark.parametrize(
    ("authorization", "status", "challenge"),
    [
        pytest.param(None, 401, 'Bearer realm="gateway admin API"', id="fail/none"),
        pytest.param("Basic ZGFzaDp4", 401, 'Bearer realm="gateway admin API"', id="fail/basic"),
        pytest.param("Bearer", 401, 'Bearer realm="gateway admin API"', id="fail/empty-bearer"),
        pytest.param("Bearer nope", 401, 'Bearer realm="gateway admin API", error="invalid_token"', id="fail/unknown"),
        pytest.param("disabled", 401, 'Bearer realm="gateway admin API", error="invalid_token"', id="fail/disabled"),
        pytest.param("read-only", 403, None, id="fail/no-admin-scope"),
    ],
)
def test_refusals(
    client: FlaskClient, app: Flask, path: str, authorization: str | None, status: int, challenge: str | None
) -> None:
    if authorization == "disabled":
        authorization = f"Bearer {_disabled(app)}"
    elif authorization == "read-only":
        authorization = f"Bearer {_read_only(app)}"
    headers = {"Authorization": authorization} if authorization else {}
    response = get(client, path, headers=headers)
    assert response.status_code == status
    assert response.mimetype == "text/plain" and response.data in (b"unauthorized\n", b"forbidden\n")
    assert response.headers.get("WWW-Authenticate") == challenge


def test_a_token_in_the_url_is_not_a_credential(client: FlaskClient, token: str) -> None:
    response = get(client, DEVICES, query_string={"token": token})
    assert response.status_code == 401
    assert get(client, DEVICES, token, query_string={"token": token}).data.startswith(b"token: unknown query parameter")


@pytest.fixture
def cert_app(gateway_config: GatewayConfig, app: Flask) -> Iterator[tuple[Flask, x509.Certificate]]:
    """An app whose config pins one admin client certificate (issued by our CA)."""
    authority = app.extensions["gateway"].get().authority
    policy = authorize_csr(DEFAULT_PROFILES["default"], make_csr(name=subject("admin-ann")), utcnow())
    certificate = authority.issue(policy, protocol="est", actor="test").certificate
    pinned = ":".join(re.findall("..", fingerprint(certificate).upper()))  # the form openssl prints
    values = {**gateway_config.values, CLIENT_CERT_SETTING: f"{pinned}, not-a-fingerprint"}
    pinned_app = create_app(dataclasses.replace(gateway_config, values=values))
    yield pinned_app, certificate
    pinned_app.extensions["gateway"].get().storage.engine.dispose()


def test_admin_client_certificate(cert_app: tuple[Flask, x509.Certificate], app: Flask, caplog: Any) -> None:
    pinned_app, certificate = cert_app
    client = pinned_app.test_client()
    der = certificate.public_bytes(Encoding.DER)
    assert get(client, SUMMARY, environ_overrides={CLIENT_CERT_DER: der}).status_code == 200
    assert "ignored 'not-a-fingerprint'" in caplog.text
    assert get(client, SUMMARY, environ_overrides={CLIENT_CERT_DER: b"garbage"}).status_code == 401
    policy = authorize_csr(DEFAULT_PROFILES["default"], make_csr(name=subject("device-9")), utcnow())
    other = app.extensions["gateway"].get().authority.issue(policy, protocol="est", actor="test").certificate
    response = get(client, SUMMARY, environ_overrides={CLIENT_CERT_DER: other.public_bytes(Encoding.DER)})
    assert response.status_code == 401  # a device certificate is no admin certificate
    assert get(app.test_client(), SUMMARY, environ_overrides={CLIENT_CERT_DER: der}).status_code == 401  # not pinned
    app.extensions["gateway"].get().authority.revoke(
        format(certificate.serial_number, "x"), x509.ReasonFlags.key_compromise, actor="test"
    )
    revoked = get(client, DEVICES, environ_overrides={CLIENT_CERT_DER: der})
    assert (revoked.status_code, revoked.data) == (
        403,
        b"the admin client certificate is refused: the certificate is revoked\n",
    )


def test_pinned_fingerprint_forms() -> None:
    digest = "ab" * 32
    assert pinned_fingerprints(f"AB:{'AB:' * 30}AB") == {digest}
    assert pinned_fingerprints([digest.upper(), "", "xyz"]) == {digest}
    assert pinned_fingerprints(None) == pinned_fingerprints("") == frozenset()


# -- parameters, errors, listeners --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "status", "message"),
    [
        pytest.param(
            DEVICES,
            {"state": "bogus"},
            400,
            "state: unknown device state 'bogus' (known: legacy, mapped",
            id="fail/state",
        ),
        pytest.param(DEVICES, {"limit": "0"}, 400, "limit: must be from 1 to 1000, not 0", id="fail/limit-low"),
        pytest.param(DEVICES, {"limit": "1001"}, 400, "limit: must be from 1 to 1000, not 1001", id="fail/limit-high"),
        pytest.param(DEVICES, {"limit": "ten"}, 400, "limit: must be an integer from 1 to 1000", id="fail/limit-text"),
        pytest.param(DEVICES, {"after": "-1"}, 400, "after: must be an integer from 0", id="fail/after"),
        pytest.param(DEVICES, {"silent": "maybe"}, 400, "silent: must be true or false", id="fail/silent"),
        pytest.param(DEVICES, {"group": "g" * 65}, 400, "group: a group name has 1-64 characters", id="fail/group"),
        pytest.param(DEVICES, {"sort": "id"}, 400, "sort: unknown query parameter (known: state,", id="fail/unknown"),
        pytest.param(
            DEVICES, [("state", "legacy"), ("state", "mapped")], 400, "state: given more than once", id="fail/repeated"
        ),
        pytest.param(SUMMARY, {"days": "0"}, 400, "days: must be from 1 to 3660, not 0", id="fail/days"),
        pytest.param(SUMMARY, {"group": "nobody"}, 404, "no group 'nobody'", id="fail/no-group"),
    ],
)
def test_bad_parameters_are_one_clear_line(
    client: FlaskClient, token: str, path: str, query: Any, status: int, message: str
) -> None:
    response = get(client, path, token, query_string=query)
    assert response.status_code == status
    text = response.get_data(as_text=True)
    assert text.startswith(message) and text.count("\n") == 1, text


def test_database_trouble_is_503_not_500(client: FlaskClient, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise Unavailable("the certificate store is unavailable", detail="database error: gone")

    monkeypatch.setattr(MigrationReportQueries, "state_counts", down)
    monkeypatch.setattr(MigrationReportQueries, "device_standings", down)
    for path in (SUMMARY, DEVICES):
        response = get(client, path, token)
        assert (response.status_code, response.data) == (503, b"the certificate store is unavailable\n")


@pytest.mark.parametrize("path", ["/admin/migration", SUMMARY, DEVICES, "/admin/api/openapi.json"])
def test_only_on_the_https_listener(client: FlaskClient, token: str, path: str) -> None:
    assert get(client, path, token, base_url="http://localhost").status_code == 404
    assert get(client, path, token).status_code == 200


# -- the page and the OpenAPI document ----------------------------------------------------------------


def _sha256(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def test_the_page_is_self_contained_and_locked_down(client: FlaskClient) -> None:
    response = get(client, "/admin/migration")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert f"<script>{SCRIPT}</script>" in page and f"<style>{STYLE}</style>" in page
    policy = response.headers["Content-Security-Policy"]
    assert f"script-src {_sha256(SCRIPT)};" in policy and f"style-src {_sha256(STYLE)};" in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)
    assert response.headers["Referrer-Policy"] == "no-referrer" and response.headers["Cache-Control"] == "no-store"
    assert "sessionStorage" in SCRIPT and "localStorage" not in SCRIPT and "innerHTML" not in SCRIPT
    assert 'type="password" id="token-input"' in page


def test_openapi_document(client: FlaskClient) -> None:
    response = get(client, "/admin/api/openapi.json")
    assert response.status_code == 200
    document = json.loads(response.data)
    assert document["openapi"] == "3.1.0" and document["info"]["title"]
    assert {SUMMARY, DEVICES, "/admin/api/scep/challenges", "/admin/api/openapi.json"} <= set(document["paths"])
    assert document["paths"]["/admin/api/scep/challenges"]["post"]["security"] == [{"adminToken": []}]
    schemes = document["components"]["securitySchemes"]
    assert (schemes["adminToken"]["scheme"], schemes["adminClientCertificate"]["type"]) == ("bearer", "mutualTLS")

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    schemas = document["components"]["schemas"]
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert operation["responses"] and operation["operationId"], path
    # the documented device fields are the ones the API answers
    device = device_to_dict_example()
    assert set(schemas["Device"]["properties"]) == set(device)
    assert set(schemas["Device"]["required"]) == set(device)


def device_to_dict_example() -> dict[str, Any]:
    now = utcnow()
    entry = DeviceEntry(1, "d", None, None, "legacy", now, None, None, None, None, None, None, None,
                        ClientFingerprint(None, None, None, None), ())  # fmt: skip
    return device_to_dict(entry)
