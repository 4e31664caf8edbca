"""The migration report as JSON: one object for the whole report (the CLI's `--format json` and the
dashboard's summary API) and one per device (the admin API's device pages).

Every time is written one way (`when`): ISO 8601 in UTC to the second, with a Z.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from migration_tools.report_model import DeviceEntry, GroupSummary, MigrationReport, StateTotals, TrendPoint

STATES = ("legacy", "mapped", "migrated", "native", "retired")


def when(moment: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC to the second, with a Z: the one way every format writes a time."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def totals_to_dict(totals: StateTotals) -> dict[str, Any]:
    return {
        **{state: getattr(totals, state) for state in STATES},
        "total": totals.total,
        "to_move": totals.to_move,
        "percent_migrated": totals.percent_migrated,
    }


def group_to_dict(group: GroupSummary) -> dict[str, Any]:
    return {
        "name": group.name,
        **totals_to_dict(group.totals),
        "sunset_at": when(group.sunset_at),
        "allow_downgrade": group.allow_downgrade,
        "cut_off": group.cut_off,
    }


def device_to_dict(device: DeviceEntry) -> dict[str, Any]:
    """A device as JSON (the report's lists and the admin API's device pages)."""
    client, facts = device.client, device.client.facts
    return {
        "id": device.id,
        "identity": device.identity,
        "group": device.group,
        "owner": device.owner,
        "state": device.state,
        "first_seen_at": when(device.first_seen_at),
        "last_scep_at": when(device.last_scep_at),
        "last_est_at": when(device.last_est_at),
        "mapped_at": when(device.mapped_at),
        "mapping_mode": device.mapping_mode,
        "migrated_at": when(device.migrated_at),
        "certificate_not_after": when(device.certificate_not_after),
        "sunset_at": when(device.sunset_at),
        "client": {
            "user_agent": client.user_agent,
            "cipher": client.cipher,
            "digest": client.digest,
            "challenge": client.challenge,
            "family": client.family,
            "name": facts.name,
            "est_client": facts.est_client,
        },
        "weak": list(client.weak),
        "next_action": device.next_action,
        "actions": list(device.actions),
    }


def trend_to_dict(point: TrendPoint) -> dict[str, Any]:
    return {"day": point.day.isoformat(), "legacy": point.legacy, "mapped": point.mapped, "migrated": point.migrated}


def report_to_dict(report: MigrationReport) -> dict[str, Any]:
    """The report as one JSON object (also what the dashboard's summary API answers)."""
    return {
        "generated_at": when(report.generated_at),
        "group": report.group,
        "silent_days": report.silent_days,
        "totals": totals_to_dict(report.totals),
        "groups": [group_to_dict(g) for g in report.groups],
        "to_move_total": report.to_move_total,
        "to_move": [device_to_dict(d) for d in report.to_move],
        "silent_total": report.silent_total,
        "silent": [device_to_dict(d) for d in report.silent],
        "trend": [trend_to_dict(p) for p in report.trend],
    }


def render_json(report: MigrationReport) -> str:
    return json.dumps(report_to_dict(report), indent=2) + "\n"
