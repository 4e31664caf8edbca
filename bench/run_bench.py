"""bench/run: issue 6's figures in one command and one table (SCEP, EST, HTTP ceiling, RSS, migration).

Run it through `bench/run` (as root: micromdm's scepserver runs in a loopback-only network
namespace, as in bench/scep). Everything is set up and torn down by the run itself, in a
temporary directory: its own data directories, its own servers on free loopback ports, its own
namespace. The parts, one after the other:

1. **Ceiling**: `bench/hello_world.py` (a Flask app that answers `GET /` with `ok` and echoes a
   POST body) served by gunicorn with `gateway serve`'s own settings (it subclasses the gateway's
   `ListenerApplication`: its gevent worker, listen.workers = 2 per listener, keepalive 15 s,
   the gateway's SSLContext built once before the fork). Loaded, from a
   separate client process, with the two benches' own load generators and bodies of the same size
   as theirs (one real PKCSReq, one real base64 CSR, echoed back): plain HTTP keep-alive with
   bench/scep_bench.py's thread-per-connection `send_all`; HTTPS keep-alive and HTTPS with a new
   TLS connection per request with bench/est_bench.py's process-per-client `run_level`.
2. **SCEP**: `bench/scep_bench.py --json` (gateway and micromdm side by side in the same run).
3. **EST**: `bench/est_bench.py --json` (simpleenroll, kept-alive and new TLS connection per request).
With `--baseline REV` (a commit, tag or branch), parts 2 and 3 also run the gateway at REV, checked out
into a temporary git worktree that uses this .venv, right after this revision's part in every run
(gateway only for SCEP: micromdm is measured once); a second table shows both and the ratio
after/before per cell. That is how a change is shown not to cost throughput: e.g.
`bench/run --baseline b97f298 --runs 3` (the last revision on gthread workers).

4. **Migration**: `bench/migration --json FILE` when that file exists and is executable (import of
   100,000 certificates, report over 1,000,000 devices, SQLite and PostgreSQL); otherwise a row
   saying it was not found. Its figures are printed as it reports them.

With `--runs N` parts 1-3 run N times, in turn (hello world, SCEP, EST, then again, so that every run
sees similar conditions), and bench/migration once; the table shows per cell the median of the
runs with its range (see bench/run_table.py, which turns the result into the table).

Load always comes from requests built before the timed section, so the client's own crypto does
not count. During the whole run a sampler thread walks this process's descendants in /proc every
0.5 s and keeps each gunicorn worker's VmHWM (peak resident set, which counts pages still shared
with the arbiter) and micromdm's; the table shows the largest worker per listener. It also
measures how busy the machine was with other processes (CPU time of the machine from /proc/stat
minus this run's own, self and reaped descendants), per part, so a table measured on a loaded
machine says so.

The result is one markdown table with a heading (date, machine: nproc, CPU model, Python, OpenSSL
of the ssl module and of cryptography), ready to paste into docs/performance.md; `--json FILE`
writes every figure as JSON: every run's raw rows (`runs`) and the medians (`medians`).

Usage (as root, from anywhere):

    bench/run                   # full run: SCEP 1,500, EST 500, hello world 2,000 requests per level
    bench/run --quick           # SCEP 200, EST 100, hello world 1,000 per level, bench/migration with
                                # 10,000 certificates and 100,000 devices: about 2 minutes
    bench/run --requests N      # N requests per level for every part
    bench/run --runs N          # hello world, SCEP and EST N times each: medians (range) of the runs
    bench/run --json FILE       # also write the whole result as JSON
    bench/run --skip-migration  # do not run bench/migration
    bench/run --skip-micromdm   # gateway only (no network namespace; root not needed)
    bench/run --baseline REV    # also the gateway at REV (git worktree), before/after table
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
from run_table import FULL_MIGRATION, HELLO_MODES, highest_load, markdown, medians, partial_notes

from gateway.config import load_config
from gateway.supervisor import child_environment
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
HELLO_WARM_UP = 32
HELLO_AUTHORIZATION = "Basic " + base64.b64encode(b"bench:" + b"x" * 24).decode("ascii")  # as long as EST's
SAMPLE_SECONDS = 0.5
MIGRATION_TIMEOUT = 3600.0
SKIPPED = "skipped (--skip-migration)"
NOT_FOUND = "bench/migration not found"
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
    run: int = 0  # bench/run's run number (0: bench/migration, which runs once)


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
        self.run_number = 0
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
            peak = self.peaks.setdefault(key, Peak(self.phase, server[0], server[1], role, pid, run=self.run_number))
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


# -- main -----------------------------------------------------------------------------------------


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _part(
    load: dict[str, dict[str, float]], sampler: RssSampler, phase: str
) -> contextlib.AbstractContextManager[None]:
    sampler.phase = phase
    return cpu_meter(load, phase)


def bench_commands(
    args: argparse.Namespace, requests: dict[str, int], tmp: Path, baseline: Path | None
) -> dict[str, list[str]]:
    """The command lines of bench/scep_bench.py and bench/est_bench.py for this run, each followed by the
    baseline's (its own scripts, run from its worktree) when there is one."""
    bound = ["--max-seconds", str(args.max_seconds)] if args.max_seconds else []
    commands: dict[str, list[str]] = {}
    for part, bench in (("scep", BENCH), ("baseline_scep", baseline), ("est", BENCH), ("baseline_est", baseline)):
        if bench is None:
            continue
        if part.endswith("scep"):
            command = [str(PYTHON), str(bench / "scep_bench.py"), "--requests", str(requests["scep"])]
            command += ["--json", str(tmp / f"{part}.json"), "--levels", args.concurrency, *bound]
            command += ["--gateway-workers", str(args.workers)] if args.workers else []
            command += ["--skip-micromdm"] if args.skip_micromdm or part.startswith("baseline") else []
            command += ["--softhsm"] if not args.skip_softhsm and not part.startswith("baseline") else []
        else:
            command = [str(PYTHON), str(bench / "est_bench.py"), "--requests", str(requests["est"])]
            command += ["--json", str(tmp / f"{part}.json"), "--concurrency", args.concurrency, *bound]
            command += ["--workers", str(args.workers)] if args.workers else []
        commands[part] = command
    return commands


@contextlib.contextmanager
def baseline_worktree(revision: str | None, tmp: Path) -> Iterator[Path | None]:
    """The repository at `revision` in a temporary git worktree sharing this .venv (None without one)."""
    if not revision:
        yield None
        return
    where = tmp / "baseline"
    done = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), revision],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"--baseline {revision}: {done.stderr.strip()}")
    (where / ".venv").symlink_to(REPO / ".venv")
    try:
        yield where / "bench"
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)], capture_output=True, check=False
        )


def run_once(
    args: argparse.Namespace,
    result: dict[str, Any],
    tmp: Path,
    sampler: RssSampler,
    number: int,
    baseline: Path | None = None,
) -> dict[str, Any]:
    """Run `number`: hello world, SCEP and EST (each followed by the baseline's), each part's rows (None
    when it failed) and CPU load."""
    run: dict[str, Any] = {"hello": None, "scep": None, "est": None, "load": {}}
    sampler.run_number = number
    requests = result["settings"]["requests"]
    with _part(run["load"], sampler, "hello"):
        run["hello"] = run_hello(args, tmp, requests["hello"])
    for part, command in bench_commands(args, requests, tmp, baseline).items():
        with _part(run["load"], sampler, part):
            code = run_part(command, tmp / f"{part}.log")
        if code == 0:
            run[part] = json.loads((tmp / f"{part}.json").read_text())
        else:
            note = part_failed(Path(command[1]).name, code, tmp / f"{part}.log")
            result["notes"].append(f"{note} in run {number} of {args.runs}" if args.runs > 1 else note)
    return run


def run_parts(args: argparse.Namespace, result: dict[str, Any], tmp: Path, sampler: RssSampler) -> None:
    """Hello world, SCEP and EST `args.runs` times (and the baseline's), then migration once, into `result`."""
    with baseline_worktree(args.baseline, tmp) as baseline:
        for number in range(1, args.runs + 1):
            if args.runs > 1:
                print(f"# bench/run: run {number} of {args.runs}", file=sys.stderr)
            run_dir = tmp / f"run-{number}"
            run_dir.mkdir()
            result["runs"].append(run_once(args, result, run_dir, sampler, number, baseline))
    load: dict[str, dict[str, float]] = result["load"]
    load.update(highest_load([run["load"] for run in result["runs"]]))
    result["notes"] += partial_notes(result["runs"])
    sampler.run_number = 0
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
            "worker_kind": "gevent",
            "baseline": _short_revision(args.baseline) if args.baseline else None,
            "runs": args.runs,
        },
        "load": {},
        "runs": [],
        "medians": None,
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
    result["medians"] = medians(result["runs"])
    table = markdown(result)
    result["markdown"] = table
    print(table)
    for note in result["notes"]:
        print(f"\n**{note}**")
    print(f"\n# bench/run took {result['seconds']:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def _short_revision(revision: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", revision], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"--baseline: {revision!r} is not a revision of {REPO}")
    return done.stdout.strip()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
    parser.add_argument(
        "--runs",
        type=_positive,
        default=1,
        help="run the hello world, SCEP and EST N times each (migration once); the table shows medians (range)",
    )
    parser.add_argument("--concurrency", default=DEFAULT_LEVELS, help="concurrency levels, comma-separated")
    parser.add_argument("--max-seconds", type=float, default=0.0, help="time bound per level (default: each bench's)")
    parser.add_argument("--workers", type=int, default=0, help="gunicorn workers per listener (default: serve's)")
    parser.add_argument("--json", help="also write the whole result (every figure, raw rows) as JSON to this file")
    parser.add_argument("--skip-migration", action="store_true", help="do not run bench/migration")
    parser.add_argument(
        "--skip-softhsm", action="store_true", help="no SCEP row for a gateway with its keys in SoftHSM2 (PKCS#11)"
    )
    parser.add_argument("--skip-micromdm", action="store_true", help="gateway only: no micromdm, no namespace")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    parser.add_argument("--baseline", help="also measure the gateway at this git revision: a before/after table")
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
