"""The gateway under fuzz: a real data directory, the real Flask app, and one request case at a time.

The data directory is made by `gateway init` with the test CA of tests/vectors/ imported and the
vectors' SCEP RA put in place of the generated one, so the real captured pkiMessages open and reach
issuance, and a saved crasher replays against any fresh directory made the same way. It carries
profiles that accept every digest and cipher (MD5 and DES included), an EST user, an admin token,
and certificates issued at set-up for renewals, client-certificate EST and OCSP look-ups.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging
import shutil
import traceback
import warnings
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from flask import Flask
from flask.testing import FlaskClient

from gateway.app import create_app
from gateway.config import load_config
from gateway.initdir import InitOptions, initialise
from gateway.middleware import CLIENT_CERT_DER, TLS_UNIQUE, TLS_VERSION
from gateway.runtime import Gateway
from shared_ca.policy import authorize_request
from shared_ca.storage.est_users import hash_generated_secret
from tests.fuzzing.forge import NOW

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
CHALLENGE = "VectorSecret123"  # the challenge of the captured vectors
EST_USER, EST_PASSWORD = "fuzz-user", "fuzz-password-0123456789"
BOUND_USER = "fuzz-bound"  # a bootstrap-style user bound to one device
PROFILES = f"""
[profiles.default]
scep_challenge = "{CHALLENGE}"
scep_digests = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"]
scep_lockout_threshold = 10000
scep_lockout_minutes = 1
allow_multi_valued_rdns = true
san_types = ["dns", "ip", "email", "uri", "upn", "other", "dirname"]

[profiles.strict]
scep_challenge = "{CHALLENGE}"
scep_lockout_threshold = 10000
scep_lockout_minutes = 1
subject_unlisted = "drop"
est_csrattrs_enforce = true
est_required_san_types = ["dns"]

[profiles.manual]
scep_challenge = "{CHALLENGE}"
scep_digests = ["md5", "sha1", "sha256"]
scep_lockout_threshold = 10000
scep_lockout_minutes = 1
approval = "manual"

[profiles.linked]
est_pop_linking = true
"""
LABELS = ("default", "strict", "manual", "linked")


@dataclasses.dataclass
class FuzzCase:
    """One HTTP request: everything needed to send it again (and to save it as a crasher)."""

    target: str
    method: str
    path: str
    query: str = ""
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    https: bool = False
    client_cert: bytes | None = None
    tls_version: str | None = None
    tls_unique: bytes | None = None
    note: str = ""  # how it was made: seed and mutations, for the README line of a crasher

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (bytes as base64)."""
        data = dataclasses.asdict(self)
        for name in ("body", "client_cert", "tls_unique"):
            value = data[name]
            data[name] = base64.b64encode(value).decode("ascii") if value is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FuzzCase:
        """The case `to_json` wrote."""
        values = dict(data)
        for name in ("body", "client_cert", "tls_unique"):
            if values.get(name) is not None:
                values[name] = base64.b64decode(values[name])
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the app answered; `crash` holds the traceback when it answered 5xx (not 503) or raised."""

    status: int
    crash: str | None = None

    @property
    def signature(self) -> str:
        """The crash's last project frame and exception type: one line to tell crashes apart."""
        if self.crash is None:
            return ""
        lines = [line.strip() for line in self.crash.splitlines() if line.strip()]
        frames = [line for line in lines if line.startswith("File ") and "/.venv/" not in line]
        exception = lines[-1].split(":", 1)[0] if lines else "?"  # the type: messages vary with the input
        return f"{frames[-1] if frames else '?'} {exception}"


class _CrashLog(logging.Handler):
    """Keeps the traceback the app's last-resort handler logs (gateway.app "unexpected error")."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the traceback of an error record."""
        if record.exc_info and record.exc_info[1] is not None:
            self.last = "".join(traceback.format_exception(*record.exc_info))


@dataclasses.dataclass
class Issued:
    """A certificate issued at set-up, with its key."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        """The certificate as DER."""
        return self.certificate.public_bytes(Encoding.DER)


class FuzzGateway:
    """The app over a fuzz data directory, and what the targets need to build deep inputs."""

    def __init__(self, directory: Path) -> None:
        directory = directory.resolve()
        if directory.exists() and any(directory.iterdir()):
            raise ValueError(f"the fuzz data directory {directory} must be new or empty")
        initialise(InitOptions(data_dir=directory, import_ca_cert=VECTORS / "ca.pem", import_ca_key=VECTORS / "ca.key"))
        config = load_config(directory, environ={})
        shutil.copyfile(VECTORS / "ra.pem", config.path("ra.cert"))
        shutil.copyfile(VECTORS / "ra.key", config.path("ra.key"))
        with (directory / "config.toml").open("a", encoding="utf-8") as handle:
            handle.write(PROFILES)
        self.directory = directory
        self.app: Flask = create_app(load_config(directory, environ={}))
        self.client: FlaskClient = self.app.test_client()
        self.crash_log = _CrashLog()
        logging.getLogger("gateway.app").addHandler(self.crash_log)
        gw = self.gateway
        self.ca = gw.authority.certificate
        self.ra = gw.ra_certificate
        self.ca_key = load_pem_private_key((VECTORS / "ca.key").read_bytes(), None)
        tokens = gw.storage.admin_tokens
        self.admin_token = tokens.create_admin_token("fuzz", created_by="fuzz", now=dt.datetime.now(dt.UTC)).token
        users = gw.storage.est_users
        users.add_est_user(EST_USER, hash_generated_secret(EST_PASSWORD), kind="password", created_by="fuzz", now=NOW)
        users.add_est_user(
            BOUND_USER,
            hash_generated_secret(EST_PASSWORD),
            kind="password",
            created_by="fuzz",
            now=NOW,
            device_identity="bound-device",
        )
        self.issued = [self._issue(f"fuzz-device-{i}", protocol) for i, protocol in enumerate(("scep", "est", "est"))]

    @property
    def gateway(self) -> Gateway:
        """The app's Gateway (store, authority, RA)."""
        found: Gateway = self.app.extensions["gateway"].get()
        return found

    def _issue(self, cn: str, protocol: str) -> Issued:
        """A certificate from our CA, recorded in the store like one issued over `protocol`."""
        key = rsa.generate_private_key(65537, 2048)
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
        profile = self.gateway.config.profiles["default"]
        policy = authorize_request(profile, subject, [], key.public_key(), dt.datetime.now(dt.UTC))
        issued = self.gateway.authority.issue(policy, protocol=protocol, actor="fuzz")
        return Issued(key, issued.certificate)

    def run(self, case: FuzzCase) -> Outcome:
        """Send `case` through the test client; a 5xx other than 503, or an escaping exception, is a crash."""
        environ: dict[str, Any] = {"REMOTE_ADDR": "127.0.0.1"}
        if case.https:
            environ[TLS_VERSION] = case.tls_version or "TLSv1.3"
            if case.client_cert is not None:
                environ[CLIENT_CERT_DER] = case.client_cert
            if case.tls_unique is not None:
                environ[TLS_UNIQUE] = case.tls_unique
        path = case.path + ("?" + case.query if case.query else "")
        self.crash_log.last = None
        # As in production, a warning is a warning: cryptography warns about much of what a fuzzer
        # sends (negative serials, over-long names), and pytest's "error" filter must not turn that
        # into an exception inside the app.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            return self._send(case, path, environ)

    def _send(self, case: FuzzCase, path: str, environ: dict[str, Any]) -> Outcome:
        try:
            response = self.client.open(
                path,
                method=case.method,
                data=case.body,
                headers=case.headers,
                base_url="https://localhost" if case.https else "http://localhost",
                environ_overrides=environ,
            )
        except Exception:  # an exception escaping the app is a crash like a 500
            return Outcome(-1, traceback.format_exc())
        status = response.status_code
        response.close()
        if status >= 500 and status != 503:
            return Outcome(status, self.crash_log.last or f"HTTP {status} without a logged exception")
        return Outcome(status)

    def close(self) -> None:
        """Detach the crash log and close the database connections."""
        logging.getLogger("gateway.app").removeHandler(self.crash_log)
        self.gateway.storage.engine.dispose()
