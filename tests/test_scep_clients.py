"""The SCEP client family of a device (scep.clients): recognised from requests captured from real
clients and from the User-Agents their makers document, kept on the device row at each SCEP contact
(also through the Flask app), filled in by migration 0009 for rows from before, and told apart in the
migration report with what each family can do about EST (migration_tools.client_families)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, text
from werkzeug.test import TestResponse

from migration_tools.client_families import EST_NO, FAMILIES, UNKNOWN, family_facts
from scep.asn1 import PkiStatus
from scep.clients import ClientFamily, ScepFingerprint, family_from_user_agent, recognise_client
from scep.message import decode_signed_message
from shared_ca.storage.repositories import Storage
from tests.test_migration_0006 import _to
from tests.test_scep_service import device_key, enrollment, get_ca, reply_of

VECTORS = Path(__file__).resolve().parent / "vectors"
NDES_AGENT = "Mozilla/4.0 (compatible; Win32; NDES client)"


def captured(name: str) -> ScepFingerprint:
    """What a captured request (tests/vectors) showed: its HTTP request as recorded, its transactionID."""
    meta: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())["pkioperation"]
    message = decode_signed_message((VECTORS / f"{name}.der").read_bytes())
    return ScepFingerprint(
        user_agent=meta["user_agent"],
        path=meta["path"],
        method=meta["method"],
        http_version=meta["http_version"],
        content_type=meta["content_type"],
        transaction_id=message.attributes.transaction_id,
        digest=message.digest.value if message.digest is not None else None,
    )


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("certmonger-pkcsreq", ClientFamily.CERTMONGER),
        ("certmonger-resubmit", ClientFamily.CERTMONGER),
        ("certmonger-rekey", ClientFamily.CERTMONGER),
        ("scepclient-pkcsreq", ClientFamily.SCEPCLIENT),
        ("scepclient-renewalreq", ClientFamily.SCEPCLIENT),
    ],
)
def test_captured_requests_are_recognised(name: str, family: ClientFamily) -> None:
    assert recognise_client(captured(name)) is family


@pytest.mark.parametrize(
    ("fingerprint", "family"),
    [
        pytest.param(
            ScepFingerprint(user_agent="profiled/1.0 CFNetwork/1496.0.7 Darwin/23.5.0", method="POST"),
            ClientFamily.APPLE,
            id="apple-profiled",
        ),
        pytest.param(ScepFingerprint(user_agent="mdmclient (unknown version) CFNetwork"), ClientFamily.APPLE, id="mac"),
        pytest.param(
            ScepFingerprint(user_agent="Mozilla/4.0 (compatible; Win32; NDES client)"), ClientFamily.WINDOWS, id="ndes"
        ),
        pytest.param(
            ScepFingerprint(path="/certsrv/mscep/mscep.dll/pkiclient.exe", method="GET"),
            ClientFamily.WINDOWS,
            id="ndes-path-no-agent",
        ),
        pytest.param(
            ScepFingerprint(user_agent="Mozilla/4.0 (compatible; MSIE 5.0; Cisco PKI)", http_version="HTTP/1.0"),
            ClientFamily.CISCO_IOS,
            id="cisco",
        ),
        pytest.param(ScepFingerprint(user_agent="sscep/0.10.0"), ClientFamily.SSCEP, id="sscep-agent"),
        pytest.param(
            ScepFingerprint(path="/cgi-bin/pkiclient.exe", method="GET", http_version="HTTP/1.0"),
            ClientFamily.SSCEP,
            id="sscep-http10-no-agent",
        ),
        pytest.param(ScepFingerprint(user_agent="Java/17.0.9"), ClientFamily.JSCEP, id="jscep"),
        pytest.param(ScepFingerprint(user_agent="Go-http-client/1.1"), ClientFamily.SCEPCLIENT, id="go"),
        pytest.param(
            ScepFingerprint(user_agent="Go-http-client/1.1", cipher="des", digest="sha1", message_type="RenewalReq"),
            ClientFamily.SCEPCLIENT,
            id="go-des-sha1",
        ),
        pytest.param(
            ScepFingerprint(user_agent="Go-http-client/1.1", cipher="aes256", digest="sha256"),
            ClientFamily.UNKNOWN,
            id="another-go-client",
        ),
        pytest.param(ScepFingerprint(user_agent="curl/8.5.0"), ClientFamily.UNKNOWN, id="curl"),
        pytest.param(ScepFingerprint(), ClientFamily.UNKNOWN, id="nothing"),
        pytest.param(
            ScepFingerprint(method="GET", http_version="HTTP/1.1", transaction_id="abc123"),
            ClientFamily.UNKNOWN,
            id="get-with-a-hex-transaction",
        ),
        pytest.param(
            ScepFingerprint(method="POST", http_version="HTTP/1.1", transaction_id="1" * 77),
            ClientFamily.UNKNOWN,
            id="post-with-a-decimal-transaction",
        ),
    ],
)
def test_fingerprints(fingerprint: ScepFingerprint, family: ClientFamily) -> None:
    assert recognise_client(fingerprint) is family


def test_the_family_table_covers_every_family_with_a_source() -> None:
    assert set(FAMILIES) == {f.value for f in ClientFamily} - {"unknown"}
    for key, facts in FAMILIES.items():
        assert facts.sources and facts.route, key
        assert facts.moves_to_est == (facts.est_client != EST_NO or facts.host_alternative), key
    assert not FAMILIES["apple"].moves_to_est and not FAMILIES["windows"].moves_to_est
    assert FAMILIES["certmonger"].moves_to_est and FAMILIES["cisco-ios"].moves_to_est
    assert family_facts(None) is UNKNOWN and family_facts("nonsense") is UNKNOWN and UNKNOWN.moves_to_est


def test_family_from_user_agent() -> None:
    assert family_from_user_agent(None) is ClientFamily.UNKNOWN
    assert family_from_user_agent("Mozilla/4.0 (compatible; Win32; NDES client)") is ClientFamily.WINDOWS


# -- kept on the device row, through the app ---------------------------------------------------------


def send(client: FlaskClient, der: bytes, user_agent: str) -> TestResponse:
    headers = {"Content-Type": "application/x-pki-message", "User-Agent": user_agent}
    return client.post("/scep", query_string={"operation": "PKIOperation"}, data=der, headers=headers)


def test_a_scep_enrollment_keeps_its_client_family_on_the_device(app: Flask, client: FlaskClient) -> None:
    ra = get_ca(client)
    sent = enrollment(ra, "windows-1", key=device_key(1))
    assert reply_of(send(client, sent.der, NDES_AGENT), ra, sent).status is PkiStatus.SUCCESS
    devices = Storage.open(app.extensions["gateway"].get().storage.engine).devices
    device = devices.device("windows-1")
    assert device is not None and device.scep_client == "windows"
    # A later contact that tells nothing keeps what an earlier one told.
    again = enrollment(ra, "windows-1", key=device_key(2))
    assert reply_of(send(client, again.der, "curl/8.5.0"), ra, again).status is PkiStatus.SUCCESS
    kept = devices.device("windows-1")
    assert kept is not None and kept.scep_client == "windows" and kept.scep_user_agent == "curl/8.5.0"


# -- migration 0009 ------------------------------------------------------------------------------------


@pytest.fixture
def at_0008(store: Storage) -> Iterator[Engine]:
    _to(store.engine, "0008_native", down=True)
    yield store.engine


def test_0009_fills_in_the_family_from_the_user_agent_a_row_kept(at_0008: Engine) -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    agents = {
        "ipad": "profiled/1.0 CFNetwork/1496 Darwin/23.5.0",
        "win": "Mozilla/4.0 (compatible; Win32; NDES client)",
        "router": "Mozilla/4.0 (compatible; MSIE 5.0; Cisco PKI)",
        "go": "Go-http-client/1.1",
        "java": "Java/1.8.0_402",
        "host": "sscep/0.10",
        "other": "curl/8.5.0",
        "none": None,
    }
    with at_0008.begin() as conn:
        for identity, agent in agents.items():
            conn.execute(
                text(
                    "INSERT INTO devices (identity, tags, state, source, first_seen_at, updated_at, scep_user_agent)"
                    " VALUES (:identity, '[]', 'legacy', 'scep', :now, :now, :agent)"
                ),
                {"identity": identity, "now": now, "agent": agent},
            )
    _to(at_0008, "0009_client_family")
    with at_0008.connect() as conn:
        found: dict[str, str | None] = {
            row[0]: row[1] for row in conn.execute(text("SELECT identity, scep_client FROM devices"))
        }
    assert found == {
        "ipad": "apple",
        "win": "windows",
        "router": "cisco-ios",
        "go": "micromdm-scepclient",
        "java": "jscep",
        "host": "sscep",
        "other": None,
        "none": None,
    }
    assert {family_from_user_agent(agents[i]).value for i in found if found[i]} == {v for v in found.values() if v}
    _to(at_0008, "0008_native", down=True)  # and back
    _to(at_0008, "0009_client_family")
