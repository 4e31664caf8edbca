"""Writing EST enrollment events: one per request, a refusal included, with its cause for the report.

An event that cannot be written is logged and never turns an answer into an error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from typing import Protocol

from est import wire
from est.request import EstConnection, EstRequest, enrollment_event
from shared_ca.csr import readable_csr
from shared_ca.errors import CAError
from shared_ca.identity import IdentityRule
from shared_ca.storage.enrollment_records import EnrollmentEvent

log = logging.getLogger("est.service")


class EventRecorder(Protocol):
    """The enrollment storage EST events go to (shared_ca.storage.enrollment)."""

    def record_event(self, event: EnrollmentEvent, now: dt.datetime) -> int: ...


class EventLog:
    """Records the events of EST requests in enrollment storage."""

    def __init__(self, enrollments: EventRecorder, clock: Callable[[], dt.datetime], identity: IdentityRule) -> None:
        self.enrollments = enrollments
        self.clock = clock
        self.identity = identity  # names the device of a refused request from its CSR

    def record(self, request: EstRequest, outcome: str) -> None:
        self._write(request.event(outcome))

    def refused(self, request: EstRequest, error: CAError, body: bytes, content_type: str | None) -> None:
        """The event of a request an operation refused, naming the device when the CSR says who."""
        request = request.noting(cause=error.detail)
        if request.device_identity is None:
            with contextlib.suppress(CAError):
                requested = readable_csr(wire.decode_request_body(body, content_type))
                if requested is not None:
                    request = request.for_device(self.identity.of_request(requested))
        self.record(request, f"refused:{error.kind.value}")

    def refused_in_transport(self, operation: str, label: str | None, connection: EstConnection, cause: str) -> None:
        """The event of a request the transport refused before any operation ran (unknown label, wrong
        method, body too large)."""
        profile = (label or "")[:64] or None
        self._write(enrollment_event(operation[:32], "refused:transport", profile, connection, detail={"cause": cause}))

    def _write(self, event: EnrollmentEvent) -> None:
        try:
            self.enrollments.record_event(event, self.clock())
        except CAError as exc:
            log.error("could not record the EST enrollment event: %s", exc.detail)
