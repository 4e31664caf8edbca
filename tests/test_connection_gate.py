"""ConnectionGate: a request that holds a read connection and then writes never waits on a pool
that requests like it have emptied (the 30-second stall CI saw under gevent with PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from shared_ca.errors import Unavailable
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.database import Database
from shared_ca.storage.db import create_store_engine, engine_gates, migrate_to_head
from shared_ca.storage.repositories import Storage

REPO = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


@pytest.fixture
def small_pool(database_url: str) -> Iterator[Engine]:
    """One pooled connection (three while busy) and a short wait, so a stall fails in seconds."""
    engine = create_store_engine(database_url, pool_size=1, pool_timeout=3)
    migrate_to_head(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def read_then_write(store: Storage, actor: str, pause: float) -> None:
    with store.db.reading():
        store.audit.audit_events(limit=1)
        time.sleep(pause)  # others take their read connections meanwhile
        store.audit.record_audit(AuditEvent(actor=actor, action="test"), NOW)


def test_a_write_inside_a_read_scope_passes_its_own_gate(small_pool: Engine) -> None:
    store = Storage.open(small_pool)
    read_then_write(store, "one", 0)  # one permit: a nested scope that took another would wait forever
    assert [e.actor for e in store.audit.audit_events()] == ["one"]


def test_many_read_then_write_requests_never_empty_the_pool_for_each_other(small_pool: Engine) -> None:
    # Without the gate three threads hold the three connections for their reads and all wait for a
    # fourth to write: every one fails after the pool timeout.
    store = Storage.open(small_pool)
    failures: list[BaseException] = []

    def request(i: int) -> None:
        try:
            read_then_write(store, f"r{i}", 0.05)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(e.actor for e in store.audit.audit_events()) == sorted(f"r{i}" for i in range(8))


def test_every_store_on_an_engine_shares_its_gates(small_pool: Engine) -> None:
    assert engine_gates(small_pool) is engine_gates(small_pool)
    first, second = Database(small_pool), Database(small_pool)
    assert first._connections is second._connections
    assert first._writers is second._writers


def test_a_scope_that_waits_too_long_for_the_gate_is_unavailable(database_url: str) -> None:
    engine = create_store_engine(database_url, pool_size=1, pool_timeout=0.3)
    migrate_to_head(engine)
    store = Storage.open(engine)
    inside, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store.db.reading():
            store.audit.audit_events(limit=1)
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert inside.wait(10)
        with pytest.raises(Unavailable) as refused:
            store.audit.audit_events()
        assert refused.value.public_message == "the certificate store is unavailable"
        assert "no database connection became free in time" in (refused.value.detail or "")
    finally:
        release.set()
        thread.join()
        engine.dispose()


GEVENT_REQUESTS = """
from gevent import monkey

monkey.patch_all()
import datetime as dt
import sys

import gevent

from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.db import create_store_engine, migrate_to_head
from shared_ca.storage.repositories import Storage

engine = create_store_engine(sys.argv[1], pool_size=2, pool_timeout=5)
migrate_to_head(engine)
stores = [Storage.open(engine), Storage.open(engine)]  # two Databases: one writer queue between them
now = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def request(i):
    store = stores[i % 2]
    with store.db.reading():
        store.audit.audit_events(limit=1)
        gevent.sleep(0.01)
        store.audit.record_audit(AuditEvent(actor=f"g{i}", action="test"), now)


jobs = [gevent.spawn(request, i) for i in range(100)]
gevent.joinall(jobs, timeout=60)
failed = [job.exception for job in jobs if not job.successful()]
print(len(stores[0].audit.audit_events(limit=1000)), failed)
"""


def test_a_hundred_greenlets_read_then_write_on_a_pool_of_two(database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_REQUESTS, database_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["100", "[]"], done.stdout + done.stderr
