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
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from est.key_delivery import load_keks
from est.service import EstService
from gateway.audit_trail import open_store
from gateway.ca_slots import FileState, Slot, file_state, locate, slot_of
from gateway.config import GatewayConfig
from gateway.metrics_observers import counted_admission, instrument_storage
from scep.ra_roles import separate_roles_problem
from scep.service import PreviousRa, ScepService
from shared_ca.admission import Admission, AdmissionSettings
from shared_ca.approval import ApprovalQueue
from shared_ca.authority import CertificateAuthority, PublicUrls, utcnow
from shared_ca.authorization import Authorizer
from shared_ca.ca_rollover import CaRoles, ca_roles
from shared_ca.crl import CrlPublisher
from shared_ca.errors import CAError, KeyMaterialError, Unavailable
from shared_ca.keys import PrivateKey, key_matches_certificate, load_certificates, load_private_key
from shared_ca.kms import is_token_key, read_key_reference, token_key
from shared_ca.ocsp import OcspResponder
from shared_ca.storage.db import require_schema_at_head
from shared_ca.storage.issuers import IssuerRecord
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
    # CA rollover: the CAs a rollover replaced, still publishing CRLs and answering OCSP for their
    # certificates, and when a scheduled activation switches issuance to the next CA.
    previous: tuple[CertificateAuthority, ...] = ()
    previous_crls: tuple[CrlPublisher, ...] = ()
    switch_at: dt.datetime | None = None

    def crl_publisher(self, issuer_name: str) -> CrlPublisher | None:
        """The CRL publisher of one of our CAs by issuer name: the issuing one or a previous one."""
        return next((c for c in (self.crl, *self.previous_crls) if c.authority.name == issuer_name), None)

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


IssuerRevision = tuple[tuple[int, str, str, dt.datetime | None, dt.datetime | None], ...]


def issuer_revision(issuers: list[IssuerRecord]) -> IssuerRevision:
    """What of the issuers table a running gateway depends on: each issuer's id, kind, certificate, trust
    window and activation time. It changes when `migrate import` registers a legacy CA or moves its
    window, when a legacy CA is removed, when `ca rollover` prepares a next CA, and when `ca activate`
    schedules or makes its activation."""
    return tuple((i.id, i.kind, i.fingerprint_sha256, i.trust_until, i.activates_at) for i in issuers)


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
    reference = None if is_token_key(config[key_key]) else read_key_reference(config.path(key_key))
    if is_token_key(config[key_key]):  # a key in the keys.kms token (shared_ca.kms)
        key = token_key(config["keys.kms"], config[key_key], setting=key_key)
        where = f"{key_key} {config[key_key]}"
    elif reference is not None:  # a file that names a key in the token (a CA slot after a rollover)
        key = token_key(config["keys.kms"], reference, setting=f"{key_key} ({config.path(key_key)})")
        where = f"{key_key} {reference} (named in {config.path(key_key)})"
    else:
        key = load_private_key(config.path(key_key), passphrase)
        where = str(config.path(key_key))
    if not key_matches_certificate(key, certs[0]):
        raise KeyMaterialError(f"{where} does not match the certificate in {config.path(cert_key)}")
    return certs, key


def load_key_pair(
    config: GatewayConfig, cert_key: str, key_key: str, passphrase: bytes | None
) -> tuple[list[x509.Certificate], PrivateKey]:
    """The certificates of the setting `cert_key` and the key of `key_key` (a file, or a key in a token),
    checked to match: KeyMaterialError naming them otherwise."""
    return _load_pair(config, cert_key, key_key, passphrase)


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
    issuers = storage.issuers.list_issuers()
    roles = ca_roles(issuers, utcnow())  # which CA issues now (shared_ca.ca_rollover): the database says
    located = locate(config, issuers)
    slot = slot_of(config, roles.current, located)
    ca_chain, ca_key = _load_pair(config, slot.ca_cert, slot.ca_key, passphrase)
    ra_certs, ra_key = _load_pair(config, slot.ra_cert, slot.ra_key, passphrase)
    ra_encryption_certificate, ra_encryption_key = _ra_encryption_pair(config, passphrase, ra_certs[0])
    urls = PublicUrls(config.public_base_url)
    authority = CertificateAuthority(
        storage.certificates, roles.current, ca_chain[0], tuple(ca_chain), ca_key, urls, utcnow
    )
    crl = _crl_publisher(config, storage, authority)
    previous = _previous_authorities(config, storage, roles, located, passphrase, urls)
    ocsp = OcspResponder([authority, *previous], dt.timedelta(minutes=config["ocsp.validity_minutes"]))
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
        next_ca_certs=_next_ca_certificates(config, roles, located),
        identity=config.identity_rule,
        ra_encryption_key=ra_encryption_key,
        ra_encryption_certificate=ra_encryption_certificate,
        previous_ras=_previous_ras(config, roles, located, passphrase),
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
        root_key_update=tuple(x509.load_der_x509_certificate(der) for der in roles.root_key_update()),
        previous_authorities=previous,
    )
    return Gateway(
        config,
        storage,
        authority,
        crl,
        ocsp,
        ra_certs[0],
        ra_key,
        authorizer,
        approvals,
        admission,
        scep,
        est,
        previous=previous,
        previous_crls=tuple(_crl_publisher(config, storage, a) for a in previous),
        switch_at=roles.switch_at,
    )


def _crl_publisher(config: GatewayConfig, storage: Storage, authority: CertificateAuthority) -> CrlPublisher:
    return CrlPublisher(
        authority,
        storage.crls,
        validity=dt.timedelta(hours=config["crl.validity_hours"]),
        refresh=dt.timedelta(minutes=config["crl.refresh_minutes"]),
    )


def _previous_authorities(
    config: GatewayConfig,
    storage: Storage,
    roles: CaRoles,
    located: dict[int, Slot],
    passphrase: bytes | None,
    urls: PublicUrls,
) -> tuple[CertificateAuthority, ...]:
    """The CAs a rollover replaced whose files are on this node: they sign their CRLs and OCSP answers
    until they are retired. One whose files are gone is logged and left out (its CRL is not served)."""
    authorities: list[CertificateAuthority] = []
    for issuer in roles.previous:
        slot = located.get(issuer.id)
        if slot is None:
            log.warning("previous CA %r: no CA file holds it on this node; no CRL or OCSP for it here", issuer.name)
            continue
        chain, key = _load_pair(config, slot.ca_cert, slot.ca_key, passphrase)
        authority = CertificateAuthority(storage.certificates, issuer, chain[0], tuple(chain), key, urls, utcnow)
        authorities.append(authority)
    return tuple(authorities)


def _previous_ras(
    config: GatewayConfig, roles: CaRoles, located: dict[int, Slot], passphrase: bytes | None
) -> tuple[PreviousRa, ...]:
    """The SCEP RAs of the CAs a rollover replaced, from their slots on this node: a client that kept the
    old GetCACert still encrypts to one until it fetches again, and is answered by it until that CA is
    retired (scep.service). One whose files do not load is logged and left out."""
    found: list[PreviousRa] = []
    for issuer in roles.previous:
        slot = located.get(issuer.id)
        if slot is None:
            continue
        try:
            ca_chain = tuple(load_certificates(config.path(slot.ca_cert)))
            ra_certs, ra_key = _load_pair(config, slot.ra_cert, slot.ra_key, passphrase)
        except KeyMaterialError as exc:
            log.warning("previous CA %r: its SCEP RA does not load (%s); requests to it are refused", issuer.name, exc)
            continue
        if isinstance(ra_key, rsa.RSAPrivateKey):
            found.append(PreviousRa(ra_key, ra_certs[0], ca_chain, issuer.id))
    return tuple(found)


def _ra_encryption_pair(
    config: GatewayConfig, passphrase: bytes | None, signing: x509.Certificate
) -> tuple[x509.Certificate | None, rsa.RSAPrivateKey | None]:
    """The RA encryption certificate and key (ra.encryption_cert, ra.encryption_key), loaded as the RA's
    own; (None, None) when the RA of ra.cert also decrypts."""
    cert_key, key_key = "ra.encryption_cert", "ra.encryption_key"
    if not config[cert_key] and not config[key_key]:
        return None, None
    if not config[cert_key] or not config[key_key]:
        missing = key_key if config[cert_key] else cert_key
        raise KeyMaterialError(f"{missing} is not set: {cert_key} and {key_key} go together")
    certs, key = _load_pair(config, cert_key, key_key, passphrase)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyMaterialError(
            f"the SCEP RA encryption key {config.path(key_key)} must be RSA (SCEP envelopes use RSA)"
        )
    problem = separate_roles_problem(signing, certs[0])
    if problem is not None:
        signer = signing.subject.rfc4514_string()
        raise KeyMaterialError(f"{config.path(cert_key)} beside the RA certificate of {signer}: {problem}")
    return certs[0], key


def _next_ca_certificates(config: GatewayConfig, roles: CaRoles, located: dict[int, Slot]) -> list[x509.Certificate]:
    """The next RA and CA certificates `gateway ca rollover` wrote, for GetNextCACert; none before a
    rollover, or while this node does not have their files. Their keys stay on disk unread until the
    next CA is activated."""
    slot = located.get(roles.next.id) if roles.next is not None else None
    if slot is None:
        return []
    certs = [load_certificates(config.path(slot.ca_cert))[0]]
    if config[slot.ra_cert] and config.path(slot.ra_cert).is_file():
        certs.insert(0, load_certificates(config.path(slot.ra_cert))[0])
    return certs


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
        self._files: FileState = ()  # of the CA and RA files it was built from (gateway.ca_slots)
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
        """The gateway; Unavailable while it cannot be opened (the cause in its detail). At the time a
        scheduled CA activation takes effect the gateway is rebuilt first, so issuance switches then."""
        loaded = self._gateway
        if loaded is not None and (loaded.switch_at is None or utcnow() < loaded.switch_at):
            return loaded
        with self._lock:
            if self._gateway is not None:
                return self._switched(self._gateway)
            if self._failure is not None and self._clock() < self._retry_at:
                raise self._failure
            try:
                files = file_state(self.config)
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
            self._gateway, self._revision, self._files, self._failure = gateway, revision, files, None
            return gateway

    def _switched(self, gateway: Gateway) -> Gateway:
        """`gateway`, or once its scheduled activation time has come, the gateway rebuilt on the CA that
        issues from then on. A rebuild that fails keeps the old one and leaves the switch to refresh()."""
        if gateway.switch_at is None or utcnow() < gateway.switch_at:
            return gateway
        try:
            self._gateway = reopen_gateway(gateway)
        except CAError as exc:
            log.error("the scheduled CA activation could not be loaded (%s); the trust watch tries again", exc.detail)
            self._gateway = replace(gateway, switch_at=None)
        else:
            log.info("a scheduled CA activation took effect: issuing with CA %r", self._gateway.authority.name)
        return self._gateway

    def refresh(self, now: dt.datetime) -> list[x509.Certificate]:
        """Follow the issuers in the database: rebuild the gateway when they changed since it was built
        (a CA rollover is served then; a legacy CA's window is read per request anyway), and return the
        client-certificate issuers trusted now, for the TLS listener's context. Unavailable while the
        database is away; KeyMaterialError when the new material does not load (the old gateway stays)."""
        gateway = self.get()
        issuers = gateway.storage.issuers.list_issuers()
        if any(i.kind == "next" and i.activates_at is not None and i.activates_at <= now for i in issuers):
            # A scheduled activation is due: record it (whoever comes first; shared_ca.ca_rollover).
            gateway.storage.issuers.activate_due(now, actor="ca-activation")
            issuers = gateway.storage.issuers.list_issuers()
        revision, files = issuer_revision(issuers), file_state(self.config)
        with self._lock:
            if revision != self._revision or files != self._files:
                gateway = self._gateway = reopen_gateway(gateway)
                self._revision, self._files = revision, files
                log.info("the issuers in the database or the CA files changed: the gateway was rebuilt from them")
        return gateway.trusted_client_issuers(now, issuers)
