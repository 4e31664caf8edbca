"""Device identity: which part of a certificate or request names the device.

One rule, configured once (`migration.identity`), applies to imported certificates and to live
SCEP and EST enrollments alike, so a device is one row whichever way it arrives:

- `cn` (default): the subject's commonName;
- `san:dns`, `san:email`, `san:uri`, `san:ip`, `san:upn`: the first subjectAltName of that type;
- `serialNumber`: the subject's serialNumber attribute (Apple and Intune devices carry their
  hardware serial there);
- `regex:PATTERN`: a regular expression searched in the RFC 4514 subject string; its group named
  `id` (or its first group, or the whole match) is the identity.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import core
from cryptography import x509
from cryptography.x509.oid import NameOID

from shared_ca.csr import UNDECODABLE, requested_sans
from shared_ca.errors import InvalidRequest
from shared_ca.policy import UPN_OID, common_name, san_type

MAX_IDENTITY = 255
SAN_KINDS = ("dns", "email", "uri", "ip", "upn")


@dataclass(frozen=True)
class IdentityRule:
    """How a device is named; `parse` builds one from its configuration text."""

    kind: str  # "cn" | "san" | "serialNumber" | "regex"
    san: str | None = None
    pattern: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> IdentityRule:
        """'cn', 'san:dns', 'serialNumber', 'regex:…'; ValueError saying what is wrong."""
        text = text.strip()
        if text in ("cn", "serialNumber"):
            return cls(text)
        if text.startswith("san:"):
            kind = text.removeprefix("san:")
            if kind not in SAN_KINDS:
                raise ValueError(f"unknown SAN type {kind!r} (one of: {', '.join(SAN_KINDS)})")
            return cls("san", san=kind)
        if text.startswith("regex:"):
            try:
                pattern = re.compile(text.removeprefix("regex:"))
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
            return cls("regex", pattern=pattern)
        raise ValueError(f"expected cn, san:TYPE, serialNumber or regex:PATTERN, got {text!r}")

    def __str__(self) -> str:
        if self.kind == "san":
            return f"san:{self.san}"
        if self.kind == "regex":
            assert self.pattern is not None
            return f"regex:{self.pattern.pattern}"
        return self.kind

    def identify(self, subject: x509.Name, sans: Sequence[x509.GeneralName] = ()) -> str | None:
        """The device identity of a subject and its SANs, or None when the rule finds nothing."""
        found = self._find(subject, sans)
        if found is None:
            return None
        found = found.strip()
        return found[:MAX_IDENTITY] or None

    def _find(self, subject: x509.Name, sans: Sequence[x509.GeneralName]) -> str | None:
        if self.kind == "cn":
            return common_name(subject)
        if self.kind == "serialNumber":
            values = subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
            value = values[0].value if values else None
            return value if isinstance(value, str) else None
        if self.kind == "san":
            for name in sans:
                if san_type(name) == self.san:
                    return _san_value(name)
            return None
        assert self.pattern is not None
        match = self.pattern.search(subject.rfc4514_string())
        if match is None:
            return None
        if "id" in self.pattern.groupindex:
            return match.group("id")
        return match.group(1) if self.pattern.groups else match.group(0)

    def of_certificate(self, certificate: x509.Certificate) -> str | None:
        """The identity a certificate names; None when the rule finds nothing or it cannot be decoded."""
        try:
            return self.identify(certificate.subject, certificate_sans(certificate) if self.kind == "san" else ())
        except UNDECODABLE:  # a hostile signer certificate: cryptography decodes names and extensions lazily
            return None

    def of_request(self, csr: x509.CertificateSigningRequest) -> str | None:
        """The identity a request names; None when the rule finds nothing or it cannot be decoded."""
        try:
            return self.identify(csr.subject, requested_sans(csr) if self.kind == "san" else ())
        except (*UNDECODABLE, InvalidRequest):  # read on refusal paths too, before (or without) load_csr
            return None


DEFAULT_IDENTITY = IdentityRule("cn")


def certificate_sans(certificate: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _san_value(name: x509.GeneralName) -> str | None:
    if isinstance(name, x509.OtherName):
        if name.type_id != UPN_OID:
            return None
        try:
            value = core.UTF8String.load(name.value).native
        except ValueError:
            return None
        return value if isinstance(value, str) else None
    return str(name.value)
