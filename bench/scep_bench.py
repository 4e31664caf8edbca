"""SCEP enrollments/s: `gateway serve` against micromdm's `scepserver`, same machine, same run.

Run it through `bench/scep` (as root: micromdm's scepserver listens on every interface, so it runs
in a network namespace of its own with only loopback). What one run does:

1. Sets up, in a temporary directory: a gateway data directory (`gateway init --ca-key-type
   rsa2048 --scep-challenge SECRET`) served by `gateway serve` (default workers) on free loopback
   ports; a micromdm depot (`scepserver ca -init -keySize 2048`) served by `scepserver -challenge
   SECRET` inside `ip netns` `gwbench-<pid>` (loopback only).
2. For each server, a worker process (the micromdm one inside the namespace, via `ip netns exec`)
   fetches GetCACert and pre-builds, untimed, N distinct PKCSReqs per concurrency level: an RSA-2048
   key from a pool of 64 shared by both servers, a subject CN unique per request, a fresh
   self-signed signer certificate, a CSR with the challenge, a random transactionID and
   senderNonce, enveloped to the RA (micromdm: its CA) with the same cipher and digest for both.
3. Sends them, at concurrency 1, 4 and 8, as POST /scep?operation=PKIOperation from that many
   threads, each with its own http.client keep-alive connection (re-opened when the server closes
   it, which is counted), bounded by N requests and --max-seconds per level.
4. After the timed section, verifies every reply with `parse_cert_rep` (RA signature, envelope
   opened with the requester's key): a failed enrollment is an HTTP error, a non-200 status, or a
   CertRep that is not SUCCESS or carries no certificate.
5. Prints one table: server, concurrency, requests, enrollments/s (SUCCESS CertReps per second of
   wall time), p50 and p99 latency of all answered requests, failed enrollments, and the ratio
   gateway/micromdm of enrollments/s per concurrency.

Everything is torn down at the end, on error too (servers killed, namespace deleted, files
removed unless --keep). `--json FILE` also writes the rows as JSON (bench/run reads them);
`--skip-micromdm` measures the gateway alone (no namespace, so no root needed).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import http.client
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from scep.asn1 import Digest, MessageType, PkiStatus
from scep.client import PKI_MESSAGE_TYPE, ScepClientError, ScepHttpClient, make_csr
from scep.client_messages import CertRepError, build_pki_request, parse_cert_rep, self_signed_signer
from scep.envelope import ContentCipher

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
SCEPSERVER = "/usr/bin/scepserver"
CHALLENGE = "SECRET"
KEY_POOL = 64
DEFAULT_REQUESTS = 1500
DEFAULT_LEVELS = "1,4,8"
READY_SECONDS = 30.0
REQUEST_TIMEOUT = 30.0


# -- worker: one server, run inside or outside the namespace ----------------------------------------


@dataclasses.dataclass
class Prepared:
    """One pre-built PKCSReq and what is needed to read its CertRep."""

    body: bytes
    key: rsa.RSAPrivateKey
    signer: x509.Certificate
    transaction_id: str


@dataclasses.dataclass
class Outcome:
    """What came back for one request (raw; verified after the timed section)."""

    status: int
    body: bytes
    seconds: float
    error: str = ""


def load_keys(path: Path) -> list[rsa.RSAPrivateKey]:
    marker = b"-----END PRIVATE KEY-----"
    keys: list[rsa.RSAPrivateKey] = []
    for chunk in path.read_bytes().split(marker):
        if chunk.strip():
            key = serialization.load_pem_private_key(chunk + marker, password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
            keys.append(key)
    return keys


def ra_certificate(url: str) -> x509.Certificate:
    """GetCACert, retried until the server answers (it may still be starting)."""
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            ra, _chain = ScepHttpClient(url, timeout=5).get_ca_certs()
            return ra
        except ScepClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def prepare(
    keys: list[rsa.RSAPrivateKey],
    ra: x509.Certificate,
    count: int,
    tag: str,
    cipher: ContentCipher,
    digest: Digest,
) -> list[Prepared]:
    """`count` distinct PKCSReqs: pooled keys, unique CN, fresh signer, random transactionID."""
    run = uuid.uuid4().hex[:8]
    prepared = []
    for i in range(count):
        key = keys[i % len(keys)]
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{run}-{tag}-{i}"),
            ]
        )
        csr = make_csr(key, subject, challenge=CHALLENGE)
        signer = self_signed_signer(key, subject)
        transaction_id = uuid.uuid4().hex
        body = build_pki_request(
            MessageType.PKCSReq,
            content_der=csr.public_bytes(Encoding.DER),
            signer_cert=signer,
            signer_key=key,
            recipient_cert=ra,
            transaction_id=transaction_id,
            sender_nonce=os.urandom(16),
            digest=digest,
            content_cipher=cipher,
        )
        prepared.append(Prepared(body, key, signer, transaction_id))
    return prepared


def send_all(
    url: str, requests: list[Prepared], concurrency: int, max_seconds: float
) -> tuple[list[Outcome], float, int]:
    """The timed section: (outcomes in send order, wall seconds, connections opened)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"{parts.path}?operation=PKIOperation"
    headers = {"Content-Type": PKI_MESSAGE_TYPE, "User-Agent": "gateway-bench-scep/1"}
    counter = itertools.count()
    results: list[Outcome | None] = [None] * len(requests)
    opened = [0] * concurrency
    started = time.perf_counter()
    deadline = started + max_seconds

    def run(slot: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT)
        try:
            while True:
                i = next(counter)
                if i >= len(requests) or time.perf_counter() > deadline:
                    return
                if conn.sock is None:
                    opened[slot] += 1
                t0 = time.perf_counter()
                try:
                    conn.request("POST", path, body=requests[i].body, headers=headers)
                    reply = conn.getresponse()
                    data = reply.read()
                    results[i] = Outcome(reply.status, data, time.perf_counter() - t0)
                    if reply.will_close:
                        conn.close()
                except (OSError, http.client.HTTPException) as exc:
                    results[i] = Outcome(0, b"", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
                    conn.close()
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return [r for r in results if r is not None], elapsed, sum(opened)


def verify(prepared: Prepared, outcome: Outcome, ra: x509.Certificate) -> str:
    """'' for a SUCCESS CertRep that answers this request with a certificate, else why not."""
    if outcome.error:
        return outcome.error[:80]
    if outcome.status != 200:
        return f"HTTP {outcome.status}: {outcome.body[:60]!r}"
    try:
        reply = parse_cert_rep(outcome.body, ra_cert=ra, signer_key=prepared.key, signer_cert=prepared.signer)
    except CertRepError as exc:
        return str(exc)[:80]
    if reply.status is not PkiStatus.SUCCESS:
        return f"{reply.status.name} {reply.fail_info.rfc_name if reply.fail_info else ''} {reply.fail_info_text or ''}"
    if reply.transaction_id != prepared.transaction_id:
        return "transactionID mismatch"
    if not any(cert.public_key() == prepared.key.public_key() for cert in reply.certificates):
        return "SUCCESS without a certificate for our key"
    return ""


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(-(-fraction * len(sorted_values) // 1)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def worker(args: argparse.Namespace) -> None:
    cipher, digest = ContentCipher(args.cipher), Digest(args.digest)
    keys = load_keys(Path(args.keys))
    ra = ra_certificate(args.url)
    levels = [int(level) for level in args.levels.split(",")]
    started = time.perf_counter()
    batches = {level: prepare(keys, ra, args.requests, f"c{level}", cipher, digest) for level in levels}
    print(
        f"[{args.label}] built {args.requests * len(levels)} PKCSReqs in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    rows = []
    for level in levels:
        outcomes, elapsed, connections = send_all(args.url, batches[level], level, args.max_seconds)
        failures = collections.Counter(
            reason for reason in (verify(p, o, ra) for p, o in zip(batches[level], outcomes, strict=False)) if reason
        )
        latencies = sorted(o.seconds for o in outcomes if not o.error)
        failed = sum(failures.values())
        row = {
            "server": args.label,
            "concurrency": level,
            "requests": len(outcomes),
            "succeeded": len(outcomes) - failed,
            "failed": failed,
            "seconds": elapsed,
            "enrollments_per_s": (len(outcomes) - failed) / elapsed,
            "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "connections": connections,
            "failure_reasons": failures.most_common(3),
        }
        rows.append(row)
        print(
            f"[{args.label}] c={level}: {row['requests']} requests in {elapsed:.1f} s, "
            f"{row['enrollments_per_s']:.1f}/s, {failed} failed",
            file=sys.stderr,
        )
    Path(args.out).write_text(json.dumps(rows))


# -- orchestration --------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def run_checked(command: list[str], **kwargs: Any) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}")


def child_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}, **extra}


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env or child_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group, SIGKILL it after 15 s."""
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


def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gateway serve exited at start-up:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.2)
    raise SystemExit(f"gateway serve not ready within {READY_SECONDS:g} s:\n{log.read_text(errors='replace')}")


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"# bench/scep {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print(
        f"# {args.requests} PKCSReqs per server and level (max {args.max_seconds:g} s per level), "
        f"cipher {args.cipher}, digest {args.digest}, RSA-2048 requester keys (pool of {KEY_POOL}), RSA-2048 CAs;"
    )
    print(
        "# POST /scep?operation=PKIOperation, one http.client keep-alive connection per thread;"
        " enrollments/s = SUCCESS CertReps / wall time"
    )
    header = (
        f"| {'server':<15} | {'conc':>4} | {'requests':>8} | {'enroll/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | "
        f"{'failed':>6} | {'conns':>5} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(
            f"| {row['server']:<15} | {row['concurrency']:>4} | {row['requests']:>8} | "
            f"{row['enrollments_per_s']:>8.1f} | {row['p50_ms']:>7.1f} | {row['p99_ms']:>7.1f} | "
            f"{row['failed']:>6} | {row['connections']:>5} |"
        )
    by_server: dict[str, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    for row in rows:
        by_server[row["server"]][row["concurrency"]] = row
    if by_server["micromdm"]:  # not with --skip-micromdm
        print()
        print("| conc | gateway/micromdm (enroll/s) |")
        print("|-----:|----------------------------:|")
        for level, row in sorted(by_server["gateway"].items()):
            other = by_server["micromdm"].get(level)
            ratio = (
                row["enrollments_per_s"] / other["enrollments_per_s"] if other and other["enrollments_per_s"] else 0.0
            )
            print(f"| {level:>4} | {ratio:>27.2f} |")
    reasons = [(row["server"], row["concurrency"], row["failure_reasons"]) for row in rows if row["failure_reasons"]]
    for server, level, top in reasons:
        print(f"# {server} c={level} failures: " + "; ".join(f"{n} x {reason}" for reason, n in top))


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def start_micromdm(tmp: Path, netns: str, port: int) -> subprocess.Popen[bytes]:
    """A new loopback-only namespace `netns` and a new depot (`scepserver ca -init`) served by scepserver in it."""
    run_checked(["ip", "netns", "add", netns])
    run_checked(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"])
    depot = tmp / "micromdm-depot"
    run_checked([SCEPSERVER, "ca", "-init", "-depot", str(depot), "-keySize", "2048"], cwd=tmp)
    command = ["ip", "netns", "exec", netns, SCEPSERVER, "-challenge", CHALLENGE, "-port", str(port)]
    return spawn([*command, "-depot", str(depot)], tmp / "micromdm.log")


def check_micromdm_prerequisites() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/scep needs root (ip netns for micromdm's scepserver); or --skip-micromdm")
    for tool in (SCEPSERVER, "ip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (Debian packages scep and iproute2)")


def main_run(args: argparse.Namespace) -> None:
    if not args.skip_micromdm:
        check_micromdm_prerequisites()
    signal.signal(signal.SIGTERM, _raise_exit)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scep-"))
    netns = f"gwbench-{os.getpid()}"
    gateway: subprocess.Popen[bytes] | None = None
    gateway_hsm: subprocess.Popen[bytes] | None = None
    micromdm: subprocess.Popen[bytes] | None = None
    netns_made = False
    try:
        started = time.perf_counter()
        write_key_pool(tmp / "keys.pem")
        gateway, http_port = start_gateway(tmp, "gateway", [], child_env(), args)
        hsm_port = 0
        if args.softhsm:
            kms, hsm_env = softhsm_token(tmp / "softhsm")
            # the CA, RA and TLS keys in the token (gateway.init_kms)
            gateway_hsm, hsm_port = start_gateway(tmp, "gateway-softhsm", ["--kms", kms], hsm_env, args)

        micromdm_port = 8080
        if not args.skip_micromdm:
            netns_made = True  # before it exists: a start-up failure half-way still deletes it
            micromdm = start_micromdm(tmp, netns, micromdm_port)
        print(
            f"# set-up in {time.perf_counter() - started:.1f} s: gateway on 127.0.0.1:{http_port}"
            + (f", gateway with its keys in SoftHSM2 on 127.0.0.1:{hsm_port}" if hsm_port else "")
            + ("" if args.skip_micromdm else f", micromdm in netns {netns} on 127.0.0.1:{micromdm_port}"),
            file=sys.stderr,
        )

        common = [
            "--keys",
            str(tmp / "keys.pem"),
            "--requests",
            str(args.requests),
            "--levels",
            args.levels,
            "--max-seconds",
            str(args.max_seconds),
            "--cipher",
            args.cipher,
            "--digest",
            args.digest,
        ]
        targets = [
            ("gateway", [], f"http://127.0.0.1:{http_port}/scep"),
            ("micromdm", ["ip", "netns", "exec", netns], f"http://127.0.0.1:{micromdm_port}/scep"),
        ]
        if args.skip_micromdm:
            targets = targets[:1]
        if hsm_port:
            targets.insert(1, ("gateway-softhsm", [], f"http://127.0.0.1:{hsm_port}/scep"))
        rows: list[dict[str, Any]] = []
        for label, prefix, url in targets:
            out = tmp / f"{label}.json"
            command = [
                *prefix,
                str(PYTHON),
                str(Path(__file__).resolve()),
                "--worker",
                "--label",
                label,
                "--url",
                url,
                "--out",
                str(out),
                *common,
            ]
            done = subprocess.run(command, cwd=REPO, env=child_env(), check=False)
            if done.returncode != 0:
                raise SystemExit(f"the {label} worker failed ({done.returncode})")
            rows += json.loads(out.read_text())
        print_table(rows, args)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        stop(micromdm)
        stop(gateway)
        stop(gateway_hsm)
        if netns_made:
            subprocess.run(["ip", "netns", "delete", netns], check=False)
        if args.keep:
            print(f"# kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def softhsm_token(directory: Path) -> tuple[str, dict[str, str]]:
    """A SoftHSM2 token of its own (Debian softhsm2): its keys.kms URI and the environment naming it."""
    (directory / "tokens").mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = child_env(SOFTHSM2_CONF=str(conf))
    run_checked(
        ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"], env=env
    )
    pin = directory / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o600)
    return f"pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=bench?pin-source=file://{pin}", env


def write_key_pool(path: Path) -> None:
    """KEY_POOL RSA-2048 requester keys, PEM, for the load workers."""
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(KEY_POOL)]
    path.write_bytes(
        b"".join(
            k.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()) for k in keys
        )
    )


def start_gateway(
    tmp: Path, name: str, init: list[str], env: dict[str, str], args: argparse.Namespace
) -> tuple[subprocess.Popen[bytes], int]:
    """`gateway init` (RSA-2048 CA, the bench challenge, plus `init`) in tmp/name, then `gateway serve`
    on free ports until it is healthy: the process and its HTTP port."""
    http_port, https_port = free_ports(2)
    data_dir = tmp / name
    run_checked(
        [
            *(str(PYTHON), "-m", "gateway", "init", "--data-dir", str(data_dir), "--ca-key-type", "rsa2048"),
            *("--scep-challenge", CHALLENGE, "--public-base-url", f"http://127.0.0.1:{http_port}", *init),
        ],
        cwd=REPO,
        env=env,
    )
    serve = [str(PYTHON), "-m", "gateway", "serve", "--data-dir", str(data_dir)]
    serve += ["--http", f"127.0.0.1:{http_port}", "--https", f"127.0.0.1:{https_port}"]
    if args.gateway_workers:
        serve += ["--workers", str(args.gateway_workers)]
    log = tmp / f"{name}-serve.log"
    process = spawn(serve, log, env=env)
    wait_healthy(http_port, process, log)
    return process, http_port


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="PKCSReqs per server and level")
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help="concurrency levels, comma-separated")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time bound per server and level")
    parser.add_argument("--cipher", default=ContentCipher.AES256.value, choices=[c.value for c in ContentCipher])
    parser.add_argument("--digest", default=Digest.SHA256.value, choices=[d.value for d in Digest])
    parser.add_argument("--gateway-workers", type=int, default=0, help="gateway serve --workers (default: its own)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, depots)")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument(
        "--softhsm", action="store_true", help="also a gateway whose CA, RA and TLS keys are in a SoftHSM2 token"
    )
    parser.add_argument("--skip-micromdm", action="store_true", help="measure the gateway only (no root needed)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="server", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help="worker mode: the SCEP URL to load")
    parser.add_argument("--keys", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        main_run(args)


if __name__ == "__main__":
    main()
