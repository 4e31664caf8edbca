"""bench/migration: the migration toolkit at fleet scale.

1. Import: a micromdm/scep file depot of N certificates (default 100,000) in micromdm's own layout
   (`ca.pem`, `index.txt`, `serial`, one `<cn>.<serial>.pem` per certificate; 2 % revoked; an
   RSA-2048 CA like micromdm's), made
   before the timed section, then `gateway migrate import --from micromdm-depot` timed end to end
   (a new process: parsing, signature checks, inserts), and once more to show the second run adds
   nothing.
2. Report: bench/migration_report_scale.py fills 1,000,000 devices and times the report.

Both on SQLite and, when --postgres URL is given (default: the local test database if it answers),
on PostgreSQL. Prints one table; `--json FILE` writes the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1/test"


def make_depot(directory: Path, count: int) -> float:
    """A micromdm depot of `count` certificates signed by a new RSA-2048 CA, as `scepserver ca -init
    -keySize 2048` makes it (an RSA signature verifies several times faster than a P-256 one, which
    matters at this scale); seconds it took (untimed part)."""
    started = time.perf_counter()
    directory.mkdir(parents=True)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Legacy MDM CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(Encoding.PEM))
    device_key = ec.generate_private_key(ec.SECP256R1()).public_key()  # one key: the import does not care
    lines: list[str] = []
    for n in range(count):
        serial = n + 2
        cn = f"device-{n:06d}"
        issued = now - dt.timedelta(days=n % 300)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(device_key)
            .serial_number(serial)
            .not_valid_before(issued)
            .not_valid_after(issued + dt.timedelta(days=365))
            .sign(ca_key, hashes.SHA256())
        )
        name = f"{cn}.{serial}.pem"
        (directory / name).write_bytes(cert.public_bytes(Encoding.PEM))
        expiry = (issued + dt.timedelta(days=365)).strftime("%y%m%d%H%M%SZ")
        revoked = n % 50 == 7
        status, revocation = ("R", now.strftime("%y%m%d%H%M%SZ")) if revoked else ("V", "")
        lines.append(f"{status}\t{expiry}\t{revocation}\t{serial:02X}\t{name}\t/C=US/O=Fleet/CN={cn}")
    (directory / "index.txt").write_text("\n".join(lines) + "\n")
    (directory / "serial").write_text(f"{count + 2:02X}\n")
    return time.perf_counter() - started


def gateway(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "gateway", *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )


def postgres_schema(url: str) -> tuple[str, str] | None:
    """A fresh schema on the PostgreSQL server (None when it does not answer): (schema, url)."""
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
    except Exception as exc:
        print(f"# PostgreSQL at {url} unavailable ({type(exc).__name__}); SQLite only", file=sys.stderr)
        return None
    separator = "&" if "?" in url else "?"
    return schema, f"{url}{separator}options=-csearch_path%3D{schema}"


def drop_schema(url: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def time_import(work: Path, depot: Path, count: int, database_url: str | None) -> dict[str, Any]:
    data_dir = work / ("data-pg" if database_url else "data-sqlite")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    init = ["init", "--data-dir", str(data_dir), "--ca-key-type", "p256"]
    if database_url:
        init += ["--database-url", database_url]
    done = gateway(*init, env=env)
    if done.returncode != 0:
        raise SystemExit(f"gateway init failed: {done.stderr}")
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=90)).strftime("%Y-%m-%d")
    command = ["migrate", "import", "--from", "micromdm-depot", str(depot), "--trust-until", until]
    command += ["--group", "fleet", "--data-dir", str(data_dir), "--format", "json"]
    timings = []
    outputs = []
    for _ in range(2):
        started = time.perf_counter()
        done = gateway(*command, env=env)
        timings.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"gateway migrate import failed: {done.stderr[-2000:]}")
        outputs.append(done.stdout)
    return {"certificates": count, "first_run_s": round(timings[0], 2), "second_run_s": round(timings[1], 2),
            "first": _summary(outputs[0]), "second": _summary(outputs[1])}  # fmt: skip


def _summary(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text.strip().splitlines()[-8:]


def time_reports(devices: int, postgres_url: str | None) -> dict[str, Any]:
    """bench/migration_report_scale.py over `devices` devices, on SQLite and (given a URL) PostgreSQL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if postgres_url:
        env["GATEWAY_BENCH_DATABASE_URL"] = postgres_url
    with tempfile.TemporaryDirectory(prefix="gw-report-") as out:
        result_file = Path(out) / "report.json"
        done = subprocess.run(
            [PYTHON, str(REPO / "bench" / "migration_report_scale.py"), "--devices", str(devices),
             "--json", str(result_file)],
            cwd=REPO, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"bench/migration_report_scale.py failed: {done.stderr[-2000:]}")
        data: dict[str, Any] = json.loads(result_file.read_text())
        return data


def report_seconds(figures: dict[str, float]) -> float:
    """The median of the three builds of the default report (1,000 devices per list)."""
    runs = sorted(v for k, v in figures.items() if k.startswith("report (1,000 per list)"))
    return runs[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certificates", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--postgres", default=DEFAULT_PG, help="PostgreSQL URL ('' for SQLite only)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the depot and data directories")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gw-migration-bench-"))
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
    }
    try:
        depot = work / "depot"
        made = make_depot(depot, args.certificates)
        print(f"# depot of {args.certificates} certificates made in {made:.1f} s (untimed)", file=sys.stderr)
        backends: list[tuple[str, str | None, str | None]] = [("sqlite", None, None)]
        if args.postgres:
            made_schema = postgres_schema(args.postgres)
            if made_schema:
                backends.append(("postgresql", made_schema[1], made_schema[0]))
        for name, url, schema in backends:
            try:
                results[f"import_{name}"] = time_import(work, depot, args.certificates, url)
                print(f"# import on {name}: {results[f'import_{name}']['first_run_s']} s", file=sys.stderr)
            finally:
                if schema and args.postgres:
                    drop_schema(args.postgres, schema)
        reports = time_reports(args.devices, args.postgres if len(backends) > 1 else None)
        for name, figures in reports.items():
            results[f"report_{name}"] = figures
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"# bench/migration {results['date']}, {results['machine']}")
    print("| backend | certificates imported | first run s | second run s (adds nothing) | devices | report s |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend in ("sqlite", "postgresql"):
        imported = results.get(f"import_{backend}")
        report = results.get(f"report_{backend}")
        if not imported:
            continue
        seconds = report_seconds(report) if report else "?"
        print(f"| {backend} | {args.certificates:,} | {imported['first_run_s']} | {imported['second_run_s']} "
              f"| {args.devices:,} | {seconds} |")  # fmt: skip


if __name__ == "__main__":
    main()
