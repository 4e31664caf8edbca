"""Housekeeping deletes spent and expired one-time challenges and lapsed lockout counters, and runs
by itself in a serving worker."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from sqlalchemy import func, select

from gateway import server
from gateway.config import GatewayConfig
from gateway.housekeeping import CHALLENGE_RETENTION, Purged, purge_stale
from gateway.runtime import GatewayLoader, open_gateway
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.storage.enrollment import Enrollments
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import challenge_failures, scep_challenges
from tests.support import SettableClock

WINDOW = dt.timedelta(minutes=DEFAULT_PROFILES["default"].scep_lockout_minutes)


def rows(enrollments: Enrollments) -> tuple[int, int]:
    with enrollments.db.engine.connect() as conn:
        challenges = conn.execute(select(func.count()).select_from(scep_challenges)).scalar_one()
        counters = conn.execute(select(func.count()).select_from(challenge_failures)).scalar_one()
    return int(challenges), int(counters)


def stale_world(enrollments: Enrollments, clock: SettableClock) -> None:
    """A challenge that expires in an hour, one still valid for a year, and one wrong guess counted."""
    for secret, lifetime in (("1" * 64, dt.timedelta(hours=1)), ("2" * 64, dt.timedelta(days=365))):
        enrollments.create_challenge(
            secret, created_by="admin", now=clock(), device_id=None, profile="default", expires_at=clock() + lifetime
        )
    enrollments.record_failure(["address:192.0.2.1"], clock(), window=WINDOW, threshold=3, lock_for=WINDOW)


def test_stale_rows_are_deleted_after_their_retention_and_nothing_else(store: Storage, clock: SettableClock) -> None:
    enrollments = store.enrollments
    stale_world(enrollments, clock)
    assert purge_stale(enrollments, DEFAULT_PROFILES, clock()) == Purged(challenges=0, failure_counters=0)
    assert rows(enrollments) == (2, 1)
    clock.advance(minutes=max(p.scep_lockout_minutes for p in DEFAULT_PROFILES.values()))
    assert purge_stale(enrollments, DEFAULT_PROFILES, clock()) == Purged(0, 1)  # the counter's window is over
    clock.advance(hours=1)  # the first challenge expired, but is kept a while
    assert purge_stale(enrollments, DEFAULT_PROFILES, clock()).challenges == 0
    clock.advance(seconds=CHALLENGE_RETENTION.total_seconds())
    assert purge_stale(enrollments, DEFAULT_PROFILES, clock()).challenges == 1
    assert rows(enrollments) == (1, 0)
    assert enrollments.challenge("2" * 64) is not None


def test_a_serving_worker_runs_housekeeping_by_itself(
    gateway_config: GatewayConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = open_gateway(gateway_config)
    stop = threading.Event()
    try:
        enrollments = gateway.storage.enrollments
        now = gateway.authority.clock()
        expired = now - CHALLENGE_RETENTION - dt.timedelta(days=1)
        enrollments.create_challenge(
            "3" * 64, created_by="admin", now=expired, device_id=None, profile="default", expires_at=expired
        )
        monkeypatch.setattr(server, "HOUSEKEEPING_SECONDS", 0.05)
        server.start_housekeeping(GatewayLoader.ready(gateway), stop)
        deadline = time.monotonic() + 30
        while enrollments.challenge("3" * 64) is not None:
            assert time.monotonic() < deadline, "housekeeping did not run"
            time.sleep(0.05)
    finally:
        stop.set()
        gateway.storage.engine.dispose()
