"""CSR decoding and the issuance policy: what a request may become, or why it is refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from shared_ca.authority import CertificateAuthority
from shared_ca.csr import load_csr, requested_sans
from shared_ca.errors import AlgorithmNotAllowed, BadSignature, InvalidRequest, PolicyDenied
from shared_ca.keys import public_key_bytes
from shared_ca.policy import (
    UPN_OID,
    authorize_csr,
    authorize_request,
    common_name,
    san_text,
    san_type,
)
from shared_ca.profiles import Profile
from tests.support import csr_der, csr_pem, ec_key, ed_key, make_csr, rsa_key, subject

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
PROFILE = Profile(name="default")
KEY = ec_key()


def _dns(*names: str) -> list[x509.GeneralName]:
    return [x509.DNSName(n) for n in names]


# -- load_csr ------------------------------------------------------------------------------------


def test_load_csr_pem_and_der() -> None:
    csr = make_csr(name=subject("pem-device"), dns=["a.example"])
    for data in (csr_pem(csr), csr_der(csr)):
        loaded = load_csr(data)
        assert loaded.subject == csr.subject
        assert requested_sans(loaded) == [x509.DNSName("a.example")]


def test_load_csr_accepts_new_certificate_request_header() -> None:
    """Windows certreq and some SCEP clients write the pre-RFC 7468 label."""
    pem = csr_pem(make_csr(name=subject("legacy"))).replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")
    assert pem.startswith(b"-----BEGIN NEW CERTIFICATE REQUEST-----")
    assert common_name(load_csr(pem).subject) == "legacy"


def test_load_csr_with_surrounding_text() -> None:
    pem = b"Subject: whatever\n" + csr_pem(make_csr(name=subject("framed"))) + b"trailer\n"
    assert common_name(load_csr(pem).subject) == "framed"


def test_load_csr_rsa_and_ed25519() -> None:
    loaded = load_csr(csr_der(make_csr(rsa_key()))).public_key()
    assert public_key_bytes(loaded) == public_key_bytes(rsa_key().public_key())
    assert load_csr(csr_der(make_csr(ed_key()))).is_signature_valid


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="fail/empty"),
        pytest.param(b"garbage", id="fail/garbage"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="fail/wrong-der"),
        pytest.param(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", id="fail/pem"),
        pytest.param(b"-----BEGIN CERTIFICATE REQUEST-----\n", id="fail/pem-unterminated"),
    ],
)
def test_load_csr_garbage_is_invalid_request(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not a PKCS#10"):
        load_csr(data)


def test_load_csr_truncated_der_is_invalid_request() -> None:
    der = csr_der(make_csr())
    with pytest.raises(InvalidRequest):
        load_csr(der[:-10])


def test_load_csr_certificate_instead_of_request(authority: CertificateAuthority) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    with pytest.raises(InvalidRequest):
        load_csr(authority.certificate.public_bytes(Encoding.DER))


@pytest.mark.parametrize("form", ["der", "pem"])
def test_load_csr_bad_signature(form: str) -> None:
    der = bytearray(csr_der(make_csr(rsa_key(), subject("tampered"))))
    der[-1] ^= 0x01  # the last octet of the RSA signature
    tampered = x509.load_der_x509_csr(bytes(der))
    data = bytes(der) if form == "der" else csr_pem(tampered)
    with pytest.raises(BadSignature):
        load_csr(data)


def test_load_csr_signed_by_another_key_is_bad_signature() -> None:
    """The CSR's key and its signer differ: a forged request."""
    good = make_csr(rsa_key(), subject("victim"))
    forged = bytearray(csr_der(good))
    other = csr_der(make_csr(rsa_key(2048, fresh=True), subject("victim")))
    # Same length layout (same subject, same key size): splice the other request's signature in.
    assert len(other) == len(forged)
    forged[-256:] = other[-256:]
    with pytest.raises(BadSignature):
        load_csr(bytes(forged))


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "text"),
    [
        pytest.param(x509.DNSName("a.example"), "dns", "dns:a.example", id="dns"),
        pytest.param(x509.IPAddress(ipaddress.ip_address("10.0.0.1")), "ip", "ip:10.0.0.1", id="ip"),
        pytest.param(x509.IPAddress(ipaddress.ip_address("2001:db8::1")), "ip", "ip:2001:db8::1", id="ipv6"),
        pytest.param(x509.RFC822Name("a@b.example"), "email", "email:a@b.example", id="email"),
        pytest.param(x509.UniformResourceIdentifier("urn:x"), "uri", "uri:urn:x", id="uri"),
        pytest.param(x509.OtherName(UPN_OID, b"\x0c\x01a"), "upn", "upn:1.3.6.1.4.1.311.20.2.3", id="upn"),
        pytest.param(x509.OtherName(x509.ObjectIdentifier("1.2.3"), b"\x05\x00"), "other", "other:1.2.3", id="other"),
        pytest.param(x509.DirectoryName(subject("dir")), "dirname", "dirname:CN=dir", id="dirname"),
    ],
)
def test_san_type_and_text(name: x509.GeneralName, kind: str, text: str) -> None:
    assert san_type(name) == kind
    assert san_text(name) == text


def test_registered_id_is_an_unknown_san_type_and_refused() -> None:
    rid = x509.RegisteredID(x509.ObjectIdentifier("1.2.3"))
    assert san_type(rid) == "unknown"
    with pytest.raises(PolicyDenied, match="type unknown is not allowed"):
        authorize_request(PROFILE, subject(), [rid], KEY.public_key(), NOW)


# -- authorize_request: subject ------------------------------------------------------------------


def test_default_profile_issues_a_plain_request() -> None:
    policy = authorize_request(PROFILE, subject("dev1", O="Example"), _dns("dev1.example"), KEY.public_key(), NOW)
    assert policy.subject == subject("dev1", O="Example")
    assert policy.sans == (x509.DNSName("dev1.example"),)
    assert policy.key_description == "EC P-256"
    assert policy.not_before == NOW - dt.timedelta(minutes=5)
    assert policy.not_after == NOW + dt.timedelta(days=365)
    assert policy.profile is PROFILE


def test_validity_follows_the_profile() -> None:
    profile = replace(PROFILE, validity_days=7, backdate_minutes=0)
    policy = authorize_request(profile, subject(), [], KEY.public_key(), NOW)
    assert (policy.not_before, policy.not_after) == (NOW, NOW + dt.timedelta(days=7))


@pytest.mark.parametrize(
    ("profile", "name", "expected"),
    [
        pytest.param(PROFILE, subject("d", O="Org", C="DE"), subject("d", O="Org", C="DE"), id="ok/all-allowed"),
        pytest.param(
            replace(PROFILE, subject_allowed=("CN",), subject_unlisted="drop"),
            subject("d", O="Org", OU="Unit"),
            subject("d"),
            id="ok/drop-unlisted",
        ),
        pytest.param(
            replace(PROFILE, subject_unlisted="drop"),
            subject("d", pseudonym="p"),
            subject("d"),
            id="ok/drop-unknown-attribute",
        ),
        pytest.param(replace(PROFILE, cn_pattern=r"dev-\d+"), subject("dev-42"), subject("dev-42"), id="ok/cn-pattern"),
        pytest.param(
            replace(PROFILE, subject_required=("CN", "O")),
            subject("d", O="Org"),
            subject("d", O="Org"),
            id="ok/required-present",
        ),
    ],
)
def test_subject_kept(profile: Profile, name: x509.Name, expected: x509.Name) -> None:
    assert authorize_request(profile, name, [], KEY.public_key(), NOW).subject == expected


@pytest.mark.parametrize(
    ("profile", "name", "message"),
    [
        pytest.param(
            replace(PROFILE, subject_allowed=("CN",)),
            subject("d", O="Org"),
            "subject attribute O is not allowed",
            id="fail/unlisted-refused",
        ),
        pytest.param(
            PROFILE, subject("d", pseudonym="p"), r"subject attribute 2\.5\.4\.65 is not allowed", id="fail/unknown-oid"
        ),
        pytest.param(PROFILE, subject(None, O="Org"), "subject must contain CN", id="fail/cn-required"),
        pytest.param(
            replace(PROFILE, subject_allowed=("CN",), subject_unlisted="drop"),
            subject(None, O="Org"),
            "subject must contain CN",
            id="fail/cn-required-after-drop",
        ),
        pytest.param(
            replace(PROFILE, subject_required=("CN", "O")), subject("d"), "subject must contain O", id="fail/o-required"
        ),
        pytest.param(
            replace(PROFILE, cn_pattern=r"dev-\d+"),
            subject("laptop"),
            "does not match the pattern",
            id="fail/cn-pattern",
        ),
        pytest.param(
            replace(PROFILE, cn_pattern=r"dev-\d+"),
            subject("dev-42x"),
            "does not match the pattern",
            id="fail/cn-pattern-is-full-match",
        ),
        pytest.param(
            replace(PROFILE, cn_pattern=r"dev-\d+", subject_required=()),
            subject(None, O="Org"),
            "CN '' does not match",
            id="fail/cn-pattern-without-cn",
        ),
    ],
)
def test_subject_refused(profile: Profile, name: x509.Name, message: str) -> None:
    with pytest.raises(PolicyDenied, match=message):
        authorize_request(profile, name, _dns("ok.example"), KEY.public_key(), NOW)


def test_multi_valued_rdn_keeps_only_allowed_members() -> None:
    rdn = x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.COMMON_NAME, "d"), x509.NameAttribute(NameOID.PSEUDONYM, "p")]
    )
    profile = replace(PROFILE, subject_unlisted="drop", allow_multi_valued_rdns=True)
    policy = authorize_request(profile, x509.Name([rdn]), [], KEY.public_key(), NOW)
    assert policy.subject == subject("d")
    with pytest.raises(PolicyDenied, match="multi-valued RDN"):  # refused unless the profile allows them
        authorize_request(replace(profile, allow_multi_valued_rdns=False), x509.Name([rdn]), [], KEY.public_key(), NOW)


# -- authorize_request: SANs ---------------------------------------------------------------------

URI = x509.UniformResourceIdentifier("https://device.example/id")
IP = x509.IPAddress(ipaddress.ip_address("192.0.2.7"))
DNS_ONLY = replace(PROFILE, san_types=("dns",))


@pytest.mark.parametrize(
    ("profile", "name", "sans", "expected"),
    [
        pytest.param(PROFILE, subject(), [], (), id="ok/none"),
        pytest.param(
            PROFILE, subject(), [*_dns("a.example"), IP, URI], (x509.DNSName("a.example"), IP, URI), id="ok/mixed"
        ),
        pytest.param(PROFILE, subject(), _dns("*.example.com"), (x509.DNSName("*.example.com"),), id="ok/wildcard"),
        pytest.param(PROFILE, subject(), _dns("host.example."), (x509.DNSName("host.example."),), id="ok/trailing-dot"),
        pytest.param(PROFILE, subject(), _dns("a.example", "a.example"), (x509.DNSName("a.example"),), id="ok/dedup"),
        pytest.param(
            replace(DNS_ONLY, san_unlisted="drop"),
            subject(),
            [URI, *_dns("a.example"), IP],
            (x509.DNSName("a.example"),),
            id="ok/drop-unlisted-type",
        ),
        pytest.param(
            replace(PROFILE, max_sans=2),
            subject(),
            _dns("a.example", "b.example"),
            tuple(_dns("a.example", "b.example")),
            id="ok/at-max-sans",
        ),
        pytest.param(
            replace(PROFILE, max_sans=1),
            subject(),
            _dns("a.example", "a.example"),
            (x509.DNSName("a.example"),),
            id="ok/duplicates-do-not-count",
        ),
        pytest.param(
            replace(PROFILE, cn_as_dns_san=True, san_types=("dns", "ip")),
            subject("host.example"),
            _dns("alt.example"),
            tuple(_dns("host.example", "alt.example")),
            id="ok/cn-as-dns-san",
        ),
        pytest.param(
            replace(PROFILE, cn_as_dns_san=True),
            subject("192.0.2.7"),
            [],
            (IP,),
            id="ok/cn-as-ip-san",
        ),
        pytest.param(
            replace(PROFILE, cn_as_dns_san=True),
            subject("2001:db8::5"),
            [],
            (x509.IPAddress(ipaddress.ip_address("2001:db8::5")),),
            id="ok/cn-as-ipv6-san",
        ),
        pytest.param(
            replace(PROFILE, cn_as_dns_san=True),
            subject("host.example"),
            _dns("other.example", "host.example"),
            tuple(_dns("other.example", "host.example")),
            id="ok/cn-already-a-san",
        ),
        pytest.param(
            replace(PROFILE, cn_as_dns_san=True, subject_required=()),
            subject(None, O="Org"),
            _dns("a.example"),
            tuple(_dns("a.example")),
            id="ok/cn-as-dns-san-without-cn",
        ),
    ],
)
def test_sans_kept(
    profile: Profile, name: x509.Name, sans: list[x509.GeneralName], expected: tuple[object, ...]
) -> None:
    assert authorize_request(profile, name, sans, KEY.public_key(), NOW).sans == expected


@pytest.mark.parametrize(
    ("profile", "name", "sans", "message"),
    [
        pytest.param(DNS_ONLY, subject(), [URI], "type uri is not allowed", id="fail/uri-refused"),
        pytest.param(DNS_ONLY, subject(), [*_dns("a.example"), IP], "type ip is not allowed", id="fail/ip-refused"),
        pytest.param(
            PROFILE,
            subject(),
            [x509.DirectoryName(subject("x"))],
            "type dirname is not allowed",
            id="fail/dirname-refused-by-default",
        ),
        pytest.param(
            PROFILE,
            subject(),
            [x509.OtherName(x509.ObjectIdentifier("1.2.3"), b"\x05\x00")],
            "type other is not allowed",
            id="fail/othername-refused-by-default",
        ),
        pytest.param(
            replace(PROFILE, max_sans=2),
            subject(),
            _dns("a.ex", "b.ex", "c.ex"),
            "3 subjectAltNames",
            id="fail/max-sans",
        ),
        pytest.param(replace(PROFILE, max_sans=0), subject(), _dns("a.ex"), "allows 0", id="fail/max-sans-zero"),
        pytest.param(
            replace(PROFILE, cn_as_dns_san=True, max_sans=1),
            subject("host.example"),
            _dns("other.example"),
            "2 subjectAltNames",
            id="fail/cn-san-counts-toward-max",
        ),
        pytest.param(PROFILE, subject(), _dns("bad name.example"), "not a valid host name", id="fail/dns-space"),
        pytest.param(PROFILE, subject(), _dns("-lead.example"), "not a valid host name", id="fail/dns-leading-dash"),
        pytest.param(PROFILE, subject(), _dns("a..example"), "not a valid host name", id="fail/dns-empty-label"),
        pytest.param(PROFILE, subject(), _dns(""), "not a valid host name", id="fail/dns-empty"),
        pytest.param(
            PROFILE, subject(), _dns("a" * 64 + ".example"), "not a valid host name", id="fail/dns-long-label"
        ),
        pytest.param(
            PROFILE, subject(), _dns(".".join(["a" * 60] * 5)), "not a valid host name", id="fail/dns-over-253"
        ),
        pytest.param(PROFILE, subject(), _dns("a.*.example"), "not a valid host name", id="fail/dns-inner-wildcard"),
        pytest.param(
            replace(PROFILE, cn_as_dns_san=True),
            subject("My Laptop"),
            [],
            "'My Laptop' is not a valid host name",
            id="fail/cn-as-dns-san-not-a-host",
        ),
    ],
)
def test_sans_refused(profile: Profile, name: x509.Name, sans: list[x509.GeneralName], message: str) -> None:
    with pytest.raises(PolicyDenied, match=message):
        authorize_request(profile, name, sans, KEY.public_key(), NOW)


def test_invalid_dns_name_refused_even_when_dropping_other_types() -> None:
    profile = replace(PROFILE, san_unlisted="drop")
    with pytest.raises(PolicyDenied, match="not a valid host name"):
        authorize_request(profile, subject(), _dns("bad_host!"), KEY.public_key(), NOW)


def test_empty_subject_with_san_is_allowed_when_nothing_required() -> None:
    profile = replace(PROFILE, subject_required=())
    policy = authorize_request(profile, x509.Name([]), _dns("a.example"), KEY.public_key(), NOW)
    assert policy.subject == x509.Name([])
    assert policy.sans == (x509.DNSName("a.example"),)


@pytest.mark.parametrize(
    ("profile", "name", "sans"),
    [
        pytest.param(replace(PROFILE, subject_required=()), x509.Name([]), [], id="fail/empty-and-no-san"),
        pytest.param(
            replace(
                PROFILE,
                subject_required=(),
                subject_allowed=("CN",),
                subject_unlisted="drop",
                san_unlisted="drop",
                san_types=("dns",),
            ),
            subject(None, O="Org"),
            [URI],
            id="fail/everything-dropped",
        ),
    ],
)
def test_empty_subject_and_no_san_refused(profile: Profile, name: x509.Name, sans: list[x509.GeneralName]) -> None:
    with pytest.raises(PolicyDenied, match="neither a subject nor a subjectAltName"):
        authorize_request(profile, name, sans, KEY.public_key(), NOW)


def test_key_is_checked_before_subject() -> None:
    with pytest.raises(AlgorithmNotAllowed):
        authorize_request(PROFILE, x509.Name([]), [], ed_key().public_key(), NOW)


def test_authorize_csr_uses_the_requested_sans() -> None:
    csr = make_csr(KEY, subject("dev9"), dns=["dev9.example"], ips=["192.0.2.9"], emails=["dev9@example.com"])
    policy = authorize_csr(PROFILE, load_csr(csr_der(csr)), NOW)
    assert [san_text(n) for n in policy.sans] == ["dns:dev9.example", "ip:192.0.2.9", "email:dev9@example.com"]
    assert public_key_bytes(policy.public_key) == public_key_bytes(KEY.public_key())
