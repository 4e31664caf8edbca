"""bench/run: issue 6's figures in one command and one table (SCEP, EST, HTTP ceiling, RSS, migration).

Run it through `bench/run` (as root: micromdm's scepserver runs in a loopback-only network
namespace, as in bench/scep). Everything is set up and torn down by the run itself, in a
temporary directory: its own data directories, its own servers on free loopback ports, its own
namespace. The parts, one after the other:

1. **Ceiling**: `bench/hello_world.py` (a Flask app that answers `GET /` with `ok` and echoes a
   POST body) served by gunicorn with `gateway serve`'s own settings (it subclasses the gateway's
   `ListenerApplication`: gthread, listen.workers = 2 and listen.threads = 4 per listener,
   keepalive 15 s, the gateway's SSLContext cached in the `ssl_context` hook). Loaded, from a
   separate client process, with the two benches' own load generators and bodies of the same size
   as theirs (one real PKCSReq, one real base64 CSR, echoed back): plain HTTP keep-alive with
   bench/scep_bench.py's thread-per-connection `send_all`; HTTPS keep-alive and HTTPS with a new
   TLS connection per request with bench/est_bench.py's process-per-client `run_level`.
2. **SCEP**: `bench/scep_bench.py --json` (gateway and micromdm side by side in the same run).
3. **EST**: `bench/est_bench.py --json` (simpleenroll, kept-alive and new TLS connection per request).
4. **Migration**: `bench/migration --json FILE` when that file exists and is executable (import of
   100,000 certificates, report over 1,000,000 devices, SQLite and PostgreSQL); otherwise a row
   saying it was not found. Its figures are printed as it reports them.

Load always comes from requests built before the timed section, so the client's own crypto does
not count. During the whole run a sampler thread walks this process's descendants in /proc every
0.5 s and keeps each gunicorn worker's VmHWM (peak resident set, which counts pages still shared
with the arbiter) and micromdm's; the table shows the largest worker per listener. It also
measures how busy the machine was with other processes (CPU time of the machine from /proc/stat
minus this run's own, self and reaped descendants), per part, so a table measured on a loaded
machine says so.

The result is one markdown table with a heading (date, machine: nproc, CPU model, Python, OpenSSL
of the ssl module and of cryptography), ready to paste into docs/performance.md; `--json FILE`
writes every figure (including the benches' raw rows) as JSON.

Usage (as root, from anywhere):

    bench/run                   # full run: SCEP 1,500, EST 500, hello world 2,000 requests per level
    bench/run --quick           # SCEP 200, EST 100, hello world 1,000 per level, bench/migration with
                                # 10,000 certificates and 100,000 devices: about 2 minutes
    bench/run --requests N      # N requests per level for every part
    bench/run --json FILE       # also write the whole result as JSON
    bench/run --skip-migration  # do not run bench/migration
    bench/run --skip-micromdm   # gateway only (no network namespace; root not needed)
    bench/run --workers W --concurrency 1,4,8 --max-seconds S --keep
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import est_bench
import scep_bench
from cryptography import x509
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import load_config
from gateway.server import child_environment
from scep.asn1 import Digest
from scep.envelope import ContentCipher

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PYTHON = REPO / ".venv" / "bin" / "python"
MIGRATION = BENCH / "migration"
FULL_REQUESTS = {"scep": scep_bench.DEFAULT_REQUESTS, "est": est_bench.DEFAULT_REQUESTS, "hello": 2000}
QUICK_REQUESTS = {"scep": 200, "est": 100, "hello": 1000}
DEFAULT_LEVELS = "1,4,8"
HELLO_MAX_SECONDS = 30.0
HELLO_MODES = ("http-keep-alive", "https-keep-alive", "https-new-conn")
HELLO_MODE_TEXT = {
    "http-keep-alive": "HTTP keep-alive (SCEP's load generator)",
    "https-keep-alive": "HTTPS keep-alive (EST's load generator)",
    "https-new-conn": "HTTPS, new TLS connection per request",
}
EST_MODE_TEXT = {"keep-alive": "HTTPS keep-alive", "new-conn": "new TLS connection per request"}
EST_CEILING = {"keep-alive": "https-keep-alive", "new-conn": "https-new-conn"}
HELLO_WARM_UP = 32
HELLO_AUTHORIZATION = "Basic " + base64.b64encode(b"bench:" + b"x" * 24).decode("ascii")  # as long as EST's
SAMPLE_SECONDS = 0.5
MIGRATION_TIMEOUT = 3600.0
SKIPPED = "skipped (--skip-migration)"
NOT_FOUND = "bench/migration not found"
FULL_MIGRATION = {"certificates": 100_000, "devices": 1_000_000}  # issue 6's sizes
QUICK_MIGRATION = {"certificates": 10_000, "devices": 100_000}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- hello-world load (runs in its own process: `run_bench.py --hello-client ...`) ------------------


class Reply(Protocol):
    """What both benches' Outcome classes carry."""

    @property
    def status(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def seconds(self) -> float: ...
    @property
    def error(self) -> str: ...


def summarise(
    mode: str, level: int, outcomes: Sequence[Reply], elapsed: float, connections: int, expected: bytes
) -> dict[str, Any]:
    """One hello-world row; a failure is an error, a non-200 status or a body that is not the echo."""
    failed = sum(1 for o in outcomes if o.error or o.status != 200 or o.body != expected)
    latencies = sorted(o.seconds for o in outcomes if not o.error)
    return {
        "mode": mode,
        "concurrency": level,
        "requests": len(outcomes),
        "failed": failed,
        "seconds": elapsed,
        "requests_per_s": (len(outcomes) - failed) / elapsed if elapsed else 0.0,
        "p50_ms": scep_bench.percentile(latencies, 0.50) * 1000,
        "p99_ms": scep_bench.percentile(latencies, 0.99) * 1000,
        "connections": connections,
        "body_bytes": len(expected),
    }


def hello_client(args: argparse.Namespace) -> None:
    """Load the hello world with the benches' own load generators; write the rows to args.out."""
    cafile = Path(args.cafile)
    ca = x509.load_pem_x509_certificate(cafile.read_bytes())
    # One real request of each kind, so the bodies have the benches' sizes (the echo sends them back).
    scep_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    scep_request = scep_bench.prepare([scep_key], ca, 1, "hello", ContentCipher.AES256, Digest.SHA256)[0]
    est_request = est_bench.prepare([ec.generate_private_key(ec.SECP256R1())], 1, "hello")[0]
    url = f"http://127.0.0.1:{args.http_port}/scep"
    levels = [int(level) for level in args.levels.split(",")]
    scep_bench.send_all(url, [scep_request] * HELLO_WARM_UP, 4, args.max_seconds)  # untimed warm-up
    est_bench.run_level(
        args.https_port, cafile, HELLO_AUTHORIZATION, [est_request] * HELLO_WARM_UP, 4, False, args.max_seconds
    )
    rows = []
    for mode in HELLO_MODES:
        for level in levels:
            if mode == "http-keep-alive":
                scep_outcomes, elapsed, connections = scep_bench.send_all(
                    url, [scep_request] * args.requests, level, args.max_seconds
                )
                row = summarise(mode, level, scep_outcomes, elapsed, connections, scep_request.body)
            else:
                est_outcomes, elapsed, connections = est_bench.run_level(
                    args.https_port,
                    cafile,
                    HELLO_AUTHORIZATION,
                    [est_request] * args.requests,
                    level,
                    mode == "https-keep-alive",
                    args.max_seconds,
                )
                row = summarise(mode, level, est_outcomes, elapsed, connections, est_request.body)
            rows.append(row)
            print(
                f"# hello {mode} c={level}: {row['requests']} requests in {elapsed:.1f} s, "
                f"{row['requests_per_s']:.0f}/s, {row['failed']} failed",
                file=sys.stderr,
            )
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


# -- what the machine is doing: peak RSS of the servers, CPU used by others -------------------------


@dataclasses.dataclass
class Peak:
    """The largest VmHWM / VmRSS seen of one process of ours."""

    phase: str
    server: str  # gateway | hello | micromdm
    listener: str  # http | https | '' (micromdm)
    role: str  # worker | arbiter | process
    pid: int
    hwm_kib: int = 0
    rss_kib: int = 0


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _server_of(argv: list[str]) -> tuple[str, str] | None:
    """('gateway'|'hello'|'micromdm', listener) for a server process's command line, else None."""
    for i, arg in enumerate(argv):
        if arg == "gateway.server" or arg.endswith("hello_world.py"):
            listener = argv[i + 1] if i + 1 < len(argv) else "?"
            return ("gateway" if arg == "gateway.server" else "hello", listener)
    if argv and os.path.basename(argv[0]) == "scepserver" and "ca" not in argv[1:2]:
        return ("micromdm", "")
    return None


class RssSampler(threading.Thread):
    """Polls the descendants of `root` in /proc; keeps the peak memory of every server process."""

    def __init__(self, root: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.root = root
        self.phase = "start"
        self.peaks: dict[tuple[int, str], Peak] = {}  # (pid, start time) -> peak
        self._stopping = threading.Event()
        self._argv: dict[tuple[int, str], list[str]] = {}

    def run(self) -> None:
        while not self._stopping.wait(SAMPLE_SECONDS):
            self.sample()

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)
        self.sample()

    def _processes(self) -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, start time) of every process (no /proc/PID/task/TID/children here)."""
        table = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = _read(f"/proc/{entry}/stat").rsplit(")", 1)[1].split()
                table[int(entry)] = (int(fields[1]), fields[19])
        return table

    def _argv_of(self, key: tuple[int, str]) -> list[str]:
        if key not in self._argv:
            try:
                self._argv[key] = _read(f"/proc/{key[0]}/cmdline").split("\0")[:-1]
            except OSError:
                return []
        return self._argv[key]

    def sample(self) -> None:
        table = self._processes()
        children: dict[int, list[int]] = {}
        for pid, (parent, _start) in table.items():
            children.setdefault(parent, []).append(pid)
        pending, mine = list(children.get(self.root, [])), []
        while pending:
            pid = pending.pop()
            mine.append(pid)
            pending.extend(children.get(pid, []))
        for pid in mine:
            key = (pid, table[pid][1])
            server = _server_of(self._argv_of(key))
            if server is None:
                continue
            parent = table[pid][0]
            parent_server = _server_of(self._argv_of((parent, table[parent][1]))) if parent in table else None
            role = "process" if server[0] == "micromdm" else "worker" if parent_server == server else "arbiter"
            try:
                status = _read(f"/proc/{pid}/status")
            except OSError:
                continue
            memory = {}
            for line in status.splitlines():
                name, _colon, value = line.partition(":")
                if name in ("VmHWM", "VmRSS"):
                    memory[name] = int(value.split()[0])
            peak = self.peaks.setdefault(key, Peak(self.phase, server[0], server[1], role, pid))
            peak.hwm_kib = max(peak.hwm_kib, memory.get("VmHWM", 0))
            peak.rss_kib = max(peak.rss_kib, memory.get("VmRSS", 0))


def _machine_cpu() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine since boot, steal seconds) from /proc/stat."""
    fields = [int(value) for value in _read("/proc/stat").splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def _own_cpu() -> float:
    """CPU seconds of this process and of every descendant reaped so far."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@contextlib.contextmanager
def cpu_meter(load: dict[str, dict[str, float]], phase: str) -> Iterator[None]:
    """Record, for `phase`, the wall time and the CPUs used on average by other processes (and steal)."""
    wall0, (busy0, steal0), own0 = time.monotonic(), _machine_cpu(), _own_cpu()
    try:
        yield
    finally:
        wall = time.monotonic() - wall0
        busy1, steal1 = _machine_cpu()
        own = _own_cpu() - own0
        load[phase] = {
            "seconds": wall,
            "own_cpus": own / wall if wall else 0.0,
            "other_cpus": max(0.0, (busy1 - busy0 - own) / wall) if wall else 0.0,
            "steal_cpus": (steal1 - steal0) / wall if wall else 0.0,
        }


def machine_facts() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kib = next(
        int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")
    )
    revision = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "host": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl_ssl": ssl.OPENSSL_VERSION,
        "openssl_cryptography": openssl_backend.openssl_version_text(),
        "cryptography": importlib.metadata.version("cryptography"),
        "gunicorn": importlib.metadata.version("gunicorn"),
        "flask": importlib.metadata.version("flask"),
        "revision": revision,
        "loadavg_start": _read("/proc/loadavg").split()[:3],
    }


# -- the parts ------------------------------------------------------------------------------------


def run_part(command: list[str], log: Path, timeout: float | None = None) -> int:
    """Run a part (stdout to `log`, stderr through); on our own exit, SIGTERM it so it tears down."""
    print(f"# run: {' '.join(command)}", file=sys.stderr)
    with log.open("wb") as out:
        child = subprocess.Popen(command, cwd=REPO, env=scep_bench.child_env(), stdout=out)
    try:
        return child.wait(timeout)
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):  # Ctrl-C reached the child too: let it tear down alone
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise


def part_failed(name: str, code: int, log: Path) -> str:
    tail = log.read_text(errors="replace").splitlines()[-20:]
    print(f"# run: {name} failed with status {code}; its output ends:", *tail, sep="\n", file=sys.stderr)
    return f"{name} failed (exit status {code})"


def wait_ready(port: int, tls: ssl.SSLContext | None, servers: list[subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + scep_bench.READY_SECONDS
    while time.monotonic() < deadline:
        if any(server.poll() is not None for server in servers):
            raise SystemExit(f"hello world exited at start-up:\n{log.read_text(errors='replace')}")
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=tls)
            if tls
            else http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        )
        with contextlib.suppress(OSError, http.client.HTTPException):
            try:
                conn.request("GET", "/")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.2)
    raise SystemExit(f"hello world not ready within {scep_bench.READY_SECONDS:g} s:\n{log.read_text(errors='replace')}")


def run_hello(args: argparse.Namespace, tmp: Path, requests: int) -> list[dict[str, Any]]:
    """Serve the hello world (both listeners, as serve does) and load it from a client process."""
    data_dir = tmp / "hello"
    init = [str(PYTHON), "-m", "gateway", "init", "--data-dir", str(data_dir), "--ca-key-type", "rsa2048"]
    scep_bench.run_checked(init, cwd=REPO, env=scep_bench.child_env())
    http_port, https_port = scep_bench.free_ports(2)
    overrides = {
        "listen.http": f"127.0.0.1:{http_port}",
        "listen.https": f"127.0.0.1:{https_port}",
        "listen.workers": args.workers or None,
    }
    clean = scep_bench.child_env()  # no GATEWAY_* of ours: the same defaults as the benches' serve
    env = child_environment(load_config(data_dir, environ=clean, overrides=overrides), clean)
    log = tmp / "hello-serve.log"
    servers: list[subprocess.Popen[bytes]] = []
    try:
        with log.open("wb") as out:
            for listener in ("http", "https"):
                servers.append(
                    subprocess.Popen(
                        [str(PYTHON), str(BENCH / "hello_world.py"), listener],
                        cwd=REPO,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        wait_ready(http_port, None, servers, log)
        wait_ready(https_port, ssl.create_default_context(cafile=str(data_dir / "ca.pem")), servers, log)
        out_file = tmp / "hello.json"
        client = [str(PYTHON), str(Path(__file__).resolve()), "--hello-client", "--out", str(out_file)]
        client += ["--http-port", str(http_port), "--https-port", str(https_port)]
        client += ["--cafile", str(data_dir / "ca.pem"), "--requests", str(requests), "--concurrency", args.concurrency]
        client += ["--max-seconds", str(args.max_seconds or HELLO_MAX_SECONDS)]
        code = run_part(client, tmp / "hello-client.log")
        if code != 0:
            raise SystemExit(part_failed("the hello-world client", code, tmp / "hello-client.log"))
        rows: list[dict[str, Any]] = json.loads(out_file.read_text())
        return rows
    finally:
        for server in servers:
            scep_bench.stop(server)


def run_migration(args: argparse.Namespace, tmp: Path) -> tuple[Any, str, dict[str, int]]:
    """(bench/migration's JSON or None, a note when there are no figures, the sizes asked for)."""
    if args.skip_migration:
        return None, SKIPPED, {}
    if not (MIGRATION.is_file() and os.access(MIGRATION, os.X_OK)):
        return None, NOT_FOUND, {}
    out_file = tmp / "migration.json"
    command = [str(MIGRATION), "--json", str(out_file)]
    options = _help_text(MIGRATION)
    sizes = dict(QUICK_MIGRATION if args.quick else FULL_MIGRATION)
    for name in list(sizes):
        if f"--{name}" in options:
            command += [f"--{name}", str(sizes[name])]
        else:
            del sizes[name]  # its own default, whatever that is
    if args.quick and "--quick" in options:
        command.append("--quick")
    try:
        code = run_part(command, tmp / "migration.log", MIGRATION_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"bench/migration did not finish within {MIGRATION_TIMEOUT:g} s", sizes
    if code != 0:
        return None, part_failed("bench/migration", code, tmp / "migration.log"), sizes
    if not out_file.exists():
        return None, "bench/migration wrote no JSON", sizes
    return json.loads(out_file.read_text()), "", sizes


def _help_text(command: Path) -> str:
    done = subprocess.run([str(command), "--help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


# -- the table ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    part: str
    variant: str
    conc: str = ""
    requests: str = ""
    value: str = ""
    p50: str = ""
    p99: str = ""
    failed: str = ""
    versus: str = ""
    ceiling: str = ""


COLUMNS = [
    ("part", "part", "<"),
    ("variant", "variant", "<"),
    ("conc", "conc", ">"),
    ("requests", "requests", ">"),
    ("value", "result", ">"),
    ("p50", "p50 ms", ">"),
    ("p99", "p99 ms", ">"),
    ("failed", "failed", ">"),
    ("versus", "vs micromdm", ">"),
    ("ceiling", "% of ceiling", ">"),
]


def render(rows: list[Row]) -> str:
    cells = [[getattr(row, name) for name, _title, _align in COLUMNS] for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, (_n, title, _a) in enumerate(COLUMNS)]

    def line(values: list[str]) -> str:
        padded = [
            value.ljust(width) if align == "<" else value.rjust(width)
            for value, width, (_n, _t, align) in zip(values, widths, COLUMNS, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":" if a == ">" else "-" * (w + 2)) for w, (_n, _t, a) in zip(widths, COLUMNS, strict=True)
        )
        + "|"
    )
    return "\n".join([line([title for _n, title, _a in COLUMNS]), rule, *(line(c) for c in cells)])


def _rate(value: float) -> str:
    return f"{value:,.1f}/s" if value < 1000 else f"{value:,.0f}/s"


def _share(value: float, ceiling: dict[str, Any] | None) -> str:
    if not ceiling or not ceiling["requests_per_s"]:
        return ""
    return f"{100 * value / ceiling['requests_per_s']:.1f} %"


def _index(rows: list[dict[str, Any]], key: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(row[key], row["concurrency"]): row for row in rows}


def request_rows(result: dict[str, Any]) -> list[Row]:
    hello = _index(result["hello"] or [], "mode")
    scep = _index(result["scep"] or [], "server")
    rows = []
    for (server, level), row in sorted(scep.items(), key=lambda item: (item[0][0] != "gateway", item[0])):
        other = scep.get(("micromdm", level))
        versus = ""
        if server == "gateway" and other and other["enrollments_per_s"]:
            versus = f"{row['enrollments_per_s'] / other['enrollments_per_s']:.2f}x"
        rows.append(
            Row(
                "SCEP PKIOperation (PKCSReq)",
                "gateway, HTTP keep-alive" if server == "gateway" else "micromdm scepserver, HTTP keep-alive",
                str(level),
                str(row["requests"]),
                _rate(row["enrollments_per_s"]),
                f"{row['p50_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                str(row["failed"]),
                versus,
                _share(row["enrollments_per_s"], hello.get(("http-keep-alive", level))),
            )
        )
    for (mode, level), row in sorted(_index(result["est"] or [], "mode").items()):
        rows.append(
            Row(
                "EST simpleenroll",
                f"gateway, {EST_MODE_TEXT.get(mode, mode)}",
                str(level),
                str(row["requests"]),
                _rate(row["enrollments_per_s"]),
                f"{row['p50_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                str(row["failed"]),
                "",
                _share(row["enrollments_per_s"], hello.get((EST_CEILING.get(mode, ""), level))),
            )
        )
    for mode in HELLO_MODES:
        for (row_mode, level), row in sorted(hello.items()):
            if row_mode == mode:
                rows.append(
                    Row(
                        "ceiling: hello world",
                        HELLO_MODE_TEXT[mode],
                        str(level),
                        str(row["requests"]),
                        _rate(row["requests_per_s"]),
                        f"{row['p50_ms']:.2f}",
                        f"{row['p99_ms']:.2f}",
                        str(row["failed"]),
                        "",
                        "100 %",
                    )
                )
    return rows


def rss_rows(peaks: list[Peak]) -> list[Row]:
    wanted = [
        ("scep", "gateway", "http", "worker", "gateway HTTP listener (SCEP part)"),
        ("est", "gateway", "https", "worker", "gateway HTTPS listener (EST part)"),
        ("hello", "hello", "http", "worker", "hello world HTTP listener (same imports as serve)"),
        ("hello", "hello", "https", "worker", "hello world HTTPS listener (same imports as serve)"),
        ("scep", "micromdm", "", "process", "micromdm scepserver (one process)"),
    ]
    rows = []
    for phase, server, listener, role, text in wanted:
        found = [p for p in peaks if (p.phase, p.server, p.listener, p.role) == (phase, server, listener, role)]
        if not found:
            continue
        top = max(found, key=lambda p: p.hwm_kib)
        count = f"max of {len(found)} workers" if role == "worker" else ""
        variant = f"{text}, {count}" if count else text
        rows.append(Row("peak RSS per worker", variant, value=f"{top.hwm_kib / 1024:.1f} MiB"))
    return rows


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(f"{prefix}.{key}" if prefix else str(key), item)
    else:
        yield prefix, value


def _records(figures: Any) -> list[Any]:
    """A list as it is; {"rows"|"results": [...]} its list; {name: {...}, ...} one record per name."""
    if isinstance(figures, list):
        return figures
    if isinstance(figures, dict):
        for key in ("rows", "results"):
            if isinstance(figures.get(key), list):
                return list(figures[key])
        if figures and all(isinstance(value, dict) for value in figures.values()):
            return [{"name": str(name), **value} for name, value in figures.items()]
    return [figures]


def _number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def generic_rows(figures: Any) -> list[Row]:
    """Figures in a shape this script does not know: one row per number, named by its labels and key."""
    rows = []
    for record in _records(figures):
        if not isinstance(record, dict):
            rows.append(Row("migration", "result", value=str(record)))
            continue
        labels = ", ".join(str(v) for v in record.values() if isinstance(v, str))
        for key, value in _flat("", record):
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append(Row("migration", f"{labels}: {key}" if labels else key, value=_number(value)))
    return rows


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def migration_rows(migration: dict[str, Any]) -> list[Row]:
    """bench/migration's figures: per backend the import (first run, second run) and the report build."""
    figures, sizes = migration["figures"], migration["sizes"]
    if figures is None:
        return [Row("migration", migration["note"])]
    if not isinstance(figures, dict) or not any(str(k).startswith(("import_", "report_")) for k in figures):
        return generic_rows(figures)
    rows = []
    for backend, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        imported = figures.get(f"import_{backend}")
        report = figures.get(f"report_{backend}")
        if isinstance(imported, dict) and (first := _seconds(imported.get("first_run_s"))) is not None:
            count = int(imported.get("certificates") or sizes.get("certificates", 0))
            rate = f" ({count / first:,.0f}/s)" if first and count else ""
            rows.append(
                Row(
                    "migration",
                    f"{name}: import of {count:,} certificates (micromdm depot)",
                    value=f"{first:.1f} s{rate}",
                )
            )
            if (second := _seconds(imported.get("second_run_s"))) is not None:
                rows.append(Row("migration", f"{name}: the same import again (adds nothing)", value=f"{second:.1f} s"))
        if isinstance(report, dict):
            over = f" over {sizes['devices']:,} devices" if sizes.get("devices") else ""
            builds = sorted(
                v for k, v in report.items() if str(k).startswith("report (1,000 per list)") and _seconds(v) is not None
            )
            if builds:
                median = builds[len(builds) // 2]
                text = f"{name}: migration report{over} (1,000 per list, median of {len(builds)} builds)"
                rows.append(Row("migration", text, value=f"{median:.2f} s"))
            if (full := _seconds(report.get("report (every device listed)"))) is not None:
                rows.append(
                    Row("migration", f"{name}: migration report{over}, every device listed", value=f"{full:.2f} s")
                )
        if not isinstance(imported, dict) and not isinstance(report, dict):
            rows.append(Row("migration", f"{name}: not measured (see bench/migration's output)"))
    return rows


def load_rows(load: dict[str, dict[str, float]], nproc: int) -> list[Row]:
    names = {
        "idle before the start": "CPUs busy in the second before the start",
        "hello": "CPUs used by other processes during the hello-world part",
        "scep": "CPUs used by other processes during the SCEP part",
        "est": "CPUs used by other processes during the EST part",
        "migration": "CPUs used by other processes during the migration part (PostgreSQL counts as other)",
    }
    return [
        Row("machine", names.get(phase, phase), value=f"{figures['other_cpus']:.2f} of {nproc}")
        for phase, figures in load.items()
    ]


def _migration_sizes(migration: dict[str, Any] | None) -> str:
    sizes = (migration or {}).get("sizes") or {}
    if not sizes:
        return ""
    asked = ", ".join(f"{value:,} {name}" for name, value in sizes.items())
    reduced = " (reduced by --quick; issue 6's sizes are 100,000 and 1,000,000)" if sizes != FULL_MIGRATION else ""
    return f" bench/migration: {asked}{reduced}."


def markdown(result: dict[str, Any], rows: list[Row]) -> str:
    m = result["machine"]
    s = result["settings"]
    loads = result["load"]
    heaviest = max((f["other_cpus"] for f in loads.values()), default=0.0)
    lines = [
        f"### bench/run, {result['date']}{' (--quick)' if s['quick'] else ''}",
        "",
        f"Machine: {m['nproc']} CPUs (nproc), {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"Python {m['python']}, {m['openssl_ssl']} (ssl: TLS), {m['openssl_cryptography']} "
        f"(cryptography {m['cryptography']}: signatures, envelopes), gunicorn {m['gunicorn']}, Flask {m['flask']}; "
        f"revision {m['revision']}. Load average at the start {' / '.join(m['loadavg_start'])}; other processes "
        f"used up to {heaviest:.2f} of {m['nproc']} CPUs during a part (rows `machine`).",
        "",
        f"Servers: gateway serve and the hello world with the same gunicorn settings ({s['workers']} gthread "
        f"workers x {s['threads']} threads per listener, keepalive 15 s, SSLContext cached per worker), SQLite, "
        f"RSA-2048 CA. Requests per level: SCEP {s['requests']['scep']} per server, EST {s['requests']['est']} per "
        f"mode, hello world {s['requests']['hello']} per mode; all built before the timed section. result = "
        "verified enrollments (hello world: correct echoes) per second of wall time; % of ceiling = that figure "
        "over the hello world's at the same concurrency with the same load generator and transport."
        + _migration_sizes(result["migration"]),
        "",
        render(rows),
    ]
    notes = []
    for part, key in (("scep", "server"), ("est", "mode")):
        for row in result[part] or []:
            if row.get("failure_reasons"):
                reasons = "; ".join(f"{n} x {reason.strip()}" for reason, n in row["failure_reasons"])
                notes.append(f"- {part.upper()} {row[key]} c={row['concurrency']} failures: {reasons}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _part(
    load: dict[str, dict[str, float]], sampler: RssSampler, phase: str
) -> contextlib.AbstractContextManager[None]:
    sampler.phase = phase
    return cpu_meter(load, phase)


def bench_commands(args: argparse.Namespace, requests: dict[str, int], tmp: Path) -> dict[str, list[str]]:
    """The command lines of bench/scep_bench.py and bench/est_bench.py for this run."""
    bound = ["--max-seconds", str(args.max_seconds)] if args.max_seconds else []
    scep = [str(PYTHON), str(BENCH / "scep_bench.py"), "--requests", str(requests["scep"])]
    scep += ["--json", str(tmp / "scep.json"), "--levels", args.concurrency, *bound]
    scep += ["--gateway-workers", str(args.workers)] if args.workers else []
    scep += ["--skip-micromdm"] if args.skip_micromdm else []
    est = [str(PYTHON), str(BENCH / "est_bench.py"), "--requests", str(requests["est"])]
    est += ["--json", str(tmp / "est.json"), "--concurrency", args.concurrency, *bound]
    est += ["--workers", str(args.workers)] if args.workers else []
    return {"scep": scep, "est": est}


def run_parts(args: argparse.Namespace, result: dict[str, Any], tmp: Path, sampler: RssSampler) -> None:
    """Hello world, SCEP, EST and migration, one after the other, into `result`."""
    load: dict[str, dict[str, float]] = result["load"]
    requests = result["settings"]["requests"]
    with _part(load, sampler, "hello"):
        result["hello"] = run_hello(args, tmp, requests["hello"])
    for part, command in bench_commands(args, requests, tmp).items():
        with _part(load, sampler, part):
            code = run_part(command, tmp / f"{part}.log")
        if code == 0:
            result[part] = json.loads((tmp / f"{part}.json").read_text())
        else:
            result["notes"].append(part_failed(Path(command[1]).name, code, tmp / f"{part}.log"))
    with _part(load, sampler, "migration"):
        figures, note, sizes = run_migration(args, tmp)
    if note in (SKIPPED, NOT_FOUND):
        del load["migration"]  # nothing of ours ran
    result["migration"] = {"figures": figures, "note": note, "sizes": sizes}


def main_run(args: argparse.Namespace) -> None:
    if not args.skip_micromdm:
        if os.geteuid() != 0:
            raise SystemExit("bench/run needs root (ip netns for micromdm's scepserver); or --skip-micromdm")
        scep_bench.check_micromdm_prerequisites()  # scepserver and ip, before anything starts
    signal.signal(signal.SIGTERM, _raise_exit)
    requests = dict(QUICK_REQUESTS if args.quick else FULL_REQUESTS)
    if args.requests:
        requests = dict.fromkeys(requests, args.requests)
    defaults = load_config(REPO / "nonexistent-data-dir", environ={})  # serve's settings when none are given
    result: dict[str, Any] = {
        "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "machine": machine_facts(),
        "settings": {
            "quick": args.quick,
            "requests": requests,
            "concurrency": args.concurrency,
            "workers": args.workers or defaults["listen.workers"],
            "threads": defaults["listen.threads"],
        },
        "load": {},
        "hello": None,
        "scep": None,
        "est": None,
        "migration": None,
        "notes": [],
    }
    with cpu_meter(result["load"], "idle before the start"):
        time.sleep(1.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    sampler = RssSampler(os.getpid())
    sampler.start()
    started = time.monotonic()
    try:
        run_parts(args, result, tmp, sampler)
    finally:
        try:
            sampler.stop()
        finally:
            if args.keep:
                print(f"# kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = time.monotonic() - started
    result["rss"] = [dataclasses.asdict(p) for p in sampler.peaks.values()]
    result["machine"]["loadavg_end"] = _read("/proc/loadavg").split()[:3]
    rows = request_rows(result) + rss_rows(list(sampler.peaks.values()))
    rows += migration_rows(result["migration"])
    rows += load_rows(result["load"], result["machine"]["nproc"])
    table = markdown(result, rows)
    result["markdown"] = table
    print(table)
    for note in result["notes"]:
        print(f"\n**{note}**")
    print(f"\n# bench/run took {result['seconds']:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog=(__doc__ or "")[(__doc__ or "").find("Usage") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run: SCEP 200, EST 100, hello world 1,000 per level; migration 10,000 certs, 100,000 devices",
    )
    parser.add_argument("--requests", type=int, default=0, help="requests per level for every part (overrides)")
    parser.add_argument("--concurrency", default=DEFAULT_LEVELS, help="concurrency levels, comma-separated")
    parser.add_argument("--max-seconds", type=float, default=0.0, help="time bound per level (default: each bench's)")
    parser.add_argument("--workers", type=int, default=0, help="gunicorn workers per listener (default: serve's)")
    parser.add_argument("--json", help="also write the whole result (every figure, raw rows) as JSON to this file")
    parser.add_argument("--skip-migration", action="store_true", help="do not run bench/migration")
    parser.add_argument("--skip-micromdm", action="store_true", help="gateway only: no micromdm, no namespace")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    parser.add_argument("--hello-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--https-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hello_client:
        args.levels = args.concurrency
        args.max_seconds = args.max_seconds or HELLO_MAX_SECONDS
        hello_client(args)
    else:
        main_run(args)


if __name__ == "__main__":
    main()
