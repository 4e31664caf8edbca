"""The SCEP RA certificate renews itself before it expires, with no downtime.

The HTTPS workers look every few seconds (an in-memory date comparison) whether the RA certificate
they serve is due: fewer than `ra.renew_before_days` days, or less than a third of its lifetime,
left. When it is, one of them takes the node's lease in the database (`job_leases`), has the issuing
CA certify the same RA key again (same subject, same key usage), and replaces the RA certificate file
atomically. Every worker of both listeners sees the file change in its trust watch and rebuilds its
gateway (gateway.runtime.GatewayLoader.refresh), so the new certificate is served within seconds.

The key stays: a client that fetched the old RA certificate (GetCACert) still encrypts to a key the
gateway holds, and nodes that share the key need no new key material. The lease is per node (its
`audit.node` name): nodes with their own data directories each renew their own file.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.audit_trail import audit_node
from gateway.ca_slots import locate, slot_of
from gateway.runtime import Gateway
from shared_ca.authority import fingerprint
from shared_ca.keys import load_certificates
from shared_ca.policy import authorize_request
from shared_ca.profiles import RA_PROFILE

log = logging.getLogger("gateway.ra_renewal")
LEASE = dt.timedelta(minutes=5)
MIN_GAIN = dt.timedelta(days=1)  # a renewal that would not outlive the old certificate by this much is pointless


@dataclass(frozen=True)
class RaRenewal:
    """An RA certificate renewed: the new certificate and the file it was written to."""

    certificate: x509.Certificate
    path: Path


def renewal_due(certificate: x509.Certificate, renew_before_days: int, now: dt.datetime) -> bool:
    """Whether an RA certificate is due for renewal at `now` (never when `renew_before_days` is 0)."""
    if renew_before_days <= 0:
        return False
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    margin = max(dt.timedelta(days=renew_before_days), lifetime / 3)
    return now >= certificate.not_valid_after_utc - margin


def renew_ra_if_due(gateway: Gateway, now: dt.datetime, *, holder: str) -> RaRenewal | None:
    """Renew the RA certificate `gateway` serves when it is due and this worker gets the node's lease;
    None when nothing was done (not due, another worker renews, or the CA cannot give it more time)."""
    config = gateway.config
    if not renewal_due(gateway.ra_certificate, config["ra.renew_before_days"], now):
        return None
    authority = gateway.authority
    if authority.certificate.not_valid_after_utc < gateway.ra_certificate.not_valid_after_utc + MIN_GAIN:
        log.warning(
            "the RA certificate expires %s and the CA %s: a new RA certificate cannot outlive the CA; "
            "roll the CA over (`gateway ca rollover`)",
            gateway.ra_certificate.not_valid_after_utc.isoformat(),
            authority.certificate.not_valid_after_utc.isoformat(),
        )
        return None
    storage = gateway.storage
    lease = f"ra-renewal:{audit_node(config)}"
    if not storage.leases.acquire(lease, holder, now, LEASE):
        return None
    try:
        path = config.path(slot_of(config, authority.issuer, locate(config, storage.issuers.list_issuers())).ra_cert)
        on_disk = load_certificates(path)[0]
        if fingerprint(on_disk) != fingerprint(gateway.ra_certificate):
            return None  # renewed by another worker since this one loaded it; the trust watch reloads it
        renewed = _certify_again(gateway, on_disk)
        _replace_file(path, renewed.public_bytes(Encoding.PEM))
    finally:
        storage.leases.release(lease, holder, authority.clock())
    log.info(
        "renewed the SCEP RA certificate (same key): serial %x, valid until %s, in %s",
        renewed.serial_number,
        renewed.not_valid_after_utc.isoformat(),
        path,
    )
    return RaRenewal(renewed, path)


def _certify_again(gateway: Gateway, current: x509.Certificate) -> x509.Certificate:
    """A new certificate for the RA's key and subject from the issuing CA, with the key usage it has now
    (a signing-only or encryption-only RA stays so) under the RA profile it was issued with."""
    record = gateway.storage.certificates.certificate_by_fingerprint(fingerprint(current))
    usage = current.extensions.get_extension_for_class(x509.KeyUsage).value
    profile = replace(
        RA_PROFILE,
        name=record.profile if record is not None else RA_PROFILE.name,
        key_usage=tuple(name for name in ("digital_signature", "key_encipherment") if getattr(usage, name)),
    )
    now = gateway.authority.clock()
    policy = authorize_request(profile, current.subject, [], current.public_key(), now)
    return gateway.authority.issue(policy, protocol="system", actor="ra-renewal").certificate


def _replace_file(path: Path, data: bytes) -> None:
    """Write `path` atomically (a new file renamed over it), 0644 like every certificate file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
