"""Request metrics: `gateway_requests_total` and `gateway_request_duration_seconds`, one sample per
request, labelled by protocol, operation, profile and outcome.

`RequestMetrics` wraps the Flask app (inside gateway.middleware's GatewayMiddleware) and opens a
`RequestRecord` for each request. Two notes fill it while the request runs: the app's teardown notes
the route (protocol and operation, from the blueprint and endpoint that answered), and the storage
notes the request's enrollment event when it commits one (gateway.metrics_observers), which names the
operation, profile and outcome more precisely than the route can. When the server closes the answer
the sample is taken; a request that recorded no event gets an outcome from its HTTP status.

Every label value comes from a fixed set (gateway.metrics.bounded): an unknown EST operation or label, a
SCEP `operation` parameter of a client's invention, an unrouted path are all 'other'.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from werkzeug.wsgi import ClosingIterator

from gateway.metrics import NONE, OTHER, REQUEST_PROTOCOLS, bounded, outcome_label, process_metrics
from scep.asn1 import MessageType
from scep.transport import Operation
from shared_ca.storage.enrollment_records import EnrollmentEvent

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

SCEP_OPERATIONS = frozenset({op.value for op in Operation} | {m.name for m in MessageType})
EST_OPERATIONS = frozenset({"cacerts", "csrattrs", "simpleenroll", "simplereenroll", "serverkeygen", "fullcmc"})
UNROUTED = "unrouted"


@dataclass
class RequestRecord:
    """What is known of the request being answered (one per request, in its context)."""

    protocol: str = OTHER
    operation: str = UNROUTED
    event: EnrollmentEvent | None = None


_CURRENT: ContextVar[RequestRecord | None] = ContextVar("gateway_metrics_request", default=None)


def note_route(protocol: str, operation: str) -> None:
    """The route that answered the current request (the app's teardown)."""
    record = _CURRENT.get()
    if record is not None:
        record.protocol, record.operation = protocol, operation


def note_enrollment(event: EnrollmentEvent) -> None:
    """The enrollment event the current request committed; nothing outside a request (the background
    issuer of deferred requests)."""
    record = _CURRENT.get()
    if record is not None:
        record.event = event


def status_outcome(status: int) -> str:
    """The outcome of a request that recorded no enrollment event, from its HTTP status."""
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"
    return "refused" if status < 500 else "error"


def request_labels(record: RequestRecord, status: int, profiles: Collection[str]) -> tuple[str, str, str, str]:
    """(protocol, operation, profile, outcome) of a finished request."""
    protocol = bounded(record.protocol, REQUEST_PROTOCOLS, missing=OTHER)
    operation = record.operation
    event = record.event
    if event is None:
        return protocol, operation, NONE, status_outcome(status)
    if protocol == "scep":
        operation = bounded(event.operation, SCEP_OPERATIONS, missing=OTHER)
    elif protocol == "est":
        operation = bounded(event.operation, EST_OPERATIONS, missing=OTHER)
    return protocol, operation, bounded(event.profile, profiles), outcome_label(event.outcome)


class RequestMetrics:
    """The WSGI layer that counts and times every request of `app` (labels: `request_labels`)."""

    def __init__(self, app: WSGIApp, profiles: Collection[str]) -> None:
        self.app = app
        self.profiles = frozenset(profiles)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        metrics = process_metrics()
        started = time.perf_counter()
        record = RequestRecord()
        _CURRENT.set(record)
        status = [500]  # what the server sends when the app fails before it starts a response

        def _start(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            code = line.split(" ", 1)[0]
            status[0] = int(code) if code.isdigit() else 500
            return start_response(line, headers, exc_info)

        def _finish() -> None:
            labels = request_labels(record, status[0], self.profiles)
            metrics.requests.labels(*labels).inc()
            metrics.request_seconds.labels(*labels).observe(time.perf_counter() - started)
            metrics.in_flight.dec()
            if _CURRENT.get() is record:
                _CURRENT.set(None)

        metrics.in_flight.inc()
        try:
            body = self.app(environ, _start)
        except BaseException:
            _finish()
            raise
        return ClosingIterator(body, _finish)
