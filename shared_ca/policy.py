"""The issuance policy: from a request and a profile to exactly what will be signed, or a refusal.

`authorize_*` returns an IssuancePolicy (subject, SANs, key, validity) rather than a yes/no, so the
signer never re-reads the request.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

from asn1crypto import core
from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from shared_ca.csr import requested_sans
from shared_ca.errors import PolicyDenied
from shared_ca.keys import PublicKey
from shared_ca.profiles import ATTRIBUTE_NAMES, SUBJECT_ATTRIBUTES, Profile

UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators: nothing a name needs,
# and what forges log lines, splits CSV rows and hides text on terminals.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HOSTNAME = re.compile(
    r"(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}"
    r"[A-Za-z0-9_])?\.?"
)


@dataclass(frozen=True)
class IssuancePolicy:
    """Exactly what the CA will sign."""

    profile: Profile
    subject: x509.Name
    sans: tuple[x509.GeneralName, ...]
    public_key: PublicKey
    key_description: str
    not_before: dt.datetime
    not_after: dt.datetime


def san_type(name: x509.GeneralName) -> str:
    """The profile's name for a SAN entry's type."""
    if isinstance(name, x509.DNSName):
        return "dns"
    if isinstance(name, x509.IPAddress):
        return "ip"
    if isinstance(name, x509.RFC822Name):
        return "email"
    if isinstance(name, x509.UniformResourceIdentifier):
        return "uri"
    if isinstance(name, x509.OtherName):
        return "upn" if name.type_id == UPN_OID else "other"
    if isinstance(name, x509.DirectoryName):
        return "dirname"
    return "unknown"


def san_text(name: x509.GeneralName) -> str:
    """'dns:host.example', 'ip:10.0.0.1', ... for storage and display."""
    kind = san_type(name)
    if isinstance(name, x509.OtherName):
        return f"{kind}:{name.type_id.dotted_string}"
    if isinstance(name, x509.DirectoryName):
        return f"{kind}:{name.value.rfc4514_string()}"
    return f"{kind}:{name.value}"


def attribute_name(oid: ObjectIdentifier) -> str:
    return ATTRIBUTE_NAMES.get(oid, oid.dotted_string)


def common_name(subject: x509.Name) -> str | None:
    values = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _check_text(what: str, value: object) -> None:
    if isinstance(value, str) and _CONTROL.search(value):
        raise PolicyDenied(f"{what} contains a control character", detail=f"{what}: {value!r}")


def _check_subject_shape(profile: Profile, subject: x509.Name) -> None:
    """Refuse what relying parties read inconsistently: multi-valued RDNs, an attribute given twice
    (which CN is the name?), and control characters."""
    seen: set[ObjectIdentifier] = set()
    for rdn in subject.rdns:
        if len(rdn) > 1 and not profile.allow_multi_valued_rdns:
            raise PolicyDenied(
                f"the subject has a multi-valued RDN, which profile {profile.name!r} does not allow",
                detail=f"RDN {rdn.rfc4514_string()!r}",
            )
        for attr in rdn:
            name = attribute_name(attr.oid)
            _check_text(f"subject attribute {name}", attr.value)
            if attr.oid in seen and name not in profile.subject_repeatable:
                raise PolicyDenied(f"the subject names {name} more than once (profile {profile.name!r})")
            seen.add(attr.oid)


def _filter_subject(profile: Profile, subject: x509.Name) -> x509.Name:
    _check_subject_shape(profile, subject)
    kept: list[x509.RelativeDistinguishedName] = []
    for rdn in subject.rdns:
        attrs = []
        for attr in rdn:
            name = attribute_name(attr.oid)
            if name in profile.subject_allowed:
                attrs.append(attr)
            elif profile.subject_unlisted == "refuse":
                raise PolicyDenied(f"subject attribute {name} is not allowed by profile {profile.name!r}")
        if attrs:
            kept.append(x509.RelativeDistinguishedName(attrs))
    result = x509.Name(kept)
    for required in profile.subject_required:
        if not result.get_attributes_for_oid(SUBJECT_ATTRIBUTES[required]):
            raise PolicyDenied(f"subject must contain {required} (profile {profile.name!r})")
    if profile.cn_pattern:
        cn = common_name(result) or ""
        if not re.fullmatch(profile.cn_pattern, cn):
            raise PolicyDenied(f"subject CN {cn!r} does not match the pattern of profile {profile.name!r}")
    return result


def _check_san_value(name: x509.GeneralName) -> None:
    if isinstance(name, x509.DirectoryName):
        for attr in name.value:
            _check_text("a directoryName subjectAltName", attr.value)
    elif isinstance(name, x509.OtherName):
        if name.type_id == UPN_OID:
            try:
                _check_text("subjectAltName upn", core.UTF8String.load(name.value).native)
            except ValueError:
                raise PolicyDenied("subjectAltName upn is not a UTF8String") from None
    elif not isinstance(name, x509.RegisteredID | x509.IPAddress):
        _check_text(f"subjectAltName {san_type(name)}", name.value)
    if isinstance(name, x509.DNSName) and (len(name.value) > 253 or not _HOSTNAME.fullmatch(name.value)):
        raise PolicyDenied(f"subjectAltName DNS name {name.value!r} is not a valid host name")


def _filter_sans(profile: Profile, subject: x509.Name, sans: list[x509.GeneralName]) -> tuple[x509.GeneralName, ...]:
    kept: list[x509.GeneralName] = []
    for name in sans:
        kind = san_type(name)
        if kind not in profile.san_types:
            if profile.san_unlisted == "refuse":
                raise PolicyDenied(f"subjectAltName type {kind} is not allowed by profile {profile.name!r}")
            continue
        _check_san_value(name)
        if name not in kept:
            kept.append(name)
    if profile.cn_as_dns_san:
        cn = common_name(subject)
        if cn:
            entry: x509.GeneralName
            try:
                entry = x509.IPAddress(ipaddress.ip_address(cn))
            except ValueError:
                entry = x509.DNSName(cn)
                _check_san_value(entry)
            if entry not in kept:
                kept.insert(0, entry)
    if len(kept) > profile.max_sans:
        raise PolicyDenied(f"{len(kept)} subjectAltNames requested; profile {profile.name!r} allows {profile.max_sans}")
    return tuple(kept)


def _validity(profile: Profile, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    return now - dt.timedelta(minutes=profile.backdate_minutes), now + dt.timedelta(days=profile.validity_days)


def authorize_request(
    profile: Profile,
    subject: x509.Name,
    sans: list[x509.GeneralName],
    public_key: PublicKey,
    now: dt.datetime,
) -> IssuancePolicy:
    """Decide what to issue for a new enrollment; raises PolicyDenied or AlgorithmNotAllowed."""
    key_description = profile.check_public_key(public_key)
    kept_subject = _filter_subject(profile, subject)
    kept_sans = _filter_sans(profile, kept_subject, sans)
    if not kept_subject.rdns and not kept_sans:
        raise PolicyDenied("the request has neither a subject nor a subjectAltName")
    not_before, not_after = _validity(profile, now)
    return IssuancePolicy(profile, kept_subject, kept_sans, public_key, key_description, not_before, not_after)


def authorize_csr(profile: Profile, csr: x509.CertificateSigningRequest, now: dt.datetime) -> IssuancePolicy:
    """authorize_request over a verified CSR."""
    return authorize_request(profile, csr.subject, requested_sans(csr), csr.public_key(), now)
