"""Certificate revocation lists: built from storage, numbered by it, published on change and on a timer."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shared_ca.authority import CertificateAuthority, reason_flag
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.crls import CrlRecord, RevokedEntry


def build_crl(
    authority: CertificateAuthority,
    number: int,
    entries: list[RevokedEntry],
    this_update: dt.datetime,
    next_update: dt.datetime,
) -> bytes:
    """A DER CRL (RFC 5280 §5) signed by `authority`."""
    ca = authority.certificate
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    for entry in entries:
        revoked = (
            x509.RevokedCertificateBuilder().serial_number(int(entry.serial_hex, 16)).revocation_date(entry.revoked_at)
        )
        flag = reason_flag(entry.reason)
        if flag is not x509.ReasonFlags.unspecified:  # RFC 5280 §5.3.1: omit rather than say unspecified
            revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(authority.key, authority.signing_hash).public_bytes(Encoding.DER)


class RevocationLists(Protocol):
    """The CRL storage a publisher uses (shared_ca.storage.crls)."""

    def apply_due_supersessions(self, now: dt.datetime, actor: str) -> int: ...
    def crl_revision(self, issuer_id: int) -> int: ...
    def allocate_crl_number(self, issuer_id: int) -> int: ...
    def revoked_entries(self, issuer_id: int, now: dt.datetime) -> list[RevokedEntry]: ...
    def save_crl(self, crl: CrlRecord, event: AuditEvent, now: dt.datetime) -> bool: ...
    def latest_crl(self, issuer_id: int) -> CrlRecord | None: ...
    def due_supersessions(self, issuer_id: int, now: dt.datetime) -> int: ...


class CrlPublisher:
    """Publishes the CRL of one CA into storage, where every node serves it from."""

    def __init__(
        self, authority: CertificateAuthority, crls: RevocationLists, validity: dt.timedelta, refresh: dt.timedelta
    ) -> None:
        if refresh >= validity:
            raise ValueError("the CRL refresh interval must be shorter than its validity")
        self.authority = authority
        self.crls = crls
        self.validity = validity
        self.refresh = refresh

    def publish(self, actor: str) -> CrlRecord:
        """Sign and store a new CRL now; returns the newest stored CRL (ours or a concurrent newer one)."""
        store = self.crls
        issuer_id = self.authority.issuer.id
        now = self.authority.clock()
        store.apply_due_supersessions(now, actor)
        revision = store.crl_revision(issuer_id)  # before the entries: see Crls.crl_revision
        number = store.allocate_crl_number(issuer_id)
        entries = store.revoked_entries(issuer_id, now)
        der = build_crl(self.authority, number, entries, now, now + self.validity)
        record = CrlRecord(issuer_id, number, now, now + self.validity, der, revision)
        event = AuditEvent(actor, "crl.published", issuer_id, None, {"number": number, "entries": len(entries)})
        if store.save_crl(record, event, now):
            return record
        newer = store.latest_crl(issuer_id)
        assert newer is not None
        return newer

    def is_due(self, crl: CrlRecord | None, now: dt.datetime) -> bool:
        """True when there is no CRL, it is older than the refresh interval, or revocations came since."""
        if crl is None or now >= crl.this_update + self.refresh or now >= crl.next_update:
            return True
        store = self.crls
        issuer_id = self.authority.issuer.id
        # A revocation since this CRL was signed, or a renewal grace period that ended (publish()
        # turns those into revocations first).
        return store.crl_revision(issuer_id) > crl.revision or store.due_supersessions(issuer_id, now) > 0

    def current(self, actor: str) -> CrlRecord:
        """The CRL to serve: the stored one, or a freshly published one when it is due."""
        crl = self.crls.latest_crl(self.authority.issuer.id)
        if crl is not None and not self.is_due(crl, self.authority.clock()):
            return crl
        return self.publish(actor)
