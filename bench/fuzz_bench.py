"""Long fuzz runs of the gateway (issue 11, part 5): inputs/s and unhandled exceptions per target.

Run it through `bench/fuzz`. What one run does:

1. Makes, in a temporary directory, a fuzz data directory (tests/fuzzing/gateway_env.py: `gateway
   init` with the vectors' test CA imported and the vectors' SCEP RA, fuzz profiles, an EST user, an
   admin token, certificates issued for renewals, client-certificate EST and OCSP) and the real
   Flask app over it, driven through `app.test_client()` in this process.
2. Runs `--inputs` inputs in total, the chosen targets taking turns (scep, est, ocsp, admin; see
   tests/fuzzing/*_target*.py for how each makes and mutates its inputs), each target with its own
   Random seeded from `--seed`, so a run is reproducible.
3. Every answer that is a 5xx other than 503, or an exception escaping the app, is an unhandled
   exception: counted, and the first input of each distinct crash (its last project frame and
   exception type) saved as JSON with its traceback under the crash directory printed at the start.
4. Prints progress every --report-every seconds and, at the end, one table: target, inputs run,
   inputs/s, unhandled exceptions, distinct crashes, and the HTTP statuses seen.

Usage (from anywhere):

    bench/fuzz                                   # 100,000 inputs over all targets, seed 1
    bench/fuzz --inputs 1000000 --target all --seed 7
    bench/fuzz --target scep --inputs 20000 --crash-dir /tmp/crashes
    bench/fuzz --json result.json                # also write the figures as JSON

A saved crasher replays with `tests/test_fuzz_corpus.py` once copied to tests/vectors/fuzz/ (with a
README line saying what it was). Exit status: 0 when no input crashed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests.fuzzing package

from tests.fuzzing.gateway_env import FuzzGateway
from tests.fuzzing.runner import TARGETS, TargetStats, run_targets


def _table(stats: Mapping[str, TargetStats], wall: float) -> str:
    rows = ["| target | inputs | inputs/s | unhandled | distinct crashes | statuses |", "|---|---:|---:|---:|---:|---|"]
    for name, entry in stats.items():
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(entry.statuses.items()))
        figures = f"{entry.inputs:,} | {entry.rate:,.0f} | {entry.crashes:,} | {len(entry.signatures)}"
        rows.append(f"| {name} | {figures} | {statuses} |")
    total = sum(entry.inputs for entry in stats.values())
    crashes = sum(entry.crashes for entry in stats.values())
    rows.append(
        f"| all | {total:,} | {total / wall if wall else 0:,.0f} | {crashes:,} | "
        f"{sum(len(e.signatures) for e in stats.values())} | wall {wall:,.0f} s |"
    )
    return "\n".join(rows)


def _progress(started: float) -> object:
    def report(stats: Mapping[str, TargetStats]) -> None:
        """Print one progress line."""
        done = sum(entry.inputs for entry in stats.values())
        crashes = sum(entry.crashes for entry in stats.values())
        wall = time.monotonic() - started
        parts = " ".join(f"{name}={entry.inputs:,}/{entry.crashes}" for name, entry in stats.items())
        print(f"[{wall:8.0f} s] {done:,} inputs ({done / wall:,.0f}/s), {crashes} unhandled: {parts}", flush=True)

    return report


def main() -> int:
    """Run bench/fuzz; exit status 1 when any input crashed the gateway."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs in total, the targets taking turns")
    parser.add_argument("--target", default="all", choices=[*TARGETS, "all"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--crash-dir", type=Path, help="where crashers go (default: a new directory under /tmp)")
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds between progress lines")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()

    warnings.simplefilter("ignore")  # cryptography warns about the malformed input it is fed: expected
    # Refusals log at WARNING (dropped here); the app's "unexpected error" record is read by the harness.
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.ERROR)
    crash_dir = args.crash_dir or Path(tempfile.mkdtemp(prefix="gateway-fuzz-crashes-"))
    names = list(TARGETS) if args.target == "all" else [args.target]
    print(
        f"bench/fuzz {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z on {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}: {args.inputs:,} inputs over {', '.join(names)}, seed {args.seed}"
    )
    print(f"crashers are saved under {crash_dir}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gateway-fuzz-") as scratch:
        env = FuzzGateway(Path(scratch) / "data")
        try:
            targets = {name: TARGETS[name](env) for name in names}
            started = time.monotonic()
            stats = run_targets(
                env,
                targets,
                args.inputs,
                args.seed,
                crash_dir=crash_dir,
                report=_progress(started),  # type: ignore[arg-type]
                report_every=args.report_every,
            )
            wall = time.monotonic() - started
        finally:
            env.close()
    print(_table(stats, wall))
    for name, entry in stats.items():
        for signature, count in entry.signatures.most_common():
            print(f"{name}: {count:,} x {signature}")
    if args.json is not None:
        figures = {
            name: {
                "inputs": e.inputs,
                "inputs_per_second": e.rate,
                "unhandled": e.crashes,
                "crashes": dict(e.signatures),
                "statuses": {str(k): v for k, v in e.statuses.items()},
            }
            for name, e in stats.items()
        }
        args.json.write_text(json.dumps({"seed": args.seed, "wall_seconds": wall, "targets": figures}, indent=1))
    return 1 if any(entry.crashes for entry in stats.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
