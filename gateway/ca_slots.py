"""Where our CAs' files are: two slots of configured paths, found by the certificate they hold.

`gateway init` writes the first CA and its RA into the `ca.*`/`ra.*` slot, and `gateway ca rollover`
the next ones into the other slot (`next_ca.*`/`next_ra.*` the first time). Activation moves no file:
the database says which CA issues (shared_ca.ca_rollover), and the slot whose CA certificate is that
CA's is the one loaded. A later rollover writes into the slot the issuing CA does not hold, once the
CA there has been retired. So no configuration changes and no file moves while a gateway serves.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from gateway.config import GatewayConfig
from shared_ca.authority import fingerprint
from shared_ca.ca_rollover import ca_roles
from shared_ca.errors import KeyMaterialError
from shared_ca.keys import load_certificates
from shared_ca.storage.issuers import IssuerRecord


@dataclass(frozen=True)
class Slot:
    """The setting names of one CA's certificate and key and its RA's."""

    ca_cert: str
    ca_key: str
    ra_cert: str
    ra_key: str

    @property
    def files(self) -> tuple[str, str, str, str]:
        """Every file of the slot, in the order a rollover installs them (the CA certificate last: its
        presence means the slot is complete)."""
        return (self.ra_key, self.ca_key, self.ra_cert, self.ca_cert)


SLOTS = (
    Slot("ca.cert", "ca.key", "ra.cert", "ra.key"),
    Slot("next_ca.cert", "next_ca.key", "next_ra.cert", "next_ra.key"),
)


def slot_certificate(config: GatewayConfig, slot: Slot) -> x509.Certificate | None:
    """The CA certificate a slot holds; None when its path is not configured or no file is there."""
    if not config[slot.ca_cert] or not config.path(slot.ca_cert).is_file():
        return None
    return load_certificates(config.path(slot.ca_cert))[0]


def locate(config: GatewayConfig, issuers: Sequence[IssuerRecord], *, strict: bool = True) -> dict[int, Slot]:
    """Issuer id → the slot holding its CA certificate. KeyMaterialError when a slot holds a CA certificate
    the database does not know (a file copied from another gateway, or a rollover half undone), unless
    not `strict` (a rollover with --force moves such files aside)."""
    by_fingerprint = {i.fingerprint_sha256: i for i in issuers}
    found: dict[int, Slot] = {}
    for slot in SLOTS:
        certificate = slot_certificate(config, slot)
        if certificate is None:
            continue
        issuer = by_fingerprint.get(fingerprint(certificate))
        if issuer is None:
            if not strict:
                continue
            raise KeyMaterialError(
                f"the CA certificate in {config.path(slot.ca_cert)} is not registered in the database "
                "(neither the issuing, the next nor a previous CA): run `gateway ca rollover --force` again"
            )
        found[issuer.id] = slot
    return found


def slot_of(config: GatewayConfig, issuer: IssuerRecord, located: dict[int, Slot]) -> Slot:
    """The slot of an issuer that must be on this node (the issuing CA); KeyMaterialError naming the files."""
    slot = located.get(issuer.id)
    if slot is None:
        paths = ", ".join(str(config.path(s.ca_cert)) for s in SLOTS if config[s.ca_cert])
        raise KeyMaterialError(f"no CA certificate file ({paths}) holds the CA {issuer.name!r} the database names")
    return slot


def slot_roles(config: GatewayConfig, issuers: Sequence[IssuerRecord], now: dt.datetime) -> dict[str, str]:
    """What the CA and RA certificate files of each slot are now, by the role of the CA the slot holds:
    setting -> "" (the issuing CA's), "next", "previous" or "retired". After an activation the issuing CA
    is the one in `next_ca.cert`; reports name it by its role, not by its file's setting."""
    roles = ca_roles(list(issuers), now)
    role_of = {roles.current.id: "", **{p.id: "previous" for p in roles.previous}}
    if roles.next is not None:
        role_of[roles.next.id] = "next"
    found: dict[str, str] = {}
    for issuer_id, slot in locate(config, issuers, strict=False).items():
        role = role_of.get(issuer_id, "retired")
        found[slot.ca_cert] = found[slot.ra_cert] = role
    return found


FileState = tuple[tuple[str, int, int, int], ...]


def file_state(config: GatewayConfig) -> FileState:
    """What a running gateway depends on of the slots' files (inode, size, modification time), so that a
    worker rebuilds when a rollover installs files or the RA certificate renews, without a restart."""
    state: list[tuple[str, int, int, int]] = []
    for slot in SLOTS:
        for key in slot.files:
            if not config[key]:
                continue
            try:
                stat = os.stat(config.path(key))
            except OSError:
                continue
            state.append((key, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(state)
