"""Keys in a PKCS#11 token (shared_ca.kms, shared_ca.pkcs11_token) over a SoftHSM2 token of the test's own.

The URIs (RFC 7512) and the configuration checks are table-driven; the token tests generate keys in
SoftHSM2 and check every signature the gateway makes (certificates, CRLs, OCSP, CMS, PKCS#1 v1.5, PSS,
ECDSA) and every decryption it needs (SCEP envelopes) against the public key, the failures a token
brings (missing module, token, key or PIN file, wrong PIN, a session lost, a token gone), and
several threads and forked processes signing at once.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from gateway.app import create_app
from gateway.config import ConfigError, load_config
from gateway.initdir import InitOptions, initialise
from scep.envelope import ContentCipher, KeyTransport, open_envelope, seal_envelope
from shared_ca import pkcs11_token
from shared_ca.cms import CmsSigner
from shared_ca.errors import KeyMaterialError
from shared_ca.keys import KeyType
from shared_ca.kms import (
    KmsUriError,
    TokenKey,
    is_token_key,
    open_token,
    parse_key_uri,
    parse_token_uri,
    redact,
    release_tokens,
    token_key,
)
from shared_ca.pkcs11_token import TokenEcKey, TokenRsaKey, TokenUnavailable
from tests.kms_support import SOFTHSM_MODULE, SoftHsm, softhsm_token

NOW = dt.datetime.now(dt.UTC)
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token test")])


# -- URIs -------------------------------------------------------------------------------------------

GOOD_TOKEN = "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=gw?pin-source=file:///etc/gateway/pin"


def test_token_uri_step_ca_style() -> None:
    uri = parse_token_uri(GOOD_TOKEN)
    assert (uri.module_path, uri.label, uri.pin_source, uri.pin_value) == (
        "/usr/lib/softhsm/libsofthsm2.so",
        "gw",
        Path("/etc/gateway/pin"),
        None,
    )
    assert uri.name == "token 'gw'"


def test_token_uri_rfc7512_style_with_percent_encoding() -> None:
    uri = parse_token_uri("pkcs11:token=My%20Token;serial=1b64?module-path=/opt/hsm/lib.so&pin-value=12%3B34")
    assert (uri.module_path, uri.label, uri.serial, uri.pin_value) == ("/opt/hsm/lib.so", "My Token", "1b64", "12;34")
    assert parse_token_uri("pkcs11:module-path=/m.so;slot-id=7?pin-source=/run/pin").slot_id == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("file:///x", "not a pkcs11: URI", id="fail/not-pkcs11"),
        pytest.param("pkcs11:token=gw?pin-value=1", "names no module-path", id="fail/no-module"),
        pytest.param("pkcs11:module-path=lib.so;token=gw?pin-value=1", "absolute path", id="fail/relative-module"),
        pytest.param("pkcs11:module-path=/m.so?pin-value=1", "names no token", id="fail/no-token"),
        pytest.param("pkcs11:module-path=/m.so;token=gw", "gives no PIN", id="fail/no-pin"),
        pytest.param(
            "pkcs11:module-path=/m.so;token=gw?pin-value=1&pin-source=/p",
            "both pin-source and pin-value",
            id="fail/2pins",
        ),
        pytest.param(
            "pkcs11:module-path=/m.so;token=gw;colour=red?pin-value=1", "unknown attribute 'colour'", id="fail/unknown"
        ),
        pytest.param(
            "pkcs11:module-path=/m.so;token=gw;object=k?pin-value=1", "'object' is not supported", id="fail/object"
        ),
        pytest.param("pkcs11:module-path=/m.so;token=a;token=b?pin-value=1", "'token' is given twice", id="fail/twice"),
        pytest.param("pkcs11:module-path=/m.so;token=?pin-value=1", "'token' is empty", id="fail/empty"),
        pytest.param("pkcs11:module-path=/m.so;token?pin-value=1", "has no value", id="fail/no-value"),
        pytest.param("pkcs11:module-path=/m.so;token=gw?pin-source=file://host/pin", "remote host", id="fail/remote"),
        pytest.param("pkcs11:module-path=/m.so;token=gw?pin-source=pin.txt", "absolute", id="fail/relative-pin"),
        pytest.param("pkcs11:module-path=/m.so;slot-id=x?pin-value=1", "not a number", id="fail/slot-id"),
        pytest.param("pkcs11:module-path=/m.so;token=%ff?pin-value=1", "not UTF-8", id="fail/not-utf8"),
    ],
)
def test_token_uri_refusals(text: str, message: str) -> None:
    with pytest.raises(KmsUriError, match=message):
        parse_token_uri(text)


def test_pin_value_never_shows_in_messages() -> None:
    with pytest.raises(KmsUriError) as caught:
        parse_token_uri("pkcs11:module-path=/m.so;token=gw;bogus=1?pin-value=secret-pin")
    assert "secret-pin" not in str(caught.value)
    with pytest.raises(KmsUriError, match="'pin-value' is not supported") as caught:  # in the path part
        parse_token_uri("pkcs11:module-path=/m.so;token=gw;pin-value=secret-pin")
    assert "secret-pin" not in str(caught.value)
    assert (
        redact("pkcs11:token=gw?module-path=/m.so&pin-value=secret")
        == "pkcs11:token=gw?module-path=/m.so&pin-value=***"
    )


def test_key_uri() -> None:
    assert parse_key_uri("pkcs11:object=ca-key").label == "ca-key"
    by_id = parse_key_uri("pkcs11:id=%01%A2;type=private")
    assert (by_id.label, by_id.key_id) == (None, b"\x01\xa2")
    assert is_token_key(" PKCS11:object=x") and not is_token_key("ca/ca.key")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("pkcs11:type=private", "names no key", id="fail/no-key"),
        pytest.param("pkcs11:object=k;type=public", "type=private", id="fail/public"),
        pytest.param("pkcs11:object=k;token=gw", "'token' is not supported", id="fail/token-in-key"),
        pytest.param("pkcs11:object=k?pin-value=1", "'pin-value' is not supported", id="fail/pin-in-key"),
    ],
)
def test_key_uri_refusals(text: str, message: str) -> None:
    with pytest.raises(KmsUriError, match=message):
        parse_key_uri(text)


# -- configuration ----------------------------------------------------------------------------------


def test_config_accepts_token_keys(tmp_path: Path) -> None:
    config = load_config(
        tmp_path,
        environ={},
        overrides={
            "keys.kms": GOOD_TOKEN,
            "ca.key": "pkcs11:object=ca-key",
            "ra.key": "ra/ra.key",
            "tls.key": "pkcs11:object=tls-key",
        },
    )
    assert config["ca.key"] == "pkcs11:object=ca-key"
    assert config["tls.key"] == "pkcs11:object=tls-key"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"keys.kms": "pkcs11:token=gw?pin-value=1"}, r"keys\.kms .*names no module-path", id="fail/kms"),
        pytest.param({"ca.key": "pkcs11:object=k;type=public"}, r"ca\.key .*type=private", id="fail/key-uri"),
        pytest.param({"tls.cert": "pkcs11:object=tls"}, r"tls\.cert .*must be a file", id="fail/tls-cert"),
        pytest.param({"next_ca.key": "pkcs11:object=n"}, r"next_ca\.key .*must be a file", id="fail/next-ca"),
    ],
)
def test_config_refusals(tmp_path: Path, overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path, environ={}, overrides=overrides)


# -- a token ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A fresh SoftHSM2 token, this process pointed at it (SoftHSM2 reads SOFTHSM2_CONF at C_Initialize)."""
    token = softhsm_token(tmp_path_factory.mktemp("softhsm"))
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(token.conf)
    release_tokens()
    try:
        yield token
    finally:
        release_tokens()
        if previous is None:
            del os.environ["SOFTHSM2_CONF"]
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="module")
def keys(hsm: SoftHsm) -> dict[str, Any]:
    token = open_token(hsm.uri(), setting="test")
    made = {
        "rsa": token.generate(parse_key_uri("pkcs11:object=rsa-key"), KeyType.RSA2048, decrypt=True),
        "ec": token.generate(parse_key_uri("pkcs11:object=ec-key;id=%07"), KeyType.P384, decrypt=False),
    }
    return made


def self_signed(key: Any) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) else hashes.SHA256())
    )


def test_generated_keys_are_sensitive_and_never_extractable(hsm: SoftHsm, keys: dict[str, Any]) -> None:
    assert isinstance(keys["rsa"], TokenRsaKey) and keys["rsa"].key_size == 2048
    assert isinstance(keys["ec"], TokenEcKey) and keys["ec"].curve.name == "secp384r1"
    keys["rsa"].probe()  # this process is logged in: a second session sees the private objects too
    library = pkcs11_token._library(str(SOFTHSM_MODULE))  # this process's handle on the module
    with library.get_token(token_label=hsm.label).open() as session:
        for label in ("rsa-key", "ec-key"):
            found = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
            assert found[pkcs11.Attribute.SENSITIVE] is True
            assert found[pkcs11.Attribute.EXTRACTABLE] is False
            assert found[pkcs11.Attribute.NEVER_EXTRACTABLE] is True
        ec_found = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label="ec-key")
        assert ec_found[pkcs11.Attribute.DECRYPT] is False
    for key in keys.values():
        with pytest.raises(KeyMaterialError, match="cannot leave the token"):
            key.private_bytes()
        with pytest.raises(KeyMaterialError, match="cannot leave the token"):
            key.private_numbers()
        assert isinstance(key, TokenKey)


def test_by_label_and_by_id_is_the_same_key(hsm: SoftHsm, keys: dict[str, Any]) -> None:
    by_id = token_key(hsm.uri(), "pkcs11:id=%07", setting="ca.key")
    assert by_id.public_key() == keys["ec"].public_key()


def test_certificates_crls_and_ocsp_signed_in_the_token(keys: dict[str, Any]) -> None:
    for key in keys.values():
        cert = self_signed(key)
        cert.verify_directly_issued_by(cert)
        algorithm = hashes.SHA256()
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(NAME)
            .last_update(NOW)
            .next_update(NOW + dt.timedelta(hours=1))
            .sign(key, algorithm)
        )
        assert crl.is_signature_valid(key.public_key())
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=cert,
                algorithm=hashes.SHA256(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=NOW,
                next_update=NOW + dt.timedelta(hours=1),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, cert)
            .sign(key, algorithm)
        )
        verify_with(key.public_key(), response.signature, response.tbs_response_bytes, algorithm)


def verify_with(public: Any, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm) -> None:
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, data, padding.PKCS1v15(), algorithm)
    else:
        public.verify(signature, data, ec.ECDSA(algorithm))


DIGESTS = [hashes.SHA1(), hashes.SHA224(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]  # noqa: S303 - SCEP's SHA-1


@pytest.mark.parametrize("digest", DIGESTS, ids=[d.name for d in DIGESTS])
def test_rsa_pkcs1v15_and_pss_signatures(keys: dict[str, Any], digest: hashes.HashAlgorithm) -> None:
    key: TokenRsaKey = keys["rsa"]
    public = key.public_key()
    public.verify(key.sign(b"data", padding.PKCS1v15(), digest), b"data", padding.PKCS1v15(), digest)
    for salt in (padding.PSS.DIGEST_LENGTH, padding.PSS.MAX_LENGTH, 20):
        pss = padding.PSS(padding.MGF1(digest), salt)
        public.verify(
            key.sign(b"data", pss, digest), b"data", padding.PSS(padding.MGF1(digest), padding.PSS.AUTO), digest
        )


def test_ecdsa_signatures(keys: dict[str, Any]) -> None:
    key: TokenEcKey = keys["ec"]
    for digest in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        key.public_key().verify(key.sign(b"data", ec.ECDSA(digest)), b"data", ec.ECDSA(digest))


def test_cms_signer_uses_the_token_key(keys: dict[str, Any]) -> None:
    key: TokenRsaKey = keys["rsa"]
    signer = CmsSigner.create(key, self_signed(key))
    _algorithm, signature = signer.sign(b"signed attributes", "sha256")
    key.public_key().verify(signature, b"signed attributes", padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("transport", [KeyTransport.RSA_PKCS1V15, KeyTransport.RSA_OAEP])
def test_scep_envelopes_open_with_the_token_key(keys: dict[str, Any], transport: KeyTransport) -> None:
    key: TokenRsaKey = keys["rsa"]
    cert = self_signed(key)
    for cipher in (ContentCipher.AES256, ContentCipher.TRIPLE_DES):
        opened = open_envelope(seal_envelope(b"a PKCS#10 request", cert, cipher, transport), key, cert)
        assert (opened.plaintext, opened.key_transport) == (b"a PKCS#10 request", transport)


def test_a_ciphertext_that_does_not_decrypt_is_a_value_error(keys: dict[str, Any]) -> None:
    key: TokenRsaKey = keys["rsa"]
    with pytest.raises(ValueError, match="decryption failed"):
        key.decrypt(b"\x01" * 256, padding.PKCS1v15())
    assert key.decrypt(key.public_key().encrypt(b"k" * 16, padding.PKCS1v15()), padding.PKCS1v15()) == b"k" * 16


def test_what_a_token_key_does_not_do(keys: dict[str, Any]) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm

    with pytest.raises(UnsupportedAlgorithm):
        keys["ec"].exchange(ec.ECDH(), ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(ValueError, match="salt length"):
        keys["rsa"].sign(b"x", padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO), hashes.SHA256())


# -- what can go wrong ------------------------------------------------------------------------------


def test_missing_module_token_key_and_pin_file(hsm: SoftHsm, keys: dict[str, Any], tmp_path: Path) -> None:
    cases = [
        (
            hsm.uri().replace(str(SOFTHSM_MODULE), "/nonexistent/libpkcs11.so"),
            "pkcs11:object=rsa-key",
            "does not exist",
        ),
        (hsm.uri(label="absent"), "pkcs11:object=rsa-key", r"no token 'absent' in the PKCS#11 module .*'gw'"),
        (hsm.uri(), "pkcs11:object=no-such-key", "token 'gw' has no private key 'no-such-key'"),
        (hsm.uri(pin_file=tmp_path / "missing"), "pkcs11:object=rsa-key", "cannot read the PIN file"),
        ("", "pkcs11:object=rsa-key", "ca.key names a key in a token, but keys.kms names no token"),
    ]
    (tmp_path / "empty").write_text("\n")
    cases.append((hsm.uri(pin_file=tmp_path / "empty"), "pkcs11:object=rsa-key", "is empty"))
    for kms, key, message in cases:
        with pytest.raises(KeyMaterialError, match=message):
            token_key(kms, key, setting="ca.key")


def test_wrong_pin_is_one_error_and_a_corrected_pin_file_is_read_again(hsm: SoftHsm, tmp_path: Path) -> None:
    release_tokens()  # log out, so the wrong PIN meets a token nobody in this process is logged in to
    pin = tmp_path / "pin"
    pin.write_text("9999\n")
    token = open_token(hsm.uri(pin_file=pin), setting="ca.key")
    with pytest.raises(KeyMaterialError, match=r"wrong PIN for token 'gw' \(from .*pin\)"):
        token.private_key(parse_key_uri("pkcs11:object=rsa-key"))
    with pytest.raises(KeyMaterialError, match="wrong PIN"):  # answered from memory: no second login attempt
        token.private_key(parse_key_uri("pkcs11:object=rsa-key"))
    pin.write_text("1234\n")
    token._retry_at = 0.0  # as after RETRY_SECONDS
    assert token.private_key(parse_key_uri("pkcs11:object=rsa-key")).key_size == 2048
    token.close()


def test_a_lost_session_is_reopened(hsm: SoftHsm, keys: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    key: TokenRsaKey = keys["rsa"]
    key.probe()
    token = key._token
    assert token._session is not None
    token._session.close()  # the token forgot the session (removed and put back, a module restart)
    key.public_key().verify(
        key.sign(b"x", padding.PKCS1v15(), hashes.SHA256()), b"x", padding.PKCS1v15(), hashes.SHA256()
    )
    assert "the session stopped working (SessionHandleInvalid); opening a new one" in caplog.text
    release_tokens()  # the library finalized: the next operation initializes and logs in again
    key.probe()


def test_a_token_that_stops_answering_is_unavailable_not_a_crash(
    hsm: SoftHsm, keys: dict[str, Any], tmp_path: Path
) -> None:
    release_tokens()  # nobody in this process logged in: the login below is this token's own
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    key = token_key(hsm.uri(pin_file=pin), "pkcs11:object=rsa-key", setting="ra.key")
    assert isinstance(key, TokenRsaKey)
    key.probe()
    pin.write_text("0000\n")  # the PIN changed while the gateway ran, and then its session was lost
    key._token.close()
    with pytest.raises(TokenUnavailable) as caught:
        key.probe()
    assert caught.value.kind.http_status == 503
    assert "wrong PIN" in caught.value.detail and caught.value.public_message == "a signing key is unavailable"
    with pytest.raises(TokenUnavailable):  # through cryptography's builders as well
        self_signed(key)
    with pytest.raises(TokenUnavailable):  # our fault, not the envelope's: SCEP answers 503, not a CertRep
        key.decrypt(b"\x01" * 256, padding.PKCS1v15())
    pin.write_text("1234\n")  # mended: the next attempt after the retry interval logs in again
    key._token._retry_at = 0.0
    key.probe()
    key._token.close()


# -- concurrency ------------------------------------------------------------------------------------

SIGNATURES = 60


def _sign_many(key: TokenRsaKey, count: int) -> int:
    public = key.public_key()
    for n in range(count):
        data = f"{os.getpid()}-{threading.get_ident()}-{n}".encode()
        public.verify(key.sign(data, padding.PKCS1v15(), hashes.SHA256()), data, padding.PKCS1v15(), hashes.SHA256())
    return count


def test_threads_share_the_session(keys: dict[str, Any]) -> None:
    done: list[int] = []
    threads = [threading.Thread(target=lambda: done.append(_sign_many(keys["rsa"], SIGNATURES))) for _ in range(6)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.perf_counter() - started
    assert done == [SIGNATURES] * 6
    print(f"6 threads, one session: {6 * SIGNATURES / elapsed:.0f} RSA-2048 signatures/s")


def _child(key: TokenRsaKey, results: Any) -> None:
    started = time.perf_counter()
    count = _sign_many(key, SIGNATURES)
    results.put((os.getpid(), count, time.perf_counter() - started))


def test_forked_processes_open_their_own_sessions(keys: dict[str, Any]) -> None:
    """A worker forked from a process that used the token (as gunicorn's are, were the arbiter not to
    release it) finalizes what it inherited and logs in itself."""
    keys["rsa"].probe()  # the parent holds a session at the fork
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    children = [context.Process(target=_child, args=(keys["rsa"], results)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    answers = [results.get(timeout=5) for _ in children]
    assert {a[0] for a in answers} == {c.pid for c in children}
    assert all(a[1] == SIGNATURES for a in answers)
    keys["rsa"].probe()  # and the parent's own session still works


def test_readyz_and_requests_when_the_token_stops_answering(hsm: SoftHsm, tmp_path: Path) -> None:
    """A gateway whose CA and RA keys are in the token (`gateway init --kms`, in-process): /readyz says
    the keys are fine, then, once the token cannot be logged in to again, says so with a 503, and a
    request that needs a signature gets 503 with Retry-After instead of a 500."""
    release_tokens()
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    kms = hsm.uri(pin_file=pin)
    directory = tmp_path / "data"
    initialise(
        InitOptions(
            data_dir=directory,
            ca_key_type=KeyType.P256,
            kms=kms,
            ca_key_uri="pkcs11:object=readyz-ca",
            ra_key_uri="pkcs11:object=readyz-ra",
            tls_key_uri=None,  # a file: OpenSSL's pkcs11 provider stays out of the test process
        )
    )
    app = create_app(load_config(directory, environ={}))
    try:
        client = app.test_client()
        assert client.get("/readyz").get_json()["checks"]["keys"] == "ok"
        pin.write_text("0000\n")
        open_token(kms, setting="test").close()  # the session is lost; logging in again is refused
        reply = client.get("/readyz")
        assert reply.status_code == 503
        assert reply.get_json()["checks"]["keys"] == "token unavailable"
        crl = client.get("/crl/ca.crl")
        assert (crl.status_code, crl.headers["Retry-After"]) == (503, "5")
        assert b"unavailable" in crl.data and b"PIN" not in crl.data  # the cause goes to the log only
    finally:
        app.extensions["gateway"].get().storage.db.dispose()
        release_tokens()
