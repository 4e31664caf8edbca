"""`gateway challenge add|list|remove`: one-time SCEP challenges listed without their secrets, and
removed so that their secret is refused from then on, with an audit event."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.config import GatewayConfig
from scep.challenges import challenge_sha256
from shared_ca.authority import utcnow
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.repositories import Storage


@pytest.fixture
def storage(gateway_config: GatewayConfig) -> Iterator[Storage]:
    engine = create_store_engine(gateway_config.database_url)
    yield Storage.open(engine)
    engine.dispose()


def gateway(runner: CliRunner, data_dir: Path, *args: str, code: int = 0) -> str:
    result = runner.invoke(main, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == code, result.output
    return result.stdout if code == 0 else result.stderr


def listing(runner: CliRunner, data_dir: Path, *flags: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(
        gateway(runner, data_dir, "challenge", "list", "--format", "json", *flags)
    )
    return rows


def test_list_shows_the_usable_challenges_newest_first_and_never_a_secret(runner: CliRunner, data_dir: Path) -> None:
    assert listing(runner, data_dir) == []
    first = gateway(runner, data_dir, "challenge", "add", "--device", "dev-1").strip()
    second = gateway(runner, data_dir, "challenge", "add", "--device", "dev-2", "--uses", "3").strip()
    rows = listing(runner, data_dir)
    assert [(r["device"], r["status"], r["uses_left"]) for r in rows] == [
        ("dev-2", "usable", 3),
        ("dev-1", "usable", 1),
    ]
    table = gateway(runner, data_dir, "challenge", "list")
    assert "dev-1" in table and "dev-2" in table
    for text in (table, json.dumps(rows), gateway(runner, data_dir, "challenge", "list", "--format", "csv")):
        for secret in (first, second):
            assert secret not in text and challenge_sha256(secret) not in text


def test_list_all_also_shows_spent_and_expired_ones(runner: CliRunner, data_dir: Path, storage: Storage) -> None:
    gateway(runner, data_dir, "challenge", "add", "--device", "dev-expired", "--ttl", "1s")
    gateway(runner, data_dir, "challenge", "add", "--device", "dev-usable")
    later = utcnow() + dt.timedelta(seconds=5)  # the first one has expired
    rows = storage.enrollments.list_challenges(later)
    assert [r.device_id for r in rows] == ["dev-usable"]
    every = storage.enrollments.list_challenges(later, include_unusable=True)
    assert {r.device_id for r in every} == {"dev-expired", "dev-usable"}


def test_remove_refuses_the_secret_from_then_on_and_is_audited(
    runner: CliRunner, data_dir: Path, storage: Storage
) -> None:
    secret = gateway(runner, data_dir, "challenge", "add", "--device", "dev-1", "--uses", "2").strip()
    [row] = listing(runner, data_dir)
    out = gateway(runner, data_dir, "challenge", "remove", str(row["id"]))
    assert out == f"challenge {row['id']} (device dev-1, profile default) removed\n"
    assert listing(runner, data_dir, "--all") == []
    hashed = challenge_sha256(secret)
    assert storage.enrollments.challenge(hashed) is None
    fits = storage.enrollments.usable_challenge(hashed, utcnow(), profile="default", device_id="dev-1", subject=None)
    assert fits is None
    [audit] = storage.audit.audit_events(action="scep.challenge.removed")
    assert audit.detail == {"challenge": row["id"], "device": "dev-1", "profile": "default", "uses_left": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("challenge", "remove", "999"), "Error: no challenge 999"),
        (("challenge", "remove", "zero"), "'zero' is not a valid integer"),
        (("challenge", "remove", "0"), "0 is not in the range x>=1"),
    ],
    ids=["unknown", "not-a-number", "not-positive"],
)
def test_remove_refusals_name_what_is_wrong_and_remove_nothing(
    runner: CliRunner, data_dir: Path, args: tuple[str, ...], message: str
) -> None:
    gateway(runner, data_dir, "challenge", "add", "--device", "dev-1")
    code = 1 if message.startswith("Error: no") else 2
    assert message in gateway(runner, data_dir, *args, code=code)
    assert len(listing(runner, data_dir)) == 1
