"""The node's state at scrape time: a Prometheus collector read by the worker that answers the scrape.

- `gateway_database_up`: 1 when the state's database reads below succeeded, 0 when they failed or the
  gateway could not be opened; the scrape is answered either way, with what needs no database.
- `gateway_approvals_pending` and `gateway_approvals_oldest_pending_timestamp_seconds`: the approval
  queue, requests waiting for an administrator (`kind="manual"`) or for a free worker slot
  (`kind="deferred"`, shared_ca.admission).
- `gateway_lockouts_active`: SCEP lockout counters locked now, by kind.
- `gateway_devices`: devices per migration state and group (one GROUP BY, the migration report's).
- `gateway_certificate_expiry_timestamp_seconds`: notAfter of the CA, the SCEP RA, the HTTPS server
  certificate, and of the next CA and RA once `gateway ca rollover` made them; the CA and RA as the
  worker serves them, the others from their files.
- `gateway_info`: the version, as a label.

The database reads are kept `state_seconds` (devices `device_seconds`: that count reads every device
row) per worker, so frequent scrapes, or several Prometheus servers, cost the database little.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cryptography import x509
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from gateway.config import GatewayConfig
from gateway.metrics import bounded
from gateway.runtime import Gateway, GatewayLoader
from shared_ca.authority import utcnow
from shared_ca.errors import CAError
from shared_ca.keys import load_certificates
from shared_ca.storage.monitoring import LOCK_COUNTERS, ActiveLocks, MonitoringQueries, PendingApprovals
from shared_ca.storage.schema import DEVICE_STATES

log = logging.getLogger("gateway.metrics")
STATE_SECONDS = 10.0
DEVICE_SECONDS = 60.0
PACKAGE = "scep-est-gateway"
# role → the setting naming its certificate file (read when the worker has no loaded gateway to ask)
CERTIFICATE_FILES = {
    "ca": "ca.cert",
    "ra": "ra.cert",
    "ra_encryption": "ra.encryption_cert",  # only with separate RA keys
    "tls": "tls.cert",
    "next_ca": "next_ca.cert",
    "next_ra": "next_ra.cert",
}


@dataclass(frozen=True)
class Expiry:
    role: str
    subject: str
    not_after: dt.datetime


@dataclass
class StateReading:
    """One reading of the state: what the database said (None when it did not answer)."""

    database_up: bool
    expiries: list[Expiry]
    approvals: list[PendingApprovals] | None = None
    locks: list[ActiveLocks] | None = None
    taken_at: float = 0.0


@dataclass
class DeviceReading:
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, state) → devices
    taken_at: float = 0.0


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class GatewayState:
    """The collector of a worker's scrape-time state (module docstring)."""

    def __init__(
        self,
        loader: GatewayLoader,
        *,
        state_seconds: float = STATE_SECONDS,
        device_seconds: float = DEVICE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.loader = loader
        self.config: GatewayConfig = loader.config
        self.state_seconds = state_seconds
        self.device_seconds = device_seconds
        self.clock = clock
        self.now = now
        self.version = package_version()
        self._lock = threading.Lock()
        self._state: StateReading | None = None
        self._devices: DeviceReading | None = None

    def collect(self) -> Iterator[Metric]:
        state, devices = self.reading()
        info = GaugeMetricFamily("gateway_info", "The gateway's version", labels=["version"])
        info.add_metric([self.version], 1)
        yield info
        yield GaugeMetricFamily(
            "gateway_database_up",
            "1 when this scrape's database reads succeeded, 0 when the database did not answer",
            value=1 if state.database_up else 0,
        )
        expiry = GaugeMetricFamily(
            "gateway_certificate_expiry_timestamp_seconds",
            "notAfter of the gateway's own certificates (role: ca, ra, tls, next_ca, next_ra, previous_ca), Unix time",
            labels=["role", "subject"],
        )
        for item in state.expiries:
            expiry.add_metric([item.role, item.subject], item.not_after.timestamp())
        yield expiry
        if state.approvals is not None:
            yield from self._approval_families(state.approvals)
        if state.locks is not None:
            locks = GaugeMetricFamily(
                "gateway_lockouts_active", "SCEP lockout counters locked now, by kind of counter", labels=["counter"]
            )
            found = Counter({item.counter: item.keys for item in state.locks})
            for kind in (*LOCK_COUNTERS, *sorted(set(found) - set(LOCK_COUNTERS))):
                locks.add_metric([kind], found[kind])
            yield locks
        if devices is not None:
            family = GaugeMetricFamily(
                "gateway_devices",
                'Devices per migration state and group (group="": in no group)',
                labels=["state", "group"],
            )
            for (group, state_name), count in sorted(devices.counts.items()):
                family.add_metric([state_name, group], count)
            yield family

    def _approval_families(self, approvals: list[PendingApprovals]) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "gateway_approvals_pending",
            "Requests waiting in the approval queue: for an administrator (manual) or a free worker (deferred)",
            labels=["protocol", "profile", "kind"],
        )
        oldest = GaugeMetricFamily(
            "gateway_approvals_oldest_pending_timestamp_seconds",
            "When the oldest request still waiting in the approval queue was received, Unix time",
            labels=["kind"],
        )
        counts: Counter[tuple[str, str, str]] = Counter()
        first: dict[str, dt.datetime] = {}
        for item in approvals:
            kind = "deferred" if item.deferred else "manual"
            counts[(item.protocol, bounded(item.profile, self.config.profiles), kind)] += item.requests
            first[kind] = min(first.get(kind, item.oldest), item.oldest)
        for labels, count in sorted(counts.items()):
            pending.add_metric(list(labels), count)
        for kind, moment in sorted(first.items()):
            oldest.add_metric([kind], moment.timestamp())
        yield pending
        yield oldest

    # -- readings ----------------------------------------------------------------------------------

    def reading(self) -> tuple[StateReading, DeviceReading | None]:
        """The state and device counts, read again when older than their time to live."""
        with self._lock:
            moment = self.clock()
            state = self._state
            if state is None or moment - state.taken_at >= self.state_seconds:
                state = self._state = self._read_state(moment)
            if not state.database_up:
                self._devices = None  # stale counts are not shown while the database is away
                return state, None
            devices = self._devices
            if devices is None or moment - devices.taken_at >= self.device_seconds:
                devices = self._devices = self._read_devices(moment)
            return state, devices

    def _gateway(self) -> Gateway | None:
        try:
            return self.loader.get()
        except CAError:  # the loader logs why
            return None

    def _read_state(self, moment: float) -> StateReading:
        gateway = self._gateway()
        reading = StateReading(database_up=False, expiries=self._expiries(gateway), taken_at=moment)
        if gateway is None:
            return reading
        queries = MonitoringQueries(gateway.storage.db)
        try:
            reading.approvals = queries.pending_approvals()
            reading.locks = queries.active_locks(self.now())
        except CAError as exc:
            self._report_down(exc.detail)
            reading.approvals = reading.locks = None
            return reading
        reading.database_up = True
        if self._state is not None and not self._state.database_up:
            log.info("metrics: the database answers again")
        return reading

    def _read_devices(self, moment: float) -> DeviceReading | None:
        gateway = self._gateway()
        if gateway is None:
            return None
        try:
            rows = gateway.storage.migration_report.state_counts()
        except CAError as exc:
            self._report_down(exc.detail)
            return None
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            group = row.group_name or ""
            for state in DEVICE_STATES:
                counts.setdefault((group, state), 0)
            counts[(group, row.state)] = counts.get((group, row.state), 0) + row.devices
        return DeviceReading(counts, moment)

    def _report_down(self, detail: str) -> None:
        if self._state is None or self._state.database_up:
            log.warning("metrics: the database did not answer: %s", detail)

    def _expiries(self, gateway: Gateway | None) -> list[Expiry]:
        loaded: dict[str, x509.Certificate] = {}
        if gateway is not None:
            loaded = {"ca": gateway.authority.certificate, "ra": gateway.ra_certificate}
        found = []
        for role, setting in CERTIFICATE_FILES.items():
            certificate = loaded.get(role) or self._certificate_file(setting)
            if certificate is None or (role not in loaded and certificate in loaded.values()):
                continue  # after an activation the next_* files hold the issuing CA and RA: reported as such
            found.append(Expiry(role, certificate.subject.rfc4514_string(), certificate.not_valid_after_utc))
        for authority in gateway.previous if gateway is not None else ():
            certificate = authority.certificate  # a replaced CA, still publishing CRLs until retired
            found.append(Expiry("previous_ca", certificate.subject.rfc4514_string(), certificate.not_valid_after_utc))
        return found

    def _certificate_file(self, setting: str) -> x509.Certificate | None:
        if not self.config[setting]:
            return None
        path = self.config.path(setting)
        if setting.startswith("next_") and not path.is_file():
            return None  # no rollover prepared
        try:
            return load_certificates(path)[0]
        except (CAError, IndexError) as exc:
            log.warning("metrics: cannot read %s (%s): %s", setting, path, exc)
            return None
