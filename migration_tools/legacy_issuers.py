"""The legacy CAs of an inventory: their issuer rows, their registration as trusted issuers with a
migration window, and which of them signed a certificate.

A CA inventory's CA must be trusted: its first import needs a trust window (--trust-until). A PEM
bundle's CA certificates become legacy issuers only with one, and CAs registered before count too.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from migration_tools.inventory import Inventory, InventoryError
from shared_ca.storage.inventory import LegacyRegistration
from shared_ca.storage.issuers import IssuerRecord, NewIssuer

_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class IssuerOutcome:
    """What an import did to one legacy issuer: 'registered', 'trust window moved' or 'unchanged'
    (a dry run says what it would do)."""

    name: str
    subject: str
    trust_until: dt.datetime | None
    action: str


@dataclass(frozen=True)
class CandidateIssuer:
    """A CA a leaf may be signed by: its certificate and its issuer id (None: not registered)."""

    certificate: x509.Certificate
    issuer_id: int | None
    usable: bool  # registered, or a dry run that would register it
    fingerprint: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", certificate_fingerprint(self.certificate))


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, in hex."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def legacy_issuer_name(cert: x509.Certificate, fingerprint: str) -> str:
    """`legacy-<slug of its CN, else OU, else O>-<first 8 hex of the fingerprint>`, at most 64 characters."""
    label = "ca"
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.ORGANIZATION_NAME):
        values = cert.subject.get_attributes_for_oid(oid)
        if values and isinstance(values[0].value, str):
            label = values[0].value
            break
    slug = _SLUG.sub("-", label.lower()).strip("-")[:40].strip("-") or "ca"
    return f"legacy-{slug}-{fingerprint[:8]}"


def new_legacy_issuer(cert: x509.Certificate, trust_until: dt.datetime | None) -> NewIssuer:
    """The issuer row of a legacy CA certificate, trusted until `trust_until`."""
    fingerprint = certificate_fingerprint(cert)
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:  # an old CA without the extension: RFC 5280 method 1
        ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return NewIssuer(
        name=legacy_issuer_name(cert, fingerprint),
        kind="legacy",
        subject=cert.subject.rfc4514_string(),
        ski_hex=ski.hex(),
        fingerprint_sha256=fingerprint,
        cert_der=cert.public_bytes(Encoding.DER),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        trust_until=trust_until,
    )


class LegacyRegistry(Protocol):
    """The inventory storage that registers legacy CAs (shared_ca.storage.inventory)."""

    def issuer_by_fingerprint(self, fingerprint_sha256: str) -> IssuerRecord | None: ...
    def register_legacy_issuer(self, issuer: NewIssuer, actor: str, now: dt.datetime) -> LegacyRegistration: ...


class IssuerList(Protocol):
    def list_issuers(self) -> list[IssuerRecord]: ...


class IssuerStorage(Protocol):
    """What registering an inventory's CAs reads and writes (shared_ca.storage)."""

    @property
    def inventory(self) -> LegacyRegistry: ...
    @property
    def issuers(self) -> IssuerList: ...


def register_issuers(
    storage: IssuerStorage,
    inventory: Inventory,
    *,
    trust_until: dt.datetime | None,
    actor: str,
    dry_run: bool,
    now: dt.datetime,
) -> tuple[dict[bytes, list[CandidateIssuer]], list[IssuerOutcome]]:
    """Register (or find) the inventory's CAs: a lookup from issuer name (DER) to candidate CAs, and
    what happened to each CA (see the module docstring for which CAs count)."""
    found: dict[bytes, list[CandidateIssuer]] = collections.defaultdict(list)
    outcomes: list[IssuerOutcome] = []
    known: set[str] = set()
    for ca in inventory.ca_certificates:
        new = new_legacy_issuer(ca, trust_until)
        if new.fingerprint_sha256 in known:
            continue
        known.add(new.fingerprint_sha256)
        name = ca.subject.public_bytes()
        existing = storage.inventory.issuer_by_fingerprint(new.fingerprint_sha256)
        if existing is not None and existing.kind != "legacy":
            if inventory.kind != "pem":
                raise InventoryError("PATH", f"CA {new.subject!r} is this gateway's own issuer {existing.name!r}")
            found[name].append(CandidateIssuer(ca, existing.id, usable=True))
            continue
        if existing is None and trust_until is None:
            if inventory.kind != "pem":
                raise InventoryError(
                    "--trust-until",
                    f"CA {new.subject!r} is imported for the first time: give the end of its migration window",
                )
            found[name].append(CandidateIssuer(ca, None, usable=False))
            continue
        if dry_run:  # say what would happen
            action = "registered"
            if existing is not None:
                moved = trust_until not in (None, existing.trust_until)
                action = "trust window moved" if moved else "unchanged"
            window = trust_until or (existing.trust_until if existing else None)
            outcomes.append(IssuerOutcome(existing.name if existing else new.name, new.subject, window, action))
            found[name].append(CandidateIssuer(ca, existing.id if existing else None, usable=True))
            continue
        registration = storage.inventory.register_legacy_issuer(new, actor, now)
        record = registration.issuer
        action = "registered" if registration.created else "trust window moved" if registration.trust_changed else ""
        outcomes.append(IssuerOutcome(record.name, record.subject, record.trust_until, action or "unchanged"))
        found[name].append(CandidateIssuer(ca, record.id, usable=True))
    if inventory.kind == "pem":  # leaves of CAs registered before
        for record in storage.issuers.list_issuers():
            if record.kind in ("legacy", "ca") and record.fingerprint_sha256 not in known:
                cert = x509.load_der_x509_certificate(record.cert_der)
                found[cert.subject.public_bytes()].append(CandidateIssuer(cert, record.id, usable=True))
    return found, outcomes


def signed_by(cert: x509.Certificate, candidates: list[CandidateIssuer]) -> CandidateIssuer | None:
    """The first of `candidates` whose key signed `cert`; None when none did."""
    for candidate in candidates:
        try:
            cert.verify_directly_issued_by(candidate.certificate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None
