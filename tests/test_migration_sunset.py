"""`gateway migrate sunset`: a group's SCEP sunset date and no-downgrade policy, as SCEP clients
meet it through the Flask app (signed CertRep FAILURE pointing at EST), and the command's errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from gateway.cli import main
from scep.asn1 import FailInfo, PkiStatus
from shared_ca.storage.audit import AuditLog
from shared_ca.storage.devices import Devices
from shared_ca.storage.repositories import Storage
from tests.test_migration_map import add_device, facts, gateway_of, run
from tests.test_migration_report import enroll
from tests.test_scep_service import Ra, device_key, enrollment, failure, get_ca, issued_cert, post, reply_of


def devices_of(app: Flask) -> Devices:
    return Storage.open(gateway_of(app).storage.engine).devices


def day(offset: int) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=offset)).isoformat()


def scep_enroll(client: FlaskClient, ra: Ra, cn: str, index: int = 1) -> PkiStatus:
    """Enroll `cn` over SCEP (a fresh key per call index); the status of the signed CertRep."""
    sent = enrollment(ra, cn, key=device_key(index))
    reply = reply_of(post(client, sent.der), ra, sent)
    if reply.status is PkiStatus.SUCCESS:
        issued_cert(reply, sent.key)
    return reply.status


def test_scep_is_refused_after_the_groups_sunset_and_points_to_est(
    app: Flask, client: FlaskClient, runner: CliRunner, data_dir: Path
) -> None:
    devices = devices_of(app)
    add_device(devices, "lab-1")
    add_device(devices, "lab-2")
    add_device(devices, "shop-1", group="shop")
    ra = get_ca(client)
    output = run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--date", day(7))
    summary = facts(output)
    assert summary["sunset"].startswith(f"{day(7)}T00:00:00+00:00 (in ")
    assert summary["cut off"] == "2 devices not on EST yet (legacy 2, mapped 0)"
    assert summary["told"] == f"enroll over EST at {gateway_of(app).config.est_url}"
    assert scep_enroll(client, ra, "lab-1") is PkiStatus.SUCCESS  # before the date
    run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--date", day(-1))
    sent = enrollment(ra, "lab-1", key=device_key(2))
    reply = failure(client, ra, sent)  # a CertRep signed by the RA, verified by the parser
    assert reply.fail_info is FailInfo.BAD_REQUEST
    assert reply.fail_info_text == (
        f"SCEP enrollment ended on {day(-1)} for this device: enroll over EST at {gateway_of(app).config.est_url}"
    )
    assert scep_enroll(client, ra, "shop-1", 3) is PkiStatus.SUCCESS  # another group: open
    assert scep_enroll(client, ra, "unknown-1", 4) is PkiStatus.SUCCESS  # not in the inventory: no policy
    output = run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--clear")
    assert facts(output)["sunset"] == "none: SCEP stays open"
    assert scep_enroll(client, ra, "lab-1", 5) is PkiStatus.SUCCESS


def test_a_migrated_device_is_refused_scep_unless_the_group_allows_the_downgrade(
    app: Flask, client: FlaskClient, runner: CliRunner, data_dir: Path
) -> None:
    devices = devices_of(app)
    add_device(devices, "moved-1", state="migrated")
    ra = get_ca(client)
    reply = failure(client, ra, enrollment(ra, "moved-1", key=device_key(1)))  # no policy row: no downgrade
    assert reply.fail_info_text is not None and "has moved to EST" in reply.fail_info_text
    output = run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--date", day(30), "--allow-downgrade")
    assert facts(output)["downgrade"] == "allowed: 1 migrated and 0 native devices may still use SCEP"
    assert scep_enroll(client, ra, "moved-1", 2) is PkiStatus.SUCCESS
    output = run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--clear")  # keeps the downgrade setting
    group = devices.group("lab")
    assert group is not None and group.allow_downgrade and group.sunset_at is None
    output = run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--clear", "--no-allow-downgrade")
    assert facts(output)["downgrade"] == "refused: 1 migrated and 0 native devices may not use SCEP"
    assert scep_enroll(client, ra, "moved-1", 3) is PkiStatus.FAILURE
    run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--date", day(-1), "--allow-downgrade")
    assert scep_enroll(client, ra, "moved-1", 4) is PkiStatus.FAILURE  # past the sunset: no SCEP at all


@pytest.mark.parametrize(
    ("date", "stored"),
    [
        pytest.param("2031-05-04", dt.datetime(2031, 5, 4, tzinfo=dt.UTC), id="date-is-midnight-utc"),
        pytest.param("2031-05-04T12:30:00", dt.datetime(2031, 5, 4, 12, 30, tzinfo=dt.UTC), id="naive-is-utc"),
        pytest.param("2031-05-04T12:30:00+02:00", dt.datetime(2031, 5, 4, 10, 30, tzinfo=dt.UTC), id="offset"),
        pytest.param("2031-05-04T12:30:00Z", dt.datetime(2031, 5, 4, 12, 30, tzinfo=dt.UTC), id="zulu"),
    ],
)
def test_sunset_dates(app: Flask, runner: CliRunner, data_dir: Path, date: str, stored: dt.datetime) -> None:
    devices = devices_of(app)
    add_device(devices, "lab-1")
    run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--date", date)
    group = devices.group("lab")
    assert group is not None and group.sunset_at == stored and not group.allow_downgrade
    (event,) = AuditLog(devices.db).audit_events(action="device_group.policy")
    assert event.detail["sunset_at"] == stored.isoformat()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--group", "lab"], "--date/--clear: give exactly one of them", id="fail/neither"),
        pytest.param(
            ["--group", "lab", "--date", "2031-01-01", "--clear"], "--date/--clear: give exactly one", id="fail/both"
        ),
        pytest.param(["--group", "lab", "--date", "next week"], "--date: 'next week' is not a date", id="fail/date"),
        pytest.param(["--group", "nobody", "--clear"], "--group: no device is in group 'nobody'", id="fail/unknown"),
        pytest.param(["--group", "g" * 65, "--clear"], "--group: a group name has 1-64 characters", id="fail/long"),
        pytest.param(["--date", "2031-01-01"], "Missing option '--group'", id="fail/no-group"),
    ],
)
def test_sunset_errors_name_the_option(
    app: Flask, runner: CliRunner, data_dir: Path, args: list[str], message: str
) -> None:
    add_device(devices_of(app), "lab-1")
    result = runner.invoke(main, ["migrate", "sunset", *args, "--data-dir", str(data_dir)])
    assert result.exit_code != 0
    assert message in result.output
    assert devices_of(app).group("lab") is None


def test_a_native_device_is_refused_scep_unless_the_group_allows_it_and_then_is_a_scep_device(
    app: Flask, client: FlaskClient, runner: CliRunner, data_dir: Path
) -> None:
    devices = devices_of(app)
    enroll(gateway_of(app).authority, "native-1", "est")  # on EST from the start
    assert devices.annotate("native-1", group="lab", owner=None, tags=(), now=dt.datetime.now(dt.UTC))
    ra = get_ca(client)
    reply = failure(client, ra, enrollment(ra, "native-1", key=device_key(1)))
    assert (
        reply.fail_info_text
        == f"this device enrolls over EST and may not enroll over SCEP: use EST at {gateway_of(app).config.est_url}"
    )
    output = run(runner, data_dir, "migrate", "sunset", "--group", "lab", "--date", day(30), "--allow-downgrade")
    assert facts(output)["downgrade"] == "allowed: 0 migrated and 1 native devices may still use SCEP"
    assert scep_enroll(client, ra, "native-1", 2) is PkiStatus.SUCCESS
    device = devices.device("native-1")
    assert device is not None and (device.state, device.source) == ("legacy", "scep")  # still to move now
