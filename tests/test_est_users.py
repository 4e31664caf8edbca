"""EST users: migration 0004, EstUsers (add, look up, disable, spend and refund uses, the race for
the last use) and `gateway est-user add/list/disable` with each refusal naming its field."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner, Result
from sqlalchemy import inspect

from gateway.cli import main
from gateway.config import load_config
from shared_ca.errors import Conflict, NotFound
from shared_ca.storage.db import (
    MIGRATIONS_DIR,
    create_store_engine,
    current_revision,
    head_revision,
    migrate_to_head,
)
from shared_ca.storage.enrollment_records import EnrollmentEvent
from shared_ca.storage.est_users import (
    EstUserRecord,
    EstUsers,
    check_secret,
    hash_generated_secret,
    hash_password,
    new_generated_secret,
)
from shared_ca.storage.repositories import Storage
from tests.support import SettableClock, run_together
from tests.test_cli import assert_clean_failure, ok

FAST_HASH = hash_generated_secret("bootstrap-secret-for-tests")


@pytest.fixture
def users(store: Storage) -> EstUsers:
    return store.est_users


def add(users: EstUsers, clock: SettableClock, name: str = "alice", **changes: Any) -> EstUserRecord:
    fields: dict[str, Any] = {"kind": "bootstrap", "created_by": "test", "now": clock()}
    return users.add_est_user(name, changes.pop("secret_hash", FAST_HASH), **{**fields, **changes})


# -- migration -----------------------------------------------------------------------------------


def test_migration_0004_adds_est_users_and_the_tls_version_column(store: Storage) -> None:
    assert current_revision(store.engine) == head_revision()
    inspector = inspect(store.engine)
    assert "tls_version" in {c["name"] for c in inspector.get_columns("enrollment_events")}
    columns = {c["name"]: c for c in inspector.get_columns("est_users")}
    assert {"name", "secret_hash", "kind", "labels", "device_identity", "uses_left", "expires_at"} <= set(columns)
    assert columns["uses_left"]["nullable"] and columns["labels"]["nullable"]
    assert {c["name"] for c in inspector.get_check_constraints("est_users")} == {
        "ck_est_users_uses_left",
        "ck_est_users_kind",
    }
    unique = [c["column_names"] for c in inspector.get_unique_constraints("est_users")]
    assert ["name"] in unique or any(
        i["unique"] and i["column_names"] == ["name"] for i in inspector.get_indexes("est_users")
    )


def test_migration_0004_downgrades_keeping_enrollment_events_intact(store: Storage) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store.engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003_admin_tokens")
        conn.commit()
        inspector = inspect(conn)
        assert "est_users" not in inspector.get_table_names()
        assert "tls_version" not in {c["name"] for c in inspector.get_columns("enrollment_events")}
        checks = {c["name"] for c in inspector.get_check_constraints("enrollment_events")}
        assert "ck_enrollment_events_protocol" in checks  # not lost to a table rebuild
    migrate_to_head(store.engine)
    assert current_revision(store.engine) == head_revision()


def test_enrollment_events_carry_the_tls_version(store: Storage, clock: SettableClock) -> None:
    enrollments = store.enrollments
    enrollments.record_event(EnrollmentEvent("est", "simpleenroll", "issued", tls_version="TLSv1.3"), clock())
    enrollments.record_event(EnrollmentEvent("scep", "PKCSReq", "issued"), clock())
    assert [e.tls_version for e in enrollments.enrollment_events()] == [None, "TLSv1.3"]


# -- the store -----------------------------------------------------------------------------------


def test_add_and_look_up(users: EstUsers, store: Storage, clock: SettableClock) -> None:
    expires = clock() + dt.timedelta(days=7)
    added = add(users, clock, labels=("default", "wifi"), device_identity="dev-1", uses_left=3, expires_at=expires)
    assert (added.name, added.kind, added.labels, added.device_identity) == (
        "alice",
        "bootstrap",
        ("default", "wifi"),
        "dev-1",
    )
    assert (added.uses_left, added.expires_at, added.created_at, added.created_by) == (3, expires, clock(), "test")
    assert (added.disabled_at, added.last_used_at, added.status(clock())) == (None, None, "active")
    assert FAST_HASH not in repr(added)
    assert users.est_user("alice") == added
    assert users.est_user("nobody") is None
    add(users, clock, "bob", kind="password", secret_hash=hash_password("correct horse"))
    assert [u.name for u in users.list_est_users()] == ["alice", "bob"]
    [event] = [e for e in store.audit.audit_events() if e.action == "est_user.created" and e.detail["name"] == "alice"]
    assert event.detail == {
        "est_user": added.id,
        "name": "alice",
        "kind": "bootstrap",
        "labels": ["default", "wifi"],
        "uses": 3,
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"name": ""}, "name '' is not an EST user name", id="fail/empty-name"),
        pytest.param({"name": "a:b"}, "name 'a:b'", id="fail/colon-in-name"),
        pytest.param({"name": "spa ce"}, "name 'spa ce'", id="fail/space-in-name"),
        pytest.param({"name": "x" * 129}, "1-128 characters", id="fail/long-name"),
        pytest.param({"kind": "token"}, "kind must be one of", id="fail/kind"),
        pytest.param({"secret_hash": "hunter22"}, "secret_hash must be a stored hash", id="fail/plaintext-secret"),
        pytest.param({"uses_left": 0}, "uses_left must be at least 1", id="fail/zero-uses"),
        pytest.param({"labels": ("x" * 65,)}, "must have 1-64 characters", id="fail/long-label"),
        pytest.param({"labels": ("a,b",)}, "and no ','", id="fail/comma-in-label"),
        pytest.param({"device_identity": ""}, "device_identity must have", id="fail/empty-device"),
        pytest.param({"expires_at": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)}, "expires_at must be", id="fail/past"),
    ],
)
def test_add_refuses_bad_values(users: EstUsers, clock: SettableClock, changes: dict[str, Any], message: str) -> None:
    changes = dict(changes)  # the parameter is shared by every backend's run
    name = changes.pop("name", "alice")
    with pytest.raises(ValueError, match=message):
        add(users, clock, name, **changes)
    assert users.list_est_users() == []


def test_names_are_unique_even_once_disabled(users: EstUsers, clock: SettableClock) -> None:
    add(users, clock, "a.b_c@d-1")
    users.disable_est_user("a.b_c@d-1", actor="test", now=clock())
    with pytest.raises(Conflict, match=re.escape("an EST user named 'a.b_c@d-1' already exists")):
        add(users, clock, "a.b_c@d-1")


def test_disable(users: EstUsers, store: Storage, clock: SettableClock) -> None:
    added = add(users, clock)
    clock.advance(minutes=1)
    disabled = users.disable_est_user("alice", actor="admin", now=clock())
    assert (disabled.id, disabled.disabled_at, disabled.status(clock())) == (added.id, clock(), "disabled")
    with pytest.raises(Conflict, match="'alice' is already disabled"):
        users.disable_est_user("alice", actor="admin", now=clock())
    with pytest.raises(NotFound, match="no EST user named 'nobody'"):
        users.disable_est_user("nobody", actor="admin", now=clock())
    assert [e.actor for e in store.audit.audit_events(action="est_user.disabled")] == ["admin"]


def test_consume_and_refund_uses(users: EstUsers, clock: SettableClock) -> None:
    limited = add(users, clock, "limited", uses_left=2)
    unlimited = add(users, clock, "unlimited")
    clock.advance(minutes=1)
    assert users.consume_use(limited.id, clock()) and users.consume_use(limited.id, clock())
    assert not users.consume_use(limited.id, clock())
    spent = users.est_user("limited")
    assert spent is not None and (spent.uses_left, spent.last_used_at, spent.status(clock())) == (0, clock(), "used up")
    users.refund_use(limited.id)
    assert users.consume_use(limited.id, clock())
    for _ in range(3):
        assert users.consume_use(unlimited.id, clock())
    users.refund_use(unlimited.id)  # nothing to give back
    again = users.est_user("unlimited")
    assert again is not None and (again.uses_left, again.last_used_at) == (None, clock())
    assert not users.consume_use(10_000, clock())  # no such user


def test_consume_refuses_disabled_and_expired_users(users: EstUsers, clock: SettableClock) -> None:
    expiring = add(users, clock, "expiring", expires_at=clock() + dt.timedelta(hours=1))
    disabled = add(users, clock, "disabled")
    users.disable_est_user("disabled", actor="test", now=clock())
    assert not users.consume_use(disabled.id, clock())
    assert users.consume_use(expiring.id, clock())
    clock.advance(hours=1)
    assert not users.consume_use(expiring.id, clock())


@pytest.mark.parametrize("uses", [1, 3])
def test_concurrent_attempts_spend_exactly_the_uses_left(users: EstUsers, clock: SettableClock, uses: int) -> None:
    user = add(users, clock, uses_left=uses)
    results, errors = run_together(16, lambda _i: users.consume_use(user.id, clock()))
    assert errors == []
    assert sorted(results, key=bool) == [False] * (16 - uses) + [True] * uses
    after = users.est_user("alice")
    assert after is not None and after.uses_left == 0


# -- hashing (the stored forms) ------------------------------------------------------------------


def test_generated_secrets_are_long_and_fresh() -> None:
    secrets = {new_generated_secret() for _ in range(50)}
    assert len(secrets) == 50 and all(len(s) >= 32 for s in secrets)  # 192 bits, URL-safe base64
    one = next(iter(secrets))
    assert check_secret(hash_generated_secret(one), one) and not check_secret(hash_generated_secret(one), one + "x")


# -- CLI -----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def est(runner: CliRunner, data_dir: Path, *args: str, stdin: str | None = None) -> Result:
    return runner.invoke(main, ["est-user", *args, "--data-dir", str(data_dir)], input=stdin)


def cli_users(data_dir: Path) -> Storage:
    engine = create_store_engine(load_config(data_dir, environ={}).database_url)
    return Storage.open(engine)


def test_cli_add_list_disable(runner: CliRunner, data_dir: Path) -> None:
    added = ok(est(runner, data_dir, "add", "alice", "--password-stdin", "--label", "default", stdin="correct horse\n"))
    assert "EST user 'alice' added" in added.stdout
    generated = ok(est(runner, data_dir, "add", "dev-1", "--generate", "--uses", "1", "--expires", "2999-01-01"))
    secret = generated.stdout.strip()
    assert len(secret) >= 32 and "shown only now" in generated.stderr
    store = cli_users(data_dir)
    try:
        alice, device = store.est_users.est_user("alice"), store.est_users.est_user("dev-1")
        assert alice is not None and alice.kind == "password" and alice.secret_hash.startswith("scrypt$14$8$1$")
        assert check_secret(alice.secret_hash, "correct horse") and alice.labels == ("default",)
        assert device is not None and device.kind == "bootstrap" and device.secret_hash.startswith("sha256$")
        assert check_secret(device.secret_hash, secret) and device.uses_left == 1
        assert device.expires_at == dt.datetime(2999, 1, 1, tzinfo=dt.UTC)
    finally:
        store.engine.dispose()

    listed = json.loads(ok(est(runner, data_dir, "list", "--format", "json")).stdout)
    assert [(r["name"], r["kind"], r["status"], r["uses_left"]) for r in listed] == [
        ("alice", "password", "active", None),
        ("dev-1", "bootstrap", "active", 1),
    ]
    for fmt in ("table", "json", "csv"):
        text = ok(est(runner, data_dir, "list", "--format", fmt)).stdout
        assert "scrypt$" not in text and "sha256$" not in text and secret not in text and "alice" in text

    assert "EST user 'alice' disabled at" in ok(est(runner, data_dir, "disable", "alice")).stdout
    table = ok(est(runner, data_dir, "list")).stdout
    assert any(line.startswith("alice") and "disabled" in line for line in table.splitlines())
    assert_clean_failure(est(runner, data_dir, "disable", "alice"), "already disabled", exit_code=1)
    assert_clean_failure(est(runner, data_dir, "disable", "nobody"), "no EST user named 'nobody'", exit_code=1)
    assert_clean_failure(
        est(runner, data_dir, "add", "alice", "--generate"), "an EST user named 'alice' already exists", exit_code=1
    )


@pytest.mark.parametrize(
    ("args", "stdin", "fragments"),
    [
        pytest.param(["bob", "--password-stdin"], "short\n", ["--password-stdin", "at least 8"], id="fail/short"),
        pytest.param(["bob", "--password-stdin"], "\n", ["--password-stdin", "empty"], id="fail/empty-password"),
        pytest.param(["bob", "--password-stdin"], "", ["--password-stdin", "empty"], id="fail/no-stdin"),
        pytest.param(["bob"], None, ["--password-stdin/--generate", "exactly one"], id="fail/neither"),
        pytest.param(
            ["bob", "--generate", "--password-stdin"], "long enough\n", ["exactly one"], id="fail/both-secrets"
        ),
        pytest.param(["bob", "--generate", "--label", "nope"], None, ["--label", "no profile 'nope'"], id="fail/label"),
        pytest.param(
            ["bob", "--generate", "--label", "tls-server"],
            None,
            ["--label", "profile 'tls-server' is not served over EST"],
            id="fail/label-not-served-over-est",
        ),
        pytest.param(["bob", "--generate", "--uses", "0"], None, ["--uses", "'0'"], id="fail/zero-uses"),
        pytest.param(["bob", "--generate", "--uses", "many"], None, ["--uses", "'many'"], id="fail/uses-word"),
        pytest.param(
            ["bob", "--generate", "--expires", "2001-01-01"], None, ["--expires", "not in the future"], id="fail/past"
        ),
        pytest.param(["bob", "--generate", "--expires", "soon"], None, ["--expires", "'soon'"], id="fail/bad-date"),
        pytest.param(["bad:name", "--generate"], None, ["NAME", "'bad:name'"], id="fail/name"),
        pytest.param(["bob", "--generate", "--device", "d" * 256], None, ["--device"], id="fail/device"),
    ],
)
def test_cli_add_refusals_name_the_field(
    runner: CliRunner, data_dir: Path, args: list[str], stdin: str | None, fragments: list[str]
) -> None:
    assert_clean_failure(est(runner, data_dir, "add", *args, stdin=stdin), *fragments, exit_code=1)
    assert json.loads(ok(est(runner, data_dir, "list", "--format", "json")).stdout) == []


def test_cli_accepts_an_iso_datetime_with_offset(runner: CliRunner, data_dir: Path) -> None:
    ok(est(runner, data_dir, "add", "carol", "--generate", "--expires", "2999-06-01T12:00:00+02:00"))
    [row] = json.loads(ok(est(runner, data_dir, "list", "--format", "json")).stdout)
    assert row["expires_at"] == "2999-06-01T10:00:00+00:00"
