"""gateway.tls_token without a token: the provider's key URI and PEM wrapper, its OpenSSL configuration,
and the HTTPS key from files with each way that fails. What needs the token and OpenSSL's pkcs11
provider runs through the real server in tests/test_kms_serve.py (the provider is loaded into a
process's OpenSSL for good, so it stays out of the test process)."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
from asn1crypto import core

from gateway.config import load_config
from gateway.initdir import InitOptions, initialise
from gateway.tls_token import _config_text, load_server_key, provider_key_uri, uri_pem
from shared_ca.errors import KeyMaterialError
from shared_ca.keys import KeyType
from shared_ca.kms import parse_key_uri, parse_token_uri

TOKEN = "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=gw?pin-source=file:///etc/gateway/pin"


@pytest.mark.parametrize(
    ("token", "key", "expected"),
    [
        pytest.param(TOKEN, "pkcs11:object=tls-key", "pkcs11:token=gw;object=tls-key;type=private", id="label"),
        pytest.param(
            "pkcs11:module-path=/m.so;token=my%20hsm;serial=42;slot-id=3?pin-value=1234",
            "pkcs11:object=tls%3Bkey;id=%01%ff",
            "pkcs11:token=my%20hsm;serial=42;slot-id=3;object=tls%3Bkey;id=%01%FF;type=private",
            id="escaped-serial-slot-id",
        ),
        pytest.param(
            "pkcs11:module-path=/m.so;manufacturer=ACME;model=X1;serial=7?pin-value=1",
            "pkcs11:id=%07",
            "pkcs11:serial=7;manufacturer=ACME;model=X1;id=%07;type=private",
            id="by-id",
        ),
    ],
)
def test_provider_key_uri(token: str, key: str, expected: str) -> None:
    uri = provider_key_uri(parse_token_uri(token), parse_key_uri(key))
    assert uri == expected
    assert "pin" not in uri


def test_uri_pem_is_the_providers_format() -> None:
    lines = uri_pem("pkcs11:token=gw;object=tls-key;type=private").decode("ascii").splitlines()
    # asn1crypto's unarmor takes no "#" in a label: the armor is read here by hand
    assert lines[0] == "-----BEGIN PKCS#11 PROVIDER URI-----" and lines[-1] == "-----END PKCS#11 PROVIDER URI-----"
    der = base64.b64decode("".join(lines[1:-1]), validate=True)
    parsed = core.load(der)  # the universal tags say what each field is
    assert isinstance(parsed, core.Sequence)
    desc, uri = parsed[0], parsed[1]
    assert isinstance(desc, core.VisibleString) and desc.native == "PKCS#11 Provider URI v1.0"
    assert isinstance(uri, core.UTF8String) and uri.native == "pkcs11:token=gw;object=tls-key;type=private"
    assert parsed.dump() == der


def test_config_text_points_the_provider_at_the_module_and_pin(tmp_path: Path) -> None:
    text = _config_text(parse_token_uri(TOKEN), Path("/usr/lib/ossl-modules/pkcs11.so"))
    assert "module = /usr/lib/ossl-modules/pkcs11.so\n" in text
    assert "pkcs11-module-path = /usr/lib/softhsm/libsofthsm2.so\n" in text
    assert "pkcs11-module-token-pin = file:/etc/gateway/pin\n" in text
    assert "default_properties = ?provider=default\n" in text
    assert "pkcs11-module-quirks = no-deinit\n" in text
    by_value = _config_text(parse_token_uri("pkcs11:module-path=/m.so;token=gw?pin-value=4321"), Path("/p.so"))
    assert "pkcs11-module-token-pin = 4321\n" in by_value


@pytest.mark.parametrize("pin", ["12\\n34", "a#b", "x$y", 'q"r'])
def test_config_text_refuses_a_pin_openssl_config_cannot_hold(pin: str) -> None:
    token = parse_token_uri(f"pkcs11:module-path=/m.so;token=gw?pin-value={pin.replace('#', '%23')}")
    with pytest.raises(KeyMaterialError, match="the PIN of token 'gw' has characters OpenSSL's config cannot hold"):
        _config_text(token, Path("/p.so"))


def test_config_text_refuses_a_module_path_openssl_config_cannot_hold() -> None:
    token = parse_token_uri("pkcs11:module-path=/opt/hsm$1/lib.so;token=gw?pin-value=1234")
    with pytest.raises(KeyMaterialError, match="the PKCS#11 module path has characters"):
        _config_text(token, Path("/p.so"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls-token") / "data"
    initialise(InitOptions(data_dir=directory, ca_key_type=KeyType.P256))
    return directory


def test_a_key_file_loads(data_dir: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_server_key(context, load_config(data_dir, environ={}))
    assert context.get_ca_certs() == []  # the chain went into the context as the server's own


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"tls.key": "tls/absent.key"}, r"key .*absent\.key do not load: No such file", id="fail/no-key"),
        pytest.param({"tls.cert": "tls/absent.crt"}, r"certificate .*absent\.crt and key", id="fail/no-cert"),
        pytest.param({"tls.key": "ra/ra.key"}, r"ra\.key do not load: [A-Z_]+$", id="fail/another-key"),
        pytest.param(
            {"tls.key": "pkcs11:object=tls-key"},
            "tls.key names a key in a token, but keys.kms names no token",
            id="fail/no-kms",
        ),
    ],
)
def test_a_server_key_that_does_not_load_is_one_line(data_dir: Path, overrides: dict[str, str], message: str) -> None:
    config = load_config(data_dir, environ={}, overrides=overrides)
    with pytest.raises(KeyMaterialError, match=message) as raised:
        load_server_key(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), config)
    assert "\n" not in str(raised.value)
