"""Keys in a PKCS#11 token, named by RFC 7512 URIs (step-ca style).

The token is named once (setting `keys.kms`), each key by its own short URI (`ca.key`, `ra.key`):

    keys.kms = "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=gw?pin-source=file:///etc/gateway/pin"
    ca.key   = "pkcs11:object=ca-key"

A token key is an instance of cryptography's own private-key classes (RSAPrivateKey,
EllipticCurvePrivateKey) whose sign() and decrypt() run inside the token, so every signer of the
gateway (certificates, CRLs, OCSP, CMS) uses it unchanged and never sees key bytes. This module holds
what needs no PKCS#11 library (parsing and the key interface); shared_ca.pkcs11_token talks to the
token, and is imported only when a token is configured (python-pkcs11 is the optional extra `hsm`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import unquote_to_bytes, urlparse

from shared_ca.errors import KeyMaterialError
from shared_ca.keys import PrivateKey

if TYPE_CHECKING:
    from shared_ca.pkcs11_token import Token

SCHEME = "pkcs11:"

# RFC 7512 §2.3 attributes. Those we act on, per URI; the others are known and refused by name.
_TOKEN_PATH = frozenset({"token", "serial", "manufacturer", "model", "slot-id", "module-path"})
_TOKEN_QUERY = frozenset({"module-path", "pin-source", "pin-value"})
_KEY_PATH = frozenset({"object", "id", "type"})
_KNOWN = frozenset(
    {
        "token",
        "manufacturer",
        "serial",
        "model",
        "library-manufacturer",
        "library-description",
        "library-version",
        "object",
        "type",
        "id",
        "slot-manufacturer",
        "slot-description",
        "slot-id",
        "pin-source",
        "pin-value",
        "module-name",
        "module-path",
    }
)


_PIN_VALUE = re.compile(r"(pin-value=)[^;&?]*", re.IGNORECASE)


class KmsUriError(ValueError):
    """A pkcs11: URI that cannot be used; the message names the attribute at fault."""


def is_token_key(value: str) -> bool:
    """True when a key setting names a token object (a pkcs11: URI) rather than a file."""
    return value.strip().lower().startswith(SCHEME)


def _attributes(text: str, allowed_path: frozenset[str], allowed_query: frozenset[str]) -> dict[str, bytes]:
    """The attributes of a pkcs11: URI, percent-decoded; KmsUriError naming any unknown, unsupported,
    repeated or empty one."""
    if not is_token_key(text):
        raise KmsUriError(f"{text!r} is not a pkcs11: URI")
    body = text.strip()[len(SCHEME) :]
    path, _, query = body.partition("?")
    found: dict[str, bytes] = {}
    for part, separator, allowed in ((path, ";", allowed_path), (query, "&", allowed_query)):
        for item in part.split(separator) if part else []:
            name, equals, raw = item.partition("=")
            name = name.strip().lower()
            if not equals:
                raise KmsUriError(f"{name!r} in {redact(text)} has no value (expected NAME=VALUE)")
            if name not in _KNOWN:
                raise KmsUriError(f"unknown attribute {name!r} in {redact(text)}")
            if name not in allowed:
                raise KmsUriError(f"attribute {name!r} is not supported in {redact(text)}")
            if name in found:
                raise KmsUriError(f"attribute {name!r} is given twice in {redact(text)}")
            value = unquote_to_bytes(raw)
            if not value:
                raise KmsUriError(f"attribute {name!r} is empty in {redact(text)}")
            found[name] = value
    return found


def redact(text: str) -> str:
    """The URI with any pin-value hidden (wherever it stands), for messages, logs and the audit trail."""
    return _PIN_VALUE.sub(r"\1***", text)


def _text(name: str, value: bytes, uri: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise KmsUriError(f"attribute {name!r} is not UTF-8 in {redact(uri)}") from None


@dataclass(frozen=True)
class TokenUri:
    """Where the token is (module, label/serial/slot) and how to log in (PIN file or value)."""

    module_path: str
    label: str | None
    serial: str | None
    manufacturer: str | None
    model: str | None
    slot_id: int | None
    pin_source: Path | None
    pin_value: str | None
    text: str  # as configured, pin-value redacted

    @property
    def name(self) -> str:
        """A short name for messages: the token label, else its serial, else its slot."""
        if self.label:
            return f"token {self.label!r}"
        if self.serial:
            return f"token with serial {self.serial}"
        return f"the token in slot {self.slot_id}"


def parse_token_uri(text: str) -> TokenUri:
    """The `keys.kms` URI; KmsUriError naming what is missing or wrong."""
    attrs = _attributes(text, _TOKEN_PATH, _TOKEN_QUERY)
    values = {name: _text(name, value, text) for name, value in attrs.items()}
    module = values.get("module-path")
    if module is None:
        raise KmsUriError(f"{redact(text)} names no module-path (the PKCS#11 library, a .so file)")
    if not module.startswith("/"):
        raise KmsUriError(f"module-path {module!r} must be an absolute path")
    if not {"token", "serial", "slot-id"} & values.keys():
        raise KmsUriError(f"{redact(text)} names no token (give token=LABEL, serial= or slot-id=)")
    slot_id = None
    if "slot-id" in values:
        if not values["slot-id"].isdigit():
            raise KmsUriError(f"slot-id {values['slot-id']!r} is not a number")
        slot_id = int(values["slot-id"])
    if "pin-source" in values and "pin-value" in values:
        raise KmsUriError(f"{redact(text)} gives both pin-source and pin-value: give one")
    if "pin-source" not in values and "pin-value" not in values:
        raise KmsUriError(f"{redact(text)} gives no PIN: add ?pin-source=file:///path/to/pin")
    pin_source = None
    if "pin-source" in values:
        pin_source = _pin_path(values["pin-source"])
    return TokenUri(
        module_path=module,
        label=values.get("token"),
        serial=values.get("serial"),
        manufacturer=values.get("manufacturer"),
        model=values.get("model"),
        slot_id=slot_id,
        pin_source=pin_source,
        pin_value=values.get("pin-value"),
        text=redact(text.strip()),
    )


def _pin_path(source: str) -> Path:
    """pin-source as a file: URI (RFC 7512 §2.4) or an absolute path."""
    if source.startswith("file:"):
        parsed = urlparse(source)
        if parsed.netloc not in ("", "localhost"):
            raise KmsUriError(f"pin-source {source!r} names a remote host; only local files are read")
        source = parsed.path
    if not source.startswith("/"):
        raise KmsUriError(f"pin-source {source!r} must be an absolute file: URI or path")
    return Path(source)


def read_pin(uri: TokenUri) -> str:
    """The user PIN of `uri`: pin-value, or the first line of the pin-source file."""
    if uri.pin_value is not None:
        return uri.pin_value
    assert uri.pin_source is not None  # parse_token_uri requires one of them
    try:
        data = uri.pin_source.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyMaterialError(f"cannot read the PIN file {uri.pin_source} of {uri.name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyMaterialError(f"the PIN file {uri.pin_source} of {uri.name} is not UTF-8 text") from None
    pin = data.splitlines()[0] if data else ""
    if not pin:
        raise KeyMaterialError(f"the PIN file {uri.pin_source} of {uri.name} is empty")
    return pin


@dataclass(frozen=True)
class KeyUri:
    """One private key in the token: by label (`object=`), by CKA_ID (`id=`), or both."""

    label: str | None
    key_id: bytes | None
    text: str

    @property
    def name(self) -> str:
        if self.label is not None:
            return f"key {self.label!r}"
        assert self.key_id is not None
        return f"key with id {self.key_id.hex()}"


def parse_key_uri(text: str) -> KeyUri:
    """A key setting's `pkcs11:object=LABEL` (or `id=%01%02`); the token comes from `keys.kms`."""
    attrs = _attributes(text, _KEY_PATH, frozenset())
    if "type" in attrs and attrs["type"] != b"private":
        raise KmsUriError(
            f"type={attrs['type'].decode('utf-8', 'replace')!r} in {text!r}: a key setting names type=private"
        )
    if "object" not in attrs and "id" not in attrs:
        raise KmsUriError(f"{text!r} names no key: give object=LABEL or id=%XX..")
    label = _text("object", attrs["object"], text) if "object" in attrs else None
    return KeyUri(label=label, key_id=attrs.get("id"), text=text.strip())


_REFERENCE_NOTE = b"# This key is in the PKCS#11 token keys.kms names; this file only names it (RFC 7512).\n"


def key_reference(uri: str) -> bytes:
    """The content of a key file that stands for a key in the token (`gateway ca rollover` writes one
    into a CA slot whose keys are in the token): a comment and the key's URI, no key material."""
    return _REFERENCE_NOTE + uri.strip().encode("utf-8") + b"\n"


def read_key_reference(path: Path) -> str | None:
    """The key URI a key file holds instead of a key (see key_reference); None for any other file."""
    try:
        with path.open("rb") as file:
            head = file.read(4096)
    except OSError:
        return None  # the key loader says what is wrong with the file
    lines = [line.strip() for line in head.splitlines() if line.strip() and not line.startswith(b"#")]
    if len(lines) != 1 or not lines[0].lower().startswith(SCHEME.encode()):
        return None
    return lines[0].decode("utf-8", "replace")


@runtime_checkable
class TokenKey(Protocol):
    """A private key that lives in a token (shared_ca.pkcs11_token): what readiness asks of it."""

    @property
    def reference(self) -> str:
        """Where the key is, for messages: the token and the key URI."""
        ...

    def probe(self) -> None:
        """Sign a few bytes in the token; Unavailable (TokenUnavailable) when it cannot."""
        ...


def token_key(kms: str, key: str, *, setting: str) -> PrivateKey:
    """The private key that `key` (a pkcs11: URI, the value of `setting`) names in the token `kms`
    names; KeyMaterialError in one line for a bad URI, a missing module, token or key, or a wrong PIN."""
    token = open_token(kms, setting=setting)
    try:
        key_uri = parse_key_uri(key)
    except KmsUriError as exc:
        raise KeyMaterialError(f"{setting}: {exc}") from None
    return token.private_key(key_uri)


def open_token(kms: str, *, setting: str, source: str = "keys.kms") -> Token:
    """This process's session holder for the token `kms` (the keys.kms URI, from `source`) names."""
    if not kms:
        raise KeyMaterialError(f"{setting} names a key in a token, but {source} names no token")
    try:
        token_uri = parse_token_uri(kms)
    except KmsUriError as exc:
        raise KeyMaterialError(f"{source}: {exc}") from None
    try:
        from shared_ca import pkcs11_token
    except ImportError:
        raise KeyMaterialError(
            "keys in a PKCS#11 token need python-pkcs11: pip install 'scep-est-gateway[hsm]'"
        ) from None
    return pkcs11_token.open_token(token_uri)


def release_tokens() -> None:
    """Close this process's token sessions and finalize its PKCS#11 libraries (before a fork whose
    children use the keys, or when done with them); nothing when no token was opened."""
    module = sys.modules.get("shared_ca.pkcs11_token")
    if module is not None:
        module.release_tokens()
