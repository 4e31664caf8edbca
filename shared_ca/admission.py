"""Admission control: how much work a worker takes at once, and what a storm gets instead of timeouts.

A worker runs at most `max_in_flight` protocol operations at a time. A request that finds every slot
taken waits up to `queue_wait` seconds for one; if none frees, it is *deferred*, and the protocols
answer with their own deferral, which every client already knows (DESIGN.md, "Staying up"):

- a new SCEP enrollment is authorized, stored and answered PENDING; it is issued in the background
  as capacity frees (ApprovalQueue.issue_deferred), and the client's next CertPoll gets SUCCESS;
- an EST enrollment is authorized and answered 202 with Retry-After, and the request is not stored
  (only its enrollment event is written): the client sends the same request again (RFC 7030
  §4.2.3), and a free slot issues it then. Storing it would cost a look-up on every later
  enrollment, to tell a retry from a new request and never issue twice;
- a SCEP CertPoll is answered even at capacity: it is how a deferred request is delivered, and
  costs a read and a signature;
- anything else (SCEP GetCert, GetCRL; EST serverkeygen, whose key is never stored; a Full CMC
  revocation) is answered 503 with Retry-After.

A client that hammers is answered before it costs more: per device (`device_rate_per_minute`) and,
where clients do not share addresses, per client address (`address_rate_per_minute`, off by default:
a fleet behind one NAT or balancer shares an address), a token bucket (a burst of `burst`) per
worker; over it, EST answers 429 and SCEP a signed FAILURE badRequest (a PENDING would oblige the
gateway to store and later answer what a hammering client sends; a FAILURE costs one signature and
stores nothing, and it is not kept as the transaction's answer: the same request later is judged
afresh).

Counters of every decision are kept for metrics (`snapshot`). Nothing here is shared across workers
or nodes: each worker guards its own CPU; a node's capacity is its workers', a fleet's its nodes'.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

LAG_FLOOR_SECONDS = 0.05  # a wait behind other requests shorter than this is not counted as queueing


@dataclass(frozen=True)
class AdmissionSettings:
    """The admission.* settings of one worker."""

    max_in_flight: int = 16
    queue_wait_seconds: float = 2.0
    retry_after_seconds: int = 10
    device_rate_per_minute: int = 60  # 0: no rate limit
    address_rate_per_minute: int = 0  # 0: no rate limit (a fleet behind one NAT shares an address)
    burst: int = 30


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class TokenBuckets:
    """One token bucket per key: `rate_per_minute` sustained, `burst` at once; bounded in size."""

    rate_per_minute: int
    burst: int
    max_keys: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _buckets: collections.OrderedDict[str, _Bucket] = field(default_factory=collections.OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allow(self, key: str) -> bool:
        """Take one token for `key`; False when its bucket is empty."""
        if self.rate_per_minute <= 0:
            return True
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)  # the least recently seen key starts afresh
            else:
                self._buckets.move_to_end(key)
                refill = (now - bucket.updated) * self.rate_per_minute / 60.0
                bucket.tokens = min(float(self.burst), bucket.tokens + refill)
                bucket.updated = now
            if bucket.tokens < 1.0:
                return False
            bucket.tokens -= 1.0
            return True


class Admission:
    """The in-flight cap, the wait for a slot, the rate limits and their counters of one worker."""

    def __init__(self, settings: AdmissionSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        self._addresses = TokenBuckets(settings.address_rate_per_minute, settings.burst, clock=clock)
        self._devices = TokenBuckets(settings.device_rate_per_minute, settings.burst, clock=clock)
        self._counts: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    @property
    def retry_after(self) -> int:
        return self.settings.retry_after_seconds

    def count(self, decision: str, protocol: str) -> None:
        """Record one decision ('admitted', 'deferred', 'shed', 'rate-limited') of `protocol`."""
        with self._count_lock:
            self._counts[f"{protocol}:{decision}"] += 1

    def snapshot(self) -> dict[str, int]:
        """The counters so far, e.g. {'scep:deferred': 12, 'est:shed': 3}."""
        with self._count_lock:
            return dict(self._counts)

    @contextlib.contextmanager
    def enter(self, protocol: str, *, waited: float = 0.0) -> Iterator[bool]:
        """A slot for one operation: yields True when the request got one within its queue-wait budget,
        False when it is to be deferred or shed (the caller answers that way; the counters say which).

        `waited` is how long the request already queued before it reached here: under gevent, behind
        other requests for the worker's one thread (gateway.worker measures it); it counts against the
        budget, so a storm that queues in the event loop is deferred as one that queues for slots."""
        queued = waited if waited > LAG_FLOOR_SECONDS else 0.0  # a scheduler's jitter is no queue
        budget = self.settings.queue_wait_seconds - queued
        if budget < 0 or not self._slots.acquire(timeout=budget):
            yield False
            return
        self.count("admitted", protocol)
        try:
            yield True
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def spare_slot(self) -> Iterator[bool]:
        """A slot for background work (issuing deferred requests), only when one is free right now: it
        never waits, so clients' requests go first."""
        if not self._slots.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            self._slots.release()

    def allow_address(self, address: str | None) -> bool:
        """One request from `address` (its rate limit; an unknown address is not limited)."""
        return address is None or self._addresses.allow(address)

    def allow_device(self, device: str | None) -> bool:
        """One request for `device` (its rate limit; a request that names no device is not limited)."""
        return device is None or self._devices.allow(device)

    @classmethod
    def unlimited(cls) -> Admission:
        """Admission that admits everything at once (tools and in-process tests built without a worker)."""
        unlimited = AdmissionSettings(
            max_in_flight=1_000_000, queue_wait_seconds=0.0, device_rate_per_minute=0, address_rate_per_minute=0
        )
        return cls(unlimited)
