"""Run fuzz targets against one FuzzGateway: counts, throughput, crashes saved one per signature.

Shared by bench/fuzz (millions of inputs, plain `random.Random`) and tests/test_fuzz.py (hypothesis
drives the same targets through its own Random, so what it finds shrinks).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import random
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from tests.fuzzing.est_target import EstTarget
from tests.fuzzing.gateway_env import FuzzCase, FuzzGateway, Outcome
from tests.fuzzing.ocsp_admin_targets import AdminTarget, OcspTarget
from tests.fuzzing.scep_target import ScepTarget


class Target(Protocol):
    """Something that makes request cases for one surface of the gateway."""

    name: str

    def generate(self, rng: random.Random) -> FuzzCase:
        """The next request case, drawn from `rng`."""
        ...


TARGETS: dict[str, Callable[[FuzzGateway], Target]] = {
    "scep": ScepTarget,
    "est": EstTarget,
    "ocsp": OcspTarget,
    "admin": AdminTarget,
}


@dataclasses.dataclass
class TargetStats:
    """What one target's inputs did."""

    inputs: int = 0
    seconds: float = 0.0
    crashes: int = 0
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    signatures: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    @property
    def rate(self) -> float:
        """Inputs per second of the time spent on this target (making and sending)."""
        return self.inputs / self.seconds if self.seconds else 0.0


def make_case(target: Target, rng: random.Random) -> FuzzCase:
    """The target's next case; the warnings cryptography gives while forging it are expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return target.generate(rng)


def crash_record(case: FuzzCase, outcome: Outcome) -> dict[str, object]:
    """A crasher as saved: the request, the traceback and its one-line signature."""
    return {
        "case": case.to_json(),
        "status": outcome.status,
        "signature": outcome.signature,
        "traceback": outcome.crash,
    }


def save_crash(directory: Path, case: FuzzCase, outcome: Outcome) -> Path:
    """Write a crasher as `<target>-<hash of its signature>.json` (one file per distinct crash)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(outcome.signature.encode()).hexdigest()[:12]
    path = directory / f"{case.target}-{name}.json"
    path.write_text(json.dumps(crash_record(case, outcome), indent=1) + "\n", encoding="utf-8")
    return path


def run_targets(
    env: FuzzGateway,
    targets: Mapping[str, Target],
    inputs: int,
    seed: int,
    *,
    crash_dir: Path | None = None,
    report: Callable[[Mapping[str, TargetStats]], None] | None = None,
    report_every: float = 30.0,
) -> dict[str, TargetStats]:
    """Run `inputs` inputs in total, the targets taking turns, each with its own seeded Random."""
    stats = {name: TargetStats() for name in targets}
    rngs = {name: random.Random(f"{seed}:{name}") for name in targets}
    names = list(targets)
    last_report = time.monotonic()
    for index in range(inputs):
        name = names[index % len(names)]
        started = time.perf_counter()
        case = make_case(targets[name], rngs[name])
        outcome = env.run(case)
        entry = stats[name]
        entry.seconds += time.perf_counter() - started
        entry.inputs += 1
        entry.statuses[outcome.status] += 1
        if outcome.crash is not None:
            entry.crashes += 1
            if outcome.signature not in entry.signatures and crash_dir is not None:
                save_crash(crash_dir, case, outcome)
            entry.signatures[outcome.signature] += 1
        if report is not None and time.monotonic() - last_report >= report_every:
            report(stats)
            last_report = time.monotonic()
    return stats
