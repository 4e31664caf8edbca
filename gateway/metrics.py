"""Prometheus metrics of the gateway: what is counted, where the counts of every worker meet, and how a
scrape is written.

`gateway serve` runs two gunicorn arbiters (HTTP and HTTPS), each with its workers, all separate
processes. The supervisor makes a private directory for each run (`create_multiprocess_dir`) and hands
it to both arbiters as PROMETHEUS_MULTIPROC_DIR, so prometheus_client, imported after it is set, keeps
each process's counts in its own memory-mapped files there; a scrape on either listener, answered by
any worker, adds up the files of every process that ever ran in this run: a worker that died or was
restarted keeps its counts (`worker_exited` forgets only its in-flight gauge). The directory goes
when `serve` stops.

Without that variable (the in-process app of tests and tools) each process counts in a registry of
its own, and a scrape shows that process's counts.

What is counted where: requests and their latency by the WSGI layer (gateway.metrics_requests);
certificates issued and revoked, enrollment events, lockouts and database errors where the storage
commits them, and admission decisions where they are made (gateway.metrics_observers); the state of
the node (approval queue, devices, locks, certificate expiry, database up) at scrape time
(gateway.metrics_state). The endpoint is gateway.metrics_endpoint.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

log = logging.getLogger("gateway.metrics")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"  # the label value of anything outside a label's known values
NONE = "none"  # the label value of a request that named no profile

REQUEST_PROTOCOLS = ("scep", "est", "admin", "ocsp", "crl", "other")
CERTIFICATE_PROTOCOLS = ("scep", "est", "cli", "system")
REQUEST_LABELS = ("protocol", "operation", "profile", "outcome")
ADMISSION_DECISIONS = ("admitted", "deferred", "shed", "rate-limited")
# Request latency: a SCEP or EST enrollment takes a few milliseconds to tens of milliseconds; a storm
# or a slow database shows in the upper buckets, well before the 30 s a client gives up after.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_OUTCOME = re.compile(r"[a-z][a-z_-]{0,23}(?::[A-Za-z_-]{1,32})?")


class GatewayMetrics:
    """The counters, histogram and gauge one process updates. In multiprocess mode they belong to no
    registry (a scrape reads every process's files); otherwise to this process's own `registry`."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.registry = CollectorRegistry(auto_describe=True)
        registry = None if directory is not None else self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by protocol, operation, profile and outcome",
            REQUEST_LABELS,
            registry=registry,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "Time from a request reaching the application to the end of its answer",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being answered now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.issued = Counter(
            "gateway_certificates_issued_total",
            "Certificates issued (committed), by profile and the protocol they were requested over",
            ("profile", "protocol"),
            registry=registry,
        )
        self.revoked = Counter(
            "gateway_certificates_revoked_total",
            "Certificates revoked by this node (committed), by profile, issuing protocol and reason",
            ("profile", "protocol", "reason"),
            registry=registry,
        )
        self.admission = Counter(
            "gateway_admission_decisions_total",
            "Admission control decisions: admitted, deferred (answered PENDING or 202), shed (503), rate-limited",
            ("protocol", "decision"),
            registry=registry,
        )
        self.lockouts = Counter(
            "gateway_lockouts_total",
            "SCEP challenge lockout counters that reached their threshold and locked, by kind of counter",
            ("counter",),
            registry=registry,
        )
        self.lockout_refusals = Counter(
            "gateway_lockout_refusals_total",
            "SCEP requests refused because a lockout counter of theirs is locked",
            registry=registry,
        )
        self.database_errors = Counter(
            "gateway_database_errors_total",
            "Failed database statements and connection attempts, by PEP 249 error class",
            ("error",),
            registry=registry,
        )


@functools.cache
def process_metrics() -> GatewayMetrics:
    """This process's metrics, made on first use (after PROMETHEUS_MULTIPROC_DIR is set, if it is).

    Counters have no `_created` series in either mode (multiprocess mode cannot keep them)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    return GatewayMetrics(multiprocess_directory())


def multiprocess_directory() -> Path | None:
    """The directory the processes of this run count in; None when each process counts on its own."""
    setting = os.environ.get(MULTIPROCESS_ENV)
    if not setting:
        return None
    if values.ValueClass is values.MutexValue:  # prometheus_client was imported before the variable was set
        log.error("%s is set but prometheus_client was imported before it: counting in this process only", setting)
        return None
    return Path(setting)


def bounded(value: str | None, known: Collection[str], *, missing: str = NONE) -> str:
    """`value` when it is one of `known`; `missing` when there is none; 'other' otherwise. Labels take
    only values from fixed sets, so a client cannot grow the number of series."""
    if value is None:
        return missing
    return value if value in known else OTHER


def outcome_label(outcome: str) -> str:
    """An enrollment event's outcome ('issued', 'failure:badRequest', 'refused:policy', ...) as a label.
    Outcomes are the code's own words, never a client's; anything else is 'other'."""
    return outcome if _OUTCOME.fullmatch(outcome) else OTHER


# -- the directory of a run ------------------------------------------------------------------------------


def create_multiprocess_dir() -> Path:
    """A new private directory (0700) for one `gateway serve` run, under TMPDIR (a tmpfs is best: the
    workers write to memory-mapped files there)."""
    return Path(tempfile.mkdtemp(prefix="gateway-metrics-"))


def remove_multiprocess_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit: a worker is gone, so its in-flight gauge no longer counts (its counters and
    histograms stay: a scrape keeps adding them up)."""
    directory = multiprocess_directory()
    if directory is not None:
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def forget_dead_processes(directory: Path) -> list[int]:
    """Do what `worker_exited` does for every process whose live gauges are in `directory` and which runs
    no more (the workers of an arbiter that died without reaping them); the pids forgotten."""
    gone = []
    for path in directory.glob("gauge_live*_*.db"):
        pid_text = path.stem.rsplit("_", 1)[-1]
        if pid_text.isdigit() and not _running(int(pid_text)):
            mark_process_dead(int(pid_text), str(directory))  # type: ignore[no-untyped-call]
            gone.append(int(pid_text))
    return gone


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- a scrape ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """The collectors of one scrape: every process's counts (or this process's), then `state`."""

    metrics: GatewayMetrics
    state: Collector

    def collect(self) -> Iterator[Metric]:
        counts: Collector
        if self.metrics.directory is not None:
            counts = MultiProcessCollector(None, path=str(self.metrics.directory))  # type: ignore[no-untyped-call]
        else:
            counts = self.metrics.registry
        yield from counts.collect()
        yield from self.state.collect()


def exposition(scrape: Collector, accept: str) -> tuple[bytes, str]:
    """The scrape in the format the Accept header asks for (OpenMetrics or Prometheus text), and its
    Content-Type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(scrape), content_type
