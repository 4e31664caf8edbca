"""Sessions on a PKCS#11 token and the private keys in it, through python-pkcs11.

One session per token per process, opened on first use and logged in with the token's PIN; a process
that finds itself forked (a gunicorn worker) drops what it inherited and opens its own. Every call into
the token holds the token's lock, so threads and greenlets take turns on the one session; a call
releases the GIL but blocks a gevent worker's loop for its duration (about 1 ms for an RSA-2048
signature in SoftHSM2).

The library handles and sessions are per process by nature (PKCS#11 C_Initialize is per process), so
they live in a module-level registry; nothing in it is state another process or host must agree on.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pkcs11
import pkcs11._pkcs11
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import MGF
from pkcs11.util.ec import encode_named_curve_parameters

from shared_ca.errors import KeyMaterialError, Unavailable
from shared_ca.keys import KeyType
from shared_ca.kms import KeyUri, TokenUri, read_pin

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Library  # noqa: N812 - the Cython class is named in lowercase

log = logging.getLogger("shared_ca.pkcs11")
RETRY_SECONDS = 2.0  # how long a failure to open the token is answered from memory before trying again
LOGIN_ATTEMPTS = 5  # within one open, for a token not found or a general failure (about 0.2 s in all)
T = TypeVar("T")

# A session that stopped working: the token was removed, the library finalized, the session closed.
# One reconnect is tried; a plain PKCS11Error is what python-pkcs11 raises for codes it has no class for
# (CKR_CRYPTOKI_NOT_INITIALIZED among them).
_STALE: tuple[type[p11.PKCS11Error], ...] = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceRemoved,
    p11.DeviceError,
    p11.DeviceMemory,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.UserNotLoggedIn,
    p11.KeyHandleInvalid,
    p11.ObjectHandleInvalid,
)

# RFC 8017 §9.2 note 1: the DER DigestInfo prefix of each hash, for CKM_RSA_PKCS over a digest made here.
_DIGEST_INFO = {
    "md5": bytes.fromhex("3020300c06082a864886f70d020505000410"),
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha224": bytes.fromhex("302d300d06096086480165030402040500041c"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
# The PKCS#11 hash and MGF1 of each hash, for RSA-PSS and RSA-OAEP parameters.
_HASH_MECHANISMS = {
    "sha1": (Mechanism.SHA_1, MGF.SHA1),
    "sha224": (Mechanism.SHA224, MGF.SHA224),
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}
_CURVE_OIDS = {"secp256r1": "1.2.840.10045.3.1.7", "secp384r1": "1.3.132.0.34", "secp521r1": "1.3.132.0.35"}
_RSA_BITS = {KeyType.RSA2048: 2048, KeyType.RSA3072: 3072, KeyType.RSA4096: 4096}
_EC_CURVES = {KeyType.P256: "secp256r1", KeyType.P384: "secp384r1", KeyType.P521: "secp521r1"}


class TokenUnavailable(Unavailable):
    """The token did not answer an operation (removed, logged out, failing): 503, and the cause in the log."""

    def __init__(self, detail: str) -> None:
        super().__init__("a signing key is unavailable", detail=detail, retry_after=5)


class _NoSuchKey(KeyMaterialError):
    """The token holds no private key the URI names."""


class _Transient(KeyMaterialError):
    """Opening the token failed in a way that may pass in a moment (not a PIN refusal)."""


class _Gone(KeyMaterialError):
    """The token's session stopped working and a new one did not work either."""


# -- the process's libraries and tokens --------------------------------------------------------------


@dataclass
class _Process:
    pid: int = field(default_factory=os.getpid)
    libraries: dict[str, Library] = field(default_factory=dict)
    tokens: dict[TokenUri, Token] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_process = _Process()


def _forked() -> None:
    """In a process forked from one that used a token: forget the parent's sessions (they are its, not
    ours) and finalize the library state this process inherited, so it initializes its own."""
    if _process.pid == os.getpid():
        return
    for token in _process.tokens.values():
        token.forget()
    for library in _process.libraries.values():
        with contextlib.suppress(p11.PKCS11Error):
            library.finalize()
    _process.pid = os.getpid()


def _initialize(library: Library, path: str) -> None:
    """C_Initialize, where another user in this process may have initialized the module first: OpenSSL's
    pkcs11 provider holding the HTTPS key (gateway.tls_token). Then the module answers
    CKR_CRYPTOKI_ALREADY_INITIALIZED and is used as it is; `initialized` stays False, so this process
    never finalizes a module under the provider's feet (release_tokens, a failed login's retry, a fork)."""
    try:
        library.initialize()
    except p11.PKCS11Error as exc:
        if "already initialized" not in str(exc):  # python-pkcs11 has no class of its own for it
            raise
        log.debug("PKCS#11 module %s: already initialized in this process; used as it is", path)


def _library(path: str) -> Library:
    library = _process.libraries.get(path)
    if library is None:
        if not Path(path).is_file():
            raise KeyMaterialError(f"the PKCS#11 module {path} does not exist")
        try:
            # pkcs11.lib() would C_Initialize in its constructor and fail when the module is initialized
            # already: the object is made without it (its __cinit__ loads the module), then _initialize.
            library = pkcs11._pkcs11.lib.__new__(pkcs11._pkcs11.lib, path)  # type: ignore[call-arg]
            _initialize(library, path)
        except p11.PKCS11Error as exc:
            raise KeyMaterialError(f"cannot load the PKCS#11 module {path}: {_why(exc)}") from None
        _process.libraries[path] = library  # kept for the life of the process: sessions point into it
    elif not library.initialized:
        try:
            _initialize(library, path)
        except p11.PKCS11Error as exc:
            raise KeyMaterialError(f"the PKCS#11 module {path} does not initialize: {_why(exc)}") from None
    return library


def open_token(uri: TokenUri) -> Token:
    """This process's Token for `uri` (created on first use; the session opens when first needed)."""
    with _process.lock:
        _forked()
        token = _process.tokens.get(uri)
        if token is None:
            token = Token(uri)
            _process.tokens[uri] = token
        return token


def release_tokens() -> None:
    """Close every session and finalize every library of this process: before a fork whose children
    use the token (a gunicorn arbiter), and when a process is done with its keys."""
    with _process.lock:
        _forked()
        tokens = list(_process.tokens.values())
    for token in tokens:  # outside the process lock: a token takes it under its own (lock order)
        token.close()
    with _process.lock:
        for library in _process.libraries.values():
            with contextlib.suppress(p11.PKCS11Error):
                library.finalize()


# -- one token ---------------------------------------------------------------------------------------


class Token:
    """A token of a PKCS#11 module, with this process's one session on it."""

    def __init__(self, uri: TokenUri) -> None:
        self.uri = uri
        self._lock = threading.RLock()
        self._token: pkcs11.Token | None = None
        self._session: pkcs11.Session | None = None
        self._keys: dict[KeyUri, Any] = {}  # the private-key objects found in this session
        self._failure: KeyMaterialError | None = None
        self._retry_at = 0.0
        self._refused: tuple[str, KeyMaterialError] | None = None  # a PIN the token refused, never tried again

    @property
    def name(self) -> str:
        return self.uri.name

    def forget(self) -> None:
        """Drop the session without a call into the token (it was opened by another process)."""
        self._token, self._session, self._keys = None, None, {}

    def close(self) -> None:
        """Close the session (logging out); the next use opens a new one."""
        with self._lock:
            if self._session is not None:
                with contextlib.suppress(p11.PKCS11Error):
                    self._session.close()
            self.forget()

    def _find(self, library: Library) -> pkcs11.Token:
        uri = self.uri
        matches, seen = [], []
        for slot in library.get_slots(token_present=True):
            try:
                token = slot.get_token()
            except (p11.TokenNotPresent, p11.TokenNotRecognised):
                continue
            if token.label:  # an uninitialized token has none
                seen.append(repr(token.label))
            serial = token.serial.decode("ascii", "replace").strip()
            if (
                (uri.label is None or token.label == uri.label)
                and (uri.serial is None or serial == uri.serial)
                and (uri.slot_id is None or slot.slot_id == uri.slot_id)
                and (uri.manufacturer is None or token.manufacturer_id == uri.manufacturer)
                and (uri.model is None or token.model == uri.model)
            ):
                matches.append(token)
        if not matches:
            found = ", ".join(seen) if seen else "none"
            raise _Transient(f"no {self.name} in the PKCS#11 module {uri.module_path} (tokens there: {found})")
        if len(matches) > 1:
            raise KeyMaterialError(f"{len(matches)} tokens match {uri.text}: name one by serial= or slot-id=")
        return matches[0]

    def _open(self) -> pkcs11.Session:
        """A logged-in session; KeyMaterialError saying what is wrong (kept for RETRY_SECONDS)."""
        now = time.monotonic()
        if self._failure is not None and now < self._retry_at:
            raise self._failure
        try:
            session = self._login_patiently()
        except KeyMaterialError as exc:
            self._failure, self._retry_at = exc, now + RETRY_SECONDS
            raise
        self._failure = None
        return session

    def _login_patiently(self) -> pkcs11.Session:
        """_login, tried again a few times over a fraction of a second while the token is not found or
        the module fails in general: SoftHSM2's file store shows a token as missing, or fails, while
        another process rewrites its files (as the workers of a gateway do, logging in together)."""
        for attempt in range(1, LOGIN_ATTEMPTS + 1):
            try:
                return self._login()
            except _Transient:
                if attempt == LOGIN_ATTEMPTS:
                    raise
            time.sleep(0.02 * attempt)
            with _process.lock:  # the module reads its token list at C_Initialize: start it afresh
                library = _process.libraries.get(self.uri.module_path)
                if library is not None:
                    for token in _process.tokens.values():  # their sessions end with the finalize
                        if token.uri.module_path == self.uri.module_path:
                            token.forget()
                    with contextlib.suppress(p11.PKCS11Error):
                        library.finalize()
        raise AssertionError("unreachable")

    def _login(self) -> pkcs11.Session:
        with _process.lock:
            _forked()
            library = _library(self.uri.module_path)
        token = self._find(library)
        pin = read_pin(self.uri)
        if self._refused is not None and self._refused[0] == pin:
            # A wrong PIN tried again and again locks the token: each process tries a PIN once.
            raise self._refused[1]
        source = f"from {self.uri.pin_source}" if self.uri.pin_source else "pin-value in the URI"
        try:
            session = token.open(user_pin=pin)
        except p11.PinIncorrect:
            error = KeyMaterialError(f"wrong PIN for {self.name} ({source})")
            self._refused = (pin, error)
            raise error from None
        except p11.PinLocked:
            raise KeyMaterialError(f"the user PIN of {self.name} is locked: unlock it with the SO PIN") from None
        except p11.PinExpired:
            raise KeyMaterialError(f"the user PIN of {self.name} has expired: set a new one") from None
        except p11.UserPinNotInitialized:  # or SoftHSM2 read its flags while another process wrote them
            raise _Transient(f"the user PIN of {self.name} was never set (softhsm2-util --init-token)") from None
        except p11.UserAlreadyLoggedIn:  # another session of this process logged in first: that one counts
            session = token.open()
        except (p11.GeneralError, p11.TokenNotRecognised, p11.TokenNotPresent, p11.DeviceError) as exc:
            raise _Transient(f"cannot log in to {self.name}: {_why(exc)}") from None
        except p11.PKCS11Error as exc:
            raise KeyMaterialError(f"cannot log in to {self.name}: {_why(exc)}") from None
        self._token, self._session, self._keys = token, session, {}
        return session

    def _current(self) -> pkcs11.Session:
        if _process.pid != os.getpid():
            with _process.lock:
                _forked()
        return self._session if self._session is not None else self._open()

    def _object(self, session: pkcs11.Session, key: KeyUri) -> Any:
        found = self._keys.get(key)
        if found is None:
            matches = _search_two(session, _search(ObjectClass.PRIVATE_KEY, key))
            if not matches:
                raise _NoSuchKey(f"{self.name} has no private {key.name} ({key.text})")
            if len(matches) > 1:
                raise KeyMaterialError(f"{self.name} has several private keys matching {key.text}")
            found = self._keys[key] = matches[0]
        return found

    def _in_session(self, operation: Callable[[pkcs11.Session], T], *, general_error_passes: bool = False) -> T:
        """`operation` on this process's session, under the token's lock. A session that stopped working
        is reopened once; _Gone when that fails too. With `general_error_passes`, a CKR_GENERAL_ERROR is
        first tried again on the same session (SoftHSM2 fails so while another process rewrites its
        files). Other PKCS#11 errors pass; KeyMaterialError when the session cannot be opened."""
        with self._lock:
            for attempt in (1, 2, 3):
                try:
                    return operation(self._current())
                except _STALE as exc:
                    stale: p11.PKCS11Error = exc
                except p11.GeneralError as exc:
                    if not general_error_passes:
                        raise
                    stale = exc
                    if attempt == 1:
                        time.sleep(0.02)
                        continue
                except p11.PKCS11Error as exc:
                    if type(exc) is not p11.PKCS11Error:
                        raise
                    stale = exc
                self.close()
                if attempt < 3:
                    log.warning("%s: the session stopped working (%s); opening a new one", self.name, _why(stale))
            raise _Gone(f"{self.name} does not answer: {_why(stale)}")

    def run(self, key: KeyUri, operation: Callable[[Any], T], *, general_error_passes: bool = False) -> T:
        """`operation` on the private-key object `key` (see _in_session); TokenUnavailable when the token
        cannot be reached or logged in to. Other PKCS#11 errors pass."""
        try:
            return self._in_session(
                lambda session: operation(self._object(session, key)), general_error_passes=general_error_passes
            )
        except KeyMaterialError as exc:  # every such message names the token
            raise TokenUnavailable(exc.detail) from None

    # -- keys -----------------------------------------------------------------------------------------

    def private_key(self, key: KeyUri) -> TokenRsaKey | TokenEcKey:
        """The key `key` names, as a cryptography private key whose operations run in the token;
        KeyMaterialError when the token or the key cannot be had."""
        try:
            public = self._in_session(
                lambda session: self._public_key(session, key, self._object(session, key)), general_error_passes=True
            )
        except p11.PKCS11Error as exc:
            raise KeyMaterialError(f"{self.name} cannot read {key.text}: {_why(exc)}") from None
        if isinstance(public, rsa.RSAPublicKey):
            return TokenRsaKey(self, key, public)
        return TokenEcKey(self, key, public)

    def has_key(self, key: KeyUri) -> bool:
        """True when the token holds a private key `key` names."""
        try:
            self._in_session(lambda session: self._object(session, key), general_error_passes=True)
        except _NoSuchKey:
            return False
        except p11.PKCS11Error as exc:
            raise KeyMaterialError(f"{self.name} cannot look for {key.text}: {_why(exc)}") from None
        return True

    def _public_key(
        self, session: pkcs11.Session, key: KeyUri, found: Any
    ) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        if found.key_type == P11KeyType.RSA:
            modulus = int.from_bytes(found[Attribute.MODULUS], "big")
            exponent = int.from_bytes(found[Attribute.PUBLIC_EXPONENT], "big")
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
        if found.key_type != P11KeyType.EC:
            raise KeyMaterialError(f"{key.text} in {self.name} is a {found.key_type.name} key: RSA or EC only")
        publics = _search_two(session, _search(ObjectClass.PUBLIC_KEY, key))
        if len(publics) != 1:
            raise KeyMaterialError(f"{self.name} has no single EC public key matching {key.text}")
        return _ec_public_key(found[Attribute.EC_PARAMS], publics[0][Attribute.EC_POINT], key)

    def generate(self, key: KeyUri, key_type: KeyType, *, decrypt: bool) -> TokenRsaKey | TokenEcKey:
        """A new key pair in the token, labelled as `key` names it: the private half sensitive and never
        extractable, allowed to sign (and to decrypt when `decrypt`)."""
        if key.label is None:
            raise KeyMaterialError(f"{key.text}: a new key needs a label (object=NAME)")
        if key_type not in _RSA_BITS and key_type not in _EC_CURVES:
            raise KeyMaterialError(f"a {key_type.value} key cannot be made in a token: RSA or EC (P-256/384/521)")
        capabilities = MechanismFlag.SIGN | MechanismFlag.VERIFY
        if decrypt:
            capabilities |= MechanismFlag.DECRYPT | MechanismFlag.ENCRYPT
        private = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
        }
        with self._lock:
            self._current()
            assert self._token is not None
            try:
                with self._token.open(rw=True) as writer:  # shares this process's login
                    common: dict[str, Any] = {
                        "label": key.label,
                        # A CKA_ID pairs the halves: OpenSSL's pkcs11 provider finds an EC key's public
                        # point by it (gateway.tls_token).
                        "id": key.key_id if key.key_id is not None else secrets.token_bytes(16),
                        "store": True,
                        "capabilities": capabilities,
                        "private_template": private,
                    }
                    if key_type in _RSA_BITS:
                        writer.generate_keypair(
                            P11KeyType.RSA,
                            _RSA_BITS[key_type],
                            public_template={Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
                            **common,
                        )
                    else:
                        curve = encode_named_curve_parameters(_CURVE_OIDS[_EC_CURVES[key_type]])
                        parameters = writer.create_domain_parameters(
                            P11KeyType.EC, {Attribute.EC_PARAMS: curve}, local=True
                        )
                        parameters.generate_keypair(**common)
            except p11.PKCS11Error as exc:
                raise KeyMaterialError(
                    f"{self.name} could not make {key.text}: {type(exc).__name__} {exc}".rstrip()
                ) from None
        return self.private_key(key)

    def destroy(self, key: KeyUri) -> None:
        """Remove the key pair `key` names (a key `gateway init` made and then could not use)."""
        with self._lock:
            self._current()
            assert self._token is not None
            self._keys.pop(key, None)
            with self._token.open(rw=True) as writer:
                for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                    for found in list(writer.get_objects(_search(object_class, key))):
                        found.destroy()


def _search_two(session: pkcs11.Session, attrs: dict[Attribute, Any]) -> list[Any]:
    """Up to two objects matching `attrs`. The search is closed before returning (python-pkcs11's
    get_key leaves a missed search open until collected, and its finalizer fails once the session is
    gone)."""
    found = session.get_objects(attrs)
    try:
        return list(itertools.islice(found, 2))
    finally:
        found.close()  # type: ignore[attr-defined]  # a generator, typed as an Iterator


def _search(object_class: ObjectClass, key: KeyUri) -> dict[Attribute, Any]:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class}
    if key.label is not None:
        attrs[Attribute.LABEL] = key.label
    if key.key_id is not None:
        attrs[Attribute.ID] = key.key_id
    return attrs


def _why(exc: p11.PKCS11Error) -> str:
    return f"{type(exc).__name__} {exc}".rstrip()


def _ec_public_key(params: bytes, point: bytes, key: KeyUri) -> ec.EllipticCurvePublicKey:
    try:
        oid = asn1_core.ObjectIdentifier.load(params).dotted
        curve = ec.get_curve_for_oid(x509.ObjectIdentifier(oid))()
    except (ValueError, LookupError, TypeError):
        raise KeyMaterialError(f"the EC key {key.text} is on a curve the gateway does not know") from None
    # CKA_EC_POINT is a DER OCTET STRING (PKCS#11 2.40 §2.3.3); some modules give the bare point.
    with contextlib.suppress(ValueError, TypeError):
        point = asn1_core.OctetString.load(point, strict=True).native
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError:
        raise KeyMaterialError(f"the EC public key of {key.text} is not a point on its curve") from None


# -- keys as cryptography sees them ------------------------------------------------------------------


def _digest(data: bytes, algorithm: hashes.HashAlgorithm | utils.Prehashed) -> tuple[bytes, hashes.HashAlgorithm]:
    if isinstance(algorithm, utils.Prehashed):
        return data, algorithm._algorithm  # the digest is the data
    return hashlib.new(algorithm.name, data).digest(), algorithm


class _TokenKeyMixin:
    """What both token key classes share: where the key is, the probe, and no export."""

    _token: Token
    _key: KeyUri

    @property
    def reference(self) -> str:
        return f"{self._key.text} in {self._token.name}"

    def private_bytes(self, *_args: object, **_kwargs: object) -> bytes:
        raise KeyMaterialError(f"{self.reference} cannot leave the token")

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Any:
        return self


class TokenRsaKey(_TokenKeyMixin, rsa.RSAPrivateKey):
    """An RSA private key in a token: PKCS#1 v1.5 and PSS signatures, PKCS#1 v1.5 and OAEP decryption."""

    def __init__(self, token: Token, key: KeyUri, public: rsa.RSAPublicKey) -> None:
        self._token, self._key, self._public = token, key, public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise KeyMaterialError(f"{self.reference} cannot leave the token")

    def sign(
        self,
        data: bytes,
        padding: padding.AsymmetricPadding,
        algorithm: hashes.HashAlgorithm | utils.Prehashed | utils.NoDigestInfo,
    ) -> bytes:
        if not isinstance(algorithm, hashes.HashAlgorithm | utils.Prehashed):
            raise UnsupportedAlgorithm("a token key signs a hash it is told (no NoDigestInfo)")
        digest, hash_algorithm = _digest(data, algorithm)
        if isinstance(padding, _PKCS1v15):
            if hash_algorithm.name not in _DIGEST_INFO:
                raise UnsupportedAlgorithm(f"no PKCS#1 v1.5 signature with {hash_algorithm.name} in a token")
            payload, mechanism, parameter = _DIGEST_INFO[hash_algorithm.name] + digest, Mechanism.RSA_PKCS, None
        elif isinstance(padding, _PSS):
            hash_mechanism, mgf = _pss_hash(padding, hash_algorithm)
            salt = _salt_length(padding, hash_algorithm, self.key_size)
            payload, mechanism, parameter = digest, Mechanism.RSA_PKCS_PSS, (hash_mechanism, mgf, salt)
        else:
            raise UnsupportedAlgorithm(f"no {padding.name} signature in a token")
        return self._sign(payload, mechanism, parameter)

    def _sign(self, payload: bytes, mechanism: Mechanism, parameter: object) -> bytes:
        try:
            signature: bytes = self._token.run(
                self._key,
                lambda found: found.sign(payload, mechanism=mechanism, mechanism_param=parameter),
                general_error_passes=True,
            )
        except p11.PKCS11Error as exc:
            raise TokenUnavailable(f"{self.reference} refused to sign: {_why(exc)}") from None
        return signature

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        """Like cryptography's: ValueError for a ciphertext that does not decrypt (one answer for every
        such failure); TokenUnavailable when the token does not answer."""
        if isinstance(padding, _PKCS1v15):
            mechanism, parameter = Mechanism.RSA_PKCS, None
        elif isinstance(padding, _OAEP):
            if padding.algorithm.name not in _HASH_MECHANISMS or not isinstance(padding.mgf, _MGF1):
                raise ValueError("decryption failed")
            hash_mechanism = _HASH_MECHANISMS[padding.algorithm.name][0]
            mgf = _HASH_MECHANISMS[padding.mgf._algorithm.name][1]
            mechanism, parameter = Mechanism.RSA_PKCS_OAEP, (hash_mechanism, mgf, padding._label or None)
        else:
            raise UnsupportedAlgorithm(f"no {padding.name} decryption in a token")
        try:
            plaintext: bytes = self._token.run(
                self._key, lambda found: found.decrypt(ciphertext, mechanism=mechanism, mechanism_param=parameter)
            )
        except (p11.MechanismInvalid, p11.MechanismParamInvalid, p11.ArgumentsBad) as exc:
            log.warning("%s cannot decrypt %s with these parameters: %s", self.reference, padding.name, _why(exc))
            raise ValueError("decryption failed") from None
        except p11.PKCS11Error:
            raise ValueError("decryption failed") from None
        return plaintext

    def probe(self) -> None:
        self.sign(b"readiness", _PKCS1v15(), hashes.SHA256())


class TokenEcKey(_TokenKeyMixin, ec.EllipticCurvePrivateKey):
    """An EC private key in a token: ECDSA signatures (DER-encoded, as cryptography's)."""

    def __init__(self, token: Token, key: KeyUri, public: ec.EllipticCurvePublicKey) -> None:
        self._token, self._key, self._public = token, key, public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise KeyMaterialError(f"{self.reference} cannot leave the token")

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise UnsupportedAlgorithm("key agreement with a token key is not offered")

    def sign(
        self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("a token EC key signs ECDSA only")
        digest, _hash = _digest(bytes(data), signature_algorithm.algorithm)
        try:
            raw: bytes = self._token.run(
                self._key, lambda found: found.sign(digest, mechanism=Mechanism.ECDSA), general_error_passes=True
            )
        except p11.PKCS11Error as exc:
            raise TokenUnavailable(f"{self.reference} refused to sign: {_why(exc)}") from None
        half = len(raw) // 2  # CKM_ECDSA gives r || s, each as long as the order (PKCS#11 2.40 §2.3.1)
        return utils.encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def probe(self) -> None:
        self.sign(b"readiness", ec.ECDSA(hashes.SHA256()))


_PKCS1v15 = padding.PKCS1v15
_PSS = padding.PSS
_OAEP = padding.OAEP
_MGF1 = padding.MGF1


def _pss_hash(pss: padding.PSS, hash_algorithm: hashes.HashAlgorithm) -> tuple[Mechanism, MGF]:
    mgf = pss.mgf
    if hash_algorithm.name not in _HASH_MECHANISMS or not isinstance(mgf, _MGF1):
        raise UnsupportedAlgorithm(f"no RSA-PSS with {hash_algorithm.name} in a token")
    mgf_hash = mgf._algorithm.name  # cryptography keeps MGF1's hash private
    if mgf_hash not in _HASH_MECHANISMS:
        raise UnsupportedAlgorithm(f"no MGF1 with {mgf_hash} in a token")
    return _HASH_MECHANISMS[hash_algorithm.name][0], _HASH_MECHANISMS[mgf_hash][1]


def _salt_length(pss: padding.PSS, hash_algorithm: hashes.HashAlgorithm, key_bits: int) -> int:
    salt = pss._salt_length  # cryptography keeps it private: an int or one of its three markers
    if isinstance(salt, int):
        return salt
    if salt is padding.PSS.DIGEST_LENGTH:
        return hash_algorithm.digest_size
    if salt is padding.PSS.MAX_LENGTH:  # RFC 8017 §9.1.1: emLen - hLen - 2
        return (key_bits + 6) // 8 - hash_algorithm.digest_size - 2
    raise ValueError("RSA-PSS signing needs a salt length (AUTO is for verifying)")
