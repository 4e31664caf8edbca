"""Opening a configured gateway: storage, CA key material, CRL publisher and OCSP responder.

Built once per process (per gunicorn worker) and immutable afterwards; GatewayLoader builds it again
when the issuers in the database change (a legacy CA imported, a CA rollover), without a restart.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from est.key_delivery import load_keks
from est.service import EstService
from gateway.audit_trail import open_store
from gateway.config import GatewayConfig
from gateway.metrics_observers import counted_admission, instrument_storage
from scep.service import ScepService
from shared_ca.admission import Admission, AdmissionSettings
from shared_ca.approval import ApprovalQueue
from shared_ca.authority import CertificateAuthority, PublicUrls, fingerprint, utcnow
from shared_ca.authorization import Authorizer
from shared_ca.crl import CrlPublisher
from shared_ca.errors import KeyMaterialError, Unavailable
from shared_ca.keys import PrivateKey, key_matches_certificate, load_certificates, load_private_key
from shared_ca.ocsp import OcspResponder
from shared_ca.storage.db import require_schema_at_head
from shared_ca.storage.issuers import IssuerRecord, Issuers
from shared_ca.storage.repositories import Storage

PASSPHRASE_ENV = "GATEWAY_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
RETRY_SECONDS = 2.0  # how often a worker tries again to open a gateway whose database did not answer
log = logging.getLogger("gateway.runtime")


def read_passphrase_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    passphrase = data.rstrip(b"\r\n")
    if not passphrase:
        raise KeyMaterialError(f"passphrase file {path} is empty")
    return passphrase


def key_passphrase(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key passphrase from GATEWAY_KEY_PASSPHRASE or keys.passphrase_file, if any."""
    env = os.environ if environ is None else environ
    if env.get(PASSPHRASE_ENV):
        return env[PASSPHRASE_ENV].encode("utf-8")
    if config["keys.passphrase_file"]:
        return read_passphrase_file(config.path("keys.passphrase_file"))
    return None


@dataclass(frozen=True)
class Gateway:
    """Everything a request needs, loaded once per process."""

    config: GatewayConfig
    storage: Storage
    authority: CertificateAuthority
    crl: CrlPublisher
    ocsp: OcspResponder
    ra_certificate: x509.Certificate
    ra_key: rsa.RSAPrivateKey
    authorizer: Authorizer
    approvals: ApprovalQueue
    admission: Admission
    scep: ScepService
    est: EstService

    def trusted_client_issuers(
        self, now: dt.datetime, issuers: list[IssuerRecord] | None = None
    ) -> list[x509.Certificate]:
        """CA certificates whose client certificates the TLS listener accepts: ours and legacy in window
        (of `issuers`, as read from storage unless given)."""
        certs = [self.authority.certificate]
        for issuer in self.storage.issuers.list_issuers() if issuers is None else issuers:
            if issuer.id == self.authority.issuer.id:
                continue
            if issuer.kind == "legacy" and (issuer.trust_until is None or issuer.trust_until <= now):
                continue
            if issuer.kind == "retired":  # a next CA replaced by `gateway ca rollover --force`
                continue
            certs.append(x509.load_der_x509_certificate(issuer.cert_der))
        return certs


IssuerRevision = tuple[tuple[int, str, str, dt.datetime | None], ...]


def issuer_revision(issuers: list[IssuerRecord]) -> IssuerRevision:
    """What of the issuers table a running gateway depends on: each issuer's id, kind, certificate and
    trust window. It changes when `migrate import` registers a legacy CA or moves its window, when a
    legacy CA is removed, and when `ca rollover` prepares a next CA."""
    return tuple((i.id, i.kind, i.fingerprint_sha256, i.trust_until) for i in issuers)


def admission_settings(config: GatewayConfig) -> AdmissionSettings:
    """The admission.* settings (shared_ca.admission) of one worker."""
    return AdmissionSettings(
        max_in_flight=config["admission.max_in_flight"],
        queue_wait_seconds=config["admission.queue_wait_ms"] / 1000,
        retry_after_seconds=config["admission.retry_after_seconds"],
        device_rate_per_minute=config["admission.device_rate_per_minute"],
        address_rate_per_minute=config["admission.address_rate_per_minute"],
        burst=config["admission.burst"],
    )


def open_storage(config: GatewayConfig) -> Storage:
    """The configured database's repositories, counting what they commit (gateway.metrics_observers)."""
    return instrument_storage(open_store(config), config.profiles)


def _load_pair(
    config: GatewayConfig, cert_key: str, key_key: str, passphrase: bytes | None
) -> tuple[list[x509.Certificate], PrivateKey]:
    certs = load_certificates(config.path(cert_key))
    key = load_private_key(config.path(key_key), passphrase)
    if not key_matches_certificate(key, certs[0]):
        raise KeyMaterialError(f"{config.path(key_key)} does not match the certificate in {config.path(cert_key)}")
    return certs, key


def open_gateway(config: GatewayConfig) -> Gateway:
    """Load key material and connect storage; every failure is one clear CAError."""
    passphrase = key_passphrase(config)
    storage = open_storage(config)
    try:
        return _assemble(config, storage, passphrase)
    except BaseException:
        storage.db.dispose()  # a failed start leaves no pooled database connection behind
        raise


def reopen_gateway(gateway: Gateway) -> Gateway:
    """The gateway built afresh from its files and the database (after a CA rollover, say), on the same
    storage and with the same admission control (its slots and counters are the worker's)."""
    return _assemble(gateway.config, gateway.storage, key_passphrase(gateway.config), admission=gateway.admission)


def _assemble(
    config: GatewayConfig, storage: Storage, passphrase: bytes | None, *, admission: Admission | None = None
) -> Gateway:
    require_schema_at_head(storage.engine)
    ca_chain, ca_key = _load_pair(config, "ca.cert", "ca.key", passphrase)
    ra_certs, ra_key = _load_pair(config, "ra.cert", "ra.key", passphrase)
    issuer = _issuer_for(storage.issuers, config["ca.name"], ca_chain[0])
    urls = PublicUrls(config.public_base_url)
    authority = CertificateAuthority(storage.certificates, issuer, ca_chain[0], tuple(ca_chain), ca_key, urls, utcnow)
    crl = CrlPublisher(
        authority,
        storage.crls,
        validity=dt.timedelta(hours=config["crl.validity_hours"]),
        refresh=dt.timedelta(minutes=config["crl.refresh_minutes"]),
    )
    ocsp = OcspResponder([authority], dt.timedelta(minutes=config["ocsp.validity_minutes"]))
    if not isinstance(ra_key, rsa.RSAPrivateKey):
        raise KeyMaterialError(f"the SCEP RA key {config.path('ra.key')} must be RSA (SCEP envelopes use RSA)")
    authorizer = Authorizer(
        config.identity_rule,
        default_profile=config["default_profile"],
        clock=authority.clock,
        devices=storage.devices,
        est_url=config.est_url,
    )
    approvals = ApprovalQueue(
        authority=authority,
        authorizer=authorizer,
        storage=storage,
        profiles=config.profiles,
        clock=authority.clock,
    )
    admission = admission or counted_admission(admission_settings(config))
    scep = ScepService(
        authority=authority,
        storage=storage,
        crl=crl,
        ra_key=ra_key,
        ra_certificate=ra_certs[0],
        profiles=config.profiles,
        authorizer=authorizer,
        approvals=approvals,
        admission=admission,
        next_ca_certs=_next_ca_certificates(config, storage.issuers),
        identity=config.identity_rule,
    )
    est = EstService(
        authority=authority,
        storage=storage,
        profiles=config.profiles,
        authorizer=authorizer,
        approvals=approvals,
        admission=admission,
        signer_key=ra_key,
        signer_certificate=ra_certs[0],
        keks=load_keks(config.path("est.kek_dir")),
        identity=config.identity_rule,
    )
    return Gateway(
        config, storage, authority, crl, ocsp, ra_certs[0], ra_key, authorizer, approvals, admission, scep, est
    )


def _next_ca_certificates(config: GatewayConfig, issuers: Issuers) -> list[x509.Certificate]:
    """The next RA and CA certificates `gateway ca rollover` wrote, for GetNextCACert; none before a
    rollover. Their keys stay on disk unread until the next CA is activated."""
    if not config["next_ca.cert"] or not config.path("next_ca.cert").is_file():
        return []
    next_ca = load_certificates(config.path("next_ca.cert"))[0]
    if not any(i.kind == "next" and i.fingerprint_sha256 == fingerprint(next_ca) for i in issuers.list_issuers()):
        raise KeyMaterialError(
            f"the next CA certificate {config.path('next_ca.cert')} is not registered as the next CA in the "
            "database: run `gateway ca rollover --force` again"
        )
    certs = [next_ca]
    if config["next_ra.cert"] and config.path("next_ra.cert").is_file():
        certs.insert(0, load_certificates(config.path("next_ra.cert"))[0])
    return certs


def _issuer_for(issuers: Issuers, name: str, cert: x509.Certificate) -> IssuerRecord:
    issuer = issuers.issuer_by_name(name)
    if issuer is None:
        raise KeyMaterialError(f"the database has no issuer {name!r}: was `gateway init` run on this database?")
    if issuer.fingerprint_sha256 != fingerprint(cert):
        raise KeyMaterialError(
            f"the CA certificate file does not match issuer {name!r} in the database "
            f"(database {issuer.fingerprint_sha256[:16]}…, file {fingerprint(cert)[:16]}…)"
        )
    return issuer


class GatewayLoader:
    """The gateway of one worker, opened on first use and again after a failure, so a worker starts and
    answers (503, not-ready) while the database is unreachable, and serves once it is back.

    A failure to open is kept for `retry_seconds`: requests meanwhile fail at once with the same
    Unavailable instead of each waiting for a connection attempt. Key material that does not load is
    no outage: it raises KeyMaterialError every time, like open_gateway.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        opener: Callable[[GatewayConfig], Gateway] = open_gateway,
        retry_seconds: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._opener = opener
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._gateway: Gateway | None = None
        self._revision: IssuerRevision = ()  # of the issuers the gateway was built from
        self._failure: Unavailable | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    @classmethod
    def ready(cls, gateway: Gateway) -> GatewayLoader:
        """A loader holding a gateway opened already (the in-process app of tests and tools)."""
        loader = cls(gateway.config)
        loader._gateway = gateway
        return loader

    @property
    def loaded(self) -> Gateway | None:
        return self._gateway

    def get(self) -> Gateway:
        """The gateway; Unavailable while it cannot be opened (the cause in its detail)."""
        if self._gateway is not None:
            return self._gateway
        with self._lock:
            if self._gateway is not None:
                return self._gateway
            if self._failure is not None and self._clock() < self._retry_at:
                raise self._failure
            try:
                gateway = self._opener(self.config)
                try:
                    revision = issuer_revision(gateway.storage.issuers.list_issuers())
                except BaseException:
                    gateway.storage.db.dispose()
                    raise
            except Unavailable as exc:
                if self._failure is None:
                    log.error("cannot open the gateway: %s; answering 503 until it can", exc.detail)
                self._failure = exc
                self._retry_at = self._clock() + self._retry_seconds
                raise
            if self._failure is not None:
                log.warning("the gateway is open again: serving")
            self._gateway, self._revision, self._failure = gateway, revision, None
            return gateway

    def refresh(self, now: dt.datetime) -> list[x509.Certificate]:
        """Follow the issuers in the database: rebuild the gateway when they changed since it was built
        (a CA rollover is served then; a legacy CA's window is read per request anyway), and return the
        client-certificate issuers trusted now, for the TLS listener's context. Unavailable while the
        database is away; KeyMaterialError when the new material does not load (the old gateway stays)."""
        gateway = self.get()
        issuers = gateway.storage.issuers.list_issuers()
        revision = issuer_revision(issuers)
        with self._lock:
            if revision != self._revision:
                gateway = self._gateway = reopen_gateway(gateway)
                self._revision = revision
                log.info("the issuers in the database changed: the gateway was rebuilt from them")
        return gateway.trusted_client_issuers(now, issuers)
