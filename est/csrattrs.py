"""CSR attributes per label (RFC 7030 §4.5, in the template style of RFC 9908), and their enforcement.

What /csrattrs announces is derived from the label's profile, so the answer and the enforcement
can never disagree: the challengePassword OID when the profile binds CSRs to the TLS channel
(RFC 7030 §3.5); one attribute per allowed key algorithm (id-ecPublicKey with the allowed curves,
rsaEncryption with the smallest allowed size, RFC 9908 §3.3); and an extensionRequest whose
Extensions carry the key usages the CA will set and, with an empty value for the client to fill
in, the subjectAltName types the profile requires (RFC 9908 §3.4).
"""

from __future__ import annotations

from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509

from shared_ca.csr import requested_sans
from shared_ca.policy import san_type
from shared_ca.profiles import SUBJECT_ATTRIBUTES, Profile

CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"  # noqa: S105 - an OID, not a secret
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
ED25519 = "1.3.101.112"
_CURVE_OIDS = {"P-256": "1.2.840.10045.3.1.7", "P-384": "1.3.132.0.34", "P-521": "1.3.132.0.35"}
_KEY_USAGE_BITS = {
    "digital_signature": "digital_signature",
    "content_commitment": "non_repudiation",
    "key_encipherment": "key_encipherment",
    "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement",
    "key_cert_sign": "key_cert_sign",
    "crl_sign": "crl_sign",
}
# An empty GeneralName of each type, as DER: "the client fills this in" (RFC 9908 §3.4).
_EMPTY_SAN = {"email": b"\x81\x00", "dns": b"\x82\x00", "uri": b"\x86\x00", "ip": b"\x87\x00"}


def _extension(oid: str, critical: bool, value: core.Asn1Value) -> asn1_x509.Extension:
    extension = asn1_x509.Extension()
    extension["extn_id"] = asn1_x509.ExtensionId(oid)
    extension["critical"] = critical
    extension["extn_value"] = core.ParsableOctetString(value.dump())
    return extension


def _empty_general_names(types: tuple[str, ...]) -> core.Asn1Value:
    # Types with no empty form (upn, other, dirname) are still enforced; they are not templated.
    body = b"".join(_EMPTY_SAN[kind] for kind in types if kind in _EMPTY_SAN)
    return core.Any.load(b"\x30" + _der_length(len(body)) + body)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def template(profile: Profile) -> tuple[list[str], list[tuple[str, list[bytes]]]]:
    """The bare OIDs and attributes (OID, DER values) /csrattrs answers for `profile`."""
    oids: list[str] = []
    attributes: list[tuple[str, list[bytes]]] = []
    if profile.est_pop_linking:
        oids.append(CHALLENGE_PASSWORD)
    if "ec" in profile.key_types:
        attributes.append((EC_PUBLIC_KEY, [core.ObjectIdentifier(_CURVE_OIDS[c]).dump() for c in profile.ec_curves]))
    if "rsa" in profile.key_types:
        attributes.append((RSA_ENCRYPTION, [core.Integer(profile.rsa_min_bits).dump()]))
    if "ed25519" in profile.key_types:
        oids.append(ED25519)
    extensions = [
        _extension(
            "2.5.29.15",
            True,
            asn1_x509.KeyUsage({_KEY_USAGE_BITS[name] for name in profile.key_usage}),
        )
    ]
    ekus = [oid.dotted_string for oid in profile.extended_key_usage_oids()]
    if ekus:
        extensions.append(_extension("2.5.29.37", False, asn1_x509.ExtKeyUsageSyntax(ekus)))
    if profile.est_required_san_types:
        extensions.append(_extension("2.5.29.17", False, _empty_general_names(profile.est_required_san_types)))
    attributes.append((EXTENSION_REQUEST, [asn1_x509.Extensions(extensions).dump()]))
    return oids, attributes


def missing(profile: Profile, csr: x509.CertificateSigningRequest, challenge_password: str | None) -> list[str]:
    """What the CSR lacks of the template, in words a client's operator understands (empty: nothing)."""
    lacking: list[str] = []
    if profile.est_pop_linking and challenge_password is None:
        lacking.append("a challengePassword carrying the TLS channel binding (tls-unique)")
    present = {san_type(name) for name in requested_sans(csr)}
    for kind in profile.est_required_san_types:
        if kind not in present:
            lacking.append(f"a subjectAltName of type {kind}")
    for attribute in profile.subject_required:
        if not csr.subject.get_attributes_for_oid(SUBJECT_ATTRIBUTES[attribute]):
            lacking.append(f"the subject attribute {attribute}")
    return lacking
