"""`gateway init`: a data directory with CA, RA and TLS certificates, database and config file.

Everything is prepared in memory and in a staging directory first; files are moved into place
only after the database accepted the CA, so a failed init leaves nothing half-written behind.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.audit_trail import open_store
from gateway.config import CONFIG_FILE_NAME, GatewayConfig, load_config, render_config
from gateway.init_kms import (
    DEFAULT_CA_KEY_URI,
    DEFAULT_RA_ENCRYPTION_KEY_URI,
    DEFAULT_RA_KEY_URI,
    DEFAULT_TLS_KEY_URI,
    TokenKeys,
    token_ca_material,
    token_keys,
)
from gateway.settings import SETTINGS
from gateway.tls_token import load_token_tls_key
from shared_ca.authority import CertificateAuthority, PublicUrls, fingerprint, utcnow
from shared_ca.ca_material import (
    CAMaterial,
    create_root_ca,
    material_from_pem,
    material_from_pkcs12,
    parse_subject,
    register_issuer,
)
from shared_ca.errors import Conflict, KeyMaterialError
from shared_ca.keys import (
    KeyType,
    PrivateKey,
    certificates_pem,
    generate_private_key,
    load_certificates,
    load_private_key,
    write_private_key,
    write_public_file,
    write_secret_file,
)
from shared_ca.kms import is_token_key
from shared_ca.policy import authorize_request
from shared_ca.profiles import RA_ENCRYPTION_PROFILE, RA_PROFILE, RA_SIGNING_PROFILE, TLS_SERVER_PROFILE
from shared_ca.storage.db import migrate_to_head
from shared_ca.storage.repositories import Storage

DEFAULTS = {s.key: s.default for s in SETTINGS}
# Files SQLite (and our writer gate) keep beside gateway.db.
SQLITE_COMPANIONS = ("gateway.db-wal", "gateway.db-shm", "gateway.db-writers.lock")
DEFAULT_CA_SUBJECT = "CN=SCEP-EST Gateway CA,O=SCEP-EST Gateway"
INIT_MARKERS = (CONFIG_FILE_NAME, "ca.pem", DEFAULTS["ca.key"], "gateway.db")


class InitError(Exception):
    """`gateway init` cannot go on; the message says why in one line."""


@dataclass
class InitOptions:
    data_dir: Path
    ca_key_type: KeyType = KeyType.RSA3072
    ca_subject: x509.Name | None = None
    ca_days: int = 3650
    import_ca_cert: Path | None = None
    import_ca_key: Path | None = None
    import_pkcs12: Path | None = None
    import_passphrase: bytes | None = None
    hostnames: list[str] = field(default_factory=list)
    passphrase: bytes | None = None
    passphrase_file: Path | None = None
    scep_challenge: str | None = None
    database_url: str | None = None
    public_base_url: str | None = None
    force: bool = False
    separate_ra_keys: bool = False  # a signing RA and an encryption RA (ra.encryption_cert), not one RA
    kms: str | None = None  # keys.kms: the CA and RA keys are found or made in this token (gateway.init_kms)
    ca_key_uri: str = DEFAULT_CA_KEY_URI
    ra_key_uri: str = DEFAULT_RA_KEY_URI
    ra_encryption_key_uri: str = DEFAULT_RA_ENCRYPTION_KEY_URI
    tls_key_uri: str | None = DEFAULT_TLS_KEY_URI  # with --kms; None: the HTTPS key is a file


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    config_file: Path
    ca_pem: Path
    ca_subject: str
    ca_fingerprint: str
    ca_not_after: dt.datetime
    replaced: Path | None
    token_note: str | None = None  # with --kms: which keys were made and which found in the token


def _check_directory(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except PermissionError:
        raise InitError(f"cannot create data directory {data_dir}: permission denied") from None
    except OSError as exc:
        raise InitError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    if not data_dir.is_dir():
        raise InitError(f"{data_dir} exists and is not a directory")
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise InitError(f"data directory {data_dir} is not writable (permission denied)")


def _existing(data_dir: Path) -> list[str]:
    return [m for m in INIT_MARKERS if (data_dir / m).exists()]


def _move_aside(data_dir: Path, names: list[str], now: dt.datetime) -> Path:
    stamp = f"replaced-{now:%Y%m%dT%H%M%SZ}"
    backup = data_dir / stamp
    attempt = 1
    while True:  # a second --force within the same second must not collide with the first backup
        try:
            backup.mkdir(mode=0o700)
            break
        except FileExistsError:
            attempt += 1
            backup = data_dir / f"{stamp}-{attempt}"
    # Whole top-level entries only: moving ca/ca.key first and then the ca directory would nest it
    # (backup/ca/ca/ca.crt) and a failed init would restore a directory without its CA certificate.
    entries = [Path(name).parts[0] for name in [*names, "ca", "ra", "tls", "ca-next", "ra-next", *SQLITE_COMPANIONS]]
    for name in dict.fromkeys(entries):
        source = data_dir / name
        if source.exists():
            shutil.move(str(source), str(backup / name))
    return backup


def _restore(data_dir: Path, backup: Path) -> None:
    """Undo _move_aside after a failed --force init: the old directory comes back as it was."""
    for entry in backup.iterdir():
        shutil.move(str(entry), str(data_dir / entry.name))
    backup.rmdir()


def _ca_material(options: InitOptions, now: dt.datetime) -> CAMaterial:
    if options.import_pkcs12 is not None:
        try:
            data = options.import_pkcs12.read_bytes()
        except OSError as exc:
            raise InitError(f"cannot read {options.import_pkcs12}: {exc.strerror}") from None
        return material_from_pkcs12(data, options.import_passphrase, now)
    if options.import_ca_cert is not None or options.import_ca_key is not None:
        if options.import_ca_cert is None or options.import_ca_key is None:
            raise InitError("--import-ca-cert and --import-ca-key go together")
        certs = load_certificates(options.import_ca_cert)
        key = load_private_key(options.import_ca_key, options.import_passphrase)
        return material_from_pem(certs, key, now)
    subject = options.ca_subject or parse_subject(DEFAULT_CA_SUBJECT)
    return create_root_ca(generate_private_key(options.ca_key_type), subject, options.ca_days, now)


def _key_material(options: InitOptions, now: dt.datetime) -> tuple[TokenKeys | None, CAMaterial]:
    """The CA material, and with --kms the keys found or made in the token (gateway.init_kms)."""
    if not options.kms:
        return None, _ca_material(options, now)
    if options.import_pkcs12 is not None or options.import_ca_key is not None:
        raise InitError(
            "with --kms the CA key is in the token: name it with --ca-key-uri (its certificate with "
            "--import-ca-cert), not with --import-ca-key or --import-pkcs12"
        )
    keys = token_keys(
        options.kms,
        ca_key_uri=options.ca_key_uri,
        ra_key_uri=options.ra_key_uri,
        ra_encryption_key_uri=options.ra_encryption_key_uri if options.separate_ra_keys else None,
        tls_key_uri=options.tls_key_uri,
        ca_key_type=options.ca_key_type,
    )
    try:
        subject = options.ca_subject or parse_subject(DEFAULT_CA_SUBJECT)
        material = token_ca_material(
            keys, import_ca_cert=options.import_ca_cert, subject=subject, days=options.ca_days, now=now
        )
    except BaseException:
        keys.discard_generated()
        raise
    return keys, material


def _tls_names(hostnames: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for host in hostnames:
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    return names


@dataclass(frozen=True)
class _GatewayCertificates:
    ra_key: PrivateKey
    ra: x509.Certificate
    tls_key: PrivateKey
    tls: x509.Certificate
    ra_encryption: tuple[PrivateKey, x509.Certificate] | None = None  # with separate RA keys


RA_ENCRYPTION_FILES = {"ra.encryption_cert": "ra/ra-encryption.crt", "ra.encryption_key": "ra/ra-encryption.key"}


def _file_values(options: InitOptions) -> dict[str, Any]:
    values: dict[str, Any] = {"ca.name": DEFAULTS["ca.name"]}
    if options.separate_ra_keys:
        values.update(RA_ENCRYPTION_FILES)
    if options.database_url:
        values["database_url"] = options.database_url
    if options.public_base_url:
        values["public_base_url"] = options.public_base_url
    if options.passphrase_file is not None:
        values["keys.passphrase_file"] = str(options.passphrase_file.resolve())
    if options.kms:  # the keys' settings name the token's objects instead of files
        values["keys.kms"] = options.kms
        values["ca.key"], values["ra.key"] = options.ca_key_uri.strip(), options.ra_key_uri.strip()
        if options.separate_ra_keys:
            values["ra.encryption_key"] = options.ra_encryption_key_uri.strip()
        if options.tls_key_uri is not None:
            values["tls.key"] = options.tls_key_uri.strip()
    return values


def _record_ca(
    config: GatewayConfig,
    material: CAMaterial,
    hostnames: list[str],
    now: dt.datetime,
    *,
    separate_ra_keys: bool,
    in_token: TokenKeys | None = None,
) -> _GatewayCertificates:
    """Migrate the database, register the CA and issue the RA and TLS certificates (all recorded)."""
    engine = open_store(config).engine
    try:
        migrate_to_head(engine)
        if engine.dialect.name == "sqlite" and engine.url.database:
            Path(engine.url.database).chmod(0o600)
        storage = Storage.open(engine)
        if storage.issuers.issuer_by_name(config["ca.name"]) is not None:
            raise InitError(f"the database already holds issuer {config['ca.name']!r}: use a new, empty database")
        issuers, certificates = storage.issuers, storage.certificates
        issuer = register_issuer(issuers, config["ca.name"], material.certificate, kind="ca", actor="init", now=now)
        urls = PublicUrls(config.public_base_url)
        authority = CertificateAuthority(certificates, issuer, material.certificate, material.chain, material.key, urls)
        ra_key = in_token.ra if in_token else generate_private_key(KeyType.RSA2048)
        ra_name = _ra_common_name(material, " SCEP RA signing" if separate_ra_keys else " SCEP RA")
        ra_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ra_name)])
        ra_profile = RA_SIGNING_PROFILE if separate_ra_keys else RA_PROFILE
        ra = authority.issue(
            authorize_request(ra_profile, ra_subject, [], ra_key.public_key(), now), protocol="system", actor="init"
        )
        ra_encryption = None
        if separate_ra_keys:
            encryption_key: PrivateKey = (
                in_token.ra_encryption if in_token and in_token.ra_encryption else generate_private_key(KeyType.RSA2048)
            )
            encryption_name = _ra_common_name(material, " SCEP RA encryption")
            encryption_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, encryption_name)])
            encryption = authority.issue(
                authorize_request(RA_ENCRYPTION_PROFILE, encryption_subject, [], encryption_key.public_key(), now),
                protocol="system",
                actor="init",
            )
            ra_encryption = (encryption_key, encryption.certificate)
        tls_key = in_token.tls if in_token and in_token.tls else generate_private_key(KeyType.P256)
        tls_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "localhost")])
        tls = authority.issue(
            authorize_request(TLS_SERVER_PROFILE, tls_subject, _tls_names(hostnames), tls_key.public_key(), now),
            protocol="system",
            actor="init",
        )
    finally:
        engine.dispose()
    return _GatewayCertificates(ra_key, ra.certificate, tls_key, tls.certificate, ra_encryption)


def _stage_files(
    staging: Path,
    config: GatewayConfig,
    material: CAMaterial,
    certs: _GatewayCertificates,
    options: InitOptions,
    file_values: dict[str, Any],
) -> None:
    passphrase = options.passphrase
    chain_pem = certificates_pem(list(material.chain))
    if not is_token_key(config["ca.key"]):  # a key in a token has no file (gateway.init_kms)
        write_private_key(staging / config["ca.key"], material.key, passphrase)
    write_public_file(staging / config["ca.cert"], chain_pem)
    if not is_token_key(config["ra.key"]):
        write_private_key(staging / config["ra.key"], certs.ra_key, passphrase)
    write_public_file(staging / config["ra.cert"], certs.ra.public_bytes(Encoding.PEM))
    if certs.ra_encryption is not None:
        if not is_token_key(config["ra.encryption_key"]):
            write_private_key(staging / config["ra.encryption_key"], certs.ra_encryption[0], passphrase)
        write_public_file(staging / config["ra.encryption_cert"], certs.ra_encryption[1].public_bytes(Encoding.PEM))
    write_public_file(staging / config["tls.cert"], certs.tls.public_bytes(Encoding.PEM) + chain_pem)
    if is_token_key(config["tls.key"]):  # served through OpenSSL's pkcs11 provider: prove it loads and signs
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        load_token_tls_key(context, staging / config["tls.cert"], config["keys.kms"], config["tls.key"])
    else:
        write_private_key(staging / config["tls.key"], certs.tls_key, passphrase)
    write_public_file(staging / "ca.pem", chain_pem)
    profiles: dict[str, dict[str, Any]] = {}
    if options.scep_challenge:
        profiles["default"] = {"scep_challenge": options.scep_challenge}
    write_secret_file(staging / CONFIG_FILE_NAME, render_config(file_values, profiles, commented=False).encode())


def _install(staging: Path, data_dir: Path) -> None:
    for entry in sorted(staging.rglob("*"), key=lambda p: len(p.parts)):
        if entry.is_file():
            target = data_dir / entry.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(entry, target)


def initialise(options: InitOptions) -> InitResult:
    """Create (or, with force, replace) a gateway data directory."""
    now = utcnow()
    data_dir = options.data_dir.resolve()
    _check_directory(data_dir)
    existing = _existing(data_dir)
    if existing and not options.force:
        raise InitError(
            f"{data_dir} is already initialised ({', '.join(existing)}); "
            "re-run with --force to replace its CA (the old files are moved aside, never deleted)"
        )
    in_token, material = _key_material(options, now)
    hostnames = [h for h in options.hostnames if h]

    staging = data_dir / ".init-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    replaced = _move_aside(data_dir, existing, now) if existing else None
    try:
        file_values = _file_values(options)
        overrides = {k: v for k, v in file_values.items() if k != "keys.passphrase_file"}
        config = load_config(data_dir, None, environ={}, overrides=overrides)
        certs = _record_ca(
            config, material, hostnames, now, separate_ra_keys=options.separate_ra_keys, in_token=in_token
        )
        _stage_files(staging, config, material, certs, options, file_values)
        _install(staging, data_dir)
    except BaseException as exc:
        if not options.database_url:
            for name in ("gateway.db", *SQLITE_COMPANIONS):
                (data_dir / name).unlink(missing_ok=True)
        if replaced is not None:
            _restore(data_dir, replaced)
        if in_token is not None:
            in_token.discard_generated()
        if isinstance(exc, Conflict | KeyMaterialError):
            raise InitError(str(exc)) from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return InitResult(
        data_dir=data_dir,
        config_file=data_dir / CONFIG_FILE_NAME,
        ca_pem=data_dir / "ca.pem",
        ca_subject=material.certificate.subject.rfc4514_string(),
        ca_fingerprint=fingerprint(material.certificate),
        ca_not_after=material.certificate.not_valid_after_utc,
        replaced=replaced,
        token_note=in_token.note() if in_token is not None else None,
    )


def _ra_common_name(material: CAMaterial, role: str) -> str:
    cn = material.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = str(cn[0].value) if cn else "Gateway"
    return f"{base}{role}"[:64]
