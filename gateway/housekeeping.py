"""Deleting what has served its purpose: one-time SCEP challenges that expired or were spent, and
challenge-failure counters whose window is over and whose lock lifted. Each HTTPS worker runs it
about once an hour (gateway.server); the deletes are idempotent, so any number of workers and nodes
may run it at once."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from shared_ca.profiles import Profile
from shared_ca.storage.enrollment import Enrollments

log = logging.getLogger("gateway.housekeeping")

# A spent or expired challenge is kept this long, so that a late reuse is still logged as what it is.
CHALLENGE_RETENTION = dt.timedelta(days=7)


@dataclass(frozen=True)
class Purged:
    challenges: int
    failure_counters: int


def purge_stale(enrollments: Enrollments, profiles: Mapping[str, Profile], now: dt.datetime) -> Purged:
    """Delete stale challenges and failure counters; how many of each. A counter is stale once the
    longest lockout window of any profile has passed since its first failure and no lock holds."""
    longest = max((p.scep_lockout_minutes for p in profiles.values()), default=0)
    purged = Purged(
        challenges=enrollments.purge_challenges(now - CHALLENGE_RETENTION),
        failure_counters=enrollments.purge_failures(now - dt.timedelta(minutes=longest), now),
    )
    if purged.challenges or purged.failure_counters:
        log.info(
            "housekeeping: deleted %d stale one-time challenges and %d lapsed challenge-failure counters",
            purged.challenges,
            purged.failure_counters,
        )
    return purged
