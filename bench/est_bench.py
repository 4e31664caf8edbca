"""EST simpleenroll/s of `gateway serve`: Basic auth, kept-alive vs new TLS connections, concurrency 1, 4, 8.

Run it through `bench/est`. What one run does:

1. Sets up, in a temporary directory: a gateway data directory (`gateway init --ca-key-type
   rsa2048`), an EST user with unlimited uses (`gateway est-user add --generate`: a machine
   credential, or `--credential password` for a human password under scrypt), and `gateway serve`
   (2 workers per listener unless --workers) on free loopback ports.
2. Pre-builds, untimed, N distinct CSRs per mode and concurrency level: a P-256 key from a pool of
   64, a subject CN unique per request, base64 as RFC 7030 sends it; then sends 16 untimed
   enrollments so every worker has served its first requests.
3. For each mode and level, starts that many load-generator processes (multiprocessing, so the
   load generator's GIL does not cap the rate), released together; each sends its share of the
   CSRs as POST /.well-known/est/simpleenroll with Basic auth, either over one kept-alive
   http.client HTTPSConnection (re-opened when the server closes it, which is counted) or over a
   new TLS connection per request; bounded by N requests and --max-seconds per level.
4. After the timed section, checks every reply: HTTP 200, a certs-only PKCS#7 holding a
   certificate for the request's key, issued by the gateway's CA.
5. Prints one table: mode, concurrency, requests, enrollments/s (verified certificates per second
   of wall time), p50 and p99 latency of answered requests, failures, TLS connections opened.

Everything is torn down at the end, on error too (server stopped, files removed unless --keep).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import http.client
import json
import multiprocessing
import os
import platform
import queue
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from est.client_messages import EstClientError, build_csr, decode_base64_reply, parse_certs_only
from est.wire import encode_base64_body
from shared_ca.keys import public_key_bytes

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
USER = "bench"
KEY_POOL = 64
DEFAULT_REQUESTS = 500
WARM_UP = 16
DEFAULT_LEVELS = "1,4,8"
MODES = ("keep-alive", "new-conn")
READY_SECONDS = 30.0
REQUEST_TIMEOUT = 30.0
PATH = "/.well-known/est/simpleenroll"


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One pre-built simpleenroll body and the public key (SPKI DER) its certificate must carry."""

    body: bytes
    spki: bytes


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What came back for one request (raw; verified after the timed section)."""

    index: int
    status: int
    body: bytes
    seconds: float
    error: str = ""


# -- load generator (one process per concurrent client) ---------------------------------------------


def client_process(
    slot: int,
    port: int,
    cafile: str,
    authorization: str,
    bodies: list[tuple[int, bytes]],
    keep_alive: bool,
    deadline_seconds: float,
    ready: Any,
    results: Any,
) -> None:
    """Send `bodies` one after another; put (slot, outcomes, started, finished, connections) on `results`."""
    context = ssl.create_default_context(cafile=cafile)
    headers = {
        "Content-Type": "application/pkcs10",
        "Authorization": authorization,
        "User-Agent": "gateway-bench-est/1",
    }
    outcomes: list[Outcome] = []
    connections = 0
    conn: http.client.HTTPSConnection | None = None
    ready.wait()  # released together with the other clients
    started = time.monotonic()
    deadline = started + deadline_seconds
    for index, body in bodies:
        if time.monotonic() > deadline:
            break
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT, context=context)
        if conn.sock is None:
            connections += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", PATH, body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            outcomes.append(Outcome(index, reply.status, data, time.perf_counter() - t0))
            if reply.will_close or not keep_alive:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            outcomes.append(Outcome(index, 0, b"", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"))
            conn.close()
        if not keep_alive:
            conn = None
    finished = time.monotonic()
    if conn is not None:
        conn.close()
    results.put((slot, outcomes, started, finished, connections))


def run_level(
    port: int,
    cafile: Path,
    authorization: str,
    prepared: list[Prepared],
    concurrency: int,
    keep_alive: bool,
    limit: float,
) -> tuple[list[Outcome], float, int]:
    """The timed section: (outcomes, wall seconds from the first start to the last finish, connections)."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Barrier(concurrency + 1)
    results = ctx.Queue()
    shares = [[(i, p.body) for i, p in enumerate(prepared) if i % concurrency == slot] for slot in range(concurrency)]
    processes = [
        ctx.Process(
            target=client_process,
            args=(slot, port, str(cafile), authorization, shares[slot], keep_alive, limit, ready, results),
        )
        for slot in range(concurrency)
    ]
    for process in processes:
        process.start()
    ready.wait()  # every process has its TLS context and its share: release them together
    try:
        collected = [results.get(timeout=limit + REQUEST_TIMEOUT * 2) for _ in processes]
    except queue.Empty:
        for process in processes:
            process.kill()
        raise SystemExit("a load-generator process did not report (see its traceback above)") from None
    for process in processes:
        process.join(10)
    outcomes = [o for _slot, slot_outcomes, *_ in collected for o in slot_outcomes]
    started = min(c[2] for c in collected)
    finished = max(c[3] for c in collected)
    return outcomes, finished - started, sum(c[4] for c in collected)


def verify(prepared: Prepared, outcome: Outcome, ca: x509.Certificate) -> str:
    """'' for a 200 certs-only reply with a certificate for the request's key issued by `ca`, else why not."""
    if outcome.error:
        return outcome.error[:80]
    if outcome.status != 200:
        return f"HTTP {outcome.status}: {outcome.body[:60]!r}"
    try:
        certs = parse_certs_only(decode_base64_reply(outcome.body, "simpleenroll"))
    except EstClientError as exc:
        return str(exc)[:80]
    for cert in certs:
        if public_key_bytes(cert.public_key()) == prepared.spki:
            return "" if cert.issuer == ca.subject else "issued by another CA"
    return "no certificate for the request's key"


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(-(-fraction * len(sorted_values) // 1)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def prepare(keys: list[ec.EllipticCurvePrivateKey], count: int, tag: str) -> list[Prepared]:
    """`count` distinct simpleenroll bodies: pooled keys, a unique CN each."""
    run = secrets.token_hex(4)
    prepared = []
    for i in range(count):
        key = keys[i % len(keys)]
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"est-bench-{run}-{tag}-{i}"),
            ]
        )
        csr = build_csr(key, name)
        prepared.append(
            Prepared(encode_base64_body(csr.public_bytes(Encoding.DER)), public_key_bytes(key.public_key()))
        )
    return prepared


# -- orchestration --------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def gateway(*args: str, stdin: str | None = None) -> str:
    """Run `gateway ARGS`, return its stdout; exit with its output when it fails."""
    command = [str(PYTHON), "-m", "gateway", *args]
    done = subprocess.run(
        command, cwd=REPO, env=child_env(), input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}")
    return done.stdout


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the server's process group, SIGKILL it after 15 s."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def wait_healthy(port: int, cafile: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    context = ssl.create_default_context(cafile=str(cafile))
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gateway serve exited at start-up:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=context)
            try:
                conn.request("GET", "/.well-known/est/cacerts")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.2)
    raise SystemExit(f"EST not answering within {READY_SECONDS:g} s:\n{log.read_text(errors='replace')}")


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, workers: int) -> None:
    print(
        f"# bench/est {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print(
        f"# {args.requests} simpleenrolls per mode and level (max {args.max_seconds:g} s each), P-256 requester keys "
        f"(pool of {KEY_POOL}), {args.ca_key_type} CA, Basic user ({args.credential}), "
        f"gateway serve --workers {workers}; load from one process per client"
    )
    header = (
        f"| {'mode':<10} | {'conc':>4} | {'requests':>8} | {'enroll/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | "
        f"{'failed':>6} | {'conns':>5} |"
    )
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(
            f"| {row['mode']:<10} | {row['concurrency']:>4} | {row['requests']:>8} | "
            f"{row['enrollments_per_s']:>8.1f} | {row['p50_ms']:>7.1f} | {row['p99_ms']:>7.1f} | "
            f"{row['failed']:>6} | {row['connections']:>5} |"
        )
    for row in rows:
        if row["failure_reasons"]:
            reasons = "; ".join(f"{n} x {reason}" for reason, n in row["failure_reasons"])
            print(f"# {row['mode']} c={row['concurrency']} failures: {reasons}")


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main_run(args: argparse.Namespace) -> None:
    levels = [int(level) for level in args.concurrency.split(",")]
    workers = args.workers or 2
    signal.signal(signal.SIGTERM, _raise_exit)
    tmp = Path(tempfile.mkdtemp(prefix="bench-est-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        started = time.perf_counter()
        http_port, https_port = free_ports(2)
        data_dir = tmp / "gateway"
        gateway("init", "--data-dir", str(data_dir), "--ca-key-type", args.ca_key_type)
        if args.credential == "generated":
            secret = gateway("est-user", "add", USER, "--data-dir", str(data_dir), "--generate").strip()
        else:
            secret = secrets.token_urlsafe(18)
            gateway("est-user", "add", USER, "--data-dir", str(data_dir), "--password-stdin", stdin=secret + "\n")
        authorization = "Basic " + base64.b64encode(f"{USER}:{secret}".encode()).decode("ascii")
        cafile = data_dir / "ca.pem"
        ca = x509.load_pem_x509_certificate(cafile.read_bytes())
        serve = ["serve", "--data-dir", str(data_dir), "--workers", str(workers)]
        serve += ["--http", f"127.0.0.1:{http_port}", "--https", f"127.0.0.1:{https_port}"]
        log = tmp / "serve.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [str(PYTHON), "-m", "gateway", *serve],
                cwd=REPO,
                env=child_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_healthy(https_port, cafile, server, log)
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(KEY_POOL)]
        batches = {
            (mode, level): prepare(keys, args.requests, f"{mode}-c{level}") for mode in MODES for level in levels
        }
        warm_up = prepare(keys, WARM_UP, "warm-up")  # every worker's first requests (connections, caches): untimed
        run_level(https_port, cafile, authorization, warm_up, 4, False, args.max_seconds)
        print(
            f"# set-up in {time.perf_counter() - started:.1f} s (server on 127.0.0.1:{https_port}, "
            f"{args.requests * len(batches)} CSRs built)",
            file=sys.stderr,
        )
        rows = []
        for mode in MODES:
            for level in levels:
                prepared = batches[(mode, level)]
                outcomes, elapsed, connections = run_level(
                    https_port, cafile, authorization, prepared, level, mode == "keep-alive", args.max_seconds
                )
                failures = collections.Counter(
                    reason for reason in (verify(prepared[o.index], o, ca) for o in outcomes) if reason
                )
                failed = sum(failures.values())
                latencies = sorted(o.seconds for o in outcomes if not o.error)
                row = {
                    "mode": mode,
                    "concurrency": level,
                    "requests": len(outcomes),
                    "succeeded": len(outcomes) - failed,
                    "failed": failed,
                    "seconds": elapsed,
                    "enrollments_per_s": (len(outcomes) - failed) / elapsed if elapsed else 0.0,
                    "p50_ms": percentile(latencies, 0.50) * 1000,
                    "p99_ms": percentile(latencies, 0.99) * 1000,
                    "connections": connections,
                    "failure_reasons": failures.most_common(3),
                }
                rows.append(row)
                print(
                    f"# {mode} c={level}: {row['requests']} requests in {elapsed:.1f} s, "
                    f"{row['enrollments_per_s']:.1f}/s, {failed} failed",
                    file=sys.stderr,
                )
        print_table(rows, args, workers)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        stop(server)
        if args.keep:
            print(f"# kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="simpleenrolls per mode and level")
    parser.add_argument("--concurrency", default=DEFAULT_LEVELS, help="concurrency levels, comma-separated")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time bound per mode and level")
    parser.add_argument("--workers", type=int, default=0, help="gateway serve --workers (default 2 per listener)")
    parser.add_argument("--ca-key-type", default="rsa2048", choices=["rsa2048", "rsa3072", "p256", "p384"])
    parser.add_argument("--credential", default="generated", choices=["generated", "password"])
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server log, data)")
    main_run(parser.parse_args())


if __name__ == "__main__":
    main()
