"""CA rollover: which of our CAs issues now, and the certificates that link an old CA to its successor.

Our CAs are issuers of four kinds: 'ca' issues; 'next' is prepared by a rollover (published by SCEP
GetNextCACert and EST /cacerts) and starts issuing at its `activates_at`; 'previous' is a CA a
rollover replaced, which no longer issues but still publishes CRLs and answers OCSP for its
certificates until they have expired; 'retired' is done. A next CA whose activation time has come
issues even before its row says 'ca' (the kinds are brought in line by `Issuers.activate_due`), so
every worker switches at that time, whoever writes the change.

The root key update certificates are RFC 4210 §4.4's: NewWithOld (the new CA's key certified by the
old CA) lets a relying party that trusts only the old root accept the new CA's certificates, and
OldWithNew (the old CA's key certified by the new CA) the reverse. RFC 7030 §4.1.3 has EST /cacerts
serve them with the current root.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shared_ca.authority import signature_hash
from shared_ca.errors import KeyMaterialError
from shared_ca.keys import PrivateKey
from shared_ca.serials import new_serial
from shared_ca.storage.issuers import IssuerRecord

ISSUING, NEXT, PREVIOUS, RETIRED = "ca", "next", "previous", "retired"


@dataclass(frozen=True)
class CaRoles:
    """Our CAs at one moment: the one that issues, the one prepared to follow it, the ones winding down."""

    current: IssuerRecord
    next: IssuerRecord | None
    previous: tuple[IssuerRecord, ...]  # newest first

    @property
    def switch_at(self) -> dt.datetime | None:
        """When the next CA starts issuing (a scheduled activation), if it is scheduled."""
        return self.next.activates_at if self.next is not None else None

    def root_key_update(self) -> tuple[bytes, ...]:
        """The DER certificates EST /cacerts serves after the current CA's chain while a rollover is under
        way (RFC 7030 §4.1.3): before activation NewWithNew (the next CA), NewWithOld and OldWithNew;
        after it OldWithOld (the previous CA), OldWithNew and NewWithOld. Empty otherwise."""
        following = self.next
        if following is not None and following.rollover_of == self.current.id:
            return _links(following.cert_der, following)
        if self.current.rollover_of is not None:
            replaced = [p for p in self.previous if p.id == self.current.rollover_of]
            if replaced:
                return _links(replaced[0].cert_der, self.current)
        return ()


def _links(other_root: bytes, newer: IssuerRecord) -> tuple[bytes, ...]:
    if newer.new_with_old is None or newer.old_with_new is None:
        return (other_root,)
    return (other_root, newer.new_with_old, newer.old_with_new)


def ca_roles(issuers: Sequence[IssuerRecord], now: dt.datetime) -> CaRoles:
    """The roles of our CAs at `now` (KeyMaterialError when there is no issuing CA at all)."""
    issuing = [i for i in issuers if i.kind == ISSUING]
    following = [i for i in issuers if i.kind == NEXT]
    winding_down = [i for i in issuers if i.kind == PREVIOUS]
    due = [i for i in following if i.activates_at is not None and i.activates_at <= now]
    if due:
        current, upcoming, earlier = due[-1], None, [*issuing, *winding_down]
    elif issuing:
        current, upcoming, earlier = issuing[-1], following[-1] if following else None, [*issuing[:-1], *winding_down]
    else:
        raise KeyMaterialError("the database has no issuing CA: was `gateway init` run on this database?")
    return CaRoles(current, upcoming, tuple(sorted(earlier, key=lambda i: i.id, reverse=True)))


def cross_certificate(
    subject_ca: x509.Certificate, signer_ca: x509.Certificate, signer_key: PrivateKey, now: dt.datetime
) -> x509.Certificate:
    """`subject_ca`'s name and key certified by `signer_ca` (RFC 4210 §4.4: NewWithOld when the subject is
    the new CA, OldWithNew when it is the old one). Valid from now until the earlier of the two CAs'
    ends; the subject's constraints, key usage and key identifier, the signer's key identifier."""
    signer_ski = signer_ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(subject_ca.not_valid_after_utc, signer_ca.not_valid_after_utc)
    if not_after <= now:
        raise KeyMaterialError("a CA to be linked by a root key update certificate has expired")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_ca.subject)
        .issuer_name(signer_ca.subject)
        .public_key(subject_ca.public_key())
        .serial_number(new_serial())
        .not_valid_before(max(now - dt.timedelta(minutes=5), subject_ca.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(signer_ski), critical=False)
    )
    for extension in subject_ca.extensions:
        if isinstance(extension.value, x509.BasicConstraints | x509.KeyUsage | x509.SubjectKeyIdentifier):
            builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(signer_key, signature_hash(signer_key))


@dataclass(frozen=True)
class RootKeyUpdate:
    """The two certificates that link an old CA and a new one, as DER."""

    new_with_old: bytes
    old_with_new: bytes


def link_certificates(
    old_ca: x509.Certificate,
    old_key: PrivateKey,
    new_ca: x509.Certificate,
    new_key: PrivateKey,
    now: dt.datetime,
) -> RootKeyUpdate:
    """NewWithOld and OldWithNew for a rollover from `old_ca` to `new_ca`."""
    return RootKeyUpdate(
        new_with_old=cross_certificate(new_ca, old_ca, old_key, now).public_bytes(Encoding.DER),
        old_with_new=cross_certificate(old_ca, new_ca, new_key, now).public_bytes(Encoding.DER),
    )
