"""Counting where things are committed: the storage and admission control of a gateway, instrumented by
the composition root (gateway.runtime) without a line of metrics in shared_ca, scep or est.

Every certificate, revocation and enrollment event reaches the database through a few repository
methods; the repositories here are those of shared_ca.storage with a count added after each of them
returns, that is after its transaction committed (a rolled-back issuance, a lost race, counts nothing):

- `Certificates.record_issued` → gateway_certificates_issued_total (and the request's enrollment event);
- `Certificates.revoke` → gateway_certificates_revoked_total;
- `Enrollments.record_event`, `record_scep_outcome`, `Approvals.hold` → the request's enrollment event
  (gateway.metrics_requests labels the request with it);
- `Enrollments.count_failures` → gateway_lockouts_total, for each counter this failure locked (its count
  reached its threshold, as the method reports);
- `Enrollments.locks` → gateway_lockout_refusals_total, when a look-up finds a lock on one of a
  request's own counters (challenge, device, address): scep.lockout refuses the request then. A lock on
  the profile counter alone refuses nothing (it suspends the static challenge).

Admission control's decisions are counted where it counts them (`Admission.count`), and failed
database statements by the engine's error hook (shared_ca.storage.monitoring.watch_errors).

What another process commits (a `gateway cert revoke` on the command line) is counted in that process,
whose counts no scrape reads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace

from cryptography import x509

from gateway.metrics import ADMISSION_DECISIONS, CERTIFICATE_PROTOCOLS, OTHER, bounded, process_metrics
from gateway.metrics_requests import note_enrollment
from shared_ca.admission import Admission, AdmissionSettings
from shared_ca.storage.approvals import ApprovalRecord, Approvals, NewApproval
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.certificates import CertificateRecord, Certificates, NewCertificate
from shared_ca.storage.database import Database
from shared_ca.storage.enrollment import Enrollments, FailureCount
from shared_ca.storage.enrollment_records import (
    CompletePending,
    EnrollmentEvent,
    NewScepTransaction,
    ScepTransactionRecord,
)
from shared_ca.storage.monitoring import LOCK_COUNTERS, watch_errors
from shared_ca.storage.repositories import Storage

REVOCATION_REASONS = frozenset(flag.value for flag in x509.ReasonFlags)
ADMISSION_PROTOCOLS = ("scep", "est")
_REFUSING_COUNTERS = frozenset(LOCK_COUNTERS) - {"profile"}


def _counter_kind(key: str) -> str:
    return bounded(key.split(":", 1)[0], LOCK_COUNTERS, missing=OTHER)


class CountedCertificates(Certificates):
    """Certificates that count what they commit (module docstring)."""

    def __init__(self, db: Database, profiles: Collection[str]) -> None:
        super().__init__(db)
        self.profiles = frozenset(profiles)

    def record_issued(
        self,
        cert: NewCertificate,
        event: AuditEvent,
        now: dt.datetime,
        *,
        supersede: tuple[int, dt.datetime] | None = None,
        enrollment: EnrollmentEvent | None = None,
        scep_transaction: NewScepTransaction | CompletePending | None = None,
    ) -> CertificateRecord:
        record = super().record_issued(
            cert, event, now, supersede=supersede, enrollment=enrollment, scep_transaction=scep_transaction
        )
        process_metrics().issued.labels(
            profile=bounded(record.profile, self.profiles),
            protocol=bounded(record.protocol, CERTIFICATE_PROTOCOLS),
        ).inc()
        if enrollment is not None:
            note_enrollment(enrollment)
        return record

    def revoke(
        self, cert_id: int, reason: str, revoked_at: dt.datetime, event: AuditEvent, now: dt.datetime
    ) -> CertificateRecord:
        record = super().revoke(cert_id, reason, revoked_at, event, now)
        process_metrics().revoked.labels(
            profile=bounded(record.profile, self.profiles),
            protocol=bounded(record.protocol, CERTIFICATE_PROTOCOLS),
            reason=bounded(reason, REVOCATION_REASONS),
        ).inc()
        return record


class CountedEnrollments(Enrollments):
    """Enrollments that note the request's event and count lockouts (module docstring)."""

    def record_event(self, event: EnrollmentEvent, now: dt.datetime) -> int:
        event_id = super().record_event(event, now)
        note_enrollment(event)
        return event_id

    def record_scep_outcome(
        self, txn: NewScepTransaction, event: EnrollmentEvent, now: dt.datetime
    ) -> ScepTransactionRecord:
        record = super().record_scep_outcome(txn, event, now)
        note_enrollment(event)
        return record

    def count_failures(
        self, thresholds: Mapping[str, int], now: dt.datetime, *, window: dt.timedelta, lock_for: dt.timedelta
    ) -> dict[str, FailureCount]:
        counts = super().count_failures(thresholds, now, window=window, lock_for=lock_for)
        lockouts = process_metrics().lockouts
        for key, count in counts.items():
            if count.failures == thresholds[key]:  # this failure locked it
                lockouts.labels(counter=_counter_kind(key)).inc()
        return counts

    def locks(self, keys: Iterable[str], now: dt.datetime) -> dict[str, dt.datetime]:
        found = super().locks(keys, now)
        if any(_counter_kind(key) in _REFUSING_COUNTERS for key in found):
            process_metrics().lockout_refusals.inc()
        return found


class CountedApprovals(Approvals):
    """Approvals that note the event of a request they hold."""

    def hold(
        self,
        new: NewApproval,
        event: EnrollmentEvent,
        now: dt.datetime,
        *,
        scep_transaction: NewScepTransaction | None = None,
    ) -> ApprovalRecord:
        record = super().hold(new, event, now, scep_transaction=scep_transaction)
        note_enrollment(event)
        return record


class CountedAdmission(Admission):
    """Admission control whose decisions are also gateway_admission_decisions_total."""

    def count(self, decision: str, protocol: str) -> None:
        super().count(decision, protocol)
        process_metrics().admission.labels(
            protocol=bounded(protocol, ADMISSION_PROTOCOLS), decision=bounded(decision, ADMISSION_DECISIONS)
        ).inc()


def counted_admission(settings: AdmissionSettings) -> Admission:
    return CountedAdmission(settings)


def database_error(name: str) -> None:
    process_metrics().database_errors.labels(error=name).inc()


def instrument_storage(storage: Storage, profiles: Collection[str]) -> Storage:
    """`storage` with the counting repositories in place of its own, and its engine's errors counted.
    `profiles`: the configured profile names (any other is labelled 'other')."""
    watch_errors(storage.engine, database_error)
    return replace(
        storage,
        certificates=CountedCertificates(storage.db, profiles),
        enrollments=CountedEnrollments(storage.db),
        approvals=CountedApprovals(storage.db),
    )
