"""bench/slowclients: what well-behaved clients see while slow and idle clients hold the gateway's connections.

Run it through `bench/slowclients`. One run:

1. Sets up, in a temporary directory, a gateway (`gateway init`, RSA-2048 CA, a static SCEP challenge,
   an EST user) and `gateway serve` on free loopback ports.
2. Measures, one request after another from 127.0.0.1: GET /healthz on both listeners, SCEP PKCSReq
   over plain HTTP, EST simpleenroll over TLS (new connection each) - first with nothing else going
   on, then while bench/slow_clients.py holds `--per-kind` connections of each slow kind from
   127.0.0.2 (a head trickled a byte at a time on both listeners, a body trickled a byte at a time,
   idle after the TLS handshake, TCP without TLS on the HTTPS port), re-opening each one the
   gateway closes.
3. Prints one table: request, phase, sent, answered, p50, p99 and max latency; and what the slow
   clients saw (held at the end, opened, refused by the gateway, closed by a deadline).

Usage: bench/slowclients [--per-kind 200] [--requests 100] [--workers 2] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from est_bench import PYTHON, REPO, child_env, free_ports, gateway, stop, wait_healthy
from slow_clients import KINDS, Probe, est_probe, healthz_probe, scep_probe, slow_clients

from scep.client import ScepHttpClient

CHALLENGE = "bench-slow-clients"
USER = "bench"


def probes(http_port: int, https_port: int, cafile: str, secret: str, keys: list[rsa.RSAPrivateKey]) -> list[Probe]:
    ra, _chain = ScepHttpClient(f"http://127.0.0.1:{http_port}/scep", timeout=10).get_ca_certs()
    return [
        healthz_probe(http_port, None),
        healthz_probe(https_port, cafile),
        scep_probe(http_port, ra, CHALLENGE, keys),
        est_probe(https_port, cafile, USER, secret),
    ]


def measure(phase: str, measured: list[Probe], requests: int) -> list[dict[str, Any]]:
    rows = []
    for probe in measured:
        probe.run(requests)
        rows.append({"phase": phase, **probe.summary(), "failures": sorted(set(probe.failures))})
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, slow: dict[str, int]) -> None:
    print(
        f"# bench/slowclients {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; gateway serve --workers {args.workers}"
    )
    print(
        f"# slow clients from 127.0.0.2: {args.per_kind} of each kind ({', '.join(KINDS)}) = "
        f"{args.per_kind * len(KINDS)} connections; {args.requests} requests of each kind from 127.0.0.1, one at a time"
    )
    header = "| request | phase | sent | answered | p50 ms | p99 ms | max ms |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['request']} | {row['phase']} | {row['sent']} | {row['answered']} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {row['max_ms']} |"
        )
    print(
        f"# slow clients: {slow['held']} held at the end, {slow['opened']} opened in all, {slow['refused']} refused "
        f"by the gateway, {slow['closed_by_server']} closed by a gateway deadline"
    )
    for row in rows:
        if row["failures"]:
            print(f"# {row['request']} ({row['phase']}) failures: {'; '.join(row['failures'][:5])}")


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-kind", type=int, default=200, help="slow connections of each kind (5 kinds)")
    parser.add_argument("--requests", type=int, default=100, help="requests of each kind per phase")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per listener")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _raise_exit)
    tmp = Path(tempfile.mkdtemp(prefix="bench-slowclients-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        http_port, https_port = free_ports(2)
        data_dir = tmp / "gateway"
        gateway("init", "--data-dir", str(data_dir), "--ca-key-type", "rsa2048", "--scep-challenge", CHALLENGE)
        secret = gateway("est-user", "add", USER, "--data-dir", str(data_dir), "--generate").strip()
        log = tmp / "serve.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [str(PYTHON), "-m", "gateway", "serve", "--data-dir", str(data_dir), "--http",
                 f"127.0.0.1:{http_port}", "--https", f"127.0.0.1:{https_port}", "--workers", str(args.workers)],
                cwd=REPO, env=child_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        cafile = data_dir / "ca.pem"
        wait_healthy(https_port, cafile, server, log)
        keys = [rsa.generate_private_key(65537, 2048) for _ in range(8)]
        rows = measure("quiet", probes(http_port, https_port, str(cafile), secret, keys), args.requests)
        with slow_clients(http_port, https_port, args.per_kind) as held:
            time.sleep(2)
            rows += measure("slow clients", probes(http_port, https_port, str(cafile), secret, keys), args.requests)
            slow = dict(vars(held.stats))
        print_table(rows, args, slow)
    finally:
        stop(server)
        if args.keep:
            print(f"# kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
