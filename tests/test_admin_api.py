"""The admin API and admin tokens: `gateway admin-token`, POST /admin/api/scep/challenges, the
NDES-compatible /certsrv/mscep_admin/ page, HTTPS-only serving, and challenges from both working
(once) for SCEP enrollment. Over SQLite and PostgreSQL (the database_url fixture)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway.cli import main
from scep.asn1 import FailInfo
from shared_ca.errors import Conflict, NotFound
from shared_ca.storage.admin import AdminTokens, admin_token_sha256
from shared_ca.storage.repositories import Storage
from tests.support import SettableClock
from tests.test_scep_service import device_key, enroll, enrollment, failure, get_ca, name

HTTPS = "https://localhost"
API = "/admin/api/scep/challenges"
NDES = "/certsrv/mscep_admin/"
# What MDM connectors scrape the NDES page with (case-sensitive, NDES's upper-case <B>).
NDES_SCRAPE = re.compile(r"challenge password is: <B> ([A-Z0-9]{16,32}) </B>")


def tokens_of(app: Flask) -> AdminTokens:
    return Storage.open(app.extensions["gateway"].get().storage.engine).admin_tokens


@pytest.fixture
def token(app: Flask) -> str:
    return tokens_of(app).create_admin_token("mdm", created_by="test", now=dt.datetime.now(dt.UTC)).token


def api(client: FlaskClient, body: Any, token: str | None, *, raw: bytes | None = None, **kw: Any) -> TestResponse:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post(
        API, data=data, headers=headers, content_type="application/json", base_url=kw.pop("base_url", HTTPS), **kw
    )


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def ndes_page(response: TestResponse) -> str:
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"] == "text/html; charset=utf-16"
    assert response.data.startswith(b"\xff\xfe")  # UTF-16LE with a byte-order mark, as NDES sends it
    page: str = response.data.decode("utf-16")
    return page


def ndes_secret(client: FlaskClient, token: str, path: str = NDES, **query: str) -> str:
    page = ndes_page(client.get(path, headers=basic("mdm", token), base_url=HTTPS, query_string=query))
    match = NDES_SCRAPE.search(page)
    assert match is not None, page
    return match.group(1)


def run(runner: CliRunner, data_dir: Path, *args: str, code: int = 0) -> str:
    result = runner.invoke(main, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == code, result.output
    return result.output


# -- storage ----------------------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_authenticate_until_disabled(store: Storage, clock: SettableClock) -> None:
    tokens = store.admin_tokens
    created = tokens.create_admin_token("mdm", created_by="test", now=clock())
    assert len(created.token) >= 43  # 32 random bytes, URL-safe base64
    assert "token=<secret>" in repr(created)
    assert created.record.token_sha256 == admin_token_sha256(created.token) != created.token
    assert (created.record.scopes, created.record.last_used_at, created.record.active) == (("admin",), None, True)
    clock.advance(minutes=5)
    used = tokens.authenticate_admin_token(created.token, clock())
    assert used is not None and used.name == "mdm" and used.last_used_at == clock()
    assert tokens.authenticate_admin_token(created.token + "x", clock()) is None
    assert tokens.authenticate_admin_token("", clock()) is None
    disabled = tokens.disable_admin_token("mdm", actor="test", now=clock())
    assert disabled.disabled_at == clock() and not disabled.active
    assert tokens.disable_admin_token("mdm", actor="test", now=clock() + dt.timedelta(hours=1)) == disabled
    assert tokens.authenticate_admin_token(created.token, clock()) is None
    assert tokens.admin_token_for_secret(created.token) == disabled
    actions = [e.action for e in store.audit.audit_events() if e.action.startswith("admin_token.")]
    assert sorted(actions) == ["admin_token.created", "admin_token.disabled"]
    assert all(created.token not in json.dumps(e.detail) for e in store.audit.audit_events())


def test_token_names_are_unique_and_checked(store: Storage, clock: SettableClock) -> None:
    tokens = store.admin_tokens
    tokens.create_admin_token("mdm", created_by="test", now=clock())
    tokens.disable_admin_token("mdm", actor="test", now=clock())
    with pytest.raises(Conflict, match="already exists"):
        tokens.create_admin_token("mdm", created_by="test", now=clock())
    for bad in ("", "a:b", "x" * 65, "-lead", "spa ce"):
        with pytest.raises(ValueError, match="not a token name"):
            tokens.create_admin_token(bad, created_by="test", now=clock())
    with pytest.raises(ValueError, match="scopes"):
        tokens.create_admin_token("other", created_by="test", now=clock(), scopes=())
    with pytest.raises(NotFound, match="no admin token named 'nobody'"):
        tokens.disable_admin_token("nobody", actor="test", now=clock())
    assert [t.name for t in tokens.list_admin_tokens()] == ["mdm"]


# -- CLI ----------------------------------------------------------------------------------------------


def test_cli_new_list_disable(runner: CliRunner, data_dir: Path, app: Flask, client: FlaskClient) -> None:
    result = runner.invoke(main, ["admin-token", "add", "intune", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert len(token) >= 43 and "\n" not in token
    assert "shown only now" in result.stderr
    assert api(client, {"device_id": "d1"}, token).status_code == 201

    table = run(runner, data_dir, "admin-token", "list")
    assert table.splitlines()[0].split() == ["NAME", "STATUS", "SCOPES", "CREATED_AT", "LAST_USED_AT"]
    assert table.splitlines()[1].split()[:3] == ["intune", "active", "admin"]
    assert token not in table
    [row] = json.loads(run(runner, data_dir, "admin-token", "list", "--format", "json"))
    assert row["name"] == "intune" and row["last_used_at"] is not None and row["disabled_at"] is None
    assert "intune,disabled" not in run(runner, data_dir, "admin-token", "list", "--format", "csv")

    assert "admin token 'intune' disabled" in run(runner, data_dir, "admin-token", "disable", "intune")
    assert api(client, {"device_id": "d1"}, token).status_code == 401
    [row] = json.loads(run(runner, data_dir, "admin-token", "list", "--format", "json"))
    assert row["status"] == "disabled" and row["disabled_at"] is not None


def test_cli_refusals(runner: CliRunner, data_dir: Path) -> None:
    run(runner, data_dir, "admin-token", "add", "intune")
    assert "already exists" in run(runner, data_dir, "admin-token", "add", "intune", code=1)
    assert "no admin token named 'nobody'" in run(runner, data_dir, "admin-token", "disable", "nobody", code=1)
    assert "not a token name" in run(runner, data_dir, "admin-token", "add", "a:b", code=2)
    assert "NAME" in run(runner, data_dir, "admin-token", "list", "--format", "csv").upper()


# -- POST /admin/api/scep/challenges ---------------------------------------------------------------


def test_api_creates_a_challenge(client: FlaskClient, app: Flask, token: str) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    body = {"device_id": "dev-api", "profile": "default", "ttl_seconds": 600, "uses": 2}
    response = api(client, {**body, "expected_subject": "2.5.4.3=dev-api,O=Example"}, token)
    assert response.status_code == 201, response.data
    assert response.headers["Cache-Control"] == "no-store"
    reply = response.get_json()
    assert set(reply) == {"challenge", "device_id", "profile", "expires_at", "uses", "expected_subject"}
    assert (reply["device_id"], reply["profile"], reply["uses"]) == ("dev-api", "default", 2)
    assert reply["expected_subject"] == "CN=dev-api,O=Example"  # normalised to the form CSRs are compared in
    assert re.fullmatch(r"[0-9a-f]{48}", reply["challenge"])
    expires = dt.datetime.fromisoformat(reply["expires_at"].replace("Z", "+00:00"))
    assert reply["expires_at"].endswith("Z")
    assert dt.timedelta(seconds=599) <= expires - before <= dt.timedelta(seconds=602)
    store = app.extensions["gateway"].get().storage
    events = [e for e in store.audit.audit_events(action="scep.challenge.created")]
    assert events[0].actor == "admin-token:mdm" and reply["challenge"] not in json.dumps(events[0].detail)
    record = tokens_of(app).admin_token("mdm")
    assert record is not None and record.last_used_at is not None


def test_api_defaults(client: FlaskClient, token: str) -> None:
    response = api(client, {"device_id": "dev-1"}, token)
    assert response.status_code == 201
    reply = response.get_json()
    assert (reply["profile"], reply["uses"], reply["expected_subject"]) == ("default", 1, None)
    expires = dt.datetime.fromisoformat(reply["expires_at"].replace("Z", "+00:00"))
    assert abs(expires - dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)) < dt.timedelta(seconds=5)


def _unauthorized(response: TestResponse, scheme: str) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith(scheme)
    assert response.mimetype == "text/plain"
    assert response.data == b"unauthorized\n"


@pytest.mark.parametrize(
    ("header", "cause"),
    [
        (None, "no Authorization header"),
        ("Basic bWRtOng=", "is not Bearer"),
        ("Bearer", "is not Bearer with a token"),
        ("Bearer not-the-token", "unknown admin token"),
    ],
)
def test_api_refuses_missing_or_wrong_tokens(
    client: FlaskClient, token: str, header: str | None, cause: str, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    with caplog.at_level(logging.WARNING, logger="gateway.admin"):
        response = client.post(API, json={"device_id": "d"}, headers=headers, base_url=HTTPS)
    _unauthorized(response, "Bearer")
    assert cause in caplog.text and "(401)" in caplog.text


def test_api_refuses_a_disabled_token(
    client: FlaskClient, app: Flask, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    tokens_of(app).disable_admin_token("mdm", actor="test", now=dt.datetime.now(dt.UTC))
    with caplog.at_level(logging.WARNING, logger="gateway.admin"):
        response = api(client, {"device_id": "d"}, token)
    _unauthorized(response, "Bearer")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert "admin token 'mdm' is disabled" in caplog.text


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"null"], ids=repr)
def test_api_refuses_a_body_that_is_not_a_json_object(client: FlaskClient, token: str, raw: bytes) -> None:
    response = api(client, None, token, raw=raw)
    assert response.status_code == 400
    assert response.data == b"the body must be a JSON object\n"


BAD_FIELDS = [
    ({}, "device_id"),
    ({"device_id": ""}, "device_id"),
    ({"device_id": "  "}, "device_id"),
    ({"device_id": 7}, "device_id"),
    ({"device_id": None}, "device_id"),
    ({"device_id": "x" * 256}, "device_id"),
    ({"device_id": "a\nb"}, "device_id"),
    ({"device_id": "d", "profile": 3}, "profile"),
    ({"device_id": "d", "ttl_seconds": 59}, "ttl_seconds"),
    ({"device_id": "d", "ttl_seconds": 30 * 86400 + 1}, "ttl_seconds"),
    ({"device_id": "d", "ttl_seconds": "3600"}, "ttl_seconds"),
    ({"device_id": "d", "ttl_seconds": 3600.5}, "ttl_seconds"),
    ({"device_id": "d", "ttl_seconds": True}, "ttl_seconds"),
    ({"device_id": "d", "uses": 0}, "uses"),
    ({"device_id": "d", "uses": 1001}, "uses"),
    ({"device_id": "d", "uses": None}, "uses"),
    ({"device_id": "d", "expected_subject": 5}, "expected_subject"),
    ({"device_id": "d", "expected_subject": "not a name"}, "expected_subject"),
    ({"device_id": "d", "expected_subject": ""}, "expected_subject"),
    ({"device_id": "d", "ttl": 60}, "ttl"),
]


@pytest.mark.parametrize(("body", "field"), BAD_FIELDS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_FIELDS)])
def test_api_names_the_bad_field(client: FlaskClient, app: Flask, token: str, body: Any, field: str) -> None:
    response = api(client, body, token)
    assert response.status_code == 400, response.data
    assert response.mimetype == "text/plain"
    assert response.data.decode().startswith(f"{field}: ")
    assert app.extensions["gateway"].get().storage.audit.audit_events(action="scep.challenge.created") == []


def test_api_boundaries_are_accepted(client: FlaskClient, token: str) -> None:
    for body in ({"ttl_seconds": 60, "uses": 1000}, {"ttl_seconds": 30 * 86400}, {"expected_subject": None}):
        assert api(client, {"device_id": "d", **body}, token).status_code == 201


def test_api_unknown_profile_is_404(client: FlaskClient, token: str) -> None:
    response = api(client, {"device_id": "d", "profile": "nope"}, token)
    assert response.status_code == 404
    assert response.data == b"no profile 'nope'\n"


def test_authentication_comes_before_the_body(client: FlaskClient) -> None:
    _unauthorized(api(client, None, None, raw=b"{"), "Bearer")


# -- the plain-HTTP listener ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", API), ("GET", API), ("GET", NDES), ("GET", "/certsrv/mscep_admin"), ("GET", "/admin/other")],
)
def test_admin_paths_do_not_exist_on_the_http_listener(
    client: FlaskClient, token: str, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    headers = basic("mdm", token) if path.startswith("/certsrv") else {"Authorization": f"Bearer {token}"}
    with caplog.at_level(logging.WARNING, logger="gateway.admin"):
        response = client.open(path, method=method, headers=headers, json={"device_id": "d"})
    assert response.status_code == 404
    assert "on the http listener" in caplog.text
    assert client.get("/healthz").status_code == 200  # the listener itself works


def test_the_https_listener_reports_itself(client: FlaskClient) -> None:
    assert client.get("/healthz", base_url=HTTPS).get_json()["listener"] == "https"
    assert client.get(API, base_url=HTTPS).status_code == 405


# -- GET /certsrv/mscep_admin/ ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [NDES, "/certsrv/mscep_admin"])
def test_ndes_page_hands_out_a_one_time_challenge(client: FlaskClient, app: Flask, token: str, path: str) -> None:
    response = client.get(path, headers=basic("mdm", token), base_url=HTTPS)
    assert response.headers["Cache-Control"] == "no-store"
    page = ndes_page(response)
    match = NDES_SCRAPE.search(page)
    assert match is not None
    secret = match.group(1)
    assert re.fullmatch(r"[0-9A-F]{32}", secret)
    sentence = re.compile(r"The enrollment challenge password is: <b> (\S+) </b>", re.IGNORECASE)
    assert [m.group(1) for m in sentence.finditer(page)] == [secret]
    assert "This password can be used only once and will expire within 60 minutes." in page
    assert "Network Device Enrollment Service" in page
    ca_der = app.extensions["gateway"].get().authority.certificate.public_bytes(Encoding.DER)
    ca_sha1 = hashlib.sha1(ca_der).hexdigest()  # noqa: S324 - NDES shows the SHA-1 thumbprint
    assert f"<B> {ca_sha1.upper()} </B>" in page
    [created] = app.extensions["gateway"].get().storage.audit.audit_events(action="scep.challenge.created")
    assert created.actor == "admin-token:mdm" and created.detail["device"] is None
    assert created.detail["profile"] == "default" and created.detail["uses"] == 1
    assert ndes_secret(client, token) != secret  # every fetch is a new challenge


@pytest.mark.parametrize(
    ("headers", "cause"),
    [
        ({}, "no HTTP Basic credentials"),
        ({"Authorization": "Bearer x"}, "no HTTP Basic credentials"),
        (basic("mdm", ""), "without a password"),
        (basic("mdm", "wrong"), "unknown admin token"),
        ("right-token-wrong-user", "was presented with user name 'other'"),
    ],
)
def test_ndes_page_refuses_missing_or_wrong_credentials(
    client: FlaskClient, app: Flask, token: str, headers: Any, cause: str, caplog: pytest.LogCaptureFixture
) -> None:
    if headers == "right-token-wrong-user":
        headers = basic("other", token)
    with caplog.at_level(logging.WARNING, logger="gateway.admin"):
        response = client.get(NDES, headers=headers, base_url=HTTPS)
    _unauthorized(response, "Basic")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="SCEP challenge"'
    assert cause in caplog.text
    assert app.extensions["gateway"].get().storage.audit.audit_events(action="scep.challenge.created") == []


def test_ndes_page_refuses_a_disabled_token(client: FlaskClient, app: Flask, token: str) -> None:
    tokens_of(app).disable_admin_token("mdm", actor="test", now=dt.datetime.now(dt.UTC))
    _unauthorized(client.get(NDES, headers=basic("mdm", token), base_url=HTTPS), "Basic")


def test_ndes_page_profile_query(client: FlaskClient, app: Flask, token: str) -> None:
    ndes_secret(client, token, profile="default")
    response = client.get(NDES, headers=basic("mdm", token), base_url=HTTPS, query_string={"profile": "nope"})
    assert response.status_code == 404
    assert response.data == b"no profile 'nope'\n"


# -- end to end: the challenges work for SCEP enrollment, once ----------------------------------


def test_api_challenge_enrolls_once(client: FlaskClient, token: str) -> None:
    secret = api(client, {"device_id": "dev-api"}, token).get_json()["challenge"]
    ra = get_ca(client)
    cert = enroll(client, ra, enrollment(ra, "dev-api", challenge=secret))
    assert cert.subject == name("dev-api")
    again = failure(client, ra, enrollment(ra, "dev-api", key=device_key(1), challenge=secret))
    assert again.fail_info is FailInfo.BAD_REQUEST
    assert again.fail_info_text == "the challenge password is not valid"


def test_api_challenge_is_bound_to_its_device(client: FlaskClient, token: str) -> None:
    secret = api(client, {"device_id": "dev-api"}, token).get_json()["challenge"]
    ra = get_ca(client)
    assert failure(client, ra, enrollment(ra, "someone-else", challenge=secret)).fail_info is FailInfo.BAD_REQUEST
    assert enroll(client, ra, enrollment(ra, "dev-api", key=device_key(1), challenge=secret)).subject == name("dev-api")


def test_ndes_challenge_enrolls_any_device_once(client: FlaskClient, token: str) -> None:
    secret = ndes_secret(client, token)
    ra = get_ca(client)
    cert = enroll(client, ra, enrollment(ra, "router-7", challenge=secret))
    assert cert.subject == name("router-7")
    again = failure(client, ra, enrollment(ra, "router-8", key=device_key(1), challenge=secret))
    assert again.fail_info is FailInfo.BAD_REQUEST
    assert again.fail_info_text == "the challenge password is not valid"
