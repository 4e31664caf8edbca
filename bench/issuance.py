"""Issuance throughput of the shared CA: certificates signed and recorded per second.

Measures `CertificateAuthority.issue` (sign + one transaction with the row and its audit event) on
SQLite and, when GATEWAY_BENCH_DATABASE_URL is set, on PostgreSQL, with 1 and 8 threads, for an
RSA-3072 and a P-256 CA. Usage:

    .venv/bin/python bench/issuance.py [--count 2000]
    GATEWAY_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/test .venv/bin/python bench/issuance.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, text

from shared_ca.authority import CertificateAuthority, PublicUrls, utcnow
from shared_ca.ca_material import create_root_ca, register_issuer
from shared_ca.keys import KeyType, generate_private_key
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.storage.db import create_store_engine, migrate_to_head, sqlite_url
from shared_ca.storage.repositories import Storage


def _authority(url: str, ca_key_type: KeyType) -> tuple[CertificateAuthority, Storage]:
    engine = create_store_engine(url, pool_size=10)
    migrate_to_head(engine)
    storage = Storage.open(engine)
    now = utcnow()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Bench CA {name}")])
    material = create_root_ca(generate_private_key(ca_key_type), subject, 365, now)
    issuer = register_issuer(storage.issuers, name, material.certificate, kind="ca", actor="bench", now=now)
    urls = PublicUrls("http://127.0.0.1:8080")
    return CertificateAuthority(
        storage.certificates, issuer, material.certificate, material.chain, material.key, urls
    ), storage


def _run(authority: CertificateAuthority, count: int, threads: int) -> float:
    profile = DEFAULT_PROFILES["default"]
    device_key = generate_private_key(KeyType.P256).public_key()

    def issue(i: int) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"device-{i}")])
        policy = authorize_request(profile, name, [], device_key, dt.datetime.now(dt.UTC))
        authority.issue(policy, protocol="bench", actor="bench")

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(issue, range(count)))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backends = {"sqlite": sqlite_url(Path(tmp) / "bench.db")}
        pg_url = os.environ.get("GATEWAY_BENCH_DATABASE_URL", "")
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        if pg_url:
            _schema(pg_url, f'CREATE SCHEMA "{schema}"')
            backends["postgresql"] = f"{pg_url}{'&' if '?' in pg_url else '?'}options=-csearch_path%3D{schema}"
        print(f"# {dt.date.today()} {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"{'backend':<11} {'CA key':<8} {'threads':>7} {'certs/s':>9}")
        for backend, url in backends.items():
            for key_type in (KeyType.RSA3072, KeyType.P256):
                authority, storage = _authority(url, key_type)
                try:
                    for threads in (1, 8):
                        rate = _run(authority, args.count, threads)
                        print(f"{backend:<11} {key_type.value:<8} {threads:>7} {rate:>9.0f}")
                finally:
                    storage.db.dispose()
        if pg_url:
            _schema(pg_url, f'DROP SCHEMA "{schema}" CASCADE')


def _schema(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
