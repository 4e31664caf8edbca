"""`gateway ca rollover`: prepare the next CA and its SCEP RA, served by GetNextCACert (RFC 8894 §4.7).

The next CA is a new self-signed CA (like `gateway init` makes) registered as an issuer of kind
'next'; its RA certificate (same profile as init's RA) is issued by the next CA and recorded under
it. Issuance keeps using the current CA: activating the next CA is a separate, later step.

Like init, everything is built in memory and in a staging directory first; the database is written
next (a failure there retires the half-registered issuer), and files move into place last, so a
failed rollover leaves no next-CA files behind and never a 'next' issuer without its files.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.audit_trail import open_store
from gateway.config import GatewayConfig
from gateway.runtime import key_passphrase
from shared_ca.authority import CertificateAuthority, PublicUrls, fingerprint, utcnow
from shared_ca.ca_material import CAMaterial, create_root_ca, register_issuer
from shared_ca.errors import KeyMaterialError
from shared_ca.keys import (
    KeyType,
    PrivateKey,
    certificates_pem,
    generate_private_key,
    key_matches_certificate,
    load_certificates,
    load_private_key,
    write_private_key,
    write_public_file,
)
from shared_ca.policy import authorize_request
from shared_ca.profiles import RA_PROFILE
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.db import require_schema_at_head
from shared_ca.storage.issuers import IssuerRecord, Issuers
from shared_ca.storage.repositories import Storage

NEXT_KIND = "next"
RETIRED_KIND = "retired"
NEXT_FILES = ("next_ra.key", "next_ca.key", "next_ra.cert", "next_ca.cert")  # install order: next_ca.cert last


class RolloverError(Exception):
    """`gateway ca rollover` cannot go on; the message says why in one line."""


@dataclass(frozen=True)
class RolloverOptions:
    ca_key_type: KeyType = KeyType.RSA3072
    ca_subject: x509.Name | None = None  # None: the current CA's subject
    ca_days: int = 3650
    force: bool = False
    actor: str = "cli"


@dataclass(frozen=True)
class RolloverResult:
    issuer_name: str
    ca_subject: str
    ca_fingerprint: str
    ca_not_after: dt.datetime
    ra_subject: str
    ca_cert: Path
    ra_cert: Path
    replaced: Path | None  # where the files of a next CA replaced by --force went


@dataclass(frozen=True)
class _Current:
    certificate: x509.Certificate
    passphrase: bytes | None


def _current_ca(config: GatewayConfig) -> _Current:
    """The current CA certificate, after checking the configured passphrase opens its key: the next
    keys are encrypted with that same passphrase, so a wrong one must stop us here."""
    passphrase = key_passphrase(config)
    cert = load_certificates(config.path("ca.cert"))[0]
    key = load_private_key(config.path("ca.key"), passphrase)
    if not key_matches_certificate(key, cert):
        raise KeyMaterialError(f"{config.path('ca.key')} does not match the certificate in {config.path('ca.cert')}")
    return _Current(cert, passphrase)


def _existing_next(config: GatewayConfig, issuers: Issuers) -> tuple[list[str], list[IssuerRecord]]:
    files = [str(config.path(k)) for k in NEXT_FILES if config[k] and config.path(k).exists()]
    return files, issuers.issuers_of_kind(NEXT_KIND)


def _issuer_name(issuers: Issuers, base: str) -> str:
    name = f"{base}-next"
    number = 2
    while issuers.issuer_by_name(name) is not None:
        name = f"{base}-next-{number}"
        number += 1
    return name


def _ra_common_name(ca: x509.Certificate) -> str:
    cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = str(cn[0].value) if cn else "Gateway"
    return f"{base} SCEP RA"[:64]


def _register(
    storage: Storage,
    config: GatewayConfig,
    name: str,
    material: CAMaterial,
    ra_key: PrivateKey,
    actor: str,
    now: dt.datetime,
) -> x509.Certificate:
    """Register the next CA and issue its RA certificate; a failure retires the issuer just added."""
    issuer = register_issuer(storage.issuers, name, material.certificate, kind=NEXT_KIND, actor=actor, now=now)
    try:
        authority = CertificateAuthority(
            storage.certificates,
            issuer,
            material.certificate,
            material.chain,
            material.key,
            PublicUrls(config.public_base_url),
        )
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _ra_common_name(material.certificate))])
        policy = authorize_request(RA_PROFILE, subject, [], ra_key.public_key(), now)
        return authority.issue(policy, protocol="system", actor=actor).certificate
    except BaseException:
        _retire(storage.issuers, issuer, actor, now, reason="rollover failed")
        raise


def _retire(issuers: Issuers, issuer: IssuerRecord, actor: str, now: dt.datetime, *, reason: str) -> None:
    event = AuditEvent(actor, "issuer.retired", detail={"name": issuer.name, "kind": issuer.kind, "reason": reason})
    issuers.set_issuer_kind(issuer.id, RETIRED_KIND, event, now)


def _stage(
    staging: Path,
    config: GatewayConfig,
    material: CAMaterial,
    ra_key: PrivateKey,
    ra: x509.Certificate,
    passphrase: bytes | None,
) -> dict[str, Path]:
    """Write the four files under `staging`, at their paths relative to the data directory."""
    relative = {k: config.path(k).resolve().relative_to(config.data_dir.resolve()) for k in NEXT_FILES}
    write_private_key(staging / relative["next_ca.key"], material.key, passphrase)
    write_public_file(staging / relative["next_ca.cert"], certificates_pem(list(material.chain)))
    write_private_key(staging / relative["next_ra.key"], ra_key, passphrase)
    write_public_file(staging / relative["next_ra.cert"], ra.public_bytes(Encoding.PEM))
    return relative


def _move_aside(config: GatewayConfig, now: dt.datetime) -> Path | None:
    """Move the files of a replaced next CA into DATA_DIR/replaced-next-<time>/ (keys are never deleted)."""
    present = [k for k in NEXT_FILES if config[k] and config.path(k).exists()]
    if not present:
        return None
    stamp = f"replaced-next-{now:%Y%m%dT%H%M%SZ}"
    backup = config.data_dir / stamp
    attempt = 1
    while True:
        try:
            backup.mkdir(mode=0o700)
            break
        except FileExistsError:
            attempt += 1
            backup = config.data_dir / f"{stamp}-{attempt}"
    for key in present:
        source = config.path(key)
        target = backup / source.resolve().relative_to(config.data_dir.resolve())
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.move(str(source), str(target))
    return backup


def _install(staging: Path, data_dir: Path, relative: dict[str, Path]) -> None:
    for key in NEXT_FILES:
        target = data_dir / relative[key]
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(staging / relative[key], target)


def _undo_install(config: GatewayConfig, replaced: Path | None) -> None:
    """After a failed install: remove what was installed and bring the replaced files back."""
    for key in NEXT_FILES:
        config.path(key).unlink(missing_ok=True)
    if replaced is None:
        return
    data_dir = config.data_dir.resolve()
    for key in NEXT_FILES:
        saved = replaced / config.path(key).resolve().relative_to(data_dir)
        if saved.exists():
            shutil.move(str(saved), str(config.path(key)))
    shutil.rmtree(replaced, ignore_errors=True)


def _check_paths(config: GatewayConfig) -> None:
    data_dir = config.data_dir.resolve()
    for key in NEXT_FILES:
        if not config[key]:
            raise RolloverError(f"{key} is empty in the configuration: the next CA needs a file there")
        path = config.path(key).resolve()
        if not path.is_relative_to(data_dir):
            raise RolloverError(f"{key} ({path}) must lie inside the data directory {data_dir}")
    current = {config.path(k).resolve() for k in ("ca.cert", "ca.key", "ra.cert", "ra.key")}
    clash = [k for k in NEXT_FILES if config.path(k).resolve() in current]
    if clash:
        raise RolloverError(f"{', '.join(clash)} would overwrite the current CA or RA files")


def rollover(config: GatewayConfig, options: RolloverOptions) -> RolloverResult:
    """Create the next CA and its RA (refused when one exists, unless `options.force`)."""
    now = utcnow()
    _check_paths(config)
    current = _current_ca(config)
    engine = open_store(config).engine
    try:
        require_schema_at_head(engine)
        storage = Storage.open(engine)
        files, issuers = _existing_next(config, storage.issuers)
        if (files or issuers) and not options.force:
            what = ", ".join([*(f"issuer {i.name!r}" for i in issuers), *files])
            raise RolloverError(
                f"a next CA already exists ({what}); re-run with --force to replace it "
                "(its files are moved aside, never deleted)"
            )
        subject = options.ca_subject or current.certificate.subject
        material = create_root_ca(generate_private_key(options.ca_key_type), subject, options.ca_days, now)
        ra_key = generate_private_key(KeyType.RSA2048)
        name = _issuer_name(storage.issuers, config["ca.name"])

        staging = config.data_dir / ".rollover-staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        try:
            ra = _register(storage, config, name, material, ra_key, options.actor, now)
            try:
                relative = _stage(staging, config, material, ra_key, ra, current.passphrase)
                replaced = _move_aside(config, now)
                try:
                    _install(staging, config.data_dir, relative)
                except BaseException:
                    _undo_install(config, replaced)
                    raise
            except BaseException:
                new = storage.issuers.issuer_by_name(name)
                if new is not None and new.kind == NEXT_KIND:
                    _retire(storage.issuers, new, options.actor, now, reason="rollover failed")
                raise
            # The new next CA is in place; only now stop calling the replaced ones 'next'.
            for old in issuers:
                _retire(storage.issuers, old, options.actor, now, reason=f"replaced by {name}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        engine.dispose()
    return RolloverResult(
        issuer_name=name,
        ca_subject=material.certificate.subject.rfc4514_string(),
        ca_fingerprint=fingerprint(material.certificate),
        ca_not_after=material.certificate.not_valid_after_utc,
        ra_subject=ra.subject.rfc4514_string(),
        ca_cert=config.path("next_ca.cert"),
        ra_cert=config.path("next_ra.cert"),
        replaced=replaced,
    )


def next_ca_summary(issuers: Issuers, served: tuple[x509.Certificate, ...]) -> dict[str, object]:
    """`gateway ca show` fields for the next CA (none before a rollover): the one registered in the
    database and whether this gateway serves it through GetNextCACert (its files were loaded)."""
    next_issuers = issuers.issuers_of_kind(NEXT_KIND)
    if not next_issuers:
        return {}
    issuer = next_issuers[-1]
    fields: dict[str, object] = {
        "next_ca": issuer.name,
        "next_ca_subject": issuer.subject,
        "next_ca_sha256": issuer.fingerprint_sha256,
        "next_ca_not_after": issuer.not_after.isoformat(),
        "next_ca_active": False,
    }
    ras = [c for c in served if fingerprint(c) != issuer.fingerprint_sha256]
    fields["next_ra_subject"] = ras[0].subject.rfc4514_string() if ras else "none"
    fields["next_ca_served"] = any(fingerprint(c) == issuer.fingerprint_sha256 for c in served)
    return fields
