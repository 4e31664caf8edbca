"""`gateway init --kms`: the CA and SCEP RA keys made, or found, in a PKCS#11 token (shared_ca.kms).

A key the URI names that the token already holds is used as it is; one it does not hold is generated
there, sensitive and never extractable. Keys this init generated are destroyed again when the init
fails, so a failed init leaves the token as it found it. The HTTPS key is in the token too (served
through OpenSSL's pkcs11 provider, gateway.tls_token) unless init is told to keep it in a file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from shared_ca.ca_material import CAMaterial, create_root_ca, material_from_pem
from shared_ca.errors import KeyMaterialError
from shared_ca.keys import KeyType, PrivateKey, load_certificates
from shared_ca.kms import KeyUri, KmsUriError, open_token, parse_key_uri

if TYPE_CHECKING:  # python-pkcs11 is imported only once a token is used (shared_ca.kms)
    from shared_ca.pkcs11_token import Token

DEFAULT_CA_KEY_URI = "pkcs11:object=ca-key"
DEFAULT_RA_KEY_URI = "pkcs11:object=ra-key"
DEFAULT_RA_ENCRYPTION_KEY_URI = "pkcs11:object=ra-encryption-key"
DEFAULT_TLS_KEY_URI = "pkcs11:object=tls-key"


@dataclass
class TokenKeys:
    """The keys of a new gateway in its token, and which of them this init generated."""

    token: Token
    ca: PrivateKey
    ra: rsa.RSAPrivateKey
    ra_encryption: rsa.RSAPrivateKey | None
    tls: PrivateKey | None  # None: the HTTPS key is a file
    settings: dict[str, str]  # key setting -> its pkcs11: URI, for the config file
    generated: list[KeyUri] = field(default_factory=list)
    found: list[str] = field(default_factory=list)  # URIs of keys the token held already

    def note(self) -> str:
        """What init did in the token, for its output."""
        made = [key.text for key in self.generated]
        parts = [f"made {', '.join(made)}" if made else "", f"found {', '.join(self.found)}" if self.found else ""]
        return f"{self.token.name}: {'; '.join(p for p in parts if p)}"

    def discard_generated(self) -> None:
        """Destroy the keys this init made (it failed): the token is left as it was found."""
        for key in self.generated:
            with contextlib.suppress(Exception):  # best effort: the init's own error is the one to report
                self.token.destroy(key)
        self.generated.clear()


def _uri(text: str, option: str) -> KeyUri:
    try:
        return parse_key_uri(text)
    except KmsUriError as exc:
        raise KeyMaterialError(f"{option}: {exc}") from None


def token_keys(
    kms: str,
    *,
    ca_key_uri: str,
    ra_key_uri: str,
    ra_encryption_key_uri: str | None,
    tls_key_uri: str | None,
    ca_key_type: KeyType,
) -> TokenKeys:
    """Find or generate the CA key, the RA key, (with separate RA keys) the RA encryption key and (unless
    it stays a file) the HTTPS key in the token `kms` names; KeyMaterialError in one line when the
    token, its PIN or a key will not do."""
    wanted = {"ca.key": (_uri(ca_key_uri, "--ca-key-uri"), ca_key_uri)}
    wanted["ra.key"] = (_uri(ra_key_uri, "--ra-key-uri"), ra_key_uri)
    if ra_encryption_key_uri is not None:
        wanted["ra.encryption_key"] = (_uri(ra_encryption_key_uri, "--ra-encryption-key-uri"), ra_encryption_key_uri)
    if tls_key_uri is not None:
        wanted["tls.key"] = (_uri(tls_key_uri, "--tls-key-uri"), tls_key_uri)
    uris = [uri for uri, _text in wanted.values()]
    if len(set(uris)) != len(uris):
        raise KeyMaterialError("the CA, RA and TLS keys must be different token objects: give each its own label")
    token = open_token(kms, setting="--ca-key-uri", source="--kms")
    made: list[KeyUri] = []
    found: list[str] = []
    keys: dict[str, PrivateKey] = {}
    try:
        for setting, (uri, text) in wanted.items():
            if token.has_key(uri):
                keys[setting] = token.private_key(uri)
                found.append(text)
            else:
                key_type = {"ca.key": ca_key_type, "tls.key": KeyType.P256}.get(setting, KeyType.RSA2048)
                keys[setting] = token.generate(uri, key_type, decrypt=setting.startswith("ra."))
                made.append(uri)
            if setting.startswith("ra.") and not isinstance(keys[setting], rsa.RSAPrivateKey):
                raise KeyMaterialError(f"{text} in {token.name} is not an RSA key: SCEP envelopes need RSA")
    except BaseException:
        for uri in made:
            with contextlib.suppress(Exception):
                token.destroy(uri)
        raise
    ra, ra_encryption = keys["ra.key"], keys.get("ra.encryption_key")
    assert isinstance(ra, rsa.RSAPrivateKey)
    assert ra_encryption is None or isinstance(ra_encryption, rsa.RSAPrivateKey)
    return TokenKeys(
        token=token,
        ca=keys["ca.key"],
        ra=ra,
        ra_encryption=ra_encryption,
        tls=keys.get("tls.key"),
        settings={setting: text.strip() for setting, (_uri_, text) in wanted.items()},
        generated=made,
        found=found,
    )


def token_ca_material(
    keys: TokenKeys,
    *,
    import_ca_cert: Path | None,
    subject: x509.Name,
    days: int,
    now: dt.datetime,
) -> CAMaterial:
    """The CA of the token's CA key: the imported certificate of that key, or a new self-signed root."""
    if import_ca_cert is not None:
        return material_from_pem(load_certificates(import_ca_cert), keys.ca, now)
    return create_root_ca(keys.ca, subject, days, now)
