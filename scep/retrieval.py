"""CertPoll, GetCert and GetCRL (RFC 8894 §3.3.3, §4.5, §4.6): what a client fetches once enrolled.

An unknown transaction, certificate or issuer is NotFound, which scep.replies answers badCertID.
"""

from __future__ import annotations

from typing import Protocol

from cryptography import x509

from scep.clients import ScepClient
from scep.enrollment import TransactionLookup, spki_sha256
from scep.message import PkiRequest
from scep.replies import Replies
from shared_ca.authority import CertificateAuthority
from shared_ca.crl import CrlPublisher
from shared_ca.errors import NotFound
from shared_ca.profiles import Profile
from shared_ca.serials import serial_hex
from shared_ca.storage.certificates import CertificateRecord


class CertificateBySerial(Protocol):
    def certificate(self, issuer_id: int, serial_hex: str) -> CertificateRecord | None: ...


class RetrievalStorage(Protocol):
    """What CertPoll and GetCert read (shared_ca.storage)."""

    @property
    def enrollments(self) -> TransactionLookup: ...
    @property
    def certificates(self) -> CertificateBySerial: ...


class Retrieval:
    """Answers the retrieval messages for one CA. Immutable; one per worker."""

    def __init__(
        self, *, authority: CertificateAuthority, storage: RetrievalStorage, crl: CrlPublisher, replies: Replies
    ) -> None:
        self.authority = authority
        self.storage = storage
        self.crl = crl
        self.replies = replies

    def poll(self, request: PkiRequest, profile: Profile, client: ScepClient) -> bytes:
        """CertPoll: the answer of the transaction, PENDING while it waits for approval or capacity."""
        txn = self.storage.enrollments.scep_transaction(spki_sha256(request.signer_certificate), request.transaction_id)
        if txn is None:
            raise NotFound("no request with this transactionID")
        self.replies.event(profile, client, "CertPoll", f"poll:{txn.status}", request.reply)
        return self.replies.answer(request, txn)

    def get_cert(self, request: PkiRequest, profile: Profile, client: ScepClient) -> bytes:
        """GetCert: a certificate this CA issued, by issuer and serial number."""
        wanted = request.issuer_and_serial
        assert wanted is not None
        record = None
        if wanted.issuer_der == self.authority.certificate.subject.public_bytes():
            record = self.storage.certificates.certificate(self.authority.issuer.id, serial_hex(wanted.serial_number))
        if record is None:
            raise NotFound("no such certificate")
        self.replies.event(profile, client, "GetCert", "delivered", request.reply)
        return self.replies.success(request, [x509.load_der_x509_certificate(record.der)])

    def get_crl(self, request: PkiRequest, profile: Profile, client: ScepClient) -> bytes:
        """GetCRL: this CA's current CRL."""
        wanted = request.issuer_and_serial
        assert wanted is not None
        if wanted.issuer_der != self.authority.certificate.subject.public_bytes():
            raise NotFound("no CRL for this issuer")
        crl = self.crl.current(actor="scep")
        self.replies.event(profile, client, "GetCRL", "delivered", request.reply)
        return self.replies.success(request, [], crl_der=crl.der)
