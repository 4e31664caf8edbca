"""est.auth: secret hashing and the scrypt memo, HTTP Basic parsing, the trusted-proxy certificate
header, and the authenticator's precedence of client certificate over Basic credentials."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from est.auth import (
    BASIC_REALM,
    EstAuthenticator,
    EstCredentials,
    EstPrincipal,
    VerifiedPasswords,
    certificate_from_proxy,
    hash_generated_secret,
    hash_password,
    parse_basic,
    parse_trusted_proxies,
    verify_secret,
)
from shared_ca.authority import CertificateAuthority, PublicUrls
from shared_ca.ca_material import create_root_ca, register_issuer
from shared_ca.errors import CAError, PolicyDenied, Unauthorized
from shared_ca.keys import KeyType, generate_private_key
from shared_ca.policy import authorize_request
from shared_ca.profiles import DEFAULT_PROFILES
from shared_ca.storage.est_users import EstUserRecord, EstUsers, check_secret
from shared_ca.storage.repositories import Storage
from tests.support import SettableClock, ec_key, storage_of, subject

PASSWORD = "correct horse battery"
SECRET = "generated-bootstrap-secret-0123456789"
PASSWORD_HASH = hash_password(PASSWORD)  # one scrypt for the whole module
SECRET_HASH = hash_generated_secret(SECRET)


def b64(text: bytes | str) -> str:
    return base64.b64encode(text.encode("utf-8") if isinstance(text, str) else text).decode("ascii")


# -- hashing and verification --------------------------------------------------------------------


def test_password_hash_is_self_describing_scrypt() -> None:
    scheme, log2_n, r, p, salt, digest = PASSWORD_HASH.split("$")
    assert (scheme, log2_n, r, p) == ("scrypt", "14", "8", "1")
    assert (len(base64.b64decode(salt)), len(base64.b64decode(digest))) == (16, 32)
    assert verify_secret(PASSWORD_HASH, PASSWORD, memo=None)
    assert not verify_secret(PASSWORD_HASH, PASSWORD + " ", memo=None)
    assert hash_password(PASSWORD) != PASSWORD_HASH  # a fresh salt each time


def test_generated_secret_hash_is_salted_sha256() -> None:
    scheme, salt, digest = SECRET_HASH.split("$")
    assert (scheme, len(base64.b64decode(salt)), len(base64.b64decode(digest))) == ("sha256", 16, 32)
    assert verify_secret(SECRET_HASH, SECRET) and not verify_secret(SECRET_HASH, SECRET[:-1])
    assert hash_generated_secret(SECRET) != SECRET_HASH


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("bcrypt$2b$12$abcdefghijklmnopqrstuv", id="unknown-scheme"),
        pytest.param(PASSWORD, id="plaintext"),
        pytest.param("", id="empty"),
        pytest.param("scrypt$14$8$1$not base64!$AAAA", id="scrypt-bad-base64"),
        pytest.param("scrypt$40$8$1$AAAA$AAAA", id="scrypt-cost-out-of-range"),
        pytest.param("scrypt$x$8$1$AAAA$AAAA", id="scrypt-cost-not-a-number"),
        pytest.param("sha256$AAAA", id="sha256-missing-part"),
    ],
)
def test_unusable_stored_hashes_verify_nothing_and_are_logged(stored: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert not verify_secret(stored, PASSWORD)
    assert "secret hash" in caplog.text
    assert PASSWORD not in caplog.text


def test_memo_remembers_successes_only() -> None:
    calls: list[str] = []

    def counting(stored: str, presented: str) -> bool:
        calls.append(presented)
        return check_secret(stored, presented)

    memo = VerifiedPasswords()
    for _ in range(3):
        assert not memo.verify(PASSWORD_HASH, "wrong password", counting)
    assert (len(memo), len(calls)) == (0, 3)  # every failure paid for its scrypt
    assert memo.verify(PASSWORD_HASH, PASSWORD, counting)
    assert memo.verify(PASSWORD_HASH, PASSWORD, counting)
    assert (len(memo), len(calls)) == (1, 4)  # the second success came from the memo
    assert not memo.verify(PASSWORD_HASH, PASSWORD + "x", counting)
    other_hash = hash_password(PASSWORD)  # the password set again: a new stored string misses
    assert memo.verify(other_hash, PASSWORD, counting) and len(calls) == 6
    assert PASSWORD.encode() not in repr(memo._entries).encode()


def test_memo_is_bounded_least_recently_used_first() -> None:
    memo = VerifiedPasswords(capacity=2)
    always: Callable[[str, str], bool] = lambda _s, _p: True  # noqa: E731
    never: Callable[[str, str], bool] = lambda _s, _p: False  # noqa: E731
    for stored in ("a", "b"):
        memo.verify(stored, "pw", always)
    memo.verify("a", "pw", never)  # a hit refreshes 'a'
    memo.verify("c", "pw", always)  # evicts 'b'
    assert len(memo) == 2
    assert memo.verify("a", "pw", never) and memo.verify("c", "pw", never) and not memo.verify("b", "pw", never)


def test_sha256_hashes_bypass_the_memo() -> None:
    memo = VerifiedPasswords()
    assert verify_secret(SECRET_HASH, SECRET, memo=memo) and len(memo) == 0
    assert verify_secret(PASSWORD_HASH, PASSWORD, memo=memo) and len(memo) == 1


# -- HTTP Basic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("Bearer abc", None, id="other-scheme"),
        pytest.param("Basic " + b64("alice:pw"), ("alice", "pw"), id="plain"),
        pytest.param("basic   " + b64("alice:pw") + " ", ("alice", "pw"), id="scheme-case-and-spaces"),
        pytest.param("Basic " + b64("alice:a:b:c"), ("alice", "a:b:c"), id="colons-in-password"),
        pytest.param("Basic " + b64("alice:"), ("alice", ""), id="empty-password"),
        pytest.param("Basic " + b64("jörg:pässwörd"), ("jörg", "pässwörd"), id="utf-8"),
        pytest.param("Basic " + b64("bob:x").rstrip("="), ("bob", "x"), id="missing-padding"),
    ],
)
def test_parse_basic(header: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_basic(header) == expected


@pytest.mark.parametrize(
    ("header", "message"),
    [
        pytest.param("Basic", "cannot be read", id="fail/no-token"),
        pytest.param("Basic !!!!", "not base64", id="fail/not-base64"),
        pytest.param("Basic " + b64("nocolon"), "no ':'", id="fail/no-colon"),
        pytest.param("Basic " + b64(b"\xff\xfe:pw"), "not base64 of UTF-8", id="fail/not-utf-8"),
        pytest.param("Basic " + b64(":pw"), "no user name", id="fail/no-user"),
        pytest.param("Basic " + "A" * 5000, "cannot be read", id="fail/oversized"),
    ],
)
def test_parse_basic_refuses_malformed_credentials(header: str, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        parse_basic(header)


def test_realm() -> None:
    assert BASIC_REALM == 'Basic realm="EST"'


def test_credentials_never_show_the_password() -> None:
    text = repr(EstCredentials(basic=("alice", PASSWORD)))
    assert "alice" in text and PASSWORD not in text
    with pytest.raises(ValueError, match="certificate source"):
        EstCredentials(certificate_source="header")


# -- the trusted-proxy header --------------------------------------------------------------------


def self_signed(cn: str = "proxied-device") -> x509.Certificate:
    key = ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


PROXY_CERT = self_signed()
PEM = PROXY_CERT.public_bytes(Encoding.PEM).decode("ascii")
TRUSTED = parse_trusted_proxies("10.0.0.0/8, 192.0.2.1, 2001:db8::/32")
CERT_HEADER, VERIFY_HEADER = "X-SSL-Client-Cert", "X-SSL-Client-Verify"


def from_proxy(peer: str, cert: str | None, verify: str | None = "SUCCESS", **headers: str) -> x509.Certificate | None:
    sent = {**headers}
    if cert is not None:
        sent[CERT_HEADER] = cert
    if verify is not None:
        sent[VERIFY_HEADER] = verify
    return certificate_from_proxy(peer, sent, TRUSTED, CERT_HEADER, VERIFY_HEADER)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(quote(PEM, safe=""), id="nginx-escaped-pem"),
        pytest.param(PEM.replace("\n", " "), id="pem-folded-to-one-line"),
        pytest.param(PEM.replace("\n", "\n\t"), id="pem-tab-continued"),
        pytest.param(b64(PROXY_CERT.public_bytes(Encoding.DER)), id="base64-der"),
    ],
)
def test_trusted_proxy_certificate_forms(value: str) -> None:
    assert from_proxy("10.1.2.3", value) == PROXY_CERT


@pytest.mark.parametrize(
    ("peer", "cert", "verify"),
    [
        pytest.param("203.0.113.9", quote(PEM, safe=""), "SUCCESS", id="untrusted-peer"),
        pytest.param("unix:/run/gw.sock", quote(PEM, safe=""), "SUCCESS", id="no-ip-peer"),
        pytest.param("10.1.2.3", quote(PEM, safe=""), "FAILED:certificate has expired", id="proxy-verify-failed"),
        pytest.param("10.1.2.3", quote(PEM, safe=""), None, id="no-verify-header"),
        pytest.param("10.1.2.3", "", "NONE", id="no-client-certificate"),
        pytest.param("10.1.2.3", None, "SUCCESS", id="no-certificate-header"),
    ],
)
def test_proxy_header_is_ignored_unless_trusted_and_verified(peer: str, cert: str | None, verify: str | None) -> None:
    assert from_proxy(peer, cert, verify) is None


def test_proxy_header_details() -> None:
    assert from_proxy("192.0.2.1", quote(PEM, safe="")) == PROXY_CERT
    assert from_proxy("::ffff:10.9.9.9", quote(PEM, safe="")) == PROXY_CERT  # dual-stack listener
    assert from_proxy("2001:db8::7", quote(PEM, safe="")) == PROXY_CERT
    lower = {CERT_HEADER.lower(): quote(PEM, safe=""), VERIFY_HEADER.lower(): "SUCCESS"}
    assert certificate_from_proxy("10.0.0.1", lower, TRUSTED, CERT_HEADER, VERIFY_HEADER) == PROXY_CERT
    assert certificate_from_proxy("10.0.0.1", lower, (), CERT_HEADER, VERIFY_HEADER) is None


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param("not a certificate", id="words"),
        pytest.param(b64(b"\x30\x03\x02\x01\x00"), id="der-not-a-certificate"),
        pytest.param(quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"), id="pem-garbage"),
    ],
)
def test_garbage_from_a_trusted_proxy_is_unauthorized(garbage: str) -> None:
    with pytest.raises(Unauthorized, match="passed on by the TLS proxy cannot be read") as caught:
        from_proxy("10.1.2.3", garbage)
    assert CERT_HEADER in caught.value.detail


def test_parse_trusted_proxies() -> None:
    assert parse_trusted_proxies("") == ()
    assert parse_trusted_proxies(" 127.0.0.1 ,, ::1 ") == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    for bad in ("10.0.0.300", "nginx", "10.0.0.1/8"):
        with pytest.raises(ValueError, match=f"trusted proxy '{bad}'"):
            parse_trusted_proxies(f"127.0.0.1, {bad}")


# -- the authenticator ---------------------------------------------------------------------------


@dataclass
class World:
    authority: CertificateAuthority
    users: EstUsers
    auth: EstAuthenticator
    clock: SettableClock

    def user(self, name: str, **changes: Any) -> EstUserRecord:
        fields: dict[str, Any] = {"kind": "password", "created_by": "test", "now": self.clock()}
        return self.users.add_est_user(name, changes.pop("secret_hash", PASSWORD_HASH), **{**fields, **changes})

    def issue(self, cn: str, authority: CertificateAuthority | None = None) -> x509.Certificate:
        ca = authority or self.authority
        policy = authorize_request(DEFAULT_PROFILES["default"], subject(cn), [], ec_key().public_key(), self.clock())
        return ca.issue(policy, protocol="test", actor="test").certificate

    def legacy_ca(self, trust_until: dt.datetime) -> CertificateAuthority:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Legacy CA")])
        material = create_root_ca(generate_private_key(KeyType.P256), name, 3650, self.clock())
        issuer = register_issuer(
            storage_of(self.authority).issuers, "legacy", material.certificate, kind="legacy", actor="t",
            now=self.clock(), trust_until=trust_until,
        )  # fmt: skip
        return CertificateAuthority(
            storage_of(self.authority).certificates, issuer, material.certificate, material.chain, material.key,
            PublicUrls("http://legacy.example"), self.clock,
        )  # fmt: skip

    def login(self, basic: tuple[str, str] | None = None, cert: x509.Certificate | None = None) -> EstPrincipal:
        credentials = EstCredentials(basic=basic, client_certificate=cert, certificate_source="tls" if cert else "none")
        return self.auth.authenticate(credentials)


@pytest.fixture
def world(authority: CertificateAuthority, clock: SettableClock) -> World:
    return World(
        authority,
        Storage.open(storage_of(authority).engine).est_users,
        EstAuthenticator(storage_of(authority), clock),
        clock,
    )


def refused(world: World, expected: type[CAError], public: str, detail: str, **login: Any) -> CAError:
    with pytest.raises(expected) as caught:
        world.login(**login)
    assert caught.type is expected and caught.value.public_message == public
    assert detail in caught.value.detail
    return caught.value


def test_basic_user_is_authenticated_without_spending_a_use(world: World) -> None:
    user = world.user("alice", uses_left=1, labels=("default",))
    principal = world.login(basic=("alice", PASSWORD))
    assert (principal.kind, principal.name, principal.user and principal.user.id, principal.certificate) == (
        "basic",
        "alice",
        user.id,
        None,
    )
    world.login(basic=("alice", PASSWORD))
    after = world.users.est_user("alice")
    assert after is not None and after.uses_left == 1
    world.user("device-7", kind="bootstrap", secret_hash=SECRET_HASH)
    assert world.login(basic=("device-7", SECRET)).name == "device-7"


def test_basic_refusals(world: World) -> None:
    world.user("alice")
    world.user("gone")
    world.users.disable_est_user("gone", actor="test", now=world.clock())
    world.user("brief", expires_at=world.clock() + dt.timedelta(hours=1))
    spent = world.user("spent", uses_left=1)
    assert world.users.consume_use(spent.id, world.clock())
    world.clock.advance(hours=2)
    wrong = "wrong user name or password"
    refused(world, Unauthorized, "authentication required", "no Basic credentials", basic=None)
    unknown = refused(world, Unauthorized, wrong, "no EST user named 'mallory'", basic=("mallory", PASSWORD))
    bad = refused(world, Unauthorized, wrong, "wrong password for EST user 'alice'", basic=("alice", "guess"))
    assert unknown.public_message == bad.public_message  # no telling users apart
    refused(world, Unauthorized, wrong, "wrong password", basic=("gone", "guess"))  # the password comes first
    refused(world, PolicyDenied, "the EST user is disabled", "'gone' is disabled", basic=("gone", PASSWORD))
    refused(world, PolicyDenied, "the EST user is expired", "'brief' is expired", basic=("brief", PASSWORD))
    refused(world, PolicyDenied, "the EST user is used up", "'spent' is used up", basic=("spent", PASSWORD))
    collecting = EstCredentials(basic=("spent", PASSWORD))  # a retry that spends nothing may pass
    assert world.auth.authenticate(collecting, used_up_ok=lambda: True).name == "spent"
    refused(world, PolicyDenied, "the EST user is used up", "'spent' is used up", basic=("spent", PASSWORD))
    with pytest.raises(PolicyDenied, match="expired"):  # asked of a used-up user only
        world.auth.authenticate(EstCredentials(basic=("brief", PASSWORD)), used_up_ok=lambda: True)


def test_client_certificate_is_the_identity(world: World) -> None:
    cert = world.issue("device-1")
    principal = world.login(cert=cert)
    assert (principal.kind, principal.name, principal.user) == ("certificate", "CN=device-1", None)
    assert principal.certificate is not None and principal.certificate.record.serial_hex == format(
        cert.serial_number, "x"
    )
    user = world.user("alice")
    both = world.login(cert=cert, basic=("alice", PASSWORD))
    assert (both.kind, both.name, both.user and both.user.id) == ("certificate", "CN=device-1", user.id)
    refused(world, Unauthorized, "wrong user name or password", "wrong password", cert=cert, basic=("alice", "x"))
    world.users.disable_est_user("alice", actor="test", now=world.clock())
    refused(world, PolicyDenied, "the EST user is disabled", "disabled", cert=cert, basic=("alice", PASSWORD))


def test_client_certificate_refusals(world: World) -> None:
    world.user("alice")
    revoked = world.issue("revoked")
    world.authority.revoke(format(revoked.serial_number, "x"), x509.ReasonFlags.key_compromise, actor="t")
    refused(world, PolicyDenied, "the client certificate is revoked", "serial", cert=revoked)
    refused(
        world, PolicyDenied, "the client certificate is revoked", "revoked", cert=revoked, basic=("alice", PASSWORD)
    )
    unknown = self_signed("stranger")
    refused(
        world,
        PolicyDenied,
        "the client certificate was not issued by this CA or a trusted legacy CA",
        "is not in the store",
        cert=unknown,
        basic=("alice", PASSWORD),  # a good password does not rescue a bad certificate
    )
    expiring = world.issue("expiring")
    world.clock.advance(days=400)
    refused(world, PolicyDenied, "the client certificate is expired", "CN=expiring", cert=expiring)


def test_legacy_certificate_inside_and_after_its_window(world: World) -> None:
    legacy = world.legacy_ca(world.clock() + dt.timedelta(days=10))
    cert = world.issue("old-device", legacy)
    principal = world.login(cert=cert)
    assert principal.certificate is not None and principal.certificate.legacy
    world.clock.advance(days=11)
    refused(
        world,
        PolicyDenied,
        "the client certificate's legacy issuer is no longer trusted",
        "migration window",
        cert=cert,
    )
