"""Migration 0008 on a database that holds 0007's devices: devices first seen over EST and never on
SCEP become `native` (they were counted `migrated`), and `source = 'est'` means native from then on."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from shared_ca.storage.db import current_revision
from shared_ca.storage.repositories import Storage
from tests.test_migration_0006 import _to

T0 = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture
def at_0007(store: Storage) -> Iterator[Engine]:
    _to(store.engine, "0007_deferred", down=True)
    yield store.engine


def _insert(conn: Any, identity: str, state: str, source: str, **dates: dt.datetime | None) -> None:
    values: dict[str, Any] = {
        "identity": identity,
        "state": state,
        "source": source,
        "first_seen_at": T0,
        "updated_at": T0,
        "last_scep_at": None,
        "migrated_at": None,
        "retired_at": None,
        **dates,
    }
    conn.execute(
        text(
            "INSERT INTO devices (identity, tags, state, source, first_seen_at, updated_at, last_scep_at,"
            " migrated_at, retired_at) VALUES (:identity, '[]', :state, :source, :first_seen_at, :updated_at,"
            " :last_scep_at, :migrated_at, :retired_at)"
        ),
        values,
    )


def _rows(engine: Engine) -> dict[str, tuple[str, str, bool]]:
    """identity: (state, source, has migrated_at)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT identity, state, source, migrated_at FROM devices")).all()
    return {row[0]: (row[1], row[2], row[3] is not None) for row in rows}


def test_0008_separates_native_devices_from_migrated_ones(at_0007: Engine) -> None:
    with at_0007.begin() as conn:
        _insert(conn, "est-only", "migrated", "est", migrated_at=T0)
        _insert(conn, "est-then-scep", "migrated", "est", migrated_at=T0, last_scep_at=T0 + DAY)
        _insert(conn, "moved", "migrated", "scep", migrated_at=T0 + 2 * DAY, last_scep_at=T0)
        _insert(conn, "imported-moved", "migrated", "import:micromdm-depot", migrated_at=T0 + DAY)
        _insert(conn, "est-retired", "retired", "est", migrated_at=T0, retired_at=T0 + 3 * DAY)
        _insert(conn, "still-legacy", "legacy", "scep", last_scep_at=T0)
    _to(at_0007, "0008_native")
    assert current_revision(at_0007) == "0008_native"
    assert _rows(at_0007) == {
        "est-only": ("native", "est", False),  # never on SCEP: native, and it never moved
        "est-then-scep": ("migrated", "scep", True),  # was on SCEP: a SCEP device that moved
        "moved": ("migrated", "scep", True),
        "imported-moved": ("migrated", "import:micromdm-depot", True),
        "est-retired": ("retired", "est", False),
        "still-legacy": ("legacy", "scep", False),
    }


def test_0008_downgrades_native_to_migrated_and_upgrades_again(at_0007: Engine) -> None:
    with at_0007.begin() as conn:
        _insert(conn, "est-only", "migrated", "est", migrated_at=T0 + DAY)
    _to(at_0007, "0008_native")
    _to(at_0007, "0007_deferred", down=True)
    assert _rows(at_0007) == {"est-only": ("migrated", "est", True)}
    with at_0007.connect() as conn:  # dated from its first sighting
        assert conn.execute(text("SELECT migrated_at FROM devices")).scalar_one() is not None
    with pytest.raises(IntegrityError), at_0007.begin() as conn:  # 0007 knows no native state
        _insert(conn, "native-at-0007", "native", "est")
    _to(at_0007, "0008_native")
    assert _rows(at_0007) == {"est-only": ("native", "est", False)}
    with at_0007.begin() as conn:
        _insert(conn, "native-at-0008", "native", "est")
    with pytest.raises(IntegrityError), at_0007.begin() as conn:
        _insert(conn, "nonsense", "moved", "est")
