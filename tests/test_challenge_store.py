"""One-time challenges and lockout counters in the store: atomic across threads and processes."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
import traceback
from multiprocessing.queues import Queue as QueueType
from multiprocessing.synchronize import Barrier as BarrierType
from typing import Any

import pytest
from sqlalchemy import select

from shared_ca.errors import Conflict
from shared_ca.storage.audit import AuditLog
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.enrollment import ChallengeRecord, Enrollments
from shared_ca.storage.enrollment_records import ChallengeSpent, spend_challenge_use
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import challenge_failures
from tests.support import SettableClock, run_together

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def enrollments(store: Storage) -> Enrollments:
    return store.enrollments


def create(enrollments: Enrollments, clock: SettableClock, secret_sha256: str = "1" * 64, **kw: Any) -> int:
    fields: dict[str, Any] = {"device_id": "device1", "profile": "default", "expires_at": clock() + HOUR}
    fields.update(kw)
    return enrollments.create_challenge(secret_sha256, created_by="admin", now=clock(), **fields).id


def consume(
    enrollments: Enrollments, now: dt.datetime, secret_sha256: str = "1" * 64, **kw: Any
) -> ChallengeRecord | None:
    """What an accepted request does: find the challenge that fits, then spend its use in a transaction
    of its own (recording the request's transaction does it there). The challenge after, or None."""
    fields: dict[str, Any] = {"profile": "default", "device_id": "device1", "subject": "CN=device1"}
    fields.update(kw)
    fits = enrollments.usable_challenge(secret_sha256, now, **fields)
    if fits is None:
        return None
    try:
        with enrollments.db.engine.begin() as conn:
            spend_challenge_use(conn, fits.id, now)
    except ChallengeSpent:
        return None
    return enrollments.challenge(secret_sha256)


# -- one-time challenges -------------------------------------------------------------------------


def test_a_single_use_challenge_is_spent_once(enrollments: Enrollments, clock: SettableClock) -> None:
    challenge_id = create(enrollments, clock)
    spent = consume(enrollments, clock())
    assert spent is not None
    assert (spent.id, spent.uses_left, spent.device_id, spent.created_by) == (challenge_id, 0, "device1", "admin")
    assert consume(enrollments, clock()) is None
    assert enrollments.challenge("1" * 64) == spent
    [audit] = AuditLog(enrollments.db).audit_events(action="scep.challenge.created")
    assert audit.detail == {"challenge": challenge_id, "device": "device1", "profile": "default", "uses": 1}


def test_finding_a_challenge_spends_nothing(enrollments: Enrollments, clock: SettableClock) -> None:
    challenge_id = create(enrollments, clock)
    fields: dict[str, Any] = {"profile": "default", "device_id": "device1", "subject": "CN=device1"}
    for _ in range(3):
        found = enrollments.usable_challenge("1" * 64, clock(), **fields)
        assert found is not None and (found.id, found.uses_left) == (challenge_id, 1)
    with enrollments.db.engine.begin() as conn:
        spend_challenge_use(conn, challenge_id, clock())
    assert enrollments.usable_challenge("1" * 64, clock(), **fields) is None
    with pytest.raises(ChallengeSpent, match="no use left"), enrollments.db.engine.begin() as conn:
        spend_challenge_use(conn, challenge_id, clock())


def test_an_expired_challenge_cannot_be_spent(enrollments: Enrollments, clock: SettableClock) -> None:
    challenge_id = create(enrollments, clock)
    with pytest.raises(ChallengeSpent), enrollments.db.engine.begin() as conn:
        spend_challenge_use(conn, challenge_id, clock() + HOUR)
    assert (enrollments.challenge("1" * 64) or pytest.fail("gone")).uses_left == 1


@pytest.mark.parametrize(
    "request_fields",
    [
        pytest.param({"profile": "routers"}, id="fail/other-profile"),
        pytest.param({"device_id": "device2"}, id="fail/other-device"),
        pytest.param({"device_id": None}, id="fail/no-device"),
        pytest.param({"subject": "CN=device1,O=Other"}, id="fail/other-subject"),
        pytest.param({"secret_sha256": "2" * 64}, id="fail/unknown-secret"),
    ],
)
def test_a_challenge_that_does_not_fit_is_not_spent(
    enrollments: Enrollments, clock: SettableClock, request_fields: dict[str, Any]
) -> None:
    create(enrollments, clock, expected_subject="CN=device1")
    assert consume(enrollments, clock(), **request_fields) is None
    spent = consume(enrollments, clock())
    assert spent is not None and spent.uses_left == 0


def test_an_unbound_challenge_serves_any_device_and_subject(enrollments: Enrollments, clock: SettableClock) -> None:
    create(enrollments, clock, device_id=None, uses=3)
    firsts = [consume(enrollments, clock(), device_id=d, subject=f"CN={d}") for d in ("a", None, "c")]
    assert [c.uses_left if c else None for c in firsts] == [2, 1, 0]
    assert consume(enrollments, clock()) is None


def test_a_challenge_expires(enrollments: Enrollments, clock: SettableClock) -> None:
    create(enrollments, clock, uses=2)
    assert consume(enrollments, clock() + HOUR - dt.timedelta(seconds=1)) is not None
    assert consume(enrollments, clock() + HOUR) is None  # expires_at itself is too late
    clock.advance(hours=2)
    assert enrollments.purge_challenges(clock()) == 1
    assert enrollments.challenge("1" * 64) is None


def test_challenge_creation_rules(enrollments: Enrollments, clock: SettableClock) -> None:
    create(enrollments, clock)
    with pytest.raises(Conflict, match="already stored"):
        create(enrollments, clock)
    with pytest.raises(ValueError, match="at least one use"):
        create(enrollments, clock, secret_sha256="3" * 64, uses=0)
    create(enrollments, clock, secret_sha256="4" * 64)
    assert consume(enrollments, clock()) is not None
    assert enrollments.purge_challenges(clock() - dt.timedelta(seconds=1)) == 0  # spent, kept a while
    assert enrollments.purge_challenges(clock()) == 1  # the spent one; the unused one stays
    assert enrollments.challenge("4" * 64) is not None


def test_64_threads_race_for_a_single_use_challenge(enrollments: Enrollments, clock: SettableClock) -> None:
    create(enrollments, clock)
    results, errors = run_together(64, lambda i: consume(enrollments, clock()))
    assert errors == []
    assert len([r for r in results if r is not None]) == 1
    assert len(results) == 64


def consume_in_process(url: str, secrets: list[str], start: BarrierType, out: QueueType[list[str] | str]) -> None:
    """Child process: 8 threads each try every challenge once; reports the secrets it won."""
    engine = create_store_engine(url, pool_size=8)
    try:
        enrollments = Storage.open(engine).enrollments
        now = dt.datetime.now(dt.UTC)
        won: list[str] = []
        lock = threading.Lock()
        ready = threading.Barrier(8)

        def attempt() -> None:
            ready.wait(60)
            for secret in secrets:
                if consume(enrollments, now, secret) is not None:
                    with lock:
                        won.append(secret)

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        start.wait(120)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        out.put(won)
    except BaseException:  # the parent asserts on the text
        out.put(traceback.format_exc())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_two_processes_spend_each_use_exactly_once(
    enrollments: Enrollments, clock: SettableClock, database_url: str
) -> None:
    secrets = [f"{i:064x}" for i in range(20)]
    for i, secret in enumerate(secrets):
        create(enrollments, clock, secret, uses=3 if i == 0 else 1, expires_at=clock() + dt.timedelta(days=1))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    out: QueueType[list[str] | str] = ctx.Queue()
    children = [ctx.Process(target=consume_in_process, args=(database_url, secrets, start, out)) for _ in range(2)]
    for child in children:
        child.start()
    try:
        outcomes = [out.get(timeout=180) for _ in children]
    finally:
        for child in children:
            child.join(60)
        out.close()
        out.join_thread()
    assert all(isinstance(o, list) for o in outcomes), outcomes
    won = [secret for outcome in outcomes for secret in outcome]
    assert sorted(won) == sorted([secrets[0]] * 3 + secrets[1:])
    assert [c.exitcode for c in children] == [0, 0]


# -- lockout -------------------------------------------------------------------------------------

WINDOW = dt.timedelta(minutes=15)
LOCK = dt.timedelta(minutes=30)


def fail(enrollments: Enrollments, now: dt.datetime, *keys: str, threshold: int = 3) -> dt.datetime | None:
    return enrollments.record_failure(keys, now, window=WINDOW, threshold=threshold, lock_for=LOCK)


def failures(enrollments: Enrollments, key: str) -> int:
    with enrollments.db.engine.connect() as conn:
        return int(
            conn.execute(select(challenge_failures.c.failures).where(challenge_failures.c.key == key)).scalar_one()
        )


def test_the_threshold_locks_for_lock_for(enrollments: Enrollments, clock: SettableClock) -> None:
    key = "address:192.0.2.7"
    assert fail(enrollments, clock(), key) is None
    clock.advance(minutes=1)
    assert fail(enrollments, clock(), key) is None
    assert enrollments.locked([key], clock()) is None
    clock.advance(minutes=1)
    assert fail(enrollments, clock(), key) == clock() + LOCK
    assert enrollments.locked([key, "address:other"], clock()) == clock() + LOCK
    assert enrollments.locked(["address:other"], clock()) is None
    assert enrollments.locked([], clock()) is None
    clock.advance(minutes=30)
    assert enrollments.locked([key], clock()) is None  # the lock lifted exactly at locked_until


def test_failures_lapse_after_the_window(enrollments: Enrollments, clock: SettableClock) -> None:
    key = "challenge:" + "9" * 64
    fail(enrollments, clock(), key)
    fail(enrollments, clock(), key)
    clock.advance(minutes=15)  # the first failure is a window old: counting starts again
    assert fail(enrollments, clock(), key) is None
    assert failures(enrollments, key) == 1
    assert fail(enrollments, clock(), key) is None
    assert fail(enrollments, clock(), key) == clock() + LOCK


def test_each_key_counts_and_locks_separately(enrollments: Enrollments, clock: SettableClock) -> None:
    address, first, second = "address:192.0.2.7", "challenge:" + "1" * 64, "challenge:" + "2" * 64
    fail(enrollments, clock(), first, address)
    fail(enrollments, clock(), second, address)
    assert fail(enrollments, clock(), first, address) == clock() + LOCK  # the address reached 3
    assert enrollments.locked([first], clock()) is None
    assert enrollments.locked([second, "address:192.0.2.8"], clock()) is None
    assert (failures(enrollments, first), failures(enrollments, second), failures(enrollments, address)) == (2, 1, 3)


def test_lapsed_failure_counters_are_purged_once_their_lock_lifted(
    enrollments: Enrollments, clock: SettableClock
) -> None:
    counted, locked = "address:192.0.2.7", "address:192.0.2.8"
    fail(enrollments, clock(), counted)
    for _ in range(3):
        fail(enrollments, clock(), locked)

    def stored() -> set[str]:
        with enrollments.db.engine.connect() as conn:
            return set(conn.execute(select(challenge_failures.c.key)).scalars())

    assert enrollments.purge_failures(clock() - dt.timedelta(seconds=1), clock()) == 0  # both still counting
    clock.advance(minutes=1)
    assert enrollments.purge_failures(clock(), clock()) == 1  # both windows over; one is still locked
    assert stored() == {locked} and enrollments.locked([locked], clock()) is not None
    clock.advance(minutes=30)
    assert enrollments.purge_failures(clock(), clock()) == 1  # its lock lifted
    assert stored() == set()


def test_a_threshold_of_one_locks_at_the_first_failure(enrollments: Enrollments, clock: SettableClock) -> None:
    assert fail(enrollments, clock(), "address:x", threshold=1) == clock() + LOCK
    with pytest.raises(ValueError, match="at least 1"):
        fail(enrollments, clock(), "address:x", threshold=0)


def test_concurrent_failures_are_all_counted(enrollments: Enrollments, clock: SettableClock) -> None:
    key = "address:192.0.2.99"
    results, errors = run_together(32, lambda i: fail(enrollments, clock(), key, "address:shared", threshold=100))
    assert errors == [] and len(results) == 32
    assert (failures(enrollments, key), failures(enrollments, "address:shared")) == (32, 32)
