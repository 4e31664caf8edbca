"""The boundary of a device group's SCEP sunset, to the second: one second before it a device still
enrolls over SCEP; at the very instant and after it, it is refused (a signed FAILURE that points to
EST) and nothing is issued. The migration report agrees: it calls SCEP "closed" from the same instant.

The sunset is set with `gateway migrate sunset` (ISO 8601, to the second); the gateway's clock (the
CA's clock, which the SCEP service reads) is a settable clock, so "now" is exact.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask

from gateway import runtime
from gateway.app import create_app
from gateway.config import GatewayConfig
from migration_tools.report import next_actions
from scep.asn1 import FailInfo, PkiStatus
from shared_ca.storage.migration_report import DeviceStanding
from shared_ca.storage.repositories import Storage
from tests.support import SettableClock, issued_count
from tests.test_migration_map import add_device, run
from tests.test_scep_service import device_key, enrollment, get_ca, issued_cert, post, reply_of

# A whole second, two hours from the real now: the CA and the issued certificates are valid then.
SUNSET = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).replace(microsecond=0)
OFFSETS = [
    pytest.param(-1, True, id="one-second-before/enrolls"),
    pytest.param(0, False, id="exactly-at/refused"),
    pytest.param(1, False, id="one-second-after/refused"),
]


@pytest.fixture
def clock() -> SettableClock:
    """An hour before the sunset, until a test moves it."""
    return SettableClock(SUNSET - dt.timedelta(hours=1))


@pytest.fixture
def clocked_app(
    gateway_config: GatewayConfig, clock: SettableClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Flask]:
    """The app as `gateway serve` composes it, on the settable clock."""
    monkeypatch.setattr(runtime, "utcnow", clock)
    application = create_app(gateway_config)
    yield application
    application.extensions["gateway"].get().storage.engine.dispose()


@pytest.mark.parametrize(("offset", "open_"), OFFSETS)
def test_scep_closes_at_the_sunset_instant(
    clocked_app: Flask, clock: SettableClock, runner: CliRunner, data_dir: Path, offset: int, open_: bool
) -> None:
    engine = clocked_app.extensions["gateway"].get().storage.engine
    add_device(Storage.open(engine).devices, "lab-1", group="lab")
    run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--date", SUNSET.isoformat())
    client = clocked_app.test_client()
    ra = get_ca(client)
    clock.now = SUNSET + dt.timedelta(seconds=offset)
    before = issued_count(engine)
    sent = enrollment(ra, "lab-1", key=device_key(1), transaction_id=f"sunset{offset:+d}")
    reply = reply_of(post(client, sent.der), ra, sent)
    if open_:
        issued_cert(reply, sent.key)
        assert issued_count(engine) == before + 1
    else:
        assert reply.status is PkiStatus.FAILURE
        assert reply.fail_info is FailInfo.BAD_REQUEST
        assert reply.fail_info_text is not None and "EST" in reply.fail_info_text
        assert not reply.certificates
        assert issued_count(engine) == before
    # A device of another group is not affected by the lab's sunset, at the same instant.
    add_device(Storage.open(engine).devices, "shop-1", group="shop")
    other = enrollment(ra, "shop-1", key=device_key(2), transaction_id=f"other{offset:+d}")
    assert reply_of(post(client, other.der), ra, other).status is PkiStatus.SUCCESS


def standing(sunset: dt.datetime) -> DeviceStanding:
    """A legacy device of the group `lab`, as the migration report reads it."""
    first_seen = sunset - dt.timedelta(days=30)
    return DeviceStanding(
        id=1,
        identity="lab-1",
        group_name="lab",
        owner=None,
        state="legacy",
        first_seen_at=first_seen,
        last_scep_at=first_seen,
        last_est_at=None,
        scep_user_agent=None,
        scep_cipher=None,
        scep_digest=None,
        scep_challenge=None,
        scep_client=None,
        certificate_not_after=sunset + dt.timedelta(days=365),
        mapping_mode=None,
        mapped_at=None,
        migrated_at=None,
        retired_at=None,
        sunset_at=sunset,
    )


@pytest.mark.parametrize(("offset", "open_"), OFFSETS)
def test_the_report_calls_scep_closed_from_the_same_instant(offset: int, open_: bool) -> None:
    actions = next_actions(standing(SUNSET), SUNSET + dt.timedelta(seconds=offset), silent_days=14)
    day = SUNSET.date().isoformat()
    expected = f"SCEP closes for its group on {day}" if open_ else f"SCEP closed for its group on {day}"
    assert expected in actions, actions
