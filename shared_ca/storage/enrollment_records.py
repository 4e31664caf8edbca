"""What the enrollment tables hold, and the writes that join an issuance's database transaction.

`Certificates.record_issued` (certificates.py) and `Enrollments` (enrollment.py) both use the writers
here, so an enrollment event and a SCEP transaction are recorded in the same transaction as the
certificate they describe.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from shared_ca.errors import Conflict, InvalidRequest
from shared_ca.storage.audit import AuditEvent, write_audit
from shared_ca.storage.device_contacts import DeviceContact, touch_device
from shared_ca.storage.prepared import PreparedStatement
from shared_ca.storage.schema import (
    SCEP_TRANSACTION_STATUSES,
    approval_requests,
    enrollment_events,
    scep_challenges,
    scep_transactions,
)

PROTOCOLS = ("scep", "est")
REFUSED_OUTCOMES = ("refused", "failure", "failed")
# Refusals that judge the load, not the requester (rate limits, capacity) or never reached an operation
# (unknown label, wrong method, body too large): enrollment events only, never audit records, so a storm
# of them takes no chain-head lock (shared_ca.storage.audit). The values are ErrorKind values, and
# 'transport' (est.events).
UNAUDITED_REFUSALS = frozenset({"too_many_requests", "unavailable", "transport"})
FINAL_STATUSES = ("issued", "failed", "rejected")
MAX_TRANSACTION_ID = 255  # certmonger sends ~78 decimal digits (SHA-256 of the key), ~155 with SHA-512
MAX_DEVICE_IDENTITY = 255


def _check_client_values(transaction_id: str | None, device_identity: str | None = None) -> None:
    """Values a client chooses must fit their columns on every backend (PostgreSQL enforces lengths)."""
    if transaction_id is not None and len(transaction_id) > MAX_TRANSACTION_ID:
        raise InvalidRequest(f"the transactionID is longer than {MAX_TRANSACTION_ID} characters")
    if device_identity is not None and len(device_identity) > MAX_DEVICE_IDENTITY:
        raise InvalidRequest(f"the device identity is longer than {MAX_DEVICE_IDENTITY} characters")


class TransactionExists(Conflict):
    """The (signer key, transactionID) pair is already recorded; nothing of this write was kept.

    The caller reads the recorded transaction (`Enrollments.scep_transaction`) and answers a
    retransmission with its answer.
    """

    def __init__(self, signer_key_sha256: str, transaction_id: str) -> None:
        super().__init__(
            "this transaction is already recorded",
            detail=f"SCEP transaction {transaction_id!r} of signer key {signer_key_sha256} exists",
        )
        self.signer_key_sha256 = signer_key_sha256
        self.transaction_id = transaction_id


@dataclass(frozen=True)
class EnrollmentEvent:
    """One request of either protocol, as the migration report counts it.

    `outcome` is 'issued', 'pending', 'refused', 'failure:<failInfo>' and the like. Recorded with an
    issuance, `serial_hex` and the certificate link are taken from the issued certificate.
    """

    protocol: str
    operation: str
    outcome: str
    profile: str | None = None
    device_identity: str | None = None
    client_address: str | None = None
    user_agent: str | None = None
    cipher: str | None = None
    digest: str | None = None
    challenge_kind: str = "none"
    transaction_id: str | None = None
    serial_hex: str | None = None
    detail: dict[str, Any] | None = None
    tls_version: str | None = None  # the TLS protocol version, e.g. 'TLSv1.3'; None over plain HTTP
    # The SCEP client's family (scep.clients), kept on the device row for the migration report (not an
    # event column); None when nothing told.
    client_family: str | None = None
    # What kind of refusal this is (an ErrorKind value) when the outcome does not say (SCEP's failInfo
    # names several); it decides whether the refusal is audited (UNAUDITED_REFUSALS). Not an event column.
    refusal_kind: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}")
        _check_client_values(self.transaction_id, self.device_identity)


@dataclass(frozen=True)
class EnrollmentRecord:
    id: int
    occurred_at: dt.datetime
    protocol: str
    operation: str
    outcome: str
    profile: str | None
    device_identity: str | None
    client_address: str | None
    user_agent: str | None
    cipher: str | None
    digest: str | None
    challenge_kind: str
    transaction_id: str | None
    serial_hex: str | None
    certificate_id: int | None
    detail: dict[str, Any]
    tls_version: str | None = None


class ChallengeSpent(Conflict):
    """The one-time challenge a SCEP transaction spends had no use left when the transaction was
    written (a concurrent request took the last one, or it expired meanwhile); nothing was kept."""

    def __init__(self, challenge_id: int) -> None:
        super().__init__(
            "the challenge has no use left",
            detail=f"one-time challenge {challenge_id} had no use left when the transaction was written",
        )
        self.challenge_id = challenge_id


@dataclass(frozen=True)
class NewScepTransaction:
    """A SCEP transaction to record: 'issued' with a certificate, or 'pending' | 'failed' | 'rejected'.

    `replaces_id` names a finished transaction with the same (signer key, transactionID) that this
    one takes the place of: certmonger (resubmit) and micromdm's scepclient (RenewalReq) derive the
    transactionID from the public key, so a re-enrollment with the same key reuses the pair.
    """

    signer_key_sha256: str  # hex SHA-256 of the signer certificate's SubjectPublicKeyInfo
    transaction_id: str
    signer_cert_sha256: str  # hex SHA-256 of the signer certificate itself
    message_type: str  # the wire value, e.g. "19" for PKCSReq
    profile: str
    # SHA-256 of the PKCS#10, to recognise a retransmission; never the request, whose challengePassword
    # is a secret. None for messages without one (CertPoll, GetCert).
    request_sha256: str | None
    subject: str | None = None
    client_address: str | None = None
    status: str = "issued"
    fail_info: str | None = None  # the failInfo name, e.g. 'badRequest'
    fail_info_text: str | None = None
    replaces_id: int | None = None
    approval_id: int | None = None  # the approval request of a 'pending' transaction
    # The one-time challenge (its id) the request presented: one use is taken in the database transaction
    # that writes this one, so a request that is cut off before it is recorded (a worker killed, the
    # database gone) spends nothing, and its retransmission is accepted. Only 'issued' and 'pending' spend.
    spends_challenge: int | None = None

    def __post_init__(self) -> None:
        if self.status not in SCEP_TRANSACTION_STATUSES:
            raise ValueError(f"unknown SCEP transaction status {self.status!r}")
        if self.spends_challenge is not None and self.status not in ("issued", "pending"):
            raise ValueError(f"a {self.status!r} SCEP transaction spends no challenge")
        _check_client_values(self.transaction_id)


@dataclass(frozen=True)
class CompletePending:
    """Issue for a pending approval request: it, and the SCEP transaction waiting on it, turn 'issued' in
    the issuance's own transaction."""

    approval_id: int  # ApprovalRecord.id
    actor: str


@dataclass(frozen=True)
class ScepTransactionRecord:
    id: int
    signer_key_sha256: str
    transaction_id: str
    signer_cert_sha256: str
    message_type: str
    profile: str
    status: str
    certificate_id: int | None
    certificate_der: bytes | None  # joined from certificates when issued
    fail_info: str | None
    fail_info_text: str | None
    request_sha256: str | None
    approval_id: int | None
    subject: str | None
    client_address: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    def is_retransmission(self, signer_cert_sha256: str, message_type: str, request_sha256: str | None) -> bool:
        """True when a request is this transaction sent again (same signer certificate, type and CSR).

        A request that shares only the (signer key, transactionID) pair is a new enrollment.
        """
        return (
            self.signer_cert_sha256 == signer_cert_sha256
            and self.message_type == message_type
            and self.request_sha256 == request_sha256
        )


_INSERT_EVENT = PreparedStatement(insert(enrollment_events).returning(enrollment_events.c.id), columns_from_params=True)
_INSERT_SCEP_TRANSACTION = PreparedStatement(
    insert(scep_transactions).returning(scep_transactions.c.id), columns_from_params=True
)


def is_transaction_violation(exc: IntegrityError) -> bool:
    message = str(exc.orig).lower()
    return (
        "uq_scep_transactions_signer_txn" in message
        or "scep_transactions.signer_key_sha256, scep_transactions.transaction_id" in message
    )


def write_enrollment_event(
    conn: Connection,
    event: EnrollmentEvent,
    now: dt.datetime,
    *,
    certificate_id: int | None = None,
    serial_hex: str | None = None,
    certificate_not_after: dt.datetime | None = None,
) -> int:
    """Insert one enrollment event inside the caller's transaction, and move the device it names
    (shared_ca.storage.device_contacts); a refusal that judged the requester also gets its audit record
    (`refusal_audit`). Its id."""
    if event.device_identity and not event.outcome.startswith(REFUSED_OUTCOMES):
        # A refused request names a device but proves nothing about it: it moves no device.
        contact = DeviceContact(
            identity=event.device_identity,
            protocol=event.protocol,
            outcome=event.outcome,
            user_agent=event.user_agent,
            cipher=event.cipher,
            digest=event.digest,
            challenge_kind=event.challenge_kind,
            client_family=event.client_family,
            certificate_id=certificate_id,
            certificate_not_after=certificate_not_after,
        )
        touch_device(conn, contact, now)
    event_id = _INSERT_EVENT.inserted_id(
        conn,
        {
            "occurred_at": now,
            "protocol": event.protocol,
            "operation": event.operation,
            "profile": event.profile,
            "device_identity": event.device_identity,
            "client_address": event.client_address,
            "user_agent": event.user_agent,
            "cipher": event.cipher,
            "digest": event.digest,
            "challenge_kind": event.challenge_kind,
            "outcome": event.outcome,
            "transaction_id": event.transaction_id,
            "serial_hex": serial_hex or event.serial_hex,
            "certificate_id": certificate_id,
            "detail": json.dumps(event.detail or {}, sort_keys=True),
            "tls_version": event.tls_version,
        },
    )
    audit = refusal_audit(event, event_id)
    if audit is not None:
        write_audit(conn, audit, now)
    return event_id


def refusal_audit(event: EnrollmentEvent, event_id: int) -> AuditEvent | None:
    """The audit record of a refused request (action 'request.refused'), None for any other outcome and
    for the refusals UNAUDITED_REFUSALS names. Its actor is who asked, as issuance names them: the
    protocol and the principal (EST) or the client address."""
    if not event.outcome.startswith(REFUSED_OUTCOMES):
        return None
    kind = event.refusal_kind
    if kind is None and event.outcome.startswith("refused:"):
        kind = event.outcome.partition(":")[2]
    if kind in UNAUDITED_REFUSALS:
        return None
    recorded = event.detail or {}
    principal = recorded.get("principal")
    facts: dict[str, Any] = {
        "event": event_id,
        "protocol": event.protocol,
        "operation": event.operation,
        "outcome": event.outcome,
        "kind": kind,
        "profile": event.profile,
        "device": event.device_identity,
        "client": event.client_address,
        "transaction_id": event.transaction_id,
        "principal": principal,
        "cause": recorded.get("cause"),
    }
    who = principal or event.client_address or "-"
    return AuditEvent(
        f"{event.protocol}:{who}",
        "request.refused",
        detail={key: value for key, value in facts.items() if value is not None},
    )


def spend_challenge_use(conn: Connection, challenge_id: int, now: dt.datetime) -> None:
    """Take one use of a one-time challenge inside the caller's transaction: one conditional UPDATE, so
    concurrent requests on its last use get exactly one success, on any number of workers and nodes
    (PostgreSQL re-checks the condition once the winner commits). ChallengeSpent when none is left."""
    c = scep_challenges.c
    taken = conn.execute(
        update(scep_challenges)
        .where(c.id == challenge_id, c.uses_left > 0, c.expires_at > now)
        .values(uses_left=c.uses_left - 1)
    ).rowcount
    if taken != 1:
        raise ChallengeSpent(challenge_id)


def write_scep_transaction(
    conn: Connection, txn: NewScepTransaction, now: dt.datetime, *, certificate_id: int | None = None
) -> int:
    """Insert a SCEP transaction inside the caller's transaction (and spend the challenge it presented);
    its row id.

    Raises ChallengeSpent when that challenge has no use left, TransactionExists when `replaces_id` no
    longer names a finished transaction of the same pair; a duplicate pair surfaces as IntegrityError
    for the caller to translate.
    """
    t = scep_transactions.c
    if txn.replaces_id is not None:
        removed = conn.execute(
            delete(scep_transactions).where(
                t.id == txn.replaces_id,
                t.signer_key_sha256 == txn.signer_key_sha256,
                t.transaction_id == txn.transaction_id,
                t.status.in_(FINAL_STATUSES),
            )
        ).rowcount
        if removed != 1:
            raise TransactionExists(txn.signer_key_sha256, txn.transaction_id)
    if txn.spends_challenge is not None:
        spend_challenge_use(conn, txn.spends_challenge, now)
    return _INSERT_SCEP_TRANSACTION.inserted_id(
        conn,
        {
            "signer_key_sha256": txn.signer_key_sha256,
            "transaction_id": txn.transaction_id,
            "signer_cert_sha256": txn.signer_cert_sha256,
            "message_type": txn.message_type,
            "profile": txn.profile,
            "status": txn.status,
            "certificate_id": certificate_id,
            "fail_info": txn.fail_info,
            "fail_info_text": txn.fail_info_text,
            "request_sha256": txn.request_sha256,
            "approval_id": txn.approval_id,
            "subject": txn.subject,
            "client_address": txn.client_address,
            "created_at": now,
            "updated_at": now,
        },
    )


def complete_pending(
    conn: Connection,
    pending: CompletePending,
    certificate_id: int,
    now: dt.datetime,
    *,
    issuer_id: int | None = None,
    serial_hex: str | None = None,
) -> AuditEvent | None:
    """Turn a pending approval request 'issued' inside the issuance's transaction, with the SCEP transaction
    waiting on it (its client's next CertPoll gets the certificate); Conflict unless it is pending. The
    audit record of an administrator's approval ('request.approved'; none for a deferred request's
    issuance), for the caller to write last: the chain head is the last lock a transaction takes."""
    a = approval_requests.c
    decided = (
        conn.execute(
            update(approval_requests)
            .where(a.id == pending.approval_id, a.status == "pending")
            .values(status="issued", certificate_id=certificate_id, decided_at=now, decided_by=pending.actor[:255])
            .returning(a.deferred, a.protocol, a.profile, a.principal_name, a.device_identity)
        )
        .mappings()
        .first()
    )
    if decided is None:
        raise Conflict(f"request {pending.approval_id} is not pending")
    t = scep_transactions.c
    conn.execute(
        update(scep_transactions)
        .where(t.approval_id == pending.approval_id, t.status == "pending")
        .values(status="issued", certificate_id=certificate_id, updated_at=now)
    )
    if decided["deferred"]:
        return None
    detail = {
        "request": pending.approval_id,
        "protocol": decided["protocol"],
        "profile": decided["profile"],
        "principal": decided["principal_name"],
        "device": decided["device_identity"],
    }
    return AuditEvent(pending.actor, "request.approved", issuer_id, serial_hex, detail)


def enrollment_record(row: RowMapping) -> EnrollmentRecord:
    return EnrollmentRecord(
        id=row["id"],
        occurred_at=row["occurred_at"],
        protocol=row["protocol"],
        operation=row["operation"],
        outcome=row["outcome"],
        profile=row["profile"],
        device_identity=row["device_identity"],
        client_address=row["client_address"],
        user_agent=row["user_agent"],
        cipher=row["cipher"],
        digest=row["digest"],
        challenge_kind=row["challenge_kind"],
        transaction_id=row["transaction_id"],
        serial_hex=row["serial_hex"],
        certificate_id=row["certificate_id"],
        detail=json.loads(row["detail"]),
        tls_version=row["tls_version"],
    )
