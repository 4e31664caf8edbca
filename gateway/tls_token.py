"""The HTTPS listener's private key in the PKCS#11 token (`tls.key = "pkcs11:object=tls-key"`).

Python's ssl module loads a server key only through OpenSSL's PEM reader, and OpenSSL 3 reads a key
from a token there once its pkcs11-provider (Debian's `pkcs11-provider`) is loaded and the PEM file
holds the key's PKCS#11 URI instead of key bytes ("PKCS#11 PROVIDER URI", the provider's own format).
So: the provider is loaded into the very libcrypto Python's ssl uses (not process-wide through
OPENSSL_CONF, which would also reach the OpenSSL inside cryptography), from a configuration naming the
keys.kms module and PIN; the URI file exists only in a private temporary directory for the moment of
loading; then one TLS handshake in memory proves the token signs for this key before a worker forks.
The provider logs in again in each forked worker by itself, with the PIN it was configured with.

The data directory holds no key: only the certificate (`tls.cert`) and the URI in config.toml.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

from asn1crypto import core, pem

from gateway.config import GatewayConfig
from gateway.runtime import key_passphrase
from shared_ca.errors import KeyMaterialError
from shared_ca.kms import (
    KeyUri,
    KmsUriError,
    TokenUri,
    is_token_key,
    open_token,
    parse_key_uri,
    parse_token_uri,
    read_pin,
)

log = logging.getLogger("gateway.tls_token")

PROVIDER = "pkcs11"  # OpenSSL's pkcs11-provider, found in OpenSSL's modules directory
_PEM_LABEL = "PKCS#11 PROVIDER URI"
_PEM_DESCRIPTION = "PKCS#11 Provider URI v1.0"
_OPENSSL_MODULES_DIR = 8  # OpenSSL_version(OPENSSL_MODULES_DIR)
_INSTALL_HINT = "install OpenSSL's pkcs11-provider (Debian: apt install pkcs11-provider; bookworm: from backports)"

_lock = threading.Lock()
_loaded: dict[str, TokenUri] = {}  # "token": the token this process's provider was configured for


class _ProviderUri(core.Sequence):  # type: ignore[misc]
    """The provider's PEM body: SEQUENCE { desc VisibleString, uri UTF8String }."""

    _fields = [("desc", core.VisibleString), ("uri", core.UTF8String)]


def provider_key_uri(token: TokenUri, key: KeyUri) -> str:
    """The one RFC 7512 URI that names `key` in `token` for the provider (no PIN in it)."""

    def attr(name: str, value: str | bytes) -> str:
        return f"{name}={quote(value, safe='')}"

    parts = []
    if token.label:
        parts.append(attr("token", token.label))
    if token.serial:
        parts.append(attr("serial", token.serial))
    if token.manufacturer:
        parts.append(attr("manufacturer", token.manufacturer))
    if token.model:
        parts.append(attr("model", token.model))
    if token.slot_id is not None:
        parts.append(f"slot-id={token.slot_id}")
    if key.label is not None:
        parts.append(attr("object", key.label))
    if key.key_id is not None:
        parts.append(attr("id", key.key_id))
    parts.append("type=private")
    return "pkcs11:" + ";".join(parts)


def uri_pem(uri: str) -> bytes:
    """The PEM file that stands for the key `uri` names (it holds no key material)."""
    body = _ProviderUri({"desc": _PEM_DESCRIPTION, "uri": uri}).dump()
    armored: bytes = pem.armor(_PEM_LABEL, body)
    return armored


def _libcrypto() -> ctypes.CDLL:
    """The libcrypto Python's ssl module is linked with (the loader hands back the loaded copy)."""
    try:
        library = ctypes.CDLL("libcrypto.so.3")
        version = library.OpenSSL_version
        version.restype = ctypes.c_char_p
        version.argtypes = [ctypes.c_int]
        loaded = library.OSSL_LIB_CTX_load_config
    except (OSError, AttributeError):
        raise KeyMaterialError(
            f"a key in a token for HTTPS needs OpenSSL 3 under Python's ssl module, which has {ssl.OPENSSL_VERSION}"
        ) from None
    if (version(0) or b"").decode("ascii", "replace") != ssl.OPENSSL_VERSION:
        raise KeyMaterialError(
            f"Python's ssl module runs {ssl.OPENSSL_VERSION}, not the system's libcrypto.so.3: "
            "the pkcs11 provider cannot be loaded into it"
        )
    loaded.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    loaded.restype = ctypes.c_int
    available = library.OSSL_PROVIDER_available
    available.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    available.restype = ctypes.c_int
    return library


def _modules_dir(library: ctypes.CDLL) -> Path:
    text = (library.OpenSSL_version(_OPENSSL_MODULES_DIR) or b"").decode("utf-8", "replace")
    return Path(text.partition(":")[2].strip().strip('"'))  # MODULESDIR: "/usr/lib/.../ossl-modules"


_UNSAFE = "\n\r\"'$\\#"  # OpenSSL's config reads these as line ends, quotes, variables, escapes, comments


def _config_value(value: str, what: str) -> str:
    if any(c in value for c in _UNSAFE):
        raise KeyMaterialError(f"{what} has characters OpenSSL's config cannot hold ({_UNSAFE!r})")
    return value


def _config_text(token: TokenUri, module: Path) -> str:
    if token.pin_source is not None:
        pin = _config_value(f"file:{token.pin_source}", f"the PIN file path of {token.name}")
    else:
        pin = _config_value(read_pin(token), f"the PIN of {token.name}")
    module_path = _config_value(token.module_path, "the PKCS#11 module path")
    provider = _config_value(str(module), "the pkcs11 provider's path")
    return "\n".join(
        [
            "openssl_conf = gateway_tls_token",
            "[gateway_tls_token]",
            "providers = gateway_providers",
            "alg_section = gateway_algorithms",
            # Everything but the token key's own operations stays with OpenSSL's default provider: no
            # digest or handshake arithmetic of this process goes to the token.
            "[gateway_algorithms]",
            "default_properties = ?provider=default",
            "[gateway_providers]",
            "default = gateway_default",
            f"{PROVIDER} = gateway_pkcs11",
            "[gateway_default]",
            "activate = 1",
            "[gateway_pkcs11]",
            f"module = {provider}",
            f"pkcs11-module-path = {module_path}",
            f"pkcs11-module-token-pin = {pin}",
            # SoftHSM2 (and other modules linked with OpenSSL) crash when finalized from OpenSSL's
            # exit handlers; the process is ending anyway.
            "pkcs11-module-quirks = no-deinit",
            "activate = 1",
            "",
        ]
    )


def load_provider(token: TokenUri) -> None:
    """Load the pkcs11 provider for `token` into Python's ssl (once per process; one token)."""
    with _lock:
        if "token" in _loaded:
            if _loaded["token"] != token:
                served = _loaded["token"].name
                raise KeyMaterialError(f"the pkcs11 provider of this process serves {served}, not {token.name}")
            return
        library = _libcrypto()
        module = _modules_dir(library) / f"{PROVIDER}.so"
        if not module.is_file():
            raise KeyMaterialError(f"tls.key is in a token, and OpenSSL has no {module}: {_INSTALL_HINT}")
        with tempfile.TemporaryDirectory(prefix="gateway-tls-") as directory:
            path = Path(directory) / "openssl.cnf"  # may hold a pin-value: private directory, gone at once
            path.touch(mode=0o600)
            path.write_text(_config_text(token, module), encoding="utf-8")
            if library.OSSL_LIB_CTX_load_config(None, str(path).encode()) != 1:
                raise KeyMaterialError(f"OpenSSL could not load its pkcs11 provider ({module}) for {token.name}")
        if library.OSSL_PROVIDER_available(None, PROVIDER.encode()) != 1:
            raise KeyMaterialError(f"OpenSSL loaded no pkcs11 provider from {module}")
        _loaded["token"] = token


def load_server_key(context: ssl.SSLContext, config: GatewayConfig) -> None:
    """The HTTPS certificate chain (tls.cert) and its key (tls.key: a file, or a key in the keys.kms
    token) into `context`; KeyMaterialError in one line when they do not load."""
    cert_file = config.path("tls.cert")
    if is_token_key(config["tls.key"]):
        load_token_tls_key(context, cert_file, config["keys.kms"], config["tls.key"])
        return
    key_file = config.path("tls.key")
    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=key_passphrase(config))
    except (ssl.SSLError, OSError) as exc:
        why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise KeyMaterialError(f"the HTTPS certificate {cert_file} and key {key_file} do not load: {why}") from None


def load_token_tls_key(context: ssl.SSLContext, cert_file: Path, kms: str, key: str) -> str:
    """Load the certificate chain `cert_file` and the token key `key` (a pkcs11: URI in the keys.kms
    token `kms`) into `context`, and prove with a handshake that the token signs for it. Returns the
    provider's URI of the key, for messages; KeyMaterialError in one line when anything is missing."""
    if not kms:
        raise KeyMaterialError("tls.key names a key in a token, but keys.kms names no token")
    try:
        token = parse_token_uri(kms)
        key_uri = parse_key_uri(key)
    except KmsUriError as exc:
        raise KeyMaterialError(f"tls.key: {exc}") from None
    load_provider(token)
    uri = provider_key_uri(token, key_uri)
    with tempfile.TemporaryDirectory(prefix="gateway-tls-") as directory:
        reference = Path(directory) / "key.pem"
        reference.write_bytes(uri_pem(uri))
        try:
            context.load_cert_chain(str(cert_file), str(reference))
        except (ssl.SSLError, OSError) as exc:
            raise KeyMaterialError(_not_loaded(kms, key_uri, cert_file, exc)) from None
    prove_signing(context, f"the HTTPS key {key_uri.text} in {token.name}")
    log.info("HTTPS key in %s: %s (OpenSSL pkcs11 provider)", token.name, key_uri.text)
    return uri


def _not_loaded(kms: str, key: KeyUri, cert_file: Path, exc: ssl.SSLError | OSError) -> str:
    """Why OpenSSL did not load the key (its own errors do not tell a missing key from a wrong
    certificate): asked of the token itself, through python-pkcs11."""
    if not cert_file.is_file():
        return f"the HTTPS certificate {cert_file} does not exist"
    token = open_token(kms, setting="tls.key")
    if not token.has_key(key):  # KeyMaterialError itself for a wrong PIN or a missing token
        return f"the HTTPS key {key.text} is not in {token.name}"
    reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else exc
    return (
        f"the HTTPS key {key.text} in {token.name} does not load with {cert_file}: {reason} (is that its certificate?)"
    )


def prove_signing(context: ssl.SSLContext, what: str) -> None:
    """One TLS handshake with `context` as the server, in memory: the server key signs (in the token)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = context.wrap_bio(server_in, server_out, server_side=True)
    peer = client.wrap_bio(client_in, client_out, server_side=False)
    done = {"server": False, "client": False}  # the server signs in its handshake; a failure shows on either
    for _round in range(10):
        for name, side in (("client", peer), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    raise KeyMaterialError(f"{what} cannot sign a TLS handshake: {exc.reason or exc}") from None
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return
    raise KeyMaterialError(f"{what}: a TLS handshake in memory did not complete")
