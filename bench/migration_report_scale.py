"""The migration report over a large fleet: build time of `build_report` over N devices (default 10^6).

Fills the devices table by bulk insert with dates as enrollment events would have left them (first
sighting over SCEP, mapping, first EST certificate, retirement, the SCEP client's fingerprint),
spread over half a year in 50 groups, 10 of them with a sunset date; then times the report with
the default list length (1,000 devices per list) and with every device listed, plus one page of the
admin API's device list, and the dashboard's API through the app of a gateway initialised on the
same database (summary and a page of devices). SQLite always; PostgreSQL when GATEWAY_BENCH_DATABASE_URL is set. Usage:

    .venv/bin/python bench/migration_report_scale.py [--devices 1000000]
    GATEWAY_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/test \
        .venv/bin/python bench/migration_report_scale.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, insert, text

from gateway.app import create_app
from gateway.config import load_config
from migration_tools.render import render
from migration_tools.report import ReportSettings, build_report, device_page
from shared_ca.authority import utcnow
from shared_ca.storage.db import create_store_engine, migrate_to_head, sqlite_url
from shared_ca.storage.repositories import Storage
from shared_ca.storage.schema import device_groups, devices

T = TypeVar("T")
GROUPS = [f"site-{n:02d}" for n in range(50)]
CHUNK = 20_000
AGENTS = [  # (User-Agent, the family scep.clients recognises in it)
    ("sscep/0.10", "sscep"),
    (None, "certmonger"),
    ("profiled/1.0 CFNetwork/1496 Darwin/23.5.0", "apple"),
    ("Mozilla/4.0 (compatible; Win32; NDES client)", "windows"),
    ("Mozilla/4.0 (compatible; MSIE 5.0; Cisco PKI)", "cisco-ios"),
    (None, None),
]


def _device_rows(count: int, now: dt.datetime, seed: int = 5) -> Iterator[list[dict[str, Any]]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    start = now - dt.timedelta(days=180)
    chunk: list[dict[str, Any]] = []
    for n in range(count):
        seen = start + dt.timedelta(seconds=rng.uniform(0, 170 * 86400))
        last_scep: dt.datetime | None = seen + dt.timedelta(seconds=rng.uniform(0, (now - seen).total_seconds()))
        roll = rng.random()
        state = (
            "legacy" if roll < 0.42 else "mapped" if roll < 0.57 else "migrated" if roll < 0.90
            else "native" if roll < 0.95 else "retired"
        )  # fmt: skip
        mapped_at = migrated_at = retired_at = last_est = None
        agent, family = rng.choice(AGENTS)
        if state in ("mapped", "migrated"):
            mapped_at = seen + dt.timedelta(seconds=rng.uniform(0, (now - seen).total_seconds() * 0.6))
        if state == "migrated":
            assert mapped_at is not None
            migrated_at = mapped_at + dt.timedelta(seconds=rng.uniform(0, (now - mapped_at).total_seconds()))
            last_est = migrated_at
        if state == "retired":
            retired_at = seen + dt.timedelta(days=rng.uniform(1, 30))
        native = state == "native"  # first seen over EST: no SCEP contact, no SCEP fingerprint
        if native:
            last_scep, last_est, agent, family = None, seen, None, None
        chunk.append(
            {
                "identity": f"device-{n:07d}",
                "group_name": GROUPS[n % len(GROUPS)] if n % 20 else None,
                "owner": None,
                "tags": "[]",
                "state": state,
                "source": "est" if native else "scep",
                "first_seen_at": seen,
                "updated_at": now,
                "last_scep_at": last_scep,
                "last_est_at": last_est,
                "scep_user_agent": agent,
                "scep_cipher": rng.choices(["des", "3des", "aes128", "aes256"], [10, 20, 40, 30])[0],
                "scep_digest": rng.choices(["md5", "sha1", "sha256"], [2, 30, 68])[0],
                "scep_challenge": rng.choice(["static", "one-time", "renewal"]),
                "scep_client": family,
                "certificate_id": None,
                "certificate_not_after": seen + dt.timedelta(days=rng.choice([90, 365, 730])),
                "mapping_mode": rng.choice(["certificate", "bootstrap"]) if mapped_at else None,
                "est_credential": None,
                "mapped_at": mapped_at,
                "migrated_at": migrated_at,
                "retired_at": retired_at,
            }
        )
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def fill(url: str, count: int, now: dt.datetime) -> float:
    """Bulk-insert `count` devices and the group policies; seconds taken."""
    engine = create_store_engine(url)
    migrate_to_head(engine)
    started = time.perf_counter()
    with engine.begin() as conn:
        for rows in _device_rows(count, now):
            conn.execute(insert(devices), rows)
        policies = [
            {"name": g, "sunset_at": now + dt.timedelta(days=30 + i), "allow_downgrade": False, "updated_at": now}
            for i, g in enumerate(GROUPS[:10])
        ]
        conn.execute(insert(device_groups), policies)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # As autovacuum leaves a table that is not being bulk-loaded: statistics, and the visibility map
            # that lets the covering indexes answer without reading the table (index-only scans).
            conn.execute(text("VACUUM ANALYZE devices"))
    engine.dispose()
    return time.perf_counter() - started


def _timed(label: str, call: Callable[[], T], results: dict[str, float]) -> T:
    started = time.perf_counter()
    value = call()
    results[label] = round(time.perf_counter() - started, 3)
    return value


def measure(url: str, now: dt.datetime) -> dict[str, float]:
    engine = create_store_engine(url)
    storage = Storage.open(engine)
    store = storage.migration_report
    results: dict[str, float] = {}
    _timed("retire_stale", lambda: storage.devices.retire_stale(now, dt.timedelta(days=30)), results)
    report = _timed("report (1,000 per list)", lambda: build_report(store, now), results)
    for run in (2, 3):  # the first build also warms the page cache
        _timed(f"report (1,000 per list), run {run}", lambda: build_report(store, now), results)
    _timed("render json (1,000 per list)", lambda: render(report, "json"), results)
    _timed("render html (1,000 per list)", lambda: render(report, "html"), results)
    full = _timed(
        "report (every device listed)",
        lambda: build_report(store, now, settings=ReportSettings(list_limit=None)),
        results,
    )
    _timed("render csv (every device)", lambda: render(full, "csv"), results)
    page = device_page(store, now, states=("legacy",), group=GROUPS[3], limit=100)
    _timed(
        "API page (legacy, one group, after)",
        lambda: device_page(store, now, states=("legacy",), group=GROUPS[3], after_id=page.next_after or 0, limit=100),
        results,
    )
    results["devices to move"] = report.to_move_total
    engine.dispose()
    results.update(measure_api(url))
    return results


def measure_api(url: str) -> dict[str, float]:
    """The dashboard's admin API over this database, through the Flask app of an initialised gateway
    (`gateway init --database-url URL` in a scratch directory): the summary (its trend cached after the
    first call: migration_tools.report.TrendCache) and one page of devices, median of 5 calls each."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "init", "--data-dir", str(data_dir), "--ca-key-type", "p256",
             "--database-url", url],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"gateway init failed: {done.stderr[-2000:]}")
        app = create_app(load_config(data_dir, environ={}))
        storage = app.extensions["gateway"].get().storage
        try:
            token = storage.admin_tokens.create_admin_token("bench", created_by="bench", now=utcnow()).token
            client = app.test_client()
            headers = {"Authorization": f"Bearer {token}"}

            def call(path: str) -> float:
                started = time.perf_counter()
                reply = client.get(path, headers=headers, base_url="https://localhost")
                assert reply.status_code == 200, reply.data[:300]
                return time.perf_counter() - started

            first = call("/admin/api/migration/summary")
            summaries = sorted(call("/admin/api/migration/summary") for _ in range(5))
            page = f"/admin/api/devices?state=legacy&group={GROUPS[3]}&limit=100"
            pages = sorted(call(page) for _ in range(5))
        finally:
            storage.db.dispose()
    return {
        "API summary, first (trend computed)": round(first, 3),
        "API summary, median of 5 (trend cached)": round(summaries[2], 3),
        "API devices page (legacy, one group, 100), median of 5": round(pages[2], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="also write the figures here, per backend")
    args = parser.parse_args()
    now = utcnow()
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = sqlite_url(Path(tmp) / "bench.db")
        print(f"sqlite: filled {args.devices} devices in {fill(url, args.devices, now):.1f} s")
        figures["sqlite"] = measure(url, now)
        print(json.dumps(figures["sqlite"], indent=2))
    pg = os.environ.get("GATEWAY_BENCH_DATABASE_URL")
    if pg:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = create_engine(pg)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = f"{pg}{'&' if '?' in pg else '?'}options=-csearch_path%3D{schema}"
            print(f"postgresql: filled {args.devices} devices in {fill(url, args.devices, now):.1f} s")
            figures["postgresql"] = measure(url, now)
            print(json.dumps(figures["postgresql"], indent=2))
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
