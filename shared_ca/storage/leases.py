"""Leases for background jobs that one worker of one node runs at a time (the RA certificate's
renewal): a row per job name, held by whoever took it last until it expires."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from shared_ca.storage.database import Database
from shared_ca.storage.schema import job_leases


class Leases:
    """Take and give back job leases; the database settles races (a conditional update, a primary key)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def acquire(self, name: str, holder: str, now: dt.datetime, duration: dt.timedelta) -> bool:
        """Take the lease `name` for `duration` when it is free (never taken, expired, or held by `holder`
        already); False while someone else holds it."""
        lease = job_leases.c
        with self.db.write() as conn:
            taken = conn.execute(
                update(job_leases)
                .where(and_(lease.name == name, or_(lease.expires_at <= now, lease.holder == holder)))
                .values(holder=holder, expires_at=now + duration)
            ).rowcount
            if taken == 1:
                return True
            if conn.execute(select(lease.name).where(lease.name == name)).first() is not None:
                return False
        try:
            with self.db.write() as conn:
                conn.execute(insert(job_leases).values(name=name, holder=holder, expires_at=now + duration))
        except IntegrityError:
            return False  # another worker inserted it first
        return True

    def release(self, name: str, holder: str, now: dt.datetime) -> None:
        """Give the lease back (it expires now) if `holder` still holds it."""
        lease = job_leases.c
        with self.db.write() as conn:
            conn.execute(
                update(job_leases).where(and_(lease.name == name, lease.holder == holder)).values(expires_at=now)
            )
