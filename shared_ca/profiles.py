"""Named certificate profiles: validity, key usage, key rules, subject and SAN rules.

A profile is immutable and built once from configuration; `profile_from_mapping` names the bad key
when the configuration is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from shared_ca.errors import AlgorithmNotAllowed, PolicyDenied
from shared_ca.keys import PublicKey

KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)

EXTENDED_KEY_USAGES: dict[str, ObjectIdentifier] = {
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "ipsec_ike": ExtendedKeyUsageOID.IPSEC_IKE,
    "smartcard_logon": ExtendedKeyUsageOID.SMARTCARD_LOGON,
    "certificate_request_agent": ObjectIdentifier("1.3.6.1.4.1.311.20.2.1"),
}

# Short names of subject attributes, as profiles and operators write them.
SUBJECT_ATTRIBUTES: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "C": NameOID.COUNTRY_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME,
    "title": NameOID.TITLE,
}
ATTRIBUTE_NAMES = {oid: name for name, oid in SUBJECT_ATTRIBUTES.items()}

SAN_TYPES = ("dns", "ip", "email", "uri", "upn", "other", "dirname")
SCEP_CIPHERS = ("des", "3des", "aes128", "aes192", "aes256", "aes128-gcm", "aes256-gcm")
SCEP_DIGESTS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
PROTOCOLS = ("scep", "est")  # the enrollment protocols a profile can be served over
KEY_TYPES = ("rsa", "ec", "ed25519")
CURVES = {"P-256": "secp256r1", "P-384": "secp384r1", "P-521": "secp521r1"}
_CURVE_BY_NAME = {name: label for label, name in CURVES.items()}
RSA_FLOOR = 2048


class ProfileError(ValueError):
    """A profile setting is wrong; `key` names it (relative to the profile)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Profile:
    """What a certificate issued under this name looks like and who may ask for it."""

    name: str
    description: str = ""
    validity_days: int = 365
    backdate_minutes: int = 5
    key_usage: tuple[str, ...] = ("digital_signature", "key_encipherment")
    extended_key_usage: tuple[str, ...] = ("client_auth",)
    key_types: tuple[str, ...] = ("rsa", "ec")
    rsa_min_bits: int = 2048
    rsa_max_bits: int = 8192
    ec_curves: tuple[str, ...] = ("P-256", "P-384", "P-521")
    subject_required: tuple[str, ...] = ("CN",)
    subject_allowed: tuple[str, ...] = tuple(SUBJECT_ATTRIBUTES)
    subject_unlisted: str = "refuse"
    subject_repeatable: tuple[str, ...] = ("OU", "DC")  # attributes that may appear more than once
    allow_multi_valued_rdns: bool = False  # e.g. CN=a+O=b, which relying parties read inconsistently
    cn_pattern: str = ""
    san_types: tuple[str, ...] = ("dns", "ip", "email", "uri", "upn")
    san_unlisted: str = "refuse"
    max_sans: int = 20
    cn_as_dns_san: bool = False
    revoke_on_renewal: bool = False
    renewal_grace_hours: int = 24
    allow_key_reuse: bool = True
    renewal_window_days: int = 0  # a certificate renews only this close to its expiry; 0: at any time
    # The protocols that may request this profile; the admin CLI always may. See profile_from_mapping
    # for the default of a profile that makes server certificates.
    protocols: tuple[str, ...] = PROTOCOLS
    scep_challenge: str = field(default="", repr=False)
    approval: str = "auto"
    scep_ciphers: tuple[str, ...] = ("des", "3des", "aes128", "aes192", "aes256", "aes128-gcm", "aes256-gcm")
    scep_digests: tuple[str, ...] = ("sha1", "sha224", "sha256", "sha384", "sha512")
    scep_renewal: bool = True
    scep_webhook_url: str = ""
    scep_webhook_secret: str = field(default="", repr=False)
    scep_webhook_timeout_seconds: int = 5
    scep_signing_time_tolerance_minutes: int = 1440  # badTime beyond this clock skew; 0: not checked
    scep_lockout_threshold: int = 10
    scep_lockout_minutes: int = 15
    # Wrong challenges on the whole profile (any address, any device) within scep_lockout_minutes that
    # suspend its static challenge for as long: the bound on untargeted guessing (scep.challenges.Lockout).
    scep_lockout_profile_threshold: int = 100
    est_pop_linking: bool = False
    est_csrattrs_enforce: bool = False
    est_required_san_types: tuple[str, ...] = ()
    est_serverkeygen: bool = True
    est_retry_after_seconds: int = 60

    def served_over(self, protocol: str) -> bool:
        """Whether clients of `protocol` ('scep', 'est') may request this profile."""
        return protocol in self.protocols

    # -- key rules --------------------------------------------------------------------------------

    def check_public_key(self, key: PublicKey) -> str:
        """Return the key's description, or refuse a key type or size this profile does not allow."""
        if isinstance(key, rsa.RSAPublicKey):
            if "rsa" not in self.key_types:
                raise AlgorithmNotAllowed(f"profile {self.name!r} does not allow RSA keys")
            if key.key_size < self.rsa_min_bits:
                raise PolicyDenied(
                    f"RSA key of {key.key_size} bits is too small: profile {self.name!r} requires "
                    f"at least {self.rsa_min_bits}"
                )
            if key.key_size > self.rsa_max_bits:
                raise PolicyDenied(
                    f"RSA key of {key.key_size} bits is too large: profile {self.name!r} allows "
                    f"at most {self.rsa_max_bits}"
                )
            return f"RSA-{key.key_size}"
        if isinstance(key, ec.EllipticCurvePublicKey):
            curve = _CURVE_BY_NAME.get(key.curve.name)
            if "ec" not in self.key_types:
                raise AlgorithmNotAllowed(f"profile {self.name!r} does not allow EC keys")
            if curve is None or curve not in self.ec_curves:
                raise AlgorithmNotAllowed(
                    f"EC curve {key.curve.name} is not allowed by profile {self.name!r} "
                    f"(allowed: {', '.join(self.ec_curves)})"
                )
            return f"EC {curve}"
        if isinstance(key, ed25519.Ed25519PublicKey):
            if "ed25519" not in self.key_types:
                raise AlgorithmNotAllowed(f"profile {self.name!r} does not allow Ed25519 keys")
            return "Ed25519"
        raise AlgorithmNotAllowed(f"key type {type(key).__name__} is not supported")

    # -- extensions -------------------------------------------------------------------------------

    def key_usage_extension(self) -> x509.KeyUsage:
        flags = {name: name in self.key_usage for name in KEY_USAGES}
        return x509.KeyUsage(encipher_only=False, decipher_only=False, **flags)

    def extended_key_usage_oids(self) -> list[ObjectIdentifier]:
        return [
            EXTENDED_KEY_USAGES[name] if name in EXTENDED_KEY_USAGES else ObjectIdentifier(name)
            for name in self.extended_key_usage
        ]


def _expect(key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind is int:
        raise ProfileError(key, f"expected {what}, got {value!r}")
    if not isinstance(value, kind):
        raise ProfileError(key, f"expected {what}, got {value!r}")
    return value


def _string_list(key: str, value: Any, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    _expect(key, value, list, "a list of strings")
    out: list[str] = []
    for item in value:
        _expect(key, item, str, "a list of strings")
        if allowed is not None and item not in allowed:
            raise ProfileError(key, f"unknown value {item!r} (allowed: {', '.join(allowed)})")
        out.append(item)
    return tuple(out)


def _validate_eku(key: str, names: tuple[str, ...]) -> None:
    for name in names:
        if name in EXTENDED_KEY_USAGES:
            continue
        valid = re.fullmatch(r"[0-2](\.\d+)+", name) is not None
        if valid:
            try:
                ObjectIdentifier(name)  # X.660: arc 2 below 0.x and 1.x must be < 40
            except ValueError:
                valid = False
        if not valid:
            raise ProfileError(
                key, f"unknown extended key usage {name!r} (a name: {', '.join(EXTENDED_KEY_USAGES)}, or an OID)"
            )


def profile_from_mapping(name: str, data: Mapping[str, Any], base: Profile | None = None) -> Profile:
    """Build a profile from configuration, over `base` (or the defaults). Raises ProfileError."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
        raise ProfileError("name", f"profile name {name!r} must be lowercase letters, digits, '-' or '_'")
    profile = replace(base, name=name) if base else Profile(name=name)
    known = {f.name for f in fields(Profile)} - {"name"}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ProfileError(key, "unknown profile setting")
        default = getattr(profile, key)
        if isinstance(default, bool):
            changes[key] = _expect(key, value, bool, "true or false")
        elif isinstance(default, int):
            changes[key] = _expect(key, value, int, "a whole number")
        elif isinstance(default, str):
            changes[key] = _expect(key, value, str, "a string")
        else:
            allowed = {
                "key_usage": KEY_USAGES,
                "key_types": KEY_TYPES,
                "ec_curves": tuple(CURVES),
                "san_types": SAN_TYPES,
                "subject_required": tuple(SUBJECT_ATTRIBUTES),
                "subject_allowed": tuple(SUBJECT_ATTRIBUTES),
                "scep_ciphers": SCEP_CIPHERS,
                "scep_digests": SCEP_DIGESTS,
                "est_required_san_types": SAN_TYPES,
                "subject_repeatable": tuple(SUBJECT_ATTRIBUTES),
                "protocols": PROTOCOLS,
            }.get(key)
            changes[key] = _string_list(key, value, allowed)
    if "protocols" not in data and makes_server_certificates(replace(profile, **changes)):
        # A server certificate from this CA impersonates any host its clients trust it for: a profile
        # that makes them is served over no protocol until an administrator says which.
        changes["protocols"] = ()
    profile = replace(profile, **changes)
    _validate(profile)
    return profile


def makes_server_certificates(profile: Profile) -> bool:
    """Whether certificates of `profile` can authenticate TLS servers: serverAuth, anyExtendedKeyUsage, or
    no extended key usage at all (RFC 5280 §4.2.1.12: then the key may be used for any purpose)."""
    ekus = set(profile.extended_key_usage)
    return (
        not ekus
        or "server_auth" in ekus
        or ExtendedKeyUsageOID.SERVER_AUTH.dotted_string in ekus
        or (ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE.dotted_string in ekus)
    )


def _validate(p: Profile) -> None:
    if not 1 <= p.validity_days <= 36500:
        raise ProfileError("validity_days", f"must be between 1 and 36500, got {p.validity_days}")
    if not 0 <= p.backdate_minutes <= 1440:
        raise ProfileError("backdate_minutes", f"must be between 0 and 1440, got {p.backdate_minutes}")
    if p.rsa_min_bits < RSA_FLOOR:
        raise ProfileError("rsa_min_bits", f"must be at least {RSA_FLOOR}, got {p.rsa_min_bits}")
    if p.rsa_max_bits < p.rsa_min_bits:
        raise ProfileError("rsa_max_bits", f"must be at least rsa_min_bits ({p.rsa_min_bits})")
    if not p.key_types:
        raise ProfileError("key_types", "must allow at least one key type")
    if "ec" in p.key_types and not p.ec_curves:
        raise ProfileError("ec_curves", "must list at least one curve when EC keys are allowed")
    if p.subject_unlisted not in ("refuse", "drop"):
        raise ProfileError("subject_unlisted", f"must be 'refuse' or 'drop', got {p.subject_unlisted!r}")
    if p.san_unlisted not in ("refuse", "drop"):
        raise ProfileError("san_unlisted", f"must be 'refuse' or 'drop', got {p.san_unlisted!r}")
    missing = [a for a in p.subject_required if a not in p.subject_allowed]
    if missing:
        raise ProfileError("subject_required", f"{', '.join(missing)} must also be in subject_allowed")
    if not 0 <= p.max_sans <= 1000:
        raise ProfileError("max_sans", f"must be between 0 and 1000, got {p.max_sans}")
    if not 0 <= p.renewal_window_days <= 36500:
        raise ProfileError("renewal_window_days", f"must be between 0 and 36500, got {p.renewal_window_days}")
    if not 0 <= p.renewal_grace_hours <= 24 * 365:
        raise ProfileError("renewal_grace_hours", f"must be between 0 and 8760, got {p.renewal_grace_hours}")
    if p.cn_pattern:
        try:
            re.compile(p.cn_pattern)
        except re.error as exc:
            raise ProfileError("cn_pattern", f"not a valid regular expression: {exc}") from exc
    _validate_eku("extended_key_usage", p.extended_key_usage)
    if p.approval not in ("auto", "manual"):
        raise ProfileError("approval", f"must be 'auto' or 'manual', got {p.approval!r}")
    _validate_scep(p)
    if not p.key_usage:
        raise ProfileError("key_usage", "must list at least one key usage")
    _validate_est(p)


def _validate_scep(p: Profile) -> None:
    if not p.scep_ciphers:
        raise ProfileError("scep_ciphers", "must allow at least one envelope cipher")
    if not p.scep_digests:
        raise ProfileError("scep_digests", "must allow at least one digest")
    if p.scep_webhook_url and not re.fullmatch(r"https?://\S+", p.scep_webhook_url):
        raise ProfileError("scep_webhook_url", f"expected an http:// or https:// URL, got {p.scep_webhook_url!r}")
    if p.scep_webhook_url and not p.scep_webhook_secret:
        raise ProfileError("scep_webhook_secret", "is required when scep_webhook_url is set")
    if not 1 <= p.scep_webhook_timeout_seconds <= 60:
        raise ProfileError(
            "scep_webhook_timeout_seconds", f"must be between 1 and 60, got {p.scep_webhook_timeout_seconds}"
        )
    if not 0 <= p.scep_signing_time_tolerance_minutes <= 525600:
        raise ProfileError(
            "scep_signing_time_tolerance_minutes",
            f"must be between 0 and 525600, got {p.scep_signing_time_tolerance_minutes}",
        )
    if not 1 <= p.scep_lockout_threshold <= 10000:
        raise ProfileError("scep_lockout_threshold", f"must be between 1 and 10000, got {p.scep_lockout_threshold}")
    if not 1 <= p.scep_lockout_minutes <= 100000:
        raise ProfileError("scep_lockout_minutes", f"must be between 1 and 100000, got {p.scep_lockout_minutes}")
    if not 1 <= p.scep_lockout_profile_threshold <= 1000000:
        raise ProfileError(
            "scep_lockout_profile_threshold", f"must be between 1 and 1000000, got {p.scep_lockout_profile_threshold}"
        )


def _validate_est(p: Profile) -> None:
    not_allowed = [t for t in p.est_required_san_types if t not in p.san_types]
    if not_allowed:
        raise ProfileError("est_required_san_types", f"{', '.join(not_allowed)} must also be in san_types")
    if not 1 <= p.est_retry_after_seconds <= 86400:
        raise ProfileError("est_retry_after_seconds", f"must be between 1 and 86400, got {p.est_retry_after_seconds}")


DEFAULT_PROFILES: dict[str, Profile] = {
    "default": Profile(
        name="default",
        description="Device and user certificates for TLS client authentication (SCEP and EST)",
    ),
    "tls-server": Profile(
        name="tls-server",
        description="TLS server certificates; the CN is copied into a DNS SAN",
        extended_key_usage=("server_auth",),
        key_usage=("digital_signature", "key_encipherment"),
        san_types=("dns", "ip"),
        cn_as_dns_san=True,
        validity_days=397,
        protocols=(),  # served over SCEP or EST only when configured: see profile_from_mapping
    ),
}

# Used by `gateway init` for the gateway's own certificates; not selectable by clients.
RA_PROFILE = Profile(
    name="scep-ra",
    description="SCEP registration authority: signs CertReps and opens request envelopes",
    validity_days=730,
    key_usage=("digital_signature", "key_encipherment"),
    extended_key_usage=("certificate_request_agent",),
    key_types=("rsa",),
    subject_unlisted="refuse",
)
# Separate RA roles (`gateway init --separate-ra-keys`), for keys that may only sign or only decrypt
# (some FIPS HSMs). Clients pick the envelope recipient by keyEncipherment (certmonger prefers a leaf
# with keyEncipherment or dataEncipherment), so the signing certificate must not carry it. Both keep
# the Certificate Request Agent EKU, as NDES's signing and encryption RA certificates do.
RA_SIGNING_PROFILE = replace(
    RA_PROFILE,
    name="scep-ra-signing",
    description="SCEP registration authority, signing role: signs CertReps and GetNextCACert replies",
    key_usage=("digital_signature",),
)
RA_ENCRYPTION_PROFILE = replace(
    RA_PROFILE,
    name="scep-ra-encryption",
    description="SCEP registration authority, encryption role: the recipient of request envelopes",
    key_usage=("key_encipherment",),
)
TLS_SERVER_PROFILE = replace(
    DEFAULT_PROFILES["tls-server"],
    name="gateway-tls",
    description="The gateway's own HTTPS listener certificate",
    san_types=("dns", "ip"),
)
