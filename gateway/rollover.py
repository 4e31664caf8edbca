"""CA rollover: `gateway ca rollover` prepares the next CA, `gateway ca activate` switches issuance to it,
`gateway ca retire` ends the replaced CA once its certificates have expired.

Prepare: the next CA is a new self-signed CA (like `gateway init` makes) registered as an issuer of kind
'next', with its SCEP RA (init's RA profile) issued by it and recorded under it, and the two RFC 4210
§4.4 root key update certificates that link it to the issuing CA (NewWithOld, OldWithNew) stored on
its row. SCEP GetNextCACert (RFC 8894 §4.7) and EST /cacerts (RFC 7030 §4.1.3) serve them at once.

When the issuing CA's keys are in the keys.kms token, the next CA's and RA's keys are made there too
and the slot's key files only name them (shared_ca.kms.key_reference).

Its files go into the slot (gateway.ca_slots) the issuing CA does not hold: `next_ca.*`/`next_ra.*` the
first time, the `ca.*`/`ra.*` slot the time after (once the CA there is retired). Like init, everything
is built in memory and in a staging directory first; the database is written next (a failure there
retires the half-registered issuer), and files move into place last, so a failed rollover leaves no
files behind and never a 'next' issuer without its files.

Activate: the database records when the next CA starts issuing (now, or a later time); at that time
every worker of every node switches by itself (gateway.runtime.GatewayLoader), the next CA becomes
'ca' and the one it replaces 'previous', which keeps publishing its CRL and answering OCSP.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.audit_trail import open_store
from gateway.ca_slots import SLOTS, Slot, locate, slot_certificate
from gateway.config import GatewayConfig
from gateway.runtime import key_passphrase, load_key_pair
from shared_ca.authority import CertificateAuthority, PublicUrls, fingerprint, utcnow
from shared_ca.ca_material import CAMaterial, create_root_ca, register_issuer
from shared_ca.ca_rollover import ISSUING, NEXT, PREVIOUS, RETIRED, CaRoles, ca_roles, link_certificates
from shared_ca.keys import (
    KeyType,
    PrivateKey,
    certificates_pem,
    generate_private_key,
    write_private_key,
    write_public_file,
    write_secret_file,
)
from shared_ca.kms import KeyUri, is_token_key, key_reference, open_token, parse_key_uri, read_key_reference
from shared_ca.policy import authorize_request
from shared_ca.profiles import RA_PROFILE
from shared_ca.storage.audit import AuditEvent
from shared_ca.storage.db import require_schema_at_head
from shared_ca.storage.issuers import IssuerRecord, Issuers
from shared_ca.storage.repositories import Storage

if TYPE_CHECKING:  # python-pkcs11 is imported only once a token is used (shared_ca.kms)
    from shared_ca.pkcs11_token import Token

NEXT_KIND = NEXT
RETIRED_KIND = RETIRED
PAST_TOLERANCE = dt.timedelta(minutes=1)  # an --at this little in the past is taken as "now"


class RolloverError(Exception):
    """A rollover command cannot go on; the message says why in one line."""


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
    replaced: Path | None  # where the files that were in the slot went (a replaced next CA, a retired CA)
    token_note: str | None = None  # with the keys in the token: which keys were made there


@dataclass(frozen=True)
class _Current:
    issuer: IssuerRecord
    certificate: x509.Certificate
    key: PrivateKey
    passphrase: bytes | None
    slot: Slot


def _load_ca(config: GatewayConfig, slot: Slot, passphrase: bytes | None) -> tuple[x509.Certificate, PrivateKey]:
    certs, key = load_key_pair(config, slot.ca_cert, slot.ca_key, passphrase)
    return certs[0], key


def _current_ca(config: GatewayConfig, roles: CaRoles, located: dict[int, Slot]) -> _Current:
    """The issuing CA, after checking the configured passphrase opens its key: the next keys are
    encrypted with that same passphrase, so a wrong one must stop us here."""
    slot = located.get(roles.current.id)
    if slot is None:
        raise RolloverError(f"this node has no files of the issuing CA {roles.current.name!r}")
    passphrase = key_passphrase(config)
    cert, key = _load_ca(config, slot, passphrase)
    return _Current(roles.current, cert, key, passphrase, slot)


def _target_slot(current: Slot) -> Slot:
    return next(s for s in SLOTS if s != current)


def _slot_issuer(config: GatewayConfig, slot: Slot, issuers: list[IssuerRecord]) -> IssuerRecord | None:
    certificate = slot_certificate(config, slot)
    if certificate is None:
        return None
    return next((i for i in issuers if i.fingerprint_sha256 == fingerprint(certificate)), None)


def _present(config: GatewayConfig, slot: Slot) -> list[str]:
    return [k for k in slot.files if config[k] and config.path(k).exists()]


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
    current: _Current,
    actor: str,
    now: dt.datetime,
) -> x509.Certificate:
    """Register the next CA, link it to the issuing CA and issue its RA certificate; a failure retires
    the issuer just added."""
    issuer = register_issuer(storage.issuers, name, material.certificate, kind=NEXT_KIND, actor=actor, now=now)
    try:
        links = link_certificates(current.certificate, current.key, material.certificate, material.key, now)
        storage.issuers.link_rollover(issuer.id, current.issuer.id, links.new_with_old, links.old_with_new)
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


def _relative(config: GatewayConfig, slot: Slot) -> dict[str, Path]:
    return {k: config.path(k).resolve().relative_to(config.data_dir.resolve()) for k in slot.files}


def _stage(
    staging: Path,
    relative: dict[str, Path],
    slot: Slot,
    material: CAMaterial,
    keys: _NextKeys,
    ra: x509.Certificate,
    passphrase: bytes | None,
) -> None:
    """Write the four files under `staging`, at their paths relative to the data directory: the keys
    themselves, or (keys in the token) files that name them."""
    if keys.uris is not None:
        write_secret_file(staging / relative[slot.ca_key], key_reference(keys.uris[0].text))
        write_secret_file(staging / relative[slot.ra_key], key_reference(keys.uris[1].text))
    else:
        write_private_key(staging / relative[slot.ca_key], material.key, passphrase)
        write_private_key(staging / relative[slot.ra_key], keys.ra, passphrase)
    write_public_file(staging / relative[slot.ca_cert], certificates_pem(list(material.chain)))
    write_public_file(staging / relative[slot.ra_cert], ra.public_bytes(Encoding.PEM))


@dataclass
class _NextKeys:
    """The next CA's and RA's keys: files to write, or keys made in the token (`uris`, `token`)."""

    ca: PrivateKey
    ra: PrivateKey
    uris: tuple[KeyUri, KeyUri] | None = None
    token: Token | None = None

    def discard(self) -> None:
        """Destroy the keys made in the token (the rollover failed): the token is left as it was."""
        if self.token is not None and self.uris is not None:
            for uri in self.uris:
                with contextlib.suppress(Exception):  # best effort: the rollover's own error is reported
                    self.token.destroy(uri)

    def note(self) -> str | None:
        if self.token is None or self.uris is None:
            return None
        return f"{self.token.name}: made {', '.join(uri.text for uri in self.uris)}"


def _keys_in_token(config: GatewayConfig, slot: Slot) -> bool:
    """Whether the issuing CA's or its RA's key is in the token: named by the setting or by its file."""
    return any(is_token_key(config[k]) or read_key_reference(config.path(k)) for k in (slot.ca_key, slot.ra_key))


def _next_keys(config: GatewayConfig, current: Slot, target: Slot, name: str, key_type: KeyType) -> _NextKeys:
    """New keys for the next CA (of `key_type`) and its RA (RSA-2048): in the keys.kms token, labelled
    after the issuer `name`, when the issuing CA's keys are there; else in memory, for files."""
    if not _keys_in_token(config, current):
        return _NextKeys(generate_private_key(key_type), generate_private_key(KeyType.RSA2048))
    direct = [k for k in (target.ca_key, target.ra_key) if is_token_key(config[k])]
    if direct:
        example = f'{direct[0]} = "{direct[0].split(".")[0]}/{direct[0].split(".")[0]}.key"'
        raise RolloverError(
            f"{', '.join(direct)} name token keys directly, so the next CA's keys cannot go into that slot: make "
            f"{' and '.join(direct)} files that hold those URIs (e.g. {example} with the line "
            f"{config[direct[0]]} in it), then roll over"
        )
    token = open_token(config["keys.kms"], setting=target.ca_key)
    uris = (
        parse_key_uri(f"pkcs11:object={quote(name + '-ca-key', safe='')}"),
        parse_key_uri(f"pkcs11:object={quote(name + '-ra-key', safe='')}"),
    )
    held = [uri.text for uri in uris if token.has_key(uri)]
    if held:
        raise RolloverError(
            f"{token.name} already holds {', '.join(held)}, the labels of this rollover's keys: remove "
            f"{'them' if len(held) > 1 else 'it'} if no CA uses {'them' if len(held) > 1 else 'it'}, or give this "
            "gateway a token of its own"
        )
    ca_key = token.generate(uris[0], key_type, decrypt=False)
    try:
        ra_key = token.generate(uris[1], KeyType.RSA2048, decrypt=True)
    except BaseException:
        with contextlib.suppress(Exception):
            token.destroy(uris[0])
        raise
    return _NextKeys(ca_key, ra_key, uris, token)


def _move_aside(config: GatewayConfig, slot: Slot, prefix: str, now: dt.datetime) -> Path | None:
    """Move the files in `slot` into DATA_DIR/<prefix>-<time>/ (keys are never deleted)."""
    present = _present(config, slot)
    if not present:
        return None
    stamp = f"{prefix}-{now:%Y%m%dT%H%M%SZ}"
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


def _install(staging: Path, data_dir: Path, slot: Slot, relative: dict[str, Path]) -> None:
    for key in slot.files:
        target = data_dir / relative[key]
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(staging / relative[key], target)


def _undo_install(config: GatewayConfig, slot: Slot, replaced: Path | None) -> None:
    """After a failed install: remove what was installed and bring the replaced files back."""
    for key in slot.files:
        config.path(key).unlink(missing_ok=True)
    if replaced is None:
        return
    data_dir = config.data_dir.resolve()
    for key in slot.files:
        saved = replaced / config.path(key).resolve().relative_to(data_dir)
        if saved.exists():
            shutil.move(str(saved), str(config.path(key)))
    shutil.rmtree(replaced, ignore_errors=True)


def _check_paths(config: GatewayConfig, target: Slot, current: Slot) -> None:
    data_dir = config.data_dir.resolve()
    for key in target.files:
        if not config[key]:
            raise RolloverError(f"{key} is empty in the configuration: the next CA needs a file there")
        path = config.path(key).resolve()
        if not path.is_relative_to(data_dir):
            raise RolloverError(f"{key} ({path}) must lie inside the data directory {data_dir}")
    in_use = {config.path(k).resolve() for k in current.files}
    clash = [k for k in target.files if config.path(k).resolve() in in_use]
    if clash:
        raise RolloverError(f"{', '.join(clash)} would overwrite the current CA or RA files")


def _check_target(
    config: GatewayConfig, target: Slot, issuers: list[IssuerRecord], force: bool
) -> tuple[list[IssuerRecord], str]:
    """Whether the next CA may go into `target`: the next CAs it replaces, and the name of the directory
    the slot's present files move to. A previous CA there must be retired first; a next CA (in the slot
    or only in the database, after a rollover on another node) is replaced only with --force."""
    holder = _slot_issuer(config, target, issuers)
    if holder is not None and holder.kind == PREVIOUS:
        raise RolloverError(
            f"{config.path(target.ca_cert)} holds the previous CA {holder.name!r}, which still publishes CRLs "
            f"for its certificates: retire it first (`gateway ca retire {holder.name}`, once they have expired)"
        )
    if holder is not None and holder.kind == ISSUING:  # cannot happen: the target is not the issuing slot
        raise RolloverError(f"{config.path(target.ca_cert)} holds the issuing CA {holder.name!r}")
    replaced_next = [i for i in issuers if i.kind == NEXT_KIND]
    unknown_files = holder is None and bool(_present(config, target))
    if (replaced_next or unknown_files) and not force:
        files = [str(config.path(k)) for k in _present(config, target)]
        what = ", ".join([*(f"issuer {i.name!r}" for i in replaced_next), *files])
        raise RolloverError(
            f"a next CA already exists ({what}); re-run with --force to replace it "
            "(its files are moved aside, never deleted)"
        )
    prefix = f"retired-{holder.name}" if holder is not None and holder.kind == RETIRED_KIND else "replaced-next"
    return replaced_next, prefix


def rollover(config: GatewayConfig, options: RolloverOptions) -> RolloverResult:
    """Create the next CA and its RA (refused when one exists, unless `options.force`)."""
    now = utcnow()
    engine = open_store(config).engine
    try:
        require_schema_at_head(engine)
        storage = Storage.open(engine)
        issuers = storage.issuers.list_issuers()
        roles = ca_roles(issuers, now)
        located = locate(config, issuers, strict=False)
        current_slot = located.get(roles.current.id)
        if current_slot is None:
            raise RolloverError(f"this node has no files of the issuing CA {roles.current.name!r}")
        target = _target_slot(current_slot)
        _check_paths(config, target, current_slot)
        current = _current_ca(config, roles, located)
        replaced_next, prefix = _check_target(config, target, issuers, options.force)
        subject = options.ca_subject or current.certificate.subject
        name = _issuer_name(storage.issuers, config["ca.name"])
        relative = _relative(config, target)

        staging = config.data_dir / ".rollover-staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        # Keys of a CA in a token are made in the token, and the slot's key files only name them.
        keys = _next_keys(config, current_slot, target, name, options.ca_key_type)
        try:
            material = create_root_ca(keys.ca, subject, options.ca_days, now)
            ra = _register(storage, config, name, material, keys.ra, current, options.actor, now)
            try:
                _stage(staging, relative, target, material, keys, ra, current.passphrase)
                replaced = _move_aside(config, target, prefix, now)
                try:
                    _install(staging, config.data_dir, target, relative)
                except BaseException:
                    _undo_install(config, target, replaced)
                    raise
            except BaseException:
                new = storage.issuers.issuer_by_name(name)
                if new is not None and new.kind == NEXT_KIND:
                    _retire(storage.issuers, new, options.actor, now, reason="rollover failed")
                raise
            # The new next CA is in place; only now stop calling the replaced ones 'next'.
            for old in replaced_next:
                _retire(storage.issuers, old, options.actor, now, reason=f"replaced by {name}")
        except BaseException:
            keys.discard()
            raise
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
        ca_cert=config.path(target.ca_cert),
        ra_cert=config.path(target.ra_cert),
        replaced=replaced,
        token_note=keys.note(),
    )


# -- activation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """What `gateway ca activate` recorded."""

    issuer_name: str
    previous_name: str
    at: dt.datetime
    active: bool  # True: the next CA issues now; False: it will from `at`


def activate(config: GatewayConfig, at: dt.datetime | None, actor: str) -> Activation:
    """Record that the next CA becomes the issuing CA at `at` (None: now). This node must hold its files,
    and their keys must open (every node that serves needs them before `at`)."""
    now = utcnow()
    when = now if at is None or now - PAST_TOLERANCE <= at <= now else at
    engine = open_store(config).engine
    try:
        require_schema_at_head(engine)
        storage = Storage.open(engine)
        issuers = storage.issuers.list_issuers()
        roles = ca_roles(issuers, now)
        upcoming = roles.next
        if upcoming is None:
            raise RolloverError("there is no next CA to activate: prepare one with `gateway ca rollover`")
        if when < now:
            raise RolloverError(f"--at: {when.isoformat()} is in the past")
        certificate = x509.load_der_x509_certificate(upcoming.cert_der)
        if not certificate.not_valid_before_utc <= when < certificate.not_valid_after_utc:
            raise RolloverError(
                f"--at: {when.isoformat()} is outside the next CA's validity "
                f"({certificate.not_valid_before_utc.isoformat()} to {certificate.not_valid_after_utc.isoformat()})"
            )
        if config.values.get("ra.encryption_cert"):
            # The next CA has one RA that signs and decrypts; the separate encryption RA is the current CA's.
            raise RolloverError(
                "ra.encryption_cert is set (separate RA keys): the next CA's RA signs and decrypts alone; "
                "remove ra.encryption_cert and ra.encryption_key from the configuration first"
            )
        slot = locate(config, issuers).get(upcoming.id)
        if slot is None:
            paths = ", ".join(str(config.path(s.ca_cert)) for s in SLOTS)
            raise RolloverError(
                f"this node has no files of the next CA {upcoming.name!r} (looked in {paths}): "
                "copy them from the node that ran `gateway ca rollover` first"
            )
        _load_ca(config, slot, key_passphrase(config))  # its key opens with this node's passphrase
        immediate = when <= now
        event = None
        if not immediate:
            detail = {"name": upcoming.name, "at": when.isoformat(), "previous": roles.current.name}
            event = AuditEvent(actor, "issuer.activation_scheduled", detail=detail)
        if not storage.issuers.schedule_activation(upcoming.id, when, event, now):
            raise RolloverError(f"the next CA {upcoming.name!r} changed meanwhile: run the command again")
        if immediate:
            storage.issuers.activate_due(now, actor)
    finally:
        engine.dispose()
    return Activation(upcoming.name, roles.current.name, when, immediate)


# -- retirement -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retirement:
    issuer_name: str
    last_expiry: dt.datetime | None


def retire(config: GatewayConfig, name: str, actor: str) -> Retirement:
    """Retire a previous CA once its last certificate has expired: its CRL, OCSP answers and root key
    update certificates are served no more, and its slot is free for the next rollover."""
    now = utcnow()
    engine = open_store(config).engine
    try:
        require_schema_at_head(engine)
        storage = Storage.open(engine)
        issuer = storage.issuers.issuer_by_name(name)
        if issuer is None:
            raise RolloverError(f"there is no issuer {name!r}")
        if issuer.kind != PREVIOUS:
            raise RolloverError(
                f"issuer {name!r} is {issuer.kind!r}: only a previous CA (replaced by activation) retires"
            )
        last = storage.certificates.last_expiry(issuer.id)
        if last is not None and last > now:
            raise RolloverError(
                f"issuer {name!r} still has certificates valid until {last.isoformat()}: "
                "its CRL and OCSP answers are needed until then"
            )
        _retire(storage.issuers, issuer, actor, now, reason="its last certificate expired")
    finally:
        engine.dispose()
    return Retirement(name, last)


# -- `gateway ca show` ------------------------------------------------------------------------------


def rollover_summary(roles: CaRoles, served: tuple[x509.Certificate, ...]) -> dict[str, object]:
    """`gateway ca show` fields of a rollover: the next CA (registered in the database; whether this
    gateway serves it through GetNextCACert; when it activates) and the previous CAs still winding down."""
    fields: dict[str, object] = {}
    upcoming = roles.next
    if upcoming is not None:
        fields.update(
            {
                "next_ca": upcoming.name,
                "next_ca_subject": upcoming.subject,
                "next_ca_sha256": upcoming.fingerprint_sha256,
                "next_ca_not_after": upcoming.not_after.isoformat(),
                "next_ca_activates_at": upcoming.activates_at.isoformat() if upcoming.activates_at else "not scheduled",
            }
        )
        ras = [c for c in served if fingerprint(c) != upcoming.fingerprint_sha256]
        fields["next_ra_subject"] = ras[0].subject.rfc4514_string() if ras else "none"
        fields["next_ca_served"] = any(fingerprint(c) == upcoming.fingerprint_sha256 for c in served)
    if roles.previous:
        fields["previous_ca"] = ", ".join(p.name for p in roles.previous)
    return fields
