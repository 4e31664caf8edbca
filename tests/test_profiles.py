"""Profiles: every configuration setting, every refusal, and the key rules."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from shared_ca.errors import AlgorithmNotAllowed, CAError, PolicyDenied
from shared_ca.keys import PublicKey
from shared_ca.profiles import (
    DEFAULT_PROFILES,
    RA_PROFILE,
    TLS_SERVER_PROFILE,
    Profile,
    ProfileError,
    profile_from_mapping,
)
from tests.support import ec_key, ed_key, rsa_key

# -- profile_from_mapping: each setting is applied -------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        pytest.param("description", "Laptops", "Laptops", id="ok/description"),
        pytest.param("validity_days", 30, 30, id="ok/validity_days"),
        pytest.param("backdate_minutes", 0, 0, id="ok/backdate_minutes"),
        pytest.param("key_usage", ["digital_signature"], ("digital_signature",), id="ok/key_usage"),
        pytest.param(
            "extended_key_usage",
            ["code_signing", "1.3.6.1.4.1.99.1"],
            ("code_signing", "1.3.6.1.4.1.99.1"),
            id="ok/eku",
        ),
        pytest.param("key_types", ["ed25519"], ("ed25519",), id="ok/key_types"),
        pytest.param("rsa_min_bits", 3072, 3072, id="ok/rsa_min_bits"),
        pytest.param("rsa_max_bits", 4096, 4096, id="ok/rsa_max_bits"),
        pytest.param("ec_curves", ["P-384"], ("P-384",), id="ok/ec_curves"),
        pytest.param("subject_required", [], (), id="ok/subject_required"),
        pytest.param("subject_allowed", ["CN", "O"], ("CN", "O"), id="ok/subject_allowed"),
        pytest.param("subject_unlisted", "drop", "drop", id="ok/subject_unlisted"),
        pytest.param("cn_pattern", r"dev-\d+", r"dev-\d+", id="ok/cn_pattern"),
        pytest.param("san_types", ["dns"], ("dns",), id="ok/san_types"),
        pytest.param("san_unlisted", "drop", "drop", id="ok/san_unlisted"),
        pytest.param("max_sans", 0, 0, id="ok/max_sans"),
        pytest.param("cn_as_dns_san", True, True, id="ok/cn_as_dns_san"),
        pytest.param("revoke_on_renewal", True, True, id="ok/revoke_on_renewal"),
        pytest.param("renewal_grace_hours", 0, 0, id="ok/renewal_grace_hours"),
        pytest.param("allow_key_reuse", False, False, id="ok/allow_key_reuse"),
        pytest.param("renewal_window_days", 30, 30, id="ok/renewal_window_days"),
        pytest.param("protocols", ["est"], ("est",), id="ok/protocols"),
        pytest.param("subject_repeatable", ["OU"], ("OU",), id="ok/subject_repeatable"),
        pytest.param("allow_multi_valued_rdns", True, True, id="ok/allow_multi_valued_rdns"),
        pytest.param("scep_signing_time_tolerance_minutes", 0, 0, id="ok/scep_signing_time_tolerance_minutes"),
        pytest.param("scep_challenge", "s3cret", "s3cret", id="ok/scep_challenge"),
        pytest.param("approval", "manual", "manual", id="ok/approval"),
        pytest.param("scep_ciphers", ["aes256"], ("aes256",), id="ok/scep_ciphers"),
        pytest.param("scep_digests", ["md5", "sha1"], ("md5", "sha1"), id="ok/scep_digests-legacy-md5"),
        pytest.param("scep_renewal", False, False, id="ok/scep_renewal"),
        pytest.param("scep_webhook_timeout_seconds", 2, 2, id="ok/scep_webhook_timeout_seconds"),
        pytest.param("scep_lockout_threshold", 3, 3, id="ok/scep_lockout_threshold"),
        pytest.param("scep_lockout_minutes", 60, 60, id="ok/scep_lockout_minutes"),
        pytest.param("scep_lockout_profile_threshold", 500, 500, id="ok/scep_lockout_profile_threshold"),
        pytest.param("est_pop_linking", True, True, id="ok/est_pop_linking"),
        pytest.param("est_csrattrs_enforce", True, True, id="ok/est_csrattrs_enforce"),
        pytest.param("est_required_san_types", ["dns"], ("dns",), id="ok/est_required_san_types"),
        pytest.param("est_serverkeygen", False, False, id="ok/est_serverkeygen"),
        pytest.param("est_retry_after_seconds", 5, 5, id="ok/est_retry_after_seconds"),
    ],
)
def test_each_setting_is_applied(key: str, value: Any, expected: Any) -> None:
    profile = profile_from_mapping("devices", {key: value})
    assert profile.name == "devices"
    assert getattr(profile, key) == expected
    defaults = Profile(name="devices")
    # Nothing but the named setting changed.
    for other in profile.__dataclass_fields__:
        if other not in (key, "name"):
            assert getattr(profile, other) == getattr(defaults, other), other


def test_every_setting_has_a_case_above() -> None:
    """Guards the table above: a new Profile field must get its own row."""
    covered = {
        "description", "validity_days", "backdate_minutes", "key_usage", "extended_key_usage", "key_types",
        "rsa_min_bits", "rsa_max_bits", "ec_curves", "subject_required", "subject_allowed", "subject_unlisted",
        "cn_pattern", "san_types", "san_unlisted", "max_sans", "cn_as_dns_san", "revoke_on_renewal",
        "renewal_grace_hours", "allow_key_reuse", "renewal_window_days", "protocols", "subject_repeatable",
        "allow_multi_valued_rdns", "scep_signing_time_tolerance_minutes", "scep_challenge", "approval",
        "scep_ciphers", "scep_digests",
        "scep_renewal", "scep_webhook_url", "scep_webhook_secret", "scep_webhook_timeout_seconds",
        "scep_lockout_threshold", "scep_lockout_minutes", "scep_lockout_profile_threshold", "est_pop_linking",
        "est_csrattrs_enforce", "est_required_san_types", "est_serverkeygen", "est_retry_after_seconds",
    }  # fmt: skip
    assert set(Profile.__dataclass_fields__) - {"name"} == covered


def test_empty_mapping_gives_the_defaults() -> None:
    assert profile_from_mapping("devices", {}) == Profile(name="devices")


def test_mapping_over_a_base_keeps_the_base_and_renames() -> None:
    base = DEFAULT_PROFILES["tls-server"]
    profile = profile_from_mapping("web", {"validity_days": 90}, base)
    assert profile.name == "web"
    assert profile.validity_days == 90
    assert profile.extended_key_usage == ("server_auth",)
    assert profile.cn_as_dns_san is True
    assert base.validity_days == 397  # the base itself is untouched


def test_profiles_are_immutable() -> None:
    profile = profile_from_mapping("devices", {})
    with pytest.raises(AttributeError):
        profile.validity_days = 1  # type: ignore[misc]


# -- profile_from_mapping: each refusal names its key -------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        pytest.param({"validity": 30}, "validity", "unknown profile setting", id="fail/unknown-key"),
        pytest.param({"name": "other"}, "name", "unknown profile setting", id="fail/name-as-setting"),
        pytest.param({"validity_days": "30"}, "validity_days", "expected a whole number", id="fail/str-for-int"),
        pytest.param({"validity_days": 30.0}, "validity_days", "expected a whole number", id="fail/float-for-int"),
        pytest.param({"validity_days": True}, "validity_days", "expected a whole number", id="fail/bool-for-int"),
        pytest.param({"max_sans": False}, "max_sans", "expected a whole number", id="fail/bool-for-int-max-sans"),
        pytest.param({"cn_as_dns_san": 1}, "cn_as_dns_san", "expected true or false", id="fail/int-for-bool"),
        pytest.param({"allow_key_reuse": "no"}, "allow_key_reuse", "expected true or false", id="fail/str-for-bool"),
        pytest.param({"description": 5}, "description", "expected a string", id="fail/int-for-str"),
        pytest.param({"cn_pattern": None}, "cn_pattern", "expected a string", id="fail/none-for-str"),
        pytest.param({"key_usage": "digital_signature"}, "key_usage", "a list of strings", id="fail/str-for-list"),
        pytest.param({"san_types": ("dns",)}, "san_types", "a list of strings", id="fail/tuple-for-list"),
        pytest.param({"key_types": ["rsa", 1]}, "key_types", "a list of strings", id="fail/int-in-list"),
        pytest.param({"key_usage": ["sign"]}, "key_usage", "unknown value 'sign'", id="fail/unknown-key-usage"),
        pytest.param({"key_usage": ["encipher_only"]}, "key_usage", "unknown value", id="fail/encipher-only"),
        pytest.param({"key_usage": []}, "key_usage", "at least one key usage", id="fail/no-key-usage"),
        pytest.param(
            {"extended_key_usage": ["client"]},
            "extended_key_usage",
            "unknown extended key usage",
            id="fail/unknown-eku",
        ),
        pytest.param(
            {"extended_key_usage": ["3.1.2"]}, "extended_key_usage", "unknown extended key usage", id="fail/eku-bad-oid"
        ),
        pytest.param(
            {"extended_key_usage": ["1.40.1"]},
            "extended_key_usage",
            "unknown extended key usage",
            id="fail/eku-oid-arc-over-39",
        ),
        pytest.param({"key_types": ["dsa"]}, "key_types", "unknown value 'dsa'", id="fail/unknown-key-type"),
        pytest.param({"key_types": []}, "key_types", "at least one key type", id="fail/no-key-type"),
        pytest.param({"ec_curves": ["secp256k1"]}, "ec_curves", "unknown value 'secp256k1'", id="fail/unknown-curve"),
        pytest.param({"ec_curves": ["P-192"]}, "ec_curves", "unknown value 'P-192'", id="fail/p192"),
        pytest.param({"ec_curves": []}, "ec_curves", "at least one curve", id="fail/no-curve-with-ec"),
        pytest.param({"san_types": ["x400"]}, "san_types", "unknown value 'x400'", id="fail/unknown-san-type"),
        pytest.param({"protocols": ["cmp"]}, "protocols", "unknown value 'cmp'", id="fail/unknown-protocol"),
        pytest.param(
            {"subject_repeatable": ["X"]}, "subject_repeatable", "unknown value 'X'", id="fail/unknown-repeat"
        ),
        pytest.param(
            {"renewal_window_days": -1}, "renewal_window_days", "between 0 and 36500", id="fail/renewal-window-negative"
        ),
        pytest.param(
            {"scep_signing_time_tolerance_minutes": -5},
            "scep_signing_time_tolerance_minutes",
            "between 0 and 525600",
            id="fail/signing-time-tolerance-negative",
        ),
        pytest.param(
            {"subject_allowed": ["CN", "pseudonym"]}, "subject_allowed", "unknown value", id="fail/unknown-attribute"
        ),
        pytest.param({"subject_required": ["X"]}, "subject_required", "unknown value 'X'", id="fail/unknown-required"),
        pytest.param(
            {"subject_required": ["CN", "O"], "subject_allowed": ["CN"]},
            "subject_required",
            "O must also be in subject_allowed",
            id="fail/required-not-allowed",
        ),
        pytest.param(
            {"est_required_san_types": ["upn"], "san_types": ["dns"]},
            "est_required_san_types",
            "upn must also be in san_types",
            id="fail/required-san-not-allowed",
        ),
        pytest.param(
            {"est_required_san_types": ["x400"]},
            "est_required_san_types",
            "unknown value",
            id="fail/unknown-san-required",
        ),
        pytest.param(
            {"est_retry_after_seconds": 0}, "est_retry_after_seconds", "between 1 and 86400", id="fail/retry-after-0"
        ),
        pytest.param({"rsa_min_bits": 1024}, "rsa_min_bits", "at least 2048", id="fail/rsa-min-1024"),
        pytest.param({"rsa_min_bits": 2047}, "rsa_min_bits", "at least 2048", id="fail/rsa-min-2047"),
        pytest.param(
            {"rsa_min_bits": 4096, "rsa_max_bits": 3072},
            "rsa_max_bits",
            "at least rsa_min_bits",
            id="fail/max-below-min",
        ),
        pytest.param({"validity_days": 0}, "validity_days", "between 1 and 36500", id="fail/validity-0"),
        pytest.param({"validity_days": 36501}, "validity_days", "between 1 and 36500", id="fail/validity-36501"),
        pytest.param({"backdate_minutes": -1}, "backdate_minutes", "between 0 and 1440", id="fail/backdate-negative"),
        pytest.param({"backdate_minutes": 1441}, "backdate_minutes", "between 0 and 1440", id="fail/backdate-1441"),
        pytest.param({"max_sans": -1}, "max_sans", "between 0 and 1000", id="fail/max-sans-negative"),
        pytest.param({"max_sans": 1001}, "max_sans", "between 0 and 1000", id="fail/max-sans-1001"),
        pytest.param(
            {"renewal_grace_hours": -1}, "renewal_grace_hours", "between 0 and 8760", id="fail/grace-negative"
        ),
        pytest.param({"renewal_grace_hours": 8761}, "renewal_grace_hours", "between 0 and 8760", id="fail/grace-8761"),
        pytest.param(
            {"subject_unlisted": "keep"}, "subject_unlisted", "'refuse' or 'drop'", id="fail/subject-unlisted"
        ),
        pytest.param({"san_unlisted": "allow"}, "san_unlisted", "'refuse' or 'drop'", id="fail/san-unlisted"),
        pytest.param({"cn_pattern": "dev-("}, "cn_pattern", "not a valid regular expression", id="fail/bad-regex"),
        pytest.param({"approval": "later"}, "approval", "'auto' or 'manual'", id="fail/approval"),
        pytest.param({"scep_ciphers": ["rc2"]}, "scep_ciphers", "unknown value 'rc2'", id="fail/scep-cipher"),
        pytest.param({"scep_ciphers": []}, "scep_ciphers", "at least one", id="fail/scep-ciphers-empty"),
        pytest.param({"scep_digests": ["sha3"]}, "scep_digests", "unknown value 'sha3'", id="fail/scep-digest"),
        pytest.param({"scep_digests": []}, "scep_digests", "at least one", id="fail/scep-digests-empty"),
        pytest.param({"scep_webhook_url": "ftp://x"}, "scep_webhook_url", "http://", id="fail/webhook-url"),
        pytest.param(
            {"scep_webhook_url": "https://mdm.example/check"}, "scep_webhook_secret", "required", id="fail/webhook-key"
        ),
        pytest.param(
            {"scep_webhook_timeout_seconds": 0},
            "scep_webhook_timeout_seconds",
            "between 1 and 60",
            id="fail/webhook-timeout",
        ),
        pytest.param({"scep_lockout_threshold": 0}, "scep_lockout_threshold", "between 1", id="fail/lockout-0"),
        pytest.param({"scep_lockout_minutes": 0}, "scep_lockout_minutes", "between 1", id="fail/lockout-minutes-0"),
        pytest.param(
            {"scep_lockout_profile_threshold": 0},
            "scep_lockout_profile_threshold",
            "between 1",
            id="fail/lockout-profile-threshold-0",
        ),
    ],
)
def test_profile_from_mapping_refuses(data: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message) as caught:
        profile_from_mapping("devices", data)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="fail/empty"),
        pytest.param("Devices", id="fail/uppercase"),
        pytest.param("my profile", id="fail/space"),
        pytest.param("-devices", id="fail/leading-dash"),
        pytest.param("dev.ices", id="fail/dot"),
        pytest.param("../etc", id="fail/path"),
        pytest.param("a" * 65, id="fail/too-long"),
    ],
)
def test_bad_profile_name_refused(name: str) -> None:
    with pytest.raises(ProfileError, match="must be lowercase") as caught:
        profile_from_mapping(name, {})
    assert caught.value.key == "name"


@pytest.mark.parametrize("name", ["a", "0", "tls-server", "wifi_2", "a" * 64])
def test_good_profile_names(name: str) -> None:
    assert profile_from_mapping(name, {}).name == name


def test_a_base_with_bad_settings_is_refused_too() -> None:
    """Validation runs on the merged result, so a bad base cannot sneak through."""
    bad_base = Profile(name="x", validity_days=0)
    with pytest.raises(ProfileError) as caught:
        profile_from_mapping("devices", {}, bad_base)
    assert caught.value.key == "validity_days"


# -- extensions ----------------------------------------------------------------------------------


def test_key_usage_extension_sets_exactly_the_listed_bits() -> None:
    profile = profile_from_mapping("devices", {"key_usage": ["digital_signature", "key_agreement"]})
    usage = profile.key_usage_extension()
    assert usage.digital_signature
    assert usage.key_agreement
    assert not usage.key_encipherment
    assert not usage.key_cert_sign
    assert not usage.crl_sign
    assert not usage.encipher_only
    assert not usage.decipher_only


def test_extended_key_usage_names_and_oids() -> None:
    profile = profile_from_mapping(
        "devices", {"extended_key_usage": ["client_auth", "certificate_request_agent", "1.3.6.1.4.1.99.1"]}
    )
    assert profile.extended_key_usage_oids() == [
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ObjectIdentifier("1.3.6.1.4.1.311.20.2.1"),
        ObjectIdentifier("1.3.6.1.4.1.99.1"),
    ]


def test_built_in_profiles_pass_their_own_validation() -> None:
    for profile in (*DEFAULT_PROFILES.values(), RA_PROFILE, TLS_SERVER_PROFILE):
        assert profile_from_mapping(profile.name, {}, profile) == profile
        profile.extended_key_usage_oids()


# -- check_public_key ------------------------------------------------------------------------------

DEFAULT = Profile(name="default")
RSA_ONLY = Profile(name="rsa-only", key_types=("rsa",))
EC_ONLY = Profile(name="ec-only", key_types=("ec",), ec_curves=("P-256",))
WITH_ED25519 = Profile(name="modern", key_types=("rsa", "ec", "ed25519"))
RSA_2048_ONLY = Profile(name="rsa-2048", key_types=("rsa",), rsa_min_bits=2048, rsa_max_bits=2048)


def _public(kind: str) -> PublicKey:
    if kind.startswith("rsa-"):
        return rsa_key(int(kind.removeprefix("rsa-"))).public_key()
    if kind == "ed25519":
        return ed_key().public_key()
    curves: dict[str, ec.EllipticCurve] = {
        "p256": ec.SECP256R1(),
        "p384": ec.SECP384R1(),
        "p521": ec.SECP521R1(),
        "secp256k1": ec.SECP256K1(),
    }
    return ec_key(curves[kind]).public_key()


@pytest.mark.parametrize(
    ("profile", "kind", "description"),
    [
        pytest.param(DEFAULT, "rsa-2048", "RSA-2048", id="ok/rsa-2048"),
        pytest.param(RSA_2048_ONLY, "rsa-2048", "RSA-2048", id="ok/rsa-2048-at-max"),
        pytest.param(DEFAULT, "p256", "EC P-256", id="ok/p256"),
        pytest.param(DEFAULT, "p384", "EC P-384", id="ok/p384"),
        pytest.param(DEFAULT, "p521", "EC P-521", id="ok/p521"),
        pytest.param(EC_ONLY, "p256", "EC P-256", id="ok/p256-ec-only"),
        pytest.param(WITH_ED25519, "ed25519", "Ed25519", id="ok/ed25519-listed"),
    ],
)
def test_check_public_key_accepts(profile: Profile, kind: str, description: str) -> None:
    assert profile.check_public_key(_public(kind)) == description


@pytest.mark.parametrize(
    ("profile", "kind", "error", "message"),
    [
        pytest.param(DEFAULT, "rsa-1024", PolicyDenied, "1024 bits is too small", id="fail/rsa-1024"),
        pytest.param(RSA_2048_ONLY, "rsa-2304", PolicyDenied, "2304 bits is too large", id="fail/rsa-too-large"),
        pytest.param(EC_ONLY, "rsa-2048", AlgorithmNotAllowed, "does not allow RSA", id="fail/rsa-not-listed"),
        pytest.param(DEFAULT, "secp256k1", AlgorithmNotAllowed, "secp256k1 is not allowed", id="fail/secp256k1"),
        pytest.param(EC_ONLY, "p384", AlgorithmNotAllowed, "secp384r1 is not allowed", id="fail/p384-not-listed"),
        pytest.param(RSA_ONLY, "p256", AlgorithmNotAllowed, "does not allow EC", id="fail/ec-not-listed"),
        pytest.param(DEFAULT, "ed25519", AlgorithmNotAllowed, "does not allow Ed25519", id="fail/ed25519-not-listed"),
    ],
)
def test_check_public_key_refuses(profile: Profile, kind: str, error: type[CAError], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        profile.check_public_key(_public(kind))
    assert type(caught.value) is error


def test_unsupported_key_type_refused() -> None:
    key = x25519.X25519PrivateKey.generate().public_key()  # a key-agreement key cannot sign a CSR
    with pytest.raises(AlgorithmNotAllowed, match="not supported"):
        DEFAULT.check_public_key(key)
